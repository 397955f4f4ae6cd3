//! Races the randomized simulation found, replayed here step by step on
//! one shard: storage jobs are answered only when a test says so, in the
//! order it says, with what the directory held when the job ran.

use std::sync::Arc;

use crate::model::{
    EventKind, Friend, Message, ReplyTo, Request, Response, Sid, StorageError, StorageJob,
    StorageOutput, StorageResult, UserId,
};
use crate::trace::{Note, Traced};
use crate::{Config, Input, Output, Shard};

const ALICE: UserId = 1;
const BOB: UserId = 2;

/// One shard, its clock, and what it asked for that is not yet taken.
struct One {
    shard: Shard,
    now: u64,
    /// Storage jobs asked for, oldest first.
    jobs: Vec<(u64, StorageJob)>,
    /// Replies, by request number.
    replies: Vec<(u64, Response)>,
    /// Trace notes, oldest first.
    notes: Vec<(UserId, Note)>,
    next_req: u64,
}

impl One {
    fn new(tune: impl Fn(&mut Config)) -> One {
        let mut config = Config::new(0, 1);
        config.rate_limits = crate::ratelimit::RateLimits::unlimited();
        tune(&mut config);
        One {
            shard: Shard::new(config),
            now: 1_000,
            jobs: Vec::new(),
            replies: Vec::new(),
            notes: Vec::new(),
            next_req: 0,
        }
    }

    fn feed(&mut self, input: Input) {
        let mut out = Vec::new();
        self.shard.handle(self.now, input, &mut out);
        for o in out {
            match o {
                Output::Reply { to, response } => self.replies.push((to.req, response)),
                Output::Storage { job, request } => self.jobs.push((job, request)),
                Output::Peer { msg, .. } => panic!("one shard sent a peer message: {msg:?}"),
                Output::Trace { user, note } => self.notes.push((user, note)),
            }
        }
    }

    /// Starts a request; returns its number.
    fn start(&mut self, request: Request) -> u64 {
        self.next_req += 1;
        let reply = ReplyTo {
            shard: 0,
            req: self.next_req,
        };
        self.feed(Input::Request { reply, request });
        self.next_req
    }

    /// Takes the reply to request `req`, if it came.
    fn take(&mut self, req: u64) -> Option<Response> {
        let i = self.replies.iter().position(|(r, _)| *r == req)?;
        Some(self.replies.remove(i).1)
    }

    /// Takes the oldest job asked for that matches.
    fn job(&mut self, f: impl Fn(&StorageJob) -> bool) -> (u64, StorageJob) {
        let i = self.jobs.iter().position(|(_, r)| f(r));
        let i = i.unwrap_or_else(|| panic!("no such job in {:?}", self.jobs));
        self.jobs.remove(i)
    }

    fn answer(&mut self, job: u64, result: StorageResult) {
        self.feed(Input::Storage { job, result });
    }

    /// Connects a tab of `user`, answering its load with `friends`.
    fn connect(&mut self, user: UserId, friends: &[UserId]) -> Sid {
        let sid = Sid { user, secret: 7 };
        let req = self.start(Request::Connect {
            user,
            tab: None,
            sid,
        });
        let (job, _) = self.job(|r| matches!(r, StorageJob::LoadSession { .. }));
        let loaded = StorageOutput::Session {
            name: Some(Arc::from(format!("user{user}"))),
            friends: roster(friends),
            ui: None,
            unread: Vec::new(),
        };
        self.answer(job, Ok(loaded));
        assert!(matches!(self.take(req), Some(Response::Connected(_))));
        sid
    }

    fn roster_of(&self, user: UserId) -> Vec<UserId> {
        let session = self.shard.live_session(user).expect("live session");
        session.roster.keys().copied().collect()
    }
}

fn roster(ids: &[UserId]) -> Vec<Friend> {
    ids.iter()
        .map(|&id| Friend {
            id,
            name: Arc::from(format!("user{id}")),
        })
        .collect()
}

fn read(ids: &[UserId]) -> StorageResult {
    Ok(StorageOutput::Roster {
        friends: roster(ids),
    })
}

fn is_roster_read_of(user: UserId) -> impl Fn(&StorageJob) -> bool {
    move |r| matches!(r, StorageJob::LoadRoster { user: u } if *u == user)
}

