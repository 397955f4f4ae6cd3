//! One user's live state on their home shard: the tabs attached to it, the
//! event buffer every tab polls from, presence, the cached roster, UI state
//! and unread counts. Everything here is plain data (serialisable, so a
//! deploy can hand sessions to a new process); the decisions are made in
//! [`crate::shard`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Event, EventKind, ReplyTo, Response, Sid, Status, UserId};
use crate::Output;

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

/// One attached page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tab {
    /// The tab's credential.
    pub sid: Sid,
    /// The tab's name (the client's, or one the server made up).
    pub name: Arc<str>,
    /// The poll held open for this tab, if any.
    pub poll: Option<HeldPoll>,
    /// When the tab times out for having no poll outstanding; `None` while
    /// a poll is held.
    pub idle_deadline_ms: Option<u64>,
    /// Last time the tab made any call (picks the tab to detach when a
    /// session has too many).
    pub last_seen_ms: u64,
}

/// Connects that arrived while the session was loading from storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitingConnect {
    /// Where the answer goes.
    pub reply: ReplyTo,
    /// The tab name asked for.
    pub tab: Option<String>,
    /// The sid drawn for the tab.
    pub sid: Sid,
}

/// A user's session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// Whose session this is.
    pub user: UserId,
    /// Display name from the directory.
    pub name: Arc<str>,
    /// `Some(job)` while the `LoadSession` job `job` is in flight; then the
    /// session is not live: it has no tabs and takes no events.
    pub loading: Option<u64>,
    /// Connects waiting for the load.
    pub waiting: Vec<WaitingConnect>,
    /// `Online` or `Away` while live.
    pub status: Status,
    /// Attached tabs.
    pub tabs: Vec<Tab>,
    /// Seq of the latest event (0 before the first).
    pub seq: u64,
    /// The newest events, oldest first, at most `events_buffered_max`.
    pub events: VecDeque<Arc<Event>>,
    /// Friends (id → name), as last read from the directory.
    pub roster: BTreeMap<UserId, Arc<str>>,
    /// Persisted UI state (JSON object text).
    pub ui: Option<Arc<str>>,
    /// Friend id → unread messages from them (non-zero entries only).
    pub unread: BTreeMap<UserId, u64>,
    /// When the session ends if no tab comes back; armed while tabless.
    pub grace_deadline_ms: Option<u64>,
    /// When the roster is re-read next.
    pub refresh_deadline_ms: Option<u64>,
    /// Counter for server-made tab names.
    pub tabs_named: u64,
}

impl Session {
    /// A session waiting for its `LoadSession` job.
    pub fn loading(user: UserId, job: u64) -> Session {
        Session {
            user,
            name: Arc::from(""),
            loading: Some(job),
            waiting: Vec::new(),
            status: Status::Online,
            tabs: Vec::new(),
            seq: 0,
            events: VecDeque::new(),
            roster: BTreeMap::new(),
            ui: None,
            unread: BTreeMap::new(),
            grace_deadline_ms: None,
            refresh_deadline_ms: None,
            tabs_named: 0,
        }
    }

    /// Whether the session is loaded (it may be tabless, in grace).
    pub fn is_live(&self) -> bool {
        self.loading.is_none()
    }

    /// The tab holding `sid`.
    pub fn tab_index(&self, sid: Sid) -> Option<usize> {
        self.tabs.iter().position(|t| t.sid == sid)
    }

    /// Appends an event, drops the oldest beyond `buffered_max`, and answers
    /// every held poll (each with all events after its `since`). Returns
    /// the tabs whose poll ended, so the caller re-arms their idle timers.
    pub fn push_event(
        &mut self,
        kind: EventKind,
        buffered_max: usize,
        out: &mut Vec<Output>,
    ) -> Vec<(Sid, u64)> {
        self.seq += 1;
        self.events.push_back(Arc::new(Event {
            seq: self.seq,
            kind,
        }));
        while self.events.len() > buffered_max {
            self.events.pop_front();
        }
        let mut ended = Vec::new();
        for tab in &mut self.tabs {
            if let Some(poll) = tab.poll.take() {
                out.push(Output::Reply {
                    to: poll.reply,
                    response: events_after(&self.events, self.seq, poll.since),
                });
                ended.push((tab.sid, poll.deadline_ms));
            }
        }
        ended
    }

    /// Events after `since`, or `Reset` when the buffer no longer covers
    /// them. `since` must not exceed `seq`.
    pub fn answer_since(&self, since: u64) -> Response {
        events_after(&self.events, self.seq, since)
    }
}

fn events_after(events: &VecDeque<Arc<Event>>, seq: u64, since: u64) -> Response {
    debug_assert!(since <= seq);
    let missing = (seq - since) as usize;
    if missing > events.len() {
        return Response::Reset { seq };
    }
    let start = events.len() - missing;
    Response::Events {
        seq,
        events: events.iter().skip(start).cloned().collect(),
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
        let mut s = Session::loading(1, 0);
        s.loading = None;
        let mut out = Vec::new();
        for u in 1..=5 {
            s.push_event(typing(u), 3, &mut out);
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
