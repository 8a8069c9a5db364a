//! The NDP responder on a real interface: two network namespaces joined by a veth pair, the
//! responder in one, `ndisc6` and hand-made solicitations in the other. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Pair, in_ns, mac_of, sh};
use ferrolb_speaker::responder::{ndp, sys::PacketSocket};
use ferrolb_speaker::wire::ethernet::EtherType;
use ferrolb_speaker::wire::ndp::{NaRepr, NsRepr, unsolicited_na_frame};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const A: &str = "flbt-ndp-a";
const B: &str = "flbt-ndp-b";

fn ndisc6(ip: &str) -> (bool, String) {
    sh(&[
        "ip", "netns", "exec", B, "ndisc6", "-1", "-r", "2", "-w", "1000", ip, "b0",
    ])
}

#[tokio::test]
async fn answers_solicitations_and_nud_probes_for_owned_addresses_only() {
    let _ns = Pair::up(A, B, "fd99::1/64", "fd99::2/64", "fd99::1");
    let mac = mac_of(A, "a0");
    let socket = in_ns(A, || ndp::socket("a0").unwrap());
    let owned_ip: Ipv6Addr = "fd99::100".parse().unwrap();
    let (owned_tx, owned) = watch::channel(BTreeSet::from([owned_ip]));
    let stats = Arc::new(ndp::NdpStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(ndp::run(
        socket,
        mac,
        owned,
        stats.clone(),
        cancel.clone(),
        CancellationToken::new(),
    ));

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

/// Another MAC advertises an owned address (unsolicited, Override set, its own MAC as the
/// target's link-layer address): the responder counts both advertisements as conflicts
/// and sends its unsolicited advertisements again once (the two came within a second); an
/// advertisement for an address it does not own changes nothing.
#[tokio::test]
async fn an_advertisement_from_another_mac_is_counted_and_reasserted_once_a_second() {
    const E: &str = "flbt-ndp-e";
    const F: &str = "flbt-ndp-f";
    let _ns = Pair::up(E, F, "fd97::1/64", "fd97::2/64", "fd97::1");
    let mac = mac_of(E, "a0");
    let rival = mac_of(F, "b0");
    let owned_ip: Ipv6Addr = "fd97::100".parse().unwrap();
    let socket = in_ns(E, || ndp::socket("a0").unwrap());
    let (_owned_tx, owned) = watch::channel(BTreeSet::from([owned_ip]));
    let stats = Arc::new(ndp::NdpStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(ndp::run(
        socket,
        mac,
        owned,
        stats.clone(),
        cancel.clone(),
        CancellationToken::new(),
    ));
    let per_burst = ferrolb_speaker::responder::ANNOUNCE_SCHEDULE.len() as u64;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(stats.unsolicited.load(Ordering::Relaxed), per_burst);
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);

    let rival_socket = in_ns(F, || PacketSocket::open("b0", EtherType::IPV6.0).unwrap());
    let claim = unsolicited_na_frame(rival, owned_ip);
    rival_socket.send(&claim).unwrap();
    rival_socket.send(&claim).unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 2);
    assert_eq!(
        stats.unsolicited.load(Ordering::Relaxed),
        2 * per_burst,
        "one burst again for two claims within a second"
    );
    rival_socket.send(&claim).unwrap();
    rival_socket
        .send(&unsolicited_na_frame(rival, "fd97::101".parse().unwrap()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 3);
    assert_eq!(stats.unsolicited.load(Ordering::Relaxed), 3 * per_burst);
    assert_eq!(
        stats.invalid.load(Ordering::Relaxed),
        0,
        "advertisements are not invalid solicitations"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}
