//! Idle upstream connections kept per connection thread: a stack of them per
//! thread, shared by the two `http://` pools ([`super::h1pool`]: hyper's
//! senders; [`super::h1conns`]: the express lane's sockets).
//!
//! A pool used from one thread needs no more than a stack: the most
//! recently used connection is taken first (its socket is warm, and the
//! others may age out), a connection past the idle timeout or no longer
//! usable is dropped when found, and a task on the thread closes idle
//! connections past the timeout while the stack is not empty.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::client::PoolConfig;

/// A kept connection.
pub(crate) trait Kept: Send + 'static {
    /// Still usable after idling: not closed by the upstream (and nothing
    /// unasked-for arrived). Checked when taken and by the reaper.
    fn usable(&mut self) -> bool;

    /// Known closed already: not worth keeping (checked when given back;
    /// must be cheap).
    fn closed(&self) -> bool {
        false
    }
}

/// The stacks of one upstream.
pub(crate) struct ThreadStacks<T> {
    idle_timeout: Duration,
    max_idle: usize,
    /// One stack per connection thread (slot 0: threads outside any set).
    slots: Box<[Mutex<Slot<T>>]>,
}

struct Slot<T> {
    idle: Vec<(T, Instant)>,
    /// A task closing expired idle connections runs for this stack.
    reaping: bool,
}

impl<T: Kept> ThreadStacks<T> {
    pub(crate) fn new(pool: &PoolConfig) -> Arc<Self> {
        Arc::new(ThreadStacks {
            idle_timeout: pool.idle_timeout,
            max_idle: pool.max_idle_per_host,
            slots: (0..=hexon_core::rt::MAX_THREADS)
                .map(|_| {
                    Mutex::new(Slot {
                        idle: Vec::new(),
                        reaping: false,
                    })
                })
                .collect(),
        })
    }

    /// The calling thread's stack. On a connection thread only that thread
    /// locks it; threads outside a set (a multi-threaded runtime) share
    /// slot 0.
    fn slot_index(&self) -> usize {
        let i = hexon_core::rt::worker_index();
        if i < self.slots.len() { i } else { 0 }
    }

    /// The most recently used usable idle connection of this thread, and
    /// how long it was idle.
    pub(crate) fn take(&self) -> Option<(T, Duration)> {
        let slot = self.slots.get(self.slot_index())?;
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some((mut c, since)) = slot.idle.pop() {
            let idle = now.saturating_duration_since(since);
            if idle < self.idle_timeout && c.usable() {
                return Some((c, idle));
            }
        }
        None
    }

    /// Keep `c` on this thread's stack (unless it is closed or the stack
    /// is full).
    pub(crate) fn give(self: &Arc<Self>, c: T) {
        if c.closed() {
            return;
        }
        let index = self.slot_index();
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.idle.len() >= self.max_idle {
            return;
        }
        slot.idle.push((c, Instant::now()));
        if !slot.reaping {
            // On this thread's runtime, like the connections it closes.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                slot.reaping = true;
                rt.spawn(reap(Arc::downgrade(self), index));
            }
        }
    }
}

/// Close the idle connections of one stack once they pass the idle timeout
/// (or are no longer usable); ends when the stack is empty or the pool is
/// gone (a new configuration replaced the upstream).
async fn reap<T: Kept>(stacks: Weak<ThreadStacks<T>>, index: usize) {
    loop {
        let Some(every) = stacks.upgrade().map(|p| p.idle_timeout) else {
            return;
        };
        tokio::time::sleep(every.max(Duration::from_millis(10))).await;
        let Some(stacks) = stacks.upgrade() else {
            return;
        };
        let Some(slot) = stacks.slots.get(index) else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Dropping a connection closes it.
        slot.idle.retain_mut(|(c, since)| {
            now.saturating_duration_since(*since) < stacks.idle_timeout && c.usable()
        });
        if slot.idle.is_empty() {
            slot.reaping = false;
            return;
        }
    }
}
