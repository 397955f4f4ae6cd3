//! The simulation's storage: the directory (names, friendships) and the
//! store (messages, read marks, UI states) in memory, executing jobs with
//! the protocol's semantics. Faults (failures, timeouts, late commits) are
//! decided by the world, not here: a job that runs here has run.
//!
//! Invariant: at most one message per `(from, cid)`; message ids increase
//! in commit order, so a history page's older messages never change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use switchboard_shards::model::*;

/// A friendship, smaller id first.
pub fn pair(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}

#[derive(Default)]
pub struct Store {
    /// The directory's users.
    pub names: BTreeMap<UserId, Arc<str>>,
    /// The directory's friendships, as `pair(a, b)`.
    pub friends: BTreeSet<(UserId, UserId)>,
    /// Every stored message; message `id` is at index `id - 1`.
    pub messages: Vec<Arc<Message>>,
    /// The at-most-once index: `(from, cid)` → message id.
    cids: HashMap<(UserId, Arc<str>), MsgId>,
    /// Persisted UI states.
    ui: HashMap<UserId, Arc<str>>,
    /// Read marks: `(user, with)` → the newest message read.
    marks: HashMap<(UserId, UserId), MsgId>,
}

impl Store {
    pub fn are_friends(&self, a: UserId, b: UserId) -> bool {
        self.friends.contains(&pair(a, b))
    }

    pub fn friends_of(&self, u: UserId) -> Vec<Friend> {
        self.friends
            .iter()
            .filter_map(|&(a, b)| match (a == u, b == u) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .map(|id| Friend {
                id,
                name: self.names[&id].clone(),
            })
            .collect()
    }

    pub fn message(&self, id: MsgId) -> Option<&Arc<Message>> {
        id.checked_sub(1)
            .and_then(|i| self.messages.get(i as usize))
    }

    /// Ids of every message `u` sent or received: what `/history` of all
    /// of `u`'s conversations shows.
    pub fn ids_of(&self, u: UserId) -> impl Iterator<Item = MsgId> + '_ {
        self.messages
            .iter()
            .filter(move |m| m.from == u || m.to == u)
            .map(|m| m.id)
    }

    /// The conversation of `a` and `b`, oldest first.
    pub fn conversation(&self, a: UserId, b: UserId) -> Vec<Arc<Message>> {
        self.messages
            .iter()
            .filter(|m| pair(m.from, m.to) == pair(a, b))
            .cloned()
            .collect()
    }

    fn unread(&self, u: UserId, from: UserId) -> u64 {
        let mark = self.marks.get(&(u, from)).copied().unwrap_or(0);
        self.messages
            .iter()
            .filter(|m| m.from == from && m.to == u && m.id > mark)
            .count() as u64
    }

    /// Runs a job: its effects are committed when this returns.
    pub fn run(&mut self, job: &StorageJob) -> StorageOutput {
        match job.clone() {
            StorageJob::LoadSession { user } => StorageOutput::Session {
                name: self.names.get(&user).cloned(),
                friends: self.friends_of(user),
                ui: self.ui.get(&user).cloned(),
                unread: self
                    .friends_of(user)
                    .iter()
                    .map(|f| (f.id, self.unread(user, f.id)))
                    .filter(|&(_, n)| n > 0)
                    .collect(),
            },
            StorageJob::LoadRoster { user } => StorageOutput::Roster {
                friends: self.friends_of(user),
            },
            StorageJob::StoreMessage {
                from,
                to,
                text,
                cid,
                ts,
            } => {
                if let Some(c) = &cid {
                    if let Some(&id) = self.cids.get(&(from, c.clone())) {
                        return StorageOutput::Stored {
                            message: self.message(id).expect("indexed").clone(),
                            duplicate: true,
                        };
                    }
                }
                let message = Arc::new(Message {
                    id: self.messages.len() as u64 + 1,
                    from,
                    to,
                    text,
                    ts,
                    cid: cid.clone(),
                });
                if let Some(c) = cid {
                    self.cids.insert((from, c), message.id);
                }
                self.messages.push(message.clone());
                StorageOutput::Stored {
                    message,
                    duplicate: false,
                }
            }
            StorageJob::MarkRead { user, with, upto } => {
                let valid = self
                    .message(upto)
                    .is_some_and(|m| pair(m.from, m.to) == pair(user, with));
                if valid {
                    let mark = self.marks.entry((user, with)).or_insert(0);
                    *mark = (*mark).max(upto);
                }
                StorageOutput::ReadMarked {
                    valid,
                    upto: self.marks.get(&(user, with)).copied().unwrap_or(0),
                    unread: self.unread(user, with),
                }
            }
            StorageJob::History {
                user,
                with,
                before,
                limit,
            } => {
                let all = self.conversation(user, with);
                if let Some(b) = before {
                    if !all.iter().any(|m| m.id == b) {
                        return StorageOutput::History {
                            valid: false,
                            messages: Vec::new(),
                            more: false,
                            seen: None,
                        };
                    }
                }
                let older: Vec<_> = all
                    .into_iter()
                    .filter(|m| before.is_none_or(|b| m.id < b))
                    .collect();
                let skip = older.len().saturating_sub(limit as usize);
                StorageOutput::History {
                    valid: true,
                    more: skip > 0,
                    messages: older[skip..].to_vec(),
                    seen: self.marks.get(&(with, user)).copied(),
                }
            }
            StorageJob::SaveUi { user, state } => {
                self.ui.insert(user, state);
                StorageOutput::Saved
            }
        }
    }
}
