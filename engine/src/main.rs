//! The `switchboard` binary: `switchboard [serve] [--setting value ...]`,
//! `switchboard token USER_ID [--ttl-s N]`, `switchboard --help`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_engine::settings::{self, Settings};
use switchboard_engine::{logger, server};

const USAGE: &str = "\
switchboard: a web chat server (HTTP long-polling, JSONP), sharded thread-per-core.

Usage:
  switchboard [serve] [SETTINGS]        start the server (embedded store; demo users unless --directory)
  switchboard token USER_ID [--ttl-s N] [SETTINGS]
                                        print a login token for USER_ID valid N seconds (default 86400)
                                        under the configured secret
  switchboard --help                    this text

Settings (flag, environment variable; the flag wins):
";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}{}", settings::help());
        return ExitCode::SUCCESS;
    }
    let command = match args.first().map(String::as_str) {
        Some("serve") => {
            args.remove(0);
            "serve"
        }
        Some("token") => {
            args.remove(0);
            "token"
        }
        Some(a) if !a.starts_with("--") => {
            eprintln!("switchboard: unknown command {a:?} (see --help)");
            return ExitCode::from(2);
        }
        _ => "serve",
    };
    match command {
        "token" => token(args, &env),
        _ => serve(args, &env),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("switchboard: {message}");
    ExitCode::from(2)
}

fn serve(args: Vec<String>, env: &HashMap<String, String>) -> ExitCode {
    let settings = match Settings::parse(&args, env) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    logger::init(settings.log);
    match server::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
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
    let secret = match &settings.token_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => match switchboard_storage::token::load_or_create_secret(&settings.data_dir) {
            Ok(s) => s,
            Err(e) => {
                return fail(format!(
                    "cannot read the token secret in {}: {e}",
                    settings.data_dir.display()
                ))
            }
        },
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{}",
        switchboard_storage::token::mint(&secret, user, now + ttl_s)
    );
    ExitCode::SUCCESS
}
