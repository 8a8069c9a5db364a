//! What every ferrolb process does around its own logic, written once for the controller
//! and the speaker: logging set-up ([`logging`]), the Kubernetes client ([`client`]),
//! SIGTERM handling ([`signals`]) and the admin server for `/healthz`, `/readyz` and
//! `/metrics` ([`admin`]).
//!
//! This is the one part of the crate that does I/O. It decides nothing about either
//! binary's work: what readiness means, which metrics exist and what is stuck are each
//! binary's own, handed in through [`admin::Endpoints`] and [`crate::health::Health`].

pub mod admin;
pub mod client;
pub mod logging;
pub mod signals;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the process plumbing, each naming what the user can fix.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot read kubeconfig {path}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path} is not usable")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found (no --kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster service account)"
    )]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("admin server: cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin server: cannot read the address it listens on")]
    LocalAddr(#[source] std::io::Error),
}
