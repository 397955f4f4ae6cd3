//! Call decoding: `decide` on the parameters of a request, built the way
//! the connection loop builds them (query, then a form body on POST),
//! behind the admin listener's gate.
//!
//! Input: `[sel, auth, gate, bytes...]`. `sel & 1`: the bytes are a raw
//! request (`parse_request`, then decoding, exactly as `conn.rs` does, the
//! credentials from `Head::credentials`); else they are a query and a form
//! body cut at the first `0xff`, sent to the path, method and listener
//! `sel` picks. `auth` picks the method, the `Authorization` value and
//! whether the admin gate has a token. `gate` picks the admin listener's
//! bound address (or the default gate, which has none), whether answers
//! carry HSTS, and, for the structured mode, whether the request is from a
//! browser and its `Host` (from a table, or the input's bytes up to the
//! first `0xfe`).
//!
//! Properties, beyond "no panic":
//! - a decided call's parameters are within the protocol limits: `text`
//!   1..=4000 code points, `cid` 1..=64, `tab` 1..=64 of `[A-Za-z0-9_-]`,
//!   `state` at most 4096 bytes and a JSON object, `wait` at most 60 s,
//!   `limit` 1..=100, user ids positive, the token non-empty, the sid the
//!   `sid` parameter parsed;
//! - the admin gate, exactly: on the admin listener a request from a
//!   browser, or whose `Host` does not name the gate's address (checked by
//!   a matcher written here from `AdminGate`'s documented rule), is
//!   `forbidden` (403); else, with a token set, one without
//!   `Bearer TOKEN` is `unauthorized` (401); both before routing (the
//!   same answer whatever the path, method and parameters); every other
//!   admin request is routed. Admin calls happen only on the admin
//!   listener, and only past the gate;
//! - the client listener ignores the credentials and the gate; JSONP only
//!   on the client listener, with the `callback` parameter, valid;
//! - failures carry the codes the protocol gives them at that stage, and
//!   rejections are 400 (a bad callback), 404 or 405 (with `Allow`);
//! - the encoded answer is one whole HTTP response whose `Content-Length`
//!   is its body's length, JSON (or JSONP around JSON) that parses, whose
//!   status is its failure's, with `X-Content-Type-Options: nosniff`,
//!   `Access-Control-Allow-Origin` exactly on the client listener's JSON
//!   answers, and `Strict-Transport-Security` exactly when asked for.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use switchboard_io::call::{
    decide, is_callback, known_params, AdminGate, Credentials, Decision, Mode,
};
use switchboard_io::head::Method;
use switchboard_io::limits::{
    CID_CHARS_MAX, HISTORY_LIMIT_MAX, TAB_CHARS_MAX, TEXT_CHARS_MAX, UI_STATE_BYTES_MAX, WAIT_S_MAX,
};
use switchboard_io::query::Params;
use switchboard_io::response::{status_of, Encoder, Persist};
use switchboard_io::{parse_request, Call, Limits, Listener, Reply};
use switchboard_shards::model::{ErrorCode, Request, Response, Sid};

const PATHS: &[&str] = &[
    "/connect",
    "/poll",
    "/send",
    "/typing",
    "/presence",
    "/ui",
    "/read",
    "/history",
    "/leave",
    "/ping",
    "/health",
    "/metrics",
    "/roster-changed",
    "/kick",
    "/trace",
    "/",
    "/demo",
    "/demo/login",
    "/client/switchboard.js",
    "/client/nope",
    "/nope",
];

const METHODS: &[Method] = &[Method::Get, Method::Post, Method::Head, Method::Other];

const AUTHS: &[Option<&[u8]>] = &[
    None,
    Some(b"Bearer s3cret"),
    Some(b"bearer  s3cret "),
    Some(b"Bearer s3cre"),
    Some(b"Bearer"),
    Some(b"Basic s3cret"),
];

const TOKEN: &str = "s3cret";

/// The admin listener's bound address (`None`: the default gate).
const GATES: &[Option<&str>] = &[
    Some("127.0.0.1:8081"),
    Some("[::1]:8081"),
    Some("0.0.0.0:8081"),
    Some("10.0.0.5:8081"),
    Some("127.0.0.1:80"),
    Some("[::]:9000"),
    Some("192.168.1.2:80"),
    None,
];

/// `Host` values for the structured mode; the last entry means "the
/// input's bytes up to the first `0xfe`".
const HOSTS: &[Option<&[u8]>] = &[
    Some(b"127.0.0.1:8081"),
    Some(b"localhost:8081"),
    Some(b"[::1]:8081"),
    Some(b"10.0.0.5:8081"),
    Some(b"evil.example:8081"),
    Some(b"127.0.0.1"),
    None,
    None,
];

