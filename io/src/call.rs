//! Decoding a request into a [`Call`]: routing by listener, path and method,
//! admin bearer auth, the JSONP `callback`, and the typed parameters of each
//! endpoint (docs/protocol.md: "Transport and envelope", the client calls,
//! "Admin listener").
//!
//! The protocol fixes the order of checks, the first failure answering:
//! HTTP-level (404, 405), the callback name, the sid or token, sizes, then
//! content. On the admin listener the [`AdminGate`] comes before routing:
//! first who is asking (a browser, or a `Host` that is not the listener's
//! own: 403), then the bearer token (401).
//! A sid that parses hands every later failure to the home shard as
//! `Request::Rejected`, so an unknown sid wins over a bad parameter; a
//! connect with a token defers its other failures to after the token check.

use switchboard_shards::model::{
    ErrorCode, Failure, Request, Response, Sid, Status, TypingState, UserId,
};

use std::net::{IpAddr, SocketAddr};

use crate::client::{self, ClientFile};
use crate::head::{HttpError, Method};
use crate::limits::{
    CALLBACK_BYTES_MAX, CID_CHARS_MAX, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, TAB_CHARS_MAX,
    TEXT_CHARS_MAX, UI_STATE_BYTES_MAX, WAIT_S_DEFAULT, WAIT_S_MAX,
};
use crate::query::{ParamError, Params};
use crate::{Call, Listener};

/// How an answer is enveloped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain JSON, the status tells the outcome.
    Json,
    /// JSONP with this (validated) callback name: status 200 always.
    Jsonp(String),
}

/// What to do with a decoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An HTTP-level failure (404, 405, an invalid callback): its own
    /// status and a plain JSON body, never JSONP. The connection stays open.
    Reject(HttpError),
    /// `io` answers by itself, without the handler (`/ping`, and failures
    /// found before a call can be formed), in the request's mode.
    Answer { mode: Mode, response: Response },
    /// Hand the call to the handler and encode its reply in `mode`.
    Call { mode: Mode, call: Call },
    /// `io` answers with this client file by itself (`GET /client/...`,
    /// see [`crate::client`]): `200` with the file, or `304` when the
    /// request's `If-None-Match` names its tag.
    File(&'static ClientFile),
}

/// The client listener's parameter names (all others are ignored).
const CLIENT_PARAMS: &[&str] = &[
    "callback", "token", "tab", "sid", "since", "wait", "to", "text", "cid", "state", "status",
    "with", "upto", "before", "limit", "user",
];

/// The admin listener's parameter names (all others are ignored).
const ADMIN_PARAMS: &[&str] = &["user", "level"];

/// The parameter names a listener knows, for [`Params::add_form`].
pub fn known_params(listener: Listener) -> &'static [&'static str] {
    match listener {
        Listener::Client => CLIENT_PARAMS,
        Listener::Admin => ADMIN_PARAMS,
    }
}

/// Every endpoint of both listeners, and two names for the rest (for
/// metrics: [`endpoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Connect,
    Poll,
    Send,
    Typing,
    Presence,
    Ui,
    Read,
    History,
    Leave,
    Ping,
    Health,
    Metrics,
    RosterChanged,
    Kick,
    Trace,
    /// The demo's pages and `/demo/login` (client listener).
    Demo,
    /// The client files under `/client/` (client listener).
    Client,
    /// No such path (404), or a request that could not be read far
    /// enough to know its path.
    Other,
}

impl Endpoint {
    /// Every endpoint, in [`Endpoint::index`] order.
    pub const ALL: [Endpoint; 18] = [
        Endpoint::Connect,
        Endpoint::Poll,
        Endpoint::Send,
        Endpoint::Typing,
        Endpoint::Presence,
        Endpoint::Ui,
        Endpoint::Read,
        Endpoint::History,
        Endpoint::Leave,
        Endpoint::Ping,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::RosterChanged,
        Endpoint::Kick,
        Endpoint::Trace,
        Endpoint::Demo,
        Endpoint::Client,
        Endpoint::Other,
    ];

    /// Its place in [`Endpoint::ALL`] (for arrays of counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name in metrics: the path without `/`, `_` for `-`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Connect => "connect",
            Endpoint::Poll => "poll",
            Endpoint::Send => "send",
            Endpoint::Typing => "typing",
            Endpoint::Presence => "presence",
            Endpoint::Ui => "ui",
            Endpoint::Read => "read",
            Endpoint::History => "history",
            Endpoint::Leave => "leave",
            Endpoint::Ping => "ping",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
            Endpoint::RosterChanged => "roster_changed",
            Endpoint::Kick => "kick",
            Endpoint::Trace => "trace",
            Endpoint::Demo => "demo",
            Endpoint::Client => "client",
            Endpoint::Other => "other",
        }
    }
}

/// The endpoint a request for `path` on `listener` is counted under:
/// its own, [`Endpoint::Demo`] for the demo's paths, [`Endpoint::Client`]
/// for the client files, or [`Endpoint::Other`].
pub fn endpoint(listener: Listener, path: &str) -> Endpoint {
    if listener == Listener::Client && is_demo_path(path) {
        return Endpoint::Demo;
    }
    if listener == Listener::Client && client::find(path).is_some() {
        return Endpoint::Client;
    }
    route(listener, path).unwrap_or(Endpoint::Other)
}

/// The endpoint at `path` on `listener`: admin paths do not exist on the
/// client listener, nor client paths on the admin one.
fn route(listener: Listener, path: &str) -> Option<Endpoint> {
    Some(match (listener, path) {
        (Listener::Client, "/connect") => Endpoint::Connect,
        (Listener::Client, "/poll") => Endpoint::Poll,
        (Listener::Client, "/send") => Endpoint::Send,
        (Listener::Client, "/typing") => Endpoint::Typing,
        (Listener::Client, "/presence") => Endpoint::Presence,
        (Listener::Client, "/ui") => Endpoint::Ui,
        (Listener::Client, "/read") => Endpoint::Read,
        (Listener::Client, "/history") => Endpoint::History,
        (Listener::Client, "/leave") => Endpoint::Leave,
        (Listener::Client, "/ping") => Endpoint::Ping,
        (Listener::Admin, "/health") => Endpoint::Health,
        (Listener::Admin, "/metrics") => Endpoint::Metrics,
        (Listener::Admin, "/roster-changed") => Endpoint::RosterChanged,
        (Listener::Admin, "/kick") => Endpoint::Kick,
        (Listener::Admin, "/trace") => Endpoint::Trace,
        _ => return None,
    })
}

/// The methods an endpoint accepts, as a check and as an `Allow` value.
fn allowed(endpoint: Endpoint, method: Method) -> Result<(), HttpError> {
    let allow = match endpoint {
        Endpoint::Health | Endpoint::Metrics => "GET",
        Endpoint::RosterChanged | Endpoint::Kick => "POST",
        _ => "GET, POST",
    };
    let ok = match method {
        Method::Get => allow.contains("GET"),
        Method::Post => allow.contains("POST"),
        Method::Head | Method::Other => false,
    };
    if ok {
        Ok(())
    } else {
        Err(HttpError::method_not_allowed(allow))
    }
}

