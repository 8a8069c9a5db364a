//! The cluster an end-to-end test runs against, whichever provider made it: the lab
//! (`ferrolb-lab up`: nodes are network namespaces, ferrolb runs as processes) or kind
//! (`make kind`: nodes are containers with real kubelets, ferrolb runs from its images
//! under its Helm chart). `FERROLB_E2E_CLUSTER=lab|kind` picks one (default `lab`).
//!
//! Tests speak only to [`Cluster`]: commands in the client, node faults, the speaker of a
//! node, the MAC of a node, the pool. Each provider carries them out its own way:
//!
//! | operation | lab | kind |
//! |---|---|---|
//! | run in the client | `ip netns exec flb-client` | `docker exec ferrolb-kind-client` |
//! | cut / heal a node | its LAN port down / up | `docker network disconnect` / reconnect |
//! | stop / start a node | SIGKILL its processes / start them | kill / start its container |
//! | SIGTERM a speaker | SIGTERM the process | taint the node `NoExecute` (the pod is evicted) |
//! | restart a speaker | SIGTERM, start, wait for `/readyz` | delete the pod, wait for the new one |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::kind::{self, KindState};
use crate::lab::cli::NodeAction;
use crate::lab::handle::Lab;
use crate::lab::topology::CLIENT_NS;
use crate::objects::{self, TestNamespace};
use crate::{Error, Result};

/// The taint the kind provider puts on a node to take its speaker away (the DaemonSet
/// does not tolerate it, so the pod is evicted with SIGTERM and not recreated); test pods
/// tolerate it.
pub const SPEAKER_DOWN_TAINT: &str = "e2e.ferrolb.io/speaker-down";

/// The port the echo pods serve on (TCP HTTP and UDP).
pub const ECHO_PORT: u16 = 8080;

/// Which provider made the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Lab,
    Kind,
}

impl ProviderKind {
    /// From `FERROLB_E2E_CLUSTER` (`lab` when unset).
    pub fn from_env() -> Result<ProviderKind> {
        Self::parse(std::env::var("FERROLB_E2E_CLUSTER").ok().as_deref())
    }

    /// A value of `FERROLB_E2E_CLUSTER`: unset or empty means the lab.
    pub fn parse(value: Option<&str>) -> Result<ProviderKind> {
        match value {
            None | Some("") | Some("lab") => Ok(ProviderKind::Lab),
            Some("kind") => Ok(ProviderKind::Kind),
            Some(other) => Err(Error::Lab(format!(
                "FERROLB_E2E_CLUSTER={other}: use lab or kind"
            ))),
        }
    }
}

enum Provider {
    Lab(Box<Lab>),
    Kind(Box<KindState>),
}

