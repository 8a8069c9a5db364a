//! The chaos run: a seeded, randomized history of what users and failures do to a running
//! controller (two replicas against a real API server), with the invariants checked against
//! what the API server holds after every quiet period.
//!
//! Operations: Service creates, updates (annotations, families, class, type, ports,
//! traffic policy, labels) and deletes; pool edits (shrink, grow, disable, overlap,
//! priority and selector changes, delete); Namespace label changes; controller restarts
//! (SIGTERM) and leader kills (SIGKILL, the Lease not released).
//!
//! Invariants, after each quiet period (a Lease held by a live replica and nothing in the
//! API moving for a while):
//! 1. no address on two Services except by valid sharing (same key, disjoint ports, same
//!    traffic policy, same selector when Local);
//! 2. no address outside the pool that governs it (`ferrolb_crds::overlap`, judged here from
//!    the IPPools), nor outside a pool the Service asked for;
//! 3. the cluster is a fixpoint: an allocator rebuilt from the API server's state keeps
//!    every Service's addresses and has nothing to give any Service that it lacks (so
//!    every Service that could have an address has one); not-ours Services hold nothing;
//!    each pool's status counts exactly the held addresses it governs;
//! 4. no address of a Service (same UID) changed without a controller log line that
//!    planned its release with the reason;
//! 5. no event is emitted while nothing changes, and a round of controller restarts and
//!    leader kills alone changes no address and emits no event.
//!
//! `FERROLB_CHAOS_SEED` (default: from the clock, printed), `FERROLB_CHAOS_OPS` (default 300),
//! `FERROLB_CHAOS_ROUND` (at most this many operations between two quiet periods, default
//! 24), `FERROLB_CHAOS_REPORT` (a file to write the Markdown summary to). A failing seed is
//! replayed by setting it; any failure found becomes a regression test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Cluster, condition};
use ferrolb_controller::allocator::{Allocator, Pool};
use ferrolb_controller::service::{self, Handling, status_ips};
use ferrolb_crds::address::AddressBlock;
use ferrolb_crds::names::{
    ANNOTATION_ALLOW_SHARED_IP, ANNOTATION_IP_POOL, ANNOTATION_LOAD_BALANCER_IPS,
};
use ferrolb_crds::overlap::Overlaps;
use ferrolb_crds::{Family, IPPool};
use ferrolb_e2e::process::Supervised;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const NAMESPACES: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];
const SERVICES_PER_NAMESPACE: usize = 7;
const POOLS: [&str; 4] = ["p0", "p1", "p2", "p3"];
const REPLICAS: usize = 2;
/// How long nothing may move before the state is checked.
const QUIET: Duration = Duration::from_secs(3);
/// How long a check may take to pass after a quiet period (a reconcile in backoff).
const SETTLE: Duration = Duration::from_secs(40);

