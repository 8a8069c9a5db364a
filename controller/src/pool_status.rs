//! Pool status: what each IPPool's status says (usage per family, `Ready`, `Conflict`) and
//! the loop that writes it for the pools a change marked dirty. It never touches Services.

use std::time::Duration;

use ferrolb_crds::conditions::{self, ConditionContent};
use ferrolb_crds::names::{
    FIELD_MANAGER_CONTROLLER, POOL_CONDITION_CONFLICT, POOL_CONDITION_READY,
};
use ferrolb_crds::{FamilyUsage, IPPool, IPPoolStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::reconcile::Context;

/// First wait before a failed pool-status write is tried again; it doubles per failure in a
/// row up to [`RETRY_CAP`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// Writes pool status (usage, Ready, Conflict) for pools marked dirty. A write that fails
/// is tried again after a backoff, not only when some other change happens to come.
pub async fn pool_status_loop(ctx: Arc<Context>, cancel: CancellationToken) {
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    let mut failures: u32 = 0;
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let retry_at = retry.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ctx.pools_changed.notified() => {}
            _ = tokio::time::sleep_until(retry_at), if retry.is_some() => {}
        }
        // Let a burst of changes settle into one write per pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dirty: Vec<String> = ctx
            .dirty_pools
            .lock()
            .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
            .unwrap_or_default();
        let mut failed = false;
        for name in dirty {
            let Some(status) = pool_status(&ctx, &name) else {
                continue;
            };
            let current = ctx.pools.get(&ObjectRef::new(&name));
            let Some(current) = current else { continue };
            if same_pool_status(current.status.as_ref(), &status) {
                continue;
            }
            if !ctx.still_leading() {
                continue;
            }
            let patch =
                json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "status": status});
            if let Err(err) = api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER_CONTROLLER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                warn!(pool = %name, %err, "cannot write pool status; trying again");
                failed = true;
                if let Ok(mut d) = ctx.dirty_pools.lock() {
                    d.insert(name);
                }
            }
        }
        retry = if failed {
            let wait = ferrolb_crds::process::retry_delay(failures, RETRY_FIRST, RETRY_CAP);
            failures = failures.saturating_add(1);
            Some(tokio::time::Instant::now() + wait)
        } else {
            failures = 0;
            None
        };
    }
}

fn pool_status(ctx: &Context, name: &str) -> Option<IPPoolStatus> {
    let alloc = ctx.allocator.lock().ok()?;
    let report = alloc.report(name)?;
    let current = ctx.pools.get(&ObjectRef::new(name));
    let generation = current.as_ref().and_then(|p| p.metadata.generation);
    let old_conditions = current
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        ConditionContent {
            type_,
            status: ok,
            reason,
            message: &message,
            observed_generation: generation,
        }
        .build(conditions::find(&old_conditions, type_), Timestamp::now())
    };
    let pool = alloc.pool(name)?;
    let (ready, reason, message) = match (&report.invalid, &report.conflict, pool.disabled) {
        (Some(why), _, _) => (false, "InvalidSpec", why.clone()),
        (None, Some(other), _) => (
            false,
            "Conflict",
            format!("overlaps the older IPPool {other}"),
        ),
        (None, None, true) => (
            false,
            "Disabled",
            "draining: no new allocations".to_string(),
        ),
        (None, None, false) => (true, "Ready", "allocating".to_string()),
    };
    let conflict = match &report.conflict {
        Some(other) => condition(
            POOL_CONDITION_CONFLICT,
            true,
            "Overlap",
            format!("overlaps the older IPPool {other}; this pool allocates nothing"),
        ),
        None => condition(
            POOL_CONDITION_CONFLICT,
            false,
            "NoOverlap",
            "no older IPPool overlaps this one".into(),
        ),
    };
    let usage = |u: &crate::allocator::FamilyUse| FamilyUsage {
        total: u.total.to_string(),
        used: u.used.to_string(),
    };
    for (family, u) in [
        (ferrolb_crds::Family::V4, &report.v4),
        (ferrolb_crds::Family::V6, &report.v6),
    ] {
        match u {
            Some(u) => ctx
                .metrics
                .set_pool_usage(name, family, u.total.saturating_u128(), u.used),
            None => ctx.metrics.forget_pool_family(name, family),
        }
    }
    let mut status = IPPoolStatus {
        ipv4: report.v4.as_ref().map(usage),
        ipv6: report.v6.as_ref().map(usage),
        usage: None,
        conditions: vec![
            condition(POOL_CONDITION_READY, ready, reason, message),
            conflict,
        ],
    };
    status.usage = status.usage_summary();
    Some(status)
}

fn same_pool_status(current: Option<&IPPoolStatus>, new: &IPPoolStatus) -> bool {
    let Some(cur) = current else { return false };
    let strip = |cs: &[Condition]| -> Vec<(String, String, String, String)> {
        cs.iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    cur.ipv4 == new.ipv4
        && cur.ipv6 == new.ipv6
        && cur.usage == new.usage
        && strip(&cur.conditions) == strip(&new.conditions)
}
