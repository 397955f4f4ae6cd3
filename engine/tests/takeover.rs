//! Hand-overs (`switchboard serve --takeover`): a new
//! process started with the same settings takes the listening sockets and
//! every live session from the running one, under live traffic, and the
//! clients see nothing: the same ports and sids, no `unknown_session`, no
//! `reset`, no presence change, every acknowledged message delivered once
//! to every tab of both users and kept in history. A new process that dies
//! after it got the state leaves the old one serving.
//!
//! The clients are browsers' in miniature: each tab long-polls on a
//! keep-alive connection of its own, re-polling at once with the returned
//! seq; senders send to friends at a steady rate, each message with a
//! unique `cid`. A request on a reused keep-alive connection that the
//! server closed before any byte of its answer arrived is retried once on a
//! new connection, as browsers do (a send's retry carries the same `cid`,
//! so the server answers it without storing it twice); the retries are
//! counted and printed. Anything else is a failure: an I/O error, a
//! timeout, an answer that is not `ok`, `unknown_session`, `reset`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// How long a tab's poll is held (seconds).
const POLL_WAIT: u64 = 3;
/// How long a client waits for an answer: a held poll, plus room for a
/// hand-over, which holds new requests until the new process accepts.
const READ_TIMEOUT: Duration = Duration::from_secs(POLL_WAIT + 12);
/// The longest a hand-over may take, to the new process's listening line
/// and to the old process's exit.
const HAND_OVER_MAX: Duration = Duration::from_secs(30);
/// The longest the last messages may take to reach every tab.
const DRAIN_MAX: Duration = Duration::from_secs(15);

/// The shape of the traffic.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// Users `1..=users`, friends in a ring (each with the next and the
    /// one before).
    users: u64,
    /// Tabs per user, each polling on its own connection.
    tabs: usize,
    /// Sender threads, each sending for its share of the users.
    senders: u64,
    /// Each sender sends one message for each of its users per round.
    round: Duration,
}

impl Load {
    /// `user`'s two friends: the next in the ring and the one before.
    fn friends(&self, user: u64) -> [u64; 2] {
        [
            user % self.users + 1,
            (user + self.users - 2) % self.users + 1,
        ]
    }
}

