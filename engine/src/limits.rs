//! Bounds of the engine, by name, with what happens when each is hit.

/// Depth of each glommio mesh channel between two shards. When full, the
/// sender's outbox drainer waits (the receiver always drains: it never
/// waits on anyone).
pub const MESH_CHANNEL_DEPTH_MAX: usize = 4_096;

/// Requests one conn shard has sent to one peer and not yet had answered,
/// held polls included (their answers can all come in one burst). At the
/// bound a new request to that peer is answered `unavailable` at once
/// (shed, counted). Above `CONNECTIONS_MAX`'s default (9,000), since a
/// connection has at most one call in flight.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 16_384;

/// Peer messages (deliveries, presence changes, roster traffic) one
/// outbox takes while it holds fewer messages than this; above it each
/// is dropped and counted by kind (presence is repaired by the shards'
/// periodic presence digest).
pub const PEER_MSGS_QUEUED_MAX: usize = 32_768;

/// Users one shard remembers, per peer, as owed a `PeerMsg::Resync` (a
/// delivery of a message or read receipt to them was dropped on a full
/// outbox). One more, and the shard owes that peer a resync of every live
/// session instead (`Resync::All`): their tabs all reload from history.
pub const RESYNC_USERS_MAX: usize = 1_024;

/// Messages queued in one shard's outbox to one peer: the requests this
/// shard has in flight to the peer, the replies to the peer's requests in
/// flight here (each side's `REQUESTS_IN_FLIGHT_MAX`), and the peer
/// messages' share. So a reply or an admitted request always fits (the
/// const assert below); only a reply that comes after its caller's
/// deadline is outside that count. A message that still finds it full is
/// dropped, counted and logged.
pub const OUTBOX_DEPTH_MAX: usize = 2 * REQUESTS_IN_FLIGHT_MAX + PEER_MSGS_QUEUED_MAX;

/// How much later than storage's own deadline the engine's timer for a
/// storage job fires. Storage checks each job's deadline itself (at
/// pickup, and under the MySQL write transaction before `COMMIT`), so in
/// the normal case storage answers definitively (`TimedOut` = not stored)
/// before the engine gives up on the job and answers `unavailable` not
/// knowing whether it was stored. Covers a commit sent just before the
/// deadline and the hop back to the executor.
pub const STORAGE_SLACK_MS: u64 = 1_000;

/// How much longer than the home shard should take a conn shard waits for
/// an answer (`ShardRuntime::call_on`): a poll its wait plus this, any
/// other call the storage timeout plus `STORAGE_SLACK_MS` plus this (two
/// rounds for `roster-changed`). Covers timer granularity and the mesh.
/// Past it the call is answered `unavailable` and its waiting entry goes.
pub const CALL_MARGIN_MS: u64 = 5_000;

/// How often each shard fires its timers (poll waits, tab timeouts, grace,
/// roster refresh): the granularity of every shard deadline. The armed
/// tick timer also makes each reactor re-check its shared channels at
/// least this often, which bounds the cost of a lost cross-executor wakeup.
pub const TICK_MS: u64 = 50;

/// How often a stopping shard looks at what it waits for (its
/// connections, storage jobs, peers' phases: shared counters with no
/// wake-up of their own). A stop reaches every shard at once (a wake-up,
/// `stop::StopHandle::requested`); this bounds the stop's later steps.
pub const STOP_CHECK_MS: u64 = 10;

/// How often a running shard looks at the stop flag besides being woken
/// when a stop is asked for (`stop::StopHandle::requested`): a wake-up
/// lost on the way could delay a stop by this much, never keep it from a
/// shard. One look a second, where the shard used to look every
/// `STOP_CHECK_MS`. The stop bound ([`stop_timeout_ms`]) assumes the
/// wake-up arrives (its first `STOP_CHECK_MS`); a lost one is a bug this
/// makes at most a second late, not a hang.
pub const STOP_LOOK_MS: u64 = 1_000;

/// How long a stopping shard waits for its connections to answer and
/// close, and then for the other shards' (phases 1 and 2 of `stop.rs`),
/// from when it saw the stop, unless a connection has a call in flight
/// (see [`drain_calls_ms`]). Past it the shard goes on to its storage jobs
/// and ends; the connections still open are logged and close when the
/// process exits. Drained connections close within milliseconds; this
/// bounds a client that keeps one busy (a slow upload, a slow reader) and
/// a lingering close (cut at this bound while stopping).
pub const DRAIN_MS_MAX: u64 = 3_000;

