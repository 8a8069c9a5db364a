//! Ethernet II headers and MAC addresses. VLAN-tagged frames are rejected: the responders
//! read untagged interfaces (a VLAN is its own Linux interface).

use std::fmt;
use std::str::FromStr;

use pnet_packet::ethernet::{self as layout, EthernetPacket, MutableEthernetPacket};

use super::WireError;

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    pub const ZERO: Mac = Mac([0; 6]);

    pub fn is_broadcast(self) -> bool {
        self == Mac::BROADCAST
    }

    /// Group bit set: broadcast, IPv4 or IPv6 multicast.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(self) -> bool {
        self == Mac::ZERO
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl FromStr for Mac {
    type Err = WireError;

    /// Six hex octets separated by `:` or `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || WireError::InvalidMac(s.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.is_empty() || part.len() > 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Mac(octets))
    }
}

/// The EtherType field of an Ethernet II header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const ARP: EtherType = EtherType(0x0806);
    pub const IPV6: EtherType = EtherType(0x86dd);
    /// 802.1Q, 802.1ad and the pre-standard 0x9100: tags we refuse.
    pub const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
}

impl fmt::Debug for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EtherType({:#06x})", self.0)
    }
}

/// An Ethernet II header (the FCS is neither read nor written: sockets do not see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: EtherType,
}

impl EthernetFrame {
    pub const HEADER_LEN: usize = EthernetPacket::minimum_packet_size();
    /// The shortest frame on the wire without FCS; shorter ones are padded with zeros.
    pub const MIN_LEN: usize = 60;

    /// Parses the header and returns it with the payload (padding included: the upper layer
    /// knows its own length).
    pub fn parse(frame: &[u8]) -> Result<(EthernetFrame, &[u8]), WireError> {
        let packet = EthernetPacket::new(frame).ok_or(WireError::Truncated {
            layer: "Ethernet",
            need: Self::HEADER_LEN,
            got: frame.len(),
        })?;
        let ethertype = packet.get_ethertype().0;
        if EtherType::VLAN_TPIDS.contains(&ethertype) {
            return Err(WireError::VlanTagged { tpid: ethertype });
        }
        if ethertype < 0x0600 {
            return Err(WireError::NotEthernetII { length: ethertype });
        }
        let header = EthernetFrame {
            dst: Mac(packet.get_destination().octets()),
            src: Mac(packet.get_source().octets()),
            ethertype: EtherType(ethertype),
        };
        // `new` saw at least HEADER_LEN bytes, so the payload slice always exists.
        let payload = frame.get(Self::HEADER_LEN..).unwrap_or_default();
        Ok((header, payload))
    }

    /// Parses the header and checks that it carries `expected`.
    pub fn parse_expecting(
        frame: &[u8],
        expected: EtherType,
    ) -> Result<(EthernetFrame, &[u8]), WireError> {
        let (header, payload) = EthernetFrame::parse(frame)?;
        if header.ethertype != expected {
            return Err(WireError::UnexpectedEtherType {
                expected: expected.0,
                found: header.ethertype.0,
            });
        }
        Ok((header, payload))
    }

    pub fn to_bytes(&self) -> [u8; Self::HEADER_LEN] {
        let mut out = [0u8; Self::HEADER_LEN];
        // Cannot fail: the array is exactly one header long.
        let _ = self.emit(&mut out);
        out
    }

