//! Per-user traces, the shard core's part: which users are traced, and
//! what the core says about them.
//!
//! The engine owns traces (their files, their bounds, the authoritative
//! set of traced users). Each shard holds a copy of the set, [`Traced`],
//! replaced whole by `Request::Trace` (sent to every shard at each admin
//! change, newest generation wins) and expired by its own clock. For a
//! traced user the core emits [`Note`]s as `Output::Trace`: facts about
//! decisions only it sees (presence, rate-limit hits, events appended or
//! refused, tabs), never content (no message text, cid, tab name, UI or
//! typing state). The engine turns each into a log record for the user's
//! trace. For an untraced user the check is an empty-`Vec` test (or a
//! scan of at most `TRACED_USERS_MAX` ids), and no note is built.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::TRACED_USERS_MAX;
use crate::model::{Status, UserId};

/// The traced users as of one change of the engine's set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traced {
    /// Counts the engine's changes: a copy is replaced only by a newer one.
    generation: u64,
    /// `(user, until_ms)`: traced until that time (shard clock).
    users: Vec<(UserId, u64)>,
}

impl Traced {
    /// The set of change `generation`: `users` with the time each trace
    /// ends; at most `TRACED_USERS_MAX` are kept.
    pub fn new(generation: u64, mut users: Vec<(UserId, u64)>) -> Traced {
        users.truncate(TRACED_USERS_MAX);
        Traced { generation, users }
    }

    /// Whether `user` is traced at `now`.
    pub fn on(&self, user: UserId, now: u64) -> bool {
        !self.users.is_empty()
            && self
                .users
                .iter()
                .any(|&(u, until_ms)| u == user && now < until_ms)
    }

    /// Takes `newer` if it is newer than this copy (two admin calls'
    /// broadcasts may arrive in either order); whether it did.
    pub fn replace(&mut self, newer: Traced) -> bool {
        if newer.generation < self.generation {
            return false;
        }
        *self = newer;
        true
    }

    /// Forgets traces that ended by `now`.
    pub fn expire(&mut self, now: u64) {
        if !self.users.is_empty() {
            self.users.retain(|&(_, until_ms)| now < until_ms);
        }
    }

    /// Users in the set (expired ones until [`Traced::expire`]).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// What the core says about a traced user: one decision, no content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// A call was over the user's rate limit and answered `rate_limited`.
    RateLimited { call: &'static str },
    /// The user's presence changed and was broadcast to every shard.
    Presence {
        status: Status,
        why: &'static str,
        shards: usize,
    },
    /// An event was appended to the user's session buffer.
    Event {
        kind: &'static str,
        seq: u64,
        /// The user who caused it, if another.
        from: Option<UserId>,
    },
    /// An event for the user was refused by the receiving side's
    /// friends-only check (`from` is not in their roster).
    NotFriends { kind: &'static str, from: UserId },
    /// An event the user caused reached `to`'s home shard: appended to
    /// their session, or not (`outcome` says why).
    DeliveredTo {
        to: UserId,
        kind: &'static str,
        outcome: &'static str,
    },
    /// A tab was attached; the session now has `tabs`.
    TabAttached { tabs: usize },
    /// A tab was detached; the session now has `tabs`.
    TabDetached { why: &'static str, tabs: usize },
    /// A poll was held, to be answered by an event or its wait.
    PollHeld { since: u64, wait_ms: u64 },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Note::RateLimited { call } => {
                write!(f, "rate limit hit: a {call} call answered rate_limited")
            }
            Note::Presence {
                status,
                why,
                shards,
            } => write!(
                f,
                "presence {} ({why}): broadcast to {shards} shards",
                status.as_str()
            ),
            Note::Event { kind, seq, from } => {
                write!(f, "event {kind} appended at seq {seq}")?;
                match from {
                    Some(from) => write!(f, " (from user {from})"),
                    None => Ok(()),
                }
            }
            Note::NotFriends { kind, from } => write!(
                f,
                "event {kind} from user {from} refused: not in the roster (friends-only)"
            ),
            Note::DeliveredTo { to, kind, outcome } => {
                write!(f, "delivery of a {kind} to user {to}: {outcome}")
            }
            Note::TabAttached { tabs } => write!(f, "tab attached ({tabs} now)"),
            Note::TabDetached { why, tabs } => write!(f, "tab detached: {why} ({tabs} left)"),
            Note::PollHeld { since, wait_ms } => {
                write!(f, "poll held (since {since}, wait {wait_ms} ms)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_replaced_only_by_a_newer_one_and_expires_by_the_clock() {
        let mut t = Traced::default();
        assert!(!t.on(42, 0));
        assert!(t.replace(Traced::new(2, vec![(42, 1_000), (7, 5_000)])));
        assert!(t.on(42, 999) && !t.on(42, 1_000) && t.on(7, 1_000) && !t.on(8, 0));
        assert!(!t.replace(Traced::new(1, vec![])), "an older change");
        assert!(t.on(7, 0));
        t.expire(1_000);
        assert_eq!(t.len(), 1);
        assert!(t.replace(Traced::new(3, vec![])));
        assert!(t.is_empty());
        let many = (1..=20).map(|u| (u, 10)).collect();
        assert_eq!(Traced::new(4, many).len(), TRACED_USERS_MAX);
    }

    #[test]
    fn notes_say_what_happened_without_content() {
        let table = [
            (
                Note::RateLimited { call: "send" },
                "rate limit hit: a send call answered rate_limited",
            ),
            (
                Note::Presence {
                    status: Status::Online,
                    why: "first tab",
                    shards: 2,
                },
                "presence online (first tab): broadcast to 2 shards",
            ),
            (
                Note::Event {
                    kind: "message",
                    seq: 9,
                    from: Some(2),
                },
                "event message appended at seq 9 (from user 2)",
            ),
            (
                Note::NotFriends {
                    kind: "typing",
                    from: 5,
                },
                "event typing from user 5 refused: not in the roster (friends-only)",
            ),
            (
                Note::TabDetached {
                    why: "left",
                    tabs: 0,
                },
                "tab detached: left (0 left)",
            ),
        ];
        for (note, text) in table {
            assert_eq!(note.to_string(), text);
        }
    }
}
