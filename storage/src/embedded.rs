//! The embedded backend: one redb file and an in-memory directory, served
//! by `db-N` threads with group commit. The schema is described in the
//! crate documentation (`lib.rs`).
//!
//! A db thread's loop: take one envelope (waiting at most
//! [`limits::DB_IDLE_WAIT_MS`], so it notices a stop), then drain up to
//! `write_batch_max - 1` more without waiting ([`batch::next_batch`]).
//! The shared triage ([`batch::triage`]) answers the jobs whose deadline
//! has passed `TimedOut` and refuses oversized writes; directory reloads
//! and read jobs run next, in one read transaction, and are answered at
//! once; then all write jobs run, in order, in one write transaction whose
//! changes are appended to the write-ahead log as one record and
//! `fdatasync`ed, then committed without fsync, before any of them is
//! answered; or, at a checkpoint, committed with an fsync instead
//! ([`State::commit_writes`], and `wal.rs` for the log). redb runs one
//! write transaction at a time, so several db threads queue on it (and
//! the log's records are in commit order); meanwhile they serve reads. A
//! db thread that finds no job for [`limits::DB_IDLE_WAIT_MS`], or that
//! stops, checkpoints a non-empty log. At open, [`recover`] replays the
//! log.
//!
//! **Forensics.** Each db thread tells its [`Watch`] what its batch waits
//! for (the read transaction, the write lock, the writes, the log's
//! `fdatasync`, the commit, or a checkpoint's commit and its fsync); a
//! batch past its earliest deadline is logged once, by
//! `db-watch` while it waits or by its thread at its end, with that wait
//! (see [`crate::watch`]).
//!
//! **Deadlines.** A job's deadline is checked at pickup (the triage) and,
//! for a write, again right after `begin_write()` returns, that is while
//! holding redb's write lock ([`State::run_writes`]): a write whose
//! deadline passed while it waited for the lock (another batch's log
//! append and commit) is answered `TimedOut` and left out of the
//! transaction. So `TimedOut` from this backend means *not stored*. A
//! write in time at that check is committed and answered `Ok` however
//! long the log's `fdatasync` (or a checkpoint's fsync) takes: an `Ok` may arrive after the deadline (storage cannot
//! take back a commit that started in time), and the engine waits a
//! slack past the deadline for it.

use crate::batch::{self, Pickup, Reply, Triage};
use crate::directory::Directory;
use crate::fault::Faults;
use crate::wal::{self, Effect, Plan, Wal, Why};
use crate::watch::{self, BatchInfo, Waiting, Watch};
use crate::{
    limits, Counters, DirectoryReloaded, Envelope, OpenError, Parts, ReloadError, ReloadResult,
    Store,
};
use crossbeam_channel::Receiver;
use futures_channel::oneshot;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};
use switchboard_shards::model::{
    Message, MsgId, StorageError, StorageJob, StorageOutput, StorageResult, UserId,
};

/// Settings of the embedded store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Folder of the database file (`SWITCHBOARD_DATA_DIR`); created if
    /// missing.
    pub data_dir: PathBuf,
    /// The directory JSON file (`SWITCHBOARD_DIRECTORY`); `None` uses the
    /// built-in demo users ([`Directory::demo`]).
    pub directory: Option<PathBuf>,
    /// How many `db-N` threads to start, 1–[`limits::DB_THREADS_MAX`].
    pub db_threads: usize,
    /// Capacity of the job queue, 1–[`limits::JOB_QUEUE_DEPTH_MAX`]; a
    /// submit to a full queue fails with `Overloaded`.
    pub queue_depth: usize,
    /// Most jobs one db thread takes per batch (so most writes per group
    /// commit), 1–[`limits::WRITE_BATCH_JOBS_MAX`].
    pub write_batch_max: usize,
    /// Core ids to pin the db threads to: thread `db-i` goes to
    /// `pin_to[i % pin_to.len()]`. `None` (the default) leaves them to the
    /// OS scheduler, which is right unless the executors' cores are known
    /// and others are kept free for storage. An id that is not one of
    /// this machine's cores is refused at open.
    pub pin_to: Option<Vec<usize>>,
}

impl EmbeddedConfig {
    /// Default settings for a data folder: demo directory, default
    /// thread count, queue depth and batch size, no pinning.
    pub fn new(data_dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            directory: None,
            db_threads: limits::DB_THREADS_DEFAULT,
            queue_depth: limits::JOB_QUEUE_DEPTH_DEFAULT,
            write_batch_max: limits::WRITE_BATCH_JOBS_DEFAULT,
            pin_to: None,
        }
    }
}

