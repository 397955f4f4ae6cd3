//! `application/x-www-form-urlencoded` decoding, for query strings and POST
//! bodies alike: pairs split on `&`, name and value split on the first `=`,
//! `+` is a space, percent-escapes are strict (`%zz` and a truncated `%4`
//! are errors) and the decoded bytes must be UTF-8.
//!
//! Only the names the caller knows are kept (unknown parameters are ignored,
//! docs/protocol.md, "Parameters"), so memory and the duplicate check stay
//! small whatever the input. Failures are kept per parameter rather than
//! failing the whole string, because the protocol answers them in a fixed
//! order: a broken `text` must not hide a valid `callback` or `sid`.

/// Why one parameter cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// Given more than once (also once in the query and once in the body).
    Twice,
    /// A `%` not followed by two hex digits.
    BadPercent,
    /// The decoded bytes are not UTF-8.
    BadUtf8,
}

impl ParamError {
    /// A sentence naming the parameter, for the error body.
    pub fn message(self, name: &str) -> String {
        match self {
            ParamError::Twice => format!("parameter `{name}` is given more than once"),
            ParamError::BadPercent => format!("parameter `{name}` has bad percent-encoding"),
            ParamError::BadUtf8 => format!("parameter `{name}` is not valid UTF-8"),
        }
    }
}

/// The known parameters of one request, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Each known name seen, with its value or why it is unusable. At most
    /// one entry per name (a repeat turns the entry into `Twice`).
    entries: Vec<(&'static str, Result<String, ParamError>)>,
    /// A parameter whose *name* cannot be decoded: it might have been a
    /// known one, so the request carries an undecodable parameter.
    pub broken: Option<ParamError>,
}

impl Params {
    /// No parameters.
    pub fn new() -> Params {
        Params::default()
    }

    /// Decodes one form-encoded string (a query string or a body) and adds
    /// its parameters whose names are in `known`. Call it for the query and
    /// then the body: a name in both is `Twice`.
    pub fn add_form(&mut self, input: &[u8], known: &[&'static str]) {
        let mut scratch = Vec::new();
        for pair in input.split(|&b| b == b'&') {
            if pair.is_empty() {
                continue;
            }
            let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = match decode(raw_name, &mut scratch) {
                Ok(name) => name,
                Err(e) => {
                    self.broken.get_or_insert(e);
                    continue;
                }
            };
            let Some(&known_name) = known.iter().find(|k| **k == name) else {
                continue;
            };
            if let Some(entry) = self.entries.iter_mut().find(|(n, _)| *n == known_name) {
                entry.1 = Err(ParamError::Twice);
                continue;
            }
            let value = decode(raw_value, &mut scratch).map(str::to_owned);
            self.entries.push((known_name, value));
        }
    }

    /// The parameter `name`: `None` when absent, else its value or why it
    /// is unusable.
    pub fn get(&self, name: &str) -> Option<Result<&str, ParamError>> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref().map(String::as_str).map_err(|e| *e))
    }
}

