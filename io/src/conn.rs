//! The per-connection loop: read a request (head, then body), decide it,
//! call the handler, write the answer, and go on with the next request on
//! the same connection (keep-alive). Pipelined requests are answered
//! strictly in order, because the next head is parsed from the bytes left
//! in the buffer only after the current answer is written. While a call
//! runs the socket is not read, so a pipelining client is held back by TCP
//! flow control, not by our memory; except during a held poll, which reads
//! on (at most one chunk, [`watched`]) to notice a client that hangs up.
//!
//! Every wait has a deadline, raced against the read or write with the
//! handler's timer by [`within`]: the first byte of the first request
//! (quiet close, short: a socket that never speaks must not hold a slot
//! for long), idle between requests (quiet close), head and body (408),
//! each write (drop), lingering close (also cut at a stopping server's drain
//! bound). After an answer that ends the connection
//! we close gracefully: flush, shut down our write side, then read and
//! discard what the client still sends until it closes, the linger timeout
//! or the linger byte limit, so the client reads the whole answer and then
//! end-of-stream, never a reset (which could discard the answer unread).
//!
//! Buffers are borrowed from the thread (`buffers.rs`), never owned by a
//! connection between requests: every read goes into the thread's scratch
//! buffer, and only the bytes the connection must keep (a request read so
//! far, pipelined requests behind it) are copied into a pooled buffer of
//! its own, bounded by [`Limits::read_buffer_bytes_max`]. That buffer, the
//! decoded body (bounded by the body limit) and the answer go back to the
//! pool as soon as they are consumed: before a call that may be held (a
//! long-poll) and after each answer. An idle connection, or one holding a
//! poll, has no buffer at all (unless the client sent the start of a next
//! request during the poll: that chunk is kept until the answer); one that
//! took a big request gives its big buffers back to be freed.

use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::BodyDecoder;
use crate::buffers::{self, Buf};
use crate::call::{decide, endpoint, known_params, AdminGate, Decision, Endpoint};
use crate::deadline::{within, TimedOut};
use crate::head::{HeadParser, HttpError, Method, Version};
use crate::limits::{Limits, READ_CHUNK_BYTES};
use crate::query::Params;
use crate::response::{http_date, status_of_response, Encoder, Outcome, Persist, CONTINUE};
use crate::{Call, Handler, Listener};

/// What a connection needs to know besides its stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Sizes and deadlines.
    pub limits: Limits,
    /// Who may call the admin listener: its own address (for `Host`) and
    /// `SWITCHBOARD_ADMIN_TOKEN`. The default refuses every admin request.
    pub admin: AdminGate,
    /// Every answer carries `Strict-Transport-Security` (TLS connections
    /// when TLS is required).
    pub hsts: bool,
    /// `Some(port)`: every request is answered `308` to the https URL of
    /// the same host, path and query on `port` (the plain port when TLS is
    /// required; 443 is left out of the URL). `None`: requests are served.
    pub https_redirect: Option<u16>,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed between requests: the normal end.
    PeerClosed,
    /// The server is stopping: closed between requests, or gracefully
    /// after an answer that said `Connection: close` for it.
    Stopped,
    /// The client closed with a request partly sent (nothing to answer).
    PeerClosedMidRequest,
    /// The client closed (or reset) the connection while its call was in
    /// flight, a held poll say: the call is dropped unanswered
    /// (`watched`), and the engine frees what it held.
    PeerClosedDuringCall,
    /// The connection sent nothing within the first-byte timeout of being
    /// accepted (quiet close).
    FirstByteTimeout,
    /// No next request began within the idle timeout (quiet close).
    IdleTimeout,
    /// The answer said `Connection: close` (the client asked, or HTTP/1.0
    /// without keep-alive); closed gracefully.
    NotKeepAlive,
    /// The request head did not arrive in time: 408, graceful close.
    HeadTimeout,
    /// The request body did not arrive in time: 408, graceful close.
    BodyTimeout,
    /// The request could not be read (400, 413, 414, 431: the status):
    /// answered, graceful close.
    HttpError(u16),
    /// An admin request without the right bearer token: 401 with
    /// `Connection: close`, graceful close (each guess costs a connection).
    Unauthorized,
    /// An answer could not be written within the write timeout: dropped.
    WriteTimeout,
    /// Reading failed.
    ReadError(io::ErrorKind),
    /// Writing failed.
    WriteError(io::ErrorKind),
    /// Handed back to the caller to be served on shard `to`, the home
    /// shard of the user its last calls were for ([`serve_movable`]).
    Moved { to: usize },
}

