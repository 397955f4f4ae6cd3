//! The connection loop over an in-memory duplex stream: keep-alive and
//! pipelining in order, graceful close after error answers, and every
//! deadline. Time is real but short (tens of milliseconds), and every test
//! runs under an overall timeout so a hang fails instead of stalling CI.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use switchboard_io::buffers::{self, BufferStats};
use switchboard_io::limits::{BUFFER_RETAIN_BYTES, POOL_BUFFERS_MAX, READ_CHUNK_BYTES};
use switchboard_io::{
    serve, AdminGate, Call, CloseReason, Config, ConnOutcome, Endpoint, Handler, Limits, Listener,
    Outcome, Reply,
};
use switchboard_shards::model::{ErrorCode, Request, Response};

const SID: &str = "42-0123456789abcdef0011223344556677";

/// One direction of the duplex: bytes in flight, whether the writer shut
/// down, and the reader waiting for either.
#[derive(Default)]
struct Pipe {
    data: VecDeque<u8>,
    closed: bool,
    reader: Option<Waker>,
}

/// One end of an in-memory duplex stream. `close` shuts down only this
/// end's writing direction (a half-close, like TCP shutdown); dropping an
/// end closes both directions.
struct End {
    rx: Arc<Mutex<Pipe>>,
    tx: Arc<Mutex<Pipe>>,
}

fn duplex() -> (End, End) {
    let a = Arc::new(Mutex::new(Pipe::default()));
    let b = Arc::new(Mutex::new(Pipe::default()));
    (
        End {
            rx: a.clone(),
            tx: b.clone(),
        },
        End { rx: b, tx: a },
    )
}

fn shut(pipe: &Mutex<Pipe>) {
    let mut pipe = pipe.lock().unwrap();
    pipe.closed = true;
    if let Some(w) = pipe.reader.take() {
        w.wake();
    }
}

impl Drop for End {
    fn drop(&mut self) {
        shut(&self.tx);
        shut(&self.rx);
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = self.rx.lock().unwrap();
        if pipe.data.is_empty() {
            if pipe.closed {
                return Poll::Ready(Ok(0));
            }
            pipe.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(pipe.data.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.data.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = self.tx.lock().unwrap();
        if pipe.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        pipe.data.extend(buf);
        if let Some(w) = pipe.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        shut(&self.tx);
        Poll::Ready(Ok(()))
    }
}

/// A sleep on a helper thread: enough timer for tests.
struct Timer {
    deadline: Instant,
    waker: Option<Arc<Mutex<Option<Waker>>>>,
}

fn sleep(duration: Duration) -> Timer {
    Timer {
        deadline: Instant::now() + duration,
        waker: None,
    }
}

impl Future for Timer {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        match &self.waker {
            Some(slot) => *slot.lock().unwrap() = Some(cx.waker().clone()),
            None => {
                let slot = Arc::new(Mutex::new(Some(cx.waker().clone())));
                let deadline = self.deadline;
                let thread_slot = slot.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    if let Some(w) = thread_slot.lock().unwrap().take() {
                        w.wake();
                    }
                });
                self.waker = Some(slot);
            }
        }
        Poll::Pending
    }
}

/// Answers polls with `seq = since` (after `since` ms, so an early slow
/// call shows that answers stay in order), everything else with `Done`,
/// and records the calls.
#[derive(Default)]
struct TestHandler {
    calls: RefCell<Vec<Call>>,
    /// When the server's drain is over, as `Handler::drain_over` says
    /// (`None`: never).
    drain_over: Option<Instant>,
    /// What `Handler::answered` was told, in order.
    answered: RefCell<Vec<(Endpoint, Outcome, Option<Duration>)>>,
    /// This thread's pooled buffers held by connections when each call
    /// began (`buffers::stats().lent`).
    lent_at_calls: RefCell<Vec<usize>>,
    /// The server is stopping (`Handler::stopped` resolves at once).
    stopping: bool,
}

impl Handler for TestHandler {
    fn call(&self, call: Call) -> impl Future<Output = Reply> {
        self.calls.borrow_mut().push(call.clone());
        self.lent_at_calls.borrow_mut().push(buffers::stats().lent);
        async move {
            match call {
                Call::Shard(Request::Poll { since, .. }) => {
                    sleep(Duration::from_millis(since)).await;
                    Reply::Shard(Response::Events {
                        seq: since,
                        events: vec![],
                    })
                }
                Call::Shard(Request::Send { text, .. }) => Reply::Shard(Response::Sent {
                    id: text.len() as u64,
                    ts: 1,
                }),
                Call::Health => Reply::Json {
                    body: r#"{"ok":true,"shards":1}"#.into(),
                },
                _ => Reply::Shard(Response::Done),
            }
        }
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        sleep(duration)
    }

