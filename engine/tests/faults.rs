//! Faults against the real binary over real sockets (2 shards, embedded
//! store): a panic while a shard handles one request costs that request
//! and its user's session, never the shard; a panic anywhere else on an
//! executor ends the process at once, non-zero, for the service manager
//! to restart; a full outbox never loses a reply (requests past the
//! in-flight bound are shed at once instead), and its counters show on
//! `/metrics`. Faults are injected with the test-only
//! `SWITCHBOARD_FAULT_*` variables (the `fault-injection` feature the
//! engine's tests turn on). Every wait has a timeout.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchboard_shards::home_shard;

const T: Duration = Duration::from_secs(20);

/// The demo directory's friendships.
const FRIENDS: [(u64, u64); 7] = [(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 6), (5, 6)];

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A friend of `user` in the demo directory.
fn a_friend_of(user: u64) -> u64 {
    FRIENDS
        .iter()
        .find_map(|&(a, b)| match () {
            () if a == user => Some(b),
            () if b == user => Some(a),
            () => None,
        })
        .expect("every demo user has a friend")
}

/// `/metrics`, and the sum over shards of counter (or gauge) `name`.
fn counter(server: &Server, name: &str) -> (u64, String) {
    let r = request(
        server.admin,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.admin
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sum = r
        .body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        r.body.contains(&format!("# TYPE {name} counter"))
            || r.body.contains(&format!("# TYPE {name} gauge")),
        "{}",
        r.body
    );
    (sum, r.body)
}

