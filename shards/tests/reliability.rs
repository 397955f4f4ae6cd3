//! The shard core under faults (issue 8: nothing lost, nothing hung, nobody
//! locked out): storage answers that time out after committing, roster
//! re-reads shed or racing a load, peer messages dropped, a user dropped
//! after a panic. Deterministic: no randomness at all; storage jobs and
//! peer messages move only when a test says so.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use switchboard_shards::model::*;
use switchboard_shards::ratelimit::RateLimits;
use switchboard_shards::{home_shard, Config, Input, Output, PeerMsg, Resync, Shard};

/// Storage kept in memory, with the protocol's semantics for the jobs
/// these tests use.
#[derive(Default)]
struct MemStore {
    names: BTreeMap<UserId, Arc<str>>,
    friends: Vec<(UserId, UserId)>,
    messages: Vec<Arc<Message>>,
}

impl MemStore {
    fn friends_of(&self, u: UserId) -> Vec<Friend> {
        let mut v: Vec<Friend> = self
            .friends
            .iter()
            .filter_map(|&(a, b)| match () {
                _ if a == u => Some(b),
                _ if b == u => Some(a),
                _ => None,
            })
            .map(|id| Friend {
                id,
                name: self.names[&id].clone(),
            })
            .collect();
        v.sort_by_key(|f| f.id);
        v
    }

    fn run(&mut self, job: StorageJob) -> StorageResult {
        Ok(match job {
            StorageJob::LoadSession { user } => StorageOutput::Session {
                name: self.names.get(&user).cloned(),
                friends: self.friends_of(user),
                ui: None,
                unread: Vec::new(),
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
                let first = self
                    .messages
                    .iter()
                    .find(|m| m.from == from && cid.is_some() && m.cid == cid);
                if let Some(m) = first {
                    return Ok(StorageOutput::Stored {
                        message: m.clone(),
                        duplicate: true,
                    });
                }
                let m = Arc::new(Message {
                    id: self.messages.len() as u64 + 1,
                    from,
                    to,
                    text,
                    ts,
                    cid,
                });
                self.messages.push(m.clone());
                StorageOutput::Stored {
                    message: m,
                    duplicate: false,
                }
            }
            other => unimplemented!("not used by these tests: {other:?}"),
        })
    }
}

/// Several shards, a clock and a store; storage jobs and peer messages
/// wait until a test moves them.
struct World {
    now: u64,
    shards: Vec<Shard>,
    store: MemStore,
    /// Peer messages in flight per (from, to) pair: FIFO per pair.
    links: BTreeMap<(usize, usize), VecDeque<PeerMsg>>,
    /// Storage jobs asked for and not yet answered: (shard, job, request).
    jobs: Vec<(usize, u64, StorageJob)>,
    /// Replies by request number (every request comes from conn shard 0).
    replies: HashMap<u64, Response>,
    next_req: u64,
    next_secret: u128,
}

const ALICE: UserId = 1;
const BOB: UserId = 2;
const CAROL: UserId = 3;

impl World {
    /// Shards without rate limits: these tests drive bursts (64 sends in
    /// doubt, thousands of roster changes) that the limits would refuse;
    /// the limits have their own tests in abuse.rs.
    fn new(shard_count: usize) -> World {
        World::with(shard_count, |c| c.rate_limits = RateLimits::unlimited())
    }

