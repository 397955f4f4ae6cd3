//! The MySQL backend: the web app's database as the directory (users,
//! names, friendships, optionally login tokens, all read through queries
//! that are settings) and as the home of Switchboard's own tables
//! ([`schema`]).
//!
//! Shape (the same as the embedded backend's, so the engine cannot tell):
//! jobs arrive through the [`crate::Store`]'s bounded crossbeam queue at
//! `pool_size` named `db-N` threads. A thread takes one envelope, drains
//! up to `write_batch_max - 1` more without waiting and, when the batch
//! holds a send, waits up to `write_batch_wait_ms` (never past a batched
//! job's deadline) for more to share its commit. The shared triage
//! ([`crate::batch`]) answers late jobs and oversized writes; the thread
//! then checks out one pooled connection (r2d2, `pool_size` connections:
//! one per thread, so a checkout waits only while the pool reconnects),
//! runs the token lookups and reads ([`jobs`]), then all writes in one
//! transaction ([`write`]), and answers every job through its oneshot.
//!
//! Nothing waits without a deadline: the checkout waits at most until the
//! latest deadline of the batch; every statement is bounded on the server
//! (`max_statement_time`/`max_execution_time`, `lock_wait_timeout`,
//! `innodb_lock_wait_timeout`, all from the job timeout) and on the socket
//! (read/write timeouts a margin above); a write batch whose earliest
//! deadline passes before `COMMIT` is rolled back. The `db-watch` thread
//! logs, once per batch, any batch still running past its deadline with
//! what it waits for (pool checkout or which SQL), for which jobs and
//! users, and how many pooled connections are idle — the line that finds
//! a stuck pool or a locked table at once.
//!
//! Recovery is the pool's: a connection whose statement failed on the
//! socket is marked broken and dropped on return, an idle one is pinged
//! before use, and r2d2 opens replacements in the background (retrying
//! with back-off), so a database that comes back is used again with no
//! restart.

mod conn;
mod jobs;
pub mod schema;
mod seed;
mod write;

pub use schema::{Migrated, SCHEMA_VERSION};
pub use seed::{seed_demo, Seeded};

use crate::batch::{self, Pickup, Reply, TokenReply, Triage};
use crate::fault::Faults;
use crate::watch::{self, BatchInfo, Waiting, Watch};
use crate::{
    limits, Counters, DirectoryReloaded, Envelope, OpenError, Parts, PoolSample, Store, Work,
};
use conn::{DbConn, ErrorLog, Manager, Redacted, SessionLimits};
use crossbeam_channel::Receiver;
use futures_channel::oneshot;
use jobs::Ctx;
use mysql::prelude::Queryable;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use switchboard_shards::model::{StorageError, StorageJob, StorageOutput, StorageResult, UserId};
use write::TxError;

/// The directory queries: SQL run against the web app's database, each
/// with `?` placeholders. The defaults fit the schema of docs/protocol.md,
/// "Default MySQL schema".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryQueries {
    /// `SWITCHBOARD_MYSQL_TOKEN_SQL`: one `?` (the token as sent), one
    /// column (the user id); no row, NULL or 0 means unknown. `None`:
    /// only HMAC tokens are accepted.
    pub token_sql: Option<String>,
    /// `SWITCHBOARD_MYSQL_USER_NAME_SQL`: one `?` (user id), one column
    /// (the display name); no row means no such user (`unauthorized`).
    pub user_name_sql: String,
    /// `SWITCHBOARD_MYSQL_FRIENDS_SQL`: one `?` (user id), two columns
    /// (friend id, friend name), one row per friend.
    pub friends_sql: String,
    /// `SWITCHBOARD_MYSQL_ARE_FRIENDS_SQL`: two `?` (user ids), a row when
    /// they are friends. Sends are checked against the home shard's cached
    /// roster (kept current by roster loads); this query is checked at
    /// start and used by `switchboard check-directory`.
    pub are_friends_sql: String,
}

