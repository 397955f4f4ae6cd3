//! Form decoding (query strings and POST bodies): `Params::add_form` and
//! `query::decode`, checked against a reference decoder written here from
//! the rules in `query.rs` and docs/protocol.md, "Parameters".
//!
//! Input: `[mode, bytes...]`. The bytes are cut at the first `0xff` into a
//! query and a body (as a form POST gives both).
//!
//! Properties, beyond "no panic":
//! - `decode` accepts exactly what the reference accepts (`+` is a space,
//!   `%` takes two hex digits, the result is UTF-8) and yields the same
//!   text, never longer than its input;
//! - round trip: any text, percent-encoded by the rules (with `mode`
//!   choosing which bytes are escaped and whether a space is `+` or
//!   `%20`), decodes back to itself, and so does a form built from it;
//! - `Params` keeps exactly the known names, each with the reference's
//!   answer: absent, its decoded value, its decoding error, or `Twice`
//!   when given more than once across query and body; `broken` is the
//!   first undecodable name's error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_io::call::known_params;
use switchboard_io::query::{decode, ParamError, Params};
use switchboard_io::Listener;

fuzz_target!(|data: &[u8]| {
    let [mode, input @ ..] = data else {
        return;
    };
    let (query, body) = match input.iter().position(|&b| b == 0xff) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &b""[..]),
    };

    // decode agrees with the reference on any bytes.
    let mut scratch = Vec::new();
    for part in [query, body] {
        let got = decode(part, &mut scratch).map(str::to_owned);
        assert_eq!(got, reference_decode(part), "{part:?}");
        if let Ok(text) = &got {
            assert!(text.len() <= part.len());
        }
    }

    // Round trip: text -> encoded -> decoded is the text.
    let text = String::from_utf8_lossy(input);
    let encoded = encode(&text, *mode);
    assert_eq!(decode(&encoded, &mut scratch), Ok(&*text), "{encoded:?}");

    // A form with a known name and that text as its value gives it back.
    let known = known_params(Listener::Client);
    let name = known[usize::from(*mode) % known.len()];
    let mut form = b"x=1&".to_vec();
    form.extend_from_slice(name.as_bytes());
    form.push(b'=');
    form.extend_from_slice(&encoded);
    let mut params = Params::new();
    params.add_form(&form, known);
    assert_eq!(params.get(name), Some(Ok(&*text)));
    assert_eq!(params.broken, None);

    // Params against the reference, for both listeners' names.
    for listener in [Listener::Client, Listener::Admin] {
        let known = known_params(listener);
        let mut params = Params::new();
        params.add_form(query, known);
        params.add_form(body, known);
        let (want, broken) = reference_params(&[query, body], known);
        for name in known {
            let want = want.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
            assert_eq!(
                params.get(name).map(|v| v.map(str::to_owned)),
                want,
                "`{name}`"
            );
        }
        assert_eq!(params.broken, broken);
    }
});

/// The decoding rules, written plainly.
fn reference_decode(input: &[u8]) -> Result<String, ParamError> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    rest.first().and_then(|c| (*c as char).to_digit(16)),
                    rest.get(1).and_then(|c| (*c as char).to_digit(16)),
                ) else {
                    return Err(ParamError::BadPercent);
                };
                out.push((hi * 16 + lo) as u8);
                rest = &rest[2..];
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| ParamError::BadUtf8)
}

/// Percent-encodes `text`. Bit 1 of `mode`: escape every byte (else only
/// those that must be: `%`, `+`, `&`, `=`, controls and non-ASCII); bit 2:
/// a space is `%20` (else `+`); bit 3: lowercase hex digits.
fn encode(text: &str, mode: u8) -> Vec<u8> {
    let all = mode & 2 != 0;
    let space_escaped = mode & 4 != 0;
    let digits: &[u8; 16] = if mode & 8 != 0 {
        b"0123456789abcdef"
    } else {
        b"0123456789ABCDEF"
    };
    let mut out = Vec::new();
    for &b in text.as_bytes() {
        let must = matches!(b, b'%' | b'+' | b'&' | b'=' | b'#') || !b.is_ascii_graphic();
        if b == b' ' && !space_escaped && !all {
            out.push(b'+');
        } else if all || must {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        } else {
            out.push(b);
        }
    }
    out
}

/// What `Params` must hold after decoding `forms` in order: per known
/// name, its value or error (`Twice` when seen more than once), and the
/// first undecodable name's error.
#[allow(clippy::type_complexity)]
fn reference_params(
    forms: &[&[u8]],
    known: &[&'static str],
) -> (
    Vec<(&'static str, Result<String, ParamError>)>,
    Option<ParamError>,
) {
    let mut seen: Vec<(&'static str, Vec<&[u8]>)> = Vec::new();
    let mut broken = None;
    for form in forms {
        for pair in form.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let mut halves = pair.splitn(2, |&b| b == b'=');
            let raw_name = halves.next().unwrap_or(b"");
            let raw_value = halves.next().unwrap_or(b"");
            let name = match reference_decode(raw_name) {
                Ok(name) => name,
                Err(e) => {
                    broken = broken.or(Some(e));
                    continue;
                }
            };
            let Some(known_name) = known.iter().find(|k| **k == name) else {
                continue;
            };
            match seen.iter_mut().find(|(n, _)| n == known_name) {
                Some((_, values)) => values.push(raw_value),
                None => seen.push((known_name, vec![raw_value])),
            }
        }
    }
    let values = seen
        .into_iter()
        .map(|(name, values)| {
            let value = match values.as_slice() {
                [one] => reference_decode(one),
                _ => Err(ParamError::Twice),
            };
            (name, value)
        })
        .collect();
    (values, broken)
}
