//! The IPPool API against a real kube-apiserver: what the schema accepts, what it rejects
//! (and how it says so), and the status subresource.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use ferrolb_crds::{FamilyUsage, Forwarding, IPPool, IPPoolSpec, IPPoolStatus, L2Config};
use ferrolb_e2e::TestControlPlane;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, Time,
};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::Status as ErrorResponse;
use serde_json::json;
use std::collections::BTreeMap;

fn full_spec() -> IPPoolSpec {
    IPPoolSpec {
        addresses: vec![
            "192.168.10.200-192.168.10.250".into(),
            "2001:db8:10::/64".into(),
            "10.0.0.7".into(),
            "10.1.0.0/16".into(),
            "2001:db8:20::1-2001:db8:20::ff".into(),
        ],
        auto_assign: false,
        avoid_buggy_ips: true,
        disabled: true,
        priority: -3,
        service_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "edge".into())])),
            match_expressions: None,
        }),
        namespace_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        }),
        forwarding: Forwarding::NodePort,
        l2: Some(L2Config {
            node_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("lb".into(), "yes".into())])),
                match_expressions: None,
            }),
            interfaces: vec!["^eth[0-9]+$".into(), "bond0".into()],
        }),
    }
}

/// Creates an IPPool from raw JSON, the way `kubectl apply` would, and returns the API
/// server's verdict.
async fn create_raw(
    client: &kube::Client,
    name: &str,
    spec: serde_json::Value,
) -> Result<DynamicObject, ErrorResponse> {
    let ar = ApiResource::erase::<IPPool>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ferrolb.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(e)) => Err(*e),
        Err(other) => panic!("unexpected client error: {other}"),
    }
}

