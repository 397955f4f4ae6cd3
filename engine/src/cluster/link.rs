//! A node's link to NATS: one `cluster` thread running the NATS client
//! (async-nats on a current-thread tokio runtime, so nothing of tokio
//! touches the shards' executors).
//!
//! What it does now:
//! - connects at start, bounded by [`limits::CLUSTER_CONNECT_MS`], then
//!   joins (buckets, the id check, the map, the first heartbeat) within
//!   [`limits::CLUSTER_JOIN_MS`] each: a node that cannot reach NATS
//!   refuses to start, with the reason;
//! - makes sure the cluster's two KV buckets exist ([`Buckets`]), and
//!   makes them again if NATS comes back without its JetStream state;
//! - refuses an id another live process heartbeats under;
//! - writes this node's heartbeat ([`Heartbeat`]) every
//!   [`limits::CLUSTER_HEARTBEAT_MS`] into the nodes bucket, whose entries
//!   expire after [`limits::CLUSTER_NODE_TTL_MS`]: a node that stops
//!   heartbeating (killed, cut off) drops out of the bucket by itself;
//! - watches the placement map (from its stored value, so no change is
//!   missed) and logs each change (the routing still to be built will
//!   hand each map to the shards);
//! - on [`Link::leave`] (a stop), deletes its heartbeat, so the others
//!   see it go at once rather than at the TTL (not after a hand-over,
//!   whose new process heartbeats under the same key).
//!
//! A lost connection is retried by the client for as long as the node
//! runs (NATS restarts are survived); the log says when it is lost and
//! back, and the heartbeat resumes on reconnection.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::placement::{Placement, PLACEMENT_KEY};
use super::ClusterSettings;
use crate::limits;
use crate::runtime::Clock;

/// The cluster's JetStream KV buckets, named after the cluster.
pub struct Buckets {
    /// The placement map (key [`PLACEMENT_KEY`]), kept with some history.
    pub placement: String,
    /// One key per live node, its heartbeat; entries expire.
    pub nodes: String,
}

impl Buckets {
    pub fn of(cluster: &str) -> Buckets {
        Buckets {
            placement: format!("switchboard_{cluster}_placement"),
            nodes: format!("switchboard_{cluster}_nodes"),
        }
    }
}

/// What a node writes into the nodes bucket, under its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub pid: u32,
    /// Wall-clock ms when the node started.
    pub started_ms: u64,
    /// Wall-clock ms of this heartbeat.
    pub at_ms: u64,
    /// The client listener's address, if any.
    pub listen: Option<String>,
    pub shards: usize,
    pub version: String,
}

/// The running link.
pub struct Link {
    leave: Arc<Leave>,
    thread: Option<JoinHandle<()>>,
}

/// How the link is asked to end.
#[derive(Default)]
struct Leave {
    now: tokio::sync::Notify,
    /// Whether to delete this node's heartbeat as it ends (not after a
    /// hand-over: the new process heartbeats under the same key).
    delete: std::sync::atomic::AtomicBool,
}

