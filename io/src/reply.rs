//! What a [`Handler`](crate::Handler) answers: typed values only. The
//! handler never picks an HTTP status or writes JSON; [`crate::response`]
//! turns every variant into its status, content type and body, in one
//! place ([`crate::response::status_of_reply`]).

use switchboard_shards::model::{Response, ShardId, UserId};

use crate::metrics::Family;

/// What the handler answers.
/// (`PartialEq` only: metrics carry floats.)
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A protocol response (a shard's answer, or a failure the handler
    /// decided on, such as a bad token), encoded per the protocol: JSON
    /// with the status of its error code, or JSONP.
    Shard(Response),
    /// Admin `/health`: every shard's answer, in shard order. All up: 200;
    /// else 503 `unavailable`, naming `timeout_ms`.
    Health {
        /// One entry per shard.
        shards: Vec<ShardHealth>,
        /// How long each shard was given to answer (for the message).
        timeout_ms: u64,
    },
    /// Admin `/metrics`: the Prometheus text of the shards' answers (their
    /// sessions, tabs, held polls and whether they answered), then the
    /// engine's metric families, 200.
    Metrics {
        /// One entry per shard.
        shards: Vec<ShardHealth>,
        /// Every other metric, in the order written.
        families: Vec<Family>,
    },
    /// Admin `POST /trace`: where the user's trace stands after the
    /// call, 200 JSON.
    Trace(TraceState),
    /// Admin `GET /trace`: the newest lines of the user's trace file, 200
    /// `text/plain`, after a few `#` lines saying where the trace stands
    /// and where its file is.
    TraceLines {
        /// Where the trace stands.
        state: TraceState,
        /// The newest lines, each ending in a newline.
        lines: String,
        /// How many lines `lines` holds.
        count: usize,
    },
    /// A file for browsers (a demo page): 200 with its content type, never
    /// JSONP, with `X-Content-Type-Options: nosniff`.
    File {
        /// The `Content-Type`.
        content_type: &'static str,
        /// The file's bytes (embedded in the binary).
        body: &'static [u8],
    },
    /// `/demo/users`: the users the demo's sign-in picker offers, 200.
    DemoUsers(Vec<DemoUser>),
    /// `/demo/login`: a token minted for `user`, 200.
    DemoToken {
        /// The login token.
        token: String,
        /// Who it is for.
        user: UserId,
        /// Their display name.
        name: String,
    },
    /// A JSON object the handler built itself, sent as it is with 200
    /// (JSONP: wrapped). For handlers other than the server's (tests,
    /// tools): the engine's answers are all typed above.
    Json {
        /// The JSON object.
        body: String,
    },
}

/// Where one user's per-user trace stands (admin `/trace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceState {
    /// The user traced.
    pub user: UserId,
    /// Whether their records are being written to the file now.
    pub on: bool,
    /// The trace file's path.
    pub file: String,
    /// Bytes in the file.
    pub bytes: u64,
    /// The size bound that ends it (on only).
    pub bytes_max: u64,
    /// Milliseconds until the time bound ends it (on only).
    pub ends_in_ms: Option<u64>,
    /// How many users are traced now.
    pub traced: usize,
}

/// One shard's answer to a health ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardHealth {
    /// It answered in time with its counts.
    Up {
        /// The shard that answered.
        shard: ShardId,
        /// Sessions it owns.
        sessions: u64,
        /// Tabs attached to them.
        tabs: u64,
        /// Polls held open on it (one per polling tab).
        polls: u64,
    },
    /// It answered in time, but not with its counts (the ask was shed:
    /// the outbox to it was full). Not healthy; it did answer.
    Refused {
        /// The shard asked.
        shard: ShardId,
    },
    /// It did not answer in time.
    Silent {
        /// The shard asked.
        shard: ShardId,
    },
}

impl ShardHealth {
    /// The shard this is about.
    pub fn shard(&self) -> ShardId {
        match *self {
            ShardHealth::Up { shard, .. }
            | ShardHealth::Refused { shard }
            | ShardHealth::Silent { shard } => shard,
        }
    }
}

/// A user the demo's sign-in picker offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoUser {
    /// The user's id.
    pub id: UserId,
    /// Their display name.
    pub name: String,
    /// Their friends' ids.
    pub friends: Vec<UserId>,
}
