//! `switchboard-storage` owns everything that outlives a process: the
//! directory (users, names, friendships), login tokens, and the stored
//! messages, UI states, read marks and unread counters. It is the only
//! crate that blocks: jobs ([`StorageJob`]) go through one bounded queue to
//! named `db-N` threads, and each result comes back through a [`Pending`]
//! future that the db thread completes without ever blocking the waiting
//! executor (Redpanda's `thread_worker` shape).
//!
//! Invariants:
//! - **Only this crate blocks.** [`Store::submit`] never waits: a full
//!   queue fails at once with [`StorageError::Overloaded`].
//! - **Every job is answered exactly once**: with its result, with
//!   `TimedOut` when its deadline passed before it ran (see below), or
//!   with `Backend` when it fails (or when the store stopped before
//!   running it). Every failure is logged once, with job name and user;
//!   a job past its deadline once with its batch, saying where the batch
//!   waited and how long (the db thread, the pool checkout, statement,
//!   write lock or commit, the queue: see `watch.rs`).
//! - **Durable before answered.** Write jobs run in one write transaction
//!   per batch (group commit), made durable before any of them is
//!   answered: an answered `/send` survives `kill -9` and a power cut.
//!   Embedded: the batch's effects are appended to the write-ahead log and
//!   `fdatasync`ed, then redb commits without fsync (see below); MySQL:
//!   `COMMIT`.
//! - **`TimedOut` means not stored; a late `Ok` means stored.** A write's
//!   deadline is checked last at a point after which nothing can stop
//!   its commit: embedded, right after `begin_write()` returns, holding
//!   redb's write lock (a write that waited past its deadline for the
//!   lock is answered `TimedOut` and left out of the transaction); MySQL,
//!   before `COMMIT` is sent (else the transaction is rolled back). Both
//!   also check at pickup, and MySQL between the steps of its write. A
//!   commit that starts in time may end after the deadline (a slow fsync,
//!   a slow `COMMIT`): its jobs are answered `Ok` late. Storage cannot
//!   close that window; the engine waits a slack past the deadline for
//!   the answer. (MySQL only: a `COMMIT` that fails on the socket is
//!   answered `Backend` and may have committed.) A retry with the same
//!   `(from, cid)` is stored at most once, whatever the first answer was.
//! - **Fault injection is test-only.** With the `fault-injection` feature
//!   (off by default; on for this crate's tests and the engine's
//!   integration tests), `SWITCHBOARD_FAULT_COMMIT_STALL_MS` (and
//!   `_COUNT`), read once at open, stall write batches after their last
//!   deadline check and before their durable step, simulating a commit
//!   that starts in time and ends late; `SWITCHBOARD_FAULT_NO_CHECKPOINT`
//!   holds the embedded log's checkpoints off (for `kill -9` tests of its
//!   replay). Without the feature the variables are never read.
//!
//! The embedded backend ([`Store::open_embedded`]) keeps one redb file,
//! `data_dir/switchboard.redb`, with these tables (`lo`/`hi` are the two
//! users of a conversation, smaller id first):
//!
//! | table | key → value | what for |
//! | --- | --- | --- |
//! | `meta` | `&str` → `u64` | `next_msg_id` (ids start at 1, assigned in the write transaction), `schema_version`, `wal_generation` (the write-ahead log records that recovery replays) |
//! | `messages` | `id` → `(from, to, ts, text, cid)` | every message, by its global increasing id |
//! | `conversations` | `(lo, hi, id)` → `from` | history paging and unread counting as range scans |
//! | `cids` | `(from, cid)` → `id` | `/send` idempotency, kept forever |
//! | `ui` | `user` → state text | persisted UI state |
//! | `read_marks` | `(user, with)` → `id` | how far `user` has read the conversation with `with` |
//! | `unread` | `(user, from)` → count | unread messages from `from` to `user`; absent means 0 |
//!
//! In front of it, the write-ahead log `data_dir/switchboard.wal`
//! (module `wal`): one record per write batch, holding the batch's
//! changes as absolute values (rows put with their ids, counts and marks
//! set, `next_msg_id`), with a generation, a sequence and a CRC-32. A
//! batch appends its record and `fdatasync`s it, then commits redb with
//! `Durability::None`; so redb's file alone may lag the answered writes
//! by a fraction of a second (`limits::WAL_CHECKPOINT_AGE_MS`). A *checkpoint* (the first batch after the log is
//! `limits::WAL_CHECKPOINT_AGE_MS` old or would pass
//! `limits::WAL_BYTES_MAX`, an idle db thread, a stopping one) commits redb
//! durably with a new random `wal_generation` and starts the log again at
//! offset 0.
//! At open, the records of `meta["wal_generation"]` are replayed from
//! offset 0 up to the first torn, corrupt or older-generation one, then
//! committed durably with a new generation. docs/architecture.md
//! ("Why a write-ahead log in front of redb") says why and how.
//!
//! The directory is held in memory: the built-in demo users or a JSON file
//! ([`directory`]), re-read on [`Store::reload_directory`].
//!
//! The MySQL backend ([`Store::open_mysql`], module [`mysql`]) reads the
//! directory from the web app's own tables through configurable queries
//! and keeps Switchboard's tables (`sb_*`) in the same database; the same
//! invariants hold, with one transaction (one multi-row `INSERT`) per
//! batch of sends.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod batch;
pub mod directory;
mod embedded;
mod fault;
pub mod files;
pub mod limits;
pub mod mysql;
mod pin;
pub mod token;
mod wal;
mod watch;

