//! A property test of the connection loop: any bytes, cut into any chunks
//! and sent with any pauses, yield only whole, well-formed HTTP answers and
//! then a clean close: never a panic, a hang or a partial answer.
//!
//! Thousands of seeded cases (`CONN_BYTES_SEED` replays one run; the seed
//! is printed): real requests of the protocol, pipelined and mutated, or
//! random bytes, through [`serve`] on an in-memory stream. Time is virtual
//! and nothing runs on threads, like `quinn-proto`'s tests: the test polls
//! the server and the client until neither can move, then jumps the clock
//! to the earliest pending deadline. A state where neither can move and no
//! deadline is pending is a hang, reported with the case that made it.
//!
//! The oracle is the pure parser: `parse_head` and `parse_request` walked
//! over the whole input say which requests the server must answer, in
//! which order, which of them get a `100 Continue` first, which are `HEAD`
//! (no body in the answer) and which error ends the connection with which
//! status. Without pauses the answers must be exactly those (however the
//! bytes are cut: the answer never depends on TCP segmentation); with
//! pauses, a prefix of them, possibly followed by one `408`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use switchboard_io::head::{parse_head, Method};
use switchboard_io::response::{reason, CONTINUE};
use switchboard_io::{
    parse_request, serve, AdminGate, Call, CloseReason, Config, ConnOutcome, Handler, Limits,
    Listener, Reply,
};
use switchboard_shards::model::{ErrorCode, Failure, Request, Response};

mod common;

use common::{mutate, Rng, SEEDS};

/// Cases per run: enough to cover the seeds' shapes many times over, few
/// enough to stay within a few seconds of `cargo test`.
const CASES: usize = 3_000;

/// Poll rounds one case may take before it counts as a hang (a loop that
/// keeps moving but never ends).
const ROUNDS_MAX: usize = 200_000;

/// Virtual time one case may take: every deadline is far shorter.
const VIRTUAL_MS_MAX: u64 = 3_600_000;

/// The virtual clock, shared by the server's timers and the client's
/// pauses, and a count of everything that moved (bytes, closes, timers
/// firing), so the driver knows when a poll round did nothing.
#[derive(Default)]
struct World {
    /// Virtual now.
    now_ms: Cell<u64>,
    /// Deadlines of the sleeps found pending in this poll round.
    pending: RefCell<Vec<u64>>,
    /// Bumped by every event that may let someone else move.
    moves: Cell<u64>,
}

impl World {
    fn moved(&self) {
        self.moves.set(self.moves.get() + 1);
    }

    fn sleep(self: &Rc<World>, duration: Duration) -> Sleep {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Sleep {
            world: self.clone(),
            deadline_ms: self.now_ms.get().saturating_add(ms),
            fired: false,
        }
    }
}

/// A sleep on the virtual clock.
struct Sleep {
    world: Rc<World>,
    deadline_ms: u64,
    /// Whether it fired already (counted as a move once).
    fired: bool,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if self.world.now_ms.get() >= self.deadline_ms {
            if !self.fired {
                self.fired = true;
                self.world.moved();
            }
            return Poll::Ready(());
        }
        self.world.pending.borrow_mut().push(self.deadline_ms);
        Poll::Pending
    }
}

/// One direction of the in-memory stream.
#[derive(Default)]
struct Pipe {
    data: VecDeque<u8>,
    /// The writer shut down (or its end was dropped).
    closed: bool,
}

/// One end of the in-memory duplex stream. `close` is a half-close of the
/// write side; dropping the end closes both directions. No wakers: the
/// driver polls everything every round.
struct End {
    world: Rc<World>,
    rx: Rc<RefCell<Pipe>>,
    tx: Rc<RefCell<Pipe>>,
}

fn duplex(world: &Rc<World>) -> (End, End) {
    let a = Rc::new(RefCell::new(Pipe::default()));
    let b = Rc::new(RefCell::new(Pipe::default()));
    let end = |rx, tx| End {
        world: world.clone(),
        rx,
        tx,
    };
    (end(a.clone(), b.clone()), end(b, a))
}

