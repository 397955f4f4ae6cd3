//! Settings: each is an environment variable `SWITCHBOARD_X_Y` and a flag
//! `--x-y` (the flag wins). One table drives parsing, `--help` and the
//! docs, so they cannot disagree.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cores;
use switchboard_shards::ratelimit::{Kind, Rate, RateLimits};
use switchboard_storage::DirectoryQueries;

/// One setting: its name (the variable without `SWITCHBOARD_`), default
/// and meaning, as `--help` prints it.
struct Spec {
    name: &'static str,
    default: &'static str,
    help: &'static str,
    /// What `--help` shows after the flag: the value's placeholder (`ADDR`,
    /// `N`, `MS`). In brackets (`[on|off]`) for an on/off setting, whose
    /// flag may stand alone and then means on: `--demo` is `--demo on`
    /// when nothing or another flag follows it.
    value: &'static str,
}

impl Spec {
    /// Whether the flag may stand alone (`--demo` for `--demo on`).
    fn is_switch(&self) -> bool {
        self.value.starts_with('[')
    }
}

const SPECS: &[Spec] = &[
    Spec { name: "LISTEN", default: "127.0.0.1:8080", help: "client listener address (port 0: pick a free port), or off (only with TLS_LISTEN)", value: "ADDR" },
    Spec { name: "TLS_LISTEN", default: "unset (no TLS)", help: "TLS client listener address (port 0: pick a free port); needs TLS_CERT and TLS_KEY", value: "ADDR" },
    Spec { name: "TLS_CERT", default: "unset", help: "PEM certificate chain, server certificate first (re-read on SIGHUP)", value: "FILE" },
    Spec { name: "TLS_KEY", default: "unset", help: "PEM private key: RSA, ECDSA P-256/P-384 or Ed25519, as PKCS#8, PKCS#1 (RSA) or SEC1 (ECDSA) (re-read on SIGHUP)", value: "FILE" },
    Spec { name: "TLS_MODE", default: "optional", help: "optional: both listeners serve; required: the plain listener answers 308 (Permanent Redirect: same method and body) to https and TLS answers carry Strict-Transport-Security", value: "MODE" },
    Spec { name: "ADMIN_LISTEN", default: "127.0.0.1:8081", help: "admin listener address (keep it on loopback; elsewhere ADMIN_TOKEN is required). It answers only requests whose Host is this address (or localhost:PORT on loopback) and that carry neither Origin nor Sec-Fetch-Site (browsers are refused)", value: "ADDR" },
    Spec { name: "SHARDS", default: "all cores (the process's affinity mask), or one per SHARD_CORES", help: "executors, one pinned per core; a user lives on shard hash(id) % SHARDS. More than the cores this process may run on is refused (see SHARDS_OVERCOMMIT)", value: "N" },
    Spec { name: "SHARD_CORES", default: "the process's allowed cores in order", help: "cores to pin the shards to, like 1-3,5 (shard i gets the i-th listed core): each in the process's affinity mask, none twice, as many as SHARDS; `switchboard tune` suggests one", value: "LIST" },
    Spec { name: "CONNECTIONS_MOVE", default: "on", help: "a plain client connection whose calls keep going to users homed on one other shard moves there (its socket handed over between two requests), so its calls stop crossing the mesh", value: "[on|off]" },
    Spec { name: "SHARDS_OVERCOMMIT", default: "off", help: "allow more shards than cores: shard i takes the (i mod n)-th allowed core and shards sharing a core wait for each other's turns (development machines only)", value: "[on|off]" },
    Spec { name: "DATA_DIR", default: "./data", help: "embedded store's folder (history, UI state, read marks, token secret)", value: "DIR" },
    Spec { name: "DIRECTORY", default: "built-in demo users", help: "embedded directory: JSON file {\"users\":[{\"id\":1,\"name\":\"alice\"}],\"friendships\":[[1,2]]}", value: "FILE" },
    Spec { name: "TOKEN_SECRET", default: "random, kept in DATA_DIR/token_secret", help: "HMAC-SHA256 secret shared with the web app", value: "SECRET" },
    Spec { name: "ADMIN_TOKEN", default: "unset (no auth; only allowed on loopback)", help: "bearer token the admin listener requires (Authorization: Bearer TOKEN); required, and at least 32 bytes (e.g. openssl rand -hex 32), when ADMIN_LISTEN is not on loopback; shorter on loopback is a warning. A wrong token gets 401 and the connection closed", value: "TOKEN" },
    Spec { name: "PRESENCE_GRACE_MS", default: "10000", help: "offline grace after a user's last tab went", value: "MS" },
    Spec { name: "TAB_TIMEOUT_MS", default: "60000", help: "a tab with no poll outstanding this long is detached", value: "MS" },
    Spec { name: "ROSTER_REFRESH_MS", default: "300000", help: "rosters are re-read from the directory this often", value: "MS" },
    Spec { name: "STORAGE_TIMEOUT_MS", default: "5000", help: "deadline of every storage job; past it the call answers unavailable (100..=30000; it bounds a stop too: tuning/README.md)", value: "MS" },
    Spec { name: "DB_THREADS", default: "2", help: "blocking storage threads (db-0, db-1, ...)", value: "N" },
    Spec { name: "DB_CORES", default: "unpinned", help: "cores to pin the db-N threads to, like 0,4 or 0-1 (db-i gets the (i mod n)-th); see tuning/README.md", value: "LIST" },
    Spec { name: "CONNECTIONS_MAX", default: "9000", help: "open client connections per shard; more are closed at accept", value: "N" },
    Spec { name: "RATE_LIMITS", default: "on", help: "per-user rate limits (the RATE_* settings): on, or off to lift them all (load tests: bench runs set it)", value: "[on|off]" },
    Spec { name: "RATE_SEND", default: "5/s,burst=30", help: "/send calls per user: RATE/s,burst=N (N at once, then RATE a second), or off; over it: 429 rate_limited", value: "RATE" },
    Spec { name: "RATE_TYPING", default: "4/s,burst=8", help: "/typing calls per user, as RATE_SEND", value: "RATE" },
    Spec { name: "RATE_PRESENCE", default: "2/s,burst=10", help: "/presence calls per user, as RATE_SEND", value: "RATE" },
    Spec { name: "RATE_UI", default: "5/s,burst=20", help: "/ui calls per user, as RATE_SEND", value: "RATE" },
    Spec { name: "RATE_READ", default: "5/s,burst=20", help: "/read calls per user, as RATE_SEND", value: "RATE" },
    Spec { name: "RATE_HISTORY", default: "10/s,burst=30", help: "/history calls per user, as RATE_SEND", value: "RATE" },
    Spec { name: "RATE_CONNECT", default: "2/s,burst=16", help: "/connect calls per user to a live session, as RATE_SEND", value: "RATE" },
    Spec { name: "RATE_POLL", default: "10/s,burst=40", help: "/poll calls per user answered at once (wait=0, or news already there; held polls are not counted), as RATE_SEND", value: "RATE" },
    Spec { name: "CONNECTIONS_PER_ADDRESS_MAX", default: "1000", help: "open client connections from one client address (IPv4 /32, IPv6 /64) per process: each shard admits ceil(this / SHARDS), more are closed at accept (loopback too)", value: "N" },
    Spec { name: "FIRST_BYTE_TIMEOUT_MS", default: "5000", help: "a new connection that sends no byte this long is closed quietly (100 to 75000; between requests the 75 s idle timeout applies)", value: "MS" },
    Spec { name: "ADMIN_CONNECTIONS_MAX", default: "64", help: "open admin connections; more are closed at accept", value: "N" },
    Spec { name: "LOOP_LAG_WARN_MS", default: "500", help: "the watchdog warns, once per episode, when a shard's loop runs this late (a tick that fired or is due that much after its time; 10..=9999: a shard with no tick for 10 s ends the process)", value: "MS" },
    Spec { name: "LOG", default: "info", help: "which records are logged, per module, in env_logger's syntax: a level (off, error, warn, info, debug, trace) and/or MODULE=LEVEL, comma-separated, e.g. warn,switchboard_storage=debug (the longest matching module wins; with no bare level the rest stays at info; dependencies such as rustls are capped at warn unless named)", value: "FILTER" },
    Spec { name: "TRACE_MS", default: "600000", help: "a per-user trace (admin POST /trace) ends by itself this long after it started (1000..=86400000)", value: "MS" },
    Spec { name: "TRACE_BYTES_MAX", default: "16777216", help: "a per-user trace ends when its file (DATA_DIR/traces/user-ID.log) would pass this many bytes (4096..=1073741824)", value: "BYTES" },
    Spec { name: "MYSQL_URL", default: "unset (embedded store)", help: "use MySQL instead of the embedded store: mysql://USER:PASSWORD@HOST:3306/DATABASE (run `switchboard migrate` first)", value: "URL" },
    Spec { name: "MYSQL_POOL_SIZE", default: "2 × cores + 2", help: "pooled MySQL connections, one db-N thread each (at least 2)", value: "N" },
    Spec { name: "MYSQL_CONNECT_TIMEOUT_MS", default: "2000", help: "MySQL TCP connect and handshake timeout (the pool reconnects in the background)", value: "MS" },
    Spec { name: "MYSQL_BATCH_MAX", default: "256", help: "most sends committed together in one transaction (one multi-row INSERT)", value: "N" },
    Spec { name: "MYSQL_BATCH_WAIT_MS", default: "0", help: "longest wait for more sends to join a commit (0–100; never past a deadline)", value: "MS" },
    Spec { name: "MYSQL_TOKEN_SQL", default: "unset (HMAC tokens only)", help: "SQL, one ?: token → user id; tokens not in HMAC form are looked up with it", value: "SQL" },
    Spec { name: "MYSQL_USER_NAME_SQL", default: DirectoryQueries::USER_NAME_SQL_DEFAULT, help: "SQL, one ?: user id → display name (no row: no such user)", value: "SQL" },
    Spec { name: "MYSQL_FRIENDS_SQL", default: DirectoryQueries::FRIENDS_SQL_DEFAULT, help: "SQL, one ?: user id → rows (friend id, friend name)", value: "SQL" },
    Spec { name: "MYSQL_ARE_FRIENDS_SQL", default: DirectoryQueries::ARE_FRIENDS_SQL_DEFAULT, help: "SQL, two ?: a row when the two users are friends (checked at start, used by check-directory)", value: "SQL" },
    Spec { name: "NATS_URL", default: "unset (a single node)", help: "cluster mode (in progress: membership and placement only, see docs/operations.md \"Cluster\"): this node joins the cluster over NATS with JetStream at this URL, e.g. nats://127.0.0.1:4222 (or several, comma-separated: a NATS cluster's servers); needs NODE_ID and MYSQL_URL (the embedded store is refused: a cluster's history lives in MySQL)", value: "URL" },
    Spec { name: "NODE_ID", default: "unset", help: "this node's id in the cluster, unique: 1-32 of A-Z a-z 0-9 _ - (with NATS_URL)", value: "ID" },
    Spec { name: "CLUSTER", default: "switchboard", help: "the cluster's name: its JetStream KV buckets are switchboard_NAME_placement and switchboard_NAME_nodes, so clusters may share a NATS (1-32 of A-Z a-z 0-9 _ -)", value: "NAME" },
    Spec { name: "TAKEOVER", default: "off", help: "take over from the server running on this DATA_DIR (its listening sockets, sessions, tabs, presence), for a deploy that drops nobody; with none running, start as usual (see docs/operations.md)", value: "[on|off]" },
    Spec { name: "DEMO", default: "auto (on with the built-in demo users)", help: "demo mode, on or off (the flag alone: on): serves the chat demo at /demo/ and mints a token for any user at /demo/login (never on a real site)", value: "[on|off|auto]" },
];

