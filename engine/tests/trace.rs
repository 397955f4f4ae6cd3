//! Per-user traces (admin `/trace`), on the real binary over real
//! sockets: a traced user's trace holds their requests, their send and its
//! hops between shards, their storage jobs; an untraced user's requests
//! never appear, nor calls with a forged sid of theirs; `level=off` stops
//! it; the time and size bounds end it; at most `TRACED_USERS_MAX` users
//! are traced at once; a start or restart not every shard took is undone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchboard_shards::home_shard;
use switchboard_shards::limits::TRACED_USERS_MAX;

/// The demo directory's friendships.
const FRIENDS: [(u64, u64); 7] = [(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 6), (5, 6)];

const ADMIN_TOKEN: &str = "trace-test-admin-token-0123456789abcdef";

fn start(name: &str, extra: &[(&str, &str)]) -> Server {
    let dir = temp_dir(name);
    let mut all = vec![
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SWITCHBOARD_RATE_LIMITS", "off"),
    ];
    all.extend_from_slice(extra);
    Server::start(&dir, &all)
}

/// `POST /trace?user=USER&level=LEVEL`: status and JSON.
fn set_trace(server: &Server, user: u64, level: &str) -> (u16, Value) {
    let a = server.admin_call(
        "POST",
        "/trace",
        &[("user", &user.to_string()), ("level", level)],
    );
    let v = serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body));
    (a.status, v)
}

/// `GET /trace?user=USER`: the text, after checking its status and type.
fn read_trace(server: &Server, user: u64) -> String {
    let a = server.admin_call("GET", "/trace", &[("user", &user.to_string())]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain; charset=utf-8")
    );
    a.body
}

