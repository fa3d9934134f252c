//! The query log as JSON lines: a `tracing` layer for the bastion's
//! per-statement events (target [`TARGET`]).
//!
//! `tracing-subscriber`'s `fmt` layer formats every field through
//! `core::fmt` (strings through `Debug`, one `write_char` per character,
//! plus its style machinery even without colours): about 14,700
//! instructions per statement under `pgbench`, nearly twice the bastion's
//! whole work on a cached statement. This layer writes the same fields as
//! one JSON object per line, escaping strings in runs and field names once
//! per callsite, into a buffer reused per thread: about 3,400 instructions
//! per statement with `tracing`'s dispatch and the clock reads
//! (docs/BENCHMARKS.md, "2026-12-06: the query log", and "2026-12-06,
//! third session"). Batched
//! ([`QueryLog::batched`], as `hexon serve` runs it), a thread's lines go
//! to a writer thread when it runs out of work, which writes many threads'
//! batches in a few `write`s every 20 ms.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! tracing_subscriber::registry()
//!     .with(hexon_sql::query_log::QueryLog::new(std::io::stderr).batched())
//!     .init();
//! // Sessions on a runtime of your own (`session_threads = 0`) also need
//! // `tokio::runtime::Builder::on_thread_park(hexon_sql::query_log::flush)`;
//! // the bastion's session threads call it themselves.
//! // Before the process exits, the lines still waiting:
//! hexon_sql::query_log::drain();
//! ```
//!
//! A line: `{"ts":"2026-12-06T00:41:07.123456Z","level":"INFO",
//! "message":"statement","user":"alice","database":"app","role":"reader",
//! "statement":"SELECT …","verdict":"admitted","stage":"","code":"",
//! "duration_us":180,"rows":1}` (fields in the order the event has them).

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// The target of the bastion's per-statement events.
pub const TARGET: &str = "hexon_sql::query";

/// A thread's buffer is not kept after holding more than this.
const KEEP_BUFFER: usize = 64 * 1024;

/// A batch is written before it would grow past this: `PIPE_BUF` on Linux,
/// the most a `write` to a pipe (a container's or a supervisor's stderr)
/// keeps whole beside other writers' lines.
const BATCH: usize = 4096;

/// A batch whose first line is older than this is written with the next
/// line, whether or not its thread went idle in between.
const BATCH_AGE: Duration = Duration::from_millis(100);

/// Where a layer's lines go: its writer, type-erased so that the
/// per-thread buffer can hold it.
type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// This thread's lines not yet written, and where they go.
#[derive(Default)]
struct Batch {
    lines: String,
    sink: Option<Sink>,
    /// Whether the sink's layer is [`QueryLog::batched`]: its lines go to
    /// the writer thread, not straight to the sink.
    batched: bool,
    /// When the first line of `lines` was logged.
    since: Option<SystemTime>,
    /// Each callsite's keys, escaped once per thread.
    keys: Keys,
}

impl Batch {
    /// Add `event`'s line for `sink`, and write out what the batch holds
    /// when it is not `batched` or as [`BATCH`] and [`BATCH_AGE`] say.
    fn add(&mut self, sink: &Sink, event: &Event<'_>, batched: bool) {
        // Another layer's lines (a second subscriber on this thread) go to
        // their own writer first.
        if !self.sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, sink)) {
            self.write_out();
            self.sink = Some(sink.clone());
        }
        self.batched = batched;
        let start = self.lines.len();
        let now = SystemTime::now();
        // A `Debug` that panics half-way must not leave half a line for
        // the next one to be appended to.
        let keys = self.keys.of(event.metadata());
        let formatted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            format_line(&mut self.lines, event, now, keys);
        }));
        if let Err(panic) = formatted {
            self.lines.truncate(start);
            std::panic::resume_unwind(panic);
        }
        let mut since = *self.since.get_or_insert(now);
        if self.lines.len() > BATCH && start > 0 {
            // The lines before this one go out; this one begins the next
            // batch.
            let line = self.lines.split_off(start);
            self.write_out();
            self.lines = line;
            self.since = Some(now);
            since = now;
        }
        let stale = now.duration_since(since).is_ok_and(|age| age >= BATCH_AGE);
        if !batched || self.lines.len() > BATCH || stale {
            self.write_out();
        }
    }

    /// Write out what the batch holds (see [`deliver`]).
    fn write_out(&mut self) {
        self.since = None;
        let Some(sink) = &self.sink else { return };
        if self.lines.is_empty() {
            return;
        }
        // Taken out first: a writer that panics loses this batch rather
        // than leaving it to be written again.
        self.lines = deliver(sink, self.batched, std::mem::take(&mut self.lines));
    }
}