/// Parsed settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Client listener (`None`: off, only the TLS listener serves).
    pub listen: Option<SocketAddr>,
    /// TLS: its listener, files and mode (`None`: no TLS).
    pub tls: Option<TlsSettings>,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Executors.
    pub shards: usize,
    /// The core of each shard: shard `i` is pinned to `shard_cores[i]`,
    /// one per shard ([`cores::place`]). Empty from [`Settings::read`],
    /// which leaves the placement to its caller.
    pub shard_cores: Vec<usize>,
    /// Embedded store's folder.
    pub data_dir: PathBuf,
    /// Embedded directory file (`None`: demo users).
    pub directory: Option<PathBuf>,
    /// HMAC secret as configured (`None`: the one in the data dir).
    pub token_secret: Option<String>,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    pub presence_grace_ms: u64,
    pub tab_timeout_ms: u64,
    pub roster_refresh_ms: u64,
    pub storage_timeout_ms: u64,
    pub db_threads: usize,
    /// Cores the db threads are pinned to (`None`: not pinned).
    pub db_cores: Option<Vec<usize>>,
    /// Open client connections per shard.
    pub connections_max: usize,
    /// Per-user rate limits, one per kind of call.
    pub rate_limits: RateLimits,
    /// Open client connections from one client address, per process (each
    /// shard admits its share, rounded up).
    pub connections_per_address_max: usize,
    /// How long a new connection may stay silent before its first byte.
    pub first_byte_timeout_ms: u64,
    /// Open admin connections.
    pub admin_connections_max: usize,
    /// A shard whose tick fires this much late is lagging (the watchdog
    /// warns once per episode).
    pub loop_lag_warn_ms: u64,
    /// Which records are logged, per module (`SWITCHBOARD_LOG`).
    pub log: crate::logger::Filter,
    /// A per-user trace ends this long after it started.
    pub trace_ms: u64,
    /// A per-user trace ends when its file would pass this many bytes.
    pub trace_bytes_max: u64,
    /// MySQL URL (`None`: the embedded store).
    pub mysql_url: Option<String>,
    /// Pooled MySQL connections (= its db threads).
    pub mysql_pool_size: usize,
    pub mysql_connect_timeout_ms: u64,
    /// Most sends per MySQL commit.
    pub mysql_batch_max: usize,
    pub mysql_batch_wait_ms: u64,
    /// The MySQL directory queries.
    pub mysql_queries: DirectoryQueries,
    /// Plain client connections move to the shard their users are homed
    /// on (`CONNECTIONS_MOVE`).
    pub connections_move: bool,
    /// Demo mode: the demo pages and `/demo/login` are served.
    pub demo: bool,
    /// Take over from the server running on this data folder
    /// (`TAKEOVER`, `serve --takeover`; `handover.rs`).
    pub takeover: bool,
    /// Cluster mode (`NATS_URL`; `None`: a single node).
    pub cluster: Option<crate::cluster::ClusterSettings>,
}

