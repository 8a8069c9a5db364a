//! Which speakers are alive, decided among the speakers themselves (SWIM, via foca) so that a
//! dead node is noticed within the failover budget without the API server in the loop.
//!
//! Gossip runs over UDP; every datagram is sealed with a gossip key ([`auth`], [`keys`]),
//! carries a session and a counter so that replays are refused ([`replay`]), and passes
//! [`vet`] (no identity may speak for another's address or run ahead of the clock) before
//! foca sees it; anything else is dropped and counted. The wire format is versioned and old
//! speakers are still understood ([`wire`]). On shutdown a speaker leaves the cluster
//! explicitly, so its peers take over at once instead of waiting for suspicion.
//!
//! A speaker's identity carries its [`Standing`] (starting, ready, stale) and its node's
//! announcing interfaces (name, up, subnets, default route per family): the election needs
//! every node's, and inside the identity they travel with the membership itself, so a
//! member is never known without them. When they change, the speaker takes a new identity
//! (a higher generation), which replaces the old one on every peer.
//!
//! Beside foca's messages, each speaker sends its claims (the digest of what it announces,
//! [`crate::agreement`]) straight to every live peer, on change and every [`CLAIMS_PERIOD`];
//! they are sealed and replay-checked like the rest, and taken only when they name the
//! live member at the sender's address under its current generation.

pub mod auth;
pub mod identity;
pub mod keys;
pub mod replay;
pub mod suspicion;
pub mod vet;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Config, Foca, PostcardCodec, Timer};

use auth::{Kind, Opened};
use replay::{ReplayGuard, Verdict};
use suspicion::Suspicions;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vet::Refusal;

pub use auth::GossipKey;
use keys::KeyChain;
pub use keys::Keyring;

use crate::agreement::{Claims, Digest};
use crate::election::Interface;
pub use identity::{Speaker, Standing};

/// A live member as the rest of the speaker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub standing: Standing,
    pub interfaces: Vec<Interface>,
}

/// Upper bound on the encoded interfaces in an identity, so that a probe (which carries two
/// identities) and its piggybacked updates still fit one datagram.
pub const MAX_INTERFACES_BYTES: usize = 360;

