use super::*;
use AllocationReason::*;
use ferrolb_crds::IPPoolSpec;
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(addresses: &[&str]) -> IPPoolSpec {
    serde_json::from_value(serde_json::json!({ "addresses": addresses })).unwrap()
}

fn pool(name: &str, created: i64, addresses: &[&str]) -> Pool {
    Pool::from_spec(name, Some(created), &spec(addresses))
}

fn pool_with(
    name: &str,
    created: i64,
    addresses: &[&str],
    f: impl FnOnce(&mut IPPoolSpec),
) -> Pool {
    let mut s = spec(addresses);
    f(&mut s);
    Pool::from_spec(name, Some(created), &s)
}

fn svc(name: &str) -> ServiceRequest {
    ServiceRequest {
        key: ServiceKey::new("default", name),
        labels: BTreeMap::new(),
        namespace_labels: BTreeMap::new(),
        families: vec![Family::V4],
        policy: FamilyPolicy::SingleStack,
        requested: Vec::new(),
        pool: None,
        sharing: None,
    }
}

fn shared(name: &str, key: &str, ports: &[u16]) -> ServiceRequest {
    let mut s = svc(name);
    s.sharing = Some(Sharing {
        key: key.into(),
        ports: ports
            .iter()
            .map(|p| PortKey {
                protocol: "TCP".into(),
                port: *p,
            })
            .collect(),
        local: false,
        selector: BTreeMap::new(),
    });
    s
}

fn reason(o: &Outcome) -> Option<AllocationReason> {
    o.failure.as_ref().map(|f| f.reason)
}

#[test]
fn allocates_lowest_free_from_ranges_and_cidrs() {
    let mut a = Allocator::new();
    a.set_pool(pool(
        "lan",
        1,
        &["192.168.10.200-192.168.10.202", "10.0.0.0/31"],
    ));
    let got: Vec<IpAddr> = (0..5)
        .map(|i| a.ensure(&svc(&format!("s{i}"))).ips[0].ip)
        .collect();
    assert_eq!(
        got,
        [
            ip("10.0.0.0"),
            ip("10.0.0.1"),
            ip("192.168.10.200"),
            ip("192.168.10.201"),
            ip("192.168.10.202")
        ]
    );
    let o = a.ensure(&svc("s5"));
    assert_eq!(reason(&o), Some(PoolExhausted));
    assert!(o.ips.is_empty());
    // Freeing one makes it available again.
    a.release(&ServiceKey::new("default", "s1"));
    assert_eq!(a.ensure(&svc("s5")).addresses(), [ip("10.0.0.1")]);
    // Ensuring again changes nothing.
    let again = a.ensure(&svc("s5"));
    assert_eq!(again.addresses(), [ip("10.0.0.1")]);
    assert!(again.released.is_empty());
}

#[test]
fn avoid_buggy_ips_skips_dot_zero_and_dot_255() {
    let mut a = Allocator::new();
    a.set_pool(pool_with("p", 1, &["10.0.0.254-10.0.1.1"], |s| {
        s.avoid_buggy_ips = true
    }));
    assert_eq!(a.ensure(&svc("a")).addresses(), [ip("10.0.0.254")]);
    assert_eq!(a.ensure(&svc("b")).addresses(), [ip("10.0.1.1")]);
    assert_eq!(reason(&a.ensure(&svc("c"))), Some(PoolExhausted));
}

#[test]
fn requested_ip_is_honoured_or_refused_with_the_reason() {
    let mut a = Allocator::new();
    a.set_pool(pool("p", 1, &["10.0.0.0/24"]));
    let mut s = svc("want");
    s.requested = vec![ip("10.0.0.77")];
    assert_eq!(a.ensure(&s).addresses(), [ip("10.0.0.77")]);

    let mut t = svc("also-want");
    t.requested = vec![ip("10.0.0.77")];
    let o = a.ensure(&t);
    assert_eq!(reason(&o), Some(RequestedIPUnavailable));
    assert!(o.failure.unwrap().message.contains("default/want"));

    t.requested = vec![ip("172.16.0.1")];
    assert_eq!(reason(&a.ensure(&t)), Some(RequestedIPUnavailable));

    t.requested = vec![ip("2001:db8::1")];
    assert_eq!(reason(&a.ensure(&t)), Some(InvalidRequest));
}

