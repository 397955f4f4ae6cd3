//! The `log` thread: drains the queue of formatted lines to stderr (many
//! lines per `write`) and to the trace files, answers trace requests and
//! flushes, ends traces at their time bound, and writes what the repeat
//! limit and a full queue left out. The only thread that may block on
//! stderr: when it does, the queue fills and records are dropped and
//! counted instead of anyone waiting.
//!
//! It writes through a descriptor of its own (a `dup` of fd 2 made at
//! start), never through `std::io::stderr()`: std's stderr lock, held
//! while blocked on a full pipe, would also block every `eprintln!` and
//! the default panic hook's message, and with them the exit paths.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::trace::{Changed, Files};
use super::{utc, Control, Line, DROPPED, SITES};
use crate::limits;

/// Lines written per stderr `write`, at most (then the control queue
/// gets a look).
const BATCH_MAX: usize = 512;

/// How often the thread looks at time bounds, quiet repeat sites and the
/// dropped count when no line comes.
const HOUSEKEEPING_MS: u64 = 1_000;

/// The thread's state besides its channels.
struct Writer {
    /// Lines for stderr, written together (reused).
    out: Vec<u8>,
    /// Where they go: the `log` thread's own copy of fd 2 (`None`: there
    /// was none to copy, and stderr lines are lost).
    stderr: Option<File>,
    /// The open traces.
    traces: Files,
    /// `DROPPED` when last reported, and when.
    dropped_reported: u64,
    dropped_at: Instant,
    /// When housekeeping last ran.
    housekept: Instant,
}

pub(super) fn run(
    lines: Receiver<Line>,
    control: Receiver<Control>,
    max: log::LevelFilter,
    stderr: Option<File>,
) {
    let mut w = Writer::new(max, stderr);
    loop {
        let housekeeping = w.housekept + Duration::from_millis(HOUSEKEEPING_MS);
        let wake = w
            .traces
            .next_end()
            .map_or(housekeeping, |end| end.min(housekeeping));
        select! {
            recv(lines) -> line => {
                let Ok(line) = line else { return };
                w.take(line);
                for line in lines.try_iter().take(BATCH_MAX - 1) {
                    w.take(line);
                }
            }
            recv(control) -> request => {
                let Ok(request) = request else { return };
                w.answer(request, &lines);
            }
            default(wake.saturating_duration_since(Instant::now())) => {}
        }
        let now = Instant::now();
        w.traces.expire(now);
        if now >= housekeeping {
            w.housekeep(now);
        }
        w.write_out();
        // The queue is drained (or a batch taken): one write per trace.
        w.traces.flush();
    }
}

impl Writer {
    fn new(max: log::LevelFilter, stderr: Option<File>) -> Writer {
        let now = Instant::now();
        Writer {
            out: Vec::with_capacity(64 * 1024),
            stderr,
            traces: Files::new(max),
            dropped_reported: 0,
            dropped_at: now,
            housekept: now,
        }
    }

    /// Routes one line.
    fn take(&mut self, line: Line) {
        if let Some(user) = line.trace {
            self.traces.write(user, &line.text);
        }
        if line.stderr {
            self.out.extend_from_slice(line.text.as_bytes());
        }
    }

