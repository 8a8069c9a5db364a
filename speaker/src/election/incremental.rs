//! The election kept up to date one change at a time: the [`Elector`] holds the inputs and
//! the decisions, and a change to one Service, Node, member or the pools re-decides only
//! the IPs that change can affect. Its decisions are always those [`elect`](super::elect)
//! would give for the same inputs (a property test below replays random changes against it).
//!
//! What each change re-decides:
//! - a Service: the IPs it held before and holds now (not the Services' other IPs, not
//!   other pools);
//! - a Node or a member (join, leave, standing): in the pools for which that node's step-4
//!   verdict changed, the IPs it owned (when it stops being a candidate) or may take (when
//!   it becomes one) and the unannounced ones; when a candidate's interfaces or standing
//!   changed, every IP of its pools; a change no pool can see (a label no selector reads,
//!   a node not yet a member changing readiness) re-decides nothing;
//! - the pools: everything (pools are few and change rarely).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::overlap::Overlaps;

use super::{
    CompiledPool, ConfigProblem, Decision, Election, Node, Pool, Service, Standing, Verdicts,
    World, compile_pools, decide, may_take, node_exclusion,
};

/// What a change did to one pool's candidates (see `Elector::renode`).
#[derive(Debug, Default)]
struct Hit {
    /// A candidate's interfaces or standing changed: every IP may move.
    all: bool,
    /// Nodes that became candidates.
    joined: BTreeSet<String>,
    /// Nodes that stopped being candidates.
    left: BTreeSet<String>,
}

/// What one change did: the IPs whose decision changed (new, gone, or different) and the
/// Services touched (their own value changed, or one of their IPs' decisions did), by
/// `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub ips: BTreeSet<IpAddr>,
    pub services: BTreeSet<String>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.services.is_empty()
    }

    pub fn merge(&mut self, other: Changed) {
        self.ips.extend(other.ips);
        self.services.extend(other.services);
    }
}

/// The election's inputs and its decisions, updated per change.
#[derive(Debug, Default)]
pub struct Elector {
    nodes: BTreeMap<String, Node>,
    members: BTreeSet<String>,
    /// Members not listed are Ready.
    standing: BTreeMap<String, Standing>,
    /// The pools as last given, to tell a real change from a repeat.
    pool_list: Vec<Pool>,
    pools: BTreeMap<String, CompiledPool>,
    pool_problems: BTreeSet<ConfigProblem>,
    overlaps: Overlaps,
    verdicts: BTreeMap<String, Verdicts>,
    /// By `namespace/name`.
    services: BTreeMap<String, Service>,
    /// IP -> the Services holding it.
    holders: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Pool name -> the held IPs it governs (IPs no pool governs depend on no node).
    governed: BTreeMap<String, BTreeSet<IpAddr>>,
    election: Election,
    /// IPs decided since this elector was made: the work the changes cost.
    decided: u64,
}

impl Elector {
    pub fn new() -> Elector {
        Elector::default()
    }

    /// An elector holding all of these at once, decided in one pass.
    pub fn build(
        nodes: BTreeMap<String, Node>,
        members: BTreeSet<String>,
        standing: BTreeMap<String, Standing>,
        pools: Vec<Pool>,
        services: impl IntoIterator<Item = Service>,
    ) -> Elector {
        let mut e = Elector {
            nodes,
            members,
            standing,
            ..Elector::default()
        };
        e.services = services.into_iter().map(|s| (s.key(), s)).collect();
        for (key, svc) in &e.services {
            for ip in &svc.ips {
                e.holders.entry(*ip).or_default().insert(key.clone());
            }
        }
        e.replace_pools(pools);
        e
    }

    /// The decisions (and the configuration problems of the pools).
    pub fn election(&self) -> &Election {
        &self.election
    }

    pub fn into_election(self) -> Election {
        self.election
    }

    /// The Service `namespace/name`, as the election sees it.
    pub fn service(&self, key: &str) -> Option<&Service> {
        self.services.get(key)
    }

    pub fn services(&self) -> impl Iterator<Item = (&String, &Service)> {
        self.services.iter()
    }

