//! Cids in doubt: what a user's home shard knows of the tries of each of
//! their sends that carries a client id (`cid`), so that a message the
//! server acknowledged to any try reaches every tab once, however the
//! tries' answers interleave.
//!
//! A try is a storage job. Its answer may be `Stored` (fresh: this try
//! stored it; duplicate: an earlier try did) or an error — and an error
//! does not mean "not stored": a commit can end after the engine's
//! deadline, or its answer be lost. The client retries with the same cid,
//! sometimes while an earlier try is still running (its request timed
//! out). So a cid is *in doubt* from the submit of a try until the
//! message is known delivered and no try is in flight. Per cid, a
//! [`Tries`] counts the tries in flight and remembers the submit time of
//! the first (`first_ms`) and whether the message was delivered; each try
//! stores its submit time as the message's `ts`, and storage answers a
//! duplicate with the message as first stored, so a `Stored` answer says
//! which try stored it: one of this entry's (`ts >= first_ms`) or one
//! from before the entry existed. [`Tries::answered`] decides:
//! - the message is delivered at most once per entry: by the first
//!   `Stored` answer, fresh or duplicate, that names a try of the entry —
//!   whichever order the tries are answered in (a duplicate answered
//!   before the storing try's own answer, which may be an error, delivers;
//!   that try's answer then delivers nothing);
//! - a duplicate naming a try from before the entry delivers nothing: that
//!   try's own entry delivered it (an entry closes only once its message
//!   is known delivered);
//! - an error delivers nothing; the entry stays open until a try is
//!   answered `Stored` (the client retries).
//!
//! Safety net, for a try from before the entry submitted in the same
//! millisecond: a duplicate is not delivered when the sender's buffer
//! already holds the message.
//!
//! An entry closes once no try is in flight and the message is known
//! delivered. A cid with no entry (dropped at the bound, or its user's
//! session dropped after a panic) is judged as if alone: fresh delivers,
//! a duplicate does not, an error opens an entry.
//!
//! Invariant: a user's entries live in their live session
//! (`LiveSession::in_doubt`), or, while they have none, in the shard's
//! orphans (`shard::delivery`); at most `IN_DOUBT_CIDS_MAX` per session.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Message, MsgId};

/// What the shard knows of one cid's tries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tries {
    /// Tries submitted to storage and not answered yet.
    pub in_flight: u32,
    /// The submit time (the message `ts` it asked storage to store) of
    /// the entry's first try: a stored message with an older `ts` was
    /// stored by a try from before the entry.
    pub first_ms: u64,
    /// The message is known delivered: by an answer to a try of this
    /// entry, or because a try from before it stored it.
    pub delivered: bool,
}

/// How one try ended.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Storage answered `Stored`; `duplicate`: an earlier try stored it.
    Stored {
        message: Arc<Message>,
        duplicate: bool,
    },
    /// Storage answered an error (or handling its answer failed): it may
    /// have stored it all the same.
    Failed,
}

/// What to do about an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver `message` to both users now. `recovered`: a duplicate
    /// delivered because the try that stored it was not (it failed, or its
    /// answer is yet to come) — counted in `Stats::in_doubt_delivered`.
    Deliver {
        message: Arc<Message>,
        recovered: bool,
    },
    /// Nothing to deliver.
    Nothing,
}

impl Tries {
    /// An entry for a try submitted at `ts_ms` (not counted in flight).
    pub fn new(ts_ms: u64) -> Tries {
        Tries {
            in_flight: 0,
            first_ms: ts_ms,
            delivered: false,
        }
    }

    /// A try of this cid ended with `answer`. `buffered(id)` says whether
    /// the sender's buffer already holds message `id` (always false with
    /// no session).
    pub fn answered(&mut self, answer: Answer, buffered: impl Fn(MsgId) -> bool) -> Verdict {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Answer::Stored { message, duplicate } = answer else {
            return Verdict::Nothing;
        };
        if self.delivered {
            return Verdict::Nothing;
        }
        self.delivered = true;
        if !duplicate {
            return Verdict::Deliver {
                message,
                recovered: false,
            };
        }
        if message.ts < self.first_ms || buffered(message.id) {
            return Verdict::Nothing;
        }
        Verdict::Deliver {
            message,
            recovered: true,
        }
    }

    /// Whether the entry is still needed: a try is in flight, or the
    /// message is not known delivered (a retry's answer must decide).
    pub fn open(&self) -> bool {
        self.in_flight > 0 || !self.delivered
    }

    /// Merges `other` (the same cid's entry kept elsewhere) into this one.
    fn merge(&mut self, other: Tries) {
        self.in_flight += other.in_flight;
        self.first_ms = self.first_ms.min(other.first_ms);
        self.delivered |= other.delivered;
    }
}

