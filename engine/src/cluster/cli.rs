//! `switchboard cluster status|init|add|remove|forget`: the operator's
//! view and changes of the placement map, and the cluster's end (its
//! buckets deleted, once no node runs). Every change is a compare-and-set on the
//! map's revision: two operators changing it at once never lose one
//! change; the later one is refused and says to run again.

use async_nats::jetstream::{self, kv};

use super::link::{self, Heartbeat};
use super::placement::{Placement, PLACEMENT_KEY};
use crate::limits;

/// What a command printed, or why it failed (exit 2).
pub type Outcome = Result<String, String>;

/// Runs `args` (`status`, `init NODE...`, `add NODE`, `remove NODE`)
/// against the cluster `cluster` on `url`.
pub fn run(url: &str, cluster: &str, args: &[String]) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    // Every step is bounded: a NATS that goes away mid-command must not
    // hang it (the client would reconnect for ever).
    let bound =
        std::time::Duration::from_millis(limits::CLUSTER_CONNECT_MS + 2 * limits::CLUSTER_JOIN_MS);
    runtime.block_on(async {
        match tokio::time::timeout(bound, command(url, cluster, args)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer from NATS at {url} within {} ms: nothing may have been written; see `switchboard cluster status`",
                bound.as_millis()
            )),
        }
    })
}

async fn command(url: &str, cluster: &str, args: &[String]) -> Outcome {
    let (verb, rest) = match args.split_first() {
        Some((verb, rest)) => (verb.as_str(), rest),
        None => return Err(USAGE.into()),
    };
    let one = |rest: &[String]| match rest {
        [node] => Ok(node.clone()),
        _ => Err(format!("`cluster {verb}` takes one node id\n{USAGE}")),
    };
    match verb {
        "status" | "forget" if rest.is_empty() => {}
        "init" if !rest.is_empty() => {}
        "add" | "remove" => {
            one(rest)?;
        }
        _ => return Err(USAGE.into()),
    }
    let client = link::connect(url, "switchboard-cluster-cli", limits::CLUSTER_CONNECT_MS).await?;
    let js = jetstream::new(client.clone());
    // Looking (status, forget) makes nothing: a cluster with no buckets
    // has nothing to show or forget.
    if matches!(verb, "status" | "forget") {
        let names = link::Buckets::of(cluster);
        let exists = js.get_key_value(&names.placement).await.is_ok()
            || js.get_key_value(&names.nodes).await.is_ok();
        if !exists {
            let _ = client.flush().await;
            return Ok(format!(
                "cluster {cluster}: no placement yet (`switchboard cluster init NODE...`), no node has joined\n"
            ));
        }
    }
    let (placement, nodes) = link::buckets(&js, cluster).await?;
    let result = match verb {
        "status" => status(cluster, &placement, &nodes).await,
        "forget" => forget(&js, cluster, &nodes).await,
        "init" => init(&placement, rest).await,
        "add" => change(&placement, &one(rest)?, true).await,
        _ => change(&placement, &one(rest)?, false).await,
    };
    let _ = client.flush().await;
    result
}

const USAGE: &str =
    "usage: switchboard cluster status | init NODE... | add NODE | remove NODE | forget";

/// Deletes the cluster's two buckets (its placement map and heartbeats),
/// refused while a node heartbeats.
async fn forget(js: &jetstream::Context, cluster: &str, nodes: &kv::Store) -> Outcome {
    let live = link::read_nodes(nodes).await?;
    if !live.is_empty() {
        let names: Vec<&str> = live.iter().map(|b| b.node.as_str()).collect();
        return Err(format!(
            "nodes are alive ({}): stop them first; nothing deleted",
            names.join(", ")
        ));
    }
    let names = super::link::Buckets::of(cluster);
    for bucket in [&names.placement, &names.nodes] {
        js.delete_key_value(bucket)
            .await
            .map_err(|e| format!("cannot delete the KV bucket {bucket}: {e}"))?;
    }
    Ok(format!(
        "cluster {cluster} forgotten: buckets {} and {} deleted\n",
        names.placement, names.nodes
    ))
}

