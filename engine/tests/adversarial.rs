//! Attacks on the real binary over real sockets, two shards: what an
//! attacker on the open internet (or a web page in a victim's browser) can
//! send, and what they get. Each test ends its attack in the documented
//! error, and a pair of other users (alice and bob, friends) keeps chatting
//! during and after it: a message each way, seen by the other's poll.
//! docs/security.md lists which test backs which claim.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Alice and bob, friends on different shards' worth of ids, each with a
/// tab: the pair that keeps chatting through every attack.
struct Pair {
    alice: Tab,
    bob: Tab,
    /// Messages sent so far (each text is unique).
    sent: u32,
}

impl Pair {
    fn new(server: &Server) -> Pair {
        Pair {
            alice: server.connect(ALICE, "pair"),
            bob: server.connect(BOB, "pair"),
            sent: 0,
        }
    }

    /// A message each way, each seen by the other's poll within 10 s.
    fn round_trip(&mut self, server: &Server) {
        for (from, to) in [(ALICE, BOB), (BOB, ALICE)] {
            self.sent += 1;
            let text = format!("still here {}", self.sent);
            let (sender, receiver) = match from {
                ALICE => (&self.alice, &mut self.bob),
                _ => (&self.bob, &mut self.alice),
            };
            let v = server.get(
                "/send",
                &[
                    ("sid", &sender.sid),
                    ("to", &to.to_string()),
                    ("text", &text),
                ],
            );
            assert_eq!(v["ok"], true, "send {from} -> {to}: {v}");
            receiver.poll_until(server, Duration::from_secs(10), |events| {
                messages(events).contains(&(from, text.clone()))
            });
        }
    }
}

/// A raw request to the admin listener with these extra header lines.
fn admin_request(server: &Server, line: &str, host: &str, extra: &str) -> Answer {
    request(
        server.admin,
        &format!("{line} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"),
    )
}

/// The error code of a JSON failure body.
fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

// ---------------------------------------------------------------- admin --

/// A page in the operator's browser (or a DNS-rebinding page) cannot use
/// the admin listener: any `Origin` or `Sec-Fetch-Site` is 403, so is a
/// `Host` that is not the listener's own; no answer carries CORS headers.
#[test]
fn admin_refuses_browsers_and_foreign_hosts() {
    let dir = temp_dir("adv-admin");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let mut carol = server.connect(CAROL, "victim");
    let own = server.admin.to_string();
    let localhost = format!("localhost:{}", server.admin.port());
    let rebound = format!("attacker.example:{}", server.admin.port());

    let refused = [
        (
            "POST /kick?user=3",
            own.as_str(),
            "Origin: http://attacker.example\r\n",
        ),
        ("POST /kick?user=3", own.as_str(), "Origin: null\r\n"),
        (
            "POST /kick?user=3",
            own.as_str(),
            "Sec-Fetch-Site: cross-site\r\n",
        ),
        ("POST /kick?user=3", rebound.as_str(), ""),
        ("POST /roster-changed?user=3", rebound.as_str(), ""),
        ("GET /health", rebound.as_str(), ""),
        ("GET /metrics", own.as_str(), "Origin: http://localhost\r\n"),
        ("GET /nope", rebound.as_str(), ""),
    ];
    for (line, host, extra) in refused {
        let a = admin_request(&server, line, host, extra);
        assert_eq!(
            (a.status, code(&a.body)),
            (403, "forbidden".into()),
            "{line} {host} {extra:?}"
        );
        assert!(
            !a.headers.contains_key("access-control-allow-origin"),
            "{line}"
        );
        pair.round_trip(&server);
    }
    // None of the kicks happened: carol's tab is still attached.
    carol.poll(&server, 0);

    for host in [own.as_str(), localhost.as_str()] {
        let a = admin_request(&server, "GET /health", host, "");
        assert_eq!(a.status, 200, "{host}: {}", a.body);
        assert!(!a.headers.contains_key("access-control-allow-origin"));
        assert_eq!(a.headers["x-content-type-options"], "nosniff");
    }
    let (status, _) = server.admin_post("/kick", &[("user", "3")]);
    assert_eq!(status, 200);
    let v = server.get(
        "/poll",
        &[("sid", &carol.sid), ("since", "0"), ("wait", "0")],
    );
    assert_eq!(v["error"]["code"], "unknown_session", "{v}");
    pair.round_trip(&server);
}

