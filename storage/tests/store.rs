//! The embedded store through its public, asynchronous API, on real files.

mod common;

use common::{config, later, ok, open, run, wait, TempDir};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_shards::model::{
    Friend, Message, MsgId, StorageError, StorageJob, StorageOutput, UserId,
};
use switchboard_storage::{
    limits, DirectoryReloaded, EmbeddedConfig, OpenError, ReloadError, Store,
};

const ALICE: UserId = 1;
const BOB: UserId = 2;
const CAROL: UserId = 3;
const DAVE: UserId = 4;

fn store_job(from: UserId, to: UserId, text: &str, cid: Option<&str>) -> StorageJob {
    StorageJob::StoreMessage {
        from,
        to,
        text: text.into(),
        cid: cid.map(Arc::from),
        ts: 1_700_000_000_000 + from * 1000 + to,
    }
}

/// Stores a message and returns it with its duplicate flag.
fn send(
    store: &Store,
    from: UserId,
    to: UserId,
    text: &str,
    cid: Option<&str>,
) -> (Arc<Message>, bool) {
    match ok(store, store_job(from, to, text, cid)) {
        StorageOutput::Stored { message, duplicate } => (message, duplicate),
        other => panic!("unexpected {other:?}"),
    }
}

fn history(
    store: &Store,
    user: UserId,
    with: UserId,
    before: Option<MsgId>,
    limit: u32,
) -> (bool, Vec<Arc<Message>>, bool) {
    match ok(
        store,
        StorageJob::History {
            user,
            with,
            before,
            limit,
        },
    ) {
        StorageOutput::History {
            valid,
            messages,
            more,
            ..
        } => (valid, messages, more),
        other => panic!("unexpected {other:?}"),
    }
}

fn mark_read(store: &Store, user: UserId, with: UserId, upto: MsgId) -> (bool, MsgId, u64) {
    match ok(store, StorageJob::MarkRead { user, with, upto }) {
        StorageOutput::ReadMarked {
            valid,
            upto,
            unread,
        } => (valid, upto, unread),
        other => panic!("unexpected {other:?}"),
    }
}

struct Session {
    name: Option<Arc<str>>,
    friends: Vec<Friend>,
    ui: Option<Arc<str>>,
    unread: Vec<(UserId, u64)>,
}

fn session(store: &Store, user: UserId) -> Session {
    match ok(store, StorageJob::LoadSession { user }) {
        StorageOutput::Session {
            name,
            friends,
            ui,
            unread,
        } => Session {
            name,
            friends,
            ui,
            unread,
        },
        other => panic!("unexpected {other:?}"),
    }
}

fn friend_ids(friends: &[Friend]) -> Vec<UserId> {
    friends.iter().map(|f| f.id).collect()
}

#[test]
fn store_and_load_round_trip() {
    let dir = TempDir::new("round-trip");
    let store = open(dir.path());

    let alice = session(&store, ALICE);
    assert_eq!(alice.name.as_deref(), Some("alice"));
    assert_eq!(friend_ids(&alice.friends), vec![BOB, CAROL]);
    assert_eq!(alice.friends[0].name.as_ref(), "bob");
    assert_eq!(alice.ui, None);
    assert!(alice.unread.is_empty());

    let (message, duplicate) = send(&store, ALICE, BOB, "hello bob", Some("c-1"));
    assert!(!duplicate);
    assert_eq!(message.id, 1, "ids start at 1");
    assert_eq!((message.from, message.to), (ALICE, BOB));
    assert_eq!(message.text.as_ref(), "hello bob");
    assert_eq!(message.cid.as_deref(), Some("c-1"));
    let (second, _) = send(&store, BOB, ALICE, "hi alice", None);
    assert_eq!(second.id, 2);
    assert_eq!(second.cid, None);

    assert_eq!(session(&store, BOB).unread, vec![(ALICE, 1)]);
    assert_eq!(session(&store, ALICE).unread, vec![(BOB, 1)]);
    let (valid, page, more) = history(&store, BOB, ALICE, None, 50);
    assert!(valid && !more);
    assert_eq!(page, vec![message.clone(), second.clone()]);

    // Not in the directory: no name, no friends (the shard refuses them).
    let nobody = session(&store, 99);
    assert_eq!(nobody.name, None);
    assert!(nobody.friends.is_empty());
    match ok(&store, StorageJob::LoadRoster { user: DAVE }) {
        StorageOutput::Roster { friends } => assert_eq!(friend_ids(&friends), vec![BOB, 6]),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.stats().jobs_failed, 0);
    store.shutdown();
    assert!(dir.path().join("data/switchboard.redb").is_file());
}

