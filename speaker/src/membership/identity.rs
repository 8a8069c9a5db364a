//! A speaker's gossip identity: its node, address, generation, [`Standing`] and announcing
//! [`Interface`]s. Pure data (serde and foca's `Identity`), kept apart from the membership
//! loop so that the fuzz target (`speaker/fuzz`) can compile it, with the envelope
//! ([`super::auth`]), the checks ([`super::vet`]) and the wire versions ([`super::wire`]),
//! without tokio and the rest of the speaker.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Where a speaker stands, as its identity says: whether its peers may give it IPs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Standing {
    /// Started, but its caches have not synced or its first election is not applied yet:
    /// it cannot answer for anything, so it is given nothing.
    #[default]
    Starting,
    /// Its view of the cluster may be stale (its watches fail, or the API server cannot be
    /// reached): it is given only IPs that no Ready speaker can take.
    Stale,
    Ready,
}

/// A speaker as gossip knows it: its node, where it listens, a generation that grows with
/// every start and every change of its identity (so that the newer identity supersedes
/// the older), its standing, and its node's announcing interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Speaker {
    pub node: String,
    pub addr: SocketAddr,
    pub generation: u64,
    pub standing: Standing,
    /// This identity reached us through a speaker that speaks only the v1 wire format
    /// ([`super::wire`]), which loses its standing and per-family default routes: it yields
    /// to the same identity heard in full.
    pub learnt_from_v1: bool,
    pub interfaces: Vec<Interface>,
}

/// One network interface of a node (speakers gossip these to each other).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    /// Addresses with their prefix length (`10.0.0.5/24` as `(10.0.0.5, 24)`); host bits may
    /// be set.
    pub subnets: Vec<(IpAddr, u8)>,
    /// The interface carries the node's IPv4 default route.
    pub default_route_v4: bool,
    /// The interface carries the node's IPv6 default route.
    pub default_route_v6: bool,
}

impl Interface {
    /// The interface carries the default route of `ip`'s family: a node whose IPv4 default
    /// leaves through one NIC and IPv6 through another announces each family's IPs on its
    /// own family's.
    pub fn default_route_for(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.default_route_v4,
            IpAddr::V6(_) => self.default_route_v6,
        }
    }

    /// The interface carries a default route of either family.
    pub fn has_default_route(&self) -> bool {
        self.default_route_v4 || self.default_route_v6
    }
}

impl foca::Identity for Speaker {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Speaker {
            generation: self.generation.saturating_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, !self.learnt_from_v1) > (adversary.generation, !adversary.learnt_from_v1)
    }
}
