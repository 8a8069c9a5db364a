//! `ferrolb-lab`: the command line of the lab (see SPEC's lab table).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::cluster::{self, Files};
use super::netns;
use super::procs;
use super::topology::{CP_NS, LabPlan, ProxyMode, Stack};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ProxyModeArg {
    Iptables,
    Nftables,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NodeAction {
    /// Kill (SIGKILL) the node's processes (kube-proxy, speaker); the node goes NotReady.
    Stop,
    /// Start them again (kube-proxy, speaker).
    Start,
    /// Take the node's LAN link down.
    Cut,
    /// Bring it back up.
    Heal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Component {
    Controller,
    Speaker,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Build and start the lab: control plane, nodes, kube-proxy, ferrolb, a sample IPPool.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// IPv6 only.
        #[arg(long, conflicts_with = "dual_stack")]
        ipv6: bool,
        /// IPv4 and IPv6.
        #[arg(long)]
        dual_stack: bool,
        #[arg(long, value_enum, default_value_t = ProxyModeArg::Iptables)]
        proxy_mode: ProxyModeArg,
    },
    /// Stop every process the lab started and remove its namespaces and links.
    Down,
    /// Nodes, pods, Services and their IPs; where the logs are.
    Status,
    /// Print `export KUBECONFIG=...` and the lab's addresses.
    Env,
    /// Run a command in a lab namespace: `client`, `cp`, or a node name.
    Exec {
        target: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Fault injection on one node.
    Node { name: String, action: NodeAction },
    /// Restart one component (`speaker` takes a node name, and after `--` extra flags for
    /// the new speaker, e.g. `-- --nodeport-forwarding=false`).
    Restart {
        component: Component,
        node: Option<String>,
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// (internal) The node agent that plays kubelet.
    #[command(hide = true)]
    Agent,
    /// (internal) One HTTP GET with a 3 s timeout; prints the body (pods' images have no
    /// curl).
    #[command(hide = true)]
    Fetch { url: String },
    /// (internal) The pods' echo server.
    #[command(hide = true)]
    Echo {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        node: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

/// A real Kubernetes cluster on this machine, for ferrolb.
#[derive(Debug, Parser)]
#[command(
    name = "ferrolb-lab",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("FERROLB_BUILD_COMMIT"), ")")
)]
pub struct Args {
    /// Where the lab keeps its state, logs and kubeconfigs.
    #[arg(long, env = "FERROLB_LAB_DIR", default_value_os_t = cluster::default_state_dir(), global = true)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::Lab(
            "the lab creates network namespaces and must run as root".into(),
        ))
    }
}

