//! The bridge from `io`'s calls to shards: verifies tokens, draws sids,
//! routes each call to its user's home shard, and answers admin calls.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_io::deadline::{self, TimedOut};
use switchboard_io::{Call, Handler, Reply, ShardCounter, ShardHealth};
use switchboard_shards::model::{ErrorCode, Request, Response, Sid, StorageError};
use switchboard_storage::token;

use crate::demo::{self, Demo};
use crate::limits;
use crate::runtime::{RuntimeStats, ShardRuntime};

/// One shard's handler, shared by its connections.
pub struct ConnHandler {
    rt: Rc<ShardRuntime>,
    secret: Arc<[u8]>,
    io: switchboard_io::Config,
    /// Demo mode's pages and token minting (`None`: demo mode is off and
    /// demo paths are 404).
    demo: Option<Arc<Demo>>,
}

impl ConnHandler {
    pub fn new(
        rt: Rc<ShardRuntime>,
        secret: Arc<[u8]>,
        admin_token: Option<String>,
    ) -> ConnHandler {
        ConnHandler {
            rt,
            secret,
            io: switchboard_io::Config {
                admin_token,
                ..switchboard_io::Config::default()
            },
            demo: None,
        }
    }

    /// Serves the demo (see [`crate::demo`]).
    pub fn with_demo(mut self, demo: Option<Arc<Demo>>) -> ConnHandler {
        self.demo = demo;
        self
    }

    pub fn rt(&self) -> &Rc<ShardRuntime> {
        &self.rt
    }

    pub fn io_config(&self) -> &switchboard_io::Config {
        &self.io
    }

    async fn connect(
        &self,
        token: String,
        tab: Option<String>,
        deferred: Option<switchboard_shards::model::Failure>,
    ) -> Response {
        let now_s = self.rt.clock.now_ms() / 1000;
        let user = match token::verify(&self.secret, &token, now_s) {
            Ok(user) => user,
            Err(token::TokenError::Malformed) if self.rt.store.looks_up_tokens() => {
                match self.lookup_token(token).await {
                    Ok(user) => user,
                    Err(response) => return response,
                }
            }
            Err(e) => {
                return Response::fail(ErrorCode::Unauthorized, format!("bad token: {e}"));
            }
        };
        if let Some(f) = deferred {
            return Response::Failed(f);
        }
        if Some(user) == self.rt.faults.panic_outside_user {
            panic!(
                "fault injection: a connect of user {user} panics outside the supervised region"
            );
        }
        let mut bytes = [0u8; 16];
        if getrandom::getrandom(&mut bytes).is_err() {
            return Response::fail(ErrorCode::Unavailable, "no randomness for a session id");
        }
        let sid = Sid {
            user,
            secret: u128::from_le_bytes(bytes),
        };
        self.rt.call(Request::Connect { user, tab, sid }).await
    }

