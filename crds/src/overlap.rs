//! Which pool an address belongs to when pools overlap: the one rule the controller (which
//! allocates from the pool and counts its use) and the speaker (which takes the pool's `l2`
//! settings to announce the address) must both follow, so that they never disagree.
//!
//! - Pools are ordered by age: `metadata.creationTimestamp`, absent last, then name.
//! - A pool that shares an address with an older pool is in **Conflict** (its status says
//!   so) and governs nothing, not even its addresses that no older pool holds: a pool is
//!   either trusted whole or not at all, so that fixing the overlap is what brings it back.
//! - An address belongs to the pool not in Conflict that contains it. Pools not in Conflict
//!   never overlap each other (the newer of two would be in Conflict), so there is at most
//!   one.
//!
//! Pure: names, ages and address blocks in; verdicts out. It reads no spec field besides
//! the addresses (a disabled pool still governs the addresses it holds).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::address::{AddressBlock, Family, ip_to_u128};

/// A pool's place in the age order: older first; a pool without a creation timestamp
/// sorts after every pool that has one; ties go to the name that sorts first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolAge {
    /// `metadata.creationTimestamp`, seconds since the Unix epoch.
    pub created: Option<i64>,
    pub name: String,
}

impl PoolAge {
    pub fn new(name: &str, created: Option<i64>) -> PoolAge {
        PoolAge {
            created,
            name: name.to_string(),
        }
    }
}

impl Ord for PoolAge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // `Option`'s own order puts `None` first; an unknown age is the youngest instead.
        let key = |a: &PoolAge| (a.created.is_none(), a.created);
        key(self)
            .cmp(&key(other))
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for PoolAge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The verdicts for a set of pools: which are in Conflict (and with whom), and which pool
/// governs each address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlaps {
    /// Pool name -> the oldest older pool it overlaps.
    conflicts: BTreeMap<String, String>,
    /// The blocks of the pools not in Conflict, per family, sorted by first address (they
    /// do not overlap), with the pool's name.
    governed: BTreeMap<Family, Vec<(u128, u128, String)>>,
}

