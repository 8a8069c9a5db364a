//! A test's handle on a running lab: a Kubernetes client, commands in the lab's namespaces,
//! fault injection, and a fresh Kubernetes namespace per test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use nix::sys::signal::Signal;
use serde_json::json;

use super::cli::NodeAction;
use super::cluster::{self, Files};
use super::topology::LabPlan;
use crate::{Error, Result, io_err};

pub use crate::objects::{TestNamespace, announced_owners};

/// A lab that `ferrolb-lab up` started.
pub struct Lab {
    pub plan: LabPlan,
    client: kube::Client,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("state", &self.plan.state_dir)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Connects to the lab in the default state directory (or `FERROLB_LAB_DIR`).
    pub async fn connect() -> Result<Lab> {
        Self::connect_at(&cluster::default_state_dir()).await
    }

    pub async fn connect_at(state: &Path) -> Result<Lab> {
        let plan = cluster::load_plan(state)?;
        let kc = Files::admin_kubeconfig(state);
        let text = std::fs::read_to_string(&kc).map_err(io_err(&kc))?;
        let client = crate::control_plane::client_from_kubeconfig(&text).await?;
        Ok(Lab { plan, client })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        Files::admin_kubeconfig(&self.plan.state_dir)
    }

    /// Runs a program in `client`, `cp` or a node's namespace; its stdout, or an error.
    pub fn exec(&self, target: &str, program: &str, args: &[&str]) -> Result<String> {
        cluster::exec(&self.plan, target, program, args)
    }

    /// Runs a program in a pod's network namespace.
    pub fn exec_in_pod(&self, pod: &Pod, program: &str, args: &[&str]) -> Result<String> {
        let uid = pod
            .metadata
            .uid
            .as_deref()
            .ok_or_else(|| Error::Lab("pod has no uid".into()))?;
        super::netns::exec_in(
            &super::agent::pod_netns(&super::agent::short_id(uid)),
            program,
            args,
        )
    }

    /// `curl` from a namespace; `None` when the connection fails or times out.
    pub fn curl(&self, target: &str, url: &str) -> Option<String> {
        self.exec(target, "curl", &["-sS", "--max-time", "3", "-g", url])
            .ok()
    }

    pub fn node(&self, name: &str, action: NodeAction) -> Result<()> {
        super::cli::node_action(&self.plan, name, action)
    }

    /// Restarts `node`'s speaker as `ferrolb-lab restart speaker NODE` does (SIGTERM, wait
    /// for it to exit, start it again, wait until it answers `/readyz`); returns the new PID.
    pub fn restart_speaker(&self, node: &str) -> Result<u32> {
        super::cli::restart_speaker(&self.plan, node).map(|r| r.pid)
    }

    /// PID of `node`'s speaker while it runs.
    pub fn speaker_pid(&self, node: &str) -> Option<u32> {
        self.speaker_record(node)
            .filter(super::procs::ProcRecord::alive)
            .map(|r| r.pid)
    }