/// Whether this build honours the test-only fault injection variables
/// (the `fault-injection` feature): the engine warns at start when it does.
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");

pub use directory::{Directory, DirectoryError};
pub use embedded::EmbeddedConfig;
pub use mysql::{DirectoryQueries, MysqlConfig};

use crossbeam_channel::{Sender, TrySendError};
use futures_channel::oneshot;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;
use switchboard_shards::model::{StorageError, StorageJob, StorageResult, UserId};
use watch::{Queued, Watch};

/// The handle the engine uses to reach storage, whatever the backend.
/// Cheap to clone and `Send + Sync`: every executor keeps one. When the
/// last clone is dropped (or [`Store::shutdown`] is called) the db threads
/// finish the queued jobs and stop; that drop waits for them, so let the
/// last clone go on the thread that stops the server, not on an executor.
#[derive(Clone)]
pub struct Store {
    /// Shared by every clone; its `Drop` stops the threads.
    inner: Arc<Inner>,
}

/// What the clones of a [`Store`] share.
struct Inner {
    /// The bounded job queue into the db threads.
    jobs: Sender<Envelope>,
    /// Set once to tell the db threads to drain the queue and exit.
    stop: Arc<AtomicBool>,
    /// The db threads, taken (and joined) by the first stop.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Counters shared with the db threads.
    counters: Arc<Counters>,
    /// The queue's capacity, for [`StoreStats`] and log lines.
    queue_depth: usize,
    /// Whether the backend can look tokens up ([`Store::lookup_token`]).
    token_lookup: bool,
    /// Each db thread's watch (what it is doing, for [`StoreStats`]).
    watches: Vec<Arc<Watch>>,
    /// The MySQL pool's state as `db-watch` last sampled it, if there
    /// is a pool.
    pool: Option<Arc<PoolSample>>,
}

/// One unit of work in the queue, with when it must be started by.
pub(crate) struct Envelope {
    /// What to do and where to send the answer.
    pub(crate) work: Work,
    /// A db thread that picks this up later answers `TimedOut` instead;
    /// a write is checked against it again right before its last point
    /// of no return (see the crate documentation).
    pub(crate) deadline: Instant,
    /// When it was queued and behind how many jobs (for the line of a
    /// late batch: [`watch`]).
    pub(crate) queued: Queued,
}

/// The kinds of work a db thread does.
pub(crate) enum Work {
    /// A shard's storage job.
    Job {
        /// The job.
        job: StorageJob,
        /// Where its one answer goes.
        reply: oneshot::Sender<StorageResult>,
    },
    /// Re-read the directory (admin `roster-changed`).
    ReloadDirectory {
        /// Where its one answer goes.
        reply: oneshot::Sender<ReloadResult>,
    },
    /// Find the user of a stored (non-HMAC) login token.
    LookupToken {
        /// The token as the client sent it.
        token: String,
        /// Where its one answer goes.
        reply: oneshot::Sender<TokenLookupResult>,
    },
}

