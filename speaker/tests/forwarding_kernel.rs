//! The forwarding ruleset in a real kernel (root; two throw-away network namespaces): a
//! "client" and a "node" on one link. The node's NodePort is played by a socket listening
//! on the node's own address (what kube-proxy's NodePort rules hand the traffic to is
//! checked on the lab); the client reaches it through the LoadBalancer IP, keeps its own
//! address, gets its replies from `IP:port`, and nothing else gets through.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::{Pair, in_ns, mac_of, sh};
use ferrolb_speaker::admin::Metrics;
use ferrolb_speaker::election::Protocol;
use ferrolb_speaker::forwarding::kernel::{Forwarder, Kernel};
use ferrolb_speaker::forwarding::{Forward, Ruleset, nft};

/// The two namespaces of one test (each test has its own, so tests run in parallel).
#[derive(Clone, Copy)]
struct Ns {
    client: &'static str,
    node: &'static str,
}
const LB4: &str = "10.88.0.200";
const LB6: &str = "fd88::200";
const NODE4: &str = "10.88.0.11";
const NODE6: &str = "fd88::11";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn setup(ns: Ns) -> Pair {
    let (client, node) = (ns.client, ns.node);
    let pair = Pair::up(
        client,
        node,
        "10.88.0.100/24",
        "10.88.0.11/24",
        "10.88.0.100",
    );
    for (ns, dev, addr) in [(client, "a0", "fd88::100/64"), (node, "b0", "fd88::11/64")] {
        let (ok, out) = sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
        assert!(ok, "{out}");
    }
    // What the speaker's ARP/NDP answer gives the client: the LB IPs at the node's MAC.
    let mac = mac_of(node, "b0").to_string();
    for lb in [LB4, LB6] {
        let (ok, out) = sh(&[
            "ip",
            "-n",
            client,
            "neigh",
            "replace",
            lb,
            "lladdr",
            &mac,
            "dev",
            "a0",
            "nud",
            "permanent",
        ]);
        assert!(ok, "{out}");
    }
    pair
}

fn kernel(ns: Ns) -> Kernel {
    Kernel::new(
        ["ip", "netns", "exec", ns.node, "nft"]
            .map(String::from)
            .to_vec(),
        nft::DEFAULT_MARK,
    )
}

fn ruleset(ranges: Option<&str>) -> Ruleset {
    let f = |lb: &str, protocol, port, node_port| Forward {
        ip: ip(lb),
        protocol,
        port,
        node_port,
    };
    Ruleset {
        node_v4: Some(NODE4.parse().unwrap()),
        node_v6: Some(NODE6.parse().unwrap()),
        owned: BTreeSet::from([ip(LB4), ip(LB6)]),
        forwards: BTreeSet::from([
            f(LB4, Protocol::Tcp, 80, 30080),
            f(LB4, Protocol::Udp, 53, 30053),
            f(LB6, Protocol::Tcp, 80, 30080),
        ]),
        allowed_sources: ranges
            .map(|r| BTreeMap::from([((ip(LB4), Protocol::Tcp, 80), vec![r.parse().unwrap()])]))
            .unwrap_or_default(),
    }
}

/// The node's "NodePort": TCP on 30080 and UDP on 30053, both families, answering with the
/// peer address they saw. Runs until the namespace goes.
fn node_port_servers(ns: Ns) {
    let node = ns.node;
    for addr in [format!("{NODE4}:30080"), format!("[{NODE6}]:30080")] {
        let l = in_ns(node, move || TcpListener::bind(addr).unwrap());
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let peer = s.peer_addr().unwrap();
                let _ = s.write_all(format!("client={peer}\n").as_bytes());
            }
        });
    }
    let u = in_ns(node, || UdpSocket::bind(format!("{NODE4}:30053")).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = u.recv_from(&mut buf) {
            let _ = u.send_to(format!("client={peer}\n").as_bytes(), peer);
        }
    });
}

/// A TCP exchange from the client: what the server said, and the peer the client's socket
/// is connected to (only `target` if the replies came from it); `None` when it fails.
fn tcp(ns: Ns, target: &str) -> Option<(String, SocketAddr)> {
    let target: SocketAddr = target.parse().unwrap();
    in_ns(ns.client, move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(700)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some((text, s.peer_addr().ok()?))
    })
}

