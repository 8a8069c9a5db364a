//! The speakers' gossip key: the Secret `ferrolb-gossip` (data key `key`, 32 random bytes)
//! that authenticates their memberlist traffic. Nothing secret is committed to `deploy/`, so
//! the controller creates it when it is absent.
//!
//! This module owns creating that one Secret and nothing else: it never updates, deletes or
//! reads back an existing Secret, whatever it holds (an operator may have put their own key
//! there). Every replica runs it, leader or not; the API server settles the race, and
//! AlreadyExists (409) counts as success.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use rand::TryRng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// Length of the gossip key, in bytes.
pub const KEY_LEN: usize = 32;
/// The Secret's data key that holds the gossip key.
pub const DATA_KEY: &str = ferrolb_crds::names::GOSSIP_SECRET_KEY;

/// What [`ensure`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The Secret was there already; left untouched.
    Exists,
    /// This replica created it.
    Created,
    /// Another replica created it between our read and our create.
    CreatedByAnother,
}

/// The Secret to create, holding `key`, owned by `owner` when given (so that deleting the
/// installation deletes it).
pub fn new_secret(
    namespace: &str,
    name: &str,
    key: [u8; KEY_LEN],
    owner: Option<&OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            owner_references: owner.map(|o| vec![o.clone()]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "ferrolb".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            DATA_KEY.to_string(),
            ByteString(key.to_vec()),
        )])),
        ..Secret::default()
    }
}

/// Creates the Secret `namespace/name` with a fresh key unless it exists. One attempt.
pub async fn ensure(
    client: kube::Client,
    namespace: &str,
    name: &str,
    owner: Option<&OwnerReference>,
) -> Result<Outcome, Error> {
    let secret_ref = format!("{namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let existing = api.get_opt(name).await.map_err(|source| Error::SecretApi {
        secret: secret_ref.clone(),
        action: "get",
        source,
    })?;
    if existing.is_some() {
        return Ok(Outcome::Exists);
    }
    let mut key = [0u8; KEY_LEN];
    rand::rngs::SysRng
        .try_fill_bytes(&mut key)
        .map_err(|source| Error::Random {
            secret: secret_ref.clone(),
            source,
        })?;
    match api
        .create(
            &PostParams::default(),
            &new_secret(namespace, name, key, owner),
        )
        .await
    {
        Ok(_) => Ok(Outcome::Created),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Outcome::CreatedByAnother),
        Err(source) => Err(Error::SecretApi {
            secret: secret_ref,
            action: "create",
            source,
        }),
    }
}

/// Delay before retry number `attempt` (0-based): 1 s doubling up to a minute.
pub fn backoff(attempt: u32) -> Duration {
    ferrolb_crds::process::retry_delay(attempt, Duration::from_secs(1), Duration::from_secs(60))
}

/// Ensures the Secret, retrying with backoff until it exists or `cancel` fires. Meant to be
/// spawned: the rest of the controller does not wait for it.
pub async fn run(
    client: kube::Client,
    namespace: String,
    name: String,
    owner: Option<OwnerReference>,
    cancel: CancellationToken,
) {
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = ensure(client.clone(), &namespace, &name, owner.as_ref()) => r,
        };
        match result {
            Ok(Outcome::Created) => {
                info!(secret = %format!("{namespace}/{name}"), "created the speakers' gossip Secret with a new random key");
                return;
            }
            Ok(outcome) => {
                debug!(secret = %format!("{namespace}/{name}"), ?outcome, "gossip Secret present");
                return;
            }
            Err(e) => {
                let wait = backoff(attempt);
                warn!(error = %e, retry_in = ?wait, "cannot ensure the gossip Secret");
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_holds_the_key_and_says_whose_it_is() {
        let owner = crate::owner::to_service_account("ferrolb-controller", "u-1");
        let s = new_secret(
            "ferrolb-system",
            "ferrolb-gossip",
            [7; KEY_LEN],
            Some(&owner),
        );
        assert_eq!(s.metadata.owner_references, Some(vec![owner]));
        assert_eq!(s.metadata.name.as_deref(), Some("ferrolb-gossip"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("ferrolb-system"));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            s.metadata.labels.unwrap()["app.kubernetes.io/part-of"],
            "ferrolb"
        );
        let data = s.data.unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[DATA_KEY].0, vec![7; KEY_LEN]);
    }

    #[test]
    fn backoff_doubles_and_caps_at_a_minute() {
        let got: Vec<u64> = (0..9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(60));
    }
}
