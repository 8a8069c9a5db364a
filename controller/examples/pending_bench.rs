//! How much work a freed address costs when many Services wait (issue: cost that grows with
//! what changed). A pool of 10 addresses, 10 Services holding them, N Services waiting
//! (default 5,000); the holders are deleted one at a time, and for each freed address the
//! benchmark counts the allocation decisions the controller made
//! (`ferrolb_allocation_duration_seconds_count`: one per decision about a Service) and the
//! time until a waiting Service shows the address.
//!
//! `cargo run --release -p ferrolb-controller --example pending_bench -- [--waiting N]
//!  [--controller target/release/ferrolb-controller]`. Prints Markdown. Run it once per
//! controller binary to compare two builds side by side.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

mod bench;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::metric;
use ferrolb_e2e::process::free_port;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const DECISIONS: &str = "ferrolb_allocation_duration_seconds_count";
const ADDRESSES: usize = 10;

fn service(name: &str) -> Service {
    bench::service(name, false)
}

fn served(s: &Service) -> bool {
    !ferrolb_controller::service::status_ips(s).is_empty()
}

/// The controller's decision count, read from its `/metrics`.
fn decisions(admin: SocketAddr) -> u64 {
    let mut conn = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    metric(&text, DECISIONS).unwrap()
}

/// Waits until the decision count has not moved for `still`, and returns it.
async fn quiet(admin: SocketAddr, still: Duration) -> u64 {
    let mut last = decisions(admin);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = decisions(admin);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= still {
            return last;
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let flags = bench::Flags::from_env();
    let waiting = flags.number("--waiting", 5000);
    let bin = flags.controller();
    let range = format!("10.128.0.0-10.128.0.{}", ADDRESSES - 1);
    let cp = bench::control_plane(&[range.as_str()]).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let controller = bench::controller(&cp, &bin, "bench-controller", Some(admin));

    let api: Api<Service> = Api::namespaced(cp.client(), "bench");
    // Which waiting Services have an address, as the API server says.
    let served_set: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let watch = {
        let served_set = served_set.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(s)) = stream.try_next().await {
                let name = s.metadata.name.clone().unwrap_or_default();
                if served(&s) {
                    served_set.lock().unwrap().insert(name);
                }
            }
        })
    };

    let holders: Vec<String> = (0..ADDRESSES).map(|i| format!("holder-{i:02}")).collect();
    for h in &holders {
        api.create(&PostParams::default(), &service(h))
            .await
            .unwrap();
    }
    while served_set.lock().unwrap().len() < ADDRESSES {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t0 = Instant::now();
    bench::create_services(&api, "wait", waiting, false).await;
    let created_secs = t0.elapsed().as_secs_f64();
    let settled = quiet(admin, Duration::from_secs(3)).await;
    let settle_secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        served_set.lock().unwrap().len(),
        ADDRESSES,
        "a waiting Service was served while the pool was full"
    );

    let mut per_free = Vec::new();
    let mut to_served = Vec::new();
    let mut count = settled;
    for h in &holders {
        let before_served = served_set.lock().unwrap().len();
        let t = Instant::now();
        api.delete(h, &DeleteParams::default()).await.unwrap();
        loop {
            if served_set.lock().unwrap().len() > before_served {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no waiting Service got the address freed by {h}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_served.push(t.elapsed().as_secs_f64() * 1000.0);
        let now = quiet(admin, Duration::from_secs(2)).await;
        per_free.push((now - count) as f64);
        count = now;
    }
    watch.abort();
    let served_waiting = served_set
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n.starts_with("wait-"))
        .count();
    drop(controller);

    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (max_per_free, max_to_served) = (max(&per_free), max(&to_served));
    println!(
        "### {waiting} waiting Services, a pool freeing one address at a time (`{}`)\n",
        bin.display()
    );
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| time to create the waiting Services (64 in flight) | {created_secs:.1} s |");
    println!(
        "| decisions until quiet after creating them ({:.1} s) | {settled} |",
        settle_secs
    );
    println!(
        "| decisions per freed address, median (max) | {:.0} ({max_per_free:.0}) |",
        median(&mut per_free)
    );
    println!(
        "| freed address to a waiting Service served, median (max) | {:.0} ms ({max_to_served:.0} ms) |",
        median(&mut to_served)
    );
    println!("| waiting Services served after {ADDRESSES} frees | {served_waiting} |");
}