impl DirectoryQueries {
    /// Default user name query (the default schema).
    pub const USER_NAME_SQL_DEFAULT: &'static str = "SELECT name FROM users WHERE id = ?";
    /// Default friends query: both directions must exist.
    pub const FRIENDS_SQL_DEFAULT: &'static str = "SELECT u.id, u.name FROM friendships f \
         JOIN friendships b ON b.user_id = f.friend_id AND b.friend_id = f.user_id \
         JOIN users u ON u.id = f.friend_id WHERE f.user_id = ? ORDER BY u.id";
    /// Default are-friends query: both directions must exist.
    pub const ARE_FRIENDS_SQL_DEFAULT: &'static str = "SELECT 1 FROM friendships f \
         JOIN friendships b ON b.user_id = f.friend_id AND b.friend_id = f.user_id \
         WHERE f.user_id = ? AND f.friend_id = ?";
}

impl Default for DirectoryQueries {
    fn default() -> DirectoryQueries {
        DirectoryQueries {
            token_sql: None,
            user_name_sql: Self::USER_NAME_SQL_DEFAULT.to_string(),
            friends_sql: Self::FRIENDS_SQL_DEFAULT.to_string(),
            are_friends_sql: Self::ARE_FRIENDS_SQL_DEFAULT.to_string(),
        }
    }
}

/// Settings of the MySQL store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database` (`SWITCHBOARD_MYSQL_URL`).
    pub url: String,
    /// Pooled connections and `db-N` threads,
    /// 2–[`limits::MYSQL_POOL_SIZE_MAX`] (`SWITCHBOARD_MYSQL_POOL_SIZE`).
    pub pool_size: usize,
    /// Capacity of the job queue, 1–[`limits::JOB_QUEUE_DEPTH_MAX`].
    pub queue_depth: usize,
    /// Most jobs per batch, so most sends per commit,
    /// 1–[`limits::WRITE_BATCH_JOBS_MAX`] (`SWITCHBOARD_MYSQL_BATCH_MAX`).
    pub write_batch_max: usize,
    /// Longest wait for more sends to join a batch,
    /// 0–[`limits::MYSQL_BATCH_WAIT_MS_MAX`]
    /// (`SWITCHBOARD_MYSQL_BATCH_WAIT_MS`).
    pub write_batch_wait_ms: u64,
    /// TCP connect and handshake timeout of one connection
    /// (`SWITCHBOARD_MYSQL_CONNECT_TIMEOUT_MS`).
    pub connect_timeout_ms: u64,
    /// The job timeout (`SWITCHBOARD_STORAGE_TIMEOUT_MS`): bounds every
    /// statement and lock wait on the server, and (plus
    /// [`limits::MYSQL_IO_TIMEOUT_MARGIN_MS`]) socket reads and writes.
    pub job_timeout_ms: u64,
    /// The directory queries.
    pub queries: DirectoryQueries,
    /// Core ids to pin the db threads to, as [`crate::EmbeddedConfig`]'s.
    pub pin_to: Option<Vec<usize>>,
}

impl MysqlConfig {
    /// Default settings for `url`: pool sized from the cores, default
    /// queries, batches of [`limits::WRITE_BATCH_JOBS_DEFAULT`], no wait.
    pub fn new(url: impl Into<String>) -> MysqlConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        MysqlConfig {
            url: url.into(),
            pool_size: limits::mysql_pool_size_default(cores),
            queue_depth: limits::JOB_QUEUE_DEPTH_DEFAULT,
            write_batch_max: limits::WRITE_BATCH_JOBS_DEFAULT,
            write_batch_wait_ms: 0,
            connect_timeout_ms: limits::MYSQL_CONNECT_TIMEOUT_MS_DEFAULT,
            job_timeout_ms: 5_000,
            queries: DirectoryQueries::default(),
            pin_to: None,
        }
    }
}

fn check_config(config: &MysqlConfig) -> Result<(), OpenError> {
    let range = |name: &str, value: u64, min: u64, max: u64| {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(OpenError::Config(format!(
                "{name} is {value}, must be {min}–{max}"
            )))
        }
    };
    range(
        "mysql pool_size",
        config.pool_size as u64,
        2,
        limits::MYSQL_POOL_SIZE_MAX as u64,
    )?;
    range(
        "queue_depth",
        config.queue_depth as u64,
        1,
        limits::JOB_QUEUE_DEPTH_MAX as u64,
    )?;
    range(
        "mysql write_batch_max",
        config.write_batch_max as u64,
        1,
        limits::WRITE_BATCH_JOBS_MAX as u64,
    )?;
    range(
        "mysql write_batch_wait_ms",
        config.write_batch_wait_ms,
        0,
        limits::MYSQL_BATCH_WAIT_MS_MAX,
    )?;
    range(
        "mysql connect_timeout_ms",
        config.connect_timeout_ms,
        1,
        600_000,
    )?;
    range("storage timeout_ms", config.job_timeout_ms, 1, 600_000)?;
    crate::pin::check_pin_to(config.pin_to.as_deref())
}

