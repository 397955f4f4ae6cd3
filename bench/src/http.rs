//! A minimal HTTP/1.1 keep-alive client, just what a browser's `<script>`
//! tag or XHR sends: `GET path?query` with a Host header (or a `POST` with
//! a body, as a BOSH client's XHR), answers with a Content-Length body (all
//! Switchboard and ejabberd send), JSONP bodies unwrapped. One request at a
//! time per connection, buffers reused.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect failed (refused, backlog full, out of fds).
    Connect,
    /// The connection broke or closed before the answer was complete.
    Io,
    /// No complete answer within the deadline.
    Timeout,
    /// The answer was not HTTP we understand.
    Malformed,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Failure::Connect => "io_connect",
            Failure::Io => "io_closed",
            Failure::Timeout => "timeout",
            Failure::Malformed => "malformed_http",
        }
    }
}

/// Why a request was sent a second time (see [`Conn::get`]): how the
/// reused keep-alive connection ended before any byte of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Writing the request failed (the server had closed it: EPIPE, reset).
    Write,
    /// The read saw the server's FIN (EOF) before any byte.
    Eof,
    /// The read failed (ECONNRESET: the server closed with the request
    /// unread) before any byte.
    Reset,
}

/// A request sent a second time, after its reused keep-alive connection
/// closed before any byte of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retried {
    pub why: Retry,
    /// When the close was seen.
    pub at: std::time::Instant,
    /// How long after the request was written: a request the server held
    /// (a poll) and then closed unanswered shows as a long wait; an idle
    /// connection closed as the request crossed its close, as a short one.
    pub waited: Duration,
    /// The closed connection's age and the answers it had carried (which
    /// server had accepted it can be told from its age).
    pub conn_age: Duration,
    pub conn_answers: u64,
}

/// What happened on a `Conn` that its owner may want to count: taken (and
/// cleared) by [`Conn::take_events`] after each request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnEvents {
    /// The last request was sent again (at most once).
    pub retried: Option<Retried>,
    /// The answer said `Connection: close` (the connection is dropped; the
    /// next request opens a new one).
    pub closed_by_server: bool,
}

/// One keep-alive connection to the server.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Whether the open stream has carried a whole answer: only such a
    /// reused connection may be retried (a browser retries a request whose
    /// keep-alive connection the server closed while idle, never one on a
    /// fresh connection).
    reused: bool,
    /// When the open stream was connected, and the answers it carried.
    opened_at: std::time::Instant,
    answers: u64,
    /// Read buffer; holds one answer at a time.
    buf: Vec<u8>,
    /// Request buffer, reused.
    req: Vec<u8>,
    /// How many TCP connections this `Conn` opened (1 = kept alive).
    pub opened: u64,
    events: ConnEvents,
}

