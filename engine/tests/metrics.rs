//! `/metrics` and the slow-path forensics against the real binary over
//! real sockets (2 shards unless a test says otherwise): every scrape
//! parses as Prometheus text (`switchboard_io::metrics::parse_text`,
//! strict), the counters and histograms move as traffic flows, refused
//! connections are counted by reason, an injected slow commit gives
//! exactly one forensics line, a lagging shard one warning per episode,
//! and the Grafana dashboard and the alerts in docs/ only ask for series
//! that exist.
//! Admin requests carry the admin listener's `Host` and bearer token.
//! Every wait has a timeout.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use switchboard_io::metrics::{parse_text, Parsed};
use switchboard_shards::home_shard;

const T: Duration = Duration::from_secs(20);

/// The admin token every test server is started with.
const ADMIN_TOKEN: &str = "metrics-test-admin-token";

/// A server with the admin token and `extra` settings.
fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> Server {
    let mut all = vec![("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)];
    all.extend_from_slice(extra);
    Server::start(dir, &all)
}

/// `GET /metrics` with the admin listener's `Host` and the token: the
/// text, checked line by line, parsed.
fn scrape(server: &Server) -> Vec<Parsed> {
    let a = request(
        server.admin,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Connection: close\r\n\r\n",
            server.admin
        ),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4")
    );
    parse_text(&a.body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", a.body))
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(samples: &[Parsed], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Requests counted for `endpoint` with `outcome`, over the shards.
fn requests(samples: &[Parsed], endpoint: &str, outcome: &str) -> f64 {
    let labels = [("endpoint", endpoint), ("outcome", outcome)];
    sum(samples, "switchboard_requests_total", &labels)
}

/// Whether the scrape has samples of family `name`.
fn has_family(samples: &[Parsed], name: &str) -> bool {
    samples.iter().any(|s| s.family == name)
}

fn send(server: &Server, sid: &str, to: u64, text: &str) -> (u16, Value) {
    let to = to.to_string();
    let (status, body) = server.get_status("/send", &[("sid", sid), ("to", &to), ("text", text)]);
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn counters_and_histograms_move_as_traffic_flows() {
    let dir = temp_dir("metrics-traffic");
    let server = start(&dir, &[("SWITCHBOARD_RATE_LIMITS", "off")]);
    let before = scrape(&server);
    assert_eq!(requests(&before, "send", "ok"), 0.0);

    let alice = server.connect(ALICE, "a");
    let mut bob = server.connect(BOB, "b");
    // An ok send, a send to a stranger, a bad request, an unauthorized
    // connect, and an admin call without the token.
    assert_eq!(send(&server, &alice.sid, BOB, "hi bob").0, 200);
    let (status, v) = send(&server, &alice.sid, DAVE, "hi dave");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("not_friends"))
    );
    let (status, _) = server.get_status("/send", &[("sid", &alice.sid), ("text", "no to")]);
    assert_eq!(status, 400);
    let (status, _) = server.get_status("/connect", &[("token", "not-a-token")]);
    assert_eq!(status, 401);
    let no_token = request(
        server.admin,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.admin
        ),
    );
    assert_eq!(no_token.status, 401);
    let events = bob.poll_until(&server, T, |e| !messages(e).is_empty());
    assert_eq!(messages(&events), [(ALICE, "hi bob".to_string())]);
    // The send went through the write-ahead log, which an idle db thread
    // then checkpoints into redb: a checkpoint counted, an empty log,
    // nothing replayed at open.
    eventually(T, "the write-ahead log checkpointed", || {
        let m = scrape(&server);
        sum(&m, "switchboard_storage_checkpoints_total", &[]) >= 1.0
            && sum(&m, "switchboard_storage_wal_bytes", &[]) == 0.0
    });
    assert_eq!(
        sum(
            &scrape(&server),
            "switchboard_storage_wal_replayed_batches",
            &[]
        ),
        0.0
    );

    // Hold a poll open while the scrape counts it.
    let held = {
        let (addr, sid, seq) = (server.addr, bob.sid.clone(), bob.seq);
        std::thread::spawn(move || {
            let target = format!(
                "/poll?{}",
                encode(&[("sid", &sid), ("since", &seq.to_string()), ("wait", "3")])
            );
            request(
                addr,
                &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            )
        })
    };
    eventually(T, "a held poll on /metrics", || {
        sum(&scrape(&server), "switchboard_held_polls", &[]) >= 1.0
    });
    assert_eq!(held.join().unwrap().status, 200);

    // Histograms are published at each tick: eventually they hold every
    // request answered above.
    let mut m = Vec::new();
    eventually(T, "the histograms of the requests above", || {
        m = scrape(&server);
        let sends = sum(
            &m,
            "switchboard_request_duration_seconds_count",
            &[("endpoint", "send")],
        );
        sends >= 3.0 && sum(&m, "switchboard_poll_duration_seconds_count", &[]) >= 2.0
    });
    assert_eq!(requests(&m, "send", "ok"), 1.0);
    assert_eq!(requests(&m, "send", "not_friends"), 1.0);
    assert_eq!(requests(&m, "send", "bad_request"), 1.0);
    assert_eq!(requests(&m, "connect", "unauthorized"), 1.0);
    assert_eq!(requests(&m, "connect", "ok"), 2.0);
    assert_eq!(requests(&m, "metrics", "unauthorized"), 1.0);
    assert!(requests(&m, "poll", "ok") >= 2.0);
    // Every request counted is in its endpoint's histogram, once.
    let counted = sum(&m, "switchboard_requests_total", &[("endpoint", "send")]);
    let timed = sum(
        &m,
        "switchboard_request_duration_seconds_count",
        &[("endpoint", "send")],
    );
    assert_eq!(counted, timed);
    let inf = sum(
        &m,
        "switchboard_request_duration_seconds_bucket",
        &[("endpoint", "send"), ("le", "+Inf")],
    );
    assert_eq!(inf, timed);
    // The held poll waited about its 3 s: the poll histogram shows it
    // above 1 s, and the request histograms never hold polls.
    let polls_over_1s = sum(&m, "switchboard_poll_duration_seconds_count", &[])
        - sum(
            &m,
            "switchboard_poll_duration_seconds_bucket",
            &[("le", "1")],
        );
    assert!(polls_over_1s >= 1.0, "{polls_over_1s}");
    assert_eq!(
        sum(
            &m,
            "switchboard_request_duration_seconds_count",
            &[("endpoint", "poll")]
        ),
        0.0
    );

    // Messages, deliveries, presence, storage jobs.
    assert_eq!(sum(&m, "switchboard_messages_total", &[]), 1.0);
    assert_eq!(sum(&m, "switchboard_messages_delivered_total", &[]), 1.0);
    assert!(sum(&m, "switchboard_presence_changes_total", &[]) >= 2.0);
    assert!(sum(&m, "switchboard_deliveries_total", &[]) >= 2.0);
    let stores = sum(
        &m,
        "switchboard_storage_job_duration_seconds_count",
        &[("kind", "store_message")],
    );
    assert!(stores >= 1.0, "{stores}");
    assert!(sum(&m, "switchboard_storage_jobs_submitted_total", &[]) >= 3.0);
    assert_eq!(sum(&m, "switchboard_storage_queue_capacity", &[]), 16_384.0);
    assert_eq!(sum(&m, "switchboard_storage_threads", &[]), 2.0);
    // Alice and bob are on different shards: the mesh carried their calls.
    assert_ne!(home_shard(ALICE, 2), home_shard(BOB, 2));
    assert!(sum(&m, "switchboard_mesh_messages_total", &[]) >= 1.0);
    for pair in [("0", "1"), ("1", "0")] {
        let labels = [("from", pair.0), ("to", pair.1)];
        assert!(sum(&m, "switchboard_mesh_queue_depth", &labels) < 100.0);
        assert_eq!(sum(&m, "switchboard_mesh_dropped_total", &labels), 0.0);
    }

    // The loop lag of each shard: a tick every 50 ms, each a little late.
    for shard in ["0", "1"] {
        let labels = [("shard", shard)];
        let ticks = sum(&m, "switchboard_loop_lag_seconds_count", &labels);
        assert!(ticks >= 5.0, "shard {shard}: {ticks} ticks");
        // Under the watchdog's 10 s (a loaded test machine can make it
        // seconds).
        let last = sum(&m, "switchboard_loop_lag_last_seconds", &labels);
        assert!((0.0..10.0).contains(&last), "shard {shard}: {last}");
    }
    // The process: RSS between 1 MB and 4 GB, a handful of fds.
    let rss = sum(&m, "process_resident_memory_bytes", &[]);
    assert!((1e6..4e9).contains(&rss), "{rss}");
    let fds = sum(&m, "process_open_fds", &[]);
    assert!((5.0..10_000.0).contains(&fds), "{fds}");
    assert_eq!(sum(&m, "switchboard_build_info", &[]), 1.0);
    assert!(has_family(&m, "switchboard_sessions"));
}

#[test]
fn rate_limit_hits_are_counted_by_endpoint() {
    let dir = temp_dir("metrics-rate");
    let server = start(&dir, &[("SWITCHBOARD_RATE_SEND", "1/s,burst=2")]);
    let alice = server.connect(ALICE, "a");
    let limited = (0..6)
        .filter(|i| send(&server, &alice.sid, BOB, &format!("m{i}")).0 == 429)
        .count();
    assert!(limited >= 3, "{limited}");
    let m = scrape(&server);
    assert_eq!(requests(&m, "send", "rate_limited"), limited as f64);
    eventually(
        T,
        "the core's rate_limited counter (copied at a tick)",
        || sum(&scrape(&server), "switchboard_rate_limited_total", &[]) == limited as f64,
    );
}

/// A connection from `from` to `to` that sends nothing.
fn silent(from: &str, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(T)).unwrap();
    stream
}

/// Whether `stream` is still open after `wait` (no EOF, no reset).
fn still_open(stream: &mut TcpStream, wait: Duration) -> bool {
    use std::io::ErrorKind;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    let open = matches!(
        stream.read(&mut byte),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    );
    stream.set_read_timeout(Some(T)).unwrap();
    open
}

/// Whether the server closed `stream` (read EOF or a reset) within `T`.
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn refused_connections_are_counted_by_reason() {
    let dir = temp_dir("metrics-refused");
    // One shard, so the caps are exact: two connections per address,
    // three in all, one admin connection; silent ones closed after 1 s.
    let server = start(
        &dir,
        &[
            ("SWITCHBOARD_SHARDS", "1"),
            ("SWITCHBOARD_CONNECTIONS_PER_ADDRESS_MAX", "2"),
            ("SWITCHBOARD_CONNECTIONS_MAX", "3"),
            ("SWITCHBOARD_ADMIN_CONNECTIONS_MAX", "1"),
            ("SWITCHBOARD_FIRST_BYTE_TIMEOUT_MS", "1000"),
        ],
    );
    let kept: Vec<TcpStream> = vec![
        silent("127.0.0.1", server.addr),
        silent("127.0.0.1", server.addr),
    ];
    // Admitted connections are counted as they are accepted.
    eventually(T, "two connections open", || {
        let m = scrape(&server);
        sum(
            &m,
            "switchboard_connections_open",
            &[("listener", "client")],
        ) == 2.0
    });
    let mut per_address = silent("127.0.0.1", server.addr);
    assert!(closed(&mut per_address), "the third from 127.0.0.1");
    let third = silent("127.0.0.2", server.addr);
    std::thread::sleep(Duration::from_millis(100));
    let mut over = silent("127.0.0.3", server.addr);
    assert!(closed(&mut over), "the fourth in all");
    // The one admin place: a scrape's connection gives it back a moment
    // after its answer (the socket closes first), and the gauge that says
    // so can only be read by a scrape, which takes that place itself. So
    // the silent admin connection tries until it is admitted: a refused
    // one is closed at once (and counted), an admitted one stays open
    // until its first-byte timeout (1 s).
    let mut refused_early = 0;
    let idle_admin = loop {
        let mut c = silent("127.0.0.1", server.admin);
        if still_open(&mut c, Duration::from_millis(300)) {
            break c;
        }
        refused_early += 1;
        assert!(refused_early < 20, "the admin place was never given back");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut admin = silent("127.0.0.1", server.admin);
    assert!(closed(&mut admin), "the second admin connection");
    // The silent ones (three client, one admin) close at the first-byte
    // timeout; only then has the admin listener room for a scrape (one
    // before would be refused, and counted).
    std::thread::sleep(Duration::from_millis(1_500));
    let refused = |m: &[Parsed], reason| {
        sum(
            m,
            "switchboard_connections_refused_total",
            &[("reason", reason)],
        )
    };
    let mut m = Vec::new();
    eventually(T, "the first-byte timeouts", || {
        m = scrape(&server);
        refused(&m, "first_byte_timeout") == 4.0
    });
    assert_eq!(refused(&m, "per_address"), 1.0);
    assert_eq!(refused(&m, "connections_max"), 1.0);
    assert_eq!(refused(&m, "admin"), 1.0 + refused_early as f64);
    assert_eq!(refused(&m, "tls_handshake"), 0.0);
    // The old per-kind counters agree.
    assert_eq!(sum(&m, "switchboard_refused_per_address_total", &[]), 1.0);
    assert_eq!(sum(&m, "switchboard_refused_connections_total", &[]), 1.0);
    let admin_total = sum(&m, "switchboard_refused_admin_total", &[]);
    assert_eq!(admin_total, 1.0 + refused_early as f64);
    assert_eq!(
        sum(
            &m,
            "switchboard_connections_open",
            &[("listener", "client")]
        ),
        0.0
    );
    drop((kept, third, idle_admin));
}

crate::both_stores!(a_slow_commit_is_logged_once_with_where_it_waited);

/// The commit of alice's send stalls 1.5 s after its deadline check
/// (storage timeout 1 s; the engine waits 2 s, so the send is answered
/// `ok`, late): one line, naming the job, its user, the db thread, the
/// commit it waited for and how long, and nothing else about it.
fn a_slow_commit_is_logged_once_with_where_it_waited(backend: &Backend) {
    let dir = temp_dir("metrics-slow-commit");
    let mut extra = vec![
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SWITCHBOARD_STORAGE_TIMEOUT_MS", "1000"),
        ("SWITCHBOARD_FAULT_COMMIT_STALL_MS", "1500"),
        ("SWITCHBOARD_FAULT_COMMIT_STALL_COUNT", "1"),
    ];
    extra.push(("SWITCHBOARD_RATE_LIMITS", "off"));
    let server = backend.start(&dir, &extra);
    let alice = server.connect(ALICE, "a");
    let asked = Instant::now();
    let (status, v) = send(&server, &alice.sid, BOB, "slow");
    assert_eq!(status, 200, "{v}");
    assert!(asked.elapsed() >= Duration::from_millis(1_400));
    // db-watch looks every 100 ms; give a second line time to appear.
    std::thread::sleep(Duration::from_millis(500));
    let lines = server.log_lines("past its deadline");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert!(line.contains("store_message for user 1 "), "{line}");
    assert!(line.contains(": db-"), "{line}");
    let commit = match backend.mysql() {
        None => "for the write-ahead log (its fdatasync)",
        Some(_) => "for the commit statement `COMMIT`",
    };
    assert!(line.contains(commit), "{line}");
    assert!(line.contains("jobs ahead of it at submit"), "{line}");
    // How long: at least the 1 s to its deadline, at most the stall.
    let waited: u64 = line
        .split(" waited ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no wait in {line}"));
    assert!((1_000..=1_600).contains(&waited), "{waited} in {line}");
    // Nothing else in the log says anything about that job.
    let about = server.log_lines("store_message");
    assert_eq!(about.len(), 1, "{about:#?}");
    let m = scrape(&server);
    assert_eq!(sum(&m, "switchboard_storage_late_batches_total", &[]), 1.0);
    // The pool: MySQL's sizes; the embedded store has none.
    if backend.mysql().is_some() {
        let max = sum(&m, "switchboard_mysql_pool_connections_max", &[]);
        let open = sum(&m, "switchboard_mysql_pool_connections", &[]);
        assert!(max >= 2.0 && (1.0..=max).contains(&open), "{open} of {max}");
        assert_eq!(sum(&m, "switchboard_mysql_pool_waiting", &[]), 0.0);
    } else {
        assert!(!has_family(&m, "switchboard_mysql_pool_connections"));
    }
}

/// The shard's lines in the server's log, in order: its lag warnings
/// (`true`) and its episodes' ends (`false`).
fn lag_lines(server: &Server, shard: &str) -> Vec<(bool, String)> {
    let warned = format!("{shard}: loop lagging");
    let ended = format!("{shard}: loop lag back under");
    let log = server.log.lock().unwrap();
    log.iter()
        .filter_map(|l| match () {
            () if l.contains(&warned) => Some((true, l.clone())),
            () if l.contains(&ended) => Some((false, l.clone())),
            () => None,
        })
        .collect()
}

/// Alice's connects block her conn shard 0.8 s each (a test fault), twice
/// in a row: one episode of that shard, so one warning, then, 5 s after
/// the last late tick, one line saying it ended. (Another shard may lag
/// too on a loaded machine: only the stalled shards' lines are counted.)
#[test]
fn a_lagging_shard_is_warned_about_once_per_episode() {
    let dir = temp_dir("metrics-lag");
    let alice = ALICE.to_string();
    let server = start(
        &dir,
        &[
            ("SWITCHBOARD_LOG", "info"),
            ("SWITCHBOARD_LOOP_LAG_WARN_MS", "200"),
            ("SWITCHBOARD_FAULT_STALL_SHARD_USER", &alice),
            ("SWITCHBOARD_FAULT_STALL_SHARD_MS", "800"),
        ],
    );
    for tab in ["a1", "a2"] {
        server.connect(ALICE, tab);
    }
    // "fault injection: a connect of user 1 blocks shard-N for 800 ms"
    let mut stalled: Vec<String> = server
        .log_lines("fault injection: a connect of user")
        .iter()
        .filter_map(|l| {
            l.split(" blocks ")
                .nth(1)?
                .split(' ')
                .next()
                .map(String::from)
        })
        .collect();
    stalled.dedup();
    assert!(!stalled.is_empty());
    for shard in &stalled {
        eventually(T, "the episode's end", || {
            lag_lines(&server, shard).iter().any(|(warn, _)| !warn)
        });
        let lines = lag_lines(&server, shard);
        // Its first episode: one warning, then its end.
        let first_end = lines.iter().position(|(warn, _)| !warn).unwrap();
        assert_eq!(first_end, 1, "{lines:#?}");
        assert!(lines[0].1.contains("(bound 200 ms"), "{}", lines[0].1);
        assert!(lines[1].1.contains("back under 200 ms"), "{}", lines[1].1);
    }
    // The histogram has the stalls: ticks over half a second late.
    let m = scrape(&server);
    let late = sum(&m, "switchboard_loop_lag_seconds_count", &[])
        - sum(&m, "switchboard_loop_lag_seconds_bucket", &[("le", "0.5")]);
    assert!(late >= 2.0, "{late}");
}

/// docs/grafana-dashboard.json and the alert table of docs/operations.md
/// ask only for series `/metrics` has: the dashboard is valid JSON with a
/// Prometheus datasource variable; every metric either names is a
/// counter or gauge family on `/metrics`, or a histogram's `_bucket`,
/// `_sum` or `_count` (a histogram's own name is no series: an alert on
/// `max(switchboard_loop_lag_seconds)` never fires); and what `rate()` or
/// `increase()` takes is a counter or a histogram's series.
#[test]
fn the_dashboard_and_the_alerts_ask_only_for_series_that_exist() {
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");
    let text = std::fs::read_to_string(format!("{docs}/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("valid JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let operations = std::fs::read_to_string(format!("{docs}/operations.md")).unwrap();
    let alerts = alert_exprs(&operations);
    assert!(alerts.len() >= 10, "{alerts:#?}");

    let dir = temp_dir("metrics-dashboard");
    let server = start(&dir, &[]);
    scrape(&server); // parses
                     // Every family's TYPE line is there, with or without samples (the
                     // MySQL pool's have none on the embedded store).
    let text = request(
        server.admin,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Connection: close\r\n\r\n",
            server.admin
        ),
    )
    .body;
    let typed: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    for (source, exprs) in [("the dashboard", &exprs), ("operations.md", &alerts)] {
        let mut named = 0;
        for expr in exprs {
            for (name, rated) in metric_names(expr) {
                named += 1;
                if let Err(e) = check_series(&typed, &name, rated) {
                    panic!("{source} asks for {name} (in `{expr}`): {e}");
                }
            }
        }
        assert!(
            named >= exprs.len(),
            "{named} names in {} queries",
            exprs.len()
        );
    }
}

/// Whether `name` is a series of a family typed on `/metrics` (`typed`:
/// name and kind of each `# TYPE` line), and one `rate()` may take when
/// `rated`.
fn check_series(typed: &[(&str, &str)], name: &str, rated: bool) -> Result<(), String> {
    let kind_of = |name: &str| typed.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
    let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(kind_of)
            .is_some_and(|k| k == "histogram")
    });
    match kind_of(name) {
        _ if histogram_series => Ok(()),
        Some("histogram") => Err("a histogram: only its _bucket, _sum, _count are series".into()),
        Some("gauge") if rated => Err("a gauge under rate()/increase()".into()),
        Some(_) => Ok(()),
        None => Err("not on /metrics".into()),
    }
}