    /// The Services holding `ip`, by key.
    pub fn holders(&self, ip: IpAddr) -> impl Iterator<Item = &Service> {
        self.holders
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn node_names(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pool_list
    }

    /// How many IPs were decided since this elector was made (each change adds the IPs it
    /// decided again, whether or not their decision moved).
    pub fn decided(&self) -> u64 {
        self.decided
    }

    /// Sets (`Some`) or removes (`None`) the Service `key` (`namespace/name`).
    pub fn set_service(&mut self, key: &str, svc: Option<Service>) -> Changed {
        if self.services.get(key) == svc.as_ref() {
            return Changed::default();
        }
        let old = match svc {
            Some(s) => self.services.insert(key.to_string(), s),
            None => self.services.remove(key),
        };
        let mut ips = BTreeSet::new();
        for ip in old.iter().flat_map(|s| &s.ips) {
            ips.insert(*ip);
            if let Some(h) = self.holders.get_mut(ip) {
                h.remove(key);
            }
        }
        let now: Vec<IpAddr> = self
            .services
            .get(key)
            .map(|s| s.ips.clone())
            .unwrap_or_default();
        for ip in now {
            ips.insert(ip);
            self.holders.entry(ip).or_default().insert(key.to_string());
        }
        for ip in &ips {
            let held = self.holders.get(ip).is_some_and(|h| !h.is_empty());
            if !held {
                self.holders.remove(ip);
            }
            if let Some(pool) = self.overlaps.governing(*ip) {
                let set = self.governed.entry(pool.to_string()).or_default();
                if held {
                    set.insert(*ip);
                } else {
                    set.remove(ip);
                }
            }
        }
        let mut changed = self.redecide(ips);
        changed.services.insert(key.to_string());
        changed
    }

    /// Sets (`Some`) or removes (`None`) the Node `name`.
    pub fn set_node(&mut self, name: &str, node: Option<Node>) -> Changed {
        let old = self.nodes.get(name);
        if old == node.as_ref() {
            return Changed::default();
        }
        let interfaces_changed = old.map(|n| &n.interfaces) != node.as_ref().map(|n| &n.interfaces);
        match node {
            Some(n) => self.nodes.insert(name.to_string(), n),
            None => self.nodes.remove(name),
        };
        let names = BTreeSet::from([name.to_string()]);
        self.renode(&names, |_| interfaces_changed)
    }

    /// The live gossip members, and the standing of those not Ready.
    pub fn set_members(
        &mut self,
        members: BTreeSet<String>,
        standing: BTreeMap<String, Standing>,
    ) -> Changed {
        let of =
            |s: &BTreeMap<String, Standing>, n: &str| s.get(n).copied().unwrap_or(Standing::Ready);
        let mut names: BTreeSet<String> = self
            .members
            .symmetric_difference(&members)
            .cloned()
            .collect();
        let standing_changed: BTreeSet<String> = self
            .standing
            .keys()
            .chain(standing.keys())
            .filter(|n| of(&self.standing, n) != of(&standing, n))
            .cloned()
            .collect();
        names.extend(standing_changed.iter().cloned());
        self.members = members;
        self.standing = standing;
        self.renode(&names, |n| standing_changed.contains(n))
    }

    /// Replaces the pools (all of them: pools are few).
    pub fn set_pools(&mut self, pools: Vec<Pool>) -> Changed {
        if pools == self.pool_list {
            return Changed::default();
        }
        self.replace_pools(pools)
    }

    /// Compiles the pools, judges every node for each, and decides every IP again.
    fn replace_pools(&mut self, pools: Vec<Pool>) -> Changed {
        self.pool_list = pools.clone();
        self.pool_problems.clear();
        self.pools = compile_pools(pools, &mut self.pool_problems);
        self.overlaps = Overlaps::new(
            self.pools
                .values()
                .map(|p| (p.pool.name.as_str(), p.pool.created, &p.pool.blocks[..])),
        );
        self.verdicts = self
            .pools
            .iter()
            .map(|(name, pool)| {
                let v = self
                    .nodes
                    .iter()
                    .map(|(n, node)| (n.clone(), self.verdict(node, pool)))
                    .collect();
                (name.clone(), v)
            })
            .collect();
        self.governed.clear();
        for ip in self.holders.keys() {
            if let Some(pool) = self.overlaps.governing(*ip) {
                self.governed
                    .entry(pool.to_string())
                    .or_default()
                    .insert(*ip);
            }
        }
        self.election.problems = self.pool_problems.iter().cloned().collect();
        let ips = self
            .holders
            .keys()
            .chain(self.election.decisions.keys())
            .copied()
            .collect();
        self.redecide(ips)
    }

    fn verdict(&self, node: &Node, pool: &CompiledPool) -> Option<super::Exclusion> {
        let standing = self
            .standing
            .get(&node.name)
            .copied()
            .unwrap_or(Standing::Ready);
        node_exclusion(node, &self.members, standing, pool)
    }

    /// Re-judges the nodes `names` in every pool and re-decides, in the pools whose verdict
    /// on one of them changed or in which one of them is a candidate and `also(name)` says
    /// something else about it (interfaces, standing) changed, the IPs that can move:
    ///
    /// - a node that stops being a candidate: the IPs it owned (rendezvous hashing: the
    ///   others keep their owner, the best of the rest) and the unannounced ones (their
    ///   message names the excluded nodes);
    /// - a node that becomes one: the IPs it may take from their owner ([`may_take`]) and
    ///   the unannounced ones;
    /// - a candidate whose interfaces or standing changed: every IP of the pool;
    /// - a node whose reason for exclusion changed: the unannounced IPs.
    fn renode(&mut self, names: &BTreeSet<String>, also: impl Fn(&str) -> bool) -> Changed {
        let mut hits: BTreeMap<String, Hit> = BTreeMap::new();
        for (pool_name, pool) in &self.pools {
            for name in names {
                let after = self.nodes.get(name).map(|n| self.verdict(n, pool));
                let verdicts = self.verdicts.entry(pool_name.clone()).or_default();
                let before = match &after {
                    Some(v) => verdicts.insert(name.clone(), v.clone()),
                    None => verdicts.remove(name),
                };
                let (was, is) = (matches!(before, Some(None)), matches!(after, Some(None)));
                if before == after && !(is && also(name)) {
                    continue;
                }
                let hit = hits.entry(pool_name.clone()).or_default();
                match (was, is) {
                    (true, true) => hit.all = true,
                    (false, true) => {
                        hit.joined.insert(name.clone());
                    }
                    (true, false) => {
                        hit.left.insert(name.clone());
                    }
                    (false, false) => {}
                }
            }
        }
        let mut ips = BTreeSet::new();
        for (pool, hit) in &hits {
            let governed = self.governed.get(pool).into_iter().flatten();
            if hit.all {
                ips.extend(governed.copied());
                continue;
            }
            for ip in governed {
                let owner = self.election.decisions.get(ip).and_then(Decision::owner);
                let moves = match owner {
                    // Unannounced (or not decided yet): its message may change.
                    None => true,
                    Some(owner) => {
                        hit.left.contains(owner)
                            || hit.joined.iter().any(|n| self.may_take(n, owner, *ip))
                    }
                };
                if moves {
                    ips.insert(*ip);
                }
            }
        }
        self.redecide(ips)
    }

    /// Whether `newcomer` may take `ip` from `owner` (see [`may_take`]).
    fn may_take(&self, newcomer: &str, owner: &str, ip: IpAddr) -> bool {
        let services: Vec<&Service> = self
            .holders
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.services.get(k))
            .collect();
        may_take(newcomer, owner, ip, &services, &self.standing)
    }

