//! Metrics: what each shard measures on its own thread, how it shares
//! that with the shard that serves `/metrics`, and the families `/metrics`
//! shows (their names, types, labels and help, in one table each).
//!
//! **Nothing is shared mutably between cores, and the request path takes
//! no lock.** Each shard's numbers live in its [`RuntimeStats`] slot
//! (`Arc<[RuntimeStats]>`, one slot per shard): atomics written only by
//! that shard's executor (a relaxed load and store, no read-modify-write
//! across cores) and read by whichever shard serves the scrape (shard 0,
//! which has the admin listener). Two kinds of numbers go there:
//!
//! - **Counters and gauges** are written where they happen: a request's
//!   `(endpoint, outcome)` count is one relaxed add on its conn shard.
//! - **Latencies** are recorded into the shard's own hdrhistogram
//!   ([`Recorder`], executor-local, behind a `RefCell` never held across
//!   an `.await`): one O(1) index computation and an increment per
//!   observation. At each tick (every `TICK_MS`) the shard folds what it
//!   recorded since the last tick into fixed Prometheus buckets
//!   ([`Published`]: per-bucket counts and a sum, atomics in its slot) and
//!   resets the interval histogram; a scrape reads those. So a scrape sees
//!   latencies at most one tick old, never takes a lock, and never asks a
//!   shard anything (the one message a scrape sends is the health ask
//!   that counts sessions, tabs and held polls, as `/health` does).
//!
//! Why fixed-bucket histograms rather than summaries: quantiles computed
//! per shard cannot be added across shards or over time, buckets can
//! (`histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))` gives
//! the process's p99). hdrhistogram's precision (2 significant digits)
//! decides which bucket an observation falls in: one within 1% of a
//! bound may be counted on the other side of it.
//!
//! A long-poll's time is mostly its hold, which says nothing about the
//! server, so polls are timed apart (`switchboard_poll_duration_seconds`,
//! hold included, buckets up to the 60 s wait) and left out of
//! `switchboard_request_duration_seconds`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use switchboard_io::metrics::{Family, Histogram, Kind, Label, Value};
use switchboard_io::{Endpoint, Outcome};
use switchboard_shards::model::StorageJob;
use switchboard_storage::StoreStats;

use crate::handler::EdgeStats;
use crate::runtime::{Counter, Dropped, RuntimeStats, ShardRuntime};

/// Bucket bounds of request and storage job latencies, in seconds.
pub const REQUEST_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Bucket bounds of poll durations (hold included), in seconds: up to
/// the longest wait a poll may ask for (60 s).
pub const POLL_BOUNDS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0,
];

/// Bucket bounds of the executor loop's lag, in seconds.
pub const LAG_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The kinds of storage work a shard times (`kind` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    LoadSession,
    LoadRoster,
    History,
    StoreMessage,
    MarkRead,
    SaveUi,
    /// A `/connect` token looked up by the directory's token query.
    LookupToken,
    /// `/roster-changed`'s directory reload.
    ReloadDirectory,
}

impl JobKind {
    /// Every kind, in index order.
    pub const ALL: [JobKind; 8] = [
        JobKind::LoadSession,
        JobKind::LoadRoster,
        JobKind::History,
        JobKind::StoreMessage,
        JobKind::MarkRead,
        JobKind::SaveUi,
        JobKind::LookupToken,
        JobKind::ReloadDirectory,
    ];

    /// The kind of a shard's job.
    pub fn of(job: &StorageJob) -> JobKind {
        match job {
            StorageJob::LoadSession { .. } => JobKind::LoadSession,
            StorageJob::LoadRoster { .. } => JobKind::LoadRoster,
            StorageJob::History { .. } => JobKind::History,
            StorageJob::StoreMessage { .. } => JobKind::StoreMessage,
            StorageJob::MarkRead { .. } => JobKind::MarkRead,
            StorageJob::SaveUi { .. } => JobKind::SaveUi,
        }
    }

    /// Its name (a job's `StorageJob::name`, and two of the engine's own).
    pub fn name(self) -> &'static str {
        match self {
            JobKind::LoadSession => "load_session",
            JobKind::LoadRoster => "load_roster",
            JobKind::History => "history",
            JobKind::StoreMessage => "store_message",
            JobKind::MarkRead => "mark_read",
            JobKind::SaveUi => "save_ui",
            JobKind::LookupToken => "lookup_token",
            JobKind::ReloadDirectory => "reload_directory",
        }
    }
}

/// What a shard times: each is one hdrhistogram on the shard and one
/// [`Published`] in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// A request of this endpoint (never `Poll`: see [`Series::Poll`]),
    /// from the end of its head and body to its answer, on its conn shard.
    Request(Endpoint),
    /// A poll, hold included.
    Poll,
    /// A storage job, from its submit to its result back on the shard.
    Job(JobKind),
    /// How late the shard's tick timer fired.
    LoopLag,
}

impl Series {
    /// How many series a shard has.
    pub const COUNT: usize = Endpoint::ALL.len() + 1 + JobKind::ALL.len() + 1;

    /// Its place among the [`Series::COUNT`].
    pub fn index(self) -> usize {
        let jobs = Endpoint::ALL.len() + 1;
        match self {
            Series::Request(e) => e.index(),
            Series::Poll => Endpoint::ALL.len(),
            Series::Job(kind) => jobs + kind as usize,
            Series::LoopLag => jobs + JobKind::ALL.len(),
        }
    }