/// Monotonic counters, readable at any time through [`Store::stats`].
#[derive(Default)]
pub(crate) struct Counters {
    /// Jobs accepted into the queue.
    pub(crate) submitted: AtomicU64,
    /// Jobs refused because the queue was full.
    pub(crate) shed: AtomicU64,
    /// Jobs answered `TimedOut` (not run, or rolled back: not stored).
    pub(crate) timed_out: AtomicU64,
    /// Jobs answered `Backend`.
    pub(crate) failed: AtomicU64,
    /// Write transactions committed.
    pub(crate) write_batches: AtomicU64,
    /// Write jobs answered from committed transactions.
    pub(crate) write_jobs: AtomicU64,
    /// Batches past a deadline or with jobs picked up after theirs, each
    /// counted once ([`watch::Watch::count_late`]).
    pub(crate) late_batches: AtomicU64,
    /// Embedded: durable commits that emptied the write-ahead log.
    pub(crate) checkpoints: AtomicU64,
    /// Embedded: bytes of records in the write-ahead log now.
    pub(crate) wal_bytes: AtomicU64,
    /// Embedded: write batches replayed from the log when the store
    /// opened.
    pub(crate) wal_replayed: AtomicU64,
}

/// A snapshot of the store's counters (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Jobs accepted into the queue since open.
    pub jobs_submitted: u64,
    /// Jobs refused with `Overloaded` because the queue was full.
    pub jobs_shed: u64,
    /// Jobs answered `TimedOut`: their deadline passed before a db thread
    /// picked them up, or (writes) before their transaction began
    /// (embedded) or before `COMMIT` (MySQL). None of them was stored.
    pub jobs_timed_out: u64,
    /// Jobs answered `Backend` (database or I/O failure).
    pub jobs_failed: u64,
    /// Write transactions committed (group commits).
    pub write_batches: u64,
    /// Write jobs answered from those transactions; divided by
    /// `write_batches` it is the mean batch size.
    pub write_jobs: u64,
    /// Jobs waiting in the queue now.
    pub queue_len: usize,
    /// The queue's capacity.
    pub queue_depth: usize,
    /// Batches that went past a job's deadline (running, or jobs picked
    /// up late), each counted once and logged at warn with where it
    /// waited.
    pub late_batches: u64,
    /// Embedded: checkpoints (durable commits that emptied the write-ahead
    /// log: by age, by size, when idle, at shutdown) since open.
    pub checkpoints: u64,
    /// Embedded: bytes of records in the write-ahead log now (0 after a
    /// checkpoint), at most `limits::WAL_BYTES_MAX`.
    pub wal_bytes: u64,
    /// Embedded: write batches replayed from the write-ahead log when the
    /// store opened (non-zero only after a crash).
    pub wal_replayed: u64,
    /// The `db-N` threads.
    pub threads: usize,
    /// Of them, those running a batch now.
    pub threads_busy: usize,
    /// The MySQL pool now (`None`: the embedded store, which has none).
    pub pool: Option<PoolStats>,
}

/// The MySQL connection pool's state: r2d2's `state()` as the `db-watch`
/// thread last sampled it (at most `DB_WATCH_INTERVAL_MS` old), and the
/// db threads' checkouts now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections the pool may hold (`MYSQL_POOL_SIZE`).
    pub max: usize,
    /// Connections open now, idle or checked out.
    pub connections: usize,
    /// Of them, idle in the pool.
    pub idle: usize,
    /// db threads waiting for a connection now.
    pub waiting: usize,
}

/// What a backend hands [`Store::from_parts`].
pub(crate) struct Parts {
    /// The bounded job queue into the db threads.
    pub(crate) jobs: Sender<Envelope>,
    /// Set once to tell the threads to drain the queue and exit.
    pub(crate) stop: Arc<AtomicBool>,
    /// The threads (db threads and `db-watch`).
    pub(crate) threads: Vec<JoinHandle<()>>,
    /// Counters shared with the threads.
    pub(crate) counters: Arc<Counters>,
    /// The queue's capacity.
    pub(crate) queue_depth: usize,
    /// Whether the backend looks tokens up.
    pub(crate) token_lookup: bool,
    /// Each db thread's watch, for [`StoreStats`].
    pub(crate) watches: Vec<Arc<Watch>>,
    /// The MySQL pool's sampled state (`None`: no pool).
    pub(crate) pool: Option<Arc<PoolSample>>,
}