/// What the admin gate reads from a request's head (see [`AdminGate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The `Authorization` header's value.
    pub authorization: Option<&'a [u8]>,
    /// The `Host` header's value.
    pub host: Option<&'a [u8]>,
    /// The request carries `Origin` or `Sec-Fetch-Site`: a browser sent it.
    pub from_browser: bool,
}

/// Who may call the admin listener (docs/security.md, "Admin isolation").
/// Admin callers are operators' tools and the web app's servers, never
/// browsers, so:
/// - a request carrying `Origin` or `Sec-Fetch-Site` (any value: every
///   browser sends one on a cross-site POST, modern ones on every request)
///   is `forbidden` (403);
/// - so is one whose `Host` is not the listener's own address: `IP:PORT`
///   as bound (any IP literal with that port when bound to a wildcard
///   address), `localhost:PORT` when bound to loopback, the port left out
///   only for port 80. A DNS-rebinding page sends its own host name, so it
///   is refused even though its requests reach the listener;
/// - with a token configured, `Authorization: Bearer TOKEN` is required
///   (`unauthorized`, 401), compared in constant time. The engine refuses
///   to start without one when the listener is not on loopback.
///
/// The default gate has no address and so refuses every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminGate {
    /// The admin listener's bound address (`None`: every `Host` is
    /// refused).
    pub addr: Option<SocketAddr>,
    /// `SWITCHBOARD_ADMIN_TOKEN` (`None`: no token asked for; the engine
    /// allows that only on loopback).
    pub token: Option<String>,
}

impl AdminGate {
    /// The gate of an admin listener bound at `addr`.
    pub fn new(addr: SocketAddr, token: Option<String>) -> AdminGate {
        AdminGate {
            addr: Some(addr),
            token,
        }
    }

    /// The refusal of a request that may not reach the admin calls, if it
    /// may not: 403 before 401.
    fn refuse(&self, creds: Credentials<'_>) -> Option<Response> {
        if creds.from_browser {
            return Some(Response::fail(
                ErrorCode::Forbidden,
                "the admin listener does not answer browsers (Origin or Sec-Fetch-Site given)",
            ));
        }
        if !creds.host.is_some_and(|host| self.host_matches(host)) {
            return Some(Response::fail(
                ErrorCode::Forbidden,
                "Host is not the admin listener's address",
            ));
        }
        if let Some(token) = &self.token {
            if !bearer_matches(creds.authorization, token) {
                return Some(Response::fail(
                    ErrorCode::Unauthorized,
                    "missing or wrong admin bearer token",
                ));
            }
        }
        None
    }

    /// Whether `host` names this listener (see the type's doc).
    fn host_matches(&self, host: &[u8]) -> bool {
        let Some(addr) = self.addr else {
            return false;
        };
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        // `[v6]:port`, `[v6]`, `name:port` or `name`. Brackets hold an
        // IPv6 literal only (RFC 3986): `[127.0.0.1]` and `[localhost]`
        // are not hosts (the fuzz target `call` found them accepted).
        let (name, port) = match host.strip_prefix('[') {
            Some(rest) => {
                let (ip, port) = match rest.split_once(']') {
                    Some((ip, "")) => (ip, None),
                    Some((ip, after)) => match after.strip_prefix(':') {
                        Some(port) => (ip, Some(port)),
                        None => return false,
                    },
                    None => return false,
                };
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (ip, port)
            }
            None => match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            },
        };
        let port_ok = match port {
            // Digits only, no leading zero: `+8081` and `08081` are not it.
            Some(port) => {
                port.bytes().all(|b| b.is_ascii_digit())
                    && !port.starts_with('0')
                    && port.parse::<u16>() == Ok(addr.port())
            }
            None => addr.port() == 80,
        };
        if !port_ok {
            return false;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return addr.ip().is_loopback();
        }
        name.parse::<IpAddr>()
            .is_ok_and(|ip| ip == addr.ip() || addr.ip().is_unspecified())
    }
}

/// Decides what one request is. `params` holds the query's and (for a
/// form POST) the body's parameters, decoded with [`known_params`];
/// `creds` is what the admin gate reads from the head; `admin` is the
/// admin listener's gate (unused on the client listener).
pub fn decide(
    listener: Listener,
    method: Method,
    path: &str,
    params: &Params,
    creds: Credentials<'_>,
    admin: &AdminGate,
) -> Decision {
    match listener {
        Listener::Admin => decide_admin(method, path, params, creds, admin),
        Listener::Client => decide_client(method, path, params),
    }
}

fn decide_admin(
    method: Method,
    path: &str,
    params: &Params,
    creds: Credentials<'_>,
    gate: &AdminGate,
) -> Decision {
    // Before routing, so a caller turned away cannot map the paths.
    if let Some(response) = gate.refuse(creds) {
        return Decision::Answer {
            mode: Mode::Json,
            response,
        };
    }
    let Some(endpoint) = route(Listener::Admin, path) else {
        return Decision::Reject(HttpError::not_found());
    };
    if let Err(e) = allowed(endpoint, method) {
        return Decision::Reject(e);
    }
    // The admin listener is for operators' tools: always plain JSON, any
    // `callback` is ignored like every unknown parameter.
    let call = match endpoint {
        Endpoint::Health => Ok(Call::Health),
        Endpoint::Metrics => Ok(Call::Metrics),
        Endpoint::RosterChanged => admin_user(params).map(|user| Call::RosterChanged { user }),
        Endpoint::Kick => admin_user(params).map(|user| Call::Kick { user }),
        // GET reads the trace; POST starts or stops it (a GET never
        // changes anything: its `level` is ignored like any unknown name).
        Endpoint::Trace => admin_user(params).and_then(|user| {
            if method == Method::Get {
                return Ok(Call::TraceRead { user });
            }
            let debug = match required(params, "level")? {
                "debug" => true,
                "off" => false,
                _ => return Err(bad("parameter `level` must be `debug` or `off`")),
            };
            Ok(Call::Trace { user, debug })
        }),
        _ => unreachable!("route gave a client endpoint on the admin listener"),
    };
    match call {
        Ok(call) => Decision::Call {
            mode: Mode::Json,
            call,
        },
        Err(failure) => Decision::Answer {
            mode: Mode::Json,
            response: Response::Failed(failure),
        },
    }
}

/// An admin call's `user`, after the check for undecodable names.
fn admin_user(params: &Params) -> Result<UserId, Failure> {
    if let Some(e) = params.broken {
        return Err(broken(e));
    }
    user_id("user", required(params, "user")?)
}

/// Whether `Authorization` is `Bearer TOKEN` with the configured token.
/// The comparison takes a time that depends only on the length of what was
/// given: not on where the first difference is, nor on the token's length.
fn bearer_matches(authorization: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some((scheme, given)) = value.split_at_checked(6) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || given.first() != Some(&b' ') {
        return false;
    }
    constant_time_eq(given.trim_ascii(), token.as_bytes())
}

