//! One worker process: the users `u` with `(u - 1) % workers == index`,
//! driven on one current-thread tokio runtime.
//!
//! - **Live tabs** each hold one keep-alive connection and long-poll on it
//!   without pause, as a browser tab does.
//! - **Idle tabs** are attached but between polls: they share
//!   `--idle-conns` connections and poll with `wait=0` every
//!   `--idle-poll-s`, which keeps them attached (the tab timeout counts
//!   from the end of the last poll) with no socket of their own.
//! - **Senders**: an open-loop schedule of send slots at this worker's share
//!   of `--rate`. A slot never waits for an earlier one: it takes a free
//!   action connection or opens one, up to `--action-conns`; with none left
//!   the slot is *missed* and counted. Latency counts from the slot's due
//!   time, so a stalled server or generator cannot hide its stall
//!   (no coordinated omission).
//! - Each message's text carries its key (sender, per-sender number) and the
//!   unix-microsecond due time of its slot; every tab that receives it
//!   records the end-to-end latency and the key, so the coordinator can
//!   check every acknowledged message reached every live tab of both users
//!   exactly once.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::sleep_until;

use crate::graph::{Graph, Rng};
use crate::http::{encode_into, Conn, ConnEvents, Retry};
use crate::options::Options;

/// Deadline of every request that is not a long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A long-poll may take its wait plus this long.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// A slot issued later than this after its due time counts as late.
const SLOT_LATE: Duration = Duration::from_millis(10);
/// After the last send the worker waits at most this long for answers.
const SENDS_SETTLE_MAX: Duration = Duration::from_secs(15);
/// The final check polls of idle tabs must end within this long.
const FINAL_CHECK_MAX: Duration = Duration::from_secs(60);
/// Incidents (failures, retries, resets) a worker keeps with their time;
/// more are only counted (`incidents_dropped`).
const INCIDENTS_MAX: usize = 5000;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

pub fn new_hist() -> Histogram<u64> {
    // 1 µs .. 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// The phases, as instants of this process and unix microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Connects start.
    pub start: Instant,
    /// Sends, typing and presence start (end of ramp).
    pub traffic: Instant,
    /// Measured phase.
    pub measure_from: Instant,
    pub measure_to: Instant,
    pub measure_from_us: u64,
    pub measure_to_us: u64,
}

impl Schedule {
    pub fn new(o: &Options, start_unix_ms: u64) -> Schedule {
        Schedule::of_phases(
            start_unix_ms,
            o.ramp_s,
            o.warmup_s,
            o.duration_s,
            o.measure_ramp,
        )
    }

    /// Connects from `start_unix_ms` for `ramp_s`, then traffic; measured
    /// after `warmup_s` more (or from the start, with `measure_ramp`) for
    /// `duration_s` (for the whole ramp + warm-up + duration, with
    /// `measure_ramp`).
    pub fn of_phases(
        start_unix_ms: u64,
        ramp_s: f64,
        warmup_s: f64,
        duration_s: f64,
        measure_ramp: bool,
    ) -> Schedule {
        let now_i = Instant::now();
        let now_ms = now_us() / 1000;
        let start = if start_unix_ms > now_ms {
            now_i + Duration::from_millis(start_unix_ms - now_ms)
        } else {
            now_i
        };
        let traffic = start + Duration::from_secs_f64(ramp_s);
        let (lead_s, length_s) = if measure_ramp {
            (0.0, ramp_s + warmup_s + duration_s)
        } else {
            (ramp_s + warmup_s, duration_s)
        };
        let measure_from = start + Duration::from_secs_f64(lead_s);
        let measure_to = measure_from + Duration::from_secs_f64(length_s);
        let from_us = start_unix_ms * 1000 + (lead_s * 1e6) as u64;
        Schedule {
            start,
            traffic,
            measure_from,
            measure_to,
            measure_from_us: from_us,
            measure_to_us: from_us + (length_s * 1e6) as u64,
        }
    }

    pub fn measuring(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.measure_to
    }
}