/// Sends until the send is not shed (at most `T`), returns the answer.
fn send(server: &Server, sid: &str, to: u64, text: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = server.get(
            "/send",
            &[("sid", sid), ("to", &to.to_string()), ("text", text)],
        );
        if code(&v) != "unavailable" || start.elapsed() > T {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_panic_in_a_shard_costs_one_request_and_one_session_and_the_rest_keep_chatting() {
    // The panicking user, and two friends homed on different shards who
    // are neither.
    let (x, y) = FRIENDS
        .into_iter()
        .find(|&(a, b)| home_shard(a, 2) != home_shard(b, 2))
        .expect("the demo has friends on both shards");
    let p = (1..=6).find(|u| *u != x && *u != y).unwrap();
    let dir = temp_dir("fault-panic");
    let panic_user = p.to_string();
    let mut server = Server::start(&dir, &[("SWITCHBOARD_FAULT_PANIC_USER", &panic_user)]);
    let mut tx = server.connect(x, "x");
    let mut ty = server.connect(y, "y");
    let mut p1 = server.connect(p, "p1");
    let p2 = server.connect(p, "p2");

    std::thread::scope(|scope| {
        // p2 holds a poll while p1's send panics the shard: the poll is
        // answered unknown_session (the session was dropped), not left
        // hanging.
        let held = scope.spawn(|| {
            let since = p2.seq.to_string();
            server.get(
                "/poll",
                &[("sid", &p2.sid), ("since", &since), ("wait", "15")],
            )
        });
        // Held: not answered half a second on (an unknown sid or news
        // would have been answered at once), and answered below by the
        // session's drop, as only a held poll is.
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !held.is_finished(),
            "the poll was answered before the panic"
        );
        let secret = "do-not-log-this-text";
        let params = [
            ("sid", p1.sid.as_str()),
            ("to", &a_friend_of(p).to_string()),
            ("text", secret),
        ];
        let (status, body) = server.get_status("/send", &params);
        assert_eq!(status, 503, "the panicking request: {body}");
        assert!(body.contains("\"unavailable\""), "{body}");
        let v = held.join().unwrap();
        assert_eq!(code(&v), "unknown_session", "the held poll: {v}");
        assert!(
            server.log_lines(secret).is_empty(),
            "the message text was logged"
        );
    });
    let v = server.get("/poll", &[("sid", &p1.sid), ("since", "0"), ("wait", "0")]);
    assert_eq!(code(&v), "unknown_session", "p1 after the panic: {v}");
    // The log thread writes it a moment later than the answer.
    eventually(T, "the panic is logged", || {
        !server
            .log_lines("handling request send for user")
            .is_empty()
    });
    assert_eq!(server.log_lines("handling request send for user").len(), 1);

    // The user connects again; the others chat both ways, across shards.
    p1 = server.connect(p, "p1");
    assert!(p1.sid != p2.sid);
    let text = format!("hello from {x}");
    let v = send(&server, &tx.sid, y, &text);
    assert_eq!(v["ok"], true, "{v}");
    let got = ty.poll_until(&server, T, |ev| messages(ev).iter().any(|m| m.1 == text));
    assert!(messages(&got).contains(&(x, text)));
    let text = format!("hello from {y}");
    let v = send(&server, &ty.sid, x, &text);
    assert_eq!(v["ok"], true, "{v}");
    let got = tx.poll_until(&server, T, |ev| messages(ev).iter().any(|m| m.1 == text));
    assert!(messages(&got).contains(&(y, text)));

    assert_eq!(counter(&server, "switchboard_panics_total").0, 1);
    assert!(
        server.wait_exit(Duration::ZERO).is_none(),
        "the server exited"
    );
}

#[test]
fn a_panic_outside_a_shards_input_ends_the_process_at_once_non_zero() {
    let dir = temp_dir("fault-outside");
    let user = ALICE.to_string();
    let mut server = Server::start(&dir, &[("SWITCHBOARD_FAULT_PANIC_OUTSIDE_USER", &user)]);
    // The connect panics in the handler, on the conn shard's executor.
    let asked = Instant::now();
    let token = token(ALICE);
    let target = format!("/connect?{}", encode(&[("token", &token)]));
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    use std::io::{Read, Write};
    let _ = stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("the server kept running after a panic outside the supervised region");
    assert_eq!(status.code(), Some(70), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        !server
            .log_lines("outside the supervised region: exiting")
            .is_empty(),
        "the exit was not logged"
    );
}

#[test]
fn a_stuck_shard_ends_the_process_within_the_stall_bound() {
    // The watchdog's bound is lowered to 2 s (10 s in production).
    let dir = temp_dir("fault-stall");
    let user = ALICE.to_string();
    let mut server = Server::start(
        &dir,
        &[
            ("SWITCHBOARD_FAULT_STALL_SHARD_USER", &user),
            ("SWITCHBOARD_FAULT_SHARD_STALL_MS_MAX", "2000"),
        ],
    );
    // The connect blocks its conn shard's executor (an hour's sleep).
    let token = token(ALICE);
    let target = format!("/connect?{}", encode(&[("token", &token)]));
    let mut stream = TcpStream::connect(server.addr).unwrap();
    use std::io::Write;
    stream
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    eventually(T, "the stall", || {
        !server.log_lines("blocks shard-").is_empty()
    });
    let stuck = Instant::now();
    let status = server
        .wait_exit(T)
        .expect("the server kept running with a stuck shard");
    assert_eq!(status.code(), Some(70), "{status}");
    // The bound (2 s), one watchdog check (250 ms) and some slack.
    let took = stuck.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        !server.log_lines("no tick for").is_empty(),
        "the exit did not say why"
    );
}

