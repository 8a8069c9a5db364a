//! Authenticated gossip envelopes: every datagram between speakers carries an HMAC-SHA256
//! tag under a key from the gossip Secret. A datagram that is short, of an unknown version,
//! or whose tag does not verify is refused before any decoding of its contents.
//!
//! ```text
//! v1: | 1 | tag (32) = HMAC(key, 1 || payload) | payload |
//! v2: | 2 | tag (32) = HMAC(key, 2 || kind || session || counter || payload)
//!     | kind (1) | session (8, big-endian) | counter (8, big-endian) | payload |
//! ```
//!
//! v2 lets a receiver refuse replays: `session` is fixed for the life of the sending
//! process and `counter` grows with every datagram it sends (see `super::replay`). `kind`
//! says what the payload is ([`Kind`]). Which version a speaker sends to whom is
//! `super::wire`'s business.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const VERSION_2: u8 = 2;
const TAG_LEN: usize = 32;
/// Bytes a v1 envelope adds to its payload.
pub const OVERHEAD: usize = 1 + TAG_LEN;
/// Bytes a v2 envelope adds to its payload.
pub const OVERHEAD_V2: usize = 1 + TAG_LEN + 1 + 8 + 8;

/// What a v2 envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A foca message (membership).
    Membership,
    /// What the sender announces (`super::claims`).
    Claims,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Membership => 0,
            Kind::Claims => 1,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Membership),
            1 => Some(Kind::Claims),
            _ => None,
        }
    }
}

/// An opened envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    V1(&'a [u8]),
    V2 {
        kind: Kind,
        session: u64,
        counter: u64,
        payload: &'a [u8],
    },
}

/// Why an envelope was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("datagram too short for a gossip envelope")]
    Short,
    #[error("unknown gossip envelope version {0}")]
    Version(u8),
    #[error("gossip envelope tag does not verify (wrong key or tampered)")]
    BadTag,
}

/// A gossip key. At least 16 bytes, so that a mistaken short key is caught at start-up.
#[derive(Clone)]
pub struct GossipKey(Vec<u8>);

impl PartialEq for GossipKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for GossipKey {}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    pub fn new(bytes: &[u8]) -> Result<GossipKey, String> {
        if bytes.len() < 16 {
            return Err(format!(
                "the gossip key has {} bytes; it needs at least 16",
                bytes.len()
            ));
        }
        Ok(GossipKey(bytes.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; the error branch cannot happen.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
    }
}

/// Wraps a payload for the wire.
pub fn seal(key: &GossipKey, payload: &[u8]) -> Vec<u8> {
    let mut mac = key.mac();
    mac.update(&[VERSION]);
    mac.update(payload);
    let tag = mac.finalize().into_bytes();
    let mut out = Vec::with_capacity(OVERHEAD + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&tag);
    out.extend_from_slice(payload);
    out
}

/// Checks an envelope and returns its payload.
pub fn open<'a>(key: &GossipKey, datagram: &'a [u8]) -> Result<&'a [u8], AuthError> {
    let (&version, rest) = datagram.split_first().ok_or(AuthError::Short)?;
    if version != VERSION {
        return Err(AuthError::Version(version));
    }
    if rest.len() < TAG_LEN {
        return Err(AuthError::Short);
    }
    let (tag, payload) = rest.split_at(TAG_LEN);
    let mut mac = key.mac();
    mac.update(&[version]);
    mac.update(payload);
    mac.verify_slice(tag).map_err(|_| AuthError::BadTag)?;
    Ok(payload)
}

/// Wraps a payload in a v2 envelope.
pub fn seal_v2(key: &GossipKey, kind: Kind, session: u64, counter: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD_V2 + payload.len());
    out.push(VERSION_2);
    out.extend_from_slice(&[0; TAG_LEN]);
    out.push(kind.byte());
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(payload);
    let mut mac = key.mac();
    mac.update(&[VERSION_2]);
    mac.update(&out[1 + TAG_LEN..]);
    let tag = mac.finalize().into_bytes();
    out[1..1 + TAG_LEN].copy_from_slice(&tag);
    out
}

