//! The NDP responder: answers Neighbor Solicitations for IPv6 addresses this node owns, per
//! RFC 4861, NUD probes without a source link-layer option included, and sends unsolicited
//! Neighbor Advertisements (Override set) to all-nodes when it takes an address. Its socket
//! receives only Neighbor Solicitations and Advertisements (a BPF filter in the kernel), and
//! it listens to the solicited-node multicast group of each owned address, both on the
//! packet socket (so that the NIC passes the group's frames up) and in the IPv6 layer (so
//! that the kernel sends MLD reports for it and answers queries: a switch with MLD snooping
//! forwards a group's solicitations only to the ports that reported it). An advertisement
//! from another MAC for an owned address is a conflict: the unsolicited advertisements go
//! out again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::sys::{PacketSocket, neighbor_discovery_filter};
use crate::wire::ethernet::{EtherType, Mac};
use crate::wire::ndp::{
    NaRepr, NsRepr, solicited_na_frame, solicited_node_mac, solicited_node_multicast,
    unsolicited_na_frame,
};

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct NdpStats {
    pub solicitations: AtomicU64,
    pub advertisements: AtomicU64,
    pub unsolicited: AtomicU64,
    pub invalid: AtomicU64,
    /// Neighbor Advertisements from another MAC for an owned address (not counted while
    /// handing over).
    pub conflicts: AtomicU64,
}

/// Opens the responder's socket on `ifname` (needs `CAP_NET_RAW`).
pub fn socket(ifname: &str) -> std::io::Result<PacketSocket> {
    PacketSocket::open_filtered(ifname, EtherType::IPV6.0, &neighbor_discovery_filter())
}

/// Answers NDP on `socket` until `cancel`; from `handover` on, each address until another
/// MAC advertises it (see `responder::serve`).
pub async fn run(
    socket: PacketSocket,
    mac: Mac,
    owned: watch::Receiver<BTreeSet<Ipv6Addr>>,
    stats: Arc<NdpStats>,
    cancel: CancellationToken,
    handover: CancellationToken,
) -> std::io::Result<()> {
    let groups = Groups::open(socket.ifindex());
    let ndp = Ndp { mac, stats, groups };
    super::serve(socket, owned, ndp, "NDP", cancel, handover).await
}

struct Ndp {
    mac: Mac,
    stats: Arc<NdpStats>,
    groups: Groups,
}

/// How many owned addresses need each group: several share one (the low 24 bits), and a
/// socket joins a group once.
#[derive(Debug, Default)]
struct GroupCounts(BTreeMap<Ipv6Addr, usize>);

impl GroupCounts {
    /// One more address needs `group`; true when it is the first.
    fn add(&mut self, group: Ipv6Addr) -> bool {
        let n = self.0.entry(group).or_default();
        *n += 1;
        *n == 1
    }

    /// One address less needs `group`; true when it was the last.
    fn remove(&mut self, group: Ipv6Addr) -> bool {
        match self.0.get_mut(&group) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(&group);
                true
            }
            None => false,
        }
    }
}

/// The solicited-node groups joined in the IPv6 layer on one interface: the kernel
/// sends an MLD report when a group is joined and answers queries for it while it is.
struct Groups {
    /// `None` when no IPv6 socket could be opened (IPv6 disabled): the packet socket's
    /// membership still receives the group on a LAN without MLD snooping.
    socket: Option<socket2::Socket>,
    ifindex: u32,
    counts: GroupCounts,
}

