//! Reads this machine into [`Facts`]: `/sys` for the topology, `/proc`
//! for sysctls and capabilities, `getrlimit` and `uname`, and two probes
//! (an `io_uring_setup` call, and a glommio executor started and
//! stopped). Whatever cannot be read is left `None` or empty; nothing
//! here fails.

use std::collections::BTreeMap;
use std::path::Path;

use glommio::{LocalExecutorBuilder, Placement};

use super::{Facts, Limit, Probe};
use crate::cores;

/// The bit of `CAP_IPC_LOCK` in `/proc/self/status`'s `CapEff`.
const CAP_IPC_LOCK_BIT: u32 = 14;

/// Reads the machine. Takes a few milliseconds, most of it the executor
/// probe.
pub fn read() -> Facts {
    let allowed = cores::allowed();
    let online = list("/sys/devices/system/cpu/online").unwrap_or_else(|| allowed.clone());
    let siblings = online
        .iter()
        .filter_map(|&cpu| {
            let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
            list(&path).map(|s| (cpu, s))
        })
        .collect();
    Facts {
        kernel: kernel_release(),
        online,
        allowed,
        siblings,
        nodes: numa_nodes(),
        cpu_quota: cpu_quota(),
        nofile: rlimit(libc::RLIMIT_NOFILE),
        memlock: rlimit(libc::RLIMIT_MEMLOCK),
        cap_ipc_lock: cap_ipc_lock(),
        somaxconn: number("/proc/sys/net/core/somaxconn"),
        tcp_max_syn_backlog: number("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        file_max: number("/proc/sys/fs/file-max"),
        nr_open: number("/proc/sys/fs/nr_open"),
        port_range: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut it = text.split_whitespace().map(str::parse::<u64>);
                match (it.next(), it.next()) {
                    (Some(Ok(lo)), Some(Ok(hi))) => Some((lo, hi)),
                    _ => None,
                }
            }),
        io_uring_disabled: number("/proc/sys/kernel/io_uring_disabled"),
        io_uring: io_uring_probe(),
        executor: executor_probe(),
    }
}

/// A core list file (`0-3,8`).
fn list(path: &str) -> Option<Vec<usize>> {
    cores::parse_list(&std::fs::read_to_string(path).ok()?).ok()
}

/// A file holding one number.
fn number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `/sys/devices/system/node/nodeN/cpulist` for each node; nodes without
/// CPUs (memory-only) are left out.
fn numa_nodes() -> BTreeMap<usize, Vec<usize>> {
    let mut nodes = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") else {
        return nodes;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("node")) else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        if let Some(cpus) = list(&format!("/sys/devices/system/node/node{n}/cpulist")) {
            nodes.insert(n, cpus);
        }
    }
    nodes
}

/// The tightest CPU quota (`cpu.max`: `QUOTA PERIOD`, or `max`) of this
/// process's cgroup v2 and its parents, in CPUs.
fn cpu_quota() -> Option<f64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let mut tightest: Option<f64> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("cpu.max")) {
            let mut it = text.split_whitespace();
            if let (Some(Ok(quota)), Some(Ok(period))) = (
                it.next().map(str::parse::<f64>),
                it.next().map(str::parse::<f64>),
            ) {
                if period > 0.0 {
                    let cpus = quota / period;
                    tightest = Some(tightest.map_or(cpus, |t| t.min(cpus)));
                }
            }
        }
        if dir == Path::new("/sys/fs/cgroup") || !dir.pop() {
            return tightest;
        }
    }
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Limit {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `l` is a valid `rlimit` the call writes into.
    if unsafe { libc::getrlimit(resource, &mut l) } != 0 {
        return Limit::default();
    }
    let value = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Limit {
        soft: value(l.rlim_cur),
        hard: value(l.rlim_max),
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: `utsname` is plain bytes, valid zeroed; `uname` fills it
    // with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether `CapEff` in `/proc/self/status` has `CAP_IPC_LOCK`.
fn cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// Sets up a 4-entry io_uring and closes it: what a seccomp profile, the
/// `kernel.io_uring_disabled` sysctl or a kernel without io_uring refuse.
fn io_uring_probe() -> Probe {
    // `struct io_uring_params` is 120 bytes; all zero asks for nothing
    // special.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) reads and writes the 120
    // bytes of `params`, and returns a file descriptor we own or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring",
            Some(libc::EPERM) => {
                "not permitted: kernel.io_uring_disabled, or a seccomp profile (Docker's and \
                 containerd's default profiles block io_uring)"
            }
            Some(libc::ENOMEM) => "not enough locked memory for the ring (RLIMIT_MEMLOCK)",
            _ => "",
        };
        return Probe::Fails(if why.is_empty() {
            e.to_string()
        } else {
            format!("{e}: {why}")
        });
    }
    // SAFETY: `fd` is the ring's descriptor, ours, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Probe::Works
}

/// Starts a glommio executor as a shard's (Switchboard's ring depth and
/// `io_memory`), unpinned, and lets it end at once.
fn executor_probe() -> Probe {
    let started = LocalExecutorBuilder::new(Placement::Unbound)
        .name("tune-probe")
        .ring_depth(crate::limits::RING_DEPTH)
        .io_memory(crate::limits::IO_MEMORY_BYTES)
        .spawn(|| async {});
    match started {
        Err(e) => Probe::Fails(e.to_string()),
        Ok(handle) => match handle.join() {
            Ok(()) => Probe::Works,
            Err(e) => Probe::Fails(e.to_string()),
        },
    }
}
