//! The randomized simulation: several shards in one thread, driven the way
//! the engine drives them, by clients that behave like the JS client, and
//! checked against a model after every input.
//!
//! What the world does, all from one seed:
//! - requests cross the mesh from a random conn shard to the home shard,
//!   in the same per-pair FIFO channel as peer messages; links are drained
//!   in random order, interleaved with storage results and ticks, so many
//!   requests are in flight at once;
//! - every storage job gets a fate: it runs (at a random time, its answer
//!   fed later, in random order), fails (`Backend`), or is slow: the engine
//!   feeds `TimedOut` at its deadline while the store commits it anyway, or
//!   never does (the in-doubt case);
//! - an admin `roster-changed` first reloads the directory on the shard the
//!   call came to, as the engine does (`handler.rs`): quick, slow (up to the
//!   engine's patience), failing or timing out (`unavailable`); only then
//!   is it sent to the user's home shard;
//! - a few deliveries of messages and read receipts between shards are
//!   dropped, as a full outbox drops them, and the recipient is sent a
//!   `Resync` on the next tick, as the engine does;
//! - the clock ticks every 50 ms, sometimes many ticks at once, crossing
//!   poll waits, tab timeouts, grace and roster refreshes;
//! - clients connect tabs under a handful of names (replacing, evicting),
//!   hold polls, send with a cid and retry it after `unavailable` or, as a
//!   client timeout would, while the first try is still in flight; page
//!   history, mark read, save UI, type, change presence, leave; an
//!   administrator kicks and changes friendships;
//! - a few times per seed, a deploy hands the shards over to a new process
//!   the way the engine does (`switchboard serve --takeover`, see
//!   [`World::hand_over`]): new requests wait in the listening socket's
//!   backlog, every shard drains, the calls in flight are answered (or cut
//!   at the engine's drain bound), the storage jobs in flight finish, each
//!   shard freezes its ticks, the mesh falls quiet, and each shard goes
//!   through `serde_json` and `Shard::resumed` to the new process, where
//!   the same clients go on with the same sids and `since`.
//!
//! What is checked: see [`World::on_reply`] (every reply), [`World::check`]
//! (after every input), [`World::tick`] (what a tick may change),
//! [`World::hand_over`] and [`World::transfer`] (a hand-over's own
//! guarantees) and [`World::finish`] (after quiescence).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use std::fmt::Write as _;
use switchboard_shards::limits;
use switchboard_shards::model::*;
use switchboard_shards::ratelimit::RateLimits;

use serde_json::Value;
use switchboard_shards::{home_shard, Config, Input, NotSettled, Output, PeerMsg, Resync, Shard};

use crate::store::{pair, Store};

/// The engine's tick period.
const TICK_MS: u64 = 50;
/// The engine's storage deadline: a job not answered by then is fed
/// `TimedOut`.
const STORAGE_TIMEOUT_MS: u64 = 5_000;
/// How long after its deadline a slow job may still commit.
const LATE_COMMIT_MS_MAX: u64 = 3_000;
/// How long a shard handing over waits for its calls in flight to be
/// answered before it closes their connections anyway: the engine's
/// `limits::drain_calls_ms` for this storage timeout (the timeout, its
/// 1 s slack, and a 500 ms margin). A `roster-changed` that needs two slow
/// storage rounds may be cut at it; the web app retries.
const DRAIN_CALLS_MS: u64 = STORAGE_PATIENCE_MS + 500;
/// The engine's wait for a storage call it makes itself, outside any
/// shard (`limits::storage_patience_ms`: the timeout and 1 s of slack):
/// past it the call is answered `unavailable`.
const STORAGE_PATIENCE_MS: u64 = STORAGE_TIMEOUT_MS + 1_000;
/// The longest a hand-over may take before the sim calls it stuck (the
/// engine's bounds add up to under 15 s of it).
const HANDOVER_MS_MAX: u64 = 60_000;
/// The most time that passes between the old process taking the state
/// and the new one serving it (it starts, reads the state, says ready):
/// no shard ticks meanwhile.
const TRANSFER_GAP_MS_MAX: u64 = 2_000;

/// Checks that found real bugs before their fixes landed: each is on by
/// default and can be switched off (its environment variable set to `0`)
/// to see what else a seed finds.
#[derive(Clone, Copy, Debug)]
pub struct Switches {
    /// Every acknowledged message reaches every tab, also one whose first
    /// try timed out while the store committed it (its retry is answered
    /// from a duplicate `Stored`). Found "a duplicate Stored for a cid
    /// whose first try timed out is not delivered" (113 of seeds 1–300).
    /// `SIM_CHECK_IN_DOUBT_DELIVERY=0` switches it off.
    pub in_doubt_delivery: bool,
    /// Once `roster-changed` answered `Done` for a user, every live
    /// session's roster agrees with the directory about that user's
    /// friendships (and sends obey it). Found "roster-changed acks ok
    /// while sessions were loading" (25 of seeds 1–300).
    /// `SIM_CHECK_ROSTER_ACK=0` switches it off.
    pub roster_ack: bool,
    /// Deploy hand-overs at a few random steps of each seed (see
    /// [`World::hand_over`]). `SIM_HANDOVERS=0` runs without them.
    pub handovers: bool,
}

impl Switches {
    pub fn from_env() -> Switches {
        // On unless set to 0 (both fixes have landed: sends in doubt are
        // delivered on their duplicate, roster-changed acks honestly).
        let on = |name: &str| std::env::var(name).map_or(true, |v| v != "0");
        Switches {
            in_doubt_delivery: on("SIM_CHECK_IN_DOUBT_DELIVERY"),
            roster_ack: on("SIM_CHECK_ROSTER_ACK"),
            handovers: on("SIM_HANDOVERS"),
        }
    }
}

/// What one run did, for the soak's figures.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub steps: u64,
    pub requests: u64,
    pub messages: u64,
    pub acked: u64,
    pub in_doubt: u64,
    pub retries: u64,
    /// Retries made while the earlier try could still be in flight.
    pub timeout_retries: u64,
    /// Deliveries dropped on the way (each owes a resync).
    pub dropped_deliveries: u64,
    pub resets: u64,
    pub evictions: u64,
    pub history_pages: u64,
    pub faults: u64,
    pub rate_limited: u64,
    /// Hand-overs to a new process.
    pub handovers: u64,
    /// Calls whose connection a hand-over closed unanswered (the client
    /// retries).
    pub cut_calls: u64,
    /// Sessions and tabs carried over by hand-overs.
    pub sessions_handed: u64,
    pub tabs_handed: u64,
}

/// The seeded generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What crosses a mesh channel: a request from its conn shard, or a peer
/// message.
enum Wire {
    Request { reply: ReplyTo, request: Request },
    Peer(PeerMsg),
}

/// What the world decided a storage job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Runs and is answered.
    Runs,
    /// Answered `Backend`, never runs.
    Fails,
    /// Answered `TimedOut` by the engine at its deadline; the store commits
    /// it before or after that, or never.
    Slow { commits: bool },
}

/// An admin `roster-changed` reloading the directory on its conn shard
/// before it is sent to the home shard (the engine's `roster_changed` in
/// `handler.rs`; not a shard's storage job).
struct Reload {
    /// When the reload ends.
    at: u64,
    conn: usize,
    home: usize,
    reply: ReplyTo,
    request: Request,
    /// Whether it succeeds (else the call is answered `unavailable`).
    ok: bool,
}

/// A storage job in flight.
struct Job {
    shard: usize,
    job: u64,
    request: StorageJob,
    fate: Fate,
    /// When it runs against the store (`None` once run, or never).
    run_at: Option<u64>,
    /// When its result is fed to the shard.
    answer_at: u64,
    /// What the store answered, once run.
    output: Option<StorageOutput>,
}

/// What a request was, for checking its reply.
#[derive(Clone, Debug)]
enum Kind {
    Connect {
        user: UserId,
        name: Option<String>,
    },
    Poll {
        since: u64,
    },
    Send {
        to: UserId,
        cid: Option<String>,
    },
    Typing {
        to: UserId,
    },
    Presence,
    Ui,
    Read {
        with: UserId,
    },
    History {
        with: UserId,
        before: Option<MsgId>,
        limit: u32,
    },
    Leave,
    Kick {
        // Read in failure messages only (the kick's effects are taken from
        // the request as it arrives: one cut by a hand-over still kicks).
        #[allow(dead_code)]
        user: UserId,
    },
    RosterChanged {
        user: UserId,
        version: u64,
    },
}

/// A request awaiting its one reply.
struct Call {
    kind: Kind,
    /// The model tab that made it (`None` for admin calls).
    tab: Option<usize>,
    /// The conn shard the reply must name.
    conn: usize,
    /// Faults fed, kicks answered and hand-overs begun when it was made:
    /// `unavailable` is allowed only if one of them grew since (a
    /// hand-over: only for a `roster-changed`).
    faults: u64,
    kicks: u64,
    drains: u64,
    /// Whether it reached its home shard.
    arrived: bool,
    /// Made while a hand-over runs: it waits in the listening socket's
    /// backlog for the new process.
    held_back: bool,
    /// For a call addressing another user: what the directory allowed
    /// when it reached its home shard (where friends-only is checked).
    friendship: Friendship,
}

