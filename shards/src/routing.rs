//! The one routing function. Every decision of "which shard owns this
//! user" goes through [`home_shard`], so changing the placement (a cluster
//! of nodes, say) changes one function.

use crate::model::{ShardId, UserId};

/// The shard that owns `user` among `shard_count` shards. Stable across
/// processes and restarts (no per-process hash seed), and spreads
/// sequential ids evenly (splitmix64 finaliser before the modulo).
pub fn home_shard(user: UserId, shard_count: usize) -> ShardId {
    assert!(shard_count > 0, "no shards");
    (mix(user) % shard_count as u64) as ShardId
}

/// Virtual shards of a cluster: users are placed on nodes by
/// [`vshard`], a group of users at a time.
pub const VSHARDS: usize = 256;

/// The virtual shard of `user` in a cluster (`0..VSHARDS`): stable, like
/// [`home_shard`], and part of the cluster's contract (every node must
/// agree on it).
pub fn vshard(user: UserId) -> usize {
    // The high bits: independent of `home_shard`'s low-bit modulo, so a
    // virtual shard's users still spread over a node's shards.
    (mix(user) >> 56) as usize % VSHARDS
}

/// splitmix64's finaliser.
fn mix(user: UserId) -> u64 {
    let mut x = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(home_shard(1, 1), 0);
        // Stable: these values are part of the on-disk/cluster contract.
        let first: Vec<ShardId> = (1..=8).map(|u| home_shard(u, 2)).collect();
        assert_eq!(first, [1, 0, 1, 0, 0, 0, 1, 0]);
        for n in [2usize, 3, 4, 8] {
            let mut counts = vec![0u32; n];
            for u in 1..=10_000u64 {
                counts[home_shard(u, n)] += 1;
            }
            let even = 10_000 / n as u32;
            for c in counts {
                assert!(c > even * 9 / 10 && c < even * 11 / 10, "{n}: {c}");
            }
        }
    }

    #[test]
    fn virtual_shards_are_stable_spread_and_spread_their_users_over_shards() {
        // Part of the cluster contract: these must never change.
        let first: Vec<usize> = (1..=6).map(vshard).collect();
        assert_eq!(first, [145, 151, 29, 110, 99, 189]);
        let mut counts = vec![0u32; VSHARDS];
        let mut per_shard = vec![[0u32; 2]; VSHARDS];
        for u in 1..=256_000u64 {
            counts[vshard(u)] += 1;
            per_shard[vshard(u)][home_shard(u, 2)] += 1;
        }
        for (v, c) in counts.iter().enumerate() {
            assert!(*c > 800 && *c < 1200, "vshard {v}: {c}");
            let [a, b] = per_shard[v];
            assert!(a > c / 3 && b > c / 3, "vshard {v} over 2 shards: {a}/{b}");
        }
    }
}
