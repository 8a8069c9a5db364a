//! A [`Ruleset`] as an `nft -f` script: one transaction that replaces the table
//! `inet ferrolb` whole (`add table` makes the `delete` safe when it is absent, and the
//! kernel applies the three statements atomically), so leftovers of a crashed speaker are
//! replaced, never added to. Pure text; every value in it is an address, a port or a number
//! the types guarantee, never a string from outside.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Forward, Ruleset};
use crate::election::Protocol;

/// A restricted `(IP, protocol, port)`.
type Restricted = (IpAddr, Protocol, u16);

/// The table's family and name.
pub const TABLE: &str = "inet ferrolb";

/// Default conntrack/packet mark bit; kube-proxy uses 0x4000 and 0x8000, Cilium 0x0f00,
/// Calico the upper 16 bits by default. `--forwarding-mark` changes it.
pub const DEFAULT_MARK: u32 = 0x0000_1000;

/// The script that removes the table (and does nothing when it is absent).
pub fn removal() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One family's names: (ip keyword, address type, suffix).
struct Fam {
    ip: &'static str,
    addr: &'static str,
    sfx: &'static str,
    v4: bool,
}

const V4: Fam = Fam {
    ip: "ip",
    addr: "ipv4_addr",
    sfx: "4",
    v4: true,
};
const V6: Fam = Fam {
    ip: "ip6",
    addr: "ipv6_addr",
    sfx: "6",
    v4: false,
};

/// What the chains depend on (anything else lives in sets and maps): the node's
/// addresses, and whether SCTP has rules (only when some port is SCTP: a kernel without
/// SCTP checksum support refuses them, and that must not cost TCP and UDP their rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub node_v4: Option<std::net::Ipv4Addr>,
    pub node_v6: Option<std::net::Ipv6Addr>,
    pub sctp: bool,
}

impl Shape {
    pub fn of(rs: &Ruleset) -> Shape {
        Shape {
            node_v4: rs.node_v4,
            node_v6: rs.node_v6,
            sctp: rs.forwards.iter().any(|f| f.protocol == Protocol::Sctp),
        }
    }

    fn protocols(&self) -> &'static [&'static str] {
        if self.sctp {
            &["tcp", "udp", "sctp"]
        } else {
            &["tcp", "udp"]
        }
    }
}

/// One named set or map of the table: how it is declared and what it holds.
struct Named {
    /// `set` or `map`.
    kind: &'static str,
    name: String,
    /// The declaration's body before the elements (`type ...`, `flags ...`).
    decl: String,
    elements: Vec<String>,
}

/// The table's sets and maps for `rs`, both families.
fn named(rs: &Ruleset) -> Vec<Named> {
    let mut out = Vec::new();
    for f in [&V4, &V6] {
        let s = f.sfx;
        let addr = f.addr;
        let fwd: Vec<&Forward> = rs
            .forwards
            .iter()
            .filter(|x| x.ip.is_ipv4() == f.v4)
            .collect();
        let limited: Vec<(&Restricted, &Vec<ipnetwork::IpNetwork>)> = rs
            .allowed_sources
            .iter()
            .filter(|((ip, _, _), _)| ip.is_ipv4() == f.v4)
            .collect();
        out.push(Named {
            kind: "set",
            name: format!("owned{s}"),
            decl: format!("type {addr}"),
            elements: rs
                .owned
                .iter()
                .filter(|ip| ip.is_ipv4() == f.v4)
                .map(IpAddr::to_string)
                .collect(),
        });
        out.push(Named {
            kind: "map",
            name: format!("to_node_port{s}"),
            decl: format!("type {addr} . inet_proto . inet_service : inet_service"),
            elements: fwd
                .iter()
                .map(|x| {
                    format!(
                        "{} . {} . {} : {}",
                        x.ip,
                        proto(x.protocol),
                        x.port,
                        x.node_port
                    )
                })
                .collect(),
        });
        out.push(Named {
            kind: "map",
            name: format!("back_addr{s}"),
            decl: format!("type inet_proto . inet_service : {addr}"),
            elements: fwd
                .iter()
                .map(|x| format!("{} . {} : {}", proto(x.protocol), x.node_port, x.ip))
                .collect(),
        });
        out.push(Named {
            kind: "map",
            name: format!("back_port{s}"),
            decl: "type inet_proto . inet_service : inet_service".into(),
            elements: fwd
                .iter()
                .map(|x| format!("{} . {} : {}", proto(x.protocol), x.node_port, x.port))
                .collect(),
        });
        out.push(Named {
            kind: "set",
            name: format!("limited{s}"),
            decl: format!("type {addr} . inet_proto . inet_service"),
            elements: limited
                .iter()
                .map(|((ip, p, port), _)| format!("{ip} . {} . {port}", proto(*p)))
                .collect(),
        });
        out.push(Named {
            kind: "set",
            name: format!("allowed{s}"),
            decl: format!("type {addr} . inet_proto . inet_service . {addr}\n    flags interval"),
            elements: limited
                .iter()
                .flat_map(|((ip, p, port), nets)| {
                    nets.iter()
                        .map(move |n| format!("{ip} . {} . {port} . {n}", proto(*p)))
                })
                .collect(),
        });
    }
    out
}

