//! What the speaker's admin port says: `/healthz`, `/readyz` and `/metrics` (the server
//! itself is the one both binaries share, `ferrolb_crds::process::admin`).
//!
//! The counters live where the work happens (responders, membership, forwarding) as plain
//! atomics; this module holds them by interface and hands them to `prometheus-client` at
//! each scrape ([`Metrics`]' collector). Per-interface counters survive a responder
//! restart, so they only ever grow.
//!
//! `/readyz` follows [`Readiness`], which the process sets once its caches have synced and
//! its first election was applied, and clears for good at SIGTERM. `/healthz` answers 503,
//! naming what is stuck, once [`Health`] finds a component that can no longer make
//! progress (the bounds are the `--healthz-*` flags).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ferrolb_crds::health::Health;
use ferrolb_crds::process::admin::{self as shared, Endpoints, Exposition, ReadinessCheck};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::membership::Stats as GossipStats;
use crate::responder::arp::ArpStats;
use crate::responder::ndp::NdpStats;

/// The admin port when `--admin-address` is not given.
pub const DEFAULT_PORT: u16 = 7473;

/// The counters of one interface.
#[derive(Debug, Default)]
pub struct InterfaceStats {
    pub arp: Arc<ArpStats>,
    pub ndp: Arc<NdpStats>,
    /// IPs taken plus IPs given up on this interface.
    pub ownership_changes: AtomicU64,
    /// IPs announced on this interface now.
    pub announced: AtomicU64,
}

/// What `/metrics` says of NodePort forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardingStats {
    /// Running totals of the kernel's counters.
    pub totals: crate::forwarding::kernel::Counters,
    /// Forwarded IPs this node owns, IPv4 and IPv6.
    pub ips: [u64; 2],
    /// Rulesets loaded, and loads that failed.
    pub loads: u64,
    pub errors: u64,
    /// The kernel refused the SCTP rules: SCTP ports of forwarded IPs are not forwarded
    /// (and a Service's `ferrolb.io/Announced` says so).
    pub sctp_refused: bool,
}

