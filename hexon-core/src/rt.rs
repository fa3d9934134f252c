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
//!
//! **Pinning** ([`ThreadOptions::pin_cpus`]): thread `i` runs only on the
//! `i`-th CPU the process may use. A connection's peers (the client, the
//! upstream) and the thread that relays between them wake each other on
//! every request; with the thread fixed, the kernel's wake-up placement
//! gathers them on its CPU, where a wake-up is cheapest. The cost is that
//! a pinned thread cannot leave a CPU another process monopolises.
//!
//! **Idle polling** ([`IdlePoll`], off by default): a thread that has just
//! worked keeps polling its sockets for a short window instead of going to
//! sleep, as Seastar's reactor does (`--idle-poll-time-us`). A thread that
//! sleeps in `epoll_wait` pays a wake-up on the next packet — on a virtual
//! machine an idle vCPU is halted, and waking it costs tens of
//! microseconds — so a request/response session with one client in flight
//! waits for two wake-ups per statement. Polling trades CPU for that
//! latency, so it is bounded three ways: it stops `window` after the
//! thread's last activity ([`mark_active`]); it does not start, and stops,
//! while the host's CPU pressure (`/proc/pressure/cpu`: the share of time
//! some task waited for a CPU) is above [`IdlePoll::max_pressure`], since
//! on a busy host the polled CPU is taken from the work it waits for; and
//! it stops until the next activity when another task on the same CPU
//! wants to run (a `sched_yield` that gave the CPU away). And it stops
//! while it does not pay: a run that ends without having caught any
//! activity (the database answers later than the window) only burned CPU,
//! so while recent runs caught less than one activity each on average, a
//! thread tries again at most once per [`PROBE_INTERVAL`] until runs catch
//! activity again. It relies on
//! tokio's single-threaded scheduler polling its driver with a zero
//! timeout, not parking, while a task has yielded (`yield_now`). The
//! measurements are in docs/BENCHMARKS.md.

use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::Notify;

/// Most threads a set may have.
pub const MAX_THREADS: usize = 256;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
    /// Set by [`mark_active`], taken by the thread's idle poller.
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    /// The idle poller, while it waits for activity.
    static POLLER: Cell<Option<Waker>> = const { Cell::new(None) };
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
    /// Nanoseconds spent idle polling.
    polled: AtomicU64,
    /// Idle-polling runs started.
    runs: AtomicU64,
}

struct Worker {
    handle: Handle,
    shared: Arc<Shared>,
    /// The CPU the thread is pinned to, if it is.
    cpu: Option<usize>,
}

impl Worker {
    /// Its live connections.
    fn live(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }
}

/// What a connection thread calls each time it is about to go idle
/// ([`ConnectionThreads::start_with`]).
pub type ParkHook = Arc<dyn Fn() + Send + Sync>;

/// How the threads of a set wait for work
/// ([`ConnectionThreads::start_with`]).
#[derive(Clone, Default)]
pub struct ThreadOptions {
    /// Called each time a thread is about to wait for work (tokio's
    /// `on_thread_park`): the moment to write out what the thread batched
    /// while it was busy, such as the SQL bastion's query log. Not called
    /// while a thread idle polls.
    pub on_park: Option<ParkHook>,
    /// Keep polling for a while after activity instead of sleeping.
    pub idle_poll: Option<IdlePoll>,
    /// Pin thread `i` to the `i`-th CPU the process may run on (modulo
    /// their count), so that the kernel does not move it; see
    /// [`ConnectionThreads::start_with`].
    pub pin_cpus: bool,
}

impl std::fmt::Debug for ThreadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadOptions")
            .field("on_park", &self.on_park.is_some())
            .field("idle_poll", &self.idle_poll)
            .field("pin_cpus", &self.pin_cpus)
            .finish()
    }
}

/// Idle polling: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct IdlePoll {
    /// How long a thread keeps polling after its last
    /// [`mark_active`].
    pub window: Duration,
    /// Highest CPU pressure (0.0–1.0: the share of the last
    /// [`PRESSURE_INTERVAL`] in which some task on the host waited for a
    /// CPU) at which a thread starts polling.
    pub max_pressure: f64,
    /// Where the pressure is read, in the kernel's PSI format
    /// (`some avg10=… total=<µs>`): `/proc/pressure/cpu`. Unreadable
    /// means no polling.
    pub pressure_file: PathBuf,
}

