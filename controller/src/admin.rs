//! What the controller's admin port says: `/healthz`, `/readyz` and `/metrics` (the server
//! itself is the one both binaries share, `ferrolb_crds::process::admin`).
//!
//! This module owns the metric definitions ([`Metrics`]) and what the probes answer. It
//! does not update metrics itself (the allocator, reconcile and leader election report
//! through [`Metrics`]' methods), nor watch anything:
//!
//! - `/readyz` ([`Readiness`], decided by [`readiness`]): ready when this replica leads and
//!   has rebuilt its allocations from Service status (so its caches have synced), or when
//!   another replica holds a valid Lease (a ready standby). Not ready while starting, while
//!   a new leader restores, while nobody leads, and from SIGTERM on.
//! - `/healthz` ([`Health`]): 503, naming what is stuck, once a component the process needs
//!   can no longer make progress (see `ferrolb_crds::health` and `app`'s `--healthz-*`
//!   flags for the bounds).
//!
//! `/metrics` is the OpenMetrics text format that `prometheus-client` writes; Prometheus
//! scrapes it as such (the response says so in its `Content-Type`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrolb_crds::Family;
use ferrolb_crds::health::Health;
use ferrolb_crds::names::AllocationReason;
use ferrolb_crds::process::admin::{Endpoints, Exposition, ReadinessCheck};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::leader::{LeaderHandle, Role};

/// The admin port when `--admin-address` is not given.
pub const DEFAULT_PORT: u16 = 7472;

/// Allocation latency buckets, in seconds: allocation is in memory (sub-millisecond) but
/// the measured span may include an API round trip.
const ALLOCATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

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
        ferrolb_crds::process::admin::register_build_info(
            &mut registry,
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT,
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
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        Exposition::encode(&self.registry)
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

impl ReadinessCheck for Readiness {
    fn check(&self, now: Instant) -> Result<String, String> {
        Readiness::check(self, now)
    }
}

impl Exposition for Metrics {
    fn encode(&self) -> Result<String, std::fmt::Error> {
        Exposition::encode(&self.registry)
    }
}

/// The admin server's answers: these metrics, this readiness, that health registry.
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
    use ferrolb_crds::process::admin::{AdminServer, Listen};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn metrics_lists_every_ferrolb_metric() {
        let metrics = Metrics::new();
        metrics.set_pool_usage("lan", Family::V4, 51, 3);
        metrics.set_pool_usage("lan", Family::V6, 1 << 64, 1);
        metrics.count_allocation(AllocationReason::PoolExhausted);
        metrics.count_reconcile_error();
        metrics.observe_allocation_duration(Duration::from_micros(300));
        metrics.set_leader(true);

        let body = metrics.encode().unwrap();
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
    }

    /// The controller's answers behind the shared server: the readiness text and the
    /// metrics' content type.
    #[tokio::test]
    async fn the_admin_server_serves_the_controllers_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::new(None);
        let server = AdminServer::bind(
            Listen::Address("127.0.0.1:0".parse().unwrap()),
            endpoints(metrics, readiness.clone(), Health::new()),
        )
        .unwrap();
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).await.unwrap();
            raw
        };
        let raw = get("/readyz").await;
        assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
        assert!(raw.contains("rebuilding the allocations"), "{raw}");
        readiness.set_restored(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        readiness.set_stopping();
        let raw = get("/readyz").await;
        assert!(raw.ends_with("not ready: shutting down\n"), "{raw}");
        let raw = get("/metrics").await;
        assert!(raw.contains("application/openmetrics-text"), "{raw}");
        assert!(raw.contains("ferrolb_leader 0"), "{raw}");
        cancel.cancel();
        task.await.unwrap();
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

    #[test]
    fn forgetting_a_pool_drops_its_series() {
        let metrics = Metrics::new();
        metrics.set_pool_usage("gone", Family::V4, 10, 1);
        assert!(metrics.encode().unwrap().contains(r#"pool="gone""#));
        metrics.forget_pool("gone");
        assert!(!metrics.encode().unwrap().contains(r#"pool="gone""#));
    }
}
