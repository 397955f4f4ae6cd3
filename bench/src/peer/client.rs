//! One `peer` worker process: the users `u` with `(u - 1) % workers ==
//! index`, one tab each, on one current-thread tokio runtime.
//!
//! Each tab is one task running two loops side by side: the poll loop on
//! the tab's poll connection (connect or BOSH session setup, then a held
//! request re-issued as soon as it returns) and the send loop on its send
//! connection (one send at a time from the tab's queue). One scheduler
//! task puts the open-loop send slots into the tabs' queues.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::sleep_until;

use super::bosh;
use super::{PeerOptions, Proto};
use crate::graph::{Graph, Rng};
use crate::http::{encode_into, Answer, Conn, Failure};
use crate::worker::{new_hist, now_us, parse_text, Reply, Schedule};

/// A request may take the long-poll wait plus this long (a BOSH send may
/// be held until the tab's next poll arrives).
const REQUEST_SLACK: Duration = Duration::from_secs(10);
/// After a failed request the loop pauses this long before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// A slot issued later than this after its due time counts as late.
const SLOT_LATE: Duration = Duration::from_millis(10);
/// Sends waiting in one tab's queue, at most; a slot finding the queue
/// full is dropped and counted (`sends_dropped_queue_full`): at 1000 msg/s
/// over 1000 users that is minutes of backlog, a tab that stopped.
const SEND_QUEUE_MAX: usize = 1000;
/// After the window the worker waits at most this long for queued and
/// in-flight sends.
const SENDS_SETTLE_MAX: Duration = Duration::from_secs(15);

/// What a worker hands to the coordinator.
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct PeerResult {
    pub worker: usize,
    /// Histograms (µs) as `(value, count)` pairs.
    pub hists: BTreeMap<String, Vec<(u64, u64)>>,
    /// Answers (HTTP, any status) received in the window, and in the run.
    pub requests_measured: u64,
    pub requests_total: u64,
    /// Failures by code (protocol error code, `http_NNN`, `io_*`,
    /// `bosh_terminate_CONDITION`).
    pub errors: BTreeMap<String, u64>,
    /// Other counts (see the report).
    pub counters: BTreeMap<String, u64>,
    /// Acknowledged sends.
    pub acked: Vec<Acked>,
    /// Every successful connect (login): `(user, unix µs)`. The delivery
    /// check expects a message only at a recipient logged in before it was
    /// sent, and tells a lost message's story with them.
    pub connects: Vec<(u64, u64)>,
    /// When the tabs stopped polling (unix µs): a message acknowledged
    /// less than the drain before it is not checked.
    pub stopped_us: u64,
    /// Receipts by message key: at its recipient, and back at its sender.
    pub receipts: Vec<(u64, u32)>,
    pub echoes: Vec<(u64, u32)>,
}

/// One acknowledged send.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// `sender << 32 | n`, the n-th message of the sender.
    pub key: u64,
    /// The recipient.
    pub to: u64,
    /// The slot's due time, the moment the request went out, and the
    /// acknowledgement, unix µs.
    pub due_us: u64,
    pub sent_us: u64,
    pub acked_us: u64,
}

#[derive(Default)]
struct Stats {
    hists: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    counters: BTreeMap<&'static str, u64>,
    requests_measured: u64,
    requests_total: u64,
    acked: Vec<Acked>,
    connects: Vec<(u64, u64)>,
    stopped_us: u64,
    receipts: HashMap<u64, u32>,
    echoes: HashMap<u64, u32>,
}

