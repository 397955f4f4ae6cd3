//! The `peer` report: the latency table, messages/s, the server's and the
//! generator's CPU side by side (per message and per request), the
//! server's memory per user, the delivery check; a `SUMMARY {...}` JSON
//! line (also `OUT/LABEL.summary.json`, read by bench/peer.sh) and one
//! `.hgrm` file per histogram.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::json;

use super::client::{Acked, PeerResult};
use super::{PeerOptions, Proto};
use crate::procstat::ServerSample;
use crate::report::hgrm;
use crate::worker::new_hist;

/// Everything the coordinator knows at the end.
pub struct PeerRun {
    pub o: PeerOptions,
    pub workers: Vec<PeerResult>,
    pub server_before: Option<ServerSample>,
    pub server_after: Option<ServerSample>,
    /// CPU seconds of the workers and the coordinator over the window.
    pub generator_cpu_s: Option<f64>,
    /// The window as the coordinator measured it (between its samples).
    pub generator_wall_s: f64,
    /// The window's start, unix µs (times in the lost-message examples
    /// count from it).
    pub measure_from_us: u64,
}

/// The delivery check's counts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Delivery {
    acked: u64,
    /// Acknowledged messages not checked: sent to a user not yet logged
    /// in (Switchboard keeps it in history, ejabberd offline: neither owes
    /// it to a poll), or acknowledged less than the drain before the tabs
    /// stopped (its delivery may come after).
    unchecked_offline: u64,
    unchecked_late: u64,
    /// Checked messages their recipient never saw.
    lost: u64,
    /// Receipts beyond the first, at recipients.
    duplicated: u64,
    /// Receipts of messages whose send failed (timed out, say): delivered
    /// all the same. Not an error.
    unacked_delivered: u64,
    /// Echoes at the sender (Switchboard): missing and beyond one.
    echoes_missing: u64,
    echoes_duplicated: u64,
    /// The first few lost messages.
    lost_examples: Vec<Acked>,
}

/// How many lost messages the report tells about.
const LOST_EXAMPLES_MAX: usize = 5;

fn check_delivery(workers: &[PeerResult], expect_echo: bool, drain_us: u64) -> Delivery {
    let mut receipts: HashMap<u64, u64> = HashMap::new();
    let mut echoes: HashMap<u64, u64> = HashMap::new();
    let mut first_login: HashMap<u64, u64> = HashMap::new();
    for w in workers {
        for &(k, n) in &w.receipts {
            *receipts.entry(k).or_insert(0) += n as u64;
        }
        for &(k, n) in &w.echoes {
            *echoes.entry(k).or_insert(0) += n as u64;
        }
        for &(user, at) in &w.connects {
            let t = first_login.entry(user).or_insert(at);
            *t = (*t).min(at);
        }
    }
    let stopped_us = workers.iter().map(|w| w.stopped_us).min().unwrap_or(0);
    let mut d = Delivery::default();
    for w in workers {
        for a in &w.acked {
            let key = a.key;
            d.acked += 1;
            let got = receipts.remove(&key);
            let echoed = echoes.remove(&key).unwrap_or(0);
            if first_login.get(&a.to).is_none_or(|&t| t > a.sent_us) {
                d.unchecked_offline += 1;
                continue;
            }
            if a.acked_us + drain_us > stopped_us {
                d.unchecked_late += 1;
                continue;
            }
            match got {
                None => {
                    d.lost += 1;
                    if d.lost_examples.len() < LOST_EXAMPLES_MAX {
                        d.lost_examples.push(*a);
                    }
                }
                Some(n) => d.duplicated += n - 1,
            }
            if expect_echo {
                d.echoes_missing += u64::from(echoed == 0);
                d.echoes_duplicated += echoed.saturating_sub(1);
            } else {
                d.echoes_duplicated += echoed;
            }
        }
    }
    // What is left was never acknowledged.
    d.unacked_delivered = receipts.values().sum();
    d
}

