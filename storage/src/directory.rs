//! The embedded directory: users (id → name) and mutual friendships, as
//! the web app would have them. Built in (the demo users) or read from a
//! JSON file (`SWITCHBOARD_DIRECTORY`, docs/protocol.md, "Settings"):
//!
//! ```json
//! {"users":[{"id":1,"name":"alice"}],"friendships":[[1,2]]}
//! ```
//!
//! Each pair is one mutual friendship; listing a pair twice (either way
//! round) is the same friendship. Validation is strict and all-or-nothing:
//! a file with any fault is refused whole, with an error naming the fault.

use crate::limits;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use switchboard_shards::model::{Friend, UserId};

/// Users and who is friends with whom. Immutable once built; a reload
/// builds a new one and swaps it in whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    /// Every user's name, by id.
    names: BTreeMap<UserId, Arc<str>>,
    /// Every user's friends, sorted by id, without duplicates. Users with
    /// no friends have no entry.
    friends: BTreeMap<UserId, Box<[UserId]>>,
    /// How many distinct friendships (pairs) there are.
    friendships: usize,
}

/// Why a directory was refused.
#[derive(Debug)]
pub enum DirectoryError {
    /// The file could not be read.
    Io {
        /// The directory file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is larger than [`limits::DIRECTORY_FILE_BYTES_MAX`].
    FileTooLarge {
        /// The directory file.
        path: PathBuf,
    },
    /// Not JSON of the expected shape (the text says where and why).
    Syntax(String),
    /// A user with id 0 (ids are positive).
    ZeroId {
        /// Position of the entry in `users`, from 0.
        index: usize,
    },
    /// Two users with the same id.
    DuplicateId {
        /// The repeated id.
        id: UserId,
    },
    /// A name that is empty, longer than [`limits::NAME_BYTES_MAX`], or
    /// has control characters.
    BadName {
        /// The user whose name it is.
        id: UserId,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More users than [`limits::USERS_MAX`].
    TooManyUsers {
        /// How many the file has.
        count: usize,
    },
    /// A friendship naming a user that is not in `users`.
    UnknownUser {
        /// The friendship as written.
        pair: [UserId; 2],
        /// The id not in `users`.
        user: UserId,
    },
    /// A friendship of a user with themself.
    SelfFriendship {
        /// The user.
        user: UserId,
    },
    /// A user with more friends than [`limits::FRIENDS_PER_USER_MAX`].
    TooManyFriends {
        /// The user.
        user: UserId,
        /// How many friends the file gives them.
        count: usize,
    },
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::Io { path, source } => {
                write!(f, "directory {}: {source}", path.display())
            }
            DirectoryError::FileTooLarge { path } => write!(
                f,
                "directory {}: larger than {} bytes",
                path.display(),
                limits::DIRECTORY_FILE_BYTES_MAX
            ),
            DirectoryError::Syntax(e) => write!(f, "directory is not valid JSON of the shape {{\"users\":[{{\"id\":1,\"name\":\"alice\"}}],\"friendships\":[[1,2]]}}: {e}"),
            DirectoryError::ZeroId { index } => {
                write!(f, "directory: users[{index}] has id 0 (ids are positive)")
            }
            DirectoryError::DuplicateId { id } => {
                write!(f, "directory: user id {id} appears twice")
            }
            DirectoryError::BadName { id, reason } => {
                write!(f, "directory: user {id}'s name {reason}")
            }
            DirectoryError::TooManyUsers { count } => write!(
                f,
                "directory: {count} users, over the limit of {}",
                limits::USERS_MAX
            ),
            DirectoryError::UnknownUser { pair, user } => write!(
                f,
                "directory: friendship [{}, {}] names user {user}, who is not in users",
                pair[0], pair[1]
            ),
            DirectoryError::SelfFriendship { user } => {
                write!(f, "directory: friendship of user {user} with themself")
            }
            DirectoryError::TooManyFriends { user, count } => write!(
                f,
                "directory: user {user} has {count} friends, over the limit of {}",
                limits::FRIENDS_PER_USER_MAX
            ),
        }
    }
}

impl std::error::Error for DirectoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirectoryError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The file's shape, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    users: Vec<UserShape>,
    friendships: Vec<[UserId; 2]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserShape {
    id: UserId,
    name: String,
}

impl Directory {
    /// The built-in demo users: 1 alice, 2 bob, 3 carol, 4 dave, 5 erin,
    /// 6 frank; friendships alice–bob, alice–carol, bob–carol, bob–dave,
    /// carol–erin, dave–frank, erin–frank (so alice and dave are not
    /// friends).
    pub fn demo() -> Directory {
        let users = ["alice", "bob", "carol", "dave", "erin", "frank"]
            .iter()
            .zip(1..)
            .map(|(name, id)| (id, (*name).to_string()))
            .collect();
        let pairs = vec![[1, 2], [1, 3], [2, 3], [2, 4], [3, 5], [4, 6], [5, 6]];
        Directory::build(users, pairs).expect("the demo directory is valid")
    }

