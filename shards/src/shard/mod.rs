//! The shard state machine: the users homed on one shard, driven by
//! [`Input`]s and answering with [`Output`]s.
//!
//! Invariants (checked by the simulation tests):
//! - a user's session lives on exactly one shard, `home_shard(user)`;
//! - an event reaches a session only if its user and the event's other user
//!   are friends in that session's roster (friends-only);
//! - a live session with at least one tab is `online` or `away` in every
//!   shard's presence replica; a user with no session is absent from it;
//! - every request gets exactly one reply; a held poll is answered by an
//!   event, its wait running out, a newer poll, a leave, a kick or a drain.
//!
//! [`Shard::handle`] only dispatches; the work is split by job, one file
//! each, all `impl Shard` over the parts declared here:
//! - `requests`: a client or admin call, from checking its tab to the
//!   storage job or the answer;
//! - `sessions`: a session's life (load, attach and detach tabs, grace,
//!   end);
//! - `polls`: held polls and the tab timeout;
//! - `delivery`: events into session buffers, here or on the recipient's
//!   home shard;
//! - `presence`: the presence replica and its broadcast;
//! - `roster`: roster re-reads, periodic and after `roster-changed`;
//! - `jobs`: storage jobs in flight and where their results go;
//! - `time`: firing due timers (a stale one is counted and skipped);
//! - `drain`: the server is stopping: held polls answered, none held after;
//! - `handover`: a deploy hands the shard's state to a new process;
//! - `supervision`: which user an input concerns, and dropping that user
//!   after a panic.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::model::{
    ErrorCode, EventKind, ReplyTo, Request, Response, ShardId, Status, StorageJob, StorageResult,
    UserId,
};
use crate::ratelimit::RateLimits;
use crate::session::{BufferBounds, LiveSession, Session};
use crate::timers::Timers;
use crate::trace::{Note, Traced};

mod delivery;
mod drain;
mod handover;
mod jobs;
mod polls;
mod presence;
mod rates;
mod requests;
mod roster;
mod sessions;
mod supervision;
#[cfg(test)]
mod tests;
mod time;

use delivery::OrphanDoubts;
use drain::Drain;
pub use handover::NotSettled;
use jobs::Jobs;
use presence::Presence;
use roster::RosterChanges;
use sessions::Sessions;
pub use supervision::Unanswered;

/// A shard's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// This shard's index.
    pub shard: ShardId,
    /// How many shards there are.
    pub shard_count: usize,
    /// Offline grace after the last tab went.
    pub grace_ms: u64,
    /// A tab with no poll outstanding for this long is detached.
    pub tab_timeout_ms: u64,
    /// Rosters are re-read this often.
    pub roster_refresh_ms: u64,
    /// Events kept per session.
    pub events_buffered_max: usize,
    /// Bytes of events kept per session (`session::event_bytes`).
    pub events_buffered_bytes_max: usize,
    /// Per-user rate limits, one per kind of call.
    pub rate_limits: RateLimits,
    /// Tabs per session.
    pub tabs_per_user_max: usize,
    /// How often this shard sends every other its presence digest.
    pub presence_digest_ms: u64,
    /// Test-only fault: a `/send` from this user panics inside the shard
    /// (honoured only with the `fault-injection` feature; see
    /// [`crate::FAULT_INJECTION`]).
    #[serde(default)]
    pub panic_user: Option<UserId>,
    /// Test-only fault: handling the storage result that stored a message
    /// of this user (a fresh `Stored`, not a duplicate) panics inside the
    /// shard, after the job was taken out (honoured only with the
    /// `fault-injection` feature).
    #[serde(default)]
    pub panic_stored_user: Option<UserId>,
    /// Test-only fault: a held poll of this user running out panics inside
    /// the shard, on the tick that popped its timer (honoured only with
    /// the `fault-injection` feature).
    #[serde(default)]
    pub panic_timer_user: Option<UserId>,
    /// Test-only fault: storage jobs in flight at once, instead of
    /// `JOBS_IN_FLIGHT_MAX` (never more), so that a test can make the
    /// shard shed jobs (honoured only with the `fault-injection` feature).
    #[serde(default)]
    pub jobs_in_flight_max: Option<usize>,
}

impl Config {
    /// The shard that owns `user`: the one routing decision of the shard
    /// core, made here and nowhere else (`routing::home_shard` over this
    /// process's shards; a cluster extends this function, not its callers).
    pub fn home(&self, user: UserId) -> ShardId {
        crate::routing::home_shard(user, self.shard_count)
    }

