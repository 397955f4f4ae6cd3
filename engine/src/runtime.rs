//! One shard's runtime on its executor: the [`Shard`] state machine, the
//! requests this executor is waiting on (as conn shard), the outboxes to
//! the other shards, and the storage jobs in flight.
//!
//! Everything here is single-threaded (`Rc`, `RefCell`, `Cell`): a shard
//! owns its users outright, and other shards reach them only through the
//! mesh. No `RefCell` borrow is held across an `.await`. The one thing
//! shared across threads is each shard's [`RuntimeStats`] (atomic
//! counters, written by their shard only, read by `/metrics` anywhere).
//!
//! Invariants: every input is handled under supervision (a panic costs
//! the input's answer and its user's session, see [`crate::supervise`]);
//! every wait of a conn shard on a home shard has a deadline and removes
//! its `waiting` entry however it ends; a request is sent to a peer only
//! below `REQUESTS_IN_FLIGHT_MAX` in flight there (each counted until its
//! reply or its deadline, whether or not its caller is still there), so
//! its reply always finds room in the peer's outbox (see
//! `limits::OUTBOX_DEPTH_MAX`); every message dropped on a full outbox is
//! counted by kind and logged (rate-limited), and a dropped delivery is
//! followed by a resync of its recipient once the outbox has room.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use glommio::channels::local_channel::{self, LocalSender};
use log::{debug, error, warn};
use switchboard_io::deadline::{self, TimedOut};
use switchboard_shards::model::{
    ErrorCode, EventKind, ReplyTo, Request, Response, ShardId, StorageError, StorageJob, UserId,
};
use switchboard_shards::{home_shard, Input, Output, PeerMsg, Resync, Shard, Stats};
use switchboard_storage::Store;

use crate::limits;
use crate::logger::trace;
use crate::metrics::{self, JobKind, Published, Recorder, Refusal, Series};
use crate::supervise::{self, Faults};

/// `debug!` about `user`: keyed `user=` when `verified` (so it also goes
/// to their trace), `sid_user=` when only a sid claims the user, its home
/// shard not having accepted it (stderr only: a forged sid `42-anything`
/// must not write into user 42's trace).
macro_rules! debug_about {
    ($verified:expr, $user:expr, $($key:ident = $value:expr),+; $($arg:tt)+) => {
        if $verified {
            debug!(user = $user, $($key = $value),+; $($arg)+)
        } else {
            debug!(sid_user = $user, $($key = $value),+; $($arg)+)
        }
    };
}

/// What travels between shards.
#[derive(Debug)]
pub enum MeshMsg {
    /// A request for a user homed on the receiving shard.
    Request { reply: ReplyTo, request: Request },
    /// The answer to a request the receiving shard forwarded.
    Reply { req: u64, response: Response },
    /// Shard-to-shard traffic of the state machine.
    Peer(PeerMsg),
    /// A client connection moving to the receiving shard, the home of the
    /// users its calls are for (see "Connections move home" in
    /// docs/architecture.md).
    Conn(MovedConn),
}

/// A plain TCP client connection handed from one shard to another between
/// two requests: the socket (a duplicate of the sending shard's
/// descriptor, which that shard closed) and where the connection stands.
/// Dropped undelivered (a stopping peer), it closes the socket.
#[derive(Debug)]
pub struct MovedConn {
    /// The socket.
    pub fd: std::os::fd::OwnedFd,
    /// The client's address (for admission and logs).
    pub peer: std::net::SocketAddr,
    /// Where the connection stands (answered before, moves so far).
    pub resume: switchboard_io::Resume,
}

/// A monotonic counter or gauge of one shard: written by that shard's
/// executor only, read from any thread (`/metrics`), so relaxed atomics.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.set(self.get() + n);
    }
}

/// The shard core's counters ([`switchboard_shards::Stats`]), copied at
/// every tick so `/metrics` (served by shard 0) reads every shard's
/// without asking it. At most one tick (50 ms) old.
#[derive(Default, Debug)]
pub struct CoreStats {
    /// Messages stored and delivered (not duplicates).
    pub messages: Counter,
    /// Sends answered from a stored cid.
    pub duplicate_sends: Counter,
    /// Requests answered unavailable: too many storage jobs in flight on the shard.
    pub shed_jobs: Counter,
    /// Storage jobs that failed (timed out included).
    pub storage_failures: Counter,
    /// Tabs detached for the tab timeout.
    pub tab_timeouts: Counter,
    /// Tabs detached because their session had too many.
    pub tab_evictions: Counter,
    /// Deliveries dropped by the receiver's friends-only check.
    pub not_friends_dropped: Counter,
    /// Calls answered rate_limited (429).
    pub rate_limited: Counter,
    /// Typing events that replaced an earlier one from the same user.
    pub typing_coalesced: Counter,
    /// Events dropped from session buffers by their count or byte bound.
    pub events_dropped: Counter,
    /// Timers that fired without their owner (skipped).
    pub stale_timers: Counter,
    /// Duplicate sends delivered because an earlier try of their cid failed.
    pub in_doubt_delivered: Counter,
    /// Cids in doubt dropped at their per-session bound.
    pub in_doubt_dropped: Counter,
    /// Sessions dropped by supervision after a panic.
    pub dropped_users: Counter,
    /// Presence replica entries repaired by a digest (a presence message was lost).
    pub presence_repairs: Counter,
    /// Roster reads dropped because a newer read of the same session was already applied.
    pub stale_roster_reads: Counter,
    /// Cids in doubt kept by the shard because their sender had no live session.
    pub in_doubt_orphaned: Counter,
    /// Live sessions whose tabs a resync reset (a delivery to them was dropped).
    pub resyncs: Counter,
    /// roster-changed calls answered unavailable because an ack never came.
    pub roster_waits_expired: Counter,
    /// Events appended to session buffers (deliveries).
    pub deliveries: Counter,
    /// Messages appended to their recipient's buffer.
    pub messages_delivered: Counter,
    /// Presence changes broadcast by their user's home shard.
    pub presence_changes: Counter,
    /// Held polls ended because their client hung up.
    pub polls_abandoned: Counter,
}

impl CoreStats {
    /// Copies the shard's counters.
    fn copy_from(&self, stats: &Stats) {
        self.messages.set(stats.messages);
        self.duplicate_sends.set(stats.duplicate_sends);
        self.shed_jobs.set(stats.shed_jobs);
        self.storage_failures.set(stats.storage_failures);
        self.tab_timeouts.set(stats.tab_timeouts);
        self.tab_evictions.set(stats.tab_evictions);
        self.not_friends_dropped.set(stats.not_friends_dropped);
        self.rate_limited.set(stats.rate_limited);
        self.typing_coalesced.set(stats.typing_coalesced);
        self.events_dropped.set(stats.events_dropped);
        self.stale_timers.set(stats.stale_timers);
        self.in_doubt_delivered.set(stats.in_doubt_delivered);
        self.in_doubt_dropped.set(stats.in_doubt_dropped);
        self.dropped_users.set(stats.dropped_users);
        self.presence_repairs.set(stats.presence_repairs);
        self.stale_roster_reads.set(stats.stale_roster_reads);
        self.in_doubt_orphaned.set(stats.in_doubt_orphaned);
        self.resyncs.set(stats.resyncs);
        self.roster_waits_expired.set(stats.roster_waits_expired);
        self.deliveries.set(stats.events);
        self.messages_delivered.set(stats.messages_delivered);
        self.presence_changes.set(stats.presence_changes);
        self.polls_abandoned.set(stats.polls_abandoned);
    }
}

