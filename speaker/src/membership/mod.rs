//! Which speakers are alive, decided among the speakers themselves (SWIM, via foca) so that a
//! dead node is noticed within the failover budget without the API server in the loop.
//!
//! Gossip runs over UDP; every datagram is sealed with the gossip key ([`auth`]) and anything
//! that does not verify or decode is dropped and counted. On shutdown a speaker leaves the
//! cluster explicitly, so its peers take over at once instead of waiting for suspicion.
//!
//! A speaker's identity carries its node's announcing interfaces (name, up, subnets, default
//! route): the election needs every node's, and inside the identity they travel with the
//! membership itself, so a member is never known without them. When they change, the
//! speaker takes a new identity (a higher generation), which replaces the old one on every
//! peer.

pub mod auth;
pub mod keys;
pub mod suspicion;
pub mod vet;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, Foca, PostcardCodec, Timer};

use serde::{Deserialize, Serialize};
use suspicion::Suspicions;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vet::Refusal;

pub use auth::GossipKey;
use keys::KeyChain;
pub use keys::Keyring;

use crate::election::Interface;

/// A speaker as gossip knows it: its node, where it listens, a generation that grows with
/// every start and every change of its interfaces (so that the newer identity supersedes
/// the older), and its node's announcing interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Speaker {
    pub node: String,
    pub addr: SocketAddr,
    pub generation: u64,
    pub interfaces: Vec<Interface>,
}

/// A live member as the rest of the speaker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub interfaces: Vec<Interface>,
}

/// Upper bound on the encoded interfaces in an identity, so that a probe (which carries two
/// identities) and its piggybacked updates still fit one datagram.
pub const MAX_INTERFACES_BYTES: usize = 360;

/// Trims `interfaces` to what fits in an identity: the default-route interface first, then
/// those with addresses, in name order. Returns the kept list and how many were dropped.
pub fn fit_interfaces(interfaces: &[Interface]) -> (Vec<Interface>, usize) {
    let mut order: Vec<&Interface> = interfaces.iter().collect();
    order.sort_by_key(|i| (!i.default_route, i.subnets.is_empty(), i.name.clone()));
    let mut kept = Vec::new();
    for i in order {
        kept.push(i.clone());
        let size = postcard::to_allocvec(&kept)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_INTERFACES_BYTES {
            kept.pop();
        }
    }
    let dropped = interfaces.len() - kept.len();
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    (kept, dropped)
}

impl foca::Identity for Speaker {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Speaker {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Timings and identity of one speaker's membership.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node: String,
    pub bind: SocketAddr,
    /// The address peers send to; `None`: the bound address.
    pub advertise: Option<SocketAddr>,
    /// The keys at start; [`Inputs::keys`] brings later ones.
    pub keys: Keyring,
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How long a direct probe may take before indirect probes go out.
    pub probe_rtt: Duration,
    /// How long a suspected member has to refute before it is declared down.
    pub suspect_to_down: Duration,
    pub generation: u64,
}

impl Settings {
    /// Timings tuned for a LAN and a failover budget of about two seconds: a dead member is
    /// probed within `probe_period` and declared down `suspect_to_down` later.
    pub fn lan(node: &str, bind: SocketAddr, keys: Keyring) -> Settings {
        Settings {
            node: node.to_string(),
            bind,
            advertise: None,
            keys,
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down: Duration::from_millis(500),
            generation: now_millis(),
        }
    }

    fn foca_config(&self) -> Config {
        let mut c = Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down;
        // Spread news (a suspicion, a refutation, a death) between probes too, so the node
        // that takes over learns of a death without waiting to be probed itself; a LAN of
        // speakers affords a few small datagrams every 100 ms.
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(100),
            num_members: std::num::NonZeroUsize::MIN.saturating_add(2),
        });
        // A member wrongly declared down hears of it and comes back with a new generation
        // (`Speaker::renew`) instead of waiting to be announced again.
        c.notify_down_members = true;
        c.max_packet_size =
            std::num::NonZeroUsize::new(1400 - auth::OVERHEAD).unwrap_or(c.max_packet_size);
        c
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub dropped_unauthenticated: AtomicU64,
    pub dropped_malformed: AtomicU64,
    /// Authenticated messages refused by [`vet`]: a sender speaking for another address, a
    /// generation beyond any clock.
    pub dropped_refused: AtomicU64,
    /// Times another identity claimed this speaker's node and it took a higher generation.
    pub rivals: AtomicU64,
    pub sent: AtomicU64,
    /// Peers (not this speaker) by SWIM state, as of the last loop iteration.
    pub peers_alive: AtomicU64,
    pub peers_suspect: AtomicU64,
    pub peers_down: AtomicU64,
    /// Suspicions begun: a peer that stopped answering probes. A peer that leaves (SIGTERM)
    /// goes straight to down without one.
    pub suspicions: AtomicU64,
}

