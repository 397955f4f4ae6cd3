//! The request body: a decoder that moves body bytes from the front of the
//! read buffer into a bounded body buffer, for `Content-Length` bodies and
//! chunked ones (sizes parsed with `httparse::parse_chunk_size`). Like the
//! head parser it says how much it consumed and whether it is done, so the
//! connection loop can drain and refill its buffer; a body over the limit is
//! refused as soon as that is known (a declared length in `head.rs`, a chunk
//! size here).

use crate::head::{Framing, HttpError};
use crate::limits::{Limits, CHUNK_SIZE_LINE_BYTES_MAX};

/// Where a body decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// This many body bytes still to come (`Content-Length`).
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data: this many bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last (zero) chunk: trailer lines until an empty one; the
    /// count is the trailer bytes seen so far.
    Trailer(usize),
    /// The body is complete.
    Done,
}

/// Decodes one request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyDecoder {
    /// Where it is.
    state: State,
}

impl BodyDecoder {
    /// A decoder for a body framed as the head said.
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
        };
        BodyDecoder { state }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Moves what it can of the body from the front of `input` to `body`
    /// and answers how many bytes of `input` it consumed (bytes after the
    /// body are left alone: they are the next pipelined request). Call
    /// again with more input until [`BodyDecoder::is_done`].
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Length(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    body.extend_from_slice(&rest[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(pos);
                }
                State::ChunkSize => {
                    // httparse takes an empty size as 0; the grammar needs
                    // at least one hex digit.
                    match rest.first() {
                        None => return Ok(pos),
                        Some(b) if !b.is_ascii_hexdigit() => {
                            return Err(HttpError::bad_request("malformed chunk size"))
                        }
                        Some(_) => {}
                    }
                    match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            if n > CHUNK_SIZE_LINE_BYTES_MAX {
                                return Err(HttpError::bad_request("chunk size line too long"));
                            }
                            pos += n;
                            if size == 0 {
                                self.state = State::Trailer(0);
                            } else if size
                                > (limits.body_bytes_max - body.len().min(limits.body_bytes_max))
                                    as u64
                            {
                                return Err(HttpError::body_too_large());
                            } else {
                                self.state = State::ChunkData(size);
                            }
                        }
                        Ok(httparse::Status::Partial) => {
                            if rest.len() > CHUNK_SIZE_LINE_BYTES_MAX {
                                return Err(HttpError::bad_request("chunk size line too long"));
                            }
                            return Ok(pos);
                        }
                        Err(_) => return Err(HttpError::bad_request("malformed chunk size")),
                    }
                }
                State::ChunkData(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    body.extend_from_slice(&rest[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd => match rest {
                    [] | [b'\r'] => return Ok(pos),
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = State::ChunkSize;
                    }
                    _ => return Err(HttpError::bad_request("chunk data not followed by CRLF")),
                },
                State::Trailer(seen) => match rest.iter().position(|&b| b == b'\n') {
                    None => {
                        // Trailer fields are discarded, but bounded like
                        // the header section they extend.
                        if seen + rest.len() > limits.header_section_bytes_max {
                            return Err(HttpError::headers_too_large());
                        }
                        return Ok(pos);
                    }
                    Some(i) => {
                        let line = &rest[..i];
                        pos += i + 1;
                        if line.is_empty() || line == b"\r" {
                            self.state = State::Done;
                        } else {
                            let seen = seen + i + 1;
                            if seen > limits.header_section_bytes_max {
                                return Err(HttpError::headers_too_large());
                            }
                            self.state = State::Trailer(seen);
                        }
                    }
                },
            }
        }
    }
}

/// A whole request parsed from one buffer by [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The head.
    pub head: crate::head::Head,
    /// The decoded body (empty when there is none).
    pub body: Vec<u8>,
    /// Bytes of the buffer the request took (head and body); what follows
    /// is the next pipelined request.
    pub len: usize,
}

