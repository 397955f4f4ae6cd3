//! The request head: request line and header section, parsed from the
//! connection's read buffer with `httparse`. We scan lines ourselves first
//! to enforce the protocol's limits exactly and early (a 64 KiB + 1 request
//! line is refused before its end arrives), then hand the complete head to
//! `httparse` once. "Need more bytes" is `Ok(None)`. The scan is resumable
//! ([`HeadParser`] keeps its place), so a head dribbled one byte per read
//! costs linear, not quadratic, time.
//!
//! Framing decisions (keep-alive, `Content-Length`, `Transfer-Encoding`,
//! `Expect`) are made here, on the head alone; the body is `body.rs`.

use switchboard_shards::model::ErrorCode;

use crate::call::Credentials;
use crate::limits::{Limits, HEADERS_COUNT_MAX};

/// An HTTP-level failure (docs/protocol.md, "HTTP-level failures"): answered
/// with its own status and a plain JSON error body, never JSONP-wrapped. Those
/// found while reading a request (head, body, deadlines) also close the
/// connection gracefully; 404 and 405, found by routing, keep it open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// The HTTP status: 400, 404, 405, 408, 413, 414 or 431.
    pub status: u16,
    /// The protocol error code in the body: `bad_request` (400, 405, 408),
    /// `not_found` (404) or `too_large` (413, 414, 431).
    pub code: ErrorCode,
    /// A sentence for humans; static, so it never echoes client input.
    pub message: &'static str,
    /// The methods the path allows, for the `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl HttpError {
    /// 400: the request cannot be parsed or framed.
    pub const fn bad_request(message: &'static str) -> HttpError {
        HttpError {
            status: 400,
            code: ErrorCode::BadRequest,
            message,
            allow: None,
        }
    }

    /// 404: no such path on this listener.
    pub const fn not_found() -> HttpError {
        HttpError {
            status: 404,
            code: ErrorCode::NotFound,
            message: "no such path",
            allow: None,
        }
    }

    /// 405: the path exists but not for this method.
    pub const fn method_not_allowed(allow: &'static str) -> HttpError {
        HttpError {
            status: 405,
            code: ErrorCode::BadRequest,
            message: "method not allowed for this path",
            allow: Some(allow),
        }
    }

    /// 408: the head or body did not arrive in time.
    pub const fn timeout(message: &'static str) -> HttpError {
        HttpError {
            status: 408,
            code: ErrorCode::BadRequest,
            message,
            allow: None,
        }
    }

    /// 413: the body is over its limit.
    pub const fn body_too_large() -> HttpError {
        HttpError {
            status: 413,
            code: ErrorCode::TooLarge,
            message: "request body too large",
            allow: None,
        }
    }

    /// 414: the request line is over its limit.
    pub const fn line_too_long() -> HttpError {
        HttpError {
            status: 414,
            code: ErrorCode::TooLarge,
            message: "request line too long",
            allow: None,
        }
    }

    /// 431: the header section (or trailer section) is over its limits.
    pub const fn headers_too_large() -> HttpError {
        HttpError {
            status: 431,
            code: ErrorCode::TooLarge,
            message: "request header fields too large",
            allow: None,
        }
    }
}

/// The request method. Only `GET` and `POST` are served; the others are kept
/// so that routing can answer 404 before 405 (docs/protocol.md, "Check
/// order").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    /// Answered like any unsupported method (405), but without a body, as
    /// HEAD requires.
    Head,
    /// Any other method: 405 on a known path, 404 elsewhere.
    Other,
}

/// The HTTP version of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (`Content-Length`, or 0 when neither header
    /// is present), already checked against the body limit.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head, owning its strings so the read buffer can be
