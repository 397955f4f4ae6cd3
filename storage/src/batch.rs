//! A db thread's batch, the part both backends share: draining the queue
//! into a batch ([`next_batch`]) and sorting that batch by what each
//! envelope needs ([`triage`]).
//!
//! The triage answers at once what needs no database: a job picked up
//! after its deadline (`TimedOut`, counted, and logged once per batch by
//! [`watch::log_late_pickup`]) and a write whose
//! sizes are over the [`limits`] (`Backend`, counted and logged). What is
//! left comes back sorted: reads, writes (sizes checked), directory
//! reloads and token lookups. Reloads and lookups keep their deadline:
//! what a late one gets is the backend's decision (the embedded backend
//! times out a late reload; MySQL answers reloads at once and times out a
//! late token lookup).
//!
//! Invariant: every envelope of the batch is in exactly one of the four
//! lists or has been answered, exactly once.

use crate::watch::{self, Queued, Watch};
use crate::{limits, Counters, Envelope, ReloadResult, TokenLookupResult, Work};
use futures_channel::oneshot;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchboard_shards::model::{StorageError, StorageJob, StorageResult};

/// Fills the empty `batch` with a db thread's next work: waits for one
/// envelope (waking every `DB_IDLE_WAIT_MS` to notice `stop`, and calling
/// `idle` each time it wakes without one), then takes
/// whatever else is queued, up to `max`, without waiting. Returns false
/// when the thread should exit: the queue closed, or `stop` is set and
/// nothing is left to drain.
pub(crate) fn next_batch(
    queue: &crossbeam_channel::Receiver<Envelope>,
    stop: &AtomicBool,
    batch: &mut Vec<Envelope>,
    max: usize,
    idle: &mut dyn FnMut(),
) -> bool {
    use crossbeam_channel::RecvTimeoutError;
    debug_assert!(batch.is_empty());
    let wait = Duration::from_millis(limits::DB_IDLE_WAIT_MS);
    let first = loop {
        if stop.load(Ordering::Acquire) {
            // Stopping: finish what is queued, then exit.
            match queue.try_recv() {
                Ok(envelope) => break envelope,
                Err(_) => return false,
            }
        }
        match queue.recv_timeout(wait) {
            Ok(envelope) => break envelope,
            Err(RecvTimeoutError::Timeout) => idle(),
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    };
    batch.push(first);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(envelope) => batch.push(envelope),
            Err(_) => break,
        }
    }
    true
}

/// Whether an envelope was picked up before its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pickup {
    /// At or before the deadline: the work may run.
    InTime,
    /// After the deadline, by this much: answered `TimedOut`.
    Late(Duration),
}

impl Pickup {
    /// Whether work due at `deadline` and picked up at `now` is late.
    pub(crate) fn at(now: Instant, deadline: Instant) -> Pickup {
        match now.checked_duration_since(deadline) {
            Some(late) if !late.is_zero() => Pickup::Late(late),
            _ => Pickup::InTime,
        }
    }
}

/// A job in time, with the channel its answer goes to and its deadline.
pub(crate) struct Reply {
    /// The job.
    pub(crate) job: StorageJob,
    /// Where its one answer goes.
    pub(crate) reply: oneshot::Sender<StorageResult>,
    /// When its waiter gives up on it.
    pub(crate) deadline: Instant,
    /// When it was queued and behind how many jobs.
    pub(crate) queued: Queued,
}

/// A token lookup, not yet answered.
pub(crate) struct TokenReply {
    /// The token as the client sent it.
    pub(crate) token: String,
    /// Where its one answer goes.
    pub(crate) reply: oneshot::Sender<TokenLookupResult>,
    /// When its waiter gives up on it.
    pub(crate) deadline: Instant,
    /// When it was queued and behind how many jobs.
    pub(crate) queued: Queued,
}

/// A directory reload, not yet answered.
pub(crate) struct ReloadReply {
    /// Where its one answer goes.
    pub(crate) reply: oneshot::Sender<ReloadResult>,
    /// When its waiter gives up on it.
    pub(crate) deadline: Instant,
}

