//! The lab agent plays kubelet against a real API server: Node objects that are Ready (and
//! Unknown while stopped), pods that get a namespace, an IP from their node's CIDR and a
//! running echo process, readiness that follows the annotation, deletions that complete,
//! and an agent restart that keeps pod IPs. Needs root (network namespaces); creates only
//! `flb-at-*` and `flb-pod-*` namespaces and removes them even when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::lab::agent::{self, AgentOptions, Cidr, READY_ANNOTATION};
use ferrolb_e2e::lab::echo::EchoReply;
use ferrolb_e2e::lab::netns;
use ferrolb_e2e::lab::topology::{LabPlan, ProxyMode, Stack};
use ferrolb_e2e::process::pid_alive;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Removes the test's namespaces and pod processes, also when the test panics.
struct Cleanup {
    plan: LabPlan,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        agent::cleanup_recorded_pods(&self.plan);
        for n in &self.plan.nodes {
            let _ = netns::del_ns(&n.netns);
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition(pod: &Pod, ty: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| c.status.clone())
}

fn node_ready(node: &Node) -> Option<(String, String)> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

async fn running_ready_pod(pods: &Api<Pod>, name: &str) -> Pod {
    wait_for(&format!("pod {name} Running and Ready"), || async {
        let p = pods.get(name).await.ok()?;
        let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
        (running && condition(&p, "Ready").as_deref() == Some("True") && pod_ip(&p).is_some())
            .then_some(p)
    })
    .await
}

fn pod_json(name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "echo"}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "echo", "image": "ferrolb/echo", "ports": [{"containerPort": 8080}]}],
        },
    }))
    .unwrap()
}

