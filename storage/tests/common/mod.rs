//! Helpers shared by the integration tests: unique temporary folders and
//! waiting on a future with a timeout (no wait in these tests is unbounded).

#![allow(dead_code)] // Each test binary uses a different subset.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_shards::model::{StorageJob, StorageOutput, StorageResult};
use switchboard_storage::{EmbeddedConfig, Store};

pub mod mysql_db;

/// Starts this test binary again as a child running only the test `name`
/// (a child half that the caller later kills), with `env` set; returns it
/// and its stdout's lines, read on a helper thread so that every wait on
/// them can be bounded (`recv_timeout`).
pub fn spawn_child(
    name: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines_rx)
}

/// Longest any single wait in these tests may take before it fails.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// A folder under the system temp dir, unique to this process and test,
/// removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "switchboard-storage-{name}-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A future that becomes ready after a duration, woken by a helper thread
/// that exits as soon as the future is dropped.
struct Timeout {
    after: Duration,
    fired: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
    cancel: Option<mpsc::Sender<()>>,
}

impl Future for Timeout {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.cancel.is_none() {
            let (tx, rx) = mpsc::channel::<()>();
            self.cancel = Some(tx);
            let (fired, waker, after) = (self.fired.clone(), self.waker.clone(), self.after);
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                    fired.store(true, Ordering::Release);
                    if let Some(w) = waker.lock().unwrap().take() {
                        w.wake();
                    }
                }
            });
        }
        Poll::Pending
    }
}

/// Runs `future` to completion on this thread; panics after [`WAIT_MAX`].
pub fn wait<F: Future>(future: F) -> F::Output {
    let timeout = Timeout {
        after: WAIT_MAX,
        fired: Arc::new(AtomicBool::new(false)),
        waker: Arc::new(Mutex::new(None)),
        cancel: None,
    };
    futures_lite::future::block_on(futures_lite::future::or(
        async { Some(future.await) },
        async {
            timeout.await;
            None
        },
    ))
    .expect("wait timed out")
}

/// A deadline comfortably in the future.
pub fn later() -> Instant {
    Instant::now() + WAIT_MAX
}

/// Submits a job and waits for its result.
pub fn run(store: &Store, job: StorageJob) -> StorageResult {
    wait(store.submit(job, later()).expect("submit"))
}

/// Submits a job, waits, and expects success.
pub fn ok(store: &Store, job: StorageJob) -> StorageOutput {
    let name = job.name();
    run(store, job).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Default test settings in `dir`: demo directory, 2 db threads.
pub fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig::new(dir.join("data"))
}

pub fn open(dir: &Path) -> Store {
    Store::open_embedded(config(dir)).expect("open")
}
