//! ARP (RFC 826) for Ethernet and IPv4 only: parse requests, build replies and the two
//! gratuitous forms announced after a takeover (RFC 5227 §3, RFC 2002 §4.6).

use std::net::Ipv4Addr;

use pnet_packet::arp::{ArpHardwareType, ArpOperation, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::EtherType as Protocol;

use super::{EtherType, EthernetFrame, Mac, WireError};

const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;
const HLEN_ETHERNET: u8 = 6;
const PLEN_IPV4: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOp {
    Request,
    Reply,
}

impl ArpOp {
    fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        }
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub op: ArpOp,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Bytes of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = ArpPacket::minimum_packet_size();

    /// Parses an ARP packet (the Ethernet payload); trailing padding is ignored.
    pub fn parse(packet: &[u8]) -> Result<ArpRepr, WireError> {
        let arp = ArpPacket::new(packet).ok_or(WireError::Truncated {
            layer: "ARP",
            need: Self::LEN,
            got: packet.len(),
        })?;
        let htype = arp.get_hardware_type().0;
        if htype != HTYPE_ETHERNET {
            return Err(WireError::ArpHardwareType(htype));
        }
        let ptype = arp.get_protocol_type().0;
        if ptype != PTYPE_IPV4 {
            return Err(WireError::ArpProtocolType(ptype));
        }
        let hlen = arp.get_hw_addr_len();
        if hlen != HLEN_ETHERNET {
            return Err(WireError::ArpHardwareLength(hlen));
        }
        let plen = arp.get_proto_addr_len();
        if plen != PLEN_IPV4 {
            return Err(WireError::ArpProtocolLength(plen));
        }
        let op = match arp.get_operation().0 {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            other => return Err(WireError::ArpOperation(other)),
        };
        Ok(ArpRepr {
            op,
            sender_mac: Mac(arp.get_sender_hw_addr().octets()),
            sender_ip: arp.get_sender_proto_addr(),
            target_mac: Mac(arp.get_target_hw_addr().octets()),
            target_ip: arp.get_target_proto_addr(),
        })
    }

    /// Parses a whole Ethernet frame carrying ARP.
    pub fn parse_frame(frame: &[u8]) -> Result<(EthernetFrame, ArpRepr), WireError> {
        let (header, payload) = EthernetFrame::parse_expecting(frame, EtherType::ARP)?;
        Ok((header, ArpRepr::parse(payload)?))
    }

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        // Cannot fail: the array is exactly one packet long.
        let _ = self.emit(&mut out);
        out
    }

    /// Writes the 28-byte ARP packet to the front of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let got = buf.len();
        // The view writes the packet's 28 bytes only, whatever follows them in `buf`.
        let mut arp = MutableArpPacket::new(buf).ok_or(WireError::BufferTooSmall {
            need: Self::LEN,
            got,
        })?;
        arp.set_hardware_type(ArpHardwareType(HTYPE_ETHERNET));
        arp.set_protocol_type(Protocol(PTYPE_IPV4));
        arp.set_hw_addr_len(HLEN_ETHERNET);
        arp.set_proto_addr_len(PLEN_IPV4);
        arp.set_operation(ArpOperation(self.op.code()));
        arp.set_sender_hw_addr(self.sender_mac.0.into());
        arp.set_sender_proto_addr(self.sender_ip);
        arp.set_target_hw_addr(self.target_mac.0.into());
        arp.set_target_proto_addr(self.target_ip);
        Ok(Self::LEN)
    }

    /// A complete Ethernet frame carrying this packet (padded to 60 bytes).
    pub fn frame(&self, eth_src: Mac, eth_dst: Mac) -> Vec<u8> {
        EthernetFrame {
            dst: eth_dst,
            src: eth_src,
            ethertype: EtherType::ARP,
        }
        .frame(&self.to_bytes())
    }

    /// The reply that says `req.target_ip` is at `our_mac`. Whether this node owns that IP
    /// (and whether `req` is a request at all) is the responder's decision.
    pub fn reply_to(req: &ArpRepr, our_mac: Mac) -> ArpRepr {
        ArpRepr {
            op: ArpOp::Reply,
            sender_mac: our_mac,
            sender_ip: req.target_ip,
            target_mac: req.sender_mac,
            target_ip: req.sender_ip,
        }
    }

    /// The Ethernet frame answering `req`, sent to `requester` (the request frame's source).
    pub fn reply_frame(req: &ArpRepr, our_mac: Mac, requester: Mac) -> Vec<u8> {
        ArpRepr::reply_to(req, our_mac).frame(our_mac, requester)
    }
}

