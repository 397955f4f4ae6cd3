//! `switchboard seed-demo`: fills the default directory schema
//! (docs/protocol.md, "Default MySQL schema") with a synthetic social graph,
//! for demos and benches.
//!
//! Users are `1..=N`, named `user1`, `user2`, …; each user `u` draws
//! `K/2` partners uniformly from the other users with a seeded splitmix64
//! generator, and every distinct pair becomes a friendship written in both
//! directions, so the mean number of friends is close to `K` (a little
//! under, for pairs drawn twice). The same `(N, K, seed)` always gives the
//! same graph. Rows go in sorted by primary key, in multi-row `INSERT`s of
//! [`limits::SEED_ROWS_PER_INSERT`] rows, committed every few statements.

use super::conn::{self, DbConn};
use super::schema::DIRECTORY_TABLES;
use crate::limits;
use mysql::prelude::Queryable;
use std::time::{Duration, Instant};

/// What `seed_demo` wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seeded {
    /// Users written.
    pub users: u64,
    /// Distinct friendships (each is two rows).
    pub friendships: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Statements per transaction while seeding.
const STATEMENTS_PER_COMMIT: usize = 16;

/// splitmix64: small, fast, and the same everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth mentioning
    /// for n far below 2^64.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// The friendship pairs `(a, b)`, `a < b`, sorted, of the graph
/// `(users, friends, seed)`.
pub(crate) fn graph(users: u64, friends: u64, seed: u64) -> Vec<(u64, u64)> {
    let mut rng = SplitMix(seed);
    let draws = friends / 2 + friends % 2;
    let mut pairs = Vec::with_capacity((users * draws) as usize);
    for u in 1..=users {
        for _ in 0..draws {
            // Another user: draw among users - 1 and skip over u.
            let mut v = 1 + rng.below(users - 1);
            if v >= u {
                v += 1;
            }
            pairs.push((u.min(v), u.max(v)));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Creates the directory tables when missing and writes the graph.
/// Refuses tables that already have users unless `reset`, which empties
/// `users` and `friendships` first.
pub fn seed_demo(
    url: &str,
    users: u64,
    friends: u64,
    seed: u64,
    reset: bool,
) -> Result<Seeded, String> {
    if !(2..=limits::SEED_USERS_MAX).contains(&users) {
        return Err(format!(
            "--users {users}: must be 2–{}",
            limits::SEED_USERS_MAX
        ));
    }
    if friends >= users || friends > limits::FRIENDS_PER_USER_MAX as u64 {
        return Err(format!(
            "--friends {friends}: must be below --users and at most {}",
            limits::FRIENDS_PER_USER_MAX
        ));
    }
    let start = Instant::now();
    let mut conn = conn::connect_once(url, Duration::from_secs(600))?;
    let c = &mut conn.conn;
    for ddl in DIRECTORY_TABLES {
        c.query_drop(ddl)
            .map_err(|e| format!("creating the directory tables: {e}"))?;
    }
    let existing: u64 = c
        .query_first("SELECT COUNT(*) FROM users")
        .map_err(|e| format!("counting users: {e}"))?
        .unwrap_or(0);
    if existing > 0 {
        if !reset {
            return Err(format!(
                "the users table already has {existing} rows: pass --reset to replace users and \
                 friendships (this deletes them)"
            ));
        }
        c.query_drop("DELETE FROM friendships")
            .and_then(|()| c.query_drop("DELETE FROM users"))
            .map_err(|e| format!("emptying users and friendships: {e}"))?;
    }
    let pairs = graph(users, friends, seed);
    let user_rows = (1..=users).map(|id| format!("({id},'user{id}')"));
    insert_rows(&mut conn, "INSERT INTO users (id, name) VALUES ", user_rows)?;
    let mut both: Vec<(u64, u64)> = Vec::with_capacity(pairs.len() * 2);
    both.extend(pairs.iter().copied());
    both.extend(pairs.iter().map(|&(a, b)| (b, a)));
    both.sort_unstable();
    let friendship_rows = both.iter().map(|(a, b)| format!("({a},{b})"));
    insert_rows(
        &mut conn,
        "INSERT INTO friendships (user_id, friend_id) VALUES ",
        friendship_rows,
    )?;
    Ok(Seeded {
        users,
        friendships: pairs.len() as u64,
        elapsed: start.elapsed(),
    })
}

/// Inserts `rows` (SQL tuples) under `head` in multi-row statements and
/// regular commits.
fn insert_rows(
    conn: &mut DbConn,
    head: &str,
    rows: impl Iterator<Item = String>,
) -> Result<(), String> {
    let c = &mut conn.conn;
    let fail = |e: mysql::Error| format!("{}…: {e}", head.trim_end());
    c.query_drop("START TRANSACTION").map_err(fail)?;
    let mut text = String::new();
    let mut in_statement = 0;
    let mut statements = 0;
    let mut rows = rows.peekable();
    while let Some(row) = rows.next() {
        if in_statement == 0 {
            text.clear();
            text.push_str(head);
        } else {
            text.push(',');
        }
        text.push_str(&row);
        in_statement += 1;
        if in_statement == limits::SEED_ROWS_PER_INSERT || rows.peek().is_none() {
            c.query_drop(&text).map_err(fail)?;
            in_statement = 0;
            statements += 1;
            if statements % STATEMENTS_PER_COMMIT == 0 {
                c.query_drop("COMMIT")
                    .and_then(|()| c.query_drop("START TRANSACTION"))
                    .map_err(fail)?;
            }
        }
    }
    c.query_drop("COMMIT").map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_is_deterministic_simple_and_near_the_asked_degree() {
        let a = graph(1_000, 50, 7);
        assert_eq!(a, graph(1_000, 50, 7));
        assert_ne!(a, graph(1_000, 50, 8));
        assert!(a.iter().all(|&(x, y)| x < y && x >= 1 && y <= 1_000));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let mean = 2.0 * a.len() as f64 / 1_000.0;
        assert!((45.0..=50.0).contains(&mean), "mean degree {mean}");
    }
}