async fn status(cluster: &str, placement: &kv::Store, nodes: &kv::Store) -> Outcome {
    let current = link::read_placement(placement).await?;
    let live = link::read_nodes(nodes).await?;
    let now = crate::runtime::Clock::new().now_ms();
    let mut out = String::new();
    let mut names: Vec<String> = live.iter().map(|b| b.node.clone()).collect();
    match &current {
        Some((rev, p)) => {
            out.push_str(&format!(
                "cluster {cluster}: placement revision {rev}, {} nodes, {} virtual shards\n",
                p.nodes.len(),
                p.vshards
            ));
            names.extend(p.nodes.iter().cloned());
        }
        None => out.push_str(&format!(
            "cluster {cluster}: no placement yet (`switchboard cluster init NODE...`)\n"
        )),
    }
    names.sort();
    names.dedup();
    out.push_str("node\tvshards\talive\tpid\tlisten\tversion\n");
    for name in names {
        let owns = current
            .as_ref()
            .map(|(_, p)| {
                p.counts()
                    .get(name.as_str())
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into())
            })
            .unwrap_or_else(|| "-".into());
        let beat: Option<&Heartbeat> = live.iter().find(|b| b.node == name);
        let line = match beat {
            Some(b) => format!(
                "{name}\t{owns}\tyes ({:.1} s ago)\t{}\t{}\t{}\n",
                now.saturating_sub(b.at_ms) as f64 / 1e3,
                b.pid,
                b.listen.as_deref().unwrap_or("-"),
                b.version
            ),
            None => format!("{name}\t{owns}\tno\t-\t-\t-\n"),
        };
        out.push_str(&line);
    }
    Ok(out)
}

async fn init(store: &kv::Store, nodes: &[String]) -> Outcome {
    let p = Placement::initial(nodes)?;
    match store.create(PLACEMENT_KEY, p.encode().into()).await {
        Ok(rev) => Ok(format!(
            "placement revision {rev}: {} virtual shards over {}\n",
            p.vshards,
            describe(&p)
        )),
        Err(e) => match link::read_placement(store).await {
            Ok(Some((rev, _))) => Err(format!(
                "a placement exists already (revision {rev}): change it with `cluster add` or `cluster remove`"
            )),
            _ => Err(format!("cannot write the placement: {e}")),
        },
    }
}

async fn change(store: &kv::Store, node: &str, add: bool) -> Outcome {
    let Some((rev, p)) = link::read_placement(store).await? else {
        return Err("no placement yet: `switchboard cluster init NODE...` makes one".into());
    };
    let next = match add {
        true => p.with_node(node)?,
        false => p.without_node(node)?,
    };
    let moves = p.moves(&next);
    match store.update(PLACEMENT_KEY, next.encode().into(), rev).await {
        Ok(new_rev) => {
            let mut by_pair = std::collections::BTreeMap::<(String, String), usize>::new();
            for m in &moves {
                *by_pair.entry((m.from.clone(), m.to.clone())).or_default() += 1;
            }
            let pairs: Vec<String> = by_pair
                .iter()
                .map(|((from, to), n)| format!("{n} {from}->{to}"))
                .collect();
            Ok(format!(
                "placement revision {new_rev}: {} virtual shards moved ({}); now {}\n",
                moves.len(),
                pairs.join(", "),
                describe(&next)
            ))
        }
        Err(e) => {
            let now = link::read_placement(store)
                .await
                .ok()
                .flatten()
                .map(|(r, _)| r);
            match now {
                Some(now) if now != rev => Err(format!(
                    "the placement changed meanwhile (revision {rev} -> {now}): nothing written; run the command again"
                )),
                _ => Err(format!("cannot write the placement: {e}")),
            }
        }
    }
}

fn describe(p: &Placement) -> String {
    p.counts()
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
