//! MySQL-only behaviour against a real MariaDB/MySQL: history writes that
//! never stall chat (a locked table, a lost connection, a network black
//! hole), durability across SIGKILL, token lookup, and the schema check.
//! Each test has its own database (see `common`); without MySQL they are
//! skipped loudly, or fail under `CI=true`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use mysql::prelude::Queryable;
use serde_json::Value;
use switchboard_engine::limits::STORAGE_SLACK_MS;

const T: Duration = Duration::from_secs(20);

/// The storage timeout these tests run with.
const STORAGE_TIMEOUT_MS: u64 = 1_500;
/// How late after its deadline an `unavailable` may come (scheduling,
/// the 50 ms tick, a loaded CI machine).
const SLACK_MS: u64 = 1_000;

fn send(server: &Server, sid: &str, to: u64, text: &str, cid: Option<&str>) -> Value {
    let to = to.to_string();
    let mut params = vec![("sid", sid), ("to", to.as_str()), ("text", text)];
    if let Some(c) = cid {
        params.push(("cid", c));
    }
    server.get("/send", &params)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A send that must answer `unavailable` by its deadline, or, when
/// storage itself does not answer (a black hole), when the engine's timer
/// gives up `STORAGE_SLACK_MS` later; not long after that.
fn send_fails_at_deadline(server: &Server, sid: &str, text: &str) {
    let t0 = Instant::now();
    let v = send(server, sid, BOB, text, None);
    let ms = t0.elapsed().as_millis() as u64;
    assert_eq!(code(&v), "unavailable", "{text}: {v}");
    assert!(
        ms <= STORAGE_TIMEOUT_MS + STORAGE_SLACK_MS + SLACK_MS,
        "{text}: unavailable only after {ms} ms (deadline {STORAGE_TIMEOUT_MS} ms)"
    );
}

/// Presence and poll round trips while storage is stuck: alice's status
/// change reaches bob's held poll, typing too, and a poll with nothing to
/// say answers at once; each must take well under the stall.
fn chat_without_storage_is_fast(server: &Server, alice: &Tab, bob: &mut Tab, status: &str) {
    let bound = Duration::from_millis(500);
    let t0 = Instant::now();
    let v = server.get("/presence", &[("sid", &alice.sid), ("status", status)]);
    assert_eq!(v["ok"], true, "{v}");
    let ev = bob.poll_until(server, T, |ev| {
        ev.iter()
            .any(|e| e["type"] == "presence" && e["status"] == status)
    });
    assert!(!ev.is_empty());
    let presence = t0.elapsed();
    let t0 = Instant::now();
    let v = server.get(
        "/typing",
        &[("sid", &alice.sid), ("to", "2"), ("state", "typing")],
    );
    assert_eq!(v["ok"], true, "{v}");
    bob.poll_until(server, T, |ev| ev.iter().any(|e| e["type"] == "typing"));
    let typing = t0.elapsed();
    let t0 = Instant::now();
    bob.poll(server, 0);
    let poll = t0.elapsed();
    assert!(
        presence < bound && typing < bound && poll < bound,
        "round trips while storage is stuck: presence {presence:?}, typing {typing:?}, poll {poll:?}"
    );
}

/// Texts of the conversation of alice and bob, from the database.
fn stored_texts(db: &MysqlDb) -> Vec<String> {
    db.conn()
        .query("SELECT text FROM sb_messages WHERE user_lo = 1 AND user_hi = 2 ORDER BY id")
        .unwrap()
}

#[test]
fn locked_messages_table_fails_sends_at_deadline_while_chat_stays_fast() {
    let Some(db) = MysqlDb::create_or_skip("locked_messages_table") else {
        return;
    };
    let dir = temp_dir("mysql-lock");
    let timeout = STORAGE_TIMEOUT_MS.to_string();
    let backend = Backend::Mysql(db);
    let server = backend.start(
        &dir,
        &[
            ("SWITCHBOARD_STORAGE_TIMEOUT_MS", &timeout),
            ("SWITCHBOARD_MYSQL_POOL_SIZE", "4"),
        ],
    );
    let db = backend.mysql().unwrap();
    let alice = server.connect(ALICE, "a");
    let mut bob = server.connect(BOB, "b");
    assert_eq!(send(&server, &alice.sid, BOB, "before", None)["ok"], true);

    // A second connection write-locks the messages table for 6 s.
    let lock_s = 6;
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let locker = {
        let url = db.url.clone();
        std::thread::spawn(move || {
            let mut c = mysql_conn(&url).unwrap();
            c.query_drop("LOCK TABLES sb_messages WRITE").unwrap();
            let _ = locked_tx.send(Instant::now());
            std::thread::sleep(Duration::from_secs(lock_s));
            c.query_drop("UNLOCK TABLES").unwrap();
            Instant::now()
        })
    };
    let locked_at = locked_rx.recv_timeout(T).unwrap();

    // Sends fail at their deadline, one at a time and eight at once.
    send_fails_at_deadline(&server, &alice.sid, "during 1");
    std::thread::scope(|s| {
        for i in 0..8 {
            let (server, sid) = (&server, &alice.sid);
            s.spawn(move || send_fails_at_deadline(server, sid, &format!("burst {i}")));
        }
    });
    // Chat without storage does not notice.
    chat_without_storage_is_fast(&server, &alice, &mut bob, "away");
    // Connecting reads other tables: still works.
    let t0 = Instant::now();
    let carol = server.connect(CAROL, "c");
    assert!(t0.elapsed() < Duration::from_millis(1_000));
    assert!(
        locked_at.elapsed() < Duration::from_secs(lock_s),
        "the checks above outlasted the lock: make it longer"
    );

    let unlocked_at = locker.join().unwrap();
    let v = send(&server, &alice.sid, BOB, "after", None);
    assert_eq!(v["ok"], true, "first send after UNLOCK: {v}");
    assert!(unlocked_at.elapsed() < Duration::from_secs(2));
    assert_eq!(send(&server, &carol.sid, ALICE, "carol", None)["ok"], true);
    // `unavailable` meant "not stored": the timed-out sends were rolled back.
    assert_eq!(stored_texts(db), ["before", "after"]);
    // And the log said what the stuck sends were waiting for.
    let lines = server.log_lines("past its deadline");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("store_message") && l.contains("sb_messages")),
        "no log line naming the stuck job and its SQL: {lines:#?}"
    );
}