    /// Its buckets' bounds, in seconds.
    pub fn bounds(self) -> &'static [f64] {
        match self {
            Series::Request(_) | Series::Job(_) => REQUEST_BOUNDS,
            Series::Poll => POLL_BOUNDS,
            Series::LoopLag => LAG_BOUNDS,
        }
    }

    /// Every series, in index order.
    pub fn all() -> impl Iterator<Item = Series> {
        let requests = Endpoint::ALL.into_iter().map(Series::Request);
        let jobs = JobKind::ALL.into_iter().map(Series::Job);
        requests
            .chain(std::iter::once(Series::Poll))
            .chain(jobs)
            .chain(std::iter::once(Series::LoopLag))
    }
}

/// One series' buckets as its shard last published them: observations
/// per bucket (not cumulative, the last above every bound) and their sum.
/// Written by its shard at each tick, read by any shard's scrape.
#[derive(Debug)]
pub struct Published {
    /// Observations per bucket, `bounds.len() + 1` of them.
    buckets: Box<[Counter]>,
    /// Sum of the observations, in microseconds.
    sum_us: Counter,
    /// The buckets' bounds, in seconds.
    bounds: &'static [f64],
}

impl Published {
    fn new(bounds: &'static [f64]) -> Published {
        Published {
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum_us: Counter::default(),
            bounds,
        }
    }

    /// The series as a Prometheus histogram.
    pub fn histogram(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self.buckets.iter().map(Counter::get).collect(),
            sum: self.sum_us.get() as f64 / 1e6,
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Counter::get).sum()
    }
}

/// Every series of one shard, published (in [`Series::index`] order).
pub fn published_series() -> Box<[Published]> {
    Series::all().map(|s| Published::new(s.bounds())).collect()
}

/// The longest time a histogram tracks, in microseconds (an hour);
/// longer observations count as this.
const TRACKED_US_MAX: u64 = 3_600_000_000;

/// hdrhistogram's precision: 2 significant digits (1%), so an interval
/// histogram is about 25 KB.
const SIGNIFICANT_DIGITS: u8 = 2;

/// What one series recorded since the shard's last tick.
struct Interval {
    /// The observations, in microseconds.
    hdr: Hdr<u64>,
    /// Their exact sum, in microseconds.
    sum_us: u64,
}

/// A shard's own recording of its latencies, on its executor only (see
/// the module doc). Each series' interval histogram is made at its first
/// observation.
pub struct Recorder {
    /// One per series, in [`Series::index`] order.
    intervals: Vec<Option<Interval>>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            intervals: (0..Series::COUNT).map(|_| None).collect(),
        }
    }
}

impl Recorder {
    /// Records one observation of `series` (the request path's cost: an
    /// index computation and two adds).
    pub fn record(&mut self, series: Series, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let interval = self.intervals[series.index()].get_or_insert_with(|| Interval {
            hdr: Hdr::new_with_bounds(1, TRACKED_US_MAX, SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds"),
            sum_us: 0,
        });
        interval.hdr.saturating_record(us.max(1));
        interval.sum_us = interval.sum_us.saturating_add(us);
    }

    /// Folds what was recorded since the last call into `published` (in
    /// [`Series::index`] order) and starts a new interval. Called at each
    /// tick; a series with nothing new costs one check.
    pub fn publish(&mut self, published: &[Published]) {
        for (interval, out) in self.intervals.iter_mut().zip(published) {
            let Some(interval) = interval else { continue };
            if interval.hdr.is_empty() {
                continue;
            }
            for v in interval.hdr.iter_recorded() {
                // The bucket of the lowest value this one stands for, so
                // a value recorded exactly at a bound is counted under it.
                let us = interval.hdr.lowest_equivalent(v.value_iterated_to());
                let bucket = out.bounds.partition_point(|&b| bound_us(b) < us);
                out.buckets[bucket].add(v.count_since_last_iteration());
            }
            out.sum_us.add(interval.sum_us);
            interval.sum_us = 0;
            interval.hdr.reset();
        }
    }
}

/// A bound in seconds, in microseconds.
fn bound_us(seconds: f64) -> u64 {
    (seconds * 1e6).round() as u64
}

/// Why a connection was closed before it was served (`reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client listener held `CONNECTIONS_MAX` (at accept).
    ConnectionsMax,
    /// The client's address held its share of
    /// `CONNECTIONS_PER_ADDRESS_MAX` (at accept).
    PerAddress,
    /// The admin listener held `ADMIN_CONNECTIONS_MAX` (at accept).
    Admin,
    /// No first byte within `FIRST_BYTE_TIMEOUT_MS` of the accept.
    FirstByteTimeout,
    /// The TLS handshake failed or timed out (or the first byte was not
    /// a handshake).
    TlsHandshake,
}

impl Refusal {
    /// Every reason, in index order.
    pub const ALL: [Refusal; 5] = [
        Refusal::ConnectionsMax,
        Refusal::PerAddress,
        Refusal::Admin,
        Refusal::FirstByteTimeout,
        Refusal::TlsHandshake,
    ];

    /// Its `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ConnectionsMax => "connections_max",
            Refusal::PerAddress => "per_address",
            Refusal::Admin => "admin",
            Refusal::FirstByteTimeout => "first_byte_timeout",
            Refusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// The counters of requests by endpoint and outcome, one per pair.
pub fn request_counters() -> Box<[Counter]> {
    (0..Endpoint::ALL.len() * Outcome::COUNT)
        .map(|_| Counter::default())
        .collect()
}

/// Where `(endpoint, outcome)` is counted in [`request_counters`].
pub fn request_index(endpoint: Endpoint, outcome: Outcome) -> usize {
    endpoint.index() * Outcome::COUNT + outcome.index()
}

/// Builds families out of per-shard values: a family with a `shard`
/// label and whatever else, one sample per call.
pub struct Builder {
    family: Family,
}

impl Builder {
    /// A new family.
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Builder {
        Builder {
            family: Family::new(name, help, kind),
        }
    }