    fn with(shard_count: usize, tune: impl Fn(&mut Config)) -> World {
        let shards = (0..shard_count)
            .map(|i| {
                let mut c = Config::new(i, shard_count);
                tune(&mut c);
                Shard::new(c)
            })
            .collect();
        let mut store = MemStore::default();
        for (id, name) in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")] {
            store.names.insert(id, Arc::from(name));
        }
        store.friends = vec![(ALICE, BOB), (ALICE, CAROL), (BOB, CAROL)];
        World {
            now: 1_000_000,
            shards,
            store,
            links: BTreeMap::new(),
            jobs: Vec::new(),
            replies: HashMap::new(),
            next_req: 0,
            next_secret: 0,
        }
    }

    fn home(&self, user: UserId) -> usize {
        home_shard(user, self.shards.len())
    }

    fn collect(&mut self, shard: usize, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Reply { to, response } => {
                    assert_eq!(to.shard, 0, "every request comes from shard 0");
                    let old = self.replies.insert(to.req, response);
                    assert!(old.is_none(), "two replies to {to:?}");
                }
                Output::Peer { shard: to, msg } => {
                    assert_ne!(to, shard, "local messages take the local path");
                    self.links.entry((shard, to)).or_default().push_back(msg);
                }
                Output::Storage { job, request } => self.jobs.push((shard, job, request)),
                // Nobody is traced here: a note would be a cost to untraced users.
                Output::Trace { user, .. } => {
                    panic!("a trace note for user {user}, whom nobody traces")
                }
            }
        }
    }

    fn feed(&mut self, shard: usize, input: Input) {
        let mut out = Vec::new();
        self.shards[shard].handle(self.now, input, &mut out);
        self.collect(shard, out);
    }

    /// Delivers every peer message in flight (link by link, in order).
    fn pump(&mut self) {
        while let Some((&k, _)) = self.links.iter().find(|(_, q)| !q.is_empty()) {
            let msg = self.links.get_mut(&k).unwrap().pop_front().unwrap();
            self.feed(k.1, Input::Peer(msg));
        }
    }

    /// Takes out the first storage job `pick` chooses, unanswered.
    fn take_job(&mut self, pick: impl Fn(&StorageJob) -> bool) -> (usize, u64, StorageJob) {
        let i = self
            .jobs
            .iter()
            .position(|(_, _, r)| pick(r))
            .unwrap_or_else(|| panic!("no such job among {:?}", self.jobs));
        self.jobs.remove(i)
    }

    /// Runs every storage job and delivers every message until quiet.
    fn settle(&mut self) {
        loop {
            self.pump();
            if self.jobs.is_empty() {
                return;
            }
            for (shard, job, request) in std::mem::take(&mut self.jobs) {
                let result = self.store.run(request);
                self.feed(shard, Input::Storage { job, result });
            }
        }
    }

    /// Runs the storage jobs asked for so far, leaving the peer messages
    /// they cause in flight.
    fn settle_jobs_only(&mut self) {
        for (shard, job, request) in std::mem::take(&mut self.jobs) {
            let result = self.store.run(request);
            self.feed(shard, Input::Storage { job, result });
        }
    }

    /// Starts a request at its home shard; returns its number.
    fn start(&mut self, request: Request) -> u64 {
        self.next_req += 1;
        let reply = ReplyTo {
            shard: 0,
            req: self.next_req,
        };
        let home = self.home(request.home_user().unwrap());
        self.feed(home, Input::Request { reply, request });
        reply.req
    }

    /// A request, settled: its reply.
    fn call(&mut self, request: Request) -> Option<Response> {
        let req = self.start(request);
        self.settle();
        self.replies.remove(&req)
    }

    fn take(&mut self, req: u64) -> Option<Response> {
        self.replies.remove(&req)
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 100).min(end);
            for s in 0..self.shards.len() {
                self.feed(s, Input::Tick);
            }
            self.settle();
        }
    }

    fn sid(&mut self, user: UserId) -> Sid {
        self.next_secret += 1;
        Sid {
            user,
            secret: self.next_secret,
        }
    }

    fn connect(&mut self, user: UserId, tab: &str) -> Sid {
        let sid = self.sid(user);
        let r = self.call(Request::Connect {
            user,
            tab: Some(tab.into()),
            sid,
        });
        assert!(matches!(r, Some(Response::Connected(_))), "{r:?}");
        sid
    }

    fn session(&self, user: UserId) -> Option<&switchboard_shards::session::LiveSession> {
        self.shards[self.home(user)].live_session(user)
    }

    fn presence_seen_by(&self, viewer: UserId, of: UserId) -> Status {
        self.shards[self.home(viewer)].presence_of(of)
    }

    /// Presence events for `of` in `viewer`'s buffer, in order.
    fn presence_events(&self, viewer: UserId, of: UserId) -> Vec<Status> {
        self.session(viewer)
            .map(|s| {
                s.events
                    .iter()
                    .filter_map(|e| match e.kind {
                        EventKind::Presence { user, status } if user == of => Some(status),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One tab as a client sees it: what it polled so far.
struct Client {
    sid: Sid,
    since: u64,
    messages: Vec<MsgId>,
}

impl Client {
    fn new(w: &World, sid: Sid) -> Client {
        let since = w.session(sid.user).unwrap().seq;
        Client {
            sid,
            since,
            messages: Vec::new(),
        }
    }

    /// Polls (wait 0) and notes the messages it got.
    fn poll(&mut self, w: &mut World) {
        let r = w.call(Request::Poll {
            sid: self.sid,
            since: self.since,
            wait_ms: 0,
        });
        let Some(Response::Events { seq, events }) = r else {
            panic!("{:?} polled: {r:?}", self.sid)
        };
        self.since = seq;
        for e in events {
            if let EventKind::Message(m) = &e.kind {
                self.messages.push(m.id);
            }
        }
    }
}

fn send(sid: Sid, to: UserId, cid: &str) -> Request {
    Request::Send {
        sid,
        to,
        text: "hi".into(),
        cid: Some(cid.into()),
    }
}

fn is_failure(r: &Option<Response>, code: ErrorCode) -> bool {
    matches!(r, Some(Response::Failed(f)) if f.code == code)
}

/// Alice (two tabs) and bob (one tab), on different shards, each tab a
/// client that has polled up to now.
fn alice_and_bob() -> (World, Vec<Client>) {
    let mut w = World::new(2);
    assert_ne!(w.home(ALICE), w.home(BOB));
    let sids = [
        w.connect(ALICE, "a1"),
        w.connect(ALICE, "a2"),
        w.connect(BOB, "b1"),
    ];
    let clients = sids.iter().map(|&s| Client::new(&w, s)).collect();
    (w, clients)
}

// (a) Acknowledged but never delivered.

#[test]
fn a_send_that_timed_out_but_was_stored_reaches_every_tab_once_when_retried() {
    let (mut w, mut clients) = alice_and_bob();
    let a1 = clients[0].sid;
    // The first try: storage commits it, but the engine's deadline fired
    // first and fed the shard a timeout.
    let first = w.start(send(a1, BOB, "c1"));
    let (shard, job, request) = w.take_job(|r| matches!(r, StorageJob::StoreMessage { .. }));
    let _ = w.store.run(request);
    let timed_out = Input::Storage {
        job,
        result: Err(StorageError::TimedOut),
    };
    w.feed(shard, timed_out);
    assert!(is_failure(&w.take(first), ErrorCode::Unavailable));
    // The client retries with the same cid: storage says duplicate.
    let retry = w.call(send(a1, BOB, "c1"));
    let Some(Response::Sent { id, .. }) = retry else {
        panic!("{retry:?}")
    };
    assert_eq!(w.store.messages.len(), 1);
    // A further retry (its answer lost, say) is not delivered again.
    let again = w.call(send(a1, BOB, "c1"));
    assert!(matches!(again, Some(Response::Sent { id: i, .. }) if i == id));
    for c in &mut clients {
        c.poll(&mut w);
        assert_eq!(c.messages, vec![id], "tab {:?}", c.sid);
    }
}

#[test]
fn a_duplicate_of_a_send_never_in_doubt_is_not_delivered_twice() {
    let (mut w, mut clients) = alice_and_bob();
    let a2 = clients[1].sid;
    let Some(Response::Sent { id, .. }) = w.call(send(a2, BOB, "c7")) else {
        panic!("first send")
    };
    // Its answer was lost: the client retries, and that try times out
    // (nothing stored: the cid was), then retries once more.
    let second = w.start(send(a2, BOB, "c7"));
    let (shard, job, _) = w.take_job(|r| matches!(r, StorageJob::StoreMessage { .. }));
    let timed_out = Input::Storage {
        job,
        result: Err(StorageError::TimedOut),
    };
    w.feed(shard, timed_out);
    assert!(is_failure(&w.take(second), ErrorCode::Unavailable));
    let third = w.call(send(a2, BOB, "c7"));
    assert!(matches!(third, Some(Response::Sent { id: i, .. }) if i == id));
    for c in &mut clients {
        c.poll(&mut w);
        assert_eq!(c.messages, vec![id], "tab {:?}", c.sid);
    }
}

/// Answers job `(shard, job)` with `result`.
fn answer(w: &mut World, (shard, job): (usize, u64), result: StorageResult) {
    w.feed(shard, Input::Storage { job, result });
}

/// Takes the next store job out unanswered: `(shard, job)` and its request.
fn take_store(w: &mut World) -> ((usize, u64), StorageJob) {
    let (shard, job, request) = w.take_job(|r| matches!(r, StorageJob::StoreMessage { .. }));
    ((shard, job), request)
}

#[test]
fn two_tries_in_flight_the_one_that_committed_failing_last_is_delivered_once() {
    // The client gave up on try 1 (a timeout) and retried while try 1 was
    // still running. Try 1 commits but is answered an error (its commit
    // ended past the engine's deadline); try 2's duplicate is answered
    // first, before anything put the cid in doubt.
    let (mut w, mut clients) = alice_and_bob();
    let a1 = clients[0].sid;
    let first = w.start(send(a1, BOB, "c1"));
    let (try1, request) = take_store(&mut w);
    let _ = w.store.run(request);
    let second = w.start(send(a1, BOB, "c1"));
    let (try2, request) = take_store(&mut w);
    let duplicate = w.store.run(request);
    answer(&mut w, try2, duplicate);
    let Some(Response::Sent { id, .. }) = w.take(second) else {
        panic!("try 2 is answered from the duplicate")
    };
    answer(&mut w, try1, Err(StorageError::TimedOut));
    assert!(is_failure(&w.take(first), ErrorCode::Unavailable));
    w.settle();
    for c in &mut clients {
        c.poll(&mut w);
        assert_eq!(c.messages, vec![id], "tab {:?}", c.sid);
    }
}

#[test]
fn two_tries_in_flight_after_a_failed_one_deliver_once_in_either_answer_order() {
    for fresh_first in [false, true] {
        let (mut w, mut clients) = alice_and_bob();
        let a1 = clients[0].sid;
        // Try 1 fails without storing: the cid is in doubt.
        let first = w.start(send(a1, BOB, "c1"));
        let (try1, _) = take_store(&mut w);
        answer(&mut w, try1, Err(StorageError::Backend("injected".into())));
        assert!(is_failure(&w.take(first), ErrorCode::Unavailable));
        // Tries 2 and 3 run at once: 2 stores it, 3 finds it stored.
        let second = w.start(send(a1, BOB, "c1"));
        let third = w.start(send(a1, BOB, "c1"));
        let (try2, request) = take_store(&mut w);
        let fresh = w.store.run(request);
        let (try3, request) = take_store(&mut w);
        let duplicate = w.store.run(request);
        if fresh_first {
            answer(&mut w, try2, fresh);
            answer(&mut w, try3, duplicate);
        } else {
            answer(&mut w, try3, duplicate);
            answer(&mut w, try2, fresh);
        }
        w.settle();
        let Some(Response::Sent { id, .. }) = w.take(second) else {
            panic!("try 2")
        };
        assert!(matches!(w.take(third), Some(Response::Sent { id: i, .. }) if i == id));
        for c in &mut clients {
            c.poll(&mut w);
            assert_eq!(
                c.messages,
                vec![id],
                "fresh first {fresh_first}: tab {:?}",
                c.sid
            );
        }
    }
}

#[test]
fn cids_in_doubt_are_bounded_per_session_dropping_the_oldest() {
    let (mut w, _) = alice_and_bob();
    let a1 = w.connect(ALICE, "a1");
    let max = switchboard_shards::limits::IN_DOUBT_CIDS_MAX;
    for i in 0..=max {
        let r = w.start(send(a1, BOB, &format!("d{i}")));
        let (shard, job, _) = w.take_job(|r| matches!(r, StorageJob::StoreMessage { .. }));
        let result = Err(StorageError::Backend("injected".into()));
        w.feed(shard, Input::Storage { job, result });
        assert!(is_failure(&w.take(r), ErrorCode::Unavailable));
    }
    let alices = w.home(ALICE);
    assert_eq!(w.shards[alices].stats().in_doubt_dropped, 1);
    let session = w.session(ALICE).unwrap();
    assert_eq!(session.in_doubt.len(), max);
    assert_eq!(session.in_doubt.cids().next(), Some("d1"));
}

#[test]
fn a_resync_after_a_dropped_delivery_resets_every_tab_of_the_recipient() {
    for who in [Resync::Users(vec![BOB]), Resync::All] {
        let mut w = World::new(2);
        let a = w.connect(ALICE, "a1");
        let b1 = w.connect(BOB, "b1");
        let b2 = w.connect(BOB, "b2");
        for i in 0..3 {
            w.call(send(a, BOB, &format!("before{i}")));
        }
        let since = w.session(BOB).unwrap().seq;
        let held = w.start(Request::Poll {
            sid: b1,
            since,
            wait_ms: 20_000,
        });
        // Alice's message is stored; its delivery to bob's shard is
        // dropped on a full outbox.
        let sent = w.start(send(a, BOB, "c1"));
        w.settle_jobs_only();
        assert!(matches!(w.take(sent), Some(Response::Sent { .. })));
        let link = (w.home(ALICE), w.home(BOB));
        let lost = w.links.get_mut(&link).and_then(|q| q.pop_back());
        assert!(
            matches!(lost, Some(PeerMsg::Deliver { to: BOB, .. })),
            "{lost:?}"
        );
        w.settle();
        assert_eq!(w.take(held), None, "still held: nothing came");
        // The engine pays the resync it owes once the outbox has room.
        let bobs = w.home(BOB);
        let held_before = w.session(BOB).unwrap().events.len();
        w.feed(bobs, Input::Peer(PeerMsg::Resync { who: who.clone() }));
        let Some(Response::Reset { seq }) = w.take(held) else {
            panic!("{who:?}: the held poll is reset")
        };
        assert_eq!(seq, since + 1);
        // The other tab, polling from before, is reset too.
        let late = w.call(Request::Poll {
            sid: b2,
            since,
            wait_ms: 0,
        });
        assert_eq!(late, Some(Response::Reset { seq }));
        assert_eq!(w.shards[bobs].stats().resyncs, 1);
        // Still so once newer events push an older one out of the buffer
        // (seed 325: that eviction lowered the mark below the resync's).
        let max = w.shards[bobs].config().events_buffered_max;
        for i in 0..=max - held_before {
            w.call(send(a, BOB, &format!("later{i}")));
        }
        let s = w.session(BOB).unwrap();
        eprintln!(
            "DEBUG held_before {held_before} max {max} len {} evicted {} seq {} since {since}",
            s.events.len(),
            s.evicted_seq,
            s.seq
        );
        let late = w.call(Request::Poll {
            sid: b2,
            since,
            wait_ms: 0,
        });
        assert!(matches!(late, Some(Response::Reset { .. })), "{late:?}");
    }
}

// (b) Honest roster-changed.

#[test]
fn roster_changed_whose_refresh_is_shed_answers_an_error_not_done() {
    let mut w = World::new(2);
    let _a = w.connect(ALICE, "a1");
    let _b = w.connect(BOB, "b1");
    // Bob's shard has every storage job slot taken: admin calls for bob
    // whose first roster read is held.
    let bobs = w.home(BOB);
    while w.shards[bobs].jobs_in_flight() < switchboard_shards::limits::JOBS_IN_FLIGHT_MAX {
        w.start(Request::RosterChanged { user: BOB });
    }
    let held = std::mem::take(&mut w.jobs);
    w.store.friends.retain(|&p| p != (ALICE, BOB));
    let r = w.call(Request::RosterChanged { user: ALICE });
    assert!(is_failure(&r, ErrorCode::Unavailable), "{r:?}");
    // Bob still has alice: the web app must retry, and once bob's shard has
    // room, the retry succeeds.
    assert!(w.session(BOB).unwrap().roster.contains_key(&ALICE));
    for (shard, job, _) in held {
        let result = Err(StorageError::Overloaded);
        w.feed(shard, Input::Storage { job, result });
    }
    w.replies.clear();
    assert_eq!(
        w.call(Request::RosterChanged { user: ALICE }),
        Some(Response::Done)
    );
    assert!(!w.session(BOB).unwrap().roster.contains_key(&ALICE));
}

#[test]
fn roster_changed_while_a_session_loads_ends_with_the_new_roster_or_an_error() {
    let mut w = World::new(2);
    let _a = w.connect(ALICE, "a1");
    // Bob's session starts loading and its load reads the directory before
    // the change; the result comes back only after roster-changed started.
    let sid = w.sid(BOB);
    let connect = w.start(Request::Connect {
        user: BOB,
        tab: None,
        sid,
    });
    let (shard, job, request) = w.take_job(|r| matches!(r, StorageJob::LoadSession { .. }));
    let stale = w.store.run(request);
    w.store.friends.retain(|&p| p != (ALICE, BOB));
    let change = w.start(Request::RosterChanged { user: ALICE });
    w.settle();
    assert_eq!(w.take(change), None, "answered before bob's load ended");
    w.feed(shard, Input::Storage { job, result: stale });
    assert!(matches!(w.take(connect), Some(Response::Connected(_))));
    // The admin call returns only once bob's roster is re-read.
    while w.take(change).is_none() {
        assert!(!w.jobs.is_empty() || w.links.values().any(|q| !q.is_empty()));
        let (shard, job, request) = w.jobs.remove(0);
        let result = w.store.run(request);
        w.feed(shard, Input::Storage { job, result });
        w.pump();
    }
    assert!(!w.session(BOB).unwrap().roster.contains_key(&ALICE));
    let r = w.call(send(sid, ALICE, "x"));
    assert!(is_failure(&r, ErrorCode::NotFriends), "{r:?}");
}

#[test]
fn roster_changed_whose_touch_or_ack_is_lost_answers_unavailable_at_its_deadline_and_forgets_it() {
    for lose in ["touch", "ack"] {
        let mut w = World::new(2);
        w.connect(ALICE, "a1");
        w.connect(BOB, "b1");
        let alices = w.home(ALICE);
        let bobs = w.home(BOB);
        let change = w.start(Request::RosterChanged { user: ALICE });
        w.settle_jobs_only();
        // One peer message of the change is dropped on a full outbox.
        match lose {
            "touch" => {
                let q = w.links.get_mut(&(alices, bobs)).unwrap();
                let lost = q.pop_front();
                assert!(
                    matches!(lost, Some(PeerMsg::RosterTouched { .. })),
                    "{lost:?}"
                );
            }
            _ => {
                let touch = w.links.get_mut(&(alices, bobs)).unwrap().pop_front();
                w.feed(bobs, Input::Peer(touch.unwrap()));
                w.settle_jobs_only();
                let q = w.links.get_mut(&(bobs, alices)).unwrap();
                let lost = q.pop_back();
                assert!(matches!(lost, Some(PeerMsg::RosterAck { .. })), "{lost:?}");
            }
        }
        w.settle();
        assert_eq!(w.take(change), None, "{lose}: still waiting");
        assert_eq!(w.shards[alices].roster_changes_waiting(), 1);
        w.advance(switchboard_shards::limits::ROSTER_CHANGE_WAIT_MS);
        let r = w.take(change);
        assert!(is_failure(&r, ErrorCode::Unavailable), "{lose}: {r:?}");
        assert_eq!(w.shards[alices].roster_changes_waiting(), 0, "{lose}");
    }
}

// (c) Presence replicas repair themselves.

/// Drops the newest peer message from `from`'s shard to `to`'s, which
/// must be a `Presence`.
fn lose_presence(w: &mut World, from: UserId, to: UserId) {
    let link = (w.home(from), w.home(to));
    let lost = w.links.get_mut(&link).and_then(|q| q.pop_back());
    assert!(matches!(lost, Some(PeerMsg::Presence { .. })), "{lost:?}");
}

#[test]
fn a_lost_presence_message_is_repaired_by_the_next_digest() {
    let mut w = World::with(2, |c| c.presence_digest_ms = 1_000);
    let _b = w.connect(BOB, "b1");
    let a = w.connect(ALICE, "a1");
    w.advance(1_000);
    assert_eq!(w.presence_events(BOB, ALICE), vec![Status::Online]);

    // Alice goes away; the broadcast to bob's shard is lost.
    let away = w.start(Request::Presence {
        sid: a,
        status: Status::Away,
    });
    lose_presence(&mut w, ALICE, BOB);
    w.settle();
    assert_eq!(w.take(away), Some(Response::Done));
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Online);
    w.advance(1_000);
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Away);
    assert_eq!(
        w.presence_events(BOB, ALICE),
        vec![Status::Online, Status::Away]
    );
    let bobs = w.home(BOB);
    assert_eq!(w.shards[bobs].stats().presence_repairs, 1);

    // Nothing changed: further digests repair and tell nothing.
    w.advance(3_000);
    assert_eq!(w.shards[bobs].stats().presence_repairs, 1);
    assert_eq!(
        w.presence_events(BOB, ALICE),
        vec![Status::Online, Status::Away]
    );

    // Alice is kicked; the offline broadcast to bob's shard is lost.
    let kick = w.start(Request::Kick { user: ALICE });
    lose_presence(&mut w, ALICE, BOB);
    w.settle();
    assert_eq!(w.take(kick), Some(Response::Done));
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Away);
    w.advance(1_000);
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Offline);
    assert_eq!(
        w.presence_events(BOB, ALICE),
        vec![Status::Online, Status::Away, Status::Offline]
    );

    // Alice comes back and the online broadcast is lost: the digest says
    // she is online (her session is live, though she has not polled).
    let sid = w.sid(ALICE);
    let connect = w.start(Request::Connect {
        user: ALICE,
        tab: None,
        sid,
    });
    w.settle_jobs_only();
    lose_presence(&mut w, ALICE, BOB);
    w.settle();
    assert!(matches!(w.take(connect), Some(Response::Connected(_))));
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Offline);
    w.advance(1_000);
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Online);
    // Carol never connected: no replica has her.
    assert_eq!(w.presence_seen_by(BOB, CAROL), Status::Offline);
    assert_eq!(w.presence_seen_by(ALICE, CAROL), Status::Offline);
}