#[test]
fn named_pool_works_with_auto_assign_false_and_others_skip_it() {
    let mut a = Allocator::new();
    a.set_pool(pool_with("private", 1, &["10.9.0.0/30"], |s| {
        s.auto_assign = false
    }));
    assert_eq!(reason(&a.ensure(&svc("plain"))), Some(NoMatchingPool));
    let mut s = svc("named");
    s.pool = Some("private".into());
    assert_eq!(a.ensure(&s).ips[0].pool, "private");
    // A requested IP in a non-auto-assign pool is honoured too.
    let mut r = svc("requested");
    r.requested = vec![ip("10.9.0.3")];
    assert_eq!(a.ensure(&r).addresses(), [ip("10.9.0.3")]);
    let mut m = svc("missing");
    m.pool = Some("nope".into());
    let o = a.ensure(&m);
    assert_eq!(reason(&o), Some(NoMatchingPool));
    assert!(o.failure.unwrap().message.contains("nope"));
}

#[test]
fn priority_then_name_orders_pools_and_selectors_filter() {
    let mut a = Allocator::new();
    a.set_pool(pool_with("b-low", 1, &["10.2.0.1"], |s| s.priority = 1));
    a.set_pool(pool_with("a-low", 2, &["10.1.0.1"], |s| s.priority = 1));
    a.set_pool(pool_with("z-high", 3, &["10.3.0.1"], |s| s.priority = -5));
    let order: Vec<String> = (0..3)
        .map(|i| a.ensure(&svc(&format!("s{i}"))).ips[0].pool.clone())
        .collect();
    assert_eq!(order, ["z-high", "a-low", "b-low"]);

    let mut a = Allocator::new();
    a.set_pool(pool_with("edge", 1, &["10.5.0.1"], |s| {
        s.service_selector = Some(
            serde_json::from_value(serde_json::json!({"matchLabels": {"tier": "edge"}})).unwrap(),
        );
        s.namespace_selector = Some(
            serde_json::from_value(serde_json::json!({"matchLabels": {"team": "a"}})).unwrap(),
        );
    }));
    let mut s = svc("s");
    assert_eq!(reason(&a.ensure(&s)), Some(NoMatchingPool));
    s.labels.insert("tier".into(), "edge".into());
    assert_eq!(
        reason(&a.ensure(&s)),
        Some(NoMatchingPool),
        "namespace does not match yet"
    );
    s.namespace_labels.insert("team".into(), "a".into());
    assert_eq!(a.ensure(&s).addresses(), [ip("10.5.0.1")]);
}

#[test]
fn the_reason_given_does_not_depend_on_what_other_services_hold() {
    // A RequireDualStack Service whose requested IPv6 address no pool holds: that is the
    // reason, whether the IPv4 pool has an address left or not (found by the chaos run:
    // a restart after the pool ran out reported the exhaustion instead, and a new event).
    let mut a = Allocator::new();
    a.set_pool(pool("v4", 1, &["10.0.0.1"]));
    a.set_pool(pool("v6", 2, &["2001:db8::/120"]));
    let mut s = svc("s");
    s.families = vec![Family::V4, Family::V6];
    s.policy = FamilyPolicy::RequireDualStack;
    s.requested = vec![ip("fd00::13")];
    let free = a.ensure(&s);
    assert_eq!(reason(&free), Some(RequestedIPUnavailable));
    assert!(free.ips.is_empty());
    assert_eq!(a.ensure(&svc("other")).addresses(), [ip("10.0.0.1")]);
    let exhausted = a.ensure(&s);
    assert_eq!(
        exhausted.failure, free.failure,
        "the same reason and message"
    );
}

#[test]
fn dual_stack_policies() {
    let mut a = Allocator::new();
    a.set_pool(pool("v4", 1, &["10.0.0.1"]));
    a.set_pool(pool("v6", 2, &["2001:db8::1"]));

    let mut single = svc("single");
    single.families = vec![Family::V6, Family::V4];
    assert_eq!(a.ensure(&single).addresses(), [ip("2001:db8::1")]);

    // RequireDualStack: both or none (the only IPv6 address is taken).
    let mut req = svc("require");
    req.families = vec![Family::V4, Family::V6];
    req.policy = FamilyPolicy::RequireDualStack;
    let o = a.ensure(&req);
    assert!(o.ips.is_empty());
    assert_eq!(reason(&o), Some(PoolExhausted));
    assert_eq!(
        a.ensure(&svc("v4-only")).addresses(),
        [ip("10.0.0.1")],
        "the IPv4 address stayed free"
    );
    a.release(&ServiceKey::new("default", "v4-only"));

    // PreferDualStack: takes what it can, adds the rest later.
    let mut pref = svc("prefer");
    pref.families = vec![Family::V4, Family::V6];
    pref.policy = FamilyPolicy::PreferDualStack;
    let o = a.ensure(&pref);
    assert_eq!(o.addresses(), [ip("10.0.0.1")]);
    assert_eq!(reason(&o), Some(PoolExhausted));
    a.release(&single.key);
    let o = a.ensure(&pref);
    assert_eq!(o.addresses(), [ip("10.0.0.1"), ip("2001:db8::1")]);
    assert!(o.failure.is_none() && o.released.is_empty());

    // A family no pool has.
    let mut a = Allocator::new();
    a.set_pool(pool("v4", 1, &["10.0.0.1"]));
    let mut s = svc("v6");
    s.families = vec![Family::V6];
    assert_eq!(reason(&a.ensure(&s)), Some(FamilyUnavailable));
}