    /// Adds a sample.
    pub fn sample(&mut self, labels: Vec<Label>, value: Value) -> &mut Builder {
        self.family.push(labels, value);
        self
    }

    /// Adds an integer sample of shard `shard` with `labels` after its
    /// `shard` label.
    pub fn shard(&mut self, shard: usize, labels: &[Label], value: u64) -> &mut Builder {
        self.sample(shard_labels(shard, labels), Value::Int(value))
    }

    /// The family.
    pub fn done(self) -> Family {
        self.family
    }
}

/// `shard="N"` followed by `more`.
pub fn shard_labels(shard: usize, more: &[Label]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(1 + more.len());
    labels.push(("shard", shard.to_string()));
    labels.extend(more.iter().cloned());
    labels
}

/// Every family `/metrics` shows besides the health ask's (sessions,
/// tabs, held polls, shard up), read from every shard's slot without
/// asking any shard, from storage's atomics and from the watchdog's
/// sample of `/proc` ([`sample_process`]): no lock, no file read, no
/// blocking call on the executor. A series with a label beyond `shard`
/// that is zero (a request endpoint and outcome never seen, a refusal
/// reason, a mesh pair with nothing queued, a drop kind never dropped, a
/// histogram with no observation) is left out; the per-shard counters
/// are always there, zero included (so an alert's `increase()` sees the
/// first one); every family's `HELP` and `TYPE` are always there.
pub fn families(rt: &ShardRuntime, edge: &[EdgeStats]) -> Vec<Family> {
    let all = rt.stats.all();
    let store = rt.store.stats();
    let mut out = Vec::with_capacity(COUNTERS.len() + EDGE_COUNTERS.len() + 40);
    for spec in &COUNTERS {
        let mut f = Builder::new(spec.name, Kind::Counter, spec.help);
        for (shard, stats) in all.iter().enumerate() {
            f.shard(shard, &[], (spec.value)(stats));
        }
        out.push(f.done());
    }
    for spec in &EDGE_COUNTERS {
        let mut f = Builder::new(spec.name, Kind::Counter, spec.help);
        for (shard, stats) in edge.iter().enumerate() {
            f.shard(shard, &[], (spec.value)(stats));
        }
        out.push(f.done());
    }
    let mut f = Builder::new(
        "switchboard_storage_queue_shed_total",
        Kind::Counter,
        "Storage jobs refused because the storage queue held STORAGE_QUEUE_DEPTH_MAX \
         (process-wide, shown as shard 0's; each failed its call, counted in storage_failures).",
    );
    f.shard(0, &[], store.jobs_shed);
    out.push(f.done());
    requests(&mut out, all);
    connections(&mut out, all);
    mesh(&mut out, all);
    storage(&mut out, all, &store);
    executors(&mut out, all);
    process(&mut out);
    out
}

/// Requests by endpoint and outcome, and their latencies.
fn requests(out: &mut Vec<Family>, all: &[RuntimeStats]) {
    let mut counts = Builder::new(
        "switchboard_requests_total",
        Kind::Counter,
        "Requests answered, by conn shard, endpoint and outcome (ok, redirect, or the error code \
         of the answer).",
    );
    for (shard, stats) in all.iter().enumerate() {
        for endpoint in Endpoint::ALL {
            for o in 0..Outcome::COUNT {
                let outcome = Outcome::from_index(o);
                let n = stats.requests[request_index(endpoint, outcome)].get();
                if n > 0 {
                    let labels = [
                        ("endpoint", endpoint.name().to_string()),
                        ("outcome", outcome.name().to_string()),
                    ];
                    counts.shard(shard, &labels, n);
                }
            }
        }
    }
    out.push(counts.done());
    let mut latency = Builder::new(
        "switchboard_request_duration_seconds",
        Kind::Histogram,
        "Time from a request read to its answer, by conn shard and endpoint (polls apart: \
         switchboard_poll_duration_seconds).",
    );
    let mut polls = Builder::new(
        "switchboard_poll_duration_seconds",
        Kind::Histogram,
        "Time from a poll read to its answer, its hold included (up to its wait).",
    );
    for (shard, stats) in all.iter().enumerate() {
        for endpoint in Endpoint::ALL {
            if endpoint == Endpoint::Poll {
                continue;
            }
            let published = &stats.histograms[Series::Request(endpoint).index()];
            if published.count() > 0 {
                let labels = shard_labels(shard, &[("endpoint", endpoint.name().to_string())]);
                latency.sample(labels, Value::Histogram(published.histogram()));
            }
        }
        let published = &stats.histograms[Series::Poll.index()];
        polls.sample(
            shard_labels(shard, &[]),
            Value::Histogram(published.histogram()),
        );
    }
    out.push(latency.done());
    out.push(polls.done());
}

/// Connections open and refused.
fn connections(out: &mut Vec<Family>, all: &[RuntimeStats]) {
    let mut open = Builder::new(
        "switchboard_connections_open",
        Kind::Gauge,
        "Open connections, by shard and listener (client: plain and TLS together; admin: shard 0).",
    );
    let mut refused = Builder::new(
        "switchboard_connections_refused_total",
        Kind::Counter,
        "Connections closed before they were served, by shard and reason (connections_max, \
         per_address and admin at accept; first_byte_timeout; tls_handshake).",
    );
    for (shard, stats) in all.iter().enumerate() {
        let client = [("listener", "client".to_string())];
        open.shard(shard, &client, stats.connections.get());
        if shard == 0 {
            let admin = [("listener", "admin".to_string())];
            open.shard(shard, &admin, stats.admin_connections.get());
        }
        for why in Refusal::ALL {
            let n = stats.refused[why as usize].get();
            if n > 0 {
                let reason = [("reason", why.name().to_string())];
                refused.shard(shard, &reason, n);
            }
        }
    }
    out.push(open.done());
    out.push(refused.done());
}

/// The mesh: what each shard sent, and the ordered pairs of shards with
/// messages queued or dropped. A pair's samples are there only while
/// non-zero, so a scrape holds a few samples per shard, not shards² × 6
/// (a quarter million at 256 shards).
fn mesh(out: &mut Vec<Family>, all: &[RuntimeStats]) {
    let mut depth = Builder::new(
        "switchboard_mesh_queue_depth",
        Kind::Gauge,
        "Messages from shard `from` to shard `to` not yet handled by `to` (its outbox and the \
         mesh channel); a pair with none queued is left out.",
    );
    let mut sent = Builder::new(
        "switchboard_mesh_messages_total",
        Kind::Counter,
        "Messages shard `from` put in its outboxes to the other shards.",
    );
    let mut dropped = Builder::new(
        "switchboard_mesh_dropped_total",
        Kind::Counter,
        "Messages from shard `from` to shard `to` dropped on a full outbox, by kind (reply, \
         delivery, presence, roster); left out while none.",
    );
    for (from, stats) in all.iter().enumerate() {
        let mut sent_total = 0;
        for (to, peer) in stats.peers.iter().enumerate() {
            if to == from {
                continue;
            }
            let pair = |more: Option<(&'static str, &'static str)>| {
                let mut labels = vec![("from", from.to_string()), ("to", to.to_string())];
                labels.extend(more.map(|(k, v)| (k, v.to_string())));
                labels
            };
            // Received first: the difference is then never below what
            // was queued and not yet handled.
            let received = all[to].peers[from].received.get();
            let queued = peer.queued.get();
            sent_total += queued;
            let waiting = queued.saturating_sub(received);
            if waiting > 0 {
                depth.sample(pair(None), Value::Int(waiting));
            }
            for kind in Dropped::ALL {
                let n = peer.dropped[kind as usize].get();
                if n > 0 {
                    dropped.sample(pair(Some(("kind", kind.name()))), Value::Int(n));
                }
            }
        }
        sent.sample(vec![("from", from.to_string())], Value::Int(sent_total));
    }
    out.push(depth.done());
    out.push(sent.done());
    out.push(dropped.done());
}

/// Storage: the queue, the jobs, their latencies, the db threads and the
/// MySQL pool.
fn storage(out: &mut Vec<Family>, all: &[RuntimeStats], store: &StoreStats) {
    let gauge = |name, help, value| {
        let mut f = Builder::new(name, Kind::Gauge, help);
        f.sample(Vec::new(), Value::Int(value));
        f.done()
    };
    let counter = |name, help, value| {
        let mut f = Builder::new(name, Kind::Counter, help);
        f.sample(Vec::new(), Value::Int(value));
        f.done()
    };
    out.push(gauge(
        "switchboard_storage_queue_depth",
        "Storage jobs waiting in the queue for a db thread.",
        store.queue_len as u64,
    ));
    out.push(gauge(
        "switchboard_storage_queue_capacity",
        "The storage queue's bound (STORAGE_QUEUE_DEPTH_MAX): a job submitted when full is shed.",
        store.queue_depth as u64,
    ));
    out.push(counter(
        "switchboard_storage_jobs_submitted_total",
        "Storage jobs accepted into the queue.",
        store.jobs_submitted,
    ));
    out.push(counter(
        "switchboard_storage_jobs_shed_total",
        "Storage jobs refused at once because the queue was full (answered unavailable).",
        store.jobs_shed,
    ));
    out.push(counter(
        "switchboard_storage_jobs_timed_out_total",
        "Storage jobs answered TimedOut by storage (not run, or rolled back: not stored).",
        store.jobs_timed_out,
    ));
    out.push(counter(
        "switchboard_storage_jobs_failed_total",
        "Storage jobs answered with a database or I/O failure.",
        store.jobs_failed,
    ));
    out.push(counter(
        "switchboard_storage_write_batches_total",
        "Write transactions committed (group commits).",
        store.write_batches,
    ));
    out.push(counter(
        "switchboard_storage_write_jobs_total",
        "Write jobs answered from committed transactions (over write_batches: the mean batch).",
        store.write_jobs,
    ));
    out.push(counter(
        "switchboard_storage_late_batches_total",
        "Storage batches that went past a job's deadline (running, or picked up late: counted \
         once); each is logged with where it waited.",
        store.late_batches,
    ));
    out.push(counter(
        "switchboard_storage_checkpoints_total",
        "Embedded store: durable redb commits that emptied the write-ahead log.",
        store.checkpoints,
    ));
    out.push(gauge(
        "switchboard_storage_wal_bytes",
        "Embedded store: bytes of records in the write-ahead log now (0 after a checkpoint).",
        store.wal_bytes,
    ));
    out.push(gauge(
        "switchboard_storage_wal_replayed_batches",
        "Embedded store: write batches replayed from the write-ahead log at open (after a crash).",
        store.wal_replayed,
    ));
    let mut threads = Builder::new(
        "switchboard_storage_threads",
        Kind::Gauge,
        "db-N threads, by state: busy (running a batch) or idle (waiting for work).",
    );
    let busy = store.threads_busy as u64;
    threads.sample(vec![("state", "busy".into())], Value::Int(busy));
    let idle = (store.threads as u64).saturating_sub(busy);
    threads.sample(vec![("state", "idle".into())], Value::Int(idle));
    out.push(threads.done());
    let mut pool = Builder::new(
        "switchboard_mysql_pool_connections",
        Kind::Gauge,
        "MySQL pool connections, by state: idle or in_use (absent with the embedded store).",
    );
    let mut pool_max = Builder::new(
        "switchboard_mysql_pool_connections_max",
        Kind::Gauge,
        "The MySQL pool's size, MYSQL_POOL_SIZE (absent with the embedded store).",
    );
    let mut waiting = Builder::new(
        "switchboard_mysql_pool_waiting",
        Kind::Gauge,
        "db-N threads waiting for a MySQL pool connection (absent with the embedded store).",
    );
    if let Some(p) = store.pool {
        let in_use = p.connections.saturating_sub(p.idle) as u64;
        pool.sample(vec![("state", "idle".into())], Value::Int(p.idle as u64));
        pool.sample(vec![("state", "in_use".into())], Value::Int(in_use));
        pool_max.sample(Vec::new(), Value::Int(p.max as u64));
        waiting.sample(Vec::new(), Value::Int(p.waiting as u64));
    }
    out.push(pool.done());
    out.push(pool_max.done());
    out.push(waiting.done());
    let mut in_flight = Builder::new(
        "switchboard_storage_jobs_in_flight",
        Kind::Gauge,
        "Storage jobs a shard submitted and has not had answered yet.",
    );
    let mut latency = Builder::new(
        "switchboard_storage_job_duration_seconds",
        Kind::Histogram,
        "Time from a storage job's submit to its result back on its shard (queue, run and wake-up), \
         by shard and kind; a job the engine gave up on counts its wait.",
    );
    for (shard, stats) in all.iter().enumerate() {
        in_flight.shard(shard, &[], stats.storage_jobs_waiting.get());
        for kind in JobKind::ALL {
            let published = &stats.histograms[Series::Job(kind).index()];
            if published.count() > 0 {
                let labels = shard_labels(shard, &[("kind", kind.name().to_string())]);
                latency.sample(labels, Value::Histogram(published.histogram()));
            }
        }
    }
    out.push(in_flight.done());
    out.push(latency.done());
}

/// Each shard's executor loop: how late its tick fires.
fn executors(out: &mut Vec<Family>, all: &[RuntimeStats]) {
    let mut last = Builder::new(
        "switchboard_loop_lag_last_seconds",
        Kind::Gauge,
        "How late the shard's last tick timer fired (its executor was busy or blocked that long).",
    );
    let mut lag = Builder::new(
        "switchboard_loop_lag_seconds",
        Kind::Histogram,
        "How late each tick timer fired, by shard (one observation per TICK_MS).",
    );
    for (shard, stats) in all.iter().enumerate() {
        let seconds = stats.loop_lag_last_us.get() as f64 / 1e6;
        last.sample(shard_labels(shard, &[]), Value::Float(seconds));
        let published = &stats.histograms[Series::LoopLag.index()];
        lag.sample(
            shard_labels(shard, &[]),
            Value::Histogram(published.histogram()),
        );
    }
    out.push(last.done());
    out.push(lag.done());
}

/// The process: memory, file descriptors (the watchdog's last sample,
/// see [`sample_process`]), the logger's drops, the build.
fn process(out: &mut Vec<Family>) {
    let (rss, fds, max) = PROCESS.read();
    let gauge = |name, help, value: Option<u64>| {
        let mut f = Builder::new(name, Kind::Gauge, help);
        if let Some(v) = value {
            f.sample(Vec::new(), Value::Int(v));
        }
        f.done()
    };
    out.push(gauge(
        "process_resident_memory_bytes",
        "Resident memory of the process (VmRSS), sampled every second.",
        rss,
    ));
    out.push(gauge(
        "process_open_fds",
        "Open file descriptors of the process, counted every second.",
        fds,
    ));
    out.push(gauge(
        "process_max_fds",
        "The soft limit on open file descriptors, sampled every second (absent when unlimited).",
        max,
    ));
    let mut dropped = Builder::new(
        "switchboard_log_dropped_total",
        Kind::Counter,
        "Log records dropped because the logger's queue was full.",
    );
    dropped.sample(Vec::new(), Value::Int(crate::logger::dropped_records()));
    out.push(dropped.done());
    let mut info = Builder::new(
        "switchboard_build_info",
        Kind::Gauge,
        "Always 1; the version is its label.",
    );
    info.sample(
        vec![("version", env!("CARGO_PKG_VERSION").to_string())],
        Value::Int(1),
    );
    out.push(info.done());
}

/// A runtime counter as `/metrics` shows it.
struct CounterSpec {
    /// The metric's name.
    name: &'static str,
    /// Its `# HELP` text.
    help: &'static str,
    /// Its value in one shard's stats.
    value: fn(&RuntimeStats) -> u64,
}

/// The edge counters on `/metrics`, after the runtime's.
const EDGE_COUNTERS: [EdgeCounterSpec; 2] = [
    EdgeCounterSpec {
        name: "switchboard_refused_admin_total",
        help: "Admin connections closed at accept: the admin listener held ADMIN_CONNECTIONS_MAX.",
        value: |s| s.refused_admin.get(),
    },
    EdgeCounterSpec {
        name: "switchboard_shed_token_lookups_total",
        help: "Connects answered unavailable at once: TOKEN_LOOKUPS_IN_FLIGHT_MAX token lookups in flight on the shard.",
        value: |s| s.shed_token_lookups.get(),
    },
];

/// An edge counter as `/metrics` shows it.
struct EdgeCounterSpec {
    /// The metric's name.
    name: &'static str,
    /// Its `# HELP` text.
    help: &'static str,
    /// Its value in one shard's edge stats.
    value: fn(&EdgeStats) -> u64,
}

/// The runtime counters on `/metrics`, in the order shown.
const COUNTERS: [CounterSpec; 36] = [
    CounterSpec {
        name: "switchboard_panics_total",
        help: "Panics caught while a shard handled an input (each cost its user's session).",
        value: |s| s.panics.get(),
    },
    CounterSpec {
        name: "switchboard_call_timeouts_total",
        help: "Calls answered unavailable because the home shard did not answer by the deadline.",
        value: |s| s.call_timeouts.get(),
    },
    CounterSpec {
        name: "switchboard_shed_requests_total",
        help: "Requests answered unavailable at once: too many in flight to their home shard.",
        value: |s| s.shed_requests.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_replies_total",
        help: "Replies dropped on a full outbox.",
        value: |s| s.dropped_replies.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_deliveries_total",
        help: "Deliveries dropped on a full outbox.",
        value: |s| s.dropped_deliveries.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_presence_total",
        help: "Presence messages dropped on a full outbox (repaired by the presence digest).",
        value: |s| s.dropped_presence.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_roster_total",
        help: "Roster messages dropped on a full outbox.",
        value: |s| s.dropped_roster.get(),
    },
    CounterSpec {
        name: "switchboard_connections_moved_out_total",
        help: "Client connections handed to the home shard of the users their calls are for.",
        value: |s| s.conns_moved_out.get(),
    },
    CounterSpec {
        name: "switchboard_connections_moved_in_total",
        help: "Client connections other shards handed to this one.",
        value: |s| s.conns_moved_in.get(),
    },
    CounterSpec {
        name: "switchboard_refused_connections_total",
        help: "Client connections closed at accept: the listener held CONNECTIONS_MAX.",
        value: |s| s.refused_connections.get(),
    },
    CounterSpec {
        name: "switchboard_refused_per_address_total",
        help: "Client connections closed at accept: their address held its share of CONNECTIONS_PER_ADDRESS_MAX.",
        value: |s| s.refused_per_address.get(),
    },
    CounterSpec {
        name: "switchboard_storage_timeouts_total",
        help: "Storage jobs that timed out.",
        value: |s| s.storage_timeouts.get(),
    },
    CounterSpec {
        name: "switchboard_messages_total",
        help: "Messages stored (not duplicates), counted on the sender's home shard.",
        value: |s| s.core.messages.get(),
    },
    CounterSpec {
        name: "switchboard_messages_delivered_total",
        help: "Messages appended to their recipient's buffer (on the recipient's home shard, after its friends-only check).",
        value: |s| s.core.messages_delivered.get(),
    },
    CounterSpec {
        name: "switchboard_deliveries_total",
        help: "Events appended to session buffers (messages, presence, typing, read receipts, roster and UI changes).",
        value: |s| s.core.deliveries.get(),
    },
    CounterSpec {
        name: "switchboard_presence_changes_total",
        help: "Presence changes (online, away, offline) broadcast by their user's home shard.",
        value: |s| s.core.presence_changes.get(),
    },
    CounterSpec {
        name: "switchboard_duplicate_sends_total",
        help: "Sends answered from a stored cid.",
        value: |s| s.core.duplicate_sends.get(),
    },
    CounterSpec {
        name: "switchboard_shed_jobs_total",
        help: "Requests answered unavailable: too many storage jobs in flight on the shard.",
        value: |s| s.core.shed_jobs.get(),
    },
    CounterSpec {
        name: "switchboard_storage_failures_total",
        help: "Storage jobs that failed (timed out included).",
        value: |s| s.core.storage_failures.get(),
    },
    CounterSpec {
        name: "switchboard_tab_timeouts_total",
        help: "Tabs detached for the tab timeout.",
        value: |s| s.core.tab_timeouts.get(),
    },
    CounterSpec {
        name: "switchboard_tab_evictions_total",
        help: "Tabs detached because their session had too many.",
        value: |s| s.core.tab_evictions.get(),
    },
    CounterSpec {
        name: "switchboard_not_friends_dropped_total",
        help: "Deliveries dropped by the receiver's friends-only check.",
        value: |s| s.core.not_friends_dropped.get(),
    },
    CounterSpec {
        name: "switchboard_rate_limited_total",
        help: "Calls answered rate_limited (429).",
        value: |s| s.core.rate_limited.get(),
    },
    CounterSpec {
        name: "switchboard_typing_coalesced_total",
        help: "Typing events that replaced an earlier one from the same user.",
        value: |s| s.core.typing_coalesced.get(),
    },
    CounterSpec {
        name: "switchboard_events_dropped_total",
        help: "Events dropped from session buffers by their count or byte bound.",
        value: |s| s.core.events_dropped.get(),
    },
    CounterSpec {
        name: "switchboard_stale_timers_total",
        help: "Timers that fired without their owner (skipped).",
        value: |s| s.core.stale_timers.get(),
    },
    CounterSpec {
        name: "switchboard_in_doubt_delivered_total",
        help: "Duplicate sends delivered because an earlier try of their cid failed.",
        value: |s| s.core.in_doubt_delivered.get(),
    },
    CounterSpec {
        name: "switchboard_in_doubt_dropped_total",
        help: "Cids in doubt dropped at their per-session bound.",
        value: |s| s.core.in_doubt_dropped.get(),
    },
    CounterSpec {
        name: "switchboard_dropped_users_total",
        help: "Sessions dropped by supervision after a panic.",
        value: |s| s.core.dropped_users.get(),
    },
    CounterSpec {
        name: "switchboard_presence_repairs_total",
        help: "Presence replica entries repaired by a digest (a presence message was lost).",
        value: |s| s.core.presence_repairs.get(),
    },
    CounterSpec {
        name: "switchboard_stale_roster_reads_total",
        help: "Roster reads dropped because a newer read of the same session was already applied.",
        value: |s| s.core.stale_roster_reads.get(),
    },
    CounterSpec {
        name: "switchboard_in_doubt_orphaned_total",
        help: "Cids in doubt kept by the shard because their sender had no live session.",
        value: |s| s.core.in_doubt_orphaned.get(),
    },
    CounterSpec {
        name: "switchboard_polls_abandoned_total",
        help: "Held polls whose client hung up before the answer, ended on their home shard at once.",
        value: |s| s.core.polls_abandoned.get(),
    },
    CounterSpec {
        name: "switchboard_resyncs_sent_total",
        help: "Resync messages sent to a peer after deliveries to it were dropped.",
        value: |s| s.resyncs_sent.get(),
    },
    CounterSpec {
        name: "switchboard_resyncs_total",
        help: "Live sessions whose tabs were reset because a delivery to them was dropped.",
        value: |s| s.core.resyncs.get(),
    },
    CounterSpec {
        name: "switchboard_roster_waits_expired_total",
        help: "roster-changed calls answered unavailable because not every shard acked in time.",
        value: |s| s.core.roster_waits_expired.get(),
    },
];

/// The process's figures from `/proc/self`, as [`sample_process`] last
/// read them. Reading them costs a file read each and, for the open
/// descriptors, a directory walk as long as the descriptor table (20,000
/// entries on a loaded server): too much for shard 0's executor at each
/// scrape, so the `watchdog` thread reads them every
/// `PROCESS_SAMPLE_MS` and a scrape reads these atomics. Process-wide
/// (the figures are the process's); [`UNKNOWN`] until the first sample
/// or when a file cannot be read.
struct ProcessSample {
    /// `VmRSS`, in bytes.
    rss_bytes: AtomicU64,
    /// Entries of `/proc/self/fd`.
    open_fds: AtomicU64,
    /// The soft `RLIMIT_NOFILE` ([`UNKNOWN`] when unlimited too).
    max_fds: AtomicU64,
    /// A scrape read the figures since they were last sampled: sample
    /// again after `PROCESS_SAMPLE_MS`, not `PROCESS_SAMPLE_IDLE_MS`.
    wanted: AtomicBool,
}

/// A [`ProcessSample`] figure not known.
const UNKNOWN: u64 = u64::MAX;

/// The one [`ProcessSample`] of the process.
static PROCESS: ProcessSample = ProcessSample {
    rss_bytes: AtomicU64::new(UNKNOWN),
    open_fds: AtomicU64::new(UNKNOWN),
    max_fds: AtomicU64::new(UNKNOWN),
    wanted: AtomicBool::new(false),
};

impl ProcessSample {
    /// `(rss, open fds, max fds)` as last sampled.
    fn read(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        self.wanted.store(true, Ordering::Relaxed);
        let get = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&v| v != UNKNOWN);
        (
            get(&self.rss_bytes),
            get(&self.open_fds),
            get(&self.max_fds),
        )
    }
}

