//! Command-line options of `switchboard-bench run` (and its workers): one
//! table drives parsing and `--help`, like the server's settings.

use std::collections::HashMap;
use std::net::SocketAddr;

/// One option: its name (without `--`), default (as typed) and help line.
pub struct Spec {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Option values as typed, by name, with the table's defaults for the
/// ones not given.
pub struct Flags {
    specs: &'static [Spec],
    values: HashMap<&'static str, String>,
}

impl Flags {
    /// Parses `--name value` / `--name=value` against `specs`; returns the
    /// values and the flags the table does not know (the caller's own).
    pub fn parse(
        specs: &'static [Spec],
        args: &[String],
    ) -> Result<(Flags, HashMap<String, String>), String> {
        let mut values: HashMap<&'static str, String> = HashMap::new();
        let mut extra = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let Some(flag) = args[i].strip_prefix("--") else {
                return Err(format!("unexpected argument {:?}", args[i]));
            };
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("--{flag} needs a value"))?
                }
            };
            match specs.iter().find(|s| s.name == flag) {
                Some(spec) => {
                    values.insert(spec.name, value);
                }
                None => {
                    extra.insert(flag, value);
                }
            }
            i += 1;
        }
        Ok((Flags { specs, values }, extra))
    }

    /// The value of `name` (a name of the table), or its default.
    pub fn get(&self, name: &str) -> String {
        self.values.get(name).cloned().unwrap_or_else(|| {
            self.specs
                .iter()
                .find(|s| s.name == name)
                .expect("a name of the option table")
                .default
                .to_string()
        })
    }

    /// The value of `name` parsed as a number.
    pub fn num<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        let v = self.get(name);
        v.parse()
            .map_err(|_| format!("--{name}: {v:?} is not a valid number"))
    }
}

const SPECS: &[Spec] = &[
    Spec { name: "addr", default: "127.0.0.1:8080", help: "server's client listener" },
    Spec { name: "users", default: "1000", help: "users in the graph (ids 1..=users)" },
    Spec { name: "friends", default: "8", help: "friends per user (even)" },
    Spec { name: "seed", default: "1", help: "graph and choice seed (same seed, same graph)" },
    Spec { name: "lattice", default: "0", help: "1: friends by id (i±1 … i±friends/2) instead of a seeded random ring" },
    Spec { name: "secret", default: "bench-secret", help: "token secret (the server's SWITCHBOARD_TOKEN_SECRET)" },
    Spec { name: "tabs", default: "1", help: "tabs per user" },
    Spec { name: "live-users", default: "all", help: "users (lowest ids first) whose tabs long-poll; the others' tabs are idle" },
    Spec { name: "live-tabs", default: "all", help: "long-polling tabs per live user (the rest idle)" },
    Spec { name: "poll-wait-s", default: "25", help: "long-poll wait" },
    Spec { name: "idle-poll-s", default: "30", help: "an idle tab polls (wait=0) this often, to stay attached" },
    Spec { name: "idle-conns", default: "32", help: "keep-alive connections per worker shared by idle tabs" },
    Spec { name: "rate", default: "0", help: "messages/s offered, all workers together (open loop)" },
    Spec { name: "typing-rate", default: "0", help: "typing calls/s offered" },
    Spec { name: "presence-rate", default: "0", help: "presence changes/s offered (online <-> away)" },
    Spec { name: "action-conns", default: "512", help: "most keep-alive connections per worker for sends/typing/presence; a slot finding none is missed" },
    Spec { name: "text-bytes", default: "32", help: "message text length (a stamp, padded)" },
    Spec { name: "jsonp-share", default: "0.3", help: "share of requests made as JSONP (callback=)" },
    Spec { name: "ramp-s", default: "10", help: "tabs connect spread over this long" },
    Spec { name: "warmup-s", default: "2", help: "traffic runs this long before measuring" },
    Spec { name: "measure-ramp", default: "0", help: "1: the measured phase starts with the ramp (a connect storm) and lasts ramp + warm-up + duration" },
    Spec { name: "duration-s", default: "20", help: "measured phase" },
    Spec { name: "drain-s", default: "3", help: "after the last send, polls go on this long to collect deliveries" },
    Spec { name: "workers", default: "1", help: "worker processes (each under 20000 fds)" },
    Spec { name: "server-pid", default: "none", help: "server pid: CPU seconds and RSS from /proc" },
    Spec { name: "out", default: "bench-out", help: "folder for .hgrm files and summary.json" },
    Spec { name: "label", default: "run", help: "name of the run in the outputs" },
];

pub fn help() -> String {
    help_of(SPECS)
}