    fn answered(&self, endpoint: Endpoint, outcome: Outcome, elapsed: Option<Duration>) {
        self.answered
            .borrow_mut()
            .push((endpoint, outcome, elapsed));
    }

    async fn stopped(&self) {
        if !self.stopping {
            future::pending::<()>().await
        }
    }

    fn stopping(&self) -> bool {
        self.stopping
    }

    async fn drain_over(&self) {
        match self.drain_over {
            Some(at) => sleep(at.saturating_duration_since(Instant::now())).await,
            None => future::pending().await,
        }
    }
}

/// Short deadlines for tests.
fn config() -> Config {
    Config {
        limits: Limits {
            head_timeout_ms: 100,
            body_timeout_ms: 100,
            first_byte_timeout_ms: 100,
            idle_timeout_ms: 200,
            linger_timeout_ms: 500,
            write_timeout_ms: 1000,
            ..Limits::default()
        },
        admin: AdminGate::new("127.0.0.1:8081".parse().unwrap(), Some("s3cret".into())),
        ..Config::default()
    }
}

/// Runs the server on one end and `client` on the other, under a 5 s
/// overall timeout; returns the server's outcome, the client's result and
/// the handler's calls.
fn run<C, F, T>(listener: Listener, config: Config, client: C) -> (ConnOutcome, T, Vec<Call>)
where
    C: FnOnce(End) -> F,
    F: Future<Output = T>,
{
    run_with(TestHandler::default(), listener, config, client)
}

/// [`run`] with `handler`.
fn run_with<C, F, T>(
    handler: TestHandler,
    listener: Listener,
    config: Config,
    client: C,
) -> (ConnOutcome, T, Vec<Call>)
where
    C: FnOnce(End) -> F,
    F: Future<Output = T>,
{
    let (server_end, client_end) = duplex();
    let (outcome, result) = future::block_on(future::or(
        async {
            Some(
                future::zip(
                    serve(server_end, listener, &handler, &config),
                    client(client_end),
                )
                .await,
            )
        },
        async {
            sleep(Duration::from_secs(5)).await;
            None
        },
    ))
    .expect("test timed out");
    (outcome, result, handler.calls.into_inner())
}