/// splitmix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// An IPPool spec drawn at random over a small address space, so that pools overlap,
/// run out and change under the Services.
fn pool_spec(rng: &mut Rng) -> Value {
    let mut addresses = Vec::new();
    let first = rng.below(24);
    let len = 1 + rng.below(6);
    addresses.push(format!("10.60.0.{first}-10.60.0.{}", first + len - 1));
    if rng.chance(20) {
        // A CIDR whose network and broadcast addresses avoidBuggyIPs would skip.
        addresses.push(format!("10.60.1.{}/30", 4 * rng.below(4)));
    }
    if rng.chance(60) {
        if rng.chance(30) {
            // An IPv6 CIDR: its all-zero address is never handed out.
            addresses.push(format!("fd00:60::{:x}/126", 4 * rng.below(6)));
        } else {
            let f = rng.below(24);
            addresses.push(format!("fd00:60::{f:x}-fd00:60::{:x}", f + rng.below(4)));
        }
    }
    let mut spec = json!({"addresses": addresses});
    if rng.chance(10) {
        spec["disabled"] = json!(true);
    }
    if rng.chance(10) {
        spec["autoAssign"] = json!(false);
    }
    if rng.chance(15) {
        spec["avoidBuggyIPs"] = json!(true);
    }
    spec["priority"] = json!(rng.below(3));
    if rng.chance(20) {
        spec["serviceSelector"] = json!({"matchLabels": {"tier": rng.pick(&["x", "y"])}});
    }
    if rng.chance(20) {
        let team = *rng.pick(&["red", "blue"]);
        spec["namespaceSelector"] = if rng.chance(50) {
            json!({"matchLabels": {"team": team}})
        } else {
            json!({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": [team]}]})
        };
    }
    spec
}

/// A Service (spec and annotations) drawn at random.
fn service_object(rng: &mut Rng, ns: &str, name: &str) -> Value {
    let lb = rng.chance(90);
    let mut spec = json!({
        "type": if lb { "LoadBalancer" } else { "ClusterIP" },
        "selector": {"app": name},
    });
    let mut ports = vec![json!({"name": "p80", "port": 80, "protocol": "TCP"})];
    if rng.chance(40) {
        ports.push(json!({"name": "p443", "port": 443, "protocol": "TCP"}));
    }
    if rng.chance(30) {
        ports.remove(0);
        if ports.is_empty() {
            ports.push(json!({"name": "p8080", "port": 8080, "protocol": "TCP"}));
        }
    }
    spec["ports"] = json!(ports);
    let (families, policy) = rng
        .pick(&[
            (&["IPv4"][..], "SingleStack"),
            (&["IPv4"][..], "SingleStack"),
            (&["IPv6"][..], "SingleStack"),
            (&["IPv4", "IPv6"][..], "PreferDualStack"),
            (&["IPv6", "IPv4"][..], "PreferDualStack"),
            (&["IPv4", "IPv6"][..], "RequireDualStack"),
        ])
        .to_owned();
    spec["ipFamilies"] = json!(families);
    spec["ipFamilyPolicy"] = json!(policy);
    if lb {
        if rng.chance(20) {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        if rng.chance(10) {
            spec["loadBalancerClass"] = json!(rng.pick(&["ferrolb.io/l2", "example.com/other"]));
        }
    }
    let mut annotations = serde_json::Map::new();
    if rng.chance(15) {
        annotations.insert(ANNOTATION_IP_POOL.into(), json!(rng.pick(&POOLS)));
    }
    if rng.chance(30) {
        annotations.insert(
            ANNOTATION_ALLOW_SHARED_IP.into(),
            json!(rng.pick(&["k1", "k2"])),
        );
    }
    if rng.chance(12) {
        let v4 = format!("10.60.0.{}", rng.below(24));
        let v6 = format!("fd00:60::{:x}", rng.below(24));
        let asked = match rng.below(4) {
            0 => v6,
            1 => format!("{v4},{v6}"),
            2 if rng.chance(30) => "not-an-address".to_string(),
            _ => v4,
        };
        if rng.chance(20) && !asked.contains(',') {
            spec["loadBalancerIP"] = json!(asked);
        } else {
            annotations.insert(ANNOTATION_LOAD_BALANCER_IPS.into(), json!(asked));
        }
    }
    let mut labels = serde_json::Map::new();
    if rng.chance(50) {
        labels.insert("tier".into(), json!(rng.pick(&["x", "y"])));
    }
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations, "labels": labels},
        "spec": spec})
}

/// What the run did and found.
#[derive(Default)]
struct Tally {
    ops: usize,
    refused_by_api: usize,
    service_writes: usize,
    service_deletes: usize,
    pool_writes: usize,
    pool_deletes: usize,
    namespace_changes: usize,
    restarts: usize,
    leader_kills: usize,
    quiet_periods: usize,
    checks: usize,
    address_changes: usize,
    failures: Vec<String>,
}

/// The replicas: one slot each, a new identity (and log file) per process.
struct Replicas {
    cluster: Cluster,
    identities: Vec<String>,
    generation: usize,
}

impl Replicas {
    fn spawn(&mut self, slot: usize) -> Supervised {
        self.generation += 1;
        let identity = format!("r{slot}-g{}", self.generation);
        if slot < self.identities.len() {
            self.identities[slot] = identity.clone();
        } else {
            self.identities.push(identity.clone());
        }
        let kubeconfig = self.cluster.cp.kubeconfig_path().to_path_buf();
        self.cluster.controller_process(&identity, &kubeconfig, &[])
    }

