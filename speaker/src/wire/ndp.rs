//! NDP (RFC 4861) Neighbor Solicitation and Neighbor Advertisement over Ethernet, the IPv6
//! half of the speaker's job: parse and validate solicitations (§4.3, §7.1.1), build the
//! solicited answer (§7.2.4) and the unsolicited advertisement sent after a takeover (§7.2.6).
//!
//! Solicitations can be read whole from an Ethernet frame, from an IPv6 packet, or as a bare
//! ICMPv6 message plus the addresses and hop limit an ICMPv6 raw socket reports. Unicast NUD
//! probes without a source link-layer address option are valid and must be answered: the
//! answer goes to the Ethernet source of the probe, so the frame builders take that MAC.

use std::net::Ipv6Addr;

use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NeighborAdvertFlags,
    NeighborAdvertPacket, NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{Icmpv6Code, Icmpv6Type};

use super::ipv6::{self, Ipv6Header, NEXT_HEADER_ICMPV6};
use super::{EtherType, EthernetFrame, Mac, WireError};

/// The all-nodes multicast address, where DAD answers and unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Ethernet address of [`ALL_NODES`] (RFC 2464 §7).
pub const ALL_NODES_MAC: Mac = Mac([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]);
/// Neighbor discovery is link-local: sent with, and only accepted with, hop limit 255.
pub const HOP_LIMIT: u8 = 255;

const TYPE_NS: u8 = 135;
const TYPE_NA: u8 = 136;
const OPTION_SOURCE_LLADDR: u8 = 1;
const OPTION_TARGET_LLADDR: u8 = 2;
/// ICMPv6 header, reserved/flags word and target address: the part both messages share.
/// The options follow it.
const FIXED_LEN: usize = NeighborSolicitPacket::minimum_packet_size();
const _: () = assert!(NeighborAdvertPacket::minimum_packet_size() == FIXED_LEN);
/// A link-layer address option for Ethernet: type, length 1 (in units of 8 bytes), MAC.
const LLADDR_OPTION_LEN: usize = 8;

/// The solicited-node multicast address of `ip` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX with
/// the low 24 bits of `ip`. Solicitations for `ip` are sent there.
pub fn solicited_node_multicast(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// Whether `ip` is in ff02::1:ff00:0/104.
pub fn is_solicited_node_multicast(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff]
}

/// The Ethernet address an IPv6 multicast address maps to: 33:33 and its low 32 bits
/// (RFC 2464 §7).
pub fn multicast_mac(ip: Ipv6Addr) -> Mac {
    let o = ip.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// 33:33:ff:xx:xx:xx: the Ethernet group a responder for `ip` must receive.
pub fn solicited_node_mac(ip: Ipv6Addr) -> Mac {
    multicast_mac(solicited_node_multicast(ip))
}

/// A Neighbor Solicitation that passed RFC 4861 §7.1.1 validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsRepr {
    /// IPv6 source; unspecified (`::`) for a duplicate address detection probe.
    pub src: Ipv6Addr,
    /// IPv6 destination: the target's solicited-node group, or the target itself (NUD).
    pub dst: Ipv6Addr,
    /// The address whose link-layer address is asked for.
    pub target: Ipv6Addr,
    /// The sender's MAC, if it included the option (never for DAD, often not for NUD).
    pub source_lladdr: Option<Mac>,
}

impl NsRepr {
    /// Whether this is a duplicate address detection probe (source `::`).
    pub fn is_dad(&self) -> bool {
        self.src.is_unspecified()
    }

    /// Parses and validates a solicitation from a whole Ethernet frame.
    pub fn parse_frame(frame: &[u8]) -> Result<(EthernetFrame, NsRepr), WireError> {
        let (eth, ip, payload) = Ipv6Header::parse_frame(frame)?;
        Ok((eth, NsRepr::from_ipv6(&ip, payload)?))
    }

    /// Parses and validates a solicitation from an IPv6 packet (no link-layer header).
    pub fn parse_ipv6(packet: &[u8]) -> Result<NsRepr, WireError> {
        let (ip, payload) = Ipv6Header::parse(packet)?;
        NsRepr::from_ipv6(&ip, payload)
    }

    fn from_ipv6(ip: &Ipv6Header, payload: &[u8]) -> Result<NsRepr, WireError> {
        if ip.next_header != NEXT_HEADER_ICMPV6 {
            return Err(WireError::Ipv6NextHeader(ip.next_header));
        }
        NsRepr::parse_icmpv6(payload, ip.src, ip.dst, ip.hop_limit)
    }

    /// Parses and validates a solicitation from the ICMPv6 message alone, with the IPv6
    /// source, destination and hop limit it arrived with (what an ICMPv6 raw socket reports).
    pub fn parse_icmpv6(
        message: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
    ) -> Result<NsRepr, WireError> {
        let nd = NdMessage::parse(message, TYPE_NS, src, dst, hop_limit)?;
        let source_lladdr = link_layer_option(nd.options, OPTION_SOURCE_LLADDR)?;
        if src.is_unspecified() {
            if !is_solicited_node_multicast(dst) {
                return Err(WireError::DadNotToSolicitedNode(dst));
            }
            if source_lladdr.is_some() {
                return Err(WireError::DadWithSourceLinkLayer);
            }
        }
        Ok(NsRepr {
            src,
            dst,
            target: nd.target,
            source_lladdr,
        })
    }