/// Prepares every configured directory query and checks its placeholders
/// and columns, so a typo stops the server at start, not at first use.
fn check_queries(conn: &mut DbConn, queries: &DirectoryQueries) -> Result<(), String> {
    let mut checks = vec![
        ("MYSQL_USER_NAME_SQL", &queries.user_name_sql, 1, Some(1)),
        ("MYSQL_FRIENDS_SQL", &queries.friends_sql, 1, Some(2)),
        ("MYSQL_ARE_FRIENDS_SQL", &queries.are_friends_sql, 2, None),
    ];
    if let Some(sql) = &queries.token_sql {
        checks.push(("MYSQL_TOKEN_SQL", sql, 1, Some(1)));
    }
    for (name, sql, params, columns) in checks {
        let statement = conn
            .conn
            .prep(sql)
            .map_err(|e| format!("SWITCHBOARD_{name} does not prepare: {e}"))?;
        if statement.num_params() != params {
            return Err(format!(
                "SWITCHBOARD_{name} has {} `?` placeholders, needs {params}",
                statement.num_params()
            ));
        }
        let got = statement.columns().len();
        if columns.is_some_and(|c| c != got) || got == 0 {
            return Err(format!(
                "SWITCHBOARD_{name} returns {got} columns, needs {}",
                columns.unwrap_or(1)
            ));
        }
        let _ = conn.conn.close(statement);
    }
    Ok(())
}

pub(crate) fn open(config: MysqlConfig) -> Result<Store, OpenError> {
    check_config(&config)?;
    let faults = Faults::from_env("mysql")?;
    let job_timeout = Duration::from_millis(config.job_timeout_ms);
    let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
    let manager = Manager::new(&config.url, connect_timeout, SessionLimits { job_timeout })
        .map_err(OpenError::Mysql)?;
    let target = manager.describe();
    check_at_start(&manager, &config.queries, &target)?;
    let error_log = ErrorLog::new(target.clone());
    let pool = r2d2::Pool::builder()
        .max_size(config.pool_size as u32)
        .min_idle(Some(config.pool_size as u32))
        .test_on_check_out(true)
        .connection_timeout(connect_timeout)
        .idle_timeout(None)
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
        .error_handler(Box::new(error_log))
        .build_unchecked(manager);
    log::info!(
        "storage: mysql {target}, pool of {} connections ({} db threads), queue depth {}, \
         write batch {} (wait {} ms), job timeout {} ms, connect timeout {} ms",
        config.pool_size,
        config.pool_size,
        config.queue_depth,
        config.write_batch_max,
        config.write_batch_wait_ms,
        config.job_timeout_ms,
        config.connect_timeout_ms
    );

    let counters = Arc::new(Counters::default());
    let watches: Vec<Arc<Watch>> = (0..config.pool_size)
        .map(|i| Arc::new(Watch::new(format!("db-{i}"))))
        .collect();
    let backend = Arc::new(Backend {
        pool,
        queries: config.queries.clone(),
        batch_max: config.write_batch_max,
        batch_wait: Duration::from_millis(config.write_batch_wait_ms),
        counters: counters.clone(),
        watches,
        faults,
        pool_sample: Arc::new(PoolSample::default()),
    });
    backend.sample_pool();
    let (jobs, queue) = crossbeam_channel::bounded(config.queue_depth);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = start_threads(&backend, &queue, &stop, config.pin_to.as_deref())?;
    Ok(Store::from_parts(Parts {
        jobs,
        stop,
        threads,
        counters,
        queue_depth: config.queue_depth,
        token_lookup: config.queries.token_sql.is_some(),
        watches: backend.watches.clone(),
        pool: Some(backend.pool_sample.clone()),
    }))
}

