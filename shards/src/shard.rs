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
//!   event, its wait running out, a newer poll, a leave or a kick.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::model::{
    Connected, Contact, ErrorCode, EventKind, Friend, Message, MsgId, ReplyTo, Request, Response,
    RosterChange, ShardId, Sid, Status, StorageJob, StorageOutput, StorageResult, UserId,
};
use crate::routing::home_shard;
use crate::session::{HeldPoll, Session, Tab, WaitingConnect};
use crate::timers::{TimerKey, Timers};

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
    /// Tabs per session.
    pub tabs_per_user_max: usize,
}

impl Config {
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
            tabs_per_user_max: limits::TABS_PER_USER_MAX,
        }
    }
}

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
    /// then send `RosterAck { token }` to `origin`.
    RosterTouched {
        user: UserId,
        friends: Arc<[UserId]>,
        origin: ShardId,
        token: u64,
    },
    /// One shard finished its part of roster change `token`; `ok` is false
    /// when a roster re-read failed (the admin call then fails too, so the
    /// web app retries).
    RosterAck { token: u64, ok: bool },
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
}

/// What a storage job in flight is for.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Pending {
    LoadSession {
        user: UserId,
    },
    /// A roster re-read: periodic (`group` None), or part of a
    /// `roster-changed` broadcast.
    Refresh {
        user: UserId,
        group: Option<u64>,
    },
    /// The roster re-read that starts an admin `roster-changed`.
    RosterChanged {
        user: UserId,
        reply: ReplyTo,
    },
    Send {
        reply: ReplyTo,
        user: UserId,
    },
    Read {
        reply: ReplyTo,
        user: UserId,
        with: UserId,
    },
    History {
        reply: ReplyTo,
    },
    SaveUi {
        reply: ReplyTo,
        user: UserId,
        tab: Arc<str>,
        state: Arc<str>,
    },
}

/// An admin `roster-changed` waiting for every shard's ack.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RosterWait {
    reply: ReplyTo,
    acks_left: usize,
    /// Whether every shard re-read its rosters.
    ok: bool,
}

/// Refreshes on this shard belonging to one `RosterTouched`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct TouchGroup {
    origin: ShardId,
    token: u64,
    remaining: usize,
    /// Whether every re-read so far succeeded.
    ok: bool,
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
}

/// One shard.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shard {
    config: Config,
    /// Sessions of users homed here, live or loading.
    sessions: HashMap<UserId, Session>,
    /// Presence replica: every user with a live session on any shard.
    presence: HashMap<UserId, Status>,
    timers: Timers,
    /// Storage jobs in flight, by job number.
    jobs: HashMap<u64, Pending>,
    next_job: u64,
    /// Admin `roster-changed` calls waiting for acks, by token.
    roster_waits: HashMap<u64, RosterWait>,
    /// This shard's parts of roster changes, by group number.
    touch_groups: HashMap<u64, TouchGroup>,
    next_token: u64,
    stats: Stats,
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

impl Shard {
    pub fn new(config: Config) -> Shard {
        Shard {
            config,
            sessions: HashMap::new(),
            presence: HashMap::new(),
            timers: Timers::default(),
            jobs: HashMap::new(),
            next_job: 0,
            roster_waits: HashMap::new(),
            touch_groups: HashMap::new(),
            next_token: 0,
            stats: Stats::default(),
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
        self.sessions.values().map(|s| s.tabs.len()).sum()
    }

    /// A user's session, if homed here.
    pub fn session(&self, user: UserId) -> Option<&Session> {
        self.sessions.get(&user)
    }

    /// The presence this shard's replica has for `user`.
    pub fn presence_of(&self, user: UserId) -> Status {
        self.presence.get(&user).copied().unwrap_or(Status::Offline)
    }

    /// Storage jobs in flight.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// Armed timers (bounded by tabs and sessions).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// The one entry point: feed an input at time `now_ms`, collect outputs.
    pub fn handle(&mut self, now_ms: u64, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Request { reply, request } => self.request(now_ms, reply, request, out),
            Input::Peer(msg) => self.peer(now_ms, msg, out),
            Input::Storage { job, result } => self.storage_done(now_ms, job, result, out),
            Input::Tick => self.tick(now_ms, out),
        }
    }

    // ----- requests -------------------------------------------------------

