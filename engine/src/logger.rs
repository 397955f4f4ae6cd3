//! A small stderr logger for the `log` facade: timestamp, level, thread
//! name (`shard-0`, `db-1`), message. One line per record, written with a
//! single `write` so lines from threads do not interleave.
//!
//! Filtered by target: Switchboard's own crates (targets starting with
//! `switchboard`) log at the configured level, dependencies (rustls,
//! glommio, mysql, ...) at most at `warn`, so `SWITCHBOARD_LOG=trace` does
//! not dump a TLS library's handshake traces.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger;

/// The most verbose level a dependency's records are written at.
const DEPENDENCY_LEVEL_MAX: log::LevelFilter = log::LevelFilter::Warn;

/// Whether `target` is one of Switchboard's crates (`switchboard` itself,
/// `switchboard_engine`, `switchboard_io::conn`, ...).
fn is_ours(target: &str) -> bool {
    target.starts_with("switchboard")
}

/// Whether a record at `level` from `target` is written, with `max` the
/// configured level.
fn passes(target: &str, level: log::Level, max: log::LevelFilter) -> bool {
    let max = if is_ours(target) {
        max
    } else {
        max.min(DEPENDENCY_LEVEL_MAX)
    };
    level <= max
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        passes(metadata.target(), metadata.level(), log::max_level())
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let line = format!(
            "{}.{:03} {:<5} {} {}\n",
            now.as_secs(),
            now.subsec_millis(),
            record.level(),
            thread.name().unwrap_or("?"),
            record.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at `level` (once; later calls only change the level).
pub fn init(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::{Level, LevelFilter};

    #[test]
    fn dependencies_are_capped_at_warn() {
        for target in [
            "switchboard",
            "switchboard_engine::server",
            "switchboard_io::tls",
        ] {
            assert!(passes(target, Level::Trace, LevelFilter::Trace), "{target}");
            assert!(passes(target, Level::Debug, LevelFilter::Debug), "{target}");
            assert!(!passes(target, Level::Debug, LevelFilter::Info), "{target}");
        }
        for target in ["rustls::server::hs", "glommio::reactor", "mysql"] {
            assert!(
                !passes(target, Level::Trace, LevelFilter::Trace),
                "{target}"
            );
            assert!(!passes(target, Level::Info, LevelFilter::Trace), "{target}");
            assert!(passes(target, Level::Warn, LevelFilter::Trace), "{target}");
            assert!(passes(target, Level::Error, LevelFilter::Info), "{target}");
            assert!(!passes(target, Level::Warn, LevelFilter::Error), "{target}");
        }
    }
}
