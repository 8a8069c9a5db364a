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
use ferrolb_crds::process::tasks::Tasks;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, mpsc, watch};
use tracing::info;

use crate::allocator::ServiceKey;
use crate::catch_up::{prove_current, revision};
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
    /// Where each watch stands, to prove a cache current before a leader trusts it.
    service_progress: Arc<Progress>,
    pool_progress: Arc<Progress>,
    namespace_progress: Arc<Progress>,
}

/// Where one watch stands: the newest revision its store holds, how many full lists it
/// has completed, and a way to make it list again.
#[derive(Debug)]
pub struct Progress {
    applied: watch::Sender<u64>,
    lists: watch::Sender<u64>,
    relist: Notify,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            applied: watch::Sender::new(0),
            lists: watch::Sender::new(0),
            relist: Notify::new(),
        }
    }
}

impl Progress {
    /// The newest revision the store holds: every change up to it is in the store.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn advance(&self, revision: u64) {
        self.applied.send_if_modified(|a| {
            let newer = revision > *a;
            *a = (*a).max(revision);
            newer
        });
    }

    /// Makes the watch list everything again and waits until that list is in the store.
    pub async fn list_again(&self) {
        let mut lists = self.lists.subscribe();
        let before = *lists.borrow_and_update();
        self.relist.notify_one();
        // Fails only when the watch is gone, and then nothing will list again.
        let _ = lists.wait_for(|n| *n > before).await;
    }

    /// Proves the store holds every change made before this call, or lists again.
    async fn catch_up<K>(&self, api: &Api<K>, kind: &'static str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let started = tokio::time::Instant::now();
        match prove_current(api, self.applied(), CATCH_UP_WAIT).await {
            Ok(waited) => info!(
                kind,
                waited_for = waited,
                took = ?started.elapsed(),
                "cache proven current"
            ),
            Err(why) => {
                info!(kind, reason = %why, "cache not proven current; listing it again");
                self.list_again().await;
                info!(kind, took = ?started.elapsed(), "listed again");
            }
        }
    }
}

