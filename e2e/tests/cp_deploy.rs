//! `deploy/` against a real API server: the Kustomize base applies cleanly, and the
//! controller's and the speaker's RBAC grant what they need and nothing they should not have.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use ferrolb_e2e::TestControlPlane;

#[tokio::test]
async fn the_base_applies_and_rbac_is_least_privilege() {
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
        "serviceaccount/ferrolb-speaker",
        "clusterrole.rbac.authorization.k8s.io/ferrolb-speaker",
        "daemonset.apps/ferrolb-speaker",
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
    let speaker = |path: &str| {
        cp.kubectl(&[
            "get",
            "ds",
            "-n",
            "ferrolb-system",
            "ferrolb-speaker",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .unwrap()
    };
    assert_eq!(speaker(".spec.template.spec.hostNetwork"), "true");
    assert_eq!(
        speaker(".spec.template.spec.containers[0].securityContext.capabilities"),
        r#"{"add":["NET_RAW","NET_ADMIN"],"drop":["ALL"]}"#
    );

    let kubectl = ferrolb_e2e::bins::binary("kubectl").unwrap();
    // `kubectl auth can-i` prints yes or no. WHAT is TYPE, TYPE/NAME, or TYPE/status for the
    // status subresource.
    let can_as = |account: &str, verb: &str, what: &str, ns: Option<&str>| -> bool {
        let (resource, sub) = match what.split_once('/') {
            Some((r, "status")) => (r, Some("status")),
            _ => (what, None),
        };
        let mut cmd = std::process::Command::new(&kubectl);
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
            .args(["auth", "can-i", verb, resource])
            .arg(format!(
                "--as=system:serviceaccount:ferrolb-system:{account}"
            ));
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
    let can =
        |verb: &str, what: &str, ns: Option<&str>| can_as("ferrolb-controller", verb, what, ns);
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
        ("get", "secrets/ferrolb-gossip", Some("ferrolb-system")),
        ("create", "secrets", Some("ferrolb-system")),
        (
            "get",
            "serviceaccounts/ferrolb-controller",
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
        ("list", "secrets", Some("ferrolb-system")),
        ("get", "secrets/someone-else", Some("ferrolb-system")),
        ("update", "secrets/ferrolb-gossip", Some("ferrolb-system")),
        ("delete", "secrets/ferrolb-gossip", Some("ferrolb-system")),
        ("create", "secrets", Some("default")),
        (
            "update",
            "leases.coordination.k8s.io/someone-else",
            Some("ferrolb-system"),
        ),
        ("create", "pods", Some("default")),
        (
            "get",
            "serviceaccounts/ferrolb-speaker",
            Some("ferrolb-system"),
        ),
        ("list", "serviceaccounts", Some("ferrolb-system")),
        (
            "update",
            "serviceaccounts/ferrolb-controller",
            Some("ferrolb-system"),
        ),
    ] {
        assert!(
            !can(verb, what, ns),
            "the controller must not {verb} {what}"
        );
    }

    let speaker_can =
        |verb: &str, what: &str, ns: Option<&str>| can_as("ferrolb-speaker", verb, what, ns);
    for (verb, what, ns) in [
        ("get", "nodes", None),
        ("watch", "nodes", None),
        ("watch", "services", None),
        ("patch", "services/status", Some("default")),
        ("watch", "endpointslices.discovery.k8s.io", None),
        ("watch", "ippools.ferrolb.io", None),
        ("create", "events.events.k8s.io", Some("default")),
        ("get", "secrets/ferrolb-gossip", Some("ferrolb-system")),
    ] {
        assert!(
            speaker_can(verb, what, ns),
            "the speaker needs to {verb} {what}"
        );
    }
    for (verb, what, ns) in [
        ("patch", "nodes", None),
        ("get", "services", Some("default")),
        ("update", "services", Some("default")),
        ("patch", "services", Some("default")),
        ("patch", "ippools.ferrolb.io/status", None),
        ("list", "secrets", Some("ferrolb-system")),
        ("get", "secrets/someone-else", Some("ferrolb-system")),
        ("get", "secrets/ferrolb-gossip", Some("default")),
        ("create", "secrets", Some("ferrolb-system")),
        ("update", "secrets/ferrolb-gossip", Some("ferrolb-system")),
        (
            "create",
            "leases.coordination.k8s.io",
            Some("ferrolb-system"),
        ),
        ("create", "pods", Some("default")),
    ] {
        assert!(
            !speaker_can(verb, what, ns),
            "the speaker must not {verb} {what}"
        );
    }
}
