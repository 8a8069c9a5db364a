//! Building `events.k8s.io/v1` Events and publishing them, for both binaries.
//!
//! Each event is its own object (the usual `<object>.<hex timestamp>` name), not a series:
//! kube-runtime's `Recorder` folds events of one reason into a series that keeps the first
//! note, which would show a stale address after a move. Callers emit events on change
//! only, never on every reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// Longest note Kubernetes accepts (1 kB); longer ones are cut.
pub const MAX_NOTE: usize = 1000;

/// Who reports: `reportingController` (e.g. `ferrolb.io/ferrolb-controller`) and
/// `reportingInstance` (this process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

/// One event about one object.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent<'a> {
    pub regarding: &'a ObjectReference,
    /// One of [`crate::names::events`].
    pub reason: &'a str,
    /// What happened, for a human.
    pub note: &'a str,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// What the reporter did or failed to do (e.g. `Allocate`, `Announce`).
    pub action: &'a str,
}

impl NewEvent<'_> {
    /// The Event object, in the regarded object's namespace (`default` for cluster-scoped
    /// objects).
    pub fn build(&self, reporter: &Reporter, now: Timestamp) -> Event {
        let namespace = self
            .regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let object = self.regarding.name.as_deref().unwrap_or("object");
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}", now.as_nanosecond().unsigned_abs())),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(self.action.to_string()),
            reason: Some(self.reason.to_string()),
            note: Some(self.note.chars().take(MAX_NOTE).collect()),
            type_: Some(if self.warning { "Warning" } else { "Normal" }.to_string()),
            regarding: Some(self.regarding.clone()),
            reporting_controller: Some(reporter.controller.clone()),
            reporting_instance: Some(reporter.instance.clone()),
            ..Event::default()
        }
    }
}

/// Creates `event` (built by [`NewEvent::build`]) in its namespace.
pub async fn publish(client: &kube::Client, event: &Event) -> Result<(), kube::Error> {
    let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), event).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_reporter_and_kind() {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            ..ObjectReference::default()
        };
        let reporter = Reporter {
            controller: "ferrolb.io/ferrolb-controller".into(),
            instance: "ferrolb-controller-0_ab12".into(),
        };
        let long = "x".repeat(2 * MAX_NOTE);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ev = NewEvent {
            regarding: &regarding,
            reason: "AllocationFailed",
            note: &long,
            warning: true,
            action: "Allocate",
        }
        .build(&reporter, now);
        assert_eq!(ev.metadata.namespace.as_deref(), Some("shop"));
        assert!(ev.metadata.name.unwrap().starts_with("web."));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some("AllocationFailed"));
        assert_eq!(ev.note.unwrap().len(), MAX_NOTE);
        assert_eq!(ev.regarding, Some(regarding));
        assert_eq!(
            ev.reporting_instance.as_deref(),
            Some("ferrolb-controller-0_ab12")
        );
        assert_eq!(ev.event_time, Some(MicroTime(now)));
    }
}