    fn request(&mut self, now: u64, to: ReplyTo, request: Request, out: &mut Vec<Output>) {
        if let Some(user) = request.home_user() {
            assert_eq!(
                home_shard(user, self.config.shard_count),
                self.config.shard,
                "request for user {user} routed to the wrong shard"
            );
        }
        match request {
            Request::Connect { user, tab, sid } => self.connect(now, to, user, tab, sid, out),
            Request::Health => reply(
                out,
                to,
                Response::Health {
                    shard: self.config.shard,
                    sessions: self.sessions.len() as u64,
                    tabs: self.tab_count() as u64,
                },
            ),
            Request::RosterChanged { user } => self.ask_storage(
                to,
                Pending::RosterChanged { user, reply: to },
                StorageJob::LoadRoster { user },
                out,
            ),
            Request::Kick { user } => {
                self.end_session(now, user, true, out);
                reply(out, to, Response::Done);
            }
            Request::Poll {
                sid,
                since,
                wait_ms,
            } => self.poll(now, to, sid, since, wait_ms, out),
            Request::Send {
                sid,
                to: friend,
                text,
                cid,
            } => {
                let Some(user) = self.check_other(now, sid, to, friend, true, "message", out)
                else {
                    return;
                };
                let request = StorageJob::StoreMessage {
                    from: user,
                    to: friend,
                    text: Arc::from(text),
                    cid: cid.map(Arc::from),
                    ts: now,
                };
                self.ask_storage(to, Pending::Send { reply: to, user }, request, out);
            }
            Request::Typing {
                sid,
                to: friend,
                state,
            } => {
                let Some(user) = self.check_other(now, sid, to, friend, true, "type to", out)
                else {
                    return;
                };
                self.route(
                    now,
                    PeerMsg::Deliver {
                        to: friend,
                        from: user,
                        kind: EventKind::Typing { user, state },
                    },
                    out,
                );
                reply(out, to, Response::Done);
            }
            Request::Presence { sid, status } => {
                let Some(session) = self.tab_session(now, sid, to, out) else {
                    return;
                };
                assert!(status != Status::Offline, "io decodes only online/away");
                let user = session.user;
                if session.status != status {
                    session.status = status;
                    self.broadcast_presence(now, user, status, out);
                }
                reply(out, to, Response::Done);
            }
            Request::Ui { sid, state } => {
                let Some(session) = self.tab_session(now, sid, to, out) else {
                    return;
                };
                let user = session.user;
                let tab = session.tabs[session.tab_index(sid).expect("tab")]
                    .name
                    .clone();
                let state: Arc<str> = Arc::from(state);
                let pending = Pending::SaveUi {
                    reply: to,
                    user,
                    tab,
                    state: state.clone(),
                };
                self.ask_storage(to, pending, StorageJob::SaveUi { user, state }, out);
            }
            Request::Read { sid, with, upto } => {
                // Read receipts are friends-only.
                let Some(user) =
                    self.check_other(now, sid, to, with, true, "send read receipts to", out)
                else {
                    return;
                };
                let pending = Pending::Read {
                    reply: to,
                    user,
                    with,
                };
                self.ask_storage(to, pending, StorageJob::MarkRead { user, with, upto }, out);
            }
            Request::History {
                sid,
                with,
                before,
                limit,
            } => {
                // A former friend's conversation is still the caller's own.
                let Some(user) = self.check_other(now, sid, to, with, false, "", out) else {
                    return;
                };
                let request = StorageJob::History {
                    user,
                    with,
                    before,
                    limit,
                };
                self.ask_storage(to, Pending::History { reply: to }, request, out);
            }
            Request::Leave { sid } => {
                if self.tab_session(now, sid, to, out).is_none() {
                    return;
                }
                self.detach_tab(now, sid, Detach::Left, out);
                reply(out, to, Response::Done);
            }
            Request::Rejected { sid, failure } => {
                if self.tab_session(now, sid, to, out).is_some() {
                    reply(out, to, Response::Failed(failure));
                }
            }
        }
    }

    /// The live session holding `sid`, noting the tab was seen; answers
    /// `unknown_session` and returns `None` otherwise.
    fn tab_session(
        &mut self,
        now: u64,
        sid: Sid,
        to: ReplyTo,
        out: &mut Vec<Output>,
    ) -> Option<&mut Session> {
        let found = self
            .sessions
            .get_mut(&sid.user)
            .filter(|s| s.is_live())
            .and_then(|s| s.tab_index(sid).map(|i| (s, i)));
        match found {
            Some((session, i)) => {
                session.tabs[i].last_seen_ms = now;
                Some(session)
            }
            None => {
                fail(
                    out,
                    to,
                    ErrorCode::UnknownSession,
                    "unknown or expired session: connect again",
                );
                None
            }
        }
    }

