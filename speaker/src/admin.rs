//! The speaker's admin port: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).
//!
//! The counters live where the work happens (responders, membership); this module only
//! holds them by interface and renders them. Per-interface counters survive a responder
//! restart, so they only ever grow.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
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
        let per_iface: [Family; 8] = [
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
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} counter");
                let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
            }
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
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Flipped to ready once the speaker has synced its caches and joined gossip.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    ready: &Readiness,
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
                "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
                "/readyz" if ready.get() => {
                    (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
                }
                "/readyz" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    Bytes::from_static(b"not ready\n"),
                ),
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

/// Binds the admin server; serving starts with [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("admin server: cannot listen on {addr}: {e}"))
}

/// Serves the admin endpoints until `cancel`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
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
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = respond(req.method(), req.uri().path(), &metrics, &ready);
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
    fn endpoints_answer_and_refuse() {
        let m = Metrics::default();
        let r = Readiness::default();
        assert_eq!(respond(&Method::GET, "/healthz", &m, &r).status(), 200);
        assert_eq!(respond(&Method::GET, "/readyz", &m, &r).status(), 503);
        r.set(true);
        assert_eq!(respond(&Method::GET, "/readyz", &m, &r).status(), 200);
        assert_eq!(respond(&Method::GET, "/metrics", &m, &r).status(), 200);
        assert_eq!(respond(&Method::POST, "/metrics", &m, &r).status(), 405);
        assert_eq!(respond(&Method::GET, "/nope", &m, &r).status(), 404);
    }
}