/// A batch after [`triage`]: what is left to run, by kind, each list in
/// the order of the queue.
#[derive(Default)]
pub(crate) struct Sorted {
    /// Read jobs picked up in time.
    pub(crate) reads: Vec<Reply>,
    /// Write jobs picked up in time, with sizes within the limits.
    pub(crate) writes: Vec<Reply>,
    /// Directory reloads, late or not.
    pub(crate) reloads: Vec<ReloadReply>,
    /// Token lookups, late or not.
    pub(crate) tokens: Vec<TokenReply>,
}

/// Who is triaging a batch, for the line of its late jobs.
pub(crate) struct Triage<'a> {
    /// The db thread's watch (its name, and whether the batch was
    /// counted late).
    pub(crate) watch: &'a Watch,
    /// The store's counters.
    pub(crate) counters: &'a Counters,
}

/// Empties `batch` into [`Sorted`], answering late jobs `TimedOut` and
/// oversized writes `Backend` on the way (see the module documentation).
/// `now` is when the batch was picked up; the late jobs of the batch get
/// one line ([`watch::log_late_pickup`]).
pub(crate) fn triage(batch: &mut Vec<Envelope>, now: Instant, who: &Triage<'_>) -> Sorted {
    let counters = who.counters;
    let mut sorted = Sorted::default();
    let mut late_jobs = Vec::new();
    let mut latest = Duration::ZERO;
    for Envelope {
        work,
        deadline,
        queued,
    } in batch.drain(..)
    {
        match work {
            Work::ReloadDirectory { reply } => sorted.reloads.push(ReloadReply { reply, deadline }),
            Work::LookupToken { token, reply } => sorted.tokens.push(TokenReply {
                token,
                reply,
                deadline,
                queued,
            }),
            Work::Job { job, reply } => {
                if let Pickup::Late(late) = Pickup::at(now, deadline) {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(StorageError::TimedOut));
                    latest = latest.max(late);
                    late_jobs.push((job, queued));
                } else if !is_write(&job) {
                    sorted.reads.push(Reply {
                        job,
                        reply,
                        deadline,
                        queued,
                    });
                } else if let Err(e) = check_sizes(&job) {
                    fail(counters, &job, reply, &e);
                } else {
                    sorted.writes.push(Reply {
                        job,
                        reply,
                        deadline,
                        queued,
                    });
                }
            }
        }
    }
    if !late_jobs.is_empty() {
        let jobs: Vec<&StorageJob> = late_jobs.iter().map(|(j, _)| j).collect();
        let queued: Vec<Queued> = late_jobs.iter().map(|(_, q)| *q).collect();
        watch::log_late_pickup(who.watch, &jobs, &queued, latest, now, counters);
    }
    sorted
}

/// Answers `TimedOut` (counted) each of `writes` whose deadline has
/// passed at `now`, and returns the others in order. Called by each
/// backend at its last deadline check before the writes run (embedded:
/// holding redb's write lock). Not logged here: the batch is then past
/// its earliest deadline, so its watch logs it once, with what it waited
/// for ([`watch`]).
pub(crate) fn time_out_late(writes: Vec<Reply>, now: Instant, counters: &Counters) -> Vec<Reply> {
    let mut in_time = Vec::with_capacity(writes.len());
    for w in writes {
        match Pickup::at(now, w.deadline) {
            Pickup::InTime => in_time.push(w),
            Pickup::Late(_) => {
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                let _ = w.reply.send(Err(StorageError::TimedOut));
            }
        }
    }
    in_time
}

/// Answers a job `Backend(what)`, counts it and logs it once.
pub(crate) fn fail(
    counters: &Counters,
    job: &StorageJob,
    reply: oneshot::Sender<StorageResult>,
    what: &str,
) {
    counters.failed.fetch_add(1, Ordering::Relaxed);
    let user = job.user();
    log::error!(user; "storage: {} for user {user} failed: {what}", job.name());
    let _ = reply.send(Err(StorageError::Backend(what.to_string())));
}