/// `given == secret`, in a time that depends only on `given.len()`: every
/// byte of `given` is compared (with the secret's bytes, cycled), and the
/// length difference is folded into the same accumulator.
pub fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return given.is_empty();
    }
    let mut diff = u64::from(given.len() != secret.len());
    for (i, &g) in given.iter().enumerate() {
        diff |= u64::from(g ^ secret[i % secret.len()]);
    }
    std::hint::black_box(diff) == 0
}

fn decide_client(method: Method, path: &str, params: &Params) -> Decision {
    if is_demo_path(path) {
        return decide_demo(method, path, params);
    }
    if client::is_client_path(path) {
        return decide_client_file(method, path);
    }
    let Some(endpoint) = route(Listener::Client, path) else {
        return Decision::Reject(HttpError::not_found());
    };
    if let Err(e) = allowed(endpoint, method) {
        return Decision::Reject(e);
    }
    let mode = match params.get("callback") {
        None => Mode::Json,
        Some(Ok(name)) if is_callback(name) => Mode::Jsonp(name.to_owned()),
        Some(_) => {
            return Decision::Reject(HttpError::bad_request(
                "parameter `callback` is not a valid JavaScript name",
            ))
        }
    };
    let fail = |mode: Mode, failure: Failure| Decision::Answer {
        mode,
        response: Response::Failed(failure),
    };
    match endpoint {
        Endpoint::Ping => Decision::Answer {
            mode,
            response: Response::Done,
        },
        Endpoint::Connect => {
            let token = match required(params, "token") {
                Ok("") => return fail(mode, bad("parameter `token` is empty")),
                Ok(token) => token.to_owned(),
                Err(failure) => return fail(mode, failure),
            };
            let (tab, deferred) = match connect_tab(params) {
                Ok(tab) => (tab, None),
                Err(failure) => (None, Some(failure)),
            };
            Decision::Call {
                mode,
                call: Call::Connect {
                    token,
                    tab,
                    deferred,
                },
            }
        }
        _ => {
            let sid = match required(params, "sid") {
                Ok(text) => match Sid::parse(text) {
                    Some(sid) => sid,
                    None => {
                        return fail(
                            mode,
                            Failure::new(
                                ErrorCode::UnknownSession,
                                "unknown session: connect again",
                            ),
                        )
                    }
                },
                Err(failure) => return fail(mode, failure),
            };
            let request = sid_call(endpoint, sid, params)
                .unwrap_or_else(|failure| Request::Rejected { sid, failure });
            Decision::Call {
                mode,
                call: Call::Shard(request),
            }
        }
    }
}

/// Whether `path` is one of the demo's: `/`, `/demo` or under `/demo/`.
fn is_demo_path(path: &str) -> bool {
    path == "/" || path == "/demo" || path.starts_with("/demo/")
}

/// A demo page or `/demo/login`: GET only, always plain (a `callback` is
/// ignored like any unknown parameter). Whether demo mode is on, and so
/// whether the path exists, is the engine's to say.
fn decide_demo(method: Method, path: &str, params: &Params) -> Decision {
    if method != Method::Get {
        return Decision::Reject(HttpError::method_not_allowed("GET"));
    }
    let user = match params.get("user") {
        Some(Ok(text)) => user_id("user", text).ok(),
        _ => None,
    };
    Decision::Call {
        mode: Mode::Json,
        call: Call::Demo {
            path: path.to_owned(),
            user,
        },
    }
}

/// A client file (`/client/...`): `404` for a name that is not one, then
/// GET only (`405`, `Allow: GET`: `HEAD` too, as on every path). Every
/// parameter is ignored (never JSONP).
fn decide_client_file(method: Method, path: &str) -> Decision {
    let Some(file) = client::find(path) else {
        return Decision::Reject(HttpError::not_found());
    };
    if method != Method::Get {
        return Decision::Reject(HttpError::method_not_allowed("GET"));
    }
    Decision::File(file)
}

/// `/connect`'s optional `tab`, after the check for undecodable names.
fn connect_tab(params: &Params) -> Result<Option<String>, Failure> {
    if let Some(e) = params.broken {
        return Err(broken(e));
    }
    let Some(tab) = optional(params, "tab")? else {
        return Ok(None);
    };
    if tab.is_empty() || tab.len() > TAB_CHARS_MAX {
        return Err(bad(format!(
            "parameter `tab` must be 1 to {TAB_CHARS_MAX} characters"
        )));
    }
    if !tab
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(
            "parameter `tab` may only contain A-Z, a-z, 0-9, `_` and `-`",
        ));
    }
    Ok(Some(tab.to_owned()))
}

/// The request of a sid-bearing endpoint: sizes first, then content.
fn sid_call(endpoint: Endpoint, sid: Sid, params: &Params) -> Result<Request, Failure> {
    // Sizes, where the value itself decoded.
    match endpoint {
        Endpoint::Send => {
            if let Some(Ok(text)) = params.get("text") {
                if text.chars().count() > TEXT_CHARS_MAX {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("parameter `text` is longer than {TEXT_CHARS_MAX} characters"),
                    ));
                }
            }
        }
        Endpoint::Ui => {
            if let Some(Ok(state)) = params.get("state") {
                if state.len() > UI_STATE_BYTES_MAX {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!("parameter `state` is larger than {UI_STATE_BYTES_MAX} bytes"),
                    ));
                }
            }
        }
        _ => {}
    }
    if let Some(e) = params.broken {
        return Err(broken(e));
    }
    Ok(match endpoint {
        Endpoint::Poll => {
            let since = digits("since", required(params, "since")?)?;
            let wait_s = match optional(params, "wait")? {
                None => WAIT_S_DEFAULT,
                Some(text) => {
                    let wait = digits("wait", text)?;
                    if wait > WAIT_S_MAX {
                        return Err(bad(format!(
                            "parameter `wait` must be 0 to {WAIT_S_MAX} seconds"
                        )));
                    }
                    wait
                }
            };
            Request::Poll {
                sid,
                since,
                wait_ms: wait_s * 1000,
            }
        }
        Endpoint::Send => {
            let to = user_id("to", required(params, "to")?)?;
            let text = required(params, "text")?;
            if text.is_empty() {
                return Err(bad("parameter `text` is empty"));
            }
            let cid = match optional(params, "cid")? {
                None => None,
                Some(cid) => {
                    let chars = cid.chars().count();
                    if chars == 0 || chars > CID_CHARS_MAX {
                        return Err(bad(format!(
                            "parameter `cid` must be 1 to {CID_CHARS_MAX} characters"
                        )));
                    }
                    Some(cid.to_owned())
                }
            };
            Request::Send {
                sid,
                to,
                text: text.to_owned(),
                cid,
            }
        }
        Endpoint::Typing => {
            let to = user_id("to", required(params, "to")?)?;
            let state = match required(params, "state")? {
                "typing" => TypingState::Typing,
                "stopped" => TypingState::Stopped,
                _ => return Err(bad("parameter `state` must be `typing` or `stopped`")),
            };
            Request::Typing { sid, to, state }
        }
        Endpoint::Presence => {
            let status = match required(params, "status")? {
                "online" => Status::Online,
                "away" => Status::Away,
                _ => return Err(bad("parameter `status` must be `online` or `away`")),
            };
            Request::Presence { sid, status }
        }
        Endpoint::Ui => {
            let state = required(params, "state")?;
            // Bounded (4096 bytes) and depth-limited by serde_json, so a
            // full parse is cheap; the text is kept as sent.
            match serde_json::from_str::<serde_json::Value>(state) {
                Ok(serde_json::Value::Object(_)) => {}
                _ => return Err(bad("parameter `state` must be a JSON object")),
            }
            Request::Ui {
                sid,
                state: state.to_owned(),
            }
        }
        Endpoint::Read => {
            let with = user_id("with", required(params, "with")?)?;
            let upto = digits("upto", required(params, "upto")?)?;
            Request::Read { sid, with, upto }
        }
        Endpoint::History => {
            let with = user_id("with", required(params, "with")?)?;
            let before = match optional(params, "before")? {
                None => None,
                Some(text) => Some(digits("before", text)?),
            };
            let limit = match optional(params, "limit")? {
                None => HISTORY_LIMIT_DEFAULT,
                Some(text) => {
                    let limit = digits("limit", text)?;
                    if limit == 0 || limit > u64::from(HISTORY_LIMIT_MAX) {
                        return Err(bad(format!(
                            "parameter `limit` must be 1 to {HISTORY_LIMIT_MAX}"
                        )));
                    }
                    limit as u32
                }
            };
            Request::History {
                sid,
                with,
                before,
                limit,
            }
        }
        Endpoint::Leave => Request::Leave { sid },
        _ => unreachable!("not a sid-bearing endpoint: {endpoint:?}"),
    })
}

