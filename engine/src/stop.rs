//! How a running server stops, shard by shard, without dropping an answer.
//!
//! A stop is asked for with [`StopHandle::stop`] (SIGTERM and SIGINT do it
//! in the binary: `signals.rs`). Each shard is woken by it
//! ([`StopHandle::requested`]), closes its listeners, then [`stop_shard`] goes through
//! the [`Phase`]s in order:
//!
//! 1. **Connections.** Its connections, client and admin, are told
//!    ([`ConnStop`]): one idle between requests closes at once, and an
//!    answer written from now on says `Connection: close` and is followed
//!    by a graceful close (its lingering cut at the drain bound). Then
//!    the shard drains (`Input::Drain`): every held poll is answered with
//!    no events, the ordinary answer of a poll whose wait ran out, so the
//!    client polls again (at another server in a deploy, or this one
//!    restarted); a poll that comes later is answered at once; no periodic
//!    roster re-read starts. The shard waits until its connections have
//!    closed, each after writing its last answer: polls are answered
//!    before sockets close.
//! 2. **Peers.** It waits until every shard is past phase 1: until then a
//!    peer's connections may still send requests here, and their answers
//!    go back over the mesh, so no shard ends while another may still need
//!    it.
//! 3. **Jobs.** It waits until its storage jobs in flight are answered
//!    (each is bounded by the engine's wait for a job, and none is started
//!    for nothing: no roster re-read, no poll), and ends.
//!
//! Phases 1 and 2 together end at `DRAIN_MS_MAX` after the shard saw the
//! stop (a client that keeps a connection busy cannot hold the stop
//! open), or, while a connection still has a call in flight (a send
//! waiting on slow storage), at `limits::drain_calls_ms` (the storage wait
//! plus a margin), so that call is answered; what was still open is
//! logged. Each shard publishes its phase and counts here, so the binary's
//! watchdog can say what a stop that ran past `limits::stop_timeout_ms`
//! (the sum of these bounds) was still waiting for
//! ([`StopHandle::pending`]).

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use log::{debug, warn};
use switchboard_io::deadline;
use switchboard_shards::model::ShardId;
use switchboard_shards::Input;

use crate::limits;
use crate::runtime::ShardRuntime;

/// Where a shard is in its stop (see the module doc). Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// No stop seen yet (or still starting).
    Serving = 0,
    /// Answering held polls and waiting for its connections to close.
    Connections = 1,
    /// Waiting for the other shards' connections.
    Peers = 2,
    /// Waiting for its storage jobs in flight.
    Jobs = 3,
    /// A hand-over only: frozen, waiting for the mesh to fall quiet before
    /// its state is taken ([`settle_shard`]).
    Settle = 4,
    /// Its executor's main task has ended.
    Ended = 5,
}

impl Phase {
    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Serving,
            1 => Phase::Connections,
            2 => Phase::Peers,
            3 => Phase::Jobs,
            4 => Phase::Settle,
            _ => Phase::Ended,
        }
    }

    /// What a shard in this phase is waiting for, for the pending report.
    fn waiting_for(self) -> &'static str {
        match self {
            Phase::Serving => "has not seen the stop",
            Phase::Connections => "waiting for its connections to answer and close",
            Phase::Peers => "waiting for the other shards' connections",
            Phase::Jobs => "waiting for its storage jobs",
            Phase::Settle => "handing over: waiting for the mesh to fall quiet",
            Phase::Ended => "ended",
        }
    }
}

/// What the starting thread is doing once the shards are asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MainPhase {
    /// Waiting for every shard to end.
    Shards = 0,
    /// Joining the executors.
    Joining = 1,
    /// Shutting the store down (db threads answer what is queued).
    Storage = 2,
}

/// One shard's stop, as other threads see it.
#[derive(Debug, Default)]
struct ShardStop {
    /// Its [`Phase`].
    phase: AtomicU8,
    /// Its open connections, as last published (during a stop).
    connections: AtomicU64,
    /// Its storage jobs in flight, as last published (during a stop).
    storage_jobs: AtomicU64,
}