/// How long a new leader waits for a watch to apply the changes it is shown to lack, before
/// it lists that kind again instead.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// The revision of an object as a number (0 when it has none or it is not a number: such an
/// object never proves a cache current, see [`crate::catch_up`]).
fn revision_of<K: kube::Resource>(obj: &K) -> u64 {
    revision(obj.meta().resource_version.as_deref()).unwrap_or(0)
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
    /// Starts the three watches as named tasks of `tasks`, each reporting to `health`
    /// (stuck once its errors keep coming for longer than `api_timeout`); they run until
    /// the tasks are told to stop.
    pub fn start(
        client: &Client,
        health: &Health,
        api_timeout: Option<Duration>,
        tasks: &Tasks,
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
            service_progress: Arc::default(),
            pool_progress: Arc::default(),
            namespace_progress: Arc::default(),
        };
        let limits = Limits::calling_api(api_timeout);
        let watch = |name: &str| health.register(name, limits);
        let services = caches.clone();
        let client_ = client.clone();
        tasks.spawn_until_stop(
            "Service watch",
            watch_forever(
                svc_writer,
                move || watch_all(&client_),
                watch("Service watch"),
                caches.service_progress.clone(),
                move |e| services.on_service(e),
            ),
        );
        let pools = caches.clone();
        let client_ = client.clone();
        tasks.spawn_until_stop(
            "IPPool watch",
            watch_forever(
                pool_writer,
                move || watch_all(&client_),
                watch("IPPool watch"),
                caches.pool_progress.clone(),
                move |e| pools.on_pool(&e),
            ),
        );
        let namespaces = caches.clone();
        let client_ = client.clone();
        let mut labels = NamespaceLabels::default();
        tasks.spawn_until_stop(
            "Namespace watch",
            watch_forever(
                ns_writer,
                move || watch_all(&client_),
                watch("Namespace watch"),
                caches.namespace_progress.clone(),
                move |e| {
                    for ns in labels.changed(e) {
                        namespaces.send(Change::NamespaceLabels(ns));
                    }
                },
            ),
        );
        caches
    }

    /// Waits until each cache holds its first full list. Fails only when a watch is gone.
    pub async fn synced(&self) -> Result<(), reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.pools.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await
    }

    /// Before a new leader restores from the caches: proves each one holds every change
    /// made before this call (waiting for a lagging watch to deliver what it lacks), or
    /// lists that kind again. See [`crate::catch_up`].
    pub async fn catch_up(&self, client: &Client) {
        let services = Api::<Service>::all(client.clone());
        let pools = Api::<IPPool>::all(client.clone());
        let namespaces = Api::<Namespace>::all(client.clone());
        tokio::join!(
            self.service_progress.catch_up(&services, "Service"),
            self.pool_progress.catch_up(&pools, "IPPool"),
            self.namespace_progress.catch_up(&namespaces, "Namespace"),
        );
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
/// store first, then goes to `handle`; each reports to `health`, and `progress` learns the
/// newest revision the store holds (a list's only once the whole list is in).
///
/// After an error the watch starts over with a fresh list (after [`restart_delay`])
/// instead of resuming: a resumed watch says nothing on a quiet cluster, so `/healthz`
/// could not tell that the API is back; a list answers at once. Errors are rare (an API
/// restart, a network cut), so the lists cost little. Asked through `progress`, it starts
/// over at once. A stream that ends without an error (only in tests: the watcher never
/// ends) marks the watch as ended.
async fn watch_forever<K, S>(
    mut writer: Writer<K>,
    mut start: impl FnMut() -> S,
    health: Reporter,
    progress: Arc<Progress>,
    mut handle: impl FnMut(Event<K>),
) where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    enum End {
        Ended,
        Failed,
        Asked,
    }
    let mut failures = 0u32;
    loop {
        let mut stream = std::pin::pin!(start());
        let mut listing = 0u64;
        let end = loop {
            let next = tokio::select! {
                biased;
                () = progress.relist.notified() => break End::Asked,
                next = stream.next() => next,
            };
            match next {
                None => break End::Ended,
                Some(Err(e)) => {
                    health.failed(&e);
                    break End::Failed;
                }
                Some(Ok(event)) => {
                    writer.apply_watcher_event(&event);
                    health.progress();
                    match &event {
                        Event::Init => listing = 0,
                        Event::InitApply(o) => listing = listing.max(revision_of(o)),
                        Event::InitDone => {
                            failures = 0;
                            progress.advance(listing);
                            progress.lists.send_modify(|n| *n += 1);
                        }
                        Event::Apply(o) | Event::Delete(o) => progress.advance(revision_of(o)),
                    }
                    handle(event);
                }
            }
        };
        match end {
            End::Ended => {
                health.ended();
                return;
            }
            End::Asked => {}
            End::Failed => {
                tokio::time::sleep(restart_delay(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
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
            service_progress: Arc::default(),
            pool_progress: Arc::default(),
            namespace_progress: Arc::default(),
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
            caches.service_progress.clone(),
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
            Arc::default(),
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
    use tokio_stream::wrappers::UnboundedReceiverStream;

    fn versioned(name: &str, rv: &str) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}),
        )
        .unwrap()
    }

    /// The applied revision covers a list only once the whole list is in the store, then
    /// follows each change; asked to, the watch starts over with a fresh list at once
    /// (no error, no back-off) and the asker learns when that list is in.
    #[tokio::test(start_paused = true)]
    async fn progress_follows_what_the_store_holds_and_a_relist_can_be_asked_for() {
        let (store, writer) = reflector::store::<Service>();
        let health = Health::new();
        let progress = Arc::new(Progress::default());
        let mut applied = progress.applied();
        let (tx, rx) = mpsc::unbounded_channel::<Result<Event<Service>, watcher::Error>>();
        let mut rx = Some(rx);
        let starts = Arc::new(Mutex::new(0));
        let task = {
            let (progress, starts) = (progress.clone(), starts.clone());
            tokio::spawn(watch_forever(
                writer,
                move || {
                    *locked(&starts) += 1;
                    // The first start reads the test's events; a restart gets a fresh list.
                    match rx.take() {
                        Some(rx) => UnboundedReceiverStream::new(rx).boxed(),
                        None => futures::stream::iter(vec![
                            Ok(Event::Init),
                            Ok(Event::InitApply(versioned("a", "40"))),
                            Ok(Event::InitDone),
                        ])
                        .chain(futures::stream::pending())
                        .boxed(),
                    }
                },
                health.register("Service watch", Limits::calling_api(None)),
                progress,
                |_| {},
            ))
        };
        for e in [
            Event::Init,
            Event::InitApply(versioned("a", "7")),
            Event::InitApply(versioned("b", "9")),
        ] {
            tx.send(Ok(e)).unwrap();
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            *applied.borrow_and_update(),
            0,
            "the list is not in the store yet"
        );
        tx.send(Ok(Event::InitDone)).unwrap();
        applied.wait_for(|a| *a == 9).await.unwrap();
        tx.send(Ok(Event::Apply(versioned("a", "12")))).unwrap();
        applied.wait_for(|a| *a == 12).await.unwrap();
        assert_eq!(store.state().len(), 2);

        progress.list_again().await;
        assert_eq!(*locked(&starts), 2, "one fresh start, at once");
        assert_eq!(*progress.applied().borrow(), 40);
        assert_eq!(store.state().len(), 1, "the new list replaced the store");
        assert!(health.check().is_empty(), "asking is not a failure");
        task.abort();
    }

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
            Arc::default(),
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
