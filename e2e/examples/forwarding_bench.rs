//! What NodePort forwarding costs: the same backend behind an IP of a KubeProxy pool
//! (ipMode VIP: kube-proxy's LoadBalancer rules) and an IP of a NodePort pool (ipMode
//! Proxy: the speaker's rewrite to the NodePort, then kube-proxy's NodePort rules), both
//! owned by the same node, measured from the lab's client side by side: new connections
//! per second with their connect+request latency, and bulk TCP throughput, with the owner's
//! speaker CPU while the bulk transfer runs. Prints a Markdown report (docs/benchmarks.md
//! keeps the committed one).
//!
//! `make bench-forwarding`, or by hand on a running lab (as root):
//! `cargo run -p ferrolb-e2e --example forwarding_bench -- --out target/forwarding.md`.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use ferrolb_crds::names::ANNOTATION_IP_POOL;
use ferrolb_e2e::cluster::{Cluster, ECHO_PORT};
use ferrolb_e2e::objects::announced_owners;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// New connections per round and path.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Bytes per bulk transfer.
    #[arg(long, default_value_t = 1 << 30)]
    bulk_bytes: u64,
    /// Rounds; the two paths take turns going first, and the medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

const POOL: &str = "bench-nodeport";

fn say(s: &str) {
    eprintln!("forwarding_bench: {s}");
}

/// `count` sequential new connections (connect, `GET /`, read to the end); the latency of
/// each successful one, the failures, and the time they all took.
fn connections(target: SocketAddr, count: usize) -> (Vec<Duration>, usize, Duration) {
    let mut ok = Vec::new();
    let mut failed = 0;
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        let done = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            if buf.starts_with(b"HTTP/1.1 200") {
                Ok(())
            } else {
                Err(std::io::Error::other("no 200"))
            }
        })();
        match done {
            Ok(()) => ok.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    (ok, failed, start.elapsed())
}

/// One bulk download of `bytes` over one connection; bytes per second.
fn bulk(target: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET /stream/{bytes} HTTP/1.0\r\n\r\n").as_bytes())?;
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got: u64 = 0;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    if got < bytes {
        bail!("short transfer: {got} of {bytes} bytes");
    }
    Ok(bytes as f64 / secs)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: u64 = f.get(11).ok_or_else(|| anyhow!("short stat"))?.parse()?;
    let s: u64 = f.get(12).ok_or_else(|| anyhow!("short stat"))?.parse()?;
    Ok(u + s)
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `f` on a thread inside `netns`.
fn in_netns<T: Send + 'static>(
    netns: &std::path::Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || ferrolb_e2e::probe::enter_netns(&netns).map(|_| f()))
        .join()
        .map_err(|_| anyhow!("the measuring thread panicked"))?
        .map_err(|e| anyhow!("{e}"))
}

#[derive(Debug, Default, Clone)]
struct PathFigures {
    rates: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    failed: usize,
    bulk: Vec<f64>,
    speaker_cpu: Vec<f64>,
}

