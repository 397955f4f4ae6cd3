//! Roster re-reads. Every live session re-reads its roster each
//! `roster_refresh_ms`. An admin `roster-changed` for `user` re-reads
//! `user`'s roster, then sends `RosterTouched` to every shard (this one
//! included); each re-reads the rosters of its live sessions that may
//! disagree about `user` (their view differs, or a read of theirs is in
//! flight that may have read the directory before the change), and of its
//! sessions still loading once they are live, and acks; the admin call is
//! answered when every shard has acked, so the change is in force on both
//! sides when it returns `ok` — and it returns `unavailable` (retry) when
//! any re-read failed or was shed.
//!
//! Reads of one session may be answered in any order (jobs run on several
//! storage threads, and each reads the directory when it runs). A session
//! applies a read only if it was issued after the read its roster holds
//! (`LiveSession::roster_read`; job numbers grow in issue order); an older
//! one is dropped and counted (`Stats::stale_roster_reads`). So once a read
//! issued after a change is applied, no read from before it lands on top.
//!
//! Invariants: a live session's refresh timer is armed except while its
//! periodic re-read is in flight; a change is answered once, after exactly
//! `shard_count` acks; a session's roster never goes back to an older read.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::jobs::Pending;
use super::{reply, ChangeId, Output, PeerMsg, Shard};
use crate::limits;
use crate::model::{
    Contact, ErrorCode, EventKind, Friend, ReplyTo, Response, RosterChange, ShardId, Status,
    StorageJob, StorageOutput, StorageResult, UserId,
};
use crate::session::LiveSession;

/// Why a roster is re-read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Refresh {
    /// The session's refresh interval ran out.
    Interval,
    /// Part `part` of a roster change (see [`RosterChanges::parts`]).
    Change { part: u64 },
}

/// Admin `roster-changed` calls started here, and this shard's parts of
/// changes started anywhere.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct RosterChanges {
    /// Calls waiting for every shard's ack, by the change id minted here.
    waits: HashMap<ChangeId, ChangeWait>,
    /// The last change id minted here.
    last_change: u64,
    /// This shard's parts of changes (re-reads still in flight), by part
    /// number; numbered here because change ids are unique per origin only.
    parts: HashMap<u64, ChangePart>,
    /// The last part number given out.
    last_part: u64,
}

/// An admin `roster-changed` waiting for every shard's ack.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChangeWait {
    /// Where the admin call's answer goes.
    reply: ReplyTo,
    /// When it stops waiting (`ROSTER_CHANGE_WAIT_MS` after it began):
    /// answered `unavailable` and forgotten, an ack having been lost.
    #[serde(default)]
    deadline_ms: u64,
    /// Shards yet to ack.
    acks_left: usize,
    /// Whether every shard so far re-read its rosters.
    ok: bool,
}

/// This shard's re-reads belonging to one `RosterTouched`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChangePart {
    /// The shard to ack to.
    origin: ShardId,
    /// The change to ack.
    change: ChangeId,
    /// Re-reads still in flight.
    remaining: usize,
    /// Whether every re-read so far succeeded.
    ok: bool,
}

impl RosterChanges {
    /// Mints a change answered at `reply` once `acks` shards acked, or
    /// at `deadline_ms`.
    fn begin(&mut self, reply: ReplyTo, acks: usize, deadline_ms: u64) -> ChangeId {
        self.last_change += 1;
        let change = ChangeId(self.last_change);
        let wait = ChangeWait {
            reply,
            deadline_ms,
            acks_left: acks,
            ok: true,
        };
        self.waits.insert(change, wait);
        change
    }

    /// Forgets every call waiting for acks, unanswered: their connections
    /// belonged to a process that handed over (`handover.rs`).
    pub(super) fn forget_waits(&mut self) {
        self.waits.clear();
    }

    /// Forgets this shard's parts of changes (their re-reads went to a
    /// process that handed over).
    pub(super) fn forget_parts(&mut self) {
        self.parts.clear();
    }

