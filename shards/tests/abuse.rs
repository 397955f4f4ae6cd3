//! One user flooding a friend (issue 8, item 6), on the shard state
//! machine alone: two shards, a virtual clock, an in-memory store (the
//! harness is a trimmed copy of `sim.rs`'s). Each test is a claim about
//! what a flood can no longer do: lock the friend out of their live stream
//! (`reset`), fill storage, or pin memory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use switchboard_shards::limits;
use switchboard_shards::model::*;
use switchboard_shards::ratelimit::RateLimits;
use switchboard_shards::{home_shard, Config, Input, Output, PeerMsg, Shard};

const ALICE: UserId = 1;
const BOB: UserId = 2;
const CAROL: UserId = 3;

/// Storage kept in memory: names, friendships, messages, UI states.
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
                let message = Arc::new(Message {
                    id: self.messages.len() as u64 + 1,
                    from,
                    to,
                    text,
                    ts,
                    cid,
                });
                self.messages.push(message.clone());
                StorageOutput::Stored {
                    message,
                    duplicate: false,
                }
            }
            StorageJob::MarkRead { upto, .. } => StorageOutput::ReadMarked {
                valid: true,
                upto,
                unread: 0,
            },
            StorageJob::History { .. } => StorageOutput::History {
                valid: true,
                messages: Vec::new(),
                more: false,
                seen: None,
            },
            StorageJob::SaveUi { .. } => StorageOutput::Saved,
        })
    }
}

/// Two shards, a clock and a store; peer messages and storage jobs are
/// delivered in order until nothing is in flight.
struct World {
    now: u64,
    shards: Vec<Shard>,
    store: MemStore,
    links: BTreeMap<(usize, usize), VecDeque<PeerMsg>>,
    jobs: VecDeque<(usize, u64, StorageJob)>,
    replies: HashMap<u64, Response>,
    next_req: u64,
}

impl World {
    /// alice, bob and carol, all friends, with `config` on every shard.
    fn new(config: impl Fn(&mut Config)) -> World {
        let shards = (0..2)
            .map(|i| {
                let mut c = Config::new(i, 2);
                config(&mut c);
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
            jobs: VecDeque::new(),
            replies: HashMap::new(),
            next_req: 0,
        }
    }

    fn feed(&mut self, shard: usize, input: Input) {
        let mut out = Vec::new();
        self.shards[shard].handle(self.now, input, &mut out);
        for o in out {
            match o {
                Output::Reply { to, response } => {
                    assert!(self.replies.insert(to.req, response).is_none());
                }
                Output::Peer { shard: to, msg } => {
                    self.links.entry((shard, to)).or_default().push_back(msg)
                }
                Output::Storage { job, request } => self.jobs.push_back((shard, job, request)),
                // Nobody is traced here: a note would be a cost to untraced users.
                Output::Trace { user, .. } => {
                    panic!("a trace note for user {user}, whom nobody traces")
                }
            }
        }
    }

    fn settle(&mut self) {
        loop {
            let busy = self.links.iter().find(|(_, q)| !q.is_empty());
            if let Some((&k, _)) = busy {
                let msg = self.links.get_mut(&k).unwrap().pop_front().unwrap();
                self.feed(k.1, Input::Peer(msg));
            } else if let Some((shard, job, request)) = self.jobs.pop_front() {
                let result = self.store.run(request);
                self.feed(shard, Input::Storage { job, result });
            } else {
                break;
            }
        }
    }

    /// A request to its home shard, settled; its reply.
    fn call(&mut self, request: Request) -> Response {
        self.next_req += 1;
        let reply = ReplyTo {
            shard: 0,
            req: self.next_req,
        };
        let home = home_shard(request.home_user().unwrap(), self.shards.len());
        self.feed(home, Input::Request { reply, request });
        self.settle();
        self.replies.remove(&reply.req).expect("a reply")
    }

    fn connect(&mut self, user: UserId, tab: &str) -> (Sid, u64) {
        self.next_req += 1;
        let sid = Sid {
            user,
            secret: self.next_req as u128,
        };
        match self.call(Request::Connect {
            user,
            tab: Some(tab.into()),
            sid,
        }) {
            Response::Connected(c) => (sid, c.seq),
            other => panic!("connect: {other:?}"),
        }
    }

    fn poll(&mut self, sid: Sid, since: u64) -> Response {
        self.call(Request::Poll {
            sid,
            since,
            wait_ms: 0,
        })
    }

    fn send(&mut self, sid: Sid, to: UserId, text: &str) -> Response {
        self.call(Request::Send {
            sid,
            to,
            text: text.into(),
            cid: None,
        })
    }

    fn typing(&mut self, sid: Sid, to: UserId, state: TypingState) -> Response {
        self.call(Request::Typing { sid, to, state })
    }

    /// The events in `user`'s buffer.
    fn buffer(&self, user: UserId) -> Vec<Arc<Event>> {
        let shard = &self.shards[home_shard(user, self.shards.len())];
        let session = shard.live_session(user).expect("live session");
        session.events.iter().cloned().collect()
    }
}

fn is_rate_limited(r: &Response) -> bool {
    matches!(r, Response::Failed(f) if f.code == ErrorCode::RateLimited)
}

/// The events of a poll answer; panics on anything else (a `reset` too).
fn events(r: Response) -> (u64, Vec<Arc<Event>>) {
    match r {
        Response::Events { seq, events } => (seq, events),
        other => panic!("expected events, got {other:?}"),
    }
}

fn texts(events: &[Arc<Event>]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Message(m) => Some(&*m.text),
            _ => None,
        })
        .collect()
}

