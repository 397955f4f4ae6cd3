//! `switchboard-bench peer`: the workload of issue 11, the same against
//! Switchboard (JSONP) and ejabberd (BOSH), so the two servers can be
//! compared on it back to back (bench/peer.sh).
//!
//! - **Users**: `--users` (1000), friends on the ring lattice (user i ↔
//!   i±1 … i±friends/2, 10 friends each): the server's directory file
//!   (`graph --lattice 1`) or ejabberd's users and rosters (`graph
//!   --lattice 1 --format piefxis`).
//! - **One browser tab per user, two keep-alive connections**: the *poll*
//!   connection always holds a long-poll (JSONP `/poll?wait=25`, or an
//!   empty BOSH body with `wait=60 hold=1`), re-issued as soon as it
//!   returns; the *send* connection carries one send at a time, later
//!   sends wait in the tab's queue (bounded: `SEND_QUEUE_MAX`).
//! - **Open loop**: `--rate` messages/s all workers together, each slot a
//!   random user of the worker and a random friend as recipient. A slot
//!   never waits: it joins the sender's queue. Latency counts from the
//!   slot's due time to the moment the recipient's poll (or any answer to
//!   the recipient, in BOSH) returns the message: queueing in the client,
//!   a stalled server or a stalled generator all show, none hides.
//! - **JSONP**: every Switchboard request carries a `callback` unique in the
//!   run (a page's script loader names each one afresh).
//! - **Phases**: connects spread over `--ramp-s`, traffic, `--warmup-s`,
//!   the measured window of `--duration-s` (server CPU and the workers'
//!   CPU from `/proc/PID/stat` at its two ends), then sends settle and
//!   polls drain for `--drain-s`.
//! - **Delivery check**: every acknowledged message reaches its recipient
//!   exactly once; on Switchboard the sender's tab also gets its own
//!   message back once (its poll learns of what it sent, as the
//!   protocol's other tabs do); ejabberd sends nothing back.
//! - `--rate 0` is the idle point: held polls only, the server's share of
//!   a core.

mod bosh;
mod client;
mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::time::Instant;

use crate::graph::Graph;
use crate::options::{help_of, Flags, Spec};
use crate::procstat;
use crate::worker::{now_us, Schedule};

/// The options of `peer`, one table for parsing and `--help`.
const SPECS: &[Spec] = &[
    Spec {
        name: "proto",
        default: "jsonp",
        help: "jsonp (Switchboard) or bosh (ejabberd, XEP-0124/0206)",
    },
    Spec {
        name: "addr",
        default: "127.0.0.1:8080",
        help: "the server's client listener (Switchboard) or BOSH listener (ejabberd)",
    },
    Spec {
        name: "users",
        default: "1000",
        help: "users (ids 1..=users), one tab each",
    },
    Spec {
        name: "friends",
        default: "10",
        help: "friends per user (even)",
    },
    Spec {
        name: "lattice",
        default: "1",
        help: "1: friends by id, i±1 … i±friends/2 (issue 11); 0: a seeded random ring",
    },
    Spec {
        name: "seed",
        default: "1",
        help: "seed of the choices (and of the graph with --lattice 0)",
    },
    Spec {
        name: "rate",
        default: "1000",
        help: "messages/s offered, all workers together (open loop); 0: idle",
    },
    Spec {
        name: "wait-s",
        default: "auto",
        help: "long-poll wait: auto is 25 (JSONP) or 60 (BOSH)",
    },
    Spec {
        name: "text-bytes",
        default: "32",
        help: "message text length (a stamp, padded)",
    },
    Spec {
        name: "ramp-s",
        default: "10",
        help: "users connect spread over this long",
    },
    Spec {
        name: "warmup-s",
        default: "5",
        help: "traffic runs this long before the window",
    },
    Spec {
        name: "duration-s",
        default: "60",
        help: "the measured window",
    },
    Spec {
        name: "drain-s",
        default: "3",
        help: "after the last send settles, polls go on this long",
    },
    Spec {
        name: "workers",
        default: "1",
        help: "worker processes (each one thread; 2 connections per user)",
    },
    Spec {
        name: "server-pid",
        default: "none",
        help: "server pid (Switchboard, or ejabberd's beam.smp): CPU and RSS from /proc",
    },
    Spec {
        name: "secret",
        default: "bench-secret",
        help: "JSONP: the token secret (SWITCHBOARD_TOKEN_SECRET)",
    },
    Spec {
        name: "xmpp-domain",
        default: "localhost",
        help: "BOSH: the XMPP domain (users are userID@domain)",
    },
    Spec {
        name: "bosh-path",
        default: "/bosh",
        help: "BOSH: the path of the BOSH handler",
    },
    Spec {
        name: "password",
        default: "pw",
        help: "BOSH: every user's password (as imported)",
    },
    Spec {
        name: "out",
        default: "bench-out",
        help: "folder for .hgrm files and summary.json",
    },
    Spec {
        name: "label",
        default: "peer",
        help: "name of the run in the outputs",
    },
];

