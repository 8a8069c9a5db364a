//! The Nodes as the speaker reads them: a Node's InternalIPs, and the gossip seeds (the
//! other Nodes that run a speaker).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node as K8sNode;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::inputs::SERVICE_NAME_LABEL;

/// A Node's InternalIPs, in the order the Node lists them.
pub(super) fn internal_ips(node: &K8sNode) -> impl Iterator<Item = IpAddr> + '_ {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
}

/// The first IPv4 and the first IPv6 address of a list.
pub(super) fn first_per_family(
    ips: impl Iterator<Item = IpAddr>,
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let (mut v4, mut v6) = (None, None);
    for ip in ips {
        match ip {
            IpAddr::V4(a) => {
                v4.get_or_insert(a);
            }
            IpAddr::V6(a) => {
                v6.get_or_insert(a);
            }
        }
    }
    (v4, v6)
}

/// The Nodes that run a speaker, from the EndpointSlices of the speakers' Service
/// (`namespace`, `name`): every endpoint, ready or not (a starting speaker must be found
/// too). `None` when the Service has no endpoints (it does not exist, as in the lab): then
/// any Node may run one. `slices` may hold others too (at start-up, all of them).
pub(super) fn speaker_nodes<'a>(
    slices: impl IntoIterator<Item = &'a Arc<EndpointSlice>>,
    namespace: &str,
    name: &str,
) -> Option<BTreeSet<String>> {
    let nodes: BTreeSet<String> = slices
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == name)
        })
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter_map(|e| e.node_name.clone())
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// Gossip seeds: every other Node that runs a speaker (all of them when `speakers` is
/// `None`), at its InternalIP of our family and the gossip port.
pub(super) fn seeds(
    nodes: &[Arc<K8sNode>],
    speakers: Option<&BTreeSet<String>>,
    me: &str,
    family_v4: bool,
    port: u16,
) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            if name == me || speakers.is_some_and(|s| !s.contains(&name)) {
                return None;
            }
            let ip = internal_ips(n).find(|ip| ip.is_ipv4() == family_v4)?;
            Some((name, SocketAddr::new(ip, port)))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nodes_that_run_a_speaker_are_gossip_seeds() {
        let node = |name: &str, ip: &str| -> Arc<K8sNode> {
            Arc::new(
                serde_json::from_value(serde_json::json!({"metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
                .unwrap(),
            )
        };
        let slice = |ns: &str, svc: &str, nodes: &[(&str, bool)]| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{svc}-x"), "namespace": ns,
                        "labels": {SERVICE_NAME_LABEL: svc}},
                    "addressType": "IPv4",
                    "endpoints": nodes.iter().map(|(n, ready)| serde_json::json!({
                        "addresses": ["10.0.0.1"], "nodeName": n,
                        "conditions": {"ready": ready}})).collect::<Vec<_>>()}))
                .unwrap(),
            )
        };
        let nodes = [
            node("a", "10.0.0.1"),
            node("b", "10.0.0.2"),
            node("cp", "10.0.0.9"),
            node("c", "10.0.0.3"),
        ];
        let slices = [
            // A starting speaker (not ready) is a seed too.
            slice(
                "ferrolb-system",
                "ferrolb-speaker-metrics",
                &[("a", true), ("b", false)],
            ),
            slice("ferrolb-system", "ferrolb-speaker-metrics", &[("c", true)]),
            // The same name elsewhere, and another Service here, say nothing.
            slice("default", "ferrolb-speaker-metrics", &[("cp", true)]),
            slice("ferrolb-system", "other", &[("cp", true)]),
        ];
        let speakers = speaker_nodes(&slices, "ferrolb-system", "ferrolb-speaker-metrics");
        let names = |v: Vec<(String, SocketAddr)>| -> Vec<String> {
            v.into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(
            names(seeds(&nodes, speakers.as_ref(), "a", true, 7946)),
            ["b", "c"]
        );
        // No endpoints (no such Service, as in the lab): every other Node.
        let none = speaker_nodes(&slices[2..], "ferrolb-system", "ferrolb-speaker-metrics");
        assert_eq!(none, None);
        assert_eq!(
            names(seeds(&nodes, none.as_ref(), "a", true, 7946)),
            ["b", "c", "cp"]
        );
        let s = seeds(&nodes, speakers.as_ref(), "a", true, 7946);
        assert_eq!(s[0].1, "10.0.0.2:7946".parse().unwrap());
    }

    #[test]
    fn the_node_address_per_family_is_the_first_listed() {
        let ips = ["fd00::11", "10.0.0.11", "10.0.0.12", "fd00::12"]
            .map(|s| s.parse::<IpAddr>().unwrap());
        assert_eq!(
            first_per_family(ips.into_iter()),
            (
                Some("10.0.0.11".parse().unwrap()),
                Some("fd00::11".parse().unwrap())
            )
        );
        assert_eq!(first_per_family(std::iter::empty()), (None, None));
    }
}
