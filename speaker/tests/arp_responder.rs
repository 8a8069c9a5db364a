//! The ARP responder on a real interface: two network namespaces joined by a veth pair, the
//! responder in one, `arping` in the other. Needs root (CAP_NET_ADMIN to build the
//! namespaces, CAP_NET_RAW for the packet socket).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Pair, in_ns, mac_of, sh};
use ferrolb_speaker::responder::{arp, sys::PacketSocket};
use ferrolb_speaker::wire::arp::gratuitous_frames;
use ferrolb_speaker::wire::ethernet::EtherType;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const A: &str = "flbt-arp-a";
const B: &str = "flbt-arp-b";

fn arping(ip: &str) -> (bool, String) {
    sh(&[
        "ip", "netns", "exec", B, "arping", "-c", "2", "-w", "3", "-I", "b0", ip,
    ])
}

#[tokio::test]
async fn answers_only_for_owned_addresses_and_sees_only_arp() {
    let _ns = Pair::up(A, B, "10.99.0.1/24", "10.99.0.2/24", "10.99.0.1");
    let mac = mac_of(A, "a0");
    let socket = in_ns(A, || PacketSocket::open("a0", EtherType::ARP.0).unwrap());
    let (owned_tx, owned) = watch::channel(BTreeSet::from([Ipv4Addr::new(10, 99, 0, 100)]));
    let stats = Arc::new(arp::ArpStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(arp::run(
        socket,
        mac,
        owned,
        stats.clone(),
        cancel.clone(),
        CancellationToken::new(),
    ));

    let owned_answer = tokio::task::spawn_blocking(|| arping("10.99.0.100"))
        .await
        .unwrap();
    assert!(
        owned_answer.0,
        "no answer for an owned address: {}",
        owned_answer.1
    );
    assert!(
        owned_answer
            .1
            .to_lowercase()
            .contains(&mac.to_string().to_lowercase()),
        "answered with another MAC: {}",
        owned_answer.1
    );
    let other = tokio::task::spawn_blocking(|| arping("10.99.0.101"))
        .await
        .unwrap();
    assert!(
        !other.0,
        "answered for an address it does not own: {}",
        other.1
    );

    // Ownership moves: the old address goes silent at once, the new one answers.
    owned_tx
        .send(BTreeSet::from([Ipv4Addr::new(10, 99, 0, 101)]))
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let now_other = tokio::task::spawn_blocking(|| arping("10.99.0.101"))
        .await
        .unwrap();
    assert!(now_other.0, "{}", now_other.1);
    let old = tokio::task::spawn_blocking(|| arping("10.99.0.100"))
        .await
        .unwrap();
    assert!(
        !old.0,
        "still answering for an address it gave up: {}",
        old.1
    );
    assert!(
        stats.gratuitous.load(Ordering::Relaxed) >= 2,
        "no gratuitous ARP on taking an address"
    );

    // Traffic that is not ARP never reaches the socket. (One datagram first, so that B's
    // own ARP lookup of 10.99.0.1 is done before counting.)
    let (ok, out) = sh(&[
        "ip",
        "netns",
        "exec",
        B,
        "bash",
        "-c",
        "echo x > /dev/udp/10.99.0.1/9",
    ]);
    assert!(ok, "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = (
        stats.requests.load(Ordering::Relaxed),
        stats.ignored.load(Ordering::Relaxed),
    );
    let (ok, out) = sh(&[
        "ip",
        "netns",
        "exec",
        B,
        "bash",
        "-c",
        "for i in $(seq 1 200); do echo x > /dev/udp/10.99.0.1/9; done",
    ]);
    assert!(ok, "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let after = (
        stats.requests.load(Ordering::Relaxed),
        stats.ignored.load(Ordering::Relaxed),
    );
    assert_eq!(before, after, "the ARP socket saw non-ARP frames");

    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// An address given up in the middle of its gratuitous burst: the rest of the burst is not
/// sent (it would pull the address's traffic back from its new owner).
#[tokio::test]
async fn a_released_address_is_not_announced_any_more() {
    const C: &str = "flbt-arp-c";
    const D: &str = "flbt-arp-d";
    let _ns = Pair::up(C, D, "10.98.0.1/24", "10.98.0.2/24", "10.98.0.1");
    let mac = mac_of(C, "a0");
    let socket = in_ns(C, || PacketSocket::open("a0", EtherType::ARP.0).unwrap());
    let (owned_tx, owned) = watch::channel(BTreeSet::from([Ipv4Addr::new(10, 98, 0, 100)]));
    let stats = Arc::new(arp::ArpStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(arp::run(
        socket,
        mac,
        owned,
        stats.clone(),
        cancel.clone(),
        CancellationToken::new(),
    ));

    // The burst's first step (request and reply forms) goes out at once; then the address
    // is given up, long before the next step.
    while stats.gratuitous.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    owned_tx.send(BTreeSet::new()).unwrap();
    // Past the whole schedule.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        stats.gratuitous.load(Ordering::Relaxed),
        2,
        "the burst went on after the address was given up"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Another MAC claims an owned address (gratuitous ARP in both forms, from the peer's MAC):
/// the responder counts both frames as conflicts and sends its burst again once (the two
/// claims came within a second); a claim of an address it does not own changes nothing.
#[tokio::test]
async fn a_claim_from_another_mac_is_counted_and_reasserted_once_a_second() {
    const E: &str = "flbt-arp-e";
    const F: &str = "flbt-arp-f";
    let _ns = Pair::up(E, F, "10.97.0.1/24", "10.97.0.2/24", "10.97.0.1");
    let mac = mac_of(E, "a0");
    let rival = mac_of(F, "b0");
    let owned_ip = Ipv4Addr::new(10, 97, 0, 100);
    let socket = in_ns(E, || PacketSocket::open("a0", EtherType::ARP.0).unwrap());
    let (owned_tx, owned) = watch::channel(BTreeSet::from([owned_ip]));
    let stats = Arc::new(arp::ArpStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(arp::run(
        socket,
        mac,
        owned,
        stats.clone(),
        cancel.clone(),
        CancellationToken::new(),
    ));
    // The burst on taking the address: two frames at each of the schedule's four steps.
    let per_burst = 2 * ferrolb_speaker::responder::ANNOUNCE_SCHEDULE.len() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_eq!(stats.gratuitous.load(Ordering::Relaxed), per_burst);
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);

    let rival_socket = in_ns(F, || PacketSocket::open("b0", EtherType::ARP.0).unwrap());
    for frame in gratuitous_frames(rival, owned_ip) {
        rival_socket.send(&frame).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 2);
    assert_eq!(
        stats.gratuitous.load(Ordering::Relaxed),
        2 * per_burst,
        "one burst again for two claims within a second"
    );
    // Past the gap, a new claim is answered with a new burst.
    rival_socket
        .send(&gratuitous_frames(rival, owned_ip)[0])
        .unwrap();
    // Someone else's address: not ours to defend.
    for frame in gratuitous_frames(rival, Ipv4Addr::new(10, 97, 0, 101)) {
        rival_socket.send(&frame).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 3);
    assert_eq!(stats.gratuitous.load(Ordering::Relaxed), 3 * per_burst);
    // A claim by a peer taking the address over just before this node gives it up (a
    // handover): the re-assertion waits, is cancelled with the address, and sends nothing.
    rival_socket
        .send(&gratuitous_frames(rival, owned_ip)[0])
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    owned_tx.send(BTreeSet::new()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 4);
    assert_eq!(
        stats.gratuitous.load(Ordering::Relaxed),
        3 * per_burst,
        "a re-assertion went out for an address given up"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_responder_handing_over_answers_each_address_until_a_peer_announces_it() {
    const G: &str = "flbt-arp-g";
    const H: &str = "flbt-arp-h";
    let _ns = Pair::up(G, H, "10.96.0.1/24", "10.96.0.2/24", "10.96.0.1");
    let mac = mac_of(G, "a0");
    let peer = mac_of(H, "b0");
    let (first, second) = (Ipv4Addr::new(10, 96, 0, 100), Ipv4Addr::new(10, 96, 0, 101));
    let socket = in_ns(G, || PacketSocket::open("a0", EtherType::ARP.0).unwrap());
    let (_owned_tx, owned) = watch::channel(BTreeSet::from([first, second]));
    let stats = Arc::new(arp::ArpStats::default());
    let (cancel, handover) = (CancellationToken::new(), CancellationToken::new());
    let task = tokio::spawn(arp::run(
        socket,
        mac,
        owned,
        stats.clone(),
        cancel.clone(),
        handover.clone(),
    ));
    let per_burst = 2 * ferrolb_speaker::responder::ANNOUNCE_SCHEDULE.len() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(stats.gratuitous.load(Ordering::Relaxed), 2 * per_burst);
    let arping = |ip: Ipv4Addr| {
        tokio::task::spawn_blocking(move || {
            sh(&[
                "ip",
                "netns",
                "exec",
                H,
                "arping",
                "-c",
                "1",
                "-w",
                "2",
                "-I",
                "b0",
                &ip.to_string(),
            ])
        })
    };

    // Handing over: both still answered while no peer announces them.
    handover.cancel();
    for ip in [first, second] {
        let (answered, out) = arping(ip).await.unwrap();
        assert!(answered, "{ip} unanswered while handing over: {out}");
    }
    // The peer announces the first: it is not answered any more, the second still is.
    let peer_socket = in_ns(H, || PacketSocket::open("b0", EtherType::ARP.0).unwrap());
    for frame in gratuitous_frames(peer, first) {
        peer_socket.send(&frame).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (answered, out) = arping(first).await.unwrap();
    assert!(
        !answered,
        "{first} answered after the peer announced it: {out}"
    );
    let (answered, out) = arping(second).await.unwrap();
    assert!(answered, "{second} unanswered: {out}");
    assert!(!task.is_finished());
    // The peer announces the second too: nothing left, the responder ends by itself.
    peer_socket
        .send(&gratuitous_frames(peer, second)[0])
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("the responder ends once every address is taken")
        .unwrap()
        .unwrap();
    // A takeover is not a conflict, and this node did not announce again.
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);
    assert_eq!(stats.gratuitous.load(Ordering::Relaxed), 2 * per_burst);
    cancel.cancel();
}
