//! Slow commits, injected with the `fault-injection` feature (this crate's
//! tests always have it: see the dev-dependency on itself in
//! Cargo.toml), on both backends. The claim under test (issue 8, item 1):
//! `TimedOut` from storage means *not stored*, and an `Ok` that comes
//! after the deadline means stored; either way a retry with the same cid
//! stores the message at most once.
//!
//! The stall is set by environment variables read once at open, so each
//! open here holds [`ENV`] while they are set.

mod common;

use common::mysql_db::Db;
use common::{config, ok, wait, TempDir};
use mysql::prelude::Queryable;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use switchboard_shards::model::{Message, StorageError, StorageJob, StorageOutput, UserId};
use switchboard_storage::{MysqlConfig, Store};

const ALICE: UserId = 1;
const BOB: UserId = 2;

/// How long the first write batch's commit stalls.
const STALL_MS: u64 = 1_500;
/// The deadline of the send whose commit stalls (it starts well in time).
const SLOW_DUE_MS: u64 = 500;
/// When the second send is submitted: the first is stalled by then.
const SECOND_AFTER_MS: u64 = 300;
/// The second send's deadline, from its submit: long past when the stall
/// ends.
const SECOND_DUE_MS: u64 = 300;

/// Held while the fault variables are set and a store reads them.
static ENV: Mutex<()> = Mutex::new(());

/// Opens a store (`open`) whose first `count` write batches stall their
/// commit `stall_ms`.
fn open_stalling(stall_ms: u64, count: u64, open: impl FnOnce() -> Store) -> Store {
    const MS: &str = "SWITCHBOARD_FAULT_COMMIT_STALL_MS";
    const COUNT: &str = "SWITCHBOARD_FAULT_COMMIT_STALL_COUNT";
    let _env = ENV.lock().unwrap_or_else(PoisonError::into_inner);
    std::env::set_var(MS, stall_ms.to_string());
    std::env::set_var(COUNT, count.to_string());
    let store = open();
    std::env::remove_var(MS);
    std::env::remove_var(COUNT);
    store
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn send_job(text: &str, cid: &str) -> StorageJob {
    StorageJob::StoreMessage {
        from: ALICE,
        to: BOB,
        text: text.into(),
        cid: Some(Arc::from(cid)),
        ts: 1_700_000_000_000,
    }
}

/// Sends with a far deadline; the stored message and its duplicate flag.
fn send(store: &Store, text: &str, cid: &str) -> (Arc<Message>, bool) {
    match ok(store, send_job(text, cid)) {
        StorageOutput::Stored { message, duplicate } => (message, duplicate),
        other => panic!("unexpected {other:?}"),
    }
}

/// The texts of alice and bob's conversation, oldest first.
fn history(store: &Store) -> Vec<String> {
    let job = StorageJob::History {
        user: BOB,
        with: ALICE,
        before: None,
        limit: 100,
    };
    match ok(store, job) {
        StorageOutput::History { messages, .. } => {
            messages.iter().map(|m| m.text.to_string()).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The scenario, on a store whose first write batch stalls its commit
/// [`STALL_MS`] (and no other):
/// 1. "slow" (due in [`SLOW_DUE_MS`]) passes its last deadline check and
///    stalls in its commit; it is answered `Ok` after its deadline, and
///    stored.
/// 2. "late", submitted meanwhile and picked up in time, waits behind
///    that commit (embedded: for redb's write lock; MySQL: for the unread
///    counter's row lock) past its deadline: answered `TimedOut`, and
///    not stored.
/// 3. Retries with the same cids (fast now): "late" is stored for the
///    first time, "slow" is a duplicate of the stored message, and a
///    second retry of "late" is a duplicate too: two messages in all.
fn a_slow_commit_is_ok_late_and_a_write_behind_it_is_timed_out_unstored(store: &Store) {
    let submitted = Instant::now();
    let slow_deadline = submitted + ms(SLOW_DUE_MS);
    let slow = store
        .submit(send_job("slow", "c-slow"), slow_deadline)
        .unwrap();
    std::thread::sleep(ms(SECOND_AFTER_MS));
    let late_deadline = Instant::now() + ms(SECOND_DUE_MS);
    let late = store
        .submit(send_job("late", "c-late"), late_deadline)
        .unwrap();

    let slow = wait(slow);
    let answered = Instant::now();
    let Ok(StorageOutput::Stored {
        message: slow,
        duplicate: false,
    }) = slow
    else {
        panic!("a commit that started in time is answered Ok, got {slow:?}")
    };
    assert!(
        answered > slow_deadline,
        "the stalled commit was answered {} ms after submit, before its deadline",
        (answered - submitted).as_millis()
    );
    assert_eq!(
        wait(late),
        Err(StorageError::TimedOut),
        "a write that waited past its deadline behind a slow commit"
    );
    assert_eq!(store.stats().jobs_timed_out, 1);
    assert_eq!(history(store), ["slow"], "TimedOut means not stored");

    let (late, duplicate) = send(store, "late", "c-late");
    assert!(!duplicate, "the retry of a TimedOut send stores it");
    let (again, duplicate) = send(store, "slow", "c-slow");
    assert!(duplicate, "the retry of a late Ok is the stored message");
    assert_eq!(again.id, slow.id);
    let (again, duplicate) = send(store, "late", "c-late");
    assert!(duplicate);
    assert_eq!(again.id, late.id);
    assert_eq!(history(store), ["slow", "late"], "each cid stored once");
    match ok(store, StorageJob::LoadSession { user: BOB }) {
        StorageOutput::Session { unread, .. } => {
            assert_eq!(unread, [(ALICE, 2)], "the timed-out send counted nothing")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn embedded_timed_out_means_not_stored_and_a_late_ok_means_stored_once() {
    let dir = TempDir::new("fault-slow-commit");
    let mut cfg = config(dir.path());
    cfg.db_threads = 2; // one stalls in its commit, the other waits on it
    let store = open_stalling(STALL_MS, 1, || Store::open_embedded(cfg).expect("open"));
    a_slow_commit_is_ok_late_and_a_write_behind_it_is_timed_out_unstored(&store);
    store.shutdown();
}

#[test]
fn mysql_timed_out_means_not_stored_and_a_late_ok_means_stored_once() {
    let Some(db) = Db::create_or_skip("mysql_slow_commit") else {
        return;
    };
    let mut cfg = MysqlConfig::new(&db.url);
    cfg.pool_size = 4;
    let store = open_stalling(STALL_MS, 1, || Store::open_mysql(cfg).expect("open"));
    a_slow_commit_is_ok_late_and_a_write_behind_it_is_timed_out_unstored(&store);
    let rows: Vec<(String, u64)> = db
        .conn()
        .query("SELECT cid, COUNT(*) FROM sb_messages GROUP BY cid ORDER BY cid")
        .unwrap();
    assert_eq!(rows, [("c-late".into(), 1), ("c-slow".into(), 1)]);
    let unread: Option<u64> = db
        .conn()
        .query_first("SELECT unread FROM sb_unread WHERE user_id = 2 AND from_user = 1")
        .unwrap();
    assert_eq!(unread, Some(2), "the rolled-back send added nothing");
    store.shutdown();
}
