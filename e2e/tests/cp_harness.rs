//! The test control plane itself: it comes up with a usable API and stops every process it
//! started, by PID, when dropped, including when the test that owns it panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use ferrolb_e2e::TestControlPlane;
use ferrolb_e2e::process::pid_alive;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

#[tokio::test]
async fn control_plane_serves_the_api_and_stops_its_processes_on_drop() {
    let cp = TestControlPlane::start().await.unwrap();
    let pids = cp.pids();
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(pids.iter().all(|p| pid_alive(*p)));

    let namespaces: Api<Namespace> = Api::all(cp.client());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");

    // The kubeconfig file works for other tools too.
    let version = cp.kubectl(&["version", "-o", "json"]).unwrap();
    assert!(
        version.contains(ferrolb_e2e::bins::kube_version()),
        "{version}"
    );
    let crds = cp.kubectl(&["get", "crd", "-o", "name"]).unwrap();
    assert!(crds.contains("ippools.ferrolb.io"), "{crds}");

    let dir = cp.dir().to_path_buf();
    drop(cp);
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} still running after drop");
    }
    assert!(
        !dir.exists(),
        "the working directory is removed after a clean drop"
    );
}

#[test]
fn a_panicking_test_still_stops_the_control_plane() {
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cp = rt.block_on(TestControlPlane::start()).unwrap();
        tx.send((cp.pids(), cp.dir().to_path_buf())).unwrap();
        panic!("the test body fails while the control plane runs");
    })
    .join();
    assert!(joined.is_err(), "the thread panicked");
    let (pids, dir) = rx.recv().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} survived the panic");
    }
    // After a panic the logs are kept for reading; clean them up here.
    assert!(dir.join("apiserver.log").exists());
    std::fs::remove_dir_all(dir).unwrap();
}