/// What the collector reads at each scrape; shared with the code that counts.
#[derive(Debug, Default)]
struct Shared {
    interfaces: Mutex<BTreeMap<String, Arc<InterfaceStats>>>,
    gossip: Mutex<Option<Arc<GossipStats>>>,
    forwarding: Mutex<Option<ForwardingStats>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The speaker's metrics, all named `ferrolb_*`. Cheap to share behind an `Arc`.
///
/// | name | type | labels |
/// |---|---|---|
/// | `ferrolb_arp_requests_total`, `ferrolb_arp_replies_total`, `ferrolb_ndp_solicitations_total`, `ferrolb_ndp_advertisements_total`, `ferrolb_gratuitous_arp_sent_total`, `ferrolb_unsolicited_na_sent_total`, `ferrolb_arp_conflicts_total`, `ferrolb_ndp_conflicts_total`, `ferrolb_ownership_changes_total` | counter | `interface` |
/// | `ferrolb_announced_ips` | gauge | `interface` |
/// | `ferrolb_gossip_members` | gauge | `state` (alive, suspect, dead) |
/// | `ferrolb_gossip_dropped_total` | counter | `reason` (unauthenticated, malformed, refused, replayed) |
/// | `ferrolb_gossip_received_total`, `ferrolb_gossip_sent_total`, `ferrolb_gossip_suspicions_total`, `ferrolb_gossip_rivals_total` | counter | |
/// | `ferrolb_forwarded_packets_total`, `ferrolb_forwarded_connections_total`, `ferrolb_forwarding_dropped_packets_total` | counter | `family` |
/// | `ferrolb_forwarded_ips` | gauge | `family` |
/// | `ferrolb_forwarding_loads_total`, `ferrolb_forwarding_errors_total` | counter | |
/// | `ferrolb_forwarding_sctp_refused` | gauge | |
/// | `ferrolb_elections_total`, `ferrolb_status_writes_total`, `ferrolb_status_write_errors_total`, `ferrolb_ownership_disagreements_total` | counter | |
/// | `ferrolb_peers_disagreeing` | gauge | |
/// | `ferrolb_build_info` | gauge, always 1 | `version`, `commit` |
///
/// The gossip series appear once gossip runs, the forwarding ones once forwarding is on.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
    /// Elections run (each round that re-decided something).
    pub elections: Counter,
    /// `ferrolb.io/Announced` writes and their failures.
    pub status_writes: Counter,
    pub status_write_errors: Counter,
    /// Peers whose claims disagreed with this speaker's view past the grace period (each
    /// disagreement once), and how many disagree now.
    pub ownership_disagreements: Counter,
    pub peers_disagreeing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrolb");
        let shared = Arc::new(Shared::default());
        registry.register_collector(Box::new(Scrape(shared.clone())));
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let elections = counter(
            &mut registry,
            "elections",
            "Election rounds that re-decided something",
        );
        let status_writes = counter(
            &mut registry,
            "status_writes",
            "ferrolb.io/Announced conditions written",
        );
        let status_write_errors = counter(
            &mut registry,
            "status_write_errors",
            "ferrolb.io/Announced writes that failed",
        );
        let ownership_disagreements = counter(
            &mut registry,
            "ownership_disagreements",
            "Times a peer's claims (what it announces) disagreed with this speaker's view for longer than the grace period",
        );
        let peers_disagreeing = Gauge::default();
        registry.register(
            "peers_disagreeing",
            "Peers whose claims disagree with this speaker's view now",
            peers_disagreeing.clone(),
        );
        shared::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"), crate::GIT_COMMIT);
        Metrics {
            registry,
            shared,
            elections,
            status_writes,
            status_write_errors,
            ownership_disagreements,
            peers_disagreeing,
        }
    }

    /// The counters of `iface`, created on first use.
    pub fn interface(&self, iface: &str) -> Arc<InterfaceStats> {
        lock(&self.shared.interfaces)
            .entry(iface.to_string())
            .or_default()
            .clone()
    }

    pub fn set_gossip(&self, stats: Arc<GossipStats>) {
        *lock(&self.shared.gossip) = Some(stats);
    }

    /// What forwarding reports now (`None`: forwarding is off).
    pub fn forwarding(&self) -> Option<ForwardingStats> {
        *lock(&self.shared.forwarding)
    }

    /// Changes what forwarding reports.
    pub fn update_forwarding(&self, f: impl FnOnce(&mut ForwardingStats)) {
        f(lock(&self.shared.forwarding).get_or_insert_with(ForwardingStats::default));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        Exposition::encode(&self.registry)
    }
}

impl Exposition for Metrics {
    fn encode(&self) -> Result<String, std::fmt::Error> {
        Metrics::encode(self)
    }
}

/// Reads the atomics at each scrape.
#[derive(Debug)]
struct Scrape(Arc<Shared>);

type Read<T> = fn(&T) -> u64;

fn relaxed(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// One family with one label: a name, a help text, the label's name and one sample per
/// label value.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, sample) in samples {
        let labels = [(label, value)];
        let series = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(sample).encode(series)?,
            _ => ConstGauge::new(sample).encode(series)?,
        }
    }
    Ok(())
}

