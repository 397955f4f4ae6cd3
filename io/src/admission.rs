//! Admission at accept: how many connections one listener of one shard
//! holds, in total and per client address, and whether one more may come
//! in. Pure bookkeeping (no sockets, no clock), so it is tested without a
//! runtime; the engine's accept loop asks it about every accepted socket
//! and closes the socket at once when it says no.
//!
//! A **client address** is an IPv4 address (/32) or the /64 prefix of an
//! IPv6 address: one IPv6 subscriber is usually given a whole /64 and can
//! pick any address in it, so counting per IPv6 address would cap nothing.
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
//! listener reports for an IPv4 client) counts as that IPv4 address.
//!
//! Checks, in order: the address's count against the per-address cap
//! ([`Refused::PerAddress`]), then the listener's total against its cap
//! ([`Refused::Full`]). A refusal changes no count but its counter.
//!
//! Invariant: the map holds exactly the addresses with at least one open
//! connection, each with its count (an entry is removed when its count
//! reaches zero), so it never has more entries than there are open
//! connections: it is bounded by the listener's connection cap, not by how
//! many addresses ever connected.

use std::collections::HashMap;
use std::net::IpAddr;

/// What connections are counted under: an IPv4 address or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// An IPv4 client (also one seen as IPv4-mapped IPv6).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 client's address.
    V6Prefix64([u8; 8]),
}

impl AddressKey {
    /// The key `ip` is counted under.
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    AddressKey::V6Prefix64(prefix)
                }
            },
        }
    }
}

/// Why a connection was not admitted. Either way the engine closes it at
/// accept, before reading a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its client address already holds the per-address cap.
    PerAddress,
    /// The listener already holds its total cap.
    Full,
}

/// An admitted connection's place in the counts. Give it back with
/// [`Admission::release`] when the connection ends.
#[must_use = "a ticket never released keeps its connection counted forever"]
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The address it is counted under (`None`: not counted per address).
    key: Option<AddressKey>,
}

/// The counts of one listener on one shard.
#[derive(Debug)]
pub struct Admission {
    /// Connections admitted and not yet released.
    open: usize,
    /// Most connections open at once; one more is [`Refused::Full`].
    open_max: usize,
    /// Most connections open at once from one client address; one more is
    /// [`Refused::PerAddress`]. `None`: not counted per address (the admin
    /// listener, which has a small total cap of its own).
    per_address_max: Option<usize>,
    /// Open connections per client address; only non-zero counts.
    per_address: HashMap<AddressKey, usize>,
    /// Connections refused for the total cap, ever.
    refused_full: u64,
    /// Connections refused for the per-address cap, ever.
    refused_per_address: u64,
}

impl Admission {
    /// Counts for a listener holding at most `open_max` connections, and
    /// at most `per_address_max` from one client address (`None`: no
    /// per-address cap). Caps must be at least 1: a listener that admits
    /// nothing is a configuration mistake, not a limit.
    pub fn new(open_max: usize, per_address_max: Option<usize>) -> Admission {
        assert!(open_max >= 1, "a listener must admit a connection");
        assert!(
            per_address_max != Some(0),
            "an address must be admitted a connection"
        );
        Admission {
            open: 0,
            open_max,
            per_address_max,
            per_address: HashMap::new(),
            refused_full: 0,
            refused_per_address: 0,
        }
    }

    /// Counts a connection that moved here from another shard's listener
    /// (which gave its place back): always admitted, even past the caps,
    /// because a move opens no socket (the process holds as many as
    /// before); the caps then refuse new connections here until the count
    /// is back below them.
    pub fn admit_moved(&mut self, peer: IpAddr) -> Ticket {
        self.open += 1;
        let key = self.per_address_max.map(|_| AddressKey::of(peer));
        if let Some(key) = key {
            *self.per_address.entry(key).or_insert(0) += 1;
        }
        Ticket { key }
    }

    /// Admits one more connection from `peer`, or says why not (and counts
    /// the refusal).
    pub fn admit(&mut self, peer: IpAddr) -> Result<Ticket, Refused> {
        let key = match self.per_address_max {
            None => None,
            Some(max) => {
                let key = AddressKey::of(peer);
                if self.per_address.get(&key).is_some_and(|&n| n >= max) {
                    self.refused_per_address += 1;
                    return Err(Refused::PerAddress);
                }
                Some(key)
            }
        };
        if self.open >= self.open_max {
            self.refused_full += 1;
            return Err(Refused::Full);
        }
        self.open += 1;
        if let Some(key) = key {
            *self.per_address.entry(key).or_insert(0) += 1;
        }
        debug_assert!(self.per_address.len() <= self.open);
        Ok(Ticket { key })
    }

    /// Gives back an admitted connection's place. The address's entry goes
    /// when its last connection does.
    pub fn release(&mut self, ticket: Ticket) {
        assert!(self.open > 0, "released more connections than admitted");
        self.open -= 1;
        if let Some(key) = ticket.key {
            let n = self
                .per_address
                .get_mut(&key)
                .expect("a ticket's address is counted until it is released");
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&key);
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Connections open now from `peer`'s client address (0 when not
    /// counted per address).
    pub fn open_from(&self, peer: IpAddr) -> usize {
        let key = AddressKey::of(peer);
        self.per_address.get(&key).copied().unwrap_or(0)
    }

    /// Client addresses with a connection open (entries of the map).
    pub fn addresses(&self) -> usize {
        self.per_address.len()
    }

    /// Connections refused for the total cap so far.
    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }

    /// Connections refused for the per-address cap so far.
    pub fn refused_per_address(&self) -> u64 {
        self.refused_per_address
    }
}

/// One shard's share of a per-process per-address cap: the kernel spreads
/// one address's connections over the shards (SO_REUSEPORT hashes the
/// whole 4-tuple, so the client port decides), and each shard admits up to
/// `ceil(per_process_max / shards)`. A process so admits at most
/// `shards × share < per_process_max + shards` from one address; because
/// the spread is uneven, an address may be refused on one shard somewhat
/// before its total reaches `per_process_max`.
pub fn per_shard_share(per_process_max: usize, shards: usize) -> usize {
    assert!(shards >= 1);
    per_process_max.div_ceil(shards)
}
