//! Per-user rate limits: one token bucket per kind of call, kept in the
//! user's live session and refilled from the `now` each call brings (no
//! clock reads, no timers). A call that finds its bucket empty is answered
//! `rate_limited` (HTTP 429) and costs nothing else: no storage job, no
//! event, no broadcast.
//!
//! Invariant: a user makes at most `burst + per_s × seconds` calls of one
//! kind in any window of that many seconds, whatever the number of tabs or
//! connections (the bucket is per user, on the user's one home shard).
//!
//! The arithmetic is integer, in thousandths of a call, so a replayed
//! sequence of inputs gives the same answers.

use serde::{Deserialize, Serialize};

/// Thousandths of a call: the unit buckets count in.
const MILLI: u64 = 1_000;

/// A limit: `per_s` calls a second on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Calls a second the bucket refills by.
    pub per_s: u32,
    /// Calls a full bucket holds (what a user may make at once).
    pub burst: u32,
}

impl Rate {
    /// A limit of `per_s` calls a second, `burst` at once; both at least 1.
    pub const fn new(per_s: u32, burst: u32) -> Rate {
        assert!(
            per_s >= 1 && burst >= 1,
            "a rate limit needs per_s and burst >= 1"
        );
        Rate { per_s, burst }
    }
}

/// The calls that are rate-limited, each with a bucket of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `/send`: each is a durable write and an event for two sessions.
    Send,
    /// `/typing`: an event for the friend's session.
    Typing,
    /// `/presence`: a broadcast to every shard and an event for every
    /// friend.
    Presence,
    /// `/ui`: a durable write and an event for every tab.
    Ui,
    /// `/read`: a durable write and an event for both sessions.
    Read,
    /// `/history`: a storage read.
    History,
    /// `/connect` to a live session: a tab attached (and maybe another
    /// detached). Connects waiting for a session to load are bounded by
    /// `CONNECTS_WAITING_MAX` instead.
    Connect,
    /// `/poll` answered at once (`wait=0`, or news already there): each is
    /// a call through the home shard and an answer built. A held poll is
    /// not counted (one per tab at a time, bounded by the tab count).
    Poll,
}

impl Kind {
    /// Every kind, in the order buckets are kept.
    pub const ALL: [Kind; 8] = [
        Kind::Send,
        Kind::Typing,
        Kind::Presence,
        Kind::Ui,
        Kind::Read,
        Kind::History,
        Kind::Connect,
        Kind::Poll,
    ];

    /// The kind's name, as in settings (`SWITCHBOARD_RATE_SEND`) and
    /// answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Send => "send",
            Kind::Typing => "typing",
            Kind::Presence => "presence",
            Kind::Ui => "ui",
            Kind::Read => "read",
            Kind::History => "history",
            Kind::Connect => "connect",
            Kind::Poll => "poll",
        }
    }

    /// Where the kind's rate and bucket are kept.
    fn index(self) -> usize {
        self as usize
    }

    /// The default limit: generous for people, tight for scripts. Reasons
    /// in `limits.rs`.
    pub const fn default_rate(self) -> Rate {
        use crate::limits as l;
        match self {
            Kind::Send => l::RATE_SEND_DEFAULT,
            Kind::Typing => l::RATE_TYPING_DEFAULT,
            Kind::Presence => l::RATE_PRESENCE_DEFAULT,
            Kind::Ui => l::RATE_UI_DEFAULT,
            Kind::Read => l::RATE_READ_DEFAULT,
            Kind::History => l::RATE_HISTORY_DEFAULT,
            Kind::Connect => l::RATE_CONNECT_DEFAULT,
            Kind::Poll => l::RATE_POLL_DEFAULT,
        }
    }
}

/// The limit of each kind (`None`: not limited). Part of the shard's
/// `Config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Indexed by `Kind::index`.
    rates: [Option<Rate>; Kind::ALL.len()],
}

impl Default for RateLimits {
    /// Every kind at its default limit.
    fn default() -> RateLimits {
        RateLimits {
            rates: Kind::ALL.map(|k| Some(k.default_rate())),
        }
    }
}

impl RateLimits {
    /// No limits at all (load tests, or a deployment that limits in front).
    pub fn unlimited() -> RateLimits {
        RateLimits {
            rates: [None; Kind::ALL.len()],
        }
    }

    /// The limit of `kind`, if any.
    pub fn get(&self, kind: Kind) -> Option<Rate> {
        self.rates[kind.index()]
    }

    /// Sets the limit of `kind` (`None`: not limited).
    pub fn set(&mut self, kind: Kind, rate: Option<Rate>) {
        self.rates[kind.index()] = rate;
    }
}

/// One user's buckets, one per kind. A new set is full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// Indexed by `Kind::index`.
    buckets: [Bucket; Kind::ALL.len()],
}

impl Buckets {
    /// Takes one call of `kind` at `now_ms` under `limits`: true if the
    /// call may go ahead, false if the bucket is empty (nothing taken).
    pub fn take(&mut self, limits: &RateLimits, kind: Kind, now_ms: u64) -> bool {
        match limits.get(kind) {
            None => true,
            Some(rate) => self.buckets[kind.index()].take(rate, now_ms),
        }
    }
}

/// A token bucket kept as what was used: empty `used` is a full bucket, so
/// the default needs no rate to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    /// Thousandths of a call used and not yet refilled, at most
    /// `burst × 1000`.
    used_milli: u64,
    /// When `used_milli` was last brought up to date.
    at_ms: u64,
}

impl Bucket {
    fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        // `per_s` calls a second is `per_s` thousandths a millisecond.
        let elapsed_ms = now_ms.saturating_sub(self.at_ms);
        let refilled = elapsed_ms.saturating_mul(u64::from(rate.per_s));
        self.used_milli = self.used_milli.saturating_sub(refilled);
        self.at_ms = self.at_ms.max(now_ms);
        if self.used_milli + MILLI > u64::from(rate.burst) * MILLI {
            return false;
        }
        self.used_milli += MILLI;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls allowed out of `calls` made `gap_ms` apart from `start_ms`.
    fn allowed(b: &mut Bucket, rate: Rate, start_ms: u64, calls: u64, gap_ms: u64) -> u64 {
        (0..calls)
            .filter(|i| b.take(rate, start_ms + i * gap_ms))
            .count() as u64
    }

    #[test]
    fn burst_then_rate_then_full_again() {
        let rate = Rate::new(5, 20);
        let mut b = Bucket::default();
        // A burst at one instant: exactly `burst` go through.
        assert_eq!(allowed(&mut b, rate, 1_000_000, 100, 0), 20);
        // One more a fifth of a second later, not before.
        assert!(!b.take(rate, 1_000_199));
        assert!(b.take(rate, 1_000_200));
        // Calls every 10 ms for 10 s from the next refill: 5 a second get
        // through.
        assert_eq!(allowed(&mut b, rate, 1_000_400, 1_000, 10), 50);
        // After burst / per_s seconds of quiet the bucket is full again.
        assert_eq!(allowed(&mut b, rate, 1_020_000, 100, 0), 20);
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing_and_unlimited_always_allows() {
        let rate = Rate::new(1, 1);
        let mut b = Bucket::default();
        assert!(b.take(rate, 5_000));
        assert!(!b.take(rate, 4_000));
        assert!(!b.take(rate, 5_999));
        assert!(b.take(rate, 6_000));
        let mut buckets = Buckets::default();
        let none = RateLimits::unlimited();
        assert!((0..10_000).all(|_| buckets.take(&none, Kind::Send, 0)));
    }
}
