//! Encoding answers: the one mapping from answer to HTTP status ([`status_of`]
//! for protocol error codes, [`status_of_reply`] for every handler reply), the
//! JSON bodies of every [`Response`] (docs/protocol.md: "JSON and JSONP", the
//! client calls) and of the engine's typed replies (health, metrics, demo),
//! the JSONP envelope, and the response head. The JSON structure is written by
//! hand into a reused buffer (it is on every poll's path); strings go through
//! `serde_json` so escaping is never ours to get wrong.

use std::io::Write;

use switchboard_shards::model::{
    Connected, Contact, ErrorCode, Event, EventKind, Message, Response,
};

use crate::buffers::Buf;
use crate::call::Mode;
use crate::client::{self, ClientFile};
use crate::head::HttpError;
use crate::metrics::{self, Family};
use crate::reply::{DemoUser, Reply, ShardHealth, TraceState};
use crate::Listener;

/// The HTTP status of a protocol error code in JSON mode (docs/protocol.md,
/// "Error codes").
/// With [`status_of_reply`], the only place this is decided.
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest => 400,
        ErrorCode::Unauthorized | ErrorCode::UnknownSession => 401,
        ErrorCode::NotFriends | ErrorCode::Forbidden => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::TooLarge => 413,
        ErrorCode::RateLimited => 429,
        ErrorCode::Unavailable => 503,
    }
}

/// The HTTP status of a protocol response in JSON mode: 200, or its error
/// code's.
pub fn status_of_response(response: &Response) -> u16 {
    match response {
        Response::Failed(failure) => status_of(failure.code),
        _ => 200,
    }
}

/// The HTTP status of a handler's reply in JSON mode (JSONP: always 200).
/// The error code that goes with one: a health failure is `unavailable`.
pub fn status_of_reply(reply: &Reply) -> u16 {
    match reply {
        Reply::Shard(response) => status_of_response(response),
        Reply::Health { shards, .. } if all_up(shards) => 200,
        Reply::Health { .. } => status_of(ErrorCode::Unavailable),
        Reply::Metrics { .. }
        | Reply::Trace(_)
        | Reply::TraceLines { .. }
        | Reply::File { .. }
        | Reply::DemoUsers(_)
        | Reply::DemoToken { .. }
        | Reply::Json { .. } => 200,
    }
}

/// How a request ended, for metrics: decided with its status, from the
/// same typed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with what it asked for (any 2xx).
    Ok,
    /// Answered `308` to https (TLS required).
    Redirect,
    /// Answered with this protocol error code (in JSON or JSONP).
    Failed(ErrorCode),
}

impl Outcome {
    /// How many outcomes there are ([`Outcome::index`] is below it).
    pub const COUNT: usize = 2 + ErrorCode::ALL.len();

    /// Its place among the [`Outcome::COUNT`] (for arrays of counters).
    pub fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::Redirect => 1,
            Outcome::Failed(code) => 2 + code as usize,
        }
    }

    /// The outcome at `index` (the inverse of [`Outcome::index`]).
    pub fn from_index(index: usize) -> Outcome {
        match index {
            0 => Outcome::Ok,
            1 => Outcome::Redirect,
            i => Outcome::Failed(ErrorCode::ALL[i - 2]),
        }
    }

    /// Its name in metrics: `ok`, `redirect`, or the error code.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Redirect => "redirect",
            Outcome::Failed(code) => code.as_str(),
        }
    }

    /// The outcome of a protocol response.
    pub fn of_response(response: &Response) -> Outcome {
        match response {
            Response::Failed(failure) => Outcome::Failed(failure.code),
            _ => Outcome::Ok,
        }
    }

    /// The outcome of a handler's reply: the error code its body carries
    /// (see [`status_of_reply`]), else `ok`.
    pub fn of_reply(reply: &Reply) -> Outcome {
        match reply {
            Reply::Shard(response) => Outcome::of_response(response),
            Reply::Health { shards, .. } if !all_up(shards) => {
                Outcome::Failed(ErrorCode::Unavailable)
            }
            Reply::Health { .. }
            | Reply::Metrics { .. }
            | Reply::File { .. }
            | Reply::DemoUsers(_)
            | Reply::DemoToken { .. }
            | Reply::Json { .. }
            | Reply::Trace(_)
            | Reply::TraceLines { .. } => Outcome::Ok,
        }
    }
}

/// Whether every shard answered its health ask with its counts.
fn all_up(shards: &[ShardHealth]) -> bool {
    shards.iter().all(|s| matches!(s, ShardHealth::Up { .. }))
}

/// The reason phrase of a status (clients ignore it; humans read it).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How the connection header is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persist {
    /// The connection stays open after this answer.
    pub keep_alive: bool,
    /// The request was HTTP/1.0, whose default is to close: staying open
    /// must then be said (`Connection: keep-alive`).
    pub http10: bool,
}

/// Writes answers into a caller's buffer, building each body in a buffer
/// from the thread's pool.
#[derive(Debug)]
pub struct Encoder {
    /// The body being built: a buffer from the thread's pool while an
    /// answer is built, none once [`Encoder::release`]d.
    body: Buf,
    /// JSON answers say `Access-Control-Allow-Origin: *`: on the client
    /// listener only. The admin listener never invites a browser to read
    /// its answers (docs/security.md, "Admin isolation").
    cors: bool,
    /// Every answer carries `Strict-Transport-Security` (a TLS connection
    /// when TLS is required).
    hsts: bool,
}

/// The `Strict-Transport-Security` header of every TLS answer when TLS is
/// required: browsers then use https for a year, so a first plain
/// request (and its redirect) happens at most once.
pub const HSTS: &str = "max-age=31536000";

/// The content type of JSON answers.
const JSON: &str = "application/json";
/// The content type of JSONP answers.
const JAVASCRIPT: &str = "application/javascript; charset=utf-8";
/// The content type of `/metrics` (Prometheus text format).
const METRICS: &str = "text/plain; version=0.0.4";
/// The content type of `GET /trace`.
const TEXT: &str = "text/plain; charset=utf-8";

impl Encoder {
    /// An encoder for answers on `listener`, with an empty body buffer.
    pub fn new(listener: Listener) -> Encoder {
        Encoder {
            body: Buf::new(),
            cors: listener == Listener::Client,
            hsts: false,
        }
    }

    /// The same encoder, every answer of which carries
    /// `Strict-Transport-Security` when `hsts` (TLS required).
    pub fn with_hsts(mut self, hsts: bool) -> Encoder {
        self.hsts = hsts;
        self
    }

