//! ferrolb's controller: allocates LoadBalancer IPs from `IPPool`s and writes them into
//! Service status.
//!
//! - [`allocator`]: the pure core (pools and Service requests in, decisions out);
//! - [`leader`], [`admin`]: Lease-based leadership, health and metrics endpoints;
//! - [`gossip_secret`]: creates the speakers' gossip key when it is absent.

#![forbid(unsafe_code)]

pub mod admin;
pub mod allocator;
pub mod app;
pub mod caches;
pub mod catch_up;
mod error;
pub mod events;
pub mod gossip_secret;
pub mod leader;
pub mod owner;
pub mod pending;
pub mod plan;
pub mod pool_status;
pub mod pool_sync;
pub mod reconcile;
pub mod restore;
pub use ferrolb_crds::selector;
pub mod service;
pub mod term;

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