/// drained and refilled while the call runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The target's path, as sent (not percent-decoded: paths are matched
    /// literally).
    pub path: String,
    /// The target's query string after `?` (empty when there is none), not
    /// yet decoded.
    pub query: String,
    /// The version.
    pub version: Version,
    /// Whether the connection stays open after the answer: the version's
    /// default, changed by `Connection: close` / `keep-alive`.
    pub keep_alive: bool,
    /// How the body is framed.
    pub framing: Framing,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body: the
    /// client waits for `100 Continue` before sending it.
    pub expect_continue: bool,
    /// `Content-Type` is `application/x-www-form-urlencoded` (any
    /// parameters): a POST body then carries parameters.
    pub form_body: bool,
    /// The `Authorization` header's value, if any (admin bearer token).
    pub authorization: Option<Vec<u8>>,
    /// The `Host` header's value, if any (the admin listener checks it).
    pub host: Option<Vec<u8>>,
    /// The `If-None-Match` header's value, if any (several are joined
    /// with `, `, as one list): a client file already cached.
    pub if_none_match: Option<Vec<u8>>,
    /// The request carries `Origin` or `Sec-Fetch-Site`: a browser sent it
    /// (the admin listener refuses it).
    pub from_browser: bool,
    /// Bytes of the buffer the head took (with an ignored leading empty
    /// line and the final empty line): where the body starts.
    pub len: usize,
}

/// A resumable head parser. Feed it the same growing buffer (its prefix
/// must not change between calls) until it answers; make a new one (or
/// [`HeadParser::reset`]) for the next request.
#[derive(Clone, Debug, Default)]
pub struct HeadParser {
    /// Where the request line starts, once known (after an ignored empty
    /// line, RFC 9112 §2.2).
    start: Option<usize>,
    /// Whether the request line is complete (and within its limit).
    line_done: bool,
    /// Where the request line ends (after its LF), once `line_done`.
    line_end: usize,
    /// Start of the header line being scanned.
    line_start: usize,
    /// Bytes before this index are scanned (no line end left unseen).
    scanned: usize,
    /// Bytes of the complete header lines so far, with their line ends.
    section_bytes: usize,
    /// Complete header lines so far.
    fields: usize,
}

/// Byte position of `needle` in `hay`.
fn find(hay: &[u8], needle: u8) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

impl HeadParser {
    /// A parser at the start of a request.
    pub fn new() -> HeadParser {
        HeadParser::default()
    }

    /// Forgets everything, for the next request.
    pub fn reset(&mut self) {
        *self = HeadParser::default();
    }

    /// The path of the request line at the start of `buf`, once that line
    /// was read and found valid (`None` before): what a head that failed
    /// afterwards (a header over a limit, a body too large) is counted
    /// under.
    pub fn path<'b>(&self, buf: &'b [u8]) -> Option<&'b str> {
        let start = self.start.filter(|_| self.line_done)?;
        let mut req = httparse::Request::new(&mut []);
        // A valid line with no room for headers is `Partial`, path set.
        let _ = req.parse(buf.get(start..self.line_end)?);
        split_target(req.path?).ok().map(|(path, _)| path)
    }

    /// Parses the head at the start of `buf`: `Ok(None)` while more bytes
    /// are needed, an [`HttpError`] as soon as the head cannot be valid.
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
        let start = match self.start {
            Some(start) => start,
            None => {
                // One empty line before the request line is ignored (old
                // clients send a CRLF after a POST body); more is junk.
                let start = match buf {
                    [] | [b'\r'] => return Ok(None),
                    [b'\r', b'\n', ..] => 2,
                    [b'\n', ..] => 1,
                    [b'\r', ..] => return Err(HttpError::bad_request("bare CR in request line")),
                    _ => 0,
                };
                self.start = Some(start);
                self.scanned = start;
                start
            }
        };
        if !self.line_done {
            match find(&buf[self.scanned..], b'\n') {
                None => {
                    self.scanned = buf.len();
                    // A trailing CR may be the line's end; anything else is
                    // line, so over the limit it is 414 already.
                    let mut line = buf.len() - start;
                    if buf.len() > start && buf[buf.len() - 1] == b'\r' {
                        line -= 1;
                    }
                    if line > limits.request_line_bytes_max {
                        return Err(HttpError::line_too_long());
                    }
                    return Ok(None);
                }
                Some(i) => {
                    let lf = self.scanned + i;
                    let mut line = lf - start;
                    if line > 0 && buf[lf - 1] == b'\r' {
                        line -= 1;
                    }
                    if line > limits.request_line_bytes_max {
                        return Err(HttpError::line_too_long());
                    }
                    if line == 0 {
                        return Err(HttpError::bad_request(
                            "empty lines before the request line",
                        ));
                    }
                    // An unparseable request line is a bad request whatever
                    // follows it: decide now, not at the header limits.
                    check_request_line(&buf[start..=lf])?;
                    self.line_done = true;
                    self.line_end = lf + 1;
                    self.scanned = lf + 1;
                    self.line_start = lf + 1;
                }
            }
        }
        let end = loop {
            match find(&buf[self.scanned..], b'\n') {
                None => {
                    self.scanned = buf.len();
                    let partial = &buf[self.line_start..];
                    // A lone CR may be the final empty line; anything else
                    // is a header line that will take at least one more
                    // byte (its LF), so the limits can be decided now.
                    if !partial.is_empty()
                        && partial != b"\r"
                        && (self.section_bytes + partial.len() + 1
                            > limits.header_section_bytes_max
                            || self.fields + 1 > HEADERS_COUNT_MAX)
                    {
                        return Err(HttpError::headers_too_large());
                    }
                    return Ok(None);
                }
                Some(i) => {
                    let lf = self.scanned + i;
                    let line = &buf[self.line_start..lf];
                    if line.is_empty() || line == b"\r" {
                        break lf + 1;
                    }
                    self.section_bytes += lf + 1 - self.line_start;
                    self.fields += 1;
                    if self.section_bytes > limits.header_section_bytes_max
                        || self.fields > HEADERS_COUNT_MAX
                    {
                        return Err(HttpError::headers_too_large());
                    }
                    self.line_start = lf + 1;
                    self.scanned = lf + 1;
                }
            }
        };
        let head = interpret(&buf[start..end], limits)?;
        Ok(Some(Head { len: end, ..head }))
    }
}

