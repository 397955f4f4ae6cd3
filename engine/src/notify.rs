//! Saying "serving" to whoever waits for it: systemd's readiness protocol
//! (`sd_notify`, without libsystemd), and the pipe of `switchboard
//! takeover`.
//!
//! Under `Type=notify` the server sends `READY=1` and `MAINPID=` its own
//! pid once it serves (systemd's start waits for it). After a hand-over
//! (`handover.rs`) the unit's main process is the new one: `switchboard
//! takeover` (systemd's `ExecReload`) sends `MAINPID=` the new pid and
//! waits until systemd has read it (`BARRIER=1`) before it exits, so when
//! systemd sees the reload end, the old process's exit 0 is already not
//! the main process's. The unit needs `NotifyAccess=all`: neither sender
//! is the process systemd started. Without `$NOTIFY_SOCKET` nothing is
//! sent.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, warn};

/// The variable `switchboard takeover` names its pipe's write end in.
pub const READY_FD_VAR: &str = "SWITCHBOARD_TAKEOVER_READY_FD";

/// How long the barrier waits for systemd to read what came before it.
const BARRIER_WAIT: Duration = Duration::from_secs(5);

/// Tells systemd this process serves and is the unit's main process, then
/// `switchboard takeover`, if it started this process (its pipe gets
/// `serving` and is closed; once per process).
pub fn ready() {
    send(&format!("READY=1\nMAINPID={}\n", std::process::id()), &[]);
    static SAID: AtomicBool = AtomicBool::new(false);
    if SAID.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some(fd) = std::env::var(READY_FD_VAR)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: the descriptor `switchboard takeover` left open across exec
    // for this process alone; owned here from now on (closed on drop).
    let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) = std::fs::File::from(pipe).write_all(b"serving\n") {
        warn!("telling switchboard takeover this server serves: {e}");
    }
}

/// Tells systemd `pid` is the unit's main process, and waits (at most
/// `BARRIER_WAIT`) until systemd has read it.
pub fn main_pid(pid: u32) {
    if send(&format!("MAINPID={pid}\n"), &[]) {
        barrier();
    }
}

/// `BARRIER=1` with a pipe's write end: systemd closes it once it has
/// handled every message before it, which the read end sees as EOF.
fn barrier() {
    let Ok((read_end, write_end)) = pipe() else {
        return;
    };
    if !send("BARRIER=1\n", &[write_end.as_raw_fd()]) {
        return;
    }
    drop(write_end);
    let mut poll = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let n = unsafe { libc::poll(&mut poll, 1, BARRIER_WAIT.as_millis() as i32) };
    if n <= 0 {
        warn!("sd_notify: systemd did not answer the barrier within {BARRIER_WAIT:?}");
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just made and are owned here alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) })
}

/// Sends `state` (with `fds`) to `$NOTIFY_SOCKET`; whether it was sent.
fn send(state: &str, fds: &[i32]) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (`@name`).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.connect_addr(&addr)?;
            }
            None => socket.connect(&path)?,
        }
        crate::handover::send_with_fds(socket.as_raw_fd(), state.as_bytes(), fds)
    });
    match sent {
        Ok(()) => {
            debug!("sd_notify: {}", state.trim_end().replace('\n', " "));
            true
        }
        Err(e) => {
            warn!("sd_notify to {}: {e}", path.to_string_lossy());
            false
        }
    }
}