async fn wait_owner(c: &Cluster, ns: &str, name: &str) -> anyhow::Result<(IpAddr, String)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ips = c.ingress_ips(ns, name).await;
        if let (Some(ip), Some(cond)) = (ips.first(), c.announced(ns, name).await) {
            let owners = announced_owners(&cond.message);
            if cond.status == "True"
                && let Some(o) = owners.get(ip)
            {
                return Ok((*ip, o.clone()));
            }
        }
        if Instant::now() > deadline {
            bail!("{ns}/{name} not announced within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let c = Cluster::connect().await?;
    let lab = c
        .lab()
        .ok_or_else(|| anyhow!("this benchmark runs on the lab"))?;
    c.wait_speakers_converged(Duration::from_secs(90)).await?;
    let node = c.node_names().first().cloned().context("no node")?;
    let ns = c.namespace("fwd-bench").await?;
    c.echo_pod(&ns.name, "backend", &node, json!({"app": "bench"}))
        .await?;

    let pools: Api<ferrolb_crds::IPPool> = Api::all(c.client());
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": POOL},
        "spec": {"addresses": c.spare_pool(50, 4), "autoAssign": false, "forwarding": "NodePort"}});
    pools
        .patch(
            POOL,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&pool),
        )
        .await?;
    let services: Api<Service> = Api::namespaced(c.client(), &ns.name);
    for (name, annotations) in [
        ("vip", json!({})),
        ("fwd", json!({ANNOTATION_IP_POOL: POOL})),
    ] {
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns.name, "annotations": annotations},
            "spec": {"type": "LoadBalancer", "selector": {"app": "bench"},
                     "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "targetPort": ECHO_PORT}]}});
        services
            .patch(
                name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&obj),
            )
            .await?;
    }
    c.wait_endpoints(&ns.name, "vip", c.families()).await?;
    let (vip_ip, vip_owner) = wait_owner(&c, &ns.name, "vip").await?;
    let (fwd_ip, fwd_owner) = wait_owner(&c, &ns.name, "fwd").await?;
    if vip_owner != node || fwd_owner != node {
        bail!("expected both IPs on {node} (Local, one pod): vip {vip_owner}, fwd {fwd_owner}");
    }
    say(&format!(
        "VIP {vip_ip} and forwarded {fwd_ip}, both owned by {node}"
    ));
    let netns = c.client_netns()?;
    let pid = lab
        .speaker_pid(&node)
        .ok_or_else(|| anyhow!("no speaker on {node}"))?;

    // Warm up both paths (ARP, conntrack, kube-proxy's first packets).
    for ip in [vip_ip, fwd_ip] {
        let t = SocketAddr::new(ip, 80);
        in_netns(&netns, move || connections(t, 200))?;
    }

    let mut figures = [PathFigures::default(), PathFigures::default()];
    for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let ip = [vip_ip, fwd_ip][k];
            let t = SocketAddr::new(ip, 80);
            let count = args.connections;
            let (mut lat, failed, took) = in_netns(&netns, move || connections(t, count))?;
            lat.sort();
            let f = &mut figures[k];
            f.rates.push(lat.len() as f64 / took.as_secs_f64());
            f.p50.push(pct(&lat, 50).as_secs_f64() * 1e3);
            f.p99.push(pct(&lat, 99).as_secs_f64() * 1e3);
            f.failed += failed;
            let bytes = args.bulk_bytes;
            let t0 = Instant::now();
            let c0 = cpu_ticks(pid)?;
            let rate = in_netns(&netns, move || bulk(t, bytes))??;
            let cpu = (cpu_ticks(pid)? - c0) as f64 / clock_ticks() / t0.elapsed().as_secs_f64();
            f.bulk.push(rate);
            f.speaker_cpu.push(cpu * 100.0);
            say(&format!(
                "round {round} {}: {:.0} conn/s, p50 {:.2} ms, p99 {:.2} ms, bulk {:.0} MB/s, speaker CPU {:.2} %",
                ["vip", "forwarded"][k],
                f.rates.last().copied().unwrap_or(0.0),
                f.p50.last().copied().unwrap_or(0.0),
                f.p99.last().copied().unwrap_or(0.0),
                rate / 1e6,
                cpu * 100.0
            ));
        }
    }
    let _ = pools.delete(POOL, &DeleteParams::default()).await;

    let [mut v, mut f] = figures;
    let (vr, fr) = (median(&mut v.rates), median(&mut f.rates));
    let (v50, f50) = (median(&mut v.p50), median(&mut f.p50));
    let (v99, f99) = (median(&mut v.p99), median(&mut f.p99));
    let (vb, fb) = (median(&mut v.bulk), median(&mut f.bulk));
    let (vc, fc) = (median(&mut v.speaker_cpu), median(&mut f.speaker_cpu));
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "### NodePort forwarding against VIP mode ({date}, {} lab, kube-proxy {})\n",
        if c.families() == 2 {
            "dual-stack"
        } else if vip_ip.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        },
        lab.plan.proxy_mode.as_str()
    );
    let _ = writeln!(
        r,
        "The same echo pod on {node} behind {vip_ip} (KubeProxy pool, ipMode VIP) and {fwd_ip} (NodePort pool, ipMode Proxy), `externalTrafficPolicy: Local`, both owned by {node}. From the client namespace, {} rounds, the two paths taking turns going first; medians of the rounds. New connections: {} one at a time per round and path (connect, `GET /`, read to the end). Bulk: one {} MiB download per round and path. Speaker CPU: the owner's speaker during the bulk download.\n",
        args.rounds,
        args.connections,
        args.bulk_bytes >> 20
    );
    let _ = writeln!(
        r,
        "| | VIP (kube-proxy) | forwarded (speaker + NodePort) | forwarded / VIP |"
    );
    let _ = writeln!(r, "|---|---|---|---|");
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
    let _ = writeln!(
        r,
        "| new connections per second | {vr:.0} | {fr:.0} | {:.3} |",
        ratio(vr, fr)
    );
    let _ = writeln!(
        r,
        "| connect + request p50 | {v50:.3} ms | {f50:.3} ms | {:.3} |",
        ratio(v50, f50)
    );
    let _ = writeln!(
        r,
        "| connect + request p99 | {v99:.3} ms | {f99:.3} ms | {:.3} |",
        ratio(v99, f99)
    );
    let _ = writeln!(
        r,
        "| bulk TCP, one connection | {:.0} MB/s | {:.0} MB/s | {:.3} |",
        vb / 1e6,
        fb / 1e6,
        ratio(vb, fb)
    );
    let _ = writeln!(
        r,
        "| owner's speaker CPU during the bulk transfer | {vc:.2} % | {fc:.2} % | |"
    );
    let _ = writeln!(r, "| failed connections | {} | {} | |", v.failed, f.failed);
    println!("{r}");
    if let Some(out) = args.out {
        std::fs::write(&out, &r).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}
