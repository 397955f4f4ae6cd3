//! `switchboard-bench handover`: a deploy under load. How long `switchboard
//! serve --takeover` takes with every tab attached and long-polling, and
//! what the tabs see of it (issue 12).
//!
//! The coordinator starts the server itself (`--server PATH serve`, with
//! this process's environment: the script sets `SWITCHBOARD_*`), waits for
//! its listening line, then forks the workers of `run` (the same tabs,
//! open-loop sends, delivery check) with samples on: every delivery to a
//! tab and every send is kept with its due time, so latency can be cut
//! into windows that are known only afterwards. `--before-s` into the
//! measured phase (`T0`) it starts `PATH serve --takeover` with the same
//! environment, and notes when the new process prints its listening line
//! and when the old one exits (and with which status). Then:
//!
//! - **Windows**, by the send slot's due time: *before* is
//!   `[T0 - before-s, T0)`, *during* `[T0, old exit + after-exit-s)`,
//!   *after* the rest of the measured phase. e2e (due time → a tab's poll
//!   returned the message) and send (due time → acknowledged) per window.
//! - **The servers' own figures**: the old one's `no connection was
//!   accepted for X ms` and the new one's `M ms after asking` from their
//!   logs; the wall time from starting the new process to the old one's
//!   exit; `/metrics` (sessions, tabs, held polls) of the old one before
//!   T0 and of the new one at the end of the during window.
//! - **What clients saw**: failed requests by code (`unknown_session`
//!   among them), poll resets, retries (a request on a reused keep-alive
//!   connection that the server closed before any byte of the answer is
//!   sent once more, as browsers do; `http.rs`), answers with
//!   `Connection: close`, lost and duplicated messages.
//! - **Kernel**: `ListenOverflows`, `ListenDrops` and `TCPSynRetrans`
//!   (/proc/net/netstat, the whole machine) over the before window and over
//!   the during window: reconnecting clients that found a full backlog wait
//!   for their SYN's retransmission (1 s, then 3 s...).
//! - **CPU**: the old server over the before window; the old one from T0
//!   to its exit, the new one from its start to the end of the during
//!   window; the generator (workers and coordinator) over both windows.
//!
//! Outputs: the report, `OUT/LABEL.summary.json` (and a `SUMMARY` line),
//! `.hgrm` files per histogram and window, `OUT/LABEL.incidents.txt`
//! (every failure, retry and reset, by time from T0), `OUT/LABEL.latency.csv`
//! (e2e by the send's due time, every 100 ms of the measured phase),
//! `OUT/LABEL.timeline.csv` (both servers' CPU every 100 ms around the
//! hand-over), the servers' stdout and logs (`OUT/LABEL.{old,new}.{out,log}`).
//! Exit 1 when anything clients must not see happened, or the hand-over did
//! not complete (status, lines), 2 on a bad setup.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::options::Options;
use crate::procstat;
use crate::report::{check_delivery, hgrm, merged_hists, ms, sum_maps, Delivery};
use crate::worker::{new_hist, now_us, Schedule, WorkerResult};

/// How long a server may take to print its listening line.
const LISTEN_WAIT: Duration = Duration::from_secs(60);
/// How long the old process may take to exit after the new one started.
const EXIT_WAIT: Duration = Duration::from_secs(60);
/// How long a stopped (SIGTERM) server may take before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// How often the monitor looks whether the old process exited.
const EXIT_POLL: Duration = Duration::from_millis(2);
/// The CPU timeline's step.
const TIMELINE_STEP: Duration = Duration::from_millis(100);

/// The options `handover` adds to `run`'s (`--help`).
pub const USAGE: &str = "
  switchboard-bench handover --server PATH [OPTIONS of run] [--before-s 20] [--after-exit-s 5]
        a deploy under load (issue 12): starts `PATH serve` with this environment
        (SWITCHBOARD_*), runs run's load with every delivery's time kept, and
        --before-s into the measured phase starts `PATH serve --takeover`; reports the
        hand-over's times (the servers' log lines, start to old exit), e2e and send
        latency before it, during it (to --after-exit-s after the old exit) and after,
        what clients saw (failures, retries, resets, loss). bench/handover.sh runs it.
        Exits 1 when a client saw a failure or a message was lost or duplicated, or the
        hand-over did not complete.
";

/// The hand-over's own options (beside `run`'s).
struct HoOptions {
    server: String,
    before_s: f64,
    after_exit_s: f64,
}

