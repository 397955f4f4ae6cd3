//! Delivery: events into session buffers. An event for another user goes
//! to that user's home shard (`PeerMsg::Deliver`, or at once when it is
//! this one), where the friends-only check drops it unless the sender is in
//! the recipient's roster. Appending an event answers every held poll of
//! the session.
//!
//! Sends in doubt: a send whose storage job failed may have been stored
//! all the same, so its cid is kept in doubt until a try is answered
//! stored — in the sender's live session (`LiveSession::in_doubt`), or,
//! while the sender has none (loading, ended by a kick or grace), here in
//! [`OrphanDoubts`] until their next session takes them. A duplicate whose
//! cid was in doubt is delivered like a fresh store.
//!
//! Invariant: an event reaches only a live session, and one caused by
//! another user only if that user is in its roster; a user's cids in doubt
//! are in their live session if they have one, else in `OrphanDoubts`.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{reply, Output, PeerMsg, Shard};
use crate::limits;
use crate::model::{EventKind, Message, MsgId, ReplyTo, Response, UserId};
use crate::routing::home_shard;

/// Cids in doubt of users homed here with no live session, oldest first,
/// at most `IN_DOUBT_ORPHANS_MAX`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct OrphanDoubts {
    /// `(sender, cid)`, oldest first.
    cids: VecDeque<(UserId, Arc<str>)>,
}

impl OrphanDoubts {
    /// Keeps `cid` of `user` in doubt. Returns whether the oldest had to be
    /// dropped to make room.
    fn keep(&mut self, user: UserId, cid: Arc<str>) -> bool {
        if self.cids.iter().any(|(u, c)| *u == user && *c == cid) {
            return false;
        }
        let full = self.cids.len() >= limits::IN_DOUBT_ORPHANS_MAX;
        if full {
            self.cids.pop_front();
        }
        self.cids.push_back((user, cid));
        full
    }

    /// A try of `user`'s `cid` was answered stored: no longer in doubt.
    /// Returns whether it was.
    fn settle(&mut self, user: UserId, cid: &str) -> bool {
        match self
            .cids
            .iter()
            .position(|(u, c)| *u == user && &**c == cid)
        {
            Some(i) => {
                self.cids.remove(i);
                true
            }
            None => false,
        }
    }

    /// Takes every cid of `user`, oldest first.
    fn take(&mut self, user: UserId) -> Vec<Arc<str>> {
        let mut taken = Vec::new();
        self.cids.retain(|(u, c)| {
            let mine = *u == user;
            if mine {
                taken.push(c.clone());
            }
            !mine
        });
        taken
    }

    /// Whether no cid is kept.
    fn is_empty(&self) -> bool {
        self.cids.is_empty()
    }
}

impl Shard {
    /// Sends an event caused by `from` to `to`'s home shard.
    pub(super) fn deliver(
        &mut self,
        now: u64,
        to: UserId,
        from: UserId,
        kind: EventKind,
        out: &mut Vec<Output>,
    ) {
        let shard = home_shard(to, self.config.shard_count);
        self.send_to(now, shard, PeerMsg::Deliver { to, from, kind }, out);
    }

