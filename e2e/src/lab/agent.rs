//! The lab's kubelet stand-in. For every node of the plan it keeps a `Node` object (Ready,
//! heartbeat, Lease) and runs the Pods bound to that node: one network namespace per pod on
//! the node's `cbr0` bridge, an IP from the node's pod CIDRs, the echo server as the pod's
//! only process, and a pod status from which kube-controller-manager derives EndpointSlices.
//!
//! It owns the `Node`s and `Lease`s of the plan's nodes, the `flb-pod-*` namespaces, `vp*`
//! veths and `cbr0` bridges inside node namespaces, and `state_dir/pods/`. It never touches
//! the host's interfaces, nor pods bound to other nodes.
//!
//! Shape: pure helpers (naming, IP allocation, the objects it applies, the per-pod plan)
//! under a thin shell that watches Pods, plans, and carries the plan out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, HostIP, Node, NodeAddress,
    NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::netns;
use super::topology::{LabPlan, NodePlan};
use crate::process::Supervised;
use crate::{Error, Result, io_err};

/// The field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "ferrolb-lab";
/// `"false"` on a pod makes the agent report it not ready; tests flip it.
pub const READY_ANNOTATION: &str = "lab.ferrolb.io/ready";
/// The pods' bridge inside each node namespace.
pub const POD_BRIDGE: &str = "cbr0";
/// The echo server's port when the pod declares none.
pub const DEFAULT_POD_PORT: u16 = 8080;
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_SECONDS: i32 = 40;

// ---------------------------------------------------------------------------------------
// Names and files

/// The first 8 hex digits of a pod UID: short enough for interface names, unique enough
/// for a lab. A UID without 8 hex digits (never seen in practice) is hashed instead.
pub fn short_id(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 8 {
        return hex;
    }
    // FNV-1a: stable across runs, unlike std's hasher.
    let h = uid.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

/// The pod's network namespace (namespace names have no length limit; interface names do).
pub fn pod_netns(short: &str) -> String {
    format!("{}pod-{short}", super::topology::PREFIX)
}

/// The node end of the pod's veth (≤ 15 characters, the kernel's limit).
pub fn pod_veth(short: &str) -> String {
    format!("vp{short}")
}

/// While this file exists the agent treats `node` as stopped: no heartbeat, Ready=Unknown,
/// its pods left alone.
pub fn node_stopped_file(plan: &LabPlan, node: &str) -> PathBuf {
    plan.state_dir.join(format!("stopped-{node}"))
}

/// Where pod records and pod logs live.
pub fn pods_dir(plan: &LabPlan) -> PathBuf {
    plan.state_dir.join("pods")
}

fn record_file(plan: &LabPlan, short: &str) -> PathBuf {
    pods_dir(plan).join(format!("{short}.json"))
}

/// What `ferrolb-lab down` needs to stop a pod even if the agent died: its process and its
/// namespace. `pid` is `None` between creating the namespace and starting the process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub pid: Option<u32>,
    /// Field 22 of /proc/PID/stat, so a reused PID is never signalled.
    #[serde(default)]
    pub start_time: Option<u64>,
    pub netns: String,
    /// The node namespace holding the pod's veth end.
    #[serde(default)]
    pub node_netns: String,
    #[serde(default)]
    pub node: String,
    /// `namespace/name`.
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub uid: String,
}

/// Every pod record under `state_dir/pods/`, with its file.
pub fn pod_records(plan: &LabPlan) -> Vec<(PathBuf, PodRecord)> {
    let Ok(dir) = std::fs::read_dir(pods_dir(plan)) else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let rec = serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
            Some((p, rec))
        })
        .collect()
}

/// Stops every recorded pod (process, veth, namespace) and removes its record: for `down`
/// after an agent crash. Returns how many records it handled.
pub fn cleanup_recorded_pods(plan: &LabPlan) -> usize {
    let records = pod_records(plan);
    for (file, rec) in &records {
        stop_recorded(rec);
        teardown_network(&rec.node_netns, &rec.netns, &rec.uid);
        let _ = std::fs::remove_file(file);
    }
    records.len()
}

// ---------------------------------------------------------------------------------------
// IP allocation (pure)

/// An IP prefix, e.g. `10.244.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`; host bits are cleared.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.trim().split_once('/')?;
        let ip: IpAddr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        if prefix > bits(ip) {
            return None;
        }
        let network = from_u128(ip, to_u128(ip) & !host_mask(ip, prefix));
        Some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4()
            && to_u128(ip) & !host_mask(ip, self.prefix) == to_u128(self.network)
    }

    /// The first and last address a pod may get: the network address, and for IPv4 the
    /// broadcast address, are excluded.
    fn host_range(&self) -> Option<(u128, u128)> {
        let base = to_u128(self.network);
        let mut last = base | host_mask(self.network, self.prefix);
        if self.network.is_ipv4() {
            last = last.checked_sub(1)?;
        }
        let first = base.checked_add(1)?;
        (first <= last).then_some((first, last))
    }
}

fn bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn host_mask(ip: IpAddr, prefix: u8) -> u128 {
    let host_bits = u32::from(bits(ip).saturating_sub(prefix));
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(like: IpAddr, v: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The lowest address of `cidr` that is neither the network, the broadcast, the gateway
/// nor in `used`. Looks at most `used.len() + 2` candidates past the first.
pub fn next_free(cidr: &Cidr, gateway: IpAddr, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let (first, last) = cidr.host_range()?;
    let mut v = first;
    loop {
        let ip = from_u128(cidr.network, v);
        if ip != gateway && !used.contains(&ip) {
            return Some(ip);
        }
        if v == last {
            return None;
        }
        v += 1;
    }
}

/// One address from each of the node's pod CIDRs, or `None` when one of them is full.
pub fn allocate_pod_ips(node: &NodePlan, used: &BTreeSet<IpAddr>) -> Option<Vec<IpAddr>> {
    node.pod_cidrs
        .iter()
        .zip(&node.pod_gateways)
        .map(|(c, gw)| next_free(&Cidr::parse(c)?, *gw, used))
        .collect()
}

/// The addresses a pod already reports (after an agent restart), when they are exactly one
/// per pod CIDR of its node and none is taken by another pod.
pub fn reusable_pod_ips(
    node: &NodePlan,
    reported: &[IpAddr],
    used: &BTreeSet<IpAddr>,
) -> Option<Vec<IpAddr>> {
    let ips: Vec<IpAddr> = node
        .pod_cidrs
        .iter()
        .zip(&node.pod_gateways)
        .map(|(c, gw)| {
            let cidr = Cidr::parse(c)?;
            reported
                .iter()
                .copied()
                .find(|ip| cidr.contains(*ip) && ip != gw && !used.contains(ip))
        })
        .collect::<Option<_>>()?;
    (ips.len() == reported.len()).then_some(ips)
}

// ---------------------------------------------------------------------------------------
// What the agent wants for each pod (pure)

/// The parts of a Pod the agent acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// The first containerPort of the first container, else [`DEFAULT_POD_PORT`].
    pub port: u16,
    /// False while the pod carries `lab.ferrolb.io/ready: "false"`.
    pub want_ready: bool,
    pub deleting: bool,
    /// `status.podIPs` as the API has them (set by an earlier run of the agent).
    pub reported_ips: Vec<IpAddr>,
}

impl PodView {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The view of a pod bound to a node, or `None` for an unbound or malformed one.
pub fn pod_view(pod: &Pod) -> Option<PodView> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let port = spec
        .containers
        .first()
        .and_then(|c| c.ports.as_ref()?.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_POD_PORT);
    let want_ready = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(READY_ANNOTATION))
        .is_none_or(|v| v.trim() != "false");
    let reported_ips = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    Some(PodView {
        uid: pod.metadata.uid.clone()?,
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        node,
        port,
        want_ready,
        deleting: pod.metadata.deletion_timestamp.is_some(),
        reported_ips,
    })
}

