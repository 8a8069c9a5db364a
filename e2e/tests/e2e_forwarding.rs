//! NodePort forwarding on a real cluster: IPs of a `forwarding: NodePort` pool (ipMode
//! Proxy, which kube-proxy leaves alone) carry TCP and UDP through the owner's speaker to
//! the Service's NodePort and kube-proxy's NodePort handling: `Local` keeps the client's
//! address, replies come from `IP:port`, other ports and sources outside
//! `loadBalancerSourceRanges` get nothing, the forwarding follows the IP when the owner
//! fails, pods on other nodes reach the IP. Runs against the cluster `FERROLB_E2E_CLUSTER`
//! names (lab or kind), like `e2e_speaker.rs`; needs three nodes that may announce.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ferrolb_crds::names::{ANNOTATION_IP_POOL, CONDITION_ANNOUNCED};
use ferrolb_e2e::cluster::{Cluster, ECHO_PORT};
use ferrolb_e2e::lab::cli::NodeAction;
use ferrolb_e2e::lab::echo::EchoReply;
use ferrolb_e2e::objects::announced_owners;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
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

/// A test's own IPPool with `forwarding: NodePort`, only for Services that name it, on
/// its own spare addresses (`below` the sample pool: each test has its own, so a pool a
/// failed run left cannot overlap the next); deleted when dropped, also on a panic.
struct Pool {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl Pool {
    async fn new(c: &Cluster, name: &str, below: u128) -> Pool {
        let api: Api<ferrolb_crds::IPPool> = Api::all(c.client());
        let obj = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name},
            "spec": {"addresses": c.spare_pool(below, 10), "autoAssign": false, "forwarding": "NodePort"}});
        api.patch(
            name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
        Pool {
            name: name.into(),
            kubeconfig: c.kubeconfig(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = ferrolb_e2e::bins::kubectl(
            &self.kubeconfig,
            &[
                "delete",
                "ippool",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

/// A Service in `pool` with echo backends on `nodes`; returns its IPs and their owners once
/// every IP is announced.
async fn forwarded_service(
    c: &Cluster,
    ns: &str,
    name: &str,
    pool: &Pool,
    nodes: &[String],
    extra: serde_json::Value,
) -> BTreeMap<IpAddr, String> {
    for n in nodes {
        c.echo_pod(ns, &format!("{name}-{n}"), n, json!({"app": name}))
            .await
            .unwrap();
    }
    let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name},
        "ipFamilyPolicy": "PreferDualStack",
        "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT, "protocol": "TCP"},
                  {"name": "echo-udp", "port": 80, "targetPort": ECHO_PORT, "protocol": "UDP"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let api: Api<Service> = Api::namespaced(c.client(), ns);
    let obj = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": {ANNOTATION_IP_POOL: pool.name}},
        "spec": spec});
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
    c.wait_endpoints(ns, name, nodes.len() * c.families())
        .await
        .unwrap();
    announced(c, ns, name).await
}

async fn announced(c: &Cluster, ns: &str, name: &str) -> BTreeMap<IpAddr, String> {
    eventually(&format!("{ns}/{name} announced"), 90, || async {
        let ips = c.ingress_ips(ns, name).await;
        let cond = c.announced(ns, name).await?;
        let o = announced_owners(&cond.message);
        (cond.status == "True" && !ips.is_empty() && ips.iter().all(|ip| o.contains_key(ip)))
            .then_some(o)
    })
    .await
}

fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("http://{a}:{port}/"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/"),
    }
}

/// A new TCP connection from the client (from `source` when given), answered by an echo pod.
fn curl(c: &Cluster, ip: IpAddr, source: Option<IpAddr>) -> Option<EchoReply> {
    let u = url(ip, 80);
    let s = source.map(|s| s.to_string());
    let mut args = vec!["-sS", "--max-time", "2", "-g"];
    if let Some(s) = &s {
        args.extend(["--interface", s.as_str()]);
    }
    args.push(&u);
    EchoReply::parse(&c.client_exec("curl", &args).ok()?)
}

/// Runs `f` on a thread inside the client's network namespace.
fn in_client<T: Send + 'static>(c: &Cluster, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = c.client_netns().unwrap();
    std::thread::spawn(move || {
        ferrolb_e2e::probe::enter_netns(&netns).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// One UDP exchange from the client: the echo reply and the address it came from.
fn udp(c: &Cluster, ip: IpAddr, port: u16) -> Option<(EchoReply, SocketAddr)> {
    in_client(c, move || {
        let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        for _ in 0..3 {
            s.send_to(b"hello", SocketAddr::new(ip, port)).ok()?;
            let mut buf = [0u8; 1500];
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let r = EchoReply::parse(&String::from_utf8_lossy(&buf[..n]))?;
                return Some((r, from));
            }
        }
        None
    })
}

/// A TCP connection attempt from the client: `Ok` when it connects, else the error kind.
fn connect(c: &Cluster, ip: IpAddr, port: u16) -> Result<(), std::io::ErrorKind> {
    in_client(c, move || {
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(1500))
            .map(|_| ())
            .map_err(|e| e.kind())
    })
}

/// A second address on the client, removed when dropped (also on a panic).
struct SecondAddress<'a> {
    cluster: &'a Cluster,
    ip: IpAddr,
}

impl<'a> SecondAddress<'a> {
    fn add(cluster: &'a Cluster, ip: IpAddr) -> SecondAddress<'a> {
        let _ = cluster.del_client_address(ip);
        cluster.add_client_address(ip).unwrap();
        SecondAddress { cluster, ip }
    }
}

impl Drop for SecondAddress<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.del_client_address(self.ip);
    }
}