    /// The ICMPv6 message, checksum filled in for `self.src` → `self.dst`.
    pub fn icmpv6_bytes(&self) -> Vec<u8> {
        let option = self.source_lladdr.map(|mac| (OPTION_SOURCE_LLADDR, mac));
        nd_message(TYPE_NS, 0, self.target, option, &self.src, &self.dst)
    }

    /// Writes the ICMPv6 message to the front of `buf`.
    pub fn emit_icmpv6(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        super::emit_into(&self.icmpv6_bytes(), buf)
    }

    /// A complete Ethernet frame carrying this solicitation with hop limit 255.
    pub fn frame(&self, eth_src: Mac, eth_dst: Mac) -> Vec<u8> {
        nd_frame(eth_src, eth_dst, &self.src, &self.dst, &self.icmpv6_bytes())
    }
}

/// A Neighbor Advertisement (RFC 4861 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NaRepr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub target: Ipv6Addr,
    /// R: the sender is a router. The speaker never sets it.
    pub router: bool,
    /// S: this answers a solicitation (confirms reachability).
    pub solicited: bool,
    /// O: replace the cached link-layer address, which is what moves an IP between nodes.
    pub override_: bool,
    pub target_lladdr: Option<Mac>,
}

impl NaRepr {
    /// The answer to `ns` for a target this node owns (RFC 4861 §7.2.4): from the target, with
    /// Override and our MAC; to the solicitation's source with Solicited set, or to all-nodes
    /// without Solicited if the solicitation was a DAD probe. NUD probes without a source
    /// link-layer option are answered like any other.
    pub fn solicited_reply(ns: &NsRepr, our_mac: Mac) -> NaRepr {
        let dad = ns.is_dad();
        NaRepr {
            src: ns.target,
            dst: if dad { ALL_NODES } else { ns.src },
            target: ns.target,
            router: false,
            solicited: !dad,
            override_: true,
            target_lladdr: Some(our_mac),
        }
    }

    /// The unsolicited advertisement that moves `ip` to `mac` in every neighbour's cache
    /// (RFC 4861 §7.2.6): to all-nodes, Override set, Solicited clear.
    pub fn unsolicited(ip: Ipv6Addr, mac: Mac) -> NaRepr {
        NaRepr {
            src: ip,
            dst: ALL_NODES,
            target: ip,
            router: false,
            solicited: false,
            override_: true,
            target_lladdr: Some(mac),
        }
    }

    /// The Ethernet destination for this advertisement: the multicast group of `self.dst`, or
    /// `unicast` (the solicitation frame's source MAC) when `self.dst` is unicast.
    pub fn ethernet_dst(&self, unicast: Mac) -> Mac {
        if self.dst.is_multicast() {
            multicast_mac(self.dst)
        } else {
            unicast
        }
    }

    /// Parses and validates an advertisement (RFC 4861 §7.1.2) from a whole Ethernet frame.
    pub fn parse_frame(frame: &[u8]) -> Result<(EthernetFrame, NaRepr), WireError> {
        let (eth, ip, payload) = Ipv6Header::parse_frame(frame)?;
        Ok((eth, NaRepr::from_ipv6(&ip, payload)?))
    }

    /// Parses and validates an advertisement from an IPv6 packet (no link-layer header).
    pub fn parse_ipv6(packet: &[u8]) -> Result<NaRepr, WireError> {
        let (ip, payload) = Ipv6Header::parse(packet)?;
        NaRepr::from_ipv6(&ip, payload)
    }

    fn from_ipv6(ip: &Ipv6Header, payload: &[u8]) -> Result<NaRepr, WireError> {
        if ip.next_header != NEXT_HEADER_ICMPV6 {
            return Err(WireError::Ipv6NextHeader(ip.next_header));
        }
        NaRepr::parse_icmpv6(payload, ip.src, ip.dst, ip.hop_limit)
    }

    /// Parses and validates an advertisement from the ICMPv6 message alone.
    pub fn parse_icmpv6(
        message: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
    ) -> Result<NaRepr, WireError> {
        let nd = NdMessage::parse(message, TYPE_NA, src, dst, hop_limit)?;
        let solicited = nd.flags & NeighborAdvertFlags::Solicited != 0;
        if solicited && dst.is_multicast() {
            return Err(WireError::SolicitedToMulticast(dst));
        }
        Ok(NaRepr {
            src,
            dst,
            target: nd.target,
            router: nd.flags & NeighborAdvertFlags::Router != 0,
            solicited,
            override_: nd.flags & NeighborAdvertFlags::Override != 0,
            target_lladdr: link_layer_option(nd.options, OPTION_TARGET_LLADDR)?,
        })
    }

    /// The ICMPv6 message, checksum filled in for `self.src` → `self.dst`.
    pub fn icmpv6_bytes(&self) -> Vec<u8> {
        let mut flags = 0;
        for (set, flag) in [
            (self.router, NeighborAdvertFlags::Router),
            (self.solicited, NeighborAdvertFlags::Solicited),
            (self.override_, NeighborAdvertFlags::Override),
        ] {
            if set {
                flags |= flag;
            }
        }
        let option = self.target_lladdr.map(|mac| (OPTION_TARGET_LLADDR, mac));
        nd_message(TYPE_NA, flags, self.target, option, &self.src, &self.dst)
    }

