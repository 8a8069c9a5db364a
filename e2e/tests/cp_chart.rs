//! The Helm chart against a real API server: `helm install` of the default chart is accepted
//! object by object, its pods would be admitted (priority classes outside kube-system
//! included), `helm uninstall` leaves nothing of ferrolb behind but the CRD (and that only
//! while crds.keep is true), and the gossip-Secret values give each component exactly the
//! Secret access it needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::time::{Duration, Instant};

use ferrolb_e2e::{ControlPlaneOptions, TestControlPlane, helm};
use serde_yaml::Value;

/// Every kind the chart may create, for listing what is left.
const KINDS: &str = "serviceaccounts,roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io,deployments.apps,daemonsets.apps,services,poddisruptionbudgets.policy,secrets,customresourcedefinitions.apiextensions.k8s.io";
const CRD: &str = "customresourcedefinition.apiextensions.k8s.io/ippools.ferrolb.io";

/// A control plane without ferrolb's CRD: the chart brings it.
async fn bare_control_plane() -> TestControlPlane {
    TestControlPlane::start_with(ControlPlaneOptions {
        install_crds: false,
        ..ControlPlaneOptions::default()
    })
    .await
    .unwrap()
}

fn helm_on(cp: &TestControlPlane, args: &[&str]) -> String {
    let kc = format!("--kubeconfig={}", cp.kubeconfig_path().display());
    let mut a: Vec<&str> = args.to_vec();
    a.push(&kc);
    helm::helm(&a).unwrap_or_else(|e| panic!("{e}"))
}

fn install(cp: &TestControlPlane, release: &str, namespace: &str, sets: &[&str]) -> String {
    let chart = helm::chart_dir().display().to_string();
    let mut a = vec![
        "install",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--create-namespace",
    ];
    for s in sets {
        a.extend(["--set", s]);
    }
    helm_on(cp, &a)
}

/// Every object labelled as ferrolb's, as `kind.group/name`, sorted.
fn ferrolb_objects(cp: &TestControlPlane) -> Vec<String> {
    let out = cp
        .kubectl(&[
            "get",
            KINDS,
            "--all-namespaces",
            "-l",
            "app.kubernetes.io/part-of=ferrolb",
            "-o",
            "name",
        ])
        .unwrap();
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// `spec.priority` the API server gives a pod made from this workload's template, by a
/// server-side dry run (nothing is created): admission decides as for a real pod.
fn admitted_priority(cp: &TestControlPlane, dir: &Path, workload: &Value, name: &str) -> String {
    let template = &workload["spec"]["template"];
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": workload["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, pod.to_string()).unwrap();
    cp.kubectl(&[
        "create",
        "--dry-run=server",
        "-f",
        path.to_str().unwrap(),
        "-o",
        "jsonpath={.spec.priority}",
    ])
    .unwrap_or_else(|e| panic!("pod of {name} not admitted: {e}"))
}