impl IdlePoll {
    /// Poll for `window` after activity while the host's CPU pressure is
    /// at most [`DEFAULT_MAX_PRESSURE`].
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            max_pressure: DEFAULT_MAX_PRESSURE,
            pressure_file: PathBuf::from("/proc/pressure/cpu"),
        }
    }
}

/// The CPU pressure above which threads do not idle poll. Under
/// `pgbench` through the SQL bastion on two vCPUs, one client in flight
/// gives 0.04–0.12 and eight give 0.8–0.9.
pub const DEFAULT_MAX_PRESSURE: f64 = 0.3;

/// How often the CPU pressure is read again (each read is a file read).
pub const PRESSURE_INTERVAL: Duration = Duration::from_millis(100);

/// A yield that took longer than this gave the CPU to another task: the
/// CPU is wanted, so polling stops.
const YIELD_CONTENDED: Duration = Duration::from_micros(5);

/// While idle polling does not pay (see the [module docs](self)), a thread tries one run
/// at most this often: at a 100 µs window, at most 1 % of a CPU spent on
/// finding out whether it pays again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Whether this process may use every online CPU of the host: no CPU
/// affinity mask and no cgroup CPU quota that leaves it fewer (`std`'s
/// [`available_parallelism`](std::thread::available_parallelism) applies
/// both). Idle polling is worth its CPU only then: under a quota the
/// polled time is taken from the process's own work (and the CPU
/// pressure, read host-wide, does not show it), and with an affinity mask
/// the host's pressure says little about the CPUs the process may use.
/// `false` when either count cannot be read.
pub fn uses_every_cpu() -> bool {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| cpu_list_len(&s));
    let usable = std::thread::available_parallelism()
        .ok()
        .map(std::num::NonZero::get);
    matches!((online, usable), (Some(online), Some(usable)) if usable >= online)
}

/// Whether pinning ([`ThreadOptions::pin_cpus`]) and idle polling are on
/// by default for a set of `threads`: there are threads, and the process
/// may use every CPU of the host ([`uses_every_cpu`]). The gateway's
/// connection threads and the SQL bastions' session threads follow it.
pub fn host_defaults_apply(threads: usize) -> bool {
    threads > 0 && uses_every_cpu()
}

/// How many CPUs a kernel CPU list names (`0-3,8,10-11\n`: 7).
fn cpu_list_len(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let one = part.parse::<usize>().ok()?;
                (one, one)
            }
        };
        n = n.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(n)
}

/// Whether idle polling has been paying off on one thread: a moving
/// average of the activity its runs caught, as an adaptive mutex spins
/// only while spinning has recently succeeded.
///
/// A run that ends when its window passes without activity caught nothing
/// and only burned CPU: with a database farther away than the window
/// (another host, hundreds of microseconds) every run after a statement
/// is such a run. A session whose statements and answers follow each
/// other within the window keeps a run going, catching activity after
/// activity. Runs count up to [`Payoff::CAP`] catches each, and the
/// thread polls while the average is at least one per run. Runs that a
/// busy CPU or pressure ended before their window passed are not counted
/// unless they caught something: they say nothing about the window.
#[derive(Debug, Clone)]
struct Payoff {
    /// Catches per run, averaged over about the last eight runs, in
    /// 1/[`Payoff::ONE`]ths.
    rate: u32,
}

impl Payoff {
    const ONE: u32 = 256;
    const CAP: u32 = 4;

    /// Trusting at first: the first run finds out.
    fn new() -> Self {
        Self { rate: Self::ONE }
    }

    fn pays(&self) -> bool {
        self.rate >= Self::ONE
    }

    fn record(&mut self, catches: u32) {
        self.rate = self.rate - self.rate / 8 + catches.min(Self::CAP) * Self::ONE / 8;
    }
}

