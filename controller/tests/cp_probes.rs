//! The controller's probes against a real kube-apiserver, as kubelet would see them:
//! `/readyz` is true on the leader once it restored and on a standby while another replica
//! holds a valid Lease, false while nobody does; `/healthz` fails while the API stays
//! unreachable past the bound and recovers when it is back.
//!
//! Timings are short (3 s lease, 2 s renew deadline, 0.3 s retry; /healthz bounds of 5 s
//! for loops and 3 s for API errors) but never asserted: outcomes are awaited with generous
//! timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::process::{Supervised, free_port};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const NS: &str = "ferrolb-system";
const PATIENCE: Duration = Duration::from_secs(60);

/// One control plane at a time: the machine has two shared cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn control_plane() -> TestControlPlane {
    let cp = TestControlPlane::start().await.unwrap();
    let ns: Api<Namespace> = Api::all(cp.client());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
    )
    .await
    .unwrap();
    cp
}

/// A controller process and where its admin server listens.
struct Replica {
    process: Supervised,
    admin: SocketAddr,
}

impl Replica {
    fn start(cp: &TestControlPlane, identity: &str, kubeconfig: &Path, extra: &[&str]) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"));
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--admin-address={admin}"))
            .arg(format!("--identity={identity}"))
            .args([
                "--lease-duration=3",
                "--renew-deadline=2",
                "--retry-period=0.3",
                "--healthz-loop-timeout=5",
            ])
            .args(extra)
            .env("RUST_LOG", "info,ferrolb_controller=debug");
        let log = cp.dir().join(format!("controller-{identity}.log"));
        Replica {
            process: Supervised::spawn(identity, cmd, &log).unwrap(),
            admin,
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = self.process.pid().unwrap();
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
    }

    /// GETs `path`: `Some((status, body))`, `None` when nothing answers within 2 s.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let exchange = async {
            let mut s = TcpStream::connect(self.admin).await.ok()?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.ok()?;
            let mut raw = String::new();
            s.read_to_string(&mut raw).await.ok()?;
            let status = raw.split(' ').nth(1)?.parse().ok()?;
            let body = raw.split("\r\n\r\n").nth(1)?.trim().to_string();
            Some((status, body))
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()
            .flatten()
    }

    /// Polls `path` until `want(status, body)` holds; returns the body.
    async fn wait(&self, path: &str, what: &str, want: impl Fn(u16, &str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.get(path).await;
            if let Some((status, body)) = &got
                && want(*status, body)
            {
                return body.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what}: last answer to {path}: {got:?}; log {}",
                self.process.name(),
                self.process.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn holder(cp: &TestControlPlane) -> Option<String> {
    Api::<Lease>::namespaced(cp.client(), NS)
        .get_opt("ferrolb-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn leader_and_standby_are_both_ready_and_a_takeover_makes_the_new_leader_ready() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await;
    let kc = cp.kubeconfig_path().to_path_buf();
    let replicas = [
        Replica::start(&cp, "replica-a", &kc, &[]),
        Replica::start(&cp, "replica-b", &kc, &[]),
    ];
    for r in &replicas {
        r.wait("/readyz", "ready", |s, _| s == 200).await;
    }
    let leader_name = holder(&cp).await.expect("someone holds the lease");
    // Each process's identity is its name and a suffix of its own.
    let (leader, standby) = if leader_name.starts_with("replica-a_") {
        (&replicas[0], &replicas[1])
    } else {
        (&replicas[1], &replicas[0])
    };
    assert_eq!(leader.get("/readyz").await.unwrap().1, "ready: leading");
    assert_eq!(
        standby.get("/readyz").await.unwrap().1,
        format!("ready: standing by; {leader_name} leads")
    );

    // A quiet cluster is not a stuck one: longer than the loop bound without a single
    // change, both stay healthy (the leader's controller machinery turns on a heartbeat).
    tokio::time::sleep(Duration::from_secs(6)).await;
    for r in &replicas {
        assert_eq!(r.get("/healthz").await, Some((200, "ok".into())));
    }

    // The leader freezes (as a node under memory pressure might): it neither renews nor
    // releases. The standby takes over once the lease expires, restores, and is ready as
    // the leader.
    leader.signal(Signal::SIGSTOP);
    standby
        .wait("/readyz", "ready as the new leader", |s, b| {
            s == 200 && b == "ready: leading"
        })
        .await;
    let new_holder = holder(&cp).await.unwrap_or_default();
    assert!(
        new_holder.starts_with(&format!("{}_", standby.process.name())),
        "the lease names the new leader, not {new_holder}"
    );

    // Thawed, the old leader finds its leadership ran out and stands by.
    leader.signal(Signal::SIGCONT);
    let body = leader
        .wait("/readyz", "ready as a standby", |s, b| {
            s == 200 && b.starts_with("ready: standing by")
        })
        .await;
    assert_eq!(body, format!("ready: standing by; {new_holder} leads"));
}

/// A ServiceAccount that may read the Lease but never write it: a replica running as it
/// can stand by, but never take over.
async fn read_only_lease_account(cp: &TestControlPlane) -> std::path::PathBuf {
    let client = cp.client();
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "lease-reader"}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "lease-reader"},
                "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client, NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "lease-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "lease-reader", "namespace": NS}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    cp.service_account_kubeconfig(NS, "lease-reader").unwrap()
}

