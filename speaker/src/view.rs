//! The speaker's view of the cluster, kept current one change at a time: the watches mark
//! which objects changed ([`Dirty`]), and [`View::apply`] converts only those objects into
//! election inputs (see [`inputs`](crate::inputs)) and hands them to the
//! [`Elector`], which re-decides only the IPs they can affect. An EndpointSlice change
//! costs one Service's conversion and that Service's IPs, not the cluster.
//!
//! A watch that lists again (start, restart, expired resourceVersion) marks its whole kind,
//! and every object of it is compared again: the decisions only move where a value moved.

use std::collections::{BTreeMap, BTreeSet};

use ferrolb_crds::IPPool;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::election::{Changed, Elector, Pool};
use crate::inputs::{self, SERVICE_NAME_LABEL};
use crate::membership::{Member, Standing};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);

/// The objects of one kind that changed since the last [`View::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// The watch listed again: every object may have changed.
    pub all: bool,
    pub keys: BTreeSet<Key>,
}

impl Marks {
    /// Records what a watch event says changed.
    pub fn mark<K: Resource>(&mut self, event: &Event<K>) {
        match event {
            Event::Apply(o) | Event::Delete(o) => {
                self.keys.insert(key_of(o));
            }
            // The store swaps in the new list at InitDone.
            Event::InitDone => self.all = true,
            Event::Init | Event::InitApply(_) => {}
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }
}

fn key_of<K: Resource>(o: &K) -> Key {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// What changed since the last [`View::apply`], per input of the election.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    pub nodes: Marks,
    pub services: Marks,
    pub slices: Marks,
    /// Any pool changed (pools are few: all are read again).
    pub pools: bool,
    /// The gossip members changed (standing, interfaces, joins, leaves).
    pub members: bool,
}

impl Dirty {
    /// Everything: the first round.
    pub fn everything() -> Dirty {
        let all = Marks {
            all: true,
            keys: BTreeSet::new(),
        };
        Dirty {
            nodes: all.clone(),
            services: all.clone(),
            slices: all,
            pools: true,
            members: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.services.is_empty()
            && self.slices.is_empty()
            && !self.pools
            && !self.members
    }
}

/// The caches the view reads.
#[derive(Clone)]
pub struct Stores {
    pub nodes: Store<K8sNode>,
    pub services: Store<K8sService>,
    pub slices: Store<EndpointSlice>,
    pub pools: Store<IPPool>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("nodes", &self.nodes.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("pools", &self.pools.len())
            .finish()
    }
}

/// Which EndpointSlices belong to which Service (by the `kubernetes.io/service-name`
/// label), so that a slice's change finds its Service, and a Service its slices, without
/// a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceIndex {
    /// Slice -> its Service's name (same namespace).
    owner: BTreeMap<Key, String>,
    /// Service -> its slices' names.
    slices: BTreeMap<Key, BTreeSet<String>>,
}

impl SliceIndex {
    /// Records that slice `key` now belongs to `service` (`None`: gone, or without the
    /// label). Returns the Services whose slices changed: the old owner and the new.
    pub fn set(&mut self, key: &Key, service: Option<&str>) -> Vec<Key> {
        let (ns, name) = key;
        let old = self.owner.get(key).cloned();
        if old.as_deref() == service {
            // Same owner: its endpoints may still have changed.
            return service
                .map(|s| (ns.clone(), s.to_string()))
                .into_iter()
                .collect();
        }
        let mut touched = Vec::new();
        if let Some(old) = old {
            let k = (ns.clone(), old);
            if let Some(set) = self.slices.get_mut(&k) {
                set.remove(name);
                if set.is_empty() {
                    self.slices.remove(&k);
                }
            }
            touched.push(k);
        }
        match service {
            Some(s) => {
                self.owner.insert(key.clone(), s.to_string());
                let k = (ns.clone(), s.to_string());
                self.slices
                    .entry(k.clone())
                    .or_default()
                    .insert(name.clone());
                touched.push(k);
            }
            None => {
                self.owner.remove(key);
            }
        }
        touched
    }

