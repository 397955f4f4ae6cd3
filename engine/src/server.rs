//! Starting, running and stopping the server.
//!
//! **Start**, in dependency order ([`Server::start`]): the claims
//! (`claim.rs`: the data folder's lock, then a probe of each configured
//! port, so a second server refuses to start before it opens anything);
//! storage and the token secret; then one pinned glommio executor per
//! shard, each joining the full mesh and starting its runtime (outbox
//! drainers, mesh receivers, the tick); then the listeners: shard 0 probes
//! the ports again and binds the client listener first (so a port 0
//! setting means one port for every shard) and the admin listener, then
//! every other shard binds the same client port (SO_REUSEPORT). `start`
//! returns once every shard listens, having started the `watchdog` thread
//! (`supervise.rs`: a stuck shard or a dead storage thread ends the
//! process).
//! When anything fails on the way, what was started is stopped as below
//! and the error is returned.
//!
//! **Stop**, in the reverse order ([`Server::stop`]; [`Server::wait`] also
//! stops when a shard fails; SIGTERM and SIGINT in the binary): the stop
//! flag ([`StopHandle`]) is set and each shard woken; it stops accepting (its listeners close), and drains
//! (`stop.rs`): held polls are answered, connections close after their
//! last answer, it waits for every other shard to get that far and then
//! for its storage jobs in flight, and returns, which ends its executor.
//! The drain is bounded (`DRAIN_MS_MAX`, longer while a call is in
//! flight: `limits::drain_calls_ms`); a connection still open past it
//! keeps its socket until the process exits (glommio does not drop the
//! detached tasks of an executor that has ended). For the same reason a
//! shard that has ended never reads its mesh channels again, yet they do
//! not close (its receiving tasks are never dropped): a message sent to it
//! then is lost without the sender knowing, and an outbox drainer facing
//! its full channel waits until its own executor ends. Only messages that
//! no longer matter are sent by then: no shard ends before every shard is
//! past its connections (`stop.rs`, phase 2), so what is left is
//! deliveries and presence from peers' storage results and ticks, for
//! sessions that end with the process anyway (messages are stored first).
//! Only when the drain bound ran out can a peer's connection still call
//! it: that call is answered only by the caller's call deadline, if the
//! caller's shard still runs then. Then the executors are joined, the
//! store is shut down (its db threads answer the jobs still queued, are
//! joined, and the database is closed), and last the data folder's lock
//! is released.
//!
//! Invariants: storage outlives every executor. A shard's failure reaches
//! the starting thread as an [`Error`], and every shard reports its end,
//! whatever the cause (a drop guard: an executor that never started
//! reports too), so [`Server::wait`] always learns of it. The exception is
//! a panic on a running executor outside the supervised region, a stuck
//! shard or a dead storage thread (the watchdog), or a mesh peer gone
//! while no stop was asked for: the process exits at once
//! ([`crate::supervise`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::LocalReceiver;
use glommio::net::{TcpListener, TcpStream};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use log::{debug, error, info, warn};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use switchboard_io::admission::{self, Admission, Refused, Ticket};
use switchboard_io::serve_movable;
use switchboard_io::tls::Tls;
use switchboard_io::{AdminGate, CloseReason, Limits, Listener, Moved, Resume, Served};
use switchboard_shards::model::ShardId;
use switchboard_shards::{Config, Shard};
use switchboard_storage::{files, Directory, EmbeddedConfig, MysqlConfig, Store};

use crate::claim::{self, DataDirLock};
use crate::demo::Demo;
use crate::error::{Error, Port};
use crate::handler::{ConnHandler, EdgeStats};
use crate::handover;
use crate::limits;
use crate::logger::trace::TraceConfig;
use crate::mesh::{self, Mesh, MeshEnds};
use crate::metrics::{Refusal, Series};
use crate::runtime::{
    Clock, MeshMsg, MovedConn, RuntimeParts, RuntimeStats, ShardRuntime, StatsSlot,
};
use crate::settings::{Settings, TlsMode};
use crate::signals::{ReloadSignal, StopSignals, StopSlot, TlsSlot};
pub use crate::stop::StopHandle;
use crate::stop::{self, ConnStop, MainPhase, OpenConn, Phase};
use crate::supervise::{self, Faults, Heartbeats};

/// What every shard shares, read-only.
struct Shared {
    settings: Settings,
    secret: Arc<[u8]>,
    /// Storage; shut down after every executor has ended.
    store: Store,
    clock: Clock,
    /// The client listener's address once shard 0 bound it (port 0 picks
    /// one port for all shards).
    client_addr: OnceLock<SocketAddr>,
    /// The TLS client listener's address once shard 0 bound it.
    tls_addr: OnceLock<SocketAddr>,
    /// TLS (`None`: off): the certificate every shard's handshakes use,
    /// reloaded by SIGHUP.
    tls: Option<Arc<Tls>>,
    /// Demo mode (`None`: off).
    demo: Option<Arc<Demo>>,
    /// Set when the server is to stop.
    stop: StopHandle,
    /// Every shard's runtime counters, in shard order.
    stats: Arc<[RuntimeStats]>,
    /// Every shard's edge counters (accept, token lookups), in shard order.
    edge: Arc<[EdgeStats]>,
    /// Every shard's last tick, for the watchdog.
    heartbeats: Arc<Heartbeats>,
    /// Accept loops start accepting once it opens: at once, unless this
    /// process takes over from another and waits for its word (`Go`).
    gate: Gate,
}

/// What a server starts from besides its settings when it takes over
/// from another process (`handover.rs`), or serves again after a hand-over
/// that failed: the shards' state and the listening sockets.
pub struct Inherited {
    /// Each shard's state, in shard order (one per shard of the settings).
    pub shards: Vec<Shard>,
    /// The listening sockets, each with the shard that accepted on it.
    pub listeners: Vec<HandedListener>,
    /// The accept loops wait for it to open.
    pub gate: Gate,
}

/// A listening socket handed from one process (or server) to the next.
#[derive(Debug)]
pub struct HandedListener {
    /// The shard that accepts on it.
    pub shard: ShardId,
    /// Which listener it is.
    pub port: Port,
    /// The socket (listening; `SO_REUSEPORT` for the client ports).
    pub fd: OwnedFd,
}

/// How a server ended ([`Server::wait_outcome`]).
pub enum Ended {
    /// It stopped (a stop was asked for, not a hand-over).
    Stopped,
    /// It settled and gave up its state and listeners for a hand-over:
    /// nothing serves until they are handed on.
    HandedOver(HandedOver),
}

/// A server's state and listeners after a hand-over stop.
pub struct HandedOver {
    /// Each shard's serialised state (`Shard` as JSON), in shard order.
    pub states: Vec<Vec<u8>>,
    /// Every listening socket.
    pub listeners: Vec<HandedListener>,
    /// Sessions and tabs in the state.
    pub sessions: usize,
    pub tabs: usize,
}

/// Accept loops wait for it (see [`Shared::gate`]). Clones share it.
#[derive(Clone, Debug)]
pub struct Gate(Arc<std::sync::atomic::AtomicBool>);

