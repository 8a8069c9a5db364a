//! The `ferrolb-speaker` process: flags, logging, the watches, gossip, the election loop,
//! the responders, status and the admin port.
//!
//! The loop: any change (objects, gossip members, local interfaces) → the watches have
//! marked which objects changed → the view reads only those and re-decides only the IPs
//! they can affect ([`crate::view`]) → this node's share goes to the responders at once →
//! the Services whose decisions or objects changed go to the status writer, which runs
//! beside it so that API latency never delays an announcement.
//!
//! SIGTERM: leave gossip first (peers take over at once), then stop answering, then exit.
//!
//! Probes: `/readyz` turns true once the caches have synced and the first election was
//! applied, and false at SIGTERM. `/healthz` fails when the election loop (it ticks every
//! 2 s) has not turned for `--healthz-loop-timeout` (60 s), or a watch has ended or kept
//! failing for `--healthz-api-timeout` (15 minutes). That one is long on purpose: a
//! restarted speaker announces nothing until it reaches the API again, so restarting
//! speakers during an API outage would take every LoadBalancer IP down with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ferrolb_crds::IPPool;
use ferrolb_crds::health::{Health, Limits, Reporter};
use ferrolb_crds::names::{CONDITION_ANNOUNCED, FIELD_MANAGER_SPEAKER, events::ANNOUNCING};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node as K8sNode, Secret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admin::{self, Listen, Metrics, Readiness};
use crate::agreement::{self, Digest};
use crate::announcer::Announcer;
use crate::election::{self, Decision, Election, Service};
use crate::forwarding::kernel::{Forwarder, Kernel};
use crate::forwarding::{self, Ruleset};
use crate::inputs::SERVICE_NAME_LABEL;
use crate::interfaces;
use crate::membership::{Keyring, Membership, Settings, Standing};
use crate::status;
use crate::view::{Dirty, Stores, View};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// ferrolb's speaker: with the speakers on the other nodes, elects one node per
/// LoadBalancer IP and answers ARP (IPv4) and NDP (IPv6) for the IPs this node owns.
#[derive(Clone, Debug, Parser)]
#[command(name = "ferrolb-speaker", version = crate::VERSION)]
pub struct Args {
    /// kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// The Node this speaker runs on.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Namespace of the gossip Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    pub namespace: String,

    /// Secret holding the gossip key (data key `key`, at least 16 bytes). The controller
    /// creates it; the speaker waits for it.
    #[arg(long, default_value = ferrolb_crds::names::GOSSIP_SECRET)]
    pub gossip_secret: String,

    /// The Service (in --namespace) whose endpoints are the speaker pods: only the Nodes
    /// it lists are gossiped to. While it has no endpoints (it does not exist), every Node
    /// is.
    #[arg(long, default_value = "ferrolb-speaker-metrics")]
    pub speakers_service: String,

    /// UDP port of the gossip between speakers, on the Node's first InternalIP.
    #[arg(long, default_value_t = 7946)]
    pub gossip_port: u16,

    /// Address of the admin server (/healthz, /readyz, /metrics). Default: port 7473 on
    /// every IPv6 and IPv4 address ([::]:7473, one socket for both families; 0.0.0.0:7473
    /// on a host without IPv6).
    #[arg(long)]
    pub admin_address: Option<SocketAddr>,

    /// Seconds the election loop (it ticks every 2 s) may go without turning before
    /// /healthz fails.
    #[arg(long, default_value_t = 60.0)]
    pub healthz_loop_timeout: f64,

    /// Seconds a watch's errors may keep coming without a success before /healthz fails;
    /// 0: never. Long, because a restarted speaker announces nothing until it reaches the
    /// API again.
    #[arg(long, default_value_t = 900.0)]
    pub healthz_api_timeout: f64,

    /// Seconds a watch's errors may keep coming without a success before this speaker
    /// counts its view of the cluster as stale: it turns unready, its gossip identity says
    /// Stale, and it keeps only the IPs no speaker with a fresh view can take.
    #[arg(long, default_value_t = 30.0)]
    pub stale_after: f64,

    /// Handle LoadBalancer Services that set no spec.loadBalancerClass (besides those of
    /// class ferrolb.io/l2). Must match the controller's flag.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,

    /// Seconds between two backstop rescans of the local interfaces (a change the kernel
    /// reports over netlink is rescanned at once).
    #[arg(long, default_value_t = 10.0)]
    pub interface_scan_period: f64,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Forward the IPs of `forwarding: NodePort` pools (their ingress says ipMode Proxy) to
    /// their Services' NodePorts on this node, in the nftables table `inet ferrolb` (needs
    /// NET_ADMIN). false: such IPs are still announced, and their traffic reaches nothing
    /// (kube-proxy leaves ipMode Proxy IPs alone).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub nodeport_forwarding: bool,

    /// The `nft` program that loads the forwarding rules.
    #[arg(long, default_value = "nft")]
    pub nft: String,

    /// The packet and conntrack mark bit forwarding uses (one bit, e.g. 0x1000; it must not
    /// be one another component of the node uses: kube-proxy uses 0x4000 and 0x8000).
    #[arg(long, default_value = "0x1000", value_parser = parse_mark)]
    pub forwarding_mark: u32,
}

/// A mark bit: one bit set, written in hex (`0x1000`) or decimal.
fn parse_mark(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if v.count_ones() != 1 {
        return Err(format!("{s} must have exactly one bit set (e.g. 0x1000)"));
    }
    Ok(v)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn client(args: &Args) -> Result<kube::Client, String> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
    };
    let mut config = config;
    // A connection that delivers nothing for this long is taken for dead. The API server
    // sends a watch bookmark every minute, so a live watch never waits that long, and a
    // dead one (a silently dropped path) is replaced within it rather than after the
    // default five minutes.
    config.read_timeout = Some(Duration::from_secs(90));
    kube::Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// Retries `f` every two seconds until it returns a value or `cancel` fires; logs the