    /// Counts one ack; returns the finished wait after the last.
    fn acked(&mut self, change: ChangeId, ok: bool) -> Option<ChangeWait> {
        let wait = self.waits.get_mut(&change)?;
        wait.acks_left -= 1;
        wait.ok &= ok;
        if wait.acks_left > 0 {
            return None;
        }
        self.waits.remove(&change)
    }

    /// Takes out every wait whose deadline passed by `now`, by change id.
    fn expired(&mut self, now: u64) -> Vec<ChangeWait> {
        let mut ids: Vec<ChangeId> = self
            .waits
            .iter()
            .filter(|(_, w)| w.deadline_ms <= now)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable_by_key(|c| c.0);
        ids.iter().filter_map(|id| self.waits.remove(id)).collect()
    }

    /// Calls still waiting for acks.
    pub(super) fn waiting(&self) -> usize {
        self.waits.len()
    }

    /// Counts one re-read of part `part`; returns the finished part after
    /// the last.
    fn part_done(&mut self, part: u64, ok: bool) -> Option<ChangePart> {
        let p = self.parts.get_mut(&part)?;
        p.remaining -= 1;
        p.ok &= ok;
        if p.remaining > 0 {
            return None;
        }
        self.parts.remove(&part)
    }
}

impl Shard {
    /// Admin `roster-changed`: re-read `user`'s roster first.
    pub(super) fn roster_changed(&mut self, to: ReplyTo, user: UserId, out: &mut Vec<Output>) {
        let job = super::jobs::ReplyJob::RosterChanged { user };
        self.ask_storage(to, job, StorageJob::LoadRoster { user }, out);
    }

    /// `user`'s roster was re-read (job `read`) for an admin
    /// `roster-changed`: apply it and ask every shard to refresh the other
    /// side.
    pub(super) fn roster_change_read(
        &mut self,
        now: u64,
        to: ReplyTo,
        user: UserId,
        read: u64,
        friends: Vec<Friend>,
        out: &mut Vec<Output>,
    ) {
        let ids: Arc<[UserId]> = friends.iter().map(|f| f.id).collect();
        self.apply_roster(now, user, read, friends, out);
        let deadline = now + limits::ROSTER_CHANGE_WAIT_MS;
        let change = self.changes.begin(to, self.config.shard_count, deadline);
        for shard in 0..self.config.shard_count {
            let msg = PeerMsg::RosterTouched {
                user,
                friends: ids.clone(),
                origin: self.config.shard,
                change,
            };
            self.send_to(now, shard, msg, out);
        }
    }