/// `--help` lines of one option table.
pub fn help_of(specs: &[Spec]) -> String {
    let mut s = String::new();
    for spec in specs {
        s.push_str(&format!(
            "  --{:<16} {} (default: {})\n",
            spec.name, spec.help, spec.default
        ));
    }
    s
}

/// Parsed options.
#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    pub users: usize,
    pub friends: usize,
    pub seed: u64,
    /// Friends by id rather than on a shuffled ring (graph.rs).
    pub lattice: bool,
    pub secret: String,
    pub tabs: usize,
    pub live_users: usize,
    pub live_tabs: usize,
    pub poll_wait_s: u64,
    pub idle_poll_s: f64,
    pub idle_conns: usize,
    pub rate: f64,
    pub typing_rate: f64,
    pub presence_rate: f64,
    pub action_conns: usize,
    pub text_bytes: usize,
    pub jsonp_share: f64,
    pub ramp_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// The measured phase starts with the ramp.
    pub measure_ramp: bool,
    pub drain_s: f64,
    pub workers: usize,
    pub server_pid: Option<u32>,
    pub out: String,
    pub label: String,
}

impl Options {
    /// Parses `--name value` / `--name=value`; returns the options and the
    /// flags this table does not know (the caller's own).
    pub fn parse(args: &[String]) -> Result<(Options, HashMap<String, String>), String> {
        let (flags, extra) = Flags::parse(SPECS, args)?;
        let get = |n: &str| flags.get(n);
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("--{name}: {v:?} is not a valid number"))
        }
        let users: usize = num("users", get("users"))?;
        let tabs: usize = num("tabs", get("tabs"))?;
        let live_users = match get("live-users").as_str() {
            "all" => users,
            v => num("live-users", v.to_string())?,
        };
        let live_tabs = match get("live-tabs").as_str() {
            "all" => tabs,
            v => num("live-tabs", v.to_string())?,
        };
        let server_pid = match get("server-pid").as_str() {
            "none" => None,
            v => Some(num("server-pid", v.to_string())?),
        };
        let o = Options {
            addr: get("addr")
                .parse()
                .map_err(|_| "--addr: not an address like 127.0.0.1:8080".to_string())?,
            users,
            friends: num("friends", get("friends"))?,
            seed: num("seed", get("seed"))?,
            lattice: num::<u8>("lattice", get("lattice"))? == 1,
            secret: get("secret"),
            tabs,
            live_users: live_users.min(users),
            live_tabs: live_tabs.min(tabs),
            poll_wait_s: num("poll-wait-s", get("poll-wait-s"))?,
            idle_poll_s: num("idle-poll-s", get("idle-poll-s"))?,
            idle_conns: num("idle-conns", get("idle-conns"))?,
            rate: num("rate", get("rate"))?,
            typing_rate: num("typing-rate", get("typing-rate"))?,
            presence_rate: num("presence-rate", get("presence-rate"))?,
            action_conns: num("action-conns", get("action-conns"))?,
            text_bytes: num("text-bytes", get("text-bytes"))?,
            jsonp_share: num("jsonp-share", get("jsonp-share"))?,
            ramp_s: num("ramp-s", get("ramp-s"))?,
            warmup_s: num("warmup-s", get("warmup-s"))?,
            duration_s: num("duration-s", get("duration-s"))?,
            drain_s: num("drain-s", get("drain-s"))?,
            measure_ramp: num::<u8>("measure-ramp", get("measure-ramp"))? == 1,
            workers: num("workers", get("workers"))?,
            server_pid,
            out: get("out"),
            label: get("label"),
        };
        if o.tabs == 0 || o.tabs > 32 {
            return Err("--tabs must be in 1..=32 (the server keeps 32 per user)".into());
        }
        if o.workers == 0 || o.workers > 64 {
            return Err("--workers must be in 1..=64".into());
        }
        if o.poll_wait_s > 60 {
            return Err("--poll-wait-s must be at most 60".into());
        }
        if o.text_bytes < 24 || o.text_bytes > 4000 {
            return Err("--text-bytes must be in 24..=4000".into());
        }
        if o.idle_conns == 0 || o.action_conns == 0 {
            return Err("--idle-conns and --action-conns must be positive".into());
        }
        if !(0.0..=1.0).contains(&o.jsonp_share) {
            return Err("--jsonp-share must be in 0..=1".into());
        }
        Ok((o, extra))
    }

    /// Long-polling tabs of user `u` (the first `live_tabs` of a live user).
    pub fn live_tabs_of(&self, user: u64) -> usize {
        if (user as usize) <= self.live_users {
            self.live_tabs
        } else {
            0
        }
    }
}