/// The accept backlog each listening socket asks for: as deep as the
/// host allows, since the kernel cuts it to `net.core.somaxconn` (4096 by
/// default). Connections wait there while no process accepts: a reconnect
/// storm, and the moment of a hand-over (`handover.rs`), when every tab
/// reconnects at once (tuning/README.md, "Connections").
pub const LISTEN_BACKLOG: i32 = 65_535;

/// How long a shard handing over (`stop::settle_shard`) waits, frozen,
/// for the mesh to fall quiet before it takes its state anyway (with a
/// warning: what was still in flight is lost). Quiet takes a few
/// milliseconds: what is in flight then is at most one mesh hop and what
/// it causes.
pub const SETTLE_MS_MAX: u64 = 2_000;

/// How long an old process handing over connects to its own listeners to
/// wake its accept loops (`handover.rs`): a loop ends only after an
/// accept completes. Past it the loops left are cancelled.
pub const HANDOVER_NUDGE_MS_MAX: u64 = 1_000;

/// How long each side of a hand-over waits for the other's next word on
/// the control socket, where no longer bound applies: the old process
/// for `Hello`, the new one for `Go` after `Ready`.
pub const HANDOVER_WORD_MS_MAX: u64 = 10_000;

/// How long an old process that sent its state waits for the new one to
/// say `Ready` (storage opened, shards restored and listening) before it
/// kills it and serves again itself.
pub const HANDOVER_READY_MS_MAX: u64 = 30_000;

/// How much longer than its own stop bound ([`stop_timeout_ms`]) a new
/// process waits for the old one's state: the accept loops' nudges, the
/// settle (bounded by the engine's wait for a storage job plus
/// [`SETTLE_MS_MAX`]) and the state's serialisation.
pub const fn handover_state_wait_ms(storage_timeout_ms: u64) -> u64 {
    stop_timeout_ms(storage_timeout_ms)
        + 2 * HANDOVER_NUDGE_MS_MAX
        + storage_patience_ms(storage_timeout_ms)
        + SETTLE_MS_MAX
        + 5_000
}

/// How long `switchboard takeover` waits for the new server to serve:
/// the state's wait, then the new process starting (`HANDOVER_READY_MS_MAX`
/// at most), plus a margin: the stop bound + the storage timeout + 45 s,
/// 64.57 s with the default 5 s storage timeout, 139.57 s at the largest
/// (30 s). systemd's `TimeoutStartSec` must be above it (the unit in
/// docs/operations.md sets 150 s).
pub const fn takeover_command_ms(storage_timeout_ms: u64) -> u64 {
    handover_state_wait_ms(storage_timeout_ms) + HANDOVER_READY_MS_MAX + 5_000
}

/// How much longer than the engine's wait for a storage job a stopping
/// shard waits for a connection with a call in flight: the answer's hop
/// back over the mesh and its write.
pub const DRAIN_CALL_MARGIN_MS: u64 = 500;

/// What a stop may take besides the shards' phases: joining the
/// executors and closing storage (its db threads answer what is still
/// queued, each job bounded by its deadline, and the database is closed).
pub const STOP_CLOSE_MARGIN_MS: u64 = 2_000;

/// The engine's wait for one storage job, for a storage timeout of
/// `storage_timeout_ms` (`ShardRuntime::storage_patience`).
pub const fn storage_patience_ms(storage_timeout_ms: u64) -> u64 {
    storage_timeout_ms + STORAGE_SLACK_MS
}

/// How long a stopping shard waits for a connection with a call in flight
/// (a send waiting on slow storage, an admin `roster-changed`): the call's
/// storage wait plus [`DRAIN_CALL_MARGIN_MS`], and never less than
/// [`DRAIN_MS_MAX`]. A `roster-changed` that needs two slow storage rounds
/// may be cut at it (the web app retries).
pub const fn drain_calls_ms(storage_timeout_ms: u64) -> u64 {
    let calls = storage_patience_ms(storage_timeout_ms) + DRAIN_CALL_MARGIN_MS;
    if calls > DRAIN_MS_MAX {
        calls
    } else {
        DRAIN_MS_MAX
    }
}

