//! One leadership term: from the warm caches ([`Caches`]), once proven current
//! ([`crate::catch_up`]), rebuild the allocations (restore), then follow what changes, one change at a time: Service changes go to the
//! kube-runtime controller that reconciles them, deletions release, pool changes go
//! through the term's one [`PoolSync`], a Namespace's new labels re-examine its Services.
//! Pool statuses are written by their own loop. Only the leader runs a term; it ends when
//! `cancel` fires (leadership lost, or shutdown).
//!
//! It reports to the probes ([`Probes`]): `/readyz` learns when the allocations are
//! rebuilt; once restored, `/healthz` watches the controller machinery itself: a heartbeat
//! asks it to reconcile a Service that cannot exist, and every result counts as a turn.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrolb_crds::health::{Health, Limits};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::{Metrics, Readiness};
use crate::allocator::{Allocator, ServiceKey};
use crate::caches::{Caches, Change};
use crate::leader::LeaderHandle;
use crate::pending::Pending;
use crate::pool_status::pool_status_loop;
use crate::pool_sync::{PoolChanges, PoolSync};
use crate::reconcile::{Context, Settings, error_policy, key_of, reconcile, svc_ref};
use crate::restore::restore;

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
}

/// The Service the heartbeat asks to reconcile: no Service can have this name (names are
/// DNS labels), so the runner answers "not found" at once, without calling `reconcile`.
fn heartbeat_ref() -> ObjectRef<Service> {
    ObjectRef::new("ferrolb.io/heartbeat")
}

/// Runs one term until `cancel` fires. Call it once leadership is held.
pub async fn run(
    client: Client,
    caches: &Caches,
    settings: Settings,
    leader: Option<LeaderHandle>,
    metrics: Arc<Metrics>,
    probes: &Probes,
    cancel: CancellationToken,
) {
    probes.readiness.set_restored(false);
    tokio::select! {
        () = run_term(client, caches, settings, leader, metrics, probes, cancel.clone()) => {}
        () = cancel.cancelled() => {}
    }
    probes.readiness.set_restored(false);
}

