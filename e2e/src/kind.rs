//! A kind cluster made by `make kind`, as the end-to-end suite sees it: its state file
//! (written by `e2e/scripts/kind/up.sh`), commands in its containers (`docker exec`), and
//! the node faults of `e2e/scripts/kind/node.sh`.
//!
//! Nothing here creates or removes the cluster; `make kind` and `make kind-down` do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::{Error, Result, io_err};

/// Where `make kind` keeps the cluster's state unless told otherwise.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("FERROLB_KIND_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/ferrolb-kind"))
}

/// One container of the cluster (a node, the control plane or the client).
#[derive(Clone, Debug, Deserialize)]
pub struct KindMachine {
    #[serde(default)]
    pub name: String,
    pub container: String,
    #[serde(default = "default_iface")]
    pub iface: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
}

fn default_iface() -> String {
    "eth0".into()
}

impl KindMachine {
    /// Its first address on the kind network, IPv4 first.
    pub fn lan_ip(&self) -> Option<IpAddr> {
        self.ipv4.map(IpAddr::V4).or(self.ipv6.map(IpAddr::V6))
    }
}

/// The images `make kind` loaded.
#[derive(Clone, Debug, Deserialize)]
pub struct KindImages {
    pub controller: String,
    pub speaker: String,
    pub echo: String,
}

/// `cluster.json`: what `make kind` made.
#[derive(Clone, Debug, Deserialize)]
pub struct KindState {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub ip_family: String,
    pub proxy_mode: String,
    pub network: String,
    pub control_plane: KindMachine,
    /// The worker nodes: the ones that may announce.
    pub nodes: Vec<KindMachine>,
    pub client: KindMachine,
    pub pool: Vec<String>,
    pub images: KindImages,
    pub release: String,
    pub namespace: String,
}

impl KindState {
    pub fn load(dir: &Path) -> Result<KindState> {
        let path = dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::Lab(format!(
                "no kind cluster is up (no {}); run `make kind`",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn node(&self, name: &str) -> Option<&KindMachine> {
        self.nodes
            .iter()
            .chain(std::iter::once(&self.control_plane))
            .find(|n| n.name == name)
    }

    /// The container behind a name the suite uses: `client`, a node name, `control-plane`.
    pub fn container(&self, target: &str) -> Result<&str> {
        match target {
            "client" => Ok(&self.client.container),
            "cp" | "control-plane" => Ok(&self.control_plane.container),
            other => self
                .node(other)
                .map(|n| n.container.as_str())
                .ok_or_else(|| Error::Lab(format!("no kind node {other:?}"))),
        }
    }
}

/// `docker exec CONTAINER PROGRAM` as a command to be completed and run.
pub fn docker_exec(container: &str, program: &str) -> Command {
    let mut c = Command::new("docker");
    c.args(["exec", container, program]);
    c
}

/// Runs a program in a container; its stdout, or an error with its stderr.
pub fn exec(container: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["exec", container, program];
    v.extend_from_slice(args);
    crate::lab::netns::run("docker", &v)
}

/// `e2e/scripts/kind/node.sh NODE ACTION`: cut, heal, stop or start a node.
pub fn node_script(node: &str, action: &str) -> Result<()> {
    let script = crate::lab::cluster::repo_root().join("e2e/scripts/kind/node.sh");
    let script = script.display().to_string();
    crate::lab::netns::run("bash", &[&script, node, action]).map(|_| ())
}

/// Reads a file the state directory names (the kubeconfig).
pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_of_the_contract_parses() {
        let text = r#"{
          "name": "ferrolb", "kubeconfig": "/run/ferrolb-kind/kubeconfig",
          "ip_family": "dual", "proxy_mode": "iptables", "network": "kind",
          "node_image": "ferrolb.io/kind-node:v1.36.3", "engine_started_by_us": true,
          "control_plane": {"name": "ferrolb-control-plane", "container": "ferrolb-control-plane", "ipv4": "172.18.0.2", "ipv6": "fc00:f853:ccd:e793::2"},
          "nodes": [{"name": "ferrolb-worker", "container": "ferrolb-worker", "iface": "eth0",
                     "ipv4": "172.18.0.3", "ipv6": null, "mac": "02:42:ac:12:00:03",
                     "pod_cidrs": ["10.244.1.0/24"]}],
          "client": {"container": "ferrolb-kind-client", "iface": "eth0", "ipv4": "172.18.0.9", "ipv6": "fc00:f853:ccd:e793::9"},
          "pool": ["172.18.255.200-172.18.255.250"],
          "images": {"controller": "c", "speaker": "s", "echo": "e"},
          "release": "ferrolb", "namespace": "ferrolb-system"
        }"#;
        let s: KindState = serde_json::from_str(text).unwrap();
        assert_eq!(s.nodes[0].lan_ip(), Some("172.18.0.3".parse().unwrap()));
        assert_eq!(s.container("client").unwrap(), "ferrolb-kind-client");
        assert_eq!(s.container("ferrolb-worker").unwrap(), "ferrolb-worker");
        assert_eq!(
            s.container("control-plane").unwrap(),
            "ferrolb-control-plane"
        );
        assert!(s.container("node9").is_err());
        assert_eq!(
            s.client.ipv6,
            Some("fc00:f853:ccd:e793::9".parse().unwrap())
        );
    }
}