/// Counters of the runtime, and a copy of the shard core's.
#[derive(Debug)]
pub struct RuntimeStats {
    /// Requests answered `unavailable` at once because
    /// `REQUESTS_IN_FLIGHT_MAX` were in flight to their home shard (or,
    /// never expected, its outbox was full).
    pub shed_requests: Counter,
    /// Replies dropped on a full outbox (never expected: each fits by the
    /// outbox's sizing, unless it came after its caller's deadline).
    pub dropped_replies: Counter,
    /// Deliveries (`PeerMsg::Deliver`) dropped on a full outbox.
    pub dropped_deliveries: Counter,
    /// `PeerMsg::Resync` messages sent: each resets the tabs of users
    /// whose deliveries were dropped (or of every live session on the peer).
    pub resyncs_sent: Counter,
    /// Resyncs that became owed (a peer owed nothing, then a delivery to
    /// it was dropped): every one is paid by one of `resyncs_sent`, so
    /// the two are equal when nothing is owed (`mesh_quiet`).
    pub resyncs_owed: Counter,
    /// Presence messages dropped on a full outbox (repaired by the
    /// periodic presence digest).
    pub dropped_presence: Counter,
    /// Roster messages (`RosterTouched`, `RosterAck`) dropped on a full
    /// outbox.
    pub dropped_roster: Counter,
    /// Calls answered `unavailable` because the home shard did not answer
    /// by the call's deadline.
    pub call_timeouts: Counter,
    /// Panics caught while handling an input (each cost that input's
    /// answer and its user's session).
    pub panics: Counter,
    /// Storage jobs that timed out.
    pub storage_timeouts: Counter,
    /// Storage jobs submitted whose result (or timeout) is not yet fed
    /// back to the shard. A stopping shard waits for this to reach zero.
    pub storage_jobs_waiting: Counter,
    /// Connections refused at accept for `CONNECTIONS_MAX`.
    pub refused_connections: Counter,
    /// Client connections closed at accept because their address held its
    /// share of `CONNECTIONS_PER_ADDRESS_MAX`.
    pub refused_per_address: Counter,
    /// Open client connections.
    pub connections: Counter,
    /// Client connections this shard handed to their users' home shard.
    pub conns_moved_out: Counter,
    /// Client connections other shards handed to this one.
    pub conns_moved_in: Counter,
    /// Open admin connections (shard 0 only).
    pub admin_connections: Counter,
    /// Connections closed before they were served, by
    /// [`Refusal`](crate::metrics::Refusal) (in `Refusal::ALL` order).
    pub refused: [Counter; Refusal::ALL.len()],
    /// Requests answered on this conn shard, by endpoint and outcome
    /// ([`metrics::request_index`]).
    pub requests: Box<[Counter]>,
    /// This shard's latency histograms as of its last tick, by
    /// [`Series`] ([`metrics::Recorder::publish`]).
    pub histograms: Box<[Published]>,
    /// How late this shard's last tick fired, in microseconds.
    pub loop_lag_last_us: Counter,
    /// When this shard's last tick ran (its clock's ms): a conn shard
    /// whose call timed out tells from it whether the home shard is stuck.
    pub last_tick_ms: Counter,
    /// The mesh as this shard sees it, by peer (its own index unused).
    pub peers: Box<[PeerStats]>,
    /// The shard core's counters, as of its last tick.
    pub core: CoreStats,
}

/// One shard's traffic with one peer. Each count is written by this
/// shard only; a pair's queue depth is what one side sent less what the
/// other received.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Messages this shard put in its outbox to the peer.
    pub queued: Counter,
    /// Messages this shard received from the peer (and handled).
    pub received: Counter,
    /// Messages to the peer dropped on a full outbox, by [`Dropped`]
    /// kind (reply, delivery, presence, roster).
    pub dropped: [Counter; 4],
}

impl RuntimeStats {
    /// Zeroed stats of a shard in a process of `shards` shards.
    pub fn new(shards: usize) -> RuntimeStats {
        RuntimeStats {
            shed_requests: Counter::default(),
            dropped_replies: Counter::default(),
            dropped_deliveries: Counter::default(),
            resyncs_sent: Counter::default(),
            resyncs_owed: Counter::default(),
            dropped_presence: Counter::default(),
            dropped_roster: Counter::default(),
            call_timeouts: Counter::default(),
            panics: Counter::default(),
            storage_timeouts: Counter::default(),
            storage_jobs_waiting: Counter::default(),
            refused_connections: Counter::default(),
            conns_moved_out: Counter::default(),
            conns_moved_in: Counter::default(),
            refused_per_address: Counter::default(),
            connections: Counter::default(),
            admin_connections: Counter::default(),
            refused: Default::default(),
            requests: metrics::request_counters(),
            histograms: metrics::published_series(),
            loop_lag_last_us: Counter::default(),
            last_tick_ms: Counter::default(),
            peers: (0..shards).map(|_| PeerStats::default()).collect(),
            core: CoreStats::default(),
        }
    }

    /// Counts a connection closed before it was served.
    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].add(1);
    }
}

/// Every shard's [`RuntimeStats`], in shard order, and which one is this
/// shard's (what it dereferences to).
#[derive(Clone, Debug)]
pub struct StatsSlot {
    /// Every shard's stats.
    all: Arc<[RuntimeStats]>,
    /// This shard's index in `all`.
    shard: ShardId,
}

impl StatsSlot {
    /// Stats for `shards` shards, one slot each.
    pub fn for_shards(shards: usize) -> Arc<[RuntimeStats]> {
        (0..shards).map(|_| RuntimeStats::new(shards)).collect()
    }

    /// Every shard's stats, in shard order.
    pub fn all(&self) -> &[RuntimeStats] {
        &self.all
    }
}

impl Deref for StatsSlot {
    type Target = RuntimeStats;

    fn deref(&self) -> &RuntimeStats {
        &self.all[self.shard]
    }
}

/// The bounds of one shard's outboxes (`limits.rs`; scaled down for tests
/// by [`Faults::outbox_depth`]).
#[derive(Clone, Copy, Debug)]
pub struct MeshBounds {
    /// Messages one outbox holds.
    pub outbox_depth_max: usize,
    /// Requests in flight to one peer.
    pub requests_in_flight_max: usize,
    /// Peer messages are queued only below this many messages queued.
    pub peer_msgs_queued_max: usize,
}

impl MeshBounds {
    /// The limits' bounds, or ones scaled to an outbox of `depth` (a
    /// quarter of it for each side's requests in flight, the rest for
    /// peer messages).
    pub fn new(depth: Option<usize>) -> MeshBounds {
        match depth {
            None => MeshBounds {
                outbox_depth_max: limits::OUTBOX_DEPTH_MAX,
                requests_in_flight_max: limits::REQUESTS_IN_FLIGHT_MAX,
                peer_msgs_queued_max: limits::PEER_MSGS_QUEUED_MAX,
            },
            Some(depth) => {
                assert!(
                    depth >= 4,
                    "an outbox of {depth} has no room for its shares"
                );
                let in_flight = depth / 4;
                MeshBounds {
                    outbox_depth_max: depth,
                    requests_in_flight_max: in_flight,
                    peer_msgs_queued_max: depth - 2 * in_flight,
                }
            }
        }
    }
}

/// What a full outbox dropped, for counting and logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    Reply,
    Delivery,
    Presence,
    Roster,
}

impl Dropped {
    /// What kind of peer message `msg` is. Presence and anything else
    /// about presence (the digest) count as presence.
    fn of(msg: &PeerMsg) -> Dropped {
        match msg {
            PeerMsg::Deliver { .. } => Dropped::Delivery,
            PeerMsg::RosterTouched { .. } | PeerMsg::RosterAck { .. } => Dropped::Roster,
            _ => Dropped::Presence,
        }
    }

