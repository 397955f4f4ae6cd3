//! Storage jobs in flight: each is registered with what its result is for,
//! bounded by `JOBS_IN_FLIGHT_MAX` (over it the request is answered
//! `unavailable`), and its result is routed to the part that asked.
//! Invariant: a job's result is acted on at most once; a result whose job
//! was forgotten (its session ended) is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::roster::Refresh;
use super::{fail, reply, Output, Shard};
use crate::doubt::Answer;
use crate::limits;
use crate::model::{
    ErrorCode, ReplyTo, Response, StorageJob, StorageOutput, StorageResult, UserId,
};

/// What a storage job in flight is for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Pending {
    /// Loading `user`'s session (the session is `Loading` meanwhile).
    LoadSession { user: UserId },
    /// Re-reading `user`'s roster, for the reason `why`.
    Refresh { user: UserId, why: Refresh },
    /// A job whose result answers the request waiting at `to`.
    Reply { to: ReplyTo, job: ReplyJob },
}

/// A job a request waits on, with what the answer needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum ReplyJob {
    /// The roster re-read that starts an admin `roster-changed`.
    RosterChanged { user: UserId },
    /// A try of a `/send` (see `crate::doubt`).
    Send(SendTry),
    /// `/read` by `user` of the conversation with `with`.
    Read { user: UserId, with: UserId },
    /// `/history` of `user`.
    History { user: UserId },
    /// `/ui` from `user`'s tab `tab`: `state` goes to every tab once saved.
    SaveUi {
        user: UserId,
        tab: Arc<str>,
        state: Arc<str>,
    },
}

/// One try of a `/send`: whose, with the client's `cid` if it gave one,
/// and its submit time (the `ts` the message is stored with).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SendTry {
    pub(super) user: UserId,
    pub(super) cid: Option<Arc<str>>,
    pub(super) ts_ms: u64,
}

/// Storage jobs in flight, by job number.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Jobs {
    /// What each job in flight is for.
    in_flight: HashMap<u64, Pending>,
    /// The last job number given out (numbers are never reused).
    last: u64,
}

impl Jobs {
    /// Registers a job; `None` when `max` (`JOBS_IN_FLIGHT_MAX`, or a
    /// test's lower bound) are in flight.
    fn start(&mut self, pending: Pending, max: usize) -> Option<u64> {
        if self.in_flight.len() >= max {
            return None;
        }
        self.last += 1;
        self.in_flight.insert(self.last, pending);
        Some(self.last)
    }

    /// Takes a finished job's purpose; `None` if it was forgotten.
    fn finish(&mut self, job: u64) -> Option<Pending> {
        self.in_flight.remove(&job)
    }

    /// Forgets a job: its result will be dropped.
    pub(super) fn forget(&mut self, job: u64) {
        self.in_flight.remove(&job);
    }

    /// What job `job` in flight is for, if it is in flight.
    pub(super) fn pending(&self, job: u64) -> Option<&Pending> {
        self.in_flight.get(&job)
    }

    /// The user job `job` in flight is for, if it is in flight.
    pub(super) fn user_of(&self, job: u64) -> Option<UserId> {
        Some(match self.in_flight.get(&job)? {
            Pending::LoadSession { user } | Pending::Refresh { user, .. } => *user,
            Pending::Reply { job, .. } => match job {
                ReplyJob::Send(SendTry { user, .. }) => *user,
                ReplyJob::RosterChanged { user }
                | ReplyJob::Read { user, .. }
                | ReplyJob::History { user }
                | ReplyJob::SaveUi { user, .. } => *user,
            },
        })
    }

    /// Forgets every session load of `user` (their results will be
    /// dropped); returns how many.
    pub(super) fn forget_loads_of(&mut self, user: UserId) -> usize {
        let before = self.in_flight.len();
        self.in_flight
            .retain(|_, p| !matches!(p, Pending::LoadSession { user: u } if *u == user));
        before - self.in_flight.len()
    }

    /// For each user with a roster read in flight (a re-read, or the read
    /// that starts a `roster-changed`), the newest such job. Session loads
    /// are not in it: a loading session notes changes itself.
    pub(super) fn roster_reads(&self) -> HashMap<UserId, u64> {
        let mut newest = HashMap::new();
        for (&job, pending) in &self.in_flight {
            let user = match pending {
                Pending::Refresh { user, .. }
                | Pending::Reply {
                    job: ReplyJob::RosterChanged { user },
                    ..
                } => *user,
                _ => continue,
            };
            let n = newest.entry(user).or_insert(job);
            *n = (*n).max(job);
        }
        newest
    }

    /// Forgets every job in flight (their results will not come: they
    /// went to a process that handed over). Numbers are not reused.
    pub(super) fn forget_all(&mut self) {
        self.in_flight.clear();
    }