impl HoOptions {
    fn parse(o: &Options, extra: &BTreeMap<String, String>) -> Result<HoOptions, String> {
        for k in extra.keys() {
            if !["server", "before-s", "after-exit-s"].contains(&k.as_str()) {
                return Err(format!("unknown option --{k} (see --help)"));
            }
        }
        let num = |k: &str, d: f64| -> Result<f64, String> {
            match extra.get(k) {
                None => Ok(d),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("--{k}: {v:?} is not a number")),
            }
        };
        let h = HoOptions {
            server: extra
                .get("server")
                .cloned()
                .ok_or("handover needs --server PATH (the switchboard binary)")?,
            before_s: num("before-s", 20.0)?,
            after_exit_s: num("after-exit-s", 5.0)?,
        };
        if h.before_s <= 0.0 || h.after_exit_s < 0.0 {
            return Err("--before-s must be positive and --after-exit-s at least 0".into());
        }
        if o.duration_s < h.before_s + h.after_exit_s + 2.0 {
            return Err(format!(
                "--duration-s {} leaves no room for the hand-over: it must be at least \
                 --before-s + --after-exit-s + 2 (and the old server's exit must come before \
                 its end minus --after-exit-s)",
                o.duration_s
            ));
        }
        if o.measure_ramp {
            return Err("--measure-ramp does not apply to handover".into());
        }
        Ok(h)
    }
}

/// A server process this command started, its stdout read by a thread
/// (each line with the instant it came, also copied to a file).
struct Server {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `bin serve [--takeover]`, stdout to a thread, stderr (the
    /// log) to `log`.
    fn start(bin: &str, takeover: bool, out: &Path, log: &Path) -> Result<Server, String> {
        let err = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve");
        if takeover {
            cmd.arg("--takeover");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut copy = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let _ = writeln!(copy, "{line}");
                let _ = tx.send((at, line));
            }
        });
        Ok(Server { child, lines })
    }

    /// Waits for `switchboard listening on ...`; returns when it came and
    /// the admin address it names.
    fn listening(&mut self, wait: Duration) -> Result<(Instant, Option<SocketAddr>), String> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.starts_with("switchboard listening on") => {
                    let admin = line
                        .split("admin http://")
                        .nth(1)
                        .and_then(|a| a.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                    return Ok((at, admin));
                }
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        return Err(format!(
                            "pid {} exited ({status}) before its listening line",
                            self.pid()
                        ));
                    }
                    return Err(format!(
                        "pid {}: no listening line within {} s",
                        self.pid(),
                        wait.as_secs()
                    ));
                }
            }
        }
    }

    /// SIGTERM (by pid: only this process), then SIGKILL after `STOP_WAIT`.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let until = Instant::now() + STOP_WAIT;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "switchboard-bench: pid {} did not stop within {} s: SIGKILL",
            self.pid(),
            STOP_WAIT.as_secs()
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

/// `GET /metrics` on the admin listener: sessions, tabs and held polls
/// summed over the shards (`switchboard_sessions`, `_tabs`,
/// `_held_polls`).
fn gauges(admin: Option<SocketAddr>) -> Option<(u64, u64, u64)> {
    let admin = admin?;
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    // The admin listener wants its own address as Host.
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some((
        gauge_sum(body, "switchboard_sessions{"),
        gauge_sum(body, "switchboard_tabs{"),
        gauge_sum(body, "switchboard_held_polls{"),
    ))
}

/// The sum of a gauge's values over its labels in Prometheus text.
fn gauge_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The kernel's TCP counters that show reconnecting clients meeting a full
/// accept queue (`/proc/net/netstat`, the whole machine).
const NETSTAT_KEYS: [&str; 3] = ["ListenOverflows", "ListenDrops", "TCPSynRetrans"];

fn netstat() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if NETSTAT_KEYS.contains(&n) {
                out.insert(n.to_string(), v.parse().unwrap_or(0));
            }
        }
    }
    out
}

fn netstat_delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*a.get(k).unwrap_or(&0))))
        .collect()
}

/// What the monitor thread saw of the two servers from T0 on.
#[derive(Default)]
struct Watch {
    /// When the old process was seen gone, and its status.
    old_exit: Option<(Instant, ExitStatus)>,
    /// Its CPU seconds at T0 and at the last look before its exit.
    old_cpu_t0: Option<f64>,
    old_cpu_last: Option<f64>,
    /// (ms since T0, old CPU s, new CPU s) every `TIMELINE_STEP`.
    timeline: Vec<(u64, Option<f64>, Option<f64>)>,
}

