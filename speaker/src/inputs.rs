//! From Kubernetes objects to the election's [`Inputs`](crate::election::Inputs): Nodes,
//! LoadBalancer Services with their EndpointSlices, IPPools. Pure: objects in, values out;
//! the watch loop that gathers the objects lives elsewhere.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::IPPool;
use ferrolb_crds::names::is_our_class;
use k8s_openapi::api::core::v1::{
    Node as K8sNode, NodeCondition, NodeStatus, Service as K8sService,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use crate::election::{
    EndpointState, Inputs, Interface, Node, Pool, Protocol, Service, ServicePort, TrafficPolicy,
};
use crate::membership::{Member, Standing};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The field selector of the Service watch: the speaker has nothing to do with a Service
/// of any other type (the API server serves `spec.type` selectors since Kubernetes 1.31).
pub const LOAD_BALANCERS: &str = "spec.type=LoadBalancer";

/// The Node conditions the speaker reads.
const NODE_CONDITIONS: [&str; 2] = ["Ready", "NetworkUnavailable"];

/// What the speaker keeps of a Node: its name, labels and the metadata the cache needs, its
/// InternalIP addresses (gossip seeds) and the type and status of the conditions
/// [`node`] reads. Images, capacity, node info, annotations (often large: CNI plugins keep
/// their state there) and the heartbeat times that change on every status update are
/// dropped as they arrive.
pub fn slim_node(n: &mut K8sNode) {
    ferrolb_crds::cache::slim(n);
    n.metadata.annotations = None;
    n.spec = None;
    n.status = n.status.take().map(|st| NodeStatus {
        addresses: st
            .addresses
            .map(|a| a.into_iter().filter(|a| a.type_ == "InternalIP").collect()),
        conditions: st.conditions.map(|cs| {
            cs.into_iter()
                .filter(|c| NODE_CONDITIONS.contains(&c.type_.as_str()))
                .map(|c| NodeCondition {
                    type_: c.type_,
                    status: c.status,
                    ..NodeCondition::default()
                })
                .collect()
        }),
        ..NodeStatus::default()
    });
}

/// What the speaker keeps of an EndpointSlice: the label naming its Service and, per
/// endpoint, the node and the conditions [`endpoints`] reads. Addresses, ports, hints and
/// target references are dropped as they arrive. Slices of Services that are not
/// LoadBalancers are kept in this form too: nothing on a slice says its Service's type,
/// and a Service that becomes a LoadBalancer needs its slices at once.
pub fn slim_slice(s: &mut EndpointSlice) {
    ferrolb_crds::cache::slim(s);
    s.metadata.annotations = None;
    if let Some(labels) = s.metadata.labels.as_mut() {
        labels.retain(|k, _| k == SERVICE_NAME_LABEL);
    }
    s.ports = None;
    for ep in s.endpoints.iter_mut().flatten() {
        *ep = Endpoint {
            addresses: Vec::new(),
            conditions: ep.conditions.take(),
            node_name: ep.node_name.take(),
            ..Endpoint::default()
        };
    }
}

fn condition_true(node: &K8sNode, type_: &str) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// A Node as the election sees it. `interfaces` are known only for the local node (the
/// speaker reads them from the kernel); for other nodes they come from gossip.
pub fn node(n: &K8sNode, interfaces: Vec<Interface>) -> Node {
    Node {
        name: n.metadata.name.clone().unwrap_or_default(),
        labels: n.metadata.labels.clone().unwrap_or_default(),
        ready: condition_true(n, "Ready"),
        network_unavailable: condition_true(n, "NetworkUnavailable"),
        interfaces,
    }
}

/// Counts a Service's usable endpoints per node from its EndpointSlices, reading their
/// conditions as kube-proxy does: an unset `ready` or `serving` means true, an unset
/// `terminating` means false; an endpoint is usable when it is ready, or (when nothing
/// ready is left) serving and terminating. Also says whether any endpoint anywhere is
/// usable, on a known node or not.
pub fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> (BTreeMap<String, EndpointState>, bool) {
    let mut per_node: BTreeMap<String, EndpointState> = BTreeMap::new();
    let mut anywhere = false;
    for slice in slices {
        for ep in slice.endpoints.iter().flatten() {
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let draining = !ready && serving && terminating;
            if !(ready || draining) {
                continue;
            }
            anywhere = true;
            if let Some(node) = &ep.node_name {
                let e = per_node.entry(node.clone()).or_default();
                if ready {
                    e.ready += 1;
                } else {
                    e.serving_terminating += 1;
                }
            }
        }
    }
    (per_node, anywhere)
}

/// A LoadBalancer Service of ours that holds IPs, with its endpoints; `None` for anything
/// the speaker has nothing to announce for.
pub fn service<'a>(
    svc: &K8sService,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    default_class: bool,
) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || !is_our_class(spec.load_balancer_class.as_deref(), default_class)
    {
        return None;
    }
    let ips: Vec<IpAddr> = ferrolb_crds::service::status_ips(svc);
    if ips.is_empty() {
        return None;
    }
    let name = svc.metadata.name.clone().unwrap_or_default();
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let own = slices.into_iter().filter(|s| {
        s.metadata.namespace.as_deref() == Some(namespace.as_str())
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&name)
    });
    let (endpoints, any_ready_endpoint) = endpoints(own);
    let proxied = ferrolb_crds::service::ingress(svc)
        .filter(|i| i.ip_mode.as_deref() == Some("Proxy"))
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                // An unknown protocol cannot be forwarded; the API server admits only these.
                protocol: Protocol::parse(p.protocol.as_deref())?,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect();
    Some(Service {
        namespace,
        name,
        ips,
        proxied,
        ports,
        source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        external_traffic_policy: match spec.external_traffic_policy.as_deref() {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        },
        endpoints,
        any_ready_endpoint,
    })
}

