//! Presence: every shard keeps a replica of who is online or away, and a
//! change is broadcast to every shard (each also told which of the user's
//! friends it homes, so their sessions get a presence event).
//!
//! Invariant: once its home shard's broadcasts have arrived, a user is in
//! every replica exactly while they have a live session (offline removes
//! them).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Output, PeerMsg, Shard};
use crate::model::{EventKind, Status, UserId};
use crate::routing::home_shard;

/// This shard's replica of every user's presence.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Presence {
    /// Users online or away (offline users are absent).
    replica: HashMap<UserId, Status>,
}

impl Presence {
    /// `user`'s presence as this replica has it.
    pub(super) fn of(&self, user: UserId) -> Status {
        self.replica.get(&user).copied().unwrap_or(Status::Offline)
    }

    fn set(&mut self, user: UserId, status: Status) {
        if status == Status::Offline {
            self.replica.remove(&user);
        } else {
            self.replica.insert(user, status);
        }
    }
}

impl Shard {
    /// Tells every shard the new presence of `user`, whose session is live.
    pub(super) fn broadcast_presence(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        out: &mut Vec<Output>,
    ) {
        let friends = self.sessions.live(user).expect("live session").friends();
        self.broadcast_presence_to(now, user, status, &friends, out);
    }

    /// Tells every shard `user`'s new presence, each with the friends it
    /// must notify.
    pub(super) fn broadcast_presence_to(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        friends: &[UserId],
        out: &mut Vec<Output>,
    ) {
        let n = self.config.shard_count;
        let mut notify: Vec<Vec<UserId>> = vec![Vec::new(); n];
        for &f in friends {
            notify[home_shard(f, n)].push(f);
        }
        for (shard, notify) in notify.into_iter().enumerate() {
            let msg = PeerMsg::Presence {
                user,
                status,
                notify,
            };
            self.send_to(now, shard, msg, out);
        }
    }

    /// `PeerMsg::Presence` arrived: update the replica and tell the live
    /// sessions of friends that have `user` in their roster.
    pub(super) fn presence_changed(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        notify: Vec<UserId>,
        out: &mut Vec<Output>,
    ) {
        self.presence.set(user, status);
        for friend in notify {
            let knows = self
                .sessions
                .live(friend)
                .is_some_and(|s| s.roster.contains_key(&user));
            if knows {
                self.push_event(now, friend, EventKind::Presence { user, status }, out);
            }
        }
    }
}