impl Drop for End {
    fn drop(&mut self) {
        self.tx.borrow_mut().closed = true;
        self.rx.borrow_mut().closed = true;
        self.world.moved();
    }
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = self.rx.borrow_mut();
        if pipe.data.is_empty() {
            return if pipe.closed {
                Poll::Ready(Ok(0))
            } else {
                Poll::Pending
            };
        }
        let n = buf.len().min(pipe.data.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.data.drain(..n)) {
            *slot = byte;
        }
        self.world.moved();
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut pipe = self.tx.borrow_mut();
        if pipe.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        pipe.data.extend(buf);
        self.world.moved();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.borrow_mut().closed = true;
        self.world.moved();
        Poll::Ready(Ok(()))
    }
}

/// Answers at once, except polls, which take `since` virtual ms (capped),
/// so pipelined answers wait on a slow first one.
struct TestHandler {
    world: Rc<World>,
}

impl Handler for TestHandler {
    fn call(&self, call: Call) -> impl Future<Output = Reply> {
        let world = self.world.clone();
        async move {
            match call {
                Call::Shard(Request::Poll { since, .. }) => {
                    world.sleep(Duration::from_millis(since.min(3_000))).await;
                    Reply::Shard(Response::Events {
                        seq: since,
                        events: vec![],
                    })
                }
                Call::Shard(Request::Send { text, .. }) => Reply::Shard(Response::Sent {
                    id: text.len() as u64,
                    ts: 1,
                }),
                Call::Connect { .. } => Reply::Shard(Response::Failed(Failure::new(
                    ErrorCode::Unauthorized,
                    "bad token \u{2028}",
                ))),
                Call::Health => Reply::Json {
                    body: r#"{"ok":true,"shards":1}"#.into(),
                },
                Call::Demo { .. } => Reply::File {
                    content_type: "text/html; charset=utf-8",
                    body: b"<!doctype html>\r\n\r\nHTTP/1.1 200 OK\r\n",
                },
                Call::Trace { .. } => Reply::Json {
                    body: r#"{"ok":true}"#.into(),
                },
                _ => Reply::Shard(Response::Done),
            }
        }
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        self.world.sleep(duration)
    }
}

/// One step of what the client must read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `100 Continue`.
    Continue,
    /// A final answer: with no body when the request was `HEAD`, and with
    /// this status when the oracle knows it (errors reading the request).
    Answer {
        head_only: bool,
        status: Option<u16>,
    },
}

/// What the server must answer to `input`, sent whole and then closed.
fn oracle(input: &[u8], limits: &Limits) -> Vec<Step> {
    oracle_and_tail(input, limits).0
}

/// [`oracle`], and whether the input ends with a whole `/poll` request
/// right after its head and body: one that may be held, and that the
/// client's close (which follows at once) then ends unanswered, as a
/// hang-up (`CloseReason::PeerClosedDuringCall`).
fn oracle_and_tail(input: &[u8], limits: &Limits) -> (Vec<Step>, bool) {
    let mut tail_poll = false;
    let mut steps = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let error = |status| Step::Answer {
            head_only: false,
            status: Some(status),
        };
        let head = match parse_head(rest, limits) {
            Err(e) => {
                steps.push(error(e.status));
                break;
            }
            // The client closed mid-head: nothing to answer.
            Ok(None) => break,
            Ok(Some(head)) => head,
        };
        if head.expect_continue {
            steps.push(Step::Continue);
        }
        match parse_request(rest, limits) {
            Err(e) => {
                steps.push(error(e.status));
                break;
            }
            Ok(None) => break,
            Ok(Some(parsed)) => {
                steps.push(Step::Answer {
                    head_only: parsed.head.method == Method::Head,
                    status: None,
                });
                rest = &rest[parsed.len..];
                tail_poll = rest.is_empty() && parsed.head.path == "/poll";
                if !parsed.head.keep_alive {
                    break;
                }
            }
        }
    }
    (steps, tail_poll)
}