/// The two gratuitous ARP frames that move `ip` to `mac` in every neighbour's cache, both to
/// broadcast: `[request form, reply form]`. Some hosts only update on one of them, so the
/// speaker sends both. Request form: sender = target = `ip`, target MAC zero. Reply form:
/// sender = target = `ip`, target MAC = `mac` (RFC 2002 §4.6).
pub fn gratuitous_frames(mac: Mac, ip: Ipv4Addr) -> [Vec<u8>; 2] {
    let request = ArpRepr {
        op: ArpOp::Request,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: Mac::ZERO,
        target_ip: ip,
    };
    let reply = ArpRepr {
        op: ArpOp::Reply,
        target_mac: mac,
        ..request
    };
    [
        request.frame(mac, Mac::BROADCAST),
        reply.frame(mac, Mac::BROADCAST),
    ]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(in super::super) const CLIENT_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
    pub(in super::super) const OUR_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x00, 0xaa]);
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 200);

    /// "Who has 192.168.10.200? Tell 192.168.10.1", as the client's kernel sends it.
    #[rustfmt::skip]
    pub(in super::super) const REQUEST_FRAME: [u8; 60] = [
        // Ethernet: broadcast <- 52:54:00:00:00:01, EtherType ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06,
        // ARP: htype 1 (Ethernet), ptype 0x0800 (IPv4), hlen 6, plen 4, op 1 (request)
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        // sender 52:54:00:00:00:01 192.168.10.1
        0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 192, 168, 10, 1,
        // target 00:00:00:00:00:00 192.168.10.200
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 192, 168, 10, 200,
        // padding to the 60-byte minimum
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// "192.168.10.200 is at 52:54:00:00:00:aa", unicast back to the client.
    #[rustfmt::skip]
    pub(in super::super) const REPLY_FRAME: [u8; 60] = [
        // Ethernet: 52:54:00:00:00:01 <- 52:54:00:00:00:aa, EtherType ARP
        0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 0x08, 0x06,
        // ARP: Ethernet, IPv4, 6, 4, op 2 (reply)
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
        // sender 52:54:00:00:00:aa 192.168.10.200
        0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 192, 168, 10, 200,
        // target 52:54:00:00:00:01 192.168.10.1
        0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 192, 168, 10, 1,
        // padding
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// Gratuitous ARP, request form: broadcast, sender = target = 192.168.10.200, target MAC 0.
    #[rustfmt::skip]
    pub(in super::super) const GRATUITOUS_REQUEST_FRAME: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // op 1 (request)
        0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 192, 168, 10, 200, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 192, 168, 10, 200, // target: same IP, MAC unknown
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// Gratuitous ARP, reply form: broadcast, sender = target = 192.168.10.200 at our MAC.
    #[rustfmt::skip]
    pub(in super::super) const GRATUITOUS_REPLY_FRAME: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // op 2 (reply)
        0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 192, 168, 10, 200, // sender
        0x52, 0x54, 0x00, 0x00, 0x00, 0xaa, 192, 168, 10, 200, // target: ourselves (RFC 2002)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn request() -> ArpRepr {
        ArpRepr {
            op: ArpOp::Request,
            sender_mac: CLIENT_MAC,
            sender_ip: CLIENT_IP,
            target_mac: Mac::ZERO,
            target_ip: VIP,
        }
    }

    #[test]
    fn parses_golden_request() {
        let (eth, req) = ArpRepr::parse_frame(&REQUEST_FRAME).unwrap();
        assert_eq!(eth.dst, Mac::BROADCAST);
        assert_eq!(eth.src, CLIENT_MAC);
        assert_eq!(req, request());
        assert_eq!(request().frame(CLIENT_MAC, Mac::BROADCAST), REQUEST_FRAME);
    }

    #[test]
    fn builds_golden_reply() {
        let reply = ArpRepr::reply_to(&request(), OUR_MAC);
        assert_eq!(
            reply,
            ArpRepr {
                op: ArpOp::Reply,
                sender_mac: OUR_MAC,
                sender_ip: VIP,
                target_mac: CLIENT_MAC,
                target_ip: CLIENT_IP,
            }
        );
        assert_eq!(
            ArpRepr::reply_frame(&request(), OUR_MAC, CLIENT_MAC),
            REPLY_FRAME
        );
        assert_eq!(ArpRepr::parse_frame(&REPLY_FRAME).unwrap().1, reply);
        let mut buf = [0u8; 28];
        assert_eq!(reply.emit(&mut buf), Ok(28));
        assert_eq!(buf, REPLY_FRAME[14..42]);
        assert_eq!(
            reply.emit(&mut [0u8; 27]),
            Err(WireError::BufferTooSmall { need: 28, got: 27 })
        );
    }

    #[test]
    fn builds_golden_gratuitous_frames() {
        let [req, rep] = gratuitous_frames(OUR_MAC, VIP);
        assert_eq!(req, GRATUITOUS_REQUEST_FRAME);
        assert_eq!(rep, GRATUITOUS_REPLY_FRAME);
    }

    #[test]
    fn rejects_each_malformed_field() {
        let packet: [u8; 28] = request().to_bytes();
        let with = |at: usize, bytes: &[u8]| {
            let mut p = packet;
            p[at..at + bytes.len()].copy_from_slice(bytes);
            ArpRepr::parse(&p)
        };
        assert_eq!(with(0, &[0, 6]), Err(WireError::ArpHardwareType(6)));
        assert_eq!(
            with(2, &[0x86, 0xdd]),
            Err(WireError::ArpProtocolType(0x86dd))
        );
        assert_eq!(with(4, &[8]), Err(WireError::ArpHardwareLength(8)));
        assert_eq!(with(5, &[16]), Err(WireError::ArpProtocolLength(16)));
        assert_eq!(with(6, &[0, 3]), Err(WireError::ArpOperation(3)));
        assert_eq!(with(6, &[0, 0]), Err(WireError::ArpOperation(0)));
        for len in 0..28 {
            assert_eq!(
                ArpRepr::parse(&packet[..len]),
                Err(WireError::Truncated {
                    layer: "ARP",
                    need: 28,
                    got: len
                })
            );
        }
        let mut ipv4 = REQUEST_FRAME;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(
            ArpRepr::parse_frame(&ipv4),
            Err(WireError::UnexpectedEtherType {
                expected: 0x0806,
                found: 0x0800
            })
        );
    }

    fn any_arp() -> impl Strategy<Value = ArpRepr> {
        (
            any::<bool>(),
            any::<[u8; 6]>(),
            any::<[u8; 4]>(),
            any::<[u8; 6]>(),
            any::<[u8; 4]>(),
        )
            .prop_map(|(reply, smac, sip, tmac, tip)| ArpRepr {
                op: if reply { ArpOp::Reply } else { ArpOp::Request },
                sender_mac: Mac(smac),
                sender_ip: sip.into(),
                target_mac: Mac(tmac),
                target_ip: tip.into(),
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ArpRepr::parse(&bytes);
            let _ = ArpRepr::parse_frame(&bytes);
        }

        #[test]
        fn parse_never_panics_on_damaged_requests(
            edits in proptest::collection::vec((0usize..60, any::<u8>()), 1..6),
            cut in 0usize..=60,
        ) {
            let mut frame = REQUEST_FRAME.to_vec();
            for (at, byte) in edits {
                frame[at] = byte;
            }
            frame.truncate(cut);
            let _ = ArpRepr::parse_frame(&frame);
        }

        #[test]
        fn emit_then_parse_is_identity(arp in any_arp(), src in any::<[u8; 6]>(), dst in any::<[u8; 6]>()) {
            prop_assert_eq!(ArpRepr::parse(&arp.to_bytes()), Ok(arp));
            let frame = arp.frame(Mac(src), Mac(dst));
            let (eth, parsed) = ArpRepr::parse_frame(&frame).unwrap();
            prop_assert_eq!(parsed, arp);
            prop_assert_eq!((eth.src, eth.dst), (Mac(src), Mac(dst)));
        }
    }
}