    /// `PeerMsg::RosterTouched` arrived: re-read the rosters of the
    /// sessions here that may disagree with `friends` about `user`, then
    /// ack. Those are the live sessions whose view of `user` disagrees;
    /// the live sessions with a read in flight issued after the one they
    /// hold (it may have read the directory before the change and land
    /// after the ack: the re-read issued now is newer, so once it is
    /// applied that one is dropped); and every session still loading (its
    /// load may have read the directory before the change: it re-reads
    /// once live, see `Session::Loading::rereads`). The directory was
    /// reloaded before this message was sent, so a read issued now sees
    /// the change. Users are taken in id order, so a run replays.
    ///
    /// The ack says `ok` only if every one of them re-read: a re-read shed
    /// for `JOBS_IN_FLIGHT_MAX`, sessions beyond `ROSTER_TOUCHES_MAX`, a
    /// loading session that already remembers `LOADING_REREADS_MAX`
    /// changes, or any session to re-read on a draining shard (which
    /// starts no storage job for a change) make it `ok: false`, and the
    /// admin call fails (retry).
    pub(super) fn roster_touched(
        &mut self,
        now: u64,
        user: UserId,
        friends: &[UserId],
        origin: ShardId,
        change: ChangeId,
        out: &mut Vec<Output>,
    ) {
        let reads = self.jobs.roster_reads();
        let read_in_flight =
            |s: &LiveSession| reads.get(&s.user).is_some_and(|&r| r > s.roster_read);
        let mut live: Vec<UserId> = self
            .sessions
            .live_ones()
            .filter(|s| s.user != user)
            .filter(|s| {
                s.roster.contains_key(&user) != friends.contains(&s.user) || read_in_flight(s)
            })
            .map(|s| s.user)
            .collect();
        live.sort_unstable();
        let loading = self.sessions.loading_users();
        let mut ok = live.len() + loading.len() <= limits::ROSTER_TOUCHES_MAX;
        let loading_room = limits::ROSTER_TOUCHES_MAX.saturating_sub(live.len());
        live.truncate(limits::ROSTER_TOUCHES_MAX);
        if self.is_draining() {
            // A stopping shard starts no re-read, as for the periodic ones
            // (`refresh_due`): the stop waits only for the jobs in flight
            // when its shard got there, and a hand-over takes the state of
            // a shard that is frozen once those are done (its results owed
            // to the old process would never come to the new one). So each
            // re-read is shed: the change acks not ok, the admin call fails
            // and the web app retries it, at the server that serves next.
            let ok = live.is_empty() && loading.is_empty();
            self.send_to(now, origin, PeerMsg::RosterAck { change, ok }, out);
            return;
        }
        self.changes.last_part += 1;
        let part = self.changes.last_part;
        let mut started = 0;
        for f in live {
            let why = Refresh::Change { part };
            match self.job(Pending::Refresh { user: f, why }) {
                Some(job) => {
                    out.push(Output::Storage {
                        job,
                        request: StorageJob::LoadRoster { user: f },
                    });
                    started += 1;
                }
                None => ok = false,
            }
        }
        for l in loading.into_iter().take(loading_room) {
            if self.sessions.reread_once_loaded(l, part) {
                started += 1;
            } else {
                ok = false;
            }
        }
        if started == 0 {
            self.send_to(now, origin, PeerMsg::RosterAck { change, ok }, out);
            return;
        }
        let p = ChangePart {
            origin,
            change,
            remaining: started,
            ok,
        };
        self.changes.parts.insert(part, p);
    }

    /// `user`'s session went live with change part `part` noted while it
    /// loaded: re-read its roster now (the part fails if that is shed, as
    /// it is on a draining shard).
    pub(super) fn reread_for_change(
        &mut self,
        now: u64,
        user: UserId,
        part: u64,
        out: &mut Vec<Output>,
    ) {
        let why = Refresh::Change { part };
        // Shed on a draining shard, as in `roster_touched`.
        let job = (!self.is_draining()).then(|| self.job(Pending::Refresh { user, why }));
        match job.flatten() {
            Some(job) => out.push(Output::Storage {
                job,
                request: StorageJob::LoadRoster { user },
            }),
            None => self.change_part_done(now, part, false, out),
        }
    }

    /// One re-read of change part `part` is over (`ok`: it succeeded, or
    /// there was nothing to re-read after all); after the last, the part
    /// acks to the change's origin.
    pub(super) fn change_part_done(
        &mut self,
        now: u64,
        part: u64,
        ok: bool,
        out: &mut Vec<Output>,
    ) {
        if let Some(p) = self.changes.part_done(part, ok) {
            let ack = PeerMsg::RosterAck {
                change: p.change,
                ok: p.ok,
            };
            self.send_to(now, p.origin, ack, out);
        }
    }

    /// `PeerMsg::RosterAck` arrived: after the last, answer the admin call.
    pub(super) fn roster_acked(&mut self, change: ChangeId, ok: bool, out: &mut Vec<Output>) {
        let Some(wait) = self.changes.acked(change, ok) else {
            return;
        };
        let response = if wait.ok {
            Response::Done
        } else {
            Response::fail(
                ErrorCode::Unavailable,
                "rosters could not all be re-read (storage failed or busy): retry",
            )
        };
        reply(out, wait.reply, response);
    }