#[test]
fn a_burst_of_replies_to_held_polls_loses_none_past_the_in_flight_bound_calls_are_shed() {
    // Outboxes of 4 messages: 1 request in flight per peer. Bob's 32
    // tabs poll one after another, so an outbox never holds more than a
    // poll or two at once; those from connections on the other shard
    // past the first are shed at once, and the reply to the one admitted
    // fits when alice's message answers every held poll in one burst.
    // (Counting only queued requests admitted them all, and the burst of
    // about 16 replies overflowed the outbox: those polls hung.)
    let dir = temp_dir("fault-outbox");
    // 32 tabs of one user connect at once: over the connect rate limit.
    let server = Server::start(
        &dir,
        &[
            ("SWITCHBOARD_FAULT_OUTBOX_DEPTH", "4"),
            ("SWITCHBOARD_RATE_LIMITS", "off"),
        ],
    );
    let alice = server.connect(ALICE, "a");
    let tabs: Vec<Tab> = (0..32)
        .map(|i| server.connect(BOB, &format!("b{i}")))
        .collect();
    let text = "one event for every held poll";
    std::thread::scope(|scope| {
        let polls: Vec<_> = tabs
            .iter()
            .map(|tab| {
                let server = &server;
                std::thread::sleep(Duration::from_millis(25));
                scope.spawn(move || {
                    let since = tab.seq.to_string();
                    let params = [("sid", tab.sid.as_str()), ("since", &since), ("wait", "10")];
                    let target = format!("/poll?{}", encode(&params));
                    let r = request(
                        server.addr,
                        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
                    );
                    (r, Instant::now())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1_000));
        let v = send(&server, &alice.sid, BOB, text);
        assert_eq!(v["ok"], true, "{v}");
        let sent = Instant::now();
        let (mut delivered, mut shed) = (0, 0);
        for poll in polls {
            let (r, answered) = poll.join().unwrap();
            let v: Value = serde_json::from_str(&r.body).unwrap();
            match r.status {
                200 => {
                    assert!(
                        answered < sent + Duration::from_secs(5),
                        "a held poll waited past the send: its reply was lost: {v}"
                    );
                    assert_eq!(messages(v["events"].as_array().unwrap())[0].1, text, "{v}");
                    delivered += 1;
                }
                503 => {
                    assert_eq!(code(&v), "unavailable", "{v}");
                    shed += 1;
                }
                other => panic!("poll answered {other}: {v}"),
            }
        }
        eprintln!("held polls: {delivered} answered with the event, {shed} shed");
        assert!(
            delivered > 0 && shed > 0,
            "delivered {delivered}, shed {shed}"
        );
    });
    let (dropped, metrics) = counter(&server, "switchboard_dropped_replies_total");
    assert_eq!(dropped, 0, "{metrics}");
    assert!(
        counter(&server, "switchboard_shed_requests_total").0 > 0,
        "{metrics}"
    );
    assert_eq!(
        counter(&server, "switchboard_call_timeouts_total").0,
        0,
        "{metrics}"
    );
    for name in ["deliveries", "presence", "roster"] {
        counter(&server, &format!("switchboard_dropped_{name}_total"));
    }
}

#[test]
fn a_dropped_delivery_resets_the_recipients_tabs_so_they_reload_it_from_history() {
    // Friends homed on different shards; the first delivery between
    // shards is dropped as a full outbox would drop it.
    let (x, y) = FRIENDS
        .into_iter()
        .find(|&(a, b)| home_shard(a, 2) != home_shard(b, 2))
        .expect("the demo has friends on both shards");
    let dir = temp_dir("fault-drop-delivery");
    let server = Server::start(&dir, &[("SWITCHBOARD_FAULT_DROP_DELIVERIES", "1")]);
    let tx = server.connect(x, "x");
    let ty = server.connect(y, "y");
    std::thread::scope(|scope| {
        let held = scope.spawn(|| {
            let since = ty.seq.to_string();
            let asked = Instant::now();
            let v = server.get(
                "/poll",
                &[("sid", &ty.sid), ("since", &since), ("wait", "20")],
            );
            (v, asked.elapsed())
        });
        // Send once the poll is held (a fixed sleep was not always enough
        // on a loaded machine).
        eventually(T, "y's poll is held", || {
            counter(&server, "switchboard_held_polls").0 == 1
        });
        let v = send(&server, &tx.sid, y, "dropped on the way");
        assert_eq!(v["ok"], true, "{v}");
        let (v, waited) = held.join().unwrap();
        // The tab is told to reload at once, not left waiting for an
        // event that will never come.
        assert_eq!(v["reset"], true, "the held poll: {v}");
        assert!(waited < Duration::from_secs(5), "reset after {waited:?}");
    });
    let h = server.get("/history", &[("sid", &ty.sid), ("with", &x.to_string())]);
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["dropped on the way"], "{h}");
    assert_eq!(
        counter(&server, "switchboard_dropped_deliveries_total").0,
        1
    );
    assert_eq!(counter(&server, "switchboard_resyncs_sent_total").0, 1);
    // The shard core's counters reach /metrics at its next tick.
    eventually(T, "switchboard_resyncs_total reaches 1", || {
        counter(&server, "switchboard_resyncs_total").0 == 1
    });
}

#[test]
fn a_panic_while_handling_a_stored_send_answers_it_at_once_and_the_retry_delivers_it_once() {
    // Handling the storage result that stored x's message panics, after
    // the shard took the job out: the send must still be answered (not
    // left to its call deadline), and its retry must deliver the message
    // that was stored.
    let (x, y) = FRIENDS
        .into_iter()
        .find(|&(a, b)| home_shard(a, 2) != home_shard(b, 2))
        .expect("the demo has friends on both shards");
    let dir = temp_dir("fault-panic-stored");
    let panic_user = x.to_string();
    let server = Server::start(
        &dir,
        &[("SWITCHBOARD_FAULT_PANIC_STORED_USER", panic_user.as_str())],
    );
    let tx = server.connect(x, "x");
    let mut ty = server.connect(y, "y");
    let to = y.to_string();
    let params = [
        ("sid", tx.sid.as_str()),
        ("to", to.as_str()),
        ("text", "stored, then a panic"),
        ("cid", "k1"),
    ];
    let asked = Instant::now();
    let (status, body) = server.get_status("/send", &params);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("internal error"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "answered after {:?}: {body}",
        asked.elapsed()
    );
    // x's session was dropped; the client connects again and retries.
    let tx = server.connect(x, "x");
    let params = [
        ("sid", tx.sid.as_str()),
        ("to", to.as_str()),
        ("text", "stored, then a panic"),
        ("cid", "k1"),
    ];
    let v = server.get("/send", &params);
    assert_eq!(v["ok"], true, "the retry: {v}");
    let text = "stored, then a panic".to_string();
    let got = ty.poll_until(&server, T, |ev| messages(ev).iter().any(|m| m.1 == text));
    let mut once = messages(&got);
    once.extend(messages(&ty.poll(&server, 1)));
    let copies = once.iter().filter(|m| m.1 == text).count();
    assert_eq!(copies, 1, "{once:?}");
    assert_eq!(counter(&server, "switchboard_panics_total").0, 1);
}

#[test]
fn a_panic_on_a_tick_drops_the_user_whose_timer_it_fired_and_their_held_poll_is_answered() {
    // A tick concerns many users; it pops p's poll timer, then panics.
    // Unless p is dropped, p's tab is left polling with no timer: the
    // held poll is never answered and the tab never times out.
    let p = ALICE;
    let dir = temp_dir("fault-panic-timer");
    let user = p.to_string();
    let server = Server::start(
        &dir,
        &[("SWITCHBOARD_FAULT_PANIC_TIMER_USER", user.as_str())],
    );
    let mut other = server.connect(BOB, "b");
    let tab = server.connect(p, "p");
    let since = tab.seq.to_string();
    let asked = Instant::now();
    let v = server.get(
        "/poll",
        &[("sid", &tab.sid), ("since", &since), ("wait", "1")],
    );
    assert_eq!(code(&v), "unknown_session", "the held poll: {v}");
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        asked.elapsed()
    );
    assert_eq!(counter(&server, "switchboard_panics_total").0, 1);
    let line = format!("handling tick for user {p} panicked");
    eventually(T, "the panic is logged", || {
        !server.log_lines(&line).is_empty()
    });
    assert_eq!(server.log_lines(&line).len(), 1);
    // Everyone else goes on.
    other.poll(&server, 0);
    let p2 = server.connect(p, "p2");
    assert_ne!(p2.sid, tab.sid);
}
