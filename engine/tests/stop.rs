//! Stopping and starting safely, on the real binary and real sockets:
//! SIGTERM answers every held poll (an ordinary empty answer) before its
//! connection closes, closes idle keep-alive connections, keeps what was
//! acknowledged and exits 0 within the stop bound. Every wait has a
//! timeout.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The longest a graceful stop may take (the binary's `STOP_TIMEOUT_MS`
/// is 10 s; a drain with nothing stuck takes well under a second).
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Sends a keep-alive `GET path?params` on a new connection without
/// reading the answer.
fn send_get(addr: SocketAddr, path: &str, params: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let raw = format!("GET {path}?{} HTTP/1.1\r\nHost: t\r\n\r\n", encode(params));
    s.write_all(raw.as_bytes()).expect("write");
    s
}

/// Asserts that nothing arrives on `s` for `for_ms` (the poll is held).
fn assert_quiet(s: &mut TcpStream, for_ms: u64, what: &str) {
    s.set_read_timeout(Some(Duration::from_millis(for_ms)))
        .unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("{what}: expected a held poll, got {other:?}"),
    }
}

/// Reads the rest of `s` until EOF (at most 10 s): true if it ended
/// cleanly with nothing more.
fn ends_cleanly(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0))
}

#[test]
fn sigterm_answers_every_held_poll_before_closing_and_exits_0_keeping_acknowledged_messages() {
    let dir = temp_dir("sigterm");
    let mut server = Server::start(&dir, &[]);
    // Alice and bob live on different shards (home_shard(1, 2) != (2, 2)),
    // so their polls are held on both shards; with two tabs each, the
    // connections land on both conn shards too, as the kernel spreads them.
    let mut tabs: Vec<(u64, Tab)> = Vec::new();
    for (user, tab) in [(ALICE, "a1"), (ALICE, "a2"), (BOB, "b1"), (BOB, "b2")] {
        tabs.push((user, server.connect(user, tab)));
    }
    // A message acknowledged just before the stop.
    let bob_sid = tabs[2].1.sid.clone();
    let sent = server.get(
        "/send",
        &[
            ("sid", &bob_sid),
            ("to", "1"),
            ("text", "before the stop"),
            ("cid", "s1"),
        ],
    );
    assert_eq!(sent["ok"], true, "{sent}");
    // Every tab catches up, so its next poll is held.
    for (_, tab) in &mut tabs {
        tab.poll(&server, 0);
    }
    let mut held: Vec<(u64, TcpStream)> = tabs
        .iter()
        .map(|(_, tab)| {
            let since = tab.seq.to_string();
            let s = send_get(
                server.addr,
                "/poll",
                &[("sid", &tab.sid), ("since", &since), ("wait", "25")],
            );
            (tab.seq, s)
        })
        .collect();
    // An idle keep-alive connection, on both the client and admin ports.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut idle).status, 200);
    let mut idle_admin = TcpStream::connect(server.admin).unwrap();
    idle_admin
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut idle_admin).status, 200);
    for (i, (_, s)) in held.iter_mut().enumerate() {
        assert_quiet(s, 300, &format!("poll {i}"));
    }

    let asked = Instant::now();
    server.signal("TERM");

    for (i, (seq, mut s)) in held.into_iter().enumerate() {
        s.set_read_timeout(Some(STOP_BOUND)).unwrap();
        let answer = read_answer(&mut s);
        assert_eq!(answer.status, 200, "poll {i}: {answer:?}");
        let v: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok": true, "seq": seq, "events": []}),
            "poll {i}: the ordinary empty answer"
        );
        assert_eq!(
            answer.headers.get("connection").map(String::as_str),
            Some("close"),
            "poll {i}: the answer says the connection ends"
        );
        assert!(answer.closed, "poll {i}: closed after its answer");
        // Like a browser, the client closes its end once it read the end.
        drop(s);
    }
    assert!(ends_cleanly(&mut idle), "idle client connection closed");
    assert!(
        ends_cleanly(&mut idle_admin),
        "idle admin connection closed"
    );
    let status = server
        .wait_exit(STOP_BOUND)
        .unwrap_or_else(|| panic!("still running {STOP_BOUND:?} after SIGTERM"));
    assert!(status.success(), "exit status {status:?}");
    // Nothing was stuck, so nothing waited for the drain deadline (3 s).
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert!(server.log_lines("still open").is_empty());

    // What was acknowledged is there after a restart.
    let again = Server::start_env(&dir, server.env.clone());
    drop(server);
    let alice = again.connect(ALICE, "a3");
    let h = again.get("/history", &[("sid", &alice.sid), ("with", "2")]);
    let texts: Vec<&str> = h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"))
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["before the stop"], "{h}");
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_never_finishes_its_request_holds_the_stop_no_longer_than_the_drain_bound() {
    let dir = temp_dir("stuck");
    let mut server = Server::start(&dir, &[]);
    // Half a request head: the server waits up to the head timeout (10 s)
    // for the rest.
    let mut stuck = TcpStream::connect(server.addr).unwrap();
    stuck.write_all(b"GET /ping HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(STOP_BOUND)
        .unwrap_or_else(|| panic!("still running {STOP_BOUND:?} after SIGTERM"));
    assert!(status.success(), "exit status {status:?}");
    // The drain deadline (3 s), not the head timeout.
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(server.log_lines("1 connections still open").len(), 1);
    drop(stuck);
    let _ = std::fs::remove_dir_all(&dir);
}