/// What a friends-only answer may be, as of a call's arrival.
#[derive(Clone, Copy, Debug, Default)]
struct Friendship {
    /// They are friends, or their friendship is changing.
    may_be_friends: bool,
    /// They are not friends, or their friendship is changing.
    may_be_strangers: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TabState {
    Connecting,
    Live,
    Dead,
}

/// What a client believes about one tab.
struct Tab {
    user: UserId,
    name: Option<String>,
    sid: Sid,
    state: TabState,
    /// False once the model sees a reason the server may have detached it
    /// (an eviction) that it cannot pin down.
    certain: bool,
    /// The newest seq seen.
    since: u64,
    /// Messages the tab shows: from history at connect and reset, and
    /// from events.
    view: HashSet<MsgId>,
    /// Messages received as events since the last rebuild (one twice is a
    /// duplicate delivery).
    live: HashSet<MsgId>,
    /// Polls the home shard holds (arrived, not answered).
    polls_held: usize,
    /// Polls made and not answered.
    polls_out: usize,
    /// When its last poll ended (or it attached): the tab-timeout clock.
    idle_since: u64,
    /// History paging in progress: with whom, and the oldest id so far.
    paging: Option<(UserId, MsgId)>,
    /// Whether the client keeps polling.
    polls_on: bool,
}

/// A send waiting to be retried with the same cid.
struct Retry {
    at: u64,
    tab: usize,
    to: UserId,
    cid: String,
    /// A client timeout's retry: due while try `#req` may still be in
    /// flight. Made only if that try is still unanswered, or (its answer
    /// lost on the way) sometimes anyway. `None`: a retry after
    /// `unavailable`.
    timeout_of: Option<u64>,
}

/// One world's shape, drawn from its seed.
#[derive(Clone, Debug)]
struct Shape {
    shards: usize,
    users: u64,
    tabs_max: usize,
    events_max: usize,
    grace_ms: u64,
    tab_timeout_ms: u64,
    roster_refresh_ms: u64,
    /// Percent of jobs that fail / are slow.
    fail_pct: u64,
    slow_pct: u64,
    /// Percent of deliveries of messages and read receipts between shards
    /// dropped on the way (a full outbox); the engine then owes the
    /// recipient a `Resync`, sent on its next tick.
    drop_pct: u64,
    /// Whether the per-user rate limits are on (the defaults) or lifted:
    /// with them on, any limited call may be answered `rate_limited`; with
    /// them off, none may.
    rate_limited: bool,
}

pub struct World {
    seed: u64,
    rng: Rng,
    switches: Switches,
    shape: Shape,
    now: u64,
    step: u64,
    shards: Vec<Shard>,
    store: Store,
    /// Mesh channels, FIFO per ordered pair `(from, to)`.
    links: BTreeMap<(usize, usize), VecDeque<Wire>>,
    /// Storage jobs in flight, in the order they were asked for.
    jobs: Vec<Job>,
    /// Directory reloads of admin `roster-changed` calls under way.
    reloads: Vec<Reload>,
    /// Requests awaiting their reply, by request number.
    calls: HashMap<u64, Call>,
    next_req: u64,
    tabs: Vec<Tab>,
    retries: Vec<Retry>,
    /// cid → the id its first acknowledgement named.
    acked: HashMap<(UserId, String), MsgId>,
    /// Messages acknowledged to some try of their send.
    acked_ids: BTreeSet<MsgId>,
    /// Messages committed by a job the engine answered `TimedOut`.
    in_doubt: HashSet<MsgId>,
    /// Pairs whose friendship changed and whose `roster-changed` has not
    /// returned since (by the directory version of the change).
    unsettled: HashMap<(UserId, UserId), u64>,
    /// Pairs whose friendship ever changed (their deliveries may be
    /// dropped by the receiver's friends-only check, legitimately).
    toggled: HashSet<(UserId, UserId)>,
    /// Directory version: bumped by each friendship change.
    version: u64,
    /// Users whose `roster-changed` the web app must (re)send.
    roster_todo: Vec<UserId>,
    /// Non-`Runs` job results fed so far.
    faults: u64,
    /// Kicks answered so far.
    kicks: u64,
    /// Hand-overs begun so far.
    drains: u64,
    /// Per user: the seq checked up to and the roster before this input.
    seen_events: HashMap<UserId, (u64, BTreeSet<UserId>)>,
    /// Whether new jobs may fail (off while quiescing).
    faults_on: bool,
    /// Per link: recipients of deliveries dropped on it, owed a resync.
    owed: BTreeMap<(usize, usize), BTreeSet<UserId>>,
    /// Whether the shards are ticking (checked once all have ticked).
    ticking: bool,
    /// Steps after which a hand-over runs, each with whether it waits for
    /// a busy moment (drawn in [`World::run`] from a generator of their
    /// own).
    handover_at: BTreeMap<u64, bool>,
    /// A hand-over waiting for a busy moment: the step by which it runs
    /// anyway.
    handover_by: Option<u64>,
    /// While a hand-over runs: the requests made meanwhile, waiting in the
    /// listening sockets' backlog for the new process, as `(conn, home,
    /// request)` in the order they were made.
    backlog: Option<Vec<(usize, usize, Wire)>>,
    /// Shards whose ticks the hand-over under way has frozen.
    frozen: Vec<bool>,
    /// Calls whose connection a hand-over closed before their answer: the
    /// answer, if one still comes, goes nowhere.
    cut: HashSet<u64>,
    /// The last inputs, for the failure message.
    trace: VecDeque<String>,
    /// How many inputs the trace keeps (`SIM_TRACE`, default 40).
    trace_len: usize,
    pub figures: Figures,
}

impl World {
    pub fn new(seed: u64, switches: Switches) -> World {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for _ in 0..4 {
            rng.next();
        }
        let shape = Shape {
            shards: rng.range(2, 4) as usize,
            users: rng.range(5, 10),
            tabs_max: if rng.chance(50) { 4 } else { 32 },
            events_max: if rng.chance(50) { 16 } else { 128 },
            grace_ms: rng.range(1, 10) * 1_000,
            tab_timeout_ms: rng.range(15, 60) * 1_000,
            roster_refresh_ms: rng.range(30, 300) * 1_000,
            fail_pct: [0, 2, 5, 10][rng.below(4) as usize],
            slow_pct: [0, 2, 5, 10][rng.below(4) as usize],
            drop_pct: [0, 0, 1, 5][rng.below(4) as usize],
            rate_limited: rng.chance(50),
        };
        let shards = (0..shape.shards)
            .map(|i| {
                let mut c = Config::new(i, shape.shards);
                c.grace_ms = shape.grace_ms;
                c.tab_timeout_ms = shape.tab_timeout_ms;
                c.roster_refresh_ms = shape.roster_refresh_ms;
                c.events_buffered_max = shape.events_max;
                c.tabs_per_user_max = shape.tabs_max;
                if !shape.rate_limited {
                    c.rate_limits = RateLimits::unlimited();
                }
                Shard::new(c)
            })
            .collect();
        let mut store = Store::default();
        for u in 1..=shape.users {
            store.names.insert(u, Arc::from(format!("user{u}")));
        }
        for a in 1..=shape.users {
            for b in a + 1..=shape.users {
                if rng.chance(45) {
                    store.friends.insert((a, b));
                }
            }
        }
        let shard_count = shape.shards;
        World {
            seed,
            rng,
            switches,
            shape,
            now: 1_000_000,
            step: 0,
            shards,
            store,
            links: BTreeMap::new(),
            jobs: Vec::new(),
            reloads: Vec::new(),
            calls: HashMap::new(),
            next_req: 0,
            tabs: Vec::new(),
            retries: Vec::new(),
            acked: HashMap::new(),
            acked_ids: BTreeSet::new(),
            in_doubt: HashSet::new(),
            unsettled: HashMap::new(),
            toggled: HashSet::new(),
            version: 0,
            roster_todo: Vec::new(),
            faults: 0,
            kicks: 0,
            drains: 0,
            seen_events: HashMap::new(),
            faults_on: true,
            owed: BTreeMap::new(),
            ticking: false,
            handover_at: BTreeMap::new(),
            handover_by: None,
            backlog: None,
            frozen: vec![false; shard_count],
            cut: HashSet::new(),
            trace: VecDeque::new(),
            trace_len: std::env::var("SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(40),
            figures: Figures::default(),
        }
    }

    /// Fails the run with the seed, step, world shape and recent inputs.
    #[track_caller]
    fn fail(&self, what: String) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "SIM FAILURE seed {} step {} t={}: {what}\n  replay: SIM_SEED={} cargo test -p switchboard-shards --test sim\n  shape: {:?}\n  last inputs:\n    {}",
            self.seed,
            self.step,
            self.now,
            self.seed,
            self.shape,
            trace.join("\n    ")
        );
    }

    fn note(&mut self, line: String) {
        if self.trace.len() >= self.trace_len {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{} t={}] {line}", self.step, self.now));
    }

    // ---- driving ----------------------------------------------------

