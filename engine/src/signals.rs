//! The binary's stop signals. SIGTERM (what systemd, Docker and Kubernetes
//! send) and SIGINT (Ctrl-C) ask the server to stop gracefully (see
//! [`crate::stop`]: held polls answered, connections closed after their
//! last answer, storage jobs finished, storage closed), and start a
//! watchdog: if the process has not exited within the stop bound
//! (`limits::stop_timeout_ms` of the storage timeout: the sum of the
//! stop's phases, 14.57 s by default), it logs what the stop was still
//! waiting for and exits with status 3. A
//! second SIGTERM or SIGINT during the stop does the same at once (the
//! impatient Ctrl-C).
//!
//! Signals are read on a thread of their own (`signals`) through
//! signal-hook's self-pipe, so the handler itself only writes a byte; the
//! shards are woken by the [`StopHandle`] it asks. The handlers
//! are registered before the server starts ([`StopSignals::listen`]): a
//! signal that comes while it starts is kept and acted on once it
//! listens, instead of killing the process mid-start.
//!
//! With TLS on, SIGHUP reloads the certificate ([`ReloadSignal`]): the
//! `tls-reload` thread re-reads the PEM files (blocking reads, off the
//! executors) and swaps the new chain in for the handshakes that follow;
//! connections already up are untouched. A file that does not load is
//! logged at error and the old certificate stays. Without TLS, SIGHUP
//! keeps its default action (the process ends), as before.

use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use log::{error, info};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use switchboard_io::tls::Tls;

use crate::error::Error;
use crate::stop::StopHandle;

/// The exit status of a stop that did not finish within its bound (or
/// was cut short by a second signal).
pub const EXIT_STOP_TIMEOUT: i32 = 3;

/// How often the watchdog looks for a second signal and the deadline.
const WATCH_MS: u64 = 50;

/// SIGTERM and SIGINT, registered: they no longer end the process, they
/// wait here until [`StopSignals::stop_on_signal`].
pub struct StopSignals {
    signals: Signals,
}

impl StopSignals {
    /// Registers the handlers. From now on a SIGTERM or SIGINT is kept
    /// until the server can act on it.
    pub fn listen() -> Result<StopSignals, Error> {
        let signals =
            Signals::new([SIGTERM, SIGINT]).map_err(|source| Error::Signals { source })?;
        Ok(StopSignals { signals })
    }

    /// Starts the `signals` thread: the first signal asks `stop` to stop
    /// and starts the watchdog, which exits 3 if the process is still
    /// there `timeout` later (see the module doc).
    pub fn stop_on_signal(self, stop: StopSlot, timeout: Duration) -> Result<(), Error> {
        let mut signals = self.signals;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let Some(first) = signals.forever().next() else {
                    return;
                };
                info!(
                    "{}: stopping (answering held polls, closing connections; at most {} ms)",
                    name(first),
                    timeout.as_millis()
                );
                stop.stop();
                let deadline = Instant::now() + timeout;
                loop {
                    if let Some(again) = signals.pending().next() {
                        error!(
                            "{} again: exiting now, before the stop finished; still pending: {}",
                            name(again),
                            stop.pending()
                        );
                        crate::logger::flush();
                        std::process::exit(EXIT_STOP_TIMEOUT);
                    }
                    if Instant::now() >= deadline {
                        error!(
                            "the stop took longer than {} ms; exiting with status {}; still \
                             pending: {}",
                            timeout.as_millis(),
                            EXIT_STOP_TIMEOUT,
                            stop.pending()
                        );
                        crate::logger::flush();
                        std::process::exit(EXIT_STOP_TIMEOUT);
                    }
                    std::thread::sleep(Duration::from_millis(WATCH_MS));
                }
            })
            .map(drop)
            .map_err(|source| Error::Signals { source })
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// The server a stop signal stops: the one serving now (a process that
/// hands over and then serves again after a failed hand-over runs a
/// second `Server`). Cheap to clone.
#[derive(Clone, Default)]
pub struct StopSlot(Arc<Mutex<(Option<StopHandle>, bool)>>);

impl StopSlot {
    /// Points the signal at `stop`'s server (stopping it at once if a
    /// signal came while none was set).
    pub fn set(&self, stop: StopHandle) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.1 {
            stop.stop();
        }
        slot.0 = Some(stop);
    }

    /// Stops the current server, and any set after.
    pub fn stop(&self) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.1 = true;
        if let Some(stop) = &slot.0 {
            stop.stop();
        }
    }

    /// Whether a stop signal came.
    pub fn signalled(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// What the current server's stop still waits for.
    pub fn pending(&self) -> String {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.0
            .as_ref()
            .map_or_else(|| "no server running".into(), StopHandle::pending)
    }
}

/// The TLS state SIGHUP reloads: the serving server's (see [`StopSlot`]).
#[derive(Clone, Default)]
pub struct TlsSlot(Arc<Mutex<Option<Arc<Tls>>>>);

impl TlsSlot {
    pub fn set(&self, tls: Arc<Tls>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls);
    }

    fn get(&self) -> Option<Arc<Tls>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// SIGHUP, registered: kept until [`ReloadSignal::reload_on_signal`].
pub struct ReloadSignal {
    signals: Signals,
}

impl ReloadSignal {
    /// Registers the handler (before the start, like the stop signals).
    pub fn listen() -> Result<ReloadSignal, Error> {
        let signals = Signals::new([SIGHUP]).map_err(|source| Error::Signals { source })?;
        Ok(ReloadSignal { signals })
    }

    /// Starts the `tls-reload` thread: each SIGHUP reloads `tls`'s files
    /// (signals that come during a reload are merged into one more).
    pub fn reload_on_signal(self, slot: TlsSlot) -> Result<(), Error> {
        let mut signals = self.signals;
        std::thread::Builder::new()
            .name("tls-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    let Some(tls) = slot.get() else { continue };
                    match tls.reload() {
                        Ok(loaded) => info!(
                            "SIGHUP: TLS certificate reloaded ({} certificate(s) from {}); new \
                             handshakes use it",
                            loaded.chain_len,
                            tls.cert_path().display()
                        ),
                        Err(e) => {
                            error!("SIGHUP: TLS certificate not reloaded, the old one stays: {e}")
                        }
                    }
                }
            })
            .map(drop)
            .map_err(|source| Error::Signals { source })
    }
}
