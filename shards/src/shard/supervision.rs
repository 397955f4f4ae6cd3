//! Supervision support: what the engine needs to contain a panic inside
//! [`Shard::handle`] to the one user the input concerned. Before feeding
//! an input the engine asks [`Shard::user_of`]; if `handle` panics it
//! calls [`Shard::drop_user`] for that user and carries on with the rest.
//!
//! `drop_user` trusts nothing of the user's state (the panic may have left
//! it half updated): it removes the session whatever its state, disarms
//! the user's timers by scanning the timer set for their keys rather than
//! through the session's slots, answers every held poll and waiting
//! connect, forgets the user's session loads and tells every shard the
//! user is offline. Jobs whose requests wait (sends, reads, history, UI,
//! roster re-reads) stay in flight: their results need no session, so
//! their callers are answered as usual.

use super::{fail, Input, Output, PeerMsg, Shard};
use crate::model::{ErrorCode, Status, UserId};
use crate::routing::home_shard;
use crate::session::{Session, TabState};

impl Shard {
    /// The user whose state on this shard `input` is about, if one:
    /// a request's home user, a `Deliver`'s recipient, a storage result's
    /// user (looked up among the jobs in flight, so ask *before* feeding
    /// the input: `handle` takes the job out). `None` for inputs about
    /// many users (`Tick`, presence, roster acks, health): after a panic
    /// there the engine can only log it.
    pub fn user_of(&self, input: &Input) -> Option<UserId> {
        match input {
            Input::Request { request, .. } => request.home_user(),
            Input::Peer(PeerMsg::Deliver { to, .. }) => Some(*to),
            Input::Peer(_) | Input::Tick | Input::Drain => None,
            Input::Storage { job, .. } => self.jobs.user_of(*job),
        }
    }

    /// Removes `user`'s session however it was left, so the rest of the
    /// shard goes on: held polls get `unknown_session` (the tabs connect
    /// again, loading a fresh session), waiting connects `unavailable`,
    /// the user's timers are disarmed, their session loads forgotten, and
    /// every shard hears they are offline. A user not homed here, or with
    /// no session, costs only the offline broadcast.
    pub fn drop_user(&mut self, now: u64, user: UserId, out: &mut Vec<Output>) {
        if home_shard(user, self.config.shard_count) != self.config.shard {
            return;
        }
        self.stats.dropped_users += 1;
        self.timers.disarm_where(|key| key.user() == user);
        self.jobs.forget_loads_of(user);
        let mut friends = Vec::new();
        match self.sessions.remove(user) {
            None => {}
            Some(Session::Loading {
                waiting, rereads, ..
            }) => {
                for w in waiting {
                    let message = "the session failed while loading: connect again";
                    fail(out, w.reply, ErrorCode::Unavailable, message);
                }
                for part in rereads {
                    self.change_part_done(now, part, true, out);
                }
            }
            Some(Session::Live(live)) => {
                for tab in &live.tabs {
                    if let TabState::Polling(poll) = tab.state() {
                        let message = "the session failed: connect again";
                        fail(out, poll.reply, ErrorCode::UnknownSession, message);
                    }
                }
                friends = live.friends();
            }
        }
        self.broadcast_presence_to(now, user, Status::Offline, &friends, out);
    }
}
