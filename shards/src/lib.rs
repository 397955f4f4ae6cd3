//! `switchboard-shards` is what a shard *is*: the sessions, tabs, event
//! buffers and presence of the users it owns, and the friends-only routing
//! decisions. Synchronous and deterministic: requests, peer messages,
//! storage results and `now` go in; responses, peer messages and storage
//! jobs come out ([`Shard::handle`]). No sockets, no executor, no clock
//! reads, no randomness (sids are drawn by the caller), like `quinn-proto`.
#![forbid(unsafe_code)]

pub mod doubt;
pub mod limits;
pub mod model;
pub mod ratelimit;
pub mod routing;
pub mod session;
pub mod shard;
pub mod timers;
pub mod trace;

pub use routing::home_shard;

/// Whether this build honours test-only faults (`Config::panic_user`,
/// `Config::panic_stored_user`, `Config::panic_timer_user`,
/// `Config::jobs_in_flight_max`):
/// the `fault-injection` feature, on only in the engine's tests.
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");
pub use shard::{
    ChangeId, Config, Input, NotSettled, Output, PeerMsg, Resync, Shard, Stats, Unanswered,
};
