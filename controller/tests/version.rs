//! `ferrolb-controller --version` names the crate version and the git commit it was built from,
//! so a user can tell which build runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;

#[test]
fn version_names_the_git_commit_of_the_build() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs");
    assert!(head.status.success(), "this test runs in the git checkout");
    let head = String::from_utf8(head.stdout).unwrap().trim().to_string();

    let out = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let clean = format!(
        "ferrolb-controller {} (git {head})\n",
        env!("CARGO_PKG_VERSION")
    );
    let dirty = format!(
        "ferrolb-controller {} (git {head}-dirty)\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        printed == clean || printed == dirty,
        "--version printed {printed:?}, expected {clean:?} (or with -dirty)"
    );
}
