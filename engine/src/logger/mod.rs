//! The logger behind the `log` facade. It never makes the thread that
//! logs wait for stderr or a trace file (an executor must not stall
//! because stderr is a slow pipe):
//!
//! - a record is filtered ([`Filter`], `SWITCHBOARD_LOG`), rate-limited
//!   per call site if it is a warning or an error ([`repeat`]), formatted
//!   into one line on the calling thread, and offered to a bounded queue
//!   (`LOG_QUEUE_DEPTH_MAX`, crossbeam's array channel: a lock-free slot,
//!   except that the sender that wakes a parked `log` thread takes the
//!   channel's waker mutex for that, briefly and never across I/O); when
//!   the queue is full the record is counted
//!   ([`dropped_records`], `switchboard_log_dropped_total`) and dropped,
//!   never waited for;
//! - the `log` thread drains the queue to stderr (many lines per `write`)
//!   and to the per-user trace files ([`trace`]), and says how many were
//!   dropped once stderr takes lines again;
//! - [`flush`] waits, at most `LOG_FLUSH_WAIT_MS`, until what was queued
//!   before it is written: a graceful stop and every exit path call it.
//!
//! A line: `2026-11-29T22:41:07.123Z WARN  shard-1
//! switchboard_engine::runtime: no answer from shard-0 user=42 shard=1
//! req=917`: UTC time with milliseconds ([`utc`]), level, thread name,
//! target, the message, then the record's key-values. Records about a
//! user carry `user=ID` (and `shard=`, `req=`, `job=` where they exist);
//! that key is also what routes a record to its user's trace. Control
//! characters in a message are escaped, so a record is always one line;
//! a line is cut at `LOG_LINE_BYTES_MAX`.
//!
//! Never logged, at any level: tokens, sids' secrets (`Sid`'s `Debug`
//! hides it), message text, cids, tab names, UI state, typing state
//! (docs/security.md, "What is logged"). Records name calls and jobs by
//! kind and users by id.

mod filter;
pub mod repeat;
pub mod trace;
pub mod utc;
mod writer;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_channel::oneshot;
use log::kv::{self, Key, VisitSource};
use log::{Level, Log, Metadata, Record};
use switchboard_shards::model::UserId;

use crate::limits;
pub use filter::Filter;
use repeat::{More, Site, Sites};

/// One formatted record, queued for the `log` thread.
#[derive(Debug)]
struct Line {
    /// The line, ending in a newline.
    text: String,
    /// Whether it goes to stderr (the filter passed it and the repeat
    /// limit did not hold it back).
    stderr: bool,
    /// The traced user whose trace it also goes to.
    trace: Option<UserId>,
}

/// A request to the `log` thread, answered by message. A start, stop or
/// read whose caller stopped waiting (its reply's receiver dropped: the
/// admin call answered `unavailable`) is not carried out.
#[derive(Debug)]
enum Control {
    Start {
        user: UserId,
        config: trace::TraceConfig,
        reply: oneshot::Sender<Result<trace::Changed, trace::TraceError>>,
    },
    Stop {
        user: UserId,
        data_dir: std::path::PathBuf,
        reply: oneshot::Sender<Result<trace::Changed, trace::TraceError>>,
    },
    /// Undo a start (carried out even when nobody waits for the answer).
    Undo {
        user: UserId,
        started: trace::Started,
        data_dir: std::path::PathBuf,
        reply: oneshot::Sender<Result<trace::Changed, trace::TraceError>>,
    },
    Read {
        user: UserId,
        data_dir: std::path::PathBuf,
        reply: oneshot::Sender<Result<trace::Lines, trace::TraceError>>,
    },
    /// Write everything queued, then say so.
    Flush { done: Sender<()> },
}

