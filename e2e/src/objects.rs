//! Kubernetes objects the end-to-end tests make and wait for, on any cluster: a namespace
//! per test, pods, Services, EndpointSlices, the `ferrolb.io/Announced` condition. Only
//! the API is used here; what differs between clusters lives in [`crate::cluster`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{Error, Result};

/// A new Kubernetes namespace, deleted when the value is dropped.
pub async fn namespace(client: &kube::Client, prefix: &str) -> Result<TestNamespace> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"generateName": format!("{prefix}-")}}))
            .map_err(|e| Error::Lab(e.to_string()))?;
    let created = api.create(&PostParams::default(), &ns).await?;
    let name = created.metadata.name.unwrap_or_default();
    // The ServiceAccount admission plugin needs the default ServiceAccount first.
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sa.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            return Err(Error::Lab(format!("no default ServiceAccount in {name}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(TestNamespace {
        name,
        client: client.clone(),
    })
}

/// Creates a pod from `spec` and waits until it is Running and Ready.
pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    spec: serde_json::Value,
) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .map_err(|e| Error::Lab(e.to_string()))?;
    api.create(&PostParams::default(), &pod).await?;
    wait_pod_ready(client, ns, name, true).await
}

/// Waits until the pod's Ready condition is `ready` and it has an IP.
pub async fn wait_pod_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ready: bool,
) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = api.get(name).await?;
        let is_ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if is_ready == ready && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some() {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(Error::Lab(format!(
                "pod {ns}/{name} not ready={ready} after 90 s: {:?}",
                p.status
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates (applies) a Service from a spec.
pub async fn service(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<Service> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let obj = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec});
    Ok(api
        .patch(
            name,
            &PatchParams::apply("e2e-test").force(),
            &Patch::Apply(&obj),
        )
        .await?)
}

/// Waits until the Service's EndpointSlices list exactly `ready` ready addresses.
pub async fn wait_endpoints(
    client: &kube::Client,
    ns: &str,
    svc: &str,
    ready: usize,
) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n: usize = api
            .list(&lp)
            .await?
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .count();
        if n == ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Lab(format!(
                "{ns}/{svc}: {n} ready endpoints, wanted {ready}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Service's `ferrolb.io/Announced` condition, if it has one.
pub async fn announced(client: &kube::Client, ns: &str, name: &str) -> Option<Condition> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = api.get(name).await.ok()?;
    ferrolb_crds::service::condition(&svc, ferrolb_crds::names::CONDITION_ANNOUNCED).cloned()
}

/// The IPs in the Service's `status.loadBalancer.ingress`.
pub async fn ingress_ips(client: &kube::Client, ns: &str, name: &str) -> Vec<IpAddr> {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    match api.get(name).await {
        Ok(svc) => ferrolb_crds::service::status_ips(&svc),
        Err(_) => vec![],
    }
}

/// The owner of each IP named in a True `ferrolb.io/Announced` message
/// (`announced: IP from node NODE on IFACE; ...`).
pub fn announced_owners(message: &str) -> BTreeMap<IpAddr, String> {
    message
        .trim_start_matches("announced: ")
        .split("; ")
        .filter_map(|part| {
            let mut w = part.split_whitespace();
            let ip = w.next()?.parse().ok()?;
            (w.next()? == "from" && w.next()? == "node").then_some(())?;
            Some((ip, w.next()?.to_string()))
        })
        .collect()
}

/// A Kubernetes namespace for one test; deleted (in the background) when dropped.
pub struct TestNamespace {
    pub name: String,
    client: kube::Client,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_from_a_true_announced_message() {
        let got = announced_owners(
            "announced: 10.77.0.200 from node node1 on eth0; fd77::200 from node node2 on eth0",
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[&"10.77.0.200".parse::<IpAddr>().unwrap()], "node1");
        assert_eq!(got[&"fd77::200".parse::<IpAddr>().unwrap()], "node2");
        assert!(announced_owners("10.77.0.200 not announced: no eligible node").is_empty());
    }
}