/// `curl` from a node namespace to a pod, retried while the echo process starts.
async fn curl_from(ns: &str, ip: IpAddr) -> EchoReply {
    let url = format!("http://{ip}:8080/hello");
    let mut last = String::new();
    for _ in 0..50 {
        match netns::exec_in(ns, "curl", &["-s", "--max-time", "3", &url]) {
            Ok(body) => {
                if let Some(r) = EchoReply::parse(&body) {
                    return r;
                }
                last = body;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no echo answer from {url} in {ns}: {last}");
}

fn start_agent(
    plan: &LabPlan,
    client: kube::Client,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<ferrolb_e2e::Result<()>> {
    let mut opts = AgentOptions::new(env!("CARGO_BIN_EXE_ferrolb-lab").as_ref());
    opts.heartbeat = Duration::from_secs(1);
    opts.resync = Duration::from_millis(500);
    tokio::spawn(agent::run_agent_with(plan.clone(), client, opts, cancel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_runs_nodes_and_pods_like_a_kubelet() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut plan = LabPlan::new(2, Stack::Ipv4, ProxyMode::Iptables, dir.path().join("lab"));
    // Own namespace names, so a lab that runs on this machine is never touched.
    for (i, n) in plan.nodes.iter_mut().enumerate() {
        n.netns = format!("flb-at-n{}", i + 1);
    }
    std::fs::create_dir_all(&plan.state_dir).unwrap();
    let existing = netns::list_ns().unwrap();
    for n in &plan.nodes {
        if existing.contains(&n.netns) {
            netns::del_ns(&n.netns).unwrap(); // left by an earlier, killed run
        }
    }
    let _cleanup = Cleanup { plan: plan.clone() };
    for n in &plan.nodes {
        netns::add_ns(&n.netns).unwrap();
    }
    // The two nodes' LAN: one veth pair between them, holding the node addresses.
    let (n1, n2) = (&plan.nodes[0].netns, &plan.nodes[1].netns);
    netns::veth("eth0", Some(n1), "eth0", Some(n2)).unwrap();
    for n in &plan.nodes {
        let addr = format!("{}/24", n.lan_v4.unwrap());
        netns::ip_in(&n.netns, &["addr", "add", &addr, "dev", "eth0"]).unwrap();
        netns::ip_in(&n.netns, &["link", "set", "eth0", "up"]).unwrap();
    }

    let cp = TestControlPlane::start().await.unwrap();
    let client = cp.client();
    // No ServiceAccount controller here: pods need the default account to be admitted.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
    let _ = sas.create(&PostParams::default(), &sa).await;

    let cancel = CancellationToken::new();
    let mut agent_task = start_agent(&plan, client.clone(), cancel.clone());

    // Nodes: Ready, with CIDRs, addresses and a Lease.
    let nodes: Api<Node> = Api::all(client.clone());
    for n in &plan.nodes {
        let node = wait_for(&format!("node {} Ready", n.name), || async {
            let node = nodes.get(&n.name).await.ok()?;
            (node_ready(&node)?.0 == "True").then_some(node)
        })
        .await;
        let spec = node.spec.clone().unwrap();
        assert_eq!(spec.pod_cidrs.unwrap(), n.pod_cidrs);
        let addrs = node.status.unwrap().addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, n.lan_v4.unwrap().to_string());
        assert_eq!(
            node_ready(&nodes.get(&n.name).await.unwrap()).unwrap().1,
            "LabNodeReady"
        );
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = leases.get("node1").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("node1")
    );
    println!("nodes Ready with CIDRs, addresses and leases");

    // A pod on node1: Running, Ready, an IP from 10.244.1.0/24, an echo that answers.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod_json("web-a", "node1"))
        .await
        .unwrap();
    let a = running_ready_pod(&pods, "web-a").await;
    let a_ip = pod_ip(&a).unwrap();
    let cidr = Cidr::parse("10.244.1.0/24").unwrap();
    assert!(cidr.contains(a_ip), "{a_ip}");
    assert_eq!(
        a.status.as_ref().unwrap().host_ip.as_deref(),
        Some("10.77.0.11")
    );
    let cs = &a
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(cs.ready && cs.started == Some(true));
    let a_uid = a.metadata.uid.clone().unwrap();
    let a_ns = agent::pod_netns(&agent::short_id(&a_uid));
    assert!(netns::list_ns().unwrap().contains(&a_ns));
    let reply = curl_from("flb-at-n1", a_ip).await;
    assert_eq!(reply.pod, "default/web-a");
    assert_eq!(reply.node, "node1");
    assert_eq!(
        reply.client.ip().to_string(),
        "10.244.1.1",
        "the node reaches pods from cbr0"
    );
    println!("web-a Running+Ready at {a_ip}, echo answers: {reply:?}");

    // A second pod on the same node gets another address.
    pods.create(&PostParams::default(), &pod_json("web-b", "node1"))
        .await
        .unwrap();
    let b_ip = pod_ip(&running_ready_pod(&pods, "web-b").await).unwrap();
    assert!(cidr.contains(b_ip) && b_ip != a_ip, "{a_ip} {b_ip}");

    // Readiness follows the annotation.
    let annotate =
        |v: Option<&str>| serde_json::json!({"metadata": {"annotations": {READY_ANNOTATION: v}}});
    pods.patch(
        "web-a",
        &PatchParams::default(),
        &Patch::Merge(annotate(Some("false"))),
    )
    .await
    .unwrap();
    let p = wait_for("web-a not Ready", || async {
        let p = pods.get("web-a").await.ok()?;
        (condition(&p, "Ready").as_deref() == Some("False")).then_some(p)
    })
    .await;
    assert_eq!(condition(&p, "ContainersReady").as_deref(), Some("False"));
    assert!(!p.status.unwrap().container_statuses.unwrap()[0].ready);
    pods.patch(
        "web-a",
        &PatchParams::default(),
        &Patch::Merge(annotate(None)),
    )
    .await
    .unwrap();
    running_ready_pod(&pods, "web-a").await;
    println!("the ready annotation flips Ready to False and back");

    // A stopped node goes Unknown and comes back.
    let stopped = agent::node_stopped_file(&plan, "node2");
    std::fs::write(&stopped, b"").unwrap();
    wait_for("node2 Unknown", || async {
        let r = node_ready(&nodes.get("node2").await.ok()?)?;
        (r == ("Unknown".into(), "NodeStopped".into())).then_some(())
    })
    .await;
    std::fs::remove_file(&stopped).unwrap();
    wait_for("node2 Ready again", || async {
        (node_ready(&nodes.get("node2").await.ok()?)?.0 == "True").then_some(())
    })
    .await;
    println!("node2 stop/start: Ready Unknown (NodeStopped), then True");

    // The agent dies (no clean shutdown): a new one keeps the pods' addresses and does not
    // hand them out again.
    agent_task.abort();
    let _ = agent_task.await;
    agent_task = start_agent(&plan, client.clone(), cancel.clone());
    pods.create(&PostParams::default(), &pod_json("web-c", "node1"))
        .await
        .unwrap();
    let c_ip = pod_ip(&running_ready_pod(&pods, "web-c").await).unwrap();
    assert!(c_ip != a_ip && c_ip != b_ip, "{a_ip} {b_ip} {c_ip}");
    assert_eq!(pod_ip(&pods.get("web-a").await.unwrap()), Some(a_ip));
    assert_eq!(curl_from("flb-at-n1", a_ip).await.pod, "default/web-a");
    println!("after an agent crash: web-a keeps {a_ip}, web-c gets {c_ip}");

    // Deleting a pod stops it and completes the deletion.
    let rec_file = plan
        .state_dir
        .join("pods")
        .join(format!("{}.json", agent::short_id(&a_uid)));
    let pid: u64 =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&rec_file).unwrap())
            .unwrap()["pid"]
            .as_u64()
            .unwrap();
    pods.delete("web-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("web-a gone", || async {
        pods.get_opt("web-a").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        !netns::list_ns().unwrap().contains(&a_ns),
        "pod namespace left behind"
    );
    assert!(!rec_file.exists());
    assert!(
        !pid_alive(u32::try_from(pid).unwrap()),
        "pod process left running"
    );
    println!("web-a deleted: object, namespace, record and process gone");

    // Cancelling the agent stops the rest.
    let left: Vec<String> = agent::pod_records(&plan)
        .into_iter()
        .map(|(_, r)| r.netns)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    cancel.cancel();
    agent_task.await.unwrap().unwrap();
    let now = netns::list_ns().unwrap();
    assert!(
        left.iter().all(|ns| !now.contains(ns)),
        "{left:?} still in {now:?}"
    );
    assert!(agent::pod_records(&plan).is_empty());
    println!("agent cancelled: every pod namespace removed");
}
