//! systemd's readiness protocol (`sd_notify`), without libsystemd: a
//! datagram to `$NOTIFY_SOCKET` when the server serves. Under
//! `Type=notify` it says `READY=1` (systemd's start waits for it) and
//! `MAINPID=` this process: after a hand-over (`handover.rs`) the unit's
//! main process is the new one, so the old one's exit 0 does not end the
//! unit (the unit needs `NotifyAccess=all`, since the new process is not
//! the one systemd started). Without `$NOTIFY_SOCKET` it does nothing.

use std::os::unix::net::UnixDatagram;

use log::{debug, warn};

/// Tells systemd this process serves and is the unit's main process.
pub fn ready() {
    send(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (`@name`).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    match sent {
        Ok(_) => debug!("sd_notify: {}", state.replace('\n', " ")),
        Err(e) => warn!("sd_notify to {}: {e}", path.to_string_lossy()),
    }
}
