//! The Services that lack an address they asked for, indexed by what they wait for, so
//! that a change wakes only those it can help (pure; the term holds one behind a lock
//! taken after the allocator's).
//!
//! - A freed address wakes **one** Service: the one waiting longest on that address's
//!   pool and family. It gets a *token* for the (pool, family). When its reconcile is
//!   decided, a token it did not use (it took nothing there: its request changed, or a
//!   Service created meanwhile took the address) passes to the next waiter while the pool
//!   still has a free address, so no free address is left with waiters asleep.
//! - An address that changes hands wakes the Services that asked for it by name.
//! - An address shared under a sharing key whose holders or their terms change (a Service
//!   of that key took, joined or left it, or holds it on new terms: other ports, or
//!   sharing where it did not) wakes the Services of that key waiting for a free address
//!   of its family: they may join it now.
//! - A pool change wakes the Services whose waits it changed (the allocator is asked
//!   again for each; no API call for those it does not help).
//! - Services whose request is invalid wait for nothing but their own change and are not
//!   kept here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferrolb_crds::Family;

use crate::allocator::{Allocator, HeldIp, ServiceKey, ServiceRequest, Sharing, Wait};

type Queue = (String, Family);

#[derive(Clone, Debug)]
struct Entry {
    /// Arrival order: a Service keeps its place while it keeps waiting.
    seq: u64,
    request: ServiceRequest,
    waits: BTreeSet<Wait>,
    /// (pool, family) for which this Service was woken by a freed address and has not
    /// been decided since.
    tokens: Vec<Queue>,
}

/// The waiting Services. See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    next_seq: u64,
    entries: BTreeMap<ServiceKey, Entry>,
    /// Who waits for a free address in (pool, family), by arrival.
    queues: BTreeMap<Queue, BTreeMap<u64, ServiceKey>>,
    /// Who asked for an address by name.
    by_address: BTreeMap<IpAddr, BTreeSet<ServiceKey>>,
    /// Who may share under a key and waits for a free address of a family: a Service of
    /// the same key taking, joining or leaving an address of that family may let it join.
    by_sharing: BTreeMap<(String, Family), BTreeSet<ServiceKey>>,
}

