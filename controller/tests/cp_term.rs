//! What a new leader costs the API server and what it must not miss, against a real
//! kube-apiserver: every replica keeps its caches warm (a standby that takes over lists
//! nothing again), a new leader reconciles each Service once, and pool edits made while a
//! controller starts and restores are applied.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::{Cluster, ips, reconciles};
use ferrolb_crds::IPPool;
use ferrolb_e2e::ControlPlaneOptions;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// An audit policy that records every LIST of the kinds the controller caches.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [list]
  resources:
  - {group: "", resources: [services, namespaces]}
  - {group: ferrolb.io, resources: [ippools]}
- level: None
"#;

/// The resources listed by someone other than the API server itself at or after `since`.
fn lists_since(audit_log: &std::path::Path, since: Timestamp) -> Vec<String> {
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["verb"] == "list" && e["user"]["username"] != "system:apiserver")
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| t >= since)
        })
        .map(|e| {
            e["objectRef"]["resource"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

async fn holder(c: &Cluster) -> String {
    Api::<Lease>::namespaced(c.client(), "ferrolb-system")
        .get("ferrolb-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap()
}

#[tokio::test]
async fn a_standby_that_takes_over_lists_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY).unwrap();
    let audit_log = dir.path().join("audit.log");
    let options = ControlPlaneOptions {
        apiserver_args: vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", audit_log.display()),
        ],
        ..ControlPlaneOptions::default()
    };
    let mut c = Cluster::start_with(2, options).await;
    c.pool("p", json!({"addresses": ["10.60.0.0/28"]})).await;
    c.service("default", "first", json!({}), json!({})).await;
    c.wait_ips("default", "first", &["10.60.0.0"]).await;
    // The standby has its caches too: its log says it listed (and it stands by).
    let leader = holder(&c).await;
    let leader_idx = c
        .controllers
        .iter()
        .position(|p| leader.starts_with(&format!("{}_", p.name())))
        .unwrap();
    c.wait_log(1 - leader_idx, &["standing by"]).await;

    // Kill the leader without a goodbye; from now on, only the standby can list anything
    // (this test reads single objects only).
    let killed_at = Timestamp::now();
    let pid = c.controllers[leader_idx].pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.controllers.remove(leader_idx);
    c.service("default", "second", json!({}), json!({})).await;
    c.wait_ips("default", "second", &["10.60.0.1"]).await;
    assert_ne!(holder(&c).await, leader);
    // Before restoring, it proved each warm cache current (with two small watches each),
    // and had no reason to list one again.
    let log = c.wait_log(0, &["allocations rebuilt"]).await;
    let proven: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cache proven current"))
        .collect();
    for kind in ["Service", "IPPool", "Namespace"] {
        assert!(
            proven
                .iter()
                .any(|l| l.contains(&format!("kind=\"{kind}\""))
                    || l.contains(&format!("kind={kind}"))),
            "no proof for {kind} in {proven:?}"
        );
    }
    assert!(!log.contains("cache not proven current"), "{log}");
    let lists = lists_since(&audit_log, killed_at);
    assert!(
        lists.is_empty(),
        "the new leader listed {lists:?} again instead of using its warm caches"
    );
}

#[tokio::test]
async fn a_new_leader_reconciles_each_service_once() {
    let mut c = Cluster::start(1).await;
    c.pool("p", json!({"addresses": ["10.61.0.0/24"]})).await;
    const N: usize = 30;
    for i in 0..N {
        c.service("default", &format!("s{i:02}"), json!({}), json!({}))
            .await;
    }
    for i in 0..N {
        c.wait_reason("default", &format!("s{i:02}"), "Allocated")
            .await;
    }
    c.controllers.clear();
    c.spawn_controller("restarted");
    c.wait_log(0, &["allocations rebuilt"]).await;
    // Pool events after the restore (here: a label, which changes no spec) must not make
    // the new leader look at every Service again.
    Api::<IPPool>::all(c.client())
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    c.service("default", "late", json!({}), json!({})).await;
    c.wait_reason("default", "late", "Allocated").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = std::fs::read_to_string(c.controllers[0].log_path()).unwrap();
    for i in 0..N {
        let name = format!("s{i:02}");
        assert_eq!(
            reconciles(&log, "default", &name),
            1,
            "{name} was not reconciled exactly once by the new leader; log {}",
            c.controllers[0].log_path().display()
        );
    }
}

/// Pool edits keep coming while a controller starts and rebuilds its allocations; the
/// last one must be what it allocates by. The edits change nothing a pool's status shows
/// (only which of two pools comes first), so no later event of the controller's own can
/// paper over an edit it dropped. A few hundred Services make the restore take a while.
#[tokio::test]
async fn pool_edits_while_the_controller_starts_and_restores_are_applied() {
    let mut c = Cluster::start(1).await;
    c.pool("p", json!({"addresses": ["10.62.0.0/23"], "priority": 5}))
        .await;
    const N: usize = 300;
    let api: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.client(), "default");
    for i in 0..N {
        c.service("default", &format!("s{i:03}"), json!({}), json!({}))
            .await;
    }
    c.wait_for("every Service allocated", || async {
        let last = api.get(&format!("s{:03}", N - 1)).await.unwrap();
        if ips(&last).is_empty() {
            Err("not yet".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    c.pool("a", json!({"addresses": ["10.64.0.0/28"], "priority": 2}))
        .await;
    c.pool("b", json!({"addresses": ["10.65.0.0/28"], "priority": 1}))
        .await;

    for round in 0..3u32 {
        c.controllers.clear();
        c.spawn_controller(&format!("restart-{round}"));
        // Flip pool a's priority (ahead of b, behind b, ...) until the restarted
        // controller says it has rebuilt its allocations.
        let mut first = "b";
        for flip in 0.. {
            let (priority, expect) = if flip % 2 == 0 { (0, "a") } else { (3, "b") };
            c.pool(
                "a",
                json!({"addresses": ["10.64.0.0/28"], "priority": priority}),
            )
            .await;
            first = expect;
            let log = std::fs::read_to_string(c.controllers[0].log_path()).unwrap_or_default();
            if log.contains("allocations rebuilt") || flip == 2000 {
                break;
            }
        }
        // Let the controller see the last edit (the probe's own watch event could overtake
        // it otherwise), then ask for an address.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let name = format!("probe-{round}");
        c.service("default", &name, json!({}), json!({})).await;
        let got = c.wait_reason("default", &name, "Allocated").await;
        let prefix = if first == "a" { "10.64.0." } else { "10.65.0." };
        assert!(
            got.len() == 1 && got[0].starts_with(prefix),
            "round {round}: the last edit puts pool {first} first, but {name} got {got:?}; log {}",
            c.controllers[0].log_path().display()
        );
        api.delete(&name, &Default::default()).await.unwrap();
    }
}

/// Waiting Services are woken by what can help them, not all at once: a freed address
/// wakes the one waiting longest, a pool for one namespace wakes that namespace's waiters,
/// and a Service whose request is invalid is not looked at again for either.
#[tokio::test]
async fn a_freed_address_or_a_new_pool_wakes_only_the_services_it_can_help() {
    let c = Cluster::start(1).await;
    c.namespace("wa", json!({"team": "a"})).await;
    c.namespace("wb", json!({"team": "b"})).await;
    c.pool("tiny", json!({"addresses": ["10.63.0.1/32"]})).await;
    c.service("wa", "holder", json!({}), json!({})).await;
    c.wait_ips("wa", "holder", &["10.63.0.1"]).await;
    // Created one after the other, so they start waiting in this order.
    let waiters: Vec<(&str, String)> = (0..12)
        .map(|i| (if i % 2 == 0 { "wa" } else { "wb" }, format!("w{i:02}")))
        .collect();
    for (ns, name) in &waiters {
        c.service(ns, name, json!({}), json!({})).await;
        c.wait_reason(ns, name, "PoolExhausted").await;
    }
    // IPv6 asked for on an IPv4 Service: invalid until the Service changes.
    c.service(
        "wa",
        "invalid",
        json!({}),
        json!({"ferrolb.io/loadBalancerIPs": "2001:db8::1"}),
    )
    .await;
    c.wait_reason("wa", "invalid", "InvalidRequest").await;
    let log_path = c.controllers[0].log_path().to_path_buf();
    let counts = |log: &str| -> Vec<usize> {
        waiters
            .iter()
            .map(|(ns, n)| reconciles(log, ns, n))
            .chain([reconciles(log, "wa", "invalid")])
            .collect()
    };
    let before = counts(&std::fs::read_to_string(&log_path).unwrap());

    Api::<k8s_openapi::api::core::v1::Service>::namespaced(c.client(), "wa")
        .delete("holder", &Default::default())
        .await
        .unwrap();
    c.wait_ips("wa", "w00", &["10.63.0.1"]).await;
    // A pool for namespace b: its waiters get addresses, a's keep waiting untouched.
    c.pool(
        "for-b",
        json!({"addresses": ["10.63.1.0/28"],
            "namespaceSelector": {"matchLabels": {"team": "b"}}}),
    )
    .await;
    for (ns, name) in waiters.iter().filter(|(ns, _)| *ns == "wb") {
        c.wait_reason(ns, name, "Allocated").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let after = counts(&log);
    for (i, (ns, name)) in waiters.iter().enumerate() {
        let extra = after[i] - before[i];
        if name == "w00" {
            // Woken, allocated, and once more for its own status write.
            assert!(
                extra >= 1,
                "w00 was not reconciled; log {}",
                log_path.display()
            );
        } else if *ns == "wa" {
            assert_eq!(
                extra,
                0,
                "{ns}/{name} was woken though nothing it waits for changed; log {}",
                log_path.display()
            );
        }
    }
    assert_eq!(
        after[waiters.len()],
        before[waiters.len()],
        "the invalid Service was looked at again; log {}",
        log_path.display()
    );
    for (ns, name) in waiters.iter().filter(|(ns, n)| *ns == "wa" && n != "w00") {
        assert!(ips(&c.get(ns, name).await).is_empty(), "{ns}/{name}");
    }
}
