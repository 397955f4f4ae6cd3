//! The write path: every write job of a batch in one transaction (group
//! commit), committed before any of its jobs is answered. [`Ctx::write`]
//! runs it in steps, each a function of its own:
//!
//! 1. **Dedupe cids** ([`dedupe_cids`], [`Ctx::stored_cids`],
//!    [`answer_stored`]): a send that repeats the `(from, cid)` of an
//!    earlier send of the batch, or of a stored message, is answered that
//!    message as a duplicate; the rest are to be inserted.
//! 2. **Lock the unread counters** ([`unread_increments`],
//!    [`Ctx::lock_unread_counters`]): one upsert of every counter the
//!    batch touches, in key order, adding what its sends add.
//! 3. **Insert the messages** ([`Ctx::insert_messages`]): one multi-row
//!    `INSERT` (cut into several statements only past
//!    [`INSERT_SQL_BYTES_MAX`]), then the answers of the inserted sends
//!    and of their repeats.
//! 4. **Read marks and UI states** ([`Ctx::marks_and_ui`]), in batch
//!    order.
//! 5. **Commit or roll back by the deadline** ([`Ctx::commit_before`]):
//!    `COMMIT` only if the batch's earliest deadline has not passed, else
//!    (or when any step failed) `ROLLBACK`, so `unavailable` means "not
//!    stored".
//!
//! Steps 2, 3, each job of step 4 and step 5 first check the deadline: a
//! batch that is already late stops (and rolls back) instead of waiting on
//! more locks. The check of step 5 is made before `COMMIT` is sent; the
//! `COMMIT` itself may end after the deadline.
//!
//! **What the answers mean.** `TimedOut` (a failed deadline check, rolled
//! back): not stored. `Ok`: stored, possibly answered after the deadline
//! (a `COMMIT` sent in time that took long; storage cannot close that
//! window, the engine waits a slack past the deadline for it). `Backend`
//! from the `COMMIT` itself (the socket failed or timed out while it ran):
//! unknown, it may have committed; a retry with the same cid is answered
//! from the stored message if so.
//!
//! **Unread counters stay exact under concurrency.** Sessions run at READ
//! COMMITTED, and every transaction that changes a counter first takes
//! the counter's row lock (step 2: an upsert of `+0` or `+n`, all rows of
//! a batch in one statement, sorted), before it inserts messages or
//! recounts. So a `MarkRead` recount either runs after a concurrent send
//! committed (and counts it) or before that send inserted anything (which
//! then adds its `+1` to the recounted value): never a lost or doubled
//! increment.
//!
//! **Message ids.** `sb_messages.id` is AUTO_INCREMENT. When the server
//! hands one multi-row `INSERT` consecutive ids (`innodb_autoinc_lock_mode`
//! 0 or 1, MariaDB's default) the ids are `LAST_INSERT_ID() + i × step`;
//! with lock mode 2 (MySQL 8's default) each row is its own `INSERT` in
//! the same transaction, which still commits the batch once.
//!
//! **cid idempotency.** Within a batch, a repeated `(from, cid)` answers
//! the first job's message. Across batches, `(from, cid)` already stored
//! is read first and answered as a duplicate; two batches racing with the
//! same `(from, cid)` make one `INSERT` fail on `sb_messages_cid`, and that
//! batch is rolled back and run again (it then finds the stored message).

use super::conn::Redacted;
use super::jobs::{message, pair, Ctx, MessageRow, Sql};
use mysql::prelude::Queryable;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use switchboard_shards::model::{Message, MsgId, StorageJob, StorageOutput, UserId};

/// Largest SQL text of one multi-row `INSERT` (well under the server's
/// `max_allowed_packet`, 16 MiB by default on MariaDB, 64 MiB on MySQL).
/// A batch with more text is split into several statements of the same
/// transaction.
const INSERT_SQL_BYTES_MAX: usize = 4 << 20;