#[test]
fn cid_is_idempotent_across_a_reopen() {
    let dir = TempDir::new("cid");
    let store = open(dir.path());
    let (first, duplicate) = send(&store, ALICE, BOB, "first", Some("same"));
    assert!(!duplicate);
    // Within the same run, whatever the repeat's `to` and `text`.
    let (again, duplicate) = send(&store, ALICE, CAROL, "other", Some("same"));
    assert!(duplicate);
    assert_eq!(again, first);
    store.shutdown();

    let store = open(dir.path());
    let (again, duplicate) = send(&store, ALICE, CAROL, "changed text", Some("same"));
    assert!(duplicate);
    assert_eq!(again, first, "the first message, id, to, text, ts and cid");
    // Nothing was stored for the repeats: carol has nothing unread and no
    // conversation with alice.
    assert!(session(&store, CAROL).unread.is_empty());
    assert!(history(&store, CAROL, ALICE, None, 50).1.is_empty());
    assert_eq!(session(&store, BOB).unread, vec![(ALICE, 1)]);
    // The same cid from another user is another message.
    let (bobs, duplicate) = send(&store, BOB, ALICE, "bob's", Some("same"));
    assert!(!duplicate);
    assert_eq!(bobs.id, first.id + 1, "ids continue after a reopen");
    // Two repeats in one write batch: the second sees the first.
    let a = store
        .submit(store_job(CAROL, BOB, "x", Some("batch")), later())
        .unwrap();
    let b = store
        .submit(store_job(CAROL, BOB, "y", Some("batch")), later())
        .unwrap();
    let (a, b) = (wait(a).unwrap(), wait(b).unwrap());
    match (a, b) {
        (
            StorageOutput::Stored {
                message: a,
                duplicate: false,
            },
            StorageOutput::Stored {
                message: b,
                duplicate: true,
            },
        ) => assert_eq!(a, b),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn history_pages_walk_back_oldest_first() {
    let dir = TempDir::new("history");
    let store = open(dir.path());
    let mut ids = Vec::new();
    let mut other_ids = Vec::new();
    for i in 0..120 {
        let (from, to) = if i % 3 == 0 {
            (BOB, ALICE)
        } else {
            (ALICE, BOB)
        };
        ids.push(send(&store, from, to, &format!("m{i}"), None).0.id);
        if i % 10 == 0 {
            other_ids.push(send(&store, ALICE, CAROL, "elsewhere", None).0.id);
        }
    }

    for (user, with) in [(ALICE, BOB), (BOB, ALICE)] {
        let (valid, newest, more) = history(&store, user, with, None, 50);
        assert!(valid && more);
        assert_eq!(newest.iter().map(|m| m.id).collect::<Vec<_>>(), ids[70..]);
        assert_eq!(newest[0].text.as_ref(), "m70");
        let (valid, middle, more) = history(&store, user, with, Some(newest[0].id), 50);
        assert!(valid && more);
        assert_eq!(middle.iter().map(|m| m.id).collect::<Vec<_>>(), ids[20..70]);
        let (valid, oldest, more) = history(&store, user, with, Some(middle[0].id), 50);
        assert!(valid && !more);
        assert_eq!(oldest.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..20]);
        let (valid, none, more) = history(&store, user, with, Some(ids[0]), 50);
        assert!(valid && none.is_empty() && !more);
        for m in newest.iter().chain(&middle).chain(&oldest) {
            assert!(
                (m.from, m.to) == (ALICE, BOB) || (m.from, m.to) == (BOB, ALICE),
                "only the caller's conversation: {m:?}"
            );
        }
    }
    // Exactly a page left: `more` is false.
    let (_, page, more) = history(&store, ALICE, BOB, Some(ids[50]), 50);
    assert_eq!(page.len(), 50);
    assert!(!more);

    // A `before` from another conversation, or no message at all.
    for bad in [other_ids[0], 999_999] {
        let (valid, page, more) = history(&store, ALICE, BOB, Some(bad), 50);
        assert!(!valid && page.is_empty() && !more, "before {bad}");
    }
    // The limit is clamped to the protocol's maximum.
    let (_, page, more) = history(&store, ALICE, BOB, None, 1000);
    assert_eq!(page.len(), limits::HISTORY_LIMIT_MAX as usize);
    assert!(more);
    let (_, page, more) = history(&store, ALICE, BOB, None, 0);
    assert!(page.is_empty() && more);
    // A conversation with nothing in it.
    let (valid, page, more) = history(&store, ALICE, DAVE, None, 50);
    assert!(valid && page.is_empty() && !more);
}

#[test]
fn unread_counts_and_read_marks() {
    let dir = TempDir::new("unread");
    let store = open(dir.path());
    let m: Vec<MsgId> = (0..3)
        .map(|i| send(&store, ALICE, BOB, &format!("m{i}"), None).0.id)
        .collect();
    send(&store, CAROL, BOB, "from carol", None);
    assert_eq!(session(&store, BOB).unread, vec![(ALICE, 3), (CAROL, 1)]);

    assert_eq!(mark_read(&store, BOB, ALICE, m[1]), (true, m[1], 1));
    assert_eq!(session(&store, BOB).unread, vec![(ALICE, 1), (CAROL, 1)]);
    // Never backwards: the mark in force is reported.
    assert_eq!(mark_read(&store, BOB, ALICE, m[0]), (true, m[1], 1));
    // Not a message of that conversation: invalid, nothing changes.
    let carols = send(&store, CAROL, ALICE, "to alice", None).0.id;
    assert_eq!(mark_read(&store, BOB, ALICE, carols), (false, m[1], 1));
    assert_eq!(mark_read(&store, BOB, ALICE, 999_999), (false, m[1], 1));
    assert_eq!(mark_read(&store, BOB, DAVE, m[0]), (false, 0, 0));

    // Marking up to one's own reply reads everything before it.
    let reply = send(&store, BOB, ALICE, "reply", None).0.id;
    assert_eq!(mark_read(&store, BOB, ALICE, reply), (true, reply, 0));
    assert_eq!(session(&store, BOB).unread, vec![(CAROL, 1)]);
    assert_eq!(session(&store, ALICE).unread, vec![(BOB, 1), (CAROL, 1)]);
    // A new message after the mark counts again, and survives a reopen.
    send(&store, ALICE, BOB, "more", None);
    store.shutdown();
    let store = open(dir.path());
    assert_eq!(session(&store, BOB).unread, vec![(ALICE, 1), (CAROL, 1)]);
    assert_eq!(mark_read(&store, BOB, ALICE, m[2]), (true, reply, 1));
}

#[test]
fn ui_state_persists_across_a_reopen() {
    let dir = TempDir::new("ui");
    let store = open(dir.path());
    let state: Arc<str> = r#"{"open":[2,3]}"#.into();
    assert_eq!(
        ok(
            &store,
            StorageJob::SaveUi {
                user: ALICE,
                state: state.clone()
            }
        ),
        StorageOutput::Saved
    );
    drop(store); // Dropping the last handle stops and closes like shutdown.
    let store = open(dir.path());
    assert_eq!(session(&store, ALICE).ui, Some(state));
    assert_eq!(session(&store, BOB).ui, None);
    let newer: Arc<str> = "{}".into();
    ok(
        &store,
        StorageJob::SaveUi {
            user: ALICE,
            state: newer.clone(),
        },
    );
    assert_eq!(session(&store, ALICE).ui, Some(newer));
}

#[test]
fn full_queue_sheds_at_once() {
    let dir = TempDir::new("overload");
    let mut cfg = config(dir.path());
    cfg.db_threads = 1;
    cfg.queue_depth = 1;
    cfg.write_batch_max = 1;
    let store = Store::open_embedded(cfg).unwrap();
    let mut pending = Vec::new();
    let mut shed = 0;
    for i in 0..2_000 {
        let started = Instant::now();
        match store.submit(store_job(ALICE, BOB, &format!("{i}"), None), later()) {
            Ok(p) => pending.push(p),
            Err(e) => {
                assert_eq!(e, StorageError::Overloaded);
                shed += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "submit never blocks"
        );
    }
    assert!(shed > 0, "a queue of one with fsynced writes must overflow");
    let accepted = pending.len();
    for p in pending {
        wait(p).expect("accepted jobs complete");
    }
    let stats = store.stats();
    assert_eq!(stats.jobs_shed, shed);
    assert_eq!(stats.jobs_submitted as usize, accepted);
    assert_eq!(stats.queue_depth, 1);
    assert_eq!(stats.write_jobs as usize, accepted);
    // Only accepted messages were stored.
    let (_, page, _) = history(&store, ALICE, BOB, None, 100);
    assert_eq!(page.last().unwrap().id as usize, accepted);
}

#[test]
fn a_job_past_its_deadline_is_answered_timed_out_without_running() {
    let dir = TempDir::new("deadline");
    let store = open(dir.path());
    let past = Instant::now() - Duration::from_millis(5);
    let late = store
        .submit(store_job(ALICE, BOB, "late", None), past)
        .unwrap();
    assert_eq!(wait(late), Err(StorageError::TimedOut));
    let late = store
        .submit(StorageJob::LoadSession { user: ALICE }, past)
        .unwrap();
    assert_eq!(wait(late), Err(StorageError::TimedOut));
    let late = store.reload_directory(past).unwrap();
    assert_eq!(
        wait(late),
        Err(ReloadError::Storage(StorageError::TimedOut))
    );
    assert_eq!(store.stats().jobs_timed_out, 3);
    // Nothing was stored.
    assert!(history(&store, ALICE, BOB, None, 50).1.is_empty());
    assert!(session(&store, BOB).unread.is_empty());
}

/// 500 sends submitted at once from several threads: all complete, ids are
/// unique and gapless, each submitter sees its ids increase, and far fewer
/// than 500 fsynced transactions did it.
#[test]
fn group_commit_answers_500_concurrent_sends() {
    for db_threads in [1, 4] {
        let dir = TempDir::new("group-commit");
        let mut cfg = config(dir.path());
        cfg.db_threads = db_threads;
        let store = Store::open_embedded(cfg).unwrap();
        let submitters: Vec<_> = (0..5u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let pending: Vec<_> = (0..100)
                        .map(|i| {
                            let job = store_job(
                                ALICE,
                                BOB,
                                &format!("{t}-{i}"),
                                Some(&format!("{t}-{i}")),
                            );
                            store.submit(job, later()).expect("queue has room")
                        })
                        .collect();
                    pending
                        .into_iter()
                        .map(|p| match wait(p).expect("stored") {
                            StorageOutput::Stored {
                                message,
                                duplicate: false,
                            } => message.id,
                            other => panic!("unexpected {other:?}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for submitter in submitters {
            let ids = submitter.join().unwrap();
            if db_threads == 1 {
                assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "one db thread keeps submission order"
                );
            }
            all.extend(ids);
        }
        assert_eq!(all.len(), 500, "unique ids");
        assert_eq!(all, (1..=500).collect::<HashSet<_>>(), "gapless ids");
        let stats = store.stats();
        assert_eq!(stats.write_jobs, 500);
        assert!(
            stats.write_batches < 500,
            "group commit batched nothing: {} batches",
            stats.write_batches
        );
        assert_eq!(session(&store, BOB).unread, vec![(ALICE, 500)]);
        let (_, page, more) = history(&store, BOB, ALICE, None, 100);
        assert!(more);
        assert!(page.windows(2).all(|w| w[0].id < w[1].id));
    }
}

#[test]
fn directory_reload_swaps_in_a_good_file_and_keeps_the_old_on_a_bad_one() {
    let dir = TempDir::new("reload");
    let file = dir.path().join("directory.json");
    let users = r#"[{"id":1,"name":"alice"},{"id":4,"name":"dave"},{"id":5,"name":"erin"}]"#;
    std::fs::write(
        &file,
        format!(r#"{{"users":{users},"friendships":[[1,5]]}}"#),
    )
    .unwrap();
    let mut cfg = config(dir.path());
    cfg.directory = Some(file.clone());
    let store = Store::open_embedded(cfg).unwrap();
    let roster = |user| match ok(&store, StorageJob::LoadRoster { user }) {
        StorageOutput::Roster { friends } => friend_ids(&friends),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(roster(1), vec![5]);

    std::fs::write(
        &file,
        format!(r#"{{"users":{users},"friendships":[[1,5],[4,1]]}}"#),
    )
    .unwrap();
    let reloaded = wait(store.reload_directory(later()).unwrap());
    assert_eq!(
        reloaded,
        Ok(DirectoryReloaded {
            users: 3,
            friendships: 2
        })
    );
    assert_eq!(roster(1), vec![4, 5]);
    assert_eq!(roster(4), vec![1]);

    std::fs::write(
        &file,
        format!(r#"{{"users":{users},"friendships":[[1,7]]}}"#),
    )
    .unwrap();
    match wait(store.reload_directory(later()).unwrap()) {
        Err(ReloadError::Directory(text)) => assert!(text.contains("user 7"), "{text}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(roster(1), vec![4, 5], "the previous directory stays");
    store.shutdown();

    // The demo directory reloads as a no-op.
    let store = open(dir.path());
    let reloaded = wait(store.reload_directory(later()).unwrap());
    assert_eq!(
        reloaded,
        Ok(DirectoryReloaded {
            users: 6,
            friendships: 7
        })
    );
}

/// A change to the default settings.
type ConfigChange = Box<dyn Fn(&mut EmbeddedConfig)>;

#[test]
fn open_refuses_bad_settings_a_bad_directory_and_a_second_opener() {
    let dir = TempDir::new("open");
    let bad: Vec<(&str, ConfigChange)> = vec![
        ("db_threads", Box::new(|c| c.db_threads = 0)),
        (
            "db_threads",
            Box::new(|c| c.db_threads = limits::DB_THREADS_MAX + 1),
        ),
        ("queue_depth", Box::new(|c| c.queue_depth = 0)),
        (
            "queue_depth",
            Box::new(|c| c.queue_depth = limits::JOB_QUEUE_DEPTH_MAX + 1),
        ),
        ("write_batch_max", Box::new(|c| c.write_batch_max = 0)),
        (
            "write_batch_max",
            Box::new(|c| c.write_batch_max = limits::WRITE_BATCH_JOBS_MAX + 1),
        ),
        ("pin_to", Box::new(|c| c.pin_to = Some(vec![]))),
        ("pin_to", Box::new(|c| c.pin_to = Some(vec![1 << 20]))),
    ];
    for (what, change) in bad {
        let mut cfg = config(dir.path());
        change(&mut cfg);
        match Store::open_embedded(cfg) {
            Err(OpenError::Config(text)) => assert!(text.contains(what), "{text}"),
            Err(other) => panic!("{what}: unexpected {other}"),
            Ok(_) => panic!("{what}: opened"),
        }
    }

    let mut cfg = config(dir.path());
    cfg.directory = Some(dir.path().join("missing.json"));
    assert!(matches!(
        Store::open_embedded(cfg),
        Err(OpenError::Directory(_))
    ));

    let first = open(dir.path());
    match Store::open_embedded(config(dir.path())) {
        Err(OpenError::Database { .. }) => {}
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("opened one database twice"),
    }
    drop(first);

    // Pinned to the first core this machine has.
    let mut cfg = config(dir.path());
    cfg.pin_to = Some(vec![core_affinity::get_core_ids().unwrap()[0].id]);
    let store = Store::open_embedded(cfg).unwrap();
    assert_eq!(session(&store, ALICE).name.as_deref(), Some("alice"));
}

#[test]
fn oversized_writes_are_refused_and_a_stopped_store_refuses_jobs() {
    let dir = TempDir::new("refuse");
    let store = open(dir.path());
    let text = "x".repeat(limits::MESSAGE_TEXT_BYTES_MAX + 1);
    assert!(matches!(
        run(&store, store_job(ALICE, BOB, &text, None)),
        Err(StorageError::Backend(_))
    ));
    let state: Arc<str> = "y".repeat(limits::UI_STATE_BYTES_MAX + 1).into();
    assert!(matches!(
        run(&store, StorageJob::SaveUi { user: ALICE, state }),
        Err(StorageError::Backend(_))
    ));
    // At the limit is fine.
    let text = "x".repeat(limits::MESSAGE_TEXT_BYTES_MAX);
    let (message, _) = send(&store, ALICE, BOB, &text, None);
    assert_eq!(message.id, 1, "nothing was stored for the refused one");
    assert_eq!(store.stats().jobs_failed, 2);

    let clone = store.clone();
    store.shutdown();
    assert_eq!(
        clone
            .submit(StorageJob::LoadSession { user: ALICE }, later())
            .err(),
        Some(StorageError::Backend("storage stopped".into()))
    );
    assert!(clone.reload_directory(later()).is_err());
}