#[test]
fn sharing_allowed_and_refused() {
    let mut a = Allocator::new();
    a.set_pool(pool("p", 1, &["10.0.0.1-10.0.0.2"]));
    let web = a.ensure(&shared("web", "k", &[80])).addresses();
    assert_eq!(
        a.ensure(&shared("tls", "k", &[443])).addresses(),
        web,
        "same key, other port: shared"
    );
    assert_eq!(a.holders(web[0]).len(), 2);
    // Same port: a new address, not a collision.
    assert_eq!(
        a.ensure(&shared("web2", "k", &[80])).addresses(),
        [ip("10.0.0.2")]
    );
    // Requesting a shared address with a colliding port is a SharingConflict.
    let mut clash = shared("clash", "k", &[443]);
    clash.requested = vec![web[0]];
    assert_eq!(reason(&a.ensure(&clash)), Some(SharingConflict));
    // Another key, or no key: the address is simply taken.
    let mut other = shared("other", "x", &[8080]);
    other.requested = vec![web[0]];
    assert_eq!(reason(&a.ensure(&other)), Some(RequestedIPUnavailable));
    // Local vs Cluster may not share.
    let mut local = shared("local", "k", &[9000]);
    local.requested = vec![web[0]];
    if let Some(s) = local.sharing.as_mut() {
        s.local = true;
    }
    assert_eq!(reason(&a.ensure(&local)), Some(SharingConflict));
    // Releasing one sharer keeps the address for the other.
    a.release(&ServiceKey::new("default", "web"));
    assert_eq!(a.holders(web[0]), [ServiceKey::new("default", "tls")]);
}

#[test]
fn a_deleted_or_shrunk_pool_moves_its_services() {
    let mut a = Allocator::new();
    a.set_pool(pool("a-old", 1, &["10.0.0.1-10.0.0.2"]));
    a.set_pool(pool("b-new", 2, &["10.1.0.1"]));
    let s1 = svc("s1");
    let s2 = svc("s2");
    assert_eq!(a.ensure(&s1).addresses(), [ip("10.0.0.1")]);
    assert_eq!(a.ensure(&s2).addresses(), [ip("10.0.0.2")]);

    let affected = a.set_pool(pool("a-old", 1, &["10.0.0.1"]));
    assert!(affected.contains(&s2.key));
    let o = a.ensure(&s2);
    assert_eq!(o.addresses(), [ip("10.1.0.1")]);
    assert_eq!(o.released[0].0, ip("10.0.0.2"));
    assert!(
        o.released[0].1.contains("not in any IPPool"),
        "{:?}",
        o.released
    );

    let affected = a.remove_pool("a-old");
    assert_eq!(affected, BTreeSet::from([s1.key.clone()]));
    let o = a.ensure(&s1);
    assert!(o.ips.is_empty());
    assert_eq!(reason(&o), Some(PoolExhausted));
    assert_eq!(o.released.len(), 1);
}

#[test]
fn overlapping_pools_conflict_and_the_newer_allocates_nothing() {
    let mut a = Allocator::new();
    a.set_pool(pool("newer", 20, &["10.0.0.0/24"]));
    a.set_pool(pool("older", 10, &["10.0.0.128/25", "10.9.0.1"]));
    assert_eq!(
        a.report("newer").unwrap().conflict.as_deref(),
        Some("older")
    );
    assert_eq!(a.report("older").unwrap().conflict, None);
    // Only "older" allocates: its lowest address first.
    assert_eq!(a.ensure(&svc("s")).addresses(), [ip("10.0.0.128")]);
    // The address is "older"'s: only the pool that governs it counts it as used.
    let used = |a: &Allocator, p: &str| a.report(p).unwrap().v4.unwrap().used;
    assert_eq!(used(&a, "older"), 1);
    assert_eq!(used(&a, "newer"), 0, "a pool in Conflict governs nothing");
    a.remove_pool("older");
    assert_eq!(a.report("newer").unwrap().conflict, None);
    // The address stays valid: it is still in a pool, which now governs and counts it.
    assert_eq!(a.ensure(&svc("s")).addresses(), [ip("10.0.0.128")]);
    assert_eq!(used(&a, "newer"), 1);
}