/// The directory file: users `u1`..`uN`, each friends with the next
/// (a ring).
fn write_ring_directory(dir: &Path, users: u64) -> PathBuf {
    let path = dir.join("directory.json");
    let json = serde_json::json!({
        "users": (1..=users)
            .map(|id| serde_json::json!({"id": id, "name": format!("u{id}")}))
            .collect::<Vec<_>>(),
        "friendships": (1..=users).map(|id| [id, id % users + 1]).collect::<Vec<_>>(),
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// The settings of every process of a test: [`Server::start`]'s (2
/// shards, the test secret, a 1.5 s grace), the ring directory, no rate
/// limits (a tab re-polls at once, and a poll answered with news counts),
/// and `info` records (the hand-over's lines are checked: a
/// `SWITCHBOARD_TEST_LOG` given in their place must keep them).
fn settings(data_dir: &Path, directory: &Path) -> Vec<(String, String)> {
    let log = std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "info".into());
    let directory = directory.display().to_string();
    common::test_env(
        data_dir,
        &[
            ("SWITCHBOARD_DIRECTORY", &directory),
            ("SWITCHBOARD_RATE_LIMITS", "off"),
            ("SWITCHBOARD_LOG", &log),
        ],
    )
}

/// Copies of the binary in a folder of their own (so a test can hand
/// over from one file to another, or to the same file), removed when this
/// drops, a failed test's too (each is over 100 MB in a debug build).
struct Binaries(PathBuf);

impl Binaries {
    fn new() -> Binaries {
        Binaries(temp_dir("takeover-binaries"))
    }

    /// Copies the binary to `name` in the folder.
    fn copy(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::copy(env!("CARGO_BIN_EXE_switchboard"), &path).expect("copy the binary");
        path
    }
}

impl Drop for Binaries {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `program serve` in `dir` on a ring directory of `load.users`
/// (the test's settings), with `load`'s traffic running on it.
fn start_loaded(dir: &Path, program: &Path, load: Load) -> (Server, Traffic) {
    let directory = write_ring_directory(dir, load.users);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let server = start(program, &data, settings(&data, &directory));
    let traffic = Traffic::start(&server, load);
    (server, traffic)
}

/// Starts `program serve` with `env`.
fn start(program: &Path, data_dir: &Path, env: Vec<(String, String)>) -> Server {
    match Server::spawn(program, &["serve"], data_dir, env).listening(HAND_OVER_MAX) {
        Ok(server) => server,
        Err((_, why)) => panic!("{} did not start: {why}", program.display()),
    }
}

// ---------------------------------------------------------------------
// A browser-like keep-alive client.

/// How one try of a request failed.
enum Fail {
    /// The connection ended (EOF, reset, broken pipe) before any byte of
    /// the answer arrived.
    BeforeAnswer(String),
    /// Anything else: a connect error, a timeout, a cut answer, not HTTP,
    /// not JSON.
    Other(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::BeforeAnswer(why) => write!(f, "closed before the answer ({why})"),
            Fail::Other(why) => write!(f, "{why}"),
        }
    }
}

/// One keep-alive connection, reopened when the server closes it
/// (`Connection: close`), one request at a time.
struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// `GET path?params`: the status and JSON body. A request on a reused
    /// connection that was closed before any byte of the answer is retried
    /// once on a new connection (counted in `stats.retries`).
    fn get(
        &mut self,
        path: &str,
        params: &[(&str, &str)],
        stats: &Stats,
    ) -> Result<(u16, Value), String> {
        let raw = format!("GET {path}?{} HTTP/1.1\r\nHost: t\r\n\r\n", encode(params));
        let reused = self.stream.is_some();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        match self.once(&raw) {
            Ok(answer) => Ok(answer),
            Err(Fail::BeforeAnswer(why)) if reused => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                self.once(&raw).map_err(|f| {
                    format!("{path}: a reused connection closed ({why}), then the retry: {f}")
                })
            }
            Err(f) => Err(format!("{path} (reused connection: {reused}): {f}")),
        }
    }

    fn once(&mut self, raw: &str) -> Result<(u16, Value), Fail> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| Fail::Other(format!("connect: {e}")))?;
            s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
            s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
            s.set_nodelay(true).unwrap();
            self.stream = Some(s);
            self.buf.clear();
        }
        let result = self.exchange(raw);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, raw: &str) -> Result<(u16, Value), Fail> {
        let s = self.stream.as_mut().unwrap();
        if !self.buf.is_empty() {
            return Err(Fail::Other(format!(
                "bytes after the last answer: {:?}",
                String::from_utf8_lossy(&self.buf)
            )));
        }
        if let Err(e) = s.write_all(raw.as_bytes()) {
            return Err(Fail::BeforeAnswer(format!("write: {e}")));
        }
        let mut tmp = [0u8; 16384];
        let mut read_more = |s: &mut TcpStream, buf: &mut Vec<u8>| -> Result<(), Fail> {
            match s.read(&mut tmp) {
                Ok(0) if buf.is_empty() => Err(Fail::BeforeAnswer("EOF".into())),
                Ok(0) => Err(Fail::Other(format!(
                    "EOF inside the answer: {:?}",
                    String::from_utf8_lossy(buf)
                ))),
                Ok(n) => {
                    buf.extend_from_slice(&tmp[..n]);
                    Ok(())
                }
                Err(e)
                    if buf.is_empty()
                        && matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset
                                | ErrorKind::ConnectionAborted
                                | ErrorKind::BrokenPipe
                        ) =>
                {
                    Err(Fail::BeforeAnswer(format!("read: {e}")))
                }
                Err(e) => Err(Fail::Other(format!(
                    "read: {e} after {:?}",
                    String::from_utf8_lossy(buf)
                ))),
            }
        };
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read_more(s, &mut self.buf)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Fail::Other(format!("not an HTTP answer: {head:?}")))?;
        let mut length = 0;
        let mut close = false;
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v
                        .parse()
                        .map_err(|_| Fail::Other(format!("bad Content-Length: {head:?}")))?;
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        while self.buf.len() < head_end + length {
            read_more(s, &mut self.buf)?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).to_string();
        self.buf.drain(..head_end + length);
        if close {
            self.stream = None;
            self.buf.clear();
        }
        let value = serde_json::from_str(&body)
            .map_err(|e| Fail::Other(format!("HTTP {status}, not JSON ({e}): {body:?}")))?;
        Ok((status, value))
    }
}

