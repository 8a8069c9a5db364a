//! Turns "this node owns these IPs on these interfaces" into running responders: one ARP
//! responder per interface with owned IPv4 addresses, one NDP responder per interface with
//! owned IPv6 addresses. A responder learns its owned set through a watch channel, so a
//! lost IP stops being answered as soon as [`Announcer::apply`] returns; a responder with
//! nothing left to answer is stopped and its socket closed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Metrics;
use crate::election::Announcement;
use crate::interfaces::LocalInterface;
use crate::responder::{arp, ndp, sys::PacketSocket};
use crate::wire::ethernet::Mac;

struct Responder<T> {
    owned: watch::Sender<BTreeSet<T>>,
    cancel: CancellationToken,
}

impl<T> Drop for Responder<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Default)]
struct OnInterface {
    mac: Option<Mac>,
    v4: Option<Responder<Ipv4Addr>>,
    v6: Option<Responder<Ipv6Addr>>,
    /// What this node answers for on the interface now.
    owned: BTreeSet<IpAddr>,
}

/// The responders of this node.
pub struct Announcer {
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// Fired at SIGTERM: every responder answers until a peer announces its addresses.
    handover: CancellationToken,
    on: BTreeMap<String, OnInterface>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("interfaces", &self.on.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Announcer {
    pub fn new(metrics: Arc<Metrics>, cancel: CancellationToken) -> Announcer {
        Announcer {
            metrics,
            cancel,
            handover: CancellationToken::new(),
            on: BTreeMap::new(),
        }
    }

    /// Makes the responders answer for exactly `owned`. Interfaces that are not in
    /// `locals` (or have no MAC) cannot answer; their IPs are skipped with a warning and
    /// retried on the next call.
    pub fn apply(&mut self, owned: &[Announcement], locals: &[LocalInterface]) {
        let mut want: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
        for a in owned {
            want.entry(a.interface.as_str()).or_default().insert(a.ip);
        }
        // Interfaces left behind: stop everything there (dropping a responder cancels it).
        let gone: Vec<String> = self
            .on
            .keys()
            .filter(|k| !want.contains_key(k.as_str()))
            .cloned()
            .collect();
        for iface in gone {
            if let Some(o) = self.on.remove(&iface) {
                self.count_changes(&iface, &o.owned, &BTreeSet::new());
                if !o.owned.is_empty() {
                    info!(interface = %iface, released = ?o.owned, "no longer announcing");
                }
            }
        }
        for (iface, ips) in want {
            let mac = locals
                .iter()
                .find(|l| l.iface.name == iface)
                .and_then(|l| l.mac);
            let Some(mac) = mac else {
                warn!(interface = %iface, ips = ?ips, "cannot announce: the interface is gone or has no MAC");
                if let Some(o) = self.on.remove(iface) {
                    self.count_changes(iface, &o.owned, &BTreeSet::new());
                }
                continue;
            };
            let mut o = self.on.remove(iface).unwrap_or_default();
            if o.mac != Some(mac) {
                // A new MAC (or a first start): fresh sockets.
                o.v4 = None;
                o.v6 = None;
                o.mac = Some(mac);
            }
            let v4: BTreeSet<Ipv4Addr> = ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
                .collect();
            let v6: BTreeSet<Ipv6Addr> = ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                })
                .collect();
            let stats = self.metrics.interface(iface);
            o.v4 = self.ensure(
                o.v4.take(),
                iface,
                v4,
                |sock, rx, cancel, handover| {
                    let stats = stats.arp.clone();
                    async move { arp::run(sock, mac, rx, stats, cancel, handover).await }
                },
                arp::socket,
            );
            o.v6 = self.ensure(
                o.v6.take(),
                iface,
                v6,
                |sock, rx, cancel, handover| {
                    let stats = stats.ndp.clone();
                    async move { ndp::run(sock, mac, rx, stats, cancel, handover).await }
                },
                ndp::socket,
            );
            let mut now: BTreeSet<IpAddr> = BTreeSet::new();
            if let Some(r) = &o.v4 {
                now.extend(r.owned.borrow().iter().map(|a| IpAddr::V4(*a)));
            }
            if let Some(r) = &o.v6 {
                now.extend(r.owned.borrow().iter().map(|a| IpAddr::V6(*a)));
            }
            let taken: Vec<&IpAddr> = now.difference(&o.owned).collect();
            let released: Vec<&IpAddr> = o.owned.difference(&now).collect();
            if !taken.is_empty() || !released.is_empty() {
                info!(interface = %iface, ?taken, ?released, "announcements changed");
            }
            self.count_changes(iface, &o.owned, &now);
            o.owned = now;
            self.on.insert(iface.to_string(), o);
        }
    }

