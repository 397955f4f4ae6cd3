//! `switchboard tune`: what this machine offers Switchboard, and how to
//! run Switchboard on it.
//!
//! Three steps, kept apart so the decisions are tested without a machine:
//! [`machine::read`] reads the machine into [`Facts`] (topology from
//! `/sys`, limits, sysctls, kernel features and two probes); [`advise`]
//! decides, from the facts and the settings ([`Plan`]) alone, where shards
//! and db threads go, what to set, and what to warn about; [`render`]
//! prints it. `advise` reads nothing and never fails: a machine or a
//! setting it cannot follow is a [`Warning`], not an error.
//!
//! The layout rules (tuning/README.md says why):
//! - one shard per physical core, on the core's first thread; SMT siblings
//!   of a shard's core stay idle, and take shards only when the shards
//!   asked for outnumber the physical cores (a warning);
//! - on a host with at least [`KEEP_FREE_FROM_CORES`] physical cores, the
//!   first physical core of each NUMA node that has that many (at least
//!   core 0's) is kept free of shards: the kernel's timers and interrupts,
//!   the db threads, MySQL if it is local;
//! - shards that fit on one NUMA node go on one node;
//! - db threads are pinned to the physical cores without a shard on the
//!   shards' nodes, and left to the scheduler when every core runs one.

pub mod machine;

use std::collections::BTreeMap;
use std::fmt;

use crate::cores::{self, Ask};
use crate::settings::Settings;

/// Physical cores from which one (per NUMA node that has this many) is
/// kept free of shards for the kernel, the db threads and other
/// processes. Below it every core runs a shard: giving up one of two or
/// three cores costs more than the preemptions it saves.
pub const KEEP_FREE_FROM_CORES: usize = 4;

/// Descriptors the process needs besides client, admin and MySQL
/// connections: listeners, the data files, io_uring rings and eventfds,
/// logs, a margin (tuning/README.md, "File limits").
pub const FDS_MARGIN: u64 = 500;

/// glommio's `io_memory`: the buffer area each executor registers with
/// io_uring (Switchboard's `IO_MEMORY_BYTES`, glommio's minimum).
pub const GLOMMIO_IO_MEMORY_BYTES: u64 = crate::limits::IO_MEMORY_BYTES as u64;

/// The io_uring rings of one glommio executor (main, latency, poll): it
/// registers its `io_memory` with each, and the kernel charges each
/// registration to the locked memory of a process without
/// `CAP_IPC_LOCK`.
pub const GLOMMIO_RINGS: u64 = 3;

/// Below this `RLIMIT_MEMLOCK` glommio refuses to start an executor
/// (its `Reactor::new`): the server cannot start.
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// The listen backlog a shard should get at least. The server asks for
/// more (`limits::LISTEN_BACKLOG`) and the kernel cuts it to
/// `net.core.somaxconn`, so that sysctl is the backlog.
pub const LISTEN_BACKLOG: u64 = 4_096;

/// What the sysctls for the accept queues are raised to when they are
/// below [`LISTEN_BACKLOG`].
pub const BACKLOG_SYSCTL_WANT: u64 = 4_096;

/// The oldest kernel glommio runs on.
pub const KERNEL_MIN: (u32, u32) = (5, 8);

/// What was read about the machine ([`machine::read`]), or made up in a
/// test. `None` where a file could not be read.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// Online CPUs (`/sys/devices/system/cpu/online`), ascending.
    pub online: Vec<usize>,
    /// CPUs of the process's affinity mask (`sched_getaffinity`).
    pub allowed: Vec<usize>,
    /// Each CPU's SMT siblings, itself included (`thread_siblings_list`).
    /// A CPU missing here is a core of its own.
    pub siblings: BTreeMap<usize, Vec<usize>>,
    /// NUMA nodes and their CPUs (`/sys/devices/system/node/node*/cpulist`).
    /// Empty: no NUMA information, one node.
    pub nodes: BTreeMap<usize, Vec<usize>>,
    /// The cgroup's CPU quota in CPUs (`cpu.max`; `None`: no quota).
    pub cpu_quota: Option<f64>,
    /// `RLIMIT_NOFILE`.
    pub nofile: Limit,
    /// `RLIMIT_MEMLOCK`, in bytes.
    pub memlock: Limit,
    /// Whether the process has `CAP_IPC_LOCK`: then the kernel charges no
    /// registered io_uring memory to its memlock limit.
    pub cap_ipc_lock: bool,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `fs.file-max`.
    pub file_max: Option<u64>,
    /// `fs.nr_open`: the most `RLIMIT_NOFILE` may be raised to.
    pub nr_open: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u64, u64)>,
    /// `kernel.io_uring_disabled` (`None`: the kernel has no such sysctl,
    /// before 6.6).
    pub io_uring_disabled: Option<u64>,
    /// Whether `io_uring_setup` works for this process.
    pub io_uring: Probe,
    /// Whether a glommio executor with Switchboard's ring depth starts.
    pub executor: Probe,
}

