//! Hostile and malformed HTTP against the real server: each case gets the
//! documented status and code, the connection ends gracefully where the
//! protocol says so, and the server stays healthy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One malformed request: the raw bytes, the expected status and error
/// code, and whether the server must close the connection afterwards.
struct Case {
    why: &'static str,
    raw: Vec<u8>,
    status: u16,
    code: &'static str,
    closes: bool,
}

fn case(
    why: &'static str,
    raw: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    closes: bool,
) -> Case {
    Case {
        why,
        raw: raw.into(),
        status,
        code,
        closes,
    }
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
}

fn check(server: &Server, c: &Case) {
    eprintln!("case: {}", c.why);
    let a = request_bytes(server.addr, &c.raw);
    assert_eq!(a.status, c.status, "{}: {}", c.why, a.body);
    let v: Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("{}: body not JSON ({e}): {}", c.why, a.body));
    assert_eq!(v["ok"], false, "{}", c.why);
    assert_eq!(v["error"]["code"], c.code, "{}: {}", c.why, a.body);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        c.why
    );
    if c.closes {
        assert!(a.closed, "{}: expected a graceful close (EOF)", c.why);
    }
    // Never JSONP-wrapped, never echoing a bad callback.
    assert!(!a.body.contains("alert"), "{}: echoed {}", c.why, a.body);
}