/// What a worker hands to the coordinator.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct WorkerResult {
    pub worker: usize,
    /// Histograms (µs) as `(value, count)` pairs.
    pub hists: BTreeMap<String, Vec<(u64, u64)>>,
    /// HTTP answers received in the measured phase, by endpoint.
    pub answered: BTreeMap<String, u64>,
    /// HTTP answers over the whole run, by endpoint.
    pub answered_total: BTreeMap<String, u64>,
    /// Failures by code (protocol error code, `http_NNN`, or `io_*`).
    pub errors: BTreeMap<String, u64>,
    /// Other counts (see the report for their meaning).
    pub counters: BTreeMap<String, u64>,
    /// Acknowledged sends: `(key, recipient)`.
    pub acked: Vec<(u64, u64)>,
    /// Deliveries seen by live tabs, per message key.
    pub receipts: Vec<(u64, u32)>,
    /// Live tabs that stayed attached from connect to the end, per user
    /// (a reset or reconnect removes the tab from the loss check's
    /// expectation and is counted on its own).
    pub live_attached: Vec<(u64, u32)>,
    /// With samples on (`handover`): every delivery to a live tab as (the
    /// send slot's due time, the moment the tab's poll returned it), unix
    /// µs, over the whole run, so latency can be cut into any window.
    #[serde(default)]
    pub e2e_samples: Vec<(u64, u64)>,
    /// With samples on: every acknowledged send as (due time, answer), unix µs.
    #[serde(default)]
    pub send_samples: Vec<(u64, u64)>,
    /// Failures, retries and resets with their time (unix µs), at most
    /// `INCIDENTS_MAX`.
    #[serde(default)]
    pub incidents: Vec<(u64, String)>,
}

#[derive(Default)]
struct Stats {
    hists: BTreeMap<&'static str, Histogram<u64>>,
    answered: BTreeMap<&'static str, u64>,
    answered_total: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    counters: BTreeMap<&'static str, u64>,
    acked: Vec<(u64, u64)>,
    receipts: HashMap<u64, u32>,
    live_attached: HashMap<u64, u32>,
    e2e_samples: Vec<(u64, u64)>,
    send_samples: Vec<(u64, u64)>,
    incidents: Vec<(u64, String)>,
}

impl Stats {
    /// Keeps `what` with the time, up to `INCIDENTS_MAX`.
    fn incident(&mut self, what: String) {
        self.incident_at(now_us(), what);
    }

    /// Keeps `what` with its time `at` (unix µs), up to `INCIDENTS_MAX`.
    fn incident_at(&mut self, at: u64, what: String) {
        if self.incidents.len() < INCIDENTS_MAX {
            self.incidents.push((at, what));
        } else {
            self.count("incidents_dropped", 1);
        }
    }

    /// Counts what a connection did on the way to an answer (or failure):
    /// a retry after the server closed a reused connection, an answer
    /// with `Connection: close`.
    fn conn_events(&mut self, endpoint: &'static str, ev: ConnEvents) {
        if ev.closed_by_server {
            self.count("conn_close_answers", 1);
        }
        if let Some(r) = ev.retried {
            self.count("retries", 1);
            self.count(
                match r.why {
                    Retry::Write => "retries_write_failed",
                    Retry::Eof => "retries_eof",
                    Retry::Reset => "retries_reset",
                },
                1,
            );
            // A poll retried is a held poll the server closed unanswered
            // (or one that crossed the close of an idle connection): the
            // hand-over promises an answer to every held poll.
            self.count(
                match endpoint {
                    "send" => "retries_send",
                    "poll" | "idle_poll" => "retries_poll",
                    _ => "retries_other",
                },
                1,
            );
            let what = format!(
                "retry {endpoint}: {:?} {} ms after writing, on a connection opened {} ms \
                 before, after {} answers",
                r.why,
                r.waited.as_millis(),
                r.conn_age.as_millis(),
                r.conn_answers
            );
            let ago = r.at.elapsed().as_micros() as u64;
            self.incident_at(now_us().saturating_sub(ago), what);
        }
    }

    fn record(&mut self, name: &'static str, us: u64) {
        self.hists
            .entry(name)
            .or_insert_with(new_hist)
            .saturating_record(us.max(1));
    }

    fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_insert(0) += n;
    }

    fn error(&mut self, code: &str) {
        match self.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(code.to_string(), 1);
            }
        }
    }
}

