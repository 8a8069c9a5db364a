// Included by the build script of every crate of ours (`build.rs`, directly or through
// git_commit.rs). `make` compiles into one build directory per machine, shared by every
// checkout (the Makefile's CARGO_BUILD_BUILD_DIR), and cargo names a workspace crate's
// artifacts by its path inside the workspace, not by the checkout's: two checkouts would
// share them, and one whose sources are older than the other's artifacts would take those
// as up to date (its binaries running the other checkout's code). The Makefile exports
// FERROLB_CHECKOUT, the checkout's own path; a change of it reruns this script, and so
// recompiles the crate, whenever the build switches to another checkout.
fn track_checkout() {
    println!("cargo::rerun-if-env-changed=FERROLB_CHECKOUT");
}