impl Stats {
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

/// One send slot waiting in a tab's queue.
struct Pending {
    to: u64,
    /// The slot's due time, as an instant and in unix µs (the stamp).
    due: Instant,
    due_us: u64,
}

/// One user's tab.
struct Tab {
    user: u64,
    /// Switchboard's sid or ejabberd's BOSH sid, once connected.
    sid: RefCell<Option<Rc<str>>>,
    /// JSONP: the last seq seen (`since` of the next poll).
    since: Cell<u64>,
    /// BOSH: the last request id used; each request takes the next, in the
    /// order the requests are written (the server answers them in rid
    /// order, holding a later one until the earlier arrived).
    rid: Cell<u64>,
    /// Sends waiting for the send connection, oldest first.
    queue: RefCell<VecDeque<Pending>>,
    /// Wakes the send loop (a slot queued, or the worker stops).
    wake: Notify,
    /// Messages this user sent (the low half of the message key).
    sent: Cell<u32>,
    /// When the last login completed (unix µs); 0 while logging in.
    login_us: Cell<u64>,
}

impl Tab {
    fn next_rid(&self) -> u64 {
        self.rid.set(self.rid.get() + 1);
        self.rid.get()
    }
}

struct Ctx {
    o: PeerOptions,
    graph: Graph,
    index: usize,
    sched: Schedule,
    tabs: Vec<Rc<Tab>>,
    stats: RefCell<Stats>,
    rng: RefCell<Rng>,
    /// Requests made: names each JSONP callback (unique in the run).
    callbacks: Cell<u64>,
    /// Sends queued or in flight.
    pending: Cell<u64>,
    /// Set (and `stop` notified) when the tabs should end.
    stopping: Cell<bool>,
    stop: Notify,
    filler: String,
    /// The run's start (unix ms), shared by all workers: makes cids unique
    /// per run (Switchboard remembers cids).
    run_id: u64,
}

/// What the tab learned from one answer.
enum Outcome {
    Ok,
    /// The server no longer knows the session: connect again.
    Gone,
    /// Any other failure (counted).
    Failed,
}

impl Ctx {
    fn deadline(&self) -> Duration {
        Duration::from_secs(self.o.wait_s) + REQUEST_SLACK
    }

    fn callback(&self) -> String {
        let n = self.callbacks.get() + 1;
        self.callbacks.set(n);
        format!("sb{}_{}_{n}", self.run_id % 1_000_000, self.index)
    }

    /// Counts one answer (the generator's requests, for CPU per request).
    fn answered(&self) {
        let mut s = self.stats.borrow_mut();
        s.requests_total += 1;
        if self.sched.measuring(Instant::now()) {
            s.requests_measured += 1;
        }
    }

    /// A message text seen by `tab`: a receipt at its recipient (latency
    /// recorded for slots in the window) or an echo at its sender.
    fn received(&self, tab: &Tab, text: &str) {
        let mut stats = self.stats.borrow_mut();
        let Some((key, stamp)) = parse_text(text) else {
            stats.count("foreign_messages", 1);
            return;
        };
        if key >> 32 == tab.user {
            *stats.echoes.entry(key).or_insert(0) += 1;
            return;
        }
        *stats.receipts.entry(key).or_insert(0) += 1;
        if tab.login_us.get() == 0 || stamp < tab.login_us.get() {
            // Due before the recipient was there to get it (a login late
            // or lost): not the server's latency, and not checked.
            stats.count("received_due_before_login", 1);
        } else if stamp >= self.sched.measure_from_us && stamp < self.sched.measure_to_us {
            stats.record("e2e", now_us().saturating_sub(stamp));
            stats.count("deliveries_measured", 1);
        }
    }

