//! The `ferrolb-speaker` process: flags, then a short composition of named tasks under
//! one tracker ([`ferrolb_crds::process::tasks`]):
//!
//! | task | what it does |
//! |---|---|
//! | `admin server` | `/healthz`, `/readyz`, `/metrics` ([`crate::admin`]) |
//! | `Node watch`, `Service watch`, `EndpointSlice watch`, `IPPool watch` | the caches ([`watches`]) |
//! | `interfaces` | the node's interfaces, over netlink ([`crate::interfaces::watch`]) |
//! | `gossip` | membership and claims ([`crate::membership`]) |
//! | `gossip keys` | follows the gossip Secret ([`keys`]) |
//! | `status writer` | `ferrolb.io/Announced` and `Announcing` Events ([`status_writer`]) |
//! | `election loop` | decides, announces, forwards ([`election_loop`]) |
//!
//! SIGTERM: the election loop leaves gossip first (peers take over at once), then stops
//! answering; then every other task is told to stop, and the process exits. A second
//! signal aborts.
//!
//! Probes: `/readyz` turns true once the caches have synced and the first election was
//! applied, and false at SIGTERM. `/healthz` fails when the election loop (it ticks every
//! 2 s) has not turned for `--healthz-loop-timeout` (60 s), or a watch has ended or kept
//! failing for `--healthz-api-timeout` (15 minutes). That one is long on purpose: a
//! restarted speaker announces nothing until it reaches the API again, so restarting
//! speakers during an API outage would take every LoadBalancer IP down with it.

mod election_loop;
mod keys;
mod links;
mod nodes;
mod status_writer;
mod watches;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrolb_crds::health::{Health, Limits};
use ferrolb_crds::process::admin::{AdminServer, Listen};
use ferrolb_crds::process::logging::{self, LogFormat};
use ferrolb_crds::process::signals::{self, Drained};
use ferrolb_crds::process::tasks::Tasks;
use ferrolb_crds::process::{ProcessError, client};
use k8s_openapi::api::core::v1::{Node as K8sNode, Secret};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Error;
use crate::admin::{self, Metrics, Readiness};
use crate::agreement::Digest;
use crate::announcer::Announcer;
use crate::forwarding::kernel::{Forwarder, Kernel};
use crate::interfaces;
use crate::membership::{Membership, Settings, Standing};
use election_loop::{ElectionLoop, Identity, ToGossip};
use watches::Caches;

pub use links::{Links, connectivity_returned, links};

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

/// The flags' durations, checked.
#[derive(Clone, Copy, Debug)]
struct Timing {
    scan_period: Duration,
    loop_timeout: Duration,
    api_timeout: Option<Duration>,
    stale_after: Duration,
}

fn seconds(value: f64, flag: &'static str, problem: &'static str) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(value).map_err(|_| Error::Flag { flag, problem })
}

impl Timing {
    fn of(args: &Args) -> Result<Timing, Error> {
        let positive = "must be a positive number of seconds";
        let nonzero = |d: Duration, flag| {
            (!d.is_zero()).then_some(d).ok_or(Error::Flag {
                flag,
                problem: positive,
            })
        };
        let scan_period = nonzero(
            seconds(
                args.interface_scan_period,
                "interface-scan-period",
                positive,
            )?,
            "interface-scan-period",
        )?;
        let longer = "must be longer than the loop's 2 s tick";
        let loop_timeout = seconds(args.healthz_loop_timeout, "healthz-loop-timeout", longer)?;
        if loop_timeout <= election_loop::TICK {
            return Err(Error::Flag {
                flag: "healthz-loop-timeout",
                problem: longer,
            });
        }
        let api_timeout = seconds(
            args.healthz_api_timeout,
            "healthz-api-timeout",
            "must be a number of seconds, 0 for never",
        )?;
        let stale_after = nonzero(
            seconds(args.stale_after, "stale-after", positive)?,
            "stale-after",
        )?;
        Ok(Timing {
            scan_period,
            loop_timeout,
            api_timeout: Some(api_timeout).filter(|d| !d.is_zero()),
            stale_after,
        })
    }
}