/// Errors of the membership loop.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot bind the gossip socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet running membership.
#[derive(Debug)]
pub struct Membership {
    socket: UdpSocket,
    me: Speaker,
    settings: Settings,
    members_tx: watch::Sender<BTreeMap<String, Member>>,
    stats: Arc<Stats>,
    unknown_key: Arc<Notify>,
}

/// What the rest of the speaker sees: the live members (self included) and counters.
#[derive(Clone, Debug)]
pub struct MembershipView {
    pub members: watch::Receiver<BTreeMap<String, Member>>,
    pub stats: Arc<Stats>,
    /// Notified when a datagram arrives that no known key opens: a peer may seal with a key
    /// this speaker has not read yet, so the gossip Secret is worth reading again now.
    pub unknown_key: Arc<Notify>,
}

/// What the membership loop follows while it runs.
#[derive(Debug)]
pub struct Inputs {
    /// Peers' gossip addresses (from the API), announced to until they are members.
    pub seeds: watch::Receiver<Vec<(String, SocketAddr)>>,
    /// This node's announcing interfaces, carried in its identity (trimmed by
    /// [`fit_interfaces`]).
    pub interfaces: watch::Receiver<Vec<Interface>>,
    /// The gossip keys, as read from the Secret.
    pub keys: watch::Receiver<Keyring>,
}

impl Membership {
    pub async fn bind(settings: Settings) -> Result<(Membership, MembershipView), MembershipError> {
        let socket =
            UdpSocket::bind(settings.bind)
                .await
                .map_err(|source| MembershipError::Bind {
                    addr: settings.bind,
                    source,
                })?;
        let local = socket
            .local_addr()
            .map_err(|source| MembershipError::Bind {
                addr: settings.bind,
                source,
            })?;
        let me = Speaker {
            node: settings.node.clone(),
            addr: settings.advertise.unwrap_or(local),
            generation: settings.generation,
            interfaces: Vec::new(),
        };
        let (members_tx, members) = watch::channel(BTreeMap::from([(
            me.node.clone(),
            Member {
                interfaces: Vec::new(),
            },
        )]));
        let stats = Arc::new(Stats::default());
        let unknown_key = Arc::new(Notify::new());
        Ok((
            Membership {
                socket,
                me,
                settings,
                members_tx,
                stats: stats.clone(),
                unknown_key: unknown_key.clone(),
            },
            MembershipView {
                members,
                stats,
                unknown_key,
            },
        ))
    }

    /// The address peers reach this speaker at.
    pub fn addr(&self) -> SocketAddr {
        self.me.addr
    }

