//! Storage jobs as SQL, on one checked-out connection.
//!
//! Reads run one job at a time with autocommit. Writes of a batch run in
//! one transaction (group commit): every send of the batch is one row of
//! one multi-row `INSERT` (cut into several statements only past
//! [`INSERT_SQL_BYTES_MAX`]), and the unread counters, read marks and UI
//! states of the batch change in the same transaction, which is committed
//! before any of its jobs is answered.
//!
//! **Unread counters stay exact under concurrency.** Sessions run at READ
//! COMMITTED, and every transaction that changes a counter first takes
//! the counter's row lock (an upsert of `+0` or `+n`, all rows of a batch
//! in one statement, sorted), before it inserts messages or recounts. So
//! a `MarkRead` recount either runs after a concurrent send committed (and
//! counts it) or before that send inserted anything (which then adds its
//! `+1` to the recounted value): never a lost or doubled increment.
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

use super::conn::DbConn;
use super::{DirectoryQueries, Watch};
use crate::limits;
use mysql::prelude::Queryable;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;
use switchboard_shards::model::{Friend, Message, MsgId, StorageJob, StorageOutput, UserId};

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
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Sql { what, error } => write!(f, "{what}: {error}"),
            TxError::Deadline => write!(
                f,
                "deadline passed before COMMIT: rolled back, nothing stored"
            ),
            TxError::Invariant(e) => f.write_str(e),
        }
    }
}

/// One connection, the watch its thread reports to, and the queries.
pub(crate) struct Ctx<'a> {
    pub(crate) conn: &'a mut DbConn,
    pub(crate) watch: &'a Watch,
    pub(crate) queries: &'a DirectoryQueries,
}