/// Hand `lines` to the writer thread when `batched`, else write them to
/// `sink` here; an empty buffer to fill next.
fn deliver(sink: &Sink, batched: bool, mut lines: String) -> String {
    if batched {
        return WRITER.hand_off(sink, lines);
    }
    sink(lines.as_bytes());
    lines.clear();
    if lines.capacity() > KEEP_BUFFER {
        lines = String::new();
    }
    lines
}

impl Drop for Batch {
    // A thread that ends writes what it holds.
    fn drop(&mut self) {
        self.write_out();
    }
}

thread_local! {
    static BATCH_LINES: RefCell<Batch> = RefCell::new(Batch::default());
}

/// How long the writer thread collects batches after the first arrives
/// before it writes them.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// The writer thread's queue, for every batched layer of the process.
///
/// Session threads hand their batches over instead of writing them: a
/// `write` to a file from a session thread cost about 1.5 µs of its CPU per
/// statement under `pgbench` (one `write` of ~500 bytes per idle moment,
/// most of it ext4's per-call work), where the writer thread writes
/// [`WRITE_EVERY`] worth of batches in a few writes of up to [`BATCH`]
/// bytes. A hand-over is a lock and a push (it waits only when
/// [`QUEUE_LIMIT`] bytes are queued); the writer is woken only when the
/// queue was empty, so a busy process wakes it about once per
/// [`WRITE_EVERY`] and an idle one never.
struct Writer {
    queue: Mutex<Queue>,
    /// The queue got work, or a [`drain`] is waiting.
    work: Condvar,
    /// The writer wrote what it had taken.
    done: Condvar,
}

#[derive(Default)]
struct Queue {
    batches: Vec<(Sink, String)>,
    /// Emptied buffers for the session threads to reuse.
    spare: Vec<String>,
    /// Bytes in `batches`.
    queued: usize,
    /// Batches handed over and written so far.
    handed: u64,
    written: u64,
    /// A [`drain`] is waiting: write without collecting first.
    urgent: bool,
    started: bool,
}

static WRITER: Writer = Writer {
    queue: Mutex::new(Queue {
        batches: Vec::new(),
        spare: Vec::new(),
        queued: 0,
        handed: 0,
        written: 0,
        urgent: false,
        started: false,
    }),
    work: Condvar::new(),
    done: Condvar::new(),
};

/// How many emptied buffers the writer keeps for reuse: under load
/// threads hand over a batch each time they go idle, dozens in one
/// [`WRITE_EVERY`].
const SPARE: usize = 64;

/// The most the queue holds: past it, a thread handing over a batch waits
/// for the writer (a stalled reader of stderr slows the sessions down, as a
/// blocking `write` did, instead of growing the queue without bound).
const QUEUE_LIMIT: usize = 8 << 20;

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock is never held across a call that could panic.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start the writer thread, once; whether it runs.
    fn start(&'static self) -> bool {
        let mut q = self.lock();
        if !q.started {
            q.started = std::thread::Builder::new()
                .name("hexon-query-log".into())
                .spawn(|| WRITER.run())
                .is_ok();
        }
        q.started
    }

    /// Queue `lines` for `sink`; a buffer to fill next.
    fn hand_off(&'static self, sink: &Sink, lines: String) -> String {
        let mut q = self.lock();
        if !q.started {
            drop(q);
            if !self.start() {
                // No thread: write here rather than lose the lines.
                sink(lines.as_bytes());
                return String::new();
            }
            q = self.lock();
        }
        while q.queued > QUEUE_LIMIT {
            q.urgent = true;
            self.work.notify_one();
            q = self
                .done
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        q.queued += lines.len();
        q.batches.push((sink.clone(), lines));
        q.handed += 1;
        if q.batches.len() == 1 {
            self.work.notify_one();
        }
        // A fresh buffer starts at a batch's size: grown from empty it was
        // reallocated half a dozen times per hand-over.
        q.spare
            .pop()
            .unwrap_or_else(|| String::with_capacity(BATCH + BATCH / 4))
    }

    /// The writer thread: wait for batches, give others [`WRITE_EVERY`] to
    /// join them, write them in order.
    fn run(&self) {
        let mut out = String::new();
        loop {
            let mut q = self.lock();
            while q.batches.is_empty() {
                q = self
                    .work
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if !q.urgent {
                q = self
                    .work
                    .wait_timeout_while(q, WRITE_EVERY, |q| !q.urgent)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            q.urgent = false;
            let batches = std::mem::take(&mut q.batches);
            q.queued = 0;
            let upto = q.handed;
            drop(q);
            let mut spare = Vec::new();
            let mut current: Option<Sink> = None;
            for (sink, mut lines) in batches {
                // Consecutive batches for one sink go out together while
                // they stay within `BATCH` (each is whole lines).
                let same = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &sink));
                if !same || out.len() + lines.len() > BATCH {
                    if let Some(c) = &current {
                        write_guarded(c, &out);
                    }
                    out.clear();
                    current = Some(sink);
                }
                out.push_str(&lines);
                lines.clear();
                if lines.capacity() <= KEEP_BUFFER {
                    spare.push(lines);
                }
            }
            if let Some(c) = &current {
                write_guarded(c, &out);
            }
            out.clear();
            if out.capacity() > KEEP_BUFFER {
                out = String::new();
            }
            let mut q = self.lock();
            q.written = upto;
            let room = SPARE.saturating_sub(q.spare.len());
            q.spare.extend(spare.into_iter().take(room));
            drop(q);
            self.done.notify_all();
        }
    }
}

