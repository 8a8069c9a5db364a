//! What the controller's benchmarks against a real API server share: their flags, the
//! control plane with one pool and a `bench` namespace, controller processes, and the
//! Service they create.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // shared by several examples

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::process::{Supervised, free_port};
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

/// The command line: `--flag value` pairs.
pub struct Flags(Vec<String>);

impl Flags {
    pub fn from_env() -> Flags {
        Flags(std::env::args().collect())
    }

    pub fn get(&self, flag: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }

    pub fn number(&self, flag: &str, default: usize) -> usize {
        self.get(flag)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// `--controller`, by default the release build; it must exist.
    pub fn controller(&self) -> PathBuf {
        let bin = PathBuf::from(
            self.get("--controller")
                .unwrap_or_else(|| "target/release/ferrolb-controller".into()),
        );
        assert!(
            bin.exists(),
            "{} not built; run `cargo build --release -p ferrolb-controller`",
            bin.display()
        );
        bin
    }
}

/// A control plane with the `ferrolb-system` and `bench` namespaces and one IPPool `bench`
/// of `addresses`.
pub async fn control_plane(addresses: &[&str]) -> TestControlPlane {
    let cp = TestControlPlane::start().await.unwrap();
    cp.kubectl(&["create", "namespace", "ferrolb-system"])
        .unwrap();
    cp.kubectl(&["create", "namespace", "bench"]).unwrap();
    let pool = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "bench"},
        "spec": {"addresses": addresses}});
    let pool_file = cp.dir().join("pool.json");
    std::fs::write(&pool_file, pool.to_string()).unwrap();
    cp.kubectl(&["apply", "-f", pool_file.to_str().unwrap()])
        .unwrap();
    cp
}

/// A controller process with the default lease timings, its admin server on `admin`
/// (a free port when `None`), logging to `<identity>.log` in the control plane's directory.
pub fn controller(
    cp: &TestControlPlane,
    bin: &Path,
    identity: &str,
    admin: Option<std::net::SocketAddr>,
) -> Supervised {
    let admin = admin.unwrap_or_else(|| ([127, 0, 0, 1], free_port().unwrap()).into());
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
        .arg(format!("--admin-address={admin}"))
        .arg(format!("--identity={identity}"))
        .env("RUST_LOG", "info");
    Supervised::spawn(identity, cmd, &cp.dir().join(format!("{identity}.log"))).unwrap()
}

/// A LoadBalancer Service in `bench`; without NodePorts, thousands fit (the NodePort range
/// holds 2,768).
pub fn service(name: &str, node_ports: bool) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": name},
            "allocateLoadBalancerNodePorts": node_ports}
    }))
    .unwrap()
}

/// Creates `bench/<prefix>-00000` .. `<prefix>-<n-1>` (64 requests in flight).
pub async fn create_services(api: &kube::Api<Service>, prefix: &str, n: usize, node_ports: bool) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| async move {
            api.create(
                &kube::api::PostParams::default(),
                &service(&format!("{prefix}-{i:05}"), node_ports),
            )
            .await
            .unwrap();
        })
        .await;
}

pub fn ips(s: &Service) -> Vec<String> {
    ferrolb_controller::service::status_ips(s)
        .iter()
        .map(ToString::to_string)
        .collect()
}