/// first failure and then every tenth.
async fn until_ok<T, F, Fut>(what: &str, cancel: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if attempt.is_multiple_of(10) {
                    warn!(error = %e, "waiting for {what}");
                }
                attempt += 1;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// A Node's InternalIPs, in the order the Node lists them.
fn internal_ips(node: &K8sNode) -> impl Iterator<Item = IpAddr> + '_ {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
}

/// The first IPv4 and the first IPv6 address of a list.
fn first_per_family(ips: impl Iterator<Item = IpAddr>) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let (mut v4, mut v6) = (None, None);
    for ip in ips {
        match ip {
            IpAddr::V4(a) => {
                v4.get_or_insert(a);
            }
            IpAddr::V6(a) => {
                v6.get_or_insert(a);
            }
        }
    }
    (v4, v6)
}

/// The Nodes that run a speaker, from the EndpointSlices of the speakers' Service
/// (`namespace`, `name`): every endpoint, ready or not (a starting speaker must be found
/// too). `None` when the Service has no endpoints (it does not exist, as in the lab): then
/// any Node may run one. `slices` may hold others too (at start-up, all of them).
fn speaker_nodes<'a>(
    slices: impl IntoIterator<Item = &'a Arc<EndpointSlice>>,
    namespace: &str,
    name: &str,
) -> Option<BTreeSet<String>> {
    let nodes: BTreeSet<String> = slices
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == name)
        })
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter_map(|e| e.node_name.clone())
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// Gossip seeds: every other Node that runs a speaker (all of them when `speakers` is
/// `None`), at its InternalIP of our family and the gossip port.
fn seeds(
    nodes: &[Arc<K8sNode>],
    speakers: Option<&BTreeSet<String>>,
    me: &str,
    family_v4: bool,
    port: u16,
) -> Vec<(String, SocketAddr)> {
    let mut out: Vec<(String, SocketAddr)> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            if name == me || speakers.is_some_and(|s| !s.contains(&name)) {
                return None;
            }
            let ip = internal_ips(n).find(|ip| ip.is_ipv4() == family_v4)?;
            Some((name, SocketAddr::new(ip, port)))
        })
        .collect();
    out.sort();
    out
}

/// Watches one kind into a store, keeping of each object only what `slim` leaves, telling
/// `mark` what each event changed, poking `changed` on every event and reporting to
/// `health`.
#[allow(clippy::too_many_arguments)]
fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    changed: Arc<Notify>,
    health: Reporter,
    fresh: Reporter,
    mut restart: watch::Receiver<u64>,
    mut mark: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> (
    Store<K>,
    impl std::future::Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    let task = async move {
        // A restart begins a new watch with a full list; the store is replaced when the
        // list is complete, so readers never see it empty.
        'watch: loop {
            let stream = watcher::watcher(api.clone(), config.clone())
                .modify(slim)
                .default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    ev = stream.next() => match ev {
                        Some(Ok(ev)) => {
                            writer.apply_watcher_event(&ev);
                            mark(&ev);
                            // `Init` comes before the list is even asked for: only what
                            // the API server sent proves the watch works.
                            if !matches!(ev, watcher::Event::Init) {
                                health.progress();
                                fresh.progress();
                            }
                            changed.notify_one();
                        }
                        Some(Err(e)) => {
                            health.failed(&e);
                            fresh.failed(&e);
                            debug!(%e, "watch error (retrying)");
                        }
                        None => break 'watch,
                    },
                    r = restart.changed() => {
                        if r.is_err() {
                            break 'watch;
                        }
                        debug!("restarting the watch");
                        continue 'watch;
                    }
                }
            }
        }
        health.ended();
        fresh.ended();
    };
    (reader, task)
}

/// What the node's network looked like at one scan, as far as its connections to the API
/// server depend on it: each interface holding global addresses (not loopback, not
/// link-local), whether it is up, and those addresses.
pub type Links = BTreeMap<u32, (bool, BTreeSet<IpAddr>)>;