impl Gate {
    /// A gate already open.
    pub fn open_now() -> Gate {
        Gate(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }

    /// A closed gate, opened by [`Gate::open`].
    pub fn closed() -> Gate {
        Gate(Arc::new(std::sync::atomic::AtomicBool::new(false)))
    }

    /// Opens it (from any thread).
    pub fn open(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_open(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once open (checked every millisecond: it is closed only
    /// for the moment between a new process's `Ready` and the old one's
    /// `Go`).
    async fn opened(&self) {
        while !self.is_open() {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What a shard tells the thread that started the server. At most four
/// per shard (listening or failed, handed over, then ended), so the channel's lack of a
/// bound costs nothing.
enum Report {
    /// It listens. Shard 0 also says where.
    Listening {
        /// The plain client listener (`None`: off).
        client: Option<SocketAddr>,
        /// The TLS client listener (`None`: off).
        tls: Option<SocketAddr>,
        admin: Option<SocketAddr>,
    },
    /// It could not start; it ends next.
    Failed(Error),
    /// It settled for a hand-over: its state (or why none), and
    /// duplicates of its listening sockets.
    HandedOver {
        shard: ShardId,
        state: Result<(Vec<u8>, usize, usize), String>,
        listeners: Vec<(Port, OwnedFd)>,
    },
    /// Its main task ended or was dropped (sent by [`Reporter`]'s drop).
    Ended { shard: ShardId },
}

/// A shard's line to the starting thread. Owned by the shard's main task
/// alone: when every reporter is gone, every shard has ended.
struct Reporter {
    shard: ShardId,
    tx: mpsc::Sender<Report>,
    /// Where the shard's stop phase is published ([`Phase::Ended`] on drop).
    stop: StopHandle,
}

impl Reporter {
    fn send(&self, report: Report) {
        // The receiver lives as long as the `Server`, which outlives us.
        let _ = self.tx.send(report);
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.set_phase(self.shard, Phase::Ended);
        self.send(Report::Ended { shard: self.shard });
    }
}

/// A running server. [`run`] is `start` then `wait`, with the signal
/// thread (`signals.rs`) holding a [`StopHandle`]; tests call
/// [`Server::stop`] or [`StopHandle::stop`].
///
/// Dropping a server that was neither stopped nor waited for stops it the
/// same way, blocking until its executors are joined and its storage is
/// closed (bounded like any stop; a failure is logged, there is no one to
/// return it to). So its executors, its store and the data folder's lock
/// never outlive it, also when a test fails while holding one.
pub struct Server {
    /// The client listener's address (shared by every shard; `None`: off).
    client_addr: Option<SocketAddr>,
    /// The TLS client listener's address (`None`: no TLS).
    tls_addr: Option<SocketAddr>,
    /// The admin listener's address (shard 0).
    admin_addr: SocketAddr,
    /// The shards; `None` once [`Server::wait`] took them to shut down.
    shards: Option<Shards>,
}

/// The started shards, as the starting thread sees them.
struct Shards {
    shared: Arc<Shared>,
    /// Every shard's reports; disconnected once every shard has ended.
    reports: mpsc::Receiver<Report>,
    /// Each started shard's executor, in shard order.
    executors: Vec<ExecutorJoinHandle<()>>,
    /// The data folder's lock (`None`: the data folder is not used),
    /// released once storage is closed.
    lock: Option<DataDirLock>,
    /// What each shard gave up in a hand-over stop, as reported.
    handed: Vec<Report>,
}

/// Opens storage, starts every shard and runs the server until it stops
/// (SIGTERM or SIGINT, or a shard failing; see [`Server`]). Prints the
/// listening line scripts and tests wait for.
pub fn run(settings: Settings) -> Result<(), Error> {
    // Before the start, so a signal during it is kept, not fatal.
    let signals = StopSignals::listen()?;
    let reload = match settings.tls {
        Some(_) => Some(ReloadSignal::listen()?),
        None => None,
    };
    let stop_timeout = limits::stop_timeout_ms(settings.storage_timeout_ms);
    let stop_slot = StopSlot::default();
    let tls_slot = TlsSlot::default();
    signals.stop_on_signal(stop_slot.clone(), Duration::from_millis(stop_timeout))?;
    if let Some(reload) = reload {
        reload.reload_on_signal(tls_slot.clone())?;
    }
    // Cluster mode: NATS reached, the id checked and this node's heartbeat
    // written before anything is taken over or served (bounded), and kept
    // for the process's life, across a failed hand-over's re-serve.
    let mut cluster = Departure {
        link: match &settings.cluster {
            None => None,
            Some(c) => {
                let listen = settings.listen.map(|a| a.to_string());
                let link = crate::cluster::link::Link::start(
                    c,
                    listen,
                    settings.shards,
                    settings.takeover,
                )
                .map_err(|why| Error::Cluster { why })?;
                Some(link)
            }
        },
        delete: true,
    };
    // `--takeover`: the running server's state and sockets, until ready.
    let (mut taken, mut inherited) = match settings.takeover {
        true => match handover::take_over(&settings) {
            Ok(Some((taken, inherited))) => (Some(taken), Some(inherited)),
            Ok(None) => (None, None),
            Err(e) => {
                // The old process, if any, serves on under this id.
                cluster.delete = false;
                return Err(e);
            }
        },
        false => (None, None),
    };
    loop {
        let server = match Server::start_from(settings.clone(), inherited.take()) {
            Ok(server) => server,
            Err(e) => {
                if let Some(mut t) = taken.take() {
                    // The old process serves on, heartbeating under this id.
                    cluster.delete = false;
                    t.fail(&e.to_string());
                }
                return Err(e);
            }
        };
        stop_slot.set(server.stop_handle());
        if let Some(tls) = server.tls() {
            tls_slot.set(tls);
        }
        if let Some(mut t) = taken.take() {
            // A stop asked of this process before it said ready: the old
            // one serves on (saying ready now would end both).
            if stop_slot.signalled() {
                cluster.delete = false;
                t.fail("the new process was asked to stop");
                let _ = server.stop();
                info!("a stop signal came before the hand-over was done: the old server serves on");
                return Ok(());
            }
            if let Err(e) = t.ready() {
                cluster.delete = false;
                let _ = server.stop();
                return Err(e);
            }
        }
        let control = match handover::Control::listen(
            &settings,
            server.stop_handle(),
            server.listener_addrs(),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(
                    "takeover socket {}: {e}; this server cannot be taken over",
                    handover::socket_path(&settings).display()
                );
                None
            }
        };
        server.announce();
        crate::notify::ready();
        let handed = match server.wait_outcome() {
            Ok(Ended::HandedOver(handed)) => {
                let control = control
                    .as_ref()
                    .expect("a hand-over is asked on the control socket");
                match control.give(handed) {
                    Ok(()) => {
                        // The new process heartbeats under this id now.
                        cluster.delete = false;
                        return Ok(());
                    }
                    Err((handed, why)) => {
                        warn!("hand-over failed: {why}; serving again from the state kept");
                        handed
                    }
                }
            }
            ended => {
                if let Some(c) = &control {
                    c.remove();
                }
                return ended.map(drop);
            }
        };
        if stop_slot.signalled() {
            info!("a stop signal came during the hand-over: not serving again");
            return Ok(());
        }
        inherited = Some(reinherit(handed)?);
    }
}

/// The node's cluster link, left when `run` returns: its heartbeat is
/// deleted (the others see it go at once, not at the TTL) unless another
/// process of this node heartbeats under the same id (a hand-over, in
/// either direction).
struct Departure {
    link: Option<crate::cluster::link::Link>,
    delete: bool,
}

impl Drop for Departure {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.leave(self.delete);
        }
    }
}

/// What a server that failed to hand over serves again from: its own
/// state and sockets, accepting at once.
fn reinherit(handed: HandedOver) -> Result<Inherited, Error> {
    let shards = handed
        .states
        .iter()
        .map(|bytes| serde_json::from_slice::<Shard>(bytes))
        .collect::<Result<Vec<Shard>, _>>()
        .map_err(|e| Error::Handover {
            why: format!("reading back this server's own state: {e}"),
        })?;
    Ok(Inherited {
        shards,
        listeners: handed.listeners,
        gate: Gate::open_now(),
    })
}

impl Server {
    /// Starts the server in dependency order (see the module doc) and
    /// returns once every shard listens. On a failure, whatever was
    /// started is stopped before the error is returned.
    pub fn start(settings: Settings) -> Result<Server, Error> {
        Server::start_from(settings, None)
    }

    /// [`Server::start`] from what another process (or this one, after a
    /// failed hand-over) handed over: the shards' state and the listening
    /// sockets, which are not probed or bound again. The accept loops
    /// wait for `inherited.gate`.
    pub fn start_from(settings: Settings, inherited: Option<Inherited>) -> Result<Server, Error> {
        if let Some(i) = &inherited {
            if i.shards.len() != settings.shards {
                return Err(Error::Handover {
                    why: format!(
                        "the state handed over has {} shards, the settings say {}",
                        i.shards.len(),
                        settings.shards
                    ),
                });
            }
        }
        // Claims first (claim.rs): a second server refuses to start before
        // it opens anything. The lock is held until storage is closed.
        if settings.admin_token_is_short() {
            warn!(
                "SWITCHBOARD_ADMIN_TOKEN is shorter than {} bytes (allowed only because the \
                 admin listener is on loopback): use a long random token",
                crate::limits::ADMIN_TOKEN_BYTES_MIN
            );
        }
        let lock = match uses_data_dir(&settings) {
            true => {
                secure_data_dir(&settings.data_dir)?;
                Some(DataDirLock::acquire(&settings.data_dir)?)
            }
            false => None,
        };
        // Inherited listeners are this server's own: nothing to probe.
        if inherited.is_none() {
            if let Some(listen) = settings.listen {
                claim::probe(Port::Client, listen)?;
            }
            if let Some(tls) = &settings.tls {
                claim::probe(Port::Tls, tls.listen)?;
            }
            claim::probe(Port::Admin, settings.admin_listen)?;
        }
        // The certificate before storage: a bad file fails the start
        // before anything is opened.
        let tls = match &settings.tls {
            None => None,
            Some(t) => {
                let (tls, loaded) =
                    Tls::load(&t.cert, &t.key).map_err(|source| Error::Tls { source })?;
                info!(
                    "tls: {} certificate(s) from {}, key from {}, mode {:?}",
                    loaded.chain_len,
                    t.cert.display(),
                    t.key.display(),
                    t.mode
                );
                Some(Arc::new(tls))
            }
        };
        supervise::install_panic_hook();
        if switchboard_shards::FAULT_INJECTION || switchboard_storage::FAULT_INJECTION {
            warn!(
                "this build honours test-only fault injection (SWITCHBOARD_FAULT_* variables; \
                 shards: {}, storage: {}): never run it in production",
                switchboard_shards::FAULT_INJECTION,
                switchboard_storage::FAULT_INJECTION
            );
        }
        let store = match &settings.mysql_url {
            Some(url) => open_mysql(&settings, url)?,
            None => open_embedded(&settings)?,
        };
        // On an error from here on, dropping the store joins its threads.
        let secret: Arc<[u8]> = match &settings.token_secret {
            Some(s) => Arc::from(s.as_bytes()),
            None => switchboard_storage::token::load_or_create_secret(&settings.data_dir)
                .map_err(|source| Error::Secret {
                    data_dir: settings.data_dir.clone(),
                    source,
                })?
                .into(),
        };
        let demo = demo_mode(&settings);
        let stop = StopHandle::new(settings.shards);
        let shards = settings.shards;
        let lag_bound = Duration::from_millis(settings.loop_lag_warn_ms);
        let (seeds, gate) = Seed::split(inherited, shards);
        let shared = Arc::new(Shared {
            gate,
            settings,
            secret,
            store,
            clock: Clock::new(),
            client_addr: OnceLock::new(),
            tls_addr: OnceLock::new(),
            tls,
            stats: StatsSlot::for_shards(shards),
            edge: (0..shards).map(|_| EdgeStats::default()).collect(),
            heartbeats: Heartbeats::new(shards, lag_bound),
            demo,
            stop,
        });
        let (tx, reports) = mpsc::channel();
        let mut shards = Shards {
            shared,
            reports,
            executors: Vec::new(),
            lock,
            handed: Vec::new(),
        };
        if let Err(e) = shards.spawn(tx, seeds) {
            return Err(shards.abort(e));
        }
        let server = shards.until_listening()?;
        let shared = &server.shards().shared;
        let stall_max = Faults::from_env()
            .shard_stall_ms_max
            .unwrap_or(limits::SHARD_STALL_MS_MAX);
        let watched = supervise::start_watchdog(
            shared.heartbeats.clone(),
            shared.stop.clone(),
            shared.store.clone(),
            Duration::from_millis(stall_max),
        );
        if let Err(source) = watched {
            let _ = server.stop();
            return Err(Error::Watchdog { source });
        }
        Ok(server)
    }

    /// The client listener's address (`None`: `SWITCHBOARD_LISTEN=off`).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_addr
    }

    /// The TLS client listener's address (`None`: no TLS).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The server's TLS state (`None`: no TLS), for reloading its
    /// certificate ([`Tls::reload`]).
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.shards().shared.tls.clone()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Every listener's address (client, TLS, admin).
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        [self.client_addr, self.tls_addr, Some(self.admin_addr)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// A handle that asks this server to stop, from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.shards().shared.stop.clone()
    }

    fn shards(&self) -> &Shards {
        self.shards
            .as_ref()
            .expect("only `wait` and drop take the shards")
    }

    /// Runs until a stop is asked for or a shard fails, then stops in
    /// order (see the module doc). `Ok` after a stop that was asked for;
    /// else the first failure.
    pub fn wait(self) -> Result<(), Error> {
        self.wait_outcome().map(drop)
    }

    /// [`Server::wait`], saying how it ended: stopped, or settled for a
    /// hand-over with its state and listeners
    /// ([`StopHandle::hand_over`]).
    pub fn wait_outcome(mut self) -> Result<Ended, Error> {
        let mut shards = self
            .shards
            .take()
            .expect("only `wait` and drop take the shards");
        let first = loop {
            match shards.reports.recv() {
                Ok(r @ Report::HandedOver { .. }) => shards.handed.push(r),
                Ok(Report::Failed(e)) => break Some(e),
                Ok(Report::Ended { shard }) if !shards.shared.stop.is_stopping() => {
                    break Some(Error::ShardEnded {
                        shard,
                        source: None,
                    })
                }
                Ok(Report::Ended { .. }) | Err(mpsc::RecvError) => break None,
                Ok(Report::Listening { .. }) => {}
            }
        };
        let handover = shards.shared.stop.is_handover();
        let shard_count = shards.shared.settings.shards;
        let handed = shards.shut_down_handing(first)?;
        if !handover {
            return Ok(Ended::Stopped);
        }
        gather(handed, shard_count).map(Ended::HandedOver)
    }

    /// Asks for a stop and waits for it: stops accepting, lets every
    /// shard finish, joins the executors, then closes storage.
    pub fn stop(self) -> Result<(), Error> {
        self.stop_handle().stop();
        self.wait()
    }

    /// Prints where the server listens (the line scripts and tests wait
    /// for) and, in demo mode, where to open the demo.
    fn announce(&self) {
        let admin = self.admin_addr;
        let shared = &self.shards().shared;
        // The TLS line first: whoever waits for the main line has both.
        if let Some(tls) = self.tls_addr {
            println!("switchboard tls listening on https://{tls}");
        }
        let (client, scheme) = match (self.client_addr, self.tls_addr) {
            (Some(client), _) => (client, "http"),
            (None, Some(tls)) => (tls, "https"),
            (None, None) => unreachable!("settings refuse LISTEN=off without TLS"),
        };
        info!(
            "switchboard listening on {scheme}://{client} (admin http://{admin}{}), {} shards",
            match self.tls_addr {
                Some(tls) => format!(", TLS https://{tls}"),
                None => String::new(),
            },
            shared.settings.shards
        );
        println!("switchboard listening on {scheme}://{client} admin http://{admin}");
        if shared.demo.is_some() {
            // Where a browser can open it: https when TLS is on.
            let (mut open, scheme) = match self.tls_addr {
                Some(tls) => (tls, "https"),
                None => (client, scheme),
            };
            if open.ip().is_unspecified() {
                open.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            println!("switchboard demo: open {scheme}://{open}/demo/");
        }
    }
}

impl Drop for Server {
    /// Stops a server nobody stopped (see [`Server`]); nothing once
    /// [`Server::wait`] ran.
    fn drop(&mut self) {
        let Some(shards) = self.shards.take() else {
            return;
        };
        warn!("a running server was dropped: stopping it");
        if let Err(e) = shards.shut_down(None) {
            error!("a dropped server failed while stopping: {e}");
        }
    }
}

impl Shards {
    /// Starts one executor per shard, each with its mesh ends and its own
    /// reporter (the last sender of `tx`: dropped here when done).
    fn spawn(&mut self, tx: mpsc::Sender<Report>, seeds: Vec<Seed>) -> Result<(), Error> {
        let settings = &self.shared.settings;
        assert_eq!(
            settings.shard_cores.len(),
            settings.shards,
            "a server's settings come from Settings::parse, which places every shard"
        );
        let ends = mesh::build::<MeshMsg>(settings.shards, limits::MESH_CHANNEL_DEPTH_MAX);
        for ((shard, ends), seed) in ends.into_iter().enumerate().zip(seeds) {
            let shared = self.shared.clone();
            let reporter = Reporter {
                shard,
                tx: tx.clone(),
                stop: self.shared.stop.clone(),
            };
            let executor = LocalExecutorBuilder::new(Placement::Fixed(settings.shard_cores[shard]))
                .name(&format!("shard-{shard}"))
                .ring_depth(limits::RING_DEPTH)
                .io_memory(limits::IO_MEMORY_BYTES)
                .spawn(move || async move { shard_main(shared, ends, reporter, seed).await })
                .map_err(|source| Error::Executor { shard, source })?;
            self.executors.push(executor);
        }
        Ok(())
    }

    /// Waits until every shard listens. On a failure, stops the others
    /// and returns it.
    fn until_listening(self) -> Result<Server, Error> {
        let mut listening = 0;
        let mut addrs = None;
        while listening < self.shared.settings.shards {
            match self.reports.recv() {
                Ok(Report::Listening { client, tls, admin }) => {
                    listening += 1;
                    if let Some(admin) = admin {
                        addrs = Some((client, tls, admin));
                    }
                }
                Ok(Report::Failed(e)) => return Err(self.abort(e)),
                Ok(Report::Ended { shard }) => {
                    let source = None;
                    return Err(self.abort(Error::ShardEnded { shard, source }));
                }
                Ok(Report::HandedOver { .. }) => {}
                Err(mpsc::RecvError) => unreachable!("every shard reports its end first"),
            }
        }
        let (client_addr, tls_addr, admin_addr) = addrs.expect("shard 0 reports its addresses");
        Ok(Server {
            client_addr,
            tls_addr,
            admin_addr,
            shards: Some(self),
        })
    }

    /// Stops everything after `error`, and returns it (with the executor's
    /// own error filled in if it is a shard's end).
    fn abort(self, error: Error) -> Error {
        match self.shut_down(Some(error)) {
            Err(e) => e,
            Ok(()) => unreachable!("shut_down returns the error it is given"),
        }
    }

    /// The stop (see the module doc): asks every shard to stop, waits until
    /// each has ended, joins the executors, then shuts storage down.
    /// Returns `first`, or the first failure seen while stopping.
    fn shut_down(self, first: Option<Error>) -> Result<(), Error> {
        self.shut_down_handing(first).map(drop)
    }

    /// [`Shards::shut_down`], returning what the shards reported of a
    /// hand-over ([`Report::HandedOver`]).
    fn shut_down_handing(mut self, mut first: Option<Error>) -> Result<Vec<Report>, Error> {
        self.shared.stop.stop();
        // Disconnected once every reporter is gone: every shard has ended.
        while let Ok(report) = self.reports.recv() {
            match report {
                Report::Failed(e) => {
                    first.get_or_insert(e);
                }
                r @ Report::HandedOver { .. } => self.handed.push(r),
                Report::Listening { .. } | Report::Ended { .. } => {}
            }
        }
        let stop = &self.shared.stop;
        stop.set_main(MainPhase::Joining);
        for (shard, executor) in self.executors.into_iter().enumerate() {
            let Err(e) = executor.join() else { continue };
            match &mut first {
                Some(Error::ShardEnded {
                    shard: ended,
                    source: slot @ None,
                }) if *ended == shard => *slot = Some(e),
                Some(_) => error!(shard; "shard-{shard} failed while stopping: {e}"),
                None => {
                    first = Some(Error::ShardEnded {
                        shard,
                        source: Some(e),
                    })
                }
            }
        }
        stop.set_main(MainPhase::Storage);
        self.shared.store.clone().shutdown();
        // Storage is closed: another server may open the folder now.
        drop(self.lock);
        first.map_or(Ok(self.handed), Err)
    }
}

/// One shard's life: join the mesh, start the runtime, listen, serve until
/// a stop is asked for, then let its storage jobs finish. Returning ends
/// the executor; `reporter` tells the starting thread.
async fn shard_main(shared: Arc<Shared>, ends: MeshEnds<MeshMsg>, reporter: Reporter, seed: Seed) {
    let stop = shared.stop.clone();
    let i = ends.shard();
    supervise::on_executor(i);
    let Some(mesh) = stop.until_stop(ends.connect()).await else {
        return;
    };
    let rt = match start_runtime(&shared, i, mesh, seed.state) {
        Ok(rt) => rt,
        Err(e) => return reporter.send(Report::Failed(e)),
    };
    let listeners = match stop.until_stop(bind(&shared, i, seed.listeners)).await {
        None => return,
        Some(Err(e)) => return reporter.send(Report::Failed(e)),
        Some(Ok(mut listeners)) => {
            let kept = std::mem::take(&mut listeners.kept);
            (listeners, kept)
        }
    };
    // `kept`: duplicates for a hand-over; closed with the executor
    // otherwise.
    let (listeners, kept) = listeners;
    let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
    reporter.send(Report::Listening {
        client: listeners.client.as_ref().map(local),
        tls: listeners.tls.as_ref().map(local),
        admin: listeners.admin.as_ref().map(local),
    });
    let conns = ConnStop::new(stop.clone());
    serve(&shared, &rt, listeners, &conns).await;
    // A stop closes the listening sockets before it drains, so a client
    // is refused at once rather than left in a backlog nobody accepts.
    let kept = match stop.is_handover() {
        true => kept,
        false => {
            drop(kept);
            Vec::new()
        }
    };
    stop::stop_shard(&rt, &conns, &stop).await;
    if stop.is_handover() {
        let state = stop::settle_shard(&rt, &stop).await;
        reporter.send(Report::HandedOver {
            shard: i,
            state,
            listeners: kept,
        });
        debug!(shard = i; "shard-{i}: handed over");
        return;
    }
    debug!(shard = i; "shard-{i}: stopped");
}

/// What one shard starts from: fresh, or what was handed over.
#[derive(Default)]
struct Seed {
    state: Option<Shard>,
    listeners: Vec<(Port, OwnedFd)>,
}

impl Seed {
    /// Splits `inherited` into one seed per shard (fresh seeds and an
    /// open gate without it).
    fn split(inherited: Option<Inherited>, shards: usize) -> (Vec<Seed>, Gate) {
        let mut seeds: Vec<Seed> = (0..shards).map(|_| Seed::default()).collect();
        let Some(inherited) = inherited else {
            return (seeds, Gate::open_now());
        };
        for (seed, state) in seeds.iter_mut().zip(inherited.shards) {
            seed.state = Some(state);
        }
        for l in inherited.listeners {
            match seeds.get_mut(l.shard) {
                Some(seed) => seed.listeners.push((l.port, l.fd)),
                None => warn!(
                    "a {:?} listener handed over for shard {} of {}: closed",
                    l.port, l.shard, shards
                ),
            }
        }
        (seeds, inherited.gate)
    }
}

/// The hand-over reports of every shard, in shard order, as one
/// [`HandedOver`]; an error if a shard gave no state.
fn gather(reports: Vec<Report>, shards: usize) -> Result<HandedOver, Error> {
    let mut states: Vec<Option<Vec<u8>>> = (0..shards).map(|_| None).collect();
    let mut handed = HandedOver {
        states: Vec::new(),
        listeners: Vec::new(),
        sessions: 0,
        tabs: 0,
    };
    let mut failed = Vec::new();
    for report in reports {
        let Report::HandedOver {
            shard,
            state,
            listeners,
        } = report
        else {
            continue;
        };
        match state {
            Ok((bytes, sessions, tabs)) => {
                states[shard] = Some(bytes);
                handed.sessions += sessions;
                handed.tabs += tabs;
            }
            Err(why) => failed.push(format!("shard-{shard}: {why}")),
        }
        for (port, fd) in listeners {
            handed.listeners.push(HandedListener { shard, port, fd });
        }
    }
    for (shard, state) in states.into_iter().enumerate() {
        match state {
            Some(bytes) => handed.states.push(bytes),
            None if failed
                .iter()
                .any(|f| f.starts_with(&format!("shard-{shard}:"))) => {}
            None => failed.push(format!("shard-{shard}: ended without handing over")),
        }
    }
    if !failed.is_empty() {
        return Err(Error::Handover {
            why: format!("no state to hand over from {}", failed.join("; ")),
        });
    }
    Ok(handed)
}

/// Builds the shard's runtime and starts its tasks: one outbox drainer
/// per peer (waiting when the peer's channel is full), one mesh receiver
/// per peer, and the tick.
fn start_runtime(
    shared: &Shared,
    i: ShardId,
    mesh: Mesh<MeshMsg>,
    state: Option<Shard>,
) -> Result<Rc<ShardRuntime>, Error> {
    let s = &shared.settings;
    let mut config = Config::new(i, s.shards);
    config.grace_ms = s.presence_grace_ms;
    config.tab_timeout_ms = s.tab_timeout_ms;
    config.roster_refresh_ms = s.roster_refresh_ms;
    config.rate_limits = s.rate_limits.clone();
    let faults = Faults::from_env();
    config.panic_user = faults.panic_user;
    config.panic_stored_user = faults.panic_stored_user;
    config.panic_timer_user = faults.panic_timer_user;
    config.jobs_in_flight_max = faults.jobs_in_flight_max;
    let parts = RuntimeParts {
        store: shared.store.clone(),
        storage_timeout: Duration::from_millis(s.storage_timeout_ms),
        clock: shared.clock,
        stats: shared.stats.clone(),
        faults,
    };
    let shard = match state {
        None => Shard::new(config),
        Some(state) => state
            .resumed(config)
            .map_err(|why| Error::Handover { why })?,
    };
    let (rt, outboxes) = ShardRuntime::new(shard, parts);
    let mut senders = mesh.senders;
    for (peer, rx) in outboxes {
        let tx = senders[peer].take().expect("a channel to every peer");
        let stop = shared.stop.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                if tx.send(msg).await.is_err() {
                    // A peer ends first when the server stops.
                    if !stop.is_stopping() {
                        supervise::fatal(format_args!("shard-{i}: mesh to shard-{peer} closed"));
                    }
                    debug!(shard = i; "mesh to shard-{peer} closed while stopping");
                    return;
                }
            }
        })
        .detach();
    }
    for (peer, rx) in mesh.receivers {
        let rt = rt.clone();
        let stop = shared.stop.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                rt.on_mesh(peer, msg);
            }
            if !stop.is_stopping() {
                supervise::fatal(format_args!("shard-{i}: mesh from shard-{peer} closed"));
            }
        })
        .detach();
    }
    let tick = rt.clone();
    let heartbeats = shared.heartbeats.clone();
    heartbeats.beat(i, Duration::ZERO);
    glommio::spawn_local(async move {
        let period = Duration::from_millis(limits::TICK_MS);
        loop {
            // The loop's lag: how much later than asked the timer fired,
            // that is how long the executor was busy (or blocked) with
            // other work when it was due.
            let asked = Instant::now();
            glommio::timer::sleep(period).await;
            let lag = asked.elapsed().saturating_sub(period);
            tick.stats.loop_lag_last_us.set(lag.as_micros() as u64);
            tick.stats.last_tick_ms.set(tick.clock.now_ms());
            tick.record(Series::LoopLag, lag);
            tick.tick();
            heartbeats.beat(i, lag);
        }
    })
    .detach();
    Ok(rt)
}

