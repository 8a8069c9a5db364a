use std::collections::BTreeMap;

use ferrolb_crds::IPPoolSpec;

use super::*;
use crate::allocator::{FamilyPolicy, Pool};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pool(name: &str, created: i64, spec: serde_json::Value) -> Pool {
    let spec: IPPoolSpec = serde_json::from_value(spec).unwrap();
    Pool::from_spec(name, Some(created), &spec)
}

fn req(ns: &str, name: &str) -> ServiceRequest {
    ServiceRequest {
        key: ServiceKey::new(ns, name),
        labels: BTreeMap::new(),
        namespace_labels: BTreeMap::from([("team".to_string(), ns.to_string())]),
        families: vec![Family::V4],
        policy: FamilyPolicy::SingleStack,
        requested: Vec::new(),
        pool: None,
        sharing: None,
    }
}

fn sharing(key: &str, port: u16) -> crate::allocator::Sharing {
    crate::allocator::Sharing {
        key: key.to_string(),
        ports: BTreeSet::from([crate::allocator::PortKey {
            protocol: "TCP".to_string(),
            port,
        }]),
        local: false,
        selector: BTreeMap::new(),
    }
}

fn keys(names: &[(&str, &str)]) -> BTreeSet<ServiceKey> {
    names.iter().map(|(ns, n)| ServiceKey::new(ns, n)).collect()
}

/// The allocator and the index as a term keeps them: every decision goes through both.
struct World {
    alloc: Allocator,
    pending: Pending,
}

impl World {
    fn new(pools: Vec<Pool>) -> World {
        let mut alloc = Allocator::new();
        for p in pools {
            alloc.set_pool(p);
        }
        World {
            alloc,
            pending: Pending::new(),
        }
    }

    /// One reconcile of `r`: ensure, then record; returns whom to wake.
    fn reconcile(&mut self, r: &ServiceRequest) -> BTreeSet<ServiceKey> {
        let before = self.alloc.held(&r.key);
        let terms = self.alloc.sharing_of(&r.key);
        self.alloc.ensure(r);
        let after = self.alloc.held(&r.key);
        self.pending.decided(
            &self.alloc,
            &r.key,
            Some(r),
            (&before, terms.as_ref()),
            &after,
        )
    }

    fn delete(&mut self, key: &ServiceKey) -> BTreeSet<ServiceKey> {
        let ips = self.alloc.release(key);
        self.pending.deleted(&self.alloc, key, &ips)
    }

    fn holds(&self, key: &ServiceKey) -> bool {
        !self.alloc.held(key).is_empty()
    }
}

fn one_address() -> World {
    World::new(vec![pool(
        "tiny",
        1,
        serde_json::json!({"addresses": ["10.0.0.1/32"]}),
    )])
}

/// One address, held; two Services waiting for it, `w0` first.
fn full_with_two_waiters() -> (World, ServiceRequest, ServiceRequest, ServiceRequest) {
    let mut w = one_address();
    let holder = req("a", "holder");
    w.reconcile(&holder);
    let w0 = req("a", "w0");
    let w1 = req("a", "w1");
    w.reconcile(&w0);
    w.reconcile(&w1);
    (w, holder, w0, w1)
}

#[test]
fn a_freed_address_wakes_only_the_longest_waiter() {
    let mut w = one_address();
    let holder = req("a", "holder");
    assert!(w.reconcile(&holder).is_empty());
    let waiters: Vec<ServiceRequest> = (0..5).map(|i| req("a", &format!("w{i}"))).collect();
    for r in &waiters {
        assert!(w.reconcile(r).is_empty(), "waiting wakes nobody");
    }
    assert_eq!(w.pending.len(), 5);

    let wake = w.delete(&holder.key);
    assert_eq!(wake, keys(&[("a", "w0")]));
    // The woken one takes it: its token is spent, nobody else wakes.
    assert!(w.reconcile(&waiters[0]).is_empty());
    assert!(w.holds(&waiters[0].key));
    assert!(!w.pending.contains(&waiters[0].key));
    assert_eq!(w.pending.len(), 4);
}