/// The node's interfaces with global addresses, by index.
pub fn links(locals: &[interfaces::LocalInterface]) -> Links {
    locals
        .iter()
        .filter_map(|l| {
            let global: BTreeSet<IpAddr> = l
                .iface
                .subnets
                .iter()
                .map(|(ip, _)| *ip)
                .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
                .collect();
            (!global.is_empty()).then_some((l.index, (l.iface.up, global)))
        })
        .collect()
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

/// Whether the node's connections to the API server (watches included) may have died
/// without an error, so that the watches must start again: an interface holding global
/// addresses came up (it was down, or is new: a link re-created), or an address the node
/// had lost is back. Both happen when a link is cut and healed, and both drop connections
/// silently: the kernel flushes the masquerading state of connections through a link that
/// goes down or loses its address (a speaker on the host network reaches the API through
/// the masqueraded `kubernetes` Service), and the server's retransmissions back off for
/// minutes. `lost` remembers addresses seen before and missing now.
pub fn connectivity_returned(before: &Links, now: &Links, lost: &mut BTreeSet<IpAddr>) -> bool {
    let addrs = |l: &Links| -> BTreeSet<IpAddr> {
        l.values().flat_map(|(_, a)| a.iter().copied()).collect()
    };
    let (had, has) = (addrs(before), addrs(now));
    lost.extend(had.difference(&has).copied());
    let back: Vec<IpAddr> = lost.intersection(&has).copied().collect();
    for ip in &back {
        lost.remove(ip);
    }
    // Addresses some interface that was up already held: a pod's veth commonly carries the
    // node's pod-network gateway address, which every other veth holds too, and must not
    // restart the watches each time a pod starts.
    let held: BTreeSet<IpAddr> = before
        .values()
        .filter(|(up, _)| *up)
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    let came_up = now.iter().any(|(index, (up, a))| {
        *up && !before.get(index).is_some_and(|(was_up, _)| *was_up) && !a.is_subset(&held)
    });
    came_up || !back.is_empty()
}

/// What the status writer is told, per change: a Service with the decisions on its IPs
/// (`None`: the speaker has nothing to say about it any more), or the live members (who
/// writes a condition depends on them).
#[derive(Clone, Debug)]
enum StatusUpdate {
    Service(String, Option<Box<ServiceStatus>>),
    Members(BTreeSet<String>),
    /// What the Services this speaker reports on say of disagreeing peers (empty: none).
    Note(String),
}

#[derive(Clone, Debug)]
struct ServiceStatus {
    service: Service,
    /// The decisions on the Service's IPs only.
    election: Election,
}

impl ServiceStatus {
    fn of(view: &View, key: &str) -> Option<Box<ServiceStatus>> {
        let elector = view.elector();
        let service = elector.service(key)?.clone();
        let decisions = service
            .ips
            .iter()
            .filter_map(|ip| Some((*ip, elector.election().decision(*ip)?.clone())))
            .collect();
        Some(Box::new(ServiceStatus {
            service,
            election: Election {
                decisions,
                problems: Vec::new(),
            },
        }))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the speaker process until a signal stops it.
pub async fn run(args: Args) -> Result<(), String> {
    init_logging(args.log_format);
    let client = client(&args).await?;
    let me = args.node_name.clone();
    if me.is_empty() {
        return Err("--node-name (or $NODE_NAME) must name this node".into());
    }
    let scan_period = Duration::try_from_secs_f64(args.interface_scan_period)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or("--interface-scan-period must be a positive number of seconds")?;
    let loop_timeout = Duration::try_from_secs_f64(args.healthz_loop_timeout)
        .ok()
        .filter(|d| *d > Duration::from_secs(2))
        .ok_or("--healthz-loop-timeout must be longer than the loop's 2 s tick")?;
    let api_timeout = Duration::try_from_secs_f64(args.healthz_api_timeout)
        .map_err(|_| "--healthz-api-timeout must be a number of seconds, 0 for never")?;
    let api_timeout = Some(api_timeout).filter(|d| !d.is_zero());
    let stale_after = Duration::try_from_secs_f64(args.stale_after)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or("--stale-after must be a positive number of seconds")?;
    let health = Health::new();
    let watch_health =
        |kind: &str| health.register(format!("{kind} watch"), Limits::calling_api(api_timeout));
    // The same watches against the shorter limit: past it the view counts as stale.
    let freshness = Health::new();
    let watch_fresh = |kind: &str| {
        freshness.register(
            format!("{kind} watch"),
            Limits::calling_api(Some(stale_after)),
        )
    };

    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let root = CancellationToken::new();
    let signal = CancellationToken::new();
    tokio::spawn({
        let signal = signal.clone();
        let readiness = readiness.clone();
        async move {
            wait_for_signal().await;
            info!("signal: handing over and stopping (a second signal aborts)");
            readiness.set_stopping();
            signal.cancel();
            wait_for_signal().await;
            error!("second signal: aborting");
            std::process::exit(130);
        }
    });

    let admin_listener = admin::bind(Listen::from_flag(args.admin_address))?;
    tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        readiness.clone(),
        health.clone(),
        root.clone(),
    ));

    // Our gossip address: the Node's first InternalIP.
    let nodes_api: Api<K8sNode> = Api::all(client.clone());
    let Some(node_ip) = until_ok("this Node's InternalIP", &signal, || {
        let api = nodes_api.clone();
        let me = me.clone();
        async move {
            let n = api
                .get(&me)
                .await
                .map_err(|e| format!("cannot read Node {me}: {e}"))?;
            internal_ips(&n)
                .next()
                .ok_or_else(|| format!("Node {me} has no InternalIP yet"))
        }
    })
    .await
    else {
        return Ok(());
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let secret_name = args.gossip_secret.clone();
    let Some(keyring) = until_ok("the gossip Secret", &signal, || {
        read_keys(secrets.clone(), secret_name.clone())
    })
    .await
    else {
        return Ok(());
    };
    let (keys_tx, keys_rx) = watch::channel(keyring.clone());

    // Watches: each event marks what it changed, and the loop reads only that.
    let changed = Arc::new(Notify::new());
    let dirty = Arc::new(std::sync::Mutex::new(Dirty::everything()));
    let (restart_watches, restart_rx) = watch::channel(0u64);
    let (nodes, nodes_task) = watch_into(
        nodes_api.clone(),
        watcher::Config::default(),
        crate::inputs::slim_node,
        changed.clone(),
        watch_health("Node"),
        watch_fresh("Node"),
        restart_rx.clone(),
        {
            let d = dirty.clone();
            move |ev| lock(&d).nodes.mark(ev)
        },
    );
    let (services, services_task) = watch_into(
        Api::<K8sService>::all(client.clone()),
        // Only LoadBalancer Services: one that changes type leaves the watch as deleted.
        watcher::Config::default().fields(crate::inputs::LOAD_BALANCERS),
        ferrolb_crds::cache::slim,
        changed.clone(),
        watch_health("Service"),
        watch_fresh("Service"),
        restart_rx.clone(),
        {
            let d = dirty.clone();
            move |ev| lock(&d).services.mark(ev)
        },
    );
    let (slices, slices_task) = watch_into(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
        crate::inputs::slim_slice,
        changed.clone(),
        watch_health("EndpointSlice"),
        watch_fresh("EndpointSlice"),
        restart_rx.clone(),
        {
            let d = dirty.clone();
            move |ev| lock(&d).slices.mark(ev)
        },
    );
    let (pools, pools_task) = watch_into(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
        ferrolb_crds::cache::slim,
        changed.clone(),
        watch_health("IPPool"),
        watch_fresh("IPPool"),
        restart_rx.clone(),
        {
            let d = dirty.clone();
            move |_: &watcher::Event<IPPool>| lock(&d).pools = true
        },
    );
    let stores = Stores {
        nodes: nodes.clone(),
        services: services.clone(),
        slices: slices.clone(),
        pools: pools.clone(),
    };
    let watches = tokio::spawn(async move {
        tokio::join!(nodes_task, services_task, slices_task, pools_task);
    });

    // Local interfaces; the announcing ones travel in our gossip identity (the main loop
    // picks them, as the pools' l2.interfaces decide which interfaces count).
    let mut locals = interfaces::watch(scan_period, root.clone());
    let advertise = |locals: &[interfaces::LocalInterface],
                     blocks: &[ferrolb_crds::AddressBlock],
                     named: &[regex::Regex]| {
        let mut list = interfaces::announcing(locals, named);
        interfaces::by_importance(&mut list, blocks, named);
        list
    };
    let (advertised_tx, advertised_rx) =
        watch::channel(advertise(&locals.borrow_and_update(), &[], &[]));

    // Gossip.
    let gossip_addr = SocketAddr::new(node_ip, args.gossip_port);
    let (membership, view) = Membership::bind(Settings::lan(&me, gossip_addr, keyring))
        .await
        .map_err(|e| e.to_string())?;
    metrics.set_gossip(view.stats.clone());
    // What the peers say they announce, and what this speaker says (see `agreement`).
    let mut peer_claims = view.claims.clone();
    let (owned_tx, owned_rx) = watch::channel(Digest::default());
    let (seeds_tx, seeds_rx) = watch::channel(Vec::new());
    // Peers give this speaker nothing while its identity says Starting: it cannot answer
    // before its caches have synced and its first election is applied.
    let (standing_tx, standing_rx) = watch::channel(Standing::Starting);
    let gossip_cancel = CancellationToken::new();
    let gossip_task = tokio::spawn(membership.run(
        crate::membership::Inputs {
            seeds: seeds_rx,
            interfaces: advertised_rx,
            keys: keys_rx,
            standing: standing_rx,
            owned: owned_rx,
        },
        gossip_cancel.clone(),
    ));
    tokio::spawn(follow_keys(
        secrets,
        secret_name,
        keys_tx,
        view.unknown_key.clone(),
        root.clone(),
    ));
    info!(
        node = %me,
        gossip = %gossip_addr,
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::GIT_COMMIT,
        "speaker started"
    );

    // Status writer.
    let (status_tx, status_rx) = tokio::sync::mpsc::unbounded_channel();
    let status_task = tokio::spawn(status_loop(
        client.clone(),
        me.clone(),
        services.clone(),
        status_rx,
        metrics.clone(),
        root.clone(),
    ));

    // Wait for the caches, and give gossip a moment to find the other speakers before
    // claiming anything: alone, a speaker would elect itself for every IP. A SIGTERM
    // meanwhile ends the speaker without its announcing anything.
    let synced = async {
        for (what, ready) in [
            ("Nodes", nodes.wait_until_ready().await.is_ok()),
            ("Services", services.wait_until_ready().await.is_ok()),
            ("EndpointSlices", slices.wait_until_ready().await.is_ok()),
            ("IPPools", pools.wait_until_ready().await.is_ok()),
        ] {
            if !ready {
                return Err(format!("the {what} watch stopped before it synced"));
            }
        }
        Ok(())
    };
    tokio::select! {
        r = synced => r?,
        _ = signal.cancelled() => info!("SIGTERM before the caches synced: nothing was announced"),
    }
    let family_v4 = node_ip.is_ipv4();
    let seeds_from = |speaker_slices: &[Arc<EndpointSlice>]| {
        let speakers = speaker_nodes(speaker_slices, &args.namespace, &args.speakers_service);
        seeds(
            &nodes.state(),
            speakers.as_ref(),
            &me,
            family_v4,
            args.gossip_port,
        )
    };
    // Once at start-up from every slice; later from the speakers' Service's own slices,
    // which the view's index names.
    let _ = seeds_tx.send(seeds_from(&slices.state()));
    let speakers_key = (args.namespace.clone(), args.speakers_service.clone());
    let mut members = view.members.clone();
    let settle_until = Instant::now() + Duration::from_secs(3);
    let expected = seeds_tx.borrow().len() + 1;
    while Instant::now() < settle_until && !signal.is_cancelled() {
        if members.borrow().len() >= expected {
            break;
        }
        tokio::select! {
            _ = members.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = signal.cancelled() => {}
        }
    }
    let mut announcer = Announcer::new(metrics.clone(), root.clone());
    let mut forwarder = args.nodeport_forwarding.then(|| {
        Forwarder::new(
            Kernel::new(vec![args.nft.clone()], args.forwarding_mark),
            metrics.clone(),
        )
    });
    if let Some(f) = forwarder.as_mut() {
        // What a crashed speaker left is replaced, not added to.
        f.start().await;
    }
    let mut forwarding = Ruleset::default();
    let mut counters_tick = tokio::time::interval(Duration::from_secs(10));
    let loop_health = health.register("election loop", Limits::turning(loop_timeout));
    // Every input of the election has its own change signal; the tick only retries
    // responders that could not start (no socket yet, an interface without a MAC).
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_problems: Vec<String> = Vec::new();
    let mut last_links = links(&locals.borrow());
    let mut lost_addresses: BTreeSet<IpAddr> = BTreeSet::new();
    let mut view = View::new(args.default_class);
    // This node's share: IP -> the interface it is announced on.
    let mut owned: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut members_now = BTreeMap::new();
    let mut members_dirty = true;
    let mut locals_changed = true;
    let mut apply_now = true;
    // The pools' l2.interfaces, compiled when the pools change, and their addresses.
    let mut named: Vec<regex::Regex> = Vec::new();
    let mut blocks: Vec<ferrolb_crds::AddressBlock> = Vec::new();
    // The Services the status writer was told about as ours.
    let mut told_status: BTreeSet<String> = BTreeSet::new();
    // What this speaker's identity says once it announces (Ready; Stale while its view of
    // the cluster may be old). Its own elections use it at once, while gossip still says
    // Starting, so that it answers for its share before its peers let go of it.
    let mut my_standing = Standing::Ready;
    let mut last_rewatch = Instant::now();
    let mut recompute = true;
    // Who owns what in this speaker's view, and how the peers' claims compare with it.
    let mut owners = agreement::Owners::default();
    let mut agreement = agreement::Agreement::default();
    let mut claims_open = true;
    let mut last_note = String::new();
    loop {
        if signal.is_cancelled() {
            break;
        }
        let local_now = locals.borrow_and_update().clone();
        let now_links = links(&local_now);
        if connectivity_returned(&last_links, &now_links, &mut lost_addresses) {
            info!("a link of the node came up or got an address back: restarting the watches");
            restart_watches.send_modify(|n| *n += 1);
        }
        last_links = now_links;
        // A watch that keeps failing makes the view stale (checked on every round, the 2 s
        // tick included): peers with a fresh view take what they can.
        let stale = freshness.check();
        let standing = if stale.is_empty() {
            Standing::Ready
        } else {
            Standing::Stale
        };
        if standing != my_standing {
            if stale.is_empty() {
                info!("the watches work again: the view of the cluster is fresh");
            }
            for p in &stale {
                warn!(problem = %p, "the view of the cluster is stale: not ready, and this node keeps only the IPs no speaker with a fresh view can take");
            }
            my_standing = standing;
            readiness.set_stale(!stale.is_empty());
            members_dirty = true;
            recompute = true;
        }
        // While stale, the watches start afresh every few seconds instead of waiting out
        // their growing backoff: the view is fresh again soon after the API is back.
        if my_standing == Standing::Stale && last_rewatch.elapsed() >= STALE_REWATCH {
            last_rewatch = Instant::now();
            restart_watches.send_modify(|n| *n += 1);
        }
        if recompute {
            // Read what changed, re-decide what it can affect, announce.
            let mut d = std::mem::take(&mut *lock(&dirty));
            if std::mem::take(&mut members_dirty) {
                members_now = members.borrow_and_update().clone();
                // Our own elections count this speaker as what its identity will say
                // once it announces, while gossip may still say Starting.
                if let Some(m) = members_now.get_mut(&me) {
                    m.standing = my_standing;
                }
                d.members = true;
            }
            let nodes_changed = d.nodes.all || !d.nodes.keys.is_empty();
            // The speakers' Service lives in our namespace, where few slices change.
            let speakers_changed =
                d.slices.all || d.slices.keys.iter().any(|(ns, _)| *ns == args.namespace);
            let (members_changed, pools_changed) = (d.members, d.pools);
            let changed = view.apply(d, &stores, &members_now);
            if nodes_changed || speakers_changed {
                let own: Vec<Arc<EndpointSlice>> = view
                    .slices_of(&speakers_key)
                    .filter_map(|n| slices.get(&ObjectRef::new(n).within(&args.namespace)))
                    .collect();
                crate::publish(&seeds_tx, seeds_from(&own));
            }
            metrics.elections.fetch_add(1, Ordering::Relaxed);
            let elector = view.elector();
            if pools_changed {
                named = elector
                    .pools()
                    .iter()
                    .flat_map(|p| p.interfaces.iter())
                    .filter_map(|re| election::interface_regex(re).ok())
                    .collect();
                blocks = elector
                    .pools()
                    .iter()
                    .flat_map(|p| p.blocks.iter().cloned())
                    .collect();
            }
            if pools_changed || locals_changed {
                crate::publish(&advertised_tx, advertise(&local_now, &blocks, &named));
            }
            // A round that moved nothing of ours (an event about a Service that is not a
            // LoadBalancer of ours, a Node field nothing reads) ends here: the responders
            // and the forwarding rules have nothing new to apply.
            apply_now = !changed.ips.is_empty()
                || changed
                    .services
                    .iter()
                    .any(|k| elector.service(k).is_some())
                || nodes_changed
                || pools_changed
                || members_changed
                || locals_changed;
            for ip in &changed.ips {
                let decision = elector.election().decision(*ip);
                owners.set(*ip, decision.and_then(Decision::owner));
                match decision {
                    Some(Decision::Owner { node, interface }) if *node == me => {
                        owned.insert(*ip, interface.clone());
                    }
                    _ => {
                        owned.remove(ip);
                    }
                }
            }
            if !changed.ips.is_empty() {
                crate::publish(&owned_tx, Digest::of(owned.keys().copied()));
            }
            if apply_now {
                let (node_v4, node_v6) = nodes
                    .get(&ObjectRef::new(&me))
                    .map(|n| first_per_family(internal_ips(&n)))
                    .unwrap_or_default();
                let holding: BTreeMap<String, &Service> = owned
                    .keys()
                    .flat_map(|ip| elector.holders(*ip))
                    .map(|s| (s.key(), s))
                    .collect();
                let (rules, forwarding_problems) = forwarding::plan(
                    owned.keys().copied(),
                    holding.values().copied(),
                    node_v4,
                    node_v6,
                );
                forwarding = rules;
                let problems: Vec<String> = view
                    .pool_errors()
                    .iter()
                    .cloned()
                    .chain(elector.election().problems.iter().map(ToString::to_string))
                    .chain(
                        forwarder
                            .is_some()
                            .then_some(forwarding_problems)
                            .into_iter()
                            .flatten(),
                    )
                    .collect();
                if problems != last_problems {
                    for p in &problems {
                        warn!(problem = %p, "configuration problem");
                    }
                    last_problems = problems;
                }
            }
            if members_changed {
                let _ = status_tx.send(StatusUpdate::Members(elector.members().clone()));
            }
            for key in changed.services {
                // The status writer hears of a Service that is not ours only when it had
                // heard of it as ours.
                let update = ServiceStatus::of(&view, &key);
                if update.is_some() {
                    told_status.insert(key.clone());
                } else if !told_status.remove(&key) {
                    continue;
                }
                let _ = status_tx.send(StatusUpdate::Service(key, update));
            }
        }
        locals_changed = false;
        if apply_now {
            let announcements: Vec<election::Announcement> = owned
                .iter()
                .map(|(ip, interface)| election::Announcement {
                    ip: *ip,
                    interface: interface.clone(),
                })
                .collect();
            // Rules for an IP are in place before its gratuitous burst, and stay until its
            // responder stopped.
            if let Some(f) = forwarder.as_mut() {
                f.begin(&forwarding).await;
            }
            announcer.apply(&announcements, &local_now);
            if let Some(f) = forwarder.as_mut() {
                f.finish(forwarding.clone()).await;
            }
        }
        // Do the peers announce what this speaker's view gives them? (Checked every round,
        // the 2 s tick included, so a difference is confirmed soon after its grace period.)
        for finding in agreement.compare(
            std::time::Instant::now(),
            &me,
            &peer_claims.borrow_and_update(),
            owners.digests(),
        ) {
            match finding {
                agreement::Finding::Began(d) => {
                    metrics
                        .ownership_disagreements
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(node = %d.node, claimed = d.claimed.count, expected = d.expected.count, "a peer's claims disagree with this speaker's view: {d}");
                }
                agreement::Finding::Ended(node) => {
                    info!(%node, "a peer's claims agree with this speaker's view again");
                }
            }
        }
        let confirmed = agreement.confirmed();
        metrics
            .peers_disagreeing
            .store(confirmed.len() as u64, Ordering::Relaxed);
        let note = agreement::note(&confirmed);
        if note != last_note {
            let _ = status_tx.send(StatusUpdate::Note(note.clone()));
            last_note = note;
        }

        // The first round always elects: from here on this node's share is announced, and
        // its peers may hand it over.
        readiness.set_ready();
        crate::publish(&standing_tx, my_standing);
        loop_health.progress();

        recompute = true;
        // A tick round retries the responders; a recomputing round says for itself.
        apply_now = true;
        tokio::select! {
            _ = signal.cancelled() => break,
            _ = changed.notified() => {
                // Let a burst of events land before recomputing, and take the permit the
                // burst left so that it does not wake the next round for nothing.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = changed.notified().now_or_never();
            }
            r = members.changed() => {
                if r.is_err() {
                    break;
                }
                members_dirty = true;
            }
            r = locals.changed() => {
                if r.is_err() {
                    break;
                }
                locals_changed = true;
            }
            r = peer_claims.changed(), if claims_open => {
                claims_open = r.is_ok();
                recompute = false;
            }
            _ = tick.tick() => recompute = false,
            _ = counters_tick.tick(), if forwarder.is_some() => {
                if let Some(f) = forwarder.as_mut() {
                    f.refresh_counters().await;
                }
                recompute = false;
            }
        }
    }

    // Hand over: leave gossip (peers elect without us at once), then stop answering.
    readiness.set_stopping();
    gossip_cancel.cancel();
    let _ = gossip_task.await;
    announcer.stop_all();
    if let Some(f) = forwarder.as_mut() {
        f.stop().await;
    }
    info!("left gossip and stopped answering");
    root.cancel();
    watches.abort();
    let _ = status_task.await;
    info!("stopped");
    Ok(())
}

/// How often a speaker whose view is stale starts its watches afresh.
const STALE_REWATCH: Duration = Duration::from_secs(5);

/// How often the gossip Secret is read again for rotated keys.
const KEY_POLL: Duration = Duration::from_secs(10);
/// Reads caused by datagrams no known key opens come at most this often.
const KEY_REREAD_MIN_GAP: Duration = Duration::from_secs(2);

/// The keys in the gossip Secret.
async fn read_keys(api: Api<Secret>, name: String) -> Result<Keyring, String> {
    let s = api
        .get(&name)
        .await
        .map_err(|e| format!("cannot read Secret {name}: {e}"))?;
    let data = s.data.unwrap_or_default();
    Keyring::from_secret_data(data.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())))
        .map_err(|e| format!("Secret {name}: {e}"))
}