/// A running cluster with ferrolb installed.
pub struct Cluster {
    client: kube::Client,
    provider: Provider,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("provider", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the cluster `FERROLB_E2E_CLUSTER` names.
    pub async fn connect() -> Result<Cluster> {
        match ProviderKind::from_env()? {
            ProviderKind::Lab => {
                let lab = Lab::connect().await?;
                Ok(Cluster {
                    client: lab.client(),
                    provider: Provider::Lab(Box::new(lab)),
                })
            }
            ProviderKind::Kind => {
                let state = KindState::load(&kind::default_state_dir())?;
                let text = kind::read(&state.kubeconfig)?;
                let client = crate::control_plane::client_from_kubeconfig(&text).await?;
                Ok(Cluster {
                    client,
                    provider: Provider::Kind(Box::new(state)),
                })
            }
        }
    }

    pub fn kind(&self) -> ProviderKind {
        match self.provider {
            Provider::Lab(_) => ProviderKind::Lab,
            Provider::Kind(_) => ProviderKind::Kind,
        }
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The lab behind this cluster, for lab-only checks.
    pub fn lab(&self) -> Option<&Lab> {
        match &self.provider {
            Provider::Lab(l) => Some(l),
            Provider::Kind(_) => None,
        }
    }

    /// The nodes that may announce and run the tests' pods, in order.
    pub fn node_names(&self) -> Vec<String> {
        match &self.provider {
            Provider::Lab(l) => l.node_names(),
            Provider::Kind(k) => k.nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// Every node that runs a speaker (kind: the control-plane node too; it never
    /// announces, kubeadm labels it excluded from load balancers).
    pub fn speaker_nodes(&self) -> Vec<String> {
        match &self.provider {
            Provider::Lab(l) => l.node_names(),
            Provider::Kind(k) => std::iter::once(k.control_plane.name.clone())
                .chain(k.nodes.iter().map(|n| n.name.clone()))
                .collect(),
        }
    }

    /// The client's addresses on the nodes' segment, per family.
    pub fn client_addresses(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        match &self.provider {
            Provider::Lab(l) => (l.plan.client_v4, l.plan.client_v6),
            Provider::Kind(k) => (k.client.ipv4, k.client.ipv6),
        }
    }

    /// The client's interface on that segment.
    pub fn client_iface(&self) -> String {
        match &self.provider {
            Provider::Lab(_) => "eth0".into(),
            Provider::Kind(k) => k.client.iface.clone(),
        }
    }

    /// Number of IP families of the cluster (a dual-stack Service has an EndpointSlice per
    /// family).
    pub fn families(&self) -> usize {
        let (v4, v6) = self.client_addresses();
        usize::from(v4.is_some()) + usize::from(v6.is_some())
    }

    /// The sample pool's addresses.
    pub fn pool(&self) -> Vec<String> {
        match &self.provider {
            Provider::Lab(l) => l.plan.pool.clone(),
            Provider::Kind(k) => k.pool.clone(),
        }
    }

    /// A command that runs `program` in the client (to be given arguments and spawned).
    pub fn client_command(&self, program: &str) -> Command {
        match &self.provider {
            Provider::Lab(_) => crate::lab::netns::command_in(CLIENT_NS, program),
            Provider::Kind(k) => kind::docker_exec(&k.client.container, program),
        }
    }

    /// The client's network namespace, for a thread to enter (see [`crate::probe`]).
    pub fn client_netns(&self) -> Result<std::path::PathBuf> {
        match &self.provider {
            Provider::Lab(_) => Ok(std::path::PathBuf::from(format!("/run/netns/{CLIENT_NS}"))),
            Provider::Kind(k) => {
                let pid = crate::lab::netns::run(
                    "docker",
                    &["inspect", "-f", "{{.State.Pid}}", &k.client.container],
                )?;
                let pid: u32 = pid
                    .trim()
                    .parse()
                    .map_err(|_| Error::Lab(format!("{} is not running", k.client.container)))?;
                Ok(std::path::PathBuf::from(format!("/proc/{pid}/ns/net")))
            }
        }
    }

    /// Runs a program in the client; its stdout, or an error.
    pub fn client_exec(&self, program: &str, args: &[&str]) -> Result<String> {
        self.exec("client", program, args)
    }

    /// Runs a program in `client` or on a node (its host network).
    pub fn exec(&self, target: &str, program: &str, args: &[&str]) -> Result<String> {
        match &self.provider {
            Provider::Lab(l) => l.exec(target, program, args),
            Provider::Kind(k) => kind::exec(k.container(target)?, program, args),
        }
    }

    /// A node's addresses on the segment the client is on (IPv4 first).
    pub fn node_ips(&self, node: &str) -> Vec<IpAddr> {
        let (v4, v6) = match &self.provider {
            Provider::Lab(l) => match l.plan.node(node) {
                Some(n) => (n.lan_v4, n.lan_v6),
                None => (None, None),
            },
            Provider::Kind(k) => match k.node(node) {
                Some(n) => (n.ipv4, n.ipv6),
                None => (None, None),
            },
        };
        v4.map(IpAddr::V4)
            .into_iter()
            .chain(v6.map(IpAddr::V6))
            .collect()
    }

    /// The MAC of a node's interface on the client's segment, lowercase, read now.
    pub fn node_mac(&self, node: &str) -> Result<String> {
        let mac = match &self.provider {
            Provider::Lab(l) => {
                let n = l
                    .plan
                    .node(node)
                    .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
                crate::lab::netns::mac_of(&n.netns, "eth0")?
            }
            Provider::Kind(k) => {
                let n = k
                    .node(node)
                    .ok_or_else(|| Error::Lab(format!("no kind node {node}")))?;
                kind::exec(
                    &n.container,
                    "cat",
                    &[&format!("/sys/class/net/{}/address", n.iface)],
                )?
            }
        };
        Ok(mac.trim().to_lowercase())
    }

    /// Cuts, heals, stops or starts a node (see the module's table).
    pub async fn node_action(&self, node: &str, action: NodeAction) -> Result<()> {
        match &self.provider {
            Provider::Lab(l) => l.node(node, action),
            Provider::Kind(_) => {
                let a = match action {
                    NodeAction::Cut => "cut",
                    NodeAction::Heal => "heal",
                    NodeAction::Stop => "stop",
                    NodeAction::Start => "start",
                };
                let node = node.to_string();
                tokio::task::spawn_blocking(move || kind::node_script(&node, a))
                    .await
                    .map_err(|e| Error::Lab(e.to_string()))?
            }
        }
    }

    /// Sends the node's speaker SIGTERM (it hands its IPs over and exits) and keeps it
    /// away until [`Cluster::restore_speaker`]; returns once it is gone.
    pub async fn sigterm_speaker(&self, node: &str) -> Result<()> {
        match &self.provider {
            Provider::Lab(l) => l.kill_speaker(node, Signal::SIGTERM),
            Provider::Kind(k) => {
                let nodes: Api<Node> = Api::all(self.client.clone());
                let n = nodes.get(node).await?;
                let mut taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
                if !taints.iter().any(|t| t.key == SPEAKER_DOWN_TAINT) {
                    taints.push(
                        serde_json::from_value(json!({
                            "key": SPEAKER_DOWN_TAINT, "value": "true", "effect": "NoExecute"
                        }))
                        .map_err(|e| Error::Lab(e.to_string()))?,
                    );
                }
                nodes
                    .patch(
                        node,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": taints}})),
                    )
                    .await?;
                self.wait_speaker_pod(k, node, false).await.map(|_| ())
            }
        }
    }

    /// Brings back a speaker that [`Cluster::sigterm_speaker`] took away and waits until
    /// it is ready.
    pub async fn restore_speaker(&self, node: &str) -> Result<()> {
        match &self.provider {
            Provider::Lab(l) => l.restart_speaker(node).map(|_| ()),
            Provider::Kind(k) => {
                let nodes: Api<Node> = Api::all(self.client.clone());
                let n = nodes.get(node).await?;
                let taints: Vec<_> = n
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.key != SPEAKER_DOWN_TAINT)
                    .collect();
                nodes
                    .patch(
                        node,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": taints}})),
                    )
                    .await?;
                self.wait_speaker_pod(k, node, true).await.map(|_| ())
            }
        }
    }

    /// Restarts a node's speaker the way an operator would (lab: SIGTERM and start; kind:
    /// delete its pod, the DaemonSet makes a new one) and waits until it is ready.
    pub async fn restart_speaker(&self, node: &str) -> Result<()> {
        match &self.provider {
            Provider::Lab(l) => l.restart_speaker(node).map(|_| ()),
            Provider::Kind(k) => {
                let old = self.wait_speaker_pod(k, node, true).await?;
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &k.namespace);
                let old_uid = old.metadata.uid.clone();
                pods.delete(
                    &old.metadata.name.unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await?;
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let p = self.wait_speaker_pod(k, node, true).await?;
                    if p.metadata.uid != old_uid {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(Error::Lab(format!(
                            "no new speaker pod on {node} after 120 s"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Waits until `node`'s speaker pod is ready (`present`) or gone; returns it when ready.
    async fn wait_speaker_pod(&self, k: &KindState, node: &str, present: bool) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &k.namespace);
        let lp = ListParams::default()
            .labels("app.kubernetes.io/name=ferrolb-speaker")
            .fields(&format!("spec.nodeName={node}"));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = pods.list(&lp).await?.items;
            let ready = list.iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
            });
            match (present, ready) {
                (true, Some(p)) => return Ok(p.clone()),
                (false, _) if list.is_empty() => return Ok(Pod::default()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(Error::Lab(format!(
                    "the speaker pod on {node} is not {} after 120 s",
                    if present { "ready" } else { "gone" }
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `/metrics` text of `node`'s speaker, read on the node itself; `None` when it
    /// does not answer.
    pub fn speaker_metrics(&self, node: &str) -> Option<String> {
        match &self.provider {
            Provider::Lab(l) => l.speaker_metrics(node),
            Provider::Kind(k) => {
                let n = k.node(node)?;
                // Host network: the speaker's admin port is the node's; localhost answers
                // even while the node is cut off the network.
                kind::exec(
                    &n.container,
                    "curl",
                    &["-sS", "--max-time", "2", "http://127.0.0.1:7473/metrics"],
                )
                .ok()
            }
        }
    }

    /// One series of `node`'s speaker metrics, e.g. `ferrolb_gossip_members{state="alive"}`:
    /// 0 when the speaker answers without it, `None` when it does not answer.
    pub fn speaker_metric(&self, node: &str, series: &str) -> Option<u64> {
        metric(&self.speaker_metrics(node)?, series)
    }

    /// Waits until every speaker sees all the others alive in gossip.
    pub async fn wait_speakers_converged(&self, limit: Duration) -> Result<()> {
        const ALIVE: &str = "ferrolb_gossip_members{state=\"alive\"}";
        let nodes = self.speaker_nodes();
        let peers = nodes.len().saturating_sub(1) as u64;
        let deadline = Instant::now() + limit;
        loop {
            let seen: Vec<Option<u64>> = nodes
                .iter()
                .map(|n| self.speaker_metric(n, ALIVE))
                .collect();
            if seen.iter().all(|s| *s == Some(peers)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Lab(format!(
                    "speakers not converged after {limit:?}: alive peers per node {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts every speaker with `extra` flags after the usual ones (empty: as
    /// installed), and waits until all are ready and see each other. Lab: each process
    /// again; kind: `helm upgrade` of `speaker.extraArgs` and the DaemonSet's roll.
    pub async fn set_speaker_args(&self, extra: &[&str]) -> Result<()> {
        match &self.provider {
            Provider::Lab(l) => {
                let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
                for n in l.node_names() {
                    crate::lab::cli::restart_speaker_with(&l.plan, &n, &extra)?;
                }
            }
            Provider::Kind(k) => {
                let json = serde_json::to_string(extra).map_err(|e| Error::Lab(e.to_string()))?;
                self.helm_upgrade(k, &["--set-json", &format!("speaker.extraArgs={json}")])?;
                self.wait_speakers_rolled(k, |args| {
                    extra.iter().all(|e| args.iter().any(|a| a == e))
                        && !args.iter().any(|a| {
                            a.starts_with("--nodeport-forwarding") && !extra.contains(&a.as_str())
                        })
                })
                .await?;
            }
        }
        self.wait_speakers_converged(Duration::from_secs(90)).await
    }

    /// `helm upgrade` of the kind install, keeping its values but for `args`.
    pub fn helm_upgrade(&self, k: &KindState, args: &[&str]) -> Result<String> {
        let chart = crate::helm::chart_dir().display().to_string();
        let kc = k.kubeconfig.display().to_string();
        let mut v = vec![
            "upgrade",
            k.release.as_str(),
            chart.as_str(),
            "--reuse-values",
            "--namespace",
            k.namespace.as_str(),
            "--kubeconfig",
            kc.as_str(),
        ];
        v.extend_from_slice(args);
        crate::helm::helm(&v)
    }

    /// Waits until the speaker DaemonSet finished rolling out and every speaker pod is
    /// ready, not terminating, and runs with args that `args_ok` accepts.
    pub async fn wait_speakers_rolled(
        &self,
        k: &KindState,
        args_ok: impl Fn(&[String]) -> bool,
    ) -> Result<()> {
        use k8s_openapi::api::apps::v1::DaemonSet;
        let ds: Api<DaemonSet> = Api::namespaced(self.client.clone(), &k.namespace);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &k.namespace);
        let lp = ListParams::default().labels("app.kubernetes.io/name=ferrolb-speaker");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let done = ds.list(&lp).await?.items.first().is_some_and(|d| {
                let st = d.status.clone().unwrap_or_default();
                st.observed_generation == d.metadata.generation
                    && st.updated_number_scheduled == Some(st.desired_number_scheduled)
                    && st.number_available == Some(st.desired_number_scheduled)
                    && st.number_unavailable.unwrap_or(0) == 0
            });
            let list = pods.list(&lp).await?.items;
            let all = done
                && list.len() == self.speaker_nodes().len()
                && list.iter().all(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().is_some_and(|s| {
                            s.containers
                                .iter()
                                .all(|c| args_ok(c.args.as_deref().unwrap_or_default()))
                        })
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                });
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Lab(
                    "the speakers did not roll out within 300 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Addresses on the client's segment that neither the sample pool nor any machine
    /// uses, for a test's own pool: `count` per family, starting `below` addresses below
    /// the sample pool's first one of that family (both providers keep the 100 addresses
    /// below their pool free: the lab's machines sit under .101, kind's at the bottom of a
    /// /16).
    pub fn spare_pool(&self, below: u128, count: u128) -> Vec<String> {
        self.spare(below, count)
            .into_iter()
            .map(|(a, b)| format!("{a}-{b}"))
            .collect()
    }

    /// A spare address of the family (see [`Cluster::spare_pool`]).
    pub fn spare_address(&self, below: u128, v4: bool) -> Option<IpAddr> {
        self.spare(below, 1)
            .into_iter()
            .map(|(a, _)| a)
            .find(|a| a.is_ipv4() == v4)
    }

    /// The kubeconfig of the cluster's administrator.
    pub fn kubeconfig(&self) -> std::path::PathBuf {
        match &self.provider {
            Provider::Lab(l) => l.kubeconfig(),
            Provider::Kind(k) => k.kubeconfig.clone(),
        }
    }

    fn spare(&self, below: u128, count: u128) -> Vec<(IpAddr, IpAddr)> {
        self.pool()
            .iter()
            .filter_map(|entry| {
                let first = ferrolb_crds::AddressBlock::parse(entry).ok()?.first();
                let n = ferrolb_crds::address::ip_to_u128(first).checked_sub(below)?;
                let family = ferrolb_crds::Family::of(first);
                Some((
                    ferrolb_crds::address::u128_to_ip(family, n)?,
                    ferrolb_crds::address::u128_to_ip(family, n + count.saturating_sub(1))?,
                ))
            })
            .collect()
    }

    /// Gives the client a second address (removed again by [`Cluster::del_client_address`]),
    /// used only by connections that bind to it.
    pub fn add_client_address(&self, ip: IpAddr) -> Result<()> {
        self.client_address("add", ip)
    }

    pub fn del_client_address(&self, ip: IpAddr) -> Result<()> {
        self.client_address("del", ip)
    }

    fn client_address(&self, op: &str, ip: IpAddr) -> Result<()> {
        let host = match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        };
        let iface = self.client_iface();
        let mut args = vec!["addr", op, host.as_str(), "dev", iface.as_str()];
        if op == "add" {
            // Deprecated at once: the kernel never picks it as a source by itself, only
            // when a test binds to it.
            args.extend(["preferred_lft", "0"]);
            if ip.is_ipv6() {
                args.push("nodad");
            }
        }
        match &self.provider {
            Provider::Lab(_) => crate::lab::netns::ip_in(CLIENT_NS, &args).map(|_| ()),
            Provider::Kind(k) => {
                let mut v = vec!["exec", "--privileged", k.client.container.as_str(), "ip"];
                v.extend(args);
                crate::lab::netns::run("docker", &v).map(|_| ())
            }
        }
    }

    /// An HTTP GET from inside a pod (its network namespace); the body, `None` on failure.
    pub fn pod_fetch(&self, pod: &Pod, url: &str) -> Option<String> {
        match &self.provider {
            Provider::Lab(l) => l
                .exec_in_pod(pod, "curl", &["-sS", "--max-time", "3", "-g", url])
                .ok(),
            Provider::Kind(k) => {
                let ns = pod.metadata.namespace.as_deref()?;
                let name = pod.metadata.name.as_deref()?;
                crate::bins::kubectl(
                    &k.kubeconfig,
                    &["exec", "-n", ns, name, "--", "/ferrolb-lab", "fetch", url],
                )
                .ok()
            }
        }
    }

    /// Waits until every speaker sees all the others alive; when they do not within 20 s
    /// (a test that failed half-way may have left a node cut, stopped or without its
    /// speaker), undoes every fault on every node first. Each undo is a no-op where there
    /// is nothing to undo.
    pub async fn ensure_healthy(&self) -> Result<()> {
        if self
            .wait_speakers_converged(Duration::from_secs(20))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tracing::warn!("speakers not converged: undoing any fault a previous test left");
        for n in self.node_names() {
            // Start first: a stopped node cannot be healed (kind refuses), and starting a
            // running one changes nothing.
            self.node_action(&n, NodeAction::Start).await?;
            self.node_action(&n, NodeAction::Heal).await?;
            match &self.provider {
                Provider::Lab(l) => {
                    if l.speaker_pid(&n).is_none() {
                        l.restart_speaker(&n)?;
                    }
                }
                Provider::Kind(_) => self.restore_speaker(&n).await?,
            }
        }
        self.wait_speakers_converged(Duration::from_secs(120)).await
    }

    /// A new Kubernetes namespace, deleted when the value is dropped.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        objects::namespace(&self.client, prefix).await
    }

    /// Creates an echo pod (TCP HTTP and UDP on [`ECHO_PORT`]) on `node` and waits until
    /// it is ready.
    pub async fn echo_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: serde_json::Value,
    ) -> Result<Pod> {
        let spec = match &self.provider {
            Provider::Lab(_) => json!({"nodeName": node, "containers": [{
                "name": "echo", "image": "ferrolb.io/lab-echo",
                "ports": [{"containerPort": ECHO_PORT}]}]}),
            Provider::Kind(k) => json!({
                "nodeName": node,
                "tolerations": [{"key": SPEAKER_DOWN_TAINT, "operator": "Exists"}],
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "echo", "image": k.images.echo, "imagePullPolicy": "IfNotPresent",
                    "args": ["--pod", "$(POD_NAMESPACE)/$(POD_NAME)", "--node", "$(NODE_NAME)",
                             "--port", ECHO_PORT.to_string()],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                    ],
                    "ports": [{"containerPort": ECHO_PORT, "protocol": "TCP"},
                              {"containerPort": ECHO_PORT, "protocol": "UDP"}],
                    "readinessProbe": {"tcpSocket": {"port": ECHO_PORT}, "periodSeconds": 1}
                }]
            }),
        };
        objects::create_pod(&self.client, ns, name, labels, spec).await
    }

    /// Creates (applies) a Service from a spec.
    pub async fn service(
        &self,
        ns: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<k8s_openapi::api::core::v1::Service> {
        objects::service(&self.client, ns, name, spec).await
    }

    /// An echo pod `web-NODE` (label `app: web`) on each of `nodes`, and the LoadBalancer
    /// Service `web` in front of them (port 80 to 8080), with `extra` spec fields on top.
    pub async fn web_service(
        &self,
        ns: &str,
        nodes: &[String],
        extra: serde_json::Value,
    ) -> Result<k8s_openapi::api::core::v1::Service> {
        for n in nodes {
            self.echo_pod(
                ns,
                &format!("web-{n}"),
                n,
                serde_json::json!({"app": "web"}),
            )
            .await?;
        }
        let mut spec = serde_json::json!({"type": "LoadBalancer", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        self.service(ns, "web", spec).await
    }

    /// Waits until the Service's EndpointSlices list exactly `ready` ready addresses.
    pub async fn wait_endpoints(&self, ns: &str, svc: &str, ready: usize) -> Result<()> {
        objects::wait_endpoints(&self.client, ns, svc, ready).await
    }

    /// The Service's `ferrolb.io/Announced` condition, if it has one.
    pub async fn announced(&self, ns: &str, name: &str) -> Option<Condition> {
        objects::announced(&self.client, ns, name).await
    }

    /// The IPs in the Service's status.
    pub async fn ingress_ips(&self, ns: &str, name: &str) -> Vec<IpAddr> {
        objects::ingress_ips(&self.client, ns, name).await
    }
}

/// One series' value in a Prometheus text exposition: 0 when the series is absent (a
/// per-interface series appears once the interface is used), `None` when unparsable.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    match text.lines().find(|l| {
        l.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with(' '))
    }) {
        Some(l) => l.rsplit(' ').next()?.parse::<f64>().ok().map(|v| v as u64),
        None => Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_read_from_the_exposition_and_absent_means_zero() {
        let text = "# HELP x\nferrolb_gossip_members{state=\"alive\"} 2\nferrolb_gossip_members{state=\"alive\",x=\"y\"} 9\nferrolb_f 1.0e3\n";
        assert_eq!(
            metric(text, "ferrolb_gossip_members{state=\"alive\"}"),
            Some(2)
        );
        assert_eq!(metric(text, "ferrolb_f"), Some(1000));
        assert_eq!(metric(text, "ferrolb_missing"), Some(0));
        assert_eq!(metric("ferrolb_bad x\n", "ferrolb_bad"), None);
    }

    #[test]
    fn the_cluster_variable_names_a_provider_or_is_refused() {
        assert_eq!(ProviderKind::parse(None).unwrap(), ProviderKind::Lab);
        assert_eq!(ProviderKind::parse(Some("")).unwrap(), ProviderKind::Lab);
        assert_eq!(ProviderKind::parse(Some("lab")).unwrap(), ProviderKind::Lab);
        assert_eq!(
            ProviderKind::parse(Some("kind")).unwrap(),
            ProviderKind::Kind
        );
        let e = ProviderKind::parse(Some("minikube"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use lab or kind"), "{e}");
    }
}
