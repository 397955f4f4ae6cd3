//! One server per data folder and per port: what a server claims before
//! it starts, so a second one refuses to start instead of sharing.
//!
//! **The data folder** is claimed with an exclusive lock on
//! `DATA_DIR/switchboard.lock` ([`DataDirLock`]), taken before storage
//! opens and held until storage is closed (the OS drops it when the
//! process ends, however it ends, so a crash never leaves a stale lock).
//! The file holds the holder's pid, for the message. This covers the
//! same-data-folder case fully: the lock is atomic and held for the whole
//! life of the store.
//!
//! **Ports**: every shard binds the client port with SO_REUSEPORT, which
//! also lets a second process bind it and silently take part of the
//! connections (and the admin port, half the admin calls). So before
//! binding, [`probe`] connects to each configured address once (loopback
//! for a wildcard address): if anything accepts, something listens there
//! and the server refuses to start. It connects rather than binds without
//! SO_REUSEPORT: after a crash, the dead server's accepted connections
//! linger in FIN_WAIT for up to a minute, bound to the port without
//! SO_REUSEADDR, and a bind probe would refuse the restart for that long
//! (the e2e restart test caught it). Port 0 is not probed (it picks a free
//! port). Something must keep listening for `PORT_PROBE_PATIENCE_MS` to
//! count: a server killed a moment ago still listens briefly (its io_uring
//! rings are torn down after it exits). A listener so overloaded that it
//! drops the probe's SYN for `PORT_PROBE_TIMEOUT_MS` goes unseen. The
//! probe runs twice: in `Server::start` before storage opens (a conflict
//! refuses before anything is opened), and on shard 0 right before it
//! binds (the first probe comes before storage opens and the executors
//! start, which can take a while). A race remains: two servers starting
//! in the same instant, in different data folders, can both pass the
//! second probe before either binds (a window of a few milliseconds). A
//! deploy that starts one server at a time never hits it.

use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Port;
use switchboard_storage::files;

use crate::error::Error;
use crate::limits;

/// The lock file's name in the data folder.
pub const LOCK_FILE: &str = files::LOCK_FILE_NAME;

/// The exclusive lock on a data folder; released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    /// The open lock file (the lock lives as long as it is open).
    _file: File,
}

impl DataDirLock {
    /// Locks `data_dir` (creating it if needed) for this process, or says
    /// which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, Error> {
        let path = data_dir.join(LOCK_FILE);
        let failed = |source: io::Error| Error::DataDirLock {
            path: path.clone(),
            source,
        };
        // Private (0700 folder, 0600 file), like everything in the folder.
        files::create_dir_private(data_dir).map_err(failed)?;
        // Not truncated on open: it holds the owner's pid until we own it.
        let mut file = files::create_file_private(&path).map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Error::DataDirInUse {
                    data_dir: data_dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{pid}"))
            .map_err(failed)?;
        Ok(DataDirLock { _file: file })
    }
}

/// Refuses `addr` when some process already listens there (see the module
/// doc). Other bind failures are left to the real bind, which reports
/// them with the shard.
pub fn probe(listener: Port, addr: SocketAddr) -> Result<(), Error> {
    if addr.port() == 0 {
        return Ok(());
    }
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let patience = Duration::from_millis(limits::PORT_PROBE_TIMEOUT_MS);
    // A server killed a moment ago may still listen for a while: the
    // kernel tears its io_uring rings down after the process is gone, and
    // their pending accepts keep the listening socket open until then. A
    // second server keeps listening; a dead one stops within this window.
    let give_up = Instant::now() + Duration::from_millis(limits::PORT_PROBE_PATIENCE_MS);
    loop {
        if TcpStream::connect_timeout(&target, patience).is_err() {
            return Ok(());
        }
        // Connected, and closed at once: the other side sees a connection
        // that never sends a byte.
        if Instant::now() >= give_up {
            return Err(Error::AddressInUse { listener, addr });
        }
        std::thread::sleep(Duration::from_millis(limits::PORT_PROBE_RETRY_MS));
    }
}