    /// Every kind, in index order (`kind as usize`).
    pub const ALL: [Dropped; 4] = [
        Dropped::Reply,
        Dropped::Delivery,
        Dropped::Presence,
        Dropped::Roster,
    ];

    /// Its name (the `kind` label).
    pub fn name(self) -> &'static str {
        match self {
            Dropped::Reply => "reply",
            Dropped::Delivery => "delivery",
            Dropped::Presence => "presence",
            Dropped::Roster => "roster",
        }
    }
}

/// The resync one shard owes one peer: the users homed there whose
/// deliveries it dropped, at most `RESYNC_USERS_MAX`; past that, every
/// live session there.
#[derive(Debug, Default)]
struct Owed {
    /// The users, by id.
    users: BTreeSet<UserId>,
    /// More than `RESYNC_USERS_MAX` were owed: resync every live session.
    all: bool,
}

impl Owed {
    /// Notes that a delivery to `user` was dropped.
    fn add(&mut self, user: UserId) {
        if self.all {
            return;
        }
        self.users.insert(user);
        if self.users.len() > limits::RESYNC_USERS_MAX {
            self.users.clear();
            self.all = true;
        }
    }

    /// The message that pays it, if anything is owed; leaves it owed.
    fn message(&self) -> Option<PeerMsg> {
        let who = if self.all {
            Resync::All
        } else if self.users.is_empty() {
            return None;
        } else {
            Resync::Users(self.users.iter().copied().collect())
        };
        Some(PeerMsg::Resync { who })
    }
}

/// Whether nothing is in flight between any two shards: every message a
/// shard queued to a peer was received and handled there. Reads every
/// `received` before any `queued`, and a message is counted received only
/// once handled, after what it caused was queued: so a message in flight
/// at any moment of the reading, or caused by one handled meanwhile, makes
/// some pair differ. Once every shard is frozen, past its connections and
/// storage jobs, and owes no resync, nothing starts new traffic, and a
/// `true` stays true.
///
/// Resyncs owed are counted the same way: one becomes owed (counted)
/// while a message is handled, before that message is counted received;
/// it is paid (counted sent) after its `Resync` was queued. Effects are
/// read before causes: resyncs paid, then messages received, then resyncs
/// owed, then messages queued.
///
/// Returns the counters read when quiet (`None` otherwise), storage jobs
/// waiting included (all zero when quiet): a hand-over's settle takes two
/// equal quiet readings in a row (`stop::settle_shard`), so that a job
/// started and a message sent between the reads of one reading, or a
/// message handled by a shard that has not frozen yet, cannot pass.
pub fn mesh_quiet(all: &[RuntimeStats]) -> Option<Vec<u64>> {
    let n = all.len();
    let paid: Vec<u64> = all.iter().map(|s| s.resyncs_sent.get()).collect();
    let received: Vec<u64> = (0..n * n)
        .map(|k| all[k / n].peers[k % n].received.get())
        .collect();
    let jobs: u64 = all.iter().map(|s| s.storage_jobs_waiting.get()).sum();
    let owed: Vec<u64> = all.iter().map(|s| s.resyncs_owed.get()).collect();
    let queued: Vec<u64> = (0..n * n)
        .map(|k| all[k % n].peers[k / n].queued.get())
        .collect();
    let pairs_equal = (0..n * n).all(|k| k / n == k % n || queued[k] == received[k]);
    if !(owed == paid && jobs == 0 && pairs_equal) {
        return None;
    }
    Some([paid, received, owed, queued].concat())
}

/// The clock every shard reads: unix milliseconds, but advancing with the
/// monotonic clock so deadlines never go backwards.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_unix_ms: u64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let base_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        Clock {
            base_unix_ms,
            base: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// One executor's shard and its plumbing.
pub struct ShardRuntime {
    /// This shard's index (= its mesh peer id).
    pub id: ShardId,
    /// How many shards there are.
    pub count: usize,
    /// The state machine. Borrowed only inside [`ShardRuntime::feed`].
    shard: RefCell<Shard>,
    /// Requests this shard (as conn shard) waits on, by request number.
    /// An entry goes when its answer comes, its deadline passes or its
    /// caller goes (the [`Waiting`] guard).
    waiting: RefCell<HashMap<u64, oneshot::Sender<Response>>>,
    next_req: Cell<u64>,
    /// Outboxes to the other shards (`None` at our own index), each held
    /// to `bounds.outbox_depth_max` by [`ShardRuntime::enqueue`]; a
    /// task per peer drains each into the mesh.
    outboxes: Vec<Option<LocalSender<MeshMsg>>>,
    /// Requests sent to each peer and not yet answered (held polls
    /// included), counted until the reply arrives or the deadline passes,
    /// even when the caller went first.
    in_flight: RefCell<InFlight>,
    /// The outboxes' bounds.
    bounds: MeshBounds,
    /// Test-only faults (all off outside the engine's tests).
    pub faults: Faults,
    /// Storage.
    pub store: Store,
    /// Deadline of each storage job.
    pub storage_timeout: Duration,
    pub clock: Clock,
    /// This shard's counters (and every other shard's, for `/metrics`).
    pub stats: StatsSlot,
    /// `owed[peer]`: users homed on `peer` whose deliveries were dropped
    /// on the outbox to it, owed a `PeerMsg::Resync` once it has room
    /// (checked every tick).
    owed: RefCell<Vec<Owed>>,
    /// Deliveries the `drop_deliveries` fault has dropped so far.
    fault_dropped: Cell<u64>,
    /// Ticks are no longer fed to the shard (a hand-over settles).
    frozen: Cell<bool>,
    /// Cross-shard requests about traced users this shard (as home shard)
    /// is answering, to time each hop (see [`TracedHops`]).
    traced_hops: RefCell<TracedHops>,
    /// Reused output buffer (taken while feeding).
    outputs: RefCell<Vec<Output>>,
    /// This shard's latency histograms since its last tick (published at
    /// each tick into `stats.histograms`). Borrowed only to record or
    /// publish, never across an `.await`.
    recorder: RefCell<Recorder>,
    /// Connections moved here from other shards, for the engine's task
    /// that serves them ([`ShardRuntime::moved_conns`]).
    moved_in: local_channel::LocalSender<MovedConn>,
    /// The receiving end, until the engine takes it.
    moved_rx: RefCell<Option<local_channel::LocalReceiver<MovedConn>>>,
}

/// What [`ShardRuntime::new`] needs besides the shard.
pub struct RuntimeParts {
    pub store: Store,
    /// Deadline of each storage job.
    pub storage_timeout: Duration,
    pub clock: Clock,
    /// Every shard's stats (this shard's slot is its index).
    pub stats: Arc<[RuntimeStats]>,
    pub faults: Faults,
}

