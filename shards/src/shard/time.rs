//! Time: each tick fires the timers due, at most `TIMERS_PER_TICK_MAX`
//! (the rest fire on the next tick, so one tick never monopolises the
//! executor), each handed to the part that armed it.
//!
//! Invariant: a timer popped here always finds its owner (owners disarm
//! their timers when they go), so a missing owner is a broken invariant
//! and panics.

use super::sessions::Ending;
use super::{Output, Shard};
use crate::limits;
use crate::timers::TimerKey;

impl Shard {
    /// Fires due timers.
    pub(super) fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        for _ in 0..limits::TIMERS_PER_TICK_MAX {
            let Some((_, key)) = self.timers.pop_due(now) else {
                return;
            };
            match key {
                TimerKey::Poll(sid) => self.poll_timed_out(now, sid, out),
                TimerKey::TabIdle(sid) => self.tab_timed_out(now, sid, out),
                TimerKey::Grace(user) => {
                    let session = self.sessions.live_mut(user).expect("grace timer's session");
                    session.grace.disarm(&mut self.timers);
                    self.end_session(now, user, Ending::GraceOver, out);
                }
                TimerKey::Refresh(user) => self.refresh_due(now, user, out),
            }
        }
    }
}