    /// Writes the ICMPv6 message to the front of `buf`.
    pub fn emit_icmpv6(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        super::emit_into(&self.icmpv6_bytes(), buf)
    }

    /// A complete Ethernet frame carrying this advertisement with hop limit 255.
    pub fn frame(&self, eth_src: Mac, eth_dst: Mac) -> Vec<u8> {
        nd_frame(eth_src, eth_dst, &self.src, &self.dst, &self.icmpv6_bytes())
    }
}

/// The frame answering `ns` (see [`NaRepr::solicited_reply`]), from `our_mac` to `requester`
/// (the solicitation frame's source MAC) or, for a DAD probe, to 33:33:00:00:00:01.
pub fn solicited_na_frame(ns: &NsRepr, our_mac: Mac, requester: Mac) -> Vec<u8> {
    let na = NaRepr::solicited_reply(ns, our_mac);
    na.frame(our_mac, na.ethernet_dst(requester))
}

/// The unsolicited advertisement frame for `ip` at `mac`, to 33:33:00:00:00:01.
pub fn unsolicited_na_frame(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    NaRepr::unsolicited(ip, mac).frame(mac, ALL_NODES_MAC)
}

/// The validated fixed part of a solicitation or advertisement.
#[derive(Debug)]
struct NdMessage<'a> {
    /// The R, S and O bits of an NA (the high byte of its flags word); 0 for an NS.
    flags: u8,
    target: Ipv6Addr,
    /// The raw bytes after the fixed part, walked by [`link_layer_option`].
    options: &'a [u8],
}

impl<'a> NdMessage<'a> {
    /// The checks RFC 4861 §7.1.1 and §7.1.2 share, plus a unicast source (RFC 4291 §2.7).
    /// `expected_type` is [`TYPE_NS`] or [`TYPE_NA`].
    fn parse(
        message: &'a [u8],
        expected_type: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
    ) -> Result<NdMessage<'a>, WireError> {
        let found = *message.first().ok_or(WireError::Icmpv6TooShort(0))?;
        if found != expected_type {
            return Err(WireError::Icmpv6Type {
                expected: expected_type,
                found,
            });
        }
        let too_short = WireError::Icmpv6TooShort(message.len());
        // Both views need FIXED_LEN bytes and read their fixed fields only.
        let (code, flags, target) = if expected_type == TYPE_NA {
            let na = NeighborAdvertPacket::new(message).ok_or(too_short)?;
            (na.get_icmpv6_code().0, na.get_flags(), na.get_target_addr())
        } else {
            let ns = NeighborSolicitPacket::new(message).ok_or(too_short)?;
            (ns.get_icmpv6_code().0, 0, ns.get_target_addr())
        };
        if code != 0 {
            return Err(WireError::Icmpv6Code(code));
        }
        if hop_limit != HOP_LIMIT {
            return Err(WireError::HopLimit(hop_limit));
        }
        let (found, expected) = ipv6::checksum_found_and_expected(&src, &dst, message);
        if found != expected {
            return Err(WireError::Checksum { found, expected });
        }
        if target.is_multicast() {
            return Err(WireError::MulticastTarget(target));
        }
        if src.is_multicast() {
            return Err(WireError::MulticastSource(src));
        }
        Ok(NdMessage {
            flags,
            target,
            options: message.get(FIXED_LEN..).unwrap_or_default(),
        })
    }
}

/// Checks every option's length and returns the first link-layer address option of `wanted`.
/// Unknown options are skipped, as RFC 4861 §4.6 requires. Our own walk over the raw bytes,
/// in `usize`: `pnet_packet`'s option views compute an option's length in `u8` arithmetic,
/// which overflows for options of 32 units (256 bytes) or more.
fn link_layer_option(mut options: &[u8], wanted: u8) -> Result<Option<Mac>, WireError> {
    let mut found = None;
    loop {
        let (kind, units) = match *options {
            [] => return Ok(found),
            [kind] => {
                return Err(WireError::OptionTruncated {
                    kind,
                    need: 2,
                    got: 1,
                });
            }
            [kind, units, ..] => (kind, units),
        };
        if units == 0 {
            return Err(WireError::ZeroLengthOption { kind });
        }
        let len = usize::from(units) * 8;
        let (option, rest) = options
            .split_at_checked(len)
            .ok_or(WireError::OptionTruncated {
                kind,
                need: len,
                got: options.len(),
            })?;
        if kind == wanted && found.is_none() {
            match option {
                [_, 1, mac @ ..] => found = <[u8; 6]>::try_from(mac).ok().map(Mac),
                _ => return Err(WireError::LinkLayerOptionLength { kind, units }),
            }
        }
        options = rest;
    }
}