impl ShardRuntime {
    /// Builds the runtime; returns it with the receiving ends of the
    /// outboxes, which the caller drains into the mesh.
    pub fn new(
        shard: Shard,
        parts: RuntimeParts,
    ) -> (
        Rc<ShardRuntime>,
        Vec<(ShardId, local_channel::LocalReceiver<MeshMsg>)>,
    ) {
        let id = shard.config().shard;
        let count = shard.config().shard_count;
        let bounds = MeshBounds::new(parts.faults.outbox_depth);
        let mut outboxes = Vec::with_capacity(count);
        let mut receivers = Vec::new();
        for peer in 0..count {
            if peer == id {
                outboxes.push(None);
            } else {
                // Unbounded, held to `outbox_depth_max` by `enqueue`: a
                // bounded channel allocates its whole depth at start (7 MiB
                // of `MeshMsg` at the default), and as its ring turns every
                // slot becomes resident. This one grows to the deepest the
                // outbox has been.
                let (tx, rx) = local_channel::new_unbounded();
                outboxes.push(Some(tx));
                receivers.push((peer, rx));
            }
        }
        let (moved_in, moved_rx) = local_channel::new_unbounded();
        let rt = Rc::new(ShardRuntime {
            moved_in,
            moved_rx: RefCell::new(Some(moved_rx)),
            id,
            count,
            shard: RefCell::new(shard),
            waiting: RefCell::new(HashMap::new()),
            next_req: Cell::new(0),
            outboxes,
            in_flight: RefCell::new(InFlight::new(count)),
            bounds,
            faults: parts.faults,
            store: parts.store,
            storage_timeout: parts.storage_timeout,
            clock: parts.clock,
            stats: StatsSlot {
                all: parts.stats,
                shard: id,
            },
            owed: RefCell::new((0..count).map(|_| Owed::default()).collect()),
            fault_dropped: Cell::new(0),
            frozen: Cell::new(false),
            traced_hops: RefCell::new(TracedHops::default()),
            outputs: RefCell::new(Vec::new()),
            recorder: RefCell::new(Recorder::default()),
        });
        (rt, receivers)
    }

    /// The connections other shards move here, in arrival order: taken
    /// once, by the task that serves them.
    pub fn moved_conns(&self) -> Option<local_channel::LocalReceiver<MovedConn>> {
        self.moved_rx.borrow_mut().take()
    }

    /// Whether the outbox to `to` has room for a moving connection: at
    /// most half full, so moves never take the room replies and admitted
    /// requests are promised (`MeshBounds`).
    pub fn can_move_to(&self, to: ShardId) -> bool {
        to != self.id && to < self.count && self.outbox_len(to) < self.bounds.outbox_depth_max / 2
    }

    /// Sends a connection to shard `to` (checked with
    /// [`ShardRuntime::can_move_to`] first). A full outbox (which the
    /// check rules out) drops it, closing its socket between two
    /// requests, as an idle keep-alive close would.
    pub fn move_conn(&self, to: ShardId, conn: MovedConn) {
        match self.enqueue(to, MeshMsg::Conn(conn)) {
            Ok(()) => self.stats.conns_moved_out.add(1),
            Err(e) => warn!(shard = self.id; "a connection moving to shard-{to} was closed: {e}"),
        }
    }

    /// Reads the shard's state (for health and metrics). Never held across
    /// an await.
    pub fn with_shard<R>(&self, f: impl FnOnce(&Shard) -> R) -> R {
        f(&self.shard.borrow())
    }

    /// The shard that owns `user`: the routing decision of the engine's
    /// side, the same as the shard core's (`switchboard_shards::Config::home`).
    pub fn home(&self, user: UserId) -> ShardId {
        home_shard(user, self.count)
    }

    /// How long the engine waits for a storage job: storage's own
    /// deadline plus `STORAGE_SLACK_MS`, so storage answers first.
    pub fn storage_patience(&self) -> Duration {
        self.storage_timeout + Duration::from_millis(limits::STORAGE_SLACK_MS)
    }

    /// How long a conn shard waits for the answer to `request`.
    fn call_patience(&self, request: &Request) -> Duration {
        let margin = Duration::from_millis(limits::CALL_MARGIN_MS);
        match request {
            Request::Poll { wait_ms, .. } => {
                let wait_ms = (*wait_ms).min(switchboard_shards::limits::POLL_WAIT_MS_MAX);
                Duration::from_millis(wait_ms) + margin
            }
            // The roster re-read, then every shard's re-reads.
            Request::RosterChanged { .. } => 2 * self.storage_patience() + margin,
            _ => self.storage_patience() + margin,
        }
    }

    /// Feeds one input to the state machine and carries out what it asks.
    /// Each tick also pays the resyncs owed to peers whose outbox has room.
    pub fn feed(self: &Rc<Self>, input: Input) {
        let tick = matches!(input, Input::Tick);
        self.feed_all(input);
        if tick {
            self.in_flight.borrow_mut().sweep(self.clock.now_ms());
            self.traced_hops
                .borrow_mut()
                .sweep(Instant::now(), trace::any());
            self.pay_resyncs();
            self.with_shard(|shard| self.stats.core.copy_from(shard.stats()));
            self.recorder.borrow_mut().publish(&self.stats.histograms);
        }
    }

    /// Records one observation of `series` on this shard (published at
    /// the next tick).
    pub fn record(&self, series: Series, took: Duration) {
        self.recorder.borrow_mut().record(series, took);
    }

    /// Counts and times a request answered on this conn shard (see
    /// `io::Handler::answered`): polls are timed apart, and a request
    /// that could not be read is counted, not timed.
    pub fn answered(
        &self,
        endpoint: switchboard_io::Endpoint,
        outcome: switchboard_io::Outcome,
        took: Option<Duration>,
    ) {
        self.stats.requests[metrics::request_index(endpoint, outcome)].add(1);
        if let Some(took) = took {
            let series = match endpoint {
                switchboard_io::Endpoint::Poll => Series::Poll,
                e => Series::Request(e),
            };
            self.record(series, took);
        }
    }

    /// Stops feeding ticks to the shard (a hand-over settles: its timers
    /// fall due in the process taking over, at the same wall-clock time).
    /// Resyncs owed are still paid on each tick.
    pub fn freeze(&self) {
        self.frozen.set(true);
    }

    /// Whether [`ShardRuntime::freeze`] was called.
    pub fn is_frozen(&self) -> bool {
        self.frozen.get()
    }

    /// One tick: fed to the shard, or, once frozen, only the resyncs owed
    /// paid.
    pub fn tick(self: &Rc<Self>) {
        if self.frozen.get() {
            self.pay_resyncs();
        } else {
            self.feed(Input::Tick);
        }
    }

    /// The shard's whole state, serialised for a hand-over
    /// (`handover.rs`), and its sessions and tabs.
    pub fn snapshot(&self) -> Result<(Vec<u8>, usize, usize), String> {
        let shard = self.shard.borrow();
        let bytes = serde_json::to_vec(&*shard).map_err(|e| e.to_string())?;
        Ok((bytes, shard.session_count(), shard.tab_count()))
    }

    /// Sends each peer the `PeerMsg::Resync` owed to it, if its outbox
    /// holds fewer than `peer_msgs_queued_max` (what is owed stays owed
    /// otherwise, for the next tick).
    fn pay_resyncs(&self) {
        let mut owed = self.owed.borrow_mut();
        for (peer, o) in owed.iter_mut().enumerate() {
            let Some(msg) = o.message() else {
                continue;
            };
            let outbox = self.outbox(peer);
            if outbox.len() >= self.bounds.peer_msgs_queued_max {
                continue;
            }
            if self.enqueue(peer, MeshMsg::Peer(msg)).is_ok() {
                *o = Owed::default();
                self.stats.resyncs_sent.add(1);
            }
        }
    }

