//! The controller's I/O shell: watches Services, IPPools and Namespaces, feeds the pure
//! [`Allocator`], and applies each [`Plan`] with server-side apply. Only the leader runs
//! this; it rebuilds every allocation from Service status before allocating anything.
//!
//! It reports to the probes ([`Probes`]): `/readyz` learns when the allocations are rebuilt;
//! `/healthz` watches each watch (errors that keep coming, a watch that ends) and, once
//! restored, the controller machinery itself: a heartbeat asks it to reconcile a Service
//! that cannot exist, and every result it turns out counts as a turn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ferrolb_crds::conditions::{self, ConditionContent};
use ferrolb_crds::events::{NewEvent, Reporter as EventReporter};
use ferrolb_crds::health::{Health, Limits, Registration, Reporter};
use ferrolb_crds::names::{
    AllocationReason, CONDITION_IP_ALLOCATED, FIELD_MANAGER_CONTROLLER, POOL_CONDITION_CONFLICT,
    POOL_CONDITION_READY,
};
use ferrolb_crds::{FamilyUsage, Forwarding, IPPool, IPPoolStatus};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::admin::{Metrics, Readiness};
use crate::allocator::pool::Pool;
use crate::allocator::{Allocator, Failure, Outcome, ServiceKey};
use crate::leader::LeaderHandle;
use crate::plan::{self, Plan};
use crate::service::{self, Handling};
use ferrolb_crds::cache::slim;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not the leader any more; not writing")]
    NotLeader,
    #[error("writing status of {key}: {source}")]
    Write {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("the allocation state is unavailable (a thread panicked while holding it)")]
    Poisoned,
}

/// Settings of the controller loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Class-less LoadBalancer Services are ours.
    pub default_class: bool,
    /// Name of this replica, for events.
    pub instance: String,
}

/// How the controller loop reports to `/readyz` and `/healthz`.
#[derive(Clone, Debug)]
pub struct Probes {
    pub readiness: Readiness,
    pub health: Health,
    /// How long the controller machinery may go without a turn once restored (its
    /// heartbeat runs four times as often).
    pub loop_timeout: Duration,
    /// How long a watch's errors may keep coming without a success; `None`: never stuck.
    pub api_timeout: Option<Duration>,
}

impl Probes {
    /// Probes nobody reads (tests, benchmarks): a single writer, default bounds.
    pub fn unobserved() -> Probes {
        Probes {
            readiness: Readiness::new(None),
            health: Health::new(),
            loop_timeout: Duration::from_secs(60),
            api_timeout: None,
        }
    }

    fn watch(&self, name: &str) -> Registration {
        self.health
            .register_scoped(name, Limits::calling_api(self.api_timeout))
    }
}

/// Reports one watch event (or error) to the watch's health component.
fn report<T, E: std::fmt::Display>(health: &Reporter, event: &Result<T, E>) {
    match event {
        Ok(_) => health.progress(),
        Err(e) => health.failed(e),
    }
}

/// The Service the heartbeat asks to reconcile: no Service can have this name (names are
/// DNS labels), so the runner answers "not found" at once, without calling `reconcile`.
fn heartbeat_ref() -> ObjectRef<Service> {
    ObjectRef::new("ferrolb.io/heartbeat")
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    settings: Settings,
    allocator: Mutex<Allocator>,
    namespaces: Store<Namespace>,
    pools: Store<IPPool>,
    /// The Services as the watch last saw them: deletions leave it before they release.
    services: Store<Service>,
    leader: Option<LeaderHandle>,
    metrics: Arc<Metrics>,
    /// Set once allocations are rebuilt from Service status.
    restored: watch::Sender<bool>,
    /// Services that lack an address they asked for: a freed address or a new pool
    /// may help them.
    pending: Mutex<BTreeSet<ServiceKey>>,
    dirty_pools: Mutex<BTreeSet<String>>,
    pools_changed: Notify,
    trigger: mpsc::UnboundedSender<ObjectRef<Service>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, Error> {
    m.lock().map_err(|_| Error::Poisoned)
}

fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey::new(
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or(""),
    )
}

