//! What a draining shard still asks of storage, and what a poll loop costs:
//! one shard, a virtual clock, storage answered only when a test says so.
//! Each test is a claim about a bound the engine's stop or a flood relies
//! on.

use std::sync::Arc;

use switchboard_shards::model::*;
use switchboard_shards::ratelimit::{Kind, Rate, RateLimits};
use switchboard_shards::{Config, Input, Output, Shard};

const ALICE: UserId = 1;

/// One shard, its clock, and what it asked for that is not yet taken.
struct One {
    shard: Shard,
    now: u64,
    /// Storage jobs asked for and not yet answered, oldest first.
    jobs: Vec<(u64, StorageJob)>,
    /// Replies, by request number.
    replies: Vec<(u64, Response)>,
    next_req: u64,
}

impl One {
    fn new(tune: impl Fn(&mut Config)) -> One {
        let mut config = Config::new(0, 1);
        tune(&mut config);
        One {
            shard: Shard::new(config),
            now: 1_000,
            jobs: Vec::new(),
            replies: Vec::new(),
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
                // Nobody is traced here: a note would be a cost to untraced users.
                Output::Trace { user, .. } => {
                    panic!("a trace note for user {user}, whom nobody traces")
                }
                Output::Peer { msg, .. } => panic!("one shard sent a peer message: {msg:?}"),
            }
        }
    }

    /// Runs `request`; returns its answer, if it came at once.
    fn call(&mut self, request: Request) -> Option<Response> {
        self.next_req += 1;
        let req = self.next_req;
        let reply = ReplyTo { shard: 0, req };
        self.feed(Input::Request { reply, request });
        let i = self.replies.iter().position(|(r, _)| *r == req)?;
        Some(self.replies.remove(i).1)
    }

    /// Connects a tab of `user` whose session loads with no friends.
    fn connect(&mut self, user: UserId) -> Sid {
        let sid = Sid { user, secret: 7 };
        self.next_req += 1;
        let reply = ReplyTo {
            shard: 0,
            req: self.next_req,
        };
        let request = Request::Connect {
            user,
            tab: None,
            sid,
        };
        self.feed(Input::Request { reply, request });
        let (job, _) = self.jobs.remove(0);
        let loaded = StorageOutput::Session {
            name: Some(Arc::from("alice")),
            friends: Vec::new(),
            ui: None,
            unread: Vec::new(),
        };
        self.feed(Input::Storage {
            job,
            result: Ok(loaded),
        });
        assert!(matches!(
            self.replies.pop(),
            Some((_, Response::Connected(_)))
        ));
        sid
    }

    /// Advances the clock by `ms`, one tick every 50 ms.
    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / 50 {
            self.now += 50;
            self.feed(Input::Tick);
        }
    }
}

fn poll(sid: Sid, wait_ms: u64) -> Request {
    Request::Poll {
        sid,
        since: 0,
        wait_ms,
    }
}

fn is_rate_limited(r: &Option<Response>) -> bool {
    matches!(r, Some(Response::Failed(f)) if f.code == ErrorCode::RateLimited)
}

#[test]
fn a_draining_shard_starts_no_periodic_roster_reread() {
    let mut w = One::new(|c| c.roster_refresh_ms = 1_000);
    w.connect(ALICE);
    // Serving: the interval re-reads the roster.
    w.run_for(1_100);
    assert_eq!(w.jobs.len(), 1, "no periodic re-read while serving");
    let (job, _) = w.jobs.remove(0);
    let friends = Vec::new();
    let result = Ok(StorageOutput::Roster { friends });
    w.feed(Input::Storage { job, result });
    // Draining: the intervals run out, nothing is asked of storage (the
    // stop waits for the jobs in flight, so new ones would hold it open).
    w.feed(Input::Drain);
    w.run_for(5_000);
    assert!(w.jobs.is_empty(), "re-reads while draining: {:?}", w.jobs);
    assert!(w.shard.live_session(ALICE).is_some());
}

#[test]
fn polls_answered_at_once_are_rate_limited_held_ones_are_not() {
    let mut w = One::new(|c| {
        c.rate_limits = RateLimits::unlimited();
        c.rate_limits.set(Kind::Poll, Some(Rate::new(10, 40)));
    });
    let sid = w.connect(ALICE);
    // A loop of wait=0 polls at one instant: the burst goes through, the
    // next is rate_limited (and counted).
    for i in 0..40 {
        let r = w.call(poll(sid, 0));
        assert!(
            matches!(r, Some(Response::Events { .. })),
            "poll {i}: {r:?}"
        );
    }
    assert!(is_rate_limited(&w.call(poll(sid, 0))));
    assert_eq!(w.shard.stats().rate_limited, 1);
    // A held poll is not charged: it is held, then ended by the next one.
    assert_eq!(w.call(poll(sid, 25_000)), None, "the poll is held");
    assert!(is_rate_limited(&w.call(poll(sid, 0))));
    // A tenth of a second later there is room for one more.
    w.run_for(100);
    assert!(matches!(
        w.call(poll(sid, 0)),
        Some(Response::Events { .. })
    ));
}

#[test]
fn the_default_poll_limit_is_generous_for_the_browser_client() {
    let rate = Kind::Poll.default_rate();
    // Every tab of a user (at most 32) catching up at once.
    assert!(rate.burst as usize >= 32, "{rate:?}");
    // Followers poll wait=0 every 20 s per tab: 32 tabs are 1.6 a second.
    assert!(rate.per_s >= 2, "{rate:?}");
}