/// A TCP proxy in front of MySQL that can go away (`down`: listener
/// closed, connections reset), come back on the same port (`up`), or turn
/// into a black hole (`freeze`: connections stay open, nothing passes).
struct Proxy {
    port: u16,
    target: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

#[derive(Default)]
struct ProxyShared {
    frozen: AtomicBool,
    conns: Mutex<Vec<(Arc<AtomicBool>, TcpStream, TcpStream)>>,
}

impl Proxy {
    fn new(target: SocketAddr) -> Proxy {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut proxy = Proxy {
            port,
            target,
            shared: Arc::default(),
            accept: None,
        };
        proxy.up();
        proxy
    }

    fn up(&mut self) {
        assert!(self.accept.is_none());
        let listener = {
            let start = Instant::now();
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(e) if start.elapsed() < T => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("proxy cannot listen on {} again: {e}", self.port),
                }
            }
        };
        listener.set_nonblocking(true).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let (shared, target, run) = (self.shared.clone(), self.target, running.clone());
        let thread = std::thread::spawn(move || {
            while run.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        let closed = Arc::new(AtomicBool::new(false));
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server.try_clone().unwrap(), client.try_clone().unwrap()),
                        ] {
                            let (shared, closed) = (shared.clone(), closed.clone());
                            std::thread::spawn(move || pump(from, to, &shared, &closed));
                        }
                        shared.conns.lock().unwrap().push((closed, client, server));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.accept = Some((running, thread));
    }

    fn down(&mut self) {
        let (running, thread) = self.accept.take().expect("proxy is up");
        running.store(false, Ordering::Release);
        thread.join().unwrap();
        for (closed, a, b) in self.shared.conns.lock().unwrap().drain(..) {
            closed.store(true, Ordering::Release);
            let _ = a.shutdown(std::net::Shutdown::Both);
            let _ = b.shutdown(std::net::Shutdown::Both);
        }
    }

    fn freeze(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::Release);
    }

    /// `url` with the proxy as host and port.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, db) = rest.split_once('/').unwrap();
        let user = authority.rsplit_once('@').map_or("", |(u, _)| u);
        let at = if user.is_empty() { "" } else { "@" };
        format!("{scheme}://{user}{at}127.0.0.1:{}/{db}", self.port)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &ProxyShared, closed: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 16384];
    while !closed.load(Ordering::Acquire) {
        if shared.frozen.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// The MySQL server's address from the test URL.
fn mysql_addr() -> SocketAddr {
    let opts = mysql::Opts::from_url(&mysql_server_url()).unwrap();
    let host = opts.get_ip_or_hostname().to_string();
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    format!("{host}:{}", opts.get_tcp_port()).parse().unwrap()
}

/// Starts a server on `db` through `proxy`.
fn start_behind(proxy: &Proxy, db: &MysqlDb, name: &str) -> Server {
    let dir = temp_dir(name);
    let timeout = STORAGE_TIMEOUT_MS.to_string();
    let url = proxy.url(&db.url);
    Server::start(
        &dir,
        &[
            ("SWITCHBOARD_MYSQL_URL", &url),
            ("SWITCHBOARD_STORAGE_TIMEOUT_MS", &timeout),
            ("SWITCHBOARD_MYSQL_CONNECT_TIMEOUT_MS", "500"),
            ("SWITCHBOARD_MYSQL_POOL_SIZE", "3"),
        ],
    )
}

/// Sends until one succeeds; returns how long that took.
fn recovers(server: &Server, sid: &str, text: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let v = send(server, sid, BOB, text, Some(text));
        if v["ok"] == true {
            return t0.elapsed();
        }
        assert_eq!(code(&v), "unavailable", "{v}");
        assert!(t0.elapsed() < T, "no recovery within {T:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lost_connectivity_fails_sends_at_deadline_and_recovers_without_restart() {
    let Some(db) = MysqlDb::create_or_skip("lost_connectivity") else {
        return;
    };
    let mut proxy = Proxy::new(mysql_addr());
    let server = start_behind(&proxy, &db, "mysql-down");
    let alice = server.connect(ALICE, "a");
    let mut bob = server.connect(BOB, "b");
    assert_eq!(send(&server, &alice.sid, BOB, "before", None)["ok"], true);

    proxy.down();
    for i in 0..3 {
        send_fails_at_deadline(&server, &alice.sid, &format!("down {i}"));
    }
    chat_without_storage_is_fast(&server, &alice, &mut bob, "away");
    // A new tab needs storage (its session load): unavailable, not a hang.
    let t0 = Instant::now();
    let (status, body) = server.get_status("/connect", &[("token", &token(CAROL))]);
    assert_eq!(status, 503, "{body}");
    assert!(t0.elapsed() < Duration::from_millis(STORAGE_TIMEOUT_MS + SLACK_MS));

    proxy.up();
    let took = recovers(&server, &alice.sid, "after");
    eprintln!("recovered {took:?} after the database came back");
    assert!(took < Duration::from_secs(10));
    chat_without_storage_is_fast(&server, &alice, &mut bob, "online");
    assert_eq!(stored_texts(&db), ["before", "after"]);
    server.connect(CAROL, "c");
}

#[test]
fn network_black_hole_fails_sends_at_deadline_and_recovers_without_restart() {
    let Some(db) = MysqlDb::create_or_skip("network_black_hole") else {
        return;
    };
    let proxy = Proxy::new(mysql_addr());
    let server = start_behind(&proxy, &db, "mysql-blackhole");
    let alice = server.connect(ALICE, "a");
    let mut bob = server.connect(BOB, "b");
    assert_eq!(send(&server, &alice.sid, BOB, "before", None)["ok"], true);

    // Packets stop, connections stay open: statements hang until the
    // socket timeout, new connections never finish their handshake.
    proxy.freeze(true);
    for i in 0..5 {
        send_fails_at_deadline(&server, &alice.sid, &format!("frozen {i}"));
    }
    chat_without_storage_is_fast(&server, &alice, &mut bob, "away");
    // Long enough for every pooled connection to hit its socket timeout.
    std::thread::sleep(Duration::from_millis(STORAGE_TIMEOUT_MS + 1_500));
    send_fails_at_deadline(&server, &alice.sid, "still frozen");

    proxy.freeze(false);
    let took = recovers(&server, &alice.sid, "after");
    eprintln!("recovered {took:?} after the network came back");
    assert!(took < Duration::from_secs(10));
    // Nothing answered `unavailable` was stored.
    assert_eq!(stored_texts(&db), ["before", "after"]);
}

#[test]
fn every_answered_send_is_in_the_table_after_sigkill() {
    let Some(db) = MysqlDb::create_or_skip("sigkill") else {
        return;
    };
    let backend = Backend::Mysql(db);
    let dir = temp_dir("mysql-kill");
    // 100 sends per user as fast as the server answers: no person does that.
    let server = backend.start(&dir, &[("SWITCHBOARD_RATE_LIMITS", "off")]);
    let alice = server.connect(ALICE, "a");
    let bob = server.connect(BOB, "b");
    let n_per_thread = 50;
    // Four senders at once, so sends share group commits.
    let answered: Vec<(String, String)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (server, alice, bob) = (&server, &alice, &bob);
                s.spawn(move || {
                    let mut got = Vec::new();
                    for i in 0..n_per_thread {
                        let text = format!("t{t} m{i}");
                        let cid = format!("k{t}-{i}");
                        let (sid, to) = if t % 2 == 0 {
                            (&alice.sid, BOB)
                        } else {
                            (&bob.sid, ALICE)
                        };
                        let v = send(server, sid, to, &text, (i % 2 == 0).then_some(&*cid));
                        assert_eq!(v["ok"], true, "{v}");
                        got.push((v["id"].as_str().unwrap().to_string(), text));
                    }
                    got
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    // SIGKILL right after the last answer.
    drop(server);
    let db = backend.mysql().unwrap();
    let rows: Vec<(u64, String)> = db
        .conn()
        .query("SELECT id, text FROM sb_messages ORDER BY id")
        .unwrap();
    assert_eq!(rows.len(), answered.len(), "extra or missing rows");
    for (id, text) in &answered {
        let id: u64 = id.parse().unwrap();
        assert!(
            rows.contains(&(id, text.clone())),
            "answered message {id} {text:?} is not in sb_messages"
        );
    }
    // And the restarted server serves them.
    let server = backend.start(&dir, &[]);
    let alice = server.connect(ALICE, "a");
    let h = server.get(
        "/history",
        &[("sid", &alice.sid), ("with", "2"), ("limit", "100")],
    );
    assert_eq!(h["messages"].as_array().unwrap().len(), 100);
    assert_eq!(h["more"], true);
}

#[test]
fn stored_tokens_are_looked_up_by_the_configured_query() {
    let Some(db) = MysqlDb::create_or_skip("token_sql") else {
        return;
    };
    let mut c = db.conn();
    c.query_drop(
        "CREATE TABLE chat_tokens (token VARCHAR(191) PRIMARY KEY, user_id BIGINT UNSIGNED NOT NULL, \
         expires_at DATETIME NOT NULL)",
    )
    .unwrap();
    // Stored tokens of 16+ characters: shorter ones are refused without a
    // lookup (the token shape rule, docs/protocol.md).
    c.query_drop(
        "INSERT INTO chat_tokens VALUES ('tok-alice-5f3a9c1e', 1, NOW() + INTERVAL 1 DAY), \
         ('tok-old-7b2d4e6f01', 1, NOW() - INTERVAL 1 DAY), ('tok-ghost-9a8b7c6d', 99, NOW() + INTERVAL 1 DAY)",
    )
    .unwrap();
    let backend = Backend::Mysql(db);
    let server = backend.start(
        &temp_dir("mysql-token"),
        &[(
            "SWITCHBOARD_MYSQL_TOKEN_SQL",
            "SELECT user_id FROM chat_tokens WHERE token = ? AND expires_at > NOW()",
        )],
    );
    let v = server.get("/connect", &[("token", "tok-alice-5f3a9c1e")]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["user"]["name"], "alice");
    for bad in ["tok-old-7b2d4e6f01", "tok-ghost-9a8b7c6d", "nope", "1.2.3"] {
        let (status, body) = server.get_status("/connect", &[("token", bad)]);
        assert_eq!(status, 401, "{bad}: {body}");
    }
    // HMAC tokens still work, and a forged one is not looked up.
    server.connect(BOB, "b");
    let good = token(ALICE);
    // Change the last character (always to another one: a token ending in
    // 0 must not be "forged" into itself).
    let last = if good.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &good[..good.len() - 1]);
    assert_eq!(server.get_status("/connect", &[("token", &forged)]).0, 401);
}

#[test]
fn serve_refuses_a_database_without_switchboard_tables_and_migrate_is_idempotent() {
    let Some(db) = MysqlDb::create_or_skip("schema_check") else {
        return;
    };
    db.conn()
        .query_drop("DROP TABLE sb_schema_version")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--mysql-url", &db.url, "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--log", "warn"])
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("switchboard migrate"), "{stderr}");
    for expected in ["migrated from version 0 to 1", "up to date (version 1)"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["migrate", "--mysql-url", &db.url, "--log", "warn"])
            .env_clear()
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(expected),
            "{stdout}"
        );
    }
    // The tables survived the repeated migrate: the server starts and works.
    let backend = Backend::Mysql(db);
    let server = backend.start(&temp_dir("mysql-schema"), &[]);
    let alice = server.connect(ALICE, "a");
    assert_eq!(send(&server, &alice.sid, BOB, "hi", None)["ok"], true);
}