#[test]
fn malformed_requests_get_documented_answers_and_the_server_stays_healthy() {
    let dir = temp_dir("http");
    let server = Server::start(&dir, &[]);
    let alice = server.connect(ALICE, "a");
    let sid = alice.sid.as_str();
    let long_target = format!("/ping?x={}", "a".repeat(64 * 1024));
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(16 * 1024));
    let cases = vec![
        case("garbage request line", "HELLO\r\n\r\n", 400, "bad_request", true),
        case("bad version", "GET /ping HTTP/9.9\r\n\r\n", 400, "bad_request", true),
        case("space in target", "GET /pi ng HTTP/1.1\r\nHost: t\r\n\r\n", 400, "bad_request", true),
        case("huge URL", format!("GET {long_target} HTTP/1.1\r\nHost: t\r\n\r\n"), 414, "too_large", true),
        case("101 headers", format!("GET /ping HTTP/1.1\r\n{many_headers}\r\n"), 431, "too_large", true),
        case("16 KiB header", format!("GET /ping HTTP/1.1\r\n{big_header}\r\n"), 431, "too_large", true),
        case(
            "declared body too large",
            "POST /send HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 70000\r\n\r\n",
            413,
            "too_large",
            true,
        ),
        case("unknown path", get("/nope"), 404, "not_found", false),
        case("admin path on client listener", get("/health"), 404, "not_found", false),
        case("wrong method", "DELETE /ping HTTP/1.1\r\nHost: t\r\n\r\n", 405, "bad_request", false),
        case("bad percent-encoding", get("/connect?token=%zz"), 400, "bad_request", false),
        case("truncated percent-encoding", get("/connect?token=ab%4"), 400, "bad_request", false),
        case("invalid UTF-8", get("/connect?token=%ff%fe"), 400, "bad_request", false),
        case("bad callback alert(1)//", get("/ping?callback=alert(1)//"), 400, "bad_request", false),
        case("bad callback a..b", get("/ping?callback=a..b"), 400, "bad_request", false),
        case("callback over 64 bytes", get(&format!("/ping?callback={}", "c".repeat(65))), 400, "bad_request", false),
        case("missing token", get("/connect"), 400, "bad_request", false),
        case("missing sid", get("/poll?since=0"), 400, "bad_request", false),
        case("duplicate parameter", get(&format!("/poll?sid={sid}&sid={sid}&since=0")), 400, "bad_request", false),
        case("since not digits", get(&format!("/poll?sid={sid}&since=-1")), 400, "bad_request", false),
        case("wait over 60", get(&format!("/poll?sid={sid}&since=0&wait=61")), 400, "bad_request", false),
        case("to not a number", get(&format!("/send?sid={sid}&to=bob&text=hi")), 400, "bad_request", false),
        case("empty text", get(&format!("/send?sid={sid}&to=2&text=")), 400, "bad_request", false),
        case(
            "text over 4000 characters",
            get(&format!("/send?sid={sid}&to=2&text={}", "%C3%A9".repeat(4001))),
            413,
            "too_large",
            false,
        ),
        case("cid over 64", get(&format!("/send?sid={sid}&to=2&text=x&cid={}", "k".repeat(65))), 400, "bad_request", false),
        case("bad typing state", get(&format!("/typing?sid={sid}&to=2&state=maybe")), 400, "bad_request", false),
        case("bad tab, bad token: token first", get("/connect?token=x&tab=a%20b"), 401, "unauthorized", false),
        case("bad tab name", get(&format!("/connect?token={}&tab=a%20b", token(ALICE))), 400, "bad_request", false),
        case("unknown sid and oversized text: sid first", get(&format!("/send?sid=1-00000000000000000000000000000000&to=2&text={}", "x".repeat(4001))), 401, "unknown_session", false),
        case("unknown sid", get("/poll?sid=1-00000000000000000000000000000000&since=0"), 401, "unknown_session", false),
        case("unparseable sid", get("/poll?sid=nonsense&since=0"), 401, "unknown_session", false),
        case("forged token", get("/connect?token=1.9999999999.abc"), 401, "unauthorized", false),
    ];
    for c in &cases {
        check(&server, c);
    }
    // The text limit counts code points: exactly 4000 multi-byte ones pass.
    let v = server.get(
        "/send",
        &[("sid", sid), ("to", "2"), ("text", &"é".repeat(4000))],
    );
    assert_eq!(v["ok"], true, "{v}");
    // Parameters in both query and body are refused.
    let body = "since=0";
    let raw = format!(
        "POST /poll?sid={sid}&since=0 HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = request(server.addr, &raw);
    assert_eq!(a.status, 400, "{}", a.body);
    // POST form works like GET.
    let body = format!("sid={sid}&to=2&text=posted+text");
    let raw = format!(
        "POST /send HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = request(server.addr, &raw);
    assert_eq!(a.status, 200, "{}", a.body);
    // A chunked body is handled.
    let body = format!("sid={sid}&to=2&text=chunked");
    let raw = format!(
        "POST /send HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let a = request(server.addr, &raw);
    assert_eq!(a.status, 200, "{}", a.body);
    // sendBeacon-style leave: POST, any content type, sid in the query.
    let other = server.connect(ALICE, "beacon");
    let raw = format!(
        "POST /leave?sid={} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 5\r\n\r\nhello",
        other.sid
    );
    let a = request(server.addr, &raw);
    assert_eq!(a.status, 200, "{}", a.body);

    // Still healthy: keep-alive with pipelined requests answered in order.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let pipelined = format!(
        "GET /ping?callback=first HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /poll?sid={sid}&since=0&wait=0&callback=third HTTP/1.1\r\nHost: t\r\n\r\n"
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let a1 = read_answer_from(&mut s, &mut buf);
    let a2 = read_answer_from(&mut s, &mut buf);
    let a3 = read_answer_from(&mut s, &mut buf);
    assert_eq!(a1.body, "/**/first({\"ok\":true});");
    assert_eq!(
        a1.headers["content-type"],
        "application/javascript; charset=utf-8"
    );
    assert_eq!(a1.headers["x-content-type-options"], "nosniff");
    assert_eq!(a1.headers["cache-control"], "no-store");
    assert_eq!(a2.status, 404);
    assert!(
        a3.body.starts_with("/**/third({\"ok\":true,\"seq\":"),
        "{}",
        a3.body
    );
    let (status, _) = server.get_status("/ping", &[]);
    assert_eq!(status, 200);
}

#[test]
fn slow_clients_are_cut_off_and_oversized_bodies_close_gracefully() {
    let dir = temp_dir("slow");
    let server = Server::start(&dir, &[]);
    // Slowloris: a head that never completes is cut off by the head deadline
    // while other clients are served.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET /ping HTTP/1.1\r\nX-Slow: ").unwrap();
    let start = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (status, _) = server.get_status("/ping", &[]);
    assert_eq!(status, 200);
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "slow client held for {took:?}"
    );
    // A body larger than allowed, actually sent: 413, then EOF (not a reset)
    // even though the client keeps sending.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'a'; 200 * 1024];
    let head = format!(
        "POST /send HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(&body);
    let a = read_answer(&mut s);
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.closed, "expected EOF after 413");
}

/// A client that hangs up during a held poll frees the tab's poll at once
/// (its home shard answers it, counted as abandoned), on either shard:
/// not when the poll's wait runs out.
#[test]
fn a_client_hanging_up_during_a_held_poll_frees_the_poll_at_once() {
    let dir = temp_dir("poll-hangup");
    let server = Server::start(&dir, &[]);
    // Users 1..=4: homed on both shards, so the poll's home is the conn
    // shard for some and a peer for others.
    let mut tabs: Vec<Tab> = (1..=4).map(|u| server.connect(u, "t")).collect();
    // Past every event so far (friends coming online), so the polls hold.
    for tab in &mut tabs {
        tab.poll(&server, 0);
    }
    // The gauge's samples, summed over the shards.
    let held = || -> u64 {
        let r = request(
            server.admin,
            &format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
                server.admin,
                server.admin_auth()
            ),
        );
        r.body
            .lines()
            .filter(|l| {
                l.starts_with("switchboard_held_polls{") || l.starts_with("switchboard_held_polls ")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let mut socks = Vec::new();
    for tab in &tabs {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        let since = tab.seq.to_string();
        let raw = KeepAlive::request(
            "/poll",
            &[("sid", &tab.sid), ("since", &since), ("wait", "25")],
        );
        s.write_all(raw.as_bytes()).unwrap();
        socks.push(s);
    }
    eventually(Duration::from_secs(5), "4 polls held", || held() == 4);
    // Polls answered at once, as above, are not abandoned ones.
    assert_eq!(server.metric("switchboard_polls_abandoned_total"), 0);
    let started = Instant::now();
    drop(socks);
    eventually(Duration::from_secs(5), "every held poll freed", || {
        held() == 0
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "freed only after {:?}",
        started.elapsed()
    );
    // Counted by the home shards (published at their next tick).
    eventually(Duration::from_secs(2), "4 polls counted abandoned", || {
        server.metric("switchboard_polls_abandoned_total") == 4
    });
    // The tabs are still attached: each polls again and is answered.
    for mut tab in tabs {
        assert!(tab.poll(&server, 0).iter().all(|e| e["type"] != "reset"));
    }
}

/// A request pipelined behind a held poll, after its hang-up watch began,
/// is not taken for a hang-up: the poll is answered when its wait runs
/// out, then the next request, in order, and nothing counts as abandoned.
#[test]
fn a_request_sent_behind_a_watched_held_poll_is_answered_after_it() {
    let dir = temp_dir("poll-pipelined");
    let server = Server::start(&dir, &[]);
    let mut tab = server.connect(1, "t");
    tab.poll(&server, 0);
    let mut conn = KeepAlive::open(&server);
    let since = tab.seq.to_string();
    conn.send_raw(&KeepAlive::request(
        "/poll",
        &[("sid", &tab.sid), ("since", &since), ("wait", "2")],
    ));
    // Sent while the poll is held and watched.
    std::thread::sleep(Duration::from_millis(300));
    conn.send_raw(&KeepAlive::request(
        "/poll",
        &[("sid", &tab.sid), ("since", &since), ("wait", "0")],
    ));
    let started = Instant::now();
    let (status, first) = conn.answer();
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["events"], serde_json::json!([]), "{first}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the held poll ran its wait: {:?}",
        started.elapsed()
    );
    let (status, second) = conn.answer();
    assert_eq!(
        (status, second["ok"].clone()),
        (200, Value::Bool(true)),
        "{second}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.metric("switchboard_polls_abandoned_total"), 0);
}
