//! The election loop: any change (objects, gossip members, local interfaces) → the
//! watches have marked which objects changed → the view reads only those and re-decides
//! only the IPs they can affect ([`crate::view`]) → this node's share goes to the
//! responders at once → the Services whose decisions or objects changed go to the status
//! writer.
//!
//! It starts only once the caches have synced and gossip had a moment to find the other
//! speakers (alone, a speaker would elect itself for every IP); a SIGTERM before that ends
//! it without its announcing anything. At SIGTERM it hands over: it leaves gossip first
//! (peers take over at once), then stops answering.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrolb_crds::AddressBlock;
use ferrolb_crds::health::{Health, Reporter};
use futures::FutureExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::links::{Links, connectivity_returned, links};
use super::nodes::{first_per_family, internal_ips, seeds, speaker_nodes};
use super::status_writer::{ServiceStatus, StatusUpdate};
use super::watches::Caches;
use crate::admin::{Metrics, Readiness};
use crate::agreement::{self, Digest};
use crate::announcer::Announcer;
use crate::election::{self, Decision, Service};
use crate::forwarding::kernel::Forwarder;
use crate::forwarding::{self, Ruleset};
use crate::interfaces::{self, LocalInterface};
use crate::membership::{Member, MembershipView, Standing};
use crate::view::View;

/// The longest a speaker that leaves goes on answering for addresses no peer announced yet
/// (a busy peer, or an address no peer may take). It stops answering each address as soon
/// as a peer announces it, so the two answer together for one frame's time at most, and a
/// neighbour that heard this node last is corrected by the new owner's repeats.
const HANDOVER_LONGEST: Duration = Duration::from_secs(1);

/// How often a speaker whose view is stale starts its watches afresh.
const STALE_REWATCH: Duration = Duration::from_secs(5);

/// The loop's tick: it retries responders that could not start (no socket yet, an
/// interface without a MAC) and re-checks freshness and the peers' claims.
pub(super) const TICK: Duration = Duration::from_secs(2);

/// Who this speaker is, as the loop needs it.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub node: String,
    /// Namespace and name of the speakers' Service (its endpoints are the gossip seeds).
    pub speakers: (String, String),
    pub gossip_port: u16,
    /// The gossip family: that of the Node's first InternalIP.
    pub gossip_v4: bool,
    pub default_class: bool,
}

/// What the loop publishes to the gossip task.
#[derive(Debug)]
pub(super) struct ToGossip {
    pub seeds: watch::Sender<Vec<(String, std::net::SocketAddr)>>,
    pub interfaces: watch::Sender<Vec<election::Interface>>,
    pub standing: watch::Sender<Standing>,
    pub owned: watch::Sender<Digest>,
    /// Cancels the gossip task (leaving gossip), and that task.
    pub leave: CancellationToken,
    pub task: JoinHandle<()>,
}

/// Everything the loop reads and drives.
pub(super) struct ElectionLoop {
    pub me: Identity,
    pub caches: Caches,
    pub gossip: MembershipView,
    pub to_gossip: ToGossip,
    pub locals: watch::Receiver<Vec<LocalInterface>>,
    pub status: UnboundedSender<StatusUpdate>,
    pub announcer: Announcer,
    pub forwarder: Option<Forwarder>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The watches against `--stale-after`.
    pub freshness: Health,
    /// Reported to on every turn (`/healthz`).
    pub turning: Reporter,
    /// SIGTERM.
    pub signal: CancellationToken,
}

/// The interfaces that travel in this speaker's gossip identity, most needed first.
pub(super) fn advertise(
    locals: &[LocalInterface],
    blocks: &[AddressBlock],
    named: &[regex::Regex],
) -> Vec<election::Interface> {
    let mut list = interfaces::announcing(locals, named);
    interfaces::by_importance(&mut list, blocks, named);
    list
}

/// The loop's memory from one round to the next.
struct State {
    view: View,
    /// This node's share: IP -> the interface it is announced on.
    owned: BTreeMap<IpAddr, String>,
    members: BTreeMap<String, Member>,
    members_dirty: bool,
    locals_changed: bool,
    /// Whether this round must hand the share to the responders and the forwarder.
    apply_now: bool,
    /// Whether this round reads the changes (a tick round only retries and re-checks).
    recompute: bool,
    forwarding: Ruleset,
    last_problems: Vec<String>,
    last_links: Links,
    lost_addresses: BTreeSet<IpAddr>,
    /// The pools' l2.interfaces, compiled when the pools change, and their addresses.
    named: Vec<regex::Regex>,
    blocks: Vec<AddressBlock>,
    /// The Services the status writer was told about as ours.
    told_status: BTreeSet<String>,
    /// What this speaker's identity says once it announces (Ready; Stale while its view
    /// of the cluster may be old). Its own elections use it at once, while gossip still
    /// says Starting, so that it answers for its share before its peers let go of it.
    standing: Standing,
    last_rewatch: Instant,
    /// Who owns what in this speaker's view, and how the peers' claims compare with it.
    owners: agreement::Owners,
    agreement: agreement::Agreement,
    claims_open: bool,
    last_note: String,
}

