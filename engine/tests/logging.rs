//! The logger on the real binary: a flood of records with stderr stuck
//! (a pipe nobody reads) costs dropped lines, counted, never an executor
//! waiting, so another user's held poll is answered as fast as ever; with
//! stderr stuck every exit path still ends the process within its bound
//! (a graceful stop, a panic outside the supervised region, a failed
//! start); and at the most verbose level no line (stderr or a trace)
//! holds a token, a sid's secret, message text, a cid, a tab name or UI
//! state.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const ADMIN_TOKEN: &str = "logging-test-admin-token-0123456789abcdef";

/// How long a friend's message may take to reach a held poll during the
/// flood. A blocked executor would answer it only at the poll's wait
/// (20 s) or never (the send itself waits on the same executor).
const DELIVERY_BOUND: Duration = Duration::from_secs(2);

/// Sets its flag when dropped: the flood stops however the test ends
/// (an assertion that fails inside the thread scope included).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Requests `path?query` on one keep-alive connection, as fast as the
/// server answers, until `stop`; how many were answered 200.
fn hammer(server: &Server, path: &str, query: &str, stop: &AtomicBool) -> u64 {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let raw = format!("GET {path}?{query} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = Vec::new();
    let mut ok = 0;
    while !stop.load(Ordering::Relaxed) {
        s.write_all(raw.as_bytes()).unwrap();
        let a = read_answer_from(&mut s, &mut buf);
        ok += u64::from(a.status == 200);
    }
    ok
}

#[test]
fn a_logging_flood_with_stderr_stuck_drops_records_and_never_holds_up_a_poll() {
    let dir = temp_dir("log-flood");
    let server = Server::start_with(
        &dir,
        &[
            ("SWITCHBOARD_LOG", "trace"),
            ("SWITCHBOARD_RATE_LIMITS", "off"),
            ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
        Stderr::Unread,
    );
    let alice = server.connect(ALICE, "a");
    let mut bob = server.connect(BOB, "b");
    let dave = server.connect(DAVE, "d");
    let _frank = server.connect(6, "f");
    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let mut latencies = Vec::new();
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        // The flood: dave types to frank and polls, each call a debug
        // line or more, from four connections at once.
        let typing = format!("sid={}&to=6&state=typing", dave.sid);
        let polling = format!("sid={}&since=0&wait=0", dave.sid);
        for i in 0..4 {
            let (path, query) = if i % 2 == 0 {
                ("/typing", typing.clone())
            } else {
                ("/poll", polling.clone())
            };
            let (server, stop, answered) = (&server, &stop, &answered);
            scope.spawn(move || {
                answered.fetch_add(hammer(server, path, &query, stop), Ordering::Relaxed);
            });
        }
        // Until the log queue overflows: stderr took 64 KiB, then the log
        // thread blocked, then the queue filled.
        let start = Instant::now();
        while server.metric("switchboard_log_dropped_total") == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the flood never filled the log queue"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Meanwhile, bob's held polls get alice's messages at once (a
        // poll answered by another event, a friend's presence, is held
        // again at once).
        bob.poll(&server, 0);
        let mut bob = Some(bob);
        for round in 0..5 {
            let text = format!("round {round}");
            let (server, mut tab) = (&server, bob.take().unwrap());
            let held = scope.spawn(move || {
                let mut got = Vec::new();
                while messages(&got).is_empty() {
                    got.extend(tab.poll(server, 20));
                }
                (tab, messages(&got), Instant::now())
            });
            std::thread::sleep(Duration::from_millis(100));
            let sent_at = Instant::now();
            let v = server.get(
                "/send",
                &[("sid", &alice.sid), ("to", "2"), ("text", &text)],
            );
            assert_eq!(v["ok"], true, "{v}");
            let (tab, got, got_at) = held.join().unwrap();
            bob = Some(tab);
            assert_eq!(got, [(ALICE, text)]);
            latencies.push(got_at.duration_since(sent_at));
        }
    });
    let dropped = server.metric("switchboard_log_dropped_total");
    let worst = latencies.iter().max().unwrap();
    eprintln!(
        "flood: {} requests answered, {dropped} log records dropped; send to held poll: {latencies:?}",
        answered.load(Ordering::Relaxed)
    );
    assert!(dropped > 0);
    assert!(
        *worst < DELIVERY_BOUND,
        "a message took {worst:?} to reach a held poll during the flood (bound {DELIVERY_BOUND:?})"
    );
}

