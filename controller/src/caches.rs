//! Watch wiring: the caches of Services, IPPools and Namespaces. Every replica keeps them
//! warm for as long as the process runs, leader or not, so a new leader starts from caches
//! that are already synced instead of listing everything again. Only the leader's term
//! subscribes to what changed ([`Change`]); a standby's caches just stay current.
//!
//! This module reads the API and nothing else: it never writes, and it never decides
//! anything about allocations. Each watch reports to `/healthz` for the whole process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ferrolb_crds::IPPool;
use ferrolb_crds::cache::slim;
use ferrolb_crds::health::{Health, Limits, Reporter};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::allocator::ServiceKey;
use crate::reconcile::key_of;

/// What changed in the caches, in the order the watches saw it. Every change is in its
/// store before it is sent.
#[derive(Clone, Debug)]
pub enum Change {
    /// A Service was created or changed.
    Service(Arc<Service>),
    /// A Service was deleted (it has left the store).
    ServiceDeleted(Arc<Service>),
    /// The Service watch listed everything again (after an error it could not resume
    /// from): Services held before and absent now are gone, others may have changed.
    ServicesRelisted,
    /// An IPPool was created, changed or deleted, or the pools were listed again.
    Pools,
    /// The labels of this Namespace changed.
    NamespaceLabels(String),
}

/// The three caches, and who hears about their changes.
#[derive(Clone)]
pub struct Caches {
    pub services: Store<Service>,
    pub pools: Store<IPPool>,
    pub namespaces: Store<Namespace>,
    /// Every cached Service by key, ordered by namespace, so a Namespace's Services are
    /// found without looking at any other.
    service_keys: Arc<Mutex<BTreeSet<ServiceKey>>>,
    /// The current subscriber (the leader's term), if any.
    subscriber: Arc<Mutex<Option<mpsc::UnboundedSender<Change>>>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of these is one insert, remove or assignment: consistent whatever a
    // panicking holder did.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Caches {
    /// Starts the three watches on `tasks`, each reporting to `health` (stuck once its errors
    /// keep coming for longer than `api_timeout`); they run until `cancel`.
    pub fn start(
        client: &Client,
        health: &Health,
        api_timeout: Option<Duration>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Caches {
        let (services, svc_writer) = reflector::store::<Service>();
        let (pools, pool_writer) = reflector::store::<IPPool>();
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let caches = Caches {
            services,
            pools,
            namespaces,
            service_keys: Arc::default(),
            subscriber: Arc::default(),
        };
        let limits = Limits::calling_api(api_timeout);
        let watch = |name: &str| health.register(name, limits);
        let services = caches.clone();
        let (c, client_) = (cancel.clone(), client.clone());
        tasks.spawn(until_cancelled(
            c,
            watch_forever(
                svc_writer,
                move || watch_all(&client_),
                watch("Service watch"),
                move |e| services.on_service(e),
            ),
        ));
        let pools = caches.clone();
        let (c, client_) = (cancel.clone(), client.clone());
        tasks.spawn(until_cancelled(
            c,
            watch_forever(
                pool_writer,
                move || watch_all(&client_),
                watch("IPPool watch"),
                move |e| pools.on_pool(&e),
            ),
        ));
        let namespaces = caches.clone();
        let (c, client_) = (cancel.clone(), client.clone());
        let mut labels = NamespaceLabels::default();
        tasks.spawn(until_cancelled(
            c,
            watch_forever(
                ns_writer,
                move || watch_all(&client_),
                watch("Namespace watch"),
                move |e| {
                    for ns in labels.changed(e) {
                        namespaces.send(Change::NamespaceLabels(ns));
                    }
                },
            ),
        ));
        caches
    }

    /// Waits until each cache holds its first full list. Fails only when a watch is gone.
    pub async fn synced(&self) -> Result<(), reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.pools.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await
    }

    /// Sends every change from now on to the returned receiver, and none to an earlier
    /// subscriber. Subscribe before reading the stores: then nothing is missed.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        *locked(&self.subscriber) = Some(tx);
        rx
    }

    /// The keys of the cached Services in `namespace`.
    pub fn services_in(&self, namespace: &str) -> Vec<ServiceKey> {
        let from = ServiceKey::new(namespace, "");
        locked(&self.service_keys)
            .range(from..)
            .take_while(|k| k.namespace == namespace)
            .cloned()
            .collect()
    }

    /// The keys of every cached Service.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        locked(&self.service_keys).iter().cloned().collect()
    }

    fn send(&self, change: Change) {
        let mut subscriber = locked(&self.subscriber);
        if let Some(tx) = subscriber.as_ref()
            && tx.send(change).is_err()
        {
            // The term ended: nobody listens until the next one subscribes.
            *subscriber = None;
        }
    }

    /// A Service event, already in the store.
    fn on_service(&self, event: Event<Service>) {
        match event {
            Event::Apply(s) => {
                locked(&self.service_keys).insert(key_of(&s));
                self.send(Change::Service(Arc::new(s)));
            }
            Event::Delete(s) => {
                locked(&self.service_keys).remove(&key_of(&s));
                self.send(Change::ServiceDeleted(Arc::new(s)));
            }
            Event::Init | Event::InitApply(_) => {}
            Event::InitDone => {
                // The store has just been replaced by the new list.
                let keys = self.services.state().iter().map(|s| key_of(s)).collect();
                *locked(&self.service_keys) = keys;
                self.send(Change::ServicesRelisted);
            }
        }
    }

    /// An IPPool event, already in the store.
    fn on_pool(&self, event: &Event<IPPool>) {
        if !matches!(event, Event::Init | Event::InitApply(_)) {
            self.send(Change::Pools);
        }
    }
}

