//! History insert throughput against a real MySQL/MariaDB: group commit
//! (every send waiting at once goes into one transaction, one multi-row
//! INSERT) against one transaction with one INSERT per message — the same
//! `Store`, the same pool and threads, only `write_batch_max` differs (256
//! and 1).
//!
//! Closed loop: `--concurrency C` client threads each keep one send in
//! flight (submit, wait for the durable answer, repeat) until `--messages
//! N` are stored. Each run gets a fresh database (created, migrated,
//! dropped). Prints one line per run and, per mode, the median run.
//!
//! ```text
//! cargo run --release -p switchboard-storage --example mysql_group_commit -- \
//!     --url mysql://root@127.0.0.1:3306 --messages 20000 --concurrency 64 --runs 3
//! ```

use hdrhistogram::Histogram;
use mysql::prelude::Queryable;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_shards::model::{StorageJob, StorageOutput};
use switchboard_storage::{MysqlConfig, Store};

/// Command-line settings.
struct Args {
    /// The MySQL server, without a database.
    url: String,
    /// Messages stored per run.
    messages: u64,
    /// Client threads, each with one send in flight.
    concurrency: usize,
    /// Runs per mode.
    runs: usize,
    /// Pooled connections (and db threads).
    pool: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: "mysql://root@127.0.0.1:3306".into(),
        messages: 20_000,
        concurrency: 64,
        runs: 3,
        pool: switchboard_storage::limits::mysql_pool_size_default(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        let num = || value.parse().expect("a number");
        match pair[0].as_str() {
            "--url" => a.url = value.trim_end_matches('/').to_string(),
            "--messages" => a.messages = num() as u64,
            "--concurrency" => a.concurrency = num(),
            "--runs" => a.runs = num(),
            "--pool" => a.pool = num(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// One run's results.
struct Run {
    /// Messages per second, from first submit to last answer.
    rate: f64,
    /// Transactions committed.
    commits: u64,
    /// Answer latency of each send, µs.
    latency_us: Histogram<u64>,
}

fn run_once(a: &Args, batch_max: usize, run: usize) -> Run {
    let name = format!("sb_bench_{}_{batch_max}_{run}", std::process::id());
    let mut admin = mysql::Conn::new(mysql::Opts::from_url(&a.url).unwrap()).unwrap();
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin.query_drop(format!("CREATE DATABASE {name}")).unwrap();
    let url = format!("{}/{name}", a.url);
    switchboard_storage::mysql::migrate(&url).unwrap();
    let mut c = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
    for ddl in switchboard_storage::mysql::schema::DIRECTORY_TABLES {
        c.query_drop(ddl).unwrap();
    }
    let mut config = MysqlConfig::new(&url);
    config.pool_size = a.pool;
    config.write_batch_max = batch_max;
    config.job_timeout_ms = 30_000;
    let store = Store::open_mysql(config).unwrap();
    // Let the pool open its connections before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let next = AtomicU64::new(0);
    let before = store.stats();
    let start = Instant::now();
    let latency_us = std::thread::scope(|s| {
        let workers: Vec<_> = (0..a.concurrency)
            .map(|t| {
                let (store, next) = (&store, &next);
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    while next.fetch_add(1, Ordering::Relaxed) < a.messages {
                        // 1000 users in 500 pairs, so counters are spread.
                        let from = 1 + (t as u64 * 7) % 1000;
                        let to = if from.is_multiple_of(2) {
                            from - 1
                        } else {
                            from + 1
                        };
                        let job = StorageJob::StoreMessage {
                            from,
                            to,
                            text: Arc::from(
                                "a message of about the usual length, sixty characters",
                            ),
                            cid: None,
                            ts: 1_700_000_000_000,
                        };
                        let t0 = Instant::now();
                        let deadline = t0 + Duration::from_secs(30);
                        let result = futures_lite::future::block_on(
                            store.submit(job, deadline).expect("submit"),
                        );
                        assert!(
                            matches!(result, Ok(StorageOutput::Stored { .. })),
                            "{result:?}"
                        );
                        h.record(t0.elapsed().as_micros() as u64).unwrap();
                    }
                    h
                })
            })
            .collect();
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for w in workers {
            all.add(w.join().unwrap()).unwrap();
        }
        all
    });
    let elapsed = start.elapsed();
    let commits = store.stats().write_batches - before.write_batches;
    store.shutdown();
    let stored: u64 = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap())
        .unwrap()
        .query_first("SELECT COUNT(*) FROM sb_messages")
        .unwrap()
        .unwrap();
    assert_eq!(stored, a.messages, "every answered send is stored");
    admin.query_drop(format!("DROP DATABASE {name}")).unwrap();
    Run {
        rate: a.messages as f64 / elapsed.as_secs_f64(),
        commits,
        latency_us,
    }
}

fn row(label: &str, r: &Run, messages: u64) -> String {
    let h = &r.latency_us;
    format!(
        "| {label} | {messages} | {:.0} | {} | {:.1} | {} | {} | {} | {} | {} |",
        r.rate,
        r.commits,
        messages as f64 / r.commits.max(1) as f64,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

fn main() {
    let a = args();
    println!(
        "messages {} per run, concurrency {}, pool {} connections, {} runs per mode, {}",
        a.messages, a.concurrency, a.pool, a.runs, a.url
    );
    let header = "| mode | sends | sends/s | commits | sends/commit | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";
    let mut medians = Vec::new();
    for (label, batch_max) in [
        ("group commit (batch ≤ 256)", 256),
        ("one INSERT per message", 1),
    ] {
        let mut runs: Vec<Run> = (0..a.runs)
            .map(|i| {
                let r = run_once(&a, batch_max, i);
                println!(
                    "{}",
                    row(&format!("{label}, run {}", i + 1), &r, a.messages)
                );
                r
            })
            .collect();
        runs.sort_by(|x, y| x.rate.total_cmp(&y.rate));
        medians.push(row(
            &format!("{label}, median run"),
            &runs.swap_remove(runs.len() / 2),
            a.messages,
        ));
    }
    println!("\n{header}");
    for m in medians {
        println!("{m}");
    }
}
