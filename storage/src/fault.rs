//! Fault injection for tests: a commit that starts in time and ends late
//! (a slow fsync, a slow MySQL `COMMIT`), and a write-ahead log that is
//! never checkpointed, on demand.
//!
//! Compiled in only with the crate's `fault-injection` feature, which no
//! release build enables (the engine turns it on for its integration
//! tests through a dev-dependency). Without the feature [`Faults`] is an
//! empty struct, [`Faults::from_env`] reads no environment variable and
//! [`Faults::stall_commit`] does nothing.
//!
//! With the feature, [`Faults::from_env`] reads, once, when the store is
//! opened:
//! - `SWITCHBOARD_FAULT_COMMIT_STALL_MS`: how long each stalled write
//!   batch sleeps on its db thread after its last deadline check and
//!   before its durable step (embedded: between the write-ahead log's
//!   write and its `fdatasync`, or before a checkpoint's durable
//!   `commit()`, holding redb's write lock; MySQL: before `COMMIT` is
//!   sent, holding the transaction's row locks),
//!   1–[`limits::FAULT_COMMIT_STALL_MS_MAX`]. Unset or `0`: no stall.
//! - `SWITCHBOARD_FAULT_COMMIT_STALL_COUNT`: stall only the first N write
//!   batches that reach their commit (so a retry is fast). Unset: every
//!   batch.
//! - `SWITCHBOARD_FAULT_NO_CHECKPOINT`: `1` stops the embedded store from
//!   checkpointing its write-ahead log while it runs (by age, when idle,
//!   at shutdown; only a batch too big for the log still does), so a
//!   `kill -9` test finds every acknowledged write in the log alone and
//!   exercises its replay. Unset or `0`: checkpoints as usual.
//!
//! A value that is not a number, or out of its bounds, refuses the open
//! (a test that meant to inject a fault must not silently run without
//! it). Armed faults are logged at warn at open, and each stall when it
//! happens.

#[cfg(feature = "fault-injection")]
use crate::limits;
use crate::OpenError;

/// Which faults a store injects (see the module documentation).
pub(crate) struct Faults {
    /// The commit stall, when armed.
    #[cfg(feature = "fault-injection")]
    stall: Option<CommitStall>,
    /// Whether the embedded store's log checkpoints are held off.
    #[cfg(feature = "fault-injection")]
    no_checkpoint: bool,
}

/// A stall before each of the first `remaining` commits.
#[cfg(feature = "fault-injection")]
struct CommitStall {
    /// How long each stalled commit sleeps first.
    duration: std::time::Duration,
    /// Write batches still to stall (`u64::MAX`: every one); the db
    /// threads share it and take one each.
    remaining: std::sync::atomic::AtomicU64,
}

/// The stall's length, in ms.
#[cfg(feature = "fault-injection")]
const STALL_MS_VAR: &str = "SWITCHBOARD_FAULT_COMMIT_STALL_MS";
/// How many write batches to stall.
#[cfg(feature = "fault-injection")]
const STALL_COUNT_VAR: &str = "SWITCHBOARD_FAULT_COMMIT_STALL_COUNT";
/// Whether to hold off the log's checkpoints.
#[cfg(feature = "fault-injection")]
const NO_CHECKPOINT_VAR: &str = "SWITCHBOARD_FAULT_NO_CHECKPOINT";

impl Faults {
    /// No faults.
    pub(crate) fn none() -> Faults {
        Faults {
            #[cfg(feature = "fault-injection")]
            stall: None,
            #[cfg(feature = "fault-injection")]
            no_checkpoint: false,
        }
    }

    /// The faults the environment asks for (`backend` names the store in
    /// the log line). Without the `fault-injection` feature: none, and no
    /// variable is read.
    #[cfg(not(feature = "fault-injection"))]
    pub(crate) fn from_env(_backend: &str) -> Result<Faults, OpenError> {
        Ok(Faults::none())
    }