    /// Decides `ips` again, keeping what changed.
    fn redecide(&mut self, ips: BTreeSet<IpAddr>) -> Changed {
        let mut changed = Changed::default();
        let world = World {
            nodes: &self.nodes,
            standing: &self.standing,
            pools: &self.pools,
            overlaps: &self.overlaps,
            verdicts: &self.verdicts,
        };
        self.decided += ips.len() as u64;
        for ip in ips {
            let keys = self.holders.get(&ip);
            let decision = keys.map(|keys| {
                let services: Vec<&Service> =
                    keys.iter().filter_map(|k| self.services.get(k)).collect();
                decide(ip, &services, &world)
            });
            let before = match decision {
                Some(d) => {
                    if self.election.decisions.get(&ip) == Some(&d) {
                        continue;
                    }
                    self.election.decisions.insert(ip, d)
                }
                None => self.election.decisions.remove(&ip),
            };
            if before.is_none() && keys.is_none() {
                continue;
            }
            changed.ips.insert(ip);
            changed.services.extend(keys.into_iter().flatten().cloned());
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{arb_inputs, ip, node, pool, svc, world};
    use super::super::{Decision, Inputs, TrafficPolicy, elect};
    use super::*;
    use proptest::prelude::*;

    fn elector(inputs: &Inputs) -> Elector {
        Elector::build(
            inputs
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.clone()))
                .collect(),
            inputs.members.clone(),
            inputs.standing.clone(),
            inputs.pools.clone(),
            inputs.services.iter().cloned(),
        )
    }

