//! Every bound of the storage crate, by name, unit and qualifier last, with
//! what happens when it is hit. The runtime-tunable ones travel in
//! [`crate::EmbeddedConfig`]; these are their defaults and hard caps.

/// Default depth of the job queue between the executors and the `db-N`
/// threads (one bounded crossbeam channel shared by all of them). When it
/// is full, [`crate::Store::submit`] fails at once with
/// `StorageError::Overloaded` (the client sees `unavailable`); nothing
/// ever waits for room.
pub const JOB_QUEUE_DEPTH_DEFAULT: usize = 8_192;

/// Largest job queue depth a configuration may ask for. A larger
/// `queue_depth` is refused by [`crate::Store::open_embedded`].
pub const JOB_QUEUE_DEPTH_MAX: usize = 1 << 20;

/// Default number of write jobs one `db-N` thread commits in one redb
/// write transaction (group commit: one fsync for the whole batch). When
/// more are queued, the rest wait for the next batch.
pub const WRITE_BATCH_JOBS_DEFAULT: usize = 256;

/// Largest write batch a configuration may ask for. A larger
/// `write_batch_max` is refused by [`crate::Store::open_embedded`].
pub const WRITE_BATCH_JOBS_MAX: usize = 4_096;

/// Default number of `db-N` threads. redb runs one write transaction at a
/// time, so more threads only help reads and overlap batching with fsync.
pub const DB_THREADS_DEFAULT: usize = 2;

/// Most `db-N` threads a configuration may ask for. More is refused by
/// [`crate::Store::open_embedded`].
pub const DB_THREADS_MAX: usize = 64;

/// How long an idle `db-N` thread waits for a job before it looks at the
/// stop flag again. Bounds how long a shutdown waits for an idle thread.
pub const DB_IDLE_WAIT_MS: u64 = 50;

/// Memory redb may use to cache pages of the database file. Over it redb
/// evicts pages and reads them from the file again.
pub const DB_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How long the write-ahead log (`switchboard.wal`) may hold records
/// before a checkpoint. The first write batch that finds the log's oldest
/// record this old commits redb durably (fsync) instead of appending, and
/// the log starts again from offset 0. Bounds the work of a recovery and
/// the redb pages written since the last durable commit (redb cannot
/// reuse pages freed by commits that were not durable). A db thread that
/// goes [`DB_IDLE_WAIT_MS`] without a job checkpoints a log whose oldest
/// record is [`WAL_IDLE_CHECKPOINT_AGE_MS`] old, so an idle server's log
/// is soon empty.
pub const WAL_CHECKPOINT_AGE_MS: u64 = 200;

/// How old the write-ahead log's oldest record must be for an idle db
/// thread to checkpoint it. Not at once: at a few writes a second every
/// batch would otherwise pay its log `fdatasync` and then a durable redb
/// commit, more syncing than before the log.
pub const WAL_IDLE_CHECKPOINT_AGE_MS: u64 = 200;

/// Largest the write-ahead log grows, in bytes. A write batch whose record
/// would end past it checkpoints instead of appending (so one batch too
/// big for the log still commits, durably, through redb). At 1,000
/// messages a second of about 200 bytes, a checkpoint by age comes long
/// before (about 0.2 MB).
pub const WAL_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The write-ahead log is zero-filled to this size when opened, and grown
/// by this much (zeros, then `fsync` of the file and its folder) when a
/// record would pass its end, so that an append's `fdatasync` has no
/// size change or block allocation to journal. The file never shrinks.
pub const WAL_GROW_BYTES: usize = 4 * 1024 * 1024;

/// Most messages one `History` job returns (docs/protocol.md, `/history`:
/// `limit` 1–100). A larger `limit` is clamped to it.
pub const HISTORY_LIMIT_MAX: u32 = 100;

/// Most users an embedded directory may hold. A directory file with more
/// is rejected (at open: the store does not start; at reload: the old
/// directory stays in force).
pub const USERS_MAX: usize = 1_000_000;

/// Most friends one user may have in an embedded directory. A directory
/// file giving anyone more is rejected like one over [`USERS_MAX`].
pub const FRIENDS_PER_USER_MAX: usize = 10_000;

/// Longest user name in an embedded directory, in UTF-8 bytes: a MySQL
/// `VARCHAR(191)` in utf8mb4 (the default schema) always fits. A longer (or
/// empty) name makes the directory file rejected.
pub const NAME_BYTES_MAX: usize = 191 * 4;

