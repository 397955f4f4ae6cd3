//! `advise` on made-up machines: what it recommends and what it warns
//! about.

use super::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A healthy machine of `physical` cores with `smt` threads each, split
/// evenly over `nodes` NUMA nodes, numbered as Linux does: core `c`'s
/// threads are `c`, `c + physical`, ... Everything allowed; generous
/// limits; io_uring works.
fn machine(physical: usize, smt: usize, nodes: usize) -> Facts {
    let cpus = physical * smt;
    let threads = |core: usize| (0..smt).map(|t| core + t * physical).collect::<Vec<_>>();
    let mut siblings = BTreeMap::new();
    for core in 0..physical {
        for &cpu in &threads(core) {
            siblings.insert(cpu, threads(core));
        }
    }
    let per_node = physical / nodes;
    let nodes = (0..nodes)
        .map(|n| {
            let mut cpus: Vec<usize> = (n * per_node..(n + 1) * per_node)
                .flat_map(threads)
                .collect();
            cpus.sort_unstable();
            (n, cpus)
        })
        .collect();
    Facts {
        kernel: "6.1.0-18-amd64".into(),
        online: (0..cpus).collect(),
        allowed: (0..cpus).collect(),
        siblings,
        nodes,
        cpu_quota: None,
        nofile: Limit {
            soft: Some(1 << 20),
            hard: Some(1 << 20),
        },
        memlock: Limit {
            soft: None,
            hard: None,
        },
        cap_ipc_lock: false,
        somaxconn: Some(4_096),
        tcp_max_syn_backlog: Some(4_096),
        file_max: Some(10_000_000),
        nr_open: Some(1 << 20),
        port_range: Some((32_768, 60_999)),
        io_uring_disabled: Some(0),
        io_uring: Probe::Works,
        executor: Probe::Works,
    }
}

/// The default settings, with `SHARDS` and `SHARD_CORES` as given.
fn plan(shards: Option<usize>, cores: Option<&[usize]>) -> Plan {
    Plan {
        ask: Ask {
            shards,
            cores: cores.map(<[usize]>::to_vec),
            overcommit: false,
        },
        db_threads: 2,
        db_cores: None,
        connections_max: 9_000,
        admin_connections_max: 64,
        mysql_pool: None,
    }
}

/// The layout's shard CPUs, db CPUs and warnings, for tables.
fn check(facts: &Facts, plan: &Plan, shards: &[usize], db: Option<&[usize]>, warnings: &[Warning]) {
    let advice = advise(facts, plan);
    assert_eq!(advice.layout.shard_cores, shards, "shards of {plan:?}");
    assert_eq!(
        advice.layout.db_cores.as_deref(),
        db,
        "db threads of {plan:?}"
    );
    assert_eq!(advice.warnings, warnings, "warnings of {plan:?}");
}

#[test]
fn two_cores_without_smt_run_a_shard_each_and_db_threads_float() {
    let mut facts = machine(2, 1, 1);
    check(&facts, &plan(None, None), &[0, 1], None, &[]);
    let advice = advise(&facts, &plan(None, None));
    assert!(
        advice.layout.kept_free.is_empty(),
        "no core is kept free of 2"
    );
    assert_eq!(advice.fds_needed, 2 * 9_000 + 64 + 500);
    assert_eq!(advice.memlock_needed, 2 * 3 * 64 * KIB);
    assert!(
        advice.notes.iter().any(|n| n.contains("core 0 included")),
        "{:?}",
        advice.notes
    );

    // This machine's 8 MiB of locked memory is plenty for two shards'
    // registered buffers (3 rings x 64 KiB each).
    facts.memlock = Limit {
        soft: Some(8 * MIB),
        hard: Some(8 * MIB),
    };
    check(&facts, &plan(None, None), &[0, 1], None, &[]);
    // Less than the shards register (but enough to start): glommio
    // starts and cannot register its buffers; with CAP_IPC_LOCK nothing
    // is charged.
    let mut many = machine(8, 1, 1);
    many.memlock = Limit {
        soft: Some(1024 * KIB),
        hard: Some(1024 * KIB),
    };
    let below = Warning::MemlockBelowRegistered {
        soft: 1024 * KIB,
        need: 8 * 3 * 64 * KIB,
    };
    let all: Vec<usize> = (0..8).collect();
    check(&many, &plan(Some(8), Some(&all)), &all, None, &[below]);
    many.cap_ipc_lock = true;
    check(&many, &plan(Some(8), Some(&all)), &all, None, &[]);

    let text = render(
        &facts,
        &plan(None, None),
        &advise(&facts, &plan(None, None)),
    );
    for want in [
        "SWITCHBOARD_SHARDS=2\n",
        "SWITCHBOARD_SHARD_CORES=0-1\n",
        "# SWITCHBOARD_DB_CORES unset",
        "LimitNOFILE=19000 ",
        "LimitMEMLOCK=32M ",
        "CPUAffinity=0-1\n",
        "Warnings\n  none\n",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }

    // Three shards on two CPUs: refused by serve, one warning (not an SMT
    // one: it is the same CPU twice), and no core list that repeats one.
    let advice = advise(&facts, &plan(Some(3), None));
    assert_eq!(advice.layout.shard_cores, [0, 1, 0]);
    assert!(
        matches!(&advice.warnings[..], [Warning::Placement(r)] if r.contains("SHARDS_OVERCOMMIT")),
        "{:?}",
        advice.warnings
    );
    let text = render(&facts, &plan(Some(3), None), &advice);
    assert!(!text.contains("SWITCHBOARD_SHARD_CORES="), "{text}");
    assert!(
        text.contains("# SWITCHBOARD_SHARDS_OVERCOMMIT=on (development only)"),
        "{text}"
    );
}

