//! The write-ahead log on real files: a child process (this test binary
//! again, told by environment variables) runs a script of writes with
//! checkpoints held off (`SWITCHBOARD_FAULT_NO_CHECKPOINT`), prints each
//! answer and `done`, and is SIGKILLed; the parent reopens the store and
//! finds every answered write, replayed from the log alone. The log is
//! also cut mid-record, overwritten with garbage, and left with records
//! of an older generation behind the current ones.

mod common;

use common::{later, ok, open, spawn_child, wait, TempDir, WAIT_MAX};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_shards::model::{MsgId, StorageJob, StorageOutput, UserId};
use switchboard_storage::{limits, Store};

/// Tells the child test where its data folder is.
const CHILD_DIR_ENV: &str = "SWITCHBOARD_STORAGE_WAL_CHILD_DIR";
/// Tells the child test which script to run.
const CHILD_SCRIPT_ENV: &str = "SWITCHBOARD_STORAGE_WAL_CHILD_SCRIPT";
/// The log's file name in the data folder.
const WAL_FILE: &str = "switchboard.wal";
/// The text of the chat script's last message, found in the log's bytes.
const LAST: &str = "LAST-MESSAGE-MARKER";

const ALICE: UserId = 1;
const BOB: UserId = 2;

/// Alice's messages to Bob in the chat script (each with a cid), before
/// the last one.
const ALICE_SENDS: usize = 30;
/// Bob's messages to Alice (no cid).
const BOB_SENDS: usize = 5;
/// Bob reads Alice's messages up to this one (index into hers).
const BOB_READS_UPTO: usize = 9;
/// Write batches of the chat script: the UI state, the sends, the read
/// mark, the last send; each one record, as each is waited for.
const CHAT_RECORDS: u64 = 1 + ALICE_SENDS as u64 + BOB_SENDS as u64 + 1 + 1;

fn send(store: &Store, from: UserId, to: UserId, text: &str, cid: Option<&str>) -> (MsgId, bool) {
    let job = StorageJob::StoreMessage {
        from,
        to,
        text: text.into(),
        cid: cid.map(Arc::from),
        ts: 1_700_000_000_000,
    };
    match ok(store, job) {
        StorageOutput::Stored { message, duplicate } => (message.id, duplicate),
        other => panic!("unexpected {other:?}"),
    }
}

fn save_ui(store: &Store, user: UserId, state: &str) {
    let job = StorageJob::SaveUi {
        user,
        state: state.into(),
    };
    assert_eq!(ok(store, job), StorageOutput::Saved);
}

fn mark_read(store: &Store, user: UserId, with: UserId, upto: MsgId) -> (MsgId, u64) {
    match ok(store, StorageJob::MarkRead { user, with, upto }) {
        StorageOutput::ReadMarked {
            valid: true,
            upto,
            unread,
        } => (upto, unread),
        other => panic!("unexpected {other:?}"),
    }
}

/// A user's UI state and unread counts.
fn session(store: &Store, user: UserId) -> (Option<String>, Vec<(UserId, u64)>) {
    match ok(store, StorageJob::LoadSession { user }) {
        StorageOutput::Session { ui, unread, .. } => (ui.map(|s| s.to_string()), unread),
        other => panic!("unexpected {other:?}"),
    }
}

/// The whole conversation of Alice and Bob, oldest first: `(id, text)`.
fn conversation(store: &Store) -> Vec<(MsgId, String)> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let job = StorageJob::History {
            user: ALICE,
            with: BOB,
            before,
            limit: 100,
        };
        let StorageOutput::History { messages, more, .. } = ok(store, job) else {
            panic!("not a history");
        };
        before = messages.first().map(|m| m.id);
        let page: Vec<_> = messages
            .iter()
            .map(|m| (m.id, m.text.to_string()))
            .collect();
        all.splice(0..0, page);
        if !more {
            return all;
        }
    }
}

