//! Repeated warnings, rate-limited per call site: the runtime's old
//! per-kind `LogGate` (once per interval, counting the rest), generalized
//! to every `warn!` and `error!` in the process and made thread-safe.
//!
//! Each call site (its file and line) gets a window of `LOG_REPEAT_MS`:
//! its first `LOG_REPEAT_BURST` records in a window are written, the rest
//! counted. The first record written in a later window says how many were
//! not (`(37 more like this in the last 12 s)`), and so does the log
//! thread's sweep ([`Sites::sweep`]) for a site that went quiet with a
//! count pending, so a count is never lost. Only stderr is limited: a
//! record about a traced user still reaches its trace.
//!
//! The table holds `LOG_CALLSITES_MAX` sites, claimed on first use and
//! kept (the workspace has fewer than 100 warning sites); a site that
//! finds no free slot among the few it may use is not limited, never
//! dropped.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use log::Level;

use crate::limits::{LOG_CALLSITES_MAX, LOG_REPEAT_BURST, LOG_REPEAT_MS};

/// Slots a site may use, from its hash on (linear probing).
const PROBES: usize = 8;

/// Where a record comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// Its module (the summary line's target).
    pub module: &'static str,
    /// Its source file.
    pub file: &'static str,
    /// Its line.
    pub line: u32,
    /// Its level (the summary line's).
    pub level: Level,
}

/// How many records of a site were not written before this one, and over
/// how long; shown after the message, nothing when none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct More {
    /// Records not written.
    pub count: u64,
    /// Since the window they fell in began (ms).
    pub over_ms: u64,
}

impl More {
    /// Nothing was left out.
    pub const NONE: More = More {
        count: 0,
        over_ms: 0,
    };
}

impl fmt::Display for More {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return Ok(());
        }
        let s = self.over_ms.div_ceil(1_000).max(1);
        write!(f, " ({} more like this in the last {s} s)", self.count)
    }
}

/// One call site's window.
#[derive(Debug)]
struct Slot {
    /// The site, once claimed.
    site: OnceLock<Site>,
    /// When its window began (ms on the caller's clock; 0: none yet).
    window_ms: AtomicU64,
    /// Records written in the window (may pass the burst while racing).
    written: AtomicU32,
    /// Records not written since the last one that was.
    skipped: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            site: OnceLock::new(),
            window_ms: AtomicU64::new(0),
            written: AtomicU32::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Starts a new window at `now_ms` if the one begun at `began` is
    /// over and no other thread started one meanwhile; returns what the
    /// old window left out.
    fn renew(&self, began: u64, now_ms: u64, written: u32) -> Option<More> {
        self.window_ms
            .compare_exchange(began, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        self.written.store(written, Ordering::Relaxed);
        let count = self.skipped.swap(0, Ordering::Relaxed);
        if count == 0 {
            return Some(More::NONE);
        }
        Some(More {
            count,
            over_ms: now_ms.saturating_sub(began),
        })
    }
}

/// Every call site's window.
#[derive(Debug)]
pub struct Sites {
    slots: [Slot; LOG_CALLSITES_MAX],
}

impl Sites {
    pub const fn new() -> Sites {
        Sites {
            slots: [const { Slot::new() }; LOG_CALLSITES_MAX],
        }
    }

    /// The slot of `site`, claiming a free one on first use (`None`: the
    /// slots it may use are all other sites').
    fn slot(&self, site: Site) -> Option<&Slot> {
        let hash = (site.file.as_ptr() as usize)
            .wrapping_mul(31)
            .wrapping_add(site.line as usize)
            .wrapping_mul(0x9E37_79B9);
        (0..PROBES)
            .map(|i| &self.slots[(hash.wrapping_add(i)) % LOG_CALLSITES_MAX])
            .find(|slot| {
                let held = slot.site.get_or_init(|| site);
                held.line == site.line && held.file == site.file
            })
    }