/// The MySQL pool's size and state, as the `db-watch` thread last read
/// them (every `DB_WATCH_INTERVAL_MS`). r2d2's `state()` takes the pool's
/// lock, so it is read there, on a storage thread, and never by whoever
/// asks [`Store::stats`] (an executor serving `/metrics`): they read
/// these atomics, at most one interval old.
#[derive(Debug, Default)]
pub(crate) struct PoolSample {
    /// Connections the pool may hold.
    pub(crate) max: AtomicUsize,
    /// Connections open, idle or checked out.
    pub(crate) connections: AtomicUsize,
    /// Of them, idle in the pool.
    pub(crate) idle: AtomicUsize,
}

/// Why [`Store::open_embedded`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// A setting out of its bounds (the text says which).
    Config(String),
    /// A file or folder could not be created or read.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The database could not be opened or initialised (locked by another
    /// process, corrupt, or from a newer schema).
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The directory file was refused.
    Directory(DirectoryError),
    /// A db thread could not be started.
    Thread(io::Error),
    /// The MySQL database is unusable: bad URL, a directory query that
    /// does not prepare, or a schema this build does not know (the text
    /// says which, and what to do).
    Mysql(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(e) => write!(f, "storage settings: {e}"),
            OpenError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            OpenError::Database { path, detail } => {
                write!(f, "database {}: {detail}", path.display())
            }
            OpenError::Directory(e) => e.fmt(f),
            OpenError::Thread(e) => write!(f, "starting a db thread: {e}"),
            OpenError::Mysql(e) => write!(f, "mysql: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } | OpenError::Thread(source) => Some(source),
            OpenError::Directory(e) => Some(e),
            _ => None,
        }
    }
}

/// What a successful directory reload found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectoryReloaded {
    /// Users in the directory now in force.
    pub users: usize,
    /// Distinct friendships in it.
    pub friendships: usize,
}

/// Why a directory reload failed. The old directory stays in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadError {
    /// The reload did not run (queue full, deadline passed, store gone).
    Storage(StorageError),
    /// The file was refused; the text names the fault.
    Directory(String),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::Storage(e) => e.fmt(f),
            ReloadError::Directory(e) => write!(f, "{e} (the previous directory stays in force)"),
        }
    }
}

/// The answer to [`Store::reload_directory`].
pub type ReloadResult = Result<DirectoryReloaded, ReloadError>;

/// The answer to [`Store::lookup_token`]: the token's user, or `None` when
/// the directory does not know the token (or it expired there).
pub type TokenLookupResult = Result<Option<UserId>, StorageError>;

/// The text every job gets when its db thread went away without answering.
const GONE: &str = "storage thread gone";

/// A result's value when its db thread went away without answering.
pub trait Gone {
    /// The failure a dropped answer turns into.
    fn gone() -> Self;
}

impl<T> Gone for Result<T, StorageError> {
    fn gone() -> Self {
        Err(StorageError::Backend(GONE.to_string()))
    }
}

impl Gone for ReloadResult {
    fn gone() -> Self {
        Err(ReloadError::Storage(StorageError::Backend(
            GONE.to_string(),
        )))
    }
}

/// A result on its way back from a db thread. A future that never blocks:
/// the db thread completes it and wakes the task that polled it, on
/// whatever executor that is. It has no timer of its own; the deadline
/// given with the work bounds when it may start (and, for a write, when
/// its commit may start), not when it is answered: a commit that started
/// in time is answered `Ok` when it ends, possibly after the deadline.
/// The caller races it against its own timer if it needs to, and should
/// give a write a slack past its deadline.
#[must_use = "an answer does nothing unless awaited; dropping it discards the answer, not the job"]
pub struct Answer<R> {
    /// Completed exactly once by a db thread, or dropped (store gone).
    rx: oneshot::Receiver<R>,
}