/// The database file's name inside `data_dir`.
pub(crate) const DB_FILE_NAME: &str = "switchboard.redb";
/// The schema this code reads and writes (`meta["schema_version"]`).
const SCHEMA_VERSION: u64 = 1;
const META_SCHEMA_VERSION: &str = "schema_version";
const META_NEXT_MSG_ID: &str = "next_msg_id";
/// The write-ahead log's generation: the records replayed at open are
/// those of this generation (see `wal.rs`).
const META_WAL_GENERATION: &str = "wal_generation";

/// A conversation's two users, smaller id first, then a message id.
type ConvKey = (UserId, UserId, MsgId);
/// A message row: `(from, to, ts, text, cid)`.
type MsgRow = (UserId, UserId, u64, &'static str, Option<&'static str>);

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MESSAGES: TableDefinition<MsgId, MsgRow> = TableDefinition::new("messages");
const CONVERSATIONS: TableDefinition<ConvKey, UserId> = TableDefinition::new("conversations");
const CIDS: TableDefinition<(UserId, &str), MsgId> = TableDefinition::new("cids");
const UI: TableDefinition<UserId, &str> = TableDefinition::new("ui");
const READ_MARKS: TableDefinition<(UserId, UserId), MsgId> = TableDefinition::new("read_marks");
const UNREAD: TableDefinition<(UserId, UserId), u64> = TableDefinition::new("unread");

/// What the db threads share.
struct State {
    /// The open database file.
    db: Database,
    /// The directory in force; a reload swaps in a new one whole.
    directory: RwLock<Arc<Directory>>,
    /// Where the directory comes from (`None`: the demo users).
    directory_path: Option<PathBuf>,
    /// The store's counters.
    counters: Arc<Counters>,
    /// Injected faults (tests only; none without the `fault-injection`
    /// feature).
    faults: Faults,
    /// The write-ahead log. Locked only by a thread that holds redb's
    /// write lock (a write transaction), so never contended and its
    /// records in commit order; never the other way round (see
    /// [`State::idle_checkpoint`]).
    wal: Mutex<Wal>,
}

pub(crate) fn open(config: EmbeddedConfig) -> Result<Store, OpenError> {
    check_config(&config)?;
    let faults = Faults::from_env("embedded")?;
    crate::files::create_dir_private(&config.data_dir).map_err(|source| OpenError::Io {
        path: config.data_dir.clone(),
        source,
    })?;
    let directory = match &config.directory {
        Some(path) => Directory::from_file(path).map_err(OpenError::Directory)?,
        None => Directory::demo(),
    };
    let path = config.data_dir.join(DB_FILE_NAME);
    let db_error = |detail: String| OpenError::Database {
        path: path.clone(),
        detail,
    };
    // Created 0600 before redb opens it (redb would create it with the
    // umask's mode); an existing file is left to `files::secure_data_dir`.
    crate::files::create_file_private(&path).map_err(|e| db_error(e.to_string()))?;
    let db = Database::builder()
        .set_cache_size(limits::DB_CACHE_BYTES)
        .create(&path)
        .map_err(|e| db_error(e.to_string()))?;
    init_schema(&db).map_err(db_error)?;
    let wal_path = config.data_dir.join(wal::WAL_FILE_NAME);
    let (mut wal, logged) = Wal::open(&wal_path).map_err(|source| OpenError::Io {
        path: wal_path.clone(),
        source,
    })?;
    let replayed = recover(&db, &mut wal, &logged).map_err(db_error)?;
    drop(logged);
    log::info!(
        "storage: opened {} ({} users, {} friendships{}), {} db threads, queue depth {}, write batch {}",
        path.display(),
        directory.user_count(),
        directory.friendship_count(),
        if config.directory.is_none() { ", demo directory" } else { "" },
        config.db_threads,
        config.queue_depth,
        config.write_batch_max
    );

    let counters = Arc::new(Counters::default());
    counters.wal_replayed.store(replayed, Ordering::Relaxed);
    let state = Arc::new(State {
        db,
        directory: RwLock::new(Arc::new(directory)),
        directory_path: config.directory.clone(),
        counters: counters.clone(),
        faults,
        wal: Mutex::new(wal),
    });
    let (jobs, queue) = crossbeam_channel::bounded(config.queue_depth);
    let stop = Arc::new(AtomicBool::new(false));
    let watches: Vec<Arc<Watch>> = (0..config.db_threads)
        .map(|i| Arc::new(Watch::new(format!("db-{i}"))))
        .collect();
    let mut threads = Vec::with_capacity(config.db_threads + 1);
    for i in 0..=config.db_threads {
        let (state, thread_stop) = (state.clone(), stop.clone());
        let spawned = if i < config.db_threads {
            let core = config.pin_to.as_ref().map(|cores| cores[i % cores.len()]);
            let (queue, watch) = (queue.clone(), watches[i].clone());
            let batch_max = config.write_batch_max;
            std::thread::Builder::new()
                .name(format!("db-{i}"))
                .spawn(move || run(&state, &queue, &thread_stop, batch_max, core, &watch))
        } else {
            let watches = watches.clone();
            std::thread::Builder::new()
                .name("db-watch".into())
                .spawn(move || {
                    let counters = &state.counters;
                    watch::watch_loop(&watches, &thread_stop, counters, String::new, || {})
                })
        };
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                stop.store(true, Ordering::Release);
                for thread in threads {
                    let _ = thread.join();
                }
                return Err(OpenError::Thread(e));
            }
        }
    }
    Ok(Store::from_parts(Parts {
        jobs,
        stop,
        threads,
        counters,
        queue_depth: config.queue_depth,
        token_lookup: false,
        watches,
        pool: None,
    }))
}

