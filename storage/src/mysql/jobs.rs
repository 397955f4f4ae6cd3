//! Storage jobs as SQL, on one checked-out connection ([`Ctx`]): the
//! statement runner every query goes through (it tells the thread's
//! [`Watch`] what the batch waits for, and marks a connection broken when
//! a statement fails on the socket), the read jobs, and token lookups.
//! Reads run one job at a time with autocommit. The write jobs of a batch
//! run in one transaction: see [`super::write`].

use super::conn::DbConn;
use super::DirectoryQueries;
use crate::fault::Faults;
use crate::limits;
use crate::watch::{cut, Waiting, Watch};
use mysql::prelude::Queryable;
use std::sync::Arc;
use switchboard_shards::model::{Friend, Message, MsgId, StorageJob, StorageOutput, UserId};

/// One connection, the watch its thread reports to, the queries and the
/// injected faults.
pub(crate) struct Ctx<'a> {
    pub(crate) conn: &'a mut DbConn,
    pub(crate) watch: &'a Watch,
    pub(crate) queries: &'a DirectoryQueries,
    /// Faults to inject (tests only): a stall before `COMMIT`.
    pub(crate) faults: &'a Faults,
}

/// A statement's failure with its short name.
pub(super) type Sql<T> = Result<T, (&'static str, mysql::Error)>;

impl Ctx<'_> {
    /// Runs one statement, telling the watch what it waits for.
    pub(super) fn q<T>(
        &mut self,
        what: &'static str,
        sql: &str,
        f: impl FnOnce(&mut mysql::Conn, &str) -> Result<T, mysql::Error>,
    ) -> Sql<T> {
        self.q_as(what, sql, sql, f)
    }

    /// [`Ctx::q`] for a statement with values in its text (message texts,
    /// cids): the watch, and so the log, sees `shown` instead.
    pub(super) fn q_as<T>(
        &mut self,
        what: &'static str,
        sql: &str,
        shown: &str,
        f: impl FnOnce(&mut mysql::Conn, &str) -> Result<T, mysql::Error>,
    ) -> Sql<T> {
        self.watch.step(Waiting::Query(what, cut(shown)));
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
                user;
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
                    seen: None,
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
        // How far `with` has read this conversation.
        let seen: Option<MsgId> = self.q(
            "history seen",
            "SELECT upto FROM sb_read_marks WHERE user_id = ? AND with_user = ?",
            |c, s| c.exec_first(s, (with, user)),
        )?;
        Ok(StorageOutput::History {
            valid: true,
            messages,
            more,
            seen,
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
}

/// A message as selected: `(id, from, to, ts, text, cid)`.
pub(super) type MessageRow = (MsgId, UserId, UserId, u64, String, Option<String>);

pub(super) fn message((id, from, to, ts, text, cid): MessageRow) -> Message {
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
pub(super) fn pair(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}
