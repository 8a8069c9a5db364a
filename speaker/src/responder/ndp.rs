//! The NDP responder: answers Neighbor Solicitations for IPv6 addresses this node owns, per
//! RFC 4861, NUD probes without a source link-layer option included, and sends unsolicited
//! Neighbor Advertisements (Override set) to all-nodes when it takes an address. Its socket
//! receives only Neighbor Solicitations (a BPF filter in the kernel), and it listens to the
//! solicited-node multicast group of each owned address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::sys::{PacketSocket, neighbor_solicitation_filter};
use crate::wire::ethernet::{EtherType, Mac};
use crate::wire::ndp::{NsRepr, solicited_na_frame, solicited_node_mac, unsolicited_na_frame};

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct NdpStats {
    pub solicitations: AtomicU64,
    pub advertisements: AtomicU64,
    pub unsolicited: AtomicU64,
    pub invalid: AtomicU64,
}

/// Opens the responder's socket on `ifname` (needs `CAP_NET_RAW`).
pub fn socket(ifname: &str) -> std::io::Result<PacketSocket> {
    PacketSocket::open_filtered(ifname, EtherType::IPV6.0, &neighbor_solicitation_filter())
}

/// Answers NDP on `socket` until `cancel`.
pub async fn run(
    socket: PacketSocket,
    mac: Mac,
    mut owned: watch::Receiver<BTreeSet<Ipv6Addr>>,
    stats: Arc<NdpStats>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let fd = Arc::new(socket.into_async()?);
    let mut buf = vec![0u8; 2048];
    let mut announced: BTreeSet<Ipv6Addr> = BTreeSet::new();
    // Several owned addresses can share one solicited-node group: count its users.
    let mut groups: BTreeMap<[u8; 6], usize> = BTreeMap::new();
    loop {
        let now: BTreeSet<Ipv6Addr> = owned.borrow_and_update().clone();
        for ip in announced.difference(&now) {
            let g = solicited_node_mac(*ip).0;
            if let Some(n) = groups.get_mut(&g) {
                *n -= 1;
                if *n == 0 {
                    groups.remove(&g);
                    if let Err(e) = fd.get_ref().multicast(g, false) {
                        warn!(%e, %ip, "leaving a solicited-node group");
                    }
                }
            }
        }
        for ip in now.difference(&announced) {
            let g = solicited_node_mac(*ip).0;
            let n = groups.entry(g).or_insert(0);
            if *n == 0
                && let Err(e) = fd.get_ref().multicast(g, true)
            {
                warn!(%e, %ip, "joining a solicited-node group");
            }
            *n += 1;
            let stats = stats.clone();
            super::announce(
                fd.clone(),
                vec![unsolicited_na_frame(mac, *ip)],
                move || {
                    stats.unsolicited.fetch_add(1, Ordering::Relaxed);
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
                Err(e) => warn!(%e, "NDP receive"),
            },
        }
    }
}

fn answer(
    fd: &AsyncFd<PacketSocket>,
    frame: &[u8],
    mac: Mac,
    owned: &BTreeSet<Ipv6Addr>,
    stats: &NdpStats,
) {
    match NsRepr::parse_frame(frame) {
        Ok((eth, ns)) => {
            stats.solicitations.fetch_add(1, Ordering::Relaxed);
            debug!(target_ip = %ns.target, src = %ns.src, dst = %ns.dst, "neighbor solicitation");
            if owned.contains(&ns.target) {
                let out = solicited_na_frame(&ns, mac, eth.src);
                match fd.get_ref().send(&out) {
                    Ok(_) => {
                        stats.advertisements.fetch_add(1, Ordering::Relaxed);
                        debug!(target_ip = %ns.target, from = %ns.src, "answered NS");
                    }
                    Err(e) => warn!(%e, "NA send"),
                }
            }
        }
        Err(e) => {
            stats.invalid.fetch_add(1, Ordering::Relaxed);
            debug!(%e, "ignored an invalid neighbor solicitation");
        }
    }
}