impl Overlaps {
    /// Judges `pools` (name, creation time, address blocks). A name listed twice keeps its
    /// first entry (names are unique in the cluster; this only keeps the result defined).
    pub fn new<'a>(
        pools: impl IntoIterator<Item = (&'a str, Option<i64>, &'a [AddressBlock])>,
    ) -> Overlaps {
        let mut by_age: Vec<(PoolAge, &[AddressBlock])> = Vec::new();
        for (name, created, blocks) in pools {
            if by_age.iter().all(|(a, _)| a.name != name) {
                by_age.push((PoolAge::new(name, created), blocks));
            }
        }
        by_age.sort_by(|a, b| a.0.cmp(&b.0));

        // Sweep every block in address order, remembering per family the blocks seen so
        // far that may still overlap what follows: a block overlaps an earlier-starting one
        // exactly when it starts before that one ends.
        let mut blocks: Vec<(Family, u128, u128, usize)> = by_age
            .iter()
            .enumerate()
            .flat_map(|(rank, (_, bs))| {
                bs.iter()
                    .map(move |b| (b.family(), b.first_u128(), b.last_u128(), rank))
            })
            .collect();
        blocks.sort();
        // For each pool (by rank), the oldest older pool it overlaps.
        let mut oldest_older: Vec<Option<usize>> = vec![None; by_age.len()];
        let mut open: Vec<(u128, usize)> = Vec::new();
        let mut family = None;
        for &(f, first, last, rank) in &blocks {
            if family != Some(f) {
                open.clear();
                family = Some(f);
            }
            open.retain(|&(end, _)| end >= first);
            for &(_, other) in &open {
                let (older, newer) = (other.min(rank), other.max(rank));
                if older != newer {
                    let slot = &mut oldest_older[newer];
                    *slot = Some(slot.map_or(older, |o| o.min(older)));
                }
            }
            open.push((last, rank));
        }

        let mut conflicts = BTreeMap::new();
        let mut governed: BTreeMap<Family, Vec<(u128, u128, String)>> = BTreeMap::new();
        for (rank, (age, bs)) in by_age.iter().enumerate() {
            match oldest_older[rank] {
                Some(older) => {
                    conflicts.insert(age.name.clone(), by_age[older].0.name.clone());
                }
                None => {
                    for b in bs.iter() {
                        governed.entry(b.family()).or_default().push((
                            b.first_u128(),
                            b.last_u128(),
                            age.name.clone(),
                        ));
                    }
                }
            }
        }
        for list in governed.values_mut() {
            list.sort();
        }
        Overlaps {
            conflicts,
            governed,
        }
    }

    /// The older pool that `pool` overlaps (the oldest of them), when `pool` is in Conflict.
    pub fn conflict(&self, pool: &str) -> Option<&str> {
        self.conflicts.get(pool).map(String::as_str)
    }

    /// The pool that governs `ip`: the pool not in Conflict that contains it.
    pub fn governing(&self, ip: IpAddr) -> Option<&str> {
        let list = self.governed.get(&Family::of(ip))?;
        let n = ip_to_u128(ip);
        // The last block starting at or before `n`; blocks of one pool may overlap each
        // other (entries are not merged here), so look back over those that still cover it.
        let end = list.partition_point(|(first, _, _)| *first <= n);
        list[..end]
            .iter()
            .rev()
            .find(|(_, last, _)| *last >= n)
            .map(|(_, _, name)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(entries: &[&str]) -> Vec<AddressBlock> {
        entries
            .iter()
            .map(|e| AddressBlock::parse(e).unwrap())
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_older_pool_keeps_an_overlap_and_the_newer_governs_nothing() {
        let old = blocks(&["10.0.0.0/24"]);
        let new = blocks(&["10.0.0.200-10.0.1.50", "fd00::/64"]);
        let o = Overlaps::new([
            ("b-new", Some(200), &new[..]),
            ("a-old", Some(100), &old[..]),
        ]);
        assert_eq!(o.conflict("b-new"), Some("a-old"));
        assert_eq!(o.conflict("a-old"), None);
        assert_eq!(o.governing(ip("10.0.0.250")), Some("a-old"));
        // Addresses only the pool in Conflict holds belong to no pool.
        assert_eq!(o.governing(ip("10.0.1.10")), None);
        assert_eq!(o.governing(ip("fd00::1")), None);
        assert_eq!(o.governing(ip("192.0.2.1")), None);
    }

    #[test]
    fn age_not_name_decides_and_an_unknown_age_is_the_youngest() {
        let x = blocks(&["10.0.0.0/24"]);
        let o = Overlaps::new([("zeta", Some(1), &x[..]), ("alpha", Some(2), &x[..])]);
        assert_eq!(o.governing(ip("10.0.0.1")), Some("zeta"));
        let o = Overlaps::new([("alpha", None, &x[..]), ("zeta", Some(5), &x[..])]);
        assert_eq!(o.governing(ip("10.0.0.1")), Some("zeta"));
        assert_eq!(o.conflict("alpha"), Some("zeta"));
        // Same age: the name that sorts first is the older.
        let o = Overlaps::new([("b", Some(5), &x[..]), ("a", Some(5), &x[..])]);
        assert_eq!(o.governing(ip("10.0.0.1")), Some("a"));
    }

    #[test]
    fn a_chain_of_overlaps_names_the_oldest_overlapped_pool() {
        let p1 = blocks(&["10.0.0.1-10.0.0.10"]);
        let p2 = blocks(&["10.0.0.5-10.0.0.20"]);
        let p3 = blocks(&["10.0.0.15-10.0.0.25", "10.0.0.2"]);
        let o = Overlaps::new([
            ("p1", Some(1), &p1[..]),
            ("p2", Some(2), &p2[..]),
            ("p3", Some(3), &p3[..]),
        ]);
        assert_eq!(o.conflict("p2"), Some("p1"));
        assert_eq!(o.conflict("p3"), Some("p1"), "p3 overlaps p1 at .2 and p2");
        assert_eq!(o.governing(ip("10.0.0.17")), None);
        assert_eq!(o.governing(ip("10.0.0.7")), Some("p1"));
    }

    #[test]
    fn disjoint_pools_govern_their_own_blocks_in_both_families() {
        let a = blocks(&["10.0.0.0/30", "fd00::/126", "10.0.0.8-10.0.0.9"]);
        let b = blocks(&["10.0.0.4-10.0.0.7", "fd00::4"]);
        let o = Overlaps::new([("a", Some(1), &a[..]), ("b", Some(2), &b[..])]);
        assert_eq!(o.conflict("a"), None);
        assert_eq!(o.conflict("b"), None);
        for (addr, want) in [
            ("10.0.0.3", Some("a")),
            ("10.0.0.4", Some("b")),
            ("10.0.0.7", Some("b")),
            ("10.0.0.8", Some("a")),
            ("10.0.0.10", None),
            ("fd00::3", Some("a")),
            ("fd00::4", Some("b")),
            ("::a00:1", None),
        ] {
            assert_eq!(o.governing(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn a_pool_overlapping_itself_is_no_conflict() {
        let a = blocks(&["10.0.0.0/24", "10.0.0.10-10.0.0.20", "10.0.0.0/28"]);
        let o = Overlaps::new([("a", Some(1), &a[..])]);
        assert_eq!(o.conflict("a"), None);
        assert_eq!(o.governing(ip("10.0.0.200")), Some("a"));
        assert_eq!(o.governing(ip("10.0.0.15")), Some("a"));
    }

    /// The rule written out naively, pair by pair, against the sweep.
    #[test]
    fn the_sweep_agrees_with_pairwise_comparison() {
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let pools: Vec<(String, Option<i64>, Vec<AddressBlock>)> = (0..1 + next(6))
                .map(|i| {
                    let bs = (0..1 + next(3))
                        .map(|_| {
                            let first = next(40) as u8;
                            let last = first.saturating_add(next(8) as u8);
                            AddressBlock::parse(&format!("10.0.0.{first}-10.0.0.{last}")).unwrap()
                        })
                        .collect();
                    let created = (next(4) > 0).then(|| next(3) as i64);
                    (format!("p{i}"), created, bs)
                })
                .collect();
            let o = Overlaps::new(pools.iter().map(|(n, c, b)| (n.as_str(), *c, &b[..])));
            let age = |i: usize| PoolAge::new(&pools[i].0, pools[i].1);
            let overlap = |i: usize, j: usize| {
                pools[i]
                    .2
                    .iter()
                    .any(|a| pools[j].2.iter().any(|b| a.overlaps(b)))
            };
            for i in 0..pools.len() {
                let oldest = (0..pools.len())
                    .filter(|&j| j != i && age(j) < age(i) && overlap(i, j))
                    .min_by(|&a, &b| age(a).cmp(&age(b)));
                assert_eq!(
                    o.conflict(&pools[i].0),
                    oldest.map(|j| pools[j].0.as_str()),
                    "{pools:?}"
                );
            }
            for last in 0..50u8 {
                let addr = ip(&format!("10.0.0.{last}"));
                let want = (0..pools.len())
                    .filter(|&i| o.conflict(&pools[i].0).is_none())
                    .find(|&i| pools[i].2.iter().any(|b| b.contains(addr)))
                    .map(|i| pools[i].0.as_str());
                assert_eq!(o.governing(addr), want, "{addr} in {pools:?}");
            }
        }
    }
}
