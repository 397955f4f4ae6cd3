//! Server CPU time and memory from `/proc/<pid>` (Linux).

use std::time::Instant;

/// One look at the server process.
#[derive(Clone, Debug)]
pub struct ServerSample {
    /// Seconds since the coordinator started (for the CPU share).
    pub at_s: f64,
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Resident set now, and its peak (VmHWM).
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    /// Open file descriptors (sockets, mostly): proof of how many
    /// connections the server held.
    pub fds: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds from a `/proc/<pid>/stat` line: fields 14
/// and 15, counted after the parenthesised command name (which may hold
/// spaces). With `children`, fields 16 and 17 (waited-for children) too.
pub fn cpu_s_from_stat(stat: &str, children: bool) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse::<f64>().ok() };
    let mut ticks = field(14)? + field(15)?;
    if children {
        ticks += field(16)? + field(17)?;
    }
    Some(ticks / USER_HZ)
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn sample(pid: u32, epoch: Instant) -> Option<ServerSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ServerSample {
        at_s: epoch.elapsed().as_secs_f64(),
        cpu_s: cpu_s_from_stat(&stat, false)?,
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
        threads: status_kib(&status, "Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
    })
}

/// User + system CPU seconds of a process so far (a worker of the bench:
/// its share of the generator's CPU over a window).
pub fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_s_from_stat(&stat, false)
}

/// CPU seconds of this process's waited-for children (the workers).
pub fn children_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let own = cpu_s_from_stat(&s, false)?;
            Some(cpu_s_from_stat(&s, true)? - own)
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let line = "42 (shard 0) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0 1 1 1";
        assert_eq!(cpu_s_from_stat(line, false), Some(3.0));
        assert_eq!(cpu_s_from_stat(line, true), Some(3.1));
    }
}