/// Why a write batch did not commit.
pub(crate) enum TxError {
    /// A statement failed (the transaction was rolled back).
    Sql {
        /// The statement's short name, for the log.
        what: &'static str,
        /// The driver's or server's error.
        error: mysql::Error,
    },
    /// The earliest deadline of the batch passed before `COMMIT`: rolled
    /// back, so an answer of `unavailable` means "not stored".
    Deadline,
    /// Something the database returned makes no sense (e.g. a row count).
    Invariant(String),
}

impl TxError {
    /// Whether running the batch again may succeed (deadlock, a racing
    /// insert of the same cid).
    pub(crate) fn retryable(&self) -> bool {
        matches!(self, TxError::Sql { error: mysql::Error::MySqlError(e), .. } if e.code == 1213 || e.code == 1062)
    }

    /// A failed statement, from the runner's `(what, error)`.
    fn sql((what, error): (&'static str, mysql::Error)) -> TxError {
        TxError::Sql { what, error }
    }
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never the server's message: a 1062 quotes the racing cid.
            TxError::Sql { what, error } => write!(f, "{what}: {}", Redacted(error)),
            TxError::Deadline => write!(
                f,
                "deadline passed before COMMIT: rolled back, nothing stored"
            ),
            TxError::Invariant(e) => f.write_str(e),
        }
    }
}

/// `Ok` while `deadline` has not passed, else [`TxError::Deadline`].
fn in_time(deadline: Instant) -> Result<(), TxError> {
    if Instant::now() < deadline {
        Ok(())
    } else {
        Err(TxError::Deadline)
    }
}

/// What a send of the batch is, by its `(from, cid)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendKind {
    /// No cid, or the first send of its `(from, cid)` in the batch: a new
    /// message, unless that cid is already stored.
    First,
    /// Repeats the `(from, cid)` of the batch's send at this index:
    /// answered that send's message, as a duplicate.
    RepeatOf(usize),
}

/// Step 1's result within the batch.
struct Sends<'j> {
    /// Each send (index into the batch, in batch order) with what its
    /// `(from, cid)` makes it.
    kinds: Vec<(usize, SendKind)>,
    /// The distinct `(from, cid)` of the batch, to look up among the
    /// stored messages.
    cids: Vec<(UserId, &'j str)>,
}

/// The batch's answers so far, one slot per job (`None`: not yet).
type Outputs = Vec<Option<StorageOutput>>;

/// A stored message by its `(from, cid)`.
type StoredCids = HashMap<(UserId, String), Arc<Message>>;