/// Seed 70: alice's periodic re-read ran before (alice, bob) was removed
/// and was answered after `roster-changed` for bob had returned `Done`;
/// it put bob back in alice's roster.
#[test]
fn a_roster_read_answered_after_a_newer_one_was_applied_is_dropped() {
    let mut w = One::new(|c| c.roster_refresh_ms = 30_000);
    w.connect(ALICE, &[BOB]);
    w.now += 30_000;
    w.feed(Input::Tick);
    let (periodic, _) = w.job(is_roster_read_of(ALICE));
    // The periodic read runs (friends), then the directory drops the
    // friendship and the web app calls roster-changed for bob.
    let changed = w.start(Request::RosterChanged { user: BOB });
    let (bobs, _) = w.job(is_roster_read_of(BOB));
    w.answer(bobs, read(&[]));
    let (reread, _) = w.job(is_roster_read_of(ALICE));
    w.answer(reread, read(&[]));
    assert_eq!(w.take(changed), Some(Response::Done));
    assert_eq!(w.roster_of(ALICE), Vec::<UserId>::new());
    // The periodic read's answer comes last: it is older than the re-read.
    w.answer(periodic, read(&[BOB]));
    assert_eq!(w.roster_of(ALICE), Vec::<UserId>::new());
    assert_eq!(w.shard.stats().stale_roster_reads, 1);
    // The refresh is armed again all the same.
    w.now += 30_000;
    w.feed(Input::Tick);
    w.job(is_roster_read_of(ALICE));
}

/// Seed 42's shape: alice's view of bob already agrees with the change,
/// but a read of hers issued earlier (it saw the directory in between) is
/// still in flight; the change must not return before a newer read.
#[test]
fn roster_changed_rereads_a_session_whose_read_is_in_flight_even_if_it_agrees() {
    let mut w = One::new(|c| c.roster_refresh_ms = 30_000);
    w.connect(ALICE, &[]);
    // Alice's periodic re-read runs while (alice, bob) are friends for a
    // moment; the friendship is removed again before it is answered.
    w.now += 30_000;
    w.feed(Input::Tick);
    let (periodic, _) = w.job(is_roster_read_of(ALICE));
    let changed = w.start(Request::RosterChanged { user: BOB });
    let (bobs, _) = w.job(is_roster_read_of(BOB));
    w.answer(bobs, read(&[]));
    // Alice's view (no bob) agrees, yet her read in flight may not: she
    // re-reads, and the call waits for it.
    let (reread, _) = w.job(is_roster_read_of(ALICE));
    assert_eq!(w.take(changed), None);
    w.answer(reread, read(&[]));
    assert_eq!(w.take(changed), Some(Response::Done));
    w.answer(periodic, read(&[BOB]));
    assert_eq!(w.roster_of(ALICE), Vec::<UserId>::new());
}

/// A failed roster read in flight does not hold a change forever, and a
/// session with no read in flight that agrees is left alone.
#[test]
fn roster_changed_leaves_alone_a_session_that_agrees_with_nothing_in_flight() {
    let mut w = One::new(|_| {});
    w.connect(ALICE, &[]);
    let changed = w.start(Request::RosterChanged { user: BOB });
    let (bobs, _) = w.job(is_roster_read_of(BOB));
    w.answer(bobs, read(&[]));
    assert_eq!(w.take(changed), Some(Response::Done));
    assert!(w.jobs.is_empty(), "{:?}", w.jobs);
    // A read that fails is no longer in flight.
    let first = w.start(Request::RosterChanged { user: ALICE });
    let (alices, _) = w.job(is_roster_read_of(ALICE));
    w.answer(alices, Err(StorageError::TimedOut));
    assert!(matches!(w.take(first), Some(Response::Failed(_))));
    let again = w.start(Request::RosterChanged { user: BOB });
    let (bobs, _) = w.job(is_roster_read_of(BOB));
    w.answer(bobs, read(&[]));
    assert_eq!(w.take(again), Some(Response::Done));
}

fn send(sid: Sid, to: UserId, cid: &str) -> Request {
    Request::Send {
        sid,
        to,
        text: "hi".into(),
        cid: Some(cid.into()),
    }
}

fn is_store(r: &StorageJob) -> bool {
    matches!(r, StorageJob::StoreMessage { .. })
}

/// What storage answers a try of alice's cid `c1` once message 1 is
/// stored under it.
fn stored(duplicate: bool) -> StorageResult {
    let message = Arc::new(Message {
        id: 1,
        from: ALICE,
        to: BOB,
        text: Arc::from("hi"),
        ts: 1_000,
        cid: Some(Arc::from("c1")),
    });
    Ok(StorageOutput::Stored { message, duplicate })
}

