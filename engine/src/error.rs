//! The engine's errors: why the server could not start or had to stop.
//! Each says what failed, where, and what the OS or library said; `main`
//! prints one and exits non-zero. (Settings have their own text errors:
//! `settings::Settings::parse`.)

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use switchboard_io::tls::TlsError;
use switchboard_shards::model::ShardId;
use switchboard_storage::OpenError;

/// What stopped the server from starting, or ended it.
#[derive(Debug)]
pub enum Error {
    /// The embedded store could not be opened (nothing else was started).
    EmbeddedStore {
        /// Its data folder.
        data_dir: PathBuf,
        /// Why.
        source: OpenError,
    },
    /// The MySQL store could not be opened (nothing else was started).
    MysqlStore {
        /// Why.
        source: OpenError,
    },
    /// Another process holds the data folder's lock: another server runs
    /// on it.
    DataDirInUse {
        /// The data folder.
        data_dir: PathBuf,
        /// The pid written in the lock file by its holder, if readable.
        pid: Option<u32>,
    },
    /// The data folder's lock file could not be created, locked or
    /// written.
    DataDirLock {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The data folder could not be made private (created 0700, its
    /// files set to 0600).
    DataDirMode {
        /// The data folder.
        data_dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Some process already listens on a configured address: another
    /// server (SO_REUSEPORT would let us share its port silently).
    AddressInUse {
        /// Which listener's address.
        listener: Port,
        /// The address.
        addr: SocketAddr,
    },
    /// The TLS certificate or key could not be used (nothing else was
    /// started).
    Tls {
        /// Why.
        source: TlsError,
    },
    /// The SIGTERM and SIGINT handlers could not be installed.
    Signals {
        /// What the OS said.
        source: io::Error,
    },
    /// The watchdog thread could not be started.
    Watchdog {
        /// What the OS said.
        source: io::Error,
    },
    /// A hand-over (`serve --takeover`) could not be made: this process
    /// does not serve (the old one, if it reached it, serves on).
    Handover {
        /// Why.
        why: String,
    },
    /// Cluster mode: NATS, or its JetStream buckets, could not be reached
    /// at start.
    Cluster {
        /// Why.
        why: String,
    },
    /// The token secret could not be read from or created in the data
    /// folder.
    Secret {
        /// The data folder.
        data_dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// A shard's executor could not be started.
    Executor {
        /// The shard.
        shard: ShardId,
        /// What glommio said.
        source: glommio::GlommioError<()>,
    },
    /// A shard could not bind one of its listeners.
    Bind {
        /// The shard that tried.
        shard: ShardId,
        /// Which listener.
        listener: Port,
        /// The address it was given.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// A shard ended while the server was running, without a stop being
    /// asked for: its executor failed or panicked (`source`), or its main
    /// task returned.
    ShardEnded {
        /// The shard.
        shard: ShardId,
        /// What glommio said when its executor was joined, if anything.
        source: Option<glommio::GlommioError<()>>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::EmbeddedStore { data_dir, source } => write!(
                f,
                "cannot open the embedded store in {}: {source}",
                data_dir.display()
            ),
            Error::MysqlStore { source } => write!(f, "cannot open the MySQL store: {source}"),
            Error::DataDirInUse { data_dir, pid } => {
                write!(
                    f,
                    "data folder {} is in use by another switchboard",
                    data_dir.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                write!(
                    f,
                    "; one server per data folder (lock: {})",
                    crate::claim::LOCK_FILE
                )
            }
            Error::DataDirLock { path, source } => {
                write!(
                    f,
                    "cannot lock the data folder with {}: {source}",
                    path.display()
                )
            }
            Error::DataDirMode { data_dir, source } => write!(
                f,
                "cannot make the data folder {} private (0700, files 0600): {source}",
                data_dir.display()
            ),
            Error::AddressInUse { listener, addr } => write!(
                f,
                "cannot listen on {addr} ({} listener): another process listens there \
                 (another switchboard?); refusing to share the port",
                listener_name(*listener)
            ),
            Error::Tls { source } => write!(f, "cannot start TLS: {source}"),
            Error::Signals { source } => {
                write!(f, "cannot install the SIGTERM/SIGINT handlers: {source}")
            }
            Error::Watchdog { source } => {
                write!(f, "cannot start the watchdog thread: {source}")
            }
            Error::Handover { why } => write!(f, "hand-over: {why}"),
            Error::Cluster { why } => write!(f, "cluster: {why}"),
            Error::Secret { data_dir, source } => write!(
                f,
                "cannot keep the token secret in {}: {source}",
                data_dir.display()
            ),
            Error::Executor { shard, source } => {
                write!(f, "cannot start executor shard-{shard}: {source}")
            }
            Error::Bind {
                shard,
                listener,
                addr,
                source,
            } => {
                let which = listener_name(*listener);
                write!(
                    f,
                    "cannot listen on {addr} ({which} listener, shard-{shard}): {source}"
                )
            }
            Error::ShardEnded {
                shard,
                source: Some(source),
            } => write!(f, "shard-{shard} failed: {source}"),
            Error::ShardEnded {
                shard,
                source: None,
            } => write!(f, "shard-{shard} ended while the server was running"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::EmbeddedStore { source, .. } | Error::MysqlStore { source } => Some(source),
            Error::Secret { source, .. } | Error::Bind { source, .. } => Some(source),
            Error::DataDirLock { source, .. } | Error::Signals { source } => Some(source),
            Error::DataDirMode { source, .. } => Some(source),
            Error::Watchdog { source } => Some(source),
            Error::DataDirInUse { .. } | Error::AddressInUse { .. } => None,
            Error::Handover { .. } | Error::Cluster { .. } => None,
            Error::Executor { source, .. } => Some(source),
            Error::Tls { source } => Some(source),
            Error::ShardEnded { source, .. } => source.as_ref().map(|e| e as _),
        }
    }
}

/// Which of the server's listeners (for errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The plain client listener (`SWITCHBOARD_LISTEN`).
    Client,
    /// The TLS client listener (`SWITCHBOARD_TLS_LISTEN`).
    Tls,
    /// The admin listener (`SWITCHBOARD_ADMIN_LISTEN`).
    Admin,
}

fn listener_name(listener: Port) -> &'static str {
    match listener {
        Port::Client => "client",
        Port::Tls => "TLS client",
        Port::Admin => "admin",
    }
}
