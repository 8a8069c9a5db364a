//! Reconcile's middle step: from the Service as it is and the allocator's outcome, the
//! status it should have and the events worth emitting. A plain value, printed in logs and
//! asserted in tests; applying it is someone else's job.

use std::net::IpAddr;

use ferrolb_crds::Forwarding;
use ferrolb_crds::names::{AllocationReason, CONDITION_ANNOUNCED, CONDITION_IP_ALLOCATED, events};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::allocator::Outcome;
use crate::service::status_ips;

/// One `status.loadBalancer.ingress` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingress {
    pub ip: IpAddr,
    /// `VIP` or `Proxy`.
    pub ip_mode: &'static str,
}

/// The `ferrolb.io/IPAllocated` condition, without timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatedCondition {
    pub status: bool,
    pub reason: AllocationReason,
    pub message: String,
}

/// An event to emit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPlan {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What reconcile should make true.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Write this status (it differs from what is there) and emit these events.
    Write {
        ingress: Vec<Ingress>,
        condition: AllocatedCondition,
        events: Vec<EventPlan>,
    },
    /// Take our status away (the Service is no longer ours).
    Clear { events: Vec<EventPlan> },
    /// Everything is as it should be.
    Nothing,
}

/// The condition as it stands on the Service.
pub fn current_condition(svc: &Service) -> Option<&Condition> {
    ferrolb_crds::service::condition(svc, CONDITION_IP_ALLOCATED)
}

/// The speakers' `ferrolb.io/Announced`, which the controller removes when the Service
/// stops being ferrolb's (no speaker writes on a Service that is not ours).
pub fn announced_condition(svc: &Service) -> Option<&Condition> {
    ferrolb_crds::service::condition(svc, CONDITION_ANNOUNCED)
}

fn current_ip_modes(svc: &Service) -> Vec<(IpAddr, Option<String>)> {
    crate::service::ingress(svc)
        .filter_map(|i| Some((i.ip.as_deref()?.parse().ok()?, i.ip_mode.clone())))
        .collect()
}

/// Plans the status for a Service ferrolb handles.
pub fn plan_allocation(
    svc: &Service,
    outcome: &Outcome,
    forwarding: impl Fn(&str) -> Forwarding,
) -> Plan {
    let ingress: Vec<Ingress> = outcome
        .ips
        .iter()
        .map(|h| Ingress {
            ip: h.ip,
            ip_mode: forwarding(&h.pool).ip_mode(),
        })
        .collect();
    let condition = match (&outcome.failure, ingress.is_empty()) {
        (None, _) => AllocatedCondition {
            status: true,
            reason: AllocationReason::Allocated,
            message: describe(outcome),
        },
        // RequireDualStack keeping one family while the other cannot be had: not served as
        // asked, so not Allocated; the message says what it keeps.
        (Some(f), false) if outcome.incomplete => AllocatedCondition {
            status: false,
            reason: f.reason,
            message: format!(
                "{}, kept while RequireDualStack waits for the other family: {}",
                describe(outcome),
                f.message
            ),
        },
        (Some(f), false) => AllocatedCondition {
            status: true,
            reason: AllocationReason::Allocated,
            message: format!(
                "{}; not allocated: {}: {}",
                describe(outcome),
                f.reason.as_str(),
                f.message
            ),
        },
        (Some(f), true) => AllocatedCondition {
            status: false,
            reason: f.reason,
            message: f.message.clone(),
        },
    };

    let before = status_ips(svc);
    let mut evs = Vec::new();
    for h in &outcome.ips {
        if !before.contains(&h.ip) {
            evs.push(EventPlan {
                warning: false,
                reason: events::IP_ALLOCATED,
                note: format!("Assigned {} from IPPool {}", h.ip, h.pool),
            });
        }
    }
    for ip in &before {
        if !outcome.ips.iter().any(|h| h.ip == *ip) {
            let why = outcome
                .released
                .iter()
                .find(|(r, _)| r == ip)
                .map(|(_, why)| why.as_str())
                .unwrap_or("no longer allocated");
            evs.push(EventPlan {
                warning: false,
                reason: events::IP_RELEASED,
                note: format!("Released {ip}: {why}"),
            });
        }
    }
    let cur = current_condition(svc);
    let same_condition = cur.is_some_and(|c| {
        c.status == if condition.status { "True" } else { "False" }
            && c.reason == condition.reason.as_str()
            && c.message == condition.message
    });
    if let Some(f) = &outcome.failure
        && !same_condition
    {
        evs.push(EventPlan {
            warning: true,
            reason: events::ALLOCATION_FAILED,
            note: format!("{}: {}", f.reason.as_str(), f.message),
        });
    }

    let same_ingress = current_ip_modes(svc)
        == ingress
            .iter()
            .map(|i| (i.ip, Some(i.ip_mode.to_string())))
            .collect::<Vec<_>>();
    // A spec change that changes nothing of ours still moves observedGeneration (written,
    // with no event: the content is the same).
    let same_generation = cur.is_some_and(|c| c.observed_generation == svc.metadata.generation);
    if same_ingress && same_condition && same_generation {
        return Plan::Nothing;
    }
    Plan::Write {
        ingress,
        condition,
        events: evs,
    }
}