fn client_ips(c: &Cluster) -> BTreeSet<IpAddr> {
    let (v4, v6) = c.client_addresses();
    v4.map(IpAddr::V4)
        .into_iter()
        .chain(v6.map(IpAddr::V6))
        .collect()
}

/// The forwarded IPs a node's kernel holds (its table's `owned` sets); empty when it
/// has no table.
fn forwarded_on(c: &Cluster, node: &str) -> BTreeSet<IpAddr> {
    let Ok(json) = c.exec(node, "nft", &["-j", "list", "table", "inet", "ferrolb"]) else {
        return BTreeSet::new();
    };
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("set"))
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("owned")))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().and_then(|a| a.parse().ok()))
        .collect()
}

async fn ip_mode(c: &Cluster, ns: &str, name: &str) -> Vec<String> {
    let api: Api<Service> = Api::namespaced(c.client(), ns);
    let svc = api.get(name).await.unwrap();
    ferrolb_crds::service::ingress(&svc)
        .map(|i| i.ip_mode.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn forwarded_ips_carry_tcp_and_udp_and_local_keeps_the_client_address() {
    let c = Cluster::connect().await.unwrap();
    c.ensure_healthy().await.unwrap();
    let nodes = c.node_names();
    let pool = Pool::new(&c, "e2e-fwd-basic", 50).await;
    let ns = c.namespace("fwd").await.unwrap();

    let local = forwarded_service(
        &c,
        &ns.name,
        "loc",
        &pool,
        std::slice::from_ref(&nodes[1]),
        json!({"externalTrafficPolicy": "Local"}),
    )
    .await;
    assert!(
        ip_mode(&c, &ns.name, "loc")
            .await
            .iter()
            .all(|m| m == "Proxy")
    );
    assert!(
        local.values().all(|o| *o == nodes[1]),
        "Local: owned where the pod is: {local:?}"
    );
    let clients = client_ips(&c);
    for ip in local.keys() {
        let r = eventually(&format!("TCP through {ip}"), 30, || async {
            curl(&c, *ip, None)
        })
        .await;
        assert_eq!(r.node, nodes[1]);
        assert!(
            clients.contains(&r.client.ip()),
            "{ip}: the backend saw {} instead of the client",
            r.client
        );
        let (r, from) = udp(&c, *ip, 80).expect("a UDP exchange through the IP");
        assert_eq!(
            from,
            SocketAddr::new(*ip, 80),
            "the UDP reply comes from IP:port"
        );
        assert!(
            clients.contains(&r.client.ip()),
            "UDP: the backend saw {}",
            r.client
        );
        // A port the Service does not expose gets no answer at all: dropped, not refused
        // and not routed back out.
        assert_eq!(
            connect(&c, *ip, 81),
            Err(std::io::ErrorKind::TimedOut),
            "{ip}:81"
        );
        assert!(udp(&c, *ip, 81).is_none());
    }

    // Cluster: any endpoint serves, through whichever node owns the IP.
    let cluster = forwarded_service(
        &c,
        &ns.name,
        "clu",
        &pool,
        &[nodes[0].clone(), nodes[2].clone()],
        json!({}),
    )
    .await;
    for ip in cluster.keys() {
        let r = eventually(&format!("TCP through {ip}"), 30, || async {
            curl(&c, *ip, None)
        })
        .await;
        assert!(r.node == nodes[0] || r.node == nodes[2], "{r:?}");
        udp(&c, *ip, 80).expect("UDP through a Cluster Service's IP");
    }

    // The owners count what they forwarded, per family (read from the kernel every 10 s).
    for (ip, owner) in local.iter().chain(&cluster) {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        let series = format!("ferrolb_forwarded_connections_total{{family=\"{family}\"}}");
        eventually(
            &format!("{owner} counts forwarded {family} connections"),
            30,
            || async { (c.speaker_metric(owner, &series)? > 0).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn without_forwarding_in_the_speakers_a_nodeport_pool_ip_carries_nothing() {
    let c = Cluster::connect().await.unwrap();
    c.ensure_healthy().await.unwrap();
    let nodes = c.node_names();
    let pool = Pool::new(&c, "e2e-fwd-off", 40).await;
    let ns = c.namespace("fwd-off").await.unwrap();
    let owners = forwarded_service(&c, &ns.name, "web", &pool, &nodes, json!({})).await;
    let ip = *owners.keys().next().unwrap();
    eventually("traffic with forwarding on", 30, || async {
        curl(&c, ip, None)
    })
    .await;

    c.set_speaker_args(&["--nodeport-forwarding=false"])
        .await
        .unwrap();
    let owners_off = announced(&c, &ns.name, "web").await;
    for (ip, owner) in &owners_off {
        assert!(forwarded_on(&c, owner).is_empty(), "{owner} holds no rules");
        // Still announced (kube-proxy is what fails to carry it: it leaves Proxy IPs alone).
        assert!(
            curl(&c, *ip, None).is_none(),
            "{ip} carried traffic without the speaker's forwarding"
        );
    }
    c.set_speaker_args(&[]).await.unwrap();
    eventually("traffic with forwarding on again", 60, || async {
        curl(&c, ip, None)
    })
    .await;
}

/// A kernel that refuses the SCTP NAT rules. On the lab every speaker gets an `nft` that
/// refuses any ruleset naming SCTP (a shell wrapper around the real one); kind's speaker
/// image has no shell to wrap `nft` with, and kind's kernel takes the rules, so there the
/// test has nothing to run. A Service with a TCP and an SCTP port keeps carrying TCP, and
/// its `ferrolb.io/Announced` names the SCTP port that is not forwarded; speakers whose
/// kernel takes the rules drop the note again.
#[tokio::test]
async fn a_kernel_refusing_sctp_forwards_the_rest_and_the_condition_says_so() {
    let c = Cluster::connect().await.unwrap();
    if c.lab().is_none() {
        eprintln!("kind: the speaker image has no shell to wrap nft with; nothing to run");
        return;
    }
    c.ensure_healthy().await.unwrap();
    let wrapper =
        std::env::temp_dir().join(format!("ferrolb-e2e-nft-no-sctp-{}", std::process::id()));
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in *sctp*) echo 'Error: Could not process rule: Operation not supported' >&2; exit 1;; esac\nprintf '%s\\n' \"$input\" | exec nft \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let flag = format!("--nft={}", wrapper.display());
    c.set_speaker_args(&[flag.as_str()]).await.unwrap();

    let nodes = c.node_names();
    let pool = Pool::new(&c, "e2e-fwd-sctp", 50).await;
    let ns = c.namespace("fwd-sctp").await.unwrap();
    let ports = json!({"ports": [
        {"name": "http", "port": 80, "targetPort": ECHO_PORT, "protocol": "TCP"},
        {"name": "sig", "port": 9, "targetPort": 9, "protocol": "SCTP"}]});
    let owners = forwarded_service(&c, &ns.name, "web", &pool, &nodes, ports).await;
    let cond = eventually("the SCTP note", 60, || async {
        let cond = c.announced(&ns.name, "web").await?;
        cond.message.contains("not forwarded").then_some(cond)
    })
    .await;
    assert_eq!(cond.status, "True", "{}", cond.message);
    // A speaker knows only its own kernel: the condition's writer (the owner of the first
    // IP) marks the IPs it owns.
    let writer = owners.values().next().unwrap();
    for (ip, owner) in &owners {
        let part = format!("{ip} from node {owner} on ");
        assert!(cond.message.contains(&part), "{}", cond.message);
        if owner == writer {
            let note = "(SCTP ports 9/SCTP not forwarded: that node's kernel refuses SCTP forwarding rules)";
            let at = cond.message.find(&part).unwrap();
            let rest = &cond.message[at..];
            let this = rest.split("; ").next().unwrap();
            assert!(this.ends_with(note), "{}", cond.message);
        }
        eventually(&format!("TCP through {ip}"), 30, || async {
            curl(&c, *ip, None)
        })
        .await;
    }

    c.set_speaker_args(&[]).await.unwrap();
    let _ = std::fs::remove_file(&wrapper);
    eventually("the SCTP note dropped", 60, || async {
        let cond = c.announced(&ns.name, "web").await?;
        (cond.status == "True" && !cond.message.contains("not forwarded")).then_some(())
    })
    .await;
    for ip in owners.keys() {
        eventually(&format!("TCP through {ip} again"), 30, || async {
            curl(&c, *ip, None)
        })
        .await;
    }
}

#[tokio::test]
async fn a_source_range_lets_the_client_in_and_keeps_its_second_address_out() {
    let c = Cluster::connect().await.unwrap();
    c.ensure_healthy().await.unwrap();
    let nodes = c.node_names();
    let pool = Pool::new(&c, "e2e-fwd-ranges", 30).await;
    let ns = c.namespace("fwd-ranges").await.unwrap();
    let clients = client_ips(&c);
    let ranges: Vec<String> = clients
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        })
        .collect();
    let owners = forwarded_service(
        &c,
        &ns.name,
        "web",
        &pool,
        &nodes,
        json!({"loadBalancerSourceRanges": ranges, "externalTrafficPolicy": "Local"}),
    )
    .await;
    for ip in owners.keys() {
        let primary = *clients
            .iter()
            .find(|c| c.is_ipv4() == ip.is_ipv4())
            .unwrap();
        let second = SecondAddress::add(&c, c.spare_address(90, ip.is_ipv4()).unwrap());
        let inside = eventually(&format!("{ip} from {primary}"), 30, || async {
            curl(&c, *ip, Some(primary))
        })
        .await;
        assert_eq!(inside.client.ip(), primary);
        let outside = curl(&c, *ip, Some(second.ip));
        assert!(
            outside.is_none(),
            "{} is outside the ranges but got {outside:?}",
            second.ip
        );
    }
}

#[tokio::test]
async fn a_service_without_node_ports_is_not_announced_and_says_why() {
    let c = Cluster::connect().await.unwrap();
    let pool = Pool::new(&c, "e2e-fwd-nonp", 20).await;
    let ns = c.namespace("fwd-nonp").await.unwrap();
    let nodes = c.node_names();
    c.echo_pod(&ns.name, "nonp", &nodes[0], json!({"app": "nonp"}))
        .await
        .unwrap();
    let api: Api<Service> = Api::namespaced(c.client(), &ns.name);
    let obj = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nonp", "namespace": ns.name, "annotations": {ANNOTATION_IP_POOL: pool.name}},
        "spec": {"type": "LoadBalancer", "selector": {"app": "nonp"}, "allocateLoadBalancerNodePorts": false,
                 "ports": [{"port": 80, "targetPort": ECHO_PORT}]}});
    api.patch(
        "nonp",
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
    let cond = eventually("Announced=False", 90, || async {
        let svc = api.get("nonp").await.ok()?;
        let cond = ferrolb_crds::service::condition(&svc, CONDITION_ANNOUNCED)?.clone();
        (cond.status == "False").then_some(cond)
    })
    .await;
    assert_eq!(cond.reason, "NoNodePort", "{}", cond.message);
    for ip in c.ingress_ips(&ns.name, "nonp").await {
        for n in c.node_names() {
            assert!(!forwarded_on(&c, &n).contains(&ip), "{n} forwards {ip}");
        }
    }
}

#[tokio::test]
async fn a_pod_on_another_node_reaches_a_forwarded_ip() {
    let c = Cluster::connect().await.unwrap();
    c.ensure_healthy().await.unwrap();
    let nodes = c.node_names();
    let pool = Pool::new(&c, "e2e-fwd-pods", 10).await;
    let ns = c.namespace("fwd-pods").await.unwrap();
    let owners = forwarded_service(&c, &ns.name, "web", &pool, &nodes, json!({})).await;
    for (ip, owner) in &owners {
        let elsewhere = nodes.iter().find(|n| *n != owner).unwrap();
        let name = format!("caller-{}", if ip.is_ipv4() { 4 } else { 6 });
        let caller = c
            .echo_pod(&ns.name, &name, elsewhere, json!({"app": "caller"}))
            .await
            .unwrap();
        let body = eventually(&format!("{ip} from a pod on {elsewhere}"), 30, || async {
            c.pod_fetch(&caller, &url(*ip, 80))
        })
        .await;
        EchoReply::parse(&body).expect("an echo reply");
    }
}

/// What happens to the owner in a failover test.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Cut,
    Stop,
    Sigterm,
}

async fn forwarding_follows_the_ip(prefix: &str, below: u128, fault: Fault) {
    let c = Cluster::connect().await.unwrap();
    c.ensure_healthy().await.unwrap();
    let nodes = c.node_names();
    let pool = Pool::new(&c, &format!("e2e-{prefix}"), below).await;
    let ns = c.namespace(prefix).await.unwrap();
    let owners = forwarded_service(&c, &ns.name, "fo", &pool, &nodes, json!({})).await;
    let (ip, victim) = owners.iter().next().map(|(i, n)| (*i, n.clone())).unwrap();
    eventually("traffic before the fault", 30, || async {
        curl(&c, ip, None)
    })
    .await;
    assert!(forwarded_on(&c, &victim).contains(&ip));

    match fault {
        Fault::Cut => c.node_action(&victim, NodeAction::Cut).await.unwrap(),
        Fault::Stop => c.node_action(&victim, NodeAction::Stop).await.unwrap(),
        Fault::Sigterm => c.sigterm_speaker(&victim).await.unwrap(),
    }
    let moved = eventually("the IPs move off the failed node", 90, || async {
        let cond = c.announced(&ns.name, "fo").await?;
        let o = announced_owners(&cond.message);
        (cond.status == "True"
            && o.len() == owners.len()
            && owners
                .iter()
                .filter(|(_, n)| **n == victim)
                .all(|(ip, _)| o.get(ip).is_some_and(|n| *n != victim)))
        .then_some(o)
    })
    .await;
    for (ip, owner) in &moved {
        eventually(
            &format!("new connections to {ip} through {owner}"),
            60,
            || async { curl(&c, *ip, None) },
        )
        .await;
        assert!(
            forwarded_on(&c, owner).contains(ip),
            "{owner} forwards {ip}"
        );
    }
    if matches!(fault, Fault::Sigterm) {
        assert!(
            forwarded_on(&c, &victim).is_empty(),
            "a speaker that got SIGTERM removes its rules after the handover"
        );
    }

    match fault {
        Fault::Cut => c.node_action(&victim, NodeAction::Heal).await.unwrap(),
        Fault::Stop => c.node_action(&victim, NodeAction::Start).await.unwrap(),
        Fault::Sigterm => c.restore_speaker(&victim).await.unwrap(),
    }
    c.wait_speakers_converged(Duration::from_secs(120))
        .await
        .unwrap();
    // Back: every node forwards exactly the IPs it owns; the old owner holds nothing it
    // does not own any more.
    eventually("each node's rules match what it owns", 60, || async {
        let cond = c.announced(&ns.name, "fo").await?;
        let o = announced_owners(&cond.message);
        let ours: BTreeSet<IpAddr> = o.keys().copied().collect();
        let agree = nodes.iter().all(|n| {
            let want: BTreeSet<IpAddr> = o
                .iter()
                .filter(|(_, w)| *w == n)
                .map(|(ip, _)| *ip)
                .collect();
            forwarded_on(&c, n)
                .intersection(&ours)
                .copied()
                .collect::<BTreeSet<_>>()
                == want
        });
        (cond.status == "True"
            && o.len() == owners.len()
            && agree
            && o.keys().all(|ip| curl(&c, *ip, None).is_some()))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn forwarding_follows_the_ip_when_the_owner_is_cut_off() {
    forwarding_follows_the_ip("fwd-cut", 80, Fault::Cut).await;
}

#[tokio::test]
async fn forwarding_follows_the_ip_when_the_owner_node_is_killed() {
    forwarding_follows_the_ip("fwd-stop", 70, Fault::Stop).await;
}

#[tokio::test]
async fn forwarding_follows_the_ip_when_the_owner_speaker_gets_sigterm() {
    forwarding_follows_the_ip("fwd-term", 60, Fault::Sigterm).await;
}
