//! `ferrolb-lab up` recovers from what a crashed lab left behind, and `down` twice in a row
//! succeeds and leaves no namespace, link, mount or process. Brings its own one-node lab up
//! (in its own state directory), so it must not run while another lab test runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;

use ferrolb_e2e::lab::{cluster, netns, procs};

fn lab(state: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolb-lab"))
        .arg(format!("--state-dir={}", state.display()))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn up_recovers_from_leftovers_and_down_twice_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("lab");
    // What a crashed `up` could leave: a node namespace and the host link.
    // (They may already exist if an earlier run of this test failed half-way.)
    if !netns::list_ns().unwrap().contains(&"flb-node9".to_string()) {
        netns::add_ns("flb-node9").unwrap();
    }
    if netns::ip(&["link", "show", "flb-host"]).is_err() {
        netns::ip(&[
            "link",
            "add",
            "flb-host",
            "type",
            "veth",
            "peer",
            "name",
            "flb-host-peer",
        ])
        .unwrap();
    }

    let (ok, out) = lab(&state, &["up", "--nodes", "1"]);
    assert!(ok, "up failed:\n{out}");
    assert!(
        !netns::list_ns().unwrap().contains(&"flb-node9".to_string()),
        "leftover namespace survived up"
    );
    let pids: Vec<procs::ProcRecord> = procs::records(&state);
    assert!(pids.len() >= 5, "{pids:?}");
    assert!(pids.iter().all(procs::ProcRecord::alive));

    for round in 0..2 {
        let (ok, out) = lab(&state, &["down"]);
        assert!(ok, "down #{round} failed:\n{out}");
    }
    assert!(
        cluster::leftovers().unwrap().is_empty(),
        "{:?}",
        cluster::leftovers()
    );
    assert!(
        pids.iter().all(|p| !p.alive()),
        "a lab process survived down"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("/run/netns/flb-"),
        "a namespace mount survived down"
    );
    assert!(!state.exists());
}