// ---------------------------------------------------------------------
// Live traffic.

/// Counters shared by the client threads.
#[derive(Default)]
struct Stats {
    /// Requests made (a retry not counted again).
    requests: AtomicU64,
    /// Requests retried on a new connection.
    retries: AtomicU64,
    /// Polls answered `ok`.
    polls: AtomicU64,
    /// Sends answered `ok`.
    sends: AtomicU64,
    /// Everything that went wrong.
    failures: AtomicU64,
    /// The first few failures, as text.
    failure_samples: Mutex<Vec<String>>,
    /// The test failed before [`Traffic::finish`]: what the threads see
    /// while they stop (the server killed) is noise.
    abandoned: AtomicBool,
}

impl Stats {
    fn fail(&self, what: String) {
        if self.abandoned.load(Ordering::Relaxed) {
            return;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.failure_samples.lock().unwrap();
        if samples.len() < 40 {
            eprintln!("takeover test: FAILURE: {what}");
            samples.push(what);
        }
    }
}

/// What one tab's polls brought.
struct TabLog {
    user: u64,
    name: String,
    sid: String,
    /// Every `message` event, in the order they came.
    messages: Vec<Value>,
    /// Every `presence` event after the start settled (there must be
    /// none).
    presence: Vec<Value>,
    /// Every event of another kind (there must be none: nobody types,
    /// reads, saves UI state or changes a roster).
    other: Vec<Value>,
}

/// A message whose send was answered `ok`.
#[derive(Clone, Debug)]
struct Acked {
    id: String,
    from: u64,
    to: u64,
    cid: String,
    text: String,
    /// The phase (test-defined) when the send was made.
    phase: u8,
}

/// Tabs polling and senders sending, each in threads of their own, until
/// [`Traffic::finish`] (or a drop) stops them.
struct Traffic {
    addr: SocketAddr,
    load: Load,
    stats: Arc<Stats>,
    tabs: Arc<Vec<Mutex<TabLog>>>,
    acked: Arc<Mutex<Vec<Acked>>>,
    /// Stamped on each send when it starts.
    phase: Arc<AtomicU8>,
    stop_sends: Arc<AtomicBool>,
    stop_polls: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
    pollers: Vec<JoinHandle<()>>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        // On a failed assertion too: no thread outlives the test by more
        // than its current request.
        if !self.pollers.is_empty() {
            self.stats.abandoned.store(true, Ordering::Relaxed);
        }
        self.stop_sends.store(true, Ordering::Relaxed);
        self.stop_polls.store(true, Ordering::Relaxed);
    }
}

