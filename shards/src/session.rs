//! One user's state on their home shard: while it loads, the connects
//! waiting for it; once live, the tabs attached to it, the event buffer
//! every tab polls from, presence, the cached roster, UI state and unread
//! counts. Everything here is plain data (serialisable, so a deploy can
//! hand sessions to a new process) and the moves that keep it consistent
//! (a tab's state change re-arms its timer); the decisions are made in
//! [`crate::shard`].
//!
//! States are enums that carry their data, so impossible combinations
//! cannot be written: a loading session has no name, status or roster yet;
//! a tab either holds a poll or waits idle for one, never both.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::doubt::InDoubt;
use crate::limits;
use crate::model::{Event, EventKind, Friend, MsgId, ReplyTo, Response, Sid, Status, UserId};
use crate::ratelimit::Buckets;
use crate::timers::{Deadline, TimerKey, Timers};
use crate::Output;

/// A user's session: loading from storage, or live.
// Nearly every session is live and a load is brief: boxing the live
// variant would add an indirection to every lookup to save a few hundred
// bytes per loading session.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Session {
    /// The `LoadSession` job `job` is in flight. Nothing about the user is
    /// known yet: no tabs, no events, no roster.
    Loading {
        /// The load whose result makes the session live (a result for
        /// another job is stale and dropped).
        job: u64,
        /// Connects that arrived meanwhile, answered when the load ends.
        waiting: Vec<WaitingConnect>,
        /// Parts of roster changes (`RosterTouched`) that arrived while the
        /// load was in flight: the load may have read the directory before
        /// the change, so the roster is re-read once for each when the
        /// session goes live (and each part is acked then). At most
        /// `LOADING_REREADS_MAX`.
        #[serde(default)]
        rereads: Vec<u64>,
    },
    /// Loaded: it takes events and tabs; it may be tabless, in grace.
    Live(LiveSession),
}

impl Session {
    /// Whether the session is loaded (it may be tabless, in grace).
    pub fn is_live(&self) -> bool {
        matches!(self, Session::Live(_))
    }

    /// The live session, if loaded.
    pub fn live(&self) -> Option<&LiveSession> {
        match self {
            Session::Live(live) => Some(live),
            Session::Loading { .. } => None,
        }
    }

    /// The live session, if loaded.
    pub fn live_mut(&mut self) -> Option<&mut LiveSession> {
        match self {
            Session::Live(live) => Some(live),
            Session::Loading { .. } => None,
        }
    }
}

/// A connect that arrived while the session was loading from storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitingConnect {
    /// Where the answer goes.
    pub reply: ReplyTo,
    /// The tab name asked for.
    pub tab: Option<String>,
    /// The sid drawn for the tab.
    pub sid: Sid,
}

/// A loaded session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveSession {
    /// Whose session this is.
    pub user: UserId,
    /// Display name from the directory.
    pub name: Arc<str>,
    /// `Online` or `Away`.
    pub status: Status,
    /// Attached tabs.
    pub tabs: Vec<Tab>,
    /// Seq of the latest event (0 before the first).
    pub seq: u64,
    /// The newest events, oldest first, within `BufferBounds`. Seqs
    /// increase but may skip: a typing event replaces the earlier one from
    /// the same user still buffered.
    pub events: VecDeque<Arc<Event>>,
    /// `event_bytes` summed over `events`.
    pub events_bytes: usize,
    /// The highest seq dropped to keep the buffer within its bounds, or
    /// the seq of the last resync (0: none). A poll from before it missed
    /// events: it gets `reset`.
    pub evicted_seq: u64,
    /// Rate-limit buckets, one per kind of call. They live and end with the
    /// session: a session that ends and loads again starts with full ones.
    pub buckets: Buckets,
    /// Friends (id → name), as last read from the directory.
    pub roster: BTreeMap<UserId, Arc<str>>,
    /// The storage job whose read `roster` holds: the session's load or a
    /// roster re-read. Job numbers grow in the order jobs are issued, so a
    /// read issued before this one that is answered after it is stale (it
    /// may have read the directory before a change this one saw) and is
    /// dropped (see `shard::roster`). 0 for a session handed over without
    /// it: the next read applies.
    #[serde(default)]
    pub roster_read: u64,
    /// Persisted UI state (JSON object text).
    pub ui: Option<Arc<str>>,
    /// Friend id → unread messages from them (non-zero entries only).
    pub unread: BTreeMap<UserId, u64>,
    /// When the session ends if no tab comes back; armed exactly while
    /// tabless.
    pub grace: Deadline,
    /// When the roster is re-read next; disarmed while a periodic re-read
    /// is in flight.
    pub refresh: Deadline,
    /// Counter for server-made tab names.
    pub tabs_named: u64,
    /// Cids in doubt (`crate::doubt`): those with a try in flight or a
    /// failed try not delivered since, oldest first, at most
    /// `IN_DOUBT_CIDS_MAX`. When the session ends they are kept by the
    /// shard (`IN_DOUBT_ORPHANS_MAX`) for the user's next session.
    #[serde(default)]
    pub in_doubt: InDoubt,
}

