//! The bridge from `io`'s calls to shards: verifies tokens, draws sids,
//! routes each call to its user's home shard, and answers admin calls.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use switchboard_io::deadline::{self, TimedOut};
use switchboard_io::{
    AdminGate, Call, Endpoint, Handler, Limits, Outcome, Reply, ShardHealth, TraceState,
};
use switchboard_shards::model::{ErrorCode, Request, Response, Sid, StorageError, UserId};
use switchboard_shards::trace::Traced;
use switchboard_storage::token;

use crate::demo::{self, Demo};
use crate::limits;
use crate::logger::trace;
use crate::metrics::{self, JobKind, Series};
use crate::runtime::{Counter, ShardRuntime};
use crate::stop::ConnStop;

/// Counters of one shard's connection edge (accepting, token lookups),
/// beside the runtime's: written by that shard only, read by `/metrics`
/// on shard 0.
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Admin connections closed at accept: the admin listener held
    /// `ADMIN_CONNECTIONS_MAX`.
    pub refused_admin: Counter,
    /// Token lookups answered `unavailable` at once: the shard had
    /// `TOKEN_LOOKUPS_IN_FLIGHT_MAX` in flight.
    pub shed_token_lookups: Counter,
}

/// One shard's handler, shared by its connections.
pub struct ConnHandler {
    rt: Rc<ShardRuntime>,
    secret: Arc<[u8]>,
    /// Every shard's edge counters (this one's is at `rt.id`).
    edge: Arc<[EdgeStats]>,
    /// Token lookups in flight on this handler's shard (only the client
    /// handler looks tokens up), at most `TOKEN_LOOKUPS_IN_FLIGHT_MAX`.
    token_lookups: Cell<usize>,
    io: switchboard_io::Config,
    /// Demo mode's pages and token minting (`None`: demo mode is off and
    /// demo paths are 404).
    demo: Option<Arc<Demo>>,
    /// Tells connections the server stops (`None`: never, as in a handler
    /// built for a test).
    stop: Option<ConnStop>,
    /// Where per-user traces go and their bounds (`None`: admin `/trace`
    /// answers `unavailable`; only the admin listener's handler has it).
    traces: Option<Arc<trace::TraceConfig>>,
    /// Whether plain connections of this handler's listener move to their
    /// users' home shard (`CONNECTIONS_MOVE`; only the plain client
    /// listener's handler, with more than one shard).
    moves_conns: bool,
    /// `CONNECTIONS_MAX`: a connection moves only to a shard holding
    /// fewer client connections.
    conns_max: usize,
}

impl ConnHandler {
    /// A handler for one listener of the shard; `admin` is who may call
    /// the admin listener (the default gate, on the client listener).
    pub fn new(rt: Rc<ShardRuntime>, secret: Arc<[u8]>, admin: AdminGate) -> ConnHandler {
        let shards = rt.count;
        ConnHandler {
            rt,
            secret,
            edge: (0..shards).map(|_| EdgeStats::default()).collect(),
            token_lookups: Cell::new(0),
            io: switchboard_io::Config {
                admin,
                ..switchboard_io::Config::default()
            },
            demo: None,
            stop: None,
            traces: None,
            moves_conns: false,
            conns_max: 0,
        }
    }

    /// Lets this listener's plain connections move to their users' home
    /// shard (`on`), each while that shard holds fewer than `conns_max`
    /// client connections, or keeps every connection where it was
    /// accepted.
    pub fn with_conn_moves(mut self, on: bool, conns_max: usize) -> ConnHandler {
        self.moves_conns = on && self.rt.count > 1;
        self.conns_max = conns_max;
        self
    }

    /// Whether a connection may move to shard `to` now: moves are on, the
    /// server is not stopping, `to` holds fewer than `CONNECTIONS_MAX`
    /// client connections, and the outbox to it has room
    /// ([`ShardRuntime::can_move_to`]).
    pub fn may_move_to(&self, to: usize) -> bool {
        self.moves_conns
            && !Handler::stopping(self)
            && to < self.rt.count
            && self.rt.stats.all()[to].connections.get() < self.conns_max as u64
            && self.rt.can_move_to(to)
    }