fn svc_ref(key: &ServiceKey) -> ObjectRef<Service> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

fn created(meta: &kube::api::ObjectMeta) -> Option<i64> {
    meta.creation_timestamp.as_ref().map(|t| t.0.as_second())
}

impl Context {
    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    fn forwarding(alloc: &Allocator, pool: &str) -> Forwarding {
        alloc.pool(pool).map(|p| p.forwarding).unwrap_or_default()
    }

    fn mark_pools_dirty<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut d) = self.dirty_pools.lock() {
            d.extend(names.into_iter().map(str::to_string));
        }
        self.pools_changed.notify_one();
    }

    fn pools_holding(alloc: &Allocator, ips: &[IpAddr]) -> Vec<String> {
        alloc
            .pool_names()
            .filter(|n| {
                alloc
                    .pool(n)
                    .is_some_and(|p| ips.iter().any(|ip| p.contains(*ip)))
            })
            .map(str::to_string)
            .collect()
    }

    /// Re-examines every Service that was waiting for an address.
    fn wake_pending(&self) {
        let pending: Vec<ServiceKey> = self
            .pending
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        for k in pending {
            let _ = self.trigger.send(svc_ref(&k));
        }
    }

    fn still_leading(&self) -> bool {
        self.leader.as_ref().is_none_or(LeaderHandle::still_leading)
    }
}

/// What one reconcile decided, and about which version of the Service.
struct Decision {
    svc: Arc<Service>,
    plan: Plan,
    pools: Vec<String>,
    freed: bool,
}

/// Decides (under the allocator's lock) what the Service should look like.
///
/// The reconcile's copy may predate a deletion whose release already ran; allocating for
/// it would give a deleted Service an address for good. So the decision is made about the
/// store's current copy, read under the lock: the watch removes a deleted Service from the
/// store before it takes the lock to release, so either the release comes after this
/// decision or this decision sees the Service gone.
fn decide(snapshot: &Service, ctx: &Context) -> Result<Option<Decision>, Error> {
    let key = key_of(snapshot);
    let mut alloc = lock(&ctx.allocator)?;
    let Some(current) = ctx.services.get(&svc_ref(&key)) else {
        return Ok(None);
    };
    if current.metadata.uid != snapshot.metadata.uid {
        // Deleted and created again: the new object has its own reconcile coming.
        return Ok(None);
    }
    let svc: &Service = &current;
    let held_before: Vec<IpAddr> = alloc.held(&key).iter().map(|h| h.ip).collect();
    let handling = service::handling(svc, ctx.settings.default_class);
    let (plan, pending) = match handling {
        Handling::OtherClass if held_before.is_empty() => {
            return Ok(Some(Decision {
                svc: current.clone(),
                plan: Plan::Nothing,
                pools: vec![],
                freed: false,
            }));
        }
        Handling::OtherClass => {
            let released = alloc.release(&key);
            (
                plan::plan_release(
                    svc,
                    &released,
                    "the Service moved to another loadBalancerClass",
                ),
                false,
            )
        }
        Handling::NotOurs(why) => {
            let released = alloc.release(&key);
            (plan::plan_release(svc, &released, &why), false)
        }
        Handling::Ours => {
            let ns_labels = ctx.namespace_labels(&key.namespace);
            let started = Instant::now();
            let outcome = match service::request(svc, &ns_labels) {
                Ok(req) => alloc.ensure(&req),
                Err(message) => {
                    let why = message.clone();
                    Outcome {
                        ips: Vec::new(),
                        released: alloc
                            .release(&key)
                            .into_iter()
                            .map(|ip| (ip, why.clone()))
                            .collect(),
                        failure: Some(Failure {
                            reason: AllocationReason::InvalidRequest,
                            message,
                        }),
                    }
                }
            };
            ctx.metrics.observe_allocation_duration(started.elapsed());
            let mut outcome = outcome;
            // Addresses in status that this Service never got back (say, after a restart
            // another, older Service claimed the same one): say who has them.
            for ip in service::status_ips(svc) {
                let kept = outcome.ips.iter().any(|h| h.ip == ip);
                let explained = outcome.released.iter().any(|(r, _)| *r == ip);
                if !kept && !explained {
                    let why = match alloc.holders(ip).first() {
                        Some(other) => format!("{ip} is held by {other}, which claimed it first"),
                        None => format!("{ip} is not allocated to this Service any more"),
                    };
                    outcome.released.push((ip, why));
                }
            }
            let plan = plan::plan_allocation(svc, &outcome, |p| Context::forwarding(&alloc, p));
            if !matches!(plan, Plan::Nothing) {
                ctx.metrics.count_allocation(
                    outcome
                        .failure
                        .as_ref()
                        .filter(|_| outcome.ips.is_empty())
                        .map_or(AllocationReason::Allocated, |f| f.reason),
                );
            }
            (plan, outcome.failure.is_some())
        }
    };
    let held_after: Vec<IpAddr> = alloc.held(&key).iter().map(|h| h.ip).collect();
    let mut touched = held_before.clone();
    touched.extend(held_after.iter().copied());
    let pools = Context::pools_holding(&alloc, &touched);
    let freed = held_before.iter().any(|ip| !held_after.contains(ip));
    drop(alloc);
    if let Ok(mut p) = ctx.pending.lock() {
        if pending {
            p.insert(key);
        } else {
            p.remove(&key);
        }
    }
    Ok(Some(Decision {
        svc: current.clone(),
        plan,
        pools,
        freed,
    }))
}