    fn replace(&mut self, slot: usize, signal: Signal) {
        let old = &mut self.cluster.controllers[slot];
        if signal == Signal::SIGKILL
            && let Some(pid) = old.pid().and_then(|p| i32::try_from(p).ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        old.stop();
        let new = self.spawn(slot);
        self.cluster.controllers[slot] = new;
    }

    /// The slot whose process holds the Lease, if a live replica does.
    async fn leader(&self) -> Option<usize> {
        let api: Api<Lease> = Api::namespaced(self.cluster.client(), "ferrolb-system");
        let lease = api.get_opt("ferrolb-controller").await.ok()??;
        let holder = lease.spec?.holder_identity?;
        // The process adds a suffix of its own to the identity it is given.
        self.identities
            .iter()
            .position(|id| holder == *id || holder.starts_with(&format!("{id}_")))
    }

    /// Every controller log written in this run, old processes' included.
    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.cluster.cp.dir()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("controller-") && name.ends_with(".log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }
}

/// What the API server holds that the invariants are about.
#[derive(Clone, Debug, PartialEq)]
struct State {
    pools: Vec<IPPool>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    services: Vec<Service>,
}

impl State {
    async fn read(client: &kube::Client) -> State {
        let pools = Api::<IPPool>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let mut namespaces = BTreeMap::new();
        let mut services = Vec::new();
        for ns in NAMESPACES {
            let n = Api::<Namespace>::all(client.clone()).get(ns).await.unwrap();
            namespaces.insert(ns.to_string(), n.metadata.labels.unwrap_or_default());
            services.extend(
                Api::<Service>::namespaced(client.clone(), ns)
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items,
            );
        }
        State {
            pools,
            namespaces,
            services,
        }
    }

    /// What moves when the controller works: resource versions.
    fn fingerprint(&self) -> Vec<String> {
        self.pools
            .iter()
            .map(|p| p.metadata.resource_version.clone().unwrap_or_default())
            .chain(
                self.services
                    .iter()
                    .map(|s| s.metadata.resource_version.clone().unwrap_or_default()),
            )
            .collect()
    }

    /// Each Service's addresses, by namespace/name, with its UID; only Services that are
    /// ferrolb's (one that stopped being ours lost its address by its own change).
    fn addresses(&self) -> BTreeMap<String, (String, Vec<IpAddr>)> {
        self.services
            .iter()
            .filter(|s| service::handling(s, true) == Handling::Ours)
            .map(|s| {
                (
                    key(s),
                    (s.metadata.uid.clone().unwrap_or_default(), status_ips(s)),
                )
            })
            .collect()
    }
}

fn key(s: &Service) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or(""),
        s.metadata.name.as_deref().unwrap_or("")
    )
}

fn created(p: &IPPool) -> Option<i64> {
    p.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
}