/// The longest a stop asked for by SIGTERM or SIGINT may take, until the
/// process exits; past it the binary logs what was still pending and
/// exits with status 3. It is the sum of the stop's bounds: the stop
/// reaching every shard (`STOP_CHECK_MS`), the drain
/// ([`drain_calls_ms`], phases 1 and 2, with a peer's `STOP_CHECK_MS`
/// late start), the storage jobs in flight (phase 3: the engine's wait
/// for one job plus a tick), and [`STOP_CLOSE_MARGIN_MS`]. With the
/// default 5 s storage timeout: 14.57 s. Keep it below the kill timeout of
/// whatever stops the process (systemd's `TimeoutStopSec`, 90 s by
/// default; Kubernetes' `terminationGracePeriodSeconds`, 30 s).
pub const fn stop_timeout_ms(storage_timeout_ms: u64) -> u64 {
    2 * STOP_CHECK_MS
        + drain_calls_ms(storage_timeout_ms)
        + storage_patience_ms(storage_timeout_ms)
        + TICK_MS
        + STOP_CLOSE_MARGIN_MS
}

/// The largest `STORAGE_TIMEOUT_MS` accepted: it keeps the stop bound
/// ([`stop_timeout_ms`], 64.6 s here) below systemd's default
/// `TimeoutStopSec` (90 s).
pub const STORAGE_TIMEOUT_MS_MAX: u64 = 30_000;

/// The smallest `STORAGE_TIMEOUT_MS` accepted (a storage round trip).
pub const STORAGE_TIMEOUT_MS_MIN: u64 = 100;

/// How long a shard may go without a tick (`TICK_MS`) before the
/// watchdog takes its executor for stuck (an endless loop, a blocking
/// call) and ends the process with status 70 (`supervise.rs`). Far above
/// any turn a healthy shard takes (each yields within its time slice), so
/// only a shard that answers nothing trips it.
pub const SHARD_STALL_MS_MAX: u64 = 10_000;

/// How often the watchdog checks the shards' ticks and the storage
/// threads.
pub const WATCHDOG_CHECK_MS: u64 = 250;

/// How often the watchdog reads the process's figures from `/proc/self`
/// for `/metrics` (resident memory, open and maximum descriptors) while
/// they are scraped. Listing `/proc/self/fd` costs time in proportion to
/// the open descriptors, so it is done there, off the executors, and not
/// at each scrape.
pub const PROCESS_SAMPLE_MS: u64 = 1_000;

/// How often it reads them while nobody scrapes `/metrics` (no scrape
/// since the last sample): the first scrape after a quiet spell shows
/// figures at most this old.
pub const PROCESS_SAMPLE_IDLE_MS: u64 = 30_000;

/// `SWITCHBOARD_LOOP_LAG_WARN_MS`'s default: a shard whose tick fires
/// this much later than due (its executor busy or blocked that long) is
/// reported by the watchdog, once per episode. A healthy shard's ticks
/// are a millisecond or two late at most; at this lag every call on the
/// shard waits half a second.
pub const LOOP_LAG_WARN_MS_DEFAULT: u64 = 500;

/// A lagging episode (see [`LOOP_LAG_WARN_MS_DEFAULT`]) ends after this
/// long without a late tick; the next late tick is then a new episode,
/// warned about again.
pub const LOOP_LAG_QUIET_MS: u64 = 5_000;

/// Token lookups (`/connect` with a token that is not in the HMAC form,
/// looked up by the directory's token query: a storage job each) in
/// flight on one shard. One more is answered `unavailable` at once and
/// counted (`shed_token_lookups`), so a flood of made-up tokens cannot
/// fill the storage queue the shards' jobs share.
pub const TOKEN_LOOKUPS_IN_FLIGHT_MAX: usize = 256;

/// How long `/health` waits for each shard.
pub const HEALTH_TIMEOUT_MS: u64 = 1_000;

/// The shortest `SWITCHBOARD_ADMIN_TOKEN`, in bytes, allowed when the admin
/// listener is not on loopback (on loopback a shorter one is a warning):
/// 32 random bytes are out of reach of guessing, even a connection a guess.
pub const ADMIN_TOKEN_BYTES_MIN: usize = 32;

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

/// Memory each executor registers with its io_uring rings for DMA
/// buffers (glommio's default is 10 MiB). Registering pins it, so all of
/// it counts in RSS from the start: with the default, 20 of the 35 MiB of
/// an idle two-shard server (smaps). Switchboard never asks glommio for
/// such a buffer (storage runs on its db threads, sockets are read into
/// io's own buffers), and a request it cannot serve from this falls back
/// to the heap, so it gets glommio's minimum.
pub const IO_MEMORY_BYTES: usize = 64 * 1024;

/// How long the start-up port probe waits for a connection to a configured
/// address before taking it as free (claim.rs). Loopback answers at once
/// either way; only a listener too overloaded to take a SYN is slower.
pub const PORT_PROBE_TIMEOUT_MS: u64 = 1_000;

