//! ferrolb's speaker: elects one node per IP and answers ARP/NDP for it.
//!
//! - [`election`]: which node announces each IP (pure: rendezvous hashing over eligible
//!   nodes);
//! - [`interfaces`]: the node's interfaces (rescanned), for the election and the responders;
//! - [`inputs`]: Nodes, Services and EndpointSlices turned into the election's inputs;
//! - [`view`]: those inputs kept current per watch event, only the changed objects read;
//! - [`membership`]: which speakers are alive (SWIM gossip, authenticated);
//! - [`wire`]: Ethernet, ARP and NDP codecs (pure, golden-byte tested, fuzzed).
//!
//! - [`responder`]: the ARP and NDP responders on `AF_PACKET` sockets that the kernel feeds
//!   only ARP, or only Neighbor Solicitations (a BPF filter); the crate's one unsafe module
//!   is `responder::sys`.
//!
//! - [`forwarding`]: NodePort forwarding for `ipMode: Proxy` IPs (nftables; the plan and
//!   its text pure, `nft` run by `forwarding::kernel`);
//! - [`announcer`]: this node's share of the election turned into running responders;
//! - [`status`]: the `ferrolb.io/Announced` condition and who writes it (pure);
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`app`]: the `ferrolb-speaker` process that ties them together, as named tasks;
//! - [`error`]: the process's one error type.

pub mod admin;
pub mod agreement;
pub mod announcer;
pub mod app;
pub mod election;
pub mod error;
pub mod forwarding;
pub mod inputs;
pub mod interfaces;
pub mod membership;
pub mod responder;
pub mod status;
pub mod view;
pub mod wire;

pub use error::Error;

/// The git commit this binary was built from: 12 hex digits, `-dirty` when tracked files
/// differed from it, or `unknown` (see `build/git_commit.rs`).
pub const GIT_COMMIT: &str = env!("FERROLB_BUILD_COMMIT");

/// What `--version` prints after the name, e.g. `0.1.0 (git 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("FERROLB_BUILD_COMMIT"),
    ")"
);

/// Replaces the value in `tx` with `value` when they differ, waking receivers only then;
/// returns whether it changed.
pub(crate) fn publish<T: PartialEq>(tx: &tokio::sync::watch::Sender<T>, value: T) -> bool {
    tx.send_if_modified(|cur| {
        let changed = *cur != value;
        if changed {
            *cur = value;
        }
        changed
    })
}