/// One family without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    sample: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(sample).encode(metric),
        _ => ConstGauge::new(sample).encode(metric),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ifaces: Vec<(String, Arc<InterfaceStats>)> = lock(&self.0.interfaces)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let per_iface: [(&str, MetricType, &str, Read<InterfaceStats>); 10] = [
            (
                "arp_requests",
                MetricType::Counter,
                "ARP requests received, per interface",
                |s| relaxed(&s.arp.requests),
            ),
            (
                "arp_replies",
                MetricType::Counter,
                "ARP replies sent for owned IPs, per interface",
                |s| relaxed(&s.arp.replies),
            ),
            (
                "ndp_solicitations",
                MetricType::Counter,
                "Neighbor Solicitations received, per interface",
                |s| relaxed(&s.ndp.solicitations),
            ),
            (
                "ndp_advertisements",
                MetricType::Counter,
                "Solicited Neighbor Advertisements sent for owned IPs, per interface",
                |s| relaxed(&s.ndp.advertisements),
            ),
            (
                "gratuitous_arp_sent",
                MetricType::Counter,
                "Gratuitous ARP frames sent after taking an IP, per interface",
                |s| relaxed(&s.arp.gratuitous),
            ),
            (
                "unsolicited_na_sent",
                MetricType::Counter,
                "Unsolicited Neighbor Advertisements sent after taking an IP, per interface",
                |s| relaxed(&s.ndp.unsolicited),
            ),
            (
                "arp_conflicts",
                MetricType::Counter,
                "ARP frames from another MAC that claimed an IP this node owns (each re-sends the gratuitous burst, at most once a second per IP), per interface",
                |s| relaxed(&s.arp.conflicts),
            ),
            (
                "ndp_conflicts",
                MetricType::Counter,
                "Neighbor Advertisements from another MAC for an IP this node owns (each re-sends the unsolicited advertisements, at most once a second per IP), per interface",
                |s| relaxed(&s.ndp.conflicts),
            ),
            (
                "ownership_changes",
                MetricType::Counter,
                "IPs this node took or gave up, per interface",
                |s| relaxed(&s.ownership_changes),
            ),
            (
                "announced_ips",
                MetricType::Gauge,
                "IPs this node announces now, per interface",
                |s| relaxed(&s.announced),
            ),
        ];
        for (name, kind, help, read) in per_iface {
            let samples = ifaces.iter().map(|(iface, s)| (iface.as_str(), read(s)));
            family(&mut encoder, name, help, kind, "interface", samples)?;
        }

        let gossip = lock(&self.0.gossip).clone();
        if let Some(g) = gossip {
            family(
                &mut encoder,
                "gossip_members",
                "Gossip peers by SWIM state (this speaker not counted)",
                MetricType::Gauge,
                "state",
                [
                    ("alive", relaxed(&g.peers_alive)),
                    ("suspect", relaxed(&g.peers_suspect)),
                    ("dead", relaxed(&g.peers_down)),
                ],
            )?;
            family(
                &mut encoder,
                "gossip_dropped",
                "Gossip datagrams dropped, by cause",
                MetricType::Counter,
                "reason",
                [
                    ("unauthenticated", relaxed(&g.dropped_unauthenticated)),
                    ("malformed", relaxed(&g.dropped_malformed)),
                    ("refused", relaxed(&g.dropped_refused)),
                    ("replayed", relaxed(&g.dropped_replayed)),
                ],
            )?;
            for (name, help, v) in [
                ("gossip_received", "Gossip datagrams received", &g.received),
                ("gossip_sent", "Gossip datagrams sent", &g.sent),
                (
                    "gossip_suspicions",
                    "Peers suspected of failure (stopped answering probes); a peer that leaves is not suspected",
                    &g.suspicions,
                ),
                (
                    "gossip_rivals",
                    "Times another gossip identity claimed this speaker's node and it took a higher generation to win its name back",
                    &g.rivals,
                ),
            ] {
                single(&mut encoder, name, help, MetricType::Counter, relaxed(v))?;
            }
        }

        let forwarding = *lock(&self.0.forwarding);
        if let Some(f) = forwarding {
            for (name, kind, help, v) in [
                (
                    "forwarded_packets",
                    MetricType::Counter,
                    "Packets to forwarded LoadBalancer IPs handed to a NodePort, per family",
                    f.totals.forwarded,
                ),
                (
                    "forwarded_connections",
                    MetricType::Counter,
                    "New connections to forwarded LoadBalancer IPs handed to a NodePort, per family",
                    f.totals.connections,
                ),
                (
                    "forwarding_dropped_packets",
                    MetricType::Counter,
                    "Packets to forwarded LoadBalancer IPs dropped (a port the Service does not expose, a source outside loadBalancerSourceRanges), per family",
                    f.totals.dropped,
                ),
                (
                    "forwarded_ips",
                    MetricType::Gauge,
                    "Forwarded LoadBalancer IPs this node owns, per family",
                    f.ips,
                ),
            ] {
                let samples = ["IPv4", "IPv6"].into_iter().zip(v);
                family(&mut encoder, name, help, kind, "family", samples)?;
            }
            single(
                &mut encoder,
                "forwarding_loads",
                "Forwarding rulesets loaded into the kernel",
                MetricType::Counter,
                f.loads,
            )?;
            single(
                &mut encoder,
                "forwarding_errors",
                "Forwarding rulesets the kernel (nft) refused or that could not be loaded",
                MetricType::Counter,
                f.errors,
            )?;
            single(
                &mut encoder,
                "forwarding_sctp_refused",
                "1 when this node's kernel refused the SCTP forwarding rules (SCTP ports of forwarded IPs get no traffic; TCP and UDP are forwarded)",
                MetricType::Gauge,
                u64::from(f.sctp_refused),
            )?;
        }
        Ok(())
    }
}

