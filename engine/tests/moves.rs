//! Connections move home: a plain keep-alive connection whose calls keep
//! going to a user homed on the other shard is handed to that shard
//! between two requests (`CONNECTIONS_MOVE`, docs/architecture.md), and
//! goes on answering there: no call fails, a held poll after the move is
//! woken by a message sent on another connection, pipelined requests are
//! answered in order, and with the setting off nothing moves.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One keep-alive connection, talking HTTP/1.1 by hand.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(server: &Server) -> Conn {
        let stream = TcpStream::connect(server.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn request(path: &str, params: &[(&str, &str)]) -> String {
        format!("GET {path}?{} HTTP/1.1\r\nHost: t\r\n\r\n", encode(params))
    }

    /// Sends raw requests at once (pipelined when several).
    fn send_raw(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).expect("write");
    }

    /// Reads one answer: 200, kept alive, JSON.
    fn answer(&mut self) -> Value {
        let a = read_answer_from(&mut self.stream, &mut self.buf);
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(!a.closed, "the connection closed: {}", a.body);
        serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body))
    }

    fn get(&mut self, path: &str, params: &[(&str, &str)]) -> Value {
        self.send_raw(&Conn::request(path, params));
        self.answer()
    }
}

/// A connection for each of `tabs`, each making `calls` polls (wait 0)
/// for its tab, every answer `ok`.
fn poll_on_each(server: &Server, tabs: &[Tab], calls: usize) -> Vec<Conn> {
    let mut conns: Vec<Conn> = tabs.iter().map(|_| Conn::open(server)).collect();
    for (conn, tab) in conns.iter_mut().zip(tabs) {
        for _ in 0..calls {
            let v = conn.get("/poll", &[("sid", &tab.sid), ("since", "0"), ("wait", "0")]);
            assert_eq!(v["ok"], true, "poll: {v}");
        }
    }
    conns
}

fn moved_out(server: &Server) -> u64 {
    server.metric("switchboard_connections_moved_out_total")
}

fn poll_now(tab: &Tab) -> String {
    Conn::request("/poll", &[("sid", &tab.sid), ("since", "0"), ("wait", "0")])
}

#[test]
fn connections_move_to_their_users_home_shard_and_keep_answering() {
    let dir = temp_dir("moves");
    // Many polls answered at once: more than a user's poll rate allows.
    let server = Server::start(&dir, &[("SWITCHBOARD_RATE_LIMITS", "off")]);
    // A tab holds one poll at a time: a tab per connection.
    let bobs: Vec<Tab> = (0..8)
        .map(|i| server.connect(BOB, &format!("b{i}")))
        .collect();
    let alice = server.connect(ALICE, "a");
    // Eight connections, each making four calls for bob, past the two
    // that move one; the kernel spreads them over both shards, so some
    // land away from bob's home shard (all eight on one: 1 in 256, then
    // more are opened until one moves).
    let mut conns = poll_on_each(&server, &bobs, 4);
    let mut extra = 0;
    while moved_out(&server) == 0 {
        assert!(extra < 64, "64 more connections and none moved");
        poll_on_each(&server, &bobs[..1], 4);
        extra += 1;
    }
    let out = moved_out(&server);
    let into = server.metric("switchboard_connections_moved_in_total");
    assert_eq!(out, into, "moved out and in differ");
    assert!(out <= 8 + extra, "a connection moved twice: {out}");

    // Every connection, moved or not, still answers: a held poll on each
    // is woken by one message alice sends on a connection of her own.
    for (conn, bob) in conns.iter_mut().zip(&bobs) {
        let since = conn.get("/poll", &[("sid", &bob.sid), ("since", "0"), ("wait", "0")])["seq"]
            .as_u64()
            .unwrap()
            .to_string();
        conn.send_raw(&Conn::request(
            "/poll",
            &[("sid", &bob.sid), ("since", &since), ("wait", "20")],
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut alice_conn = Conn::open(&server);
    let sent = alice_conn.get(
        "/send",
        &[
            ("sid", &alice.sid),
            ("to", &BOB.to_string()),
            ("text", "after the move"),
        ],
    );
    assert_eq!(sent["ok"], true, "send: {sent}");
    for conn in &mut conns {
        let v = conn.answer();
        assert_eq!(v["ok"], true, "held poll: {v}");
        assert_eq!(
            messages(v["events"].as_array().unwrap()),
            vec![(ALICE, "after the move".to_string())],
            "{v}"
        );
    }
}

#[test]
fn a_connection_moves_only_between_requests_with_nothing_read_past_its_answer() {
    let dir = temp_dir("moves-pipelined");
    let server = Server::start(&dir, &[("SWITCHBOARD_RATE_LIMITS", "off")]);
    let bob = server.connect(BOB, "b");
    // Until a connection lands away from bob's home shard and moves: one
    // poll alone, then two polls and a ping pipelined in one write (the
    // answer to the first of them makes the streak that moves a
    // connection, but the next requests are read already: it stays until
    // they are answered, in order, and moves after the ping's), then
    // polls one at a time, answered by the shard it moved to.
    for attempt in 0.. {
        assert!(attempt < 64, "64 connections and none moved");
        let before = moved_out(&server);
        let mut conn = Conn::open(&server);
        conn.send_raw(&poll_now(&bob));
        assert_eq!(conn.answer()["ok"], true);
        conn.send_raw(&[poll_now(&bob), poll_now(&bob), Conn::request("/ping", &[])].concat());
        for _ in 0..2 {
            let v = conn.answer();
            assert_eq!(v["ok"], true, "pipelined poll: {v}");
            assert!(v["events"].as_array().is_some(), "a poll's answer: {v}");
        }
        let pong = conn.answer();
        assert_eq!(pong["ok"], true, "{pong}");
        assert!(
            pong.get("events").is_none(),
            "the ping's answer, in order: {pong}"
        );
        for _ in 0..2 {
            conn.send_raw(&poll_now(&bob));
            assert_eq!(conn.answer()["ok"], true);
        }
        if moved_out(&server) == before {
            continue; // Accepted on bob's home shard: nothing to move.
        }
        assert_eq!(moved_out(&server), before + 1);
        conn.send_raw(&poll_now(&bob));
        let v = conn.answer();
        assert_eq!(v["ok"], true, "after the move: {v}");
        break;
    }
}

#[test]
fn with_moves_off_connections_stay_where_they_were_accepted() {
    let dir = temp_dir("moves-off");
    let server = Server::start(
        &dir,
        &[
            ("SWITCHBOARD_CONNECTIONS_MOVE", "off"),
            ("SWITCHBOARD_RATE_LIMITS", "off"),
        ],
    );
    let bobs: Vec<Tab> = (0..8)
        .map(|i| server.connect(BOB, &format!("b{i}")))
        .collect();
    poll_on_each(&server, &bobs, 4);
    assert_eq!(server.metric("switchboard_connections_moved_out_total"), 0);
    assert_eq!(server.metric("switchboard_connections_moved_in_total"), 0);
}
