//! Draining: the server is stopping ([`Input::Drain`](super::Input)).
//! Every held poll is answered now with no events — the ordinary answer
//! of a poll whose wait ran out, so the client simply polls again (at
//! another server in a deploy, or at this one once restarted) — and from
//! then on no poll is held: a poll is answered at once, as if its `wait`
//! were 0. Everything else goes on as before: sends are still stored and
//! acknowledged, so nothing acknowledged is lost to the stop. Only roster
//! re-reads start no more, periodic or for a change (`roster.rs`): the
//! stop waits for the storage jobs in flight when it gets to them, not
//! for ones a peer's message would start later.
//!
//! Invariant: once draining, no tab is in `TabState::Polling`. A shard
//! leaves draining only by `Shard::resumed` (`handover.rs`: the process
//! taking over, or the old one after a failed hand-over); a stopped server
//! is started anew.

use serde::{Deserialize, Serialize};

use super::{reply, Output, Shard};
use crate::model::{Request, Response, UserId};
use crate::session::TabState;

/// Whether the shard holds polls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Drain {
    /// Serving: a poll with no news waits up to its `wait`.
    #[default]
    Serving,
    /// Stopping: no poll is held.
    Draining,
}

impl Drain {
    /// `request` as this shard serves it: while draining, a poll's wait is
    /// 0 (answered at once, news or not).
    pub(super) fn admit(self, request: Request) -> Request {
        match (self, request) {
            (Drain::Draining, Request::Poll { sid, since, .. }) => Request::Poll {
                sid,
                since,
                wait_ms: 0,
            },
            (_, request) => request,
        }
    }
}

impl Shard {
    /// Starts draining: answers every held poll with no events and holds
    /// no poll from now on. Idempotent.
    pub(super) fn drain(&mut self, now: u64, out: &mut Vec<Output>) {
        self.drain = Drain::Draining;
        let users: Vec<UserId> = self.sessions.live_ones().map(|s| s.user).collect();
        for user in users {
            self.step(user, |shard| {
                let session = shard.sessions.live_mut(user).expect("a live session");
                for tab in &mut session.tabs {
                    if !tab.is_polling() {
                        continue;
                    }
                    let idle = TabState::Idle {
                        deadline_ms: now + shard.config.tab_timeout_ms,
                    };
                    let TabState::Polling(poll) = tab.enter(idle, &mut shard.timers) else {
                        unreachable!("checked just above");
                    };
                    let ended = Response::Events {
                        seq: session.seq,
                        events: Vec::new(),
                    };
                    reply(out, poll.reply, ended);
                }
            });
        }
    }

    /// Whether the shard is draining (no poll is held).
    pub fn is_draining(&self) -> bool {
        self.drain == Drain::Draining
    }
}
