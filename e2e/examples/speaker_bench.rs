//! The speaker's lab benchmark: failover time (crash and graceful), the speaker's CPU while
//! the client floods the owner node with traffic that is not ARP or NDP, the speakers'
//! memory with 1,000 announced IPs, their CPU while EndpointSlices of Services they do
//! not announce change 50 times a second beside those 1,000 IPs, and whether any node
//! answers ARP for a node's IPs while its speaker restarts (1,000 Services over the three).
//! Runs against a running 3-node IPv4 lab and prints a Markdown report
//! (docs/benchmarks.md keeps the committed one).
//!
//! `make bench-lab`, or by hand:
//! `target/debug/ferrolb-lab up --nodes 3 && cargo run -p ferrolb-e2e --example speaker_bench`
//! (as root), then `target/debug/ferrolb-lab down`.
//!
//! The speakers measured are the binaries the lab starts (target/debug); what this program
//! is built as does not matter, it only probes and reads /proc.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, ValueEnum};
use ferrolb_e2e::lab::cli::NodeAction;
use ferrolb_e2e::lab::handle::{Lab, announced_owners};
use ferrolb_e2e::lab::topology::CLIENT_NS;
use ferrolb_e2e::probe::{Attempt, Probe, Timeouts};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nix::sys::signal::Signal;
use serde_json::json;

/// A new probe connection starts this often (or as soon as the previous one ends).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// A trial that has not recovered this long after the fault counts as failed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(2);
const CPU_WINDOW: Duration = Duration::from_secs(10);
const PAYLOAD: usize = 64;
/// The memory case's pool: off the LAN's subnet, so its interface is named.
const MEM_POOL: &str = "bench";
const MEM_POOL_CIDR: &str = "10.78.0.0/22";
const MEM_NODE: &str = "node1";
const MEM_CONCURRENCY: usize = 20;
const MEM_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Case {
    /// The owner's link is cut and its speaker SIGKILLed.
    Crash,
    /// The owner's speaker gets SIGTERM.
    Graceful,
    /// Speaker CPU, idle and under a UDP flood.
    Cpu,
    /// Speaker memory with 1,000 announced IPs.
    Memory,
    /// Speaker CPU while EndpointSlices of Services it does not announce change.
    Churn,
    /// ARP answers for an owner's IPs while its speaker restarts, with 1,000 Services.
    Restart,
}

/// ferrolb speaker benchmark on a running 3-node IPv4 lab.
#[derive(Debug, Parser)]
struct Args {
    /// Failover trials per case.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Run only these cases (comma-separated or repeated); default: all.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Case>,
    /// Leave out the memory case.
    #[arg(long)]
    skip_memory: bool,
    /// Services (announced IPs) in the memory case.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Rounds of the memory case (create, measure, delete, measure).
    #[arg(long, default_value_t = 2)]
    memory_rounds: usize,
    /// Restarts in the restart case.
    #[arg(long, default_value_t = 6)]
    restarts: usize,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn runs(&self, case: Case) -> bool {
        (self.only.is_empty() || self.only.contains(&case))
            && !(case == Case::Memory && self.skip_memory)
    }
}

/// Progress goes to stderr; the report to stdout at the end.
macro_rules! say {
    ($($t:tt)*) => {{
        eprintln!("[{:>7.1}s] {}", started().elapsed().as_secs_f64(), format!($($t)*));
    }};
}

