//! Which node owns which users: the cluster's placement map.
//!
//! Users are grouped into [`VSHARDS`] virtual shards by
//! [`switchboard_shards::routing::vshard`] (a fixed function of the id),
//! and the map gives each virtual shard one owning node. A node that
//! joins takes an equal share from the fullest nodes, and a node that
//! leaves gives its virtual shards to the emptiest ones: a change moves
//! only the virtual shards it must ([`Placement::moves`]).
//!
//! The map is kept in JetStream KV (key [`PLACEMENT_KEY`]) as the JSON of
//! [`Placement`], and changed only by compare-and-set on its revision, so
//! two operators' changes never overwrite each other.
//!
//! Invariants (checked by [`Placement::decode`] and kept by every
//! change): `owners.len() == vshards == VSHARDS`; every owner indexes
//! `nodes`; node ids are valid ([`valid_id`]), sorted and distinct; at
//! most [`NODES_MAX`] nodes. (A node may own no virtual shard in a stored
//! map; the command's changes never make one: each node owns
//! ⌊VSHARDS / n⌋ or one more.)

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Virtual shards in a cluster. Fixed: changing it re-places every user.
pub const VSHARDS: usize = switchboard_shards::routing::VSHARDS;

/// Most nodes in one placement.
pub const NODES_MAX: usize = 64;

/// The KV key holding the map.
pub const PLACEMENT_KEY: &str = "placement";

/// The map's format, written as `format`.
pub const FORMAT: u32 = 1;

/// Whether `id` may name a node or a cluster: 1–32 of `A-Z a-z 0-9 _ -`
/// (it becomes part of NATS subjects and JetStream bucket names).
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The placement map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// [`FORMAT`].
    pub format: u32,
    /// [`VSHARDS`].
    pub vshards: usize,
    /// The nodes, sorted.
    pub nodes: Vec<String>,
    /// `owners[v]`: the index in `nodes` of virtual shard `v`'s owner.
    pub owners: Vec<u16>,
}

/// One virtual shard changing owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub vshard: usize,
    pub from: String,
    pub to: String,
}

impl Placement {
    /// Virtual shards dealt round-robin over `nodes` (sorted, distinct).
    pub fn initial(nodes: &[String]) -> Result<Placement, String> {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        check_nodes(&nodes)?;
        let n = nodes.len();
        Ok(Placement {
            format: FORMAT,
            vshards: VSHARDS,
            owners: (0..VSHARDS).map(|v| (v % n) as u16).collect(),
            nodes,
        })
    }

    /// The owner of virtual shard `v`.
    pub fn owner(&self, v: usize) -> &str {
        &self.nodes[self.owners[v] as usize]
    }

    /// The owner of `user`.
    pub fn owner_of(&self, user: u64) -> &str {
        self.owner(switchboard_shards::routing::vshard(user))
    }

    /// How many virtual shards each node owns.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut counts: BTreeMap<&str, usize> =
            self.nodes.iter().map(|n| (n.as_str(), 0)).collect();
        for v in 0..self.vshards {
            *counts.get_mut(self.owner(v)).expect("owner is a node") += 1;
        }
        counts
    }

    /// This map with `node` added: it takes `VSHARDS / (n + 1)` virtual
    /// shards, each from the node owning the most at that point (ties: the
    /// greater name), its highest-numbered one.
    pub fn with_node(&self, node: &str) -> Result<Placement, String> {
        if self.nodes.iter().any(|n| n == node) {
            return Err(format!("node {node} is already in the placement"));
        }
        let mut owners: Vec<String> = (0..self.vshards)
            .map(|v| self.owner(v).to_string())
            .collect();
        let mut nodes = self.nodes.clone();
        nodes.push(node.to_string());
        check_nodes(&nodes)?;
        let share = self.vshards / nodes.len();
        for _ in 0..share {
            let counts = count_owned(&owners, &nodes);
            let (fullest, _) = counts
                .iter()
                .filter(|(n, _)| n.as_str() != node)
                .max_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
                .expect("another node");
            let v = (0..owners.len())
                .rev()
                .find(|&v| &owners[v] == fullest)
                .expect("the fullest node owns one");
            owners[v] = node.to_string();
        }
        Placement::from_owners(nodes, &owners)
    }

    /// This map without `node`: each of its virtual shards, in order, goes
    /// to the node owning the fewest at that point (ties: the lesser name).
    pub fn without_node(&self, node: &str) -> Result<Placement, String> {
        if !self.nodes.iter().any(|n| n == node) {
            return Err(format!("node {node} is not in the placement"));
        }
        if self.nodes.len() == 1 {
            return Err(format!(
                "node {node} is the only node: nothing could take its users"
            ));
        }
        let mut owners: Vec<String> = (0..self.vshards)
            .map(|v| self.owner(v).to_string())
            .collect();
        let nodes: Vec<String> = self.nodes.iter().filter(|n| *n != node).cloned().collect();
        for v in 0..owners.len() {
            if owners[v] == node {
                let counts = count_owned(&owners, &nodes);
                let (emptiest, _) = counts
                    .iter()
                    .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
                    .expect("another node");
                owners[v] = emptiest.clone();
            }
        }
        Placement::from_owners(nodes, &owners)
    }

    /// The virtual shards whose owner differs between `self` and `next`.
    pub fn moves(&self, next: &Placement) -> Vec<Move> {
        (0..self.vshards.min(next.vshards))
            .filter(|&v| self.owner(v) != next.owner(v))
            .map(|v| Move {
                vshard: v,
                from: self.owner(v).to_string(),
                to: next.owner(v).to_string(),
            })
            .collect()
    }

    /// The map as stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a placement serialises")
    }

    /// A stored map, checked against every invariant.
    pub fn decode(bytes: &[u8]) -> Result<Placement, String> {
        let p: Placement = serde_json::from_slice(bytes)
            .map_err(|e| format!("the placement is not valid JSON of a placement: {e}"))?;
        if p.format != FORMAT {
            return Err(format!(
                "the placement has format {}, this build reads {FORMAT}",
                p.format
            ));
        }
        if p.vshards != VSHARDS || p.owners.len() != VSHARDS {
            return Err(format!(
                "the placement has {} virtual shards ({} owners), this build has {VSHARDS}",
                p.vshards,
                p.owners.len()
            ));
        }
        check_nodes(&p.nodes)?;
        let mut sorted = p.nodes.clone();
        sorted.sort();
        sorted.dedup();
        if sorted != p.nodes {
            return Err("the placement's nodes are not sorted and distinct".into());
        }
        if let Some(bad) = p.owners.iter().find(|&&o| o as usize >= p.nodes.len()) {
            return Err(format!(
                "the placement names owner {bad} of {} nodes",
                p.nodes.len()
            ));
        }
        Ok(p)
    }

    fn from_owners(mut nodes: Vec<String>, owners: &[String]) -> Result<Placement, String> {
        nodes.sort();
        let index: BTreeMap<&str, u16> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u16))
            .collect();
        let owners = owners.iter().map(|o| index[o.as_str()]).collect();
        Ok(Placement {
            format: FORMAT,
            vshards: VSHARDS,
            nodes,
            owners,
        })
    }
}

