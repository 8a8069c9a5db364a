//! The fixed IPv6 header (RFC 8200 §3) and the ICMPv6 checksum over its pseudo-header
//! (RFC 8200 §8.1, RFC 4443 §2.3). Extension headers are not parsed: neighbor discovery
//! messages do not carry them, so a packet with one is rejected.

use std::net::Ipv6Addr;

use pnet_packet::icmpv6::{Icmpv6Packet, MutableIcmpv6Packet};
use pnet_packet::ip::IpNextHeaderProtocol;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

use super::{EtherType, EthernetFrame, WireError};

/// Next-header value of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;

/// The fixed IPv6 header. Traffic class and flow label are ignored on parse and zero on emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
    pub payload_len: u16,
}

impl Ipv6Header {
    pub const LEN: usize = Ipv6Packet::minimum_packet_size();

    /// Parses the header and returns it with exactly `payload_len` bytes of payload (link-layer
    /// padding dropped).
    pub fn parse(packet: &[u8]) -> Result<(Ipv6Header, &[u8]), WireError> {
        let ip = Ipv6Packet::new(packet).ok_or(WireError::Truncated {
            layer: "IPv6",
            need: Self::LEN,
            got: packet.len(),
        })?;
        let version = ip.get_version();
        if version != 6 {
            return Err(WireError::Ipv6Version(version));
        }
        let payload_len = ip.get_payload_length();
        // `new` saw at least LEN bytes. The view's own payload would be cut silently to the
        // bytes present, so the declared length is checked here.
        let rest = packet.get(Self::LEN..).unwrap_or_default();
        let payload = rest
            .get(..usize::from(payload_len))
            .ok_or(WireError::Ipv6PayloadLength {
                declared: payload_len,
                available: rest.len(),
            })?;
        let header = Ipv6Header {
            src: ip.get_source(),
            dst: ip.get_destination(),
            next_header: ip.get_next_header().0,
            hop_limit: ip.get_hop_limit(),
            payload_len,
        };
        Ok((header, payload))
    }

    /// Parses an Ethernet frame carrying IPv6.
    pub fn parse_frame(frame: &[u8]) -> Result<(EthernetFrame, Ipv6Header, &[u8]), WireError> {
        let (eth, packet) = EthernetFrame::parse_expecting(frame, EtherType::IPV6)?;
        let (ip, payload) = Ipv6Header::parse(packet)?;
        Ok((eth, ip, payload))
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        // Cannot fail: the array is exactly one header long.
        let _ = self.emit(&mut out);
        out
    }