    /// A token that is not an HMAC token, looked up by the directory's
    /// token query (a storage job: it runs on a db thread, bounded by the
    /// storage timeout like every job).
    async fn lookup_token(&self, token: String) -> Result<u64, Response> {
        let due = Instant::now() + self.rt.storage_timeout;
        let unavailable = |e: &dyn std::fmt::Display| {
            Response::fail(ErrorCode::Unavailable, format!("token lookup: {e}"))
        };
        let pending = self
            .rt
            .store
            .lookup_token(token, due)
            .map_err(|e| unavailable(&e))?;
        let late = glommio::timer::sleep(self.rt.storage_patience());
        let answer = deadline::within(late, pending)
            .await
            .unwrap_or(Err(StorageError::TimedOut));
        match answer {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(Response::fail(
                ErrorCode::Unauthorized,
                "bad token: unknown token",
            )),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Asks every shard for its health, all at once, each within
    /// `HEALTH_TIMEOUT_MS`.
    async fn shard_health(&self) -> Vec<ShardHealth> {
        let timeout = Duration::from_millis(limits::HEALTH_TIMEOUT_MS);
        let tasks: Vec<_> = (0..self.rt.count)
            .map(|shard| {
                let rt = self.rt.clone();
                glommio::spawn_local(async move {
                    let ask = rt.call_on(shard, Request::Health);
                    match deadline::within(glommio::timer::sleep(timeout), ask).await {
                        Ok(Response::Health {
                            shard,
                            sessions,
                            tabs,
                        }) => ShardHealth::Up {
                            shard,
                            sessions,
                            tabs,
                        },
                        Ok(_) => ShardHealth::Refused { shard },
                        Err(TimedOut) => ShardHealth::Silent { shard },
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await);
        }
        out
    }

    /// Every shard's runtime counters, each name's shards together.
    fn counters(&self) -> Vec<ShardCounter> {
        let all = self.rt.stats.all();
        let mut out = Vec::with_capacity(COUNTERS.len() * all.len());
        for spec in &COUNTERS {
            for (shard, stats) in all.iter().enumerate() {
                out.push(ShardCounter {
                    name: spec.name,
                    help: spec.help,
                    shard,
                    value: (spec.value)(stats),
                });
            }
        }
        out
    }

    async fn roster_changed(&self, user: u64) -> Response {
        let due = Instant::now() + self.rt.storage_timeout;
        let reload = match self.rt.store.reload_directory(due) {
            Ok(p) => p,
            Err(e) => {
                return Response::fail(ErrorCode::Unavailable, format!("directory reload: {e}"))
            }
        };
        let late = glommio::timer::sleep(self.rt.storage_patience());
        let failed = match deadline::within(late, reload).await {
            Ok(Ok(_)) => None,
            Ok(Err(reload_error)) => Some(reload_error.to_string()),
            Err(TimedOut) => Some(TimedOut.to_string()),
        };
        if let Some(e) = failed {
            return Response::fail(
                ErrorCode::Unavailable,
                format!("directory reload failed: {e}"),
            );
        }
        self.rt.call(Request::RosterChanged { user }).await
    }
}

impl Handler for ConnHandler {
    async fn call(&self, call: Call) -> Reply {
        log::debug!("shard-{}: call {call:?}", self.rt.id);
        match call {
            Call::Connect {
                token,
                tab,
                deferred,
            } => Reply::Shard(self.connect(token, tab, deferred).await),
            Call::Shard(request) => Reply::Shard(self.rt.call(request).await),
            Call::Health => Reply::Health {
                shards: self.shard_health().await,
                timeout_ms: limits::HEALTH_TIMEOUT_MS,
            },
            Call::Metrics => Reply::Metrics {
                shards: self.shard_health().await,
                counters: self.counters(),
            },
            Call::RosterChanged { user } => Reply::Shard(self.roster_changed(user).await),
            Call::Kick { user } => Reply::Shard(self.rt.call(Request::Kick { user }).await),
            Call::Demo { path, user } => match &self.demo {
                Some(d) => d.answer(&path, user, &self.secret, self.rt.clock.now_ms() / 1000),
                None => demo::not_found(),
            },
            Call::Trace { .. } => Reply::NotBuilt {
                message: "per-user traces are not built yet",
            },
        }
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

/// A runtime counter as `/metrics` shows it.
struct CounterSpec {
    /// The metric's name.
    name: &'static str,
    /// Its `# HELP` text.
    help: &'static str,
    /// Its value in one shard's stats.
    value: fn(&RuntimeStats) -> u64,
}

/// The runtime counters on `/metrics`, in the order shown.
const COUNTERS: [CounterSpec; 8] = [
    CounterSpec {
        name: "switchboard_panics_total",
        help: "Panics caught while a shard handled an input (each cost its user's session).",
        value: |s| s.panics.get(),
    },
    CounterSpec {
        name: "switchboard_call_timeouts_total",
        help: "Calls answered unavailable because the home shard did not answer by the deadline.",
        value: |s| s.call_timeouts.get(),
    },
    CounterSpec {
        name: "switchboard_shed_requests_total",
        help: "Requests answered unavailable at once: too many in flight to their home shard.",
        value: |s| s.shed_requests.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_replies_total",
        help: "Replies dropped on a full outbox.",
        value: |s| s.dropped_replies.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_deliveries_total",
        help: "Deliveries dropped on a full outbox.",
        value: |s| s.dropped_deliveries.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_presence_total",
        help: "Presence messages dropped on a full outbox (repaired by the presence digest).",
        value: |s| s.dropped_presence.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_roster_total",
        help: "Roster messages dropped on a full outbox.",
        value: |s| s.dropped_roster.get(),
    },
    CounterSpec {
        name: "switchboard_storage_timeouts_total",
        help: "Storage jobs that timed out.",
        value: |s| s.storage_timeouts.get(),
    },
];