impl LiveSession {
    /// A session as storage loaded it by job `load`: online, no tabs, no
    /// events, no timers armed.
    pub fn loaded(
        user: UserId,
        load: u64,
        name: Arc<str>,
        friends: Vec<Friend>,
        ui: Option<Arc<str>>,
        unread: Vec<(UserId, u64)>,
    ) -> LiveSession {
        LiveSession {
            user,
            name,
            status: Status::Online,
            tabs: Vec::new(),
            seq: 0,
            events: VecDeque::new(),
            events_bytes: 0,
            evicted_seq: 0,
            buckets: Buckets::default(),
            roster: friends.into_iter().map(|f| (f.id, f.name)).collect(),
            roster_read: load,
            ui,
            unread: unread.into_iter().filter(|&(_, n)| n > 0).collect(),
            grace: Deadline::new(TimerKey::Grace(user)),
            refresh: Deadline::new(TimerKey::Refresh(user)),
            tabs_named: 0,
            in_doubt: InDoubt::default(),
        }
    }

    /// Whether message `id` is in the buffer (its event reached this
    /// session's tabs, or they get `reset`).
    pub fn holds_message(&self, id: MsgId) -> bool {
        holds_message(&self.events, id)
    }

    /// The tab holding `sid`. Every tab's sid is compared, in constant
    /// time (`Sid::matches`), so the time taken says nothing about which
    /// secret came close.
    pub fn tab_index(&self, sid: Sid) -> Option<usize> {
        let mut found = None;
        for (i, tab) in self.tabs.iter().enumerate() {
            if tab.sid.matches(&sid) {
                found = Some(i);
            }
        }
        found
    }

    /// The friends' ids, in roster order.
    pub fn friends(&self) -> Vec<UserId> {
        self.roster.keys().copied().collect()
    }

    /// Appends an event and answers every held poll (each with all events
    /// after its `since`); those tabs go idle until `idle_at_ms`. A typing
    /// event replaces the earlier typing event from the same user still
    /// buffered (only the latest state matters); then the oldest events
    /// are dropped while the buffer is over either of `bounds` (never the
    /// new one).
    pub fn push_event(
        &mut self,
        kind: EventKind,
        bounds: BufferBounds,
        idle_at_ms: u64,
        timers: &mut Timers,
        out: &mut Vec<Output>,
    ) -> Appended {
        let mut appended = Appended::default();
        if let EventKind::Typing { user, .. } = kind {
            let earlier = self
                .events
                .iter()
                .rposition(|e| matches!(e.kind, EventKind::Typing { user: u, .. } if u == user));
            if let Some(i) = earlier {
                let e = self.events.remove(i).expect("index from rposition");
                self.events_bytes -= event_bytes(&e.kind);
                appended.coalesced = true;
            }
        }
        self.seq += 1;
        self.events_bytes += event_bytes(&kind);
        self.events.push_back(Arc::new(Event {
            seq: self.seq,
            kind,
        }));
        while self.events.len() > 1
            && (self.events.len() > bounds.events_max || self.events_bytes > bounds.bytes_max)
        {
            let e = self.events.pop_front().expect("more than one event");
            self.events_bytes -= event_bytes(&e.kind);
            // Never lowered: a resync may have moved it past every event.
            self.evicted_seq = self.evicted_seq.max(e.seq);
            appended.dropped += 1;
        }
        for tab in &mut self.tabs {
            if !tab.is_polling() {
                continue;
            }
            let idle = TabState::Idle {
                deadline_ms: idle_at_ms,
            };
            if let TabState::Polling(poll) = tab.enter(idle, timers) {
                out.push(Output::Reply {
                    to: poll.reply,
                    response: events_after(&self.events, self.seq, self.evicted_seq, poll.since),
                });
            }
        }
        appended
    }

