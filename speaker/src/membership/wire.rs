//! The gossip wire format across versions, so that speakers of different versions keep
//! hearing each other during a rolling upgrade (or a rollback).
//!
//! - **v1** (ferrolb 0.1.0 before this change): envelope version 1, identities without a
//!   standing and with one `default_route` flag per interface ([`SpeakerV1`]).
//! - **v2**: envelope version 2 (which adds a session and a counter against replays, see
//!   [`super::auth`]), identities with a [`Standing`](super::Standing) and a default-route
//!   flag per family ([`Speaker`](super::Speaker)).
//!
//! A v2 speaker speaks v2, except to a peer whose datagrams arrive as v1: to that one it
//! sends v1, downgraded from what foca wrote ([`downgrade`]); what arrives as v1 is
//! upgraded before foca sees it ([`upgrade`]), its identities taken as Ready (a v1 speaker
//! has no other standing, and announced as soon as it could). An identity learnt through
//! v1 that differs from the v2 one only by what v1 cannot carry loses against it (see
//! `Speaker::win_addr_conflict`), so a relay through an old speaker never overrides what a
//! new speaker says of itself.
//!
//! Pure: bytes in, bytes out.

use std::net::{IpAddr, SocketAddr};

use foca::{Header, Member, Message};
use serde::{Deserialize, Serialize};

use super::identity::Interface;
use super::vet::{decode, encode};
use super::{Speaker, Standing};

/// A speaker's identity as v1 writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpeakerV1 {
    pub node: String,
    pub addr: SocketAddr,
    pub generation: u64,
    pub interfaces: Vec<InterfaceV1>,
}

/// An interface as v1 writes it: one default-route flag for both families.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InterfaceV1 {
    pub name: String,
    pub up: bool,
    pub subnets: Vec<(IpAddr, u8)>,
    pub default_route: bool,
}

impl From<&SpeakerV1> for Speaker {
    fn from(v1: &SpeakerV1) -> Speaker {
        Speaker {
            node: v1.node.clone(),
            addr: v1.addr,
            generation: v1.generation,
            standing: Standing::Ready,
            learnt_from_v1: true,
            interfaces: v1
                .interfaces
                .iter()
                .map(|i| Interface {
                    name: i.name.clone(),
                    up: i.up,
                    subnets: i.subnets.clone(),
                    default_route_v4: i.default_route,
                    default_route_v6: i.default_route,
                })
                .collect(),
        }
    }
}

impl From<&Speaker> for SpeakerV1 {
    fn from(v2: &Speaker) -> SpeakerV1 {
        SpeakerV1 {
            node: v2.node.clone(),
            addr: v2.addr,
            generation: v2.generation,
            interfaces: v2
                .interfaces
                .iter()
                .map(|i| InterfaceV1 {
                    name: i.name.clone(),
                    up: i.up,
                    subnets: i.subnets.clone(),
                    default_route: i.has_default_route(),
                })
                .collect(),
        }
    }
}

/// `message` with its identities mapped by `f`.
fn map_message<T, U>(message: &Message<T>, f: impl Fn(&T) -> U) -> Message<U> {
    match message {
        Message::Ping(n) => Message::Ping(*n),
        Message::Ack(n) => Message::Ack(*n),
        Message::PingReq {
            target,
            probe_number,
        } => Message::PingReq {
            target: f(target),
            probe_number: *probe_number,
        },
        Message::IndirectPing {
            origin,
            probe_number,
        } => Message::IndirectPing {
            origin: f(origin),
            probe_number: *probe_number,
        },
        Message::IndirectAck {
            target,
            probe_number,
        } => Message::IndirectAck {
            target: f(target),
            probe_number: *probe_number,
        },
        Message::ForwardedAck {
            origin,
            probe_number,
        } => Message::ForwardedAck {
            origin: f(origin),
            probe_number: *probe_number,
        },
        Message::Announce => Message::Announce,
        Message::Feed => Message::Feed,
        Message::Gossip => Message::Gossip,
        Message::Broadcast => Message::Broadcast,
        Message::TurnUndead => Message::TurnUndead,
    }
}

fn map_all<T, U>(
    header: &Header<T>,
    members: &[Member<T>],
    f: impl Fn(&T) -> U,
) -> (Header<U>, Vec<Member<U>>) {
    let h = Header {
        src: f(&header.src),
        src_incarnation: header.src_incarnation,
        dst: f(&header.dst),
        message: map_message(&header.message, &f),
    };
    let m = members
        .iter()
        .map(|m| Member::new(f(m.id()), m.incarnation(), m.state()))
        .collect();
    (h, m)
}

/// A v1 foca message as v2 (`None` if it does not decode).
pub fn upgrade(payload: &[u8]) -> Option<Vec<u8>> {
    let (header, members, _) = decode::<SpeakerV1>(payload)?;
    let (h, m) = map_all(&header, &members, |s| Speaker::from(s));
    encode(&h, &m)
}