/// One Service: snapshot, plan, apply.
#[instrument(skip_all, fields(service = %key_of(&svc)))]
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut restored = ctx.restored.subscribe();
    let _ = restored.wait_for(|r| *r).await;

    let Some(Decision {
        svc,
        plan,
        pools,
        freed,
    }) = decide(&svc, &ctx)?
    else {
        debug!("gone from the store; nothing to do");
        return Ok(Action::await_change());
    };
    debug!(?plan, "planned");
    match &plan {
        Plan::Nothing => {}
        Plan::Write {
            ingress,
            condition,
            events,
        } => {
            let cond = condition_json(&svc, condition);
            let ingress: Vec<serde_json::Value> = ingress
                .iter()
                .map(|i| json!({"ip": i.ip.to_string(), "ipMode": i.ip_mode}))
                .collect();
            let status = json!({"loadBalancer": {"ingress": ingress}, "conditions": [cond]});
            write_status(&ctx, &svc, status).await?;
            publish(&ctx, &svc, events).await;
        }
        Plan::Clear { events } => {
            write_status(&ctx, &svc, json!({})).await?;
            publish(&ctx, &svc, events).await;
        }
    }
    ctx.mark_pools_dirty(pools.iter().map(String::as_str));
    if freed {
        ctx.wake_pending();
    }
    Ok(Action::await_change())
}

fn condition_json(svc: &Service, c: &plan::AllocatedCondition) -> serde_json::Value {
    let condition = ConditionContent {
        type_: CONDITION_IP_ALLOCATED,
        status: c.status,
        reason: c.reason.as_str(),
        message: &c.message,
        observed_generation: svc.metadata.generation,
    }
    .build(plan::current_condition(svc), Timestamp::now());
    serde_json::to_value(condition).unwrap_or_default()
}