/// Per owned user.
struct UserSlot {
    /// Sid of each tab once connected.
    sids: Vec<Option<Rc<str>>>,
    /// Messages this user sent (the low half of the message key).
    sent: u32,
    /// Presence the bench last set (false: online, true: away).
    away: bool,
}

struct Ctx {
    o: Options,
    graph: Graph,
    index: usize,
    sched: Schedule,
    users: RefCell<Vec<UserSlot>>,
    stats: RefCell<Stats>,
    rng: RefCell<Rng>,
    /// Sends in flight.
    inflight: Cell<u64>,
    /// Set (and `stop` notified) when live tabs should end.
    stopping: Cell<bool>,
    stop: Notify,
    /// Free action connections and how many exist.
    pool: RefCell<Vec<Conn>>,
    pool_open: Cell<usize>,
    /// Padding of message texts.
    filler: String,
    /// The run's start (unix ms), shared by all workers: makes cids unique
    /// per run.
    run_id: u64,
    /// Keep every delivery's and send's times (`WorkerResult::e2e_samples`).
    samples: bool,
}

/// The parts of any answer the bench reads.
#[derive(Deserialize)]
pub(crate) struct Reply<'a> {
    pub ok: bool,
    #[serde(default, borrow)]
    pub error: Option<ErrorBody<'a>>,
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub reset: bool,
    #[serde(default, borrow)]
    pub events: Vec<Event<'a>>,
    #[serde(default)]
    pub roster: Vec<RosterEntry>,
}

#[derive(Deserialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(borrow)]
    pub code: Cow<'a, str>,
}

#[derive(Deserialize)]
pub(crate) struct RosterEntry {
    pub id: u64,
    pub presence: String,
}

#[derive(Deserialize)]
pub(crate) struct Event<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    /// A user id (presence, typing) or an object (roster).
    #[serde(default)]
    pub user: Option<serde_json::Value>,
    #[serde(default, borrow)]
    pub status: Option<Cow<'a, str>>,
}

/// What one tab knows: its sid, its seq, its view of friends' presence.
struct TabView {
    user: u64,
    sid: Rc<str>,
    since: u64,
    /// Friends' presence, in the order of `graph.friends_of(user)`:
    /// 0 offline, 1 online, 2 away.
    presence: Vec<u8>,
    /// Message keys seen (duplicates are counted, not delivered twice).
    seen: HashSet<u64>,
    live: bool,
}

fn status_code(s: &str) -> u8 {
    match s {
        "online" => 1,
        "away" => 2,
        _ => 0,
    }
}

impl Ctx {
    fn owns(&self, user: u64) -> bool {
        ((user - 1) as usize) % self.o.workers == self.index
    }

    fn slot_index(&self, user: u64) -> usize {
        (user - 1) as usize / self.o.workers
    }

    fn jsonp(&self) -> Option<String> {
        let mut rng = self.rng.borrow_mut();
        if rng.unit() < self.o.jsonp_share {
            Some(format!("sb_cb{}", rng.below(1000)))
        } else {
            None
        }
    }