/// Opens a v1 or v2 envelope with any of `keys`.
pub fn open_any<'a, 'k>(
    keys: impl IntoIterator<Item = &'k GossipKey>,
    datagram: &'a [u8],
) -> Result<Opened<'a>, AuthError> {
    let (&version, rest) = datagram.split_first().ok_or(AuthError::Short)?;
    match version {
        VERSION => {
            for key in keys {
                match open(key, datagram) {
                    Ok(p) => return Ok(Opened::V1(p)),
                    Err(AuthError::BadTag) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(AuthError::BadTag)
        }
        VERSION_2 => {
            if rest.len() < OVERHEAD_V2 - 1 {
                return Err(AuthError::Short);
            }
            let (tag, signed) = rest.split_at(TAG_LEN);
            let verified = keys.into_iter().any(|key| {
                let mut mac = key.mac();
                mac.update(&[VERSION_2]);
                mac.update(signed);
                mac.verify_slice(tag).is_ok()
            });
            if !verified {
                return Err(AuthError::BadTag);
            }
            let kind = Kind::from_byte(signed[0]).ok_or(AuthError::Version(version))?;
            let mut word = [0u8; 8];
            word.copy_from_slice(&signed[1..9]);
            let session = u64::from_be_bytes(word);
            word.copy_from_slice(&signed[9..17]);
            let counter = u64::from_be_bytes(word);
            Ok(Opened::V2 {
                kind,
                session,
                counter,
                payload: &signed[17..],
            })
        }
        other => Err(AuthError::Version(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> GossipKey {
        GossipKey::new(&[b; 32]).unwrap()
    }

    #[test]
    fn sealed_payloads_open_with_the_same_key_only() {
        let sealed = seal(&key(1), b"hello");
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(open(&key(1), &sealed), Ok(&b"hello"[..]));
        assert_eq!(open(&key(2), &sealed), Err(AuthError::BadTag));
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let mut sealed = seal(&key(1), b"payload");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(open(&key(1), &sealed), Err(AuthError::BadTag));
        assert_eq!(open(&key(1), &[]), Err(AuthError::Short));
        assert_eq!(open(&key(1), &[1, 2, 3]), Err(AuthError::Short));
        assert_eq!(open(&key(1), &[9; 40]), Err(AuthError::Version(9)));
        assert!(GossipKey::new(b"short").is_err());
    }

    #[test]
    fn v2_envelopes_carry_kind_session_and_counter_under_the_tag() {
        let sealed = seal_v2(&key(1), Kind::Claims, 7, 42, b"hello");
        assert_eq!(sealed.len(), OVERHEAD_V2 + 5);
        assert_eq!(
            open_any([&key(2), &key(1)], &sealed),
            Ok(Opened::V2 {
                kind: Kind::Claims,
                session: 7,
                counter: 42,
                payload: b"hello"
            })
        );
        assert_eq!(open_any([&key(2)], &sealed), Err(AuthError::BadTag));
        // The counter is under the tag: a replay cannot be dressed up as new.
        let mut bumped = sealed.clone();
        bumped[1 + TAG_LEN + 1 + 8 + 7] ^= 1;
        assert_eq!(open_any([&key(1)], &bumped), Err(AuthError::BadTag));
        // v1 still opens, with any of the keys.
        let old = seal(&key(1), b"old");
        assert_eq!(open_any([&key(3), &key(1)], &old), Ok(Opened::V1(b"old")));
        assert_eq!(open_any([&key(1)], &[2u8; 20]), Err(AuthError::Short));
        assert_eq!(open_any([&key(1)], &[3u8; 60]), Err(AuthError::Version(3)));
    }

    proptest! {
        #[test]
        fn random_datagrams_never_open_as_v2(data in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(open_any([&key(7)], &data).is_err());
        }

        #[test]
        fn random_datagrams_never_open(data in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(open(&key(7), &data).is_err());
        }

        #[test]
        fn seal_open_round_trips(data in prop::collection::vec(any::<u8>(), 0..500)) {
            let sealed = seal(&key(3), &data);
            prop_assert_eq!(open(&key(3), &sealed), Ok(&data[..]));
        }
    }
}
