//! Supervision: what a panic costs.
//!
//! A panic while a shard handles one input (inside [`supervised`], around
//! `Shard::handle` in `ShardRuntime::feed`) is caught: it costs that
//! input's answer and its user's session, never the shard. A panic
//! anywhere else on a shard's executor would leave a half-dead process
//! (that executor gone, its peers' messages to it piling up, its
//! connections hanging), so the panic hook ([`install_panic_hook`]) ends
//! the process at once with [`EXIT_PANIC`], and the service manager
//! restarts it (tuning/README.md has the systemd unit). So do the other
//! signs of a dead or stuck part ([`fatal`]), which the `watchdog` thread
//! ([`start_watchdog`]) looks for: a shard whose tick has not run for
//! `SHARD_STALL_MS_MAX` (an endless loop or a blocking call on its
//! executor: the shard answers nothing, and its peers' calls to it time
//! out one by one), and a storage thread that ended while the store was
//! not stopped (a panic on a `db-N` thread: the jobs it would run are
//! never answered). A shard that has ended (the stop) is not watched.
//! Before that, it warns once per episode when a shard's loop lags past
//! `SWITCHBOARD_LOOP_LAG_WARN_MS` (a tick that fired that late, or is
//! that overdue): the shard still works, everything on it waits.
//! (The mesh receivers also call [`fatal`] when a channel closes while
//! no stop was asked for; glommio's channels do not close while both
//! executors live, so in practice the watchdog is what sees a dead shard.)
//!
//! Test-only faults ([`Faults`]) are read here too, and only in builds
//! with the shards' `fault-injection` feature (the engine's tests).

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use log::{error, warn};
use switchboard_shards::model::{ShardId, UserId};
use switchboard_storage::Store;

use crate::limits;
use crate::stop::{Phase, StopHandle};

/// The exit status after a panic outside the supervised region or a dead
/// shard (`EX_SOFTWARE`).
pub const EXIT_PANIC: i32 = 70;

thread_local! {
    /// The shard whose executor this thread runs, if any.
    static EXECUTOR: Cell<Option<ShardId>> = const { Cell::new(None) };
    /// Whether this thread is inside [`supervised`].
    static SUPERVISED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the panic hook (once per process; later calls do nothing). On
/// a shard's executor, outside [`supervised`], a panic is logged, then its
/// message and location are written to stderr, and the process exits with
/// [`EXIT_PANIC`] at once. Inside [`supervised`] only the location is
/// logged (the payload may quote user data; the caller logs what failed).
/// Any other thread's panic has its message written to stderr alone.
///
/// Every wait here is bounded (the log's flush, and the message's write,
/// each at most `LOG_FLUSH_WAIT_MS`): std's default hook writes to fd 2
/// and would block for ever on a stderr nobody reads, holding the exit
/// (or a `db-N` thread, which the watchdog then never sees die). So the
/// hook writes the message itself, as std's would (with a backtrace
/// when `RUST_BACKTRACE` asks for one), from a helper thread it does not
/// wait on past the bound.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        panic::set_hook(Box::new(move |info| {
            let wait = Duration::from_millis(limits::LOG_FLUSH_WAIT_MS);
            let Some(shard) = EXECUTOR.with(Cell::get) else {
                crate::logger::write_stderr_bounded(&panic_text(info), wait);
                return;
            };
            let at = info
                .location()
                .map_or_else(|| "an unknown place".to_string(), ToString::to_string);
            if SUPERVISED.with(Cell::get) {
                error!(
                    shard;
                    "shard-{shard}: panic at {at} (caught: costs one input and its user's session)"
                );
                return;
            }
            error!(shard; "shard-{shard}: panic at {at} outside the supervised region: exiting");
            // The log's last lines (this one included) before the panic's
            // message and the exit.
            crate::logger::flush();
            crate::logger::write_stderr_bounded(&panic_text(info), wait);
            std::process::exit(EXIT_PANIC);
        }));
    });
}

