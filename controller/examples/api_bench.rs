//! Controller benchmark against a real API server (`make bench`):
//! - creation-to-status latency for N Services created at once (default 2,000);
//! - cold start with N allocated Services: time to rebuild, time until a new Service is
//!   served, and how many addresses changed (must be 0).
//!
//! `cargo run --release -p ferrolb-controller --example api_bench -- [--services N]
//!  [--controller target/release/ferrolb-controller]`. Prints Markdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

mod bench;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench::{controller as spawn_controller, ips};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

fn service(name: &str) -> Service {
    bench::service(name, true)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn mib(m: Option<(u64, u64)>) -> String {
    m.map_or("?".into(), |(rss, hwm)| {
        format!(
            "{:.1} MiB (peak {:.1} MiB)",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        )
    })
}

async fn wait_ip(api: &Api<Service>, name: &str) -> Vec<String> {
    loop {
        if let Ok(s) = api.get(name).await
            && !ips(&s).is_empty()
        {
            return ips(&s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let flags = bench::Flags::from_env();
    let n = flags.number("--services", 2000);
    let bin = flags.controller();
    let cp = bench::control_plane(&["10.128.0.0/16"]).await;

    let mut controller = spawn_controller(&cp, &bin, "controller-1", None);
    let api: Api<Service> = Api::namespaced(cp.client(), "bench");
    api.create(&PostParams::default(), &service("warmup"))
        .await
        .unwrap();
    wait_ip(&api, "warmup").await;

    // Record when each Service first shows an address.
    let seen: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(s)) = stream.try_next().await {
                if !ips(&s).is_empty() {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };

    let created: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let api = api.clone();
            let created = created.clone();
            async move {
                let name = format!("svc-{i:05}");
                api.create(&PostParams::default(), &service(&name))
                    .await
                    .unwrap();
                created.lock().unwrap().insert(name, Instant::now());
            }
        })
        .await;
    let create_secs = t0.elapsed().as_secs_f64();
    loop {
        if seen.lock().unwrap().len() > n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_secs = t0.elapsed().as_secs_f64();
    watch.abort();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem_loaded = controller.pid().and_then(ferrolb_e2e::process::memory_kib);
    let mut lat: Vec<f64> = {
        let seen = seen.lock().unwrap();
        created
            .lock()
            .unwrap()
            .iter()
            .map(|(name, c)| seen[name].saturating_duration_since(*c).as_secs_f64() * 1000.0)
            .collect()
    };
    lat.sort_by(|a, b| a.total_cmp(b));

    // Cold start with every Service allocated.
    let snapshot = || async {
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), ips(&s)))
            .collect::<BTreeMap<_, _>>()
    };
    let before = snapshot().await;
    controller.stop();
    drop(controller);
    api.create(&PostParams::default(), &service("probe"))
        .await
        .unwrap();
    let t1 = Instant::now();
    let controller = spawn_controller(&cp, &bin, "controller-2", None);
    let probe_ip = wait_ip(&api, "probe").await;
    let probe_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mem_restarted = controller.pid().and_then(ferrolb_e2e::process::memory_kib);
    let log = std::fs::read_to_string(controller.log_path()).unwrap_or_default();
    let after = snapshot().await;
    let changed = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    let restored = log
        .lines()
        .find(|l| l.contains("allocations rebuilt"))
        .map(str::to_string)
        .unwrap_or_default();
    let probe_collides = before.values().flatten().any(|ip| probe_ip.contains(ip));

    println!("### Controller against the real API server ({n} Services)\n");
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| Services created at once (64 in flight) | {n} |");
    println!("| time to create them all | {create_secs:.1} s |");
    println!("| time until all have an address | {all_secs:.1} s |");
    println!(
        "| creation-to-status latency p50 | {:.0} ms |",
        percentile(&lat, 0.5)
    );
    println!(
        "| creation-to-status latency p99 | {:.0} ms |",
        percentile(&lat, 0.99)
    );
    println!(
        "| creation-to-status latency max | {:.0} ms |",
        lat.last().copied().unwrap_or(0.0)
    );
    println!(
        "| cold start: process start to a new Service served, with {} allocated | {:.2} s |",
        before.len(),
        probe_secs
    );
    println!(
        "| addresses changed by the restart | {changed} of {} |",
        before.len()
    );
    println!(
        "| controller memory with {n} Services allocated, 5 s after the last | {} |",
        mib(mem_loaded)
    );
    println!(
        "| restarted controller's memory, 5 s after serving the new Service | {} |",
        mib(mem_restarted)
    );
    println!(
        "| new Service given an address already held | {} |",
        if probe_collides { "yes" } else { "no" }
    );
    println!(
        "\nrestore log line: `{}`",
        restored.split("INFO").last().unwrap_or("").trim()
    );
}
