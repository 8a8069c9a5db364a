//! What one change event costs the speaker, at 5,000 LoadBalancer IPs over 100 nodes, side
//! by side:
//! - `full`: gathering the election's inputs from every cached object and electing every
//!   IP again (what the speaker did before `view::View`), and its two halves;
//! - `incremental`: the speaker's loop today (`View::apply`): the changed object read from
//!   the caches and converted, and only the IPs it can affect re-decided. Measured for an
//!   EndpointSlice change of one Service (the common event), a Node label no pool reads,
//!   a Node going NotReady (its own IPs and the unannounced ones re-decided) and Ready
//!   again (the IPs it may take back, and the unannounced ones).
//!
//! `cargo bench -p ferrolb-speaker --bench election`. Report in docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use ferrolb_crds::IPPool;
use ferrolb_speaker::election::{Inputs, Interface, elect};
use ferrolb_speaker::inputs::gather;
use ferrolb_speaker::membership::{Member, Standing};
use ferrolb_speaker::view::{Dirty, Stores, View};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::json;

const NODES: usize = 100;
const IPS: u32 = 5000;

struct Cluster {
    nodes: Vec<Node>,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    pools: Vec<IPPool>,
    members: BTreeMap<String, Member>,
}

fn node_name(i: usize) -> String {
    format!("node-{i:03}")
}

fn slice(svc: &str, i: u32, generation: u32) -> EndpointSlice {
    // Two endpoints on two nodes picked by the Service's number.
    let on = |k: u32| node_name(((i * 7 + k * 13) as usize) % NODES);
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-abc"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": svc},
            "resourceVersion": generation.to_string()},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [format!("10.244.{}.{}", i / 250, i % 250)], "nodeName": on(0),
             "conditions": {"ready": generation.is_multiple_of(2), "serving": true, "terminating": false}},
            {"addresses": [format!("10.245.{}.{}", i / 250, i % 250)], "nodeName": on(1),
             "conditions": {"ready": true, "serving": true, "terminating": false}}
        ],
        "ports": [{"port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn node(i: usize, ready: bool, rack: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": node_name(i),
            "labels": {"kubernetes.io/hostname": node_name(i), "rack": rack}},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "addresses": [{"type": "InternalIP", "address": format!("10.1.{}.{}", i / 200, i % 200 + 1)}]}}))
    .unwrap()
}

fn cluster() -> Cluster {
    let nodes: Vec<Node> = (0..NODES).map(|i| node(i, true, "r0")).collect();
    let members = (0..NODES)
        .map(|i| {
            (
                node_name(i),
                Member {
                    standing: Standing::Ready,
                    interfaces: vec![Interface {
                        name: "eth0".into(),
                        up: true,
                        subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 16)],
                        default_route_v4: true,
                        default_route_v6: true,
                    }],
                },
            )
        })
        .collect();
    let first = u32::from(Ipv4Addr::new(10, 200, 0, 0));
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..IPS {
        let name = format!("svc-{i:05}");
        let local = i.is_multiple_of(2);
        services.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "bench"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}],
                    "selector": {"app": name},
                    "externalTrafficPolicy": if local { "Local" } else { "Cluster" }},
                "status": {"loadBalancer": {"ingress": [{"ip": Ipv4Addr::from(first + i).to_string()}]}}
            }))
            .unwrap(),
        );
        slices.push(slice(&name, i, 0));
    }
    let pools = vec![
        serde_json::from_value(json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "bench", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"addresses": ["10.200.0.0/16"]}
        }))
        .unwrap(),
    ];
    Cluster {
        nodes,
        services,
        slices,
        pools,
        members,
    }
}

/// The election's inputs from every object, as the speaker gathers them on a change.
fn gather_all(c: &Cluster) -> Inputs {
    gather(
        c.nodes.iter(),
        c.services.iter(),
        c.slices.iter(),
        c.pools.iter(),
        &c.members,
        true,
    )
    .0
}

fn step(c: &Cluster) -> usize {
    elect(&gather_all(c)).decisions.len()
}

