//! From Kubernetes objects to the election's [`Inputs`](crate::election::Inputs): Nodes,
//! LoadBalancer Services with their EndpointSlices, IPPools. Pure: objects in, values out;
//! the watch loop that gathers the objects lives elsewhere.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::names::is_our_class;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::election::{EndpointState, Interface, Node, Service, TrafficPolicy};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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

/// Counts a Service's endpoints per node from its EndpointSlices. Per the EndpointSlice API,
/// an unset `ready` means ready, an unset `serving` means what `ready` says, and an unset
/// `terminating` means not terminating.
pub fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> (BTreeMap<String, EndpointState>, bool) {
    let mut per_node: BTreeMap<String, EndpointState> = BTreeMap::new();
    let mut anywhere = false;
    for slice in slices {
        for ep in slice.endpoints.iter().flatten() {
            let cond = ep.conditions.clone().unwrap_or_default();
            let ready = cond.ready.unwrap_or(true);
            let serving = cond.serving.unwrap_or(ready);
            let terminating = cond.terminating.unwrap_or(false);
            let serving_not_terminating = serving && !terminating;
            if !(ready || serving_not_terminating) {
                continue;
            }
            anywhere = true;
            if let Some(node) = &ep.node_name {
                let e = per_node.entry(node.clone()).or_default();
                if ready {
                    e.ready += 1;
                } else {
                    e.serving_not_terminating += 1;
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
    let ips: Vec<IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
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
    Some(Service {
        namespace,
        name,
        ips,
        external_traffic_policy: match spec.external_traffic_policy.as_deref() {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        },
        endpoints,
        any_ready_endpoint,
    })
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
    fn endpoint_conditions_follow_the_api_defaults() {
        let s = slice(
            "web",
            json!([
                {"addresses": ["10.244.1.2"], "nodeName": "n1"},
                {"addresses": ["10.244.1.3"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.2"], "nodeName": "n2", "conditions": {"ready": false}},
                {"addresses": ["10.244.3.2"], "nodeName": "n3",
                 "conditions": {"ready": false, "serving": true, "terminating": false}},
                {"addresses": ["10.244.4.2"], "nodeName": "n4",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
        );
        let (per_node, anywhere) = endpoints([&s]);
        assert!(anywhere);
        assert_eq!(
            per_node.get("n1"),
            Some(&EndpointState {
                ready: 2,
                serving_not_terminating: 0
            })
        );
        assert_eq!(per_node.get("n2"), None);
        assert_eq!(
            per_node.get("n3"),
            Some(&EndpointState {
                ready: 0,
                serving_not_terminating: 1
            })
        );
        assert_eq!(
            per_node.get("n4"),
            None,
            "terminating endpoints do not count"
        );
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
}