pub async fn run(args: Args) -> Result<()> {
    let state = args.state_dir.clone();
    match args.cmd {
        Cmd::Up {
            nodes,
            ipv6,
            dual_stack,
            proxy_mode,
        } => {
            require_root()?;
            let stack = if ipv6 {
                Stack::Ipv6
            } else if dual_stack {
                Stack::DualStack
            } else {
                Stack::Ipv4
            };
            let mode = match proxy_mode {
                ProxyModeArg::Iptables => ProxyMode::Iptables,
                ProxyModeArg::Nftables => ProxyMode::Nftables,
            };
            let t0 = std::time::Instant::now();
            let plan = cluster::up(LabPlan::new(nodes, stack, mode, state.clone())).await?;
            println!(
                "lab up in {:.1} s: {} nodes, {:?}, kube-proxy {}",
                t0.elapsed().as_secs_f64(),
                plan.nodes.len(),
                plan.stack,
                plan.proxy_mode.as_str()
            );
            print_env(&plan);
            println!(
                "\n# try: ferrolb-lab status; ferrolb-lab exec client curl ...; ferrolb-lab down"
            );
        }
        Cmd::Down => {
            require_root()?;
            cluster::down(&state)?;
            let left = cluster::leftovers()?;
            if !left.is_empty() {
                return Err(Error::Lab(format!(
                    "still present after down: {}",
                    left.join(", ")
                )));
            }
            println!("lab down: no lab namespace, link or process left");
        }
        Cmd::Status => status(&cluster::load_plan(&state)?)?,
        Cmd::Env => print_env(&cluster::load_plan(&state)?),
        Cmd::Exec { target, command } => {
            let plan = cluster::load_plan(&state)?;
            let ns = cluster::resolve_ns(&plan, &target)?;
            let status = netns::command_in(&ns, &command[0])
                .args(&command[1..])
                .status()
                .map_err(|source| Error::Spawn {
                    name: command[0].clone(),
                    source,
                })?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
        }
        Cmd::Node { name, action } => {
            require_root()?;
            let plan = cluster::load_plan(&state)?;
            node_action(&plan, &name, action)?;
        }
        Cmd::Restart {
            component,
            node,
            extra,
        } => {
            require_root()?;
            let plan = cluster::load_plan(&state)?;
            match component {
                Component::Controller => {
                    if let Some(r) = procs::record(&state, "ferrolb-controller") {
                        procs::stop(&state, &r, false, Duration::from_secs(10));
                    }
                    let r = cluster::start_controller(&plan)?;
                    println!("ferrolb-controller restarted (pid {})", r.pid);
                }
                Component::Speaker => {
                    let Some(node) = node else {
                        return Err(Error::Lab(
                            "restart speaker needs the node's name: ferrolb-lab restart speaker NODE"
                                .into(),
                        ));
                    };
                    let r = restart_speaker_with(&plan, &node, &extra)?;
                    println!("{} restarted (pid {})", r.name, r.pid);
                }
            }
        }
        Cmd::Agent => {
            let plan = cluster::load_plan(&state)?;
            let text = std::fs::read_to_string(Files::admin_kubeconfig(&state))
                .map_err(crate::io_err(Files::admin_kubeconfig(&state)))?;
            let client = crate::control_plane::client_from_kubeconfig(&text).await?;
            let me = std::env::current_exe().map_err(crate::io_err("/proc/self/exe"))?;
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                c.cancel();
            });
            super::agent::run_agent(plan, client, me, cancel).await?;
        }
        Cmd::Fetch { url } => {
            let body = super::echo::fetch(&url, std::time::Duration::from_secs(3)).await?;
            print!("{body}");
        }
        Cmd::Echo { pod, node, port } => {
            let cancel = CancellationToken::new();
            let c = cancel.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                c.cancel();
            });
            super::echo::serve_echo(pod, node, port, cancel).await?;
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_env(plan: &LabPlan) {
    println!(
        "export KUBECONFIG={}",
        Files::admin_kubeconfig(&plan.state_dir).display()
    );
    println!("# API server (from this host): {}", plan.host_server());
    for n in &plan.nodes {
        let ips: Vec<String> = n
            .lan_v4
            .map(|a| a.to_string())
            .into_iter()
            .chain(n.lan_v6.map(|a| a.to_string()))
            .collect();
        println!(
            "# {}: {} (netns {}, pods {})",
            n.name,
            ips.join(", "),
            n.netns,
            n.pod_cidrs.join(", ")
        );
    }
    let client: Vec<String> = plan
        .client_v4
        .map(|a| a.to_string())
        .into_iter()
        .chain(plan.client_v6.map(|a| a.to_string()))
        .collect();
    println!("# client: {} (netns flb-client)", client.join(", "));
    println!("# sample IPPool \"lab\": {}", plan.pool.join(", "));
}

fn status(plan: &LabPlan) -> Result<()> {
    let kubeconfig = Files::admin_kubeconfig(&plan.state_dir);
    for args in [
        ["get", "nodes", "-o", "wide"].as_slice(),
        &["get", "pods", "-A", "-o", "wide"],
        &["get", "svc", "-A"],
        &["get", "ipp"],
    ] {
        match crate::bins::kubectl(&kubeconfig, args) {
            Ok(out) => println!("{out}"),
            Err(e) => println!("({e})\n"),
        }
    }
    // Which node announces each LoadBalancer IP: the speakers' Announced condition.
    let announced = concat!(
        r#"jsonpath={range .items[?(@.spec.type=="LoadBalancer")]}"#,
        r#"  {.metadata.namespace}/{.metadata.name} {.status.loadBalancer.ingress[*].ip}: "#,
        r#"{.status.conditions[?(@.type=="ferrolb.io/Announced")].message}{"\n"}{end}"#
    );
    println!("announced (by the speakers):");
    match crate::bins::kubectl(&kubeconfig, &["get", "svc", "-A", "-o", announced]) {
        Ok(out) if out.trim().is_empty() => println!("  (no LoadBalancer Service)\n"),
        Ok(out) => println!("{}\n", out.trim_end()),
        Err(e) => println!("  ({e})\n"),
    }
    println!("processes:");
    let mut total_kib = 0;
    for r in procs::records(&plan.state_dir) {
        let rss = rss_kib(r.pid);
        total_kib += rss;
        println!(
            "  {:<28} pid {:<8} {:<8} {:>7} MiB  {}",
            r.name,
            r.pid,
            if r.alive() { "running" } else { "DEAD" },
            rss / 1024,
            r.netns.as_deref().unwrap_or("host")
        );
    }
    let pods = super::agent::pod_records(plan);
    let pod_kib: u64 = pods.iter().filter_map(|(_, p)| p.pid).map(rss_kib).sum();
    println!("  {} pod processes: {} MiB", pods.len(), pod_kib / 1024);
    println!(
        "memory (RSS) of the lab's processes: {} MiB",
        (total_kib + pod_kib) / 1024
    );
    println!("logs: {}", procs::log_dir(&plan.state_dir).display());
    Ok(())
}

