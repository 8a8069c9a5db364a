//! Authenticated gossip envelopes: every datagram between speakers carries an HMAC-SHA256
//! tag under the key from the gossip Secret. A datagram that is short, of another version,
//! or whose tag does not verify is refused before any decoding of its contents.
//!
//! ```text
//! | version (1) = 1 | tag (32) = HMAC-SHA256(key, version || payload) | payload |
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
/// Bytes an envelope adds to its payload.
pub const OVERHEAD: usize = 1 + TAG_LEN;

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

    proptest! {
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