fn typing_from(events: &[Arc<Event>], from: UserId) -> Vec<TypingState> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Typing { user, state } if user == from => Some(state),
            _ => None,
        })
        .collect()
}

#[test]
fn alice_and_bob_live_on_different_shards() {
    // Every flood below crosses the mesh.
    assert_ne!(home_shard(ALICE, 2), home_shard(BOB, 2));
}

#[test]
fn a_typing_flood_is_rate_limited_and_the_message_before_it_still_reaches_the_friend() {
    let mut w = World::new(|_| {});
    let (bob, _) = w.connect(BOB, "b");
    let (alice, _) = w.connect(ALICE, "a");
    let (since, _) = events(w.poll(bob, 0));
    assert!(matches!(w.send(alice, BOB, "hello"), Response::Sent { .. }));
    // 1,000 typing calls, one a millisecond.
    let mut done = 0;
    let mut last_done = None;
    for i in 0..1_000 {
        let state = if i % 3 == 0 {
            TypingState::Stopped
        } else {
            TypingState::Typing
        };
        match w.typing(alice, BOB, state) {
            Response::Done => {
                done += 1;
                last_done = Some(state);
            }
            r if is_rate_limited(&r) => {}
            other => panic!("typing: {other:?}"),
        }
        w.now += 1;
    }
    // The burst, then what refilled in the 999 ms after it, no more.
    let rate = limits::RATE_TYPING_DEFAULT;
    assert_eq!(done, rate.burst + rate.per_s * 999 / 1_000, "done {done}");
    // Bob's poll from before the message: no reset, the message, and one
    // typing event from alice: the last one she was allowed.
    let (_, got) = events(w.poll(bob, since));
    assert_eq!(texts(&got), vec!["hello"]);
    assert_eq!(typing_from(&got, ALICE), vec![last_done.unwrap()]);
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn a_send_flood_is_rate_limited_and_stores_at_most_burst_plus_rate_times_time() {
    let mut w = World::new(|_| {});
    let (alice, _) = w.connect(ALICE, "a");
    let (bob, _) = w.connect(BOB, "b");
    // 1,000 sends over 10 s of virtual time.
    let mut limited = 0;
    for i in 0..1_000 {
        let r = w.send(alice, BOB, &format!("spam {i}"));
        if is_rate_limited(&r) {
            limited += 1;
        } else {
            assert!(matches!(r, Response::Sent { .. }), "{r:?}");
        }
        w.now += 10;
    }
    let rate = limits::RATE_SEND_DEFAULT;
    let most = (rate.burst + rate.per_s * 10) as usize;
    assert!(w.store.messages.len() <= most, "{}", w.store.messages.len());
    assert_eq!(w.store.messages.len() + limited, 1_000);
    // Bob's own sends are his own budget.
    assert!(matches!(w.send(bob, ALICE, "hi"), Response::Sent { .. }));
    // Limited per user, not per tab: a second tab gets no new burst, only
    // what refilled since the last send (less than 10 ms × 5/s + one).
    let (alice2, _) = w.connect(ALICE, "a2");
    let sent = (0..5)
        .filter(|_| !is_rate_limited(&w.send(alice2, BOB, "more")))
        .count();
    assert!(sent <= 1, "{sent}");
}

#[test]
fn the_limit_comes_after_the_tab_check_and_before_friends_only() {
    let mut w = World::new(|_| {});
    let (alice, _) = w.connect(ALICE, "a");
    let ghost = Sid {
        user: ALICE,
        secret: 7,
    };
    let burst = limits::RATE_READ_DEFAULT.burst;
    // Calls from an unknown tab cost nothing.
    for _ in 0..2 * burst {
        let r = w.call(Request::Read {
            sid: ghost,
            with: 4,
            upto: 1,
        });
        assert!(matches!(r, Response::Failed(f) if f.code == ErrorCode::UnknownSession));
    }
    // Reads naming a non-friend (user 4) count: probing is not free.
    for _ in 0..burst {
        let r = w.call(Request::Read {
            sid: alice,
            with: 4,
            upto: 1,
        });
        assert!(matches!(r, Response::Failed(f) if f.code == ErrorCode::NotFriends));
    }
    let r = w.call(Request::Read {
        sid: alice,
        with: 4,
        upto: 1,
    });
    assert!(is_rate_limited(&r), "{r:?}");
}

#[test]
fn every_limited_call_answers_rate_limited_past_its_burst_and_unlimited_lifts_them() {
    type Call = fn(Sid) -> Request;
    let calls: [(Call, u32); 6] = [
        (
            |sid| Request::Presence {
                sid,
                status: Status::Away,
            },
            limits::RATE_PRESENCE_DEFAULT.burst,
        ),
        (
            |sid| Request::Ui {
                sid,
                state: "{}".into(),
            },
            limits::RATE_UI_DEFAULT.burst,
        ),
        (
            |sid| Request::Read {
                sid,
                with: BOB,
                upto: 1,
            },
            limits::RATE_READ_DEFAULT.burst,
        ),
        (
            |sid| Request::History {
                sid,
                with: BOB,
                before: None,
                limit: 50,
            },
            limits::RATE_HISTORY_DEFAULT.burst,
        ),
        (
            |sid| Request::Typing {
                sid,
                to: BOB,
                state: TypingState::Typing,
            },
            limits::RATE_TYPING_DEFAULT.burst,
        ),
        (
            |sid| Request::Send {
                sid,
                to: BOB,
                text: "x".into(),
                cid: None,
            },
            limits::RATE_SEND_DEFAULT.burst,
        ),
    ];
    for unlimited in [false, true] {
        let mut w = World::new(|c| {
            if unlimited {
                c.rate_limits = RateLimits::unlimited();
            }
        });
        let (alice, _) = w.connect(ALICE, "a");
        for (call, burst) in calls {
            for i in 0..burst + 10 {
                let r = w.call(call(alice));
                let over = i >= burst && !unlimited;
                assert_eq!(is_rate_limited(&r), over, "{:?} {i}: {r:?}", call(alice));
            }
        }
        // Connects to the live session: the first one above was free (it
        // loaded the session).
        let burst = limits::RATE_CONNECT_DEFAULT.burst;
        for i in 0..burst + 5 {
            let sid = Sid {
                user: ALICE,
                secret: 1_000 + u128::from(i),
            };
            let r = w.call(Request::Connect {
                user: ALICE,
                tab: Some(format!("t{i}")),
                sid,
            });
            let over = i >= burst && !unlimited;
            assert_eq!(is_rate_limited(&r), over, "connect {i}: {r:?}");
        }
        let limited = w.shards.iter().map(|s| s.stats().rate_limited).sum::<u64>();
        assert_eq!(limited == 0, unlimited, "{limited}");
    }
}

#[test]
fn typing_events_coalesce_to_one_per_friend_in_the_buffer() {
    let mut w = World::new(|_| {});
    let (bob, _) = w.connect(BOB, "b");
    let (alice, _) = w.connect(ALICE, "a");
    let (carol, _) = w.connect(CAROL, "c");
    for _ in 0..3 {
        for (sid, state) in [
            (alice, TypingState::Typing),
            (carol, TypingState::Typing),
            (alice, TypingState::Stopped),
        ] {
            assert_eq!(w.typing(sid, BOB, state), Response::Done);
        }
    }
    let buffer = w.buffer(BOB);
    assert_eq!(typing_from(&buffer, ALICE), vec![TypingState::Stopped]);
    assert_eq!(typing_from(&buffer, CAROL), vec![TypingState::Typing]);
    // Seqs still increase; a poll from 0 sees both, not a reset.
    assert!(buffer.windows(2).all(|p| p[0].seq < p[1].seq));
    let (seq, got) = events(w.poll(bob, 0));
    assert_eq!(seq, buffer.last().unwrap().seq);
    assert_eq!(got.len(), buffer.len());
}

#[test]
fn polls_find_events_by_seq_across_the_gaps_coalescing_leaves() {
    let mut w = World::new(|_| {});
    let (bob, _) = w.connect(BOB, "b");
    let (alice, _) = w.connect(ALICE, "a");
    let (carol, _) = w.connect(CAROL, "c");
    let (start, _) = events(w.poll(bob, 0));
    // seq start+1: alice typing (replaced below), +2: message, +3: carol
    // typing, +4: alice stopped.
    w.typing(alice, BOB, TypingState::Typing);
    w.send(alice, BOB, "m");
    w.typing(carol, BOB, TypingState::Typing);
    w.typing(alice, BOB, TypingState::Stopped);
    let seqs = |r: Response| {
        let (_, got) = events(r);
        got.iter().map(|e| e.seq - start).collect::<Vec<_>>()
    };
    assert_eq!(seqs(w.poll(bob, start)), vec![2, 3, 4]);
    // `since` in the gap, on each event and at the end.
    assert_eq!(seqs(w.poll(bob, start + 1)), vec![2, 3, 4]);
    assert_eq!(seqs(w.poll(bob, start + 2)), vec![3, 4]);
    assert_eq!(seqs(w.poll(bob, start + 3)), vec![4]);
    assert_eq!(seqs(w.poll(bob, start + 4)), Vec::<u64>::new());
}

#[test]
fn big_messages_are_bounded_by_bytes_and_a_poll_from_before_them_resets() {
    let mut w = World::new(|_| {});
    let (bob, _) = w.connect(BOB, "b");
    let (alice, _) = w.connect(ALICE, "a");
    let (since, _) = events(w.poll(bob, 0));
    // 25 messages of 4,000 four-byte code points: 400 KB of text, within
    // the send burst and far below the 128-event bound.
    let big = "😀".repeat(4_000);
    for _ in 0..25 {
        assert!(matches!(w.send(alice, BOB, &big), Response::Sent { .. }));
    }
    let bytes: usize = w
        .buffer(BOB)
        .iter()
        .map(|e| match &e.kind {
            EventKind::Message(m) => m.text.len(),
            _ => 0,
        })
        .sum();
    assert!(
        bytes <= limits::EVENTS_BUFFERED_BYTES_MAX,
        "{bytes} bytes buffered"
    );
    assert!(w.buffer(BOB).len() < 25);
    // The oldest were dropped: a poll from before them resets, one from
    // the newest kept does not.
    assert!(matches!(w.poll(bob, since), Response::Reset { .. }));
    let oldest_kept = w.buffer(BOB)[0].seq;
    let (_, got) = events(w.poll(bob, oldest_kept - 1));
    assert_eq!(got.len(), w.buffer(BOB).len());
}
