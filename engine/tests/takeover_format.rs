//! The hand-over's state format stays readable (engine/src/handover.rs,
//! "Formats"): `fixtures/takeover-state-v1.json` is a format-1 state taken
//! from a real server (two shards; alice with tabs `a` and `b`, bob with
//! tab `x`; a message each way; alice's UI state), pretty-printed. Every
//! later binary must read it, restore it, and serve the tabs in it.

use std::sync::Arc;

use switchboard_engine::handover;
use switchboard_shards::model::{EventKind, ReplyTo, Request, Response, Sid};
use switchboard_shards::{Config, Input, Output, Shard};

const STATE: &[u8] = include_bytes!("fixtures/takeover-state-v1.json");
const ALICE_A: &str = "1-f9c78ae054eb3d48f3dbaebf15b1c0d3";
const ALICE_B: &str = "1-e175f38cbcdfadddcb48faa9e212db81";
const BOB_X: &str = "2-f215351a4a40a5b9c14cb5b21a5bc100";

fn restored() -> Vec<Shard> {
    let shards = handover::read_state_body(1, STATE).expect("a format-1 state reads");
    assert_eq!(shards.len(), 2);
    shards
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.resumed(Config::new(i, 2)).expect("the same shard of 2"))
        .collect()
}

/// Polls `sid` (since 0, no wait) on its home shard; the events' texts.
fn poll(shards: &mut [Shard], sid: &str) -> Vec<String> {
    let sid = Sid::parse(sid).expect("a sid");
    let home = switchboard_shards::home_shard(sid.user, shards.len());
    let mut out = Vec::new();
    let reply = ReplyTo {
        shard: home,
        req: 1,
    };
    let request = Request::Poll {
        sid,
        since: 0,
        wait_ms: 0,
    };
    // At time 0, before every deadline in the state: no timer fires.
    shards[home].handle(0, Input::Request { reply, request }, &mut out);
    let events = out
        .iter()
        .find_map(|o| match o {
            Output::Reply {
                response: Response::Events { events, .. },
                ..
            } => Some(events.clone()),
            Output::Reply { response, .. } => panic!("poll of {sid:?}: {response:?}"),
            _ => None,
        })
        .expect("a poll answered at once");
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Message(m) => Some(m.text.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_format_1_state_reads_and_serves_its_tabs() {
    let mut shards = restored();
    let sessions: usize = shards.iter().map(Shard::session_count).sum();
    let tabs: usize = shards.iter().map(Shard::tab_count).sum();
    assert_eq!((sessions, tabs), (2, 3));
    for sid in [ALICE_A, ALICE_B] {
        assert_eq!(poll(&mut shards, sid), ["hello bob", "hi alice"], "{sid}");
    }
    assert_eq!(poll(&mut shards, BOB_X), ["hello bob", "hi alice"]);
    let alice = shards
        .iter()
        .find_map(|s| s.live_session(1))
        .expect("alice's session");
    let ui: Option<Arc<str>> = alice.ui.clone();
    assert_eq!(ui.as_deref(), Some(r#"{"open":[2]}"#));
}

#[test]
fn formats_this_binary_does_not_read_are_refused() {
    for format in [0, handover::FORMATS_READ.1 + 1] {
        let e = handover::read_state_body(format, STATE).unwrap_err();
        assert!(e.contains("not one this binary reads"), "{e}");
    }
    let e = handover::read_state_body(1, b"{\"format\":1,\"shards\":[{}]}").unwrap_err();
    assert!(e.contains("reading the state"), "{e}");
}
