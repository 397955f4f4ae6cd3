//! A session's life on its home shard: created `Loading` by the first
//! connect, made `Live` by its load (answering the connects that waited),
//! tabs attached and detached, grace while tabless, ended by grace running
//! out or a kick.
//!
//! Invariants: a live session's grace is armed exactly while it has no
//! tabs; at most `tabs_per_user_max` tabs (one more detaches a tab);
//! ending a session answers every held poll and waiting connect.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jobs::Pending;
use super::{fail, note_if_traced, reply, Output, Shard};
use crate::limits;
use crate::model::{
    Connected, Contact, ErrorCode, ReplyTo, Response, Sid, Status, StorageJob, StorageOutput,
    StorageResult, UserId,
};
use crate::session::{LiveSession, Session, Tab, WaitingConnect};
use crate::trace::Note;

/// The sessions of users homed here, live or loading.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Sessions {
    /// Each user's session.
    by_user: HashMap<UserId, Session>,
}

impl Sessions {
    pub(super) fn get(&self, user: UserId) -> Option<&Session> {
        self.by_user.get(&user)
    }

    pub(super) fn live(&self, user: UserId) -> Option<&LiveSession> {
        self.by_user.get(&user).and_then(Session::live)
    }

    pub(super) fn live_mut(&mut self, user: UserId) -> Option<&mut LiveSession> {
        self.by_user.get_mut(&user).and_then(Session::live_mut)
    }

    /// Every live session, in no particular order. Sessions still loading
    /// are not in it.
    pub(super) fn live_ones(&self) -> impl Iterator<Item = &LiveSession> {
        self.by_user.values().filter_map(Session::live)
    }

    /// Users whose session is still loading, by id.
    pub(super) fn loading_users(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self
            .by_user
            .iter()
            .filter(|(_, s)| !s.is_live())
            .map(|(&u, _)| u)
            .collect();
        users.sort_unstable();
        users
    }

    /// Notes that `user`'s loading session must re-read its roster for
    /// change part `part` once live; false when it is not loading or
    /// already remembers `LOADING_REREADS_MAX` parts.
    pub(super) fn reread_once_loaded(&mut self, user: UserId, part: u64) -> bool {
        match self.by_user.get_mut(&user) {
            Some(Session::Loading { rereads, .. })
                if rereads.len() < limits::LOADING_REREADS_MAX =>
            {
                rereads.push(part);
                true
            }
            _ => false,
        }
    }

    /// Takes `user`'s session out, whatever its state.
    pub(super) fn remove(&mut self, user: UserId) -> Option<Session> {
        self.by_user.remove(&user)
    }

    pub(super) fn len(&self) -> usize {
        self.by_user.len()
    }

    pub(super) fn tab_count(&self) -> usize {
        self.live_ones().map(|s| s.tabs.len()).sum()
    }

    /// Polls held open (tabs polling) in sessions homed here.
    pub(super) fn held_poll_count(&self) -> usize {
        self.live_ones()
            .map(|s| s.tabs.iter().filter(|t| t.is_polling()).count())
            .sum()
    }