/// Reads the answers out of `bytes`, using the oracle only to know which
/// final answers carry no body (`HEAD`). Fails on anything that is not a
/// sequence of whole, well-formed answers.
fn read_answers(bytes: &[u8], expected: &[Step]) -> Result<Vec<Step>, String> {
    let mut got = Vec::new();
    let mut pos = 0;
    let mut closed = false;
    while pos < bytes.len() {
        if closed {
            return Err("bytes after an answer that said `Connection: close`".into());
        }
        let rest = &bytes[pos..];
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("a partial answer head")?
            + 4;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "a non-UTF-8 answer head")?;
        let status_line = head.split("\r\n").next().unwrap_or("");
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        if status_line != format!("HTTP/1.1 {status} {}", reason(status)) {
            return Err(format!("bad status line {status_line:?}"));
        }
        pos += end;
        if status == 100 {
            if &rest[..end] != CONTINUE {
                return Err(format!("bad interim answer {head:?}"));
            }
            got.push(Step::Continue);
            continue;
        }
        let mut length = None;
        let mut content_type = None;
        let mut date = false;
        for field in head[status_line.len() + 2..end - 4].split("\r\n") {
            let (name, value) = field
                .split_once(": ")
                .ok_or_else(|| format!("bad header field {field:?}"))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(format!("bad header name {name:?}"));
            }
            match name {
                "Content-Length" if length.is_none() => {
                    length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?)
                }
                "Content-Length" => return Err("two Content-Lengths".into()),
                "Content-Type" => content_type = Some(value),
                "Date" => date = value.len() == 29 && value.ends_with(" GMT"),
                "Connection" if value == "close" => closed = true,
                _ => {}
            }
        }
        if !date {
            return Err("no Date".into());
        }
        // A 304 (a client file already cached) has no body, and says
        // neither its length nor its type (RFC 9110 §15.4.5).
        if status == 304 {
            if length.is_some() || content_type.is_some() {
                return Err(format!("a 304 with content headers: {head:?}"));
            }
            got.push(Step::Answer {
                head_only: false,
                status: Some(status),
            });
            continue;
        }
        let length = length.ok_or("no Content-Length")?;
        let content_type = content_type.ok_or("no Content-Type")?;
        // A `HEAD` is answered 404 or 405 without a body; a 408 in its
        // place (it paused too long) has one.
        let finals = got.iter().filter(|s| **s != Step::Continue).count();
        let head_only = status != 408
            && expected
                .iter()
                .filter(|s| **s != Step::Continue)
                .nth(finals)
                .is_some_and(|s| {
                    matches!(
                        s,
                        Step::Answer {
                            head_only: true,
                            ..
                        }
                    )
                });
        if !head_only {
            let body = bytes.get(pos..pos + length).ok_or_else(|| {
                format!("a partial body: {} of {length} bytes", bytes.len() - pos)
            })?;
            check_body(content_type, body)?;
            pos += length;
        }
        got.push(Step::Answer {
            head_only,
            status: Some(status),
        });
    }
    Ok(got)
}

/// A JSON body parses; a JSONP one is `/**/NAME(JSON);`.
fn check_body(content_type: &str, body: &[u8]) -> Result<(), String> {
    let json = match content_type {
        "application/json" => body,
        "application/javascript; charset=utf-8" => body
            .strip_prefix(b"/**/")
            .and_then(|b| b.strip_suffix(b");"))
            .and_then(|b| b.iter().position(|&c| c == b'(').map(|i| &b[i + 1..]))
            .ok_or("a JSONP body that is not /**/NAME(...);")?,
        _ => return Ok(()),
    };
    serde_json::from_slice::<serde_json::Value>(json)
        .map(drop)
        .map_err(|e| format!("a body that is not JSON: {e}"))
}

/// How one case sends its bytes: chunks, each after a pause.
struct Plan {
    chunks: Vec<(u64, Vec<u8>)>,
}

impl Plan {
    /// The bytes of all chunks, in order.
    fn bytes(&self) -> Vec<u8> {
        self.chunks
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect()
    }

    fn paused(&self) -> bool {
        self.chunks.iter().any(|(pause, _)| *pause > 0)
    }
}