/// What happened on one connection, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOutcome {
    /// Answers written (each request gets one, error answers included;
    /// `100 Continue` is not counted).
    pub requests_answered: u64,
    /// Why the connection ended.
    pub reason: CloseReason,
    /// Bytes read from the stream (lingering included).
    pub bytes_read: u64,
    /// Bytes written to the stream.
    pub bytes_written: u64,
    /// Bytes read and discarded while lingering after the last answer.
    pub linger_bytes: u64,
}

/// Serves one connection until it ends, and says how it went. `stream`
/// must implement `close` as a half-close of the write side (shutdown),
/// as glommio's `TcpStream` and TLS streams do: lingering close reads
/// after it.
pub async fn serve<S, H>(stream: S, listener: Listener, handler: &H, config: &Config) -> ConnOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    match serve_movable(stream, listener, handler, config, Resume::default()).await {
        Served::Ended(outcome) => outcome,
        Served::Moved(moved) => {
            unreachable!("a connection that may not move moved to {}", moved.to)
        }
    }
}

/// Where a connection stands when its service begins: from its accept
/// (the default), or on the shard it moved to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Whether it may be handed back to move ([`Handler::home_elsewhere`]):
    /// plain TCP connections of the client listener. A TLS connection's
    /// state lives in its stream object and stays where it was accepted.
    pub movable: bool,
    /// Whether it answered a request before (its next wait is then the
    /// keep-alive idle timeout, not the short first-byte one).
    pub answered: bool,
    /// How many times it moved so far (at most [`MOVES_MAX`]).
    pub moves: u32,
}

/// Most times one connection moves between shards in its life: a
/// connection whose calls alternate between users homed on different
/// shards stops moving after this, and its calls cross the mesh instead.
pub const MOVES_MAX: u32 = 4;

/// Consecutive answered calls for users homed on one other shard after
/// which a connection moves there: one call says little (a browser may
/// share a connection between users, a load generator does).
pub const MOVE_AFTER_CALLS: u32 = 2;

/// How [`serve_movable`] ended.
pub enum Served<S> {
    /// The connection is closed (or dropped); why, and what it did.
    Ended(ConnOutcome),
    /// The connection is handed back to be served on another shard.
    Moved(Moved<S>),
}

/// A connection handed back between two requests, to be served on shard
/// `to` with [`serve_movable`] and `resume`: its buffer was empty (no
/// byte of a next request read), so the stream holds all that follows.
pub struct Moved<S> {
    /// The stream, unread past the last answered request.
    pub stream: S,
    /// The shard to serve it on.
    pub to: usize,
    /// Where it stands (its moves not yet counting this one: the caller
    /// counts it when the move is made).
    pub resume: Resume,
    /// What it did here (its reason: [`CloseReason::Moved`]).
    pub outcome: ConnOutcome,
}