    /// Events meant for this session may have been lost on the way (a
    /// delivery dropped on a full outbox): every tab must reload. The seq
    /// moves on by one with no event and everything up to it counts as
    /// dropped (the buffer is emptied), so every held poll is answered
    /// `Reset` now and any later poll from before it too; those tabs go
    /// idle until `idle_at_ms`.
    pub fn resync(&mut self, idle_at_ms: u64, timers: &mut Timers, out: &mut Vec<Output>) {
        self.seq += 1;
        self.evicted_seq = self.seq;
        self.events.clear();
        self.events_bytes = 0;
        for tab in &mut self.tabs {
            if !tab.is_polling() {
                continue;
            }
            let idle = TabState::Idle {
                deadline_ms: idle_at_ms,
            };
            if let TabState::Polling(poll) = tab.enter(idle, timers) {
                out.push(Output::Reply {
                    to: poll.reply,
                    response: Response::Reset { seq: self.seq },
                });
            }
        }
    }

    /// Events after `since` (by seq: seqs may skip), or `Reset` when some
    /// were dropped by the buffer's bounds. `since` must not exceed `seq`.
    pub fn answer_since(&self, since: u64) -> Response {
        events_after(&self.events, self.seq, self.evicted_seq, since)
    }
}

/// Whether `events` hold message `id`.
pub fn holds_message(events: &VecDeque<Arc<Event>>, id: MsgId) -> bool {
    events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Message(m) if m.id == id))
}

/// The answer to a poll from `since` of a buffer whose latest seq is `seq`
/// and whose highest dropped seq is `evicted_seq`: `Reset` if a dropped
/// event is after `since`, else the buffered events after it (found by seq:
/// seqs increase but may skip).
fn events_after(events: &VecDeque<Arc<Event>>, seq: u64, evicted_seq: u64, since: u64) -> Response {
    debug_assert!(since <= seq);
    if since < evicted_seq {
        return Response::Reset { seq };
    }
    let start = events.partition_point(|e| e.seq <= since);
    Response::Events {
        seq,
        events: events.range(start..).cloned().collect(),
    }
}

/// The bounds of a session's event buffer (from the shard's `Config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferBounds {
    /// Events kept.
    pub events_max: usize,
    /// `event_bytes` summed over the events kept.
    pub bytes_max: usize,
}

/// What appending an event did besides appending it (for counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// An earlier typing event from the same user was replaced.
    pub coalesced: bool,
    /// Oldest events dropped for the buffer's bounds.
    pub dropped: usize,
}

/// An event's weight in the byte bound: the text it carries (message text
/// and cid, UI state and tab name, a contact's name) plus a fixed
/// overhead. An approximation of its memory and of its JSON.
pub fn event_bytes(kind: &EventKind) -> usize {
    let text = match kind {
        EventKind::Message(m) => m.text.len() + m.cid.as_ref().map_or(0, |c| c.len()),
        EventKind::Ui { state, tab } => state.len() + tab.len(),
        EventKind::Roster { user, .. } => user.name.len(),
        EventKind::Presence { .. } | EventKind::Typing { .. } | EventKind::Read { .. } => 0,
    };
    limits::EVENT_BYTES_OVERHEAD + text
}

/// One attached page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tab {
    /// The tab's credential.
    pub sid: Sid,
    /// The tab's name (the client's, or one the server made up).
    pub name: Arc<str>,
    /// Holding a poll or idle; each state owns the one timer armed for it.
    state: TabState,
    /// Last time the tab made any call (picks the tab to detach when a
    /// session has too many).
    pub last_seen_ms: u64,
}

