//! Connection threads: a fixed set of threads, each running its own
//! single-threaded tokio runtime, that connections are placed on and stay
//! on.
//!
//! A proxied HTTP connection or a SQL session is long-lived and mostly
//! request/response. On a multi-threaded runtime each request crosses
//! threads several times — the connection task wakes the upstream
//! connection's task, idle workers are woken to steal — and on a small
//! machine those wake-ups (futex calls, context switches) cost more than
//! the work. A connection placed on one of these threads is served by one
//! `epoll` loop from accept to close, as nginx and pgbouncer do; the
//! measurements are in docs/BENCHMARKS.md.
//!
//! Placement is least-busy (fewest live connections) at accept time. Work
//! that outlives a connection on a thread (pooled upstream connections)
//! stays there too; [`worker_index`] lets such pools be kept per thread so
//! a request never picks up another thread's connection.
//!
//! Dropping [`ConnectionThreads`] lets each thread finish once its last
//! connection has ended; the threads then exit on their own.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::Notify;

/// Most threads a set may have.
pub const MAX_THREADS: usize = 256;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This thread's index in its [`ConnectionThreads`] set, from 1; `0` on any
/// other thread. Meant for per-thread pools (index 0: the shared one).
pub fn worker_index() -> usize {
    WORKER.with(std::cell::Cell::get)
}

struct Shared {
    live: AtomicUsize,
    closed: AtomicBool,
    idle: Notify,
}

struct Worker {
    handle: Handle,
    shared: Arc<Shared>,
}

/// What a connection thread calls each time it is about to go idle
/// ([`ConnectionThreads::start_with`]).
pub type ParkHook = Arc<dyn Fn() + Send + Sync>;

/// A set of connection threads. See the [module docs](self).
#[derive(Default)]
pub struct ConnectionThreads {
    workers: Vec<Worker>,
}

impl std::fmt::Debug for ConnectionThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionThreads")
            .field("live", &self.live())
            .finish()
    }
}

/// Where a connection goes: the runtime to spawn it on, and a guard that
/// counts it as live on that thread until dropped (move it into the task).
#[derive(Debug)]
pub struct Placement {
    /// The thread's runtime.
    pub handle: Handle,
    /// Counts the connection; drop it when the connection ends.
    pub live: LiveGuard,
}

impl Placement {
    /// Spawn `fut` on the thread, counted live until it ends (or is
    /// dropped, on abort or runtime shutdown).
    pub fn spawn<F>(self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let live = self.live;
        self.handle.spawn(async move {
            let out = fut.await;
            drop(live);
            out
        })
    }
}

/// Counts one connection on a thread while it exists.
pub struct LiveGuard(Arc<Shared>);

impl std::fmt::Debug for LiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveGuard")
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let s = &self.0;
        if s.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.idle.notify_waiters();
        }
    }
}

impl ConnectionThreads {
    /// The default count for a proxy: one per CPU.
    pub fn per_cpu() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    }

    /// Start `n` threads (at most [`MAX_THREADS`]) named `{name}-{i}`.
    /// `n == 0` gives an empty set: [`place`](Self::place) then answers
    /// `None` and callers keep connections on their own runtime.
    ///
    /// # Errors
    /// A thread or its runtime could not be created (those already started
    /// wind down).
    pub fn start(n: usize, name: &str) -> std::io::Result<Self> {
        Self::start_with(n, name, None)
    }

    /// [`start`](Self::start), each thread calling `on_park` whenever it is
    /// about to wait for work (tokio's `on_thread_park`): the moment to
    /// write out what the thread batched while it was busy, such as the
    /// SQL bastion's query log.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with(n: usize, name: &str, on_park: Option<ParkHook>) -> std::io::Result<Self> {
        // Built up in place: on an error its `Drop` winds down the threads
        // already started.
        let mut set = ConnectionThreads {
            workers: Vec::with_capacity(n.min(MAX_THREADS)),
        };
        for i in 0..n.min(MAX_THREADS) {
            let shared = Arc::new(Shared {
                live: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                idle: Notify::new(),
            });
            let (tx, rx) = std::sync::mpsc::channel();
            let thread_shared = shared.clone();
            let on_park = on_park.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Built on its own thread: a runtime must not be
                    // dropped inside another one's context.
                    let mut builder = tokio::runtime::Builder::new_current_thread();
                    builder.enable_all();
                    if let Some(hook) = on_park {
                        builder.on_thread_park(move || hook());
                    }
                    let rt = match builder.build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    WORKER.with(|w| w.set(i + 1));
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        tokio::select! {
                            () = wind_down(&thread_shared) => {}
                            () = keep_a_timer_near() => {}
                        }
                    });
                })?;
            let handle = rx.recv().map_err(|_| {
                std::io::Error::other("a connection thread ended before it started")
            })??;
            set.workers.push(Worker { handle, shared });
        }
        Ok(set)
    }

    /// The least busy thread, its count already raised; `None` when the set
    /// is empty.
    pub fn place(&self) -> Option<Placement> {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.shared.live.load(Ordering::Acquire))?;
        w.shared.live.fetch_add(1, Ordering::AcqRel);
        Some(Placement {
            handle: w.handle.clone(),
            live: LiveGuard(w.shared.clone()),
        })
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Live connections on each thread.
    pub fn live(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.shared.live.load(Ordering::Acquire))
            .collect()
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        for w in &self.workers {
            w.shared.closed.store(true, Ordering::Release);
            w.shared.idle.notify_waiters();
        }
    }
}