/// How long something must keep accepting the port probe's connections to
/// count as another server (a killed server's listener lingers briefly
/// while the kernel tears down its io_uring rings). A real conflict is
/// refused after this long.
pub const PORT_PROBE_PATIENCE_MS: u64 = 2_000;

/// Pause between two port probes.
pub const PORT_PROBE_RETRY_MS: u64 = 50;

/// Log records queued for the `log` thread (`logger/`), each one
/// formatted line. When full, a record is counted
/// (`switchboard_log_dropped_total`, and a line once stderr takes records
/// again) and dropped: the thread that logs never waits (an executor
/// must not block because stderr is a slow pipe).
pub const LOG_QUEUE_DEPTH_MAX: usize = 4_096;

/// The longest log line, in bytes: a longer message is cut (at a
/// character boundary) and ends in `…`. With [`LOG_QUEUE_DEPTH_MAX`] it
/// bounds the queue's memory (16 MiB at most, a few hundred KiB in
/// practice).
pub const LOG_LINE_BYTES_MAX: usize = 4_096;

/// A call site's warnings (and errors) are written at most
/// [`LOG_REPEAT_BURST`] times per this window; the rest are counted and
/// the count is written with the next one (or by the `log` thread when
/// the window ends): `(37 more like this in the last 10 s)`.
pub const LOG_REPEAT_MS: u64 = 10_000;

/// See [`LOG_REPEAT_MS`]. More than one, so a loop that reports a few
/// distinct things at start (one line per file) is not cut.
pub const LOG_REPEAT_BURST: u32 = 5;

/// Call sites whose warnings are rate-limited: each claims a slot on its
/// first warning. A site that finds none free (of the few it may use) is
/// not limited.
pub const LOG_CALLSITES_MAX: usize = 256;

/// How long a flush (`logger::flush`: a graceful stop, the panic hook's
/// exit, a fatal error) waits for the `log` thread to write what is
/// queued. Past it the process goes on (exits) without those lines: a
/// stderr nobody reads must not hold an exit.
pub const LOG_FLUSH_WAIT_MS: u64 = 2_000;

/// Requests to the `log` thread (trace start, stop and reads; flushes)
/// queued at once. One more trace request is answered `unavailable`.
pub const LOG_CONTROL_DEPTH_MAX: usize = 16;

/// How long an admin `/trace` call waits for the `log` thread to open,
/// close or read a trace file (it may be stuck writing a stderr nobody
/// reads). Past it the call answers `unavailable`.
pub const TRACE_CONTROL_WAIT_MS: u64 = 2_000;

/// How long `POST /trace` waits for every shard to take the new set of
/// traced users. Past it the call answers `unavailable` (a start is
/// undone first).
pub const TRACE_ACK_TIMEOUT_MS: u64 = 1_000;

/// The newest lines `GET /trace` answers.
pub const TRACE_LINES_SHOWN_MAX: usize = 200;

/// The most of a trace file's end `GET /trace` reads (the newest lines
/// must fit: [`LOG_LINE_BYTES_MAX`] bounds each).
pub const TRACE_READ_BYTES_MAX: u64 = 256 * 1024;

/// The default time bound of a trace (`SWITCHBOARD_TRACE_MS`): it ends by
/// itself this long after it started (or was started again).
pub const TRACE_MS_DEFAULT: u64 = 600_000;

/// The default size bound of a trace file (`SWITCHBOARD_TRACE_BYTES_MAX`):
/// the line that would pass it ends the trace instead.
pub const TRACE_BYTES_MAX_DEFAULT: u64 = 16 * 1024 * 1024;

/// Ended trace files kept in `DATA_DIR/traces/` (one per user traced
/// before, with nothing to delete them otherwise): when a new trace
/// starts, the oldest ended ones (by their last write) past this many,
/// or past [`TRACE_FILES_KEPT_BYTES_MAX`] together, are deleted first.
/// Running traces' files are never deleted. So the folder holds at most
/// `TRACED_USERS_MAX` running traces (each within its size bound) and
/// these.
pub const TRACE_FILES_KEPT_MAX: usize = 64;

/// The most bytes the ended trace files kept hold together (see
/// [`TRACE_FILES_KEPT_MAX`]).
pub const TRACE_FILES_KEPT_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Entries of `DATA_DIR/traces/` looked at when a new trace starts, at
/// most: bounds the work on the `log` thread (a folder with more, which
/// only something else could have put there, is pruned over several
/// starts).
pub const TRACE_DIR_ENTRIES_SCANNED_MAX: usize = 4_096;

