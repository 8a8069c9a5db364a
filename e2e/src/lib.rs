//! ferrolb's end-to-end harness: the Kubernetes binaries it runs, a PKI for them, the
//! test control plane (`etcd` + `kube-apiserver` on loopback), the lab cluster, and the
//! cluster providers (lab, kind) the end-to-end suite runs against.
//!
//! Everything here starts real processes and stops exactly those, by PID.

#![forbid(unsafe_code)]

pub mod bins;
pub mod cluster;
pub mod control_plane;
pub mod helm;
pub mod kind;
pub mod lab;
pub mod objects;
pub mod pki;
pub mod probe;
pub mod process;

pub use control_plane::{ControlPlaneOptions, TestControlPlane};

/// Errors of the harness, phrased so the person running the tests knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Kubernetes binary {name} not found in {dir}; run `make kube-bins` (e2e/scripts/build-kube.sh) to build them"
    )]
    MissingBinary { name: String, dir: String },
    #[error("{name} not found in {dir}; build it with `make lab-bins`")]
    MissingOwnBinary { name: String, dir: String },
    #[error(
        "helm not found at {path}; run `bash e2e/scripts/build-helm.sh` to build the pinned version (or set HELM to a helm binary)"
    )]
    MissingHelm { path: String },
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    EarlyExit {
        name: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{what} was not ready after {seconds} s; see {log}")]
    Timeout {
        what: String,
        seconds: u64,
        log: String,
    },
    #[error("certificate generation failed: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot parse {path}: {message}")]
    Parse { path: String, message: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("lab: {0}")]
    Lab(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl AsRef<std::path::Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().display().to_string();
    move |source| Error::Io { path, source }
}