#[tokio::test]
async fn the_default_chart_installs_and_uninstall_keeps_only_the_crd_unless_asked() {
    let cp = bare_control_plane().await;
    let notes = install(&cp, "ferrolb", "ferrolb-system", &[]);

    // Helm applied every rendered object and the API server accepted each; list them back.
    let manifest = helm_on(
        &cp,
        &[
            "get",
            "manifest",
            "ferrolb",
            "--namespace",
            "ferrolb-system",
        ],
    );
    let objects = helm::documents(&manifest).unwrap();
    let listed = ferrolb_objects(&cp);
    assert_eq!(listed.len(), objects.len(), "{listed:#?}");
    for want in [
        CRD,
        "deployment.apps/ferrolb-controller",
        "daemonset.apps/ferrolb-speaker",
        "poddisruptionbudget.policy/ferrolb-controller",
        "service/ferrolb-controller-metrics",
        "service/ferrolb-speaker-metrics",
    ] {
        assert!(
            listed.iter().any(|o| o == want),
            "{want} not installed: {listed:#?}"
        );
    }
    let established = cp
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/ippools.ferrolb.io",
            "--timeout=30s",
        ])
        .unwrap();
    assert!(established.contains("condition met"), "{established}");

    // The pods would be admitted in ferrolb-system with the system priority classes (not
    // only in kube-system): system-cluster-critical = 2000000000, system-node-critical =
    // 2000001000.
    let dir = tempfile::tempdir().unwrap();
    let find = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    assert_eq!(
        admitted_priority(&cp, dir.path(), find("Deployment"), "probe-controller"),
        "2000000000"
    );
    assert_eq!(
        admitted_priority(&cp, dir.path(), find("DaemonSet"), "probe-speaker"),
        "2000001000"
    );

    // The IPPool the NOTES tell the user to create is accepted as written.
    let pool = notes
        .split_once("<<'YAML'\n")
        .and_then(|(_, rest)| rest.split_once("\nYAML\n"))
        .map(|(pool, _)| pool)
        .unwrap_or_else(|| panic!("no IPPool in the NOTES:\n{notes}"));
    let pool_file = dir.path().join("pool.yaml");
    std::fs::write(&pool_file, pool).unwrap();
    cp.kubectl(&["apply", "-f", pool_file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("the NOTES' IPPool: {e}"));

    // Uninstall: only the CRD stays (crds.keep defaults to true), so IPPools survive.
    helm_on(
        &cp,
        &["uninstall", "ferrolb", "--namespace", "ferrolb-system"],
    );
    assert_eq!(ferrolb_objects(&cp), vec![CRD.to_string()]);
    assert_eq!(
        cp.kubectl(&["get", "ipp", "-o", "name"]).unwrap().trim(),
        "ippool.ferrolb.io/lan"
    );

    // A new install takes the kept CRD over; with crds.keep=false uninstall removes it too.
    install(&cp, "ferrolb", "ferrolb-system", &["crds.keep=false"]);
    assert_eq!(ferrolb_objects(&cp).len(), objects.len());
    helm_on(
        &cp,
        &["uninstall", "ferrolb", "--namespace", "ferrolb-system"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = ferrolb_objects(&cp);
        if left.is_empty() {
            break;
        }
        // The CRD may take a moment: the API server first removes its (zero) objects.
        assert!(
            Instant::now() < deadline && left == vec![CRD.to_string()],
            "left after uninstall with crds.keep=false: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kubectl auth can-i` as a ServiceAccount: yes or no.
fn can(cp: &TestControlPlane, account: &str, verb: &str, what: &str, ns: &str) -> bool {
    let kubectl = ferrolb_e2e::bins::binary("kubectl").unwrap();
    let out = std::process::Command::new(kubectl)
        .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .args(["auth", "can-i", verb, what, "-n", ns])
        .arg(format!("--as=system:serviceaccount:{ns}:{account}"))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

#[tokio::test]
async fn gossip_secret_values_grant_each_component_only_its_secret() {
    let cp = bare_control_plane().await;
    // Another release name and namespace; the CRD left out (as when it is managed apart).
    install(
        &cp,
        "edge",
        "lb",
        &["crds.install=false", "gossip.existingSecret=my-gossip"],
    );
    let (speaker, controller) = ("edge-ferrolb-speaker", "edge-ferrolb-controller");
    assert!(can(&cp, speaker, "get", "secrets/my-gossip", "lb"));
    assert!(!can(
        &cp,
        speaker,
        "get",
        "secrets/edge-ferrolb-gossip",
        "lb"
    ));
    assert!(!can(&cp, speaker, "list", "secrets", "lb"));
    // The user's Secret is theirs: the controller may neither create nor read Secrets.
    assert!(!can(&cp, controller, "create", "secrets", "lb"));
    assert!(!can(&cp, controller, "get", "secrets/my-gossip", "lb"));
    assert!(can(
        &cp,
        controller,
        "update",
        "leases.coordination.k8s.io/edge-ferrolb-controller",
        "lb"
    ));
    assert!(!can(
        &cp,
        controller,
        "update",
        "leases.coordination.k8s.io/ferrolb-controller",
        "lb"
    ));
    helm_on(&cp, &["uninstall", "edge", "--namespace", "lb"]);

    // A key given: the chart makes the Secret; again the controller gets no Secret access.
    install(
        &cp,
        "edge",
        "lb",
        &[
            "crds.install=false",
            "gossip.key=0123456789abcdef0123456789abcdef",
        ],
    );
    let key = cp
        .kubectl(&[
            "get",
            "secret",
            "-n",
            "lb",
            "edge-ferrolb-gossip",
            "-o",
            "jsonpath={.data.key}",
        ])
        .unwrap();
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .unwrap(),
        b"0123456789abcdef0123456789abcdef"
    );
    assert!(can(
        &cp,
        speaker,
        "get",
        "secrets/edge-ferrolb-gossip",
        "lb"
    ));
    assert!(!can(&cp, controller, "create", "secrets", "lb"));
    assert!(!can(
        &cp,
        controller,
        "get",
        "secrets/edge-ferrolb-gossip",
        "lb"
    ));
}
