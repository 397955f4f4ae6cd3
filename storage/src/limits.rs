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

/// Most messages one `History` job returns (PROTOCOL.md §3: `limit`
/// 1–100). A larger `limit` is clamped to it.
pub const HISTORY_LIMIT_MAX: u32 = 100;

/// Most users an embedded directory may hold. A directory file with more
/// is rejected (at open: the store does not start; at reload: the old
/// directory stays in force).
pub const USERS_MAX: usize = 1_000_000;

/// Most friends one user may have in an embedded directory. A directory
/// file giving anyone more is rejected like one over [`USERS_MAX`].
pub const FRIENDS_PER_USER_MAX: usize = 10_000;

/// Longest user name in an embedded directory, in UTF-8 bytes: a MySQL
/// `VARCHAR(191)` in utf8mb4 (PROTOCOL.md §7) always fits. A longer (or
/// empty) name makes the directory file rejected.
pub const NAME_BYTES_MAX: usize = 191 * 4;

/// Largest embedded directory file read. A larger file is rejected
/// before it is read into memory.
pub const DIRECTORY_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Largest message text stored, in UTF-8 bytes (4000 code points of up to
/// 4 bytes, PROTOCOL.md §3). `io` checks the real limit; a larger text
/// reaching storage is a caller bug and is answered
/// `StorageError::Backend` without being stored.
pub const MESSAGE_TEXT_BYTES_MAX: usize = 4_000 * 4;

/// Largest client message id (`cid`) stored, in UTF-8 bytes (64
/// characters, PROTOCOL.md §1). Over it: answered `StorageError::Backend`,
/// nothing stored.
pub const CID_BYTES_MAX: usize = 64 * 4;

/// Largest UI state stored, in bytes (PROTOCOL.md §3: 4096 as sent). Over
/// it: answered `StorageError::Backend`, nothing stored.
pub const UI_STATE_BYTES_MAX: usize = 4_096;

/// Random bytes in a generated token secret (kept hex-encoded in
/// `data_dir/token_secret`). A secret file shorter than this is refused
/// by [`crate::token::load_or_create_secret`].
pub const TOKEN_SECRET_BYTES: usize = 32;

/// Longest decimal number in a token part: `u64::MAX` has 20 digits. A
/// longer part makes the token `Malformed` before any parsing.
pub const TOKEN_NUMBER_DIGITS_MAX: usize = 20;

const _: () =
    assert!(JOB_QUEUE_DEPTH_DEFAULT >= 1 && JOB_QUEUE_DEPTH_DEFAULT <= JOB_QUEUE_DEPTH_MAX);
const _: () =
    assert!(WRITE_BATCH_JOBS_DEFAULT >= 1 && WRITE_BATCH_JOBS_DEFAULT <= WRITE_BATCH_JOBS_MAX);
const _: () = assert!(DB_THREADS_DEFAULT >= 1 && DB_THREADS_DEFAULT <= DB_THREADS_MAX);
// A batch never needs more jobs than the queue can hold.
const _: () = assert!(WRITE_BATCH_JOBS_MAX <= JOB_QUEUE_DEPTH_MAX);
const _: () = assert!(HISTORY_LIMIT_MAX >= 1);
const _: () = assert!(FRIENDS_PER_USER_MAX < USERS_MAX);
const _: () = assert!(TOKEN_SECRET_BYTES >= 32);