/// One request as `decide` sees it.
struct Req<'a> {
    listener: Listener,
    method: Method,
    path: &'a str,
    query: &'a [u8],
    /// A form body (POST with the form content type).
    form: Option<&'a [u8]>,
    creds: Credentials<'a>,
    gate: &'a AdminGate,
    /// Answers carry `Strict-Transport-Security`.
    hsts: bool,
}

fuzz_target!(|data: &[u8]| {
    let [sel, auth, gate_sel, input @ ..] = data else {
        return;
    };
    let listener = if sel & 2 == 0 {
        Listener::Client
    } else {
        Listener::Admin
    };
    let token = (auth & 0x80 == 0).then(|| TOKEN.to_owned());
    let gate = match GATES[usize::from(gate_sel & 7)] {
        Some(addr) => AdminGate::new(addr.parse().expect("an address"), token),
        None => AdminGate {
            token,
            ..AdminGate::default()
        },
    };
    let hsts = gate_sel & 8 != 0;
    if sel & 1 == 1 {
        let Ok(Some(parsed)) = parse_request(input, &Limits::default()) else {
            return;
        };
        let head = &parsed.head;
        let form = (head.method == Method::Post && head.form_body).then_some(&parsed.body[..]);
        check(&Req {
            listener,
            method: head.method,
            path: &head.path,
            query: head.query.as_bytes(),
            form,
            creds: head.credentials(),
            gate: &gate,
            hsts,
        });
    } else {
        let host_sel = usize::from(gate_sel >> 5);
        let (host, input) = if host_sel == HOSTS.len() - 1 {
            match input.iter().position(|&b| b == 0xfe) {
                Some(i) => (Some(&input[..i]), &input[i + 1..]),
                None => (Some(input), &b""[..]),
            }
        } else {
            (HOSTS[host_sel], input)
        };
        let (query, body) = match input.iter().position(|&b| b == 0xff) {
            Some(i) => (&input[..i], Some(&input[i + 1..])),
            None => (input, None),
        };
        let method = METHODS[usize::from(auth & 3)];
        check(&Req {
            listener,
            method,
            path: PATHS[usize::from(sel >> 2) % PATHS.len()],
            query,
            form: body.filter(|_| method == Method::Post),
            creds: Credentials {
                authorization: AUTHS[usize::from((auth >> 2) & 0x1f) % AUTHS.len()],
                host,
                from_browser: gate_sel & 0x10 != 0,
            },
            gate: &gate,
            hsts,
        });
    }
});

/// What the admin gate must answer `creds` with, if it refuses them: its
/// documented rule, written here without its code.
fn gate_refusal(gate: &AdminGate, creds: &Credentials) -> Option<ErrorCode> {
    let host_ok = match (gate.addr, creds.host) {
        (Some(addr), Some(host)) => host_names(addr, host),
        _ => false,
    };
    if creds.from_browser || !host_ok {
        return Some(ErrorCode::Forbidden);
    }
    let bearer_ok = |token: &str| {
        creds.authorization.is_some_and(|a| {
            a.len() > 7
                && a[..7].eq_ignore_ascii_case(b"bearer ")
                && a[7..].trim_ascii() == token.as_bytes()
        })
    };
    match &gate.token {
        Some(token) if !bearer_ok(token) => Some(ErrorCode::Unauthorized),
        _ => None,
    }
}

/// Whether a `Host` value names a listener bound at `addr`: `IP:PORT` as
/// bound (any IP literal when bound to a wildcard address), IPv6 literals
/// in brackets (RFC 3986), `localhost:PORT` when bound to loopback, the
/// port written as `addr`'s (decimal, no leading zero) and left out only
/// for port 80.
fn host_names(addr: SocketAddr, host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let (name, port) = match host.rfind(':') {
        // A colon after the closing bracket (or with none) ends the name.
        Some(i) if !host[i..].contains(']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    let port_ok = match port {
        Some(port) => port == addr.port().to_string(),
        None => addr.port() == 80,
    };
    let ip: IpAddr = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        match v6.parse::<Ipv6Addr>() {
            Ok(ip) => ip.into(),
            Err(_) => return false,
        }
    } else if name.eq_ignore_ascii_case("localhost") {
        return port_ok && addr.ip().is_loopback();
    } else {
        match name.parse::<Ipv4Addr>() {
            Ok(ip) => ip.into(),
            Err(_) => return false,
        }
    };
    port_ok && (ip == addr.ip() || addr.ip().is_unspecified())
}

