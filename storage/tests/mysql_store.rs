//! The MySQL store through its public API, against a real MariaDB/MySQL
//! (`SWITCHBOARD_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`),
//! each test in a database of its own: what HTTP tests cannot force —
//! repeated cids inside one group commit, and unread counters staying
//! exact while sends and read marks race on several db threads, and a
//! duplicate-key failure whose server text quotes row values.
//! Without MySQL: skipped with a banner, or failed under `CI=true`.

mod common;

use common::mysql_db::Db;
use common::{later, ok, wait};
use mysql::prelude::Queryable;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_shards::model::{MsgId, StorageError, StorageJob, StorageOutput, UserId};

fn store_job(from: UserId, to: UserId, text: &str, cid: Option<&str>) -> StorageJob {
    StorageJob::StoreMessage {
        from,
        to,
        text: text.into(),
        cid: cid.map(Arc::from),
        ts: 1_700_000_000_000,
    }
}

#[test]
fn repeated_cids_in_one_group_commit_store_once_and_answer_the_first() {
    let Some(db) = Db::create_or_skip("repeated_cids") else {
        return;
    };
    // A wait of 20 ms makes the db threads gather the burst into batches.
    let store = db.open(20);
    let before = store.stats();
    // 60 distinct cids, each sent 3 times, and 60 sends without a cid,
    // all queued at once. Texts differ: a repeat stores nothing of its own.
    let mut pending = Vec::new();
    for round in 0..3 {
        for k in 0..60 {
            let cid = format!("c{k}");
            let job = store_job(1, 2, &format!("{k} try {round}"), Some(&cid));
            pending.push((Some(k), store.submit(job, later()).unwrap()));
        }
    }
    for k in 0..60 {
        let job = store_job(2, 1, &format!("plain {k}"), None);
        pending.push((None, store.submit(job, later()).unwrap()));
    }
    let mut by_cid: HashMap<u32, Vec<(MsgId, bool, String)>> = HashMap::new();
    let mut plain = Vec::new();
    for (k, p) in pending {
        let StorageOutput::Stored { message, duplicate } = wait(p).expect("stored") else {
            panic!("not Stored")
        };
        match k {
            Some(k) => {
                by_cid
                    .entry(k)
                    .or_default()
                    .push((message.id, duplicate, message.text.to_string()))
            }
            None => {
                assert!(!duplicate);
                plain.push(message.id)
            }
        }
    }
    for (k, answers) in &by_cid {
        let first = answers[0].0;
        assert!(
            answers.iter().all(|a| a.0 == first),
            "cid c{k}: {answers:?}"
        );
        assert_eq!(
            answers.iter().filter(|a| !a.1).count(),
            1,
            "c{k}: {answers:?}"
        );
        // Every answer is the one stored message. Which try got stored
        // first depends on which db thread committed first (several take
        // from one queue), so any of the three may be it.
        let stored = &answers[0].2;
        assert!(answers.iter().all(|a| &a.2 == stored), "{answers:?}");
        assert!(
            (0..3).any(|round| *stored == format!("{k} try {round}")),
            "{answers:?}"
        );
    }
    plain.sort_unstable();
    plain.dedup();
    assert_eq!(plain.len(), 60);
    let rows: u64 = db
        .conn()
        .query_first("SELECT COUNT(*) FROM sb_messages")
        .unwrap()
        .unwrap();
    assert_eq!(rows, 120);
    let unread: Option<u64> = db
        .conn()
        .query_first("SELECT unread FROM sb_unread WHERE user_id = 2 AND from_user = 1")
        .unwrap();
    assert_eq!(unread, Some(60), "each stored message counted once");
    let after = store.stats();
    let batches = after.write_batches - before.write_batches;
    assert!(
        batches < 100,
        "240 sends took {batches} commits: group commit did not group"
    );
    eprintln!("240 sends in {batches} commits");
    store.shutdown();
}