async fn write_status(
    ctx: &Context,
    svc: &Service,
    status: serde_json::Value,
) -> Result<(), Error> {
    let key = key_of(svc);
    // The lease may have moved while we were deciding: check right before writing.
    if !ctx.still_leading() {
        return Err(Error::NotLeader);
    }
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = json!({"apiVersion": "v1", "kind": "Service", "status": status});
    api.patch_status(
        &key.name,
        &PatchParams::apply(FIELD_MANAGER_CONTROLLER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Write {
        key: key.to_string(),
        source,
    })?;
    Ok(())
}

/// Creates one `events.k8s.io/v1` Event per planned event.
async fn publish(ctx: &Context, svc: &Service, events: &[plan::EventPlan]) {
    let regarding = svc.object_ref(&());
    let reporter = EventReporter {
        controller: format!("ferrolb.io/{FIELD_MANAGER_CONTROLLER}"),
        instance: ctx.settings.instance.clone(),
    };
    for e in events {
        info!(reason = e.reason, note = %e.note, "event");
        let event = NewEvent {
            regarding: &regarding,
            reason: e.reason,
            note: &e.note,
            warning: e.warning,
            action: "Allocate",
        }
        .build(&reporter, Timestamp::now());
        if let Err(err) = ferrolb_crds::events::publish(&ctx.client, &event).await {
            warn!(%err, "cannot publish event");
        }
    }
}

fn error_policy(_svc: Arc<Service>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_reconcile_error();
    warn!(%err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Brings the allocator's pools in line with the IPPool store; returns the Services to
/// look at again and the pools whose status may change.
fn sync_pools(
    ctx: &Context,
    known: &mut BTreeMap<String, (Option<i64>, ferrolb_crds::IPPoolSpec)>,
) -> Result<(BTreeSet<ServiceKey>, Vec<String>), Error> {
    let mut alloc = lock(&ctx.allocator)?;
    let mut affected = BTreeSet::new();
    let mut changed = Vec::new();
    let current: BTreeMap<String, Arc<IPPool>> = ctx
        .pools
        .state()
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    for (name, p) in &current {
        let entry = (created(&p.metadata), p.spec.clone());
        if known.get(name) == Some(&entry) {
            continue;
        }
        affected.extend(alloc.set_pool(Pool::from_spec(name, entry.0, &entry.1)));
        known.insert(name.clone(), entry);
        changed.push(name.clone());
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|n| !current.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        affected.extend(alloc.remove_pool(&name));
        known.remove(&name);
        ctx.metrics.forget_pool(&name);
        changed.push(name);
    }
    if !changed.is_empty() {
        // A pool change can end a conflict elsewhere: every pool's status may move.
        changed.extend(alloc.pool_names().map(str::to_string));
    }
    Ok((affected, changed))
}

/// Rebuilds allocations from Service status, oldest Service first, before anything new is
/// allocated. Refused claims (two Services on one address) are re-examined afterwards,
/// which moves the newer one.
fn restore(ctx: &Context, services: &Store<Service>) -> Result<Vec<ServiceKey>, Error> {
    let mut all: Vec<Arc<Service>> = services.state();
    // Oldest first; creationTimestamp has one-second resolution, so ties go by
    // namespace/name (deterministic, if arbitrary).
    all.sort_by_key(|s| (created(&s.metadata), key_of(s)));
    let mut alloc = lock(&ctx.allocator)?;
    let mut restored = 0usize;
    let mut refused_keys = Vec::new();
    for svc in all {
        if service::handling(&svc, ctx.settings.default_class) != Handling::Ours {
            continue;
        }
        let ips = service::status_ips(&svc);
        if ips.is_empty() {
            continue;
        }
        let ns_labels =
            ctx.namespace_labels(svc.metadata.namespace.as_deref().unwrap_or("default"));
        let Ok(req) = service::request(&svc, &ns_labels) else {
            refused_keys.push(key_of(&svc));
            continue;
        };
        let refused = alloc.restore(&req, &ips);
        restored += ips.len() - refused.len();
        for (ip, why) in &refused {
            info!(service = %req.key, %ip, %why, "not restoring address");
        }
        if !refused.is_empty() {
            refused_keys.push(req.key.clone());
        }
    }
    info!(
        restored,
        refused = refused_keys.len(),
        "allocations rebuilt from Service status"
    );
    Ok(refused_keys)
}

/// Writes pool status (usage, Ready, Conflict) for pools marked dirty.
async fn pool_status_loop(ctx: Arc<Context>, cancel: CancellationToken) {
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ctx.pools_changed.notified() => {}
        }
        // Let a burst of changes settle into one write per pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dirty: Vec<String> = ctx
            .dirty_pools
            .lock()
            .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
            .unwrap_or_default();
        for name in dirty {
            let Some(status) = pool_status(&ctx, &name) else {
                continue;
            };
            let current = ctx.pools.get(&ObjectRef::new(&name));
            let Some(current) = current else { continue };
            if same_pool_status(current.status.as_ref(), &status) {
                continue;
            }
            if !ctx.still_leading() {
                continue;
            }
            let patch =
                json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "status": status});
            if let Err(err) = api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER_CONTROLLER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                warn!(pool = %name, %err, "cannot write pool status");
                if let Ok(mut d) = ctx.dirty_pools.lock() {
                    d.insert(name);
                }
            }
        }
    }
}