impl Traffic {
    /// Connects every tab, waits until every tab knows both its friends
    /// are online (the start settled: no presence event may come after
    /// this), then starts the pollers and the senders.
    fn start(server: &Server, load: Load) -> Traffic {
        let mut tabs: Vec<(u64, Tab, BTreeMap<u64, String>)> = Vec::new();
        for user in 1..=load.users {
            for t in 0..load.tabs {
                let tab = server.connect(user, &format!("u{user}t{t}"));
                let mut known = BTreeMap::new();
                for c in tab.connect["roster"].as_array().unwrap() {
                    known.insert(
                        c["id"].as_u64().unwrap(),
                        c["presence"].as_str().unwrap().to_string(),
                    );
                }
                let mut friends: Vec<u64> = known.keys().copied().collect();
                let mut expected = load.friends(user).to_vec();
                friends.sort_unstable();
                expected.sort_unstable();
                assert_eq!(friends, expected, "user {user}'s roster");
                tabs.push((user, tab, known));
            }
        }
        // Presence reaches the other shard's replicas and sessions a
        // little later: drain every tab until each sees both friends
        // online.
        let start = Instant::now();
        loop {
            let mut settled = true;
            for (user, tab, known) in &mut tabs {
                for e in tab.poll(server, 0) {
                    assert_eq!(e["type"], "presence", "user {user} before any send: {e}");
                    known.insert(
                        e["user"].as_u64().unwrap(),
                        e["status"].as_str().unwrap().to_string(),
                    );
                }
                settled &= known.values().all(|s| s == "online");
            }
            if settled {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "presence did not settle in 15 s: {:?}",
                tabs.iter().map(|(u, _, k)| (u, k)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut traffic = Traffic {
            addr: server.addr,
            load,
            stats: Arc::default(),
            tabs: Arc::new(
                tabs.iter()
                    .map(|(user, tab, _)| {
                        Mutex::new(TabLog {
                            user: *user,
                            name: tab.connect["tab"].as_str().unwrap().to_string(),
                            sid: tab.sid.clone(),
                            messages: Vec::new(),
                            presence: Vec::new(),
                            other: Vec::new(),
                        })
                    })
                    .collect(),
            ),
            acked: Arc::default(),
            phase: Arc::default(),
            stop_sends: Arc::default(),
            stop_polls: Arc::default(),
            senders: Vec::new(),
            pollers: Vec::new(),
        };
        for (i, (_, tab, _)) in tabs.iter().enumerate() {
            traffic.pollers.push(traffic.poller(i, tab.seq));
        }
        let sids: Arc<HashMap<u64, Vec<String>>> = Arc::new(
            (1..=load.users)
                .map(|u| {
                    let sids = tabs
                        .iter()
                        .filter(|(user, _, _)| *user == u)
                        .map(|(_, tab, _)| tab.sid.clone())
                        .collect();
                    (u, sids)
                })
                .collect(),
        );
        for k in 0..load.senders {
            traffic.senders.push(traffic.sender(k, sids.clone()));
        }
        traffic
    }

    /// Tab `i` polls from `since` until told to stop.
    fn poller(&self, i: usize, mut since: u64) -> JoinHandle<()> {
        let (addr, stats, tabs, stop) = (
            self.addr,
            self.stats.clone(),
            self.tabs.clone(),
            self.stop_polls.clone(),
        );
        std::thread::spawn(move || {
            let (sid, name) = {
                let t = tabs[i].lock().unwrap();
                (t.sid.clone(), t.name.clone())
            };
            let mut conn = Conn::new(addr);
            let wait = POLL_WAIT.to_string();
            while !stop.load(Ordering::Relaxed) {
                let asked = since.to_string();
                let params = [("sid", sid.as_str()), ("since", &asked), ("wait", &wait)];
                let v = match conn.get("/poll", &params, &stats) {
                    Ok((200, v)) if v["ok"] == true => v,
                    Ok((status, v)) => {
                        stats.fail(format!("tab {name}: poll since {since}: HTTP {status} {v}"));
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    Err(e) => {
                        stats.fail(format!("tab {name}: poll since {since}: {e}"));
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                };
                let Some(seq) = v["seq"].as_u64() else {
                    stats.fail(format!("tab {name}: poll since {since}: no seq: {v}"));
                    continue;
                };
                if v.get("reset").is_some() {
                    stats.fail(format!("tab {name}: poll since {since}: reset: {v}"));
                    since = seq;
                    continue;
                }
                if seq < since {
                    stats.fail(format!(
                        "tab {name}: poll since {since}: seq went back: {v}"
                    ));
                }
                let mut log = tabs[i].lock().unwrap();
                let mut last = since;
                for e in v["events"].as_array().into_iter().flatten() {
                    match e["seq"].as_u64() {
                        Some(s) if s > last && s <= seq => last = s,
                        _ => stats.fail(format!(
                            "tab {name}: poll since {since}: event out of order \
                             (after {last}, answer seq {seq}): {e}"
                        )),
                    }
                    match e["type"].as_str() {
                        Some("message") => log.messages.push(e.clone()),
                        Some("presence") => log.presence.push(e.clone()),
                        _ => log.other.push(e.clone()),
                    }
                }
                drop(log);
                since = seq;
                stats.polls.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// Sender `k` sends, for each user `u` with `(u - 1) % senders == k`,
    /// one message a round to a friend (the next, then the one before),
    /// from each of the user's tabs in turn, on a connection per user.
    fn sender(&self, k: u64, sids: Arc<HashMap<u64, Vec<String>>>) -> JoinHandle<()> {
        let (addr, load, stats, acked, phase, stop) = (
            self.addr,
            self.load,
            self.stats.clone(),
            self.acked.clone(),
            self.phase.clone(),
            self.stop_sends.clone(),
        );
        std::thread::spawn(move || {
            let users: Vec<u64> = (1..=load.users)
                .filter(|u| (u - 1) % load.senders == k)
                .collect();
            let mut conns: HashMap<u64, Conn> =
                users.iter().map(|&u| (u, Conn::new(addr))).collect();
            let mut next = Instant::now();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                for &from in &users {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let sid = &sids[&from][n as usize % load.tabs];
                    let to = load.friends(from)[n as usize % 2];
                    let cid = format!("c{from}-{n}");
                    let text = format!("{from}>{to} #{n} ✓ & +%");
                    let sent = Sent {
                        from,
                        to,
                        cid,
                        text,
                    };
                    send(
                        conns.get_mut(&from).unwrap(),
                        sid,
                        sent,
                        &phase,
                        &stats,
                        &acked,
                    );
                }
                n += 1;
                next += load.round;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        })
    }

    /// Waits until the counts of ok polls and ok sends both grow (the
    /// server, whichever process it is, serves), at most `within`.
    fn assert_progress(&self, what: &str, within: Duration) {
        let polls = self.stats.polls.load(Ordering::Relaxed);
        let sends = self.stats.sends.load(Ordering::Relaxed);
        eventually(within, &format!("polls and sends answered {what}"), || {
            self.stats.polls.load(Ordering::Relaxed) > polls + self.load.users
                && self.stats.sends.load(Ordering::Relaxed) > sends + self.load.users
        });
    }

    /// Stops the senders, waits until every tab has every acknowledged
    /// message it should get (at most [`DRAIN_MAX`]), stops the pollers,
    /// and checks everything against `server`: no failure, no presence or
    /// other event, every acknowledged message exactly once on every tab
    /// of its sender and of its recipient (protocol.md and the chat tests:
    /// a message goes to every tab of both users), nothing else, and
    /// every acknowledged message in both users' history. The messages
    /// acknowledged.
    fn finish(mut self, server: &Server) -> Vec<Acked> {
        self.stop_sends.store(true, Ordering::Relaxed);
        for s in self.senders.drain(..) {
            s.join().expect("a sender panicked");
        }
        let acked = self.acked.lock().unwrap().clone();
        let mut expected: HashMap<u64, BTreeSet<&str>> = HashMap::new();
        for m in &acked {
            expected.entry(m.from).or_default().insert(&m.id);
            expected.entry(m.to).or_default().insert(&m.id);
        }
        let missing = |tabs: &[Mutex<TabLog>]| -> usize {
            tabs.iter()
                .map(|t| {
                    let t = t.lock().unwrap();
                    let got: BTreeSet<&str> =
                        t.messages.iter().filter_map(|e| e["id"].as_str()).collect();
                    expected
                        .get(&t.user)
                        .map_or(0, |ids| ids.difference(&got).count())
                })
                .sum()
        };
        let start = Instant::now();
        while missing(&self.tabs) > 0 && start.elapsed() < DRAIN_MAX {
            std::thread::sleep(Duration::from_millis(100));
        }
        // One more poll round after the last message came: nothing may
        // come twice.
        std::thread::sleep(Duration::from_millis(300));
        self.stop_polls.store(true, Ordering::Relaxed);
        for p in self.pollers.drain(..) {
            p.join().expect("a poller panicked");
        }

        let mut problems: Vec<String> = Vec::new();
        let by_id: HashMap<&str, &Acked> = acked.iter().map(|m| (m.id.as_str(), m)).collect();
        // One id per cid: a retried send is answered with the first id.
        let mut ids_of_cid: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for m in &acked {
            ids_of_cid.entry(&m.cid).or_default().insert(&m.id);
        }
        for (cid, ids) in &ids_of_cid {
            if ids.len() > 1 {
                problems.push(format!("cid {cid} answered with ids {ids:?}"));
            }
        }
        let mut presence = 0;
        for t in self.tabs.iter() {
            let t = t.lock().unwrap();
            let who = format!("tab {} (user {})", t.name, t.user);
            presence += t.presence.len();
            for e in &t.presence {
                problems.push(format!("{who}: presence event after the start: {e}"));
            }
            for e in &t.other {
                problems.push(format!("{who}: unexpected event: {e}"));
            }
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for e in &t.messages {
                let id = e["id"].as_str().unwrap_or("");
                *count.entry(id).or_default() += 1;
                match by_id.get(id) {
                    None => problems.push(format!("{who}: a message never acknowledged: {e}")),
                    Some(m) => {
                        let same = e["from"] == m.from
                            && e["to"] == m.to
                            && e["text"] == m.text.as_str()
                            && e["cid"] == m.cid.as_str();
                        if !same || (m.from != t.user && m.to != t.user) {
                            problems.push(format!("{who}: {e} is not what was sent: {m:?}"));
                        }
                    }
                }
            }
            for (id, n) in &count {
                if *n > 1 {
                    problems.push(format!("{who}: message {id} delivered {n} times"));
                }
            }
            for id in expected.get(&t.user).into_iter().flatten() {
                if !count.contains_key(id) {
                    problems.push(format!(
                        "{who}: message {id} never delivered: {:?}",
                        by_id[id]
                    ));
                }
            }
        }
        // History, for each pair of friends, from the first of the two.
        let mut conn = Conn::new(server.addr);
        for user in 1..=self.load.users {
            let friend = self.load.friends(user)[0];
            let sid = self
                .tabs
                .iter()
                .map(|t| t.lock().unwrap())
                .find(|t| t.user == user)
                .unwrap()
                .sid
                .clone();
            let want: BTreeSet<&str> = acked
                .iter()
                .filter(|m| (m.from, m.to) == (user, friend) || (m.from, m.to) == (friend, user))
                .map(|m| m.id.as_str())
                .collect();
            let history = match history(&mut conn, &self.stats, &sid, friend) {
                Ok(history) => history,
                Err(e) => {
                    problems.push(format!("history of {user} with {friend}: {e}"));
                    continue;
                }
            };
            let mut got: BTreeMap<String, usize> = BTreeMap::new();
            for m in &history {
                *got.entry(m["id"].as_str().unwrap_or("").to_string())
                    .or_default() += 1;
                if let Some(a) = m["id"].as_str().and_then(|id| by_id.get(id)) {
                    if m["text"] != a.text.as_str() || m["from"] != a.from || m["to"] != a.to {
                        problems.push(format!("history of {user} with {friend}: {m} is not {a:?}"));
                    }
                }
            }
            for id in &want {
                if !got.contains_key(*id) {
                    problems.push(format!(
                        "history of {user} with {friend}: message {id} missing: {:?}",
                        by_id[id]
                    ));
                }
            }
            for (id, n) in &got {
                if !want.contains(id.as_str()) || *n > 1 {
                    problems.push(format!(
                        "history of {user} with {friend}: message {id} there {n} times, \
                         acknowledged: {}",
                        want.contains(id.as_str())
                    ));
                }
            }
        }

        let stats = &self.stats;
        let failures = stats.failures.load(Ordering::Relaxed);
        let samples = stats.failure_samples.lock().unwrap().clone();
        println!(
            "takeover test: {} requests ({} polls, {} sends acknowledged), {} retried on a \
             new connection after a reused one closed before its answer, {} failures, {} \
             presence events after the start, {} other problems",
            stats.requests.load(Ordering::Relaxed),
            stats.polls.load(Ordering::Relaxed),
            acked.len(),
            stats.retries.load(Ordering::Relaxed),
            failures,
            presence,
            problems.len(),
        );
        assert!(
            failures == 0 && problems.is_empty(),
            "{failures} requests failed (the first {}):\n{}\n{} problems (the first 40):\n{}",
            samples.len(),
            samples.join("\n"),
            problems.len(),
            problems
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!acked.is_empty(), "no message was acknowledged");
        acked
    }
}

/// A message to send.
struct Sent {
    from: u64,
    to: u64,
    cid: String,
    text: String,
}

/// Sends `m` from tab `sid` on `conn`; an `ok` answer goes into `acked`
/// with the phase the send started in, anything else is a failure.
fn send(
    conn: &mut Conn,
    sid: &str,
    m: Sent,
    phase: &AtomicU8,
    stats: &Stats,
    acked: &Mutex<Vec<Acked>>,
) {
    let phase = phase.load(Ordering::Relaxed);
    let to = m.to.to_string();
    let params = [
        ("sid", sid),
        ("to", to.as_str()),
        ("text", m.text.as_str()),
        ("cid", m.cid.as_str()),
    ];
    match conn.get("/send", &params, stats) {
        Ok((200, v)) if v["ok"] == true && v["id"].is_string() => {
            stats.sends.fetch_add(1, Ordering::Relaxed);
            acked.lock().unwrap().push(Acked {
                id: v["id"].as_str().unwrap().to_string(),
                from: m.from,
                to: m.to,
                cid: m.cid,
                text: m.text,
                phase,
            });
        }
        Ok((status, v)) => stats.fail(format!(
            "send {} from {} to {}: HTTP {status} {v}",
            m.cid, m.from, m.to
        )),
        Err(e) => stats.fail(format!("send {} from {} to {}: {e}", m.cid, m.from, m.to)),
    }
}

/// Every message of the conversation of `sid`'s user with `with`, oldest
/// first, page by page.
fn history(conn: &mut Conn, stats: &Stats, sid: &str, with: u64) -> Result<Vec<Value>, String> {
    let with = with.to_string();
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..1000 {
        let mut params = vec![("sid", sid), ("with", with.as_str()), ("limit", "100")];
        if let Some(b) = &before {
            params.push(("before", b.as_str()));
        }
        let v = match conn.get("/history", &params, stats) {
            Ok((200, v)) if v["ok"] == true => v,
            Ok((status, v)) => return Err(format!("HTTP {status} {v}")),
            Err(e) => return Err(e),
        };
        let page = v["messages"].as_array().unwrap().clone();
        let more = v["more"] == true;
        before = page
            .first()
            .and_then(|m| m["id"].as_str())
            .map(String::from);
        all.splice(0..0, page);
        if !more || before.is_none() {
            return Ok(all);
        }
    }
    Err("more than 1000 pages".into())
}

/// `GET /health` on the admin listener: the sessions and tabs summed over
/// the shards.
fn sessions_and_tabs(server: &Server) -> (u64, u64) {
    let a = server.admin_call("GET", "/health", &[]);
    assert_eq!(a.status, 200, "{}", a.body);
    let v: Value = serde_json::from_str(&a.body).unwrap();
    let shards = v["shards"].as_array().unwrap();
    (
        shards.iter().map(|s| s["sessions"].as_u64().unwrap()).sum(),
        shards.iter().map(|s| s["tabs"].as_u64().unwrap()).sum(),
    )
}

/// Hands `old` over to `program serve --takeover`: waits for the new
/// process's listening line (the same addresses) and the old one's exit
/// with status 0, each within [`HAND_OVER_MAX`], and for the log lines
/// each writes. The new server, and how long until it was ready and until
/// the old one had exited.
fn hand_over(mut old: Server, program: &Path) -> (Server, Duration, Duration) {
    let start = Instant::now();
    let new = match old.takeover(program, &[]).listening(HAND_OVER_MAX) {
        Ok(new) => new,
        Err((_, why)) => panic!(
            "{} serve --takeover did not say it listens: {why}",
            program.display()
        ),
    };
    let ready = start.elapsed();
    assert_eq!(
        (new.addr, new.admin),
        (old.addr, old.admin),
        "the new process listens elsewhere"
    );
    let status = old
        .wait_exit(HAND_OVER_MAX)
        .expect("the old process did not exit within 30 s of the hand-over");
    let exited = start.elapsed();
    assert_eq!(status.code(), Some(0), "the old process: {status}");
    eventually(
        Duration::from_secs(5),
        "the old process logs `handed over to`",
        || !old.log_lines("handed over to").is_empty(),
    );
    eventually(
        Duration::from_secs(5),
        "the new process logs `took over from`",
        || !new.log_lines("took over from").is_empty(),
    );
    (new, ready, exited)
}

// ---------------------------------------------------------------------
// The tests.

/// 24 users with 3 tabs each, polling and sending throughout three
/// hand-overs in a row: to the same binary file (A to A), to another file
/// (A to B) and back (B to A). Nobody notices.
#[test]
fn three_hand_overs_under_live_traffic() {
    let dir = temp_dir("takeover");
    let load = Load {
        users: 24,
        tabs: 3,
        senders: 4,
        // 6 users a sender: 40 messages a second in all.
        round: Duration::from_millis(600),
    };
    let binaries = Binaries::new();
    let bin_a = binaries.copy("switchboard-a");
    let bin_b = binaries.copy("switchboard-b");
    let (mut server, traffic) = start_loaded(&dir, &bin_a, load);
    std::thread::sleep(Duration::from_secs(3));
    traffic.assert_progress("before the hand-overs", Duration::from_secs(10));
    assert_eq!(
        sessions_and_tabs(&server),
        (load.users, load.users * load.tabs as u64)
    );

    let mut timings = Vec::new();
    for (step, program) in [("A to A", &bin_a), ("A to B", &bin_b), ("B to A", &bin_a)] {
        let (new, ready, exited) = hand_over(server, program);
        server = new;
        timings.push(format!(
            "{step}: ready after {} ms, the old one gone after {} ms",
            ready.as_millis(),
            exited.as_millis()
        ));
        // The new process has every session and tab, no more (a tab
        // lost or made again would show), and serves them.
        assert_eq!(
            sessions_and_tabs(&server),
            (load.users, load.users * load.tabs as u64),
            "after {step}"
        );
        traffic.assert_progress(&format!("after {step}"), Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(2));
    }
    let acked = traffic.finish(&server);
    println!(
        "takeover test: {} messages acknowledged; hand-overs: {}",
        acked.len(),
        timings.join("; ")
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The phases of [`a_new_process_that_dies_leaves_the_old_serving`].
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

/// A new process that exits (the test fault: right after it received the
/// old one's state and sockets, before it is ready) leaves the old one
/// serving on the same port, the same sids, nothing lost; a hand-over
/// after that works.
#[test]
fn a_new_process_that_dies_leaves_the_old_serving() {
    let dir = temp_dir("takeover-dies");
    let load = Load {
        users: 8,
        tabs: 3,
        senders: 2,
        // 4 users a sender: 20 messages a second in all.
        round: Duration::from_millis(400),
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_switchboard"));
    let (mut server, traffic) = start_loaded(&dir, &bin, load);
    std::thread::sleep(Duration::from_secs(2));
    traffic.assert_progress("before", Duration::from_secs(10));

    // While the new process starts, takes the state and dies, this thread
    // sends too (user 1, from its first tab), so that some sends surely
    // start during the attempt.
    let sid = traffic.tabs[0].lock().unwrap().sid.clone();
    let mut conn = Conn::new(server.addr);
    traffic.phase.store(DURING, Ordering::Relaxed);
    let start = Instant::now();
    let mut starting = server.takeover(&bin, &[("SWITCHBOARD_FAULT_TAKEOVER", "exit-after-state")]);
    let mut n = 0;
    let status = loop {
        let m = Sent {
            from: 1,
            to: load.friends(1)[n % 2],
            cid: format!("during-{n}"),
            text: format!("during the failed hand-over #{n}"),
        };
        send(
            &mut conn,
            &sid,
            m,
            &traffic.phase,
            &traffic.stats,
            &traffic.acked,
        );
        n += 1;
        match starting.listening(Duration::from_millis(100)) {
            Ok(_) => panic!("the new process said it listens despite exit-after-state"),
            Err((_, NotListening::Exited(status))) => break status,
            Err((s, NotListening::TimedOut(_))) => starting = *s,
        }
        assert!(
            start.elapsed() < HAND_OVER_MAX,
            "the new process neither said it listens nor exited within 30 s"
        );
    };
    let failed_after = start.elapsed();
    traffic.phase.store(AFTER, Ordering::Relaxed);
    assert_eq!(status.code(), Some(99), "the new process: {status}");
    // The old one goes on: still running, the same sessions and tabs,
    // polls (the same sids, on the same port) and sends answered.
    assert!(
        server.wait_exit(Duration::from_millis(500)).is_none(),
        "the old process exited after the new one died"
    );
    assert_eq!(
        sessions_and_tabs(&server),
        (load.users, load.users * load.tabs as u64)
    );
    traffic.assert_progress("after the failed hand-over", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));

    // A hand-over now works.
    let (new, ready, exited) = hand_over(server, &bin);
    server = new;
    assert_eq!(
        sessions_and_tabs(&server),
        (load.users, load.users * load.tabs as u64)
    );
    traffic.assert_progress("after the hand-over", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let acked = traffic.finish(&server);
    let in_phase = |p: u8| acked.iter().filter(|m| m.phase == p).count();
    println!(
        "takeover test: messages acknowledged before the failed hand-over {}, during it {} \
         (it failed after {} ms), after it {}; the hand-over after: ready after {} ms, the old \
         one gone after {} ms",
        in_phase(BEFORE),
        in_phase(DURING),
        failed_after.as_millis(),
        in_phase(AFTER),
        ready.as_millis(),
        exited.as_millis()
    );
    for (p, what) in [(BEFORE, "before"), (DURING, "during"), (AFTER, "after")] {
        assert!(
            in_phase(p) > 0,
            "no message acknowledged {what} the failed hand-over"
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