/// Writes the Lease as held by `holder`, renewed now, valid for `seconds`.
async fn hold_lease(cp: &TestControlPlane, holder: &str, seconds: i32) {
    let api: Api<Lease> = Api::namespaced(cp.client(), NS);
    let mut lease: Lease = match api.get_opt("ferrolb-controller").await.unwrap() {
        Some(l) => l,
        None => {
            serde_json::from_value(json!({"metadata": {"name": "ferrolb-controller"}})).unwrap()
        }
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(holder.into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(seconds);
    if lease.metadata.resource_version.is_some() {
        api.replace("ferrolb-controller", &PostParams::default(), &lease)
            .await
            .unwrap();
    } else {
        api.create(&PostParams::default(), &lease).await.unwrap();
    }
}

#[tokio::test]
async fn a_standby_is_not_ready_once_the_holder_stops_renewing_and_nobody_takes_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await;
    hold_lease(&cp, "ghost", 600).await;
    let kc = read_only_lease_account(&cp).await;
    let r = Replica::start(&cp, "replica-a", &kc, &["--gossip-secret="]);
    let body = r
        .wait("/readyz", "ready as a standby", |s, _| s == 200)
        .await;
    assert_eq!(body, "ready: standing by; ghost leads");

    // The ghost renews one last time, for one second, then never again; the replica may
    // not take the lease over (no write access): nobody leads, and the replica says so.
    hold_lease(&cp, "ghost", 1).await;
    let body = r
        .wait("/readyz", "not ready once the lease expired", |s, _| {
            s == 503
        })
        .await;
    assert_eq!(body, "not ready: no replica holds a valid lease");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            r.get("/readyz").await.map(|(s, _)| s),
            Some(503),
            "still nobody leads"
        );
    }
    assert_eq!(holder(&cp).await.as_deref(), Some("ghost"));

    // The holder is back: the replica is a ready standby again.
    hold_lease(&cp, "ghost", 600).await;
    let body = r
        .wait("/readyz", "ready as a standby", |s, _| s == 200)
        .await;
    assert_eq!(body, "ready: standing by; ghost leads");
}

/// A TCP proxy in front of the API server that can cut every connection, as an API server
/// that went away would.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (up, rx) = watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let mut rx = rx.clone();
            if !*rx.borrow_and_update() {
                continue; // dropped: the connection is reset
            }
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = rx.wait_for(|up| !up) => {}
                }
            });
        }
    });
    Proxy { addr, up }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_while_the_api_stays_unreachable_past_the_bound_and_recovers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = control_plane().await;
    let upstream: SocketAddr = cp
        .server()
        .strip_prefix("https://")
        .unwrap()
        .parse()
        .unwrap();
    let proxy = proxy(upstream).await;
    // The same credentials, through the proxy (the serving certificate names 127.0.0.1).
    let text = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
    let kc = cp.dir().join("kubeconfig-proxied");
    std::fs::write(
        &kc,
        text.replace(cp.server(), &format!("https://{}", proxy.addr)),
    )
    .unwrap();
    let r = Replica::start(&cp, "replica-a", &kc, &["--healthz-api-timeout=3"]);
    r.wait("/readyz", "ready as the leader", |s, b| {
        s == 200 && b == "ready: leading"
    })
    .await;
    assert_eq!(r.get("/healthz").await, Some((200, "ok".into())));

    proxy.up.send_replace(false);
    let body = r
        .wait("/healthz", "unhealthy while the API is gone", |s, _| {
            s == 503
        })
        .await;
    // Every line names a component that calls the API: the lease rounds, or one of the
    // watches that keep the caches (on every replica, leader or not).
    for line in body.lines() {
        assert!(
            line.starts_with("stuck: leader election: failing for")
                || (line.starts_with("stuck: ") && line.contains(" watch: failing for")),
            "names what is stuck: {body}"
        );
    }
    r.wait(
        "/healthz",
        "the lease rounds named once their errors outlast the bound",
        |s, b| s == 503 && b.contains("stuck: leader election: failing for"),
    )
    .await;
    assert_eq!(
        r.get("/readyz").await.map(|(s, _)| s),
        Some(503),
        "no valid lease without the API"
    );

    proxy.up.send_replace(true);
    r.wait("/healthz", "healthy again", |s, _| s == 200).await;
    r.wait("/readyz", "leading again", |s, b| {
        s == 200 && b == "ready: leading"
    })
    .await;
}