/// The cluster settings: `None` without `NATS_URL`; with it, `NODE_ID`
/// is required and MySQL too (a cluster's history, UI state and read
/// marks live in MySQL, which every node reaches).
fn cluster_settings(
    nats_url: Option<String>,
    node: Option<String>,
    cluster: Option<String>,
    mysql: bool,
) -> Result<Option<crate::cluster::ClusterSettings>, String> {
    use crate::cluster::placement::valid_id;
    let Some(nats_url) = nats_url else {
        if node.is_some() {
            return Err("SWITCHBOARD_NODE_ID is set without SWITCHBOARD_NATS_URL: set both for cluster mode, or neither".into());
        }
        return Ok(None);
    };
    let servers: Vec<&str> = nats_url.split(',').map(str::trim).collect();
    if servers.iter().any(|u| {
        !(u.starts_with("nats://") || u.starts_with("tls://")) || u.len() <= "nats://".len()
    }) {
        return Err(format!(
            "SWITCHBOARD_NATS_URL must be nats://HOST:PORT (or tls://), or several \
             comma-separated, not {nats_url:?}"
        ));
    }
    let Some(node) = node else {
        return Err("SWITCHBOARD_NATS_URL (cluster mode) needs SWITCHBOARD_NODE_ID, a name unique in the cluster".into());
    };
    if !valid_id(&node) {
        return Err(format!(
            "SWITCHBOARD_NODE_ID {node:?} must be 1-32 of A-Z a-z 0-9 _ -"
        ));
    }
    let cluster = cluster.unwrap_or_else(|| "switchboard".into());
    if !valid_id(&cluster) {
        return Err(format!(
            "SWITCHBOARD_CLUSTER {cluster:?} must be 1-32 of A-Z a-z 0-9 _ -"
        ));
    }
    if !mysql {
        return Err("SWITCHBOARD_NATS_URL (cluster mode) needs the MySQL store (SWITCHBOARD_MYSQL_URL): the embedded store keeps history on one node's disk, where the other nodes cannot reach it".into());
    }
    Ok(Some(crate::cluster::ClusterSettings {
        nats_url,
        node,
        cluster,
    }))
}

/// The TLS listener's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The TLS client listener.
    pub listen: SocketAddr,
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
    /// Whether plain HTTP is still served.
    pub mode: TlsMode,
}

/// `SWITCHBOARD_TLS_MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Both listeners serve.
    Optional,
    /// The plain listener (if on) answers every request `308` to https;
    /// TLS answers carry `Strict-Transport-Security`.
    Required,
}

/// The `--help` text for the settings.
pub fn help() -> String {
    let mut s = String::new();
    for spec in SPECS {
        let flag = format!(
            "--{} {}",
            spec.name.to_ascii_lowercase().replace('_', "-"),
            spec.value
        );
        s.push_str(&format!(
            "  {flag:<34} SWITCHBOARD_{}\n      {} (default: {})\n",
            spec.name, spec.help, spec.default
        ));
    }
    s
}

impl Settings {
    /// Reads settings from `args` (flags, `--name value` or `--name=value`;
    /// an on/off flag alone means on) over `env` (variables), and places
    /// the shards on the cores this process may run on
    /// ([`cores::place`]). Unknown flags are errors.
    pub fn parse(args: &[String], env: &HashMap<String, String>) -> Result<Settings, String> {
        let (mut settings, ask) = Settings::read(args, env)?;
        settings.shard_cores = cores::place(&ask, settings.shards, &cores::allowed())?;
        Ok(settings)
    }

