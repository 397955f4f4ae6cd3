//! Bounds of the engine, by name, with what happens when each is hit.

/// Depth of each glommio mesh channel between two shards. When full, the
/// sender's outbox drainer waits (the receiver always drains: it never
/// waits on anyone).
pub const MESH_CHANNEL_DEPTH_MAX: usize = 4_096;

/// Messages queued in one shard's outbox to one peer. Hitting it drops the
/// message, counts it and logs an error; admission control below keeps
/// that from happening.
pub const OUTBOX_DEPTH_MAX: usize = 65_536;

/// A new client request is forwarded to its home shard only while the
/// outbox there holds fewer than this; otherwise it is answered
/// `unavailable` at once (shed, never an unbounded wait). The headroom
/// above it is for replies and peer messages of requests already admitted.
pub const OUTBOX_ADMIT_MAX: usize = OUTBOX_DEPTH_MAX / 2;

/// How often each shard fires its timers (poll waits, tab timeouts, grace,
/// roster refresh): the granularity of every shard deadline. The armed
/// tick timer also makes each reactor re-check its shared channels at
/// least this often, which bounds the cost of a lost cross-executor wakeup.
pub const TICK_MS: u64 = 50;

/// How often a shard checks whether a stop was asked for (the stop flag
/// is shared memory; there is no cross-executor wakeup for it). A stop
/// takes at most about this long to reach every shard.
pub const STOP_CHECK_MS: u64 = 10;

/// How long a stopping shard waits for its connections to answer and
/// close, and then for the other shards' (phases 1 and 2 of `stop.rs`),
/// from when it saw the stop. Past it the shard goes on to its storage
/// jobs and ends; the connections still open are logged and close when
/// the process exits. Drained connections close within milliseconds; this
/// bounds a client that keeps one busy (a slow upload, a slow reader).
pub const DRAIN_MS_MAX: u64 = 3_000;

/// The longest a stop asked for by SIGTERM or SIGINT may take, until the
/// process exits. Past it the binary logs what was still pending and
/// exits with status 3. It covers the drain (`DRAIN_MS_MAX`), storage jobs
/// in flight (the storage timeout, 5 s by default) and closing storage;
/// keep it below the kill timeout of whatever stops the process
/// (systemd's `TimeoutStopSec`, 90 s by default; Kubernetes'
/// `terminationGracePeriodSeconds`, 30 s).
pub const STOP_TIMEOUT_MS: u64 = 10_000;

/// How long `/health` waits for each shard.
pub const HEALTH_TIMEOUT_MS: u64 = 1_000;

/// A `/connect` token that is not in the HMAC form is looked up in the
/// directory (a storage job) only if it has from `TOKEN_LOOKUP_CHARS_MIN`
/// to `TOKEN_LOOKUP_CHARS_MAX` characters, each of `[A-Za-z0-9._~+/=-]`
/// (base64, base64url, hex and dotted forms); any other is `unauthorized`
/// at once, so a client sending garbage never costs a query.
pub const TOKEN_LOOKUP_CHARS_MIN: usize = 16;

/// See [`TOKEN_LOOKUP_CHARS_MIN`].
pub const TOKEN_LOOKUP_CHARS_MAX: usize = 128;

/// Storage job queue depth (jobs waiting for a db thread). Full: the call
/// answers `unavailable`.
pub const STORAGE_QUEUE_DEPTH_MAX: usize = 16_384;

/// Storage writes committed in one transaction (group commit).
pub const STORAGE_WRITE_BATCH_MAX: usize = 256;

/// Submission-queue depth of each executor's io_uring rings (glommio's
/// default is 128). The kernel sizes a ring's cancel hash table from its
/// depth (8 buckets at 128, the 256-bucket cap from 4096), and glommio
/// cancels a timeout on nearly every reactor turn, each cancel scanning
/// one bucket of the poll requests every idle connection keeps armed. With
/// 4,000 connections that scan was 8.6% of the server's CPU
/// (`io_poll_find`, perf, docs/benchmarks.md); at 4096 it is 0.8%.
pub const RING_DEPTH: usize = 4_096;

const _: () = assert!(OUTBOX_ADMIT_MAX < OUTBOX_DEPTH_MAX);
const _: () = assert!(HEALTH_TIMEOUT_MS > TICK_MS);
const _: () = assert!(STOP_CHECK_MS <= TICK_MS);
const _: () =
    assert!(TOKEN_LOOKUP_CHARS_MIN >= 1 && TOKEN_LOOKUP_CHARS_MIN <= TOKEN_LOOKUP_CHARS_MAX);
const _: () = assert!(DRAIN_MS_MAX + STOP_CHECK_MS < STOP_TIMEOUT_MS / 2);
