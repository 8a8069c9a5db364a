//! One leadership term: the watches (Services, IPPools, Namespaces), the restore, the pool
//! sync, the pool status writer and the kube-runtime controller that reconciles Services,
//! wired together until the term ends. Only the leader runs this.
//!
//! It reports to the probes ([`Probes`]): `/readyz` learns when the allocations are rebuilt;
//! `/healthz` watches each watch (errors that keep coming, a watch that ends) and, once
//! restored, the controller machinery itself: a heartbeat asks it to reconcile a Service
//! that cannot exist, and every result it turns out counts as a turn.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ferrolb_crds::IPPool;
use ferrolb_crds::cache::slim;
use ferrolb_crds::health::{Health, Limits, Registration, Reporter};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::admin::{Metrics, Readiness};
use crate::allocator::{Allocator, ServiceKey};
use crate::leader::LeaderHandle;
use crate::pool_status::pool_status_loop;
use crate::pool_sync::sync_pools;
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