    /// Sends `signal` to `node`'s speaker and nothing else. SIGTERM and SIGKILL wait until it
    /// has exited (SIGTERM turns into SIGKILL after 10 s); any other signal (SIGSTOP, to
    /// freeze it) is only sent. The process record stays, so [`Lab::restart_speaker`] or
    /// `node NAME start` brings the speaker back.
    pub fn kill_speaker(&self, node: &str, signal: Signal) -> Result<()> {
        let r = self
            .speaker_record(node)
            .filter(super::procs::ProcRecord::alive)
            .ok_or_else(|| Error::Lab(format!("the speaker of {node} is not running")))?;
        match signal {
            Signal::SIGTERM | Signal::SIGKILL => super::procs::terminate(
                r.pid,
                Some(r.start_time),
                signal == Signal::SIGKILL,
                Duration::from_secs(10),
            ),
            other => {
                let pid = i32::try_from(r.pid).map_err(|e| Error::Lab(e.to_string()))?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), other)
                    .map_err(|e| Error::Lab(format!("{other} to {}: {e}", r.name)))?;
            }
        }
        Ok(())
    }

    /// The lab's node names, in order.
    pub fn node_names(&self) -> Vec<String> {
        self.plan.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The `/metrics` text of `node`'s speaker, read with curl from the node's namespace;
    /// `None` when it does not answer.
    pub fn speaker_metrics(&self, node: &str) -> Option<String> {
        let n = self.plan.node(node)?;
        let url = format!("http://{}/metrics", cluster::speaker_admin_address(n).ok()?);
        self.exec(node, "curl", &["-sS", "--max-time", "2", "-g", &url])
            .ok()
    }

    /// One series of `node`'s speaker metrics, e.g.
    /// `ferrolb_gossip_members{state="alive"}`: 0 when the speaker answers without it (a
    /// per-interface series appears once the interface is used), `None` when it does not
    /// answer.
    pub fn speaker_metric(&self, node: &str, series: &str) -> Option<u64> {
        crate::cluster::metric(&self.speaker_metrics(node)?, series)
    }

    /// Waits until every node's speaker sees all the others alive in gossip.
    pub async fn wait_speakers_converged(&self, limit: Duration) -> Result<()> {
        const ALIVE: &str = "ferrolb_gossip_members{state=\"alive\"}";
        let nodes = self.node_names();
        let peers = nodes.len().saturating_sub(1) as u64;
        let deadline = Instant::now() + limit;
        loop {
            let seen: Vec<Option<u64>> = nodes
                .iter()
                .map(|n| self.speaker_metric(n, ALIVE))
                .collect();
            if seen.iter().all(|s| *s == Some(peers)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Lab(format!(
                    "speakers not converged after {limit:?}: alive peers per node {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Service's `ferrolb.io/Announced` condition, if it has one.
    pub async fn announced(&self, ns: &str, name: &str) -> Option<Condition> {
        crate::objects::announced(&self.client, ns, name).await
    }

    /// The process record of `node`'s speaker (its PID, command line and log).
    pub fn speaker_record(&self, node: &str) -> Option<super::procs::ProcRecord> {
        let n = self.plan.node(node)?;
        super::procs::record(&self.plan.state_dir, &cluster::speaker_record_name(&n.name))
    }

    /// A new Kubernetes namespace, deleted when the value is dropped.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        crate::objects::namespace(&self.client, prefix).await
    }

    /// Creates an echo pod on `node` and waits until it is Running and Ready.
    pub async fn echo_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: serde_json::Value,
    ) -> Result<Pod> {
        let spec = json!({"nodeName": node, "containers": [{"name": "echo", "image": "ferrolb.io/lab-echo",
            "ports": [{"containerPort": 8080}]}]});
        crate::objects::create_pod(&self.client, ns, name, labels, spec).await
    }

    pub async fn wait_pod_ready(&self, ns: &str, name: &str, ready: bool) -> Result<Pod> {
        crate::objects::wait_pod_ready(&self.client, ns, name, ready).await
    }

    /// Flips a pod's readiness through the lab agent.
    pub async fn set_ready(&self, ns: &str, name: &str, ready: bool) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let patch =
            json!({"metadata": {"annotations": {"lab.ferrolb.io/ready": ready.to_string()}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.wait_pod_ready(ns, name, ready).await.map(|_| ())
    }

    /// Creates (applies) a Service from a spec.
    pub async fn service(&self, ns: &str, name: &str, spec: serde_json::Value) -> Result<Service> {
        crate::objects::service(&self.client, ns, name, spec).await
    }

    /// Waits until the Service's EndpointSlices list exactly `ready` ready addresses.
    pub async fn wait_endpoints(&self, ns: &str, svc: &str, ready: usize) -> Result<()> {
        crate::objects::wait_endpoints(&self.client, ns, svc, ready).await
    }
}