    /// `PeerMsg::Deliver` arrived: the friends-only check, then the
    /// recipient's buffer (and unread count, for a message to them).
    pub(super) fn delivered(
        &mut self,
        now: u64,
        to: UserId,
        from: UserId,
        kind: EventKind,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.live_mut(to) else {
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

    /// Appends an event to a live session (answering its held polls).
    pub(super) fn push_event(
        &mut self,
        now: u64,
        user: UserId,
        kind: EventKind,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.live_mut(user) else {
            return;
        };
        self.stats.events += 1;
        let bounds = self.config.buffer_bounds();
        let idle_at = now + self.config.tab_timeout_ms;
        let appended = session.push_event(kind, bounds, idle_at, &mut self.timers, out);
        self.stats.typing_coalesced += u64::from(appended.coalesced);
        self.stats.events_dropped += appended.dropped as u64;
    }

    /// A message was stored (or found stored under its `cid`): a new one
    /// reaches the sender's tabs and the recipient's, and so does a
    /// duplicate whose cid was in doubt (an earlier try failed, so nobody
    /// was given it) unless the sender's buffer shows it was delivered;
    /// any other duplicate was delivered by its first try. The sender is
    /// answered either way. The cid is in doubt in the sender's live
    /// session, or in `OrphanDoubts` when they have none (their session
    /// ended, or is loading, since the failed try).
    pub(super) fn message_stored(
        &mut self,
        now: u64,
        to: ReplyTo,
        user: UserId,
        message: Arc<Message>,
        duplicate: bool,
        out: &mut Vec<Output>,
    ) {
        let mut deliver = !duplicate;
        if let Some(cid) = &message.cid {
            let (was_in_doubt, buffered) = match self.sessions.live_mut(user) {
                Some(session) => (session.settle_doubt(cid), session.holds_message(message.id)),
                None => (self.orphan_doubts.settle(user, cid), false),
            };
            if was_in_doubt && duplicate && !buffered {
                self.stats.in_doubt_delivered += 1;
                deliver = true;
            }
        }
        if duplicate {
            self.stats.duplicate_sends += 1;
        } else {
            self.stats.messages += 1;
        }
        if deliver {
            self.push_event(now, user, EventKind::Message(message.clone()), out);
            let kind = EventKind::Message(message.clone());
            self.deliver(now, message.to, user, kind, out);
        }
        let sent = Response::Sent {
            id: message.id,
            ts: message.ts,
        };
        reply(out, to, sent);
    }

    /// A send of `user`'s with `cid` failed: storage may have stored it
    /// anyway, so its cid is in doubt until a try is answered stored — in
    /// the user's live session, or kept here while they have none.
    pub(super) fn send_in_doubt(&mut self, user: UserId, cid: Arc<str>) {
        let dropped = match self.sessions.live_mut(user) {
            Some(session) => session.doubt(cid),
            None => {
                self.stats.in_doubt_orphaned += 1;
                self.orphan_doubts.keep(user, cid)
            }
        };
        self.stats.in_doubt_dropped += u64::from(dropped);
    }

    /// `user`'s session ended with `cids` in doubt: keep them for the
    /// next.
    pub(super) fn keep_doubts(&mut self, user: UserId, cids: VecDeque<Arc<str>>) {
        for cid in cids {
            self.stats.in_doubt_orphaned += 1;
            let dropped = self.orphan_doubts.keep(user, cid);
            self.stats.in_doubt_dropped += u64::from(dropped);
        }
    }

    /// `user`'s session went live: it takes the cids kept in doubt for
    /// them.
    pub(super) fn adopt_doubts(&mut self, user: UserId) {
        if self.orphan_doubts.is_empty() {
            return;
        }
        let cids = self.orphan_doubts.take(user);
        let Some(session) = self.sessions.live_mut(user) else {
            unreachable!("adopt_doubts for a session not live");
        };
        for cid in cids {
            let dropped = session.doubt(cid);
            self.stats.in_doubt_dropped += u64::from(dropped);
        }
    }

    /// `user` read the conversation with `with` up to `upto`: their unread
    /// count is now `unread`; both sides' tabs get the receipt.
    pub(super) fn mark_read(
        &mut self,
        now: u64,
        user: UserId,
        with: UserId,
        upto: MsgId,
        unread: u64,
        out: &mut Vec<Output>,
    ) {
        if let Some(session) = self.sessions.live_mut(user) {
            if unread == 0 {
                session.unread.remove(&with);
            } else {
                session.unread.insert(with, unread);
            }
        }
        let mine = EventKind::Read {
            with,
            by: user,
            upto,
        };
        self.push_event(now, user, mine, out);
        let theirs = EventKind::Read {
            with: user,
            by: user,
            upto,
        };
        self.deliver(now, with, user, theirs, out);
    }

    /// `user`'s UI state was saved: the session keeps it and every tab
    /// hears of it.
    pub(super) fn ui_saved(
        &mut self,
        now: u64,
        user: UserId,
        tab: Arc<str>,
        state: Arc<str>,
        out: &mut Vec<Output>,
    ) {
        if let Some(session) = self.sessions.live_mut(user) {
            session.ui = Some(state.clone());
        }
        self.push_event(now, user, EventKind::Ui { state, tab }, out);
    }
}