/// An IPPool as the election sees it; the entries that did not parse go to `errors`, one
/// sentence each.
pub fn pool(p: &IPPool, errors: &mut Vec<String>) -> Pool {
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    let (pool, errs) = Pool::from_spec(name, created, &p.spec);
    errors.extend(errs.into_iter().map(|e| format!("pool {name}: {e}")));
    pool
}

/// The election's inputs from the cluster's objects and the live gossip members. Every
/// node's interfaces, this node's included, come from gossip, so that every speaker
/// elects from the same data. Returns the inputs and the pool entries that did not parse.
pub fn gather<'a>(
    nodes: impl IntoIterator<Item = &'a K8sNode>,
    services: impl IntoIterator<Item = &'a K8sService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pools: impl IntoIterator<Item = &'a IPPool>,
    members: &BTreeMap<String, Member>,
    default_class: bool,
) -> (Inputs, Vec<String>) {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let nodes = nodes
        .into_iter()
        .map(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            let ifaces = members
                .get(name)
                .map(|m| m.interfaces.clone())
                .unwrap_or_default();
            node(n, ifaces)
        })
        .collect();
    let services = services
        .into_iter()
        .filter_map(|svc| {
            let key = (
                svc.metadata.namespace.as_deref().unwrap_or_default(),
                svc.metadata.name.as_deref().unwrap_or_default(),
            );
            let own = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
            service(svc, own.iter().copied(), default_class)
        })
        .collect();
    let mut errors = Vec::new();
    let pools = pools.into_iter().map(|p| pool(p, &mut errors)).collect();
    (
        Inputs {
            nodes,
            members: members.keys().cloned().collect(),
            standing: members
                .iter()
                .filter(|(_, m)| m.standing != Standing::Ready)
                .map(|(n, m)| (n.clone(), m.standing))
                .collect(),
            pools,
            services,
        },
        errors,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(svc: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn lb(extra: serde_json::Value) -> K8sService {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.200"}, {"hostname": "x"}]}}
        });
        for (k, val) in extra.as_object().unwrap() {
            v["spec"][k] = val.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    /// A Node as a kubelet reports it, with the bulk the speaker never reads.
    fn kubelet_node() -> K8sNode {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}, "resourceVersion": "77",
                "annotations": {"flannel.alpha.coreos.com/backend-data": "x".repeat(2000)}},
            "spec": {"podCIDR": "10.244.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.168.1.11"},
                              {"type": "Hostname", "address": "n1"},
                              {"type": "InternalIP", "address": "fd00::11"}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                     "reason": "KubeletReady", "message": "kubelet is posting ready status"},
                    {"type": "NetworkUnavailable", "status": "False"}
                ],
                "images": (0..50).map(|i| json!({"names": [format!("registry.example/image-{i}:v1")], "sizeBytes": 1000})).collect::<Vec<_>>(),
                "capacity": {"cpu": "8", "memory": "32Gi"},
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6",
                    "osImage": "Debian", "containerRuntimeVersion": "containerd://2", "kubeletVersion": "v1.36.3",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_slim_node_reads_the_same_and_keeps_a_fraction_of_the_bytes() {
        let full = kubelet_node();
        let mut slim = full.clone();
        slim_node(&mut slim);
        assert_eq!(node(&slim, vec![]), node(&full, vec![]));
        let ips = |n: &K8sNode| -> Vec<String> {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ == "InternalIP")
                .map(|a| a.address)
                .collect()
        };
        assert_eq!(ips(&slim), ips(&full), "the gossip seeds' addresses stay");
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("77"));
        let size = |n: &K8sNode| serde_json::to_vec(n).unwrap().len();
        assert!(
            size(&slim) * 10 < size(&full),
            "{} of {} bytes",
            size(&slim),
            size(&full)
        );
        // Only the two conditions read, without their heartbeat times.
        let conds = slim.status.unwrap().conditions.unwrap();
        assert_eq!(conds.len(), 2);
        assert!(
            conds
                .iter()
                .all(|c| c.last_heartbeat_time.is_none() && c.message.is_none())
        );
    }

    #[test]
    fn a_slim_slice_counts_the_same_endpoints() {
        let full: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web", "app": "web",
                           "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1", "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}, "zone": "a"},
                {"addresses": ["10.244.2.5"], "nodeName": "n2",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.3.5"], "nodeName": "n3", "conditions": {"ready": false}}
            ]
        }))
        .unwrap();
        let mut slim = full.clone();
        slim_slice(&mut slim);
        assert_eq!(endpoints([&slim]), endpoints([&full]));
        assert_eq!(
            slim.metadata
                .labels
                .as_ref()
                .map(|l| l.keys().cloned().collect::<Vec<_>>()),
            Some(vec![SERVICE_NAME_LABEL.to_string()])
        );
        let svc = lb(json!({}));
        assert_eq!(
            service(&svc, [&slim], true).map(|s| s.endpoints),
            service(&svc, [&full], true).map(|s| s.endpoints)
        );
        assert!(
            slim.endpoints
                .iter()
                .flatten()
                .all(|e| e.addresses.is_empty() && e.target_ref.is_none())
        );
    }

    #[test]
    fn nodes_read_ready_and_network_unavailable() {
        let n: K8sNode = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "True"}
            ]}
        }))
        .unwrap();
        let e = node(&n, vec![]);
        assert!(e.ready && e.network_unavailable);
        assert_eq!(e.labels.get("zone").map(String::as_str), Some("a"));
        let bare: K8sNode = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
        let e = node(&bare, vec![]);
        assert!(!e.ready && !e.network_unavailable);
    }

    #[test]
    fn endpoint_conditions_are_read_as_kube_proxy_reads_them() {
        let s = slice(
            "web",
            json!([
                {"addresses": ["10.244.1.2"], "nodeName": "n1"},
                {"addresses": ["10.244.1.3"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.2"], "nodeName": "n2", "conditions": {"ready": false}},
                // Not ready and not terminating: kube-proxy does not use it.
                {"addresses": ["10.244.3.2"], "nodeName": "n3",
                 "conditions": {"ready": false, "serving": true, "terminating": false}},
                // Draining: kube-proxy still uses it when nothing ready is left.
                {"addresses": ["10.244.4.2"], "nodeName": "n4",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.244.5.2"], "nodeName": "n5",
                 "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["10.244.6.2"], "nodeName": "n6",
                 "conditions": {"ready": false, "serving": false, "terminating": true}},
            ]),
        );
        let (per_node, anywhere) = endpoints([&s]);
        assert!(anywhere);
        let draining = Some(&EndpointState {
            ready: 0,
            serving_terminating: 1,
        });
        assert_eq!(
            per_node.get("n1"),
            Some(&EndpointState {
                ready: 2,
                serving_terminating: 0
            })
        );
        assert_eq!(per_node.get("n2"), None);
        assert_eq!(per_node.get("n3"), None);
        assert_eq!(per_node.get("n4"), draining);
        assert_eq!(
            per_node.get("n5"),
            draining,
            "an unset serving means serving"
        );
        assert_eq!(per_node.get("n6"), None, "terminating and not serving");

        let only_draining = slice(
            "web",
            json!([{"addresses": ["10.244.4.2"], "nodeName": "n4",
                    "conditions": {"ready": false, "serving": true, "terminating": true}}]),
        );
        let (per_node, anywhere) = endpoints([&only_draining]);
        assert!(anywhere, "a draining endpoint still serves");
        assert!(per_node.get("n4").is_some_and(EndpointState::can_serve));
    }

    #[test]
    fn services_are_ours_only_with_ips_and_only_their_own_slices_count() {
        let mine = slice(
            "web",
            json!([{"addresses": ["10.244.1.2"], "nodeName": "n1"}]),
        );
        let other = slice(
            "db",
            json!([{"addresses": ["10.244.2.2"], "nodeName": "n2"}]),
        );
        let s = service(
            &lb(json!({"externalTrafficPolicy": "Local"})),
            [&mine, &other],
            true,
        )
        .unwrap();
        assert_eq!(s.ips, ["10.0.0.200".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert!(s.serves_on("n1") && !s.serves_on("n2"));

        assert!(
            service(&lb(json!({})), [&mine], false).is_none(),
            "class-less with --default-class=false"
        );
        assert!(
            service(
                &lb(json!({"loadBalancerClass": "example.com/x"})),
                [&mine],
                true
            )
            .is_none()
        );
        assert!(service(&lb(json!({"type": "NodePort"})), [&mine], true).is_none());
        let mut no_ip = lb(json!({}));
        no_ip.status = None;
        assert!(service(&no_ip, [&mine], true).is_none());
    }

    #[test]
    fn gather_takes_interfaces_from_gossip_and_slices_by_service() {
        let node_obj = |name: &str| -> K8sNode {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap()
        };
        let eth0 = Interface {
            name: "eth0".into(),
            up: true,
            subnets: vec![("10.0.0.11".parse().unwrap(), 24)],
            default_route_v4: true,
            default_route_v6: true,
        };
        let members = BTreeMap::from([(
            "n1".to_string(),
            Member {
                standing: crate::membership::Standing::Ready,
                interfaces: vec![eth0.clone()],
            },
        )]);
        let pool: IPPool = serde_json::from_value(json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "lan"},
            "spec": {"addresses": ["10.0.0.200-10.0.0.250", "not-an-address"]}
        }))
        .unwrap();
        let web = lb(json!({}));
        let mine = slice(
            "web",
            json!([{"addresses": ["10.244.1.2"], "nodeName": "n1"}]),
        );
        let other = slice(
            "db",
            json!([{"addresses": ["10.244.2.2"], "nodeName": "n2"}]),
        );
        let (inputs, errors) = gather(
            [&node_obj("n1"), &node_obj("n2")],
            [&web],
            [&other, &mine],
            [&pool],
            &members,
            true,
        );
        assert_eq!(inputs.nodes[0].interfaces, vec![eth0]);
        assert!(inputs.nodes[1].interfaces.is_empty(), "n2 is not a member");
        assert_eq!(inputs.members.len(), 1);
        assert_eq!(inputs.services.len(), 1);
        assert!(inputs.services[0].serves_on("n1") && !inputs.services[0].serves_on("n2"));
        assert_eq!(inputs.pools[0].blocks.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("pool lan:"));
    }

    #[test]
    fn proxied_ips_ports_and_source_ranges_come_from_the_service() {
        let mut svc: K8sService = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "LoadBalancer",
                     "loadBalancerSourceRanges": ["192.0.2.0/24", " 2001:db8::/32"],
                     "ports": [
                        {"port": 80, "nodePort": 30080},
                        {"port": 53, "protocol": "UDP", "nodePort": 30053},
                        {"port": 9, "protocol": "SCTP"}]},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "10.0.0.200", "ipMode": "Proxy"}, {"ip": "fd00::200", "ipMode": "VIP"}]}}
        }))
        .unwrap();
        let s = service(&svc, [], true).unwrap();
        assert_eq!(
            s.proxied,
            std::collections::BTreeSet::from(["10.0.0.200".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(
            s.ports,
            vec![
                ServicePort {
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080)
                },
                ServicePort {
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: Some(30053)
                },
                ServicePort {
                    protocol: Protocol::Sctp,
                    port: 9,
                    node_port: None
                },
            ]
        );
        assert_eq!(s.source_ranges, ["192.0.2.0/24", " 2001:db8::/32"]);
        assert!(s.has_node_port());

        if let Some(spec) = svc.spec.as_mut() {
            for p in spec.ports.iter_mut().flatten() {
                p.node_port = None;
            }
        }
        assert!(!service(&svc, [], true).unwrap().has_node_port());
    }
}
