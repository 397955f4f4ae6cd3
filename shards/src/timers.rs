//! Deadlines of one shard, ordered by time. Each owner (a tab, a session)
//! remembers the deadline it armed, so a timer is removed exactly when it is
//! re-armed or its owner goes: the set never holds stale entries and its
//! size is bounded by the number of tabs and sessions. A session's timers
//! sit in [`Deadline`] slots and a tab's in its [`crate::session::TabState`],
//! so arming and disarming are paired in those two places only.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::{Sid, UserId};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimerKey {
    /// A tab's outstanding poll reaches its `wait`.
    Poll(Sid),
    /// A tab has had no poll outstanding for the tab timeout.
    TabIdle(Sid),
    /// A session with no tabs ends (offline) when its grace runs out.
    Grace(UserId),
    /// A live session's roster is due for a re-read.
    Refresh(UserId),
}

/// The deadline set.
#[derive(Default, Debug, Serialize, Deserialize)]
pub struct Timers {
    /// `(deadline_ms, key)`, earliest first.
    set: BTreeSet<(u64, TimerKey)>,
}

impl Timers {
    /// Arms `key` at `at_ms`.
    pub fn arm(&mut self, at_ms: u64, key: TimerKey) {
        let inserted = self.set.insert((at_ms, key));
        debug_assert!(inserted, "timer armed twice: {key:?}");
    }

    /// Disarms `key` armed at `at_ms` (a no-op when it already fired).
    pub fn disarm(&mut self, at_ms: u64, key: TimerKey) {
        self.set.remove(&(at_ms, key));
    }

    /// Disarms every timer whose key matches `which`. A scan of the whole
    /// set: only for cleaning up after a failure (`Shard::drop_user`).
    pub fn disarm_where(&mut self, mut which: impl FnMut(&TimerKey) -> bool) {
        self.set.retain(|(_, key)| !which(key));
    }

    /// Removes and returns the earliest timer due at `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, TimerKey)> {
        let first = *self.set.first()?;
        if first.0 <= now_ms {
            self.set.pop_first()
        } else {
            None
        }
    }

    /// How many timers are armed.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is armed.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// One owner's slot for one timer: remembers when `key` is armed, so
/// re-arming first disarms the old deadline and the owner going disarms it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deadline {
    /// The timer this slot arms.
    key: TimerKey,
    /// When it is armed for; `None` while disarmed.
    at_ms: Option<u64>,
}

impl Deadline {
    /// A disarmed slot for `key`.
    pub fn new(key: TimerKey) -> Deadline {
        Deadline { key, at_ms: None }
    }

    /// When the timer is armed for, if it is.
    pub fn at_ms(&self) -> Option<u64> {
        self.at_ms
    }

    /// Whether the timer is armed.
    pub fn is_armed(&self) -> bool {
        self.at_ms.is_some()
    }

    /// Arms the timer at `at_ms`, disarming any earlier deadline.
    pub fn arm(&mut self, timers: &mut Timers, at_ms: u64) {
        self.disarm(timers);
        timers.arm(at_ms, self.key);
        self.at_ms = Some(at_ms);
    }

    /// Disarms the timer. Also what the owner calls when it fired (the
    /// timer is then already out of the set).
    pub fn disarm(&mut self, timers: &mut Timers) {
        if let Some(at) = self.at_ms.take() {
            timers.disarm(at, self.key);
        }
    }
}