/// One write to `sink`; a sink that panics loses these lines, and the
/// writer thread goes on.
fn write_guarded(sink: &Sink, out: &str) {
    if !out.is_empty() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(out.as_bytes())));
    }
}

/// How long [`drain`] waits at most: a writer blocked on a full pipe must
/// not keep a process from exiting.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Wait until every batch handed to the writer thread so far is written
/// (at most 5 s): before a process exits, so that the last lines are not
/// lost (call [`flush`] first on a thread whose own batch should go too).
/// Returns at once when nothing is waiting.
pub fn drain() {
    let mut q = WRITER.lock();
    let target = q.handed;
    if !q.started || q.written >= target {
        return;
    }
    q.urgent = true;
    WRITER.work.notify_one();
    let _ = WRITER
        .done
        .wait_timeout_while(q, DRAIN_LIMIT, |q| q.written < target);
}

/// The layer: events of [`TARGET`] as JSON lines to a writer; other
/// events are left to the other layers (wrap those in [`without`], or
/// the query log is written twice).
pub struct QueryLog {
    sink: Sink,
    /// Set by [`batched`](Self::batched).
    batched: bool,
}

impl std::fmt::Debug for QueryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryLog")
            .field("batched", &self.batched)
            .finish_non_exhaustive()
    }
}

impl QueryLog {
    /// Write to `make_writer` (`std::io::stderr`, a file behind a mutex, a
    /// non-blocking writer), one `write_all` per line.
    pub fn new<W>(make_writer: W) -> Self
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        Self {
            sink: Arc::new(move |bytes: &[u8]| {
                let _ = make_writer.make_writer().write_all(bytes);
            }),
            batched: false,
        }
    }

    /// Batch lines per thread: a thread's lines wait in its buffer until
    /// the thread calls [`flush`] (the bastion's session threads do each
    /// time they run out of work), the batch would pass 4 KiB, a line comes
    /// 100 ms or more after the batch's first, or the thread ends; then
    /// the batch goes to the query log's writer thread, which collects
    /// batches for 20 ms and writes them in order, consecutive batches
    /// together up to 4 KiB a `write_all`. Under load that is one write for
    /// dozens of statements, none of them on a session thread.
    ///
    /// The costs:
    /// - a line reaches the writer when its thread goes idle, plus up to
    ///   20 ms, rather than at once; a thread that stays busy without
    ///   logging more holds its last lines until it does;
    /// - a process that exits or is killed while lines wait loses them (4
    ///   KiB at most per thread, and what the writer has not written yet:
    ///   20 ms of lines, more if the sink is slow, up to 8 MiB): call
    ///   [`drain`] before exiting, as `hexon serve` does; threads that are
    ///   still running then keep what they hold;
    /// - on a work-stealing runtime a session's task can move between
    ///   threads, so its lines can come out of order (each has its `ts`);
    ///   the bastion's session threads never move a session;
    /// - events logged on threads that never call [`flush`] wait for the
    ///   conditions above: give such runtimes
    ///   `Builder::on_thread_park(hexon_sql::query_log::flush)`.
    #[must_use]
    pub fn batched(mut self) -> Self {
        self.batched = true;
        // Started here rather than at the first hand-over, which can come
        // from a thread-local's destructor as a thread exits.
        WRITER.start();
        self
    }
}

