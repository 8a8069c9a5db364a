//! A request that arrives on a VLAN the node has no device for is not answered on the
//! untagged network: the kernel hands such a frame to the parent interface with its tag
//! taken off (marked for another host), and the speaker's filter drops it. The client sends
//! ARP requests for an owned IP from a packet socket in its namespace, tagged with VLAN 77
//! (crafted frames: this needs no 802.1Q support in the kernel, which the lab's machines
//! may lack) and then the same requests untagged; the owner's replies counter must not
//! move for the first, and must for the second. Needs a lab (IPv4).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferrolb_e2e::cluster::Cluster;
use ferrolb_e2e::objects::announced_owners;
use ferrolb_speaker::responder::sys::PacketSocket;
use serde_json::json;

const REPLIES: &str = "ferrolb_arp_replies_total{interface=\"eth0\"}";
const VLAN: u16 = 77;

/// A broadcast ARP request for `target` from `mac`, with an 802.1Q tag when `vlan` is set.
fn request(mac: [u8; 6], target: Ipv4Addr, vlan: Option<u16>) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    if let Some(id) = vlan {
        f.extend(0x8100u16.to_be_bytes());
        f.extend(id.to_be_bytes());
    }
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend(mac);
    f.extend([192, 0, 2, 77]);
    f.extend([0; 6]);
    f.extend(target.octets());
    f
}

/// Sends `frames` out of the client's `eth0`, from a thread inside its namespace.
fn send_from_client(c: &Cluster, frames: Vec<Vec<u8>>) {
    let netns = c.client_netns().unwrap();
    std::thread::spawn(move || {
        ferrolb_e2e::probe::enter_netns(&netns).unwrap();
        let sock = PacketSocket::open("eth0", 0x0806).unwrap();
        for f in &frames {
            sock.send(f).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .unwrap();
}

fn client_mac(c: &Cluster) -> [u8; 6] {
    let text = c
        .client_exec("cat", &["/sys/class/net/eth0/address"])
        .unwrap();
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

#[tokio::test]
async fn a_request_on_a_vlan_the_node_does_not_have_is_not_answered_untagged() {
    let c = Cluster::connect().await.unwrap();
    c.lab()
        .expect("a lab test: the client sends crafted frames");
    c.ensure_healthy().await.unwrap();
    let ns = c.namespace("vlan").await.unwrap();
    let nodes = c.node_names();
    c.web_service(&ns.name, &nodes, json!({"ipFamilies": ["IPv4"]}))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ip, owner) = loop {
        let owners = c
            .announced(&ns.name, "web")
            .await
            .filter(|c| c.status == "True")
            .map(|c| announced_owners(&c.message))
            .unwrap_or_default();
        if let Some((ip, owner)) = owners.into_iter().find(|(ip, _)| ip.is_ipv4()) {
            break (ip.to_string(), owner);
        }
        assert!(Instant::now() < deadline, "web not announced within 60 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    let Ok(std::net::IpAddr::V4(target)) = ip.parse() else {
        panic!("{ip} is not IPv4")
    };
    let mac = client_mac(&c);
    let before = c.speaker_metric(&owner, REPLIES).unwrap();
    send_from_client(&c, vec![request(mac, target, Some(VLAN)); 5]);
    // Replies are counted when sent; give the tagged ones time to have drawn any.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tagged = c.speaker_metric(&owner, REPLIES).unwrap();
    send_from_client(&c, vec![request(mac, target, None); 5]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let untagged = loop {
        let now = c.speaker_metric(&owner, REPLIES).unwrap();
        if now > tagged || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        untagged > tagged,
        "the untagged requests are answered: {REPLIES} on {owner} went {tagged} -> {untagged}"
    );
    assert_eq!(
        tagged, before,
        "{owner} answered requests for {ip} that came on VLAN {VLAN}, untagged"
    );
}
