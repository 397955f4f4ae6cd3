//! Presence: every shard keeps a replica of who is online or away, and a
//! change is broadcast to every shard (each also told which of the user's
//! friends it homes, so their sessions get a presence event).
//!
//! A broadcast can be lost (a full outbox drops it), so every
//! `presence_digest_ms` each shard also sends every other a digest of its
//! users online or away; the receiver makes its replica of that shard's
//! users match it and tells friends' sessions of each entry it repaired.
//!
//! Invariant: once its home shard's broadcasts (or its next digest) have
//! arrived, a user is in every replica exactly while they have a live
//! session (offline removes them), with the status broadcast for them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Config, Output, PeerMsg, Shard};
use crate::model::{EventKind, ShardId, Status, UserId};
use crate::trace::Note;

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

    /// Users in the replica homed on shard `home` (by `config.home`).
    fn homed_on(&self, home: ShardId, config: &Config) -> Vec<UserId> {
        self.replica
            .keys()
            .copied()
            .filter(|&u| config.home(u) == home)
            .collect()
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
    /// Tells every shard the new presence of `user`, whose session is
    /// live; `why` is the decision's reason, for a trace.
    pub(super) fn broadcast_presence(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        why: &'static str,
        out: &mut Vec<Output>,
    ) {
        let friends = self.sessions.live(user).expect("live session").friends();
        self.broadcast_presence_to(now, user, status, why, &friends, out);
    }

    /// Tells every shard `user`'s new presence, each with the friends it
    /// must notify.
    pub(super) fn broadcast_presence_to(
        &mut self,
        now: u64,
        user: UserId,
        status: Status,
        why: &'static str,
        friends: &[UserId],
        out: &mut Vec<Output>,
    ) {
        self.stats.presence_changes += 1;
        let n = self.config.shard_count;
        let shards = n;
        self.note(
            now,
            user,
            Note::Presence {
                status,
                why,
                shards,
            },
            out,
        );
        let mut notify: Vec<Vec<UserId>> = vec![Vec::new(); n];
        for &f in friends {
            notify[self.config.home(f)].push(f);
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

    /// Sends every other shard the digest of this shard's users online or
    /// away, once every `presence_digest_ms` (the first a period after the
    /// first tick).
    pub(super) fn digest_if_due(&mut self, now: u64, out: &mut Vec<Output>) {
        let period = self.config.presence_digest_ms;
        match self.next_digest_ms {
            Some(at) if now >= at => {}
            Some(_) => return,
            None => {
                self.next_digest_ms = Some(now + period);
                return;
            }
        }
        self.next_digest_ms = Some(now + period);
        if self.config.shard_count == 1 {
            return;
        }
        let mut online: Vec<(UserId, Status)> = self
            .sessions
            .live_ones()
            .map(|s| (s.user, s.status))
            .collect();
        online.sort_unstable_by_key(|&(u, _)| u);
        let me = self.config.shard;
        for shard in (0..self.config.shard_count).filter(|&s| s != me) {
            let msg = PeerMsg::PresenceDigest {
                from: me,
                online: online.clone(),
            };
            out.push(Output::Peer { shard, msg });
        }
    }

    /// `PeerMsg::PresenceDigest` arrived: the replica's entries for users
    /// homed on `from` become exactly `online`; each entry that changed is
    /// a repair, told to the live sessions here that have that user in
    /// their roster. Nothing changed: no event, no output.
    pub(super) fn presence_digest(
        &mut self,
        now: u64,
        from: ShardId,
        mut online: Vec<(UserId, Status)>,
        out: &mut Vec<Output>,
    ) {
        online.retain(|&(u, s)| self.config.home(u) == from && s != Status::Offline);
        online.sort_unstable_by_key(|&(u, _)| u);
        let mut changed: Vec<(UserId, Status)> = online
            .iter()
            .copied()
            .filter(|&(u, s)| self.presence.of(u) != s)
            .collect();
        for u in self.presence.homed_on(from, &self.config) {
            if online.binary_search_by_key(&u, |&(v, _)| v).is_err() {
                changed.push((u, Status::Offline));
            }
        }
        if changed.is_empty() {
            return;
        }
        changed.sort_unstable_by_key(|&(u, _)| u);
        for &(user, status) in &changed {
            self.presence.set(user, status);
        }
        self.stats.presence_repairs += changed.len() as u64;
        let mut viewers: Vec<UserId> = self.sessions.live_ones().map(|s| s.user).collect();
        viewers.sort_unstable();
        for viewer in viewers {
            for &(user, status) in &changed {
                let knows = self
                    .sessions
                    .live(viewer)
                    .is_some_and(|s| s.roster.contains_key(&user));
                if knows {
                    self.push_event(now, viewer, EventKind::Presence { user, status }, out);
                }
            }
        }
    }
}