    /// Whether this listener's plain connections may move.
    pub fn moves_conns(&self) -> bool {
        self.moves_conns
    }

    /// Answers admin `/trace` calls with traces under `config`.
    pub fn with_traces(mut self, config: trace::TraceConfig) -> ConnHandler {
        self.traces = Some(Arc::new(config));
        self
    }

    /// Runs connections with `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> ConnHandler {
        self.io.limits = limits;
        self
    }

    /// Answers with `Strict-Transport-Security` (`hsts`), or redirects
    /// every request to https on `https_redirect` (see
    /// [`switchboard_io::Config`]): the listeners when TLS is required.
    pub fn with_https(mut self, hsts: bool, https_redirect: Option<u16>) -> ConnHandler {
        self.io.hsts = hsts;
        self.io.https_redirect = https_redirect;
        self
    }

    /// Counts into `edge` (every shard's, this one's at its id) instead
    /// of counters of its own.
    pub fn with_edge(mut self, edge: Arc<[EdgeStats]>) -> ConnHandler {
        assert_eq!(edge.len(), self.rt.count, "one slot per shard");
        self.edge = edge;
        self
    }

    /// This shard's edge counters.
    pub fn edge(&self) -> &EdgeStats {
        &self.edge[self.rt.id]
    }

    /// Serves the demo (see [`crate::demo`]).
    pub fn with_demo(mut self, demo: Option<Arc<Demo>>) -> ConnHandler {
        self.demo = demo;
        self
    }

    /// Lets connections see the server stop (see [`crate::stop`]).
    pub fn with_stop(mut self, stop: ConnStop) -> ConnHandler {
        self.stop = Some(stop);
        self
    }

    pub fn rt(&self) -> &Rc<ShardRuntime> {
        &self.rt
    }

    pub fn io_config(&self) -> &switchboard_io::Config {
        &self.io
    }

    /// The shard's word to its connections that the server stops (`None`:
    /// never, as in a handler built for a test).
    pub fn conn_stop(&self) -> Option<&ConnStop> {
        self.stop.as_ref()
    }

    async fn connect(
        &self,
        token: String,
        tab: Option<String>,
        deferred: Option<switchboard_shards::model::Failure>,
    ) -> Response {
        let now_s = self.rt.clock.now_ms() / 1000;
        let looks_up = self.rt.store.looks_up_tokens();
        let user = match check_token(&self.secret, &token, now_s, looks_up) {
            TokenCheck::User(user) => user,
            TokenCheck::LookUp => match self.lookup_token(token).await {
                Ok(user) => user,
                Err(response) => return response,
            },
            TokenCheck::Refuse(why) => {
                return Response::fail(ErrorCode::Unauthorized, format!("bad token: {why}"));
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
        if Some(user) == self.rt.faults.stall_shard_user {
            let ms = self.rt.faults.stall_shard_ms.unwrap_or(3_600_000);
            let shard = self.rt.id;
            log::warn!(user, shard; "fault injection: a connect of user {user} blocks shard-{shard} for {ms} ms");
            std::thread::sleep(Duration::from_millis(ms));
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
        // The client gets a fixed text: the storage error (a MySQL
        // server's message, say) is for the log, not the internet. The
        // token is in neither.
        let unavailable = |e: &dyn std::fmt::Display| {
            log::warn!("token lookup failed: {e}");
            Response::fail(ErrorCode::Unavailable, LOOKUP_UNAVAILABLE)
        };
        let Some(_slot) = LookupSlot::take(&self.token_lookups) else {
            self.edge().shed_token_lookups.add(1);
            return Err(Response::fail(
                ErrorCode::Unavailable,
                "token lookup: too many in flight: try again",
            ));
        };
        let submitted = Instant::now();
        let due = submitted + self.rt.storage_timeout;
        let pending = self
            .rt
            .store
            .lookup_token(token, due)
            .map_err(|e| unavailable(&e))?;
        let late = glommio::timer::sleep(self.rt.storage_patience());
        let answer = deadline::within(late, pending)
            .await
            .unwrap_or(Err(StorageError::TimedOut));
        let took = submitted.elapsed();
        self.rt.record(Series::Job(JobKind::LookupToken), took);
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
                            polls,
                        }) => ShardHealth::Up {
                            shard,
                            sessions,
                            tabs,
                            polls,
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

    /// Admin `POST /trace`: the `log` thread starts (`debug`) or stops
    /// `user`'s trace, then every shard takes the new set of traced users
    /// ([`ConnHandler::share_traced`]); answered once every shard has. A
    /// start that not every shard took is undone: a new trace ends, a
    /// restarted one gets its bounds back.
    async fn trace(&self, user: UserId, debug: bool) -> Reply {
        let Some(config) = &self.traces else {
            return unavailable("per-user traces are not served here".into());
        };
        let asked = if debug {
            trace::start(user, (**config).clone())
        } else {
            trace::stop(user, config.data_dir.clone())
        };
        let changed = match asked {
            Ok(answer) => log_thread(answer).await,
            Err(e) => Err(e),
        };
        let changed = match changed {
            Ok(changed) => changed,
            Err(e) => return trace_failed(e),
        };
        let traced = changed.snapshot.users.len();
        if let Err(shard) = self.share_traced(&changed.snapshot).await {
            let wait = limits::TRACE_ACK_TIMEOUT_MS;
            if let Some(started) = changed.started {
                // Undo, as far as the log thread takes it (the registry
                // decides what is recorded): a new trace ends, a restarted
                // one keeps its old bounds.
                let undone = match trace::undo(user, started, config.data_dir.clone()) {
                    Ok(answer) => log_thread(answer).await,
                    Err(e) => Err(e),
                };
                let what = match started {
                    trace::Started::New => "not started",
                    trace::Started::Restarted(_) => {
                        "not started again (the running trace keeps its bounds)"
                    }
                };
                return match undone {
                    Ok(undone) => {
                        let _ = self.share_traced(&undone.snapshot).await;
                        unavailable(format!(
                            "shard-{shard} did not take the trace within {wait} ms: {what}, try \
                             again"
                        ))
                    }
                    Err(e) => unavailable(format!(
                        "shard-{shard} did not take the trace within {wait} ms, and undoing the \
                         start failed ({e}): see GET /trace"
                    )),
                };
            }
            return unavailable(format!(
                "the trace is stopped (nothing more is recorded), but shard-{shard} did not \
                 acknowledge within {wait} ms"
            ));
        }
        log::info!(
            user;
            "trace of user {user} {} by the admin call ({traced} users traced)",
            if debug { "started" } else { "stopped" }
        );
        Reply::Trace(trace_state(&changed.status, traced))
    }

    /// Gives every shard the traced set `snapshot` (this shard's clock
    /// turns each trace's time left into a deadline), all at once, each
    /// within `TRACE_ACK_TIMEOUT_MS`. `Err(shard)`: one that did not take
    /// it.
    async fn share_traced(&self, snapshot: &trace::Snapshot) -> Result<(), usize> {
        let now = self.rt.clock.now_ms();
        let users = snapshot
            .users
            .iter()
            .map(|&(user, left)| (user, now + left.as_millis() as u64))
            .collect();
        let traced = Traced::new(snapshot.generation, users);
        let timeout = Duration::from_millis(limits::TRACE_ACK_TIMEOUT_MS);
        let tasks: Vec<_> = (0..self.rt.count)
            .map(|shard| {
                let rt = self.rt.clone();
                let traced = traced.clone();
                glommio::spawn_local(async move {
                    let ask = rt.call_on(shard, Request::Trace { traced });
                    let answer = deadline::within(glommio::timer::sleep(timeout), ask).await;
                    matches!(answer, Ok(Response::Done))
                })
            })
            .collect();
        let mut first_failed = None;
        for (shard, task) in tasks.into_iter().enumerate() {
            if !task.await && first_failed.is_none() {
                first_failed = Some(shard);
            }
        }
        first_failed.map_or(Ok(()), Err)
    }

    /// Admin `GET /trace`: the newest lines of `user`'s trace file, read
    /// by the `log` thread.
    async fn trace_read(&self, user: UserId) -> Reply {
        let Some(config) = &self.traces else {
            return unavailable("per-user traces are not served here".into());
        };
        let lines = match trace::read(user, config.data_dir.clone()) {
            Ok(answer) => log_thread(answer).await,
            Err(e) => Err(e),
        };
        match lines {
            Ok(lines) => Reply::TraceLines {
                state: trace_state(&lines.status, trace::count()),
                lines: lines.text,
                count: lines.count,
            },
            Err(e) => trace_failed(e),
        }
    }

    async fn roster_changed(&self, user: u64) -> Response {
        let submitted = Instant::now();
        let due = submitted + self.rt.storage_timeout;
        let reload = match self.rt.store.reload_directory(due) {
            Ok(p) => p,
            Err(e) => {
                return Response::fail(ErrorCode::Unavailable, format!("directory reload: {e}"))
            }
        };
        let late = glommio::timer::sleep(self.rt.storage_patience());
        let reloaded = deadline::within(late, reload).await;
        let took = submitted.elapsed();
        self.rt.record(Series::Job(JobKind::ReloadDirectory), took);
        let failed = match reloaded {
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

/// `unavailable` with `message`.
fn unavailable(message: String) -> Reply {
    Reply::Shard(Response::fail(ErrorCode::Unavailable, message))
}

/// A `/trace` call that failed: `not_found` for a user with no trace
/// file, `unavailable` for the rest (too many traced, the file system,
/// the `log` thread busy).
fn trace_failed(e: trace::TraceError) -> Reply {
    let code = match e {
        trace::TraceError::NotFound(_) => ErrorCode::NotFound,
        _ => ErrorCode::Unavailable,
    };
    Reply::Shard(Response::fail(code, e.to_string()))
}

/// What `/trace` says about a trace.
fn trace_state(status: &trace::Status, traced: usize) -> TraceState {
    TraceState {
        user: status.user,
        on: status.on,
        file: status.path.display().to_string(),
        bytes: status.bytes,
        bytes_max: status.bytes_max,
        ends_in_ms: status.ends_in.map(|d| d.as_millis() as u64),
        traced,
    }
}

/// Waits for the `log` thread's answer, at most `TRACE_CONTROL_WAIT_MS`
/// (it may be stuck writing a stderr nobody reads).
async fn log_thread<T>(
    answer: oneshot::Receiver<Result<T, trace::TraceError>>,
) -> Result<T, trace::TraceError> {
    let wait = glommio::timer::sleep(Duration::from_millis(limits::TRACE_CONTROL_WAIT_MS));
    match deadline::within(wait, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(oneshot::Canceled)) | Err(TimedOut) => Err(trace::TraceError::Busy),
    }
}

/// What a client is told when its token could not be looked up (the
/// cause is logged, never sent).
const LOOKUP_UNAVAILABLE: &str = "token lookup unavailable: try again";

/// One token lookup's place among a shard's `TOKEN_LOOKUPS_IN_FLIGHT_MAX`,
/// given back when dropped (answered, timed out, or the caller gone).
struct LookupSlot<'a>(&'a Cell<usize>);

impl<'a> LookupSlot<'a> {
    /// A place, unless `in_flight` already holds the bound.
    fn take(in_flight: &'a Cell<usize>) -> Option<LookupSlot<'a>> {
        if in_flight.get() >= limits::TOKEN_LOOKUPS_IN_FLIGHT_MAX {
            return None;
        }
        in_flight.set(in_flight.get() + 1);
        Some(LookupSlot(in_flight))
    }
}

impl Drop for LookupSlot<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// What a `/connect` token leads to, before any storage job.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenCheck {
    /// A genuine, unexpired HMAC token of this user.
    User(UserId),
    /// Not in the HMAC form, but of the shape the directory's token query
    /// may know: look it up (a storage job).
    LookUp,
    /// `unauthorized`, for this reason.
    Refuse(String),
}

/// Decides a token without storage: HMAC tokens are verified here; with a
/// token query (`looks_up`), a token not in the HMAC form is looked up
/// only if [`lookup_shape_ok`]; everything else is refused.
fn check_token(secret: &[u8], token: &str, now_s: u64, looks_up: bool) -> TokenCheck {
    match token::verify(secret, token, now_s) {
        Ok(user) => TokenCheck::User(user),
        Err(token::TokenError::Malformed) if looks_up && lookup_shape_ok(token) => {
            TokenCheck::LookUp
        }
        Err(e) => TokenCheck::Refuse(e.to_string()),
    }
}

/// Whether `token` has the shape of a token the directory may hold:
/// `TOKEN_LOOKUP_CHARS_MIN..=TOKEN_LOOKUP_CHARS_MAX` characters of
/// `[A-Za-z0-9._~+/=-]` (see `limits`).
fn lookup_shape_ok(token: &str) -> bool {
    (limits::TOKEN_LOOKUP_CHARS_MIN..=limits::TOKEN_LOOKUP_CHARS_MAX).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~+/=-".contains(&b))
}

impl Handler for ConnHandler {
    fn home_elsewhere(&self, user: UserId) -> Option<usize> {
        let home = self.rt.home(user);
        (home != self.rt.id).then_some(home)
    }

    async fn call(&self, call: Call) -> Reply {
        // Never `{call:?}`: it holds tokens, message text and UI state.
        // The admin's own `/trace` calls name a user but are not theirs:
        // they stay out of the user's trace. A sid's user is only claimed
        // until its home shard checks the secret: `sid_user=`, which no
        // trace takes (the runtime's outcome line says `user=` once the
        // home shard accepted the sid).
        let (name, user) = call.describe();
        let user = user.filter(|_| !matches!(call, Call::Trace { .. } | Call::TraceRead { .. }));
        let claimed = matches!(&call, Call::Shard(request) if request.user_is_claimed());
        let shard = self.rt.id;
        match user {
            Some(sid_user) if claimed => {
                log::debug!(sid_user, shard; "call {name} on conn shard-{shard}")
            }
            Some(user) => log::debug!(user, shard; "call {name} on conn shard-{shard}"),
            None => log::debug!(shard; "call {name} on conn shard-{shard}"),
        }
        // A stopping shard waits longer for a connection with a call in
        // flight (stop.rs), so its answer is written.
        let _in_flight = self.stop.as_ref().map(ConnStop::call_started);
        // Every call but the shard calls is boxed: this future's size is
        // that of its largest branch, and a held poll (a shard call) keeps
        // it for up to a minute on every polling connection.
        match call {
            Call::Connect {
                token,
                tab,
                deferred,
            } => Reply::Shard(Box::pin(self.connect(token, tab, deferred)).await),
            Call::Shard(request) => Reply::Shard(self.rt.call(request).await),
            Call::Health => Reply::Health {
                shards: Box::pin(self.shard_health()).await,
                timeout_ms: limits::HEALTH_TIMEOUT_MS,
            },
            Call::Metrics => Reply::Metrics {
                shards: Box::pin(self.shard_health()).await,
                families: metrics::families(&self.rt, &self.edge),
            },
            Call::RosterChanged { user } => Reply::Shard(Box::pin(self.roster_changed(user)).await),
            Call::Kick { user } => {
                Reply::Shard(Box::pin(self.rt.call(Request::Kick { user })).await)
            }
            Call::Demo { path, user } => match &self.demo {
                Some(d) => d.answer(&path, user, &self.secret, self.rt.clock.now_ms() / 1000),
                None => demo::not_found(),
            },
            Call::Trace { user, debug } => Box::pin(self.trace(user, debug)).await,
            Call::TraceRead { user } => Box::pin(self.trace_read(user)).await,
        }
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }

    fn answered(&self, endpoint: Endpoint, outcome: Outcome, took: Option<Duration>) {
        self.rt.answered(endpoint, outcome, took);
    }

    async fn stopped(&self) {
        match &self.stop {
            Some(stop) => stop.fired().await,
            None => std::future::pending().await,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(ConnStop::stopping)
    }

    async fn yield_if_needed(&self) {
        glommio::yield_if_needed().await;
    }

    async fn drain_over(&self) {
        match &self.stop {
            Some(stop) => stop.drain_over().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"handler-test-secret";
    const NOW_S: u64 = 1_700_000_000;

    #[test]
    fn token_lookups_in_flight_are_bounded_and_given_back() {
        let in_flight = Cell::new(0);
        let max = limits::TOKEN_LOOKUPS_IN_FLIGHT_MAX;
        let slots: Vec<_> = (0..max)
            .map(|i| LookupSlot::take(&in_flight).unwrap_or_else(|| panic!("slot {i}")))
            .collect();
        assert!(LookupSlot::take(&in_flight).is_none(), "one over the bound");
        drop(slots);
        assert_eq!(in_flight.get(), 0);
        assert!(LookupSlot::take(&in_flight).is_some());
    }

    /// Checks `token` with and without a token query against the expected
    /// outcome with one (`LookUp`, `User`, or `Refuse`); without a token
    /// query nothing is ever looked up.
    fn check(token: &str, with_query: TokenCheck) {
        let got = check_token(SECRET, token, NOW_S, true);
        assert_eq!(got, with_query, "{token:?}");
        let without = check_token(SECRET, token, NOW_S, false);
        assert_ne!(without, TokenCheck::LookUp, "{token:?}");
    }

    fn refused() -> TokenCheck {
        TokenCheck::Refuse("malformed token".into())
    }

    #[test]
    fn only_well_formed_tokens_are_looked_up() {
        let min = "a".repeat(limits::TOKEN_LOOKUP_CHARS_MIN);
        let max = "Z9".repeat(limits::TOKEN_LOOKUP_CHARS_MAX / 2);
        let hmac = token::mint(SECRET, 42, NOW_S + 60);
        let table: &[(&str, TokenCheck)] = &[
            // HMAC tokens never reach storage.
            (&hmac, TokenCheck::User(42)),
            // Web app session tokens: hex, base64, base64url, dotted.
            ("0123456789abcdef0123456789abcdef", TokenCheck::LookUp),
            ("dGhpcyBpcyBhIHRva2Vu+/==", TokenCheck::LookUp),
            ("dGhpcyBpcyBhIHRva2Vu-_~", TokenCheck::LookUp),
            ("eyJhbGciOi.eyJzdWIiOi.SflKxwRJSM", TokenCheck::LookUp),
            // Exactly at the length bounds, and one outside each.
            (&min, TokenCheck::LookUp),
            (&min[1..], refused()),
            (&max, TokenCheck::LookUp),
            (&format!("{max}a"), refused()),
            // Characters outside the set.
            ("0123456789abcdef 0123", refused()),
            ("0123456789abcdef%20123", refused()),
            ("0123456789abcdef'--", refused()),
            ("0123456789abcdef\u{0}", refused()),
            ("0123456789abcdéf0123", refused()),
            ("", refused()),
        ];
        for (token, want) in table {
            check(token, want.clone());
        }
    }

    #[test]
    fn hmac_form_failures_are_refused_without_a_lookup() {
        let expired = token::mint(SECRET, 42, NOW_S);
        let other = token::mint(b"another-secret", 42, NOW_S + 60);
        check(&expired, TokenCheck::Refuse("token expired".into()));
        check(
            &other,
            TokenCheck::Refuse("token signature does not match".into()),
        );
    }
}
