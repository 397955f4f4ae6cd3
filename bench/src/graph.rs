//! The synthetic social graph: `users` users (ids 1..=users) placed on a
//! ring in a seeded random order, each a friend of the `friends / 2`
//! nearest users on either side. Every user has exactly `friends` friends,
//! and the same (users, friends, seed) gives the same graph in every
//! process, so the workers and the server's directory file agree without
//! passing the graph around. The *lattice* is the same ring in id order
//! (user i is a friend of i±1 … i±friends/2, wrapping around): the graph
//! of issue 11's workload, the same for every seed.

use std::fmt::Write as _;

/// A small deterministic generator (splitmix64): the graph and the
/// workers' choices must not depend on a crate's version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The graph: for each user (index `id - 1`) the sorted ids of its friends.
pub struct Graph {
    pub friends: Vec<Vec<u64>>,
}

impl Graph {
    /// The ring in a seeded random order, or in id order (`lattice`).
    pub fn new(users: usize, friends: usize, seed: u64, lattice: bool) -> Result<Graph, String> {
        if users < 2 {
            return Err("--users must be at least 2".into());
        }
        if !friends.is_multiple_of(2) || friends == 0 || friends >= users {
            return Err(format!(
                "--friends must be even, at least 2 and below --users (got {friends})"
            ));
        }
        let mut ring: Vec<u64> = (1..=users as u64).collect();
        let mut rng = Rng::new(seed);
        if !lattice {
            for i in (1..ring.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                ring.swap(i, j);
            }
        }
        let mut lists = vec![Vec::with_capacity(friends); users];
        for p in 0..users {
            let a = ring[p];
            for d in 1..=friends / 2 {
                let b = ring[(p + d) % users];
                lists[(a - 1) as usize].push(b);
                lists[(b - 1) as usize].push(a);
            }
        }
        for l in &mut lists {
            l.sort_unstable();
            debug_assert!(l.windows(2).all(|w| w[0] != w[1]));
        }
        Ok(Graph { friends: lists })
    }

    pub fn users(&self) -> usize {
        self.friends.len()
    }

    pub fn friends_of(&self, user: u64) -> &[u64] {
        &self.friends[(user - 1) as usize]
    }

    /// The directory file the server reads (`SWITCHBOARD_DIRECTORY`).
    pub fn directory_json(&self) -> String {
        let mut s = String::with_capacity(self.users() * (20 + 12 * self.friends[0].len()));
        s.push_str("{\"users\":[");
        for id in 1..=self.users() {
            if id > 1 {
                s.push(',');
            }
            let _ = write!(s, "{{\"id\":{id},\"name\":\"user{id}\"}}");
        }
        s.push_str("],\"friendships\":[");
        let mut first = true;
        for (i, l) in self.friends.iter().enumerate() {
            let a = i as u64 + 1;
            for &b in l.iter().filter(|&&b| b > a) {
                if !first {
                    s.push(',');
                }
                first = false;
                let _ = write!(s, "[{a},{b}]");
            }
        }
        s.push_str("]}\n");
        s
    }

    /// The same users and friendships as an XEP-0227 (PIEFXIS) file for
    /// `ejabberdctl import_piefxis`: user `userID` with `password`, a roster
    /// of its friends with subscription `both` (presence flows both ways,
    /// as between Switchboard friends).
    pub fn piefxis(&self, domain: &str, password: &str) -> String {
        let mut s = String::with_capacity(self.users() * (60 + 70 * self.friends[0].len()));
        s.push_str(
            "<?xml version='1.0' encoding='UTF-8'?>\n<server-data xmlns='urn:xmpp:pie:0'>\n",
        );
        let _ = writeln!(s, "<host jid='{domain}'>");
        for id in 1..=self.users() as u64 {
            let _ = write!(
                s,
                "<user name='user{id}' password='{password}'><query xmlns='jabber:iq:roster'>"
            );
            for f in self.friends_of(id) {
                let _ = write!(
                    s,
                    "<item jid='user{f}@{domain}' name='user{f}' subscription='both'/>"
                );
            }
            s.push_str("</query></user>\n");
        }
        s.push_str("</host>\n</server-data>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_has_exactly_k_mutual_friends_and_seed_fixes_the_graph() {
        let g = Graph::new(101, 8, 7, false).unwrap();
        for u in 1..=101u64 {
            let f = g.friends_of(u);
            assert_eq!(f.len(), 8, "user {u}");
            assert!(!f.contains(&u));
            for &v in f {
                assert!(g.friends_of(v).contains(&u), "{u} <-> {v}");
            }
        }
        assert_eq!(g.friends, Graph::new(101, 8, 7, false).unwrap().friends);
        assert_ne!(g.friends, Graph::new(101, 8, 8, false).unwrap().friends);
    }

    #[test]
    fn the_lattice_befriends_the_nearest_ids_wrapping_around() {
        let g = Graph::new(1000, 10, 7, true).unwrap();
        assert_eq!(g.friends_of(1), &[2, 3, 4, 5, 6, 996, 997, 998, 999, 1000]);
        assert_eq!(
            g.friends_of(500),
            &[495, 496, 497, 498, 499, 501, 502, 503, 504, 505]
        );
        assert_eq!(g.friends, Graph::new(1000, 10, 8, true).unwrap().friends);
    }

    #[test]
    fn piefxis_lists_every_user_with_its_roster() {
        let g = Graph::new(4, 2, 1, true).unwrap();
        let x = g.piefxis("localhost", "pw");
        assert!(x.contains("<host jid='localhost'>"));
        assert!(x.contains(
            "<user name='user1' password='pw'><query xmlns='jabber:iq:roster'>\
             <item jid='user2@localhost' name='user2' subscription='both'/>\
             <item jid='user4@localhost' name='user4' subscription='both'/></query></user>"
        ));
        assert_eq!(x.matches("<user ").count(), 4);
        assert_eq!(x.matches("<item ").count(), 8);
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Graph::new(10, 3, 1, false).is_err());
        assert!(Graph::new(10, 10, 1, true).is_err());
        assert!(Graph::new(1, 2, 1, false).is_err());
    }
}