/// The labels of every Namespace as last seen, to tell a label change from any other.
#[derive(Debug, Default)]
struct NamespaceLabels {
    seen: BTreeMap<String, BTreeMap<String, String>>,
    relisted: BTreeMap<String, BTreeMap<String, String>>,
}

impl NamespaceLabels {
    /// The Namespaces whose labels `event` changed (none for one seen for the first time).
    fn changed(&mut self, event: Event<Namespace>) -> Vec<String> {
        let labels = |ns: &Namespace| ns.metadata.labels.clone().unwrap_or_default();
        match event {
            Event::Apply(ns) => {
                let name = ns.name_any();
                let now = labels(&ns);
                match self.seen.insert(name.clone(), now.clone()) {
                    Some(before) if before != now => vec![name],
                    _ => Vec::new(),
                }
            }
            Event::Delete(ns) => {
                self.seen.remove(&ns.name_any());
                Vec::new()
            }
            Event::Init => {
                self.relisted.clear();
                Vec::new()
            }
            Event::InitApply(ns) => {
                self.relisted.insert(ns.name_any(), labels(&ns));
                Vec::new()
            }
            Event::InitDone => {
                let changed = self
                    .relisted
                    .iter()
                    .filter(|(name, now)| self.seen.get(*name).is_some_and(|b| b != *now))
                    .map(|(name, _)| name.clone())
                    .collect();
                self.seen = std::mem::take(&mut self.relisted);
                changed
            }
        }
    }
}

/// Delay before the watch starts over after its `failures`-th failure in a row: 1 s
/// doubling up to 30 s (the watcher's own default backoff has the same ceiling).
fn restart_delay(failures: u32) -> Duration {
    ferrolb_crds::process::retry_delay(failures, Duration::from_secs(1), Duration::from_secs(30))
}

/// Runs one watch for as long as the process needs it. Every event lands in `writer`'s
/// store first, then goes to `handle`; each reports to `health`.
///
/// After an error the watch starts over with a fresh list (after [`restart_delay`])
/// instead of resuming: a resumed watch says nothing on a quiet cluster, so `/healthz`
/// could not tell that the API is back; a list answers at once. Errors are rare (an API
/// restart, a network cut), so the lists cost little. A stream that ends without an error
/// (only in tests: the watcher never ends) marks the watch as ended.
async fn watch_forever<K, S>(
    mut writer: Writer<K>,
    mut start: impl FnMut() -> S,
    health: Reporter,
    mut handle: impl FnMut(Event<K>),
) where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut failures = 0u32;
    loop {
        let mut stream = std::pin::pin!(start());
        let failed = loop {
            match stream.next().await {
                None => break false,
                Some(Err(e)) => {
                    health.failed(&e);
                    break true;
                }
                Some(Ok(event)) => {
                    writer.apply_watcher_event(&event);
                    health.progress();
                    if matches!(event, Event::InitDone) {
                        failures = 0;
                    }
                    handle(event);
                }
            }
        };
        if !failed {
            health.ended();
            return;
        }
        tokio::time::sleep(restart_delay(failures)).await;
        failures = failures.saturating_add(1);
    }
}

/// A watch on every object of kind `K`, keeping only what ferrolb reads.
fn watch_all<K>(client: &Client) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + use<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher::watcher(api, watcher::Config::default()).modify(slim)
}