/// Whether a job changes stored state (and so runs in the batch's write
/// transaction).
pub(crate) fn is_write(job: &StorageJob) -> bool {
    match job {
        StorageJob::StoreMessage { .. }
        | StorageJob::MarkRead { .. }
        | StorageJob::SaveUi { .. } => true,
        StorageJob::LoadSession { .. }
        | StorageJob::LoadRoster { .. }
        | StorageJob::History { .. } => false,
    }
}

/// Sizes `io` already checked; over them is a caller bug, refused here
/// rather than stored (see [`limits`]).
pub(crate) fn check_sizes(job: &StorageJob) -> Result<(), String> {
    let over = |what: &str, len: usize, max: usize| {
        if len > max {
            Err(format!("{what} of {len} bytes is over the limit of {max}"))
        } else {
            Ok(())
        }
    };
    match job {
        StorageJob::StoreMessage { text, cid, .. } => {
            over("text", text.len(), limits::MESSAGE_TEXT_BYTES_MAX)?;
            over(
                "cid",
                cid.as_ref().map_or(0, |c| c.len()),
                limits::CID_BYTES_MAX,
            )
        }
        StorageJob::SaveUi { state, .. } => {
            over("ui state", state.len(), limits::UI_STATE_BYTES_MAX)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// An envelope for `job`, due `due_ms` after `now` (negative: overdue).
    fn envelope(
        job: StorageJob,
        now: Instant,
        due_ms: i64,
    ) -> (Envelope, oneshot::Receiver<StorageResult>) {
        let (reply, rx) = oneshot::channel();
        let deadline = if due_ms >= 0 {
            now + Duration::from_millis(due_ms as u64)
        } else {
            now - Duration::from_millis(due_ms.unsigned_abs())
        };
        let work = Work::Job { job, reply };
        let queued = Queued { at: now, behind: 0 };
        (
            Envelope {
                work,
                deadline,
                queued,
            },
            rx,
        )
    }

    fn send(text_bytes: usize) -> StorageJob {
        StorageJob::StoreMessage {
            from: 1,
            to: 2,
            text: Arc::from("x".repeat(text_bytes)),
            cid: None,
            ts: 0,
        }
    }

    /// What the triage made of one job: which list it went to, or the
    /// answer it got at once.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Read,
        Write,
        Answered(StorageResult),
    }

    fn check(job: StorageJob, due_ms: i64, expected: Outcome) {
        let now = Instant::now();
        let counters = Counters::default();
        let (env, mut rx) = envelope(job, now, due_ms);
        let mut batch = vec![env];
        let watch = Watch::new("db-0".into());
        let who = Triage {
            watch: &watch,
            counters: &counters,
        };
        let sorted = triage(&mut batch, now, &who);
        assert!(batch.is_empty(), "the batch is drained");
        let got = match (sorted.reads.len(), sorted.writes.len()) {
            (1, 0) => Outcome::Read,
            (0, 1) => Outcome::Write,
            (0, 0) => Outcome::Answered(rx.try_recv().unwrap().expect("answered")),
            other => panic!("one job in two lists: {other:?}"),
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn triage_sorts_each_job_or_answers_it_once() {
        let read = StorageJob::LoadRoster { user: 1 };
        let over = limits::MESSAGE_TEXT_BYTES_MAX + 1;
        let big = format!(
            "text of {over} bytes is over the limit of {}",
            limits::MESSAGE_TEXT_BYTES_MAX
        );
        check(read.clone(), 10, Outcome::Read);
        check(read.clone(), 0, Outcome::Read); // due exactly now: in time
        check(read, -1, Outcome::Answered(Err(StorageError::TimedOut)));
        check(send(1), 10, Outcome::Write);
        check(send(limits::MESSAGE_TEXT_BYTES_MAX), 10, Outcome::Write);
        check(send(1), -1, Outcome::Answered(Err(StorageError::TimedOut)));
        check(
            send(over),
            10,
            Outcome::Answered(Err(StorageError::Backend(big))),
        );
    }

    #[test]
    fn pickup_is_late_only_after_the_deadline() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(Pickup::at(now, now + ms(1)), Pickup::InTime);
        assert_eq!(Pickup::at(now, now), Pickup::InTime);
        assert_eq!(Pickup::at(now + ms(3), now), Pickup::Late(ms(3)));
    }
}