#[test]
fn a_pool_that_comes_to_overlap_an_older_one_governs_nothing_and_its_holders_move() {
    let mut a = Allocator::new();
    a.set_pool(pool("newer", 20, &["10.0.1.0/24"]));
    a.set_pool(pool("older", 10, &["10.0.0.0/24"]));
    let mut s = svc("s");
    s.pool = Some("older".into());
    assert_eq!(a.ensure(&s).addresses(), [ip("10.0.0.0")]);
    let mut t = svc("t");
    t.pool = Some("newer".into());
    assert_eq!(a.ensure(&t).addresses(), [ip("10.0.1.0")]);

    // "older" grows into one address of "newer": "newer" is in Conflict as a whole, so the
    // address "t" holds, which no older pool contains, belongs to no pool any more (the
    // speaker would not announce it). "t" is among the Services to look at again.
    let affected = a.set_pool(pool("older", 10, &["10.0.0.0/24", "10.0.1.200"]));
    assert!(affected.contains(&t.key), "{affected:?}");
    assert_eq!(
        a.report("newer").unwrap().conflict.as_deref(),
        Some("older")
    );
    let o = a.ensure(&t);
    assert!(o.ips.is_empty(), "{o:?}");
    assert_eq!(o.released.len(), 1);
    assert!(
        o.released[0]
            .1
            .contains("overlaps the older IPPool older (Conflict)"),
        "{}",
        o.released[0].1
    );
    assert_eq!(reason(&o), Some(NoMatchingPool));
    // "s" keeps its address, and the pool it holds it from is the one that governs it.
    assert_eq!(
        a.ensure(&s).ips,
        [HeldIp {
            ip: ip("10.0.0.0"),
            pool: "older".into()
        }]
    );

    // The overlap fixed, "newer" governs again and "t" is served from it.
    let affected = a.set_pool(pool("older", 10, &["10.0.0.0/24"]));
    // Only "s", a holder in the pool that changed: nobody holds an address of "newer".
    assert_eq!(affected, BTreeSet::from([s.key.clone()]));
    assert_eq!(a.report("newer").unwrap().conflict, None);
    assert_eq!(a.ensure(&t).addresses(), [ip("10.0.1.0")]);
}

#[test]
fn a_requested_pool_must_govern_the_address_not_just_contain_it() {
    let mut a = Allocator::new();
    a.set_pool(pool("older", 10, &["10.0.0.0/24"]));
    a.set_pool(pool("newer", 20, &["10.0.0.0/28"]));
    let mut s = svc("s");
    s.pool = Some("newer".into());
    // "newer" contains 10.0.0.5, but it overlaps "older" and so governs nothing.
    let refused = a.restore(&s, &[ip("10.0.0.5")]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]
            .1
            .contains("belongs to IPPool older, not to the requested pool newer"),
        "{}",
        refused[0].1
    );
}

#[test]
fn a_pool_without_a_creation_time_is_the_youngest() {
    let mut a = Allocator::new();
    a.set_pool(Pool::from_spec("a-untimed", None, &spec(&["10.0.0.0/24"])));
    a.set_pool(pool("b-timed", 5, &["10.0.0.0/25"]));
    assert_eq!(
        a.report("a-untimed").unwrap().conflict.as_deref(),
        Some("b-timed")
    );
    assert_eq!(a.report("b-timed").unwrap().conflict, None);
}

#[test]
fn a_batch_of_pool_changes_is_judged_once_and_agrees_with_one_by_one() {
    let pools = || {
        vec![
            pool("p0", 1, &["10.0.0.0/28"]),
            pool("p1", 2, &["10.0.0.8/29", "fd00::/120"]),
            pool("p2", 3, &["10.0.1.0/28"]),
        ]
    };
    let mut batch = Allocator::new();
    batch.apply_pools(pools(), &[]);
    let mut single = Allocator::new();
    for p in pools() {
        single.set_pool(p);
    }
    for name in ["p0", "p1", "p2"] {
        assert_eq!(
            batch.report(name).unwrap().conflict,
            single.report(name).unwrap().conflict
        );
    }
    assert_eq!(batch.report("p1").unwrap().conflict.as_deref(), Some("p0"));
    // Removing p0 and changing p2 in one batch: p1 leaves Conflict.
    let s = svc("s");
    batch.ensure(&s);
    let affected = batch.apply_pools(vec![pool("p2", 3, &["10.0.2.0/28"])], &["p0".to_string()]);
    assert!(
        affected.contains(&s.key),
        "s held an address of the removed p0"
    );
    assert_eq!(batch.report("p1").unwrap().conflict, None);
    assert!(batch.report("p0").is_none());
}