    /// Whether a record from `site` at `now_ms` is written (with what was
    /// left out before it) or only counted (`None`).
    pub fn check(&self, site: Site, now_ms: u64) -> Option<More> {
        let Some(slot) = self.slot(site) else {
            return Some(More::NONE);
        };
        let began = slot.window_ms.load(Ordering::Acquire);
        if began == 0 || now_ms >= began.saturating_add(LOG_REPEAT_MS) {
            if let Some(more) = slot.renew(began, now_ms.max(1), 1) {
                return Some(more);
            }
        }
        if slot.written.fetch_add(1, Ordering::Relaxed) < LOG_REPEAT_BURST {
            return Some(More::NONE);
        }
        slot.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Calls `report` for each site whose window is over with records
    /// left out, and starts it a new, empty window: the log thread writes
    /// the count for a site that went quiet.
    pub fn sweep(&self, now_ms: u64, mut report: impl FnMut(&Site, More)) {
        for slot in &self.slots {
            let Some(site) = slot.site.get() else {
                continue;
            };
            if slot.skipped.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let began = slot.window_ms.load(Ordering::Acquire);
            if now_ms < began.saturating_add(LOG_REPEAT_MS) {
                continue;
            }
            if let Some(more) = slot.renew(began, now_ms.max(1), 0) {
                if more.count > 0 {
                    report(site, more);
                }
            }
        }
    }
}

impl Default for Sites {
    fn default() -> Sites {
        Sites::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: Site = Site {
        module: "switchboard_engine::runtime",
        file: "engine/src/runtime.rs",
        line: 812,
        level: Level::Warn,
    };

    #[test]
    fn a_burst_passes_then_the_rest_are_counted_and_reported_by_the_next_line() {
        let sites = Sites::new();
        let t0 = 5_000;
        let burst = LOG_REPEAT_BURST as u64;
        for i in 0..burst {
            assert_eq!(sites.check(SITE, t0 + i), Some(More::NONE), "record {i}");
        }
        for i in 0..37 {
            assert_eq!(
                sites.check(SITE, t0 + burst + i),
                None,
                "record {}",
                burst + i
            );
        }
        // Still the same window.
        assert_eq!(sites.check(SITE, t0 + LOG_REPEAT_MS - 1), None);
        let later = t0 + LOG_REPEAT_MS + 2_000;
        let more = sites.check(SITE, later).expect("a new window");
        assert_eq!(
            more,
            More {
                count: 38,
                over_ms: LOG_REPEAT_MS + 2_000
            }
        );
        assert_eq!(
            more.to_string(),
            format!(
                " (38 more like this in the last {} s)",
                LOG_REPEAT_MS / 1_000 + 2
            )
        );
        // The new window's burst counts the line that reported.
        for _ in 1..burst {
            assert_eq!(sites.check(SITE, later + 1), Some(More::NONE));
        }
        assert_eq!(sites.check(SITE, later + 2), None);
    }

    #[test]
    fn other_sites_have_their_own_windows() {
        let sites = Sites::new();
        let other = Site { line: 813, ..SITE };
        for _ in 0..LOG_REPEAT_BURST {
            assert!(sites.check(SITE, 1).is_some());
        }
        assert!(sites.check(SITE, 1).is_none());
        assert_eq!(sites.check(other, 1), Some(More::NONE));
    }

    #[test]
    fn the_sweep_reports_a_site_that_went_quiet_once() {
        let sites = Sites::new();
        for _ in 0..LOG_REPEAT_BURST + 3 {
            sites.check(SITE, 100);
        }
        let mut reports = Vec::new();
        sites.sweep(100 + LOG_REPEAT_MS - 1, |s, m| reports.push((*s, m)));
        assert!(reports.is_empty(), "the window is not over: {reports:?}");
        sites.sweep(100 + LOG_REPEAT_MS, |s, m| reports.push((*s, m)));
        assert_eq!(
            reports,
            [(
                SITE,
                More {
                    count: 3,
                    over_ms: LOG_REPEAT_MS
                }
            )]
        );
        sites.sweep(100 + 5 * LOG_REPEAT_MS, |s, m| reports.push((*s, m)));
        assert_eq!(reports.len(), 1, "nothing more to report");
        // After the sweep the site starts a fresh window: its burst passes.
        for _ in 0..LOG_REPEAT_BURST {
            assert_eq!(sites.check(SITE, 100 + LOG_REPEAT_MS + 1), Some(More::NONE));
        }
    }

    #[test]
    fn nothing_left_out_shows_nothing() {
        assert_eq!(More::NONE.to_string(), "");
        let m = More {
            count: 1,
            over_ms: 1,
        };
        assert_eq!(m.to_string(), " (1 more like this in the last 1 s)");
    }
}