pub fn help() -> String {
    help_of(SPECS)
}

/// Which server's protocol the tabs speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Switchboard: HTTP GETs, JSONP answers.
    Jsonp,
    /// ejabberd: BOSH POSTs of XML bodies.
    Bosh,
}

/// Parsed options of `peer`.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub users: usize,
    pub friends: usize,
    pub lattice: bool,
    pub seed: u64,
    /// Messages/s offered by all workers together.
    pub rate: f64,
    /// Long-poll wait (JSONP `wait`, BOSH `wait`).
    pub wait_s: u64,
    pub text_bytes: usize,
    pub ramp_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub workers: usize,
    pub server_pid: Option<u32>,
    pub secret: String,
    pub xmpp_domain: String,
    pub bosh_path: String,
    pub password: String,
    pub out: String,
    pub label: String,
}

impl PeerOptions {
    /// Parses the table's flags; returns the flags it does not know (the
    /// worker's own).
    pub fn parse(args: &[String]) -> Result<(PeerOptions, HashMap<String, String>), String> {
        let (f, extra) = Flags::parse(SPECS, args)?;
        let proto = match f.get("proto").as_str() {
            "jsonp" => Proto::Jsonp,
            "bosh" => Proto::Bosh,
            other => return Err(format!("--proto {other:?}: jsonp or bosh")),
        };
        let wait_s = match (f.get("wait-s").as_str(), proto) {
            ("auto", Proto::Jsonp) => 25,
            ("auto", Proto::Bosh) => 60,
            _ => f.num("wait-s")?,
        };
        let o = PeerOptions {
            proto,
            addr: f
                .get("addr")
                .parse()
                .map_err(|_| "--addr: not an address like 127.0.0.1:8080".to_string())?,
            users: f.num("users")?,
            friends: f.num("friends")?,
            lattice: f.num::<u8>("lattice")? == 1,
            seed: f.num("seed")?,
            rate: f.num("rate")?,
            wait_s,
            text_bytes: f.num("text-bytes")?,
            ramp_s: f.num("ramp-s")?,
            warmup_s: f.num("warmup-s")?,
            duration_s: f.num("duration-s")?,
            drain_s: f.num("drain-s")?,
            workers: f.num("workers")?,
            server_pid: match f.get("server-pid").as_str() {
                "none" => None,
                _ => Some(f.num("server-pid")?),
            },
            secret: f.get("secret"),
            xmpp_domain: f.get("xmpp-domain"),
            bosh_path: f.get("bosh-path"),
            password: f.get("password"),
            out: f.get("out"),
            label: f.get("label"),
        };
        if o.workers == 0 || o.workers > 64 {
            return Err("--workers must be in 1..=64".into());
        }
        if o.users > 9_000 * o.workers {
            return Err("--users: at most 9000 per worker (2 connections each, 20,000 fds)".into());
        }
        if o.wait_s == 0 || o.wait_s > 60 {
            return Err("--wait-s must be in 1..=60".into());
        }
        if o.text_bytes < 24 || o.text_bytes > 4000 {
            return Err("--text-bytes must be in 24..=4000".into());
        }
        if !(o.rate >= 0.0 && o.duration_s > 0.0) {
            return Err("--rate must be at least 0 and --duration-s positive".into());
        }
        Ok((o, extra))
    }

    pub fn graph(&self) -> Result<Graph, String> {
        Graph::new(self.users, self.friends, self.seed, self.lattice)
    }

    pub fn schedule(&self, start_unix_ms: u64) -> Schedule {
        Schedule::of_phases(
            start_unix_ms,
            self.ramp_s,
            self.warmup_s,
            self.duration_s,
            false,
        )
    }
}

