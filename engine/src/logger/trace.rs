//! Per-user traces (the old system's lager `trace_file`): while a user is
//! traced, every record about them at `debug` or above (a record is about
//! a user when it carries the key-value `user=ID`) is also written to a
//! file of their own, `DATA_DIR/traces/user-ID.log`, whatever
//! `SWITCHBOARD_LOG` says.
//!
//! Two halves:
//! - [`is_traced`], on every thread: the registry of traced users, a few
//!   atomics (a count, then at most `TRACED_USERS_MAX` ids). With nobody
//!   traced it is one relaxed load, so untraced users' traffic pays
//!   nothing; formatting happens only for records that are written.
//! - [`Files`], on the `log` thread only: opens, writes, reads and closes
//!   the trace files, and is the registry's only writer. Executors ask it
//!   by message ([`start`], [`stop`], [`read`]) and wait for a oneshot
//!   answer, never for the file system.
//!
//! Bounds: at most `TRACED_USERS_MAX` users at once (one more is refused);
//! each trace ends by itself after its time bound (`SWITCHBOARD_TRACE_MS`)
//! and when its next line would pass its size bound
//! (`SWITCHBOARD_TRACE_BYTES_MAX`); the file's last line says why it
//! ended. A trace started again for a traced user restarts its time bound
//! and keeps its file; a new trace empties the file. Ended traces' files
//! stay until a new trace starts: then the oldest past
//! `TRACE_FILES_KEPT_MAX` files or `TRACE_FILES_KEPT_BYTES_MAX` bytes are
//! deleted. The set of traced users lives in memory only: a restart of
//! the server ends every trace (its file stays, without an end line).

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use switchboard_shards::limits::TRACED_USERS_MAX;
use switchboard_shards::model::UserId;
use switchboard_storage::files;

use super::{utc, Control};
use crate::limits;

/// Who is traced: written by the `log` thread, read anywhere.
struct Registry {
    /// How many of `users` are set (0: nobody is traced, the fast path).
    active: AtomicUsize,
    /// Traced users' ids; 0 is a free slot (user ids are positive).
    users: [AtomicU64; TRACED_USERS_MAX],
}

static REGISTRY: Registry = Registry {
    active: AtomicUsize::new(0),
    users: [const { AtomicU64::new(0) }; TRACED_USERS_MAX],
};

/// Whether anyone is traced.
pub fn any() -> bool {
    REGISTRY.active.load(Ordering::Relaxed) > 0
}

/// How many users are traced.
pub fn count() -> usize {
    REGISTRY.active.load(Ordering::Relaxed)
}

/// Whether `user` is traced: with nobody traced, one relaxed load.
pub fn is_traced(user: UserId) -> bool {
    any()
        && REGISTRY
            .users
            .iter()
            .any(|u| u.load(Ordering::Relaxed) == user)
}

/// Where traces go and their bounds (settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// The data folder (traces go in its `traces` folder).
    pub data_dir: PathBuf,
    /// A trace ends by itself this long after it started.
    pub duration: Duration,
    /// A trace ends when its file would pass this many bytes.
    pub bytes_max: u64,
}

/// Where one user's trace stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The user.
    pub user: UserId,
    /// Whether their records are being written to the file now.
    pub on: bool,
    /// The trace file.
    pub path: PathBuf,
    /// Bytes in the file (when on: written so far by this trace).
    pub bytes: u64,
    /// The size bound (0 when off and unknown).
    pub bytes_max: u64,
    /// How long until the time bound ends it (on only).
    pub ends_in: Option<Duration>,
}

/// Every traced user and how long each trace has left, as of one change
/// of the registry: what the shards are sent, so their copies of the set
/// match it. `generation` grows with each change, so a shard keeps the
/// newest whatever order two admin calls' broadcasts arrive in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Counts the registry's changes.
    pub generation: u64,
    /// `(user, time left)`, one per traced user.
    pub users: Vec<(UserId, Duration)>,
}

/// What a start or stop answers: the user's trace, and the set the shards
/// are to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    pub status: Status,
    pub snapshot: Snapshot,
    /// What a start changed, for [`undo`]: `Some` for a start (the
    /// trace's bounds before it, `None` inside for a new trace), `None`
    /// for a stop or an undo.
    pub started: Option<Started>,
}