impl Ctx<'_> {
    /// Runs every write job of a batch in one transaction and commits it
    /// if `deadline` has not passed; outputs are in the order of `jobs`.
    /// On any error the transaction is rolled back.
    pub(crate) fn write(
        &mut self,
        jobs: &[&StorageJob],
        deadline: Instant,
    ) -> Result<Vec<StorageOutput>, TxError> {
        self.q("begin", "START TRANSACTION", |c, s| c.query_drop(s))
            .map_err(TxError::sql)?;
        let result = self
            .write_in_txn(jobs, deadline)
            .and_then(|outputs| self.commit_before(deadline).map(|()| outputs));
        if result.is_err() {
            self.roll_back();
        }
        result
    }

    /// Steps 1–4 (see the module documentation), inside the transaction.
    fn write_in_txn(
        &mut self,
        jobs: &[&StorageJob],
        deadline: Instant,
    ) -> Result<Vec<StorageOutput>, TxError> {
        let mut outputs: Outputs = vec![None; jobs.len()];
        // 1. Sends: which repeat a batched or a stored (from, cid)?
        let sends = dedupe_cids(jobs);
        let stored = self.stored_cids(&sends.cids).map_err(TxError::sql)?;
        let inserts = answer_stored(jobs, &sends.kinds, &stored, &mut outputs);
        // 2. Lock every unread counter the batch touches, in key order.
        in_time(deadline)?;
        self.lock_unread_counters(&unread_increments(jobs, &inserts))
            .map_err(TxError::sql)?;
        // 3. The new messages, then the repeats of their cids.
        in_time(deadline)?;
        let ids = self.insert_messages(jobs, &inserts)?;
        answer_inserted(jobs, &inserts, ids, &mut outputs);
        answer_repeats(&sends.kinds, &mut outputs);
        // 4. Read marks and UI states, in order.
        self.marks_and_ui(jobs, deadline, &mut outputs)?;
        every_answer(jobs, outputs)
    }

    /// Step 5: `COMMIT`, if `deadline` has not passed when it is sent.
    ///
    /// This check is the batch's last: `Err(Deadline)` here (or from an
    /// earlier step) means the transaction is rolled back and its jobs are
    /// answered `TimedOut`, so `TimedOut` means not stored. Past it the
    /// batch is committed whenever the server answers `COMMIT`: its jobs
    /// may be answered `Ok` after their deadline (a slow commit that
    /// started in time), and a `COMMIT` that fails on the socket is a
    /// `Backend` error whose outcome is unknown (it may have committed).
    fn commit_before(&mut self, deadline: Instant) -> Result<(), TxError> {
        in_time(deadline)?;
        let faults = self.faults;
        self.q("commit", "COMMIT", |c, s| {
            // A slow COMMIT, when a test injects one: after the check, the
            // watch already showing `COMMIT`.
            faults.stall_commit();
            c.query_drop(s)
        })
        .map_err(TxError::sql)
    }

    /// Whatever failed, leaves the connection clean (rolled back) or
    /// marked broken (so the pool drops it).
    fn roll_back(&mut self) {
        if self.conn.broken {
            return;
        }
        if self
            .q("rollback", "ROLLBACK", |c, s| c.query_drop(s))
            .is_err()
        {
            self.conn.broken = true;
        }
    }

    /// Step 1, against the stored messages: the stored messages of these
    /// `(from, cid)`, by that key, in one `SELECT`.
    fn stored_cids(&mut self, cids: &[(UserId, &str)]) -> Sql<StoredCids> {
        let mut found = HashMap::new();
        if cids.is_empty() {
            return Ok(found);
        }
        let mut text =
            String::from("SELECT id, from_user, to_user, ts, text, cid FROM sb_messages WHERE ");
        for (n, (from, cid)) in cids.iter().enumerate() {
            if n > 0 {
                text.push_str(" OR ");
            }
            text.push_str(&format!(
                "(from_user = {from} AND cid = {})",
                self.conn.quote(cid)
            ));
        }
        let shown = format!(
            "SELECT id, from_user, to_user, ts, text, cid FROM sb_messages WHERE \
             (from_user = … AND cid = …) OR … ({} pairs)",
            cids.len()
        );
        let rows: Vec<MessageRow> = self.q_as("cid lookup", &text, &shown, |c, s| c.query(s))?;
        for row in rows {
            let message = message(row);
            if let Some(cid) = &message.cid {
                found.insert((message.from, cid.to_string()), Arc::new(message));
            }
        }
        Ok(found)
    }

    /// Step 2: takes the row lock of every counter in `counters` (sorted:
    /// a `BTreeMap`) by adding its increment (0 for a read mark's).
    fn lock_unread_counters(&mut self, counters: &BTreeMap<(UserId, UserId), u64>) -> Sql<()> {
        if counters.is_empty() {
            return Ok(());
        }
        let mut text = String::from("INSERT INTO sb_unread (user_id, from_user, unread) VALUES ");
        for (n, ((user, from), add)) in counters.iter().enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(&format!("({user},{from},{add})"));
        }
        text.push_str(" ON DUPLICATE KEY UPDATE unread = unread + VALUES(unread)");
        self.q("unread counters", &text, |c, s| c.query_drop(s))
    }

    /// Step 3: inserts the sends `inserts` (indexes into `jobs`) and
    /// returns their ids in that order.
    fn insert_messages(
        &mut self,
        jobs: &[&StorageJob],
        inserts: &[usize],
    ) -> Result<Vec<MsgId>, TxError> {
        let mut ids = Vec::with_capacity(inserts.len());
        // One row per statement when the server may not give a statement
        // consecutive ids.
        let rows_max = if self.conn.autoinc_step.is_some() {
            usize::MAX
        } else {
            1
        };
        let mut text = String::new();
        let mut rows = 0;
        for (n, &i) in inserts.iter().enumerate() {
            if rows == 0 {
                text.clear();
                text.push_str(INSERT_HEAD);
            } else {
                text.push(',');
            }
            self.push_message_row(&mut text, jobs[i]);
            rows += 1;
            let last = n + 1 == inserts.len();
            if last || rows == rows_max || text.len() >= INSERT_SQL_BYTES_MAX {
                let first = self.insert_rows(&text, rows)?;
                let step = self.conn.autoinc_step.unwrap_or(1);
                ids.extend((0..rows as u64).map(|k| first + k * step));
                rows = 0;
            }
        }
        Ok(ids)
    }

    /// Appends the `(…)` row of the send `job` to an `INSERT`'s text.
    fn push_message_row(&self, text: &mut String, job: &StorageJob) {
        let StorageJob::StoreMessage {
            from,
            to,
            text: body,
            cid,
            ts,
        } = job
        else {
            unreachable!("{} inserted as a message", job.name())
        };
        let (lo, hi) = pair(*from, *to);
        let cid = cid
            .as_ref()
            .map_or_else(|| "NULL".to_string(), |c| self.conn.quote(c));
        text.push_str(&format!(
            "({from},{to},{lo},{hi},{ts},{},{cid})",
            self.conn.quote(body)
        ));
    }

    /// Runs one `INSERT` of `rows` messages; returns the first row's id.
    fn insert_rows(&mut self, text: &str, rows: usize) -> Result<MsgId, TxError> {
        let shown = format!("{INSERT_HEAD}(…) ({rows} rows)");
        let (first, affected) = self
            .q_as("insert messages", text, &shown, |c, s| {
                c.query_drop(s)?;
                Ok((c.last_insert_id(), c.affected_rows()))
            })
            .map_err(TxError::sql)?;
        if affected != rows as u64 || first == 0 {
            return Err(TxError::Invariant(format!(
                "INSERT of {rows} messages reported {affected} rows, first id {first}"
            )));
        }
        Ok(first)
    }

    /// Step 4: the read marks and UI states, in batch order, each after a
    /// deadline check.
    fn marks_and_ui(
        &mut self,
        jobs: &[&StorageJob],
        deadline: Instant,
        outputs: &mut Outputs,
    ) -> Result<(), TxError> {
        for (i, job) in jobs.iter().enumerate() {
            match **job {
                StorageJob::MarkRead { user, with, upto } => {
                    in_time(deadline)?;
                    let output = self.mark_read(user, with, upto).map_err(TxError::sql)?;
                    outputs[i] = Some(output);
                }
                StorageJob::SaveUi { user, ref state } => {
                    in_time(deadline)?;
                    self.q(
                        "save ui",
                        "INSERT INTO sb_ui (user_id, state) VALUES (?, ?) \
                         ON DUPLICATE KEY UPDATE state = VALUES(state)",
                        |c, s| c.exec_drop(s, (user, &**state)),
                    )
                    .map_err(TxError::sql)?;
                    outputs[i] = Some(StorageOutput::Saved);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Step 4, one read mark: moves `user`'s mark of the conversation
    /// with `with` up to `upto` (never down) and recounts the unread
    /// messages after it; a mark not in that conversation is refused.
    fn mark_read(&mut self, user: UserId, with: UserId, upto: MsgId) -> Sql<StorageOutput> {
        let (lo, hi) = pair(user, with);
        let in_conversation: Option<u64> = self.q(
            "read anchor",
            "SELECT id FROM sb_messages WHERE id = ? AND user_lo = ? AND user_hi = ?",
            |c, s| c.exec_first(s, (upto, lo, hi)),
        )?;
        let current: Option<u64> = self.q(
            "read mark",
            "SELECT upto FROM sb_read_marks WHERE user_id = ? AND with_user = ?",
            |c, s| c.exec_first(s, (user, with)),
        )?;
        let current = current.unwrap_or(0);
        if in_conversation.is_none() {
            let counted: Option<u64> = self.q(
                "unread counter",
                "SELECT unread FROM sb_unread WHERE user_id = ? AND from_user = ?",
                |c, s| c.exec_first(s, (user, with)),
            )?;
            return Ok(StorageOutput::ReadMarked {
                valid: false,
                upto: current,
                unread: counted.unwrap_or(0),
            });
        }
        let mark = current.max(upto);
        if mark != current {
            self.q(
                "save read mark",
                "INSERT INTO sb_read_marks (user_id, with_user, upto) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE upto = GREATEST(upto, VALUES(upto))",
                |c, s| c.exec_drop(s, (user, with, mark)),
            )?;
        }
        let unread: Option<u64> = self.q(
            "unread recount",
            "SELECT COUNT(*) FROM sb_messages WHERE to_user = ? AND from_user = ? AND id > ?",
            |c, s| c.exec_first(s, (user, with, mark)),
        )?;
        let unread = unread.unwrap_or(0);
        self.q(
            "save unread counter",
            "UPDATE sb_unread SET unread = ? WHERE user_id = ? AND from_user = ?",
            |c, s| c.exec_drop(s, (unread, user, with)),
        )?;
        Ok(StorageOutput::ReadMarked {
            valid: true,
            upto: mark,
            unread,
        })
    }
}

/// The head of the `INSERT` of messages, before its rows.
const INSERT_HEAD: &str =
    "INSERT INTO sb_messages (from_user, to_user, user_lo, user_hi, ts, text, cid) VALUES ";

/// Step 1, within the batch: what each send is by its `(from, cid)`.
fn dedupe_cids<'j>(jobs: &[&'j StorageJob]) -> Sends<'j> {
    let mut first_of: HashMap<(UserId, &str), usize> = HashMap::new();
    let mut kinds = Vec::new();
    let mut cids = Vec::new();
    for (i, &job) in jobs.iter().enumerate() {
        let StorageJob::StoreMessage { from, cid, .. } = job else {
            continue;
        };
        let send = match cid {
            None => SendKind::First,
            Some(cid) => match first_of.entry((*from, &**cid)) {
                Entry::Occupied(first) => SendKind::RepeatOf(*first.get()),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                    cids.push((*from, &**cid));
                    SendKind::First
                }
            },
        };
        kinds.push((i, send));
    }
    Sends { kinds, cids }
}