impl<R: Gone> Future for Answer<R> {
    type Output = R;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(R::gone()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A job's result ([`Store::submit`]).
pub type Pending = Answer<StorageResult>;
/// A directory reload's result ([`Store::reload_directory`]).
pub type PendingReload = Answer<ReloadResult>;
/// A token lookup's result ([`Store::lookup_token`]).
pub type PendingToken = Answer<TokenLookupResult>;

impl Store {
    /// Opens the MySQL store: builds the connection pool (connections are
    /// made in the background, so a database that is down at start only
    /// makes jobs fail until it is back), checks the schema version and
    /// prepares the directory queries when the database answers, and
    /// starts the `db-N` threads. A schema that `switchboard migrate` has
    /// not brought up to date, or a directory query that does not prepare,
    /// is refused.
    pub fn open_mysql(config: MysqlConfig) -> Result<Store, OpenError> {
        mysql::open(config)
    }

    /// Opens the embedded store: creates `data_dir`, opens (or creates)
    /// `data_dir/switchboard.redb`, loads the directory, and starts the
    /// `db-0..db-N` threads. Settings out of their [`limits`] are refused.
    pub fn open_embedded(config: EmbeddedConfig) -> Result<Store, OpenError> {
        embedded::open(config)
    }

    /// Wraps started threads into a store (for the backends).
    pub(crate) fn from_parts(parts: Parts) -> Store {
        Store {
            inner: Arc::new(Inner {
                jobs: parts.jobs,
                stop: parts.stop,
                threads: Mutex::new(parts.threads),
                counters: parts.counters,
                queue_depth: parts.queue_depth,
                token_lookup: parts.token_lookup,
                watches: parts.watches,
                pool: parts.pool,
            }),
        }
    }

    /// Whether tokens that are not HMAC tokens should be looked up with
    /// [`Store::lookup_token`] (MySQL with a token query configured).
    pub fn looks_up_tokens(&self) -> bool {
        self.inner.token_lookup
    }

    /// Asks a db thread for the user of a stored login token (the
    /// configured token query). Never blocks, like [`Store::submit`]; a
    /// backend without a token query answers `Ok(None)`.
    pub fn lookup_token(
        &self,
        token: String,
        deadline: Instant,
    ) -> Result<PendingToken, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Work::LookupToken { token, reply }, deadline, None, || {
            "token lookup".to_string()
        })?;
        Ok(Answer { rx })
    }

    /// Queues a job and returns the future of its result. Never blocks: a
    /// full queue is `Err(Overloaded)` at once, a stopped store
    /// `Err(Backend)`. A job still queued at `deadline` is answered
    /// `TimedOut` without running; a write whose commit cannot start by
    /// `deadline` is answered `TimedOut` and not stored; a write whose
    /// commit started in time is answered `Ok` when it ends, possibly
    /// after `deadline`.
    pub fn submit(&self, job: StorageJob, deadline: Instant) -> Result<Pending, StorageError> {
        let (name, user) = (job.name(), job.user());
        let (reply, rx) = oneshot::channel();
        self.enqueue(Work::Job { job, reply }, deadline, Some(user), || {
            format!("{name} for user {user}")
        })?;
        Ok(Answer { rx })
    }