    /// Writes the 14-byte header to the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let got = buf.len();
        // The view writes the header's 14 bytes only, whatever follows them in `buf`.
        let mut packet = MutableEthernetPacket::new(buf).ok_or(WireError::BufferTooSmall {
            need: Self::HEADER_LEN,
            got,
        })?;
        packet.set_destination(self.dst.0.into());
        packet.set_source(self.src.0.into());
        packet.set_ethertype(layout::EtherType(self.ethertype.0));
        Ok(Self::HEADER_LEN)
    }

    /// This header followed by `payload`, zero-padded to [`Self::MIN_LEN`].
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let len = Self::HEADER_LEN + payload.len();
        let mut out = Vec::with_capacity(len.max(Self::MIN_LEN));
        out.extend_from_slice(&self.to_bytes());
        out.extend_from_slice(payload);
        out.resize(len.max(Self::MIN_LEN), 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_header() {
        let header = EthernetFrame {
            dst: Mac::BROADCAST,
            src: Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            ethertype: EtherType::ARP,
        };
        #[rustfmt::skip]
        let golden = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source
            0x08, 0x06, // EtherType: ARP
        ];
        assert_eq!(header.to_bytes(), golden);
        let mut buf = [0u8; 20];
        assert_eq!(header.emit(&mut buf), Ok(14));
        assert_eq!(buf[..14], golden);
        assert_eq!(
            EthernetFrame::parse(&buf),
            Ok((header, &[0u8; 6][..])),
            "the payload is what follows the header"
        );
    }

    #[test]
    fn short_frames_are_padded_to_60_bytes() {
        let header = EthernetFrame {
            dst: Mac::BROADCAST,
            src: Mac([2, 0, 0, 0, 0, 1]),
            ethertype: EtherType::ARP,
        };
        let frame = header.frame(&[1, 2, 3]);
        assert_eq!(frame.len(), 60);
        assert_eq!(frame[14..17], [1, 2, 3]);
        assert!(frame[17..].iter().all(|&b| b == 0));
        assert_eq!(
            header.frame(&[7; 100]).len(),
            114,
            "long frames are not padded"
        );
    }

    #[test]
    fn rejects_vlan_tags_802_3_and_short_headers() {
        let mut frame = [0u8; 18];
        frame[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(
            EthernetFrame::parse(&frame),
            Err(WireError::VlanTagged { tpid: 0x8100 })
        );
        frame[12..14].copy_from_slice(&[0x88, 0xa8]);
        assert_eq!(
            EthernetFrame::parse(&frame),
            Err(WireError::VlanTagged { tpid: 0x88a8 })
        );
        frame[12..14].copy_from_slice(&[0x00, 0x2e]);
        assert_eq!(
            EthernetFrame::parse(&frame),
            Err(WireError::NotEthernetII { length: 46 })
        );
        assert_eq!(
            EthernetFrame::parse(&frame[..13]),
            Err(WireError::Truncated {
                layer: "Ethernet",
                need: 14,
                got: 13
            })
        );
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(
            EthernetFrame::parse_expecting(&frame, EtherType::ARP),
            Err(WireError::UnexpectedEtherType {
                expected: 0x0806,
                found: 0x0800
            })
        );
        let mut small = [0u8; 13];
        assert_eq!(
            EthernetFrame::parse(&frame).map(|(h, _)| h.emit(&mut small)),
            Ok(Err(WireError::BufferTooSmall { need: 14, got: 13 }))
        );
    }

    #[test]
    fn every_cut_header_needs_14_bytes() {
        let frame = [0u8; 14];
        for len in 0..14 {
            assert_eq!(
                EthernetFrame::parse(&frame[..len]),
                Err(WireError::Truncated {
                    layer: "Ethernet",
                    need: 14,
                    got: len
                })
            );
        }
    }

    #[test]
    fn mac_text_round_trip() {
        let mac: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac, Mac([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>(), Ok(mac));
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:xyz",
            "5254.00ab.cd0f",
            "52:54::ab:cd:0f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} must not parse");
        }
        assert!(Mac::BROADCAST.is_multicast() && Mac::BROADCAST.is_broadcast());
        assert!(!mac.is_multicast() && !mac.is_zero() && Mac::ZERO.is_zero());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = EthernetFrame::parse(&bytes);
        }

        #[test]
        fn emit_then_parse_is_identity(
            dst in any::<[u8; 6]>(),
            src in any::<[u8; 6]>(),
            ethertype in 0x0600u16..,
            payload in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            prop_assume!(!EtherType::VLAN_TPIDS.contains(&ethertype));
            let header = EthernetFrame { dst: Mac(dst), src: Mac(src), ethertype: EtherType(ethertype) };
            let frame = header.frame(&payload);
            let (parsed, rest) = EthernetFrame::parse(&frame).unwrap();
            prop_assert_eq!(parsed, header);
            prop_assert!(rest.starts_with(&payload));
        }
    }
}
