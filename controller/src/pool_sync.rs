//! Pool sync: brings the allocator's pools in line with the IPPool cache and says which
//! Services and pool statuses a change touches. It owns the record of which pool specs the
//! allocator has been given, and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferrolb_crds::{IPPool, IPPoolSpec};
use kube::ResourceExt;

use crate::Error;
use crate::allocator::ServiceKey;
use crate::allocator::pool::Pool;
use crate::reconcile::{Context, created, lock};

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolChanges {
    /// Services holding an address in a pool that changed or went away: they need another
    /// look.
    pub affected: BTreeSet<ServiceKey>,
    /// Pools whose status may say something else now.
    pub statuses: Vec<String>,
}

impl PoolChanges {
    pub fn is_empty(&self) -> bool {
        self.affected.is_empty() && self.statuses.is_empty()
    }
}

/// The pool specs the allocator has been given in this term. There is one per term: the
/// restore and every later sync go through it, so no pool is given twice.
#[derive(Debug, Default)]
pub struct PoolSync {
    known: BTreeMap<String, (Option<i64>, IPPoolSpec)>,
}

impl PoolSync {
    /// Brings the allocator's pools in line with the IPPool cache.
    pub fn sync(&mut self, ctx: &Context) -> Result<PoolChanges, Error> {
        let mut alloc = lock(&ctx.allocator)?;
        let mut changed = Vec::new();
        let current: BTreeMap<String, Arc<IPPool>> = ctx
            .pools
            .state()
            .into_iter()
            .map(|p| (p.name_any(), p))
            .collect();
        let mut set = Vec::new();
        for (name, p) in &current {
            let entry = (created(&p.metadata), p.spec.clone());
            if self.known.get(name) == Some(&entry) {
                continue;
            }
            set.push(Pool::from_spec(name, entry.0, &entry.1));
            self.known.insert(name.clone(), entry);
            changed.push(name.clone());
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|n| !current.contains_key(*n))
            .cloned()
            .collect();
        for name in &gone {
            self.known.remove(name);
            ctx.metrics.forget_pool(name);
        }
        // One batch, so the overlaps are judged once however many pools changed (a leader
        // start gives every pool at once).
        let affected = if set.is_empty() && gone.is_empty() {
            BTreeSet::new()
        } else {
            alloc.apply_pools(set, &gone)
        };
        changed.extend(gone);
        if !changed.is_empty() {
            // A pool change can end a conflict elsewhere: every pool's status may move.
            changed.extend(alloc.pool_names().map(str::to_string));
        }
        Ok(PoolChanges {
            affected,
            statuses: changed,
        })
    }
}