    /// Feeds `input`, then the failures of storage jobs that could not
    /// start, until none is left.
    fn feed_all(self: &Rc<Self>, input: Input) {
        let mut queue = vec![input];
        while let Some(input) = queue.pop() {
            let mut outputs = std::mem::take(&mut *self.outputs.borrow_mut());
            let now = self.clock.now_ms();
            for job in self.handle(now, input, &mut outputs) {
                queue.push(Input::Storage {
                    job,
                    result: Err(StorageError::Backend(
                        "not started: the shard failed while asking for it".into(),
                    )),
                });
            }
            for output in outputs.drain(..) {
                match output {
                    Output::Reply { to, response } => self.deliver_reply(to, response),
                    Output::Peer { shard, msg } => self.send_peer(shard, msg),
                    Output::Storage { job, request } => {
                        if let Err(e) = self.start_job(job, request) {
                            queue.push(Input::Storage {
                                job,
                                result: Err(e),
                            });
                        }
                    }
                    // The core's copy of the traced set may outlive a
                    // trace the engine ended (its size bound): the
                    // registry decides.
                    Output::Trace { user, note } => {
                        if trace::is_traced(user) {
                            debug!(
                                target: "switchboard_shards::trace",
                                user, shard = self.id;
                                "{note}"
                            );
                        }
                    }
                }
            }
            *self.outputs.borrow_mut() = outputs;
        }
    }

    /// `Shard::handle` under supervision. On a panic, what it produced is
    /// discarded (it came from half-changed state); its user's session is
    /// dropped (`Shard::drop_user`); the request the input was to answer
    /// (`Shard::unanswered`: the request itself, or the one waiting on a
    /// storage result) is answered `unavailable`, a send's try counted as
    /// failed so its retry delivers (`Shard::answer_after_panic`); their
    /// outputs are carried out; and the discarded storage jobs are
    /// returned, to be fed back as failed (the shard registered them). A
    /// panic while dropping the user or answering leaves the shard
    /// unusable: the process exits.
    fn handle(&self, now: u64, input: Input, out: &mut Vec<Output>) -> Vec<u64> {
        let kind = input_kind(&input);
        let (user, unanswered) = {
            let shard = self.shard.borrow();
            (shard.user_of(&input), shard.unanswered(&input))
        };
        let handled = supervise::supervised(|| self.shard.borrow_mut().handle(now, input, out));
        if handled.is_ok() {
            return Vec::new();
        }
        self.stats.panics.add(1);
        let id = self.id;
        // The input's user, and the user whose state it was changing when
        // it panicked (a tick's timer, a presence event, ...), if another.
        let working = self.shard.borrow().working_on();
        let users: Vec<UserId> = match (user, working) {
            (Some(a), Some(b)) if a != b => vec![a, b],
            (a, b) => a.or(b).into_iter().collect(),
        };
        // A panic that repeats on every tick does not flood the log: the
        // logger limits repeats per call site.
        let panics = self.stats.panics.get();
        match users[..] {
            [] => error!(
                shard = id;
                "shard-{id}: handling {kind} panicked ({panics} panics in all)"
            ),
            [user] => error!(
                user, shard = id;
                "shard-{id}: handling {kind} for user {user} panicked: dropping that session \
                 ({panics} panics in all)"
            ),
            [user, other, ..] => error!(
                user, other, shard = id;
                "shard-{id}: handling {kind} for user {user} and {other} panicked: dropping \
                 those sessions ({panics} panics in all)"
            ),
        }
        let jobs = out
            .drain(..)
            .filter_map(|o| match o {
                Output::Storage { job, .. } => Some(job),
                Output::Reply { .. } | Output::Peer { .. } | Output::Trace { .. } => None,
            })
            .collect();
        let repaired = supervise::supervised(|| {
            let mut shard = self.shard.borrow_mut();
            for &user in &users {
                shard.drop_user(now, user, out);
            }
            if let Some(u) = unanswered {
                shard.answer_after_panic(u, out);
            }
        });
        if repaired.is_err() {
            supervise::fatal(format_args!(
                "shard-{id}: repairing after a panic (users {users:?}) panicked too: the shard is unusable"
            ));
        }
        jobs
    }

    /// Handles a message from another shard.
    pub fn on_mesh(self: &Rc<Self>, from: ShardId, msg: MeshMsg) {
        self.handle_mesh(from, msg);
        // Counted once handled, after what it caused was queued: a
        // hand-over's settle (`mesh_quiet`) relies on it.
        self.stats.peers[from].received.add(1);
    }

    fn handle_mesh(self: &Rc<Self>, from: ShardId, msg: MeshMsg) {
        match msg {
            MeshMsg::Request { reply, request } => {
                if let Some(user) = request.home_user().filter(|&u| trace::is_traced(u)) {
                    let now = Instant::now();
                    let hop = Hop {
                        arrived: now,
                        until: now + self.call_patience(&request),
                        name: request.name(),
                        user,
                        claimed: request.user_is_claimed(),
                    };
                    self.traced_arrival(from, reply, hop);
                }
                self.feed(Input::Request { reply, request })
            }
            MeshMsg::Reply { req, response } => self.complete(req, response),
            MeshMsg::Conn(conn) => {
                // Unbounded, but fed only by the bounded mesh. Once the
                // serving task is gone (a stopping shard), the connection
                // is dropped here and its socket closed.
                if self.moved_in.try_send(conn).is_ok() {
                    self.stats.conns_moved_in.add(1);
                }
            }
            MeshMsg::Peer(p) => {
                if let PeerMsg::Deliver {
                    to,
                    from: user,
                    kind,
                } = &p
                {
                    if trace::is_traced(*user) {
                        debug!(
                            user = *user, shard = self.id;
                            "delivery of a {} to user {to}: arrived from shard-{from} (the mesh hop in)",
                            kind.name()
                        );
                    }
                }
                self.feed(Input::Peer(p))
            }
        }
    }

    /// A request about a traced user came from shard `from`: noted (about
    /// `sid_user=` while only its sid claims the user), and timed until
    /// its reply goes back (or its conn shard stops waiting).
    fn traced_arrival(&self, from: ShardId, reply: ReplyTo, hop: Hop) {
        let name = hop.name;
        debug_about!(
            !hop.claimed, hop.user, shard = self.id, req = reply.req;
            "{name}: arrived from conn shard-{from} (the mesh hop in)"
        );
        self.traced_hops.borrow_mut().arrived(reply, hop);
    }

    fn deliver_reply(&self, to: ReplyTo, response: Response) {
        if to.shard == self.id {
            self.complete(to.req, response);
            return;
        }
        let hop = self.traced_hops.borrow_mut().departed(to);
        if let Some(Hop {
            arrived,
            name,
            user,
            claimed,
            ..
        }) = hop
        {
            // The sid was checked by now: `user=` if it was accepted.
            debug_about!(
                !claimed || sid_accepted(&response), user, shard = self.id, req = to.req;
                "{name}: {} after {} µs on this home shard, back to conn shard-{}",
                outcome(&response),
                arrived.elapsed().as_micros(),
                to.shard
            );
        }
        let msg = MeshMsg::Reply {
            req: to.req,
            response,
        };
        if self.enqueue(to.shard, msg).is_err() {
            self.dropped(to.shard, Dropped::Reply);
        }
    }

    /// Queues a peer message while the outbox holds fewer than
    /// `peer_msgs_queued_max`, so replies and admitted requests keep their
    /// room; otherwise drops it, counted by kind. A dropped delivery of a
    /// message or read receipt makes its recipient owed a resync (paid on
    /// a tick once the outbox has room): their tabs reload from history,
    /// so what was acknowledged still reaches them.
    fn send_peer(&self, shard: ShardId, msg: PeerMsg) {
        if let PeerMsg::Deliver {
            to,
            from: user,
            kind,
        } = &msg
        {
            if trace::is_traced(*user) {
                debug!(
                    user = *user, shard = self.id;
                    "delivery of a {} to user {to}: sent to its home shard-{shard} (the mesh hop out)",
                    kind.name()
                );
            }
        }
        let outbox = self.outbox(shard);
        let kind = Dropped::of(&msg);
        let recipient = match &msg {
            PeerMsg::Deliver {
                to,
                kind: EventKind::Message(_) | EventKind::Read { .. },
                ..
            } => Some(*to),
            _ => None,
        };
        if recipient.is_some() && self.fault_drops_delivery()
            || outbox.len() >= self.bounds.peer_msgs_queued_max
            || self.enqueue(shard, MeshMsg::Peer(msg)).is_err()
        {
            self.dropped(shard, kind);
            if let Some(user) = recipient {
                let mut owed = self.owed.borrow_mut();
                if owed[shard].message().is_none() {
                    self.stats.resyncs_owed.add(1);
                }
                owed[shard].add(user);
            }
        }
    }

