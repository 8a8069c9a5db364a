//! The `IPPool` custom resource (`ferrolb.io/v1alpha1`, cluster-scoped, short name `ipp`).
//!
//! Validation that the API server can do itself lives in the schema as CEL rules (see
//! [`crate::schema`]); the types here only describe the shape.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

/// A set of addresses the controller may hand to Services of `type: LoadBalancer`.
// clippy reads the repeated `type_ = ...` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrolb.io",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    category = "ferrolb",
    status = "IPPoolStatus",
    derive = "PartialEq",
    doc = "A pool of addresses that ferrolb allocates to Services of type LoadBalancer.",
    printcolumn(name = "Addresses", type_ = "string", json_path = ".spec.addresses"),
    printcolumn(
        name = "Used/Total",
        type_ = "string",
        json_path = ".status.usage",
        description = "used/total addresses per family"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Conflict",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Conflict\")].status"
    ),
    printcolumn(
        name = "Priority",
        type_ = "integer",
        json_path = ".spec.priority",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// CIDRs (`10.0.0.0/24`), single IPs (`10.0.0.7`) or inclusive ranges
    /// (`10.0.0.10-10.0.0.20`); IPv4 and IPv6 may be mixed.
    #[schemars(schema_with = "schema::addresses")]
    pub addresses: Vec<String>,

    /// When false, only Services that name this pool (`ferrolb.io/ip-pool`) or request one
    /// of its addresses get addresses from it.
    #[serde(default = "default_true")]
    pub auto_assign: bool,

    /// Skip IPv4 addresses ending in .0 and .255, which some clients mishandle. (IPv6 CIDR
    /// entries up to /126 never hand out their all-zero host, the Subnet-Router anycast
    /// address, whatever this says.)
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,

    /// Drain: no new allocations; Services that hold an address keep it.
    #[serde(default)]
    pub disabled: bool,

    /// Lower is tried first; pools of equal priority are tried in name order.
    #[serde(default)]
    pub priority: i32,

    /// Services this pool serves; unset or empty selects every Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub service_selector: Option<LabelSelector>,

    /// Namespaces whose Services this pool serves; unset or empty selects every Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub namespace_selector: Option<LabelSelector>,

    /// Who carries traffic for the address once it reaches a node.
    #[serde(default)]
    pub forwarding: Forwarding,

    /// Layer-2 announcement settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2Config>,
}

fn default_true() -> bool {
    true
}

/// How traffic to an allocated address reaches the Service's endpoints.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Forwarding {
    /// kube-proxy handles the address (`ipMode: VIP`).
    #[default]
    KubeProxy,
    /// The speaker forwards to the Service's NodePort (`ipMode: Proxy`).
    NodePort,
}

impl Forwarding {
    /// The `status.loadBalancer.ingress[].ipMode` that goes with this forwarding.
    pub fn ip_mode(self) -> &'static str {
        match self {
            Forwarding::KubeProxy => "VIP",
            Forwarding::NodePort => "Proxy",
        }
    }
}

/// Which nodes may announce the pool's addresses, and on which interfaces.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2Config {
    /// Nodes allowed to announce; unset or empty allows every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::label_selector")]
    pub node_selector: Option<LabelSelector>,

    /// Regular expressions for interface names. Empty: the interface whose subnet holds the
    /// address, else the one with the default route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::interfaces")]
    pub interfaces: Vec<String>,
}

/// Written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// IPv4 capacity and use (absent when the pool has no IPv4 addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    /// IPv6 capacity and use (absent when the pool has no IPv6 addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    /// `used/total` per family, for `kubectl get ipp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    /// `Ready` and `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// Exact counts as decimal strings: an IPv6 /64 holds 2^64 addresses, more than any JSON
/// number can carry exactly.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    #[schemars(schema_with = "schema::decimal")]
    pub total: String,
    #[schemars(schema_with = "schema::decimal")]
    pub used: String,
}

impl IPPoolStatus {
    /// The printer-column summary, e.g. `v4 3/51, v6 1/18446744073709551616`.
    pub fn usage_summary(&self) -> Option<String> {
        let parts: Vec<String> = [("v4", &self.ipv4), ("v6", &self.ipv6)]
            .into_iter()
            .filter_map(|(f, u)| u.as_ref().map(|u| format!("{f} {}/{}", u.used, u.total)))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_fields_are_omitted() {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["10.0.0.0/24"]
        }))
        .unwrap();
        assert!(spec.auto_assign);
        assert!(!spec.avoid_buggy_ips);
        assert!(!spec.disabled);
        assert_eq!(spec.priority, 0);
        assert_eq!(spec.forwarding, Forwarding::KubeProxy);
        assert_eq!(spec.l2, None);
    }

    #[test]
    fn forwarding_maps_to_ip_mode() {
        assert_eq!(Forwarding::KubeProxy.ip_mode(), "VIP");
        assert_eq!(Forwarding::NodePort.ip_mode(), "Proxy");
    }

    #[test]
    fn usage_summary_names_each_present_family() {
        let mut s = IPPoolStatus::default();
        assert_eq!(s.usage_summary(), None);
        s.ipv4 = Some(FamilyUsage {
            total: "51".into(),
            used: "3".into(),
        });
        assert_eq!(s.usage_summary().as_deref(), Some("v4 3/51"));
        s.ipv6 = Some(FamilyUsage {
            total: "18446744073709551616".into(),
            used: "1".into(),
        });
        assert_eq!(
            s.usage_summary().as_deref(),
            Some("v4 3/51, v6 1/18446744073709551616")
        );
    }
}