#[test]
fn sixteen_cpus_in_smt_pairs_on_two_nodes_keep_a_core_per_node_free() {
    // Physical cores 0-7, threads c and c + 8; node 0 has cores 0-3
    // (CPUs 0-3, 8-11), node 1 cores 4-7 (CPUs 4-7, 12-15).
    let facts = machine(8, 2, 2);
    assert_eq!(facts.nodes[&1], [4, 5, 6, 7, 12, 13, 14, 15]);
    // Default: one shard per physical core but the first of each node,
    // whose threads take the db threads; the shard cores' siblings idle.
    check(
        &facts,
        &plan(None, None),
        &[1, 2, 3, 5, 6, 7],
        Some(&[0, 4, 8, 12]),
        &[],
    );
    let advice = advise(&facts, &plan(None, None));
    assert_eq!(advice.layout.kept_free, [0, 8, 4, 12]);
    assert_eq!(advice.layout.idle_siblings, [9, 10, 11, 13, 14, 15]);
    assert!(advice
        .notes
        .iter()
        .any(|n| n.contains("span NUMA nodes [0, 1]")));

    // Three shards fit on node 0: they stay there, and the db threads
    // take node 0's free core.
    check(&facts, &plan(Some(3), None), &[1, 2, 3], Some(&[0, 8]), &[]);
    let advice = advise(&facts, &plan(Some(3), None));
    assert!(advice
        .notes
        .iter()
        .any(|n| n.contains("fit on NUMA node 0")));

    // Eight shards take the kept cores too, and leave db threads to the
    // scheduler.
    check(
        &facts,
        &plan(Some(8), None),
        &[1, 2, 3, 5, 6, 7, 0, 4],
        None,
        &[],
    );

    // Ten: two shards go to SMT siblings, sharing a physical core.
    let shared = Warning::SmtShared {
        cores: vec![1, 2, 9, 10],
    };
    check(
        &facts,
        &plan(Some(10), None),
        &[1, 2, 3, 5, 6, 7, 0, 4, 9, 10],
        None,
        std::slice::from_ref(&shared),
    );

    // Twenty: more than the 16 CPUs, which serve refuses.
    let advice = advise(&facts, &plan(Some(20), None));
    assert!(
        matches!(&advice.warnings[0], Warning::Placement(r) if r.contains("SWITCHBOARD_SHARDS is 20 but this process may run on 16 cores")),
        "{:?}",
        advice.warnings
    );
    assert!(matches!(advice.warnings[1], Warning::SmtShared { .. }));
    assert_eq!(advice.exit_code(true), 1);
}

#[test]
fn the_affinity_mask_bounds_the_layout() {
    // taskset -c 4-7,12-15: node 1 only.
    let mut facts = machine(8, 2, 2);
    facts.allowed = vec![4, 5, 6, 7, 12, 13, 14, 15];
    check(&facts, &plan(None, None), &[5, 6, 7], Some(&[4, 12]), &[]);
    // Six physical cores on one node: core 0 is kept free.
    check(
        &machine(6, 1, 1),
        &plan(None, None),
        &[1, 2, 3, 4, 5],
        Some(&[0]),
        &[],
    );
    // Three: every core runs a shard.
    check(&machine(3, 1, 1), &plan(None, None), &[0, 1, 2], None, &[]);
}

#[test]
fn a_listed_core_list_is_judged_not_replaced() {
    let facts = machine(8, 2, 2);
    let advice = advise(&facts, &plan(None, Some(&[2, 3])));
    assert!(advice.layout.listed);
    assert_eq!(advice.layout.shard_cores, [2, 3]);
    // Node 0's idle physical cores (0 and 1) take the db threads.
    assert_eq!(advice.layout.db_cores.as_deref(), Some(&[0, 1, 8, 9][..]));
    assert!(advice.warnings.is_empty(), "{:?}", advice.warnings);

    check(
        &facts,
        &plan(None, Some(&[1, 9])),
        &[1, 9],
        Some(&[0, 2, 3, 8, 10, 11]),
        &[Warning::SmtShared { cores: vec![1, 9] }],
    );
    for (list, needle) in [
        (&[1, 1][..], "lists core 1 twice"),
        (
            &[1, 40][..],
            "lists core 40, which this process may not run on",
        ),
    ] {
        let advice = advise(&facts, &plan(None, Some(list)));
        assert!(
            matches!(&advice.warnings[0], Warning::Placement(r) if r.contains(needle)),
            "{list:?}: {:?}",
            advice.warnings
        );
    }
    let advice = advise(&facts, &plan(Some(3), Some(&[1, 2])));
    assert!(matches!(&advice.warnings[0], Warning::Placement(r) if r.contains("SHARDS is 3")));

    let mut p = plan(None, Some(&[1, 2]));
    p.db_cores = Some(vec![0, 1, 99]);
    let advice = advise(&facts, &p);
    assert_eq!(
        advice.warnings,
        [
            Warning::DbCoresOnShards { cores: vec![1] },
            Warning::DbCoresNotAllowed { cores: vec![99] },
        ]
    );
}

