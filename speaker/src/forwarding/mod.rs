//! NodePort forwarding for IPs of `forwarding: NodePort` pools (their ingress says
//! `ipMode: Proxy`, so kube-proxy programs nothing for them): on the node that owns such an
//! IP, traffic to `IP:port` is handed to the Service's NodePort on this node, through
//! kube-proxy's own NodePort handling, and the replies leave with `IP:port` as their source.
//!
//! How, in the kernel (one nftables table of our own, `inet ferrolb`, replaced as a whole
//! in one transaction; kube-proxy's and the host's rules are never touched):
//!
//! 1. prerouting, priority −250 (after defragmentation at −400, **before conntrack** at
//!    −200): a packet to an owned IP whose protocol and port the Service exposes gets its
//!    destination rewritten to `nodeIP:nodePort` (the kernel fixes the checksums) and a
//!    packet mark. Conntrack then sees an ordinary NodePort connection, so kube-proxy's
//!    NodePort rules (DNAT to an endpoint; for `externalTrafficPolicy: Local` only local
//!    ones and no masquerade, so the backend sees the client's address) apply unchanged. A
//!    stateful DNAT of ours could not compose with kube-proxy's: the kernel runs only the
//!    first NAT binding of a connection per hook. Anything else to an owned IP (another
//!    port, a source outside `loadBalancerSourceRanges`) is dropped, never routed back out.
//! 2. prerouting, priority −190 (conntrack entry exists): the packet mark becomes a
//!    conntrack mark bit and is cleared from the packet.
//! 3. postrouting, priority 110 (after kube-proxy's source NAT at 100): replies of marked
//!    connections, which leave with source `nodeIP:nodePort` once conntrack undid
//!    kube-proxy's DNAT, get `IP:port` back as their source. Replies of direct NodePort
//!    connections carry no mark and are not touched.
//!
//! This module is pure: the owned IPs and the Services in, a [`Ruleset`] and its text out
//! ([`nft`]). Running `nft` is [`kernel`]'s job.

pub mod kernel;
pub mod nft;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::election::{Protocol, Service};

/// `IP:port/protocol` of an owned IP forwarded to `node_port` on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: u16,
}

/// What this node's kernel must do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The node's own address per family: the NodePort traffic's new destination.
    pub node_v4: Option<Ipv4Addr>,
    pub node_v6: Option<Ipv6Addr>,
    /// Every forwarded IP this node owns: traffic to it that is not forwarded is dropped.
    pub owned: BTreeSet<IpAddr>,
    pub forwards: BTreeSet<Forward>,
    /// Source ranges per forwarded `(IP, protocol, port)` that has any; absent: any source.
    pub allowed_sources: BTreeMap<(IpAddr, Protocol, u16), Vec<IpNetwork>>,
}

impl Ruleset {
    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
    }

    /// What to hold while the responders move from `old` to `self`: `self`, plus what
    /// `old` forwarded for IPs `self` no longer owns. Loaded before the responders change
    /// (an IP taken is forwarded before its gratuitous burst) and replaced by `self` after
    /// (an IP given up keeps its rules until nobody here answers for it any more), so no
    /// packet to an announced IP is ever routed back out.
    pub fn during_change_from(&self, old: &Ruleset) -> Ruleset {
        let mut out = self.clone();
        for ip in old.owned.difference(&self.owned) {
            out.owned.insert(*ip);
        }
        let released: BTreeSet<IpAddr> = old.owned.difference(&self.owned).copied().collect();
        out.forwards
            .extend(old.forwards.iter().filter(|f| released.contains(&f.ip)));
        out.allowed_sources.extend(
            old.allowed_sources
                .iter()
                .filter(|((ip, _, _), _)| released.contains(ip))
                .map(|(k, v)| (*k, v.clone())),
        );
        out
    }
}

/// `loadBalancerSourceRanges` for one IP family, as kube-proxy reads them: entries trimmed,
/// only those of the family, and no restriction at all when none is of the family or one
/// of them is a zero-length prefix (`0.0.0.0/0`). Entries that do not parse are skipped
/// (the API server validates the field; skipping narrows what is allowed, never widens it)
/// and returned.
pub fn source_ranges(ranges: &[String], v4: bool) -> (Option<Vec<IpNetwork>>, Vec<String>) {
    let mut bad = Vec::new();
    let mut nets = Vec::new();
    let mut any_of_family = false;
    for r in ranges {
        let t = r.trim();
        match t.parse::<IpNetwork>() {
            Ok(net) if net.is_ipv4() == v4 => {
                any_of_family = true;
                if net.prefix() == 0 {
                    return (None, bad);
                }
                // The network address: host bits of a sloppy entry do not widen it.
                if let Ok(n) = IpNetwork::new(net.network(), net.prefix()) {
                    nets.push(n);
                }
            }
            Ok(_) => {}
            Err(_) => {
                // Counted as of the family it looks like, so a lone bad entry still
                // restricts (to nothing) rather than opening the IP to everyone.
                if t.contains(':') != v4 {
                    any_of_family = true;
                }
                bad.push(t.to_string());
            }
        }
    }
    nets.sort();
    nets.dedup();
    (any_of_family.then_some(nets), bad)
}