/// The child's body: runs the script `CHILD_SCRIPT_ENV` names, printing
/// `ok ...` after each answer and `done` at the end, then waits to be
/// killed. Without the environment variables (a normal test run) it does
/// nothing.
#[test]
fn wal_child() {
    let (Ok(dir), Ok(script)) = (
        std::env::var(CHILD_DIR_ENV),
        std::env::var(CHILD_SCRIPT_ENV),
    ) else {
        return;
    };
    let store = open(Path::new(&dir));
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    match script.as_str() {
        "chat" => {
            save_ui(&store, ALICE, r#"{"theme":"dark"}"#);
            say("ok ui".into());
            let mut alice = Vec::new();
            for i in 0..ALICE_SENDS {
                let (id, _) = send(&store, ALICE, BOB, &format!("a{i}"), Some(&format!("c{i}")));
                alice.push(id);
                say(format!("ok sent {id}"));
            }
            for i in 0..BOB_SENDS {
                let (id, _) = send(&store, BOB, ALICE, &format!("b{i}"), None);
                say(format!("ok sent {id}"));
            }
            mark_read(&store, BOB, ALICE, alice[BOB_READS_UPTO]);
            say("ok read".into());
            let (id, _) = send(&store, ALICE, BOB, LAST, Some("c-last"));
            say(format!("ok sent {id}"));
        }
        // Ten records of the same size, then one more of that size.
        "ui-old" => (0..10).for_each(|i| save_ui(&store, ALICE, &format!("old-{i}"))),
        "ui-new" => save_ui(&store, ALICE, "new-0"),
        other => panic!("unknown script {other}"),
    }
    say("done".into());
    // Nothing checkpoints (fault injection): the answered writes are in
    // the log only, until the parent kills this process.
    std::thread::sleep(WAIT_MAX);
}

/// Runs the child on `dir` with `script`, waits for its `done`, and
/// SIGKILLs it.
fn run_child_and_kill(dir: &Path, script: &str) {
    let (mut child, lines_rx) = spawn_child(
        "wal_child",
        &[
            (CHILD_DIR_ENV, dir.as_os_str()),
            (CHILD_SCRIPT_ENV, script.as_ref()),
            ("SWITCHBOARD_FAULT_NO_CHECKPOINT", "1".as_ref()),
        ],
    );
    let started = Instant::now();
    loop {
        let left = WAIT_MAX.saturating_sub(started.elapsed());
        let line = lines_rx.recv_timeout(left).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the {script} child never said done")
        });
        // The test harness starts the child's first line with the
        // test's name (`test wal_child ... `).
        if line.rsplit(" ... ").next() == Some("done") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no checkpoint.
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");
}

fn wal_path(dir: &Path) -> PathBuf {
    dir.join("data").join(WAL_FILE)
}

/// Where `needle` first occurs in the log file.
fn find_in_wal(dir: &Path, needle: &str) -> Option<usize> {
    let bytes = std::fs::read(wal_path(dir)).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
}