/// A server at `SWITCHBOARD_LOG=trace` with its stderr a pipe nobody
/// reads, plus `extra` settings.
fn start_unread(name: &str, extra: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("SWITCHBOARD_LOG", "trace"),
        ("SWITCHBOARD_RATE_LIMITS", "off"),
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    all.extend_from_slice(extra);
    Server::start_with(&temp_dir(name), &all, Stderr::Unread)
}

/// Floods the server with calls of dave's (each a trace line or more)
/// until its log queue overflows: the pipe is full, the `log` thread is
/// blocked writing to it, and records are being dropped. The flood has
/// stopped when this returns.
fn fill_stderr(server: &Server) {
    let dave = server.connect(DAVE, "d");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let query = format!("sid={}&since=0&wait=0", dave.sid);
        for _ in 0..2 {
            let (stop, query) = (&stop, query.clone());
            scope.spawn(move || hammer(server, "/poll", &query, stop));
        }
        let start = Instant::now();
        while server.metric("switchboard_log_dropped_total") == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the flood never filled the log queue"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// How long an exit path may take with stderr stuck: the log's flush
/// (2 s, `LOG_FLUSH_WAIT_MS`), the last message's write (2 s), slack.
const STUCK_EXIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn with_stderr_stuck_sigterm_still_exits_0_within_the_stop_bound() {
    let mut server = start_unread("log-stuck-term", &[]);
    fill_stderr(&server);
    let asked = Instant::now();
    server.signal("TERM");
    // The stop bound (`limits::stop_timeout_ms`, 14.57 s), then the
    // flush's 2 s and slack.
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("SIGTERM with stderr stuck: the server did not exit");
    assert_eq!(status.code(), Some(0), "{status}");
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
}

#[test]
fn with_stderr_stuck_a_panic_outside_the_supervised_region_still_exits_70() {
    let alice = ALICE.to_string();
    let mut server = start_unread(
        "log-stuck-panic",
        &[("SWITCHBOARD_FAULT_PANIC_OUTSIDE_USER", alice.as_str())],
    );
    fill_stderr(&server);
    // The connect panics in the handler, on the conn shard's executor;
    // the hook's flush and message must not wait on the stuck pipe.
    let asked = Instant::now();
    let target = format!("/connect?{}", encode(&[("token", &token(ALICE))]));
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let _ = stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let status = server
        .wait_exit(STUCK_EXIT_BOUND)
        .expect("a panic with stderr stuck: the server did not exit");
    assert_eq!(status.code(), Some(70), "{status}");
    eprintln!("exited {:?} after the panic", asked.elapsed());
}

/// A pipe whose buffer is already full, its read end held and never
/// read: a process given the write end as its stderr blocks on its
/// first write.
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    let fd = writer.as_raw_fd();
    let set_nonblocking = |on: bool| {
        // SAFETY: fcntl on a descriptor this function owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }, 0);
    };
    set_nonblocking(true);
    let chunk = [b'x'; 4096];
    loop {
        match writer.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    // The child shares this file description: it must block, as on a
    // real stuck pipe.
    set_nonblocking(false);
    (reader, writer)
}

/// Kills the child when dropped (a test that fails must not leave a
/// blocked server behind).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn with_stderr_full_a_server_that_cannot_start_still_exits_2() {
    // A second server on the first one's data folder cannot start: its
    // log lines and its last message meet a full stderr.
    let dir = temp_dir("log-stuck-start");
    let first = Server::start(&dir, &[]);
    let (_reader, writer) = full_pipe();
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .envs(first.env.iter().cloned())
        .env("SWITCHBOARD_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let mut second = KillOnDrop(child);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < STUCK_EXIT_BOUND,
            "a failed start with stderr full: no exit after {STUCK_EXIT_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2), "{status}");
    eprintln!("exited {:?} after the start", start.elapsed());
}

#[test]
fn no_token_sid_secret_or_content_reaches_any_log_line_at_trace_level() {
    // Every string a client chose carries the marker zq7 (any case).
    const MARK: &str = "zq7";
    let dir = temp_dir("log-secrets");
    let admin_token = "admin-Zq7-token-0123456789abcdef0123456789";
    let server = Server::start(
        &dir,
        &[
            ("SWITCHBOARD_LOG", "trace"),
            ("SWITCHBOARD_ADMIN_TOKEN", admin_token),
        ],
    );
    let (status, v) = server.admin_post("/trace", &[("user", "1"), ("level", "debug")]);
    assert_eq!(status, 200, "{v}");
    let token_a = token(ALICE);
    let token_b = token(BOB);
    let a = server.get("/connect", &[("token", &token_a), ("tab", "tab-Zq7-alice")]);
    let b = server.get("/connect", &[("token", &token_b), ("tab", "tab-Zq7-bob")]);
    let sid_a = a["sid"].as_str().unwrap().to_string();
    let sid_b = b["sid"].as_str().unwrap().to_string();
    let seq_a = a["seq"].as_u64().unwrap().to_string();
    let call = |path: &str, params: &[(&str, &str)]| {
        let v = server.get(path, params);
        assert_eq!(v["ok"], true, "{path}: {v}");
        v
    };
    let sent = call(
        "/send",
        &[
            ("sid", &sid_a),
            ("to", "2"),
            ("text", "text-Zq7-secret"),
            ("cid", "cid-Zq7-private"),
        ],
    );
    let id = sent["id"].as_str().unwrap().to_string();
    call(
        "/ui",
        &[
            ("sid", &sid_a),
            ("state", r#"{"zq7ui":"layout-Zq7-private"}"#),
        ],
    );
    call(
        "/typing",
        &[("sid", &sid_a), ("to", "2"), ("state", "typing")],
    );
    call(
        "/send",
        &[("sid", &sid_b), ("to", "1"), ("text", "reply-Zq7-secret")],
    );
    call(
        "/poll",
        &[("sid", &sid_a), ("since", &seq_a), ("wait", "0")],
    );
    call("/read", &[("sid", &sid_b), ("with", "1"), ("upto", &id)]);
    call("/history", &[("sid", &sid_a), ("with", "2")]);
    call("/presence", &[("sid", &sid_a), ("status", "away")]);
    // Tokens that fail: made up, and a genuine one tampered with.
    for bad in ["made-up-Zq7-token-0123456789", &format!("{token_a}x")] {
        let v = server.get("/connect", &[("token", bad)]);
        assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    }
    // A wrong admin token, and a stranger's sid.
    let wrong = request(
        server.admin,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer wrong-Zq7-admin\r\n\r\n",
            server.admin
        ),
    );
    assert_eq!(wrong.status, 401);
    let stranger = "1-0123456789abcdef0123456789abcdef";
    let v = server.get("/poll", &[("sid", stranger), ("since", "0"), ("wait", "0")]);
    assert_eq!(v["error"]["code"], "unknown_session", "{v}");
    call("/leave", &[("sid", &sid_a)]);
    eventually(Duration::from_secs(5), "the leave is logged", || {
        !server.log_lines("call leave").is_empty()
    });

    let stderr = server.log.lock().unwrap().clone();
    let trace_file = dir.join("traces").join("user-1.log");
    let traced = std::fs::read_to_string(&trace_file).unwrap();
    let read_back = server.admin_call("GET", "/trace", &[("user", "1")]).body;
    // The captures hold what they should, so the checks below can fail.
    for needle in [
        "call connect",
        "call send on conn shard-",
        "call ui",
        "call typing",
        "call history",
        "storage job store_message submitted",
        "storage job save_ui done in",
        "storage job mark_read",
    ] {
        assert!(
            stderr.iter().any(|l| l.contains(needle)),
            "stderr has no {needle:?}: {stderr:#?}"
        );
    }
    for needle in ["send: ok in ", "storage job save_ui", "presence away"] {
        assert!(
            traced.contains(needle),
            "the trace has no {needle:?}:\n{traced}"
        );
    }
    assert!(read_back.contains("leave: ok in "), "{read_back}");
    let sig = |t: &str| t.rsplit('.').next().unwrap().to_string();
    let secret = |sid: &str| sid.split_once('-').unwrap().1.to_string();
    let leaks = [
        token_a.clone(),
        sig(&token_a),
        token_b.clone(),
        sig(&token_b),
        secret(&sid_a),
        secret(&sid_b),
        "0123456789abcdef0123456789abcdef".to_string(),
        admin_token.to_string(),
        MARK.to_string(),
    ];
    let places: [(&str, Vec<String>); 3] = [
        ("stderr", stderr),
        (
            "the trace file",
            traced.lines().map(str::to_string).collect(),
        ),
        (
            "GET /trace",
            read_back.lines().map(str::to_string).collect(),
        ),
    ];
    for (place, lines) in &places {
        assert!(!lines.is_empty(), "{place} is empty");
        for line in lines {
            let lower = line.to_lowercase();
            for leak in &leaks {
                assert!(
                    !lower.contains(&leak.to_lowercase()),
                    "{place} holds {leak:?}: {line}"
                );
            }
        }
    }
}