/// What one start did: opened a new trace, or restarted the time bound of
/// a running one (whose bounds before are kept, to be put back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// A new trace (its file emptied).
    New,
    /// A running trace's bounds, before the restart.
    Restarted(Bounds),
}

/// A running trace's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Its time bound, and when it passes.
    duration: Duration,
    until: Instant,
    /// Its size bound.
    bytes_max: u64,
}

/// The newest lines of a trace file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lines {
    pub status: Status,
    /// The newest lines (at most `TRACE_LINES_SHOWN_MAX`), each ending in
    /// a newline.
    pub text: String,
    /// How many lines `text` holds.
    pub count: usize,
}

/// Why a trace request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// `TRACED_USERS_MAX` users are traced already.
    TooMany,
    /// The trace file or its folder could not be made, opened or read.
    File(String),
    /// The user has no trace file.
    NotFound(PathBuf),
    /// The `log` thread did not take or answer the request in time (its
    /// queue full, or it is stuck writing a stderr nobody reads), or the
    /// logger does not run.
    Busy,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::TooMany => write!(
                f,
                "{TRACED_USERS_MAX} users are traced already (the most at once): stop one first \
                 (level=off) or wait for one to end"
            ),
            TraceError::File(e) => write!(f, "trace file: {e}"),
            TraceError::NotFound(path) => write!(f, "no trace file at {}", path.display()),
            TraceError::Busy => write!(f, "the log thread did not answer in time: try again"),
        }
    }
}

/// The trace file of `user` under `data_dir`.
pub fn path_of(data_dir: &Path, user: UserId) -> PathBuf {
    data_dir
        .join(files::TRACES_DIR_NAME)
        .join(format!("user-{user}.log"))
}

/// Asks the `log` thread to start tracing `user` (or restart the time
/// bound of their trace); the answer comes on the returned receiver.
pub fn start(
    user: UserId,
    config: TraceConfig,
) -> Result<oneshot::Receiver<Result<Changed, TraceError>>, TraceError> {
    let (reply, answer) = oneshot::channel();
    super::control(Control::Start {
        user,
        config,
        reply,
    })
    .map_err(|_| TraceError::Busy)?;
    Ok(answer)
}

/// Asks the `log` thread to undo what a start of `user`'s trace did
/// (`started`, from its answer), because not every shard took it: a new
/// trace ends, a restarted one gets its bounds back. Carried out even if
/// nobody waits for the answer.
pub fn undo(
    user: UserId,
    started: Started,
    data_dir: PathBuf,
) -> Result<oneshot::Receiver<Result<Changed, TraceError>>, TraceError> {
    let (reply, answer) = oneshot::channel();
    super::control(Control::Undo {
        user,
        started,
        data_dir,
        reply,
    })
    .map_err(|_| TraceError::Busy)?;
    Ok(answer)
}

/// Asks the `log` thread to stop tracing `user` (nothing if not traced).
pub fn stop(
    user: UserId,
    data_dir: PathBuf,
) -> Result<oneshot::Receiver<Result<Changed, TraceError>>, TraceError> {
    let (reply, answer) = oneshot::channel();
    super::control(Control::Stop {
        user,
        data_dir,
        reply,
    })
    .map_err(|_| TraceError::Busy)?;
    Ok(answer)
}

/// Asks the `log` thread for the newest lines of `user`'s trace file.
pub fn read(
    user: UserId,
    data_dir: PathBuf,
) -> Result<oneshot::Receiver<Result<Lines, TraceError>>, TraceError> {
    let (reply, answer) = oneshot::channel();
    super::control(Control::Read {
        user,
        data_dir,
        reply,
    })
    .map_err(|_| TraceError::Busy)?;
    Ok(answer)
}

/// One open trace (log thread only).
#[derive(Debug)]
struct Open {
    user: UserId,
    path: PathBuf,
    file: File,
    /// Lines taken and not yet written to `file`: written together when
    /// the `log` thread has drained its queue, or past
    /// `TRACE_BUFFER_BYTES_MAX` (one `write` for many lines).
    buf: Vec<u8>,
    /// Bytes written by this trace (`buf`'s included).
    bytes: u64,
    bytes_max: u64,
    /// Its time bound, and when it passes.
    duration: Duration,
    until: Instant,
}