/// A resource limit: soft (in force) and hard (the most the process may
/// raise it to); `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl Limit {
    /// Whether the soft limit is below `need`.
    fn below(&self, need: u64) -> bool {
        self.soft.is_some_and(|soft| soft < need)
    }
}

/// The outcome of trying something on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Probe {
    /// It worked.
    Works,
    /// It failed, and why.
    Fails(String),
    /// Not tried.
    #[default]
    NotTried,
}

/// What the settings ask for, as far as the layout and limits go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The shards' placement as asked (`SHARDS`, `SHARD_CORES`,
    /// `SHARDS_OVERCOMMIT`).
    pub ask: Ask,
    /// `DB_THREADS`, or with MySQL the pool size (one db thread each).
    pub db_threads: usize,
    /// `DB_CORES` as set.
    pub db_cores: Option<Vec<usize>>,
    /// `CONNECTIONS_MAX` (per shard).
    pub connections_max: usize,
    /// `ADMIN_CONNECTIONS_MAX`.
    pub admin_connections_max: usize,
    /// MySQL's pool size (`None`: the embedded store).
    pub mysql_pool: Option<usize>,
}

impl Plan {
    /// The plan of read settings ([`Settings::read`]) and what they ask
    /// of the shards' placement.
    pub fn of(settings: &Settings, ask: Ask) -> Plan {
        let mysql_pool = settings
            .mysql_url
            .as_ref()
            .map(|_| settings.mysql_pool_size);
        Plan {
            ask,
            db_threads: mysql_pool.unwrap_or(settings.db_threads),
            db_cores: settings.db_cores.clone(),
            connections_max: settings.connections_max,
            admin_connections_max: settings.admin_connections_max,
            mysql_pool,
        }
    }
}

/// Where shards and db threads go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Shard `i` runs on `shard_cores[i]`.
    pub shard_cores: Vec<usize>,
    /// Whether `shard_cores` is `SWITCHBOARD_SHARD_CORES` as set (judged),
    /// not a recommendation.
    pub listed: bool,
    /// Cores to pin the db threads to (`None`: leave them to the
    /// scheduler, as when every physical core runs a shard).
    pub db_cores: Option<Vec<usize>>,
    /// Physical cores (all their threads) kept free of shards.
    pub kept_free: Vec<usize>,
    /// Threads of shard cores that run no shard (SMT siblings).
    pub idle_siblings: Vec<usize>,
}