impl ElectionLoop {
    /// Runs until SIGTERM, then hands over. Fails, after handing over, when a cache
    /// cannot sync.
    pub async fn run(mut self) -> Result<(), crate::Error> {
        tokio::select! {
            synced = self.caches.synced() => if let Err(e) = synced {
                self.hand_over().await;
                return Err(e);
            },
            _ = self.signal.cancelled() => info!("SIGTERM before the caches synced: nothing was announced"),
        }
        // Seeds once at start-up from every slice; later from the speakers' Service's own
        // slices, which the view's index names.
        let seeds = self.seeds_from(&self.caches.slices.state());
        let _ = self.to_gossip.seeds.send(seeds);
        self.settle().await;
        if let Some(f) = self.forwarder.as_mut() {
            // What a crashed speaker left is replaced, not added to.
            f.start().await;
        }
        let mut state = State {
            view: View::new(self.me.default_class),
            owned: BTreeMap::new(),
            members: BTreeMap::new(),
            members_dirty: true,
            locals_changed: true,
            apply_now: true,
            recompute: true,
            forwarding: Ruleset::default(),
            last_problems: Vec::new(),
            last_links: links(&self.locals.borrow()),
            lost_addresses: BTreeSet::new(),
            named: Vec::new(),
            blocks: Vec::new(),
            told_status: BTreeSet::new(),
            standing: Standing::Ready,
            last_rewatch: Instant::now(),
            owners: agreement::Owners::default(),
            agreement: agreement::Agreement::default(),
            claims_open: true,
            last_note: String::new(),
        };
        let mut tick = tokio::time::interval(TICK);
        let mut counters_tick = tokio::time::interval(Duration::from_secs(10));
        while !self.signal.is_cancelled() {
            let local_now = self.locals.borrow_and_update().clone();
            self.check_links(&mut state, &local_now);
            self.check_freshness(&mut state);
            if state.recompute {
                self.recompute(&mut state, &local_now);
            }
            state.locals_changed = false;
            if state.apply_now {
                self.apply(&state, &local_now).await;
            }
            self.compare_claims(&mut state);

            // The first round always elects: from here on this node's share is announced,
            // and its peers may hand it over.
            self.readiness.set_ready();
            crate::publish(&self.to_gossip.standing, state.standing);
            self.turning.progress();

            state.recompute = true;
            // A tick round retries the responders; a recomputing round says for itself.
            state.apply_now = true;
            tokio::select! {
                _ = self.signal.cancelled() => break,
                _ = self.caches.changed.notified() => {
                    // Let a burst of events land before recomputing, and take the permit
                    // the burst left so that it does not wake the next round for nothing.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let _ = self.caches.changed.notified().now_or_never();
                }
                r = self.gossip.members.changed() => {
                    if r.is_err() {
                        break;
                    }
                    state.members_dirty = true;
                }
                r = self.locals.changed() => {
                    if r.is_err() {
                        break;
                    }
                    state.locals_changed = true;
                }
                r = self.gossip.claims.changed(), if state.claims_open => {
                    state.claims_open = r.is_ok();
                    state.recompute = false;
                }
                _ = tick.tick() => state.recompute = false,
                _ = counters_tick.tick(), if self.forwarder.is_some() => {
                    if let Some(f) = self.forwarder.as_mut() {
                        f.refresh_counters().await;
                    }
                    state.recompute = false;
                }
            }
        }
        self.hand_over().await;
        Ok(())
    }

    /// Gossip seeds from `speaker_slices` (the speakers' Service's, or any superset).
    fn seeds_from(
        &self,
        speaker_slices: &[Arc<EndpointSlice>],
    ) -> Vec<(String, std::net::SocketAddr)> {
        let (namespace, name) = &self.me.speakers;
        let speakers = speaker_nodes(speaker_slices, namespace, name);
        seeds(
            &self.caches.nodes.state(),
            speakers.as_ref(),
            &self.me.node,
            self.me.gossip_v4,
            self.me.gossip_port,
        )
    }