// (d) Supervision: one user dropped, everyone else goes on.

/// Every armed timer of `shard` belongs to a tab or a session slot of the
/// given users, and each of those has its timer armed.
fn timers_consistent(w: &World, shard: usize, users: &[UserId]) {
    let owned: usize = users
        .iter()
        .filter(|&&u| w.home(u) == shard)
        .filter_map(|&u| w.shards[shard].live_session(u))
        .map(|s| s.tabs.len() + s.grace.is_armed() as usize + s.refresh.is_armed() as usize)
        .sum();
    assert_eq!(
        w.shards[shard].timer_count(),
        owned,
        "timers of shard {shard}"
    );
}

#[test]
fn dropping_a_user_answers_their_calls_and_leaves_everyone_else_working() {
    let mut w = World::with(2, |c| c.presence_digest_ms = 1_000);
    let b = w.connect(BOB, "b1");
    let a1 = w.connect(ALICE, "a1");
    let _a2 = w.connect(ALICE, "a2");
    let held = w.start(Request::Poll {
        sid: a1,
        since: 0,
        wait_ms: 30_000,
    });
    // A send of alice's is in flight when she is dropped.
    let sending = w.start(send(a1, BOB, "s1"));
    let alices = w.home(ALICE);
    let input = Input::Request {
        reply: ReplyTo { shard: 0, req: 0 },
        request: Request::Leave { sid: a1 },
    };
    assert_eq!(w.shards[alices].user_of(&input), Some(ALICE));
    let mut out = Vec::new();
    let now = w.now;
    w.shards[alices].drop_user(now, ALICE, &mut out);
    w.collect(alices, out);
    assert!(is_failure(&w.take(held), ErrorCode::UnknownSession));
    w.pump();
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Offline);
    assert_eq!(
        w.presence_events(BOB, ALICE),
        vec![Status::Online, Status::Offline]
    );
    timers_consistent(&w, alices, &[ALICE, BOB, CAROL]);
    // Her send still gets its answer, and bob the message.
    w.settle();
    assert!(matches!(w.take(sending), Some(Response::Sent { .. })));
    let mut bob = Client::new(&w, b);
    bob.since = 0;
    bob.poll(&mut w);
    assert_eq!(bob.messages.len(), 1);
    // Time goes on without a stale timer; her old sids are gone; she can
    // connect again; bob and carol talk.
    w.advance(70_000);
    assert_eq!(w.shards[alices].stats().stale_timers, 0);
    assert!(is_failure(
        &w.call(send(a1, BOB, "s2")),
        ErrorCode::UnknownSession
    ));
    let a3 = w.connect(ALICE, "a3");
    let b2 = w.connect(BOB, "b2");
    let c = w.connect(CAROL, "c1");
    assert!(matches!(
        w.call(send(c, BOB, "s3")),
        Some(Response::Sent { .. })
    ));
    assert!(matches!(
        w.call(send(a3, BOB, "s4")),
        Some(Response::Sent { .. })
    ));
    assert!(matches!(
        w.call(send(b2, ALICE, "s5")),
        Some(Response::Sent { .. })
    ));
    for s in 0..2 {
        timers_consistent(&w, s, &[ALICE, BOB, CAROL]);
    }
    assert_eq!(w.presence_seen_by(BOB, ALICE), Status::Online);
}