/// The lines of `text` that are records (not the `#` head).
fn records(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn send(server: &Server, sid: &str, to: u64, text: &str) {
    let v = server.get(
        "/send",
        &[("sid", sid), ("to", &to.to_string()), ("text", text)],
    );
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_traced_users_trace_holds_their_send_and_its_hops_and_no_one_elses_requests() {
    // Two friends homed on different shards, and a third user, untraced,
    // who chats with a friend of their own meanwhile.
    let (a, b) = FRIENDS
        .into_iter()
        .find(|&(a, b)| home_shard(a, 2) != home_shard(b, 2))
        .expect("the demo has friends on both shards");
    let (c, c_friend) = FRIENDS
        .into_iter()
        .find(|&(x, y)| ![a, b].contains(&x) && ![a, b].contains(&y))
        .expect("a pair of friends who are neither");
    let (home_a, home_b) = (home_shard(a, 2), home_shard(b, 2));
    let server = start("trace-send", &[]);

    let (status, v) = set_trace(&server, a, "debug");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["trace"], "on", "{v}");
    assert_eq!(v["traced"], 1, "{v}");
    let file = server.data_dir.join("traces").join(format!("user-{a}.log"));
    assert_eq!(v["file"], file.display().to_string());
    assert_eq!(v["ends_in_ms"], 600_000, "the default time bound: {v}");

    let ta = server.connect(a, "a");
    let mut tb = server.connect(b, "b");
    let tc = server.connect(c, "c");
    let mut tcf = server.connect(c_friend, "cf");
    send(&server, &ta.sid, b, "hello across shards");
    let got = tb.poll_until(&server, Duration::from_secs(5), |e| !messages(e).is_empty());
    assert_eq!(messages(&got), [(a, "hello across shards".to_string())]);
    send(&server, &tc.sid, c_friend, "not traced");
    tcf.poll_until(&server, Duration::from_secs(5), |e| !messages(e).is_empty());
    // A request that crosses from its conn shard to a's home shard: the
    // kernel spreads connections over the shards, so some poll lands on
    // the other one (each with probability 1/2).
    let start = Instant::now();
    let crossed = |t: &str| {
        t.lines().any(|l| {
            l.contains("poll: ok in ")
                && l.contains("a round trip over the mesh")
                && l.contains(&format!("user={a} "))
        })
    };
    while !crossed(&read_trace(&server, a)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no poll crossed shards"
        );
        let since = ta.seq.to_string();
        server.get(
            "/poll",
            &[("sid", &ta.sid), ("since", &since), ("wait", "0")],
        );
    }

    let text = read_trace(&server, a);
    assert!(
        text.starts_with(&format!("# trace of user {a}: on, ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("# file: {}\n", file.display())),
        "{text}"
    );
    let lines = records(&text);
    let expect = |needle: &str| {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no line with {needle:?} in the trace:\n{text}"
        )
    };
    let me = format!("user={a} ");
    let other = 1 - home_a;
    // The send: its storage job and time, its answer. (The conn shard's
    // `call send` line comes before the home shard checked the sid: it
    // names the user `sid_user=`, and stays out of the trace.)
    assert!(
        !text.contains("call send on conn shard-"),
        "a line from before the sid was checked:\n{text}"
    );
    expect(&format!(
        "storage job store_message submitted {me}shard={home_a}"
    ));
    expect("storage job store_message done in ");
    expect("send: ok in ");
    // Its hop to b's home shard and what became of it there.
    expect(&format!(
        "delivery of a message to user {b}: sent to its home shard-{home_b} (the mesh hop out) \
         {me}shard={home_a}"
    ));
    expect(&format!(
        "delivery of a message to user {b}: arrived from shard-{home_a} (the mesh hop in) \
         {me}shard={home_b}"
    ));
    expect(&format!(
        "delivery of a message to user {b}: appended {me}shard={home_b}"
    ));
    // A request's hop from its conn shard to a's home shard and back,
    // timed at both ends once the home shard accepted the sid (the lines
    // of its way out and in, before that, stay out of the trace).
    expect("poll: ok after ");
    expect(&format!(
        "on this home shard, back to conn shard-{other} {me}shard={home_a}"
    ));
    expect(&format!(
        "(home shard-{home_a}, a round trip over the mesh) {me}shard={other}"
    ));
    // The core's decisions: presence, the tab, b's messages and presence.
    expect(&format!(
        "presence online (session loaded): broadcast to 2 shards {me}"
    ));
    expect(&format!("tab attached (1 now) {me}"));
    expect(&format!("event presence appended at seq 1 (from user {b})"));
    // Every record is about a (the trace's own start line aside).
    for line in &lines {
        assert!(
            line.ends_with(&format!("user={a}"))
                || line.contains(&me)
                || line.contains("trace of user"),
            "a line not about user {a}: {line}\n{text}"
        );
    }
    for other in [c, c_friend] {
        assert!(
            !text.contains(&format!("user={other}")),
            "user {other} in a's trace:\n{text}"
        );
    }
    // The file is the server's own: 0600.
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Off: the trace says so last, and what follows is not recorded.
    let (status, v) = set_trace(&server, a, "off");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["trace"].as_str(), v["traced"].as_u64()),
        (Some("off"), Some(0))
    );
    let sends = |t: &str| {
        records(t)
            .iter()
            .filter(|l| l.contains("send: ok in "))
            .count()
    };
    let before = read_trace(&server, a);
    assert!(
        before.starts_with(&format!("# trace of user {a}: off")),
        "{before}"
    );
    assert!(
        records(&before)
            .last()
            .unwrap()
            .contains("stopped by the admin call (level=off)"),
        "{before}"
    );
    send(&server, &ta.sid, b, "after the trace");
    let after = read_trace(&server, a);
    assert_eq!(sends(&after), sends(&before), "{after}");
    assert_eq!(records(&after).len(), records(&before).len(), "{after}");
}

#[test]
fn traces_end_by_their_time_and_size_bounds() {
    let server = start(
        "trace-bounds",
        &[
            ("SWITCHBOARD_TRACE_MS", "2000"),
            ("SWITCHBOARD_TRACE_BYTES_MAX", "4096"),
        ],
    );
    // The size bound: a few sends of b's fill 4 KiB; the line that would
    // pass it ends the trace instead.
    let (a, b) = (ALICE, BOB);
    assert_eq!(set_trace(&server, b, "debug").0, 200);
    let ta = server.connect(a, "a");
    let tb = server.connect(b, "b");
    let file_b = server.data_dir.join("traces").join(format!("user-{b}.log"));
    let start = Instant::now();
    while !read_trace(&server, b).contains("ended: its size bound (4096 bytes) was reached") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            read_trace(&server, b)
        );
        send(&server, &tb.sid, a, "to fill the trace");
    }
    let size = std::fs::metadata(&file_b).unwrap().len();
    // The records within the bound; the trace's own first and last lines
    // (its start and end) are outside it.
    let text = std::fs::read_to_string(&file_b).unwrap();
    let recorded: usize = text
        .split_inclusive('\n')
        .filter(|l| !l.contains(" switchboard_engine::logger::trace: "))
        .map(str::len)
        .sum();
    assert!(recorded <= 4096, "{recorded} bytes of records:\n{text}");
    send(&server, &tb.sid, a, "not recorded");
    assert_eq!(std::fs::metadata(&file_b).unwrap().len(), size);
    assert!(read_trace(&server, b).starts_with(&format!("# trace of user {b}: off")));

    // The time bound: 2 s after it started, a's trace ends by itself.
    // Taken before the call: the trace starts after it, so it cannot
    // have ended before 2 s from here.
    let asked = Instant::now();
    let (status, v) = set_trace(&server, a, "debug");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ends_in_ms"], 2000, "{v}");
    send(&server, &ta.sid, b, "recorded");
    let start = Instant::now();
    while !read_trace(&server, a).contains("ended: its time bound (2000 ms) passed") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            read_trace(&server, a)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(asked.elapsed() >= Duration::from_millis(2_000));
    let file_a = server.data_dir.join("traces").join(format!("user-{a}.log"));
    let size = std::fs::metadata(&file_a).unwrap().len();
    send(&server, &ta.sid, b, "not recorded");
    assert_eq!(std::fs::metadata(&file_a).unwrap().len(), size);
}