/// How many times bob's buffer holds message 1.
fn bob_holds(w: &One) -> usize {
    let session = w.shard.live_session(BOB).expect("bob is live");
    session
        .events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Message(m) if m.id == 1))
        .count()
}

/// Seed 110: alice's send was committed, but the engine answered it
/// `TimedOut` after an administrator had kicked her; her next session's
/// retry was answered from the duplicate and bob never got the message.
#[test]
fn a_send_that_timed_out_after_its_session_ended_is_delivered_on_the_next_sessions_retry() {
    let mut w = One::new(|_| {});
    let a = w.connect(ALICE, &[BOB]);
    w.connect(BOB, &[ALICE]);
    let first = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    let kick = w.start(Request::Kick { user: ALICE });
    assert_eq!(w.take(kick), Some(Response::Done));
    // Storage committed it; the engine's deadline fired first.
    w.answer(job, Err(StorageError::TimedOut));
    assert!(matches!(w.take(first), Some(Response::Failed(_))));
    assert_eq!(w.shard.stats().in_doubt_orphaned, 1);
    let a = w.connect(ALICE, &[BOB]);
    let retry = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    w.answer(job, stored(true));
    assert!(matches!(w.take(retry), Some(Response::Sent { id: 1, .. })));
    assert_eq!(bob_holds(&w), 1);
    assert_eq!(w.shard.stats().in_doubt_delivered, 1);
    // One more try (its answer lost, say) is not delivered again.
    let again = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    w.answer(job, stored(true));
    assert!(matches!(w.take(again), Some(Response::Sent { id: 1, .. })));
    assert_eq!(bob_holds(&w), 1);
}

/// Seed 842: alice's cid was in doubt in her session; she was kicked
/// while her retry was in flight, and its duplicate answer found no
/// session to settle the doubt in.
#[test]
fn a_retry_answered_after_its_session_ended_is_delivered_if_its_cid_was_in_doubt() {
    let mut w = One::new(|_| {});
    let a = w.connect(ALICE, &[BOB]);
    w.connect(BOB, &[ALICE]);
    let first = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    w.answer(job, Err(StorageError::TimedOut));
    assert!(matches!(w.take(first), Some(Response::Failed(_))));
    let retry = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    w.start(Request::Kick { user: ALICE });
    w.answer(job, stored(true));
    assert!(matches!(w.take(retry), Some(Response::Sent { id: 1, .. })));
    assert_eq!(bob_holds(&w), 1);
    assert_eq!(w.shard.stats().in_doubt_delivered, 1);
    // Settled: alice's next session has nothing in doubt.
    w.connect(ALICE, &[BOB]);
    let session = w.shard.live_session(ALICE).expect("alice is live");
    assert!(session.in_doubt.is_empty());
}

/// Cids kept for users with no session are bounded per shard, oldest
/// dropped and counted; a session that goes live takes its user's.
#[test]
fn cids_in_doubt_without_a_session_are_bounded_and_taken_by_the_next_session() {
    let mut w = One::new(|_| {});
    let max = crate::limits::IN_DOUBT_ORPHANS_MAX;
    // Users 100.. each send once, are kicked with the try in flight, and
    // the try fails.
    let user = |i: usize| 100 + i as UserId;
    for i in 0..=max {
        let a = w.connect(user(i), &[BOB]);
        w.start(send(a, BOB, &format!("d{i}")));
        let (job, _) = w.job(is_store);
        w.start(Request::Kick { user: user(i) });
        w.answer(job, Err(StorageError::Backend("injected".into())));
    }
    assert_eq!(w.shard.stats().in_doubt_orphaned, max as u64 + 1);
    assert_eq!(w.shard.stats().in_doubt_dropped, 1);
    w.connect(user(max), &[BOB]);
    let session = w.shard.live_session(user(max)).expect("live");
    assert_eq!(
        session.in_doubt.cids().collect::<Vec<_>>(),
        [format!("d{max}")]
    );
    // The oldest was dropped.
    w.connect(user(0), &[BOB]);
    let session = w.shard.live_session(user(0)).expect("live");
    assert!(session.in_doubt.is_empty());
}