    /// Gives gossip up to three seconds to find the seeds before the first election.
    async fn settle(&mut self) {
        let settle_until = Instant::now() + Duration::from_secs(3);
        let expected = self.to_gossip.seeds.borrow().len() + 1;
        while Instant::now() < settle_until && !self.signal.is_cancelled() {
            if self.gossip.members.borrow().len() >= expected {
                break;
            }
            tokio::select! {
                _ = self.gossip.members.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.signal.cancelled() => {}
            }
        }
    }

    /// A link that came back may have left the watches' connections dead: start them
    /// afresh.
    fn check_links(&self, state: &mut State, local_now: &[LocalInterface]) {
        let now_links = links(local_now);
        if connectivity_returned(&state.last_links, &now_links, &mut state.lost_addresses) {
            info!("a link of the node came up or got an address back: restarting the watches");
            self.caches.restart();
        }
        state.last_links = now_links;
    }

    /// A watch that keeps failing makes the view stale (checked on every round, the tick
    /// included): peers with a fresh view take what they can.
    fn check_freshness(&self, state: &mut State) {
        let stale = self.freshness.check();
        let standing = if stale.is_empty() {
            Standing::Ready
        } else {
            Standing::Stale
        };
        if standing != state.standing {
            if stale.is_empty() {
                info!("the watches work again: the view of the cluster is fresh");
            }
            for p in &stale {
                warn!(problem = %p, "the view of the cluster is stale: not ready, and this node keeps only the IPs no speaker with a fresh view can take");
            }
            state.standing = standing;
            self.readiness.set_stale(!stale.is_empty());
            state.members_dirty = true;
            state.recompute = true;
        }
        // While stale, the watches start afresh every few seconds instead of waiting out
        // their growing backoff: the view is fresh again soon after the API is back.
        if state.standing == Standing::Stale && state.last_rewatch.elapsed() >= STALE_REWATCH {
            state.last_rewatch = Instant::now();
            self.caches.restart();
        }
    }

    /// Reads what changed, re-decides what it can affect, and tells gossip and the status
    /// writer.
    fn recompute(&mut self, state: &mut State, local_now: &[LocalInterface]) {
        let mut d = self.caches.take_dirty();
        if std::mem::take(&mut state.members_dirty) {
            state.members = self.gossip.members.borrow_and_update().clone();
            // Our own elections count this speaker as what its identity will say once it
            // announces, while gossip may still say Starting.
            if let Some(m) = state.members.get_mut(&self.me.node) {
                m.standing = state.standing;
            }
            d.members = true;
        }
        let nodes_changed = d.nodes.all || !d.nodes.keys.is_empty();
        // The speakers' Service lives in our namespace, where few slices change.
        let (namespace, _) = &self.me.speakers;
        let speakers_changed = d.slices.all || d.slices.keys.iter().any(|(ns, _)| ns == namespace);
        let (members_changed, pools_changed) = (d.members, d.pools);
        let changed = state.view.apply(d, &self.caches.stores(), &state.members);
        if nodes_changed || speakers_changed {
            let own: Vec<Arc<EndpointSlice>> = state
                .view
                .slices_of(&self.me.speakers)
                .filter_map(|n| self.caches.slices.get(&ObjectRef::new(n).within(namespace)))
                .collect();
            crate::publish(&self.to_gossip.seeds, self.seeds_from(&own));
        }
        self.metrics.elections.inc();
        let elector = state.view.elector();
        if pools_changed {
            state.named = elector
                .pools()
                .iter()
                .flat_map(|p| p.interfaces.iter())
                .filter_map(|re| election::interface_regex(re).ok())
                .collect();
            state.blocks = elector
                .pools()
                .iter()
                .flat_map(|p| p.blocks.iter().cloned())
                .collect();
        }
        if pools_changed || state.locals_changed {
            crate::publish(
                &self.to_gossip.interfaces,
                advertise(local_now, &state.blocks, &state.named),
            );
        }
        // A round that moved nothing of ours (an event about a Service that is not a
        // LoadBalancer of ours, a Node field nothing reads) ends here: the responders and
        // the forwarding rules have nothing new to apply.
        state.apply_now = !changed.ips.is_empty()
            || changed
                .services
                .iter()
                .any(|k| elector.service(k).is_some())
            || nodes_changed
            || pools_changed
            || members_changed
            || state.locals_changed;
        for ip in &changed.ips {
            let decision = elector.election().decision(*ip);
            state.owners.set(*ip, decision.and_then(Decision::owner));
            match decision {
                Some(Decision::Owner { node, interface }) if *node == self.me.node => {
                    state.owned.insert(*ip, interface.clone());
                }
                _ => {
                    state.owned.remove(ip);
                }
            }
        }
        if !changed.ips.is_empty() {
            crate::publish(
                &self.to_gossip.owned,
                Digest::of(state.owned.keys().copied()),
            );
        }
        if state.apply_now {
            let (node_v4, node_v6) = self
                .caches
                .nodes
                .get(&ObjectRef::new(&self.me.node))
                .map(|n| first_per_family(internal_ips(&n)))
                .unwrap_or_default();
            let holding: BTreeMap<String, &Service> = state
                .owned
                .keys()
                .flat_map(|ip| elector.holders(*ip))
                .map(|s| (s.key(), s))
                .collect();
            let (rules, forwarding_problems) = forwarding::plan(
                state.owned.keys().copied(),
                holding.values().copied(),
                node_v4,
                node_v6,
            );
            state.forwarding = rules;
            let problems: Vec<String> = state
                .view
                .pool_errors()
                .iter()
                .cloned()
                .chain(elector.election().problems.iter().map(ToString::to_string))
                .chain(
                    self.forwarder
                        .is_some()
                        .then_some(forwarding_problems)
                        .into_iter()
                        .flatten(),
                )
                .collect();
            if problems != state.last_problems {
                for p in &problems {
                    warn!(problem = %p, "configuration problem");
                }
                state.last_problems = problems;
            }
        }
        if members_changed {
            let _ = self
                .status
                .send(StatusUpdate::Members(elector.members().clone()));
        }
        for key in changed.services {
            // The status writer hears of a Service that is not ours only when it had heard
            // of it as ours.
            let update = ServiceStatus::of(&state.view, &key);
            if update.is_some() {
                state.told_status.insert(key.clone());
            } else if !state.told_status.remove(&key) {
                continue;
            }
            let _ = self.status.send(StatusUpdate::Service(key, update));
        }
    }