#[test]
fn at_most_eight_traces_run_at_once_and_one_started_again_keeps_its_file() {
    // The default time bound (10 min): none ends while the eleven admin
    // calls below run, however slow the machine.
    let server = start("trace-eight", &[]);
    // At most TRACED_USERS_MAX at once; one more is refused, clearly.
    let users: Vec<u64> = (100..100 + TRACED_USERS_MAX as u64).collect();
    for (i, &u) in users.iter().enumerate() {
        let (status, v) = set_trace(&server, u, "debug");
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["traced"], i as u64 + 1, "{v}");
    }
    let (status, v) = set_trace(&server, 999, "debug");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "unavailable");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("8 users are traced already"), "{message}");
    assert_eq!(set_trace(&server, users[0], "off").0, 200);
    assert_eq!(set_trace(&server, 999, "debug").0, 200);
    // Started again, a trace keeps its file and restarts its time bound.
    let (status, v) = set_trace(&server, 999, "debug");
    assert_eq!((status, v["traced"].as_u64()), (200, Some(8)), "{v}");
    assert!(read_trace(&server, 999).contains("trace of user 999 started again"));
}

#[test]
fn trace_calls_answer_clear_errors() {
    let server = start("trace-errors", &[]);
    // Never traced: no file.
    let a = server.admin_call("GET", "/trace", &[("user", "5")]);
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(a.body.contains("\"not_found\""), "{}", a.body);
    assert!(a.body.contains("no trace file at"), "{}", a.body);
    for (method, params, status, needle) in [
        ("GET", &[][..], 400, "`user`"),
        ("POST", &[("user", "5")][..], 400, "`level`"),
        (
            "POST",
            &[("user", "5"), ("level", "trace")][..],
            400,
            "`level`",
        ),
        (
            "POST",
            &[("user", "0"), ("level", "debug")][..],
            400,
            "`user`",
        ),
    ] {
        let a = server.admin_call(method, "/trace", params);
        assert_eq!(a.status, status, "{method} {params:?}: {}", a.body);
        assert!(a.body.contains(needle), "{method} {params:?}: {}", a.body);
    }
    // Off for a user never traced: nothing to stop, answered all the same.
    let (status, v) = set_trace(&server, 5, "off");
    assert_eq!((status, v["trace"].as_str()), (200, Some("off")), "{v}");
    // Without the admin token: refused before anything.
    let r = request(
        server.admin,
        &format!(
            "POST /trace?user=5&level=debug HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            server.admin
        ),
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!server.data_dir.join("traces").join("user-5.log").exists());
}

/// Blocks shard-1's executor for the `SWITCHBOARD_FAULT_STALL_SHARD_MS`
/// the server was started with: a connect of `ALICE` (the stall user)
/// blocks its conn shard, which the kernel picks, so this tries until the
/// connect lands on shard-1 (waiting out each stall of shard-0). The
/// connect's thread, done when the stall ends.
fn stall_shard_1(server: &Server) -> std::thread::JoinHandle<()> {
    for _ in 0..12 {
        let before = server.log_lines("blocks shard-").len();
        let (addr, target) = (
            server.addr,
            format!("/connect?{}", encode(&[("token", &token(ALICE))])),
        );
        let connect = std::thread::spawn(move || {
            request(
                addr,
                &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            );
        });
        eventually(Duration::from_secs(20), "the stall", || {
            server.log_lines("blocks shard-").len() > before
        });
        let stalled = server.log_lines("blocks shard-");
        if stalled.last().unwrap().contains("blocks shard-1 ") {
            return connect;
        }
        connect.join().unwrap();
    }
    panic!("12 connects in a row landed on shard-0");
}

