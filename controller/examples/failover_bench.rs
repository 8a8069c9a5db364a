//! Leader failover against a real API server: two replicas with the default lease timings
//! (15 s lease, 10 s renew deadline, 2 s retry) and N allocated Services (default 2,000).
//! The leader is killed (SIGKILL: the Lease is not released) or stopped gracefully
//! (SIGTERM: it releases the Lease), a new Service is created at once, and the time until
//! it shows an address is measured; the stopped replica is started again as the standby
//! before the next round.
//!
//! `cargo run --release -p ferrolb-controller --example failover_bench -- [--services N]
//!  [--rounds 10] [--controller target/release/ferrolb-controller]`. Prints Markdown; run
//! it once per controller binary to compare two builds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::process::{Supervised, free_port};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name},
            // Thousands of Services would fill the NodePort range (2,768 ports).
            "allocateLoadBalancerNodePorts": false}
    }))
    .unwrap()
}

fn served(s: &Service) -> bool {
    !ferrolb_controller::service::status_ips(s).is_empty()
}

fn spawn(cp: &TestControlPlane, bin: &Path, identity: &str) -> Supervised {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .arg(format!(
            "--admin-address=127.0.0.1:{}",
            free_port().unwrap()
        ))
        .arg(format!("--identity={identity}"))
        .env("RUST_LOG", "info");
    Supervised::spawn(identity, cmd, &cp.dir().join(format!("{identity}.log"))).unwrap()
}

async fn wait_served(api: &Api<Service>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = api.get(name).await
            && served(&s)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Lease holder's identity as the replica was given it (the process adds a suffix).
async fn holder(cp: &TestControlPlane) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(cp.client(), "ferrolb-system");
    let lease = api.get_opt("ferrolb-controller").await.ok()??;
    let h = lease.spec?.holder_identity?;
    Some(h.split('_').next().unwrap_or(&h).to_string())
}

fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = arg("--services")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rounds: usize = arg("--rounds").and_then(|v| v.parse().ok()).unwrap_or(10);
    let bin = PathBuf::from(
        arg("--controller").unwrap_or_else(|| "target/release/ferrolb-controller".into()),
    );
    assert!(bin.exists(), "{} not built", bin.display());

    let cp = TestControlPlane::start().await.unwrap();
    cp.kubectl(&["create", "namespace", "ferrolb-system"])
        .unwrap();
    cp.kubectl(&["create", "namespace", "bench"]).unwrap();
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "bench"},
        "spec": {"addresses": ["10.128.0.0/16"]}});
    let pool_file = cp.dir().join("pool.json");
    std::fs::write(&pool_file, pool.to_string()).unwrap();
    cp.kubectl(&["apply", "-f", pool_file.to_str().unwrap()])
        .unwrap();

    let api: Api<Service> = Api::namespaced(cp.client(), "bench");
    let mut generation = 0usize;
    let mut next_identity = || {
        generation += 1;
        format!("replica-{generation}")
    };
    let mut replicas: Vec<(String, Supervised)> = Vec::new();
    for _ in 0..2 {
        let id = next_identity();
        let p = spawn(&cp, &bin, &id);
        replicas.push((id, p));
    }
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &service(&format!("svc-{i:05}")))
                    .await
                    .unwrap();
            }
        })
        .await;
    wait_served(&api, &format!("svc-{:05}", n - 1)).await;

    let mut results: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut probe = 0usize;
    for (label, signal) in [
        (
            "leader killed (SIGKILL, Lease not released)",
            Signal::SIGKILL,
        ),
        (
            "leader stopped gracefully (SIGTERM, Lease released)",
            Signal::SIGTERM,
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..rounds {
            // Both replicas up and the standby's caches synced: give it time after a start.
            tokio::time::sleep(Duration::from_secs(8)).await;
            let leader = loop {
                if let Some(h) = holder(&cp).await
                    && let Some(i) = replicas.iter().position(|(id, _)| *id == h)
                {
                    break i;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let pid = replicas[leader].1.pid().unwrap();
            let t = Instant::now();
            kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
            probe += 1;
            let name = format!("probe-{probe:03}");
            api.create(&PostParams::default(), &service(&name))
                .await
                .unwrap();
            wait_served(&api, &name).await;
            times.push(t.elapsed().as_secs_f64());
            replicas[leader].1.stop();
            let id = next_identity();
            let p = spawn(&cp, &bin, &id);
            replicas[leader] = (id, p);
        }
        results.push((label, times));
    }

    println!(
        "### Leader failover, {n} Services allocated, {rounds} rounds each (`{}`)\n",
        bin.display()
    );
    println!("| leader | to a new Service served: median | max |");
    println!("|---|---:|---:|");
    for (label, mut times) in results {
        let (med, max) = median_max(&mut times);
        println!("| {label} | {med:.2} s | {max:.2} s |");
    }
}
