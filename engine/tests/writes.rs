//! Writes under storage faults, against the real binary over real
//! sockets (2 shards; alice and bob homed on different ones). Faults are
//! injected with the test-only `SWITCHBOARD_FAULT_*` variables (the
//! `fault-injection` features the engine's tests turn on). Every test runs
//! on the embedded store (`name::embedded`) and on MySQL (`name::mysql`,
//! see `common`). Every wait has a timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchboard_shards::home_shard;

const T: Duration = Duration::from_secs(20);

crate::both_stores!(a_stalled_commit_then_a_cid_retry_delivers_exactly_once_on_every_tab);

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn send(server: &Server, sid: &str, to: u64, text: &str, cid: &str) -> (u16, Value) {
    let to = to.to_string();
    let params = [
        ("sid", sid),
        ("to", to.as_str()),
        ("text", text),
        ("cid", cid),
    ];
    let (status, body) = server.get_status("/send", &params);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("send: not JSON ({e}): {body}"));
    (status, v)
}

/// The ids of the messages among `events`, in order.
fn message_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// The (id, text) of every message of the conversation `sid`'s user has
/// with `with`, oldest first (one page: the tests store only a few).
fn history(server: &Server, sid: &str, with: u64) -> Vec<(String, String)> {
    let v = server.get("/history", &[("sid", sid), ("with", &with.to_string())]);
    assert_eq!(v["ok"], true, "history: {v}");
    assert_eq!(v["more"], false, "history: {v}");
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap().to_string();
            (id, m["text"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Issue 8, item 1. The first try's commit starts in time and ends after
/// the engine gave up on it: the client is told `unavailable`, yet the
/// message is stored. The retry with the same cid is answered from the
/// stored message (`duplicate`), and because the first try was in doubt
/// the shard delivers it then: each of the four tabs sees it exactly once,
/// before the next message, and history holds it once. (Before the fix the
/// duplicate answer was never delivered: acknowledged, in history, and in
/// no tab.)
fn a_stalled_commit_then_a_cid_retry_delivers_exactly_once_on_every_tab(backend: &Backend) {
    assert_ne!(home_shard(ALICE, 2), home_shard(BOB, 2));
    let dir = temp_dir("stalled-commit");
    // Storage checks the deadline (1 s) before the stall; the engine gives
    // up at 1 s + STORAGE_SLACK_MS = 2 s; the commit lands at about 2.5 s.
    let server = backend.start(
        &dir,
        &[
            ("SWITCHBOARD_STORAGE_TIMEOUT_MS", "1000"),
            ("SWITCHBOARD_FAULT_COMMIT_STALL_MS", "2500"),
            ("SWITCHBOARD_FAULT_COMMIT_STALL_COUNT", "1"),
        ],
    );
    let mut tabs: Vec<(&str, Tab)> = vec![
        ("alice a1", server.connect(ALICE, "a1")),
        ("alice a2", server.connect(ALICE, "a2")),
        ("bob b1", server.connect(BOB, "b1")),
        ("bob b2", server.connect(BOB, "b2")),
    ];
    let alice = tabs[0].1.sid.clone();
    let bob = tabs[2].1.sid.clone();

    // The first try: stalled past the engine's deadline.
    let asked = Instant::now();
    let (status, v) = send(&server, &alice, BOB, "in doubt", "c1");
    let waited = asked.elapsed();
    assert_eq!((status, code(&v)), (503, "unavailable"), "first try: {v}");
    assert!(
        waited >= Duration::from_millis(1_900),
        "answered after {waited:?}, before the engine's deadline"
    );
    assert_eq!(server.log_lines("stalling a commit").len(), 1);
    // Nobody was given it.
    for (name, tab) in &mut tabs {
        let events = tab.poll(&server, 0);
        assert!(message_ids(&events).is_empty(), "{name}: {events:?}");
    }
    // Its commit lands a little later: stored, though answered unavailable.
    let start = Instant::now();
    let stored = loop {
        let h = history(&server, &bob, ALICE);
        if let [(id, text)] = &h[..] {
            assert_eq!(text, "in doubt");
            break id.clone();
        }
        assert!(h.is_empty(), "{h:?}");
        assert!(start.elapsed() < T, "the stalled commit never landed");
        std::thread::sleep(Duration::from_millis(200));
    };

    // The retry: answered from the stored message, delivered now.
    let (status, v) = send(&server, &alice, BOB, "in doubt", "c1");
    assert_eq!(status, 200, "retry: {v}");
    assert_eq!(v["id"].as_str(), Some(stored.as_str()), "retry: {v}");
    // The next message goes through normally, after it.
    let (status, v) = send(&server, &alice, BOB, "after", "c2");
    assert_eq!(status, 200, "second message: {v}");
    let after = v["id"].as_str().unwrap().to_string();

    for (name, tab) in &mut tabs {
        let mut events = tab.poll_until(&server, T, |ev| message_ids(ev).contains(&after));
        // Until quiet: nothing may come twice.
        events.extend(tab.poll(&server, 1));
        assert_eq!(
            message_ids(&events),
            [stored.clone(), after.clone()],
            "{name}: {events:?}"
        );
    }
    let expected = [
        (stored, "in doubt".to_string()),
        (after, "after".to_string()),
    ];
    assert_eq!(history(&server, &alice, BOB), expected);
    assert_eq!(history(&server, &bob, ALICE), expected);
}
