//! Accept-time admission: the per-address and total caps, the /32 and /64
//! keys, and the map that only holds addresses with open connections.
//! Each case is a script of steps run through one `check`.

use std::net::IpAddr;

use switchboard_io::admission::{per_shard_share, AddressKey};
use switchboard_io::{Admission, Refused, Ticket};

/// One step of a script.
enum Step {
    /// A connection from this address: admitted (`Ok`) or refused.
    Admit(&'static str, Result<(), Refused>),
    /// The `n`-th admitted connection (0-based, in admission order) ends.
    Release(usize),
    /// Open connections: total, addresses in the map.
    Open(usize, usize),
    /// Open connections from this address.
    From(&'static str, usize),
}
use Step::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `steps` against an `Admission::new(open_max, per_address_max)`,
/// checking after every step that the map never outgrows the open count;
/// at the end releases everything and checks the map is empty. Returns
/// the refusal counters (full, per address).
fn check(open_max: usize, per_address_max: Option<usize>, steps: &[Step]) -> (u64, u64) {
    let mut a = Admission::new(open_max, per_address_max);
    let mut tickets: Vec<Option<Ticket>> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Admit(addr, want) => {
                let got = a.admit(ip(addr));
                assert_eq!(
                    got.as_ref().map(|_| ()),
                    want.as_ref().copied(),
                    "step {i}: {addr}"
                );
                if let Ok(t) = got {
                    tickets.push(Some(t));
                }
            }
            Release(n) => {
                let t = tickets[*n].take().expect("released twice");
                a.release(t);
            }
            Open(total, addresses) => {
                assert_eq!((a.open(), a.addresses()), (*total, *addresses), "step {i}");
            }
            From(addr, n) => assert_eq!(a.open_from(ip(addr)), *n, "step {i}: {addr}"),
        }
        assert!(
            a.addresses() <= a.open(),
            "step {i}: the map outgrew the connections"
        );
    }
    let counters = (a.refused_full(), a.refused_per_address());
    for t in tickets.into_iter().flatten() {
        a.release(t);
    }
    assert_eq!(
        (a.open(), a.addresses()),
        (0, 0),
        "every entry goes at zero"
    );
    counters
}

#[test]
fn an_address_at_its_cap_is_refused_and_others_still_get_in() {
    let refused = check(
        10,
        Some(2),
        &[
            Admit("10.0.0.1", Ok(())),
            Admit("10.0.0.1", Ok(())),
            Admit("10.0.0.1", Err(Refused::PerAddress)),
            Admit("10.0.0.1", Err(Refused::PerAddress)),
            Admit("10.0.0.2", Ok(())),
            Open(3, 2),
            From("10.0.0.1", 2),
            From("10.0.0.2", 1),
            // One of its connections ends: the address gets one back.
            Release(0),
            From("10.0.0.1", 1),
            Admit("10.0.0.1", Ok(())),
            Admit("10.0.0.1", Err(Refused::PerAddress)),
        ],
    );
    assert_eq!(refused, (0, 3));
}

#[test]
fn entries_are_removed_at_zero() {
    check(
        10,
        Some(5),
        &[
            Admit("192.0.2.1", Ok(())),
            Admit("192.0.2.2", Ok(())),
            Admit("192.0.2.2", Ok(())),
            Open(3, 2),
            Release(0),
            Open(2, 1),
            From("192.0.2.1", 0),
            Release(1),
            Release(2),
            Open(0, 0),
        ],
    );
}

#[test]
fn the_total_cap_holds_whatever_the_addresses() {
    let refused = check(
        3,
        Some(2),
        &[
            Admit("10.0.0.1", Ok(())),
            Admit("10.0.0.2", Ok(())),
            Admit("10.0.0.3", Ok(())),
            Admit("10.0.0.4", Err(Refused::Full)),
            // An address below its own cap is refused when the listener is full.
            Admit("10.0.0.1", Err(Refused::Full)),
            Release(1),
            Admit("10.0.0.4", Ok(())),
            Open(3, 3),
        ],
    );
    assert_eq!(refused, (2, 0));
}

#[test]
fn per_address_is_checked_before_the_total() {
    let refused = check(
        2,
        Some(1),
        &[
            Admit("10.0.0.1", Ok(())),
            Admit("10.0.0.2", Ok(())),
            Admit("10.0.0.1", Err(Refused::PerAddress)),
            Admit("10.0.0.3", Err(Refused::Full)),
        ],
    );
    assert_eq!(refused, (1, 1));
}

