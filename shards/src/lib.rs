//! `switchboard-shards` is what a shard *is*: the sessions, tabs, event
//! buffers and presence of the users it owns, and the friends-only routing
//! decisions. Synchronous and deterministic: requests, peer messages,
//! storage results and `now` go in; responses, peer messages and storage
//! jobs come out. No sockets, no executor, no clock reads.
#![forbid(unsafe_code)]

pub mod model;
