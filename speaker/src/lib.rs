//! ferrolb's speaker: elects one node per IP and answers ARP/NDP for it. The election,
//! codecs and responders arrive with the speaker issue; this crate exists so the workspace
//! has its final shape from the start.

pub mod membership;