/// The open traces: the `log` thread's, and the registry's only writer.
#[derive(Debug)]
pub(super) struct Files {
    open: Vec<Open>,
    /// Counts the registry's changes (see [`Snapshot`]).
    generation: u64,
    /// The filter's most verbose level: `log`'s max level while nobody is
    /// traced (while someone is, at least `debug`, so `debug!` reaches the
    /// logger, which writes it to the trace if it is about them).
    filter_max: log::LevelFilter,
}

impl Files {
    pub(super) fn new(filter_max: log::LevelFilter) -> Files {
        Files {
            open: Vec::with_capacity(TRACED_USERS_MAX),
            generation: 0,
            filter_max,
        }
    }

    /// Starts a trace of `user`, or restarts the time bound of theirs.
    pub(super) fn start(
        &mut self,
        user: UserId,
        config: &TraceConfig,
        now: Instant,
    ) -> Result<Changed, TraceError> {
        if let Some(i) = self.find(user) {
            let t = &mut self.open[i];
            let before = Bounds {
                duration: t.duration,
                until: t.until,
                bytes_max: t.bytes_max,
            };
            t.duration = config.duration;
            t.until = now + config.duration;
            t.bytes_max = config.bytes_max;
            let line = format!(
                "trace of user {user} started again: ends in {} ms or at {} bytes",
                config.duration.as_millis(),
                config.bytes_max
            );
            self.note(i, &line);
            // The shards' copies hold deadlines: a new one is a change.
            self.generation += 1;
            let mut changed = self.changed(user, now);
            changed.started = Some(Started::Restarted(before));
            return Ok(changed);
        }
        if self.open.len() >= TRACED_USERS_MAX {
            return Err(TraceError::TooMany);
        }
        let path = path_of(&config.data_dir, user);
        let dir = files::create_traces_dir(&config.data_dir)
            .map_err(|e| TraceError::File(format!("{}: {e}", path.display())))?;
        // Old traces' files go before a new one comes (its own included:
        // it is emptied).
        let keep: Vec<&Path> = self
            .open
            .iter()
            .map(|t| t.path.as_path())
            .chain([path.as_path()])
            .collect();
        let deleted = prune(
            &dir,
            &keep,
            limits::TRACE_FILES_KEPT_MAX,
            limits::TRACE_FILES_KEPT_BYTES_MAX,
        );
        if deleted > 0 {
            log::info!(
                "deleted the {deleted} oldest ended trace files in {} (at most {} kept, {} bytes \
                 together)",
                dir.display(),
                limits::TRACE_FILES_KEPT_MAX,
                limits::TRACE_FILES_KEPT_BYTES_MAX
            );
        }
        let file = files::create_trace_file(&path)
            .map_err(|e| TraceError::File(format!("{}: {e}", path.display())))?;
        self.open.push(Open {
            user,
            path,
            file,
            buf: Vec::new(),
            bytes: 0,
            bytes_max: config.bytes_max,
            duration: config.duration,
            until: now + config.duration,
        });
        let i = self.open.len() - 1;
        let line = format!(
            "trace of user {user} started: ends in {} ms or at {} bytes",
            config.duration.as_millis(),
            config.bytes_max
        );
        self.note(i, &line);
        self.registry_changed();
        let mut changed = self.changed(user, now);
        changed.started = Some(Started::New);
        Ok(changed)
    }

    /// Undoes what a start of `user`'s trace did (`started`): a new trace
    /// ends, a restarted one gets its bounds back (and ends at the next
    /// look if they passed meanwhile). Nothing if it ended meanwhile.
    pub(super) fn undo(
        &mut self,
        user: UserId,
        started: Started,
        data_dir: &Path,
        now: Instant,
    ) -> Changed {
        if let Some(i) = self.find(user) {
            match started {
                Started::New => self.end(
                    i,
                    "not started after all (not every shard took it, or the admin call gave up)",
                ),
                Started::Restarted(before) => {
                    let t = &mut self.open[i];
                    t.duration = before.duration;
                    t.until = before.until;
                    t.bytes_max = before.bytes_max;
                    let line = format!(
                        "trace of user {user}: not started again after all (not every shard took \
                         it, or the admin call gave up): ends in {} ms or at {} bytes, as before",
                        before.until.saturating_duration_since(now).as_millis(),
                        before.bytes_max
                    );
                    self.note(i, &line);
                    self.generation += 1;
                }
            }
        }
        let mut changed = self.changed(user, now);
        changed.status.path = path_of(data_dir, user);
        changed
    }

