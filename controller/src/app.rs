//! The `ferrolb-controller` process: flags, logging, the admin server, the speakers' gossip
//! Secret, the leader elector and, while this replica leads, the controller loop. SIGTERM
//! stops everything cleanly (the Lease is released so another replica takes over at once);
//! a second signal aborts.
//!
//! `/healthz` bounds (`--healthz-loop-timeout`, `--healthz-api-timeout`): the lease rounds
//! turn every retry period (a round gives up after the renew deadline), the controller
//! machinery's heartbeat every quarter of the loop timeout, so 60 s of silence means a dead
//! loop even on a busy two-core node. API errors must keep coming for 5 minutes: an API
//! server restart of a minute or two is waited out, since restarting the controller then
//! would only add a full re-list to the API's load when it comes back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferrolb_crds::process::admin::{AdminServer, Listen};
use ferrolb_crds::process::logging::{self, LogFormat};
use ferrolb_crds::process::tasks::Tasks;
use ferrolb_crds::process::{client, signals};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use ferrolb_crds::health::{Health, Limits};

use crate::Error;
use crate::admin::{self, Metrics, Readiness};
use crate::caches::Caches;
use crate::gossip_secret;
use crate::leader::{LeaderConfig, LeaderElector, LeaderHandle};
use crate::reconcile::Settings;
use crate::term::{self, Probes};

/// ferrolb's controller: allocates LoadBalancer IPs from IPPools and writes them into
/// Service status.
#[derive(Clone, Debug, Parser)]
#[command(name = "ferrolb-controller", version = crate::VERSION)]
pub struct Args {
    /// kubeconfig file; without it, $KUBECONFIG, ~/.kube/config or the in-cluster config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Handle LoadBalancer Services that set no spec.loadBalancerClass (besides those of
    /// class ferrolb.io/l2).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the admin server (/healthz, /readyz, /metrics). Default: port 7472 on
    /// every IPv6 and IPv4 address ([::]:7472, one socket for both families; 0.0.0.0:7472
    /// on a host without IPv6).
    #[arg(long)]
    pub admin_address: Option<SocketAddr>,

    /// Seconds the lease rounds or, while leading, the controller machinery may go without
    /// turning before /healthz fails. Must exceed --renew-deadline plus --retry-period.
    #[arg(long, default_value_t = 60.0)]
    pub healthz_loop_timeout: f64,

    /// Seconds API errors (lease rounds, watches) may keep coming without a success before
    /// /healthz fails; 0: never. Long enough to wait out an API server restart.
    #[arg(long, default_value_t = 300.0)]
    pub healthz_api_timeout: f64,

    /// Name of the Lease that elects the leader among replicas.
    #[arg(long, default_value = "ferrolb-controller")]
    pub lease_name: String,

    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrolb-system")]
    pub lease_namespace: String,

    /// This replica's name in the Lease (the pod name); the process adds a random suffix
    /// of its own, so that no two processes share an identity.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds others wait for a renewal before taking over.
    #[arg(long, default_value_t = 15.0)]
    pub lease_duration: f64,

    /// Seconds without a renewal after which the leader stops writing.
    #[arg(long, default_value_t = 10.0)]
    pub renew_deadline: f64,

    /// Seconds between two election rounds.
    #[arg(long, default_value_t = 2.0)]
    pub retry_period: f64,

    /// This replica's ServiceAccount (in the Lease's namespace): the gossip Secret and the
    /// Lease it creates are owned by it, so that deleting the installation deletes them.
    /// Unset: they have no owner.
    #[arg(long, env = "FERROLB_SERVICE_ACCOUNT")]
    pub owner_service_account: Option<String>,

    /// Secret (in the Lease's namespace) holding the speakers' gossip key; created with a
    /// random key when absent, never changed when present. Empty: do not manage it.
    #[arg(long, default_value = ferrolb_crds::names::GOSSIP_SECRET)]
    pub gossip_secret: String,
}

fn seconds(flag: &'static str, v: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(v).map_err(|_| Error::Flag {
        flag,
        problem: "must be a positive number of seconds".into(),
    })
}