fn pool_status(ctx: &Context, name: &str) -> Option<IPPoolStatus> {
    let alloc = ctx.allocator.lock().ok()?;
    let report = alloc.report(name)?;
    let current = ctx.pools.get(&ObjectRef::new(name));
    let generation = current.as_ref().and_then(|p| p.metadata.generation);
    let old_conditions = current
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        ConditionContent {
            type_,
            status: ok,
            reason,
            message: &message,
            observed_generation: generation,
        }
        .build(conditions::find(&old_conditions, type_), Timestamp::now())
    };
    let pool = alloc.pool(name)?;
    let (ready, reason, message) = match (&report.invalid, &report.conflict, pool.disabled) {
        (Some(why), _, _) => (false, "InvalidSpec", why.clone()),
        (None, Some(other), _) => (
            false,
            "Conflict",
            format!("overlaps the older IPPool {other}"),
        ),
        (None, None, true) => (
            false,
            "Disabled",
            "draining: no new allocations".to_string(),
        ),
        (None, None, false) => (true, "Ready", "allocating".to_string()),
    };
    let conflict = match &report.conflict {
        Some(other) => condition(
            POOL_CONDITION_CONFLICT,
            true,
            "Overlap",
            format!("overlaps the older IPPool {other}; this pool allocates nothing"),
        ),
        None => condition(
            POOL_CONDITION_CONFLICT,
            false,
            "NoOverlap",
            "no older IPPool overlaps this one".into(),
        ),
    };
    let usage = |u: &crate::allocator::FamilyUse| FamilyUsage {
        total: u.total.to_string(),
        used: u.used.to_string(),
    };
    for (family, u) in [
        (ferrolb_crds::Family::V4, &report.v4),
        (ferrolb_crds::Family::V6, &report.v6),
    ] {
        match u {
            Some(u) => ctx
                .metrics
                .set_pool_usage(name, family, u.total.saturating_u128(), u.used),
            None => ctx.metrics.forget_pool_family(name, family),
        }
    }
    let mut status = IPPoolStatus {
        ipv4: report.v4.as_ref().map(usage),
        ipv6: report.v6.as_ref().map(usage),
        usage: None,
        conditions: vec![
            condition(POOL_CONDITION_READY, ready, reason, message),
            conflict,
        ],
    };
    status.usage = status.usage_summary();
    Some(status)
}

