//! Directory file validation: every fault refused with an error that names
//! it; good files parsed as written.

mod common;

use common::TempDir;
use switchboard_storage::{limits, Directory, DirectoryError};

/// Whether an error is the one a case expects.
type IsExpected = fn(&DirectoryError) -> bool;

/// What a case must produce: the error variant (checked by a predicate)
/// and a piece of its message.
fn check(json: &str, expected: IsExpected, message_part: &str) {
    match Directory::from_json(json) {
        Ok(d) => panic!("accepted {json}: {d:?}"),
        Err(e) => {
            assert!(expected(&e), "{json}: wrong error {e:?}");
            let text = e.to_string();
            assert!(
                text.contains(message_part),
                "{json}: {text:?} lacks {message_part:?}"
            );
        }
    }
}

#[test]
fn faults_are_refused_with_clear_errors() {
    use DirectoryError as E;
    let long_name = "n".repeat(limits::NAME_BYTES_MAX + 1);
    let long = format!(r#"{{"users":[{{"id":1,"name":"{long_name}"}}],"friendships":[]}}"#);
    let cases: Vec<(&str, IsExpected, &str)> = vec![
        ("", |e| matches!(e, E::Syntax(_)), "not valid JSON"),
        ("[]", |e| matches!(e, E::Syntax(_)), "not valid JSON"),
        (
            r#"{"users":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "friendships",
        ),
        (
            r#"{"friendships":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "users",
        ),
        (
            r#"{"users":[],"friendships":[],"extra":1}"#,
            |e| matches!(e, E::Syntax(_)),
            "extra",
        ),
        (
            r#"{"users":[{"id":1}],"friendships":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "name",
        ),
        (
            r#"{"users":[{"id":-1,"name":"a"}],"friendships":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "-1",
        ),
        (
            r#"{"users":[{"id":1.5,"name":"a"}],"friendships":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "1.5",
        ),
        (
            r#"{"users":[{"id":"1","name":"a"}],"friendships":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "string",
        ),
        (
            r#"{"users":[{"id":18446744073709551616,"name":"a"}],"friendships":[]}"#,
            |e| matches!(e, E::Syntax(_)),
            "line 1",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"}],"friendships":[[1]]}"#,
            |e| matches!(e, E::Syntax(_)),
            "array of length 2",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"}],"friendships":[[1,2,3]]}"#,
            |e| matches!(e, E::Syntax(_)),
            "line 1",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"},{"id":0,"name":"z"}],"friendships":[]}"#,
            |e| matches!(e, E::ZeroId { index: 1 }),
            "users[1] has id 0",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"},{"id":1,"name":"b"}],"friendships":[]}"#,
            |e| matches!(e, E::DuplicateId { id: 1 }),
            "user id 1 appears twice",
        ),
        (
            r#"{"users":[{"id":1,"name":""}],"friendships":[]}"#,
            |e| matches!(e, E::BadName { id: 1, .. }),
            "is empty",
        ),
        (&long, |e| matches!(e, E::BadName { id: 1, .. }), "too long"),
        (
            r#"{"users":[{"id":1,"name":"a\nb"}],"friendships":[]}"#,
            |e| matches!(e, E::BadName { id: 1, .. }),
            "control",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"}],"friendships":[[1,2]]}"#,
            |e| {
                matches!(
                    e,
                    E::UnknownUser {
                        pair: [1, 2],
                        user: 2
                    }
                )
            },
            "names user 2",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"}],"friendships":[[3,1]]}"#,
            |e| matches!(e, E::UnknownUser { user: 3, .. }),
            "who is not in users",
        ),
        (
            r#"{"users":[{"id":1,"name":"a"}],"friendships":[[1,1]]}"#,
            |e| matches!(e, E::SelfFriendship { user: 1 }),
            "with themself",
        ),
    ];
    for (json, expected, part) in cases {
        check(json, expected, part);
    }
}

#[test]
fn limits_are_enforced_at_exactly_one_over() {
    let name_at_limit = "é".repeat(limits::NAME_BYTES_MAX / 2);
    let json = format!(r#"{{"users":[{{"id":1,"name":"{name_at_limit}"}}],"friendships":[]}}"#);
    assert_eq!(
        Directory::from_json(&json).unwrap().name(1).as_deref(),
        Some(&*name_at_limit)
    );

    // One user with FRIENDS_PER_USER_MAX friends is fine, one more is not.
    let directory = |friends: usize| {
        let users: Vec<String> = (1..=friends as u64 + 1)
            .map(|id| format!(r#"{{"id":{id},"name":"u{id}"}}"#))
            .collect();
        let pairs: Vec<String> = (2..=friends as u64 + 1)
            .map(|id| format!("[1,{id}]"))
            .collect();
        format!(
            r#"{{"users":[{}],"friendships":[{}]}}"#,
            users.join(","),
            pairs.join(",")
        )
    };
    let at = Directory::from_json(&directory(limits::FRIENDS_PER_USER_MAX)).unwrap();
    assert_eq!(at.friends(1).len(), limits::FRIENDS_PER_USER_MAX);
    match Directory::from_json(&directory(limits::FRIENDS_PER_USER_MAX + 1)) {
        Err(DirectoryError::TooManyFriends { user: 1, count }) => {
            assert_eq!(count, limits::FRIENDS_PER_USER_MAX + 1)
        }
        other => panic!("unexpected {other:?}"),
    }

    // USERS_MAX + 1 users (no friendships): refused before anything else.
    let users: Vec<String> = (1..=limits::USERS_MAX as u64 + 1)
        .map(|id| format!(r#"{{"id":{id},"name":"u"}}"#))
        .collect();
    let json = format!(r#"{{"users":[{}],"friendships":[]}}"#, users.join(","));
    assert!(matches!(
        Directory::from_json(&json),
        Err(DirectoryError::TooManyUsers { count }) if count == limits::USERS_MAX + 1
    ));
}

#[test]
fn good_files_parse_as_written() {
    let json = r#"{
        "users": [{"id": 10, "name": "zoë"}, {"id": 2, "name": "bob"}, {"id": 7, "name": "Ann Lee"}],
        "friendships": [[10, 2], [2, 10], [7, 10]]
    }"#;
    let d = Directory::from_json(json).unwrap();
    assert_eq!(d.user_count(), 3);
    assert_eq!(
        d.friendship_count(),
        2,
        "a pair listed both ways is one friendship"
    );
    assert!(d.are_friends(2, 10) && d.are_friends(10, 2) && d.are_friends(10, 7));
    assert!(!d.are_friends(2, 7));
    let friends: Vec<_> = d
        .friends(10)
        .into_iter()
        .map(|f| (f.id, f.name.to_string()))
        .collect();
    assert_eq!(
        friends,
        vec![(2, "bob".to_string()), (7, "Ann Lee".to_string())]
    );
    assert_eq!(
        d.users().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![2, 7, 10]
    );
    let empty = Directory::from_json(r#"{"users":[],"friendships":[]}"#).unwrap();
    assert_eq!(empty.user_count(), 0);

    let dir = TempDir::new("directory-file");
    let path = dir.path().join("d.json");
    std::fs::write(&path, json).unwrap();
    assert_eq!(Directory::from_file(&path).unwrap(), d);
    match Directory::from_file(&dir.path().join("missing.json")) {
        Err(e @ DirectoryError::Io { .. }) => assert!(e.to_string().contains("missing.json")),
        other => panic!("unexpected {other:?}"),
    }
}