    /// The user of `sid` when `other` may be addressed: the tab is live,
    /// `other` is someone else and (when `friends_only`) in the user's
    /// roster. Otherwise answers, in the protocol's order, and returns
    /// `None`. `verb` words the `not_friends` message.
    #[allow(clippy::too_many_arguments)]
    fn check_other(
        &mut self,
        now: u64,
        sid: Sid,
        to: ReplyTo,
        other: UserId,
        friends_only: bool,
        verb: &str,
        out: &mut Vec<Output>,
    ) -> Option<UserId> {
        let session = self.tab_session(now, sid, to, out)?;
        let user = session.user;
        if other == user {
            fail(out, to, ErrorCode::BadRequest, "not with yourself");
            return None;
        }
        if friends_only && !session.roster.contains_key(&other) {
            fail(
                out,
                to,
                ErrorCode::NotFriends,
                &format!("you can only {verb} friends"),
            );
            return None;
        }
        Some(user)
    }

    /// Registers `pending` and asks storage for `request`; answers
    /// `unavailable` when too many jobs are in flight.
    fn ask_storage(
        &mut self,
        to: ReplyTo,
        pending: Pending,
        request: StorageJob,
        out: &mut Vec<Output>,
    ) {
        match self.job(pending) {
            Some(job) => out.push(Output::Storage { job, request }),
            None => fail(out, to, ErrorCode::Unavailable, "too many storage jobs"),
        }
    }

    /// Registers a storage job; `None` when too many are in flight.
    fn job(&mut self, pending: Pending) -> Option<u64> {
        if self.jobs.len() >= limits::JOBS_IN_FLIGHT_MAX {
            self.stats.shed_jobs += 1;
            return None;
        }
        self.next_job += 1;
        self.jobs.insert(self.next_job, pending);
        Some(self.next_job)
    }

    fn connect(
        &mut self,
        now: u64,
        to: ReplyTo,
        user: UserId,
        tab: Option<String>,
        sid: Sid,
        out: &mut Vec<Output>,
    ) {
        assert_eq!(sid.user, user, "sid drawn for another user");
        let waiting = WaitingConnect {
            reply: to,
            tab,
            sid,
        };
        match self.sessions.get_mut(&user) {
            Some(session) if session.is_live() => self.attach(now, waiting, out),
            Some(session) => {
                if session.waiting.len() >= limits::CONNECTS_WAITING_MAX {
                    return fail(out, to, ErrorCode::Unavailable, "too many connects at once");
                }
                session.waiting.push(waiting);
            }
            None => {
                let Some(job) = self.job(Pending::LoadSession { user }) else {
                    return fail(out, to, ErrorCode::Unavailable, "too many storage jobs");
                };
                let mut session = Session::loading(user, job);
                session.waiting.push(waiting);
                self.sessions.insert(user, session);
                out.push(Output::Storage {
                    job,
                    request: StorageJob::LoadSession { user },
                });
            }
        }
    }

    /// Attaches a tab to a live session and answers its connect.
    fn attach(&mut self, now: u64, c: WaitingConnect, out: &mut Vec<Output>) {
        let user = c.sid.user;
        let session = self.sessions.get_mut(&user).expect("live session");
        // A tab that comes back under its old name replaces itself (a page
        // reload keeps its tab name in sessionStorage).
        let name: Arc<str> = match c.tab {
            Some(name) => Arc::from(name),
            None => {
                session.tabs_named += 1;
                Arc::from(format!("t{}", session.tabs_named))
            }
        };
        let replaced = session.tabs.iter().find(|t| t.name == name).map(|t| t.sid);
        let evicted = if replaced.is_none() && session.tabs.len() >= self.config.tabs_per_user_max {
            session
                .tabs
                .iter()
                .min_by_key(|t| t.last_seen_ms)
                .map(|t| t.sid)
        } else {
            None
        };
        if let Some(old) = replaced.or(evicted) {
            if evicted.is_some() {
                self.stats.tab_evictions += 1;
            }
            self.detach_tab(now, old, Detach::Replaced, out);
        }
        let session = self.sessions.get_mut(&user).expect("live session");
        if let Some(at) = session.grace_deadline_ms.take() {
            self.timers.disarm(at, TimerKey::Grace(user));
        }
        let idle = now + self.config.tab_timeout_ms;
        session.tabs.push(Tab {
            sid: c.sid,
            name: name.clone(),
            poll: None,
            idle_deadline_ms: Some(idle),
            last_seen_ms: now,
        });
        self.timers.arm(idle, TimerKey::TabIdle(c.sid));
        let session = &self.sessions[&user];
        let roster = session
            .roster
            .iter()
            .map(|(&id, name)| Contact {
                id,
                name: name.clone(),
                presence: self.presence_of(id),
            })
            .collect();
        let connected = Connected {
            sid: c.sid,
            tab: name,
            user,
            name: session.name.clone(),
            seq: session.seq,
            roster,
            ui: session.ui.clone(),
            unread: session.unread.iter().map(|(&k, &v)| (k, v)).collect(),
        };
        reply(out, c.reply, Response::Connected(Box::new(connected)));
    }