/// Connects to NATS as `name` at `url` (one `nats://HOST:PORT`, or
/// several comma-separated: the servers of a NATS cluster, any of which
/// will do), trying again every half second for up to `connect_ms` (a
/// node booting beside its NATS waits for it); the last error past that.
/// Once connected, the client reconnects by itself, to any of them.
pub async fn connect(url: &str, name: &str, connect_ms: u64) -> Result<async_nats::Client, String> {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let until = tokio::time::Instant::now() + Duration::from_millis(connect_ms);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(left.max(Duration::from_millis(100)));
        let error = match tokio::time::timeout(left, options.connect(servers.as_slice())).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {connect_ms} ms"),
        };
        if tokio::time::Instant::now() + Duration::from_millis(500) >= until {
            return Err(format!(
                "cannot connect to NATS at {url} (tried for {connect_ms} ms): {error}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The two buckets, created if missing.
pub async fn buckets(
    js: &jetstream::Context,
    cluster: &str,
) -> Result<(kv::Store, kv::Store), String> {
    let names = Buckets::of(cluster);
    let placement = open_or_create(
        js,
        kv::Config {
            bucket: names.placement.clone(),
            description: "Switchboard: which node owns which virtual shard".into(),
            history: 16,
            ..Default::default()
        },
    )
    .await?;
    let nodes = open_or_create(
        js,
        kv::Config {
            bucket: names.nodes.clone(),
            description: "Switchboard: live nodes' heartbeats".into(),
            history: 1,
            max_age: Duration::from_millis(limits::CLUSTER_NODE_TTL_MS),
            ..Default::default()
        },
    )
    .await?;
    Ok((placement, nodes))
}

async fn open_or_create(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, String> {
    let bucket = config.bucket.clone();
    match js.get_key_value(&bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(config)
            .await
            .map_err(|e| format!("cannot open or create the KV bucket {bucket}: {e}")),
    }
}

/// The placement map stored now, with its revision (`None`: none yet).
pub async fn read_placement(store: &kv::Store) -> Result<Option<(u64, Placement)>, String> {
    match store.entry(PLACEMENT_KEY).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            let p = Placement::decode(&entry.value)?;
            Ok(Some((entry.revision, p)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(format!("cannot read the placement: {e}")),
    }
}

/// Every live node's heartbeat, by id.
pub async fn read_nodes(store: &kv::Store) -> Result<Vec<Heartbeat>, String> {
    let mut keys = store
        .keys()
        .await
        .map_err(|e| format!("cannot list the nodes: {e}"))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| format!("cannot list the nodes: {e}"))?);
    }
    let mut beats = Vec::new();
    for name in names {
        if let Ok(Some(bytes)) = store.get(&name).await {
            if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&bytes) {
                beats.push(beat);
            }
        }
    }
    beats.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(beats)
}

impl Link {
    /// Connects and starts the link's thread; an error says why NATS or
    /// its buckets could not be reached within the bound.
    pub fn start(
        settings: &ClusterSettings,
        listen: Option<String>,
        shards: usize,
        takeover: bool,
    ) -> Result<Link, String> {
        let leave = Arc::new(Leave::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let beat = Heartbeat {
            node: settings.node.clone(),
            pid: std::process::id(),
            started_ms: Clock::new().now_ms(),
            at_ms: 0,
            listen,
            shards,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let thread = {
            let (settings, leave) = (settings.clone(), leave.clone());
            std::thread::Builder::new()
                .name("cluster".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!(
                                "cannot start the cluster thread's runtime: {e}"
                            )));
                            return;
                        }
                    };
                    runtime.block_on(run(settings, beat, takeover, leave, ready_tx));
                })
                .map_err(|e| format!("cannot start the cluster thread: {e}"))?
        };
        let bound =
            Duration::from_millis(limits::CLUSTER_CONNECT_MS + 2 * limits::CLUSTER_JOIN_MS + 2_000);
        match ready_rx.recv_timeout(bound) {
            Ok(Ok(())) => Ok(Link {
                leave,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(format!(
                "the cluster link did not start within {} ms",
                bound.as_millis()
            )),
        }
    }

    /// Ends the thread, deleting this node's heartbeat first if `delete`
    /// (bounded by a heartbeat's period).
    pub fn leave(mut self, delete: bool) {
        self.end(delete);
    }

    fn end(&mut self, delete: bool) {
        if let Some(thread) = self.thread.take() {
            self.leave
                .delete
                .store(delete, std::sync::atomic::Ordering::Relaxed);
            self.leave.now.notify_one();
            let _ = thread.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.end(true);
    }
}

/// Whether another process heartbeats under this node's id now: its
/// entry is fresh and is still refreshed a heartbeat and a half later.
/// An entry left by a process of this id that died (killed, crashed) a
/// moment ago is not refreshed, and is taken over.
async fn id_in_use(nodes: &kv::Store, node: &str) -> Result<Option<Heartbeat>, String> {
    let read = || async {
        match nodes.get(node).await {
            Ok(Some(bytes)) => Ok(serde_json::from_slice::<Heartbeat>(&bytes).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("cannot read the nodes bucket: {e}")),
        }
    };
    let Some(first) = read().await? else {
        return Ok(None);
    };
    if first.pid == std::process::id() {
        return Ok(None);
    }
    tokio::time::sleep(Duration::from_millis(limits::CLUSTER_HEARTBEAT_MS * 3 / 2)).await;
    Ok(read()
        .await?
        .filter(|again| again.pid == first.pid && again.at_ms > first.at_ms))
}

async fn run(
    settings: ClusterSettings,
    mut beat: Heartbeat,
    takeover: bool,
    leave: Arc<Leave>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let name = format!("switchboard-{}", settings.node);
    let started = async {
        let client = connect(&settings.nats_url, &name, limits::CLUSTER_CONNECT_MS).await?;
        let js = jetstream::new(client.clone());
        let joined = async {
            let (placement, nodes) = buckets(&js, &settings.cluster).await?;
            // A second process with this id would overwrite this one's
            // heartbeat and, once routing is built, take its users: refused,
            // unless it is the old process of a hand-over.
            if !takeover {
                if let Some(other) = id_in_use(&nodes, &settings.node).await? {
                    return Err(format!(
                        "node id {} is in use: pid {} heartbeats under it (listening on {}); \
                         give each node its own SWITCHBOARD_NODE_ID",
                        settings.node,
                        other.pid,
                        other.listen.as_deref().unwrap_or("no client listener")
                    ));
                }
            }
            let current = read_placement(&placement).await?;
            Ok::<_, String>((placement, nodes, current))
        };
        let (placement, nodes, current) = tokio::time::timeout(
            Duration::from_millis(limits::CLUSTER_JOIN_MS),
            joined,
        )
        .await
        .map_err(|_| {
            format!(
                "NATS at {} did not answer JetStream within {} ms (is JetStream enabled: nats-server -js?)",
                settings.nats_url,
                limits::CLUSTER_JOIN_MS
            )
        })??;
        Ok::<_, String>((client, js, placement, nodes, current))
    };
    let (client, js, placement, nodes, current) = match started.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    match &current {
        Some((rev, p)) if p.nodes.contains(&settings.node) => log::info!(
            "cluster {}: node {} joined; placement revision {rev}: this node owns {} of {} virtual shards",
            settings.cluster,
            settings.node,
            p.counts()[settings.node.as_str()],
            p.vshards
        ),
        Some((rev, _)) => log::warn!(
            "cluster {}: node {} is not in the placement (revision {rev}): it owns no users until `switchboard cluster add {}`",
            settings.cluster,
            settings.node,
            settings.node
        ),
        None => log::warn!(
            "cluster {}: no placement yet: `switchboard cluster init NODE...` makes one",
            settings.cluster
        ),
    }
    let first_revision = current.as_ref().map(|(r, _)| *r);
    let clock = Clock::new();
    let key = settings.node.clone();
    // The first heartbeat is written before the node says it started.
    beat.at_ms = clock.now_ms();
    let first = serde_json::to_vec(&beat).expect("a heartbeat serialises");
    let wrote = tokio::time::timeout(
        Duration::from_millis(limits::CLUSTER_JOIN_MS),
        nodes.put(&key, first.into()),
    )
    .await;
    if !matches!(wrote, Ok(Ok(_))) {
        let _ = ready.send(Err(format!(
            "NATS at {} did not take this node's heartbeat",
            settings.nats_url
        )));
        return;
    }
    let _ = ready.send(Ok(()));

    let nodes_now = std::cell::RefCell::new(nodes);
    let heartbeat = async {
        let mut every = tokio::time::interval(Duration::from_millis(limits::CLUSTER_HEARTBEAT_MS));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        let (mut was_connected, mut beating) = (true, true);
        loop {
            every.tick().await;
            beat.at_ms = clock.now_ms();
            let bytes = serde_json::to_vec(&beat).expect("a heartbeat serialises");
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            let store = nodes_now.borrow().clone();
            let put = tokio::time::timeout(
                Duration::from_millis(limits::CLUSTER_HEARTBEAT_MS),
                store.put(&key, bytes.into()),
            )
            .await;
            let problem = match put {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer in time".to_string()),
            };
            if problem.is_some() && connected {
                // Connected but the put failed: NATS may have come back
                // without its JetStream state. Make the buckets again.
                let again = tokio::time::timeout(
                    Duration::from_millis(limits::CLUSTER_HEARTBEAT_MS),
                    buckets(&js, &settings.cluster),
                )
                .await;
                if let Ok(Ok((_, n))) = again {
                    *nodes_now.borrow_mut() = n;
                }
            }
            // Each change is logged once, not each heartbeat.
            if was_connected != connected {
                match connected {
                    true => log::info!("cluster: reconnected to NATS"),
                    false => log::error!("cluster: lost NATS; the client reconnects"),
                }
                was_connected = connected;
            }
            match (&problem, beating) {
                // Disconnected: "lost NATS" said it.
                (Some(e), true) if connected => {
                    log::warn!("cluster: heartbeat not written ({e}); trying every heartbeat")
                }
                (None, false) => log::info!("cluster: heartbeat written again"),
                _ => {}
            }
            beating = problem.is_none();
        }
    };
    let watch = async {
        let mut seen = first_revision;
        let mut store = placement;
        loop {
            // With history: the stored map first, then each change, so a
            // change made before the watch began (or while it was down)
            // is not missed; revisions already seen are skipped.
            match store.watch_with_history(PLACEMENT_KEY).await {
                Ok(mut updates) => {
                    while let Some(update) = updates.next().await {
                        let Ok(entry) = update else { break };
                        if entry.operation != kv::Operation::Put
                            || seen.is_some_and(|s| entry.revision <= s)
                        {
                            continue;
                        }
                        seen = Some(entry.revision);
                        match Placement::decode(&entry.value) {
                            Ok(p) => {
                                log::info!(
                                    "cluster: placement revision {}: {} nodes, this node owns {}",
                                    entry.revision,
                                    p.nodes.len(),
                                    p.counts().get(settings.node.as_str()).copied().unwrap_or(0)
                                );
                            }
                            Err(e) => {
                                log::error!(
                                    "cluster: placement revision {} ignored: {e}",
                                    entry.revision
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    log::warn!("cluster: cannot watch the placement ({e}); retrying");
                    let again = tokio::time::timeout(
                        Duration::from_millis(limits::CLUSTER_HEARTBEAT_MS),
                        buckets(&js, &settings.cluster),
                    )
                    .await;
                    if let Ok(Ok((p, _))) = again {
                        store = p;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(limits::CLUSTER_HEARTBEAT_MS)).await;
        }
    };
    tokio::select! {
        _ = heartbeat => {}
        _ = watch => {}
        _ = leave.now.notified() => {}
    }
    // Bounded by `CLUSTER_LEAVE_MS` in all: a stop must not wait on a
    // NATS that is gone (the entry then expires by itself).
    if leave.delete.load(std::sync::atomic::Ordering::Relaxed) {
        let store = nodes_now.borrow().clone();
        let gone = tokio::time::timeout(Duration::from_millis(limits::CLUSTER_LEAVE_MS), async {
            store.delete(&key).await.map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())
        })
        .await;
        if !matches!(gone, Ok(Ok(_))) {
            log::warn!("cluster: could not delete this node's heartbeat; it expires by itself");
        }
    }
}
