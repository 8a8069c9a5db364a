//! What the controller's tests against a real API server share: a control plane with the
//! `ferrolb-system` namespace, controller processes started from the built binary, and
//! helpers that wait for what users would see (addresses, conditions, events).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // shared by several test crates

use std::process::Command;
use std::time::{Duration, Instant};

use ferrolb_crds::IPPool;
use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::control_plane::ControlPlaneOptions;
use ferrolb_e2e::process::{Supervised, free_port};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The controller binary under test: `$FERROLB_CONTROLLER_BIN` when set (to run a test
/// against another build, say the one before a fix), else the one cargo built.
pub fn controller_binary() -> std::path::PathBuf {
    std::env::var_os("FERROLB_CONTROLLER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_ferrolb-controller").into())
}

pub struct Cluster {
    pub cp: TestControlPlane,
    pub controllers: Vec<Supervised>,
}

impl Cluster {
    pub async fn start(replicas: usize) -> Cluster {
        Self::start_with(replicas, ControlPlaneOptions::default()).await
    }

    /// Like [`Cluster::start`], with other control plane options (extra API server flags).
    pub async fn start_with(replicas: usize, options: ControlPlaneOptions) -> Cluster {
        let cp = TestControlPlane::start_with(options).await.unwrap();
        let ns: Api<Namespace> = Api::all(cp.client());
        ns.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ferrolb-system"}})).unwrap(),
        )
        .await
        .unwrap();
        let mut c = Cluster {
            cp,
            controllers: Vec::new(),
        };
        for i in 0..replicas {
            c.spawn_controller(&format!("replica-{i}"));
        }
        c
    }

    pub fn spawn_controller(&mut self, identity: &str) {
        let kubeconfig = self.cp.kubeconfig_path().to_path_buf();
        self.spawn_controller_with(identity, &kubeconfig);
    }

    pub fn spawn_controller_with(&mut self, identity: &str, kubeconfig: &std::path::Path) {
        self.spawn_controller_args(identity, kubeconfig, &[]);
    }

    pub fn spawn_controller_args(
        &mut self,
        identity: &str,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) {
        let p = self.controller_process(identity, kubeconfig, extra);
        self.controllers.push(p);
    }

    /// A controller process with the tests' short lease timings, logging to
    /// `controller-<identity>.log` in the control plane's directory; not kept in
    /// [`Cluster::controllers`].
    pub fn controller_process(
        &self,
        identity: &str,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> Supervised {
        let mut cmd = Command::new(controller_binary());
        cmd.args(extra);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!(
                "--admin-address=127.0.0.1:{}",
                free_port().unwrap()
            ))
            .arg(format!("--identity={identity}"))
            .args([
                "--lease-duration=3",
                "--renew-deadline=2",
                "--retry-period=0.3",
            ])
            .env("RUST_LOG", "info,ferrolb_controller=debug");
        let log = self.cp.dir().join(format!("controller-{identity}.log"));
        Supervised::spawn(identity, cmd, &log).unwrap()
    }

    pub fn client(&self) -> kube::Client {
        self.cp.client()
    }

    /// Waits until the Secret exists in ferrolb-system.
    pub async fn wait_secret(&self, name: &str) -> Secret {
        let api: Api<Secret> = Api::namespaced(self.client(), "ferrolb-system");
        self.wait_for(&format!("no Secret ferrolb-system/{name}"), || async {
            api.get_opt(name)
                .await
                .unwrap()
                .ok_or_else(|| "absent".to_string())
        })
        .await
    }

    /// Waits until controller `idx`'s log contains one of `texts`; returns the log.
    pub async fn wait_log(&self, idx: usize, texts: &[&str]) -> String {
        let path = self.controllers[idx].log_path().to_path_buf();
        self.wait_for(&format!("none of {texts:?} in {}", path.display()), || {
            let path = path.clone();
            async move {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                if texts.iter().any(|t| log.contains(t)) {
                    Ok(log)
                } else {
                    Err(log)
                }
            }
        })
        .await
    }

    pub async fn pool(&self, name: &str, spec: Value) {
        let api: Api<IPPool> = Api::all(self.client());
        let obj = json!({"apiVersion": "ferrolb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec});
        api.patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    }

    pub async fn delete_pool(&self, name: &str) {
        Api::<IPPool>::all(self.client())
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .unwrap();
    }

    pub async fn service(&self, ns: &str, name: &str, spec: Value, annotations: Value) {
        let api: Api<Service> = Api::namespaced(self.client(), ns);
        let mut full = json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": name}});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        let obj = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": full});
        api.patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    }

    pub async fn namespace(&self, name: &str, labels: Value) {
        let api: Api<Namespace> = Api::all(self.client());
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        api.patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
    }

    pub async fn get(&self, ns: &str, name: &str) -> Service {
        Api::<Service>::namespaced(self.client(), ns)
            .get(name)
            .await
            .unwrap()
    }

    /// Polls `probe` until it returns `Some`, or fails with `what` and the last state.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match probe().await {
                Ok(v) => return v,
                Err(state) if Instant::now() > deadline => {
                    panic!(
                        "{what}; last seen: {state}\nlogs in {}",
                        self.cp.dir().display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until the Service's `IPAllocated` condition has `reason`, and returns its IPs.
    pub async fn wait_reason(&self, ns: &str, name: &str, reason: &str) -> Vec<String> {
        self.wait_for(
            &format!("{ns}/{name}: no condition with reason {reason}"),
            || async {
                let s = self.get(ns, name).await;
                match condition(&s) {
                    Some((_, r, _)) if r == reason => Ok(ips(&s)),
                    _ => Err(format!("{:?}", s.status)),
                }
            },
        )
        .await
    }

    /// Waits until the Service holds exactly `want`.
    pub async fn wait_ips(&self, ns: &str, name: &str, want: &[&str]) {
        self.wait_for(&format!("{ns}/{name}: wanted {want:?}"), || async {
            let s = self.get(ns, name).await;
            if ips(&s) == want {
                Ok(())
            } else {
                Err(format!("{:?}", s.status))
            }
        })
        .await
    }

    /// Waits for an event about `name` with `reason` whose note contains `text`.
    pub async fn wait_event(&self, ns: &str, name: &str, reason: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let evs = self.events(ns, name).await;
            if evs.iter().any(|(r, n)| r == reason && n.contains(text)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/{name}: no {reason} event with {text:?}: {evs:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn events(&self, ns: &str, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.client(), ns);
        let mut evs: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        evs.sort_by_key(|e| e.event_time.clone().map(|t| t.0));
        evs.into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

pub fn ips(s: &Service) -> Vec<String> {
    ferrolb_controller::service::status_ips(s)
        .iter()
        .map(ToString::to_string)
        .collect()
}

pub fn condition(s: &Service) -> Option<(String, String, String)> {
    s.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ferrolb.io/IPAllocated")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The types of the Service's conditions, in order.
pub fn condition_types(s: &Service) -> Vec<String> {
    s.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| cs.iter().map(|c| c.type_.clone()).collect())
        .unwrap_or_default()
}

impl Cluster {
    /// Writes a True condition `type_` on the Service's status as field manager `manager`
    /// would (server-side apply), e.g. a speaker's `ferrolb.io/Announced`.
    pub async fn write_condition(&self, ns: &str, name: &str, manager: &str, type_: &str) {
        let cond = json!({"type": type_, "status": "True", "reason": "Test",
            "message": "written by the test", "lastTransitionTime": "2026-01-01T00:00:00Z"});
        Api::<Service>::namespaced(self.client(), ns)
            .patch_status(
                name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                    "status": {"conditions": [cond]}})),
            )
            .await
            .unwrap();
    }
}

/// How many times controller `log` reconciled `namespace/name` (its debug line "planned").
pub fn reconciles(log: &str, namespace: &str, name: &str) -> usize {
    let span = format!("reconcile{{service={namespace}/{name}}}");
    log.lines()
        .filter(|l| l.contains(&span) && l.contains("planned"))
        .count()
}