/// Something to fix before production, with what follows if it stays.
#[derive(Clone, Debug, PartialEq)]
pub enum Warning {
    /// `SHARD_CORES` or `SHARDS` that `serve` refuses (the reason).
    Placement(String),
    /// Two shards share one physical core (SMT siblings).
    SmtShared { cores: Vec<usize> },
    /// The cgroup's CPU quota is below the shard count.
    CpuQuota { quota: f64, shards: usize },
    /// `DB_CORES` names cores that run shards.
    DbCoresOnShards { cores: Vec<usize> },
    /// `DB_CORES` names cores outside the affinity mask (storage refuses
    /// to open).
    DbCoresNotAllowed { cores: Vec<usize> },
    /// The open files limit is below what the settings may open.
    Nofile {
        soft: u64,
        hard: Option<u64>,
        need: u64,
    },
    /// `fs.nr_open` is below the open files the settings need.
    NrOpen { nr_open: u64, need: u64 },
    /// `fs.file-max` is below the open files the settings need.
    FileMax { file_max: u64, need: u64 },
    /// Locked memory below glommio's minimum: executors do not start.
    MemlockTooLowToStart { soft: u64 },
    /// Locked memory below what the executors register: glommio falls
    /// back to unregistered buffers.
    MemlockBelowRegistered { soft: u64, need: u64 },
    /// `net.core.somaxconn` cuts the listen backlog.
    Somaxconn { value: u64 },
    /// `net.ipv4.tcp_max_syn_backlog` below the listen backlog.
    SynBacklog { value: u64 },
    /// The kernel is older than glommio needs.
    KernelTooOld { release: String },
    /// `kernel.io_uring_disabled` is 2 (off) or 1 (a group only).
    IoUringDisabled { value: u64 },
    /// `io_uring_setup` fails here.
    IoUringFails { reason: String },
    /// A glommio executor does not start here.
    ExecutorFails { reason: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |cores: &[usize]| cores::format_list(cores);
        match self {
            Warning::Placement(reason) => write!(f, "serve refuses these settings: {reason}"),
            Warning::SmtShared { cores } => write!(
                f,
                "shards on CPUs {} share physical cores with another shard (SMT siblings): each \
                 gets part of a core. Run at most one shard per physical core",
                list(cores)
            ),
            Warning::CpuQuota { quota, shards } => write!(
                f,
                "the cgroup allows {quota:.2} CPUs of time (cpu.max) for {shards} shards: busy \
                 shards are throttled, every request on them waits. Raise the quota (docker \
                 --cpus) to at least the shard count, or run fewer shards"
            ),
            Warning::DbCoresOnShards { cores } => write!(
                f,
                "SWITCHBOARD_DB_CORES puts db threads on CPUs {} that run shards: their bursts \
                 (group commits, history pages) preempt those shards",
                list(cores)
            ),
            Warning::DbCoresNotAllowed { cores } => write!(
                f,
                "SWITCHBOARD_DB_CORES names CPUs {} outside the affinity mask: storage refuses \
                 to open",
                list(cores)
            ),
            Warning::Nofile { soft, hard, need } => write!(
                f,
                "open files limit {soft} (hard {}) is below the {need} the settings may open \
                 (shards x CONNECTIONS_MAX + ADMIN_CONNECTIONS_MAX + MySQL pool + {FDS_MARGIN}): \
                 past it accepts fail with EMFILE. Raise it where the service starts \
                 (LimitNOFILE=)",
                hard.map_or("unlimited".to_string(), |h| h.to_string())
            ),
            Warning::NrOpen { nr_open, need } => write!(
                f,
                "fs.nr_open {nr_open} is below the {need} open files needed: no process can be \
                 given LimitNOFILE above it"
            ),
            Warning::FileMax { file_max, need } => write!(
                f,
                "fs.file-max {file_max} (the whole system's open files) is below the {need} this \
                 server may open"
            ),
            Warning::MemlockTooLowToStart { soft } => write!(
                f,
                "locked memory limit {} is below the {} glommio needs to start an executor: the \
                 server cannot start. Raise it (LimitMEMLOCK=, ulimit -l, docker --ulimit \
                 memlock=-1)",
                bytes(*soft),
                bytes(GLOMMIO_MEMLOCK_MIN_BYTES)
            ),
            Warning::MemlockBelowRegistered { soft, need } => write!(
                f,
                "locked memory limit {} is below the {} the shards register with io_uring \
                 ({GLOMMIO_RINGS} rings x {} each): glommio falls back to unregistered buffers (the \
                 network path does not use them; storage runs on db threads). Raise it \
                 (LimitMEMLOCK=) to keep glommio on its normal path",
                bytes(*soft),
                bytes(GLOMMIO_IO_MEMORY_BYTES),
                bytes(*need)
            ),
            Warning::Somaxconn { value } => write!(
                f,
                "net.core.somaxconn {value} cuts each shard's listen backlog of \
                 {LISTEN_BACKLOG}: a reconnect storm overflows it and browsers wait 1-3 s to \
                 retry"
            ),
            Warning::SynBacklog { value } => write!(
                f,
                "net.ipv4.tcp_max_syn_backlog {value} is below the listen backlog of \
                 {LISTEN_BACKLOG}: half-open connections of a storm are dropped"
            ),
            Warning::KernelTooOld { release } => write!(
                f,
                "kernel {release} is older than {}.{}, the oldest glommio runs on",
                KERNEL_MIN.0, KERNEL_MIN.1
            ),
            Warning::IoUringDisabled { value: 2 } => write!(
                f,
                "kernel.io_uring_disabled is 2: io_uring is off for every process and the \
                 server cannot start. Set it to 0"
            ),
            Warning::IoUringDisabled { value } => write!(
                f,
                "kernel.io_uring_disabled is {value}: only members of kernel.io_uring_group (and \
                 CAP_SYS_ADMIN) may use io_uring. Put the service's user in that group, or set it \
                 to 0"
            ),
            Warning::IoUringFails { reason } => write!(
                f,
                "io_uring_setup fails for this process ({reason}): the server cannot start here"
            ),
            Warning::ExecutorFails { reason } => write!(
                f,
                "a glommio executor does not start here ({reason}): the server cannot start"
            ),
        }
    }
}