    /// The faults the environment asks for (`backend` names the store in
    /// the log line); a malformed or out-of-bounds value refuses the open.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn from_env(backend: &str) -> Result<Faults, OpenError> {
        let var = |name: &str| std::env::var(name).ok();
        let mut faults = Faults::from_vars(backend, var(STALL_MS_VAR), var(STALL_COUNT_VAR))?;
        faults.no_checkpoint = match var(NO_CHECKPOINT_VAR).as_deref().map(str::trim) {
            None | Some("0") => false,
            Some("1") => {
                log::warn!(
                    "storage: FAULT INJECTION armed ({backend}): the write-ahead log is never \
                     checkpointed while the store runs ({NO_CHECKPOINT_VAR})"
                );
                true
            }
            Some(other) => {
                return Err(OpenError::Config(format!(
                    "{NO_CHECKPOINT_VAR} is {other:?}, must be 0 or 1"
                )))
            }
        };
        Ok(faults)
    }

    /// [`Faults::from_env`] on given values (for unit tests).
    #[cfg(feature = "fault-injection")]
    fn from_vars(
        backend: &str,
        stall_ms: Option<String>,
        count: Option<String>,
    ) -> Result<Faults, OpenError> {
        use std::sync::atomic::AtomicU64;
        use std::time::Duration;
        let number = |name: &str, text: &str, min: u64, max: u64| match text.trim().parse() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(OpenError::Config(format!(
                "{name} is {text:?}, must be a number {min}–{max}"
            ))),
        };
        let stall_ms = match stall_ms {
            Some(text) => number(STALL_MS_VAR, &text, 0, limits::FAULT_COMMIT_STALL_MS_MAX)?,
            None => 0,
        };
        let count = match count {
            Some(text) => Some(number(STALL_COUNT_VAR, &text, 0, u64::MAX - 1)?),
            None => None,
        };
        if stall_ms == 0 {
            return Ok(Faults::none());
        }
        log::warn!(
            "storage: FAULT INJECTION armed ({backend}): the commit of {} stalls {stall_ms} ms \
             after its deadline check ({STALL_MS_VAR}, {STALL_COUNT_VAR})",
            match count {
                Some(n) => format!("each of the first {n} write batches"),
                None => "every write batch".to_string(),
            }
        );
        Ok(Faults {
            stall: Some(CommitStall {
                duration: Duration::from_millis(stall_ms),
                remaining: AtomicU64::new(count.unwrap_or(u64::MAX)),
            }),
            no_checkpoint: false,
        })
    }

    /// Whether the embedded store may checkpoint its log by age, when
    /// idle and at shutdown (always, without the feature).
    #[inline]
    pub(crate) fn checkpoints_allowed(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return !self.no_checkpoint;
        #[cfg(not(feature = "fault-injection"))]
        true
    }

    /// Called by a db thread between a write batch's last deadline check
    /// and its durable step (embedded: the log's `fdatasync`, or redb's
    /// fsync at a checkpoint; MySQL: `COMMIT`): sleeps there when a stall
    /// is armed and not used up.
    /// Without the feature: nothing.
    #[inline]
    pub(crate) fn stall_commit(&self) {
        #[cfg(feature = "fault-injection")]
        if let Some(stall) = &self.stall {
            use std::sync::atomic::Ordering::{AcqRel, Acquire};
            // One stall less to go; `u64::MAX` (every batch) is never used up.
            let take = |n: u64| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            };
            if stall.remaining.fetch_update(AcqRel, Acquire, take).is_ok() {
                log::warn!(
                    "storage: FAULT INJECTION: stalling a commit for {} ms",
                    stall.duration.as_millis()
                );
                std::thread::sleep(stall.duration);
            }
        }
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;
    use std::time::Instant;

    /// What `from_vars` makes of two values: `Ok((stall_ms, count))` of an
    /// armed stall, `Ok((0, 0))` for none, or the refusal's text.
    fn check(stall_ms: Option<&str>, count: Option<&str>, expected: Result<(u64, u64), &str>) {
        let got = Faults::from_vars("test", stall_ms.map(String::from), count.map(String::from));
        let got = match got {
            Ok(Faults { stall: None, .. }) => Ok((0, 0)),
            Ok(Faults { stall: Some(s), .. }) => Ok((
                s.duration.as_millis() as u64,
                s.remaining.load(std::sync::atomic::Ordering::Relaxed),
            )),
            Err(OpenError::Config(text)) => Err(text),
            Err(other) => panic!("unexpected {other}"),
        };
        assert_eq!(
            got.as_ref().map_err(String::as_str),
            expected.as_ref().map_err(|e| *e),
            "{stall_ms:?} {count:?}"
        );
    }

    #[test]
    fn stall_settings_are_parsed_strictly() {
        let max = limits::FAULT_COMMIT_STALL_MS_MAX;
        check(None, None, Ok((0, 0)));
        check(Some("0"), Some("3"), Ok((0, 0)));
        check(Some("2500"), None, Ok((2500, u64::MAX)));
        check(Some("2500"), Some("1"), Ok((2500, 1)));
        check(Some(&max.to_string()), None, Ok((max, u64::MAX)));
        let over = format!(
            "{STALL_MS_VAR} is \"{}\", must be a number 0–{max}",
            max + 1
        );
        check(Some(&(max + 1).to_string()), None, Err(&over));
        let bad = format!("{STALL_MS_VAR} is \"2s\", must be a number 0–{max}");
        check(Some("2s"), None, Err(&bad));
        let bad = format!(
            "{STALL_COUNT_VAR} is \"-1\", must be a number 0–{}",
            u64::MAX - 1
        );
        check(Some("10"), Some("-1"), Err(&bad));
    }

    #[test]
    fn only_the_first_count_commits_stall() {
        let faults = Faults::from_vars("test", Some("30".into()), Some("2".into())).unwrap();
        let timed = || {
            let started = Instant::now();
            faults.stall_commit();
            started.elapsed().as_millis()
        };
        assert!(timed() >= 30);
        assert!(timed() >= 30);
        assert!(timed() < 30, "the third commit is not stalled");
        Faults::none().stall_commit();
    }
}
