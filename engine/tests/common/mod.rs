//! Test harness: runs the real `switchboard` binary on port 0 with its own
//! data folder, and talks to it over real sockets. Every wait has a
//! timeout; a server is SIGKILLed when its handle drops.
//!
//! Tests that take a [`Backend`] run against the embedded store or against
//! MySQL/MariaDB: each MySQL test gets a database of its own
//! (`sb_test_<pid>_<n>`, migrated with `switchboard migrate` and seeded
//! with the demo directory), dropped when the test ends. The server is
//! `SWITCHBOARD_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`).
//! When it cannot be reached the MySQL tests fail under `CI=true` and are
//! skipped, with a loud banner, anywhere else.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SECRET: &str = "test-secret-0123456789";

/// A unique empty folder under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-test-{}-{}-{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The settings [`Server::start`] runs a server with: 2 shards (so
/// conversations cross shards), port 0, a short grace, the test secret,
/// `warn` logs (or `SWITCHBOARD_TEST_LOG`), plus `extra` (added, or
/// replacing one of these).
pub fn test_env(data_dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("SWITCHBOARD_LISTEN".into(), "127.0.0.1:0".into()),
        ("SWITCHBOARD_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
        ("SWITCHBOARD_SHARDS".into(), "2".into()),
        // Two shards on any runner: a 1-CPU one would refuse them
        // (exit 2) without this.
        ("SWITCHBOARD_SHARDS_OVERCOMMIT".into(), "on".into()),
        (
            "SWITCHBOARD_DATA_DIR".into(),
            data_dir.display().to_string(),
        ),
        ("SWITCHBOARD_TOKEN_SECRET".into(), SECRET.into()),
        ("SWITCHBOARD_PRESENCE_GRACE_MS".into(), "1500".into()),
        ("SWITCHBOARD_LOG".into(), "warn".into()),
    ];
    if let Ok(level) = std::env::var("SWITCHBOARD_TEST_LOG") {
        env.push(("SWITCHBOARD_LOG".into(), level));
    }
    for (k, v) in extra {
        env.retain(|(k2, _)| k2 != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// A running server.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS client listener, when TLS is on (`switchboard tls
    /// listening on https://ADDR`, printed before the listening line).
    pub tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Every line the server wrote to stderr so far (also echoed to the
    /// test's stderr).
    pub log: Arc<Mutex<Vec<String>>>,
    /// The server's stderr pipe, held open and never read
    /// ([`Stderr::Unread`]).
    unread_stderr: Option<std::process::ChildStderr>,
}

/// What the harness does with the server's stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stderr {
    /// Read every line (into [`Server::log`], echoed).
    Read,
    /// Hold the pipe open and never read it: once the pipe's buffer is
    /// full (64 KiB on Linux), a write to stderr blocks.
    Unread,
}

impl Server {
    /// Starts a server with 2 shards (so conversations cross shards), a
    /// short grace and the test secret, plus `extra` settings.
    pub fn start(data_dir: &Path, extra: &[(&str, &str)]) -> Server {
        Self::start_with(data_dir, extra, Stderr::Read)
    }

    /// [`Server::start`] with the server's stderr handled as `stderr` says.
    pub fn start_with(data_dir: &Path, extra: &[(&str, &str)], stderr: Stderr) -> Server {
        Self::start_env_with(data_dir, test_env(data_dir, extra), stderr)
    }

    pub fn start_env(data_dir: &Path, env: Vec<(String, String)>) -> Server {
        Self::start_env_with(data_dir, env, Stderr::Read)
    }

    pub fn start_env_with(data_dir: &Path, env: Vec<(String, String)>, mode: Stderr) -> Server {
        let program = Path::new(env!("CARGO_BIN_EXE_switchboard"));
        Starting::spawn(program, &[], data_dir, env, mode)
            .listening(Duration::from_secs(30))
            .unwrap_or_else(|(_, why)| {
                panic!("server did not announce its address within 30 s: {why:?}")
            })
    }

    /// Starts `program` (a copy of the binary, say) with `args` (`serve
    /// --takeover`, say) and exactly `env`, and returns at once: wait for
    /// its listening line with [`Starting::listening`].
    pub fn spawn(
        program: &Path,
        args: &[&str],
        data_dir: &Path,
        env: Vec<(String, String)>,
    ) -> Starting {
        Starting::spawn(program, args, data_dir, env, Stderr::Read)
    }

    /// Starts `program serve --takeover` with this server's settings
    /// (`extra` added or replacing), to take over from it; returns at
    /// once (see [`Starting::listening`]).
    pub fn takeover(&self, program: &Path, extra: &[(&str, &str)]) -> Starting {
        let mut env = self.env.clone();
        for (k, v) in extra {
            env.retain(|(k2, _)| k2 != k);
            env.push((k.to_string(), v.to_string()));
        }
        Starting::spawn(
            program,
            &["serve", "--takeover"],
            &self.data_dir,
            env,
            Stderr::Read,
        )
    }

    /// The `Authorization` header line for admin calls, when the server
    /// has an admin token (empty otherwise).
    pub fn admin_auth(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "SWITCHBOARD_ADMIN_TOKEN")
            .map_or(String::new(), |(_, t)| {
                format!("Authorization: Bearer {t}\r\n")
            })
    }

    /// Calls an admin endpoint (`method` `GET` or `POST`), with the
    /// listener's `Host` and the admin token if there is one.
    pub fn admin_call(&self, method: &str, path: &str, params: &[(&str, &str)]) -> Answer {
        let target = format!("{path}?{}", encode(params));
        request(
            self.admin,
            &format!(
                "{method} {target} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: 0\r\n\
                 Connection: close\r\n\r\n",
                self.admin,
                self.admin_auth()
            ),
        )
    }

    /// The server's stderr lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name `kill -s` knows: `TERM`, `INT`) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Waits at most `timeout` for the server to exit; its exit status, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server and starts it again on the same data.
    pub fn restart(mut self) -> Server {
        let env = std::mem::take(&mut self.env);
        let dir = self.data_dir.clone();
        drop(self);
        Server::start_env(&dir, env)
    }

    /// Calls a client endpoint (GET) and returns the JSON answer.
    pub fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let (_, body) = self.get_status(path, params);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
    }

    /// Calls a client endpoint (GET), returning status and body.
    pub fn get_status(&self, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let target = format!("{path}?{}", encode(params));
        let r = request(
            self.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        (r.status, r.body)
    }

    /// Calls an admin endpoint with POST.
    pub fn admin_post(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let target = format!("{path}?{}", encode(params));
        let r = request(
            self.admin,
            &format!(
                "POST {target} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
                self.admin,
                self.admin_auth()
            ),
        );
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }

    /// The sum over shards of `/metrics` counter `name` (which must be
    /// there).
    pub fn metric(&self, name: &str) -> u64 {
        let r = request(
            self.admin,
            &format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\n{}Connection: close\r\n\r\n",
                self.admin,
                self.admin_auth()
            ),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body.contains(&format!("# TYPE {name} counter")),
            "{}",
            r.body
        );
        r.body
            .lines()
            // Labelled samples (`name{shard="0"} 3`) and an unlabelled
            // one (`name 3`), never another family's (`name_more 3`).
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Connects user `user` as tab `tab`.
    pub fn connect(&self, user: u64, tab: &str) -> Tab {
        let token = token(user);
        let v = self.get("/connect", &[("token", &token), ("tab", tab)]);
        assert_eq!(v["ok"], true, "connect {user}: {v}");
        Tab {
            sid: v["sid"].as_str().unwrap().to_string(),
            seq: v["seq"].as_u64().unwrap(),
            connect: v,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process started, not yet known to listen: it becomes a
/// [`Server`] once it prints its listening line. SIGKILLed when dropped.
pub struct Starting {
    /// `None` once it became a [`Server`].
    child: Option<Child>,
    /// The `switchboard listening on` (and `tls listening`) lines.
    lines: std::sync::mpsc::Receiver<String>,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Every line the process wrote to stderr so far (also echoed).
    pub log: Arc<Mutex<Vec<String>>>,
    unread_stderr: Option<std::process::ChildStderr>,
    tls: Option<SocketAddr>,
}

/// Why a [`Starting`] process did not become a [`Server`].
#[derive(Debug)]
pub enum NotListening {
    /// It exited (with this status) without printing its listening line.
    Exited(std::process::ExitStatus),
    /// It neither printed the line nor exited in time.
    TimedOut(Duration),
}

impl std::fmt::Display for NotListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotListening::Exited(status) => write!(f, "it exited first: {status}"),
            NotListening::TimedOut(t) => write!(f, "still running after {t:?}"),
        }
    }
}

impl Starting {
    /// Starts `program args` with exactly `env`, stdout read for the
    /// listening line, stderr handled as `mode` says.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        data_dir: &Path,
        env: Vec<(String, String)>,
        mode: Stderr,
    ) -> Starting {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start switchboard");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let mut unread_stderr = None;
        match mode {
            Stderr::Unread => unread_stderr = Some(stderr),
            Stderr::Read => {
                let log_lines = log.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        eprintln!("{line}");
                        log_lines.lock().unwrap().push(line);
                    }
                });
            }
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.starts_with("switchboard listening on")
                    || line.starts_with("switchboard tls listening on")
                {
                    let _ = tx.send(line);
                }
            }
        });
        Starting {
            child: Some(child),
            lines: rx,
            data_dir: data_dir.to_path_buf(),
            env,
            log,
            unread_stderr,
            tls: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the child").id()
    }

    /// The process's stderr lines so far that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Waits at most `timeout` for the listening line: the running
    /// [`Server`], or this process back (to wait more, or for its exit)
    /// with why not (it exited first, or the time ran out).
    pub fn listening(mut self, timeout: Duration) -> Result<Server, (Box<Starting>, NotListening)> {
        use std::sync::mpsc::RecvTimeoutError;
        let start = Instant::now();
        let line = loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err((Box::new(self), NotListening::TimedOut(timeout)));
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(line) => match line.strip_prefix("switchboard tls listening on https://") {
                    Some(addr) => self.tls = Some(addr.parse().unwrap()),
                    None => break line,
                },
                Err(RecvTimeoutError::Timeout) => {
                    let child = self.child.as_mut().expect("the child");
                    if let Some(status) = child.try_wait().expect("try_wait") {
                        // A line sent just before the exit still counts.
                        if let Ok(line) = self.lines.try_recv() {
                            if !line.starts_with("switchboard tls listening on") {
                                break line;
                            }
                        }
                        return Err((Box::new(self), NotListening::Exited(status)));
                    }
                }
                // Stdout closed: the process is ending (or closed it).
                Err(RecvTimeoutError::Disconnected) => {
                    let left = timeout.saturating_sub(start.elapsed());
                    return match self.wait_exit(left) {
                        Some(status) => Err((Box::new(self), NotListening::Exited(status))),
                        None => Err((Box::new(self), NotListening::TimedOut(timeout))),
                    };
                }
            }
        };
        // "switchboard listening on http://A admin http://B"
        let words: Vec<&str> = line.split_whitespace().collect();
        let addr = words[3].trim_start_matches("http://").parse().unwrap();
        let admin = words[5].trim_start_matches("http://").parse().unwrap();
        Ok(Server {
            // Taken: a `Starting` kills only a child it still has.
            child: self.child.take().expect("the child"),
            addr,
            admin,
            tls: self.tls,
            data_dir: std::mem::take(&mut self.data_dir),
            env: std::mem::take(&mut self.env),
            log: self.log.clone(),
            unread_stderr: self.unread_stderr.take(),
        })
    }

    /// Waits at most `timeout` for the process to exit; its exit status,
    /// or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut().expect("the child");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One attached tab.