#[derive(Debug)]
struct StopState {
    /// Set when a stop is asked for; never cleared.
    asked: AtomicBool,
    /// Set (before `asked`) when the stop is a hand-over to a new process
    /// (`handover.rs`): listeners are kept, not closed, and each shard
    /// settles and gives up its state.
    handover: AtomicBool,
    /// Accept loops still running (each counted by an [`Accepting`]
    /// guard): a hand-over wakes them with connections until none is
    /// left ([`StopHandle::accepting`]).
    accepting: AtomicUsize,
    /// Each shard's progress, in shard order.
    shards: Box<[ShardStop]>,
    /// The starting thread's progress ([`MainPhase`]).
    main: AtomicU8,
    /// Who waits for the stop ([`StopHandle::requested`]): woken when it
    /// is asked for. Locked only to register a waiter (a few per shard, at
    /// its start) and to ask for the stop: never on a request's path.
    waiters: std::sync::Mutex<Vec<futures_channel::oneshot::Sender<()>>>,
}

/// Asks a running server to stop, and says how far the stop got. Cheap to
/// clone and `Send + Sync`; asking sets a flag and wakes the shards'
/// waiters (under a mutex): any ordinary thread may ask, such as
/// signal-hook's signal thread, but never a signal handler itself. The
/// stop itself is finished by `Server::wait`.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<StopState>);

