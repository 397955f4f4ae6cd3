//! Per-phase latency of the paths that cross threads, measured in
//! isolation (like glommio's `foreign_wake` bench):
//!
//! - **mesh**: shard 0 → shard 1 → shard 0 over the glommio channel mesh
//!   the server uses (a forwarded request and its reply);
//! - **storage read**: executor → `db-N` thread → executor, a `LoadRoster`
//!   job on the embedded store (no disk write);
//! - **storage write**: the same with `StoreMessage` (one group commit with
//!   fsync per job here: the jobs go one at a time).
//!
//! `cargo run --release -p switchboard-engine --example phases [-- N]`
//! (N round trips per phase, default 20000; writes use N/20).

use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use switchboard_engine::mesh;
use switchboard_shards::model::StorageJob;
use switchboard_storage::{EmbeddedConfig, Store};

fn table(name: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<16} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        h.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N is a number"))
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("switchboard-phases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open_embedded(EmbeddedConfig::new(&dir)).expect("open the embedded store");
    let mut handles = Vec::new();
    for (i, ends) in mesh::build::<(u64, Instant)>(2, 1024)
        .into_iter()
        .enumerate()
    {
        let store = store.clone();
        handles.push(
            LocalExecutorBuilder::new(Placement::Fixed(i % 2))
                .name(&format!("phase-{i}"))
                .spawn(move || async move {
                    let me = ends.shard();
                    let mut mesh = ends.connect().await;
                    let tx = mesh.senders[1 - me].take().expect("a channel to the peer");
                    let (_, rx) = mesh.receivers.pop().expect("one peer");
                    if me == 1 {
                        // Echo every message back.
                        while let Some(m) = rx.recv().await {
                            if tx.send(m).await.is_err() {
                                break;
                            }
                        }
                        return None;
                    }
                    let ns = |d: Duration| d.as_nanos() as u64;
                    let mut mesh_h = Histogram::<u64>::new(3).unwrap();
                    for k in 0..n {
                        let start = Instant::now();
                        tx.send((k, start)).await.expect("send");
                        let (back, _) = rx.recv().await.expect("echo");
                        assert_eq!(back, k);
                        mesh_h.record(ns(start.elapsed())).unwrap();
                    }
                    drop(tx);
                    let deadline = || Instant::now() + Duration::from_secs(10);
                    let mut read_h = Histogram::<u64>::new(3).unwrap();
                    for _ in 0..n {
                        let start = Instant::now();
                        let job = StorageJob::LoadRoster { user: 1 };
                        store
                            .submit(job, deadline())
                            .expect("submit")
                            .await
                            .expect("read");
                        read_h.record(ns(start.elapsed())).unwrap();
                    }
                    let mut write_h = Histogram::<u64>::new(3).unwrap();
                    for k in 0..(n / 20).max(1) {
                        let start = Instant::now();
                        let job = StorageJob::StoreMessage {
                            from: 1,
                            to: 2,
                            text: format!("phase {k}").into(),
                            cid: None,
                            ts: 0,
                        };
                        store
                            .submit(job, deadline())
                            .expect("submit")
                            .await
                            .expect("write");
                        write_h.record(ns(start.elapsed())).unwrap();
                    }
                    Some((mesh_h, read_h, write_h))
                })
                .expect("executor"),
        );
    }
    let mut results = None;
    for h in handles {
        if let Some(r) = h.join().expect("executor") {
            results = Some(r);
        }
    }
    let (mesh_h, read_h, write_h) = results.expect("shard 0 measured");
    println!(
        "{:<16} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    table("mesh round trip", &mesh_h);
    table("storage read", &read_h);
    table("storage write", &write_h);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