/// An answer: status and the JSON body (JSONP wrapper removed).
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// A retry or a close on the way to this answer (taken from the
    /// connection; after a failure, [`Conn::take_events`] has them).
    pub events: ConnEvents,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            reused: false,
            opened_at: std::time::Instant::now(),
            answers: 0,
            buf: Vec::with_capacity(4096),
            req: Vec::with_capacity(512),
            opened: 0,
            events: ConnEvents::default(),
        }
    }

    /// What happened during the last request (a retry, a close by the
    /// server), cleared.
    pub fn take_events(&mut self) -> ConnEvents {
        std::mem::take(&mut self.events)
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Opens the TCP connection now (a browser's connection setup, timed
    /// separately from the request).
    pub async fn open(&mut self) -> Result<(), Failure> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|_| Failure::Connect)?;
            let _ = s.set_nodelay(true);
            self.opened += 1;
            self.stream = Some(s);
            self.reused = false;
            self.opened_at = std::time::Instant::now();
            self.answers = 0;
        }
        Ok(())
    }

    /// `GET target` (path and query, already encoded), waiting at most
    /// `deadline` for the whole answer. As browsers do, a request on a
    /// reused keep-alive connection that the server closed before any byte
    /// of the answer (the write fails, or the read sees EOF or a reset) is
    /// sent once more on a new connection ([`ConnEvents::retried`]; safe
    /// for `/send` too: the `cid` makes a repeat harmless). An answer with
    /// `Connection: close` ends the connection; the next request opens a
    /// new one.
    pub async fn get(
        &mut self,
        target: &str,
        jsonp: Option<&str>,
        deadline: Duration,
    ) -> Result<Answer<'_>, Failure> {
        self.req.clear();
        self.req.extend_from_slice(b"GET ");
        self.req.extend_from_slice(target.as_bytes());
        if let Some(cb) = jsonp {
            self.req.extend_from_slice(if target.contains('?') {
                b"&callback="
            } else {
                b"?callback="
            });
            self.req.extend_from_slice(cb.as_bytes());
        }
        self.req
            .extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n");
        let (status, start, end) = self.finish(deadline).await?;
        let events = self.take_events();
        let mut body = &self.buf[start..end];
        if let Some(cb) = jsonp {
            // `/**/NAME(JSON);` when the server accepted the callback.
            let prefix_len = 4 + cb.len() + 1;
            if body.starts_with(b"/**/") && body.ends_with(b");") && body.len() >= prefix_len + 2 {
                body = &body[prefix_len..body.len() - 2];
            }
        }
        Ok(Answer {
            status,
            body,
            events,
        })
    }

    /// `POST target` with `body` of `content_type`, waiting at most
    /// `deadline` for the whole answer. Reopens a connection closed while
    /// idle once, like `get` (a BOSH request repeated with its `rid` is
    /// answered from the server's cache, so a repeat is harmless).
    pub async fn post(
        &mut self,
        target: &str,
        content_type: &str,
        body: &[u8],
        deadline: Duration,
    ) -> Result<Answer<'_>, Failure> {
        use std::io::Write as _;
        self.req.clear();
        let _ = write!(
            self.req,
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.req.extend_from_slice(body);
        let (status, start, end) = self.finish(deadline).await?;
        let events = self.take_events();
        Ok(Answer {
            status,
            body: &self.buf[start..end],
            events,
        })
    }

    /// Sends `req` and reads the answer within `deadline`; a failure drops
    /// the connection (the next request opens a new one).
    async fn finish(&mut self, deadline: Duration) -> Result<(u16, usize, usize), Failure> {
        self.events = ConnEvents::default();
        match tokio::time::timeout(deadline, self.exchange(true)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(Failure::Timeout)
            }
        }
    }

    /// A retry's record, for a request written at `written`.
    fn retried(&self, why: Retry, written: std::time::Instant) -> Retried {
        let at = std::time::Instant::now();
        Retried {
            why,
            at,
            waited: at.saturating_duration_since(written),
            conn_age: at.saturating_duration_since(self.opened_at),
            conn_answers: self.answers,
        }
    }

    /// Writes the request and reads one answer into `buf`; returns the
    /// status and the body's range.
    async fn exchange(&mut self, may_retry: bool) -> Result<(u16, usize, usize), Failure> {
        let mut retry = may_retry && self.stream.is_some() && self.reused;
        loop {
            self.open().await?;
            let stream = self.stream.as_mut().expect("open");
            let written = std::time::Instant::now();
            if stream.write_all(&self.req).await.is_err() {
                self.stream = None;
                if retry {
                    retry = false;
                    self.events.retried = Some(self.retried(Retry::Write, written));
                    continue;
                }
                return Err(Failure::Io);
            }
            self.buf.clear();
            loop {
                if self.buf.capacity() - self.buf.len() < 2048 {
                    self.buf.reserve(8192);
                }
                let n = match stream.read_buf(&mut self.buf).await {
                    Ok(n) => n,
                    Err(_) => {
                        self.stream = None;
                        if retry && self.buf.is_empty() {
                            retry = false;
                            self.events.retried = Some(self.retried(Retry::Reset, written));
                            break;
                        }
                        return Err(Failure::Io);
                    }
                };
                if n == 0 {
                    self.stream = None;
                    if retry && self.buf.is_empty() {
                        retry = false;
                        self.events.retried = Some(self.retried(Retry::Eof, written));
                        break;
                    }
                    return Err(Failure::Io);
                }
                retry = false;
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                let head_len = match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => n,
                    Ok(httparse::Status::Partial) => continue,
                    Err(_) => return Err(Failure::Malformed),
                };
                let status = resp.code.ok_or(Failure::Malformed)?;
                let mut length = None;
                let mut close = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let length = length.ok_or(Failure::Malformed)?;
                let end = head_len + length;
                while self.buf.len() < end {
                    self.buf.reserve(end - self.buf.len());
                    let n = stream
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|_| Failure::Io)?;
                    if n == 0 {
                        self.stream = None;
                        return Err(Failure::Io);
                    }
                }
                if close {
                    self.stream = None;
                    self.events.closed_by_server = true;
                } else {
                    self.reused = true;
                }
                self.answers += 1;
                return Ok((status, head_len, end));
            }
        }
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved kept).
pub fn encode_into(out: &mut String, value: &str) {
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}