/// What `tune` advises for one machine and plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Advice {
    /// Where shards and db threads go.
    pub layout: Layout,
    /// Descriptors the settings may hold open.
    pub fds_needed: u64,
    /// Locked memory the shards register with io_uring.
    pub memlock_needed: u64,
    /// Sysctls to raise: only those below what Switchboard wants.
    pub sysctls: Vec<Sysctl>,
    /// What to fix: placement, then limits, then kernel features.
    pub warnings: Vec<Warning>,
    /// Why the layout is what it is, one sentence each.
    pub notes: Vec<String>,
}

/// A sysctl to raise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctl {
    /// Its name, like `net.core.somaxconn`.
    pub name: &'static str,
    /// The value to set.
    pub want: u64,
    /// Its value now (`None`: not read).
    pub now: Option<u64>,
}

impl Advice {
    /// The exit status of `switchboard tune`: 1 with `--strict` when there
    /// is a warning, else 0.
    pub fn exit_code(&self, strict: bool) -> u8 {
        u8::from(strict && !self.warnings.is_empty())
    }
}

/// One physical core: its usable threads (ascending) and NUMA node.
#[derive(Clone, Debug)]
struct Core {
    threads: Vec<usize>,
    node: usize,
}

/// The physical cores of the CPUs this process may use (online and in
/// its mask), ordered by their first thread.
fn physical_cores(facts: &Facts) -> Vec<Core> {
    let usable: Vec<usize> = if facts.online.is_empty() {
        facts.allowed.clone()
    } else {
        facts
            .allowed
            .iter()
            .copied()
            .filter(|c| facts.online.contains(c))
            .collect()
    };
    let mut cores: Vec<(Vec<usize>, Core)> = Vec::new();
    for cpu in usable {
        let key = facts
            .siblings
            .get(&cpu)
            .cloned()
            .unwrap_or_else(|| vec![cpu]);
        let node = facts
            .nodes
            .iter()
            .find(|(_, cpus)| cpus.contains(&cpu))
            .map_or(0, |(node, _)| *node);
        match cores.iter_mut().find(|(k, _)| *k == key) {
            Some((_, core)) => core.threads.push(cpu),
            None => cores.push((
                key,
                Core {
                    threads: vec![cpu],
                    node,
                },
            )),
        }
    }
    cores.into_iter().map(|(_, core)| core).collect()
}

/// Indexes of the physical cores kept free of shards: the first of each
/// NUMA node with at least [`KEEP_FREE_FROM_CORES`], or, if none has that
/// many but the host does, the first overall (core 0's).
fn kept_free(cores: &[Core]) -> Vec<usize> {
    let mut by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, core) in cores.iter().enumerate() {
        by_node.entry(core.node).or_default().push(i);
    }
    let mut free: Vec<usize> = by_node
        .values()
        .filter(|idx| idx.len() >= KEEP_FREE_FROM_CORES)
        .map(|idx| idx[0])
        .collect();
    if free.is_empty() && cores.len() >= KEEP_FREE_FROM_CORES {
        free.push(0);
    }
    free
}

/// The recommended CPUs for `n` shards: the first thread of the spare
/// physical cores (all but the `kept` ones; on one node when they fit),
/// then of the kept ones, then SMT siblings, then (overcommitted)
/// round-robin.
fn recommend(cores: &[Core], kept: &[usize], n: usize) -> Vec<usize> {
    let spare: Vec<usize> = (0..cores.len()).filter(|i| !kept.contains(i)).collect();
    let mut order: Vec<usize> = Vec::new();
    let mut nodes: Vec<usize> = spare.iter().map(|&i| cores[i].node).collect();
    nodes.dedup();
    let one_node = nodes
        .iter()
        .copied()
        .find(|&node| spare.iter().filter(|&&i| cores[i].node == node).count() >= n);
    match one_node {
        Some(node) => order.extend(spare.iter().filter(|&&i| cores[i].node == node)),
        None => order.extend(&spare),
    }
    order.extend(
        spare
            .iter()
            .filter(|i| !order.contains(i))
            .collect::<Vec<_>>(),
    );
    order.extend(kept);
    let mut cpus: Vec<usize> = order.iter().map(|&i| cores[i].threads[0]).collect();
    let most_threads = cores.iter().map(|c| c.threads.len()).max().unwrap_or(1);
    for t in 1..most_threads {
        cpus.extend(order.iter().filter_map(|&i| cores[i].threads.get(t)));
    }
    if cpus.is_empty() {
        return Vec::new();
    }
    (0..n).map(|i| cpus[i % cpus.len()]).collect()
}