    /// Whether the `drop_deliveries` fault drops this delivery (test-only).
    fn fault_drops_delivery(&self) -> bool {
        let Some(n) = self.faults.drop_deliveries else {
            return false;
        };
        let dropped = self.fault_dropped.get();
        if dropped >= n {
            return false;
        }
        self.fault_dropped.set(dropped + 1);
        true
    }

    fn outbox(&self, shard: ShardId) -> &LocalSender<MeshMsg> {
        self.outboxes[shard].as_ref().expect("no outbox to self")
    }

    /// Puts `msg` in the outbox to `shard` without waiting, counting it
    /// (`PeerStats::queued`) when it fits; else says why not.
    fn enqueue(&self, shard: ShardId, msg: MeshMsg) -> Result<(), String> {
        let outbox = self.outbox(shard);
        let depth = outbox.len();
        if depth >= self.bounds.outbox_depth_max {
            return Err(format!("outbox full ({depth} messages)"));
        }
        outbox.try_send(msg).map_err(|e| e.to_string())?;
        self.stats.peers[shard].queued.add(1);
        Ok(())
    }

    /// Messages in the outbox to `peer` now.
    pub fn outbox_len(&self, peer: ShardId) -> usize {
        self.outboxes[peer].as_ref().map_or(0, |o| o.len())
    }

    /// Counts a message dropped on the outbox to `shard` and logs it (the
    /// logger limits repeats per call site: one per kind).
    fn dropped(&self, shard: ShardId, kind: Dropped) {
        let counter = match kind {
            Dropped::Reply => &self.stats.dropped_replies,
            Dropped::Delivery => &self.stats.dropped_deliveries,
            Dropped::Presence => &self.stats.dropped_presence,
            Dropped::Roster => &self.stats.dropped_roster,
        };
        counter.add(1);
        self.stats.peers[shard].dropped[kind as usize].add(1);
        let (id, all) = (self.id, counter.get());
        match kind {
            Dropped::Reply => error!(
                shard = id;
                "shard-{id}: outbox to shard-{shard} full: dropped a reply ({all} in all)"
            ),
            Dropped::Delivery => error!(
                shard = id;
                "shard-{id}: outbox to shard-{shard} full: dropped a delivery ({all} in all)"
            ),
            Dropped::Presence => error!(
                shard = id;
                "shard-{id}: outbox to shard-{shard} full: dropped a presence message ({all} in all)"
            ),
            Dropped::Roster => error!(
                shard = id;
                "shard-{id}: outbox to shard-{shard} full: dropped a roster message ({all} in all)"
            ),
        }
    }

    fn complete(&self, req: u64, response: Response) {
        self.in_flight.borrow_mut().end(req);
        // Bound first: the borrow ends before the send wakes the caller.
        let waiter = self.waiting.borrow_mut().remove(&req);
        if let Some(tx) = waiter {
            // The caller may have gone (connection closed): nothing to do.
            let _ = tx.send(response);
        }
    }

    /// Starts a storage job; its result is fed back when it completes or
    /// the engine's timer for it fires (`STORAGE_SLACK_MS` after storage's
    /// own deadline, so storage normally answers `TimedOut` first).
    ///
    /// A job's failure is logged once, by storage (which knows where it
    /// waited: see `switchboard_storage`'s forensics), not here; this
    /// times it (`Series::Job`) and counts its timeouts.
    fn start_job(self: &Rc<Self>, job: u64, request: StorageJob) -> Result<(), StorageError> {
        let submitted = Instant::now();
        let deadline = submitted + self.storage_timeout;
        let what = request.name();
        let kind = JobKind::of(&request);
        let user = request.user();
        let pending = self.store.submit(request, deadline)?;
        let rt = self.clone();
        let patience = self.storage_patience();
        let waiting = &self.stats.storage_jobs_waiting;
        waiting.add(1);
        let shard = self.id;
        debug!(user, shard, job; "storage job {what} submitted");
        glommio::spawn_local(async move {
            let result = deadline::within(glommio::timer::sleep(patience), pending)
                .await
                .unwrap_or(Err(StorageError::TimedOut));
            let took = submitted.elapsed();
            rt.record(Series::Job(kind), took);
            let ms = took.as_secs_f64() * 1e3;
            match &result {
                Ok(_) => debug!(user, shard, job; "storage job {what} done in {ms:.3} ms"),
                Err(e) => debug!(user, shard, job; "storage job {what} failed in {ms:.3} ms: {e}"),
            }
            if result == Err(StorageError::TimedOut) {
                rt.stats.storage_timeouts.add(1);
            }
            rt.feed(Input::Storage { job, result });
            let waiting = &rt.stats.storage_jobs_waiting;
            waiting.set(waiting.get() - 1);
        })
        .detach();
        Ok(())
    }

    /// Sends `request` to `shard` (this one or a peer) and waits for the
    /// answer, at most its deadline (`CALL_MARGIN_MS` past what the home
    /// shard should take). A peer with `REQUESTS_IN_FLIGHT_MAX` requests
    /// in flight sheds it with `unavailable` at once; a deadline passed
    /// answers `unavailable` too. The waiting entry goes however this ends
    /// (even when the caller drops this future).
    pub async fn call_on(self: &Rc<Self>, shard: ShardId, request: Request) -> Response {
        let busy = || Response::fail(ErrorCode::Unavailable, "server busy: try again");
        let remote = shard != self.id;
        if remote && self.in_flight(shard) >= self.bounds.requests_in_flight_max {
            self.stats.shed_requests.add(1);
            return busy();
        }
        let patience = self.call_patience(&request);
        let name = request.name();
        let started = Instant::now();
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let (tx, rx) = oneshot::channel();
        let _waiting = Waiting::register(self, req, tx);
        // A held poll whose caller goes first (io saw its client hang up)
        // is ended on its home shard at once, not when its wait runs out.
        let held = matches!(&request, Request::Poll { wait_ms, .. } if *wait_ms > 0);
        let reply = ReplyTo {
            shard: self.id,
            req,
        };
        let request_sid = match &request {
            Request::Poll { sid, .. } => Some(*sid),
            _ => None,
        };
        let user = request.home_user();
        // Until the home shard accepts the sid, its user is only claimed:
        // lines about it say `sid_user=` (see `debug_about!`).
        let claimed = request.user_is_claimed();
        // A traced user's request is timed and its hops noted; nobody
        // else's (one relaxed load while nobody is traced).
        let traced = user
            .filter(|&u| trace::is_traced(u))
            .map(|u| (u, Instant::now()));
        let id = self.id;
        if !remote {
            self.feed(Input::Request { reply, request });
        } else if let Err(e) = self.enqueue(shard, MeshMsg::Request { reply, request }) {
            // Never expected: the in-flight bound keeps room for requests.
            self.stats.shed_requests.add(1);
            error!(shard = id, req; "shard-{id}: outbox to shard-{shard} full, request shed: {e}");
            return busy();
        } else {
            let deadline_ms = self.clock.now_ms() + patience.as_millis() as u64;
            self.in_flight.borrow_mut().start(req, shard, deadline_ms);
            if let Some((user, _)) = traced {
                debug_about!(
                    !claimed, user, shard = id, req = req;
                    "{name}: sent to home shard-{shard} (the mesh hop out)"
                );
            }
        }
        // A held poll whose caller goes first (io saw its client hang up)
        // is ended on its home shard at once, not when its wait runs out.
        let mut abandoned = match (held, request_sid) {
            (true, Some(sid)) => Some(Abandoned {
                rt: self.clone(),
                shard,
                sid,
                held: reply,
            }),
            _ => None,
        };
        // `reached`: the home shard answered (and so checked the sid).
        let answered = deadline::within(glommio::timer::sleep(patience), rx).await;
        if let Some(a) = abandoned.take() {
            a.disarm();
        }
        let (response, reached) = match answered {
            Ok(Ok(response)) => (response, true),
            Ok(Err(oneshot::Canceled)) => (
                Response::fail(ErrorCode::Unavailable, "request dropped: try again"),
                false,
            ),
            Err(TimedOut) => {
                self.stats.call_timeouts.add(1);
                let late = Late {
                    what: name,
                    home: shard,
                    waited: started.elapsed(),
                    patience,
                };
                let line = self.late_call_line(&late, user);
                let all = self.stats.call_timeouts.get();
                match user {
                    Some(sid_user) if claimed => {
                        warn!(sid_user, shard = id, req; "shard-{id}: {line} ({all} in all)")
                    }
                    Some(user) => warn!(user, shard = id, req; "shard-{id}: {line} ({all} in all)"),
                    None => warn!(shard = id, req; "shard-{id}: {line} ({all} in all)"),
                }
                (
                    Response::fail(
                        ErrorCode::Unavailable,
                        "no answer from the home shard: try again",
                    ),
                    false,
                )
            }
        };
        if let Some((user, started)) = traced {
            let path = if remote {
                format!("home shard-{shard}, a round trip over the mesh")
            } else {
                "home shard is this conn shard, no hop".to_string()
            };
            debug_about!(
                !claimed || reached && sid_accepted(&response), user, shard = id, req = req;
                "{name}: {} in {} µs ({path})",
                outcome(&response),
                started.elapsed().as_micros()
            );
        }
        response
    }