/// Hand this thread's batched query-log lines to the writer thread (see
/// [`QueryLog::batched`]); nothing to do when there are none. Cheap enough
/// to call each time a thread parks: a lock and a push (a wait only when
/// the writer is 8 MiB behind).
pub fn flush() {
    // `try_with`: a thread being torn down has nothing left to flush.
    let _ = BATCH_LINES.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut()
            && !b.lines.is_empty()
        {
            b.write_out();
        }
    });
}

/// Whether `meta` is a query-log event.
pub fn is_query_log(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == TARGET
}

/// `layer` without the query log's events: for the other layers of a
/// subscriber that has a [`QueryLog`] (`registry().with(without(fmt))`).
///
/// A wrapper rather than a per-layer filter: a filter that said `never` to
/// the query log's callsites, beside a layer that wants them, made
/// `tracing` ask every filter of the subscriber again at each statement
/// (`Interest::sometimes`), about 300 instructions a statement; the wrapper
/// leaves the callsites' interest cached and drops the events in
/// [`Layer::on_event`]. It does not forward `downcast_raw` (this crate
/// forbids `unsafe`): a layer found by downcasting, such as `tracing-error`
/// looks for, is not found through it.
pub fn without<L>(layer: L) -> Without<L> {
    Without(layer)
}

/// A layer that passes on everything but the query log's events: see
/// [`without`].
#[derive(Debug, Clone)]
pub struct Without<L>(L);

impl<S: Subscriber, L: Layer<S>> Layer<S> for Without<L> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(&self, meta: &'static tracing::Metadata<'static>) -> Interest {
        self.0.register_callsite(meta)
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(meta, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.0.on_record(id, values, ctx);
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(id, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        // `false` here would hide the event from every layer: the query log
        // is dropped in `on_event` instead.
        is_query_log(event.metadata()) || self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !is_query_log(event.metadata()) {
            self.0.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx);
    }
}

impl<S: Subscriber> Layer<S> for QueryLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !is_query_log(event.metadata()) {
            return;
        }
        let added = BATCH_LINES.try_with(|b| match b.try_borrow_mut() {
            Ok(mut b) => {
                b.add(&self.sink, event, self.batched);
                true
            }
            Err(_) => false,
        });
        // A re-entrant event (a writer that logs), or one logged while the
        // thread is torn down, goes alone: batched, behind the thread's
        // last batch.
        if added != Ok(true) {
            let mut line = String::new();
            let keys = Keys::escaped(event.metadata());
            format_line(&mut line, event, SystemTime::now(), &keys);
            deliver(&self.sink, self.batched, line);
        }
    }
}

/// One event as a JSON object and a newline, stamped `now`; `keys` are
/// its callsite's ([`Keys::escaped`]).
fn format_line(buf: &mut String, event: &Event<'_>, now: SystemTime, keys: &[Box<str>]) {
    buf.push_str("{\"ts\":\"");
    push_timestamp(buf, now);
    buf.push_str("\",\"level\":\"");
    buf.push_str(event.metadata().level().as_str());
    buf.push('"');
    event.record(&mut Fields { buf, keys });
    buf.push_str("}\n");
}

/// Callsites' field names as they open a JSON member (`,"name":`), made
/// once per callsite and thread: a name is escaped like any string, which
/// for the ten fields of a statement's event cost more than the values.
#[derive(Default)]
struct Keys(Vec<(tracing::callsite::Identifier, Box<[Box<str>]>)>);

/// Callsites whose keys a thread keeps; the query log has a handful.
const KEPT_CALLSITES: usize = 32;

impl Keys {
    /// The keys of `meta`'s fields, by field index.
    fn of(&mut self, meta: &tracing::Metadata<'_>) -> &[Box<str>] {
        let id = meta.callsite();
        let at = match self.0.iter().position(|(c, _)| *c == id) {
            Some(at) => at,
            None => {
                if self.0.len() >= KEPT_CALLSITES {
                    self.0.clear();
                }
                self.0.push((id, Self::escaped(meta)));
                self.0.len() - 1
            }
        };
        self.0.get(at).map_or(&[], |(_, keys)| keys)
    }

    /// `,"name":` for each field of `meta`, in field-index order.
    fn escaped(meta: &tracing::Metadata<'_>) -> Box<[Box<str>]> {
        meta.fields()
            .iter()
            .map(|f| {
                let mut k = String::from(",");
                push_json_str(&mut k, f.name());
                k.push(':');
                k.into_boxed_str()
            })
            .collect()
    }
}