/// The speaker's caches and its view, filled with the cluster.
struct Speaker {
    stores: Stores,
    nodes: Writer<Node>,
    slices: Writer<EndpointSlice>,
    view: View,
    members: BTreeMap<String, Member>,
}

fn writer<K>(objects: &[K]) -> (reflector::Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for o in objects {
        writer.apply_watcher_event(&Event::InitApply(o.clone()));
    }
    writer.apply_watcher_event(&Event::InitDone);
    (reader, writer)
}

fn speaker(c: &Cluster) -> Speaker {
    let (nodes_r, nodes) = writer(&c.nodes);
    let (services_r, _services) = writer(&c.services);
    let (slices_r, slices) = writer(&c.slices);
    let (pools_r, _pools) = writer(&c.pools);
    let stores = Stores {
        nodes: nodes_r,
        services: services_r,
        slices: slices_r,
        pools: pools_r,
    };
    let mut view = View::new(true);
    view.apply(Dirty::everything(), &stores, &c.members);
    Speaker {
        stores,
        nodes,
        slices,
        view,
        members: c.members.clone(),
    }
}

impl Speaker {
    /// One watch event reaches the speaker's loop: into the cache, then the view.
    fn slice_event(&mut self, s: EndpointSlice) -> usize {
        let ev = Event::Apply(s);
        self.slices.apply_watcher_event(&ev);
        let mut dirty = Dirty::default();
        dirty.slices.mark(&ev);
        self.view
            .apply(dirty, &self.stores, &self.members)
            .ips
            .len()
    }

    fn node_event(&mut self, n: Node) -> usize {
        let ev = Event::Apply(n);
        self.nodes.apply_watcher_event(&ev);
        let mut dirty = Dirty::default();
        dirty.nodes.mark(&ev);
        self.view
            .apply(dirty, &self.stores, &self.members)
            .ips
            .len()
    }
}

fn benches(cr: &mut Criterion) {
    let mut c = cluster();
    assert_eq!(step(&c), IPS as usize, "every IP gets a decision");
    let mut sp = speaker(&c);
    assert_eq!(
        sp.view.elector().election(),
        &elect(&gather_all(&c)),
        "the view elects as the full pass does"
    );
    let mut group = cr.benchmark_group("one change event, 5,000 IPs, 100 nodes");
    group.sample_size(20);
    let mut generation = 0u32;
    group.bench_function(
        "full: EndpointSlice of one Service changed: gather + elect",
        |b| {
            b.iter(|| {
                generation += 1;
                c.slices[42] = slice("svc-00042", 42, generation);
                black_box(step(&c))
            })
        },
    );
    group.bench_function("full: gather alone", |b| {
        b.iter(|| black_box(gather_all(&c)))
    });
    let inputs = gather_all(&c);
    group.bench_function("full: elect alone", |b| {
        b.iter(|| black_box(elect(&inputs).decisions.len()))
    });
    // Service 42 is Local: its endpoints' readiness flips, so its IP moves every time.
    group.bench_function("incremental: EndpointSlice of one Service changed", |b| {
        b.iter(|| {
            generation += 1;
            black_box(sp.slice_event(slice("svc-00042", 42, generation)))
        })
    });
    let mut rack = 0u32;
    group.bench_function("incremental: Node label no pool reads changed", |b| {
        b.iter(|| {
            rack += 1;
            black_box(sp.node_event(node(7, true, &format!("r{rack}"))))
        })
    });
    // Node 7 goes NotReady (timed), then Ready again (not timed), and the other way round.
    let mut flip = |timed_ready: bool, iters: u64| {
        let mut took = std::time::Duration::ZERO;
        for _ in 0..iters {
            let before = !timed_ready;
            black_box(sp.node_event(node(7, before, "r0")));
            let start = std::time::Instant::now();
            black_box(sp.node_event(node(7, timed_ready, "r0")));
            took += start.elapsed();
        }
        took
    };
    group.bench_function("incremental: Node goes NotReady", |b| {
        b.iter_custom(|iters| flip(false, iters))
    });
    group.bench_function("incremental: Node Ready again", |b| {
        b.iter_custom(|iters| flip(true, iters))
    });
    group.finish();
}

criterion_group!(election, benches);
criterion_main!(election);