/// [`serve`], for a connection that may move: after a keep-alive answer,
/// with nothing of a next request read, and its last
/// [`MOVE_AFTER_CALLS`] calls for users that [`Handler::home_elsewhere`]
/// places on one other shard, the stream is handed back
/// ([`Served::Moved`]) so the caller serves it there, where those calls
/// are local (at most [`MOVES_MAX`] times).
pub async fn serve_movable<S, H>(
    stream: S,
    listener: Listener,
    handler: &H,
    config: &Config,
    resume: Resume,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut conn = Conn {
        stream,
        resume,
        streak: None,
        buf: Buf::new(),
        body: Buf::new(),
        out: Buf::new(),
        encoder: Encoder::new(listener).with_hsts(config.hsts),
        parser: HeadParser::new(),
        limits: &config.limits,
        outcome: ConnOutcome {
            requests_answered: 0,
            reason: CloseReason::PeerClosed,
            bytes_read: 0,
            bytes_written: 0,
            linger_bytes: 0,
        },
    };
    // The ending runs after the request loop's future is done, so the
    // task's size is the larger of the two, not their sum.
    let ending = conn.run(listener, handler, config).await;
    let reason = match ending {
        Ending::Closed(reason) => reason,
        Ending::Linger(reason) => conn.linger(handler, reason).await,
        Ending::Fail {
            endpoint,
            error,
            reason,
        } => conn.fail(handler, endpoint, &error, reason).await,
    };
    conn.outcome.reason = reason;
    match reason {
        CloseReason::Moved { to } => Served::Moved(Moved {
            stream: conn.stream,
            to,
            resume: Resume {
                movable: true,
                answered: true,
                moves: conn.resume.moves,
            },
            outcome: conn.outcome,
        }),
        _ => Served::Ended(conn.outcome),
    }
}

/// How the request loop ends.
enum Ending {
    /// The connection is done (closed by the client, timed out, failed
    /// or dropped): nothing more to write or read.
    Closed(CloseReason),
    /// The last answer is written: close gracefully.
    Linger(CloseReason),
    /// A request could not be read: answer `error` (counted under
    /// `endpoint`), then close gracefully.
    Fail {
        endpoint: Endpoint,
        error: HttpError,
        reason: CloseReason,
    },
}

/// What one read brought.
enum ReadEvent {
    /// Some bytes (this many), appended to the buffer or discarded.
    Data(usize),
    /// End of stream.
    Eof,
    /// The deadline passed first.
    Timeout,
    /// The read failed.
    Error(io::ErrorKind),
}

/// One connection's state.
struct Conn<'a, S> {
    /// The byte stream (TCP or TLS).
    stream: S,
    /// Where it stood when this service began.
    resume: Resume,
    /// The other shard its last calls' users are homed on, and how many
    /// calls in a row.
    streak: Option<(usize, u32)>,
    /// Bytes read and not yet consumed: the current request's head or
    /// body, then whatever follows it (pipelined requests). Held only
    /// while there are such bytes.
    buf: Buf,
    /// The current request's decoded body, held while it is decoded and
    /// its parameters are read.
    body: Buf,
    /// The answer being written, held until it is written.
    out: Buf,
    /// Builds answers (in a pooled body buffer it gives back after each).
    encoder: Encoder,
    /// The head parser, kept across reads of one head.
    parser: HeadParser,
    /// Sizes and deadlines.
    limits: &'a Limits,
    /// Counters so far.
    outcome: ConnOutcome,
}