#[tokio::test]
async fn ippool_api_accepts_valid_pools_and_rejects_malformed_ones() {
    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    let pools: Api<IPPool> = Api::all(client.clone());

    // A pool with every field set round-trips unchanged.
    let created = pools
        .create(&PostParams::default(), &IPPool::new("full", full_spec()))
        .await
        .unwrap();
    assert_eq!(created.spec, full_spec());
    assert_eq!(pools.get("full").await.unwrap().spec, full_spec());

    // Omitted fields get the documented defaults from the schema.
    let minimal = create_raw(&client, "minimal", json!({"addresses": ["10.2.0.0/24"]}))
        .await
        .unwrap();
    let spec: IPPoolSpec = serde_json::from_value(minimal.data["spec"].clone()).unwrap();
    assert!(spec.auto_assign && !spec.avoid_buggy_ips && !spec.disabled);
    assert_eq!((spec.priority, spec.forwarding), (0, Forwarding::KubeProxy));
    assert_eq!(minimal.data["spec"]["avoidBuggyIPs"], json!(false));

    // Every malformed case is refused by the API server, with a message naming the problem.
    let cases: Vec<(&str, serde_json::Value, &[&str])> = vec![
        (
            "empty",
            json!({"addresses": []}),
            &["spec.addresses", "at least 1 item"],
        ),
        ("missing", json!({}), &["spec.addresses", "Required value"]),
        (
            "not-an-address",
            json!({"addresses": ["10.0.0.0/24", "banana"]}),
            &["spec.addresses[1]", "\"banana\" is not a CIDR"],
        ),
        (
            "bad-prefix",
            json!({"addresses": ["10.0.0.0/33"]}),
            &["spec.addresses[0]", "\"10.0.0.0/33\" is not a CIDR"],
        ),
        (
            "bad-range-end",
            json!({"addresses": ["10.0.0.1-10.0.0"]}),
            &["\"10.0.0.1-10.0.0\" is not a CIDR"],
        ),
        (
            "host-bits",
            json!({"addresses": ["10.0.0.1/24"]}),
            &["CIDR 10.0.0.1/24 has host bits set"],
        ),
        (
            "reversed-v4",
            json!({"addresses": ["10.0.0.9-10.0.0.1"]}),
            &["range 10.0.0.9-10.0.0.1 is reversed: 10.0.0.9 comes after 10.0.0.1"],
        ),
        (
            "reversed-v4-high-bit",
            json!({"addresses": ["200.0.0.0-10.0.0.0"]}),
            &["range 200.0.0.0-10.0.0.0 is reversed"],
        ),
        (
            "reversed-v6",
            json!({"addresses": ["2001:db8::ff-2001:db8::1"]}),
            &["range 2001:db8::ff-2001:db8::1 is reversed"],
        ),
        (
            "reversed-v6-last-bit",
            json!({"addresses": ["2001:db8::1-2001:db8::"]}),
            &["range 2001:db8::1-2001:db8:: is reversed"],
        ),
        (
            "mixed",
            json!({"addresses": ["10.0.0.1-2001:db8::1"]}),
            &["range 10.0.0.1-2001:db8::1 mixes IPv4 and IPv6"],
        ),
        (
            "duplicate",
            json!({"addresses": ["10.0.0.1", "10.0.0.1"]}),
            &["spec.addresses[1]", "Duplicate value"],
        ),
        (
            "forwarding",
            json!({"addresses": ["10.0.0.1"], "forwarding": "Magic"}),
            &[
                "spec.forwarding",
                "Unsupported value: \"Magic\"",
                "\"KubeProxy\"",
                "\"NodePort\"",
            ],
        ),
        (
            "interface-regex",
            json!({"addresses": ["10.0.0.1"], "l2": {"interfaces": ["eth(0"]}}),
            &[
                "spec.l2.interfaces[0]",
                "error parsing regexp: missing closing )",
            ],
        ),
        (
            "selector-operator",
            json!({"addresses": ["10.0.0.1"], "serviceSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}}),
            &[
                "spec.serviceSelector.matchExpressions[0].operator",
                "Unsupported value: \"Equals\"",
                "\"DoesNotExist\"",
            ],
        ),
        (
            "selector-in-without-values",
            json!({"addresses": ["10.0.0.1"], "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}),
            &[
                "spec.namespaceSelector.matchExpressions[0].values",
                "operator In on key \"team\" needs at least one value",
            ],
        ),
        (
            "selector-notin-empty-values",
            json!({"addresses": ["10.0.0.1"], "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": []}]}}),
            &[
                "spec.namespaceSelector.matchExpressions[0].values",
                "operator NotIn on key \"team\" needs at least one value",
            ],
        ),
        (
            "selector-exists-with-values",
            json!({"addresses": ["10.0.0.1"], "l2": {"nodeSelector": {"matchExpressions": [{"key": "lb", "operator": "Exists", "values": ["yes"]}]}}}),
            &[
                "spec.l2.nodeSelector.matchExpressions[0].values",
                "operator Exists on key \"lb\" takes no values",
            ],
        ),
        (
            "selector-bad-key",
            json!({"addresses": ["10.0.0.1"], "serviceSelector": {"matchExpressions": [{"key": "-tier", "operator": "Exists"}]}}),
            &[
                "spec.serviceSelector.matchExpressions[0].key",
                "\"-tier\" is not a valid label key",
            ],
        ),
        (
            "selector-bad-value",
            json!({"addresses": ["10.0.0.1"], "serviceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge", "no spaces"]}]}}),
            &[
                "spec.serviceSelector.matchExpressions[0].values[1]",
                "\"no spaces\" is not a valid label value",
            ],
        ),
        (
            "selector-bad-label-key",
            json!({"addresses": ["10.0.0.1"], "serviceSelector": {"matchLabels": {"Example.com/tier": "edge"}}}),
            &[
                "spec.serviceSelector.matchLabels",
                "\"Example.com/tier\" is not a valid label key",
            ],
        ),
        (
            "selector-bad-label-value",
            json!({"addresses": ["10.0.0.1"], "l2": {"nodeSelector": {"matchLabels": {"lb": "yes!"}}}}),
            &[
                "spec.l2.nodeSelector.matchLabels[lb]",
                "\"yes!\" is not a valid label value",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, expected) in &cases {
        match create_raw(&client, name, spec.clone()).await {
            Ok(_) => failures.push(format!("{name}: accepted {spec}")),
            Err(e) => {
                if e.code != 422 || !expected.iter().all(|x| e.message.contains(x)) {
                    failures.push(format!("{name}: {} {}", e.code, e.message));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "wrong verdicts:\n{}",
        failures.join("\n")
    );

    // Edge cases that are valid stay accepted: equal ends, the top of the IPv4 space,
    // IPv6 ranges crossing a /64 boundary.
    for (name, addr) in [
        ("one-address-range", "10.9.0.5-10.9.0.5"),
        ("top", "255.255.255.254-255.255.255.255"),
        (
            "v6-cross",
            "2001:db8:0:1:ffff:ffff:ffff:fff0-2001:db8:0:2::10",
        ),
        ("v6-single", "2001:db8::42"),
    ] {
        create_raw(&client, name, json!({"addresses": [addr]}))
            .await
            .unwrap_or_else(|e| panic!("{addr} refused: {}", e.message));
    }

    // Selectors at the edges of what labels allow are accepted.
    create_raw(
        &client,
        "selector-edges",
        json!({"addresses": ["10.9.1.0/24"],
               "serviceSelector": {"matchLabels": {"app.kubernetes.io/name": "", "a": "A_b.c-9"},
                                   "matchExpressions": [{"key": "ferrolb.io/x", "operator": "DoesNotExist"},
                                                        {"key": "t", "operator": "NotIn", "values": ["x", ""]}]},
               "l2": {"nodeSelector": {"matchExpressions": [{"key": "node-role.kubernetes.io/edge", "operator": "Exists", "values": []}]}}}),
    )
    .await
    .unwrap_or_else(|e| panic!("valid selectors refused: {}", e.message));
}

#[tokio::test]
async fn status_is_a_subresource_written_separately_from_spec() {
    let cp = TestControlPlane::start().await.unwrap();
    let pools: Api<IPPool> = Api::all(cp.client());
    pools
        .create(&PostParams::default(), &IPPool::new("lan", full_spec()))
        .await
        .unwrap();

    let status = IPPoolStatus {
        ipv4: Some(FamilyUsage {
            total: "51".into(),
            used: "3".into(),
        }),
        ipv6: Some(FamilyUsage {
            total: "18446744073709551616".into(),
            used: "1".into(),
        }),
        usage: Some("v4 3/51, v6 1/18446744073709551616".into()),
        conditions: vec![Condition {
            type_: "Conflict".into(),
            status: "False".into(),
            reason: "NoOverlap".into(),
            message: "no other pool overlaps".into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            observed_generation: Some(1),
        }],
    };
    let pp = PatchParams::apply("ferrolb-test").force();
    let patch = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "status": status});
    let after = pools
        .patch_status("lan", &pp, &Patch::Apply(&patch))
        .await
        .unwrap();
    assert_eq!(
        after.spec,
        full_spec(),
        "a status write must not touch spec"
    );
    let got = after.status.clone().unwrap();
    assert_eq!(got.ipv6.unwrap().total, "18446744073709551616");
    assert_eq!(got.conditions[0].type_, "Conflict");
    let generation = after.metadata.generation;

    // Status sent to the main resource is dropped; spec changes there do not touch status.
    let mut spec = full_spec();
    spec.priority = 7;
    let patch = json!({
        "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "spec": spec,
        "status": {"usage": "forged"}
    });
    let after = pools
        .patch(
            "lan",
            &PatchParams::apply("ferrolb-test-user").force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    assert_eq!(after.spec.priority, 7);
    assert_eq!(
        after.status.unwrap().usage.as_deref(),
        Some("v4 3/51, v6 1/18446744073709551616")
    );
    assert!(
        after.metadata.generation > generation,
        "a spec change bumps the generation"
    );

    // A malformed status count is refused too.
    let bad = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "status": {"ipv4": {"total": "-1", "used": "0"}}});
    let err = pools
        .patch_status("lan", &pp, &Patch::Apply(&bad))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("status.ipv4.total"), "{err}");

    // `kubectl get ipp` shows addresses, used/total and Conflict.
    let out = cp.kubectl(&["get", "ipp", "lan"]).unwrap();
    let header = out.lines().next().unwrap();
    for col in [
        "NAME",
        "ADDRESSES",
        "USED/TOTAL",
        "READY",
        "CONFLICT",
        "AGE",
    ] {
        assert!(header.contains(col), "missing column {col}: {out}");
    }
    assert!(out.contains("v4 3/51, v6 1/18446744073709551616"), "{out}");
    assert!(out.contains("192.168.10.200-192.168.10.250"), "{out}");
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.contains("False"),
        "Conflict column shows the condition: {out}"
    );
}
