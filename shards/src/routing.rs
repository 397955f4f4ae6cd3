//! The one routing function. Every decision of "which shard owns this
//! user" goes through [`home_shard`], so changing the placement (a cluster
//! of nodes, say) changes one function.

use crate::model::{ShardId, UserId};

/// The shard that owns `user` among `shard_count` shards. Stable across
/// processes and restarts (no per-process hash seed), and spreads
/// sequential ids evenly (splitmix64 finaliser before the modulo).
pub fn home_shard(user: UserId, shard_count: usize) -> ShardId {
    assert!(shard_count > 0, "no shards");
    let mut x = user.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % shard_count as u64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(home_shard(1, 1), 0);
        // Stable: these values are part of the on-disk/cluster contract.
        let first: Vec<ShardId> = (1..=8).map(|u| home_shard(u, 2)).collect();
        assert_eq!(first, (1..=8).map(|u| home_shard(u, 2)).collect::<Vec<_>>());
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
}
