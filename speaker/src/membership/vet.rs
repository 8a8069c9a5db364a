//! Checks on an authenticated gossip message before foca sees it, so that no datagram (even
//! one sealed with the right key, by a buggy or compromised peer) can take over another
//! speaker's membership:
//!
//! - the sender's identity must carry the address the datagram came from (its IP: ports
//!   are not compared, so relays on one host still work): a datagram cannot speak for
//!   another node's address;
//! - while a node is a live member at one address, an identity that puts it at another is
//!   refused: a node's address cannot be taken over while its speaker is alive (a node that
//!   really moved is taken up once its old identity is declared down);
//! - no identity may carry a generation further ahead of this speaker's clock than
//!   [`MAX_GENERATION_LEAD`]. Generations are wall-clock milliseconds and the higher one
//!   wins, so `u64::MAX` would win for ever and lock the real speaker out of its name;
//! - an identity that claims this speaker's own node but is not its own is reported, so
//!   that the speaker takes a generation above it and wins its name back at once (foca on
//!   its own would only add one to its generation, which loses to a higher rival).
//!
//! A sender, target or named identity that fails refuses the whole message; a piggybacked
//! member that fails is taken out and the rest of the message goes on (one bad update must
//! not cost a good peer its probe answers).
//!
//! Pure: bytes, the sender, the live members and the clock in; a verdict out. The layout
//! read here is foca's (postcard `Header`, then a big-endian `u16` count of postcard
//! `Member`s, then custom broadcasts, which ferrolb does not use and drops).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use foca::{Codec, Header, Member, Message, PostcardCodec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Speaker;

/// How far ahead of this speaker's clock another speaker's generation may be: generous,
/// since refusing a peer whose clock runs ahead would cut it off.
pub const MAX_GENERATION_LEAD: Duration = Duration::from_secs(24 * 3600);

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it does not decode")]
    Malformed,
    #[error("its sender claims {claimed}, but it came from {from}")]
    NotTheSender {
        claimed: SocketAddr,
        from: SocketAddr,
    },
    #[error("it puts node {node} at {claimed}, but that node is a live member at {known}")]
    AddressTaken {
        node: String,
        claimed: SocketAddr,
        known: SocketAddr,
    },
    #[error("it carries node {node} at generation {generation}, beyond any clock")]
    ImplausibleGeneration { node: String, generation: u64 },
}

/// A message that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vetted<'a> {
    /// What to hand to foca: the message, without the members that were taken out.
    pub payload: Cow<'a, [u8]>,
    /// Why members were taken out, one entry each.
    pub dropped: Vec<Refusal>,
    /// The highest generation among identities that claim this speaker's node but are not
    /// its current identity, when it is not below the current one's.
    pub rival_generation: Option<u64>,
}

/// Decodes a foca message: its header, its piggybacked members, and whether bytes follow
/// them (custom broadcasts).
pub fn decode<T: DeserializeOwned + PartialEq>(
    payload: &[u8],
) -> Option<(Header<T>, Vec<Member<T>>, bool)> {
    let (header, mut rest): (Header<T>, &[u8]) = postcard::take_from_bytes(payload).ok()?;
    let mut members = Vec::new();
    if rest.len() >= 2 && header.message != Message::Broadcast {
        let count = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        for _ in 0..count {
            let (m, r): (Member<T>, &[u8]) = postcard::take_from_bytes(rest).ok()?;
            members.push(m);
            rest = r;
        }
    }
    Some((header, members, !rest.is_empty()))
}

/// Encodes a foca message as [`decode`] reads it (no custom broadcasts).
pub fn encode<T: Serialize + DeserializeOwned>(
    header: &Header<T>,
    members: &[Member<T>],
) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    PostcardCodec.encode_header(header, &mut buf).ok()?;
    if !members.is_empty() {
        let count = u16::try_from(members.len()).ok()?;
        buf.extend_from_slice(&count.to_be_bytes());
        for m in members {
            PostcardCodec.encode_member(m, &mut buf).ok()?;
        }
    }
    Some(buf)
}

/// The identity a message names besides its header's sender and target.
pub fn named<T>(message: &Message<T>) -> Option<&T> {
    match message {
        Message::PingReq { target, .. } | Message::IndirectAck { target, .. } => Some(target),
        Message::IndirectPing { origin, .. } | Message::ForwardedAck { origin, .. } => Some(origin),
        _ => None,
    }
}

