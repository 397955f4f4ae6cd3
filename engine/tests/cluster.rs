//! Cluster mode, as far as it is built (issue 15): the `switchboard
//! cluster` command against a real NATS with JetStream (127.0.0.1:4222,
//! or `SWITCHBOARD_TEST_NATS_URL`), nodes joining with their heartbeats,
//! and the refusals. Each test uses a cluster name of its own, so its KV
//! buckets are its own.
//!
//! Without a reachable NATS these tests are skipped with a banner, and
//! fail under `CI=true`, as the MySQL tests do.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn nats_url() -> String {
    std::env::var("SWITCHBOARD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Whether NATS answers; panics under CI=true when it does not.
fn nats_or_skip(test: &str) -> bool {
    use std::net::ToSocketAddrs;
    let url = nats_url();
    let addr = url.trim_start_matches("nats://");
    let up = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    if !up {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true: the cluster tests must run, but NATS is not reachable at {url}");
        }
        eprintln!("!! SKIPPED {test}: no NATS at {url} (start nats-server -js, see .ci/run)");
    }
    up
}

/// A cluster name no other test (or run) uses.
fn cluster_name(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{}_{}_{nanos}", test, std::process::id())
        .chars()
        .take(32)
        .collect()
}

/// `switchboard cluster ARGS` for `cluster`: (exit code, stdout, stderr).
fn cli(cluster: &str, args: &[&str]) -> (i32, String, String) {
    cli_at(&nats_url(), cluster, args)
}

