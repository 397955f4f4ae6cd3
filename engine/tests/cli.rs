//! The `switchboard` binary's command line: `--version`, `--help`, core
//! lists refused at start, shards pinned where the list says, and
//! `switchboard tune`'s exit statuses.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;
use switchboard_engine::cores;

/// Runs the binary with `args` and only `env` in its environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_prints_the_version_and_the_commit() {
    let want = format!("switchboard {}", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        let out = run(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let text = stdout(&out);
        let line = text.trim_end();
        assert_eq!(text.lines().count(), 1, "{text}");
        // The commit when the build knew one: `switchboard 0.1.0 (git abc1234)`.
        match line.strip_prefix(&want) {
            Some("") => {}
            Some(rest) => {
                let commit = rest
                    .strip_prefix(" (git ")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                    "{line:?}"
                );
            }
            None => panic!("{line:?} does not start with {want:?}"),
        }
    }
    // Built from a git checkout (as here and in CI), it names the commit.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        let commit = stdout(&head).trim().to_string();
        let text = stdout(&run(&["--version"], &[]));
        assert!(
            text.contains(&format!("(git {commit})")),
            "{text} vs {commit}"
        );
    }
}

#[test]
fn help_shows_placeholders_commands_and_the_admin_endpoints() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    for want in [
        "--listen ADDR ",
        "--shards N ",
        "--shard-cores LIST ",
        "--data-dir DIR ",
        "--admin-token TOKEN ",
        "--demo [on|off|auto] ",
        "switchboard tune [--strict]",
        "switchboard --version, -V",
        "GET  /health ",
        "GET  /metrics ",
        "POST /roster-changed?user=ID ",
        "POST /kick?user=ID ",
        "POST /trace?user=ID&level=debug|off ",
        "GET  /trace?user=ID ",
    ] {
        assert!(text.contains(want), "--help shows {want:?}:\n{text}");
    }
}

/// A core list `serve` cannot follow stops it before anything opens:
/// exit 2 and one line saying why.
#[test]
fn a_bad_shard_core_list_is_refused_with_exit_2() {
    let dir = temp_dir("cli-cores");
    let dir = dir.to_str().unwrap();
    let allowed = cores::allowed();
    let too_many = (allowed.len() + 1).to_string();
    // The first core the runner allows (core 0 need not be one).
    let c = allowed[0];
    let (twice, one, bad) = (format!("{c},{c}"), c.to_string(), format!("{c}-x"));
    let (twice_error, bad_error) = (
        format!("SWITCHBOARD_SHARD_CORES lists core {c} twice"),
        format!("SWITCHBOARD_SHARD_CORES: \"{c}-x\" is not a core number"),
    );
    for (args, env, needle) in [
        (
            &[][..],
            &[("SWITCHBOARD_SHARD_CORES", twice.as_str())][..],
            twice_error.as_str(),
        ),
        (
            &["--shard-cores", "8191"][..],
            &[][..],
            "SWITCHBOARD_SHARD_CORES lists core 8191, which this process may not run on",
        ),
        (
            &["--shard-cores", one.as_str(), "--shards", "2"][..],
            &[][..],
            "SWITCHBOARD_SHARDS is 2 but SWITCHBOARD_SHARD_CORES lists 1 cores",
        ),
        (
            &["--shard-cores", bad.as_str()][..],
            &[][..],
            bad_error.as_str(),
        ),
        (
            &["--shards", too_many.as_str()][..],
            &[][..],
            "set SWITCHBOARD_SHARDS_OVERCOMMIT=on",
        ),
    ] {
        let env = [
            &[
                ("SWITCHBOARD_LISTEN", "127.0.0.1:0"),
                ("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:0"),
                ("SWITCHBOARD_DATA_DIR", dir),
            ][..],
            env,
        ]
        .concat();
        let out = run(args, &env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {out:?}");
        let err = stderr(&out);
        assert!(err.starts_with("switchboard: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(
        std::fs::read_dir(dir).unwrap().next().is_none(),
        "nothing was created in the data folder"
    );
}

/// `SWITCHBOARD_SHARD_CORES=1,0` (on two cores): the thread `shard-0` may
/// run on core 1 only, `shard-1` on core 0 only.
#[test]
fn shards_are_pinned_to_the_listed_cores() {
    // The last two allowed cores in reverse (one on a one-core machine).
    let list: Vec<usize> = cores::allowed().iter().rev().take(2).copied().collect();
    let dir = temp_dir("cli-pinned");
    let shards = list.len().to_string();
    let server = Server::start(
        &dir,
        &[
            ("SWITCHBOARD_SHARDS", &shards),
            ("SWITCHBOARD_SHARD_CORES", &cores::format_list(&list)),
        ],
    );
    let mut pinned = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap()
        };
        // glommio names an executor's threads `shard-N-ID` (its own and
        // its blocking helper's); both are pinned.
        let name = field("Name:");
        if let Some(rest) = name.strip_prefix("shard-") {
            let shard: usize = rest.split('-').next().unwrap().parse().unwrap();
            pinned.push((shard, field("Cpus_allowed_list:")));
        }
    }
    pinned.sort();
    pinned.dedup();
    let want: Vec<(usize, String)> = list
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.to_string()))
        .collect();
    assert_eq!(pinned, want);
}

#[test]
fn tune_prints_a_layout_and_exits_1_on_warnings_only_when_strict() {
    let out = run(&["tune"], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    for want in [
        "Machine\n",
        "\nLayout (",
        "SWITCHBOARD_SHARD_CORES=",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "CPUAffinity=",
        "\nWarnings\n",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    // More shards than cores is a warning for tune (serve refuses it):
    // exit 0, or 1 with --strict.
    let too_many = (cores::allowed().len() + 1).to_string();
    for (strict, code) in [(false, 0), (true, 1)] {
        let mut args = vec!["tune", "--shards", too_many.as_str()];
        if strict {
            args.push("--strict");
        }
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        assert!(stdout(&out).contains("! serve refuses these settings"));
    }
    let out = run(&["tune", "--shards", "x"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("SWITCHBOARD_SHARDS"));
}

#[test]
fn token_signs_with_the_servers_secret_or_says_where_it_found_none() {
    // A folder with no server: no secret is made, and the error names the
    // absolute path it looked at.
    let empty = temp_dir("token-none");
    let elsewhere = empty.join("data");
    let dir = elsewhere.display().to_string();
    let out = run(&["token", "1"], &[("SWITCHBOARD_DATA_DIR", &dir)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("no token secret at {dir}/token_secret")),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    assert!(
        !elsewhere.join("token_secret").exists(),
        "a secret was made"
    );

    // A server on its own secret (none configured): the command, given the
    // same data folder, signs a token that server accepts.
    let data = temp_dir("token-server");
    let server = Server::start_env(
        &data,
        vec![
            ("SWITCHBOARD_LISTEN".into(), "127.0.0.1:0".into()),
            ("SWITCHBOARD_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("SWITCHBOARD_SHARDS".into(), "1".into()),
            ("SWITCHBOARD_DATA_DIR".into(), data.display().to_string()),
        ],
    );
    let dir = data.display().to_string();
    let out = run(&["token", "2"], &[("SWITCHBOARD_DATA_DIR", &dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("signed with the secret in {dir}/token_secret")),
        "{}",
        stderr(&out)
    );
    let token = stdout(&out).trim().to_string();
    let v = server.get("/connect", &[("token", &token)]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["user"]["id"], 2, "{v}");
}
