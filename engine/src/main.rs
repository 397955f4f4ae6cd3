//! The `switchboard` binary: `switchboard [serve] [--setting value ...]`,
//! `switchboard token USER_ID [--ttl-s N]`, `switchboard migrate`,
//! `switchboard seed-demo --users N --friends K [--seed S] [--reset]`,
//! `switchboard check-directory USER_ID [OTHER_ID]`,
//! `switchboard tune [--strict]`,
//! `switchboard cluster status|init NODE...|add NODE|remove NODE|forget`,
//! `switchboard --help`,
//! `switchboard --version`.
//!
//! `serve` exits 0 after a graceful stop (SIGTERM or SIGINT, see
//! `signals.rs`), 2 when the server cannot start (a setting, a data folder
//! or port another server holds, storage) or a shard fails, 3 when a stop
//! runs past its bound (`limits::stop_timeout_ms`) or is cut short by a
//! second signal, and 70 on a panic outside the supervised region, a
//! stuck shard or a dead storage thread (`supervise.rs`). `tune` exits 0,
//! or 1 with `--strict` when it warns, or 2 on a bad setting.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_engine::settings::{self, Settings};
use switchboard_engine::{logger, server, tune};

const USAGE: &str = "\
switchboard: a web chat server (HTTP long-polling, JSONP), sharded thread-per-core.

Usage:
  switchboard [serve] [SETTINGS]        start the server (embedded store; demo users unless --directory)
  switchboard token USER_ID [--ttl-s N] [SETTINGS]
                                        print a login token for USER_ID valid N seconds (default 86400)
                                        under the configured secret
  switchboard migrate [SETTINGS]        create or upgrade Switchboard's tables (sb_*) in the MySQL
                                        database of --mysql-url; idempotent
  switchboard seed-demo --users N --friends K [--seed S] [--reset] [SETTINGS]
                                        fill the default directory tables (users, friendships) of
                                        --mysql-url with a synthetic graph: users 1..N, about K
                                        friends each, the same graph for the same seed (default 1);
                                        --reset replaces existing users and friendships
  switchboard check-directory USER_ID [OTHER_ID] [SETTINGS]
                                        run the MySQL directory queries for USER_ID (and whether
                                        OTHER_ID is a friend) and print what they return
  switchboard takeover [SETTINGS]       deploy: start `serve --takeover` in the background with these
                                        settings and return once it serves in place of the server
                                        running on DATA_DIR (exit 0), or once it failed (exit 2: the
                                        old server serves on); for systemd's ExecReload
  switchboard tune [--strict] [SETTINGS]
                                        read this machine (cores, SMT, NUMA, limits, sysctls, io_uring)
                                        and print a shard and db-thread layout, the settings, sysctls
                                        and systemd lines to apply, and warnings; --strict: exit 1
                                        when there is a warning
  switchboard cluster status | init NODE... | add NODE | remove NODE | forget [--nats-url URL] [--cluster NAME]
                                        cluster mode (in progress): show the nodes alive and the
                                        placement of the 256 virtual shards, make the first placement,
                                        add or remove a node (moves only its share), or delete the
                                        cluster's buckets (refused while a node runs); NATS_URL and
                                        CLUSTER as for serve; exit 2 with the reason on a failure
  switchboard --help, -h                this text
  switchboard --version, -V             the version and git commit

Admin endpoints (on ADMIN_LISTEN; with ADMIN_TOKEN set, Authorization: Bearer TOKEN):
  GET  /health                          every shard's state: 200, or 503 when one is not up
  GET  /metrics                         counters and gauges, Prometheus text format
  POST /roster-changed?user=ID          re-read ID's friends after the web app changed them; answers
                                        once every shard has applied it
  POST /kick?user=ID                    end all of ID's tabs and sessions now
  POST /trace?user=ID&level=debug|off   start or stop recording ID's debug records to a trace file
  GET  /trace?user=ID                   where ID's trace stands, its file, and its newest lines