/// Keeps a deadline at most [`TIMER_TICK`] away pending on the thread's
/// timer, forever.
///
/// tokio wakes its driver (an `eventfd` write, a system call) whenever a
/// timer is set earlier than the deadline the driver last parked with, and
/// with no timer pending that is every timer. hyper arms a header-read timer
/// for each request on a keep-alive connection and clears it once the head
/// is read, so on a thread with a few busy connections about every other
/// request paid that system call (`strace -c -f` of the gateway under wrk:
/// 0.45 `write`s per request). With this tick pending, timers further away
/// than a second (header, idle and upstream timeouts) never move the
/// driver's deadline nearer, and the thread wakes once a second for it.
async fn keep_a_timer_near() {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

/// See [`keep_a_timer_near`].
const TIMER_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs until the set is dropped and the thread's last connection ended.
async fn wind_down(s: &Shared) {
    loop {
        let idle = s.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if s.closed.load(Ordering::Acquire) && s.live.load(Ordering::Acquire) == 0 {
            return;
        }
        idle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_thread_and_threads_end_after_the_last() {
        let threads = ConnectionThreads::start(2, "test").unwrap();
        assert_eq!(threads.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, hold) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            let p = threads.place().unwrap();
            let (tx, mut hold) = (tx.clone(), hold.clone());
            p.spawn(async move {
                tx.send(worker_index()).unwrap();
                let _ = hold.wait_for(|v| *v).await;
            });
        }
        let mut seen: Vec<usize> = (0..3).map(|_| rx.recv().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, [1, 1, 2], "least busy first: 1, 2, then either");
        assert_eq!(threads.live().iter().sum::<usize>(), 3);
        assert_eq!(worker_index(), 0);
        // Dropping the set does not cut running connections...
        let probe = threads.place().unwrap();
        drop(threads);
        let done = probe.spawn(async { 7 });
        // ...and the threads exit once they end.
        release.send(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(done).unwrap(), 7);
    }

    #[test]
    fn threads_call_the_park_hook_when_they_go_idle() {
        // The hook records which thread parked; a task that waits parks
        // its thread, so the hook must have run on it by the time the
        // waiting task is resumed from outside.
        let parked = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
        let seen = parked.clone();
        let hook: ParkHook = Arc::new(move || seen.lock().unwrap().push(worker_index()));
        let threads = ConnectionThreads::start_with(1, "park", Some(hook)).unwrap();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        threads.place().unwrap().spawn(async move {
            let _ = wait.await;
            tx.send(()).unwrap();
        });
        // Wait until the thread has parked at least once (bounded: a
        // thread that never calls the hook fails here).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while parked.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the hook never ran");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        go.send(()).unwrap();
        rx.recv().unwrap();
        assert!(parked.lock().unwrap().iter().all(|&w| w == 1));
    }

    #[test]
    fn an_empty_set_places_nothing() {
        let none = ConnectionThreads::start(0, "none").unwrap();
        assert!(none.place().is_none() && none.is_empty());
        assert!(ConnectionThreads::default().place().is_none());
    }
}
