//! The allocator: which Service holds which LoadBalancer IP. Pure and synchronous: pools
//! and Service requests in, decisions out; no clock, no client.
//!
//! Invariants (property-tested below):
//! - an IP is held by two Services only when they validly share it;
//! - every held IP lies in an existing pool;
//! - the same sequence of inputs gives the same allocations;
//! - cost per operation grows with the number of allocations and pools, never with a
//!   pool's size: free addresses are found through [`runs::UsedRuns`].

pub mod count;
pub mod pool;
pub mod runs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ferrolb_crds::Family;
use ferrolb_crds::address::{ip_to_u128, u128_to_ip};
use ferrolb_crds::names::AllocationReason;
use ferrolb_crds::overlap::Overlaps;

pub use count::Count;
pub use pool::{Pool, PoolAge};
use runs::UsedRuns;

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: &str, name: &str) -> ServiceKey {
        ServiceKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// A protocol/port pair of a Service, for sharing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: String,
    pub port: u16,
}

/// What a Service that may share its IP brings to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharing {
    /// `ferrolb.io/allow-shared-ip`.
    pub key: String,
    pub ports: BTreeSet<PortKey>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `spec.selector` (compared for Local Services).
    pub selector: BTreeMap<String, String>,
}

/// Everything the allocator needs to know about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    pub labels: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
    /// `spec.ipFamilies`, in order.
    pub families: Vec<Family>,
    pub policy: FamilyPolicy,
    /// Requested IPs, at most one per family.
    pub requested: Vec<IpAddr>,
    /// `ferrolb.io/ip-pool`.
    pub pool: Option<String>,
    pub sharing: Option<Sharing>,
}

impl ServiceRequest {
    /// The families this Service should get an address of, in preference order.
    pub fn wanted_families(&self) -> Vec<Family> {
        let mut fams: Vec<Family> = Vec::new();
        for f in &self.families {
            if !fams.contains(f) {
                fams.push(*f);
            }
        }
        if fams.is_empty() {
            fams.push(Family::V4);
        }
        if self.policy == FamilyPolicy::SingleStack {
            fams.truncate(1);
        }
        fams
    }

    fn requested_for(&self, family: Family) -> Option<IpAddr> {
        self.requested
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }
}

/// Why a family could not be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: AllocationReason,
    pub message: String,
    /// The failure comes from what other Services hold (an exhausted pool, a requested
    /// address taken or not shareable): it may end without any change to this Service or
    /// the pools, and it may begin the same way.
    pub crowded: bool,
}

impl Failure {
    fn new(reason: AllocationReason, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            message: message.into(),
            crowded: false,
        }
    }

    fn crowded(reason: AllocationReason, message: impl Into<String>) -> Failure {
        Failure {
            crowded: true,
            ..Failure::new(reason, message)
        }
    }
}

/// One held address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldIp {
    pub ip: IpAddr,
    pub pool: String,
}

/// The result of [`Allocator::ensure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// What the Service holds now, in its family order.
    pub ips: Vec<HeldIp>,
    /// Addresses it held before and no longer holds, each with the reason it lost it.
    pub released: Vec<(IpAddr, String)>,
    /// The first family that could not be served, if any.
    pub failure: Option<Failure>,
    /// The Service requires every family it names (RequireDualStack) and holds only some:
    /// what it holds is kept, but it is not served as asked.
    pub incomplete: bool,
}

impl Outcome {
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|h| h.ip).collect()
    }
}

/// The Services holding one IP, sorted by key. Almost always one, so a vector: a map
/// would allocate a whole tree node per address.
#[derive(Clone, Debug, Default)]
struct Holders(Vec<(ServiceKey, Option<Sharing>)>);