#[test]
fn a_panic_while_a_session_loads_drops_only_that_user() {
    let mut w = World::new(2);
    let b = w.connect(BOB, "b1");
    let sid = w.sid(CAROL);
    let connect = w.start(Request::Connect {
        user: CAROL,
        tab: None,
        sid,
    });
    let (shard, job, _) = w.take_job(|r| matches!(r, StorageJob::LoadSession { .. }));
    // A wrong answer to the load panics inside `handle`, after the job was
    // taken out: the session is left loading with nobody to finish it.
    let input = Input::Storage {
        job,
        result: Ok(StorageOutput::Saved),
    };
    let user = w.shards[shard].user_of(&input);
    assert_eq!(user, Some(CAROL));
    let now = w.now;
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        w.shards[shard].handle(now, input, &mut Vec::new())
    }));
    assert!(panicked.is_err());
    let mut out = Vec::new();
    w.shards[shard].drop_user(now, user.unwrap(), &mut out);
    w.collect(shard, out);
    assert!(is_failure(&w.take(connect), ErrorCode::Unavailable));
    w.settle();
    // Carol connects again; bob was never disturbed.
    let c = w.connect(CAROL, "c1");
    assert!(matches!(
        w.call(send(b, CAROL, "m")),
        Some(Response::Sent { .. })
    ));
    assert!(matches!(
        w.call(send(c, BOB, "n")),
        Some(Response::Sent { .. })
    ));
    w.advance(1_000);
    for s in 0..2 {
        timers_consistent(&w, s, &[ALICE, BOB, CAROL]);
        assert_eq!(w.shards[s].stats().stale_timers, 0);
    }
}
