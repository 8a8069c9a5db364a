//! The lab against real components: kube-proxy, EndpointSlices, pods as processes in
//! their own namespaces, traffic from the `client` namespace. Needs a running lab
//! (`ferrolb-lab up`); `make test` brings one up for each proxy mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferrolb_e2e::lab::cli::NodeAction;
use ferrolb_e2e::lab::echo::EchoReply;
use ferrolb_e2e::lab::handle::Lab;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;

/// Retries `f` until it gives `Some`, for up to 30 s (kube-proxy programs rules
/// asynchronously).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn reply(body: Option<String>) -> Option<EchoReply> {
    EchoReply::parse(&body?)
}

fn node_ips(lab: &Lab) -> Vec<(String, String)> {
    lab.plan
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.lan_v4
                    .map(|a| a.to_string())
                    .or(n.lan_v6.map(|a| format!("[{a}]")))
                    .unwrap(),
            )
        })
        .collect()
}

fn client_ip(lab: &Lab) -> String {
    lab.plan
        .client_v4
        .map(|a| a.to_string())
        .or(lab.plan.client_v6.map(|a| a.to_string()))
        .unwrap()
}

#[tokio::test]
async fn cluster_ip_reachable_from_a_pod_on_another_node() {
    let lab = Lab::connect().await.unwrap();
    let ns = lab.namespace("clusterip").await.unwrap();
    lab.echo_pod(&ns.name, "backend", "node1", json!({"app": "backend"}))
        .await
        .unwrap();
    let caller = lab
        .echo_pod(&ns.name, "caller", "node2", json!({"app": "caller"}))
        .await
        .unwrap();
    let svc = lab
        .service(
            &ns.name,
            "backend",
            json!({"selector": {"app": "backend"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        )
        .await
        .unwrap();
    lab.wait_endpoints(&ns.name, "backend", 1).await.unwrap();
    let ip = svc.spec.unwrap().cluster_ip.unwrap();
    let url = if ip.contains(':') {
        format!("http://[{ip}]/")
    } else {
        format!("http://{ip}/")
    };
    let r = eventually("ClusterIP from a pod on node2", || {
        reply(
            lab.exec_in_pod(&caller, "curl", &["-sS", "--max-time", "3", "-g", &url])
                .ok(),
        )
    });
    assert_eq!(r.pod, format!("{}/backend", ns.name));
    assert_eq!(r.node, "node1");
}

#[tokio::test]
async fn node_port_reachable_from_the_client_on_every_node() {
    let lab = Lab::connect().await.unwrap();
    let ns = lab.namespace("nodeport").await.unwrap();
    lab.echo_pod(&ns.name, "web", "node1", json!({"app": "web"}))
        .await
        .unwrap();
    let svc = lab
        .service(&ns.name, "web", json!({"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}))
        .await
        .unwrap();
    lab.wait_endpoints(&ns.name, "web", 1).await.unwrap();
    let port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    for (node, ip) in node_ips(&lab) {
        let r = eventually(&format!("NodePort on {node}"), || {
            reply(lab.curl("client", &format!("http://{ip}:{port}/")))
        });
        assert_eq!(r.pod, format!("{}/web", ns.name), "via {node}");
    }
}

#[tokio::test]
async fn external_traffic_policy_local_keeps_traffic_and_the_client_address_on_the_node() {
    let lab = Lab::connect().await.unwrap();
    let ns = lab.namespace("local").await.unwrap();
    lab.echo_pod(&ns.name, "on-node1", "node1", json!({"app": "local"}))
        .await
        .unwrap();
    lab.echo_pod(&ns.name, "on-node2", "node2", json!({"app": "local"}))
        .await
        .unwrap();
    let svc = lab
        .service(
            &ns.name,
            "local",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local",
            "selector": {"app": "local"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        )
        .await
        .unwrap();
    lab.wait_endpoints(&ns.name, "local", 2).await.unwrap();
    let port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let ips = node_ips(&lab);
    for (node, ip) in &ips[..2] {
        let url = format!("http://{ip}:{port}/");
        eventually(&format!("Local NodePort on {node}"), || {
            reply(lab.curl("client", &url))
        });
        let mut answered = BTreeSet::new();
        for _ in 0..10 {
            let r = reply(lab.curl("client", &url)).expect("answer");
            let seen_ip = r.client.ip().to_string();
            assert_eq!(
                seen_ip,
                client_ip(&lab),
                "the backend sees the client's real address"
            );
            answered.insert(r.node);
        }
        assert_eq!(
            answered,
            BTreeSet::from([node.clone()]),
            "only {node}'s pod answers via {node}"
        );
    }
    // node3 has no local endpoint: it does not forward at all.
    let (_, ip3) = &ips[2];
    assert!(
        reply(lab.curl("client", &format!("http://{ip3}:{port}/"))).is_none(),
        "node3 forwarded Local traffic elsewhere"
    );
}

#[tokio::test]
async fn an_unready_pod_leaves_the_endpoints_and_gets_no_traffic() {
    let lab = Lab::connect().await.unwrap();
    let ns = lab.namespace("ready").await.unwrap();
    lab.echo_pod(&ns.name, "a", "node1", json!({"app": "r"}))
        .await
        .unwrap();
    lab.echo_pod(&ns.name, "b", "node2", json!({"app": "r"}))
        .await
        .unwrap();
    let svc = lab
        .service(&ns.name, "r", json!({"type": "NodePort", "selector": {"app": "r"}, "ports": [{"port": 80, "targetPort": 8080}]}))
        .await
        .unwrap();
    lab.wait_endpoints(&ns.name, "r", 2).await.unwrap();
    let port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let (_, ip) = node_ips(&lab).remove(0);
    let url = format!("http://{ip}:{port}/");
    // Both answer at first (random choice: try until both were seen). A pod never seen
    // is reported with what a node sees when it asks that pod directly.
    let pods: Api<Pod> = Api::namespaced(lab.client(), &ns.name);
    let mut pod_ips = Vec::new();
    for p in ["a", "b"] {
        let ip = pods.get(p).await.unwrap().status.and_then(|s| s.pod_ip);
        pod_ips.push((p, ip));
    }
    let mut seen = BTreeSet::new();
    let mut unanswered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        match reply(lab.curl("client", &url)) {
            Some(r) => {
                seen.insert(r.pod);
            }
            None => unanswered += 1,
        }
        if Instant::now() > deadline {
            let direct: Vec<String> = pod_ips
                .iter()
                .map(|(p, ip)| {
                    let got = ip
                        .as_ref()
                        .and_then(|ip| lab.curl("node1", &format!("http://{}:8080/", bracket(ip))));
                    format!("{p} at {ip:?} from node1: {got:?}")
                })
                .collect();
            panic!(
                "both pods answer: within 60 s only {seen:?} did ({unanswered} requests unanswered); {}",
                direct.join("; ")
            );
        }
    }
    lab.set_ready(&ns.name, "b", false).await.unwrap();
    lab.wait_endpoints(&ns.name, "r", 1).await.unwrap();
    // kube-proxy catches up; then b never answers.
    eventually("kube-proxy drops b", || {
        (0..10)
            .all(|_| reply(lab.curl("client", &url)).is_some_and(|r| r.pod.ends_with("/a")))
            .then_some(())
    });
    for _ in 0..20 {
        let r = reply(lab.curl("client", &url)).expect("answer");
        assert!(r.pod.ends_with("/a"), "unready pod answered: {r:?}");
    }
    lab.set_ready(&ns.name, "b", true).await.unwrap();
    lab.wait_endpoints(&ns.name, "r", 2).await.unwrap();
}

#[tokio::test]
async fn cut_makes_a_node_unreachable_and_heal_restores_it() {
    let lab = Lab::connect().await.unwrap();
    let (node, ip) = node_ips(&lab).pop().unwrap();
    // kube-proxy's health server listens on every node; no Service needed.
    let url = format!("http://{ip}:10256/healthz");
    eventually("node reachable before the cut", || lab.curl("client", &url));
    lab.node(&node, NodeAction::Cut).unwrap();
    let cut = lab.curl("client", &url);
    lab.node(&node, NodeAction::Heal).unwrap();
    assert!(cut.is_none(), "{node} answered while cut: {cut:?}");
    eventually("node reachable after heal", || lab.curl("client", &url));
}
