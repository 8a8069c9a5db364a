//! `helm uninstall` on kind leaves no ferrolb object behind, and keeps the IPPool CRD (with
//! every IPPool) unless the user asked for it to go. Destroys the installation: `make
//! kind-tests` runs it last.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use ferrolb_e2e::kind::{self, KindState};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope};

fn helm(k: &KindState, args: &[&str]) -> String {
    let kc = k.kubeconfig.display().to_string();
    let mut v: Vec<&str> = args.to_vec();
    v.extend(["--namespace", &k.namespace, "--kubeconfig", &kc]);
    ferrolb_e2e::helm::helm(&v).unwrap()
}

/// Whether an object is ferrolb's: named like it, labelled part of it, or managed by its
/// release. The kind cluster is named `ferrolb` too, so its nodes' own objects (Node,
/// CSINode: named after a node) are not.
fn is_ferrolb(o: &DynamicObject, nodes: &[String]) -> bool {
    let m = &o.metadata;
    let name = m.name.as_deref().unwrap_or("");
    if nodes.iter().any(|n| n == name) {
        return false;
    }
    let labelled = m.labels.as_ref().is_some_and(|l| {
        l.get("app.kubernetes.io/part-of").map(String::as_str) == Some("ferrolb")
            || l.get("app.kubernetes.io/instance").map(String::as_str) == Some("ferrolb")
    });
    name.starts_with("ferrolb") || labelled
}

/// Every ferrolb object the API server holds, as `kind/namespace/name`, except Events
/// (they expire on their own), Namespaces (the release namespace is the user's, made by
/// `helm install --create-namespace`, which Helm never deletes) and, when `keep_crd`, the
/// CRD and its IPPools.
async fn leftovers(
    client: &kube::Client,
    discovery: &Discovery,
    nodes: &[String],
    namespace: &str,
    keep_crd: bool,
) -> Vec<String> {
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(kube::discovery::verbs::LIST)
                || ar.kind == "Event"
                || ar.kind == "Namespace"
                || (keep_crd && ar.group == "ferrolb.io")
            {
                continue;
            }
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Cluster => Api::all_with(client.clone(), &ar),
                Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &ar),
            };
            let Ok(list) = api.list(&ListParams::default()).await else {
                continue;
            };
            for o in list.items.iter().filter(|o| is_ferrolb(o, nodes)) {
                if keep_crd
                    && ar.kind == "CustomResourceDefinition"
                    && o.metadata.name.as_deref() == Some("ippools.ferrolb.io")
                {
                    continue;
                }
                found.push(format!(
                    "{}/{}/{}",
                    ar.kind,
                    o.metadata.namespace.as_deref().unwrap_or("-"),
                    o.metadata.name.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    found.sort();
    found
}

/// Waits (garbage collection and pod termination take a while) until nothing of ferrolb is
/// left; the leftovers otherwise.
async fn wait_gone(client: &kube::Client, namespace: &str, keep_crd: bool) -> Vec<String> {
    // What the server serves, and its nodes, once: a resource gone meanwhile (the CRD) is
    // skipped by its failing list. Discovery itself fails (404) when a group vanishes
    // between its listing and its fetch - the CRD being deleted right then, as it is when
    // the uninstall removes it: asked again, it no longer lists that group.
    let mut tries = 0;
    let discovery = loop {
        match Discovery::new(client.clone()).run().await {
            Ok(d) => break d,
            Err(e) if tries < 20 => {
                tries += 1;
                eprintln!("discovery failed ({e}); asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("discovery keeps failing: {e}"),
        }
    };
    let nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = leftovers(client, &discovery, &nodes, namespace, keep_crd).await;
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn crd_exists(client: &kube::Client) -> bool {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get_opt("ippools.ferrolb.io").await.unwrap().is_some()
}

async fn pools(client: &kube::Client) -> Vec<String> {
    let ar = ApiResource::erase::<ferrolb_crds::IPPool>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn helm_uninstall_leaves_no_ferrolb_object_behind_and_keeps_the_crd_unless_asked() {
    let k =
        KindState::load(&kind::default_state_dir()).expect("a kind cluster made by `make kind`");
    let text = kind::read(&k.kubeconfig).unwrap();
    let client = ferrolb_e2e::control_plane::client_from_kubeconfig(&text)
        .await
        .unwrap();
    let before = pools(&client).await;
    assert!(!before.is_empty(), "make kind created an IPPool");
    let values = helm(&k, &["get", "values", &k.release, "--output", "json"]);
    let values_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values_file.path(), &values).unwrap();

    // Default: the CRD and the IPPools stay, everything else goes (the gossip Secret and
    // the Lease the controller made included).
    helm(&k, &["uninstall", &k.release, "--wait", "--timeout", "3m"]);
    let left = wait_gone(&client, &k.namespace, true).await;
    assert!(
        left.is_empty(),
        "left behind after helm uninstall: {left:?}"
    );
    assert!(crd_exists(&client).await, "the CRD is kept by default");
    assert_eq!(pools(&client).await, before, "the IPPools are kept with it");

    // Asked for: installed again with crds.keep=false, uninstall takes the CRD too.
    let chart = ferrolb_e2e::helm::chart_dir().display().to_string();
    helm(
        &k,
        &[
            "install",
            &k.release,
            &chart,
            "--values",
            &values_file.path().display().to_string(),
            "--set",
            "crds.keep=false",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    helm(&k, &["uninstall", &k.release, "--wait", "--timeout", "3m"]);
    let left = wait_gone(&client, &k.namespace, false).await;
    assert!(
        left.is_empty(),
        "left behind after helm uninstall with crds.keep=false: {left:?}"
    );
    assert!(!crd_exists(&client).await, "the CRD was removed as asked");
}