#[test]
fn an_unused_token_passes_to_the_next_waiter_while_the_pool_has_room() {
    let (mut w, holder, w0, w1) = full_with_two_waiters();
    assert_eq!(w.delete(&holder.key), keys(&[("a", "w0")]));
    // Meanwhile w0 asked for a pool that does not exist: it takes nothing here.
    let mut w0_elsewhere = w0.clone();
    w0_elsewhere.pool = Some("other".into());
    assert_eq!(w.reconcile(&w0_elsewhere), keys(&[("a", "w1")]));
    assert!(w.reconcile(&w1).is_empty());
    assert!(w.holds(&w1.key));
    // w0 still waits (for a pool to appear), w1 no more.
    assert!(w.pending.contains(&w0.key));
    assert!(!w.pending.contains(&w1.key));
}

#[test]
fn a_token_whose_address_was_taken_meanwhile_stops_and_the_waiter_keeps_its_place() {
    let (mut w, holder, w0, _w1) = full_with_two_waiters();
    assert_eq!(w.delete(&holder.key), keys(&[("a", "w0")]));
    // A Service created now reconciles first and takes the address.
    let newcomer = req("a", "new");
    assert!(w.reconcile(&newcomer).is_empty());
    assert!(w.holds(&newcomer.key));
    // w0 finds the pool full: no token goes on (nothing is free), and w0 stays first.
    assert!(w.reconcile(&w0).is_empty());
    assert!(!w.holds(&w0.key));
    assert_eq!(w.delete(&newcomer.key), keys(&[("a", "w0")]));
}

#[test]
fn two_freed_addresses_wake_two_waiters() {
    let mut w = World::new(vec![pool(
        "two",
        1,
        serde_json::json!({"addresses": ["10.0.0.1-10.0.0.2"]}),
    )]);
    let h0 = req("a", "h0");
    let h1 = req("a", "h1");
    w.reconcile(&h0);
    w.reconcile(&h1);
    let waiters: Vec<ServiceRequest> = (0..4).map(|i| req("a", &format!("w{i}"))).collect();
    for r in &waiters {
        w.reconcile(r);
    }
    assert_eq!(w.delete(&h0.key), keys(&[("a", "w0")]));
    assert_eq!(w.delete(&h1.key), keys(&[("a", "w1")]));
    assert!(w.reconcile(&waiters[1]).is_empty());
    assert!(w.reconcile(&waiters[0]).is_empty());
    assert!(w.holds(&waiters[0].key) && w.holds(&waiters[1].key));
    assert_eq!(w.pending.len(), 2);
}

#[test]
fn a_releasing_reconcile_wakes_a_waiter_and_a_deleted_token_holder_passes_it_on() {
    let (mut w, holder, w0, _w1) = full_with_two_waiters();
    // The holder moves to a pool that does not exist: it lets go of its address.
    let mut moved = holder.clone();
    moved.pool = Some("other".into());
    assert_eq!(w.reconcile(&moved), keys(&[("a", "w0")]));
    // w0 is deleted before its reconcile: its token goes to w1.
    assert_eq!(w.delete(&w0.key), keys(&[("a", "w1")]));
}

#[test]
fn invalid_requests_are_not_kept_and_never_woken() {
    let mut w = one_address();
    let holder = req("a", "holder");
    w.reconcile(&holder);
    let mut invalid = req("a", "invalid");
    invalid.requested = vec![ip("10.0.0.1"), ip("10.0.0.2")];
    assert!(w.reconcile(&invalid).is_empty());
    assert!(!w.pending.contains(&invalid.key));
    assert!(w.delete(&holder.key).is_empty());
    // Not ours any more (or deleted): dropped too.
    let other = req("a", "other");
    w.reconcile(&req("a", "taker"));
    w.reconcile(&other);
    assert!(w.pending.contains(&other.key));
    let wake = w
        .pending
        .decided(&w.alloc, &other.key, None, (&[], None), &[]);
    assert!(wake.is_empty());
    assert!(w.pending.is_empty());
}