/// Parses one head with a fresh parser (tests, fuzzing, one-shot use).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    HeadParser::new().parse(buf, limits)
}

/// The answer to an `httparse` failure.
fn parse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::Version => HttpError::bad_request("unsupported HTTP version"),
        httparse::Error::TooManyHeaders => HttpError::headers_too_large(),
        httparse::Error::Token | httparse::Error::NewLine => {
            HttpError::bad_request("malformed request line")
        }
        _ => HttpError::bad_request("malformed header field"),
    }
}

/// Checks a complete request line (with its line end) on its own, so a
/// line that can never parse is refused before the header section arrives.
/// `httparse` with room for no header stops where the headers would
/// start: a valid line is `Partial` there.
fn check_request_line(line: &[u8]) -> Result<(), HttpError> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse(line) {
        Ok(_) => Ok(()),
        Err(e) => Err(parse_error(e)),
    }
}

/// Runs `httparse` on a complete head (within limits) and makes the
/// framing decisions. `len` of the result is left for the caller.
fn interpret(head: &[u8], limits: &Limits) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // Our scan found the final empty line, so httparse should have too.
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::bad_request("malformed request head"))
        }
        Err(e) => return Err(parse_error(e)),
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HttpError::bad_request("unsupported HTTP version")),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("HEAD") => Method::Head,
        _ => Method::Other,
    };
    let (path, query) = split_target(req.path.unwrap_or(""))?;

    let mut keep_alive = version == Version::Http11;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut expect_continue = false;
    let mut content_type: Option<&[u8]> = None;
    let mut authorization: Option<Vec<u8>> = None;
    let mut hosts = 0usize;
    let mut host: Option<Vec<u8>> = None;
    let mut if_none_match: Option<Vec<u8>> = None;
    let mut from_browser = false;
    for h in req.headers.iter() {
        let value = h.value.trim_ascii();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Two of them (even equal) are a smuggling attempt or a broken
            // client: refuse rather than guess.
            if content_length.is_some() {
                return Err(HttpError::bad_request("Content-Length given twice"));
            }
            content_length = Some(parse_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(HttpError::bad_request("Transfer-Encoding given twice"));
            }
            transfer_encoding = true;
            // Only plain `chunked`: we decode no content codings, and
            // anything layered on chunked is undecodable to us. 400 rather
            // than 501 so every framing failure is one status.
            if !value.eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::bad_request("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::Http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            // Other expectations MAY get 417; we ignore them.
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            if content_type.is_some() {
                return Err(HttpError::bad_request("Content-Type given twice"));
            }
            content_type = Some(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(HttpError::bad_request("Authorization given twice"));
            }
            authorization = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(value.to_vec());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            let list = if_none_match.get_or_insert_with(Vec::new);
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value);
        } else if name.eq_ignore_ascii_case("origin") || name.eq_ignore_ascii_case("sec-fetch-site")
        {
            from_browser = true;
        }
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
    if hosts > 1 || (hosts == 0 && version == Version::Http11) {
        return Err(HttpError::bad_request(
            "exactly one Host header is required",
        ));
    }
    let framing = if chunked {
        // Both framings at once is the classic request-smuggling shape;
        // chunked in HTTP/1.0 cannot be delimited safely (RFC 9112 §6.1).
        if content_length.is_some() {
            return Err(HttpError::bad_request(
                "both Content-Length and Transfer-Encoding given",
            ));
        }
        if version == Version::Http10 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        Framing::Chunked
    } else {
        let length = content_length.unwrap_or(0);
        if length > limits.body_bytes_max as u64 {
            return Err(HttpError::body_too_large());
        }
        Framing::Length(length)
    };
    let has_body = framing != Framing::Length(0);
    let form_body = content_type.is_some_and(is_form);
    Ok(Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        version,
        keep_alive,
        framing,
        expect_continue: expect_continue && has_body && version == Version::Http11,
        form_body,
        authorization,
        host,
        if_none_match,
        from_browser,
        len: 0,
    })
}

