//! What the controller and the speaker keep of the objects they cache.

use kube::Resource;

/// kubectl's copy of the last applied object, kept in an annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what neither the controller nor the speaker reads but every cached object would
/// carry: the field managers (often the largest part of a Service or an EndpointSlice) and
/// kubectl's copy of the last applied object. Writes go by server-side apply and never
/// need them.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
    use std::collections::BTreeMap;

    #[test]
    fn slim_drops_field_managers_and_the_last_applied_copy_only() {
        let meta = ObjectMeta {
            name: Some("web".into()),
            annotations: Some(BTreeMap::from([
                (LAST_APPLIED.to_string(), "{\"big\":true}".to_string()),
                ("ferrolb.io/ip-pool".to_string(), "lab".to_string()),
            ])),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let mut svc = Service {
            metadata: meta,
            ..Default::default()
        };
        slim(&mut svc);
        let meta = svc.metadata;
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            meta.annotations,
            Some(BTreeMap::from([(
                "ferrolb.io/ip-pool".to_string(),
                "lab".to_string()
            )]))
        );
        assert_eq!(meta.name.as_deref(), Some("web"));
    }
}