#[test]
fn an_address_asked_for_by_name_wakes_its_askers_when_it_changes_hands() {
    let mut w = World::new(vec![pool(
        "lan",
        1,
        serde_json::json!({"addresses": ["10.0.0.1-10.0.0.3"]}),
    )]);
    let holder = req("a", "holder");
    w.reconcile(&holder);
    let mut asker = req("a", "asker");
    asker.requested = vec![ip("10.0.0.1")];
    w.reconcile(&asker);
    assert!(w.pending.contains(&asker.key));
    // Another address coming free is no news for it.
    let other = req("a", "other");
    w.reconcile(&other);
    assert!(w.delete(&other.key).is_empty());
    assert_eq!(w.delete(&holder.key), keys(&[("a", "asker")]));
    assert!(w.reconcile(&asker).is_empty());
    assert!(w.holds(&asker.key));
}

#[test]
fn a_pool_change_wakes_only_the_waiters_it_can_help() {
    let mut w = one_address();
    w.reconcile(&req("a", "holder"));
    let a = req("a", "wa");
    let b = req("b", "wb");
    w.reconcile(&a);
    w.reconcile(&b);
    // A pool for namespace b only.
    w.alloc.set_pool(pool(
        "for-b",
        2,
        serde_json::json!({"addresses": ["10.0.1.0/30"],
            "namespaceSelector": {"matchLabels": {"team": "b"}}}),
    ));
    assert_eq!(w.pending.pools_changed(&w.alloc), keys(&[("b", "wb")]));
    // A pool nobody can use (disabled) wakes nobody.
    w.alloc.set_pool(pool(
        "off",
        3,
        serde_json::json!({"addresses": ["10.0.2.0/30"], "disabled": true}),
    ));
    assert!(w.reconcile(&b).is_empty());
    assert!(w.pending.pools_changed(&w.alloc).is_empty());
    // Growing the full pool helps a.
    w.alloc.set_pool(pool(
        "tiny",
        1,
        serde_json::json!({"addresses": ["10.0.0.1-10.0.0.2"]}),
    ));
    assert_eq!(w.pending.pools_changed(&w.alloc), keys(&[("a", "wa")]));
}

#[test]
fn a_pool_change_that_serves_one_of_two_waiting_families_wakes_the_service() {
    // Found by the chaos run (seed 1): a dual-stack Service asking for pool p, which does
    // not select it, waits for a pool change in both families; p then selects it with
    // IPv4 only. It can take an IPv4 address now, though it still waits for IPv6.
    let mut w = World::new(vec![pool(
        "p",
        1,
        serde_json::json!({"addresses": ["10.0.0.6-10.0.0.8"],
            "namespaceSelector": {"matchLabels": {"team": "elsewhere"}}}),
    )]);
    let mut dual = req("a", "dual");
    dual.families = vec![Family::V6, Family::V4];
    dual.policy = FamilyPolicy::PreferDualStack;
    dual.pool = Some("p".into());
    w.reconcile(&dual);
    assert!(!w.holds(&dual.key));
    w.alloc.set_pool(pool(
        "p",
        1,
        serde_json::json!({"addresses": ["10.0.0.6-10.0.0.8"]}),
    ));
    assert_eq!(w.pending.pools_changed(&w.alloc), keys(&[("a", "dual")]));
    w.reconcile(&dual);
    assert_eq!(w.alloc.held(&dual.key).len(), 1, "its IPv4 address");
    // Still waiting for IPv6; a change that brings none wakes nobody.
    assert!(w.pending.contains(&dual.key));
    w.alloc.set_pool(pool(
        "p",
        1,
        serde_json::json!({"addresses": ["10.0.0.6-10.0.0.9"]}),
    ));
    assert!(w.pending.pools_changed(&w.alloc).is_empty());
}