#[test]
fn restore_keeps_existing_ips_and_the_older_claim_wins() {
    let mut a = Allocator::new();
    a.set_pool(pool("p", 1, &["10.0.0.0/29"]));
    let (old, new) = (svc("old"), svc("new"));
    assert!(a.restore(&old, &[ip("10.0.0.5")]).is_empty());
    let refused = a.restore(&new, &[ip("10.0.0.5")]);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].1.contains("default/old"));
    // Restored addresses are kept by ensure; the newer claimant is moved.
    assert_eq!(a.ensure(&old).addresses(), [ip("10.0.0.5")]);
    assert_eq!(a.ensure(&new).addresses(), [ip("10.0.0.0")]);
    // A restored address outside every pool is refused.
    assert_eq!(a.restore(&svc("x"), &[ip("192.0.2.1")]).len(), 1);
}

#[test]
fn disabled_pools_keep_allocations_but_give_no_new_ones() {
    let mut a = Allocator::new();
    a.set_pool(pool("p", 1, &["10.0.0.0/30"]));
    assert_eq!(a.ensure(&svc("kept")).addresses(), [ip("10.0.0.0")]);
    a.set_pool(pool_with("p", 1, &["10.0.0.0/30"], |s| s.disabled = true));
    assert_eq!(a.ensure(&svc("kept")).addresses(), [ip("10.0.0.0")]);
    assert_eq!(reason(&a.ensure(&svc("new"))), Some(NoMatchingPool));
}

#[test]
fn huge_ipv6_pools_cost_what_their_allocations_cost() {
    let mut a = Allocator::new();
    a.set_pool(pool("v6", 1, &["2001:db8::/48", "::/1"]));
    let mut s = svc("x");
    s.families = vec![Family::V6];
    for i in 0..1000 {
        s.key.name = format!("s{i}");
        assert!(a.ensure(&s).failure.is_none());
    }
    let r = a.report("v6").unwrap();
    assert_eq!(r.v6.as_ref().unwrap().used, 1000);
    // 2^127 addresses, less the anycast addresses of the two CIDR entries (::, 2001:db8::).
    assert_eq!(
        r.v6.unwrap().total.to_string(),
        "170141183460469231731687303715884105726"
    );
    assert!(r.v4.is_none());
}

#[test]
fn ipv6_cidrs_never_hand_out_their_subnet_router_anycast_address() {
    let mut a = Allocator::new();
    a.set_pool(pool("v6", 1, &["2001:db8::/126", "2001:db8:1::/127"]));
    let mut s = svc("x");
    s.families = vec![Family::V6];
    let mut got = Vec::new();
    for i in 0..5 {
        s.key.name = format!("s{i}");
        got.push(a.ensure(&s).addresses()[0]);
    }
    // /126: ::1-::3, never ::; /127 (RFC 6164) has no anycast address: both.
    assert_eq!(
        got,
        [
            ip("2001:db8::1"),
            ip("2001:db8::2"),
            ip("2001:db8::3"),
            ip("2001:db8:1::"),
            ip("2001:db8:1::1"),
        ]
    );
    s.key.name = "s5".into();
    assert_eq!(reason(&a.ensure(&s)), Some(PoolExhausted));
    let r = a.report("v6").unwrap().v6.unwrap();
    assert_eq!((r.total, r.used), (Count::from_u128(5), 5));

    // Asked for by name it is refused too, and the message says why.
    let mut req = svc("req");
    req.families = vec![Family::V6];
    req.requested = vec![ip("2001:db8::")];
    let o = a.ensure(&req);
    assert_eq!(reason(&o), Some(RequestedIPUnavailable));
    let msg = &o.failure.unwrap().message;
    assert!(
        msg.contains("anycast") && msg.contains("2001:db8::/126"),
        "{msg}"
    );

    // A range that starts at the same address is a range: it hands it out.
    let mut b = Allocator::new();
    b.set_pool(pool("r", 1, &["2001:db8::-2001:db8::3"]));
    assert_eq!(b.ensure(&s).addresses(), [ip("2001:db8::")]);
}

