//! Reconciling one Service: snapshot (the cached Service, under the allocator's lock),
//! plan (a [`Plan`] value), apply (server-side apply of its status, then its events). The
//! [`Context`] it shares with the rest of the term lives here too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferrolb_crds::conditions::ConditionContent;
use ferrolb_crds::names::{AllocationReason, CONDITION_IP_ALLOCATED, FIELD_MANAGER_CONTROLLER};
use ferrolb_crds::{Forwarding, IPPool};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, instrument, warn};

use crate::Error;
use crate::admin::Metrics;
use crate::allocator::{Allocator, Failure, Outcome, ServiceKey};
use crate::leader::LeaderHandle;
use crate::pending::Pending;
use crate::plan::{self, Plan};
use crate::service::{self, Handling};

/// Settings of the controller loop.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Class-less LoadBalancer Services are ours.
    pub default_class: bool,
    /// Name of this replica, for events.
    pub instance: String,
}

/// Shared by every reconcile.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) allocator: Mutex<Allocator>,
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) pools: Store<IPPool>,
    /// The Services as the watch last saw them: deletions leave it before they release.
    pub(crate) services: Store<Service>,
    pub(crate) leader: Option<LeaderHandle>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set once allocations are rebuilt from Service status.
    pub(crate) restored: watch::Sender<bool>,
    /// Services that lack an address they asked for, by what they wait for (locked only
    /// while holding the allocator's lock, after it).
    pub(crate) pending: Mutex<Pending>,
    pub(crate) dirty_pools: Mutex<BTreeSet<String>>,
    pub(crate) pools_changed: Notify,
    pub(crate) trigger: mpsc::UnboundedSender<ObjectRef<Service>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, Error> {
    m.lock().map_err(|_| Error::Poisoned)
}

pub(crate) fn key_of(svc: &Service) -> ServiceKey {
    ServiceKey::new(
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or(""),
    )
}

pub(crate) fn svc_ref(key: &ServiceKey) -> ObjectRef<Service> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

pub(crate) fn created(meta: &kube::api::ObjectMeta) -> Option<i64> {
    meta.creation_timestamp.as_ref().map(|t| t.0.as_second())
}

impl Context {
    pub(crate) fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    pub(crate) fn forwarding(alloc: &Allocator, pool: &str) -> Forwarding {
        alloc.pool(pool).map(|p| p.forwarding).unwrap_or_default()
    }

    pub(crate) fn mark_pools_dirty<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut d) = self.dirty_pools.lock() {
            d.extend(names.into_iter().map(str::to_string));
        }
        self.pools_changed.notify_one();
    }

    pub(crate) fn pools_holding(alloc: &Allocator, ips: &[IpAddr]) -> Vec<String> {
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

    /// Reconciles these Services (waiting ones a change may help).
    pub(crate) fn wake<'a>(&self, keys: impl IntoIterator<Item = &'a ServiceKey>) {
        for k in keys {
            let _ = self.trigger.send(svc_ref(k));
        }
    }

    pub(crate) fn still_leading(&self) -> bool {
        self.leader.as_ref().is_none_or(LeaderHandle::still_leading)
    }
}

/// What one reconcile decided, and about which version of the Service.
struct Decision {
    svc: Arc<Service>,
    plan: Plan,
    pools: Vec<String>,
    /// Waiting Services this decision may help (it let go of an address).
    wake: BTreeSet<ServiceKey>,
    /// The Service holds no address after this decision.
    holds_nothing: bool,
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
    let before = alloc.held(&key);
    let terms_before = alloc.sharing_of(&key);
    let held_before: Vec<IpAddr> = before.iter().map(|h| h.ip).collect();
    let handling = service::handling(svc, ctx.settings.default_class);
    let mut request = None;
    let plan = match handling {
        Handling::OtherClass if held_before.is_empty() => {
            let wake = lock(&ctx.pending)?.decided(&alloc, &key, None, (&[], None), &[]);
            return Ok(Some(Decision {
                svc: current.clone(),
                plan: Plan::Nothing,
                pools: vec![],
                wake,
                holds_nothing: true,
            }));
        }
        Handling::OtherClass => {
            let released = alloc.release(&key);
            plan::plan_release(
                svc,
                &released,
                "the Service moved to another loadBalancerClass",
            )
        }
        Handling::NotOurs(why) => {
            let released = alloc.release(&key);
            plan::plan_release(svc, &released, &why)
        }
        Handling::Ours => {
            let ns_labels = ctx.namespace_labels(&key.namespace);
            let started = Instant::now();
            let outcome = match service::request(svc, &ns_labels) {
                Ok(req) => {
                    let outcome = alloc.ensure(&req);
                    request = Some(req);
                    outcome
                }
                Err(invalid) => {
                    let message = invalid.to_string();
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
                            crowded: false,
                        }),
                        incomplete: false,
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
            plan
        }
    };
    let after = alloc.held(&key);
    let mut touched = held_before;
    touched.extend(after.iter().map(|h| h.ip));
    let pools = Context::pools_holding(&alloc, &touched);
    let wake = lock(&ctx.pending)?.decided(
        &alloc,
        &key,
        request.as_ref(),
        (&before, terms_before.as_ref()),
        &after,
    );
    drop(alloc);
    Ok(Some(Decision {
        svc: current.clone(),
        plan,
        pools,
        wake,
        holds_nothing: after.is_empty(),
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
        wake,
        holds_nothing,
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
            crate::events::publish(&ctx, &svc, events).await;
        }
        Plan::Clear { events } => {
            write_status(&ctx, &svc, json!({})).await?;
            crate::events::publish(&ctx, &svc, events).await;
        }
    }
    // No address (not ours any more, or ours with none left): no speaker writes on it, so a
    // speaker's Announced would keep describing addresses it no longer has.
    if holds_nothing && plan::announced_condition(&svc).is_some() {
        remove_announced(&ctx, &svc).await?;
    }
    ctx.mark_pools_dirty(pools.iter().map(String::as_str));
    // After the write: an address this Service let go of leaves its status before another
    // Service's status shows it.
    ctx.wake(&wake);
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
    let patch = json!({"apiVersion": "v1", "kind": "Service", "status": status});
    patch_status(
        ctx,
        svc,
        &PatchParams::apply(FIELD_MANAGER_CONTROLLER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Deletes the speakers' `ferrolb.io/Announced` from a Service that is no longer ours (a
/// strategic-merge delete by the list's key, so no other condition is touched). A speaker
/// that wrote it from an older view just after is undone by the reconcile its write
/// triggers.
async fn remove_announced(ctx: &Context, svc: &Service) -> Result<(), Error> {
    let patch = json!({"status": {"conditions": [
        {"type": ferrolb_crds::names::CONDITION_ANNOUNCED, "$patch": "delete"}]}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER_CONTROLLER.into()),
        ..PatchParams::default()
    };
    patch_status(ctx, svc, &params, &Patch::Strategic(&patch)).await
}

/// Patches the Service's status, if this replica still leads.
async fn patch_status(
    ctx: &Context,
    svc: &Service,
    params: &PatchParams,
    patch: &Patch<&serde_json::Value>,
) -> Result<(), Error> {
    let key = key_of(svc);
    // The lease may have moved while we were deciding: check right before writing.
    if !ctx.still_leading() {
        return Err(Error::NotLeader);
    }
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &key.namespace);
    api.patch_status(&key.name, params, patch)
        .await
        .map_err(|source| Error::WriteStatus {
            key: key.to_string(),
            source,
        })?;
    Ok(())
}

pub(crate) fn error_policy(_svc: Arc<Service>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.count_reconcile_error();
    warn!(%err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