    /// Writes a `308` to `location` (the plain port when TLS is required:
    /// the https URL of the same path and query), with an empty body. 308,
    /// not 301: the client repeats the same method and body (a 301 lets a
    /// POST turn into a GET).
    pub fn redirect(&mut self, out: &mut Vec<u8>, location: &str, persist: Persist, date: &[u8]) {
        out.clear();
        let extra = Extra {
            location: Some(location),
            hsts: self.hsts,
            ..Extra::NONE
        };
        write_head(out, 308, JSON, 0, extra, persist, date);
    }

    /// Writes the answer for a client file (`GET /client/...`, see
    /// [`crate::client`]): `200` with the file, or, when `not_modified`
    /// (its tag was in `If-None-Match`), `304` with no body and no
    /// `Content-Type` or `Content-Length` (RFC 9110 §15.4.5). Both carry
    /// its `ETag`, [`client::CACHE_CONTROL`], `nosniff` and
    /// `Access-Control-Allow-Origin: *` (module scripts load with CORS).
    pub fn client_file(
        &mut self,
        out: &mut Vec<u8>,
        file: &ClientFile,
        not_modified: bool,
        persist: Persist,
        date: &[u8],
    ) {
        out.clear();
        let extra = Extra {
            nosniff: true,
            cors: true,
            hsts: self.hsts,
            cache_control: Some(client::CACHE_CONTROL),
            etag: Some(file.etag()),
            no_content: not_modified,
            ..Extra::NONE
        };
        let status = if not_modified { 304 } else { 200 };
        write_head(
            out,
            status,
            file.content_type,
            file.body.len(),
            extra,
            persist,
            date,
        );
        if !not_modified {
            out.extend_from_slice(file.body);
        }
    }

    /// Gives the body buffer back to the thread's pool (`buffers.rs`):
    /// the answer is in `out` by then, and a connection waiting for its
    /// next request holds no buffer.
    pub fn release(&mut self) {
        self.body.release();
    }

    /// Writes the whole HTTP answer to a handler's reply into `out`
    /// (cleared first). `head_only` leaves the body out (HEAD requests);
    /// `date` is the `Date` header value (see [`http_date`]).
    pub fn reply(
        &mut self,
        out: &mut Vec<u8>,
        reply: &Reply,
        mode: &Mode,
        persist: Persist,
        head_only: bool,
        date: &[u8],
    ) {
        let status = status_of_reply(reply);
        self.body.vec().clear();
        match reply {
            Reply::Shard(response) => write_response_json(self.body.vec(), response),
            Reply::Health { shards, timeout_ms } => {
                write_health_json(self.body.vec(), shards, *timeout_ms);
            }
            Reply::Trace(state) => write_trace_json(self.body.vec(), state),
            Reply::TraceLines {
                state,
                lines,
                count,
            } => {
                write_trace_text(self.body.vec(), state, lines, *count);
                let raw = Raw {
                    status,
                    content_type: TEXT,
                    body: self.body.bytes(),
                    hsts: self.hsts,
                };
                return write_raw(out, raw, persist, head_only, date);
            }
            Reply::DemoUsers(users) => write_demo_users_json(self.body.vec(), users),
            Reply::DemoToken { token, user, name } => {
                write_demo_token_json(self.body.vec(), token, *user, name);
            }
            Reply::Json { body } => self.body.vec().extend_from_slice(body.as_bytes()),
            Reply::Metrics { shards, families } => {
                write_metrics_text(self.body.vec(), shards, families);
                let raw = Raw {
                    status,
                    content_type: METRICS,
                    body: self.body.bytes(),
                    hsts: self.hsts,
                };
                return write_raw(out, raw, persist, head_only, date);
            }
            Reply::File { content_type, body } => {
                let raw = Raw {
                    status,
                    content_type,
                    body,
                    hsts: self.hsts,
                };
                return write_raw(out, raw, persist, head_only, date);
            }
        }
        self.finish(out, status, mode, None, persist, head_only, date);
    }

    /// Writes the whole HTTP answer for a protocol response in `mode`.
    pub fn response(
        &mut self,
        out: &mut Vec<u8>,
        response: &Response,
        mode: &Mode,
        persist: Persist,
        head_only: bool,
        date: &[u8],
    ) {
        self.body.vec().clear();
        write_response_json(self.body.vec(), response);
        let status = status_of_response(response);
        self.finish(out, status, mode, None, persist, head_only, date);
    }

    /// Writes the whole HTTP answer for an HTTP-level failure: its own
    /// status and a plain JSON body, never JSONP.
    pub fn http_error(
        &mut self,
        out: &mut Vec<u8>,
        error: &HttpError,
        persist: Persist,
        head_only: bool,
        date: &[u8],
    ) {
        self.body.vec().clear();
        write_failure_json(self.body.vec(), error.code, error.message);
        self.finish(
            out,
            error.status,
            &Mode::Json,
            error.allow,
            persist,
            head_only,
            date,
        );
    }

    /// Envelopes `self.body` (a JSON object) per `mode` and writes head and
    /// body to `out`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        out: &mut Vec<u8>,
        status: u16,
        mode: &Mode,
        allow: Option<&str>,
        persist: Persist,
        head_only: bool,
        date: &[u8],
    ) {
        out.clear();
        match mode {
            Mode::Json => {
                let extra = Extra {
                    nosniff: true,
                    cors: self.cors,
                    allow,
                    hsts: self.hsts,
                    ..Extra::NONE
                };
                write_head(
                    out,
                    status,
                    JSON,
                    self.body.bytes().len(),
                    extra,
                    persist,
                    date,
                );
                if !head_only {
                    out.extend_from_slice(self.body.bytes());
                }
            }
            Mode::Jsonp(name) => {
                // The outcome is in the body; a non-200 status would make
                // the browser drop the script and the page never learn it.
                let separators = count_js_separators(self.body.bytes());
                // Each escape turns 3 bytes into the 6 of `\u2028`.
                let len = 4 + name.len() + 1 + self.body.bytes().len() + separators * 3 + 2;
                let extra = Extra {
                    nosniff: true,
                    cors: false,
                    allow,
                    hsts: self.hsts,
                    ..Extra::NONE
                };
                write_head(out, 200, JAVASCRIPT, len, extra, persist, date);
                if !head_only {
                    let start = out.len();
                    // `/**/` keeps the body from starting with attacker-chosen
                    // bytes (Rosetta Flash and friends).
                    out.extend_from_slice(b"/**/");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'(');
                    push_js_safe(out, self.body.bytes());
                    out.extend_from_slice(b");");
                    debug_assert_eq!(out.len() - start, len);
                }
            }
        }
    }
}

