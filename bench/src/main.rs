//! `switchboard-bench`: a load generator for Switchboard that behaves like
//! browsers (HTTP/1.1 keep-alive GETs with query strings, a share of them
//! JSONP, one long-poll per tab), measures with hdrhistogram and checks
//! every message reached every live tab exactly once.
//!
//! `run` is the coordinator: it forks `--workers` copies of itself (each
//! under the per-process fd limit, each a share of the users), samples the
//! server's CPU and RSS from /proc around the measured phase, merges the
//! workers' results and reports.

mod fsync;
mod graph;
mod handover;
mod http;
mod options;
mod peer;
mod procstat;
mod report;
mod worker;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use options::Options;

const USAGE: &str = "\
switchboard-bench: drive a running Switchboard server like browsers do, and measure it.

Usage:
  switchboard-bench graph --users U --friends K [--seed S | --lattice 1] --out dir.json
        write the synthetic graph as the server's directory file (SWITCHBOARD_DIRECTORY);
        with --format piefxis [--xmpp-domain localhost --password pw], as users and
        rosters for `ejabberdctl import_piefxis` (bench/ejabberd/)
  switchboard-bench run [OPTIONS]
        run a load: ramp (connects), warm-up, measured phase, drain; then the table,
        a SUMMARY JSON line and one .hgrm file per histogram in --out.
        Exits 1 when a message was lost or duplicated.

Options of run (the graph options must match the server's directory file):
";

const PEER_USAGE: &str = "
  switchboard-bench peer [OPTIONS]
        issue 11's workload: one tab per user with a poll connection and a send
        connection, open-loop messages to random friends, against Switchboard (JSONP)
        or ejabberd (BOSH); server and generator CPU per message and per request,
        latency, RSS per user. Exits 1 when a message was lost or duplicated.
        bench/peer.sh runs both servers back to back.

Options of peer:
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{USAGE}{}{PEER_USAGE}{}{}{}",
            options::help(),
            peer::help(),
            handover::USAGE,
            fsync::USAGE
        );
        return ExitCode::SUCCESS;
    }
    let result = match args[0].as_str() {
        "graph" => graph_cmd(&args[1..]),
        "run" => run_cmd(&args[1..]),
        "worker" => worker_cmd(&args[1..]),
        "peer" => peer::coordinator_cmd(&args[1..]),
        "peer-worker" => peer::worker_cmd(&args[1..]),
        "handover" => handover::cmd(&args[1..]),
        "fsync" => fsync::cmd(&args[1..]),
        other => Err(format!("unknown command {other:?} (see --help)")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchboard-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn graph_cmd(args: &[String]) -> Result<ExitCode, String> {
    let (o, extra) = Options::parse(args)?;
    let out = extra.get("out").cloned().unwrap_or_else(|| o.out.clone());
    let g = graph::Graph::new(o.users, o.friends, o.seed, o.lattice)?;
    let text = match extra.get("format").map_or("directory", |f| f.as_str()) {
        "directory" => g.directory_json(),
        "piefxis" => g.piefxis(
            extra.get("xmpp-domain").map_or("localhost", |d| d.as_str()),
            extra.get("password").map_or("pw", |p| p.as_str()),
        ),
        other => return Err(format!("--format {other:?}: directory or piefxis")),
    };
    std::fs::write(&out, text).map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "wrote {out}: {} users, {} friends each, {}",
        o.users,
        o.friends,
        if o.lattice {
            "lattice".to_string()
        } else {
            format!("seed {}", o.seed)
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn worker_cmd(args: &[String]) -> Result<ExitCode, String> {
    let (o, extra) = Options::parse(args)?;
    let index: usize = extra
        .get("index")
        .and_then(|v| v.parse().ok())
        .ok_or("worker needs --index")?;
    let start: u64 = extra
        .get("start-unix-ms")
        .and_then(|v| v.parse().ok())
        .ok_or("worker needs --start-unix-ms")?;
    let result_file = extra.get("result").ok_or("worker needs --result")?;
    let samples = extra.get("samples").is_some_and(|v| v == "1");
    let r = worker::run(o, index, start, samples)?;
    let text = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
    std::fs::write(result_file, text).map_err(|e| format!("{result_file}: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn run_cmd(args: &[String]) -> Result<ExitCode, String> {
    let (o, extra) = Options::parse(args)?;
    if let Some(k) = extra.keys().next() {
        return Err(format!("unknown option --{k} (see --help)"));
    }
    // Fail early on a bad graph shape, before forking.
    graph::Graph::new(o.users, o.friends, o.seed, o.lattice)?;
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out))?;
    let epoch = Instant::now();
    // Workers start together, a moment from now (they build the graph first).
    let lead_ms = 1000 + (o.users as u64 * o.friends as u64) / 20_000;
    let start_unix_ms = worker::now_us() / 1000 + lead_ms;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for i in 0..o.workers {
        let result = format!("{}/.worker-{}-{}.json", o.out, o.label, i);
        let _ = std::fs::remove_file(&result);
        let child = Command::new(&exe)
            .arg("worker")
            .args(args)
            .args(["--index", &i.to_string()])
            .args(["--start-unix-ms", &start_unix_ms.to_string()])
            .args(["--result", &result])
            .spawn()
            .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        children.push((child, result));
    }
    let sched = worker::Schedule::new(&o, start_unix_ms);
    let mut before = None;
    let mut after = None;
    if let Some(pid) = o.server_pid {
        std::thread::sleep(sched.measure_from.saturating_duration_since(Instant::now()));
        before = procstat::sample(pid, epoch);
        std::thread::sleep(sched.measure_to.saturating_duration_since(Instant::now()));
        after = procstat::sample(pid, epoch);
        if before.is_none() || after.is_none() {
            eprintln!("switchboard-bench: cannot read /proc/{pid}: no server figures");
        }
    }
    let workers: Vec<worker::WorkerResult> = collect_workers(children)?;
    let run = report::Run {
        o,
        workers,
        server_before: before,
        server_after: after,
        bench_cpu_s: procstat::children_cpu_s(),
    };
    let clean = report::report(&run)?;
    Ok(exit_code(clean))
}

/// A report's exit code (1: it found a failure), after a moment for the
/// output to reach a pipe.
pub(crate) fn exit_code(clean: bool) -> ExitCode {
    std::thread::sleep(Duration::from_millis(10));
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Waits for every worker process and reads the result file each wrote
/// (then removes it); an error if one failed or its result cannot be
/// read. Shared by `run` and `peer`.
pub(crate) fn collect_workers<T: serde::de::DeserializeOwned>(
    children: Vec<(std::process::Child, String)>,
) -> Result<Vec<T>, String> {
    let mut workers = Vec::new();
    let mut failed = false;
    for (mut child, result) in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            eprintln!("switchboard-bench: a worker failed: {status}");
            failed = true;
            continue;
        }
        let text = std::fs::read(&result).map_err(|e| format!("{result}: {e}"))?;
        let r: T = serde_json::from_slice(&text).map_err(|e| format!("{result}: {e}"))?;
        let _ = std::fs::remove_file(&result);
        workers.push(r);
    }
    if failed {
        return Err("a worker failed; no report".into());
    }
    Ok(workers)
}