/// One answer as the client reads it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads one answer (head, then `Content-Length` bytes of body; none when
/// `head_only`), keeping extra bytes in `buf`.
async fn read_answer(end: &mut End, buf: &mut Vec<u8>, head_only: bool) -> Option<Answer> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..i + 4].to_vec()).unwrap();
            let status = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.parse().unwrap());
            let len = if head_only || status == 100 { 0 } else { len };
            while buf.len() < i + 4 + len {
                let n = end.read(&mut chunk).await.unwrap();
                assert!(n > 0, "EOF inside an answer body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8(buf[i + 4..i + 4 + len].to_vec()).unwrap();
            buf.drain(..i + 4 + len);
            return Some(Answer { status, head, body });
        }
        let n = end.read(&mut chunk).await.unwrap();
        if n == 0 {
            assert!(buf.is_empty(), "EOF inside an answer head: {buf:?}");
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until end-of-stream, returning what came.
async fn read_to_eof(end: &mut End) -> Vec<u8> {
    let mut all = Vec::new();
    end.read_to_end(&mut all).await.unwrap();
    all
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (outcome, answers, calls) = run(Listener::Client, config(), |mut end| async move {
        // All three at once; the first call is the slowest.
        let body = format!("sid={SID}&to=7&text=hello");
        let requests = format!(
            "GET /poll?sid={SID}&since=40 HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /poll?sid={SID}&since=1&callback=cb HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        end.write_all(requests.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(read_answer(&mut end, &mut buf, false).await.unwrap());
        }
        end.close().await.unwrap();
        assert!(read_answer(&mut end, &mut buf, false).await.is_none());
        answers
    });
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].body, r#"{"ok":true,"seq":40,"events":[]}"#);
    assert!(answers[0]
        .head
        .contains("Content-Type: application/json\r\n"));
    assert_eq!(
        answers[1].body,
        r#"/**/cb({"ok":true,"seq":1,"events":[]});"#
    );
    assert_eq!(answers[2].body, r#"{"ok":true,"id":"5","ts":1}"#);
    assert!(answers.iter().all(|a| !a.head.contains("Connection:")));
    assert_eq!(calls.len(), 3);
    assert_eq!(outcome.requests_answered, 3);
    assert_eq!(outcome.reason, CloseReason::PeerClosed);
}

#[test]
fn io_answers_without_the_handler_and_keeps_the_connection() {
    let (outcome, answers, calls) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /ping?callback=a..b HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /poll?since=1 HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
              GET /ping HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        for head_only in [false, true, false, false, false] {
            answers.push(read_answer(&mut end, &mut buf, head_only).await.unwrap());
        }
        // The request after `Connection: close` is not answered.
        assert!(read_answer(&mut end, &mut buf, false).await.is_none());
        answers
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [404, 405, 400, 400, 200]);
    assert!(answers[0].body.contains(r#""code":"not_found""#));
    assert!(answers[1].head.contains("Allow: GET, POST\r\n"));
    assert!(answers[2].body.contains("callback"));
    assert!(
        !answers[2].body.contains("a..b"),
        "invalid callbacks are never echoed"
    );
    assert!(answers[3].body.contains("`sid`"));
    assert_eq!(answers[4].body, r#"{"ok":true}"#);
    assert!(answers[4].head.contains("Connection: close\r\n"));
    assert!(calls.is_empty());
    assert_eq!(outcome.requests_answered, 5);
    assert_eq!(outcome.reason, CloseReason::NotKeepAlive);
}

/// Sends `request`, expects one answer with `status` and then
/// end-of-stream while the server still reads (lingering close); then
/// sends more and closes.
fn error_then_graceful_close(request: Vec<u8>, status: u16) -> ConnOutcome {
    let (outcome, (), _) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(&request).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
        assert_eq!(answer.status, status, "{answer:?}");
        assert!(answer.head.contains("Connection: close\r\n"));
        assert!(answer.head.contains("Content-Type: application/json\r\n"));
        // End-of-stream after the answer, not a reset: our write side is
        // still open and the server keeps reading.
        assert!(read_to_eof(&mut end).await.is_empty());
        end.write_all(&[b'z'; 1000])
            .await
            .expect("server still reading while it lingers");
        end.close().await.unwrap();
    });
    assert_eq!(outcome.reason, CloseReason::HttpError(status));
    assert_eq!(outcome.requests_answered, 1);
    assert!(outcome.linger_bytes >= 1000, "{outcome:?}");
    outcome
}

#[test]
fn errors_close_gracefully() {
    let mut long = b"GET /ping?".to_vec();
    long.resize(70_000, b'a');
    error_then_graceful_close(long, 414);
    let mut fat = b"GET /ping HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    fat.resize(20_000, b'a');
    error_then_graceful_close(fat, 431);
    let mut declared = b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n".to_vec();
    declared.resize(declared.len() + 30_000, b'b');
    error_then_graceful_close(declared, 413);
    let mut sent =
        b"POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n".to_vec();
    sent.resize(sent.len() + 30_000, b'b');
    error_then_graceful_close(sent, 413);
    error_then_graceful_close(
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\n\r\n".to_vec(),
        400,
    );
}

#[test]
fn lingering_is_bounded_by_time() {
    let start = Instant::now();
    let (outcome, _end, _) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(b"BAD\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            read_answer(&mut end, &mut buf, false).await.unwrap().status,
            400
        );
        // Never close (the end outlives the server): the server gives up
        // after the linger timeout.
        assert!(read_to_eof(&mut end).await.is_empty());
        end
    });
    assert_eq!(outcome.reason, CloseReason::HttpError(400));
    assert!(start.elapsed() >= Duration::from_millis(500));
}

#[test]
fn lingering_ends_when_a_stopping_servers_drain_is_over() {
    // The drain is over 100 ms from now; the linger timeout is 500 ms.
    let handler = TestHandler {
        drain_over: Some(Instant::now() + Duration::from_millis(100)),
        ..TestHandler::default()
    };
    let start = Instant::now();
    let (outcome, _end, _) = run_with(handler, Listener::Client, config(), |mut end| async move {
        end.write_all(b"BAD\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            read_answer(&mut end, &mut buf, false).await.unwrap().status,
            400
        );
        // Never close: the server gives up at the drain, not the linger
        // timeout.
        assert!(read_to_eof(&mut end).await.is_empty());
        end
    });
    assert_eq!(outcome.reason, CloseReason::HttpError(400));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_millis(450), "{took:?}");
}