/// One connection now, outside the pool, to refuse a wrong schema or a
/// broken query at once. A database that is down is no reason not to
/// start: chat without history still works, and the pool keeps trying.
fn check_at_start(
    manager: &Manager,
    queries: &DirectoryQueries,
    target: &str,
) -> Result<(), OpenError> {
    match manager.open() {
        Ok(mut conn) => {
            schema::check_version(&mut conn).map_err(OpenError::Mysql)?;
            check_queries(&mut conn, queries).map_err(OpenError::Mysql)?;
            if conn.autoinc_step.is_none() {
                log::warn!(
                    "storage: {target} has innodb_autoinc_lock_mode = 2: a batch of sends is \
                     inserted one row per statement (still one commit); lock mode 1 allows one \
                     multi-row INSERT"
                );
            }
        }
        Err(e) => log::error!(
            "storage: mysql at {target} is unreachable at start ({e}); starting anyway: storage \
             calls answer unavailable until it is back"
        ),
    }
    Ok(())
}

/// Starts a `db-N` thread per watch, then `db-watch`. If one cannot be
/// started, the started ones are stopped and joined.
fn start_threads(
    backend: &Arc<Backend>,
    queue: &Receiver<Envelope>,
    stop: &Arc<AtomicBool>,
    pin_to: Option<&[usize]>,
) -> Result<Vec<JoinHandle<()>>, OpenError> {
    let mut threads = Vec::with_capacity(backend.watches.len() + 1);
    let mut spawn = |name: String, body: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(body)
            .map(|t| threads.push(t))
    };
    let mut started = Ok(());
    for (i, watch) in backend.watches.iter().enumerate() {
        let core = pin_to.map(|cores| cores[i % cores.len()]);
        let (backend, queue, stop, watch) =
            (backend.clone(), queue.clone(), stop.clone(), watch.clone());
        started = spawn(
            format!("db-{i}"),
            Box::new(move || run(&backend, &queue, &stop, &watch, core)),
        );
        if started.is_err() {
            break;
        }
    }
    if started.is_ok() {
        let (backend, stop) = (backend.clone(), stop.clone());
        started = spawn(
            "db-watch".to_string(),
            Box::new(move || {
                let extra = || backend.pool_line();
                let sample = || backend.sample_pool();
                let (watches, counters) = (&backend.watches, &backend.counters);
                watch::watch_loop(watches, &stop, counters, extra, sample)
            }),
        );
    }
    if let Err(e) = started {
        stop.store(true, Ordering::Release);
        for thread in threads {
            let _ = thread.join();
        }
        return Err(OpenError::Thread(e));
    }
    Ok(threads)
}

/// What the db threads share.
struct Backend {
    /// The connections.
    pool: r2d2::Pool<Manager>,
    /// The directory queries.
    queries: DirectoryQueries,
    /// Most envelopes per batch.
    batch_max: usize,
    /// Longest wait for more sends to join a batch.
    batch_wait: Duration,
    /// The store's counters.
    counters: Arc<Counters>,
    /// Each db thread's current activity, for `db-watch`.
    watches: Vec<Arc<Watch>>,
    /// Injected faults (tests only; none without the `fault-injection`
    /// feature).
    faults: Faults,
    /// The pool's state for [`Store::stats`], sampled by `db-watch`.
    pool_sample: Arc<PoolSample>,
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// A db thread's loop (see the module documentation).
fn run(
    backend: &Backend,
    queue: &Receiver<Envelope>,
    stop: &AtomicBool,
    watch: &Watch,
    core: Option<usize>,
) {
    crate::pin::pin_db_thread(core);
    let mut batch = Vec::with_capacity(backend.batch_max);
    while batch::next_batch(queue, stop, &mut batch, backend.batch_max, &mut || {}) {
        if !backend.batch_wait.is_zero() && batch.iter().any(is_send) {
            let earliest = batch.iter().map(|e| e.deadline).min().expect("non-empty");
            let until = (Instant::now() + backend.batch_wait).min(earliest);
            while batch.len() < backend.batch_max {
                match queue.recv_deadline(until) {
                    Ok(envelope) => batch.push(envelope),
                    Err(_) => break,
                }
            }
        }
        backend.run_batch(&mut batch, watch);
    }
}

fn is_send(envelope: &Envelope) -> bool {
    matches!(
        envelope.work,
        Work::Job {
            job: StorageJob::StoreMessage { .. },
            ..
        }
    )
}

impl Backend {
    /// Reads the pool's state (r2d2's lock, on `db-watch`) into the
    /// sample [`Store::stats`] reads.
    fn sample_pool(&self) {
        let state = self.pool.state();
        let sample = &self.pool_sample;
        let max = self.pool.max_size() as usize;
        sample.max.store(max, Ordering::Relaxed);
        let connections = state.connections as usize;
        sample.connections.store(connections, Ordering::Relaxed);
        sample
            .idle
            .store(state.idle_connections as usize, Ordering::Relaxed);
    }

