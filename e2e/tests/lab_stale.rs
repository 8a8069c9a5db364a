//! A speaker whose view of the cluster goes stale: its node can no longer reach the API
//! server (TCP to port 6443 refused in the node's namespace, open connections reset), while
//! the node itself stays Ready (the lab's agent, which plays kubelet, runs outside it) and
//! gossip still works. The speaker must say so (`/readyz` fails), and its peers, whose view
//! is fresh, must take its IPs; once the API is back it is ready again. Needs a lab.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::lab::cluster::speaker_admin_address;
use ferrolb_e2e::lab::faults::NoApi;
use ferrolb_e2e::lab::handle::Lab;
use ferrolb_e2e::objects::announced_owners;
use serde_json::json;

/// The HTTP status of `node`'s speaker `/readyz`.
fn readyz(lab: &Lab, node: &str) -> Option<u16> {
    let addr = speaker_admin_address(lab.plan.node(node)?).ok()?;
    lab.exec(
        node,
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            "-g",
            &format!("http://{addr}/readyz"),
        ],
    )
    .ok()?
    .trim()
    .parse()
    .ok()
}

async fn owners(c: &Cluster, ns: &str) -> Vec<(IpAddr, String)> {
    c.announced(ns, "web")
        .await
        .filter(|c| c.status == "True")
        .map(|c| announced_owners(&c.message).into_iter().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_speaker_cut_off_from_the_api_turns_unready_and_its_peers_take_its_ips() {
    let c = Cluster::connect().await.unwrap();
    let lab = c.lab().expect("a lab test: it changes a node's firewall");
    c.ensure_healthy().await.unwrap();
    let ns = c.namespace("stale").await.unwrap();
    let nodes = c.node_names();
    c.web_service(&ns.name, &nodes, json!({})).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ip, owner) = loop {
        if let Some(first) = owners(&c, &ns.name).await.into_iter().next() {
            break first;
        }
        assert!(Instant::now() < deadline, "web not announced within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ip.is_ipv4(), "an IPv4 lab (the client asks with arping)");
    assert_eq!(
        readyz(lab, &owner),
        Some(200),
        "{owner}'s speaker ready at first"
    );

    let cut = NoApi::on(lab, &owner).unwrap();
    // The watches fail for --stale-after (30 s) with their retries, then the speaker turns
    // Stale: unready, and a peer with a fresh view takes the IP.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = owners(&c, &ns.name).await;
        let moved = now.iter().any(|(i, o)| *i == ip && *o != owner);
        let status = readyz(lab, &owner);
        if moved && status == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ip}: {owner} cut off from the API for 120 s; its /readyz says {status:?}, \
             the condition says {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let new_owner = owners(&c, &ns.name)
        .await
        .into_iter()
        .find(|(i, _)| *i == ip)
        .map(|(_, o)| o)
        .unwrap();
    let mac = c.node_mac(&new_owner).unwrap();
    let iface = c.client_iface();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resolved = c
            .client_exec(
                "arping",
                &["-r", "-c", "1", "-w", "2", "-I", &iface, &ip.to_string()],
            )
            .ok()
            .and_then(|o| o.lines().next().map(|l| l.trim().to_lowercase()));
        if resolved.as_deref() == Some(mac.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ip} resolves to {resolved:?}, not to {new_owner} ({mac})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(cut);
    let deadline = Instant::now() + Duration::from_secs(120);
    while readyz(lab, &owner) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{owner}'s speaker not ready again within 120 s of the API coming back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
