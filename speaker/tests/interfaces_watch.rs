//! The interface watch notices changes from the kernel's netlink notifications, not only
//! from its periodic rescan: in a network namespace of its own (root only), with a rescan
//! period of an hour, a veth interface that appears, comes up and goes away is seen each
//! time within seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use ferrolb_speaker::interfaces::{LocalInterface, watch};
use nix::sched::{CloneFlags, unshare};
use tokio::sync::watch::Receiver;
use tokio_util::sync::CancellationToken;

const NAME: &str = "flbwatch0";
const PEER: &str = "flbwatch1";

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

/// Waits (at most 10 s) until the published interfaces satisfy `want`.
async fn wait_for(
    rx: &mut Receiver<Vec<LocalInterface>>,
    what: &str,
    want: impl Fn(Option<&LocalInterface>) -> bool,
) {
    let check = |v: &Vec<LocalInterface>| want(v.iter().find(|i| i.iface.name == NAME));
    let seen = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(check))
        .await
        .map(|r| r.is_ok());
    assert!(
        seen == Ok(true),
        "{what}: not seen within 10 s: {:?}",
        *rx.borrow()
    );
}

#[test]
fn link_changes_are_seen_without_waiting_for_the_rescan() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root for a network namespace of its own");
        return;
    }
    // Everything below runs on this thread (and threads and processes it starts), which has
    // a network namespace of its own: the host's interfaces are never touched.
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cancel = CancellationToken::new();
            let mut rx = watch(Duration::from_secs(3600), cancel.clone());
            // The first scan runs at once; after it, only notifications can cause another.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(rx.borrow().iter().all(|i| i.iface.name != NAME));

            ip(&["link", "add", NAME, "type", "veth", "peer", "name", PEER]);
            wait_for(&mut rx, "the new link", |i| i.is_some_and(|i| !i.iface.up)).await;
            ip(&["link", "set", PEER, "up"]);
            ip(&["link", "set", NAME, "up"]);
            ip(&["addr", "add", "192.0.2.7/24", "dev", NAME]);
            wait_for(&mut rx, "the link up with its address", |i| {
                i.is_some_and(|i| {
                    i.iface.up
                        && i.iface
                            .subnets
                            .contains(&("192.0.2.7".parse().unwrap(), 24))
                })
            })
            .await;
            ip(&["link", "del", NAME]);
            wait_for(&mut rx, "the link gone", |i| i.is_none()).await;
            cancel.cancel();
        });
    })
    .join()
    .unwrap();
}