    /// Writes the 40-byte header to the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let got = buf.len();
        // The view writes the header's 40 bytes only, whatever follows them in `buf`.
        let mut ip = MutableIpv6Packet::new(buf).ok_or(WireError::BufferTooSmall {
            need: Self::LEN,
            got,
        })?;
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        ip.set_payload_length(self.payload_len);
        ip.set_next_header(IpNextHeaderProtocol(self.next_header));
        ip.set_hop_limit(self.hop_limit);
        ip.set_source(self.src);
        ip.set_destination(self.dst);
        Ok(Self::LEN)
    }
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`.
fn add_words(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        if let [hi, lo] = *word {
            acc += u64::from(u16::from_be_bytes([hi, lo]));
        }
    }
    if let [last] = *words.remainder() {
        acc += u64::from(u16::from_be_bytes([last, 0]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo_header_sum(src: &Ipv6Addr, dst: &Ipv6Addr, len: usize) -> u64 {
    let acc = add_words(&src.octets(), 0);
    let acc = add_words(&dst.octets(), acc);
    // Upper-layer packet length as 32 bits, three zero bytes, next header.
    let acc = add_words(&(len as u32).to_be_bytes(), acc);
    acc + u64::from(NEXT_HEADER_ICMPV6)
}

/// The ICMPv6 checksum of `message` sent from `src` to `dst`, with the message's own checksum
/// field (bytes 2..4) counted as zero whatever it holds. Summed in 64 bits here rather than
/// by `pnet_packet::icmpv6::checksum`, whose 32-bit sum overflows (a panic in debug builds)
/// on messages of more than 128 KiB, and which needs a message of at least 4 bytes.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let acc = pseudo_header_sum(src, dst, message.len());
    // Bytes 0..2 and 4.. (an even offset, so word alignment is kept); skip the checksum field.
    let acc = add_words(message.get(..2).unwrap_or(message), acc);
    let acc = add_words(message.get(4..).unwrap_or(&[]), acc);
    !fold(acc)
}

/// The checksum stored in `message` (0 if it is too short to hold one) and the one it
/// should hold.
pub(super) fn checksum_found_and_expected(
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    message: &[u8],
) -> (u16, u16) {
    let found = Icmpv6Packet::new(message).map_or(0, |icmp| icmp.get_checksum());
    (found, icmpv6_checksum(src, dst, message))
}

/// Writes the checksum of `message` into its checksum field (nothing if it has none).
pub(super) fn fill_icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &mut [u8]) {
    let sum = icmpv6_checksum(src, dst, message);
    if let Some(mut icmp) = MutableIcmpv6Packet::new(message) {
        icmp.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_header() {
        let header = Ipv6Header {
            src: "fe80::1".parse().unwrap(),
            dst: "ff02::1".parse().unwrap(),
            next_header: NEXT_HEADER_ICMPV6,
            hop_limit: 255,
            payload_len: 32,
        };
        #[rustfmt::skip]
        let golden: [u8; 40] = [
            0x60, 0x00, 0x00, 0x00, // version 6, traffic class 0, flow label 0
            0x00, 0x20, // payload length 32
            0x3a, // next header 58 (ICMPv6)
            0xff, // hop limit 255
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // fe80::1
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // ff02::1
        ];
        assert_eq!(header.to_bytes(), golden);
        let mut packet = golden.to_vec();
        packet.extend_from_slice(&[0xaa; 40]); // 32 bytes of payload + 8 of padding
        let (parsed, payload) = Ipv6Header::parse(&packet).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(
            payload.len(),
            32,
            "padding beyond the payload length is dropped"
        );
    }

    #[test]
    fn rejects_wrong_version_short_and_overlong_payload() {
        let header = Ipv6Header {
            src: Ipv6Addr::LOCALHOST,
            dst: Ipv6Addr::LOCALHOST,
            next_header: NEXT_HEADER_ICMPV6,
            hop_limit: 255,
            payload_len: 8,
        };
        let mut packet = header.to_bytes().to_vec();
        assert_eq!(
            Ipv6Header::parse(&packet),
            Err(WireError::Ipv6PayloadLength {
                declared: 8,
                available: 0
            })
        );
        assert_eq!(
            Ipv6Header::parse(&packet[..39]),
            Err(WireError::Truncated {
                layer: "IPv6",
                need: 40,
                got: 39
            })
        );
        packet[0] = 0x45;
        assert_eq!(Ipv6Header::parse(&packet), Err(WireError::Ipv6Version(4)));
    }

    /// RFC 1071's own worked example: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's
    /// complement), whose complement 220d is the checksum.
    #[test]
    fn ones_complement_sum_matches_rfc_1071() {
        let acc = add_words(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0);
        assert_eq!(fold(acc), 0xddf2);
        assert_eq!(
            add_words(&[0xab], 0),
            0xab00,
            "an odd byte is padded on the right"
        );
    }

    #[test]
    fn checksum_of_a_message_with_its_checksum_verifies() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        // Echo request, id 1, seq 1, payload "abc": odd length on purpose.
        let mut msg = vec![128, 0, 0xde, 0xad, 0, 1, 0, 1, b'a', b'b', b'c'];
        fill_icmpv6_checksum(&src, &dst, &mut msg);
        let (found, expected) = checksum_found_and_expected(&src, &dst, &msg);
        assert_eq!(found, expected);
        // Summing everything, checksum included, gives all ones: the receiver's test.
        let all = add_words(&msg, pseudo_header_sum(&src, &dst, msg.len()));
        assert_eq!(fold(all), 0xffff);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Ipv6Header::parse(&bytes);
            let _ = Ipv6Header::parse_frame(&bytes);
        }

        #[test]
        fn checksum_verifies_for_any_message(
            src in any::<[u8; 16]>(),
            dst in any::<[u8; 16]>(),
            mut msg in proptest::collection::vec(any::<u8>(), 4..200),
        ) {
            let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            fill_icmpv6_checksum(&src, &dst, &mut msg);
            let all = add_words(&msg, pseudo_header_sum(&src, &dst, msg.len()));
            prop_assert_eq!(fold(all), 0xffff);
        }
    }
}