/// Keeps `keys` equal to the gossip Secret's keys: reads it every [`KEY_POLL`], and at once
/// when a datagram arrives that no known key opens (a peer already seals with a key this
/// speaker has not read). A Secret that cannot be read, is gone or holds no valid key
/// changes nothing: the keys in use stay (see `membership::keys`).
async fn follow_keys(
    api: Api<Secret>,
    name: String,
    keys: watch::Sender<Keyring>,
    unknown_key: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut last_problem: Option<String> = None;
    let mut last_read = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEY_POLL, KEY_POLL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = unknown_key.notified() => {
                let wait = KEY_REREAD_MIN_GAP.saturating_sub(last_read.elapsed());
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        last_read = Instant::now();
        match read_keys(api.clone(), name.clone()).await {
            Ok(ring) => {
                if crate::publish(&keys, ring) {
                    info!(secret = %name, "read new gossip keys");
                }
                if last_problem.take().is_some() {
                    info!(secret = %name, "the gossip Secret is readable again");
                }
            }
            Err(e) => {
                if last_problem.as_ref() != Some(&e) {
                    warn!(error = %e, "keeping the gossip keys in use");
                }
                last_problem = Some(e);
            }
        }
    }
}

/// The status writer's state: the latest word on each Service and who is live; only the
/// Services named by an update since the last turn (or whose write failed) are looked at.
#[derive(Default)]
struct StatusState {
    views: BTreeMap<String, Box<ServiceStatus>>,
    members: BTreeSet<String>,
    dirty: BTreeSet<String>,
    failed: BTreeSet<String>,
    /// What we wrote, and the resourceVersion the Service had before: while the store
    /// still shows that version it has not caught up with our write, and writing again
    /// would only repeat it. Once the Service moves on, what it says counts again.
    written: BTreeMap<String, (status::Announced, Option<String>)>,
    /// Added to every message while peers disagree (see `agreement::note`).
    note: String,
    /// When this speaker last wrote each Service's condition, and the message-only changes
    /// waiting for their turn (see `status::pace`).
    last_write: BTreeMap<String, Instant>,
    deferred: BTreeMap<String, Instant>,
}