/// The script that changes only what the sets and maps hold, in one transaction: the
/// chains (and so the counters) stay. Valid only over a table [`render`] made for the same
/// node addresses and mark.
pub fn render_contents(rs: &Ruleset) -> String {
    let mut out = String::new();
    for n in named(rs) {
        let _ = writeln!(out, "flush {} {TABLE} {}", n.kind, n.name);
        if !n.elements.is_empty() {
            let _ = writeln!(
                out,
                "add element {TABLE} {} {{ {} }}",
                n.name,
                n.elements.join(", ")
            );
        }
    }
    out
}

/// The whole script for `rs` with `mark` as the mark bit.
pub fn render(rs: &Ruleset, mark: u32) -> String {
    let shape = Shape::of(rs);
    let mut out = removal();
    let _ = writeln!(out, "table {TABLE} {{");
    let _ = writeln!(
        out,
        "  comment \"ferrolb-speaker: forwards LoadBalancer IPs of forwarding: NodePort pools to NodePorts\""
    );
    for n in named(rs) {
        let _ = writeln!(out, "  {} {} {{\n    {}", n.kind, n.name, n.decl);
        if !n.elements.is_empty() {
            let _ = writeln!(out, "    elements = {{ {} }}", n.elements.join(", "));
        }
        let _ = writeln!(out, "  }}");
    }
    for f in [&V4, &V6] {
        for c in ["forwarded", "dropped", "connections"] {
            let _ = writeln!(out, "  counter {c}{} {{ }}", f.sfx);
        }
    }

    // 1. Before conntrack: rewrite, mark, or drop.
    let _ = writeln!(
        out,
        "  chain rewrite {{\n    type filter hook prerouting priority -250; policy accept;\n    ip daddr @owned4 jump inbound4\n    ip6 daddr @owned6 jump inbound6\n  }}"
    );
    for (f, node) in [
        (&V4, rs.node_v4.map(IpAddr::V4)),
        (&V6, rs.node_v6.map(IpAddr::V6)),
    ] {
        let s = f.sfx;
        let ip = f.ip;
        let _ = writeln!(out, "  chain inbound{s} {{");
        let _ = writeln!(
            out,
            "    {ip} daddr . meta l4proto . th dport @limited{s} {ip} daddr . meta l4proto . th dport . {ip} saddr != @allowed{s} counter name dropped{s} drop"
        );
        if let Some(node) = node {
            for p in shape.protocols() {
                let _ = writeln!(
                    out,
                    "    meta l4proto {p} {p} dport set {ip} daddr . meta l4proto . {p} dport map @to_node_port{s} {ip} daddr set {node} meta mark set meta mark | {mark:#x} counter name forwarded{s} accept"
                );
            }
        }
        // Another port, or no address to forward to: dropped, not routed back out.
        let _ = writeln!(out, "    counter name dropped{s} drop\n  }}");
    }

    // 2. Conntrack knows the connection: keep the mark there, off the packet.
    let _ = writeln!(
        out,
        "  chain conntrack_mark {{\n    type filter hook prerouting priority -190; policy accept;\n    meta mark & {mark:#x} == 0 return\n    ct state new meta nfproto ipv4 counter name connections4\n    ct state new meta nfproto ipv6 counter name connections6\n    ct mark set ct mark | {mark:#x} meta mark set meta mark & {:#x}\n  }}",
        !mark
    );

    // 3. Replies, after kube-proxy's SNAT: nodeIP:nodePort back to IP:port.
    let _ = writeln!(
        out,
        "  chain reply_source {{\n    type filter hook postrouting priority 110; policy accept;\n    ct direction reply ct mark & {mark:#x} == {mark:#x} meta nfproto ipv4 jump reply4\n    ct direction reply ct mark & {mark:#x} == {mark:#x} meta nfproto ipv6 jump reply6\n  }}"
    );
    for (f, node) in [
        (&V4, rs.node_v4.map(IpAddr::V4)),
        (&V6, rs.node_v6.map(IpAddr::V6)),
    ] {
        let s = f.sfx;
        let ip = f.ip;
        let _ = writeln!(out, "  chain reply{s} {{");
        if let Some(node) = node {
            for p in shape.protocols() {
                let _ = writeln!(
                    out,
                    "    {ip} saddr {node} meta l4proto {p} {ip} saddr set meta l4proto . {p} sport map @back_addr{s} {p} sport set meta l4proto . {p} sport map @back_port{s}"
                );
            }
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn sample() -> Ruleset {
        let ip4: IpAddr = "10.0.0.200".parse().unwrap();
        let ip6: IpAddr = "fd00::200".parse().unwrap();
        Ruleset {
            node_v4: Some("10.0.0.11".parse().unwrap()),
            node_v6: Some("fd00::11".parse().unwrap()),
            owned: BTreeSet::from([ip4, ip6]),
            forwards: BTreeSet::from([
                Forward {
                    ip: ip4,
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: 30080,
                },
                Forward {
                    ip: ip4,
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: 30053,
                },
                Forward {
                    ip: ip6,
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: 30080,
                },
            ]),
            allowed_sources: BTreeMap::from([(
                (ip4, Protocol::Tcp, 80),
                vec!["192.0.2.0/24".parse().unwrap()],
            )]),
        }
    }

    #[test]
    fn the_script_replaces_the_table_whole() {
        let text = render(&sample(), DEFAULT_MARK);
        assert!(text.starts_with(
            "add table inet ferrolb\ndelete table inet ferrolb\ntable inet ferrolb {\n"
        ));
        assert_eq!(
            removal(),
            "add table inet ferrolb\ndelete table inet ferrolb\n"
        );
    }

    #[test]
    fn maps_carry_each_forward_both_ways() {
        let text = render(&sample(), DEFAULT_MARK);
        for needle in [
            "set owned4 {\n    type ipv4_addr\n    elements = { 10.0.0.200 }".to_string(),
            "set owned6 {\n    type ipv6_addr\n    elements = { fd00::200 }".to_string(),
            "elements = { 10.0.0.200 . tcp . 80 : 30080, 10.0.0.200 . udp . 53 : 30053 }"
                .to_string(),
            "elements = { tcp . 30080 : 10.0.0.200, udp . 30053 : 10.0.0.200 }".to_string(),
            "elements = { tcp . 30080 : 80, udp . 30053 : 53 }".to_string(),
            "elements = { fd00::200 . tcp . 80 : 30080 }".to_string(),
            "elements = { tcp . 30080 : fd00::200 }".to_string(),
            "elements = { 10.0.0.200 . tcp . 80 }".to_string(),
            "elements = { 10.0.0.200 . tcp . 80 . 192.0.2.0/24 }".to_string(),
        ] {
            assert!(text.contains(&needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn hooks_sit_before_conntrack_and_after_source_nat() {
        let text = render(&sample(), DEFAULT_MARK);
        assert!(text.contains("type filter hook prerouting priority -250;"));
        assert!(text.contains("type filter hook prerouting priority -190;"));
        assert!(text.contains("type filter hook postrouting priority 110;"));
        assert!(text.contains(
            "meta l4proto tcp tcp dport set ip daddr . meta l4proto . tcp dport map @to_node_port4 ip daddr set 10.0.0.11 meta mark set meta mark | 0x1000 counter name forwarded4 accept"
        ));
        assert!(text.contains(
            "ip6 saddr fd00::11 meta l4proto tcp ip6 saddr set meta l4proto . tcp sport map @back_addr6 tcp sport set meta l4proto . tcp sport map @back_port6"
        ));
        assert!(text.contains("ct mark set ct mark | 0x1000 meta mark set meta mark & 0xffffefff"));
        assert!(text.contains(
            "ct direction reply ct mark & 0x1000 == 0x1000 meta nfproto ipv6 jump reply6"
        ));
    }

    #[test]
    fn without_a_node_address_a_family_only_drops() {
        let mut rs = sample();
        rs.node_v6 = None;
        let text = render(&rs, DEFAULT_MARK);
        let inbound6 = text
            .split("chain inbound6 {")
            .nth(1)
            .and_then(|t| t.split("  }").next())
            .unwrap();
        assert!(!inbound6.contains("dport set"), "{inbound6}");
        assert!(inbound6.contains("counter name dropped6 drop"));
    }

    #[test]
    fn a_contents_update_rewrites_every_set_and_map_and_nothing_else() {
        let text = render_contents(&sample());
        assert_eq!(text.matches("flush ").count(), 12, "{text}");
        assert!(text.contains("flush map inet ferrolb to_node_port4\nadd element inet ferrolb to_node_port4 { 10.0.0.200 . tcp . 80 : 30080, 10.0.0.200 . udp . 53 : 30053 }\n"));
        assert!(
            text.contains("flush set inet ferrolb limited6\nflush set inet ferrolb allowed6\n"),
            "empty ones are only flushed"
        );
        assert!(!text.contains("chain") && !text.contains("table inet ferrolb {"));
    }

    #[test]
    fn sctp_gets_rules_only_when_a_port_is_sctp() {
        let mut rs = sample();
        assert!(!render(&rs, DEFAULT_MARK).contains("sctp"));
        rs.forwards.insert(Forward {
            ip: "10.0.0.200".parse().unwrap(),
            protocol: Protocol::Sctp,
            port: 9,
            node_port: 30009,
        });
        let text = render(&rs, DEFAULT_MARK);
        assert!(text.contains("meta l4proto sctp sctp dport set ip daddr . meta l4proto . sctp dport map @to_node_port4"));
        assert!(text.contains("10.0.0.200 . sctp . 9 : 30009"));
        assert!(Shape::of(&rs).sctp && !Shape::of(&sample()).sctp);
    }

    #[test]
    fn an_empty_ruleset_still_makes_the_table() {
        let text = render(&Ruleset::default(), DEFAULT_MARK);
        assert!(text.contains("set owned4 {\n    type ipv4_addr\n  }"));
        assert!(!text.contains("elements"));
    }
}
