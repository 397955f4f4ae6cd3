//! Delivery: events into session buffers. An event for another user goes
//! to that user's home shard (`PeerMsg::Deliver`, or at once when it is
//! this one), where the friends-only check drops it unless the sender is in
//! the recipient's roster. Appending an event answers every held poll of
//! the session.
//!
//! Sends in doubt (`crate::doubt`): every try of a send with a cid is
//! noted at submit, and each answer is judged against the cid's other
//! tries, so a message acknowledged to any try reaches every tab once
//! however the tries' answers interleave. A user's cids in doubt live in
//! their live session (`LiveSession::in_doubt`), or, while they have none
//! (loading, ended by a kick or grace), here in [`OrphanDoubts`] until
//! their next session takes them; an answer with no session is judged
//! there (the sender's tabs then get the message from history).
//!
//! Invariant: an event reaches only a live session, and one caused by
//! another user only if that user is in its roster; a user's cids in doubt
//! are in their live session if they have one, else in `OrphanDoubts`.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jobs::SendTry;
use super::{note_if_traced, reply, Output, PeerMsg, Resync, Shard};
use crate::doubt::{alone, Answer, Tries, Verdict};
use crate::limits;
use crate::model::{EventKind, Message, MsgId, ReplyTo, Response, UserId};
use crate::session::holds_message;
use crate::trace::Note;

/// The other user an event is about (its sender, the friend whose
/// presence or roster entry changed...), for a trace; `None` for the
/// session's own UI state.
fn other_user(kind: &EventKind) -> Option<UserId> {
    match kind {
        EventKind::Message(m) => Some(m.from),
        EventKind::Presence { user, .. } | EventKind::Typing { user, .. } => Some(*user),
        EventKind::Read { by, .. } => Some(*by),
        EventKind::Roster { user, .. } => Some(user.id),
        EventKind::Ui { .. } => None,
    }
}

/// Cids in doubt of users homed here with no live session, oldest first,
/// at most `IN_DOUBT_ORPHANS_MAX`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct OrphanDoubts {
    /// `(sender, cid, its tries)`, oldest first; every entry open.
    cids: VecDeque<(UserId, Arc<str>, Tries)>,
}

impl OrphanDoubts {
    /// Keeps `cid` of `user` with `tries`. Returns whether the oldest had
    /// to be dropped to make room.
    fn keep(&mut self, user: UserId, cid: Arc<str>, tries: Tries) -> bool {
        let full = self.cids.len() >= limits::IN_DOUBT_ORPHANS_MAX;
        if full {
            self.cids.pop_front();
        }
        self.cids.push_back((user, cid, tries));
        full
    }

    /// A try of `user`'s `cid` submitted at `ts_ms` ended with `answer`,
    /// with no session to judge it in: the verdict, and whether opening an
    /// entry for a failure dropped the oldest.
    fn answered(&mut self, user: UserId, cid: &str, ts_ms: u64, answer: Answer) -> (Verdict, bool) {
        let found = self
            .cids
            .iter()
            .position(|(u, c, _)| *u == user && &**c == cid);
        let Some(i) = found else {
            return alone(answer, || self.keep(user, cid.into(), Tries::new(ts_ms)));
        };
        let verdict = self.cids[i].2.answered(answer, |_| false);
        if !self.cids[i].2.open() {
            self.cids.remove(i);
        }
        (verdict, false)
    }

    /// The state of `user`'s `cid`, if kept.
    fn get(&self, user: UserId, cid: &str) -> Option<&Tries> {
        self.cids
            .iter()
            .find(|(u, c, _)| *u == user && &**c == cid)
            .map(|(_, _, t)| t)
    }

    /// Sets `user`'s `cid` to `tries` (removed when not open).
    fn set(&mut self, user: UserId, cid: Arc<str>, tries: Tries) -> bool {
        self.cids.retain(|(u, c, _)| !(*u == user && *c == cid));
        if tries.open() {
            return self.keep(user, cid, tries);
        }
        false
    }