fn annotation<'a>(s: &'a Service, name: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Invariants 1-3 on one state; the problems found.
fn check_state(st: &State) -> Vec<String> {
    let mut problems = Vec::new();
    let blocks: Vec<(String, Option<i64>, Vec<AddressBlock>)> = st
        .pools
        .iter()
        .map(|p| {
            let bs = p
                .spec
                .addresses
                .iter()
                .filter_map(|a| AddressBlock::parse(a).ok())
                .collect();
            (p.metadata.name.clone().unwrap_or_default(), created(p), bs)
        })
        .collect();
    let overlaps = Overlaps::new(
        blocks
            .iter()
            .map(|(n, c, b)| (n.as_str(), *c, b.as_slice())),
    );

    // 1. Sharing.
    let mut by_ip: BTreeMap<IpAddr, Vec<&Service>> = BTreeMap::new();
    for s in &st.services {
        for ip in status_ips(s) {
            by_ip.entry(ip).or_default().push(s);
        }
    }
    for (ip, holders) in &by_ip {
        for (i, a) in holders.iter().enumerate() {
            for b in &holders[i + 1..] {
                let (ka, kb) = (
                    annotation(a, ANNOTATION_ALLOW_SHARED_IP),
                    annotation(b, ANNOTATION_ALLOW_SHARED_IP),
                );
                let ports = |s: &Service| -> BTreeSet<(String, i32)> {
                    s.spec
                        .iter()
                        .flat_map(|sp| sp.ports.iter().flatten())
                        .map(|p| (p.protocol.clone().unwrap_or("TCP".into()), p.port))
                        .collect()
                };
                let local = |s: &Service| {
                    s.spec
                        .as_ref()
                        .and_then(|sp| sp.external_traffic_policy.as_deref())
                        == Some("Local")
                };
                let selector = |s: &Service| s.spec.as_ref().and_then(|sp| sp.selector.clone());
                let valid = ka.is_some()
                    && ka == kb
                    && ports(a).is_disjoint(&ports(b))
                    && local(a) == local(b)
                    && (!local(a) || selector(a) == selector(b));
                if !valid {
                    problems.push(format!(
                        "{ip} is on {} and {} without valid sharing",
                        key(a),
                        key(b)
                    ));
                }
            }
        }
    }

    // 2. Governing pool, requested pool, requested address; not-ours hold nothing.
    for s in &st.services {
        let ips = status_ips(s);
        if service::handling(s, true) != Handling::Ours {
            if !ips.is_empty() || condition(s).is_some() {
                problems.push(format!(
                    "{} is not ferrolb's but shows {ips:?} / {:?}",
                    key(s),
                    condition(s)
                ));
            }
            continue;
        }
        for ip in &ips {
            match overlaps.governing(*ip) {
                None => problems.push(format!("{}: {ip} is in no pool that governs it", key(s))),
                Some(g) => {
                    if let Some(asked) = annotation(s, ANNOTATION_IP_POOL)
                        && asked != g
                    {
                        problems.push(format!(
                            "{}: {ip} is governed by {g}, not by the requested pool {asked}",
                            key(s)
                        ));
                    }
                }
            }
        }
    }

    // 3. Fixpoint, from the controller's own pure core fed with the API server's state.
    let mut alloc = Allocator::new();
    alloc.apply_pools(
        st.pools
            .iter()
            .map(|p| {
                Pool::from_spec(
                    p.metadata.name.as_deref().unwrap_or(""),
                    created(p),
                    &p.spec,
                )
            })
            .collect(),
        &[],
    );
    let mut ours: Vec<&Service> = st
        .services
        .iter()
        .filter(|s| service::handling(s, true) == Handling::Ours)
        .collect();
    ours.sort_by_key(|s| {
        (
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            key(s),
        )
    });
    let empty = BTreeMap::new();
    let labels = |s: &Service| {
        st.namespaces
            .get(s.metadata.namespace.as_deref().unwrap_or(""))
            .unwrap_or(&empty)
    };
    for s in &ours {
        match service::request(s, labels(s)) {
            Ok(req) => {
                for (ip, why) in alloc.restore(&req, &status_ips(s)) {
                    problems.push(format!("{} holds {ip}, which it may not: {why}", key(s)));
                }
            }
            Err(e) => {
                if !status_ips(s).is_empty() {
                    problems.push(format!("{} is invalid ({e}) but holds addresses", key(s)));
                }
                let reason = condition(s).map(|c| c.1);
                if reason.as_deref() != Some("InvalidRequest") {
                    problems.push(format!(
                        "{} is invalid ({e}) but its condition says {reason:?}",
                        key(s)
                    ));
                }
            }
        }
    }
    for s in &ours {
        let Ok(req) = service::request(s, labels(s)) else {
            continue;
        };
        let mut probe = alloc.clone();
        let got: BTreeSet<IpAddr> = probe.ensure(&req).addresses().into_iter().collect();
        let has: BTreeSet<IpAddr> = status_ips(s).into_iter().collect();
        if got != has {
            problems.push(format!(
                "{} shows {has:?} but could hold {got:?} (condition {:?})",
                key(s),
                condition(s)
            ));
        }
        if condition(s).is_none() {
            problems.push(format!("{} has no IPAllocated condition", key(s)));
        }
    }
    // Each pool's status counts the distinct held addresses it governs.
    for p in &st.pools {
        let name = p.metadata.name.as_deref().unwrap_or("");
        for (family, usage) in [
            (Family::V4, p.status.as_ref().and_then(|s| s.ipv4.as_ref())),
            (Family::V6, p.status.as_ref().and_then(|s| s.ipv6.as_ref())),
        ] {
            let governed = by_ip
                .keys()
                .filter(|ip| Family::of(**ip) == family && overlaps.governing(**ip) == Some(name))
                .count();
            let shown = usage.map(|u| u.used.clone());
            if let Some(shown) = shown
                && shown != governed.to_string()
            {
                problems.push(format!(
                    "pool {name} shows {family} used {shown}, but it governs {governed} held addresses"
                ));
            }
        }
    }
    problems
}

