//! Refusing replayed gossip datagrams, and remembering which peers speak which wire version.
//!
//! Every v2 datagram carries its sender's session (fixed for the life of the sending
//! process: its start time in nanoseconds) and a counter that grows with every datagram it
//! sends. Per sending address, a datagram is fresh when its session is the newest seen
//! and its counter has not been seen within a window of the last [`WINDOW`] counters (UDP
//! may reorder a little; it never repeats). A newer session is a restarted speaker and
//! starts over; an older one is a replay, unless the newer one has been silent for
//! [`SESSION_TAKEOVER`] (a speaker restarted with its clock set back).
//!
//! v1 datagrams carry neither, so they cannot be checked: they are taken from an address
//! only while that address has not spoken v2 within [`SESSION_TAKEOVER`], so that replaying
//! old v1 captures cannot get past the check once a speaker speaks v2, while a speaker
//! rolled back to v1 is heard again after that long.
//!
//! Pure: the clock is the caller's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How many counters below the highest one seen are still accepted once (reordering).
pub const WINDOW: u64 = 64;
/// How long a session must be silent before an older one from the same address is taken.
pub const SESSION_TAKEOVER: Duration = Duration::from_secs(10);
/// Addresses silent for this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The verdict on one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fresh,
    /// Seen before, or too old for the window.
    Replayed,
    /// From a session older than the newest one this address has used.
    OldSession,
    /// A v1 datagram from an address that speaks v2.
    Downgraded,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    /// Newest v2 session, its highest counter and a bitmap of the counters below it seen
    /// (bit `i`: `top - 1 - i`).
    session: Option<(u64, u64, u64)>,
    last_v2: Option<Instant>,
    last_v1: Option<Instant>,
}

/// Per sending address, what was seen.
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    peers: HashMap<SocketAddr, Peer>,
}

impl ReplayGuard {
    /// Judges a v2 datagram and, when fresh, records it.
    pub fn check_v2(
        &mut self,
        from: SocketAddr,
        session: u64,
        counter: u64,
        now: Instant,
    ) -> Verdict {
        let peer = self.peers.entry(from).or_insert(Peer {
            session: None,
            last_v2: None,
            last_v1: None,
        });
        let verdict = match peer.session {
            None => Verdict::Fresh,
            Some((current, _, _)) if session > current => Verdict::Fresh,
            Some((current, _, _)) if session < current => {
                let silent = peer
                    .last_v2
                    .is_none_or(|t| now.saturating_duration_since(t) >= SESSION_TAKEOVER);
                if silent {
                    Verdict::Fresh
                } else {
                    Verdict::OldSession
                }
            }
            Some((_, top, seen)) => {
                if counter > top {
                    let shift = counter - top;
                    // The old top moves to bit `shift - 1`; counters falling out go.
                    let moved = match shift {
                        s if s > WINDOW => 0,
                        WINDOW => 1 << (WINDOW - 1),
                        s => (seen << s) | (1 << (s - 1)),
                    };
                    peer.session = Some((session, counter, moved));
                    peer.last_v2 = Some(now);
                    return Verdict::Fresh;
                }
                let back = top - counter;
                if back == 0 || back > WINDOW || seen & (1 << (back - 1)) != 0 {
                    return Verdict::Replayed;
                }
                peer.session = Some((session, top, seen | (1 << (back - 1))));
                peer.last_v2 = Some(now);
                return Verdict::Fresh;
            }
        };
        if verdict == Verdict::Fresh {
            peer.session = Some((session, counter, 0));
            peer.last_v2 = Some(now);
        }
        verdict
    }

    /// Judges a v1 datagram and, when taken, records that `from` speaks v1.
    pub fn check_v1(&mut self, from: SocketAddr, now: Instant) -> Verdict {
        let peer = self.peers.entry(from).or_insert(Peer {
            session: None,
            last_v2: None,
            last_v1: None,
        });
        if peer
            .last_v2
            .is_some_and(|t| now.saturating_duration_since(t) < SESSION_TAKEOVER)
        {
            return Verdict::Downgraded;
        }
        peer.last_v1 = Some(now);
        Verdict::Fresh
    }

