//! Reading back what ferrolb writes on a Service: the addresses in its status and its
//! conditions. The controller and the speaker both read them.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The entries of `status.loadBalancer.ingress`.
pub fn ingress(svc: &Service) -> impl Iterator<Item = &LoadBalancerIngress> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
}

/// The addresses in `status.loadBalancer.ingress`, as written before (ignoring entries
/// that are hostnames or not IPs).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    ingress(svc)
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The Service's condition of type `type_`, if it has one.
pub fn condition<'a>(svc: &'a Service, type_: &str) -> Option<&'a Condition> {
    svc.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}