/// An admin listener off loopback without a token: the server refuses to
/// start, says why, and exits 2. With a token it starts and asks for it.
#[test]
fn admin_off_loopback_needs_a_token() {
    let dir = temp_dir("adv-admin-token");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .envs([
            ("SWITCHBOARD_LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD_ADMIN_LISTEN", "0.0.0.0:0"),
            ("SWITCHBOARD_DATA_DIR", dir.to_str().unwrap()),
            ("SWITCHBOARD_TOKEN_SECRET", SECRET),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SWITCHBOARD_ADMIN_TOKEN is required"),
        "{stderr}"
    );

    let server = Server::start(
        &dir,
        &[
            ("SWITCHBOARD_ADMIN_LISTEN", "0.0.0.0:0"),
            (
                "SWITCHBOARD_ADMIN_TOKEN",
                "a-long-random-admin-token-32-bytes",
            ),
        ],
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], server.admin.port()));
    let host = admin.to_string();
    let ask = |auth: &str| {
        request(
            admin,
            &format!("GET /health HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"),
        )
    };
    assert_eq!(ask("").status, 401);
    assert_eq!(
        ask("Authorization: Bearer a-long-random-admin-token-32-byte\r\n").status,
        401
    );
    assert_eq!(
        ask("Authorization: Bearer a-long-random-admin-token-32-bytes\r\n").status,
        200
    );
    let mut pair = Pair::new(&server);
    pair.round_trip(&server);
}

// ---------------------------------------------------------------- files --

/// Another local user can read nothing the server keeps in the data
/// folder: the folder and its files (the store, the token secret, the
/// lock) have no group or other bits, whatever the umask; looser modes
/// left from before are tightened at start, and each change is logged.
/// Files that are not the server's are left as they are, with a warning.
#[test]
fn data_folder_is_private_to_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let dir = temp_dir("adv-files");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = dir.join("old-export.json");
    std::fs::write(&old, b"{}").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(&dir, &[]);
    for line in [
        format!("{} was mode 755, now 700", dir.display()),
        format!("{} is mode 644, open to group or others", old.display()),
    ] {
        eventually(Duration::from_secs(5), "the change is logged", || {
            !server.log_lines(&line).is_empty()
        });
    }
    assert_eq!(mode(&old), 0o644, "not the server's: left as it is");
    let mut env = server.env.clone();
    drop(server);
    // Again with the generated token secret, kept in the folder.
    env.retain(|(k, _)| k != "SWITCHBOARD_TOKEN_SECRET");
    let server = Server::start_env(&dir, env);
    assert_eq!(mode(&dir), 0o700);
    for name in ["switchboard.redb", "switchboard.lock", "token_secret"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "old-export.json")
        .collect();
    for name in &names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name} in {names:?}");
    }
    assert!(
        server.log_lines("was mode").is_empty(),
        "nothing left to tighten"
    );
}

// ---------------------------------------------------------------- http --

/// Sends `raw` on a fresh connection; the answer, and whether the server
/// then closed (a second answer never comes).
fn raw(server: &Server, bytes: &[u8]) -> Answer {
    request_bytes(server.addr, bytes)
}