Settings (flag, environment variable; the flag wins):
";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}{}", settings::help());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("{}", version());
        return ExitCode::SUCCESS;
    }
    let command = match args.first().map(String::as_str) {
        Some("serve") => {
            args.remove(0);
            "serve"
        }
        Some("cluster") => {
            args.remove(0);
            "cluster"
        }
        Some(c @ ("token" | "migrate" | "seed-demo" | "check-directory" | "tune" | "takeover")) => {
            let c = match c {
                "takeover" => "takeover",
                "token" => "token",
                "migrate" => "migrate",
                "seed-demo" => "seed-demo",
                "tune" => "tune",
                _ => "check-directory",
            };
            args.remove(0);
            c
        }
        Some(a) if !a.starts_with("--") => {
            say(&format!(
                "switchboard: unknown command {a:?} (see --help)\n"
            ));
            return ExitCode::from(2);
        }
        _ => "serve",
    };
    let code = match command {
        "token" => token(args, &env),
        "migrate" => migrate(args, &env),
        "seed-demo" => seed_demo(args, &env),
        "check-directory" => check_directory(args, &env),
        "tune" => tune(args, &env),
        "takeover" => takeover(args, &env),
        "cluster" => cluster(args, &env),
        _ => serve(args, &env),
    };
    // Records still queued for the `log` thread would die with the
    // process.
    logger::flush();
    code
}

/// `switchboard 0.1.0`, and the git commit it was built from when the
/// build knew it (`build.rs`).
fn version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match env!("SWITCHBOARD_GIT_COMMIT") {
        "" => format!("switchboard {version}"),
        commit => format!("switchboard {version} (git {commit})"),
    }
}

fn fail(message: String) -> ExitCode {
    // The log's last lines first: they say what led here. Both waits are
    // bounded: a stderr nobody reads must not hold the exit.
    logger::flush();
    say(&format!("switchboard: {message}\n"));
    ExitCode::from(2)
}

/// Writes `text` to stderr, waiting at most `LOG_FLUSH_WAIT_MS` (an
/// `eprintln!` would wait for ever on a stderr nobody reads).
fn say(text: &str) {
    let wait = Duration::from_millis(switchboard_engine::limits::LOG_FLUSH_WAIT_MS);
    logger::write_stderr_bounded(text, wait);
}