impl StopHandle {
    /// A handle for a server of `shards` shards.
    pub fn new(shards: usize) -> StopHandle {
        StopHandle(Arc::new(StopState {
            asked: AtomicBool::new(false),
            handover: AtomicBool::new(false),
            accepting: AtomicUsize::new(0),
            shards: (0..shards).map(|_| ShardStop::default()).collect(),
            main: AtomicU8::new(MainPhase::Shards as u8),
            waiters: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Asks every shard to stop.
    pub fn stop(&self) {
        self.0.asked.store(true, Ordering::Release);
        self.wake_waiters();
    }

    /// Wakes whoever waits in [`StopHandle::requested`] (after `asked` is
    /// set: a waiter registered after this drain sees it set).
    fn wake_waiters(&self) {
        let waiters =
            std::mem::take(&mut *self.0.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    /// Asks every shard to stop for a hand-over: each keeps its
    /// listeners open, drains as in a stop, settles, and reports its state
    /// (`Server::wait_outcome`).
    pub fn hand_over(&self) {
        self.0.handover.store(true, Ordering::Release);
        self.0.asked.store(true, Ordering::Release);
        self.wake_waiters();
    }

    /// Whether the stop asked for is a hand-over.
    pub fn is_handover(&self) -> bool {
        self.0.handover.load(Ordering::Acquire)
    }

    /// Accept loops still running: in a hand-over each leaves only after
    /// an accept completes (cancelling an io_uring accept could lose a
    /// connection the kernel already took), so the process connects to its
    /// own listeners until this is 0.
    pub fn accepting(&self) -> usize {
        self.0.accepting.load(Ordering::Acquire)
    }

    /// Counts one running accept loop until the guard drops.
    pub(crate) fn accept_loop(&self) -> Accepting {
        self.0.accepting.fetch_add(1, Ordering::AcqRel);
        Accepting(self.clone())
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.0.asked.load(Ordering::Acquire)
    }

    /// Shard `shard`'s phase.
    pub fn phase(&self, shard: ShardId) -> Phase {
        Phase::from_u8(self.0.shards[shard].phase.load(Ordering::Acquire))
    }

    /// Whether every shard's connections are done with (each is past
    /// [`Phase::Connections`]).
    pub fn all_past_connections(&self) -> bool {
        (0..self.0.shards.len()).all(|i| self.phase(i) > Phase::Connections)
    }

    /// Whether every shard is settling for a hand-over (or ended).
    pub fn all_settling(&self) -> bool {
        (0..self.0.shards.len()).all(|i| self.phase(i) >= Phase::Settle)
    }

    pub(crate) fn set_phase(&self, shard: ShardId, phase: Phase) {
        self.0.shards[shard]
            .phase
            .store(phase as u8, Ordering::Release);
    }

    pub(crate) fn set_main(&self, phase: MainPhase) {
        self.0.main.store(phase as u8, Ordering::Release);
    }

    /// Publishes shard `shard`'s counts for [`StopHandle::pending`].
    fn publish(&self, shard: ShardId, rt: &ShardRuntime, conns: &ConnStop) {
        let s = &self.0.shards[shard];
        let jobs = rt.stats.storage_jobs_waiting.get();
        s.connections.store(conns.open() as u64, Ordering::Relaxed);
        s.storage_jobs.store(jobs, Ordering::Relaxed);
    }

    /// What the stop is still waiting for, in one line: each shard that
    /// has not ended, with its open connections and storage jobs, or what
    /// the starting thread is doing once every shard has ended.
    pub fn pending(&self) -> String {
        let mut text = String::new();
        for (i, s) in self.0.shards.iter().enumerate() {
            let phase = self.phase(i);
            if phase == Phase::Ended {
                continue;
            }
            let _ = write!(
                text,
                "{}shard-{i} {} ({} connections open, {} storage jobs in flight)",
                if text.is_empty() { "" } else { "; " },
                phase.waiting_for(),
                s.connections.load(Ordering::Relaxed),
                s.storage_jobs.load(Ordering::Relaxed),
            );
        }
        if !text.is_empty() {
            return text;
        }
        match self.0.main.load(Ordering::Acquire) {
            0 => "every shard ended; waiting for their reports".into(),
            1 => "every shard ended; joining the executors".into(),
            _ => "every shard ended; closing storage (db threads finishing queued jobs)".into(),
        }
    }

    /// Resolves once a stop is asked for: woken by [`StopHandle::stop`]
    /// or [`StopHandle::hand_over`] from whatever thread asks, so a shard
    /// waiting here sleeps (it used to look every `STOP_CHECK_MS`, 100
    /// wake-ups a second per shard, most of an idle server's CPU). It also
    /// looks once every `STOP_LOOK_MS` (1 s), so that a wake-up lost on
    /// the way could only delay a stop, never keep it from a shard.
    pub(crate) async fn requested(&self) {
        if self.is_stopping() {
            return;
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        self.0
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        // Asked between the first look and the registration: the drain
        // may have missed this waiter, but the flag is set.
        let mut rx = Some(rx);
        while !self.is_stopping() {
            let look = glommio::timer::sleep(Duration::from_millis(limits::STOP_LOOK_MS));
            match rx.as_mut() {
                Some(waiting) => {
                    let woken = futures_lite::future::or(async { Some(waiting.await) }, async {
                        look.await;
                        None
                    })
                    .await;
                    // A sender dropped unsent (never, while the flag is
                    // only ever set before the drain) must not be polled
                    // again: a finished receiver answers at once, and the
                    // loop would spin. Only the looks are left then.
                    if let Some(Err(_)) = woken {
                        rx = None;
                    }
                }
                None => look.await,
            }
        }
    }

    /// Runs `work` until it ends (`Some`) or a stop is asked for (`None`;
    /// `work` is dropped): the stop request is its deadline.
    pub(crate) async fn until_stop<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        deadline::within(self.requested(), work).await.ok()
    }
}

/// One running accept loop in [`StopHandle::accepting`], until dropped.
pub(crate) struct Accepting(StopHandle);

impl Drop for Accepting {
    fn drop(&mut self) {
        (self.0).0.accepting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A shard's word to its connections that the server stops (io's
/// `Handler::stopped`, `stopping` and `stop_deadline`), and its count of
/// them for the stop. One per shard, shared by its client and admin
/// handlers. Waiting costs no timer: each waiting connection is a waiter
/// on a semaphore with no permits, and [`ConnStop::fire`] closes it, which
/// wakes every waiter at once.
#[derive(Clone)]
pub struct ConnStop {
    /// Never given permits; closed to fire.
    signal: Rc<Semaphore>,
    /// Whether it fired.
    fired: Rc<Cell<bool>>,
    /// The server's stop flag: `stopping()` is true from the moment the
    /// stop is asked, even before this shard has seen it, so an answer a
    /// peer shard's drain sends here closes the connection after it.
    stop: StopHandle,
    /// When the stop stops waiting for connections with no call in
    /// flight (`DRAIN_MS_MAX` after it fired; `None` before): a lingering
    /// close ends then.
    drain_until: Rc<Cell<Option<Instant>>>,
    /// This shard's open connections, client and admin (each counted by
    /// its [`OpenConn`]).
    open: Rc<Cell<usize>>,
    /// This shard's connections with a call in flight (each counted by
    /// its [`CallInFlight`]).
    calls: Rc<Cell<usize>>,
}

impl ConnStop {
    pub fn new(stop: StopHandle) -> ConnStop {
        ConnStop {
            signal: Rc::new(Semaphore::new(0)),
            fired: Rc::new(Cell::new(false)),
            stop,
            drain_until: Rc::new(Cell::new(None)),
            open: Rc::new(Cell::new(0)),
            calls: Rc::new(Cell::new(0)),
        }
    }

    /// Wakes every connection waiting between requests: they close. A
    /// lingering close ends at `drain_until`.
    fn fire(&self, drain_until: Instant) {
        self.drain_until.set(Some(drain_until));
        self.fired.set(true);
        self.signal.close();
    }

    /// Resolves once fired.
    pub async fn fired(&self) {
        if !self.fired.get() {
            // A closed semaphore fails every acquire: that is the signal.
            let _ = self.signal.acquire(1).await;
        }
    }

    /// Resolves once fired and past the drain bound for connections with
    /// no call in flight.
    pub async fn drain_over(&self) {
        self.fired().await;
        let until = self.drain_until.get().expect("set when fired");
        let left = until.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            glommio::timer::sleep(left).await;
        }
    }

    /// Whether the server is stopping.
    pub fn stopping(&self) -> bool {
        self.fired.get() || self.stop.is_stopping()
    }

    /// Counts one more open connection until the guard drops.
    pub fn opened(&self) -> OpenConn {
        self.open.set(self.open.get() + 1);
        OpenConn(self.open.clone())
    }

    /// Counts one more call in flight until the guard drops.
    pub fn call_started(&self) -> CallInFlight {
        self.calls.set(self.calls.get() + 1);
        CallInFlight(self.calls.clone())
    }

    /// Open connections, client and admin.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Connections with a call in flight.
    pub fn calls(&self) -> usize {
        self.calls.get()
    }
}

/// One open connection in its shard's [`ConnStop`] count, until dropped.
pub struct OpenConn(Rc<Cell<usize>>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// One call in flight in its shard's [`ConnStop`] count, until dropped.
pub struct CallInFlight(Rc<Cell<usize>>);

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// A shard's stop after its listeners closed: phases 1 to 3 of the module
/// doc. Returns when the shard may end.
pub(crate) async fn stop_shard(rt: &Rc<ShardRuntime>, conns: &ConnStop, stop: &StopHandle) {
    let i = rt.id;
    let saw = Instant::now();
    let drain_until = saw + Duration::from_millis(limits::DRAIN_MS_MAX);
    let timeout_ms = rt.storage_timeout.as_millis() as u64;
    let calls_until = saw + Duration::from_millis(limits::drain_calls_ms(timeout_ms));

    stop.set_phase(i, Phase::Connections);
    // Connections first, so the drained answers already say
    // `Connection: close`.
    conns.fire(drain_until);
    rt.feed(Input::Drain);
    // Every connection closed; or past the drain bound with no call in
    // flight (the rest are slow clients or lingering closes); or past the
    // bound for calls.
    wait_until(calls_until, || {
        stop.publish(i, rt, conns);
        conns.open() == 0 || (conns.calls() == 0 && Instant::now() >= drain_until)
    })
    .await;
    if conns.open() > 0 {
        warn!(
            shard = i;
            "shard-{i}: {} connections still open {} ms after the stop ({} with a call in \
             flight); ending without them",
            conns.open(),
            saw.elapsed().as_millis(),
            conns.calls(),
        );
    }

    stop.set_phase(i, Phase::Peers);
    // A peer is woken by the stop as this shard is; were its wake-up lost,
    // its look would see the stop at most `STOP_LOOK_MS` later (the wait
    // below ends as soon as its condition holds, so this costs nothing
    // otherwise).
    let peers_until = calls_until + Duration::from_millis(limits::STOP_LOOK_MS);
    if !wait_until(peers_until, || stop.all_past_connections()).await {
        warn!(shard = i; "shard-{i}: other shards still had connections at the drain deadline");
    }

    stop.set_phase(i, Phase::Jobs);
    let jobs_until =
        Instant::now() + rt.storage_patience() + Duration::from_millis(limits::TICK_MS);
    if !wait_until(jobs_until, || {
        stop.publish(i, rt, conns);
        rt.stats.storage_jobs_waiting.get() == 0
    })
    .await
    {
        warn!(
            shard = i;
            "shard-{i}: {} storage jobs unanswered past the storage timeout; ending without them",
            rt.stats.storage_jobs_waiting.get()
        );
    }
    debug!(shard = i; "shard-{i}: drained");
}

/// A hand-over's last phase for a shard past its storage jobs
/// ([`Phase::Settle`]): it stops feeding ticks to its core (its timers
/// fall due in the process taking over, at the same wall-clock time),
/// waits until every shard is this far, nothing is in flight between
/// shards and no storage job anywhere (`runtime::mesh_quiet`, two equal
/// readings `STOP_CHECK_MS` apart; bounded by the engine's wait for a
/// storage job plus `SETTLE_MS_MAX`), and takes its state. Returns the serialised state with its sessions and tabs.
pub(crate) async fn settle_shard(
    rt: &Rc<ShardRuntime>,
    stop: &StopHandle,
) -> Result<(Vec<u8>, usize, usize), String> {
    let i = rt.id;
    rt.freeze();
    stop.set_phase(i, Phase::Settle);
    // A frozen shard may still be handed a peer message that starts a
    // storage job (answered within the engine's wait for one).
    let bound = rt.storage_patience() + Duration::from_millis(limits::SETTLE_MS_MAX);
    let until = Instant::now() + bound;
    let all = rt.stats.all();
    let mut last: Option<Vec<u64>> = None;
    let quiet = wait_until(until, || {
        let now = match stop.all_settling() {
            true => crate::runtime::mesh_quiet(all),
            false => None,
        };
        let again = now.is_some() && now == last;
        last = now;
        again
    })
    .await;
    if !quiet {
        warn!(
            shard = i;
            "shard-{i}: the shards were not quiet (a message between them or a storage job \
             in flight) {} ms into the hand-over's settle; taking the state anyway",
            bound.as_millis()
        );
    }
    if let Err(why) = rt.with_shard(|s| s.settled()) {
        warn!(shard = i; "shard-{i}: handing over a shard that is not settled: {why}");
    }
    rt.snapshot()
}

/// Checks `done` every `STOP_CHECK_MS` until it holds (`true`) or `until`
/// passes (`false`).
async fn wait_until(until: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(limits::STOP_CHECK_MS)).await;
    }
}
