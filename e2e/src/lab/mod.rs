//! The lab: a real Kubernetes cluster on one machine, built from network namespaces on one
//! L2 segment (see [`topology`]), run by `ferrolb-lab`.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod echo;
pub mod faults;
pub mod handle;
pub mod netns;
pub mod procs;
pub mod topology;
