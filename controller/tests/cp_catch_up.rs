//! A new leader proves its warm caches current against a real API server before it restores
//! from them (`ferrolb_controller::catch_up`). The cache here is played by a revision the
//! test sets by hand, so the test decides how far behind it is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Cluster;
use ferrolb_controller::catch_up::{Behind, prove_current};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

fn revision(s: &Service) -> u64 {
    s.metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

async fn label(c: &Cluster, name: &str, value: &str) -> u64 {
    let api: Api<Service> = Api::namespaced(c.client(), "default");
    let patch = json!({"metadata": {"labels": {"step": value}}});
    let s = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    revision(&s)
}

#[tokio::test]
async fn a_cache_shown_to_lack_a_change_is_waited_for_and_one_that_lacks_nothing_is_not() {
    let c = Cluster::start(0).await;
    let api: Api<Service> = Api::all(c.client());
    c.service("default", "a", json!({}), json!({})).await;
    let first = revision(&c.get("default", "a").await);

    // Another kind's writes move the cluster's revision on; they are no Service change.
    let cms: Api<ConfigMap> = Api::namespaced(c.client(), "default");
    for i in 0..3 {
        let cm = json!({"metadata": {"name": format!("other-{i}")}});
        cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap())
            .await
            .unwrap();
    }
    let (applied, cache) = watch::channel(first);
    let waited = prove_current(&api, cache.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        waited, 0,
        "a cache that holds the newest Service is current"
    );

    // A change the cache has not applied: the proof waits for it.
    let second = label(&c, "a", "two").await;
    let proof = tokio::spawn({
        let (api, cache) = (api.clone(), cache.clone());
        async move { prove_current(&api, cache, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !proof.is_finished(),
        "the proof came back while the cache lacked revision {second}: {:?}",
        proof.await
    );
    applied.send_replace(second);
    assert_eq!(proof.await.unwrap().unwrap(), 1);

    // A cache that does not get there in time is reported with how far it got.
    let third = label(&c, "a", "three").await;
    match prove_current(&api, cache.clone(), Duration::from_secs(1)).await {
        Err(Behind::Lagging { need, have, .. }) => {
            assert_eq!((need, have), (third, second));
        }
        other => panic!("expected Lagging, got {other:?}"),
    }

    // A cache that has seen nothing cannot be proven current.
    let (_empty, nothing) = watch::channel(0);
    assert!(matches!(
        prove_current(&api, nothing, Duration::from_secs(1)).await,
        Err(Behind::NothingSeen)
    ));
}
