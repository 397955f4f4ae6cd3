//! Deadlines of one shard, ordered by time. Each owner (a tab, a session)
//! remembers the deadline it armed, so a timer is removed exactly when it is
//! re-armed or its owner goes, and the set's size is bounded by the number
//! of tabs and sessions (one per tab, two per live session: grace and
//! roster refresh). [`Timers::arm`] and [`Timers::disarm`] are called only
//! by the owners' types, which keep each pair together: a session's
//! [`Deadline`] slots (`arm` disarms the old deadline first, `disarm`), and
//! a tab's methods in `session.rs`, which read its one timer from its
//! [`crate::session::TabState`] (`Tab::attach` arms it, `Tab::enter`
//! disarms the old state's and arms the new one's, `Tab::detach` disarms
//! it). The one other remover is [`Timers::disarm_where`], for an owner
//! whose slots cannot be trusted (supervision's `drop_user`). A timer
//! that still outlives its owner is counted and skipped when it fires
//! (`shard/time.rs`).

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

impl TimerKey {
    /// The user whose tab or session armed this timer.
    pub fn user(self) -> UserId {
        match self {
            TimerKey::Poll(sid) | TimerKey::TabIdle(sid) => sid.user,
            TimerKey::Grace(user) | TimerKey::Refresh(user) => user,
        }
    }
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

    /// Removes and returns the earliest timer due at `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, TimerKey)> {
        let first = *self.set.first()?;
        if first.0 <= now_ms {
            self.set.pop_first()
        } else {
            None
        }
    }

    /// Disarms every timer whose key `doomed` picks; returns how many. A
    /// scan of the whole set: for dropping an owner whose slots may not be
    /// trusted (supervision), never on a hot path.
    pub fn disarm_where(&mut self, mut doomed: impl FnMut(TimerKey) -> bool) -> usize {
        let before = self.set.len();
        self.set.retain(|&(_, key)| !doomed(key));
        before - self.set.len()
    }

    /// Every armed timer, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, TimerKey)> + '_ {
        self.set.iter().copied()
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
