//! The gossip keys: read from the Secret at start-up, and followed while the speaker runs
//! so that a rotation needs no restart (see `membership::keys`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use crate::membership::Keyring;

/// How often the gossip Secret is read again for rotated keys.
const KEY_POLL: Duration = Duration::from_secs(10);
/// Reads caused by datagrams no known key opens come at most this often.
const KEY_REREAD_MIN_GAP: Duration = Duration::from_secs(2);

/// The keys in the gossip Secret.
pub(super) async fn read_keys(api: Api<Secret>, name: String) -> Result<Keyring, Error> {
    let s = api.get(&name).await.map_err(|source| Error::ReadSecret {
        secret: name.clone(),
        source,
    })?;
    let data = s.data.unwrap_or_default();
    Keyring::from_secret_data(data.iter().map(|(k, v)| (k.as_str(), v.0.as_slice()))).map_err(
        |source| Error::SecretKeys {
            secret: name,
            source,
        },
    )
}

/// Keeps `keys` equal to the gossip Secret's keys: reads it every [`KEY_POLL`], and at once
/// when a datagram arrives that no known key opens (a peer already seals with a key this
/// speaker has not read). A Secret that cannot be read, is gone or holds no valid key
/// changes nothing: the keys in use stay (see `membership::keys`).
pub(super) async fn follow_keys(
    api: Api<Secret>,
    name: String,
    keys: watch::Sender<Keyring>,
    unknown_key: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut last_problem: Option<String> = None;
    let mut last_read = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEY_POLL, KEY_POLL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = unknown_key.notified() => {
                let wait = KEY_REREAD_MIN_GAP.saturating_sub(last_read.elapsed());
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        last_read = Instant::now();
        match read_keys(api.clone(), name.clone()).await {
            Ok(ring) => {
                if crate::publish(&keys, ring) {
                    info!(secret = %name, "read new gossip keys");
                }
                if last_problem.take().is_some() {
                    info!(secret = %name, "the gossip Secret is readable again");
                }
            }
            Err(e) => {
                let problem = e.chain();
                if last_problem.as_ref() != Some(&problem) {
                    warn!(error = %problem, "keeping the gossip keys in use");
                }
                last_problem = Some(problem);
            }
        }
    }
}