    /// Stops `user`'s trace, if any.
    pub(super) fn stop(&mut self, user: UserId, data_dir: &Path, now: Instant) -> Changed {
        if let Some(i) = self.find(user) {
            self.end(i, "stopped by the admin call (level=off)");
        }
        let mut changed = self.changed(user, now);
        changed.status.path = path_of(data_dir, user);
        changed
    }

    /// Writes `line` (a formatted record, ending in a newline) to `user`'s
    /// trace, if traced; a line that would pass the size bound ends it
    /// instead.
    pub(super) fn write(&mut self, user: UserId, line: &str) {
        let Some(i) = self.find(user) else {
            return; // ended meanwhile
        };
        let t = &mut self.open[i];
        if t.bytes + line.len() as u64 > t.bytes_max {
            let why = format!("its size bound ({} bytes) was reached", t.bytes_max);
            self.end(i, &why);
            return;
        }
        t.buf.extend_from_slice(line.as_bytes());
        t.bytes += line.len() as u64;
        if t.buf.len() >= limits::TRACE_BUFFER_BYTES_MAX {
            self.flush_one(i);
        }
    }

    /// Writes every trace's buffered lines to its file: when the `log`
    /// thread has drained its queue (and before a read).
    pub(super) fn flush(&mut self) {
        let mut i = 0;
        while i < self.open.len() {
            // A trace that failed is gone, and another took its index.
            if self.flush_one(i) {
                i += 1;
            }
        }
    }

    /// Writes trace `i`'s buffered lines; a write that fails ends it.
    /// Whether it is still open.
    fn flush_one(&mut self, i: usize) -> bool {
        let t = &mut self.open[i];
        if t.buf.is_empty() {
            return true;
        }
        let written = t.file.write_all(&t.buf);
        t.buf.clear();
        match written {
            Ok(()) => true,
            Err(e) => {
                let why = format!("writing it failed: {e}");
                self.end(i, &why);
                false
            }
        }
    }