    /// Runs `steps` random steps, then quiesces and checks the end state.
    pub fn run(&mut self, steps: u64) {
        if self.switches.handovers {
            let mut plan =
                Rng((self.seed ^ 0x4a4d_0ff5_eed0_7a4e).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
            for _ in 0..plan.range(1, 3) {
                let at = plan.range(1, steps.max(1));
                self.handover_at.insert(at, plan.chance(50));
            }
        }
        for _ in 0..steps {
            self.step += 1;
            self.figures.steps += 1;
            match self.rng.below(100) {
                0..=39 => self.client_action(),
                40..=69 => {
                    if !self.deliver_one_wire() {
                        self.tick();
                    }
                }
                70..=84 => {
                    if !self.storage_one() {
                        self.tick();
                    }
                }
                85..=96 => self.tick(),
                _ => {
                    // A long stretch: the clock crosses waits, timeouts and
                    // grace while everything due is delivered.
                    let ticks = self.rng.range(20, 400);
                    for _ in 0..ticks {
                        self.tick();
                        self.drain_some(4);
                    }
                }
            }
            match self.handover_at.get(&self.step) {
                Some(true) => self.handover_by = Some(self.step + 300),
                Some(false) => self.hand_over(),
                None => {}
            }
            if let Some(by) = self.handover_by {
                if self.step >= by || self.busy() {
                    self.handover_by = None;
                    self.hand_over();
                }
            }
            self.due_retries();
        }
        self.quiesce();
        self.finish();
    }

    /// Advances the clock one tick and ticks every shard; the engine pays
    /// the resyncs it owes (its outboxes always have room again here).
    fn tick(&mut self) {
        self.now += TICK_MS;
        for ((from, to), users) in std::mem::take(&mut self.owed) {
            let who = Resync::Users(users.into_iter().collect());
            let msg = PeerMsg::Resync { who };
            let link = self.links.entry((from, to)).or_default();
            link.push_back(Wire::Peer(msg));
        }
        // One step: every shard ticks, then the invariants are checked
        // (ticks are most inputs; checking after each would triple the
        // run time for little: a tick takes no input from the others).
        let first = self.rng.below(self.shards.len() as u64) as usize;
        self.ticking = true;
        for i in 0..self.shards.len() {
            let s = (first + i) % self.shards.len();
            if self.frozen[s] {
                continue; // handing over: its timers fall due in the new process
            }
            let before = self.presence_before_tick(s);
            self.feed(s, Input::Tick);
            self.check_tick_presence(s, before);
        }
        self.ticking = false;
        self.check();
    }

    /// For each user homed on shard `s`: their presence there, and whether
    /// their session's grace is due (tabless, grace armed for `now` or
    /// before).
    fn presence_before_tick(&self, s: usize) -> Vec<(UserId, Status, bool)> {
        let n = self.shards.len();
        let shard = &self.shards[s];
        (1..=self.shape.users)
            .filter(|&u| home_shard(u, n) == s)
            .map(|u| {
                let due = shard.live_session(u).is_some_and(|l| {
                    l.tabs.is_empty() && l.grace.at_ms().is_some_and(|at| at <= self.now)
                });
                (u, shard.presence_of(u), due)
            })
            .collect()
    }

    /// What a tick may do to presence: end a session whose grace was due
    /// (offline), nothing else. So no presence change comes of time alone,
    /// and none of a hand-over's frozen ticks and the first ones after.
    fn check_tick_presence(&self, s: usize, before: Vec<(UserId, Status, bool)>) {
        for (u, was, grace_due) in before {
            let now = self.shards[s].presence_of(u);
            if now != was && !(now == Status::Offline && grace_due) {
                self.fail(format!(
                    "a tick of shard {s} changed {u}'s presence {was:?} → {now:?} (grace due: {grace_due})"
                ));
            }
        }
    }

    /// Delivers up to `n` things that are due (wires, storage events).
    fn drain_some(&mut self, n: usize) {
        for _ in 0..n {
            if self.rng.chance(50) {
                if !self.deliver_one_wire() {
                    self.storage_one();
                }
            } else if !self.storage_one() {
                self.deliver_one_wire();
            }
        }
    }

    /// Delivers the head of a random non-empty link.
    fn deliver_one_wire(&mut self) -> bool {
        let busy: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if busy.is_empty() {
            return false;
        }
        let k = busy[self.rng.below(busy.len() as u64) as usize];
        let wire = self.links.get_mut(&k).unwrap().pop_front().unwrap();
        match wire {
            Wire::Request { reply, request } => self.feed_request(k.1, reply, request),
            Wire::Peer(msg) => {
                self.note(format!("peer {}→{}: {msg:?}", k.0, k.1));
                self.feed(k.1, Input::Peer(msg));
            }
        }
        true
    }

    /// Runs or answers one due storage job, chosen at random.
    fn storage_one(&mut self) -> bool {
        let now = self.now;
        let reloads: Vec<usize> = (0..self.reloads.len())
            .filter(|&i| self.reloads[i].at <= now)
            .collect();
        let due: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| {
                let j = &self.jobs[i];
                j.run_at.is_some_and(|t| t <= now)
                    || (j.answer_at <= now && (j.fate != Fate::Runs || j.output.is_some()))
            })
            .collect();
        if !reloads.is_empty() && (due.is_empty() || self.rng.chance(30)) {
            let i = reloads[self.rng.below(reloads.len() as u64) as usize];
            self.reload_done(i);
            return true;
        }
        if due.is_empty() {
            return false;
        }
        let i = due[self.rng.below(due.len() as u64) as usize];
        if self.jobs[i].run_at.is_some_and(|t| t <= now) {
            self.run_job(i);
            return true;
        }
        let j = self.jobs.remove(i);
        if j.run_at.is_some() {
            // A slow job committing after its deadline stays in the store's
            // hands: keep it for its commit.
            self.jobs.insert(
                i,
                Job {
                    answer_at: u64::MAX,
                    ..j.clone_pending()
                },
            );
        }
        let result = match (j.fate, j.output) {
            (Fate::Runs, Some(output)) => Ok(output),
            (Fate::Runs, None) => unreachable!("answered before it ran"),
            (Fate::Fails, _) => Err(StorageError::Backend("injected failure".into())),
            (Fate::Slow { .. }, _) => Err(StorageError::TimedOut),
        };
        if result.is_err() {
            self.faults += 1;
            self.figures.faults += 1;
        }
        self.note(format!(
            "storage {}#{} {} → {}",
            j.shard,
            j.job,
            j.request.name(),
            match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{e}"),
            }
        ));
        self.feed(j.shard, Input::Storage { job: j.job, result });
        true
    }

    /// Runs job `i` against the store.
    fn run_job(&mut self, i: usize) {
        let output = self.store.run(&self.jobs[i].request);
        let j = &mut self.jobs[i];
        j.run_at = None;
        let slow = matches!(j.fate, Fate::Slow { .. });
        if let StorageOutput::Stored {
            message,
            duplicate: false,
        } = &output
        {
            if slow {
                self.in_doubt.insert(message.id);
                self.figures.in_doubt += 1;
            }
        }
        let line = format!("store runs {}#{} {:?}", j.shard, j.job, j.request);
        if slow {
            if j.answer_at == u64::MAX {
                // Answered already (TimedOut): nothing more to do.
                self.jobs.remove(i);
            }
        } else {
            j.output = Some(output);
        }
        self.note(line);
    }

    /// Feeds one input to one shard and handles what comes out.
    fn feed(&mut self, shard: usize, input: Input) {
        let mut out = Vec::new();
        self.shards[shard].handle(self.now, input, &mut out);
        self.absorb(shard, out);
    }

    /// Handles what one input to `shard` put out, then checks the
    /// invariants (unless every shard is ticking).
    fn absorb(&mut self, shard: usize, out: Vec<Output>) {
        let mut storage = Vec::new();
        let mut replies = Vec::new();
        for o in out {
            match o {
                Output::Reply { to, response } => replies.push((to, response)),
                Output::Peer { shard: to, msg } => {
                    if to == shard {
                        self.fail(format!("shard {shard} sent itself {msg:?} over the mesh"));
                    }
                    if let PeerMsg::Deliver {
                        to: user,
                        kind: EventKind::Message(_) | EventKind::Read { .. },
                        ..
                    } = &msg
                    {
                        if self.faults_on && self.rng.chance(self.shape.drop_pct) {
                            self.note(format!("dropped {shard}→{to}: {msg:?}"));
                            self.figures.dropped_deliveries += 1;
                            self.owed.entry((shard, to)).or_default().insert(*user);
                            continue;
                        }
                    }
                    self.links
                        .entry((shard, to))
                        .or_default()
                        .push_back(Wire::Peer(msg));
                }
                Output::Storage { job, request } => storage.push((job, request)),
                // Nobody is traced here: a note would be a cost to untraced users.
                Output::Trace { user, .. } => {
                    panic!("a trace note for user {user}, whom nobody traces")
                }
            }
        }
        // Sessions are kept in a HashMap, so one input's jobs may come out
        // in any order: sort them so a seed replays.
        storage.sort_by_key(|(_, r)| format!("{r:?}"));
        for (job, request) in storage {
            self.add_job(shard, job, request);
        }
        // A connect's attach may detach tabs (same name, or one too many)
        // whose held polls are answered first in the same input: learn of
        // the new tab first (connects in the order attached: each may
        // replace the one before). The rest by request, so a seed replays:
        // one input answering many sessions' polls (a drain, a resync of
        // all) goes through them in the order of a hash map.
        replies.sort_by_key(|(to, r)| match r {
            Response::Connected(_) => (false, 0),
            _ => (true, to.req),
        });
        for (to, response) in replies {
            self.on_reply(shard, to, response);
        }
        if !self.ticking {
            self.check();
        }
    }

    fn add_job(&mut self, shard: usize, job: u64, request: StorageJob) {
        let (fail_pct, slow_pct) = if self.faults_on {
            (self.shape.fail_pct, self.shape.slow_pct)
        } else {
            (0, 0)
        };
        let roll = self.rng.below(100);
        let fate = if roll < fail_pct {
            Fate::Fails
        } else if roll < fail_pct + slow_pct {
            Fate::Slow {
                commits: self.rng.chance(60),
            }
        } else {
            Fate::Runs
        };
        let now = self.now;
        let (run_at, answer_at) = match fate {
            Fate::Runs => {
                let answer = now
                    + if self.rng.chance(90) {
                        self.rng.below(200)
                    } else {
                        self.rng.below(STORAGE_TIMEOUT_MS - TICK_MS)
                    };
                (Some(self.rng.range(now, answer)), answer)
            }
            Fate::Fails => (None, now + self.rng.below(500)),
            Fate::Slow { commits } => {
                let deadline = now + STORAGE_TIMEOUT_MS;
                let run = commits.then(|| self.rng.range(now, deadline + LATE_COMMIT_MS_MAX));
                (run, deadline)
            }
        };
        self.jobs.push(Job {
            shard,
            job,
            request,
            fate,
            run_at,
            answer_at,
            output: None,
        });
    }

    // ---- clients ----------------------------------------------------

    /// Sends a request from a random conn shard to its home shard.
    fn request(&mut self, kind: Kind, tab: Option<usize>, request: Request) -> u64 {
        self.next_req += 1;
        self.figures.requests += 1;
        let conn = self.rng.below(self.shards.len() as u64) as usize;
        let reply = ReplyTo {
            shard: conn,
            req: self.next_req,
        };
        self.calls.insert(
            reply.req,
            Call {
                kind,
                tab,
                conn,
                faults: self.faults,
                kicks: self.kicks,
                drains: self.drains,
                arrived: false,
                held_back: self.backlog.is_some(),
                friendship: Friendship::default(),
            },
        );
        if let Some(t) = tab {
            if matches!(request, Request::Poll { .. }) {
                self.tabs[t].polls_out += 1;
            }
        }
        // Queued even on the local path (`conn == home`): a client acts
        // after the input it reacts to, never inside it.
        let home = home_shard(request.home_user().unwrap(), self.shards.len());
        let wire = Wire::Request { reply, request };
        match &mut self.backlog {
            // A hand-over: no process accepts until the new one serves.
            Some(backlog) => backlog.push((conn, home, wire)),
            None => self.accepted(conn, home, wire),
        }
        reply.req
    }

    /// Conn shard `conn` took a request for `home`: it goes over the mesh
    /// at once, but a `roster-changed` reloads the directory first.
    fn accepted(&mut self, conn: usize, home: usize, wire: Wire) {
        let Wire::Request {
            reply,
            request: request @ Request::RosterChanged { .. },
        } = wire
        else {
            self.links.entry((conn, home)).or_default().push_back(wire);
            return;
        };
        let (fail_pct, slow_pct) = if self.faults_on {
            (self.shape.fail_pct, self.shape.slow_pct)
        } else {
            (0, 0)
        };
        let roll = self.rng.below(100);
        let (after, ok) = if roll < fail_pct {
            (self.rng.below(500), false)
        } else if roll < fail_pct + slow_pct {
            (STORAGE_PATIENCE_MS, false) // timed out
        } else if self.rng.chance(90) {
            (self.rng.below(200), true)
        } else {
            (self.rng.below(STORAGE_PATIENCE_MS), true)
        };
        self.reloads.push(Reload {
            at: self.now + after,
            conn,
            home,
            reply,
            request,
            ok,
        });
    }

    /// A directory reload ends: its `roster-changed` goes to the home
    /// shard, or is answered `unavailable` by the conn shard.
    fn reload_done(&mut self, i: usize) {
        let r = self.reloads.remove(i);
        if r.ok {
            self.note(format!("#{} directory reloaded at {}", r.reply.req, r.conn));
            let wire = Wire::Request {
                reply: r.reply,
                request: r.request,
            };
            self.links
                .entry((r.conn, r.home))
                .or_default()
                .push_back(wire);
            return;
        }
        self.faults += 1;
        self.figures.faults += 1;
        let failed = Response::fail(ErrorCode::Unavailable, "directory reload failed");
        self.on_reply(r.conn, r.reply, failed);
        self.check();
    }

    fn feed_request(&mut self, shard: usize, reply: ReplyTo, request: Request) {
        self.note(format!("request #{} at {shard}: {request:?}", reply.req));
        let user = request.home_user().unwrap();
        let other = match request {
            Request::Send { to, .. } | Request::Typing { to, .. } => Some(to),
            Request::Read { with, .. } => Some(with),
            _ => None,
        };
        let friendship = other.map(|o| {
            let changing = self.unsettled.contains_key(&pair(user, o));
            let friends = self.store.are_friends(user, o);
            Friendship {
                may_be_friends: o != user && (friends || changing),
                may_be_strangers: o != user && (!friends || changing),
            }
        });
        if let Some(call) = self.calls.get_mut(&reply.req) {
            call.arrived = true;
            call.friendship = friendship.unwrap_or_default();
            if let (Kind::Poll { .. }, Some(t)) = (&call.kind, call.tab) {
                self.tabs[t].polls_held += 1;
            }
        } else if !self.cut.contains(&reply.req) {
            self.fail(format!("request #{} arrived, never made", reply.req));
        }
        // A kick cut by a hand-over still kicks when it arrives.
        if let Request::Kick { user } = request {
            // Its effects (held polls answered `unknown_session`, connects
            // waiting on a load `unavailable`) come out before its reply.
            self.kicks += 1;
            for tab in &mut self.tabs {
                if tab.user == user && tab.state == TabState::Live {
                    tab.state = TabState::Dead;
                }
            }
        }
        self.feed(shard, Input::Request { reply, request });
    }

    fn live_tabs(&self) -> Vec<usize> {
        (0..self.tabs.len())
            .filter(|&t| self.tabs[t].state == TabState::Live)
            .collect()
    }

    fn random_user(&mut self) -> UserId {
        self.rng.range(1, self.shape.users)
    }

    /// Someone to address: mostly a friend (per the directory), sometimes
    /// anyone (maybe oneself).
    fn someone_for(&mut self, user: UserId) -> UserId {
        let friends = self.store.friends_of(user);
        if !friends.is_empty() && self.rng.chance(80) {
            friends[self.rng.below(friends.len() as u64) as usize].id
        } else {
            self.random_user()
        }
    }

    fn client_action(&mut self) {
        let live = self.live_tabs();
        let pick = self.rng.below(100);
        if live.is_empty() || pick < 12 {
            return self.connect();
        }
        let t = live[self.rng.below(live.len() as u64) as usize];
        let sid = self.tabs[t].sid;
        let user = self.tabs[t].user;
        match pick {
            12..=29 => {
                let wait = if self.rng.chance(30) {
                    0
                } else {
                    self.rng.range(1, 30) * 1_000
                };
                self.poll(t, wait);
            }
            30..=54 => {
                let to = self.someone_for(user);
                let cid = self
                    .rng
                    .chance(90)
                    .then(|| format!("c{}", self.next_req + 1));
                let req = self.send(t, to, cid.clone());
                if let Some(cid) = cid.filter(|_| self.rng.chance(15)) {
                    // The client's request times out: it retries the same
                    // cid while this try may still be in flight (its job
                    // running, or its answer on the way).
                    self.retries.push(Retry {
                        at: self.now + self.rng.range(1, 100) * TICK_MS,
                        tab: t,
                        to,
                        cid,
                        timeout_of: Some(req),
                    });
                }
            }
            55..=59 => {
                // Typing, sometimes a burst of it (that fills a friend's
                // buffer: a tab that is not polling then gets `reset`).
                let to = self.someone_for(user);
                let burst = if self.rng.chance(20) { 12 } else { 1 };
                for i in 0..burst {
                    let state = if i % 2 == 0 {
                        TypingState::Typing
                    } else {
                        TypingState::Stopped
                    };
                    let r = Request::Typing { sid, to, state };
                    self.request(Kind::Typing { to }, Some(t), r);
                }
            }
            60..=62 => {
                let status = if self.rng.chance(50) {
                    Status::Away
                } else {
                    Status::Online
                };
                self.request(Kind::Presence, Some(t), Request::Presence { sid, status });
            }
            63..=65 => {
                let state = format!("{{\"open\":[{}]}}", self.rng.below(9));
                self.request(Kind::Ui, Some(t), Request::Ui { sid, state });
            }
            66..=69 => {
                let with = self.someone_for(user);
                let ids: Vec<MsgId> = self
                    .store
                    .conversation(user, with)
                    .iter()
                    .map(|m| m.id)
                    .filter(|id| self.tabs[t].view.contains(id))
                    .collect();
                if let Some(&upto) = ids.get(self.rng.below(ids.len().max(1) as u64) as usize) {
                    let r = Request::Read { sid, with, upto };
                    self.request(Kind::Read { with }, Some(t), r);
                }
            }
            70..=77 => {
                // Page a conversation: continue one in progress or start.
                let (with, before) = match self.tabs[t].paging {
                    Some((with, oldest)) if self.rng.chance(70) => (with, Some(oldest)),
                    _ => (self.someone_for(user), None),
                };
                let limit = self.rng.range(1, 6) as u32;
                let kind = Kind::History {
                    with,
                    before,
                    limit,
                };
                let r = Request::History {
                    sid,
                    with,
                    before,
                    limit,
                };
                self.request(kind, Some(t), r);
            }
            78..=81 => {
                self.request(Kind::Leave, Some(t), Request::Leave { sid });
            }
            82..=84 => {
                // A client stops polling (its tab will time out) or resumes.
                self.tabs[t].polls_on = !self.tabs[t].polls_on;
                if self.tabs[t].polls_on && self.tabs[t].polls_out == 0 {
                    self.poll(t, 20_000);
                }
            }
            85..=86 => {
                let user = self.random_user();
                self.request(Kind::Kick { user }, None, Request::Kick { user });
            }
            87..=89 => {
                // The web app changes a friendship and tells the server.
                let a = self.random_user();
                let b = self.random_user();
                if a != b {
                    let p = pair(a, b);
                    if !self.store.friends.remove(&p) {
                        self.store.friends.insert(p);
                    }
                    self.version += 1;
                    self.unsettled.insert(p, self.version);
                    self.toggled.insert(p);
                    self.note(format!("directory: friendship {p:?} toggled"));
                    self.roster_changed(a);
                    self.roster_changed(b);
                }
            }
            _ => self.poll(t, 0),
        }
    }

    fn connect(&mut self) {
        let user = self.random_user();
        let name = self
            .rng
            .chance(85)
            .then(|| format!("t{}", self.rng.below(6)));
        let sid = Sid {
            user,
            secret: (self.rng.next() as u128) << 64 | self.next_req as u128,
        };
        self.tabs.push(Tab {
            user,
            name: name.clone(),
            sid,
            state: TabState::Connecting,
            certain: true,
            since: 0,
            view: HashSet::new(),
            live: HashSet::new(),
            polls_held: 0,
            polls_out: 0,
            idle_since: self.now,
            paging: None,
            polls_on: self.rng.chance(85),
        });
        let t = self.tabs.len() - 1;
        let kind = Kind::Connect {
            user,
            name: name.clone(),
        };
        let r = Request::Connect {
            user,
            tab: name,
            sid,
        };
        self.request(kind, Some(t), r);
    }

    fn poll(&mut self, t: usize, wait_ms: u64) {
        let sid = self.tabs[t].sid;
        let since = self.tabs[t].since;
        let r = Request::Poll {
            sid,
            since,
            wait_ms,
        };
        self.request(Kind::Poll { since }, Some(t), r);
    }

    fn send(&mut self, t: usize, to: UserId, cid: Option<String>) -> u64 {
        let sid = self.tabs[t].sid;
        let r = Request::Send {
            sid,
            to,
            text: format!("m{}", self.next_req + 1),
            cid: cid.clone(),
        };
        self.request(Kind::Send { to, cid }, Some(t), r)
    }

    fn roster_changed(&mut self, user: UserId) {
        let kind = Kind::RosterChanged {
            user,
            version: self.version,
        };
        self.request(kind, None, Request::RosterChanged { user });
    }

    /// Retries due sends, from their tab or another live tab of the user.
    fn due_retries(&mut self) {
        let now = self.now;
        let (due, later): (Vec<Retry>, Vec<Retry>) =
            self.retries.drain(..).partition(|r| r.at <= now);
        self.retries = later;
        for r in due {
            if let Some(req) = r.timeout_of {
                let answered = !self.calls.contains_key(&req);
                if answered && !self.rng.chance(20) {
                    continue; // the client saw the answer in time
                }
            }
            let user = self.tabs[r.tab].user;
            let tab = if self.tabs[r.tab].state == TabState::Live {
                Some(r.tab)
            } else {
                self.live_tabs()
                    .into_iter()
                    .find(|&t| self.tabs[t].user == user)
            };
            if let Some(t) = tab {
                self.figures.retries += 1;
                if r.timeout_of.is_some() {
                    self.figures.timeout_retries += 1;
                }
                self.send(t, r.to, Some(r.cid));
            }
        }
        // The web app repeats roster-changed until it succeeds.
        for user in std::mem::take(&mut self.roster_todo) {
            self.roster_changed(user);
        }
    }

    /// The tab's view is rebuilt from history (after connect or reset).
    fn rebuild(&mut self, t: usize) {
        let user = self.tabs[t].user;
        let view = self.store.ids_of(user).collect();
        self.tabs[t].view = view;
        self.tabs[t].live.clear();
    }

    /// Whether the model knows the server holds tab `t` now: attached, no
    /// eviction it cannot pin down, and not idle for the tab timeout.
    fn surely_attached(&self, t: usize) -> bool {
        let tab = &self.tabs[t];
        tab.state == TabState::Live
            && tab.certain
            && (tab.polls_held > 0 || self.now < tab.idle_since + self.shape.tab_timeout_ms)
    }

    fn server_has(&self, sid: Sid) -> bool {
        let home = &self.shards[home_shard(sid.user, self.shards.len())];
        home.live_session(sid.user)
            .is_some_and(|s| s.tab_index(sid).is_some())
    }

    // ---- checking replies ---------------------------------------------

    /// One reply: exactly one per request, of a kind allowed for it, and
    /// consistent with the model and the store.
    fn on_reply(&mut self, shard: usize, to: ReplyTo, response: Response) {
        let Some(call) = self.calls.remove(&to.req) else {
            if self.cut.remove(&to.req) {
                return self.cut_answered(to.req, response);
            }
            self.fail(format!(
                "shard {shard} answered request #{} that has no reply outstanding: {response:?}",
                to.req
            ));
        };
        self.note(format!("reply #{}: {response:?}", to.req));
        if to.shard != call.conn {
            self.fail(format!(
                "reply #{} to shard {} not {}",
                to.req, to.shard, call.conn
            ));
        }
        let t = call.tab;
        if let (Kind::Poll { .. }, Some(t)) = (&call.kind, t) {
            self.tabs[t].polls_out -= 1;
            if call.arrived {
                self.tabs[t].polls_held -= 1;
            }
            if matches!(response, Response::Events { .. } | Response::Reset { .. }) {
                // The poll ended: the server's idle clock restarts.
                self.tabs[t].idle_since = self.now;
            }
        }
        // A draining shard starts no roster re-read for a change: a
        // `roster-changed` under way when a hand-over began may fail.
        let drained = call.drains < self.drains && matches!(call.kind, Kind::RosterChanged { .. });
        let unavailable_ok = call.faults < self.faults || call.kicks < self.kicks || drained;
        if let Response::Failed(f) = &response {
            match f.code {
                ErrorCode::UnknownSession => {
                    let t = t.unwrap_or_else(|| {
                        self.fail(format!("admin call answered {f:?}"));
                    });
                    if self.server_has(self.tabs[t].sid) {
                        self.fail(format!(
                            "#{} {:?} answered unknown_session for an attached tab",
                            to.req, call.kind
                        ));
                    }
                    if matches!(call.kind, Kind::Connect { .. }) {
                        self.fail(format!("connect answered {f:?}"));
                    }
                    if self.surely_attached(t) {
                        self.fail(format!(
                            "#{} {:?} answered unknown_session though tab {t} ({:?}) can only be attached",
                            to.req, call.kind, self.tabs[t].sid
                        ));
                    }
                    self.tabs[t].state = TabState::Dead;
                    return;
                }
                ErrorCode::RateLimited => {
                    self.on_rate_limited(t, &call.kind);
                    return;
                }
                ErrorCode::Unavailable if !unavailable_ok => {
                    self.fail(format!(
                        "#{} {:?} answered unavailable with no storage fault or kick since it was made: {f:?}",
                        to.req, call.kind
                    ));
                }
                _ => {}
            }
        }
        match (call.kind, response) {
            (Kind::Connect { user, name }, Response::Connected(c)) => {
                let t = t.expect("connect has a tab");
                if c.sid != self.tabs[t].sid || c.user != user {
                    self.fail(format!("connect answered for another tab: {c:?}"));
                }
                if let Some(n) = &name {
                    if &*c.tab != n.as_str() {
                        self.fail(format!("connect named the tab {:?}, not {n:?}", c.tab));
                    }
                }
                self.attached(user, &c.tab);
                let tab = &mut self.tabs[t];
                tab.name = Some(c.tab.to_string());
                tab.state = TabState::Live;
                tab.since = c.seq;
                tab.idle_since = self.now;
                self.rebuild(t);
                if self.tabs[t].polls_on {
                    let wait = self.rng.range(0, 25) * 1_000;
                    self.poll(t, wait);
                }
            }
            (Kind::Connect { .. }, Response::Failed(f)) if f.code == ErrorCode::Unavailable => {
                self.tabs[t.unwrap()].state = TabState::Dead;
            }
            (Kind::Poll { since }, Response::Events { seq, events }) => {
                let t = t.unwrap();
                // Seqs increase, all after `since`, the newest is `seq`; they
                // may skip the typing events a later one from the same user
                // replaced (coalescing). Messages skipped would show in the
                // end-of-run check that every tab has every message.
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                let increasing = seqs.windows(2).all(|w| w[0] < w[1]);
                let bounded = seqs.first().is_none_or(|&s| s > since)
                    && seqs.last().copied() == (since < seq).then_some(seq);
                if !increasing || !bounded {
                    self.fail(format!(
                        "poll since {since} answered seq {seq} with events {seqs:?}"
                    ));
                }
                for e in events {
                    if e.seq <= self.tabs[t].since {
                        continue;
                    }
                    if let EventKind::Message(m) = &e.kind {
                        let user = self.tabs[t].user;
                        if m.from != user && m.to != user {
                            self.fail(format!("tab of {user} got {m:?}"));
                        }
                        if self.store.message(m.id) != Some(m) {
                            self.fail(format!("event {m:?} is not the stored message"));
                        }
                        if !self.tabs[t].live.insert(m.id) {
                            self.fail(format!(
                                "tab {t} ({:?}) got message {} twice",
                                self.tabs[t].sid, m.id
                            ));
                        }
                        self.tabs[t].view.insert(m.id);
                    }
                }
                self.tabs[t].since = self.tabs[t].since.max(seq);
                self.repoll(t);
            }
            (Kind::Poll { since }, Response::Reset { seq }) => {
                let t = t.unwrap();
                if seq < since {
                    self.fail(format!("reset to {seq} below since {since}"));
                }
                self.figures.resets += 1;
                self.tabs[t].since = self.tabs[t].since.max(seq);
                self.rebuild(t);
                self.repoll(t);
            }
            (Kind::Send { to, cid }, Response::Sent { id, ts }) => {
                let t = t.unwrap();
                let user = self.tabs[t].user;
                if !call.friendship.may_be_friends {
                    self.fail(format!("send {user}→{to} acknowledged (not friends)"));
                }
                let m = self.store.message(id).cloned();
                let ok = m.as_ref().is_some_and(|m| {
                    m.from == user && m.to == to && m.ts == ts && m.cid.as_deref() == cid.as_deref()
                });
                if !ok {
                    self.fail(format!(
                        "send {user}→{to} cid {cid:?} answered id {id} ts {ts}, store has {m:?}"
                    ));
                }
                if let Some(c) = cid {
                    let first = *self.acked.entry((user, c.clone())).or_insert(id);
                    if first != id {
                        self.fail(format!("cid {c} acknowledged as {first} then {id}"));
                    }
                }
                if self.acked_ids.insert(id) {
                    self.figures.acked += 1;
                }
            }
            (Kind::Send { to, cid }, Response::Failed(f)) => {
                let t = t.unwrap();
                let user = self.tabs[t].user;
                match f.code {
                    ErrorCode::Unavailable => {
                        if let Some(cid) = cid {
                            let at = self.now + self.rng.range(1, 60) * 50;
                            self.retries.push(Retry {
                                at,
                                tab: t,
                                to,
                                cid,
                                timeout_of: None,
                            });
                        }
                    }
                    code => self.check_refusal(user, to, code, call.friendship, "send"),
                }
            }
            (Kind::Typing { to }, Response::Done) => {
                let user = self.tabs[t.unwrap()].user;
                self.check_friends_ok(user, to, call.friendship, "typing");
            }
            (Kind::Typing { to }, Response::Failed(f)) => {
                let user = self.tabs[t.unwrap()].user;
                self.check_refusal(user, to, f.code, call.friendship, "typing");
            }
            (Kind::Read { with }, Response::Done) => {
                let user = self.tabs[t.unwrap()].user;
                self.check_friends_ok(user, with, call.friendship, "read");
            }
            (Kind::Read { with }, Response::Failed(f)) if f.code != ErrorCode::Unavailable => {
                let user = self.tabs[t.unwrap()].user;
                self.check_refusal(user, with, f.code, call.friendship, "read");
            }
            (
                Kind::History {
                    with,
                    before,
                    limit,
                },
                Response::History { messages, more, .. },
            ) => {
                let t = t.unwrap();
                self.check_page(t, with, before, limit, &messages, more);
            }
            (Kind::History { with, .. }, Response::Failed(f))
                if f.code == ErrorCode::BadRequest =>
            {
                let user = self.tabs[t.unwrap()].user;
                if with != user {
                    self.fail(format!("history with {with} refused: {f:?}"));
                }
            }
            (Kind::Leave, Response::Done) => {
                self.tabs[t.unwrap()].state = TabState::Dead;
            }
            (Kind::Kick { .. }, Response::Done) => {}
            (Kind::RosterChanged { user, version }, Response::Done) => {
                // Pairs of `user` changed before this call are in force on
                // both sides now.
                if self.switches.roster_ack {
                    self.unsettled
                        .retain(|&(a, b), &mut v| !((a == user || b == user) && v <= version));
                }
            }
            (Kind::RosterChanged { user, .. }, Response::Failed(f))
                if f.code == ErrorCode::Unavailable =>
            {
                self.roster_todo.push(user);
            }
            (Kind::Presence | Kind::Ui, Response::Done) => {}
            (Kind::Ui | Kind::Read { .. } | Kind::History { .. }, Response::Failed(f))
                if f.code == ErrorCode::Unavailable => {}
            (kind, response) => {
                self.fail(format!("{kind:?} answered {response:?}"));
            }
        }
    }

    /// A new tab named `name` was attached to `user`'s session: the live
    /// tab of that name was replaced, and one of the others may have been
    /// evicted.
    fn attached(&mut self, user: UserId, name: &str) {
        let others: Vec<usize> = self
            .live_tabs()
            .into_iter()
            .filter(|&o| self.tabs[o].user == user)
            .collect();
        let mut kept = 0;
        for &o in &others {
            if self.tabs[o].name.as_deref() == Some(name) {
                self.tabs[o].state = TabState::Dead; // replaced
            } else {
                kept += 1;
            }
        }
        // The server may evict one of them (it may hold fewer than
        // the model: some may have timed out).
        if kept >= self.shape.tabs_max {
            self.figures.evictions += 1;
            for o in others {
                self.tabs[o].certain = false;
            }
        }
    }

    /// The answer to call `#req`, whose connection a hand-over closed: it
    /// reaches nobody, but what the call did stands (a connect's tab
    /// replaced or evicted another).
    fn cut_answered(&mut self, req: u64, response: Response) {
        self.note(format!("reply #{req} (cut, reaches nobody): {response:?}"));
        if let Response::Connected(c) = response {
            self.attached(c.user, &c.tab);
        }
    }

    /// A call answered `rate_limited`: allowed only in worlds with the
    /// limits on. The client retries a send later with the same cid (as it
    /// does after `unavailable`); a refused connect leaves its tab dead.
    fn on_rate_limited(&mut self, t: Option<usize>, kind: &Kind) {
        if !self.shape.rate_limited {
            self.fail(format!(
                "{kind:?} answered rate_limited with the limits off"
            ));
        }
        self.figures.rate_limited += 1;
        match kind {
            Kind::Send { to, cid: Some(cid) } => {
                let at = self.now + self.rng.range(1, 60) * 50;
                self.retries.push(Retry {
                    at,
                    tab: t.expect("a send has a tab"),
                    to: *to,
                    cid: cid.clone(),
                    timeout_of: None,
                });
            }
            Kind::Connect { .. } => {
                self.tabs[t.expect("a connect has a tab")].state = TabState::Dead
            }
            Kind::Poll { .. } | Kind::Leave | Kind::Kick { .. } | Kind::RosterChanged { .. } => {
                self.fail(format!("{kind:?} is never rate-limited"));
            }
            _ => {}
        }
    }

    /// The client polls again after an answer (if it keeps polling).
    fn repoll(&mut self, t: usize) {
        let tab = &self.tabs[t];
        if tab.state == TabState::Live && tab.polls_on && tab.polls_out == 0 {
            let wait = if self.rng.chance(20) {
                0
            } else {
                self.rng.range(1, 30) * 1_000
            };
            self.poll(t, wait);
        }
    }

    /// A friends-only call was accepted: they must be friends, or their
    /// friendship be changing.
    fn check_friends_ok(&self, user: UserId, other: UserId, f: Friendship, what: &str) {
        if !f.may_be_friends {
            self.fail(format!("{what} {user}→{other} accepted (not friends)"));
        }
    }

    /// A call addressing `other` was refused with `code`.
    fn check_refusal(
        &self,
        user: UserId,
        other: UserId,
        code: ErrorCode,
        f: Friendship,
        what: &str,
    ) {
        match code {
            ErrorCode::BadRequest if other == user => {}
            ErrorCode::NotFriends if other != user => {
                if !f.may_be_strangers {
                    self.fail(format!(
                        "{what} {user}→{other} refused not_friends (friends)"
                    ));
                }
            }
            code => self.fail(format!("{what} {user}→{other} refused {code:?}")),
        }
    }

    /// A history page: in order, of this conversation, exactly the store's
    /// newest `limit` before `before`, and `more` exactly when older ones
    /// exist. Pages of one paging run join without gaps or duplicates.
    fn check_page(
        &mut self,
        t: usize,
        with: UserId,
        before: Option<MsgId>,
        limit: u32,
        page: &[Arc<Message>],
        more: bool,
    ) {
        self.figures.history_pages += 1;
        let user = self.tabs[t].user;
        let all = self.store.conversation(user, with);
        // Messages committed after the read have higher ids: bound by the
        // page's newest (or by `before`).
        let bound = match (before, page.last()) {
            (Some(b), _) => b,
            (None, Some(newest)) => newest.id + 1,
            (None, None) => {
                // Empty at read time: nothing older than what came since.
                if more {
                    self.fail(format!("empty history page with more, {user}↔{with}"));
                }
                return;
            }
        };
        let older: Vec<&Arc<Message>> = all.iter().filter(|m| m.id < bound).collect();
        let skip = older.len().saturating_sub(limit as usize);
        let want: Vec<MsgId> = older[skip..].iter().map(|m| m.id).collect();
        let got: Vec<MsgId> = page.iter().map(|m| m.id).collect();
        if got != want || more != (skip > 0) {
            self.fail(format!(
                "history {user}↔{with} before {before:?} limit {limit}: got {got:?} more {more}, store has {want:?} more {}",
                skip > 0
            ));
        }
        for m in page {
            if self.store.message(m.id) != Some(m) {
                self.fail(format!("history returned {m:?}, not the stored message"));
            }
        }
        self.tabs[t].paging = match (page.first(), more) {
            (Some(oldest), true) => Some((with, oldest.id)),
            _ => None,
        };
    }

    // ---- invariants after every input ---------------------------------

    fn check(&mut self) {
        let n = self.shards.len();
        for s in &self.shards {
            // No `Presence` message is lost in these worlds (only message
            // and read deliveries are dropped), so a digest never finds a
            // replica wrong: a repair would be a presence change friends
            // see that no user caused (a hand-over that lost or garbled a
            // replica, say).
            if s.stats().presence_repairs != 0 {
                self.fail(format!(
                    "shard {}: {} presence entries repaired by a digest, though no Presence message was lost",
                    s.config().shard,
                    s.stats().presence_repairs
                ));
            }
            let bound = s.tab_count() + 2 * s.session_count();
            if s.timer_count() > bound {
                self.fail(format!(
                    "shard {}: {} timers for {} tabs and {} sessions",
                    s.config().shard,
                    s.timer_count(),
                    s.tab_count(),
                    s.session_count()
                ));
            }
            if s.jobs_in_flight() > limits::JOBS_IN_FLIGHT_MAX {
                self.fail(format!("{} jobs in flight", s.jobs_in_flight()));
            }
        }
        let mut jobs_here = vec![0; n];
        for j in &self.jobs {
            jobs_here[j.shard] += 1;
        }
        for (s, &here) in jobs_here.iter().enumerate() {
            if self.shards[s].jobs_in_flight() > here {
                self.fail(format!(
                    "shard {s} has {} jobs in flight, the world {here}",
                    self.shards[s].jobs_in_flight(),
                ));
            }
        }
        // Presence broadcasts in flight: (user, to shard).
        let mut presence_in_flight = HashSet::new();
        for (&(_, to), q) in &self.links {
            for w in q {
                if let Wire::Peer(PeerMsg::Presence { user, .. }) = w {
                    presence_in_flight.insert((*user, to));
                }
            }
        }
        for u in 1..=self.shape.users {
            self.check_user(u, &presence_in_flight);
        }
        for t in 0..self.tabs.len() {
            if self.surely_attached(t) && !self.server_has(self.tabs[t].sid) {
                self.fail(format!(
                    "tab {t} ({:?}) was detached though nothing could detach it",
                    self.tabs[t].sid
                ));
            }
        }
    }

    fn check_user(&mut self, u: UserId, presence_in_flight: &HashSet<(UserId, usize)>) {
        let prev = self.seen_events.remove(&u);
        let n = self.shards.len();
        let h = home_shard(u, n);
        let home = &self.shards[h];
        let live = home.live_session(u);
        // Presence: the home replica (updated on the local path) says
        // online or away exactly while the session is live; the others
        // agree once the home shard's broadcasts have arrived.
        let status = home.presence_of(u);
        if (status != Status::Offline) != live.is_some() {
            self.fail(format!(
                "presence of {u} is {status:?}, live session: {}",
                live.is_some()
            ));
        }
        if let Some(s) = live {
            if s.status != status {
                self.fail(format!(
                    "{u} is {:?} but its replica says {status:?}",
                    s.status
                ));
            }
        }
        for (i, other) in self.shards.iter().enumerate() {
            if !presence_in_flight.contains(&(u, i)) && other.presence_of(u) != status {
                self.fail(format!(
                    "shard {i} sees {u} {:?}, home shard {h} {status:?}",
                    other.presence_of(u)
                ));
            }
        }
        let Some(s) = live else {
            return;
        };
        let cfg = home.config();
        if s.tabs.len() > cfg.tabs_per_user_max {
            self.fail(format!("{u} has {} tabs", s.tabs.len()));
        }
        if s.events.len() > cfg.events_buffered_max {
            self.fail(format!("{u} buffers {} events", s.events.len()));
        }
        if s.tabs.is_empty() != s.grace.is_armed() {
            self.fail(format!(
                "{u}: {} tabs, grace armed {}",
                s.tabs.len(),
                s.grace.is_armed()
            ));
        }
        // Friends-only: every new event caused by another user comes from
        // someone in the roster (before or after this input).
        let roster: BTreeSet<UserId> = s.roster.keys().copied().collect();
        let (mut checked, before) = prev.unwrap_or_default();
        if checked > s.seq {
            checked = 0; // a new session
        }
        for e in s.events.iter().rev().take_while(|e| e.seq > checked) {
            let by = match &e.kind {
                EventKind::Message(m) => {
                    if m.from != u && m.to != u {
                        self.fail(format!("{u}'s session got {m:?}"));
                    }
                    // One's own message was checked when sent.
                    Some(m.from).filter(|&f| f != u)
                }
                EventKind::Typing { user, .. } | EventKind::Presence { user, .. } => Some(*user),
                EventKind::Read { by, .. } => Some(*by).filter(|&b| b != u),
                EventKind::Ui { .. } | EventKind::Roster { .. } => None,
            };
            if let Some(by) = by {
                if by != u && !roster.contains(&by) && !before.contains(&by) {
                    self.fail(format!(
                        "{u}'s session got {:?} from non-friend {by}",
                        e.kind
                    ));
                }
            }
        }
        // Once roster-changed returned for a pair, both sides' rosters
        // agree with the directory.
        if self.switches.roster_ack {
            for x in 1..=self.shape.users {
                let p = pair(u, x);
                if x != u
                    && !self.unsettled.contains_key(&p)
                    && roster.contains(&x) != self.store.are_friends(u, x)
                {
                    self.fail(format!(
                        "{u}'s roster has {x}: {}, the directory says {} (roster-changed returned)",
                        roster.contains(&x),
                        self.store.are_friends(u, x)
                    ));
                }
            }
        }
        let seq = s.seq;
        self.seen_events.insert(u, (seq, roster));
    }

    // ---- hand-overs -------------------------------------------------------

    /// A deploy's hand-over (`switchboard serve --takeover`), the way the
    /// engine runs it (`engine/src/stop.rs`, `engine/src/handover.rs`):
    /// 1. No process accepts: requests made from now on wait in the
    ///    listening sockets' backlog ([`World::request`]) for the new one.
    /// 2. Every shard drains (`Input::Drain`), each a moment after the one
    ///    before (a delivery may come between): held polls are answered
    ///    with no events, and nothing else comes of it.
    /// 3. The calls in flight are answered; those still unanswered
    ///    [`DRAIN_CALLS_MS`] after the drain are cut (their connections
    ///    close: the client retries). Ticks go on.
    /// 4. Past the calls, each shard freezes its ticks once none of its
    ///    storage jobs is outstanding (the engine counts the jobs it runs,
    ///    forgotten ones too); storage results and peer messages still
    ///    reach it.
    /// 5. Once every shard is frozen and the mesh is quiet (no message in
    ///    flight, no resync owed), every shard must be `settled()`, and the
    ///    state goes over ([`World::transfer`]).
    ///
    /// Then the new process serves the backlog, in order, and the clients
    /// go on with the same sids and `since`.
    fn hand_over(&mut self) {
        let n = self.shards.len();
        let began = self.now;
        self.figures.handovers += 1;
        self.drains += 1;
        self.note("hand-over: the old process stops accepting and drains".into());
        self.backlog = Some(Vec::new());
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for s in order {
            self.drain_shard(s);
            if self.rng.chance(30) {
                self.drain_some(1);
            }
        }
        // The calls still in flight when the drain bound passes are cut.
        // (Not sooner: a connection with a call in flight is not read, so
        // a client that gives up is not noticed before its answer.)
        let cut_at = began + DRAIN_CALLS_MS;
        let mut past_calls = false;
        loop {
            if !past_calls {
                if !self.calls.values().any(|c| !c.held_back) {
                    past_calls = true;
                } else if self.now >= cut_at {
                    self.cut_calls();
                    past_calls = true;
                }
            }
            if past_calls {
                for s in 0..n {
                    let outstanding = self
                        .jobs
                        .iter()
                        .any(|j| j.shard == s && j.answer_at != u64::MAX);
                    if !self.frozen[s] && !outstanding && self.rng.chance(50) {
                        self.frozen[s] = true;
                        self.note(format!("hand-over: shard {s} freezes"));
                    }
                }
            }
            let quiet = self.links.values().all(VecDeque::is_empty) && self.owed.is_empty();
            if quiet && self.frozen.iter().all(|&f| f) {
                break;
            }
            if self.now > began + HANDOVER_MS_MAX {
                self.fail(format!(
                    "hand-over stuck: frozen {:?}, {} calls, {} jobs",
                    self.frozen,
                    self.calls.values().filter(|c| !c.held_back).count(),
                    self.jobs.len()
                ));
            }
            // The mesh is quick next to a tick: mostly deliveries.
            match self.rng.below(10) {
                0..=5 => {
                    if !self.deliver_one_wire() && !self.storage_one() {
                        self.tick();
                    }
                }
                6..=8 => {
                    if !self.storage_one() && !self.deliver_one_wire() {
                        self.tick();
                    }
                }
                _ => self.tick(),
            }
        }
        for s in 0..n {
            if let Err(why) = self.shards[s].settled() {
                self.fail(format!(
                    "shard {s} is not settled with every shard frozen and the mesh quiet: {why}"
                ));
            }
        }
        self.transfer();
    }

    /// Whether storage is slow right now: a job or a directory reload under
    /// way will take another second or more. A deploy then has calls to
    /// wait for, maybe to cut, and jobs finishing late, while shards
    /// freeze: half the hand-overs wait (a while) for such a moment.
    fn busy(&self) -> bool {
        let later = self.now + 1_000;
        self.reloads.iter().any(|r| r.at >= later)
            || self
                .jobs
                .iter()
                .any(|j| j.answer_at != u64::MAX && j.answer_at >= later)
    }

    /// Drains shard `s`: its held polls are answered, each with no events,
    /// and nothing else comes out (no presence change, no peer message, no
    /// storage job); it holds no poll after.
    fn drain_shard(&mut self, s: usize) {
        self.note(format!("hand-over: shard {s} drains"));
        let held = self.shards[s].held_poll_count();
        let changes = self.shards[s].stats().presence_changes;
        let mut out = Vec::new();
        self.shards[s].handle(self.now, Input::Drain, &mut out);
        for o in &out {
            match o {
                Output::Reply {
                    response: Response::Events { events, .. },
                    ..
                } if events.is_empty() => {}
                o => self.fail(format!("draining shard {s} put out {o:?}")),
            }
        }
        let shard = &self.shards[s];
        if out.len() != held || shard.held_poll_count() != 0 || !shard.is_draining() {
            self.fail(format!(
                "shard {s} drained: {} answers for {held} held polls, {} held after, draining {}",
                out.len(),
                shard.held_poll_count(),
                shard.is_draining()
            ));
        }
        if shard.stats().presence_changes != changes {
            self.fail(format!("draining shard {s} changed someone's presence"));
        }
        self.absorb(s, out);
    }

    /// The drain bound passed: every call of the old process still
    /// unanswered loses its connection. The client sees a network error:
    /// a send is retried with its cid, a poll made again (at the new
    /// process), a `roster-changed` repeated by the web app; a connect or
    /// a leave is given up (the page reloads or has closed).
    fn cut_calls(&mut self) {
        let mut reqs: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| !c.held_back)
            .map(|(&r, _)| r)
            .collect();
        reqs.sort_unstable();
        for req in reqs {
            let call = self.calls.remove(&req).expect("listed");
            self.cut.insert(req);
            self.figures.cut_calls += 1;
            self.note(format!("hand-over: #{req} {:?} cut unanswered", call.kind));
            let t = call.tab;
            match call.kind {
                Kind::Poll { .. } => {
                    let t = t.expect("a poll has a tab");
                    self.tabs[t].polls_out -= 1;
                    if call.arrived {
                        self.tabs[t].polls_held -= 1;
                    }
                    self.repoll(t);
                }
                Kind::Send { to, cid: Some(cid) } => {
                    let at = self.now + self.rng.range(1, 60) * TICK_MS;
                    self.retries.push(Retry {
                        at,
                        tab: t.expect("a send has a tab"),
                        to,
                        cid,
                        timeout_of: None,
                    });
                }
                Kind::Connect { .. } | Kind::Leave => {
                    self.tabs[t.expect("a tab's call")].state = TabState::Dead;
                }
                Kind::RosterChanged { user, .. } => self.roster_todo.push(user),
                _ => {}
            }
        }
    }

    /// The old process closes its store: the jobs it answered `TimedOut`
    /// that still run commit now (or never); no result reaches a shard.
    fn close_store(&mut self) {
        while let Some(i) = self.jobs.iter().position(|j| j.run_at.is_some()) {
            if self.jobs[i].answer_at != u64::MAX {
                self.jobs[i].answer_at = u64::MAX; // its answer goes nowhere
            }
            self.run_job(i);
        }
        self.jobs.clear();
    }

    /// The state goes to the new process: each shard, settled, is written
    /// with `serde_json` as the engine sends it and read back, must come
    /// back the same ([`World::check_fidelity`]), is refused under another
    /// shard's settings and resumes under its own. Then the new process
    /// serves the backlog.
    fn transfer(&mut self) {
        let n = self.shards.len();
        self.close_store();
        let gap = self.rng.below(TRANSFER_GAP_MS_MAX / TICK_MS + 1) * TICK_MS;
        self.now += gap;
        self.note(format!("hand-over: the state goes over ({gap} ms)"));
        // The old process's connections end with it: a directory reload
        // still under way goes nowhere (its call was cut).
        for r in std::mem::take(&mut self.reloads) {
            if !self.cut.contains(&r.reply.req) {
                self.fail(format!(
                    "#{} reloads the directory past the hand-over, never cut",
                    r.reply.req
                ));
            }
            self.note(format!(
                "hand-over: #{}'s directory reload ends with the old process",
                r.reply.req
            ));
        }
        let old = std::mem::take(&mut self.shards);
        let mut new = Vec::with_capacity(n);
        for (s, shard) in old.iter().enumerate() {
            let config = shard.config().clone();
            let json = serde_json::to_string(shard)
                .unwrap_or_else(|e| self.fail(format!("shard {s} cannot be written: {e}")));
            let read = |w: &World| -> Shard {
                serde_json::from_str(&json)
                    .unwrap_or_else(|e| w.fail(format!("shard {s}'s state cannot be read: {e}")))
            };
            let restored = read(self);
            self.check_fidelity(s, shard, &json, &restored);
            for wrong in [Config::new((s + 1) % n, n), Config::new(s, n + 1)] {
                if read(self).resumed(wrong.clone()).is_ok() {
                    self.fail(format!(
                        "shard {s}'s state resumed as shard {} of {}",
                        wrong.shard, wrong.shard_count
                    ));
                }
            }
            let resumed = restored
                .resumed(config)
                .unwrap_or_else(|why| self.fail(format!("shard {s} refused its state: {why}")));
            if resumed.is_draining()
                || resumed.roster_changes_waiting() != 0
                || resumed.settled() != Err(NotSettled::NotDraining)
            {
                self.fail(format!(
                    "shard {s} resumed draining {} with {} roster changes waiting",
                    resumed.is_draining(),
                    resumed.roster_changes_waiting()
                ));
            }
            self.figures.sessions_handed += resumed.session_count() as u64;
            self.figures.tabs_handed += resumed.tab_count() as u64;
            new.push(resumed);
        }
        self.shards = new;
        self.frozen = vec![false; n];
        // The old process is gone: nothing answers its calls any more (a
        // reply to one now would come from state that kept a connection
        // of the old process).
        self.cut.clear();
        let backlog = self.backlog.take().expect("a hand-over under way");
        self.note(format!(
            "hand-over: the new process serves ({} requests waited)",
            backlog.len()
        ));
        for (conn, home, wire) in backlog {
            if let Wire::Request { reply, .. } = &wire {
                if let Some(call) = self.calls.get_mut(&reply.req) {
                    call.held_back = false;
                }
            }
            self.accepted(conn, home, wire);
        }
        self.check();
    }

    /// Shard `s` was written as `json` and read back as `read`: the JSON
    /// it writes is the same (as values: maps are hash maps, in no
    /// particular order), nothing serde does not carry
    /// (`#[serde(skip)]`) is missed in anything the sim can see of it,
    /// and every tab's next poll is answered as the old process would
    /// have answered it (no `unknown_session` or `reset` of its making).
    fn check_fidelity(&self, s: usize, old: &Shard, json: &str, read: &Shard) {
        let again = serde_json::to_string(read)
            .unwrap_or_else(|e| self.fail(format!("shard {s} read back cannot be written: {e}")));
        let value = |text: &str| -> Value {
            serde_json::from_str(text).unwrap_or_else(|e| self.fail(format!("{e}")))
        };
        let (was, is) = (value(json), value(&again));
        if was != is {
            self.fail(format!(
                "shard {s}'s state read back writes other JSON, at {}",
                first_difference(&was, &is, "$".into())
            ));
        }
        let seen = |shard: &Shard| -> Vec<String> {
            let mut lines = vec![
                format!("{:?}", shard.config()),
                format!("{:?}", shard.stats()),
                format!(
                    "sessions {} tabs {} polls {} timers {} jobs {} changes waiting {} traced {} draining {} settled {:?}",
                    shard.session_count(),
                    shard.tab_count(),
                    shard.held_poll_count(),
                    shard.timer_count(),
                    shard.jobs_in_flight(),
                    shard.roster_changes_waiting(),
                    shard.traced_count(),
                    shard.is_draining(),
                    shard.settled()
                ),
            ];
            for u in 1..=self.shape.users {
                let mut line = format!("user {u}: presence {:?}", shard.presence_of(u));
                let _ = write!(line, ", session {:?}", shard.session(u));
                lines.push(line);
            }
            lines
        };
        let (was, is) = (seen(old), seen(read));
        if let Some(i) = (0..was.len()).find(|&i| was[i] != is[i]) {
            let (a, b) = (&was[i], &is[i]);
            let at = a
                .char_indices()
                .zip(b.chars())
                .find(|((_, x), y)| x != y)
                .map_or(a.len().min(b.len()), |((i, _), _)| i);
            let from = a[..at].char_indices().rev().nth(150).map_or(0, |(i, _)| i);
            let window = |t: &str| {
                t.get(from..)
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect::<String>()
            };
            self.fail(format!(
                "shard {s} read back differs (what the sim sees of it):\n    was …{}\n    is  …{}",
                window(a),
                window(b)
            ));
        }
        for (t, tab) in self.tabs.iter().enumerate() {
            let u = tab.user;
            if tab.state != TabState::Live || home_shard(u, old.config().shard_count) != s {
                continue;
            }
            let answer = |shard: &Shard| {
                shard.live_session(u).map(|l| {
                    let attached = l.tab_index(tab.sid).is_some();
                    let answer = (tab.since <= l.seq).then(|| l.answer_since(tab.since));
                    format!("attached {attached}, answer {answer:?}")
                })
            };
            let (was, is) = (answer(old), answer(read));
            if was != is {
                self.fail(format!(
                    "tab {t} ({:?}, since {}) would be answered otherwise by the new process: {was:?}, now {is:?}",
                    tab.sid, tab.since
                ));
            }
        }
    }

    // ---- the end --------------------------------------------------------

    /// Stops faults and new client actions; delivers everything, lets
    /// every slow job commit or not, keeps live tabs polling and retries
    /// sends until none is left.
    fn quiesce(&mut self) {
        self.faults_on = false;
        self.note("quiescing".into());
        for t in self.live_tabs() {
            self.tabs[t].polls_on = true;
            if self.tabs[t].polls_out == 0 {
                self.poll(t, 20_000);
            }
        }
        let rounds = (STORAGE_TIMEOUT_MS + LATE_COMMIT_MS_MAX) / TICK_MS * 6;
        for round in 0.. {
            while self.deliver_one_wire() || self.storage_one() {}
            self.due_retries();
            let busy = !self.jobs.is_empty()
                || !self.retries.is_empty()
                || !self.roster_todo.is_empty()
                || self
                    .calls
                    .values()
                    .any(|c| !matches!(c.kind, Kind::Poll { .. }));
            if !busy && round >= 2 {
                break;
            }
            if round > rounds {
                self.fail(format!(
                    "no quiescence: {} jobs, {} retries, {} calls",
                    self.jobs.len(),
                    self.retries.len(),
                    self.calls.len()
                ));
            }
            self.tick();
        }
        // Every live tab catches up.
        for t in self.live_tabs() {
            self.poll(t, 0);
        }
        while self.deliver_one_wire() || self.storage_one() {}
    }

    /// After quiescence: every acknowledged message is in every live tab
    /// of both users; then every tab leaves, every held poll is answered,
    /// and once grace passes nothing is left.
    fn finish(&mut self) {
        self.figures.messages = self.store.messages.len() as u64;
        for t in self.live_tabs() {
            if !self.server_has(self.tabs[t].sid) {
                continue; // detached meanwhile: it owes nothing
            }
            let user = self.tabs[t].user;
            for &id in &self.acked_ids {
                let m = self.store.message(id).expect("acked is stored");
                if m.from != user && m.to != user {
                    continue;
                }
                if self.tabs[t].view.contains(&id) {
                    continue;
                }
                if m.to == user && self.toggled.contains(&pair(m.from, m.to)) {
                    continue; // dropped by friends-only while changing
                }
                if self.in_doubt.contains(&id) && !self.switches.in_doubt_delivery {
                    continue; // known bug: see Switches::in_doubt_delivery
                }
                let why = if self.in_doubt.contains(&id) {
                    " (stored by a try the engine answered TimedOut; acknowledged to a retry as a duplicate)"
                } else {
                    ""
                };
                self.fail(format!(
                    "message {id} ({}→{}, cid {:?}) acknowledged but never reached tab {t} ({:?}) of user {user}{why}",
                    m.from, m.to, m.cid, self.tabs[t].sid
                ));
            }
        }
        for t in self.live_tabs() {
            let sid = self.tabs[t].sid;
            self.request(Kind::Leave, Some(t), Request::Leave { sid });
        }
        while self.deliver_one_wire() || self.storage_one() {}
        if !self.calls.is_empty() {
            let left: Vec<String> = self
                .calls
                .iter()
                .map(|(r, c)| format!("#{r} {:?}", c.kind))
                .collect();
            self.fail(format!("requests never answered: {left:?}"));
        }
        let ticks = self.shape.grace_ms / TICK_MS + 2;
        let mut tick = 0;
        while tick < ticks || !self.jobs.is_empty() {
            self.tick();
            tick += 1;
            while self.deliver_one_wire() || self.storage_one() {}
            if tick > ticks + STORAGE_TIMEOUT_MS / TICK_MS * 2 {
                self.fail(format!("{} storage jobs never finished", self.jobs.len()));
            }
        }
        for s in &self.shards {
            if s.session_count() != 0 || s.timer_count() != 0 || s.jobs_in_flight() != 0 {
                self.fail(format!(
                    "shard {} after everyone left: {} sessions, {} timers, {} jobs",
                    s.config().shard,
                    s.session_count(),
                    s.timer_count(),
                    s.jobs_in_flight()
                ));
            }
        }
    }
}

/// Where two JSON values first differ (a path like `$.sessions.by_user`),
/// with the values there, cut short.
fn first_difference(a: &Value, b: &Value, at: String) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    None => return format!("{at}.{k} (missing when read back)"),
                    Some(vb) if va != vb => return first_difference(va, vb, format!("{at}.{k}")),
                    Some(_) => {}
                }
            }
            match y.keys().find(|k| !x.contains_key(*k)) {
                Some(k) => format!("{at}.{k} (new when read back)"),
                None => at,
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            match x.iter().zip(y).position(|(va, vb)| va != vb) {
                Some(i) => first_difference(&x[i], &y[i], format!("{at}[{i}]")),
                None => at,
            }
        }
        _ => {
            let cut = |v: &Value| v.to_string().chars().take(300).collect::<String>();
            format!("{at}: {} vs {}", cut(a), cut(b))
        }
    }
}

impl Job {
    fn clone_pending(&self) -> Job {
        Job {
            shard: self.shard,
            job: self.job,
            request: self.request.clone(),
            fate: self.fate,
            run_at: self.run_at,
            answer_at: self.answer_at,
            output: None,
        }
    }
}