#[test]
fn a_pool_change_that_alters_what_a_waiter_is_told_wakes_it() {
    // Found by the chaos run: a Service naming a disabled pool was told so; the pool was
    // then deleted, which served it no better, so it slept on, and its condition went on
    // describing a pool that was gone until a restart re-decided it (with a new event).
    let mut w = World::new(vec![pool(
        "p",
        1,
        serde_json::json!({"addresses": ["10.0.0.6/32"], "disabled": true}),
    )]);
    let mut r = req("a", "named");
    r.pool = Some("p".into());
    w.reconcile(&r);
    assert!(w.pending.contains(&r.key));
    w.alloc.remove_pool("p");
    assert_eq!(w.pending.pools_changed(&w.alloc), keys(&[("a", "named")]));
    w.reconcile(&r);
    // Another pool, which it does not name, tells it nothing new.
    w.alloc.set_pool(pool(
        "q",
        2,
        serde_json::json!({"addresses": ["10.0.1.0/30"]}),
    ));
    assert!(w.pending.pools_changed(&w.alloc).is_empty());
}

#[test]
fn an_address_taken_or_left_under_a_sharing_key_wakes_the_waiters_of_that_key() {
    // Found by the chaos run (seed 4): the pool was full, a Service that may share waited
    // for a free address; another Service of its key took one, which it could have
    // joined, but nothing woke it.
    let mut w = one_address();
    w.reconcile(&req("a", "holder"));
    let mut web = req("a", "web");
    web.sharing = Some(sharing("k", 80));
    let mut dns = req("a", "dns");
    dns.sharing = Some(sharing("k", 443));
    let mut other = req("a", "other");
    other.sharing = Some(sharing("elsewhere", 80));
    w.reconcile(&web);
    w.reconcile(&dns);
    w.reconcile(&other);
    let wake = w.delete(&ServiceKey::new("a", "holder"));
    assert_eq!(
        wake,
        keys(&[("a", "web")]),
        "the longest waiter gets the address"
    );
    // web takes it: dns, of the same key, may join now; "other" may not.
    assert_eq!(w.reconcile(&web), keys(&[("a", "dns")]));
    w.reconcile(&dns);
    assert!(w.holds(&dns.key));
    // A third of key k on port 80 collides with web and waits; web leaving lets it in.
    let mut web2 = req("a", "web2");
    web2.sharing = Some(sharing("k", 80));
    w.reconcile(&web2);
    assert!(!w.holds(&web2.key));
    assert_eq!(w.delete(&web.key), keys(&[("a", "web2")]));
    w.reconcile(&web2);
    assert!(w.holds(&web2.key));
}

#[test]
fn a_woken_service_that_joins_a_shared_address_passes_its_token_on() {
    // Found by the liveness property in CI: the longest waiter, woken by a freed address,
    // joined an address shared under its key instead; the freed one stayed free while the
    // next waiter slept.
    let mut w = one_address();
    let mut first = req("a", "first");
    first.sharing = Some(sharing("k", 80));
    w.reconcile(&first);
    assert!(w.holds(&first.key));
    let holder = req("a", "holder");
    // "holder" cannot share; the pool grows by one address, which it takes.
    w.alloc.set_pool(pool(
        "tiny",
        1,
        serde_json::json!({"addresses": ["10.0.0.1-10.0.0.2"]}),
    ));
    w.reconcile(&holder);
    assert!(w.holds(&holder.key));
    // Two waiters: "joiner" (key k, may join "first"'s address, but was decided while the
    // ports collided) and "plain" after it.
    let mut joiner = req("a", "joiner");
    joiner.sharing = Some(sharing("k", 80));
    w.reconcile(&joiner);
    let plain = req("a", "plain");
    w.reconcile(&plain);
    assert!(!w.holds(&joiner.key) && !w.holds(&plain.key));
    // "holder" goes: the token goes to "joiner", the longest waiter. Its ports no longer
    // collide, so it joins "first"'s address and leaves the freed one to "plain".
    let wake = w.delete(&holder.key);
    assert_eq!(wake, keys(&[("a", "joiner")]));
    joiner.sharing = Some(sharing("k", 443));
    assert_eq!(w.reconcile(&joiner), keys(&[("a", "plain")]));
    assert_eq!(
        w.alloc.holders(ip("10.0.0.1")).len(),
        2,
        "joiner shares with first"
    );
    w.reconcile(&plain);
    assert!(w.holds(&plain.key));
}

