//! The used addresses of one pool and one family, kept as maximal runs so that "the lowest
//! free address" costs O(log n) in the number of allocations, whatever the pool's size.
//!
//! With `avoid_buggy` (IPv4 only), addresses ending in .0 and .255 are never handed out, and
//! two runs separated only by such addresses are stored as one, so that skipping them costs
//! nothing either.

use std::collections::BTreeMap;

/// Maximal runs of used addresses: start -> end (inclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsedRuns {
    runs: BTreeMap<u128, u128>,
    avoid_buggy: bool,
    count: u128,
}

/// True for IPv4 addresses (as numbers) that end in .0 or .255.
pub fn is_buggy_v4(n: u128) -> bool {
    matches!(n & 0xff, 0 | 0xff)
}

/// How many numbers in `[a, b]` end in .0 or .255 (a <= b).
pub fn buggy_in(a: u128, b: u128) -> u128 {
    // Buggy numbers in [0, x): two per full 256-block, plus the .0 of a started block.
    let below = |x: u128| (x / 256) * 2 + u128::from(!x.is_multiple_of(256));
    below(b) + u128::from(is_buggy_v4(b)) - below(a)
}

impl UsedRuns {
    pub fn new(avoid_buggy: bool) -> UsedRuns {
        UsedRuns {
            runs: BTreeMap::new(),
            avoid_buggy,
            count: 0,
        }
    }

    /// Number of used addresses recorded.
    pub fn count(&self) -> u128 {
        self.count
    }

    /// Number of used addresses in `[first, last]`.
    pub fn count_in(&self, first: u128, last: u128) -> u128 {
        // Runs bridged over buggy addresses hold addresses that are not used; count those out.
        let mut total = 0u128;
        let start = self.run_containing(first).map(|(s, _)| s).unwrap_or(first);
        for (&s, &e) in self.runs.range(start..=last) {
            let (a, b) = (s.max(first), e.min(last));
            if a <= b {
                total += b - a + 1 - self.buggy_between(a, b);
            }
        }
        total
    }

    fn buggy_between(&self, a: u128, b: u128) -> u128 {
        if self.avoid_buggy { buggy_in(a, b) } else { 0 }
    }