    /// Runs until `cancel`; then leaves the cluster.
    pub async fn run(self, inputs: Inputs, cancel: CancellationToken) {
        let Membership {
            socket,
            mut me,
            settings,
            members_tx,
            stats,
            unknown_key,
        } = self;
        let Inputs {
            mut seeds,
            mut interfaces,
            mut keys,
        } = inputs;
        let mut chain = KeyChain::new(settings.keys.clone());
        chain.update(keys.borrow_and_update().clone(), Instant::now());
        let mut keys_open = true;
        // Where each live member is, for vet's address check (rebuilt every turn).
        let mut live_addrs: std::collections::HashMap<String, SocketAddr> =
            std::collections::HashMap::new();
        me.interfaces = fit_local(&interfaces.borrow_and_update());
        // A seeded, Send generator: the loop may move between runtime threads.
        let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let mut foca = Foca::new(me.clone(), settings.foca_config(), rng, PostcardCodec);
        let mut rt: AccumulatingRuntime<Speaker> = AccumulatingRuntime::new();
        let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<Speaker>>();
        let mut buf = vec![0u8; 65536];
        // Once the interface watch is gone, the last known interfaces stay.
        let mut interfaces_open = true;
        let mut announce = tokio::time::interval(Duration::from_millis(500));
        // foca's own suspicion timer normally fires first; this is the backstop.
        let mut suspicions = Suspicions::new(settings.suspect_to_down + settings.probe_period);
        info!(node = %me.node, addr = %me.addr, "gossip membership started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    if let Err(e) = foca.leave_cluster(&mut rt) {
                        warn!(%e, "leaving the gossip cluster");
                    }
                    flush(&socket, chain.sealing(), &mut rt, &timer_tx, &stats).await;
                    info!(node = %me.node, "left the gossip cluster");
                    return;
                }
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let Some(data) = buf.get(..n) else { continue };
                    match chain.open_v1(data, Instant::now()) {
                        Ok(payload) => {
                            let live = |node: &str| live_addrs.get(node).copied();
                            match vet::vet(payload, from, foca.identity(), now_millis(), live) {
                                Ok(vetted) => {
                                    for e in &vetted.dropped {
                                        stats.dropped_refused.fetch_add(1, Ordering::Relaxed);
                                        debug!(%from, %e, "took a member update out of a gossip message");
                                    }
                                    if let Err(e) = foca.handle_data(&vetted.payload, &mut rt) {
                                        stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                                        debug!(%from, %e, "dropped a gossip message that does not decode");
                                    }
                                    if let Some(rival) = vetted.rival_generation {
                                        let current = foca.identity().clone();
                                        let next = Speaker {
                                            generation: next_generation(current.generation.max(rival)),
                                            ..current
                                        };
                                        warn!(%from, rival, generation = next.generation, "another gossip identity claims this node: taking a higher generation");
                                        stats.rivals.fetch_add(1, Ordering::Relaxed);
                                        if let Err(e) = foca.change_identity(next, &mut rt) {
                                            warn!(%e, "cannot change the gossip identity");
                                        }
                                    }
                                }
                                Err(Refusal::Malformed) => {
                                    stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                                    debug!(%from, "dropped a gossip message that does not decode");
                                }
                                Err(e) => {
                                    stats.dropped_refused.fetch_add(1, Ordering::Relaxed);
                                    debug!(%from, %e, "refused a gossip message");
                                }
                            }
                        }
                        Err(e) => {
                            stats.dropped_unauthenticated.fetch_add(1, Ordering::Relaxed);
                            debug!(%from, %e, "dropped an unauthenticated gossip datagram");
                            if e == auth::AuthError::BadTag {
                                unknown_key.notify_one();
                            }
                        }
                    }
                }
                Some(t) = timer_rx.recv() => {
                    if let Err(e) = foca.handle_timer(t, &mut rt) {
                        debug!(%e, "gossip timer");
                    }
                }
                r = keys.changed(), if keys_open => {
                    if r.is_err() {
                        keys_open = false;
                        continue;
                    }
                    let ring = keys.borrow_and_update().clone();
                    let now = Instant::now();
                    chain.expire(now);
                    if chain.update(ring, now) {
                        info!("gossip: sealing with a new key (the previous ones are still accepted)");
                    }
                }
                r = interfaces.changed(), if interfaces_open => {
                    if r.is_err() {
                        interfaces_open = false;
                        continue;
                    }
                    let now = fit_local(&interfaces.borrow_and_update());
                    if now != me.interfaces {
                        let next = Speaker {
                            generation: next_generation(me.generation),
                            interfaces: now,
                            ..me.clone()
                        };
                        match foca.change_identity(next.clone(), &mut rt) {
                            Ok(()) => {
                                info!(generation = next.generation, "interfaces changed: new gossip identity");
                                me = next;
                            }
                            Err(e) => warn!(%e, "cannot change the gossip identity"),
                        }
                    }
                }
                _ = announce.tick() => {
                    chain.expire(Instant::now());
                    let known: Vec<String> = foca.iter_members().map(|m| m.id().node.clone()).collect();
                    let pending: Vec<(String, SocketAddr)> = seeds
                        .borrow_and_update()
                        .iter()
                        .filter(|(n, _)| *n != me.node && !known.contains(n))
                        .cloned()
                        .collect();
                    for (node, addr) in pending {
                        let placeholder = Speaker { node, addr, generation: 0, interfaces: Vec::new() };
                        if let Err(e) = foca.announce(placeholder, &mut rt) {
                            debug!(%e, "announce");
                        }
                    }
                }
            }
            flush(&socket, chain.sealing(), &mut rt, &timer_tx, &stats).await;
            // foca renews the identity by itself when it learns it was declared down.
            if foca.identity() != &me {
                me = foca.identity().clone();
            }
            let suspects = foca
                .iter_membership_state()
                .filter(|m| m.state() == foca::State::Suspect)
                .map(|m| (m.id().clone(), m.incarnation()));
            let seen = suspicions.observe(suspects.collect::<Vec<_>>(), Instant::now());
            stats
                .suspicions
                .fetch_add(seen.new as u64, Ordering::Relaxed);
            let overdue = seen.overdue;
            if !overdue.is_empty() {
                for (id, _) in &overdue {
                    info!(node = %id.node, generation = id.generation, "suspect not refuted in time: declaring it down");
                }
                let down = overdue
                    .into_iter()
                    .map(|(id, inc)| foca::Member::new(id, inc, foca::State::Down));
                if let Err(e) = foca.apply_many(down, true, &mut rt) {
                    warn!(%e, "declaring overdue suspects down");
                }
                flush(&socket, chain.sealing(), &mut rt, &timer_tx, &stats).await;
            }
            let (mut alive, mut suspect, mut down) = (0u64, 0u64, 0u64);
            for m in foca.iter_membership_state() {
                match m.state() {
                    foca::State::Alive => alive += 1,
                    foca::State::Suspect => suspect += 1,
                    foca::State::Down => down += 1,
                }
            }
            stats.peers_alive.store(alive, Ordering::Relaxed);
            stats.peers_suspect.store(suspect, Ordering::Relaxed);
            stats.peers_down.store(down, Ordering::Relaxed);
            live_addrs.clear();
            live_addrs.extend(
                foca.iter_members()
                    .map(|m| (m.id().node.clone(), m.id().addr)),
            );
            let mut members: BTreeMap<String, Member> = foca
                .iter_members()
                .map(|m| {
                    let id = m.id();
                    (
                        id.node.clone(),
                        Member {
                            interfaces: id.interfaces.clone(),
                        },
                    )
                })
                .collect();
            members.insert(
                me.node.clone(),
                Member {
                    interfaces: me.interfaces.clone(),
                },
            );
            members_tx.send_if_modified(|cur| {
                if *cur == members {
                    false
                } else {
                    info!(members = ?members.keys().collect::<Vec<_>>(), "gossip membership changed");
                    *cur = members;
                    true
                }
            });
        }
    }
}

