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
pub mod gossip_secret;
pub mod leader;
pub mod plan;
pub mod reconcile;
pub use ferrolb_crds::selector;
pub mod service;