/// Parses one whole request (head and body) from the start of `buf`:
/// `Ok(None)` while more bytes are needed. The fuzzing entry point: it
/// never panics, whatever `buf` holds.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, HttpError> {
    let Some(head) = crate::head::parse_head(buf, limits)? else {
        return Ok(None);
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    let used = decoder.decode(&buf[head.len..], &mut body, limits)?;
    if !decoder.is_done() {
        return Ok(None);
    }
    let len = head.len + used;
    Ok(Some(Parsed { head, body, len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` as a body framed by `framing`; a valid one is also
    /// re-run split at every byte boundary, draining what the first part
    /// consumed, as the connection loop does.
    fn check(framing: Framing, input: &[u8], expected: Result<(&[u8], usize), u16>) {
        let limits = Limits::default();
        let mut decoder = BodyDecoder::new(framing);
        let mut body = Vec::new();
        let got = decoder.decode(input, &mut body, &limits);
        let (want_body, want_used) = match expected {
            Err(status) => {
                assert_eq!(got.map_err(|e| e.status).err(), Some(status), "{input:?}");
                return;
            }
            Ok(want) => want,
        };
        assert_eq!(got, Ok(want_used), "{input:?}");
        assert!(decoder.is_done(), "{input:?}");
        assert_eq!(body, want_body);
        for split in 0..want_used {
            let mut decoder = BodyDecoder::new(framing);
            let mut body = Vec::new();
            let mut buf = input[..split].to_vec();
            let first = decoder.decode(&buf, &mut body, &limits).unwrap();
            assert!(!decoder.is_done(), "done early at split {split}");
            buf.drain(..first);
            buf.extend_from_slice(&input[split..]);
            let second = decoder.decode(&buf, &mut body, &limits).unwrap();
            assert!(decoder.is_done(), "split {split}");
            assert_eq!(first + second, want_used, "split {split}");
            assert_eq!(body, want_body, "split {split}");
        }
    }

    #[test]
    fn valid_bodies() {
        check(Framing::Length(0), b"GET /", Ok((b"", 0)));
        check(Framing::Length(5), b"helloGET /", Ok((b"hello", 5)));
        check(
            Framing::Chunked,
            b"5\r\nhello\r\n0\r\n\r\nGET",
            Ok((b"hello", 15)),
        );
        check(
            Framing::Chunked,
            b"3\r\nhel\r\nA;name=value\r\nlo world!!\r\n0\r\n\r\n",
            Ok((b"hello world!!", 39)),
        );
        check(
            Framing::Chunked,
            b"0\r\nX-Trailer: yes\r\n\r\n",
            Ok((b"", 21)),
        );
        check(Framing::Chunked, b"00000\r\n\r\n", Ok((b"", 9)));
    }

    #[test]
    fn malformed_bodies() {
        let table: &[(&str, &[u8], u16)] = &[
            ("size not hex", b"x\r\nhello\r\n0\r\n\r\n", 400),
            ("empty size", b"\r\nhello\r\n0\r\n\r\n", 400),
            ("negative size", b"-5\r\nhello\r\n0\r\n\r\n", 400),
            ("size overflows u64", b"fffffffffffffffff\r\n", 400),
            ("data longer than size", b"5\r\nhelloX\r\n0\r\n\r\n", 400),
            ("bare LF after data", b"5\r\nhello\n0\r\n\r\n", 400),
            ("chunk over body limit", b"10001\r\n", 413),
        ];
        for (reason, input, status) in table {
            let got = BodyDecoder::new(Framing::Chunked).decode(
                input,
                &mut Vec::new(),
                &Limits::default(),
            );
            assert_eq!(got.map_err(|e| e.status).err(), Some(*status), "{reason}");
        }
        let mut long_ext = b"5;".to_vec();
        long_ext.resize(CHUNK_SIZE_LINE_BYTES_MAX + 1, b'x');
        let got = BodyDecoder::new(Framing::Chunked).decode(
            &long_ext,
            &mut Vec::new(),
            &Limits::default(),
        );
        assert_eq!(got.unwrap_err().status, 400, "endless chunk extension");
        let mut long_trailer = b"0\r\nX: ".to_vec();
        long_trailer.resize(3 + HEADER_SECTION_BYTES_MAX + 1, b'x');
        let got = BodyDecoder::new(Framing::Chunked).decode(
            &long_trailer,
            &mut Vec::new(),
            &Limits::default(),
        );
        assert_eq!(got.unwrap_err().status, 431, "endless trailer");
    }

    use crate::limits::{BODY_BYTES_MAX, HEADER_SECTION_BYTES_MAX};

    /// A chunked body of `len` bytes in chunks of at most `chunk`.
    fn chunked(len: usize, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk);
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.resize(out.len() + n, b'b');
            out.extend_from_slice(b"\r\n");
            left -= n;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn body_limit() {
        let limits = Limits::default();
        for chunk in [1000, BODY_BYTES_MAX, BODY_BYTES_MAX + 1] {
            let at = chunked(BODY_BYTES_MAX, chunk);
            let mut body = Vec::new();
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            assert_eq!(decoder.decode(&at, &mut body, &limits), Ok(at.len()));
            assert!(decoder.is_done());
            assert_eq!(body.len(), BODY_BYTES_MAX);
            let over = chunked(BODY_BYTES_MAX + 1, chunk);
            let got = BodyDecoder::new(Framing::Chunked).decode(&over, &mut Vec::new(), &limits);
            assert_eq!(got.unwrap_err().status, 413, "chunks of {chunk}");
        }
        // Declared: parse_request sees the head's decision.
        let head =
            |len: usize| format!("POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        let mut at = head(BODY_BYTES_MAX).into_bytes();
        at.resize(at.len() + BODY_BYTES_MAX, b'b');
        let parsed = parse_request(&at, &limits).unwrap().unwrap();
        assert_eq!((parsed.body.len(), parsed.len), (BODY_BYTES_MAX, at.len()));
        let mut over = head(BODY_BYTES_MAX + 1).into_bytes();
        over.resize(over.len() + BODY_BYTES_MAX + 1, b'b');
        assert_eq!(parse_request(&over, &limits).unwrap_err().status, 413);
    }

    #[test]
    fn parse_request_needs_the_whole_body() {
        let limits = Limits::default();
        let input = b"POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nNEXT";
        let whole = input.len() - 4;
        for split in 0..whole {
            assert_eq!(
                parse_request(&input[..split], &limits),
                Ok(None),
                "split {split}"
            );
        }
        let parsed = parse_request(input, &limits).unwrap().unwrap();
        assert_eq!((parsed.body.as_slice(), parsed.len), (&b"hi"[..], whole));
    }
}