fn check(req: &Req) {
    let known = known_params(req.listener);
    let mut params = Params::new();
    params.add_form(req.query, known);
    if let Some(form) = req.form {
        params.add_form(form, known);
    }
    let decision = decide(
        req.listener,
        req.method,
        req.path,
        &params,
        req.creds,
        req.gate,
    );
    // On the admin listener: what the gate must say, if it refuses.
    let refusal = match req.listener {
        Listener::Admin => gate_refusal(req.gate, &req.creds),
        Listener::Client => {
            // The client listener reads neither the credentials nor the gate.
            let plain = decide(
                req.listener,
                req.method,
                req.path,
                &params,
                Credentials::default(),
                &AdminGate::default(),
            );
            assert_eq!(decision, plain, "the client listener read the credentials");
            None
        }
    };
    if let Some(code) = refusal {
        assert!(
            matches!(
                &decision,
                Decision::Answer {
                    mode: Mode::Json,
                    response: Response::Failed(f),
                } if f.code == code
            ),
            "the gate must refuse with {code:?}: {decision:?}"
        );
        // Before routing: the same answer for any path, method and
        // parameters.
        let elsewhere = decide(
            Listener::Admin,
            Method::Get,
            "/nope",
            &Params::new(),
            req.creds,
            req.gate,
        );
        assert_eq!(decision, elsewhere, "the refusal depends on the request");
    }
    let callback = params.get("callback");
    let persist = Persist {
        keep_alive: true,
        http10: false,
    };
    let date = [b'D'; 29];
    let mut out = Vec::new();
    let mut encoder = Encoder::new(req.listener).with_hsts(req.hsts);
    let status = match &decision {
        Decision::Reject(e) => {
            match e.status {
                400 => {
                    assert_eq!(req.listener, Listener::Client);
                    assert!(
                        matches!(callback, Some(Err(_)))
                            || matches!(callback, Some(Ok(c)) if !is_callback(c)),
                        "400 without a bad callback"
                    );
                }
                404 => {}
                405 => assert!(e.allow.is_some()),
                s => panic!("rejected with {s}"),
            }
            assert!(refusal.is_none(), "a refused admin request was routed");
            encoder.http_error(&mut out, e, persist, false, &date);
            e.status
        }
        Decision::Answer { mode, response } => {
            check_mode(req, mode, &params);
            let status = match response {
                Response::Done => {
                    assert_eq!(req.path, "/ping");
                    200
                }
                Response::Failed(f) => {
                    let codes: &[ErrorCode] = match (req.listener, refusal) {
                        (Listener::Admin, Some(code)) => &[code],
                        (Listener::Admin, None) => &[ErrorCode::BadRequest],
                        (Listener::Client, _) => {
                            &[ErrorCode::BadRequest, ErrorCode::UnknownSession]
                        }
                    };
                    assert!(codes.contains(&f.code), "{f:?}");
                    status_of(f.code)
                }
                other => panic!("io answered {other:?}"),
            };
            encoder.response(&mut out, response, mode, persist, false, &date);
            match mode {
                Mode::Json => status,
                Mode::Jsonp(_) => 200,
            }
        }
        Decision::Call { mode, call } => {
            check_mode(req, mode, &params);
            check_call(req, call, &params, refusal);
            let reply = Reply::Shard(Response::Done);
            encoder.reply(&mut out, &reply, mode, persist, false, &date);
            200
        }
        Decision::File(file) => {
            // A client file: GET on the client listener, that very path;
            // its answer is the file (not JSON), so checked here.
            assert_eq!(req.listener, Listener::Client);
            assert_eq!(req.method, Method::Get);
            assert_eq!(switchboard_io::client::find(req.path), Some(*file));
            encoder.client_file(&mut out, file, false, persist, &date);
            let head = format!("Content-Length: {}\r\n", file.body.len());
            let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert!(out[..at].windows(head.len()).any(|w| w == head.as_bytes()));
            assert_eq!(&out[at..], file.body);
            return;
        }
    };
    check_answer(&out, status, req.listener, req.hsts);
}

fn check_mode(req: &Req, mode: &Mode, params: &Params) {
    match mode {
        Mode::Json => {}
        Mode::Jsonp(name) => {
            assert_eq!(
                req.listener,
                Listener::Client,
                "JSONP on the admin listener"
            );
            assert!(is_callback(name));
            assert_eq!(params.get("callback"), Some(Ok(name.as_str())));
        }
    }
}

/// The value of a parameter that must have decoded.
fn value<'a>(params: &'a Params, name: &str) -> &'a str {
    match params.get(name) {
        Some(Ok(v)) => v,
        other => panic!("`{name}` is {other:?} in a decided call"),
    }
}