async fn until_cancelled(cancel: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = task => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ns: &str, name: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).unwrap()
    }

    fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn empty_caches() -> (
        Caches,
        reflector::store::Writer<Service>,
        reflector::store::Writer<Namespace>,
    ) {
        let (services, svc_writer) = reflector::store::<Service>();
        let (pools, _pool_writer) = reflector::store::<IPPool>();
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let caches = Caches {
            services,
            pools,
            namespaces,
            service_keys: Arc::default(),
            subscriber: Arc::default(),
        };
        (caches, svc_writer, ns_writer)
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Change>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(c) = rx.try_recv() {
            out.push(match c {
                Change::Service(s) => format!("service {}", key_of(&s)),
                Change::ServiceDeleted(s) => format!("deleted {}", key_of(&s)),
                Change::ServicesRelisted => "relisted".into(),
                Change::Pools => "pools".into(),
                Change::NamespaceLabels(ns) => format!("labels {ns}"),
            });
        }
        out
    }

    #[tokio::test]
    async fn service_changes_reach_the_subscriber_after_the_store_and_index_have_them() {
        let (caches, writer, _) = empty_caches();
        let health = Health::new();
        let mut rx = caches.subscribe();
        let events: Vec<Result<Event<Service>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(service("shop", "web"))),
            Ok(Event::InitApply(service("blog", "front"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(service("shop", "api"))),
            Ok(Event::Delete(service("shop", "web"))),
        ];
        let mut events = Some(events);
        let c = caches.clone();
        watch_forever(
            writer,
            move || futures::stream::iter(events.take().unwrap_or_default()),
            health.register("Service watch", Limits::calling_api(None)),
            move |e| c.on_service(e),
        )
        .await;
        assert_eq!(
            drain(&mut rx),
            ["relisted", "service shop/api", "deleted shop/web"]
        );
        assert_eq!(caches.services_in("shop"), [ServiceKey::new("shop", "api")]);
        assert_eq!(
            caches.services_in("blog"),
            [ServiceKey::new("blog", "front")]
        );
        assert!(
            caches.services_in("sho").is_empty(),
            "a prefix is not a namespace"
        );
        assert_eq!(caches.services.state().len(), 2);
        // The stream ended: the watch says so.
        assert_eq!(health.check()[0].to_string(), "Service watch: has stopped");
    }

    #[tokio::test]
    async fn only_a_label_change_of_a_known_namespace_is_sent() {
        let (caches, _, writer) = empty_caches();
        let mut rx = caches.subscribe();
        let events: Vec<Result<Event<Namespace>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(namespace("red", json!({"team": "red"})))),
            Ok(Event::InitApply(namespace("blue", json!({"team": "blue"})))),
            Ok(Event::InitDone),
            // Same labels (an annotation changed, say): nothing to re-examine.
            Ok(Event::Apply(namespace("red", json!({"team": "red"})))),
            Ok(Event::Apply(namespace("red", json!({"team": "blue"})))),
            // A new namespace has no Services yet.
            Ok(Event::Apply(namespace("green", json!({})))),
            // A re-list that finds blue relabelled while the watch was down.
            Ok(Event::Init),
            Ok(Event::InitApply(namespace("red", json!({"team": "blue"})))),
            Ok(Event::InitApply(namespace("blue", json!({"team": "gold"})))),
            Ok(Event::InitDone),
        ];
        let mut events = Some(events);
        let (c, mut labels) = (caches.clone(), NamespaceLabels::default());
        watch_forever(
            writer,
            move || futures::stream::iter(events.take().unwrap_or_default()),
            Health::new().register("Namespace watch", Limits::calling_api(None)),
            move |e| {
                for ns in labels.changed(e) {
                    c.send(Change::NamespaceLabels(ns));
                }
            },
        )
        .await;
        assert_eq!(drain(&mut rx), ["labels red", "labels blue"]);
    }

    #[tokio::test]
    async fn a_new_subscriber_replaces_the_old_one() {
        let (caches, _, _) = empty_caches();
        let mut old = caches.subscribe();
        let mut new = caches.subscribe();
        caches.send(Change::Pools);
        assert!(drain(&mut old).is_empty());
        assert_eq!(drain(&mut new), ["pools"]);
        drop(new);
        caches.send(Change::Pools);
        assert!(
            locked(&caches.subscriber).is_none(),
            "a dropped subscriber is forgotten"
        );
    }
}

#[cfg(test)]
mod restart_tests {
    use super::*;
    use serde_json::json;

    /// After an error the watch lists again (a fresh stream), and that list is the success
    /// `/healthz` needs to see; the first list failing is just another error.
    #[tokio::test(start_paused = true)]
    async fn after_an_error_the_watch_starts_over_and_its_list_counts_as_a_success() {
        let (store, writer) = reflector::store::<Service>();
        let health = Health::new();
        let svc = |name: &str| -> Service {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}})).unwrap()
        };
        let failure = || {
            watcher::Error::WatchFailed(kube::Error::Service(
                std::io::Error::other("connection refused").into(),
            ))
        };
        let mut starts = 0;
        let attempts: Vec<Vec<Result<Event<Service>, watcher::Error>>> = vec![
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(svc("a"))),
                Ok(Event::InitDone),
                Err(failure()),
            ],
            vec![Err(failure())],
            vec![
                Ok(Event::Init),
                Ok(Event::InitApply(svc("b"))),
                Ok(Event::InitDone),
            ],
        ];
        let mut attempts = attempts.into_iter();
        let mut seen = Vec::new();
        watch_forever(
            writer,
            || {
                starts += 1;
                futures::stream::iter(attempts.next().unwrap_or_default())
            },
            health.register(
                "Service watch",
                Limits::calling_api(Some(Duration::from_secs(300))),
            ),
            |e| seen.push(matches!(e, Event::InitDone)),
        )
        .await;
        assert_eq!(starts, 3, "two errors, two fresh starts");
        assert_eq!(
            seen.iter().filter(|d| **d).count(),
            2,
            "two lists completed"
        );
        let names: Vec<String> = store.state().iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["b"], "the second list replaced the first");
        assert_eq!(restart_delay(0), Duration::from_secs(1));
        assert_eq!(restart_delay(3), Duration::from_secs(8));
        assert_eq!(restart_delay(40), Duration::from_secs(30));
    }
}