fn udp(ns: Ns, target: &str) -> Option<(String, SocketAddr)> {
    let target: SocketAddr = target.parse().unwrap();
    in_ns(ns.client, move || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
        s.send_to(b"hi", target).ok()?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}

fn table_exists(ns: Ns) -> bool {
    sh(&[
        "ip", "netns", "exec", ns.node, "nft", "list", "table", "inet", "ferrolb",
    ])
    .0
}

#[tokio::test]
async fn forwarded_ips_reach_the_node_port_keep_the_client_and_drop_the_rest() {
    let ns = Ns {
        client: "flbt-fwd1-c",
        node: "flbt-fwd1-n",
    };
    let _pair = setup(ns);
    node_port_servers(ns);

    // Negative control: without the ruleset the IPs carry nothing.
    assert_eq!(tcp(ns, &format!("{LB4}:80")), None);
    assert!(
        tcp(ns, &format!("{NODE4}:30080")).is_some(),
        "the NodePort itself answers"
    );

    let mut k = kernel(ns);
    assert!(k.apply(&ruleset(None)).await.unwrap());
    assert!(
        !k.apply(&ruleset(None)).await.unwrap(),
        "an unchanged ruleset is not reloaded"
    );

    let (text, peer) = tcp(ns, &format!("{LB4}:80")).expect("TCP through the IPv4 LB IP");
    assert!(
        text.starts_with("client=10.88.0.100:"),
        "the client's own address: {text}"
    );
    assert_eq!(
        peer,
        format!("{LB4}:80").parse().unwrap(),
        "replies come from IP:port"
    );
    let (text, peer) = tcp(ns, &format!("[{LB6}]:80")).expect("TCP through the IPv6 LB IP");
    assert!(text.starts_with("client=[fd88::100]:"), "{text}");
    assert_eq!(peer, format!("[{LB6}]:80").parse().unwrap());
    let (text, from) = udp(ns, &format!("{LB4}:53")).expect("UDP through the LB IP");
    assert!(text.starts_with("client=10.88.0.100:"), "{text}");
    assert_eq!(
        from,
        format!("{LB4}:53").parse().unwrap(),
        "the UDP reply comes from IP:port"
    );

    // A port the Service does not expose: dropped (no answer, not a refusal).
    assert_eq!(tcp(ns, &format!("{LB4}:81")), None);
    assert_eq!(udp(ns, &format!("{LB4}:80")), None);
    // Direct NodePort traffic is untouched: replies keep the node's address.
    let (_, peer) = tcp(ns, &format!("{NODE4}:30080")).unwrap();
    assert_eq!(peer, format!("{NODE4}:30080").parse().unwrap());

    let c = k.counters().await.unwrap();
    assert!(c.forwarded[0] > 0 && c.forwarded[1] > 0, "{c:?}");
    assert!(c.connections[0] >= 2 && c.connections[1] >= 1, "{c:?}");
    assert!(c.dropped[0] > 0, "{c:?}");

    // Source ranges: outside them, no answer; inside, as before. (Updates rewrite only the
    // sets: the counters keep counting.)
    k.apply(&ruleset(Some("192.0.2.0/24"))).await.unwrap();
    assert!(k.counters().await.unwrap().forwarded[0] >= c.forwarded[0]);
    assert_eq!(
        tcp(ns, &format!("{LB4}:80")),
        None,
        "10.88.0.100 is outside 192.0.2.0/24"
    );
    k.apply(&ruleset(Some("10.88.0.0/24"))).await.unwrap();
    assert!(tcp(ns, &format!("{LB4}:80")).is_some());

    // Removal, then nothing is forwarded any more.
    k.remove().await.unwrap();
    assert!(!table_exists(ns));
    assert_eq!(tcp(ns, &format!("{LB4}:80")), None);
    k.remove().await.unwrap();
}

#[tokio::test]
async fn a_new_speaker_replaces_what_a_crashed_one_left() {
    let ns = Ns {
        client: "flbt-fwd2-c",
        node: "flbt-fwd2-n",
    };
    let _pair = setup(ns);
    node_port_servers(ns);
    kernel(ns).apply(&ruleset(None)).await.unwrap();
    // A fresh speaker (nothing loaded as far as it knows) with only the IPv6 IP.
    let mut rs = ruleset(None);
    rs.owned.remove(&ip(LB4));
    rs.forwards.retain(|f| f.ip.is_ipv6());
    let mut k = kernel(ns);
    k.apply(&rs).await.unwrap();
    assert_eq!(
        tcp(ns, &format!("{LB4}:80")),
        None,
        "the old IPv4 forward is gone"
    );
    assert!(tcp(ns, &format!("[{LB6}]:80")).is_some());
    // SCTP ports get rules of their own; this kernel takes them (it rewrites SCTP's CRC32c
    // checksum itself). No SCTP traffic is tried: the test kernel may have no SCTP sockets.
    rs.forwards.insert(Forward {
        ip: ip(LB6),
        protocol: Protocol::Sctp,
        port: 9,
        node_port: 30009,
    });
    k.apply(&rs).await.unwrap();
    let (_, rules) = sh(&[
        "ip", "netns", "exec", ns.node, "nft", "list", "chain", "inet", "ferrolb", "inbound6",
    ]);
    assert!(rules.contains("sctp dport set"), "{rules}");
    let (_, listing) = sh(&["ip", "netns", "exec", ns.node, "nft", "list", "tables"]);
    assert_eq!(
        listing.matches("ferrolb").count(),
        1,
        "one table: {listing}"
    );
    k.remove().await.unwrap();
}

/// A kernel that refuses the SCTP rules, played by a wrapper around `nft` that refuses any
/// ruleset naming SCTP: the TCP and UDP forwards are loaded all the same, the refusal is
/// recorded (the metric, which the Services' conditions are written from), and an SCTP
/// port of an owned IP is dropped like any port the table does not forward.
#[tokio::test]
async fn a_kernel_refusing_sctp_still_forwards_tcp_and_udp_and_says_so() {
    let ns = Ns {
        client: "flbt-fwd3-c",
        node: "flbt-fwd3-n",
    };
    let _pair = setup(ns);
    node_port_servers(ns);
    let refusing = format!(
        "input=$(cat); case \"$input\" in *sctp*) echo 'Error: Could not process rule: Operation not supported' >&2; exit 1;; esac; printf '%s\\n' \"$input\" | ip netns exec {} nft \"$@\"",
        ns.node
    );
    let metrics = Arc::new(Metrics::default());
    let mut f = Forwarder::new(
        Kernel::new(
            vec!["sh".into(), "-c".into(), refusing, "nft".into()],
            nft::DEFAULT_MARK,
        ),
        metrics.clone(),
    );
    f.start().await;
    assert!(!f.sctp_refused());
    let mut rs = ruleset(None);
    rs.forwards.insert(Forward {
        ip: ip(LB4),
        protocol: Protocol::Sctp,
        port: 9,
        node_port: 30009,
    });
    f.begin(&rs).await;
    f.finish(rs.clone()).await;
    assert!(f.sctp_refused(), "the refusal is recorded");
    let (text, peer) = tcp(ns, &format!("{LB4}:80")).expect("TCP is forwarded");
    assert!(text.starts_with("client=10.88.0.100:"), "{text}");
    assert_eq!(peer, format!("{LB4}:80").parse().unwrap());
    assert!(udp(ns, &format!("{LB4}:53")).is_some(), "UDP is forwarded");
    assert!(tcp(ns, &format!("[{LB6}]:80")).is_some());
    let (_, rules) = sh(&[
        "ip", "netns", "exec", ns.node, "nft", "list", "table", "inet", "ferrolb",
    ]);
    assert!(
        rules.contains("tcp dport") && !rules.contains("sctp"),
        "{rules}"
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.lines()
            .any(|l| l == "ferrolb_forwarding_sctp_refused 1"),
        "{text}"
    );
    // A later change is loaded without offering SCTP again (no error counted for it).
    let errors = |m: &Metrics| m.forwarding().unwrap().errors;
    let before = errors(&metrics);
    let mut next = rs.clone();
    next.forwards.retain(|f| f.port != 53);
    f.begin(&next).await;
    f.finish(next).await;
    assert_eq!(errors(&metrics), before);
    assert!(
        udp(ns, &format!("{LB4}:53")).is_none(),
        "the UDP forward went"
    );
    assert!(tcp(ns, &format!("{LB4}:80")).is_some());
    f.stop().await;
    assert!(!table_exists(ns));
}