impl Groups {
    fn open(ifindex: u32) -> Groups {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| warn!(%e, "no IPv6 socket for MLD reports; switches with MLD snooping may not deliver solicitations"))
            .ok();
        Groups {
            socket,
            ifindex,
            counts: GroupCounts::default(),
        }
    }

    fn change(&mut self, ip: Ipv6Addr, taken: bool) {
        let group = solicited_node_multicast(ip);
        let Some(socket) = &self.socket else {
            return;
        };
        let r = if taken {
            if !self.counts.add(group) {
                return;
            }
            socket.join_multicast_v6(&group, self.ifindex)
        } else {
            if !self.counts.remove(group) {
                return;
            }
            socket.leave_multicast_v6(&group, self.ifindex)
        };
        if let Err(e) = r {
            let doing = if taken { "joining" } else { "leaving" };
            warn!(%e, %ip, %group, "{doing} a solicited-node group in the IPv6 layer (MLD)");
        }
    }
}

impl super::Family<Ipv6Addr> for Ndp {
    /// Listens to the solicited-node group of each owned address. Several addresses can
    /// share a group: the kernel counts a socket's joins per group and leaves it only when
    /// the last is dropped.
    fn changed(&mut self, fd: &AsyncFd<PacketSocket>, ip: Ipv6Addr, taken: bool) {
        if let Err(e) = fd.get_ref().multicast(solicited_node_mac(ip).0, taken) {
            let doing = if taken { "joining" } else { "leaving" };
            warn!(%e, %ip, "{doing} a solicited-node group");
        }
        self.groups.change(ip, taken);
    }

    fn burst(&self, ip: Ipv6Addr) -> Vec<Vec<u8>> {
        vec![unsolicited_na_frame(self.mac, ip)]
    }

    fn burst_sent(&self) -> impl Fn() + Send + 'static {
        let stats = self.stats.clone();
        move || {
            stats.unsolicited.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn conflict(&self) {
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    fn answer(
        &mut self,
        fd: &AsyncFd<PacketSocket>,
        frame: &[u8],
        owned: &BTreeSet<Ipv6Addr>,
    ) -> Option<Ipv6Addr> {
        let stats = &self.stats;
        let ns_error = match NsRepr::parse_frame(frame) {
            Ok((eth, ns)) => {
                stats.solicitations.fetch_add(1, Ordering::Relaxed);
                debug!(target_ip = %ns.target, src = %ns.src, dst = %ns.dst, "neighbor solicitation");
                if owned.contains(&ns.target) {
                    let out = solicited_na_frame(&ns, self.mac, eth.src);
                    match fd.get_ref().send(&out) {
                        Ok(_) => {
                            stats.advertisements.fetch_add(1, Ordering::Relaxed);
                            debug!(target_ip = %ns.target, from = %ns.src, "answered NS");
                        }
                        Err(e) => warn!(%e, "NA send"),
                    }
                }
                return None;
            }
            Err(e) => e,
        };
        match NaRepr::parse_frame(frame) {
            Ok((eth, na)) => {
                // Another MAC advertising an owned address: neighbours that take it (an
                // Override, or any answer to their own solicitation) move the address away.
                let other = na.target_lladdr.unwrap_or(eth.src);
                let claimed = (owned.contains(&na.target)
                    && (other != self.mac || eth.src != self.mac))
                    .then_some(na.target);
                if claimed.is_some() {
                    debug!(target_ip = %na.target, mac = %other, "neighbor advertisement from another MAC for an owned address");
                }
                claimed
            }
            Err(_) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                debug!(e = %ns_error, "ignored an invalid neighbor solicitation");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_joined_by_its_first_address_and_left_by_its_last() {
        let g: Ipv6Addr = "ff02::1:ff00:10".parse().unwrap();
        let other: Ipv6Addr = "ff02::1:ff00:11".parse().unwrap();
        let mut c = GroupCounts::default();
        assert!(c.add(g), "first address: join");
        assert!(
            !c.add(g),
            "fd00::10 and fd01::10 share the group: no second join"
        );
        assert!(c.add(other));
        assert!(!c.remove(g), "one address still needs it");
        assert!(c.remove(g), "the last: leave");
        assert!(!c.remove(g), "never joined: nothing to leave");
        assert!(c.remove(other));
    }
}