impl Holders {
    fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.0.iter().map(|(k, _)| k)
    }
    fn values(&self) -> impl Iterator<Item = &Option<Sharing>> {
        self.0.iter().map(|(_, v)| v)
    }
    fn iter(&self) -> impl Iterator<Item = (&ServiceKey, &Option<Sharing>)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    #[cfg(test)]
    fn contains_key(&self, key: &ServiceKey) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
    fn insert(&mut self, key: ServiceKey, sharing: Option<Sharing>) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = sharing,
            Err(i) => self.0.insert(i, (key, sharing)),
        }
    }
    fn remove(&mut self, key: &ServiceKey) -> Option<Option<Sharing>> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(self.0.remove(i).1)
    }
}

/// Who holds one IP.
#[derive(Clone, Debug, Default)]
struct IpEntry {
    holders: Holders,
}

/// What one Service holds: at most one address per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Holding {
    v4: Option<HeldIp>,
    v6: Option<HeldIp>,
}

impl Holding {
    fn slot(&mut self, f: Family) -> &mut Option<HeldIp> {
        match f {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
    fn get(&self, f: &Family) -> Option<&HeldIp> {
        match f {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }
    fn insert(&mut self, f: Family, h: HeldIp) {
        *self.slot(f) = Some(h);
    }
    fn iter(&self) -> impl Iterator<Item = (Family, &HeldIp)> {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)]
            .into_iter()
            .filter_map(|(f, h)| h.as_ref().map(|h| (f, h)))
    }
    fn values(&self) -> impl Iterator<Item = &HeldIp> {
        self.iter().map(|(_, h)| h)
    }
    fn into_values(self) -> impl Iterator<Item = HeldIp> {
        [self.v4, self.v6].into_iter().flatten()
    }
}

/// Can `svc` hold `ip` alongside its current holders?
enum Compat {
    Ok,
    Taken(ServiceKey),
    SharingConflict(String),
}

impl IpEntry {
    fn compat(&self, key: &ServiceKey, sharing: Option<&Sharing>) -> Compat {
        let others: Vec<(&ServiceKey, &Option<Sharing>)> =
            self.holders.iter().filter(|(k, _)| *k != key).collect();
        let Some((first_key, _)) = others.first() else {
            return Compat::Ok;
        };
        let Some(mine) = sharing else {
            return Compat::Taken((*first_key).clone());
        };
        for (k, theirs) in &others {
            let Some(theirs) = theirs else {
                return Compat::Taken((*k).clone());
            };
            if theirs.key != mine.key {
                return Compat::Taken((*k).clone());
            }
            if theirs.local != mine.local {
                return Compat::SharingConflict(format!(
                    "{k} has a different externalTrafficPolicy"
                ));
            }
            if mine.local && theirs.selector != mine.selector {
                return Compat::SharingConflict(format!(
                    "{k} uses externalTrafficPolicy Local with a different pod selector"
                ));
            }
            if let Some(p) = theirs.ports.intersection(&mine.ports).next() {
                return Compat::SharingConflict(format!(
                    "{k} already uses {}/{}",
                    p.protocol, p.port
                ));
            }
        }
        Compat::Ok
    }
}

#[derive(Clone, Debug)]
struct PoolState {
    pool: Pool,
    /// The older pool this one overlaps, if any: then it allocates nothing.
    conflict: Option<String>,
    used_v4: UsedRuns,
    used_v6: UsedRuns,
}

impl PoolState {
    fn used(&self, f: Family) -> &UsedRuns {
        match f {
            Family::V4 => &self.used_v4,
            Family::V6 => &self.used_v6,
        }
    }

    fn used_mut(&mut self, f: Family) -> &mut UsedRuns {
        match f {
            Family::V4 => &mut self.used_v4,
            Family::V6 => &mut self.used_v6,
        }
    }

    fn allocates(&self) -> bool {
        self.pool.allocates() && self.conflict.is_none()
    }