fn serve(args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let settings = match Settings::parse(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    logger::init(settings.log.clone());
    match server::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

/// `switchboard takeover`: runs `serve --takeover` with the same
/// settings as a detached process (its own session, stdout to /dev/null,
/// stderr inherited), and waits until it serves in the old server's place.
/// It knows by a pipe: the new server writes to it once it serves (after
/// the old one's `go`, and after telling systemd). Under systemd it then
/// tells systemd the new process is the unit's main one and waits until
/// systemd has read that (`notify::main_pid`), so the unit is never left
/// without a main process when this command exits. Exits 2 if the new
/// server exits or closes the pipe first (the old one serves on), or
/// after the stop bound plus a minute (the new one is killed then: the
/// old one, if it had handed over its state, serves again).
fn takeover(args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let settings = match Settings::parse(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    logger::init(settings.log.clone());
    let (read_end, write_end) = match switchboard_engine::notify::pipe() {
        Ok(ends) => ends,
        Err(e) => return fail(format!("pipe: {e}")),
    };
    let write_fd = write_end.as_raw_fd();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find this binary: {e}")),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("serve")
        .arg("--takeover")
        .args(&args)
        .env(
            switchboard_engine::notify::READY_FD_VAR,
            write_fd.to_string(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid and fcntl are async-signal-safe; nothing else runs
    // in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // The pipe's write end stays open across exec, for the server.
            if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the new server: {e}")),
    };
    drop(write_end);
    let pid = child.id();
    let bound = switchboard_engine::limits::takeover_command_ms(settings.storage_timeout_ms);
    // The read ends at the server's word, or at EOF when it exits or
    // closes the pipe without one; a reader thread so the wait is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut word = String::new();
        let _ = std::fs::File::from(read_end).read_to_string(&mut word);
        let _ = tx.send(word);
    });
    let word = rx.recv_timeout(Duration::from_millis(bound));
    match word {
        Ok(word) if word.trim() == "serving" => {
            switchboard_engine::notify::main_pid(pid);
            println!("switchboard: pid {pid} serves (it took over, or no server ran)");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            let status = (0..250).find_map(|_| match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                _ => {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                }
            });
            fail(format!(
                "the new server (pid {pid}) ended ({}) before it served; the old one, if any, \
                 serves on",
                status.unwrap_or_else(|| "still running, pipe closed".into())
            ))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            fail(format!(
                "the new server (pid {pid}) did not serve within {bound} ms: killed; the old \
                 one, if any, serves on"
            ))
        }
    }
}

fn token(mut args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let Some(user) = args.first().cloned().filter(|a| !a.starts_with("--")) else {
        return fail("token needs a USER_ID".into());
    };
    args.remove(0);
    let user: u64 = match user.parse() {
        Ok(u) if u > 0 => u,
        _ => return fail(format!("{user:?} is not a user id (a positive integer)")),
    };
    let mut ttl_s: u64 = 86_400;
    if let Some(i) = args
        .iter()
        .position(|a| a == "--ttl-s" || a.starts_with("--ttl-s="))
    {
        let value = if let Some(v) = args[i].strip_prefix("--ttl-s=") {
            let v = v.to_string();
            args.remove(i);
            v
        } else {
            args.remove(i);
            if i >= args.len() {
                return fail("--ttl-s needs a value".into());
            }
            args.remove(i)
        };
        ttl_s = match value.parse() {
            Ok(t) => t,
            Err(_) => return fail(format!("--ttl-s {value:?} is not a number of seconds")),
        };
    }
    let settings = match Settings::parse(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // The server's secret, never a new one: a token under a secret the
    // server does not hold would be refused (`unauthorized`).
    let secret = match &settings.token_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => {
            let dir = std::path::absolute(&settings.data_dir)
                .unwrap_or_else(|_| settings.data_dir.clone());
            let path = dir.join(switchboard_storage::token::SECRET_FILE_NAME);
            match switchboard_storage::token::load_secret(&dir) {
                Ok(s) => {
                    say(&format!(
                        "switchboard token: signed with the secret in {}\n",
                        path.display()
                    ));
                    s
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return fail(format!(
                        "no token secret at {}: the server makes it when it first starts on \
                         that data folder. Run this command with the server's \
                         SWITCHBOARD_DATA_DIR (or --data-dir), or give the secret \
                         (SWITCHBOARD_TOKEN_SECRET, --token-secret)",
                        path.display()
                    ))
                }
                Err(e) => {
                    return fail(format!(
                        "cannot read the token secret {}: {e}",
                        path.display()
                    ))
                }
            }
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{}",
        switchboard_storage::token::mint(&secret, user, now.saturating_add(ttl_s))
    );
    ExitCode::SUCCESS
}

/// Removes `--name VALUE` or `--name=VALUE` from `args` and returns the
/// value (`Ok(None)` when absent).
fn take_flag(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    let prefix = format!("--{name}=");
    let Some(i) = args
        .iter()
        .position(|a| *a == format!("--{name}") || a.starts_with(&prefix))
    else {
        return Ok(None);
    };
    let arg = args.remove(i);
    if let Some(v) = arg.strip_prefix(&prefix) {
        return Ok(Some(v.to_string()));
    }
    if i >= args.len() {
        return Err(format!("--{name} needs a value"));
    }
    Ok(Some(args.remove(i)))
}

/// The settings of a MySQL command, with the URL it needs.
fn mysql_settings(
    args: &[String],
    env: &HashMap<String, String>,
) -> Result<(Settings, String), String> {
    let settings = Settings::parse(args, env)?;
    let url = settings
        .mysql_url
        .clone()
        .ok_or("needs SWITCHBOARD_MYSQL_URL or --mysql-url")?;
    logger::init(settings.log.clone());
    Ok((settings, url))
}

fn migrate(args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let (_, url) = match mysql_settings(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(format!("migrate {e}")),
    };
    match switchboard_storage::mysql::migrate(&url) {
        Ok(m) if m.from == m.to => {
            println!("schema is up to date (version {})", m.to);
            ExitCode::SUCCESS
        }
        Ok(m) => {
            println!("schema migrated from version {} to {}", m.from, m.to);
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("migrate: {e}")),
    }
}

fn seed_demo(mut args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let mut number = |name: &str, default: Option<u64>| -> Result<u64, String> {
        match take_flag(&mut args, name)? {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} {v:?} is not a number")),
            None => default.ok_or(format!("seed-demo needs --{name}")),
        }
    };
    let parsed = (|| {
        Ok::<_, String>((
            number("users", None)?,
            number("friends", None)?,
            number("seed", Some(1))?,
        ))
    })();
    let (users, friends, seed) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let reset = match args.iter().position(|a| a == "--reset") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let (_, url) = match mysql_settings(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(format!("seed-demo {e}")),
    };
    match switchboard_storage::mysql::seed_demo(&url, users, friends, seed, reset) {
        Ok(s) => {
            println!(
                "seeded {} users and {} friendships (mean {:.1} friends each, seed {seed}) in {:.1} s",
                s.users,
                s.friendships,
                2.0 * s.friendships as f64 / s.users as f64,
                s.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("seed-demo: {e}")),
    }
}

fn check_directory(mut args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let mut ids = Vec::new();
    while args.first().is_some_and(|a| !a.starts_with("--")) {
        let a = args.remove(0);
        match a.parse::<u64>() {
            Ok(id) if id > 0 => ids.push(id),
            _ => return fail(format!("{a:?} is not a user id (a positive integer)")),
        }
    }
    let (user, other) = match ids[..] {
        [user] => (user, None),
        [user, other] => (user, Some(other)),
        _ => return fail("check-directory needs USER_ID [OTHER_ID]".into()),
    };
    let (settings, url) = match mysql_settings(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(format!("check-directory {e}")),
    };
    match switchboard_storage::mysql::check_directory(&url, &settings.mysql_queries, user, other) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("check-directory: {e}")),
    }
}

