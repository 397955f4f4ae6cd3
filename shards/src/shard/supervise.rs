//! Supervision hooks for the engine: which user an input is about, and
//! dropping one user's session after handling one of their inputs failed
//! (a panic the engine caught), so one bad input costs one user's session
//! and never the shard.
//!
//! Invariant: after [`Shard::drop_user`] the user has no session here and
//! no timer of theirs is armed, whatever state the failed input left.

use super::sessions::Ending;
use super::{Input, Output, PeerMsg, Shard};
use crate::model::UserId;
use crate::timers::TimerKey;

impl Shard {
    /// The user whose session `input` is about, if one: a request's home
    /// user, a delivery's recipient. `None` for shard-wide inputs (ticks,
    /// storage results, presence and roster traffic, health).
    pub fn user_of(&self, input: &Input) -> Option<UserId> {
        match input {
            Input::Request { request, .. } => request.home_user(),
            Input::Peer(PeerMsg::Deliver { to, .. }) => Some(*to),
            Input::Peer(_) | Input::Storage { .. } | Input::Tick => None,
        }
    }

    /// Ends `user`'s session as a kick would (held polls answered
    /// `unknown_session`, waiting connects `unavailable`, friends told
    /// `offline`), then disarms any timer still naming the user: the
    /// failed input may have armed one its owner no longer knows about.
    pub fn drop_user(&mut self, now_ms: u64, user: UserId, out: &mut Vec<Output>) {
        self.end_session(now_ms, user, Ending::Failed, out);
        self.timers.disarm_where(|key| match key {
            TimerKey::Poll(sid) | TimerKey::TabIdle(sid) => sid.user == user,
            TimerKey::Grace(u) | TimerKey::Refresh(u) => *u == user,
        });
    }
}