/// Review A3: alice's try commits but is answered an error; her tab goes
/// away and her session ends by grace; she comes back 80 s later, in a
/// fresh session, and retries: bob gets the message, once.
#[test]
fn a_send_in_doubt_when_its_session_ended_by_grace_is_delivered_by_a_retry_80_s_later() {
    let mut w = One::new(|_| {});
    let a = w.connect(ALICE, &[BOB]);
    w.connect(BOB, &[ALICE]);
    let first = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    w.answer(job, Err(StorageError::TimedOut));
    assert!(matches!(w.take(first), Some(Response::Failed(_))));
    let leave = w.start(Request::Leave { sid: a });
    assert_eq!(w.take(leave), Some(Response::Done));
    for _ in 0..800 {
        w.now += 100;
        w.feed(Input::Tick);
    }
    assert!(w.shard.live_session(ALICE).is_none(), "ended by grace");
    // Bob's tab went quiet meanwhile: his session is kept alive by
    // connecting again (a new tab).
    w.connect(BOB, &[ALICE]);
    let a = w.connect(ALICE, &[BOB]);
    let retry = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    w.answer(job, stored(true));
    assert!(matches!(w.take(retry), Some(Response::Sent { id: 1, .. })));
    assert_eq!(bob_holds(&w), 1);
}

/// A traced user's decisions are noted (presence, tabs, events, a
/// rate-limit hit, a held poll) until their trace's time bound; an
/// untraced user's never, even in the same exchanges.
#[test]
fn only_traced_users_get_notes_until_their_trace_ends() {
    use crate::model::{Status, TypingState};
    use crate::ratelimit::{Kind, Rate};
    let mut w = One::new(|c| c.rate_limits.set(Kind::Typing, Some(Rate::new(1, 1))));
    let until = w.now + 60_000;
    let traced = Traced::new(1, vec![(ALICE, until)]);
    let req = w.start(Request::Trace { traced });
    assert_eq!(w.take(req), Some(Response::Done));
    let alice = w.connect(ALICE, &[BOB]);
    let bob = w.connect(BOB, &[ALICE]);
    let typing = |sid, to| Request::Typing {
        sid,
        to,
        state: TypingState::Typing,
    };
    for _ in 0..2 {
        w.start(typing(bob, ALICE));
        w.start(typing(alice, BOB));
    }
    let since = w.shard.live_session(ALICE).unwrap().seq;
    w.start(Request::Poll {
        sid: alice,
        since,
        wait_ms: 10_000,
    });
    assert!(w.notes.iter().all(|(u, _)| *u == ALICE), "{:?}", w.notes);
    let notes: Vec<Note> = w.notes.drain(..).map(|(_, n)| n).collect();
    let expected = [
        Note::Presence {
            status: Status::Online,
            why: "session loaded",
            shards: 1,
        },
        Note::TabAttached { tabs: 1 },
        Note::Event {
            kind: "presence",
            seq: 1,
            from: Some(BOB),
        },
        Note::Event {
            kind: "typing",
            seq: 2,
            from: Some(BOB),
        },
        Note::DeliveredTo {
            to: BOB,
            kind: "typing",
            outcome: "appended",
        },
        Note::RateLimited { call: "typing" },
        Note::PollHeld {
            since: 2,
            wait_ms: 10_000,
        },
    ];
    assert_eq!(notes, expected);
    // The trace ends by its time bound: nothing more is noted.
    w.now = until;
    w.feed(Input::Tick);
    w.now += 2_000;
    w.start(typing(bob, ALICE));
    w.start(Request::Leave { sid: alice });
    assert_eq!(w.notes, []);
    assert_eq!(w.shard.traced_count(), 0);
}

/// A failed batch is answered to every user in it, so its `Backend` text
/// (the failing job, the database's error) stays in the log: the client
/// is told the kind of failure only.
#[test]
fn a_storage_failure_is_answered_with_a_fixed_text_not_the_backend_detail() {
    let mut w = One::new(|_| {});
    let a = w.connect(ALICE, &[BOB]);
    w.connect(BOB, &[ALICE]);
    let req = w.start(send(a, BOB, "c1"));
    let (job, _) = w.job(is_store);
    let detail = "insert messages: Duplicate entry '3-other-users-cid'";
    w.answer(job, Err(StorageError::Backend(detail.into())));
    let Some(Response::Failed(failure)) = w.take(req) else {
        panic!("the send is answered a failure");
    };
    assert_eq!(failure.code, crate::model::ErrorCode::Unavailable);
    assert_eq!(
        failure.message,
        "storage unavailable: storage backend failed"
    );
}