/// Say that a task on this thread just did work (read or wrote a
/// connection): with [`IdlePoll`] on, the thread polls for its window
/// before it sleeps again. Costs a thread-local store; does nothing
/// elsewhere.
pub fn mark_active() {
    ACTIVE.with(|a| a.set(true));
    if let Some(w) = POLLER.with(Cell::take) {
        w.wake();
    }
}

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
        Self::start_with(n, name, ThreadOptions::default())
    }

    /// [`start`](Self::start) with `options` for how the threads wait.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with(n: usize, name: &str, options: ThreadOptions) -> std::io::Result<Self> {
        // Built up in place: on an error its `Drop` winds down the threads
        // already started.
        let mut set = ConnectionThreads {
            workers: Vec::with_capacity(n.min(MAX_THREADS)),
        };
        // The CPUs to pin to, in order, when asked (none: not pinned).
        let cpus = if options.pin_cpus {
            allowed_cpus()
        } else {
            Vec::new()
        };
        // One pressure reading for the set.
        let idle_poll = options
            .idle_poll
            .map(|c| (Arc::new(Pressure::new(&c)), c.window));
        for i in 0..n.min(MAX_THREADS) {
            let shared = Arc::new(Shared {
                live: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                idle: Notify::new(),
                polled: AtomicU64::new(0),
                runs: AtomicU64::new(0),
            });
            let (tx, rx) = std::sync::mpsc::channel();
            let thread_shared = shared.clone();
            let on_park = options.on_park.clone();
            let idle_poll = idle_poll.clone();
            let cpu = cpus.get(i % cpus.len().max(1)).copied();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
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
                    if let Some((pressure, window)) = idle_poll {
                        rt.spawn(poll_when_idle(window, pressure, thread_shared.clone()));
                    }
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
            set.workers.push(Worker {
                handle,
                shared,
                cpu,
            });
        }
        Ok(set)
    }

    /// The least busy thread, its count already raised; `None` when the set
    /// is empty.
    pub fn place(&self) -> Option<Placement> {
        Some(Self::take(self.least_busy()?))
    }

    /// Where a connection on `socket` goes: with pinned threads
    /// ([`ThreadOptions::pin_cpus`]), the thread on the CPU that received
    /// the socket's packets (`SO_INCOMING_CPU`: on one host, where its
    /// client runs), unless that thread already has more than
    /// [`NEAR_SLACK`] connections above twice the least busy one's;
    /// otherwise, and without pinning, as [`place`](Self::place).
    ///
    /// A client, the thread relaying for it and the upstream it talks to
    /// wake each other on every request. With the relaying thread on the
    /// client's CPU, the kernel keeps the three together; placed by count
    /// alone, a thread serves clients on every CPU and each wake-up
    /// crosses CPUs (docs/BENCHMARKS.md, "2026-12-06, fifth session").
    pub fn place_near<S: std::os::fd::AsFd>(&self, socket: &S) -> Option<Placement> {
        let least = self.least_busy()?;
        // A set is pinned whole or not at all: without pinning no thread
        // is near, and the socket is not asked.
        let near = least
            .cpu
            .and_then(|_| rustix::net::sockopt::socket_incoming_cpu(socket).ok())
            .and_then(|cpu| usize::try_from(cpu).ok())
            .and_then(|cpu| self.workers.iter().find(|w| w.cpu == Some(cpu)))
            .filter(|w| w.live() <= least.live().saturating_mul(2).saturating_add(NEAR_SLACK));
        Some(Self::take(near.unwrap_or(least)))
    }

    fn least_busy(&self) -> Option<&Worker> {
        self.workers.iter().min_by_key(|w| w.live())
    }

    /// A placement on `w`, counted live.
    fn take(w: &Worker) -> Placement {
        w.shared.live.fetch_add(1, Ordering::AcqRel);
        Placement {
            handle: w.handle.clone(),
            live: LiveGuard(w.shared.clone()),
        }
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
        self.workers.iter().map(Worker::live).collect()
    }

    /// Time the threads have spent in idle-polling runs ([`IdlePoll`]),
    /// all together: wall-clock time from a run's start to its end, which
    /// includes the connections' work done meanwhile (and any time the
    /// thread was preempted).
    pub fn idle_polled(&self) -> Duration {
        Duration::from_nanos(
            self.workers
                .iter()
                .map(|w| w.shared.polled.load(Ordering::Relaxed))
                .sum(),
        )
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

/// How far past twice the least busy thread's count [`ConnectionThreads::place_near`]
/// still places a connection on its client's CPU: a few clients on one
/// CPU stay together, while many are spread at most about 2:1.
pub const NEAR_SLACK: usize = 4;

/// The CPUs this thread may run on, in order (empty when unknown).
fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "connection threads are not pinned: the CPU affinity cannot be read");
            Vec::new()
        }
    }
}