/// Step 1, against the stored messages: answers each first send whose
/// `(from, cid)` is stored (a duplicate) and returns the others, the
/// sends to insert (indexes into `jobs`, in batch order).
fn answer_stored(
    jobs: &[&StorageJob],
    sends: &[(usize, SendKind)],
    stored: &StoredCids,
    outputs: &mut Outputs,
) -> Vec<usize> {
    let mut inserts = Vec::new();
    for &(i, send) in sends {
        if send != SendKind::First {
            continue;
        }
        let StorageJob::StoreMessage { from, cid, .. } = jobs[i] else {
            unreachable!("job {i} is not a send")
        };
        match cid
            .as_ref()
            .and_then(|c| stored.get(&(*from, c.to_string())))
        {
            Some(message) => {
                outputs[i] = Some(StorageOutput::Stored {
                    message: message.clone(),
                    duplicate: true,
                })
            }
            None => inserts.push(i),
        }
    }
    inserts
}

/// Step 2: every unread counter `(user, from)` the batch touches, with
/// what it adds: 1 per inserted send between two users (to the
/// recipient's counter of the sender), 0 for a read mark's counter.
fn unread_increments(jobs: &[&StorageJob], inserts: &[usize]) -> BTreeMap<(UserId, UserId), u64> {
    let mut counters: BTreeMap<(UserId, UserId), u64> = BTreeMap::new();
    for &i in inserts {
        if let StorageJob::StoreMessage { from, to, .. } = jobs[i] {
            if from != to {
                *counters.entry((*to, *from)).or_default() += 1;
            }
        }
    }
    for job in jobs {
        if let StorageJob::MarkRead { user, with, .. } = job {
            counters.entry((*user, *with)).or_default();
        }
    }
    counters
}