    #[test]
    fn a_service_change_redecides_only_its_own_ips() {
        let mut inputs = world(&["a", "b", "c"]);
        inputs.services.push(svc(
            "api",
            &["10.0.0.11"],
            TrafficPolicy::Local,
            &[("a", 1, 0)],
        ));
        let mut e = elector(&inputs);
        assert_eq!(e.election().decisions.len(), 2);
        // The Local Service's pod moves from a to b: its IP moves, web's is not touched.
        let moved = svc("api", &["10.0.0.11"], TrafficPolicy::Local, &[("b", 1, 0)]);
        let changed = e.set_service("default/api", Some(moved));
        assert_eq!(changed.ips, BTreeSet::from([ip("10.0.0.11")]));
        assert_eq!(
            changed.services,
            BTreeSet::from(["default/api".to_string()])
        );
        assert_eq!(
            e.election()
                .decision(ip("10.0.0.11"))
                .and_then(Decision::owner),
            Some("b")
        );
        // The same value again changes nothing.
        let same = svc("api", &["10.0.0.11"], TrafficPolicy::Local, &[("b", 1, 0)]);
        assert!(e.set_service("default/api", Some(same)).is_empty());
        // Gone: its IP has no decision left.
        let changed = e.set_service("default/api", None);
        assert_eq!(changed.ips, BTreeSet::from([ip("10.0.0.11")]));
        assert!(e.election().decision(ip("10.0.0.11")).is_none());
    }

    #[test]
    fn a_node_change_no_pool_sees_redecides_nothing() {
        let inputs = world(&["a", "b", "c"]);
        let mut e = elector(&inputs);
        let mut relabelled = node("b");
        relabelled.labels.insert("rack".into(), "r1".into());
        assert!(e.set_node("b", Some(relabelled)).is_empty());
        // A node that is no member yet changing readiness: still excluded as not a member.
        let mut d = node("d");
        e.set_node("d", Some(d.clone()));
        d.ready = false;
        assert!(e.set_node("d", Some(d)).is_empty());
    }

    #[test]
    fn a_node_going_not_ready_and_back_decides_only_the_ips_that_can_move() {
        let mut inputs = world(&["a", "b", "c"]);
        inputs.services = (10..70)
            .map(|i| {
                svc(
                    &format!("s{i}"),
                    &[&format!("10.0.0.{i}")],
                    TrafficPolicy::Cluster,
                    &[("elsewhere", 1, 0)],
                )
            })
            .collect();
        let mut e = elector(&inputs);
        let owned_by = |e: &Elector, n: &str| {
            e.election()
                .decisions
                .values()
                .filter(|d| d.owner() == Some(n))
                .count() as u64
        };
        let b_owned = owned_by(&e, "b");
        assert!(b_owned > 0 && b_owned < 60, "b owns some: {b_owned}");
        let mut down = node("b");
        down.ready = false;
        let start = e.decided();
        let changed = e.set_node("b", Some(down));
        // Only b's own IPs (the others keep their owner): not the pool's 60.
        assert_eq!(e.decided() - start, b_owned);
        assert_eq!(changed.ips.len() as u64, b_owned);
        assert_eq!(owned_by(&e, "b"), 0);
        // Back: only the IPs it may take from their owner, which are exactly those it had.
        let start = e.decided();
        let changed = e.set_node("b", Some(node("b")));
        assert_eq!(e.decided() - start, b_owned);
        assert_eq!(changed.ips.len() as u64, b_owned);
        assert_eq!(owned_by(&e, "b"), b_owned);
    }