/// Reads the process's figures from `/proc/self` into the sample
/// `/metrics` shows. Blocking file reads: called by the `watchdog`
/// thread, never on an executor.
pub fn sample_process() {
    PROCESS.wanted.store(false, Ordering::Relaxed);
    let put = |a: &AtomicU64, v: Option<u64>| a.store(v.unwrap_or(UNKNOWN), Ordering::Relaxed);
    put(&PROCESS.rss_bytes, resident_bytes());
    put(&PROCESS.open_fds, open_fds());
    put(&PROCESS.max_fds, max_fds());
}

/// How long the `watchdog` thread waits between two [`sample_process`]:
/// `PROCESS_SAMPLE_MS` while `/metrics` is read (a scrape since the last
/// sample), else `PROCESS_SAMPLE_IDLE_MS`. Listing `/proc/self/fd` walks
/// the descriptor table (5,000 entries: 0.5% of a core when done every
/// second), a cost nobody should pay while nobody scrapes; the first
/// scrape after a quiet spell shows figures at most
/// `PROCESS_SAMPLE_IDLE_MS` old.
pub fn process_sample_interval() -> std::time::Duration {
    let ms = if PROCESS.wanted.load(Ordering::Relaxed) {
        crate::limits::PROCESS_SAMPLE_MS
    } else {
        crate::limits::PROCESS_SAMPLE_IDLE_MS
    };
    std::time::Duration::from_millis(ms)
}

