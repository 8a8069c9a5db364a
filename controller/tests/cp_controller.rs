//! The controller binary against a real kube-apiserver: allocation rules, status and
//! events, pool changes, restarts, leader election and the speakers' gossip Secret.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Cluster, condition, condition_types, ips};
use ferrolb_crds::IPPool;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;

#[tokio::test]
async fn allocation_rules_against_the_real_api() {
    let c = Cluster::start(1).await;
    c.pool(
        "range",
        json!({"addresses": ["192.168.10.200-192.168.10.201"], "priority": 1}),
    )
    .await;
    c.pool(
        "cidr",
        json!({"addresses": ["10.20.0.0/31"], "priority": 2}),
    )
    .await;

    // From a range (lower priority value first), then from a CIDR once the range is used up.
    c.service("default", "a", json!({}), json!({})).await;
    c.wait_ips("default", "a", &["192.168.10.200"]).await;
    c.service("default", "b", json!({}), json!({})).await;
    c.wait_ips("default", "b", &["192.168.10.201"]).await;
    c.service("default", "c", json!({}), json!({})).await;
    c.wait_ips("default", "c", &["10.20.0.0"]).await;
    let s = c.get("default", "c").await;
    assert_eq!(
        s.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip_mode
            .as_deref(),
        Some("VIP")
    );

    // A requested IP is honoured, and refused when taken.
    c.service(
        "default",
        "want",
        json!({}),
        json!({"ferrolb.io/loadBalancerIPs": "10.20.0.1"}),
    )
    .await;
    c.wait_ips("default", "want", &["10.20.0.1"]).await;
    c.service(
        "default",
        "clash",
        json!({}),
        json!({"ferrolb.io/loadBalancerIPs": "10.20.0.1"}),
    )
    .await;
    let got = c
        .wait_reason("default", "clash", "RequestedIPUnavailable")
        .await;
    assert!(got.is_empty());
    let (status, _, msg) = condition(&c.get("default", "clash").await).unwrap();
    assert_eq!(status, "False");
    assert!(msg.contains("default/want"), "{msg}");

    // A named pool with autoAssign false, and NodePort forwarding giving ipMode Proxy.
    c.pool(
        "private",
        json!({"addresses": ["172.16.0.10"], "autoAssign": false, "forwarding": "NodePort"}),
    )
    .await;
    c.service(
        "default",
        "named",
        json!({}),
        json!({"ferrolb.io/ip-pool": "private"}),
    )
    .await;
    c.wait_ips("default", "named", &["172.16.0.10"]).await;
    let s = c.get("default", "named").await;
    assert_eq!(
        s.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip_mode
            .as_deref(),
        Some("Proxy")
    );

    // Exhaustion, then an IP once one frees up.
    c.service("default", "late", json!({}), json!({})).await;
    c.wait_reason("default", "late", "PoolExhausted").await;
    Api::<Service>::namespaced(c.client(), "default")
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    c.wait_ips("default", "late", &["192.168.10.200"]).await;

    // Selectors: only a labelled Service in a labelled namespace gets the edge pool.
    c.pool(
        "edge",
        json!({"addresses": ["10.99.0.1"], "priority": -1,
        "serviceSelector": {"matchLabels": {"tier": "edge"}},
        "namespaceSelector": {"matchLabels": {"team": "blue"}}}),
    )
    .await;
    c.namespace("blue", json!({"team": "blue"})).await;
    c.namespace("red", json!({"team": "red"})).await;
    let edge = |ns: &'static str, name: &'static str| {
        let c = &c;
        async move {
            let api: Api<Service> = Api::namespaced(c.client(), ns);
            let obj = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": {"tier": "edge"}},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name}}});
            api.patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap();
        }
    };
    edge("red", "r").await;
    c.wait_reason("red", "r", "PoolExhausted").await;
    edge("blue", "b").await;
    c.wait_ips("blue", "b", &["10.99.0.1"]).await;
    // Relabelling the red namespace re-examines its Services; the edge pool is taken, so it
    // stays exhausted, but the priority order shows once the blue Service goes.
    Api::<Service>::namespaced(c.client(), "blue")
        .delete("b", &DeleteParams::default())
        .await
        .unwrap();
    c.namespace("red", json!({"team": "blue"})).await;
    c.wait_ips("red", "r", &["10.99.0.1"]).await;

    // Another class is never touched.
    c.service(
        "default",
        "other",
        json!({"loadBalancerClass": "example.com/other"}),
        json!({}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other = c.get("default", "other").await;
    assert!(
        ips(&other).is_empty() && condition(&other).is_none(),
        "{:?}",
        other.status
    );
    assert!(
        other
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .all(|m| m.manager.as_deref() != Some("ferrolb-controller"))
    );

    // Events are emitted on change only: touching an allocated Service adds none.
    c.wait_event("default", "want", "IPAllocated", "10.20.0.1")
        .await;
    c.wait_event(
        "default",
        "clash",
        "AllocationFailed",
        "RequestedIPUnavailable",
    )
    .await;
    let before = c.events("default", "want").await;
    assert_eq!(
        before.iter().filter(|(r, _)| r == "IPAllocated").count(),
        1,
        "{before:?}"
    );
    for i in 0..3 {
        let api: Api<Service> = Api::namespaced(c.client(), "default");
        api.patch(
            "want",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touch": i.to_string()}}})),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.events("default", "want").await, before);
    let clash = c.events("default", "clash").await;
    assert_eq!(
        clash
            .iter()
            .filter(|(r, _)| r == "AllocationFailed")
            .count(),
        1,
        "{clash:?}"
    );
}

/// Deleting a Service right after it got its address races the reconcile its own status
/// write triggers; the address must come free every time, never stay with the deleted one.
#[tokio::test]
async fn deleting_right_after_allocation_never_keeps_the_address() {
    let c = Cluster::start(1).await;
    c.pool("one", json!({"addresses": ["10.77.0.1"]})).await;
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    for i in 0..40 {
        let name = format!("s{i}");
        c.service("default", &name, json!({}), json!({})).await;
        c.wait_ips("default", &name, &["10.77.0.1"]).await;
        // A change just before the delete queues one more reconcile of the doomed Service.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touch": "1"}}})),
        )
        .await
        .unwrap();
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    c.service("default", "last", json!({}), json!({})).await;
    c.wait_ips("default", "last", &["10.77.0.1"]).await;
}

/// The sample pools and Services in `deploy/samples/` pass the API server's validation and
/// get what their comments promise.
#[tokio::test]
async fn the_samples_apply_and_get_their_addresses() {
    let c = Cluster::start(1).await;
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples");
    let file = |f: &str| samples.join(f).to_string_lossy().into_owned();
    c.cp.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &file("ippools.yaml"),
        "-f",
        &file("services.yaml"),
    ])
    .unwrap();

    let in_range = |ip: &str, lo: [u8; 4], hi: [u8; 4]| {
        ip.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a >= std::net::Ipv4Addr::from(lo) && a <= std::net::Ipv4Addr::from(hi))
    };
    let lan_v4 = |ip: &str| in_range(ip, [192, 168, 10, 200], [192, 168, 10, 250]);
    let lan_v6 = |ip: &str| {
        ip.parse::<std::net::Ipv6Addr>().is_ok_and(|a| {
            let s = a.segments();
            s[..7] == [0x2001, 0xdb8, 0x10, 0, 0, 0, 0] && s[7] <= 0xff
        })
    };
    let mut held = Vec::new();
    for name in ["web", "web-local"] {
        let got = c.wait_reason("default", name, "Allocated").await;
        assert!(got.len() == 1 && lan_v4(&got[0]), "{name}: {got:?}");
        held.extend(got);
    }
    let dual = c.wait_reason("default", "web-dual", "Allocated").await;
    assert!(
        dual.len() == 2 && lan_v4(&dual[0]) && lan_v6(&dual[1]),
        "web-dual: {dual:?}"
    );
    held.extend(dual);
    for name in ["dns-tcp", "dns-udp"] {
        c.wait_ips("default", name, &["192.168.20.20"]).await;
    }
    let distinct: std::collections::BTreeSet<&String> = held.iter().collect();
    assert_eq!(
        distinct.len(),
        held.len(),
        "an address given twice: {held:?}"
    );

    let pools: Api<IPPool> = Api::all(c.client());
    for name in ["lan", "reserved", "team-blue"] {
        c.wait_for(&format!("IPPool {name} Ready"), || async {
            let p = pools.get(name).await.unwrap();
            let ready = p.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                Ok(())
            } else {
                Err(format!("{:?}", p.status))
            }
        })
        .await;
    }
}

