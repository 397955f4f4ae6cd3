//! Which cores the shards run on: the core-list syntax (`0-3,8`, as the
//! kernel writes it in `/sys` and systemd's `CPUAffinity=` takes it), the
//! process's affinity mask, and the one rule that places shards on cores
//! ([`place`]).
//!
//! Invariant: a shard gets a core of the process's affinity mask, and no
//! two shards share one unless `SWITCHBOARD_SHARDS_OVERCOMMIT` asked for it.
//! A shard never yields its core to a neighbour of its own, so two shards
//! on one core wait for each other's turns; that is refused at start, not
//! done silently.

/// Parses a core list: comma-separated core ids and inclusive ranges
/// (`0-3,8,10-11`), in the order written (shard `i` takes the `i`-th).
/// Spaces around items and a trailing newline (as in `/sys` files) are
/// allowed; an empty list is an error.
pub fn parse_list(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the list is empty".into());
    }
    let mut cores = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{item:?} is not a core number or a range like 2-5"))
        };
        match item.split_once('-') {
            None => cores.push(number(item)?),
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo > hi {
                    return Err(format!("{item:?} is a range that runs backwards"));
                }
                if hi - lo >= CORES_PER_RANGE_MAX {
                    return Err(format!(
                        "{item:?} is longer than {CORES_PER_RANGE_MAX} cores"
                    ));
                }
                cores.extend(lo..=hi);
            }
        }
    }
    Ok(cores)
}

/// Longest range [`parse_list`] expands: the most CPUs Linux supports
/// (`CONFIG_NR_CPUS` tops out at 8,192), so a typo like `0-4000000000`
/// is an error, not a four-billion-entry list.
const CORES_PER_RANGE_MAX: usize = 8_192;