/// Milliseconds as a `Duration`.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The request loop; returns how the connection ends.
    async fn run<H: Handler>(
        &mut self,
        listener: Listener,
        handler: &H,
        config: &Config,
    ) -> Ending {
        let limits = self.limits;
        // Until the first request is answered, the wait for its first byte
        // is the short first-byte timeout, not the keep-alive idle one.
        let mut first = !self.resume.answered;
        loop {
            // Wait for the first byte of a request, unless pipelining
            // already brought some.
            if self.buf.bytes().is_empty() {
                let (wait_ms, timed_out) = if first {
                    (limits.first_byte_timeout_ms, CloseReason::FirstByteTimeout)
                } else {
                    (limits.idle_timeout_ms, CloseReason::IdleTimeout)
                };
                let sleep = handler.sleep(ms(wait_ms));
                // A stop closes a connection idle between requests, but
                // not one that has yet to send its first: it was accepted
                // to be served (the last accept of a stopping or handing
                // over server), and its request may be on its way or
                // already unread in the socket, which a close would
                // answer with a reset. It gets the first-byte timeout.
                let stopped = async {
                    match first {
                        true => std::future::pending::<()>().await,
                        false => handler.stopped().await,
                    }
                };
                let idle = pin!(futures_lite::future::or(sleep, stopped));
                match self.read_more(idle).await {
                    ReadEvent::Data(_) => {}
                    ReadEvent::Eof => return Ending::Closed(CloseReason::PeerClosed),
                    ReadEvent::Timeout if handler.stopping() => {
                        return Ending::Closed(CloseReason::Stopped)
                    }
                    ReadEvent::Timeout => return Ending::Closed(timed_out),
                    ReadEvent::Error(kind) => return Ending::Closed(CloseReason::ReadError(kind)),
                }
            }
            first = false;

            // The head, within the head timeout of its first byte.
            self.parser.reset();
            let head = {
                let mut timer = pin!(handler.sleep(ms(limits.head_timeout_ms)));
                loop {
                    match self.parser.parse(self.buf.bytes(), limits) {
                        Ok(Some(head)) => break head,
                        Ok(None) => {}
                        Err(e) => {
                            // Under its endpoint once its request line was
                            // read (a 413 for a declared length on /send).
                            let path = self.parser.path(self.buf.bytes());
                            let at = path.map_or(Endpoint::Other, |p| endpoint(listener, p));
                            let reason = CloseReason::HttpError(e.status);
                            return Ending::Fail {
                                endpoint: at,
                                error: e,
                                reason,
                            };
                        }
                    }
                    match self.read_more(timer.as_mut()).await {
                        ReadEvent::Data(_) => {}
                        ReadEvent::Eof => return Ending::Closed(CloseReason::PeerClosedMidRequest),
                        ReadEvent::Timeout => {
                            let e = HttpError::timeout("request head not received in time");
                            let path = self.parser.path(self.buf.bytes());
                            let at = path.map_or(Endpoint::Other, |p| endpoint(listener, p));
                            return Ending::Fail {
                                endpoint: at,
                                error: e,
                                reason: CloseReason::HeadTimeout,
                            };
                        }
                        ReadEvent::Error(kind) => {
                            return Ending::Closed(CloseReason::ReadError(kind))
                        }
                    }
                }
            };
            self.buf.vec().drain(..head.len);

            // The body, within the body timeout of the head's end.
            if head.expect_continue {
                if let Err(reason) = self.write(handler, CONTINUE).await {
                    return Ending::Closed(reason);
                }
            }
            // A body that fails is counted under the head's endpoint.
            let counted_as = endpoint(listener, &head.path);
            let mut decoder = BodyDecoder::new(head.framing);
            if !decoder.is_done() {
                let mut timer = pin!(handler.sleep(ms(limits.body_timeout_ms)));
                loop {
                    match decoder.decode(self.buf.bytes(), self.body.vec(), limits) {
                        Ok(used) => {
                            self.buf.vec().drain(..used);
                        }
                        Err(e) => {
                            let reason = CloseReason::HttpError(e.status);
                            return Ending::Fail {
                                endpoint: counted_as,
                                error: e,
                                reason,
                            };
                        }
                    }
                    if decoder.is_done() {
                        break;
                    }
                    match self.read_more(timer.as_mut()).await {
                        ReadEvent::Data(_) => {}
                        ReadEvent::Eof => return Ending::Closed(CloseReason::PeerClosedMidRequest),
                        ReadEvent::Timeout => {
                            let e = HttpError::timeout("request body not received in time");
                            let reason = CloseReason::BodyTimeout;
                            return Ending::Fail {
                                endpoint: counted_as,
                                error: e,
                                reason,
                            };
                        }
                        ReadEvent::Error(kind) => {
                            return Ending::Closed(CloseReason::ReadError(kind))
                        }
                    }
                }
            }

            // The request is read. Unless pipelining brought more, the
            // connection needs no read buffer until its next request: it
            // goes back to the pool before the call (a long-poll holds none).
            self.buf.release_if_empty();
            // Its answer's time starts (a long-poll's includes its hold).
            let started = Instant::now();
            let mut persist = Persist {
                keep_alive: head.keep_alive && !handler.stopping(),
                http10: head.version == Version::Http10,
            };
            let head_only = head.method == Method::Head;
            if let Some(port) = config.https_redirect {
                let date = now_date();
                match https_location(head.host.as_deref(), port, &head.path, &head.query) {
                    Some(location) => {
                        self.encoder
                            .redirect(self.out.vec(), &location, persist, &date);
                        let took = Some(started.elapsed());
                        handler.answered(counted_as, Outcome::Redirect, took);
                    }
                    None => {
                        let e = HttpError::bad_request("no valid Host to redirect to https with");
                        let reason = CloseReason::HttpError(e.status);
                        return Ending::Fail {
                            endpoint: counted_as,
                            error: e,
                            reason,
                        };
                    }
                }
                if let Err(reason) = self.write_out(handler).await {
                    return Ending::Closed(reason);
                }
                self.outcome.requests_answered += 1;
                if !persist.keep_alive {
                    return Ending::Linger(CloseReason::NotKeepAlive);
                }
                continue;
            }

            // Decide, call, answer.
            let decision = {
                let known = known_params(listener);
                let mut params = Params::new();
                params.add_form(head.query.as_bytes(), known);
                if head.method == Method::Post && head.form_body {
                    params.add_form(self.body.bytes(), known);
                }
                // The parameters are decoded (copied out of the body).
                self.body.release();
                decide(
                    listener,
                    head.method,
                    &head.path,
                    &params,
                    head.credentials(),
                    &config.admin,
                )
            };
            // Of the head only these are needed from here on: dropped, it
            // is not kept in the task while a call is held.
            let keep_alive = head.keep_alive;
            let not_modified = match &decision {
                Decision::File(file) => file.not_modified(head.if_none_match.as_deref()),
                _ => false,
            };
            drop(head);
            let mut refused = false;
            let outcome = match decision {
                Decision::Reject(e) => {
                    let date = now_date();
                    self.encoder
                        .http_error(self.out.vec(), &e, persist, head_only, &date);
                    Outcome::Failed(e.code)
                }
                Decision::Answer { mode, response } => {
                    // A wrong admin token ends the connection: guesses
                    // pipelined on one connection would cost nothing.
                    if listener == Listener::Admin && status_of_response(&response) == 401 {
                        persist.keep_alive = false;
                        refused = true;
                    }
                    let date = now_date();
                    self.encoder.response(
                        self.out.vec(),
                        &response,
                        &mode,
                        persist,
                        head_only,
                        &date,
                    );
                    Outcome::of_response(&response)
                }
                Decision::File(file) => {
                    let date = now_date();
                    self.encoder
                        .client_file(self.out.vec(), file, not_modified, persist, &date);
                    Outcome::Ok
                }
                Decision::Call { mode, call } => {
                    // The other shard this call's user is homed on, if
                    // any: a sid's user is only claimed until its home
                    // shard accepts the sid, so it counts toward a move
                    // only once the call is answered ok.
                    let elsewhere = match (&call, call.describe().1) {
                        (Call::Shard(_), Some(user)) => handler.home_elsewhere(user),
                        _ => None,
                    };
                    // Boxed: the handler's future (a kilobyte or more in
                    // the engine) lives only while a call is in flight,
                    // not in every idle connection's task.
                    // A poll that may be held is watched for a hang-up
                    // while nothing of a next request was read: a client
                    // that closes during it is noticed now, not when the
                    // poll ends. Other calls are short: not watched.
                    let held = matches!(
                        &call,
                        Call::Shard(switchboard_shards::model::Request::Poll { wait_ms, .. })
                            if *wait_ms > 0
                    );
                    let call = Box::pin(handler.call(call));
                    let reply = match held && self.buf.bytes().is_empty() {
                        true => {
                            let reply =
                                watched(&mut self.stream, &mut self.buf, limits, call).await;
                            // Bytes of a next request the watch read (the
                            // buffer was empty before it).
                            self.outcome.bytes_read += self.buf.bytes().len() as u64;
                            reply
                        }
                        false => Some(call.await),
                    };
                    let Some(reply) = reply else {
                        return Ending::Closed(CloseReason::PeerClosedDuringCall);
                    };
                    // A stop during the call (a long-poll it ended): this
                    // answer is the connection's last.
                    persist.keep_alive &= !handler.stopping();
                    let date = now_date();
                    self.encoder
                        .reply(self.out.vec(), &reply, &mode, persist, head_only, &date);
                    let outcome = Outcome::of_reply(&reply);
                    self.streak = match (elsewhere, self.streak) {
                        _ if outcome != Outcome::Ok => None,
                        (None, _) => None,
                        (Some(to), Some((was, n))) if to == was => Some((to, n + 1)),
                        (Some(to), _) => Some((to, 1)),
                    };
                    outcome
                }
            };
            handler.answered(counted_as, outcome, Some(started.elapsed()));
            if let Err(reason) = self.write_out(handler).await {
                return Ending::Closed(reason);
            }
            self.outcome.requests_answered += 1;
            if refused {
                return Ending::Linger(CloseReason::Unauthorized);
            }
            if !keep_alive {
                return Ending::Linger(CloseReason::NotKeepAlive);
            }
            if !persist.keep_alive {
                return Ending::Linger(CloseReason::Stopped);
            }
            if let Some(to) = self.move_to() {
                return Ending::Closed(CloseReason::Moved { to });
            }
        }
    }

    /// The shard to move to now, between two requests, if this
    /// connection should move ([`serve_movable`]).
    fn move_to(&self) -> Option<usize> {
        let (to, calls) = self.streak?;
        let ready = self.resume.movable
            && self.resume.moves < MOVES_MAX
            && calls >= MOVE_AFTER_CALLS
            && self.buf.bytes().is_empty();
        ready.then_some(to)
    }

    /// Appends what one read brings to `buf`, unless `deadline` passes
    /// first.
    async fn read_more<T: Future<Output = ()>>(&mut self, deadline: Pin<&mut T>) -> ReadEvent {
        let held = self.buf.bytes().len();
        let room = self.limits.read_buffer_bytes_max().saturating_sub(held);
        // The head parser and body decoder decide long before the buffer
        // fills (see `Limits::read_buffer_bytes_max`).
        assert!(room > 0, "read buffer full: {held} bytes unconsumed");
        let buf = &mut self.buf;
        let event = read_chunk(&mut self.stream, deadline, room, |bytes| {
            buf.vec().extend_from_slice(bytes);
        })
        .await;
        if let ReadEvent::Data(n) = event {
            self.outcome.bytes_read += n as u64;
        }
        event
    }

    /// Writes `bytes` and flushes, within the write timeout.
    async fn write<H: Handler>(&mut self, handler: &H, bytes: &[u8]) -> Result<(), CloseReason> {
        let stream = &mut self.stream;
        let written = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        let timer = handler.sleep(ms(self.limits.write_timeout_ms));
        match within(timer, written).await {
            Ok(Ok(())) => {
                self.outcome.bytes_written += bytes.len() as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(CloseReason::WriteError(e.kind())),
            Err(TimedOut) => Err(CloseReason::WriteTimeout),
        }
    }

    /// Writes the answer in `out`, then gives its buffers back to the
    /// pool (the encoder's body buffer before the write: the answer is
    /// whole in `out`).
    async fn write_out<H: Handler>(&mut self, handler: &H) -> Result<(), CloseReason> {
        self.encoder.release();
        let out = std::mem::take(&mut self.out);
        self.write(handler, out.bytes()).await
    }

    /// Answers an HTTP-level failure found while reading a request
    /// (counted under `endpoint`: `Other` when not even its request line
    /// was read), then closes gracefully: the rest of the stream cannot be
    /// trusted.
    async fn fail<H: Handler>(
        &mut self,
        handler: &H,
        endpoint: Endpoint,
        error: &HttpError,
        reason: CloseReason,
    ) -> CloseReason {
        let persist = Persist {
            keep_alive: false,
            http10: false,
        };
        let date = now_date();
        self.encoder
            .http_error(self.out.vec(), error, persist, false, &date);
        handler.answered(endpoint, Outcome::Failed(error.code), None);
        if let Err(reason) = self.write_out(handler).await {
            return reason;
        }
        self.outcome.requests_answered += 1;
        self.linger(handler, reason).await
    }

    /// Lingering close: shut down our write side (the client sees the end
    /// of the answer), then read and discard until the client closes, the
    /// linger timeout, the linger byte limit or a stopping server's drain
    /// bound (`Handler::drain_over`). Returns `reason`.
    async fn linger<H: Handler>(&mut self, handler: &H, reason: CloseReason) -> CloseReason {
        // Nothing read from here on is kept.
        self.buf.release();
        self.body.release();
        let timer = handler.sleep(ms(self.limits.write_timeout_ms));
        match within(timer, self.stream.close()).await {
            Ok(Ok(())) => {}
            // The answer was flushed; a failed shutdown only means the
            // client is gone, and dropping the stream closes it anyway.
            Ok(Err(_)) => return reason,
            Err(TimedOut) => return CloseReason::WriteTimeout,
        }
        let timer = handler.sleep(ms(self.limits.linger_timeout_ms));
        let mut timer = pin!(futures_lite::future::or(timer, handler.drain_over()));
        while self.outcome.linger_bytes < self.limits.linger_bytes_max as u64 {
            let stream = &mut self.stream;
            match read_chunk(stream, timer.as_mut(), READ_CHUNK_BYTES, |_| {}).await {
                ReadEvent::Data(n) => {
                    self.outcome.bytes_read += n as u64;
                    self.outcome.linger_bytes += n as u64;
                }
                ReadEvent::Eof | ReadEvent::Timeout | ReadEvent::Error(_) => break,
            }
        }
        reason
    }
}

