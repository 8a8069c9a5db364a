//! Spread report for the election: 1,000 IPs (the first 1,000 of 10.0.0.0/22) over 5 nodes,
//! then how many IPs move when one node leaves and when a 6th joins.
//!
//! `cargo run -p ferrolb-speaker --example election_spread`

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ferrolb_crds::AddressBlock;
use ferrolb_speaker::election::{
    Decision, EndpointState, Inputs, Interface, Node, Pool, Service, elect,
};

const IPS: u32 = 1000;

fn node(name: &str) -> Node {
    Node {
        name: name.to_string(),
        ready: true,
        interfaces: vec![Interface {
            name: "eth0".into(),
            up: true,
            subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 22)],
            default_route_v4: true,
            default_route_v6: true,
        }],
        ..Node::default()
    }
}

fn inputs(nodes: &[&str]) -> Inputs {
    let first = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    let services = (0..IPS)
        .map(|i| Service {
            namespace: "default".into(),
            name: format!("svc-{i}"),
            ips: vec![IpAddr::V4(Ipv4Addr::from(first + i))],
            endpoints: BTreeMap::from([(
                "elsewhere".to_string(),
                EndpointState {
                    ready: 1,
                    serving_terminating: 0,
                },
            )]),
            any_ready_endpoint: true,
            ..Service::default()
        })
        .collect();
    Inputs {
        nodes: nodes.iter().map(|n| node(n)).collect(),
        members: nodes.iter().map(|n| n.to_string()).collect(),
        standing: Default::default(),
        pools: vec![Pool {
            name: "lan".into(),
            blocks: AddressBlock::parse("10.0.0.0/22").into_iter().collect(),
            ..Pool::default()
        }],
        services,
    }
}

fn owners(nodes: &[&str]) -> BTreeMap<IpAddr, String> {
    elect(&inputs(nodes))
        .decisions
        .into_iter()
        .filter_map(|(ip, d)| match d {
            Decision::Owner { node, .. } => Some((ip, node)),
            Decision::NotAnnounced { .. } => None,
        })
        .collect()
}

fn moved(before: &BTreeMap<IpAddr, String>, after: &BTreeMap<IpAddr, String>) -> usize {
    before
        .iter()
        .filter(|(ip, n)| after.get(*ip) != Some(*n))
        .count()
}

fn main() {
    let five = ["node-1", "node-2", "node-3", "node-4", "node-5"];
    let base = owners(&five);
    let mut per_node: BTreeMap<&str, usize> = five.iter().map(|n| (*n, 0)).collect();
    for n in base.values() {
        if let Some(c) = per_node.get_mut(n.as_str()) {
            *c += 1;
        }
    }
    let counts: Vec<f64> = per_node.values().map(|c| *c as f64).collect();
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    let stddev =
        (counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / counts.len() as f64).sqrt();
    println!(
        "election spread: {} IPs (first {IPS} of 10.0.0.0/22) over {} nodes, score = first 8 bytes of sha256(\"node#ip\")",
        base.len(),
        five.len()
    );
    for (n, c) in &per_node {
        println!("  {n}: {c}");
    }
    let min = per_node.values().min().copied().unwrap_or(0);
    let max = per_node.values().max().copied().unwrap_or(0);
    println!(
        "  min {min}, max {max}, mean {mean:.1}, stddev {stddev:.1} (ideal binomial stddev {:.1})",
        (f64::from(IPS) * 0.2 * 0.8).sqrt()
    );

    let leaving = "node-3";
    let four: Vec<&str> = five.iter().copied().filter(|n| *n != leaving).collect();
    let after_leave = owners(&four);
    let owned = per_node.get(leaving).copied().unwrap_or(0);
    let moved_leave = moved(&base, &after_leave);
    let others_moved = base
        .iter()
        .filter(|(ip, n)| n.as_str() != leaving && after_leave.get(*ip) != Some(*n))
        .count();
    println!(
        "{leaving} leaves: {moved_leave} IPs move (it owned {owned}); IPs of other nodes moved: {others_moved}"
    );

    let six = ["node-1", "node-2", "node-3", "node-4", "node-5", "node-6"];
    let after_join = owners(&six);
    let moved_join = moved(&base, &after_join);
    let not_to_new = base
        .iter()
        .filter(|(ip, n)| {
            let now = after_join.get(*ip);
            now != Some(*n) && now.map(String::as_str) != Some("node-6")
        })
        .count();
    println!(
        "node-6 joins: {moved_join} IPs move ({:.1}%, ideal 1/6 = {:.0}); moved to a node other than node-6: {not_to_new}",
        100.0 * moved_join as f64 / f64::from(IPS),
        f64::from(IPS) / 6.0
    );
    let distinct: BTreeSet<&String> = after_join.values().collect();
    println!("owners after join: {} distinct nodes", distinct.len());
}
