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

    /// Takes the members suspect now, with their incarnations, and returns those suspect at
    /// the same incarnation for longer than the limit. A member that is no longer suspect is
    /// forgotten; one suspected again (or at a new incarnation) starts over.
    pub fn overdue(
        &mut self,
        suspects: impl IntoIterator<Item = (K, u16)>,
        now: Instant,
    ) -> Vec<(K, u16)> {
        let mut current: HashMap<K, (u16, Instant)> = HashMap::new();
        let mut late = Vec::new();
        for (id, incarnation) in suspects {
            let since = match self.since.get(&id) {
                Some(&(inc, t)) if inc == incarnation => t,
                _ => now,
            };
            if now.saturating_duration_since(since) > self.limit {
                late.push((id.clone(), incarnation));
            }
            current.insert(id, (incarnation, since));
        }
        self.since = current;
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(800);

    #[test]
    fn a_suspect_is_overdue_only_after_the_limit() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        assert!(s.overdue([("b", 3)], t0).is_empty());
        assert!(s.overdue([("b", 3)], t0 + LIMIT).is_empty());
        assert_eq!(
            s.overdue([("b", 3)], t0 + LIMIT + Duration::from_millis(1)),
            vec![("b", 3)]
        );
    }

    #[test]
    fn a_refutation_or_a_cleared_suspicion_starts_the_clock_again() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        s.overdue([("b", 3), ("c", 1)], t0);
        // b refuted (a new incarnation, suspected again); c was cleared in between.
        let t1 = t0 + Duration::from_millis(500);
        assert!(s.overdue([("b", 4)], t1).is_empty());
        let t2 = t0 + Duration::from_millis(1000);
        assert!(s.overdue([("b", 4), ("c", 1)], t2).is_empty());
        let late = s.overdue([("b", 4), ("c", 1)], t1 + LIMIT + Duration::from_millis(1));
        assert_eq!(late, vec![("b", 4)]);
        let late = s.overdue([("c", 1)], t2 + LIMIT + Duration::from_millis(1));
        assert_eq!(late, vec![("c", 1)]);
    }

    #[test]
    fn nobody_suspect_means_nothing_tracked() {
        let mut s = Suspicions::new(LIMIT);
        let t0 = Instant::now();
        s.overdue([("b", 0)], t0);
        assert!(
            s.overdue(Vec::<(&str, u16)>::new(), t0 + LIMIT * 2)
                .is_empty()
        );
        assert!(s.since.is_empty());
    }
}