/// The state, for a failure message: pools, Namespace labels, and each Service's request.
fn describe(st: &State) -> String {
    let mut out = String::from("state at the failed check:\n");
    for p in &st.pools {
        out.push_str(&format!(
            "  pool {} created {:?}: {} status {}\n",
            p.metadata.name.as_deref().unwrap_or(""),
            created(p),
            serde_json::to_string(&p.spec).unwrap_or_default(),
            serde_json::to_string(&p.status).unwrap_or_default()
        ));
    }
    for (ns, labels) in &st.namespaces {
        out.push_str(&format!("  namespace {ns} {labels:?}\n"));
    }
    for svc in &st.services {
        out.push_str(&format!(
            "  service {} created {:?} annotations {:?} spec {} status {:?} condition {:?}\n",
            key(svc),
            svc.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            svc.metadata.annotations,
            serde_json::to_string(&svc.spec).unwrap_or_default(),
            status_ips(svc),
            condition(svc)
        ));
    }
    out
}

/// Invariant 4: every address a Service (same UID) lost was released by a planned reconcile
/// whose log line names it and the reason.
fn check_changes(
    before: &BTreeMap<String, (String, Vec<IpAddr>)>,
    after: &BTreeMap<String, (String, Vec<IpAddr>)>,
    logs: &str,
    tally: &mut Tally,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, (uid, ips)) in before {
        let Some((uid_after, ips_after)) = after.get(k) else {
            continue;
        };
        if uid != uid_after {
            continue;
        }
        for ip in ips.iter().filter(|ip| !ips_after.contains(ip)) {
            tally.address_changes += 1;
            let span = format!("reconcile{{service={k}}}");
            let named = format!("Released {ip}: ");
            let explained = logs
                .lines()
                .any(|l| l.contains(&span) && l.contains("planned") && l.contains(&named));
            if !explained {
                problems.push(format!(
                    "{k} lost {ip} (now {ips_after:?}) with no planned release naming a reason"
                ));
            }
        }
    }
    problems
}

async fn events(client: &kube::Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for ns in NAMESPACES {
        for e in Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            out.insert(
                e.metadata.name.clone().unwrap_or_default(),
                format!(
                    "{} x{count}: {} {}",
                    e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                ),
            );
        }
    }
    out
}

/// Waits for a quiet period: a live replica holds the Lease and the API state has not
/// moved for [`QUIET`].
async fn quiet(r: &Replicas) -> State {
    let client = r.cluster.client();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = State::read(&client).await;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = State::read(&client).await;
        let led = r.leader().await.is_some();
        if now.fingerprint() != last.fingerprint() || !led {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the API state never came to rest"
        );
    }
}