fn started() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = started();
    let args = Args::parse();
    let lab = Lab::connect()
        .await
        .context("no lab: run `target/debug/ferrolb-lab up --nodes 3` first")?;
    let nodes = lab.node_names();
    if nodes.len() != 3 || lab.plan.client_v4.is_none() || lab.plan.client_v6.is_some() {
        bail!(
            "this benchmark wants a 3-node IPv4 lab (`ferrolb-lab up --nodes 3`); found {} nodes, {:?}",
            nodes.len(),
            lab.plan.stack
        );
    }
    wait_converged(&lab, Duration::from_secs(90)).await?;

    let mut report = String::new();
    writeln!(
        report,
        "## Speaker on the lab (failover, CPU under flood, memory)\n"
    )?;
    writeln!(
        report,
        "Run: {}; lab: {} nodes, {:?}, kube-proxy {}; speakers: `{}`.\n",
        utc_now(),
        nodes.len(),
        lab.plan.stack,
        lab.plan.proxy_mode.as_str(),
        speaker_binary(&lab).unwrap_or_else(|| "?".into())
    )?;

    // A failed section is reported and the next one still runs; the report says what was
    // measured, the exit status that something failed.
    let mut failed: Vec<String> = Vec::new();
    let wants_fo = [Case::Crash, Case::Graceful, Case::Cpu]
        .iter()
        .any(|c| args.runs(*c));
    if wants_fo {
        let ns = lab.namespace("bench-fo").await?;
        if let Err(e) = failover_and_cpu(&lab, &args, &ns.name, &mut report).await {
            say!("failover/CPU section failed: {e:#}; restoring every node");
            restore_all(&lab);
            failed.push(format!("failover/CPU: {e:#}"));
        }
        delete_namespace(&lab, &ns.name).await;
        drop(ns);
    }
    if args.runs(Case::Memory) {
        if let Err(e) = memory(&lab, &args, &mut report).await {
            say!("memory section failed: {e:#}");
            failed.push(format!("memory: {e:#}"));
        }
        delete_pool(&lab).await;
    }
    if args.runs(Case::Churn) {
        if let Err(e) = churn(&lab, &args, &mut report).await {
            say!("churn section failed: {e:#}");
            failed.push(format!("churn: {e:#}"));
        }
        delete_pool(&lab).await;
    }
    if args.runs(Case::Restart) {
        if let Err(e) = restart(&lab, &args, &mut report).await {
            say!("restart section failed: {e:#}");
            restore_all(&lab);
            failed.push(format!("restart: {e:#}"));
        }
        delete_pool(&lab).await;
    }
    for f in &failed {
        writeln!(report, "**Section failed:** {f}\n")?;
    }

    if let Some(path) = &args.out {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("\n{report}");
    if !failed.is_empty() {
        bail!("{} section(s) failed", failed.len());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The lab: names, metrics, conditions.

fn node_ip(lab: &Lab, node: &str) -> anyhow::Result<Ipv4Addr> {
    lab.plan
        .node(node)
        .and_then(|n| n.lan_v4)
        .ok_or_else(|| anyhow!("node {node} has no IPv4 LAN address"))
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn speaker_binary(lab: &Lab) -> Option<String> {
    let node = lab.plan.nodes.first()?;
    lab.speaker_record(&node.name)?
        .command
        .into_iter()
        .find(|a| a.ends_with("ferrolb-speaker"))
}

const ARP_REQUESTS: &str = "ferrolb_arp_requests_total{interface=\"eth0\"}";
const ANNOUNCED_IPS: &str = "ferrolb_announced_ips{interface=\"eth0\"}";

/// The Service's `ferrolb.io/Announced` condition: (status, message).
async fn announced(lab: &Lab, ns: &str, name: &str) -> Option<(String, String)> {
    lab.announced(ns, name).await.map(|c| (c.status, c.message))
}

/// Every speaker sees the two others alive.
async fn wait_converged(lab: &Lab, limit: Duration) -> anyhow::Result<()> {
    Ok(lab.wait_speakers_converged(limit).await?)
}

fn ingress_ip(svc: &Service) -> Option<IpAddr> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .iter()
        .find_map(|i| i.ip.as_ref()?.parse().ok())
}

/// Waits for a True Announced condition naming the Service's IP; returns (IP, owner).
async fn wait_announced(
    lab: &Lab,
    ns: &str,
    name: &str,
    limit: Duration,
) -> anyhow::Result<(IpAddr, String)> {
    let api: Api<Service> = Api::namespaced(lab.client(), ns);
    let deadline = Instant::now() + limit;
    loop {
        let ip = api.get(name).await.ok().as_ref().and_then(ingress_ip);
        if let (Some(ip), Some((status, message))) = (ip, announced(lab, ns, name).await)
            && status == "True"
            && let Some(owner) = announced_owners(&message).get(&ip)
        {
            return Ok((ip, owner.clone()));
        }
        if Instant::now() > deadline {
            bail!("{ns}/{name} not announced after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Best effort after a failed section: every link up, every speaker running.
fn restore_all(lab: &Lab) {
    for n in lab.node_names() {
        let _ = lab.node(&n, NodeAction::Heal);
        if lab.speaker_pid(&n).is_none()
            && let Err(e) = lab.restart_speaker(&n)
        {
            say!("restarting the speaker of {n}: {e}");
        }
    }
}

/// Deletes a namespace and waits until it is gone; how long that took (`None`: it was
/// already gone, or did not go within 300 s).
async fn delete_namespace(lab: &Lab, ns: &str) -> Option<Duration> {
    let api: Api<Namespace> = Api::all(lab.client());
    match api.delete(ns, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return None,
        Err(e) => {
            say!("deleting namespace {ns}: {e}");
            return None;
        }
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(300) {
        if matches!(api.get_opt(ns).await, Ok(None)) {
            say!(
                "namespace {ns} deleted in {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say!("namespace {ns} still terminating after 300 s; left to the namespace controller");
    None
}

// ---------------------------------------------------------------------------------------
// Failover and CPU.

/// The client namespace, where the probe runs.
fn client_netns() -> PathBuf {
    PathBuf::from(format!("/run/netns/{CLIENT_NS}"))
}

#[derive(Debug)]
enum Outcome {
    /// Fault to the first new connection through another node; failed attempts in between;
    /// the node it entered.
    Recovered {
        ms: f64,
        lost: usize,
        via: String,
    },
    Failed,
    /// Traffic did not enter through the owner before the fault: no fault injected.
    Skipped(String),
    /// The lab did not come back after the trial; the case stopped there.
    Aborted(String),
}

async fn failover_and_cpu(
    lab: &Lab,
    args: &Args,
    ns: &str,
    report: &mut String,
) -> anyhow::Result<()> {
    for n in lab.node_names() {
        lab.echo_pod(ns, &format!("fo-{n}"), &n, json!({"app": "fo"}))
            .await?;
    }
    lab.service(
        ns,
        "fo",
        json!({"type": "LoadBalancer", "selector": {"app": "fo"},
            "externalTrafficPolicy": "Local",
            "ports": [{"port": 80, "targetPort": 8080}]}),
    )
    .await?;
    lab.wait_endpoints(ns, "fo", 3).await?;
    let (ip, owner) = wait_announced(lab, ns, "fo", Duration::from_secs(60)).await?;
    say!("Service {ns}/fo: {ip} announced by {owner}");

    let mut results: Vec<(Case, Vec<Outcome>)> = Vec::new();
    for case in [Case::Crash, Case::Graceful] {
        if !args.runs(case) {
            continue;
        }
        let mut outcomes = Vec::new();
        for i in 1..=args.trials {
            match trial(lab, ns, case, i).await {
                Ok(o) => {
                    say!("{case:?} trial {i}/{}: {o:?}", args.trials);
                    outcomes.push(o);
                }
                Err(e) => {
                    // The lab did not come back as expected: say so, restore, stop this case.
                    say!("{case:?} trial {i}: {e:#}; restoring every node");
                    outcomes.push(Outcome::Aborted(format!("{e:#}")));
                    restore_all(lab);
                    if let Err(e) = wait_converged(lab, Duration::from_secs(120)).await {
                        say!("after restoring: {e:#}");
                    }
                    break;
                }
            }
        }
        results.push((case, outcomes));
    }
    if !results.is_empty() {
        failover_report(report, &results)?;
    }
    if args.runs(Case::Cpu) {
        cpu(lab, ns, report).await?;
    }
    Ok(())
}

async fn trial(lab: &Lab, ns: &str, case: Case, i: usize) -> anyhow::Result<Outcome> {
    wait_converged(lab, Duration::from_secs(90)).await?;
    let (ip, _) = wait_announced(lab, ns, "fo", Duration::from_secs(60)).await?;
    let probe = Probe::start(
        &client_netns(),
        SocketAddr::new(ip, 80),
        PROBE_INTERVAL,
        Timeouts {
            connect: CONNECT_TIMEOUT,
            read: READ_TIMEOUT,
        },
    )?;

    // Before the fault, new connections must enter through the owner the condition names.
    let check = Instant::now();
    let owner = loop {
        let owner = wait_announced(lab, ns, "fo", Duration::from_secs(60))
            .await?
            .1;
        let last = probe
            .attempts()
            .into_iter()
            .rev()
            .find_map(|a| a.ok.filter(|(t, _)| *t > check).map(|(_, r)| r.node));
        if last.as_deref() == Some(owner.as_str()) {
            break owner;
        }
        if check.elapsed() > Duration::from_secs(20) {
            return Ok(Outcome::Skipped(format!(
                "owner {owner}, but new connections entered via {last:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    say!(
        "{case:?} trial {i}: fault on {owner} ({ip}) at {}",
        utc_now()
    );
    let fault = Instant::now();
    match case {
        Case::Crash => {
            lab.node(&owner, NodeAction::Cut)?;
            lab.kill_speaker(&owner, Signal::SIGKILL)?;
        }
        _ => lab.kill_speaker(&owner, Signal::SIGTERM)?,
    }
    let injected = fault.elapsed();

    let mut outcome = Outcome::Failed;
    while fault.elapsed() < RECOVERY_LIMIT + CONNECT_TIMEOUT + READ_TIMEOUT {
        let attempts = probe.attempts();
        let after: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= fault).collect();
        if let Some(pos) = after
            .iter()
            .position(|a| a.ok.as_ref().is_some_and(|(_, r)| r.node != owner))
            && let Some((t, reply)) = &after[pos].ok
        {
            let since = t.duration_since(fault);
            if since <= RECOVERY_LIMIT {
                outcome = Outcome::Recovered {
                    ms: since.as_secs_f64() * 1000.0,
                    lost: after[..pos].iter().filter(|a| a.ok.is_none()).count(),
                    via: reply.node.clone(),
                };
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(probe);
    if injected > Duration::from_millis(500) {
        say!("(the fault calls themselves took {injected:?})");
    }
    if matches!(outcome, Outcome::Failed) {
        say!("trial {i} did not recover within {RECOVERY_LIMIT:?}; speaker logs:");
        for log in lab
            .node_names()
            .iter()
            .filter_map(|n| lab.speaker_record(n))
            .map(|r| r.log)
        {
            eprintln!(
                "--- {} (last 25 lines)\n{}",
                log.display(),
                ferrolb_e2e::process::log_tail(&log, 25)
            );
        }
    }

    match case {
        Case::Crash => {
            lab.node(&owner, NodeAction::Heal)?;
            lab.restart_speaker(&owner)?;
        }
        _ => {
            lab.restart_speaker(&owner)?;
        }
    }
    wait_converged(lab, Duration::from_secs(90)).await?;
    wait_announced(lab, ns, "fo", Duration::from_secs(60)).await?;
    tokio::time::sleep(SETTLE).await;
    Ok(outcome)
}

/// Nearest-rank percentile (`p` in percent) of sorted values (`None` = a failed trial,
/// ranked last).
fn percentile(sorted: &[Option<f64>], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(ms) => format!("{ms:.0}"),
        None => format!("> {}", RECOVERY_LIMIT.as_millis()),
    }
}

fn failover_report(report: &mut String, results: &[(Case, Vec<Outcome>)]) -> anyhow::Result<()> {
    writeln!(
        report,
        "### Failover: fault to the first new connection through another node\n"
    )?;
    writeln!(
        report,
        "A Service with `externalTrafficPolicy: Local` and one echo pod on each node, so \
         the echo reply's `node` is the node the traffic entered. A thread in `flb-client` \
         (`setns` into its network namespace) opens a new TCP connection to the \
         LoadBalancer IP every {} ms (connect timeout {} ms), sends `GET / HTTP/1.0`, reads \
         the reply (read timeout {} ms) and records when the connection was established and \
         which node answered. Before each fault it waits until new connections enter through \
         the owner (the node in the Service's `ferrolb.io/Announced` message). Time = from \
         just before the fault calls to the establishment of the first connection, started \
         after the fault, that entered through another node. A trial that does not recover \
         within {} s fails. Between trials: the fault undone, every speaker sees 2 alive \
         peers (`ferrolb_gossip_members`), the condition is True again, {} s more.\n",
        PROBE_INTERVAL.as_millis(),
        CONNECT_TIMEOUT.as_millis(),
        READ_TIMEOUT.as_millis(),
        RECOVERY_LIMIT.as_secs(),
        SETTLE.as_secs()
    )?;
    writeln!(
        report,
        "- crash: `lab.node(owner, Cut)` (link down) and `lab.kill_speaker(owner, SIGKILL)`; \
         undone with `Heal` and `lab.restart_speaker(owner)`.\n\
         - graceful: `lab.kill_speaker(owner, SIGTERM)` (returns once the speaker has \
         exited); undone with `lab.restart_speaker(owner)`.\n"
    )?;
    writeln!(
        report,
        "| case | trials | recovered | p50 ms | p90 ms | p99 ms | min ms | max ms | not recovered in {} s | failed probes before recovery (median) |",
        RECOVERY_LIMIT.as_secs()
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut details = String::new();
    for (case, outcomes) in results {
        let mut values: Vec<Option<f64>> = Vec::new();
        let mut lost: Vec<usize> = Vec::new();
        let mut skipped = 0;
        for o in outcomes {
            match o {
                Outcome::Recovered { ms, lost: l, .. } => {
                    values.push(Some(*ms));
                    lost.push(*l);
                }
                Outcome::Failed => values.push(None),
                Outcome::Skipped(_) | Outcome::Aborted(_) => skipped += 1,
            }
        }
        values.sort_by(|a, b| match (a, b) {
            (Some(x), Some(y)) => x.total_cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        lost.sort_unstable();
        let recovered = values.iter().filter(|v| v.is_some()).count();
        let failed = values.len() - recovered;
        let name = match case {
            Case::Crash => "crash (cut + SIGKILL)",
            _ => "graceful (SIGTERM)",
        };
        writeln!(
            report,
            "| {name} | {} | {recovered} | {} | {} | {} | {} | {} | {failed} | {} |",
            values.len(),
            fmt_ms(percentile(&values, 50)),
            fmt_ms(percentile(&values, 90)),
            fmt_ms(percentile(&values, 99)),
            fmt_ms(values.first().copied().flatten()),
            fmt_ms(values.last().copied().flatten()),
            lost.get(lost.len().saturating_sub(1) / 2)
                .map_or("-".into(), ToString::to_string),
        )?;
        let each: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Recovered { ms, via, .. } => format!("{ms:.0} ({via})"),
                Outcome::Failed => "failed".into(),
                Outcome::Skipped(why) => format!("skipped ({why})"),
                Outcome::Aborted(why) => format!("aborted ({why})"),
            })
            .collect();
        writeln!(
            details,
            "- {name}, in trial order, ms (node that took over): {}",
            each.join(", ")
        )?;
        if skipped > 0 {
            writeln!(
                details,
                "- {name}: {skipped} trial(s) not counted (skipped or aborted, see above)"
            )?;
        }
    }
    writeln!(
        report,
        "\nPercentiles are nearest-rank; with 20 trials p99 is the maximum. A trial that did \
         not recover ranks last and shows as `> {} ms`.\n",
        RECOVERY_LIMIT.as_millis()
    )?;
    writeln!(report, "{details}")?;
    Ok(())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: u64 = f.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: u64 = f.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Sends 64-byte UDP datagrams to `dst` from the client namespace as fast as one thread can
/// (nonblocking socket, a busy loop) for `dur`; returns (sent, would-block, other errors).
fn flood(dst: SocketAddr, dur: Duration) -> anyhow::Result<(u64, u64, u64)> {
    std::thread::Builder::new()
        .name("flood".into())
        .spawn(move || -> anyhow::Result<(u64, u64, u64)> {
            ferrolb_e2e::probe::enter_netns(&client_netns())?;
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_nonblocking(true)?;
            let buf = [0x5au8; PAYLOAD];
            let (mut sent, mut blocked, mut errors) = (0u64, 0u64, 0u64);
            let end = Instant::now() + dur;
            'outer: loop {
                for _ in 0..256 {
                    match sock.send_to(&buf, dst) {
                        Ok(_) => sent += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => blocked += 1,
                        Err(_) => errors += 1,
                    }
                }
                if Instant::now() >= end {
                    break 'outer;
                }
            }
            Ok((sent, blocked, errors))
        })?
        .join()
        .map_err(|_| anyhow!("the flood thread panicked"))?
}

struct CpuRow {
    what: String,
    seconds: f64,
    sent: Option<u64>,
    speakers: Vec<SpeakerCpu>,
}

struct SpeakerCpu {
    node: String,
    role: &'static str,
    cpu: f64,
    arp_before: Option<u64>,
    arp_after: Option<u64>,
    /// Frames the node's eth0 received during the window.
    rx: Option<u64>,
}

/// Frames received by a node's LAN interface so far.
fn rx_packets(lab: &Lab, node: &str) -> Option<u64> {
    lab.exec(node, "cat", &["/sys/class/net/eth0/statistics/rx_packets"])
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn cpu(lab: &Lab, ns: &str, report: &mut String) -> anyhow::Result<()> {
    wait_converged(lab, Duration::from_secs(90)).await?;
    let (ip, owner) = wait_announced(lab, ns, "fo", Duration::from_secs(60)).await?;
    let other = lab
        .node_names()
        .into_iter()
        .find(|n| *n != owner)
        .ok_or_else(|| anyhow!("no second node"))?;
    let tick = clock_ticks();
    let watched: Vec<(String, &'static str)> =
        vec![(owner.clone(), "owner"), (other.clone(), "non-owner")];
    let pid = |n: &str| {
        lab.speaker_pid(n)
            .ok_or_else(|| anyhow!("the speaker of {n} is not running"))
    };
    let owner_ip = node_ip(lab, &owner)?;
    let runs: [(String, Option<SocketAddr>); 3] = [
        ("idle".into(), None),
        (
            format!("flood to the LoadBalancer IP {ip}, UDP port 9"),
            Some(SocketAddr::new(ip, 9)),
        ),
        (
            format!("flood to the owner's node IP {owner_ip}, UDP port 9"),
            Some(SocketAddr::new(IpAddr::V4(owner_ip), 9)),
        ),
    ];
    let mut rows = Vec::new();
    for (what, dst) in runs {
        tokio::time::sleep(SETTLE).await;
        let arp_before: Vec<Option<u64>> = watched
            .iter()
            .map(|(n, _)| lab.speaker_metric(n, ARP_REQUESTS))
            .collect();
        let pids: Vec<u32> = watched
            .iter()
            .map(|(n, _)| pid(n))
            .collect::<anyhow::Result<_>>()?;
        let rx_before: Vec<Option<u64>> = watched.iter().map(|(n, _)| rx_packets(lab, n)).collect();
        let before: Vec<u64> = pids
            .iter()
            .map(|p| cpu_ticks(*p))
            .collect::<anyhow::Result<_>>()?;
        let t = Instant::now();
        let sent = match dst {
            None => {
                tokio::time::sleep(CPU_WINDOW).await;
                None
            }
            Some(dst) => {
                let (sent, blocked, errors) =
                    tokio::task::spawn_blocking(move || flood(dst, CPU_WINDOW)).await??;
                say!("{what}: {sent} sent, {blocked} would-block, {errors} errors");
                Some(sent)
            }
        };
        let after: Vec<u64> = pids
            .iter()
            .map(|p| cpu_ticks(*p))
            .collect::<anyhow::Result<_>>()?;
        let seconds = t.elapsed().as_secs_f64();
        let rx_after: Vec<Option<u64>> = watched.iter().map(|(n, _)| rx_packets(lab, n)).collect();
        let arp_after: Vec<Option<u64>> = watched
            .iter()
            .map(|(n, _)| lab.speaker_metric(n, ARP_REQUESTS))
            .collect();
        let speakers = watched
            .iter()
            .enumerate()
            .map(|(k, (n, role))| SpeakerCpu {
                node: n.clone(),
                role,
                cpu: after[k].saturating_sub(before[k]) as f64 / tick,
                arp_before: arp_before[k],
                arp_after: arp_after[k],
                rx: rx_after[k]
                    .zip(rx_before[k])
                    .map(|(a, b)| a.saturating_sub(b)),
            })
            .collect();
        let row = CpuRow {
            what,
            seconds,
            sent,
            speakers,
        };
        say!(
            "{}: {:?}",
            row.what,
            row.speakers
                .iter()
                .map(|s| (s.node.as_str(), s.cpu))
                .collect::<Vec<_>>()
        );
        rows.push(row);
    }

    writeln!(
        report,
        "### Speaker CPU while the client floods the owner (not ARP, not NDP)\n"
    )?;
    writeln!(
        report,
        "CPU time = utime + stime of the speaker process from `/proc/PID/stat` ({tick} ticks/s), \
         read just before and after each {} s window. The flood: one thread in `flb-client` \
         sends {PAYLOAD}-byte UDP datagrams to port 9 (nothing listens) as fast as it can on a \
         nonblocking socket. The client resolves the destination once (one ARP exchange), then \
         every frame goes to the owner's MAC. ARP requests = the speaker's \
         `{ARP_REQUESTS}` before and after the window; frames received = the node's \
         `/sys/class/net/eth0/statistics/rx_packets` over the window (so the flood is seen \
         to arrive).\n",
        CPU_WINDOW.as_secs()
    )?;
    writeln!(
        report,
        "| run | packets sent | packets/s | speaker | frames its eth0 received | CPU s | CPU % | ARP requests before → after |"
    )?;
    writeln!(report, "|---|---:|---:|---|---:|---:|---:|---|")?;
    for r in &rows {
        for SpeakerCpu {
            node,
            role,
            cpu,
            arp_before,
            arp_after,
            rx,
        } in &r.speakers
        {
            let opt = |v: &Option<u64>| v.map_or("?".into(), |v| v.to_string());
            writeln!(
                report,
                "| {} | {} | {} | {node} ({role}) | {} | {cpu:.2} | {:.1} | {} → {} |",
                r.what,
                r.sent.map_or("-".into(), |s| s.to_string()),
                r.sent
                    .map_or("-".into(), |s| format!("{:.0}", s as f64 / r.seconds)),
                opt(rx),
                cpu / r.seconds * 100.0,
                opt(arp_before),
                opt(arp_after),
            )?;
        }
    }
    writeln!(report)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Memory with 1,000 announced IPs.

fn speakers_vm(lab: &Lab) -> anyhow::Result<Vec<(String, u64, u64)>> {
    lab.node_names()
        .into_iter()
        .map(|n| {
            let pid = lab
                .speaker_pid(&n)
                .ok_or_else(|| anyhow!("the speaker of {n} is not running"))?;
            let (rss, hwm) = ferrolb_e2e::process::memory_kib(pid)
                .ok_or_else(|| anyhow!("no VmRSS/VmHWM in /proc/{pid}/status"))?;
            Ok((n, rss, hwm))
        })
        .collect()
}

fn announced_counts(lab: &Lab) -> Vec<Option<u64>> {
    lab.node_names()
        .iter()
        .map(|n| lab.speaker_metric(n, ANNOUNCED_IPS))
        .collect()
}

fn pool_api(lab: &Lab) -> Api<ferrolb_crds::IPPool> {
    Api::all(lab.client())
}

/// The memory and churn cases' pool: only `MEM_NODE` announces it.
async fn apply_pool(lab: &Lab) -> anyhow::Result<()> {
    apply_pool_on(lab, Some(MEM_NODE)).await
}

/// The bench pool, announced by `only` or (`None`) by every node.
async fn apply_pool_on(lab: &Lab, only: Option<&str>) -> anyhow::Result<()> {
    let l2 = match only {
        Some(node) => json!({"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
                             "interfaces": ["eth0"]}),
        None => json!({"interfaces": ["eth0"]}),
    };
    let pool: ferrolb_crds::IPPool = serde_json::from_value(json!({
        "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": MEM_POOL},
        "spec": {"addresses": [MEM_POOL_CIDR], "autoAssign": false, "l2": l2}
    }))?;
    pool_api(lab)
        .patch(
            MEM_POOL,
            &PatchParams::apply("speaker-bench").force(),
            &Patch::Apply(&pool),
        )
        .await?;
    Ok(())
}

async fn delete_pool(lab: &Lab) {
    match pool_api(lab)
        .delete(MEM_POOL, &DeleteParams::default())
        .await
    {
        Ok(_) => say!("IPPool {MEM_POOL} deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => say!("deleting IPPool {MEM_POOL}: {e}"),
    }
}

/// Creates `n` LoadBalancer Services of the bench pool in `ns`, selecting the pods labelled
/// `app: bench-mem`; returns `n` and how many creations failed.
async fn create_services(lab: &Lab, ns: &str, n: usize) -> (usize, usize) {
    let api: Api<Service> = Api::namespaced(lab.client(), ns);
    let results: Vec<Result<Service, kube::Error>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("m{i:04}"),
                        "annotations": {"ferrolb.io/ip-pool": MEM_POOL}},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "bench-mem"},
                        "ports": [{"port": 80, "targetPort": 8080}]}
                }))
                .map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &svc).await
            }
        })
        .buffer_unordered(MEM_CONCURRENCY)
        .collect()
        .await;
    let errors = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        say!("{errors} Service creations failed, e.g. {e}");
    }
    (n, errors)
}

/// One round of the memory case, as measured.
struct Round {
    created_in: Duration,
    errors: usize,
    last: Option<u64>,
    want: u64,
    reached: Option<Duration>,
    /// VmRSS/VmHWM 10 s after the owner announced them all.
    loaded: Vec<(String, u64, u64)>,
    counts: Vec<Option<u64>>,
    deleted_in: Option<Duration>,
    released_in: Option<Duration>,
    /// VmRSS/VmHWM 10 s after the namespace was gone and the IPs released.
    cleaned: Vec<(String, u64, u64)>,
}

async fn memory(lab: &Lab, args: &Args, report: &mut String) -> anyhow::Result<()> {
    wait_converged(lab, Duration::from_secs(90)).await?;
    // The previous section's Service must be gone from the counts.
    let t = Instant::now();
    let base = loop {
        let c = announced_counts(lab);
        if c.iter().all(|v| *v == Some(0)) || t.elapsed() > Duration::from_secs(60) {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = speakers_vm(lab)?;
    say!("memory before (lab idle): {before:?}; announced {base:?}");

    apply_pool(lab).await?;
    let node1 = lab
        .node_names()
        .iter()
        .position(|x| x == MEM_NODE)
        .ok_or_else(|| anyhow!("no {MEM_NODE}"))?;
    let base_owner = base[node1].unwrap_or(0);

    let mut rounds = Vec::new();
    for r in 1..=args.memory_rounds.max(1) {
        let ns = lab.namespace(&format!("bench-mem{r}")).await?;
        let round = memory_round(lab, args, &ns.name, base_owner).await;
        drop(ns);
        match round {
            Ok(round) => rounds.push(round),
            Err(e) => {
                memory_report(report, args, &before, &rounds)?;
                return Err(e);
            }
        }
    }
    delete_pool(lab).await;
    memory_report(report, args, &before, &rounds)?;
    if let Some(r) = rounds.iter().find(|r| r.reached.is_none()) {
        bail!(
            "{MEM_NODE} announced {:?} IPs, not {}, within {MEM_TIMEOUT:?}",
            r.last,
            r.want
        );
    }
    Ok(())
}

/// Creates `args.services` Services in `ns`, waits until the owner announces them all,
/// measures, deletes the namespace, waits until the owner announced none, measures again.
async fn memory_round(lab: &Lab, args: &Args, ns: &str, base_owner: u64) -> anyhow::Result<Round> {
    lab.echo_pod(ns, "mem", MEM_NODE, json!({"app": "bench-mem"}))
        .await?;
    let t0 = Instant::now();
    let (n, errors) = create_services(lab, ns, args.services).await;
    let created_in = t0.elapsed();
    say!(
        "{ns}: {} Services created in {:.1} s",
        n - errors,
        created_in.as_secs_f64()
    );

    let want = base_owner + (n - errors) as u64;
    let mut last = None;
    let reached = loop {
        last = lab.speaker_metric(MEM_NODE, ANNOUNCED_IPS).or(last);
        if last.is_some_and(|v| v >= want) {
            break Some(t0.elapsed());
        }
        if t0.elapsed() > MEM_TIMEOUT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    say!("{MEM_NODE} announces {last:?} (want {want}) after {reached:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let loaded = speakers_vm(lab)?;
    let counts = announced_counts(lab);
    say!("memory loaded: {loaded:?}; announced {counts:?}");

    // Clean up here, to see what the speakers give back.
    let deleted_in = delete_namespace(lab, ns).await;
    let t1 = Instant::now();
    let released_in = loop {
        if lab
            .speaker_metric(MEM_NODE, ANNOUNCED_IPS)
            .is_some_and(|v| v <= base_owner)
        {
            break Some(t1.elapsed());
        }
        if t1.elapsed() > Duration::from_secs(120) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cleaned = speakers_vm(lab)?;
    say!("memory after cleanup: {cleaned:?}; {MEM_NODE} released its IPs after {released_in:?}");
    Ok(Round {
        created_in,
        errors,
        last,
        want,
        reached,
        loaded,
        counts,
        deleted_in,
        released_in,
        cleaned,
    })
}

fn memory_report(
    report: &mut String,
    args: &Args,
    before: &[(String, u64, u64)],
    rounds: &[Round],
) -> anyhow::Result<()> {
    let n = args.services;
    writeln!(report, "### Speaker memory with {n} announced IPs\n")?;
    writeln!(
        report,
        "IPPool `{MEM_POOL}` `{MEM_POOL_CIDR}` (`autoAssign: false`, `l2.nodeSelector` \
         `kubernetes.io/hostname: {MEM_NODE}` (the lab agent sets that label), interfaces \
         `[eth0]`). Each round: a namespace with one echo pod on {MEM_NODE} and {n} Services \
         of type LoadBalancer naming the pool (`ferrolb.io/ip-pool`), created \
         {MEM_CONCURRENCY} at a time; then the namespace is deleted. Every speaker watches \
         all of them; only {MEM_NODE}'s may announce them. Memory = VmRSS (and VmHWM) from \
         `/proc/PID/status` of each speaker: before (lab idle, no LoadBalancer Service), 10 s \
         after {MEM_NODE}'s `{ANNOUNCED_IPS}` reached the round's count (\"loaded\"), and \
         10 s after the namespace was gone and {MEM_NODE} announced none of them any more \
         (\"cleaned\"). A second round tells a plateau (allocator or caches keeping freed \
         memory for reuse) from a leak (growing again).\n"
    )?;
    for (i, r) in rounds.iter().enumerate() {
        writeln!(
            report,
            "- Round {}: {} Services created in {:.1} s ({} failed; the API server's pace); \
             {MEM_NODE} announced {} IPs {} after the first creation, {} after the last; the \
             namespace was gone after {}; {MEM_NODE} announced none of the IPs {} after that.",
            i + 1,
            n - r.errors,
            r.created_in.as_secs_f64(),
            r.errors,
            r.last.map_or("?".into(), |v| v.to_string()),
            r.reached.map_or(
                format!("(not all within {} s)", MEM_TIMEOUT.as_secs()),
                |d| format!("{:.1} s", d.as_secs_f64())
            ),
            r.reached.map_or("-".into(), |d| format!(
                "{:.1} s",
                d.saturating_sub(r.created_in).as_secs_f64()
            )),
            r.deleted_in
                .map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.released_in
                .map_or("(not within 120 s)".into(), |d| format!(
                    "{:.1} s",
                    d.as_secs_f64()
                )),
        )?;
    }
    writeln!(report)?;
    let mut header = String::from("| speaker | announces | VmRSS before (MiB)");
    let mut rule = String::from("|---|---:|---:");
    for i in 1..=rounds.len() {
        header.push_str(&format!(" | round {i} loaded | round {i} cleaned"));
        rule.push_str("|---:|---:");
    }
    header.push_str(" | growth, round 1 loaded (MiB) | VmHWM at the end (MiB) |");
    rule.push_str("|---:|---:|");
    writeln!(report, "{header}\n{rule}")?;
    let mib = |k: u64| k as f64 / 1024.0;
    for (k, (node, rss0, _)) in before.iter().enumerate() {
        let mut row = format!(
            "| {node} | {} | {:.1}",
            rounds
                .first()
                .and_then(|r| r.counts.get(k).copied().flatten())
                .map_or("?".into(), |v| v.to_string()),
            mib(*rss0)
        );
        for r in rounds {
            let loaded = r.loaded.get(k).map_or(0, |v| v.1);
            let cleaned = r.cleaned.get(k).map_or(0, |v| v.1);
            row.push_str(&format!(" | {:.1} | {:.1}", mib(loaded), mib(cleaned)));
        }
        let growth = rounds
            .first()
            .and_then(|r| r.loaded.get(k))
            .map_or("?".into(), |v| format!("{:+.1}", mib(v.1) - mib(*rss0)));
        let hwm = rounds
            .last()
            .and_then(|r| r.cleaned.get(k))
            .map_or("?".into(), |v| format!("{:.1}", mib(v.2)));
        row.push_str(&format!(" | {growth} | {hwm} |"));
        writeln!(report, "{row}")?;
    }
    writeln!(report)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CPU under EndpointSlice churn of Services the speakers do not announce.

/// EndpointSlice updates per second in the churn case, spread over this many Services.
const CHURN_RATE: u32 = 50;
const CHURN_SERVICES: usize = 10;
const CHURN_WINDOW: Duration = Duration::from_secs(20);

/// CPU seconds of each node's speaker over one window while `during` runs.
async fn speakers_cpu<F: std::future::Future<Output = anyhow::Result<u64>>>(
    lab: &Lab,
    during: F,
) -> anyhow::Result<(Vec<(String, f64)>, u64, f64)> {
    let nodes = lab.node_names();
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| {
            lab.speaker_pid(n)
                .ok_or_else(|| anyhow!("the speaker of {n} is not running"))
        })
        .collect::<anyhow::Result<_>>()?;
    let before: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let done = during.await?;
    let seconds = t.elapsed().as_secs_f64();
    let after: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p))
        .collect::<anyhow::Result<_>>()?;
    let tick = clock_ticks();
    let cpu = nodes
        .into_iter()
        .zip(before.iter().zip(&after))
        .map(|(n, (b, a))| (n, a.saturating_sub(*b) as f64 / tick))
        .collect();
    Ok((cpu, done, seconds))
}

fn slice_json(i: usize, ready: bool) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("c{i}-bench"),
            "labels": {"kubernetes.io/service-name": format!("c{i}"),
                       "endpointslice.kubernetes.io/managed-by": "speaker-bench.ferrolb.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [format!("10.99.0.{}", i + 1)],
                       "conditions": {"ready": ready}}],
        "ports": [{"port": 80, "protocol": "TCP"}]
    })
}

async fn churn(lab: &Lab, args: &Args, report: &mut String) -> anyhow::Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    wait_converged(lab, Duration::from_secs(90)).await?;
    apply_pool(lab).await?;
    let ns = lab.namespace("bench-churn").await?;
    lab.echo_pod(&ns.name, "mem", MEM_NODE, json!({"app": "bench-mem"}))
        .await?;
    let t0 = Instant::now();
    let (n, errors) = create_services(lab, &ns.name, args.services).await;
    let want = (n - errors) as u64;
    loop {
        if lab
            .speaker_metric(MEM_NODE, ANNOUNCED_IPS)
            .is_some_and(|v| v >= want)
        {
            break;
        }
        if t0.elapsed() > MEM_TIMEOUT {
            bail!("{MEM_NODE} did not announce {want} IPs within {MEM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say!(
        "churn: {want} IPs announced by {MEM_NODE} after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Services no speaker announces: ClusterIP, no selector, slices written from here.
    let services: Api<Service> = Api::namespaced(lab.client(), &ns.name);
    let slices: Api<EndpointSlice> = Api::namespaced(lab.client(), &ns.name);
    let apply = PatchParams::apply("speaker-bench").force();
    for i in 0..CHURN_SERVICES {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("c{i}")},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        services
            .patch(&format!("c{i}"), &apply, &Patch::Apply(&svc))
            .await?;
        slices
            .patch(
                &format!("c{i}-bench"),
                &apply,
                &Patch::Apply(&slice_json(i, true)),
            )
            .await?;
    }
    let elections = |lab: &Lab| -> Vec<Option<u64>> {
        lab.node_names()
            .iter()
            .map(|n| lab.speaker_metric(n, "ferrolb_elections_total"))
            .collect()
    };
    // Idle means idle: the conditions of the new Services written, the loops quiet (at most
    // two rounds per speaker in 5 s), for up to two minutes.
    let settle = Instant::now();
    loop {
        let a = elections(lab);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let b = elections(lab);
        let quiet = a.iter().zip(&b).all(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => b.saturating_sub(*a) <= 2,
            _ => false,
        });
        if quiet || settle.elapsed() > Duration::from_secs(120) {
            say!(
                "churn: quiet {quiet} after {:.0} s",
                settle.elapsed().as_secs_f64()
            );
            break;
        }
    }
    let idle_rounds = elections(lab);
    let (idle, _, idle_s) = speakers_cpu(lab, async {
        tokio::time::sleep(CHURN_WINDOW).await;
        Ok(0)
    })
    .await?;
    let churn_rounds = elections(lab);
    let period = Duration::from_secs(1) / CHURN_RATE;
    let (busy, updates, busy_s) = speakers_cpu(lab, async {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut k = 0usize;
        while start.elapsed() < CHURN_WINDOW {
            let i = k % CHURN_SERVICES;
            let ready = (k / CHURN_SERVICES) % 2 == 1;
            slices
                .patch(
                    &format!("c{i}-bench"),
                    &apply,
                    &Patch::Apply(&slice_json(i, ready)),
                )
                .await?;
            sent += 1;
            k += 1;
            let next = start + period * u32::try_from(k).unwrap_or(u32::MAX);
            tokio::time::sleep_until(next.into()).await;
        }
        Ok(sent)
    })
    .await?;
    let after_rounds = elections(lab);
    say!("churn: idle {idle:?}; {updates} updates in {busy_s:.1} s: {busy:?}");
    drop(ns);

    let rounds = |a: &[Option<u64>], b: &[Option<u64>], k: usize| match (a.get(k), b.get(k)) {
        (Some(Some(a)), Some(Some(b))) => b.saturating_sub(*a).to_string(),
        _ => "?".into(),
    };
    writeln!(
        report,
        "### Speaker CPU under EndpointSlice churn of Services it does not announce\n"
    )?;
    writeln!(
        report,
        "{want} LoadBalancer Services announced by {MEM_NODE} (pool {MEM_POOL_CIDR}, one echo \
         pod); {CHURN_SERVICES} ClusterIP Services without a selector whose EndpointSlices \
         this program rewrites (an endpoint's `ready` flipped) {CHURN_RATE} times a second, \
         round robin, for {} s: {updates} updates in {busy_s:.1} s ({:.1}/s). CPU = utime + \
         stime of each speaker from `/proc/PID/stat` over the window; rounds = \
         `ferrolb_elections_total` over it (the loop's turns, each reading what changed).\n",
        CHURN_WINDOW.as_secs(),
        updates as f64 / busy_s
    )?;
    writeln!(
        report,
        "| node | idle CPU ({idle_s:.0} s) | under churn | rounds idle | rounds under churn |"
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|")?;
    for (k, ((node, i), (_, b))) in idle.iter().zip(&busy).enumerate() {
        writeln!(
            report,
            "| {node} | {:.1} % | {:.1} % | {} | {} |",
            100.0 * i / idle_s,
            100.0 * b / busy_s,
            rounds(&idle_rounds, &churn_rounds, k),
            rounds(&churn_rounds, &after_rounds, k),
        )?;
    }
    writeln!(report)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Restart: does any node answer ARP for an owner's IPs while its speaker restarts?

/// ARP requests per probed IP: one every 10 ms for 20 s.
const RESTART_PROBES: usize = 2000;
const RESTART_INTERVAL: &str = "0.01";
const RESTART_IPS: usize = 4;

/// The longest run of unanswered probes in `arping` output (`index=N` on each reply),
/// out of `count` sent: (longest run, the index it starts at, unanswered in all).
fn unanswered(output: &str, count: usize) -> (usize, usize, usize) {
    let answered: std::collections::BTreeSet<usize> = output
        .lines()
        .filter_map(|l| {
            l.split("index=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let (mut longest, mut start, mut run, mut missing) = (0, 0, 0, 0);
    for i in 0..count {
        if answered.contains(&i) {
            run = 0;
        } else {
            run += 1;
            missing += 1;
            if run > longest {
                longest = run;
                start = i + 1 - run;
            }
        }
    }
    (longest, start, missing)
}

/// Owner of each IP among the Services of `ns`, from their Announced conditions.
async fn owners_in(lab: &Lab, ns: &str) -> anyhow::Result<Vec<(IpAddr, String)>> {
    let api: Api<Service> = Api::namespaced(lab.client(), ns);
    let mut out = Vec::new();
    for svc in api.list(&Default::default()).await? {
        let Some(cond) = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "ferrolb.io/Announced"))
        else {
            continue;
        };
        if cond.status == "True" {
            out.extend(announced_owners(&cond.message));
        }
    }
    Ok(out)
}

async fn restart(lab: &Lab, args: &Args, report: &mut String) -> anyhow::Result<()> {
    wait_converged(lab, Duration::from_secs(90)).await?;
    apply_pool_on(lab, None).await?;
    let ns = lab.namespace("bench-restart").await?;
    // A ready endpoint somewhere, or nothing is announced.
    for n in lab.node_names() {
        lab.echo_pod(
            &ns.name,
            &format!("mem-{n}"),
            &n,
            json!({"app": "bench-mem"}),
        )
        .await?;
    }
    let t0 = Instant::now();
    let (n, errors) = create_services(lab, &ns.name, args.services).await;
    let want = (n - errors) as u64;
    loop {
        let total: u64 = announced_counts(lab).into_iter().flatten().sum();
        if total >= want {
            break;
        }
        if t0.elapsed() > MEM_TIMEOUT {
            bail!("only {total} of {want} IPs announced within {MEM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    say!(
        "restart: {want} IPs announced after {:.1} s: {:?}",
        t0.elapsed().as_secs_f64(),
        announced_counts(lab)
    );
    let nodes = lab.node_names();
    let mut rows = Vec::new();
    for trial in 0..args.restarts {
        wait_converged(lab, Duration::from_secs(90)).await?;
        let node = nodes[trial % nodes.len()].clone();
        let ips: Vec<IpAddr> = owners_in(lab, &ns.name)
            .await?
            .into_iter()
            .filter(|(_, o)| *o == node)
            .map(|(ip, _)| ip)
            .take(RESTART_IPS)
            .collect();
        if ips.is_empty() {
            bail!("{node} owns none of the {want} IPs");
        }
        let probes: Vec<_> = ips
            .iter()
            .map(|ip| {
                let ip = ip.to_string();
                tokio::task::spawn_blocking(move || {
                    std::process::Command::new("ip")
                        .args(["netns", "exec", CLIENT_NS, "arping", "-i", "eth0"])
                        .args(["-W", RESTART_INTERVAL, "-c", &RESTART_PROBES.to_string()])
                        .arg(&ip)
                        .output()
                })
            })
            .collect();
        let probing = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        say!("restart {trial}: SIGTERM to {node}'s speaker, probing {ips:?}");
        let term_at = probing.elapsed();
        lab.kill_speaker(&node, Signal::SIGTERM)?;
        let exited = probing.elapsed().saturating_sub(term_at).as_millis();
        lab.restart_speaker(&node)?;
        let (mut longest, mut at, mut missing) = (0usize, 0usize, 0usize);
        for p in probes {
            let out = p.await??;
            let text = String::from_utf8_lossy(&out.stdout);
            let (l, s, m) = unanswered(&text, RESTART_PROBES);
            if l > longest {
                (longest, at) = (l, s);
            }
            missing += m;
        }
        // Where the longest gap began, in ms from the SIGTERM (the probes went out every
        // 10 ms from just before `probing`).
        let from_term =
            i128::try_from(at * 10).unwrap_or(0) - i128::try_from(term_at.as_millis()).unwrap_or(0);
        say!(
            "restart {trial}: longest unanswered run {longest} probes, from {from_term} ms after the SIGTERM (the speaker exited after {exited} ms), {missing} unanswered of {}",
            RESTART_PROBES * ips.len()
        );
        rows.push((
            node,
            ips.len(),
            longest,
            missing,
            (longest > 0).then_some(from_term),
            exited,
        ));
    }
    drop(ns);
    writeln!(
        report,
        "### ARP answers while an owner's speaker restarts ({want} Services)\n"
    )?;
    writeln!(
        report,
        "Every node may announce the bench pool; {want} Services spread over the 3 nodes. Per restart: \
         `arping -i eth0 -W {RESTART_INTERVAL} -c {RESTART_PROBES}` from `{CLIENT_NS}` for up to \
         {RESTART_IPS} IPs the node owns (one request every 10 ms each, 20 s), SIGTERM to the \
         node's speaker 3 s in, started again at once (`lab.restart_speaker`). A window is a run \
         of requests nobody answered; a probe's reply may come late, so one unanswered request \
         is noise of the tool, a run of them is a gap.\n"
    )?;
    writeln!(
        report,
        "| restart | node | IPs probed | longest run unanswered | it began, after the SIGTERM | the speaker exited after | unanswered of sent |\n|---:|---|---:|---:|---:|---:|---:|"
    )?;
    for (i, (node, k, longest, missing, from, exited)) in rows.iter().enumerate() {
        writeln!(
            report,
            "| {} | {node} | {k} | {longest} ({} ms) | {} | {exited} ms | {missing} of {} |",
            i + 1,
            longest * 10,
            from.map_or("-".to_string(), |f| format!("~{f} ms")),
            RESTART_PROBES * k
        )?;
    }
    writeln!(report)?;
    Ok(())
}