fn check_config(config: &EmbeddedConfig) -> Result<(), OpenError> {
    let range = |name: &str, value: usize, max: usize| {
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(OpenError::Config(format!(
                "{name} is {value}, must be 1–{max}"
            )))
        }
    };
    range("db_threads", config.db_threads, limits::DB_THREADS_MAX)?;
    range(
        "queue_depth",
        config.queue_depth,
        limits::JOB_QUEUE_DEPTH_MAX,
    )?;
    range(
        "write_batch_max",
        config.write_batch_max,
        limits::WRITE_BATCH_JOBS_MAX,
    )?;
    crate::pin::check_pin_to(config.pin_to.as_deref())
}

/// Creates the tables of a new file, or checks the schema version of an
/// existing one.
fn init_schema(db: &Database) -> Result<(), String> {
    let mut txn = db.begin_write().ctx("begin write")?;
    txn.set_durability(Durability::Immediate)
        .ctx("set durability")?;
    {
        let mut meta = txn.open_table(META).ctx("open meta")?;
        let version = meta
            .get(META_SCHEMA_VERSION)
            .ctx("read schema version")?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)
                    .ctx("write schema version")?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "schema version {other}, this build knows {SCHEMA_VERSION}"
                ))
            }
        }
    }
    WriteTables::open(&txn)?;
    txn.commit().ctx("commit")
}

/// A new generation for the write-ahead log: 64 random bits (never 0,
/// never `current`). Random, not `current + 1`, so that a record is only
/// ever taken for this database's current one: not a stale record whose
/// bytes a client chose (message text lies in the file behind the
/// current records), not one of another database's log whose counter
/// happens to match after a restore.
fn next_generation(current: u64) -> Result<u64, String> {
    loop {
        let mut raw = [0u8; 8];
        getrandom::getrandom(&mut raw).map_err(|e| format!("random generation: {e}"))?;
        let next = u64::from_le_bytes(raw);
        if next != 0 && next != current {
            return Ok(next);
        }
    }
}

/// Recovery at open: replays the write-ahead log's records of the
/// generation in redb's meta (see `wal.rs`), then commits them durably
/// with a new generation, which makes every record in the file stale.
/// Returns how many records (write batches) were replayed.
fn recover(db: &Database, wal: &mut Wal, logged: &[u8]) -> Result<u64, String> {
    let mut txn = db.begin_write().ctx("begin write")?;
    txn.set_durability(Durability::Immediate)
        .ctx("set durability")?;
    let (generation, next, scan) = {
        let mut tables = WriteTables::open(&txn)?;
        let generation = tables
            .meta
            .get(META_WAL_GENERATION)
            .ctx("read wal_generation")?
            .map_or(0, |g| g.value());
        let scan = wal::scan(logged, generation)?;
        for effect in scan.records.iter().flatten() {
            tables.apply(effect)?;
        }
        let next = next_generation(generation)?;
        tables
            .meta
            .insert(META_WAL_GENERATION, next)
            .ctx("write wal_generation")?;
        (generation, next, scan)
    };
    txn.commit().ctx("commit the replayed log")?;
    wal.reset(next);
    if !scan.records.is_empty() {
        log::warn!(
            "storage: replayed {} write batches ({} bytes) of generation {generation} from the \
             write-ahead log {} (the last run did not stop cleanly); the log ended with {:?}",
            scan.records.len(),
            scan.bytes,
            wal.path().display(),
            scan.end
        );
    }
    Ok(scan.records.len() as u64)
}