/// What the chat script leaves, checked in a reopened store: every
/// message (with the last one or not), the UI state, unread counts and
/// read mark, cids that still deduplicate, and ids that go on past them.
fn check_chat(store: &Store, with_last: bool) {
    let texts: Vec<String> = conversation(store).into_iter().map(|(_, t)| t).collect();
    let mut expected: Vec<String> = (0..ALICE_SENDS).map(|i| format!("a{i}")).collect();
    expected.extend((0..BOB_SENDS).map(|i| format!("b{i}")));
    if with_last {
        expected.push(LAST.into());
    }
    assert_eq!(texts, expected);
    let alice_unread = ALICE_SENDS as u64 - (BOB_READS_UPTO as u64 + 1) + u64::from(with_last);
    assert_eq!(session(store, BOB), (None, vec![(ALICE, alice_unread)]));
    assert_eq!(
        session(store, ALICE),
        (
            Some(r#"{"theme":"dark"}"#.to_string()),
            vec![(BOB, BOB_SENDS as u64)]
        )
    );
    let ids: Vec<MsgId> = conversation(store).into_iter().map(|(id, _)| id).collect();
    // The read mark survived: reading less moves nothing.
    assert_eq!(
        mark_read(store, BOB, ALICE, ids[2]),
        (ids[BOB_READS_UPTO], alice_unread)
    );
    // A retried send finds its first copy.
    assert_eq!(send(store, ALICE, BOB, "again", Some("c3")), (ids[3], true));
    let (last, duplicate) = send(store, ALICE, BOB, LAST, Some("c-last"));
    assert_eq!(duplicate, with_last, "the last send's cid");
    assert!(last >= *ids.last().unwrap());
    let (after, duplicate) = send(store, ALICE, BOB, "after", None);
    assert!(
        !duplicate && after > last,
        "ids go on: {after} after {last}"
    );
}

#[test]
fn acknowledged_writes_survive_kill_9_from_the_log_alone() {
    let dir = TempDir::new("wal-kill");
    run_child_and_kill(dir.path(), "chat");
    let store = open(dir.path());
    assert_eq!(store.stats().wal_replayed, CHAT_RECORDS);
    check_chat(&store, true);
    store.shutdown();
    // A clean stop leaves nothing to replay.
    let store = open(dir.path());
    assert_eq!(store.stats().wal_replayed, 0);
    assert_eq!(conversation(&store).len(), ALICE_SENDS + BOB_SENDS + 2);
}

#[test]
fn a_torn_tail_recovers_everything_before_it() {
    type Tear = fn(&Path, usize);
    let tears: [(&str, Tear); 3] = [
        ("cut inside the last record", |wal, at| {
            let file = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
            file.set_len(at as u64 + 3).unwrap();
        }),
        ("cut inside the last record's header", |wal, at| {
            // The record starts 74 bytes before the text (a 28-byte
            // header, then 46 bytes of effects): 60 before is inside
            // its header.
            let file = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
            file.set_len(at as u64 - 60).unwrap();
        }),
        ("garbage over the last record", |wal, at| {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
            file.write_all_at(&[0xa5; 64], at as u64).unwrap();
        }),
    ];
    for (what, tear) in tears {
        let dir = TempDir::new("wal-torn");
        run_child_and_kill(dir.path(), "chat");
        let at = find_in_wal(dir.path(), LAST).expect("the last message is in the log");
        tear(&wal_path(dir.path()), at);
        let store = open(dir.path());
        assert_eq!(store.stats().wal_replayed, CHAT_RECORDS - 1, "{what}");
        check_chat(&store, false);
    }
}

#[test]
fn stale_records_of_an_older_generation_are_never_replayed() {
    let dir = TempDir::new("wal-stale");
    // Ten records of generation G: ui "old-0" .. "old-9".
    run_child_and_kill(dir.path(), "ui-old");
    // The next run replays them (generation G+1 from then on) and writes
    // one record of the same size over the first: the log is now
    // [G+1 #0 "new-0"] [G #1 "old-1"] ... [G #9 "old-9"], each record
    // where a header is looked for.
    run_child_and_kill(dir.path(), "ui-new");
    assert!(
        find_in_wal(dir.path(), "old-1").is_some() && find_in_wal(dir.path(), "old-0").is_none(),
        "the stale records are there, behind the new one"
    );
    let store = open(dir.path());
    assert_eq!(store.stats().wal_replayed, 1);
    assert_eq!(session(&store, ALICE).0.as_deref(), Some("new-0"));
}

#[test]
fn checkpoints_keep_the_log_bounded_and_empty_it_when_idle() {
    let dir = TempDir::new("wal-bounded");
    let store = open(dir.path());
    let started = Instant::now();
    let (mut sent, mut max_bytes) = (0, 0);
    // Sends back to back for 3 s: the log is checkpointed by age (1 s).
    while started.elapsed() < Duration::from_secs(3) {
        send(&store, ALICE, BOB, &format!("m{sent}"), None);
        sent += 1;
        max_bytes = max_bytes.max(store.stats().wal_bytes);
    }
    let stats = store.stats();
    assert!(max_bytes > 0, "the sends went to the log");
    assert!(
        max_bytes < 1 << 20,
        "{max_bytes} bytes in the log: one second of sends is far less"
    );
    assert!(stats.checkpoints >= 2, "{stats:?}");
    let wal_file_bytes = std::fs::metadata(wal_path(dir.path())).unwrap().len();
    assert_eq!(wal_file_bytes, limits::WAL_GROW_BYTES as u64);
    // Idle: a db thread empties the log.
    let idle = Instant::now();
    while store.stats().wal_bytes > 0 {
        assert!(idle.elapsed() < WAIT_MAX, "never checkpointed when idle");
        std::thread::sleep(Duration::from_millis(10));
    }
    store.shutdown();
    let store = open(dir.path());
    assert_eq!(store.stats().wal_replayed, 0);
    assert_eq!(conversation(&store).len(), sent);
    let (_, duplicate) = send(&store, ALICE, BOB, "after", Some("x"));
    assert!(!duplicate);
    drop(wait(
        store
            .submit(StorageJob::LoadRoster { user: ALICE }, later())
            .unwrap(),
    ));
}
