//! The names users type and read: API group, class, annotations, condition types and
//! reasons, event reasons, field managers. Both binaries take them from here so a name
//! is spelled once.

/// API group of ferrolb's custom resources.
pub const GROUP: &str = "ferrolb.io";
/// The `spec.loadBalancerClass` ferrolb handles.
pub const LOAD_BALANCER_CLASS: &str = "ferrolb.io/l2";

/// Is a Service with this `spec.loadBalancerClass` ferrolb's? Class-less Services are, unless
/// the binary runs with `--default-class=false`; other classes never are.
pub fn is_our_class(class: Option<&str>, default_class: bool) -> bool {
    match class {
        Some(c) => c == LOAD_BALANCER_CLASS,
        None => default_class,
    }
}

/// Requested IPs, `"ip[,ip]"`, at most one per family.
pub const ANNOTATION_LOAD_BALANCER_IPS: &str = "ferrolb.io/loadBalancerIPs";
/// Allocate from this pool only (works with `autoAssign: false`).
pub const ANNOTATION_IP_POOL: &str = "ferrolb.io/ip-pool";
/// Services with the same key may share an IP when their ports do not collide.
pub const ANNOTATION_ALLOW_SHARED_IP: &str = "ferrolb.io/allow-shared-ip";

/// Service condition written by the controller.
pub const CONDITION_IP_ALLOCATED: &str = "ferrolb.io/IPAllocated";
/// Service condition written by the speaker that owns the IP.
pub const CONDITION_ANNOUNCED: &str = "ferrolb.io/Announced";

/// IPPool condition: the pool is usable.
pub const POOL_CONDITION_READY: &str = "Ready";
/// IPPool condition: the pool overlaps an older pool and allocates nothing.
pub const POOL_CONDITION_CONFLICT: &str = "Conflict";

/// Nodes carrying this label never announce (the upstream Kubernetes label).
pub const LABEL_EXCLUDE_FROM_EXTERNAL_LB: &str =
    "node.kubernetes.io/exclude-from-external-load-balancers";

/// Server-side-apply field manager of the controller.
pub const FIELD_MANAGER_CONTROLLER: &str = "ferrolb-controller";
/// Server-side-apply field manager of the speaker.
pub const FIELD_MANAGER_SPEAKER: &str = "ferrolb-speaker";

/// The Secret (in the controller's namespace) holding the speakers' gossip key: the
/// controller creates it, the speakers read it.
pub const GOSSIP_SECRET: &str = "ferrolb-gossip";
/// The data key of [`GOSSIP_SECRET`] that holds the gossip key.
pub const GOSSIP_SECRET_KEY: &str = "key";

/// Why `ferrolb.io/IPAllocated` has the status it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocationReason {
    Allocated,
    PoolExhausted,
    NoMatchingPool,
    RequestedIPUnavailable,
    SharingConflict,
    FamilyUnavailable,
    InvalidRequest,
}

impl AllocationReason {
    pub const ALL: [AllocationReason; 7] = [
        Self::Allocated,
        Self::PoolExhausted,
        Self::NoMatchingPool,
        Self::RequestedIPUnavailable,
        Self::SharingConflict,
        Self::FamilyUnavailable,
        Self::InvalidRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allocated => "Allocated",
            Self::PoolExhausted => "PoolExhausted",
            Self::NoMatchingPool => "NoMatchingPool",
            Self::RequestedIPUnavailable => "RequestedIPUnavailable",
            Self::SharingConflict => "SharingConflict",
            Self::FamilyUnavailable => "FamilyUnavailable",
            Self::InvalidRequest => "InvalidRequest",
        }
    }
}

/// Why `ferrolb.io/Announced` is False.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnnouncementReason {
    NoEligibleNode,
    NoLocalEndpoints,
    NoInterface,
    /// The IP's pool forwards to NodePorts (`ipMode: Proxy`) and the Service has none
    /// (`allocateLoadBalancerNodePorts: false`): there is nothing to forward to.
    NoNodePort,
}

impl AnnouncementReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoEligibleNode => "NoEligibleNode",
            Self::NoLocalEndpoints => "NoLocalEndpoints",
            Self::NoInterface => "NoInterface",
            Self::NoNodePort => "NoNodePort",
        }
    }
}

/// Event reasons. Emitted on change, never on every reconcile.
pub mod events {
    pub const IP_ALLOCATED: &str = "IPAllocated";
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    pub const IP_RELEASED: &str = "IPReleased";
    pub const ANNOUNCING: &str = "Announcing";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_are_distinct_and_match_their_variant() {
        let names: std::collections::HashSet<_> =
            AllocationReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), AllocationReason::ALL.len());
        for r in AllocationReason::ALL {
            assert_eq!(format!("{r:?}"), r.as_str());
        }
    }

    #[test]
    fn class_rules() {
        assert!(is_our_class(Some(LOAD_BALANCER_CLASS), false));
        assert!(is_our_class(None, true));
        assert!(!is_our_class(None, false));
        assert!(!is_our_class(Some("example.com/other"), true));
    }

    #[test]
    fn annotations_live_in_our_group() {
        for a in [
            ANNOTATION_LOAD_BALANCER_IPS,
            ANNOTATION_IP_POOL,
            ANNOTATION_ALLOW_SHARED_IP,
            CONDITION_IP_ALLOCATED,
            CONDITION_ANNOUNCED,
            LOAD_BALANCER_CLASS,
        ] {
            assert!(a.starts_with(&format!("{GROUP}/")), "{a}");
        }
    }
}
