//! The NDP responder on a real interface: two network namespaces joined by a veth pair, the
//! responder in one, `ndisc6` and hand-made solicitations in the other. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrolb_speaker::responder::{ndp, sys::PacketSocket};
use ferrolb_speaker::wire::ethernet::{EtherType, Mac};
use ferrolb_speaker::wire::ndp::{NaRepr, NsRepr};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const A: &str = "flbt-ndp-a";
const B: &str = "flbt-ndp-b";

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

struct Netns;

impl Netns {
    fn up() -> Netns {
        for ns in [A, B] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        for cmd in [
            vec!["ip", "netns", "add", A],
            vec!["ip", "netns", "add", B],
            vec![
                "ip", "-n", A, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns",
                B,
            ],
            vec![
                "ip",
                "-n",
                A,
                "addr",
                "add",
                "fd99::1/64",
                "dev",
                "a0",
                "nodad",
            ],
            vec![
                "ip",
                "-n",
                B,
                "addr",
                "add",
                "fd99::2/64",
                "dev",
                "b0",
                "nodad",
            ],
            vec!["ip", "-n", A, "link", "set", "a0", "up"],
            vec!["ip", "-n", B, "link", "set", "b0", "up"],
        ] {
            let (ok, out) = sh(&cmd);
            assert!(ok, "{cmd:?}: {out}");
        }
        // Wait for both ends to carry traffic.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh(&["ip", "-n", B, "-6", "route", "get", "fd99::1"]).0
            || sh(&["ip", "-n", B, "link", "show", "b0"])
                .1
                .contains("NO-CARRIER")
        {
            assert!(Instant::now() < deadline, "b0 never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [A, B] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

fn mac_of(ns: &str, dev: &str) -> Mac {
    let (_, out) = sh(&["ip", "-n", ns, "-o", "link", "show", dev]);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap();
    mac.parse().unwrap()
}

/// Runs `f` in a thread that has entered namespace `ns` (sockets stay in it).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn ndisc6(ip: &str) -> (bool, String) {
    sh(&[
        "ip", "netns", "exec", B, "ndisc6", "-1", "-r", "2", "-w", "1000", ip, "b0",
    ])
}

#[tokio::test]
async fn answers_solicitations_and_nud_probes_for_owned_addresses_only() {
    let _ns = Netns::up();
    let mac = mac_of(A, "a0");
    let socket = in_ns(A, || ndp::socket("a0").unwrap());
    let owned_ip: Ipv6Addr = "fd99::100".parse().unwrap();
    let (owned_tx, owned) = watch::channel(BTreeSet::from([owned_ip]));
    let stats = Arc::new(ndp::NdpStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(ndp::run(socket, mac, owned, stats.clone(), cancel.clone()));

    // A multicast solicitation (to the solicited-node group), as any host sends.
    let (ok, out) = tokio::task::spawn_blocking(|| ndisc6("fd99::100"))
        .await
        .unwrap();
    assert!(ok, "no advertisement for an owned address: {out}");
    assert!(
        out.to_lowercase().contains(&mac.to_string().to_lowercase()),
        "{out}"
    );
    let (ok, out) = tokio::task::spawn_blocking(|| ndisc6("fd99::101"))
        .await
        .unwrap();
    assert!(!ok, "advertised an address it does not own: {out}");
    assert!(
        stats.unsolicited.load(Ordering::Relaxed) >= 1,
        "no unsolicited NA on taking an address"
    );

    // A unicast NUD probe without a source link-layer option must be answered too.
    let b_mac = mac_of(B, "b0");
    let probe = NsRepr {
        src: "fd99::2".parse().unwrap(),
        dst: owned_ip,
        target: owned_ip,
        source_lladdr: None,
    }
    .frame(b_mac, mac);
    // Off the runtime's thread: the responder must keep running while we wait.
    let got = tokio::task::spawn_blocking(move || {
        in_ns(B, move || {
            let s = PacketSocket::open("b0", EtherType::IPV6.0).unwrap();
            s.send(&probe).unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut buf = vec![0u8; 2048];
            while Instant::now() < deadline {
                match s.recv(&mut buf) {
                    Ok(Some(n)) => {
                        if let Ok((_, na)) = NaRepr::parse_frame(&buf[..n]) {
                            return Some(na);
                        }
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            None
        })
    })
    .await
    .unwrap();
    let na = got.unwrap_or_else(|| {
        panic!(
            "no answer to a NUD probe without a source link-layer option; responder saw {} solicitations, {} invalid, sent {} advertisements",
            stats.solicitations.load(Ordering::Relaxed),
            stats.invalid.load(Ordering::Relaxed),
            stats.advertisements.load(Ordering::Relaxed)
        )
    });
    assert_eq!(na.target, owned_ip);
    assert!(na.solicited && na.override_, "{na:?}");
    assert_eq!(
        na.dst,
        "fd99::2".parse::<Ipv6Addr>().unwrap(),
        "answered unicast to the prober"
    );

    // Giving the address up stops the answers at once.
    owned_tx.send(BTreeSet::new()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, out) = tokio::task::spawn_blocking(|| ndisc6("fd99::100"))
        .await
        .unwrap();
    assert!(!ok, "still advertising an address it gave up: {out}");

    // Only Neighbor Solicitations reach the socket: other IPv6 traffic is filtered out.
    let before =
        stats.solicitations.load(Ordering::Relaxed) + stats.invalid.load(Ordering::Relaxed);
    let (ok, out) = sh(&[
        "ip",
        "netns",
        "exec",
        B,
        "bash",
        "-c",
        "for i in $(seq 1 200); do echo x > /dev/udp/fd99::1/9; done",
    ]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = stats.solicitations.load(Ordering::Relaxed) + stats.invalid.load(Ordering::Relaxed);
    assert!(
        after - before <= 2,
        "the NDP socket saw non-NS traffic: {before} -> {after}"
    );

    cancel.cancel();
    task.await.unwrap().unwrap();
}