/// `switchboard cluster ARGS` for `cluster` on the NATS at `url`: (exit
/// code, stdout, stderr).
fn cli_at(url: &str, cluster: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("cluster")
        .args(args)
        .env_clear()
        .env("SWITCHBOARD_NATS_URL", url)
        .env("SWITCHBOARD_CLUSTER", cluster)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `status` line of `node`, split on tabs.
fn status_of(cluster: &str, node: &str) -> Option<Vec<String>> {
    status_at(&nats_url(), cluster, node)
}

/// The `status` line of `node` on the NATS at `url`, split on tabs.
fn status_at(url: &str, cluster: &str, node: &str) -> Option<Vec<String>> {
    let (code, out, err) = cli_at(url, cluster, &["status"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f[0] == node)
}

#[test]
fn the_cluster_command_places_virtual_shards_and_moves_only_what_a_change_must() {
    if !nats_or_skip("cluster command") {
        return;
    }
    let c = cluster_name("cmd");
    let (code, out, err) = cli(&c, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no placement yet"), "{out}");

    let (code, out, err) = cli(&c, &["init", "c", "a", "b"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("256 virtual shards over a 86, b 85, c 85"),
        "{out}"
    );
    // A second init would throw the first away: refused.
    let (code, _, err) = cli(&c, &["init", "a"]);
    assert_eq!(code, 2);
    assert!(err.contains("exists already"), "{err}");

    // A new node takes 256/4 = 64, each from the fullest node, nothing else moves.
    let (code, out, err) = cli(&c, &["add", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": 64 virtual shards moved ("), "{out}");
    assert!(out.contains("now a 64, b 64, c 64, d 64"), "{out}");
    for from in ["a", "b", "c"] {
        assert!(out.contains(&format!("{from}->d")), "{out}");
    }
    assert!(
        !out.contains("->a") && !out.contains("->b") && !out.contains("->c"),
        "{out}"
    );

    // A node leaving gives only its own away.
    let (code, out, err) = cli(&c, &["remove", "b"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": 64 virtual shards moved ("), "{out}");
    assert!(out.contains("now a 86, c 85, d 85"), "{out}");
    assert!(
        !out.contains("a->") && !out.contains("c->") && !out.contains("d->"),
        "{out}"
    );

    // Refusals, each with its reason and nothing written.
    for (args, why) in [
        (&["add", "a"][..], "already in the placement"),
        (&["remove", "b"][..], "not in the placement"),
        (&["add", "x.y"][..], "is not 1-32"),
        (&["add"][..], "takes one node id"),
        (&["frobnicate"][..], "usage:"),
    ] {
        let (code, _, err) = cli(&c, args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let (code, out, _) = cli(&c, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("placement revision 3, 3 nodes"), "{out}");
    assert_eq!(status_of(&c, "a").unwrap()[1], "86");
    assert_eq!(status_of(&c, "a").unwrap()[2], "no", "no node a runs");

    // Forgotten: both buckets gone, so the cluster starts from nothing.
    let (code, out, err) = cli(&c, &["forget"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("forgotten"), "{out}");
    let (code, out, err) = cli(&c, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no placement yet"), "{out}");
    assert!(
        out.contains("no node has joined"),
        "looking made no buckets: {out}"
    );
}

#[test]
fn a_node_heartbeats_leaves_on_a_stop_and_drops_out_when_killed() {
    if !nats_or_skip("node heartbeat") {
        return;
    }
    let Some(db) = MysqlDb::create_or_skip("cluster_heartbeat") else {
        return;
    };
    let c = cluster_name("beat");
    let (code, _, err) = cli(&c, &["init", "n1", "n2"]);
    assert_eq!(code, 0, "{err}");
    let url = nats_url();
    let start = |node: &str, dir: &str| {
        Server::start(
            &temp_dir(dir),
            &[
                ("SWITCHBOARD_MYSQL_URL", db.url.as_str()),
                ("SWITCHBOARD_NATS_URL", url.as_str()),
                ("SWITCHBOARD_NODE_ID", node),
                ("SWITCHBOARD_CLUSTER", c.as_str()),
                ("SWITCHBOARD_LOG", "info"),
            ],
        )
    };
    let mut n1 = start("n1", "cluster-n1");
    let mut n2 = start("n2", "cluster-n2");
    for (node, server) in [("n1", &n1), ("n2", &n2)] {
        let line = status_of(&c, node).unwrap();
        assert!(line[2].starts_with("yes"), "{line:?}");
        assert_eq!(line[3], server.pid().to_string(), "{line:?}");
        assert_eq!(line[1], "128", "{line:?}");
        assert_eq!(server.log_lines("owns 128 of 256 virtual shards").len(), 1);
    }
    // A change of the map while the nodes run reaches them (watched).
    let (code, _, err) = cli(&c, &["add", "n3"]);
    assert_eq!(code, 0, "{err}");
    for server in [&n1, &n2] {
        eventually(Duration::from_secs(5), "the new map seen", || {
            !server.log_lines("placement revision 2: 3 nodes").is_empty()
        });
    }
    // A second process under a live node's id is refused.
    let dup = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .env("SWITCHBOARD_DATA_DIR", temp_dir("cluster-dup"))
        .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SWITCHBOARD_MYSQL_URL", &db.url)
        .env("SWITCHBOARD_NATS_URL", &url)
        .env("SWITCHBOARD_NODE_ID", "n1")
        .env("SWITCHBOARD_CLUSTER", &c)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&dup.stderr);
    assert_eq!(dup.status.code(), Some(2), "{err}");
    assert!(err.contains("node id n1 is in use: pid"), "{err}");
    assert_eq!(status_of(&c, "n1").unwrap()[3], n1.pid().to_string());

    // It serves as a node of one would (routing between nodes is not
    // built yet: both users are asked of n1).
    let mut bob = n1.connect(BOB, "b");
    let alice = n1.connect(ALICE, "a");
    let sent = n1.get("/send", &[("sid", &alice.sid), ("to", "2"), ("text", "hi")]);
    assert_eq!(sent["ok"], true, "{sent}");
    let got = bob.poll_until(&n1, Duration::from_secs(10), |events| {
        !messages(events).is_empty()
    });
    assert_eq!(messages(&got), vec![(ALICE, "hi".to_string())]);

    // A stop deletes the heartbeat at once, not at its TTL.
    n1.signal("TERM");
    assert!(n1.wait_exit(Duration::from_secs(20)).unwrap().success());
    assert_eq!(status_of(&c, "n1").unwrap()[2], "no");

    // Nothing is forgotten while a node heartbeats.
    let (code, _, err) = cli(&c, &["forget"]);
    assert_eq!(code, 2);
    assert!(err.contains("nodes are alive (n2)"), "{err}");

    // A node killed stops heartbeating and drops out within the TTL (5 s).
    n2.signal("KILL");
    n2.wait_exit(Duration::from_secs(10)).unwrap();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(9),
        "n2 gone from the live nodes",
        || status_of(&c, "n2").unwrap()[2] == "no",
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "a TTL, not at once: {:?}",
        killed.elapsed()
    );
    // A placement change made while the nodes are down is the map they
    // read when they come back.
    for gone in ["n2", "n3"] {
        let (code, _, err) = cli(&c, &["remove", gone]);
        assert_eq!(code, 0, "{err}");
    }
    let mut n1 = start("n1", "cluster-n1b");
    assert_eq!(n1.log_lines("owns 256 of 256 virtual shards").len(), 1);
    n1.signal("TERM");
    assert!(n1.wait_exit(Duration::from_secs(20)).unwrap().success());
    let (code, _, err) = cli(&c, &["forget"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn cluster_mode_refuses_the_embedded_store_and_an_unreachable_nats() {
    let run = |env: &[(&str, &str)]| {
        let dir = temp_dir("cluster-refused");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.env_clear()
            .env("SWITCHBOARD_DATA_DIR", &dir)
            .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let (code, err, _) = run(&[
        ("SWITCHBOARD_NATS_URL", "nats://127.0.0.1:4222"),
        ("SWITCHBOARD_NODE_ID", "n1"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("needs the MySQL store"), "{err}");

    let Some(db) = MysqlDb::create_or_skip("cluster_unreachable") else {
        return;
    };
    // Nothing listens on port 1: the start is refused within its bound,
    // saying why.
    let (code, err, took) = run(&[
        ("SWITCHBOARD_MYSQL_URL", db.url.as_str()),
        ("SWITCHBOARD_NATS_URL", "nats://127.0.0.1:1"),
        ("SWITCHBOARD_NODE_ID", "n1"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// A NATS server of the test's own (`nats-server -js` on a free port, its
/// JetStream store in `dir`), so it can be killed and started again.
struct OwnNats {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnNats {
    fn start(dir: &std::path::Path, port: Option<u16>) -> Option<OwnNats> {
        let bin = std::path::Path::new("/usr/sbin/nats-server");
        if !bin.exists() {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true: the NATS restart test needs /usr/sbin/nats-server");
            }
            eprintln!("!! SKIPPED the NATS restart test: no /usr/sbin/nats-server");
            return None;
        }
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually(Duration::from_secs(10), "nats-server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(OwnNats {
            child,
            port,
            dir: dir.to_path_buf(),
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_node_survives_a_nats_restart_and_heartbeats_again() {
    let dir = temp_dir("cluster-own-nats");
    let Some(mut nats) = OwnNats::start(&dir.join("js"), None) else {
        return;
    };
    let Some(db) = MysqlDb::create_or_skip("cluster_nats_restart") else {
        return;
    };
    let url = nats.url();
    let node = Server::start(
        &dir.join("data"),
        &[
            ("SWITCHBOARD_MYSQL_URL", db.url.as_str()),
            ("SWITCHBOARD_NATS_URL", url.as_str()),
            ("SWITCHBOARD_NODE_ID", "n1"),
            ("SWITCHBOARD_LOG", "info"),
        ],
    );
    eventually(Duration::from_secs(5), "n1 alive", || {
        status_at(&url, "switchboard", "n1").is_some_and(|l| l[2].starts_with("yes"))
    });
    let alice = node.connect(ALICE, "a");

    // NATS goes away: the node serves on, and says so in its log.
    nats.kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(10), "the loss logged", || {
        !node.log_lines("lost NATS").is_empty()
    });
    let mut bob = node.connect(BOB, "b");
    let sent = node.get(
        "/send",
        &[("sid", &alice.sid), ("to", "2"), ("text", "during")],
    );
    assert_eq!(sent["ok"], true, "chat goes on without NATS: {sent}");
    let got = bob.poll_until(&node, Duration::from_secs(10), |e| !messages(e).is_empty());
    assert_eq!(messages(&got), vec![(ALICE, "during".to_string())]);

    // NATS comes back on the same port and store: the client reconnects
    // and the heartbeat is written again.
    let port = nats.port;
    let js = nats.dir.clone();
    drop(nats);
    let _nats = OwnNats::start(&js, Some(port)).unwrap();
    eventually(Duration::from_secs(20), "the reconnection logged", || {
        !node.log_lines("reconnected to NATS").is_empty()
    });
    // A heartbeat written since: younger than the time NATS was down.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed()));
    eventually(Duration::from_secs(10), "n1 heartbeating again", || {
        let Some(line) = status_at(&url, "switchboard", "n1") else {
            return false;
        };
        let age: Option<f64> = line[2]
            .strip_prefix("yes (")
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.parse().ok());
        age.is_some_and(|a| a < 1.5) && killed.elapsed() > Duration::from_millis(2_500)
    });
}
