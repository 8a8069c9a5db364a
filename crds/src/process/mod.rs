//! What every ferrolb process does around its own logic, written once for the controller
//! and the speaker: logging set-up ([`logging`]), the Kubernetes client ([`client`]),
//! SIGTERM handling ([`signals`]), named tasks under one tracker ([`tasks`]) and the
//! admin server for `/healthz`, `/readyz` and `/metrics` ([`admin`]).
//!
//! This is the one part of the crate that does I/O. It decides nothing about either
//! binary's work: what readiness means, which metrics exist and what is stuck are each
//! binary's own, handed in through [`admin::Endpoints`] and [`crate::health::Health`].

pub mod admin;
pub mod client;
pub mod logging;
pub mod signals;
pub mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Delay before retry number `attempt` (0-based) of something that failed: `first`,
/// doubling each time, never more than `cap`.
pub fn retry_delay(attempt: u32, first: Duration, cap: Duration) -> Duration {
    first
        .checked_mul(1u32 << attempt.min(20))
        .unwrap_or(cap)
        .min(cap)
}

/// `err` and its sources on one line (`a: b: c`), for logs and a binary's last words.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_the_first_and_stop_at_the_cap() {
        let ms =
            |a| retry_delay(a, Duration::from_millis(200), Duration::from_secs(30)).as_millis();
        let got: Vec<u128> = (0..10).map(ms).collect();
        assert_eq!(
            got,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(ms(u32::MAX), 30000);
        let big = retry_delay(
            40,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(60),
        );
        assert_eq!(big, Duration::from_secs(60));
    }
}