/// A trace's lines gathered before one `write` to its file, at most (the
/// `log` thread also writes them whenever it has drained its queue).
/// With `TRACED_USERS_MAX` it bounds the buffers' memory.
pub const TRACE_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// Cross-shard requests about traced users a home shard times at once
/// (from arrival to its reply going back). More are traced untimed.
pub const TRACE_HOPS_TIMED_MAX: usize = 1_024;

const _: () = assert!(OUTBOX_DEPTH_MAX >= 2 * REQUESTS_IN_FLIGHT_MAX + PEER_MSGS_QUEUED_MAX);
// 9,000: `CONNECTIONS_MAX`'s default (settings.rs), one call in flight each.
const _: () = assert!(REQUESTS_IN_FLIGHT_MAX >= 9_000);
const _: () = assert!(STORAGE_SLACK_MS >= 2 * TICK_MS);
const _: () = assert!(CALL_MARGIN_MS >= STORAGE_SLACK_MS + 2 * TICK_MS);
const _: () = assert!(HEALTH_TIMEOUT_MS > TICK_MS);
const _: () = assert!(STOP_CHECK_MS <= TICK_MS);
const _: () =
    assert!(SHARD_STALL_MS_MAX >= 100 * TICK_MS && WATCHDOG_CHECK_MS < SHARD_STALL_MS_MAX);
const _: () =
    assert!(LOOP_LAG_WARN_MS_DEFAULT > TICK_MS && LOOP_LAG_WARN_MS_DEFAULT < SHARD_STALL_MS_MAX);
const _: () = assert!(LOOP_LAG_QUIET_MS > WATCHDOG_CHECK_MS);
const _: () = assert!(PROCESS_SAMPLE_MS >= WATCHDOG_CHECK_MS);
const _: () = assert!(TOKEN_LOOKUPS_IN_FLIGHT_MAX < STORAGE_QUEUE_DEPTH_MAX);
const _: () =
    assert!(TOKEN_LOOKUP_CHARS_MIN >= 1 && TOKEN_LOOKUP_CHARS_MIN <= TOKEN_LOOKUP_CHARS_MAX);
const _: () = assert!(stop_timeout_ms(5_000) == 14_570);
const _: () = assert!(stop_timeout_ms(STORAGE_TIMEOUT_MS_MAX) < 90_000);
const _: () = assert!(drain_calls_ms(STORAGE_TIMEOUT_MS_MIN) == DRAIN_MS_MAX);
const _: () = assert!(LOG_REPEAT_BURST >= 1 && LOG_REPEAT_MS >= 1_000);
const _: () =
    assert!(TRACE_READ_BYTES_MAX >= (TRACE_LINES_SHOWN_MAX * LOG_LINE_BYTES_MAX / 4) as u64);
const _: () = assert!(TRACE_ACK_TIMEOUT_MS > TICK_MS);
const _: () = assert!(TRACE_FILES_KEPT_MAX < TRACE_DIR_ENTRIES_SCANNED_MAX);

const _: () = assert!(takeover_command_ms(5_000) == 64_570);
const _: () = assert!(takeover_command_ms(STORAGE_TIMEOUT_MS_MAX) < 150_000);

/// How long a cluster node tries to connect to NATS at start before it
/// refuses to start (`cluster::link`); the `switchboard cluster` command
/// uses the same bound.
pub const CLUSTER_CONNECT_MS: u64 = 10_000;

/// Once connected, how long a starting node waits for JetStream (its
/// buckets, the id check and the map; then its first heartbeat, again)
/// before it refuses to start.
pub const CLUSTER_JOIN_MS: u64 = 5_000;

/// How long a stopping node waits to delete its heartbeat (then it
/// expires by itself): inside the stop's close margin
/// (`STOP_CLOSE_MARGIN_MS`), so a NATS that is gone cannot stretch a stop.
pub const CLUSTER_LEAVE_MS: u64 = 500;

/// How often a cluster node writes its heartbeat (`cluster::link`).
pub const CLUSTER_HEARTBEAT_MS: u64 = 1_000;

/// How long a node's heartbeat lives in the nodes bucket (its `max_age`):
/// a node silent this long is gone for the cluster. Five heartbeats, so a
/// NATS hiccup of a few seconds is not a death.
pub const CLUSTER_NODE_TTL_MS: u64 = 5_000;
