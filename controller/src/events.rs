//! Events about Services: one `events.k8s.io/v1` Event per planned event, emitted only
//! when a reconcile changed something (the plan says which).

use ferrolb_crds::events::{NewEvent, Reporter as EventReporter};
use ferrolb_crds::names::FIELD_MANAGER_CONTROLLER;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use tracing::{info, warn};

use crate::plan;
use crate::reconcile::Context;

/// Creates one `events.k8s.io/v1` Event per planned event.
pub async fn publish(ctx: &Context, svc: &Service, events: &[plan::EventPlan]) {
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
