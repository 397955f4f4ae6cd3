//! Merging the workers' results, checking delivery (loss and duplicates by
//! message key), and writing the outputs: a human table, a one-line JSON
//! summary, and one `.hgrm` percentile distribution per histogram.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::json;

use crate::options::Options;
use crate::procstat::ServerSample;
use crate::worker::{new_hist, WorkerResult};

/// Everything the coordinator knows at the end.
pub struct Run {
    pub o: Options,
    pub workers: Vec<WorkerResult>,
    pub server_before: Option<ServerSample>,
    pub server_after: Option<ServerSample>,
    /// CPU seconds the workers used (user + system).
    pub bench_cpu_s: f64,
}

/// The delivery check's figures (see [`check_delivery`]).
pub(crate) struct Delivery {
    pub acked: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub over: u64,
    pub lost_messages: u64,
    pub unacked_delivered: u64,
}

/// Per acknowledged message, the live tabs of sender and recipient that
/// stayed attached against the deliveries they saw.
pub(crate) fn check_delivery(workers: &[WorkerResult]) -> Delivery {
    let mut attached: HashMap<u64, u64> = HashMap::new();
    let mut receipts: HashMap<u64, u64> = HashMap::new();
    for w in workers {
        for &(u, n) in &w.live_attached {
            *attached.entry(u).or_insert(0) += n as u64;
        }
        for &(k, n) in &w.receipts {
            *receipts.entry(k).or_insert(0) += n as u64;
        }
    }
    let mut d = Delivery {
        acked: 0,
        expected: 0,
        delivered: 0,
        lost: 0,
        over: 0,
        lost_messages: 0,
        unacked_delivered: 0,
    };
    let mut acked_keys = std::collections::HashSet::new();
    for w in workers {
        for &(key, to) in &w.acked {
            acked_keys.insert(key);
            let from = key >> 32;
            let want =
                attached.get(&from).copied().unwrap_or(0) + attached.get(&to).copied().unwrap_or(0);
            let got = receipts.get(&key).copied().unwrap_or(0);
            d.acked += 1;
            d.expected += want;
            d.delivered += got;
            if got < want {
                d.lost += want - got;
                d.lost_messages += 1;
            } else {
                d.over += got - want;
            }
        }
    }
    for (k, n) in &receipts {
        if !acked_keys.contains(k) {
            d.unacked_delivered += n;
        }
    }
    d
}

pub(crate) fn merged_hists(workers: &[WorkerResult]) -> BTreeMap<String, Histogram<u64>> {
    let mut out: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for w in workers {
        for (name, pairs) in &w.hists {
            let h = out.entry(name.clone()).or_insert_with(new_hist);
            for &(v, c) in pairs {
                h.saturating_record_n(v, c);
            }
        }
    }
    out
}

pub(crate) fn sum_maps(maps: impl Iterator<Item = BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k).or_insert(0) += v;
        }
    }
    out
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A histogram's count and quantiles (ms), for a summary's JSON.
pub(crate) fn quantiles_json(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)), "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)), "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// The header of a report's quantile table, its first column `width`
/// wide and titled `title` (the rows: [`quantile_row`]).
pub(crate) fn quantile_header(t: &mut String, title: &str, width: usize) {
    let _ = writeln!(
        t,
        "{title:<width$} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p90", "p99", "p99.9", "max"
    );
}

