//! The request parser: arbitrary bytes as a request head (and body), whole
//! and split at an arbitrary point, as the connection loop feeds it.
//!
//! Input: `[mode, a, b, request bytes...]`. `mode & 1` picks tiny limits
//! (request line `8 + a % 128` bytes, header section `8 + b` bytes, body
//! 16 bytes) so every limit is reached at and around its edge; `a, b` also
//! pick the split point.
//!
//! Properties, beyond "no panic":
//! - the resumable parser fed a prefix and then the whole input decides
//!   exactly as a fresh parse of the whole input (a prefix error is the
//!   whole input's error, with the same status);
//! - an accepted head is within every limit, counted independently here:
//!   request line bytes, header section bytes, header fields; its declared
//!   body is within the body limit; it ends at the first empty line;
//! - the path and query are the request target's bytes, as sent;
//! - bytes after the head never change it;
//! - while a head is incomplete the parser holds at most a whole head at
//!   its limits (the connection loop's read buffer bound relies on this);
//! - a body decoded in two reads (draining what the first consumed) is the
//!   body decoded in one, never over the body limit, and while incomplete
//!   it leaves only a bounded tail unconsumed;
//! - every error is one of the statuses a request can get: 400, 413, 414,
//!   431.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_io::body::BodyDecoder;
use switchboard_io::head::{parse_head, Framing, Head, HeadParser, Version};
use switchboard_io::limits::{
    Limits, CHUNK_SIZE_LINE_BYTES_MAX, HEADERS_COUNT_MAX, READ_CHUNK_BYTES,
};
use switchboard_io::{parse_request, HttpError};

fuzz_target!(|data: &[u8]| {
    let [mode, a, b, input @ ..] = data else {
        return;
    };
    let limits = if mode & 1 == 1 {
        Limits {
            request_line_bytes_max: 8 + usize::from(a % 128),
            header_section_bytes_max: 8 + usize::from(*b),
            body_bytes_max: 16,
            ..Limits::default()
        }
    } else {
        Limits::default()
    };
    let split = (usize::from(*a) << 8 | usize::from(*b)) % (input.len() + 1);
    check(input, split, &limits);
});

fn check(input: &[u8], split: usize, limits: &Limits) {
    let fresh = parse_head(input, limits);

    // Resumable: a prefix first, then the whole input.
    let mut resumed = HeadParser::new();
    match resumed.parse(&input[..split], limits) {
        Ok(None) => assert_eq!(resumed.parse(input, limits), fresh),
        Ok(Some(head)) => assert_eq!(fresh, Ok(Some(head))),
        Err(e) => assert_eq!(fresh.as_ref().map_err(|e| e.status), Err(e.status)),
    }

    match &fresh {
        Ok(Some(head)) => {
            check_head(input, head, limits);
            check_body(input, head, split, limits);
        }
        Ok(None) => {
            // The connection loop's read buffer holds a whole head at its
            // limits plus one read; the head parser must have decided
            // before the buffer holds more than the head part.
            let bound = limits.read_buffer_bytes_max() - READ_CHUNK_BYTES;
            assert!(
                input.len() <= bound,
                "undecided after {} bytes (bound {bound})",
                input.len()
            );
        }
        Err(e) => check_error(e),
    }
    // parse_request agrees with the head parser on the head.
    match parse_request(input, limits) {
        Ok(Some(parsed)) => {
            assert_eq!(
                fresh.as_ref().ok().and_then(Option::as_ref),
                Some(&parsed.head)
            );
            assert!(parsed.len <= input.len());
            assert!(parsed.body.len() <= limits.body_bytes_max);
        }
        Ok(None) => assert!(fresh.is_ok()),
        Err(e) => {
            check_error(&e);
            if let Err(head_error) = &fresh {
                assert_eq!(e.status, head_error.status);
            }
        }
    }
}

fn check_error(e: &HttpError) {
    assert!(
        matches!(e.status, 400 | 413 | 414 | 431),
        "status {} while reading a request",
        e.status
    );
}

