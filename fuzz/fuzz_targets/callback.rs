//! The JSONP callback rule: `is_callback`, and the `callback` parameter as
//! `decide` and the encoder use it.
//!
//! Input: the callback name's bytes (`[mode, name...]`; `mode` picks the
//! endpoint and whether the name is sent percent-encoded).
//!
//! Properties, beyond "no panic":
//! - `is_callback` accepts exactly the documented rule (docs/protocol.md,
//!   "JSON and JSONP", `call.rs`): at most 64 bytes of
//!   `^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$`, checked by a
//!   separate matcher written here;
//! - `decide` answers a client call in JSONP mode with exactly the decoded
//!   name when it is valid, and rejects it with a plain 400 otherwise;
//! - an accepted name is echoed into the body as `/**/NAME(...);` with a
//!   `Content-Length` that matches, and a rejected one never appears in the
//!   answer (the rejection is byte-for-byte the same whatever the name).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_io::call::{
    decide, is_callback, known_params, AdminGate, Credentials, Decision, Mode,
};
use switchboard_io::head::Method;
use switchboard_io::limits::CALLBACK_BYTES_MAX;
use switchboard_io::query::Params;
use switchboard_io::response::{Encoder, Persist};
use switchboard_io::Listener;

/// Client paths that reach the callback check with only a callback given.
const PATHS: &[&str] = &["/ping", "/poll", "/send", "/connect", "/ui", "/leave"];

fuzz_target!(|data: &[u8]| {
    let [mode, name @ ..] = data else {
        return;
    };
    let text = String::from_utf8_lossy(name);
    let valid = is_callback(&text);
    assert_eq!(valid, reference(text.as_bytes()), "{text:?}");
    if let Ok(raw) = std::str::from_utf8(name) {
        assert_eq!(is_callback(raw), valid);
    }

    // Through decide: percent-encoded or raw in the query.
    let mut query = b"callback=".to_vec();
    if mode & 1 == 1 {
        for b in text.bytes() {
            query.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    } else {
        query.extend(text.bytes().map(|b| match b {
            // Keep the name one parameter: `&` would end it, `+` and `%`
            // would change it.
            b'&' | b'+' | b'%' | b'=' => b'_',
            b => b,
        }));
    }
    let sent = if mode & 1 == 1 {
        text.to_string()
    } else {
        String::from_utf8(query[9..].to_vec()).expect("ASCII substitutions keep UTF-8")
    };
    let valid = is_callback(&sent);
    let mut params = Params::new();
    params.add_form(&query, known_params(Listener::Client));
    let path = PATHS[usize::from(mode >> 1) % PATHS.len()];
    let gate = AdminGate::default();
    let decision = decide(
        Listener::Client,
        Method::Get,
        path,
        &params,
        Credentials::default(),
        &gate,
    );
    let mut out = Vec::new();
    let mut encoder = Encoder::new(Listener::Client);
    let persist = Persist {
        keep_alive: true,
        http10: false,
    };
    let date = [b'D'; 29];
    match decision {
        Decision::Reject(e) => {
            assert!(!valid, "{sent:?} is valid but was rejected");
            assert_eq!(e.status, 400);
            encoder.http_error(&mut out, &e, persist, false, &date);
            let mut plain = Vec::new();
            let baseline = match decide(
                Listener::Client,
                Method::Get,
                path,
                &{
                    let mut p = Params::new();
                    p.add_form(b"callback=a..b", known_params(Listener::Client));
                    p
                },
                Credentials::default(),
                &gate,
            ) {
                Decision::Reject(e) => e,
                other => panic!("a..b: {other:?}"),
            };
            encoder.http_error(&mut plain, &baseline, persist, false, &date);
            assert_eq!(out, plain, "a rejection depends on the name");
        }
        Decision::Answer { mode, response } => {
            check_mode(&mode, &sent, valid);
            encoder.response(&mut out, &response, &mode, persist, false, &date);
            check_envelope(&out, &sent);
        }
        Decision::File(file) => panic!("no client file among the paths: {file:?}"),
        Decision::Call { mode, .. } => {
            check_mode(&mode, &sent, valid);
            let reply = switchboard_io::Reply::Shard(switchboard_shards::model::Response::Done);
            encoder.reply(&mut out, &reply, &mode, persist, false, &date);
            check_envelope(&out, &sent);
        }
    }
});

fn check_mode(mode: &Mode, sent: &str, valid: bool) {
    assert!(valid, "{sent:?} is invalid but was accepted");
    assert_eq!(mode, &Mode::Jsonp(sent.to_owned()));
}

/// `out` is one whole answer whose body is `/**/NAME(...);` and whose
/// `Content-Length` is the body's length.
fn check_envelope(out: &[u8], name: &str) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = std::str::from_utf8(&out[..end]).expect("an ASCII head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: application/javascript"),
        "{head}"
    );
    assert!(
        head.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
        "{head}"
    );
    // JSONP is read by a script tag, never through CORS.
    assert!(!head.contains("Access-Control-Allow-Origin"), "{head}");
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let body = &out[end..];
    assert_eq!(body.len(), length);
    let prefix = format!("/**/{name}(");
    assert!(body.starts_with(prefix.as_bytes()));
    assert!(body.ends_with(b");"));
}

/// The rule, as a small state machine over bytes.
fn reference(name: &[u8]) -> bool {
    if name.len() > CALLBACK_BYTES_MAX {
        return false;
    }
    // true: at the start of a part (a letter, `_` or `$` must come).
    let mut part_start = true;
    for &b in name {
        let head = b.is_ascii_alphabetic() || b == b'_' || b == b'$';
        part_start = match (part_start, b) {
            (true, _) if head => false,
            (true, _) => return false,
            (false, b'.') => true,
            (false, _) if head || b.is_ascii_digit() => false,
            (false, _) => return false,
        };
    }
    !part_start
}