/// Runs one case; returns the outcome and the client's bytes, or why the
/// case failed to end.
fn run(plan: &Plan, config: &Config, listener: Listener) -> Result<(ConnOutcome, Vec<u8>), String> {
    let world = Rc::new(World::default());
    let handler = TestHandler {
        world: world.clone(),
    };
    let (server_end, mut client_end) = duplex(&world);
    let mut server = Some(Box::pin(serve(server_end, listener, &handler, config)));
    let client_world = world.clone();
    let mut client = Box::pin(async move {
        for (pause_ms, chunk) in &plan.chunks {
            if *pause_ms > 0 {
                client_world.sleep(Duration::from_millis(*pause_ms)).await;
            }
            if client_end.write_all(chunk).await.is_err() {
                break;
            }
            // Let the server see this chunk alone.
            futures_lite::future::yield_now().await;
        }
        let _ = client_end.close().await;
        let mut got = Vec::new();
        client_end.read_to_end(&mut got).await.map(|_| got)
    });
    let mut cx = Context::from_waker(Waker::noop());
    let mut outcome = None;
    let mut got = None;
    for _ in 0..ROUNDS_MAX {
        let before = world.moves.get();
        world.pending.borrow_mut().clear();
        if let Some(s) = server.as_mut() {
            if let Poll::Ready(o) = s.as_mut().poll(&mut cx) {
                outcome = Some(o);
                // Dropping the future drops the server's end of the
                // stream: the client reads end-of-stream.
                server = None;
                world.moved();
            }
        }
        if got.is_none() {
            // The client may finish first: a lingering server shut its
            // write side and still reads until the client's end is gone
            // (dropped with the finished client future).
            if let Poll::Ready(bytes) = client.as_mut().poll(&mut cx) {
                got = Some(bytes.map_err(|e| format!("client read failed: {e}"))?);
                world.moved();
            }
        }
        if let (Some(outcome), Some(got)) = (outcome, got.as_ref()) {
            return Ok((outcome, got.clone()));
        }
        if world.moves.get() != before {
            continue;
        }
        let now = world.now_ms.get();
        let next = world
            .pending
            .borrow()
            .iter()
            .copied()
            .filter(|&t| t > now)
            .min();
        match next {
            Some(t) if t <= VIRTUAL_MS_MAX => world.now_ms.set(t),
            Some(t) => return Err(format!("still running at {t} virtual ms")),
            None => {
                return Err(format!(
                    "hang at {now} virtual ms: nothing can move and no deadline is pending \
                     (server done: {})",
                    server.is_none()
                ))
            }
        }
    }
    Err(format!("no end after {ROUNDS_MAX} poll rounds"))
}