/// Trims `interfaces` to what fits in an identity, keeping them in the order given (most
/// important first: `interfaces::by_importance` puts those the pools need first). Returns
/// the kept list, by name, and how many were dropped.
pub fn fit_interfaces(interfaces: &[Interface]) -> (Vec<Interface>, usize) {
    let mut kept = Vec::new();
    for i in interfaces {
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
    /// How long a member declared down is remembered (foca's default: a day); until then
    /// its old identity cannot come back.
    pub remove_down_after: Duration,
}

impl Settings {
    /// Timings tuned for a LAN and a failover budget of about 1.5 seconds. Each member
    /// probes the others in turn, in an order shuffled after every round, so a given member
    /// is probed again one to three `probe_period`s after its last probe (with two peers;
    /// fewer with more peers probing it); the probe fails at the end of its period, and
    /// the member is declared down `suspect_to_down` later: at worst 4 x 200 + 500 ms after
    /// a crash for one prober, and the first of the survivors to get there decides.
    pub fn lan(node: &str, bind: SocketAddr, keys: Keyring) -> Settings {
        Settings {
            node: node.to_string(),
            bind,
            advertise: None,
            keys,
            probe_period: Duration::from_millis(200),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down: Duration::from_millis(500),
            generation: now_millis(),
            remove_down_after: Duration::from_secs(24 * 3600),
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
        c.remove_down_after = Some(self.remove_down_after);
        c.max_packet_size =
            std::num::NonZeroUsize::new(1400 - auth::OVERHEAD_V2).unwrap_or(c.max_packet_size);
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
    /// Datagrams seen before (a replay), from an older session of their sender, or v1
    /// from a sender that speaks v2.
    pub dropped_replayed: AtomicU64,
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

/// A bound, not yet running membership.
#[derive(Debug)]
pub struct Membership {
    socket: UdpSocket,
    me: Speaker,
    settings: Settings,
    members_tx: watch::Sender<BTreeMap<String, Member>>,
    claims_tx: watch::Sender<BTreeMap<String, Digest>>,
    stats: Arc<Stats>,
    unknown_key: Arc<Notify>,
}

/// What the rest of the speaker sees: the live members (self included) and counters.
#[derive(Clone, Debug)]
pub struct MembershipView {
    pub members: watch::Receiver<BTreeMap<String, Member>>,
    /// What each live peer says it announces (see [`crate::agreement`]); a peer that sent
    /// nothing yet (or runs a version that does not send it) is absent.
    pub claims: watch::Receiver<BTreeMap<String, Digest>>,
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
    /// This speaker's standing, carried in its identity.
    pub standing: watch::Receiver<Standing>,
    /// The digest of what this speaker announces, sent to every peer when it changes and
    /// every [`CLAIMS_PERIOD`].
    pub owned: watch::Receiver<Digest>,
}

/// How often a speaker repeats its claims to every peer (a peer that joined, or a lost
/// datagram, hears them within this).
pub const CLAIMS_PERIOD: Duration = Duration::from_secs(5);

impl Membership {
    pub async fn bind(settings: Settings) -> Result<(Membership, MembershipView), crate::Error> {
        let socket =
            UdpSocket::bind(settings.bind)
                .await
                .map_err(|source| crate::Error::GossipBind {
                    addr: settings.bind,
                    source,
                })?;
        let local = socket
            .local_addr()
            .map_err(|source| crate::Error::GossipBind {
                addr: settings.bind,
                source,
            })?;
        let me = Speaker {
            node: settings.node.clone(),
            addr: settings.advertise.unwrap_or(local),
            generation: settings.generation,
            standing: Standing::Starting,
            learnt_from_v1: false,
            interfaces: Vec::new(),
        };
        let (members_tx, members) = watch::channel(BTreeMap::from([(
            me.node.clone(),
            Member {
                standing: Standing::Starting,
                interfaces: Vec::new(),
            },
        )]));
        let stats = Arc::new(Stats::default());
        let unknown_key = Arc::new(Notify::new());
        let (claims_tx, claims) = watch::channel(BTreeMap::new());
        Ok((
            Membership {
                socket,
                me,
                settings,
                members_tx,
                claims_tx,
                stats: stats.clone(),
                unknown_key: unknown_key.clone(),
            },
            MembershipView {
                members,
                claims,
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
            claims_tx,
            stats,
            unknown_key,
        } = self;
        let Inputs {
            mut seeds,
            mut interfaces,
            mut keys,
            mut standing,
            mut owned,
        } = inputs;
        let mut chain = KeyChain::new(settings.keys.clone());
        chain.update(keys.borrow_and_update().clone(), Instant::now());
        me.interfaces = fit_local(&interfaces.borrow_and_update());
        me.standing = *standing.borrow_and_update();
        // A seeded, Send generator: the loop may move between runtime threads.
        let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<Speaker>>();
        let mut g = Gossip {
            foca: Foca::new(me.clone(), settings.foca_config(), rng, PostcardCodec),
            rt: AccumulatingRuntime::new(),
            socket,
            chain,
            guard: ReplayGuard::default(),
            session: now_nanos(),
            counter: 0,
            live_addrs: HashMap::new(),
            timer_tx,
            stats,
            unknown_key,
            claims: BTreeMap::new(),
            claims_tx,
        };
        let mut buf = vec![0u8; 65536];
        // Once an input is gone, its last value stays.
        let (mut keys_open, mut interfaces_open, mut standing_open) = (true, true, true);
        let mut owned_open = true;
        let mut announce = tokio::time::interval(Duration::from_millis(500));
        let mut claims_tick = tokio::time::interval(CLAIMS_PERIOD);
        // foca's own suspicion timer normally fires first; this is the backstop.
        let mut suspicions = Suspicions::new(settings.suspect_to_down + settings.probe_period);
        info!(node = %me.node, addr = %me.addr, standing = ?me.standing, "gossip membership started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    if let Err(e) = g.foca.leave_cluster(&mut g.rt) {
                        warn!(%e, "leaving the gossip cluster");
                    }
                    g.flush().await;
                    info!(node = %me.node, "left the gossip cluster");
                    return;
                }
                r = g.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    if let Some(data) = buf.get(..n) {
                        g.receive(data, from);
                    }
                }
                Some(t) = timer_rx.recv() => {
                    if let Err(e) = g.foca.handle_timer(t, &mut g.rt) {
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
                    g.chain.expire(now);
                    if g.chain.update(ring, now) {
                        info!("gossip: sealing with a new key (the previous ones are still accepted)");
                    }
                }
                r = interfaces.changed(), if interfaces_open => {
                    if r.is_err() {
                        interfaces_open = false;
                        continue;
                    }
                    let now = fit_local(&interfaces.borrow_and_update());
                    if now != g.foca.identity().interfaces {
                        g.change_identity(|id| id.interfaces = now, "interfaces changed");
                    }
                }
                r = standing.changed(), if standing_open => {
                    if r.is_err() {
                        standing_open = false;
                        continue;
                    }
                    let now = *standing.borrow_and_update();
                    if now != g.foca.identity().standing {
                        g.change_identity(|id| id.standing = now, "standing changed");
                    }
                }
                r = owned.changed(), if owned_open => {
                    if r.is_err() {
                        owned_open = false;
                        continue;
                    }
                    let digest = *owned.borrow_and_update();
                    g.send_claims(digest).await;
                }
                _ = claims_tick.tick() => {
                    let digest = *owned.borrow();
                    g.send_claims(digest).await;
                }
                _ = announce.tick() => {
                    let now = Instant::now();
                    g.chain.expire(now);
                    g.guard.expire(now);
                    let known: Vec<String> = g.foca.iter_members().map(|m| m.id().node.clone()).collect();
                    let pending: Vec<(String, SocketAddr)> = seeds
                        .borrow_and_update()
                        .iter()
                        .filter(|(n, _)| *n != me.node && !known.contains(n))
                        .cloned()
                        .collect();
                    for (node, addr) in pending {
                        let placeholder = Speaker {
                            node,
                            addr,
                            generation: 0,
                            standing: Standing::Starting,
                            learnt_from_v1: false,
                            interfaces: Vec::new(),
                        };
                        if let Err(e) = g.foca.announce(placeholder, &mut g.rt) {
                            debug!(%e, "announce");
                        }
                    }
                }
            }
            g.flush().await;
            // foca renews the identity by itself when it learns it was declared down.
            if g.foca.identity() != &me {
                me = g.foca.identity().clone();
            }
            let suspects = g
                .foca
                .iter_membership_state()
                .filter(|m| m.state() == foca::State::Suspect)
                .map(|m| (m.id().clone(), m.incarnation()));
            let seen = suspicions.observe(suspects.collect::<Vec<_>>(), Instant::now());
            g.stats
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
                if let Err(e) = g.foca.apply_many(down, true, &mut g.rt) {
                    warn!(%e, "declaring overdue suspects down");
                }
                g.flush().await;
            }
            g.publish(&members_tx);
        }
    }
}

/// The running membership: foca, the socket, the keys and what was heard.
struct Gossip {
    foca: Foca<Speaker, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>,
    rt: AccumulatingRuntime<Speaker>,
    socket: UdpSocket,
    chain: KeyChain,
    guard: ReplayGuard,
    /// This process's session and the counter of its v2 datagrams (see `replay`).
    session: u64,
    counter: u64,
    /// Where each live member is, for vet's address check (rebuilt every turn).
    live_addrs: HashMap<String, SocketAddr>,
    timer_tx: mpsc::UnboundedSender<Timer<Speaker>>,
    stats: Arc<Stats>,
    unknown_key: Arc<Notify>,
    /// The latest claims of each live peer, with the generation they were sent under.
    claims: BTreeMap<String, (u64, Digest)>,
    claims_tx: watch::Sender<BTreeMap<String, Digest>>,
}

impl Gossip {
    /// Handles one datagram: opens it, refuses replays and impostors, upgrades v1, and
    /// hands the rest to foca.
    fn receive(&mut self, data: &[u8], from: SocketAddr) {
        let stats = self.stats.clone();
        stats.received.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let upgraded;
        let payload = match auth::open_any(self.chain.accepted(now), data) {
            Ok(Opened::V1(p)) => {
                if self.guard.check_v1(from, now) != Verdict::Fresh {
                    stats.dropped_replayed.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, "dropped a v1 gossip datagram from a speaker that speaks v2");
                    return;
                }
                let Some(p) = wire::upgrade(p) else {
                    stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, "dropped a v1 gossip message that does not decode");
                    return;
                };
                upgraded = p;
                &upgraded[..]
            }
            Ok(Opened::V2 {
                kind,
                session,
                counter,
                payload,
            }) => {
                let verdict = self.guard.check_v2(from, session, counter, now);
                if verdict != Verdict::Fresh {
                    stats.dropped_replayed.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, ?verdict, "dropped a replayed gossip datagram");
                    return;
                }
                match kind {
                    Kind::Membership => payload,
                    Kind::Claims => {
                        self.take_claims(payload, from);
                        return;
                    }
                }
            }
            Err(e) => {
                stats
                    .dropped_unauthenticated
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%from, %e, "dropped an unauthenticated gossip datagram");
                if e == auth::AuthError::BadTag {
                    self.unknown_key.notify_one();
                }
                return;
            }
        };
        let live = |node: &str| self.live_addrs.get(node).copied();
        let vetted = match vet::vet(payload, from, self.foca.identity(), now_millis(), live) {
            Ok(v) => v,
            Err(Refusal::Malformed) => {
                stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%from, "dropped a gossip message that does not decode");
                return;
            }
            Err(e) => {
                stats.dropped_refused.fetch_add(1, Ordering::Relaxed);
                debug!(%from, %e, "refused a gossip message");
                return;
            }
        };
        for e in &vetted.dropped {
            stats.dropped_refused.fetch_add(1, Ordering::Relaxed);
            debug!(%from, %e, "took a member update out of a gossip message");
        }
        if let Err(e) = self.foca.handle_data(&vetted.payload, &mut self.rt) {
            stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            debug!(%from, %e, "dropped a gossip message that does not decode");
        }
        if let Some(rival) = vetted.rival_generation {
            warn!(%from, rival, "another gossip identity claims this node: taking a higher generation");
            stats.rivals.fetch_add(1, Ordering::Relaxed);
            let above = rival;
            self.change_identity(
                |id| id.generation = id.generation.max(above),
                "rival identity",
            );
        }
    }

    /// Keeps a peer's claims when they come from that live member's own address and
    /// identity (an old identity's, or another node's, change nothing).
    fn take_claims(&mut self, payload: &[u8], from: SocketAddr) {
        let Ok(c) = postcard::from_bytes::<Claims>(payload) else {
            self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            debug!(%from, "dropped claims that do not decode");
            return;
        };
        let sender = self
            .foca
            .iter_members()
            .map(|m| m.id())
            .find(|id| id.node == c.node);
        match sender {
            Some(id) if id.addr == from && id.generation == c.generation => {
                self.claims.insert(c.node, (c.generation, c.digest));
                self.publish_claims();
            }
            _ => {
                self.stats.dropped_refused.fetch_add(1, Ordering::Relaxed);
                debug!(%from, node = %c.node, generation = c.generation, "refused claims that are not that live member's");
            }
        }
    }

    /// Publishes the claims of the live members only.
    fn publish_claims(&mut self) {
        let live: std::collections::BTreeSet<(String, u64)> = self
            .foca
            .iter_members()
            .map(|m| (m.id().node.clone(), m.id().generation))
            .collect();
        self.claims
            .retain(|node, (generation, _)| live.contains(&(node.clone(), *generation)));
        let now: BTreeMap<String, Digest> = self
            .claims
            .iter()
            .map(|(n, (_, d))| (n.clone(), *d))
            .collect();
        self.claims_tx.send_if_modified(|cur| {
            let changed = *cur != now;
            if changed {
                *cur = now;
            }
            changed
        });
    }

    /// Sends this speaker's claims to every live peer that speaks v2.
    async fn send_claims(&mut self, digest: Digest) {
        let me = self.foca.identity();
        let claims = Claims {
            node: me.node.clone(),
            generation: me.generation,
            digest,
        };
        let Ok(payload) = postcard::to_allocvec(&claims) else {
            return;
        };
        let peers: Vec<SocketAddr> = self
            .foca
            .iter_members()
            .map(|m| m.id().addr)
            .filter(|a| !self.guard.speaks_v1(*a))
            .collect();
        for to in peers {
            self.counter += 1;
            let sealed = auth::seal_v2(
                self.chain.sealing(),
                Kind::Claims,
                self.session,
                self.counter,
                &payload,
            );
            if self.socket.send_to(&sealed, to).await.is_ok() {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes a new identity: `change` applied to the current one, with a higher generation.
    fn change_identity(&mut self, change: impl FnOnce(&mut Speaker), why: &str) {
        let mut next = self.foca.identity().clone();
        change(&mut next);
        next.generation = next_generation(next.generation.max(self.foca.identity().generation));
        let generation = next.generation;
        match self.foca.change_identity(next, &mut self.rt) {
            Ok(()) => info!(generation, "{why}: new gossip identity"),
            Err(e) => warn!(%e, "cannot change the gossip identity"),
        }
    }

    /// Sends what foca wrote (v2, or v1 to a peer that speaks only v1) and schedules its
    /// timers.
    async fn flush(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            let sealed = if self.guard.speaks_v1(to.addr) {
                match wire::downgrade(&data) {
                    Some(old) => auth::seal(self.chain.sealing(), &old),
                    None => continue,
                }
            } else {
                self.counter += 1;
                auth::seal_v2(
                    self.chain.sealing(),
                    Kind::Membership,
                    self.session,
                    self.counter,
                    &data,
                )
            };
            if self.socket.send_to(&sealed, to.addr).await.is_ok() {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            let tx = self.timer_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer);
            });
        }
        while self.rt.to_notify().is_some() {}
    }

    /// Counts members by state and publishes the live ones (self included), and the claims
    /// of the live ones.
    fn publish(&mut self, members_tx: &watch::Sender<BTreeMap<String, Member>>) {
        self.publish_claims();
        let (mut alive, mut suspect, mut down) = (0u64, 0u64, 0u64);
        for m in self.foca.iter_membership_state() {
            match m.state() {
                foca::State::Alive => alive += 1,
                foca::State::Suspect => suspect += 1,
                foca::State::Down => down += 1,
            }
        }
        self.stats.peers_alive.store(alive, Ordering::Relaxed);
        self.stats.peers_suspect.store(suspect, Ordering::Relaxed);
        self.stats.peers_down.store(down, Ordering::Relaxed);
        self.live_addrs.clear();
        self.live_addrs.extend(
            self.foca
                .iter_members()
                .map(|m| (m.id().node.clone(), m.id().addr)),
        );
        let me = self.foca.identity();
        let members: BTreeMap<String, Member> = self
            .foca
            .iter_members()
            .map(|m| m.id())
            .chain([me])
            .map(|id| {
                (
                    id.node.clone(),
                    Member {
                        standing: id.standing,
                        interfaces: id.interfaces.clone(),
                    },
                )
            })
            .collect();
        members_tx.send_if_modified(|cur| {
            if *cur == members {
                false
            } else {
                info!(
                    members = ?members.iter().map(|(n, m)| format!("{n}:{:?}", m.standing)).collect::<Vec<_>>(),
                    "gossip membership changed"
                );
                *cur = members;
                true
            }
        });
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

/// Wall-clock nanoseconds since the Unix epoch: a session that sorts after the previous
/// process's (see `replay`).
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
            default_route_v4: default_route,
            default_route_v6: false,
        }
    }

    use std::net::IpAddr;

    #[test]
    fn few_interfaces_are_kept_whole() {
        let all = vec![iface("eth0", 1, true), iface("eth1", 2, false)];
        assert_eq!(fit_interfaces(&all), (all.clone(), 0));
    }

    #[test]
    fn many_interfaces_are_trimmed_keeping_the_first_given() {
        let mut all: Vec<Interface> = (0..40)
            .map(|i| iface(&format!("eth{i:02}"), 2, false))
            .collect();
        all.insert(0, iface("uplink", 1, true));
        all.push(iface("last", 1, false));
        let (kept, dropped) = fit_interfaces(&all);
        assert!(dropped > 0 && !kept.is_empty());
        assert_eq!(kept.len() + dropped, all.len());
        assert!(kept.iter().any(|i| i.name == "uplink"));
        assert!(
            !kept.iter().any(|i| i.name == "last"),
            "the last given goes first"
        );
        assert!(kept.is_sorted_by(|a, b| a.name <= b.name), "kept by name");
        assert!(postcard::to_allocvec(&kept).unwrap().len() <= MAX_INTERFACES_BYTES);
        // A probe carries two identities and still fits a datagram.
        let id = Speaker {
            node: "a-rather-long-node-name.example.internal".into(),
            addr: "[2001:db8::1]:7946".parse().unwrap(),
            generation: u64::MAX,
            standing: Standing::Stale,
            learnt_from_v1: true,
            interfaces: kept,
        };
        assert!(2 * postcard::to_allocvec(&id).unwrap().len() < 1000);
    }
}
