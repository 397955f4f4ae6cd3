//! A fuzz target without a fuzzer: 10 000 random and mutated byte strings
//! (fixed-seed xorshift, so a failure reproduces) through every entry point
//! that sees client bytes: `parse_request`, the resumable head parser,
//! parameter decoding, `decide` and the encoder. Nothing may panic, and
//! parsing must be prefix-monotonic: what a prefix decides (a request or an
//! error), the whole input decides the same way.

use switchboard_io::call::{decide, is_callback, known_params, AdminGate, Decision, Mode};
use switchboard_io::head::{parse_head, HeadParser, Method};
use switchboard_io::query::Params;
use switchboard_io::response::{Encoder, Persist};
use switchboard_io::{parse_request, Limits, Listener, Reply};
use switchboard_shards::model::Response;

mod common;

use common::{mutate, Rng, SEEDS};

/// Runs every entry point on `input` with `limits`.
fn exercise(input: &[u8], split: usize, limits: &Limits) {
    let whole = parse_request(input, limits);
    // Prefix-monotonic, for the whole request and for the resumable head
    // parser fed the prefix first.
    let prefix = parse_request(&input[..split], limits);
    match &prefix {
        Ok(Some(p)) => assert_eq!(whole.as_ref().ok(), Some(&Some(p.clone()))),
        Err(_) => assert!(whole.is_err(), "prefix failed, whole did not"),
        Ok(None) => {}
    }
    let fresh = parse_head(input, limits);
    let mut resumed = HeadParser::new();
    match resumed.parse(&input[..split], limits) {
        Ok(None) => assert_eq!(resumed.parse(input, limits), fresh),
        Ok(Some(head)) => assert_eq!(fresh, Ok(Some(head))),
        Err(e) => assert_eq!(fresh.map_err(|e| e.status), Err(e.status)),
    }
    let Ok(Some(parsed)) = whole else { return };
    assert!(parsed.len <= input.len());
    assert!(parsed.body.len() <= limits.body_bytes_max);
    let mut out = Vec::new();
    let gate = AdminGate::new("127.0.0.1:8081".parse().unwrap(), Some("s3cret".into()));
    let persist = Persist {
        keep_alive: parsed.head.keep_alive,
        http10: false,
    };
    for listener in [Listener::Client, Listener::Admin] {
        let mut encoder = Encoder::new(listener);
        let mut params = Params::new();
        params.add_form(parsed.head.query.as_bytes(), known_params(listener));
        if parsed.head.method == Method::Post && parsed.head.form_body {
            params.add_form(&parsed.body, known_params(listener));
        }
        let decision = decide(
            listener,
            parsed.head.method,
            &parsed.head.path,
            &params,
            parsed.head.credentials(),
            &gate,
        );
        let date = [b'D'; 29];
        match decision {
            Decision::Reject(e) => encoder.http_error(&mut out, &e, persist, false, &date),
            Decision::Answer { mode, response } => {
                check_mode(&mode);
                encoder.response(&mut out, &response, &mode, persist, false, &date);
            }
            Decision::Call { mode, call } => {
                check_mode(&mode);
                let reply = Reply::Json {
                    body: format!("{{\"call\":{:?}}}", format!("{call:?}")),
                };
                encoder.reply(&mut out, &reply, &mode, persist, false, &date);
                encoder.response(&mut out, &Response::Done, &mode, persist, false, &date);
            }
            Decision::File(file) => {
                assert_eq!(listener, Listener::Client);
                let fresh = file.not_modified(parsed.head.if_none_match.as_deref());
                encoder.client_file(&mut out, file, fresh, persist, &date);
            }
        }
        assert!(out.starts_with(b"HTTP/1.1 "));
    }
}

fn check_mode(mode: &Mode) {
    if let Mode::Jsonp(name) = mode {
        assert!(is_callback(name), "echoed an invalid callback {name:?}");
    }
}

#[test]
fn random_inputs_never_panic() {
    let seed = 0x5eed_cafe_f00d_u64;
    println!("seed {seed:#x}");
    let mut rng = Rng(seed);
    let tiny = Limits {
        request_line_bytes_max: 64,
        header_section_bytes_max: 128,
        body_bytes_max: 16,
        ..Limits::default()
    };
    let default = Limits::default();
    let mut requests = 0;
    for i in 0..10_000 {
        let mut input = if i % 10 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec()
        };
        if i % 10 != 1 {
            mutate(&mut rng, &mut input);
        }
        let split = rng.below(input.len() + 1);
        exercise(&input, split, &default);
        exercise(&input, split, &tiny);
        requests += usize::from(matches!(parse_request(&input, &default), Ok(Some(_))));
    }
    println!("{requests} of 10000 inputs parsed as requests");
    // The mutations must leave enough valid requests to reach the decoder.
    assert!(requests > 1000, "only {requests} inputs parsed as requests");
}