async fn run_term(
    client: Client,
    caches: &Caches,
    settings: Settings,
    leader: Option<LeaderHandle>,
    metrics: Arc<Metrics>,
    probes: &Probes,
    cancel: CancellationToken,
) {
    // First subscribe, then read the caches: a change lands in the caches before it is
    // sent, so whatever the restore does not see comes through the feed.
    let mut feed = caches.subscribe();
    if caches.synced().await.is_err() {
        return;
    }
    // The caches may trail the API (a loaded machine, a slow watch): the last leader's
    // latest writes must be in them before they are trusted.
    caches.catch_up(&client).await;
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
    let (restored_tx, _) = watch::channel(false);
    let ctx = Arc::new(Context {
        client,
        settings,
        allocator: Mutex::new(Allocator::new()),
        namespaces: caches.namespaces.clone(),
        pools: caches.pools.clone(),
        services: caches.services.clone(),
        leader,
        metrics,
        restored: restored_tx,
        pending: Mutex::new(Pending::new()),
        dirty_pools: Mutex::new(BTreeSet::new()),
        pools_changed: Notify::new(),
        trigger: trigger_tx,
    });

    // Restore: the pools, then every address in Service status, before anything new.
    let mut pools = PoolSync::default();
    match pools.sync(&ctx) {
        Ok(changes) => ctx.mark_pools_dirty(changes.statuses.iter().map(String::as_str)),
        Err(e) => warn!(error = %e.chain(), "cannot sync the pools"),
    }
    if let Err(e) = restore(&ctx, &ctx.services) {
        warn!(error = %e.chain(), "cannot restore the allocations");
        return;
    }
    ctx.restored.send_replace(true);
    probes.readiness.set_restored(true);
    let machinery = probes
        .health
        .register_scoped("controller loop", Limits::turning(probes.loop_timeout));

    // Every Service once: whatever changed while nobody led is handled now.
    for key in caches.service_keys() {
        let _ = ctx.trigger.send(svc_ref(&key));
    }

    let (changed_tx, changed_rx) = mpsc::unbounded_channel::<Arc<Service>>();
    let controller = Controller::for_shared_stream(
        UnboundedReceiverStream::new(changed_rx),
        caches.services.clone(),
    )
    .reconcile_on(UnboundedReceiverStream::new(trigger_rx))
    .graceful_shutdown_on({
        let c = cancel.clone();
        async move { c.cancelled().await }
    })
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|_| {
        // Any result, the heartbeat's "not found" included, is a turn.
        machinery.progress();
        async {}
    });

    let heartbeat = {
        let ctx = ctx.clone();
        let mut tick =
            tokio::time::interval((probes.loop_timeout / 4).max(Duration::from_millis(100)));
        async move {
            loop {
                tick.tick().await;
                let _ = ctx.trigger.send(heartbeat_ref());
            }
        }
    };

    let follow = async {
        while let Some(change) = feed.recv().await {
            match change {
                Change::Service(svc) => {
                    let _ = changed_tx.send(svc);
                }
                Change::ServiceDeleted(svc) => released(&ctx, &key_of(&svc)),
                Change::ServicesRelisted => {
                    // Anything held for a Service no longer listed is gone; the others
                    // may have changed while the watch was down.
                    let gone: Vec<ServiceKey> = match ctx.allocator.lock() {
                        Ok(a) => a
                            .services()
                            .filter(|k| ctx.services.get(&svc_ref(k)).is_none())
                            .cloned()
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    for key in gone {
                        released(&ctx, &key);
                    }
                    for key in caches.service_keys() {
                        let _ = ctx.trigger.send(svc_ref(&key));
                    }
                }
                Change::Pools => match pools.sync(&ctx) {
                    Ok(changes) => pools_changed(&ctx, &changes),
                    Err(e) => warn!(error = %e.chain(), "cannot sync the pools"),
                },
                Change::NamespaceLabels(ns) => {
                    for key in caches.services_in(&ns) {
                        let _ = ctx.trigger.send(svc_ref(&key));
                    }
                }
            }
        }
    };

    let status_task = pool_status_loop(ctx.clone(), cancel.clone());
    tokio::select! {
        _ = controller => {}
        _ = follow => {}
        _ = async { tokio::join!(status_task, heartbeat) } => {}
    }
}

/// A Service was deleted: its addresses come free at once (the controller never sees
/// deleted objects, so this cannot wait for a reconcile).
fn released(ctx: &Context, key: &ServiceKey) {
    let released = ctx.allocator.lock().map(|mut a| {
        let ips = a.release(key);
        let wake = ctx
            .pending
            .lock()
            .map(|mut p| p.deleted(&a, key, &ips))
            .unwrap_or_default();
        (Context::pools_holding(&a, &ips), ips, wake)
    });
    if let Ok((pools, ips, wake)) = released {
        if !ips.is_empty() {
            info!(service = %key, ?ips, "Service deleted; addresses released");
            ctx.mark_pools_dirty(pools.iter().map(String::as_str));
        }
        ctx.wake(&wake);
    }
}

fn pools_changed(ctx: &Context, changes: &PoolChanges) {
    if changes.is_empty() {
        return;
    }
    debug!(affected = changes.affected.len(), pools = ?changes.statuses, "pools changed");
    for k in &changes.affected {
        let _ = ctx.trigger.send(svc_ref(k));
    }
    if !changes.statuses.is_empty() {
        let wake = ctx.allocator.lock().map(|a| {
            ctx.pending
                .lock()
                .map(|mut p| p.pools_changed(&a))
                .unwrap_or_default()
        });
        if let Ok(wake) = wake {
            debug!(
                waking = wake.len(),
                "pool change: waiting Services it may help"
            );
            ctx.wake(&wake);
        }
    }
    ctx.mark_pools_dirty(changes.statuses.iter().map(String::as_str));
}
