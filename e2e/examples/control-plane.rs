//! Starts a test control plane and keeps it running until Ctrl-C, printing its kubeconfig:
//! handy for trying `kubectl` against ferrolb's CRDs by hand.
//!
//! `cargo run -p ferrolb-e2e --example control-plane`

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cp = ferrolb_e2e::TestControlPlane::start().await?;
    println!(
        "control plane ready in {:.1} s\nexport KUBECONFIG={}",
        cp.started_in().as_secs_f64(),
        cp.kubeconfig_path().display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