    /// The live session holding `sid` and the tab's index, the tab noted as
    /// seen at `now`; answers `unknown_session` at `to` and returns `None`
    /// otherwise.
    pub(super) fn tab(
        &mut self,
        now: u64,
        sid: Sid,
        to: ReplyTo,
        out: &mut Vec<Output>,
    ) -> Option<(&mut LiveSession, usize)> {
        let found = self
            .live_mut(sid.user)
            .and_then(|s| s.tab_index(sid).map(|i| (s, i)));
        match found {
            Some((session, i)) => {
                session.tabs[i].last_seen_ms = now;
                Some((session, i))
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
}

/// Why a tab is detached: decides what its held poll is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Detach {
    /// `/leave`: the poll ends normally.
    Left,
    /// Replaced by a tab of the same name, or evicted for a newer one.
    Replaced,
    /// No poll outstanding for the tab timeout.
    TimedOut,
}

/// Why a session ends at once: words what its held polls are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// An administrator's kick.
    Kicked,
    /// The grace after its last tab ran out.
    GraceOver,
}

impl Shard {
    /// `/connect`: attaches a tab to a live session, or waits for the
    /// session to load (starting the load if none is under way).
    pub(super) fn connect(
        &mut self,
        now: u64,
        user: UserId,
        c: WaitingConnect,
        out: &mut Vec<Output>,
    ) {
        assert_eq!(c.sid.user, user, "sid drawn for another user");
        let to = c.reply;
        match self.sessions.by_user.get_mut(&user) {
            Some(Session::Live(_)) => {
                if self.connect_within_rate(now, user, to, out) {
                    self.attach(now, c, out);
                }
            }
            Some(Session::Loading { waiting, .. }) => {
                if waiting.len() >= limits::CONNECTS_WAITING_MAX {
                    return fail(out, to, ErrorCode::Unavailable, "too many connects at once");
                }
                waiting.push(c);
            }
            None => {
                let Some(job) = self.job(Pending::LoadSession { user }) else {
                    return fail(out, to, ErrorCode::Unavailable, "too many storage jobs");
                };
                let loading = Session::Loading {
                    job,
                    waiting: vec![c],
                    rereads: Vec::new(),
                };
                self.sessions.by_user.insert(user, loading);
                out.push(Output::Storage {
                    job,
                    request: StorageJob::LoadSession { user },
                });
            }
        }
    }

    /// The `LoadSession` job `job` finished: the session goes live, or its
    /// waiting connects are told why not.
    pub(super) fn session_loaded(
        &mut self,
        now: u64,
        user: UserId,
        job: u64,
        result: StorageResult,
        out: &mut Vec<Output>,
    ) {
        match self.sessions.get(user) {
            Some(Session::Loading { job: loading, .. }) if *loading == job => {}
            _ => return,
        }
        match result {
            Ok(StorageOutput::Session {
                name: Some(name),
                friends,
                ui,
                unread,
            }) => {
                let live = LiveSession::loaded(user, job, name, friends, ui, unread);
                self.go_live(now, live, out);
            }
            Ok(StorageOutput::Session { name: None, .. }) => {
                self.load_failed(now, user, ErrorCode::Unauthorized, "no such user", out);
            }
            Ok(other) => panic!("storage answered {other:?} to load_session"),
            Err(e) => {
                self.load_failed(now, user, ErrorCode::Unavailable, e.client_text(), out);
            }
        }
    }

    /// Drops a loading session, answering its waiting connects.
    fn load_failed(
        &mut self,
        now: u64,
        user: UserId,
        code: ErrorCode,
        message: &str,
        out: &mut Vec<Output>,
    ) {
        let Some(Session::Loading {
            waiting, rereads, ..
        }) = self.sessions.by_user.remove(&user)
        else {
            unreachable!("load_failed on a session not loading");
        };
        for w in waiting {
            fail(out, w.reply, code, message);
        }
        // No session is left to hold a roster read before the change.
        for part in rereads {
            self.change_part_done(now, part, true, out);
        }
    }

    /// Replaces a loading session with `live`: friends see it online and
    /// the connects that waited are attached.
    fn go_live(&mut self, now: u64, mut live: LiveSession, out: &mut Vec<Output>) {
        let user = live.user;
        live.refresh
            .arm(&mut self.timers, now + self.config.roster_refresh_ms);
        let Some(Session::Loading {
            waiting, rereads, ..
        }) = self.sessions.by_user.insert(user, Session::Live(live))
        else {
            unreachable!("go_live on a session not loading");
        };
        self.adopt_doubts(user);
        self.broadcast_presence(now, user, Status::Online, "session loaded", out);
        for w in waiting {
            self.attach(now, w, out);
        }
        for part in rereads {
            self.reread_for_change(now, user, part, out);
        }
        // Every waiter might have been a replacement of the one before it:
        // if none is left attached, grace starts as after a leave.
        let session = self.sessions.live_mut(user).expect("live session");
        if session.tabs.is_empty() && !session.grace.is_armed() {
            session
                .grace
                .arm(&mut self.timers, now + self.config.grace_ms);
        }
    }