    /// Parses and validates a directory from JSON text.
    pub fn from_json(text: &str) -> Result<Directory, DirectoryError> {
        let shape: FileShape =
            serde_json::from_str(text).map_err(|e| DirectoryError::Syntax(e.to_string()))?;
        let users = shape.users.into_iter().map(|u| (u.id, u.name)).collect();
        Directory::build(users, shape.friendships)
    }

    /// Reads, parses and validates a directory file.
    pub fn from_file(path: &Path) -> Result<Directory, DirectoryError> {
        let io_error = |source| DirectoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        let mut text = String::new();
        // Read one byte past the limit to tell "at the limit" from "over".
        file.take(limits::DIRECTORY_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(io_error)?;
        if text.len() as u64 > limits::DIRECTORY_FILE_BYTES_MAX {
            return Err(DirectoryError::FileTooLarge {
                path: path.to_path_buf(),
            });
        }
        Directory::from_json(&text)
    }

    fn build(
        users: Vec<(UserId, String)>,
        pairs: Vec<[UserId; 2]>,
    ) -> Result<Directory, DirectoryError> {
        if users.len() > limits::USERS_MAX {
            return Err(DirectoryError::TooManyUsers { count: users.len() });
        }
        let mut names = BTreeMap::new();
        for (index, (id, name)) in users.into_iter().enumerate() {
            if id == 0 {
                return Err(DirectoryError::ZeroId { index });
            }
            check_name(&name).map_err(|reason| DirectoryError::BadName { id, reason })?;
            if names.insert(id, Arc::<str>::from(name)).is_some() {
                return Err(DirectoryError::DuplicateId { id });
            }
        }
        let mut sets: BTreeMap<UserId, BTreeSet<UserId>> = BTreeMap::new();
        let mut friendships = 0;
        for pair in pairs {
            let [a, b] = pair;
            for user in [a, b] {
                if !names.contains_key(&user) {
                    return Err(DirectoryError::UnknownUser { pair, user });
                }
            }
            if a == b {
                return Err(DirectoryError::SelfFriendship { user: a });
            }
            if sets.entry(a).or_default().insert(b) {
                friendships += 1;
            }
            sets.entry(b).or_default().insert(a);
        }
        let mut friends = BTreeMap::new();
        for (user, set) in sets {
            if set.len() > limits::FRIENDS_PER_USER_MAX {
                return Err(DirectoryError::TooManyFriends {
                    user,
                    count: set.len(),
                });
            }
            friends.insert(user, set.into_iter().collect());
        }
        Ok(Directory {
            names,
            friends,
            friendships,
        })
    }

    /// The user's name, or `None` when the directory has no such user.
    pub fn name(&self, user: UserId) -> Option<Arc<str>> {
        self.names.get(&user).cloned()
    }

    /// The user's friends with their names, sorted by id (empty for an
    /// unknown user).
    pub fn friends(&self, user: UserId) -> Vec<Friend> {
        let Some(ids) = self.friends.get(&user) else {
            return Vec::new();
        };
        ids.iter()
            .map(|&id| Friend {
                id,
                name: self.names[&id].clone(),
            })
            .collect()
    }

    /// Whether `a` and `b` are friends (never true for `a == b`).
    pub fn are_friends(&self, a: UserId, b: UserId) -> bool {
        self.friends
            .get(&a)
            .is_some_and(|ids| ids.binary_search(&b).is_ok())
    }

    /// Every user with their name, by increasing id.
    pub fn users(&self) -> impl Iterator<Item = (UserId, &Arc<str>)> + '_ {
        self.names.iter().map(|(&id, name)| (id, name))
    }

    /// How many users there are.
    pub fn user_count(&self) -> usize {
        self.names.len()
    }

    /// How many distinct (mutual) friendships there are.
    pub fn friendship_count(&self) -> usize {
        self.friendships
    }
}

/// A name is 1–[`limits::NAME_BYTES_MAX`] bytes without control
/// characters (it is shown in rosters and written to logs).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > limits::NAME_BYTES_MAX {
        return Err("is too long");
    }
    if name.chars().any(char::is_control) {
        return Err("has control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_has_the_documented_users_and_friendships() {
        let d = Directory::demo();
        let names: Vec<_> = d.users().map(|(id, n)| (id, n.to_string())).collect();
        assert_eq!(
            names,
            [
                (1, "alice"),
                (2, "bob"),
                (3, "carol"),
                (4, "dave"),
                (5, "erin"),
                (6, "frank")
            ]
            .map(|(i, n)| (i, n.to_string()))
        );
        assert_eq!(d.friendship_count(), 7);
        assert!(d.are_friends(1, 2) && d.are_friends(2, 1));
        assert!(!d.are_friends(1, 4) && !d.are_friends(4, 1));
        assert!(!d.are_friends(1, 1));
        assert!(!d.are_friends(1, 99));
        let bob: Vec<_> = d.friends(2).into_iter().map(|f| (f.id, f.name)).collect();
        assert_eq!(
            bob,
            vec![(1, "alice".into()), (3, "carol".into()), (4, "dave".into())]
        );
        assert_eq!(d.name(6).as_deref(), Some("frank"));
        assert_eq!(d.name(7), None);
        assert!(d.friends(7).is_empty());
    }
}
