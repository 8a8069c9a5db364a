//! Feeds arbitrary bytes to every parser in the speaker's `wire` module, and checks that
//! whatever parses re-emits to the same value and that every accepted solicitation gets an
//! answer that itself parses.
//!
//! The module is compiled in by path, not through the `ferrolb-speaker` crate: it is pure and
//! depends on `thiserror` and `pnet_packet` only, and this keeps the instrumented build from
//! compiling kube, tokio and the rest of the speaker's dependencies.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/wire/mod.rs"]
mod wire;

use wire::ipv6::{Ipv6Header, icmpv6_checksum};
use wire::ndp::{NaRepr, NsRepr, solicited_na_frame};
use wire::{ArpRepr, EthernetFrame, Mac};

const OUR_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x00, 0x00, 0xaa]);

fuzz_target!(|data: &[u8]| {
    let _ = EthernetFrame::parse(data);
    let _ = Ipv6Header::parse(data);
    let _ = Ipv6Header::parse_frame(data);

    for arp in [
        ArpRepr::parse(data),
        ArpRepr::parse_frame(data).map(|(_, a)| a),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(ArpRepr::parse(&arp.to_bytes()), Ok(arp));
    }

    if let Ok((eth, ns)) = NsRepr::parse_frame(data) {
        check_ns(ns, eth.src);
    }
    if let Ok(ns) = NsRepr::parse_ipv6(data) {
        check_ns(ns, Mac::ZERO);
    }
    if let Ok((_, na)) = NaRepr::parse_frame(data) {
        check_na(na);
    }
    if let Ok(na) = NaRepr::parse_ipv6(data) {
        check_na(na);
    }

    // The raw-socket path: addresses and hop limit up front, then the ICMPv6 message as is.
    if let Some((head, message)) = data.split_first_chunk::<33>() {
        let (src, dst, hop_limit) = addresses(head);
        if let Ok(ns) = NsRepr::parse_icmpv6(message, src, dst, hop_limit) {
            check_ns(ns, Mac::ZERO);
        }
        if let Ok(na) = NaRepr::parse_icmpv6(message, src, dst, hop_limit) {
            check_na(na);
        }
    }

    // Random bytes rarely carry a valid checksum: repair it so mutations of an IPv6 frame
    // reach the option and DAD checks behind it.
    if let Ok((_, ip, payload)) = Ipv6Header::parse_frame(data) {
        let mut message = payload.to_vec();
        let sum = icmpv6_checksum(&ip.src, &ip.dst, payload); // ignores the field itself
        if let Some(field) = message.get_mut(2..4) {
            field.copy_from_slice(&sum.to_be_bytes());
        }
        if let Ok(ns) = NsRepr::parse_icmpv6(&message, ip.src, ip.dst, ip.hop_limit) {
            check_ns(ns, Mac::ZERO);
        }
        if let Ok(na) = NaRepr::parse_icmpv6(&message, ip.src, ip.dst, ip.hop_limit) {
            check_na(na);
        }
    }
});

fn addresses(head: &[u8; 33]) -> (std::net::Ipv6Addr, std::net::Ipv6Addr, u8) {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&head[..16]);
    dst.copy_from_slice(&head[16..32]);
    (src.into(), dst.into(), head[32])
}

fn check_ns(ns: NsRepr, requester: Mac) {
    assert_eq!(
        NsRepr::parse_icmpv6(&ns.icmpv6_bytes(), ns.src, ns.dst, 255),
        Ok(ns)
    );
    let answer = solicited_na_frame(&ns, OUR_MAC, requester);
    let (_, na) = NaRepr::parse_frame(&answer).expect("our answer to a valid NS must parse");
    assert_eq!(na.target, ns.target);
    assert_eq!(na.solicited, !ns.is_dad());
}

fn check_na(na: NaRepr) {
    assert_eq!(
        NaRepr::parse_icmpv6(&na.icmpv6_bytes(), na.src, na.dst, 255),
        Ok(na)
    );
}
