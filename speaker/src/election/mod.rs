//! The election: which single node announces each LoadBalancer IP.
//!
//! Every speaker runs [`elect`] on the same [`Inputs`] (nodes, gossip members, pools,
//! Services with their endpoints) and gets the same [`Decision`] per IP, so no lock object is
//! needed. This module is pure and synchronous: no client, no clock, no I/O, no logging (the
//! shell logs and reports *changes* of decisions; logging here would repeat every IP on every
//! recomputation). It must not touch sockets, the API server or membership state.
//!
//! Rules, in the order they are applied per IP (the stage at which the candidate set becomes
//! empty names the [`AnnouncementReason`]):
//!
//! 1. **Pool.** The IP belongs to the pool that governs it by the rule the controller
//!    allocates by ([`ferrolb_crds::overlap`]): of overlapping pools the older keeps the
//!    overlap, and a pool in `Conflict` governs nothing. No pool: not announced
//!    (`NoEligibleNode`), as the speaker has no `l2` settings for the IP.
//! 2. **NodePorts.** For an IP whose ingress says `ipMode: Proxy` (its pool forwards to
//!    NodePorts), a Service without any NodePort takes no part; none left: not announced
//!    (`NoNodePort`): there is nothing to forward its traffic to.
//! 3. **Endpoints.** Services sharing an IP are decided together. An endpoint is usable as
//!    kube-proxy uses it: ready, or else serving and terminating (a pod draining its
//!    connections, which kube-proxy still sends traffic to when nothing ready is left). A
//!    Service with no usable endpoint anywhere takes no part; when no sharing Service
//!    has one, the IP is not announced (`NoLocalEndpoints`: the fix is the same, make pods
//!    ready). A Service without endpoints does not withdraw or narrow an IP it shares: one
//!    Service scaled to zero must not take its neighbours on the IP down with it.
//! 4. **Node.** A node is a candidate when its speaker is a live member that is not still
//!    starting (a speaker whose caches have not synced or whose first election is not applied
//!    cannot answer yet, so its peers keep its IPs until its identity says Ready), the node
//!    is Ready, it does not have `NetworkUnavailable=True`, it lacks the label
//!    `node.kubernetes.io/exclude-from-external-load-balancers`, and it matches the pool's
//!    `l2.nodeSelector` (absent or empty: every node; invalid: no node, and reported).
//!    None left: `NoEligibleNode`.
//! 5. **Local endpoints.** For every participating Service with `externalTrafficPolicy:
//!    Local`, the node must hold a usable endpoint of it: the intersection over Services,
//!    i.e. the most restrictive reading when sharing Services disagree (the controller
//!    refuses such sharing; this keeps us safe if it slips through). None left:
//!    `NoLocalEndpoints`. kube-proxy's own rule on each node is "the local ready endpoints,
//!    else the local serving-and-terminating ones", so a node whose pods are all draining
//!    still serves: it stays a candidate (the IP is not withdrawn while kube-proxy would
//!    still deliver), but a node with a ready local endpoint of every Local Service is
//!    preferred over one that has only draining ones (step 7).
//! 6. **Interface.** The node's announcing interface for the IP (see [`announcing_interface`])
//!    exists and is up. None left: `NoInterface`.
//! 7. **Owner.** Among the eligible nodes of the best tier: a Ready speaker before a stale
//!    one (whose view of the cluster may be old: it keeps only IPs no Ready speaker can
//!    take), then the best endpoint tier (see step 5; for Cluster Services every node is of
//!    the best), rendezvous (highest-random-weight)
//!    hashing: the node with the highest [`score`] wins, ties going to the name that sorts
//!    first. A node joining takes
//!    only the IPs it now wins; a node leaving gives up only the IPs it owned.
//!
//! The score is the first 8 bytes (big-endian) of SHA-256 of the UTF-8 bytes of
//! `node_name + "#" + ip`, with the IP in Rust's canonical text form (IPv6 as RFC 5952: lower
//! case, longest zero run compressed, the form Kubernetes writes in status). Why SHA-256: it
//! is a fixed, published function (unlike `std`'s `DefaultHasher`/SipHash keys, which may
//! change between Rust releases), an operator can recompute an owner with `sha256sum`, it is
//! the hash MetalLB users already know, and the crate already depends on `sha2`. Plain FNV-1a
//! 64 was tried first and rejected: its weak avalanche skewed the spread of 1,000 IPs over 5
//! nodes to 100..256 per node (stddev 57 against 12.6 for a fair coin); SHA-256 gives 197..208.
//! Its cost (a few hundred ns per node and IP) is irrelevant at election rates.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ferrolb_crds::names::{AnnouncementReason, LABEL_EXCLUDE_FROM_EXTERNAL_LB};
use ferrolb_crds::overlap::Overlaps;

pub use crate::membership::Standing;
use ferrolb_crds::selector::{Selector, SelectorError};
use ferrolb_crds::{AddressBlock, AddressError, IPPoolSpec};
use ipnetwork::IpNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use regex::Regex;
use sha2::{Digest, Sha256};

mod incremental;
pub use incremental::{Changed, Elector};

/// Node names listed per exclusion cause in a message before "(+N more)".
const NAMES_PER_CAUSE: usize = 5;

/// A node as the election sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// The `NetworkUnavailable` condition is `True`.
    pub network_unavailable: bool,
    /// The node's interfaces, as its speaker reports them.
    pub interfaces: Vec<Interface>,
}

pub use crate::membership::identity::Interface;

/// A pool as the speaker needs it: its addresses and its `l2` settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pool {
    pub name: String,
    /// `metadata.creationTimestamp` in seconds: the older of two overlapping pools keeps
    /// the overlap.
    pub created: Option<i64>,
    pub blocks: Vec<AddressBlock>,
    /// `l2.nodeSelector`: absent or empty selects every node.
    pub node_selector: Option<LabelSelector>,
    /// `l2.interfaces`: regexes matched against the whole interface name.
    pub interfaces: Vec<String>,
}

impl Pool {
    /// The speaker's view of an `IPPool`. Entries that do not parse (the API server rejects
    /// them, so only a hand-edited or older object has them) are left out and returned.
    pub fn from_spec(
        name: &str,
        created: Option<i64>,
        spec: &IPPoolSpec,
    ) -> (Pool, Vec<AddressError>) {
        let mut errors = Vec::new();
        let blocks = spec
            .addresses
            .iter()
            .filter_map(|a| AddressBlock::parse(a).map_err(|e| errors.push(e)).ok())
            .collect();
        let l2 = spec.l2.clone().unwrap_or_default();
        let pool = Pool {
            name: name.to_string(),
            created,
            blocks,
            node_selector: l2.node_selector,
            interfaces: l2.interfaces,
        };
        (pool, errors)
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// A Service's endpoints on one node, counted from its EndpointSlices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointState {
    /// Endpoints with `ready` true.
    pub ready: u32,
    /// Endpoints that are not ready but serving and terminating: pods draining their
    /// connections, which kube-proxy still uses when no ready endpoint is left.
    pub serving_terminating: u32,
}

impl EndpointState {
    /// The node can serve this Service's traffic itself: kube-proxy there has a usable
    /// local endpoint (a ready one, else a serving and terminating one).
    pub fn can_serve(&self) -> bool {
        self.tier() > EndpointTier::None
    }

    /// How well the node can serve: kube-proxy prefers ready endpoints to draining ones.
    pub fn tier(&self) -> EndpointTier {
        if self.ready > 0 {
            EndpointTier::Ready
        } else if self.serving_terminating > 0 {
            EndpointTier::Draining
        } else {
            EndpointTier::None
        }
    }
}

/// The best endpoints a node holds for a Service, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndpointTier {
    None,
    /// Only serving-and-terminating endpoints.
    Draining,
    Ready,
}

/// A port's `protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// From `spec.ports[].protocol` (absent means TCP); `None` for anything else.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// One of a Service's `spec.ports`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
    /// `nodePort`; `None` with `allocateLoadBalancerNodePorts: false`.
    pub node_port: Option<u16>,
}