/// `call`'s answer, or `None` when the client hung up first (`call` is
/// dropped). While the call waits, the connection reads on, into `buf`
/// (empty when the watch begins), as it would after the answer: an end of
/// stream or a reset is a hang-up; bytes are the client's next request,
/// kept for after the answer, and end the watch. The read is glommio's
/// readiness poll, which stays armed when the call wins and serves the
/// next read: a watch costs no extra io_uring operation, no cancel and no
/// buffer. TLS streams are watched the same way (through their records).
async fn watched<S, R>(
    stream: &mut S,
    buf: &mut Buf,
    limits: &Limits,
    call: impl Future<Output = R>,
) -> Option<R>
where
    S: AsyncRead + Unpin,
{
    let room = limits.read_buffer_bytes_max();
    let hangup = async {
        let never = pin!(std::future::pending::<()>());
        let event = read_chunk(stream, never, room, |bytes| {
            buf.vec().extend_from_slice(bytes)
        })
        .await;
        match event {
            ReadEvent::Eof => None,
            ReadEvent::Error(
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::TimedOut
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected,
            ) => None,
            // A next request (read on after the answer), or an error that
            // says nothing about the peer (the answer's write will tell).
            _ => std::future::pending().await,
        }
    };
    futures_lite::future::or(async { Some(call.await) }, hangup).await
}

