//! The speaker's caches: one watch per kind it reads (Nodes, LoadBalancer Services,
//! EndpointSlices, IPPools), each a named task feeding a store. Every event marks what it
//! changed ([`Dirty`]) and wakes the election loop, which reads only that.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferrolb_crds::IPPool;
use ferrolb_crds::health::{Health, Limits, Reporter};
use ferrolb_crds::process::tasks::Tasks;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tracing::debug;

use crate::Error;
use crate::inputs::SERVICE_NAME_LABEL;
use crate::view::{Dirty, Stores};

/// The four stores, what changed in them since the loop last looked, and the means to
/// start every watch afresh.
#[derive(Clone)]
pub(super) struct Caches {
    pub nodes: Store<K8sNode>,
    pub services: Store<K8sService>,
    pub slices: Store<EndpointSlice>,
    pub pools: Store<IPPool>,
    /// Poked on every event.
    pub changed: Arc<Notify>,
    dirty: Arc<Mutex<Dirty>>,
    restart: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Caches {
    /// Starts the watches as tasks of `tasks`. Each reports to `health` (bounded by
    /// `api_timeout`: `/healthz`) and to `freshness` (bounded by `stale_after`: past it the
    /// view counts as stale).
    pub fn start(
        client: &kube::Client,
        tasks: &Tasks,
        health: &Health,
        api_timeout: Option<Duration>,
        freshness: &Health,
        stale_after: Duration,
    ) -> Caches {
        let changed = Arc::new(Notify::new());
        let dirty = Arc::new(Mutex::new(Dirty::everything()));
        let (restart, restart_rx) = watch::channel(0u64);
        let reporters = |kind: &str| {
            (
                health.register(format!("{kind} watch"), Limits::calling_api(api_timeout)),
                freshness.register(
                    format!("{kind} watch"),
                    Limits::calling_api(Some(stale_after)),
                ),
            )
        };
        let (nodes, task) = watch_into(
            Api::<K8sNode>::all(client.clone()),
            watcher::Config::default(),
            crate::inputs::slim_node,
            changed.clone(),
            reporters("Node"),
            restart_rx.clone(),
            {
                let d = dirty.clone();
                move |ev| lock(&d).nodes.mark(ev)
            },
        );
        tasks.spawn_until_stop("Node watch", task);
        let (services, task) = watch_into(
            Api::<K8sService>::all(client.clone()),
            // Only LoadBalancer Services: one that changes type leaves the watch as deleted.
            watcher::Config::default().fields(crate::inputs::LOAD_BALANCERS),
            ferrolb_crds::cache::slim,
            changed.clone(),
            reporters("Service"),
            restart_rx.clone(),
            {
                let d = dirty.clone();
                move |ev| lock(&d).services.mark(ev)
            },
        );
        tasks.spawn_until_stop("Service watch", task);
        let (slices, task) = watch_into(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            crate::inputs::slim_slice,
            changed.clone(),
            reporters("EndpointSlice"),
            restart_rx.clone(),
            {
                let d = dirty.clone();
                move |ev| lock(&d).slices.mark(ev)
            },
        );
        tasks.spawn_until_stop("EndpointSlice watch", task);
        let (pools, task) = watch_into(
            Api::<IPPool>::all(client.clone()),
            watcher::Config::default(),
            ferrolb_crds::cache::slim,
            changed.clone(),
            reporters("IPPool"),
            restart_rx,
            {
                let d = dirty.clone();
                move |_: &watcher::Event<IPPool>| lock(&d).pools = true
            },
        );
        tasks.spawn_until_stop("IPPool watch", task);
        Caches {
            nodes,
            services,
            slices,
            pools,
            changed,
            dirty,
            restart,
        }
    }

    /// Resolves once every store holds its first complete list.
    pub async fn synced(&self) -> Result<(), Error> {
        for (kind, ready) in [
            ("Node", self.nodes.wait_until_ready().await.is_ok()),
            ("Service", self.services.wait_until_ready().await.is_ok()),
            (
                "EndpointSlice",
                self.slices.wait_until_ready().await.is_ok(),
            ),
            ("IPPool", self.pools.wait_until_ready().await.is_ok()),
        ] {
            if !ready {
                return Err(Error::NotSynced { kind });
            }
        }
        Ok(())
    }

    pub fn stores(&self) -> Stores {
        Stores {
            nodes: self.nodes.clone(),
            services: self.services.clone(),
            slices: self.slices.clone(),
            pools: self.pools.clone(),
        }
    }

    /// What changed since the last call.
    pub fn take_dirty(&self) -> Dirty {
        std::mem::take(&mut *lock(&self.dirty))
    }

    /// Starts every watch afresh (with a full list; each store is replaced when its list
    /// is complete).
    pub fn restart(&self) {
        self.restart.send_modify(|n| *n += 1);
    }
}

/// Watches one kind into a store, keeping of each object only what `slim` leaves, telling
/// `mark` what each event changed, poking `changed` on every event and reporting to
/// `health` and `fresh`.
fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    changed: Arc<Notify>,
    (health, fresh): (Reporter, Reporter),
    mut restart: watch::Receiver<u64>,
    mut mark: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    let task = async move {
        // A restart begins a new watch with a full list; the store is replaced when the
        // list is complete, so readers never see it empty.
        'watch: loop {
            let stream = watcher::watcher(api.clone(), config.clone())
                .modify(slim)
                .default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    ev = stream.next() => match ev {
                        Some(Ok(ev)) => {
                            writer.apply_watcher_event(&ev);
                            mark(&ev);
                            // `Init` comes before the list is even asked for: only what
                            // the API server sent proves the watch works.
                            if !matches!(ev, watcher::Event::Init) {
                                health.progress();
                                fresh.progress();
                            }
                            changed.notify_one();
                        }
                        Some(Err(e)) => {
                            health.failed(&e);
                            fresh.failed(&e);
                            debug!(%e, "watch error (retrying)");
                        }
                        None => break 'watch,
                    },
                    r = restart.changed() => {
                        if r.is_err() {
                            break 'watch;
                        }
                        debug!("restarting the watch");
                        continue 'watch;
                    }
                }
            }
        }
        health.ended();
        fresh.ended();
    };
    (reader, task)
}
