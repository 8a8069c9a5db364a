//! Restore: rebuilds every allocation from Service status, oldest Service first, before the
//! controller allocates anything new (state is derived from the cluster, not kept beside it).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use tracing::info;

use crate::Error;
use crate::allocator::ServiceKey;
use crate::reconcile::{Context, created, key_of, lock};
use crate::service::{self, Handling};

/// Rebuilds allocations from Service status, oldest Service first, before anything new is
/// allocated. Refused claims (two Services on one address) are re-examined afterwards,
/// which moves the newer one.
pub fn restore(ctx: &Context, services: &Store<Service>) -> Result<Vec<ServiceKey>, Error> {
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