struct Fields<'a> {
    buf: &'a mut String,
    keys: &'a [Box<str>],
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        match self.keys.get(field.index()) {
            Some(k) => self.buf.push_str(k),
            // Not from the event's own callsite (never, for an event).
            None => {
                self.buf.push(',');
                push_json_str(self.buf, field.name());
                self.buf.push(':');
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.buf, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.buf.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.buf.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `message` and other formatted values, as text, escaped as they
        // are written (no intermediate string).
        self.key(field);
        self.buf.push('"');
        let _ = std::fmt::write(&mut Escaping(self.buf), format_args!("{value:?}"));
        self.buf.push('"');
    }
}

/// A `fmt::Write` that appends JSON-string-escaped text (no quotes).
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// `s` as a JSON string: quotes, backslashes and control characters
/// escaped (RFC 8259), and DEL and the Unicode line breaks U+0085, U+2028
/// and U+2029 too (readers such as Python's `splitlines` break lines
/// there), the runs between them copied whole.
pub(crate) fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    push_escaped(buf, s);
    buf.push('"');
}

/// [`push_json_str`] without the quotes.
fn push_escaped(buf: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut run = 0;
    while let Some((i, len)) = first_escape(b, run) {
        // `i` starts a character (an ASCII byte or a lead byte) and `run`
        // follows one, so both are on character boundaries.
        buf.push_str(s.get(run..i).unwrap_or_default());
        match b.get(i).copied().unwrap_or(0) {
            b'"' => buf.push_str("\\\""),
            b'\\' => buf.push_str("\\\\"),
            b'\n' => buf.push_str("\\n"),
            b'\r' => buf.push_str("\\r"),
            b'\t' => buf.push_str("\\t"),
            0xC2 => buf.push_str("\\u0085"),
            0xE2 if b.get(i + 2) == Some(&0xA8) => buf.push_str("\\u2028"),
            0xE2 => buf.push_str("\\u2029"),
            c => {
                buf.push_str("\\u00");
                push_hex_byte(buf, c);
            }
        }
        run = i + len;
    }
    buf.push_str(s.get(run..).unwrap_or_default());
}

/// How many bytes at `b[i..]` make one thing to escape: 1 for a byte of
/// [`needs_escape`], 2 for U+0085, 3 for U+2028 and U+2029; 0 for none.
#[inline(always)]
fn escape_len(b: &[u8], i: usize) -> usize {
    match b.get(i).copied() {
        Some(c) if needs_escape(c) => 1,
        Some(0xC2) if b.get(i + 1) == Some(&0x85) => 2,
        Some(0xE2) if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xA8 | 0xA9)) => 3,
        _ => 0,
    }
}

/// Where the first thing to escape ([`escape_len`]) at or after `from`
/// starts, and its length.
fn first_escape(b: &[u8], mut from: usize) -> Option<(usize, usize)> {
    while let Some(p) = next_candidate(b, from) {
        let len = escape_len(b, p);
        if len > 0 {
            return Some((p, len));
        }
        from = p + 1;
    }
    None
}

/// The first byte at or after `from` that may start something to escape
/// (a byte of [`needs_escape`], or the lead byte of a line break), eight
/// bytes at a time (SWAR), since a statement is mostly bytes that need
/// nothing. `serde_json` and `memchr` have no search for this set.
fn next_candidate(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Non-zero when a byte of `x` is below `n` (n <= 128): exact for the
    // word as a whole, which is all that is asked of it here.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    let mut at = from;
    while let Some(chunk) = b.get(at..at + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let w = u64::from_le_bytes(bytes);
        let hit = below(w, 0x20)
            | zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | zero(w ^ (ONES * 0x7f))
            | zero(w ^ (ONES * 0xC2))
            | zero(w ^ (ONES * 0xE2));
        if hit != 0
            && let Some(p) = chunk.iter().position(|&c| candidate(c))
        {
            return Some(at + p);
        }
        at += 8;
    }
    // The tail, and strings shorter than a word (most of a line's values).
    b.get(at..)?
        .iter()
        .position(|&c| candidate(c))
        .map(|p| at + p)
}

/// Whether `c` may start something to escape: a byte of [`needs_escape`]
/// or the lead byte of a line break. A table: one load per byte where the
/// comparisons took six.
#[inline(always)]
fn candidate(c: u8) -> bool {
    ESCAPE_CANDIDATES
        .get(usize::from(c))
        .copied()
        .unwrap_or(true)
}

static ESCAPE_CANDIDATES: [bool; 256] = escape_candidates();

// The index is below 256 by the loop's bound.
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
const fn escape_candidates() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = needs_escape(c) || c == 0xC2 || c == 0xE2;
        i += 1;
    }
    t
}