/// Decodes one form-encoded component into `scratch` (cleared first) and
/// returns it as text.
pub fn decode<'a>(input: &[u8], scratch: &'a mut Vec<u8>) -> Result<&'a str, ParamError> {
    scratch.clear();
    scratch.reserve(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => {
                scratch.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = input.get(i + 1).and_then(|&b| hex(b));
                let lo = input.get(i + 2).and_then(|&b| hex(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => scratch.push(hi << 4 | lo),
                    _ => return Err(ParamError::BadPercent),
                }
                i += 3;
            }
            b => {
                scratch.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(scratch).map_err(|_| ParamError::BadUtf8)
}

/// The value of one hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["a", "b", "text"];

    /// Decodes `query` then `body` and compares the known parameters and
    /// the broken-name flag.
    fn check(
        query: &str,
        body: &str,
        expected: &[(&str, Result<&str, ParamError>)],
        broken: Option<ParamError>,
    ) {
        let mut params = Params::new();
        params.add_form(query.as_bytes(), KNOWN);
        params.add_form(body.as_bytes(), KNOWN);
        for name in KNOWN {
            let want = expected.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            assert_eq!(params.get(name), want, "{query:?} {body:?}: `{name}`");
        }
        assert_eq!(params.broken, broken, "{query:?} {body:?}");
    }

    #[test]
    fn decoding() {
        check("", "", &[], None);
        check("a=1&b=2", "", &[("a", Ok("1")), ("b", Ok("2"))], None);
        check("a=x+y%20z", "", &[("a", Ok("x y z"))], None);
        check("a=%2B%26%3d", "", &[("a", Ok("+&="))], None);
        check("a=%e2%82%AC", "", &[("a", Ok("€"))], None);
        check(
            "text=h%C3%A9llo+w%C3%B6rld",
            "",
            &[("text", Ok("héllo wörld"))],
            None,
        );
        check("a=%F0%9F%98%80", "", &[("a", Ok("😀"))], None);
        check("a", "", &[("a", Ok(""))], None);
        check("a=", "", &[("a", Ok(""))], None);
        check("a==b", "", &[("a", Ok("=b"))], None);
        check("&&a=1&", "", &[("a", Ok("1"))], None);
        check("%61=encoded+name", "", &[("a", Ok("encoded name"))], None);
        check("", "a=from+body", &[("a", Ok("from body"))], None);
        check("a=q", "b=body", &[("a", Ok("q")), ("b", Ok("body"))], None);
        // Unknown names are ignored, even with undecodable values or twice.
        check("zz=%zz&zz=1&_=123&a=1", "", &[("a", Ok("1"))], None);
        // `;` is not a separator.
        check("a=1;b=2", "", &[("a", Ok("1;b=2"))], None);
    }

    #[test]
    fn failures() {
        check("a=%zz", "", &[("a", Err(ParamError::BadPercent))], None);
        check("a=%4", "", &[("a", Err(ParamError::BadPercent))], None);
        check("a=%", "", &[("a", Err(ParamError::BadPercent))], None);
        check("a=%%41", "", &[("a", Err(ParamError::BadPercent))], None);
        check("a=%ff", "", &[("a", Err(ParamError::BadUtf8))], None);
        check("a=%C3%28", "", &[("a", Err(ParamError::BadUtf8))], None);
        check("a=%ED%A0%80", "", &[("a", Err(ParamError::BadUtf8))], None);
        check("a=%C3", "", &[("a", Err(ParamError::BadUtf8))], None);
        check("a=1&a=1", "", &[("a", Err(ParamError::Twice))], None);
        check("a=1&a=%zz", "", &[("a", Err(ParamError::Twice))], None);
        check("a=1&%61=2", "", &[("a", Err(ParamError::Twice))], None);
        check("a=1", "a=1", &[("a", Err(ParamError::Twice))], None);
        check(
            "a=1&b=2",
            "a=1",
            &[("a", Err(ParamError::Twice)), ("b", Ok("2"))],
            None,
        );
        // A name that cannot be decoded might have been a known one.
        check(
            "%zz=1&a=1",
            "",
            &[("a", Ok("1"))],
            Some(ParamError::BadPercent),
        );
        check("%ff=1", "", &[], Some(ParamError::BadUtf8));
        // A raw non-UTF-8 byte (a POST body can carry one).
        let mut params = Params::new();
        params.add_form(b"a=\xff&b=ok", KNOWN);
        assert_eq!(params.get("a"), Some(Err(ParamError::BadUtf8)));
        assert_eq!(params.get("b"), Some(Ok("ok")));
    }

    #[test]
    fn messages_name_the_parameter() {
        assert_eq!(
            ParamError::Twice.message("sid"),
            "parameter `sid` is given more than once"
        );
        assert!(ParamError::BadPercent.message("text").contains("`text`"));
        assert!(ParamError::BadUtf8.message("to").contains("`to`"));
    }
}