    /// Hands this node's share to the forwarder and the responders. Rules for an IP are in
    /// place before its gratuitous burst, and stay until its responder stopped.
    async fn apply(&mut self, state: &State, local_now: &[LocalInterface]) {
        let announcements: Vec<election::Announcement> = state
            .owned
            .iter()
            .map(|(ip, interface)| election::Announcement {
                ip: *ip,
                interface: interface.clone(),
            })
            .collect();
        if let Some(f) = self.forwarder.as_mut() {
            f.begin(&state.forwarding).await;
        }
        self.announcer.apply(&announcements, local_now);
        if let Some(f) = self.forwarder.as_mut() {
            f.finish(state.forwarding.clone()).await;
        }
    }

    /// Do the peers announce what this speaker's view gives them? (Checked every round,
    /// the tick included, so a difference is confirmed soon after its grace period.)
    fn compare_claims(&mut self, state: &mut State) {
        for finding in state.agreement.compare(
            Instant::now(),
            &self.me.node,
            &self.gossip.claims.borrow_and_update(),
            state.owners.digests(),
        ) {
            match finding {
                agreement::Finding::Began(d) => {
                    self.metrics.ownership_disagreements.inc();
                    warn!(node = %d.node, claimed = d.claimed.count, expected = d.expected.count, "a peer's claims disagree with this speaker's view: {d}");
                }
                agreement::Finding::Ended(node) => {
                    info!(%node, "a peer's claims agree with this speaker's view again");
                }
            }
        }
        let confirmed = state.agreement.confirmed();
        self.metrics
            .peers_disagreeing
            .set(i64::try_from(confirmed.len()).unwrap_or(i64::MAX));
        let note = agreement::note(&confirmed);
        if note != state.last_note {
            let _ = self.status.send(StatusUpdate::Note(note.clone()));
            state.last_note = note;
        }
    }

    /// Leaves gossip (peers elect without us at once), then answers each address until a
    /// peer announces it (at most [`HANDOVER_LONGEST`]), then stops.
    async fn hand_over(mut self) {
        self.readiness.set_stopping();
        self.to_gossip.leave.cancel();
        let _ = (&mut self.to_gossip.task).await;
        self.announcer.hand_over(HANDOVER_LONGEST).await;
        if let Some(f) = self.forwarder.as_mut() {
            f.stop().await;
        }
        info!("left gossip and stopped answering");
    }
}