    /// Writes the stderr lines gathered so far (blocking, if stderr does:
    /// on this thread's own descriptor, so no lock is held meanwhile).
    fn write_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if let Some(stderr) = &mut self.stderr {
            // Nothing to do if stderr is gone; the lines are lost either
            // way.
            let _ = stderr.write_all(&self.out);
        }
        self.out.clear();
    }

    fn answer(&mut self, request: Control, lines: &Receiver<Line>) {
        let now = Instant::now();
        match request {
            // A caller that stopped waiting answered `unavailable` ("try
            // again"): its request is not carried out (an undo always is).
            Control::Start { reply, .. } | Control::Stop { reply, .. } if reply.is_canceled() => {}
            Control::Read { reply, .. } if reply.is_canceled() => {}
            Control::Start {
                user,
                config,
                reply,
            } => {
                let result = self.traces.start(user, &config, now);
                if let Err(Ok(Changed {
                    started: Some(started),
                    ..
                })) = reply.send(result)
                {
                    // The caller gave up meanwhile: as if never asked.
                    self.traces.undo(user, started, &config.data_dir, now);
                }
            }
            Control::Stop {
                user,
                data_dir,
                reply,
            } => {
                let _ = reply.send(Ok(self.traces.stop(user, &data_dir, now)));
            }
            Control::Undo {
                user,
                started,
                data_dir,
                reply,
            } => {
                let _ = reply.send(Ok(self.traces.undo(user, started, &data_dir, now)));
            }
            Control::Read {
                user,
                data_dir,
                reply,
            } => {
                // What is queued for the file now goes in first, so a read
                // right after a request shows it.
                for line in lines.try_iter() {
                    self.take(line);
                }
                let _ = reply.send(self.traces.read(user, &data_dir, now));
            }
            Control::Flush { done } => {
                for line in lines.try_iter() {
                    self.take(line);
                }
                self.write_out();
                self.traces.flush();
                super::STALLED.store(false, std::sync::atomic::Ordering::Relaxed);
                let _ = done.send(());
            }
        }
    }

    /// Writes the counts the repeat limit left pending at quiet call
    /// sites, and how many records a full queue dropped (at most once per
    /// `LOG_REPEAT_MS`).
    fn housekeep(&mut self, now: Instant) {
        self.housekept = now;
        let unix_ms = utc::now_unix_ms();
        let out = &mut self.out;
        SITES.sweep(super::mono_ms(), |site, more| {
            let mut line = String::with_capacity(160);
            utc::write_utc(&mut line, unix_ms);
            line.push_str(&format!(
                " {:<5} log {}: {} more like this in the last {} s (at {}:{}; not written)\n",
                site.level,
                site.module,
                more.count,
                more.over_ms.div_ceil(1_000).max(1),
                site.file,
                site.line
            ));
            out.extend_from_slice(line.as_bytes());
        });
        let dropped = DROPPED.load(std::sync::atomic::Ordering::Relaxed);
        let since = now.duration_since(self.dropped_at);
        if dropped > self.dropped_reported && since.as_millis() as u64 >= limits::LOG_REPEAT_MS {
            let mut line = String::with_capacity(160);
            utc::write_utc(&mut line, unix_ms);
            line.push_str(&format!(
                " WARN  log switchboard_engine::logger: {} log records dropped in the last {} s: \
                 the log queue was full (stderr slower than the records came; {dropped} in all)\n",
                dropped - self.dropped_reported,
                since.as_secs().max(1)
            ));
            out.extend_from_slice(line.as_bytes());
            self.dropped_reported = dropped;
            self.dropped_at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use futures_channel::oneshot;

    use super::*;
    use crate::logger::trace::{self, TraceConfig};

    #[test]
    fn a_start_or_stop_whose_caller_gave_up_is_not_carried_out() {
        let dir = std::env::temp_dir().join(format!("switchboard-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = Writer::new(log::LevelFilter::Info, None);
        let (_lines_tx, lines) = crossbeam_channel::bounded(1);
        // The admin call answered `unavailable` after 2 s and dropped its
        // receiver; the start reaches the log thread later.
        let user = 4_242;
        let (reply, answer) = oneshot::channel();
        drop(answer);
        let config = TraceConfig {
            data_dir: dir.clone(),
            duration: Duration::from_secs(60),
            bytes_max: 4_096,
        };
        w.answer(
            Control::Start {
                user,
                config,
                reply,
            },
            &lines,
        );
        assert!(!trace::is_traced(user), "started for a caller that gave up");
        assert!(!trace::path_of(&dir, user).exists());
        let (reply, answer) = oneshot::channel();
        drop(answer);
        let data_dir: PathBuf = dir.clone();
        w.answer(
            Control::Stop {
                user,
                data_dir,
                reply,
            },
            &lines,
        );
        assert!(!trace::is_traced(user));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