fn tune(mut args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let strict = match args.iter().position(|a| a == "--strict") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let (settings, ask) = match Settings::read(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let facts = tune::machine::read();
    let plan = tune::Plan::of(&settings, ask);
    let advice = tune::advise(&facts, &plan);
    print!("{}", tune::render(&facts, &plan, &advice));
    ExitCode::from(advice.exit_code(strict))
}

/// `switchboard cluster ...`: `--nats-url`/`--cluster` (or their
/// `SWITCHBOARD_` variables) and the command's words.
fn cluster(args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let mut url = env.get("SWITCHBOARD_NATS_URL").cloned();
    let mut name = env.get("SWITCHBOARD_CLUSTER").cloned();
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "--nats-url" => &mut url,
            "--cluster" => &mut name,
            f if f.starts_with("--") => return fail(format!("cluster: unknown flag {f}")),
            _ => {
                words.push(arg);
                continue;
            }
        };
        match inline.or_else(|| args.next()) {
            Some(v) => *slot = Some(v),
            None => return fail(format!("cluster: {flag} needs a value")),
        }
    }
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return fail("cluster: set SWITCHBOARD_NATS_URL or --nats-url".into());
    };
    let name = name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "switchboard".into());
    if !switchboard_engine::cluster::placement::valid_id(&name) {
        return fail(format!(
            "cluster: the cluster name {name:?} must be 1-32 of A-Z a-z 0-9 _ -"
        ));
    }
    match switchboard_engine::cluster::cli::run(&url, &name, &words) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cluster: {e}")),
    }
}