/// What a tab is doing, with the deadline that ends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TabState {
    /// A poll is held open (`TimerKey::Poll` armed at its deadline).
    Polling(HeldPoll),
    /// No poll outstanding: the tab is detached at `deadline_ms` unless one
    /// comes (`TimerKey::TabIdle` armed).
    Idle {
        /// When the tab times out.
        deadline_ms: u64,
    },
}

impl TabState {
    /// The timer this state has armed.
    fn timer(&self, sid: Sid) -> (u64, TimerKey) {
        match self {
            TabState::Polling(poll) => (poll.deadline_ms, TimerKey::Poll(sid)),
            TabState::Idle { deadline_ms } => (*deadline_ms, TimerKey::TabIdle(sid)),
        }
    }
}

/// A poll being held open.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldPoll {
    /// Where the answer goes.
    pub reply: ReplyTo,
    /// The last seq the tab saw.
    pub since: u64,
    /// When the poll ends with `events: []`.
    pub deadline_ms: u64,
}

impl Tab {
    /// A new tab, idle until `idle_at_ms`; arms its idle timer.
    pub fn attach(
        sid: Sid,
        name: Arc<str>,
        now_ms: u64,
        idle_at_ms: u64,
        timers: &mut Timers,
    ) -> Tab {
        let state = TabState::Idle {
            deadline_ms: idle_at_ms,
        };
        let (at, key) = state.timer(sid);
        timers.arm(at, key);
        Tab {
            sid,
            name,
            state,
            last_seen_ms: now_ms,
        }
    }

    /// What the tab is doing.
    pub fn state(&self) -> &TabState {
        &self.state
    }

    /// Whether a poll is held.
    pub fn is_polling(&self) -> bool {
        matches!(self.state, TabState::Polling(_))
    }

    /// Whether this tab holds the poll waiting at `reply`.
    pub fn holds_poll(&self, reply: crate::model::ReplyTo) -> bool {
        matches!(&self.state, TabState::Polling(p) if p.reply == reply)
    }

    /// The timer this tab's state has armed: `(deadline_ms, key)`.
    pub fn armed(&self) -> (u64, TimerKey) {
        self.state.timer(self.sid)
    }

    /// Moves the tab to `state`: disarms the old state's timer (a no-op if
    /// it fired) and arms the new one. Returns the old state; a poll it
    /// held is the caller's to answer.
    pub fn enter(&mut self, state: TabState, timers: &mut Timers) -> TabState {
        let (at, key) = self.state.timer(self.sid);
        timers.disarm(at, key);
        let (at, key) = state.timer(self.sid);
        timers.arm(at, key);
        std::mem::replace(&mut self.state, state)
    }

    /// The tab goes: disarms its timer. Returns the poll it held, for the
    /// caller to answer.
    pub fn detach(self, timers: &mut Timers) -> Option<HeldPoll> {
        let (at, key) = self.state.timer(self.sid);
        timers.disarm(at, key);
        match self.state {
            TabState::Polling(poll) => Some(poll),
            TabState::Idle { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TypingState;

    fn typing(user: UserId) -> EventKind {
        EventKind::Typing {
            user,
            state: TypingState::Typing,
        }
    }

    #[test]
    fn buffer_answers_since_and_resets_when_too_far_behind() {
        let mut s = LiveSession::loaded(1, 1, Arc::from("alice"), Vec::new(), None, Vec::new());
        let mut timers = Timers::default();
        let mut out = Vec::new();
        for u in 1..=5 {
            let bounds = BufferBounds {
                events_max: 3,
                bytes_max: usize::MAX,
            };
            s.push_event(typing(u), bounds, 0, &mut timers, &mut out);
        }
        assert_eq!(s.seq, 5);
        let seqs = |r: Response| match r {
            Response::Events { events, .. } => events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(seqs(s.answer_since(5)), Vec::<u64>::new());
        assert_eq!(seqs(s.answer_since(4)), vec![5]);
        assert_eq!(seqs(s.answer_since(2)), vec![3, 4, 5]);
        assert_eq!(s.answer_since(1), Response::Reset { seq: 5 });
        assert_eq!(s.answer_since(0), Response::Reset { seq: 5 });
    }
}