/// Decides the layout, the limits and the warnings for `plan` on the
/// machine `facts` describes.
pub fn advise(facts: &Facts, plan: &Plan) -> Advice {
    let cores = physical_cores(facts);
    let kept = kept_free(&cores);
    let mut warnings = Vec::new();
    let mut notes = Vec::new();

    // Shards.
    let listed = plan.ask.cores.is_some();
    let n = plan.ask.shard_count(cores.len() - kept.len());
    if let Err(reason) = cores::place(&plan.ask, n, &facts.allowed) {
        warnings.push(Warning::Placement(reason));
    }
    let shard_cores = match &plan.ask.cores {
        Some(list) => list.clone(),
        None => recommend(&cores, &kept, n),
    };
    let core_of = |cpu: usize| cores.iter().position(|c| c.threads.contains(&cpu));
    let mut busy: Vec<usize> = Vec::new(); // physical cores running a shard
    let mut shared: Vec<usize> = Vec::new();
    for (i, &cpu) in shard_cores.iter().enumerate() {
        if shard_cores[..i].contains(&cpu) {
            continue; // the same CPU twice: a placement warning already
        }
        match core_of(cpu) {
            Some(core) if busy.contains(&core) => shared.push(cpu),
            Some(core) => busy.push(core),
            None => {}
        }
    }
    if !shared.is_empty() {
        let mut cpus: Vec<usize> = busy
            .iter()
            .flat_map(|&i| cores[i].threads.iter().copied())
            .filter(|c| shard_cores.contains(c))
            .filter(|&c| shared.iter().any(|&s| core_of(s) == core_of(c)))
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        warnings.push(Warning::SmtShared { cores: cpus });
    }
    let kept_threads: Vec<usize> = kept
        .iter()
        .filter(|i| !busy.contains(i))
        .flat_map(|&i| cores[i].threads.clone())
        .collect();
    let mut idle_siblings: Vec<usize> = busy
        .iter()
        .flat_map(|&i| cores[i].threads.iter().copied())
        .filter(|c| !shard_cores.contains(c))
        .collect();
    idle_siblings.sort_unstable();
    if let Some(quota) = facts.cpu_quota {
        if quota < shard_cores.len() as f64 {
            warnings.push(Warning::CpuQuota {
                quota,
                shards: shard_cores.len(),
            });
        }
    }

    // Db threads: the idle physical cores on the shards' nodes, first
    // threads first.
    let shard_nodes: Vec<usize> = busy.iter().map(|&i| cores[i].node).collect();
    let idle: Vec<&Core> = (0..cores.len())
        .filter(|i| !busy.contains(i))
        .map(|i| &cores[i])
        .filter(|c| shard_nodes.contains(&c.node))
        .collect();
    let most_threads = idle.iter().map(|c| c.threads.len()).max().unwrap_or(0);
    let db: Vec<usize> = (0..most_threads)
        .flat_map(|t| idle.iter().filter_map(move |c| c.threads.get(t).copied()))
        .collect();
    let db_cores = (!db.is_empty()).then_some(db);
    if let Some(asked) = &plan.db_cores {
        let on_shards: Vec<usize> = asked
            .iter()
            .copied()
            .filter(|c| shard_cores.contains(c))
            .collect();
        if !on_shards.is_empty() {
            warnings.push(Warning::DbCoresOnShards { cores: on_shards });
        }
        let outside: Vec<usize> = asked
            .iter()
            .copied()
            .filter(|c| !facts.allowed.contains(c))
            .collect();
        if !outside.is_empty() {
            warnings.push(Warning::DbCoresNotAllowed { cores: outside });
        }
    }

    // Why.
    if listed {
        notes.push(
            "the shard cores are SWITCHBOARD_SHARD_CORES as set; the rest follows from them".into(),
        );
    }
    if !kept_threads.is_empty() {
        notes.push(format!(
            "CPUs {} (the first physical core of each NUMA node with {KEEP_FREE_FROM_CORES} or more) are kept \
             free of shards: the kernel's timers and interrupts land on core 0 by default, and \
             the db threads and a local MySQL need somewhere to run that does not preempt a shard",
            cores::format_list(&kept_threads)
        ));
    } else if cores.len() < KEEP_FREE_FROM_CORES && !listed {
        notes.push(format!(
            "fewer than {KEEP_FREE_FROM_CORES} physical cores: every core runs a shard, core 0 included"
        ));
    }
    if !idle_siblings.is_empty() {
        notes.push(format!(
            "SMT siblings {} of the shard cores run no shard: a shard gets its whole physical core; \
             keep them free of busy work",
            cores::format_list(&idle_siblings)
        ));
    }
    let mut nodes_used = shard_nodes.clone();
    nodes_used.sort_unstable();
    nodes_used.dedup();
    let node_count = cores
        .iter()
        .map(|c| c.node)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if node_count > 1 {
        notes.push(if nodes_used.len() == 1 {
            format!(
                "the shards fit on NUMA node {}: their memory and the mesh between them stay on one node",
                nodes_used[0]
            )
        } else {
            format!(
                "the shards span NUMA nodes {:?}: messages between shards on different nodes cross the interconnect",
                nodes_used
            )
        });
    }
    match &db_cores {
        Some(cpus) => notes.push(format!(
            "db threads on CPUs {}, the physical cores without a shard on the shards' nodes",
            cores::format_list(cpus)
        )),
        None => notes.push(
            "db threads unpinned: every physical core runs a shard, and they mostly wait on the disk or MySQL".into(),
        ),
    }

    let shards = shard_cores.len();
    let (fds_needed, memlock_needed, sysctls) = limits(facts, plan, shards, &mut warnings);
    kernel(facts, &mut warnings);

    Advice {
        layout: Layout {
            shard_cores,
            listed,
            db_cores,
            kept_free: kept_threads,
            idle_siblings,
        },
        fds_needed,
        memlock_needed,
        sysctls,
        warnings,
        notes,
    }
}

