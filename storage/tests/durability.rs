//! Durable before answered: a child process (this test binary again, told
//! by an environment variable) stores messages and prints each answer; it
//! is SIGKILLed right after the Nth answer, and every answered message must
//! be in the database when it is reopened.

mod common;

use common::{later, ok, open, spawn_child, wait, TempDir, WAIT_MAX};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use switchboard_shards::model::{MsgId, StorageJob, StorageOutput};

/// Tells the child test where its data folder is.
const CHILD_ENV: &str = "SWITCHBOARD_STORAGE_DURABILITY_CHILD";
/// Answered messages the parent waits for before killing the child.
const ANSWERS_BEFORE_KILL: usize = 200;
/// Sends the child keeps in flight, so that several share a group commit.
const CHILD_IN_FLIGHT: usize = 8;

/// The child's body: stores messages forever, printing each answered one
/// as `stored ID TEXT`. Without the environment variable (a normal test
/// run) it does nothing.
#[test]
fn durability_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = open(Path::new(&dir));
    let mut stdout = std::io::stdout().lock();
    let mut in_flight = VecDeque::new();
    for i in 0u64.. {
        let text: Arc<str> = format!("message {i}").into();
        let job = StorageJob::StoreMessage {
            from: 1,
            to: 2,
            text: text.clone(),
            cid: None,
            ts: i,
        };
        in_flight.push_back((text, store.submit(job, later()).expect("submit")));
        if in_flight.len() < CHILD_IN_FLIGHT {
            continue;
        }
        let (text, pending) = in_flight.pop_front().unwrap();
        match wait(pending).expect("stored") {
            StorageOutput::Stored { message, .. } => {
                writeln!(stdout, "stored {} {text}", message.id).unwrap();
                stdout.flush().unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn answered_sends_survive_kill_9() {
    let dir = TempDir::new("durability");
    // Read answers on a helper thread so that the wait is bounded.
    let (mut child, lines_rx) =
        spawn_child("durability_child", &[(CHILD_ENV, dir.path().as_os_str())]);
    let started = Instant::now();
    let mut answered: HashMap<MsgId, String> = HashMap::new();
    while answered.len() < ANSWERS_BEFORE_KILL {
        let left = WAIT_MAX.saturating_sub(started.elapsed());
        let line = lines_rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("child gave {} answers, then nothing", answered.len())
        });
        let Some(rest) = line.strip_prefix("stored ") else {
            continue; // The test harness's own lines.
        };
        let (id, text) = rest.split_once(' ').unwrap();
        answered.insert(id.parse().unwrap(), text.to_string());
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no shutdown.
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );

    let store = open(dir.path());
    let mut stored: HashMap<MsgId, String> = HashMap::new();
    let mut before = None;
    loop {
        let job = StorageJob::History {
            user: 2,
            with: 1,
            before,
            limit: 100,
        };
        let StorageOutput::History {
            valid,
            messages,
            more,
            ..
        } = ok(&store, job)
        else {
            panic!("not a history");
        };
        assert!(valid);
        before = messages.first().map(|m| m.id);
        for m in messages {
            stored.insert(m.id, m.text.to_string());
        }
        if !more {
            break;
        }
    }
    for (id, text) in &answered {
        assert_eq!(stored.get(id), Some(text), "answered message {id} lost");
    }
    assert!(stored.len() >= answered.len());
    // The ids the child never saw answered may exist too; new ones follow
    // them without reuse.
    let job = StorageJob::StoreMessage {
        from: 1,
        to: 2,
        text: "after".into(),
        cid: None,
        ts: 0,
    };
    let StorageOutput::Stored { message, .. } = ok(&store, job) else {
        panic!("not stored");
    };
    assert!(!stored.contains_key(&message.id));
    assert!(message.id > *stored.keys().max().unwrap());
}