pub struct Tab {
    pub sid: String,
    /// Last seq seen.
    pub seq: u64,
    /// The connect answer.
    pub connect: Value,
}

impl Tab {
    /// Polls once (wait seconds), returns the events and advances `seq`.
    pub fn poll(&mut self, server: &Server, wait: u64) -> Vec<Value> {
        let v = server.get(
            "/poll",
            &[
                ("sid", &self.sid),
                ("since", &self.seq.to_string()),
                ("wait", &wait.to_string()),
            ],
        );
        assert_eq!(v["ok"], true, "poll: {v}");
        assert!(v.get("reset").is_none(), "unexpected reset: {v}");
        self.seq = v["seq"].as_u64().unwrap();
        v["events"].as_array().unwrap().clone()
    }

    /// Polls until `pred` holds for the events gathered, or `timeout`.
    pub fn poll_until(
        &mut self,
        server: &Server,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        let mut all = Vec::new();
        while !pred(&all) {
            assert!(start.elapsed() < timeout, "timed out waiting; got {all:?}");
            all.extend(self.poll(server, 1));
        }
        all
    }
}

/// One keep-alive connection for many calls, HTTP/1.1 by hand.
pub struct KeepAlive {
    pub stream: TcpStream,
    /// Bytes read past the last answer (pipelined answers).
    pub buf: Vec<u8>,
}