    /// Whether to speak v1 to `to`: its latest datagram taken was v1.
    pub fn speaks_v1(&self, to: SocketAddr) -> bool {
        self.peers
            .get(&to)
            .is_some_and(|p| match (p.last_v1, p.last_v2) {
                (Some(v1), Some(v2)) => v1 > v2,
                (Some(_), None) => true,
                _ => false,
            })
    }

    /// Forgets addresses silent for an hour.
    pub fn expire(&mut self, now: Instant) {
        self.peers.retain(|_, p| {
            let last = p.last_v2.max(p.last_v1);
            last.is_some_and(|t| now.saturating_duration_since(t) < FORGET_AFTER)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_counter_is_taken_once_and_reordering_within_the_window_is_fine() {
        let mut g = ReplayGuard::default();
        let (a, t) = (addr("10.0.0.2:7946"), Instant::now());
        assert_eq!(g.check_v2(a, 100, 1, t), Verdict::Fresh);
        assert_eq!(g.check_v2(a, 100, 3, t), Verdict::Fresh);
        assert_eq!(g.check_v2(a, 100, 2, t), Verdict::Fresh, "late but unseen");
        for c in [1, 2, 3] {
            assert_eq!(g.check_v2(a, 100, c, t), Verdict::Replayed, "{c}");
        }
        assert_eq!(g.check_v2(a, 100, 3 + WINDOW + 5, t), Verdict::Fresh);
        assert_eq!(
            g.check_v2(a, 100, 4, t),
            Verdict::Replayed,
            "below the window"
        );
        assert_eq!(g.check_v2(a, 100, 3 + WINDOW + 4, t), Verdict::Fresh);
        // Another address has its own counters.
        assert_eq!(g.check_v2(addr("10.0.0.3:7946"), 5, 1, t), Verdict::Fresh);
    }

    #[test]
    fn a_restart_starts_over_and_the_old_session_is_a_replay() {
        let mut g = ReplayGuard::default();
        let (a, t) = (addr("10.0.0.2:7946"), Instant::now());
        assert_eq!(g.check_v2(a, 100, 50, t), Verdict::Fresh);
        assert_eq!(g.check_v2(a, 200, 1, t), Verdict::Fresh, "restarted");
        assert_eq!(g.check_v2(a, 100, 51, t), Verdict::OldSession);
        // A restart with the clock set back is taken once the newer session fell silent.
        let later = t + SESSION_TAKEOVER;
        assert_eq!(g.check_v2(a, 150, 1, later), Verdict::Fresh);
        assert_eq!(g.check_v2(a, 200, 2, later), Verdict::Fresh, "newer again");
    }

    #[test]
    fn v1_is_heard_from_old_speakers_only() {
        let mut g = ReplayGuard::default();
        let (old, new, t) = (addr("10.0.0.2:7946"), addr("10.0.0.3:7946"), Instant::now());
        assert_eq!(g.check_v1(old, t), Verdict::Fresh);
        assert!(g.speaks_v1(old));
        assert_eq!(g.check_v2(new, 1, 1, t), Verdict::Fresh);
        assert!(!g.speaks_v1(new));
        assert_eq!(
            g.check_v1(new, t),
            Verdict::Downgraded,
            "v1 replays of a v2 speaker"
        );
        // The old one upgrades: v2 from then on.
        assert_eq!(
            g.check_v2(old, 9, 1, t + Duration::from_millis(1)),
            Verdict::Fresh
        );
        assert!(!g.speaks_v1(old));
        // A rollback is heard again once its v2 session is silent.
        assert_eq!(g.check_v1(new, t + SESSION_TAKEOVER), Verdict::Fresh);
        assert!(g.speaks_v1(new));
        g.expire(t + SESSION_TAKEOVER + FORGET_AFTER);
        assert!(!g.speaks_v1(new));
    }
}