/// Step 3: answers each inserted send with its new message.
fn answer_inserted(
    jobs: &[&StorageJob],
    inserts: &[usize],
    ids: Vec<MsgId>,
    outputs: &mut Outputs,
) {
    for (&i, id) in inserts.iter().zip(ids) {
        let StorageJob::StoreMessage {
            from,
            to,
            text,
            cid,
            ts,
        } = jobs[i]
        else {
            unreachable!("job {i} is not a send")
        };
        outputs[i] = Some(StorageOutput::Stored {
            message: Arc::new(Message {
                id,
                from: *from,
                to: *to,
                text: text.clone(),
                ts: *ts,
                cid: cid.clone(),
            }),
            duplicate: false,
        });
    }
}

/// Step 3: answers each repeat of a batched cid with its first send's
/// message (inserted or stored), as a duplicate.
fn answer_repeats(sends: &[(usize, SendKind)], outputs: &mut Outputs) {
    for &(i, send) in sends {
        let SendKind::RepeatOf(first) = send else {
            continue;
        };
        let Some(StorageOutput::Stored { message, .. }) = &outputs[first] else {
            unreachable!("the first of a cid is answered before its repeats")
        };
        outputs[i] = Some(StorageOutput::Stored {
            message: message.clone(),
            duplicate: true,
        });
    }
}

