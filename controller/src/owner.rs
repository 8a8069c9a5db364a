//! The owner of the objects the controller creates at run time (the speakers' gossip
//! Secret and the leader Lease): its own ServiceAccount, named by `--owner-service-account`
//! (the manifests pass `spec.serviceAccountName`). With an owner reference to it, deleting
//! the installation (`helm uninstall`, `kubectl delete -k deploy/`) deletes those objects
//! too, through the API server's garbage collector; without one they would be left behind.
//!
//! This module only reads that one ServiceAccount; it never changes it.

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The reference to a ServiceAccount with this `uid`: not a controller reference (the
/// ServiceAccount manages nothing), no deletion blocking.
pub fn to_service_account(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "ServiceAccount".into(),
        name: name.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// Reads `namespace/name` and returns the reference to it. Retries while the API server is
/// out of reach (until `cancel`); gives up with a warning, and no owner, when the account
/// is missing or may not be read (an older RBAC): the controller then works as before and
/// only the clean-up on uninstall is lost.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    cancel: &CancellationToken,
) -> Option<OwnerReference> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let mut attempt = 0u32;
    loop {
        match api.get(name).await {
            Ok(sa) => match sa.metadata.uid {
                Some(uid) => return Some(to_service_account(name, &uid)),
                None => return None,
            },
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404) => {
                warn!(service_account = %format!("{namespace}/{name}"), error = %e.message,
                    "cannot read the owner ServiceAccount; the gossip Secret and the Lease will outlive an uninstall");
                return None;
            }
            Err(e) => {
                if attempt.is_multiple_of(10) {
                    warn!(%e, "reading the owner ServiceAccount; retrying");
                }
                attempt += 1;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_names_the_account_and_controls_nothing() {
        let r = to_service_account("ferrolb-controller", "1234");
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str()),
            ("v1", "ServiceAccount")
        );
        assert_eq!(
            (r.name.as_str(), r.uid.as_str()),
            ("ferrolb-controller", "1234")
        );
        assert_eq!((r.controller, r.block_owner_deletion), (None, None));
    }
}
