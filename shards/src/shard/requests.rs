//! Requests: a client or admin call, from checking its tab to the storage job
//! or the answer. Checks run in the protocol's order (docs/protocol.md, "Check
//! order"): the tab, then the user's rate limit for the call (`rates`), then
//! "not with yourself", then friends-only.
//!
//! Invariant: every request gets exactly one reply, here or when the job it
//! started finishes (`jobs`).

use std::sync::Arc;

use super::jobs::{ReplyJob, SendTry};
use super::sessions::{Detach, Ending};
use super::{fail, reply, Output, Shard};
use crate::model::{
    ErrorCode, EventKind, MsgId, ReplyTo, Request, Response, Sid, Status, StorageJob, TypingState,
    UserId,
};
use crate::ratelimit::Kind;
use crate::session::WaitingConnect;

/// Who a call naming another user may address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addressing {
    /// Only a friend in the caller's roster; the verb words the
    /// `not_friends` answer ("you can only {verb} friends").
    FriendsOnly(&'static str),
    /// Anyone but the caller (a former friend's conversation is still the
    /// caller's own).
    AnyoneElse,
}

/// A call from one tab: when, which tab, where the answer goes.
#[derive(Clone, Copy, Debug)]
struct TabCall {
    /// When the call arrived.
    now: u64,
    /// The calling tab.
    sid: Sid,
    /// Where the answer goes.
    to: ReplyTo,
}

impl Shard {
    /// A request for a user homed here (or `Health`).
    pub(super) fn request(
        &mut self,
        now: u64,
        to: ReplyTo,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        if let Some(user) = request.home_user() {
            assert_eq!(
                self.config.home(user),
                self.config.shard,
                "request for user {user} routed to the wrong shard"
            );
        }
        #[cfg(feature = "fault-injection")]
        if let Request::Send { sid, .. } = &request {
            if Some(sid.user) == self.config.panic_user {
                panic!("fault injection: a send from user {} panics", sid.user);
            }
        }
        match request {
            Request::Connect { user, tab, sid } => {
                let c = WaitingConnect {
                    reply: to,
                    tab,
                    sid,
                };
                self.connect(now, user, c, out);
            }
            Request::Health => {
                let health = Response::Health {
                    shard: self.config.shard,
                    sessions: self.sessions.len() as u64,
                    tabs: self.tab_count() as u64,
                    polls: self.held_poll_count() as u64,
                };
                reply(out, to, health);
            }
            Request::Trace { traced } => {
                self.traced.replace(traced);
                reply(out, to, Response::Done);
            }
            Request::RosterChanged { user } => self.roster_changed(to, user, out),
            Request::Kick { user } => {
                self.end_session(now, user, Ending::Kicked, out);
                reply(out, to, Response::Done);
            }
            Request::Poll {
                sid,
                since,
                wait_ms,
            } => self.poll(now, to, sid, since, wait_ms, out),
            Request::EndPoll { sid, held } => {
                self.end_poll(now, sid, held, out);
                reply(out, to, Response::Done);
            }
            request => self.tab_request(now, to, request, out),
        }
    }

    /// A request from a tab other than a poll.
    fn tab_request(&mut self, now: u64, to: ReplyTo, request: Request, out: &mut Vec<Output>) {
        let call = |sid| TabCall { now, sid, to };
        match request {
            Request::Send {
                sid,
                to: friend,
                text,
                cid,
            } => self.send(call(sid), friend, text, cid, out),
            Request::Typing {
                sid,
                to: friend,
                state,
            } => self.typing(call(sid), friend, state, out),
            Request::Presence { sid, status } => self.set_status(call(sid), status, out),
            Request::Ui { sid, state } => self.save_ui(call(sid), state, out),
            Request::Read { sid, with, upto } => self.read(call(sid), with, upto, out),
            Request::History {
                sid,
                with,
                before,
                limit,
            } => self.history(call(sid), with, before, limit, out),
            Request::Leave { sid } => {
                if self.sessions.tab(now, sid, to, out).is_some() {
                    self.detach_tab(now, sid, Detach::Left, out);
                    reply(out, to, Response::Done);
                }
            }
            Request::Rejected { sid, failure } => {
                if self.sessions.tab(now, sid, to, out).is_some() {
                    reply(out, to, Response::Failed(failure));
                }
            }
            Request::Connect { .. }
            | Request::Health
            | Request::Trace { .. }
            | Request::RosterChanged { .. }
            | Request::Kick { .. }
            | Request::Poll { .. }
            | Request::EndPoll { .. } => unreachable!("handled by request()"),
        }
    }

