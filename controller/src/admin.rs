//! The controller's admin port: `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1.
//!
//! This module owns the metric definitions ([`Metrics`]), what the probes answer, and the
//! small server that exposes them. It does not update metrics itself (the allocator,
//! reconcile and leader election report through [`Metrics`]' methods), nor watch anything:
//!
//! - `/readyz` ([`Readiness`], decided by [`readiness`]): ready when this replica leads and
//!   has rebuilt its allocations from Service status (so its caches have synced), or when
//!   another replica holds a valid Lease (a ready standby). Not ready while starting, while
//!   a new leader restores, while nobody leads, and from SIGTERM on.
//! - `/healthz` ([`Health`]): 503, naming what is stuck, once a component the process needs
//!   can no longer make progress (see `ferrolb_crds::health` and `app`'s `--healthz-*`
//!   flags for the bounds).
//!
//! The server listens on every address of both families by default: one `[::]` socket
//! with `IPV6_V6ONLY` off, so kubelet's probes reach it on an IPv4, IPv6 or dual-stack pod.
//!
//! `/metrics` is the OpenMetrics text format that `prometheus-client` writes; Prometheus
//! scrapes it as such (the response says so in its `Content-Type`).

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrolb_crds::Family;
use ferrolb_crds::health::Health;
use ferrolb_crds::names::AllocationReason;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::leader::{LeaderHandle, Role};

/// The `Content-Type` of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin port when `--admin-address` is not given.
pub const DEFAULT_PORT: u16 = 7472;

/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Allocation latency buckets, in seconds: allocation is in memory (sub-millisecond) but
/// the measured span may include an API round trip.
const ALLOCATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin server: cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server: cannot read the address it listens on")]
    LocalAddr(#[source] std::io::Error),
    #[error("encoding the metrics failed")]
    Encode(#[from] std::fmt::Error),
}

/// Labels of the per-pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
}

/// Labels of `ferrolb_allocations_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllocationLabels {
    /// An [`AllocationReason`] name, as in the Service's `ferrolb.io/IPAllocated` condition.
    pub result: &'static str,
}

/// Labels of `ferrolb_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfoLabels {
    pub version: &'static str,
    pub commit: &'static str,
}

/// An `f64` gauge: pool sizes do not fit an integer (an IPv6 /64 holds 2^64 addresses,
/// one more than `u64::MAX`).
type F64Gauge = Gauge<f64, AtomicU64>;

