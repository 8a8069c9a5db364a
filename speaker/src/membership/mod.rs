//! Which speakers are alive, decided among the speakers themselves (SWIM, via foca) so that a
//! dead node is noticed within the failover budget without the API server in the loop.
//!
//! Gossip runs over UDP; every datagram is sealed with the gossip key ([`auth`]) and anything
//! that does not verify or decode is dropped and counted. On shutdown a speaker leaves the
//! cluster explicitly, so its peers take over at once instead of waiting for suspicion.

pub mod auth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use auth::GossipKey;

/// A speaker as gossip knows it: its node, where it listens, and a generation that grows
/// with every start so that a restarted speaker supersedes its former self.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Speaker {
    pub node: String,
    pub addr: SocketAddr,
    pub generation: u64,
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
    pub key: GossipKey,
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
    pub fn lan(node: &str, bind: SocketAddr, key: GossipKey) -> Settings {
        Settings {
            node: node.to_string(),
            bind,
            advertise: None,
            key,
            probe_period: Duration::from_millis(400),
            probe_rtt: Duration::from_millis(150),
            suspect_to_down: Duration::from_millis(700),
            generation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        }
    }

    fn foca_config(&self) -> Config {
        let mut c = Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down;
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
    pub sent: AtomicU64,
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
    members_tx: watch::Sender<BTreeMap<String, SocketAddr>>,
    stats: Arc<Stats>,
}

/// What the rest of the speaker sees: the live members (self included) and counters.
#[derive(Clone, Debug)]
pub struct MembershipView {
    pub members: watch::Receiver<BTreeMap<String, SocketAddr>>,
    pub stats: Arc<Stats>,
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
        };
        let (members_tx, members) = watch::channel(BTreeMap::from([(me.node.clone(), me.addr)]));
        let stats = Arc::new(Stats::default());
        Ok((
            Membership {
                socket,
                me,
                settings,
                members_tx,
                stats: stats.clone(),
            },
            MembershipView { members, stats },
        ))
    }

    /// The address peers reach this speaker at.
    pub fn addr(&self) -> SocketAddr {
        self.me.addr
    }

    /// Runs until `cancel`; then leaves the cluster. `seeds` are peers' gossip addresses
    /// (from the API: nodes or speaker pods), announced to until they are members.
    pub async fn run(
        self,
        mut seeds: watch::Receiver<Vec<(String, SocketAddr)>>,
        cancel: CancellationToken,
    ) {
        let Membership {
            socket,
            me,
            settings,
            members_tx,
            stats,
        } = self;
        // A seeded, Send generator: the loop may move between runtime threads.
        let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let mut foca = Foca::new(me.clone(), settings.foca_config(), rng, PostcardCodec);
        let mut rt: AccumulatingRuntime<Speaker> = AccumulatingRuntime::new();
        let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<Speaker>>();
        let mut buf = vec![0u8; 65536];
        let mut announce = tokio::time::interval(Duration::from_millis(500));
        info!(node = %me.node, addr = %me.addr, "gossip membership started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    if let Err(e) = foca.leave_cluster(&mut rt) {
                        warn!(%e, "leaving the gossip cluster");
                    }
                    flush(&socket, &settings.key, &mut rt, &timer_tx, &stats).await;
                    info!(node = %me.node, "left the gossip cluster");
                    return;
                }
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let Some(data) = buf.get(..n) else { continue };
                    match auth::open(&settings.key, data) {
                        Ok(payload) => {
                            if let Err(e) = foca.handle_data(payload, &mut rt) {
                                stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                                debug!(%from, %e, "dropped a gossip message that does not decode");
                            }
                        }
                        Err(e) => {
                            stats.dropped_unauthenticated.fetch_add(1, Ordering::Relaxed);
                            debug!(%from, %e, "dropped an unauthenticated gossip datagram");
                        }
                    }
                }
                Some(t) = timer_rx.recv() => {
                    if let Err(e) = foca.handle_timer(t, &mut rt) {
                        debug!(%e, "gossip timer");
                    }
                }
                _ = announce.tick() => {
                    let known: Vec<String> = foca.iter_members().map(|m| m.id().node.clone()).collect();
                    let pending: Vec<(String, SocketAddr)> = seeds
                        .borrow_and_update()
                        .iter()
                        .filter(|(n, _)| *n != me.node && !known.contains(n))
                        .cloned()
                        .collect();
                    for (node, addr) in pending {
                        let placeholder = Speaker { node, addr, generation: 0 };
                        if let Err(e) = foca.announce(placeholder, &mut rt) {
                            debug!(%e, "announce");
                        }
                    }
                }
            }
            flush(&socket, &settings.key, &mut rt, &timer_tx, &stats).await;
            let mut members: BTreeMap<String, SocketAddr> = foca
                .iter_members()
                .map(|m| (m.id().node.clone(), m.id().addr))
                .collect();
            members.insert(me.node.clone(), me.addr);
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