/// The open files and locked memory the plan needs (warned about when the
/// limits are lower), and the sysctls to raise.
fn limits(
    facts: &Facts,
    plan: &Plan,
    shards: usize,
    warnings: &mut Vec<Warning>,
) -> (u64, u64, Vec<Sysctl>) {
    let fds_needed = shards as u64 * plan.connections_max as u64
        + plan.admin_connections_max as u64
        + plan.mysql_pool.unwrap_or(0) as u64
        + FDS_MARGIN;
    if let Some(soft) = facts.nofile.soft.filter(|&s| s < fds_needed) {
        warnings.push(Warning::Nofile {
            soft,
            hard: facts.nofile.hard,
            need: fds_needed,
        });
    }
    if let Some(nr_open) = facts.nr_open.filter(|&v| v < fds_needed) {
        warnings.push(Warning::NrOpen {
            nr_open,
            need: fds_needed,
        });
    }
    if let Some(file_max) = facts.file_max.filter(|&v| v < fds_needed) {
        warnings.push(Warning::FileMax {
            file_max,
            need: fds_needed,
        });
    }
    let memlock_needed = shards as u64 * GLOMMIO_RINGS * GLOMMIO_IO_MEMORY_BYTES;
    if facts.memlock.below(GLOMMIO_MEMLOCK_MIN_BYTES) {
        let soft = facts.memlock.soft.unwrap_or(0);
        warnings.push(Warning::MemlockTooLowToStart { soft });
    } else if !facts.cap_ipc_lock && facts.memlock.below(memlock_needed) {
        let soft = facts.memlock.soft.unwrap_or(0);
        warnings.push(Warning::MemlockBelowRegistered {
            soft,
            need: memlock_needed,
        });
    }
    let mut sysctls = Vec::new();
    if let Some(value) = facts.somaxconn.filter(|&v| v < LISTEN_BACKLOG) {
        warnings.push(Warning::Somaxconn { value });
    }
    if let Some(value) = facts.tcp_max_syn_backlog.filter(|&v| v < LISTEN_BACKLOG) {
        warnings.push(Warning::SynBacklog { value });
    }
    for (name, now) in [
        ("net.core.somaxconn", facts.somaxconn),
        ("net.ipv4.tcp_max_syn_backlog", facts.tcp_max_syn_backlog),
    ] {
        if now.is_none_or(|v| v < BACKLOG_SYSCTL_WANT) {
            sysctls.push(Sysctl {
                name,
                want: BACKLOG_SYSCTL_WANT,
                now,
            });
        }
    }
    let nofile_want = round_up(fds_needed, 1_000);
    if facts.nr_open.is_some_and(|v| v < nofile_want) {
        sysctls.push(Sysctl {
            name: "fs.nr_open",
            want: nofile_want,
            now: facts.nr_open,
        });
    }
    if facts.file_max.is_some_and(|v| v < 2 * nofile_want) {
        sysctls.push(Sysctl {
            name: "fs.file-max",
            want: 2 * nofile_want,
            now: facts.file_max,
        });
    }

    (fds_needed, memlock_needed, sysctls)
}