/// RequireDualStack keeps the address it holds while the other family is unavailable
/// (before: both were dropped), and an IPv6 CIDR hands out ::1 first, never its anycast ::.
#[tokio::test]
async fn require_dual_stack_keeps_its_address_when_the_other_family_goes() {
    let c = Cluster::start(1).await;
    c.pool("v4", json!({"addresses": ["10.0.0.1-10.0.0.2"]}))
        .await;
    c.pool("v6", json!({"addresses": ["2001:db8::/126"]})).await;
    c.service(
        "default",
        "require",
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        json!({}),
    )
    .await;
    c.wait_ips("default", "require", &["10.0.0.1", "2001:db8::1"])
        .await;
    c.delete_pool("v6").await;
    let kept = c
        .wait_reason("default", "require", "FamilyUnavailable")
        .await;
    assert_eq!(kept, ["10.0.0.1"]);
    c.pool("v6", json!({"addresses": ["2001:db8::/126"]})).await;
    c.wait_ips("default", "require", &["10.0.0.1", "2001:db8::1"])
        .await;
}

#[tokio::test]
async fn dual_stack_and_sharing() {
    let c = Cluster::start(1).await;
    c.pool("v4", json!({"addresses": ["10.0.0.1-10.0.0.2"]}))
        .await;
    c.pool("v6", json!({"addresses": ["2001:db8::1"]})).await;

    c.service(
        "default",
        "single6",
        json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}),
        json!({}),
    )
    .await;
    c.wait_ips("default", "single6", &["2001:db8::1"]).await;
    // RequireDualStack: the only IPv6 address is taken, so nothing at all.
    c.service(
        "default",
        "require",
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        json!({}),
    )
    .await;
    let got = c.wait_reason("default", "require", "PoolExhausted").await;
    assert!(got.is_empty());
    // PreferDualStack: IPv4 now, IPv6 once it frees up.
    c.service(
        "default",
        "prefer",
        json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
        json!({}),
    )
    .await;
    c.wait_ips("default", "prefer", &["10.0.0.1"]).await;
    Api::<Service>::namespaced(c.client(), "default")
        .delete("single6", &DeleteParams::default())
        .await
        .unwrap();
    // Either of the two waiting Services may win the freed IPv6 address; whichever it is,
    // RequireDualStack gets both families or none.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = ips(&c.get("default", "prefer").await);
        let r = ips(&c.get("default", "require").await);
        assert!(r.is_empty() || r.len() == 2, "{r:?}");
        if p == ["10.0.0.1", "2001:db8::1"] || r.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody got the freed IPv6 address: {p:?} {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sharing: same key, other ports: one address; colliding ports: refused.
    c.pool(
        "shared",
        json!({"addresses": ["10.5.0.1"], "autoAssign": false}),
    )
    .await;
    let ann =
        |ip: &str| json!({"ferrolb.io/allow-shared-ip": "front", "ferrolb.io/loadBalancerIPs": ip});
    c.service(
        "default",
        "http",
        json!({"ports": [{"port": 80}]}),
        ann("10.5.0.1"),
    )
    .await;
    c.service(
        "default",
        "https",
        json!({"ports": [{"port": 443}]}),
        ann("10.5.0.1"),
    )
    .await;
    c.wait_ips("default", "http", &["10.5.0.1"]).await;
    c.wait_ips("default", "https", &["10.5.0.1"]).await;
    c.service(
        "default",
        "http2",
        json!({"ports": [{"port": 80}]}),
        ann("10.5.0.1"),
    )
    .await;
    let (_, _, msg) = {
        c.wait_reason("default", "http2", "SharingConflict").await;
        condition(&c.get("default", "http2").await).unwrap()
    };
    assert!(msg.contains("80"), "{msg}");
}