/// Waits for a quiet period and checks invariants 1-3 until they hold or [`SETTLE`] runs
/// out; returns the state and what still failed.
async fn settle(r: &Replicas, tally: &mut Tally) -> (State, Vec<String>) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let st = quiet(r).await;
        tally.checks += 1;
        let problems = check_state(&st);
        if problems.is_empty() || Instant::now() > deadline {
            return (st, problems);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn apply_service(client: &kube::Client, obj: &Value, tally: &mut Tally) {
    let ns = obj["metadata"]["namespace"].as_str().unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap();
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply("chaos").force();
    tally.service_writes += 1;
    match api.patch(name, &pp, &Patch::Apply(obj)).await {
        Ok(_) => {}
        // Immutable fields (the primary family, loadBalancerClass): delete and create anew.
        Err(kube::Error::Api(e)) if e.code == 422 => {
            let _ = api.delete(name, &DeleteParams::default()).await;
            for _ in 0..50 {
                if api.get_opt(name).await.unwrap().is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let svc: Service = serde_json::from_value(obj.clone()).unwrap();
            if api.create(&PostParams::default(), &svc).await.is_err() {
                tally.refused_by_api += 1;
            }
        }
        Err(_) => tally.refused_by_api += 1,
    }
}

async fn apply_pool(client: &kube::Client, name: &str, spec: Value, tally: &mut Tally) {
    let api: Api<IPPool> = Api::all(client.clone());
    let obj = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": name}, "spec": spec});
    tally.pool_writes += 1;
    if api
        .patch(
            name,
            &PatchParams::apply("chaos").force(),
            &Patch::Apply(&obj),
        )
        .await
        .is_err()
    {
        tally.refused_by_api += 1;
    }
}

/// One random operation.
async fn step(r: &mut Replicas, rng: &mut Rng, tally: &mut Tally) {
    let client = r.cluster.client();
    tally.ops += 1;
    let roll = rng.below(100);
    match roll {
        0..=39 => {
            let ns = *rng.pick(&NAMESPACES);
            let name = format!("s{}", rng.below(SERVICES_PER_NAMESPACE as u64));
            let obj = service_object(rng, ns, &name);
            apply_service(&client, &obj, tally).await;
        }
        40..=51 => {
            let ns = *rng.pick(&NAMESPACES);
            let name = format!("s{}", rng.below(SERVICES_PER_NAMESPACE as u64));
            tally.service_deletes += 1;
            let _ = Api::<Service>::namespaced(client, ns)
                .delete(&name, &DeleteParams::default())
                .await;
        }
        52..=73 => {
            let name = *rng.pick(&POOLS);
            let spec = pool_spec(rng);
            apply_pool(&client, name, spec, tally).await;
        }
        74..=78 => {
            tally.pool_deletes += 1;
            let name = *rng.pick(&POOLS[..]);
            let _ = Api::<IPPool>::all(client)
                .delete(name, &DeleteParams::default())
                .await;
        }
        79..=88 => {
            tally.namespace_changes += 1;
            let ns = *rng.pick(&NAMESPACES);
            let labels = match rng.below(3) {
                0 => json!({}),
                1 => json!({"team": "red"}),
                _ => json!({"team": "blue"}),
            };
            r.cluster.namespace(ns, labels).await;
        }
        89..=91 => {
            tally.restarts += 1;
            let slot = rng.below(REPLICAS as u64) as usize;
            r.replace(slot, Signal::SIGTERM);
        }
        92..=94 => {
            tally.leader_kills += 1;
            let slot = match r.leader().await {
                Some(s) => s,
                None => rng.below(REPLICAS as u64) as usize,
            };
            r.replace(slot, Signal::SIGKILL);
        }
        _ => tokio::time::sleep(Duration::from_millis(rng.below(400))).await,
    }
    if rng.chance(30) {
        tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_keeps_every_invariant() {
    let seed = env_u64("FERROLB_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let total_ops = env_u64("FERROLB_CHAOS_OPS").unwrap_or(300) as usize;
    // Operations per round at most (each round ends in a quiet period and the checks).
    let round_max = env_u64("FERROLB_CHAOS_ROUND").unwrap_or(24);
    println!("chaos seed {seed} ({total_ops} operations): replay with FERROLB_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let cluster = Cluster::start(0).await;
    let mut r = Replicas {
        cluster,
        identities: Vec::new(),
        generation: 0,
    };
    for slot in 0..REPLICAS {
        let p = r.spawn(slot);
        r.cluster.controllers.push(p);
    }
    let client = r.cluster.client();
    for ns in NAMESPACES {
        r.cluster.namespace(ns, json!({})).await;
    }
    let mut tally = Tally::default();
    for name in POOLS {
        let spec = pool_spec(&mut rng);
        apply_pool(&client, name, spec, &mut tally).await;
    }

    let (mut state, problems) = settle(&r, &mut tally).await;
    tally.quiet_periods += 1;
    tally.failures.extend(problems);
    let mut round = 0usize;
    while tally.ops < total_ops && tally.failures.is_empty() {
        round += 1;
        // Every eighth round, restarts and leader kills alone: nothing may change.
        let disruption_only = round.is_multiple_of(8);
        let events_before = events(&client).await;
        if disruption_only {
            let n = 1 + rng.below(2);
            for _ in 0..n {
                tally.ops += 1;
                if rng.chance(50) {
                    tally.restarts += 1;
                    let slot = rng.below(REPLICAS as u64) as usize;
                    r.replace(slot, Signal::SIGTERM);
                } else {
                    tally.leader_kills += 1;
                    let slot = r.leader().await.unwrap_or(0);
                    r.replace(slot, Signal::SIGKILL);
                }
            }
        } else {
            let n = 5 + rng.below(round_max.saturating_sub(4).max(1));
            for _ in 0..n {
                step(&mut r, &mut rng, &mut tally).await;
            }
        }
        let (now, mut problems) = settle(&r, &mut tally).await;
        tally.quiet_periods += 1;
        if !problems.is_empty() {
            problems.push(describe(&now));
        }
        problems.extend(check_changes(
            &state.addresses(),
            &now.addresses(),
            &r.logs(),
            &mut tally,
        ));
        if disruption_only {
            if now.addresses() != state.addresses() {
                problems.push(format!(
                    "round {round}: restarts alone changed addresses:\nbefore {:?}\nafter  {:?}",
                    state.addresses(),
                    now.addresses()
                ));
            }
            let after = events(&client).await;
            for (name, ev) in &after {
                if events_before.get(name) != Some(ev) {
                    problems.push(format!(
                        "round {round}: restarts alone emitted an event: {ev}"
                    ));
                }
            }
        }
        // Nothing moves now: no event may appear either. (When the state itself moved in
        // the meantime, a retried write was still due: wait for quiet again.)
        let mut now = now;
        for _ in 0..3 {
            let quiet_events = events(&client).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let later = State::read(&client).await;
            if later.fingerprint() != now.fingerprint() {
                now = quiet(&r).await;
                continue;
            }
            tally.checks += 1;
            for (name, ev) in &events(&client).await {
                if quiet_events.get(name) != Some(ev) {
                    problems.push(format!(
                        "round {round}: an event while nothing changed: {ev}"
                    ));
                }
            }
            break;
        }
        for p in problems {
            tally
                .failures
                .push(format!("round {round} (op {}): {p}", tally.ops));
        }
        state = now;
    }

    let report = format!(
        "### Controller chaos run (seed {seed}, at most {round_max} operations a round)\n\n\
         | figure | value |\n|---|---:|\n\
         | operations | {} |\n\
         | Service writes (creates and updates) / deletes | {} / {} |\n\
         | pool writes / deletes | {} / {} |\n\
         | Namespace label changes | {} |\n\
         | controller restarts (SIGTERM) / leader kills (SIGKILL) | {} / {} |\n\
         | writes the API server refused (schema, immutable fields) | {} |\n\
         | quiet periods / invariant checks | {} / {} |\n\
         | addresses that changed, each checked for its logged reason | {} |\n\
         | failures | {} |\n\
         | run time | {:.0} s |\n",
        tally.ops,
        tally.service_writes,
        tally.service_deletes,
        tally.pool_writes,
        tally.pool_deletes,
        tally.namespace_changes,
        tally.restarts,
        tally.leader_kills,
        tally.refused_by_api,
        tally.quiet_periods,
        tally.checks,
        tally.address_changes,
        tally.failures.len(),
        started.elapsed().as_secs_f64(),
    );
    println!("{report}");
    if let Ok(path) = std::env::var("FERROLB_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    assert!(
        tally.failures.is_empty(),
        "seed {seed}: {} failures (replay with FERROLB_CHAOS_SEED={seed}); logs in {}:\n{}",
        tally.failures.len(),
        r.cluster.cp.dir().display(),
        tally.failures.join("\n")
    );
}
