//! Polls: a tab either holds one poll open or waits idle for the next
//! (`TabState`). A poll is answered at once when there is news (or `wait`
//! is 0; such polls are rate-limited per user, `Kind::Poll`), else held until an event, its wait running out, a newer poll of
//! the same tab, a leave or a kick. A tab idle for the tab timeout is
//! detached.
//!
//! Invariant: a tab's one armed timer is the one its state names (`Poll`
//! while polling, `TabIdle` while idle); `Tab::enter` re-arms it.

use super::rates::rate_limited;
use super::sessions::Detach;
use super::{fail, note_if_traced, reply, Output, Shard};
use crate::limits;
use crate::model::{ErrorCode, ReplyTo, Response, Sid};
use crate::ratelimit::Kind;
use crate::session::{HeldPoll, TabState};
use crate::trace::Note;

impl Shard {
    /// `/poll`: events after `since`, now or when they come.
    pub(super) fn poll(
        &mut self,
        now: u64,
        to: ReplyTo,
        sid: Sid,
        since: u64,
        wait_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let Some((session, i)) = self.sessions.tab(now, sid, to, out) else {
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
        let answer = session.answer_since(since);
        let has_news = !matches!(&answer, Response::Events { events, .. } if events.is_empty());
        let answer_now = has_news || wait_ms == 0;
        // Only a poll answered at once costs a call from the bucket: a
        // loop of them is the flood (a held poll waits, one per tab).
        if answer_now
            && !session
                .buckets
                .take(&self.config.rate_limits, Kind::Poll, now)
        {
            self.stats.rate_limited += 1;
            let call = Kind::Poll.as_str();
            note_if_traced(&self.traced, now, sid.user, Note::RateLimited { call }, out);
            return rate_limited(out, to, Kind::Poll);
        }
        let next = if answer_now {
            // The poll ends now: the idle clock restarts.
            TabState::Idle {
                deadline_ms: now + self.config.tab_timeout_ms,
            }
        } else {
            TabState::Polling(HeldPoll {
                reply: to,
                since,
                deadline_ms: now + wait_ms.min(limits::POLL_WAIT_MS_MAX),
            })
        };
        // A newer poll of the same tab ends the older one.
        if let TabState::Polling(old) = session.tabs[i].enter(next, &mut self.timers) {
            let ended = Response::Events {
                seq: session.seq,
                events: Vec::new(),
            };
            reply(out, old.reply, ended);
        }
        if answer_now {
            reply(out, to, answer);
        } else {
            let note = Note::PollHeld { since, wait_ms };
            note_if_traced(&self.traced, now, sid.user, note, out);
        }
    }

    /// A held poll's wait ran out: it ends with no events and the tab goes
    /// idle. (`time` checked the tab is there and polling; a missing one is
    /// left alone rather than trusted.)
    /// `Request::EndPoll`: the held poll at `held` lost its client.
    pub(super) fn end_poll(&mut self, now: u64, sid: Sid, held: ReplyTo, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.live_mut(sid.user) else {
            return;
        };
        let Some(i) = session.tab_index(sid) else {
            return;
        };
        if !session.tabs[i].holds_poll(held) {
            return;
        }
        let idle = TabState::Idle {
            deadline_ms: now + self.config.tab_timeout_ms,
        };
        if let TabState::Polling(poll) = session.tabs[i].enter(idle, &mut self.timers) {
            self.stats.polls_abandoned += 1;
            let ended = Response::Events {
                seq: session.seq,
                events: Vec::new(),
            };
            reply(out, poll.reply, ended);
        }
    }

    pub(super) fn poll_timed_out(&mut self, now: u64, sid: Sid, out: &mut Vec<Output>) {
        #[cfg(feature = "fault-injection")]
        if Some(sid.user) == self.config.panic_timer_user {
            panic!(
                "fault injection: a poll of user {} running out panics",
                sid.user
            );
        }
        let Some(session) = self.sessions.live_mut(sid.user) else {
            return;
        };
        let Some(i) = session.tab_index(sid) else {
            return;
        };
        if !session.tabs[i].is_polling() {
            return;
        }
        let idle = TabState::Idle {
            deadline_ms: now + self.config.tab_timeout_ms,
        };
        if let TabState::Polling(poll) = session.tabs[i].enter(idle, &mut self.timers) {
            let ended = Response::Events {
                seq: session.seq,
                events: Vec::new(),
            };
            reply(out, poll.reply, ended);
        }
    }

    /// A tab went the tab timeout without a poll: it is detached.
    pub(super) fn tab_timed_out(&mut self, now: u64, sid: Sid, out: &mut Vec<Output>) {
        self.stats.tab_timeouts += 1;
        self.detach_tab(now, sid, Detach::TimedOut, out);
    }
}