/// A Service of `type: LoadBalancer` that holds IPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `status.loadBalancer.ingress[].ip`.
    pub ips: Vec<IpAddr>,
    /// The IPs whose ingress entry says `ipMode: Proxy` (their pool forwards to NodePorts):
    /// kube-proxy leaves them alone and the owner's speaker forwards them.
    pub proxied: BTreeSet<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.loadBalancerSourceRanges`, as written.
    pub source_ranges: Vec<String>,
    pub external_traffic_policy: TrafficPolicy,
    /// Endpoints per node name.
    pub endpoints: BTreeMap<String, EndpointState>,
    /// Some endpoint is ready (or serving, not terminating) anywhere, including endpoints
    /// without a node name. A node in `endpoints` that can serve counts as well.
    pub any_ready_endpoint: bool,
}

impl Service {
    /// Some endpoint can serve, on a known node or not.
    pub fn has_endpoints(&self) -> bool {
        self.any_ready_endpoint || self.endpoints.values().any(EndpointState::can_serve)
    }

    /// `node` holds an endpoint that can serve.
    pub fn serves_on(&self, node: &str) -> bool {
        self.endpoints
            .get(node)
            .is_some_and(EndpointState::can_serve)
    }

    /// Some port has a NodePort to forward to.
    pub fn has_node_port(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Everything the election reads. Order does not matter anywhere.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    pub nodes: Vec<Node>,
    /// Names of nodes whose speaker is a live gossip member.
    pub members: BTreeSet<String>,
    /// The standing of members whose speaker is not Ready (a member not listed is).
    pub standing: BTreeMap<String, Standing>,
    pub pools: Vec<Pool>,
    pub services: Vec<Service>,
}

/// The election's verdict on one IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `node` announces the IP on `interface`.
    Owner { node: String, interface: String },
    /// Nobody announces the IP; `message` says why, naming the excluded nodes.
    NotAnnounced {
        reason: AnnouncementReason,
        message: String,
    },
}

impl Decision {
    /// The owning node, if any.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Decision::Owner { node, .. } => Some(node),
            Decision::NotAnnounced { .. } => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Owner { node, interface } => {
                write!(f, "announced by node {node} on interface {interface}")
            }
            Decision::NotAnnounced { reason, message } => {
                write!(f, "not announced ({}): {message}", reason.as_str())
            }
        }
    }
}

/// Configuration the election could not use, for the speaker to log and report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigProblem {
    /// The pool's `l2.nodeSelector` is malformed; the pool selects no node.
    InvalidNodeSelector { pool: String, error: String },
    /// One of the pool's `l2.interfaces` does not compile; it matches no interface.
    InvalidInterfaceRegex {
        pool: String,
        regex: String,
        error: String,
    },
    /// Two nodes carry the same name; neither is eligible.
    DuplicateNode { node: String },
    /// Two pools carry the same name; neither is used.
    DuplicatePool { pool: String },
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigProblem::InvalidNodeSelector { pool, error } => write!(
                f,
                "pool {pool}: l2.nodeSelector is invalid, so no node announces its IPs: {error}"
            ),
            ConfigProblem::InvalidInterfaceRegex { pool, regex, error } => write!(
                f,
                "pool {pool}: l2.interfaces entry {regex:?} is not a valid regex and matches nothing: {error}"
            ),
            ConfigProblem::DuplicateNode { node } => {
                write!(f, "node {node} is listed twice; it announces nothing")
            }
            ConfigProblem::DuplicatePool { pool } => {
                write!(f, "pool {pool} is listed twice; its IPs are not announced")
            }
        }
    }
}

/// One IP a node announces, and where.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub ip: IpAddr,
    pub interface: String,
}

/// The result of one election: a decision for every IP of every Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Election {
    pub decisions: BTreeMap<IpAddr, Decision>,
    /// Sorted and without duplicates.
    pub problems: Vec<ConfigProblem>,
}

impl Election {
    /// The decision for one IP (`None` if no Service holds it).
    pub fn decision(&self, ip: IpAddr) -> Option<&Decision> {
        self.decisions.get(&ip)
    }

    /// What `node`'s responders must answer for, ordered by IP.
    pub fn owned_by(&self, node: &str) -> Vec<Announcement> {
        self.decisions
            .iter()
            .filter_map(|(ip, d)| match d {
                Decision::Owner {
                    node: owner,
                    interface,
                } if owner == node => Some(Announcement {
                    ip: *ip,
                    interface: interface.clone(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// The rendezvous score of `node` for `ip`: the first 8 bytes, big-endian, of
/// SHA-256(`node + "#" + ip`). By hand: `printf 'node-1#10.0.0.1' | sha256sum | cut -c1-16`.
pub fn score(node: &str, ip: IpAddr) -> u64 {
    score_text(node, &ip.to_string())
}

/// [`score`] with the IP already in its text form, so that scoring one IP for many nodes
/// formats it once.
fn score_text(node: &str, ip: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(node.as_bytes())
        .chain_update(b"#")
        .chain_update(ip.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The eligible node that wins `ip`: highest score, ties to the name that sorts first.
pub fn rendezvous_winner<'a>(
    ip: IpAddr,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let text = ip.to_string();
    highest(nodes.into_iter().map(|n| (score_text(n, &text), n)))
}

/// Highest score wins; equal scores go to the name that sorts first.
fn highest<'a>(scored: impl IntoIterator<Item = (u64, &'a str)>) -> Option<&'a str> {
    scored
        .into_iter()
        .max_by_key(|(s, n)| (*s, Reverse(*n)))
        .map(|(_, n)| n)
}

/// Runs the election on `inputs`. Every IP of every Service gets a decision. The same
/// decisions as an [`Elector`] fed the same objects one change at a time.
pub fn elect(inputs: &Inputs) -> Election {
    let mut problems = BTreeSet::new();
    let nodes = index_nodes(&inputs.nodes, &mut problems);
    let elector = Elector::build(
        nodes,
        inputs.members.clone(),
        inputs.standing.clone(),
        inputs.pools.clone(),
        inputs.services.iter().cloned(),
    );
    let mut election = elector.into_election();
    problems.extend(election.problems);
    election.problems = problems.into_iter().collect();
    election
}

/// Nodes by name; duplicated names are dropped and reported (names are unique in a cluster,
/// and dropping both keeps the result independent of input order).
fn index_nodes(nodes: &[Node], problems: &mut BTreeSet<ConfigProblem>) -> BTreeMap<String, Node> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes {
        *seen.entry(n.name.as_str()).or_default() += 1;
    }
    let mut index = BTreeMap::new();
    for n in nodes {
        if seen.get(n.name.as_str()).copied().unwrap_or(0) > 1 {
            problems.insert(ConfigProblem::DuplicateNode {
                node: n.name.clone(),
            });
        } else {
            index.insert(n.name.clone(), n.clone());
        }
    }
    index
}

/// A pool with its selector parsed and its regexes compiled.
#[derive(Debug)]
struct CompiledPool {
    pool: Pool,
    selector: Result<Selector, SelectorError>,
    /// `None`: no `l2.interfaces`, choose by subnet then default route.
    interfaces: Option<Vec<Regex>>,
}

/// Pools by name; duplicated names are dropped.
fn compile_pools(
    pools: Vec<Pool>,
    problems: &mut BTreeSet<ConfigProblem>,
) -> BTreeMap<String, CompiledPool> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pools {
        *seen.entry(p.name.clone()).or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for pool in pools {
        if seen.get(&pool.name).copied().unwrap_or(0) > 1 {
            problems.insert(ConfigProblem::DuplicatePool {
                pool: pool.name.clone(),
            });
            continue;
        }
        let selector = Selector::parse(pool.node_selector.as_ref());
        if let Err(error) = &selector {
            problems.insert(ConfigProblem::InvalidNodeSelector {
                pool: pool.name.clone(),
                error: error.to_string(),
            });
        }
        let interfaces = (!pool.interfaces.is_empty()).then(|| {
            pool.interfaces
                .iter()
                .filter_map(|re| match interface_regex(re) {
                    Ok(r) => Some(r),
                    Err(error) => {
                        problems.insert(ConfigProblem::InvalidInterfaceRegex {
                            pool: pool.name.clone(),
                            regex: re.clone(),
                            error: error.to_string(),
                        });
                        None
                    }
                })
                .collect()
        });
        out.insert(
            pool.name.clone(),
            CompiledPool {
                pool,
                selector,
                interfaces,
            },
        );
    }
    out
}

/// An `l2.interfaces` entry matches the whole interface name, so `eth0` never matches
/// `veth0abc` (announcing from the wrong NIC is the complaint users raise most).
pub fn interface_regex(re: &str) -> Result<Regex, regex::Error> {
    // On an error, the bare pattern's error quotes what the user wrote, not our anchors.
    Regex::new(&format!("^(?:{re})$")).map_err(|anchored| Regex::new(re).err().unwrap_or(anchored))
}

/// Why a node is not eligible for an IP. The order of variants is the order of the checks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Exclusion {
    NotMember,
    SpeakerStarting,
    NotReady,
    NetworkUnavailable,
    ExcludeLabel,
    SelectorMismatch,
    SelectorInvalid,
    NoLocalEndpoint(String),
    Interface(InterfaceProblem),
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotMember => f.write_str("speaker not a live member"),
            Exclusion::SpeakerStarting => f.write_str("speaker starting"),
            Exclusion::NotReady => f.write_str("not Ready"),
            Exclusion::NetworkUnavailable => f.write_str("NetworkUnavailable"),
            Exclusion::ExcludeLabel => write!(f, "labelled {LABEL_EXCLUDE_FROM_EXTERNAL_LB}"),
            Exclusion::SelectorMismatch => f.write_str("not selected by l2.nodeSelector"),
            Exclusion::SelectorInvalid => f.write_str("l2.nodeSelector is invalid"),
            Exclusion::NoLocalEndpoint(svc) => write!(f, "no local ready endpoint of {svc}"),
            Exclusion::Interface(p) => p.fmt(f),
        }
    }
}

/// Why a node has no usable announcing interface for an IP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InterfaceProblem {
    /// `l2.interfaces` is set and no interface of the node matches it.
    NoMatch,
    /// No interface's subnet holds the IP and none carries the default route.
    NoSubnetOrDefaultRoute,
    /// The chosen interface is down.
    Down(String),
}

impl fmt::Display for InterfaceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceProblem::NoMatch => f.write_str("no interface matches l2.interfaces"),
            InterfaceProblem::NoSubnetOrDefaultRoute => {
                f.write_str("no interface holds the IP's subnet or the default route")
            }
            InterfaceProblem::Down(name) => write!(f, "interface {name} is down"),
        }
    }
}

/// The interface a node announces `ip` on, among `interfaces` (those matching the pool's
/// `l2.interfaces`, or all of them when it is empty). Preference: the interface whose subnet
/// holds the IP (longest prefix first), then the default-route interface, then (only with
/// `l2.interfaces`, where the user vouched for every match) any match; within each rank an
/// interface that is up, then the name that sorts first. The choice is made before looking
/// at the link state, so a down interface on the IP's subnet is reported rather than
/// silently replaced by one on another segment.
pub fn announcing_interface<'a>(
    ip: IpAddr,
    interfaces: impl IntoIterator<Item = &'a Interface>,
    restricted_by_regex: bool,
) -> Result<&'a Interface, InterfaceProblem> {
    let best = interfaces
        .into_iter()
        .filter_map(|i| {
            let prefix = i
                .subnets
                .iter()
                .filter(|(addr, len)| subnet_contains(*addr, *len, ip))
                .map(|(_, len)| *len)
                .max();
            let rank = match (prefix, i.default_route_for(ip)) {
                (Some(len), _) => (2u8, len),
                (None, true) => (1, 0),
                (None, false) if restricted_by_regex => (0, 0),
                (None, false) => return None,
            };
            Some((rank, i.up, Reverse(i.name.as_str()), i))
        })
        .max_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)))
        .map(|(_, _, _, i)| i);
    match best {
        None if restricted_by_regex => Err(InterfaceProblem::NoMatch),
        None => Err(InterfaceProblem::NoSubnetOrDefaultRoute),
        Some(i) if !i.up => Err(InterfaceProblem::Down(i.name.clone())),
        Some(i) => Ok(i),
    }
}

/// `ip` lies in `addr/len` (host bits of `addr` ignored; a length beyond the family's width
/// or another family never matches).
fn subnet_contains(addr: IpAddr, len: u8, ip: IpAddr) -> bool {
    IpNetwork::new(addr, len).is_ok_and(|net| net.contains(ip))
}

/// What [`decide`] reads besides the IP's Services: the nodes, the pools, and step 4's
/// verdict per (pool, node), computed once per change of a node, a member or a pool.
struct World<'a> {
    nodes: &'a BTreeMap<String, Node>,
    standing: &'a BTreeMap<String, Standing>,
    pools: &'a BTreeMap<String, CompiledPool>,
    overlaps: &'a Overlaps,
    /// Pool name -> node name -> `None` when the node is a candidate (step 4), else why not.
    verdicts: &'a BTreeMap<String, Verdicts>,
}

/// Step 4 for one pool: every node, a candidate (`None`) or why not.
type Verdicts = BTreeMap<String, Option<Exclusion>>;

fn decide(ip: IpAddr, services: &[&Service], world: &World<'_>) -> Decision {
    let standing_of = |node: &str| world.standing.get(node).copied().unwrap_or(Standing::Ready);
    let pools = world.pools;
    let governing = world.overlaps.governing(ip);
    let Some(pool) = governing.and_then(|name| pools.get(name)) else {
        let containing = pools
            .values()
            .find(|p| p.pool.blocks.iter().any(|b| b.contains(ip)));
        let message = match containing.and_then(|p| {
            world
                .overlaps
                .conflict(&p.pool.name)
                .map(|older| (&p.pool.name, older))
        }) {
            Some((pool, older)) => format!(
                "{ip}: pool {pool} holds this address but overlaps the older pool {older} (Conflict), so it governs nothing"
            ),
            None => format!("{ip}: no IPPool contains this address"),
        };
        return Decision::NotAnnounced {
            reason: AnnouncementReason::NoEligibleNode,
            message,
        };
    };
    let subject = format!("{ip} (pool {})", pool.pool.name);

    let mut keys: Vec<String> = services.iter().map(|s| s.key()).collect();
    keys.sort();
    keys.dedup();
    // A forwarded IP carries only what reaches a NodePort: a Service without one has
    // nothing to forward to and takes no part (endpoints cannot fix that).
    let forwardable: Vec<&Service> = services
        .iter()
        .copied()
        .filter(|s| forwardable(s, ip))
        .collect();
    if forwardable.is_empty() {
        return Decision::NotAnnounced {
            reason: AnnouncementReason::NoNodePort,
            message: format!(
                "{subject}: the pool forwards to NodePorts (ipMode Proxy), but {} has no NodePort (allocateLoadBalancerNodePorts: false)",
                keys.join(", ")
            ),
        };
    }
    let mut serving: Vec<&Service> = forwardable
        .into_iter()
        .filter(|s| s.has_endpoints())
        .collect();
    if serving.is_empty() {
        return Decision::NotAnnounced {
            reason: AnnouncementReason::NoLocalEndpoints,
            message: format!(
                "{subject}: no ready endpoint anywhere for {}",
                keys.join(", ")
            ),
        };
    }
    serving.sort_by_key(|s| s.key());

    let mut excluded: Vec<(&str, Exclusion)> = Vec::new();
    let mut candidates: Vec<&Node> = Vec::new();
    // Both maps are keyed by node name and hold the same names: walk them side by side.
    let mut verdicts = world
        .verdicts
        .get(&pool.pool.name)
        .into_iter()
        .flatten()
        .peekable();
    for (name, node) in world.nodes {
        while verdicts.peek().is_some_and(|(v, _)| *v < name) {
            verdicts.next();
        }
        match verdicts.peek() {
            Some((v, Some(why))) if *v == name => excluded.push((name, why.clone())),
            Some((v, None)) if *v == name => candidates.push(node),
            _ => {}
        }
    }
    if candidates.is_empty() {
        return not_announced(AnnouncementReason::NoEligibleNode, &subject, &excluded);
    }

    // Each candidate's tier: a Ready speaker before a stale one, then the endpoint tier
    // (the worst over the Local Services).
    let mut tiers: BTreeMap<&str, (Standing, EndpointTier)> = BTreeMap::new();
    candidates.retain(|node| match tier(&node.name, &serving) {
        Ok(t) => {
            tiers.insert(&node.name, (standing_of(&node.name), t));
            true
        }
        Err(lacking) => {
            excluded.push((&node.name, Exclusion::NoLocalEndpoint(lacking.key())));
            false
        }
    });
    if candidates.is_empty() {
        return not_announced(AnnouncementReason::NoLocalEndpoints, &subject, &excluded);
    }

    let mut eligible: BTreeMap<&str, &str> = BTreeMap::new();
    for node in candidates {
        let restricted = pool.interfaces.as_ref();
        let choice = match restricted {
            Some(regexes) => announcing_interface(
                ip,
                node.interfaces
                    .iter()
                    .filter(|i| regexes.iter().any(|r| r.is_match(&i.name))),
                true,
            ),
            None => announcing_interface(ip, &node.interfaces, false),
        };
        match choice {
            Ok(i) => {
                eligible.insert(&node.name, &i.name);
            }
            Err(p) => excluded.push((&node.name, Exclusion::Interface(p))),
        }
    }
    let best = eligible.keys().filter_map(|n| tiers.get(n)).max().copied();
    let preferred = eligible
        .keys()
        .copied()
        .filter(|n| tiers.get(n).copied() == best);
    match rendezvous_winner(ip, preferred) {
        Some(node) => Decision::Owner {
            node: node.to_string(),
            interface: eligible.get(node).copied().unwrap_or_default().to_string(),
        },
        None => not_announced(AnnouncementReason::NoInterface, &subject, &excluded),
    }
}

/// Whether `s` takes part in the decision on `ip`: a forwarded IP carries only what
/// reaches a NodePort.
fn forwardable(s: &Service, ip: IpAddr) -> bool {
    !s.proxied.contains(&ip) || s.has_node_port()
}

/// A candidate's endpoint tier for an IP served by `serving`: the worst over the Local
/// Services (Ready when there are none), or the first Local Service it has no endpoint
/// for.
fn tier<'s>(node: &str, serving: &[&'s Service]) -> Result<EndpointTier, &'s Service> {
    let mut tier = EndpointTier::Ready;
    for s in serving
        .iter()
        .filter(|s| s.external_traffic_policy == TrafficPolicy::Local)
    {
        let t = s
            .endpoints
            .get(node)
            .map_or(EndpointTier::None, EndpointState::tier);
        if t == EndpointTier::None {
            return Err(s);
        }
        tier = tier.min(t);
    }
    Ok(tier)
}

/// Whether `newcomer`, just become a candidate of the IP's pool, may take `ip` from its
/// owner `owner`: when it serves the IP's Services at a better tier (standing, then
/// endpoints), or at the same tier with the higher rendezvous score. When it may not, the
/// decision stays as it is (the owner is still the best of the rest), so the IP need not
/// be decided again.
fn may_take(
    newcomer: &str,
    owner: &str,
    ip: IpAddr,
    services: &[&Service],
    standing: &BTreeMap<String, Standing>,
) -> bool {
    let standing_of = |node: &str| standing.get(node).copied().unwrap_or(Standing::Ready);
    let serving: Vec<&Service> = services
        .iter()
        .copied()
        .filter(|s| forwardable(s, ip) && s.has_endpoints())
        .collect();
    let (Ok(new), Ok(old)) = (tier(newcomer, &serving), tier(owner, &serving)) else {
        // The newcomer lacks a Local endpoint: it cannot take the IP. (The owner lacking
        // one would mean the decision is stale: decide again.)
        return tier(newcomer, &serving).is_ok();
    };
    let (new, old) = ((standing_of(newcomer), new), (standing_of(owner), old));
    let text = ip.to_string();
    new > old
        || (new == old
            && highest([
                (score_text(newcomer, &text), newcomer),
                (score_text(owner, &text), owner),
            ]) == Some(newcomer))
}

fn node_exclusion(
    node: &Node,
    members: &BTreeSet<String>,
    standing: Standing,
    pool: &CompiledPool,
) -> Option<Exclusion> {
    if !members.contains(&node.name) {
        return Some(Exclusion::NotMember);
    }
    if standing == Standing::Starting {
        return Some(Exclusion::SpeakerStarting);
    }
    if !node.ready {
        return Some(Exclusion::NotReady);
    }
    if node.network_unavailable {
        return Some(Exclusion::NetworkUnavailable);
    }
    if node.labels.contains_key(LABEL_EXCLUDE_FROM_EXTERNAL_LB) {
        return Some(Exclusion::ExcludeLabel);
    }
    match &pool.selector {
        Err(_) => Some(Exclusion::SelectorInvalid),
        Ok(sel) if !sel.matches(&node.labels) => Some(Exclusion::SelectorMismatch),
        Ok(_) => None,
    }
}

/// "10.0.0.1 (pool lan): no eligible node: not Ready: a, b; NetworkUnavailable: c"
fn not_announced(
    reason: AnnouncementReason,
    subject: &str,
    excluded: &[(&str, Exclusion)],
) -> Decision {
    let mut by_cause: BTreeMap<&Exclusion, Vec<&str>> = BTreeMap::new();
    for (node, why) in excluded {
        by_cause.entry(why).or_default().push(node);
    }
    let causes: Vec<String> = by_cause
        .into_iter()
        .map(|(why, mut names)| {
            names.sort_unstable();
            let more = names.len().saturating_sub(NAMES_PER_CAUSE);
            names.truncate(NAMES_PER_CAUSE);
            let mut list = names.join(", ");
            if more > 0 {
                list.push_str(&format!(" (+{more} more)"));
            }
            format!("{why}: {list}")
        })
        .collect();
    let summary = match reason {
        AnnouncementReason::NoEligibleNode => "no eligible node",
        AnnouncementReason::NoLocalEndpoints => "no eligible node has a local ready endpoint",
        AnnouncementReason::NoInterface => "no eligible node has a usable interface",
        // Decided before any node is looked at; never reaches here.
        AnnouncementReason::NoNodePort => "nothing to forward to",
    };
    let message = if causes.is_empty() {
        format!("{subject}: {summary}: no nodes")
    } else {
        format!("{subject}: {summary}: {}", causes.join("; "))
    };
    Decision::NotAnnounced { reason, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;

    pub(super) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn iface(name: &str, up: bool, subnets: &[(&str, u8)], default_route: bool) -> Interface {
        Interface {
            name: name.into(),
            up,
            subnets: subnets.iter().map(|(a, l)| (ip(a), *l)).collect(),
            default_route_v4: default_route,
            default_route_v6: default_route,
        }
    }

    /// A healthy node with eth0 on 10.0.0.0/24 and fd00::/64 carrying the default route.
    pub(super) fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            ready: true,
            interfaces: vec![iface(
                "eth0",
                true,
                &[("10.0.0.1", 24), ("fd00::1", 64)],
                true,
            )],
            ..Node::default()
        }
    }

    pub(super) fn pool(name: &str, blocks: &[&str]) -> Pool {
        Pool {
            name: name.into(),
            blocks: blocks
                .iter()
                .map(|b| AddressBlock::parse(b).unwrap())
                .collect(),
            ..Pool::default()
        }
    }

    pub(super) fn svc(
        name: &str,
        ips: &[&str],
        policy: TrafficPolicy,
        endpoints: &[(&str, u32, u32)],
    ) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            external_traffic_policy: policy,
            endpoints: endpoints
                .iter()
                .map(|(n, ready, serving)| {
                    (
                        n.to_string(),
                        EndpointState {
                            ready: *ready,
                            serving_terminating: *serving,
                        },
                    )
                })
                .collect(),
            any_ready_endpoint: endpoints.iter().any(|(_, r, s)| r + s > 0),
            ports: vec![ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
            }],
            ..Service::default()
        }
    }

    /// Healthy live nodes, pool `lan` = 10.0.0.0/24 + fd00::/64, one Cluster Service
    /// `default/web` on 10.0.0.10 with an endpoint on a node outside the list.
    pub(super) fn world(nodes: &[&str]) -> Inputs {
        Inputs {
            nodes: nodes.iter().map(|n| node(n)).collect(),
            members: nodes.iter().map(|n| n.to_string()).collect(),
            standing: BTreeMap::new(),
            pools: vec![pool("lan", &["10.0.0.0/24", "fd00::/64"])],
            services: vec![svc(
                "web",
                &["10.0.0.10"],
                TrafficPolicy::Cluster,
                &[("elsewhere", 1, 0)],
            )],
        }
    }

    fn owner(e: &Election, ip_: &str) -> (String, String) {
        match e.decision(ip(ip_)) {
            Some(Decision::Owner { node, interface }) => (node.clone(), interface.clone()),
            other => panic!("{ip_}: expected an owner, got {other:?}"),
        }
    }

    fn not_announced(e: &Election, ip_: &str) -> (AnnouncementReason, String) {
        match e.decision(ip(ip_)) {
            Some(Decision::NotAnnounced { reason, message }) => (*reason, message.clone()),
            other => panic!("{ip_}: expected no announcement, got {other:?}"),
        }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn selector(labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!labels.is_empty()).then(|| {
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // --- the hash and the owner choice ---

    #[test]
    fn score_is_the_sha256_prefix_of_node_hash_ip() {
        // printf 'node-1#10.0.0.1' | sha256sum | cut -c1-16
        assert_eq!(score("node-1", ip("10.0.0.1")), 0xc108_1a19_8e48_377a);
        // IPv6 in RFC 5952 form.
        assert_eq!(
            score("node-1", ip("2001:db8:0:0::1")),
            0x28f4_359b_0bdd_8ca5
        );
    }

    #[test]
    fn highest_score_wins_and_ties_go_to_the_name_sorting_first() {
        assert_eq!(highest([(1, "a"), (3, "c"), (2, "b")]), Some("c"));
        assert_eq!(highest([(7, "b"), (7, "c"), (7, "a"), (1, "0")]), Some("a"));
        assert_eq!(highest([]), None);
        let ip_ = ip("10.0.0.10");
        let best = ["a", "b", "c", "d"]
            .into_iter()
            .max_by_key(|n| score(n, ip_))
            .unwrap();
        assert_eq!(rendezvous_winner(ip_, ["d", "c", "b", "a"]), Some(best));
    }

    #[test]
    fn a_healthy_cluster_announces_on_the_rendezvous_winner() {
        let w = world(&["a", "b", "c"]);
        let e = elect(&w);
        let expected = rendezvous_winner(ip("10.0.0.10"), ["a", "b", "c"]).unwrap();
        assert_eq!(
            owner(&e, "10.0.0.10"),
            (expected.to_string(), "eth0".into())
        );
        assert!(e.problems.is_empty());
        assert_eq!(
            e.decision(ip("10.0.0.10")).unwrap().to_string(),
            format!("announced by node {expected} on interface eth0")
        );
    }

    // --- node eligibility, one rule at a time ---

    #[test]
    fn each_node_rule_excludes_a_node_and_says_why() {
        type Spoil = fn(&mut Inputs);
        let cases: [(Spoil, &str); 5] = [
            (|w| w.members.clear(), "speaker not a live member: a"),
            (|w| w.nodes[0].ready = false, "not Ready: a"),
            (
                |w| w.nodes[0].network_unavailable = true,
                "NetworkUnavailable: a",
            ),
            (
                |w| {
                    w.nodes[0]
                        .labels
                        .insert(LABEL_EXCLUDE_FROM_EXTERNAL_LB.into(), String::new());
                },
                "labelled node.kubernetes.io/exclude-from-external-load-balancers: a",
            ),
            (
                |w| w.pools[0].node_selector = Some(selector(&[("zone", "x")], vec![])),
                "not selected by l2.nodeSelector: a",
            ),
        ];
        for (spoil, cause) in cases {
            let mut w = world(&["a"]);
            spoil(&mut w);
            let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
            assert_eq!(reason, AnnouncementReason::NoEligibleNode, "{cause}");
            assert_eq!(
                message,
                format!("10.0.0.10 (pool lan): no eligible node: {cause}")
            );

            // A second, healthy node takes the IP.
            let mut w = world(&["a", "b"]);
            w.nodes[1].labels = labels(&[("zone", "x")]);
            spoil(&mut w);
            w.members.insert("b".into());
            assert_eq!(owner(&elect(&w), "10.0.0.10").0, "b", "{cause}");
        }
    }

    #[test]
    fn node_selector_supports_match_labels_and_all_four_operators() {
        let node_labels = labels(&[("zone", "a"), ("role", "lb")]);
        let matches = |s: LabelSelector| Selector::parse(Some(&s)).unwrap().matches(&node_labels);
        assert!(matches(selector(&[("zone", "a")], vec![])));
        assert!(!matches(selector(&[("zone", "b")], vec![])));
        assert!(matches(selector(
            &[],
            vec![expr("zone", "In", &["a", "b"])]
        )));
        assert!(!matches(selector(&[], vec![expr("zone", "In", &["b"])])));
        assert!(matches(selector(&[], vec![expr("zone", "NotIn", &["b"])])));
        assert!(matches(selector(&[], vec![expr("rack", "NotIn", &["b"])])));
        assert!(!matches(selector(&[], vec![expr("zone", "NotIn", &["a"])])));
        assert!(matches(selector(&[], vec![expr("role", "Exists", &[])])));
        assert!(!matches(selector(&[], vec![expr("rack", "Exists", &[])])));
        assert!(matches(selector(
            &[],
            vec![expr("rack", "DoesNotExist", &[])]
        )));
        assert!(!matches(selector(
            &[],
            vec![expr("role", "DoesNotExist", &[])]
        )));
        // All requirements must hold.
        assert!(!matches(selector(
            &[("zone", "a")],
            vec![expr("role", "DoesNotExist", &[])]
        )));
        // Absent and empty select everything.
        assert!(Selector::parse(None).unwrap().matches(&node_labels));
        assert!(matches(LabelSelector::default()));
    }

    #[test]
    fn an_invalid_node_selector_selects_nothing_and_is_reported() {
        for (bad, error) in [
            (
                expr("zone", "In", &[]),
                "selector on \"zone\": operator In needs at least one value",
            ),
            (
                expr("zone", "Exists", &["a"]),
                "selector on \"zone\": operator Exists takes no values",
            ),
            (
                expr("zone", "Equals", &["a"]),
                "selector on \"zone\": unknown operator \"Equals\" (In, NotIn, Exists, DoesNotExist)",
            ),
        ] {
            let mut w = world(&["a", "b"]);
            w.pools[0].node_selector = Some(selector(&[], vec![bad]));
            let e = elect(&w);
            let (reason, message) = not_announced(&e, "10.0.0.10");
            assert_eq!(reason, AnnouncementReason::NoEligibleNode);
            assert!(
                message.ends_with("l2.nodeSelector is invalid: a, b"),
                "{message}"
            );
            assert_eq!(
                e.problems,
                vec![ConfigProblem::InvalidNodeSelector {
                    pool: "lan".into(),
                    error: error.into()
                }]
            );
        }
    }

    #[test]
    fn overlapping_pools_follow_the_controllers_rule_the_older_governs() {
        let mut w = world(&["a", "b"]);
        // alpha sorts first but is newer: zulu, the older, keeps the overlap.
        let mut alpha = pool("alpha", &["10.0.0.0/28", "10.1.0.0/24"]);
        alpha.created = Some(200);
        alpha.node_selector = Some(selector(&[("zone", "a")], vec![]));
        let mut zulu = pool("zulu", &["10.0.0.0/16"]);
        zulu.created = Some(100);
        zulu.node_selector = Some(selector(&[("zone", "b")], vec![]));
        w.pools = vec![alpha, zulu];
        w.nodes[0].labels = labels(&[("zone", "a")]);
        w.nodes[1].labels = labels(&[("zone", "b")]);
        w.services[0].ips.extend([ip("10.0.1.1"), ip("10.1.0.1")]);
        let e = elect(&w);
        assert_eq!(owner(&e, "10.0.0.10").0, "b", "zulu is older");
        assert_eq!(owner(&e, "10.0.1.1").0, "b", "only zulu contains it");
        // alpha is in Conflict: it governs nothing, not even what only it contains.
        let (reason, message) = not_announced(&e, "10.1.0.1");
        assert_eq!(reason, AnnouncementReason::NoEligibleNode);
        assert_eq!(
            message,
            "10.1.0.1: pool alpha holds this address but overlaps the older pool zulu (Conflict), so it governs nothing"
        );
    }

    #[test]
    fn a_starting_speaker_is_given_nothing_and_a_stale_one_only_what_nobody_ready_can_take() {
        let names = ["a", "b", "c"];
        let ip_ = ip("10.0.0.10");
        let winner = rendezvous_winner(ip_, names).unwrap();
        let mut w = world(&names);
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, winner);
        // The winner's speaker restarts: until it says Ready, the next one keeps the IP.
        w.standing.insert(winner.into(), Standing::Starting);
        let second = rendezvous_winner(ip_, names.iter().copied().filter(|n| *n != winner));
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, second.unwrap());
        // Stale: the same while another Ready speaker can take it...
        w.standing.insert(winner.into(), Standing::Stale);
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, second.unwrap());
        // ...but when every speaker is stale (the API server is down for all), nothing moves.
        for n in names {
            w.standing.insert(n.into(), Standing::Stale);
        }
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, winner);
        // Nobody but starting speakers: not announced, and the message says why.
        for n in names {
            w.standing.insert(n.into(), Standing::Starting);
        }
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoEligibleNode);
        assert!(message.contains("speaker starting: a, b, c"), "{message}");
    }

    #[test]
    fn an_ip_outside_every_pool_is_not_announced() {
        let mut w = world(&["a"]);
        w.services[0].ips = vec![ip("192.0.2.1")];
        let (reason, message) = not_announced(&elect(&w), "192.0.2.1");
        assert_eq!(reason, AnnouncementReason::NoEligibleNode);
        assert_eq!(message, "192.0.2.1: no IPPool contains this address");
    }

    #[test]
    fn duplicated_nodes_and_pools_are_reported_and_left_out() {
        let mut w = world(&["a", "a", "b"]);
        w.pools.push(pool("extra", &["10.9.0.0/24"]));
        w.pools.push(pool("extra", &["10.9.0.0/24"]));
        w.services[0].ips.push(ip("10.9.0.1"));
        let e = elect(&w);
        assert_eq!(owner(&e, "10.0.0.10").0, "b");
        assert_eq!(
            not_announced(&e, "10.9.0.1").0,
            AnnouncementReason::NoEligibleNode
        );
        assert_eq!(
            e.problems,
            vec![
                ConfigProblem::DuplicateNode { node: "a".into() },
                ConfigProblem::DuplicatePool {
                    pool: "extra".into()
                },
            ]
        );
    }

    #[test]
    fn pool_from_spec_keeps_good_entries_and_returns_bad_ones() {
        let spec = IPPoolSpec {
            addresses: vec!["10.0.0.0/24".into(), "10.0.0.9-10.0.0.1".into()],
            auto_assign: true,
            avoid_buggy_ips: false,
            disabled: false,
            priority: 0,
            service_selector: None,
            namespace_selector: None,
            forwarding: Default::default(),
            l2: Some(ferrolb_crds::L2Config {
                node_selector: Some(selector(&[("zone", "a")], vec![])),
                interfaces: vec!["eth.*".into()],
            }),
        };
        let (p, errors) = Pool::from_spec("lan", Some(7), &spec);
        assert_eq!(p.name, "lan");
        assert_eq!(p.created, Some(7));
        assert_eq!(p.blocks, vec![AddressBlock::parse("10.0.0.0/24").unwrap()]);
        assert_eq!(p.interfaces, vec!["eth.*".to_string()]);
        assert!(p.node_selector.is_some());
        assert_eq!(errors.len(), 1);
    }

    // --- endpoints and externalTrafficPolicy ---

    #[test]
    fn no_ready_endpoint_anywhere_means_no_announcement() {
        let mut w = world(&["a", "b"]);
        w.services[0] = svc(
            "web",
            &["10.0.0.10"],
            TrafficPolicy::Cluster,
            &[("a", 0, 0)],
        );
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoLocalEndpoints);
        assert_eq!(
            message,
            "10.0.0.10 (pool lan): no ready endpoint anywhere for default/web"
        );
        // An endpoint without a node name still counts as one somewhere.
        w.services[0].any_ready_endpoint = true;
        assert!(
            elect(&w)
                .decision(ip("10.0.0.10"))
                .unwrap()
                .owner()
                .is_some()
        );
    }

    #[test]
    fn local_policy_only_picks_nodes_with_a_local_serving_endpoint() {
        let names = ["a", "b", "c", "d", "e"];
        for with_endpoint in names {
            let mut w = world(&names);
            w.services[0] = svc(
                "web",
                &["10.0.0.10"],
                TrafficPolicy::Local,
                &[(with_endpoint, 1, 0), ("other", 3, 0)],
            );
            assert_eq!(owner(&elect(&w), "10.0.0.10").0, with_endpoint);
        }
        // Draining (serving and terminating) counts when nothing better is there.
        let mut w = world(&names);
        w.services[0] = svc(
            "web",
            &["10.0.0.10"],
            TrafficPolicy::Local,
            &[("c", 0, 1), ("d", 0, 0)],
        );
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, "c");
    }

    #[test]
    fn local_keeps_the_ip_on_a_draining_node_as_kube_proxy_still_serves_there() {
        // Every pod of the Service is terminating but still serving (a rolling update or
        // a scale-down in progress): kube-proxy on their nodes keeps sending traffic to
        // them, so the IP stays announced instead of going dark.
        let mut w = world(&["a", "b", "c"]);
        w.services[0] = svc("web", &["10.0.0.10"], TrafficPolicy::Local, &[("b", 0, 2)]);
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, "b");
        // The same for a Cluster Service: draining endpoints are endpoints.
        w.services[0].external_traffic_policy = TrafficPolicy::Cluster;
        assert!(
            elect(&w)
                .decision(ip("10.0.0.10"))
                .unwrap()
                .owner()
                .is_some()
        );
    }

    #[test]
    fn local_prefers_a_node_with_a_ready_endpoint_to_a_draining_one() {
        let names = ["a", "b", "c", "d", "e"];
        let ip_ = ip("10.0.0.10");
        // Whichever node scores highest, a draining node loses to a ready one.
        let mut by_score: Vec<&str> = names.to_vec();
        by_score.sort_by_key(|n| Reverse(score(n, ip_)));
        let (top, second) = (by_score[0], by_score[1]);
        let mut w = world(&names);
        w.services[0] = svc(
            "web",
            &["10.0.0.10"],
            TrafficPolicy::Local,
            &[(top, 0, 1), (second, 1, 0)],
        );
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, second);
        // Once the ready pod is gone, the draining node takes the IP back.
        w.services[0].endpoints.remove(second);
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, top);
    }

    #[test]
    fn local_policy_without_a_local_endpoint_on_any_eligible_node_is_not_announced() {
        let mut w = world(&["a", "b"]);
        w.nodes[1].ready = false;
        w.services[0] = svc(
            "web",
            &["10.0.0.10"],
            TrafficPolicy::Local,
            &[("b", 1, 0), ("x", 1, 0)],
        );
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoLocalEndpoints);
        assert_eq!(
            message,
            "10.0.0.10 (pool lan): no eligible node has a local ready endpoint: \
             not Ready: b; no local ready endpoint of default/web: a"
        );
    }

    // --- interfaces ---

    #[test]
    fn the_interface_holding_the_ip_wins_then_the_default_route() {
        let ifs = [
            iface("eth0", true, &[("192.168.1.5", 24)], true),
            iface("eth1", true, &[("10.0.0.5", 16)], false),
            iface("eth2", true, &[("10.0.0.6", 24)], false),
            iface("eth3", true, &[("fd00::5", 64)], false),
        ];
        let pick = |a: &str| announcing_interface(ip(a), &ifs, false).map(|i| i.name.as_str());
        assert_eq!(pick("10.0.0.77"), Ok("eth2"), "longest prefix");
        assert_eq!(pick("10.0.9.1"), Ok("eth1"));
        assert_eq!(pick("fd00::77"), Ok("eth3"));
        assert_eq!(pick("172.16.0.1"), Ok("eth0"), "default route");
        assert_eq!(pick("2001:db8::1"), Ok("eth0"), "default route");
        let no_default = &ifs[1..];
        assert_eq!(
            announcing_interface(ip("172.16.0.1"), no_default, false),
            Err(InterfaceProblem::NoSubnetOrDefaultRoute)
        );
    }

    #[test]
    fn each_family_falls_back_to_its_own_default_route() {
        // IPv4 leaves through eth0, IPv6 through eth1; no subnet holds the pool's IPs.
        let mut v4 = iface("eth0", true, &[("192.168.1.5", 24)], false);
        v4.default_route_v4 = true;
        let mut v6 = iface("eth1", true, &[("2001:db8:1::5", 64)], false);
        v6.default_route_v6 = true;
        let ifs = [v4, v6];
        let pick = |a: &str| announcing_interface(ip(a), &ifs, false).map(|i| i.name.as_str());
        assert_eq!(pick("172.16.0.1"), Ok("eth0"));
        assert_eq!(pick("2001:db8:99::1"), Ok("eth1"));
        // Without an IPv6 default route, an IPv6 IP outside every subnet has no interface.
        let only_v4 = [ifs[0].clone()];
        assert_eq!(
            announcing_interface(ip("2001:db8:99::1"), &only_v4, false),
            Err(InterfaceProblem::NoSubnetOrDefaultRoute)
        );
    }

    #[test]
    fn subnet_contains_ignores_host_bits_and_refuses_other_families() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(subnet_contains(ip("10.1.2.3"), 24, ip("10.1.2.254")));
        assert!(!subnet_contains(ip("10.1.2.3"), 24, ip("10.1.3.1")));
        assert!(subnet_contains(ip("10.1.2.3"), 0, ip("192.0.2.1")));
        assert!(subnet_contains(ip("10.1.2.3"), 32, ip("10.1.2.3")));
        assert!(!subnet_contains(ip("10.1.2.3"), 32, ip("10.1.2.4")));
        assert!(!subnet_contains(ip("10.1.2.3"), 33, ip("10.1.2.3")));
        assert!(subnet_contains(ip("2001:db8::5"), 64, ip("2001:db8::ffff")));
        assert!(subnet_contains(ip("2001:db8::5"), 0, ip("::1")));
        assert!(!subnet_contains(ip("2001:db8::5"), 128, ip("2001:db8::6")));
        assert!(!subnet_contains(ip("2001:db8::5"), 129, ip("2001:db8::5")));
        // The same numbers in the other family.
        assert!(!subnet_contains(ip("::a01:203"), 96, ip("10.1.2.3")));
        assert!(!subnet_contains(ip("10.1.2.3"), 0, ip("::1")));
    }

    #[test]
    fn a_down_interface_on_the_ip_subnet_is_not_replaced_by_another() {
        let ifs = [
            iface("eth0", true, &[("192.168.1.5", 24)], true),
            iface("eth1", false, &[("10.0.0.5", 24)], false),
        ];
        assert_eq!(
            announcing_interface(ip("10.0.0.9"), &ifs, false),
            Err(InterfaceProblem::Down("eth1".into()))
        );

        let mut w = world(&["a", "b"]);
        w.nodes[0].interfaces[0].up = false;
        assert_eq!(owner(&elect(&w), "10.0.0.10").0, "b");
        w.nodes[1].interfaces.clear();
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoInterface);
        assert_eq!(
            message,
            "10.0.0.10 (pool lan): no eligible node has a usable interface: \
             no interface holds the IP's subnet or the default route: b; interface eth0 is down: a"
        );
    }

    #[test]
    fn interface_regexes_match_whole_names_and_prefer_up_matches() {
        let mut w = world(&["a"]);
        w.nodes[0].interfaces = vec![
            iface("veth0abc", true, &[("10.0.0.1", 24)], false),
            iface("bond1", false, &[], false),
            iface("bond0", true, &[], false),
        ];
        w.pools[0].interfaces = vec!["eth0".into()];
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoInterface);
        assert!(
            message.ends_with("no interface matches l2.interfaces: a"),
            "{message}"
        );

        // Neither bond holds the subnet: any match will do, an up one first.
        w.pools[0].interfaces = vec!["bond[0-9]+".into()];
        assert_eq!(owner(&elect(&w), "10.0.0.10"), ("a".into(), "bond0".into()));

        // A match holding the subnet beats the others.
        w.pools[0].interfaces = vec!["bond.*".into(), "veth.*".into()];
        assert_eq!(
            owner(&elect(&w), "10.0.0.10"),
            ("a".into(), "veth0abc".into())
        );
    }

    #[test]
    fn an_invalid_interface_regex_matches_nothing_and_is_reported() {
        let mut w = world(&["a"]);
        w.pools[0].interfaces = vec!["eth(".into()];
        let e = elect(&w);
        assert_eq!(
            not_announced(&e, "10.0.0.10").0,
            AnnouncementReason::NoInterface
        );
        assert!(matches!(
            &e.problems[..],
            [ConfigProblem::InvalidInterfaceRegex { pool, regex, .. }] if pool == "lan" && regex == "eth("
        ));
        // The valid entries still work.
        w.pools[0].interfaces = vec!["eth(".into(), "eth0".into()];
        let e = elect(&w);
        assert_eq!(owner(&e, "10.0.0.10"), ("a".into(), "eth0".into()));
        assert_eq!(e.problems.len(), 1);
    }

    // --- shared IPs ---

    #[test]
    fn services_sharing_an_ip_get_the_intersection_of_their_eligible_nodes() {
        let names = ["a", "b", "c", "d", "e"];
        let mut w = world(&names);
        w.services = vec![
            svc(
                "web",
                &["10.0.0.10"],
                TrafficPolicy::Cluster,
                &[("a", 1, 0)],
            ),
            svc("dns", &["10.0.0.10"], TrafficPolicy::Local, &[("d", 1, 0)]),
        ];
        let e = elect(&w);
        assert_eq!(owner(&e, "10.0.0.10").0, "d");
        assert_eq!(e.decisions.len(), 1);

        // Two Local Services whose endpoints live on different nodes: nowhere serves both.
        w.services[0].external_traffic_policy = TrafficPolicy::Local;
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoLocalEndpoints);
        assert!(
            message.ends_with(
                "no local ready endpoint of default/dns: a, b, c, e; \
                 no local ready endpoint of default/web: d"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_service_without_endpoints_does_not_withdraw_an_ip_it_shares() {
        let mut w = world(&["a", "b", "c"]);
        w.services = vec![
            svc(
                "web",
                &["10.0.0.10"],
                TrafficPolicy::Cluster,
                &[("a", 1, 0)],
            ),
            svc("idle", &["10.0.0.10"], TrafficPolicy::Local, &[]),
        ];
        let shared = elect(&w);
        w.services.pop();
        assert_eq!(shared.decisions, elect(&w).decisions);
    }

    #[test]
    fn owned_by_lists_what_a_node_must_answer_for() {
        let mut w = world(&["a", "b"]);
        w.nodes[1]
            .interfaces
            .push(iface("eth1", true, &[("10.0.5.1", 24)], false));
        w.pools[0]
            .blocks
            .push(AddressBlock::parse("10.0.5.0/24").unwrap());
        w.services = vec![
            svc(
                "one",
                &["10.0.0.10", "fd00::10"],
                TrafficPolicy::Local,
                &[("b", 1, 0)],
            ),
            svc("two", &["10.0.5.7"], TrafficPolicy::Local, &[("b", 1, 0)]),
            svc(
                "three",
                &["10.0.0.11"],
                TrafficPolicy::Local,
                &[("a", 1, 0)],
            ),
        ];
        let e = elect(&w);
        let a = |ip_: &str, i: &str| Announcement {
            ip: ip(ip_),
            interface: i.into(),
        };
        assert_eq!(
            e.owned_by("b"),
            vec![
                a("10.0.0.10", "eth0"),
                a("10.0.5.7", "eth1"),
                a("fd00::10", "eth0")
            ]
        );
        assert_eq!(e.owned_by("a"), vec![a("10.0.0.11", "eth0")]);
        assert_eq!(e.owned_by("nobody"), vec![]);
    }

    #[test]
    fn long_exclusion_lists_are_cut_short() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut w = world(&refs);
        w.members.clear();
        let (_, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(
            message,
            "10.0.0.10 (pool lan): no eligible node: speaker not a live member: n0, n1, n2, n3, n4 (+3 more)"
        );
    }

    // --- properties ---

    const NAMES: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];
    const IPS: [&str; 6] = [
        "10.0.0.5", "10.0.0.6", "10.0.1.7", "10.0.2.8", "10.9.9.9", "fd00::5",
    ];

    fn arb_interface() -> impl Strategy<Value = Interface> {
        let subnets = prop::sample::subsequence(
            vec![
                (ip("10.0.0.1"), 24),
                (ip("10.0.1.1"), 24),
                (ip("10.0.0.1"), 16),
                (ip("fd00::1"), 64),
            ],
            0..=2,
        );
        (
            prop::sample::select(vec!["eth0", "eth1", "veth9", "bond0"]),
            prop::bool::weighted(0.85),
            subnets,
            prop::bool::weighted(0.4),
            prop::bool::weighted(0.4),
        )
            .prop_map(|(name, up, subnets, v4, v6)| Interface {
                name: name.into(),
                up,
                subnets,
                default_route_v4: v4,
                default_route_v6: v6,
            })
    }

    fn arb_node(name: &'static str) -> impl Strategy<Value = Node> {
        (
            prop::sample::select(vec!["a", "b", ""]),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
            prop::collection::vec(arb_interface(), 0..=3),
        )
            .prop_map(
                move |(zone, excluded, ready, network_unavailable, interfaces)| {
                    let mut labels = BTreeMap::new();
                    if !zone.is_empty() {
                        labels.insert("zone".to_string(), zone.to_string());
                    }
                    if excluded {
                        labels.insert(LABEL_EXCLUDE_FROM_EXTERNAL_LB.to_string(), String::new());
                    }
                    Node {
                        name: name.into(),
                        labels,
                        ready,
                        network_unavailable,
                        interfaces,
                    }
                },
            )
    }

    fn arb_selector() -> impl Strategy<Value = Option<LabelSelector>> {
        prop::sample::select(vec![
            None,
            None,
            None,
            Some(selector(&[("zone", "a")], vec![])),
            Some(selector(&[], vec![expr("zone", "Exists", &[])])),
            Some(selector(&[], vec![expr("zone", "NotIn", &["b"])])),
            Some(selector(&[], vec![expr("zone", "In", &[])])),
        ])
    }

    fn arb_pools() -> impl Strategy<Value = Vec<Pool>> {
        let one = || {
            let regexes = prop::sample::select(vec![
                vec![],
                vec![],
                vec!["eth.*".to_string()],
                vec!["eth1".to_string(), "bond0".to_string()],
                vec!["(".to_string()],
            ]);
            (
                arb_selector(),
                regexes,
                prop::bool::weighted(0.8),
                prop::option::weighted(0.8, 0i64..3),
            )
        };
        (one(), one(), one()).prop_map(|(a, b, c)| {
            [
                ("a", "10.0.0.0/24", a),
                ("b", "10.0.0.0/22", b),
                ("c", "fd00::/64", c),
            ]
            .into_iter()
            .filter(|(_, _, (_, _, present, _))| *present)
            .map(
                |(name, block, (node_selector, interfaces, _, created))| Pool {
                    name: name.into(),
                    created,
                    blocks: vec![AddressBlock::parse(block).unwrap()],
                    node_selector,
                    interfaces,
                },
            )
            .collect()
        })
    }

    fn arb_service(i: usize) -> impl Strategy<Value = Service> {
        let endpoint = (0u32..3, 0u32..2).prop_map(|(ready, serving)| EndpointState {
            ready: ready.saturating_sub(1),
            serving_terminating: serving,
        });
        (
            prop::sample::subsequence(IPS.to_vec(), 1..=2),
            prop::bool::weighted(0.5),
            prop::collection::btree_map(
                prop::sample::select(vec!["n0", "n1", "n2", "n3", "n4", "n5", "n9", "ghost"]),
                endpoint,
                0..=4,
            ),
            prop::bool::weighted(0.2),
        )
            .prop_map(move |(ips, local, endpoints, elsewhere)| Service {
                namespace: "ns".into(),
                name: format!("s{i}"),
                ips: ips.iter().map(|s| ip(s)).collect(),
                external_traffic_policy: if local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                },
                endpoints: endpoints
                    .into_iter()
                    .map(|(n, e)| (n.to_string(), e))
                    .collect(),
                any_ready_endpoint: elsewhere,
                ..Service::default()
            })
    }

    pub(super) fn arb_inputs() -> impl Strategy<Value = Inputs> {
        let nodes = NAMES.map(|n| prop::option::weighted(0.85, arb_node(n)));
        (
            nodes,
            // Mostly live: an election with nobody to elect proves little.
            NAMES.map(|_| prop::bool::weighted(0.85)),
            arb_pools(),
            (1usize..=5).prop_flat_map(|n| (0..n).map(arb_service).collect::<Vec<_>>()),
            NAMES.map(|_| {
                prop::sample::select(vec![
                    Standing::Ready,
                    Standing::Ready,
                    Standing::Ready,
                    Standing::Ready,
                    Standing::Stale,
                    Standing::Starting,
                ])
            }),
        )
            .prop_map(|(nodes, members, pools, services, standings)| Inputs {
                nodes: nodes.into_iter().flatten().collect(),
                members: NAMES
                    .iter()
                    .zip(members)
                    .filter(|(_, live)| *live)
                    .map(|(n, _)| n.to_string())
                    .collect(),
                standing: NAMES
                    .iter()
                    .zip(standings)
                    .filter(|(_, s)| *s != Standing::Ready)
                    .map(|(n, s)| (n.to_string(), s))
                    .collect(),
                pools,
                services,
            })
    }

    /// The rules written out naively, per node, as the issue states them.
    fn oracle(inputs: &Inputs, ip_: IpAddr) -> BTreeMap<String, String> {
        let unique_pools: Vec<&Pool> = inputs
            .pools
            .iter()
            .filter(|p| inputs.pools.iter().filter(|q| q.name == p.name).count() == 1)
            .collect();
        let age = |p: &Pool| (p.created.is_none(), p.created, p.name.clone());
        let in_conflict = |p: &Pool| {
            unique_pools.iter().any(|q| {
                age(q) < age(p)
                    && p.blocks
                        .iter()
                        .any(|a| q.blocks.iter().any(|b| a.overlaps(b)))
            })
        };
        let Some(pool) = unique_pools
            .iter()
            .find(|p| !in_conflict(p) && p.blocks.iter().any(|b| b.contains(ip_)))
        else {
            return BTreeMap::new();
        };
        let services: Vec<&Service> = inputs
            .services
            .iter()
            .filter(|s| s.ips.contains(&ip_) && s.has_endpoints())
            .collect();
        if services.is_empty() {
            return BTreeMap::new();
        }
        let regexes: Vec<Regex> = pool
            .interfaces
            .iter()
            .filter_map(|r| interface_regex(r).ok())
            .collect();
        let mut eligible = BTreeMap::new();
        for n in &inputs.nodes {
            let unique = inputs.nodes.iter().filter(|m| m.name == n.name).count() == 1;
            let selected = Selector::parse(pool.node_selector.as_ref())
                .map(|s| s.matches(&n.labels))
                .unwrap_or(false);
            let local_ok = services.iter().all(|s| {
                s.external_traffic_policy == TrafficPolicy::Cluster
                    || s.endpoints
                        .get(&n.name)
                        .is_some_and(|e| e.ready + e.serving_terminating > 0)
            });
            let interface = if pool.interfaces.is_empty() {
                announcing_interface(ip_, &n.interfaces, false)
            } else {
                announcing_interface(
                    ip_,
                    n.interfaces
                        .iter()
                        .filter(|i| regexes.iter().any(|r| r.is_match(&i.name))),
                    true,
                )
            };
            let standing = inputs
                .standing
                .get(&n.name)
                .copied()
                .unwrap_or(Standing::Ready);
            if unique
                && inputs.members.contains(&n.name)
                && standing != Standing::Starting
                && n.ready
                && !n.network_unavailable
                && !n.labels.contains_key(LABEL_EXCLUDE_FROM_EXTERNAL_LB)
                && selected
                && local_ok
                && let Ok(i) = interface
            {
                let all_ready = services.iter().all(|s| {
                    s.external_traffic_policy == TrafficPolicy::Cluster
                        || s.endpoints.get(&n.name).is_some_and(|e| e.ready > 0)
                });
                eligible.insert(n.name.clone(), (i.name.clone(), (standing, all_ready)));
            }
        }
        // Ready speakers before stale ones, then nodes with ready local endpoints of every
        // Local Service.
        let best = eligible.values().map(|(_, tier)| *tier).max();
        eligible
            .into_iter()
            .filter(|(_, (_, tier))| Some(*tier) == best)
            .map(|(n, (i, _))| (n, i))
            .collect()
    }

    fn owners(e: &Election) -> BTreeMap<IpAddr, Option<(String, String)>> {
        e.decisions
            .iter()
            .map(|(ip_, d)| {
                let o = match d {
                    Decision::Owner { node, interface } => Some((node.clone(), interface.clone())),
                    Decision::NotAnnounced { .. } => None,
                };
                (*ip_, o)
            })
            .collect()
    }

    fn shuffle<T>(v: &mut [T], seed: &mut u64) {
        for i in (1..v.len()).rev() {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let j = usize::try_from((*seed >> 33) % (i as u64 + 1)).unwrap();
            v.swap(i, j);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn every_announceable_ip_has_exactly_one_owner(inputs in arb_inputs()) {
            let e = elect(&inputs);
            let all_ips: BTreeSet<IpAddr> =
                inputs.services.iter().flat_map(|s| s.ips.iter().copied()).collect();
            prop_assert_eq!(e.decisions.keys().copied().collect::<BTreeSet<_>>(), all_ips);
            for (ip_, decision) in &e.decisions {
                let eligible = oracle(&inputs, *ip_);
                // Each speaker asks "what do I own?": exactly one node must say yes.
                let claimants: Vec<&str> = NAMES
                    .iter()
                    .copied()
                    .filter(|n| e.owned_by(n).iter().any(|a| a.ip == *ip_))
                    .collect();
                match decision {
                    Decision::Owner { node, interface } => {
                        let winner = rendezvous_winner(*ip_, eligible.keys().map(String::as_str));
                        prop_assert_eq!(Some(node.as_str()), winner);
                        prop_assert_eq!(eligible.get(node), Some(interface));
                        prop_assert_eq!(claimants, vec![node.as_str()]);
                    }
                    Decision::NotAnnounced { .. } => {
                        prop_assert!(eligible.is_empty(), "{ip_}: eligible {eligible:?}");
                        prop_assert!(claimants.is_empty());
                    }
                }
            }
        }

        #[test]
        fn the_same_inputs_in_any_order_give_the_same_election(
            inputs in arb_inputs(),
            mut seed in any::<u64>(),
        ) {
            let before = elect(&inputs);
            let mut shuffled = inputs;
            shuffle(&mut shuffled.nodes, &mut seed);
            for n in &mut shuffled.nodes {
                shuffle(&mut n.interfaces, &mut seed);
                for i in &mut n.interfaces {
                    shuffle(&mut i.subnets, &mut seed);
                }
            }
            shuffle(&mut shuffled.pools, &mut seed);
            for p in &mut shuffled.pools {
                shuffle(&mut p.interfaces, &mut seed);
            }
            shuffle(&mut shuffled.services, &mut seed);
            for s in &mut shuffled.services {
                shuffle(&mut s.ips, &mut seed);
            }
            prop_assert_eq!(before, elect(&shuffled));
        }

        #[test]
        fn removing_a_node_moves_only_the_ips_it_owned(
            inputs in arb_inputs(),
            pick in any::<prop::sample::Index>(),
        ) {
            prop_assume!(!inputs.nodes.is_empty());
            let gone = inputs.nodes[pick.index(inputs.nodes.len())].name.clone();
            let before = owners(&elect(&inputs));
            let mut after_inputs = inputs.clone();
            after_inputs.nodes.retain(|n| n.name != gone);
            after_inputs.members.remove(&gone);
            let after = owners(&elect(&after_inputs));
            for (ip_, was) in &before {
                let owned_it = was.as_ref().is_some_and(|(n, _)| *n == gone);
                if !owned_it {
                    prop_assert_eq!(after.get(ip_), Some(was), "{} moved when {} left", ip_, gone);
                }
            }
            // Leaving the membership alone (the speaker died, the Node object stays) too.
            let mut dead = inputs;
            dead.members.remove(&gone);
            let after = owners(&elect(&dead));
            for (ip_, was) in &before {
                if was.as_ref().is_none_or(|(n, _)| *n != gone) {
                    prop_assert_eq!(after.get(ip_), Some(was));
                }
            }
        }

        #[test]
        fn adding_a_node_moves_ips_only_to_that_node(
            inputs in arb_inputs(),
            newcomer in arb_node("n9"),
        ) {
            let before = owners(&elect(&inputs));
            let mut grown = inputs;
            grown.nodes.push(newcomer);
            grown.members.insert("n9".into());
            let after = owners(&elect(&grown));
            for (ip_, now) in &after {
                let was = before.get(ip_).cloned().flatten();
                let to_newcomer = now.as_ref().is_some_and(|(n, _)| n == "n9");
                prop_assert!(
                    *now == was || to_newcomer,
                    "{} moved from {:?} to {:?}", ip_, was, now
                );
            }
        }

        #[test]
        fn local_never_picks_a_node_without_a_local_serving_endpoint(inputs in arb_inputs()) {
            let e = elect(&inputs);
            for (ip_, d) in &e.decisions {
                let holders: Vec<&Service> =
                    inputs.services.iter().filter(|s| s.ips.contains(ip_)).collect();
                if holders.iter().all(|s| !s.has_endpoints()) {
                    prop_assert!(d.owner().is_none(), "{ip_} announced without endpoints");
                }
                let Some(owner) = d.owner() else { continue };
                for s in holders {
                    if s.external_traffic_policy == TrafficPolicy::Local && s.has_endpoints() {
                        prop_assert!(
                            s.endpoints.get(owner).is_some_and(EndpointState::can_serve),
                            "{ip_} on {owner} without a local endpoint of {}", s.key()
                        );
                    }
                }
            }
        }

        #[test]
        fn services_sharing_an_ip_share_one_owner(inputs in arb_inputs()) {
            let e = elect(&inputs);
            // Per Service, per IP, the owner as that Service's condition would report it.
            let mut seen: BTreeMap<IpAddr, BTreeSet<Option<String>>> = BTreeMap::new();
            for s in &inputs.services {
                for ip_ in &s.ips {
                    let o = e.decision(*ip_).and_then(Decision::owner).map(String::from);
                    seen.entry(*ip_).or_default().insert(o);
                }
            }
            for (ip_, owners) in seen {
                prop_assert_eq!(owners.len(), 1, "{} has owners {:?}", ip_, owners);
            }
            // And no two nodes claim the same IP.
            let mut claimed = BTreeSet::new();
            for n in NAMES {
                for a in e.owned_by(n) {
                    prop_assert!(claimed.insert(a.ip), "{} claimed twice", a.ip);
                }
            }
        }
    }

    #[test]
    fn a_forwarded_ip_without_a_node_port_is_not_announced_and_says_why() {
        let mut w = world(&["a", "b"]);
        let web = &mut w.services[0];
        web.proxied.insert(ip("10.0.0.10"));
        web.ports[0].node_port = None;
        let (reason, message) = not_announced(&elect(&w), "10.0.0.10");
        assert_eq!(reason, AnnouncementReason::NoNodePort);
        assert!(message.contains("default/web has no NodePort"), "{message}");

        // The same Service in VIP mode needs no NodePort.
        w.services[0].proxied.clear();
        owner(&elect(&w), "10.0.0.10");
        // And a forwarded one with a NodePort is announced.
        w.services[0].proxied.insert(ip("10.0.0.10"));
        w.services[0].ports[0].node_port = Some(31000);
        owner(&elect(&w), "10.0.0.10");
    }

    #[test]
    fn a_service_without_a_node_port_does_not_take_a_shared_forwarded_ip_down() {
        let mut w = world(&["a", "b"]);
        let mut udp = svc(
            "dns",
            &["10.0.0.10"],
            TrafficPolicy::Cluster,
            &[("elsewhere", 1, 0)],
        );
        udp.proxied.insert(ip("10.0.0.10"));
        udp.ports = vec![ServicePort {
            protocol: Protocol::Udp,
            port: 53,
            node_port: None,
        }];
        w.services[0].proxied.insert(ip("10.0.0.10"));
        w.services.push(udp);
        owner(&elect(&w), "10.0.0.10");
    }

    #[test]
    fn protocols_parse_as_the_api_writes_them() {
        assert_eq!(Protocol::parse(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse(Some("TCP")), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse(Some("UDP")), Some(Protocol::Udp));
        assert_eq!(Protocol::parse(Some("SCTP")), Some(Protocol::Sctp));
        assert_eq!(Protocol::parse(Some("tcp")), None);
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::parse(Some(p.as_str())), Some(p));
        }
    }
}