#[test]
fn a_service_already_holding_an_anycast_address_keeps_it() {
    let mut a = Allocator::new();
    a.set_pool(pool("v6", 1, &["2001:db8::/126"]));
    let mut old = shared("old", "k", &[80]);
    old.families = vec![Family::V6];
    // Held before a restart (from its status): restored and kept by ensure.
    assert!(a.restore(&old, &[ip("2001:db8::")]).is_empty());
    assert_eq!(a.ensure(&old).addresses(), [ip("2001:db8::")]);
    assert!(a.ensure(&old).released.is_empty());
    // It is in use, so the pool's total counts it: 3 to hand out, plus the kept one.
    let r = a.report("v6").unwrap().v6.unwrap();
    assert_eq!((r.total, r.used), (Count::from_u128(4), 1));
    // Valid sharing joins it, by request or by key.
    let mut join = shared("join", "k", &[443]);
    join.families = vec![Family::V6];
    join.requested = vec![ip("2001:db8::")];
    assert_eq!(a.ensure(&join).addresses(), [ip("2001:db8::")]);
    // Once nobody holds it, it is not handed out again.
    a.release(&old.key);
    a.release(&join.key);
    let mut next = svc("next");
    next.families = vec![Family::V6];
    assert_eq!(a.ensure(&next).addresses(), [ip("2001:db8::1")]);
    let r = a.report("v6").unwrap().v6.unwrap();
    assert_eq!((r.total, r.used), (Count::from_u128(3), 1));
}

#[test]
fn require_dual_stack_keeps_the_address_it_holds_while_the_other_family_is_unavailable() {
    let mut a = Allocator::new();
    a.set_pool(pool("v4", 1, &["10.0.0.1"]));
    a.set_pool(pool("v6", 2, &["2001:db8::1"]));
    let mut req = svc("require");
    req.families = vec![Family::V4, Family::V6];
    req.policy = FamilyPolicy::RequireDualStack;
    assert_eq!(
        a.ensure(&req).addresses(),
        [ip("10.0.0.1"), ip("2001:db8::1")]
    );
    // The IPv6 pool goes away: the IPv6 address is released, the IPv4 one kept.
    a.remove_pool("v6");
    let o = a.ensure(&req);
    assert_eq!(o.addresses(), [ip("10.0.0.1")]);
    assert_eq!(reason(&o), Some(FamilyUnavailable));
    assert!(o.incomplete, "kept, but not served as asked");
    assert_eq!(o.released.len(), 1);
    assert_eq!(o.released[0].0, ip("2001:db8::1"));
    // Still kept on the next look, and not free for anybody else.
    assert_eq!(a.ensure(&req).addresses(), [ip("10.0.0.1")]);
    assert_eq!(reason(&a.ensure(&svc("other"))), Some(PoolExhausted));
    // IPv6 back: both again.
    a.set_pool(pool("v6", 3, &["2001:db8::2"]));
    let o = a.ensure(&req);
    assert_eq!(o.addresses(), [ip("10.0.0.1"), ip("2001:db8::2")]);
    assert!(o.failure.is_none() && !o.incomplete);
    // A Service that holds nothing still gets nothing alone.
    let mut fresh = req.clone();
    fresh.key = ServiceKey::new("default", "fresh");
    a.set_pool(pool("v4b", 4, &["10.0.0.9"]));
    let o = a.ensure(&fresh);
    assert!(o.ips.is_empty());
    assert_eq!(reason(&o), Some(PoolExhausted));
}

// ----- properties -----

#[derive(Clone, Debug)]
enum Op {
    SetPool {
        name: usize,
        created: i64,
        entries: Vec<String>,
        auto: bool,
        disabled: bool,
        avoid: bool,
        priority: i32,
    },
    RemovePool(usize),
    Ensure(usize, Req),
    Release(usize),
}

#[derive(Clone, Debug)]
struct Req {
    v6: bool,
    policy: u8,
    requested: Option<String>,
    pool: Option<usize>,
    sharing: Option<(u8, Vec<u16>, bool)>,
}

const POOLS: [&str; 3] = ["p0", "p1", "p2"];

fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..16, 0u8..6).prop_map(|(a, n)| format!("10.0.0.{}-10.0.0.{}", a, a + n)),
        (0u8..4).prop_map(|a| format!("10.0.0.{}/30", a * 4)),
        (250u8..=255).prop_map(|a| format!("10.0.1.{a}")),
        (0u8..8, 0u8..4).prop_map(|(a, n)| format!("2001:db8::{:x}-2001:db8::{:x}", a, a + n)),
    ]
}

