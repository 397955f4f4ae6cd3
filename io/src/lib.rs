//! `switchboard-io` owns everything HTTP: parsing request heads and bodies (on
//! `httparse`), decoding query strings and forms into typed calls, encoding
//! answers as JSON or JSONP (docs/protocol.md, "JSON and JSONP"), and the
//! per-connection loop (keep-alive, pipelining in order, limits, slow-client
//! deadlines, lingering close). It knows nothing of shards or executors: the
//! engine hands it a byte stream and a [`Handler`] that turns a [`Call`] into
//! a [`Reply`] (typed values: the handler never picks a status or writes
//! JSON). It is the only crate that knows serde_json and rustls.
//!
//! Codemap, in the order a request goes through it: [`limits`] (every
//! bound, by name), [`head`] (request line and headers, framing), [`body`]
//! (Content-Length and chunked bodies; [`parse_request`] is the fuzzing
//! entry point), [`query`] (form decoding), [`call`] (routing, auth, the
//! JSONP callback, typed parameters: [`decide`]), [`client`] (the browser
//! client's files, served by `io` itself at `/client/...`), [`reply`] (what the
//! handler answers), [`response`] (the one status mapping, JSON and JSONP
//! encoding), [`metrics`] (`/metrics` as typed families and their
//! Prometheus text), [`conn`] (the connection loop: [`serve`]), [`buffers`]
//! (the read scratch and buffer pool each thread's connections share, so an
//! idle connection holds no buffer), [`deadline`]
//! (the one deadline race, also used by the engine), [`admission`]
//! (the engine's accept-time counts: per listener and per client address),
//! and [`tls`] (the certificate and its reload, the handshake, and the
//! `TlsStream` that [`serve`] runs over).
//!
//! Choices where the protocol is silent: `/ping` and the client files are
//! answered by `io` without calling the handler; a head or body that does not arrive in
//! time gets `408` before the graceful close; a transfer coding other than
//! plain `chunked` is `400`; `HEAD` is answered `405` without a body; an
//! HTTP/1.1 request must carry exactly one `Host` (RFC 9112 §3.2); the admin
//! listener never uses JSONP.

#![forbid(unsafe_code)]

use std::future::Future;
use std::time::Duration;

use switchboard_shards::model::{Failure, Request, UserId};

/// Which listener a connection came in on: the paths differ, and admin
/// calls need the bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Client,
    Admin,
}

/// A decoded call, ready for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `/connect`: the token is verified by the engine (it needs the
    /// secret or the directory). `deferred` is a decoding failure of the
    /// other parameters, answered only after the token checks out.
    Connect {
        token: String,
        tab: Option<String>,
        deferred: Option<Failure>,
    },
    /// Every sid-bearing client call (poll, send, typing, presence, ui,
    /// read, history, leave), including `Request::Rejected`.
    Shard(Request),
    /// Admin `GET /health`.
    Health,
    /// Admin `GET /metrics`.
    Metrics,
    /// Admin `POST /roster-changed?user=ID`.
    RosterChanged { user: UserId },
    /// Admin `POST /kick?user=ID`.
    Kick { user: UserId },
    /// Admin `POST /trace?user=ID&level=debug|off`: start (`debug`) or
    /// stop a per-user trace.
    Trace { user: UserId, debug: bool },
    /// Admin `GET /trace?user=ID`: the newest lines of a user's trace.
    TraceRead { user: UserId },
    /// Client `GET /`, `/demo` and `/demo/...`: the demo's pages and its
    /// token minting (`/demo/login?user=ID`), answered by the engine only
    /// in demo mode (else 404), always as JSON or raw bytes, never JSONP.
    /// `user` is the `user` parameter when it is a valid user id.
    Demo { path: String, user: Option<UserId> },
}

impl Call {
    /// What a log line may say about this call: its name and the user it
    /// names, if any. Never the token, a sid's secret, message text, cid,
    /// tab name or UI state (docs/security.md, "What is logged"); the
    /// user of a connect is not known until its token is checked.
    pub fn describe(&self) -> (&'static str, Option<UserId>) {
        match self {
            Call::Connect { .. } => ("connect", None),
            Call::Shard(request) => (request.name(), request.home_user()),
            Call::Health => ("health", None),
            Call::Metrics => ("metrics", None),
            Call::RosterChanged { user } => ("roster_changed", Some(*user)),
            Call::Kick { user } => ("kick", Some(*user)),
            Call::Trace { user, .. } => ("trace", Some(*user)),
            Call::TraceRead { user } => ("trace_read", Some(*user)),
            Call::Demo { .. } => ("demo", None),
        }
    }
}