/// The installed logger.
struct Logger {
    filter: Filter,
    /// Formatted lines for the `log` thread.
    lines: Sender<Line>,
    /// Requests for the `log` thread.
    control: Sender<Control>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

thread_local! {
    /// The name lines from this thread show, when set
    /// ([`label_thread`]): glommio names an executor's thread
    /// `shard-0-1` (its name, then its own executor number).
    static LABEL: std::cell::OnceCell<String> = const { std::cell::OnceCell::new() };
}

/// Names the calling thread in log lines (`shard-3`), in place of its
/// thread name (once; later calls change nothing).
pub fn label_thread(name: String) {
    let _ = LABEL.try_with(|l| {
        let _ = l.set(name);
    });
}

/// Records dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Every warning call site's repeat window.
static SITES: Sites = Sites::new();

/// The clock of the repeat windows: milliseconds since the first use,
/// from 1 (monotonic, so a clock step does not open or shut a window).
fn mono_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Installs the logger with `filter` and starts the `log` thread (once
/// per process; later calls change nothing).
pub fn init(filter: Filter) {
    let mut started = false;
    let logger = LOGGER.get_or_init(|| {
        started = true;
        let (lines, lines_rx) = crossbeam_channel::bounded(limits::LOG_QUEUE_DEPTH_MAX);
        let (control, control_rx) = crossbeam_channel::bounded(limits::LOG_CONTROL_DEPTH_MAX);
        let max = filter.max_level();
        spawn_thread(lines_rx, control_rx, max);
        Logger {
            filter,
            lines,
            control,
        }
    });
    if started && log::set_logger(logger).is_ok() {
        log::set_max_level(logger.filter.max_level());
    }
}

fn spawn_thread(lines: Receiver<Line>, control: Receiver<Control>, max: log::LevelFilter) {
    let stderr = dup_stderr();
    // If the thread cannot start, the queue fills and every record is
    // counted as dropped: the server still runs.
    let _ = std::thread::Builder::new()
        .name("log".into())
        .spawn(move || writer::run(lines, control, max, stderr));
}

/// A descriptor of the `log` thread's own for stderr (a close-on-exec
/// `dup` of fd 2), so its writes take no lock of std's (`None`: fd 2 is
/// not open).
fn dup_stderr() -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl on fd 2 touches no memory; a non-negative result is a
    // new descriptor that nothing else owns.
    let fd = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: `fd` is open and owned by nobody else (above).
    (fd >= 0).then(|| unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Writes `text` to stderr (fd 2) from a helper thread and waits for it
/// at most `wait`; whether it was written. For the exit paths' own lines
/// (`main`'s last message, the panic hook's): a plain `eprintln!` would
/// block for ever on a stderr nobody reads, and hold the exit with it.
/// Past `wait` the helper is left blocked, and the process exits anyway.
pub fn write_stderr_bounded(text: &str, wait: Duration) -> bool {
    let text = text.as_bytes().to_vec();
    let (done, written) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("stderr".into())
        .spawn(move || {
            use std::io::Write;
            use std::os::fd::FromRawFd;
            // SAFETY: fd 2 stays open for the process's life; the
            // `ManuallyDrop` never closes it. No std lock is taken.
            let mut fd2 = std::mem::ManuallyDrop::new(unsafe {
                std::fs::File::from_raw_fd(libc::STDERR_FILENO)
            });
            let _ = done.send(fd2.write_all(&text).is_ok());
        });
    spawned.is_ok() && written.recv_timeout(wait).unwrap_or(false)
}

/// Records dropped so far because the log queue was full (stderr slower
/// than the records came).
pub fn dropped_records() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Set when a flush gave up waiting, until the `log` thread answers a
/// flush again: meanwhile a flush does not wait (an exit path that
/// flushes twice waits once).
static STALLED: AtomicBool = AtomicBool::new(false);

/// Waits until every record queued before this call is written, at most
/// `LOG_FLUSH_WAIT_MS` (the `log` thread may be stuck on a stderr nobody
/// reads), and not at all while an earlier flush is still unanswered.
/// Whether it was written (true before [`init`]: nothing is queued).
/// Safe from any thread but the `log` thread.
pub fn flush() -> bool {
    let Some(logger) = LOGGER.get() else {
        return true;
    };
    if STALLED.load(Ordering::Relaxed) {
        return false;
    }
    let wait = Duration::from_millis(limits::LOG_FLUSH_WAIT_MS);
    let deadline = Instant::now() + wait;
    let (done, finished) = crossbeam_channel::bounded(1);
    let flushed = logger
        .control
        .send_timeout(Control::Flush { done }, wait)
        .is_ok()
        && finished.recv_deadline(deadline).is_ok();
    if !flushed {
        STALLED.store(true, Ordering::Relaxed);
    }
    flushed
}

/// Offers a request to the `log` thread without waiting.
fn control(request: Control) -> Result<(), ()> {
    let logger = LOGGER.get().ok_or(())?;
    logger.control.try_send(request).map_err(drop)
}

/// The user a record is about: its `user` key-value.
fn user_of(record: &Record) -> Option<UserId> {
    record
        .key_values()
        .get(Key::from_str("user"))
        .and_then(|v| v.to_u64())
}

/// The call site of a record from a macro (`None`: built by hand).
fn site_of(record: &Record) -> Option<Site> {
    Some(Site {
        module: record.module_path_static()?,
        file: record.file_static()?,
        line: record.line()?,
        level: record.level(),
    })
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata.target(), metadata.level())
            || (metadata.level() <= Level::Debug && trace::any())
    }

    fn log(&self, record: &Record) {
        let level = record.level();
        let mut stderr = self.filter.enabled(record.target(), level);
        let trace = if level <= Level::Debug && trace::any() {
            user_of(record).filter(|&u| trace::is_traced(u))
        } else {
            None
        };
        if !stderr && trace.is_none() {
            return;
        }
        let mut more = More::NONE;
        if stderr && level <= Level::Warn {
            if let Some(site) = site_of(record) {
                match SITES.check(site, mono_ms()) {
                    Some(m) => more = m,
                    None => stderr = false,
                }
            }
        }
        if !stderr && trace.is_none() {
            return;
        }
        let now_ms = utc::now_unix_ms();
        // `try_with`: a record logged from a thread-local's destructor may
        // come after `LABEL` is gone (`with` would panic, and a panic
        // there aborts the process).
        let labelled = LABEL.try_with(|label| {
            label
                .get()
                .map(|name| format_line(now_ms, level, name, record, more))
        });
        let text = match labelled {
            Ok(Some(text)) => text,
            Ok(None) | Err(_) => {
                let thread = std::thread::current();
                format_line(now_ms, level, thread.name().unwrap_or("?"), record, more)
            }
        };
        match self.lines.try_send(Line {
            text,
            stderr,
            trace,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {
        flush();
    }
}

/// Writes a record's key-values as ` key=value`.
struct KeyValues<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for KeyValues<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// One line: `TIME LEVEL THREAD TARGET: MESSAGE[ (N more like this...)]
/// key=value...`, control characters escaped, at most
/// `LOG_LINE_BYTES_MAX` bytes, ending in a newline.
fn format_line(unix_ms: u64, level: Level, thread: &str, record: &Record, more: More) -> String {
    let mut line = String::with_capacity(160);
    utc::write_utc(&mut line, unix_ms);
    let _ = write!(line, " {level:<5} {thread} {}: ", record.target());
    let head = line.len();
    let _ = write!(line, "{}{more}", record.args());
    let _ = record.key_values().visit(&mut KeyValues(&mut line));
    if line.as_bytes()[head..]
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f)
    {
        let tail = line.split_off(head);
        escape_into(&mut line, &tail);
    }
    if line.len() > limits::LOG_LINE_BYTES_MAX - 4 {
        let mut cut = limits::LOG_LINE_BYTES_MAX - 4;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line.push('\n');
    line
}

/// Appends `text` with its control characters escaped (`\n`, `\r`, `\t`,
/// `\u{1b}`), so one record stays one line and cannot forge another.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "{}", c.escape_unicode());
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The line of a record built from these parts.
    fn line(
        level: Level,
        target: &str,
        args: std::fmt::Arguments,
        kvs: &dyn kv::Source,
        more: More,
    ) -> String {
        let record = Record::builder()
            .level(level)
            .target(target)
            .args(args)
            .key_values(kvs)
            .build();
        format_line(1_795_992_067_123, level, "shard-1", &record, more)
    }

    const KVS: &[(&str, u64)] = &[("user", 42), ("shard", 1), ("req", 917)];
    const NONE: &[(&str, u64)] = &[];

    #[test]
    fn a_line_has_time_level_thread_target_message_and_key_values() {
        let target = "switchboard_engine::runtime";
        assert_eq!(
            line(
                Level::Warn,
                target,
                format_args!("call timed out"),
                &KVS,
                More::NONE
            ),
            "2026-11-29T22:41:07.123Z WARN  shard-1 switchboard_engine::runtime: call timed out \
             user=42 shard=1 req=917\n"
        );
        let more = More {
            count: 37,
            over_ms: 10_000,
        };
        assert!(line(
            Level::Warn,
            target,
            format_args!("call timed out"),
            &KVS,
            more
        )
        .contains("call timed out (37 more like this in the last 10 s) user=42"));
        assert_eq!(
            line(
                Level::Info,
                "switchboard",
                format_args!("listening"),
                &NONE,
                More::NONE
            ),
            "2026-11-29T22:41:07.123Z INFO  shard-1 switchboard: listening\n"
        );
    }

    #[test]
    fn the_user_key_names_the_user_a_record_is_about() {
        let user = |kvs: &dyn kv::Source| {
            user_of(
                &Record::builder()
                    .args(format_args!("x"))
                    .key_values(kvs)
                    .build(),
            )
        };
        assert_eq!(user(&KVS), Some(42));
        assert_eq!(user(&NONE), None);
        assert_eq!(user(&[("shard", 3u64)]), None);
    }

    #[test]
    fn a_record_logged_while_a_thread_is_torn_down_is_still_queued() {
        static QUEUED: AtomicU64 = AtomicU64::new(0);
        /// Logs from its destructor, which runs after `LABEL`'s: thread
        /// locals are torn down in reverse order of first use.
        struct LogsOnDrop;
        impl Drop for LogsOnDrop {
            fn drop(&mut self) {
                let (lines, queued) = crossbeam_channel::bounded(1);
                let (control, _control) = crossbeam_channel::bounded(1);
                let logger = Logger {
                    filter: Filter::default(),
                    lines,
                    control,
                };
                let record = Record::builder()
                    .level(Level::Info)
                    .target("switchboard")
                    .args(format_args!("at thread exit"))
                    .build();
                logger.log(&record);
                if queued
                    .try_recv()
                    .is_ok_and(|l| l.text.contains("at thread exit"))
                {
                    QUEUED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        thread_local! {
            static GUARD: LogsOnDrop = const { LogsOnDrop };
        }
        std::thread::Builder::new()
            .name("teardown".into())
            .spawn(|| {
                GUARD.with(|_| {});
                label_thread("labelled".into());
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(QUEUED.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_record_stays_one_bounded_line() {
        let evil = "bad\nthing\r\u{1b}[31m\tend";
        let l = line(
            Level::Error,
            "switchboard_storage",
            format_args!("failed: {evil}"),
            &NONE,
            More::NONE,
        );
        assert_eq!(l.matches('\n').count(), 1, "{l:?}");
        assert!(
            l.ends_with("failed: bad\\nthing\\r\\u{1b}[31m\\tend\n"),
            "{l:?}"
        );
        let long = "é".repeat(limits::LOG_LINE_BYTES_MAX);
        let l = line(
            Level::Info,
            "switchboard",
            format_args!("{long}"),
            &NONE,
            More::NONE,
        );
        assert!(l.len() <= limits::LOG_LINE_BYTES_MAX, "{}", l.len());
        assert!(l.ends_with("…\n"));
    }
}
