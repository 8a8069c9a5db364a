//! A real Kubernetes API for tests: `etcd` and `kube-apiserver` on free loopback ports,
//! with generated certificates and ferrolb's CRDs installed. Dropping the value stops both
//! processes by PID, also when the test panics; the working directory (logs included) is
//! kept when a test panics so the failure can be read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};

use crate::pki::{CertPem, Pki, service_account_key};
use crate::process::{Supervised, free_port, log_tail};
use crate::{Error, Result, bins, io_err};

/// How the control plane is set up.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// `--service-cluster-ip-range`; two CIDRs make Services dual-stack capable.
    pub service_cidrs: String,
    /// Install the CRDs from `deploy/crds/` before returning.
    pub install_crds: bool,
    /// Extra `kube-apiserver` flags.
    pub apiserver_args: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            service_cidrs: "10.96.0.0/16,fd00:10:96::/112".into(),
            install_crds: true,
            apiserver_args: Vec::new(),
        }
    }
}

/// A running `etcd` + `kube-apiserver`.
pub struct TestControlPlane {
    // Field order is drop order: the API server stops before etcd, the directory goes last.
    apiserver: Supervised,
    etcd: Supervised,
    client: kube::Client,
    server: String,
    kubeconfig: PathBuf,
    started_in: Duration,
    dir: Option<tempfile::TempDir>,
}

/// The directory holding ferrolb's committed CRD manifests.
pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

impl std::fmt::Debug for TestControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestControlPlane")
            .field("server", &self.server)
            .field("pids", &self.pids())
            .field("dir", &self.dir())
            .finish_non_exhaustive()
    }
}

impl TestControlPlane {
    /// Starts a control plane with default options.
    pub async fn start() -> Result<TestControlPlane> {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    /// Starts a control plane. A port taken between probing and binding is retried.
    pub async fn start_with(opts: ControlPlaneOptions) -> Result<TestControlPlane> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&opts).await {
                Ok(cp) => return Ok(cp),
                Err(e @ Error::EarlyExit { .. })
                    if e.to_string().contains("address already in use") =>
                {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Kubeconfig("no attempt was made".into())))
    }

    async fn try_start(opts: &ControlPlaneOptions) -> Result<TestControlPlane> {
        let t0 = Instant::now();
        let etcd_bin = bins::binary("etcd")?;
        let apiserver_bin = bins::binary("kube-apiserver")?;
        let dir = tempfile::Builder::new()
            .prefix("ferrolb-cp-")
            .tempdir()
            .map_err(io_err(std::env::temp_dir()))?;
        let d = dir.path();

        let pki = Pki::new("ferrolb-test-ca")?;
        let serving = pki.server(
            "kube-apiserver",
            &[
                "127.0.0.1".into(),
                "localhost".into(),
                "kubernetes".into(),
                "kubernetes.default.svc".into(),
            ],
        )?;
        let admin = pki.client("ferrolb-test-admin", &["system:masters"])?;
        write(d, "ca.crt", pki.ca_pem())?;
        write(d, "apiserver.crt", &serving.cert)?;
        write(d, "apiserver.key", &serving.key)?;
        let sa = service_account_key()?;
        write(d, "sa.key", &sa.key)?;
        write(d, "sa.pub", &sa.cert)?;

        let (etcd_client, etcd_peer, secure) = (free_port()?, free_port()?, free_port()?);

        let mut cmd = Command::new(&etcd_bin);
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cmd.arg("--name=default")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let mut etcd = Supervised::spawn("etcd", cmd, &d.join("etcd.log"))?;

        let mut cmd = Command::new(&apiserver_bin);
        let p = |f: &str| d.join(f).display().to_string();
        cmd.arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={secure}"))
            .arg(format!("--cert-dir={}", p("certs")))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-cluster-ip-range={}", opts.service_cidrs))
            .arg("--authorization-mode=RBAC")
            .arg("--endpoint-reconciler-type=none")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .args(&opts.apiserver_args);
        let mut apiserver = Supervised::spawn("kube-apiserver", cmd, &d.join("apiserver.log"))?;

        let server = format!("https://127.0.0.1:{secure}");
        let kubeconfig_text = kubeconfig_yaml(&server, pki.ca_pem(), "ferrolb-test-admin", &admin);
        let kubeconfig = d.join("kubeconfig");
        write(d, "kubeconfig", &kubeconfig_text)?;
        let client = client_from_kubeconfig(&kubeconfig_text).await?;

        let log = apiserver.log_path().to_path_buf();
        wait_readyz(
            &client,
            Duration::from_secs(120),
            || {
                etcd.early_exit_error()
                    .or_else(|| apiserver.early_exit_error())
            },
            &log,
        )
        .await?;

        let cp = TestControlPlane {
            apiserver,
            etcd,
            client,
            server,
            kubeconfig,
            started_in: t0.elapsed(),
            dir: Some(dir),
        };
        if opts.install_crds {
            cp.install_crds(&crd_dir()).await?;
        }
        Ok(cp)
    }

    /// A client authenticated as a cluster admin.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file for the admin client (for `kubectl` and the binaries under test).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// How long it took from the first process start to a ready API.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// PIDs of the processes this control plane started.
    pub fn pids(&self) -> Vec<u32> {
        [self.etcd.pid(), self.apiserver.pid()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The working directory: certificates, etcd data and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }

    /// Applies every CRD manifest in `dir` and waits until each is established.
    pub async fn install_crds(&self, dir: &Path) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&text).map_err(|e| Error::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply("ferrolb-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await?;
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .map_err(|_| Error::Timeout {
                    what: format!("CRD {name}"),
                    seconds: 30,
                    log: self.apiserver.log_path().display().to_string(),
                })?
                .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        }
        Ok(())
    }

    /// A kubeconfig file that authenticates as a ServiceAccount (with a token from the
    /// TokenRequest API), so a binary under test runs with exactly that account's RBAC.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=24h"])?;
        let ca_path = self.dir().join("ca.crt");
        let ca = std::fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let text = kubeconfig_token_yaml(&self.server, &ca, &user, token.trim());
        let file = format!("kubeconfig-{namespace}-{name}");
        write(self.dir(), &file, &text)?;
        Ok(self.dir().join(file))
    }

    /// Runs the pinned `kubectl` against this control plane and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        bins::kubectl(&self.kubeconfig, args)
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!(
                "test control plane stopped; logs kept in {} (apiserver.log, etcd.log)",
                kept.display()
            );
        }
    }
}

