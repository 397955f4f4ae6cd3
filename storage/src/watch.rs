//! Slow-path forensics for storage: what each db thread is doing now
//! ([`Watch`]), and the one log line that says where a late batch waited.
//!
//! Every envelope carries when it was submitted and how many jobs were
//! queued ahead of it ([`Queued`]). A db thread starts a watch of each
//! batch it runs ([`Watch::begin`]) and tells it each step it goes on to
//! wait for ([`Watch::step`]): a pool checkout and each MySQL statement
//! (with its kind and SQL), or the embedded store's read transaction, its
//! write lock, its writes, its write-ahead log append (`fdatasync`) and
//! its commit, or instead of those two a checkpoint (a durable commit). The `db-watch` thread
//! looks at every watch each `DB_WATCH_INTERVAL_MS` and logs a batch once
//! when it is past its earliest deadline, while it still waits; a batch
//! that ends late between two looks is logged by its own thread at its
//! end ([`Watch::end`]). Either way a late batch is logged exactly once,
//! at warn, naming its jobs and users (`user=` when it concerns one),
//! the db thread, what it waited for longest and how long, how far past
//! its deadline it is, and how long its oldest job waited in the queue
//! and how many jobs were ahead of it at submit. Jobs picked up after
//! their deadline never run; the triage logs them, one line per batch
//! ([`log_late_pickup`]). A batch counts once in `late_batches`, however
//! many of these lines it gets ([`Watch::count_late`]). The lines are not
//! rate-limited here: the engine's logger limits every warning call site
//! (5 lines per 10 s, then "(N more like this in the last S s)"), which
//! keeps the count of what it left out; a second limit here would drop
//! lines, and their count, before the logger saw them.
//!
//! A watch's state is behind a `Mutex` taken only by its db thread (a
//! few times per batch) and `db-watch`; a scrape reads only its
//! [`Watch::busy`] atomic. No executor ever takes the lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use switchboard_shards::model::{StorageJob, UserId};

use crate::{limits, Counters};

/// When an envelope was queued, and behind how many jobs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Queued {
    /// When it was submitted.
    pub(crate) at: Instant,
    /// Jobs already in the queue when it was submitted.
    pub(crate) behind: usize,
}

/// What a batch waits for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// A connection from the MySQL pool (a MySQL batch's first wait).
    Checkout,
    /// The answer to a MySQL statement: its kind (`commit`, `unread
    /// counters`, `friends query`, ...) and its text, on one line, cut
    /// by [`cut`] (values that quote users are never in it).
    Query(&'static str, String),
    /// The embedded store's read transaction (a batch's reads).
    Reads,
    /// redb's one write lock (another batch's commit holds it).
    WriteLock,
    /// The embedded store's writes, inside the write transaction.
    Writes,
    /// The embedded store's write-ahead log: the batch's record written
    /// and `fdatasync`ed.
    Wal,
    /// The embedded store's redb commit after the log append (no fsync).
    Commit,
    /// The embedded store's checkpoint: a durable redb commit (fsync)
    /// instead of a log append.
    Checkpoint,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Checkout => f.write_str("a pool connection (checkout)"),
            Waiting::Query(what, sql) => write!(f, "the {what} statement `{sql}`"),
            Waiting::Reads => f.write_str("its reads (a read transaction)"),
            Waiting::WriteLock => f.write_str("the write lock (another batch was committing)"),
            Waiting::Writes => f.write_str("its writes (in the write transaction)"),
            Waiting::Wal => f.write_str("the write-ahead log (its fdatasync)"),
            Waiting::Commit => f.write_str("the commit (after the log's fdatasync)"),
            Waiting::Checkpoint => f.write_str("a checkpoint (a durable commit, fsync)"),
        }
    }
}

