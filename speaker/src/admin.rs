//! The speaker's admin port: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).
//!
//! The counters live where the work happens (responders, membership); this module only
//! holds them by interface and renders them. Per-interface counters survive a responder
//! restart, so they only ever grow.
//!
//! `/readyz` follows [`Readiness`], which the process sets once its caches have synced and
//! its first election was applied, and clears for good at SIGTERM. `/healthz` answers 503,
//! naming what is stuck, once [`Health`] finds a component that can no longer make
//! progress (the bounds are the `--healthz-*` flags). The server listens on every address
//! of both families by default: one `[::]` socket with `IPV6_V6ONLY` off.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrolb_crds::health::Health;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::membership::Stats as GossipStats;
use crate::responder::arp::ArpStats;
use crate::responder::ndp::NdpStats;

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

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct Metrics {
    interfaces: Mutex<BTreeMap<String, Arc<InterfaceStats>>>,
    gossip: Mutex<Option<Arc<GossipStats>>>,
    /// Elections run (each a full recompute).
    pub elections: AtomicU64,
    /// `ferrolb.io/Announced` writes and their failures.
    pub status_writes: AtomicU64,
    pub status_write_errors: AtomicU64,
    /// Peers whose claims disagreed with this speaker's view past the grace period (each
    /// disagreement once), and how many disagree now.
    pub ownership_disagreements: AtomicU64,
    pub peers_disagreeing: AtomicU64,
    /// NodePort forwarding, when it is on.
    pub forwarding: Mutex<Option<ForwardingStats>>,
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

impl Metrics {
    /// The counters of `iface`, created on first use.
    pub fn interface(&self, iface: &str) -> Arc<InterfaceStats> {
        let mut map = self
            .interfaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(iface.to_string()).or_default().clone()
    }

    pub fn set_gossip(&self, stats: Arc<GossipStats>) {
        *self
            .gossip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let ifaces: Vec<(String, Arc<InterfaceStats>)> = self
            .interfaces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferrolb_build_info Always 1; the labels say which build runs."
        );
        let _ = writeln!(out, "# TYPE ferrolb_build_info gauge");
        let _ = writeln!(
            out,
            "ferrolb_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            escape(crate::GIT_COMMIT)
        );
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&InterfaceStats) -> u64,
        );
        let per_iface: [Family; 10] = [
            (
                "ferrolb_arp_requests_total",
                "counter",
                "ARP requests received",
                |s| s.arp.requests.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_arp_replies_total",
                "counter",
                "ARP replies sent for owned IPs",
                |s| s.arp.replies.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_ndp_solicitations_total",
                "counter",
                "Neighbor Solicitations received",
                |s| s.ndp.solicitations.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_ndp_advertisements_total",
                "counter",
                "Solicited Neighbor Advertisements sent for owned IPs",
                |s| s.ndp.advertisements.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_gratuitous_arp_sent_total",
                "counter",
                "Gratuitous ARP frames sent after taking an IP",
                |s| s.arp.gratuitous.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_unsolicited_na_sent_total",
                "counter",
                "Unsolicited Neighbor Advertisements sent after taking an IP",
                |s| s.ndp.unsolicited.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_arp_conflicts_total",
                "counter",
                "ARP frames from another MAC that claimed an IP this node owns (each re-sends the gratuitous burst, at most once a second per IP)",
                |s| s.arp.conflicts.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_ndp_conflicts_total",
                "counter",
                "Neighbor Advertisements from another MAC for an IP this node owns (each re-sends the unsolicited advertisements, at most once a second per IP)",
                |s| s.ndp.conflicts.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_ownership_changes_total",
                "counter",
                "IPs this node took or gave up",
                |s| s.ownership_changes.load(Ordering::Relaxed),
            ),
            (
                "ferrolb_announced_ips",
                "gauge",
                "IPs this node announces now",
                |s| s.announced.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, get) in per_iface {
            let _ = writeln!(out, "# HELP {name} {help}, per interface.");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (iface, s) in &ifaces {
                let _ = writeln!(out, "{name}{{interface=\"{}\"}} {}", escape(iface), get(s));
            }
        }
        let gossip = self
            .gossip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(g) = gossip {
            let _ = writeln!(
                out,
                "# HELP ferrolb_gossip_members Gossip peers by SWIM state (this speaker not counted)."
            );
            let _ = writeln!(out, "# TYPE ferrolb_gossip_members gauge");
            for (state, v) in [
                ("alive", &g.peers_alive),
                ("suspect", &g.peers_suspect),
                ("dead", &g.peers_down),
            ] {
                let _ = writeln!(
                    out,
                    "ferrolb_gossip_members{{state=\"{state}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
            let _ = writeln!(
                out,
                "# HELP ferrolb_gossip_dropped_total Gossip datagrams dropped, by cause."
            );
            let _ = writeln!(out, "# TYPE ferrolb_gossip_dropped_total counter");
            for (reason, v) in [
                ("unauthenticated", &g.dropped_unauthenticated),
                ("malformed", &g.dropped_malformed),
                ("refused", &g.dropped_refused),
            ] {
                let _ = writeln!(
                    out,
                    "ferrolb_gossip_dropped_total{{reason=\"{reason}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
            for (name, help, v) in [
                (
                    "ferrolb_gossip_received_total",
                    "Gossip datagrams received.",
                    &g.received,
                ),
                (
                    "ferrolb_gossip_sent_total",
                    "Gossip datagrams sent.",
                    &g.sent,
                ),
                (
                    "ferrolb_gossip_suspicions_total",
                    "Peers suspected of failure (stopped answering probes); a peer that leaves is not suspected.",
                    &g.suspicions,
                ),
                (
                    "ferrolb_gossip_rivals_total",
                    "Times another gossip identity claimed this speaker's node and it took a higher generation to win its name back.",
                    &g.rivals,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
            }
        }
        let fwd = *self
            .forwarding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = fwd {
            for (name, kind, help, v) in [
                (
                    "ferrolb_forwarded_packets_total",
                    "counter",
                    "Packets to forwarded LoadBalancer IPs handed to a NodePort, per family.",
                    f.totals.forwarded,
                ),
                (
                    "ferrolb_forwarded_connections_total",
                    "counter",
                    "New connections to forwarded LoadBalancer IPs handed to a NodePort, per family.",
                    f.totals.connections,
                ),
                (
                    "ferrolb_forwarding_dropped_packets_total",
                    "counter",
                    "Packets to forwarded LoadBalancer IPs dropped (a port the Service does not expose, a source outside loadBalancerSourceRanges), per family.",
                    f.totals.dropped,
                ),
                (
                    "ferrolb_forwarded_ips",
                    "gauge",
                    "Forwarded LoadBalancer IPs this node owns, per family.",
                    f.ips,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (family, value) in ["IPv4", "IPv6"].iter().zip(v) {
                    let _ = writeln!(out, "{name}{{family=\"{family}\"}} {value}");
                }
            }
            for (name, help, v) in [
                (
                    "ferrolb_forwarding_loads_total",
                    "Forwarding rulesets loaded into the kernel.",
                    f.loads,
                ),
                (
                    "ferrolb_forwarding_errors_total",
                    "Forwarding rulesets the kernel (nft) refused or that could not be loaded.",
                    f.errors,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name} {v}");
            }
            let name = "ferrolb_forwarding_sctp_refused";
            let _ = writeln!(
                out,
                "# HELP {name} 1 when this node's kernel refused the SCTP forwarding rules (SCTP ports of forwarded IPs get no traffic; TCP and UDP are forwarded)."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", u8::from(f.sctp_refused));
        }
        for (name, help, v) in [
            (
                "ferrolb_elections_total",
                "Elections run (full recomputes).",
                &self.elections,
            ),
            (
                "ferrolb_status_writes_total",
                "ferrolb.io/Announced conditions written.",
                &self.status_writes,
            ),
            (
                "ferrolb_status_write_errors_total",
                "ferrolb.io/Announced writes that failed.",
                &self.status_write_errors,
            ),
            (
                "ferrolb_ownership_disagreements_total",
                "Times a peer's claims (what it announces) disagreed with this speaker's view for longer than the grace period.",
                &self.ownership_disagreements,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        let name = "ferrolb_peers_disagreeing";
        let _ = writeln!(
            out,
            "# HELP {name} Peers whose claims disagree with this speaker's view now."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(
            out,
            "{name} {}",
            self.peers_disagreeing.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
    pub fn check(&self) -> Result<(), &'static str> {
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

fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    ready: &Readiness,
    health: &Health,
) -> Response<Full<Bytes>> {
    let (status, ctype, body): (StatusCode, &'static str, Bytes) =
        if method != Method::GET && method != Method::HEAD {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                Bytes::from_static(b"only GET and HEAD are served\n"),
            )
        } else {
            match path {
                "/healthz" => {
                    let stuck = health.check();
                    if stuck.is_empty() {
                        (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n"))
                    } else {
                        let body: String = stuck.iter().map(|p| format!("stuck: {p}\n")).collect();
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            Bytes::from(body),
                        )
                    }
                }
                "/readyz" => match ready.check() {
                    Ok(()) => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        Bytes::from(format!("not ready: {why}\n")),
                    ),
                },
                "/metrics" => (
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(metrics.render()),
                ),
                _ => (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    Bytes::from_static(b"not found: try /healthz, /readyz or /metrics\n"),
                ),
            }
        };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

/// The admin port when `--admin-address` is not given.
pub const DEFAULT_PORT: u16 = 7473;

/// Where the admin server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// Every address of both families on this port: one `[::]` socket with `IPV6_V6ONLY`
    /// off, or `0.0.0.0` when the host has no IPv6.
    AllFamilies(u16),
    /// Exactly this address (an unspecified IPv6 one accepts IPv4 too).
    Address(SocketAddr),
}

impl Listen {
    /// `--admin-address` as given, else every address on [`DEFAULT_PORT`].
    pub fn from_flag(addr: Option<SocketAddr>) -> Listen {
        addr.map_or(Listen::AllFamilies(DEFAULT_PORT), Listen::Address)
    }
}

/// A listening socket on `addr`; an unspecified IPv6 address takes IPv4 connections too,
/// whatever `net.ipv6.bindv6only` says.
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Binds the admin server (see [`Listen`]); serving starts with [`serve`]. Needs a Tokio
/// runtime.
pub fn bind(listen: Listen) -> Result<TcpListener, String> {
    let bind = |addr: SocketAddr| {
        listen_on(addr).map_err(|e| (e, format!("admin server: cannot listen on {addr}")))
    };
    let bound = match listen {
        Listen::Address(addr) => bind(addr),
        Listen::AllFamilies(port) => match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
            // The errors of a host without IPv6 (a kernel without it, or IPv6 switched off).
            Err((e, _))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
                ) =>
            {
                info!(error = %e, "admin server: no IPv6 on this host; listening on IPv4 only");
                bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            }
            other => other,
        },
    };
    bound.map_err(|(e, what)| format!("{what}: {e}"))
}

/// Serves the admin endpoints until `cancel`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    health: Health,
    cancel: CancellationToken,
) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "admin server listening");
    }
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(%e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        let health = health.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = respond(req.method(), req.uri().path(), &metrics, &ready, &health);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(%e, "admin connection") },
                _ = cancel.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        g.peers_alive.store(2, Ordering::Relaxed);
        m.set_gossip(g);
        let text = m.render();
        for line in [
            "ferrolb_arp_requests_total{interface=\"eth0\"} 3",
            "ferrolb_ndp_advertisements_total{interface=\"eth0\"} 2",
            "ferrolb_announced_ips{interface=\"eth0\"} 5",
            "ferrolb_ownership_changes_total{interface=\"bond\\\"0\"} 1",
            "ferrolb_gossip_dropped_total{reason=\"unauthenticated\"} 7",
            "ferrolb_gossip_members{state=\"alive\"} 2",
            "ferrolb_gossip_members{state=\"dead\"} 0",
            "# TYPE ferrolb_gratuitous_arp_sent_total counter",
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
    fn forwarding_metrics_appear_once_forwarding_is_on() {
        let m = Metrics::default();
        assert!(!m.render().contains("ferrolb_forwarded"), "off: no series");
        *m.forwarding.lock().unwrap() = Some(ForwardingStats {
            totals: crate::forwarding::kernel::Counters {
                forwarded: [40, 7],
                dropped: [3, 0],
                connections: [5, 1],
            },
            ips: [2, 1],
            loads: 4,
            errors: 1,
            sctp_refused: true,
        });
        let text = m.render();
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
    fn endpoints_answer_and_refuse() {
        let m = Metrics::default();
        let r = Readiness::default();
        let h = Health::new();
        assert_eq!(respond(&Method::GET, "/healthz", &m, &r, &h).status(), 200);
        assert_eq!(respond(&Method::GET, "/readyz", &m, &r, &h).status(), 503);
        r.set_ready();
        assert_eq!(respond(&Method::GET, "/readyz", &m, &r, &h).status(), 200);
        assert_eq!(respond(&Method::GET, "/metrics", &m, &r, &h).status(), 200);
        assert_eq!(respond(&Method::POST, "/metrics", &m, &r, &h).status(), 405);
        assert_eq!(respond(&Method::GET, "/nope", &m, &r, &h).status(), 404);
    }

    #[test]
    fn a_stale_view_is_not_ready_until_fresh_again() {
        let r = Readiness::default();
        r.set_ready();
        r.set_stale(true);
        assert_eq!(
            r.check(),
            Err("a watch keeps failing: the view of the cluster may be stale")
        );
        r.set_stale(false);
        assert_eq!(r.check(), Ok(()));
    }

    #[test]
    fn readiness_ends_for_good_at_sigterm() {
        let r = Readiness::default();
        r.set_stopping();
        r.set_ready();
        assert_eq!(r.check(), Err("shutting down"));
    }

    #[test]
    fn healthz_names_what_is_stuck() {
        let (m, r, h) = (Metrics::default(), Readiness::default(), Health::new());
        let watch = h.register(
            "Node watch",
            ferrolb_crds::health::Limits::calling_api(Some(Duration::from_secs(900))),
        );
        watch.ended();
        let resp = respond(&Method::GET, "/healthz", &m, &r, &h);
        assert_eq!(resp.status(), 503);
        let body = futures::executor::block_on(http_body_util::BodyExt::collect(resp.into_body()))
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"stuck: Node watch: has stopped\n");
    }

    #[tokio::test]
    async fn the_default_listener_answers_on_ipv4_and_ipv6_loopback() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind(Listen::AllFamilies(0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            Readiness::default(),
            Health::new(),
            cancel.clone(),
        ));
        let mut targets = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            targets.push(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        } else {
            eprintln!("no IPv6 on this host: only 127.0.0.1 checked");
        }
        for target in targets {
            let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).await.unwrap();
            assert!(raw.starts_with("HTTP/1.1 200"), "{target}: {raw}");
        }
        cancel.cancel();
        server.await.unwrap();
    }
}