/// A shard's listeners.
struct Listeners {
    /// The client listener (every shard, SO_REUSEPORT; `None`: off).
    client: Option<TcpListener>,
    /// The TLS client listener (every shard, SO_REUSEPORT; `None`: no TLS).
    tls: Option<TcpListener>,
    /// The admin listener (shard 0 only).
    admin: Option<TcpListener>,
    /// A duplicate of each, to hand over.
    kept: Vec<(Port, OwnedFd)>,
}

/// A listening socket for `addr`, as glommio's `TcpListener::bind`
/// makes it (`SO_REUSEPORT`, so every shard binds the port), with a deeper
/// backlog (`LISTEN_BACKLOG`: clients reconnecting after a hand-over wait
/// there), and a duplicate of it kept to hand over (glommio's listener
/// gives its descriptor up only by closing it).
fn listen_socket(addr: SocketAddr) -> std::io::Result<(TcpListener, OwnedFd)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(limits::LISTEN_BACKLOG)?;
    let kept = OwnedFd::from(socket.try_clone()?);
    Ok((adopt(OwnedFd::from(socket)), kept))
}

/// A glommio listener on a listening socket this process owns.
fn adopt(fd: OwnedFd) -> TcpListener {
    // SAFETY: `fd` is a listening TCP socket, owned by nothing else from
    // here on (`into_raw_fd` gives its ownership to the listener).
    unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// Shard `i`'s listeners: the ones handed over (`inherited`), each
/// listener the settings ask for and none was handed for bound anew.
async fn bind(
    shared: &Shared,
    i: ShardId,
    inherited: Vec<(Port, OwnedFd)>,
) -> Result<Listeners, Error> {
    if inherited.is_empty() {
        return bind_fresh(shared, i).await;
    }
    let s = &shared.settings;
    let mut l = Listeners {
        client: None,
        tls: None,
        admin: None,
        kept: Vec::new(),
    };
    for (port, fd) in inherited {
        let kept = fd.try_clone().map_err(|e| Error::Handover {
            why: format!("shard-{i}: duplicating a {port:?} listener handed over: {e}"),
        })?;
        let listener = adopt(fd);
        let wanted = match port {
            Port::Client => s.listen.is_some(),
            Port::Tls => s.tls.is_some(),
            Port::Admin => i == 0,
        };
        if !wanted {
            warn!(shard = i; "shard-{i}: a {port:?} listener was handed over that the settings do not ask for: closed");
            continue;
        }
        let local = listener
            .local_addr()
            .expect("a bound listener has an address");
        match port {
            Port::Client => {
                let _ = shared.client_addr.set(local);
                l.client = Some(listener);
            }
            Port::Tls => {
                let _ = shared.tls_addr.set(local);
                l.tls = Some(listener);
            }
            Port::Admin => l.admin = Some(listener),
        }
        l.kept.push((port, kept));
    }
    let missing = |port| Error::Handover {
        why: format!(
            "shard-{i}: no {port:?} listener was handed over, and the settings ask for one"
        ),
    };
    if s.listen.is_some() && l.client.is_none() {
        return Err(missing(Port::Client));
    }
    if s.tls.is_some() && l.tls.is_none() {
        return Err(missing(Port::Tls));
    }
    if i == 0 && l.admin.is_none() {
        return Err(missing(Port::Admin));
    }
    Ok(l)
}

/// Binds shard `i`'s listeners. Shard 0 binds first, so a port 0 setting
/// means one port; the others wait for its address.
async fn bind_fresh(shared: &Shared, i: ShardId) -> Result<Listeners, Error> {
    let s = &shared.settings;
    let kept = RefCell::new(Vec::new());
    let listen = |listener, addr| {
        let (l, dup) = listen_socket(addr).map_err(|source| Error::Bind {
            shard: i,
            listener,
            addr,
            source,
        })?;
        kept.borrow_mut().push((listener, dup));
        Ok::<_, Error>(l)
    };
    let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
    if i != 0 {
        let client = match s.listen {
            Some(_) => Some(listen(Port::Client, wait_for(&shared.client_addr).await)?),
            None => None,
        };
        let tls = match s.tls {
            Some(_) => Some(listen(Port::Tls, wait_for(&shared.tls_addr).await)?),
            None => None,
        };
        return Ok(Listeners {
            client,
            tls,
            admin: None,
            kept: kept.into_inner(),
        });
    }
    // The start-up probe (`Server::start`) ran before storage opened and
    // the executors started; probing again here, right before the binds,
    // leaves a window of a few milliseconds for a server started since.
    // (A probe blocks this executor briefly: nothing is served yet.)
    if let Some(addr) = s.listen {
        claim::probe(Port::Client, addr)?;
    }
    if let Some(t) = &s.tls {
        claim::probe(Port::Tls, t.listen)?;
    }
    claim::probe(Port::Admin, s.admin_listen)?;
    let client = s
        .listen
        .map(|addr| listen(Port::Client, addr))
        .transpose()?;
    let tls = s
        .tls
        .as_ref()
        .map(|t| listen(Port::Tls, t.listen))
        .transpose()?;
    let admin = listen(Port::Admin, s.admin_listen)?;
    if let Some(client) = &client {
        let _ = shared.client_addr.set(local(client));
    }
    if let Some(tls) = &tls {
        let _ = shared.tls_addr.set(local(tls));
    }
    Ok(Listeners {
        client,
        tls,
        admin: Some(admin),
        kept: kept.into_inner(),
    })
}

/// Accepts connections until a stop is asked for; both listeners are
/// closed when this returns. The client listener admits `CONNECTIONS_MAX` and,
/// from one client address, this shard's share of
/// `CONNECTIONS_PER_ADDRESS_MAX`; the admin listener `ADMIN_CONNECTIONS_MAX`
/// (see [`accept_loop`]).
async fn serve(shared: &Shared, rt: &Rc<ShardRuntime>, listeners: Listeners, conns: &ConnStop) {
    let s = &shared.settings;
    // This shard's accept loops still running.
    let loops_open = Rc::new(Cell::new(0usize));
    let ends = Ends {
        stop: shared.stop.clone(),
        gate: shared.gate.clone(),
        open: loops_open.clone(),
    };
    let limits = Limits {
        first_byte_timeout_ms: s.first_byte_timeout_ms,
        ..Limits::default()
    };
    let admin_task = listeners.admin.map(|admin| {
        let bound = admin.local_addr().expect("a bound listener has an address");
        let gate = AdminGate::new(bound, s.admin_token.clone());
        let traces = TraceConfig {
            data_dir: s.data_dir.clone(),
            duration: Duration::from_millis(s.trace_ms),
            bytes_max: s.trace_bytes_max,
        };
        let handler = ConnHandler::new(rt.clone(), shared.secret.clone(), gate)
            .with_limits(limits.clone())
            .with_edge(shared.edge.clone())
            .with_stop(conns.clone())
            .with_traces(traces);
        let admission = Rc::new(RefCell::new(Admission::new(s.admin_connections_max, None)));
        let accepting = accept_loop(
            admin,
            Listener::Admin,
            None,
            Rc::new(handler),
            admission,
            ends.clone(),
        );
        glommio::spawn_local(accepting)
    });
    let client_handler = || {
        ConnHandler::new(rt.clone(), shared.secret.clone(), AdminGate::default())
            .with_demo(shared.demo.clone())
            .with_limits(limits.clone())
            .with_edge(shared.edge.clone())
            .with_stop(conns.clone())
    };
    // Both client listeners count against one admission: a client gets
    // its share of connections whichever port it uses.
    let share = admission::per_shard_share(s.connections_per_address_max, s.shards);
    let admission = Rc::new(RefCell::new(Admission::new(s.connections_max, Some(share))));
    let required = s.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Required);
    let tls_task = listeners.tls.map(|listener| {
        let tls = shared
            .tls
            .clone()
            .expect("a TLS listener has its certificate");
        let handler = client_handler().with_https(required, None);
        let accepting = accept_loop(
            listener,
            Listener::Client,
            Some(tls),
            Rc::new(handler),
            admission.clone(),
            ends.clone(),
        );
        glommio::spawn_local(accepting)
    });
    let plain_task = listeners.client.map(|listener| {
        let tls_port = shared.tls_addr.get().map(|a| a.port());
        let redirect = if required { tls_port } else { None };
        let handler = client_handler()
            .with_https(false, redirect)
            .with_conn_moves(s.connections_move && redirect.is_none(), s.connections_max);
        let handler = Rc::new(handler);
        let moving = rt
            .moved_conns()
            .filter(|_| handler.moves_conns())
            .map(|moved| {
                glommio::spawn_local(moved_loop(moved, handler.clone(), admission.clone()))
            });
        let accepting = accept_loop(
            listener,
            Listener::Client,
            None,
            handler,
            admission.clone(),
            ends.clone(),
        );
        (glommio::spawn_local(accepting), moving)
    });
    let (plain_task, moved_task) = match plain_task {
        Some((accepting, moving)) => (Some(accepting), moving),
        None => (None, None),
    };
    shared.stop.until_stop(std::future::pending::<()>()).await;
    if shared.stop.is_handover() {
        // Each accept loop ends by itself after its next accept (the
        // process connects to its own listeners until none is left:
        // `handover.rs`); cancelling one blocked in an io_uring accept
        // could lose a connection the kernel already took. Past the bound
        // the rest are cancelled as in a stop.
        let until = Instant::now() + Duration::from_millis(2 * limits::HANDOVER_NUDGE_MS_MAX);
        while loops_open.get() > 0 && Instant::now() < until {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if loops_open.get() > 0 {
            warn!(
                shard = rt.id;
                "shard-{}: {} accept loops still waiting after the hand-over's nudges: cancelled \
                 (a connection accepted at that moment would be lost)",
                rt.id,
                loops_open.get()
            );
        }
    }
    // Dropping a glommio task only marks it cancelled: its future, and the
    // listener in it, would be dropped the next time the task runs, which
    // is never if this executor ends first (a stop with nothing to drain
    // can end it in this turn). `cancel().await` returns once the future
    // is dropped, so every listener is closed before the drain begins.
    for task in [plain_task, moved_task, tls_task, admin_task]
        .into_iter()
        .flatten()
    {
        task.cancel().await;
    }
}

/// Whether the server keeps anything in the data folder: the embedded
/// store, or the token secret when none is configured. Only then is the
/// folder locked (a MySQL server with a configured secret may run where
/// `DATA_DIR` does not exist).
fn uses_data_dir(settings: &Settings) -> bool {
    settings.mysql_url.is_none() || settings.token_secret.is_none()
}

/// Makes the data folder private (it holds every conversation): clears the
/// group and other bits of the folder and of the server's own files in it,
/// logging each change, and warns about anything else there that group or
/// others can reach.
fn secure_data_dir(data_dir: &Path) -> Result<(), Error> {
    let secured = files::secure_data_dir(data_dir).map_err(|source| Error::DataDirMode {
        data_dir: data_dir.to_path_buf(),
        source,
    })?;
    for t in secured.tightened {
        warn!(
            "data folder: {} was mode {:o}, now {:o} (readable by others before)",
            t.path.display(),
            t.from,
            t.to
        );
    }
    for e in secured.exposed {
        match e.error {
            Some(error) => warn!(
                "data folder: {} is mode {:o}, open to group or others, and could not be tightened: {error}",
                e.path.display(),
                e.mode
            ),
            None => warn!(
                "data folder: {} is mode {:o}, open to group or others (not a Switchboard file: left as it is)",
                e.path.display(),
                e.mode
            ),
        }
    }
    Ok(())
}

/// Demo mode's state, if it is on: the directory the sign-in picker
/// offers (the built-in demo users, or the directory file as it is now;
/// with MySQL none, and the picker asks for a user id).
fn demo_mode(settings: &Settings) -> Option<Arc<Demo>> {
    if !settings.demo {
        return None;
    }
    let directory = match &settings.directory {
        _ if settings.mysql_url.is_some() => None,
        None => Some(Directory::demo()),
        Some(path) => match Directory::from_file(path) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(
                    "demo mode: cannot read {} for the sign-in picker: {e}",
                    path.display()
                );
                None
            }
        },
    };
    info!("demo mode is on: /demo/login mints a token for any user (never on a real site)");
    Some(Arc::new(Demo::new(directory)))
}