/// What `/readyz` answers. Clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug, Default)]
struct ReadinessState {
    ready: AtomicBool,
    stopping: AtomicBool,
    stale: AtomicBool,
}

impl Readiness {
    /// The caches have synced and the first election was applied.
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Release);
    }

    /// SIGTERM came: not ready from now on, whatever else happens.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::Release);
    }

    /// A watch keeps failing (`true`) or works again: the speaker's view of the cluster
    /// may be old, and it is not ready while it is.
    pub fn set_stale(&self, stale: bool) {
        self.0.stale.store(stale, Ordering::Release);
    }

    /// `Ok` when ready, else why not.
    pub fn state(&self) -> Result<(), &'static str> {
        if self.0.stopping.load(Ordering::Acquire) {
            Err("shutting down")
        } else if self.0.stale.load(Ordering::Acquire) {
            Err("a watch keeps failing: the view of the cluster may be stale")
        } else if self.0.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("waiting for the caches to sync and the first election")
        }
    }
}

impl ReadinessCheck for Readiness {
    fn check(&self, _now: Instant) -> Result<String, String> {
        self.state()
            .map(|()| "caches synced, first election applied".to_string())
            .map_err(str::to_string)
    }
}

/// What the three endpoints answer from.
pub fn endpoints(metrics: Arc<Metrics>, readiness: Readiness, health: Health) -> Endpoints {
    Endpoints {
        metrics,
        readiness: Arc::new(readiness),
        health,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_crds::process::admin::respond;
    use http::Method;
    use std::time::Duration;

    fn text(m: &Metrics) -> String {
        m.encode().expect("the metrics encode")
    }

    #[test]
    fn metrics_show_every_family_per_interface() {
        let m = Metrics::default();
        let eth0 = m.interface("eth0");
        eth0.arp.requests.fetch_add(3, Ordering::Relaxed);
        eth0.ndp.advertisements.fetch_add(2, Ordering::Relaxed);
        eth0.announced.store(5, Ordering::Relaxed);
        m.interface("bond\"0")
            .ownership_changes
            .fetch_add(1, Ordering::Relaxed);
        let g = Arc::new(GossipStats::default());
        g.dropped_unauthenticated.fetch_add(7, Ordering::Relaxed);
        g.dropped_replayed.fetch_add(4, Ordering::Relaxed);
        g.peers_alive.store(2, Ordering::Relaxed);
        m.set_gossip(g);
        m.elections.inc();
        m.peers_disagreeing.set(1);
        let text = text(&m);
        for line in [
            "ferrolb_arp_requests_total{interface=\"eth0\"} 3",
            "ferrolb_ndp_advertisements_total{interface=\"eth0\"} 2",
            "ferrolb_announced_ips{interface=\"eth0\"} 5",
            "ferrolb_ownership_changes_total{interface=\"bond\\\"0\"} 1",
            "ferrolb_gossip_dropped_total{reason=\"unauthenticated\"} 7",
            "ferrolb_gossip_dropped_total{reason=\"replayed\"} 4",
            "ferrolb_gossip_members{state=\"alive\"} 2",
            "ferrolb_gossip_members{state=\"dead\"} 0",
            "ferrolb_gossip_received_total 0",
            "# TYPE ferrolb_gratuitous_arp_sent counter",
            "# TYPE ferrolb_announced_ips gauge",
            "ferrolb_elections_total 1",
            "ferrolb_status_write_errors_total 0",
            "ferrolb_peers_disagreeing 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let build_info = format!(
            "ferrolb_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        assert!(
            text.lines().any(|l| l == build_info),
            "missing {build_info:?} in\n{text}"
        );
        // The same interface hands out the same counters.
        assert_eq!(m.interface("eth0").arp.requests.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn without_gossip_or_forwarding_their_series_are_absent() {
        let text = text(&Metrics::default());
        assert!(!text.contains("ferrolb_gossip"), "{text}");
        assert!(!text.contains("ferrolb_forward"), "{text}");
        assert!(
            text.contains("# TYPE ferrolb_arp_requests counter"),
            "{text}"
        );
    }

    #[test]
    fn forwarding_metrics_appear_once_forwarding_is_on() {
        let m = Metrics::default();
        assert_eq!(m.forwarding(), None);
        m.update_forwarding(|f| {
            *f = ForwardingStats {
                totals: crate::forwarding::kernel::Counters {
                    forwarded: [40, 7],
                    dropped: [3, 0],
                    connections: [5, 1],
                },
                ips: [2, 1],
                loads: 4,
                errors: 1,
                sctp_refused: true,
            }
        });
        let text = text(&m);
        for line in [
            "ferrolb_forwarded_packets_total{family=\"IPv4\"} 40",
            "ferrolb_forwarded_packets_total{family=\"IPv6\"} 7",
            "ferrolb_forwarded_connections_total{family=\"IPv4\"} 5",
            "ferrolb_forwarding_dropped_packets_total{family=\"IPv4\"} 3",
            "ferrolb_forwarded_ips{family=\"IPv6\"} 1",
            "# TYPE ferrolb_forwarded_ips gauge",
            "ferrolb_forwarding_loads_total 4",
            "ferrolb_forwarding_errors_total 1",
            "ferrolb_forwarding_sctp_refused 1",
            "# TYPE ferrolb_forwarding_sctp_refused gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn the_endpoints_answer_from_the_speakers_state() {
        let r = Readiness::default();
        let h = Health::new();
        let e = endpoints(Arc::new(Metrics::default()), r.clone(), h.clone());
        assert_eq!(respond(&Method::GET, "/healthz", &e).status(), 200);
        assert_eq!(respond(&Method::GET, "/readyz", &e).status(), 503);
        r.set_ready();
        assert_eq!(respond(&Method::GET, "/readyz", &e).status(), 200);
        assert_eq!(respond(&Method::GET, "/metrics", &e).status(), 200);
        let watch = h.register(
            "Node watch",
            ferrolb_crds::health::Limits::calling_api(Some(Duration::from_secs(900))),
        );
        watch.ended();
        assert_eq!(respond(&Method::GET, "/healthz", &e).status(), 503);
    }

    #[test]
    fn a_stale_view_is_not_ready_until_fresh_again() {
        let r = Readiness::default();
        r.set_ready();
        r.set_stale(true);
        assert_eq!(
            ReadinessCheck::check(&r, Instant::now()),
            Err("a watch keeps failing: the view of the cluster may be stale".to_string())
        );
        r.set_stale(false);
        assert_eq!(r.state(), Ok(()));
    }

    #[test]
    fn readiness_ends_for_good_at_sigterm() {
        let r = Readiness::default();
        r.set_stopping();
        r.set_ready();
        assert_eq!(r.state(), Err("shutting down"));
    }
}