#[tokio::test]
async fn release_on_delete_and_type_change_and_pool_changes_move_services() {
    let c = Cluster::start(1).await;
    c.pool("old", json!({"addresses": ["10.0.0.1-10.0.0.2"]}))
        .await;
    c.service("default", "one", json!({}), json!({})).await;
    c.wait_ips("default", "one", &["10.0.0.1"]).await;
    c.service("default", "two", json!({}), json!({})).await;
    c.wait_ips("default", "two", &["10.0.0.2"]).await;

    // A speaker's Announced on "one" (written as the speakers write it), and a condition of
    // someone else's that must stay.
    for (manager, type_) in [
        (
            ferrolb_crds::names::FIELD_MANAGER_SPEAKER,
            ferrolb_crds::names::CONDITION_ANNOUNCED,
        ),
        ("someone-else", "example.com/Checked"),
    ] {
        c.write_condition("default", "one", manager, type_).await;
    }
    let types = condition_types;
    assert!(types(&c.get("default", "one").await).contains(&"ferrolb.io/Announced".to_string()));

    // Type change releases, with an event, and the address is free for others; our
    // conditions go (IPAllocated and the speakers' Announced), another's stays.
    c.service("default", "one", json!({"type": "ClusterIP"}), json!({}))
        .await;
    c.wait_ips("default", "one", &[]).await;
    c.wait_event("default", "one", "IPReleased", "ClusterIP")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let svc = c.get("default", "one").await;
        if types(&svc) == ["example.com/Checked"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conditions left: {:?}",
            types(&svc)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(condition(&c.get("default", "one").await).is_none());
    c.service("default", "three", json!({}), json!({})).await;
    c.wait_ips("default", "three", &["10.0.0.1"]).await;

    // A deleted pool moves its Services to another pool, saying why.
    c.pool("new", json!({"addresses": ["10.1.0.0/30"]})).await;
    c.delete_pool("old").await;
    // Both move into the new pool; which of them is re-examined first is not fixed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got: Vec<String> = ips(&c.get("default", "two").await);
        got.extend(ips(&c.get("default", "three").await));
        got.sort();
        if got == ["10.1.0.0", "10.1.0.1"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not moved to the new pool: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_event("default", "two", "IPReleased", "not in any IPPool")
        .await;

    // Overlapping pools: the newer gets Conflict naming the older, and allocates nothing.
    c.pool("overlap", json!({"addresses": ["10.1.0.2-10.1.0.9"]}))
        .await;
    let pools: Api<IPPool> = Api::all(c.client());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pools.get("overlap").await.unwrap();
        let conflict = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Conflict").cloned());
        if let Some(cond) = conflict.filter(|c| c.status == "True") {
            assert!(cond.message.contains("new"), "{}", cond.message);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Conflict on the overlapping pool: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let newp = pools.get("new").await.unwrap();
    let st = newp.status.unwrap();
    assert_eq!(st.ipv4.unwrap().used, "2");
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Conflict" && c.status == "False")
    );
}

/// A Service that stays ours but loses its only address (its pool deleted, no other pool):
/// the speakers' `ferrolb.io/Announced`, which described that address, goes with it.
#[tokio::test]
async fn a_service_left_without_an_address_loses_its_announced_condition() {
    let c = Cluster::start(1).await;
    c.pool("only", json!({"addresses": ["10.0.0.1-10.0.0.1"]}))
        .await;
    c.service("default", "web", json!({}), json!({})).await;
    c.wait_ips("default", "web", &["10.0.0.1"]).await;
    c.write_condition(
        "default",
        "web",
        ferrolb_crds::names::FIELD_MANAGER_SPEAKER,
        ferrolb_crds::names::CONDITION_ANNOUNCED,
    )
    .await;
    c.delete_pool("only").await;
    c.wait_ips("default", "web", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let svc = c.get("default", "web").await;
        if !condition_types(&svc).contains(&"ferrolb.io/Announced".to_string()) {
            // Still ours: the controller says why it has no address.
            let (status, reason, _) = condition(&svc).expect("IPAllocated stays");
            assert_eq!(status, "False", "{reason}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Announced left: {:?}",
            svc.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `observedGeneration` of `ferrolb.io/IPAllocated` follows the Service: after a spec change
/// that leaves the allocation as it was it equals the Service's generation, and no new
/// event is emitted.
#[tokio::test]
async fn observed_generation_follows_the_service() {
    let c = Cluster::start(1).await;
    c.pool("lan", json!({"addresses": ["10.0.0.1-10.0.0.9"]}))
        .await;
    c.service("default", "web", json!({}), json!({})).await;
    c.wait_ips("default", "web", &["10.0.0.1"]).await;
    let observed = |svc: &Service| {
        svc.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ferrolb.io/IPAllocated"))
            .and_then(|c| c.observed_generation)
    };
    let svc = c.get("default", "web").await;
    assert_eq!(observed(&svc), svc.metadata.generation);
    let events_before = c.events("default", "web").await.len();

    // Another port: a new generation, the same address.
    c.service(
        "default",
        "web",
        json!({"ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443, "protocol": "TCP"}]}),
        json!({}),
    )
    .await;
    // Kubernetes v1.36 keeps no metadata.generation on Services (None here, before and
    // after), so there is nothing to drift from; the check holds whichever it is.
    let generation = c.get("default", "web").await.metadata.generation;
    c.wait_for("observedGeneration to follow", || async {
        let s = c.get("default", "web").await;
        if observed(&s) == generation {
            Ok(())
        } else {
            Err(format!("{:?} against {generation:?}", observed(&s)))
        }
    })
    .await;
    assert_eq!(ips(&c.get("default", "web").await), ["10.0.0.1"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.events("default", "web").await.len(),
        events_before,
        "no event for a write that changed only observedGeneration"
    );
}

#[tokio::test]
async fn a_restart_with_200_services_changes_no_ip() {
    let mut c = Cluster::start(1).await;
    c.pool(
        "big",
        json!({"addresses": ["10.50.0.0/24", "2001:db8:50::/64"]}),
    )
    .await;
    for i in 0..200 {
        let policy = if i % 3 == 0 {
            json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]})
        } else {
            json!({})
        };
        c.service("default", &format!("s{i:03}"), policy, json!({}))
            .await;
    }
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let snapshot = || async {
        let mut m = BTreeMap::new();
        for s in api.list(&ListParams::default()).await.unwrap().items {
            let n = s.metadata.name.clone().unwrap();
            if n.starts_with('s') {
                m.insert(n, ips(&s));
            }
        }
        m
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let before = loop {
        let m = snapshot().await;
        let done = m.len() == 200
            && m.iter().all(|(n, v)| {
                let want = if n[1..].parse::<usize>().unwrap() % 3 == 0 {
                    2
                } else {
                    1
                };
                v.len() == want
            });
        if done {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "not all 200 Services got addresses"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let distinct: std::collections::BTreeSet<&String> = before.values().flatten().collect();
    assert_eq!(distinct.len(), 200 + 67, "no address is held twice");

    // Restart: stop the controller, delete a Service in the meantime, add a new one.
    c.controllers.clear();
    api.delete("s000", &DeleteParams::default()).await.unwrap();
    c.service("default", "zz-new", json!({}), json!({})).await;
    c.spawn_controller("restarted");
    c.wait_reason("default", "zz-new", "Allocated").await;
    let after = snapshot().await;
    for (name, ips_before) in &before {
        if name == "s000" {
            continue;
        }
        assert_eq!(after.get(name), Some(ips_before), "{name} changed");
    }
    let new_ip = ips(&c.get("default", "zz-new").await);
    assert!(
        !before.values().flatten().any(|ip| new_ip.contains(ip))
            || before["s000"].contains(&new_ip[0]),
        "new Service got a held address: {new_ip:?}"
    );
}

#[tokio::test]
async fn two_replicas_one_writer_and_failover() {
    let mut c = Cluster::start(2).await;
    c.pool("p", json!({"addresses": ["10.0.0.0/28"]})).await;
    c.service("default", "first", json!({}), json!({})).await;
    c.wait_ips("default", "first", &["10.0.0.0"]).await;

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client(), "ferrolb-system");
    let holder = leases
        .get("ferrolb-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    // Only the leader wrote: the status's managed fields name one writer, and only the
    // leader's log shows a reconcile.
    let leader_idx = c
        .controllers
        .iter()
        .position(|p| holder.starts_with(&format!("{}_", p.name())))
        .unwrap();
    let other_idx = 1 - leader_idx;
    let other_log = std::fs::read_to_string(c.controllers[other_idx].log_path()).unwrap();
    assert!(
        !other_log.contains("reconciling object"),
        "the standby reconciled:\n{other_log}"
    );

    // Kill the leader without a goodbye: the standby takes over after the lease expires.
    let pid = c.controllers[leader_idx].pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.controllers.remove(leader_idx);
    c.service("default", "second", json!({}), json!({})).await;
    c.wait_ips("default", "second", &["10.0.0.1"]).await;
    c.wait_ips("default", "first", &["10.0.0.0"]).await;
    let new_holder = leases
        .get("ferrolb-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder);

    // SIGTERM: a clean exit that hands the Lease back.
    let survivor = &mut c.controllers[0];
    let pid = survivor.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = survivor.exited() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let spec = leases
        .get("ferrolb-controller")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert!(
        spec.holder_identity.as_deref().is_none_or(str::is_empty),
        "lease still held: {spec:?}"
    );
}

#[tokio::test]
async fn runs_under_the_rbac_of_deploy() {
    let mut c = Cluster::start(0).await;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    c.cp.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        deploy.to_str().unwrap(),
    ])
    .unwrap();
    let kubeconfig =
        c.cp.service_account_kubeconfig("ferrolb-system", "ferrolb-controller")
            .unwrap();
    c.spawn_controller_with("rbac", &kubeconfig);

    c.pool("lan", json!({"addresses": ["192.168.50.10-192.168.50.20"]}))
        .await;
    c.service("default", "web", json!({}), json!({})).await;
    c.wait_ips("default", "web", &["192.168.50.10"]).await;
    c.wait_event("default", "web", "IPAllocated", "192.168.50.10")
        .await;
    let pools: Api<IPPool> = Api::all(c.client());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = pools.get("lan").await.unwrap().status;
        if st.as_ref().and_then(|s| s.usage.as_deref()) == Some("v4 1/11") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool status not written under the controller's RBAC: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_secret("ferrolb-gossip").await;
    let log = std::fs::read_to_string(c.controllers[0].log_path()).unwrap();
    assert!(
        !log.contains("forbidden"),
        "the controller hit a permission it lacks:\n{log}"
    );
}

#[tokio::test]
async fn two_claims_on_one_address_after_a_restart_the_older_keeps_it() {
    let mut c = Cluster::start(1).await;
    c.pool("p", json!({"addresses": ["10.7.0.1-10.7.0.4"]}))
        .await;
    c.service("default", "older", json!({}), json!({})).await;
    c.wait_ips("default", "older", &["10.7.0.1"]).await;
    // creationTimestamp has one-second resolution: make the ages differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.service("default", "newer", json!({}), json!({})).await;
    c.wait_ips("default", "newer", &["10.7.0.2"]).await;

    // While the controller is down, someone writes the older Service's address into the
    // newer one's status.
    c.controllers.clear();
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let forged = json!({"apiVersion": "v1", "kind": "Service",
        "status": {"loadBalancer": {"ingress": [{"ip": "10.7.0.1", "ipMode": "VIP"}]}}});
    api.patch_status(
        "newer",
        &PatchParams::apply("ferrolb-controller").force(),
        &Patch::Apply(&forged),
    )
    .await
    .unwrap();
    c.spawn_controller("restarted");

    c.wait_ips("default", "newer", &["10.7.0.2"]).await;
    c.wait_event(
        "default",
        "newer",
        "IPReleased",
        "10.7.0.1 is held by default/older, which claimed it first",
    )
    .await;
    assert_eq!(ips(&c.get("default", "older").await), ["10.7.0.1"]);
}

#[tokio::test]
async fn default_class_false_leaves_classless_services_alone() {
    let mut c = Cluster::start(0).await;
    let kubeconfig = c.cp.kubeconfig_path().to_path_buf();
    c.spawn_controller_args("no-default", &kubeconfig, &["--default-class=false"]);
    c.pool("p", json!({"addresses": ["10.8.0.1-10.8.0.4"]}))
        .await;
    c.service("default", "classless", json!({}), json!({}))
        .await;
    c.service(
        "default",
        "ours",
        json!({"loadBalancerClass": "ferrolb.io/l2"}),
        json!({}),
    )
    .await;
    c.wait_ips("default", "ours", &["10.8.0.1"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = c.get("default", "classless").await;
    assert!(
        ips(&s).is_empty() && condition(&s).is_none(),
        "{:?}",
        s.status
    );
}

#[tokio::test]
async fn the_gossip_secret_is_created_once_and_an_existing_one_is_left_alone() {
    // Two replicas start at once: one of them creates the Secret, the other finds it (or
    // loses the create race with AlreadyExists); neither fails.
    let mut c = Cluster::start(2).await;
    let secret = c.wait_secret("ferrolb-gossip").await;
    let data = secret.data.clone().unwrap();
    assert_eq!(data.len(), 1, "{:?}", data.keys());
    assert_eq!(data["key"].0.len(), 32);
    assert_ne!(data["key"].0, vec![0; 32]);
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/part-of"],
        "ferrolb"
    );
    const CREATED: &str = "created the speakers' gossip Secret";
    const PRESENT: &str = "gossip Secret present";
    let mut created = 0;
    for i in 0..2 {
        if c.wait_log(i, &[CREATED, PRESENT]).await.contains(CREATED) {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one replica creates the Secret");

    // A Secret that is already there, with other data, is never changed: neither on a
    // restart nor by a replica that finds it at its first start.
    let api: Api<Secret> = Api::namespaced(c.client(), "ferrolb-system");
    let preset: Secret = serde_json::from_value(json!({
        "metadata": {"name": "preset"},
        "stringData": {"key": "an operator's own key", "other": "kept"}
    }))
    .unwrap();
    let preset = api.create(&PostParams::default(), &preset).await.unwrap();
    let kubeconfig = c.cp.kubeconfig_path().to_path_buf();
    c.spawn_controller_args("preset", &kubeconfig, &["--gossip-secret=preset"]);
    c.controllers.remove(0);
    c.spawn_controller("restarted");
    c.wait_log(1, &[PRESENT]).await;
    c.wait_log(2, &[PRESENT]).await;
    let after = api.get("preset").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        preset.metadata.resource_version
    );
    assert_eq!(after.data, preset.data);
    let gossip = api.get("ferrolb-gossip").await.unwrap();
    assert_eq!(
        gossip.metadata.resource_version,
        secret.metadata.resource_version
    );
    assert_eq!(gossip.data, secret.data);
}

#[tokio::test]
async fn what_the_controller_creates_is_owned_by_its_service_account() {
    // Deleting the installation deletes the ServiceAccount; the garbage collector then
    // takes the gossip Secret and the Lease with it (proven on kind by `helm uninstall`).
    let mut c = Cluster::start(0).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(c.client(), "ferrolb-system");
    let sa = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ferrolb-controller"}})).unwrap(),
        )
        .await
        .unwrap();
    let kubeconfig = c.cp.kubeconfig_path().to_path_buf();
    c.spawn_controller_args(
        "owned",
        &kubeconfig,
        &["--owner-service-account=ferrolb-controller"],
    );
    let secret = c.wait_secret("ferrolb-gossip").await;
    let want = Some(vec![ferrolb_controller::owner::to_service_account(
        "ferrolb-controller",
        sa.metadata.uid.as_deref().unwrap(),
    )]);
    assert_eq!(secret.metadata.owner_references, want);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client(), "ferrolb-system");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lease = loop {
        if let Some(l) = leases.get_opt("ferrolb-controller").await.unwrap() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "no Lease within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lease.metadata.owner_references, want);
}

/// The API server's admission refuses every write of IPPool status while this
/// ValidatingAdmissionPolicy is bound.
async fn block_pool_status(client: &kube::Client) {
    let gvk = |kind: &str| GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let policies: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&gvk("ValidatingAdmissionPolicy")),
    );
    let bindings: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&gvk("ValidatingAdmissionPolicyBinding")),
    );
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "block-pool-status"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["ferrolb.io"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"], "resources": ["ippools/status"]}]},
            "validations": [{"expression": "false", "message": "pool status is blocked by the test"}]
        }
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let binding: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "block-pool-status"},
        "spec": {"policyName": "block-pool-status", "validationActions": ["Deny"]}
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

async fn unblock_pool_status(client: &kube::Client) {
    let gvk = GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
    );
    let bindings: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    bindings
        .delete("block-pool-status", &DeleteParams::default())
        .await
        .unwrap();
}

/// A pool-status write the API server refuses is tried again on its own (with backoff):
/// once writes are allowed again the status appears, with nothing else changing in the
/// cluster to prompt it.
#[tokio::test]
async fn a_refused_pool_status_write_is_retried_without_another_change() {
    let c = Cluster::start(1).await;
    let client = c.client();
    let pools: Api<IPPool> = Api::all(client.clone());
    // A pool of our own to probe with: the policy is in force once our own status write
    // is refused.
    c.pool("probe", json!({"addresses": ["10.61.0.0/30"]}))
        .await;
    block_pool_status(&client).await;
    let probe = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "status": {"usage": "probe"}});
    c.wait_for("the admission policy never refused a status write", || {
        let pools = pools.clone();
        let probe = probe.clone();
        async move {
            match pools
                .patch_status(
                    "probe",
                    &PatchParams::apply("probe-test").force(),
                    &Patch::Apply(&probe),
                )
                .await
            {
                Err(kube::Error::Api(e)) if e.message.contains("blocked by the test") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;

    c.pool("blocked", json!({"addresses": ["10.62.0.0/30"]}))
        .await;
    c.wait_log(0, &["cannot write pool status"]).await;
    let p = pools.get("blocked").await.unwrap();
    assert!(
        p.status.is_none(),
        "written despite the policy: {:?}",
        p.status
    );

    unblock_pool_status(&client).await;
    c.wait_for("the refused pool status was never written", || {
        let pools = pools.clone();
        async move {
            let p = pools.get("blocked").await.map_err(|e| e.to_string())?;
            match p.status.as_ref().and_then(|s| s.ipv4.as_ref()) {
                Some(u) if u.total == "4" => Ok(()),
                _ => Err(format!("{:?}", p.status)),
            }
        }
    })
    .await;
}