    /// Reads and checks settings as [`Settings::parse`] does, but leaves
    /// the shards unplaced (`shard_cores` empty) and returns what was
    /// asked of their placement: `switchboard tune` judges it instead of
    /// refusing it.
    pub fn read(
        args: &[String],
        env: &HashMap<String, String>,
    ) -> Result<(Settings, cores::Ask), String> {
        let mut values: HashMap<&'static str, String> = HashMap::new();
        for spec in SPECS {
            if let Some(v) = env.get(&format!("SWITCHBOARD_{}", spec.name)) {
                values.insert(spec.name, v.clone());
            }
        }
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (flag, None),
            };
            let name = flag.to_ascii_uppercase().replace('-', "_");
            let Some(spec) = SPECS.iter().find(|s| s.name == name) else {
                return Err(format!("unknown flag --{flag} (see --help)"));
            };
            let value = match inline {
                Some(v) => v,
                None if spec.is_switch() => match args.get(i + 1) {
                    Some(word) if !word.starts_with("--") => {
                        i += 1;
                        word.clone()
                    }
                    _ => "on".to_string(),
                },
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("--{flag} needs a value"))?
                }
            };
            values.insert(spec.name, value);
            i += 1;
        }
        let get = |name: &str| values.get(name).map(String::as_str);
        fn num<T: std::str::FromStr>(name: &str, v: Option<&str>, default: T) -> Result<T, String> {
            match v {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("SWITCHBOARD_{name}: {v:?} is not a valid number")),
            }
        }
        let addr = |name: &str, default: &str| -> Result<SocketAddr, String> {
            let v = get(name).unwrap_or(default);
            v.parse().map_err(|_| {
                format!("SWITCHBOARD_{name}: {v:?} is not an address like 127.0.0.1:8080")
            })
        };
        // The shards are placed on the affinity mask's cores
        // ([`cores::place`]), so by default there is one per allowed core
        // (not `available_parallelism`, which also applies a cgroup's CPU
        // quota: `switchboard tune` warns about a quota below the shards).
        let cores = cores::allowed().len();
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty()).map(str::to_string);
        let ask = cores::Ask {
            shards: get("SHARDS")
                .map(|v| num("SHARDS", Some(v), 0))
                .transpose()?,
            cores: non_empty("SHARD_CORES")
                .map(|list| cores::parse_list(&list))
                .transpose()
                .map_err(|e| format!("SWITCHBOARD_SHARD_CORES: {e}"))?,
            overcommit: switch("SHARDS_OVERCOMMIT", get("SHARDS_OVERCOMMIT"))?,
        };
        let shards = ask.shard_count(cores);
        if shards == 0 || shards > 256 {
            return Err(format!("SWITCHBOARD_SHARDS: {shards} is not in 1..=256"));
        }
        let log = crate::logger::Filter::parse(get("LOG").unwrap_or("info"))
            .map_err(|e| format!("SWITCHBOARD_LOG: {e}"))?;
        let demo = match get("DEMO") {
            None | Some("auto") => {
                get("DIRECTORY").is_none_or(str::is_empty)
                    && get("MYSQL_URL").is_none_or(str::is_empty)
            }
            Some(v) => switch("DEMO", Some(v)).map_err(|e| format!("{e}, or auto"))?,
        };
        // Every RATE_* value is checked, also when RATE_LIMITS=off lifts
        // them: a typo must not wait for the day the limits are turned on.
        let mut limits = RateLimits::default();
        for kind in Kind::ALL {
            let name = format!("RATE_{}", kind.as_str().to_ascii_uppercase());
            if let Some(v) = get(&name) {
                limits.set(kind, rate(&name, v)?);
            }
        }
        let rate_limits = match get("RATE_LIMITS") {
            None => limits,
            v @ Some(_) if switch("RATE_LIMITS", v)? => limits,
            Some(_) => RateLimits::unlimited(),
        };
        let listen = match get("LISTEN") {
            Some("off") => None,
            _ => Some(addr("LISTEN", "127.0.0.1:8080")?),
        };
        let tls = match (non_empty("TLS_LISTEN"), non_empty("TLS_CERT"), non_empty("TLS_KEY")) {
            (None, None, None) => None,
            (Some(_), Some(cert), Some(key)) => Some(TlsSettings {
                listen: addr("TLS_LISTEN", "")?,
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
                mode: match get("TLS_MODE").unwrap_or("optional") {
                    "optional" => TlsMode::Optional,
                    "required" => TlsMode::Required,
                    other => {
                        return Err(format!(
                            "SWITCHBOARD_TLS_MODE: {other:?} is not optional or required"
                        ))
                    }
                },
            }),
            _ => {
                return Err(
                    "SWITCHBOARD_TLS_LISTEN, SWITCHBOARD_TLS_CERT and SWITCHBOARD_TLS_KEY go together: set all three or none"
                        .into(),
                )
            }
        };
        if tls.is_none() && non_empty("TLS_MODE").is_some() {
            return Err("SWITCHBOARD_TLS_MODE needs SWITCHBOARD_TLS_LISTEN".into());
        }
        if listen.is_none() && tls.is_none() {
            return Err(
                "SWITCHBOARD_LISTEN=off needs SWITCHBOARD_TLS_LISTEN (no listener would serve)"
                    .into(),
            );
        }
        let settings = Settings {
            listen,
            tls,
            admin_listen: addr("ADMIN_LISTEN", "127.0.0.1:8081")?,
            shards,
            shard_cores: Vec::new(),
            data_dir: PathBuf::from(get("DATA_DIR").unwrap_or("./data")),
            directory: non_empty("DIRECTORY").map(PathBuf::from),
            token_secret: non_empty("TOKEN_SECRET"),
            admin_token: non_empty("ADMIN_TOKEN"),
            presence_grace_ms: num("PRESENCE_GRACE_MS", get("PRESENCE_GRACE_MS"), 10_000)?,
            tab_timeout_ms: num("TAB_TIMEOUT_MS", get("TAB_TIMEOUT_MS"), 60_000)?,
            roster_refresh_ms: num("ROSTER_REFRESH_MS", get("ROSTER_REFRESH_MS"), 300_000)?,
            storage_timeout_ms: num("STORAGE_TIMEOUT_MS", get("STORAGE_TIMEOUT_MS"), 5_000)?,
            db_threads: num("DB_THREADS", get("DB_THREADS"), 2)?,
            db_cores: non_empty("DB_CORES")
                .map(|list| cores::parse_list(&list))
                .transpose()
                .map_err(|e| format!("SWITCHBOARD_DB_CORES: {e}"))?,
            connections_max: num("CONNECTIONS_MAX", get("CONNECTIONS_MAX"), 9_000)?,
            rate_limits,
            connections_per_address_max: num(
                "CONNECTIONS_PER_ADDRESS_MAX",
                get("CONNECTIONS_PER_ADDRESS_MAX"),
                1_000,
            )?,
            first_byte_timeout_ms: num(
                "FIRST_BYTE_TIMEOUT_MS",
                get("FIRST_BYTE_TIMEOUT_MS"),
                switchboard_io::limits::FIRST_BYTE_TIMEOUT_MS,
            )?,
            admin_connections_max: num("ADMIN_CONNECTIONS_MAX", get("ADMIN_CONNECTIONS_MAX"), 64)?,
            loop_lag_warn_ms: num(
                "LOOP_LAG_WARN_MS",
                get("LOOP_LAG_WARN_MS"),
                crate::limits::LOOP_LAG_WARN_MS_DEFAULT,
            )?,
            log,
            trace_ms: num("TRACE_MS", get("TRACE_MS"), crate::limits::TRACE_MS_DEFAULT)?,
            trace_bytes_max: num(
                "TRACE_BYTES_MAX",
                get("TRACE_BYTES_MAX"),
                crate::limits::TRACE_BYTES_MAX_DEFAULT,
            )?,
            mysql_url: non_empty("MYSQL_URL"),
            mysql_pool_size: num(
                "MYSQL_POOL_SIZE",
                get("MYSQL_POOL_SIZE"),
                switchboard_storage::limits::mysql_pool_size_default(cores),
            )?,
            mysql_connect_timeout_ms: num(
                "MYSQL_CONNECT_TIMEOUT_MS",
                get("MYSQL_CONNECT_TIMEOUT_MS"),
                switchboard_storage::limits::MYSQL_CONNECT_TIMEOUT_MS_DEFAULT,
            )?,
            mysql_batch_max: num("MYSQL_BATCH_MAX", get("MYSQL_BATCH_MAX"), 256)?,
            mysql_batch_wait_ms: num("MYSQL_BATCH_WAIT_MS", get("MYSQL_BATCH_WAIT_MS"), 0)?,
            mysql_queries: DirectoryQueries {
                token_sql: non_empty("MYSQL_TOKEN_SQL"),
                user_name_sql: non_empty("MYSQL_USER_NAME_SQL")
                    .unwrap_or_else(|| DirectoryQueries::USER_NAME_SQL_DEFAULT.into()),
                friends_sql: non_empty("MYSQL_FRIENDS_SQL")
                    .unwrap_or_else(|| DirectoryQueries::FRIENDS_SQL_DEFAULT.into()),
                are_friends_sql: non_empty("MYSQL_ARE_FRIENDS_SQL")
                    .unwrap_or_else(|| DirectoryQueries::ARE_FRIENDS_SQL_DEFAULT.into()),
            },
            demo,
            takeover: switch("TAKEOVER", get("TAKEOVER"))?,
            cluster: cluster_settings(
                non_empty("NATS_URL"),
                non_empty("NODE_ID"),
                non_empty("CLUSTER"),
                non_empty("MYSQL_URL").is_some(),
            )?,
            connections_move: switch("CONNECTIONS_MOVE", get("CONNECTIONS_MOVE"))
                .map(|on| on || get("CONNECTIONS_MOVE").is_none())?,
        };
        if settings.db_threads == 0 || settings.db_threads > 64 {
            return Err("SWITCHBOARD_DB_THREADS must be in 1..=64".into());
        }
        for (name, cap) in [
            ("CONNECTIONS_MAX", settings.connections_max),
            (
                "CONNECTIONS_PER_ADDRESS_MAX",
                settings.connections_per_address_max,
            ),
            ("ADMIN_CONNECTIONS_MAX", settings.admin_connections_max),
        ] {
            if cap == 0 {
                return Err(format!("SWITCHBOARD_{name} must be at least 1"));
            }
        }
        let idle_ms = switchboard_io::limits::IDLE_TIMEOUT_MS;
        if !(100..=idle_ms).contains(&settings.first_byte_timeout_ms) {
            return Err(format!(
                "SWITCHBOARD_FIRST_BYTE_TIMEOUT_MS must be in 100..={idle_ms} (the idle timeout)"
            ));
        }
        // Anyone who can reach a non-loopback admin listener could kick
        // users and read /health: refuse to start open there.
        if settings.admin_token.is_none() && !settings.admin_listen.ip().is_loopback() {
            return Err(format!(
                "SWITCHBOARD_ADMIN_TOKEN is required when the admin listener is not on loopback \
                 (SWITCHBOARD_ADMIN_LISTEN is {}): set a long random token, or listen on 127.0.0.1",
                settings.admin_listen
            ));
        }
        let min = crate::limits::ADMIN_TOKEN_BYTES_MIN;
        if let Some(token) = &settings.admin_token {
            if token.len() < min && !settings.admin_listen.ip().is_loopback() {
                return Err(format!(
                    "SWITCHBOARD_ADMIN_TOKEN is {} bytes: at least {min} are required when the \
                     admin listener is not on loopback (SWITCHBOARD_ADMIN_LISTEN is {}); \
                     generate one, e.g. `openssl rand -hex 32`",
                    token.len(),
                    settings.admin_listen
                ));
            }
        }
        let (min, max) = (
            crate::limits::STORAGE_TIMEOUT_MS_MIN,
            crate::limits::STORAGE_TIMEOUT_MS_MAX,
        );
        if !(min..=max).contains(&settings.storage_timeout_ms) {
            return Err(format!(
                "SWITCHBOARD_STORAGE_TIMEOUT_MS must be in {min}..={max} (the stop waits for \
                 storage jobs, and must end within a service manager's kill timeout)"
            ));
        }
        let stall_ms = crate::limits::SHARD_STALL_MS_MAX;
        if !(10..stall_ms).contains(&settings.loop_lag_warn_ms) {
            return Err(format!(
                "SWITCHBOARD_LOOP_LAG_WARN_MS must be in 10..{stall_ms} (a shard with no tick \
                 for {stall_ms} ms ends the process)"
            ));
        }
        if !(1_000..=86_400_000).contains(&settings.trace_ms) {
            return Err("SWITCHBOARD_TRACE_MS must be in 1000..=86400000 (1 s to a day)".into());
        }
        if !(4_096..=1 << 30).contains(&settings.trace_bytes_max) {
            return Err(
                "SWITCHBOARD_TRACE_BYTES_MAX must be in 4096..=1073741824 (4 KiB to 1 GiB)".into(),
            );
        }
        if settings.tab_timeout_ms < 1_000 || settings.roster_refresh_ms < 1_000 {
            return Err("timeouts and intervals must be at least 1000 ms".into());
        }
        Ok((settings, ask))
    }
}