    /// What a late batch's line says of the pool.
    fn pool_line(&self) -> String {
        let state = self.pool.state();
        format!(
            " (pool: {} of {} connections idle)",
            state.idle_connections, state.connections
        )
    }

    /// Ends the watch of a batch, logging it if it ran late unreported.
    fn end_watch(&self, watch: &Watch) {
        if let Some(late) = watch.end() {
            watch::log_late(late, &self.pool_line(), watch, &self.counters);
        }
    }

    /// Runs one drained batch: the shared triage ([`batch::triage`]),
    /// then, on one checked-out connection, the token lookups, the reads
    /// and the writes' group commit. Every envelope is answered once.
    fn run_batch(&self, batch: &mut Vec<Envelope>, watch: &Watch) {
        watch.new_batch();
        let now = Instant::now();
        let who = Triage {
            watch,
            counters: &self.counters,
        };
        let sorted = batch::triage(batch, now, &who);
        for reload in sorted.reloads {
            // Rosters are read from the database at every load.
            let _ = reload.reply.send(Ok(DirectoryReloaded {
                users: 0,
                friendships: 0,
            }));
        }
        let tokens = self.tokens_to_look_up(sorted.tokens, now, watch);
        let (reads, writes) = (sorted.reads, sorted.writes);
        if reads.is_empty() && writes.is_empty() && tokens.is_empty() {
            return;
        }
        let deadlines = reads
            .iter()
            .chain(&writes)
            .map(|r| r.deadline)
            .chain(tokens.iter().map(|t| t.deadline));
        let latest = deadlines.clone().max().expect("non-empty");
        let earliest = deadlines.min().expect("non-empty");
        let (jobs, _) = watch::summary(reads.iter().chain(&writes).map(|r| &r.job), tokens.len());
        let queued: Vec<_> = reads
            .iter()
            .chain(&writes)
            .map(|r| r.queued)
            .chain(tokens.iter().map(|t| t.queued))
            .collect();
        let batch = BatchInfo {
            jobs: reads.iter().chain(&writes).map(|r| &r.job),
            tokens: tokens.len(),
            deadline: earliest,
            queued: &queued,
            picked_up: now,
        };
        watch.begin(batch, Waiting::Checkout);
        let mut conn = match self.check_out(latest) {
            Ok(conn) => conn,
            Err(what) => {
                log::error!("storage: {jobs} failed: {what}");
                self.fail_all(reads.into_iter().chain(writes), tokens, &what);
                self.end_watch(watch);
                return;
            }
        };
        let mut ctx = Ctx {
            conn: &mut conn,
            watch,
            queries: &self.queries,
            faults: &self.faults,
        };
        self.run_lookups(&mut ctx, tokens);
        self.run_reads(&mut ctx, reads);
        if !writes.is_empty() {
            self.run_writes(&mut ctx, writes, &jobs);
        }
        self.end_watch(watch);
    }