/// Condition writes per second on average, and at once (see `status::WriteBudget`).
const WRITES_PER_SECOND: f64 = 50.0;
const WRITES_AT_ONCE: f64 = 200.0;

impl StatusState {
    fn absorb(&mut self, u: StatusUpdate) {
        match u {
            StatusUpdate::Service(key, Some(v)) => {
                self.views.insert(key.clone(), v);
                self.dirty.insert(key);
            }
            StatusUpdate::Service(key, None) => {
                // Not ours any more: the controller removes its condition.
                self.views.remove(&key);
                self.written.remove(&key);
                self.failed.remove(&key);
                self.dirty.remove(&key);
                self.last_write.remove(&key);
                self.deferred.remove(&key);
            }
            StatusUpdate::Members(m) => {
                if m != self.members {
                    self.members = m;
                    self.dirty.extend(self.views.keys().cloned());
                }
            }
            StatusUpdate::Note(n) => {
                if n != self.note {
                    self.note = n;
                    self.dirty.extend(self.views.keys().cloned());
                }
            }
        }
    }
}

/// Writes `ferrolb.io/Announced` on the Services this speaker is the writer for, when
/// it differs from what the Service says, and `Announcing` when the owner changes.
async fn status_loop(
    client: kube::Client,
    me: String,
    services: Store<K8sService>,
    mut input: tokio::sync::mpsc::UnboundedReceiver<StatusUpdate>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut st = StatusState::default();
    let mut budget = status::WriteBudget::new(WRITES_PER_SECOND, WRITES_AT_ONCE, Instant::now());
    let mut sctp_before = false;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            u = input.recv() => match u {
                Some(u) => st.absorb(u),
                None => return,
            },
            // Writes that failed are tried again, and deferred ones whose turn came.
            _ = tick.tick() => {
                let mut failed = std::mem::take(&mut st.failed);
                st.dirty.append(&mut failed);
                let now = Instant::now();
                let due: Vec<String> = st
                    .deferred
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    st.deferred.remove(&k);
                    st.dirty.insert(k);
                }
            }
        }
        while let Ok(u) = input.try_recv() {
            st.absorb(u);
        }
        // A refusal found by the forwarder after the last update still reaches the
        // conditions.
        let sctp_refused = metrics
            .forwarding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|f| f.sctp_refused);
        if sctp_refused != sctp_before {
            sctp_before = sctp_refused;
            st.dirty.extend(st.views.keys().cloned());
        }
        for key in std::mem::take(&mut st.dirty) {
            let Some(v) = st.views.get(&key) else {
                continue;
            };
            let svc = &v.service;
            if status::writer(svc, &v.election, st.members.iter().map(String::as_str))
                != Some(me.as_str())
            {
                continue;
            }
            let mut want = status::announced(svc, &v.election, sctp_refused.then_some(me.as_str()));
            if !st.note.is_empty() {
                want.message = format!("{}. {}", want.message, st.note);
            }
            let Some(obj) = services.get(&ObjectRef::new(&svc.name).within(&svc.namespace)) else {
                continue;
            };
            let current = status::current(&obj);
            let rv = obj.metadata.resource_version.clone();
            // A spec change moves observedGeneration even when the content stays.
            let same_generation =
                current.is_some_and(|c| c.observed_generation == obj.metadata.generation);
            if (status::up_to_date(current, &want) && same_generation)
                || st
                    .written
                    .get(&key)
                    .is_some_and(|(w, before)| *w == want && *before == rv)
            {
                continue;
            }
            // A change users do not act on waits its turn; every write spends the budget.
            let now = Instant::now();
            if let Some(wait) = status::pace(current, &want, st.last_write.get(&key).copied(), now)
            {
                st.deferred.insert(key, now + wait);
                continue;
            }
            st.deferred.remove(&key);
            while let Some(wait) = budget.take(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let event = status::owner_changed(current, &want);
            match write_condition(&client, &obj, current, &want).await {
                Ok(()) => {
                    st.last_write.insert(key.clone(), Instant::now());
                    metrics.status_writes.fetch_add(1, Ordering::Relaxed);
                    info!(service = %key, status = want.status, reason = %want.reason, message = %want.message, "ferrolb.io/Announced");
                    if event {
                        publish_announcing(&client, &obj, &me, &want.message).await;
                    }
                    st.written.insert(key, (want, rv));
                }
                Err(e) => {
                    metrics.status_write_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(service = %key, error = %e, "cannot write ferrolb.io/Announced");
                    st.failed.insert(key);
                }
            }
        }
    }
}

