//! What a Service asks of ferrolb, read from its spec and annotations. Pure: a Service (and
//! its Namespace's labels) in, a [`ServiceRequest`] or the reason it is not one out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::Family;
use ferrolb_crds::names::{
    ANNOTATION_ALLOW_SHARED_IP, ANNOTATION_IP_POOL, ANNOTATION_LOAD_BALANCER_IPS, is_our_class,
};
pub use ferrolb_crds::service::{ingress, status_ips};
use k8s_openapi::api::core::v1::Service;

use crate::Error;
use crate::allocator::{FamilyPolicy, PortKey, ServiceKey, ServiceRequest, Sharing};

/// Does ferrolb handle this Service at all?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Ours: allocate.
    Ours,
    /// Not ours, or no longer ours: hold nothing for it (and say why, for the event).
    NotOurs(String),
    /// Another class: never touched, not even to release.
    OtherClass,
}

/// Decides whether ferrolb handles `svc`. `default_class` makes class-less LoadBalancer
/// Services ours.
pub fn handling(svc: &Service, default_class: bool) -> Handling {
    let Some(spec) = svc.spec.as_ref() else {
        return Handling::NotOurs("the Service has no spec".into());
    };
    if !is_our_class(spec.load_balancer_class.as_deref(), default_class) {
        return Handling::OtherClass;
    }
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return Handling::NotOurs(format!(
            "the Service's type is {}",
            spec.type_.as_deref().unwrap_or("ClusterIP")
        ));
    }
    if spec.ports.as_ref().is_none_or(|p| p.is_empty()) {
        return Handling::NotOurs("the Service has no ports".into());
    }
    Handling::Ours
}