    /// Answers the token lookups that need no query (picked up late:
    /// `TimedOut`; longer than any token: unknown) and returns the rest.
    /// Late ones are logged like late jobs: one line per batch, and the
    /// batch counted late once ([`Watch::count_late`]).
    fn tokens_to_look_up(
        &self,
        tokens: Vec<TokenReply>,
        now: Instant,
        watch: &Watch,
    ) -> Vec<TokenReply> {
        let mut ready = Vec::with_capacity(tokens.len());
        let mut late_ones = (0, Duration::ZERO);
        for t in tokens {
            match Pickup::at(now, t.deadline) {
                Pickup::Late(late) => {
                    self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    let _ = t.reply.send(Err(StorageError::TimedOut));
                    late_ones = (late_ones.0 + 1, late_ones.1.max(late));
                }
                Pickup::InTime if t.token.len() > limits::TOKEN_LOOKUP_BYTES_MAX => {
                    let _ = t.reply.send(Ok(None));
                }
                Pickup::InTime => ready.push(t),
            }
        }
        if let (n @ 1.., late) = late_ones {
            watch.count_late(&self.counters);
            log::warn!(
                "storage: {}: lookup_token ×{n} timed out in the queue: picked up {} past its \
                 deadline (every db thread was busy); answered TimedOut, not run",
                watch.thread,
                ms(late)
            );
        }
        ready
    }

    /// A pooled connection, waited for until `latest` (at least 1 ms);
    /// the error says how long it waited and why there was none.
    fn check_out(&self, latest: Instant) -> Result<r2d2::PooledConnection<Manager>, String> {
        let checkout = Instant::now();
        let wait = latest
            .saturating_duration_since(checkout)
            .max(Duration::from_millis(1));
        self.pool.get_timeout(wait).map_err(|e| {
            format!(
                "no database connection within {} ms: {e}",
                checkout.elapsed().as_millis()
            )
        })
    }

    /// Runs the token lookups, one query each, answering each.
    fn run_lookups(&self, ctx: &mut Ctx<'_>, tokens: Vec<TokenReply>) {
        for t in tokens {
            if ctx.conn.broken {
                let _ = t
                    .reply
                    .send(Err(StorageError::Backend("connection lost".into())));
                continue;
            }
            let result = ctx.lookup_token(&t.token).map_err(|(what, e)| {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let e = Redacted(&e);
                log::error!("storage: lookup_token failed: {what}: {e}");
                StorageError::Backend(format!("{what}: {e}"))
            });
            let _ = t.reply.send(result);
        }
    }

    /// Runs the read jobs, one at a time with autocommit, answering each;
    /// a read whose deadline passed meanwhile is answered `TimedOut`.
    fn run_reads(&self, ctx: &mut Ctx<'_>, reads: Vec<Reply>) {
        for r in reads {
            if Instant::now() >= r.deadline {
                self.counters.timed_out.fetch_add(1, Ordering::Relaxed);
                let _ = r.reply.send(Err(StorageError::TimedOut));
                continue;
            }
            if ctx.conn.broken {
                self.fail_one(
                    r.job,
                    r.reply,
                    "connection lost in an earlier query of the batch",
                );
                continue;
            }
            match ctx.read(&r.job) {
                Ok(output) => {
                    let _ = r.reply.send(Ok(output));
                }
                Err((what, e)) => {
                    let text = format!("{what} failed: {}", Redacted(&e));
                    self.fail_one(r.job, r.reply, &text);
                }
            }
        }
    }

    /// Group commit of the batch's writes, retried after a deadlock or a
    /// racing cid; every job is answered from the one outcome.
    fn run_writes(&self, ctx: &mut Ctx<'_>, writes: Vec<Reply>, jobs: &str) {
        let writes = self.drop_late_writes(writes);
        if writes.is_empty() {
            return;
        }
        let deadline = writes.iter().map(|w| w.deadline).min().expect("non-empty");
        let list: Vec<&StorageJob> = writes.iter().map(|w| &w.job).collect();
        let mut attempt = 0;
        let outcome = loop {
            if ctx.conn.broken {
                break Err(TxError::Invariant(
                    "connection lost in an earlier query of the batch".into(),
                ));
            }
            attempt += 1;
            match ctx.write(&list, deadline) {
                Err(e)
                    if e.retryable()
                        && attempt <= limits::MYSQL_TXN_RETRIES_MAX
                        && Instant::now() < deadline =>
                {
                    log::debug!("storage: write batch ({jobs}) retried: {e}");
                }
                other => break other,
            }
        };
        match outcome {
            Ok(outputs) => self.answer_committed(writes, outputs),
            Err(e) => self.answer_rolled_back(writes, &e, attempt, jobs),
        }
    }

