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

mod bench;

use std::time::{Duration, Instant};

use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::process::Supervised;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn service(name: &str) -> Service {
    bench::service(name, false)
}

fn served(s: &Service) -> bool {
    !ferrolb_controller::service::status_ips(s).is_empty()
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
    let flags = bench::Flags::from_env();
    let n = flags.number("--services", 2000);
    let rounds = flags.number("--rounds", 10);
    let bin = flags.controller();
    let cp = bench::control_plane(&["10.128.0.0/16"]).await;

    let api: Api<Service> = Api::namespaced(cp.client(), "bench");
    let mut generation = 0usize;
    let mut next_identity = || {
        generation += 1;
        format!("replica-{generation}")
    };
    let mut replicas: Vec<(String, Supervised)> = Vec::new();
    for _ in 0..2 {
        let id = next_identity();
        let p = bench::controller(&cp, &bin, &id, None);
        replicas.push((id, p));
    }
    bench::create_services(&api, "svc", n, false).await;
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
            let p = bench::controller(&cp, &bin, &id, None);
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