fn some_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..24).prop_map(|a| format!("10.0.0.{a}")),
        (0u8..12).prop_map(|a| format!("2001:db8::{a:x}")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let set = (
        0..3usize,
        0i64..5,
        prop::collection::vec(entry(), 1..4),
        any::<bool>(),
        prop::bool::weighted(0.15),
        any::<bool>(),
        -1i32..2,
    )
        .prop_map(
            |(name, created, entries, auto, disabled, avoid, priority)| Op::SetPool {
                name,
                created,
                entries,
                auto,
                disabled,
                avoid,
                priority,
            },
        );
    let req = (
        any::<bool>(),
        0u8..3,
        prop::option::weighted(0.2, some_ip()),
        prop::option::weighted(0.2, 0..3usize),
        prop::option::weighted(
            0.4,
            (
                0u8..2,
                prop::collection::vec(0u16..4, 1..3),
                prop::bool::weighted(0.2),
            ),
        ),
    )
        .prop_map(|(v6, policy, requested, pool, sharing)| Req {
            v6,
            policy,
            requested,
            pool,
            sharing,
        });
    prop_oneof![
        2 => set,
        1 => (0..3usize).prop_map(Op::RemovePool),
        6 => (0..8usize, req).prop_map(|(s, r)| Op::Ensure(s, r)),
        2 => (0..8usize).prop_map(Op::Release),
    ]
}

fn request(i: usize, r: &Req) -> ServiceRequest {
    let mut s = svc(&format!("s{i}"));
    s.families = if r.v6 {
        vec![Family::V6, Family::V4]
    } else {
        vec![Family::V4, Family::V6]
    };
    s.policy = [
        FamilyPolicy::SingleStack,
        FamilyPolicy::PreferDualStack,
        FamilyPolicy::RequireDualStack,
    ][r.policy as usize];
    s.requested = r.requested.iter().filter_map(|x| x.parse().ok()).collect();
    s.pool = r.pool.map(|p| POOLS[p].to_string());
    s.sharing = r.sharing.as_ref().map(|(k, ports, local)| Sharing {
        key: format!("key{k}"),
        ports: ports
            .iter()
            .map(|p| PortKey {
                protocol: "TCP".into(),
                port: *p,
            })
            .collect(),
        local: *local,
        selector: BTreeMap::new(),
    });
    s
}

/// Applies one operation the way the controller does: a pool change is followed by a
/// second look at every Service it affects.
fn apply(a: &mut Allocator, reqs: &mut BTreeMap<usize, ServiceRequest>, op: &Op) {
    let affected = match op {
        Op::SetPool {
            name,
            created,
            entries,
            auto,
            disabled,
            avoid,
            priority,
        } => {
            let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
            a.set_pool(pool_with(POOLS[*name], *created, &refs, |s| {
                s.auto_assign = *auto;
                s.disabled = *disabled;
                s.avoid_buggy_ips = *avoid;
                s.priority = *priority;
            }))
        }
        Op::RemovePool(p) => a.remove_pool(POOLS[*p]),
        Op::Ensure(i, r) => {
            let s = request(*i, r);
            a.ensure(&s);
            reqs.insert(*i, s);
            BTreeSet::new()
        }
        Op::Release(i) => {
            if let Some(s) = reqs.remove(i) {
                a.release(&s.key);
            }
            BTreeSet::new()
        }
    };
    for s in reqs.values() {
        if affected.contains(&s.key) {
            a.ensure(s);
        }
    }
}

fn check_invariants(a: &Allocator) -> Result<(), TestCaseError> {
    let overlaps = Overlaps::new(
        a.pools
            .values()
            .map(|s| (s.pool.name.as_str(), s.pool.age.created, s.pool.blocks())),
    );
    // Held and holders agree.
    for (key, fams) in &a.held {
        for (f, h) in fams.iter() {
            prop_assert_eq!(Family::of(h.ip), f);
            prop_assert!(
                a.ips
                    .get(&h.ip)
                    .is_some_and(|e| e.holders.contains_key(key))
            );
        }
    }
    for (ipa, e) in &a.ips {
        prop_assert!(!e.holders.is_empty());
        for k in e.holders.keys() {
            prop_assert!(
                a.held
                    .get(k)
                    .is_some_and(|m| m.values().any(|h| h.ip == *ipa))
            );
        }
        // Two holders only by valid sharing.
        let hs: Vec<(&ServiceKey, &Option<Sharing>)> = e.holders.iter().collect();
        for (i, (ka, sa)) in hs.iter().enumerate() {
            for (kb, sb) in &hs[i + 1..] {
                let (Some(sa), Some(sb)) = (sa, sb) else {
                    return Err(TestCaseError::fail(format!(
                        "{ipa} held by {ka} and {kb} without sharing"
                    )));
                };
                prop_assert_eq!(&sa.key, &sb.key);
                prop_assert_eq!(sa.local, sb.local);
                prop_assert!(sa.ports.is_disjoint(&sb.ports), "{} ports collide", ipa);
            }
        }
        // Every held IP lies in the pool that governs it by the rule the speaker follows
        // (judged here afresh, not from the allocator's own record), and its holders name
        // that pool.
        let governing = overlaps.governing(*ipa);
        prop_assert!(
            governing.is_some_and(|g| a.pools.get(g).is_some_and(|s| s.pool.can_hold(*ipa))),
            "{} is held but no pool governs it ({:?})",
            ipa,
            governing
        );
        for k in e.holders.keys() {
            let named = a.held[k]
                .values()
                .find(|h| h.ip == *ipa)
                .map(|h| h.pool.as_str());
            prop_assert_eq!(named, governing, "{} names another pool for {}", k, ipa);
        }
    }
    // Pool usage matches the held addresses.
    for st in a.pools.values() {
        for f in [Family::V4, Family::V6] {
            let n = a
                .ips
                .keys()
                .filter(|i| Family::of(**i) == f && st.pool.can_hold(**i))
                .count() as u128;
            prop_assert_eq!(st.used(f).count(), n, "pool {} {}", &st.pool.name, f);
        }
    }
    Ok(())
}