/// Resident memory of a process, in KiB (0 when it is gone).
fn rss_kib(pid: u32) -> u64 {
    crate::process::memory_kib(pid).map_or(0, |(rss, _)| rss)
}

/// Stops `node`'s speaker gracefully (SIGTERM: it leaves the gossip group and hands its IPs
/// over; SIGKILL after 10 s), starts it again and waits until it is ready.
pub fn restart_speaker(plan: &LabPlan, node: &str) -> Result<procs::ProcRecord> {
    restart_speaker_with(plan, node, &[])
}

/// [`restart_speaker`], the new speaker getting `extra` flags.
pub fn restart_speaker_with(
    plan: &LabPlan,
    node: &str,
    extra: &[String],
) -> Result<procs::ProcRecord> {
    let n = plan
        .node(node)
        .ok_or_else(|| Error::Lab(format!("no node {node}")))?;
    if let Some(r) = procs::record(&plan.state_dir, &cluster::speaker_record_name(&n.name)) {
        procs::stop(&plan.state_dir, &r, false, Duration::from_secs(10));
    }
    let r = cluster::start_speaker_with(plan, &n.name, extra)?;
    cluster::wait_speakers_ready(plan, std::slice::from_ref(&r))?;
    Ok(r)
}

/// Carries out `ferrolb-lab node NAME ACTION`.
pub fn node_action(plan: &LabPlan, name: &str, action: NodeAction) -> Result<()> {
    let n = plan
        .node(name)
        .ok_or_else(|| Error::Lab(format!("no node {name}")))?;
    let state = &plan.state_dir;
    let node_procs = |state: &std::path::Path| -> Vec<procs::ProcRecord> {
        procs::records(state)
            .into_iter()
            .filter(|r| r.netns.as_deref() == Some(n.netns.as_str()))
            .collect()
    };
    match action {
        NodeAction::Stop => {
            std::fs::write(super::agent::node_stopped_file(plan, &n.name), b"")
                .map_err(crate::io_err(state))?;
            for r in node_procs(state) {
                // Kept as a record so `start` knows what to bring back.
                let keep = r.clone();
                procs::stop(state, &r, true, Duration::from_secs(2));
                let path = state.join("stopped").join(format!("{}.json", keep.name));
                let _ = std::fs::create_dir_all(state.join("stopped"));
                let _ = std::fs::write(&path, serde_json::to_string(&keep).unwrap_or_default());
            }
            println!("{name} stopped");
        }
        NodeAction::Start => {
            let _ = std::fs::remove_file(super::agent::node_stopped_file(plan, &n.name));
            if procs::record(state, &format!("kube-proxy-{}", n.name)).is_none_or(|r| !r.alive()) {
                cluster::start_kube_proxy(plan, &n.name)?;
            }
            if procs::record(state, &cluster::speaker_record_name(&n.name))
                .is_none_or(|r| !r.alive())
            {
                let r = cluster::start_speaker(plan, &n.name)?;
                cluster::wait_speakers_ready(plan, std::slice::from_ref(&r))?;
            }
            let _ = std::fs::remove_dir_all(state.join("stopped"));
            println!("{name} started");
        }
        NodeAction::Cut => {
            netns::ip_in(CP_NS, &["link", "set", &n.bridge_port, "down"])?;
            println!("{name} cut off the LAN");
        }
        NodeAction::Heal => {
            netns::ip_in(CP_NS, &["link", "set", &n.bridge_port, "up"])?;
            println!("{name} back on the LAN");
        }
    }
    Ok(())
}