#[test]
fn low_limits_and_a_closed_io_uring_are_warned_about() {
    let mut facts = machine(2, 1, 1);
    facts.kernel = "5.4.0-150-generic".into();
    facts.nofile = Limit {
        soft: Some(1_024),
        hard: Some(4_096),
    };
    facts.nr_open = Some(4_096);
    facts.file_max = Some(10_000);
    facts.memlock = Limit {
        soft: Some(64 << 10),
        hard: Some(64 << 10),
    };
    facts.somaxconn = Some(128);
    facts.tcp_max_syn_backlog = Some(512);
    facts.io_uring_disabled = Some(2);
    facts.io_uring = Probe::Fails("Operation not permitted".into());
    facts.executor = Probe::Fails("the reactor did not start".into());
    let need = 2 * 9_000 + 64 + 500;
    let advice = advise(&facts, &plan(None, None));
    assert_eq!(
        advice.warnings,
        [
            Warning::Nofile {
                soft: 1_024,
                hard: Some(4_096),
                need
            },
            Warning::NrOpen {
                nr_open: 4_096,
                need
            },
            Warning::FileMax {
                file_max: 10_000,
                need
            },
            Warning::MemlockTooLowToStart { soft: 64 << 10 },
            Warning::Somaxconn { value: 128 },
            Warning::SynBacklog { value: 512 },
            Warning::KernelTooOld {
                release: "5.4.0-150-generic".into()
            },
            Warning::IoUringDisabled { value: 2 },
            Warning::IoUringFails {
                reason: "Operation not permitted".into()
            },
            Warning::ExecutorFails {
                reason: "the reactor did not start".into()
            },
        ]
    );
    let sysctls: Vec<_> = advice
        .sysctls
        .iter()
        .map(|s| (s.name, s.want, s.now))
        .collect();
    assert_eq!(
        sysctls,
        [
            ("net.core.somaxconn", 4_096, Some(128)),
            ("net.ipv4.tcp_max_syn_backlog", 4_096, Some(512)),
            ("fs.nr_open", 19_000, Some(4_096)),
            ("fs.file-max", 38_000, Some(10_000)),
        ]
    );
    assert_eq!((advice.exit_code(false), advice.exit_code(true)), (0, 1));
    let text = render(&facts, &plan(None, None), &advice);
    assert!(
        text.contains("  ! open files limit 1024 (hard 4096) is below the 18564"),
        "{text}"
    );
    assert!(
        text.contains("io_uring_setup                FAILS: Operation not permitted"),
        "{text}"
    );

    // MySQL's pool counts against the open files; more connections per
    // shard need more.
    let mut p = plan(None, None);
    p.mysql_pool = Some(6);
    p.connections_max = 50_000;
    assert_eq!(advise(&facts, &p).fds_needed, 2 * 50_000 + 64 + 6 + 500);
}

#[test]
fn a_cpu_quota_below_the_shards_is_warned_about() {
    let mut facts = machine(4, 1, 1);
    facts.cpu_quota = Some(1.5);
    let advice = advise(&facts, &plan(Some(2), None));
    assert_eq!(
        advice.warnings,
        [Warning::CpuQuota {
            quota: 1.5,
            shards: 2
        }]
    );
    facts.cpu_quota = Some(2.0);
    assert!(advise(&facts, &plan(Some(2), None)).warnings.is_empty());
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
    assert_eq!(kernel_version("5.8.0"), Some((5, 8)));
    assert_eq!(kernel_version("4.19.0-amd64"), Some((4, 19)));
    assert_eq!(kernel_version("unknown"), None);
}

#[test]
fn this_machine_reads_and_renders() {
    let facts = machine::read();
    assert!(!facts.allowed.is_empty());
    assert!(
        facts.allowed.iter().all(|c| facts.online.contains(c)),
        "{facts:?}"
    );
    assert!(kernel_version(&facts.kernel).is_some(), "{}", facts.kernel);
    let advice = advise(&facts, &plan(None, None));
    let text = render(&facts, &plan(None, None), &advice);
    assert!(text.contains("SWITCHBOARD_SHARD_CORES="), "{text}");
}