/// A v2 foca message as v1 (`None` if it does not decode).
pub fn downgrade(payload: &[u8]) -> Option<Vec<u8>> {
    let (header, members, _) = decode::<Speaker>(payload)?;
    let (h, m) = map_all(&header, &members, |s| SpeakerV1::from(s));
    encode(&h, &m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::State;

    fn v2(node: &str, standing: Standing) -> Speaker {
        Speaker {
            node: node.into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            generation: 1_700_000_000_123,
            standing,
            learnt_from_v1: false,
            interfaces: vec![Interface {
                name: "eth0".into(),
                up: true,
                subnets: vec![("10.0.0.1".parse().unwrap(), 24)],
                default_route_v4: false,
                default_route_v6: true,
            }],
        }
    }

    /// The bytes a v1 speaker (ferrolb 0.1.0) writes for an Announce from `a` to `b`:
    /// postcard of the v1 layout (node, addr as V4(ip, port), generation as a varint,
    /// interfaces), pinned so that `SpeakerV1` keeps reading what 0.1.0 wrote.
    const V1_ANNOUNCE: &[u8] = &[
        1, b'a', 0, 10, 0, 0, 1, 0x8a, 0x3e, 0xfb, 0xd0, 0x95, 0xff, 0xbc, 0x31, 1, 4, b'e', b't',
        b'h', b'0', 1, 1, 0, 10, 0, 0, 1, 24, 1, 0, 1, b'b', 0, 10, 0, 0, 2, 0x8a, 0x3e, 0, 0, 6,
    ];

    #[test]
    fn a_v1_message_reads_as_v2_with_ready_identities() {
        let v1 = SpeakerV1 {
            node: "a".into(),
            addr: "10.0.0.1:7946".parse().unwrap(),
            generation: 1_700_000_000_123,
            interfaces: vec![InterfaceV1 {
                name: "eth0".into(),
                up: true,
                subnets: vec![("10.0.0.1".parse().unwrap(), 24)],
                default_route: true,
            }],
        };
        let dst = SpeakerV1 {
            node: "b".into(),
            addr: "10.0.0.2:7946".parse().unwrap(),
            generation: 0,
            interfaces: vec![],
        };
        let header = Header {
            src: v1.clone(),
            src_incarnation: 0,
            dst: dst.clone(),
            message: Message::Announce,
        };
        let bytes = encode(&header, &[]).unwrap();
        assert_eq!(bytes, V1_ANNOUNCE, "the v1 layout is what 0.1.0 wrote");
        let (h, _, _) = decode::<Speaker>(&upgrade(&bytes).unwrap()).unwrap();
        assert_eq!(h.src.standing, Standing::Ready);
        assert!(h.src.learnt_from_v1);
        assert!(h.src.interfaces[0].default_route_v4 && h.src.interfaces[0].default_route_v6);
        assert_eq!(h.dst.node, "b");
        assert_eq!(h.message, Message::Announce);
    }

    #[test]
    fn a_v2_message_downgrades_to_what_v1_reads_and_back() {
        let header = Header {
            src: v2("a", Standing::Starting),
            src_incarnation: 3,
            dst: v2("b", Standing::Ready),
            message: Message::PingReq {
                target: v2("c", Standing::Stale),
                probe_number: 9,
            },
        };
        let members = vec![
            Member::new(v2("c", Standing::Ready), 2, State::Suspect),
            Member::new(v2("d", Standing::Ready), 0, State::Down),
        ];
        let bytes = encode(&header, &members).unwrap();
        let old = downgrade(&bytes).unwrap();
        let (h1, m1, _) = decode::<SpeakerV1>(&old).expect("a v1 speaker decodes it");
        assert_eq!(h1.src.node, "a");
        assert!(
            h1.src.interfaces[0].default_route,
            "either family's default"
        );
        assert_eq!(h1.src_incarnation, 3);
        assert_eq!(m1.len(), 2);
        assert_eq!(m1[0].state(), State::Suspect);
        assert!(matches!(
            h1.message,
            Message::PingReq {
                probe_number: 9,
                ..
            }
        ));
        // Back up, what v1 could not carry is gone: standing Ready, both default routes.
        let (h2, m2, _) = decode::<Speaker>(&upgrade(&old).unwrap()).unwrap();
        assert_eq!(h2.src.standing, Standing::Ready);
        assert_eq!(m2[1].id().node, "d");
        assert_eq!(m2[1].state(), State::Down);
    }

    #[test]
    fn garbage_neither_upgrades_nor_downgrades() {
        for g in [&[][..], &[0xff; 20][..]] {
            assert_eq!(upgrade(g), None);
            assert_eq!(downgrade(g), None);
        }
    }
}