/// Reads the request out of a Service that is ours.
pub fn request(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<ServiceRequest, Error> {
    let meta = &svc.metadata;
    let key = ServiceKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    );
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();

    let families: Vec<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    let policy = match spec.ip_family_policy.as_deref() {
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        _ => FamilyPolicy::SingleStack,
    };

    let from_annotation = annotations.get(ANNOTATION_LOAD_BALANCER_IPS);
    let from_spec = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty());
    // Errors name the field the request came from.
    let (requested, field): (Vec<IpAddr>, &'static str) = match (from_annotation, from_spec) {
        (Some(_), Some(_)) => {
            return Err(Error::TwoRequestFields {
                annotation: ANNOTATION_LOAD_BALANCER_IPS,
            });
        }
        (Some(list), None) => (
            parse_ips(list, ANNOTATION_LOAD_BALANCER_IPS)?,
            ANNOTATION_LOAD_BALANCER_IPS,
        ),
        (None, Some(one)) => (
            parse_ips(one, SPEC_LOAD_BALANCER_IP)?,
            SPEC_LOAD_BALANCER_IP,
        ),
        (None, None) => (Vec::new(), ANNOTATION_LOAD_BALANCER_IPS),
    };
    let mut seen = BTreeSet::new();
    for ip in &requested {
        if !seen.insert(Family::of(*ip)) {
            return Err(Error::SecondAddress {
                family: Family::of(*ip),
                field,
            });
        }
    }

    let pool = annotations
        .get(ANNOTATION_IP_POOL)
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());

    let sharing = annotations
        .get(ANNOTATION_ALLOW_SHARED_IP)
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(|k| Sharing {
            key: k.to_string(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some(PortKey {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect(),
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.clone().unwrap_or_default(),
        });

    Ok(ServiceRequest {
        key,
        labels: meta.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        families,
        policy,
        requested,
        pool,
        sharing,
    })
}

/// The Service field that requests one address (deprecated by Kubernetes, still honoured).
const SPEC_LOAD_BALANCER_IP: &str = "spec.loadBalancerIP";

fn parse_ips(list: &str, field: &'static str) -> Result<Vec<IpAddr>, Error> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>().map_err(|_| Error::NotAnIp {
                value: s.to_string(),
                field,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn lb(extra_spec: serde_json::Value, annotations: serde_json::Value) -> Service {
        let mut spec = json!({
            "type": "LoadBalancer",
            "ports": [{"port": 80, "protocol": "TCP"}],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        service(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
            "spec": spec,
        }))
    }

    #[test]
    fn handles_our_class_and_classless_services_only() {
        assert_eq!(handling(&lb(json!({}), json!({})), true), Handling::Ours);
        assert_eq!(
            handling(&lb(json!({}), json!({})), false),
            Handling::OtherClass
        );
        let ours = lb(json!({"loadBalancerClass": "ferrolb.io/l2"}), json!({}));
        assert_eq!(handling(&ours, false), Handling::Ours);
        let theirs = lb(json!({"loadBalancerClass": "example.com/other"}), json!({}));
        assert_eq!(handling(&theirs, true), Handling::OtherClass);
        let cluster_ip = lb(json!({"type": "ClusterIP"}), json!({}));
        assert!(
            matches!(handling(&cluster_ip, true), Handling::NotOurs(m) if m.contains("ClusterIP"))
        );
        let no_ports = lb(json!({"ports": []}), json!({}));
        assert!(matches!(handling(&no_ports, true), Handling::NotOurs(_)));
    }

    #[test]
    fn reads_requests_pools_sharing_and_families() {
        let s = lb(
            json!({"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
                   "externalTrafficPolicy": "Local", "selector": {"app": "web"}}),
            json!({
                "ferrolb.io/loadBalancerIPs": "10.0.0.5, 2001:db8::5",
                "ferrolb.io/ip-pool": "lan",
                "ferrolb.io/allow-shared-ip": "front",
            }),
        );
        let r = request(&s, &BTreeMap::new()).unwrap();
        assert_eq!(r.key, ServiceKey::new("shop", "web"));
        assert_eq!(r.families, [Family::V6, Family::V4]);
        assert_eq!(r.policy, FamilyPolicy::RequireDualStack);
        assert_eq!(r.requested.len(), 2);
        assert_eq!(r.pool.as_deref(), Some("lan"));
        let sh = r.sharing.unwrap();
        assert_eq!(sh.key, "front");
        assert!(sh.local);
        assert_eq!(sh.selector.get("app").map(String::as_str), Some("web"));
        assert_eq!(sh.ports.len(), 1);
    }

    #[test]
    fn refuses_bad_requests_with_a_reason() {
        let both = lb(
            json!({"loadBalancerIP": "10.0.0.1"}),
            json!({"ferrolb.io/loadBalancerIPs": "10.0.0.2"}),
        );
        assert!(
            request(&both, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("both")
        );
        let garbage = lb(
            json!({}),
            json!({"ferrolb.io/loadBalancerIPs": "10.0.0.300"}),
        );
        assert!(
            request(&garbage, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("10.0.0.300")
        );
        let two_v4 = lb(
            json!({}),
            json!({"ferrolb.io/loadBalancerIPs": "10.0.0.1,10.0.0.2"}),
        );
        assert!(
            request(&two_v4, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("more than one IPv4")
        );
        let spec_ip = lb(json!({"loadBalancerIP": "10.0.0.9"}), json!({}));
        assert_eq!(
            request(&spec_ip, &BTreeMap::new()).unwrap().requested,
            ["10.0.0.9".parse::<IpAddr>().unwrap()]
        );
        // A bad spec.loadBalancerIP is reported under its own name, not the annotation's.
        for bad in ["10.0.0.300", "10.0.0.1,10.0.0.2"] {
            let e = request(
                &lb(json!({"loadBalancerIP": bad}), json!({})),
                &BTreeMap::new(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("spec.loadBalancerIP"), "{e}");
            assert!(!e.contains("ferrolb.io/loadBalancerIPs"), "{e}");
        }
    }

    #[test]
    fn status_ips_ignores_hostnames_and_garbage() {
        let s = service(json!({
            "metadata": {"name": "a"},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}, {"hostname": "x.example"}, {"ip": "nope"}]}}
        }));
        assert_eq!(status_ips(&s), ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
