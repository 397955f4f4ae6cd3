//! Starting and running the server: storage first, then one pinned glommio
//! executor per shard joined in a full mesh, each accepting client
//! connections on the shared port (SO_REUSEPORT), shard 0 also serving the
//! admin listener.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use log::{error, info, warn};
use switchboard_io::Listener;
use switchboard_shards::{Config, Input, Shard};
use switchboard_storage::{Directory, EmbeddedConfig, MysqlConfig, Store};

use crate::demo::Demo;
use crate::handler::ConnHandler;
use crate::limits;
use crate::mesh::{self, MeshEnds};
use crate::runtime::{Clock, MeshMsg, ShardRuntime};
use crate::settings::Settings;

/// What every shard shares, read-only.
struct Shared {
    settings: Settings,
    secret: Arc<[u8]>,
    store: Store,
    clock: Clock,
    /// The client listener's address once shard 0 bound it (port 0 picks
    /// one port for all shards).
    client_addr: OnceLock<SocketAddr>,
    admin_addr: OnceLock<SocketAddr>,
    /// Demo mode (`None`: off).
    demo: Option<Arc<Demo>>,
}

/// Opens storage and runs the server until the process is killed.
pub fn run(settings: Settings) -> Result<(), String> {
    let store = match &settings.mysql_url {
        Some(url) => open_mysql(&settings, url)?,
        None => open_embedded(&settings)?,
    };
    let secret: Arc<[u8]> = match &settings.token_secret {
        Some(s) => Arc::from(s.as_bytes()),
        None => Arc::from(
            switchboard_storage::token::load_or_create_secret(&settings.data_dir).map_err(|e| {
                format!(
                    "cannot keep the token secret in {}: {e}",
                    settings.data_dir.display()
                )
            })?,
        ),
    };
    let demo = demo_mode(&settings);
    let shards = settings.shards;
    let shared = Arc::new(Shared {
        settings,
        secret,
        store,
        clock: Clock::new(),
        client_addr: OnceLock::new(),
        admin_addr: OnceLock::new(),
        demo,
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ends = mesh::build::<MeshMsg>(shards, limits::MESH_CHANNEL_DEPTH_MAX);
    let mut handles = Vec::new();
    for (i, ends) in ends.into_iter().enumerate() {
        let shared = shared.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(i % cores))
            .name(&format!("shard-{i}"))
            .ring_depth(limits::RING_DEPTH)
            .spawn(move || async move { shard_main(shared, ends).await })
            .map_err(|e| format!("cannot start executor shard-{i}: {e}"))?;
        handles.push(handle);
    }
    for h in handles {
        if let Err(e) = h.join() {
            return Err(format!("executor failed: {e}"));
        }
    }
    Ok(())
}

async fn shard_main(shared: Arc<Shared>, ends: MeshEnds<MeshMsg>) {
    let i = ends.shard();
    let mesh = ends.connect().await;
    let s = &shared.settings;
    let mut config = Config::new(i, s.shards);
    config.grace_ms = s.presence_grace_ms;
    config.tab_timeout_ms = s.tab_timeout_ms;
    config.roster_refresh_ms = s.roster_refresh_ms;
    let (rt, outboxes) = ShardRuntime::new(
        Shard::new(config),
        shared.store.clone(),
        Duration::from_millis(s.storage_timeout_ms),
        shared.clock,
    );
    // Outbox drainers: one task per peer moves messages into the mesh,
    // waiting when the peer's channel is full.
    let mut senders = mesh.senders;
    for (peer, rx) in outboxes {
        let tx = senders[peer].take().expect("a channel to every peer");
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                if tx.send(msg).await.is_err() {
                    error!("mesh to shard-{peer} closed");
                    return;
                }
            }
        })
        .detach();
    }
    for (peer, rx) in mesh.receivers {
        let rt = rt.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                rt.on_mesh(peer, msg);
            }
        })
        .detach();
    }
    // Timers.
    {
        let rt = rt.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(limits::TICK_MS)).await;
                rt.feed(Input::Tick);
            }
        })
        .detach();
    }
    // Listeners. Shard 0 binds first so a port 0 setting means one port.
    let client_addr = if i == 0 {
        s.listen
    } else {
        wait_for(&shared.client_addr).await
    };
    let client = match TcpListener::bind(client_addr) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on {client_addr}: {e}");
            std::process::exit(2);
        }
    };
    if i == 0 {
        let bound = client.local_addr().expect("bound address");
        let _ = shared.client_addr.set(bound);
        let admin = match TcpListener::bind(s.admin_listen) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {}: {e}", s.admin_listen);
                std::process::exit(2);
            }
        };
        let admin_bound = admin.local_addr().expect("bound address");
        let _ = shared.admin_addr.set(admin_bound);
        let handler = Rc::new(ConnHandler::new(
            rt.clone(),
            shared.secret.clone(),
            s.admin_token.clone(),
        ));
        glommio::spawn_local(accept_loop(admin, Listener::Admin, handler, usize::MAX)).detach();
    }
    if i == s.shards - 1 {
        // Every shard before this one has bound: announce.
        let admin = wait_for(&shared.admin_addr).await;
        let client = wait_for(&shared.client_addr).await;
        info!(
            "switchboard listening on http://{client} (admin http://{admin}), {} shards",
            s.shards
        );
        println!("switchboard listening on http://{client} admin http://{admin}");
        if shared.demo.is_some() {
            let mut open = client;
            if open.ip().is_unspecified() {
                open.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            println!("switchboard demo: open http://{open}/demo/");
        }
    }
    let handler = Rc::new(
        ConnHandler::new(rt.clone(), shared.secret.clone(), s.admin_token.clone())
            .with_demo(shared.demo.clone()),
    );
    accept_loop(client, Listener::Client, handler, s.connections_max).await;
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

fn open_embedded(settings: &Settings) -> Result<Store, String> {
    Store::open_embedded(EmbeddedConfig {
        data_dir: settings.data_dir.clone(),
        directory: settings.directory.clone(),
        db_threads: settings.db_threads,
        queue_depth: limits::STORAGE_QUEUE_DEPTH_MAX,
        write_batch_max: limits::STORAGE_WRITE_BATCH_MAX,
        pin_to: settings.db_cores.clone(),
    })
    .map_err(|e| {
        format!(
            "cannot open the embedded store in {}: {e}",
            settings.data_dir.display()
        )
    })
}

/// The MySQL store (`SWITCHBOARD_MYSQL_URL`): pool and db threads sized by
/// the settings, every job bounded by the storage timeout.
fn open_mysql(settings: &Settings, url: &str) -> Result<Store, String> {
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
    .map_err(|e| format!("cannot open the MySQL store: {e}"))
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

async fn accept_loop(listener: TcpListener, kind: Listener, handler: Rc<ConnHandler>, max: usize) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept on {kind:?} listener failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let stats = &handler.rt().stats;
        if stats.connections.get() as usize >= max {
            stats
                .refused_connections
                .set(stats.refused_connections.get() + 1);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        stats.connections.set(stats.connections.get() + 1);
        let handler = handler.clone();
        glommio::spawn_local(async move {
            let _outcome =
                switchboard_io::serve(stream, kind, &*handler, handler.io_config()).await;
            let stats = &handler.rt().stats;
            stats.connections.set(stats.connections.get() - 1);
        })
        .detach();
    }
}