    /// A JSONP answer: counts it, applies its events; `Err` with the code.
    fn jsonp_answer(
        &self,
        tab: &Tab,
        answer: Result<Answer<'_>, Failure>,
        on_ok: impl FnOnce(&Reply<'_>),
    ) -> Outcome {
        let answer = match answer {
            Ok(a) => a,
            Err(f) => {
                self.stats.borrow_mut().error(f.code());
                return Outcome::Failed;
            }
        };
        self.answered();
        let reply: Reply = match serde_json::from_slice(answer.body) {
            Ok(r) => r,
            Err(_) => {
                let code = format!("http_{}_unparsed", answer.status);
                self.stats.borrow_mut().error(&code);
                return Outcome::Failed;
            }
        };
        if !reply.ok || answer.status != 200 {
            let code = reply
                .error
                .as_ref()
                .map_or_else(|| format!("http_{}", answer.status), |e| e.code.to_string());
            self.stats.borrow_mut().error(&code);
            return if code == "unknown_session" {
                Outcome::Gone
            } else {
                Outcome::Failed
            };
        }
        if reply.reset {
            self.stats.borrow_mut().count("poll_resets", 1);
        }
        if let Some(seq) = reply.seq {
            tab.since.set(seq);
        }
        for ev in &reply.events {
            match &*ev.kind {
                "message" => {
                    if let Some(text) = ev.text.as_deref() {
                        self.received(tab, text);
                    }
                }
                "presence" => self.stats.borrow_mut().count("presence_events", 1),
                _ => self.stats.borrow_mut().count("other_events", 1),
            }
        }
        on_ok(&reply);
        Outcome::Ok
    }

    /// A BOSH answer: counts it, applies its stanzas; hands the scanned
    /// answer to `on_ok` (session setup reads it).
    fn bosh_answer(
        &self,
        tab: &Tab,
        answer: Result<Answer<'_>, Failure>,
        on_ok: impl FnOnce(&bosh::Answer<'_>) -> bool,
    ) -> Outcome {
        let answer = match answer {
            Ok(a) => a,
            Err(f) => {
                self.stats.borrow_mut().error(f.code());
                return Outcome::Failed;
            }
        };
        self.answered();
        let Some(body) = bosh::Answer::parse(answer.body) else {
            let code = format!("http_{}_unparsed", answer.status);
            self.stats.borrow_mut().error(&code);
            return if answer.status == 404 {
                Outcome::Gone
            } else {
                Outcome::Failed
            };
        };
        if let Some(condition) = body.terminate() {
            self.stats
                .borrow_mut()
                .error(&format!("bosh_terminate_{condition}"));
            return Outcome::Gone;
        }
        if answer.status != 200 {
            self.stats
                .borrow_mut()
                .error(&format!("http_{}", answer.status));
            return Outcome::Failed;
        }
        for m in body.messages() {
            match (m.kind, m.body) {
                (Some("error"), _) => self.stats.borrow_mut().count("bounced_messages", 1),
                (_, Some(text)) => self.received(tab, text),
                _ => self.stats.borrow_mut().count("other_messages", 1),
            }
        }
        let presences = body.count("<presence");
        if presences > 0 {
            self.stats
                .borrow_mut()
                .count("presence_events", presences as u64);
        }
        if on_ok(&body) {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }

    async fn bosh_post(
        &self,
        tab: &Tab,
        conn: &mut Conn,
        body: &str,
        on_ok: impl FnOnce(&bosh::Answer<'_>) -> bool,
    ) -> Outcome {
        let answer = conn
            .post(
                &self.o.bosh_path,
                bosh::CONTENT_TYPE,
                body.as_bytes(),
                self.deadline(),
            )
            .await;
        self.bosh_answer(tab, answer, on_ok)
    }

    /// Connects the tab on `conn` (its poll connection): Switchboard's
    /// `/connect`, or a whole BOSH session setup (session, SASL PLAIN,
    /// restart, bind, session, roster, initial presence). Timed in
    /// `req_connect`; `false` when it failed (counted).
    async fn connect(&self, tab: &Tab, conn: &mut Conn) -> bool {
        let started = Instant::now();
        let friends = self.graph.friends_of(tab.user).len();
        let ok = match self.o.proto {
            Proto::Jsonp => {
                let expires = now_us() / 1_000_000 + 86_400;
                let token =
                    switchboard_storage::token::mint(self.o.secret.as_bytes(), tab.user, expires);
                let mut target = String::with_capacity(160);
                target.push_str("/connect?token=");
                encode_into(&mut target, &token);
                target.push_str("&tab=t0");
                let cb = self.callback();
                let answer = conn.get(&target, Some(&cb), self.deadline()).await;
                let outcome = self.jsonp_answer(tab, answer, |reply| {
                    if reply.roster.len() != friends {
                        self.stats.borrow_mut().count("roster_mismatch", 1);
                    }
                    *tab.sid.borrow_mut() = reply.sid.as_deref().map(Rc::from);
                });
                matches!(outcome, Outcome::Ok) && tab.sid.borrow().is_some()
            }
            Proto::Bosh => self.bosh_setup(tab, conn, friends).await,
        };
        if ok {
            let mut stats = self.stats.borrow_mut();
            stats.record("req_connect", started.elapsed().as_micros() as u64);
            stats.connects.push((tab.user, now_us()));
            tab.login_us.set(now_us());
        } else {
            self.stats.borrow_mut().count("connect_failures", 1);
        }
        ok
    }

    async fn bosh_setup(&self, tab: &Tab, conn: &mut Conn, friends: usize) -> bool {
        let domain = &self.o.xmpp_domain;
        let mut body = String::with_capacity(512);
        *tab.sid.borrow_mut() = None;
        tab.rid
            .set(1_000_000 + self.rng.borrow_mut().below(1 << 40));
        bosh::session_request(&mut body, tab.next_rid(), domain, self.o.wait_s);
        let mut sid: Option<Rc<str>> = None;
        let outcome = self
            .bosh_post(tab, conn, &body, |a| {
                sid = a.attr("sid").map(Rc::from);
                sid.is_some() && a.has("PLAIN")
            })
            .await;
        let Some(sid) = sid.filter(|_| matches!(outcome, Outcome::Ok)) else {
            return false;
        };
        // Each step's answer must hold its mark; the roster's items are
        // counted against the graph.
        let auth = bosh::auth_plain(&format!("user{}", tab.user), &self.o.password);
        let steps: [(Option<&str>, &str); 6] = [
            (Some(&auth), "<success"),
            (None, "<bind"), // the stream restart: features offer bind
            (Some(bosh::BIND), "type='result'"),
            (Some(bosh::SESSION), "type='result'"),
            (Some(bosh::ROSTER_GET), "type='result'"),
            // Initial presence: friends online learn of it, and theirs
            // comes back (on this answer or a later one).
            (Some(bosh::PRESENCE), ""),
        ];
        for (payload, mark) in steps {
            match payload {
                Some(p) => bosh::request(&mut body, tab.next_rid(), &sid, p),
                None => bosh::restart(&mut body, tab.next_rid(), &sid, domain),
            }
            let outcome = self
                .bosh_post(tab, conn, &body, |a| {
                    if payload == Some(bosh::ROSTER_GET) && a.count("<item ") != friends {
                        self.stats.borrow_mut().count("roster_mismatch", 1);
                    }
                    a.has(mark)
                })
                .await;
            if !matches!(outcome, Outcome::Ok) {
                self.stats.borrow_mut().count("bosh_login_step_failed", 1);
                return false;
            }
        }
        *tab.sid.borrow_mut() = Some(sid);
        true
    }

    /// One held poll; `Gone` when the session ended.
    async fn poll(&self, tab: &Tab, conn: &mut Conn, buf: &mut String) -> Outcome {
        let Some(sid) = tab.sid.borrow().clone() else {
            return Outcome::Gone;
        };
        match self.o.proto {
            Proto::Jsonp => {
                buf.clear();
                let _ = write!(
                    buf,
                    "/poll?sid={sid}&since={}&wait={}",
                    tab.since.get(),
                    self.o.wait_s
                );
                let cb = self.callback();
                let answer = conn.get(buf, Some(&cb), self.deadline()).await;
                self.jsonp_answer(tab, answer, |_| ())
            }
            Proto::Bosh => {
                bosh::request(buf, tab.next_rid(), &sid, "");
                self.bosh_post(tab, conn, buf, |_| true).await
            }
        }
    }

    /// One send; `true` when the server acknowledged it.
    async fn send(&self, tab: &Tab, conn: &mut Conn, p: &Pending, buf: &mut String) -> bool {
        let Some(sid) = tab.sid.borrow().clone() else {
            self.stats.borrow_mut().error("no_session");
            return false;
        };
        let n = tab.sent.get() + 1;
        tab.sent.set(n);
        let key = (tab.user << 32) | n as u64;
        let mut text = format!("k{key}t{}", p.due_us);
        let pad = self.o.text_bytes.saturating_sub(text.len());
        text.push_str(&self.filler[..pad]);
        let measuring = self.sched.measuring(p.due);
        if measuring {
            self.stats.borrow_mut().record(
                "send_queued",
                Instant::now().duration_since(p.due).as_micros() as u64,
            );
        }
        let sent_us = now_us();
        let outcome = match self.o.proto {
            Proto::Jsonp => {
                buf.clear();
                // The cid is unique per run: Switchboard remembers cids.
                let _ = write!(
                    buf,
                    "/send?sid={sid}&to={}&cid=c{}_{key}&text={text}",
                    p.to, self.run_id
                );
                let cb = self.callback();
                let answer = conn.get(buf, Some(&cb), self.deadline()).await;
                self.jsonp_answer(tab, answer, |_| ())
            }
            Proto::Bosh => {
                let stanza = format!(
                    "<message to='user{}@{}' type='chat' id='k{key}' xmlns='jabber:client'><body>{text}</body></message>",
                    p.to, self.o.xmpp_domain
                );
                bosh::request(buf, tab.next_rid(), &sid, &stanza);
                self.bosh_post(tab, conn, buf, |_| true).await
            }
        };
        let ok = matches!(outcome, Outcome::Ok);
        let mut stats = self.stats.borrow_mut();
        if ok {
            stats.acked.push(Acked {
                key,
                to: p.to,
                due_us: p.due_us,
                sent_us,
                acked_us: now_us(),
            });
            stats.count("sends_acked", 1);
            if measuring {
                stats.count("sends_acked_measured", 1);
                stats.record("req_send", p.due.elapsed().as_micros() as u64);
            }
        } else {
            stats.count("sends_failed", 1);
        }
        ok
    }
}

/// Runs one worker to its end and returns its result.
pub fn run(o: PeerOptions, index: usize, start_unix_ms: u64) -> Result<PeerResult, String> {
    let graph = o.graph()?;
    let sched = o.schedule(start_unix_ms);
    let tabs = (1..=o.users as u64)
        .filter(|u| ((u - 1) as usize) % o.workers == index)
        .map(|user| {
            Rc::new(Tab {
                user,
                sid: RefCell::new(None),
                since: Cell::new(0),
                rid: Cell::new(0),
                queue: RefCell::new(VecDeque::new()),
                wake: Notify::new(),
                sent: Cell::new(0),
                login_us: Cell::new(0),
            })
        })
        .collect();
    let ctx = Rc::new(Ctx {
        rng: RefCell::new(Rng::new(
            o.seed.wrapping_mul(1000).wrapping_add(index as u64 + 1),
        )),
        filler: "x".repeat(o.text_bytes),
        o,
        graph,
        index,
        sched,
        tabs,
        stats: RefCell::new(Stats::default()),
        callbacks: Cell::new(0),
        pending: Cell::new(0),
        stopping: Cell::new(false),
        stop: Notify::new(),
        run_id: start_unix_ms,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, drive(ctx.clone()));
    drop(local);
    let ctx = Rc::try_unwrap(ctx).map_err(|_| "tasks outlived the run".to_string())?;
    let stats = ctx.stats.into_inner();
    let mut out = PeerResult {
        worker: index,
        requests_measured: stats.requests_measured,
        requests_total: stats.requests_total,
        errors: stats.errors,
        acked: stats.acked,
        connects: stats.connects,
        stopped_us: stats.stopped_us,
        receipts: stats.receipts.into_iter().collect(),
        echoes: stats.echoes.into_iter().collect(),
        ..Default::default()
    };
    for (name, h) in stats.hists {
        let pairs = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        out.hists.insert(name.to_string(), pairs);
    }
    out.counters = stats
        .counters
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(out)
}

async fn drive(ctx: Rc<Ctx>) {
    let n = ctx.tabs.len();
    let ramp = Duration::from_secs_f64(ctx.o.ramp_s);
    let mut tasks = Vec::with_capacity(n + 1);
    for (i, tab) in ctx.tabs.iter().enumerate() {
        let at = ctx.sched.start + ramp.mul_f64(i as f64 / n.max(1) as f64);
        tasks.push(tokio::task::spawn_local(run_tab(
            ctx.clone(),
            tab.clone(),
            at,
        )));
    }
    if ctx.o.rate > 0.0 {
        tasks.push(tokio::task::spawn_local(scheduler(ctx.clone())));
    }
    // After the window: let queued and in-flight sends settle, drain.
    sleep_until(ctx.sched.measure_to.into()).await;
    let settle_until = Instant::now() + SENDS_SETTLE_MAX;
    while ctx.pending.get() > 0 && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.pending.get() > 0 {
        ctx.stats
            .borrow_mut()
            .count("sends_unsettled", ctx.pending.get());
    }
    tokio::time::sleep(Duration::from_secs_f64(ctx.o.drain_s)).await;
    ctx.stopping.set(true);
    ctx.stats.borrow_mut().stopped_us = now_us();
    ctx.stop.notify_waiters();
    for tab in &ctx.tabs {
        tab.wake.notify_one();
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The open-loop schedule: `rate / workers` slots a second from the end
/// of the ramp to the end of the window, each into a random tab's queue.
async fn scheduler(ctx: Rc<Ctx>) {
    let period = Duration::from_secs_f64(ctx.o.workers as f64 / ctx.o.rate);
    let first = ctx.sched.traffic;
    let last = ctx.sched.measure_to;
    let first_us = now_us() + first.saturating_duration_since(Instant::now()).as_micros() as u64;
    if ctx.tabs.is_empty() {
        return;
    }
    let mut k: u32 = 0;
    loop {
        let offset = period * k;
        let due = first + offset;
        k += 1;
        if due >= last {
            break;
        }
        sleep_until(due.into()).await;
        let measuring = ctx.sched.measuring(due);
        let (tab, to) = {
            let mut rng = ctx.rng.borrow_mut();
            let tab = &ctx.tabs[rng.below(ctx.tabs.len() as u64) as usize];
            let friends = ctx.graph.friends_of(tab.user);
            (tab, friends[rng.below(friends.len() as u64) as usize])
        };
        let mut stats = ctx.stats.borrow_mut();
        if measuring {
            stats.count("slots", 1);
            if Instant::now().duration_since(due) > SLOT_LATE {
                stats.count("slots_late", 1);
            }
        }
        let mut queue = tab.queue.borrow_mut();
        if queue.len() >= SEND_QUEUE_MAX {
            stats.count("sends_dropped_queue_full", 1);
            continue;
        }
        queue.push_back(Pending {
            to,
            due,
            due_us: first_us + offset.as_micros() as u64,
        });
        ctx.pending.set(ctx.pending.get() + 1);
        tab.wake.notify_one();
    }
}

/// One tab: connects at `connect_at`, then polls and sends side by side
/// until the worker stops.
async fn run_tab(ctx: Rc<Ctx>, tab: Rc<Tab>, connect_at: Instant) {
    sleep_until(connect_at.into()).await;
    let mut poll_conn = Conn::new(ctx.o.addr);
    let mut send_conn = Conn::new(ctx.o.addr);
    let polls = async {
        let mut buf = String::with_capacity(256);
        let mut connected = false;
        loop {
            let stopped = ctx.stop.notified();
            if ctx.stopping.get() {
                break;
            }
            tokio::select! {
                _ = async {
                    if !connected {
                        connected = ctx.connect(&tab, &mut poll_conn).await;
                        if !connected {
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                        return;
                    }
                    match ctx.poll(&tab, &mut poll_conn, &mut buf).await {
                        Outcome::Ok => {}
                        Outcome::Gone => {
                            ctx.stats.borrow_mut().count("reconnects", 1);
                            *tab.sid.borrow_mut() = None;
                            tab.login_us.set(0);
                            connected = false;
                        }
                        Outcome::Failed => tokio::time::sleep(RETRY_PAUSE).await,
                    }
                } => {}
                _ = stopped => break,
            }
        }
    };
    let sends = async {
        let mut buf = String::with_capacity(256);
        loop {
            // A permit stored by `notify_one` is never lost: a slot queued
            // while a send is in flight is found on the next turn.
            let next = tab.queue.borrow_mut().pop_front();
            match next {
                Some(p) => {
                    while tab.sid.borrow().is_none() && !ctx.stopping.get() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    ctx.send(&tab, &mut send_conn, &p, &mut buf).await;
                    ctx.pending.set(ctx.pending.get() - 1);
                }
                None if ctx.stopping.get() => break,
                None => tab.wake.notified().await,
            }
        }
    };
    tokio::join!(polls, sends);
}