    /// The slices of the Service `key`, by name.
    pub fn of(&self, key: &Key) -> impl Iterator<Item = &String> {
        self.slices.get(key).into_iter().flatten()
    }
}

fn service_label(s: &EndpointSlice) -> Option<&str> {
    s.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// The election's inputs as far as they have been read, and the decisions.
#[derive(Debug, Default)]
pub struct View {
    elector: Elector,
    slices: SliceIndex,
    default_class: bool,
    /// Pool entries that did not parse, one sentence each.
    pool_errors: Vec<String>,
}

impl View {
    pub fn new(default_class: bool) -> View {
        View {
            default_class,
            ..View::default()
        }
    }

    pub fn elector(&self) -> &Elector {
        &self.elector
    }

    /// The names of the EndpointSlices of the Service `key`, as of the last
    /// [`View::apply`].
    pub fn slices_of(&self, key: &Key) -> impl Iterator<Item = &String> {
        self.slices.of(key)
    }

    /// Pool entries the speaker could not use (the API server rejects them; only an older
    /// or hand-edited object has them).
    pub fn pool_errors(&self) -> &[String] {
        &self.pool_errors
    }

    /// Reads what `dirty` names from `stores` and `members`, and re-decides what that
    /// can affect. Returns what changed; `Changed::services` also holds every Service
    /// whose object had an event, so that its condition is looked at again.
    pub fn apply(
        &mut self,
        dirty: Dirty,
        stores: &Stores,
        members: &BTreeMap<String, Member>,
    ) -> Changed {
        let mut changed = Changed::default();
        if dirty.pools {
            changed.merge(self.read_pools(&stores.pools));
        }
        if dirty.members {
            changed.merge(
                self.elector.set_members(
                    members.keys().cloned().collect(),
                    members
                        .iter()
                        .filter(|(_, m)| m.standing != Standing::Ready)
                        .map(|(n, m)| (n.clone(), m.standing))
                        .collect(),
                ),
            );
        }
        // Nodes carry the interfaces their speakers gossip: a members change reads all.
        let node_keys: BTreeSet<Key> = if dirty.nodes.all || dirty.members {
            all_keys(&stores.nodes)
                .chain(
                    self.elector
                        .node_names()
                        .map(|n| (String::new(), n.clone())),
                )
                .collect()
        } else {
            dirty.nodes.keys
        };
        for (_, name) in node_keys {
            let node = stores
                .nodes
                .get(&ObjectRef::new(&name))
                .map(|n| inputs::node(&n, interfaces_of(members, &name)));
            changed.merge(self.elector.set_node(&name, node));
        }

        let mut service_keys: BTreeSet<Key> = dirty.services.keys;
        if dirty.slices.all {
            let mut index = SliceIndex::default();
            for s in stores.slices.state() {
                index.set(&key_of(&*s), service_label(&s));
            }
            self.slices = index;
        } else {
            for key in &dirty.slices.keys {
                let now = stores.slices.get(&ObjectRef::new(&key.1).within(&key.0));
                let owner = now.as_deref().and_then(service_label);
                service_keys.extend(self.slices.set(key, owner));
            }
        }
        if dirty.services.all || dirty.slices.all {
            service_keys.extend(all_keys(&stores.services));
            service_keys.extend(
                self.elector
                    .services()
                    .map(|(_, s)| (s.namespace.clone(), s.name.clone())),
            );
        }
        for key in service_keys {
            let (ns, name) = &key;
            let svc = stores
                .services
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|obj| {
                    let slices = self
                        .slices
                        .of(&key)
                        .filter_map(|s| stores.slices.get(&ObjectRef::new(s).within(ns)));
                    let slices: Vec<_> = slices.collect();
                    inputs::service(&obj, slices.iter().map(|s| &**s), self.default_class)
                });
            changed.merge(self.elector.set_service(&format!("{ns}/{name}"), svc));
            changed.services.insert(format!("{ns}/{name}"));
        }
        changed
    }

    fn read_pools(&mut self, store: &Store<IPPool>) -> Changed {
        let mut errors = Vec::new();
        let mut pools: Vec<Pool> = store
            .state()
            .iter()
            .map(|p| inputs::pool(p, &mut errors))
            .collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        errors.sort();
        self.pool_errors = errors;
        self.elector.set_pools(pools)
    }
}

fn all_keys<K>(store: &Store<K>) -> impl Iterator<Item = Key>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.state().into_iter().map(|o| key_of(&*o))
}