fn fit_local(interfaces: &[Interface]) -> Vec<Interface> {
    let (kept, dropped) = fit_interfaces(interfaces);
    if dropped > 0 {
        warn!(
            dropped,
            kept = kept.len(),
            "too many announcing interfaces to gossip; the rest are not used for announcing"
        );
    }
    kept
}

/// A generation above `current` and, where the clock allows, the current time in
/// milliseconds (so that a restart also wins over the identity before it).
fn next_generation(current: u64) -> u64 {
    now_millis().max(current.saturating_add(1))
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn flush(
    socket: &UdpSocket,
    key: &GossipKey,
    rt: &mut AccumulatingRuntime<Speaker>,
    timers: &mpsc::UnboundedSender<Timer<Speaker>>,
    stats: &Stats,
) {
    while let Some((to, data)) = rt.to_send() {
        let sealed = auth::seal(key, &data);
        if socket.send_to(&sealed, to.addr).await.is_ok() {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    while let Some((after, timer)) = rt.to_schedule() {
        let tx = timers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(timer);
        });
    }
    while rt.to_notify().is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, subnets: usize, default_route: bool) -> Interface {
        Interface {
            name: name.into(),
            up: true,
            subnets: (0..subnets)
                .map(|i| (IpAddr::from([10, 0, i as u8, 1]), 24))
                .collect(),
            default_route,
        }
    }

    use std::net::IpAddr;

    #[test]
    fn few_interfaces_are_kept_whole() {
        let all = vec![iface("eth0", 1, true), iface("eth1", 2, false)];
        assert_eq!(fit_interfaces(&all), (all.clone(), 0));
    }

    #[test]
    fn many_interfaces_are_trimmed_keeping_the_default_route_first() {
        let mut all: Vec<Interface> = (0..40)
            .map(|i| iface(&format!("eth{i:02}"), 2, false))
            .collect();
        all.push(iface("uplink", 1, true));
        let (kept, dropped) = fit_interfaces(&all);
        assert!(dropped > 0 && !kept.is_empty());
        assert_eq!(kept.len() + dropped, all.len());
        assert!(kept.iter().any(|i| i.name == "uplink"));
        assert!(postcard::to_allocvec(&kept).unwrap().len() <= MAX_INTERFACES_BYTES);
        // A probe carries two identities and still fits a datagram.
        let id = Speaker {
            node: "a-rather-long-node-name.example.internal".into(),
            addr: "[2001:db8::1]:7946".parse().unwrap(),
            generation: u64::MAX,
            interfaces: kept,
        };
        assert!(2 * postcard::to_allocvec(&id).unwrap().len() < 1000);
    }
}