#[test]
fn require_dual_stack_waits_only_on_the_missing_family() {
    let mut w = World::new(vec![pool(
        "dual",
        1,
        serde_json::json!({"addresses": ["10.0.0.1-10.0.0.2", "fd00::1/128"]}),
    )]);
    let mut v6 = req("a", "v6");
    v6.families = vec![Family::V6];
    w.reconcile(&v6);
    let mut dual = req("a", "dual");
    dual.families = vec![Family::V4, Family::V6];
    dual.policy = FamilyPolicy::RequireDualStack;
    w.reconcile(&dual);
    assert!(w.pending.contains(&dual.key));
    assert!(!w.holds(&dual.key));
    // An IPv4 address coming free does not help it.
    let v4 = req("a", "v4");
    w.reconcile(&v4);
    assert!(w.delete(&v4.key).is_empty());
    // The IPv6 one does.
    assert_eq!(w.delete(&v6.key), keys(&[("a", "dual")]));
    assert!(w.reconcile(&dual).is_empty());
    assert_eq!(w.alloc.held(&dual.key).len(), 2);
}

#[test]
fn waiting_on_two_pools_a_free_address_in_either_wakes_it() {
    let mut w = World::new(vec![
        pool("p1", 1, serde_json::json!({"addresses": ["10.0.0.1/32"]})),
        pool("p2", 2, serde_json::json!({"addresses": ["10.0.1.1/32"]})),
    ]);
    let h1 = req("a", "h1");
    let h2 = req("a", "h2");
    w.reconcile(&h1);
    w.reconcile(&h2);
    let w0 = req("a", "w0");
    w.reconcile(&w0);
    assert_eq!(w.delete(&h2.key), keys(&[("a", "w0")]));
    assert!(w.reconcile(&w0).is_empty());
    assert_eq!(w.alloc.held(&w0.key)[0].ip, ip("10.0.1.1"));
    // Its token for p2 is spent, and it waits nowhere: a free p1 wakes nobody.
    assert!(w.delete(&h1.key).is_empty());
}