impl Settings {
    /// Whether the admin token is set but shorter than
    /// [`crate::limits::ADMIN_TOKEN_BYTES_MIN`] (allowed only on loopback;
    /// the server warns).
    pub fn admin_token_is_short(&self) -> bool {
        self.admin_token
            .as_ref()
            .is_some_and(|t| t.len() < crate::limits::ADMIN_TOKEN_BYTES_MIN)
    }
}

/// An on/off setting: on, 1 or true; off, 0 or false; unset is off.
fn switch(name: &str, v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("off" | "0" | "false") => Ok(false),
        Some("on" | "1" | "true") => Ok(true),
        Some(other) => Err(format!("SWITCHBOARD_{name}: {other:?} is not on or off")),
    }
}

/// A rate setting: `RATE/s,burst=N` (both at least 1), or `off`.
fn rate(name: &str, v: &str) -> Result<Option<Rate>, String> {
    if v == "off" {
        return Ok(None);
    }
    let err = || format!("SWITCHBOARD_{name}: {v:?} is not a rate like 5/s,burst=30 or off");
    let number = |s: Option<&str>| -> Result<u32, String> {
        match s.map(str::parse::<u32>) {
            Some(Ok(n)) if n >= 1 => Ok(n),
            _ => Err(err()),
        }
    };
    let (per_s, burst) = v.split_once(',').ok_or_else(err)?;
    let per_s = number(per_s.strip_suffix("/s"))?;
    let burst = number(burst.strip_prefix("burst="))?;
    Ok(Some(Rate::new(per_s, burst)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::parse(&args, &env)
    }

    #[test]
    fn flags_override_env_and_defaults_apply() {
        let s = parse(
            &["--shards", "1", "--presence-grace-ms=500"],
            &[
                ("SWITCHBOARD_SHARDS", "2"),
                ("SWITCHBOARD_LISTEN", "127.0.0.1:0"),
            ],
        )
        .unwrap();
        assert_eq!(s.shards, 1);
        assert_eq!(s.presence_grace_ms, 500);
        assert_eq!(s.listen.map(|a| a.port()), Some(0));
        assert_eq!(s.tls, None);
        assert_eq!(s.admin_listen.port(), 8081);
        assert_eq!(s.tab_timeout_ms, 60_000);
        assert_eq!(s.connections_per_address_max, 1_000);
        assert_eq!(s.first_byte_timeout_ms, 5_000);
        assert_eq!(s.admin_connections_max, 64);
        assert!(s.directory.is_none());
        assert!(s.demo, "demo mode is on with the built-in demo users");
    }

    #[test]
    fn cluster_mode_needs_a_node_id_and_mysql_and_refuses_the_embedded_store() {
        let mysql = ("SWITCHBOARD_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        let nats = ("SWITCHBOARD_NATS_URL", "nats://127.0.0.1:4222");
        let node = ("SWITCHBOARD_NODE_ID", "n1");
        assert_eq!(parse(&[], &[mysql]).unwrap().cluster, None);
        let s = parse(&[], &[mysql, nats, node]).unwrap();
        let c = s.cluster.unwrap();
        assert_eq!((c.node.as_str(), c.cluster.as_str()), ("n1", "switchboard"));
        let e = parse(&[], &[nats, node]).unwrap_err();
        assert!(e.contains("needs the MySQL store"), "{e}");
        let e = parse(&[], &[mysql, nats]).unwrap_err();
        assert!(e.contains("needs SWITCHBOARD_NODE_ID"), "{e}");
        let e = parse(&[], &[mysql, node]).unwrap_err();
        assert!(e.contains("without SWITCHBOARD_NATS_URL"), "{e}");
        let e = parse(&[], &[mysql, nats, ("SWITCHBOARD_NODE_ID", "a.b")]).unwrap_err();
        assert!(e.contains("NODE_ID"), "{e}");
        let e = parse(
            &[],
            &[mysql, ("SWITCHBOARD_NATS_URL", "127.0.0.1:4222"), node],
        )
        .unwrap_err();
        assert!(e.contains("nats://"), "{e}");
        let many = (
            "SWITCHBOARD_NATS_URL",
            "nats://a:4222, nats://b:4222,nats://c:4222",
        );
        assert!(parse(&[], &[mysql, many, node]).unwrap().cluster.is_some());
        let bad = ("SWITCHBOARD_NATS_URL", "nats://a:4222,b:4222");
        assert!(parse(&[], &[mysql, bad, node])
            .unwrap_err()
            .contains("nats://"));
        let e = parse(&[], &[mysql, nats, node, ("SWITCHBOARD_CLUSTER", "x y")]).unwrap_err();
        assert!(e.contains("SWITCHBOARD_CLUSTER"), "{e}");
    }

    #[test]
    fn admin_token_is_optional_only_on_loopback() {
        for addr in ["127.0.0.1:0", "127.0.0.2:8081", "[::1]:8081"] {
            let s = parse(&["--admin-listen", addr], &[]).unwrap();
            assert_eq!(s.admin_token, None, "{addr}");
        }
        let long = "a-long-random-token-of-32-bytes!";
        let s = parse(
            &["--admin-listen", "0.0.0.0:8081"],
            &[("SWITCHBOARD_ADMIN_TOKEN", long)],
        )
        .unwrap();
        assert_eq!(s.admin_token.as_deref(), Some(long));
        assert!(!s.admin_token_is_short());
    }

    #[test]
    fn a_short_admin_token_is_refused_off_loopback_and_allowed_on_it() {
        let short = "a-31-byte-admin-token-too-short";
        assert_eq!(short.len(), crate::limits::ADMIN_TOKEN_BYTES_MIN - 1);
        for addr in ["0.0.0.0:8081", "10.1.2.3:8081", "[::]:8081"] {
            let e = parse(
                &["--admin-listen", addr],
                &[("SWITCHBOARD_ADMIN_TOKEN", short)],
            )
            .unwrap_err();
            assert!(e.contains("at least 32 are required"), "{addr}: {e}");
            assert!(!e.contains(short), "the token is not echoed: {e}");
        }
        for addr in ["127.0.0.1:8081", "[::1]:8081"] {
            let s = parse(
                &["--admin-listen", addr],
                &[("SWITCHBOARD_ADMIN_TOKEN", short)],
            )
            .unwrap();
            assert!(s.admin_token_is_short(), "{addr}");
        }
    }

    #[test]
    fn tls_settings() {
        let tls = [
            "--tls-listen",
            "127.0.0.1:8443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ];
        let s = parse(&tls, &[]).unwrap();
        let t = s.tls.expect("TLS is on");
        assert_eq!(t.listen.port(), 8443);
        assert_eq!(t.mode, TlsMode::Optional);
        assert_eq!(s.listen.map(|a| a.port()), Some(8080));
        let required = parse(
            &tls,
            &[
                ("SWITCHBOARD_TLS_MODE", "required"),
                ("SWITCHBOARD_LISTEN", "off"),
            ],
        )
        .unwrap();
        assert_eq!(required.tls.unwrap().mode, TlsMode::Required);
        assert_eq!(required.listen, None);
        let e = parse(&[&tls[..], &["--tls-mode", "always"]].concat(), &[]).unwrap_err();
        assert!(e.contains("TLS_MODE"), "{e}");
    }

    #[test]
    fn demo_mode() {
        let demo = |args: &[&str], env: &[(&str, &str)]| parse(args, env).unwrap().demo;
        assert!(demo(&[], &[]));
        assert!(!demo(&["--directory", "users.json"], &[]));
        assert!(demo(&["--directory", "users.json", "--demo", "1"], &[]));
        assert!(!demo(&[], &[("SWITCHBOARD_DEMO", "0")]));
        assert!(demo(&["--demo=auto"], &[]));
        assert!(parse(&["--demo", "maybe"], &[])
            .unwrap_err()
            .contains("DEMO"));
    }

    #[test]
    fn on_off_flags_may_stand_alone() {
        let demo = |args: &[&str]| parse(args, &[]).unwrap().demo;
        let users = ["--directory", "users.json"];
        assert!(demo(&[&users[..], &["--demo"]].concat()));
        assert!(demo(&["--demo", "--directory", "users.json"]));
        assert!(!demo(&["--demo", "false"]));
        assert!(!demo(&["--demo", "off"]));
        assert!(!demo(&["--demo=0"]));
        assert!(demo(&[&users[..], &["--demo", "true"]].concat()));
        assert!(!demo(&[&users[..], &["--demo", "auto"]].concat()));
        // A switch followed by another flag stands alone; followed by
        // anything else, that is its value.
        let s = parse(&["--demo", "--shards", "1"], &[]).unwrap();
        assert!(s.demo);
        assert_eq!(s.shards, 1);
        let e = parse(&["--demo", "maybe"], &[]).unwrap_err();
        assert!(
            e.contains("SWITCHBOARD_DEMO: \"maybe\" is not on or off, or auto"),
            "{e}"
        );
        let off = parse(&["--rate-limits", "off"], &[]).unwrap();
        assert_eq!(off.rate_limits, RateLimits::unlimited());
        let on = parse(
            &["--rate-limits", "--rate-limits=false", "--rate-limits"],
            &[("SWITCHBOARD_RATE_LIMITS", "off")],
        )
        .unwrap();
        assert_eq!(on.rate_limits, RateLimits::default());
        // Every switch takes the flag alone and the usual words.
        for spec in SPECS.iter().filter(|s| s.is_switch()) {
            let flag = format!("--{}", spec.name.to_ascii_lowercase().replace('_', "-"));
            for args in [vec![flag.as_str()], vec![&flag, "off"], vec![&flag, "1"]] {
                let args = [&args[..], &["--shards", "1"]].concat();
                assert!(parse(&args, &[]).is_ok(), "{args:?}");
            }
        }
    }

    #[test]
    fn help_shows_a_placeholder_for_every_value() {
        let text = help();
        for want in [
            "--listen ADDR ",
            "--shards N ",
            "--shard-cores LIST ",
            "--data-dir DIR ",
            "--storage-timeout-ms MS ",
            "--rate-send RATE ",
            "--demo [on|off|auto] ",
            "--rate-limits [on|off] ",
            "--shards-overcommit [on|off] ",
        ] {
            assert!(text.contains(want), "--help shows {want:?}:\n{text}");
        }
        for spec in SPECS {
            assert!(!spec.value.is_empty(), "{} has a placeholder", spec.name);
            let flag = spec.name.to_ascii_lowercase().replace('_', "-");
            assert!(text.contains(&format!("--{flag} {} ", spec.value)));
        }
    }

    #[test]
    fn shards_are_placed_on_the_allowed_cores() {
        let allowed = cores::allowed();
        let s = parse(&[], &[]).unwrap();
        assert_eq!(s.shards, allowed.len(), "one shard per allowed core");
        assert_eq!(s.shard_cores.len(), s.shards);
        assert_eq!(s.shard_cores, allowed[..s.shards]);

        // A list: shard i on the i-th listed core, SHARDS taken from its
        // length (here the last allowed cores backwards: 1,0 on two cores).
        let want: Vec<usize> = allowed.iter().rev().take(4).copied().collect();
        let list = cores::format_list(&want);
        let s = parse(&["--shard-cores", &list], &[]).unwrap();
        assert_eq!((s.shards, &s.shard_cores), (want.len(), &want));
        let shards = want.len().to_string();
        let s = parse(
            &["--shards", &shards],
            &[("SWITCHBOARD_SHARD_CORES", &list)],
        )
        .unwrap();
        assert_eq!(s.shard_cores, want);

        // More shards than cores: refused, or shared when asked for.
        let over = (allowed.len() + 1).to_string();
        let e = parse(&["--shards", &over], &[]).unwrap_err();
        assert!(e.contains("SHARDS_OVERCOMMIT"), "{e}");
        let s = parse(&["--shards", &over, "--shards-overcommit"], &[]).unwrap();
        assert_eq!(s.shard_cores[allowed.len()], allowed[0]);

        let (read, ask) =
            Settings::read(&["--shards".into(), over.clone()], &HashMap::new()).unwrap();
        assert!(
            read.shard_cores.is_empty(),
            "read leaves the shards unplaced"
        );
        assert_eq!(ask.shards, Some(allowed.len() + 1));
    }

    /// On whatever cores the runner allows (core 0 need not be one).
    #[test]
    fn bad_core_lists_are_refused() {
        let c = cores::allowed()[0];
        for (list, needle) in [
            ("8191".to_string(), "may not run on"),
            (format!("{c},{c}"), "twice"),
            (format!("{c},x"), "SHARD_CORES: \"x\" is not a core number"),
            ("3-1".to_string(), "backwards"),
        ] {
            let e = parse(&["--shard-cores", &list], &[]).unwrap_err();
            assert!(e.contains(needle), "{list}: {e}");
        }
        let one = c.to_string();
        let e = parse(&["--shard-cores", &one, "--shards", "2"], &[]).unwrap_err();
        assert!(
            e.contains("SHARDS is 2 but SWITCHBOARD_SHARD_CORES lists 1 cores"),
            "{e}"
        );
        let db = format!("{c}-{},{c}", c + 1);
        let s = parse(&["--db-cores", &db], &[]).unwrap();
        assert_eq!(s.db_cores, Some(vec![c, c + 1, c]));
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        for (args, needle) in [
            (&["--nope", "1"][..], "unknown flag"),
            (&["--shards", "x"][..], "SHARDS"),
            (&["--shards", "0"][..], "SHARDS"),
            (&["--listen", "localhost"][..], "LISTEN"),
            (&["--shards"][..], "needs a value"),
            (&["stray"][..], "unexpected"),
            (&["--log", "loud"][..], "LOG"),
            (&["--log", "info,debug"][..], "more than one default"),
            (&["--log", "switchboard_storage=chatty"][..], "not a level"),
            (&["--log", ""][..], "empty"),
            (&["--trace-ms", "999"][..], "TRACE_MS"),
            (&["--trace-ms", "86400001"][..], "TRACE_MS"),
            (&["--trace-bytes-max", "4095"][..], "TRACE_BYTES_MAX"),
            (&["--trace-bytes-max", "lots"][..], "TRACE_BYTES_MAX"),
            (&["--db-cores", "1,x"][..], "DB_CORES"),
            (&["--rate-send", "5"][..], "RATE_SEND"),
            (&["--rate-send", "5/s,burst=0"][..], "RATE_SEND"),
            (&["--rate-typing", "0/s,burst=3"][..], "RATE_TYPING"),
            (&["--rate-ui", "5/m,burst=3"][..], "RATE_UI"),
            (&["--rate-read", "5/s, burst=3"][..], "RATE_READ"),
            (&["--rate-limits", "maybe"][..], "RATE_LIMITS"),
            (
                &["--rate-limits", "off", "--rate-send", "5"][..],
                "RATE_SEND",
            ),
            (&["--rate-poll", "10/s"][..], "RATE_POLL"),
            (&["--connections-per-address-max", "0"][..], "PER_ADDRESS"),
            (&["--admin-connections-max", "0"][..], "ADMIN_CONNECTIONS"),
            (&["--first-byte-timeout-ms", "99"][..], "FIRST_BYTE"),
            (&["--first-byte-timeout-ms", "75001"][..], "FIRST_BYTE"),
            (
                &["--admin-listen", "0.0.0.0:8081"][..],
                "ADMIN_TOKEN is required",
            ),
            (
                &["--admin-listen", "10.1.2.3:8081"][..],
                "ADMIN_TOKEN is required",
            ),
            (
                &["--admin-listen", "[::]:8081"][..],
                "ADMIN_TOKEN is required",
            ),
            (
                &["--admin-listen", "0.0.0.0:8081", "--admin-token", ""][..],
                "ADMIN_TOKEN is required",
            ),
            (&["--tls-listen", "127.0.0.1:0"][..], "go together"),
            (
                &["--tls-cert", "c.pem", "--tls-key", "k.pem"][..],
                "go together",
            ),
            (&["--tls-mode", "required"][..], "TLS_MODE"),
            (&["--listen", "off"][..], "LISTEN=off"),
            (
                &["--tls-listen", "x", "--tls-cert", "c", "--tls-key", "k"][..],
                "TLS_LISTEN",
            ),
            (
                &[
                    "--tls-listen",
                    ":0",
                    "--tls-cert",
                    "c",
                    "--tls-key",
                    "k",
                    "--tls-mode",
                    "on",
                ][..],
                "TLS_LISTEN",
            ),
            (&["--storage-timeout-ms", "99"][..], "STORAGE_TIMEOUT"),
            (&["--storage-timeout-ms", "30001"][..], "STORAGE_TIMEOUT"),
        ] {
            let e = parse(args, &[]).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn log_filter_and_trace_bounds() {
        use log::LevelFilter;
        let s = parse(&[], &[]).unwrap();
        assert_eq!(s.log, crate::logger::Filter::level(LevelFilter::Info));
        assert_eq!(
            (s.trace_ms, s.trace_bytes_max),
            (
                crate::limits::TRACE_MS_DEFAULT,
                crate::limits::TRACE_BYTES_MAX_DEFAULT
            )
        );
        let s = parse(
            &["--log", "warn,switchboard_storage=debug", "--trace-ms=1000"],
            &[("SWITCHBOARD_TRACE_BYTES_MAX", "4096")],
        )
        .unwrap();
        assert_eq!(
            s.log.level_of("switchboard_storage::batch"),
            LevelFilter::Debug
        );
        assert_eq!(s.log.level_of("switchboard_engine"), LevelFilter::Warn);
        assert_eq!((s.trace_ms, s.trace_bytes_max), (1_000, 4_096));
        // The defaults --help prints are the ones used.
        for (name, value) in [
            ("TRACE_MS", crate::limits::TRACE_MS_DEFAULT),
            ("TRACE_BYTES_MAX", crate::limits::TRACE_BYTES_MAX_DEFAULT),
        ] {
            let spec = SPECS.iter().find(|s| s.name == name).unwrap();
            assert_eq!(spec.default, value.to_string(), "{name}");
        }
    }

    #[test]
    fn rate_limits_default_to_the_shards_defaults_and_can_be_set_or_lifted() {
        // The defaults --help prints are the ones the shards use.
        let s = parse(&[], &[]).unwrap();
        assert_eq!(s.rate_limits, RateLimits::default());
        for kind in Kind::ALL {
            let name = format!("RATE_{}", kind.as_str().to_ascii_uppercase());
            let spec = SPECS
                .iter()
                .find(|s| s.name == name)
                .expect("a spec per kind");
            assert_eq!(rate(&name, spec.default), Ok(Some(kind.default_rate())));
        }
        let s = parse(
            &["--rate-send=100/s,burst=1000", "--rate-typing", "off"],
            &[("SWITCHBOARD_RATE_HISTORY", "1/s,burst=1")],
        )
        .unwrap();
        assert_eq!(s.rate_limits.get(Kind::Send), Some(Rate::new(100, 1000)));
        assert_eq!(s.rate_limits.get(Kind::Typing), None);
        assert_eq!(s.rate_limits.get(Kind::History), Some(Rate::new(1, 1)));
        assert_eq!(s.rate_limits.get(Kind::Ui), Some(Kind::Ui.default_rate()));
        let off = parse(&["--rate-limits", "off", "--rate-send", "1/s,burst=1"], &[]).unwrap();
        assert_eq!(off.rate_limits, RateLimits::unlimited());
    }
}
