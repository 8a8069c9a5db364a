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

use super::sys::PacketSocket;
use crate::wire::arp::{ArpOp, ArpRepr, gratuitous_frames};
use crate::wire::ethernet::{EtherType, EthernetFrame, Mac};

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ArpStats {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub gratuitous: AtomicU64,
    pub ignored: AtomicU64,
}

/// Answers ARP on `socket` until `cancel`. `owned` is the set this node announces on this
/// interface; addresses that join it get a gratuitous burst.
pub async fn run(
    socket: PacketSocket,
    mac: Mac,
    mut owned: watch::Receiver<BTreeSet<Ipv4Addr>>,
    stats: Arc<ArpStats>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let fd = Arc::new(socket.into_async()?);
    let mut buf = vec![0u8; 2048];
    let mut announced: BTreeSet<Ipv4Addr> = BTreeSet::new();
    loop {
        // New addresses: gratuitous burst (in the background, so answering goes on).
        let now: BTreeSet<Ipv4Addr> = owned.borrow_and_update().clone();
        for ip in now.difference(&announced) {
            let stats = stats.clone();
            let frames = gratuitous_frames(mac, *ip).to_vec();
            super::announce(
                fd.clone(),
                frames,
                move || {
                    stats.gratuitous.fetch_add(1, Ordering::Relaxed);
                },
                cancel.clone(),
            );
        }
        announced = now;

        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = owned.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            r = super::recv_frame(&fd, &mut buf) => match r {
                Ok(n) => answer(&fd, buf.get(..n).unwrap_or(&[]), mac, &announced, &stats),
                Err(e) => warn!(%e, "ARP receive"),
            },
        }
    }
}

fn answer(
    fd: &AsyncFd<PacketSocket>,
    frame: &[u8],
    mac: Mac,
    owned: &BTreeSet<Ipv4Addr>,
    stats: &ArpStats,
) {
    let Ok((eth, req)) = parse(frame) else {
        stats.ignored.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if req.op != ArpOp::Request {
        return;
    }
    stats.requests.fetch_add(1, Ordering::Relaxed);
    if !owned.contains(&req.target_ip) {
        return;
    }
    let reply = ArpRepr::reply_to(&req, mac);
    let out = reply.frame(mac, eth.src);
    match fd.get_ref().send(&out) {
        Ok(_) => {
            stats.replies.fetch_add(1, Ordering::Relaxed);
            debug!(ip = %req.target_ip, to = %req.sender_ip, "answered ARP");
        }
        Err(e) => warn!(%e, "ARP send"),
    }
}

fn parse(frame: &[u8]) -> Result<(EthernetFrame, ArpRepr), crate::wire::WireError> {
    let (eth, payload) = EthernetFrame::parse_expecting(frame, EtherType::ARP)?;
    Ok((eth, ArpRepr::parse(payload)?))
}
