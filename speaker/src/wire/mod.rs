//! The speaker's packet codecs: Ethernet II, ARP (RFC 826) and the two NDP messages it needs
//! (RFC 4861 Neighbor Solicitation and Advertisement), as typed `Repr` values parsed from and
//! emitted to bytes.
//!
//! Pure on purpose: no sockets, no clock, no idea which IPs this node owns. The responders
//! decide whether to answer; this module only says what a packet means and builds the answer.
//! Every parser returns a [`WireError`] on malformed input and never panics. Fixed fields
//! are read and written through `pnet_packet`'s views, whose constructors refuse a buffer
//! shorter than the fixed part (our [`WireError::Truncated`], or
//! [`WireError::Icmpv6TooShort`] for NDP); what follows it (payloads, NDP options) is sliced
//! with checked `get` and `split_at_checked`, and no slice is indexed directly. The views'
//! accessors of variable parts (payloads, option lists) are not used: NDP options are
//! walked by our own code.
//! Must not touch: sockets, interfaces, election state.

pub mod arp;
pub mod ethernet;
pub mod ipv6;
pub mod ndp;

#[cfg(test)]
mod pcap_tests;

use std::net::Ipv6Addr;

pub use arp::{ArpOp, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, Mac};
pub use ipv6::Ipv6Header;
pub use ndp::{NaRepr, NsRepr};

/// What was wrong with a packet (or with an output buffer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{layer}: truncated, need at least {need} bytes but only {got} are present")]
    Truncated {
        layer: &'static str,
        need: usize,
        got: usize,
    },
    #[error("output buffer too small: need {need} bytes, have {got}")]
    BufferTooSmall { need: usize, got: usize },
    #[error(
        "Ethernet: VLAN-tagged frame (TPID {tpid:#06x}) is not supported; read from an untagged interface"
    )]
    VlanTagged { tpid: u16 },
    #[error(
        "Ethernet: 802.3 length field {length} where an EtherType was expected; only Ethernet II frames are supported"
    )]
    NotEthernetII { length: u16 },
    #[error("Ethernet: EtherType {found:#06x}, expected {expected:#06x}")]
    UnexpectedEtherType { expected: u16, found: u16 },
    #[error("ARP: hardware type {0} is not Ethernet (1)")]
    ArpHardwareType(u16),
    #[error("ARP: protocol type {0:#06x} is not IPv4 (0x0800)")]
    ArpProtocolType(u16),
    #[error("ARP: hardware address length {0} is not 6")]
    ArpHardwareLength(u8),
    #[error("ARP: protocol address length {0} is not 4")]
    ArpProtocolLength(u8),
    #[error("ARP: operation {0} is neither request (1) nor reply (2)")]
    ArpOperation(u16),
    #[error("IPv6: version field is {0}, not 6")]
    Ipv6Version(u8),
    #[error("IPv6: next header {0} is not ICMPv6 (58); extension headers are not supported")]
    Ipv6NextHeader(u8),
    #[error("IPv6: payload length {declared} exceeds the {available} bytes present")]
    Ipv6PayloadLength { declared: u16, available: usize },
    #[error("ICMPv6: type {found}, expected {expected}")]
    Icmpv6Type { expected: u8, found: u8 },
    #[error("ICMPv6: code {0} in a neighbor discovery message, must be 0")]
    Icmpv6Code(u8),
    #[error("ICMPv6: message of {0} bytes, neighbor discovery needs at least 24")]
    Icmpv6TooShort(usize),
    #[error("ICMPv6: checksum {found:#06x} is wrong, expected {expected:#06x}")]
    Checksum { found: u16, expected: u16 },
    #[error("NDP: hop limit {0}, must be 255 (the message may have crossed a router)")]
    HopLimit(u8),
    #[error("NDP: target address {0} is multicast")]
    MulticastTarget(Ipv6Addr),
    #[error("NDP: source address {0} is multicast")]
    MulticastSource(Ipv6Addr),
    #[error(
        "NDP: duplicate address detection probe (source ::) sent to {0}, which is not a solicited-node multicast address"
    )]
    DadNotToSolicitedNode(Ipv6Addr),
    #[error(
        "NDP: duplicate address detection probe (source ::) carries a source link-layer address option"
    )]
    DadWithSourceLinkLayer,
    #[error("NDP: advertisement to multicast address {0} has the Solicited flag set")]
    SolicitedToMulticast(Ipv6Addr),
    #[error("NDP: option of type {kind} has length 0")]
    ZeroLengthOption { kind: u8 },
    #[error("NDP: option of type {kind} claims {need} bytes but only {got} remain")]
    OptionTruncated { kind: u8, need: usize, got: usize },
    #[error(
        "NDP: link-layer address option (type {kind}) is {units}x8 bytes; Ethernet needs exactly 8"
    )]
    LinkLayerOptionLength { kind: u8, units: u8 },
    #[error("{0:?} is not a MAC address (expected six hex octets such as 52:54:00:12:34:56)")]
    InvalidMac(String),
}

/// Copies `bytes` to the front of `buf`: the shared tail of every `emit`.
fn emit_into(bytes: &[u8], buf: &mut [u8]) -> Result<usize, WireError> {
    let got = buf.len();
    let dst = buf
        .get_mut(..bytes.len())
        .ok_or(WireError::BufferTooSmall {
            need: bytes.len(),
            got,
        })?;
    dst.copy_from_slice(bytes);
    Ok(bytes.len())
}
