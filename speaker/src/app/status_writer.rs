//! The status writer: a task beside the election loop, so that API latency never delays an
//! announcement. It writes `ferrolb.io/Announced` on the Services this speaker is the
//! writer for (see `status::writer`), when the condition differs from what the Service
//! says, at a bounded rate, and an `Announcing` Event when the owner changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::conditions::ConditionContent;
use ferrolb_crds::events::{self, NewEvent, Reporter};
use ferrolb_crds::names::{CONDITION_ANNOUNCED, FIELD_MANAGER_SPEAKER, events::ANNOUNCING};
use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Metrics;
use crate::election::{Election, Service};
use crate::status;
use crate::view::View;

/// What the status writer is told, per change: a Service with the decisions on its IPs
/// (`None`: the speaker has nothing to say about it any more), or the live members (who
/// writes a condition depends on them).
#[derive(Clone, Debug)]
pub(super) enum StatusUpdate {
    Service(String, Option<Box<ServiceStatus>>),
    Members(BTreeSet<String>),
    /// What the Services this speaker reports on say of disagreeing peers (empty: none).
    Note(String),
}

#[derive(Clone, Debug)]
pub(super) struct ServiceStatus {
    service: Service,
    /// The decisions on the Service's IPs only.
    election: Election,
}

impl ServiceStatus {
    pub(super) fn of(view: &View, key: &str) -> Option<Box<ServiceStatus>> {
        let elector = view.elector();
        let service = elector.service(key)?.clone();
        let decisions = service
            .ips
            .iter()
            .filter_map(|ip| Some((*ip, elector.election().decision(*ip)?.clone())))
            .collect();
        Some(Box::new(ServiceStatus {
            service,
            election: Election {
                decisions,
                problems: Vec::new(),
            },
        }))
    }
}

/// The status writer's state: the latest word on each Service and who is live; only the
/// Services named by an update since the last turn (or whose write failed) are looked at.
#[derive(Default)]
struct StatusState {
    views: BTreeMap<String, Box<ServiceStatus>>,
    members: BTreeSet<String>,
    dirty: BTreeSet<String>,
    failed: BTreeSet<String>,
    /// What we wrote, and the resourceVersion the Service had before: while the store
    /// still shows that version it has not caught up with our write, and writing again
    /// would only repeat it. Once the Service moves on, what it says counts again.
    written: BTreeMap<String, (status::Announced, Option<String>)>,
    /// Added to every message while peers disagree (see `agreement::note`).
    note: String,
    /// When this speaker last wrote each Service's condition, and the message-only changes
    /// waiting for their turn (see `status::pace`).
    last_write: BTreeMap<String, Instant>,
    deferred: BTreeMap<String, Instant>,
}

/// Condition writes per second on average, and at once (see `status::WriteBudget`).
const WRITES_PER_SECOND: f64 = 50.0;
const WRITES_AT_ONCE: f64 = 200.0;

impl StatusState {
    fn absorb(&mut self, u: StatusUpdate) {
        match u {
            StatusUpdate::Service(key, Some(v)) => {
                self.views.insert(key.clone(), v);
                self.dirty.insert(key);
            }
            StatusUpdate::Service(key, None) => {
                // Not ours any more: the controller removes its condition.
                self.views.remove(&key);
                self.written.remove(&key);
                self.failed.remove(&key);
                self.dirty.remove(&key);
                self.last_write.remove(&key);
                self.deferred.remove(&key);
            }
            StatusUpdate::Members(m) => {
                if m != self.members {
                    self.members = m;
                    self.dirty.extend(self.views.keys().cloned());
                }
            }
            StatusUpdate::Note(n) => {
                if n != self.note {
                    self.note = n;
                    self.dirty.extend(self.views.keys().cloned());
                }
            }
        }
    }
}