/// One histogram's line of a quantile table: count, p50, p90, p99, p99.9
/// and max, in ms.
pub(crate) fn quantile_row(t: &mut String, name: &str, width: usize, h: &Histogram<u64>) {
    let _ = writeln!(
        t,
        "{name:<width$} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    );
}

/// The standard HdrHistogram percentile distribution (values in ms).
pub(crate) fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    if h.is_empty() {
        s.push_str("#[Mean    =        0.000, StdDeviation   =        0.000]\n#[Max     =        0.000, Total count    =            0]\n");
        return s;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        if inv.is_finite() {
            let _ = writeln!(
                s,
                "{:12.3} {:2.12} {:10} {:14.2}",
                ms(v.value_iterated_to()),
                q,
                total,
                inv
            );
        } else {
            let _ = writeln!(
                s,
                "{:12.3} {:2.12} {:10}",
                ms(v.value_iterated_to()),
                q,
                total
            );
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(h.max()),
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

/// Prints the table and the JSON line, writes the files; returns whether
/// the run is clean (no loss, no duplicates).
pub fn report(run: &Run) -> Result<bool, String> {
    let o = &run.o;
    let hists = merged_hists(&run.workers);
    let answered = sum_maps(run.workers.iter().map(|w| w.answered.clone()));
    let answered_total = sum_maps(run.workers.iter().map(|w| w.answered_total.clone()));
    let errors = sum_maps(run.workers.iter().map(|w| w.errors.clone()));
    let counters = sum_maps(run.workers.iter().map(|w| w.counters.clone()));
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    let d = check_delivery(&run.workers);
    let dur = if o.measure_ramp {
        o.ramp_s + o.warmup_s + o.duration_s
    } else {
        o.duration_s
    };
    let answered_measured: u64 = answered.values().sum();
    let requests_per_s = answered_measured as f64 / dur;
    let messages_per_s = c("sends_acked_measured") as f64 / dur;
    let deliveries_per_s = c("deliveries_measured") as f64 / dur;
    let dup = c("duplicate_deliveries") + d.over;

    let mut t = String::new();
    let _ = writeln!(
        t,
        "switchboard-bench {}: users {} friends {} tabs {} (live: {} users x {} tabs) rate {}/s typing {}/s presence {}/s workers {} measured {} s",
        o.label, o.users, o.friends, o.tabs, o.live_users, o.live_tabs, o.rate, o.typing_rate, o.presence_rate, o.workers, o.duration_s
    );
    quantile_header(&mut t, "histogram (ms)", 16);
    for (name, h) in &hists {
        quantile_row(&mut t, name, 16, h);
    }
    let _ = writeln!(
        t,
        "messages acked/s {messages_per_s:.0}  deliveries/s {deliveries_per_s:.0}  HTTP answers/s {requests_per_s:.0} (measured phase)"
    );
    let _ = writeln!(t, "answers by endpoint (measured): {answered:?}");
    let _ = writeln!(t, "answers by endpoint (whole run): {answered_total:?}");
    let _ = writeln!(t, "errors: {errors:?}");
    let _ = writeln!(t, "counters: {counters:?}");
    let _ = writeln!(
        t,
        "delivery check: {} acked sends, {} deliveries expected to live tabs, {} seen, {} lost ({} messages), {} duplicated, {} deliveries of unacknowledged sends",
        d.acked, d.expected, d.delivered, d.lost, d.lost_messages, dup, d.unacked_delivered
    );
    let presence_min = c("presence_min_needed");
    let presence_events = c("presence_events");
    let tabs_connected = c("tabs_connected").max(1);
    let _ = writeln!(
        t,
        "presence: {} events over {} tab connects ({:.2}/tab), minimum needed {} ({:.2}/tab), ratio {:.2}; wrong views at end: {} over {} tabs checked",
        presence_events,
        c("tabs_connected"),
        presence_events as f64 / tabs_connected as f64,
        presence_min,
        presence_min as f64 / tabs_connected as f64,
        presence_events as f64 / presence_min.max(1) as f64,
        c("presence_wrong_views"),
        c("presence_checked_tabs")
    );
    let mut server = serde_json::Value::Null;
    if let (Some(a), Some(b)) = (&run.server_before, &run.server_after) {
        let cpu = b.cpu_s - a.cpu_s;
        let wall = b.at_s - a.at_s;
        let _ = writeln!(
            t,
            "server: {:.2} CPU s over {:.1} s measured ({:.1}% of one core), RSS {:.1} MiB (peak {:.1} MiB), {} threads, {} open fds at the start of the measured phase and {} at its end",
            cpu,
            wall,
            100.0 * cpu / wall.max(1e-9),
            b.rss_kib as f64 / 1024.0,
            b.hwm_kib as f64 / 1024.0,
            b.threads,
            a.fds,
            b.fds
        );
        server = json!({
            "cpu_s": cpu, "wall_s": wall, "cpu_pct_of_core": 100.0 * cpu / wall.max(1e-9),
            "rss_mib": b.rss_kib as f64 / 1024.0, "rss_peak_mib": b.hwm_kib as f64 / 1024.0,
            "fds_start": a.fds, "fds_end": b.fds,
        });
    }
    let _ = writeln!(t, "bench workers used {:.2} CPU s", run.bench_cpu_s);
    let lost_any = d.lost > 0 || c("poll_resets") > 0;
    if lost_any || dup > 0 {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
        let _ = writeln!(
            t,
            "!!! MESSAGES LOST: {} deliveries ({} messages), {} poll resets; DUPLICATED: {}",
            d.lost,
            d.lost_messages,
            c("poll_resets"),
            dup
        );
        let _ = writeln!(
            t,
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
    }
    print!("{t}");

    let dir = Path::new(&o.out);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut pct = serde_json::Map::new();
    for (name, h) in &hists {
        let file = dir.join(format!("{}.{}.hgrm", o.label, name));
        std::fs::write(&file, hgrm(h)).map_err(|e| format!("{}: {e}", file.display()))?;
        pct.insert(name.clone(), quantiles_json(h));
    }
    let summary = json!({
        "label": o.label, "users": o.users, "friends": o.friends, "tabs": o.tabs,
        "live_users": o.live_users, "live_tabs": o.live_tabs, "rate": o.rate,
        "workers": o.workers, "duration_s": o.duration_s,
        "messages_per_s": messages_per_s, "deliveries_per_s": deliveries_per_s,
        "requests_per_s": requests_per_s,
        "lost": d.lost, "lost_messages": d.lost_messages, "duplicated": dup,
        "acked": d.acked, "expected_deliveries": d.expected, "seen_deliveries": d.delivered,
        "presence_events": presence_events, "presence_min_needed": presence_min,
        "presence_wrong_views": c("presence_wrong_views"),
        "errors": errors, "counters": counters, "histograms": pct, "server": server,
        "bench_cpu_s": run.bench_cpu_s,
    });
    let line = serde_json::to_string(&summary).expect("json");
    println!("SUMMARY {line}");
    let file = dir.join(format!("{}.summary.json", o.label));
    std::fs::write(&file, format!("{line}\n")).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(!lost_any && dup == 0)
}