/// The process's resident memory in bytes (`VmRSS` of
/// `/proc/self/status`), if it can be read.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process's open file descriptors (entries of `/proc/self/fd`,
/// less the one the count itself opens), if they can be listed.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some((entries.count() as u64).saturating_sub(1))
}

/// The soft limit on open file descriptors (`Max open files` of
/// `/proc/self/limits`), if it can be read (`None` too when unlimited).
pub fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_io::metrics::Sample;

    #[test]
    fn series_have_one_index_each() {
        for (i, s) in Series::all().enumerate() {
            assert_eq!(s.index(), i, "{s:?}");
        }
        assert_eq!(Series::all().count(), Series::COUNT);
        for (i, kind) in JobKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
    }

    #[test]
    fn bounds_increase() {
        for bounds in [REQUEST_BOUNDS, POLL_BOUNDS, LAG_BOUNDS] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
            assert!(bound_us(bounds[0]) >= 1);
        }
        assert_eq!(*POLL_BOUNDS.last().unwrap(), 60.0);
    }

    /// Records `us` values into one series, publishes, and returns the
    /// published buckets and sum.
    fn fold(series: Series, rounds: &[&[u64]]) -> (Vec<u64>, f64) {
        let mut recorder = Recorder::default();
        let published = published_series();
        for values in rounds {
            for &us in *values {
                recorder.record(series, Duration::from_micros(us));
            }
            recorder.publish(&published);
        }
        let h = published[series.index()].histogram();
        (h.counts, h.sum)
    }

    #[test]
    fn observations_land_in_the_bucket_of_their_bound_and_add_up_across_ticks() {
        let series = Series::Request(Endpoint::Send);
        // 100 µs is exactly the first bound; 101 µs is above it; 10 s is
        // the last bound; an hour is above every one.
        let (counts, sum) = fold(
            series,
            &[&[50, 100], &[], &[101, 1_000, 10_000_000], &[3_600_000_000]],
        );
        let mut expected = vec![0; REQUEST_BOUNDS.len() + 1];
        expected[0] = 2; // ≤ 0.1 ms
        expected[1] = 1; // ≤ 0.25 ms
        expected[3] = 1; // ≤ 1 ms
        expected[REQUEST_BOUNDS.len() - 1] = 1; // ≤ 10 s
        expected[REQUEST_BOUNDS.len()] = 1; // +Inf
        assert_eq!(counts, expected);
        assert!((sum - 3_610.001_251).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn an_interval_is_published_once() {
        let mut recorder = Recorder::default();
        let published = published_series();
        recorder.record(Series::LoopLag, Duration::from_millis(3));
        recorder.publish(&published);
        recorder.publish(&published);
        assert_eq!(published[Series::LoopLag.index()].count(), 1);
        assert_eq!(published[Series::Poll.index()].count(), 0);
    }

    /// The samples of each family `f` adds, by name.
    fn samples(f: impl Fn(&mut Vec<Family>)) -> Vec<(&'static str, Vec<Sample>)> {
        let mut out = Vec::new();
        f(&mut out);
        out.into_iter().map(|f| (f.name, f.samples)).collect()
    }

    #[test]
    fn mesh_pairs_and_refusals_are_shown_only_when_not_zero() {
        let all = crate::runtime::StatsSlot::for_shards(3);
        let got = samples(|out| mesh(out, &all));
        let counts: Vec<_> = got.iter().map(|(n, s)| (*n, s.len())).collect();
        // Nothing sent yet: one `messages_total` per shard, no pair.
        assert_eq!(
            counts,
            [
                ("switchboard_mesh_queue_depth", 0),
                ("switchboard_mesh_messages_total", 3),
                ("switchboard_mesh_dropped_total", 0)
            ]
        );
        // Shard 0 sent 5 to shard 1, which handled 3, and dropped one
        // delivery to shard 2.
        all[0].peers[1].queued.set(5);
        all[1].peers[0].received.set(3);
        all[0].peers[2].dropped[Dropped::Delivery as usize].set(1);
        let got = samples(|out| mesh(out, &all));
        let labels = |s: &Sample| -> Vec<String> {
            s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
        };
        let depth = &got[0].1;
        assert_eq!(depth.len(), 1);
        assert_eq!(labels(&depth[0]), ["from=0", "to=1"]);
        assert_eq!(depth[0].value, Value::Int(2));
        let sent = &got[1].1;
        assert_eq!(sent[0].value, Value::Int(5));
        let dropped = &got[2].1;
        assert_eq!(dropped.len(), 1);
        assert_eq!(labels(&dropped[0]), ["from=0", "to=2", "kind=delivery"]);

        let got = samples(|out| connections(out, &all));
        assert_eq!(got[1].1.len(), 0, "no refusal yet");
        all[2].refused[Refusal::PerAddress as usize].set(4);
        let got = samples(|out| connections(out, &all));
        assert_eq!(got[1].1.len(), 1);
        assert_eq!(labels(&got[1].1[0]), ["shard=2", "reason=per_address"]);
    }

    #[test]
    fn the_process_sample_is_what_proc_said() {
        sample_process();
        let (rss, fds, max) = PROCESS.read();
        assert!(rss.is_some_and(|b| b > 1 << 20), "{rss:?}");
        assert!(fds.is_some_and(|n| n >= 3), "{fds:?}");
        assert_eq!(max, max_fds());
    }

    #[test]
    fn process_numbers_are_plausible() {
        let rss = resident_bytes().expect("VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        let fds = open_fds().expect("fds");
        assert!(fds >= 3, "{fds}");
        if let Some(max) = max_fds() {
            assert!(max >= fds);
        }
    }
}