/// The line without its trailing CR.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn check_head(input: &[u8], head: &Head, limits: &Limits) {
    assert!(head.len <= input.len());
    let raw = &input[..head.len];
    assert!(
        raw.ends_with(b"\n\r\n") || raw.ends_with(b"\n\n"),
        "a head ends with an empty line"
    );
    // Bytes after the head never change it.
    assert_eq!(parse_head(raw, limits), Ok(Some(head.clone())));

    // The limits, counted here independently of the parser.
    let start = if raw.starts_with(b"\r\n") {
        2
    } else {
        usize::from(raw.starts_with(b"\n"))
    };
    let mut lines = raw[start..].split(|&b| b == b'\n');
    let line = strip_cr(lines.next().expect("a request line"));
    assert!(!line.is_empty());
    assert!(
        line.len() <= limits.request_line_bytes_max,
        "request line of {} bytes accepted (max {})",
        line.len(),
        limits.request_line_bytes_max
    );
    let mut section = 0;
    let mut fields = 0;
    let mut hosts = 0;
    let mut ended = false;
    for field in lines {
        if strip_cr(field).is_empty() {
            ended = true;
            break;
        }
        section += field.len() + 1;
        fields += 1;
        let name = field.split(|&b| b == b':').next().unwrap_or(b"");
        hosts += usize::from(name.eq_ignore_ascii_case(b"host"));
    }
    assert!(ended);
    assert!(
        section <= limits.header_section_bytes_max,
        "header section of {section} bytes accepted (max {})",
        limits.header_section_bytes_max
    );
    assert!(
        fields <= HEADERS_COUNT_MAX,
        "{fields} header fields accepted"
    );
    match head.version {
        Version::Http11 => assert_eq!(hosts, 1, "HTTP/1.1 needs exactly one Host"),
        Version::Http10 => assert!(hosts <= 1),
    }

    // Framing.
    match head.framing {
        Framing::Length(n) => assert!(n <= limits.body_bytes_max as u64),
        Framing::Chunked => assert_eq!(head.version, Version::Http11),
    }
    if head.expect_continue {
        assert_ne!(head.framing, Framing::Length(0));
        assert_eq!(head.version, Version::Http11);
    }

    // Path and query are the target's bytes, as sent.
    let mut parts = line.split(|&b| b == b' ');
    let _method = parts.next();
    let target = parts.next().expect("a request target");
    assert!(head.path.starts_with('/'), "path {:?}", head.path);
    assert!(!head.path.contains('?'));
    if target.starts_with(b"/") {
        let mut rebuilt = head.path.clone();
        if target.contains(&b'?') {
            rebuilt.push('?');
            rebuilt.push_str(&head.query);
        }
        assert_eq!(rebuilt.as_bytes(), target);
    } else {
        let lower = target.to_ascii_lowercase();
        assert!(lower.starts_with(b"http://") || lower.starts_with(b"https://"));
        assert!(target.ends_with(head.query.as_bytes()));
    }
}

/// Decodes the body after `head` in one go and in two reads split at
/// `split` (as the connection loop does: drain what was consumed, append
/// what came next) and compares.
fn check_body(input: &[u8], head: &Head, split: usize, limits: &Limits) {
    let rest = &input[head.len..];
    let mut whole = Vec::new();
    let mut decoder = BodyDecoder::new(head.framing);
    let result = decoder.decode(rest, &mut whole, limits);
    assert!(whole.len() <= limits.body_bytes_max);
    match result {
        Ok(used) => {
            assert!(used <= rest.len());
            if let Framing::Length(n) = head.framing {
                assert_eq!(whole.len() as u64, n.min(rest.len() as u64));
            }
            if !decoder.is_done() {
                // What stays in the buffer while the body is incomplete.
                let tail = rest.len() - used;
                assert!(
                    tail <= CHUNK_SIZE_LINE_BYTES_MAX.max(limits.header_section_bytes_max),
                    "{tail} body bytes buffered unconsumed"
                );
            }
        }
        Err(e) => check_error(&e),
    }

    let split = split.min(rest.len());
    let mut twice = Vec::new();
    let mut decoder2 = BodyDecoder::new(head.framing);
    let mut buf = rest[..split].to_vec();
    let second = decoder2.decode(&buf, &mut twice, limits).and_then(|first| {
        buf.drain(..first);
        buf.extend_from_slice(&rest[split..]);
        decoder2
            .decode(&buf, &mut twice, limits)
            .map(|second| first + second)
    });
    match (&result, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(*a, b);
            assert_eq!(whole, twice);
            assert_eq!(decoder.is_done(), decoder2.is_done());
        }
        (Err(a), Err(b)) => assert_eq!(a.status, b.status),
        (a, b) => panic!("one read: {a:?}, two reads: {b:?}"),
    }
}