/// Warnings about the kernel and io_uring.
fn kernel(facts: &Facts, warnings: &mut Vec<Warning>) {
    if let Some((major, minor)) = kernel_version(&facts.kernel) {
        if (major, minor) < KERNEL_MIN {
            warnings.push(Warning::KernelTooOld {
                release: facts.kernel.clone(),
            });
        }
    }
    if let Some(value) = facts.io_uring_disabled.filter(|&v| v != 0) {
        warnings.push(Warning::IoUringDisabled { value });
    }
    if let Probe::Fails(reason) = &facts.io_uring {
        warnings.push(Warning::IoUringFails {
            reason: reason.clone(),
        });
    }
    if let Probe::Fails(reason) = &facts.executor {
        warnings.push(Warning::ExecutorFails {
            reason: reason.clone(),
        });
    }
}

/// `major.minor` of a kernel release like `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn round_up(v: u64, step: u64) -> u64 {
    v.div_ceil(step) * step
}

/// Bytes as KiB, MiB or GiB, whichever reads best.
fn bytes(v: u64) -> String {
    match v {
        v if v >= 1 << 30 && v % (1 << 30) == 0 => format!("{} GiB", v >> 30),
        v if v >= 1 << 20 => format!("{} MiB", v.div_ceil(1 << 20)),
        v => format!("{} KiB", v.div_ceil(1 << 10)),
    }
}

/// A limit for the machine section: `8 MiB (hard 8 MiB)`.
fn limit(l: Limit, show: impl Fn(u64) -> String) -> String {
    let one = |v: Option<u64>| v.map_or("unlimited".to_string(), &show);
    if l.soft == l.hard {
        one(l.soft)
    } else {
        format!("{} (hard {})", one(l.soft), one(l.hard))
    }
}

