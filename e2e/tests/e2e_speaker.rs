//! The speakers on a real cluster: real ARP/NDP peers in the client (`arping`, `ndisc6`,
//! `tcpdump`), real kube-proxy behind the IPs, and faults injected the way they happen (a
//! node's link cut, the node killed, its speaker stopped). Runs against the cluster that
//! `FERROLB_E2E_CLUSTER` names (see `ferrolb_e2e::cluster`): the lab, which `make test`
//! runs on IPv4, dual-stack and IPv6, or kind, which it runs dual-stack, with ferrolb from
//! its images under its chart. Needs three nodes that may announce.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::lab::cli::NodeAction;
use ferrolb_e2e::lab::echo::EchoReply;
use ferrolb_e2e::objects::announced_owners;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Service's `ferrolb.io/Announced` condition: (status, reason, message).
async fn announced(lab: &Cluster, ns: &str, name: &str) -> Option<(String, String, String)> {
    lab.announced(ns, name)
        .await
        .map(|c| (c.status, c.reason, c.message))
}

/// Waits for a True condition covering every IP; returns the owners.
async fn wait_announced(lab: &Cluster, ns: &str, name: &str) -> BTreeMap<IpAddr, String> {
    eventually(&format!("{ns}/{name} announced"), 60, || async {
        let ips = lab.ingress_ips(ns, name).await;
        let (status, _, message) = announced(lab, ns, name).await?;
        let o = announced_owners(&message);
        (status == "True" && !ips.is_empty() && ips.iter().all(|ip| o.contains_key(ip)))
            .then_some(o)
    })
    .await
}

fn mac_of(lab: &Cluster, node: &str) -> String {
    lab.node_mac(node).unwrap()
}

/// The MAC the client's ARP or NDP resolves `ip` to.
fn resolve(lab: &Cluster, ip: IpAddr) -> Option<String> {
    let iface = lab.client_iface();
    let out = match ip {
        IpAddr::V4(_) => lab.client_exec(
            "arping",
            &["-r", "-c", "1", "-w", "2", "-I", &iface, &ip.to_string()],
        ),
        IpAddr::V6(_) => lab.client_exec(
            "ndisc6",
            &["-q", "-1", "-r", "2", "-w", "1000", &ip.to_string(), &iface],
        ),
    };
    let mac = out.ok()?.lines().next()?.trim().to_lowercase();
    (!mac.is_empty()).then_some(mac)
}

fn url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    }
}

/// A new connection from the client to the IP, answered by a backend.
fn connect(lab: &Cluster, ip: IpAddr) -> Option<EchoReply> {
    let body = lab
        .client_exec("curl", &["-sS", "--max-time", "2", "-g", &url(ip)])
        .ok()?;
    EchoReply::parse(&body)
}

/// Source MACs of the ARP replies / Neighbor Advertisements for `ip` seen on the client's
/// link while the client asks for it a few times.
fn answerers(lab: &Cluster, ip: IpAddr) -> BTreeSet<String> {
    let filter = match ip {
        IpAddr::V4(_) => "arp".to_string(),
        IpAddr::V6(_) => "icmp6 and ip6[40] == 136".to_string(),
    };
    let cap = lab
        .client_command("timeout")
        .args([
            "4",
            "tcpdump",
            "-i",
            &lab.client_iface(),
            "-nn",
            "-e",
            "-l",
            "-U",
        ])
        .arg(&filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..3 {
        let _ = resolve(lab, ip);
    }
    let out = cap.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = match ip {
        IpAddr::V4(a) => format!("Reply {a} is-at"),
        IpAddr::V6(a) => format!("tgt is {a}"),
    };
    text.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_lowercase))
        .collect()
}

/// Every node's speaker runs and sees all the others alive.
async fn wait_speakers_converged(lab: &Cluster) {
    lab.wait_speakers_converged(Duration::from_secs(60))
        .await
        .unwrap();
}

/// At a test's start: the cluster is whole (a fault an earlier failed test left is undone).
async fn healthy(lab: &Cluster) {
    lab.ensure_healthy().await.unwrap();
}