/// The agent's knowledge of a pod it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningView {
    pub node: String,
    /// The pod's process has exited.
    pub exited: bool,
    /// The readiness last written to the API; `None` until a status write succeeded.
    pub applied_ready: Option<bool>,
}

/// One step toward the wanted state; each names a pod by UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodAction {
    /// Network, IPs, process, status.
    Start(String),
    /// Start the exited process again (network and IPs kept).
    Restart(String),
    /// Write the pod status (readiness changed, or the last write failed).
    WriteStatus(String),
    /// Stop the process, remove the network, forget the IPs; then, for a pod being deleted,
    /// confirm the deletion in the API.
    Stop { uid: String, confirm_delete: bool },
}

/// Compares the pods bound to the plan's nodes with the pods running, and says what to do.
/// Pods on `stopped` nodes are left alone; pods in `waiting` (backing off after a failure)
/// are not started yet.
pub fn plan_pods(
    wanted: &BTreeMap<String, PodView>,
    running: &BTreeMap<String, RunningView>,
    stopped: &BTreeSet<String>,
    waiting: &BTreeSet<String>,
) -> Vec<PodAction> {
    let mut actions = Vec::new();
    for (uid, pod) in wanted {
        if stopped.contains(&pod.node) {
            continue;
        }
        let run = running.get(uid);
        let action = if pod.deleting {
            Some(PodAction::Stop {
                uid: uid.clone(),
                confirm_delete: true,
            })
        } else if waiting.contains(uid) {
            None
        } else {
            match run {
                None => Some(PodAction::Start(uid.clone())),
                Some(r) if r.exited => Some(PodAction::Restart(uid.clone())),
                Some(r) if r.applied_ready != Some(pod.want_ready) => {
                    Some(PodAction::WriteStatus(uid.clone()))
                }
                Some(_) => None,
            }
        };
        actions.extend(action);
    }
    for (uid, run) in running {
        if !wanted.contains_key(uid) && !stopped.contains(&run.node) {
            actions.push(PodAction::Stop {
                uid: uid.clone(),
                confirm_delete: false,
            });
        }
    }
    actions
}

// ---------------------------------------------------------------------------------------
// Objects the agent applies (pure)

/// The running state of one pod, as the status reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRuntime {
    pub ips: Vec<IpAddr>,
    pub host_ips: Vec<IpAddr>,
    pub start_time: Time,
    pub ready: bool,
    /// When `ready` last changed.
    pub ready_since: Time,
    /// When the current process started.
    pub running_since: Time,
    pub restarts: i32,
    pub container_id: String,
}

fn condition(type_: &str, ok: bool, since: &Time, why_not: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: Some(since.clone()),
        reason: (!ok).then(|| "LabNotReady".to_string()),
        message: if ok {
            None
        } else {
            why_not.map(str::to_string)
        },
        ..PodCondition::default()
    }
}

/// The status the agent applies to `pod` (server-side apply on the status subresource: the
/// whole status every time, so fields the agent owns are never dropped).
pub fn pod_status_patch(pod: &Pod, rt: &PodRuntime) -> Pod {
    let why = format!("annotation {READY_ANNOTATION} is \"false\"");
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let container_statuses = containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: "lab://ferrolb-lab-echo".into(),
            container_id: Some(format!("lab://{}", rt.container_id)),
            ready: rt.ready,
            started: Some(true),
            restart_count: rt.restarts,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(rt.running_since.clone()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: rt.ips.first().map(ToString::to_string),
            pod_ips: Some(rt.ips.iter().map(|i| PodIP { ip: i.to_string() }).collect()),
            host_ip: rt.host_ips.first().map(ToString::to_string),
            host_ips: Some(
                rt.host_ips
                    .iter()
                    .map(|i| HostIP { ip: i.to_string() })
                    .collect(),
            ),
            start_time: Some(rt.start_time.clone()),
            conditions: Some(vec![
                condition("PodScheduled", true, &rt.start_time, None),
                condition("Initialized", true, &rt.start_time, None),
                condition("ContainersReady", rt.ready, &rt.ready_since, Some(&why)),
                condition("Ready", rt.ready, &rt.ready_since, Some(&why)),
            ]),
            container_statuses: Some(container_statuses),
            ..PodStatus::default()
        }),
    }
}

/// The node's addresses in the order Kubernetes expects (IPv4 first).
pub fn node_ips(node: &NodePlan) -> Vec<IpAddr> {
    node.lan_v4
        .map(IpAddr::V4)
        .into_iter()
        .chain(node.lan_v6.map(IpAddr::V6))
        .collect()
}