#[test]
fn unread_counters_stay_exact_while_sends_and_read_marks_race() {
    let Some(db) = Db::create_or_skip("unread_race") else {
        return;
    };
    let store = db.open(0);
    let last_id = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3 {
            let (store, last_id) = (&store, &last_id);
            s.spawn(move || {
                for i in 0..100 {
                    let job = store_job(1, 2, &format!("{t}/{i}"), None);
                    let StorageOutput::Stored { message, .. } = ok(store, job) else {
                        panic!()
                    };
                    last_id.fetch_max(message.id, Ordering::Relaxed);
                }
            });
        }
        let (store, last_id) = (&store, &last_id);
        s.spawn(move || {
            let mut marks = 0;
            while marks < 100 {
                let upto = last_id.load(Ordering::Relaxed);
                if upto == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
                marks += 1;
                let job = StorageJob::MarkRead {
                    user: 2,
                    with: 1,
                    upto,
                };
                let StorageOutput::ReadMarked { valid, .. } = ok(store, job) else {
                    panic!()
                };
                assert!(valid);
            }
        });
    });
    let mut c = db.conn();
    let (mark, counter): (u64, u64) = c
        .query_first(
            "SELECT m.upto, u.unread FROM sb_read_marks m JOIN sb_unread u \
             ON u.user_id = m.user_id AND u.from_user = m.with_user \
             WHERE m.user_id = 2 AND m.with_user = 1",
        )
        .unwrap()
        .expect("a read mark and a counter");
    let actual: u64 = c
        .exec_first(
            "SELECT COUNT(*) FROM sb_messages WHERE to_user = 2 AND from_user = 1 AND id > ?",
            (mark,),
        )
        .unwrap()
        .unwrap();
    assert_eq!(counter, actual, "counter after the races (mark {mark})");
    // Reading up to the end clears it, and loading the session agrees.
    let end = last_id.load(Ordering::Relaxed);
    let StorageOutput::ReadMarked { unread, upto, .. } = ok(
        &store,
        StorageJob::MarkRead {
            user: 2,
            with: 1,
            upto: end,
        },
    ) else {
        panic!()
    };
    assert_eq!((unread, upto), (0, end));
    let StorageOutput::Session { unread, name, .. } =
        ok(&store, StorageJob::LoadSession { user: 2 })
    else {
        panic!()
    };
    assert_eq!(name.as_deref(), Some("bob"));
    assert!(unread.is_empty(), "{unread:?}");
    store.shutdown();
}

/// MySQL's text of a 1062 quotes the key (`Duplicate entry '1-<cid>'`):
/// a client-chosen cid, and a failed batch is answered to every user in
/// it. A trigger makes every insert fail so, with the row's cid and text
/// in the server's message; the `Backend` answer (which is also what the
/// error line logs) shows the code and SQLSTATE only.
#[test]
fn a_duplicate_key_failure_answers_and_logs_no_row_values() {
    let Some(db) = Db::create_or_skip("dup_text") else {
        return;
    };
    db.conn()
        .query_drop(
            "CREATE TRIGGER sb_dup BEFORE INSERT ON sb_messages FOR EACH ROW BEGIN \
             DECLARE m VARCHAR(255); \
             SET m = CONCAT('Duplicate entry ''', NEW.from_user, '-', NEW.cid, \
             ''' for key ''', NEW.text, ''''); \
             SIGNAL SQLSTATE '23000' SET MYSQL_ERRNO = 1062, MESSAGE_TEXT = m; END",
        )
        .unwrap();
    let store = db.open(0);
    let job = store_job(1, 2, "private words", Some("secret-cid"));
    let result = wait(store.submit(job, later()).unwrap());
    let Err(StorageError::Backend(text)) = result else {
        panic!("the insert fails: {result:?}")
    };
    assert!(text.contains("MySQL error 1062 (SQLSTATE 23000)"), "{text}");
    for value in ["secret-cid", "private words", "Duplicate entry"] {
        assert!(!text.contains(value), "{value} in {text}");
    }
    store.shutdown();
}