    /// Jobs in flight.
    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }
}

impl Shard {
    /// Registers a storage job, counting it when shed.
    pub(super) fn job(&mut self, pending: Pending) -> Option<u64> {
        let job = self.jobs.start(pending, self.jobs_in_flight_max());
        if job.is_none() {
            self.stats.shed_jobs += 1;
        }
        job
    }

    /// `JOBS_IN_FLIGHT_MAX`, or the test-only lower bound
    /// `Config::jobs_in_flight_max` in builds with `fault-injection`.
    fn jobs_in_flight_max(&self) -> usize {
        #[cfg(feature = "fault-injection")]
        if let Some(max) = self.config.jobs_in_flight_max {
            return max.min(limits::JOBS_IN_FLIGHT_MAX);
        }
        limits::JOBS_IN_FLIGHT_MAX
    }

    /// Asks storage for `request` on behalf of the request waiting at `to`;
    /// answers `unavailable` when too many jobs are in flight. Returns
    /// whether the job went out.
    pub(super) fn ask_storage(
        &mut self,
        to: ReplyTo,
        job: ReplyJob,
        request: StorageJob,
        out: &mut Vec<Output>,
    ) -> bool {
        match self.job(Pending::Reply { to, job }) {
            Some(job) => {
                out.push(Output::Storage { job, request });
                true
            }
            None => {
                fail(out, to, ErrorCode::Unavailable, "too many storage jobs");
                false
            }
        }
    }

    /// A storage job finished: its result goes to the part that asked.
    pub(super) fn storage_done(
        &mut self,
        now: u64,
        job: u64,
        result: StorageResult,
        out: &mut Vec<Output>,
    ) {
        let Some(pending) = self.jobs.finish(job) else {
            return; // its session was ended meanwhile
        };
        #[cfg(feature = "fault-injection")]
        if let (
            Pending::Reply {
                job: ReplyJob::Send(send),
                ..
            },
            Ok(StorageOutput::Stored {
                duplicate: false, ..
            }),
        ) = (&pending, &result)
        {
            if Some(send.user) == self.config.panic_stored_user {
                panic!(
                    "fault injection: a stored send of user {} panics",
                    send.user
                );
            }
        }
        if result.is_err() {
            self.stats.storage_failures += 1;
        }
        match pending {
            Pending::LoadSession { user } => self.session_loaded(now, user, job, result, out),
            Pending::Refresh { user, why } => {
                self.roster_refreshed(now, user, job, why, result, out)
            }
            Pending::Reply { to, job: purpose } => match result {
                Ok(output) => self.job_answered(now, to, job, purpose, output, out),
                Err(e) => {
                    if let ReplyJob::Send(send) = purpose {
                        self.send_answered(now, send, Answer::Failed, out);
                    }
                    fail(out, to, ErrorCode::Unavailable, e.client_text());
                }
            },
        }
    }

    /// Job `job`, which a request waited on, succeeded: finish the
    /// request.
    fn job_answered(
        &mut self,
        now: u64,
        to: ReplyTo,
        job: u64,
        purpose: ReplyJob,
        output: StorageOutput,
        out: &mut Vec<Output>,
    ) {
        match (purpose, output) {
            (ReplyJob::RosterChanged { user }, StorageOutput::Roster { friends }) => {
                self.roster_change_read(now, to, user, job, friends, out)
            }
            (ReplyJob::Send(send), StorageOutput::Stored { message, duplicate }) => {
                self.message_stored(now, to, send, message, duplicate, out)
            }
            (
                ReplyJob::Read { user, with },
                StorageOutput::ReadMarked {
                    valid,
                    upto,
                    unread,
                },
            ) => {
                if !valid {
                    return fail(
                        out,
                        to,
                        ErrorCode::BadRequest,
                        "upto is not a message of this conversation",
                    );
                }
                self.mark_read(now, user, with, upto, unread, out);
                reply(out, to, Response::Done);
            }
            (
                ReplyJob::History { .. },
                StorageOutput::History {
                    valid,
                    messages,
                    more,
                    seen,
                },
            ) => {
                if valid {
                    reply(
                        out,
                        to,
                        Response::History {
                            messages,
                            more,
                            seen,
                        },
                    );
                } else {
                    fail(
                        out,
                        to,
                        ErrorCode::BadRequest,
                        "before is not a message of this conversation",
                    );
                }
            }
            (ReplyJob::SaveUi { user, tab, state }, StorageOutput::Saved) => {
                self.ui_saved(now, user, tab, state, out);
                reply(out, to, Response::Done);
            }
            (job, output) => panic!("storage answered {output:?} to {job:?}"),
        }
    }
}