/// The ruleset for the forwarded IPs among `owned` (the IPs this node announces), from the
/// Services holding them, with the node's own addresses. Returns it with the problems
/// found (each a sentence for the log).
pub fn plan<'a>(
    owned: impl IntoIterator<Item = IpAddr>,
    services: impl IntoIterator<Item = &'a Service>,
    node_v4: Option<Ipv4Addr>,
    node_v6: Option<Ipv6Addr>,
) -> (Ruleset, Vec<String>) {
    let owned: BTreeSet<IpAddr> = owned.into_iter().collect();
    let mut by_ip: BTreeMap<IpAddr, Vec<&Service>> = BTreeMap::new();
    for svc in services {
        for ip in svc.proxied.iter().filter(|ip| owned.contains(ip)) {
            by_ip.entry(*ip).or_default().push(svc);
        }
    }
    let mut rs = Ruleset {
        node_v4,
        node_v6,
        ..Ruleset::default()
    };
    let mut problems = Vec::new();
    // (family, protocol, nodePort) → the forward that replies are mapped back to.
    let mut back: BTreeMap<(bool, Protocol, u16), Forward> = BTreeMap::new();
    for (ip, mut svcs) in by_ip {
        svcs.sort_by_key(|s| s.key());
        rs.owned.insert(ip);
        let v4 = ip.is_ipv4();
        if (v4 && node_v4.is_none()) || (!v4 && node_v6.is_none()) {
            problems.push(format!(
                "{ip}: this node has no {} InternalIP to forward to; its traffic is dropped",
                if v4 { "IPv4" } else { "IPv6" }
            ));
            continue;
        }
        let mut taken: BTreeMap<(Protocol, u16), String> = BTreeMap::new();
        for svc in svcs {
            let (ranges, bad) = source_ranges(&svc.source_ranges, v4);
            for b in bad {
                problems.push(format!(
                    "{}: loadBalancerSourceRanges entry {b:?} is not a CIDR; ignored (it allows nothing)",
                    svc.key()
                ));
            }
            for p in &svc.ports {
                let Some(node_port) = p.node_port else {
                    continue;
                };
                if let Some(other) = taken.get(&(p.protocol, p.port)) {
                    problems.push(format!(
                        "{ip}: {}/{} is exposed by both {other} and {}; {other} keeps it",
                        p.port,
                        p.protocol.as_str(),
                        svc.key()
                    ));
                    continue;
                }
                let f = Forward {
                    ip,
                    protocol: p.protocol,
                    port: p.port,
                    node_port,
                };
                if let Some(prev) = back.get(&(v4, p.protocol, node_port)) {
                    problems.push(format!(
                        "NodePort {node_port}/{} is the target of both {}:{} and {ip}:{}; only the first is forwarded",
                        p.protocol.as_str(),
                        prev.ip,
                        prev.port,
                        p.port
                    ));
                    continue;
                }
                taken.insert((p.protocol, p.port), svc.key());
                back.insert((v4, p.protocol, node_port), f);
                rs.forwards.insert(f);
                if let Some(r) = &ranges {
                    rs.allowed_sources
                        .insert((ip, p.protocol, p.port), r.clone());
                }
            }
        }
    }
    (rs, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::ServicePort;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn svc(name: &str, ips: &[&str], ports: &[(Protocol, u16, Option<u16>)]) -> Service {
        let ips: Vec<IpAddr> = ips.iter().map(|s| ip(s)).collect();
        Service {
            namespace: "shop".into(),
            name: name.into(),
            proxied: ips.iter().copied().collect(),
            ips,
            ports: ports
                .iter()
                .map(|(protocol, port, node_port)| ServicePort {
                    protocol: *protocol,
                    port: *port,
                    node_port: *node_port,
                })
                .collect(),
            ..Service::default()
        }
    }

    const N4: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 0, 0, 11));
    const N6: Option<Ipv6Addr> = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 11));

    #[test]
    fn owned_proxied_ips_forward_each_port_with_a_node_port() {
        let web = svc(
            "web",
            &["10.0.0.200", "fd00::200"],
            &[
                (Protocol::Tcp, 80, Some(30080)),
                (Protocol::Udp, 80, Some(30080)),
                (Protocol::Tcp, 9, None),
            ],
        );
        let other = svc(
            "other",
            &["10.0.0.201"],
            &[(Protocol::Tcp, 80, Some(30081))],
        );
        let (rs, problems) = plan([ip("10.0.0.200"), ip("fd00::200")], [&web, &other], N4, N6);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            rs.owned,
            BTreeSet::from([ip("10.0.0.200"), ip("fd00::200")])
        );
        let got: Vec<(IpAddr, Protocol, u16, u16)> = rs
            .forwards
            .iter()
            .map(|f| (f.ip, f.protocol, f.port, f.node_port))
            .collect();
        assert_eq!(
            got,
            vec![
                (ip("10.0.0.200"), Protocol::Tcp, 80, 30080),
                (ip("10.0.0.200"), Protocol::Udp, 80, 30080),
                (ip("fd00::200"), Protocol::Tcp, 80, 30080),
                (ip("fd00::200"), Protocol::Udp, 80, 30080),
            ],
            "not owned (10.0.0.201) and without a NodePort (9) are left out"
        );
        assert!(rs.allowed_sources.is_empty());
    }

    #[test]
    fn during_a_change_released_ips_keep_their_rules_and_taken_ones_have_theirs() {
        let a = svc("a", &["10.0.0.200"], &[(Protocol::Tcp, 80, Some(30080))]);
        let mut b = svc("b", &["10.0.0.201"], &[(Protocol::Tcp, 80, Some(30081))]);
        b.source_ranges = vec!["192.0.2.0/24".into()];
        let (old, _) = plan([ip("10.0.0.201")], [&a, &b], N4, N6);
        let (new, _) = plan([ip("10.0.0.200")], [&a, &b], N4, N6);
        let mid = new.during_change_from(&old);
        assert_eq!(
            mid.owned,
            BTreeSet::from([ip("10.0.0.200"), ip("10.0.0.201")])
        );
        assert_eq!(mid.forwards.len(), 2);
        assert_eq!(mid.allowed_sources.len(), 1);
        assert_eq!(
            new.during_change_from(&new),
            new,
            "no change, nothing added"
        );
        // An IP kept across the change takes its new rules only.
        let (changed, _) = plan(
            [ip("10.0.0.200")],
            [&svc(
                "a",
                &["10.0.0.200"],
                &[(Protocol::Tcp, 80, Some(31000))],
            )],
            N4,
            N6,
        );
        let mid = changed.during_change_from(&new);
        assert_eq!(mid, changed);
    }

    #[test]
    fn ips_in_vip_mode_are_not_forwarded() {
        let mut web = svc("web", &["10.0.0.200"], &[(Protocol::Tcp, 80, Some(30080))]);
        web.proxied.clear();
        let (rs, _) = plan([ip("10.0.0.200")], [&web], N4, N6);
        assert!(rs.is_empty() && rs.forwards.is_empty());
    }

    #[test]
    fn source_ranges_follow_kube_proxy_per_family() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let nets = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpNetwork>>()
        };
        assert_eq!(source_ranges(&[], true), (None, vec![]));
        assert_eq!(
            source_ranges(&r(&[" 192.0.2.0/24", "2001:db8::/32"]), true),
            (Some(nets(&["192.0.2.0/24"])), vec![])
        );
        assert_eq!(
            source_ranges(&r(&["192.0.2.0/24"]), false),
            (None, vec![]),
            "no IPv6 range: IPv6 is not restricted"
        );
        assert_eq!(
            source_ranges(&r(&["192.0.2.0/24", "0.0.0.0/0"]), true),
            (None, vec![])
        );
        assert_eq!(
            source_ranges(&r(&["192.0.2.7/24"]), true),
            (Some(nets(&["192.0.2.0/24"])), vec![]),
            "host bits do not widen a range"
        );
        assert_eq!(
            source_ranges(&r(&["192.0.2.0/33"]), true),
            (Some(vec![]), vec!["192.0.2.0/33".to_string()]),
            "a lone bad entry allows nothing"
        );
    }

    #[test]
    fn restricted_ports_carry_their_ranges() {
        let mut web = svc("web", &["10.0.0.200"], &[(Protocol::Tcp, 80, Some(30080))]);
        web.source_ranges = vec!["192.0.2.0/24".into(), "198.51.100.0/24".into()];
        let (rs, _) = plan([ip("10.0.0.200")], [&web], N4, N6);
        assert_eq!(
            rs.allowed_sources
                .get(&(ip("10.0.0.200"), Protocol::Tcp, 80)),
            Some(&vec![
                "192.0.2.0/24".parse().unwrap(),
                "198.51.100.0/24".parse().unwrap()
            ])
        );
    }

    #[test]
    fn a_family_without_a_node_address_is_dropped_and_reported() {
        let web = svc("web", &["fd00::200"], &[(Protocol::Tcp, 80, Some(30080))]);
        let (rs, problems) = plan([ip("fd00::200")], [&web], N4, None);
        assert!(
            rs.owned.contains(&ip("fd00::200")),
            "still dropped, not routed"
        );
        assert!(rs.forwards.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("no IPv6 InternalIP"), "{problems:?}");
    }

    #[test]
    fn sharing_services_with_a_colliding_port_keep_the_first_by_name() {
        let a = svc("a", &["10.0.0.200"], &[(Protocol::Tcp, 80, Some(30001))]);
        let b = svc(
            "b",
            &["10.0.0.200"],
            &[
                (Protocol::Tcp, 80, Some(30002)),
                (Protocol::Udp, 53, Some(30053)),
            ],
        );
        let (rs, problems) = plan([ip("10.0.0.200")], [&b, &a], N4, N6);
        let ports: Vec<(Protocol, u16, u16)> = rs
            .forwards
            .iter()
            .map(|f| (f.protocol, f.port, f.node_port))
            .collect();
        assert_eq!(
            ports,
            vec![(Protocol::Tcp, 80, 30001), (Protocol::Udp, 53, 30053)]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
