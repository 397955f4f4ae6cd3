//! Every bound of the shard core, by name, with what happens when it is hit.
//! The runtime-tunable ones travel in [`crate::Config`]; these are the
//! defaults and the hard caps.

/// Events kept per session for polls to catch up from. Older ones are
/// dropped; a poll whose `since` is older than the oldest kept gets
/// `reset` and the client rebuilds from `/connect` + `/history`.
pub const EVENTS_BUFFERED_MAX: usize = 128;

/// Tabs attached to one session. One more connect detaches the tab that
/// has gone longest without polling (its sid answers `unknown_session`).
pub const TABS_PER_USER_MAX: usize = 32;

/// Connects waiting while a session loads from storage. One more is
/// answered `unavailable`.
pub const CONNECTS_WAITING_MAX: usize = 64;

/// Storage jobs in flight from one shard. One more request that needs
/// storage is answered `unavailable` (shed, never queued without bound).
pub const JOBS_IN_FLIGHT_MAX: usize = 16_384;

/// Timers fired per tick; the rest fire on the next tick, so one tick never
/// monopolises the executor.
pub const TIMERS_PER_TICK_MAX: usize = 4_096;

/// Roster refreshes of one roster-changed broadcast waiting on one shard.
/// Over it the remaining sessions are refreshed by their interval instead.
pub const ROSTER_TOUCHES_MAX: usize = 4_096;

/// Roster changes one loading session remembers to re-read its roster
/// for once loaded. One more fails that change's part (the admin call
/// answers `unavailable` and the web app retries).
pub const LOADING_REREADS_MAX: usize = 16;

/// Cids in doubt per session: sends with a cid whose storage job failed
/// or timed out (storage may have committed them). One more drops the
/// oldest (counted in `Stats::in_doubt_dropped`): if that message was
/// stored after all, a retry is answered but not delivered live, and tabs
/// see it from history when they next load it.
pub const IN_DOUBT_CIDS_MAX: usize = 64;

/// Default offline grace (PROTOCOL.md §6).
pub const PRESENCE_GRACE_MS_DEFAULT: u64 = 10_000;
/// Default tab timeout with no poll outstanding.
pub const TAB_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default roster re-read interval.
pub const ROSTER_REFRESH_MS_DEFAULT: u64 = 300_000;
/// Default period of the presence digest: each shard tells every other
/// which of its users are online or away, and each replica repairs itself
/// from it (a `Presence` message lost to a full outbox is wrong for at most
/// this long). Its cost is one message per peer per period, listing the
/// shard's live sessions.
pub const PRESENCE_DIGEST_MS_DEFAULT: u64 = 10_000;
/// Longest poll wait (PROTOCOL.md §3: `wait` 0–60 s).
pub const POLL_WAIT_MS_MAX: u64 = 60_000;

const _: () = assert!(CONNECTS_WAITING_MAX <= JOBS_IN_FLIGHT_MAX);
const _: () = assert!(TABS_PER_USER_MAX >= 2);
const _: () = assert!(EVENTS_BUFFERED_MAX >= 16);