impl KeepAlive {
    pub fn open(server: &Server) -> KeepAlive {
        let stream = TcpStream::connect(server.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        KeepAlive {
            stream,
            buf: Vec::new(),
        }
    }

    /// The bytes of `GET path?params`, kept alive.
    pub fn request(path: &str, params: &[(&str, &str)]) -> String {
        format!("GET {path}?{} HTTP/1.1\r\nHost: t\r\n\r\n", encode(params))
    }

    /// Sends raw requests at once (pipelined when several).
    pub fn send_raw(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).expect("write");
    }

    /// Reads the next answer: its status and JSON body.
    pub fn answer(&mut self) -> (u16, Value) {
        let a = read_answer_from(&mut self.stream, &mut self.buf);
        assert!(!a.closed, "the connection closed: {}", a.body);
        let body =
            serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.body));
        (a.status, body)
    }

    /// GET `path?params`; the status and the JSON body.
    pub fn get(&mut self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        self.send_raw(&KeepAlive::request(path, params));
        self.answer()
    }
}

/// A token for `user` under the test secret, valid for a day.
pub fn token(user: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    switchboard_storage::token::mint(SECRET.as_bytes(), user, now + 86_400)
}

pub fn encode(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// Whether the server closed the connection after the answer (read EOF).
    pub closed: bool,
}