/// One batch in progress.
struct Activity {
    /// Its jobs and users, e.g. `store_message ×3 for users 1, 2`.
    jobs: String,
    /// Its one user, when all its jobs are one user's (`user=`).
    user: Option<UserId>,
    /// The earliest deadline of its jobs.
    deadline: Instant,
    /// Its oldest job's time in the queue (submit to pickup) and the jobs
    /// ahead of that one at submit.
    queue: (Duration, usize),
    /// What it waits for now.
    waiting: Waiting,
    /// Since when it waits for that.
    since: Instant,
    /// The longest finished wait of the batch and what it was for (the
    /// statement that blocked is often done by the time a late batch is
    /// logged: a server-side limit interrupted it); `None` until the
    /// first wait ends.
    longest: Option<(Waiting, Duration)>,
    /// Whether its line was written (or counted, past the gate).
    reported: bool,
}

/// A db thread's state as `db-watch` sees it.
enum Doing {
    /// Waiting for work in the queue (nothing to watch).
    Idle,
    /// Running a batch.
    Batch(Activity),
}

/// What one db thread is doing now.
pub(crate) struct Watch {
    /// The thread's name (`db-N`).
    pub(crate) thread: String,
    /// The thread's state, changed by the thread, read by `db-watch`.
    slot: Mutex<Doing>,
    /// What a scrape sees without the lock: [`IDLE`], [`BUSY`] or
    /// [`CHECKOUT`].
    state: AtomicU8,
    /// Whether the current batch was counted in `late_batches` (by its
    /// thread or by `db-watch`); cleared by [`Watch::new_batch`].
    late_counted: AtomicBool,
}

/// [`Watch::busy`]: waiting for work.
pub(crate) const IDLE: u8 = 0;
/// [`Watch::busy`]: running a batch.
pub(crate) const BUSY: u8 = 1;
/// [`Watch::busy`]: running a batch, waiting for a pool connection.
pub(crate) const CHECKOUT: u8 = 2;

/// A batch about to run: its jobs, their earliest deadline, and how long
/// its oldest job queued (for [`Watch::begin`]).
pub(crate) struct BatchInfo<'a, I> {
    /// Its jobs (and how many token lookups besides).
    pub(crate) jobs: I,
    /// Token lookups in it.
    pub(crate) tokens: usize,
    /// The earliest deadline of its jobs.
    pub(crate) deadline: Instant,
    /// Each job's queueing, to find the oldest.
    pub(crate) queued: &'a [Queued],
    /// When it was picked up.
    pub(crate) picked_up: Instant,
}

impl Watch {
    pub(crate) fn new(thread: String) -> Watch {
        Watch {
            thread,
            slot: Mutex::new(Doing::Idle),
            state: AtomicU8::new(IDLE),
            late_counted: AtomicBool::new(false),
        }
    }

    /// The thread took a new batch from the queue (before its triage):
    /// it has not been counted late yet.
    pub(crate) fn new_batch(&self) {
        self.late_counted.store(false, Ordering::Relaxed);
    }