/// What std's default hook writes for a panic: the thread, the place and
/// the message, and a backtrace if `RUST_BACKTRACE` asks for one.
fn panic_text(info: &panic::PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let at = info
        .location()
        .map_or_else(|| "an unknown place".to_string(), ToString::to_string);
    let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
    let mut text = format!("thread '{name}' panicked at {at}:\n{message}\n");
    let backtrace = std::backtrace::Backtrace::capture();
    match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => {
            text.push_str(&format!("stack backtrace:\n{backtrace}\n"));
        }
        _ => text.push_str(
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        ),
    }
    text
}

/// Marks the calling thread as shard `shard`'s executor (for the hook,
/// and for log lines: `shard-3`).
pub fn on_executor(shard: ShardId) {
    EXECUTOR.with(|e| e.set(Some(shard)));
    crate::logger::label_thread(format!("shard-{shard}"));
}

/// Runs `f`, catching a panic in it. The state `f` touched may be half
/// changed: the caller repairs or discards it.
pub fn supervised<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let outer = SUPERVISED.with(|s| s.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    SUPERVISED.with(|s| s.set(outer));
    result
}

/// A shard is dead or unusable: logs `why` and exits the process with
/// [`EXIT_PANIC`] at once (never a silent half-dead process).
pub fn fatal(why: std::fmt::Arguments<'_>) -> ! {
    error!("{why}: exiting so the service manager restarts the server");
    crate::logger::flush();
    std::process::exit(EXIT_PANIC);
}

/// Each shard's last tick and its lag, for the watchdog: written by the
/// shard's tick task only, read by the `watchdog` thread.
#[derive(Debug)]
pub struct Heartbeats {
    /// When the watch began; beats are milliseconds since.
    base: Instant,
    /// Each shard's last beat, 1 + its milliseconds since `base` (0: the
    /// shard has not started ticking).
    beats: Box<[AtomicU64]>,
    /// A tick that fires later than this is a lagging loop
    /// (`SWITCHBOARD_LOOP_LAG_WARN_MS`).
    lag_bound: Duration,
    /// Each shard's ticks that fired later than `lag_bound`.
    overs: Box<[AtomicU64]>,
    /// Each shard's lag at its last such tick, in milliseconds.
    over_lag_ms: Box<[AtomicU64]>,
}

impl Heartbeats {
    /// Heartbeats of `shards` shards, none beaten yet; a tick later than
    /// `lag_bound` counts as lagging.
    pub fn new(shards: usize, lag_bound: Duration) -> Arc<Heartbeats> {
        let zeros = || (0..shards).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Heartbeats {
            base: Instant::now(),
            beats: zeros(),
            lag_bound,
            overs: zeros(),
            over_lag_ms: zeros(),
        })
    }

    /// Shard `shard` is alive now: its tick ran, `lag` later than due.
    pub fn beat(&self, shard: ShardId, lag: Duration) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.beats[shard].store(ms, Ordering::Relaxed);
        if lag > self.lag_bound {
            self.over_lag_ms[shard].store(lag.as_millis() as u64, Ordering::Relaxed);
            let overs = &self.overs[shard];
            overs.store(overs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// How long ago shard `shard` last beat (`None`: never).
    fn silent_for(&self, shard: ShardId) -> Option<Duration> {
        let beat = self.beats[shard].load(Ordering::Relaxed).checked_sub(1)?;
        let now = self.base.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(beat)))
    }
}