/// What the connection loop needs from the runtime.
pub trait Handler {
    /// Answers one call. May take as long as a long-poll takes.
    fn call(&self, call: Call) -> impl Future<Output = Reply>;
    /// Sleeps for `duration` (the runtime's timer; every deadline is this
    /// timer raced against the work by [`deadline::within`]).
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
    /// Resolves once the server is stopping (the default: never). A
    /// connection waiting for its next request then closes at once, so
    /// idle keep-alive connections do not hold a stopping server open.
    fn stopped(&self) -> impl Future<Output = ()> {
        std::future::pending()
    }
    /// Whether the server is stopping (the default: never): an answer
    /// written then says `Connection: close` and the connection closes
    /// gracefully after it.
    fn stopping(&self) -> bool {
        false
    }
    /// Yields to the executor's other tasks if this one has run for its
    /// time slice (the default: never yields). Called between the steps
    /// of a TLS handshake, so a storm of handshakes takes turns with the
    /// connections already served.
    fn yield_if_needed(&self) -> impl Future<Output = ()> {
        std::future::ready(())
    }

    /// Called once per request answered, when its answer is encoded and
    /// before it is written: the endpoint it was counted under, how it
    /// ended, and how long its answer took from the end of its head and
    /// body (`None` for a request that could not be read: a malformed or
    /// oversized head or body, a slow client). For metrics; called on the
    /// connection's task, so it must be cheap. The default does nothing.
    fn answered(&self, endpoint: Endpoint, outcome: Outcome, elapsed: Option<Duration>) {
        let _ = (endpoint, outcome, elapsed);
    }

    /// The shard other than this one that `user` is homed on (the default:
    /// `None`, every user is served here). A movable connection whose
    /// calls keep going to one other shard is handed back to move there
    /// ([`conn::serve_movable`]).
    fn home_elsewhere(&self, user: UserId) -> Option<usize> {
        let _ = user;
        None
    }

    /// Resolves once a stopping server no longer waits for this connection
    /// (the default: never). A lingering close ends then, so lingering
    /// never holds a stop past its drain bound.
    fn drain_over(&self) -> impl Future<Output = ()> {
        std::future::pending()
    }
}

pub mod admission;
pub mod body;
pub mod buffers;
pub mod call;
pub mod client;
pub mod conn;
pub mod deadline;
pub mod head;
pub mod limits;
pub mod metrics;
pub mod query;
pub mod reply;
pub mod response;
pub mod tls;

pub use admission::{Admission, Refused, Ticket};
pub use body::{parse_request, Parsed};
pub use call::{decide, endpoint, AdminGate, Credentials, Decision, Endpoint, Mode};
pub use conn::{serve, serve_movable, CloseReason, Config, ConnOutcome, Moved, Resume, Served};
pub use head::HttpError;
pub use limits::Limits;
pub use reply::{DemoUser, Reply, ShardHealth, TraceState};
pub use response::Outcome;

#[cfg(test)]
mod tests {
    use switchboard_shards::model::Sid;

    use super::*;

    /// The log text of a call (`describe`) holds no credential and no
    /// content, whatever the call carries.
    #[test]
    fn call_log_text_holds_no_credential_or_content() {
        let sid = Sid {
            user: 7,
            secret: 0xfeed_f00d_dead_beef_0123_4567_89ab_cdef,
        };
        let secret_hex = format!("{:032x}", sid.secret);
        let calls = [
            Call::Connect {
                token: "7.1700000000.c0ffee-the-token".into(),
                tab: Some("tab-name".into()),
                deferred: None,
            },
            Call::Shard(Request::Send {
                sid,
                to: 8,
                text: "the message text".into(),
                cid: Some("the-cid".into()),
            }),
            Call::Shard(Request::Ui {
                sid,
                state: "{\"the\":\"ui state\"}".into(),
            }),
            Call::Shard(Request::Poll {
                sid,
                since: 1,
                wait_ms: 0,
            }),
        ];
        for call in calls {
            let (name, user) = call.describe();
            let text = format!("call {name} for user {user:?}");
            for leak in [
                "c0ffee",
                "tab-name",
                "message text",
                "the-cid",
                "ui state",
                &secret_hex,
            ] {
                assert!(!text.contains(leak), "{text:?} holds {leak:?}");
            }
        }
        // The Debug form is for tests only: it does hold the token.
        let connect = Call::Connect {
            token: "t0ken".into(),
            tab: None,
            deferred: None,
        };
        assert!(format!("{connect:?}").contains("t0ken"));
    }
}