    /// The lowest address of family `f` this pool can hand out now.
    fn first_free(&self, f: Family) -> Option<IpAddr> {
        let used = self.used(f);
        for b in self.pool.blocks_of(f) {
            // Anycast addresses are few (one per IPv6 CIDR entry): step over them.
            let mut from = b.first_u128();
            while let Some(n) = used.lowest_free(from, b.last_u128()) {
                if !self.pool.is_anycast(f, n) {
                    if let Some(ip) = u128_to_ip(f, n) {
                        return Some(ip);
                    }
                    break;
                }
                match n.checked_add(1) {
                    Some(next) if next <= b.last_u128() => from = next,
                    _ => break,
                }
            }
        }
        None
    }
}

/// What a Service that lacks an address for some family is waiting for: only these
/// changes can let it make progress (see [`Allocator::waits`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Wait {
    /// A free address of this family in this pool (every pool it may use is full).
    Free(String, Family),
    /// The address it asked for, held by another Service (or shared on other terms),
    /// to change hands.
    Address(IpAddr),
    /// A pool to appear or change so that this family can be served (no pool may give it
    /// this family, or the address it asked for lies in none it may use), with the reason
    /// the Service is told. Per family, so that a change serving one family and not the
    /// other changes the waits; with the reason, so that a change that alters what the
    /// Service's condition would say (the pool it names was deleted, not just disabled)
    /// changes them too, and the condition never describes pools that are gone.
    Pools(Family, String),
}

/// Per-family use of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyUse {
    pub total: Count,
    pub used: u128,
}

/// What a pool's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolReport {
    pub v4: Option<FamilyUse>,
    pub v6: Option<FamilyUse>,
    /// Older pool it overlaps.
    pub conflict: Option<String>,
    /// Why its spec is unusable.
    pub invalid: Option<String>,
}

/// The allocation state of the whole cluster.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    pools: BTreeMap<String, PoolState>,
    ips: BTreeMap<IpAddr, IpEntry>,
    held: BTreeMap<ServiceKey, Holding>,
    /// Sharing key -> addresses held under it, so joining a shared address does not scan
    /// every allocation.
    shared: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Which pool governs each address: the rule the speaker follows too.
    overlaps: Overlaps,
}

impl Allocator {
    pub fn new() -> Allocator {
        Allocator::default()
    }

    // ----- pools -----

    /// Adds or replaces a pool. Returns the Services that may need a second look
    /// ([`Allocator::apply_pools`]).
    pub fn set_pool(&mut self, pool: Pool) -> BTreeSet<ServiceKey> {
        self.apply_pools(vec![pool], &[])
    }

    /// Removes a pool. Returns the Services that may need a second look.
    pub fn remove_pool(&mut self, name: &str) -> BTreeSet<ServiceKey> {
        self.apply_pools(Vec::new(), &[name.to_string()])
    }