/// Starts the `watchdog` thread (see the module doc): every
/// `WATCHDOG_CHECK_MS` it checks that every shard that has not ended beat
/// within `stall_max`, and that no storage thread died, and ends the
/// process with [`EXIT_PANIC`] otherwise. It returns once every shard has
/// ended. Being the one thread that runs all along off the executors, it
/// also reads the process's `/proc` figures for `/metrics` every
/// `PROCESS_SAMPLE_MS` while they are scraped, every
/// `PROCESS_SAMPLE_IDLE_MS` while not
/// ([`crate::metrics::process_sample_interval`]).
pub fn start_watchdog(
    heartbeats: Arc<Heartbeats>,
    stop: StopHandle,
    store: Store,
    stall_max: Duration,
) -> std::io::Result<()> {
    let shards = heartbeats.beats.len();
    let mut lags: Vec<LagWatch> = (0..shards).map(|_| LagWatch::default()).collect();
    let mut sampled: Option<Instant> = None;
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            if sampled.is_none_or(|at| at.elapsed() >= crate::metrics::process_sample_interval()) {
                sampled = Some(Instant::now());
                crate::metrics::sample_process();
            }
            let mut running = 0;
            for (shard, lag) in lags.iter_mut().enumerate() {
                if stop.phase(shard) == Phase::Ended {
                    continue;
                }
                running += 1;
                let Some(silent) = heartbeats.silent_for(shard) else {
                    continue;
                };
                lag.check(&heartbeats, shard, silent, stall_max);
                if silent > stall_max {
                    fatal(format_args!(
                        "shard-{shard}: no tick for {} ms (bound {} ms): its executor is stuck \
                         (an endless loop or a blocking call) and answers nothing",
                        silent.as_millis(),
                        stall_max.as_millis()
                    ));
                }
            }
            if running == 0 {
                return;
            }
            if let Some(thread) = store.dead_thread() {
                fatal(format_args!(
                    "storage thread {thread} died (a panic?): its jobs would go unanswered"
                ));
            }
            std::thread::sleep(Duration::from_millis(limits::WATCHDOG_CHECK_MS));
        })
        .map(drop)
}

/// The watchdog's view of one shard's loop lag: a lagging episode starts
/// at the first check that sees a tick later than the bound (one that
/// fired late, or one overdue now), is reported then, once, at warn, and
/// ends after `LOOP_LAG_QUIET_MS` without one (reported at info with its
/// worst lag). So a shard that lags on and off is one warning, not one
/// per tick, and a stuck shard is reported well before the exit.
#[derive(Debug, Default)]
struct LagWatch {
    /// The shard's count of late ticks at the last check.
    overs_seen: u64,
    /// The episode under way, if any.
    episode: Option<Episode>,
}

/// A lagging episode of one shard.
#[derive(Debug)]
struct Episode {
    /// When the watchdog first saw it.
    since: Instant,
    /// The last check that saw a late tick.
    last_seen: Instant,
    /// The worst lag seen in it.
    worst: Duration,
}

impl LagWatch {
    /// Looks at shard `shard`, silent for `silent` since its last tick.
    fn check(&mut self, beats: &Heartbeats, shard: ShardId, silent: Duration, stall_max: Duration) {
        let bound = beats.lag_bound;
        let overs = beats.overs[shard].load(Ordering::Relaxed);
        let overdue = silent.saturating_sub(Duration::from_millis(limits::TICK_MS));
        let late = if overs != self.overs_seen {
            Some(Duration::from_millis(
                beats.over_lag_ms[shard].load(Ordering::Relaxed),
            ))
        } else if overdue > bound {
            Some(overdue)
        } else {
            None
        };
        self.overs_seen = overs;
        let now = Instant::now();
        match (late, &mut self.episode) {
            (Some(lag), None) => {
                warn!(
                    shard = shard;
                    "shard-{shard}: loop lagging: a tick {} ms late (bound {} ms, \
                     SWITCHBOARD_LOOP_LAG_WARN_MS): everything on this shard waits that long; \
                     the watchdog ends the process at {} ms without a tick",
                    lag.as_millis(),
                    bound.as_millis(),
                    stall_max.as_millis()
                );
                self.episode = Some(Episode {
                    since: now,
                    last_seen: now,
                    worst: lag,
                });
            }
            (Some(lag), Some(e)) => {
                e.last_seen = now;
                e.worst = e.worst.max(lag);
            }
            (None, Some(e))
                if now - e.last_seen >= Duration::from_millis(limits::LOOP_LAG_QUIET_MS) =>
            {
                log::info!(
                    shard = shard;
                    "shard-{shard}: loop lag back under {} ms: the episode lasted {} ms, its \
                     worst tick was {} ms late",
                    bound.as_millis(),
                    (e.last_seen - e.since).as_millis(),
                    e.worst.as_millis()
                );
                self.episode = None;
            }
            (None, _) => {}
        }
    }
}