/// A `bad_request` failure.
fn bad(message: impl Into<String>) -> Failure {
    Failure::new(ErrorCode::BadRequest, message)
}

/// The failure for an undecodable parameter name.
fn broken(e: ParamError) -> Failure {
    bad(match e {
        ParamError::BadUtf8 => "a parameter name is not valid UTF-8",
        _ => "a parameter name has bad percent-encoding",
    })
}

/// A required parameter's value.
fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, Failure> {
    match params.get(name) {
        None => Err(bad(format!("parameter `{name}` is missing"))),
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(bad(e.message(name))),
    }
}

/// An optional parameter's value.
fn optional<'a>(params: &'a Params, name: &str) -> Result<Option<&'a str>, Failure> {
    match params.get(name) {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(e)) => Err(bad(e.message(name))),
    }
}

/// A number: ASCII digits only (no sign, no spaces), within u64.
fn digits(name: &str, text: &str) -> Result<u64, Failure> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!(
            "parameter `{name}` must be a whole number (digits only)"
        )));
    }
    text.parse()
        .map_err(|_| bad(format!("parameter `{name}` is too large")))
}

/// A user id: a positive u64.
fn user_id(name: &str, text: &str) -> Result<UserId, Failure> {
    match digits(name, text) {
        Ok(0) | Err(_) => Err(bad(format!(
            "parameter `{name}` must be a user id (a positive whole number)"
        ))),
        Ok(id) => Ok(id),
    }
}