/// Writes `ferrolb.io/Announced` on the Services this speaker is the writer for, when
/// it differs from what the Service says, and `Announcing` when the owner changes.
pub(super) async fn status_loop(
    client: kube::Client,
    me: String,
    services: Store<K8sService>,
    mut input: UnboundedReceiver<StatusUpdate>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut st = StatusState::default();
    let mut budget = status::WriteBudget::new(WRITES_PER_SECOND, WRITES_AT_ONCE, Instant::now());
    let mut sctp_before = false;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            u = input.recv() => match u {
                Some(u) => st.absorb(u),
                None => return,
            },
            // Writes that failed are tried again, and deferred ones whose turn came.
            _ = tick.tick() => {
                let mut failed = std::mem::take(&mut st.failed);
                st.dirty.append(&mut failed);
                let now = Instant::now();
                let due: Vec<String> = st
                    .deferred
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    st.deferred.remove(&k);
                    st.dirty.insert(k);
                }
            }
        }
        while let Ok(u) = input.try_recv() {
            st.absorb(u);
        }
        // A refusal found by the forwarder after the last update still reaches the
        // conditions.
        let sctp_refused = metrics.forwarding().is_some_and(|f| f.sctp_refused);
        if sctp_refused != sctp_before {
            sctp_before = sctp_refused;
            st.dirty.extend(st.views.keys().cloned());
        }
        for key in std::mem::take(&mut st.dirty) {
            // Stopping (after the handover): what is left unwritten, the peers write.
            if cancel.is_cancelled() {
                return;
            }
            let Some(v) = st.views.get(&key) else {
                continue;
            };
            let svc = &v.service;
            if status::writer(svc, &v.election, st.members.iter().map(String::as_str))
                != Some(me.as_str())
            {
                continue;
            }
            let mut want = status::announced(svc, &v.election, sctp_refused.then_some(me.as_str()));
            if !st.note.is_empty() {
                want.message = format!("{}. {}", want.message, st.note);
            }
            let Some(obj) = services.get(&ObjectRef::new(&svc.name).within(&svc.namespace)) else {
                continue;
            };
            let current = status::current(&obj);
            let rv = obj.metadata.resource_version.clone();
            // A spec change moves observedGeneration even when the content stays.
            let same_generation =
                current.is_some_and(|c| c.observed_generation == obj.metadata.generation);
            if (status::up_to_date(current, &want) && same_generation)
                || st
                    .written
                    .get(&key)
                    .is_some_and(|(w, before)| *w == want && *before == rv)
            {
                continue;
            }
            // A change users do not act on waits its turn; every write spends the budget.
            let now = Instant::now();
            if let Some(wait) = status::pace(current, &want, st.last_write.get(&key).copied(), now)
            {
                st.deferred.insert(key, now + wait);
                continue;
            }
            st.deferred.remove(&key);
            while let Some(wait) = budget.take(Instant::now()) {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let event = status::owner_changed(current, &want);
            match write_condition(&client, &obj, current, &want).await {
                Ok(()) => {
                    st.last_write.insert(key.clone(), Instant::now());
                    metrics.status_writes.inc();
                    info!(service = %key, status = want.status, reason = %want.reason, message = %want.message, "ferrolb.io/Announced");
                    if event {
                        publish_announcing(&client, &obj, &me, &want.message).await;
                    }
                    st.written.insert(key, (want, rv));
                }
                Err(e) => {
                    metrics.status_write_errors.inc();
                    warn!(service = %key, error = %e, "cannot write ferrolb.io/Announced");
                    st.failed.insert(key);
                }
            }
        }
    }
}

/// Longest message written into the condition.
const MAX_MESSAGE: usize = 32 * 1024;

async fn write_condition(
    client: &kube::Client,
    svc: &K8sService,
    current: Option<&Condition>,
    want: &status::Announced,
) -> Result<(), kube::Error> {
    let message: String = want.message.chars().take(MAX_MESSAGE).collect();
    let cond = ConditionContent {
        type_: CONDITION_ANNOUNCED,
        status: want.status,
        reason: &want.reason,
        message: &message,
        observed_generation: svc.metadata.generation,
    }
    .build(current, Timestamp::now());
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<K8sService> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"apiVersion": "v1", "kind": "Service", "status": {"conditions": [cond]}});
    api.patch_status(
        &svc.name_any(),
        &PatchParams::apply(FIELD_MANAGER_SPEAKER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// One `events.k8s.io/v1` Event per owner change.
async fn publish_announcing(client: &kube::Client, svc: &K8sService, me: &str, note: &str) {
    let reporter = Reporter {
        controller: format!("ferrolb.io/{FIELD_MANAGER_SPEAKER}"),
        instance: format!("{FIELD_MANAGER_SPEAKER}-{me}"),
    };
    let event = NewEvent {
        regarding: &svc.object_ref(&()),
        reason: ANNOUNCING,
        note,
        warning: false,
        action: "Announce",
    }
    .build(&reporter, Timestamp::now());
    if let Err(e) = events::publish(client, &event).await {
        warn!(%e, "cannot publish the Announcing event");
    }
}