/// Pin the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(error = %e, cpu, "a connection thread could not be pinned to its CPU");
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

/// The host's CPU pressure, read at most every [`PRESSURE_INTERVAL`] by
/// whichever thread asks first.
struct Pressure {
    file: PathBuf,
    max: f64,
    /// Whether the last reading allowed polling.
    low: AtomicBool,
    /// The last reading: when, and the `some` total in microseconds.
    last: Mutex<Option<(Instant, u64)>>,
    /// An unreadable file is reported once.
    warned: AtomicBool,
}

impl Pressure {
    fn new(c: &IdlePoll) -> Self {
        Self {
            file: c.pressure_file.clone(),
            max: c.max_pressure,
            low: AtomicBool::new(false),
            last: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether pressure is low enough to poll. A reading is compared with
    /// the one before it when that is one to two intervals old; otherwise
    /// (the first reading, or the first after a quiet spell, which would
    /// average the spell) it only starts the measurement, and the answer is
    /// no until the next.
    fn low(&self) -> bool {
        // Another thread reading the file meanwhile: its answer will do.
        if let Ok(mut last) = self.last.try_lock() {
            let now = Instant::now();
            if last.is_none_or(|(at, _)| now.duration_since(at) >= PRESSURE_INTERVAL) {
                let total = std::fs::read_to_string(&self.file)
                    .ok()
                    .and_then(|s| some_total(&s));
                if total.is_none() && !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(file = %self.file.display(), "idle polling is off: the CPU pressure cannot be read (it needs a kernel with PSI)");
                }
                let low = match (*last, total) {
                    (Some((at, before)), Some(total))
                        if now.duration_since(at) <= 2 * PRESSURE_INTERVAL =>
                    {
                        pressure(before, total, now.duration_since(at)) <= self.max
                    }
                    _ => false,
                };
                self.low.store(low, Ordering::Relaxed);
                *last = total.map(|t| (now, t));
            }
        }
        self.low.load(Ordering::Relaxed)
    }
}

/// The `total=` of the `some` line of a PSI file, in microseconds.
fn some_total(psi: &str) -> Option<u64> {
    psi.lines()
        .find_map(|l| l.strip_prefix("some "))?
        .split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The share of `elapsed` that the PSI total grew by, from `before` to
/// `after` microseconds.
fn pressure(before: u64, after: u64, elapsed: Duration) -> f64 {
    let waited = Duration::from_micros(after.saturating_sub(before));
    if elapsed.is_zero() {
        return 1.0;
    }
    waited.as_secs_f64() / elapsed.as_secs_f64()
}

/// Waits for this thread's next [`mark_active`], taking it.
async fn next_activity() {
    std::future::poll_fn(|cx| {
        if ACTIVE.with(|a| a.replace(false)) {
            Poll::Ready(())
        } else {
            POLLER.with(|p| p.set(Some(cx.waker().clone())));
            Poll::Pending
        }
    })
    .await;
}

/// The idle poller of one thread (a task on its runtime): after activity,
/// and while the host's CPU pressure is low, keeps the runtime polling its
/// sockets (`epoll_wait` with a zero timeout) until `window` has passed
/// without activity, another task wants the CPU, or the pressure rises
/// (read again every [`PRESSURE_INTERVAL`] while polling goes on).
///
/// tokio has no setting for this; a task that yields is the way in: the
/// runtime then polls its I/O driver without sleeping, runs whatever became
/// ready, and polls the yielding task again.
async fn poll_when_idle(window: Duration, pressure: Arc<Pressure>, shared: Arc<Shared>) {
    let mut payoff = Payoff::new();
    let mut probe = false;
    loop {
        next_activity().await;
        // A busy host, or polling that has not been paying: not woken by
        // activity for a while (with many sessions that is every
        // statement); then the next activity asks again, and after a
        // pause for the payoff it starts a run that finds out.
        let pause = if !pressure.low() {
            PRESSURE_INTERVAL
        } else if !probe && !payoff.pays() {
            probe = true;
            PROBE_INTERVAL
        } else {
            probe = false;
            Duration::ZERO
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
            // Activity during the sleep is old news.
            ACTIVE.with(|a| a.set(false));
            continue;
        }
        shared.runs.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let mut until = start + window;
        let mut checked = start;
        let mut catches = 0u32;
        let expired = loop {
            let now = Instant::now();
            if ACTIVE.with(|a| a.replace(false)) {
                until = now + window;
                catches = catches.saturating_add(1);
            }
            if now >= until {
                break true;
            }
            // Statements closer together than the window keep a run going:
            // the pressure is looked at again as it goes.
            if now.duration_since(checked) >= PRESSURE_INTERVAL {
                checked = now;
                if !pressure.low() {
                    break false;
                }
            }
            // Whatever else is runnable on this CPU goes first; if it did,
            // the CPU is wanted and polling stops. (Timed on its own: a
            // pressure reading above takes longer than a yield.)
            let yielded = Instant::now();
            std::thread::yield_now();
            if yielded.elapsed() > YIELD_CONTENDED {
                break false;
            }
            tokio::task::yield_now().await;
        };
        if expired || catches > 0 {
            payoff.record(catches);
        }
        let polled = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.polled.fetch_add(polled, Ordering::Relaxed);
    }
}

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
        let threads = ConnectionThreads::start_with(
            1,
            "park",
            ThreadOptions {
                on_park: Some(hook),
                ..ThreadOptions::default()
            },
        )
        .unwrap();
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
    fn psi_totals_are_read_from_the_some_line_only() {
        let psi = "some avg10=24.73 avg60=49.20 avg300=40.40 total=661237695\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_total(psi), Some(661_237_695));
        for bad in [
            "",
            "full avg10=0.00 total=5\n",
            "some avg10=1.00\n",
            "some total=-3\n",
            "some total=12x\n",
            "some total=99999999999999999999999\n",
            "something total=5\n",
        ] {
            assert_eq!(some_total(bad), None, "{bad:?}");
        }
        let ms = Duration::from_millis;
        assert!((pressure(1_000, 51_000, ms(100)) - 0.5).abs() < 1e-9);
        assert_eq!(pressure(5, 5, ms(100)), 0.0);
        // A total that went backwards counts as none; no time at all, as
        // full pressure.
        assert_eq!(pressure(9, 5, ms(100)), 0.0);
        assert_eq!(pressure(0, 5, Duration::ZERO), 1.0);
    }

    /// A PSI file in `dir` whose total never grows: no pressure.
    fn calm(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let calm = dir.path().join("calm");
        std::fs::write(&calm, "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n").unwrap();
        calm
    }

    /// A set of one idle-polling thread whose pressure comes from `psi`.
    fn polling_thread(psi: &std::path::Path) -> ConnectionThreads {
        counted_thread(psi, Duration::from_micros(200), "idle-poll").0
    }

    /// A set of one idle-polling thread with `window`, its pressure from
    /// `psi`, and the count of its parks.
    fn counted_thread(
        psi: &std::path::Path,
        window: Duration,
        name: &str,
    ) -> (ConnectionThreads, Arc<AtomicUsize>) {
        let parks = Arc::new(AtomicUsize::new(0));
        let counted = parks.clone();
        let mut poll = IdlePoll::new(window);
        poll.pressure_file = psi.to_owned();
        let threads = ConnectionThreads::start_with(
            1,
            name,
            ThreadOptions {
                on_park: Some(Arc::new(move || {
                    counted.fetch_add(1, Ordering::Relaxed);
                })),
                idle_poll: Some(poll),
                ..ThreadOptions::default()
            },
        )
        .unwrap();
        (threads, parks)
    }

    /// Runs a task on `threads` that is active every millisecond for
    /// `for_ms`, and waits for it.
    fn busy_for(threads: &ConnectionThreads, for_ms: u64) {
        let (tx, rx) = std::sync::mpsc::channel();
        threads.place().unwrap().spawn(async move {
            for _ in 0..for_ms {
                mark_active();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx.send(()).unwrap();
        });
        rx.recv().unwrap();
    }

    #[test]
    fn threads_idle_poll_after_activity_only_while_pressure_is_low() {
        let dir = tempfile::tempdir().unwrap();
        // No pressure: the gate opens at the second reading, a pressure
        // interval after the first.
        let threads = polling_thread(&calm(&dir));
        assert_eq!(
            threads.idle_polled(),
            Duration::ZERO,
            "nothing before activity"
        );
        busy_for(&threads, 400);
        assert!(threads.idle_polled() > Duration::ZERO, "a calm host polls");

        // Pressure: the total grows ten times as fast as time passes (so
        // that a writer starved for a while on a loaded machine still
        // shows it), written whole (a new file renamed over the old). A
        // writer starved for most of a pressure interval (a loaded CI
        // host) writes the same total for two readings, which is no
        // pressure: such a run proves nothing, and is run again.
        let busy = dir.path().join("busy");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (busy, stop) = (busy.clone(), stop.clone());
                let start = Instant::now();
                std::fs::write(&busy, "some total=0\n").unwrap();
                std::thread::spawn(move || {
                    let next = busy.with_extension("new");
                    let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
                    while !stop.load(Ordering::Relaxed) {
                        let total = start.elapsed().as_micros() * 10;
                        std::fs::write(&next, format!("some avg10=100.00 total={total}\n"))
                            .unwrap();
                        std::fs::rename(&next, &busy).unwrap();
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    longest
                })
            };
            let threads = polling_thread(&busy);
            busy_for(&threads, 400);
            stop.store(true, Ordering::Relaxed);
            let longest_gap = writer.join().unwrap();
            if longest_gap >= PRESSURE_INTERVAL / 2 {
                assert!(
                    attempts < 5,
                    "the pressure writer was starved ({longest_gap:?} without a write) in {attempts} runs"
                );
                continue;
            }
            assert_eq!(
                threads.idle_polled(),
                Duration::ZERO,
                "a busy host does not"
            );
            break;
        }

        // Unreadable: no polling either.
        let threads = polling_thread(&dir.path().join("missing"));
        busy_for(&threads, 300);
        assert_eq!(
            threads.idle_polled(),
            Duration::ZERO,
            "no reading, no polling"
        );
    }

    #[test]
    fn a_polling_thread_parks_again_once_activity_stops() {
        // The query log is handed on when a thread parks: polling must end.
        let dir = tempfile::tempdir().unwrap();
        let (threads, parks) =
            counted_thread(&calm(&dir), Duration::from_micros(200), "idle-poll-park");
        busy_for(&threads, 300);
        assert!(threads.idle_polled() > Duration::ZERO, "it polled");
        let after_activity = parks.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while parks.load(Ordering::Relaxed) == after_activity {
            assert!(Instant::now() < deadline, "the thread never parked again");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn pressure_that_rises_during_a_run_stops_it() {
        // Activity every millisecond within a 200 ms window keeps one run
        // going, and a thread that polls does not park. The pressure, read
        // again as the run goes on, must end it while the activity lasts:
        // the thread then parks between activities. (On a loaded machine a
        // `sched_yield` that gives the CPU away ends runs too, so there this
        // passes even without the new reading; on an idle one it does not.)
        let dir = tempfile::tempdir().unwrap();
        let psi = calm(&dir);
        let (threads, parks) = counted_thread(&psi, Duration::from_millis(200), "idle-poll-rise");
        let (risen, rise) = std::sync::mpsc::channel::<()>();
        let (done, finished) = std::sync::mpsc::channel::<usize>();
        let seen = parks.clone();
        threads.place().unwrap().spawn(async move {
            while rise.try_recv().is_err() {
                mark_active();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let at_rise = seen.load(Ordering::Relaxed);
            for _ in 0..400 {
                mark_active();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Parks while the activity lasted (without the new reading the
            // run would go on 200 ms past this point).
            let _ = done.send(seen.load(Ordering::Relaxed) - at_rise);
        });
        // Polling by now: the gate opened at the second reading.
        std::thread::sleep(Duration::from_millis(300));
        let next = psi.with_extension("new");
        std::fs::write(&next, "some avg10=90.00 total=999999999999\n").unwrap();
        std::fs::rename(&next, &psi).unwrap();
        risen.send(()).unwrap();
        let parked = finished.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(parked > 0, "the run went on through the pressure");
    }

    #[test]
    fn a_polling_thread_still_serves_its_sockets() {
        // Round trips over loopback to a task on an idle-polling thread:
        // the runtime's I/O is driven by the polling as well as by sleeping.
        let dir = tempfile::tempdir().unwrap();
        let threads = polling_thread(&calm(&dir));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        threads.place().unwrap().spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 64];
            // Ends when the test's side closes.
            while let Ok(n @ 1..) = s.read(&mut b).await {
                mark_active();
                if s.write_all(b.get(..n).unwrap_or_default()).await.is_err() {
                    return;
                }
            }
        });
        // Past the pressure's first reading, so that the thread polls; a
        // run is counted when it ends, so let that one end first.
        busy_for(&threads, 150);
        std::thread::sleep(Duration::from_millis(50));
        let before = threads.idle_polled();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        use std::io::{Read, Write};
        for i in 0..2000u32 {
            let msg = i.to_be_bytes();
            c.write_all(&msg).unwrap();
            let mut got = [0u8; 4];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, msg);
        }
        // A run is counted when it ends, and one run can span all the round
        // trips (each extends it): it ends a window after the last.
        let waited = Instant::now();
        while threads.idle_polled() <= before && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(threads.idle_polled() > before, "it polled meanwhile");
    }

    #[test]
    fn cpu_lists_are_counted_and_malformed_ones_refused() {
        for (list, n) in [("0-1\n", 2), ("0", 1), ("0-3,8,10-11", 7), ("5-5", 1)] {
            assert_eq!(cpu_list_len(list), Some(n), "{list:?}");
        }
        for bad in [
            "",
            "\n",
            "3-1",
            "0-",
            "-1",
            "a",
            "0,,1",
            "0-1-2",
            "99999999999999999999",
        ] {
            assert_eq!(cpu_list_len(bad), None, "{bad:?}");
        }
        // This machine's own answer is either; it must not panic.
        let _ = uses_every_cpu();
    }

    #[test]
    fn polling_pays_while_runs_catch_activity() {
        let mut p = Payoff::new();
        assert!(p.pays(), "the first run finds out");
        // A run that caught nothing turns it off at once...
        p.record(0);
        assert!(!p.pays());
        // ...and runs that catch several turn it on again.
        p.record(9);
        assert!(p.pays());
        // One catch every other run is not enough: each miss burned a
        // whole window.
        for _ in 0..64 {
            p.record(1);
            p.record(0);
        }
        assert!(!p.pays());
        // A long steady run of misses cannot be undone by one lucky run.
        for _ in 0..64 {
            p.record(0);
        }
        p.record(u32::MAX);
        assert!(!p.pays(), "one run counts at most CAP");
        p.record(u32::MAX);
        p.record(u32::MAX);
        assert!(p.pays(), "a few good runs do");
        // Steady success stays on.
        for _ in 0..64 {
            p.record(2);
        }
        assert!(p.pays());
    }

    #[test]
    fn polling_that_catches_nothing_backs_off() {
        // Activity every millisecond and a 100 µs window: every run ends
        // without catching anything. Without the payoff each activity
        // would start a run (about 300 here); with it, a run starts at most
        // once per probe interval.
        let dir = tempfile::tempdir().unwrap();
        let (threads, _) =
            counted_thread(&calm(&dir), Duration::from_micros(100), "idle-poll-payoff");
        busy_for(&threads, 300);
        let runs = threads
            .workers
            .first()
            .unwrap()
            .shared
            .runs
            .load(Ordering::Relaxed);
        assert!(runs > 0, "it tried");
        // 300 ms / 10 ms, plus slack for a slow machine's late timers.
        assert!(runs <= 45, "{runs} runs for 300 activations");
    }

    /// The CPUs each thread of `threads` may run on, by thread.
    fn affinities(threads: &ConnectionThreads) -> Vec<Vec<usize>> {
        threads
            .workers
            .iter()
            .map(|w| {
                let (tx, rx) = std::sync::mpsc::channel();
                w.handle.spawn(async move {
                    let _ = tx.send(allowed_cpus());
                });
                rx.recv().unwrap()
            })
            .collect()
    }

    #[test]
    fn pinned_threads_each_run_on_one_cpu_in_turn() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty(), "this thread's affinity is readable");
        // One more thread than CPUs: the last shares the first's CPU.
        let n = allowed.len() + 1;
        let pinned = ConnectionThreads::start_with(
            n,
            "pinned",
            ThreadOptions {
                pin_cpus: true,
                ..ThreadOptions::default()
            },
        )
        .unwrap();
        let expected: Vec<Vec<usize>> = (0..n)
            .map(|i| vec![*allowed.get(i % allowed.len()).unwrap()])
            .collect();
        assert_eq!(affinities(&pinned), expected);
        // Unpinned threads keep the process's whole set.
        let free = ConnectionThreads::start(2, "free").unwrap();
        assert_eq!(affinities(&free), vec![allowed.clone(), allowed]);
    }