    #[test]
    fn a_node_that_leaves_gives_up_its_ips_and_a_pool_without_ips_costs_nothing() {
        let mut inputs = world(&["a", "b", "c"]);
        inputs.pools.push(pool("empty", &["192.168.0.0/24"]));
        let mut e = elector(&inputs);
        let owner = e
            .election()
            .decision(ip("10.0.0.10"))
            .and_then(Decision::owner)
            .map(str::to_string)
            .unwrap();
        let mut gone = e.members().clone();
        gone.remove(&owner);
        let changed = e.set_members(gone, BTreeMap::new());
        assert_eq!(changed.ips, BTreeSet::from([ip("10.0.0.10")]));
        assert_ne!(
            e.election()
                .decision(ip("10.0.0.10"))
                .and_then(Decision::owner),
            Some(owner.as_str())
        );
    }

    /// One change to the inputs, as the speaker's watches and gossip deliver them.
    #[derive(Clone, Debug)]
    enum Step {
        Service(usize, Option<Service>),
        Node(usize, Option<Node>),
        Members(BTreeSet<String>, BTreeMap<String, Standing>),
        Pools(Vec<Pool>),
    }

    /// Random steps drawn from other random inputs: Services, nodes, members and pools
    /// swapped in and out one at a time.
    fn arb_steps() -> impl Strategy<Value = (Inputs, Vec<Step>)> {
        (
            arb_inputs(),
            prop::collection::vec((arb_inputs(), 0usize..4, 0usize..8, any::<bool>()), 1..12),
        )
            .prop_map(|(start, draws)| {
                let steps = draws
                    .into_iter()
                    .map(|(other, kind, i, remove)| match kind {
                        0 => Step::Service(
                            i,
                            (!remove)
                                .then(|| other.services.get(i % other.services.len()).cloned())
                                .flatten(),
                        ),
                        1 => Step::Node(
                            i,
                            (!remove)
                                .then(|| other.nodes.get(i % other.nodes.len().max(1)).cloned())
                                .flatten(),
                        ),
                        2 => Step::Members(other.members, other.standing),
                        _ => Step::Pools(other.pools),
                    })
                    .collect();
                (start, steps)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn changes_one_at_a_time_give_the_election_of_the_final_inputs(
            (start, steps) in arb_steps()
        ) {
            let mut e = elector(&start);
            let mut inputs = start;
            for step in steps {
                let before = e.election().decisions.clone();
                let changed = match step {
                    Step::Service(i, s) => {
                        let key = format!("ns/s{i}");
                        let s = s.map(|mut s| {
                            s.name = format!("s{i}");
                            s
                        });
                        inputs.services.retain(|x| x.key() != key);
                        inputs.services.extend(s.clone());
                        e.set_service(&key, s)
                    }
                    Step::Node(i, n) => {
                        let name = format!("n{i}");
                        let n = n.map(|mut n| {
                            n.name = name.clone();
                            n
                        });
                        inputs.nodes.retain(|x| x.name != name);
                        inputs.nodes.extend(n.clone());
                        e.set_node(&name, n)
                    }
                    Step::Members(m, s) => {
                        inputs.members = m.clone();
                        inputs.standing = s.clone();
                        e.set_members(m, s)
                    }
                    Step::Pools(p) => {
                        inputs.pools = p.clone();
                        e.set_pools(p)
                    }
                };
                let want = elect(&inputs);
                prop_assert_eq!(&e.election().decisions, &want.decisions);
                prop_assert_eq!(&e.election().problems, &want.problems);
                // What it says changed is exactly what changed.
                let after = &e.election().decisions;
                let differ: BTreeSet<IpAddr> = before
                    .keys()
                    .chain(after.keys())
                    .filter(|ip| before.get(ip) != after.get(ip))
                    .copied()
                    .collect();
                prop_assert_eq!(changed.ips, differ);
            }
        }
    }
}