/// The bytes [`push_json_str`] escapes on their own: `"`, `\`, controls
/// and DEL.
#[inline(always)]
const fn needs_escape(c: u8) -> bool {
    c < 0x20 || c == b'"' || c == b'\\' || c == 0x7f
}

fn push_hex_byte(buf: &mut String, c: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for nibble in [c >> 4, c & 0xf] {
        buf.push(char::from(
            HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
        ));
    }
}

/// `v` in decimal, at least `width` digits (zero-padded).
fn push_padded(buf: &mut String, v: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(v);
    for _ in text.len()..width {
        buf.push('0');
    }
    buf.push_str(text);
}

/// RFC 3339 in UTC with microseconds, `1970-01-01T00:00:00.000000Z` for a
/// clock before the epoch. The part up to the seconds is formatted once a
/// second per thread.
fn push_timestamp(buf: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let cached = SECOND.try_with(|cached| match cached.try_borrow_mut() {
        Ok(mut cached) => {
            if cached.0 != secs {
                cached.1.clear();
                push_seconds(&mut cached.1, secs);
                cached.0 = secs;
            }
            buf.push_str(&cached.1);
            true
        }
        Err(_) => false,
    });
    if cached != Ok(true) {
        push_seconds(buf, secs);
    }
    // The microseconds, on every line: six digits written in place, without
    // `push_padded`'s `itoa` and padding pushes (the date parts, formatted
    // once a second, use it).
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + u8::try_from(micros % 10).unwrap_or(0);
        micros /= 10;
    }
    buf.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    buf.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the epoch.
