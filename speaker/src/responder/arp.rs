//! The ARP responder: answers requests for IPv4 addresses this node owns, on one interface,
//! and sends the gratuitous burst when it takes an address. It never answers for addresses
//! it does not own; the owned set can change at any moment and takes effect at once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::sys::{PacketSocket, arp_filter};
use crate::wire::arp::{ArpOp, ArpRepr, gratuitous_frames};
use crate::wire::ethernet::{EtherType, Mac};

/// Opens the responder's socket on `ifname` (needs `CAP_NET_RAW`): ARP frames without a
/// VLAN ID only.
pub fn socket(ifname: &str) -> std::io::Result<PacketSocket> {
    PacketSocket::open_filtered(ifname, EtherType::ARP.0, &arp_filter())
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ArpStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub gratuitous: AtomicU64,
    pub ignored: AtomicU64,
    /// Frames from another MAC that claimed an owned address (not counted while handing
    /// over, when a peer taking the addresses is expected).
    pub conflicts: AtomicU64,
}

/// Answers ARP on `socket` until `cancel`. `owned` is the set this node announces on this
/// interface; addresses that join it get a gratuitous burst. From `handover` on, each
/// address is answered until another MAC announces it (see `responder::serve`).
pub async fn run(
    socket: PacketSocket,
    mac: Mac,
    owned: watch::Receiver<BTreeSet<Ipv4Addr>>,
    stats: Arc<ArpStats>,
    cancel: CancellationToken,
    handover: CancellationToken,
) -> std::io::Result<()> {
    super::serve(socket, owned, Arp { mac, stats }, "ARP", cancel, handover).await
}

struct Arp {
    mac: Mac,
    stats: Arc<ArpStats>,
}

impl super::Family<Ipv4Addr> for Arp {
    fn changed(&mut self, _: &AsyncFd<PacketSocket>, _: Ipv4Addr, _: bool) {}

    fn burst(&self, ip: Ipv4Addr) -> Vec<Vec<u8>> {
        gratuitous_frames(self.mac, ip).to_vec()
    }

    fn burst_sent(&self) -> impl Fn() + Send + 'static {
        let stats = self.stats.clone();
        move || {
            stats.gratuitous.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn conflict(&self) {
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    fn answer(
        &mut self,
        fd: &AsyncFd<PacketSocket>,
        frame: &[u8],
        owned: &BTreeSet<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let stats = &self.stats;
        let Ok((eth, arp)) = ArpRepr::parse_frame(frame) else {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // Another MAC using an owned address as its own (a reply, a gratuitous ARP, a
        // request sent from it): neighbours that hear it move the address away from us.
        let claimed = (owned.contains(&arp.sender_ip)
            && (arp.sender_mac != self.mac || eth.src != self.mac))
            .then_some(arp.sender_ip);
        if claimed.is_some() {
            debug!(ip = %arp.sender_ip, mac = %arp.sender_mac, "ARP from another MAC for an owned address");
        }
        if arp.op != ArpOp::Request {
            return claimed;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if !owned.contains(&arp.target_ip) {
            return claimed;
        }
        match fd
            .get_ref()
            .send(&ArpRepr::reply_frame(&arp, self.mac, eth.src))
        {
            Ok(_) => {
                stats.replies.fetch_add(1, Ordering::Relaxed);
                debug!(ip = %arp.target_ip, to = %arp.sender_ip, "answered ARP");
            }
            Err(e) => warn!(%e, "ARP send"),
        }
        claimed
    }
}