/// Largest embedded directory file read. A larger file is rejected
/// before it is read into memory.
pub const DIRECTORY_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Largest message text stored, in UTF-8 bytes (4000 code points of up to 4
/// bytes, docs/protocol.md, `/send`). `io` checks the real limit; a larger
/// text reaching storage is a caller bug and is answered
/// `StorageError::Backend` without being stored.
pub const MESSAGE_TEXT_BYTES_MAX: usize = 4_000 * 4;

/// Largest client message id (`cid`) stored, in UTF-8 bytes (64 characters,
/// docs/protocol.md, `/send`). Over it: answered `StorageError::Backend`,
/// nothing stored.
pub const CID_BYTES_MAX: usize = 64 * 4;

/// Largest UI state stored, in bytes (docs/protocol.md, `/ui`: 4096 as sent).
/// Over it: answered `StorageError::Backend`, nothing stored.
pub const UI_STATE_BYTES_MAX: usize = 4_096;

/// Random bytes in a generated token secret (kept hex-encoded in
/// `data_dir/token_secret`). A secret file shorter than this is refused
/// by [`crate::token::load_or_create_secret`].
pub const TOKEN_SECRET_BYTES: usize = 32;

/// Longest decimal number in a token part: `u64::MAX` has 20 digits. A
/// longer part makes the token `Malformed` before any parsing.
pub const TOKEN_NUMBER_DIGITS_MAX: usize = 20;

/// Most pooled MySQL connections (and so `db-N` threads of the MySQL
/// backend: one connection per thread at a time). More is refused by
/// [`crate::Store::open_mysql`]; the server's `max_connections` must
/// leave room for them.
pub const MYSQL_POOL_SIZE_MAX: usize = 256;

/// The default MySQL pool size for a machine with `cores` cores: two
/// connections per core plus two, so a few slow queries never leave the
/// others without a connection, and a small machine still has several.
pub const fn mysql_pool_size_default(cores: usize) -> usize {
    let size = 2 * cores + 2;
    if size > MYSQL_POOL_SIZE_MAX {
        MYSQL_POOL_SIZE_MAX
    } else {
        size
    }
}

/// Default time allowed to open one TCP connection to MySQL and finish its
/// handshake. Past it the attempt fails; the pool retries in the
/// background (backing off up to half this) while jobs wait for a
/// connection no longer than their own deadline.
pub const MYSQL_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 2_000;

/// Socket read and write timeouts of a MySQL connection are the job
/// timeout plus this margin, so the server's own limits (lock waits,
/// statement time, both set from the job timeout) normally answer first
/// and the connection stays usable. Past the socket timeout the
/// connection is dropped and a new one made.
pub const MYSQL_IO_TIMEOUT_MARGIN_MS: u64 = 1_000;

/// Longest a db thread waits for more sends to join a group commit once
/// it has one (`SWITCHBOARD_MYSQL_BATCH_WAIT_MS`). The wait never passes a
/// batched job's deadline. More is refused at open.
pub const MYSQL_BATCH_WAIT_MS_MAX: u64 = 100;

/// How often a write batch is tried again after a deadlock or a
/// concurrent insert of the same `cid` (both roll the whole transaction
/// back). Still failing after that: every job of the batch fails.
pub const MYSQL_TXN_RETRIES_MAX: u32 = 3;

/// A pooled connection idle for longer than this is pinged before use
/// (r2d2's check-out test); a busier one is used as is, and if it turns
/// out to be broken its batch fails and the connection is replaced.
pub const MYSQL_IDLE_PING_AFTER_MS: u64 = 1_000;

/// How often the `db-watch` thread looks for jobs past their deadline
/// (each is logged once with what it is waiting for).
pub const DB_WATCH_INTERVAL_MS: u64 = 100;

/// Connection errors of the pool's background connector are logged at
/// most once per this interval (the rest are counted into the next line),
/// so an outage does not flood the log.
pub const MYSQL_ERROR_LOG_INTERVAL_MS: u64 = 5_000;

/// Longest SQL text quoted in a log line; longer is cut with `…`.
pub const LOG_SQL_CHARS_MAX: usize = 160;

/// Longest login token looked up with the configured token query. A
/// longer one is `unauthorized` without a query.
pub const TOKEN_LOOKUP_BYTES_MAX: usize = 512;

/// Longest commit stall the `fault-injection` feature may inject
/// (`SWITCHBOARD_FAULT_COMMIT_STALL_MS`, tests only). A longer stall
/// refuses the open: a test that sleeps longer than this has a bug.
pub const FAULT_COMMIT_STALL_MS_MAX: u64 = 60_000;

/// Rows per multi-row `INSERT` of `switchboard seed-demo`.
pub const SEED_ROWS_PER_INSERT: usize = 2_000;

/// Most users `switchboard seed-demo` creates.
pub const SEED_USERS_MAX: u64 = 10_000_000;

const _: () =
    assert!(JOB_QUEUE_DEPTH_DEFAULT >= 1 && JOB_QUEUE_DEPTH_DEFAULT <= JOB_QUEUE_DEPTH_MAX);
const _: () =
    assert!(WRITE_BATCH_JOBS_DEFAULT >= 1 && WRITE_BATCH_JOBS_DEFAULT <= WRITE_BATCH_JOBS_MAX);
const _: () = assert!(DB_THREADS_DEFAULT >= 1 && DB_THREADS_DEFAULT <= DB_THREADS_MAX);
// A batch never needs more jobs than the queue can hold.
const _: () = assert!(WRITE_BATCH_JOBS_MAX <= JOB_QUEUE_DEPTH_MAX);
const _: () = assert!(HISTORY_LIMIT_MAX >= 1);
const _: () =
    assert!(WAL_GROW_BYTES <= WAL_BYTES_MAX && WAL_BYTES_MAX.is_multiple_of(WAL_GROW_BYTES));
// A record's length is a u32 (wal.rs).
const _: () = assert!(WAL_BYTES_MAX < u32::MAX as usize);
const _: () = assert!(FRIENDS_PER_USER_MAX < USERS_MAX);
const _: () = assert!(TOKEN_SECRET_BYTES >= 32);
const _: () = assert!(mysql_pool_size_default(1) > 1);
const _: () = assert!(FRIENDS_PER_USER_MAX as u64 <= SEED_USERS_MAX);