fn open_embedded(settings: &Settings) -> Result<Store, Error> {
    Store::open_embedded(EmbeddedConfig {
        data_dir: settings.data_dir.clone(),
        directory: settings.directory.clone(),
        db_threads: settings.db_threads,
        queue_depth: limits::STORAGE_QUEUE_DEPTH_MAX,
        write_batch_max: limits::STORAGE_WRITE_BATCH_MAX,
        pin_to: settings.db_cores.clone(),
    })
    .map_err(|source| Error::EmbeddedStore {
        data_dir: settings.data_dir.clone(),
        source,
    })
}

/// The MySQL store (`SWITCHBOARD_MYSQL_URL`): pool and db threads sized by
/// the settings, every job bounded by the storage timeout.
fn open_mysql(settings: &Settings, url: &str) -> Result<Store, Error> {
    Store::open_mysql(MysqlConfig {
        url: url.to_string(),
        pool_size: settings.mysql_pool_size,
        queue_depth: limits::STORAGE_QUEUE_DEPTH_MAX,
        write_batch_max: settings.mysql_batch_max,
        write_batch_wait_ms: settings.mysql_batch_wait_ms,
        connect_timeout_ms: settings.mysql_connect_timeout_ms,
        job_timeout_ms: settings.storage_timeout_ms,
        queries: settings.mysql_queries.clone(),
        pin_to: settings.db_cores.clone(),
    })
    .map_err(|source| Error::MysqlStore { source })
}