/// Virtual shards owned by each of `nodes` (zero included).
fn count_owned(owners: &[String], nodes: &[String]) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = nodes.iter().map(|n| (n.clone(), 0)).collect();
    for o in owners {
        if let Some(c) = counts.get_mut(o) {
            *c += 1;
        }
    }
    counts
}

fn check_nodes(nodes: &[String]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("a placement needs at least one node".into());
    }
    if nodes.len() > NODES_MAX {
        return Err(format!("{} nodes: at most {NODES_MAX}", nodes.len()));
    }
    if let Some(bad) = nodes.iter().find(|n| !valid_id(n)) {
        return Err(format!("node id {bad:?} is not 1-32 of A-Z a-z 0-9 _ -"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn spread(p: &Placement) -> (usize, usize) {
        let c = p.counts();
        (*c.values().min().unwrap(), *c.values().max().unwrap())
    }

    #[test]
    fn the_first_map_deals_every_virtual_shard_evenly() {
        let p = Placement::initial(&names(&["c", "a", "b", "a"])).unwrap();
        assert_eq!(p.nodes, names(&["a", "b", "c"]));
        let (lo, hi) = spread(&p);
        assert!(hi - lo <= 1, "{lo}..{hi}");
        assert_eq!(Placement::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn adding_a_node_moves_only_its_share_and_only_to_it() {
        let mut p = Placement::initial(&names(&["a", "b", "c"])).unwrap();
        for (i, new) in ["d", "e", "f", "g"].iter().enumerate() {
            let next = p.with_node(new).unwrap();
            let moves = p.moves(&next);
            assert_eq!(moves.len(), VSHARDS / (4 + i), "{new}");
            assert!(moves.iter().all(|m| m.to == *new), "{moves:?}");
            let (lo, hi) = spread(&next);
            assert!(hi - lo <= 1, "{new}: {lo}..{hi}");
            p = Placement::decode(&next.encode()).unwrap();
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_virtual_shards() {
        let p = Placement::initial(&names(&["a", "b", "c", "d"])).unwrap();
        let next = p.without_node("b").unwrap();
        let moves = p.moves(&next);
        assert_eq!(moves.len(), p.counts()["b"]);
        assert!(moves.iter().all(|m| m.from == "b" && m.to != "b"));
        assert_eq!(next.nodes, names(&["a", "c", "d"]));
        let (lo, hi) = spread(&next);
        assert!(hi - lo <= 1, "{lo}..{hi}");
        assert!(next.without_node("b").is_err());
        let one = Placement::initial(&names(&["a"])).unwrap();
        assert!(one.without_node("a").is_err());
        assert!(p.with_node("a").is_err());
    }

    #[test]
    fn a_stored_map_that_breaks_an_invariant_is_refused() {
        let p = Placement::initial(&names(&["a", "b"])).unwrap();
        let mut bad = p.clone();
        bad.owners[3] = 2;
        assert!(Placement::decode(&bad.encode()).is_err());
        let mut bad = p.clone();
        bad.owners.pop();
        assert!(Placement::decode(&bad.encode()).is_err());
        let mut bad = p.clone();
        bad.nodes = names(&["b", "a"]);
        assert!(Placement::decode(&bad.encode()).is_err());
        let mut bad = p.clone();
        bad.format = 2;
        assert!(Placement::decode(&bad.encode()).is_err());
        let mut bad = p.clone();
        bad.nodes = names(&["a", "b.c"]);
        assert!(Placement::decode(&bad.encode()).is_err());
        assert!(Placement::decode(b"{").is_err());
        assert!(Placement::initial(&[]).is_err());
    }

    #[test]
    fn ids_that_would_break_a_subject_or_bucket_name_are_refused() {
        for ok in ["a", "node-1", "N_2", &"x".repeat(32)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(33), "é"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
