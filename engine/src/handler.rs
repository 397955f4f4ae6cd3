//! The bridge from `io`'s calls to shards: verifies tokens, draws sids,
//! routes each call to its user's home shard, and answers admin calls.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_io::{Call, Handler, Reply};
use switchboard_shards::model::{ErrorCode, Request, Response, Sid};
use switchboard_storage::token;

use crate::demo::{self, Demo};
use crate::limits;
use crate::runtime::ShardRuntime;

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
        let deadline = Instant::now() + self.rt.storage_timeout;
        let unavailable = |e: &dyn std::fmt::Display| {
            Response::fail(ErrorCode::Unavailable, format!("token lookup: {e}"))
        };
        let pending = self
            .rt
            .store
            .lookup_token(token, deadline)
            .map_err(|e| unavailable(&e))?;
        let late = async {
            glommio::timer::sleep(self.rt.storage_timeout).await;
            Err(switchboard_shards::model::StorageError::TimedOut)
        };
        match futures_lite::future::or(pending, late).await {
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
    async fn shard_health(&self) -> Vec<Option<Response>> {
        let deadline = Duration::from_millis(limits::HEALTH_TIMEOUT_MS);
        let tasks: Vec<_> = (0..self.rt.count)
            .map(|shard| {
                let rt = self.rt.clone();
                glommio::spawn_local(async move {
                    let ask = async { Some(rt.call_on(shard, Request::Health).await) };
                    let late = async {
                        glommio::timer::sleep(deadline).await;
                        None
                    };
                    futures_lite::future::or(ask, late).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    }

    async fn health(&self) -> Reply {
        let answers = self.shard_health().await;
        let mut all_ok = true;
        let mut body = String::from("{\"ok\":");
        let mut shards = String::new();
        for (i, a) in answers.iter().enumerate() {
            if i > 0 {
                shards.push(',');
            }
            match a {
                Some(Response::Health {
                    shard,
                    sessions,
                    tabs,
                }) => {
                    let _ = write!(
                        shards,
                        "{{\"shard\":{shard},\"ok\":true,\"sessions\":{sessions},\"tabs\":{tabs}}}"
                    );
                }
                _ => {
                    all_ok = false;
                    let _ = write!(shards, "{{\"shard\":{i},\"ok\":false}}");
                }
            }
        }
        let _ = write!(body, "{all_ok},\"shards\":[{shards}]}}");
        if !all_ok {
            // Keep the failure shape of the protocol, with the detail.
            body = format!(
                "{{\"ok\":false,\"error\":{{\"code\":\"unavailable\",\"message\":\"a shard did not answer within {} ms\"}},\"shards\":[{shards}]}}",
                limits::HEALTH_TIMEOUT_MS
            );
        }
        Reply::Json {
            status: if all_ok { 200 } else { 503 },
            body,
        }
    }

    async fn metrics(&self) -> Reply {
        let answers = self.shard_health().await;
        let mut text = String::new();
        text.push_str("# HELP switchboard_sessions Sessions owned by each shard.\n# TYPE switchboard_sessions gauge\n");
        for a in &answers {
            if let Some(Response::Health {
                shard, sessions, ..
            }) = a
            {
                let _ = writeln!(text, "switchboard_sessions{{shard=\"{shard}\"}} {sessions}");
            }
        }
        text.push_str(
            "# HELP switchboard_tabs Tabs attached on each shard.\n# TYPE switchboard_tabs gauge\n",
        );
        for a in &answers {
            if let Some(Response::Health { shard, tabs, .. }) = a {
                let _ = writeln!(text, "switchboard_tabs{{shard=\"{shard}\"}} {tabs}");
            }
        }
        text.push_str("# HELP switchboard_shard_up Whether the shard answered within the health timeout.\n# TYPE switchboard_shard_up gauge\n");
        for (i, a) in answers.iter().enumerate() {
            let _ = writeln!(
                text,
                "switchboard_shard_up{{shard=\"{i}\"}} {}",
                u8::from(a.is_some())
            );
        }
        Reply::Raw {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: text.into_bytes(),
        }
    }

    async fn roster_changed(&self, user: u64) -> Response {
        let deadline = Instant::now() + self.rt.storage_timeout;
        let reload = match self.rt.store.reload_directory(deadline) {
            Ok(p) => p,
            Err(e) => {
                return Response::fail(ErrorCode::Unavailable, format!("directory reload: {e}"))
            }
        };
        let late = async {
            glommio::timer::sleep(self.rt.storage_timeout).await;
            Err("timed out".to_string())
        };
        let reloaded =
            futures_lite::future::or(async { reload.await.map_err(|e| e.to_string()) }, late).await;
        if let Err(e) = reloaded {
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
            Call::Connect { token, tab, deferred } => Reply::Shard(self.connect(token, tab, deferred).await),
            Call::Shard(request) => Reply::Shard(self.rt.call(request).await),
            Call::Health => self.health().await,
            Call::Metrics => self.metrics().await,
            Call::RosterChanged { user } => Reply::Shard(self.roster_changed(user).await),
            Call::Kick { user } => Reply::Shard(self.rt.call(Request::Kick { user }).await),
            Call::Demo { path, user } => match &self.demo {
                Some(d) => d.answer(&path, user, &self.secret, self.rt.clock.now_ms() / 1000),
                None => demo::not_found(),
            },
            Call::Trace { .. } => Reply::Json {
                status: 501,
                body: "{\"ok\":false,\"error\":{\"code\":\"not_found\",\"message\":\"per-user traces are not built yet\"}}".into(),
            },
        }
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}