#[test]
fn a_trace_start_that_a_shard_does_not_take_is_undone_and_a_restart_keeps_the_running_trace() {
    // The admin listener is on shard-0; shard-1 is stalled 8 s, so it
    // takes no new set within `TRACE_ACK_TIMEOUT_MS` (1 s).
    let server = start(
        "trace-undo",
        &[
            ("SWITCHBOARD_TRACE_MS", "60000"),
            ("SWITCHBOARD_FAULT_STALL_SHARD_USER", "1"),
            ("SWITCHBOARD_FAULT_STALL_SHARD_MS", "8000"),
            ("SWITCHBOARD_FAULT_SHARD_STALL_MS_MAX", "60000"),
        ],
    );
    let (running, new) = (5, 6);
    let (status, v) = set_trace(&server, running, "debug");
    assert_eq!(status, 200, "{v}");
    let started_by = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let stall = stall_shard_1(&server);

    // A restart not taken: the running trace keeps its bounds.
    let (status, v) = set_trace(&server, running, "debug");
    assert_eq!(status, 503, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("shard-1 did not take the trace")
            && message.contains("not started again (the running trace keeps its bounds)"),
        "{message}"
    );
    // A new trace not taken: not started.
    let (status, v) = set_trace(&server, new, "debug");
    assert_eq!(status, 503, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(": not started, try again"), "{message}");
    stall.join().unwrap();

    let asked = Instant::now();
    let text = read_trace(&server, running);
    assert!(
        text.starts_with(&format!("# trace of user {running}: on, ")),
        "the failed restart stopped the trace:\n{text}"
    );
    assert!(text.contains("as before"), "{text}");
    let ends_s: u64 = text
        .split("ends in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let left_ms = 60_000 - asked.duration_since(started_by).as_millis() as u64;
    assert!(
        ends_s <= left_ms.div_ceil(1_000),
        "ends in {ends_s} s: the time bound was restarted, not kept ({left_ms} ms left)"
    );
    let text = read_trace(&server, new);
    assert!(
        text.starts_with(&format!("# trace of user {new}: off")),
        "{text}"
    );
    assert!(text.contains("ended: not started after all"), "{text}");
    assert_eq!(set_trace(&server, new, "debug").0, 200);
}

#[test]
fn a_forged_sid_of_a_traced_user_writes_nothing_into_their_trace() {
    let server = start("trace-forged", &[]);
    let victim = ALICE;
    let (status, v) = set_trace(&server, victim, "debug");
    assert_eq!(status, 200, "{v}");
    // The victim is online (their session live on its home shard), and
    // their trace has settled.
    let tab = server.connect(victim, "a");
    send(&server, &tab.sid, BOB, "genuine");
    let mut before = read_trace(&server, victim);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let again = read_trace(&server, victim);
        if records(&again) == records(&before) {
            break;
        }
        before = again;
    }
    assert!(records(&before).iter().any(|l| l.contains("send: ok in ")));
    // Anyone can write `1-...` in a sid. Each call on a connection of its
    // own, so the kernel puts some on each shard (some cross the mesh).
    let forged = format!("{victim}-0123456789abcdef0123456789abcdef");
    for _ in 0..6 {
        for (path, params) in [
            ("/poll", &[("since", "0"), ("wait", "0")][..]),
            ("/send", &[("to", "2"), ("text", "forged")][..]),
            ("/typing", &[("to", "2"), ("state", "typing")][..]),
            ("/presence", &[("status", "away")][..]),
            ("/leave", &[][..]),
        ] {
            let mut all = vec![("sid", forged.as_str())];
            all.extend_from_slice(params);
            let v = server.get(path, &all);
            assert_eq!(v["error"]["code"], "unknown_session", "{path}: {v}");
        }
    }
    let after = read_trace(&server, victim);
    assert_eq!(
        records(&after),
        records(&before),
        "a forged sid wrote into the trace:\n{after}"
    );
    assert!(after.starts_with(&format!("# trace of user {victim}: on, ")));
}