    /// Puts `work` in the job queue without waiting: a full queue is
    /// `Overloaded`, a stopped store `Backend`; both are counted and logged
    /// once (repeats are limited by the logger), naming `what()` (only
    /// built then: this is the request path) and the `user` it is for.
    fn enqueue(
        &self,
        work: Work,
        deadline: Instant,
        user: Option<UserId>,
        what: impl FnOnce() -> String,
    ) -> Result<(), StorageError> {
        let counters = &self.inner.counters;
        let queued = Queued {
            at: Instant::now(),
            behind: self.inner.jobs.len(),
        };
        let envelope = Envelope {
            work,
            deadline,
            queued,
        };
        match self.inner.jobs.try_send(envelope) {
            Ok(()) => {
                counters.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                counters.shed.fetch_add(1, Ordering::Relaxed);
                let depth = self.inner.queue_depth;
                match user {
                    Some(user) => {
                        log::warn!(user; "storage: {} shed: job queue full ({depth} jobs)", what())
                    }
                    None => log::warn!("storage: {} shed: job queue full ({depth} jobs)", what()),
                }
                Err(StorageError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("storage: {} refused: the store is stopped", what());
                Err(StorageError::Backend("storage stopped".to_string()))
            }
        }
    }

    /// Asks a db thread to re-read the directory (admin `roster-changed`).
    /// Embedded: re-reads the directory file (with the demo directory, a
    /// no-op); a refused file keeps the old directory in force and the
    /// answer carries the fault. MySQL: a no-op success (the directory is
    /// read from the database at every roster load). Never blocks, like [`Store::submit`].
    pub fn reload_directory(&self, deadline: Instant) -> Result<PendingReload, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Work::ReloadDirectory { reply }, deadline, None, || {
            "directory reload".to_string()
        })?;
        Ok(Answer { rx })
    }

    /// Jobs waiting in the queue now (atomics only: for an executor's
    /// log line).
    pub fn queue_len(&self) -> usize {
        self.inner.jobs.len()
    }

    /// The counters now. Atomics only, no lock (the MySQL pool's state is
    /// `db-watch`'s sample, see [`PoolStats`]), so any thread may call it.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            jobs_submitted: c.submitted.load(Ordering::Relaxed),
            jobs_shed: c.shed.load(Ordering::Relaxed),
            jobs_timed_out: c.timed_out.load(Ordering::Relaxed),
            jobs_failed: c.failed.load(Ordering::Relaxed),
            write_batches: c.write_batches.load(Ordering::Relaxed),
            write_jobs: c.write_jobs.load(Ordering::Relaxed),
            queue_len: self.inner.jobs.len(),
            queue_depth: self.inner.queue_depth,
            late_batches: c.late_batches.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            wal_bytes: c.wal_bytes.load(Ordering::Relaxed),
            wal_replayed: c.wal_replayed.load(Ordering::Relaxed),
            threads: self.inner.watches.len(),
            threads_busy: self
                .inner
                .watches
                .iter()
                .filter(|w| w.busy() != watch::IDLE)
                .count(),
            pool: self.inner.pool.as_ref().map(|sample| PoolStats {
                max: sample.max.load(Ordering::Relaxed),
                connections: sample.connections.load(Ordering::Relaxed),
                idle: sample.idle.load(Ordering::Relaxed),
                waiting: self
                    .inner
                    .watches
                    .iter()
                    .filter(|w| w.busy() == watch::CHECKOUT)
                    .count(),
            }),
        }
    }

    /// The name of a storage thread that has ended although the store was
    /// not stopped (a panic on a `db-N` thread, say), if any. Such a store
    /// answers the jobs that thread would have run only at its deadline,
    /// or never: the engine's watchdog ends the process instead.
    pub fn dead_thread(&self) -> Option<String> {
        if self.inner.stop.load(Ordering::Acquire) {
            return None;
        }
        let threads = self
            .inner
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dead = threads.iter().find(|t| t.is_finished())?;
        Some(dead.thread().name().unwrap_or("db-?").to_string())
    }

    /// Stops the db threads once they have answered every job already
    /// queued, and waits for them (this blocks: call it from the thread
    /// that stops the server, not from an executor). The database is
    /// closed when it returns. Jobs submitted through other clones
    /// afterwards fail with `Backend("storage stopped")`.
    pub fn shutdown(self) {
        self.inner.stop_and_join();
    }
}

impl Inner {
    fn stop_and_join(&self) {
        self.stop.store(true, Ordering::Release);
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let name = thread.thread().name().unwrap_or("db-?").to_string();
            if thread.join().is_err() {
                log::error!("storage: thread {name} panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store over `threads`, with a queue nobody reads.
    fn store_of(threads: Vec<JoinHandle<()>>) -> Store {
        let (jobs, _queue) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        Store::from_parts(Parts {
            jobs,
            stop,
            threads,
            counters: Arc::default(),
            queue_depth: 1,
            token_lookup: false,
            watches: Vec::new(),
            pool: None,
        })
    }

    #[test]
    fn a_storage_thread_that_died_is_named_until_the_store_stops() {
        let alive = Arc::new(AtomicBool::new(true));
        let keep = alive.clone();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .unwrap()
        };
        let waits = spawn(
            "db-0",
            Box::new(move || {
                while keep.load(Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }),
        );
        let store = store_of(vec![waits]);
        assert_eq!(store.dead_thread(), None);
        let dies = spawn("db-1", Box::new(|| panic!("a db thread dies (test)")));
        store.inner.threads.lock().unwrap().push(dies);
        let start = Instant::now();
        while store.dead_thread().is_none() {
            assert!(start.elapsed().as_secs() < 10, "never seen dead");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(store.dead_thread().as_deref(), Some("db-1"));
        alive.store(false, Ordering::Release);
        store.inner.stop.store(true, Ordering::Release);
        assert_eq!(store.dead_thread(), None, "a stopped store's threads end");
    }
}