/// A Service with a backend on each node named; returns its owners once announced.
async fn service_with_backends(
    lab: &Cluster,
    ns: &str,
    name: &str,
    nodes: &[String],
    local: bool,
) -> BTreeMap<IpAddr, String> {
    for n in nodes {
        lab.echo_pod(ns, &format!("{name}-{n}"), n, json!({"app": name}))
            .await
            .unwrap();
    }
    let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name},
        "ipFamilyPolicy": "PreferDualStack",
        "ports": [{"port": 80, "targetPort": 8080}]});
    if local {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    lab.service(ns, name, spec).await.unwrap();
    lab.wait_endpoints(ns, name, nodes.len() * lab.families())
        .await
        .unwrap();
    wait_announced(lab, ns, name).await
}

/// Waits until a new connection to `ip` succeeds and the client resolves it to `mac`.
/// Failing, it says what the client last resolved and whether the connection went through.
async fn wait_served_by(lab: &Cluster, ip: IpAddr, owner: &str) {
    let mac = &mac_of(lab, owner);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resolved = resolve(lab, ip);
        let reply = if resolved.as_deref() == Some(mac) {
            connect(lab, ip)
        } else {
            None
        };
        if reply.is_some() {
            return;
        }
        if Instant::now() > deadline {
            let neigh = lab.client_exec("ip", &["neigh", "show", &ip.to_string()]);
            let text = ip.to_string();
            let grep = |r: Result<String, _>| {
                r.map(|out: String| {
                    out.lines()
                        .filter(|l| l.contains(&text))
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
            };
            let save = if ip.is_ipv4() {
                "iptables-save"
            } else {
                "ip6tables-save"
            };
            let nat = grep(lab.exec(owner, save, &["-c", "-t", "nat"]));
            let filter = grep(lab.exec(owner, save, &["-c", "-t", "filter"]));
            let nft = grep(lab.exec(owner, "nft", &["list", "table", "inet", "ferrolb"]));
            let tracked = lab.exec(owner, "conntrack", &["-L", "-d", &text]);
            panic!(
                "{ip} served from {owner} ({mac}): not within 30 s (last resolved to \
                 {resolved:?}; connection {}; client's neighbour entry {neigh:?}; on the \
                 owner: NAT rules {nat:?}, filter rules {filter:?}, ferrolb's nft table \
                 {nft:?}, conntrack {tracked:?})",
                if resolved.as_deref() == Some(mac) {
                    "failed"
                } else {
                    "not tried"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn each_ip_resolves_to_its_owner_answers_alone_and_carries_traffic() {
    let lab = Cluster::connect().await.unwrap();
    healthy(&lab).await;
    let ns = lab.namespace("announce").await.unwrap();
    let owners = service_with_backends(&lab, &ns.name, "web", &lab.node_names(), false).await;
    if lab.families() == 2 {
        assert_eq!(owners.len(), 2, "dual-stack: one IP per family {owners:?}");
    }
    for (ip, owner) in &owners {
        let mac = mac_of(&lab, owner);
        wait_served_by(&lab, *ip, owner).await;
        let seen = answerers(&lab, *ip);
        assert_eq!(
            seen,
            BTreeSet::from([mac.clone()]),
            "{ip}: exactly one node ({owner}, {mac}) answers"
        );
    }
    // One Announcing event for the Service, and no more while nothing changes.
    let events: Api<Event> = Api::namespaced(lab.client(), &ns.name);
    let count = || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Announcing"))
            .count()
    };
    let first = count().await;
    assert_eq!(first, 1, "one Announcing event for one owner change");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count().await, first, "no event without a change");
}

#[tokio::test]
async fn local_policy_only_nodes_with_local_pods_announce_and_the_client_address_survives() {
    let lab = Cluster::connect().await.unwrap();
    healthy(&lab).await;
    let ns = lab.namespace("local").await.unwrap();
    let nodes = lab.node_names();
    let (second, third) = (&nodes[1], &nodes[2]);
    let owners =
        service_with_backends(&lab, &ns.name, "loc", std::slice::from_ref(second), true).await;
    assert!(owners.values().all(|o| o == second), "{owners:?}");
    let (v4, v6) = lab.client_addresses();
    let client_ips: BTreeSet<IpAddr> = v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(v6.map(IpAddr::V6))
        .collect();
    for ip in owners.keys() {
        wait_served_by(&lab, *ip, second).await;
        let r = connect(&lab, *ip).unwrap();
        assert_eq!(&r.node, second);
        assert!(
            client_ips.contains(&r.client.ip()),
            "the backend saw {} instead of the client's address",
            r.client
        );
    }

    // Move the last local pod: the IP follows it.
    lab.echo_pod(
        &ns.name,
        &format!("loc-{third}"),
        third,
        json!({"app": "loc"}),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(lab.client(), &ns.name);
    pods.delete(
        &format!("loc-{second}"),
        &DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    lab.wait_endpoints(&ns.name, "loc", lab.families())
        .await
        .unwrap();
    let moved = eventually(
        &format!("the IP follows the pod to {third}"),
        60,
        || async {
            let (status, _, message) = announced(&lab, &ns.name, "loc").await?;
            let o = announced_owners(&message);
            (status == "True" && !o.is_empty() && o.values().all(|n| n == third)).then_some(o)
        },
    )
    .await;
    for ip in moved.keys() {
        wait_served_by(&lab, *ip, third).await;
    }

    // No local pod anywhere: not announced, and the condition says why.
    pods.delete(
        &format!("loc-{third}"),
        &DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    let (_, reason, message) = eventually("Announced=False", 60, || async {
        let c = announced(&lab, &ns.name, "loc").await?;
        (c.0 == "False").then_some(c)
    })
    .await;
    assert_eq!(reason, "NoLocalEndpoints", "{message}");
    for ip in moved.keys() {
        eventually(&format!("{ip} no longer answered"), 30, || async {
            resolve(&lab, *ip).is_none().then_some(())
        })
        .await;
    }
}

/// How the surviving speakers must learn of the failure.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Detection {
    /// The failed speaker stops answering: the survivors suspect it before declaring it down.
    Suspicion,
    /// The speaker leaves gossip on its way out: nobody has to suspect it.
    Leave,
}

const SUSPICIONS: &str = "ferrolb_gossip_suspicions_total";

/// Suspicions begun, summed over every speaker but `except`'s.
fn survivors_suspicions(lab: &Cluster, except: &str) -> u64 {
    lab.speaker_nodes()
        .iter()
        .filter(|n| n.as_str() != except)
        .map(|n| lab.speaker_metric(n, SUSPICIONS).unwrap())
        .sum()
}

/// What happens to the owner in a failover test.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Its link is cut; healed afterwards.
    Cut,
    /// The node is killed; started afterwards.
    Stop,
    /// Its speaker gets SIGTERM and stays away; brought back afterwards.
    Sigterm,
}

impl Fault {
    async fn inflict(self, lab: &Cluster, node: &str) {
        match self {
            Fault::Cut => lab.node_action(node, NodeAction::Cut).await.unwrap(),
            Fault::Stop => lab.node_action(node, NodeAction::Stop).await.unwrap(),
            Fault::Sigterm => lab.sigterm_speaker(node).await.unwrap(),
        }
    }

    async fn undo(self, lab: &Cluster, node: &str) {
        match self {
            Fault::Cut => lab.node_action(node, NodeAction::Heal).await.unwrap(),
            Fault::Stop => lab.node_action(node, NodeAction::Start).await.unwrap(),
            Fault::Sigterm => lab.restore_speaker(node).await.unwrap(),
        }
    }
}

/// One failover: the owner of the Service's IPs suffers `fault`; every IP moves to another
/// node that answers for it and carries new connections, the survivors having learnt of it
/// as `detection` says; then the fault is undone.
async fn failover(prefix: &str, detection: Detection, fault: Fault) {
    let lab = Cluster::connect().await.unwrap();
    healthy(&lab).await;
    let ns = lab.namespace(prefix).await.unwrap();
    let owners = service_with_backends(&lab, &ns.name, "fo", &lab.node_names(), false).await;
    let (first_ip, victim) = owners.iter().next().map(|(i, n)| (*i, n.clone())).unwrap();
    wait_served_by(&lab, first_ip, &victim).await;

    let suspicions_before = survivors_suspicions(&lab, &victim);
    fault.inflict(&lab, &victim).await;
    let after = eventually("the IPs move off the failed node", 60, || async {
        let (status, _, message) = announced(&lab, &ns.name, "fo").await?;
        let o = announced_owners(&message);
        (status == "True"
            && o.len() == owners.len()
            && owners
                .keys()
                .filter(|ip| owners[*ip] == victim)
                .all(|ip| o.get(ip).is_some_and(|n| *n != victim)))
        .then_some(o)
    })
    .await;
    let suspicions_after = survivors_suspicions(&lab, &victim);
    match detection {
        Detection::Suspicion => assert!(
            suspicions_after > suspicions_before,
            "the survivors took over without suspecting {victim} first"
        ),
        Detection::Leave => assert_eq!(
            suspicions_after, suspicions_before,
            "a speaker that left was suspected: the handover waited for failure detection"
        ),
    }
    for (ip, owner) in &after {
        wait_served_by(&lab, *ip, owner).await;
    }

    fault.undo(&lab, &victim).await;
    wait_speakers_converged(&lab).await;
    // Once the node returns, every IP is again answered by the owner the condition names
    // (the returning node may win its IPs back; the condition follows).
    let macs: BTreeMap<String, String> = lab
        .node_names()
        .into_iter()
        .map(|n| {
            let mac = mac_of(&lab, &n);
            (n, mac)
        })
        .collect();
    eventually(
        "the condition and the wire agree after the return",
        60,
        || async {
            let (status, _, message) = announced(&lab, &ns.name, "fo").await?;
            let o = announced_owners(&message);
            (status == "True"
                && o.len() == owners.len()
                && o.iter().all(|(ip, owner)| {
                    resolve(&lab, *ip).as_deref() == macs.get(owner).map(String::as_str)
                        && connect(&lab, *ip).is_some()
                }))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn failover_when_the_owner_is_cut_off() {
    failover("fo-cut", Detection::Suspicion, Fault::Cut).await;
}

#[tokio::test]
async fn failover_when_the_owner_node_is_killed() {
    failover("fo-stop", Detection::Suspicion, Fault::Stop).await;
}

#[tokio::test]
async fn handover_when_the_owner_speaker_gets_sigterm() {
    failover("fo-term", Detection::Leave, Fault::Sigterm).await;
}

#[tokio::test]
async fn forged_and_garbage_gossip_changes_nothing() {
    let lab = Cluster::connect().await.unwrap();
    healthy(&lab).await;
    let ns = lab.namespace("forged").await.unwrap();
    let owners = service_with_backends(&lab, &ns.name, "fg", &lab.node_names(), false).await;
    let dropped = |lab: &Cluster, n: &str| {
        lab.speaker_metric(
            n,
            "ferrolb_gossip_dropped_total{reason=\"unauthenticated\"}",
        )
        .unwrap_or(0)
    };
    let before: Vec<u64> = lab.node_names().iter().map(|n| dropped(&lab, n)).collect();
    // Garbage, a short datagram, and an envelope of the right shape with a made-up tag.
    for n in lab.node_names() {
        let ip = lab.node_ips(&n)[0];
        let script = format!(
            "for i in 1 2 3 4 5; do \
               printf 'garbage' > /dev/udp/{ip}/7946; \
               printf '\\x01' > /dev/udp/{ip}/7946; \
               printf '\\x01%s{{\"node\":\"evil\"}}' \"$(head -c 32 /dev/zero | tr '\\0' 'A')\" > /dev/udp/{ip}/7946; \
             done"
        );
        lab.client_exec("bash", &["-c", &script]).unwrap();
    }
    eventually("the forgeries are counted", 30, || async {
        lab.node_names()
            .iter()
            .zip(&before)
            .all(|(n, b)| dropped(&lab, n) >= b + 15)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_speakers_converged(&lab).await;
    let (status, _, message) = announced(&lab, &ns.name, "fg").await.unwrap();
    assert_eq!(status, "True");
    assert_eq!(announced_owners(&message), owners, "ownership did not move");
    for (ip, owner) in &owners {
        assert_eq!(answerers(&lab, *ip), BTreeSet::from([mac_of(&lab, owner)]));
    }
}
