//! SWIM's rule that a suspect which does not refute within `suspect_to_down` is down, kept
//! from outside foca.
//!
//! foca enforces the rule with a timer per suspicion, and a change of this speaker's own
//! identity (new interfaces, a rejoin) cancels every such timer. A peer that dies while that
//! happens would stay suspect for ever, still a member, still owning its IPs. The loop
//! therefore tracks how long each member has been suspect at the same incarnation and
//! declares it down itself once foca's own timer would long have fired.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long each current suspect has been suspect, by identity and incarnation.
#[derive(Debug)]
pub struct Suspicions<K> {
    since: HashMap<K, (u16, Instant)>,
    limit: Duration,
}

impl<K: Clone + Eq + Hash> Suspicions<K> {
    /// `limit`: how long a suspicion may last before it is overdue.
    pub fn new(limit: Duration) -> Self {
        Suspicions {
            since: HashMap::new(),
            limit,
        }
    }

    /// Takes the members suspect now, with their incarnations. Returns how many of them
    /// were not suspect (at that incarnation) before, and those suspect at the same
    /// incarnation for longer than the limit. A member that is no longer suspect is
    /// forgotten; one suspected again (or at a new incarnation) starts over.
    pub fn observe(
        &mut self,
        suspects: impl IntoIterator<Item = (K, u16)>,
        now: Instant,
    ) -> Observed<K> {
        let mut current: HashMap<K, (u16, Instant)> = HashMap::new();
        let mut seen = Observed {
            new: 0,
            overdue: Vec::new(),
        };
        for (id, incarnation) in suspects {
            let since = match self.since.get(&id) {
                Some(&(inc, t)) if inc == incarnation => t,
                _ => {
                    seen.new += 1;
                    now
                }
            };
            if now.saturating_duration_since(since) > self.limit {
                seen.overdue.push((id.clone(), incarnation));
            }
            current.insert(id, (incarnation, since));
        }
        self.since = current;
        seen
    }
}

/// What one look at the suspects found.
#[derive(Debug, PartialEq, Eq)]
pub struct Observed<K> {
    /// Suspicions that began since the last look.
    pub new: usize,
    /// Suspects past the limit, with their incarnations: to be declared down.
    pub overdue: Vec<(K, u16)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(800);

    fn overdue(
        s: &mut Suspicions<&'static str>,
        now: Instant,
        v: &[(&'static str, u16)],
    ) -> Vec<(&'static str, u16)> {
        s.observe(v.iter().copied(), now).overdue
    }

    #[test]
    fn a_suspect_is_overdue_only_after_the_limit() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        assert!(overdue(&mut s, t0, &[("b", 3)]).is_empty());
        assert!(overdue(&mut s, t0 + LIMIT, &[("b", 3)]).is_empty());
        assert_eq!(
            overdue(&mut s, t0 + LIMIT + Duration::from_millis(1), &[("b", 3)]),
            vec![("b", 3)]
        );
    }

    #[test]
    fn a_refutation_or_a_cleared_suspicion_starts_the_clock_again() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        overdue(&mut s, t0, &[("b", 3), ("c", 1)]);
        // b refuted (a new incarnation, suspected again); c was cleared in between.
        let t1 = t0 + Duration::from_millis(500);
        assert!(overdue(&mut s, t1, &[("b", 4)]).is_empty());
        let t2 = t0 + Duration::from_millis(1000);
        assert!(overdue(&mut s, t2, &[("b", 4), ("c", 1)]).is_empty());
        let late = overdue(
            &mut s,
            t1 + LIMIT + Duration::from_millis(1),
            &[("b", 4), ("c", 1)],
        );
        assert_eq!(late, vec![("b", 4)]);
        let late = overdue(&mut s, t2 + LIMIT + Duration::from_millis(1), &[("c", 1)]);
        assert_eq!(late, vec![("c", 1)]);
    }

    #[test]
    fn each_suspicion_is_counted_once_when_it_begins() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        assert_eq!(s.observe([("b", 0)], t0).new, 1);
        assert_eq!(s.observe([("b", 0), ("c", 2)], t0).new, 1, "only c is new");
        assert_eq!(s.observe([("b", 0), ("c", 2)], t0).new, 0);
        assert_eq!(
            s.observe([("b", 1)], t0).new,
            1,
            "a new incarnation is a new suspicion"
        );
        assert_eq!(s.observe([], t0).new, 0);
        assert_eq!(
            s.observe([("c", 2)], t0).new,
            1,
            "suspected again after clearing"
        );
    }

    #[test]
    fn nobody_suspect_means_nothing_tracked() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        overdue(&mut s, t0, &[("b", 0)]);
        assert!(overdue(&mut s, t0 + LIMIT * 2, &[]).is_empty());
        assert!(s.since.is_empty());
    }
}