/// Request smuggling: every shape two HTTP parsers could read differently
/// is refused with 400 and the connection closed, so nothing after it is
/// read as a request; bare LF line ends are read one way only (as line
/// ends, like CRLF), so a bare-LF request is just a request.
#[test]
fn request_smuggling_shapes_are_refused() {
    let dir = temp_dir("adv-smuggle");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let smuggled = "GET /ping?callback=smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let shapes: &[(&str, String)] = &[
        (
            "CL and TE",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE and CL",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "duplicate Content-Length, equal",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{smuggled}"),
        ),
        (
            "duplicate Content-Length, different",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 48\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length list",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 48\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Content-Length: 48\r\n\r\n{smuggled}"),
        ),
        (
            "folded Transfer-Encoding",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE with another coding",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "space before the colon",
            format!("POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length : 48\r\n\r\n{smuggled}"),
        ),
        (
            "bare CR",
            format!("POST /ping HTTP/1.1\r\nHost: x\rContent-Length: 48\r\n\r\n{smuggled}"),
        ),
        (
            "two Hosts",
            format!("GET /ping HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n{smuggled}"),
        ),
    ];
    for (what, bytes) in shapes {
        let a = raw(&server, bytes.as_bytes());
        assert_eq!(
            (a.status, code(&a.body)),
            (400, "bad_request".into()),
            "{what}"
        );
        assert!(a.closed, "{what}: the connection must close after the 400");
        pair.round_trip(&server);
    }
    // Bare LF: one request, answered; the next one on the connection is
    // the next request, nothing hidden in between.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /ping?callback=one HTTP/1.1\nHost: x\n\nGET /ping?callback=two HTTP/1.1\nHost: x\nConnection: close\n\n")
        .unwrap();
    let mut buf = Vec::new();
    let one = read_answer_from(&mut s, &mut buf);
    let two = read_answer_from(&mut s, &mut buf);
    assert!(one.body.starts_with("/**/one("), "{}", one.body);
    assert!(two.body.starts_with("/**/two("), "{}", two.body);
    pair.round_trip(&server);
}

/// Slowloris: connections that dribble a head, or a body, one byte at a
/// time never hold the server: each gets 408 at its deadline counted from
/// the head's first byte (10 s) or the head's end (30 s), however often a
/// byte arrives, and other users chat all along.
#[test]
fn slowloris_head_and_body_end_in_408() {
    let dir = temp_dir("adv-slowloris");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let addr = server.addr;
    let dribble = |start: &'static [u8], then: u8| {
        std::thread::spawn(move || {
            let began = Instant::now();
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s.write_all(start).unwrap();
            let mut answer = Vec::new();
            let mut tmp = [0u8; 4096];
            // A byte every 500 ms until the server answers (or 45 s).
            while began.elapsed() < Duration::from_secs(45) {
                if s.write_all(&[then]).is_err() {
                    break;
                }
                match s.read(&mut tmp) {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&tmp[..n]),
                    Err(_) => {}
                }
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            (
                began.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        })
    };
    let heads: Vec<_> = (0..20).map(|_| dribble(b"GET /ping?x=", b'a')).collect();
    let bodies: Vec<_> = (0..20)
        .map(|_| {
            dribble(
                b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n",
                b'a',
            )
        })
        .collect();
    let during = Instant::now();
    while during.elapsed() < Duration::from_secs(12) {
        pair.round_trip(&server);
        std::thread::sleep(Duration::from_millis(500));
    }
    for (kind, threads, deadline_s) in [("head", heads, 10), ("body", bodies, 30)] {
        for t in threads {
            let (took, answer) = t.join().unwrap();
            assert!(answer.starts_with("HTTP/1.1 408 "), "{kind}: {answer:?}");
            assert!(
                took >= Duration::from_secs(deadline_s)
                    && took < Duration::from_secs(deadline_s + 5),
                "{kind}: answered after {took:?}"
            );
        }
    }
    pair.round_trip(&server);
}