impl Pending {
    pub fn new() -> Pending {
        Pending::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &ServiceKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Records what a reconcile decided for `key` and returns the Services to wake.
    ///
    /// `request` is the Service's request when it is ours and valid (`None` when it is
    /// not ours any more, deleted, or invalid); `before` and `after` are what it held
    /// before and after the decision, and `terms_before` the sharing terms it held them
    /// under before ([`Allocator::sharing_of`]). Call with the allocator in its
    /// post-decision state.
    pub fn decided(
        &mut self,
        alloc: &Allocator,
        key: &ServiceKey,
        request: Option<&ServiceRequest>,
        (before, terms_before): (&[HeldIp], Option<&Sharing>),
        after: &[HeldIp],
    ) -> BTreeSet<ServiceKey> {
        let removed = self.remove_entry(key);
        let waits = request.map(|r| alloc.waits(r)).unwrap_or_default();
        if let Some(req) = request.filter(|_| !waits.is_empty()) {
            self.insert(key, req.clone(), waits, removed.seq);
        }
        let mut wake = BTreeSet::new();
        // What it took, or now holds on other terms (it came to share, or changed its
        // ports), under a sharing key: others of that key may join it now.
        if let Some(sh) = request.and_then(|r| r.sharing.as_ref()) {
            let same_terms = terms_before == Some(sh);
            for h in after
                .iter()
                .filter(|h| !same_terms || !before.iter().any(|b| b.ip == h.ip))
            {
                if let Some(keys) = self.by_sharing.get(&(sh.key.clone(), Family::of(h.ip))) {
                    wake.extend(keys.iter().cloned());
                }
            }
        }
        // Tokens it used are spent; the others go on to the next waiter. Joining an address
        // others hold (sharing) spends none: the free address is still free.
        let mut took: Vec<Queue> = after
            .iter()
            .filter(|h| !before.iter().any(|b| b.ip == h.ip))
            .filter(|h| alloc.holders(h.ip).len() == 1)
            .map(|h| (h.pool.clone(), Family::of(h.ip)))
            .collect();
        let mut unused = Vec::new();
        for q in removed.tokens {
            match took.iter().position(|t| *t == q) {
                Some(i) => drop(took.swap_remove(i)),
                None => unused.push(q),
            }
        }
        wake.extend(self.pass_on(alloc, key, unused));
        // What it let go of.
        for h in before {
            if after.iter().any(|a| a.ip == h.ip) {
                continue;
            }
            wake.extend(self.address_changed(alloc, h.ip));
        }
        wake.remove(key);
        wake
    }

    /// A Service was deleted after releasing `released`; returns the Services to wake.
    pub fn deleted(
        &mut self,
        alloc: &Allocator,
        key: &ServiceKey,
        released: &[IpAddr],
    ) -> BTreeSet<ServiceKey> {
        let removed = self.remove_entry(key);
        let mut wake = self.pass_on(alloc, key, removed.tokens);
        for ip in released {
            wake.extend(self.address_changed(alloc, *ip));
        }
        wake
    }

    /// The pools changed: the Services whose waits are not what they were.
    pub fn pools_changed(&mut self, alloc: &Allocator) -> BTreeSet<ServiceKey> {
        self.entries
            .iter()
            .filter(|(_, e)| alloc.waits(&e.request) != e.waits)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `ip` changed hands: wakes who asked for it; when it is still shared, the waiters of
    /// its sharing key (a port it used may be free now); when it is now free, the longest
    /// waiter of each pool that hands it out.
    fn address_changed(&mut self, alloc: &Allocator, ip: IpAddr) -> BTreeSet<ServiceKey> {
        let mut wake: BTreeSet<ServiceKey> = self.by_address.get(&ip).cloned().unwrap_or_default();
        if let Some(k) = alloc.sharing_key(ip)
            && let Some(keys) = self.by_sharing.get(&(k.to_string(), Family::of(ip)))
        {
            wake.extend(keys.iter().cloned());
        }
        if alloc.holders(ip).is_empty() {
            for pool in alloc.pools_allocating(ip) {
                wake.extend(self.give_token(&(pool, Family::of(ip)), None));
            }
        }
        wake
    }

    /// Tokens `from` did not use go to the next waiter of each (pool, family) that still
    /// has room.
    fn pass_on(
        &mut self,
        alloc: &Allocator,
        from: &ServiceKey,
        tokens: Vec<Queue>,
    ) -> BTreeSet<ServiceKey> {
        tokens
            .into_iter()
            .filter(|q| alloc.has_free(&q.0, q.1))
            .filter_map(|q| self.give_token(&q, Some(from)))
            .collect()
    }

    /// Gives a token for `q` to its longest waiter without one (other than `not`).
    fn give_token(&mut self, q: &Queue, not: Option<&ServiceKey>) -> Option<ServiceKey> {
        let waiters = self.queues.get(q)?;
        let key = waiters.values().find(|k| {
            Some(*k) != not && self.entries.get(*k).is_some_and(|e| !e.tokens.contains(q))
        })?;
        let key = key.clone();
        if let Some(e) = self.entries.get_mut(&key) {
            e.tokens.push(q.clone());
        }
        Some(key)
    }

    fn insert(
        &mut self,
        key: &ServiceKey,
        request: ServiceRequest,
        waits: BTreeSet<Wait>,
        seq: Option<u64>,
    ) {
        let seq = seq.unwrap_or_else(|| {
            self.next_seq += 1;
            self.next_seq
        });
        for w in &waits {
            match w {
                Wait::Free(pool, f) => {
                    self.queues
                        .entry((pool.clone(), *f))
                        .or_default()
                        .insert(seq, key.clone());
                    if let Some(sh) = &request.sharing {
                        self.by_sharing
                            .entry((sh.key.clone(), *f))
                            .or_default()
                            .insert(key.clone());
                    }
                }
                Wait::Address(ip) => {
                    self.by_address.entry(*ip).or_default().insert(key.clone());
                }
                Wait::Pools(..) => {}
            }
        }
        self.entries.insert(
            key.clone(),
            Entry {
                seq,
                request,
                waits,
                tokens: Vec::new(),
            },
        );
    }

    /// Takes `key` out of every index; returns its place and tokens.
    fn remove_entry(&mut self, key: &ServiceKey) -> Removed {
        let Some(e) = self.entries.remove(key) else {
            return Removed::default();
        };
        for w in &e.waits {
            match w {
                Wait::Free(pool, f) => {
                    let q = (pool.clone(), *f);
                    if let Some(m) = self.queues.get_mut(&q) {
                        m.remove(&e.seq);
                        if m.is_empty() {
                            self.queues.remove(&q);
                        }
                    }
                    if let Some(sh) = &e.request.sharing {
                        let k = (sh.key.clone(), *f);
                        if let Some(set) = self.by_sharing.get_mut(&k) {
                            set.remove(key);
                            if set.is_empty() {
                                self.by_sharing.remove(&k);
                            }
                        }
                    }
                }
                Wait::Address(ip) => {
                    if let Some(s) = self.by_address.get_mut(ip) {
                        s.remove(key);
                        if s.is_empty() {
                            self.by_address.remove(ip);
                        }
                    }
                }
                Wait::Pools(..) => {}
            }
        }
        Removed {
            seq: Some(e.seq),
            tokens: e.tokens,
        }
    }
}

#[derive(Default)]
struct Removed {
    seq: Option<u64>,
    tokens: Vec<Queue>,
}

#[cfg(test)]
mod tests;