/// Checks one case against the oracle.
fn check(plan: &Plan, config: &Config, listener: Listener) -> Result<(), String> {
    let input = plan.bytes();
    let (mut expected, tail_poll) = oracle_and_tail(&input, &config.limits);
    // A held poll that the client's close ends is not answered: a
    // hang-up, and only of a last request that is a poll.
    let (outcome, bytes) = run(plan, config, listener)?;
    if outcome.reason == CloseReason::PeerClosedDuringCall {
        if !(tail_poll && listener == Listener::Client) {
            return Err(format!("a hang-up after {expected:?}, not of a last /poll"));
        }
        expected.pop();
    }
    let got = read_answers(&bytes, &expected).map_err(|why| {
        format!(
            "{why}\nanswers: {:?}\n{outcome:?}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let finals = got.iter().filter(|s| **s != Step::Continue).count() as u64;
    if outcome.requests_answered != finals {
        return Err(format!(
            "{finals} answers read, {} counted: {outcome:?}",
            outcome.requests_answered
        ));
    }
    // A connection that read to the client's close read every byte once.
    if matches!(
        outcome.reason,
        CloseReason::PeerClosed | CloseReason::PeerClosedDuringCall
    ) && outcome.bytes_read != input.len() as u64
    {
        return Err(format!(
            "{} bytes sent, {} counted read: {outcome:?}",
            input.len(),
            outcome.bytes_read
        ));
    }
    if outcome.bytes_written != bytes.len() as u64 {
        return Err(format!("{} bytes read, {outcome:?}", bytes.len()));
    }
    if matches!(
        outcome.reason,
        CloseReason::ReadError(_) | CloseReason::WriteError(_) | CloseReason::WriteTimeout
    ) {
        return Err(format!("closed by {:?}", outcome.reason));
    }
    let matches = |got: &Step, want: &Step| match (got, want) {
        (
            Step::Answer {
                head_only: a,
                status: s,
            },
            Step::Answer {
                head_only: b,
                status: t,
            },
        ) => a == b && (t.is_none() || s == t),
        (a, b) => a == b,
    };
    let agree = got
        .iter()
        .zip(&expected)
        .take_while(|(g, w)| matches(g, w))
        .count();
    let ok = if plan.paused() {
        // A prefix, then at most a 408 (a head or body that paused too
        // long); a pause between requests ends it quietly.
        agree == got.len()
            || (agree + 1 == got.len()
                && got[agree]
                    == Step::Answer {
                        head_only: false,
                        status: Some(408),
                    })
    } else {
        agree == got.len() && agree == expected.len()
    };
    if !ok {
        return Err(format!("answers {got:?}, expected {expected:?}"));
    }
    Ok(())
}

/// Cuts `input` into chunks, with pauses when `pauses`.
fn plan(rng: &mut Rng, input: Vec<u8>, pauses: bool) -> Plan {
    const PAUSES_MS: &[u64] = &[0, 0, 0, 0, 10, 4_000, 6_000, 11_000, 31_000, 80_000];
    let mut cuts: Vec<usize> = if rng.below(10) == 0 && input.len() <= 400 {
        (1..input.len()).collect()
    } else {
        (0..rng.below(8))
            .map(|_| rng.below(input.len() + 1))
            .collect()
    };
    cuts.push(0);
    cuts.push(input.len());
    cuts.sort_unstable();
    cuts.dedup();
    let chunks = cuts
        .windows(2)
        .map(|w| {
            let pause = if pauses {
                PAUSES_MS[rng.below(PAUSES_MS.len())]
            } else {
                0
            };
            (pause, input[w[0]..w[1]].to_vec())
        })
        .collect();
    Plan { chunks }
}

#[test]
fn any_bytes_in_any_chunks_get_whole_answers_or_a_clean_close() {
    let seed = std::env::var("CONN_BYTES_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0xc0ff_ee15_600d);
    println!("seed {seed:#x} (CONN_BYTES_SEED={seed:x} replays it)");
    let mut rng = Rng(seed);
    let tiny = Limits {
        request_line_bytes_max: 64,
        header_section_bytes_max: 128,
        body_bytes_max: 16,
        ..Limits::default()
    };
    let mut answered = 0;
    let mut paused = 0;
    for case in 0..CASES {
        let mut input = if case % 10 == 0 {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        } else {
            // One to three requests, pipelined.
            let mut input = Vec::new();
            for _ in 0..1 + rng.below(3) {
                input.extend_from_slice(SEEDS[rng.below(SEEDS.len())].as_bytes());
            }
            input
        };
        if case % 10 != 1 {
            mutate(&mut rng, &mut input);
        }
        let pauses = rng.below(4) == 0;
        let plan = plan(&mut rng, input, pauses);
        let config = Config {
            limits: if case % 2 == 0 {
                Limits::default()
            } else {
                tiny.clone()
            },
            admin: AdminGate::new("127.0.0.1:8081".parse().unwrap(), Some("s3cret".into())),
            ..Config::default()
        };
        let listener = if rng.below(5) == 0 {
            Listener::Admin
        } else {
            Listener::Client
        };
        if let Err(why) = check(&plan, &config, listener) {
            let chunks: Vec<(u64, String)> = plan
                .chunks
                .iter()
                .map(|(p, c)| (*p, String::from_utf8_lossy(c).into_owned()))
                .collect();
            panic!(
                "case {case} (seed {seed:#x}, {listener:?}, limits {:?}): {why}\nchunks (pause ms, bytes): {chunks:?}",
                config.limits
            );
        }
        answered += usize::from(!oracle(&plan.bytes(), &config.limits).is_empty());
        paused += usize::from(plan.paused());
    }
    println!("{CASES} cases: {answered} expected an answer, {paused} had pauses");
    assert!(
        answered > CASES / 2,
        "only {answered} cases reached an answer"
    );
}
