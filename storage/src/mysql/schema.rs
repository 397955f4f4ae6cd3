//! Switchboard's own tables in the web app's database (all named `sb_*`),
//! created and upgraded by `switchboard migrate`, and the default directory
//! schema of docs/protocol.md, "Default MySQL schema" (which Switchboard never
//! creates except for `switchboard seed-demo`).
//!
//! Migrations are numbered; `sb_schema_version` has one row per applied
//! migration. `migrate` takes a named lock (two migrating processes wait
//! for each other), applies the missing ones in order, and is idempotent:
//! every statement is `CREATE ... IF NOT EXISTS`, so a migration that was
//! cut off halfway is completed by running `migrate` again. The server
//! refuses a database whose version is not the one it was built for.

use super::conn::DbConn;
use mysql::prelude::Queryable;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// One migration: its version, what it does, and its statements.
struct Migration {
    version: u32,
    description: &'static str,
    statements: &'static [&'static str],
}

/// The bookkeeping table, created before anything else.
const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS sb_schema_version (
  version INT UNSIGNED NOT NULL PRIMARY KEY,
  description VARCHAR(191) NOT NULL,
  applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Every stored message. `id` is global and increasing (AUTO_INCREMENT),
/// so ordered within a conversation. `user_lo`/`user_hi` are the two users
/// of the conversation, smaller id first: history paging is a range scan
/// of `sb_messages_conversation`, counting unread messages from a friend
/// after a read mark one of `sb_messages_inbox`, and `cid` idempotency is
/// enforced by `sb_messages_cid` (NULL cids never collide).
pub const MESSAGES_TABLE: &str = "CREATE TABLE IF NOT EXISTS sb_messages (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  from_user BIGINT UNSIGNED NOT NULL,
  to_user BIGINT UNSIGNED NOT NULL,
  user_lo BIGINT UNSIGNED NOT NULL,
  user_hi BIGINT UNSIGNED NOT NULL,
  ts BIGINT UNSIGNED NOT NULL,
  text TEXT NOT NULL,
  cid VARCHAR(64) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY sb_messages_cid (from_user, cid),
  KEY sb_messages_conversation (user_lo, user_hi, id),
  KEY sb_messages_inbox (to_user, from_user, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Each user's persisted UI state (opaque JSON object text).
pub const UI_TABLE: &str = "CREATE TABLE IF NOT EXISTS sb_ui (
  user_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  state TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// How far `user_id` has read the conversation with `with_user`.
pub const READ_MARKS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sb_read_marks (
  user_id BIGINT UNSIGNED NOT NULL,
  with_user BIGINT UNSIGNED NOT NULL,
  upto BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (user_id, with_user)
) ENGINE=InnoDB";

/// Unread messages from `from_user` to `user_id` (a row with 0 is the
/// same as no row). Loading a session reads one short range of it.
pub const UNREAD_TABLE: &str = "CREATE TABLE IF NOT EXISTS sb_unread (
  user_id BIGINT UNSIGNED NOT NULL,
  from_user BIGINT UNSIGNED NOT NULL,
  unread BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (user_id, from_user)
) ENGINE=InnoDB";

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "messages, UI state, read marks, unread counters",
    statements: &[MESSAGES_TABLE, UI_TABLE, READ_MARKS_TABLE, UNREAD_TABLE],
}];

const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].version == SCHEMA_VERSION);

/// The default directory tables (docs/protocol.md, "Default MySQL schema"), as
/// `seed-demo` creates them when missing. A and B are friends when both (A, B)
/// and (B, A) exist.
pub const DIRECTORY_TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS users (
  id BIGINT UNSIGNED PRIMARY KEY,
  name VARCHAR(191) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE IF NOT EXISTS friendships (
  user_id BIGINT UNSIGNED NOT NULL,
  friend_id BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (user_id, friend_id)
) ENGINE=InnoDB",
];

/// The named lock `migrate` holds, and how long it waits for it (s).
const MIGRATE_LOCK: &str = "switchboard.migrate";
const MIGRATE_LOCK_WAIT_S: u32 = 60;

/// What `migrate` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// The version found (0: a database without Switchboard's tables).
    pub from: u32,
    /// The version now (always [`SCHEMA_VERSION`]).
    pub to: u32,
}

/// Brings the database to [`SCHEMA_VERSION`]. Idempotent; refuses a
/// database from a newer build.
pub(crate) fn migrate(conn: &mut DbConn) -> Result<Migrated, String> {
    let sql = |e: mysql::Error, what: &str| format!("{what}: {e}");
    let locked: Option<Option<i64>> = conn
        .conn
        .exec_first("SELECT GET_LOCK(?, ?)", (MIGRATE_LOCK, MIGRATE_LOCK_WAIT_S))
        .map_err(|e| sql(e, "taking the migrate lock"))?;
    if locked.flatten() != Some(1) {
        return Err(format!(
            "another migrate held the lock {MIGRATE_LOCK:?} for {MIGRATE_LOCK_WAIT_S} s"
        ));
    }
    let result = (|| {
        conn.conn
            .query_drop(VERSION_TABLE)
            .map_err(|e| sql(e, "creating sb_schema_version"))?;
        let from = current_version(conn)?.unwrap_or(0);
        if from > SCHEMA_VERSION {
            return Err(format!(
                "the database has schema version {from}, newer than this build's {SCHEMA_VERSION}: \
                 run a newer switchboard"
            ));
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > from) {
            for statement in m.statements {
                conn.conn
                    .query_drop(statement)
                    .map_err(|e| sql(e, &format!("migration {}", m.version)))?;
            }
            conn.conn
                .exec_drop(
                    "INSERT IGNORE INTO sb_schema_version (version, description) VALUES (?, ?)",
                    (m.version, m.description),
                )
                .map_err(|e| sql(e, "recording the schema version"))?;
            log::info!(
                "storage: migration {} applied: {}",
                m.version,
                m.description
            );
        }
        Ok(Migrated {
            from,
            to: SCHEMA_VERSION,
        })
    })();
    let _ = conn
        .conn
        .exec_drop("SELECT RELEASE_LOCK(?)", (MIGRATE_LOCK,));
    result
}

/// The applied version, `None` when `sb_schema_version` does not exist.
pub(crate) fn current_version(conn: &mut DbConn) -> Result<Option<u32>, String> {
    match conn
        .conn
        .query_first::<Option<u32>, _>("SELECT MAX(version) FROM sb_schema_version")
    {
        Ok(v) => Ok(Some(v.flatten().unwrap_or(0))),
        Err(mysql::Error::MySqlError(e)) if e.code == 1146 => Ok(None),
        Err(e) => Err(format!("reading sb_schema_version: {e}")),
    }
}

/// Refuses a database whose schema is not this build's, saying what to do.
pub(crate) fn check_version(conn: &mut DbConn) -> Result<(), String> {
    match current_version(conn)? {
        Some(SCHEMA_VERSION) => Ok(()),
        None | Some(0) => Err(format!(
            "the database has no Switchboard tables yet: run `switchboard migrate` \
             (schema version {SCHEMA_VERSION})"
        )),
        Some(v) if v < SCHEMA_VERSION => Err(format!(
            "the database has schema version {v}, this build needs {SCHEMA_VERSION}: \
             run `switchboard migrate`"
        )),
        Some(v) => Err(format!(
            "the database has schema version {v}, newer than this build's {SCHEMA_VERSION}: \
             run a newer switchboard"
        )),
    }
}