fn interfaces_of(
    members: &BTreeMap<String, Member>,
    node: &str,
) -> Vec<crate::election::Interface> {
    members
        .get(node)
        .map(|m| m.interfaces.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::elect;
    use crate::election::{Decision, Interface};
    use kube::runtime::reflector::{self, store::Writer};
    use serde_json::json;
    use std::net::{IpAddr, Ipv4Addr};

    struct Cluster {
        stores: Stores,
        nodes: Writer<K8sNode>,
        services: Writer<K8sService>,
        slices: Writer<EndpointSlice>,
        pools: Writer<IPPool>,
        members: BTreeMap<String, Member>,
        dirty: Dirty,
    }

    fn member() -> Member {
        Member {
            standing: Standing::Ready,
            interfaces: vec![Interface {
                name: "eth0".into(),
                up: true,
                subnets: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 24)],
                default_route_v4: true,
                default_route_v6: true,
            }],
        }
    }

    fn node(name: &str, ready: bool) -> K8sNode {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    fn lb(name: &str, ip: &str, local: bool) -> K8sService {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}],
                "externalTrafficPolicy": if local {"Local"} else {"Cluster"}},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
        }))
        .unwrap()
    }

    fn slice(name: &str, svc: &str, nodes: &[&str]) -> EndpointSlice {
        let eps: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"addresses": [format!("10.244.0.{i}")], "nodeName": n}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": eps
        }))
        .unwrap()
    }

    fn pool() -> IPPool {
        serde_json::from_value(json!({
            "apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": "lan"}, "spec": {"addresses": ["10.0.0.0/24"]}
        }))
        .unwrap()
    }

    impl Cluster {
        fn new() -> Cluster {
            let (n_r, nodes) = reflector::store();
            let (s_r, services) = reflector::store();
            let (e_r, slices) = reflector::store();
            let (p_r, pools) = reflector::store();
            let mut c = Cluster {
                stores: Stores {
                    nodes: n_r,
                    services: s_r,
                    slices: e_r,
                    pools: p_r,
                },
                nodes,
                services,
                slices,
                pools,
                members: BTreeMap::new(),
                dirty: Dirty::everything(),
            };
            c.nodes.apply_watcher_event(&Event::InitDone);
            c.services.apply_watcher_event(&Event::InitDone);
            c.slices.apply_watcher_event(&Event::InitDone);
            c.pools.apply_watcher_event(&Event::InitDone);
            c
        }

        fn node(&mut self, ev: Event<K8sNode>) {
            self.nodes.apply_watcher_event(&ev);
            self.dirty.nodes.mark(&ev);
        }
        fn service(&mut self, ev: Event<K8sService>) {
            self.services.apply_watcher_event(&ev);
            self.dirty.services.mark(&ev);
        }
        fn slice(&mut self, ev: Event<EndpointSlice>) {
            self.slices.apply_watcher_event(&ev);
            self.dirty.slices.mark(&ev);
        }
        fn pool(&mut self, ev: Event<IPPool>) {
            self.pools.apply_watcher_event(&ev);
            self.dirty.pools = true;
        }

        fn apply(&mut self, view: &mut View) -> Changed {
            view.apply(std::mem::take(&mut self.dirty), &self.stores, &self.members)
        }

        /// What gathering every object and electing from scratch gives.
        fn elected_afresh(&self) -> crate::election::Election {
            let (n, s, e, p) = (
                self.stores.nodes.state(),
                self.stores.services.state(),
                self.stores.slices.state(),
                self.stores.pools.state(),
            );
            elect(
                &inputs::gather(
                    n.iter().map(|x| &**x),
                    s.iter().map(|x| &**x),
                    e.iter().map(|x| &**x),
                    p.iter().map(|x| &**x),
                    &self.members,
                    true,
                )
                .0,
            )
        }
    }

    fn owner(view: &View, ip: &str) -> Option<String> {
        view.elector()
            .election()
            .decision(ip.parse().unwrap())
            .and_then(Decision::owner)
            .map(str::to_string)
    }

    #[test]
    fn each_event_reads_only_its_objects_and_the_result_matches_a_full_election() {
        let mut c = Cluster::new();
        let mut view = View::new(true);
        for n in ["a", "b", "c"] {
            c.node(Event::Apply(node(n, true)));
            c.members.insert(n.into(), member());
        }
        c.pool(Event::Apply(pool()));
        c.service(Event::Apply(lb("web", "10.0.0.10", false)));
        c.service(Event::Apply(lb("api", "10.0.0.11", true)));
        c.slice(Event::Apply(slice("api-1", "api", &["a"])));
        c.apply(&mut view);
        assert_eq!(view.elector().election(), &c.elected_afresh());
        assert_eq!(owner(&view, "10.0.0.11").as_deref(), Some("a"));

        // api's pod moves to b: one Service re-read, one IP re-decided.
        c.slice(Event::Apply(slice("api-1", "api", &["b"])));
        let changed = c.apply(&mut view);
        assert_eq!(changed.ips, BTreeSet::from(["10.0.0.11".parse().unwrap()]));
        assert_eq!(changed.services, BTreeSet::from(["shop/api".to_string()]));
        assert_eq!(owner(&view, "10.0.0.11").as_deref(), Some("b"));
        assert_eq!(view.elector().election(), &c.elected_afresh());

        // A slice of a Service that is not ours changes nothing.
        c.slice(Event::Apply(slice("db-1", "db", &["c"])));
        let changed = c.apply(&mut view);
        assert!(changed.ips.is_empty(), "{changed:?}");

        // The slice is relabelled to another Service: both are read again.
        c.slice(Event::Apply(slice("api-1", "web", &["b"])));
        let changed = c.apply(&mut view);
        assert!(changed.services.contains("shop/api") && changed.services.contains("shop/web"));
        assert_eq!(
            view.elector()
                .election()
                .decision("10.0.0.11".parse().unwrap())
                .map(|d| d.owner().is_none()),
            Some(true),
            "api has no endpoint left"
        );
        assert_eq!(view.elector().election(), &c.elected_afresh());

        // A node goes NotReady; the Service is deleted; the slice is deleted.
        c.node(Event::Apply(node("b", false)));
        c.apply(&mut view);
        assert_eq!(view.elector().election(), &c.elected_afresh());
        c.service(Event::Delete(lb("api", "10.0.0.11", true)));
        c.slice(Event::Delete(slice("api-1", "web", &["b"])));
        c.apply(&mut view);
        assert_eq!(view.elector().election(), &c.elected_afresh());
        assert!(
            view.elector()
                .election()
                .decision("10.0.0.11".parse().unwrap())
                .is_none()
        );

        // A member leaves: the nodes are read again with the members.
        c.members.remove("a");
        c.dirty.members = true;
        c.apply(&mut view);
        assert_eq!(view.elector().election(), &c.elected_afresh());
    }

    #[test]
    fn a_relist_compares_everything_and_moves_only_what_moved() {
        let mut c = Cluster::new();
        let mut view = View::new(true);
        for n in ["a", "b"] {
            c.node(Event::Apply(node(n, true)));
            c.members.insert(n.into(), member());
        }
        c.pool(Event::Apply(pool()));
        c.service(Event::Apply(lb("web", "10.0.0.10", false)));
        c.service(Event::Apply(lb("api", "10.0.0.11", false)));
        c.slice(Event::Apply(slice("web-1", "web", &["a"])));
        c.slice(Event::Apply(slice("api-1", "api", &["a"])));
        c.apply(&mut view);
        // The Service watch lists again: web as it was, api gone while it was down.
        c.services.apply_watcher_event(&Event::Init);
        c.services
            .apply_watcher_event(&Event::InitApply(lb("web", "10.0.0.10", false)));
        c.services.apply_watcher_event(&Event::InitDone);
        c.dirty.services.mark::<K8sService>(&Event::InitDone);
        let changed = c.apply(&mut view);
        assert_eq!(changed.ips, BTreeSet::from(["10.0.0.11".parse().unwrap()]));
        assert!(owner(&view, "10.0.0.10").is_some());
        assert_eq!(view.elector().election(), &c.elected_afresh());
    }

    #[test]
    fn the_slice_index_follows_owners() {
        let mut i = SliceIndex::default();
        let k = ("shop".to_string(), "web-1".to_string());
        let web = ("shop".to_string(), "web".to_string());
        let api = ("shop".to_string(), "api".to_string());
        assert_eq!(i.set(&k, Some("web")), vec![web.clone()]);
        assert_eq!(i.set(&k, Some("web")), vec![web.clone()]);
        assert_eq!(i.of(&web).collect::<Vec<_>>(), vec!["web-1"]);
        assert_eq!(i.set(&k, Some("api")), vec![web.clone(), api.clone()]);
        assert_eq!(i.of(&web).count(), 0);
        assert_eq!(i.set(&k, None), vec![api.clone()]);
        assert_eq!(i.of(&api).count(), 0);
        assert_eq!(i.set(&k, None), Vec::<Key>::new());
    }
}