mod liveness {
    //! Whatever the order of events and reconciles, once every woken Service has been
    //! reconciled no waiter sleeps while a pool it waits on has room, and nobody holds an
    //! address twice.
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Create or change Service `i`: which pool it names (None: any), which families
        /// (0: IPv4, 1: IPv6, 2: both, preferred), whether it may share (under one key, on
        /// port 80 or 443 by `i`'s parity, so that some join and some collide).
        Upsert(usize, Option<usize>, u8, bool),
        Delete(usize),
        /// Pool `p` now holds `n` addresses of the families `fams` (0: both, 1: IPv4
        /// only, 2: IPv6 only).
        Resize(usize, u8, u8),
        /// Reconcile the woken Service at this position of the queue (modulo its length).
        Reconcile(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..8usize, prop::option::of(0..2usize), 0..3u8, prop::bool::weighted(0.4))
                .prop_map(|(i, p, fams, share)| Op::Upsert(i, p, fams, share)),
            2 => (0..8usize).prop_map(Op::Delete),
            1 => (0..2usize, 0..4u8, 0..3u8).prop_map(|(p, n, fams)| Op::Resize(p, n, fams)),
            4 => any::<usize>().prop_map(Op::Reconcile),
        ]
    }

    fn sized(p: usize, n: u8, fams: u8) -> Pool {
        let mut addresses = Vec::new();
        if n > 0 {
            if fams != 2 {
                addresses.push(format!("10.0.{p}.1-10.0.{p}.{n}"));
            }
            if fams != 1 {
                addresses.push(format!("fd00:{p}::1-fd00:{p}::{n}"));
            }
        } else {
            // An empty pool is not valid; one address of the other family's block.
            addresses.push(format!("192.0.2.{}/32", p + 1));
        }
        pool(
            &format!("p{p}"),
            i64::try_from(p).unwrap_or(0),
            serde_json::json!({ "addresses": addresses }),
        )
    }

    fn request(i: usize, p: Option<usize>, fams: u8, share: bool) -> ServiceRequest {
        let mut r = req("a", &format!("s{i}"));
        if share {
            r.sharing = Some(sharing("k", if i.is_multiple_of(2) { 80 } else { 443 }));
        }
        r.pool = p.map(|p| format!("p{p}"));
        match fams {
            0 => {}
            1 => r.families = vec![Family::V6],
            _ => {
                r.families = vec![Family::V4, Family::V6];
                r.policy = FamilyPolicy::PreferDualStack;
            }
        }
        r
    }

    /// With no reconcile outstanding: every Service holding nothing waits, none while a
    /// pool it waits on has room, and no address has two holders.
    fn check(w: &World, live: &BTreeMap<usize, ServiceRequest>) -> Result<(), TestCaseError> {
        for r in live.values() {
            if w.alloc.held(&r.key).is_empty() {
                prop_assert!(
                    w.pending.contains(&r.key),
                    "{} holds nothing and waits for nothing",
                    r.key
                );
                // Nothing it waits for is there: were a pool it may use to have room, its
                // waits would be empty (it could be served now).
                let waits = w.alloc.waits(r);
                prop_assert!(
                    !waits.is_empty(),
                    "{} sleeps but could be served now",
                    r.key
                );
                for wait in waits {
                    if let Wait::Free(p, f) = wait {
                        prop_assert!(
                            !w.alloc.has_free(&p, f),
                            "{} sleeps while {p} has a free {f} address",
                            r.key
                        );
                    }
                }
            }
            for h in w.alloc.held(&r.key) {
                let holders = w.alloc.holders(h.ip).len();
                prop_assert!(
                    holders == 1 || r.sharing.is_some(),
                    "{} held {} times without sharing",
                    h.ip,
                    holders
                );
            }
            // A fixpoint: reconciling it again would change nothing (in particular, no
            // family it lacks could be served now).
            let mut probe = w.alloc.clone();
            let again: BTreeSet<IpAddr> = probe.ensure(r).addresses().into_iter().collect();
            let held: BTreeSet<IpAddr> = w.alloc.held(&r.key).iter().map(|h| h.ip).collect();
            prop_assert_eq!(again, held, "{} would change if reconciled now", &r.key);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn no_waiter_sleeps_while_its_pool_has_room(ops in prop::collection::vec(op(), 1..80)) {
            let mut w = World::new(vec![sized(0, 1, 0), sized(1, 2, 0)]);
            let mut live: BTreeMap<usize, ServiceRequest> = BTreeMap::new();
            let mut queue: VecDeque<ServiceKey> = VecDeque::new();
            let index = |k: &ServiceKey| k.name[1..].parse::<usize>().ok();
            let step = |w: &mut World, live: &BTreeMap<usize, ServiceRequest>,
                            queue: &mut VecDeque<ServiceKey>, at: usize| {
                if queue.is_empty() {
                    return;
                }
                let at = at % queue.len();
                let Some(k) = queue.remove(at) else { return };
                if let Some(r) = index(&k).and_then(|i| live.get(&i)) {
                    queue.extend(w.reconcile(r));
                }
            };
            for op in ops {
                let reconciled = matches!(op, Op::Reconcile(_));
                match op {
                    Op::Upsert(i, p, fams, share) => {
                        let r = request(i, p, fams, share);
                        live.insert(i, r.clone());
                        // The Service's own change reconciles it.
                        queue.push_back(r.key);
                    }
                    Op::Delete(i) => {
                        if let Some(r) = live.remove(&i) {
                            queue.extend(w.delete(&r.key));
                        }
                    }
                    Op::Resize(p, n, fams) => {
                        let affected = w.alloc.set_pool(sized(p, n, fams));
                        queue.extend(affected);
                        queue.extend(w.pending.pools_changed(&w.alloc));
                    }
                    Op::Reconcile(at) => step(&mut w, &live, &mut queue, at),
                }
                if reconciled && queue.is_empty() {
                    check(&w, &live)?;
                }
            }
            let mut guard = 0;
            while !queue.is_empty() {
                step(&mut w, &live, &mut queue, 0);
                guard += 1;
                prop_assert!(guard < 10_000, "waking never settles");
            }
            check(&w, &live)?;
        }
    }
}