/// A db thread's loop (see the module documentation).
fn run(
    state: &State,
    queue: &Receiver<Envelope>,
    stop: &AtomicBool,
    batch_max: usize,
    core: Option<usize>,
    watch: &Watch,
) {
    crate::pin::pin_db_thread(core);
    let mut batch = Vec::with_capacity(batch_max);
    let mut idle = || state.idle_checkpoint(Why::Idle);
    while batch::next_batch(queue, stop, &mut batch, batch_max, &mut idle) {
        state.run_batch(&mut batch, watch);
    }
    // Stopping: an empty log after a clean stop.
    state.idle_checkpoint(Why::Shutdown);
}

impl State {
    /// Runs one drained batch: the shared triage ([`batch::triage`]), then
    /// reloads, token lookups, reads, and the writes' group commit.
    fn run_batch(&self, batch: &mut Vec<Envelope>, watch: &Watch) {
        watch.new_batch();
        let now = Instant::now();
        let who = Triage {
            watch,
            counters: &self.counters,
        };
        let sorted = batch::triage(batch, now, &who);
        for reload in sorted.reloads {
            let result = match Pickup::at(now, reload.deadline) {
                Pickup::Late(late) => {
                    self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "storage: directory reload timed out: picked up {} ms after its deadline",
                        late.as_millis()
                    );
                    Err(ReloadError::Storage(StorageError::TimedOut))
                }
                Pickup::InTime => self.reload_directory(),
            };
            let _ = reload.reply.send(result);
        }
        for lookup in sorted.tokens {
            // The embedded directory has HMAC tokens only.
            let _ = lookup.reply.send(Ok(None));
        }
        let (reads, writes) = (sorted.reads, sorted.writes);
        if reads.is_empty() && writes.is_empty() {
            return;
        }
        let all = || reads.iter().chain(&writes);
        let queued: Vec<_> = all().map(|r| r.queued).collect();
        let batch = BatchInfo {
            jobs: all().map(|r| &r.job),
            tokens: 0,
            deadline: all().map(|r| r.deadline).min().expect("non-empty"),
            queued: &queued,
            picked_up: now,
        };
        let first = if reads.is_empty() {
            Waiting::WriteLock
        } else {
            Waiting::Reads
        };
        watch.begin(batch, first);
        if !reads.is_empty() {
            self.run_reads(reads);
        }
        if !writes.is_empty() {
            watch.step(Waiting::WriteLock);
            self.run_writes(writes, watch);
        }
        if let Some(late) = watch.end() {
            watch::log_late(late, "", watch, &self.counters);
        }
    }

    /// Answers a job `Backend(what)` and logs it once.
    fn fail(&self, job: &StorageJob, reply: oneshot::Sender<StorageResult>, what: &str) {
        batch::fail(&self.counters, job, reply, what);
    }

    fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn reload_directory(&self) -> ReloadResult {
        let Some(path) = &self.directory_path else {
            let directory = self.directory();
            return Ok(DirectoryReloaded {
                users: directory.user_count(),
                friendships: directory.friendship_count(),
            });
        };
        match Directory::from_file(path) {
            Ok(directory) => {
                let reloaded = DirectoryReloaded {
                    users: directory.user_count(),
                    friendships: directory.friendship_count(),
                };
                *self
                    .directory
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(directory);
                log::info!(
                    "storage: directory {} reloaded: {} users, {} friendships",
                    path.display(),
                    reloaded.users,
                    reloaded.friendships
                );
                Ok(reloaded)
            }
            Err(e) => {
                log::error!("storage: directory reload refused, keeping the previous one: {e}");
                Err(ReloadError::Directory(e.to_string()))
            }
        }
    }

    fn run_reads(&self, reads: Vec<Reply>) {
        let tables = self
            .db
            .begin_read()
            .ctx("begin read")
            .and_then(|txn| ReadTables::open(&txn));
        let tables = match tables {
            Ok(tables) => tables,
            Err(e) => {
                for Reply { job, reply, .. } in reads {
                    self.fail(&job, reply, &e);
                }
                return;
            }
        };
        let directory = self.directory();
        for Reply { job, reply, .. } in reads {
            match tables.execute(&directory, &job) {
                Ok(output) => {
                    let _ = reply.send(Ok(output));
                }
                Err(e) => self.fail(&job, reply, &e),
            }
        }
    }

    /// Group commit: every write of the batch in one transaction, answered
    /// only once it is durable (in the log, or in redb at a checkpoint);
    /// if anything fails, all of them fail.
    ///
    /// The deadlines are checked again once the transaction has begun,
    /// holding redb's write lock: the writes that waited past their
    /// deadline for it are answered `TimedOut` and not run, so nothing
    /// answered `TimedOut` is stored. The commit itself may end after the
    /// deadlines of the writes it answers `Ok`.
    fn run_writes(&self, writes: Vec<Reply>, watch: &Watch) {
        let txn = match self.db.begin_write().ctx("begin write") {
            Ok(txn) => txn,
            Err(e) => return self.fail_writes(writes, &e),
        };
        let locked = Instant::now();
        watch.step(Waiting::Writes);
        let writes = batch::time_out_late(writes, locked, &self.counters);
        if writes.is_empty() {
            // Nothing written: the transaction is dropped, which aborts it.
            return;
        }
        let outcome = self.commit_writes(txn, &writes, watch);
        match outcome {
            Ok(outputs) => {
                self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .write_jobs
                    .fetch_add(writes.len() as u64, Ordering::Relaxed);
                for (Reply { reply, .. }, output) in writes.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            Err(e) => self.fail_writes(writes, &e),
        }
    }

    /// Runs `writes` in `txn` (begun, deadlines checked) and makes them
    /// durable: normally one write-ahead log record, `fdatasync`ed, then
    /// a commit without fsync; at a checkpoint ([`Wal::plan`]) a durable
    /// commit instead. The outputs are in the order of `writes`.
    fn commit_writes(
        &self,
        mut txn: WriteTransaction,
        writes: &[Reply],
        watch: &Watch,
    ) -> Result<Vec<StorageOutput>, String> {
        let (outputs, effects) = {
            let mut tables = WriteTables::open(&txn)?;
            let mut outputs = Vec::with_capacity(writes.len());
            for Reply { job, .. } in writes {
                let output = tables
                    .execute(job)
                    .map_err(|e| format!("{} for user {}: {e}", job.name(), job.user()))?;
                outputs.push(output);
            }
            (outputs, std::mem::take(&mut tables.effects))
        };
        if effects.is_empty() {
            // Nothing changed (duplicates, read marks that move nothing):
            // nothing to log; dropping the transaction aborts it.
            return Ok(outputs);
        }
        let mut wal = self.lock_wal();
        let now = Instant::now();
        match wal.plan(&effects, now, self.faults.checkpoints_allowed()) {
            Plan::Checkpoint(why) => {
                // A slow fsync, when a test injects one: after the deadline
                // check, before the durable step, holding the write lock.
                watch.step(Waiting::Checkpoint);
                self.faults.stall_commit();
                self.checkpoint(txn, &mut wal, why)?;
            }
            Plan::Append => {
                watch.step(Waiting::Wal);
                if let Err(e) = wal.append(now, || self.faults.stall_commit()) {
                    // The record may be partly on disk: the log is not
                    // appended to again before a checkpoint, which this
                    // batch's durable commit is.
                    log::error!(
                        "storage: appending to {} failed, committing the batch durably instead: {e}",
                        wal.path().display()
                    );
                    watch.step(Waiting::Checkpoint);
                    self.checkpoint(txn, &mut wal, Why::AppendFailed)?;
                    return Ok(outputs);
                }
                self.counters
                    .wal_bytes
                    .store(wal.bytes(), Ordering::Relaxed);
                watch.step(Waiting::Commit);
                let committed = txn
                    .set_durability(Durability::None)
                    .ctx("set durability")
                    .and_then(|()| txn.commit().ctx("commit"));
                if let Err(e) = committed {
                    self.take_back(&mut wal);
                    return Err(e);
                }
            }
        }
        Ok(outputs)
    }

    /// Locks the write-ahead log (see [`State::wal`] for the lock order).
    fn lock_wal(&self) -> MutexGuard<'_, Wal> {
        self.wal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `txn` durably with the log's next generation in meta, then
    /// starts the log again from offset 0: everything logged so far is in
    /// redb for good, and its records are stale.
    fn checkpoint(&self, mut txn: WriteTransaction, wal: &mut Wal, why: Why) -> Result<(), String> {
        let next = next_generation(wal.generation())?;
        {
            let mut meta = txn.open_table(META).ctx("open meta")?;
            meta.insert(META_WAL_GENERATION, next)
                .ctx("write wal_generation")?;
        }
        txn.set_durability(Durability::Immediate)
            .ctx("set durability")?;
        txn.commit().ctx("checkpoint commit")?;
        log::debug!(
            "storage: checkpoint ({why:?}): {} log bytes now in redb, generation {next}",
            wal.bytes()
        );
        wal.reset(next);
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.wal_bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Checkpoints a non-empty log (a db thread that found no job for a
    /// while, once the log's oldest record is
    /// `limits::WAL_IDLE_CHECKPOINT_AGE_MS` old; or a db thread that is
    /// stopping), unless fault injection holds
    /// checkpoints off. A failure is logged; the log keeps its records
    /// and the next checkpoint tries again.
    fn idle_checkpoint(&self, why: Why) {
        if !self.faults.checkpoints_allowed()
            || self.counters.wal_bytes.load(Ordering::Relaxed) == 0
        {
            return;
        }
        if why == Why::Idle {
            // A young log waits (limits::WAL_IDLE_CHECKPOINT_AGE_MS). The
            // log's lock alone, never held while taking redb's.
            let idle_age = Duration::from_millis(limits::WAL_IDLE_CHECKPOINT_AGE_MS);
            let age = self.lock_wal().age(Instant::now());
            if age.is_none_or(|age| age < idle_age) {
                return;
            }
        }
        // redb's write lock first, then the log's (the lock order).
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => return log::error!("storage: checkpoint ({why:?}): begin write: {e}"),
        };
        let mut wal = self.lock_wal();
        if wal.bytes() == 0 {
            return; // Another thread checkpointed meanwhile.
        }
        if let Err(e) = self.checkpoint(txn, &mut wal, why) {
            log::error!("storage: checkpoint ({why:?}) failed, the log keeps its records: {e}");
        }
    }

    /// After a batch's record was appended and its commit failed: takes
    /// the record back, so that no recovery replays writes that were
    /// answered failed (and whose message ids the next batch reuses).
    /// If even that fails, the log and redb disagree for good: the process
    /// stops, and the recovery at the next start replays the record (its
    /// jobs were answered `Backend`, which may mean stored).
    fn take_back(&self, wal: &mut Wal) {
        let at = wal.last_record_at();
        if let Err(e) = wal.unappend_last(at) {
            log::error!(
                "storage: {}: cannot take back the record of a batch whose commit failed: {e}",
                wal.path().display()
            );
            std::process::abort();
        }
        self.counters
            .wal_bytes
            .store(wal.bytes(), Ordering::Relaxed);
    }

    /// Answers every write of a batch whose transaction did not commit.
    fn fail_writes(&self, writes: Vec<Reply>, e: &str) {
        let what = format!(
            "write transaction of {} jobs rolled back: {e}",
            writes.len()
        );
        for Reply { job, reply, .. } in writes {
            self.fail(&job, reply, &what);
        }
    }
}

/// The two users of a conversation, smaller id first.
fn pair(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}

/// Adds "what failed" to a database error.
trait WithContext<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: fmt::Display> WithContext<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Every table, opened in a read transaction.
struct ReadTables {
    messages: redb::ReadOnlyTable<MsgId, MsgRow>,
    conversations: redb::ReadOnlyTable<ConvKey, UserId>,
    ui: redb::ReadOnlyTable<UserId, &'static str>,
    unread: redb::ReadOnlyTable<(UserId, UserId), u64>,
    read_marks: redb::ReadOnlyTable<(UserId, UserId), MsgId>,
}

impl ReadTables {
    fn open(txn: &ReadTransaction) -> Result<ReadTables, String> {
        Ok(ReadTables {
            messages: txn.open_table(MESSAGES).ctx("open messages")?,
            conversations: txn.open_table(CONVERSATIONS).ctx("open conversations")?,
            ui: txn.open_table(UI).ctx("open ui")?,
            unread: txn.open_table(UNREAD).ctx("open unread")?,
            read_marks: txn.open_table(READ_MARKS).ctx("open read_marks")?,
        })
    }

    /// Runs a read job.
    fn execute(&self, directory: &Directory, job: &StorageJob) -> Result<StorageOutput, String> {
        match *job {
            StorageJob::LoadSession { user } => {
                let ui = self
                    .ui
                    .get(user)
                    .ctx("read ui")?
                    .map(|state| Arc::from(state.value()));
                let mut unread = Vec::new();
                for entry in self
                    .unread
                    .range((user, 0)..=(user, UserId::MAX))
                    .ctx("scan unread")?
                {
                    let (key, count) = entry.ctx("scan unread")?;
                    let count = count.value();
                    if count > 0 {
                        unread.push((key.value().1, count));
                    }
                }
                Ok(StorageOutput::Session {
                    name: directory.name(user),
                    friends: directory.friends(user),
                    ui,
                    unread,
                })
            }
            StorageJob::LoadRoster { user } => Ok(StorageOutput::Roster {
                friends: directory.friends(user),
            }),
            StorageJob::History {
                user,
                with,
                before,
                limit,
            } => {
                let mut page = history(
                    &self.messages,
                    &self.conversations,
                    user,
                    with,
                    before,
                    limit,
                )?;
                if let StorageOutput::History { seen, .. } = &mut page {
                    // How far `with` has read this conversation.
                    *seen = self
                        .read_marks
                        .get((with, user))
                        .ctx("read read_marks")?
                        .map(|m| m.value());
                }
                Ok(page)
            }
            StorageJob::StoreMessage { .. }
            | StorageJob::MarkRead { .. }
            | StorageJob::SaveUi { .. } => unreachable!("write job {} run as a read", job.name()),
        }
    }
}

/// Every table, opened in a write transaction.
struct WriteTables<'t> {
    meta: Table<'t, &'static str, u64>,
    messages: Table<'t, MsgId, MsgRow>,
    conversations: Table<'t, ConvKey, UserId>,
    cids: Table<'t, (UserId, &'static str), MsgId>,
    ui: Table<'t, UserId, &'static str>,
    read_marks: Table<'t, (UserId, UserId), MsgId>,
    unread: Table<'t, (UserId, UserId), u64>,
    /// Every change made through [`WriteTables::put`], in order: the
    /// batch's write-ahead log record.
    effects: Vec<Effect>,
}