/// The report `switchboard tune` prints.
pub fn render(facts: &Facts, plan: &Plan, advice: &Advice) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let opt = |v: Option<u64>| v.map_or("unreadable".to_string(), |v| v.to_string());
    let cores = physical_cores(facts);
    let threads = cores.iter().map(|c| c.threads.len()).max().unwrap_or(1);
    let nodes = if facts.nodes.is_empty() {
        "no NUMA information (one node)".to_string()
    } else {
        facts
            .nodes
            .iter()
            .map(|(n, cpus)| format!("node{n}: {}", cores::format_list(cpus)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let probe = |p: &Probe, works: &str| match p {
        Probe::Works => works.to_string(),
        Probe::Fails(reason) => format!("FAILS: {reason}"),
        Probe::NotTried => "not tried".to_string(),
    };
    let _ = writeln!(s, "Machine");
    let _ = writeln!(s, "  kernel                        {}", facts.kernel);
    let _ = writeln!(
        s,
        "  CPUs online                   {} ({} usable: {} physical cores, {})",
        cores::format_list(&facts.online),
        cores.iter().map(|c| c.threads.len()).sum::<usize>(),
        cores.len(),
        if threads > 1 {
            format!("SMT, {threads} threads per core")
        } else {
            "no SMT".into()
        }
    );
    let _ = writeln!(
        s,
        "  affinity mask                 {}",
        cores::format_list(&facts.allowed)
    );
    let _ = writeln!(s, "  NUMA                          {nodes}");
    let _ = writeln!(
        s,
        "  cgroup CPU quota              {}",
        facts
            .cpu_quota
            .map_or("none".to_string(), |q| format!("{q:.2} CPUs"))
    );
    let _ = writeln!(
        s,
        "  open files (NOFILE)           {}",
        limit(facts.nofile, |v| v.to_string())
    );
    let _ = writeln!(
        s,
        "  locked memory (MEMLOCK)       {}; CAP_IPC_LOCK: {}",
        limit(facts.memlock, bytes),
        if facts.cap_ipc_lock {
            "yes (io_uring registrations are not charged to it)"
        } else {
            "no"
        }
    );
    let _ = writeln!(s, "  fs.nr_open                    {}", opt(facts.nr_open));
    let _ = writeln!(s, "  fs.file-max                   {}", opt(facts.file_max));
    let _ = writeln!(
        s,
        "  net.core.somaxconn            {}",
        opt(facts.somaxconn)
    );
    let _ = writeln!(
        s,
        "  net.ipv4.tcp_max_syn_backlog  {}",
        opt(facts.tcp_max_syn_backlog)
    );
    let _ = writeln!(
        s,
        "  net.ipv4.ip_local_port_range  {}",
        facts
            .port_range
            .map_or("unreadable".into(), |(lo, hi)| format!(
            "{lo} {hi} ({} ports per destination: matters to a proxy in front, not to the server)",
            hi.saturating_sub(lo) + 1
        ))
    );
    let _ = writeln!(
        s,
        "  kernel.io_uring_disabled      {}",
        facts
            .io_uring_disabled
            .map_or("absent (kernel before 6.6)".into(), |v| v.to_string())
    );
    let _ = writeln!(
        s,
        "  io_uring_setup                {}",
        probe(&facts.io_uring, "works")
    );
    let _ = writeln!(
        s,
        "  glommio executor              {}",
        probe(
            &facts.executor,
            &format!("starts (ring depth {})", crate::limits::RING_DEPTH)
        )
    );

    let layout = &advice.layout;
    let _ = writeln!(
        s,
        "\nLayout ({} shards{})",
        layout.shard_cores.len(),
        if layout.listed {
            ", as SWITCHBOARD_SHARD_CORES lists"
        } else {
            ", recommended"
        }
    );
    for (i, cpu) in layout.shard_cores.iter().enumerate() {
        let node = facts
            .nodes
            .iter()
            .find(|(_, c)| c.contains(cpu))
            .map_or(0, |(n, _)| *n);
        let _ = writeln!(s, "  {:<20}CPU {cpu:<4} node {node}", format!("shard-{i}"));
    }
    let _ = writeln!(
        s,
        "  {:<20}{}",
        format!("db-0..{}", plan.db_threads.saturating_sub(1)),
        layout
            .db_cores
            .as_ref()
            .map_or("unpinned".to_string(), |c| format!(
                "CPUs {}",
                cores::format_list(c)
            ))
    );
    for note in &advice.notes {
        let _ = writeln!(s, "  - {note}");
    }

    let _ = writeln!(
        s,
        "\nSettings (environment file, e.g. /etc/switchboard/env)"
    );
    let _ = writeln!(s, "  SWITCHBOARD_SHARDS={}", layout.shard_cores.len());
    let mut distinct = layout.shard_cores.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() == layout.shard_cores.len() {
        let _ = writeln!(
            s,
            "  SWITCHBOARD_SHARD_CORES={}",
            cores::format_list(&layout.shard_cores)
        );
    } else {
        let _ = writeln!(
            s,
            "  # more shards than CPUs: no core list may repeat a core; serve needs\n  \
             # SWITCHBOARD_SHARDS_OVERCOMMIT=on (development only)"
        );
    }
    match &layout.db_cores {
        Some(c) => {
            let _ = writeln!(s, "  SWITCHBOARD_DB_CORES={}", cores::format_list(c));
        }
        None => {
            let _ = writeln!(s, "  # SWITCHBOARD_DB_CORES unset: db threads unpinned");
        }
    }

    let _ = writeln!(
        s,
        "\nSysctls (/etc/sysctl.d/60-switchboard.conf, then sysctl --system)"
    );
    if advice.sysctls.is_empty() {
        let _ = writeln!(s, "  # nothing to raise");
    }
    for Sysctl { name, want, now } in &advice.sysctls {
        let _ = writeln!(s, "  {name} = {want}    # now {}", opt(*now));
    }

    let mut affinity = layout.shard_cores.clone();
    affinity.extend(layout.db_cores.iter().flatten());
    affinity.sort_unstable();
    affinity.dedup();
    let _ = writeln!(
        s,
        "\nsystemd ([Service] of switchboard.service: docs/operations.md)"
    );
    let _ = writeln!(
        s,
        "  LimitNOFILE={}    # shards x CONNECTIONS_MAX + admin + MySQL + {FDS_MARGIN} = {}",
        round_up(advice.fds_needed, 1_000),
        advice.fds_needed
    );
    let _ = writeln!(
        s,
        "  LimitMEMLOCK={}M    # shards x {GLOMMIO_RINGS} rings x {} registered = {}",
        round_up(advice.memlock_needed.max(1), 32 << 20) >> 20,
        bytes(GLOMMIO_IO_MEMORY_BYTES),
        bytes(advice.memlock_needed)
    );
    let _ = writeln!(s, "  CPUAffinity={}", cores::format_list(&affinity));

    let _ = writeln!(s, "\nWarnings");
    if advice.warnings.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for w in &advice.warnings {
        let _ = writeln!(s, "  ! {w}");
    }
    s
}

#[cfg(test)]
mod tests;