    fn count_changes(&self, iface: &str, before: &BTreeSet<IpAddr>, after: &BTreeSet<IpAddr>) {
        let stats = self.metrics.interface(iface);
        let changed = before.symmetric_difference(after).count();
        stats
            .ownership_changes
            .fetch_add(changed as u64, Ordering::Relaxed);
        stats.announced.store(after.len() as u64, Ordering::Relaxed);
    }

    /// Keeps, starts or stops one responder so that it answers for `want`.
    fn ensure<T, F, Fut>(
        &self,
        current: Option<Responder<T>>,
        iface: &str,
        want: BTreeSet<T>,
        start: F,
        open: fn(&str) -> std::io::Result<PacketSocket>,
    ) -> Option<Responder<T>>
    where
        T: Ord + Clone + Send + Sync + 'static,
        F: FnOnce(
            PacketSocket,
            watch::Receiver<BTreeSet<T>>,
            CancellationToken,
            CancellationToken,
        ) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        if want.is_empty() {
            return None;
        }
        if let Some(r) = current
            && !r.cancel.is_cancelled()
        {
            crate::publish(&r.owned, want);
            return Some(r);
        }
        let socket = match open(iface) {
            Ok(s) => s,
            Err(e) => {
                warn!(interface = %iface, %e, "cannot open the responder socket; will retry");
                return None;
            }
        };
        let (tx, rx) = watch::channel(want);
        let cancel = self.cancel.child_token();
        let fut = start(socket, rx, cancel.clone(), self.handover.clone());
        let iface_name = iface.to_string();
        let done = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                warn!(interface = %iface_name, %e, "responder stopped");
            }
            // A responder that died is restarted by the next apply.
            done.cancel();
        });
        Some(Responder { owned: tx, cancel })
    }

    /// Hands over (SIGTERM, after leaving gossip): every responder keeps answering each of
    /// its addresses until a peer announces it, for at most `longest`; then all stop. A
    /// peer's first gratuitous frame ends this node's answers, its later ones (half a second
    /// on) correct any neighbour that heard this node in between.
    pub async fn hand_over(&mut self, longest: Duration) {
        self.handover.cancel();
        let running: Vec<CancellationToken> = self
            .on
            .values()
            .flat_map(|o| {
                let v4 = o.v4.as_ref().map(|r| r.cancel.clone());
                let v6 = o.v6.as_ref().map(|r| r.cancel.clone());
                v4.into_iter().chain(v6)
            })
            .collect();
        let all_done = futures::future::join_all(running.iter().map(|c| c.cancelled()));
        if tokio::time::timeout(longest, all_done).await.is_err() {
            let left: BTreeSet<&String> = self.on.keys().collect();
            info!(interfaces = ?left, "handing over: no peer announced some addresses in time; stopping anyway");
        }
        self.stop_all();
    }

    /// Stops every responder at once.
    pub fn stop_all(&mut self) {
        let all: Vec<String> = self.on.keys().cloned().collect();
        for iface in all {
            if let Some(o) = self.on.remove(&iface) {
                self.count_changes(&iface, &o.owned, &BTreeSet::new());
            }
        }
    }
}