/// Reads at most `max` bytes (and at most [`READ_CHUNK_BYTES`]) from
/// `stream` into the thread's scratch buffer and hands them to `keep`,
/// unless `deadline` passes first. The scratch is borrowed only inside
/// each poll of the read: a connection waiting for bytes holds no buffer.
async fn read_chunk<S, T>(
    stream: &mut S,
    mut deadline: Pin<&mut T>,
    max: usize,
    mut keep: impl FnMut(&[u8]),
) -> ReadEvent
where
    S: AsyncRead + Unpin,
    T: Future<Output = ()>,
{
    let max = max.min(READ_CHUNK_BYTES);
    loop {
        let read = poll_fn(|cx| {
            buffers::with_scratch(|scratch| {
                let space = &mut scratch[..max];
                let read = Pin::new(&mut *stream).poll_read(cx, space);
                match read {
                    Poll::Ready(Ok(n)) if n > 0 => keep(&space[..n]),
                    _ => {}
                }
                read
            })
        });
        match within(deadline.as_mut(), read).await {
            Ok(Ok(0)) => return ReadEvent::Eof,
            Ok(Ok(n)) => return ReadEvent::Data(n),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return ReadEvent::Error(e.kind()),
            Err(TimedOut) => return ReadEvent::Timeout,
        }
    }
}