    /// One request: times it, counts the answer, decodes the envelope, and
    /// hands a successful reply to `on_ok`. Failures are counted by code.
    async fn call<R>(
        &self,
        conn: &mut Conn,
        endpoint: &'static str,
        target: &str,
        timeout: Duration,
        started: Instant,
        on_ok: impl FnOnce(&Ctx, Reply<'_>) -> R,
    ) -> Result<R, String> {
        let cb = self.jsonp();
        let answer = conn.get(target, cb.as_deref(), timeout).await;
        let done = Instant::now();
        let answer = match answer {
            Ok(a) => a,
            Err(f) => {
                let events = conn.take_events();
                let mut stats = self.stats.borrow_mut();
                stats.conn_events(endpoint, events);
                stats.error(f.code());
                stats.incident(format!("failed {endpoint}: {}", f.code()));
                return Err(f.code().to_string());
            }
        };
        let mut stats = self.stats.borrow_mut();
        stats.conn_events(endpoint, answer.events);
        *stats.answered_total.entry(endpoint).or_insert(0) += 1;
        if self.sched.measuring(done) {
            *stats.answered.entry(endpoint).or_insert(0) += 1;
        }
        if endpoint != "poll" || self.sched.measuring(started) {
            let name = match endpoint {
                "connect" => "req_connect",
                "poll" => "req_poll",
                "idle_poll" => "req_idle_poll",
                "send" => "req_send",
                "typing" => "req_typing",
                "presence" => "req_presence",
                _ => "req_other",
            };
            // Connects are timed in every phase (the storm is the ramp).
            if endpoint == "connect" || self.sched.measuring(started) {
                stats.record(name, done.duration_since(started).as_micros() as u64);
            }
        }
        let reply: Reply = match serde_json::from_slice(answer.body) {
            Ok(r) => r,
            Err(_) => {
                let code = format!("http_{}_unparsed", answer.status);
                stats.error(&code);
                stats.incident(format!("failed {endpoint}: {code}"));
                return Err(code);
            }
        };
        if !reply.ok || answer.status != 200 {
            let code = reply
                .error
                .as_ref()
                .map_or_else(|| format!("http_{}", answer.status), |e| e.code.to_string());
            stats.error(&code);
            stats.incident(format!("failed {endpoint}: {code}"));
            return Err(code);
        }
        drop(stats);
        Ok(on_ok(self, reply))
    }

    /// Applies a poll's events to a tab's view.
    fn apply_events(&self, tab: &mut TabView, reply: &Reply<'_>) {
        let now = now_us();
        let friends = self.graph.friends_of(tab.user);
        let mut stats = self.stats.borrow_mut();
        if reply.reset {
            stats.count("poll_resets", 1);
            stats.incident(format!("reset: user {} tab {}", tab.user, tab.sid));
            if tab.live {
                tab.live = false;
                if let Some(n) = stats.live_attached.get_mut(&tab.user) {
                    *n -= 1;
                }
            }
        }
        if let Some(seq) = reply.seq {
            tab.since = seq;
        }
        for ev in &reply.events {
            match &*ev.kind {
                "message" => {
                    let Some(text) = ev.text.as_deref() else {
                        continue;
                    };
                    let Some((key, stamp)) = parse_text(text) else {
                        stats.count("foreign_messages", 1);
                        continue;
                    };
                    if !tab.seen.insert(key) {
                        stats.count("duplicate_deliveries", 1);
                        continue;
                    }
                    if tab.live {
                        *stats.receipts.entry(key).or_insert(0) += 1;
                        if self.samples {
                            stats.e2e_samples.push((stamp, now));
                        }
                        if stamp >= self.sched.measure_from_us && stamp < self.sched.measure_to_us {
                            stats.record("e2e", now.saturating_sub(stamp));
                            stats.count("deliveries_measured", 1);
                        }
                    } else {
                        stats.count("idle_deliveries", 1);
                    }
                }
                "presence" => {
                    stats.count("presence_events", 1);
                    let user = ev.user.as_ref().and_then(|u| u.as_u64());
                    if let (Some(user), Some(status)) = (user, ev.status.as_deref()) {
                        if let Ok(i) = friends.binary_search(&user) {
                            tab.presence[i] = status_code(status);
                        } else {
                            stats.count("presence_about_strangers", 1);
                        }
                    }
                }
                "typing" => stats.count("typing_events", 1),
                _ => stats.count("other_events", 1),
            }
        }
    }

    /// `/connect` for one tab on `conn`; returns its view.
    async fn connect_tab(
        &self,
        conn: &mut Conn,
        user: u64,
        tab: usize,
        live: bool,
    ) -> Option<TabView> {
        let expires = now_us() / 1_000_000 + 86_400;
        let token = switchboard_storage::token::mint(self.o.secret.as_bytes(), user, expires);
        let mut target = String::with_capacity(128);
        target.push_str("/connect?token=");
        encode_into(&mut target, &token);
        let _ = write!(target, "&tab=t{tab}");
        let friends = self.graph.friends_of(user);
        let started = Instant::now();
        let r = self
            .call(
                conn,
                "connect",
                &target,
                REQUEST_TIMEOUT,
                started,
                |ctx, reply| {
                    let mut presence = vec![0u8; friends.len()];
                    for entry in &reply.roster {
                        if let Ok(i) = friends.binary_search(&entry.id) {
                            presence[i] = status_code(&entry.presence);
                        }
                    }
                    let mut stats = ctx.stats.borrow_mut();
                    if reply.roster.len() != friends.len() {
                        stats.count("roster_mismatch", 1);
                    }
                    // Friends not yet online must each be announced once.
                    let offline = presence.iter().filter(|&&p| p == 0).count() as u64;
                    stats.count("presence_min_needed", offline);
                    stats.count("tabs_connected", 1);
                    let sid: Rc<str> = Rc::from(reply.sid.unwrap_or_default());
                    TabView {
                        user,
                        sid,
                        since: reply.seq.unwrap_or(0),
                        presence,
                        seen: HashSet::new(),
                        live,
                    }
                },
            )
            .await;
        let view = r.ok()?;
        if live {
            *self
                .stats
                .borrow_mut()
                .live_attached
                .entry(user)
                .or_insert(0) += 1;
        }
        let slot = self.slot_index(user);
        self.users.borrow_mut()[slot].sids[tab] = Some(view.sid.clone());
        Some(view)
    }

    /// Counts a tab's wrong presence views at the end: every user of the
    /// bench is attached, so no friend may look offline.
    fn check_presence(&self, tab: &TabView) {
        let wrong = tab.presence.iter().filter(|&&p| p == 0).count() as u64;
        let mut stats = self.stats.borrow_mut();
        stats.count("presence_checked_tabs", 1);
        stats.count("presence_wrong_views", wrong);
    }
}

/// `k{key}t{us}x...` → (key, us).
pub(crate) fn parse_text(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix('k')?;
    let (key, rest) = rest.split_once('t')?;
    let stamp = rest.split('x').next()?;
    Some((key.parse().ok()?, stamp.parse().ok()?))
}

/// Runs one worker to its end and returns its result.
/// With `samples`, every delivery's and send's times are kept too
/// (`WorkerResult::e2e_samples`, for `handover`).
pub fn run(
    o: Options,
    index: usize,
    start_unix_ms: u64,
    samples: bool,
) -> Result<WorkerResult, String> {
    let graph = Graph::new(o.users, o.friends, o.seed, o.lattice)?;
    let sched = Schedule::new(&o, start_unix_ms);
    let owned: Vec<u64> = (1..=o.users as u64)
        .filter(|u| ((u - 1) as usize) % o.workers == index)
        .collect();
    let users = owned
        .iter()
        .map(|_| UserSlot {
            sids: vec![None; o.tabs],
            sent: 0,
            away: false,
        })
        .collect();
    let filler = "x".repeat(o.text_bytes);
    let ctx = Rc::new(Ctx {
        rng: RefCell::new(Rng::new(
            o.seed.wrapping_mul(1000).wrapping_add(index as u64 + 1),
        )),
        o,
        graph,
        index,
        sched,
        users: RefCell::new(users),
        stats: RefCell::new(Stats::default()),
        inflight: Cell::new(0),
        stopping: Cell::new(false),
        stop: Notify::new(),
        pool: RefCell::new(Vec::new()),
        pool_open: Cell::new(0),
        filler,
        run_id: start_unix_ms,
        samples,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, drive(ctx.clone(), owned));
    drop(local);
    let ctx = Rc::try_unwrap(ctx).map_err(|_| "tasks outlived the run".to_string())?;
    let stats = ctx.stats.into_inner();
    let mut out = WorkerResult {
        worker: index,
        ..Default::default()
    };
    for (name, h) in stats.hists {
        let pairs = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        out.hists.insert(name.to_string(), pairs);
    }
    out.answered = stats
        .answered
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.answered_total = stats
        .answered_total
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.errors = stats.errors;
    out.counters = stats
        .counters
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.acked = stats.acked;
    out.receipts = stats.receipts.into_iter().collect();
    out.live_attached = stats.live_attached.into_iter().collect();
    out.e2e_samples = stats.e2e_samples;
    out.send_samples = stats.send_samples;
    out.incidents = stats.incidents;
    Ok(out)
}

async fn drive(ctx: Rc<Ctx>, owned: Vec<u64>) {
    let o = &ctx.o;
    // Every tab of this worker gets a connect slot in the ramp: first
    // every user's tab 0 (so sessions start early), then tab 1, ...
    let n_tabs = owned.len() * o.tabs;
    let ramp = Duration::from_secs_f64(o.ramp_s);
    let at = |slot: usize| ctx.sched.start + ramp.mul_f64(slot as f64 / n_tabs.max(1) as f64);
    let mut tasks = Vec::new();
    let mut idle: Vec<(u64, usize, Instant)> = Vec::new();
    for t in 0..o.tabs {
        for (i, &u) in owned.iter().enumerate() {
            let when = at(t * owned.len() + i);
            if t < o.live_tabs_of(u) {
                tasks.push(tokio::task::spawn_local(live_tab(ctx.clone(), u, t, when)));
            } else {
                idle.push((u, t, when));
            }
        }
    }
    let groups = o.idle_conns.min(idle.len());
    let mut split: Vec<Vec<(u64, usize, Instant)>> = vec![Vec::new(); groups];
    for (i, tab) in idle.into_iter().enumerate() {
        split[i % groups.max(1)].push(tab);
    }
    for group in split {
        tasks.push(tokio::task::spawn_local(idle_group(ctx.clone(), group)));
    }
    let share = o.workers as f64;
    if o.rate > 0.0 {
        tasks.push(tokio::task::spawn_local(scheduler(
            ctx.clone(),
            Action::Send,
            o.rate / share,
        )));
    }
    if o.typing_rate > 0.0 {
        tasks.push(tokio::task::spawn_local(scheduler(
            ctx.clone(),
            Action::Typing,
            o.typing_rate / share,
        )));
    }
    if o.presence_rate > 0.0 {
        tasks.push(tokio::task::spawn_local(scheduler(
            ctx.clone(),
            Action::Presence,
            o.presence_rate / share,
        )));
    }
    // The stopper: after the measured phase, let sends settle, drain.
    sleep_until(ctx.sched.measure_to.into()).await;
    let settle_until = Instant::now() + SENDS_SETTLE_MAX;
    while ctx.inflight.get() > 0 && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.inflight.get() > 0 {
        ctx.stats
            .borrow_mut()
            .count("sends_unsettled", ctx.inflight.get());
    }
    tokio::time::sleep(Duration::from_secs_f64(ctx.o.drain_s)).await;
    ctx.stopping.set(true);
    ctx.stop.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
    ctx.pool.borrow_mut().clear();
}

/// A long-polling tab on its own connection.
async fn live_tab(ctx: Rc<Ctx>, user: u64, tab: usize, connect_at: Instant) {
    sleep_until(connect_at.into()).await;
    let mut conn = Conn::new(ctx.o.addr);
    let view = loop {
        if ctx.stopping.get() {
            return;
        }
        let started = Instant::now();
        match conn.open().await {
            Ok(()) => ctx
                .stats
                .borrow_mut()
                .record("tcp_connect", started.elapsed().as_micros() as u64),
            Err(f) => {
                ctx.stats.borrow_mut().error(f.code());
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        match ctx.connect_tab(&mut conn, user, tab, true).await {
            Some(v) => break v,
            None => {
                // Counted; a browser would retry after a pause.
                ctx.stats.borrow_mut().count("connect_retries", 1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut view = view;
    let mut target = String::with_capacity(96);
    let wait = Duration::from_secs(ctx.o.poll_wait_s);
    loop {
        let stopped = ctx.stop.notified();
        if ctx.stopping.get() {
            break;
        }
        target.clear();
        let _ = write!(
            target,
            "/poll?sid={}&since={}&wait={}",
            view.sid, view.since, ctx.o.poll_wait_s
        );
        let started = Instant::now();
        let result = tokio::select! {
            r = ctx.call(&mut conn, "poll", &target, wait + POLL_SLACK, started, |ctx, reply| {
                ctx.apply_events(&mut view, &reply);
            }) => r,
            _ = stopped => break,
        };
        if let Err(code) = result {
            if code == "unknown_session" {
                // Detached (timed out or evicted): the tab's later
                // messages are lost to it; it reconnects like a page would.
                ctx.stats.borrow_mut().count("tab_reconnects", 1);
                if view.live {
                    view.live = false;
                    if let Some(n) = ctx.stats.borrow_mut().live_attached.get_mut(&user) {
                        *n -= 1;
                    }
                }
                if let Some(v) = ctx.connect_tab(&mut conn, user, tab, false).await {
                    view = v;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ctx.check_presence(&view);
}

/// Idle tabs sharing one connection: each connects at its ramp slot, then
/// polls with `wait=0` every `--idle-poll-s` counted from its connect, so
/// it stays attached (the tab timeout counts from the end of the last
/// poll) however long the ramp takes. One heap of due times drives them.
async fn idle_group(ctx: Rc<Ctx>, tabs: Vec<(u64, usize, Instant)>) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut conn = Conn::new(ctx.o.addr);
    let mut views: Vec<Option<TabView>> = (0..tabs.len()).map(|_| None).collect();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = tabs
        .iter()
        .enumerate()
        .map(|(i, t)| Reverse((t.2, i)))
        .collect();
    let period = Duration::from_secs_f64(ctx.o.idle_poll_s);
    let mut target = String::with_capacity(96);
    while let Some(Reverse((at, i))) = due.pop() {
        let stopped = ctx.stop.notified();
        if ctx.stopping.get() {
            break;
        }
        tokio::select! {
            _ = sleep_until(at.into()) => {}
            _ = stopped => break,
        }
        match &mut views[i] {
            None => {
                let (user, tab, _) = tabs[i];
                views[i] = ctx.connect_tab(&mut conn, user, tab, false).await;
                if views[i].is_some() {
                    due.push(Reverse((Instant::now() + period, i)));
                }
            }
            Some(view) => {
                target.clear();
                let _ = write!(target, "/poll?sid={}&since={}&wait=0", view.sid, view.since);
                let started = Instant::now();
                let r = ctx
                    .call(
                        &mut conn,
                        "idle_poll",
                        &target,
                        REQUEST_TIMEOUT,
                        started,
                        |ctx, reply| {
                            ctx.apply_events(view, &reply);
                        },
                    )
                    .await;
                if let Err(code) = r {
                    if code == "unknown_session" {
                        ctx.stats.borrow_mut().count("idle_tabs_detached", 1);
                        views[i] = None;
                        continue;
                    }
                }
                due.push(Reverse((at.max(started) + period, i)));
            }
        }
    }
    // A last look, so that every tab's view of presence is current.
    let until = Instant::now() + FINAL_CHECK_MAX;
    for view in views.iter_mut().flatten() {
        if Instant::now() > until {
            ctx.stats.borrow_mut().count("final_checks_skipped", 1);
            continue;
        }
        target.clear();
        let _ = write!(target, "/poll?sid={}&since={}&wait=0", view.sid, view.since);
        let started = Instant::now();
        let ok = ctx
            .call(
                &mut conn,
                "final_poll",
                &target,
                REQUEST_TIMEOUT,
                started,
                |ctx, reply| {
                    ctx.apply_events(view, &reply);
                },
            )
            .await
            .is_ok();
        if ok {
            ctx.check_presence(view);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Send,
    Typing,
    Presence,
}

/// An open-loop schedule of `rate` slots per second from the end of the
/// ramp to the end of the measured phase.
async fn scheduler(ctx: Rc<Ctx>, action: Action, rate: f64) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let first = ctx.sched.traffic;
    let last = ctx.sched.measure_to;
    let mut k: u32 = 0;
    let live_users: Vec<u64> = (1..=ctx.o.live_users as u64)
        .filter(|&u| ctx.owns(u))
        .collect();
    if live_users.is_empty() {
        return;
    }
    loop {
        let due = first + period * k;
        k += 1;
        if due >= last {
            break;
        }
        sleep_until(due.into()).await;
        let measuring = ctx.sched.measuring(due);
        let mut stats = ctx.stats.borrow_mut();
        if measuring {
            stats.count("slots", 1);
            if Instant::now().duration_since(due) > SLOT_LATE {
                stats.count("slots_late", 1);
            }
        }
        let (user, friend) = {
            let mut rng = ctx.rng.borrow_mut();
            let user = live_users[rng.below(live_users.len() as u64) as usize];
            let friends = ctx.graph.friends_of(user);
            (user, friends[rng.below(friends.len() as u64) as usize])
        };
        let slot = ctx.slot_index(user);
        let Some(sid) = ctx.users.borrow()[slot].sids[0].clone() else {
            stats.count("slots_missed_no_tab", 1);
            continue;
        };
        let conn = match ctx.pool.borrow_mut().pop() {
            Some(c) => c,
            None if ctx.pool_open.get() < ctx.o.action_conns => {
                ctx.pool_open.set(ctx.pool_open.get() + 1);
                Conn::new(ctx.o.addr)
            }
            None => {
                stats.count("slots_missed_no_conn", 1);
                continue;
            }
        };
        drop(stats);
        let ctx2 = ctx.clone();
        match action {
            Action::Send => {
                ctx.inflight.set(ctx.inflight.get() + 1);
                tokio::task::spawn_local(send(ctx2, conn, user, friend, sid, due));
            }
            Action::Typing => {
                tokio::task::spawn_local(typing(ctx2, conn, friend, sid, due));
            }
            Action::Presence => {
                tokio::task::spawn_local(presence(ctx2, conn, user, sid, due));
            }
        }
    }
}

fn give_back(ctx: &Ctx, conn: Conn) {
    if conn.is_open() {
        ctx.pool.borrow_mut().push(conn);
    } else {
        // Broken: the slot is freed, a later one opens a new connection.
        ctx.pool_open.set(ctx.pool_open.get() - 1);
    }
}

async fn send(ctx: Rc<Ctx>, mut conn: Conn, user: u64, to: u64, sid: Rc<str>, due: Instant) {
    let n = {
        let mut users = ctx.users.borrow_mut();
        let slot = &mut users[ctx.slot_index(user)];
        slot.sent += 1;
        slot.sent
    };
    let key = (user << 32) | n as u64;
    // The stamp is the slot's due time in unix µs.
    let late = Instant::now().saturating_duration_since(due);
    let stamp = now_us() - late.as_micros() as u64;
    let mut text = format!("k{key}t{stamp}");
    let pad = ctx.o.text_bytes.saturating_sub(text.len());
    text.push_str(&ctx.filler[..pad]);
    let mut target = String::with_capacity(96 + text.len());
    // The cid is unique per run: the server remembers cids for a day.
    let _ = write!(
        target,
        "/send?sid={sid}&to={to}&cid=c{}_{key}&text={text}",
        ctx.run_id
    );
    let r = ctx
        .call(&mut conn, "send", &target, REQUEST_TIMEOUT, due, |_, _| ())
        .await;
    {
        let mut stats = ctx.stats.borrow_mut();
        match r {
            Ok(()) => {
                stats.acked.push((key, to));
                stats.count("sends_acked", 1);
                if ctx.samples {
                    stats.send_samples.push((stamp, now_us()));
                }
                if ctx.sched.measuring(due) {
                    stats.count("sends_acked_measured", 1);
                }
            }
            Err(_) => stats.count("sends_failed", 1),
        }
    }
    ctx.inflight.set(ctx.inflight.get() - 1);
    give_back(&ctx, conn);
}

async fn typing(ctx: Rc<Ctx>, mut conn: Conn, to: u64, sid: Rc<str>, due: Instant) {
    let target = format!("/typing?sid={sid}&to={to}&state=typing");
    let _ = ctx
        .call(
            &mut conn,
            "typing",
            &target,
            REQUEST_TIMEOUT,
            due,
            |_, _| (),
        )
        .await;
    give_back(&ctx, conn);
}

async fn presence(ctx: Rc<Ctx>, mut conn: Conn, user: u64, sid: Rc<str>, due: Instant) {
    let away = {
        let mut users = ctx.users.borrow_mut();
        let slot = &mut users[ctx.slot_index(user)];
        slot.away = !slot.away;
        slot.away
    };
    let status = if away { "away" } else { "online" };
    let target = format!("/presence?sid={sid}&status={status}");
    let _ = ctx
        .call(
            &mut conn,
            "presence",
            &target,
            REQUEST_TIMEOUT,
            due,
            |_, _| (),
        )
        .await;
    give_back(&ctx, conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_round_trips() {
        for (text, want) in [
            (
                "k4294967297t1700000000000000xxxx",
                Some((4294967297, 1700000000000000)),
            ),
            ("k1t2", Some((1, 2))),
            ("hello", None),
            ("kxt1", None),
        ] {
            assert_eq!(parse_text(text), want, "{text}");
        }
    }
}