impl Head {
    /// What the admin gate reads from this head.
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            authorization: self.authorization.as_deref(),
            host: self.host.as_deref(),
            from_browser: self.from_browser,
        }
    }
}

/// `Content-Length`: digits only. Too many digits for a u64 is a declared
/// size over any limit, so it saturates (and gets 413).
fn parse_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::bad_request("Content-Length is not a number"));
    }
    Ok(value.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Whether a `Content-Type` is the form encoding (parameters such as
/// `charset` are ignored: parameters are always UTF-8).
fn is_form(value: &[u8]) -> bool {
    let media = value.split(|&b| b == b';').next().unwrap_or(b"");
    media
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// Splits a request target into path and query. Origin form (`/path?q`) is
/// the norm; absolute form (`http://host/path?q`) must be accepted too (RFC
/// 9112 §3.2.2), and its authority is ignored. Anything else is 400.
fn split_target(target: &str) -> Result<(&str, &str), HttpError> {
    let origin = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(HttpError::bad_request("request target is not a path"));
        };
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            // `http://host?q`: the path is `/`.
            Some(i) => return Ok(("/", &rest[i + 1..])),
            None => "/",
        }
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path, query),
        None => (origin, ""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a valid head must parse to (`len` is checked separately).
    struct Want {
        method: Method,
        path: &'static str,
        query: &'static str,
        version: Version,
        keep_alive: bool,
        framing: Framing,
        expect_continue: bool,
        form_body: bool,
        authorization: Option<&'static [u8]>,
    }

    /// A plain HTTP/1.1 GET of `/`.
    const GET: Want = Want {
        method: Method::Get,
        path: "/",
        query: "",
        version: Version::Http11,
        keep_alive: true,
        framing: Framing::Length(0),
        expect_continue: false,
        form_body: false,
        authorization: None,
    };

    /// Parses `input` (a complete head followed by `rest`) and compares;
    /// for a valid head, also re-runs it split at every byte boundary: each
    /// strict prefix must need more bytes, with a fresh parser and with one
    /// resumed across the growing prefixes.
    fn check(input: &[u8], rest: &[u8], expected: Result<Want, u16>) {
        let limits = Limits::default();
        let mut whole = input.to_vec();
        whole.extend_from_slice(rest);
        let got = parse_head(&whole, &limits);
        let want = match expected {
            Err(status) => {
                let err =
                    got.expect_err(&format!("{:?} must fail", String::from_utf8_lossy(input)));
                assert_eq!(
                    err.status,
                    status,
                    "{:?}: {err:?}",
                    String::from_utf8_lossy(input)
                );
                return;
            }
            Ok(want) => want,
        };
        let head = got
            .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(input)))
            .unwrap_or_else(|| panic!("{:?}: incomplete", String::from_utf8_lossy(input)));
        assert_eq!(head.method, want.method);
        assert_eq!(head.path, want.path);
        assert_eq!(head.query, want.query);
        assert_eq!(head.version, want.version);
        assert_eq!(head.keep_alive, want.keep_alive, "keep_alive");
        assert_eq!(head.framing, want.framing);
        assert_eq!(
            head.expect_continue, want.expect_continue,
            "expect_continue"
        );
        assert_eq!(head.form_body, want.form_body, "form_body");
        assert_eq!(head.authorization.as_deref(), want.authorization);
        assert_eq!(head.len, input.len(), "len");

        let mut resumed = HeadParser::new();
        for split in 0..input.len() {
            assert_eq!(
                parse_head(&input[..split], &limits),
                Ok(None),
                "fresh, split at {split}"
            );
            assert_eq!(
                resumed.parse(&input[..split], &limits),
                Ok(None),
                "resumed, split at {split}"
            );
        }
        assert_eq!(
            resumed.parse(&whole, &limits),
            Ok(Some(head)),
            "resumed, whole"
        );
    }

    #[test]
    fn valid_heads() {
        check(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", Ok(GET));
        check(
            b"GET /poll?sid=1&since=0 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /next HTTP/1.1\r\n",
            Ok(Want {
                path: "/poll",
                query: "sid=1&since=0",
                ..GET
            }),
        );
        check(
            b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: Application/X-WWW-Form-Urlencoded; charset=UTF-8\r\nContent-Length: 5\r\n\r\n",
            b"to=2&",
            Ok(Want {
                method: Method::Post,
                path: "/send",
                framing: Framing::Length(5),
                form_body: true,
                ..GET
            }),
        );
        check(
            b"POST /leave?sid=1 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
            b"",
            Ok(Want { method: Method::Post, path: "/leave", query: "sid=1", ..GET }),
        );
        check(
            b"GET / HTTP/1.0\r\n\r\n",
            b"",
            Ok(Want {
                version: Version::Http10,
                keep_alive: false,
                ..GET
            }),
        );
        check(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            b"",
            Ok(Want {
                version: Version::Http10,
                ..GET
            }),
        );
        check(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
            Ok(Want {
                keep_alive: false,
                ..GET
            }),
        );
        check(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n",
            b"",
            Ok(Want {
                keep_alive: false,
                ..GET
            }),
        );
        check(
            b"POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n\r\n",
            b"5\r\n",
            Ok(Want {
                method: Method::Post,
                path: "/send",
                framing: Framing::Chunked,
                expect_continue: true,
                ..GET
            }),
        );
        // No body: nothing to continue.
        check(
            b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"",
            Ok(GET),
        );
        // One leading empty line is ignored (RFC 9112 §2.2).
        check(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", Ok(GET));
        check(b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", Ok(GET));
        // Bare LF line ends are tolerated.
        check(b"GET / HTTP/1.1\nHost: x\n\n", b"", Ok(GET));
        check(
            b"GET http://example.com/poll?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"",
            Ok(Want {
                path: "/poll",
                query: "x=1",
                ..GET
            }),
        );
        check(
            b"GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"",
            Ok(GET),
        );
        check(
            b"GET http://example.com?a=b HTTP/1.1\r\nHost: example.com\r\n\r\n",
            b"",
            Ok(Want {
                query: "a=b",
                ..GET
            }),
        );
        check(
            b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization:  Bearer s3cret \r\n\r\n",
            b"",
            Ok(Want {
                path: "/health",
                authorization: Some(b"Bearer s3cret"),
                ..GET
            }),
        );
        check(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"",
            Ok(Want {
                method: Method::Head,
                ..GET
            }),
        );
        check(
            b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"",
            Ok(Want {
                method: Method::Other,
                ..GET
            }),
        );
        check(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 000\r\n\r\n",
            b"",
            Ok(Want {
                method: Method::Post,
                ..GET
            }),
        );
    }

    #[test]
    fn malformed_heads() {
        let table: &[(&str, &[u8], u16)] = &[
            ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
            ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
            ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 400),
            ("bad protocol name", b"GET / HTTX/1.1\r\nHost: x\r\n\r\n", 400),
            ("no version", b"GET /\r\nHost: x\r\n\r\n", 400),
            ("double space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("bad method token", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("header without colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
            ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n", 400),
            ("NUL in value", b"GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n", 400),
            ("two empty lines first", b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("bare CR first", b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("asterisk target", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("relative target", b"GET poll HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("ftp target", b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            ("length not digits", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
            ("negative length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
            ("signed length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", 400),
            ("empty length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
            ("length list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400),
            (
                "duplicate length",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (
                "conflicting lengths",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            ("declared body over limit", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n", 413),
            (
                "declared body beyond u64",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
            ("gzip coding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (
                "coding layered on chunked",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                400,
            ),
            (
                "two Transfer-Encodings",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "chunked and length",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            ("chunked in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                "two Content-Types",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\n",
                400,
            ),
            (
                "two Authorizations",
                b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
                400,
            ),
        ];
        for (reason, input, status) in table {
            let got = parse_head(input, &Limits::default());
            assert_eq!(got.map_err(|e| e.status).err(), Some(*status), "{reason}");
        }
    }

    /// A request line of exactly `len` bytes (without its CRLF).
    fn request_line(len: usize) -> Vec<u8> {
        let fixed = "GET /?q= HTTP/1.1".len();
        let mut line = b"GET /?q=".to_vec();
        line.resize(line.len() + len - fixed, b'a');
        line.extend_from_slice(b" HTTP/1.1");
        assert_eq!(line.len(), len);
        line
    }

    #[test]
    fn request_line_limit() {
        let limits = Limits::default();
        let max = limits.request_line_bytes_max;
        let mut at = request_line(max);
        at.extend_from_slice(b"\r\nHost: x\r\n\r\n");
        assert!(parse_head(&at, &limits).unwrap().is_some());
        let mut over = request_line(max + 1);
        over.extend_from_slice(b"\r\nHost: x\r\n\r\n");
        assert_eq!(parse_head(&over, &limits).unwrap_err().status, 414);
        // Before the line ends: at the limit (and its CR) more is needed,
        // one byte over is 414 at once.
        assert_eq!(parse_head(&at[..max], &limits), Ok(None));
        assert_eq!(parse_head(&at[..max + 1], &limits), Ok(None));
        assert_eq!(
            parse_head(&over[..max + 1], &limits).unwrap_err().status,
            414
        );
        // Resumed across reads as well.
        let mut parser = HeadParser::new();
        assert_eq!(parser.parse(&over[..max], &limits), Ok(None));
        assert_eq!(
            parser.parse(&over[..max + 1], &limits).unwrap_err().status,
            414
        );
    }

    /// An unparseable request line is 400 as soon as its line end arrives,
    /// whatever follows it (nothing yet, or header bytes at and past the
    /// header section limit, which used to make it 431); only a line over
    /// its own limit is 414, since its end is never seen. A valid line
    /// still waits for its headers. Each case also fed in two reads: the
    /// line, then the rest.
    #[test]
    fn bad_request_line_is_400_whatever_follows() {
        let limits = Limits::default();
        let line_max = limits.request_line_bytes_max;
        let section_max = limits.header_section_bytes_max;
        // `HELLO WWW...`: a method and a target but no version.
        let hello = |len: usize| {
            let mut line = b"HELLO ".to_vec();
            line.resize(len, b'W');
            line
        };
        // Header bytes with no line end yet.
        let fields = |len: usize| {
            let mut rest = b"X: ".to_vec();
            rest.resize(len, b'v');
            rest
        };
        /// Why, the request line (without its line end), what follows,
        /// and the status (`None`: more bytes needed).
        type Case = (&'static str, Vec<u8>, Vec<u8>, Option<u16>);
        let table: &[Case] = &[
            (
                "the report: 300 KB after",
                b"HELLO WORLD".to_vec(),
                vec![b'x'; 300_000],
                Some(400),
            ),
            ("nothing after", b"HELLO WORLD".to_vec(), vec![], Some(400)),
            ("at the line limit", hello(line_max), vec![], Some(400)),
            (
                "line limit, section at its limit",
                hello(line_max),
                fields(section_max),
                Some(400),
            ),
            (
                "line limit, section one over",
                hello(line_max),
                fields(section_max + 1),
                Some(400),
            ),
            (
                "line one over its limit",
                hello(line_max + 1),
                vec![],
                Some(414),
            ),
            (
                "HTTP/2.0",
                b"GET / HTTP/2.0".to_vec(),
                fields(section_max + 1),
                Some(400),
            ),
            ("two spaces", b"GET  / HTTP/1.1".to_vec(), vec![], Some(400)),
            (
                "bad method token",
                b"G@T / HTTP/1.1".to_vec(),
                vec![],
                Some(400),
            ),
            ("no target", b"GET HTTP/1.1".to_vec(), vec![], Some(400)),
            // Valid lines are unchanged: they wait for the header section.
            (
                "valid, nothing after",
                b"GET / HTTP/1.1".to_vec(),
                vec![],
                None,
            ),
            (
                "valid at the line limit",
                request_line(line_max),
                fields(section_max - 1),
                None,
            ),
            (
                "valid, section one over",
                b"GET / HTTP/1.1".to_vec(),
                fields(section_max + 1),
                Some(431),
            ),
        ];
        for (reason, line, rest, want) in table {
            let mut line = line.clone();
            line.extend_from_slice(b"\r\n");
            let mut whole = line.clone();
            whole.extend_from_slice(rest);
            let got = |r: Result<Option<Head>, HttpError>| match r {
                Ok(None) => None,
                Ok(Some(_)) => panic!("{reason}: a complete head"),
                Err(e) => Some(e.status),
            };
            assert_eq!(got(parse_head(&whole, &limits)), *want, "{reason}");
            let mut resumed = HeadParser::new();
            let first = got(resumed.parse(&line, &limits));
            let second = first.or_else(|| got(resumed.parse(&whole, &limits)));
            assert_eq!(second, *want, "{reason}, in two reads");
        }
    }

    /// A head whose header section (Host included) is exactly `bytes`
    /// long in `fields` header lines.
    fn header_section(bytes: usize, fields: usize) -> Vec<u8> {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        let mut left = bytes - "Host: x\r\n".len();
        for i in 1..fields {
            let lines_after = fields - 1 - i;
            // Each line at least `X-n: v\r\n`; the last one takes the rest.
            let name = format!("X-{i}: ");
            let len = if lines_after == 0 {
                left
            } else {
                name.len() + 3
            };
            head.extend_from_slice(name.as_bytes());
            head.resize(head.len() + len - name.len() - 2, b'v');
            head.extend_from_slice(b"\r\n");
            left -= len;
        }
        assert_eq!(left, 0);
        head.extend_from_slice(b"\r\n");
        head
    }

    /// `If-None-Match` is kept as sent; several are one list.
    #[test]
    fn if_none_match() {
        let limits = Limits::default();
        let inm = |raw: &[u8]| parse_head(raw, &limits).unwrap().unwrap().if_none_match;
        assert_eq!(inm(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
        assert_eq!(
            inm(b"GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match:  \"a\" \r\n\r\n"),
            Some(b"\"a\"".to_vec())
        );
        assert_eq!(
            inm(b"GET / HTTP/1.1\r\nif-none-match: \"a\"\r\nHost: x\r\nIF-NONE-MATCH: W/\"b\", *\r\n\r\n"),
            Some(b"\"a\", W/\"b\", *".to_vec())
        );
    }

    #[test]
    fn header_section_limit() {
        let limits = Limits::default();
        let max = limits.header_section_bytes_max;
        let at = header_section(max, 2);
        assert!(parse_head(&at, &limits).unwrap().is_some());
        let over = header_section(max + 1, 2);
        assert_eq!(parse_head(&over, &limits).unwrap_err().status, 431);
        // Decided before the line ends: the line being read will take at
        // least one more byte.
        let line_start = "GET / HTTP/1.1\r\n".len();
        let end_of_last = over.len() - 2;
        assert_eq!(
            parse_head(&over[..end_of_last - 1], &limits)
                .unwrap_err()
                .status,
            431
        );
        assert_eq!(parse_head(&at[..end_of_last - 2], &limits), Ok(None));
        assert!(line_start < end_of_last);
    }

    #[test]
    fn header_count_limit() {
        let limits = Limits::default();
        let at = header_section(1000, HEADERS_COUNT_MAX);
        assert!(parse_head(&at, &limits).unwrap().is_some());
        let over = header_section(1000, HEADERS_COUNT_MAX + 1);
        assert_eq!(parse_head(&over, &limits).unwrap_err().status, 431);
        // The 101st line is refused as soon as it starts.
        let mut early = at[..at.len() - 2].to_vec();
        early.push(b'X');
        assert_eq!(parse_head(&early, &limits).unwrap_err().status, 431);
        assert_eq!(parse_head(&at[..at.len() - 1], &limits), Ok(None));
    }
}