/// Prints the report and writes the files; returns whether the run is
/// clean (nothing lost or duplicated).
pub fn report(run: &PeerRun) -> Result<bool, String> {
    let o = &run.o;
    let mut hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut requests, mut requests_total) = (0u64, 0u64);
    for w in &run.workers {
        for (name, pairs) in &w.hists {
            let h = hists.entry(name.clone()).or_insert_with(new_hist);
            for &(v, c) in pairs {
                h.saturating_record_n(v, c);
            }
        }
        for (k, v) in &w.counters {
            *counters.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &w.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        requests += w.requests_measured;
        requests_total += w.requests_total;
    }
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    let d = check_delivery(
        &run.workers,
        o.proto == Proto::Jsonp,
        (o.drain_s * 1e6) as u64,
    );
    let dur = o.duration_s;
    let messages = c("sends_acked_measured");
    let messages_per_s = messages as f64 / dur;
    let offered_per_s = c("slots") as f64 / dur;
    let requests_per_s = requests as f64 / dur;
    let proto = match o.proto {
        Proto::Jsonp => "jsonp (Switchboard)",
        Proto::Bosh => "bosh (ejabberd)",
    };

    let mut t = String::new();
    let _ = writeln!(
        t,
        "switchboard-bench peer {}: {proto} users {} friends {} ({}) rate {}/s wait {} s workers {} window {} s",
        o.label,
        o.users,
        o.friends,
        if o.lattice { "lattice" } else { "random ring" },
        o.rate,
        o.wait_s,
        o.workers,
        o.duration_s
    );
    crate::report::quantile_header(&mut t, "histogram (ms)", 16);
    for (name, h) in &hists {
        crate::report::quantile_row(&mut t, name, 16, h);
    }
    let _ = writeln!(
        t,
        "messages/s {messages_per_s:.0} (offered {offered_per_s:.0}, {messages} acked in the window), requests/s {requests_per_s:.0} ({requests} answers in the window, {requests_total} in the run)"
    );
    let per_msg = |cpu_s: f64| {
        if messages > 0 {
            Some(1000.0 * cpu_s / messages as f64)
        } else {
            None
        }
    };
    let per_req = |cpu_s: f64| {
        if requests > 0 {
            Some(1e6 * cpu_s / requests as f64)
        } else {
            None
        }
    };
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let mut server = serde_json::Value::Null;
    if let (Some(a), Some(b)) = (&run.server_before, &run.server_after) {
        let cpu = b.cpu_s - a.cpu_s;
        let wall = (b.at_s - a.at_s).max(1e-9);
        let rss_kib_per_user = b.rss_kib as f64 / o.users.max(1) as f64;
        let _ = writeln!(
            t,
            "server:    {:.2} CPU s over {:.1} s ({:.1}% of a core), {} ms CPU/message, {} µs CPU/request; RSS {:.1} MiB ({:.1} KiB/user, peak {:.1} MiB), {} threads, {} fds at the end",
            cpu,
            wall,
            100.0 * cpu / wall,
            fmt(per_msg(cpu), 3),
            fmt(per_req(cpu), 1),
            b.rss_kib as f64 / 1024.0,
            rss_kib_per_user,
            b.hwm_kib as f64 / 1024.0,
            b.threads,
            b.fds
        );
        server = json!({
            "cpu_s": cpu, "wall_s": wall, "cpu_pct_of_core": 100.0 * cpu / wall,
            "ms_cpu_per_msg": per_msg(cpu), "us_cpu_per_request": per_req(cpu),
            "rss_mib": b.rss_kib as f64 / 1024.0, "rss_kib_per_user": rss_kib_per_user,
            "rss_peak_mib": b.hwm_kib as f64 / 1024.0, "fds_end": b.fds,
        });
    }
    let mut generator = serde_json::Value::Null;
    if let Some(cpu) = run.generator_cpu_s {
        let wall = run.generator_wall_s.max(1e-9);
        let _ = writeln!(
            t,
            "generator: {:.2} CPU s over {:.1} s ({:.1}% of a core), {} ms CPU/message, {} µs CPU/request ({} worker processes and the coordinator)",
            cpu,
            wall,
            100.0 * cpu / wall,
            fmt(per_msg(cpu), 3),
            fmt(per_req(cpu), 1),
            o.workers
        );
        generator = json!({
            "cpu_s": cpu, "wall_s": wall, "cpu_pct_of_core": 100.0 * cpu / wall,
            "ms_cpu_per_msg": per_msg(cpu), "us_cpu_per_request": per_req(cpu),
        });
    }
    // Every user should be logged in before the window opens.
    let mut first_login: HashMap<u64, u64> = HashMap::new();
    for &(user, at) in run.workers.iter().flat_map(|w| &w.connects) {
        let t = first_login.entry(user).or_insert(at);
        *t = (*t).min(at);
    }
    let last_login_ms = first_login
        .values()
        .max()
        .map(|&t| (t as f64 - run.measure_from_us as f64) / 1000.0);
    let _ = writeln!(
        t,
        "logins: {} of {} users, the last {}",
        first_login.len(),
        o.users,
        match last_login_ms {
            None => "never".to_string(),
            Some(ms) if ms < 0.0 => format!("{:.1} s before the window", -ms / 1000.0),
            Some(ms) => format!(
                "{:.1} s INTO the window (a longer --ramp-s or --warmup-s would keep logins out of it)",
                ms / 1000.0
            ),
        }
    );
    let _ = writeln!(t, "errors: {errors:?}");
    let _ = writeln!(t, "counters: {counters:?}");
    let echo = if o.proto == Proto::Jsonp {
        format!(
            "; echoes to the sender's tab: {} missing, {} extra",
            d.echoes_missing, d.echoes_duplicated
        )
    } else {
        format!(
            "; echoes to the sender: {} (none expected)",
            d.echoes_duplicated
        )
    };
    let _ = writeln!(
        t,
        "delivery check: {} acked messages ({} not checked: {} to a user not yet logged in, {} acknowledged within the drain of the end), {} lost, {} duplicated at the recipient, {} deliveries of unacknowledged sends{echo}",
        d.acked,
        d.unchecked_offline + d.unchecked_late,
        d.unchecked_offline,
        d.unchecked_late,
        d.lost,
        d.duplicated,
        d.unacked_delivered
    );
    let at = |us: u64| (us as f64 - run.measure_from_us as f64) / 1000.0;
    for a in &d.lost_examples {
        let (from, n) = (a.key >> 32, a.key & 0xffff_ffff);
        let logins = |user: u64| -> Vec<String> {
            let mut l: Vec<u64> = run
                .workers
                .iter()
                .flat_map(|w| &w.connects)
                .filter(|c| c.0 == user)
                .map(|c| c.1)
                .collect();
            l.sort_unstable();
            l.into_iter().map(|t| format!("{:.1}", at(t))).collect()
        };
        let _ = writeln!(
            t,
            "  lost: user {from} message {n} to user {}: due at {:.1} ms, acknowledged at {:.1} ms (from the window's start); logins of the recipient at {:?} ms, of the sender at {:?} ms",
            a.to,
            at(a.due_us),
            at(a.acked_us),
            logins(a.to),
            logins(from)
        );
    }
    let bad = d.lost > 0 || d.duplicated > 0 || d.echoes_missing > 0 || d.echoes_duplicated > 0;
    if bad {
        let _ = writeln!(t);
        let _ = writeln!(t, "{}", "!".repeat(72));
        let _ = writeln!(
            t,
            "!!! DELIVERY CHECK FAILED: {} lost, {} duplicated, echoes {} missing / {} extra",
            d.lost, d.duplicated, d.echoes_missing, d.echoes_duplicated
        );
        let _ = writeln!(t, "{}", "!".repeat(72));
    }
    print!("{t}");

    let dir = Path::new(&o.out);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut pct = serde_json::Map::new();
    for (name, h) in &hists {
        let file = dir.join(format!("{}.{}.hgrm", o.label, name));
        std::fs::write(&file, hgrm(h)).map_err(|e| format!("{}: {e}", file.display()))?;
        pct.insert(name.clone(), crate::report::quantiles_json(h));
    }
    let summary = json!({
        "label": o.label, "proto": match o.proto { Proto::Jsonp => "jsonp", Proto::Bosh => "bosh" },
        "users": o.users, "friends": o.friends, "lattice": o.lattice, "rate": o.rate,
        "wait_s": o.wait_s, "workers": o.workers, "duration_s": o.duration_s,
        "messages_per_s": messages_per_s, "offered_per_s": offered_per_s,
        "requests_per_s": requests_per_s,
        "logins": first_login.len(), "last_login_ms": last_login_ms,
        "acked": d.acked, "lost": d.lost, "duplicated": d.duplicated,
        "unchecked_offline": d.unchecked_offline, "unchecked_late": d.unchecked_late,
        "unacked_delivered": d.unacked_delivered,
        "echoes_missing": d.echoes_missing, "echoes_duplicated": d.echoes_duplicated,
        "errors": errors, "counters": counters, "histograms": pct,
        "server": server, "generator": generator,
    });
    let line = serde_json::to_string(&summary).expect("json");
    println!("SUMMARY {line}");
    let file = dir.join(format!("{}.summary.json", o.label));
    std::fs::write(&file, format!("{line}\n")).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(!bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(acked: &[(u64, u64)], receipts: &[(u64, u32)], echoes: &[(u64, u32)]) -> PeerResult {
        PeerResult {
            acked: acked
                .iter()
                .map(|&(key, to)| Acked {
                    key,
                    to,
                    due_us: 100,
                    sent_us: 100,
                    acked_us: 200,
                })
                .collect(),
            receipts: receipts.to_vec(),
            echoes: echoes.to_vec(),
            connects: (1..=9).map(|u| (u, 50)).collect(),
            stopped_us: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn delivery_check_counts_loss_duplicates_and_echoes() {
        let k = |user: u64, n: u64| user << 32 | n;
        // Two workers; receipts may be seen by the other worker's tabs.
        let ws = [
            worker(
                &[(k(1, 1), 2), (k(1, 2), 3)],
                &[(k(3, 1), 1)],
                &[(k(1, 1), 1), (k(1, 2), 1)],
            ),
            worker(
                &[(k(3, 1), 1)],
                &[(k(1, 1), 1), (k(1, 2), 2), (k(9, 9), 1)],
                &[(k(3, 1), 2)],
            ),
        ];
        assert_eq!(
            check_delivery(&ws, true, 1000),
            Delivery {
                acked: 3,
                duplicated: 1,
                unacked_delivered: 1,
                echoes_duplicated: 1,
                ..Default::default()
            }
        );
        let ws = [worker(&[(k(1, 1), 2), (k(1, 2), 2)], &[(k(1, 2), 1)], &[])];
        let d = check_delivery(&ws, false, 1000);
        assert_eq!((d.lost, d.duplicated, d.echoes_missing), (1, 0, 0));
        assert_eq!(d.lost_examples[0].key, k(1, 1));
        let d = check_delivery(&ws, true, 1000);
        assert_eq!(d.echoes_missing, 2);
    }

    #[test]
    fn messages_to_users_not_yet_logged_in_or_acknowledged_at_the_end_are_not_checked() {
        let k = |user: u64, n: u64| user << 32 | n;
        let mut w = worker(&[(k(1, 1), 2), (k(1, 2), 3), (k(1, 3), 4)], &[], &[]);
        w.connects.retain(|&(u, _)| u != 2); // user 2 never logged in
        w.connects.retain(|&(u, _)| u != 3);
        w.connects.push((3, 150)); // user 3 logged in after the send went out
        w.acked[2].acked_us = 9_500; // within the drain of the stop
        let d = check_delivery(&[w], false, 1000);
        assert_eq!((d.lost, d.unchecked_offline, d.unchecked_late), (0, 2, 1));
    }
}