    /// Ends every trace whose time bound passed by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(i) = self.open.iter().position(|t| t.until <= now) {
            let why = format!(
                "its time bound ({} ms) passed",
                self.open[i].duration.as_millis()
            );
            self.end(i, &why);
        }
    }

    /// When the next trace ends by its time bound.
    pub(super) fn next_end(&self) -> Option<Instant> {
        self.open.iter().map(|t| t.until).min()
    }

    /// The newest lines of `user`'s trace file (read on the `log` thread:
    /// executors never touch the file).
    pub(super) fn read(
        &mut self,
        user: UserId,
        data_dir: &Path,
        now: Instant,
    ) -> Result<Lines, TraceError> {
        self.flush();
        let path = path_of(data_dir, user);
        // The folder as a start makes it (`files::create_traces_dir`): a
        // link there is refused, not followed, for reads too.
        let dir = data_dir.join(files::TRACES_DIR_NAME);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(TraceError::File(format!(
                    "{} is not a folder (a symbolic link?)",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TraceError::NotFound(path))
            }
            Err(e) => return Err(TraceError::File(format!("{}: {e}", dir.display()))),
        }
        let mut file = files::open_trace_file(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TraceError::NotFound(path.clone()),
            _ => TraceError::File(format!("{}: {e}", path.display())),
        })?;
        let len = file
            .metadata()
            .map_err(|e| TraceError::File(e.to_string()))?
            .len();
        let from = len.saturating_sub(limits::TRACE_READ_BYTES_MAX);
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(from))
            .and_then(|_| {
                file.take(limits::TRACE_READ_BYTES_MAX)
                    .read_to_end(&mut bytes)
            })
            .map_err(|e| TraceError::File(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes);
        // Read from the middle: the first line is cut, leave it out.
        let text = match from {
            0 => &text[..],
            _ => text.split_once('\n').map_or("", |(_, rest)| rest),
        };
        let lines: Vec<&str> = text.lines().collect();
        let shown = &lines[lines.len().saturating_sub(limits::TRACE_LINES_SHOWN_MAX)..];
        let mut out = String::with_capacity(text.len().min(64 * 1024));
        for line in shown {
            out.push_str(line);
            out.push('\n');
        }
        let mut status = self.status(user, now);
        status.path = path;
        if !status.on {
            status.bytes = len;
        }
        Ok(Lines {
            status,
            text: out,
            count: shown.len(),
        })
    }

    fn find(&self, user: UserId) -> Option<usize> {
        self.open.iter().position(|t| t.user == user)
    }

    /// Writes a line of the trace's own (its start or end) to trace `i`,
    /// outside its size bound.
    fn note(&mut self, i: usize, what: &str) {
        let t = &mut self.open[i];
        let mut line = String::with_capacity(96);
        utc::write_utc(&mut line, utc::now_unix_ms());
        line.push_str(" INFO  log switchboard_engine::logger::trace: ");
        line.push_str(what);
        line.push('\n');
        t.buf.extend_from_slice(line.as_bytes());
    }

    /// Ends trace `i`: its last line says why (what is buffered is
    /// written, as far as the file takes it); the file closes.
    fn end(&mut self, i: usize, why: &str) {
        let user = self.open[i].user;
        self.note(i, &format!("trace of user {user} ended: {why}"));
        let mut t = self.open.swap_remove(i);
        let _ = t.file.write_all(&t.buf);
        self.registry_changed();
    }

    /// Makes the registry match `open`, and `log`'s max level with it.
    fn registry_changed(&mut self) {
        self.generation += 1;
        for (i, slot) in REGISTRY.users.iter().enumerate() {
            let user = self.open.get(i).map_or(0, |t| t.user);
            slot.store(user, Ordering::Relaxed);
        }
        REGISTRY.active.store(self.open.len(), Ordering::Release);
        let max = if self.open.is_empty() {
            self.filter_max
        } else {
            self.filter_max.max(log::LevelFilter::Debug)
        };
        log::set_max_level(max);
    }

    fn status(&self, user: UserId, now: Instant) -> Status {
        match self.find(user) {
            Some(i) => {
                let t = &self.open[i];
                Status {
                    user,
                    on: true,
                    path: t.path.clone(),
                    bytes: t.bytes,
                    bytes_max: t.bytes_max,
                    ends_in: Some(t.until.saturating_duration_since(now)),
                }
            }
            None => Status {
                user,
                on: false,
                path: PathBuf::new(),
                bytes: 0,
                bytes_max: 0,
                ends_in: None,
            },
        }
    }

    fn changed(&self, user: UserId, now: Instant) -> Changed {
        Changed {
            started: None,
            status: self.status(user, now),
            snapshot: Snapshot {
                generation: self.generation,
                users: self
                    .open
                    .iter()
                    .map(|t| (t.user, t.until.saturating_duration_since(now)))
                    .collect(),
            },
        }
    }
}