    /// The user of the calling tab when `other` may be addressed: the tab
    /// is live, the call is within the user's `kind` rate limit, `other` is
    /// someone else and `addressing` allows them. Otherwise answers, in the
    /// protocol's order, and returns `None`.
    fn check_other(
        &mut self,
        call: TabCall,
        kind: Kind,
        other: UserId,
        addressing: Addressing,
        out: &mut Vec<Output>,
    ) -> Option<UserId> {
        let (session, _) = self.tab_within_rate(call.now, call.sid, call.to, kind, out)?;
        let user = session.user;
        if other == user {
            fail(out, call.to, ErrorCode::BadRequest, "not with yourself");
            return None;
        }
        if let Addressing::FriendsOnly(verb) = addressing {
            if !session.roster.contains_key(&other) {
                let message = format!("you can only {verb} friends");
                fail(out, call.to, ErrorCode::NotFriends, &message);
                return None;
            }
        }
        Some(user)
    }

    /// `/send`: store the message; it is delivered once stored.
    fn send(
        &mut self,
        call: TabCall,
        friend: UserId,
        text: String,
        cid: Option<String>,
        out: &mut Vec<Output>,
    ) {
        let addressing = Addressing::FriendsOnly("message");
        let Some(user) = self.check_other(call, Kind::Send, friend, addressing, out) else {
            return;
        };
        let cid: Option<Arc<str>> = cid.map(Arc::from);
        let request = StorageJob::StoreMessage {
            from: user,
            to: friend,
            text: Arc::from(text),
            cid: cid.clone(),
            ts: call.now,
        };
        let send = SendTry {
            user,
            cid: cid.clone(),
            ts_ms: call.now,
        };
        if self.ask_storage(call.to, ReplyJob::Send(send), request, out) {
            if let Some(cid) = cid {
                self.send_submitted(user, cid, call.now);
            }
        }
    }

    /// `/typing`: delivered at once, never stored.
    fn typing(&mut self, call: TabCall, friend: UserId, state: TypingState, out: &mut Vec<Output>) {
        let addressing = Addressing::FriendsOnly("type to");
        let Some(user) = self.check_other(call, Kind::Typing, friend, addressing, out) else {
            return;
        };
        let kind = EventKind::Typing { user, state };
        self.deliver(call.now, friend, user, kind, out);
        reply(out, call.to, Response::Done);
    }

    /// `/presence`: online or away; friends hear of a change.
    fn set_status(&mut self, call: TabCall, status: Status, out: &mut Vec<Output>) {
        let Some((session, _)) =
            self.tab_within_rate(call.now, call.sid, call.to, Kind::Presence, out)
        else {
            return;
        };
        assert!(status != Status::Offline, "io decodes only online/away");
        let user = session.user;
        if session.status != status {
            session.status = status;
            self.broadcast_presence(call.now, user, status, "presence call", out);
        }
        reply(out, call.to, Response::Done);
    }

    /// `/ui`: persist the UI state; every tab hears of it once saved.
    fn save_ui(&mut self, call: TabCall, state: String, out: &mut Vec<Output>) {
        let Some((session, i)) = self.tab_within_rate(call.now, call.sid, call.to, Kind::Ui, out)
        else {
            return;
        };
        let user = session.user;
        let tab = session.tabs[i].name.clone();
        let state: Arc<str> = Arc::from(state);
        let job = ReplyJob::SaveUi {
            user,
            tab,
            state: state.clone(),
        };
        self.ask_storage(call.to, job, StorageJob::SaveUi { user, state }, out);
    }

    /// `/read`: move the read mark. Read receipts are friends-only.
    fn read(&mut self, call: TabCall, with: UserId, upto: MsgId, out: &mut Vec<Output>) {
        let addressing = Addressing::FriendsOnly("send read receipts to");
        let Some(user) = self.check_other(call, Kind::Read, with, addressing, out) else {
            return;
        };
        let job = ReplyJob::Read { user, with };
        self.ask_storage(call.to, job, StorageJob::MarkRead { user, with, upto }, out);
    }

    /// `/history`: a page of the conversation with `with`.
    fn history(
        &mut self,
        call: TabCall,
        with: UserId,
        before: Option<MsgId>,
        limit: u32,
        out: &mut Vec<Output>,
    ) {
        let Some(user) = self.check_other(call, Kind::History, with, Addressing::AnyoneElse, out)
        else {
            return;
        };
        let request = StorageJob::History {
            user,
            with,
            before,
            limit,
        };
        self.ask_storage(call.to, ReplyJob::History { user }, request, out);
    }
}