    /// The forensics of a call past its deadline (see [`Late`]): what it
    /// waited for, where, and how long, with what the conn shard can see
    /// of the home shard without asking it (how long since its last tick,
    /// which says whether it is stuck, and how late that tick was; its
    /// storage jobs waiting) and of the mesh between them.
    fn late_call_line(&self, late: &Late, user: Option<UserId>) -> String {
        let home = late.home;
        let peer = &self.stats.all()[home];
        let route = if home == self.id {
            format!("on the local path (shard-{home} is its conn and home shard)")
        } else {
            format!(
                "over the mesh (conn shard-{} → home shard-{home}: outbox holds {} messages, {} \
                 requests in flight there)",
                self.id,
                self.outbox_len(home),
                self.in_flight(home)
            )
        };
        let who = user.map_or(String::new(), |u| format!(" for user {u}"));
        format!(
            "{}{who} had no answer from its home shard-{home} after {} ms (its deadline: {} ms), \
             {route}; shard-{home} last ticked {} ms ago ({} ms late), has {} storage jobs \
             waiting; the storage queue holds {} jobs",
            late.what,
            late.waited.as_millis(),
            late.patience.as_millis(),
            self.clock.now_ms().saturating_sub(peer.last_tick_ms.get()),
            peer.loop_lag_last_us.get() / 1000,
            peer.storage_jobs_waiting.get(),
            // Atomics only: this runs on the executor.
            self.store.queue_len()
        )
    }

    /// Sends `request` to its user's home shard and waits for the answer.
    pub async fn call(self: &Rc<Self>, request: Request) -> Response {
        let user = request.home_user().expect("call() needs a user's request");
        self.call_on(self.home(user), request).await
    }

    /// Requests waiting for an answer on this conn shard.
    pub fn waiting_count(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Requests in flight to `peer` (0 for this shard itself).
    pub fn in_flight(&self, peer: ShardId) -> usize {
        self.in_flight.borrow().count(peer)
    }
}

/// Cross-shard requests about traced users a home shard is answering, by
/// the conn shard's `ReplyTo`, to time each hop from arrival to reply (at
/// most `TRACE_HOPS_TIMED_MAX`; more go untimed). An entry goes when its
/// reply goes back, or at the first tick after its call's deadline (its
/// conn shard gave up; a reply may never come), and every entry goes at
/// a tick while nobody is traced. So it is empty, and never looked at but
/// by the tick, while nobody is traced.
#[derive(Debug, Default)]
struct TracedHops {
    by_reply: HashMap<ReplyTo, Hop>,
}

/// One timed hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hop {
    /// When the request arrived.
    arrived: Instant,
    /// When its conn shard stops waiting for the reply (its deadline,
    /// counted from the arrival: a little later than the conn shard's).
    until: Instant,
    /// The request's name.
    name: &'static str,
    /// Its user.
    user: UserId,
    /// Whether only its sid claims the user (unchecked on arrival).
    claimed: bool,
}

impl TracedHops {
    /// A request arrived: timed, if fewer than `TRACE_HOPS_TIMED_MAX` are.
    fn arrived(&mut self, reply: ReplyTo, hop: Hop) {
        if self.by_reply.len() < limits::TRACE_HOPS_TIMED_MAX {
            self.by_reply.insert(reply, hop);
        }
    }

    /// Its reply goes back: the hop, if it was timed.
    fn departed(&mut self, reply: ReplyTo) -> Option<Hop> {
        if self.by_reply.is_empty() {
            return None;
        }
        self.by_reply.remove(&reply)
    }

    /// At a tick: forgets every hop whose call's deadline passed by
    /// `now`, or every hop if nobody is traced (`traced` false).
    fn sweep(&mut self, now: Instant, traced: bool) {
        if self.by_reply.is_empty() {
            return;
        }
        if traced {
            self.by_reply.retain(|_, hop| hop.until > now);
        } else {
            self.by_reply = HashMap::new();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_reply.len()
    }
}

/// A call that passed its deadline, for its one log line.
struct Late {
    /// The request's name (`send`, `poll`, ...).
    what: &'static str,
    /// Its home shard.
    home: ShardId,
    /// How long it waited, from its start.
    waited: Duration,
    /// Its deadline, from its start.
    patience: Duration,
}

/// One call's `waiting` entry, removed when this drops: answered, timed
/// out, shed, or the caller gone. (Its count in flight to a peer is not:
/// see [`InFlight`].)
/// A held poll's call in flight: dropped armed (its caller went: the
/// client hung up, `hangup.rs`), it sends the home shard
/// `Request::EndPoll`, which answers that poll there (if the tab still
/// holds it, not a newer one), so the tab's poll is free and its tab
/// timeout runs from now. The answers go to request numbers nobody waits
/// on, and are dropped.
struct Abandoned {
    rt: Rc<ShardRuntime>,
    shard: ShardId,
    sid: switchboard_shards::model::Sid,
    /// Where the held poll's answer was to go: only that poll is ended.
    held: ReplyTo,
}

impl Abandoned {
    /// The call was answered or ran out: nothing to end.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let rt = self.rt.clone();
        let (shard, sid, held) = (self.shard, self.sid, self.held);
        // Not from inside a drop: the shard may be borrowed up the stack.
        glommio::spawn_local(async move { rt.end_abandoned_poll(shard, sid, held) }).detach();
    }
}