    /// Counts the current batch in `late_batches`, once however many of
    /// its jobs are late and in how many ways (picked up late, running
    /// late, ended late).
    pub(crate) fn count_late(&self, counters: &Counters) {
        if !self.late_counted.swap(true, Ordering::Relaxed) {
            counters.late_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn with(&self, f: impl FnOnce(&mut Doing)) {
        f(&mut self.slot.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// [`IDLE`], [`BUSY`] or [`CHECKOUT`], without the lock.
    pub(crate) fn busy(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// A batch starts, waiting for `first`.
    pub(crate) fn begin<'j>(
        &self,
        batch: BatchInfo<'_, impl Iterator<Item = &'j StorageJob>>,
        first: Waiting,
    ) {
        let (jobs, user) = summary(batch.jobs, batch.tokens);
        let queue = batch
            .queued
            .iter()
            .min_by_key(|q| q.at)
            .map_or((Duration::ZERO, 0), |q| {
                (batch.picked_up.saturating_duration_since(q.at), q.behind)
            });
        self.state.store(state_of(&first), Ordering::Relaxed);
        self.with(|slot| {
            *slot = Doing::Batch(Activity {
                jobs,
                user,
                deadline: batch.deadline,
                queue,
                waiting: first,
                since: Instant::now(),
                longest: None,
                reported: false,
            })
        });
    }

    /// The batch now waits for `next`.
    pub(crate) fn step(&self, next: Waiting) {
        self.state.store(state_of(&next), Ordering::Relaxed);
        self.with(|slot| {
            if let Doing::Batch(a) = slot {
                let now = Instant::now();
                let took = now - a.since;
                let done = std::mem::replace(&mut a.waiting, next);
                if a.longest.as_ref().is_none_or(|(_, d)| took > *d) {
                    a.longest = Some((done, took));
                }
                a.since = now;
            }
        });
    }

    /// The batch is done. Returns its line when it ran past its deadline
    /// and `db-watch` had not reported it yet (it ended between two
    /// looks).
    pub(crate) fn end(&self) -> Option<Late> {
        let mut line = None;
        self.with(|slot| {
            if let Doing::Batch(a) = std::mem::replace(slot, Doing::Idle) {
                let now = Instant::now();
                if !a.reported && now > a.deadline {
                    line = Some(a.late(&self.thread, now, true));
                }
            }
        });
        self.state.store(IDLE, Ordering::Relaxed);
        line
    }

    /// `db-watch`'s look: the batch's line when it is past its deadline
    /// and was not reported yet (it is reported now).
    pub(crate) fn look(&self, now: Instant) -> Option<Late> {
        let mut line = None;
        self.with(|slot| {
            let Doing::Batch(a) = slot else { return };
            if a.reported || now < a.deadline {
                return;
            }
            a.reported = true;
            line = Some(a.late(&self.thread, now, false));
        });
        line
    }
}

fn state_of(waiting: &Waiting) -> u8 {
    match waiting {
        Waiting::Checkout => CHECKOUT,
        _ => BUSY,
    }
}

/// A late batch's line, and the user it concerns.
pub(crate) struct Late {
    /// The line (without what the backend adds, such as the pool).
    pub(crate) text: String,
    /// Its one user, if it concerns one.
    pub(crate) user: Option<UserId>,
}

impl Activity {
    /// The one line saying where a late batch waited and how long.
    fn late(&self, thread: &str, now: Instant, ended: bool) -> Late {
        let current = now.saturating_duration_since(self.since);
        let (waiting, waited, verb) = match &self.longest {
            Some((waiting, took)) if *took > current => (waiting, *took, "waited"),
            _ if ended => (&self.waiting, current, "waited"),
            _ => (&self.waiting, current, "has waited"),
        };
        let (queued, behind) = self.queue;
        let text = format!(
            "storage: {thread}: {} {} {} ms past its deadline: {thread} {verb} {} ms for {waiting} \
             (its oldest job waited {} ms in the queue, {behind} jobs ahead of it at submit)",
            self.jobs,
            if ended { "ended" } else { "is" },
            now.saturating_duration_since(self.deadline).as_millis(),
            waited.as_millis(),
            queued.as_millis(),
        );
        Late {
            text,
            user: self.user,
        }
    }
}

/// Logs at warn, with `user=` only when the record concerns one user
/// (`log`'s key-values would print `user=None` for an `Option`).
macro_rules! warn_about {
    ($user:expr; $($arg:tt)+) => {
        match $user {
            Some(user) => log::warn!(user; $($arg)+),
            None => log::warn!($($arg)+),
        }
    };
}

/// Logs a late batch's line at warn (with `user=` when it concerns one
/// user, and `extra`, what the backend adds) and counts the batch late
/// (once: [`Watch::count_late`]).
pub(crate) fn log_late(late: Late, extra: &str, watch: &Watch, counters: &Counters) {
    watch.count_late(counters);
    warn_about!(late.user; "{}{extra}", late.text);
}

/// Logs the jobs of a batch that a db thread picked up after their
/// deadline (answered `TimedOut`, never run): one line per batch, and
/// counts the batch late (once: [`Watch::count_late`]). `late` is how far
/// past its deadline the latest of them was, `queued` their queueing.
pub(crate) fn log_late_pickup(
    watch: &Watch,
    jobs: &[&StorageJob],
    queued: &[Queued],
    late: Duration,
    picked_up: Instant,
    counters: &Counters,
) {
    watch.count_late(counters);
    let (what, user) = summary(jobs.iter().copied(), 0);
    let oldest = queued.iter().min_by_key(|q| q.at);
    let (waited, behind) = oldest.map_or((Duration::ZERO, 0), |q| {
        (picked_up.saturating_duration_since(q.at), q.behind)
    });
    let thread = &watch.thread;
    warn_about!(
        user;
        "storage: {thread}: {what} timed out in the queue: picked up {} ms past its deadline, \
         after {} ms in the queue with {behind} jobs ahead of it at submit (every db thread was \
         busy); answered TimedOut, not run",
        late.as_millis(),
        waited.as_millis()
    );
}

/// `store_message ×3, load_session for users 1, 2` (at most 8 users), and
/// the one user when all the jobs are one user's.
pub(crate) fn summary<'a>(
    jobs: impl Iterator<Item = &'a StorageJob>,
    tokens: usize,
) -> (String, Option<UserId>) {
    let mut names: Vec<(&'static str, usize)> = Vec::new();
    let mut users: Vec<UserId> = Vec::new();
    for job in jobs {
        match names.iter_mut().find(|(n, _)| *n == job.name()) {
            Some((_, count)) => *count += 1,
            None => names.push((job.name(), 1)),
        }
        if !users.contains(&job.user()) {
            users.push(job.user());
        }
    }
    if tokens > 0 {
        names.push(("lookup_token", tokens));
    }
    let mut text = String::new();
    for (n, (name, count)) in names.iter().enumerate() {
        if n > 0 {
            text.push_str(", ");
        }
        text.push_str(name);
        if *count > 1 {
            let _ = write!(text, " ×{count}");
        }
    }
    if !users.is_empty() {
        text.push_str(if users.len() == 1 {
            " for user "
        } else {
            " for users "
        });
        for (n, user) in users.iter().take(8).enumerate() {
            if n > 0 {
                text.push_str(", ");
            }
            let _ = write!(text, "{user}");
        }
        if users.len() > 8 {
            let _ = write!(text, " and {} more", users.len() - 8);
        }
    }
    let one = match users.as_slice() {
        [user] => Some(*user),
        _ => None,
    };
    (text, one)
}

/// `sql` on one line, at most [`limits::LOG_SQL_CHARS_MAX`] characters
/// (reads no further than that into a long statement).
pub(crate) fn cut(sql: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for word in sql.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
            n += 1;
        }
        for ch in word.chars() {
            if n >= limits::LOG_SQL_CHARS_MAX {
                out.push('…');
                return out;
            }
            out.push(ch);
            n += 1;
        }
    }
    out
}

/// `db-watch`: logs each batch still running past its deadline, once.
/// `extra` says what the backend adds to the line (the MySQL pool's
/// state); `sample` runs at each look (the MySQL pool's sample for
/// `Store::stats`).
pub(crate) fn watch_loop(
    watches: &[std::sync::Arc<Watch>],
    stop: &std::sync::atomic::AtomicBool,
    counters: &Counters,
    extra: impl Fn() -> String,
    sample: impl Fn(),
) {
    let interval = Duration::from_millis(limits::DB_WATCH_INTERVAL_MS);
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(interval);
        sample();
        let now = Instant::now();
        for watch in watches {
            if let Some(late) = watch.look(now) {
                log_late(late, &extra(), watch, counters);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(user: UserId) -> StorageJob {
        StorageJob::StoreMessage {
            from: user,
            to: 9,
            text: "x".into(),
            cid: None,
            ts: 0,
        }
    }

    #[test]
    fn a_late_batch_is_reported_once_with_its_longest_wait() {
        let watch = Watch::new("db-3".into());
        let now = Instant::now();
        let jobs = [send(7), send(7)];
        let queued = [
            Queued {
                at: now - Duration::from_millis(40),
                behind: 12,
            },
            Queued { at: now, behind: 0 },
        ];
        let batch = BatchInfo {
            jobs: jobs.iter(),
            tokens: 0,
            deadline: now + Duration::from_millis(30),
            queued: &queued,
            picked_up: now,
        };
        watch.begin(batch, Waiting::WriteLock);
        assert_eq!(watch.busy(), BUSY);
        watch.step(Waiting::Writes);
        watch.step(Waiting::Wal);
        assert!(watch.look(now).is_none(), "not late yet");
        std::thread::sleep(Duration::from_millis(60));
        let late = watch.look(Instant::now()).expect("late now");
        assert_eq!(late.user, Some(7));
        let text = late.text;
        assert!(
            text.starts_with("storage: db-3: store_message ×2 for user 7 is "),
            "{text}"
        );
        assert!(text.contains("db-3 has waited"), "{text}");
        assert!(
            text.contains("for the write-ahead log (its fdatasync)"),
            "{text}"
        );
        assert!(
            text.contains("waited 40 ms in the queue, 12 jobs ahead of it at submit"),
            "{text}"
        );
        assert!(watch.look(Instant::now()).is_none(), "reported once");
        assert!(watch.end().is_none(), "not again at its end");
        assert_eq!(watch.busy(), IDLE);
    }

    #[test]
    fn a_batch_that_ends_late_between_looks_is_reported_at_its_end() {
        let watch = Watch::new("db-0".into());
        let now = Instant::now();
        let jobs = [send(1), send(2)];
        let batch = BatchInfo {
            jobs: jobs.iter(),
            tokens: 0,
            deadline: now,
            queued: &[],
            picked_up: now,
        };
        watch.begin(batch, Waiting::Checkout);
        assert_eq!(watch.busy(), CHECKOUT);
        std::thread::sleep(Duration::from_millis(5));
        watch.step(Waiting::Query("commit", "COMMIT".into()));
        let late = watch.end().expect("late at its end");
        assert_eq!(late.user, None, "two users");
        assert!(late.text.contains("for users 1, 2 ended"), "{}", late.text);
        assert!(
            late.text.contains("for a pool connection (checkout)"),
            "{}",
            late.text
        );
    }

    /// A batch with jobs picked up late and a late run counts once; the
    /// next batch counts again.
    #[test]
    fn a_late_batch_counts_once_however_it_is_late() {
        let watch = Watch::new("db-1".into());
        let counters = Counters::default();
        let now = Instant::now();
        let jobs = [send(4)];
        let queued = [Queued { at: now, behind: 0 }];
        let batch = |deadline| BatchInfo {
            jobs: jobs.iter(),
            tokens: 0,
            deadline,
            queued: &queued,
            picked_up: now,
        };
        let count = || counters.late_batches.load(Ordering::Relaxed);
        watch.new_batch();
        let late_ones: Vec<&StorageJob> = jobs.iter().collect();
        log_late_pickup(
            &watch,
            &late_ones,
            &queued,
            Duration::from_millis(3),
            now,
            &counters,
        );
        assert_eq!(count(), 1);
        watch.begin(batch(now), Waiting::WriteLock);
        let late = watch.look(Instant::now()).expect("late");
        log_late(late, "", &watch, &counters);
        assert_eq!(count(), 1, "the same batch");
        assert!(watch.end().is_none(), "reported by the look");
        watch.new_batch();
        watch.begin(batch(now), Waiting::WriteLock);
        let late = watch.end().expect("ended late");
        log_late(late, "", &watch, &counters);
        assert_eq!(count(), 2, "the next batch");
    }
}