/// Runs the controller process until a signal stops it.
pub async fn run(args: Args) -> Result<(), Error> {
    logging::init(args.log_format);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::GIT_COMMIT,
        "ferrolb-controller starting"
    );
    let client = client::client(args.kubeconfig.as_deref()).await?;
    let base = match args.identity.clone() {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(Error::Hostname)?,
    };
    let identity = process_identity(&base);
    info!(%identity, "identity in the leader Lease");
    let owner = match args
        .owner_service_account
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        Some(sa) => {
            crate::owner::resolve(
                &client,
                &args.lease_namespace,
                sa,
                &CancellationToken::new(),
            )
            .await
        }
        None => None,
    };
    let leader_config = LeaderConfig::new(&args.lease_name, &args.lease_namespace, &identity)
        .owned_by(owner.clone())
        .with_timings(
            seconds("lease-duration", args.lease_duration)?,
            seconds("renew-deadline", args.renew_deadline)?,
            seconds("retry-period", args.retry_period)?,
        );
    let loop_timeout = seconds("healthz-loop-timeout", args.healthz_loop_timeout)?;
    let slowest_round = leader_config.renew_deadline + leader_config.retry_period;
    if loop_timeout <= slowest_round {
        return Err(Error::Flag {
            flag: "healthz-loop-timeout",
            problem: format!(
                "must exceed --renew-deadline plus --retry-period ({slowest_round:?}): a slow lease round would fail /healthz"
            ),
        });
    }
    let api_timeout =
        Some(seconds("healthz-api-timeout", args.healthz_api_timeout)?).filter(|t| !t.is_zero());
    let health = Health::new();
    let elector =
        LeaderElector::new(client.clone(), leader_config)?.report_health(health.register(
            "leader election",
            Limits::turning_and_calling_api(loop_timeout, api_timeout),
        ));
    let leader = elector.handle();

    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new(Some(leader.clone()));
    let probes = Probes {
        readiness: readiness.clone(),
        health: health.clone(),
        loop_timeout,
        api_timeout,
    };
    let admin = AdminServer::bind(
        Listen::from_flag(args.admin_address, admin::DEFAULT_PORT),
        admin::endpoints(metrics.clone(), readiness.clone(), health.clone()),
    )?;

    let tasks = Tasks::new();
    let root = tasks.stopping();
    tasks.spawn("admin server", admin.serve(root.clone()));
    // Every replica keeps its caches warm: a new leader starts without listing again.
    let caches = Caches::start(&client, &health, api_timeout, &tasks);
    if !args.gossip_secret.is_empty() {
        // Every replica, leader or not: the API server settles who creates it.
        tasks.spawn(
            "gossip Secret",
            gossip_secret::run(
                client.clone(),
                args.lease_namespace.clone(),
                args.gossip_secret.clone(),
                owner.clone(),
                root.clone(),
            ),
        );
    }
    // The elector is not one of the tasks: it outlives them, so that it releases the Lease
    // last.
    let elector_cancel = CancellationToken::new();
    let elector_task = tokio::spawn({
        let cancel = elector_cancel.clone();
        async move {
            if let Err(e) = elector.run(cancel).await {
                error!(%e, "leader election stopped");
            }
        }
    });
    let settings = Settings {
        default_class: args.default_class,
        instance: identity.clone(),
    };
    tasks.spawn(
        "controller",
        lead(client, caches, settings, leader, metrics, probes, root),
    );

    signals::terminated().await;
    info!("shutting down (a second signal aborts)");
    readiness.set_stopping();
    if tasks.stop_and_drain().await == signals::Drained::Aborted {
        error!("second signal: aborting");
        std::process::exit(130);
    }
    elector_cancel.cancel();
    let _ = elector_task.await;
    info!("stopped");
    Ok(())
}

/// Runs a term each time this replica leads, until `root` is cancelled.
async fn lead(
    client: kube::Client,
    caches: Caches,
    settings: Settings,
    leader: LeaderHandle,
    metrics: Arc<Metrics>,
    probes: Probes,
    root: CancellationToken,
) {
    loop {
        metrics.set_leader(false);
        tokio::select! {
            _ = root.cancelled() => return,
            r = leader.wait_until_leading() => if r.is_err() { return },
        }
        info!(identity = %leader.identity(), "leading: starting the controller");
        metrics.set_leader(true);
        let term = root.child_token();
        let lost = {
            let term = term.clone();
            let leader = leader.clone();
            tokio::spawn(async move {
                leader.wait_until_not_leading().await;
                term.cancel();
            })
        };
        term::run(
            client.clone(),
            &caches,
            settings.clone(),
            Some(leader.clone()),
            metrics.clone(),
            &probes,
            term,
        )
        .await;
        lost.abort();
        info!("controller loop stopped");
    }
}

/// This process's identity in the Lease: `base` (the pod name) and a random suffix, so that
/// no two processes ever share one - not two replicas given the same name by mistake, not a
/// container restarted in place while its predecessor's record is still in the Lease.
/// (Sharing an identity would let both believe they lead; the elector also refuses to lead
/// on a record it did not write, see `leader::Decision::Clash`.)
pub fn process_identity(base: &str) -> String {
    format!("{base}_{}", random_suffix())
}

/// Eight hex digits from the kernel's random UUIDs; the process id and the clock if those
/// cannot be read.
fn random_suffix() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .ok()
        .map(|u| {
            u.chars()
                .filter(char::is_ascii_hexdigit)
                .take(8)
                .collect::<String>()
        })
        .filter(|s| s.len() == 8)
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            format!("{:08x}", std::process::id().rotate_left(16) ^ nanos)
        })
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn every_process_identity_is_the_base_and_its_own_suffix() {
        let a = process_identity("ferrolb-controller-7d9f-abcde");
        let b = process_identity("ferrolb-controller-7d9f-abcde");
        assert_ne!(a, b);
        for id in [&a, &b] {
            let (base, suffix) = id.rsplit_once('_').unwrap();
            assert_eq!(base, "ferrolb-controller-7d9f-abcde");
            assert_eq!(suffix.len(), 8);
            assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
