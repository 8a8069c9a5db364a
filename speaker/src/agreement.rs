//! Whether the speakers agree on who owns what (pure).
//!
//! Every speaker runs the same election on its own view of the cluster, so every speaker
//! knows which IPs each node should announce. Views can still differ for longer than a
//! moment (a watch that lags, a Node or EndpointSlice one speaker has not seen), and then
//! two nodes may both answer for an IP, or none. So each speaker gossips a [`Digest`] of
//! the IPs it announces (its [`Claims`]); every other speaker compares it with the digest
//! of the IPs its own election gives that node. A difference that lasts longer than the
//! grace period (views converge within about a second after a change) is a disagreement:
//! counted, logged and said on the Services this speaker reports on, until it ends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(test)]
use crate::election::{Decision, Election};

/// How long two views may differ before it counts as a disagreement.
pub const GRACE: Duration = Duration::from_secs(10);

/// A summary of a set of IPs: how many, and a sum of a hash of each, so the order does not
/// matter and it can be kept up to date one IP at a time. The hash (64-bit FNV-1a of the
/// family and the address bytes) is fixed here, so speakers of different builds and
/// machines compute the same digest for the same set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digest {
    pub count: u32,
    pub sum: u64,
}

impl Digest {
    pub fn of(ips: impl IntoIterator<Item = IpAddr>) -> Digest {
        let mut d = Digest::default();
        for ip in ips {
            d.add(ip);
        }
        d
    }

    pub fn add(&mut self, ip: IpAddr) {
        self.count = self.count.saturating_add(1);
        self.sum = self.sum.wrapping_add(hash(ip));
    }

    /// Takes out an IP that was added.
    pub fn remove(&mut self, ip: IpAddr) {
        self.count = self.count.saturating_sub(1);
        self.sum = self.sum.wrapping_sub(hash(ip));
    }
}

fn hash(ip: IpAddr) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let (family, bytes): (u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (4, a.octets().to_vec()),
        IpAddr::V6(a) => (6, a.octets().to_vec()),
    };
    std::iter::once(family)
        .chain(bytes)
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// What a speaker gossips about itself: the node, the generation of its gossip identity
/// (a restarted speaker's claims replace the old one's) and the digest of what it announces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub node: String,
    pub generation: u64,
    pub digest: Digest,
}

/// The digest of the IPs each node owns under `election`, computed whole (the tests'
/// oracle for [`Owners`], which the speaker keeps per changed IP).
#[cfg(test)]
fn expected(election: &Election) -> BTreeMap<String, Digest> {
    let mut out: BTreeMap<String, Digest> = BTreeMap::new();
    for (ip, d) in &election.decisions {
        if let Decision::Owner { node, .. } = d {
            out.entry(node.clone()).or_default().add(*ip);
        }
    }
    out
}

/// The owner of each IP and the digest per owner, kept up to date one IP at a time (the
/// election says which IPs changed), so that the cost follows what changed.
#[derive(Debug, Default)]
pub struct Owners {
    of_ip: BTreeMap<IpAddr, String>,
    digests: BTreeMap<String, Digest>,
}

impl Owners {
    /// `ip` is now owned by `owner` (`None`: by nobody).
    pub fn set(&mut self, ip: IpAddr, owner: Option<&str>) {
        if self.of_ip.get(&ip).map(String::as_str) == owner {
            return;
        }
        if let Some(old) = self.of_ip.remove(&ip)
            && let Some(d) = self.digests.get_mut(&old)
        {
            d.remove(ip);
            if d.count == 0 {
                self.digests.remove(&old);
            }
        }
        if let Some(node) = owner {
            self.of_ip.insert(ip, node.to_string());
            self.digests.entry(node.to_string()).or_default().add(ip);
        }
    }

    pub fn digests(&self) -> &BTreeMap<String, Digest> {
        &self.digests
    }
}

/// A peer whose claims differ from what this speaker's election gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub node: String,
    /// What it says it announces.
    pub claimed: Digest,
    /// What this speaker's election gives it.
    pub expected: Digest,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} announces {} IPs, this speaker's view gives it {}",
            self.node, self.claimed.count, self.expected.count
        )?;
        if self.claimed.count == self.expected.count {
            f.write_str(" (other IPs)")?;
        }
        Ok(())
    }
}