/// Plans the status for a Service that is not (or no longer) ferrolb's: its addresses, our
/// `ferrolb.io/IPAllocated` and the speakers' `ferrolb.io/Announced` go.
pub fn plan_release(svc: &Service, released: &[IpAddr], why: &str) -> Plan {
    let has_ours = !status_ips(svc).is_empty()
        || current_condition(svc).is_some()
        || announced_condition(svc).is_some();
    if !has_ours && released.is_empty() {
        return Plan::Nothing;
    }
    let mut ips: Vec<IpAddr> = status_ips(svc);
    for ip in released {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    Plan::Clear {
        events: ips
            .into_iter()
            .map(|ip| EventPlan {
                warning: false,
                reason: events::IP_RELEASED,
                note: format!("Released {ip}: {why}"),
            })
            .collect(),
    }
}

fn describe(outcome: &Outcome) -> String {
    outcome
        .ips
        .iter()
        .map(|h| format!("{} from IPPool {}", h.ip, h.pool))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{Failure, HeldIp};
    use serde_json::json;

    fn svc(status: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "a", "namespace": "n"}, "status": status}),
        )
        .unwrap()
    }

    fn held(ip: &str, pool: &str) -> HeldIp {
        HeldIp {
            ip: ip.parse().unwrap(),
            pool: pool.into(),
        }
    }

    fn kube_proxy(_: &str) -> Forwarding {
        Forwarding::KubeProxy
    }

    #[test]
    fn a_new_allocation_writes_status_and_one_event() {
        let o = Outcome {
            ips: vec![held("10.0.0.1", "lan")],
            released: vec![],
            failure: None,
            incomplete: false,
        };
        let Plan::Write {
            ingress,
            condition,
            events,
        } = plan_allocation(&svc(json!({})), &o, kube_proxy)
        else {
            panic!("expected a write");
        };
        assert_eq!(
            ingress,
            [Ingress {
                ip: "10.0.0.1".parse().unwrap(),
                ip_mode: "VIP"
            }]
        );
        assert!(condition.status);
        assert_eq!(condition.message, "10.0.0.1 from IPPool lan");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "IPAllocated");
    }

    #[test]
    fn an_unchanged_service_plans_nothing_so_no_event_repeats() {
        let o = Outcome {
            ips: vec![held("10.0.0.1", "lan")],
            released: vec![],
            failure: None,
            incomplete: false,
        };
        let s = svc(json!({
            "loadBalancer": {"ingress": [{"ip": "10.0.0.1", "ipMode": "VIP"}]},
            "conditions": [{"type": "ferrolb.io/IPAllocated", "status": "True", "reason": "Allocated",
                            "message": "10.0.0.1 from IPPool lan", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }));
        assert_eq!(plan_allocation(&s, &o, kube_proxy), Plan::Nothing);

        let failing = Outcome {
            ips: vec![],
            released: vec![],
            failure: Some(Failure {
                reason: AllocationReason::PoolExhausted,
                message: "no free IPv4 address in lan".into(),
                crowded: true,
            }),
            incomplete: false,
        };
        let s = svc(json!({
            "conditions": [{"type": "ferrolb.io/IPAllocated", "status": "False", "reason": "PoolExhausted",
                            "message": "no free IPv4 address in lan", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }));
        assert_eq!(plan_allocation(&s, &failing, kube_proxy), Plan::Nothing);
    }

    #[test]
    fn a_new_generation_rewrites_the_condition_without_an_event() {
        let o = Outcome {
            ips: vec![held("10.0.0.1", "lan")],
            released: vec![],
            failure: None,
            incomplete: false,
        };
        let at = |generation: i64, observed: i64| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "a", "namespace": "n", "generation": generation},
                "status": {
                    "loadBalancer": {"ingress": [{"ip": "10.0.0.1", "ipMode": "VIP"}]},
                    "conditions": [{"type": "ferrolb.io/IPAllocated", "status": "True",
                        "reason": "Allocated", "message": "10.0.0.1 from IPPool lan",
                        "observedGeneration": observed,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        assert_eq!(plan_allocation(&at(3, 3), &o, kube_proxy), Plan::Nothing);
        let Plan::Write { events, .. } = plan_allocation(&at(4, 3), &o, kube_proxy) else {
            panic!("a spec change must move observedGeneration");
        };
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_move_releases_with_the_reason_and_node_port_pools_use_proxy_mode() {
        let o = Outcome {
            ips: vec![held("10.1.0.1", "np")],
            released: vec![(
                "10.0.0.9".parse().unwrap(),
                "10.0.0.9 is not in any IPPool any more".into(),
            )],
            failure: None,
            incomplete: false,
        };
        let s = svc(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.9", "ipMode": "VIP"}]}}));
        let Plan::Write {
            ingress, events, ..
        } = plan_allocation(&s, &o, |_| Forwarding::NodePort)
        else {
            panic!("expected a write");
        };
        assert_eq!(ingress[0].ip_mode, "Proxy");
        let reasons: Vec<&str> = events.iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["IPAllocated", "IPReleased"]);
        assert!(events[1].note.contains("not in any IPPool"));
    }

    #[test]
    fn release_clears_only_when_something_of_ours_is_there() {
        assert_eq!(plan_release(&svc(json!({})), &[], "deleted"), Plan::Nothing);
        let s = svc(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}));
        let Plan::Clear { events } = plan_release(
            &s,
            &["10.0.0.1".parse().unwrap()],
            "the Service's type is ClusterIP",
        ) else {
            panic!("expected a clear");
        };
        assert_eq!(events.len(), 1);
        assert!(events[0].note.contains("ClusterIP"));
        // Only a speaker's Announced left: still ours to clear, with no event (no address).
        let cond = json!({"type": "ferrolb.io/Announced", "status": "True", "reason": "Announced",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"});
        let s = svc(json!({"conditions": [cond]}));
        assert_eq!(
            plan_release(&s, &[], "the Service's type is ClusterIP"),
            Plan::Clear { events: vec![] }
        );
        // Someone else's condition is not ours.
        let other = json!({"type": "example.com/X", "status": "True", "reason": "X",
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"});
        assert_eq!(
            plan_release(&svc(json!({"conditions": [other]})), &[], "deleted"),
            Plan::Nothing
        );
    }

    #[test]
    fn require_dual_stack_keeping_one_family_is_not_reported_allocated() {
        let o = Outcome {
            ips: vec![held("10.0.0.1", "v4")],
            released: vec![],
            failure: Some(Failure {
                reason: AllocationReason::FamilyUnavailable,
                message: "no IPPool available to this Service has IPv6 addresses".into(),
                crowded: false,
            }),
            incomplete: true,
        };
        let Plan::Write {
            ingress, condition, ..
        } = plan_allocation(&svc(json!({})), &o, kube_proxy)
        else {
            panic!("expected a write");
        };
        assert_eq!(ingress.len(), 1, "the kept address stays in status");
        assert!(!condition.status);
        assert_eq!(condition.reason, AllocationReason::FamilyUnavailable);
        assert_eq!(
            condition.message,
            "10.0.0.1 from IPPool v4, kept while RequireDualStack waits for the other family: no IPPool available to this Service has IPv6 addresses"
        );
    }
}
