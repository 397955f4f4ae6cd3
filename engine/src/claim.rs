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
//! binding, [`probe`] binds each configured address once without
//! SO_REUSEPORT: if anything listens there, the kernel says EADDRINUSE and
//! the server refuses to start. Port 0 is not probed (it picks a free
//! port). A race remains: two servers starting in the same instant, in
//! different data folders, can both pass the probe before either binds
//! (a window of a few milliseconds, between the probe and shard 0's
//! bind). A deploy that starts one server at a time never hits it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use switchboard_io::Listener;

use crate::error::Error;

/// The lock file's name in the data folder.
pub const LOCK_FILE: &str = "switchboard.lock";

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
        std::fs::create_dir_all(data_dir).map_err(failed)?;
        // Not truncated on open: it holds the owner's pid until we own it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
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
pub fn probe(listener: Listener, addr: SocketAddr) -> Result<(), Error> {
    if addr.port() == 0 {
        return Ok(());
    }
    match TcpListener::bind(addr) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(Error::AddressInUse { listener, addr })
        }
        // Dropped at once: closed before the shards bind.
        Ok(_) | Err(_) => Ok(()),
    }
}