fn push_seconds(buf: &mut String, secs: u64) {
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(secs / 86_400);
    for (v, width, sep) in [
        (y, 4, '-'),
        (m, 2, '-'),
        (d, 2, 'T'),
        (rem / 3600, 2, ':'),
        (rem / 60 % 60, 2, ':'),
        (rem % 60, 2, '.'),
    ] {
        push_padded(buf, v, width);
        buf.push(sep);
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days since the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::prelude::*;

    /// Records each `write` apart, to count them.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn writes(&self) -> usize {
            self.0.lock().unwrap().len()
        }

        fn parsed(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().concat()).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let sink = Sink::default();
        let w = sink.clone();
        let subscriber = tracing_subscriber::registry().with(QueryLog::new(move || w.clone()));
        tracing::subscriber::with_default(subscriber, f);
        sink.parsed()
    }

    fn statement(n: usize, text: &str) {
        tracing::info!(target: "hexon_sql::query", n, statement = text, "statement");
    }

    /// Run `f` on a thread of its own with a batched query log (`f` sees
    /// the sink as it goes); the sink once the thread has ended.
    fn batched(f: impl FnOnce(&Sink) + Send + 'static) -> Sink {
        let sink = Sink::default();
        let (w, inner) = (sink.clone(), sink.clone());
        std::thread::spawn(move || {
            let layer = QueryLog::new(move || w.clone()).batched();
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || f(&inner));
        })
        .join()
        .unwrap();
        drain();
        sink
    }

    #[test]
    fn other_layers_see_everything_but_the_query_log() {
        let (query, text) = (Sink::default(), Sink::default());
        let (q, t) = (query.clone(), text.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(without(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || t.clone())
                    .with_ansi(false),
            ))
            .with(QueryLog::new(move || q.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // Each callsite twice: the second time from tracing's cache of
            // the callsite's interest.
            for n in 0..2 {
                statement(n, "SELECT 1");
                tracing::info!(n, "an ordinary event");
                tracing::debug!(n, "below the level");
            }
        });
        let text = String::from_utf8(text.0.lock().unwrap().concat()).unwrap();
        assert_eq!(text.matches("an ordinary event").count(), 2, "{text}");
        assert!(!text.contains("SELECT 1"), "{text}");
        assert!(!text.contains("below the level"), "{text}");
        let query = query.parsed();
        assert_eq!(query.len(), 2);
        assert!(query.iter().all(|l| l["statement"] == "SELECT 1"));
    }

    #[test]
    fn keys_are_escaped_once_per_callsite_and_still_escaped() {
        let got = lines(|| {
            for n in 0..2 {
                tracing::info!(target: "hexon_sql::query", n, "odd \"key\"" = "v", "statement");
            }
        });
        assert_eq!(got.len(), 2);
        for l in got {
            assert_eq!(l["odd \"key\""], "v");
            assert_eq!(l["message"], "statement");
        }
    }

    #[test]
    fn batched_lines_wait_for_flush_and_go_out_in_one_write() {
        let sink = batched(|sink| {
            for n in 0..3 {
                statement(n, "SELECT 1");
            }
            drain();
            assert_eq!(sink.writes(), 0, "nothing before the flush");
            flush();
            drain();
            assert_eq!(sink.writes(), 1, "one write for the three");
            flush();
            drain();
            assert_eq!(sink.writes(), 1, "an empty batch writes nothing");
            statement(3, "SELECT 2");
        });
        // The thread's end wrote the last one.
        assert_eq!(sink.writes(), 2);
        let got = sink.parsed();
        let ns: Vec<_> = got.iter().map(|l| l["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, [0, 1, 2, 3]);
    }

    #[test]
    fn a_stale_batch_goes_out_with_the_next_line() {
        let sink = batched(|sink| {
            statement(0, "SELECT 1");
            std::thread::sleep(BATCH_AGE + std::time::Duration::from_millis(20));
            statement(1, "SELECT 2");
            drain();
            assert_eq!(sink.writes(), 1, "both, without a flush");
        });
        assert_eq!(sink.parsed().len(), 2);
    }

    #[test]
    fn a_writer_that_panics_loses_its_batch_and_the_writer_thread_goes_on() {
        #[derive(Clone)]
        struct PanicsOnce(Arc<std::sync::atomic::AtomicBool>, Sink);
        impl std::io::Write for PanicsOnce {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    panic!("a writer that panics");
                }
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let w = PanicsOnce(Arc::default(), sink.clone());
        std::thread::spawn(move || {
            let layer = QueryLog::new(move || w.clone()).batched();
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                statement(0, "SELECT 1");
                flush();
                drain();
                statement(1, "SELECT 2");
                flush();
                drain();
            });
        })
        .join()
        .unwrap();
        let ns: Vec<_> = sink
            .parsed()
            .iter()
            .map(|l| l["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, [1], "the first batch is lost, the second written");
    }

    #[test]
    fn threads_batches_go_out_whole_and_each_threads_in_order() {
        let sink = Sink::default();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let w = sink.clone();
                std::thread::spawn(move || {
                    let layer = QueryLog::new(move || w.clone()).batched();
                    let subscriber = tracing_subscriber::registry().with(layer);
                    tracing::subscriber::with_default(subscriber, || {
                        for i in 0..200 {
                            tracing::info!(target: "hexon_sql::query", t, i, statement = "SELECT 1", "statement");
                            if i % 7 == 0 {
                                flush();
                            }
                        }
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drain();
        for w in sink.0.lock().unwrap().iter() {
            assert!(w.len() <= BATCH && w.ends_with(b"\n"), "{} bytes", w.len());
        }
        let mut next = [0u64; 4];
        for l in sink.parsed() {
            let t = usize::try_from(l["t"].as_u64().unwrap()).unwrap();
            assert_eq!(l["i"].as_u64().unwrap(), next[t], "thread {t} in order");
            next[t] += 1;
        }
        assert_eq!(next, [200; 4], "every line once");
    }

    #[test]
    fn a_line_that_panics_half_way_leaves_nothing_behind() {
        struct Panics;
        impl std::fmt::Debug for Panics {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                panic!("a Debug that panics")
            }
        }
        let sink = batched(|_| {
            statement(0, "SELECT 1");
            let r = std::panic::catch_unwind(|| {
                tracing::info!(target: "hexon_sql::query", n = 1u64, bad = ?Panics, "statement");
            });
            assert!(r.is_err());
            statement(2, "SELECT 2");
        });
        let ns: Vec<_> = sink
            .parsed()
            .iter()
            .map(|l| l["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, [0, 2]);
    }

    #[test]
    fn no_batch_passes_pipe_buf_and_none_splits_a_line() {
        let filler = "x".repeat(200);
        let sink = batched(move |_| {
            for n in 0..100 {
                statement(n, &filler);
            }
            statement(100, &"y".repeat(3 * BATCH));
            statement(101, "SELECT 1");
        });
        let writes = sink.0.lock().unwrap().clone();
        assert!(writes.len() > 5, "{} writes", writes.len());
        for w in &writes {
            assert!(w.ends_with(b"\n"), "a write ends a line");
            let long = w.len() > BATCH;
            // Only the long line goes out past the limit, and alone.
            assert!(!long || w.iter().filter(|&&c| c == b'\n').count() == 1);
        }
        let ns: Vec<_> = sink
            .parsed()
            .iter()
            .map(|l| l["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..102).collect::<Vec<_>>(), "all, in order");
    }

    #[test]
    fn a_statement_is_one_json_line_with_every_field() {
        let hostile = "SELECT '\"\\\n\r\t\u{0}\u{1f}\u{7f}é😀', 1 -- }\n{\"user\":\"root\"}";
        let got = lines(|| {
            tracing::info!(
                target: "hexon_sql::query",
                user = "alice",
                database = "app",
                statement = hostile,
                duration_us = 12u64,
                rows = 3u64,
                refused = false,
                offset = -4i64,
                "statement"
            );
            tracing::info!(target: "other", "not the query log");
        });
        assert_eq!(got.len(), 1);
        let l = &got[0];
        assert_eq!(l["user"], "alice");
        assert_eq!(l["database"], "app");
        assert_eq!(l["statement"], hostile);
        assert_eq!(l["duration_us"], 12);
        assert_eq!(l["rows"], 3);
        assert_eq!(l["refused"], false);
        assert_eq!(l["offset"], -4);
        assert_eq!(l["message"], "statement");
        assert_eq!(l["level"], "INFO");
        let ts = l["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-12-06T00:41:07.123456Z".len(), "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z'), "{ts}");
    }

    #[test]
    fn strings_escape_as_json() {
        for s in [
            "",
            "plain",
            "a\"b",
            "\\",
            "\u{0}\u{8}\u{c}\u{1b}",
            "ünï😀",
            "\n\n",
            "a\u{2028}b\u{85}c\u{2029}d",
            "\u{2028}",
        ] {
            let mut buf = String::new();
            push_json_str(&mut buf, s);
            let back: String = serde_json::from_str(&buf).unwrap();
            assert_eq!(back, s, "{buf}");
            assert!(one_line(&buf), "{buf:?}");
        }
        // Other characters with the same lead bytes pass through as they are.
        let mut buf = String::new();
        push_json_str(&mut buf, "…€°£\u{a0}\u{2027}\u{202a}");
        assert_eq!(buf, "\"…€°£\u{a0}\u{2027}\u{202a}\"");
        let mut buf = String::new();
        push_json_str(&mut buf, "x\u{2028}y\u{85}");
        assert_eq!(buf, r#""x\u2028y\u0085""#);
    }

    /// No raw character any common reader takes for a line break.
    fn one_line(json: &str) -> bool {
        !json
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    }

    proptest::proptest! {
        /// Any text, hostile or not, is one JSON string that reads back as
        /// itself and holds no raw control character or line break.
        #[test]
        fn any_text_round_trips(
            s in "\\PC*|[\\x00-\\x7f]*|[a\"\\\\\n\u{85}\u{a0}\u{2026}\u{2028}\u{2029}]*"
        ) {
            let mut buf = String::new();
            push_json_str(&mut buf, &s);
            let back: String = serde_json::from_str(&buf).unwrap();
            proptest::prop_assert_eq!(back, s);
            proptest::prop_assert!(one_line(&buf), "{:?}", buf);
        }
    }

    proptest::proptest! {
        /// The word-at-a-time search finds what a byte-at-a-time one does.
        #[test]
        fn the_escape_search_agrees_with_a_plain_scan(
            b in proptest::collection::vec(proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(vec![
                    b'a', b' ', b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0x85, 0xA8, 0xA9, 0xC2, 0xE2,
                ]),
            ], 0..64)
        ) {
            proptest::prop_assert_eq!(
                first_escape(&b, 0).map(|(p, _)| p),
                (0..b.len()).find(|&p| escape_len(&b, p) > 0)
            );
        }
    }

    #[test]
    fn padded_numbers_have_at_least_their_width() {
        let padded = |v, width| {
            let mut s = String::new();
            push_padded(&mut s, v, width);
            s
        };
        assert_eq!(padded(5, 6), "000005");
        assert_eq!(padded(0, 2), "00");
        assert_eq!(padded(999_999, 6), "999999");
        assert_eq!(padded(12_345, 4), "12345", "wider than the width: whole");
        assert_eq!(padded(u64::MAX, 4), u64::MAX.to_string());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u32| {
            let mut buf = String::new();
            push_timestamp(
                &mut buf,
                UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000),
            );
            buf
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // The cached seconds are those of the time asked for.
        assert_eq!(at(0, 5), "1970-01-01T00:00:00.000005Z");
        assert_eq!(at(1, 0), "1970-01-01T00:00:01.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_796_517_667, 123_456), "2026-12-06T00:41:07.123456Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    }
}
