//! A LAN that snoops MLD, as managed switches do: the lab's bridge turns on multicast
//! snooping with a querier, and stops flooding multicast nobody reported to the nodes'
//! ports. A Neighbor Solicitation for a LoadBalancer IPv6 address goes to its
//! solicited-node group, so it reaches the owner only if the owner's kernel reported that
//! group (the speaker joins it in the IPv6 layer, not only on its packet socket). Needs a
//! lab with IPv6 (`make test` runs it on the dual-stack lab); the bridge is put back as it
//! was, also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::lab::handle::Lab;
use ferrolb_e2e::lab::topology::LAN_BRIDGE;
use ferrolb_e2e::objects::announced_owners;
use serde_json::json;

/// Snooping with a querier on the LAN bridge, and no flooding of unregistered multicast
/// to the nodes' ports, until dropped.
struct Snooping<'a> {
    lab: &'a Lab,
    ports: Vec<String>,
}

impl<'a> Snooping<'a> {
    fn on(lab: &'a Lab) -> Snooping<'a> {
        let ports: Vec<String> = lab
            .plan
            .nodes
            .iter()
            .map(|n| n.bridge_port.clone())
            .collect();
        let s = Snooping { lab, ports };
        lab.exec(
            "cp",
            "ip",
            &[
                "link",
                "set",
                LAN_BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "1",
                "mcast_querier",
                "1",
            ],
        )
        .unwrap();
        for p in &s.ports {
            lab.exec(
                "cp",
                "bridge",
                &["link", "set", "dev", p, "mcast_flood", "off"],
            )
            .unwrap();
        }
        s
    }
}

impl Drop for Snooping<'_> {
    fn drop(&mut self) {
        for p in &self.ports {
            let _ = self.lab.exec(
                "cp",
                "bridge",
                &["link", "set", "dev", p, "mcast_flood", "on"],
            );
        }
        let _ = self.lab.exec(
            "cp",
            "ip",
            &[
                "link",
                "set",
                LAN_BRIDGE,
                "type",
                "bridge",
                "mcast_querier",
                "0",
            ],
        );
    }
}

fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// The bridge's multicast database: which port reported which group.
fn mdb(lab: &Lab) -> String {
    lab.exec("cp", "bridge", &["mdb", "show", "dev", LAN_BRIDGE])
        .unwrap_or_default()
}

fn has_group(mdb: &str, port: &str, group: Ipv6Addr) -> bool {
    mdb.lines()
        .any(|l| l.contains(&format!("port {port} ")) && l.contains(&format!("grp {group}")))
}

#[tokio::test]
async fn ndp_resolves_the_owner_through_a_bridge_that_snoops_mld() {
    let c = Cluster::connect().await.unwrap();
    let lab = c
        .lab()
        .expect("a lab test: it reconfigures the lab's bridge");
    assert!(
        lab.plan.stack.v6(),
        "needs a lab with IPv6 (--dual-stack or --ipv6)"
    );
    c.ensure_healthy().await.unwrap();
    let ns = c.namespace("mld").await.unwrap();
    for n in c.node_names() {
        c.echo_pod(&ns.name, &format!("web-{n}"), &n, json!({"app": "web"}))
            .await
            .unwrap();
    }

    let _snooping = Snooping::on(lab);
    // The querier asks, the nodes' kernels report their own groups, and once its response
    // window has passed the bridge stops flooding: from then on a group reaches a port
    // only if it was reported there.
    let since = Instant::now();
    let first = lab.plan.nodes[0].bridge_port.clone();
    loop {
        let m = mdb(lab);
        if since.elapsed() > Duration::from_secs(12) && m.contains(&format!("port {first} ")) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the bridge learnt no group from the nodes within 60 s: {m}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    c.service(
        &ns.name,
        "web",
        json!({"type": "LoadBalancer", "selector": {"app": "web"},
            "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
            "ports": [{"port": 80, "targetPort": 8080}]}),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ip, owner) = loop {
        let cond = c.announced(&ns.name, "web").await;
        let owners = cond
            .filter(|c| c.status == "True")
            .map(|c| announced_owners(&c.message))
            .unwrap_or_default();
        if let Some((IpAddr::V6(ip), owner)) = owners.into_iter().next() {
            break (ip, owner);
        }
        assert!(Instant::now() < deadline, "web not announced within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let port = lab.plan.node(&owner).unwrap().bridge_port.clone();
    let group = solicited_node(ip);
    let mac = c.node_mac(&owner).unwrap();

    // The owner reported the group on its port, and the client's solicitation reaches it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = mdb(lab);
        let resolved = c
            .client_exec(
                "ndisc6",
                &[
                    "-q",
                    "-1",
                    "-r",
                    "2",
                    "-w",
                    "1000",
                    &ip.to_string(),
                    &c.client_iface(),
                ],
            )
            .ok()
            .and_then(|o| o.lines().next().map(|l| l.trim().to_lowercase()));
        if has_group(&m, &port, group) && resolved.as_deref() == Some(mac.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ip} (group {group}) from {owner} ({mac}, port {port}): reported {}, \
             resolved to {resolved:?}; the bridge's groups: {m}",
            has_group(&m, &port, group)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