    /// Answers `unavailable` every admin call whose acks did not all come
    /// within `ROSTER_CHANGE_WAIT_MS` (a `RosterTouched` or `RosterAck`
    /// was dropped on a full outbox), and forgets it. A late ack then
    /// finds no wait and is ignored.
    pub(super) fn expire_roster_waits(&mut self, now: u64, out: &mut Vec<Output>) {
        for wait in self.changes.expired(now) {
            self.stats.roster_waits_expired += 1;
            let response = Response::fail(
                ErrorCode::Unavailable,
                "not every shard acknowledged the change in time: retry",
            );
            reply(out, wait.reply, response);
        }
    }

    /// The roster re-read `read` finished: apply it (unless a newer read
    /// was), re-arm the session's refresh, and count it towards its
    /// change's ack. A stale read still counts: the session holds a newer
    /// one.
    pub(super) fn roster_refreshed(
        &mut self,
        now: u64,
        user: UserId,
        read: u64,
        why: Refresh,
        result: StorageResult,
        out: &mut Vec<Output>,
    ) {
        let ok = result.is_ok();
        if let Ok(StorageOutput::Roster { friends }) = result {
            self.apply_roster(now, user, read, friends, out);
        }
        if let Some(session) = self.sessions.live_mut(user) {
            // A change's re-read leaves a pending periodic one alone.
            if why == Refresh::Interval || !session.refresh.is_armed() {
                let at = now + self.config.roster_refresh_ms;
                session.refresh.arm(&mut self.timers, at);
            }
        }
        if let Refresh::Change { part } = why {
            self.change_part_done(now, part, ok, out);
        }
    }

    /// `user`'s refresh interval ran out: re-read the roster, or try again
    /// after another interval when too many jobs are in flight or the
    /// shard is draining.
    pub(super) fn refresh_due(&mut self, now: u64, user: UserId, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.live_mut(user) else {
            return; // `time` checked it is there
        };
        session.refresh.disarm(&mut self.timers);
        let why = Refresh::Interval;
        // A stopping server starts no periodic re-read (its stop waits for
        // the storage jobs in flight): the timer is re-armed as if shed.
        let job = (!self.is_draining()).then(|| self.job(Pending::Refresh { user, why }));
        match job.flatten() {
            Some(job) => out.push(Output::Storage {
                job,
                request: StorageJob::LoadRoster { user },
            }),
            None => {
                if let Some(session) = self.sessions.live_mut(user) {
                    let at = now + self.config.roster_refresh_ms;
                    session.refresh.arm(&mut self.timers, at);
                }
            }
        }
    }

    /// Replaces a live session's roster with `friends`, read by job
    /// `read`, telling its tabs what was added and removed — unless the
    /// session holds a read issued after it (then `read` is stale: it is
    /// dropped and counted).
    fn apply_roster(
        &mut self,
        now: u64,
        user: UserId,
        read: u64,
        friends: Vec<Friend>,
        out: &mut Vec<Output>,
    ) {
        let Some(session) = self.sessions.live_mut(user) else {
            return;
        };
        if read < session.roster_read {
            self.stats.stale_roster_reads += 1;
            return;
        }
        session.roster_read = read;
        let new = friends.into_iter().map(|f| (f.id, f.name)).collect();
        let old = std::mem::replace(&mut session.roster, new);
        let new = &session.roster;
        let mut events = Vec::new();
        for (&id, name) in new.iter().filter(|(id, _)| !old.contains_key(id)) {
            let presence = self.presence.of(id);
            events.push(roster_event(RosterChange::Added, id, name, presence));
        }
        for (&id, name) in old.iter().filter(|(id, _)| !new.contains_key(id)) {
            events.push(roster_event(
                RosterChange::Removed,
                id,
                name,
                Status::Offline,
            ));
        }
        for kind in events {
            self.push_event(now, user, kind, out);
        }
    }
}

fn roster_event(change: RosterChange, id: UserId, name: &Arc<str>, presence: Status) -> EventKind {
    EventKind::Roster {
        change,
        user: Contact {
            id,
            name: name.clone(),
            presence,
        },
    }
}