/// The controller's metrics, all named `ferrolb_*`. Cheap to share behind an `Arc`.
///
/// | name | type | labels |
/// |---|---|---|
/// | `ferrolb_pool_capacity_addresses` | gauge (f64) | `pool`, `family` |
/// | `ferrolb_pool_used_addresses` | gauge (f64) | `pool`, `family` |
/// | `ferrolb_allocations_total` | counter | `result` |
/// | `ferrolb_reconcile_errors_total` | counter | |
/// | `ferrolb_allocation_duration_seconds` | histogram | |
/// | `ferrolb_leader` | gauge | |
/// | `ferrolb_build_info` | gauge, always 1 | `version`, `commit` |
///
/// The pool gauges are `f64` because an IPv6 pool can hold more than `u64::MAX` addresses
/// (a /64 holds 2^64): exact up to 2^53, the nearest representable value beyond. Exact
/// counts are in the IPPool's status.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pool_capacity: MetricFamily<PoolLabels, F64Gauge>,
    pool_used: MetricFamily<PoolLabels, F64Gauge>,
    allocations: MetricFamily<AllocationLabels, Counter>,
    reconcile_errors: Counter,
    allocation_duration: Histogram,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferrolb");
        let pool_capacity = MetricFamily::<PoolLabels, F64Gauge>::default();
        registry.register(
            "pool_capacity_addresses",
            "Addresses a pool holds, per family (f64: IPv6 pools exceed u64; exact counts are in the IPPool status)",
            pool_capacity.clone(),
        );
        let pool_used = MetricFamily::<PoolLabels, F64Gauge>::default();
        registry.register(
            "pool_used_addresses",
            "Addresses of a pool allocated to Services, per family",
            pool_used.clone(),
        );
        let allocations = MetricFamily::<AllocationLabels, Counter>::default();
        registry.register(
            "allocations",
            "Allocation attempts by result (the reason of the ferrolb.io/IPAllocated condition)",
            allocations.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were requeued",
            reconcile_errors.clone(),
        );
        let allocation_duration = Histogram::new(ALLOCATION_BUCKETS);
        registry.register_with_unit(
            "allocation_duration",
            "Time to decide an allocation for a Service",
            Unit::Seconds,
            allocation_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 when this replica holds the leader lease, else 0",
            leader.clone(),
        );
        let build_info = MetricFamily::<BuildInfoLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildInfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::GIT_COMMIT,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which build runs",
            build_info,
        );
        // Every result shows up from the first scrape, at zero, so rates work at once.
        for reason in AllocationReason::ALL {
            drop(allocations.get_or_create(&AllocationLabels {
                result: reason.as_str(),
            }));
        }
        Metrics {
            registry,
            pool_capacity,
            pool_used,
            allocations,
            reconcile_errors,
            allocation_duration,
            leader,
        }
    }

    /// Sets a pool's size and usage for one family.
    pub fn set_pool_usage(&self, pool: &str, family: Family, capacity: u128, used: u128) {
        let labels = PoolLabels {
            pool: pool.to_string(),
            family: family.k8s_name(),
        };
        // Precision loss above 2^53 is accepted; see the type's documentation.
        self.pool_capacity
            .get_or_create(&labels)
            .set(capacity as f64);
        self.pool_used.get_or_create(&labels).set(used as f64);
    }

    /// Drops a pool's series (the pool was deleted, or no longer has that family).
    pub fn forget_pool_family(&self, pool: &str, family: Family) {
        let labels = PoolLabels {
            pool: pool.to_string(),
            family: family.k8s_name(),
        };
        self.pool_capacity.remove(&labels);
        self.pool_used.remove(&labels);
    }

    /// Drops all of a pool's series.
    pub fn forget_pool(&self, pool: &str) {
        for family in [Family::V4, Family::V6] {
            self.forget_pool_family(pool, family);
        }
    }

    /// Counts one allocation attempt and its result.
    pub fn count_allocation(&self, result: AllocationReason) {
        self.allocations
            .get_or_create(&AllocationLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Records how long one allocation took.
    pub fn observe_allocation_duration(&self, took: Duration) {
        self.allocation_duration.observe(took.as_secs_f64());
    }

    /// Counts one failed reconcile.
    pub fn count_reconcile_error(&self) {
        self.reconcile_errors.inc();
    }

    /// Sets `ferrolb_leader`.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> Result<String, AdminError> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Whether this replica is ready (`Ok`, with what `/readyz` says) or why not: `role` is who
/// leads as this replica sees it, `restored` whether its controller loop has rebuilt the
/// allocations from Service status in this term, `stopping` whether SIGTERM came.
pub fn readiness(role: &Role, restored: bool, stopping: bool) -> Result<String, String> {
    if stopping {
        return Err("shutting down".into());
    }
    match role {
        Role::Leading if restored => Ok("leading".into()),
        Role::Leading => Err("leading; rebuilding the allocations from Service status".into()),
        Role::StandingBy { holder } => Ok(format!("standing by; {holder} leads")),
        Role::NoLeader => Err("no replica holds a valid lease".into()),
    }
}

/// What `/readyz` asks ([`readiness`]): the elector, and the two flags the process sets.
/// Clones share one state.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug, Default)]
struct ReadinessState {
    /// `None`: a single writer without election, which counts as leading.
    leader: Option<LeaderHandle>,
    restored: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn new(leader: Option<LeaderHandle>) -> Self {
        Readiness(Arc::new(ReadinessState {
            leader,
            ..ReadinessState::default()
        }))
    }

    /// The controller loop of this term has (or has not yet) rebuilt the allocations.
    pub fn set_restored(&self, restored: bool) {
        self.0.restored.store(restored, Ordering::Release);
    }

    /// SIGTERM came: not ready from now on.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::Release);
    }

    /// [`readiness`] at `now`.
    pub fn check(&self, now: Instant) -> Result<String, String> {
        let role = self
            .0
            .leader
            .as_ref()
            .map_or(Role::Leading, |l| l.role_at(now));
        readiness(
            &role,
            self.0.restored.load(Ordering::Acquire),
            self.0.stopping.load(Ordering::Acquire),
        )
    }
}

/// Answers one admin request. Only `GET` and `HEAD` are served.
pub fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    readiness: &Readiness,
    health: &Health,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
    }
    match path {
        "/healthz" => {
            let stuck = health.check();
            if stuck.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                let body: String = stuck.iter().map(|p| format!("stuck: {p}\n")).collect();
                response(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        }
        "/readyz" => match readiness.check(Instant::now()) {
            Ok(why) => response(StatusCode::OK, TEXT, format!("ready: {why}\n")),
            Err(why) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match metrics.encode() {
            Ok(body) => response(StatusCode::OK, METRICS_CONTENT_TYPE, body),
            Err(e) => {
                warn!(error = %e, "cannot encode metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
            }
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(status, TEXT, body)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

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
fn listen_on(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `listen`; see [`Listen`].
fn bind_listener(listen: Listen) -> Result<TcpListener, AdminError> {
    let bind = |addr: SocketAddr| {
        listen_on(addr)
            .and_then(TcpListener::from_std)
            .map_err(|source| AdminError::Bind { addr, source })
    };
    match listen {
        Listen::Address(addr) => bind(addr),
        Listen::AllFamilies(port) => {
            let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match bind(any6) {
                Err(AdminError::Bind { source, .. }) if no_ipv6(&source) => {
                    info!(error = %source, "admin server: no IPv6 on this host; listening on IPv4 only");
                    bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                }
                other => other,
            }
        }
    }
}

/// The errors of a host without IPv6 (a kernel without it, or IPv6 switched off).
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// The admin server, bound and ready to serve.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    health: Health,
}

impl AdminServer {
    /// Binds (port 0 picks a free port; see [`AdminServer::local_addr`]). Needs a Tokio
    /// runtime.
    pub fn bind(
        listen: Listen,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        health: Health,
    ) -> Result<Self, AdminError> {
        let listener = bind_listener(listen)?;
        let local_addr = listener.local_addr().map_err(AdminError::LocalAddr)?;
        Ok(AdminServer {
            listener,
            local_addr,
            metrics,
            readiness,
            health,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires, then stops accepting, lets open connections finish
    /// their current request (for up to five seconds) and returns.
    pub async fn serve(self, cancel: CancellationToken) -> Result<(), AdminError> {
        info!(addr = %self.local_addr, "admin server listening");
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = Arc::clone(&self.metrics);
            let readiness = self.readiness.clone();
            let health = self.health.clone();
            let cancel = cancel.clone();
            connections.spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = respond(
                        request.method(),
                        request.uri().path(),
                        &metrics,
                        &readiness,
                        &health,
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = cancel.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = served {
                    debug!(error = %e, "admin server: connection ended with an error");
                }
            });
        }
        drop(self.listener);
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            warn!("admin server: connections still open after the grace period; dropping them");
        }
        info!(addr = %self.local_addr, "admin server stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One HTTP/1.1 request over a fresh connection; returns (status, raw response).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {raw:?}"));
        (status, raw)
    }

    type Started = (
        SocketAddr,
        Arc<Metrics>,
        Readiness,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), AdminError>>,
    );

    async fn start() -> Started {
        start_with(
            Listen::Address("127.0.0.1:0".parse().unwrap()),
            Health::new(),
        )
        .await
    }

    async fn start_with(listen: Listen, health: Health) -> Started {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(None);
        let server =
            AdminServer::bind(listen, Arc::clone(&metrics), readiness.clone(), health).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));
        (addr, metrics, readiness, cancel, task)
    }

    #[tokio::test]
    async fn healthz_answers_while_the_process_runs() {
        let (addr, _metrics, _ready, cancel, task) = start().await;
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200, "{body}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn healthz_fails_naming_what_is_stuck() {
        let health = Health::new();
        let (addr, _metrics, _ready, cancel, task) = start_with(
            Listen::Address("127.0.0.1:0".parse().unwrap()),
            health.clone(),
        )
        .await;
        let watch = health.register(
            "Service watch",
            ferrolb_crds::health::Limits::calling_api(Some(Duration::from_secs(300))),
        );
        assert_eq!(get(addr, "/healthz").await.0, 200);
        watch.ended();
        let (status, raw) = get(addr, "/healthz").await;
        assert_eq!(status, 503, "{raw}");
        assert!(
            raw.ends_with("stuck: Service watch: has stopped\n"),
            "{raw}"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readyz_follows_the_restore_and_shutdown() {
        let (addr, _metrics, ready, cancel, task) = start().await;
        let (status, raw) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(raw.contains("rebuilding the allocations"), "{raw}");
        ready.set_restored(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        ready.set_stopping();
        let (status, raw) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(raw.ends_with("not ready: shutting down\n"), "{raw}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn ready_when_leading_and_restored_or_standing_by_a_valid_holder() {
        let standby = Role::StandingBy {
            holder: "replica-a".into(),
        };
        assert!(readiness(&Role::Leading, true, false).is_ok());
        assert!(
            readiness(&Role::Leading, false, false).is_err(),
            "still restoring"
        );
        assert_eq!(
            readiness(&standby, false, false),
            Ok("standing by; replica-a leads".into())
        );
        assert!(readiness(&Role::NoLeader, false, false).is_err());
        assert!(readiness(&Role::NoLeader, true, false).is_err());
        for role in [Role::Leading, standby, Role::NoLeader] {
            assert!(
                readiness(&role, true, true).is_err(),
                "{role:?} after SIGTERM"
            );
        }
    }

    #[tokio::test]
    async fn the_default_listener_answers_on_ipv4_and_ipv6_loopback() {
        let (addr, _metrics, _ready, cancel, task) =
            start_with(Listen::AllFamilies(0), Health::new()).await;
        let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
        if addr.is_ipv4() {
            assert!(!v6, "fell back to IPv4 although this host has IPv6");
        }
        let mut targets = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))];
        if v6 {
            targets.push(SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())));
        } else {
            eprintln!("no IPv6 on this host: only 127.0.0.1 checked");
        }
        for target in targets {
            let (status, body) = get(target, "/healthz").await;
            assert_eq!(status, 200, "{target}: {body}");
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn metrics_lists_every_ferrolb_metric() {
        let (addr, metrics, _ready, cancel, task) = start().await;
        metrics.set_pool_usage("lan", Family::V4, 51, 3);
        metrics.set_pool_usage("lan", Family::V6, 1 << 64, 1);
        metrics.count_allocation(AllocationReason::PoolExhausted);
        metrics.count_reconcile_error();
        metrics.observe_allocation_duration(Duration::from_micros(300));
        metrics.set_leader(true);

        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("application/openmetrics-text"), "{body}");
        for needle in [
            r#"ferrolb_pool_capacity_addresses{pool="lan",family="IPv4"} 51.0"#,
            r#"ferrolb_pool_used_addresses{pool="lan",family="IPv4"} 3.0"#,
            r#"ferrolb_allocations_total{result="PoolExhausted"} 1"#,
            r#"ferrolb_allocations_total{result="Allocated"} 0"#,
            "ferrolb_reconcile_errors_total 1",
            "ferrolb_allocation_duration_seconds_count 1",
            r#"ferrolb_allocation_duration_seconds_bucket{le="0.0005"} 1"#,
            "ferrolb_leader 1",
            "# EOF",
        ] {
            assert!(body.contains(needle), "{needle:?} missing from:\n{body}");
        }
        let build_info = format!(
            r#"ferrolb_build_info{{version="{}",commit="{}"}} 1"#,
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        assert!(
            body.contains(&build_info),
            "{build_info} missing from:\n{body}"
        );
        // 2^64 does not fit a u64 gauge; as f64 it is exact (a power of two).
        let v6_capacity: f64 = body
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"ferrolb_pool_capacity_addresses{pool="lan",family="IPv6"} "#)
            })
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(v6_capacity, 2f64.powi(64));
        for reason in AllocationReason::ALL {
            let series = format!(
                r#"ferrolb_allocations_total{{result="{}"}}"#,
                reason.as_str()
            );
            assert!(body.contains(&series), "{series} missing");
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused() {
        let (addr, _metrics, _ready, cancel, task) = start().await;
        assert_eq!(get(addr, "/nope").await.0, 404);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_server_stops_on_cancel_and_frees_its_port() {
        let (addr, _metrics, _ready, cancel, task) = start().await;
        // An idle keep-alive connection must not hold shutdown up.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the server stops after cancel")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "nothing listens any more"
        );
    }

    #[test]
    fn forgetting_a_pool_drops_its_series() {
        let metrics = Metrics::new();
        metrics.set_pool_usage("gone", Family::V4, 10, 1);
        assert!(metrics.encode().unwrap().contains(r#"pool="gone""#));
        metrics.forget_pool("gone");
        assert!(!metrics.encode().unwrap().contains(r#"pool="gone""#));
    }
}