impl ShardRuntime {
    /// Sends `Request::EndPoll` to `shard` for the held poll waiting at
    /// `held` whose caller went ([`Abandoned`]); its answer is dropped.
    fn end_abandoned_poll(
        self: &Rc<Self>,
        shard: ShardId,
        sid: switchboard_shards::model::Sid,
        held: ReplyTo,
    ) {
        let req = self.next_req.get() + 1;
        self.next_req.set(req);
        let reply = ReplyTo {
            shard: self.id,
            req,
        };
        let request = Request::EndPoll { sid, held };
        if shard == self.id {
            self.feed(Input::Request { reply, request });
            return;
        }
        if self.in_flight(shard) >= self.bounds.requests_in_flight_max {
            // Its wait ends it anyway.
            return;
        }
        if self
            .enqueue(shard, MeshMsg::Request { reply, request })
            .is_ok()
        {
            let deadline_ms = self.clock.now_ms() + limits::CALL_MARGIN_MS;
            self.in_flight.borrow_mut().start(req, shard, deadline_ms);
        }
    }
}

struct Waiting<'a> {
    rt: &'a ShardRuntime,
    req: u64,
}

impl<'a> Waiting<'a> {
    fn register(rt: &'a ShardRuntime, req: u64, tx: oneshot::Sender<Response>) -> Waiting<'a> {
        rt.waiting.borrow_mut().insert(req, tx);
        Waiting { rt, req }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rt.waiting.borrow_mut().remove(&self.req);
    }
}

/// Requests this shard sent to peers and has not had answered, counted
/// per peer (against `REQUESTS_IN_FLIGHT_MAX`). Each counts until its
/// reply arrives or its call's deadline passes (swept every tick), even
/// when its caller went first (a closed connection): the home shard still
/// holds it — a held poll's reply can come at any moment, and it must
/// find the room in the outbox the count reserves for it. A reply after
/// the deadline is outside the count (`dropped_replies`, expected 0).
#[derive(Debug)]
struct InFlight {
    /// Each request's peer and deadline (clock ms), by request number.
    by_req: HashMap<u64, (ShardId, u64)>,
    /// `(deadline_ms, req)`, earliest first, for the sweep.
    by_deadline: BTreeSet<(u64, u64)>,
    /// Requests counted per peer.
    per_peer: Vec<usize>,
}

impl InFlight {
    fn new(peers: usize) -> InFlight {
        InFlight {
            by_req: HashMap::new(),
            by_deadline: BTreeSet::new(),
            per_peer: vec![0; peers],
        }
    }

    fn count(&self, peer: ShardId) -> usize {
        self.per_peer[peer]
    }

    /// Request `req` went to `peer`; its call gives up at `deadline_ms`.
    fn start(&mut self, req: u64, peer: ShardId, deadline_ms: u64) {
        let old = self.by_req.insert(req, (peer, deadline_ms));
        assert!(old.is_none(), "request {req} counted twice");
        self.by_deadline.insert((deadline_ms, req));
        self.per_peer[peer] += 1;
    }

    /// The reply to `req` arrived (a no-op for one not counted: local, or
    /// swept).
    fn end(&mut self, req: u64) {
        if let Some((peer, deadline_ms)) = self.by_req.remove(&req) {
            self.by_deadline.remove(&(deadline_ms, req));
            self.per_peer[peer] -= 1;
        }
    }

    /// Stops counting every request whose deadline passed by `now_ms`.
    fn sweep(&mut self, now_ms: u64) {
        while let Some(&(deadline_ms, req)) = self.by_deadline.first() {
            if deadline_ms > now_ms {
                return;
            }
            self.end(req);
        }
    }
}

/// Whether the home shard accepted the request's sid, judging by its
/// answer: every check after the sid's answers something other than
/// `unknown_session` (docs/protocol.md, "Check order").
fn sid_accepted(response: &Response) -> bool {
    !matches!(response, Response::Failed(f) if f.code == ErrorCode::UnknownSession)
}

/// A response's outcome, for a trace: `ok`, `reset`, or its error code.
fn outcome(response: &Response) -> &'static str {
    match response {
        Response::Failed(f) => f.code.as_str(),
        Response::Reset { .. } => "reset",
        _ => "ok",
    }
}

/// What an input is, for logs (never its content: it may quote users).
fn input_kind(input: &Input) -> String {
    match input {
        Input::Request { request, .. } => format!("request {}", request.name()),
        Input::Peer(PeerMsg::Resync { .. }) => "peer message resync".into(),
        Input::Peer(msg) => format!("peer message {}", Dropped::of(msg).name()),
        Input::Storage { job, result } => {
            format!("storage result of job {job} (ok: {})", result.is_ok())
        }
        Input::Tick => "tick".into(),
        Input::Drain => "drain".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_bounds_leave_room_for_every_reply_and_admitted_request() {
        for depth in [None, Some(4), Some(8), Some(101)] {
            let b = MeshBounds::new(depth);
            assert!(b.requests_in_flight_max >= 1, "{depth:?}: {b:?}");
            let shares = 2 * b.requests_in_flight_max + b.peer_msgs_queued_max;
            assert!(shares <= b.outbox_depth_max, "{depth:?}: {b:?}");
        }
        let b = MeshBounds::new(Some(4));
        assert_eq!(
            (
                b.outbox_depth_max,
                b.requests_in_flight_max,
                b.peer_msgs_queued_max
            ),
            (4, 1, 2)
        );
    }

    #[test]
    fn a_traced_hop_is_forgotten_at_its_reply_its_deadline_or_when_nobody_is_traced() {
        let t0 = Instant::now();
        let hop = |secs: u64| Hop {
            arrived: t0,
            until: t0 + Duration::from_secs(secs),
            name: "poll",
            user: 42,
            claimed: true,
        };
        let to = |req: u64| ReplyTo { shard: 1, req };
        let mut hops = TracedHops::default();
        hops.arrived(to(1), hop(10));
        hops.arrived(to(2), hop(20));
        hops.arrived(to(3), hop(30));
        assert_eq!(hops.departed(to(1)), Some(hop(10)));
        assert_eq!(hops.departed(to(1)), None);
        // Request 2 is never answered (its conn shard gave up at its
        // deadline): it goes at the first tick past it.
        hops.sweep(t0 + Duration::from_secs(19), true);
        assert_eq!(hops.len(), 2);
        hops.sweep(t0 + Duration::from_secs(20), true);
        assert_eq!(hops.len(), 1);
        assert_eq!(hops.departed(to(2)), None);
        // Nobody traced any more: all go.
        hops.sweep(t0, false);
        assert_eq!(hops.len(), 0);
        // The bound: more arrivals go untimed.
        for req in 0..limits::TRACE_HOPS_TIMED_MAX as u64 + 5 {
            hops.arrived(to(req), hop(10));
        }
        assert_eq!(hops.len(), limits::TRACE_HOPS_TIMED_MAX);
    }

    #[test]
    fn a_request_counts_in_flight_until_its_reply_or_its_deadline_not_its_caller() {
        let mut f = InFlight::new(3);
        f.start(1, 1, 1_000);
        f.start(2, 1, 2_000);
        f.start(3, 2, 500);
        assert_eq!((f.count(1), f.count(2)), (2, 1));
        // Request 1's caller went (its connection closed): nothing
        // changes until its reply comes or its deadline passes.
        f.sweep(999);
        assert_eq!((f.count(1), f.count(2)), (2, 0));
        f.end(1);
        f.end(1); // a second reply, or one after the sweep: no-op
        assert_eq!(f.count(1), 1);
        f.sweep(2_000);
        assert_eq!(f.count(1), 0);
        assert!(f.by_req.is_empty() && f.by_deadline.is_empty());
    }
}