/// Watches the old process until it exits (reaping it: its status) and
/// samples both servers' CPU, until `stop`.
fn watch(
    mut old: Child,
    new_pid: u32,
    t0: Instant,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Watch>>,
) -> Child {
    let old_pid = old.id();
    out.lock().expect("watch").old_cpu_t0 = procstat::cpu_s(old_pid);
    let mut next_sample = t0;
    let mut gone = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if !gone {
            let cpu = procstat::cpu_s(old_pid);
            if let Ok(Some(status)) = old.try_wait() {
                let mut w = out.lock().expect("watch");
                w.old_exit = Some((now, status));
                gone = true;
            } else if cpu.is_some() {
                out.lock().expect("watch").old_cpu_last = cpu;
            }
        }
        if now >= next_sample {
            let sample = (
                now.duration_since(t0).as_millis() as u64,
                if gone { None } else { procstat::cpu_s(old_pid) },
                procstat::cpu_s(new_pid),
            );
            out.lock().expect("watch").timeline.push(sample);
            next_sample += TIMELINE_STEP;
        }
        std::thread::sleep(EXIT_POLL);
    }
    old
}

/// The first number after `key` in `text` (`... accepted for 12 ms` →
/// 12).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The number just before `key` in `text` (`655 ms after asking` → 655).
fn number_before(text: &str, key: &str) -> Option<u64> {
    let head = &text[..text.find(key)?];
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    head[head.len() - digits..].parse().ok()
}

/// The log line holding `needle`, from the end of the log file.
fn log_line(path: &Path, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

/// Warnings and errors in a log (`WARN`/`ERROR` records), at most `max`.
fn log_warnings(path: &Path, max: usize) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<String> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .map(str::to_string)
        .collect();
    let n = all.len();
    (n, all.into_iter().take(max).collect())
}

/// One latency window over the samples.
struct Window {
    name: &'static str,
    from_us: u64,
    to_us: u64,
    e2e: Histogram<u64>,
    send: Histogram<u64>,
}

