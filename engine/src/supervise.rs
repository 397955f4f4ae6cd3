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
//! signs of a dead shard ([`fatal`]): a mesh channel closing while no stop
//! was asked for.
//!
//! Test-only faults ([`Faults`]) are read here too, and only in builds
//! with the shards' `fault-injection` feature (the engine's tests).

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use log::error;
use switchboard_shards::model::{ShardId, UserId};

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
/// a shard's executor, outside [`supervised`], a panic is logged, the
/// previous hook runs (the message and location), and the process exits
/// with [`EXIT_PANIC`] at once. Inside [`supervised`] only the location is
/// logged (the payload may quote user data; the caller logs what failed).
/// Any other thread's panic goes to the previous hook alone.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let Some(shard) = EXECUTOR.with(Cell::get) else {
                return previous(info);
            };
            let at = info
                .location()
                .map_or_else(|| "an unknown place".to_string(), ToString::to_string);
            if SUPERVISED.with(Cell::get) {
                error!(
                    "shard-{shard}: panic at {at} (caught: costs one input and its user's session)"
                );
                return;
            }
            error!("shard-{shard}: panic at {at} outside the supervised region: exiting");
            previous(info);
            std::process::exit(EXIT_PANIC);
        }));
    });
}

/// Marks the calling thread as shard `shard`'s executor (for the hook).
pub fn on_executor(shard: ShardId) {
    EXECUTOR.with(|e| e.set(Some(shard)));
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
    std::process::exit(EXIT_PANIC);
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
            drop_deliveries: var("SWITCHBOARD_FAULT_DROP_DELIVERIES"),
            panic_stored_user: var("SWITCHBOARD_FAULT_PANIC_STORED_USER"),
            panic_timer_user: var("SWITCHBOARD_FAULT_PANIC_TIMER_USER"),
        }
    }
}
