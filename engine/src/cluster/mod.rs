//! A cluster of Switchboard nodes over NATS (issue 15; in progress).
//!
//! Built so far: the placement map of virtual shards to nodes
//! ([`placement`]), kept in JetStream KV; each node's link to NATS
//! ([`link`]: connection, heartbeats with a TTL, the placement watched);
//! and the operator's `switchboard cluster` command ([`cli`]). Not yet:
//! requests and shard traffic routed between nodes by the map, and users
//! moved with their live state when it changes (docs/architecture.md,
//! "Cluster").

pub mod cli;
pub mod link;
pub mod placement;

/// A node's cluster settings (`SWITCHBOARD_NATS_URL` and the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `nats://HOST:PORT`.
    pub nats_url: String,
    /// This node's id, unique in the cluster ([`placement::valid_id`]).
    pub node: String,
    /// The cluster's name: its KV buckets and subjects are named after
    /// it, so several clusters may share one NATS ([`placement::valid_id`]).
    pub cluster: String,
}