/// Writes a non-JSON answer (a page, metrics): never JSONP-wrapped, and
/// with `X-Content-Type-Options: nosniff` (these bodies are served to
/// browsers: the content type given is the one meant).
fn write_raw(out: &mut Vec<u8>, raw: Raw<'_>, persist: Persist, head_only: bool, date: &[u8]) {
    out.clear();
    let extra = Extra {
        nosniff: true,
        hsts: raw.hsts,
        ..Extra::NONE
    };
    let len = raw.body.len();
    write_head(out, raw.status, raw.content_type, len, extra, persist, date);
    if !head_only {
        out.extend_from_slice(raw.body);
    }
}

/// A non-JSON answer's parts.
struct Raw<'a> {
    status: u16,
    content_type: &'a str,
    body: &'a [u8],
    /// `Strict-Transport-Security` (see [`Encoder::with_hsts`]).
    hsts: bool,
}

/// Optional response headers.
#[derive(Clone, Copy, Debug)]
struct Extra<'a> {
    /// `X-Content-Type-Options: nosniff` (every answer with a body meant
    /// as one type: JSON, JSONP, pages, metrics), so a browser never runs
    /// a JSON answer as script or renders it as HTML.
    nosniff: bool,
    /// `Access-Control-Allow-Origin: *` (JSON mode on the client listener:
    /// identity never comes from cookies, so any origin may read answers).
    cors: bool,
    /// `Allow` (405).
    allow: Option<&'a str>,
    /// `Location` (308).
    location: Option<&'a str>,
    /// `Strict-Transport-Security` (see [`Encoder::with_hsts`]).
    hsts: bool,
    /// `Cache-Control` (`None`: `no-store`, as every answer but the
    /// client files).
    cache_control: Option<&'a str>,
    /// `ETag`.
    etag: Option<&'a str>,
    /// A `304`: no `Content-Type`, no `Content-Length`.
    no_content: bool,
}

impl Extra<'_> {
    /// No optional headers.
    const NONE: Extra<'static> = Extra {
        nosniff: false,
        cors: false,
        allow: None,
        location: None,
        hsts: false,
        cache_control: None,
        etag: None,
        no_content: false,
    };
}