/// Sends raw bytes on a new connection, reads one answer (and whether EOF
/// followed it).
pub fn request(addr: SocketAddr, raw: &str) -> Answer {
    request_bytes(addr, raw.as_bytes())
}

pub fn request_bytes(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw).expect("write");
    read_answer(&mut s)
}

/// Reads one answer from `s`; then checks for EOF (briefly).
pub fn read_answer(s: &mut TcpStream) -> Answer {
    read_answer_from(s, &mut Vec::new())
}

/// Reads one answer from `s`, starting with bytes already in `buf` and
/// leaving any bytes after the answer there (pipelined answers).
pub fn read_answer_from(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    let (status, headers, body) = read_message(s, buf);
    let mut closed = false;
    if headers
        .get("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    {
        let mut tmp = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        closed = buf.is_empty() && matches!(s.read(&mut tmp), Ok(0));
    }
    Answer {
        status,
        headers,
        body,
        closed,
    }
}

/// Reads one answer's status, headers (names lowercased) and body from
/// any stream (plain or TLS), starting with bytes already in `buf` and
/// leaving any bytes after the answer there.
pub fn read_message<S: Read>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> (u16, HashMap<String, String>, String) {
    let mut tmp = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut tmp).expect("read answer head");
        assert!(
            n > 0,
            "EOF before an answer; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).expect("read answer body");
        assert!(n > 0, "EOF inside the body");
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = String::from_utf8(buf[head_end..head_end + len].to_vec()).unwrap();
    buf.drain(..head_end + len);
    (status, headers, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Polls `f` until it returns true, or panics after `timeout`.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The messages (type "message") among `events`, as (from, text).
pub fn messages(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| {
            (
                e["from"].as_u64().unwrap(),
                e["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The demo directory's user ids.
pub const ALICE: u64 = 1;
pub const BOB: u64 = 2;
pub const CAROL: u64 = 3;
pub const DAVE: u64 = 4;

/// Which store a test's server uses.
pub enum Backend {
    /// The embedded store in the test's data folder.
    Embedded,
    /// A MySQL database of the test's own.
    Mysql(MysqlDb),
}

impl Backend {
    /// Starts a server on this store (see [`Server::start`]).
    pub fn start(&self, data_dir: &Path, extra: &[(&str, &str)]) -> Server {
        match self {
            Backend::Embedded => Server::start(data_dir, extra),
            Backend::Mysql(db) => {
                let mut all = vec![("SWITCHBOARD_MYSQL_URL", db.url.as_str())];
                all.extend_from_slice(extra);
                Server::start(data_dir, &all)
            }
        }
    }

    /// The MySQL database, if this is MySQL.
    pub fn mysql(&self) -> Option<&MysqlDb> {
        match self {
            Backend::Embedded => None,
            Backend::Mysql(db) => Some(db),
        }
    }
}

/// Runs each named test body (`fn name(backend: &Backend)`) twice, as
/// `name::embedded` and `name::mysql`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn embedded() {
                super::$name(&$crate::common::Backend::Embedded)
            }
            #[test]
            fn mysql() {
                if let Some(db) = $crate::common::MysqlDb::create_or_skip(stringify!($name)) {
                    super::$name(&$crate::common::Backend::Mysql(db))
                }
            }
        }
    )*};
}

/// The MySQL server the tests use, without a database name.
pub fn mysql_server_url() -> String {
    let url = std::env::var("SWITCHBOARD_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string());
    let url = url.trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _db)) => format!("{scheme}://{authority}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A connection to `url`, failing fast when nothing answers.
pub fn mysql_conn(url: &str) -> Result<mysql::Conn, String> {
    let opts = mysql::Opts::from_url(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let opts = mysql::OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(Duration::from_secs(3)))
        .read_timeout(Some(Duration::from_secs(60)))
        .prefer_socket(false);
    mysql::Conn::new(opts).map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// A test's own MySQL database, seeded with the demo directory and
/// migrated; dropped when this drops.
pub struct MysqlDb {
    /// The URL of the database.
    pub url: String,
    /// Its name.
    pub name: String,
    /// The server's URL (no database).
    server: String,
}

impl MysqlDb {
    /// A new database for `test`, or `None` (with a loud banner) when
    /// MySQL is unreachable and `CI` is not `true`. In CI it panics.
    pub fn create_or_skip(test: &str) -> Option<MysqlDb> {
        match MysqlDb::create(test) {
            Ok(db) => Some(db),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("CI=true: the MySQL tests must run, but MySQL is unusable: {e}")
            }
            Err(e) => {
                // Straight to the process's stderr: the test harness
                // captures `eprintln!` of passing tests, and this must show.
                use std::io::Write as _;
                static BANNER: std::sync::Once = std::sync::Once::new();
                let mut err = std::io::stderr().lock();
                BANNER.call_once(|| {
                    let bar = "!".repeat(78);
                    let _ = writeln!(
                        err,
                        "\n{bar}\n!! MySQL tests SKIPPED: {e}\n!! Start MariaDB (see .ci/run) \
                         or set SWITCHBOARD_TEST_MYSQL_URL; under CI=true they fail.\n{bar}"
                    );
                });
                let _ = writeln!(err, "!! SKIPPED {test} (no MySQL)");
                None
            }
        }
    }

    /// Creates, migrates (with `switchboard migrate`) and seeds a database.
    pub fn create(test: &str) -> Result<MysqlDb, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let server = mysql_server_url();
        let name = format!(
            "sb_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = mysql_conn(&server)?;
        use mysql::prelude::Queryable;
        conn.query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .and_then(|()| conn.query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")))
            .map_err(|e| format!("creating database {name}: {e}"))?;
        let db = MysqlDb {
            url: format!("{server}/{name}"),
            name,
            server,
        };
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["migrate", "--mysql-url", &db.url, "--log", "warn"])
            .env_clear()
            .output()
            .map_err(|e| format!("running switchboard migrate: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "switchboard migrate failed for {test}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut c = db.conn();
        for ddl in switchboard_storage::mysql::schema::DIRECTORY_TABLES {
            c.query_drop(ddl).unwrap();
        }
        c.query_drop(
            "INSERT INTO users (id, name) VALUES (1,'alice'),(2,'bob'),(3,'carol'),(4,'dave'),\
             (5,'erin'),(6,'frank')",
        )
        .unwrap();
        drop(c);
        db.set_friendships(&[(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 6), (5, 6)]);
        Ok(db)
    }

    /// A connection to this database.
    pub fn conn(&self) -> mysql::Conn {
        mysql_conn(&self.url).unwrap()
    }

    /// Replaces every friendship with `pairs` (each written both ways, as
    /// docs/protocol.md, "Default MySQL schema", says the web app does).
    pub fn set_friendships(&self, pairs: &[(u64, u64)]) {
        use mysql::prelude::Queryable;
        let mut c = self.conn();
        c.query_drop("START TRANSACTION").unwrap();
        c.query_drop("DELETE FROM friendships").unwrap();
        for &(a, b) in pairs {
            c.exec_drop(
                "INSERT INTO friendships (user_id, friend_id) VALUES (?, ?), (?, ?)",
                (a, b, b, a),
            )
            .unwrap();
        }
        c.query_drop("COMMIT").unwrap();
    }

    /// The first column of the first row of `sql`, as a number.
    pub fn number(&self, sql: &str) -> u64 {
        use mysql::prelude::Queryable;
        self.conn().query_first(sql).unwrap().unwrap_or(0)
    }
}

impl Drop for MysqlDb {
    fn drop(&mut self) {
        use mysql::prelude::Queryable;
        if let Ok(mut c) = mysql_conn(&self.server) {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {}", self.name));
        }
    }
}