    /// Attaches a tab to a live session and answers its connect. A tab
    /// that comes back under its old name replaces itself (a page reload
    /// keeps its tab name in sessionStorage); one tab too many detaches the
    /// tab seen longest ago.
    fn attach(&mut self, now: u64, c: WaitingConnect, out: &mut Vec<Output>) {
        let user = c.sid.user;
        let session = self.sessions.live_mut(user).expect("live session");
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
        let session = self.sessions.live_mut(user).expect("live session");
        session.grace.disarm(&mut self.timers);
        let idle_at = now + self.config.tab_timeout_ms;
        let tab = Tab::attach(c.sid, name.clone(), now, idle_at, &mut self.timers);
        // Most users have one tab: room for exactly one, not the four a
        // `Vec`'s first push makes (96 bytes each).
        if session.tabs.capacity() == 0 {
            session.tabs.reserve_exact(1);
        }
        session.tabs.push(tab);
        let tabs = session.tabs.len();
        self.note(now, user, Note::TabAttached { tabs }, out);
        let connected = self.connected(user, c.sid, name);
        reply(out, c.reply, Response::Connected(Box::new(connected)));
    }

    /// The answer to a connect of tab `sid` (named `tab`) to `user`'s live
    /// session.
    fn connected(&self, user: UserId, sid: Sid, tab: Arc<str>) -> Connected {
        let session = self.sessions.live(user).expect("live session");
        let roster = session
            .roster
            .iter()
            .map(|(&id, name)| Contact {
                id,
                name: name.clone(),
                presence: self.presence_of(id),
            })
            .collect();
        Connected {
            sid,
            tab,
            user,
            name: session.name.clone(),
            seq: session.seq,
            roster,
            ui: session.ui.clone(),
            unread: session.unread.iter().map(|(&k, &v)| (k, v)).collect(),
        }
    }

    /// Detaches one tab; a held poll is answered per `why`. A session left
    /// without tabs starts its grace period (unless a new tab replaces the
    /// one going).
    pub(super) fn detach_tab(&mut self, now: u64, sid: Sid, why: Detach, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.live_mut(sid.user) else {
            return;
        };
        let Some(i) = session.tab_index(sid) else {
            return;
        };
        let tab = session.tabs.remove(i);
        if !self.traced.is_empty() {
            let why = match why {
                Detach::Left => "left",
                Detach::Replaced => "replaced by a newer tab",
                Detach::TimedOut => "timed out",
            };
            let tabs = session.tabs.len();
            let note = Note::TabDetached { why, tabs };
            note_if_traced(&self.traced, now, sid.user, note, out);
        }
        if let Some(poll) = tab.detach(&mut self.timers) {
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
        if session.tabs.is_empty() && why != Detach::Replaced {
            session
                .grace
                .arm(&mut self.timers, now + self.config.grace_ms);
        }
    }

    /// Ends a session at once: every tab's held poll gets
    /// `unknown_session`, friends see `offline` (no grace). A session still
    /// loading answers its waiting connects and forgets its load.
    pub(super) fn end_session(
        &mut self,
        now: u64,
        user: UserId,
        ending: Ending,
        out: &mut Vec<Output>,
    ) {
        let mut live = match self.sessions.by_user.remove(&user) {
            None => return,
            Some(Session::Loading {
                job,
                waiting,
                rereads,
            }) => {
                for w in waiting {
                    fail(
                        out,
                        w.reply,
                        ErrorCode::Unavailable,
                        "the session was ended while loading",
                    );
                }
                // The load's result will find no job and be dropped.
                self.jobs.forget(job);
                // No session is left to hold a roster read before a change.
                for part in rereads {
                    self.change_part_done(now, part, true, out);
                }
                return;
            }
            Some(Session::Live(live)) => live,
        };
        let message = match ending {
            Ending::Kicked => "the session was ended by an administrator",
            Ending::GraceOver => "the session ended",
        };
        for tab in std::mem::take(&mut live.tabs) {
            if let Some(poll) = tab.detach(&mut self.timers) {
                fail(out, poll.reply, ErrorCode::UnknownSession, message);
            }
        }
        live.grace.disarm(&mut self.timers);
        live.refresh.disarm(&mut self.timers);
        // Their messages may still be stored: the next session delivers a
        // retry's duplicate.
        self.keep_doubts(user, live.in_doubt.take());
        let why = match ending {
            Ending::Kicked => "kicked",
            Ending::GraceOver => "grace over after the last tab",
        };
        self.broadcast_presence_to(now, user, Status::Offline, why, &live.friends(), out);
    }
}