#[test]
fn ipv6_counts_per_64_prefix_and_mapped_ipv4_as_ipv4() {
    let refused = check(
        100,
        Some(2),
        &[
            // Two addresses in one /64: one client.
            Admit("2001:db8:1:2::1", Ok(())),
            Admit("2001:db8:1:2:ffff:ffff:ffff:ffff", Ok(())),
            Admit("2001:db8:1:2::99", Err(Refused::PerAddress)),
            // The next /64 is another client.
            Admit("2001:db8:1:3::1", Ok(())),
            From("2001:db8:1:2::abcd", 2),
            // IPv4-mapped IPv6 is the IPv4 address.
            Admit("203.0.113.7", Ok(())),
            Admit("::ffff:203.0.113.7", Ok(())),
            Admit("203.0.113.7", Err(Refused::PerAddress)),
            From("::ffff:203.0.113.7", 2),
            // IPv4 is per /32: the neighbour is another client.
            Admit("203.0.113.8", Ok(())),
            Open(6, 4),
        ],
    );
    assert_eq!(refused, (0, 2));
    assert_eq!(
        AddressKey::of(ip("2001:db8:1:2::1")),
        AddressKey::V6Prefix64([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2])
    );
    assert_eq!(
        AddressKey::of(ip("::ffff:1.2.3.4")),
        AddressKey::V4([1, 2, 3, 4])
    );
}

#[test]
fn loopback_is_not_exempt() {
    let refused = check(
        10,
        Some(1),
        &[
            Admit("127.0.0.2", Ok(())),
            Admit("127.0.0.2", Err(Refused::PerAddress)),
            Admit("127.0.0.1", Ok(())),
            Admit("::1", Ok(())),
            Admit("::1", Err(Refused::PerAddress)),
        ],
    );
    assert_eq!(refused, (0, 2));
}

#[test]
fn without_a_per_address_cap_only_the_total_counts() {
    let refused = check(
        2,
        None,
        &[
            Admit("127.0.0.1", Ok(())),
            Admit("127.0.0.1", Ok(())),
            Admit("127.0.0.2", Err(Refused::Full)),
            Open(2, 0),
            From("127.0.0.1", 0),
            Release(0),
            Admit("127.0.0.1", Ok(())),
        ],
    );
    assert_eq!(refused, (1, 0));
}

#[test]
fn caps_at_exactly_the_limit_and_one_over() {
    // 1,000 from one address: the 1,000th is admitted, the 1,001st not.
    let mut a = Admission::new(9_000, Some(1_000));
    let tickets: Vec<Ticket> = (0..1_000)
        .map(|_| a.admit(ip("127.0.0.2")).unwrap())
        .collect();
    assert_eq!(a.admit(ip("127.0.0.2")), Err(Refused::PerAddress));
    assert_eq!(a.admit(ip("127.0.0.1")).map(|t| a.release(t)), Ok(()));
    assert_eq!((a.open(), a.addresses()), (1_000, 1));
    for t in tickets {
        a.release(t);
    }
    assert_eq!((a.open(), a.addresses()), (0, 0));
}

#[test]
fn each_shard_enforces_its_share_rounded_up() {
    for (max, shards, share) in [
        (1_000, 1, 1_000),
        (1_000, 2, 500),
        (1_000, 3, 334),
        (1, 8, 1),
        (7, 2, 4),
    ] {
        assert_eq!(per_shard_share(max, shards), share, "{max} over {shards}");
        // Never below the per-process cap in total, less than one more per shard above it.
        assert!(share * shards >= max && share * shards < max + shards);
    }
}

#[test]
fn a_moved_connection_is_counted_past_the_caps_and_released_like_any() {
    // Caps of 2 in total and 1 per address, both reached.
    let mut a = Admission::new(2, Some(1));
    let first = a.admit(ip("10.0.0.1")).unwrap();
    let second = a.admit(ip("10.0.0.2")).unwrap();
    assert_eq!(a.admit(ip("10.0.0.3")), Err(Refused::Full));
    // A connection moving in from another shard opens no socket: counted
    // all the same, past both caps.
    let moved = a.admit_moved(ip("10.0.0.1"));
    assert_eq!((a.open(), a.open_from(ip("10.0.0.1"))), (3, 2));
    // New connections stay refused until the count is back below the caps.
    a.release(second);
    assert_eq!(a.admit(ip("10.0.0.4")), Err(Refused::Full));
    a.release(moved);
    assert_eq!(a.open_from(ip("10.0.0.1")), 1);
    assert_eq!(a.admit(ip("10.0.0.1")), Err(Refused::PerAddress));
    let fourth = a.admit(ip("10.0.0.4")).unwrap();
    a.release(first);
    a.release(fourth);
    assert_eq!((a.open(), a.addresses()), (0, 0));
}