/// What a comparison found out, for the log and the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A difference outlasted the grace period.
    Began(Disagreement),
    /// A peer that disagreed agrees again (or is gone).
    Ended(String),
}

/// The differences seen so far, per peer, and since when.
#[derive(Debug, Default)]
pub struct Agreement {
    differing: BTreeMap<String, (Instant, Disagreement, bool)>,
}

impl Agreement {
    /// Compares every peer's `claims` (as received; peers that sent none are not judged:
    /// an older speaker does not send them) with `expected`. Returns what began or ended.
    pub fn compare(
        &mut self,
        now: Instant,
        me: &str,
        claims: &BTreeMap<String, Digest>,
        expected: &BTreeMap<String, Digest>,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut still = BTreeMap::new();
        for (node, claimed) in claims {
            if node == me {
                continue;
            }
            let want = expected.get(node).copied().unwrap_or_default();
            if *claimed == want {
                continue;
            }
            let d = Disagreement {
                node: node.clone(),
                claimed: *claimed,
                expected: want,
            };
            let (since, confirmed) = match self.differing.remove(node) {
                Some((since, _, confirmed)) => (since, confirmed),
                None => (now, false),
            };
            let confirm = !confirmed && now.saturating_duration_since(since) >= GRACE;
            if confirm {
                findings.push(Finding::Began(d.clone()));
            }
            still.insert(node.clone(), (since, d, confirmed || confirm));
        }
        for (node, (_, _, confirmed)) in std::mem::replace(&mut self.differing, still) {
            if confirmed {
                findings.push(Finding::Ended(node));
            }
        }
        findings
    }

    /// The disagreements that outlasted the grace period, by node.
    pub fn confirmed(&self) -> Vec<&Disagreement> {
        self.differing
            .values()
            .filter(|(_, _, c)| *c)
            .map(|(_, d, _)| d)
            .collect()
    }

    /// When the oldest unconfirmed difference would be confirmed, for a wake-up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.differing
            .values()
            .filter(|(_, _, c)| !*c)
            .map(|(since, _, _)| *since + GRACE)
            .min()
    }
}