    fn run_containing(&self, n: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=n)
            .next_back()
            .filter(|(_, e)| **e >= n)
            .map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, n: u128) -> bool {
        if self.avoid_buggy && is_buggy_v4(n) {
            return false;
        }
        self.run_containing(n).is_some()
    }

    /// Is the gap strictly between `a` and `b` (a < b) made only of skipped addresses?
    fn bridgeable(&self, a: u128, b: u128) -> bool {
        if b <= a.saturating_add(1) {
            return true;
        }
        self.avoid_buggy && b - a - 1 <= 2 && (a + 1..b).all(is_buggy_v4)
    }

    /// Marks `n` used. Returns false if it already was, or if it is a skipped address.
    pub fn insert(&mut self, n: u128) -> bool {
        if self.contains(n) || (self.avoid_buggy && is_buggy_v4(n)) {
            return false;
        }
        let mut start = n;
        let mut end = n;
        if let Some((s, e)) = self.runs.range(..n).next_back().map(|(s, e)| (*s, *e))
            && self.bridgeable(e, n)
        {
            self.runs.remove(&s);
            start = s;
            end = end.max(e);
        }
        if let Some((s, e)) = self
            .runs
            .range(n.saturating_add(1)..)
            .next()
            .map(|(s, e)| (*s, *e))
            && self.bridgeable(n, s)
        {
            self.runs.remove(&s);
            end = end.max(e);
        }
        self.runs.insert(start, end);
        self.count += 1;
        true
    }

    /// Marks `n` free. Returns false if it was not used.
    pub fn remove(&mut self, n: u128) -> bool {
        if !self.contains(n) {
            return false;
        }
        let Some((s, e)) = self.run_containing(n) else {
            return false;
        };
        self.runs.remove(&s);
        // Left part: [s, n-1] minus trailing skipped addresses; right part: [n+1, e] minus
        // leading skipped ones. Skipped addresses never start or end a run.
        if n > s {
            let mut l = n - 1;
            while self.avoid_buggy && l > s && is_buggy_v4(l) {
                l -= 1;
            }
            self.runs.insert(s, l);
        }
        if n < e {
            let mut r = n + 1;
            while self.avoid_buggy && r < e && is_buggy_v4(r) {
                r += 1;
            }
            self.runs.insert(r, e);
        }
        self.count -= 1;
        true
    }

    /// The lowest address in `[first, last]` that is neither used nor skipped.
    pub fn lowest_free(&self, first: u128, last: u128) -> Option<u128> {
        let mut c = first;
        // Each turn either returns or moves past a run or a skipped address; runs are
        // maximal, so after a run at most two skipped addresses can follow.
        loop {
            if c > last {
                return None;
            }
            if let Some((_, e)) = self.run_containing(c) {
                c = e.checked_add(1)?;
                continue;
            }
            if self.avoid_buggy && is_buggy_v4(c) {
                c = c.checked_add(1)?;
                continue;
            }
            return Some(c);
        }
    }

    /// Every used address, lowest first (for tests and rebuilding).
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.runs
            .iter()
            .flat_map(|(&s, &e)| s..=e)
            .filter(move |n| !(self.avoid_buggy && is_buggy_v4(*n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn lowest_free_skips_used_runs() {
        let mut r = UsedRuns::new(false);
        assert_eq!(r.lowest_free(10, 20), Some(10));
        for n in 10..15 {
            assert!(r.insert(n));
        }
        assert!(!r.insert(12));
        assert_eq!(r.lowest_free(10, 20), Some(15));
        assert_eq!(r.runs.len(), 1);
        assert!(r.remove(12));
        assert_eq!(r.lowest_free(10, 20), Some(12));
        assert_eq!(r.count(), 4);
        assert_eq!(r.count_in(11, 14), 3);
    }

    #[test]
    fn buggy_addresses_are_skipped_and_bridged() {
        // 10.0.0.0/23 as numbers
        let base = 0x0a00_0000u128;
        let mut r = UsedRuns::new(true);
        assert_eq!(r.lowest_free(base, base + 511), Some(base + 1));
        for n in 1..=254 {
            r.insert(base + n);
        }
        // .255 and the next .0 are skipped.
        assert_eq!(r.lowest_free(base, base + 511), Some(base + 257));
        r.insert(base + 257);
        assert_eq!(r.runs.len(), 1, "runs bridge over .255/.0: {:?}", r.runs);
        assert_eq!(r.count(), 255);
        assert_eq!(r.count_in(base, base + 511), 255);
        assert!(!r.contains(base + 255));
        r.remove(base + 257);
        assert_eq!(r.runs.len(), 1);
        assert_eq!(r.lowest_free(base, base + 511), Some(base + 257));
    }

    #[test]
    fn handles_the_ends_of_the_number_space() {
        let mut r = UsedRuns::new(false);
        assert!(r.insert(u128::MAX));
        assert!(r.insert(0));
        assert_eq!(r.lowest_free(u128::MAX - 1, u128::MAX), Some(u128::MAX - 1));
        r.insert(u128::MAX - 1);
        assert_eq!(r.lowest_free(u128::MAX - 1, u128::MAX), None);
        assert_eq!(r.lowest_free(0, 3), Some(1));
    }

    proptest! {
        /// The run index answers exactly like a plain set of used addresses would.
        #[test]
        fn behaves_like_a_set(ops in prop::collection::vec((any::<bool>(), 0u128..600), 1..300), avoid in any::<bool>()) {
            let mut r = UsedRuns::new(avoid);
            let mut model = BTreeSet::new();
            let skip = |n: u128| avoid && is_buggy_v4(n);
            for (add, n) in ops {
                if skip(n) { continue; }
                if add {
                    prop_assert_eq!(r.insert(n), model.insert(n));
                } else {
                    prop_assert_eq!(r.remove(n), model.remove(&n));
                }
                prop_assert_eq!(r.count(), model.len() as u128);
                let want = (0u128..600).find(|c| !model.contains(c) && !skip(*c));
                prop_assert_eq!(r.lowest_free(0, 599), want);
                let lo = n.saturating_sub(40);
                prop_assert_eq!(r.count_in(lo, n + 40), model.range(lo..=n + 40).count() as u128);
            }
            prop_assert_eq!(r.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }
    }
}