/// The https URL a plain request is redirected to when TLS is required:
/// the request's `Host` without its port, `port` unless it is 443, and the
/// path and query as sent. `None` when the host is not a plain DNS name,
/// IPv4 address or bracketed IPv6 address (it is written into `Location`:
/// nothing else may ride along).
pub fn https_location(host: Option<&[u8]>, port: u16, path: &str, query: &str) -> Option<String> {
    let host = std::str::from_utf8(host?).ok()?;
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            let (addr, rest) = v6.split_once(']')?;
            let port_ok = rest.is_empty()
                || rest
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if addr.is_empty()
                || !addr
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                || !port_ok
            {
                return None;
            }
            &host[..addr.len() + 2]
        }
        None => {
            let name = match host.split_once(':') {
                Some((name, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => name,
                Some(_) => return None,
                None => host,
            };
            let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
            if name.is_empty() || !name.bytes().all(ok) {
                return None;
            }
            name
        }
    };
    let mut url = format!("https://{name}");
    if port != 443 {
        url.push_str(&format!(":{port}"));
    }
    url.push_str(if path.is_empty() { "/" } else { path });
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    Some(url)
}

/// The `Date` header value for now.
pub(crate) fn now_date() -> [u8; 29] {
    let unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    http_date(unix_s)
}