/// The `Node` object (metadata and spec) the agent applies.
pub fn node_object(node: &NodePlan) -> Node {
    let labels = [
        ("kubernetes.io/hostname", node.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", go_arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: node.pod_cidrs.first().cloned(),
            pod_cidrs: Some(node.pod_cidrs.clone()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// Facts about the machine, reported in every node's `status.nodeInfo` and capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub kernel_version: String,
    pub os_image: String,
    pub cpus: usize,
    pub memory_kib: u64,
    /// Changes with every agent start, like a real boot ID.
    pub boot_id: String,
}

impl HostFacts {
    /// Reads the facts from /proc and /etc (falling back to plausible values).
    pub fn read() -> HostFacts {
        let kernel_version = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(8 * 1024 * 1024);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        HostFacts {
            kernel_version,
            os_image,
            cpus: std::thread::available_parallelism().map_or(2, usize::from),
            memory_kib,
            boot_id: uuid_like(&format!("{nanos}-{}", std::process::id())),
        }
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A stable UUID-shaped string derived from `seed` (FNV-1a, not a real UUID).
fn uuid_like(seed: &str) -> String {
    let h = |salt: u64| {
        seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64 ^ salt, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let s = format!("{:016x}{:016x}", h(1), h(2));
    format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..]
    )
}

/// Whether the agent speaks for the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    Ready,
    /// `ferrolb-lab node NAME stop`: reported as a node whose kubelet went silent.
    Stopped,
}

/// The node status the agent applies (status subresource, server-side apply).
pub fn node_status_patch(
    node: &NodePlan,
    facts: &HostFacts,
    health: NodeHealth,
    heartbeat: &Time,
    transition: &Time,
) -> Node {
    let mut addresses: Vec<NodeAddress> = node_ips(node)
        .into_iter()
        .map(|ip| NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        })
        .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: node.name.clone(),
    });
    let (status, reason, message) = match health {
        NodeHealth::Ready => ("True", "LabNodeReady", "the lab agent runs this node"),
        NodeHealth::Stopped => (
            "Unknown",
            "NodeStopped",
            "stopped by `ferrolb-lab node stop`: no heartbeat",
        ),
    };
    let pressure = |t: &str, reason: &str| NodeCondition {
        type_: t.into(),
        status: if health == NodeHealth::Ready {
            "False"
        } else {
            "Unknown"
        }
        .into(),
        reason: Some(reason.into()),
        last_heartbeat_time: Some(heartbeat.clone()),
        last_transition_time: Some(transition.clone()),
        ..NodeCondition::default()
    };
    let mut conditions = vec![
        pressure("MemoryPressure", "KubeletHasSufficientMemory"),
        pressure("DiskPressure", "KubeletHasNoDiskPressure"),
        pressure("PIDPressure", "KubeletHasSufficientPID"),
    ];
    conditions.push(NodeCondition {
        type_: "Ready".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(heartbeat.clone()),
        last_transition_time: Some(transition.clone()),
    });
    let resources = [
        ("cpu", facts.cpus.to_string()),
        ("memory", format!("{}Ki", facts.memory_kib)),
        ("pods", "110".to_string()),
        ("ephemeral-storage", "100Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect::<BTreeMap<_, _>>();
    let machine = uuid_like(&format!("ferrolb-lab-{}", node.name));
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(addresses),
            conditions: Some(conditions),
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            node_info: Some(NodeSystemInfo {
                architecture: go_arch().into(),
                boot_id: facts.boot_id.clone(),
                container_runtime_version: format!("ferrolb-lab://{}", env!("CARGO_PKG_VERSION")),
                kernel_version: facts.kernel_version.clone(),
                kube_proxy_version: crate::bins::kube_version().into(),
                kubelet_version: crate::bins::kube_version().into(),
                machine_id: machine.replace('-', ""),
                operating_system: "linux".into(),
                os_image: facts.os_image.clone(),
                system_uuid: machine,
                swap: None,
            }),
            ..NodeStatus::default()
        }),
    }
}