/// An NS (`kind` [`TYPE_NS`]) or NA ([`TYPE_NA`], with `flags`) for `target`, with at most
/// one link-layer address option, checksum filled in for `src` → `dst`.
fn nd_message(
    kind: u8,
    flags: u8,
    target: Ipv6Addr,
    option: Option<(u8, Mac)>,
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(FIXED_LEN + LLADDR_OPTION_LEN);
    msg.resize(FIXED_LEN, 0);
    // The views write the fixed part; the checksum is filled in below, reserved bits stay 0.
    if kind == TYPE_NA {
        if let Some(mut na) = MutableNeighborAdvertPacket::new(&mut msg) {
            na.set_icmpv6_type(Icmpv6Type(kind));
            na.set_icmpv6_code(Icmpv6Code(0));
            na.set_flags(flags);
            na.set_target_addr(target);
        }
    } else if let Some(mut ns) = MutableNeighborSolicitPacket::new(&mut msg) {
        ns.set_icmpv6_type(Icmpv6Type(kind));
        ns.set_icmpv6_code(Icmpv6Code(0));
        ns.set_target_addr(target);
    }
    if let Some((option_kind, mac)) = option {
        // Type, length in units of 8 bytes, MAC: what `link_layer_option` reads back.
        msg.extend_from_slice(&[option_kind, 1]);
        msg.extend_from_slice(&mac.0);
    }
    ipv6::fill_icmpv6_checksum(src, dst, &mut msg);
    msg
}