/// The sum over shards of `/health`'s `sessions`.
fn sessions(server: &Server) -> u64 {
    let host = server.admin.to_string();
    let a = request(
        server.admin,
        &format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    let v: Value = serde_json::from_str(&a.body).unwrap();
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessions"].as_u64().unwrap())
        .sum()
}

/// A flood of forged tokens: every one is 401 `unauthorized`, decided by
/// the HMAC check alone (no session is loaded for any user they name, so
/// no storage job ran), and other users keep chatting.
#[test]
fn forged_token_flood_is_401_and_costs_no_storage() {
    let dir = temp_dir("adv-forged");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let before = sessions(&server);
    assert_eq!(before, 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let genuine = token(CAROL);
    let sig = genuine.rsplit('.').next().unwrap().to_string();
    let mut forged = Vec::new();
    for i in 0..200u64 {
        let user = 3 + i % 4;
        forged.push(match i % 5 {
            // Another user's signature, a later expiry.
            0 => format!("{user}.{}.{sig}", now + 86_400 + 1 + i),
            // Signed under another secret.
            1 => switchboard_storage::token::mint(b"guessed-secret", user, now + 3600),
            // Expired (genuine).
            2 => switchboard_storage::token::mint(SECRET.as_bytes(), user, now - 1 - i),
            // Non-canonical user id over a genuine-looking signature.
            3 => format!("0{user}.{}.{sig}", now + 86_400),
            // Junk.
            _ => format!("{user}.{i}"),
        });
    }
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    for (i, t) in forged.iter().enumerate() {
        s.write_all(
            format!("GET /connect?token={} HTTP/1.1\r\nHost: x\r\n\r\n", pct(t)).as_bytes(),
        )
        .unwrap();
        let a = read_answer_from(&mut s, &mut buf);
        assert_eq!(
            (a.status, code(&a.body)),
            (401, "unauthorized".into()),
            "{t}"
        );
        if i % 50 == 0 {
            pair.round_trip(&server);
        }
    }
    assert_eq!(sessions(&server), before, "a forged token loaded a session");
    pair.round_trip(&server);
    // The genuine token still works.
    let v = server.get("/connect", &[("token", &genuine)]);
    assert_eq!(v["ok"], true, "{v}");
}

// ----------------------------------------------------------- identity --

/// A sid answers only as its own user, whatever the other parameters say;
/// a sid with another user's id, a wrong secret or a non-canonical user
/// id is `unknown_session`.
#[test]
fn a_sid_answers_only_as_its_owner() {
    let dir = temp_dir("adv-sid");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let carol = server.connect(CAROL, "c");
    let (user, secret) = carol.sid.split_once('-').unwrap();
    assert_eq!(user, "3");
    // Carol's sid with bob's id in the params: sent as carol.
    let v = server.get(
        "/send",
        &[
            ("sid", &carol.sid),
            ("to", "2"),
            ("text", "from carol"),
            ("user", "2"),
            ("from", "2"),
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
    let events = pair.bob.poll_until(&server, Duration::from_secs(10), |e| {
        messages(e).iter().any(|(_, t)| t == "from carol")
    });
    assert!(messages(&events).contains(&(CAROL, "from carol".into())));
    // Carol's secret under another user id, a wrong secret, leading zeros.
    let mut wrong = secret.as_bytes().to_vec();
    wrong[31] = if wrong[31] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for sid in [
        format!("2-{secret}"),
        format!("1-{secret}"),
        format!("3-{wrong}"),
        format!("03-{secret}"),
        format!("+3-{secret}"),
        format!("3-{}", secret.to_uppercase()),
        format!("3-{secret}0"),
    ] {
        let v = server.get("/poll", &[("sid", &sid), ("since", "0"), ("wait", "0")]);
        assert_eq!(v["error"]["code"], "unknown_session", "{sid}: {v}");
        let v = server.get("/send", &[("sid", &sid), ("to", "1"), ("text", "x")]);
        assert_eq!(v["error"]["code"], "unknown_session", "{sid}: {v}");
    }
    pair.round_trip(&server);
}

/// Another user's conversation: `/history` is always the caller's own
/// conversation with `with`. A stranger's (never a friend) is empty; the
/// conversation of two other users is never reachable.
#[test]
fn history_is_only_the_callers_own_conversation() {
    let dir = temp_dir("adv-history");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    pair.round_trip(&server);
    // Bob and carol are friends and chat; dave is a stranger to alice.
    let bob2 = server.connect(BOB, "b2");
    let v = server.get(
        "/send",
        &[("sid", &bob2.sid), ("to", "3"), ("text", "bob to carol")],
    );
    assert_eq!(v["ok"], true, "{v}");
    let history = |with: &str| server.get("/history", &[("sid", &pair.alice.sid), ("with", with)]);
    let v = history("4");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 0, "{v}");
    let v = history("3");
    assert_eq!(v["ok"], true, "{v}");
    assert!(!v.to_string().contains("bob to carol"), "{v}");
    let v = history("2");
    let texts: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["still here 1", "still here 2"], "{v}");
    // Sending to a stranger is refused.
    let v = server.get(
        "/send",
        &[("sid", &pair.alice.sid), ("to", "4"), ("text", "hi")],
    );
    assert_eq!(v["error"]["code"], "not_friends", "{v}");
    pair.round_trip(&server);
}

/// A sid is dead after its tab leaves and after a kick: every call with
/// it is `unknown_session`; the token connects again.
#[test]
fn a_sid_is_dead_after_leave_and_after_kick() {
    let dir = temp_dir("adv-reuse");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let dead = |sid: &str| {
        for (path, params) in [
            ("/poll", vec![("sid", sid), ("since", "0"), ("wait", "0")]),
            ("/send", vec![("sid", sid), ("to", "1"), ("text", "ghost")]),
            ("/history", vec![("sid", sid), ("with", "1")]),
            ("/leave", vec![("sid", sid)]),
        ] {
            let v = server.get(path, &params);
            assert_eq!(v["error"]["code"], "unknown_session", "{path}: {v}");
        }
    };
    let left = server.connect(CAROL, "left");
    let v = server.get("/leave", &[("sid", &left.sid)]);
    assert_eq!(v["ok"], true, "{v}");
    dead(&left.sid);
    pair.round_trip(&server);
    let kicked = server.connect(CAROL, "kicked");
    let (status, _) = server.admin_post("/kick", &[("user", "3")]);
    assert_eq!(status, 200);
    dead(&kicked.sid);
    pair.round_trip(&server);
    let again = server.connect(CAROL, "kicked");
    assert_ne!(again.sid, kicked.sid);
    dead(&kicked.sid);
}

/// A token only opens a session: a tab lives on after its token expires
/// (until it leaves, times out, is replaced or kicked), and the expired
/// token connects no new tab.
#[test]
fn token_expiry_gates_connect_not_live_tabs() {
    let dir = temp_dir("adv-expiry");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = switchboard_storage::token::mint(SECRET.as_bytes(), CAROL, now + 2);
    let v = server.get("/connect", &[("token", &short)]);
    assert_eq!(v["ok"], true, "{v}");
    let mut carol = Tab {
        sid: v["sid"].as_str().unwrap().to_string(),
        seq: v["seq"].as_u64().unwrap(),
        connect: v,
    };
    // Past the expiry (the poll keeps the tab attached meanwhile).
    carol.poll(&server, 3);
    let v = server.get(
        "/send",
        &[("sid", &carol.sid), ("to", "2"), ("text", "after expiry")],
    );
    assert_eq!(v["ok"], true, "{v}");
    carol.poll(&server, 0);
    let v = server.get("/connect", &[("token", &short)]);
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    let (status, _) = server.admin_post("/kick", &[("user", "3")]);
    assert_eq!(status, 200);
    let v = server.get(
        "/poll",
        &[("sid", &carol.sid), ("since", "0"), ("wait", "0")],
    );
    assert_eq!(v["error"]["code"], "unknown_session", "{v}");
    pair.round_trip(&server);
}

// ------------------------------------------------------------ oversize --

/// Everything over its limit ends in its documented error: request line
/// 414, header section 431, body 413 (each closing the connection), text
/// `too_large`, cid, tab and callback `bad_request`; others keep chatting.
#[test]
fn oversized_everything_ends_in_its_documented_error() {
    use switchboard_io::limits::*;
    let dir = temp_dir("adv-oversize");
    let server = Server::start(&dir, &[]);
    let mut pair = Pair::new(&server);
    let sid = pair.alice.sid.clone();

    let line = format!(
        "GET /ping?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(REQUEST_LINE_BYTES_MAX)
    );
    let headers = format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(HEADER_SECTION_BYTES_MAX)
    );
    let many = format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..HEADERS_COUNT_MAX)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let body = format!(
        "POST /send?sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        BODY_BYTES_MAX + 1
    );
    let chunked = format!(
        "POST /send?sid={sid} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        BODY_BYTES_MAX + 1,
        "a".repeat(BODY_BYTES_MAX + 1)
    );
    for (what, bytes, status) in [
        ("request line", line, 414),
        ("header section", headers, 431),
        ("header count", many, 431),
        ("declared body", body, 413),
        ("chunked body", chunked, 413),
    ] {
        let a = raw(&server, bytes.as_bytes());
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert!(a.closed, "{what}: closed after the answer");
        pair.round_trip(&server);
    }

    let over = |n: usize| "a".repeat(n + 1);
    /// A call: path, parameters, status and error code expected.
    type Oversized<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);
    let calls: Vec<Oversized> = vec![
        (
            "/send",
            vec![
                ("sid", sid.clone()),
                ("to", "2".into()),
                ("text", over(TEXT_CHARS_MAX)),
            ],
            413,
            "too_large",
        ),
        (
            "/send",
            vec![
                ("sid", sid.clone()),
                ("to", "2".into()),
                ("text", "x".into()),
                ("cid", over(CID_CHARS_MAX)),
            ],
            400,
            "bad_request",
        ),
        (
            "/ui",
            vec![
                ("sid", sid.clone()),
                (
                    "state",
                    format!("{{\"k\":\"{}\"}}", over(UI_STATE_BYTES_MAX)),
                ),
            ],
            413,
            "too_large",
        ),
        (
            "/connect",
            vec![("token", token(CAROL)), ("tab", over(TAB_CHARS_MAX))],
            400,
            "bad_request",
        ),
        (
            "/ping",
            vec![("callback", over(CALLBACK_BYTES_MAX))],
            400,
            "bad_request",
        ),
        (
            "/poll",
            vec![("sid", format!("{sid}{}", over(64))), ("since", "0".into())],
            401,
            "unknown_session",
        ),
    ];
    for (path, params, status, want) in calls {
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (got, body) = server.get_status(path, &params);
        assert_eq!(
            (got, code(&body)),
            (status, want.to_string()),
            "{path}: {body}"
        );
        pair.round_trip(&server);
    }
}