/// A statement's failure with its short name.
type Sql<T> = Result<T, (&'static str, mysql::Error)>;

impl Ctx<'_> {
    /// Runs one statement, telling the watch what it waits for.
    fn q<T>(
        &mut self,
        what: &'static str,
        sql: &str,
        f: impl FnOnce(&mut mysql::Conn, &str) -> Result<T, mysql::Error>,
    ) -> Sql<T> {
        self.q_as(what, sql, sql, f)
    }

    /// [`Ctx::q`] for a statement with values in its text (message texts,
    /// cids): the watch, and so the log, sees `shown` instead.
    fn q_as<T>(
        &mut self,
        what: &'static str,
        sql: &str,
        shown: &str,
        f: impl FnOnce(&mut mysql::Conn, &str) -> Result<T, mysql::Error>,
    ) -> Sql<T> {
        self.watch.query(shown);
        self.conn.run(|c| f(c, sql)).map_err(|e| (what, e))
    }

    /// Runs a read job.
    pub(crate) fn read(&mut self, job: &StorageJob) -> Sql<StorageOutput> {
        match *job {
            StorageJob::LoadSession { user } => {
                let queries = self.queries;
                let name: Option<String> =
                    self.q("user name query", &queries.user_name_sql, |c, s| {
                        c.exec_first(s, (user,))
                    })?;
                let friends = if name.is_some() {
                    self.friends(user)?
                } else {
                    Vec::new()
                };
                let ui: Option<String> =
                    self.q("ui", "SELECT state FROM sb_ui WHERE user_id = ?", |c, s| {
                        c.exec_first(s, (user,))
                    })?;
                let unread: Vec<(UserId, u64)> = self.q(
                    "unread",
                    "SELECT from_user, unread FROM sb_unread WHERE user_id = ? AND unread > 0 ORDER BY from_user",
                    |c, s| c.exec(s, (user,)),
                )?;
                Ok(StorageOutput::Session {
                    name: name.map(Arc::from),
                    friends,
                    ui: ui.map(Arc::from),
                    unread,
                })
            }
            StorageJob::LoadRoster { user } => Ok(StorageOutput::Roster {
                friends: self.friends(user)?,
            }),
            StorageJob::History {
                user,
                with,
                before,
                limit,
            } => self.history(user, with, before, limit),
            StorageJob::StoreMessage { .. }
            | StorageJob::MarkRead { .. }
            | StorageJob::SaveUi { .. } => unreachable!("write job {} run as a read", job.name()),
        }
    }

    /// The user's friends by the configured query, sorted by id, at most
    /// [`limits::FRIENDS_PER_USER_MAX`] (more are cut, and logged).
    fn friends(&mut self, user: UserId) -> Sql<Vec<Friend>> {
        let queries = self.queries;
        let max = limits::FRIENDS_PER_USER_MAX;
        let (mut friends, over) = self.q("friends query", &queries.friends_sql, |c, s| {
            let mut friends = Vec::new();
            let mut over = false;
            for row in c.exec_iter(s, (user,))? {
                let row = row?;
                if friends.len() == max {
                    over = true;
                    continue; // drain the rest so the connection stays usable
                }
                let (id, name): (UserId, String) =
                    mysql::from_row_opt(row).map_err(|e| mysql::Error::FromRowError(e.0))?;
                if id != 0 && id != user {
                    friends.push(Friend {
                        id,
                        name: Arc::from(name),
                    });
                }
            }
            Ok((friends, over))
        })?;
        if over {
            log::error!(
                "storage: user {user} has more than {max} friends; the roster keeps the first {max}"
            );
        }
        friends.sort_by_key(|f| f.id);
        friends.dedup_by_key(|f| f.id);
        Ok(friends)
    }

    fn history(
        &mut self,
        user: UserId,
        with: UserId,
        before: Option<MsgId>,
        limit: u32,
    ) -> Sql<StorageOutput> {
        let (lo, hi) = pair(user, with);
        if let Some(before) = before {
            let known: Option<u64> = self.q(
                "history anchor",
                "SELECT id FROM sb_messages WHERE id = ? AND user_lo = ? AND user_hi = ?",
                |c, s| c.exec_first(s, (before, lo, hi)),
            )?;
            if known.is_none() {
                return Ok(StorageOutput::History {
                    valid: false,
                    messages: Vec::new(),
                    more: false,
                });
            }
        }
        let limit = limit.clamp(1, limits::HISTORY_LIMIT_MAX) as usize;
        let rows: Vec<MessageRow> = self.q(
            "history page",
            "SELECT id, from_user, to_user, ts, text, cid FROM sb_messages \
             WHERE user_lo = ? AND user_hi = ? AND id < ? ORDER BY id DESC LIMIT ?",
            |c, s| c.exec(s, (lo, hi, before.unwrap_or(MsgId::MAX), limit as u64 + 1)),
        )?;
        let more = rows.len() > limit;
        let messages = rows
            .into_iter()
            .take(limit)
            .rev()
            .map(|row| Arc::new(message(row)))
            .collect();
        Ok(StorageOutput::History {
            valid: true,
            messages,
            more,
        })
    }

    /// The user of a stored login token, by the configured token query.
    pub(crate) fn lookup_token(&mut self, token: &str) -> Sql<Option<UserId>> {
        let queries = self.queries;
        let Some(sql) = &queries.token_sql else {
            return Ok(None);
        };
        let user: Option<Option<UserId>> =
            self.q("token query", sql, |c, s| c.exec_first(s, (token,)))?;
        Ok(user.flatten().filter(|&u| u != 0))
    }

    /// Runs every write job of a batch in one transaction and commits it
    /// if `deadline` has not passed; outputs are in the order of `jobs`.
    pub(crate) fn write(
        &mut self,
        jobs: &[&StorageJob],
        deadline: Instant,
    ) -> Result<Vec<StorageOutput>, TxError> {
        let sql = |(what, error)| TxError::Sql { what, error };
        self.q("begin", "START TRANSACTION", |c, s| c.query_drop(s))
            .map_err(sql)?;
        let result = self.write_in_txn(jobs, deadline);
        let result = match result {
            Ok(outputs) if Instant::now() < deadline => self
                .q("commit", "COMMIT", |c, s| c.query_drop(s))
                .map(|()| outputs)
                .map_err(sql),
            Ok(_) => Err(TxError::Deadline),
            Err(e) => Err(e),
        };
        if result.is_err() && !self.conn.broken {
            // Whatever failed, leave the connection clean (or broken).
            if self
                .q("rollback", "ROLLBACK", |c, s| c.query_drop(s))
                .is_err()
            {
                self.conn.broken = true;
            }
        }
        result
    }

    fn write_in_txn(
        &mut self,
        jobs: &[&StorageJob],
        deadline: Instant,
    ) -> Result<Vec<StorageOutput>, TxError> {
        let sql = |(what, error)| TxError::Sql { what, error };
        // Each step checks the deadline first: a batch that is already
        // late stops (and rolls back) instead of waiting on more locks.
        let in_time = || {
            if Instant::now() < deadline {
                Ok(())
            } else {
                Err(TxError::Deadline)
            }
        };
        let mut outputs: Vec<Option<StorageOutput>> = vec![None; jobs.len()];

        // 1. Sends: which are repeats of a stored or batched (from, cid)?
        let sends: Vec<usize> = (0..jobs.len())
            .filter(|&i| matches!(jobs[i], StorageJob::StoreMessage { .. }))
            .collect();
        let mut first_of: HashMap<(UserId, &str), usize> = HashMap::new();
        let mut repeat_of: HashMap<usize, usize> = HashMap::new();
        let mut cids: Vec<(UserId, &str)> = Vec::new();
        for &i in &sends {
            if let StorageJob::StoreMessage {
                from,
                cid: Some(cid),
                ..
            } = jobs[i]
            {
                match first_of.get(&(*from, &**cid)) {
                    Some(&first) => {
                        repeat_of.insert(i, first);
                    }
                    None => {
                        first_of.insert((*from, &**cid), i);
                        cids.push((*from, &**cid));
                    }
                }
            }
        }
        let stored = self.stored_cids(&cids).map_err(sql)?;
        let mut inserts: Vec<usize> = Vec::new();
        for &i in &sends {
            let StorageJob::StoreMessage { from, cid, .. } = jobs[i] else {
                unreachable!()
            };
            if repeat_of.contains_key(&i) {
                continue;
            }
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

        // 2. Lock every unread counter the batch touches, in key order.
        in_time()?;
        let mut counters: BTreeMap<(UserId, UserId), u64> = BTreeMap::new();
        for &i in &inserts {
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
        if !counters.is_empty() {
            let mut text =
                String::from("INSERT INTO sb_unread (user_id, from_user, unread) VALUES ");
            for (n, ((user, from), add)) in counters.iter().enumerate() {
                if n > 0 {
                    text.push(',');
                }
                text.push_str(&format!("({user},{from},{add})"));
            }
            text.push_str(" ON DUPLICATE KEY UPDATE unread = unread + VALUES(unread)");
            self.q("unread counters", &text, |c, s| c.query_drop(s))
                .map_err(sql)?;
        }

        // 3. The new messages.
        in_time()?;
        let ids = self.insert_messages(jobs, &inserts)?;
        for (&i, id) in inserts.iter().zip(ids) {
            let StorageJob::StoreMessage {
                from,
                to,
                text,
                cid,
                ts,
            } = jobs[i]
            else {
                unreachable!()
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
        for (&i, &first) in &repeat_of {
            let Some(StorageOutput::Stored { message, .. }) = &outputs[first] else {
                unreachable!("the first of a cid is answered before its repeats")
            };
            outputs[i] = Some(StorageOutput::Stored {
                message: message.clone(),
                duplicate: true,
            });
        }

        // 4. Read marks and UI states, in order.
        for (i, job) in jobs.iter().enumerate() {
            if matches!(job, StorageJob::MarkRead { .. } | StorageJob::SaveUi { .. }) {
                in_time()?;
            }
            match **job {
                StorageJob::MarkRead { user, with, upto } => {
                    outputs[i] = Some(self.mark_read(user, with, upto).map_err(sql)?);
                }
                StorageJob::SaveUi { user, ref state } => {
                    self.q(
                        "save ui",
                        "INSERT INTO sb_ui (user_id, state) VALUES (?, ?) \
                         ON DUPLICATE KEY UPDATE state = VALUES(state)",
                        |c, s| c.exec_drop(s, (user, &**state)),
                    )
                    .map_err(sql)?;
                    outputs[i] = Some(StorageOutput::Saved);
                }
                _ => {}
            }
        }
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

    /// The stored messages of these `(from, cid)`, by that key.
    fn stored_cids(
        &mut self,
        cids: &[(UserId, &str)],
    ) -> Sql<HashMap<(UserId, String), Arc<Message>>> {
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

    /// Inserts the sends `inserts` (indexes into `jobs`) and returns their
    /// ids in that order.
    fn insert_messages(
        &mut self,
        jobs: &[&StorageJob],
        inserts: &[usize],
    ) -> Result<Vec<MsgId>, TxError> {
        const HEAD: &str =
            "INSERT INTO sb_messages (from_user, to_user, user_lo, user_hi, ts, text, cid) VALUES ";
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
            let StorageJob::StoreMessage {
                from,
                to,
                text: body,
                cid,
                ts,
            } = jobs[i]
            else {
                unreachable!()
            };
            if rows == 0 {
                text.clear();
                text.push_str(HEAD);
            } else {
                text.push(',');
            }
            let (lo, hi) = pair(*from, *to);
            let cid = cid
                .as_ref()
                .map_or_else(|| "NULL".to_string(), |c| self.conn.quote(c));
            text.push_str(&format!(
                "({from},{to},{lo},{hi},{ts},{},{cid})",
                self.conn.quote(body)
            ));
            rows += 1;
            let last = n + 1 == inserts.len();
            if last || rows == rows_max || text.len() >= INSERT_SQL_BYTES_MAX {
                let shown = format!("{HEAD}(…) ({rows} rows)");
                let (first, affected) = self
                    .q_as("insert messages", &text, &shown, |c, s| {
                        c.query_drop(s)?;
                        Ok((c.last_insert_id(), c.affected_rows()))
                    })
                    .map_err(|(what, error)| TxError::Sql { what, error })?;
                if affected != rows as u64 || first == 0 {
                    return Err(TxError::Invariant(format!(
                        "INSERT of {rows} messages reported {affected} rows, first id {first}"
                    )));
                }
                let step = self.conn.autoinc_step.unwrap_or(1);
                ids.extend((0..rows as u64).map(|k| first + k * step));
                rows = 0;
            }
        }
        Ok(ids)
    }

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

/// A message as selected: `(id, from, to, ts, text, cid)`.
type MessageRow = (MsgId, UserId, UserId, u64, String, Option<String>);

fn message((id, from, to, ts, text, cid): MessageRow) -> Message {
    Message {
        id,
        from,
        to,
        text: Arc::from(text),
        ts,
        cid: cid.map(Arc::from),
    }
}

/// The two users of a conversation, smaller id first.
fn pair(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}
