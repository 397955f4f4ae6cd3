//! Supervision support: what the engine needs to contain a panic inside
//! [`Shard::handle`] to the one user the input concerned. Before feeding
//! an input the engine asks [`Shard::user_of`] and [`Shard::unanswered`];
//! if `handle` panics it calls [`Shard::drop_user`] for that user, then
//! [`Shard::answer_after_panic`] for the request the input was to answer,
//! and carries on with the rest.
//!
//! A storage result answers a request the shard took out of its job table
//! before the panic, so the engine cannot see it: `unanswered` looks it up
//! first (with, for a send's try, its cid's state in doubt), and
//! `answer_after_panic` answers it `unavailable` and counts the try as
//! failed from that state — storage may have stored it, and the retry
//! delivers it (`crate::doubt`).
//!
//! `drop_user` trusts nothing of the user's state (the panic may have left
//! it half updated): it removes the session whatever its state, disarms
//! the user's timers by scanning the timer set for their keys rather than
//! through the session's slots, answers every held poll and waiting
//! connect, forgets the user's session loads and tells every shard the
//! user is offline. Jobs whose requests wait (sends, reads, history, UI,
//! roster re-reads) stay in flight: their results need no session, so
//! their callers are answered as usual. The session's cids in doubt are
//! kept by the shard (plain data, touched only by a send's answer, whose
//! cid `answer_after_panic` restores), so their retries still deliver.

use super::jobs::{Pending, SendTry};
use super::{fail, Input, Output, PeerMsg, Shard};
use crate::doubt::{Answer, Tries};
use crate::model::{ErrorCode, ReplyTo, Status, UserId};
use crate::session::{Session, TabState};

/// A request an input is to answer, looked up before the input is fed
/// (see [`Shard::unanswered`]).
#[derive(Clone, Debug)]
pub struct Unanswered {
    /// Where its answer goes.
    pub to: ReplyTo,
    /// For a send's storage result: the try, and its cid's state in doubt
    /// before the input (`None`: no entry).
    send: Option<(SendTry, Option<Tries>)>,
}

impl Shard {
    /// The request `input` is to answer, if any: a request's own, or,
    /// for a storage result, the request waiting on that job. Ask
    /// *before* feeding the input (`handle` takes the job out).
    pub fn unanswered(&self, input: &Input) -> Option<Unanswered> {
        match input {
            Input::Request { reply, .. } => Some(Unanswered {
                to: *reply,
                send: None,
            }),
            Input::Storage { job, .. } => match self.jobs.pending(*job)? {
                Pending::Reply { to, job } => {
                    let send = match job {
                        super::jobs::ReplyJob::Send(send) => {
                            let tries = send.cid.as_ref().and_then(|c| self.doubt_of(send.user, c));
                            Some((send.clone(), tries))
                        }
                        _ => None,
                    };
                    Some(Unanswered { to: *to, send })
                }
                Pending::LoadSession { .. } | Pending::Refresh { .. } => None,
            },
            Input::Peer(_) | Input::Tick | Input::Drain => None,
        }
    }

    /// Handling the input that was to answer `u` panicked (and its user
    /// was dropped): answers it `unavailable`, and, for a send's try,
    /// counts the try as failed from its cid's state before the input, so
    /// a retry delivers what storage may have stored.
    pub fn answer_after_panic(&mut self, u: Unanswered, out: &mut Vec<Output>) {
        fail(
            out,
            u.to,
            ErrorCode::Unavailable,
            "internal error: try again",
        );
        let Some((send, tries)) = u.send else {
            return;
        };
        let SendTry { user, cid, ts_ms } = send;
        let Some(cid) = cid else {
            return;
        };
        let mut tries = tries.unwrap_or_else(|| {
            let mut t = Tries::new(ts_ms);
            t.in_flight = 1;
            t
        });
        // Only a failure: the verdict is always to deliver nothing.
        let _ = tries.answered(Answer::Failed, |_| false);
        self.restore_doubt(user, cid, tries);
    }

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

    /// The user whose state the last input was changing when it panicked
    /// (`None` after an input that returned, or one that panicked outside
    /// any user's step). Steps are marked in the loops of inputs about
    /// many users: each timer fired, each event pushed (presence changes
    /// and digests), each session resynced or drained. For such an input
    /// `user_of` is `None`; the engine drops this user instead — a tick
    /// that popped a poll's timer and panicked would otherwise leave that
    /// tab polling with no timer, never answered.
    pub fn working_on(&self) -> Option<UserId> {
        self.working_on
    }

    /// Removes `user`'s session however it was left, so the rest of the
    /// shard goes on: held polls get `unknown_session` (the tabs connect
    /// again, loading a fresh session), waiting connects `unavailable`,
    /// the user's timers are disarmed, their session loads forgotten, and
    /// every shard hears they are offline. A user not homed here, or with
    /// no session, costs only the offline broadcast.
    pub fn drop_user(&mut self, now: u64, user: UserId, out: &mut Vec<Output>) {
        if self.config.home(user) != self.config.shard {
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
            Some(Session::Live(mut live)) => {
                for tab in &live.tabs {
                    if let TabState::Polling(poll) = tab.state() {
                        let message = "the session failed: connect again";
                        fail(out, poll.reply, ErrorCode::UnknownSession, message);
                    }
                }
                friends = live.friends();
                self.keep_doubts(user, live.in_doubt.take());
            }
        }
        let why = "session dropped after a panic";
        self.broadcast_presence_to(now, user, Status::Offline, why, &friends, out);
    }
}
