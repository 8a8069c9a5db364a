//! The lab's address plan and layout: which network namespaces exist, their links and
//! addresses. Pure: the same options give the same plan; `netns.rs` carries it out.
//!
//! ```text
//!  host ── flb-host 10.77.255.1/30 ══ veth ══ flb-cp: up0 10.77.255.2/30
//!                                              lan0 (bridge) 10.77.0.2/24, fd77::2/64
//!                                               ├─ n1 ══ flb-node1: eth0 10.77.0.11  cbr0 10.244.1.1/24 ── pods
//!                                               ├─ n2 ══ flb-node2: eth0 10.77.0.12  cbr0 10.244.2.1/24 ── pods
//!                                               └─ cl ══ flb-client: eth0 10.77.0.100
//! ```
//! The control plane and the ferrolb controller run in `flb-cp`; each node's kube-proxy
//! and speaker run in its node namespace (the equivalent of host networking). The host
//! reaches the API server only through the `flb-host` link; no host route is touched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every lab object's name starts with this, so a crashed `up` can be cleaned up.
pub const PREFIX: &str = "flb-";
pub const CP_NS: &str = "flb-cp";
pub const CLIENT_NS: &str = "flb-client";
pub const HOST_LINK: &str = "flb-host";
pub const LAN_BRIDGE: &str = "lan0";
pub const APISERVER_PORT: u16 = 6443;

/// Which address families the lab's LAN carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    Ipv4,
    Ipv6,
    DualStack,
}

impl Stack {
    pub fn v4(self) -> bool {
        self != Stack::Ipv6
    }
    pub fn v6(self) -> bool {
        self != Stack::Ipv4
    }
}

/// kube-proxy's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyMode {
    Iptables,
    Nftables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// One worker node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Kubernetes Node name, e.g. `node1`.
    pub name: String,
    /// Its network namespace, e.g. `flb-node1`.
    pub netns: String,
    /// The veth end on the LAN bridge, in `flb-cp`.
    pub bridge_port: String,
    pub lan_v4: Option<Ipv4Addr>,
    pub lan_v6: Option<Ipv6Addr>,
    /// Pod CIDRs, IPv4 first.
    pub pod_cidrs: Vec<String>,
    /// The node bridge's address in each pod CIDR (the pods' gateway).
    pub pod_gateways: Vec<IpAddr>,
}

/// The whole lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub stack: Stack,
    pub proxy_mode: ProxyMode,
    pub nodes: Vec<NodePlan>,
    pub host_ip: Ipv4Addr,
    pub cp_uplink_ip: Ipv4Addr,
    pub cp_lan_v4: Ipv4Addr,
    pub cp_lan_v6: Ipv6Addr,
    pub client_v4: Option<Ipv4Addr>,
    pub client_v6: Option<Ipv6Addr>,
    pub service_cidrs: String,
    pub cluster_cidrs: String,
    /// The sample IPPool's addresses (on the LAN, so ARP/NDP reach them).
    pub pool: Vec<String>,
    pub state_dir: PathBuf,
    /// Where `up` found ferrolb's binaries (beside the `ferrolb-lab` that ran it): every
    /// later start (a speaker restarted by a test, whose own executable lives elsewhere)
    /// runs these same binaries. Absent in plans written before it was recorded.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
}