/// One user's cids in doubt, oldest first, at most a bound given by the
/// caller (`IN_DOUBT_CIDS_MAX` for a session).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InDoubt {
    /// `(cid, its tries)`, oldest first; every entry [`Tries::open`].
    cids: VecDeque<(Arc<str>, Tries)>,
}

impl InDoubt {
    /// A try of `cid` submitted at `ts_ms` went to storage. Returns
    /// whether the oldest entry had to be dropped to make room for a new
    /// one (at `max`).
    pub fn submitted(&mut self, cid: Arc<str>, ts_ms: u64, max: usize) -> bool {
        let (tries, dropped) = match self.position(&cid) {
            Some(i) => (&mut self.cids[i].1, false),
            None => {
                let dropped = self.insert(cid, Tries::new(ts_ms), max);
                (&mut self.cids.back_mut().expect("just inserted").1, dropped)
            }
        };
        tries.in_flight += 1;
        dropped
    }

    /// A try of `cid` submitted at `ts_ms` ended with `answer`: the
    /// verdict, and whether the oldest entry had to be dropped (at `max`)
    /// to open one for a failure of a cid with no entry.
    pub fn answered(
        &mut self,
        cid: &str,
        ts_ms: u64,
        answer: Answer,
        buffered: impl Fn(MsgId) -> bool,
        max: usize,
    ) -> (Verdict, bool) {
        let Some(i) = self.position(cid) else {
            return alone(answer, || self.insert(cid.into(), Tries::new(ts_ms), max));
        };
        let verdict = self.cids[i].1.answered(answer, buffered);
        if !self.cids[i].1.open() {
            self.cids.remove(i);
        }
        (verdict, false)
    }

    /// Adds `cid` with `tries` (a session taking what the shard kept for
    /// its user), merged into an entry it already has. Returns whether the
    /// oldest had to be dropped (at `max`).
    pub fn adopt(&mut self, cid: Arc<str>, tries: Tries, max: usize) -> bool {
        match self.position(&cid) {
            Some(i) => {
                self.cids[i].1.merge(tries);
                false
            }
            None => self.insert(cid, tries, max),
        }
    }

    /// Sets `cid`'s entry to `tries` (removed when not open). Returns
    /// whether the oldest had to be dropped (at `max`).
    pub fn set(&mut self, cid: Arc<str>, tries: Tries, max: usize) -> bool {
        match self.position(&cid) {
            Some(i) if tries.open() => {
                self.cids[i].1 = tries;
                false
            }
            Some(i) => {
                self.cids.remove(i);
                false
            }
            None if tries.open() => self.insert(cid, tries, max),
            None => false,
        }
    }

    /// Takes every entry, oldest first.
    pub fn take(&mut self) -> VecDeque<(Arc<str>, Tries)> {
        std::mem::take(&mut self.cids)
    }

    /// The entry of `cid`, if any.
    pub fn get(&self, cid: &str) -> Option<&Tries> {
        self.position(cid).map(|i| &self.cids[i].1)
    }

    /// The cids, oldest first.
    pub fn cids(&self) -> impl Iterator<Item = &str> {
        self.cids.iter().map(|(c, _)| &**c)
    }

    pub fn len(&self) -> usize {
        self.cids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cids.is_empty()
    }

    fn position(&self, cid: &str) -> Option<usize> {
        self.cids.iter().position(|(c, _)| &**c == cid)
    }

    fn insert(&mut self, cid: Arc<str>, tries: Tries, max: usize) -> bool {
        let full = self.cids.len() >= max;
        if full {
            self.cids.pop_front();
        }
        self.cids.push_back((cid, tries));
        full
    }
}

