//! The one deadline race of the server: a piece of work against a timer.
//!
//! `io` has no clock of its own (it is runtime-agnostic), so the caller
//! brings the timer: inside `io` it is [`Handler::sleep`](crate::Handler),
//! in the engine `glommio::timer::sleep`. Every race of a piece of work
//! against a timer, in `io` and in the engine, goes through [`within`]: a
//! connection's reads, writes and lingering close (in `io`); a call to the
//! home shard, storage jobs, token lookups, directory reloads, health asks,
//! and the start's steps, whose deadline is the stop request (in the
//! engine).
//!
//! Not every bounded wait is such a race. These check a condition against
//! a clock instead: the stop's drain phases (the engine's `stop.rs`: a
//! condition checked every `STOP_CHECK_MS` until an instant), a shard
//! waiting for shard 0's client address at start (`server.rs`, 30 s, then
//! a panic), and the binary's stop watchdog (a plain thread). And one wait
//! has no deadline: an outbox drainer waiting for room in a peer's mesh
//! channel (see "Supervision and the mesh under load" in
//! `docs/architecture.md`).

use std::fmt;
use std::future::Future;

use futures_lite::future;

/// The deadline passed before the work finished. The work was dropped
/// unfinished (a storage job it was waiting for may still run: its own
/// deadline, given at submission, bounds that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for TimedOut {}

/// Runs `work` until it finishes or `deadline` (a timer future) fires,
/// whichever comes first. `work` is polled first on every wakeup, so work
/// that is ready when the deadline fires still wins. `deadline` may be a
/// pinned `&mut` to a timer shared by several calls (`timer.as_mut()`), so
/// one deadline can bound a sequence of reads.
pub async fn within<T>(
    deadline: impl Future<Output = ()>,
    work: impl Future<Output = T>,
) -> Result<T, TimedOut> {
    future::or(async { Ok(work.await) }, async {
        deadline.await;
        Err(TimedOut)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::future::{pending, ready};

    use super::*;

    #[test]
    fn work_wins_when_both_are_ready() {
        assert_eq!(future::block_on(within(ready(()), ready(7))), Ok(7));
        assert_eq!(future::block_on(within(pending(), ready(7))), Ok(7));
        assert_eq!(
            future::block_on(within(ready(()), pending::<u8>())),
            Err(TimedOut)
        );
        assert_eq!(TimedOut.to_string(), "timed out");
    }
}