/// RequireDualStack Services get both families or nothing new: one holding a single address
/// held that address before the operation (it was kept, never given alone).
fn check_require_dual_stack(
    before: &Allocator,
    after: &Allocator,
    reqs: &BTreeMap<usize, ServiceRequest>,
) -> Result<(), TestCaseError> {
    for s in reqs.values() {
        if s.policy == FamilyPolicy::RequireDualStack {
            let now = after.held(&s.key);
            prop_assert!(now.len() <= 2);
            if now.len() == 1 {
                let had = before.held(&s.key);
                prop_assert!(
                    had.iter().any(|h| h.ip == now[0].ip),
                    "{} was given {} alone",
                    &s.key,
                    now[0].ip
                );
            }
        }
    }
    Ok(())
}

fn snapshot(a: &Allocator) -> Vec<(ServiceKey, Vec<IpAddr>)> {
    a.held
        .iter()
        .map(|(k, m)| (k.clone(), m.values().map(|h| h.ip).collect()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_histories(ops in prop::collection::vec(op(), 1..60)) {
        let mut a = Allocator::new();
        let mut reqs = BTreeMap::new();
        for op in &ops {
            let before = a.clone();
            apply(&mut a, &mut reqs, op);
            check_invariants(&a)?;
            check_require_dual_stack(&before, &a, &reqs)?;
        }

        // Same inputs, same result.
        let mut b = Allocator::new();
        let mut reqs_b = BTreeMap::new();
        for op in &ops {
            apply(&mut b, &mut reqs_b, op);
        }
        prop_assert_eq!(snapshot(&a), snapshot(&b));

        // Allocating and releasing a newcomer gives back the same free set.
        let used_before: Vec<(String, u128, u128)> = a.pools.values().map(|s| (s.pool.name.clone(), s.used_v4.count(), s.used_v6.count())).collect();
        let ips_before: Vec<IpAddr> = a.ips.keys().copied().collect();
        let mut newcomer = svc("newcomer");
        newcomer.families = vec![Family::V4, Family::V6];
        newcomer.policy = FamilyPolicy::PreferDualStack;
        a.ensure(&newcomer);
        a.release(&newcomer.key);
        let used_after: Vec<(String, u128, u128)> = a.pools.values().map(|s| (s.pool.name.clone(), s.used_v4.count(), s.used_v6.count())).collect();
        prop_assert_eq!(used_before, used_after);
        prop_assert_eq!(ips_before, a.ips.keys().copied().collect::<Vec<_>>());

        // Releasing everyone frees everything.
        for s in reqs.values() {
            a.release(&s.key);
        }
        prop_assert!(a.ips.is_empty() && a.held.is_empty() && a.shared.is_empty());
        for st in a.pools.values() {
            prop_assert_eq!(st.used_v4.count() + st.used_v6.count(), 0);
        }
    }

    /// A controller restart (restore from status, then ensure) changes no address.
    #[test]
    fn restart_changes_no_address(ops in prop::collection::vec(op(), 1..50)) {
        let mut a = Allocator::new();
        let mut reqs = BTreeMap::new();
        for op in &ops {
            apply(&mut a, &mut reqs, op);
        }
        let mut b = Allocator::new();
        for name in a.pool_names() {
            if let Some(p) = a.pool(name) {
                b.set_pool(p.clone());
            }
        }
        for s in reqs.values() {
            let ips: Vec<IpAddr> = a.held(&s.key).iter().map(|h| h.ip).collect();
            prop_assert!(b.restore(s, &ips).is_empty());
        }
        for s in reqs.values() {
            let before = a.held(&s.key);
            let o = b.ensure(s);
            // Restored addresses are kept; only missing families may be added.
            for h in &before {
                prop_assert!(o.ips.contains(h), "{} lost {}", &s.key, h.ip);
            }
        }
    }
}