    /// A loopback connection whose client side sent from `cpu` (the
    /// calling thread pinned there meanwhile), accepted: its
    /// `SO_INCOMING_CPU` is `cpu`. Both ends are returned: the client's
    /// close, from this thread's CPU, would count as the last packet in.
    fn accepted_from(
        listener: &std::net::TcpListener,
        cpu: usize,
    ) -> (std::net::TcpStream, std::net::TcpStream) {
        use std::io::{Read, Write};
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            pin_to(cpu);
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(b"x").unwrap();
            c
        });
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        (s, client.join().unwrap())
    }

    /// The CPU of the thread a placement runs on.
    fn cpu_of(threads: &ConnectionThreads, p: Placement) -> (Option<usize>, LiveGuard) {
        let (tx, rx) = std::sync::mpsc::channel();
        let Placement { handle, live } = p;
        handle.spawn(async move {
            let _ = tx.send(worker_index());
        });
        let index = rx.recv().unwrap();
        let cpu = threads.workers.get(index - 1).unwrap().cpu;
        (cpu, live)
    }

    #[test]
    fn connections_go_to_the_pinned_thread_on_their_clients_cpu() {
        let allowed = allowed_cpus();
        let threads = ConnectionThreads::start_with(
            allowed.len(),
            "near",
            ThreadOptions {
                pin_cpus: true,
                ..ThreadOptions::default()
            },
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // From each CPU in turn, last first (placement by count alone
        // would start at the first thread), twice: each lands on that
        // CPU's thread.
        let mut held = Vec::new();
        for &cpu in allowed.iter().rev().chain(allowed.iter().rev()) {
            let (s, _client) = accepted_from(&listener, cpu);
            let (on, live) = cpu_of(&threads, threads.place_near(&s).unwrap());
            assert_eq!(on, Some(cpu), "a client on CPU {cpu}");
            held.push(live);
        }
        drop(held);
        // Many clients on one CPU: spread once its thread is past twice the
        // least busy one's count plus the slack.
        let first = *allowed.first().unwrap();
        let mut held = Vec::new();
        for _ in 0..20 {
            let (s, _client) = accepted_from(&listener, first);
            held.push(cpu_of(&threads, threads.place_near(&s).unwrap()).1);
        }
        let live = threads.live();
        let (most, least) = (live.iter().max().unwrap(), live.iter().min().unwrap());
        assert!(*most <= 2 * least + NEAR_SLACK + 1, "{live:?}");
        if allowed.len() > 1 {
            assert!(*most > *least, "locality still weighs: {live:?}");
        }
        // Unpinned threads place by count alone.
        let free = ConnectionThreads::start(2, "near-free").unwrap();
        let (s, _client) = accepted_from(&listener, first);
        let a = free.place_near(&s).unwrap();
        let b = free.place_near(&s).unwrap();
        assert_eq!(free.live(), vec![1, 1]);
        drop((a, b));
    }

    #[test]
    fn an_empty_set_places_nothing() {
        let none = ConnectionThreads::start(0, "none").unwrap();
        assert!(none.place().is_none() && none.is_empty());
        assert!(ConnectionThreads::default().place().is_none());
    }
}