/// The sentence the Services this speaker reports on carry while disagreements last
/// (empty when there are none).
pub fn note(disagreements: &[&Disagreement]) -> String {
    if disagreements.is_empty() {
        return String::new();
    }
    let list: Vec<String> = disagreements.iter().map(ToString::to_string).collect();
    format!(
        "Speakers' views differ for more than {}s: {}.",
        GRACE.as_secs(),
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_digest_depends_on_the_set_not_the_order_and_is_fixed() {
        let a = Digest::of([ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")]);
        let b = Digest::of([ip("fd00::1"), ip("10.0.0.2"), ip("10.0.0.1")]);
        assert_eq!(a, b);
        assert_eq!(a.count, 3);
        assert_ne!(
            a,
            Digest::of([ip("10.0.0.1"), ip("10.0.0.3"), ip("fd00::1")])
        );
        // The same value on every machine and build: a speaker of another build compares
        // against this one.
        assert_eq!(Digest::of([ip("10.0.0.1")]).sum, 0x71e0_ca61_3530_a976);
        // ::ffff:10.0.0.1 is another address than 10.0.0.1.
        assert_ne!(hash(ip("10.0.0.1")), hash(ip("::ffff:10.0.0.1")));
    }

    fn d(ips: &[&str]) -> Digest {
        Digest::of(ips.iter().map(|s| ip(s)))
    }

    #[test]
    fn a_difference_counts_only_once_it_outlasts_the_grace_period_and_ends_when_it_goes() {
        let t0 = Instant::now();
        let mut a = Agreement::default();
        let expected = BTreeMap::from([("b".to_string(), d(&["10.0.0.1", "10.0.0.2"]))]);
        let claims = BTreeMap::from([
            ("b".to_string(), d(&["10.0.0.1"])),
            ("me".to_string(), d(&["10.9.9.9"])),
        ]);
        assert!(a.compare(t0, "me", &claims, &expected).is_empty());
        assert_eq!(a.next_deadline(), Some(t0 + GRACE));
        let t1 = t0 + GRACE / 2;
        assert!(a.compare(t1, "me", &claims, &expected).is_empty());
        assert!(a.confirmed().is_empty());
        let t2 = t0 + GRACE;
        let found = a.compare(t2, "me", &claims, &expected);
        assert_eq!(found.len(), 1);
        let Finding::Began(dis) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(dis.node, "b");
        assert_eq!(
            dis.to_string(),
            "node b announces 1 IPs, this speaker's view gives it 2"
        );
        assert!(a.compare(t2, "me", &claims, &expected).is_empty(), "once");
        assert_eq!(a.confirmed().len(), 1);
        assert_eq!(a.next_deadline(), None);
        assert!(note(&a.confirmed()).contains("node b announces 1 IPs"));

        let agreed = BTreeMap::from([("b".to_string(), d(&["10.0.0.2", "10.0.0.1"]))]);
        assert_eq!(
            a.compare(t2, "me", &agreed, &expected),
            [Finding::Ended("b".into())]
        );
        assert!(a.confirmed().is_empty());
        assert_eq!(note(&a.confirmed()), "");
    }

    #[test]
    fn owners_kept_one_ip_at_a_time_match_the_whole_election() {
        let owner = |n: &str| Decision::Owner {
            node: n.into(),
            interface: "eth0".into(),
        };
        let mut e = Election {
            decisions: BTreeMap::from([
                (ip("10.0.0.1"), owner("a")),
                (ip("10.0.0.2"), owner("b")),
                (ip("10.0.0.3"), owner("a")),
            ]),
            problems: Vec::new(),
        };
        let mut o = Owners::default();
        for (ip, d) in &e.decisions {
            o.set(*ip, d.owner());
        }
        assert_eq!(o.digests(), &expected(&e));
        // b's IP moves to a, one of a's is not announced any more.
        e.decisions.insert(ip("10.0.0.2"), owner("a"));
        e.decisions.insert(
            ip("10.0.0.3"),
            Decision::NotAnnounced {
                reason: ferrolb_crds::names::AnnouncementReason::NoEligibleNode,
                message: String::new(),
            },
        );
        for changed in ["10.0.0.2", "10.0.0.3"] {
            o.set(ip(changed), e.decisions[&ip(changed)].owner());
        }
        assert_eq!(o.digests(), &expected(&e));
        assert!(
            !o.digests().contains_key("b"),
            "an owner of nothing is gone"
        );
        o.set(ip("10.0.0.9"), None);
        assert_eq!(o.digests(), &expected(&e), "an unknown IP owned by nobody");
    }

    #[test]
    fn a_short_difference_is_forgotten_silently() {
        let t0 = Instant::now();
        let mut a = Agreement::default();
        let expected = BTreeMap::from([("b".to_string(), d(&["10.0.0.1"]))]);
        let differs = BTreeMap::from([("b".to_string(), Digest::default())]);
        assert!(a.compare(t0, "me", &differs, &expected).is_empty());
        assert!(
            a.compare(t0 + GRACE / 2, "me", &expected, &expected)
                .is_empty()
        );
        // Differing again starts a new grace period.
        assert!(a.compare(t0 + GRACE, "me", &differs, &expected).is_empty());
        assert_eq!(a.next_deadline(), Some(t0 + 2 * GRACE));
    }

    #[test]
    fn a_peer_that_owns_nothing_in_this_view_but_claims_something_disagrees() {
        let t0 = Instant::now();
        let mut a = Agreement::default();
        let claims = BTreeMap::from([("c".to_string(), d(&["10.0.0.7"]))]);
        a.compare(t0, "me", &claims, &BTreeMap::new());
        let found = a.compare(t0 + GRACE, "me", &claims, &BTreeMap::new());
        assert!(
            matches!(&found[..], [Finding::Began(x)] if x.expected == Digest::default()),
            "{found:?}"
        );
        // Same count, other IPs: said so.
        let other = Disagreement {
            node: "c".into(),
            claimed: d(&["10.0.0.7"]),
            expected: d(&["10.0.0.8"]),
        };
        assert!(other.to_string().ends_with("gives it 1 (other IPs)"));
    }
}