fn nd_frame(eth_src: Mac, eth_dst: Mac, src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let ip = Ipv6Header {
        src: *src,
        dst: *dst,
        next_header: NEXT_HEADER_ICMPV6,
        hop_limit: HOP_LIMIT,
        // Our messages are 24 or 32 bytes long.
        payload_len: u16::try_from(icmp.len()).unwrap_or(u16::MAX),
    };
    let mut packet = Vec::with_capacity(Ipv6Header::LEN + icmp.len());
    packet.extend_from_slice(&ip.to_bytes());
    packet.extend_from_slice(icmp);
    EthernetFrame {
        dst: eth_dst,
        src: eth_src,
        ethertype: EtherType::IPV6,
    }
    .frame(&packet)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(in super::super) const CLIENT_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
    pub(in super::super) const OUR_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x00, 0xaa]);
    const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 1);
    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0xc8);
    const VIP_SOLICITED_NODE: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0xc8);

    // Checksums below were computed outside this code (a short Python script over the RFC 8200
    // §8.1 pseudo-header) and confirmed by `tcpdump -vvv` ("icmp6 sum ok", see pcap_tests).

    /// Address resolution: 2001:db8:10::1 asks who has 2001:db8:10::c8, to its
    /// solicited-node group, with its own MAC in a source link-layer option.
    #[rustfmt::skip]
    pub(in super::super) const NS_FRAME: [u8; 86] = [
        // Ethernet: 33:33:ff:00:00:c8 <- 52:54:00:00:00:01, EtherType IPv6
        0x33, 0x33, 0xff, 0x00, 0x00, 0xc8, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
        // IPv6: version 6, payload 32, next header 58, hop limit 255
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff,
        // source 2001:db8:10::1
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01,
        // destination ff02::1:ff00:c8
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0xff, 0x00, 0x00, 0xc8,
        // ICMPv6: type 135 (NS), code 0, checksum 0xca26, reserved
        0x87, 0x00, 0xca, 0x26, 0x00, 0x00, 0x00, 0x00,
        // target 2001:db8:10::c8
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
        // option 1 (source link-layer address), length 1 (8 bytes): 52:54:00:00:00:01
        0x01, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01,
    ];

    /// The answer: 2001:db8:10::c8 is at 52:54:00:00:00:aa, Solicited and Override set,
    /// unicast back to the asker.
    #[rustfmt::skip]
    pub(in super::super) const SOLICITED_NA_FRAME: [u8; 86] = [
        // Ethernet: 52:54:00:00:00:01 <- 52:54:00:00:00:aa, EtherType IPv6
        0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 0x86, 0xdd,
        // IPv6: version 6, payload 32, next header 58, hop limit 255
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff,
        // source 2001:db8:10::c8
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
        // destination 2001:db8:10::1
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01,
        // ICMPv6: type 136 (NA), code 0, checksum 0x37b9, flags R=0 S=1 O=1, reserved
        0x88, 0x00, 0x37, 0xb9, 0x60, 0x00, 0x00, 0x00,
        // target 2001:db8:10::c8
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
        // option 2 (target link-layer address), length 1: 52:54:00:00:00:aa
        0x02, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa,
    ];

    /// A NUD probe: unicast to the target, no source link-layer option. MetalLB drops these;
    /// the answer must be `SOLICITED_NA_FRAME`.
    #[rustfmt::skip]
    pub(in super::super) const NUD_NS_FRAME: [u8; 78] = [
        // Ethernet: 52:54:00:00:00:aa <- 52:54:00:00:00:01, EtherType IPv6
        0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
        // IPv6: payload 24, next header 58, hop limit 255
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x3a, 0xff,
        // source 2001:db8:10::1
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01,
        // destination 2001:db8:10::c8 (the target itself)
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
        // ICMPv6: type 135, code 0, checksum 0xedc0, reserved
        0x87, 0x00, 0xed, 0xc0, 0x00, 0x00, 0x00, 0x00,
        // target 2001:db8:10::c8, no options
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
    ];

    /// Duplicate address detection: source ::, to the solicited-node group, no options.
    #[rustfmt::skip]
    pub(in super::super) const DAD_NS_FRAME: [u8; 78] = [
        // Ethernet: 33:33:ff:00:00:c8 <- 52:54:00:00:00:01, EtherType IPv6
        0x33, 0x33, 0xff, 0x00, 0x00, 0xc8, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x86, 0xdd,
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x3a, 0xff,
        // source :: (unspecified)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // destination ff02::1:ff00:c8
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0xff, 0x00, 0x00, 0xc8,
        // ICMPv6: type 135, code 0, checksum 0x4b4f, reserved
        0x87, 0x00, 0x4b, 0x4f, 0x00, 0x00, 0x00, 0x00,
        // target 2001:db8:10::c8
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
    ];

    /// To all nodes: 2001:db8:10::c8 is at 52:54:00:00:00:aa, Override set, Solicited clear.
    /// Both the unsolicited advertisement and the answer to a DAD probe.
    #[rustfmt::skip]
    pub(in super::super) const UNSOLICITED_NA_FRAME: [u8; 86] = [
        // Ethernet: 33:33:00:00:00:01 <- 52:54:00:00:00:aa, EtherType IPv6
        0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 0x86, 0xdd,
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff,
        // source 2001:db8:10::c8
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
        // destination ff02::1
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        // ICMPv6: type 136, code 0, checksum 0xa67f, flags R=0 S=0 O=1, reserved
        0x88, 0x00, 0xa6, 0x7f, 0x20, 0x00, 0x00, 0x00,
        // target 2001:db8:10::c8
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xc8,
        // option 2 (target link-layer address), length 1: 52:54:00:00:00:aa
        0x02, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa,
    ];

    fn resolution_ns() -> NsRepr {
        NsRepr {
            src: CLIENT,
            dst: VIP_SOLICITED_NODE,
            target: VIP,
            source_lladdr: Some(CLIENT_MAC),
        }
    }

    /// The ICMPv6 part of a valid NS frame, with its addresses, for the raw-socket path.
    fn icmpv6_of(frame: &[u8]) -> (Vec<u8>, Ipv6Addr, Ipv6Addr) {
        let (_, ip, payload) = Ipv6Header::parse_frame(frame).unwrap();
        (payload.to_vec(), ip.src, ip.dst)
    }

    /// Parses `msg` as an NS after fixing up its checksum, so a test changes one thing only.
    fn parse_ns_fixed(mut msg: Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr) -> Result<NsRepr, WireError> {
        ipv6::fill_icmpv6_checksum(&src, &dst, &mut msg);
        NsRepr::parse_icmpv6(&msg, src, dst, 255)
    }

    #[test]
    fn multicast_addresses() {
        assert_eq!(solicited_node_multicast(VIP), VIP_SOLICITED_NODE);
        let ip: Ipv6Addr = "2001:db8::abcd:1234:5678".parse().unwrap();
        assert_eq!(
            solicited_node_multicast(ip),
            "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            solicited_node_mac(ip),
            Mac([0x33, 0x33, 0xff, 0x34, 0x56, 0x78])
        );
        assert_eq!(multicast_mac(ALL_NODES), ALL_NODES_MAC);
        assert!(is_solicited_node_multicast(VIP_SOLICITED_NODE));
        assert!(!is_solicited_node_multicast(ALL_NODES));
        assert!(!is_solicited_node_multicast(
            "ff02::2:ff00:c8".parse().unwrap()
        ));
        assert!(!is_solicited_node_multicast(VIP));
    }

    #[test]
    fn parses_golden_resolution_ns_and_builds_golden_answer() {
        let (eth, ns) = NsRepr::parse_frame(&NS_FRAME).unwrap();
        assert_eq!(ns, resolution_ns());
        assert_eq!((eth.src, eth.dst), (CLIENT_MAC, solicited_node_mac(VIP)));
        assert_eq!(ns.frame(CLIENT_MAC, solicited_node_mac(VIP)), NS_FRAME);

        let na = NaRepr::solicited_reply(&ns, OUR_MAC);
        assert_eq!(
            na,
            NaRepr {
                src: VIP,
                dst: CLIENT,
                target: VIP,
                router: false,
                solicited: true,
                override_: true,
                target_lladdr: Some(OUR_MAC),
            }
        );
        assert_eq!(
            solicited_na_frame(&ns, OUR_MAC, eth.src),
            SOLICITED_NA_FRAME
        );
        assert_eq!(NaRepr::parse_frame(&SOLICITED_NA_FRAME).unwrap().1, na);
    }

    #[test]
    fn nud_probe_without_source_lladdr_is_answered_unicast() {
        let (eth, ns) = NsRepr::parse_frame(&NUD_NS_FRAME).unwrap();
        assert_eq!(
            ns,
            NsRepr {
                src: CLIENT,
                dst: VIP,
                target: VIP,
                source_lladdr: None,
            }
        );
        assert!(!ns.is_dad());
        assert_eq!(ns.frame(CLIENT_MAC, OUR_MAC), NUD_NS_FRAME);
        // No option to learn the asker's MAC from: the frame's source is where the answer goes.
        assert_eq!(
            solicited_na_frame(&ns, OUR_MAC, eth.src),
            SOLICITED_NA_FRAME
        );
    }

    #[test]
    fn dad_probe_is_answered_to_all_nodes_without_solicited() {
        let (eth, ns) = NsRepr::parse_frame(&DAD_NS_FRAME).unwrap();
        assert!(ns.is_dad());
        assert_eq!(ns.frame(CLIENT_MAC, solicited_node_mac(VIP)), DAD_NS_FRAME);
        let na = NaRepr::solicited_reply(&ns, OUR_MAC);
        assert_eq!(
            (na.dst, na.solicited, na.override_),
            (ALL_NODES, false, true)
        );
        assert_eq!(na.ethernet_dst(eth.src), ALL_NODES_MAC);
        assert_eq!(
            solicited_na_frame(&ns, OUR_MAC, eth.src),
            UNSOLICITED_NA_FRAME
        );
    }

    #[test]
    fn builds_golden_unsolicited_na() {
        assert_eq!(unsolicited_na_frame(OUR_MAC, VIP), UNSOLICITED_NA_FRAME);
        let (eth, na) = NaRepr::parse_frame(&UNSOLICITED_NA_FRAME).unwrap();
        assert_eq!(na, NaRepr::unsolicited(VIP, OUR_MAC));
        assert_eq!((eth.dst, eth.src), (ALL_NODES_MAC, OUR_MAC));
    }

    #[test]
    fn parses_the_bare_icmpv6_message_from_a_raw_socket() {
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        assert_eq!(
            NsRepr::parse_icmpv6(&msg, src, dst, 255),
            Ok(resolution_ns())
        );
        assert_eq!(resolution_ns().icmpv6_bytes(), msg);
        let mut buf = [0u8; 40];
        assert_eq!(resolution_ns().emit_icmpv6(&mut buf), Ok(32));
        assert_eq!(buf[..32], msg[..]);
        assert_eq!(
            resolution_ns().emit_icmpv6(&mut [0u8; 31]),
            Err(WireError::BufferTooSmall { need: 32, got: 31 })
        );
        assert_eq!(NsRepr::parse_ipv6(&NS_FRAME[14..]), Ok(resolution_ns()));
        let na = NaRepr::unsolicited(VIP, OUR_MAC);
        assert_eq!(NaRepr::parse_ipv6(&UNSOLICITED_NA_FRAME[14..]), Ok(na));
        assert_eq!(
            NaRepr::parse_icmpv6(&na.icmpv6_bytes(), VIP, ALL_NODES, 255),
            Ok(na)
        );
    }

    #[test]
    fn rejects_hop_limit_below_255() {
        let mut frame = NS_FRAME;
        frame[21] = 254; // the hop limit is not covered by the checksum
        assert_eq!(NsRepr::parse_frame(&frame), Err(WireError::HopLimit(254)));
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        assert_eq!(
            NsRepr::parse_icmpv6(&msg, src, dst, 64),
            Err(WireError::HopLimit(64))
        );
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut frame = NS_FRAME;
        frame[57] ^= 0x01;
        assert_eq!(
            NsRepr::parse_frame(&frame),
            Err(WireError::Checksum {
                found: 0xca27,
                expected: 0xca26
            })
        );
        // The checksum covers the pseudo-header: the same message to another address fails.
        let (msg, src, _) = icmpv6_of(&NS_FRAME);
        assert!(matches!(
            NsRepr::parse_icmpv6(&msg, src, VIP, 255),
            Err(WireError::Checksum { .. })
        ));
    }

    #[test]
    fn rejects_nonzero_code_wrong_type_and_short_messages() {
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        let mut coded = msg.clone();
        coded[1] = 1;
        assert_eq!(
            parse_ns_fixed(coded, src, dst),
            Err(WireError::Icmpv6Code(1))
        );
        let mut echo = msg.clone();
        echo[0] = 128;
        assert_eq!(
            parse_ns_fixed(echo, src, dst),
            Err(WireError::Icmpv6Type {
                expected: 135,
                found: 128
            })
        );
        assert_eq!(
            parse_ns_fixed(msg[..23].to_vec(), src, dst),
            Err(WireError::Icmpv6TooShort(23))
        );
        assert_eq!(
            NsRepr::parse_icmpv6(&[], src, dst, 255),
            Err(WireError::Icmpv6TooShort(0))
        );
        assert_eq!(
            NaRepr::parse_frame(&NS_FRAME),
            Err(WireError::Icmpv6Type {
                expected: 136,
                found: 135
            })
        );
    }

    #[test]
    fn rejects_multicast_target_and_source() {
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        let mut multicast_target = msg.clone();
        multicast_target[8..24].copy_from_slice(&ALL_NODES.octets());
        assert_eq!(
            parse_ns_fixed(multicast_target, src, dst),
            Err(WireError::MulticastTarget(ALL_NODES))
        );
        assert_eq!(
            parse_ns_fixed(msg, ALL_NODES, dst),
            Err(WireError::MulticastSource(ALL_NODES))
        );
    }

    #[test]
    fn rejects_dad_to_a_non_solicited_node_address() {
        let (msg, src, _) = icmpv6_of(&DAD_NS_FRAME);
        assert_eq!(
            parse_ns_fixed(msg.clone(), src, VIP),
            Err(WireError::DadNotToSolicitedNode(VIP))
        );
        assert_eq!(
            parse_ns_fixed(msg, src, ALL_NODES),
            Err(WireError::DadNotToSolicitedNode(ALL_NODES))
        );
    }

    #[test]
    fn rejects_dad_with_source_lladdr() {
        let (msg, _, dst) = icmpv6_of(&NS_FRAME);
        assert_eq!(
            parse_ns_fixed(msg, Ipv6Addr::UNSPECIFIED, dst),
            Err(WireError::DadWithSourceLinkLayer)
        );
    }

    #[test]
    fn rejects_zero_length_and_truncated_options() {
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        let mut zero = msg.clone();
        zero[25] = 0;
        assert_eq!(
            parse_ns_fixed(zero, src, dst),
            Err(WireError::ZeroLengthOption { kind: 1 })
        );
        // Zero-length options are invalid whatever their type, even unknown ones.
        let mut unknown_zero = msg[..24].to_vec();
        unknown_zero.extend_from_slice(&[14, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse_ns_fixed(unknown_zero, src, dst),
            Err(WireError::ZeroLengthOption { kind: 14 })
        );
        let mut long = msg.clone();
        long[25] = 2;
        assert_eq!(
            parse_ns_fixed(long, src, dst),
            Err(WireError::OptionTruncated {
                kind: 1,
                need: 16,
                got: 8
            })
        );
        let mut odd = msg.clone();
        odd.push(1);
        assert_eq!(
            parse_ns_fixed(odd, src, dst),
            Err(WireError::OptionTruncated {
                kind: 1,
                need: 2,
                got: 1
            })
        );
        let mut wide = msg[..24].to_vec();
        wide.extend_from_slice(&[1, 2, 0x52, 0x54, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse_ns_fixed(wide, src, dst),
            Err(WireError::LinkLayerOptionLength { kind: 1, units: 2 })
        );
    }

    #[test]
    fn skips_unknown_options_and_keeps_the_first_lladdr() {
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        let mut with_more = msg[..24].to_vec();
        with_more.extend_from_slice(&[14, 1, 9, 9, 9, 9, 9, 9]); // nonce (RFC 3971): ignored here
        with_more.extend_from_slice(&msg[24..]);
        with_more.extend_from_slice(&[1, 1, 2, 2, 2, 2, 2, 2]);
        assert_eq!(parse_ns_fixed(with_more, src, dst), Ok(resolution_ns()));
    }

    /// An option's length is up to 255 units of 8 bytes (2040 bytes): long unknown options
    /// are skipped whole, and one cut short is refused.
    #[test]
    fn walks_options_of_any_length() {
        let (msg, src, dst) = icmpv6_of(&NS_FRAME);
        for units in [31u8, 32, 200, 255] {
            let mut with_long = msg[..24].to_vec();
            let len = usize::from(units) * 8;
            with_long.extend_from_slice(&[14, units]);
            with_long.resize(24 + len, 0xee);
            with_long.extend_from_slice(&msg[24..]);
            assert_eq!(
                parse_ns_fixed(with_long.clone(), src, dst),
                Ok(resolution_ns()),
                "{units} units"
            );
            with_long.truncate(24 + len - 1);
            assert_eq!(
                parse_ns_fixed(with_long, src, dst),
                Err(WireError::OptionTruncated {
                    kind: 14,
                    need: len,
                    got: len - 1
                }),
                "{units} units, cut short"
            );
        }
    }

    #[test]
    fn rejects_solicited_na_to_multicast_and_non_icmpv6_packets() {
        let na = NaRepr {
            solicited: true,
            ..NaRepr::unsolicited(VIP, OUR_MAC)
        };
        assert_eq!(
            NaRepr::parse_frame(&na.frame(OUR_MAC, ALL_NODES_MAC)),
            Err(WireError::SolicitedToMulticast(ALL_NODES))
        );
        let mut udp = NS_FRAME;
        udp[20] = 17;
        assert_eq!(
            NsRepr::parse_frame(&udp),
            Err(WireError::Ipv6NextHeader(17))
        );
        let mut arp = NS_FRAME;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            NsRepr::parse_frame(&arp),
            Err(WireError::UnexpectedEtherType {
                expected: 0x86dd,
                found: 0x0806
            })
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for frame in [&NS_FRAME[..], &NUD_NS_FRAME, &DAD_NS_FRAME] {
            for len in 0..frame.len() {
                assert!(NsRepr::parse_frame(&frame[..len]).is_err(), "cut at {len}");
            }
        }
        for frame in [&SOLICITED_NA_FRAME[..], &UNSOLICITED_NA_FRAME] {
            for len in 0..frame.len() {
                assert!(NaRepr::parse_frame(&frame[..len]).is_err(), "cut at {len}");
            }
        }
    }

    fn any_addr() -> impl Strategy<Value = Ipv6Addr> {
        any::<[u8; 16]>().prop_map(Ipv6Addr::from)
    }

    /// Any address that is neither multicast nor unspecified.
    fn any_unicast() -> impl Strategy<Value = Ipv6Addr> {
        any_addr().prop_filter("unicast", |ip| !ip.is_multicast() && !ip.is_unspecified())
    }

    /// Any solicitation that passes validation: address resolution, NUD or DAD.
    fn any_valid_ns() -> impl Strategy<Value = NsRepr> {
        (
            any_unicast(),
            any_addr(),
            any_unicast(),
            any::<Option<[u8; 6]>>(),
            any::<bool>(),
        )
            .prop_map(|(src, dst, target, lladdr, dad)| {
                if dad {
                    NsRepr {
                        src: Ipv6Addr::UNSPECIFIED,
                        dst: solicited_node_multicast(target),
                        target,
                        source_lladdr: None,
                    }
                } else {
                    NsRepr {
                        src,
                        dst,
                        target,
                        source_lladdr: lladdr.map(Mac),
                    }
                }
            })
    }

    /// Any advertisement that passes validation.
    fn any_valid_na() -> impl Strategy<Value = NaRepr> {
        (
            any_unicast(),
            any_addr(),
            any_unicast(),
            any::<[bool; 3]>(),
            any::<Option<[u8; 6]>>(),
        )
            .prop_map(
                |(src, dst, target, [router, solicited, override_], lladdr)| NaRepr {
                    src,
                    dst,
                    target,
                    router,
                    solicited: solicited && !dst.is_multicast(),
                    override_,
                    target_lladdr: lladdr.map(Mac),
                },
            )
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160), src in any_addr(), dst in any_addr(), hop_limit in any::<u8>()) {
            let _ = NsRepr::parse_frame(&bytes);
            let _ = NsRepr::parse_ipv6(&bytes);
            let _ = NsRepr::parse_icmpv6(&bytes, src, dst, hop_limit);
            let _ = NaRepr::parse_frame(&bytes);
            let _ = NaRepr::parse_ipv6(&bytes);
            let _ = NaRepr::parse_icmpv6(&bytes, src, dst, hop_limit);
        }

        /// Random bytes rarely get past the checksum; damaged valid messages with the checksum
        /// repaired reach the option and DAD checks.
        #[test]
        fn parse_never_panics_on_damaged_messages(
            edits in proptest::collection::vec((0usize..48, any::<u8>()), 1..8),
            extra in proptest::collection::vec(any::<u8>(), 0..24),
            cut in 0usize..=72,
            src in any_addr(),
            dst in any_addr(),
        ) {
            let (base, _, _) = icmpv6_of(&NS_FRAME);
            let mut msg = base;
            msg.extend_from_slice(&extra);
            for (at, byte) in edits {
                if let Some(b) = msg.get_mut(at) {
                    *b = byte;
                }
            }
            msg.truncate(cut);
            ipv6::fill_icmpv6_checksum(&src, &dst, &mut msg);
            let _ = NsRepr::parse_icmpv6(&msg, src, dst, 255);
            let _ = NaRepr::parse_icmpv6(&msg, src, dst, 255);
        }

        #[test]
        fn ns_emit_then_parse_is_identity(ns in any_valid_ns(), src_mac in any::<[u8; 6]>(), dst_mac in any::<[u8; 6]>()) {
            let (eth, parsed) = NsRepr::parse_frame(&ns.frame(Mac(src_mac), Mac(dst_mac))).unwrap();
            prop_assert_eq!(parsed, ns);
            prop_assert_eq!((eth.src, eth.dst), (Mac(src_mac), Mac(dst_mac)));
            prop_assert_eq!(NsRepr::parse_icmpv6(&ns.icmpv6_bytes(), ns.src, ns.dst, 255), Ok(ns));
        }

        #[test]
        fn na_emit_then_parse_is_identity(na in any_valid_na(), src_mac in any::<[u8; 6]>(), dst_mac in any::<[u8; 6]>()) {
            let (_, parsed) = NaRepr::parse_frame(&na.frame(Mac(src_mac), Mac(dst_mac))).unwrap();
            prop_assert_eq!(parsed, na);
            prop_assert_eq!(NaRepr::parse_icmpv6(&na.icmpv6_bytes(), na.src, na.dst, 255), Ok(na));
        }

        /// Whatever a valid solicitation looks like, the answer is itself a valid advertisement
        /// that says the target is at our MAC.
        #[test]
        fn every_valid_ns_gets_a_valid_answer(ns in any_valid_ns(), requester in any::<[u8; 6]>(), ours in any::<[u8; 6]>()) {
            let frame = solicited_na_frame(&ns, Mac(ours), Mac(requester));
            let (eth, na) = NaRepr::parse_frame(&frame).unwrap();
            prop_assert_eq!(na.target, ns.target);
            prop_assert_eq!(na.target_lladdr, Some(Mac(ours)));
            prop_assert!(na.override_);
            prop_assert_eq!(na.solicited, !ns.is_dad());
            let (want_ip, want_mac) = if ns.is_dad() { (ALL_NODES, ALL_NODES_MAC) } else { (ns.src, Mac(requester)) };
            prop_assert_eq!((na.dst, eth.dst), (want_ip, want_mac));
        }
    }
}
