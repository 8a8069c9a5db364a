//! Bringing the lab up and down: the topology of [`super::topology`] made real with
//! [`super::netns`], the control plane and node components started with [`super::procs`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::info;

use super::netns::{self, add_ns, exec_in, ip, ip_in, veth};
use super::procs::{self, ProcRecord};
use super::topology::{
    APISERVER_PORT, CLIENT_NS, CP_NS, HOST_LINK, LAN_BRIDGE, LabPlan, NodePlan, PREFIX,
};
use crate::control_plane::{
    client_from_kubeconfig, kubeconfig_token_yaml, kubeconfig_yaml, wait_readyz,
};
use crate::pki::{Pki, service_account_key};
use crate::{Error, Result, bins, io_err};

/// Where the lab keeps its state unless told otherwise.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("FERROLB_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/ferrolb-lab"))
}

/// The repository root (for `deploy/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reads the plan of a lab that is up.
pub fn load_plan(state: &Path) -> Result<LabPlan> {
    let path = state.join("lab.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::Lab(format!(
            "no lab is up (no {}); run `ferrolb-lab up`",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_err(path))
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Files of the lab's PKI and kubeconfigs.
#[derive(Debug)]
pub struct Files;

impl Files {
    pub fn pki(state: &Path) -> PathBuf {
        state.join("pki")
    }
    pub fn admin_kubeconfig(state: &Path) -> PathBuf {
        state.join("admin.kubeconfig")
    }
    pub fn kubeconfig(state: &Path, who: &str) -> PathBuf {
        state.join(format!("{who}.kubeconfig"))
    }
}

/// Creates namespaces, links, addresses and routes.
fn build_topology(plan: &LabPlan) -> Result<()> {
    for ns in plan.namespaces() {
        add_ns(&ns)?;
    }
    // The one host link.
    veth(HOST_LINK, None, "up0", Some(CP_NS))?;
    ip(&[
        "addr",
        "add",
        &format!("{}/30", plan.host_ip),
        "dev",
        HOST_LINK,
    ])?;
    ip(&["link", "set", HOST_LINK, "up"])?;
    ip_in(
        CP_NS,
        &[
            "addr",
            "add",
            &format!("{}/30", plan.cp_uplink_ip),
            "dev",
            "up0",
        ],
    )?;
    ip_in(CP_NS, &["link", "set", "up0", "up"])?;

    // The LAN: a bridge in the control plane's namespace.
    ip_in(CP_NS, &["link", "add", LAN_BRIDGE, "type", "bridge"])?;
    ip_in(
        CP_NS,
        &[
            "addr",
            "add",
            &format!("{}/24", plan.cp_lan_v4),
            "dev",
            LAN_BRIDGE,
        ],
    )?;
    if plan.stack.v6() {
        ip_in(
            CP_NS,
            &[
                "addr",
                "add",
                &format!("{}/64", plan.cp_lan_v6),
                "dev",
                LAN_BRIDGE,
                "nodad",
            ],
        )?;
    }
    ip_in(CP_NS, &["link", "set", LAN_BRIDGE, "up"])?;

    let attach = |ns: &str,
                  port: &str,
                  v4: Option<std::net::Ipv4Addr>,
                  v6: Option<std::net::Ipv6Addr>|
     -> Result<()> {
        veth("eth0", Some(ns), port, Some(CP_NS))?;
        ip_in(CP_NS, &["link", "set", port, "master", LAN_BRIDGE, "up"])?;
        if let Some(a) = v4 {
            ip_in(ns, &["addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        if let Some(a) = v6 {
            ip_in(
                ns,
                &["addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"],
            )?;
        }
        ip_in(ns, &["link", "set", "eth0", "up"])?;
        Ok(())
    };
    attach(CLIENT_NS, "cl", plan.client_v4, plan.client_v6)?;
    for n in &plan.nodes {
        attach(&n.netns, &n.bridge_port, n.lan_v4, n.lan_v6)?;
        netns::sysctl_in(&n.netns, "net.ipv4.ip_forward", "1")?;
        if plan.stack.v6() {
            netns::sysctl_in(&n.netns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        // An IPv6-only node still needs its control-plane link: reach the API over v6.
        // Routes to the other nodes' pod CIDRs over the LAN (host-gw).
        for other in plan.nodes.iter().filter(|o| o.name != n.name) {
            for cidr in &other.pod_cidrs {
                let via = if cidr.contains(':') {
                    other.lan_v6.map(IpAddr::V6)
                } else {
                    other.lan_v4.map(IpAddr::V4)
                };
                if let Some(via) = via {
                    ip_in(&n.netns, &["route", "add", cidr, "via", &via.to_string()])?;
                }
            }
        }
    }
    // The control plane reaches pods too (webhooks, debugging): routes via each node.
    for n in &plan.nodes {
        for cidr in &n.pod_cidrs {
            let via = if cidr.contains(':') {
                n.lan_v6.map(IpAddr::V6)
            } else {
                n.lan_v4.map(IpAddr::V4)
            };
            if let Some(via) = via {
                ip_in(CP_NS, &["route", "add", cidr, "via", &via.to_string()])?;
            }
        }
    }
    Ok(())
}

/// Certificates and kubeconfigs for every component.
fn write_pki(plan: &LabPlan) -> Result<()> {
    let state = &plan.state_dir;
    let dir = Files::pki(state);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let pki = Pki::new("ferrolb-lab-ca")?;
    let mut sans: Vec<String> = vec![
        s(plan.cp_lan_v4),
        s(plan.cp_lan_v6),
        s(plan.cp_uplink_ip),
        "127.0.0.1".into(),
        "10.96.0.1".into(),
        "fd00:96::1".into(),
        "localhost".into(),
    ];
    sans.extend(
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from),
    );
    let serving = pki.server("kube-apiserver", &sans)?;
    write(&dir.join("ca.crt"), pki.ca_pem())?;
    write(&dir.join("apiserver.crt"), &serving.cert)?;
    write(&dir.join("apiserver.key"), &serving.key)?;
    let sa = service_account_key()?;
    write(&dir.join("sa.key"), &sa.key)?;
    write(&dir.join("sa.pub"), &sa.cert)?;

    let admin = pki.client("ferrolb-lab-admin", &["system:masters"])?;
    write(
        &Files::admin_kubeconfig(state),
        &kubeconfig_yaml(
            &plan.host_server(),
            pki.ca_pem(),
            "ferrolb-lab-admin",
            &admin,
        ),
    )?;
    // Components inside namespaces use the LAN address.
    let kcm = pki.client("system:kube-controller-manager", &[])?;
    write(
        &Files::kubeconfig(state, "kube-controller-manager"),
        &kubeconfig_yaml(
            &format!("https://127.0.0.1:{APISERVER_PORT}"),
            pki.ca_pem(),
            "system:kube-controller-manager",
            &kcm,
        ),
    )?;
    let proxy = pki.client("system:kube-proxy", &[])?;
    write(
        &Files::kubeconfig(state, "kube-proxy"),
        &kubeconfig_yaml(
            &plan.lan_server(),
            pki.ca_pem(),
            "system:kube-proxy",
            &proxy,
        ),
    )?;
    Ok(())
}

async fn wait_api(plan: &LabPlan, watch: &[&ProcRecord]) -> Result<kube::Client> {
    let kc = Files::admin_kubeconfig(&plan.state_dir);
    let text = std::fs::read_to_string(&kc).map_err(io_err(&kc))?;
    let client = client_from_kubeconfig(&text).await?;
    let dead = || {
        watch.iter().find(|p| !p.alive()).map(|p| Error::EarlyExit {
            name: p.name.clone(),
            status: "exited".into(),
            log: p.log.display().to_string(),
            tail: crate::process::log_tail(&p.log, 15),
        })
    };
    let log = procs::log_dir(&plan.state_dir).join("kube-apiserver.log");
    wait_readyz(&client, Duration::from_secs(120), dead, &log).await?;
    Ok(client)
}

fn kubectl(plan: &LabPlan, args: &[&str]) -> Result<String> {
    bins::kubectl(&Files::admin_kubeconfig(&plan.state_dir), args)
}

fn start_control_plane(plan: &LabPlan) -> Result<Vec<ProcRecord>> {
    let state = &plan.state_dir;
    let pki = Files::pki(state);
    let p = |f: &str| pki.join(f).display().to_string();
    let etcd = procs::spawn(
        state,
        "etcd",
        Some(CP_NS),
        &bins::binary("etcd")?,
        &[
            "--name=lab".into(),
            format!("--data-dir={}", state.join("etcd").display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=lab=http://127.0.0.1:2380".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    let apiserver = procs::spawn(
        state,
        "kube-apiserver",
        Some(CP_NS),
        &bins::binary("kube-apiserver")?,
        &[
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--bind-address=0.0.0.0".into(),
            format!(
                "--advertise-address={}",
                if plan.stack == super::topology::Stack::Ipv6 {
                    s(plan.cp_lan_v6)
                } else {
                    s(plan.cp_lan_v4)
                }
            ),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--cert-dir={}", pki.join("generated").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={}", plan.service_cidrs),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ],
    )?;
    Ok(vec![etcd, apiserver])
}

fn start_controller_manager(plan: &LabPlan) -> Result<ProcRecord> {
    let state = &plan.state_dir;
    let pki = Files::pki(state);
    let kc = Files::kubeconfig(state, "kube-controller-manager")
        .display()
        .to_string();
    procs::spawn(state, "kube-controller-manager", Some(CP_NS), &bins::binary("kube-controller-manager")?, &[
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--controllers=endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller".into(),
        format!("--service-account-private-key-file={}", pki.join("sa.key").display()),
        format!("--root-ca-file={}", pki.join("ca.crt").display()),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=10257".into(),
        "--use-service-account-credentials=true".into(),
    ])
}

/// Starts kube-proxy in one node's namespace.
pub fn start_kube_proxy(plan: &LabPlan, node: &str) -> Result<ProcRecord> {
    let n = plan
        .node(node)
        .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
    let kc = Files::kubeconfig(&plan.state_dir, "kube-proxy")
        .display()
        .to_string();
    procs::spawn(
        &plan.state_dir,
        &format!("kube-proxy-{}", n.name),
        Some(&n.netns),
        &bins::binary("kube-proxy")?,
        &[
            format!("--kubeconfig={kc}"),
            format!("--hostname-override={}", n.name),
            format!("--proxy-mode={}", plan.proxy_mode.as_str()),
            format!("--cluster-cidr={}", plan.cluster_cidrs),
            "--conntrack-max-per-core=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
        ],
    )
}

/// A kubeconfig with a token of one of `deploy/`'s ServiceAccounts in ferrolb-system, so
/// that the component runs with exactly that account's RBAC.
fn service_account_kubeconfig(plan: &LabPlan, account: &str, server: &str) -> Result<PathBuf> {
    let token = kubectl(
        plan,
        &[
            "create",
            "token",
            account,
            "-n",
            "ferrolb-system",
            "--duration=8760h",
        ],
    )?;
    let ca = std::fs::read_to_string(Files::pki(&plan.state_dir).join("ca.crt"))
        .map_err(io_err(Files::pki(&plan.state_dir)))?;
    let path = Files::kubeconfig(&plan.state_dir, account);
    write(
        &path,
        &kubeconfig_token_yaml(
            server,
            &ca,
            &format!("system:serviceaccount:ferrolb-system:{account}"),
            token.trim(),
        ),
    )?;
    Ok(path)
}

/// The ferrolb controller's kubeconfig; it runs beside the API server in `flb-cp`.
fn controller_kubeconfig(plan: &LabPlan) -> Result<PathBuf> {
    service_account_kubeconfig(
        plan,
        "ferrolb-controller",
        &format!("https://127.0.0.1:{APISERVER_PORT}"),
    )
}

/// The speakers' kubeconfig (one for all nodes); they run in the node namespaces, so they
/// reach the API server over the LAN.
fn speaker_kubeconfig(plan: &LabPlan) -> Result<PathBuf> {
    service_account_kubeconfig(plan, "ferrolb-speaker", &plan.lan_server())
}

/// The directory holding ferrolb's binaries for `plan`: the one `up` recorded, else the
/// running executable's own (target/<profile>), or its parent when `name` is there (a test
/// binary in target/<profile>/deps, built without a separate build directory).
fn own_binary_dir(plan: &LabPlan, name: &str) -> Result<PathBuf> {
    if let Some(dir) = &plan.bin_dir {
        return Ok(dir.clone());
    }
    let me = std::env::current_exe().map_err(io_err("/proc/self/exe"))?;
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    let parent = dir.join("..");
    Ok(
        if !dir.join(name).is_file() && parent.join(name).is_file() {
            parent
        } else {
            dir
        },
    )
}

/// Path of one of ferrolb's binaries (see [`own_binary_dir`]); an error names the
/// directory when it is not there.
pub fn sibling_binary(plan: &LabPlan, name: &str) -> Result<PathBuf> {
    let dir = own_binary_dir(plan, name)?;
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::MissingOwnBinary {
            name: name.into(),
            dir: dir.display().to_string(),
        })
    }
}

/// Starts the ferrolb controller beside the control plane.
pub fn start_controller(plan: &LabPlan) -> Result<ProcRecord> {
    let kc = Files::kubeconfig(&plan.state_dir, "ferrolb-controller");
    procs::spawn(
        &plan.state_dir,
        "ferrolb-controller",
        Some(CP_NS),
        &sibling_binary(plan, "ferrolb-controller")?,
        &[
            format!("--kubeconfig={}", kc.display()),
            "--identity=lab-controller".into(),
            "--lease-namespace=ferrolb-system".into(),
            "--admin-address=127.0.0.1:7472".into(),
        ],
    )
}

/// Name of the process record of `node`'s speaker.
pub fn speaker_record_name(node: &str) -> String {
    format!("ferrolb-speaker-{node}")
}

/// Starts the ferrolb speaker in one node's namespace (the lab's host network of that
/// node), as the `ferrolb-speaker` ServiceAccount. Its admin server listens on the node's
/// first LAN address.
pub fn start_speaker(plan: &LabPlan, node: &str) -> Result<ProcRecord> {
    start_speaker_with(plan, node, &[])
}

/// [`start_speaker`] with `extra` flags after the lab's own.
pub fn start_speaker_with(plan: &LabPlan, node: &str, extra: &[String]) -> Result<ProcRecord> {
    let n = plan
        .node(node)
        .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
    let admin = speaker_admin_address(n)?;
    let kc = Files::kubeconfig(&plan.state_dir, "ferrolb-speaker");
    procs::spawn(
        &plan.state_dir,
        &speaker_record_name(&n.name),
        Some(&n.netns),
        &sibling_binary(plan, "ferrolb-speaker")?,
        &[
            format!("--kubeconfig={}", kc.display()),
            format!("--node-name={}", n.name),
            format!("--admin-address={admin}"),
            "--log-format=text".into(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect::<Vec<_>>(),
    )
}

/// Where a node's speaker serves `/healthz`, `/readyz` and `/metrics`: its first LAN address.
pub fn speaker_admin_address(n: &NodePlan) -> Result<String> {
    match (n.lan_v4, n.lan_v6) {
        (Some(v4), _) => Ok(format!("{v4}:7473")),
        (None, Some(v6)) => Ok(format!("[{v6}]:7473")),
        (None, None) => Err(Error::Lab(format!("node {} has no LAN address", n.name))),
    }
}

/// Waits until every given speaker answers `/readyz` (its watches synced, gossip settled),
/// so that whoever comes next finds the IPs announced; fails at once, with the tail of its
/// log, when one exits.
pub fn wait_speakers_ready(plan: &LabPlan, speakers: &[ProcRecord]) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(60);
    let deadline = Instant::now() + TIMEOUT;
    let mut waiting: Vec<(&ProcRecord, &NodePlan)> = Vec::new();
    for r in speakers {
        let n = plan
            .nodes
            .iter()
            .find(|n| speaker_record_name(&n.name) == r.name)
            .ok_or_else(|| Error::Lab(format!("{} is not a speaker of this lab", r.name)))?;
        waiting.push((r, n));
    }
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for (r, n) in waiting {
            if !r.alive() {
                return Err(Error::EarlyExit {
                    name: r.name.clone(),
                    status: "exited".into(),
                    log: r.log.display().to_string(),
                    tail: crate::process::log_tail(&r.log, 15),
                });
            }
            let url = format!("http://{}/readyz", speaker_admin_address(n)?);
            if exec_in(&n.netns, "curl", &["-sf", "-g", "--max-time", "1", &url]).is_err() {
                still.push((r, n));
            }
        }
        waiting = still;
        if let Some((r, _)) = waiting.first() {
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("{} (/readyz)", r.name),
                    seconds: TIMEOUT.as_secs(),
                    log: r.log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Starts the lab's node agent (it plays kubelet) in the host namespace.
pub fn start_agent(plan: &LabPlan) -> Result<ProcRecord> {
    let me = std::env::current_exe().map_err(io_err("/proc/self/exe"))?;
    procs::spawn(
        &plan.state_dir,
        "lab-agent",
        None,
        &me,
        &[
            "agent".into(),
            format!("--state-dir={}", plan.state_dir.display()),
        ],
    )
}

/// `ferrolb-lab up`.
pub async fn up(plan: LabPlan) -> Result<LabPlan> {
    let t0 = Instant::now();
    let state = plan.state_dir.clone();
    if state.join("lab.json").exists() || !leftovers()?.is_empty() {
        info!("a lab (or what a crashed one left) is in the way: taking it down first");
        down(&state)?;
    }
    std::fs::create_dir_all(&state).map_err(io_err(&state))?;
    let mut plan = plan;
    let bin_dir = own_binary_dir(&plan, "ferrolb-speaker")?;
    plan.bin_dir = Some(bin_dir.canonicalize().map_err(io_err(&bin_dir))?);
    // Record the plan first, so that `down` can undo a half-done `up`.
    write(
        &plan.plan_file(),
        &serde_json::to_string_pretty(&plan).map_err(|e| Error::Lab(e.to_string()))?,
    )?;
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-proxy",
        "kubectl",
    ] {
        bins::binary(b)?;
    }
    sibling_binary(&plan, "ferrolb-controller")?;
    sibling_binary(&plan, "ferrolb-speaker")?;

    build_topology(&plan)?;
    write_pki(&plan)?;
    let cp = start_control_plane(&plan)?;
    let client = wait_api(&plan, &cp.iter().collect::<Vec<_>>()).await?;
    info!(secs = t0.elapsed().as_secs_f64(), "API server ready");
    start_controller_manager(&plan)?;

    let root = repo_root();
    let deploy = root.join("deploy");
    for f in [
        "namespace.yaml",
        "crds/ferrolb.io_ippools.yaml",
        "controller-rbac.yaml",
        "speaker-rbac.yaml",
    ] {
        kubectl(
            &plan,
            &[
                "apply",
                "--server-side",
                "-f",
                &deploy.join(f).display().to_string(),
            ],
        )?;
    }
    kubectl(
        &plan,
        &[
            "wait",
            "--for=condition=Established",
            "crd/ippools.ferrolb.io",
            "--timeout=60s",
        ],
    )?;

    start_agent(&plan)?;
    wait_nodes(&client, &plan).await?;
    for n in &plan.nodes {
        start_kube_proxy(&plan, &n.name)?;
    }
    controller_kubeconfig(&plan)?;
    start_controller(&plan)?;
    // The controller creates the gossip Secret; each speaker waits for it.
    speaker_kubeconfig(&plan)?;
    let speakers = plan
        .nodes
        .iter()
        .map(|n| start_speaker(&plan, &n.name))
        .collect::<Result<Vec<_>>>()?;

    let pool = serde_json::json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "lab"}, "spec": {"addresses": plan.pool}});
    let pool_file = state.join("sample-pool.json");
    write(&pool_file, &pool.to_string())?;
    kubectl(
        &plan,
        &[
            "apply",
            "--server-side",
            "-f",
            &pool_file.display().to_string(),
        ],
    )?;
    wait_speakers_ready(&plan, &speakers)?;
    info!(secs = t0.elapsed().as_secs_f64(), "lab up");
    Ok(plan)
}

async fn wait_nodes(client: &kube::Client, plan: &LabPlan) -> Result<()> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = nodes
            .list(&Default::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if have >= plan.nodes.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: "the lab's Node objects".into(),
                seconds: 60,
                log: procs::log_dir(&plan.state_dir)
                    .join("lab-agent.log")
                    .display()
                    .to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lab namespaces and links that exist now (including those of a crashed `up`).
pub fn leftovers() -> Result<Vec<String>> {
    let mut v: Vec<String> = netns::list_ns()?
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    if ip(&["link", "show", HOST_LINK]).is_ok() {
        v.push(format!("link {HOST_LINK}"));
    }
    Ok(v)
}

/// `ferrolb-lab down`: stops every recorded process, pods included, then removes every lab
/// namespace and the host link. Idempotent.
pub fn down(state: &Path) -> Result<()> {
    // The agent first, so it does not restart pods while we stop them.
    let recs = procs::records(state);
    for name in ["lab-agent"] {
        if let Some(r) = recs.iter().find(|r| r.name == name) {
            procs::stop(state, r, false, Duration::from_secs(10));
        }
    }
    // Pods the agent recorded (it may have died before it could stop them).
    if let Ok(plan) = load_plan(state) {
        super::agent::cleanup_recorded_pods(&plan);
    }
    // Clients before servers: everything that talks to the API server stops while it still
    // answers (the speakers leave the gossip group, the controller hands its Lease back),
    // etcd last. Each rank stops together.
    let mut rest = procs::records(state);
    rest.sort_by_key(|r| (stop_rank(&r.name), r.name.clone()));
    for rank in rest.chunk_by(|a, b| stop_rank(&a.name) == stop_rank(&b.name)) {
        std::thread::scope(|scope| {
            for r in rank {
                scope.spawn(|| procs::stop(state, r, false, Duration::from_secs(10)));
            }
        });
    }
    for ns in netns::list_ns()?
        .into_iter()
        .filter(|n| n.starts_with(PREFIX))
    {
        netns::del_ns(&ns)?;
    }
    if ip(&["link", "show", HOST_LINK]).is_ok() {
        ip(&["link", "del", HOST_LINK])?;
    }
    if state.exists() {
        std::fs::remove_dir_all(state).map_err(io_err(state))?;
    }
    Ok(())
}

/// When `down` stops a process: lower first. The speakers go first and all at once: each
/// leaves the gossip group on SIGTERM, and with every speaker going there is nobody to hand
/// over to.
fn stop_rank(name: &str) -> u8 {
    match name {
        n if n.starts_with("ferrolb-speaker-") => 0,
        "kube-controller-manager" => 2,
        "kube-apiserver" => 3,
        "etcd" => 4,
        _ => 1,
    }
}

/// Runs a command inside a lab namespace (`client`, a node name, or a namespace name).
pub fn exec(plan: &LabPlan, target: &str, program: &str, args: &[&str]) -> Result<String> {
    exec_in(&resolve_ns(plan, target)?, program, args)
}

/// The network namespace behind a name users type.
pub fn resolve_ns(plan: &LabPlan, target: &str) -> Result<String> {
    match target {
        "client" | CLIENT_NS => Ok(CLIENT_NS.into()),
        "cp" | "control-plane" | CP_NS => Ok(CP_NS.into()),
        other => plan.node(other).map(|n| n.netns.clone()).ok_or_else(|| {
            Error::Lab(format!(
                "no lab namespace {other:?}: use client, cp or a node name ({})",
                plan.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }),
    }
}
