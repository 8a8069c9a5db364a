//! Pool sync: brings the allocator's pools in line with the IPPool cache and says which
//! Services and pool statuses a change touches. It owns the record of which pool specs the
//! allocator has been given, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferrolb_crds::IPPool;
use kube::ResourceExt;

use crate::Error;
use crate::allocator::ServiceKey;
use crate::allocator::pool::Pool;
use crate::reconcile::{Context, created, lock};

/// Brings the allocator's pools in line with the IPPool store; returns the Services to
/// look at again and the pools whose status may change.
pub fn sync_pools(
    ctx: &Context,
    known: &mut BTreeMap<String, (Option<i64>, ferrolb_crds::IPPoolSpec)>,
) -> Result<(BTreeSet<ServiceKey>, Vec<String>), Error> {
    let mut alloc = lock(&ctx.allocator)?;
    let mut affected = BTreeSet::new();
    let mut changed = Vec::new();
    let current: BTreeMap<String, Arc<IPPool>> = ctx
        .pools
        .state()
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    for (name, p) in &current {
        let entry = (created(&p.metadata), p.spec.clone());
        if known.get(name) == Some(&entry) {
            continue;
        }
        affected.extend(alloc.set_pool(Pool::from_spec(name, entry.0, &entry.1)));
        known.insert(name.clone(), entry);
        changed.push(name.clone());
    }
    let gone: Vec<String> = known
        .keys()
        .filter(|n| !current.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        affected.extend(alloc.remove_pool(&name));
        known.remove(&name);
        ctx.metrics.forget_pool(&name);
        changed.push(name);
    }
    if !changed.is_empty() {
        // A pool change can end a conflict elsewhere: every pool's status may move.
        changed.extend(alloc.pool_names().map(str::to_string));
    }
    Ok((affected, changed))
}