/// `peer-worker --index i --start-unix-ms T --result FILE ...`: one worker.
pub fn worker_cmd(args: &[String]) -> Result<ExitCode, String> {
    let (o, extra) = PeerOptions::parse(args)?;
    let num = |k: &str| -> Result<u64, String> {
        extra
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("peer-worker needs --{k}"))
    };
    let index = num("index")? as usize;
    let start = num("start-unix-ms")?;
    let result_file = extra.get("result").ok_or("peer-worker needs --result")?;
    let r = client::run(o, index, start)?;
    let text = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
    std::fs::write(result_file, text).map_err(|e| format!("{result_file}: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `peer ...`: forks the workers, samples the server's and the workers'
/// CPU at the two ends of the window, merges and reports. Exit 1 when a
/// message was lost or duplicated.
pub fn coordinator_cmd(args: &[String]) -> Result<ExitCode, String> {
    let (o, extra) = PeerOptions::parse(args)?;
    if let Some(k) = extra.keys().next() {
        return Err(format!("unknown option --{k} (see --help)"));
    }
    o.graph()?;
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out))?;
    let epoch = Instant::now();
    let lead_ms = 1000 + (o.users as u64 * o.friends as u64) / 20_000;
    let start_unix_ms = now_us() / 1000 + lead_ms;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for i in 0..o.workers {
        let result = format!("{}/.peer-worker-{}-{}.json", o.out, o.label, i);
        let _ = std::fs::remove_file(&result);
        let child = Command::new(&exe)
            .arg("peer-worker")
            .args(args)
            .args(["--index", &i.to_string()])
            .args(["--start-unix-ms", &start_unix_ms.to_string()])
            .args(["--result", &result])
            .spawn()
            .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        children.push((child, result));
    }
    let pids: Vec<u32> = children.iter().map(|(c, _)| c.id()).collect();
    // The generator's CPU over the window: every worker and this process.
    let generator_cpu_s = || -> Option<f64> {
        let own = procstat::cpu_s(std::process::id())?;
        pids.iter()
            .map(|&p| procstat::cpu_s(p))
            .sum::<Option<f64>>()
            .map(|w| w + own)
    };
    let sched = o.schedule(start_unix_ms);
    std::thread::sleep(sched.measure_from.saturating_duration_since(Instant::now()));
    let server_before = o.server_pid.and_then(|p| procstat::sample(p, epoch));
    let gen_before = generator_cpu_s();
    let gen_from = Instant::now();
    std::thread::sleep(sched.measure_to.saturating_duration_since(Instant::now()));
    let server_after = o.server_pid.and_then(|p| procstat::sample(p, epoch));
    let gen_after = generator_cpu_s();
    let gen_wall_s = gen_from.elapsed().as_secs_f64();
    if let Some(pid) = o.server_pid {
        if server_before.is_none() || server_after.is_none() {
            eprintln!("switchboard-bench: cannot read /proc/{pid}: no server figures");
        }
    }
    let workers: Vec<client::PeerResult> = crate::collect_workers(children)?;
    let run = report::PeerRun {
        o,
        workers,
        server_before,
        server_after,
        generator_cpu_s: match (gen_before, gen_after) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        generator_wall_s: gen_wall_s,
        measure_from_us: sched.measure_from_us,
    };
    let clean = report::report(&run)?;
    Ok(crate::exit_code(clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<PeerOptions, String> {
        let args: Vec<String> = args.split_whitespace().map(String::from).collect();
        PeerOptions::parse(&args).map(|(o, _)| o)
    }

    #[test]
    fn defaults_are_issue_11s_workload_and_wait_follows_the_protocol() {
        let o = parse("").unwrap();
        assert_eq!(
            (o.proto, o.users, o.friends, o.lattice, o.rate, o.wait_s),
            (Proto::Jsonp, 1000, 10, true, 1000.0, 25)
        );
        assert_eq!((o.warmup_s, o.duration_s), (5.0, 60.0));
        assert_eq!(parse("--proto bosh").unwrap().wait_s, 60);
        assert_eq!(parse("--proto bosh --wait-s 30").unwrap().wait_s, 30);
        assert_eq!(parse("--rate 0").unwrap().rate, 0.0);
    }

    #[test]
    fn bad_options_are_refused() {
        for (args, why) in [
            ("--proto xmpp", "unknown protocol"),
            ("--wait-s 61", "wait above the servers' 60 s"),
            ("--wait-s 0", "no long-poll"),
            ("--workers 0", "no worker"),
            ("--users 9001", "over 20,000 fds in one worker"),
            ("--rate -1", "negative rate"),
            ("--text-bytes 10", "too short for the stamp"),
            ("--addr localhost", "not an address"),
        ] {
            assert!(parse(args).is_err(), "{args}: {why}");
        }
        assert!(parse("--users 9001 --workers 2").is_ok());
    }
}