/// The node's heartbeat Lease in `kube-node-lease`.
pub fn node_lease(node: &NodePlan, renewed: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(NODE_LEASE_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The shell: nodes

/// How long a stopped node's Node stays as it was before the agent reports it `Unknown`.
pub const STOPPED_GRACE: Duration = Duration::from_secs(8);

/// How the agent runs; [`AgentOptions::new`] gives the lab's settings.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The pod process: this command, then `--pod NS/NAME --node NODE --port PORT`.
    pub echo_command: Vec<String>,
    /// Node status and Lease renewal period; the stopped files are checked as often.
    pub heartbeat: Duration,
    /// How often pods are checked without a watch event (exited processes, retries).
    pub resync: Duration,
}

impl AgentOptions {
    pub fn new(echo_binary: &Path) -> AgentOptions {
        AgentOptions {
            echo_command: vec![echo_binary.display().to_string(), "echo".into()],
            heartbeat: Duration::from_secs(10),
            resync: Duration::from_secs(2),
        }
    }
}

/// Runs the agent until `cancel` fires; then stops every pod process it started and removes
/// their namespaces. `echo_binary echo --pod .. --node .. --port ..` is each pod's process.
pub async fn run_agent(
    plan: LabPlan,
    client: kube::Client,
    echo_binary: PathBuf,
    cancel: CancellationToken,
) -> Result<(), Error> {
    run_agent_with(plan, client, AgentOptions::new(&echo_binary), cancel).await
}

/// [`run_agent`] with explicit options.
pub async fn run_agent_with(
    plan: LabPlan,
    client: kube::Client,
    opts: AgentOptions,
    cancel: CancellationToken,
) -> Result<(), Error> {
    if opts.echo_command.is_empty() {
        return Err(Error::Lab("the agent needs an echo command".into()));
    }
    let dir = pods_dir(&plan);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let nodes = tokio::spawn(run_nodes(
        plan.clone(),
        client.clone(),
        opts.heartbeat,
        cancel.clone(),
    ));
    let pods = run_pods(plan, client, opts, cancel.clone()).await;
    cancel.cancel();
    if let Err(e) = nodes.await {
        tracing::warn!(error = %e, "node heartbeat task failed");
    }
    pods
}

/// Keeps every node's `Node`, status and Lease fresh, until `cancel`.
async fn run_nodes(
    plan: LabPlan,
    client: kube::Client,
    period: Duration,
    cancel: CancellationToken,
) {
    let facts = HostFacts::read();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    // Per node: the health last written, when it last changed, the last heartbeat.
    let mut written: BTreeMap<String, (NodeHealth, Time, Time)> = BTreeMap::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for node in &plan.nodes {
            // A stopped node's kubelet falls silent: no status, no Lease. Its Node turns
            // Unknown only after STOPPED_GRACE, as the node lifecycle controller would mark
            // it after its grace period, not at the next heartbeat (which could beat the
            // speakers' own failure detection and hide it from the tests).
            let stopped_for = std::fs::metadata(node_stopped_file(&plan, &node.name))
                .and_then(|m| m.modified())
                .ok()
                .map(|t| t.elapsed().unwrap_or_default());
            let health = match stopped_for {
                Some(age) if age < STOPPED_GRACE => continue,
                Some(_) => NodeHealth::Stopped,
                None => NodeHealth::Ready,
            };
            let now = Time(Timestamp::now());
            let prev = written.get(&node.name).cloned();
            if health == NodeHealth::Stopped && prev.as_ref().is_some_and(|p| p.0 == health) {
                continue; // a stopped node's kubelet is silent
            }
            let transition = match &prev {
                Some((h, since, _)) if *h == health => since.clone(),
                _ => now.clone(),
            };
            // A stopped node keeps the heartbeat it last sent.
            let heartbeat = match (&prev, health) {
                (Some((_, _, hb)), NodeHealth::Stopped) => hb.clone(),
                _ => now.clone(),
            };
            let result = async {
                nodes
                    .patch(&node.name, &ssa, &Patch::Apply(node_object(node)))
                    .await?;
                let status = node_status_patch(node, &facts, health, &heartbeat, &transition);
                // A merge patch, not server-side apply: the API's schema keys
                // status.addresses by type alone, so a dual-stack node's two InternalIPs
                // cannot be applied; a merge patch replaces the list whole.
                nodes
                    .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
                if health == NodeHealth::Ready {
                    leases
                        .patch(&node.name, &ssa, &Patch::Apply(node_lease(node, now.0)))
                        .await?;
                }
                Ok::<(), kube::Error>(())
            }
            .await;
            match result {
                Ok(()) => {
                    if prev.as_ref().is_none_or(|p| p.0 != health) {
                        tracing::info!(node = %node.name, ?health, "node status written");
                    }
                    written.insert(node.name.clone(), (health, transition, heartbeat));
                }
                Err(e) => {
                    tracing::warn!(node = %node.name, error = %e, "node heartbeat failed; retrying")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The shell: pods

/// A pod the agent runs.
#[derive(Debug)]
struct RunningPod {
    key: String,
    node: String,
    short: String,
    ips: Vec<IpAddr>,
    port: u16,
    process: Option<Supervised>,
    start_time: Time,
    running_since: Time,
    ready_since: Time,
    applied_ready: Option<bool>,
    restarts: i32,
}

/// Backoff of a pod whose last action failed.
#[derive(Debug)]
struct Retry {
    at: Instant,
    delay: Duration,
}

struct Pods {
    plan: LabPlan,
    api: Api<Pod>,
    opts: AgentOptions,
    /// Pods bound to the plan's nodes, by UID, as last seen.
    objects: BTreeMap<String, Pod>,
    running: BTreeMap<String, RunningPod>,
    retries: BTreeMap<String, Retry>,
    /// Objects of a relist in progress (watcher `Init` .. `InitDone`).
    relist: Option<BTreeMap<String, Pod>>,
    synced: bool,
}

async fn run_pods(
    plan: LabPlan,
    client: kube::Client,
    opts: AgentOptions,
    cancel: CancellationToken,
) -> Result<()> {
    let api: Api<Pod> = Api::all(client);
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(opts.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pods = Pods {
        plan,
        api,
        opts,
        objects: BTreeMap::new(),
        running: BTreeMap::new(),
        retries: BTreeMap::new(),
        relist: None,
        synced: false,
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            event = events.next() => match event {
                Some(Ok(e)) => pods.on_event(e),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            _ = tick.tick() => {}
        }
        if pods.synced {
            pods.reconcile().await;
        }
    }
    pods.shutdown().await;
    Ok(())
}

impl Pods {
    fn ours(&self, pod: &Pod) -> Option<String> {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        self.plan
            .nodes
            .iter()
            .any(|n| n.name == node)
            .then_some(())?;
        pod.metadata.uid.clone()
    }

    fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(p) => {
                if let (Some(uid), Some(list)) = (self.ours(&p), self.relist.as_mut()) {
                    list.insert(uid, p);
                }
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.relist.take() {
                    self.objects = list;
                }
                if !self.synced {
                    self.synced = true;
                    self.remove_orphan_records();
                }
            }
            watcher::Event::Apply(p) => {
                if let Some(uid) = self.ours(&p) {
                    self.objects.insert(uid, p);
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid.as_ref() {
                    self.objects.remove(uid);
                }
            }
        }
    }

    /// Records left by an earlier agent for pods that no longer exist: stop and remove.
    fn remove_orphan_records(&self) {
        let live: BTreeSet<String> = self.objects.keys().cloned().collect();
        for (file, rec) in pod_records(&self.plan) {
            if live.contains(&rec.uid) {
                continue; // adopted when the pod is started again
            }
            tracing::info!(pod = %rec.pod, netns = %rec.netns, "removing a pod left by an earlier agent");
            stop_recorded(&rec);
            teardown_network(&rec.node_netns, &rec.netns, &rec.uid);
            let _ = std::fs::remove_file(file);
        }
    }

    fn stopped_nodes(&self) -> BTreeSet<String> {
        self.plan
            .nodes
            .iter()
            .filter(|n| node_stopped_file(&self.plan, &n.name).exists())
            .map(|n| n.name.clone())
            .collect()
    }

    async fn reconcile(&mut self) {
        let wanted: BTreeMap<String, PodView> = self
            .objects
            .iter()
            .filter_map(|(uid, p)| Some((uid.clone(), pod_view(p)?)))
            .collect();
        let running: BTreeMap<String, RunningView> = self
            .running
            .iter_mut()
            .map(|(uid, r)| {
                let exited = r.process.as_mut().is_none_or(|p| p.exited().is_some());
                let view = RunningView {
                    node: r.node.clone(),
                    exited,
                    applied_ready: r.applied_ready,
                };
                (uid.clone(), view)
            })
            .collect();
        let now = Instant::now();
        let waiting: BTreeSet<String> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at > now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for action in plan_pods(&wanted, &running, &self.stopped_nodes(), &waiting) {
            let uid = match &action {
                PodAction::Start(u) | PodAction::Restart(u) | PodAction::WriteStatus(u) => u,
                PodAction::Stop { uid, .. } => uid,
            }
            .clone();
            let pod = wanted.get(&uid);
            let key = pod.map(PodView::key).unwrap_or_else(|| uid.clone());
            let result = match (&action, pod) {
                (PodAction::Start(_), Some(p)) => self.start(p).await,
                (PodAction::Restart(_), Some(p)) => self.restart(p).await,
                (PodAction::WriteStatus(_), Some(p)) => self.write_status(p).await,
                (PodAction::Stop { confirm_delete, .. }, _) => {
                    self.stop(&uid, pod, *confirm_delete).await
                }
                _ => Ok(()),
            };
            match result {
                Ok(()) => {
                    self.retries.remove(&uid);
                }
                Err(e) => {
                    let delay = self.retries.get(&uid).map_or(Duration::from_secs(1), |r| {
                        (r.delay * 2).min(Duration::from_secs(30))
                    });
                    tracing::warn!(pod = %key, ?action, error = %e, retry_in = ?delay, "pod action failed");
                    self.retries.insert(
                        uid,
                        Retry {
                            at: Instant::now() + delay,
                            delay,
                        },
                    );
                }
            }
        }
    }

    fn node(&self, name: &str) -> Result<NodePlan> {
        self.plan
            .node(name)
            .cloned()
            .ok_or_else(|| Error::Lab(format!("node {name} is not in the lab plan")))
    }

    fn used_ips(&self, except: &str) -> BTreeSet<IpAddr> {
        let running = self
            .running
            .iter()
            .filter(|(uid, _)| uid.as_str() != except)
            .flat_map(|(_, r)| r.ips.iter().copied());
        let reported = self
            .objects
            .iter()
            .filter(|(uid, _)| uid.as_str() != except)
            .filter_map(|(_, p)| pod_view(p))
            .flat_map(|v| v.reported_ips);
        running.chain(reported).collect()
    }

    #[tracing::instrument(skip_all, fields(pod = %pod.key(), node = %pod.node))]
    async fn start(&mut self, pod: &PodView) -> Result<()> {
        let node = self.node(&pod.node)?;
        let used = self.used_ips(&pod.uid);
        let ips = reusable_pod_ips(&node, &pod.reported_ips, &used)
            .or_else(|| allocate_pod_ips(&node, &used))
            .ok_or_else(|| Error::Lab(format!("node {}: pod CIDRs are full", node.name)))?;
        let short = short_id(&pod.uid);
        let ns = pod_netns(&short);
        let file = record_file(&self.plan, &short);
        let mut record = PodRecord {
            pid: None,
            start_time: None,
            netns: ns.clone(),
            node_netns: node.netns.clone(),
            node: node.name.clone(),
            pod: pod.key(),
            uid: pod.uid.clone(),
        };
        // A pod adopted from an earlier agent: its old process goes, the network is rebuilt.
        let old = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| serde_json::from_str::<PodRecord>(&s).ok());
        write_record(&file, &record)?;
        let setup = {
            let (node, ns, short, ips) = (node.clone(), ns.clone(), short.clone(), ips.clone());
            blocking(move || {
                if let Some(old) = old {
                    stop_recorded(&old);
                }
                setup_network(&node, &ns, &short, &ips)
            })
            .await
        };
        if let Err(e) = setup {
            let (node_ns, ns_, uid) = (node.netns.clone(), ns.clone(), pod.uid.clone());
            let _ = blocking(move || {
                teardown_network(&node_ns, &ns_, &uid);
                Ok(())
            })
            .await;
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
        let process = match self.spawn(pod, &short) {
            Ok(p) => p,
            Err(e) => {
                let (node_ns, ns_, uid) = (node.netns.clone(), ns.clone(), pod.uid.clone());
                let _ = blocking(move || {
                    teardown_network(&node_ns, &ns_, &uid);
                    Ok(())
                })
                .await;
                let _ = std::fs::remove_file(&file);
                return Err(e);
            }
        };
        record.pid = process.pid();
        record.start_time = record.pid.and_then(crate::lab::procs::start_time);
        write_record(&file, &record)?;
        tracing::info!(netns = %ns, ips = ?ips, pid = ?record.pid, "pod started");
        let now = Time(Timestamp::now());
        let start_time = self
            .objects
            .get(&pod.uid)
            .and_then(|p| p.status.as_ref()?.start_time.clone())
            .unwrap_or_else(|| now.clone());
        self.running.insert(
            pod.uid.clone(),
            RunningPod {
                key: pod.key(),
                node: node.name.clone(),
                short,
                ips,
                port: pod.port,
                process: Some(process),
                start_time,
                running_since: now.clone(),
                ready_since: now,
                applied_ready: None,
                restarts: 0,
            },
        );
        self.write_status(pod).await
    }

    fn spawn(&self, pod: &PodView, short: &str) -> Result<Supervised> {
        let (program, prefix) = self
            .opts
            .echo_command
            .split_first()
            .ok_or_else(|| Error::Lab("the agent needs an echo command".into()))?;
        let mut cmd = netns::command_in(&pod_netns(short), program);
        cmd.args(prefix).args([
            "--pod",
            &pod.key(),
            "--node",
            &pod.node,
            "--port",
            &pod.port.to_string(),
        ]);
        let log = pods_dir(&self.plan).join(format!("{}_{}_{short}.log", pod.namespace, pod.name));
        Supervised::spawn(&format!("pod {}", pod.key()), cmd, &log)
    }

    #[tracing::instrument(skip_all, fields(pod = %pod.key(), node = %pod.node))]
    async fn restart(&mut self, pod: &PodView) -> Result<()> {
        let Some(run) = self.running.get_mut(&pod.uid) else {
            return Ok(());
        };
        if let Some(mut old) = run.process.take()
            && let Some(e) = old.early_exit_error()
        {
            tracing::warn!(error = %e, "pod process exited; restarting it");
        }
        let short = run.short.clone();
        let process = self.spawn(pod, &short)?;
        let file = record_file(&self.plan, &short);
        let pid = process.pid();
        let node_netns = self.node(&pod.node)?.netns;
        if let Some(run) = self.running.get_mut(&pod.uid) {
            run.process = Some(process);
            run.restarts += 1;
            run.running_since = Time(Timestamp::now());
            run.applied_ready = None;
        }
        write_record(
            &file,
            &PodRecord {
                pid,
                start_time: pid.and_then(crate::lab::procs::start_time),
                netns: pod_netns(&short),
                node_netns,
                node: pod.node.clone(),
                pod: pod.key(),
                uid: pod.uid.clone(),
            },
        )?;
        self.write_status(pod).await
    }

    async fn write_status(&mut self, pod: &PodView) -> Result<()> {
        let node = self.node(&pod.node)?;
        let (Some(run), Some(object)) =
            (self.running.get_mut(&pod.uid), self.objects.get(&pod.uid))
        else {
            return Ok(());
        };
        if run.applied_ready.is_some_and(|r| r != pod.want_ready) {
            run.ready_since = Time(Timestamp::now());
        }
        let rt = PodRuntime {
            ips: run.ips.clone(),
            host_ips: node_ips(&node),
            start_time: run.start_time.clone(),
            ready: pod.want_ready,
            ready_since: run.ready_since.clone(),
            running_since: run.running_since.clone(),
            restarts: run.restarts,
            container_id: format!("{}-{}", run.short, run.restarts),
        };
        let patch = pod_status_patch(object, &rt);
        let api: Api<Pod> = Api::namespaced(self.api.clone().into_client(), &pod.namespace);
        match api
            .patch_status(
                &pod.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {}
            // Gone meanwhile: the watch brings the deletion.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(pod = %run.key, ready = pod.want_ready, port = run.port, "pod status written");
        run.applied_ready = Some(pod.want_ready);
        Ok(())
    }

    #[tracing::instrument(skip(self, pod))]
    async fn stop(&mut self, uid: &str, pod: Option<&PodView>, confirm_delete: bool) -> Result<()> {
        let run = self.running.remove(uid);
        let node_name = run
            .as_ref()
            .map(|r| r.node.clone())
            .or_else(|| pod.map(|p| p.node.clone()))
            .unwrap_or_default();
        let node_netns = self
            .plan
            .node(&node_name)
            .map(|n| n.netns.clone())
            .unwrap_or_default();
        let short = short_id(uid);
        let file = record_file(&self.plan, &short);
        let (uid_, ns) = (uid.to_string(), pod_netns(&short));
        blocking(move || {
            if let Some(mut r) = run {
                if let Some(p) = r.process.as_mut() {
                    p.stop();
                }
            } else if let Some(old) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| serde_json::from_str::<PodRecord>(&s).ok())
            {
                stop_recorded(&old);
            }
            teardown_network(&node_netns, &ns, &uid_);
            let _ = std::fs::remove_file(&file);
            Ok(())
        })
        .await?;
        if let (true, Some(p)) = (confirm_delete, pod) {
            let api: Api<Pod> = Api::namespaced(self.api.clone().into_client(), &p.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(p.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&p.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(pod = %p.key(), "pod stopped and its deletion confirmed");
        } else {
            tracing::info!("pod stopped");
        }
        Ok(())
    }

    /// On cancellation: every pod process the agent started stops, every pod netns goes.
    async fn shutdown(&mut self) {
        let running = std::mem::take(&mut self.running);
        let plan = self.plan.clone();
        let n = running.len();
        let done = blocking(move || {
            for (uid, mut r) in running {
                if let Some(p) = r.process.as_mut() {
                    p.stop();
                }
                let node_netns = plan
                    .node(&r.node)
                    .map(|n| n.netns.clone())
                    .unwrap_or_default();
                teardown_network(&node_netns, &pod_netns(&r.short), &uid);
                let _ = std::fs::remove_file(record_file(&plan, &r.short));
            }
            Ok(())
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "stopping pods failed");
        }
        tracing::info!(pods = n, "agent stopped its pods");
    }
}

/// Runs blocking work (`ip`, waiting for processes) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Lab(format!("blocking task failed: {e}")))?
}

fn write_record(file: &Path, rec: &PodRecord) -> Result<()> {
    let json = serde_json::to_string_pretty(rec).map_err(|e| Error::Lab(e.to_string()))?;
    std::fs::write(file, json).map_err(io_err(file))
}

/// Stops a recorded process that is not our child (left by an earlier agent), only if the
/// PID still names the recorded process.
fn stop_recorded(rec: &PodRecord) {
    if let Some(pid) = rec.pid {
        crate::lab::procs::terminate(pid, rec.start_time, false, Duration::from_secs(5));
    }
}

/// `cbr0` in the node namespace, with the pods' gateway addresses, forwarding on.
/// Idempotent: called before every pod.
fn ensure_bridge(node: &NodePlan) -> Result<()> {
    let ns = node.netns.as_str();
    if netns::ip_in(ns, &["link", "show", POD_BRIDGE]).is_err() {
        netns::ip_in(ns, &["link", "add", POD_BRIDGE, "type", "bridge"])?;
        tracing::info!(node = %node.name, "created {POD_BRIDGE}");
    }
    for (cidr, gw) in node.pod_cidrs.iter().zip(&node.pod_gateways) {
        let prefix = Cidr::parse(cidr)
            .ok_or_else(|| Error::Lab(format!("node {}: bad pod CIDR {cidr}", node.name)))?
            .prefix;
        let addr = format!("{gw}/{prefix}");
        let mut args = vec!["addr", "replace", &addr, "dev", POD_BRIDGE];
        if gw.is_ipv6() {
            args.push("nodad");
        }
        netns::ip_in(ns, &args)?;
    }
    netns::ip_in(ns, &["link", "set", POD_BRIDGE, "up"])?;
    netns::sysctl_in(ns, "net.ipv4.ip_forward", "1")?;
    netns::sysctl_in(ns, "net.ipv6.conf.all.forwarding", "1")?;
    Ok(())
}

/// The pod's namespace, its veth pair on the node's bridge, addresses and default routes.
/// Whatever an earlier attempt left is removed first.
fn setup_network(node: &NodePlan, ns: &str, short: &str, ips: &[IpAddr]) -> Result<()> {
    let veth = pod_veth(short);
    teardown_network(&node.netns, ns, "");
    ensure_bridge(node)?;
    netns::add_ns(ns)?;
    netns::veth(&veth, Some(&node.netns), "eth0", Some(ns))?;
    netns::ip_in(
        &node.netns,
        &["link", "set", &veth, "master", POD_BRIDGE, "up"],
    )?;
    // Lets a pod reach itself through a Service (traffic hairpins on its own port).
    let _ = netns::ip_in(
        &node.netns,
        &[
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ],
    );
    netns::ip_in(ns, &["link", "set", "eth0", "up"])?;
    for ((ip, cidr), gw) in ips.iter().zip(&node.pod_cidrs).zip(&node.pod_gateways) {
        let prefix = Cidr::parse(cidr).map_or(if ip.is_ipv4() { 24 } else { 64 }, |c| c.prefix);
        let addr = format!("{ip}/{prefix}");
        let gw = gw.to_string();
        if ip.is_ipv4() {
            netns::ip_in(ns, &["addr", "add", &addr, "dev", "eth0"])?;
            netns::ip_in(
                ns,
                &["route", "replace", "default", "via", &gw, "dev", "eth0"],
            )?;
        } else {
            netns::ip_in(ns, &["addr", "add", &addr, "dev", "eth0", "nodad"])?;
            netns::ip_in(
                ns,
                &[
                    "-6", "route", "replace", "default", "via", &gw, "dev", "eth0",
                ],
            )?;
        }
    }
    Ok(())
}

/// Removes the pod's veth (node side) and namespace; missing pieces are fine.
fn teardown_network(node_netns: &str, ns: &str, uid: &str) {
    if let Some(short) = ns.strip_prefix(&pod_netns(""))
        && !node_netns.is_empty()
    {
        let _ = netns::ip_in(node_netns, &["link", "del", &pod_veth(short)]);
    }
    if let Err(e) = netns::del_ns(ns) {
        tracing::warn!(netns = %ns, uid, error = %e, "cannot delete pod namespace");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::{ProxyMode, Stack};
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn plan(stack: Stack) -> LabPlan {
        LabPlan::new(2, stack, ProxyMode::Iptables, "/tmp/flb-test".into())
    }

    #[test]
    fn names_fit_the_kernel_limits_and_start_with_the_prefix() {
        let uid = "3f2a9b1c-77de-4e0a-9a43-0c1d2e3f4a5b";
        let s = short_id(uid);
        assert_eq!(s, "3f2a9b1c");
        assert_eq!(pod_netns(&s), "flb-pod-3f2a9b1c");
        assert_eq!(pod_veth(&s), "vp3f2a9b1c");
        assert!(pod_veth(&s).len() <= 15);
        assert_eq!(short_id("ABCDEF12-0000"), "abcdef12");
        // No usable hex: a stable hash, still 8 hex digits.
        let odd = short_id("pod-xyz");
        assert_eq!(odd.len(), 8);
        assert_eq!(odd, short_id("pod-xyz"));
        assert!(odd.chars().all(|c| c.is_ascii_hexdigit()));
        let p = plan(Stack::Ipv4);
        assert_eq!(
            node_stopped_file(&p, "node1"),
            PathBuf::from("/tmp/flb-test/stopped-node1")
        );
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c = Cidr::parse("10.244.1.7/24").unwrap();
        assert_eq!(c.network, ip("10.244.1.0"));
        assert_eq!(c.prefix, 24);
        assert!(c.contains(ip("10.244.1.255")));
        assert!(!c.contains(ip("10.244.2.1")));
        assert!(!c.contains(ip("::1")));
        let c6 = Cidr::parse("fd00:244:0:1::/64").unwrap();
        assert!(c6.contains(ip("fd00:244:0:1::abcd")));
        assert!(!c6.contains(ip("fd00:244:0:2::1")));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("10.0.0.0"), None);
        assert_eq!(Cidr::parse("nonsense/8"), None);
    }

    #[test]
    fn allocation_skips_network_gateway_broadcast_and_used() {
        let c = Cidr::parse("10.244.1.0/24").unwrap();
        let gw = ip("10.244.1.1");
        let mut used = BTreeSet::new();
        assert_eq!(next_free(&c, gw, &used), Some(ip("10.244.1.2")));
        used.insert(ip("10.244.1.2"));
        used.insert(ip("10.244.1.4"));
        assert_eq!(next_free(&c, gw, &used), Some(ip("10.244.1.3")));
        // A full /24 holds 253 pods (.2 - .254); .255 is never handed out.
        let full: BTreeSet<IpAddr> = (2..=254).map(|i| ip(&format!("10.244.1.{i}"))).collect();
        assert_eq!(next_free(&c, gw, &full), None);
        let almost: BTreeSet<IpAddr> = (2..=253).map(|i| ip(&format!("10.244.1.{i}"))).collect();
        assert_eq!(next_free(&c, gw, &almost), Some(ip("10.244.1.254")));
        // IPv6: no broadcast, the gateway ::1 is skipped.
        let c6 = Cidr::parse("fd00:244:0:1::/64").unwrap();
        assert_eq!(
            next_free(&c6, ip("fd00:244:0:1::1"), &BTreeSet::new()),
            Some(ip("fd00:244:0:1::2"))
        );
        // Tiny prefixes do not underflow.
        assert_eq!(
            next_free(&Cidr::parse("10.0.0.1/32").unwrap(), gw, &BTreeSet::new()),
            None
        );
    }

    #[test]
    fn a_pod_gets_one_ip_per_family_and_keeps_reported_ones() {
        let p = plan(Stack::DualStack);
        let n = &p.nodes[1];
        let ips = allocate_pod_ips(n, &BTreeSet::new()).unwrap();
        assert_eq!(ips, [ip("10.244.2.2"), ip("fd00:244:0:2::2")]);
        let used: BTreeSet<IpAddr> = ips.iter().copied().collect();
        assert_eq!(
            allocate_pod_ips(n, &used).unwrap(),
            [ip("10.244.2.3"), ip("fd00:244:0:2::3")]
        );
        // After an agent restart, a pod keeps the IPs its status reports…
        let reported = [ip("10.244.2.9"), ip("fd00:244:0:2::9")];
        assert_eq!(
            reusable_pod_ips(n, &reported, &used),
            Some(reported.to_vec())
        );
        // …unless they are taken, belong to another node, or miss a family.
        let taken: BTreeSet<IpAddr> = [ip("10.244.2.9")].into();
        assert_eq!(reusable_pod_ips(n, &reported, &taken), None);
        assert_eq!(
            reusable_pod_ips(n, &[ip("10.244.1.9"), ip("fd00:244:0:2::9")], &used),
            None
        );
        assert_eq!(reusable_pod_ips(n, &[ip("10.244.2.9")], &used), None);
        assert_eq!(reusable_pod_ips(n, &[], &used), None);
    }

    fn pod(uid: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "echo".into(),
                    image: Some("ferrolb/echo".into()),
                    ports: Some(vec![ContainerPort {
                        container_port: 9090,
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn pod_view_reads_port_readiness_and_deletion() {
        let mut p = pod("u1", "node1");
        let v = pod_view(&p).unwrap();
        assert_eq!((v.port, v.want_ready, v.deleting), (9090, true, false));
        assert_eq!(v.key(), "default/web");
        p.metadata.annotations = Some([(READY_ANNOTATION.to_string(), "false".to_string())].into());
        assert!(!pod_view(&p).unwrap().want_ready);
        p.metadata.annotations = Some([(READY_ANNOTATION.to_string(), "true".to_string())].into());
        assert!(pod_view(&p).unwrap().want_ready);
        p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(pod_view(&p).unwrap().deleting);
        if let Some(s) = p.spec.as_mut() {
            s.containers[0].ports = None;
        }
        assert_eq!(pod_view(&p).unwrap().port, DEFAULT_POD_PORT);
        p.status = Some(PodStatus {
            pod_ips: Some(vec![PodIP {
                ip: "10.244.1.5".into(),
            }]),
            ..PodStatus::default()
        });
        assert_eq!(pod_view(&p).unwrap().reported_ips, [ip("10.244.1.5")]);
        assert_eq!(pod_view(&pod("u2", "")), None, "unbound pods are not ours");
    }

    fn view(uid: &str, node: &str) -> PodView {
        pod_view(&pod(uid, node)).unwrap()
    }

    #[test]
    fn the_plan_starts_restarts_updates_and_stops() {
        let running = |node: &str, exited, ready| RunningView {
            node: node.into(),
            exited,
            applied_ready: ready,
        };
        let mut wanted = BTreeMap::new();
        wanted.insert("new".to_string(), view("new", "node1"));
        wanted.insert("crashed".to_string(), view("crashed", "node1"));
        wanted.insert("steady".to_string(), view("steady", "node2"));
        let mut flipped = view("flipped", "node2");
        flipped.want_ready = false;
        wanted.insert("flipped".to_string(), flipped);
        let mut deleting = view("deleting", "node1");
        deleting.deleting = true;
        wanted.insert("deleting".to_string(), deleting);
        let mut run = BTreeMap::new();
        run.insert("crashed".to_string(), running("node1", true, Some(true)));
        run.insert("steady".to_string(), running("node2", false, Some(true)));
        run.insert("flipped".to_string(), running("node2", false, Some(true)));
        run.insert("deleting".to_string(), running("node1", false, Some(true)));
        run.insert("gone".to_string(), running("node1", false, Some(true)));
        let none = BTreeSet::new();
        let actions = plan_pods(&wanted, &run, &none, &none);
        assert_eq!(
            actions,
            [
                PodAction::Restart("crashed".into()),
                PodAction::Stop {
                    uid: "deleting".into(),
                    confirm_delete: true
                },
                PodAction::WriteStatus("flipped".into()),
                PodAction::Start("new".into()),
                PodAction::Stop {
                    uid: "gone".into(),
                    confirm_delete: false
                },
            ]
        );
        // A stopped node's pods are left alone; a backing-off pod waits, but its deletion does not.
        let stopped: BTreeSet<String> = ["node2".to_string()].into();
        let waiting: BTreeSet<String> = ["new".to_string(), "deleting".to_string()].into();
        let actions = plan_pods(&wanted, &run, &stopped, &waiting);
        assert_eq!(
            actions,
            [
                PodAction::Restart("crashed".into()),
                PodAction::Stop {
                    uid: "deleting".into(),
                    confirm_delete: true
                },
                PodAction::Stop {
                    uid: "gone".into(),
                    confirm_delete: false
                },
            ]
        );
        // Everything in place: nothing to do.
        let mut settled = BTreeMap::new();
        settled.insert("steady".to_string(), view("steady", "node2"));
        let mut run = BTreeMap::new();
        run.insert("steady".to_string(), running("node2", false, Some(true)));
        assert!(plan_pods(&settled, &run, &none, &none).is_empty());
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn pod_status_reports_running_ips_and_readiness() {
        let p = pod("3f2a9b1c-0000", "node1");
        let rt = PodRuntime {
            ips: vec![ip("10.244.1.2"), ip("fd00:244:0:1::2")],
            host_ips: vec![ip("10.77.0.11"), ip("fd77::11")],
            start_time: t(100),
            ready: true,
            ready_since: t(101),
            running_since: t(100),
            restarts: 0,
            container_id: "3f2a9b1c-0".into(),
        };
        let v = serde_json::to_value(pod_status_patch(&p, &rt)).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Pod");
        assert_eq!(
            v["metadata"],
            serde_json::json!({"name": "web", "namespace": "default"})
        );
        assert!(v.get("spec").is_none(), "only status is applied");
        let s = &v["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.1.2");
        assert_eq!(
            s["podIPs"],
            serde_json::json!([{"ip": "10.244.1.2"}, {"ip": "fd00:244:0:1::2"}])
        );
        assert_eq!(s["hostIP"], "10.77.0.11");
        assert_eq!(s["hostIPs"][1]["ip"], "fd77::11");
        assert_eq!(s["startTime"], "1970-01-01T00:01:40Z");
        let cond = |ty: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == ty)
                .unwrap()
                .clone()
        };
        for ty in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(cond(ty)["status"], "True", "{ty}");
        }
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["name"], "echo");
        assert_eq!(cs["image"], "ferrolb/echo");
        assert_eq!(cs["ready"], true);
        assert_eq!(cs["started"], true);
        assert_eq!(cs["restartCount"], 0);
        assert_eq!(cs["state"]["running"]["startedAt"], "1970-01-01T00:01:40Z");

        let not_ready = PodRuntime {
            ready: false,
            ready_since: t(200),
            ..rt
        };
        let v = serde_json::to_value(pod_status_patch(&p, &not_ready)).unwrap();
        let s = &v["status"];
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "LabNotReady");
        assert_eq!(ready["lastTransitionTime"], "1970-01-01T00:03:20Z");
        assert_eq!(
            s["conditions"][1]["status"], "True",
            "Initialized stays true"
        );
        assert_eq!(s["containerStatuses"][0]["ready"], false);
        assert_eq!(s["phase"], "Running");
    }

    fn facts() -> HostFacts {
        HostFacts {
            kernel_version: "6.1.0".into(),
            os_image: "Debian".into(),
            cpus: 4,
            memory_kib: 1024,
            boot_id: "b".into(),
        }
    }

    #[test]
    fn node_objects_carry_cidrs_labels_addresses_and_readiness() {
        let p = plan(Stack::DualStack);
        let n = &p.nodes[0];
        let v = serde_json::to_value(node_object(n)).unwrap();
        assert_eq!(v["kind"], "Node");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/hostname"], "node1");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert_eq!(v["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(
            v["spec"]["podCIDRs"],
            serde_json::json!(["10.244.1.0/24", "fd00:244:0:1::/64"])
        );
        assert!(v.get("status").is_none());

        let st = serde_json::to_value(node_status_patch(
            n,
            &facts(),
            NodeHealth::Ready,
            &t(50),
            &t(10),
        ))
        .unwrap();
        let s = &st["status"];
        assert_eq!(
            s["addresses"],
            serde_json::json!([
                {"type": "InternalIP", "address": "10.77.0.11"},
                {"type": "InternalIP", "address": "fd77::11"},
                {"type": "Hostname", "address": "node1"},
            ])
        );
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "LabNodeReady");
        assert_eq!(ready["lastHeartbeatTime"], "1970-01-01T00:00:50Z");
        assert_eq!(ready["lastTransitionTime"], "1970-01-01T00:00:10Z");
        assert_eq!(s["nodeInfo"]["kubeletVersion"], crate::bins::kube_version());
        assert_eq!(s["nodeInfo"]["operatingSystem"], "linux");
        assert_eq!(s["capacity"]["cpu"], "4");
        assert_eq!(s["allocatable"]["pods"], "110");

        let st = serde_json::to_value(node_status_patch(
            n,
            &facts(),
            NodeHealth::Stopped,
            &t(50),
            &t(60),
        ))
        .unwrap();
        let ready = st["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "Unknown");
        assert_eq!(ready["reason"], "NodeStopped");

        let lease =
            serde_json::to_value(node_lease(n, Timestamp::from_second(5).unwrap())).unwrap();
        assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(lease["metadata"]["namespace"], "kube-node-lease");
        assert_eq!(lease["spec"]["holderIdentity"], "node1");
        assert_eq!(lease["spec"]["renewTime"], "1970-01-01T00:00:05.000000Z");
    }

    #[test]
    fn pod_records_keep_what_down_needs() {
        let rec = PodRecord {
            pid: Some(42),
            start_time: Some(7),
            netns: "flb-pod-3f2a9b1c".into(),
            node_netns: "flb-node1".into(),
            node: "node1".into(),
            pod: "default/web".into(),
            uid: "3f2a9b1c-0000".into(),
        };
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["pid"], 42);
        assert_eq!(v["netns"], "flb-pod-3f2a9b1c");
        assert_eq!(v["start_time"], 7);
        // Minimal records (`{pid, netns}`) still read.
        let min: PodRecord = serde_json::from_str(r#"{"pid": 1, "netns": "flb-pod-x"}"#).unwrap();
        assert_eq!(min.pid, Some(1));
    }
}