async fn write_condition(
    client: &kube::Client,
    svc: &K8sService,
    current: Option<&Condition>,
    want: &status::Announced,
) -> Result<(), kube::Error> {
    let status_str = status::status_str(want.status);
    let since = current
        .filter(|c| c.status == status_str)
        .map(|c| c.last_transition_time.0)
        .unwrap_or_else(Timestamp::now);
    let cond = Condition {
        type_: CONDITION_ANNOUNCED.into(),
        status: status_str.into(),
        reason: want.reason.clone(),
        message: want.message.chars().take(32 * 1024).collect(),
        last_transition_time: Time(since),
        observed_generation: svc.metadata.generation,
    };
    let ns = svc.namespace().unwrap_or_default();
    let api: Api<K8sService> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"apiVersion": "v1", "kind": "Service", "status": {"conditions": [cond]}});
    api.patch_status(
        &svc.name_any(),
        &PatchParams::apply(FIELD_MANAGER_SPEAKER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// One `events.k8s.io/v1` Event per owner change.
async fn publish_announcing(client: &kube::Client, svc: &K8sService, me: &str, note: &str) {
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
    let ev = K8sEvent {
        metadata: kube::api::ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                svc.name_any(),
                Timestamp::now().as_nanosecond().unsigned_abs()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        action: Some("Announce".into()),
        reason: Some(ANNOUNCING.into()),
        note: Some(note.chars().take(1000).collect()),
        type_: Some("Normal".into()),
        regarding: Some(svc.object_ref(&())),
        reporting_controller: Some(format!("ferrolb.io/{FIELD_MANAGER_SPEAKER}")),
        reporting_instance: Some(format!("{FIELD_MANAGER_SPEAKER}-{me}")),
        ..Default::default()
    };
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        warn!(%e, "cannot publish the Announcing event");
    }
}

async fn wait_for_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nodes_that_run_a_speaker_are_gossip_seeds() {
        let node = |name: &str, ip: &str| -> Arc<K8sNode> {
            Arc::new(
                serde_json::from_value(serde_json::json!({"metadata": {"name": name},
                    "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}))
                .unwrap(),
            )
        };
        let slice = |ns: &str, svc: &str, nodes: &[(&str, bool)]| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{svc}-x"), "namespace": ns,
                        "labels": {SERVICE_NAME_LABEL: svc}},
                    "addressType": "IPv4",
                    "endpoints": nodes.iter().map(|(n, ready)| serde_json::json!({
                        "addresses": ["10.0.0.1"], "nodeName": n,
                        "conditions": {"ready": ready}})).collect::<Vec<_>>()}))
                .unwrap(),
            )
        };
        let nodes = [
            node("a", "10.0.0.1"),
            node("b", "10.0.0.2"),
            node("cp", "10.0.0.9"),
            node("c", "10.0.0.3"),
        ];
        let slices = [
            // A starting speaker (not ready) is a seed too.
            slice(
                "ferrolb-system",
                "ferrolb-speaker-metrics",
                &[("a", true), ("b", false)],
            ),
            slice("ferrolb-system", "ferrolb-speaker-metrics", &[("c", true)]),
            // The same name elsewhere, and another Service here, say nothing.
            slice("default", "ferrolb-speaker-metrics", &[("cp", true)]),
            slice("ferrolb-system", "other", &[("cp", true)]),
        ];
        let speakers = speaker_nodes(&slices, "ferrolb-system", "ferrolb-speaker-metrics");
        let names = |v: Vec<(String, SocketAddr)>| -> Vec<String> {
            v.into_iter().map(|(n, _)| n).collect()
        };
        assert_eq!(
            names(seeds(&nodes, speakers.as_ref(), "a", true, 7946)),
            ["b", "c"]
        );
        // No endpoints (no such Service, as in the lab): every other Node.
        let none = speaker_nodes(&slices[2..], "ferrolb-system", "ferrolb-speaker-metrics");
        assert_eq!(none, None);
        assert_eq!(
            names(seeds(&nodes, none.as_ref(), "a", true, 7946)),
            ["b", "c", "cp"]
        );
        let s = seeds(&nodes, speakers.as_ref(), "a", true, 7946);
        assert_eq!(s[0].1, "10.0.0.2:7946".parse().unwrap());
    }

    #[test]
    fn watches_restart_when_a_link_comes_back_up_or_an_address_returns() {
        let ips =
            |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let link = |index: u32, up: bool, a: &[&str]| (index, (up, ips(a)));
        let mut lost = BTreeSet::new();
        let up: Links = [
            link(2, true, &["10.0.0.4", "fd00::4"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(
            !connectivity_returned(&up, &up, &mut lost),
            "nothing changed"
        );
        // Cut: the link and its addresses are gone.
        let cut: Links = [link(5, true, &["10.244.1.1"])].into();
        assert!(
            !connectivity_returned(&up, &cut, &mut lost),
            "gone, not back"
        );
        assert!(!connectivity_returned(&cut, &cut, &mut lost));
        // Healed as a new link (another index): back.
        let healed: Links = [
            link(9, true, &["10.0.0.4", "fd00::4"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(connectivity_returned(&cut, &healed, &mut lost));
        assert!(lost.is_empty());
        // Taken down (addresses kept), renamed, up again: the up counts.
        let down: Links = [
            link(9, false, &["10.0.0.4", "fd00::4"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(!connectivity_returned(&healed, &down, &mut lost));
        assert!(connectivity_returned(&down, &healed, &mut lost));
        // An address removed and added back on a link that stayed up.
        let bare: Links = [link(9, true, &["fd00::4"]), link(5, true, &["10.244.1.1"])].into();
        assert!(!connectivity_returned(&healed, &bare, &mut lost));
        assert!(connectivity_returned(&bare, &healed, &mut lost));
        // A brand-new address is not a return.
        let more: Links = [
            link(9, true, &["10.0.0.4", "fd00::4", "10.0.0.9"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(!connectivity_returned(&healed, &more, &mut lost));
        // A pod's veth holding the gateway address other veths hold: no restart; the first
        // one, with an address no up interface held, does.
        let pod: Links = [
            link(9, true, &["10.0.0.4", "fd00::4", "10.0.0.9"]),
            link(5, true, &["10.244.1.1"]),
            link(11, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(!connectivity_returned(&more, &pod, &mut lost));
        let fresh: Links = [link(9, true, &["10.0.0.4", "fd00::4", "10.0.0.9"])].into();
        assert!(connectivity_returned(&fresh, &pod, &mut lost));
    }

    #[test]
    fn only_interfaces_with_global_addresses_count() {
        let li = |index: u32, name: &str, up: bool, addrs: &[&str]| interfaces::LocalInterface {
            iface: election::Interface {
                name: name.into(),
                up,
                subnets: addrs.iter().map(|a| (a.parse().unwrap(), 64)).collect(),
                ..Default::default()
            },
            index,
            mac: None,
        };
        let l = links(&[
            li(1, "lo", true, &["127.0.0.1", "::1"]),
            li(2, "eth0", true, &["10.0.0.4", "fe80::1"]),
            li(7, "veth1", true, &["fe80::2"]),
            li(8, "veth2", false, &[]),
        ]);
        assert_eq!(
            l.keys().copied().collect::<Vec<_>>(),
            vec![2],
            "pods' veths never restart the watches"
        );
        assert_eq!(l[&2].1.len(), 1);
    }

    #[test]
    fn a_mark_is_one_bit_in_hex_or_decimal() {
        assert_eq!(parse_mark("0x1000"), Ok(0x1000));
        assert_eq!(parse_mark("4096"), Ok(0x1000));
        assert!(
            parse_mark("0x3000")
                .unwrap_err()
                .contains("exactly one bit")
        );
        assert!(parse_mark("0").is_err());
        assert!(parse_mark("0xzz").unwrap_err().contains("not a number"));
    }

    #[test]
    fn the_node_address_per_family_is_the_first_listed() {
        let ips = ["fd00::11", "10.0.0.11", "10.0.0.12", "fd00::12"]
            .map(|s| s.parse::<IpAddr>().unwrap());
        assert_eq!(
            first_per_family(ips.into_iter()),
            (
                Some("10.0.0.11".parse().unwrap()),
                Some("fd00::11".parse().unwrap())
            )
        );
        assert_eq!(first_per_family(std::iter::empty()), (None, None));
    }
}
