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
            ("SWITCHBOARD_ADMIN_TOKEN", "a-long-random-admin-token"),
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
        ask("Authorization: Bearer a-long-random-admin-toke\r\n").status,
        401
    );
    assert_eq!(
        ask("Authorization: Bearer a-long-random-admin-token\r\n").status,
        200
    );
    let mut pair = Pair::new(&server);
    pair.round_trip(&server);
}

// ---------------------------------------------------------------- files --

/// Another local user can read nothing in the data folder: it is 0700 and
/// every file in it 0600 (the store, the token secret, the lock), whatever
/// the umask; looser modes left from before are tightened at start, and
/// each change is logged.
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
    for (what, from) in [(&dir, "755, now 700"), (&old, "644, now 600")] {
        let line = format!("{} was mode {from}", what.display());
        eventually(Duration::from_secs(5), "the change is logged", || {
            !server.log_lines(&line).is_empty()
        });
    }
    let mut env = server.env.clone();
    drop(server);
    // Again with the generated token secret, kept in the folder.
    env.retain(|(k, _)| k != "SWITCHBOARD_TOKEN_SECRET");
    let server = Server::start_env(&dir, env);
    assert_eq!(mode(&dir), 0o700);
    for name in [
        "old-export.json",
        "switchboard.redb",
        "switchboard.lock",
        "token_secret",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name} in {names:?}");
    }
    assert!(
        server.log_lines("was mode").is_empty(),
        "nothing left to tighten"
    );
}
