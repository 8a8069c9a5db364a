//! `deploy/` against a real API server: the Kustomize base applies cleanly, and the
//! controller's RBAC grants what it needs and nothing it should not have.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use ferrolb_e2e::TestControlPlane;

#[tokio::test]
async fn the_base_applies_and_controller_rbac_is_least_privilege() {
    let cp = TestControlPlane::start().await.unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = cp
        .kubectl(&["apply", "--server-side", "-k", deploy.to_str().unwrap()])
        .unwrap();
    for obj in [
        "namespace/ferrolb-system",
        "customresourcedefinition.apiextensions.k8s.io/ippools.ferrolb.io",
        "serviceaccount/ferrolb-controller",
        "clusterrole.rbac.authorization.k8s.io/ferrolb-controller",
        "deployment.apps/ferrolb-controller",
    ] {
        assert!(out.contains(obj), "{obj} not applied:\n{out}");
    }
    let replicas = cp
        .kubectl(&[
            "get",
            "deploy",
            "-n",
            "ferrolb-system",
            "ferrolb-controller",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .unwrap();
    assert_eq!(replicas, "2");

    let kubectl = ferrolb_e2e::bins::binary("kubectl").unwrap();
    // `kubectl auth can-i` prints yes or no; WHAT may carry a subresource after a '/'.
    let can = |verb: &str, what: &str, ns: Option<&str>| -> bool {
        let (resource, sub) = match what.split_once('/') {
            Some((r, s)) if !r.contains('.') || s == "status" => (r, Some(s)),
            _ => (what, None),
        };
        let mut cmd = std::process::Command::new(&kubectl);
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
            .args(["auth", "can-i", verb, resource])
            .arg("--as=system:serviceaccount:ferrolb-system:ferrolb-controller");
        if let Some(s) = sub {
            cmd.arg(format!("--subresource={s}"));
        }
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        let out = cmd.output().unwrap();
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            answer == "yes" || answer == "no",
            "{answer} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answer == "yes"
    };
    for (verb, what, ns) in [
        ("watch", "services", None),
        ("patch", "services/status", Some("default")),
        ("list", "ippools.ferrolb.io", None),
        ("patch", "ippools.ferrolb.io/status", None),
        ("create", "events.events.k8s.io", Some("default")),
        (
            "update",
            "leases.coordination.k8s.io/ferrolb-controller",
            Some("ferrolb-system"),
        ),
    ] {
        assert!(can(verb, what, ns), "the controller needs to {verb} {what}");
    }
    for (verb, what, ns) in [
        ("update", "services", Some("default")),
        ("delete", "services", Some("default")),
        ("patch", "ippools.ferrolb.io", None),
        ("get", "secrets", Some("ferrolb-system")),
        (
            "update",
            "leases.coordination.k8s.io/someone-else",
            Some("ferrolb-system"),
        ),
        ("create", "pods", Some("default")),
    ] {
        assert!(
            !can(verb, what, ns),
            "the controller must not {verb} {what}"
        );
    }
}
