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

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "GET /poll?sid=42-0123456789abcdef0011223344556677&since=3&wait=10&callback=cb HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 62\r\n\r\nsid=42-0123456789abcdef0011223344556677&to=7&text=h%C3%A9llo+",
    "POST /ui?callback=a.b HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n2b\r\nsid=42-0123456789abcdef0011223344556677&sta\r\n10;x=y\r\nte=%7B%22a%22%3A1%7D\r\n0\r\nT: v\r\n\r\n",
    "GET /connect?token=1.2.abc&tab=t-1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /ping HTTP/1.1\r\nHost: y\r\n\r\n",
    "POST /kick?user=5 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "GET /history?sid=42-0123456789abcdef0011223344556677&with=3&before=9&limit=100 HTTP/1.1\r\nHost: x\r\n\r\n",
    "\r\nHEAD http://h/read?sid=1&with=2&upto=3 HTTP/1.1\nHost: h\n\n",
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"%",
    b"%zz",
    b"%ff",
    b"%C3%A9",
    b"&",
    b"=",
    b"+",
    b"?",
    b"\xff",
    b"\0",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"callback=",
    b"sid=",
    b"99999999999999999999999",
    b"Host: x\r\n",
    b"\r\n\r\n",
    b" ",
    b";",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            4 if at < input.len() => {
                let end = (at + rng.below(64)).min(input.len());
                let piece = input[at..end].to_vec();
                for _ in 0..rng.below(50) {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            5 => input.truncate(at),
            _ => {
                let seed = SEEDS[rng.below(SEEDS.len())].as_bytes();
                let from = rng.below(seed.len());
                input.splice(at..at, seed[from..].iter().copied());
            }
        }
    }
}

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