/// Test-only faults, read once per shard from the environment, and only
/// when the build honours them (`switchboard_shards::FAULT_INJECTION`:
/// the engine's tests). All off otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// `SWITCHBOARD_FAULT_PANIC_USER`: a `/send` from this user panics
    /// inside the shard (a supervised panic).
    pub panic_user: Option<UserId>,
    /// `SWITCHBOARD_FAULT_PANIC_OUTSIDE_USER`: a `/connect` of this user
    /// panics in the handler, outside the supervised region.
    pub panic_outside_user: Option<UserId>,
    /// `SWITCHBOARD_FAULT_OUTBOX_DEPTH`: each outbox's depth instead of
    /// `OUTBOX_DEPTH_MAX`, the other mesh bounds scaled with it.
    pub outbox_depth: Option<usize>,
    /// `SWITCHBOARD_FAULT_JOBS_IN_FLIGHT_MAX`: each shard's storage jobs
    /// in flight at once, instead of `JOBS_IN_FLIGHT_MAX` (so that a test
    /// can make it shed).
    pub jobs_in_flight_max: Option<usize>,
    /// `SWITCHBOARD_FAULT_STALL_SHARD_USER`: a `/connect` of this user
    /// blocks its conn shard's executor for an hour (a stuck shard, for the
    /// watchdog), or for `stall_shard_ms`.
    pub stall_shard_user: Option<UserId>,
    /// `SWITCHBOARD_FAULT_STALL_SHARD_MS`: how long that connect blocks
    /// (a lagging shard rather than a stuck one).
    pub stall_shard_ms: Option<u64>,
    /// `SWITCHBOARD_FAULT_SHARD_STALL_MS_MAX`: the watchdog's bound
    /// instead of `SHARD_STALL_MS_MAX` (so a test need not wait 10 s).
    pub shard_stall_ms_max: Option<u64>,
    /// `SWITCHBOARD_FAULT_DROP_DELIVERIES`: this many deliveries of a
    /// message or read receipt to another shard are dropped as if its
    /// outbox were full (the first ones sent).
    pub drop_deliveries: Option<u64>,
    /// `SWITCHBOARD_FAULT_PANIC_STORED_USER`: handling the storage result
    /// of a `/send` from this user panics inside the shard, after the
    /// shard took the job out (a supervised panic).
    pub panic_stored_user: Option<UserId>,
    /// `SWITCHBOARD_FAULT_PANIC_TIMER_USER`: a held poll of this user
    /// running out panics inside the shard, on the tick that popped its
    /// timer (a supervised panic in an input about many users).
    pub panic_timer_user: Option<UserId>,
}

impl Faults {
    /// The faults the environment asks for (none unless the build
    /// honours them).
    pub fn from_env() -> Faults {
        if !switchboard_shards::FAULT_INJECTION {
            return Faults::default();
        }
        fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
            let value = std::env::var(name).ok()?;
            let parsed = value.parse().ok();
            assert!(parsed.is_some(), "{name}={value:?} does not parse");
            parsed
        }
        Faults {
            panic_user: var("SWITCHBOARD_FAULT_PANIC_USER"),
            panic_outside_user: var("SWITCHBOARD_FAULT_PANIC_OUTSIDE_USER"),
            outbox_depth: var("SWITCHBOARD_FAULT_OUTBOX_DEPTH"),
            jobs_in_flight_max: var("SWITCHBOARD_FAULT_JOBS_IN_FLIGHT_MAX"),
            stall_shard_user: var("SWITCHBOARD_FAULT_STALL_SHARD_USER"),
            stall_shard_ms: var("SWITCHBOARD_FAULT_STALL_SHARD_MS"),
            shard_stall_ms_max: var("SWITCHBOARD_FAULT_SHARD_STALL_MS_MAX"),
            drop_deliveries: var("SWITCHBOARD_FAULT_DROP_DELIVERIES"),
            panic_stored_user: var("SWITCHBOARD_FAULT_PANIC_STORED_USER"),
            panic_timer_user: var("SWITCHBOARD_FAULT_PANIC_TIMER_USER"),
        }
    }
}