// ---------------------------------------------------------------- logs --

/// Even at the trace level, the log holds no token, no sid secret and no
/// message text.
#[test]
fn trace_log_holds_no_token_sid_or_text() {
    let dir = temp_dir("adv-logs");
    let server = Server::start(&dir, &[("SWITCHBOARD_LOG", "trace")]);
    let mut pair = Pair::new(&server);
    pair.round_trip(&server);
    let carol_token = token(CAROL);
    let carol = server.connect(CAROL, "logged");
    let text = "a very private sentence";
    let v = server.get(
        "/send",
        &[
            ("sid", &carol.sid),
            ("to", "2"),
            ("text", text),
            ("cid", "private-cid"),
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
    server.get(
        "/ui",
        &[("sid", &carol.sid), ("state", "{\"private\":\"layout\"}")],
    );
    server.get("/connect", &[("token", &format!("{carol_token}x"))]);
    pair.round_trip(&server);
    eventually(Duration::from_secs(5), "the log has debug lines", || {
        !server.log_lines("call send").is_empty()
    });
    let sig = carol_token.rsplit('.').next().unwrap();
    let secret = carol.sid.split_once('-').unwrap().1;
    for leak in [
        sig,
        secret,
        text,
        "private-cid",
        "private\\\"",
        "layout",
        "still here",
    ] {
        assert!(
            server.log_lines(leak).is_empty(),
            "the log holds {leak:?}: {:?}",
            server.log_lines(leak)
        );
    }
    for tab in [&pair.alice, &pair.bob] {
        let secret = tab.sid.split_once('-').unwrap().1;
        assert!(server.log_lines(secret).is_empty());
    }
}