    /// Answers `TimedOut` the writes whose deadline passed while the
    /// batch's checkout and reads ran, and returns the others.
    fn drop_late_writes(&self, writes: Vec<Reply>) -> Vec<Reply> {
        batch::time_out_late(writes, Instant::now(), &self.counters)
    }

    /// Answers each write of a committed batch with its output.
    fn answer_committed(&self, writes: Vec<Reply>, outputs: Vec<StorageOutput>) {
        self.counters.write_batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .write_jobs
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        for (w, output) in writes.into_iter().zip(outputs) {
            let _ = w.reply.send(Ok(output));
        }
    }

    /// Answers every write of a batch that did not commit: `TimedOut`
    /// when its deadline stopped it, else `Backend`; logged once.
    fn answer_rolled_back(&self, writes: Vec<Reply>, e: &TxError, attempts: u32, jobs: &str) {
        let n = writes.len() as u64;
        let error = match e {
            TxError::Deadline => {
                self.counters.timed_out.fetch_add(n, Ordering::Relaxed);
                StorageError::TimedOut
            }
            _ => {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                StorageError::Backend(format!("write batch rolled back: {e}"))
            }
        };
        log::error!(
            "storage: write batch of {n} jobs ({jobs}) failed after {attempts} attempt(s): {e}"
        );
        for w in writes {
            let _ = w.reply.send(Err(error.clone()));
        }
    }

    /// Answers one job `Backend(what)` and logs it.
    fn fail_one(&self, job: StorageJob, reply: oneshot::Sender<StorageResult>, what: &str) {
        batch::fail(&self.counters, &job, reply, what);
    }

    /// Answers every job `Backend(what)` (already logged once).
    fn fail_all(&self, jobs: impl Iterator<Item = Reply>, tokens: Vec<TokenReply>, what: &str) {
        for r in jobs {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let _ = r.reply.send(Err(StorageError::Backend(what.to_string())));
        }
        for t in tokens {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            let _ = t.reply.send(Err(StorageError::Backend(what.to_string())));
        }
    }
}

/// `switchboard migrate`: brings the database at `url` to
/// [`SCHEMA_VERSION`] (idempotent).
pub fn migrate(url: &str) -> Result<Migrated, String> {
    let mut conn = conn::connect_once(url, Duration::from_secs(600))?;
    schema::migrate(&mut conn)
}

/// `switchboard check-directory`: runs the configured directory queries
/// for `user` (and `other`) and describes what they returned, plus the
/// schema version; for checking custom queries against a real database.
pub fn check_directory(
    url: &str,
    queries: &DirectoryQueries,
    user: UserId,
    other: Option<UserId>,
) -> Result<String, String> {
    let mut conn = conn::connect_once(url, Duration::from_secs(30))?;
    check_queries(&mut conn, queries)?;
    let mut out = String::new();
    let version = match schema::check_version(&mut conn) {
        Ok(()) => format!("schema version {SCHEMA_VERSION} (current)"),
        Err(e) => e,
    };
    let _ = writeln!(out, "switchboard tables: {version}");
    let name: Option<String> = conn
        .conn
        .exec_first(&queries.user_name_sql, (user,))
        .map_err(|e| format!("user name query: {e}"))?;
    let _ = writeln!(out, "user {user}: name {name:?}");
    let friends: Vec<(UserId, String)> = conn
        .conn
        .exec(&queries.friends_sql, (user,))
        .map_err(|e| format!("friends query: {e}"))?;
    let _ = writeln!(out, "user {user}: {} friends", friends.len());
    for (id, name) in friends.iter().take(20) {
        let _ = writeln!(out, "  {id} {name}");
    }
    if friends.len() > 20 {
        let _ = writeln!(out, "  … and {} more", friends.len() - 20);
    }
    if let Some(other) = other {
        let row: Option<mysql::Row> = conn
            .conn
            .exec_first(&queries.are_friends_sql, (user, other))
            .map_err(|e| format!("are-friends query: {e}"))?;
        let listed = friends.iter().any(|(id, _)| *id == other);
        let _ = writeln!(
            out,
            "are {user} and {other} friends: {} (friends query: {})",
            row.is_some(),
            listed
        );
        if row.is_some() != listed {
            let _ = writeln!(
                out,
                "WARNING: the friends query and the are-friends query disagree"
            );
        }
    }
    Ok(out)
}