fn same_pool_status(current: Option<&IPPoolStatus>, new: &IPPoolStatus) -> bool {
    let Some(cur) = current else { return false };
    let strip = |cs: &[Condition]| -> Vec<(String, String, String, String)> {
        cs.iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    cur.ipv4 == new.ipv4
        && cur.ipv6 == new.ipv6
        && cur.usage == new.usage
        && strip(&cur.conditions) == strip(&new.conditions)
}

/// Runs the controller until `cancel` fires. Call it once leadership is held; it returns
/// when cancelled (for example when leadership is lost).
pub async fn run(
    client: Client,
    settings: Settings,
    leader: Option<LeaderHandle>,
    metrics: Arc<Metrics>,
    probes: Probes,
    cancel: CancellationToken,
) {
    probes.readiness.set_restored(false);
    run_term(client, settings, leader, metrics, &probes, cancel).await;
    probes.readiness.set_restored(false);
}

async fn run_term(
    client: Client,
    settings: Settings,
    leader: Option<LeaderHandle>,
    metrics: Arc<Metrics>,
    probes: &Probes,
    cancel: CancellationToken,
) {
    // Deregistered when this term ends: a standby has no watches to judge.
    let ns_health = probes.watch("Namespace watch");
    let pool_health = probes.watch("IPPool watch");
    let svc_health = probes.watch("Service watch");
    // Registered once restored: before that, the runner waits for the caches.
    let machinery: Arc<OnceLock<Registration>> = Arc::new(OnceLock::new());
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let (pool_reader, pool_writer) = reflector::store::<IPPool>();
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
    let (restored_tx, _) = watch::channel(false);
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        allocator: Mutex::new(Allocator::new()),
        namespaces: ns_reader.clone(),
        pools: pool_reader.clone(),
        services: svc_reader.clone(),
        leader,
        metrics,
        restored: restored_tx,
        pending: Mutex::new(BTreeSet::new()),
        dirty_pools: Mutex::new(BTreeSet::new()),
        pools_changed: Notify::new(),
        trigger: trigger_tx,
    });

    // Namespaces: a label change re-examines the Services of that namespace.
    let ns_task = {
        let ctx = ctx.clone();
        let svc_reader = svc_reader.clone();
        let api: Api<Namespace> = Api::all(client.clone());
        let mut labels_seen: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let health = ns_health.reporter();
        let stream = reflector::reflector(
            ns_writer,
            watcher::watcher(api, watcher::Config::default()).modify(slim),
        )
        .default_backoff()
        .inspect(move |ev| report(&health, ev))
        .applied_objects();
        let health = ns_health.reporter();
        async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ns) = stream.next().await {
                let Ok(ns) = ns else { continue };
                let name = ns.name_any();
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                let before = labels_seen.insert(name.clone(), labels.clone());
                if before.is_some() && before != Some(labels) {
                    for s in svc_reader.state() {
                        if s.metadata.namespace.as_deref() == Some(name.as_str()) {
                            let _ = ctx.trigger.send(ObjectRef::from_obj(&*s));
                        }
                    }
                }
            }
            health.ended();
        }
    };

    // Pools: keep the allocator in line and re-examine the Services each change touches.
    let pool_task = {
        let ctx = ctx.clone();
        let api: Api<IPPool> = Api::all(client.clone());
        let stream = reflector::reflector(
            pool_writer,
            watcher::watcher(api, watcher::Config::default()).modify(slim),
        )
        .default_backoff();
        let health = pool_health.reporter();
        async move {
            let mut known = BTreeMap::new();
            let mut stream = std::pin::pin!(stream);
            let restored = ctx.restored.subscribe();
            while let Some(ev) = stream.next().await {
                report(&health, &ev);
                // Until restore has run (it syncs the pools itself), only fill the store.
                if !*restored.borrow()
                    || matches!(ev, Ok(WatchEvent::Init) | Ok(WatchEvent::InitApply(_)))
                {
                    continue;
                }
                let Ok((affected, changed)) = sync_pools(&ctx, &mut known) else {
                    continue;
                };
                if !affected.is_empty() || !changed.is_empty() {
                    debug!(affected = affected.len(), pools = ?changed, "pools changed");
                }
                for k in &affected {
                    let _ = ctx.trigger.send(svc_ref(k));
                }
                if !changed.is_empty() {
                    ctx.wake_pending();
                }
                ctx.mark_pools_dirty(changed.iter().map(String::as_str));
            }
            health.ended();
        }
    };

    // Services: deletions release at once (the controller never sees deleted objects).
    let svc_api: Api<Service> = Api::all(client.clone());
    let svc_stream = {
        let ctx = ctx.clone();
        let reader = svc_reader.clone();
        let health = svc_health.reporter();
        reflector::reflector(
            svc_writer,
            watcher::watcher(svc_api, watcher::Config::default()).modify(slim),
        )
        .default_backoff()
        .inspect(move |ev| report(&health, ev))
        .inspect_ok(move |ev| {
            let gone: Vec<ServiceKey> = match ev {
                WatchEvent::Delete(s) => vec![key_of(s)],
                // After a re-list, anything we hold for a Service no longer listed is gone.
                WatchEvent::InitDone => ctx
                    .allocator
                    .lock()
                    .map(|a| {
                        a.services()
                            .filter(|k| reader.get(&svc_ref(k)).is_none())
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            for key in gone {
                let released = ctx.allocator.lock().map(|mut a| {
                    let ips = a.release(&key);
                    (Context::pools_holding(&a, &ips), ips)
                });
                if let Ok((pools, ips)) = released
                    && !ips.is_empty()
                {
                    info!(service = %key, ?ips, "Service deleted; addresses released");
                    ctx.mark_pools_dirty(pools.iter().map(String::as_str));
                    ctx.wake_pending();
                }
                if let Ok(mut p) = ctx.pending.lock() {
                    p.remove(&key);
                }
            }
        })
        .touched_objects()
    };

    // Restore once every store has its first full list.
    let restore_task = {
        let ctx = ctx.clone();
        let (svc_reader, pool_reader, ns_reader) =
            (svc_reader.clone(), pool_reader.clone(), ns_reader.clone());
        let machinery = machinery.clone();
        let (health, readiness, loop_timeout) = (
            probes.health.clone(),
            probes.readiness.clone(),
            probes.loop_timeout,
        );
        async move {
            if svc_reader.wait_until_ready().await.is_err()
                || pool_reader.wait_until_ready().await.is_err()
                || ns_reader.wait_until_ready().await.is_err()
            {
                return;
            }
            let mut known = BTreeMap::new();
            if let Ok((_, changed)) = sync_pools(&ctx, &mut known) {
                ctx.mark_pools_dirty(changed.iter().map(String::as_str));
            }
            let refused = restore(&ctx, &svc_reader).unwrap_or_default();
            let _ = ctx.restored.send(true);
            readiness.set_restored(true);
            let _ = machinery
                .set(health.register_scoped("controller loop", Limits::turning(loop_timeout)));
            for k in refused {
                let _ = ctx.trigger.send(svc_ref(&k));
            }
        }
    };

    let controller = Controller::for_stream(svc_stream, svc_reader)
        .reconcile_on(tokio_stream_from(trigger_rx))
        .graceful_shutdown_on({
            let c = cancel.clone();
            async move { c.cancelled().await }
        })
        .run(reconcile, error_policy, ctx.clone())
        .for_each({
            let machinery = machinery.clone();
            move |_| {
                // Any result, the heartbeat's "not found" included, is a turn.
                if let Some(m) = machinery.get() {
                    m.progress();
                }
                async {}
            }
        });

    let heartbeat = {
        let (ctx, machinery) = (ctx.clone(), machinery.clone());
        let mut tick =
            tokio::time::interval((probes.loop_timeout / 4).max(Duration::from_millis(100)));
        async move {
            loop {
                tick.tick().await;
                if machinery.get().is_some() {
                    let _ = ctx.trigger.send(heartbeat_ref());
                }
            }
        }
    };

    let status_task = pool_status_loop(ctx.clone(), cancel.clone());
    tokio::select! {
        _ = controller => {}
        _ = async { tokio::join!(ns_task, pool_task, restore_task, status_task, heartbeat) } => {}
        _ = cancel.cancelled() => {}
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
