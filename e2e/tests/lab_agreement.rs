//! Speakers compare their views: a speaker that misses a change (its node cut off from the
//! API server) does not claim an IP its peers' elections give it, and the peers say so -
//! counted, in `/metrics`, and on the `ferrolb.io/Announced` message of the Services they
//! report on - until the views agree again. Needs a lab (it changes a node's firewall).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::lab::faults::NoApi;
use ferrolb_e2e::objects::announced_owners;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const POOL: &str = "e2e-agreement";
const DISAGREEING: &str = "ferrolb_peers_disagreeing";
const DISAGREEMENTS: &str = "ferrolb_ownership_disagreements_total";

struct Pool {
    kubeconfig: std::path::PathBuf,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = ferrolb_e2e::bins::kubectl(
            &self.kubeconfig,
            &[
                "delete",
                "ippool",
                POOL,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

#[tokio::test]
async fn a_speaker_that_misses_a_change_is_seen_to_disagree_until_it_catches_up() {
    let c = Cluster::connect().await.unwrap();
    let lab = c.lab().expect("a lab test: it changes a node's firewall");
    c.ensure_healthy().await.unwrap();
    c.wait_speakers_converged(Duration::from_secs(60))
        .await
        .unwrap();
    let ns = c.namespace("agree").await.unwrap();
    let nodes = c.node_names();
    let others: Vec<String> = nodes[1..].to_vec();
    let cut_node = nodes[0].clone();

    // A Service the others report on: Local, with pods only on the nodes that will not be
    // cut, so only they can own it and the note has somewhere to appear.
    c.web_service(&ns.name, &others, json!({"externalTrafficPolicy": "Local"}))
        .await
        .unwrap();
    let reported = |cond: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
        cond.as_ref()
            .filter(|c| c.status == "True")
            .map(|c| announced_owners(&c.message))
            .is_some_and(|o| !o.is_empty() && o.values().all(|n| others.contains(n)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reported(&c.announced(&ns.name, "web").await) {
        assert!(
            Instant::now() < deadline,
            "web not announced by {others:?}: {:?}",
            c.announced(&ns.name, "web").await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before: Vec<u64> = others
        .iter()
        .map(|n| c.speaker_metric(n, DISAGREEMENTS).unwrap())
        .collect();
    for n in &nodes {
        assert_eq!(
            c.speaker_metric(n, DISAGREEING),
            Some(0),
            "{n} before the cut"
        );
    }

    // A pool only the cut node may announce, and a Service in it created while that node
    // cannot see the API: the others' elections give its IP to that node, which never
    // hears of it and claims nothing for it.
    let pool = Pool {
        kubeconfig: c.kubeconfig(),
    };
    let api: Api<ferrolb_crds::IPPool> = Api::all(c.client());
    let obj = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": POOL},
        "spec": {"addresses": c.spare_pool(80, 4), "autoAssign": false,
            "l2": {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": cut_node}}}}});
    api.patch(
        POOL,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
    let cut = NoApi::on(lab, &cut_node).unwrap();
    let cut_at = Instant::now();
    let svc: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.client(), &ns.name);
    let unseen = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "unseen", "annotations": {"ferrolb.io/ip-pool": POOL}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]}});
    svc.patch(
        "unseen",
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&unseen),
    )
    .await
    .unwrap();

    // Within the grace period (10 s) and a round or two, before the cut speaker's own
    // view turns stale (30 s), the others disagree with it and say so on web.
    let deadline = Instant::now() + Duration::from_secs(60);
    let note = format!("node {cut_node} announces");
    loop {
        let message = c
            .announced(&ns.name, "web")
            .await
            .map(|c| c.message)
            .unwrap_or_default();
        let gauges: Vec<Option<u64>> = others
            .iter()
            .map(|n| c.speaker_metric(n, DISAGREEING))
            .collect();
        if message.contains("Speakers' views differ")
            && message.contains(&note)
            && gauges.contains(&Some(1))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no disagreement said {:?} after the cut: web says {message:?}, {DISAGREEING} on {others:?}: {gauges:?}",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after: Vec<u64> = others
        .iter()
        .map(|n| c.speaker_metric(n, DISAGREEMENTS).unwrap())
        .collect();
    assert!(
        after.iter().zip(&before).any(|(a, b)| a > b),
        "counted: {before:?} -> {after:?}"
    );

    // The API back: the cut speaker sees the Service, claims its IP, and the note goes.
    drop(cut);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let message = c
            .announced(&ns.name, "web")
            .await
            .map(|c| c.message)
            .unwrap_or_default();
        let gauges: Vec<Option<u64>> = nodes
            .iter()
            .map(|n| c.speaker_metric(n, DISAGREEING))
            .collect();
        if !message.contains("Speakers' views differ") && gauges.iter().all(|g| *g == Some(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still disagreeing 120 s after the API came back: web says {message:?}, {DISAGREEING}: {gauges:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let unseen = c.announced(&ns.name, "unseen").await;
    assert!(
        unseen
            .as_ref()
            .is_some_and(|u| u.status == "True" && u.message.contains(&cut_node)),
        "unseen is announced by {cut_node}: {unseen:?}"
    );
    drop(pool);
}