#[cfg(test)]
mod tests {
    use super::https_location;

    fn check(host: Option<&str>, port: u16, target: (&str, &str), expected: Option<&str>) {
        let got = https_location(host.map(str::as_bytes), port, target.0, target.1);
        assert_eq!(got.as_deref(), expected, "{host:?} {port} {target:?}");
    }

    #[test]
    fn https_redirect_locations() {
        let poll = ("/poll", "sid=1&since=2");
        check(
            Some("chat.example.com"),
            443,
            poll,
            Some("https://chat.example.com/poll?sid=1&since=2"),
        );
        check(
            Some("chat.example.com:80"),
            8443,
            poll,
            Some("https://chat.example.com:8443/poll?sid=1&since=2"),
        );
        check(
            Some("127.0.0.1:8080"),
            8443,
            ("/", ""),
            Some("https://127.0.0.1:8443/"),
        );
        check(
            Some("[::1]:8080"),
            443,
            ("/demo/", ""),
            Some("https://[::1]/demo/"),
        );
        check(
            Some("[::1]"),
            8443,
            ("/x", "a=b"),
            Some("https://[::1]:8443/x?a=b"),
        );
        // Nothing but a host may reach `Location`.
        for bad in [
            "",
            "evil.com/x",
            "a b",
            "user@host",
            "host:",
            "host:8o",
            "[::1",
            "[]",
            "[::1]x",
            "h\u{e9}",
        ] {
            check(Some(bad), 443, poll, None);
        }
        check(None, 443, poll, None);
    }
}