#[test]
fn a_stopping_server_serves_a_fresh_connections_first_request_and_closes_it() {
    // Accepted as the server stops: its request comes a moment later, and
    // is answered (`Connection: close`), not met with a close (a reset,
    // with the request unread).
    let handler = TestHandler {
        stopping: true,
        ..TestHandler::default()
    };
    let (outcome, answer, calls) =
        run_with(handler, Listener::Client, config(), |mut end| async move {
            sleep(Duration::from_millis(30)).await;
            end.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
            assert!(read_to_eof(&mut end).await.is_empty());
            answer
        });
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answer.head
    );
    assert!(calls.is_empty(), "ping is answered by io: {calls:?}");
    assert_eq!(outcome.requests_answered, 1, "{outcome:?}");
    // A connection that was answered once and waits idle closes at once.
    let handler = TestHandler {
        stopping: true,
        ..TestHandler::default()
    };
    let start = Instant::now();
    let (outcome, _, _) = run_with(handler, Listener::Client, config(), |mut end| async move {
        end.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_to_eof(&mut end).await
    });
    assert_eq!(outcome.requests_answered, 1, "{outcome:?}");
    assert!(
        start.elapsed() < Duration::from_millis(90),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn lingering_is_bounded_by_bytes() {
    let (outcome, _end, _) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(b"BAD\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            read_answer(&mut end, &mut buf, false).await.unwrap().status,
            400
        );
        assert!(read_to_eof(&mut end).await.is_empty());
        // A client that keeps uploading is cut off after the byte limit.
        end.write_all(&vec![b'z'; 1 << 20]).await.unwrap();
        end
    });
    let max = Limits::default().linger_bytes_max as u64;
    assert!(
        outcome.linger_bytes >= max && outcome.linger_bytes < 1 << 20,
        "{outcome:?}"
    );
}

#[test]
fn silent_connections_close_quietly_at_the_first_byte_timeout() {
    let mut config = config();
    config.limits.idle_timeout_ms = 2_000;
    let start = Instant::now();
    let (outcome, got, calls) = run(Listener::Client, config, |mut end| async move {
        read_to_eof(&mut end).await
    });
    let took = start.elapsed();
    assert!(got.is_empty(), "a quiet close answers nothing: {got:?}");
    assert_eq!(outcome.reason, CloseReason::FirstByteTimeout);
    assert_eq!(outcome.requests_answered, 0);
    assert!(calls.is_empty());
    // The first-byte timeout (100 ms), not the idle timeout (2 s).
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
}

#[test]
fn a_slow_but_started_first_request_is_answered() {
    // The first byte within the first-byte timeout, the rest of the head
    // trickling in over several first-byte timeouts but within the head
    // timeout: answered.
    let mut config = config();
    config.limits.head_timeout_ms = 2_000;
    let start = Instant::now();
    let (outcome, answer, _) = run(Listener::Client, config, |mut end| async move {
        sleep(Duration::from_millis(50)).await;
        for piece in ["G", "ET /ping HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
            end.write_all(piece.as_bytes()).await.unwrap();
            sleep(Duration::from_millis(150)).await;
        }
        let mut buf = Vec::new();
        let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
        end.close().await.unwrap();
        answer
    });
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, r#"{"ok":true}"#);
    assert_eq!(outcome.requests_answered, 1);
    assert_eq!(outcome.reason, CloseReason::PeerClosed);
}

#[test]
fn answered_connections_wait_the_idle_timeout_for_the_next_request() {
    // Between requests the keep-alive idle timeout (200 ms) applies, not
    // the first-byte one (100 ms).
    let (outcome, statuses, _) = run(Listener::Client, config(), |mut end| async move {
        let mut buf = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..2 {
            end.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            statuses.push(read_answer(&mut end, &mut buf, false).await.unwrap().status);
            sleep(Duration::from_millis(150)).await;
        }
        // Then silence: the idle timeout closes it quietly.
        assert!(read_answer(&mut end, &mut buf, false).await.is_none());
        statuses
    });
    assert_eq!(statuses, [200, 200]);
    assert_eq!(outcome.reason, CloseReason::IdleTimeout);
    assert_eq!(outcome.requests_answered, 2);
}