/// Polls `/readyz` until it answers `ok`. `dead` is asked before each try and fails the
/// wait at once when a process the API depends on has exited; `log` names where to look
/// after a timeout.
pub(crate) async fn wait_readyz(
    client: &kube::Client,
    limit: Duration,
    mut dead: impl FnMut() -> Option<Error>,
    log: &Path,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = dead() {
            return Err(e);
        }
        let req = http::Request::get("/readyz").body(Vec::new());
        if let Ok(req) = req
            && let Ok(body) = client.request_text(req).await
            && body.trim() == "ok"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: "kube-apiserver /readyz".into(),
                seconds: limit.as_secs(),
                log: format!("{}; last lines:\n{}", log.display(), log_tail(log, 10)),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(io_err(&path))
}

/// A kubeconfig with one cluster, one user authenticated by a client certificate.
pub fn kubeconfig_yaml(server: &str, ca_pem: &str, user: &str, cert: &CertPem) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrolb\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: ferrolb\n  context:\n    cluster: ferrolb\n    user: {user}\ncurrent-context: ferrolb\n",
        ca = b64(ca_pem),
        crt = b64(&cert.cert),
        key = b64(&cert.key),
    )
}

/// A kubeconfig with one cluster, one user authenticated by a bearer token.
pub fn kubeconfig_token_yaml(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ferrolb\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: ferrolb\n  context:\n    cluster: ferrolb\n    user: {user}\ncurrent-context: ferrolb\n"
    )
}

/// A client for a kubeconfig given as text.
pub async fn client_from_kubeconfig(text: &str) -> Result<kube::Client> {
    let kc = Kubeconfig::from_yaml(text).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}