/// The verdict on a try of a cid with no entry: fresh delivers, a
/// duplicate does not (its storing try delivered it), an error opens an
/// entry (`open`, returning whether it dropped the oldest).
pub fn alone(answer: Answer, open: impl FnOnce() -> bool) -> (Verdict, bool) {
    match answer {
        Answer::Stored {
            message,
            duplicate: false,
        } => {
            let recovered = false;
            (Verdict::Deliver { message, recovered }, false)
        }
        Answer::Stored { .. } => (Verdict::Nothing, false),
        Answer::Failed => (Verdict::Nothing, open()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message 9 as stored by the try submitted at `ts`.
    fn message(ts: u64) -> Arc<Message> {
        Arc::new(Message {
            id: 9,
            from: 1,
            to: 2,
            text: Arc::from("hi"),
            ts,
            cid: Some(Arc::from("c")),
        })
    }

    /// One step of a table: a try submitted at a time, or answered (the
    /// stored message names the try that stored it by its submit time).
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Submit(u64),
        Fresh(u64),
        Duplicate(u64),
        Failed,
    }
    use Step::*;

    /// Runs `steps` on one cid (nothing buffered), and checks how many
    /// answers delivered and whether the entry is left open.
    fn check(steps: &[Step], delivered: usize, left_open: bool) {
        let mut doubt = InDoubt::default();
        let mut delivers = 0;
        for &step in steps {
            let answer = match step {
                Submit(ts) => {
                    doubt.submitted(Arc::from("c"), ts, 8);
                    continue;
                }
                Fresh(ts) | Duplicate(ts) => Answer::Stored {
                    message: message(ts),
                    duplicate: matches!(step, Duplicate(_)),
                },
                Failed => Answer::Failed,
            };
            let (verdict, _) = doubt.answered("c", 0, answer, |_| false, 8);
            delivers += usize::from(verdict != Verdict::Nothing);
        }
        assert_eq!(delivers, delivered, "{steps:?}: deliveries");
        assert_eq!(doubt.get("c").is_some(), left_open, "{steps:?}: open");
    }

    #[test]
    fn every_interleaving_of_tries_delivers_a_stored_message_once() {
        // One try; a duplicate of a try before the entry (it delivered).
        check(&[Submit(5), Fresh(5)], 1, false);
        check(&[Submit(5), Duplicate(1)], 0, false);
        check(&[Submit(5), Failed], 0, true);
        // Retries after a failure: the failed try stored it, or a retry.
        check(&[Submit(5), Failed, Submit(6), Duplicate(5)], 1, false);
        check(&[Submit(5), Failed, Submit(6), Fresh(6)], 1, false);
        check(
            &[
                Submit(5),
                Failed,
                Submit(6),
                Failed,
                Submit(7),
                Duplicate(6),
            ],
            1,
            false,
        );
        // Two at once (a client timeout, then a retry): the first stored
        // it and is answered an error after the retry's duplicate, or
        // before it.
        check(&[Submit(5), Submit(6), Duplicate(5), Failed], 1, false);
        check(&[Submit(5), Submit(6), Failed, Duplicate(5)], 1, false);
        // Two at once, one stores, the other finds it: either order.
        check(&[Submit(5), Submit(6), Duplicate(5), Fresh(5)], 1, false);
        check(&[Submit(5), Submit(6), Fresh(5), Duplicate(5)], 1, false);
        // In doubt already, then two at once, either order.
        check(
            &[
                Submit(5),
                Failed,
                Submit(6),
                Submit(7),
                Duplicate(6),
                Fresh(6),
            ],
            1,
            false,
        );
        check(
            &[
                Submit(5),
                Failed,
                Submit(6),
                Submit(7),
                Fresh(6),
                Duplicate(6),
            ],
            1,
            false,
        );
        // A try before the entry stored and delivered it (its answer was
        // lost): two retries at once find it, one fails.
        check(&[Submit(5), Submit(6), Duplicate(1), Failed], 0, false);
        check(&[Submit(5), Submit(6), Failed, Duplicate(1)], 0, false);
        // Both fail: still open for the next retry.
        check(&[Submit(5), Submit(6), Failed, Failed], 0, true);
        check(
            &[
                Submit(5),
                Submit(6),
                Failed,
                Failed,
                Submit(7),
                Duplicate(6),
            ],
            1,
            false,
        );
    }

    #[test]
    fn a_duplicate_the_buffer_holds_is_not_delivered_again() {
        let mut doubt = InDoubt::default();
        doubt.submitted(Arc::from("c"), 5, 8);
        doubt.answered("c", 5, Answer::Failed, |_| false, 8);
        doubt.submitted(Arc::from("c"), 6, 8);
        let dup = Answer::Stored {
            message: message(5),
            duplicate: true,
        };
        let (verdict, _) = doubt.answered("c", 6, dup, |id| id == 9, 8);
        assert_eq!(verdict, Verdict::Nothing);
        assert!(doubt.is_empty());
    }

    #[test]
    fn entries_are_bounded_dropping_the_oldest() {
        let mut doubt = InDoubt::default();
        for i in 0..3 {
            assert!(!doubt.submitted(Arc::from(format!("c{i}")), i, 3));
        }
        assert!(doubt.submitted(Arc::from("c3"), 3, 3));
        assert_eq!(doubt.cids().collect::<Vec<_>>(), ["c1", "c2", "c3"]);
        // A try of a cid dropped meanwhile is judged alone: its duplicate
        // is not delivered, its failure opens an entry (dropping c1).
        let dup = Answer::Stored {
            message: message(0),
            duplicate: true,
        };
        let (verdict, _) = doubt.answered("c0", 0, dup, |_| false, 3);
        assert_eq!(verdict, Verdict::Nothing);
        let (verdict, dropped) = doubt.answered("c0", 0, Answer::Failed, |_| false, 3);
        assert_eq!((verdict, dropped), (Verdict::Nothing, true));
        assert_eq!(doubt.cids().collect::<Vec<_>>(), ["c2", "c3", "c0"]);
    }
}