/// Writes cores as a list [`parse_list`] reads back, runs of consecutive
/// ids as ranges (`0-3,8`); order is kept, so only ascending runs fold.
pub fn format_list(cores: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cores.len() {
        let mut j = i;
        while j + 1 < cores.len() && cores[j + 1] == cores[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cores[i].to_string()
        } else {
            format!("{}-{}", cores[i], cores[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// The cores this process may run on (`sched_getaffinity`), ascending:
/// what `taskset`, systemd's `CPUAffinity=` or a container's cpuset left
/// it. If the call fails, the first `available_parallelism` cores.
pub fn allowed() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain bits, valid when zeroed; the kernel
    // writes at most `size_of::<cpu_set_t>()` bytes into it; `CPU_ISSET`
    // reads it with an index below `CPU_SETSIZE`.
    let cores = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        } else {
            Vec::new()
        }
    };
    if cores.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    cores
}

/// What the settings ask of the shards' placement, before it is checked
/// against a machine ([`place`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    /// `SWITCHBOARD_SHARDS` as set (`None`: unset).
    pub shards: Option<usize>,
    /// `SWITCHBOARD_SHARD_CORES` as set, in order (`None`: unset).
    pub cores: Option<Vec<usize>>,
    /// `SWITCHBOARD_SHARDS_OVERCOMMIT`: more shards than allowed cores
    /// may share them round-robin (development machines only).
    pub overcommit: bool,
}

impl Ask {
    /// How many shards this asks for: `SHARDS`, else one per listed core,
    /// else `default` (the settings pass the number of [`allowed`] cores:
    /// one shard per core of the affinity mask).
    pub fn shard_count(&self, default: usize) -> usize {
        match (&self.shards, &self.cores) {
            (Some(n), _) => *n,
            (None, Some(list)) => list.len(),
            (None, None) => default,
        }
    }
}

/// Places `ask` on a process allowed to run on `allowed` (ascending):
/// the core of each shard, shard `i` at index `i`.
///
/// - A listed core must be in `allowed`, listed once, and the list as long
///   as `SHARDS` when both are set (an unset `SHARDS` takes the list's
///   length).
/// - Without a list, shard `i` takes the `i`-th allowed core: the first
///   cores of the mask, not of the machine (so `taskset -c 2,3` puts two
///   shards on 2 and 3).
/// - More shards than allowed cores is refused, unless `overcommit`: then
///   shard `i` takes the `(i mod n)`-th allowed core.
pub fn place(ask: &Ask, default_shards: usize, allowed: &[usize]) -> Result<Vec<usize>, String> {
    let mask = format_list(allowed);
    if let Some(list) = &ask.cores {
        if list.is_empty() {
            return Err("SWITCHBOARD_SHARD_CORES is empty".into());
        }
        for (i, core) in list.iter().enumerate() {
            if list[..i].contains(core) {
                return Err(format!(
                    "SWITCHBOARD_SHARD_CORES lists core {core} twice: one shard per core"
                ));
            }
            if !allowed.contains(core) {
                return Err(format!(
                    "SWITCHBOARD_SHARD_CORES lists core {core}, which this process may not run \
                     on (its affinity mask is {mask}: see taskset, CPUAffinity= or the \
                     container's cpuset)"
                ));
            }
        }
        if let Some(n) = ask.shards {
            if n != list.len() {
                return Err(format!(
                    "SWITCHBOARD_SHARDS is {n} but SWITCHBOARD_SHARD_CORES lists {} cores: one \
                     core per shard (leave SHARDS unset to take the list's length)",
                    list.len()
                ));
            }
        }
        return Ok(list.clone());
    }
    let n = ask.shard_count(default_shards);
    if n > allowed.len() && !ask.overcommit {
        return Err(format!(
            "SWITCHBOARD_SHARDS is {n} but this process may run on {} cores ({mask}): shards \
             would share cores and wait for each other's turns. Run at most {} shards, allow \
             more cores, or set SWITCHBOARD_SHARDS_OVERCOMMIT=on (development only)",
            allowed.len(),
            allowed.len()
        ));
    }
    Ok((0..n).map(|i| allowed[i % allowed.len()]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_order_with_ranges() {
        let check = |text: &str, want: &[usize]| {
            assert_eq!(parse_list(text).as_deref(), Ok(want), "{text:?}");
        };
        check("0", &[0]);
        check("3,1", &[3, 1]);
        check("0-3,8", &[0, 1, 2, 3, 8]);
        check(" 2 , 4-5 \n", &[2, 4, 5]);
        check("7-7", &[7]);
        for bad in [
            "", " ", "1,", "a", "1,x", "3-1", "-1", "1-", "1--2", "0-100000",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn lists_format_as_they_parse() {
        for (cores, text) in [
            (&[][..], ""),
            (&[0][..], "0"),
            (&[0, 1][..], "0-1"),
            (&[0, 2][..], "0,2"),
            (&[0, 1, 2, 3, 8][..], "0-3,8"),
            (&[3, 2, 1][..], "3,2,1"),
            (&[1, 2, 3, 5, 6, 7][..], "1-3,5-7"),
        ] {
            assert_eq!(format_list(cores), text);
            if !cores.is_empty() {
                assert_eq!(parse_list(text).unwrap(), cores);
            }
        }
    }

    fn ask(shards: Option<usize>, cores: Option<&[usize]>, overcommit: bool) -> Ask {
        Ask {
            shards,
            cores: cores.map(<[usize]>::to_vec),
            overcommit,
        }
    }

    /// `place` with 4 cores allowed (2-5 of a bigger machine) and a
    /// default of 4 shards: `Ok(cores)` or an error containing `Err(..)`.
    fn check(ask: Ask, want: Result<&[usize], &str>) {
        let got = place(&ask, 4, &[2, 3, 4, 5]);
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{ask:?}"),
            (Err(e), Err(needle)) => assert!(e.contains(needle), "{ask:?}: {e}"),
            (got, want) => panic!("{ask:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn shards_take_the_allowed_cores_in_order() {
        check(ask(None, None, false), Ok(&[2, 3, 4, 5]));
        check(ask(Some(2), None, false), Ok(&[2, 3]));
        check(ask(Some(6), None, true), Ok(&[2, 3, 4, 5, 2, 3]));
    }

    #[test]
    fn more_shards_than_cores_is_refused_without_overcommit() {
        check(
            ask(Some(5), None, false),
            Err("SWITCHBOARD_SHARDS is 5 but this process may run on 4 cores (2-5)"),
        );
        check(ask(Some(5), None, false), Err("SHARDS_OVERCOMMIT"));
    }

    #[test]
    fn a_core_list_places_shard_i_on_the_ith_core() {
        check(ask(None, Some(&[5, 3]), false), Ok(&[5, 3]));
        check(ask(Some(2), Some(&[5, 3]), false), Ok(&[5, 3]));
        assert_eq!(ask(None, Some(&[5, 3]), false).shard_count(4), 2);
    }

    #[test]
    fn bad_core_lists_are_refused_with_the_reason() {
        check(ask(None, Some(&[]), false), Err("empty"));
        check(
            ask(None, Some(&[2, 3, 2]), false),
            Err("lists core 2 twice"),
        );
        check(
            ask(None, Some(&[2, 1]), false),
            Err("lists core 1, which this process may not run on (its affinity mask is 2-5"),
        );
        check(
            ask(Some(3), Some(&[2, 3]), false),
            Err("SHARDS is 3 but SWITCHBOARD_SHARD_CORES lists 2 cores"),
        );
        // Overcommit is for the default layout; a list still may not repeat.
        check(ask(None, Some(&[2, 2]), true), Err("twice"));
    }

    #[test]
    fn the_mask_of_this_process_is_not_empty_and_ascending() {
        let cores = allowed();
        assert!(!cores.is_empty());
        assert!(cores.windows(2).all(|w| w[0] < w[1]), "{cores:?}");
    }
}