/// Whether `name` is a trace file's (`user-ID.log`).
fn is_trace_file_name(name: &str) -> bool {
    name.strip_prefix("user-")
        .and_then(|rest| rest.strip_suffix(".log"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes the oldest ended trace files in the traces folder `dir` (by
/// their last write), so that at most `files_max` remain, together at
/// most `bytes_max`. Never deletes a file named as one in `keep` (the
/// running traces', the one about to be made), nor anything that is not a
/// regular file named like a trace's; looks at most at
/// `TRACE_DIR_ENTRIES_SCANNED_MAX` entries. How many it deleted.
fn prune(dir: &Path, keep: &[&Path], files_max: usize, bytes_max: u64) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut ended = Vec::new();
    for entry in entries
        .take(limits::TRACE_DIR_ENTRIES_SCANNED_MAX)
        .flatten()
    {
        let name = entry.file_name();
        let named = name.to_str().is_some_and(is_trace_file_name);
        if !named || keep.iter().any(|k| k.file_name() == Some(&name)) {
            continue;
        }
        let path = entry.path();
        // Not followed: a link is not a trace file.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            let written = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            ended.push((written, meta.len(), path));
        }
    }
    // Newest first: those kept.
    ended.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
    let (mut kept, mut bytes, mut deleted) = (0, 0u64, 0);
    for (_, len, path) in ended {
        if kept < files_max && bytes + len <= bytes_max {
            kept += 1;
            bytes += len;
        } else if std::fs::remove_file(&path).is_ok() {
            deleted += 1;
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchboard-trace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn config(dir: &Path, secs: u64, bytes_max: u64) -> TraceConfig {
        TraceConfig {
            data_dir: dir.to_path_buf(),
            duration: Duration::from_secs(secs),
            bytes_max,
        }
    }

    /// The registry is process-wide, so one test drives it start to end.
    #[test]
    fn traces_start_record_end_by_their_bounds_and_are_read_back() {
        let dir = temp_dir("files");
        let mut files = Files::new(log::LevelFilter::Info);
        let t0 = Instant::now();
        assert!(!is_traced(42));

        let c = files.start(42, &config(&dir, 60, 1_000), t0).unwrap();
        assert!(c.status.on && is_traced(42) && !is_traced(43));
        assert_eq!(c.snapshot.users, vec![(42, Duration::from_secs(60))]);
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        assert_eq!(c.started, Some(Started::New));
        let path = path_of(&dir, 42);
        assert_eq!(c.status.path, path);
        // A restart that not every shard took is undone: the trace keeps
        // its old bounds.
        let t1 = t0 + Duration::from_secs(1);
        let again = files.start(42, &config(&dir, 120, 2_000), t1).unwrap();
        assert!(again.snapshot.generation > c.snapshot.generation);
        assert_eq!(again.status.ends_in, Some(Duration::from_secs(120)));
        let Some(started @ Started::Restarted(_)) = again.started else {
            panic!("{again:?}");
        };
        let undone = files.undo(42, started, &dir, t1);
        assert!(undone.status.on && is_traced(42));
        assert_eq!(undone.status.ends_in, Some(Duration::from_secs(59)));
        assert_eq!(undone.status.bytes_max, 1_000);
        assert!(undone.snapshot.generation > again.snapshot.generation);
        files.write(42, "one\n");
        files.write(43, "not traced\n");
        // Buffered: written when the log thread's queue is drained (or by
        // a read).
        assert!(!std::fs::read_to_string(&path).unwrap().contains("one"));
        files.flush();
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("one\n"));
        let lines = files.read(42, &dir, t0).unwrap();
        assert_eq!(lines.count, 4, "{}", lines.text);
        assert!(lines.text.contains("as before"), "{}", lines.text);
        assert!(lines.text.contains("trace of user 42 started"));
        assert!(lines.text.ends_with("one\n"));
        assert!(!path_of(&dir, 43).exists());

        // The size bound: the line that would pass it ends the trace.
        files.write(42, &"x".repeat(997));
        assert!(!is_traced(42), "ended by its size");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("ended: its size bound (1000 bytes)"),
            "{text}"
        );
        assert!(!text.contains("xxx"));
        assert_eq!(log::max_level(), log::LevelFilter::Info);

        // The time bound, and the most at once.
        for user in 1..=TRACED_USERS_MAX as u64 {
            let secs = if user == 1 { 1 } else { 60 };
            files.start(user, &config(&dir, secs, 1_000), t0).unwrap();
        }
        assert_eq!(
            files.start(99, &config(&dir, 60, 1_000), t0),
            Err(TraceError::TooMany)
        );
        assert_eq!(files.next_end(), Some(t0 + Duration::from_secs(1)));
        files.expire(t0 + Duration::from_millis(999));
        assert!(is_traced(1));
        files.expire(t0 + Duration::from_secs(1));
        assert!(!is_traced(1) && is_traced(2));
        let text = std::fs::read_to_string(path_of(&dir, 1)).unwrap();
        assert!(
            text.contains("ended: its time bound (1000 ms) passed"),
            "{text}"
        );
        let c = files.start(99, &config(&dir, 60, 1_000), t0).unwrap();
        assert!(c.status.on);
        assert_eq!(c.snapshot.users.len(), TRACED_USERS_MAX);

        // Stop, then the file stays readable.
        for user in (2..=TRACED_USERS_MAX as u64).chain([99]) {
            let c = files.stop(user, &dir, t0);
            assert!(!c.status.on);
        }
        assert!(!any());
        let lines = files.read(99, &dir, t0).unwrap();
        assert!(!lines.status.on);
        assert!(
            lines.text.contains("stopped by the admin call"),
            "{}",
            lines.text
        );
        assert_eq!(
            files.read(77, &dir, t0).map(|_| ()),
            Err(TraceError::NotFound(path_of(&dir, 77)))
        );
        // A new trace that not every shard took is undone: it ends.
        let c = files.start(55, &config(&dir, 60, 1_000), t0).unwrap();
        let undone = files.undo(55, c.started.unwrap(), &dir, t0);
        assert!(!undone.status.on && !is_traced(55) && !any());
        let text = std::fs::read_to_string(path_of(&dir, 55)).unwrap();
        assert!(text.contains("ended: not started after all"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ended_trace_files_past_the_bounds_are_deleted_oldest_first_and_nothing_else() {
        let dir = temp_dir("prune");
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = std::time::SystemTime::now() - Duration::from_secs(3_600);
        // Users 1..=10, each file 100 bytes, user 1 the oldest.
        for user in 1..=10u64 {
            let path = dir.join(format!("user-{user}.log"));
            std::fs::write(&path, [b'x'; 100]).unwrap();
            let file = File::options().write(true).open(&path).unwrap();
            file.set_modified(t0 + Duration::from_secs(user)).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), "not a trace").unwrap();
        std::fs::write(dir.join("user-x.log"), "not a trace").unwrap();
        std::os::unix::fs::symlink(dir.join("user-10.log"), dir.join("user-11.log")).unwrap();
        let left = || {
            let mut users: Vec<u64> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().unwrap();
                    let id = name.strip_prefix("user-")?.strip_suffix(".log")?;
                    id.parse().ok()
                })
                .collect();
            users.sort();
            users
        };
        // User 2's trace runs (old as its file is), user 12's starts.
        let running = dir.join("user-2.log");
        let new = dir.join("user-12.log");
        let keep = [running.as_path(), new.as_path()];
        assert_eq!(prune(&dir, &keep, 6, u64::MAX), 3, "{:?}", left());
        assert_eq!(left(), [2, 5, 6, 7, 8, 9, 10, 11]);
        // The bytes bound: 3 files of 100 bytes fit in 350.
        assert_eq!(prune(&dir, &keep, 6, 350), 3);
        assert_eq!(left(), [2, 8, 9, 10, 11]);
        assert_eq!(prune(&dir, &keep, 6, 350), 0, "nothing more");
        // What is not a trace file is left alone: the link was never
        // counted, and still points at user 10's file.
        assert!(dir.join("notes.txt").exists() && dir.join("user-x.log").exists());
        assert!(std::fs::symlink_metadata(dir.join("user-11.log"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(is_trace_file_name("user-42.log"));
        for name in ["user-.log", "user-42.log.bak", "user-4x2.log", "x-42.log"] {
            assert!(!is_trace_file_name(name), "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_traces_folder_that_is_a_link_is_not_read_through() {
        let elsewhere = temp_dir("read-elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("user-5.log"), "someone else's file\n").unwrap();
        let dir = temp_dir("read-linked");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(files::TRACES_DIR_NAME)).unwrap();
        let mut files = Files::new(log::LevelFilter::Info);
        match files.read(5, &dir, Instant::now()) {
            Err(TraceError::File(e)) => assert!(e.contains("not a folder"), "{e}"),
            other => panic!("read through a link: {other:?}"),
        }
        // No folder at all: no file.
        let empty = temp_dir("read-none");
        assert_eq!(
            files.read(5, &empty, Instant::now()).map(|_| ()),
            Err(TraceError::NotFound(path_of(&empty, 5)))
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn reading_shows_only_the_newest_lines() {
        let dir = temp_dir("read");
        let path = path_of(&dir, 5);
        files::create_traces_dir(&dir).unwrap();
        let many: String = (0..1_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, many).unwrap();
        let mut files = Files::new(log::LevelFilter::Info);
        let lines = files.read(5, &dir, Instant::now()).unwrap();
        assert_eq!(lines.count, limits::TRACE_LINES_SHOWN_MAX);
        assert!(
            lines.text.starts_with("line 800\n"),
            "{}",
            &lines.text[..20]
        );
        assert!(lines.text.ends_with("line 999\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