fn windows(workers: &[WorkerResult], bounds: &[(&'static str, u64, u64)]) -> Vec<Window> {
    let mut out: Vec<Window> = bounds
        .iter()
        .map(|&(name, from_us, to_us)| Window {
            name,
            from_us,
            to_us,
            e2e: new_hist(),
            send: new_hist(),
        })
        .collect();
    for w in workers {
        for &(due, seen) in &w.e2e_samples {
            if let Some(win) = out.iter_mut().find(|x| due >= x.from_us && due < x.to_us) {
                win.e2e.saturating_record(seen.saturating_sub(due).max(1));
            }
        }
        for &(due, acked) in &w.send_samples {
            if let Some(win) = out.iter_mut().find(|x| due >= x.from_us && due < x.to_us) {
                win.send.saturating_record(acked.saturating_sub(due).max(1));
            }
        }
    }
    out
}

/// e2e histograms of the deliveries whose send was due in each `step_us`
/// from `from_us` to `to_us`.
fn by_due(workers: &[WorkerResult], from_us: u64, to_us: u64, step_us: u64) -> Vec<Histogram<u64>> {
    let n = to_us.saturating_sub(from_us).div_ceil(step_us) as usize;
    let mut out: Vec<Histogram<u64>> = (0..n).map(|_| new_hist()).collect();
    for w in workers {
        for &(due, seen) in &w.e2e_samples {
            if due >= from_us && due < to_us {
                let i = ((due - from_us) / step_us) as usize;
                out[i].saturating_record(seen.saturating_sub(due).max(1));
            }
        }
    }
    out
}

/// Unix µs of an instant of this process (`now` is the pair to convert by).
fn unix_us_of(at: Instant, now_i: Instant, now_u: u64) -> u64 {
    if at <= now_i {
        now_u.saturating_sub(now_i.duration_since(at).as_micros() as u64)
    } else {
        now_u + at.duration_since(now_i).as_micros() as u64
    }
}

pub fn cmd(args: &[String]) -> Result<ExitCode, String> {
    let (o, extra) = Options::parse(args)?;
    let extra: BTreeMap<String, String> = extra.into_iter().collect();
    let h = HoOptions::parse(&o, &extra)?;
    crate::graph::Graph::new(o.users, o.friends, o.seed, o.lattice)?;
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out))?;
    let dir = Path::new(&o.out);
    let file = |what: &str| dir.join(format!("{}.{what}", o.label));
    let epoch = Instant::now();

    // The old server, from scratch.
    let mut old = Server::start(&h.server, false, &file("old.out"), &file("old.log"))?;
    let (_, admin) = match old.listening(LISTEN_WAIT) {
        Ok(l) => l,
        Err(e) => {
            old.stop();
            return Err(e);
        }
    };
    let old_pid = old.pid();
    eprintln!("switchboard-bench handover: old server pid {old_pid} listening (admin {admin:?})");

    // The workers, as `run` forks them, with samples on.
    let lead_ms = 1000 + (o.users as u64 * o.friends as u64) / 20_000;
    let start_unix_ms = now_us() / 1000 + lead_ms;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let worker_args: Vec<String> = {
        // The workers take run's options; the hand-over's own are dropped.
        let mut v = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            let name = a.trim_start_matches("--").split('=').next().unwrap_or("");
            let own = ["server", "before-s", "after-exit-s"].contains(&name);
            let inline = a.contains('=');
            if !own {
                v.push(a.clone());
                if !inline && i + 1 < args.len() {
                    v.push(args[i + 1].clone());
                }
            }
            i += if inline { 1 } else { 2 };
        }
        v
    };
    let mut children = Vec::new();
    for i in 0..o.workers {
        let result = format!("{}/.worker-{}-{}.json", o.out, o.label, i);
        let _ = std::fs::remove_file(&result);
        let spawned = Command::new(&exe)
            .arg("worker")
            .args(&worker_args)
            .args(["--index", &i.to_string()])
            .args(["--start-unix-ms", &start_unix_ms.to_string()])
            .args(["--result", &result])
            .args(["--samples", "1"])
            .spawn();
        match spawned {
            Ok(child) => children.push((child, result)),
            Err(e) => {
                for (mut c, _) in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                old.stop();
                return Err(format!("cannot start worker {i}: {e}"));
            }
        }
    }
    let worker_pids: Vec<u32> = children.iter().map(|(c, _)| c.id()).collect();
    let generator_cpu_s = || -> Option<f64> {
        let own = procstat::cpu_s(std::process::id())?;
        worker_pids
            .iter()
            .map(|&p| procstat::cpu_s(p))
            .sum::<Option<f64>>()
            .map(|w| w + own)
    };
    let sched = Schedule::new(&o, start_unix_ms);
    let t0 = sched.measure_from + Duration::from_secs_f64(h.before_s);

    // The before window.
    std::thread::sleep(sched.measure_from.saturating_duration_since(Instant::now()));
    let old_before = procstat::sample(old_pid, epoch);
    let gen_before = generator_cpu_s();
    let net_before = netstat();
    std::thread::sleep(
        t0.saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(600)),
    );
    let health_old = gauges(admin);
    std::thread::sleep(t0.saturating_duration_since(Instant::now()));
    let old_at_t0 = procstat::sample(old_pid, epoch);
    let gen_t0 = generator_cpu_s();
    let net_t0 = netstat();

    // The hand-over.
    let t0 = Instant::now();
    let t0_us = now_us();
    let mut new = match Server::start(&h.server, true, &file("new.out"), &file("new.log")) {
        Ok(s) => s,
        Err(e) => {
            old.stop();
            for (mut c, _) in children {
                let _ = c.wait();
            }
            return Err(e);
        }
    };
    let new_pid = new.pid();
    let watch_out = Arc::new(Mutex::new(Watch::default()));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let Server {
        child: old_child,
        lines: old_lines,
    } = old;
    let watcher = {
        let (out, stop) = (watch_out.clone(), watch_stop.clone());
        std::thread::spawn(move || watch(old_child, new_pid, t0, stop, out))
    };
    let new_listening = new.listening(EXIT_WAIT);
    // The old process's exit.
    let until = t0 + EXIT_WAIT;
    let old_exit = loop {
        if let Some(e) = watch_out.lock().expect("watch").old_exit {
            break Some(e);
        }
        if Instant::now() > until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let new_at_exit = procstat::sample(new_pid, epoch);
    // The during window ends `after_exit_s` after the exit (or, with no
    // exit, at the end of the measured phase).
    let during_to = match old_exit {
        Some((at, _)) => (at + Duration::from_secs_f64(h.after_exit_s)).min(sched.measure_to),
        None => sched.measure_to,
    };
    let during_cut = old_exit
        .is_some_and(|(at, _)| at + Duration::from_secs_f64(h.after_exit_s) > sched.measure_to);
    std::thread::sleep(during_to.saturating_duration_since(Instant::now()));
    let gen_during = generator_cpu_s();
    let net_during = netstat();
    let new_at_during_end = procstat::sample(new_pid, epoch);
    let health_new = gauges(admin);
    std::thread::sleep(Duration::from_millis(300));
    watch_stop.store(true, Ordering::Relaxed);
    let old_child = watcher.join().map_err(|_| "the watch thread panicked")?;
    let watch = std::mem::take(&mut *watch_out.lock().expect("watch"));

    // The rest of the run; the workers stop by themselves.
    let collected = crate::collect_workers::<WorkerResult>(children);
    let new_end = procstat::sample(new_pid, epoch);
    let new_status = new.stop();
    // An old server that did not hand over is stopped too.
    let mut old = Server {
        child: old_child,
        lines: old_lines,
    };
    let old_status = match old_exit {
        Some((_, s)) => Some(s),
        None => old.stop(),
    };
    let workers = collected?;

    // ---- the report ----
    let now_i = Instant::now();
    let now_u = now_us();
    let us = |at: Instant| unix_us_of(at, now_i, now_u);
    let during_to_us = us(during_to);
    let before_from_us = sched.measure_from_us;
    let wins = windows(
        &workers,
        &[
            ("before", before_from_us, t0_us),
            ("during", t0_us, during_to_us),
            ("after", during_to_us, sched.measure_to_us),
        ],
    );
    let errors = sum_maps(workers.iter().map(|w| w.errors.clone()));
    let counters = sum_maps(workers.iter().map(|w| w.counters.clone()));
    let c = |k: &str| counters.get(k).copied().unwrap_or(0);
    let d: Delivery = check_delivery(&workers);
    let dup = c("duplicate_deliveries") + d.over;
    let failed: u64 = errors.values().sum();
    let unknown_session = errors.get("unknown_session").copied().unwrap_or(0);
    let hists = merged_hists(&workers);

    let old_line = log_line(&file("old.log"), "handed over to pid");
    let new_line = log_line(&file("new.log"), "took over from pid");
    let not_accepting_ms = old_line
        .as_deref()
        .and_then(|l| number_after(l, "no connection was accepted for"));
    let after_asking_ms = new_line
        .as_deref()
        .and_then(|l| number_before(l, " ms after asking"));
    let start_to_exit_ms = old_exit.map(|(at, _)| at.duration_since(t0).as_millis() as u64);
    let start_to_listening_ms = new_listening
        .as_ref()
        .ok()
        .map(|(at, _)| at.duration_since(t0).as_millis() as u64);
    let old_exit_code = old_status.and_then(|s| s.code());
    let old_cpu_handover = match (watch.old_cpu_t0, watch.old_cpu_last) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let new_cpu_handover = new_at_during_end.as_ref().map(|s| s.cpu_s);
    let new_cpu_to_exit = new_at_exit.as_ref().map(|s| s.cpu_s);
    let before_wall = old_at_t0
        .as_ref()
        .zip(old_before.as_ref())
        .map(|(b, a)| b.at_s - a.at_s);
    let old_pct_before = old_at_t0
        .as_ref()
        .zip(old_before.as_ref())
        .map(|(b, a)| 100.0 * (b.cpu_s - a.cpu_s) / (b.at_s - a.at_s).max(1e-9));
    let during_wall_s = during_to.duration_since(t0).as_secs_f64();
    let gen_pct_before = gen_before
        .zip(gen_t0)
        .zip(before_wall)
        .map(|((a, b), w)| 100.0 * (b - a) / w.max(1e-9));
    let gen_pct_during = gen_t0
        .zip(gen_during)
        .map(|(a, b)| 100.0 * (b - a) / during_wall_s.max(1e-9));
    let net_b = netstat_delta(&net_before, &net_t0);
    let net_d = netstat_delta(&net_t0, &net_during);

    let mut t = String::new();
    let _ = writeln!(
        t,
        "switchboard-bench handover {}: {} users x {} tabs = {} tabs long-polling (wait {} s), {} friends, {} msg/s, {} workers",
        o.label, o.users, o.tabs, o.users * o.tabs, o.poll_wait_s, o.friends, o.rate, o.workers
    );
    let _ = writeln!(
        t,
        "hand-over: `{} serve --takeover` started {:.1} s into the measured phase (T0); old pid {old_pid}, new pid {new_pid}",
        h.server, h.before_s
    );
    match &new_listening {
        Ok(_) => {
            let _ = writeln!(
                t,
                "  new process's listening line: T0 + {} ms",
                start_to_listening_ms.unwrap_or(0)
            );
        }
        Err(e) => {
            let _ = writeln!(t, "  new process: {e}");
        }
    }
    match old_exit {
        Some((_, status)) => {
            let _ = writeln!(
                t,
                "  old process exited: T0 + {} ms, {status}",
                start_to_exit_ms.unwrap_or(0)
            );
        }
        None => {
            let _ = writeln!(
                t,
                "  old process: still running {} s after T0 (stopped by the bench: {:?})",
                EXIT_WAIT.as_secs(),
                old_status
            );
        }
    }
    let _ = writeln!(
        t,
        "  old log: {}",
        old_line.as_deref().unwrap_or("(no `handed over` line)")
    );
    let _ = writeln!(
        t,
        "  new log: {}",
        new_line.as_deref().unwrap_or("(no `took over` line)")
    );
    let _ = writeln!(
        t,
        "  => no connection accepted for {} ms; new ready {} ms after asking; start to old exit {} ms",
        not_accepting_ms.map_or("?".into(), |v| v.to_string()),
        after_asking_ms.map_or("?".into(), |v| v.to_string()),
        start_to_exit_ms.map_or("?".into(), |v| v.to_string())
    );
    if let Some((s, tabs, polls)) = &health_old {
        let _ = writeln!(
            t,
            "  /metrics before T0 (old): {s} sessions, {tabs} tabs, {polls} held polls"
        );
    }
    if let Some((s, tabs, polls)) = &health_new {
        let _ = writeln!(
            t,
            "  /metrics at the end of the during window (new): {s} sessions, {tabs} tabs, {polls} held polls"
        );
    }
    let _ = writeln!(
        t,
        "windows by the send's due time: before {:.1} s, during {:.1} s (T0 .. old exit + {} s{}), after {:.1} s",
        (t0_us - before_from_us) as f64 / 1e6,
        during_wall_s,
        h.after_exit_s,
        if during_cut { ", cut at the end of the measured phase" } else { "" },
        sched.measure_to_us.saturating_sub(during_to_us) as f64 / 1e6
    );
    crate::report::quantile_header(&mut t, "latency (ms)", 22);
    for w in &wins {
        crate::report::quantile_row(&mut t, &format!("e2e {}", w.name), 22, &w.e2e);
    }
    for w in &wins {
        crate::report::quantile_row(&mut t, &format!("send {}", w.name), 22, &w.send);
    }
    // Around T0, by the send's due time.
    let step_us = 200_000;
    let from_us = t0_us.saturating_sub(400_000);
    let to_us = (t0_us + 2_600_000).min(during_to_us);
    let _ = writeln!(
        t,
        "e2e by the send's due time around T0 (ms; the old exited at T0 + {} ms):",
        start_to_exit_ms.map_or("?".into(), |v| v.to_string())
    );
    for (i, hist) in by_due(&workers, from_us, to_us, step_us).iter().enumerate() {
        let at = (from_us + i as u64 * step_us) as i64 / 1000 - t0_us as i64 / 1000;
        crate::report::quantile_row(&mut t, &format!("  T0{at:+} .. {:+}", at + 200), 22, hist);
    }
    let _ = writeln!(
        t,
        "clients: {failed} failed requests {errors:?}; unknown_session {unknown_session}; poll resets {}; tab reconnects {}",
        c("poll_resets"),
        c("tab_reconnects")
    );
    let _ = writeln!(
        t,
        "  retries (reused connection closed before any byte; sent again once): {} (sends {}, polls {}, others {}; EOF {}, reset {}, write failed {}); answers with Connection: close: {}",
        c("retries"),
        c("retries_send"),
        c("retries_poll"),
        c("retries_other"),
        c("retries_eof"),
        c("retries_reset"),
        c("retries_write_failed"),
        c("conn_close_answers")
    );
    if c("retries_poll") > 0 {
        let _ = writeln!(
            t,
            "  note: {} polls were sent again: a held poll's connection closed without an answer \
             (the hand-over answers held polls; see the incidents file)",
            c("retries_poll")
        );
    }
    let _ = writeln!(
        t,
        "  sends: {} acked, {} failed, {} unsettled; slots missed (no connection) {}, late {}",
        c("sends_acked"),
        c("sends_failed"),
        c("sends_unsettled"),
        c("slots_missed_no_conn"),
        c("slots_late")
    );
    let _ = writeln!(
        t,
        "delivery check: {} acked sends, {} deliveries expected to live tabs, {} seen, {} lost ({} messages), {} duplicated",
        d.acked, d.expected, d.delivered, d.lost, d.lost_messages, dup
    );
    let _ = writeln!(
        t,
        "kernel (whole machine): before window {net_b:?}; during window {net_d:?}"
    );
    let _ = writeln!(
        t,
        "CPU: old server {} of a core over the before window; hand-over: old {} CPU s from T0 to its exit, new {} CPU s from its start to the old's exit and {} to the end of the during window",
        old_pct_before.map_or("?".into(), |p| format!("{p:.1}%")),
        old_cpu_handover.map_or("?".into(), |v| format!("{v:.2}")),
        new_cpu_to_exit.map_or("?".into(), |v| format!("{v:.2}")),
        new_cpu_handover.map_or("?".into(), |v| format!("{v:.2}")),
    );
    let _ = writeln!(
        t,
        "  generator (workers + coordinator): {} of a core before, {} during",
        gen_pct_before.map_or("?".into(), |p| format!("{p:.1}%")),
        gen_pct_during.map_or("?".into(), |p| format!("{p:.1}%")),
    );
    let _ = writeln!(
        t,
        "  server fds: old {} at T0; new {} at the old's exit, {} at the end of the during window; new RSS {:.1} MiB at the end",
        old_at_t0.as_ref().map_or(0, |s| s.fds),
        new_at_exit.as_ref().map_or(0, |s| s.fds),
        new_at_during_end.as_ref().map_or(0, |s| s.fds),
        new_end.as_ref().map_or(0.0, |s| s.rss_kib as f64 / 1024.0)
    );
    let (old_warn_n, old_warn) = log_warnings(&file("old.log"), 5);
    let (new_warn_n, new_warn) = log_warnings(&file("new.log"), 5);
    let _ = writeln!(
        t,
        "server logs: {old_warn_n} warnings/errors in the old's, {new_warn_n} in the new's; new server's stop: {new_status:?}"
    );
    for l in old_warn
        .iter()
        .map(|l| ("old", l))
        .chain(new_warn.iter().map(|l| ("new", l)))
    {
        let _ = writeln!(t, "  {}: {}", l.0, l.1);
    }

    let handed_over = old_exit_code == Some(0)
        && old_line.is_some()
        && new_line.is_some()
        && new_listening.is_ok();
    let clean_clients = failed == 0
        && c("poll_resets") == 0
        && c("tab_reconnects") == 0
        && c("sends_failed") == 0
        && d.lost == 0
        && dup == 0;
    if !handed_over || !clean_clients || during_cut {
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
        if !handed_over {
            let _ = writeln!(
                t,
                "!!! THE HAND-OVER DID NOT COMPLETE: old exit {old_exit_code:?}, lines {}/{}, new listening {}",
                old_line.is_some(),
                new_line.is_some(),
                new_listening.is_ok()
            );
        }
        if !clean_clients {
            let _ = writeln!(
                t,
                "!!! CLIENTS SAW IT: {failed} failed requests, {} resets, {} lost ({} messages), {} duplicated",
                c("poll_resets"),
                d.lost,
                d.lost_messages,
                dup
            );
        }
        if during_cut {
            let _ = writeln!(
                t,
                "!!! the during window was cut at the end of the measured phase: give more --duration-s"
            );
        }
        let _ = writeln!(
            t,
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
    }
    print!("{t}");

    // Files: histograms, incidents, timeline, summary.
    for w in &wins {
        for (what, hist) in [("e2e", &w.e2e), ("send", &w.send)] {
            let f = dir.join(format!("{}.{what}_{}.hgrm", o.label, w.name));
            std::fs::write(&f, hgrm(hist)).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    let mut incidents: Vec<(u64, usize, &str)> = workers
        .iter()
        .flat_map(|w| {
            w.incidents
                .iter()
                .map(move |(at, s)| (*at, w.worker, s.as_str()))
        })
        .collect();
    incidents.sort();
    let mut text = String::new();
    for (at, worker, what) in &incidents {
        let rel_ms = *at as i64 / 1000 - t0_us as i64 / 1000;
        let _ = writeln!(text, "T0{rel_ms:+} ms worker {worker}: {what}");
    }
    std::fs::write(file("incidents.txt"), text).map_err(|e| e.to_string())?;
    let mut csv = String::from("ms_since_t0,old_cpu_s,new_cpu_s\n");
    for (at, a, b) in &watch.timeline {
        let f = |v: &Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        let _ = writeln!(csv, "{at},{},{}", f(a), f(b));
    }
    std::fs::write(file("timeline.csv"), csv).map_err(|e| e.to_string())?;
    let mut csv = String::from("due_ms_since_t0,count,p50_ms,p99_ms,max_ms\n");
    let step_us = 100_000;
    for (i, hist) in by_due(&workers, before_from_us, sched.measure_to_us, step_us)
        .iter()
        .enumerate()
    {
        let at = (before_from_us + i as u64 * step_us) as i64 / 1000 - t0_us as i64 / 1000;
        let _ = writeln!(
            csv,
            "{at},{},{:.3},{:.3},{:.3}",
            hist.len(),
            ms(hist.value_at_quantile(0.5)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max())
        );
    }
    std::fs::write(file("latency.csv"), csv).map_err(|e| e.to_string())?;

    let mut lat = serde_json::Map::new();
    for w in &wins {
        lat.insert(
            format!("e2e_{}", w.name),
            crate::report::quantiles_json(&w.e2e),
        );
        lat.insert(
            format!("send_{}", w.name),
            crate::report::quantiles_json(&w.send),
        );
    }
    let parts = [
        json!({
            "label": o.label, "users": o.users, "tabs": o.tabs, "tabs_total": o.users * o.tabs,
            "friends": o.friends, "rate": o.rate, "workers": o.workers, "poll_wait_s": o.poll_wait_s,
            "before_s": h.before_s, "after_exit_s": h.after_exit_s, "during_s": during_wall_s,
            "old_pid": old_pid, "new_pid": new_pid, "old_exit_code": old_exit_code,
        }),
        json!({
            "not_accepting_ms": not_accepting_ms, "after_asking_ms": after_asking_ms,
            "start_to_old_exit_ms": start_to_exit_ms,
            "start_to_new_listening_ms": start_to_listening_ms,
            "old_log_line": old_line, "new_log_line": new_line,
            "metrics_old": health_old.as_ref().map(|h| json!({"sessions": h.0, "tabs": h.1, "polls": h.2})),
            "metrics_new": health_new.as_ref().map(|h| json!({"sessions": h.0, "tabs": h.1, "polls": h.2})),
            "latency": lat,
        }),
        json!({
            "failed_requests": failed, "errors": errors, "unknown_session": unknown_session,
            "poll_resets": c("poll_resets"), "tab_reconnects": c("tab_reconnects"),
            "retries": c("retries"), "retries_eof": c("retries_eof"),
            "retries_reset": c("retries_reset"), "retries_write_failed": c("retries_write_failed"),
            "retries_send": c("retries_send"), "retries_poll": c("retries_poll"),
            "conn_close_answers": c("conn_close_answers"),
        }),
        json!({
            "acked": d.acked, "expected_deliveries": d.expected, "seen_deliveries": d.delivered,
            "lost": d.lost, "lost_messages": d.lost_messages, "duplicated": dup,
            "counters": counters, "netstat_before": net_b, "netstat_during": net_d,
        }),
        json!({
            "old_cpu_pct_before": old_pct_before, "old_cpu_s_handover": old_cpu_handover,
            "new_cpu_s_to_old_exit": new_cpu_to_exit, "new_cpu_s_during": new_cpu_handover,
            "generator_cpu_pct_before": gen_pct_before, "generator_cpu_pct_during": gen_pct_during,
            "old_fds_t0": old_at_t0.as_ref().map(|s| s.fds),
            "new_fds_at_old_exit": new_at_exit.as_ref().map(|s| s.fds),
            "new_fds_during_end": new_at_during_end.as_ref().map(|s| s.fds),
        }),
        json!({
            "all_histograms": hists.iter().map(|(k, v)| (k.clone(), crate::report::quantiles_json(v))).collect::<serde_json::Map<_, _>>(),
            "handed_over": handed_over, "clean": handed_over && clean_clients && !during_cut,
        }),
    ];
    let mut summary = serde_json::Map::new();
    for part in parts {
        if let serde_json::Value::Object(m) = part {
            summary.extend(m);
        }
    }
    let line = serde_json::to_string(&summary).expect("json");
    println!("SUMMARY {line}");
    std::fs::write(file("summary.json"), format!("{line}\n")).map_err(|e| e.to_string())?;
    Ok(crate::exit_code(
        handed_over && clean_clients && !during_cut,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_lines_give_their_numbers() {
        let old = "2026-11-30T05:00:00.000Z INFO switchboard_engine::handover: handed over to pid 42 \
                   (version 0.1.0): 2500 sessions, 10000 tabs, 3 listeners, format 1; no connection \
                   was accepted for 812 ms";
        assert_eq!(
            number_after(old, "no connection was accepted for"),
            Some(812)
        );
        let new = "took over from pid 41: 2500 sessions, 10000 tabs, 655 ms after asking";
        assert_eq!(number_before(new, " ms after asking"), Some(655));
        assert_eq!(number_after("nothing here", "accepted for"), None);
        assert_eq!(number_before("x ms after asking", " ms after asking"), None);
    }

    #[test]
    fn windows_cut_samples_by_due_time() {
        let w = WorkerResult {
            e2e_samples: vec![(10, 15), (20, 1020), (30, 31), (99, 100)],
            send_samples: vec![(10, 11), (25, 40)],
            ..Default::default()
        };
        let wins = windows(&[w], &[("a", 0, 20), ("b", 20, 30), ("c", 30, 40)]);
        assert_eq!(
            wins.iter().map(|x| x.e2e.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert_eq!(wins[1].e2e.max(), wins[1].e2e.highest_equivalent(1000));
        assert_eq!(
            wins.iter().map(|x| x.send.len()).collect::<Vec<_>>(),
            [1, 1, 0]
        );
    }

    #[test]
    fn gauges_sum_over_shards() {
        let text = "# HELP switchboard_tabs Tabs\nswitchboard_tabs{shard=\"0\"} 198\n\
                    switchboard_tabs{shard=\"1\"} 202\nswitchboard_tabs_x 5\n";
        assert_eq!(gauge_sum(text, "switchboard_tabs{"), 400);
    }

    #[test]
    fn netstat_deltas_subtract() {
        let a: BTreeMap<String, u64> = [("ListenDrops".to_string(), 5)].into();
        let b: BTreeMap<String, u64> = [("ListenDrops".to_string(), 9)].into();
        assert_eq!(netstat_delta(&a, &b)["ListenDrops"], 4);
    }
}