    /// The protocol's defaults for shard `shard` of `shard_count`.
    pub fn new(shard: ShardId, shard_count: usize) -> Config {
        assert!(shard < shard_count, "shard {shard} of {shard_count}");
        Config {
            shard,
            shard_count,
            grace_ms: limits::PRESENCE_GRACE_MS_DEFAULT,
            tab_timeout_ms: limits::TAB_TIMEOUT_MS_DEFAULT,
            roster_refresh_ms: limits::ROSTER_REFRESH_MS_DEFAULT,
            events_buffered_max: limits::EVENTS_BUFFERED_MAX,
            events_buffered_bytes_max: limits::EVENTS_BUFFERED_BYTES_MAX,
            rate_limits: RateLimits::default(),
            tabs_per_user_max: limits::TABS_PER_USER_MAX,
            presence_digest_ms: limits::PRESENCE_DIGEST_MS_DEFAULT,
            panic_user: None,
            panic_stored_user: None,
            panic_timer_user: None,
            jobs_in_flight_max: None,
        }
    }

    /// The bounds of every session's event buffer.
    pub fn buffer_bounds(&self) -> BufferBounds {
        BufferBounds {
            events_max: self.events_buffered_max,
            bytes_max: self.events_buffered_bytes_max,
        }
    }
}

/// Names one admin `roster-changed` call across the shards: minted by the
/// shard the call came to (its `origin`), echoed in every shard's ack.
/// Unique per origin only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChangeId(pub u64);

/// Messages between shards. Each is handled by the shard that is home to
/// the users it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// An event for `to`'s session, caused by `from`: dropped unless the
    /// session is live and `from` is in its roster.
    Deliver {
        to: UserId,
        from: UserId,
        kind: EventKind,
    },
    /// `user`'s presence is now `status`. Sent to every shard (each keeps a
    /// replica of who is online); `notify` lists `user`'s friends homed on
    /// the receiving shard.
    Presence {
        user: UserId,
        status: Status,
        notify: Vec<UserId>,
    },
    /// `user`'s friendships were re-read after `roster-changed`: refresh
    /// every live session whose view of `user` disagrees with `friends`,
    /// then send `RosterAck { change }` to `origin`.
    RosterTouched {
        user: UserId,
        friends: Arc<[UserId]>,
        origin: ShardId,
        change: ChangeId,
    },
    /// Every user homed on shard `from` that is online or away there (a
    /// live session, tabless in grace included), by id, with the status
    /// broadcast for them. Sent every `presence_digest_ms`; the receiver
    /// makes its replica of `from`'s users exactly this (mesh channels are
    /// FIFO, so later `Presence` messages still apply after it), repairing
    /// whatever a lost `Presence` left wrong.
    PresenceDigest {
        from: ShardId,
        online: Vec<(UserId, Status)>,
    },
    /// One shard finished its part of roster change `change`; `ok` is false
    /// when a roster re-read failed (the admin call then fails too, so the
    /// web app retries).
    RosterAck { change: ChangeId, ok: bool },
    /// Deliveries to `who` (homed on the receiving shard) were dropped on
    /// the way (the sender's outbox was full): every tab of their live
    /// sessions is reset, so it reloads what it missed from history
    /// (`delivery.rs`). Sent by the engine, not by a shard core.
    Resync { who: Resync },
}

/// Whose tabs a [`PeerMsg::Resync`] resets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resync {
    /// These users' (by id; those with no live session are skipped).
    Users(Vec<UserId>),
    /// Every live session's on the receiving shard (the sender lost count
    /// of whom it dropped deliveries to).
    All,
}

/// Everything that drives a shard.
#[derive(Clone, Debug)]
pub enum Input {
    /// A request for a user homed here (or `Health`).
    Request { reply: ReplyTo, request: Request },
    /// A message from another shard.
    Peer(PeerMsg),
    /// A storage job this shard asked for has finished.
    Storage { job: u64, result: StorageResult },
    /// Time passed: fire due timers.
    Tick,
    /// The server is stopping: answer every held poll now (no events) and
    /// hold none from now on (`drain.rs`).
    Drain,
}

/// Everything a shard asks of the world.
#[derive(Clone, Debug)]
pub enum Output {
    /// Answer a request.
    Reply { to: ReplyTo, response: Response },
    /// Send a message to another shard.
    Peer { shard: ShardId, msg: PeerMsg },
    /// Run a storage job and feed its result back as `Input::Storage`.
    Storage { job: u64, request: StorageJob },
    /// Something happened to a traced user (`crate::trace`): for their
    /// trace, never acted on.
    Trace { user: UserId, note: Note },
}

