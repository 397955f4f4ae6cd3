//! Connections move home: a plain keep-alive connection whose calls keep
//! going to a user homed on the other shard is handed to that shard
//! between two requests (`CONNECTIONS_MOVE`, docs/architecture.md), and
//! goes on answering there: no call fails, a held poll after the move is
//! woken by a message sent on another connection, pipelined requests are
//! answered in order, and with the setting off nothing moves.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// One 200 answer, kept alive, as JSON.
fn ok_answer(conn: &mut KeepAlive) -> Value {
    let (status, v) = conn.answer();
    assert_eq!(status, 200, "{v}");
    v
}

/// GET on `conn`, expecting 200.
fn get(conn: &mut KeepAlive, path: &str, params: &[(&str, &str)]) -> Value {
    conn.send_raw(&KeepAlive::request(path, params));
    ok_answer(conn)
}

/// A connection for each of `tabs`, each making `calls` polls (wait 0)
/// for its tab, every answer `ok`.
fn poll_on_each(server: &Server, tabs: &[Tab], calls: usize) -> Vec<KeepAlive> {
    let mut conns: Vec<KeepAlive> = tabs.iter().map(|_| KeepAlive::open(server)).collect();
    for (conn, tab) in conns.iter_mut().zip(tabs) {
        for _ in 0..calls {
            let v = get(
                conn,
                "/poll",
                &[("sid", &tab.sid), ("since", "0"), ("wait", "0")],
            );
            assert_eq!(v["ok"], true, "poll: {v}");
        }
    }
    conns
}

fn moved_out(server: &Server) -> u64 {
    server.metric("switchboard_connections_moved_out_total")
}

fn poll_now(tab: &Tab) -> String {
    KeepAlive::request("/poll", &[("sid", &tab.sid), ("since", "0"), ("wait", "0")])
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
        let since = get(
            conn,
            "/poll",
            &[("sid", &bob.sid), ("since", "0"), ("wait", "0")],
        )["seq"]
            .as_u64()
            .unwrap()
            .to_string();
        conn.send_raw(&KeepAlive::request(
            "/poll",
            &[("sid", &bob.sid), ("since", &since), ("wait", "20")],
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut alice_conn = KeepAlive::open(&server);
    let sent = get(
        &mut alice_conn,
        "/send",
        &[
            ("sid", &alice.sid),
            ("to", &BOB.to_string()),
            ("text", "after the move"),
        ],
    );
    assert_eq!(sent["ok"], true, "send: {sent}");
    for conn in &mut conns {
        let v = ok_answer(conn);
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
        let mut conn = KeepAlive::open(&server);
        conn.send_raw(&poll_now(&bob));
        assert_eq!(ok_answer(&mut conn)["ok"], true);
        conn.send_raw(
            &[
                poll_now(&bob),
                poll_now(&bob),
                KeepAlive::request("/ping", &[]),
            ]
            .concat(),
        );
        for _ in 0..2 {
            let v = ok_answer(&mut conn);
            assert_eq!(v["ok"], true, "pipelined poll: {v}");
            assert!(v["events"].as_array().is_some(), "a poll's answer: {v}");
        }
        let pong = ok_answer(&mut conn);
        assert_eq!(pong["ok"], true, "{pong}");
        assert!(
            pong.get("events").is_none(),
            "the ping's answer, in order: {pong}"
        );
        for _ in 0..2 {
            conn.send_raw(&poll_now(&bob));
            assert_eq!(ok_answer(&mut conn)["ok"], true);
        }
        if moved_out(&server) == before {
            continue; // Accepted on bob's home shard: nothing to move.
        }
        assert_eq!(moved_out(&server), before + 1);
        conn.send_raw(&poll_now(&bob));
        let v = ok_answer(&mut conn);
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
