//! `switchboard-bench fsync`: what one durable append costs on this
//! machine's disk, the floor under a message's CPU when history is made
//! durable before each acknowledgement and the sends come one at a time
//! (one group commit each). It does what the embedded store's write-ahead
//! log does per batch: a small record written into a preallocated,
//! zero-filled file, then `fdatasync`; and reports the wall time and this
//! thread's CPU time (user + system) per append, medians of `--runs`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub const USAGE: &str = "
  switchboard-bench fsync [--dir DIR] [--count N] [--runs R] [--bytes B]
        the cost of one durable append as the embedded store's log makes it (a B-byte
        record, default 300, into a preallocated file in DIR, default ., then fdatasync):
        wall and CPU microseconds per append, medians of R runs (3) of N appends (2000)
";

/// This thread's CPU time (user + system).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

pub fn cmd(args: &[String]) -> Result<ExitCode, String> {
    let mut dir = PathBuf::from(".");
    let (mut count, mut runs, mut bytes) = (2000usize, 3usize, 300usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--dir" => dir = PathBuf::from(value),
            "--count" => count = number()?.max(1),
            "--runs" => runs = number()?.max(1),
            "--bytes" => bytes = number()?.clamp(1, 1 << 20),
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    let path = dir.join(format!(
        "switchboard-bench-fsync-{}.tmp",
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let result = (|| -> Result<ExitCode, String> {
        // Preallocated and written, as the log grows: an append then
        // changes no metadata.
        let size = count
            .checked_mul(bytes)
            .filter(|&s| s <= 1 << 30)
            .ok_or("--count × --bytes must be at most 1 GiB")?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len());
            file.write_all(&zeros[..n]).map_err(|e| e.to_string())?;
            left -= n;
        }
        file.sync_all().map_err(|e| e.to_string())?;
        let record = vec![b'x'; bytes];
        let (mut walls, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (wall, cpu) = (Instant::now(), thread_cpu());
            for i in 0..count {
                file.write_all_at(&record, (i * bytes) as u64)
                    .map_err(|e| e.to_string())?;
                file.sync_data().map_err(|e| e.to_string())?;
            }
            walls.push(wall.elapsed().as_secs_f64() * 1e6 / count as f64);
            cpus.push((thread_cpu() - cpu).as_secs_f64() * 1e6 / count as f64);
        }
        let in_order: Vec<String> = cpus.iter().map(|c| format!("{c:.1}")).collect();
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!(
            "fsync: {runs} runs of {count} appends of {bytes} bytes + fdatasync in {}: \
             median {:.1} µs wall, {:.1} µs CPU per append (this thread, not the kernel's \
             journal thread; runs in order: {})",
            dir.display(),
            median(&mut walls),
            median(&mut cpus),
            in_order.join(" ")
        );
        Ok(ExitCode::SUCCESS)
    })();
    let _ = std::fs::remove_file(&path);
    result
}