    fn poll(
        &mut self,
        now: u64,
        to: ReplyTo,
        sid: Sid,
        since: u64,
        wait_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.tab_session(now, sid, to, out) else {
            return;
        };
        if since > session.seq {
            return fail(
                out,
                to,
                ErrorCode::BadRequest,
                "since is above the latest seq",
            );
        }
        let i = session.tab_index(sid).expect("tab");
        // A newer poll of the same tab ends the older one.
        if let Some(old) = session.tabs[i].poll.take() {
            reply(
                out,
                old.reply,
                Response::Events {
                    seq: session.seq,
                    events: Vec::new(),
                },
            );
            self.timers.disarm(old.deadline_ms, TimerKey::Poll(sid));
        }
        let session = self.sessions.get_mut(&sid.user).expect("session");
        let answer = session.answer_since(since);
        let has_news = !matches!(&answer, Response::Events { events, .. } if events.is_empty());
        let tab = &mut session.tabs[i];
        if has_news || wait_ms == 0 {
            reply(out, to, answer);
            // The poll ended now: the idle clock restarts.
            if let Some(at) = tab.idle_deadline_ms.take() {
                self.timers.disarm(at, TimerKey::TabIdle(sid));
            }
            let idle = now + self.config.tab_timeout_ms;
            tab.idle_deadline_ms = Some(idle);
            self.timers.arm(idle, TimerKey::TabIdle(sid));
            return;
        }
        if let Some(at) = tab.idle_deadline_ms.take() {
            self.timers.disarm(at, TimerKey::TabIdle(sid));
        }
        let deadline = now + wait_ms.min(limits::POLL_WAIT_MS_MAX);
        tab.poll = Some(HeldPoll {
            reply: to,
            since,
            deadline_ms: deadline,
        });
        self.timers.arm(deadline, TimerKey::Poll(sid));
    }

    // ----- sessions, tabs, presence ----------------------------------------

