//! Call decoding: `decide` on the parameters of a request, built the way
//! the connection loop builds them (query, then a form body on POST).
//!
//! Input: `[sel, auth, bytes...]`. `sel & 1`: the bytes are a raw request
//! (`parse_request`, then decoding, exactly as `conn.rs` does); else they
//! are a query and a form body cut at the first `0xff`, sent to the path,
//! method and listener `sel` picks. `auth` picks the `Authorization` value
//! and whether the admin listener has a token.
//!
//! Properties, beyond "no panic":
//! - a decided call's parameters are within the protocol limits: `text`
//!   1..=4000 code points, `cid` 1..=64, `tab` 1..=64 of `[A-Za-z0-9_-]`,
//!   `state` at most 4096 bytes and a JSON object, `wait` at most 60 s,
//!   `limit` 1..=100, user ids positive, the token non-empty, the sid the
//!   `sid` parameter parsed;
//! - calls stay on their listener: admin calls only on the admin listener
//!   and, when it has a token, only with `Bearer TOKEN`; JSONP only on the
//!   client listener, with the `callback` parameter, valid;
//! - failures carry the codes the protocol gives them at that stage, and
//!   rejections are 400 (a bad callback), 404 or 405 (with `Allow`);
//! - the encoded answer is one whole HTTP response whose `Content-Length`
//!   is its body's length, JSON (or JSONP around JSON) that parses.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_io::call::{decide, is_callback, known_params, Decision, Mode};
use switchboard_io::head::Method;
use switchboard_io::limits::{
    CID_CHARS_MAX, HISTORY_LIMIT_MAX, TAB_CHARS_MAX, TEXT_CHARS_MAX, UI_STATE_BYTES_MAX, WAIT_S_MAX,
};
use switchboard_io::query::Params;
use switchboard_io::response::{Encoder, Persist};
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

/// One request as `decide` sees it.
struct Req<'a> {
    listener: Listener,
    method: Method,
    path: &'a str,
    query: &'a [u8],
    /// A form body (POST with the form content type).
    form: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
    admin_token: Option<&'a str>,
}

fuzz_target!(|data: &[u8]| {
    let [sel, auth, input @ ..] = data else {
        return;
    };
    let listener = if sel & 2 == 0 {
        Listener::Client
    } else {
        Listener::Admin
    };
    let admin_token = (auth & 0x80 == 0).then_some(TOKEN);
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
            authorization: head.authorization.as_deref(),
            admin_token,
        });
    } else {
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
            authorization: AUTHS[usize::from((auth >> 2) & 0x1f) % AUTHS.len()],
            admin_token,
        });
    }
});

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
        req.authorization,
        req.admin_token,
    );
    let authorized = match req.admin_token {
        None => true,
        Some(token) => req.authorization.is_some_and(|a| {
            a.len() > 7
                && a[..7].eq_ignore_ascii_case(b"bearer ")
                && a[7..].trim_ascii() == token.as_bytes()
        }),
    };
    let callback = params.get("callback");
    let persist = Persist {
        keep_alive: true,
        http10: false,
    };
    let date = [b'D'; 29];
    let mut out = Vec::new();
    let mut encoder = Encoder::new();
    match &decision {
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
            if req.listener == Listener::Admin {
                assert!(authorized, "an unauthorized admin call was routed");
            }
            encoder.http_error(&mut out, e, persist, false, &date);
        }
        Decision::Answer { mode, response } => {
            check_mode(req, mode, &params);
            match response {
                Response::Done => assert_eq!(req.path, "/ping"),
                Response::Failed(f) => {
                    let codes: &[ErrorCode] = match req.listener {
                        Listener::Admin if !authorized => &[ErrorCode::Unauthorized],
                        Listener::Admin => &[ErrorCode::BadRequest],
                        Listener::Client => &[ErrorCode::BadRequest, ErrorCode::UnknownSession],
                    };
                    assert!(codes.contains(&f.code), "{f:?}");
                }
                other => panic!("io answered {other:?}"),
            }
            encoder.response(&mut out, response, mode, persist, false, &date);
        }
        Decision::Call { mode, call } => {
            check_mode(req, mode, &params);
            check_call(req, call, &params, authorized);
            let reply = Reply::Shard(Response::Done);
            encoder.reply(&mut out, &reply, mode, persist, false, &date);
        }
    }
    check_answer(&out);
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

fn check_call(req: &Req, call: &Call, params: &Params, authorized: bool) {
    let admin = matches!(
        call,
        Call::Health
            | Call::Metrics
            | Call::RosterChanged { .. }
            | Call::Kick { .. }
            | Call::Trace { .. }
    );
    assert_eq!(admin, req.listener == Listener::Admin, "{call:?}");
    if admin {
        assert!(authorized, "an unauthorized admin call: {call:?}");
    }
    match call {
        Call::RosterChanged { user } | Call::Kick { user } | Call::Trace { user, .. } => {
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

/// `out` is one whole HTTP answer: status line, headers, and a body of
/// exactly `Content-Length` bytes that is JSON, or JSONP around JSON.
fn check_answer(out: &[u8]) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = std::str::from_utf8(&out[..end]).expect("an ASCII head");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let status: u16 = head[9..12].parse().expect("a status");
    assert!((200..600).contains(&status));
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let body = &out[end..];
    assert_eq!(body.len(), length);
    let json = if head.contains("Content-Type: application/javascript") {
        let open = body.iter().position(|&b| b == b'(').expect("a call");
        assert!(body.starts_with(b"/**/"));
        assert!(body.ends_with(b");"));
        &body[open + 1..body.len() - 2]
    } else {
        body
    };
    serde_json::from_slice::<serde_json::Value>(json).expect("a JSON body");
}