#[test]
fn slow_heads_and_bodies_get_408() {
    let start = Instant::now();
    let (outcome, answer, _) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(b"GET /ping HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = Vec::new();
        let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
        end.close().await.unwrap();
        answer
    });
    assert_eq!(answer.status, 408);
    assert_eq!(outcome.reason, CloseReason::HeadTimeout);
    assert!(start.elapsed() >= Duration::from_millis(100));
    // The head deadline runs from the first byte, whatever trickles after.
    let (outcome, answer, _) = run(Listener::Client, config(), |mut end| async move {
        // Stop when the server is gone (its linger may end first on a
        // loaded machine).
        for _ in 0..20 {
            if end.write_all(b"X").await.is_err() {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        let mut buf = Vec::new();
        let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
        end.close().await.unwrap();
        answer
    });
    assert_eq!(answer.status, 408);
    assert_eq!(outcome.reason, CloseReason::HeadTimeout);
    let (outcome, answer, calls) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
        end.close().await.unwrap();
        answer
    });
    assert_eq!(answer.status, 408);
    assert_eq!(outcome.reason, CloseReason::BodyTimeout);
    assert!(calls.is_empty());
}

#[test]
fn expect_continue_and_chunked_bodies() {
    let (outcome, answers, calls) = run(Listener::Client, config(), |mut end| async move {
        let body = format!("sid={SID}&to=7&text=hi+there");
        end.write_all(
            format!(
                "POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let interim = read_answer(&mut end, &mut buf, false).await.unwrap();
        assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
        end.write_all(body.as_bytes()).await.unwrap();
        let first = read_answer(&mut end, &mut buf, false).await.unwrap();
        let (a, b) = body.split_at(10);
        end.write_all(
            format!(
                "POST /send?callback=f HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext\r\n{b}\r\n0\r\nT: 1\r\n\r\n",
                a.len(),
                b.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let second = read_answer(&mut end, &mut buf, false).await.unwrap();
        end.close().await.unwrap();
        [first, second]
    });
    assert_eq!(answers[0].body, r#"{"ok":true,"id":"8","ts":1}"#);
    assert_eq!(answers[1].body, r#"/**/f({"ok":true,"id":"8","ts":1});"#);
    assert_eq!(calls.len(), 2);
    assert_eq!(outcome.requests_answered, 2);
    assert_eq!(outcome.reason, CloseReason::PeerClosed);
}

#[test]
fn http10_closes_unless_kept_alive() {
    let (outcome, answers, _) = run(Listener::Client, config(), |mut end| async move {
        end.write_all(
            b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /ping HTTP/1.0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let first = read_answer(&mut end, &mut buf, false).await.unwrap();
        let second = read_answer(&mut end, &mut buf, false).await.unwrap();
        assert!(read_answer(&mut end, &mut buf, false).await.is_none());
        [first, second]
    });
    assert!(answers[0].head.contains("Connection: keep-alive\r\n"));
    assert!(answers[1].head.contains("Connection: close\r\n"));
    assert_eq!(outcome.reason, CloseReason::NotKeepAlive);
}

#[test]
fn admin_listener_needs_its_host_no_browser_and_the_token() {
    let (_, answers, calls) = run(Listener::Admin, config(), |mut end| async move {
        end.write_all(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nAuthorization: Bearer s3cret\r\n\r\n\
              GET /poll HTTP/1.1\r\nHost: localhost:8081\r\nAuthorization: Bearer s3cret\r\n\r\n\
              GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n\
              POST /kick?user=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nOrigin: null\r\n\
              Authorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n\
              GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nSec-Fetch-Site: same-origin\r\n\
              Authorization: Bearer s3cret\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(read_answer(&mut end, &mut buf, false).await.unwrap());
        }
        end.close().await.unwrap();
        answers
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 404, 403, 403, 403]);
    assert_eq!(answers[0].body, r#"{"ok":true,"shards":1}"#);
    for a in &answers[2..] {
        assert!(a.body.contains(r#""code":"forbidden""#), "{}", a.body);
        assert!(!a.head.contains("Connection: close"), "{}", a.head);
    }
    for a in &answers {
        assert!(!a.head.contains("Access-Control"), "{}", a.head);
        assert!(
            a.head.contains("X-Content-Type-Options: nosniff"),
            "{}",
            a.head
        );
    }
    assert_eq!(calls, [Call::Health]);
}

/// A missing or wrong admin token is answered 401 with `Connection: close`
/// and the connection ends: what was pipelined after it is not read, so
/// each guess costs a connection.
#[test]
fn a_wrong_admin_token_closes_the_connection() {
    for auth in ["", "Authorization: Bearer nope\r\n"] {
        let (outcome, (answer, rest), calls) = run(
            Listener::Admin,
            config(),
            |mut end| async move {
                let guesses = format!(
                    "GET /nope HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n{auth}\r\n\
                     GET /health HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nAuthorization: Bearer s3cret\r\n\r\n"
                );
                end.write_all(guesses.as_bytes()).await.unwrap();
                let mut buf = Vec::new();
                let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
                let rest = read_answer(&mut end, &mut buf, false).await;
                (answer, rest)
            },
        );
        assert_eq!(answer.status, 401, "{auth:?}");
        assert!(answer.body.contains(r#""code":"unauthorized""#));
        assert!(
            answer.head.contains("Connection: close\r\n"),
            "{}",
            answer.head
        );
        assert!(rest.is_none(), "nothing after the 401 is answered");
        assert!(calls.is_empty());
        assert_eq!(outcome.requests_answered, 1);
        assert_eq!(outcome.reason, CloseReason::Unauthorized);
    }
}

/// Every answer is reported once to `Handler::answered`, in order, with
/// the endpoint it is counted under, its outcome (the error code its body
/// carries) and how long it took; a request that could not be read is
/// reported with no time.
#[test]
fn every_answer_is_reported_with_its_endpoint_outcome_and_time() {
    let handler = TestHandler::default();
    let config = config();
    let (server_end, mut client) = duplex();
    let requests = format!(
        "GET /poll?sid={SID}&since=30 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /nope HTTP/1.1\r\nHost: x\r\n\r\n\
         DELETE /send HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /send?sid=x HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /ping HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /demo/ HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /bad\x01target HTTP/1.1\r\n\r\n"
    );
    let statuses = future::block_on(future::or(
        async {
            let client_side = async {
                client.write_all(requests.as_bytes()).await.unwrap();
                let mut buf = Vec::new();
                let mut statuses = Vec::new();
                while let Some(a) = read_answer(&mut client, &mut buf, false).await {
                    statuses.push(a.status);
                }
                statuses
            };
            let (_, statuses) = future::zip(
                serve(server_end, Listener::Client, &handler, &config),
                client_side,
            )
            .await;
            Some(statuses)
        },
        async {
            sleep(Duration::from_secs(5)).await;
            None
        },
    ))
    .expect("test timed out");
    assert_eq!(statuses, [200, 404, 405, 401, 200, 200, 400]);
    let answered = handler.answered.into_inner();
    let got: Vec<(Endpoint, Outcome)> = answered.iter().map(|&(e, o, _)| (e, o)).collect();
    assert_eq!(
        got,
        [
            (Endpoint::Poll, Outcome::Ok),
            (Endpoint::Other, Outcome::Failed(ErrorCode::NotFound)),
            (Endpoint::Send, Outcome::Failed(ErrorCode::BadRequest)),
            (Endpoint::Send, Outcome::Failed(ErrorCode::UnknownSession)),
            (Endpoint::Ping, Outcome::Ok),
            (Endpoint::Demo, Outcome::Ok),
            (Endpoint::Other, Outcome::Failed(ErrorCode::BadRequest)),
        ]
    );
    // The poll took its 30 ms; the rest were read, so they have a time;
    // the malformed head has none.
    assert!(
        answered[0].2.unwrap() >= Duration::from_millis(30),
        "{answered:?}"
    );
    assert!(answered[..6].iter().all(|a| a.2.is_some()), "{answered:?}");
    assert_eq!(answered[6].2, None);
}

/// A request that fails while it is read is counted under its endpoint
/// once its request line was read (a body over the limit on `/send` is a
/// `send` failure, whether its length was declared or sent), and under
/// `other` when not even that was.
#[test]
fn a_request_that_fails_while_read_is_counted_under_its_endpoint() {
    fn check(request: &[u8], expected: (Endpoint, Outcome)) {
        let handler = TestHandler::default();
        let (server_end, mut client) = duplex();
        let client_side = async {
            client.write_all(request).await.unwrap();
            let mut buf = Vec::new();
            assert!(read_answer(&mut client, &mut buf, false).await.is_some());
            client.close().await.unwrap();
        };
        let config = config();
        let served = future::zip(
            serve(server_end, Listener::Client, &handler, &config),
            client_side,
        );
        let timeout = async {
            sleep(Duration::from_secs(5)).await;
            panic!("test timed out");
        };
        future::block_on(future::or(async { served.await.0 }, timeout));
        let got: Vec<_> = handler
            .answered
            .borrow()
            .iter()
            .map(|a| (a.0, a.1))
            .collect();
        let shown = String::from_utf8_lossy(&request[..request.len().min(40)]).into_owned();
        assert_eq!(got, [expected], "{shown:?}");
    }
    let too_large = Outcome::Failed(ErrorCode::TooLarge);
    let bad = Outcome::Failed(ErrorCode::BadRequest);
    let mut declared = b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n".to_vec();
    declared.resize(declared.len() + 1_000, b'b');
    check(&declared, (Endpoint::Send, too_large));
    let mut sent =
        b"POST /send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\n".to_vec();
    sent.resize(sent.len() + 1_000, b'b');
    check(&sent, (Endpoint::Send, too_large));
    let mut fat = b"GET /poll HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    fat.resize(20_000, b'a');
    check(&fat, (Endpoint::Poll, too_large));
    // Head and body timeouts (100 ms here): 408, counted as bad_request.
    check(
        b"GET /history HTTP/1.1\r\nHost: x\r\n",
        (Endpoint::History, bad),
    );
    let slow_body = b"POST /ui HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab";
    check(slow_body, (Endpoint::Ui, bad));
    // No request line read: `other`.
    let mut long = b"GET /ping?".to_vec();
    long.resize(70_000, b'a');
    check(&long, (Endpoint::Other, too_large));
    check(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", (Endpoint::Other, bad));
    check(b"GET /ping HTTP/1.1\r\nX\r\n\r\n", (Endpoint::Ping, bad));
}

/// What a connection holds between requests, checked from the client's
/// side (the server and the client run on one thread, so this is the
/// server's pool): no buffer, and a pool within its bound.
fn assert_idle_connection_holds_nothing() {
    let stats = buffers::stats();
    assert_eq!(
        stats.lent, 0,
        "an idle connection holds no buffer: {stats:?}"
    );
    assert!(stats.pooled <= POOL_BUFFERS_MAX, "{stats:?}");
    assert!(
        stats.pooled_bytes <= stats.pooled * BUFFER_RETAIN_BYTES,
        "{stats:?}"
    );
}

/// A `/send` whose form body is `len` bytes (padded with an unknown
/// parameter, which is ignored).
fn send_request(len: usize) -> Vec<u8> {
    let mut body = format!("sid={SID}&to=7&text=hello&pad=");
    let pad = len - body.len();
    body.push_str(&"p".repeat(pad));
    format!(
        "POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn a_held_poll_and_an_idle_connection_hold_no_buffer() {
    let handler = TestHandler::default();
    let (outcome, (), _) = run_with(handler, Listener::Client, config(), |mut end| async move {
        let mut buf = Vec::new();
        // A poll held for 30 ms, then a send with a body, each followed
        // by idle time.
        let poll = format!("GET /poll?sid={SID}&since=30 HTTP/1.1\r\nHost: x\r\n\r\n");
        end.write_all(poll.as_bytes()).await.unwrap();
        assert_eq!(
            read_answer(&mut end, &mut buf, false).await.unwrap().status,
            200
        );
        assert_idle_connection_holds_nothing();
        end.write_all(&send_request(200)).await.unwrap();
        assert_eq!(
            read_answer(&mut end, &mut buf, false).await.unwrap().status,
            200
        );
        assert_idle_connection_holds_nothing();
        end.close().await.unwrap();
    });
    assert_eq!(outcome.requests_answered, 2);
    assert_eq!(outcome.reason, CloseReason::PeerClosed);
}

#[test]
fn calls_are_made_with_no_buffer_held_unless_pipelined_bytes_wait() {
    let handler = TestHandler::default();
    let (server_end, mut client) = duplex();
    let config = config();
    let client_side = async {
        let poll = format!("GET /poll?sid={SID}&since=5 HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        // Alone: nothing held while the poll is.
        client.write_all(poll.as_bytes()).await.unwrap();
        read_answer(&mut client, &mut buf, false).await.unwrap();
        // Pipelined behind another: the second request's bytes wait in
        // the connection's buffer during the first call, not after.
        client.write_all(poll.repeat(2).as_bytes()).await.unwrap();
        read_answer(&mut client, &mut buf, false).await.unwrap();
        read_answer(&mut client, &mut buf, false).await.unwrap();
        client.close().await.unwrap();
    };
    let served = future::zip(
        serve(server_end, Listener::Client, &handler, &config),
        client_side,
    );
    let outcome = future::block_on(future::or(async { Some(served.await.0) }, async {
        sleep(Duration::from_secs(5)).await;
        None
    }))
    .expect("test timed out");
    assert_eq!(outcome.requests_answered, 3);
    assert_eq!(*handler.lent_at_calls.borrow(), [0, 1, 0]);
}

#[test]
fn a_request_in_one_byte_segments_is_answered() {
    let request = send_request(3_000);
    let sent = request.len() as u64;
    let (outcome, answer, calls) = run(Listener::Client, config(), |mut end| async move {
        for byte in &request {
            end.write_all(std::slice::from_ref(byte)).await.unwrap();
            // Let the server read this byte alone.
            future::yield_now().await;
        }
        let mut buf = Vec::new();
        let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
        assert_idle_connection_holds_nothing();
        end.close().await.unwrap();
        answer
    });
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"ok":true,"id":"5","ts":1}"#);
    assert_eq!(calls.len(), 1);
    assert_eq!(outcome.bytes_read, sent);
    assert_eq!(outcome.reason, CloseReason::PeerClosed);
}

/// A request larger than the read scratch and than any buffer the pool
/// keeps is read whole, and its big buffers are freed, not kept.
#[test]
fn a_big_request_is_read_and_its_buffers_freed() {
    let request = send_request(60_000);
    assert!(request.len() > 4 * READ_CHUNK_BYTES && request.len() > BUFFER_RETAIN_BYTES);
    let sent = request.len() as u64;
    let (outcome, answers, _) = run(Listener::Client, config(), |mut end| async move {
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        end.write_all(&request).await.unwrap();
        answers.push(read_answer(&mut end, &mut buf, false).await.unwrap());
        assert_idle_connection_holds_nothing();
        // The next small one on the same connection is served as usual.
        end.write_all(&send_request(100)).await.unwrap();
        answers.push(read_answer(&mut end, &mut buf, false).await.unwrap());
        assert_idle_connection_holds_nothing();
        end.close().await.unwrap();
        answers
    });
    assert_eq!(answers[0].body, r#"{"ok":true,"id":"5","ts":1}"#);
    assert_eq!(answers[1].status, 200);
    assert_eq!(outcome.requests_answered, 2);
    assert_eq!(outcome.bytes_read, sent + send_request(100).len() as u64);
}

/// A burst of pipelined requests, many times the read scratch, sent at
/// once: every one answered, in order.
#[test]
fn a_pipelined_burst_is_answered_in_order() {
    const REQUESTS: u64 = 300;
    let (outcome, seqs, calls) = run(Listener::Client, config(), |mut end| async move {
        let mut burst = Vec::new();
        for i in 0..REQUESTS {
            // `since` is the wait in ms: 0, 1, 2, 0, 1, 2...
            let line = format!(
                "GET /poll?sid={SID}&since={} HTTP/1.1\r\nHost: x\r\n\r\n",
                i % 3
            );
            burst.extend_from_slice(line.as_bytes());
        }
        assert!(burst.len() > 2 * READ_CHUNK_BYTES);
        end.write_all(&burst).await.unwrap();
        let mut buf = Vec::new();
        let mut seqs = Vec::new();
        for _ in 0..REQUESTS {
            let answer = read_answer(&mut end, &mut buf, false).await.unwrap();
            seqs.push(answer.body);
        }
        assert_idle_connection_holds_nothing();
        end.close().await.unwrap();
        seqs
    });
    let expected: Vec<String> = (0..REQUESTS)
        .map(|i| format!(r#"{{"ok":true,"seq":{},"events":[]}}"#, i % 3))
        .collect();
    assert_eq!(seqs, expected);
    assert_eq!(calls.len(), REQUESTS as usize);
    assert_eq!(outcome.requests_answered, REQUESTS);
    assert_eq!(
        buffers::stats(),
        BufferStats {
            lent: 0,
            ..buffers::stats()
        },
        "the connection gave every buffer back when it ended"
    );
}
