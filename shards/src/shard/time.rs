//! Time: each tick fires the timers due, at most `TIMERS_PER_TICK_MAX`
//! (the rest fire on the next tick, so one tick never monopolises the
//! executor), each handed to the part that armed it; then, when due, the
//! presence digest goes out (`presence`), roster-change waits past
//! their deadline are answered (`roster`), and traces past their time
//! bound are forgotten (`crate::trace`). Those deadlines are the
//! shard's own (`next_digest_ms`, each wait's), not entries in `Timers`,
//! whose size stays bounded by tabs and sessions.
//!
//! Invariant: owners disarm their timers when they go or re-arm, so a
//! popped timer finds its owner and the owner's slot names exactly that
//! deadline. A timer that does not (a stale one: an owner dropped half
//! way, say by supervision after a panic) is counted in
//! `Stats::stale_timers` and skipped: time never takes the shard down.

use super::sessions::Ending;
use super::{Output, Shard};
use crate::limits;
use crate::timers::TimerKey;

impl Shard {
    /// Fires due timers, then sends the presence digest if it is due and
    /// expires roster-change waits past their deadline.
    pub(super) fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        self.fire_timers(now, out);
        self.digest_if_due(now, out);
        self.expire_roster_waits(now, out);
        self.traced.expire(now);
    }

    fn fire_timers(&mut self, now: u64, out: &mut Vec<Output>) {
        for _ in 0..limits::TIMERS_PER_TICK_MAX {
            let Some((at, key)) = self.timers.pop_due(now) else {
                return;
            };
            if !self.owner_armed(at, key) {
                self.stats.stale_timers += 1;
                continue;
            }
            // The timer is popped: a panic from here on leaves its owner
            // without it, so supervision drops that user.
            self.step(key.user(), |shard| match key {
                TimerKey::Poll(sid) => shard.poll_timed_out(now, sid, out),
                TimerKey::TabIdle(sid) => shard.tab_timed_out(now, sid, out),
                TimerKey::Grace(user) => {
                    if let Some(session) = shard.sessions.live_mut(user) {
                        session.grace.disarm(&mut shard.timers);
                        shard.end_session(now, user, Ending::GraceOver, out);
                    }
                }
                TimerKey::Refresh(user) => shard.refresh_due(now, user, out),
            });
        }
    }

    /// Whether the owner of `key` is there and its slot is armed for
    /// exactly `at` (and, for a tab, its state is the one that timer is
    /// for; grace only while tabless).
    fn owner_armed(&self, at: u64, key: TimerKey) -> bool {
        let Some(session) = self.sessions.live(key.user()) else {
            return false;
        };
        match key {
            TimerKey::Poll(sid) | TimerKey::TabIdle(sid) => session
                .tab_index(sid)
                .is_some_and(|i| session.tabs[i].armed() == (at, key)),
            TimerKey::Grace(_) => session.grace.at_ms() == Some(at) && session.tabs.is_empty(),
            TimerKey::Refresh(_) => session.refresh.at_ms() == Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Sid;
    use crate::timers::TimerKey;
    use crate::{Config, Input, Shard};

    #[test]
    fn a_timer_without_its_owner_is_counted_and_skipped_not_a_panic() {
        let mut shard = Shard::new(Config::new(0, 1));
        let sid = Sid { user: 1, secret: 7 };
        for key in [
            TimerKey::Poll(sid),
            TimerKey::TabIdle(sid),
            TimerKey::Grace(1),
            TimerKey::Refresh(1),
        ] {
            shard.timers.arm(5, key);
        }
        let mut out = Vec::new();
        shard.handle(10, Input::Tick, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(shard.stats().stale_timers, 4);
        assert_eq!(shard.timer_count(), 0);
    }
}
