//! The deploy path an operator runs (docs/operations.md, "Deploying"):
//! `switchboard takeover` (systemd's `ExecReload`), the `sd_notify`
//! words systemd follows the new process by, and the hand-overs that must
//! not happen (another shard count) or have nothing to take over from.
//! The hand-over under live traffic is `takeover.rs`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{temp_dir, Server};

/// The data folder lock's holder (its pid), as the file says.
fn lock_holder(server: &Server) -> u32 {
    let text = std::fs::read_to_string(server.data_dir.join("switchboard.lock")).unwrap();
    text.trim().parse().unwrap()
}

/// Whether process `pid` still runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// SIGTERMs a process this test did not start as a child (the detached
/// one `switchboard takeover` started), and waits until it is gone.
struct Detached(u32);

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.0.to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while running(self.0) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A stand-in for systemd's notify socket: every datagram, in order
/// (a descriptor sent with one, the barrier's pipe, is closed on receipt,
/// as systemd does once it has handled what came before).
struct Notified(Arc<Mutex<Vec<String>>>);

impl Notified {
    fn listen(path: &std::path::Path) -> Notified {
        let socket = UnixDatagram::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = socket.recv(&mut buf) {
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Notified(seen)
    }

    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (at most 30 s) until `n` datagrams came.
    fn until(&self, n: usize) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(30);
        while self.seen().len() < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.seen()
    }
}

both_stores!(takeover_command_hands_over_and_tells_systemd);

/// On MySQL with a configured token secret the data folder holds no lock
/// (only the takeover socket): the command must not need one.
fn takeover_command_hands_over_and_tells_systemd(backend: &common::Backend) {
    let dir = temp_dir("deploy-notify");
    let notify_path = dir.join("notify.sock");
    let notify = Notified::listen(&notify_path);
    let data = dir.join("data");
    let notify_env = notify_path.display().to_string();
    let mut old = backend.start(&data, &[("NOTIFY_SOCKET", &notify_env)]);
    let first = notify.until(1);
    assert_eq!(first, [format!("READY=1\nMAINPID={}\n", old.pid())]);

    let mut tab = old.connect(1, "deploy");
    let sid = tab.sid.clone();

    // systemd's ExecReload: the unit's environment, `switchboard takeover`.
    // Its stderr is the new server's too (the journal, under systemd): a
    // file here, since the new server keeps it open after the command
    // returned.
    let log_path = dir.join("takeover.log");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("takeover")
        .env_clear()
        .envs(old.env.iter().cloned())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .output()
        .expect("run switchboard takeover");
    let took = started.elapsed();
    // What systemd had read when the reload command ended: the new main
    // pid, acknowledged by the barrier the command waited for.
    let seen = notify.seen();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        out.status.success(),
        "takeover: {}\n{stdout}\n{log}",
        out.status
    );
    let new_pid: u32 = stdout
        .strip_prefix("switchboard: pid ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout:?}"));
    let _new = Detached(new_pid);
    assert_ne!(new_pid, old.pid());
    if backend.mysql().is_none() {
        assert_eq!(lock_holder(&old), new_pid);
    }
    assert_eq!(
        seen,
        [
            format!("READY=1\nMAINPID={}\n", old.pid()),
            format!("READY=1\nMAINPID={new_pid}\n"),
            format!("MAINPID={new_pid}\n"),
            "BARRIER=1\n".to_string(),
        ],
        "the datagrams systemd got, in order, before the reload ended"
    );
    assert!(
        took < Duration::from_secs(5),
        "the barrier was answered at once, yet takeover took {took:?}: {log}"
    );
    let status = old.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process ended with {status:?}"
    );
    // The same tab, the same sid, on the same port, served by the new one.
    let events = tab.poll(&old, 0);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(tab.sid, sid);
    assert!(running(new_pid));
}

#[test]
fn takeover_command_reports_a_new_server_that_fails() {
    let dir = temp_dir("deploy-fails");
    let old = Server::start(&dir, &[]);
    let mut tab = old.connect(1, "stays");
    let mut env = old.env.clone();
    env.retain(|(k, _)| k != "SWITCHBOARD_SHARDS");
    env.push(("SWITCHBOARD_SHARDS".into(), "1".into()));
    let log_path = dir.join("takeover-fails.log");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("takeover")
        .env_clear()
        .envs(env)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .output()
        .expect("run switchboard takeover");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("before it served"), "{log}");
    assert!(log.contains("refused: it runs 1 shards"), "{log}");
    assert_eq!(lock_holder(&old), old.pid());
    assert!(tab.poll(&old, 0).is_empty());
}

#[test]
fn takeover_with_another_shard_count_is_refused_and_the_old_serves_on() {
    let dir = temp_dir("deploy-refused");
    let old = Server::start(&dir, &[]);
    let mut tab = old.connect(2, "stays");
    let mut env = old.env.clone();
    env.retain(|(k, _)| k != "SWITCHBOARD_SHARDS");
    env.push(("SWITCHBOARD_SHARDS".into(), "1".into()));
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--takeover"])
        .env_clear()
        .envs(env)
        .output()
        .expect("run switchboard serve --takeover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused: it runs 1 shards, this server 2"),
        "{stderr}"
    );
    // Still the old server, the tab still known.
    assert_eq!(lock_holder(&old), old.pid());
    let events = tab.poll(&old, 0);
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn takeover_with_nothing_running_starts_as_usual() {
    let dir = temp_dir("deploy-fresh");
    let server = Server::start(&dir, &[("SWITCHBOARD_TAKEOVER", "on")]);
    let mut tab = server.connect(1, "fresh");
    assert!(tab.poll(&server, 0).is_empty());
    assert!(
        dir.join("switchboard.takeover.sock").exists(),
        "a server started with --takeover can be taken over in turn"
    );
}

both_stores!(a_hand_over_keeps_tabs_messages_and_history);

/// One hand-over on either store: the tabs keep their sids and what they
/// had not read yet, the new process stores and delivers, and history
/// holds every message once.
fn a_hand_over_keeps_tabs_messages_and_history(backend: &common::Backend) {
    let dir = temp_dir("deploy-store");
    let mut old = backend.start(&dir, &[]);
    let mut alice = old.connect(1, "a");
    let mut bob = old.connect(2, "b");
    let sent = old.get(
        "/send",
        &[
            ("sid", &alice.sid),
            ("to", "2"),
            ("text", "before"),
            ("cid", "x1"),
        ],
    );
    assert_eq!(sent["ok"], true, "{sent}");
    let new = old
        .takeover(std::path::Path::new(env!("CARGO_BIN_EXE_switchboard")), &[])
        .listening(Duration::from_secs(30))
        .unwrap_or_else(|(_, why)| panic!("the new process did not listen: {why:?}"));
    let status = old.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "old: {status:?}");
    assert_eq!((new.addr, new.admin), (old.addr, old.admin));
    // Bob had not polled: the message waits in his buffer, handed over.
    let got = common::messages(&bob.poll(&new, 0));
    assert_eq!(got.len(), 1, "{got:?}");
    let sent = new.get(
        "/send",
        &[
            ("sid", &bob.sid),
            ("to", "1"),
            ("text", "after"),
            ("cid", "x2"),
        ],
    );
    assert_eq!(sent["ok"], true, "{sent}");
    let texts: Vec<String> = common::messages(&alice.poll(&new, 0))
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(texts, ["before", "after"]);
    let history = new.get("/history", &[("sid", &alice.sid), ("with", "2")]);
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["before", "after"], "{history}");
}