fn check_call(req: &Req, call: &Call, params: &Params, refusal: Option<ErrorCode>) {
    let admin = matches!(
        call,
        Call::Health
            | Call::Metrics
            | Call::RosterChanged { .. }
            | Call::Kick { .. }
            | Call::Trace { .. }
            | Call::TraceRead { .. }
    );
    assert_eq!(admin, req.listener == Listener::Admin, "{call:?}");
    assert_eq!(
        refusal, None,
        "an admin call past a refusing gate: {call:?}"
    );
    match call {
        Call::RosterChanged { user }
        | Call::Kick { user }
        | Call::Trace { user, .. }
        | Call::TraceRead { user } => {
            assert!(*user > 0);
            assert_eq!(value(params, "user").parse::<u64>().ok(), Some(*user));
        }
        Call::Health | Call::Metrics => {}
        Call::Connect {
            token,
            tab,
            deferred,
        } => {
            assert!(!token.is_empty());
            assert_eq!(value(params, "token"), token);
            if let Some(tab) = tab {
                assert!(!tab.is_empty() && tab.len() <= TAB_CHARS_MAX);
                assert!(tab
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            }
            if let Some(f) = deferred {
                assert!(tab.is_none());
                assert_eq!(f.code, ErrorCode::BadRequest);
            }
        }
        Call::Demo { path, user } => {
            assert!(path == "/" || path == "/demo" || path.starts_with("/demo/"));
            assert_eq!(req.method, Method::Get);
            if let Some(user) = user {
                assert!(*user > 0);
            }
        }
        Call::Shard(request) => check_request(request, params),
    }
}

fn check_request(request: &Request, params: &Params) {
    let sid = Sid::parse(value(params, "sid")).expect("a shard call has a valid sid");
    let got = match request {
        Request::Poll {
            sid,
            since,
            wait_ms,
        } => {
            assert_eq!(value(params, "since").parse::<u64>().ok(), Some(*since));
            assert!(*wait_ms <= WAIT_S_MAX * 1000 && wait_ms % 1000 == 0);
            sid
        }
        Request::Send { sid, to, text, cid } => {
            assert!(*to > 0);
            let chars = text.chars().count();
            assert!(
                (1..=TEXT_CHARS_MAX).contains(&chars),
                "text of {chars} chars"
            );
            assert_eq!(value(params, "text"), text);
            if let Some(cid) = cid {
                let chars = cid.chars().count();
                assert!((1..=CID_CHARS_MAX).contains(&chars), "cid of {chars} chars");
            }
            sid
        }
        Request::Typing { sid, to, .. } => {
            assert!(*to > 0);
            sid
        }
        Request::Presence { sid, .. } => sid,
        Request::Ui { sid, state } => {
            assert!(state.len() <= UI_STATE_BYTES_MAX);
            let parsed: serde_json::Value = serde_json::from_str(state).expect("JSON");
            assert!(parsed.is_object());
            sid
        }
        Request::Read { sid, with, .. } => {
            assert!(*with > 0);
            sid
        }
        Request::History {
            sid, with, limit, ..
        } => {
            assert!(*with > 0);
            assert!((1..=HISTORY_LIMIT_MAX).contains(limit));
            sid
        }
        Request::Leave { sid } => sid,
        Request::Rejected { sid, failure } => {
            assert!(
                matches!(failure.code, ErrorCode::BadRequest | ErrorCode::TooLarge),
                "{failure:?}"
            );
            sid
        }
        other => panic!("io built {other:?}"),
    };
    assert_eq!(*got, sid);
}

/// `out` is one whole HTTP answer: status line with `status`, headers,
/// and a body of exactly `Content-Length` bytes that is JSON, or JSONP
/// around JSON; `nosniff` always, CORS on the client listener's JSON
/// answers only, HSTS exactly when `hsts`.
fn check_answer(out: &[u8], status: u16, listener: Listener, hsts: bool) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = std::str::from_utf8(&out[..end]).expect("an ASCII head");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    assert_eq!(head[9..12].parse::<u16>().ok(), Some(status), "{head}");
    let has = |line: &str| head.split("\r\n").any(|l| l == line);
    let jsonp = head.contains("\r\nContent-Type: application/javascript");
    assert!(jsonp || has("Content-Type: application/json"), "{head}");
    assert!(has("X-Content-Type-Options: nosniff"), "{head}");
    assert_eq!(
        has("Access-Control-Allow-Origin: *"),
        listener == Listener::Client && !jsonp,
        "{head}"
    );
    assert_eq!(
        has("Strict-Transport-Security: max-age=31536000"),
        hsts,
        "{head}"
    );
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let body = &out[end..];
    assert_eq!(body.len(), length);
    let json = if jsonp {
        let open = body.iter().position(|&b| b == b'(').expect("a call");
        assert!(body.starts_with(b"/**/"));
        assert!(body.ends_with(b");"));
        &body[open + 1..body.len() - 2]
    } else {
        body
    };
    serde_json::from_slice::<serde_json::Value>(json).expect("a JSON body");
}