    /// Whether `user`'s `cid` is kept.
    fn has(&self, user: UserId, cid: &str) -> bool {
        self.cids.iter().any(|(u, c, _)| *u == user && &**c == cid)
    }

    /// Takes every cid of `user`, oldest first.
    fn take(&mut self, user: UserId) -> Vec<(Arc<str>, Tries)> {
        let mut taken = Vec::new();
        self.cids.retain(|(u, c, t)| {
            let mine = *u == user;
            if mine {
                taken.push((c.clone(), t.clone()));
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
        let shard = self.config.home(to);
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
        let name = kind.name();
        // What the sender's trace says of it, on the recipient's shard.
        let sent = |outcome| Note::DeliveredTo {
            to,
            kind: name,
            outcome,
        };
        let Some(session) = self.sessions.live_mut(to) else {
            self.note(now, from, sent("no live session there: not appended"), out);
            return;
        };
        if !session.roster.contains_key(&from) {
            self.stats.not_friends_dropped += 1;
            self.note(now, to, Note::NotFriends { kind: name, from }, out);
            self.note(now, from, sent("refused: not in their roster"), out);
            return;
        }
        if let EventKind::Message(m) = &kind {
            if m.to == to {
                *session.unread.entry(from).or_insert(0) += 1;
                self.stats.messages_delivered += 1;
            }
        }
        self.push_event(now, to, kind, out);
        self.note(now, from, sent("appended"), out);
    }

    /// Appends an event to a live session (answering its held polls).
    pub(super) fn push_event(
        &mut self,
        now: u64,
        user: UserId,
        kind: EventKind,
        out: &mut Vec<Output>,
    ) {
        self.step(user, |shard| {
            let Some(session) = shard.sessions.live_mut(user) else {
                return;
            };
            shard.stats.events += 1;
            let bounds = shard.config.buffer_bounds();
            let idle_at = now + shard.config.tab_timeout_ms;
            let name = kind.name();
            let from = other_user(&kind).filter(|&u| u != user);
            let appended = session.push_event(kind, bounds, idle_at, &mut shard.timers, out);
            shard.stats.typing_coalesced += u64::from(appended.coalesced);
            shard.stats.events_dropped += appended.dropped as u64;
            if !shard.traced.is_empty() {
                let seq = session.seq;
                let note = Note::Event {
                    kind: name,
                    seq,
                    from,
                };
                note_if_traced(&shard.traced, now, user, note, out);
            }
        });
    }

    /// A try of `user`'s send with `cid`, submitted at `ts_ms`, went to
    /// storage: its cid is in doubt until its tries are answered (see
    /// `crate::doubt`).
    pub(super) fn send_submitted(&mut self, user: UserId, cid: Arc<str>, ts_ms: u64) {
        if let Some(session) = self.sessions.live_mut(user) {
            let max = limits::IN_DOUBT_CIDS_MAX;
            let dropped = session.in_doubt.submitted(cid, ts_ms, max);
            self.stats.in_doubt_dropped += u64::from(dropped);
        }
    }

    /// A message was stored (or found stored under its cid) by a try of
    /// `user`'s send: delivered to the sender's tabs and the recipient's
    /// if the try's cid says so (always for a fresh store without a cid),
    /// and the sender answered either way.
    pub(super) fn message_stored(
        &mut self,
        now: u64,
        to: ReplyTo,
        send: SendTry,
        message: Arc<Message>,
        duplicate: bool,
        out: &mut Vec<Output>,
    ) {
        if duplicate {
            self.stats.duplicate_sends += 1;
        } else {
            self.stats.messages += 1;
        }
        let sent = Response::Sent {
            id: message.id,
            ts: message.ts,
        };
        let answer = Answer::Stored { message, duplicate };
        self.send_answered(now, send, answer, out);
        reply(out, to, sent);
    }

    /// A try of a send ended with `answer`: judged against its cid's
    /// other tries (in the sender's live session, or kept here with none),
    /// and delivered when the verdict says so.
    pub(super) fn send_answered(
        &mut self,
        now: u64,
        send: SendTry,
        answer: Answer,
        out: &mut Vec<Output>,
    ) {
        let SendTry { user, cid, ts_ms } = send;
        let (verdict, dropped) = match (&cid, self.sessions.live_mut(user)) {
            (None, _) => match answer {
                Answer::Stored {
                    message,
                    duplicate: false,
                } => (
                    Verdict::Deliver {
                        message,
                        recovered: false,
                    },
                    false,
                ),
                _ => (Verdict::Nothing, false),
            },
            (Some(cid), Some(session)) => {
                let events = &session.events;
                let buffered = |id| holds_message(events, id);
                let max = limits::IN_DOUBT_CIDS_MAX;
                session.in_doubt.answered(cid, ts_ms, answer, buffered, max)
            }
            (Some(cid), None) => {
                let kept = matches!(answer, Answer::Failed) && !self.orphan_doubts.has(user, cid);
                self.stats.in_doubt_orphaned += u64::from(kept);
                self.orphan_doubts.answered(user, cid, ts_ms, answer)
            }
        };
        self.stats.in_doubt_dropped += u64::from(dropped);
        let Verdict::Deliver { message, recovered } = verdict else {
            return;
        };
        self.stats.in_doubt_delivered += u64::from(recovered);
        self.push_event(now, user, EventKind::Message(message.clone()), out);
        let kind = EventKind::Message(message.clone());
        self.deliver(now, message.to, user, kind, out);
    }

    /// The state in doubt of `user`'s `cid`, wherever it is kept.
    pub(super) fn doubt_of(&self, user: UserId, cid: &str) -> Option<Tries> {
        match self.sessions.live(user) {
            Some(session) => session.in_doubt.get(cid).cloned(),
            None => self.orphan_doubts.get(user, cid).cloned(),
        }
    }

    /// Sets the state in doubt of `user`'s `cid` to `tries` (after a
    /// panic, from what it was before the input), wherever it is kept.
    pub(super) fn restore_doubt(&mut self, user: UserId, cid: Arc<str>, tries: Tries) {
        let dropped = match self.sessions.live_mut(user) {
            Some(session) => session.in_doubt.set(cid, tries, limits::IN_DOUBT_CIDS_MAX),
            None => self.orphan_doubts.set(user, cid, tries),
        };
        self.stats.in_doubt_dropped += u64::from(dropped);
    }

    /// `user`'s session ended with `cids` in doubt: keep them for the
    /// next.
    pub(super) fn keep_doubts(&mut self, user: UserId, cids: VecDeque<(Arc<str>, Tries)>) {
        for (cid, tries) in cids {
            self.stats.in_doubt_orphaned += 1;
            let dropped = self.orphan_doubts.keep(user, cid, tries);
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
        for (cid, tries) in cids {
            let dropped = session
                .in_doubt
                .adopt(cid, tries, limits::IN_DOUBT_CIDS_MAX);
            self.stats.in_doubt_dropped += u64::from(dropped);
        }
    }

    /// `PeerMsg::Resync`: deliveries to `who` were dropped on the way, so
    /// each of their live sessions resets its tabs (`LiveSession::resync`):
    /// held polls are answered `reset` now, any later poll from before it
    /// too, and the tabs reload from history, which holds every message
    /// stored. Users in id order, so a run replays.
    pub(super) fn resync(&mut self, now: u64, who: Resync, out: &mut Vec<Output>) {
        let mut users = match who {
            Resync::Users(users) => users,
            Resync::All => self.sessions.live_ones().map(|s| s.user).collect(),
        };
        users.sort_unstable();
        users.dedup();
        let idle_at = now + self.config.tab_timeout_ms;
        for user in users {
            self.step(user, |shard| {
                if let Some(session) = shard.sessions.live_mut(user) {
                    session.resync(idle_at, &mut shard.timers, out);
                    shard.stats.resyncs += 1;
                }
            });
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
