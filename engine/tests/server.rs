//! Starting and stopping the server in this process, on real sockets and
//! port 0: `Server::start` returns once every shard listens; a stop asked
//! for through a `StopHandle` closes the listeners, ends the shards and
//! then closes storage (the same data folder opens again at once: redb
//! refuses a database file still open), and so does dropping a running
//! `Server`; a listener that cannot be bound is an `Error` returned to the
//! caller, never a process exit. Every wait has a timeout.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use switchboard_engine::error::Port;
use switchboard_engine::settings::Settings;
use switchboard_engine::{Error, Server};

/// Longest wait for a start or a stop.
const T: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-server-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two shards on loopback port 0, plus `extra` settings.
fn settings(data_dir: &Path, extra: &[(&str, String)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("SWITCHBOARD_LISTEN", "127.0.0.1:0".to_string()),
        ("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ("SWITCHBOARD_SHARDS", "2".to_string()),
        ("SWITCHBOARD_DATA_DIR", data_dir.display().to_string()),
        ("SWITCHBOARD_TOKEN_SECRET", "test-secret".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.clone());
    }
    Settings::parse(&[], &env).unwrap()
}

/// Runs `f` on its own thread and waits at most `T` for it.
fn within<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(T)
        .unwrap_or_else(|_| panic!("{what} took longer than {T:?}"))
}

fn start(data_dir: &Path, extra: &[(&str, String)]) -> Result<Server, Error> {
    let settings = settings(data_dir, extra);
    within("start", move || Server::start(settings))
}

/// Sends `GET /ping` on `stream` and returns the status line.
fn ping(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(T)).unwrap();
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_stop_closes_the_listeners_then_storage() {
    let dir = temp_dir("stop");
    let server = start(&dir, &[]).expect("server starts");
    let (client, admin) = (server.client_addr().unwrap(), server.admin_addr());
    let mut conn = TcpStream::connect(client).unwrap();
    assert_eq!(ping(&mut conn), "HTTP/1.1 200 OK");

    let stop = server.stop_handle();
    stop.stop();
    within("stop", move || server.wait()).expect("a clean stop");
    for addr in [client, admin] {
        let refused = TcpStream::connect(addr).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{addr}");
    }
    // Storage was closed: the same data folder opens again.
    let again = start(&dir, &[]).expect("server starts again on the same data folder");
    within("second stop", move || again.stop()).expect("a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stop with nothing to drain can end a shard's executor in the turn it
/// sees the stop. Both listeners must be closed by then (a listener left in
/// a task that never ran again would stay bound until the process exits).
/// Tried with one shard, where nothing else makes the executor wait, and two.
#[test]
fn a_stop_with_nothing_to_drain_closes_both_listeners() {
    for shards in ["1", "2"] {
        let dir = temp_dir(&format!("idle-stop-{shards}"));
        let server =
            start(&dir, &[("SWITCHBOARD_SHARDS", shards.to_string())]).expect("server starts");
        let (client, admin) = (server.client_addr().unwrap(), server.admin_addr());
        within("stop", move || server.stop()).expect("a clean stop");
        for addr in [client, admin] {
            let refused = TcpStream::connect(addr).map(|_| ()).unwrap_err();
            assert_eq!(
                refused.kind(),
                ErrorKind::ConnectionRefused,
                "{shards} shards: {addr} still accepts after the stop"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A server dropped without `stop` or `wait` stops as if asked: its
/// listeners close, and its storage and the data folder's lock are
/// released (the same folder opens again at once).
#[test]
fn dropping_a_running_server_stops_it() {
    let dir = temp_dir("drop");
    let server = start(&dir, &[]).expect("server starts");
    let (client, admin) = (server.client_addr().unwrap(), server.admin_addr());
    within("drop", move || drop(server));
    for addr in [client, admin] {
        let refused = TcpStream::connect(addr).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{addr}");
    }
    let again = start(&dir, &[]).expect("server starts again on the same data folder");
    within("second stop", move || again.stop()).expect("a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listener_that_cannot_be_bound_is_an_error_and_what_started_stops() {
    let dir = temp_dir("bind");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr: SocketAddr = taken.local_addr().unwrap();
    for (which, setting) in [
        (Port::Admin, "SWITCHBOARD_ADMIN_LISTEN"),
        (Port::Client, "SWITCHBOARD_LISTEN"),
    ] {
        // Found by the probe before any shard binds (a second switchboard
        // would otherwise share the port through SO_REUSEPORT).
        match start(&dir, &[(setting, taken_addr.to_string())]) {
            Err(Error::AddressInUse { listener, addr }) => {
                assert_eq!((listener, addr), (which, taken_addr));
            }
            Err(e) => panic!("{setting}: expected an address-in-use error, got {e}"),
            Ok(_) => panic!("{setting}: started on a port in use"),
        }
    }
    // Storage was closed each time: the data folder opens again.
    let server = start(&dir, &[]).expect("server starts");
    within("stop", move || server.stop()).expect("a clean stop");
    let _ = std::fs::remove_dir_all(&dir);
}