/// Whether `name` is a JSONP callback we may echo: at most 64 bytes of
/// `^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$`.
pub fn is_callback(name: &str) -> bool {
    name.len() <= CALLBACK_BYTES_MAX
        && name.split('.').all(|part| {
            let mut bytes = part.bytes();
            bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'$')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_have_one_index_each_and_paths_map_to_them() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
        }
        let table = [
            (Listener::Client, "/send", Endpoint::Send),
            (Listener::Client, "/ping", Endpoint::Ping),
            (Listener::Client, "/demo/login", Endpoint::Demo),
            (Listener::Client, "/", Endpoint::Demo),
            (Listener::Client, "/client/switchboard.js", Endpoint::Client),
            (Listener::Client, "/client/nope.js", Endpoint::Other),
            (Listener::Admin, "/client/switchboard.js", Endpoint::Other),
            (Listener::Client, "/metrics", Endpoint::Other),
            (Listener::Admin, "/metrics", Endpoint::Metrics),
            (Listener::Admin, "/roster-changed", Endpoint::RosterChanged),
            (Listener::Admin, "/demo/", Endpoint::Other),
            (Listener::Admin, "/send", Endpoint::Other),
        ];
        for (listener, path, expected) in table {
            assert_eq!(endpoint(listener, path), expected, "{listener:?} {path}");
        }
        assert_eq!(Endpoint::RosterChanged.name(), "roster_changed");
    }

    const SID: &str = "42-0123456789abcdef0011223344556677";

    fn sid() -> Sid {
        Sid::parse(SID).unwrap()
    }

    /// What a decision must be. Failure messages are checked to contain a
    /// given piece (the parameter's name, usually).
    #[derive(Debug)]
    enum Want {
        /// HTTP-level failure with this status.
        Reject(u16),
        /// Answered by io: a failure with this code and message piece.
        Fail(ErrorCode, &'static str),
        /// Answered by io: `{"ok":true}`.
        Done,
        /// Handed to the handler.
        Call(Call),
        /// Handed to the home shard as `Rejected` with this code and piece.
        Rejected(ErrorCode, &'static str),
        /// A connect whose other parameters failed: deferred code.
        Deferred(ErrorCode),
        /// The inner expectation, in JSONP mode with this callback.
        Jsonp(&'static str, Box<Want>),
    }

    /// One request as `decide` sees it.
    struct Req {
        listener: Listener,
        method: Method,
        path: &'static str,
        query: String,
        /// A form-encoded body's text, if the request had one.
        form: Option<&'static str>,
        authorization: Option<&'static str>,
        /// The `Host` header (the admin listener's own address by default).
        host: Option<&'static str>,
        /// An `Origin` or `Sec-Fetch-Site` header was sent.
        from_browser: bool,
        /// Where the admin listener is bound.
        admin_addr: &'static str,
        admin_token: Option<&'static str>,
    }

    fn get(path: &'static str, query: impl Into<String>) -> Req {
        Req {
            listener: Listener::Client,
            method: Method::Get,
            path,
            query: query.into(),
            form: None,
            authorization: None,
            host: Some("127.0.0.1:8081"),
            from_browser: false,
            admin_addr: "127.0.0.1:8081",
            admin_token: None,
        }
    }

    fn admin(method: Method, path: &'static str, query: &str) -> Req {
        Req {
            listener: Listener::Admin,
            method,
            ..get(path, query)
        }
    }

    fn check(req: Req, want: Want) {
        let mut params = Params::new();
        params.add_form(req.query.as_bytes(), known_params(req.listener));
        if let Some(form) = req.form {
            params.add_form(form.as_bytes(), known_params(req.listener));
        }
        let creds = Credentials {
            authorization: req.authorization.map(str::as_bytes),
            host: req.host.map(str::as_bytes),
            from_browser: req.from_browser,
        };
        let gate = AdminGate::new(
            req.admin_addr.parse().unwrap(),
            req.admin_token.map(str::to_owned),
        );
        let got = decide(req.listener, req.method, req.path, &params, creds, &gate);
        let what = format!(
            "{:?} {} ?{}",
            req.method,
            req.path,
            &req.query[..req.query.len().min(80)]
        );
        compare(&what, got, Mode::Json, want);
    }

    fn compare(what: &str, got: Decision, mode: Mode, want: Want) {
        let failure_matches = |f: &Failure, code: ErrorCode, piece: &str| {
            assert_eq!(f.code, code, "{what}: {f:?}");
            assert!(f.message.contains(piece), "{what}: {f:?} lacks {piece:?}");
        };
        match (got, want) {
            (got, Want::Jsonp(name, inner)) => {
                compare(what, got, Mode::Jsonp(name.to_owned()), *inner)
            }
            (Decision::Reject(e), Want::Reject(status)) => assert_eq!(e.status, status, "{what}"),
            (Decision::Answer { mode: m, response }, Want::Fail(code, piece)) => {
                assert_eq!(m, mode, "{what}");
                let Response::Failed(f) = response else {
                    panic!("{what}: {response:?}")
                };
                failure_matches(&f, code, piece);
            }
            (Decision::Answer { mode: m, response }, Want::Done) => {
                assert_eq!((m, response), (mode, Response::Done), "{what}")
            }
            (
                Decision::Call {
                    mode: m,
                    call: Call::Shard(Request::Rejected { sid: s, failure }),
                },
                Want::Rejected(code, piece),
            ) => {
                assert_eq!((m, s), (mode, sid()), "{what}");
                failure_matches(&failure, code, piece);
            }
            (
                Decision::Call {
                    mode: m,
                    call:
                        Call::Connect {
                            deferred: Some(f), ..
                        },
                },
                Want::Deferred(code),
            ) => {
                assert_eq!(m, mode, "{what}");
                assert_eq!(f.code, code, "{what}");
            }
            (Decision::Call { mode: m, call }, Want::Call(want)) => {
                assert_eq!((m, call), (mode, want), "{what}")
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }

    fn shard(request: Request) -> Want {
        Want::Call(Call::Shard(request))
    }

    fn jsonp(name: &'static str, want: Want) -> Want {
        Want::Jsonp(name, Box::new(want))
    }

    use ErrorCode::{BadRequest, Forbidden, NotFound, TooLarge, Unauthorized, UnknownSession};

    #[test]
    fn routing_before_everything() {
        check(get("/nope", ""), Want::Reject(404));
        check(get("/poll/", ""), Want::Reject(404));
        check(get("/health", ""), Want::Reject(404));
        check(get("/nope", "callback=alert(1)"), Want::Reject(404));
        check(
            Req {
                method: Method::Other,
                ..get("/poll", "")
            },
            Want::Reject(405),
        );
        check(
            Req {
                method: Method::Head,
                ..get("/ping", "")
            },
            Want::Reject(405),
        );
        check(
            Req {
                method: Method::Other,
                ..get("/nope", "")
            },
            Want::Reject(404),
        );
        check(admin(Method::Get, "/poll", ""), Want::Reject(404));
        let e = HttpError::not_found();
        assert_eq!((e.code, e.status), (NotFound, 404));
    }

    #[test]
    fn callback_names() {
        check(get("/ping", "callback=cb"), jsonp("cb", Want::Done));
        check(
            get("/ping", "callback=jQuery123_456"),
            jsonp("jQuery123_456", Want::Done),
        );
        check(
            get("/ping", "callback=a.b.%24c_1"),
            jsonp("a.b.$c_1", Want::Done),
        );
        check(get("/ping", "callback=_"), jsonp("_", Want::Done));
        let name64 = "a".repeat(CALLBACK_BYTES_MAX);
        let name65 = "a".repeat(CALLBACK_BYTES_MAX + 1);
        let at = get("/ping", format!("callback={name64}"));
        let mut params = Params::new();
        params.add_form(at.query.as_bytes(), CLIENT_PARAMS);
        assert_eq!(
            decide(
                Listener::Client,
                Method::Get,
                "/ping",
                &params,
                Credentials::default(),
                &AdminGate::default()
            ),
            Decision::Answer {
                mode: Mode::Jsonp(name64),
                response: Response::Done
            }
        );
        check(
            get("/ping", format!("callback={name65}")),
            Want::Reject(400),
        );
        for bad in [
            "alert(1)//",
            "alert%281%29%2F%2F",
            "a..b",
            ".a",
            "a.",
            "1a",
            "a-b",
            "a%20b",
            "",
            "%zz",
            "%C3%A9",
            "a[0]",
            "a;b",
        ] {
            check(get("/ping", format!("callback={bad}")), Want::Reject(400));
        }
        check(get("/ping", "callback=a&callback=a"), Want::Reject(400));
        // The callback is checked before the sid.
        check(get("/poll", "callback=a..b"), Want::Reject(400));
        check(
            get("/poll", "callback=cb"),
            jsonp("cb", Want::Fail(BadRequest, "`sid`")),
        );
    }

    #[test]
    fn connect() {
        check(get("/connect", ""), Want::Fail(BadRequest, "`token`"));
        check(get("/connect", "token="), Want::Fail(BadRequest, "`token`"));
        check(
            get("/connect", "token=%zz"),
            Want::Fail(BadRequest, "`token`"),
        );
        check(
            get("/connect", "token=a&token=b"),
            Want::Fail(BadRequest, "`token`"),
        );
        check(
            get("/connect", "token=1.2.ab"),
            Want::Call(Call::Connect {
                token: "1.2.ab".into(),
                tab: None,
                deferred: None,
            }),
        );
        let tab64 = "T".repeat(TAB_CHARS_MAX);
        check(
            get("/connect", format!("token=t&tab={tab64}")),
            Want::Call(Call::Connect {
                token: "t".into(),
                tab: Some(tab64),
                deferred: None,
            }),
        );
        check(
            get("/connect", "token=t&tab=aZ09_-"),
            Want::Call(Call::Connect {
                token: "t".into(),
                tab: Some("aZ09_-".into()),
                deferred: None,
            }),
        );
        for bad in [
            "".to_owned(),
            "T".repeat(TAB_CHARS_MAX + 1),
            "a+b".into(),
            "a.b".into(),
            "%C3%A9".into(),
            "%zz".into(),
        ] {
            check(
                get("/connect", format!("token=t&tab={bad}")),
                Want::Deferred(BadRequest),
            );
        }
        check(
            get("/connect", "token=t&tab=a&tab=b"),
            Want::Deferred(BadRequest),
        );
        check(get("/connect", "token=t&%zz=1"), Want::Deferred(BadRequest));
        check(
            Req {
                method: Method::Post,
                form: Some("token=t"),
                ..get("/connect", "callback=cb")
            },
            jsonp(
                "cb",
                Want::Call(Call::Connect {
                    token: "t".into(),
                    tab: None,
                    deferred: None,
                }),
            ),
        );
    }

    #[test]
    fn sid_first() {
        check(get("/poll", "since=0"), Want::Fail(BadRequest, "`sid`"));
        check(
            get("/poll", "sid=%zz&since=0"),
            Want::Fail(BadRequest, "`sid`"),
        );
        check(
            get("/poll", format!("sid={SID}&sid={SID}")),
            Want::Fail(BadRequest, "`sid`"),
        );
        check(
            get("/poll", "sid=junk&since=x"),
            Want::Fail(UnknownSession, ""),
        );
        check(get("/leave", "sid="), Want::Fail(UnknownSession, ""));
        check(
            get("/send", "sid=0-0123456789abcdef0011223344556677"),
            Want::Fail(UnknownSession, ""),
        );
        // With a valid sid, the shard answers the rest after checking it.
        check(
            get("/poll", format!("sid={SID}")),
            Want::Rejected(BadRequest, "`since`"),
        );
        check(
            get("/poll", format!("sid={SID}&since=1&%zz")),
            Want::Rejected(BadRequest, "name"),
        );
        // Once in the query and once in the body.
        check(
            Req {
                method: Method::Post,
                form: Some("since=1"),
                ..get("/poll", format!("sid={SID}&since=1"))
            },
            Want::Rejected(BadRequest, "`since`"),
        );
        check(
            Req {
                method: Method::Post,
                form: Some(SID_FORM),
                ..get("/poll", format!("sid={SID}&since=1"))
            },
            Want::Fail(BadRequest, "`sid`"),
        );
    }

    const SID_FORM: &str = "sid=42-0123456789abcdef0011223344556677";

    #[test]
    fn poll() {
        let poll = |since, wait_ms| {
            shard(Request::Poll {
                sid: sid(),
                since,
                wait_ms,
            })
        };
        check(get("/poll", format!("sid={SID}&since=5")), poll(5, 25_000));
        check(
            get("/poll", format!("sid={SID}&since=5&wait=0")),
            poll(5, 0),
        );
        check(
            get("/poll", format!("sid={SID}&since=0&wait=60")),
            poll(0, 60_000),
        );
        check(
            get("/poll", format!("sid={SID}&since=007&wait=060")),
            poll(7, 60_000),
        );
        check(
            get("/poll", format!("sid={SID}&since=18446744073709551615")),
            poll(u64::MAX, 25_000),
        );
        check(
            get("/poll", format!("sid={SID}&since=1&wait=61")),
            Want::Rejected(BadRequest, "`wait`"),
        );
        check(
            get(
                "/poll",
                format!("sid={SID}&since=1&wait=99999999999999999999"),
            ),
            Want::Rejected(BadRequest, "`wait`"),
        );
        for bad in [
            "18446744073709551616",
            "-1",
            "%2B1",
            "+1",
            "%201",
            "1.0",
            "",
            "0x1",
            "１",
        ] {
            check(
                get("/poll", format!("sid={SID}&since={bad}")),
                Want::Rejected(BadRequest, "`since`"),
            );
        }
        check(
            Req {
                method: Method::Post,
                form: Some("since=3&wait=1"),
                ..get("/poll", format!("sid={SID}"))
            },
            poll(3, 1000),
        );
    }

    /// `n` copies of `é`, percent-encoded.
    fn accents(n: usize) -> String {
        "%C3%A9".repeat(n)
    }

    #[test]
    fn send() {
        let send = |text: String, cid: Option<&str>| {
            shard(Request::Send {
                sid: sid(),
                to: 7,
                text,
                cid: cid.map(str::to_owned),
            })
        };
        check(
            get("/send", format!("sid={SID}&to=7&text=hi+there")),
            send("hi there".into(), None),
        );
        check(
            get("/send", format!("sid={SID}&to=7&text=x&cid=c-1")),
            send("x".into(), Some("c-1")),
        );
        // Code points, not bytes: 4000 two-byte characters fit.
        check(
            get(
                "/send",
                format!("sid={SID}&to=7&text={}", accents(TEXT_CHARS_MAX)),
            ),
            send("é".repeat(TEXT_CHARS_MAX), None),
        );
        check(
            get(
                "/send",
                format!("sid={SID}&to=7&text={}", accents(TEXT_CHARS_MAX + 1)),
            ),
            Want::Rejected(TooLarge, "`text`"),
        );
        // Sizes before content: the bad `to` is not reported.
        check(
            get(
                "/send",
                format!("sid={SID}&to=0&text={}", "a".repeat(TEXT_CHARS_MAX + 1)),
            ),
            Want::Rejected(TooLarge, "`text`"),
        );
        check(
            get("/send", format!("sid={SID}&to=7&text=")),
            Want::Rejected(BadRequest, "`text`"),
        );
        check(
            get("/send", format!("sid={SID}&to=7")),
            Want::Rejected(BadRequest, "`text`"),
        );
        check(
            get("/send", format!("sid={SID}&to=7&text=%ff")),
            Want::Rejected(BadRequest, "`text`"),
        );
        check(
            get("/send", format!("sid={SID}&to=7&text=%zz")),
            Want::Rejected(BadRequest, "`text`"),
        );
        check(
            get("/send", format!("sid={SID}&text=x")),
            Want::Rejected(BadRequest, "`to`"),
        );
        for bad in ["0", "abc", "-7", "18446744073709551616", ""] {
            check(
                get("/send", format!("sid={SID}&to={bad}&text=x")),
                Want::Rejected(BadRequest, "`to`"),
            );
        }
        let cid64 = "é".repeat(CID_CHARS_MAX);
        check(
            get(
                "/send",
                format!("sid={SID}&to=7&text=x&cid={}", accents(CID_CHARS_MAX)),
            ),
            send("x".into(), Some(&cid64)),
        );
        check(
            get(
                "/send",
                format!("sid={SID}&to=7&text=x&cid={}", accents(CID_CHARS_MAX + 1)),
            ),
            Want::Rejected(BadRequest, "`cid`"),
        );
        check(
            get("/send", format!("sid={SID}&to=7&text=x&cid=")),
            Want::Rejected(BadRequest, "`cid`"),
        );
    }

    #[test]
    fn typing_presence_read_history_leave() {
        check(
            get("/typing", format!("sid={SID}&to=3&state=typing")),
            shard(Request::Typing {
                sid: sid(),
                to: 3,
                state: TypingState::Typing,
            }),
        );
        check(
            get("/typing", format!("sid={SID}&to=3&state=stopped")),
            shard(Request::Typing {
                sid: sid(),
                to: 3,
                state: TypingState::Stopped,
            }),
        );
        check(
            get("/typing", format!("sid={SID}&to=3&state=Typing")),
            Want::Rejected(BadRequest, "`state`"),
        );
        check(
            get("/typing", format!("sid={SID}&state=typing")),
            Want::Rejected(BadRequest, "`to`"),
        );
        check(
            get("/presence", format!("sid={SID}&status=away")),
            shard(Request::Presence {
                sid: sid(),
                status: Status::Away,
            }),
        );
        check(
            get("/presence", format!("sid={SID}&status=online")),
            shard(Request::Presence {
                sid: sid(),
                status: Status::Online,
            }),
        );
        check(
            get("/presence", format!("sid={SID}&status=offline")),
            Want::Rejected(BadRequest, "`status`"),
        );
        check(
            get("/read", format!("sid={SID}&with=3&upto=99")),
            shard(Request::Read {
                sid: sid(),
                with: 3,
                upto: 99,
            }),
        );
        check(
            get("/read", format!("sid={SID}&with=3")),
            Want::Rejected(BadRequest, "`upto`"),
        );
        check(
            get("/read", format!("sid={SID}&with=0&upto=1")),
            Want::Rejected(BadRequest, "`with`"),
        );
        let history = |before, limit| {
            shard(Request::History {
                sid: sid(),
                with: 3,
                before,
                limit,
            })
        };
        check(
            get("/history", format!("sid={SID}&with=3")),
            history(None, HISTORY_LIMIT_DEFAULT),
        );
        check(
            get("/history", format!("sid={SID}&with=3&before=9&limit=1")),
            history(Some(9), 1),
        );
        check(
            get("/history", format!("sid={SID}&with=3&limit=100")),
            history(None, 100),
        );
        for bad in ["0", "101", "x", "", "4294967297"] {
            check(
                get("/history", format!("sid={SID}&with=3&limit={bad}")),
                Want::Rejected(BadRequest, "`limit`"),
            );
        }
        check(
            get("/history", format!("sid={SID}&with=3&before=x")),
            Want::Rejected(BadRequest, "`before`"),
        );
        check(
            get("/history", format!("sid={SID}")),
            Want::Rejected(BadRequest, "`with`"),
        );
        check(
            get("/leave", format!("sid={SID}")),
            shard(Request::Leave { sid: sid() }),
        );
        // sendBeacon: POST, sid in the query, a body that is not a form.
        check(
            Req {
                method: Method::Post,
                ..get("/leave", format!("sid={SID}"))
            },
            shard(Request::Leave { sid: sid() }),
        );
        check(get("/ping", "anything=%zz"), Want::Done);
    }

    #[test]
    fn ui_state() {
        let ui = |state: &str| {
            shard(Request::Ui {
                sid: sid(),
                state: state.to_owned(),
            })
        };
        check(
            get("/ui", format!("sid={SID}&state=%7B%22a%22%3A1%7D")),
            ui("{\"a\":1}"),
        );
        check(get("/ui", format!("sid={SID}&state=+%7B%7D+")), ui(" {} "));
        // Exactly 4096 bytes as decoded, and one more.
        let object = |bytes: usize| format!("{{\"k\":\"{}\"}}", "v".repeat(bytes - 8));
        assert_eq!(object(UI_STATE_BYTES_MAX).len(), UI_STATE_BYTES_MAX);
        let encode = |s: &str| {
            s.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
        };
        check(
            get(
                "/ui",
                format!("sid={SID}&state={}", encode(&object(UI_STATE_BYTES_MAX))),
            ),
            ui(&object(UI_STATE_BYTES_MAX)),
        );
        check(
            get(
                "/ui",
                format!(
                    "sid={SID}&state={}",
                    encode(&object(UI_STATE_BYTES_MAX + 1))
                ),
            ),
            Want::Rejected(TooLarge, "`state`"),
        );
        for bad in [
            "%5B1%5D",
            "%22x%22",
            "null",
            "1",
            "%7B",
            "%7B%7D+x",
            "",
            "%7B%22a%22%3A%7D",
        ] {
            check(
                get("/ui", format!("sid={SID}&state={bad}")),
                Want::Rejected(BadRequest, "`state`"),
            );
        }
        check(
            get("/ui", format!("sid={SID}")),
            Want::Rejected(BadRequest, "`state`"),
        );
    }

    #[test]
    fn admin_calls() {
        let open = |method, path, query| admin(method, path, query);
        check(open(Method::Get, "/health", ""), Want::Call(Call::Health));
        check(
            open(Method::Get, "/metrics", "callback=cb"),
            Want::Call(Call::Metrics),
        );
        check(open(Method::Post, "/health", ""), Want::Reject(405));
        check(open(Method::Get, "/kick", "user=5"), Want::Reject(405));
        check(
            open(Method::Post, "/kick", "user=5"),
            Want::Call(Call::Kick { user: 5 }),
        );
        check(
            open(Method::Post, "/roster-changed", "user=7"),
            Want::Call(Call::RosterChanged { user: 7 }),
        );
        check(
            open(Method::Post, "/trace", "user=5&level=debug"),
            Want::Call(Call::Trace {
                user: 5,
                debug: true,
            }),
        );
        check(
            open(Method::Post, "/trace", "user=5&level=off"),
            Want::Call(Call::Trace {
                user: 5,
                debug: false,
            }),
        );
        check(
            open(Method::Post, "/trace", "user=5&level=on"),
            Want::Fail(BadRequest, "`level`"),
        );
        check(
            open(Method::Post, "/trace", "user=5"),
            Want::Fail(BadRequest, "`level`"),
        );
        check(
            open(Method::Get, "/trace", "user=5"),
            Want::Call(Call::TraceRead { user: 5 }),
        );
        check(
            open(Method::Get, "/trace", "user=5&level=off"),
            Want::Call(Call::TraceRead { user: 5 }),
        );
        check(
            open(Method::Get, "/trace", ""),
            Want::Fail(BadRequest, "`user`"),
        );
        check(
            open(Method::Post, "/kick", ""),
            Want::Fail(BadRequest, "`user`"),
        );
        check(
            open(Method::Post, "/kick", "user=0"),
            Want::Fail(BadRequest, "`user`"),
        );
        check(
            open(Method::Post, "/kick", "user=5&%zz"),
            Want::Fail(BadRequest, "name"),
        );
        check(open(Method::Get, "/connect", ""), Want::Reject(404));

        let locked = |path, authorization| Req {
            authorization,
            admin_token: Some("s3cret"),
            ..admin(Method::Get, path, "")
        };
        check(
            locked("/health", Some("Bearer s3cret")),
            Want::Call(Call::Health),
        );
        check(
            locked("/health", Some("bearer   s3cret")),
            Want::Call(Call::Health),
        );
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3crets"),
            Some("Basic s3cret"),
            Some("Bearers3cret"),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            check(locked("/health", wrong), Want::Fail(Unauthorized, ""));
            // Before routing: unknown paths do not leak.
            check(locked("/nope", wrong), Want::Fail(Unauthorized, ""));
        }
        check(locked("/nope", Some("Bearer s3cret")), Want::Reject(404));
    }

    /// The admin gate: browsers and foreign `Host`s are `forbidden`
    /// before the token is asked for, and before routing.
    #[test]
    fn admin_gate_refuses_browsers_and_foreign_hosts() {
        let at = |admin_addr, host| Req {
            host,
            admin_addr,
            ..admin(Method::Post, "/kick", "user=5")
        };
        let kick = || Want::Call(Call::Kick { user: 5 });
        let forbidden = || Want::Fail(Forbidden, "");
        let table: &[(&str, Option<&str>, bool)] = &[
            // (bound at, Host sent, answered)
            ("127.0.0.1:8081", Some("127.0.0.1:8081"), true),
            ("127.0.0.1:8081", Some("localhost:8081"), true),
            ("127.0.0.1:8081", Some("LocalHost:8081"), true),
            ("127.0.0.1:8081", Some("127.0.0.1:8080"), false),
            ("127.0.0.1:8081", Some("127.0.0.1"), false),
            ("127.0.0.1:8081", Some("127.0.0.2:8081"), false),
            ("127.0.0.1:8081", Some("localhost"), false),
            ("127.0.0.1:8081", Some("evil.example:8081"), false),
            ("127.0.0.1:8081", Some("localhost.evil.example:8081"), false),
            ("127.0.0.1:8081", Some("127.0.0.1:+8081"), false),
            ("127.0.0.1:8081", Some("127.0.0.1:08081"), false),
            ("127.0.0.1:8081", Some("127.0.0.1:8081:1"), false),
            ("127.0.0.1:8081", Some(""), false),
            ("127.0.0.1:8081", None, false),
            ("127.0.0.1:80", Some("127.0.0.1"), true),
            ("127.0.0.1:80", Some("localhost"), true),
            ("[::1]:8081", Some("[::1]:8081"), true),
            ("[::1]:8081", Some("localhost:8081"), true),
            ("[::1]:8081", Some("[::2]:8081"), false),
            ("[::1]:8081", Some("::1:8081"), false),
            ("[::1]:8081", Some("[::1]x"), false),
            // Brackets hold IPv6 only (found by the fuzz target `call`).
            ("127.0.0.1:8081", Some("[127.0.0.1]:8081"), false),
            ("127.0.0.1:8081", Some("[localhost]:8081"), false),
            ("0.0.0.0:8081", Some("[10.0.0.1]:8081"), false),
            ("10.0.0.5:8081", Some("10.0.0.5:8081"), true),
            ("10.0.0.5:8081", Some("localhost:8081"), false),
            ("0.0.0.0:8081", Some("10.0.0.5:8081"), true),
            ("0.0.0.0:8081", Some("rebound.example:8081"), false),
        ];
        for &(bound, host, answered) in table {
            let want = if answered { kick() } else { forbidden() };
            check(at(bound, host), want);
        }
        // Any browser is refused, from any origin, even with the token.
        check(
            Req {
                from_browser: true,
                ..admin(Method::Post, "/kick", "user=5")
            },
            forbidden(),
        );
        check(
            Req {
                from_browser: true,
                authorization: Some("Bearer s3cret"),
                admin_token: Some("s3cret"),
                ..admin(Method::Get, "/nope", "")
            },
            forbidden(),
        );
        // 403 before 401, both before routing.
        check(
            Req {
                host: Some("evil.example:8081"),
                admin_token: Some("s3cret"),
                ..admin(Method::Get, "/nope", "")
            },
            forbidden(),
        );
        // The default gate refuses everything.
        let mut params = Params::new();
        params.add_form(b"user=5", ADMIN_PARAMS);
        let creds = Credentials {
            host: Some(b"127.0.0.1:8081"),
            ..Credentials::default()
        };
        let got = decide(
            Listener::Admin,
            Method::Post,
            "/kick",
            &params,
            creds,
            &AdminGate::default(),
        );
        compare("default gate", got, Mode::Json, forbidden());
        // The client listener ignores all of it: browsers are its callers.
        check(
            Req {
                from_browser: true,
                host: Some("chat.example"),
                ..get("/ping", "")
            },
            Want::Done,
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        for (a, b, eq) in [
            (&b""[..], &b""[..], true),
            (b"s3cret", b"s3cret", true),
            (b"s3cre", b"s3cret", false),
            (b"s3crets", b"s3cret", false),
            (b"s3cret", b"S3cret", false),
            (b"s3crets3cret", b"s3cret", false),
            (b"", b"s3cret", false),
            (b"x", b"", false),
        ] {
            assert_eq!(constant_time_eq(a, b), eq, "{a:?} {b:?}");
        }
    }

    #[test]
    fn demo_paths() {
        let demo = |path: &str, user| {
            Want::Call(Call::Demo {
                path: path.into(),
                user,
            })
        };
        check(get("/", ""), demo("/", None));
        check(get("/demo", ""), demo("/demo", None));
        check(get("/demo/", "callback=cb"), demo("/demo/", None));
        check(get("/demo/app.js", ""), demo("/demo/app.js", None));
        check(get("/demo/login", "user=3"), demo("/demo/login", Some(3)));
        for bad in ["0", "x", "", "%zz", "1&user=2"] {
            check(
                get("/demo/login", format!("user={bad}")),
                demo("/demo/login", None),
            );
        }
        check(
            Req {
                method: Method::Post,
                ..get("/demo/login", "user=3")
            },
            Want::Reject(405),
        );
        check(get("/demox", ""), Want::Reject(404));
        check(get("/dem", ""), Want::Reject(404));
    }

    /// `/client/...`: the three files, GET only, parameters ignored.
    #[test]
    fn client_file_paths() {
        let decide_get = |method, path: &str, query: &str| {
            let mut params = Params::new();
            params.add_form(query.as_bytes(), known_params(Listener::Client));
            decide(
                Listener::Client,
                method,
                path,
                &params,
                Credentials::default(),
                &AdminGate::default(),
            )
        };
        for f in &client::FILES {
            let path = f.path();
            assert_eq!(decide_get(Method::Get, &path, ""), Decision::File(f));
            assert_eq!(
                decide_get(Method::Get, &path, "callback=cb&sid=x"),
                Decision::File(f)
            );
            for method in [Method::Head, Method::Post, Method::Other] {
                let Decision::Reject(e) = decide_get(method, &path, "") else {
                    panic!("{method:?} {path}");
                };
                assert_eq!((e.status, e.allow), (405, Some("GET")), "{method:?}");
            }
        }
        for path in [
            "/client/",
            "/client/x.js",
            "/client/switchboard.js/",
            "/client",
        ] {
            let Decision::Reject(e) = decide_get(Method::Get, path, "") else {
                panic!("{path}");
            };
            assert_eq!(e.status, 404, "{path}");
        }
    }

    #[test]
    fn callback_regex_edges() {
        assert!(is_callback("a"));
        assert!(is_callback("$"));
        assert!(is_callback("a.b.c"));
        assert!(!is_callback(""));
        assert!(!is_callback("a..b"));
        assert!(!is_callback("é"));
        assert!(is_callback(&"a".repeat(64)));
        assert!(!is_callback(&"a".repeat(65)));
        assert!(is_callback(&format!("{}.b", "a".repeat(62))));
        assert!(!is_callback(&format!("{}.b", "a".repeat(63))));
    }
}