    /// Detaches one tab; a held poll is answered per `why`. A session left
    /// without tabs starts its grace period.
    fn detach_tab(&mut self, now: u64, sid: Sid, why: Detach, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&sid.user) else {
            return;
        };
        let Some(i) = session.tab_index(sid) else {
            return;
        };
        let tab = session.tabs.remove(i);
        if let Some(poll) = tab.poll {
            self.timers.disarm(poll.deadline_ms, TimerKey::Poll(sid));
            let response = match why {
                Detach::Left => Response::Events {
                    seq: session.seq,
                    events: Vec::new(),
                },
                Detach::Replaced | Detach::TimedOut => Response::fail(
                    ErrorCode::UnknownSession,
                    "this tab was detached: connect again",
                ),
            };
            reply(out, poll.reply, response);
        }
        if let Some(at) = tab.idle_deadline_ms {
            self.timers.disarm(at, TimerKey::TabIdle(sid));
        }
        if session.tabs.is_empty() && why != Detach::Replaced {
            let at = now + self.config.grace_ms;
            session.grace_deadline_ms = Some(at);
            self.timers.arm(at, TimerKey::Grace(sid.user));
        }
    }

    /// Ends a session at once: every tab's held poll gets
    /// `unknown_session`, friends see `offline` (no grace). Used by grace
    /// expiry and kick.
    fn end_session(&mut self, now: u64, user: UserId, kicked: bool, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.remove(&user) else {
            return;
        };
        for tab in &session.tabs {
            if let Some(poll) = &tab.poll {
                self.timers
                    .disarm(poll.deadline_ms, TimerKey::Poll(tab.sid));
                fail(
                    out,
                    poll.reply,
                    ErrorCode::UnknownSession,
                    if kicked {
                        "the session was ended by an administrator"
                    } else {
                        "the session ended"
                    },
                );
            }
            if let Some(at) = tab.idle_deadline_ms {
                self.timers.disarm(at, TimerKey::TabIdle(tab.sid));
            }
        }
        if let Some(at) = session.grace_deadline_ms {
            self.timers.disarm(at, TimerKey::Grace(user));
        }
        if let Some(at) = session.refresh_deadline_ms {
            self.timers.disarm(at, TimerKey::Refresh(user));
        }
        for w in &session.waiting {
            fail(
                out,
                w.reply,
                ErrorCode::Unavailable,
                "the session was ended while loading",
            );
        }
        if let Some(job) = session.loading {
            // The load's result will find no session and be dropped.
            self.jobs.remove(&job);
        } else {
            let friends: Vec<UserId> = session.roster.keys().copied().collect();
            self.broadcast_presence_to(now, user, Status::Offline, &friends, out);
        }
    }

    fn broadcast_presence(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        out: &mut Vec<Output>,
    ) {
        let friends: Vec<UserId> = self.sessions[&user].roster.keys().copied().collect();
        self.broadcast_presence_to(now, user, status, &friends, out);
    }

    /// Tells every shard `user`'s new presence, each with the friends it
    /// must notify.
    fn broadcast_presence_to(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        friends: &[UserId],
        out: &mut Vec<Output>,
    ) {
        let n = self.config.shard_count;
        let mut notify: Vec<Vec<UserId>> = vec![Vec::new(); n];
        for &f in friends {
            notify[home_shard(f, n)].push(f);
        }
        for (shard, notify) in notify.into_iter().enumerate() {
            let msg = PeerMsg::Presence {
                user,
                status,
                notify,
            };
            if shard == self.config.shard {
                self.peer(now, msg, out);
            } else {
                out.push(Output::Peer { shard, msg });
            }
        }
    }

    /// Sends `msg` to the shard of the users it names (here: at once).
    fn route(&mut self, now: u64, msg: PeerMsg, out: &mut Vec<Output>) {
        let user = match &msg {
            PeerMsg::Deliver { to, .. } => *to,
            other => unreachable!("route() is for deliveries, not {other:?}"),
        };
        let shard = home_shard(user, self.config.shard_count);
        if shard == self.config.shard {
            self.peer(now, msg, out);
        } else {
            out.push(Output::Peer { shard, msg });
        }
    }

    /// Appends an event to a live session and restarts the idle clock of
    /// every tab whose held poll it answered.
    fn push_event(&mut self, now: u64, user: UserId, kind: EventKind, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&user).filter(|s| s.is_live()) else {
            return;
        };
        self.stats.events += 1;
        let ended = session.push_event(kind, self.config.events_buffered_max, out);
        let idle = now + self.config.tab_timeout_ms;
        for (sid, deadline) in ended {
            self.timers.disarm(deadline, TimerKey::Poll(sid));
            let i = session.tab_index(sid).expect("tab");
            debug_assert!(session.tabs[i].idle_deadline_ms.is_none());
            session.tabs[i].idle_deadline_ms = Some(idle);
            self.timers.arm(idle, TimerKey::TabIdle(sid));
        }
    }

    // ----- peers -----------------------------------------------------------

    fn peer(&mut self, now: u64, msg: PeerMsg, out: &mut Vec<Output>) {
        match msg {
            PeerMsg::Deliver { to, from, kind } => {
                let Some(session) = self.sessions.get_mut(&to).filter(|s| s.is_live()) else {
                    return;
                };
                if !session.roster.contains_key(&from) {
                    self.stats.not_friends_dropped += 1;
                    return;
                }
                if let EventKind::Message(m) = &kind {
                    if m.to == to {
                        *session.unread.entry(from).or_insert(0) += 1;
                    }
                }
                self.push_event(now, to, kind, out);
            }
            PeerMsg::Presence {
                user,
                status,
                notify,
            } => {
                if status == Status::Offline {
                    self.presence.remove(&user);
                } else {
                    self.presence.insert(user, status);
                }
                for friend in notify {
                    let knows = self
                        .sessions
                        .get(&friend)
                        .is_some_and(|s| s.is_live() && s.roster.contains_key(&user));
                    if knows {
                        self.push_event(now, friend, EventKind::Presence { user, status }, out);
                    }
                }
            }
            PeerMsg::RosterTouched {
                user,
                friends,
                origin,
                token,
            } => {
                let affected: Vec<UserId> = self
                    .sessions
                    .values()
                    .filter(|s| s.is_live() && s.user != user)
                    .filter(|s| s.roster.contains_key(&user) != friends.contains(&s.user))
                    .map(|s| s.user)
                    .take(limits::ROSTER_TOUCHES_MAX)
                    .collect();
                self.next_token += 1;
                let group = self.next_token;
                let mut started = 0;
                for f in affected {
                    if let Some(job) = self.job(Pending::Refresh {
                        user: f,
                        group: Some(group),
                    }) {
                        out.push(Output::Storage {
                            job,
                            request: StorageJob::LoadRoster { user: f },
                        });
                        started += 1;
                    }
                }
                if started == 0 {
                    self.send_ack(now, origin, token, true, out);
                } else {
                    self.touch_groups.insert(
                        group,
                        TouchGroup {
                            origin,
                            token,
                            remaining: started,
                            ok: true,
                        },
                    );
                }
            }
            PeerMsg::RosterAck { token, ok } => {
                let Some(wait) = self.roster_waits.get_mut(&token) else {
                    return;
                };
                wait.acks_left -= 1;
                wait.ok &= ok;
                if wait.acks_left == 0 {
                    let wait = self.roster_waits.remove(&token).expect("wait");
                    let response = if wait.ok {
                        Response::Done
                    } else {
                        Response::fail(
                            ErrorCode::Unavailable,
                            "storage failed while re-reading rosters: retry",
                        )
                    };
                    reply(out, wait.reply, response);
                }
            }
        }
    }

    fn send_ack(&mut self, now: u64, origin: ShardId, token: u64, ok: bool, out: &mut Vec<Output>) {
        let msg = PeerMsg::RosterAck { token, ok };
        if origin == self.config.shard {
            self.peer(now, msg, out);
        } else {
            out.push(Output::Peer { shard: origin, msg });
        }
    }

    // ----- storage results ---------------------------------------------------

    fn storage_done(&mut self, now: u64, job: u64, result: StorageResult, out: &mut Vec<Output>) {
        let Some(pending) = self.jobs.remove(&job) else {
            return; // its session was ended meanwhile
        };
        if result.is_err() {
            self.stats.storage_failures += 1;
        }
        match (pending, result) {
            (Pending::LoadSession { user }, result) => {
                self.session_loaded(now, user, job, result, out)
            }
            (Pending::Refresh { user, group }, result) => {
                let ok = result.is_ok();
                if let Ok(StorageOutput::Roster { friends }) = result {
                    self.apply_roster(now, user, friends, out);
                }
                if let Some(session) = self.sessions.get_mut(&user).filter(|s| s.is_live()) {
                    if group.is_none() || session.refresh_deadline_ms.is_none() {
                        let at = now + self.config.roster_refresh_ms;
                        if let Some(old) = session.refresh_deadline_ms.replace(at) {
                            self.timers.disarm(old, TimerKey::Refresh(user));
                        }
                        self.timers.arm(at, TimerKey::Refresh(user));
                    }
                }
                if let Some(g) = group {
                    let done = self.touch_groups.get_mut(&g).is_some_and(|t| {
                        t.remaining -= 1;
                        t.ok &= ok;
                        t.remaining == 0
                    });
                    if done {
                        let t = self.touch_groups.remove(&g).expect("group");
                        self.send_ack(now, t.origin, t.token, t.ok, out);
                    }
                }
            }
            (Pending::RosterChanged { user, reply: to }, Ok(StorageOutput::Roster { friends })) => {
                let ids: Arc<[UserId]> = friends.iter().map(|f| f.id).collect();
                self.apply_roster(now, user, friends, out);
                self.next_token += 1;
                let token = self.next_token;
                self.roster_waits.insert(
                    token,
                    RosterWait {
                        reply: to,
                        acks_left: self.config.shard_count,
                        ok: true,
                    },
                );
                for shard in 0..self.config.shard_count {
                    let msg = PeerMsg::RosterTouched {
                        user,
                        friends: ids.clone(),
                        origin: self.config.shard,
                        token,
                    };
                    if shard == self.config.shard {
                        self.peer(now, msg, out);
                    } else {
                        out.push(Output::Peer { shard, msg });
                    }
                }
            }
            (
                Pending::Send { reply: to, user },
                Ok(StorageOutput::Stored { message, duplicate }),
            ) => {
                if duplicate {
                    self.stats.duplicate_sends += 1;
                } else {
                    self.stats.messages += 1;
                    self.deliver_message(now, user, &message, out);
                }
                reply(
                    out,
                    to,
                    Response::Sent {
                        id: message.id,
                        ts: message.ts,
                    },
                );
            }
            (
                Pending::Read {
                    reply: to,
                    user,
                    with,
                },
                Ok(StorageOutput::ReadMarked {
                    valid,
                    upto,
                    unread,
                }),
            ) => {
                if !valid {
                    return fail(
                        out,
                        to,
                        ErrorCode::BadRequest,
                        "upto is not a message of this conversation",
                    );
                }
                self.mark_read(now, user, with, upto, unread, out);
                reply(out, to, Response::Done);
            }
            (
                Pending::History { reply: to },
                Ok(StorageOutput::History {
                    valid,
                    messages,
                    more,
                }),
            ) => {
                if valid {
                    reply(out, to, Response::History { messages, more });
                } else {
                    fail(
                        out,
                        to,
                        ErrorCode::BadRequest,
                        "before is not a message of this conversation",
                    );
                }
            }
            (
                Pending::SaveUi {
                    reply: to,
                    user,
                    tab,
                    state,
                },
                Ok(StorageOutput::Saved),
            ) => {
                if let Some(session) = self.sessions.get_mut(&user).filter(|s| s.is_live()) {
                    session.ui = Some(state.clone());
                }
                self.push_event(now, user, EventKind::Ui { state, tab }, out);
                reply(out, to, Response::Done);
            }
            (pending, Err(e)) => {
                let to = match pending {
                    Pending::RosterChanged { reply, .. }
                    | Pending::Send { reply, .. }
                    | Pending::Read { reply, .. }
                    | Pending::History { reply }
                    | Pending::SaveUi { reply, .. } => reply,
                    Pending::LoadSession { .. } | Pending::Refresh { .. } => unreachable!(),
                };
                fail(
                    out,
                    to,
                    ErrorCode::Unavailable,
                    &format!("storage unavailable: {e}"),
                );
            }
            (pending, Ok(output)) => {
                panic!("storage answered {output:?} to {pending:?}");
            }
        }
    }

    fn session_loaded(
        &mut self,
        now: u64,
        user: UserId,
        job: u64,
        result: StorageResult,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self
            .sessions
            .get_mut(&user)
            .filter(|s| s.loading == Some(job))
        else {
            return;
        };
        let (name, friends, ui, unread) = match result {
            Ok(StorageOutput::Session {
                name: Some(name),
                friends,
                ui,
                unread,
            }) => (name, friends, ui, unread),
            Ok(StorageOutput::Session { name: None, .. }) => {
                let session = self.sessions.remove(&user).expect("session");
                for w in session.waiting {
                    fail(out, w.reply, ErrorCode::Unauthorized, "no such user");
                }
                return;
            }
            Ok(other) => panic!("storage answered {other:?} to load_session"),
            Err(e) => {
                let session = self.sessions.remove(&user).expect("session");
                for w in session.waiting {
                    fail(
                        out,
                        w.reply,
                        ErrorCode::Unavailable,
                        &format!("storage unavailable: {e}"),
                    );
                }
                return;
            }
        };
        session.loading = None;
        session.name = name;
        session.roster = friends.into_iter().map(|f| (f.id, f.name)).collect();
        session.ui = ui;
        session.unread = unread.into_iter().filter(|&(_, n)| n > 0).collect();
        session.status = Status::Online;
        let at = now + self.config.roster_refresh_ms;
        session.refresh_deadline_ms = Some(at);
        self.timers.arm(at, TimerKey::Refresh(user));
        let waiting = std::mem::take(&mut session.waiting);
        self.broadcast_presence(now, user, Status::Online, out);
        for w in waiting {
            self.attach(now, w, out);
        }
        // Every waiter might have been a replacement of the one before it:
        // if none is left attached, grace starts as after a leave.
        let session = self.sessions.get_mut(&user).expect("session");
        if session.tabs.is_empty() && session.grace_deadline_ms.is_none() {
            let at = now + self.config.grace_ms;
            session.grace_deadline_ms = Some(at);
            self.timers.arm(at, TimerKey::Grace(user));
        }
    }

    /// Replaces a live session's roster with `friends`, telling its tabs
    /// what was added and removed.
    fn apply_roster(
        &mut self,
        now: u64,
        user: UserId,
        friends: Vec<Friend>,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.get_mut(&user).filter(|s| s.is_live()) else {
            return;
        };
        let new: BTreeMap<UserId, Arc<str>> = friends.into_iter().map(|f| (f.id, f.name)).collect();
        let old = std::mem::replace(&mut session.roster, new.clone());
        let mut events = Vec::new();
        for (id, name) in &new {
            if !old.contains_key(id) {
                events.push(EventKind::Roster {
                    change: RosterChange::Added,
                    user: Contact {
                        id: *id,
                        name: name.clone(),
                        presence: self.presence_of(*id),
                    },
                });
            }
        }
        for (id, name) in &old {
            if !new.contains_key(id) {
                events.push(EventKind::Roster {
                    change: RosterChange::Removed,
                    user: Contact {
                        id: *id,
                        name: name.clone(),
                        presence: Status::Offline,
                    },
                });
            }
        }
        for kind in events {
            self.push_event(now, user, kind, out);
        }
    }

    /// A message was stored: the sender's tabs and the recipient's tabs
    /// get it.
    fn deliver_message(
        &mut self,
        now: u64,
        user: UserId,
        message: &Arc<Message>,
        out: &mut Vec<Output>,
    ) {
        self.push_event(now, user, EventKind::Message(message.clone()), out);
        self.route(
            now,
            PeerMsg::Deliver {
                to: message.to,
                from: user,
                kind: EventKind::Message(message.clone()),
            },
            out,
        );
    }

    fn mark_read(
        &mut self,
        now: u64,
        user: UserId,
        with: UserId,
        upto: MsgId,
        unread: u64,
        out: &mut Vec<Output>,
    ) {
        if let Some(session) = self.sessions.get_mut(&user).filter(|s| s.is_live()) {
            if unread == 0 {
                session.unread.remove(&with);
            } else {
                session.unread.insert(with, unread);
            }
        }
        self.push_event(
            now,
            user,
            EventKind::Read {
                with,
                by: user,
                upto,
            },
            out,
        );
        self.route(
            now,
            PeerMsg::Deliver {
                to: with,
                from: user,
                kind: EventKind::Read {
                    with: user,
                    by: user,
                    upto,
                },
            },
            out,
        );
    }

    // ----- time ------------------------------------------------------------

    fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        for _ in 0..limits::TIMERS_PER_TICK_MAX {
            let Some((_, key)) = self.timers.pop_due(now) else {
                return;
            };
            match key {
                TimerKey::Poll(sid) => {
                    let session = self
                        .sessions
                        .get_mut(&sid.user)
                        .expect("poll timer's session");
                    let seq = session.seq;
                    let i = session.tab_index(sid).expect("poll timer's tab");
                    let tab = &mut session.tabs[i];
                    let poll = tab.poll.take().expect("poll timer's poll");
                    reply(
                        out,
                        poll.reply,
                        Response::Events {
                            seq,
                            events: Vec::new(),
                        },
                    );
                    let idle = now + self.config.tab_timeout_ms;
                    tab.idle_deadline_ms = Some(idle);
                    self.timers.arm(idle, TimerKey::TabIdle(sid));
                }
                TimerKey::TabIdle(sid) => {
                    let session = self
                        .sessions
                        .get_mut(&sid.user)
                        .expect("idle timer's session");
                    let i = session.tab_index(sid).expect("idle timer's tab");
                    session.tabs[i].idle_deadline_ms = None;
                    self.stats.tab_timeouts += 1;
                    self.detach_tab(now, sid, Detach::TimedOut, out);
                }
                TimerKey::Grace(user) => {
                    let session = self.sessions.get_mut(&user).expect("grace timer's session");
                    session.grace_deadline_ms = None;
                    self.end_session(now, user, false, out);
                }
                TimerKey::Refresh(user) => {
                    let session = self
                        .sessions
                        .get_mut(&user)
                        .expect("refresh timer's session");
                    session.refresh_deadline_ms = None;
                    match self.job(Pending::Refresh { user, group: None }) {
                        Some(job) => out.push(Output::Storage {
                            job,
                            request: StorageJob::LoadRoster { user },
                        }),
                        None => {
                            // Shed: try again after another interval.
                            let at = now + self.config.roster_refresh_ms;
                            let session = self.sessions.get_mut(&user).expect("session");
                            session.refresh_deadline_ms = Some(at);
                            self.timers.arm(at, TimerKey::Refresh(user));
                        }
                    }
                }
            }
        }
    }
}

/// Why a tab is detached: decides what its held poll is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detach {
    /// `/leave`: the poll ends normally.
    Left,
    /// Replaced by a tab of the same name, or evicted for a newer one.
    Replaced,
    /// No poll outstanding for the tab timeout.
    TimedOut,
}
