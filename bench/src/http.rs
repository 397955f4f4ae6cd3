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

/// One keep-alive connection to the server.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Read buffer; holds one answer at a time.
    buf: Vec<u8>,
    /// Request buffer, reused.
    req: Vec<u8>,
    /// How many TCP connections this `Conn` opened (1 = kept alive).
    pub opened: u64,
}

/// An answer: status and the JSON body (JSONP wrapper removed).
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
            req: Vec::with_capacity(512),
            opened: 0,
        }
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
        }
        Ok(())
    }

    /// `GET target` (path and query, already encoded), waiting at most
    /// `deadline` for the whole answer. A keep-alive connection the server
    /// closed while idle is reopened once, before any answer byte (safe for
    /// `/send` too: the `cid` makes a repeat harmless).
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
        let mut body = &self.buf[start..end];
        if let Some(cb) = jsonp {
            // `/**/NAME(JSON);` when the server accepted the callback.
            let prefix_len = 4 + cb.len() + 1;
            if body.starts_with(b"/**/") && body.ends_with(b");") && body.len() >= prefix_len + 2 {
                body = &body[prefix_len..body.len() - 2];
            }
        }
        Ok(Answer { status, body })
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
        Ok(Answer {
            status,
            body: &self.buf[start..end],
        })
    }

    /// Sends `req` and reads the answer within `deadline`; a failure drops
    /// the connection (the next request opens a new one).
    async fn finish(&mut self, deadline: Duration) -> Result<(u16, usize, usize), Failure> {
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

    /// Writes the request and reads one answer into `buf`; returns the
    /// status and the body's range.
    async fn exchange(&mut self, may_retry: bool) -> Result<(u16, usize, usize), Failure> {
        let mut retry = may_retry && self.stream.is_some();
        loop {
            self.open().await?;
            let stream = self.stream.as_mut().expect("open");
            if stream.write_all(&self.req).await.is_err() {
                self.stream = None;
                if retry {
                    retry = false;
                    continue;
                }
                return Err(Failure::Io);
            }
            self.buf.clear();
            loop {
                if self.buf.capacity() - self.buf.len() < 2048 {
                    self.buf.reserve(8192);
                }
                let n = stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|_| Failure::Io)?;
                if n == 0 {
                    self.stream = None;
                    if retry && self.buf.is_empty() {
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
                }
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