/// Counters for metrics. Monotonic.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Events appended to session buffers.
    pub events: u64,
    /// Messages stored and delivered (not duplicates).
    pub messages: u64,
    /// Sends answered from a stored `cid`.
    pub duplicate_sends: u64,
    /// Requests shed because too many storage jobs were in flight.
    pub shed_jobs: u64,
    /// Storage jobs that failed.
    pub storage_failures: u64,
    /// Tabs detached for the tab timeout.
    pub tab_timeouts: u64,
    /// Tabs detached because a session had too many.
    pub tab_evictions: u64,
    /// Deliveries dropped by the receiver's friends-only check.
    pub not_friends_dropped: u64,
    /// Calls answered `rate_limited`.
    pub rate_limited: u64,
    /// Typing events that replaced an earlier one from the same user.
    pub typing_coalesced: u64,
    /// Events dropped from session buffers by their bounds.
    pub events_dropped: u64,
    /// Timers that fired without their owner (or with an owner armed for
    /// another deadline): skipped. Non-zero means an owner went without
    /// disarming, e.g. a user dropped after a panic.
    pub stale_timers: u64,
    /// Duplicate sends delivered because their cid was in doubt (an
    /// earlier try failed, yet storage had committed it).
    pub in_doubt_delivered: u64,
    /// Cids in doubt dropped, oldest first, at `IN_DOUBT_CIDS_MAX` (per
    /// session) or `IN_DOUBT_ORPHANS_MAX` (per shard).
    pub in_doubt_dropped: u64,
    /// Cids in doubt kept for a user with no live session (their send
    /// failed while it was loading or gone, or it ended holding them), for
    /// their next session.
    #[serde(default)]
    pub in_doubt_orphaned: u64,
    /// Users dropped by supervision (`drop_user`, after a panic).
    pub dropped_users: u64,
    /// Replica entries a presence digest found wrong and repaired (a
    /// `Presence` message was lost).
    pub presence_repairs: u64,
    /// Live sessions whose tabs were reset by a `PeerMsg::Resync` (a
    /// delivery to them was dropped on the way).
    #[serde(default)]
    pub resyncs: u64,
    /// Admin `roster-changed` calls answered `unavailable` because not
    /// every shard acked within `ROSTER_CHANGE_WAIT_MS` (a roster message
    /// was dropped).
    #[serde(default)]
    pub roster_waits_expired: u64,
    /// Roster reads dropped because the session already held a read
    /// issued after them (reads answered out of order).
    #[serde(default)]
    pub stale_roster_reads: u64,
    /// Presence changes broadcast by their user's home shard (online,
    /// away, offline; each to every shard).
    #[serde(default)]
    pub presence_changes: u64,
    /// Messages appended to their recipient's buffer (on the recipient's
    /// home shard, after its friends-only check).
    #[serde(default)]
    pub messages_delivered: u64,
    /// Held polls ended because their client hung up (`Request::EndPoll`).
    #[serde(default)]
    pub polls_abandoned: u64,
}

/// One shard, built from parts with one job each.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shard {
    /// Settings, fixed for the shard's life.
    config: Config,
    /// Sessions of users homed here, live or loading.
    sessions: Sessions,
    /// Presence replica: every user with a live session on any shard.
    presence: Presence,
    /// Deadlines of tabs and sessions (each armed by its owner's slot).
    timers: Timers,
    /// Storage jobs in flight and what each result is for.
    jobs: Jobs,
    /// Admin `roster-changed` calls and this shard's parts of them.
    changes: RosterChanges,
    /// Cids in doubt of users homed here with no live session.
    #[serde(default)]
    orphan_doubts: OrphanDoubts,
    /// Counters for metrics.
    stats: Stats,
    /// When the next presence digest goes out; `None` until the first tick
    /// (which sets it a period ahead).
    #[serde(default)]
    next_digest_ms: Option<u64>,
    /// Serving, or draining because the server stops (no poll is held).
    #[serde(default)]
    drain: Drain,
    /// The users traced (a copy of the engine's set, see `crate::trace`).
    #[serde(default)]
    traced: Traced,
    /// The user whose state the input being handled is changing, while
    /// it changes it (`Shard::working_on`): after a panic in an input
    /// about many users (a tick, presence, a resync), the one to drop.
    #[serde(skip)]
    working_on: Option<UserId>,
}