/// The Kubernetes client: `--kubeconfig` or the usual inference, and a read timeout that
/// replaces a silently dead connection well before the default five minutes.
async fn kube_client(args: &Args) -> Result<kube::Client, Error> {
    let mut config = client::config(args.kubeconfig.as_deref()).await?;
    // A connection that delivers nothing for this long is taken for dead. The API server
    // sends a watch bookmark every minute, so a live watch never waits that long.
    config.read_timeout = Some(Duration::from_secs(90));
    Ok(kube::Client::try_from(config).map_err(ProcessError::Client)?)
}

/// Retries `f` every two seconds until it returns a value or `cancel` fires; logs the
/// first failure and then every tenth.
async fn until_ok<T, F, Fut>(what: &str, cancel: &CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if attempt.is_multiple_of(10) {
                    warn!(error = %e.chain(), "waiting for {what}");
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

/// This Node's gossip address: its first InternalIP.
async fn node_ip(api: &Api<K8sNode>, me: &str) -> Result<std::net::IpAddr, Error> {
    let n = api.get(me).await.map_err(|source| Error::ReadNode {
        node: me.to_string(),
        source,
    })?;
    nodes::internal_ips(&n)
        .next()
        .ok_or_else(|| Error::NoInternalIp {
            node: me.to_string(),
        })
}

/// Runs the speaker process until a signal stops it.
pub async fn run(args: Args) -> Result<(), Error> {
    logging::init(args.log_format);
    let me = args.node_name.clone();
    if me.is_empty() {
        return Err(Error::Flag {
            flag: "node-name",
            problem: "(or $NODE_NAME) must name this node",
        });
    }
    let timing = Timing::of(&args)?;
    let client = kube_client(&args).await?;

    let health = Health::new();
    // The watches against the shorter limit: past it the view counts as stale.
    let freshness = Health::new();
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let tasks = Tasks::new();
    let admin = AdminServer::bind(
        Listen::from_flag(args.admin_address, admin::DEFAULT_PORT),
        admin::endpoints(metrics.clone(), readiness.clone(), health.clone()),
    )?;
    tasks.spawn("admin server", admin.serve(tasks.stopping()));

    // SIGTERM: the election loop hands over; a second signal while stopping aborts.
    let signal = CancellationToken::new();
    tokio::spawn({
        let signal = signal.clone();
        let readiness = readiness.clone();
        let tasks = tasks.clone();
        async move {
            signals::terminated().await;
            info!("signal: handing over and stopping (a second signal aborts)");
            readiness.set_stopping();
            tasks.shutting_down();
            signal.cancel();
            signals::terminated().await;
            error!("second signal: aborting");
            std::process::exit(130);
        }
    });

    let nodes_api: Api<K8sNode> = Api::all(client.clone());
    let started = async {
        let node_ip = until_ok("this Node's InternalIP", &signal, || {
            node_ip(&nodes_api, &me)
        })
        .await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
        let keyring = until_ok("the gossip Secret", &signal, || {
            keys::read_keys(secrets.clone(), args.gossip_secret.clone())
        })
        .await?;
        Some((node_ip, secrets, keyring))
    };
    let Some((node_ip, secrets, keyring)) = started.await else {
        return stop(tasks).await;
    };

    let caches = Caches::start(
        &client,
        &tasks,
        &health,
        timing.api_timeout,
        &freshness,
        timing.stale_after,
    );
    let (mut locals, scanning) = interfaces::watcher(timing.scan_period, tasks.stopping());
    tasks.spawn("interfaces", scanning);

    // Gossip. The announcing interfaces travel in our identity (the election loop picks
    // them, as the pools' l2.interfaces decide which interfaces count). Peers give this
    // speaker nothing while its identity says Starting: it cannot answer before its
    // caches have synced and its first election is applied.
    let gossip_addr = SocketAddr::new(node_ip, args.gossip_port);
    let (membership, gossip) =
        Membership::bind(Settings::lan(&me, gossip_addr, keyring.clone())).await?;
    metrics.set_gossip(gossip.stats.clone());
    let (keys_tx, keys_rx) = watch::channel(keyring);
    let (interfaces_tx, interfaces_rx) = watch::channel(election_loop::advertise(
        &locals.borrow_and_update(),
        &[],
        &[],
    ));
    let (seeds_tx, seeds_rx) = watch::channel(Vec::new());
    let (standing_tx, standing_rx) = watch::channel(Standing::Starting);
    let (owned_tx, owned_rx) = watch::channel(Digest::default());
    let leave = CancellationToken::new();
    let gossip_task = tasks.spawn(
        "gossip",
        membership.run(
            crate::membership::Inputs {
                seeds: seeds_rx,
                interfaces: interfaces_rx,
                keys: keys_rx,
                standing: standing_rx,
                owned: owned_rx,
            },
            leave.clone(),
        ),
    );
    tasks.spawn(
        "gossip keys",
        keys::follow_keys(
            secrets,
            args.gossip_secret.clone(),
            keys_tx,
            gossip.unknown_key.clone(),
            tasks.stopping(),
        ),
    );
    info!(
        node = %me,
        gossip = %gossip_addr,
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::GIT_COMMIT,
        "speaker started"
    );

    let (status_tx, status_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(
        "status writer",
        status_writer::status_loop(
            client.clone(),
            me.clone(),
            caches.services.clone(),
            status_rx,
            metrics.clone(),
            tasks.stopping(),
        ),
    );

    let forwarder = args.nodeport_forwarding.then(|| {
        Forwarder::new(
            Kernel::new(vec![args.nft.clone()], args.forwarding_mark),
            metrics.clone(),
        )
    });
    let election = ElectionLoop {
        me: Identity {
            node: me.clone(),
            speakers: (args.namespace.clone(), args.speakers_service.clone()),
            gossip_port: args.gossip_port,
            gossip_v4: node_ip.is_ipv4(),
            default_class: args.default_class,
        },
        caches,
        gossip,
        to_gossip: ToGossip {
            seeds: seeds_tx,
            interfaces: interfaces_tx,
            standing: standing_tx,
            owned: owned_tx,
            leave,
            task: gossip_task,
        },
        locals,
        status: status_tx,
        announcer: Announcer::new(metrics.clone(), tasks.stopping()),
        forwarder,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        freshness,
        turning: health.register("election loop", Limits::turning(timing.loop_timeout)),
        signal: signal.clone(),
    };
    // The loop ends after its handover: at SIGTERM, or when a cache cannot sync.
    let outcome = match tasks.spawn("election loop", election.run()).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::Panicked {
            task: "election loop",
        }),
    };
    stop(tasks).await?;
    outcome
}

/// Tells every task to stop and waits for them; a second signal aborts.
async fn stop(tasks: Tasks) -> Result<(), Error> {
    if tasks.stop_and_drain().await == Drained::Aborted {
        error!("second signal: aborting");
        std::process::exit(130);
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn flags_that_make_no_sense_are_named() {
        let args = |extra: &[&str]| {
            let mut v = vec!["ferrolb-speaker", "--node-name", "a"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).expect("the flags parse")
        };
        assert!(Timing::of(&args(&[])).is_ok());
        let e = Timing::of(&args(&["--stale-after", "0"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--stale-after: must be a positive number of seconds"
        );
        let e = Timing::of(&args(&["--healthz-loop-timeout", "2"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--healthz-loop-timeout: must be longer than the loop's 2 s tick"
        );
        let e = Timing::of(&args(&["--interface-scan-period=-1"])).unwrap_err();
        assert!(e.to_string().starts_with("--interface-scan-period"), "{e}");
        let never = Timing::of(&args(&["--healthz-api-timeout", "0"])).expect("0 is never");
        assert_eq!(never.api_timeout, None);
    }
}