    /// Adds or replaces the pools `set` and removes those named in `removed`, judging the
    /// overlaps once for the whole batch. Returns the Services that may need a second
    /// look: those holding an address in the old or new range of a pool that changed, and
    /// those holding an address in a pool that entered or left Conflict.
    pub fn apply_pools(&mut self, set: Vec<Pool>, removed: &[String]) -> BTreeSet<ServiceKey> {
        let mut affected = BTreeSet::new();
        for name in removed {
            affected.extend(self.holders_in_pool(name));
            self.pools.remove(name);
        }
        for pool in set {
            let name = pool.name.clone();
            affected.extend(self.holders_in_pool(&name));
            let state = PoolState {
                used_v4: UsedRuns::new(pool.skips(Family::V4)),
                used_v6: UsedRuns::new(false),
                pool,
                conflict: None,
            };
            self.pools.insert(name.clone(), state);
            self.rebuild_usage(&name);
            affected.extend(self.holders_in_pool(&name));
        }
        for name in self.recompute_conflicts() {
            affected.extend(self.holders_in_pool(&name));
        }
        affected
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name).map(|p| &p.pool)
    }

    pub fn pool_names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// Capacity, use and conflicts of one pool. A pool in Conflict governs nothing
    /// ([`ferrolb_crds::overlap`]), so it uses nothing: the addresses in its range belong
    /// to the older pool and are counted there.
    pub fn report(&self, name: &str) -> Option<PoolReport> {
        let st = self.pools.get(name)?;
        let fam = |f: Family| {
            // An anycast address a Service kept is in use, so it counts in the total too.
            let kept_anycast = st
                .pool
                .anycast_numbers(f)
                .filter(|n| st.used(f).contains(*n))
                .count();
            st.pool.has_family(f).then(|| FamilyUse {
                total: st
                    .pool
                    .capacity(f)
                    .plus(u128::try_from(kept_anycast).unwrap_or(u128::MAX)),
                used: if st.conflict.is_some() {
                    0
                } else {
                    st.used(f).count()
                },
            })
        };
        Some(PoolReport {
            v4: fam(Family::V4),
            v6: fam(Family::V6),
            conflict: st.conflict.clone(),
            invalid: st.pool.invalid.clone(),
        })
    }

    fn holders_in_pool(&self, name: &str) -> BTreeSet<ServiceKey> {
        let Some(st) = self.pools.get(name) else {
            return BTreeSet::new();
        };
        let mut out = BTreeSet::new();
        for b in st.pool.blocks() {
            let (Some(lo), Some(hi)) = (
                u128_to_ip(b.family(), b.first_u128()),
                u128_to_ip(b.family(), b.last_u128()),
            ) else {
                continue;
            };
            for (_, e) in self.ips.range(lo..=hi) {
                out.extend(e.holders.keys().cloned());
            }
        }
        out
    }

    fn rebuild_usage(&mut self, name: &str) {
        let Some(st) = self.pools.get_mut(name) else {
            return;
        };
        for b in st.pool.blocks().to_vec() {
            let (Some(lo), Some(hi)) = (
                u128_to_ip(b.family(), b.first_u128()),
                u128_to_ip(b.family(), b.last_u128()),
            ) else {
                continue;
            };
            for ip in self.ips.range(lo..=hi).map(|(ip, _)| *ip) {
                st.used_mut(b.family()).insert(ip_to_u128(ip));
            }
        }
    }

    /// Judges the overlaps of every pool afresh (a sweep over their blocks: cost grows
    /// with the number of blocks, not with pairs of pools) and returns the pools whose
    /// Conflict verdict changed, new pools included.
    fn recompute_conflicts(&mut self) -> Vec<String> {
        self.overlaps = Overlaps::new(
            self.pools
                .values()
                .map(|s| (s.pool.name.as_str(), s.pool.age.created, s.pool.blocks())),
        );
        let mut changed = Vec::new();
        for (name, st) in &mut self.pools {
            let now = self.overlaps.conflict(name).map(str::to_string);
            if st.conflict != now {
                st.conflict = now;
                changed.push(name.clone());
            }
        }
        changed
    }

    // ----- services -----

    /// What a Service holds now.
    pub fn held(&self, key: &ServiceKey) -> Vec<HeldIp> {
        self.held
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every Service that holds something.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.held.keys()
    }

    /// The Services holding `ip`.
    pub fn holders(&self, ip: IpAddr) -> Vec<ServiceKey> {
        self.ips
            .get(&ip)
            .map(|e| e.holders.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The pool that governs `ip` and may hand it out: the pool not in Conflict that
    /// contains it ([`ferrolb_crds::overlap`], the speaker's rule), unless that pool skips it.
    fn owning_pool(&self, ip: IpAddr) -> Option<&PoolState> {
        self.overlaps
            .governing(ip)
            .and_then(|name| self.pools.get(name))
            .filter(|s| s.pool.can_hold(ip))
    }

    /// Why `ip` has no [`Allocator::owning_pool`], for the message of a released address.
    fn ungoverned(&self, ip: IpAddr) -> String {
        if let Some(name) = self.overlaps.governing(ip) {
            return format!("{ip} is one IPPool {name} never hands out");
        }
        let in_conflict = self.pools.values().find_map(|s| {
            s.conflict
                .as_ref()
                .filter(|_| s.pool.contains(ip))
                .map(|o| (s, o))
        });
        match in_conflict {
            Some((st, older)) => format!(
                "{ip} is in IPPool {}, which overlaps the older IPPool {older} (Conflict) and so governs nothing",
                st.pool.name
            ),
            None => format!("{ip} is not in any IPPool any more"),
        }
    }

    /// Takes back addresses a Service held before a restart (from its status), before
    /// anything new is allocated. Addresses that are not valid for it any more, or that
    /// an earlier (older) Service already holds without valid sharing, are refused with
    /// the reason; the caller re-allocates those Services.
    pub fn restore(&mut self, svc: &ServiceRequest, ips: &[IpAddr]) -> Vec<(IpAddr, String)> {
        let mut refused = Vec::new();
        let wanted = svc.wanted_families();
        for ip in ips {
            let f = Family::of(*ip);
            let already = self
                .held
                .get(&svc.key)
                .and_then(|m| m.get(&f))
                .map(|h| h.ip);
            let verdict = if already == Some(*ip) {
                Ok(())
            } else if !wanted.contains(&f) || already.is_some() {
                Err(format!(
                    "{ip}: the Service does not ask for another {f} address"
                ))
            } else {
                self.check_held(svc, *ip)
            };
            match verdict {
                Ok(()) => {
                    if already.is_none() {
                        self.attach(svc, *ip);
                    }
                }
                Err(why) => refused.push((*ip, why)),
            }
        }
        refused
    }

    /// Can `svc` keep holding `ip`? (It is not attached while this is asked.)
    fn check_held(&self, svc: &ServiceRequest, ip: IpAddr) -> Result<(), String> {
        let f = Family::of(ip);
        let Some(owner) = self.owning_pool(ip) else {
            return Err(self.ungoverned(ip));
        };
        if let Some(req) = svc.requested_for(f)
            && req != ip
        {
            return Err(format!("{ip} is not the requested {req}"));
        }
        // The requested pool must be the one that governs the address (the rule the
        // speaker follows), not merely one that contains it.
        if let Some(p) = &svc.pool
            && owner.pool.name != *p
        {
            return Err(format!(
                "{ip} belongs to IPPool {}, not to the requested pool {p}",
                owner.pool.name
            ));
        }
        match self
            .ips
            .get(&ip)
            .map(|e| e.compat(&svc.key, svc.sharing.as_ref()))
        {
            None | Some(Compat::Ok) => Ok(()),
            Some(Compat::Taken(k)) => Err(format!("{ip} is held by {k}, which was there first")),
            Some(Compat::SharingConflict(why)) => Err(format!("{ip} cannot be shared: {why}")),
        }
    }

    /// Makes sure the Service holds what it asks for: keeps every address that is still
    /// valid, allocates what is missing, and returns what changed.
    pub fn ensure(&mut self, svc: &ServiceRequest) -> Outcome {
        let wanted = svc.wanted_families();
        let before: Holding = self.held.get(&svc.key).cloned().unwrap_or_default();
        // Detach, then decide each family afresh (keeping what is still valid).
        self.release_quiet(&svc.key);

        if let Some(f) = self.invalid_request(svc, &wanted) {
            let released = before.values().map(|h| (h.ip, f.message.clone())).collect();
            return Outcome {
                ips: Vec::new(),
                released,
                failure: Some(f),
                incomplete: false,
            };
        }

        let mut chosen: Vec<HeldIp> = Vec::new();
        let mut released = Vec::new();
        let mut failure = None;
        for f in &wanted {
            if let Some(old) = before.get(f) {
                match self.check_held(svc, old.ip) {
                    Ok(()) => {
                        let pool = self.owning_pool(old.ip).map(|p| p.pool.name.clone());
                        self.attach(svc, old.ip);
                        chosen.push(HeldIp {
                            ip: old.ip,
                            pool: pool.unwrap_or_else(|| old.pool.clone()),
                        });
                        continue;
                    }
                    Err(why) => released.push((old.ip, why)),
                }
            }
            match self.pick(svc, *f) {
                Ok(h) => {
                    self.attach(svc, h.ip);
                    chosen.push(h);
                }
                // The failure reported is one only a change to the Service or the pools
                // can end, when a family has one, then the first family's: so that it
                // does not depend on what other Services held when it was decided (a
                // restart would otherwise report another family's exhaustion).
                Err(e) => {
                    if failure
                        .as_ref()
                        .is_none_or(|cur: &Failure| cur.crowded && !e.crowded)
                    {
                        failure = Some(e);
                    }
                }
            }
        }
        for (f, old) in before.iter() {
            if !wanted.contains(&f) {
                released.push((old.ip, format!("the Service no longer asks for {f}")));
            }
        }
        if svc.policy == FamilyPolicy::RequireDualStack && failure.is_some() {
            // No new address until both families can be had; but an address the Service
            // already holds is kept while the other family is unavailable (the failure says
            // which), never dropped: traffic on that family keeps flowing, and the address
            // is not lost to another Service in the meantime.
            let (kept, fresh): (Vec<HeldIp>, Vec<HeldIp>) = chosen
                .into_iter()
                .partition(|h| before.values().any(|b| b.ip == h.ip));
            if !fresh.is_empty() {
                self.release_quiet(&svc.key);
                for h in &kept {
                    self.attach(svc, h.ip);
                }
            }
            chosen = kept;
        }
        let incomplete =
            svc.policy == FamilyPolicy::RequireDualStack && failure.is_some() && !chosen.is_empty();
        released.retain(|(ip, _)| !chosen.iter().any(|h| h.ip == *ip));
        Outcome {
            ips: chosen,
            released,
            failure,
            incomplete,
        }
    }

    /// Releases everything a Service holds; returns the addresses.
    pub fn release(&mut self, key: &ServiceKey) -> Vec<IpAddr> {
        self.release_quiet(key)
    }

    fn release_quiet(&mut self, key: &ServiceKey) -> Vec<IpAddr> {
        let Some(held) = self.held.remove(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for h in held.into_values() {
            let now_free = match self.ips.get_mut(&h.ip) {
                Some(e) => {
                    if let Some(Some(sh)) = e.holders.remove(key)
                        && !e
                            .holders
                            .values()
                            .any(|s| s.as_ref().is_some_and(|s| s.key == sh.key))
                        && let Some(set) = self.shared.get_mut(&sh.key)
                    {
                        set.remove(&h.ip);
                        if set.is_empty() {
                            self.shared.remove(&sh.key);
                        }
                    }
                    e.holders.is_empty()
                }
                None => false,
            };
            if now_free {
                self.ips.remove(&h.ip);
                let f = Family::of(h.ip);
                for st in self.pools.values_mut() {
                    if st.pool.contains(h.ip) {
                        st.used_mut(f).remove(ip_to_u128(h.ip));
                    }
                }
            }
            out.push(h.ip);
        }
        out
    }

    fn attach(&mut self, svc: &ServiceRequest, ip: IpAddr) {
        let f = Family::of(ip);
        let pool = self
            .owning_pool(ip)
            .map(|p| p.pool.name.clone())
            .unwrap_or_default();
        let entry = self.ips.entry(ip).or_default();
        let first = entry.holders.is_empty();
        entry.holders.insert(svc.key.clone(), svc.sharing.clone());
        if let Some(sh) = &svc.sharing {
            self.shared.entry(sh.key.clone()).or_default().insert(ip);
        }
        if first {
            for st in self.pools.values_mut() {
                if st.pool.contains(ip) {
                    st.used_mut(f).insert(ip_to_u128(ip));
                }
            }
        }
        self.held
            .entry(svc.key.clone())
            .or_default()
            .insert(f, HeldIp { ip, pool });
    }

    fn invalid_request(&self, svc: &ServiceRequest, wanted: &[Family]) -> Option<Failure> {
        let mut seen = BTreeSet::new();
        for ip in &svc.requested {
            let f = Family::of(*ip);
            if !seen.insert(f) {
                return Some(Failure::new(
                    AllocationReason::InvalidRequest,
                    format!("more than one {f} address requested"),
                ));
            }
            if !wanted.contains(&f) {
                return Some(Failure::new(
                    AllocationReason::InvalidRequest,
                    format!("{ip} is {f}, but the Service's ipFamilies do not include {f}"),
                ));
            }
        }
        if let Some(p) = &svc.pool
            && !self.pools.contains_key(p)
        {
            return Some(Failure::new(
                AllocationReason::NoMatchingPool,
                format!("IPPool {p} does not exist"),
            ));
        }
        None
    }

    /// What `svc` is waiting for, read after [`Allocator::ensure`]: for every family it
    /// asks for and does not hold, the changes that could give it one. Empty when it holds
    /// all it can (a family that could be had now is no wait; RequireDualStack may leave
    /// one unheld because the other is missing) and when only a change to the Service
    /// itself can help (its request is invalid).
    ///
    /// Any pool change may also help a Service with a non-empty list (a pool grew, or a
    /// conflict ended); the caller compares the list before and after one.
    pub fn waits(&self, svc: &ServiceRequest) -> BTreeSet<Wait> {
        let wanted = svc.wanted_families();
        let mut out = BTreeSet::new();
        if let Some(failure) = self.invalid_request(svc, &wanted) {
            if failure.reason != AllocationReason::InvalidRequest {
                out.extend(
                    wanted
                        .iter()
                        .map(|f| Wait::Pools(*f, failure.message.clone())),
                );
            }
            return out;
        }
        let held = self.held.get(&svc.key);
        for f in wanted {
            if held.is_some_and(|h| h.get(&f).is_some()) {
                continue;
            }
            let failure = match self.pick(svc, f) {
                Ok(_) => continue,
                Err(failure) => failure,
            };
            if let Some(ip) = svc.requested_for(f) {
                if self.ips.contains_key(&ip) {
                    out.insert(Wait::Address(ip));
                } else {
                    out.insert(Wait::Pools(f, failure.message));
                }
                continue;
            }
            let with_family: Vec<&PoolState> = self
                .candidate_pools(svc, false)
                .into_iter()
                .filter(|s| s.pool.has_family(f))
                .collect();
            if with_family.is_empty() {
                out.insert(Wait::Pools(f, failure.message));
            }
            for s in with_family {
                out.insert(Wait::Free(s.pool.name.clone(), f));
            }
        }
        out
    }

    /// The sharing terms `key` holds its addresses under (`None`: it holds nothing, or
    /// holds without sharing).
    pub fn sharing_of(&self, key: &ServiceKey) -> Option<Sharing> {
        let h = self.held.get(key)?;
        let ip = h.v4.as_ref().or(h.v6.as_ref())?.ip;
        self.ips
            .get(&ip)?
            .holders
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, s)| s.clone())
    }

    /// The sharing key `ip` is held under, when it is held by Services that may share it.
    pub fn sharing_key(&self, ip: IpAddr) -> Option<&str> {
        self.ips
            .get(&ip)?
            .holders
            .values()
            .find_map(|s| s.as_ref().map(|s| s.key.as_str()))
    }

    /// Does `pool` have an address of family `f` to hand out now?
    pub fn has_free(&self, pool: &str, f: Family) -> bool {
        self.pools
            .get(pool)
            .is_some_and(|s| s.allocates() && s.first_free(f).is_some())
    }

    /// The pools that would hand out `ip` (allocating and containing it); a freed address
    /// is news for the Services waiting on them.
    pub fn pools_allocating(&self, ip: IpAddr) -> Vec<String> {
        self.pools
            .values()
            .filter(|s| s.allocates() && s.pool.contains(ip))
            .map(|s| s.pool.name.clone())
            .collect()
    }

    /// Pools that may give `svc` a new address, best first (priority, then name).
    fn candidate_pools(&self, svc: &ServiceRequest, requested: bool) -> Vec<&PoolState> {
        let mut v: Vec<&PoolState> = self
            .pools
            .values()
            .filter(|s| s.allocates())
            .filter(|s| match &svc.pool {
                Some(p) => &s.pool.name == p,
                None => requested || s.pool.auto_assign,
            })
            .filter(|s| s.pool.service_selector.matches(&svc.labels))
            .filter(|s| s.pool.namespace_selector.matches(&svc.namespace_labels))
            .collect();
        v.sort_by(|a, b| (a.pool.priority, &a.pool.name).cmp(&(b.pool.priority, &b.pool.name)));
        v
    }

    fn pick(&self, svc: &ServiceRequest, f: Family) -> Result<HeldIp, Failure> {
        use AllocationReason::*;
        if let Some(ip) = svc.requested_for(f) {
            let pools = self.candidate_pools(svc, true);
            let Some(pool) = pools.iter().find(|s| s.pool.can_hold(ip)) else {
                return Err(Failure::new(
                    RequestedIPUnavailable,
                    format!("{ip} is not in any IPPool this Service may use"),
                ));
            };
            // A free anycast address is not handed out; one already held may be shared
            // (its holder keeps it, and valid sharing joins an address that is in use).
            if let Some(cidr) = pool.pool.anycast_of(ip)
                && !self.ips.contains_key(&ip)
            {
                return Err(Failure::new(
                    RequestedIPUnavailable,
                    format!(
                        "{ip} is the Subnet-Router anycast address of {cidr} (RFC 4291 2.6.1), which ferrolb never hands out"
                    ),
                ));
            }
            return match self
                .ips
                .get(&ip)
                .map(|e| e.compat(&svc.key, svc.sharing.as_ref()))
            {
                None | Some(Compat::Ok) => Ok(HeldIp {
                    ip,
                    pool: pool.pool.name.clone(),
                }),
                Some(Compat::Taken(k)) => Err(Failure::crowded(
                    RequestedIPUnavailable,
                    format!("{ip} is already used by {k}"),
                )),
                Some(Compat::SharingConflict(why)) => Err(Failure::crowded(
                    SharingConflict,
                    format!("{ip} cannot be shared: {why}"),
                )),
            };
        }

        let pools = self.candidate_pools(svc, false);
        if pools.is_empty() {
            let why = match &svc.pool {
                Some(p) => format!(
                    "IPPool {p} is disabled, in conflict, invalid or does not select this Service"
                ),
                None => "no IPPool selects this Service".to_string(),
            };
            return Err(Failure::new(NoMatchingPool, why));
        }
        let with_family: Vec<&&PoolState> = pools.iter().filter(|s| s.pool.has_family(f)).collect();
        if with_family.is_empty() {
            return Err(Failure::new(
                FamilyUnavailable,
                format!("no IPPool available to this Service has {f} addresses"),
            ));
        }

        // Join an address already shared under the same key, if one fits.
        if let Some(sharing) = &svc.sharing {
            let shared = self.shared.get(&sharing.key).into_iter().flatten();
            for ip in shared.filter(|ip| Family::of(**ip) == f) {
                let Some(e) = self.ips.get(ip) else {
                    continue;
                };
                if let Some(pool) = with_family.iter().find(|s| s.pool.can_hold(*ip))
                    && matches!(e.compat(&svc.key, Some(sharing)), Compat::Ok)
                {
                    return Ok(HeldIp {
                        ip: *ip,
                        pool: pool.pool.name.clone(),
                    });
                }
            }
        }

        for s in &with_family {
            if let Some(ip) = s.first_free(f) {
                return Ok(HeldIp {
                    ip,
                    pool: s.pool.name.clone(),
                });
            }
        }
        let names: Vec<&str> = with_family.iter().map(|s| s.pool.name.as_str()).collect();
        Err(Failure::crowded(
            PoolExhausted,
            format!("no free {f} address in {}", names.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests;
