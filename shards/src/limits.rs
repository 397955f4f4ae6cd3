//! Every bound of the shard core, by name, with what happens when it is hit.
//! The runtime-tunable ones travel in [`crate::Config`]; these are the
//! defaults and the hard caps.

use crate::ratelimit::Rate;

/// Events kept per session for polls to catch up from. Older ones are
/// dropped; a poll whose `since` is older than the oldest kept gets
/// `reset` and the client rebuilds from `/connect` + `/history`.
pub const EVENTS_BUFFERED_MAX: usize = 128;

/// Bytes of events kept per session, approximated (`event_bytes`: text
/// or UI state plus `EVENT_BYTES_OVERHEAD`). Over it the oldest events are
/// dropped as over `EVENTS_BUFFERED_MAX` (a poll from before them gets
/// `reset`), so 128 max-length messages cannot pin 2 MB per session.
/// 256 KiB holds 16 messages of 4,000 four-byte code points, or over a
/// thousand ordinary ones.
pub const EVENTS_BUFFERED_BYTES_MAX: usize = 256 * 1024;

/// What an event costs in the byte bound beyond its text: the `Event`,
/// its `Arc` and the JSON field names it is sent with.
pub const EVENT_BYTES_OVERHEAD: usize = 64;

/// The largest event: a message of 4,000 code points of 4 bytes and its
/// `cid` (up to 64 code points, 256 bytes, checked by `io`), or a
/// 4,096-byte UI state and its tab name. The byte bound holds a few.
pub const EVENT_BYTES_LARGEST: usize = 16_000 + 256 + EVENT_BYTES_OVERHEAD;

/// Tabs attached to one session. One more connect detaches the tab that
/// has gone longest without polling (its sid answers `unknown_session`).
pub const TABS_PER_USER_MAX: usize = 32;

/// Users traced at once (admin `/trace`, the old system's lager
/// `trace_file`). The engine refuses one more (`unavailable`); a shard
/// keeps no more than this many in its copy of the set.
pub const TRACED_USERS_MAX: usize = 8;

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
/// Over it that shard's part fails (`ok: false`), so the admin call answers
/// `unavailable` and is retried; the sessions past the bound are re-read by
/// their interval meanwhile.
pub const ROSTER_TOUCHES_MAX: usize = 4_096;

// Per-user rate limits (`ratelimit.rs`): `per_s` calls a second, `burst`
// at once, per user whatever the number of tabs. Over one the call is
// answered `rate_limited` (HTTP 429) and does nothing. The defaults are
// far above what a person does through the browser client, which debounces
// typing and UI saves and retries a `rate_limited` call with backoff.

/// `/send`: a person types a message every few seconds; 30 at once covers
/// a client flushing its queue of unsent messages after a reconnect. 5 a
/// second sustained stores at most 80 messages in 10 s (it was 23,000).
pub const RATE_SEND_DEFAULT: Rate = Rate::new(5, 30);
/// `/typing`: the client sends `typing` at most every 3 s per conversation
/// and `stopped` after 2.5 s idle; 8 at once covers several conversations.
pub const RATE_TYPING_DEFAULT: Rate = Rate::new(4, 8);
/// `/presence`: a change by hand or by idle tracking, per tab.
pub const RATE_PRESENCE_DEFAULT: Rate = Rate::new(2, 10);
/// `/ui`: the client debounces saves; one per tab at once after a reload.
pub const RATE_UI_DEFAULT: Rate = Rate::new(5, 20);
/// `/read`: one per conversation opened or scrolled to its end.
pub const RATE_READ_DEFAULT: Rate = Rate::new(5, 20);
/// `/history`: paging while scrolling, and one page per tracked
/// conversation when a tab rebuilds after a `reset`.
pub const RATE_HISTORY_DEFAULT: Rate = Rate::new(10, 30);
/// `/connect` to a live session: every tab of a user reconnecting at once
/// (half of `TABS_PER_USER_MAX`), then page reloads.
pub const RATE_CONNECT_DEFAULT: Rate = Rate::new(2, 16);
/// `/poll` answered at once (a `wait=0` poll, or one that finds news): the
/// browser client's followers poll `wait=0` every 20 s per tab, and a
/// leader's polls are held until news, so even a busy conversation stays
/// far below 10 a second; 40 at once covers every tab of a user catching
/// up after a reconnect. A held poll is not counted: it costs nothing
/// until it is answered.
pub const RATE_POLL_DEFAULT: Rate = Rate::new(10, 40);
/// Roster changes one loading session remembers to re-read its roster
/// for once loaded. One more fails that change's part (the admin call
/// answers `unavailable` and the web app retries).
pub const LOADING_REREADS_MAX: usize = 16;

/// Cids in doubt per session (`crate::doubt`): sends with a cid that
/// have a try in flight, or whose message is not known delivered (a try
/// failed or timed out: storage may have committed it). One more drops
/// the oldest (counted in `Stats::in_doubt_dropped`): if that message was
/// stored after all, a retry is answered but not delivered live, and tabs
/// see it from history when they next load it. The send rate limit keeps
/// a client's tries in flight well below it (30 at once, 5 a second).
pub const IN_DOUBT_CIDS_MAX: usize = 64;

/// Cids in doubt kept per shard for users with no live session: a send
/// whose job failed while its session was loading or gone, and the cids a
/// session still had in doubt when it ended (kick, grace). The user's next
/// session takes them when it goes live. One more drops the oldest
/// (counted in `Stats::in_doubt_dropped`), with the same consequence as
/// `IN_DOUBT_CIDS_MAX`.
pub const IN_DOUBT_ORPHANS_MAX: usize = 1_024;

/// How long an admin `roster-changed` waits for every shard's ack. A
/// `RosterTouched` or `RosterAck` dropped on a full outbox would leave it
/// waiting for good: at this deadline (checked on tick) it is answered
/// `unavailable` (retry) and forgotten. Above the engine's own deadline
/// for the call (2 × (storage timeout + slack) + margin: 17 s with the
/// defaults), so an ack that comes in time is always counted.
pub const ROSTER_CHANGE_WAIT_MS: u64 = 60_000;

/// Default offline grace (docs/protocol.md, "Settings").
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
/// Longest poll wait (docs/protocol.md, `/poll`: `wait` 0–60 s).
pub const POLL_WAIT_MS_MAX: u64 = 60_000;

const _: () = assert!(CONNECTS_WAITING_MAX <= JOBS_IN_FLIGHT_MAX);
// A session that ends can hand over every cid it has in doubt.
const _: () = assert!(IN_DOUBT_ORPHANS_MAX >= IN_DOUBT_CIDS_MAX);
const _: () = assert!(TABS_PER_USER_MAX >= 2);
const _: () = assert!(EVENTS_BUFFERED_MAX >= 16);
const _: () = assert!(EVENTS_BUFFERED_BYTES_MAX >= 8 * EVENT_BYTES_LARGEST);
const _: () = assert!(RATE_CONNECT_DEFAULT.burst as usize <= TABS_PER_USER_MAX);