/// Writes a response head.
fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body_len: usize,
    extra: Extra<'_>,
    persist: Persist,
    date: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    if !extra.no_content {
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_u64(out, body_len as u64);
    }
    out.extend_from_slice(b"\r\nCache-Control: ");
    out.extend_from_slice(extra.cache_control.unwrap_or("no-store").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(etag) = extra.etag {
        out.extend_from_slice(b"ETag: ");
        out.extend_from_slice(etag.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if extra.nosniff {
        out.extend_from_slice(b"X-Content-Type-Options: nosniff\r\n");
    }
    if extra.cors {
        out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n");
    }
    if let Some(allow) = extra.allow {
        out.extend_from_slice(b"Allow: ");
        out.extend_from_slice(allow.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(location) = extra.location {
        out.extend_from_slice(b"Location: ");
        out.extend_from_slice(location.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if extra.hsts {
        out.extend_from_slice(b"Strict-Transport-Security: ");
        out.extend_from_slice(HSTS.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !persist.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if persist.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// U+2028 and U+2029 are valid in JSON strings but ended JavaScript string
/// literals before ES2019, so in JSONP they are sent escaped. In JSON text
/// they can only occur inside strings, where the escape means the same.
fn count_js_separators(json: &[u8]) -> usize {
    json.windows(3)
        .filter(|w| w[0] == 0xE2 && w[1] == 0x80 && (w[2] == 0xA8 || w[2] == 0xA9))
        .count()
}

/// Appends `json` with U+2028/U+2029 escaped (see
/// [`count_js_separators`]).
fn push_js_safe(out: &mut Vec<u8>, json: &[u8]) {
    let mut rest = json;
    while let Some(i) = rest
        .windows(3)
        .position(|w| w[0] == 0xE2 && w[1] == 0x80 && (w[2] == 0xA8 || w[2] == 0xA9))
    {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(if rest[i + 2] == 0xA8 {
            b"\\u2028"
        } else {
            b"\\u2029"
        });
        rest = &rest[i + 3..];
    }
    out.extend_from_slice(rest);
}

/// Formats a unix time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`),
/// for the `Date` header every answer carries (RFC 9110 §6.6.1).
pub fn http_date(unix_s: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + u64::from(month <= 2)).min(9999);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    let two = |out: &mut [u8; 29], at: usize, n: u64| {
        out[at] = b'0' + (n / 10) as u8;
        out[at + 1] = b'0' + (n % 10) as u8;
    };
    two(&mut out, 5, day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut out, 12, year / 100);
    two(&mut out, 14, year % 100);
    two(&mut out, 17, secs / 3600);
    two(&mut out, 20, secs / 60 % 60);
    two(&mut out, 23, secs % 60);
    out
}

/// Appends a decimal number.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends a decimal number as a JSON string (message ids are opaque
/// strings on the wire).
fn push_u64_string(out: &mut Vec<u8>, n: u64) {
    out.push(b'"');
    push_u64(out, n);
    out.push(b'"');
}

/// Appends a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("serializing a str into a Vec cannot fail");
}

/// Appends `"key":` (keys are ours, plain ASCII).
fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends the failure body `{"ok":false,"error":{"code":..,"message":..}}`.
pub fn write_failure_json(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(b"{\"ok\":false,\"error\":{\"code\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    push_str(out, message);
    out.extend_from_slice(b"}}");
}

/// Appends the JSON body of a protocol response.
pub fn write_response_json(out: &mut Vec<u8>, response: &Response) {
    match response {
        Response::Connected(connected) => write_connected(out, connected),
        Response::Events { seq, events } => {
            out.extend_from_slice(b"{\"ok\":true,\"seq\":");
            push_u64(out, *seq);
            out.extend_from_slice(b",\"events\":[");
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_event(out, event);
            }
            out.extend_from_slice(b"]}");
        }
        Response::Reset { seq } => {
            out.extend_from_slice(b"{\"ok\":true,\"reset\":true,\"seq\":");
            push_u64(out, *seq);
            out.push(b'}');
        }
        Response::Sent { id, ts } => {
            out.extend_from_slice(b"{\"ok\":true,\"id\":");
            push_u64_string(out, *id);
            out.extend_from_slice(b",\"ts\":");
            push_u64(out, *ts);
            out.push(b'}');
        }
        Response::History {
            messages,
            more,
            seen,
        } => {
            out.extend_from_slice(b"{\"ok\":true,\"messages\":[");
            for (i, message) in messages.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                write_message_fields(out, message);
                out.push(b'}');
            }
            out.extend_from_slice(b"],\"more\":");
            out.extend_from_slice(if *more { b"true" } else { b"false" });
            out.extend_from_slice(b",\"seen\":");
            match seen {
                Some(id) => push_u64_string(out, *id),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        Response::Health {
            shard,
            sessions,
            tabs,
            ..
        } => {
            out.extend_from_slice(b"{\"ok\":true,\"shard\":");
            push_u64(out, *shard as u64);
            out.extend_from_slice(b",\"sessions\":");
            push_u64(out, *sessions);
            out.extend_from_slice(b",\"tabs\":");
            push_u64(out, *tabs);
            out.push(b'}');
        }
        Response::Done => out.extend_from_slice(b"{\"ok\":true}"),
        Response::Failed(failure) => write_failure_json(out, failure.code, &failure.message),
    }
}

/// The `/health` body: `{"ok":true,"shards":[..]}`, or when a shard is not
/// up the failure shape with the shards added.
fn write_health_json(out: &mut Vec<u8>, shards: &[ShardHealth], timeout_ms: u64) {
    if all_up(shards) {
        out.extend_from_slice(b"{\"ok\":true");
    } else {
        out.extend_from_slice(b"{\"ok\":false,\"error\":{\"code\":\"");
        out.extend_from_slice(ErrorCode::Unavailable.as_str().as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        push_str(
            out,
            &format!("a shard did not answer within {timeout_ms} ms"),
        );
        out.push(b'}');
    }
    out.extend_from_slice(b",\"shards\":[");
    for (i, health) in shards.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"shard\":");
        push_u64(out, health.shard() as u64);
        match *health {
            ShardHealth::Up { sessions, tabs, .. } => {
                out.extend_from_slice(b",\"ok\":true,\"sessions\":");
                push_u64(out, sessions);
                out.extend_from_slice(b",\"tabs\":");
                push_u64(out, tabs);
                out.push(b'}');
            }
            ShardHealth::Refused { .. } | ShardHealth::Silent { .. } => {
                out.extend_from_slice(b",\"ok\":false}");
            }
        }
    }
    out.extend_from_slice(b"]}");
}

/// The `/metrics` text: sessions, tabs and held polls of the shards that
/// answered with their counts, whether each shard answered at all, then
/// the engine's families.
fn write_metrics_text(out: &mut Vec<u8>, shards: &[ShardHealth], families: &[Family]) {
    let up = |name, help| Family::new(name, help, metrics::Kind::Gauge);
    let mut sessions = up("switchboard_sessions", "Sessions owned by each shard.");
    let mut tabs = up("switchboard_tabs", "Tabs attached on each shard.");
    let mut polls = up(
        "switchboard_held_polls",
        "Polls held open on each shard (one per polling tab).",
    );
    let mut shard_up = up(
        "switchboard_shard_up",
        "Whether the shard answered within the health timeout.",
    );
    for health in shards {
        let label = || vec![("shard", health.shard().to_string())];
        if let ShardHealth::Up {
            sessions: s,
            tabs: t,
            polls: p,
            ..
        } = *health
        {
            sessions.push(label(), metrics::Value::Int(s));
            tabs.push(label(), metrics::Value::Int(t));
            polls.push(label(), metrics::Value::Int(p));
        }
        // A shard that refused the ask did answer.
        let answered = !matches!(health, ShardHealth::Silent { .. });
        shard_up.push(label(), metrics::Value::Int(u64::from(answered)));
    }
    metrics::write_text(out, &[sessions, tabs, polls, shard_up]);
    metrics::write_text(out, families);
}

/// `{"ok":true,"users":[{"id":1,"name":"..","friends":[2,3]},..]}`.
fn write_demo_users_json(out: &mut Vec<u8>, users: &[DemoUser]) {
    out.extend_from_slice(b"{\"ok\":true,\"users\":[");
    for (i, user) in users.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_u64(out, user.id);
        out.extend_from_slice(b",\"name\":");
        push_str(out, &user.name);
        out.extend_from_slice(b",\"friends\":[");
        for (j, friend) in user.friends.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            push_u64(out, *friend);
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
}

/// `POST /trace`: `{"ok":true,"user":42,"trace":"on","file":"...",
/// "bytes":0,"bytes_max":16777216,"ends_in_ms":600000,"traced":1}`; off:
/// `{"ok":true,"user":42,"trace":"off","file":"...","traced":0}`.
fn write_trace_json(out: &mut Vec<u8>, state: &TraceState) {
    out.extend_from_slice(b"{\"ok\":true,\"user\":");
    push_u64(out, state.user);
    out.extend_from_slice(if state.on {
        b",\"trace\":\"on\",\"file\":"
    } else {
        b",\"trace\":\"off\",\"file\":"
    });
    push_str(out, &state.file);
    if state.on {
        out.extend_from_slice(b",\"bytes\":");
        push_u64(out, state.bytes);
        out.extend_from_slice(b",\"bytes_max\":");
        push_u64(out, state.bytes_max);
        if let Some(ms) = state.ends_in_ms {
            out.extend_from_slice(b",\"ends_in_ms\":");
            push_u64(out, ms);
        }
    }
    out.extend_from_slice(b",\"traced\":");
    push_u64(out, state.traced as u64);
    out.push(b'}');
}

/// `GET /trace`: three `#` lines (where the trace stands, its file, how
/// many lines follow), then the newest lines of the file.
fn write_trace_text(out: &mut Vec<u8>, state: &TraceState, lines: &str, count: usize) {
    let w = |out: &mut Vec<u8>, args: std::fmt::Arguments| {
        out.write_fmt(args)
            .expect("formatting into a Vec cannot fail")
    };
    if state.on {
        let ends_s = state.ends_in_ms.unwrap_or(0).div_ceil(1_000);
        w(
            out,
            format_args!(
                "# trace of user {}: on, {} of {} bytes, ends in {ends_s} s\n",
                state.user, state.bytes, state.bytes_max
            ),
        );
    } else {
        w(
            out,
            format_args!(
                "# trace of user {}: off ({} bytes in the file)\n",
                state.user, state.bytes
            ),
        );
    }
    w(out, format_args!("# file: {}\n", state.file));
    w(out, format_args!("# the newest {count} lines:\n"));
    out.extend_from_slice(lines.as_bytes());
}

/// `{"ok":true,"token":"..","user":{"id":N,"name":".."}}`.
fn write_demo_token_json(out: &mut Vec<u8>, token: &str, user: u64, name: &str) {
    out.extend_from_slice(b"{\"ok\":true,\"token\":");
    push_str(out, token);
    out.extend_from_slice(b",\"user\":{\"id\":");
    push_u64(out, user);
    out.extend_from_slice(b",\"name\":");
    push_str(out, name);
    out.extend_from_slice(b"}}");
}

/// The `/connect` answer.
fn write_connected(out: &mut Vec<u8>, c: &Connected) {
    out.extend_from_slice(b"{\"ok\":true,\"sid\":\"");
    write!(out, "{}", c.sid).expect("formatting into a Vec cannot fail");
    out.extend_from_slice(b"\",\"tab\":");
    push_str(out, &c.tab);
    out.extend_from_slice(b",\"user\":{\"id\":");
    push_u64(out, c.user);
    out.extend_from_slice(b",\"name\":");
    push_str(out, &c.name);
    out.extend_from_slice(b"},\"seq\":");
    push_u64(out, c.seq);
    out.extend_from_slice(b",\"roster\":[");
    for (i, contact) in c.roster.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_contact(out, contact);
    }
    out.extend_from_slice(b"],\"ui\":");
    match &c.ui {
        // Validated as a JSON object when it was set; embedded as-is.
        Some(ui) => out.extend_from_slice(ui.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"unread\":{");
    for (i, (friend, count)) in c.unread.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_u64_string(out, *friend);
        out.push(b':');
        push_u64(out, *count);
    }
    out.extend_from_slice(b"}}");
}

/// `{"id":N,"name":"..","presence":".."}`.
fn write_contact(out: &mut Vec<u8>, contact: &Contact) {
    out.extend_from_slice(b"{\"id\":");
    push_u64(out, contact.id);
    out.extend_from_slice(b",\"name\":");
    push_str(out, &contact.name);
    out.extend_from_slice(b",\"presence\":\"");
    out.extend_from_slice(contact.presence.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

/// `"id":"..","from":N,"to":N,"text":"..","ts":N` and `,"cid":".."` when
/// the sender gave one.
fn write_message_fields(out: &mut Vec<u8>, m: &Message) {
    push_key(out, "id");
    push_u64_string(out, m.id);
    out.extend_from_slice(b",\"from\":");
    push_u64(out, m.from);
    out.extend_from_slice(b",\"to\":");
    push_u64(out, m.to);
    out.extend_from_slice(b",\"text\":");
    push_str(out, &m.text);
    out.extend_from_slice(b",\"ts\":");
    push_u64(out, m.ts);
    if let Some(cid) = &m.cid {
        out.extend_from_slice(b",\"cid\":");
        push_str(out, cid);
    }
}

/// One event: `{"seq":N,"type":"..",...}`.
fn write_event(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"{\"seq\":");
    push_u64(out, event.seq);
    out.extend_from_slice(b",\"type\":\"");
    match &event.kind {
        EventKind::Message(m) => {
            out.extend_from_slice(b"message\",");
            write_message_fields(out, m);
        }
        EventKind::Presence { user, status } => {
            out.extend_from_slice(b"presence\",\"user\":");
            push_u64(out, *user);
            out.extend_from_slice(b",\"status\":\"");
            out.extend_from_slice(status.as_str().as_bytes());
            out.push(b'"');
        }
        EventKind::Typing { user, state } => {
            out.extend_from_slice(b"typing\",\"user\":");
            push_u64(out, *user);
            out.extend_from_slice(b",\"state\":\"");
            out.extend_from_slice(state.as_str().as_bytes());
            out.push(b'"');
        }
        EventKind::Ui { state, tab } => {
            out.extend_from_slice(b"ui\",\"state\":");
            out.extend_from_slice(state.as_bytes());
            out.extend_from_slice(b",\"tab\":");
            push_str(out, tab);
        }
        EventKind::Read { with, by, upto } => {
            out.extend_from_slice(b"read\",\"with\":");
            push_u64(out, *with);
            out.extend_from_slice(b",\"by\":");
            push_u64(out, *by);
            out.extend_from_slice(b",\"upto\":");
            push_u64_string(out, *upto);
        }
        EventKind::Roster { change, user } => {
            out.extend_from_slice(b"roster\",\"change\":\"");
            out.extend_from_slice(change.as_str().as_bytes());
            out.extend_from_slice(b"\",\"user\":");
            write_contact(out, user);
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_shards::model::{Failure, RosterChange, Sid, Status, TypingState};

    use super::*;

    const DATE: &[u8; 29] = b"Sun, 06 Nov 1994 08:49:37 GMT";
    const KEEP: Persist = Persist {
        keep_alive: true,
        http10: false,
    };

    /// Encodes `response` as a JSON body and compares it with `expected`
    /// (which must also be valid JSON).
    fn check(response: Response, expected: &str) {
        let mut out = Vec::new();
        write_response_json(&mut out, &response);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        serde_json::from_str::<serde_json::Value>(expected).expect("expected is JSON");
    }

    fn message(cid: Option<&str>) -> Arc<Message> {
        Arc::new(Message {
            id: 123,
            from: 1,
            to: 2,
            text: "hi \"you\"\n</script>".into(),
            ts: 1_700_000_000_000,
            cid: cid.map(Into::into),
        })
    }

    fn event(seq: u64, kind: EventKind) -> Arc<Event> {
        Arc::new(Event { seq, kind })
    }

    #[test]
    fn bodies() {
        check(Response::Done, r#"{"ok":true}"#);
        check(
            Response::Reset { seq: 9 },
            r#"{"ok":true,"reset":true,"seq":9}"#,
        );
        check(
            Response::Sent { id: 123, ts: 456 },
            r#"{"ok":true,"id":"123","ts":456}"#,
        );
        check(
            Response::Health {
                shard: 2,
                sessions: 10,
                tabs: 12,
                polls: 7,
            },
            r#"{"ok":true,"shard":2,"sessions":10,"tabs":12}"#,
        );
        check(
            Response::Failed(Failure::new(
                ErrorCode::NotFriends,
                "user 2 is not your friend",
            )),
            r#"{"ok":false,"error":{"code":"not_friends","message":"user 2 is not your friend"}}"#,
        );
        check(
            Response::History {
                messages: vec![message(None), message(Some("c1"))],
                more: true,
                seen: Some(123),
            },
            concat!(
                r#"{"ok":true,"messages":["#,
                r#"{"id":"123","from":1,"to":2,"text":"hi \"you\"\n</script>","ts":1700000000000},"#,
                r#"{"id":"123","from":1,"to":2,"text":"hi \"you\"\n</script>","ts":1700000000000,"cid":"c1"}"#,
                r#"],"more":true,"seen":"123"}"#
            ),
        );
        check(
            Response::History {
                messages: vec![],
                more: false,
                seen: None,
            },
            r#"{"ok":true,"messages":[],"more":false,"seen":null}"#,
        );
        check(
            Response::Events {
                seq: 4,
                events: vec![],
            },
            r#"{"ok":true,"seq":4,"events":[]}"#,
        );
        let friend = Contact {
            id: 2,
            name: "bob".into(),
            presence: Status::Online,
        };
        check(
            Response::Events {
                seq: 15,
                events: vec![
                    event(10, EventKind::Message(message(Some("x")))),
                    event(
                        11,
                        EventKind::Presence {
                            user: 2,
                            status: Status::Away,
                        },
                    ),
                    event(
                        12,
                        EventKind::Typing {
                            user: 2,
                            state: TypingState::Typing,
                        },
                    ),
                    event(
                        13,
                        EventKind::Ui {
                            state: r#"{"open":[2]}"#.into(),
                            tab: "t1".into(),
                        },
                    ),
                    event(
                        14,
                        EventKind::Read {
                            with: 2,
                            by: 1,
                            upto: 123,
                        },
                    ),
                    event(
                        15,
                        EventKind::Roster {
                            change: RosterChange::Added,
                            user: friend.clone(),
                        },
                    ),
                ],
            },
            concat!(
                r#"{"ok":true,"seq":15,"events":["#,
                r#"{"seq":10,"type":"message","id":"123","from":1,"to":2,"text":"hi \"you\"\n</script>","ts":1700000000000,"cid":"x"},"#,
                r#"{"seq":11,"type":"presence","user":2,"status":"away"},"#,
                r#"{"seq":12,"type":"typing","user":2,"state":"typing"},"#,
                r#"{"seq":13,"type":"ui","state":{"open":[2]},"tab":"t1"},"#,
                r#"{"seq":14,"type":"read","with":2,"by":1,"upto":"123"},"#,
                r#"{"seq":15,"type":"roster","change":"added","user":{"id":2,"name":"bob","presence":"online"}}"#,
                r#"]}"#
            ),
        );
        let connected = |ui: Option<&str>, roster: Vec<Contact>, unread: Vec<(u64, u64)>| {
            Response::Connected(Box::new(Connected {
                sid: Sid {
                    user: 1,
                    secret: 0xab,
                },
                tab: "t1".into(),
                user: 1,
                name: "ålice".into(),
                seq: 7,
                roster,
                ui: ui.map(Into::into),
                unread,
            }))
        };
        check(
            connected(
                Some(r#"{"w":[2]}"#),
                vec![
                    friend.clone(),
                    Contact {
                        id: 3,
                        name: "c".into(),
                        presence: Status::Offline,
                    },
                ],
                vec![(2, 3), (3, 1)],
            ),
            concat!(
                r#"{"ok":true,"sid":"1-000000000000000000000000000000ab","tab":"t1","user":{"id":1,"name":"ålice"},"seq":7,"#,
                r#""roster":[{"id":2,"name":"bob","presence":"online"},{"id":3,"name":"c","presence":"offline"}],"#,
                r#""ui":{"w":[2]},"unread":{"2":3,"3":1}}"#
            ),
        );
        check(
            connected(None, vec![], vec![]),
            concat!(
                r#"{"ok":true,"sid":"1-000000000000000000000000000000ab","tab":"t1","user":{"id":1,"name":"ålice"},"seq":7,"#,
                r#""roster":[],"ui":null,"unread":{}}"#
            ),
        );
    }

    #[test]
    fn outcomes_have_one_index_each_and_name_their_code() {
        for i in 0..Outcome::COUNT {
            assert_eq!(Outcome::from_index(i).index(), i);
        }
        let failed = |code| Outcome::Failed(code);
        assert_eq!(failed(ErrorCode::NotFound).index(), Outcome::COUNT - 1);
        assert_eq!(failed(ErrorCode::NotFriends).name(), "not_friends");
        assert_eq!(Outcome::Redirect.name(), "redirect");
        let down = Reply::Health {
            shards: vec![ShardHealth::Silent { shard: 0 }],
            timeout_ms: 1,
        };
        assert_eq!(Outcome::of_reply(&down), failed(ErrorCode::Unavailable));
        let shed = Reply::Shard(Response::fail(ErrorCode::RateLimited, "slow down"));
        assert_eq!(Outcome::of_reply(&shed), failed(ErrorCode::RateLimited));
        assert_eq!(
            Outcome::of_reply(&Reply::Shard(Response::Done)),
            Outcome::Ok
        );
    }

    #[test]
    fn statuses() {
        let table = [
            (ErrorCode::BadRequest, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::UnknownSession, 401),
            (ErrorCode::NotFriends, 403),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::TooLarge, 413),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::Unavailable, 503),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code), status, "{code:?}");
            // JSON mode: the status tells; JSONP: always 200.
            let mut out = Vec::new();
            let failed = Response::fail(code, "m");
            Encoder::new(Listener::Client).response(
                &mut out,
                &failed,
                &Mode::Json,
                KEEP,
                false,
                DATE,
            );
            assert!(
                out.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
                "{code:?}"
            );
            Encoder::new(Listener::Client).response(
                &mut out,
                &failed,
                &Mode::Jsonp("cb".into()),
                KEEP,
                false,
                DATE,
            );
            assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{code:?}");
        }
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    /// The admin listener's answers invite no browser to read them (no
    /// CORS header), and every JSON answer says `nosniff`.
    #[test]
    fn admin_answers_have_no_cors_and_json_is_nosniff() {
        let mut out = Vec::new();
        for (listener, cors) in [(Listener::Client, true), (Listener::Admin, false)] {
            let mut encoder = Encoder::new(listener);
            encoder.response(&mut out, &Response::Done, &Mode::Json, KEEP, false, DATE);
            let head = text(&out);
            assert!(
                head.contains("X-Content-Type-Options: nosniff\r\n"),
                "{listener:?}"
            );
            assert_eq!(
                head.contains("Access-Control-Allow-Origin"),
                cors,
                "{listener:?}"
            );
            encoder.http_error(&mut out, &HttpError::not_found(), KEEP, false, DATE);
            assert_eq!(text(&out).contains("Access-Control"), cors, "{listener:?}");
            let reply = Reply::Health {
                shards: vec![],
                timeout_ms: 1,
            };
            encoder.reply(&mut out, &reply, &Mode::Json, KEEP, false, DATE);
            assert_eq!(text(&out).contains("Access-Control"), cors, "{listener:?}");
            assert!(text(&out).contains("nosniff"), "{listener:?}");
        }
    }

    #[test]
    fn the_https_redirect_is_a_308() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(Listener::Client).with_hsts(true);
        encoder.redirect(&mut out, "https://example.com/send", KEEP, DATE);
        let head = text(&out);
        assert!(
            head.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Location: https://example.com/send\r\n"),
            "{head}"
        );
        assert!(head.contains("Content-Length: 0\r\n"), "{head}");
    }

    #[test]
    fn json_answer_bytes() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(Listener::Client);
        encoder.response(&mut out, &Response::Done, &Mode::Json, KEEP, false, DATE);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: application/json\r\n\
             Content-Length: 11\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\n\r\n{\"ok\":true}"
        );
        let failed = Response::fail(ErrorCode::UnknownSession, "unknown session");
        let close = Persist {
            keep_alive: false,
            http10: false,
        };
        encoder.response(&mut out, &failed, &Mode::Json, close, false, DATE);
        let body = r#"{"ok":false,"error":{"code":"unknown_session","message":"unknown session"}}"#;
        assert_eq!(
            text(&out),
            format!(
                "HTTP/1.1 401 Unauthorized\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        // HTTP/1.0 keep-alive must be said.
        let http10 = Persist {
            keep_alive: true,
            http10: true,
        };
        encoder.response(&mut out, &Response::Done, &Mode::Json, http10, false, DATE);
        assert!(text(&out).contains("\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn jsonp_answer_bytes() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(Listener::Client);
        let mode = Mode::Jsonp("jQuery.cb_1".into());
        encoder.response(
            &mut out,
            &Response::Sent { id: 5, ts: 6 },
            &mode,
            KEEP,
            false,
            DATE,
        );
        let body = r#"/**/jQuery.cb_1({"ok":true,"id":"5","ts":6});"#;
        assert_eq!(
            text(&out),
            format!(
                "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                 Content-Type: application/javascript; charset=utf-8\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n{body}",
                body.len()
            )
        );
        let failed = Response::fail(ErrorCode::RateLimited, "slow down");
        encoder.response(&mut out, &failed, &mode, KEEP, false, DATE);
        assert!(text(&out).ends_with(
            r#"/**/jQuery.cb_1({"ok":false,"error":{"code":"rate_limited","message":"slow down"}});"#
        ));
        // Line and paragraph separators are escaped for old JavaScript.
        let sep = Response::fail(ErrorCode::BadRequest, "a\u{2028}b\u{2029}c");
        encoder.response(&mut out, &sep, &Mode::Jsonp("f".into()), KEEP, false, DATE);
        let body =
            r#"/**/f({"ok":false,"error":{"code":"bad_request","message":"a\u2028b\u2029c"}});"#;
        assert!(text(&out).ends_with(&format!("Content-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n{body}", body.len())));
    }

    #[test]
    fn handler_replies() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(Listener::Client);
        let json = Reply::Json {
            body: r#"{"ok":false}"#.into(),
        };
        encoder.reply(&mut out, &json, &Mode::Json, KEEP, false, DATE);
        assert!(text(&out).starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text(&out).ends_with("\r\n\r\n{\"ok\":false}"));
        encoder.reply(
            &mut out,
            &json,
            &Mode::Jsonp("cb".into()),
            KEEP,
            false,
            DATE,
        );
        assert!(text(&out).starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text(&out).ends_with("\r\n\r\n/**/cb({\"ok\":false});"));
        let file = Reply::File {
            content_type: "text/plain; charset=utf-8",
            body: b"up 1\n",
        };
        encoder.reply(
            &mut out,
            &file,
            &Mode::Jsonp("cb".into()),
            KEEP,
            false,
            DATE,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 5\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\nup 1\n"
        );
        let shard = Reply::Shard(Response::fail(ErrorCode::NotFriends, "no"));
        encoder.reply(&mut out, &shard, &Mode::Json, KEEP, false, DATE);
        assert!(text(&out).starts_with("HTTP/1.1 403 Forbidden\r\n"));
    }

    /// Encodes `reply` in JSON mode and checks its status line, its
    /// `Content-Length` and its body.
    fn check_reply(reply: Reply, status_line: &str, body: &str) {
        let text_plain = matches!(reply, Reply::TraceLines { .. });
        let mut out = Vec::new();
        Encoder::new(Listener::Client).reply(&mut out, &reply, &Mode::Json, KEEP, false, DATE);
        let out = text(&out);
        let (head, got) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(status_line), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        if text_plain {
            assert!(
                head.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"),
                "{head}"
            );
        }
        assert_eq!(got, body);
    }

    #[test]
    fn engine_replies() {
        let up = |shard| ShardHealth::Up {
            shard,
            sessions: 3,
            tabs: 4,
            polls: 2,
        };
        check_reply(
            Reply::Health {
                shards: vec![up(0), up(1)],
                timeout_ms: 1000,
            },
            "HTTP/1.1 200 OK\r\n",
            concat!(
                r#"{"ok":true,"shards":[{"shard":0,"ok":true,"sessions":3,"tabs":4},"#,
                r#"{"shard":1,"ok":true,"sessions":3,"tabs":4}]}"#
            ),
        );
        let some_down = vec![
            up(0),
            ShardHealth::Refused { shard: 1 },
            ShardHealth::Silent { shard: 2 },
        ];
        check_reply(
            Reply::Health {
                shards: some_down.clone(),
                timeout_ms: 1000,
            },
            "HTTP/1.1 503 Service Unavailable\r\n",
            concat!(
                r#"{"ok":false,"error":{"code":"unavailable","message":"a shard did not answer within 1000 ms"},"#,
                r#""shards":[{"shard":0,"ok":true,"sessions":3,"tabs":4},{"shard":1,"ok":false},{"shard":2,"ok":false}]}"#
            ),
        );
        // A shard that refused did answer: it counts as up in metrics.
        check_reply(
            Reply::Metrics {
                shards: some_down,
                families: vec![{
                    let mut panics = Family::new(
                        "switchboard_panics_total",
                        "Panics caught.",
                        metrics::Kind::Counter,
                    );
                    panics.push(vec![("shard", "0".into())], metrics::Value::Int(2));
                    panics.push(vec![("shard", "1".into())], metrics::Value::Int(0));
                    panics
                }],
            },
            "HTTP/1.1 200 OK\r\n",
            "# HELP switchboard_sessions Sessions owned by each shard.\n# TYPE switchboard_sessions gauge\n\
             switchboard_sessions{shard=\"0\"} 3\n\
             # HELP switchboard_tabs Tabs attached on each shard.\n# TYPE switchboard_tabs gauge\n\
             switchboard_tabs{shard=\"0\"} 4\n\
             # HELP switchboard_held_polls Polls held open on each shard (one per polling tab).\n# TYPE switchboard_held_polls gauge\n\
             switchboard_held_polls{shard=\"0\"} 2\n\
             # HELP switchboard_shard_up Whether the shard answered within the health timeout.\n# TYPE switchboard_shard_up gauge\n\
             switchboard_shard_up{shard=\"0\"} 1\nswitchboard_shard_up{shard=\"1\"} 1\nswitchboard_shard_up{shard=\"2\"} 0\n\
             # HELP switchboard_panics_total Panics caught.\n# TYPE switchboard_panics_total counter\n\
             switchboard_panics_total{shard=\"0\"} 2\nswitchboard_panics_total{shard=\"1\"} 0\n",
        );
        let on = TraceState {
            user: 42,
            on: true,
            file: "/d/traces/user-42.log".into(),
            bytes: 120,
            bytes_max: 4096,
            ends_in_ms: Some(59_001),
            traced: 1,
        };
        check_reply(
            Reply::Trace(on.clone()),
            "HTTP/1.1 200 OK\r\n",
            concat!(
                r#"{"ok":true,"user":42,"trace":"on","file":"/d/traces/user-42.log","#,
                r#""bytes":120,"bytes_max":4096,"ends_in_ms":59001,"traced":1}"#
            ),
        );
        let off = TraceState {
            on: false,
            bytes: 300,
            bytes_max: 0,
            ends_in_ms: None,
            traced: 0,
            ..on.clone()
        };
        check_reply(
            Reply::Trace(off.clone()),
            "HTTP/1.1 200 OK\r\n",
            r#"{"ok":true,"user":42,"trace":"off","file":"/d/traces/user-42.log","traced":0}"#,
        );
        check_reply(
            Reply::TraceLines {
                state: on,
                lines: "a\nb\n".into(),
                count: 2,
            },
            "HTTP/1.1 200 OK\r\n",
            "# trace of user 42: on, 120 of 4096 bytes, ends in 60 s\n\
             # file: /d/traces/user-42.log\n# the newest 2 lines:\na\nb\n",
        );
        check_reply(
            Reply::TraceLines {
                state: off,
                lines: String::new(),
                count: 0,
            },
            "HTTP/1.1 200 OK\r\n",
            "# trace of user 42: off (300 bytes in the file)\n\
             # file: /d/traces/user-42.log\n# the newest 0 lines:\n",
        );
        check_reply(
            Reply::DemoUsers(vec![
                DemoUser {
                    id: 1,
                    name: "al\"ice".into(),
                    friends: vec![2, 3],
                },
                DemoUser {
                    id: 2,
                    name: "bob".into(),
                    friends: vec![],
                },
            ]),
            "HTTP/1.1 200 OK\r\n",
            r#"{"ok":true,"users":[{"id":1,"name":"al\"ice","friends":[2,3]},{"id":2,"name":"bob","friends":[]}]}"#,
        );
        check_reply(
            Reply::DemoUsers(vec![]),
            "HTTP/1.1 200 OK\r\n",
            r#"{"ok":true,"users":[]}"#,
        );
        check_reply(
            Reply::DemoToken {
                token: "2.99.ab".into(),
                user: 2,
                name: "bob".into(),
            },
            "HTTP/1.1 200 OK\r\n",
            r#"{"ok":true,"token":"2.99.ab","user":{"id":2,"name":"bob"}}"#,
        );
    }

    /// A client file: 200 with the file, or 304 with no content headers;
    /// both cacheable, tagged, `nosniff` and open to any origin.
    #[test]
    fn client_files_are_tagged_and_cacheable() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(Listener::Client);
        let file = &client::FILES[0];
        let tail = format!(
            "Cache-Control: public, no-cache\r\nETag: {}\r\nX-Content-Type-Options: nosniff\r\n\
             Access-Control-Allow-Origin: *\r\n\r\n",
            file.etag()
        );
        encoder.client_file(&mut out, file, false, KEEP, DATE);
        let head = format!(
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/javascript; charset=utf-8\r\nContent-Length: {}\r\n{tail}",
            file.body.len()
        );
        assert_eq!(&out[..head.len()], head.as_bytes(), "{}", text(&out));
        assert_eq!(&out[head.len()..], file.body);
        encoder.client_file(&mut out, file, true, KEEP, DATE);
        assert_eq!(
            text(&out),
            format!("HTTP/1.1 304 Not Modified\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n{tail}")
        );
    }

    #[test]
    fn http_errors_are_never_jsonp() {
        let mut out = Vec::new();
        let mut encoder = Encoder::new(Listener::Client);
        let close = Persist {
            keep_alive: false,
            http10: false,
        };
        encoder.http_error(
            &mut out,
            &HttpError::method_not_allowed("GET, POST"),
            KEEP,
            false,
            DATE,
        );
        let body = r#"{"ok":false,"error":{"code":"bad_request","message":"method not allowed for this path"}}"#;
        assert_eq!(
            text(&out),
            format!(
                "HTTP/1.1 405 Method Not Allowed\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\nAllow: GET, POST\r\n\r\n{body}",
                body.len()
            )
        );
        // HEAD: the same head, no body.
        encoder.http_error(
            &mut out,
            &HttpError::method_not_allowed("GET, POST"),
            KEEP,
            true,
            DATE,
        );
        assert!(text(&out).ends_with(&format!("Content-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nAccess-Control-Allow-Origin: *\r\nAllow: GET, POST\r\n\r\n", body.len())));
        for (error, status, code) in [
            (
                HttpError::bad_request("x"),
                "400 Bad Request",
                "bad_request",
            ),
            (HttpError::not_found(), "404 Not Found", "not_found"),
            (
                HttpError::timeout("x"),
                "408 Request Timeout",
                "bad_request",
            ),
            (
                HttpError::body_too_large(),
                "413 Content Too Large",
                "too_large",
            ),
            (HttpError::line_too_long(), "414 URI Too Long", "too_large"),
            (
                HttpError::headers_too_large(),
                "431 Request Header Fields Too Large",
                "too_large",
            ),
        ] {
            encoder.http_error(&mut out, &error, close, false, DATE);
            let out = text(&out);
            assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{out}");
            assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
            assert!(
                out.contains(&format!(r#"{{"ok":false,"error":{{"code":"{code}","#)),
                "{out}"
            );
        }
    }

    #[test]
    fn dates() {
        for (unix_s, want) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            assert_eq!(std::str::from_utf8(&http_date(unix_s)).unwrap(), want);
        }
    }
}