/// The outputs in job order; a job the steps left unanswered is
/// reported (and the batch rolled back), not guessed at.
fn every_answer(jobs: &[&StorageJob], outputs: Outputs) -> Result<Vec<StorageOutput>, TxError> {
    outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            o.ok_or_else(|| {
                TxError::Invariant(format!("job {} of the batch got no answer", jobs[i].name()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(from: UserId, to: UserId, cid: Option<&str>) -> StorageJob {
        StorageJob::StoreMessage {
            from,
            to,
            text: Arc::from("hi"),
            cid: cid.map(Arc::from),
            ts: 0,
        }
    }

    fn mark(user: UserId, with: UserId) -> StorageJob {
        StorageJob::MarkRead {
            user,
            with,
            upto: 1,
        }
    }

    /// `dedupe_cids` of `jobs` gives these sends and these cids to look up.
    fn check(jobs: &[StorageJob], sends: &[(usize, SendKind)], cids: &[(UserId, &str)]) {
        let jobs: Vec<&StorageJob> = jobs.iter().collect();
        let got = dedupe_cids(&jobs);
        assert_eq!(got.kinds, sends, "sends of {jobs:?}");
        assert_eq!(got.cids, cids, "cids of {jobs:?}");
    }

    #[test]
    fn a_repeated_cid_of_the_same_sender_points_at_its_first_send() {
        use SendKind::{First, RepeatOf};
        check(&[], &[], &[]);
        check(&[mark(1, 2)], &[], &[]);
        check(
            &[send(1, 2, None), send(1, 2, None)],
            &[(0, First), (1, First)],
            &[],
        );
        check(
            &[send(1, 2, Some("a")), mark(2, 1), send(1, 3, Some("a"))],
            &[(0, First), (2, RepeatOf(0))],
            &[(1, "a")],
        );
        // Same cid, another sender: a send of its own.
        check(
            &[send(1, 2, Some("a")), send(2, 1, Some("a"))],
            &[(0, First), (1, First)],
            &[(1, "a"), (2, "a")],
        );
        check(
            &[
                send(1, 2, Some("a")),
                send(1, 2, Some("b")),
                send(1, 2, Some("a")),
            ],
            &[(0, First), (1, First), (2, RepeatOf(0))],
            &[(1, "a"), (1, "b")],
        );
    }

    #[test]
    fn unread_increments_count_inserted_sends_and_lock_read_marks_with_zero() {
        let jobs = [
            send(1, 2, None),
            send(1, 2, None),
            send(3, 3, None), // to oneself: no counter
            mark(4, 5),
            send(2, 1, None), // not inserted (a duplicate): adds nothing
        ];
        let jobs: Vec<&StorageJob> = jobs.iter().collect();
        let got: Vec<_> = unread_increments(&jobs, &[0, 1, 2]).into_iter().collect();
        assert_eq!(got, [((2, 1), 2), ((4, 5), 0)]);
    }
}