impl<'t> WriteTables<'t> {
    /// Opens (creating when missing) every table.
    fn open(txn: &'t WriteTransaction) -> Result<WriteTables<'t>, String> {
        Ok(WriteTables {
            meta: txn.open_table(META).ctx("open meta")?,
            messages: txn.open_table(MESSAGES).ctx("open messages")?,
            conversations: txn.open_table(CONVERSATIONS).ctx("open conversations")?,
            cids: txn.open_table(CIDS).ctx("open cids")?,
            ui: txn.open_table(UI).ctx("open ui")?,
            read_marks: txn.open_table(READ_MARKS).ctx("open read_marks")?,
            unread: txn.open_table(UNREAD).ctx("open unread")?,
            effects: Vec::new(),
        })
    }

    /// Makes a change and records it for the log. Every write of a job
    /// goes through here, so the record holds all of the batch's changes.
    fn put(&mut self, effect: Effect) -> Result<(), String> {
        self.apply(&effect)?;
        self.effects.push(effect);
        Ok(())
    }

    /// Makes a change (a job's, or a logged one at recovery).
    fn apply(&mut self, effect: &Effect) -> Result<(), String> {
        match effect {
            Effect::NextMsgId(id) => {
                self.meta
                    .insert(META_NEXT_MSG_ID, *id)
                    .ctx("write next_msg_id")?;
            }
            Effect::Message {
                id,
                from,
                to,
                ts,
                text,
                cid,
            } => {
                self.messages
                    .insert(*id, (*from, *to, *ts, &**text, cid.as_deref()))
                    .ctx("write message")?;
            }
            Effect::Conversation { lo, hi, id, from } => {
                self.conversations
                    .insert((*lo, *hi, *id), *from)
                    .ctx("write conversation index")?;
            }
            Effect::Cid { from, cid, id } => {
                self.cids.insert((*from, &**cid), *id).ctx("write cid")?;
            }
            Effect::Unread { user, from, count } => {
                if *count == 0 {
                    self.unread.remove((*user, *from)).ctx("clear unread")?;
                } else {
                    self.unread
                        .insert((*user, *from), *count)
                        .ctx("write unread")?;
                }
            }
            Effect::ReadMark { user, with, upto } => {
                self.read_marks
                    .insert((*user, *with), *upto)
                    .ctx("write read_marks")?;
            }
            Effect::Ui { user, state } => {
                self.ui.insert(*user, &**state).ctx("write ui")?;
            }
        }
        Ok(())
    }

    /// Runs a write job inside the batch's transaction.
    fn execute(&mut self, job: &StorageJob) -> Result<StorageOutput, String> {
        match job {
            StorageJob::StoreMessage {
                from,
                to,
                text,
                cid,
                ts,
            } => self.store_message(*from, *to, text, cid.as_ref(), *ts),
            StorageJob::MarkRead { user, with, upto } => self.mark_read(*user, *with, *upto),
            StorageJob::SaveUi { user, state } => {
                self.put(Effect::Ui {
                    user: *user,
                    state: state.clone(),
                })?;
                Ok(StorageOutput::Saved)
            }
            StorageJob::LoadSession { .. }
            | StorageJob::LoadRoster { .. }
            | StorageJob::History { .. } => {
                unreachable!("read job {} run as a write", job.name())
            }
        }
    }

    fn store_message(
        &mut self,
        from: UserId,
        to: UserId,
        text: &Arc<str>,
        cid: Option<&Arc<str>>,
        ts: u64,
    ) -> Result<StorageOutput, String> {
        if let Some(cid) = cid {
            let first = self
                .cids
                .get((from, &**cid))
                .ctx("read cids")?
                .map(|id| id.value());
            if let Some(id) = first {
                let message = load_message(&self.messages, id)?
                    .ok_or_else(|| format!("cid index points at missing message {id}"))?;
                return Ok(StorageOutput::Stored {
                    message: Arc::new(message),
                    duplicate: true,
                });
            }
        }
        let id = self
            .meta
            .get(META_NEXT_MSG_ID)
            .ctx("read next_msg_id")?
            .map_or(1, |v| v.value());
        self.put(Effect::NextMsgId(id + 1))?;
        self.put(Effect::Message {
            id,
            from,
            to,
            ts,
            text: text.clone(),
            cid: cid.cloned(),
        })?;
        let (lo, hi) = pair(from, to);
        self.put(Effect::Conversation { lo, hi, id, from })?;
        if let Some(cid) = cid {
            self.put(Effect::Cid {
                from,
                cid: cid.clone(),
                id,
            })?;
        }
        if from != to {
            let count = self
                .unread
                .get((to, from))
                .ctx("read unread")?
                .map_or(0, |c| c.value());
            self.put(Effect::Unread {
                user: to,
                from,
                count: count + 1,
            })?;
        }
        Ok(StorageOutput::Stored {
            message: Arc::new(Message {
                id,
                from,
                to,
                text: text.clone(),
                ts,
                cid: cid.cloned(),
            }),
            duplicate: false,
        })
    }

    fn mark_read(
        &mut self,
        user: UserId,
        with: UserId,
        upto: MsgId,
    ) -> Result<StorageOutput, String> {
        let (lo, hi) = pair(user, with);
        let current = self
            .read_marks
            .get((user, with))
            .ctx("read read_marks")?
            .map_or(0, |m| m.value());
        let counted = self
            .unread
            .get((user, with))
            .ctx("read unread")?
            .map_or(0, |c| c.value());
        let in_conversation = self
            .conversations
            .get((lo, hi, upto))
            .ctx("read conversation index")?
            .is_some();
        if !in_conversation {
            return Ok(StorageOutput::ReadMarked {
                valid: false,
                upto: current,
                unread: counted,
            });
        }
        let mark = current.max(upto);
        if mark != current {
            self.put(Effect::ReadMark {
                user,
                with,
                upto: mark,
            })?;
        }
        let mut unread = 0;
        for entry in self
            .conversations
            .range((lo, hi, mark + 1)..=(lo, hi, MsgId::MAX))
            .ctx("scan conversation")?
        {
            let (_, from) = entry.ctx("scan conversation")?;
            if from.value() == with {
                unread += 1;
            }
        }
        if unread != counted {
            self.put(Effect::Unread {
                user,
                from: with,
                count: unread,
            })?;
        }
        Ok(StorageOutput::ReadMarked {
            valid: true,
            upto: mark,
            unread,
        })
    }
}

fn load_message(
    messages: &impl ReadableTable<MsgId, MsgRow>,
    id: MsgId,
) -> Result<Option<Message>, String> {
    let Some(row) = messages.get(id).ctx("read message")? else {
        return Ok(None);
    };
    let (from, to, ts, text, cid) = row.value();
    Ok(Some(Message {
        id,
        from,
        to,
        text: Arc::from(text),
        ts,
        cid: cid.map(Arc::from),
    }))
}

/// A page of the conversation of `user` and `with`: the newest `limit`
/// messages older than `before`, oldest first.
fn history(
    messages: &impl ReadableTable<MsgId, MsgRow>,
    conversations: &impl ReadableTable<ConvKey, UserId>,
    user: UserId,
    with: UserId,
    before: Option<MsgId>,
    limit: u32,
) -> Result<StorageOutput, String> {
    let (lo, hi) = pair(user, with);
    if let Some(before) = before {
        let known = conversations
            .get((lo, hi, before))
            .ctx("read conversation index")?
            .is_some();
        if !known {
            return Ok(StorageOutput::History {
                valid: false,
                messages: Vec::new(),
                more: false,
                seen: None,
            });
        }
    }
    let limit = limit.min(limits::HISTORY_LIMIT_MAX) as usize;
    let mut ids = Vec::with_capacity(limit);
    let mut more = false;
    let range = match before {
        Some(before) => conversations.range((lo, hi, 0)..(lo, hi, before)),
        None => conversations.range((lo, hi, 0)..=(lo, hi, MsgId::MAX)),
    }
    .ctx("scan conversation")?;
    for entry in range.rev() {
        let (key, _) = entry.ctx("scan conversation")?;
        if ids.len() == limit {
            more = true;
            break;
        }
        ids.push(key.value().2);
    }
    let mut page = Vec::with_capacity(ids.len());
    for &id in ids.iter().rev() {
        let message = load_message(messages, id)?
            .ok_or_else(|| format!("conversation index points at missing message {id}"))?;
        page.push(Arc::new(message));
    }
    Ok(StorageOutput::History {
        valid: true,
        messages: page,
        more,
        seen: None,
    })
}