/// The PromQL of each row of the alert table of docs/operations.md: the
/// first `code` span of its second column.
fn alert_exprs(operations: &str) -> Vec<String> {
    let section = operations
        .split("## ")
        .find(|s| s.contains("What to alert on"))
        .expect("an alert section");
    section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| alert") && !l.starts_with("| ---"))
        .map(|row| {
            let column = row.split(" | ").nth(1).unwrap_or_else(|| panic!("{row}"));
            let expr = column.split('`').nth(1);
            expr.unwrap_or_else(|| panic!("no expression in {row}"))
                .to_string()
        })
        .collect()
}

/// Every `expr` in the dashboard's panels.
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

/// The metric names in a PromQL expression (identifiers starting with
/// `switchboard_` or `process_`), each with whether it is what a
/// `rate(` or `increase(` right before it takes.
fn metric_names(expr: &str) -> Vec<(String, bool)> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("switchboard_") || word.starts_with("process_") {
                let before = expr[..start].trim_end();
                let rated = before.ends_with("rate(") || before.ends_with("increase(");
                names.push((word.to_string(), rated));
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_and_series_checks() {
    let names = metric_names("max(switchboard_a{x=\"switchboard\"}) + rate(process_b[5m])");
    assert_eq!(
        names,
        [("switchboard_a".into(), false), ("process_b".into(), true)]
    );
    let typed = [("h", "histogram"), ("g", "gauge"), ("c", "counter")];
    assert!(check_series(&typed, "h", false).is_err());
    assert!(check_series(&typed, "h_bucket", true).is_ok());
    assert!(check_series(&typed, "g", true).is_err());
    assert!(check_series(&typed, "g", false).is_ok());
    assert!(check_series(&typed, "c", true).is_ok());
    assert!(check_series(&typed, "c_bucket", false).is_err());
    assert!(check_series(&typed, "x", false).is_err());
}

/// A call whose home shard does not answer by the call's deadline: the
/// conn shard logs one line saying what it waited for (the call and its
/// user), where (conn shard → home shard over the mesh) and how long.
/// Alice's connect blocks her conn shard for 7.5 s (a test fault; the
/// watchdog's bound is raised past it); meanwhile `/typing` calls of a
/// user homed there, on new connections, reach it from the other shard
/// and wait out their deadline (storage timeout 0.1 s + 1 s slack + 5 s).
#[test]
fn a_call_past_its_deadline_is_logged_with_where_it_waited() {
    let dir = temp_dir("metrics-late-call");
    let alice = ALICE.to_string();
    let server = start(
        &dir,
        &[
            ("SWITCHBOARD_RATE_LIMITS", "off"),
            ("SWITCHBOARD_STORAGE_TIMEOUT_MS", "100"),
            ("SWITCHBOARD_FAULT_STALL_SHARD_USER", &alice),
            ("SWITCHBOARD_FAULT_STALL_SHARD_MS", "7500"),
            ("SWITCHBOARD_FAULT_SHARD_STALL_MS_MAX", "30000"),
        ],
    );
    let others: Vec<(u64, Tab)> = [BOB, CAROL, DAVE]
        .into_iter()
        .map(|u| (u, server.connect(u, "t")))
        .collect();
    let addr = server.addr;
    let stall = std::thread::spawn(move || {
        let target = format!("/connect?{}", encode(&[("token", &token(ALICE))]));
        request(
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    });
    let mut stalled = String::new();
    eventually(T, "the stall", || {
        stalled = server
            .log_lines("fault injection: a connect of user")
            .first()
            .and_then(|l| {
                l.split(" blocks shard-")
                    .nth(1)?
                    .split(' ')
                    .next()
                    .map(String::from)
            })
            .unwrap_or_default();
        !stalled.is_empty()
    });
    let home: usize = stalled.parse().unwrap();
    let Some((user, tab)) = others.iter().find(|(u, _)| home_shard(*u, 2) == home) else {
        panic!("no test user homed on shard-{home}");
    };
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let params = [("sid", tab.sid.as_str()), ("to", "1"), ("state", "typing")];
            let target = format!("/typing?{}", encode(&params));
            std::thread::spawn(move || {
                request(
                    addr,
                    &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
                )
            })
        })
        .collect();
    let statuses: Vec<u16> = calls
        .into_iter()
        .map(|c| c.join().unwrap().status)
        .collect();
    assert_eq!(stall.join().unwrap().status, 200);
    let other = 1 - home;
    let route = format!("over the mesh (conn shard-{other} → home shard-{home}");
    // One line per timed-out call, up to the logger's limit of a call
    // site (the rest are counted into a later line). Those whose
    // connection landed on the stalled shard ran there after the stall.
    let timeouts = statuses.iter().filter(|s| **s == 503).count();
    assert!(timeouts >= 1, "{statuses:?}");
    let expected = timeouts.min(switchboard_engine::limits::LOG_REPEAT_BURST as usize);
    let said = "had no answer from its home shard";
    eventually(T, "the late calls' lines", || {
        server.log_lines(said).len() >= expected
    });
    std::thread::sleep(Duration::from_millis(300));
    let lines = server.log_lines(said);
    assert_eq!(lines.len(), expected, "{statuses:?} {lines:#?}");
    let line = &lines[0];
    assert!(
        line.contains(&format!(
            "typing for user {user} had no answer from its home shard-{home} after "
        )),
        "{line}"
    );
    assert!(line.contains(&route), "{line}");
    assert!(line.contains("(its deadline: 6100 ms)"), "{line}");
    // And that the home shard was stuck: no tick for seconds.
    let since: u64 = line
        .split(&format!("shard-{home} last ticked "))
        .nth(1)
        .and_then(|rest| rest.split(" ms ago").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no last tick in {line}"));
    assert!(since >= 5_000, "{line}");
    // Every line is one of those calls, counted among the timeouts.
    for line in &lines {
        let about = format!("typing for user {user} had no answer from its home shard-{home}");
        assert!(line.contains(&about) && line.contains(" in all)"), "{line}");
    }
}
