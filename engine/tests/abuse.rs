//! One user flooding a friend (issue 8, item 6), over real sockets against
//! the real binary on the embedded store, with the default rate limits.
//! The flood goes over one keep-alive connection, as fast as the server
//! answers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The defaults (`SWITCHBOARD_RATE_SEND`, `SWITCHBOARD_RATE_TYPING`):
/// per second, at once.
const SEND: (f64, f64) = (5.0, 30.0);
const TYPING: (f64, f64) = (4.0, 8.0);

/// Counts the answers of `calls` calls made by `call`: (ok, rate-limited).
/// Any other answer fails the test.
fn flood(calls: usize, mut call: impl FnMut(usize) -> (u16, Value)) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for i in 0..calls {
        match call(i) {
            (200, v) if v["ok"] == true => ok += 1,
            (429, v) => {
                assert_eq!(v["error"]["code"], "rate_limited", "{v}");
                limited += 1;
            }
            (status, v) => panic!("call {i}: {status} {v}"),
        }
    }
    (ok, limited)
}

/// The most calls a `(per_s, burst)` limit lets through in `elapsed`.
fn most(limit: (f64, f64), elapsed: Duration) -> usize {
    (limit.1 + limit.0 * elapsed.as_secs_f64()).floor() as usize + 1
}

#[test]
fn a_typing_flood_gets_429_and_the_friend_still_gets_the_message_before_it() {
    let dir = temp_dir("abuse-typing");
    let server = Server::start(&dir, &[]);
    let mut bob = server.connect(BOB, "b");
    let alice = server.connect(ALICE, "a");
    bob.poll(&server, 0);
    let before = bob.seq;
    let v = server.get(
        "/send",
        &[
            ("sid", &alice.sid),
            ("to", "2"),
            ("text", "before the flood"),
        ],
    );
    assert_eq!(v["ok"], true, "{v}");

    let mut conn = KeepAlive::open(&server);
    let t0 = Instant::now();
    let (ok, limited) = flood(1_000, |i| {
        let state = if i % 2 == 0 { "typing" } else { "stopped" };
        conn.get(
            "/typing",
            &[("sid", &alice.sid), ("to", "2"), ("state", state)],
        )
    });
    let elapsed = t0.elapsed();
    assert!(ok >= TYPING.1 as usize, "{ok} typing calls went through");
    assert!(ok <= most(TYPING, elapsed), "{ok} in {elapsed:?}");
    assert_eq!(ok + limited, 1_000);

    // Bob resumes from before the message: no reset (`Tab::poll` checks),
    // the message, and at most one typing event from alice.
    bob.seq = before;
    let events = bob.poll(&server, 0);
    assert_eq!(messages(&events), vec![(ALICE, "before the flood".into())]);
    let typing = events.iter().filter(|e| e["type"] == "typing").count();
    assert!(typing <= 1, "{typing} typing events: {events:?}");

    // Operators see it: every refusal counted, coalescing too (the core's
    // counters reach /metrics at the next tick, however late it runs).
    eventually(Duration::from_secs(10), "the counters on /metrics", || {
        server.metric("switchboard_rate_limited_total") >= limited as u64
            && server.metric("switchboard_typing_coalesced_total") > 0
    });
    assert_eq!(
        server.metric("switchboard_rate_limited_total"),
        limited as u64
    );
}

#[test]
fn a_send_flood_gets_429_and_stores_at_most_burst_plus_rate_times_time() {
    let dir = temp_dir("abuse-send");
    let server = Server::start(&dir, &[]);
    let alice = server.connect(ALICE, "a");
    let bob = server.connect(BOB, "b");

    let mut conn = KeepAlive::open(&server);
    let t0 = Instant::now();
    let (ok, limited) = flood(300, |i| {
        let text = format!("spam {i}");
        conn.get(
            "/send",
            &[("sid", &alice.sid), ("to", "2"), ("text", &text)],
        )
    });
    let elapsed = t0.elapsed();
    assert!(limited > 0, "{ok} sends in {elapsed:?}, none limited");
    assert!(ok <= most(SEND, elapsed), "{ok} in {elapsed:?}");

    // What is stored is exactly what was acknowledged.
    let mut stored = 0;
    let mut before: Option<String> = None;
    loop {
        let mut params = vec![("sid", bob.sid.as_str()), ("with", "1"), ("limit", "100")];
        if let Some(b) = &before {
            params.push(("before", b.as_str()));
        }
        let v = server.get("/history", &params);
        assert_eq!(v["ok"], true, "{v}");
        let msgs = v["messages"].as_array().unwrap();
        stored += msgs.len();
        if v["more"] == false {
            break;
        }
        before = Some(msgs[0]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(stored, ok);
}