impl Shard {
    pub fn new(config: Config) -> Shard {
        Shard {
            config,
            sessions: Sessions::default(),
            presence: Presence::default(),
            timers: Timers::default(),
            jobs: Jobs::default(),
            changes: RosterChanges::default(),
            orphan_doubts: OrphanDoubts::default(),
            stats: Stats::default(),
            next_digest_ms: None,
            drain: Drain::Serving,
            traced: Traced::default(),
            working_on: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sessions homed here (live or loading).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Tabs attached to sessions homed here.
    pub fn tab_count(&self) -> usize {
        self.sessions.tab_count()
    }

    /// Polls held open by tabs of sessions homed here.
    pub fn held_poll_count(&self) -> usize {
        self.sessions.held_poll_count()
    }

    /// A user's session, live or loading, if homed here.
    pub fn session(&self, user: UserId) -> Option<&Session> {
        self.sessions.get(user)
    }

    /// A user's session, if homed here and loaded.
    pub fn live_session(&self, user: UserId) -> Option<&LiveSession> {
        self.sessions.live(user)
    }

    /// The presence this shard's replica has for `user`.
    pub fn presence_of(&self, user: UserId) -> Status {
        self.presence.of(user)
    }

    /// Storage jobs in flight.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// Admin `roster-changed` calls started here still waiting for acks.
    pub fn roster_changes_waiting(&self) -> usize {
        self.changes.waiting()
    }

    /// Armed timers (bounded by tabs and sessions).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// The one entry point: feed an input at time `now_ms`, collect outputs.
    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Vec<Output>) {
        self.working_on = None;
        match input {
            Input::Request { reply, request } => {
                let request = self.drain.admit(request);
                self.request(now_ms, reply, request, out)
            }
            Input::Peer(msg) => self.peer(now_ms, msg, out),
            Input::Storage { job, result } => self.storage_done(now_ms, job, result, out),
            Input::Tick => self.tick(now_ms, out),
            Input::Drain => self.drain(now_ms, out),
        }
    }

    /// A message from a shard (maybe this one).
    fn peer(&mut self, now: u64, msg: PeerMsg, out: &mut Vec<Output>) {
        match msg {
            PeerMsg::Deliver { to, from, kind } => self.delivered(now, to, from, kind, out),
            PeerMsg::Presence {
                user,
                status,
                notify,
            } => self.presence_changed(now, user, status, notify, out),
            PeerMsg::RosterTouched {
                user,
                friends,
                origin,
                change,
            } => self.roster_touched(now, user, &friends, origin, change, out),
            PeerMsg::RosterAck { change, ok } => self.roster_acked(change, ok, out),
            PeerMsg::PresenceDigest { from, online } => {
                self.presence_digest(now, from, online, out)
            }
            PeerMsg::Resync { who } => self.resync(now, who, out),
        }
    }

    /// Runs `f` as a step on `user`'s state: were it to panic,
    /// [`Shard::working_on`] names `user` (steps nest; the outer user is
    /// named again after an inner step).
    fn step<R>(&mut self, user: UserId, f: impl FnOnce(&mut Shard) -> R) -> R {
        let outer = self.working_on.replace(user);
        let r = f(self);
        self.working_on = outer;
        r
    }

    /// Notes `note` for `user`'s trace, if they are traced at `now`.
    fn note(&self, now: u64, user: UserId, note: Note, out: &mut Vec<Output>) {
        note_if_traced(&self.traced, now, user, note, out);
    }

    /// Users in this shard's copy of the traced set.
    pub fn traced_count(&self) -> usize {
        self.traced.len()
    }

    /// Sends `msg` to `shard`: handled at once when that is this shard,
    /// otherwise over the mesh.
    fn send_to(&mut self, now: u64, shard: ShardId, msg: PeerMsg, out: &mut Vec<Output>) {
        if shard == self.config.shard {
            self.peer(now, msg, out);
        } else {
            out.push(Output::Peer { shard, msg });
        }
    }
}

/// Notes `note` for `user`'s trace if `traced` holds them at `now` (for
/// callers holding a borrow of another part of the shard).
fn note_if_traced(traced: &Traced, now: u64, user: UserId, note: Note, out: &mut Vec<Output>) {
    if traced.on(user, now) {
        out.push(Output::Trace { user, note });
    }
}

fn fail(out: &mut Vec<Output>, to: ReplyTo, code: ErrorCode, message: &str) {
    out.push(Output::Reply {
        to,
        response: Response::fail(code, message),
    });
}

fn reply(out: &mut Vec<Output>, to: ReplyTo, response: Response) {
    out.push(Output::Reply { to, response });
}