impl LabPlan {
    pub fn new(nodes: usize, stack: Stack, proxy_mode: ProxyMode, state_dir: PathBuf) -> LabPlan {
        let nodes = (1..=nodes.clamp(1, 50))
            .map(|i| {
                let i8 = u8::try_from(i).unwrap_or(u8::MAX);
                let i16 = u16::try_from(i).unwrap_or(u16::MAX);
                let mut pod_cidrs = Vec::new();
                let mut pod_gateways = Vec::new();
                if stack.v4() {
                    pod_cidrs.push(format!("10.244.{i}.0/24"));
                    pod_gateways.push(IpAddr::V4(Ipv4Addr::new(10, 244, i8, 1)));
                }
                if stack.v6() {
                    pod_cidrs.push(format!("fd00:244:0:{i:x}::/64"));
                    pod_gateways.push(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, i16, 0, 0, 0, 1)));
                }
                NodePlan {
                    name: format!("node{i}"),
                    netns: format!("{PREFIX}node{i}"),
                    bridge_port: format!("n{i}"),
                    lan_v4: stack.v4().then(|| Ipv4Addr::new(10, 77, 0, 10 + i8)),
                    lan_v6: stack
                        .v6()
                        .then(|| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10 + i16)),
                    pod_cidrs,
                    pod_gateways,
                }
            })
            .collect();
        let (service_cidrs, cluster_cidrs, pool) = match stack {
            Stack::Ipv4 => (
                "10.96.0.0/16".to_string(),
                "10.244.0.0/16".to_string(),
                vec!["10.77.0.200-10.77.0.250".to_string()],
            ),
            Stack::Ipv6 => (
                "fd00:96::/112".to_string(),
                "fd00:244::/48".to_string(),
                vec!["fd77::200-fd77::250".to_string()],
            ),
            Stack::DualStack => (
                "10.96.0.0/16,fd00:96::/112".to_string(),
                "10.244.0.0/16,fd00:244::/48".to_string(),
                vec![
                    "10.77.0.200-10.77.0.250".to_string(),
                    "fd77::200-fd77::250".to_string(),
                ],
            ),
        };
        LabPlan {
            stack,
            proxy_mode,
            nodes,
            host_ip: Ipv4Addr::new(10, 77, 255, 1),
            cp_uplink_ip: Ipv4Addr::new(10, 77, 255, 2),
            cp_lan_v4: Ipv4Addr::new(10, 77, 0, 2),
            cp_lan_v6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2),
            client_v4: stack.v4().then(|| Ipv4Addr::new(10, 77, 0, 100)),
            client_v6: stack
                .v6()
                .then(|| Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100)),
            service_cidrs,
            cluster_cidrs,
            pool,
            state_dir,
            bin_dir: None,
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes
            .iter()
            .find(|n| n.name == name || n.netns == name)
    }

    /// The API server as the host sees it.
    pub fn host_server(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.cp_uplink_ip)
    }

    /// The API server as nodes see it (on the LAN; over IPv6 in an IPv6-only lab).
    pub fn lan_server(&self) -> String {
        match self.stack {
            Stack::Ipv6 => format!("https://[{}]:{APISERVER_PORT}", self.cp_lan_v6),
            _ => format!("https://{}:{APISERVER_PORT}", self.cp_lan_v4),
        }
    }

    /// Every network namespace of the lab, control plane first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![CP_NS.to_string(), CLIENT_NS.to_string()];
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v
    }

    pub fn plan_file(&self) -> PathBuf {
        self.state_dir.join("lab.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_on_the_lan() {
        let p = LabPlan::new(3, Stack::DualStack, ProxyMode::Iptables, "/tmp/x".into());
        assert_eq!(p.nodes.len(), 3);
        let v4: Vec<Ipv4Addr> = p.nodes.iter().filter_map(|n| n.lan_v4).collect();
        assert_eq!(
            v4,
            [
                Ipv4Addr::new(10, 77, 0, 11),
                Ipv4Addr::new(10, 77, 0, 12),
                Ipv4Addr::new(10, 77, 0, 13)
            ]
        );
        assert_eq!(p.nodes[1].pod_cidrs, ["10.244.2.0/24", "fd00:244:0:2::/64"]);
        assert_eq!(p.nodes[1].lan_v6.unwrap().to_string(), "fd77::12");
        assert_eq!(p.client_v6.unwrap().to_string(), "fd77::100");
        assert!(p.namespaces().iter().all(|n| n.starts_with(PREFIX)));
        assert_eq!(p.pool.len(), 2);
    }

    #[test]
    fn single_stack_plans_carry_one_family() {
        let p = LabPlan::new(2, Stack::Ipv6, ProxyMode::Nftables, "/tmp/x".into());
        assert!(
            p.nodes
                .iter()
                .all(|n| n.lan_v4.is_none() && n.lan_v6.is_some())
        );
        assert_eq!(p.nodes[0].pod_cidrs, ["fd00:244:0:1::/64"]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<LabPlan>(&json).unwrap(), p);
    }
}