async fn wait_for(cell: &OnceLock<SocketAddr>) -> SocketAddr {
    let start = Instant::now();
    loop {
        if let Some(a) = cell.get() {
            return *a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "shard 0 never bound its listeners"
        );
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Accepts connections on one listener of this shard until dropped. Each
/// accepted socket is admitted by `admission` (per client address first,
/// then the listener's total) or closed at once, before a byte is read;
/// a refusal costs one accept and one close, and the loop goes on with the
/// next socket, so a flood of refused sockets cannot hold the others in
/// the backlog. The loop yields whenever the executor's time slice is used
/// up, so accepting never starves the connections it serves. A failed
/// accept (EMFILE: out of file descriptors) backs off 50 ms instead of
/// spinning.
async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    tls: Option<Arc<Tls>>,
    handler: Rc<ConnHandler>,
    admission: Rc<RefCell<Admission>>,
    ends: Ends,
) {
    let shard = handler.rt().id;
    let _open = ends.opened();
    ends.gate.opened().await;
    loop {
        glommio::yield_if_needed().await;
        if ends.stop.is_handover() {
            // The socket stays open for the process taking over.
            return;
        }
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(shard; "shard-{shard}: accept on {kind:?} listener failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A socket whose peer is already gone has no address: drop it.
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let admitted = admission.borrow_mut().admit(peer.ip());
        let ticket = match admitted {
            Ok(ticket) => ticket,
            Err(refused) => {
                drop(stream);
                refuse(shard, kind, &handler, &admission.borrow(), peer, refused);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let place = Admitted {
            admission: admission.clone(),
            ticket: Some(ticket),
            kind,
            handler: handler.clone(),
            _open: handler.conn_stop().map(ConnStop::opened),
        };
        place.count();
        // Plain client connections may move to their users' home shard;
        // TLS state stays on the shard that accepted it.
        let resume = Resume {
            movable: tls.is_none() && kind == Listener::Client && handler.moves_conns(),
            ..Resume::default()
        };
        let conn = serve_conn(stream, peer, tls.clone(), handler.clone(), place, resume);
        glommio::spawn_local(conn).detach();
    }
}

/// What ends an accept loop in a hand-over, and what opens it in the
/// process taking over (see `serve`).
#[derive(Clone)]
struct Ends {
    stop: StopHandle,
    gate: Gate,
    /// This shard's accept loops still running.
    open: Rc<Cell<usize>>,
}

impl Ends {
    /// Counts one running accept loop (here and in the process's
    /// [`StopHandle::accepting`]) until the guard drops.
    fn opened(&self) -> LoopOpen {
        self.open.set(self.open.get() + 1);
        LoopOpen(self.open.clone(), self.stop.accept_loop())
    }
}

/// One running accept loop, counted until dropped.
struct LoopOpen(Rc<Cell<usize>>, #[allow(dead_code)] stop::Accepting);

impl Drop for LoopOpen {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Serves one admitted connection until it ends or moves to another
/// shard; its place is given back when either happens (when `place`
/// drops, also when this task is dropped before it ends).
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<Tls>>,
    handler: Rc<ConnHandler>,
    place: Admitted,
    resume: Resume,
) {
    let shard = handler.rt().id;
    let kind = place.kind;
    let config = handler.io_config();
    let outcome = match tls {
        None => {
            let (mut stream, mut resume) = (stream, resume);
            loop {
                let served = serve_movable(stream, kind, &*handler, config, resume).await;
                match served {
                    Served::Ended(outcome) => break outcome,
                    Served::Moved(moved) => match hand_over(&handler, moved, peer) {
                        None => return,
                        // Served on here.
                        Some((back, at)) => (stream, resume) = (back, at),
                    },
                }
            }
        }
        Some(tls) => {
            // The handshake on this connection's own task, bounded
            // by the handshake deadline (io/src/tls.rs). Boxed: a
            // TLS connection's state (rustls' buffers, several KB)
            // must not size every plain connection's task too.
            let tls_path = Box::pin(async {
                let accepted =
                    switchboard_io::tls::accept(stream, &tls, &*handler, &config.limits).await;
                match accepted {
                    Ok(stream) => {
                        Some(switchboard_io::serve(stream, kind, &*handler, config).await)
                    }
                    Err(refused) => {
                        debug!(
                            shard;
                            "shard-{shard}: TLS connection from {peer} refused: {refused}"
                        );
                        handler.rt().stats.refuse(Refusal::TlsHandshake);
                        None
                    }
                }
            });
            match tls_path.await {
                Some(outcome) => outcome,
                None => {
                    drop(place);
                    return;
                }
            }
        }
    };
    if outcome.reason == CloseReason::FirstByteTimeout {
        handler.rt().stats.refuse(Refusal::FirstByteTimeout);
    }
    // The connection's place is given back when `place` drops,
    // also when this task is dropped before it ends.
    drop(place);
}

/// Hands a connection to shard `moved.to` between two requests: a
/// duplicate of its socket crosses the mesh and this shard's descriptor
/// closes (the socket stays open through the duplicate; nothing is read
/// or written in between, so no byte is lost). A duplicate because
/// glommio's `TcpStream` gives its descriptor up only by closing it (no
/// `IntoRawFd`). Gives the stream back when the move cannot be made now
/// ([`ConnHandler::may_move_to`]: stopping, the target full, its outbox
/// half full; or no descriptor to spare): the connection is then served
/// on here, its calls crossing the mesh, and may move later.
/// `None`: moved.
fn hand_over(
    handler: &ConnHandler,
    moved: Moved<TcpStream>,
    peer: SocketAddr,
) -> Option<(TcpStream, Resume)> {
    let Moved {
        stream,
        to,
        mut resume,
        ..
    } = moved;
    let rt = handler.rt();
    if !handler.may_move_to(to) {
        // Not counted against the connection's moves: it may move later.
        return Some((stream, resume));
    }
    // SAFETY: fcntl on a descriptor this stream owns; a new descriptor
    // (or -1) comes back, owned below.
    let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Some((stream, resume));
    }
    // SAFETY: `dup` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(dup) };
    drop(stream);
    resume.moves += 1;
    rt.move_conn(to, MovedConn { fd, peer, resume });
    None
}

/// Serves the connections other shards move here (plain client
/// connections of users homed on this shard), counting each in this
/// shard's client admission, until dropped.
async fn moved_loop(
    moved: LocalReceiver<MovedConn>,
    handler: Rc<ConnHandler>,
    admission: Rc<RefCell<Admission>>,
) {
    while let Some(MovedConn { fd, peer, resume }) = moved.recv().await {
        // SAFETY: the descriptor is a connected TCP socket this shard now
        // owns alone (the sending shard closed its own).
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let ticket = admission.borrow_mut().admit_moved(peer.ip());
        let place = Admitted {
            admission: admission.clone(),
            ticket: Some(ticket),
            kind: Listener::Client,
            handler: handler.clone(),
            _open: handler.conn_stop().map(ConnStop::opened),
        };
        place.count();
        let conn = serve_conn(stream, peer, None, handler.clone(), place, resume);
        glommio::spawn_local(conn).detach();
    }
}

/// Counts and logs a refused connection. The log is a warning at the 1st,
/// 2nd, 4th, 8th... refusal of each kind, so a flood is seen without
/// flooding the log.
fn refuse(
    shard: ShardId,
    kind: Listener,
    handler: &ConnHandler,
    admission: &Admission,
    peer: SocketAddr,
    refused: Refused,
) {
    let stats = &handler.rt().stats;
    let (count, why) = match refused {
        Refused::Full => {
            match kind {
                Listener::Client => {
                    stats.refused_connections.add(1);
                    stats.refuse(Refusal::ConnectionsMax);
                }
                Listener::Admin => {
                    handler.edge().refused_admin.add(1);
                    stats.refuse(Refusal::Admin);
                }
            }
            (admission.refused_full(), "the listener is full")
        }
        Refused::PerAddress => {
            stats.refused_per_address.add(1);
            stats.refuse(Refusal::PerAddress);
            (
                admission.refused_per_address(),
                "its address holds its share of connections",
            )
        }
    };
    if count.is_power_of_two() {
        warn!(
            shard;
            "shard-{shard}: {kind:?} connection from {} closed at accept: {why} \
             ({count} refused so far for this, {} open, {} from that address)",
            peer.ip(),
            admission.open(),
            admission.open_from(peer.ip()),
        );
    }
}

/// An admitted connection's place in its listener's [`Admission`], given
/// back when dropped.
struct Admitted {
    /// The counts of the listener it came in on.
    admission: Rc<RefCell<Admission>>,
    /// Its place (`None` once given back).
    ticket: Option<Ticket>,
    /// Which listener (each has its own open count in the stats).
    kind: Listener,
    /// For the runtime's stats.
    handler: Rc<ConnHandler>,
    /// Its place in the count a stopping shard waits on (client and admin
    /// connections alike).
    _open: Option<OpenConn>,
}

impl Admitted {
    /// Mirrors the listener's open count in the runtime's stats.
    fn count(&self) {
        let open = self.admission.borrow().open() as u64;
        let stats = &self.handler.rt().stats;
        match self.kind {
            Listener::Client => stats.connections.set(open),
            Listener::Admin => stats.admin_connections.set(open),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.admission.borrow_mut().release(ticket);
        }
        self.count();
    }
}