/// Vets `payload`, received from `from`, for the speaker `me` whose clock reads `now_ms`;
/// `live` gives the address of a node that is a live (alive or suspect) member.
pub fn vet<'a>(
    payload: &'a [u8],
    from: SocketAddr,
    me: &Speaker,
    now_ms: u64,
    live: impl Fn(&str) -> Option<SocketAddr>,
) -> Result<Vetted<'a>, Refusal> {
    let (header, members, trailer) = decode::<Speaker>(payload).ok_or(Refusal::Malformed)?;
    if header.src.addr.ip() != from.ip() {
        return Err(Refusal::NotTheSender {
            claimed: header.src.addr,
            from,
        });
    }
    let limit = now_ms.saturating_add(u64::try_from(MAX_GENERATION_LEAD.as_millis()).unwrap_or(0));
    let check = |id: &Speaker| -> Result<(), Refusal> {
        if id.generation > limit {
            return Err(Refusal::ImplausibleGeneration {
                node: id.node.clone(),
                generation: id.generation,
            });
        }
        if id.node != me.node
            && let Some(known) = live(&id.node)
            && known != id.addr
        {
            return Err(Refusal::AddressTaken {
                node: id.node.clone(),
                claimed: id.addr,
                known,
            });
        }
        Ok(())
    };
    let mut rival_generation = None;
    let mut rival = |id: &Speaker| {
        if id.node == me.node && id != me && id.generation >= me.generation {
            rival_generation = rival_generation.max(Some(id.generation));
        }
    };
    for id in [&header.src, &header.dst]
        .into_iter()
        .chain(named(&header.message))
    {
        check(id)?;
        rival(id);
    }
    let mut dropped = Vec::new();
    let mut kept = Vec::with_capacity(members.len());
    for m in &members {
        match check(m.id()) {
            Ok(()) => {
                rival(m.id());
                kept.push(m.clone());
            }
            Err(e) => dropped.push(e),
        }
    }
    let payload = if dropped.is_empty() && !trailer {
        Cow::Borrowed(payload)
    } else {
        Cow::Owned(encode(&header, &kept).ok_or(Refusal::Malformed)?)
    };
    Ok(Vetted {
        payload,
        dropped,
        rival_generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speaker(node: &str, addr: &str, generation: u64) -> Speaker {
        Speaker {
            node: node.into(),
            addr: addr.parse().unwrap(),
            generation,
            standing: super::super::Standing::Ready,
            learnt_from_v1: false,
            interfaces: Vec::new(),
        }
    }

    fn message(
        src: Speaker,
        dst: Speaker,
        msg: Message<Speaker>,
        members: &[Member<Speaker>],
    ) -> Vec<u8> {
        let header = Header {
            src,
            src_incarnation: 0,
            dst,
            message: msg,
        };
        encode(&header, members).unwrap()
    }

    const NOW: u64 = 1_700_000_000_000;

    fn nobody(_: &str) -> Option<SocketAddr> {
        None
    }

    #[test]
    fn the_sender_must_be_where_its_identity_says() {
        let me = speaker("a", "10.0.0.1:7946", NOW);
        let b = speaker("b", "10.0.0.2:7946", NOW);
        let m = message(b.clone(), me.clone(), Message::Ping(1), &[]);
        let ok = vet(&m, "10.0.0.2:7946".parse().unwrap(), &me, NOW, nobody).unwrap();
        assert_eq!(ok.payload, Cow::Borrowed(&m[..]), "passed on untouched");
        // Another port of the same host is the same sender (a relay on the host).
        assert!(vet(&m, "10.0.0.2:40000".parse().unwrap(), &me, NOW, nobody).is_ok());
        assert_eq!(
            vet(&m, "10.0.0.66:7946".parse().unwrap(), &me, NOW, nobody),
            Err(Refusal::NotTheSender {
                claimed: b.addr,
                from: "10.0.0.66:7946".parse().unwrap()
            })
        );
    }

    #[test]
    fn a_live_members_address_cannot_be_taken_over() {
        let me = speaker("a", "10.0.0.1:7946", NOW);
        let live = |n: &str| (n == "b").then(|| "10.0.0.2:7946".parse().unwrap());
        let impostor = speaker("b", "10.0.0.66:7946", NOW + 1);
        let from: SocketAddr = "10.0.0.66:7946".parse().unwrap();
        let m = message(impostor.clone(), me.clone(), Message::Announce, &[]);
        assert!(matches!(
            vet(&m, from, &me, NOW, live),
            Err(Refusal::AddressTaken { .. })
        ));
        // Relayed by a good peer, the impostor is taken out and the rest goes on.
        let c = speaker("c", "10.0.0.3:7946", NOW);
        let d = speaker("d", "10.0.0.4:7946", NOW);
        let m = message(
            c.clone(),
            me.clone(),
            Message::Gossip,
            &[Member::alive(impostor), Member::alive(d.clone())],
        );
        let v = vet(&m, c.addr, &me, NOW, live).unwrap();
        assert_eq!(v.dropped.len(), 1);
        let (_, kept, _) = decode::<Speaker>(&v.payload).unwrap();
        assert_eq!(kept, vec![Member::alive(d)]);
        // Once b is no longer live, it may show up elsewhere (a node that moved).
        assert!(
            vet(&m, c.addr, &me, NOW, nobody)
                .unwrap()
                .dropped
                .is_empty()
        );
    }

    #[test]
    fn a_generation_beyond_the_clock_is_refused() {
        let me = speaker("a", "10.0.0.1:7946", NOW);
        let b = speaker("b", "10.0.0.2:7946", NOW);
        let from: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let forever = speaker("c", "10.0.0.3:7946", u64::MAX);
        for m in [
            message(
                speaker("b", "10.0.0.2:7946", u64::MAX),
                me.clone(),
                Message::Announce,
                &[],
            ),
            message(
                b.clone(),
                me.clone(),
                Message::PingReq {
                    target: forever.clone(),
                    probe_number: 1,
                },
                &[],
            ),
        ] {
            assert!(
                matches!(
                    vet(&m, from, &me, NOW, nobody),
                    Err(Refusal::ImplausibleGeneration { .. })
                ),
                "{:?}",
                vet(&m, from, &me, NOW, nobody)
            );
        }
        let m = message(
            b.clone(),
            me.clone(),
            Message::Gossip,
            &[Member::alive(forever)],
        );
        let v = vet(&m, from, &me, NOW, nobody).unwrap();
        assert!(matches!(
            v.dropped[..],
            [Refusal::ImplausibleGeneration { .. }]
        ));
        // A clock a few hours ahead is still a peer.
        let ahead = speaker("c", "10.0.0.3:7946", NOW + 3 * 3600 * 1000);
        let m = message(b, me.clone(), Message::Gossip, &[Member::alive(ahead)]);
        assert!(vet(&m, from, &me, NOW, nobody).unwrap().dropped.is_empty());
    }

    #[test]
    fn a_rival_identity_of_this_node_is_reported_with_its_generation() {
        let me = speaker("a", "10.0.0.1:7946", NOW);
        let b = speaker("b", "10.0.0.2:7946", NOW);
        let from: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let rival = speaker("a", "10.0.0.99:7946", NOW + 5000);
        let older = speaker("a", "10.0.0.1:7946", NOW - 5000);
        let m = message(
            b.clone(),
            me.clone(),
            Message::Gossip,
            &[Member::alive(older.clone()), Member::alive(rival)],
        );
        assert_eq!(
            vet(&m, from, &me, NOW, nobody).unwrap().rival_generation,
            Some(NOW + 5000)
        );
        // Talk of this speaker's earlier identities (after a restart) is no rival.
        let m = message(b, me.clone(), Message::Gossip, &[Member::down(older)]);
        assert_eq!(
            vet(&m, from, &me, NOW, nobody).unwrap().rival_generation,
            None
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let me = speaker("a", "10.0.0.1:7946", NOW);
        for g in [&[][..], &[0xff; 30][..], &[1, 2, 3][..]] {
            assert_eq!(
                vet(g, "10.0.0.2:1".parse().unwrap(), &me, NOW, nobody),
                Err(Refusal::Malformed)
            );
        }
    }

    /// Writes well-formed messages, as the gossip fuzz target's receiver would get them
    /// (from node2 at 10.0.0.2 to node1 at 10.0.0.1), into `$FERROLB_FUZZ_SEEDS`:
    /// `FERROLB_FUZZ_SEEDS=speaker/fuzz/seeds/gossip cargo test -p ferrolb-speaker --lib
    /// write_gossip_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes files; run by hand to refresh speaker/fuzz/seeds/gossip"]
    fn write_gossip_fuzz_seeds() {
        let Some(dir) = std::env::var_os("FERROLB_FUZZ_SEEDS") else {
            panic!("set FERROLB_FUZZ_SEEDS to the directory to write");
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = 1_800_000_000_000;
        let me = speaker("node1", "10.0.0.1:7946", now - 5_000);
        let b = speaker("node2", "10.0.0.2:7946", now - 9_000);
        let c = speaker("node3", "10.0.0.3:7946", now - 7_000);
        let mut with_ifaces = b.clone();
        with_ifaces.interfaces = vec![super::super::identity::Interface {
            name: "eth0".into(),
            up: true,
            subnets: vec![
                ("10.0.0.2".parse().unwrap(), 24),
                ("fd00::2".parse().unwrap(), 64),
            ],
            default_route_v4: true,
            default_route_v6: true,
        }];
        let seeds = [
            (
                "ping",
                message(b.clone(), me.clone(), Message::Ping(1), &[]),
            ),
            (
                "announce",
                message(with_ifaces.clone(), me.clone(), Message::Announce, &[]),
            ),
            (
                "gossip",
                message(
                    b.clone(),
                    me.clone(),
                    Message::Gossip,
                    &[Member::alive(c.clone()), Member::alive(with_ifaces)],
                ),
            ),
            (
                "ping_req",
                message(
                    b.clone(),
                    me.clone(),
                    Message::PingReq {
                        target: c.clone(),
                        probe_number: 3,
                    },
                    &[],
                ),
            ),
            (
                "forwarded_ack",
                message(
                    b.clone(),
                    me.clone(),
                    Message::ForwardedAck {
                        origin: c,
                        probe_number: 4,
                    },
                    &[],
                ),
            ),
        ];
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), &bytes).unwrap();
            if let Some(v1) = super::super::wire::downgrade(&bytes) {
                std::fs::write(dir.join(format!("{name}_v1")), v1).unwrap();
            }
        }
    }
}
