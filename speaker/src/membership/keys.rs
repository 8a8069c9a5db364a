//! The gossip keys and their rotation without a restart.
//!
//! The gossip Secret holds one or more keys: data entry `key` is the one datagrams are
//! sealed with; every entry whose name starts with `key.` (`key.next`, `key.previous`, ...)
//! is accepted as well. Without `key`, the first `key.*` entry by name seals. Rotation is
//! then three edits, each taken up by every running speaker within its next read of the
//! Secret (every `KEY_POLL`, or at once when a datagram arrives that no known key opens):
//!
//! 1. add the new key as `key.next`: every speaker accepts it, none seals with it yet;
//! 2. roll: `key` = the new key, `key.previous` = the old one (and drop `key.next`): every
//!    speaker seals with the new key, which all of them already accept;
//! 3. remove `key.previous`.
//!
//! Edits that come faster than the speakers read them cannot split the cluster either: a
//! key that leaves the Secret is still accepted for [`RETIRED_KEY_GRACE`], and a speaker
//! that receives a datagram sealed with a key it does not know reads the Secret again at
//! once. A Secret that disappears changes nothing (the keys in use stay), so the
//! controller's re-creation of a deleted Secret with a fresh key is a rotation done in one
//! step: speakers that read it first seal with the new key, the others read the Secret as
//! soon as such a datagram reaches them, and the old key is still accepted meanwhile.
//!
//! Pure: the Secret's data in, keys out; the clock is the caller's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::auth::{self, AuthError, GossipKey};

/// How long a key removed from the Secret is still accepted.
pub const RETIRED_KEY_GRACE: Duration = Duration::from_secs(300);

/// The Secret's data entry that holds the sealing key.
pub const SEALING_ENTRY: &str = ferrolb_crds::names::GOSSIP_SECRET_KEY;

/// The keys one speaker seals with (the first) and accepts (all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<GossipKey>,
}

/// Why the Secret's data gives no keyring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("it has no data entry `key` or `key.*`")]
    NoKey,
    #[error("entry {entry}: {reason}")]
    Invalid { entry: String, reason: String },
}

impl Keyring {
    /// One key, sealing and accepted.
    pub fn single(key: GossipKey) -> Keyring {
        Keyring { keys: vec![key] }
    }

    /// `keys[0]` seals; duplicates are dropped. `None` without any key.
    pub fn new(keys: Vec<GossipKey>) -> Option<Keyring> {
        let mut out: Vec<GossipKey> = Vec::new();
        for k in keys {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        (!out.is_empty()).then_some(Keyring { keys: out })
    }

    /// The keys in the Secret's data (see the module documentation). A malformed entry
    /// (shorter than 16 bytes) refuses the whole Secret, so that a typo never removes a key
    /// the cluster is using.
    pub fn from_secret_data<'a>(
        data: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Keyring, KeyringError> {
        let mut sealing = None;
        let mut others: BTreeMap<&str, GossipKey> = BTreeMap::new();
        for (name, value) in data {
            let is_key = name == SEALING_ENTRY
                || name
                    .strip_prefix(SEALING_ENTRY)
                    .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1);
            if !is_key {
                continue;
            }
            let key = GossipKey::new(value).map_err(|reason| KeyringError::Invalid {
                entry: name.to_string(),
                reason,
            })?;
            if name == SEALING_ENTRY {
                sealing = Some(key);
            } else {
                others.insert(name, key);
            }
        }
        let keys: Vec<GossipKey> = sealing.into_iter().chain(others.into_values()).collect();
        Keyring::new(keys).ok_or(KeyringError::NoKey)
    }

    pub fn sealing(&self) -> &GossipKey {
        // `new` never builds an empty ring.
        &self.keys[0]
    }

    pub fn keys(&self) -> &[GossipKey] {
        &self.keys
    }
}

/// The keys in use over time: the current ring, and keys that left it, still accepted
/// until their grace ends.
#[derive(Clone, Debug)]
pub struct KeyChain {
    ring: Keyring,
    retired: Vec<(GossipKey, Instant)>,
}

impl KeyChain {
    pub fn new(ring: Keyring) -> KeyChain {
        KeyChain {
            ring,
            retired: Vec::new(),
        }
    }

    /// Takes a new ring read from the Secret. Returns whether the sealing key changed.
    pub fn update(&mut self, ring: Keyring, now: Instant) -> bool {
        if ring == self.ring {
            return false;
        }
        let sealing_changed = ring.sealing() != self.ring.sealing();
        let old = std::mem::replace(&mut self.ring, ring);
        // A key back in the ring is no longer retired; keys that left start their grace.
        self.retired.retain(|(k, _)| !self.ring.keys.contains(k));
        for k in old.keys {
            if !self.ring.keys.contains(&k) && self.retired.iter().all(|(r, _)| *r != k) {
                self.retired.push((k, now + RETIRED_KEY_GRACE));
            }
        }
        sealing_changed
    }

    /// The key datagrams are sealed with.
    pub fn sealing(&self) -> &GossipKey {
        self.ring.sealing()
    }

    /// Keys accepted at `now`: the ring's, then retired ones within their grace.
    pub fn accepted(&self, now: Instant) -> impl Iterator<Item = &GossipKey> {
        self.ring.keys.iter().chain(
            self.retired
                .iter()
                .filter(move |(_, until)| now < *until)
                .map(|(k, _)| k),
        )
    }

    /// Forgets retired keys whose grace has ended.
    pub fn expire(&mut self, now: Instant) {
        self.retired.retain(|(_, until)| now < *until);
    }

    /// Opens a v1 envelope with any accepted key.
    pub fn open_v1<'a>(&self, datagram: &'a [u8], now: Instant) -> Result<&'a [u8], AuthError> {
        let mut last = AuthError::BadTag;
        for key in self.accepted(now) {
            match auth::open(key, datagram) {
                Ok(p) => return Ok(p),
                Err(AuthError::BadTag) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> GossipKey {
        GossipKey::new(&[b; 32]).unwrap()
    }

    fn ring(data: &[(&str, &[u8])]) -> Result<Keyring, KeyringError> {
        Keyring::from_secret_data(data.iter().copied())
    }

    #[test]
    fn key_seals_and_every_key_entry_is_accepted() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let r = ring(&[
            ("key.previous", &c),
            ("key", &a),
            ("key.next", &b),
            ("other", &[0; 4]),
        ])
        .unwrap();
        assert_eq!(r.sealing(), &key(1));
        assert_eq!(r.keys(), &[key(1), key(2), key(3)], "key, then by name");
        // Without `key`, the first `key.*` by name seals.
        let r = ring(&[("key.z", &c), ("key.a", &b)]).unwrap();
        assert_eq!(r.sealing(), &key(2));
        // The controller's Secret: one entry `key`.
        assert_eq!(ring(&[("key", &a)]).unwrap(), Keyring::single(key(1)));
    }

    #[test]
    fn a_secret_without_keys_or_with_a_short_one_gives_no_keyring() {
        assert_eq!(ring(&[]), Err(KeyringError::NoKey));
        assert_eq!(
            ring(&[("keys", &[1; 32]), ("key.", &[1; 32])]),
            Err(KeyringError::NoKey)
        );
        let e = ring(&[("key", &[1; 32]), ("key.next", b"short")]).unwrap_err();
        assert!(e.to_string().starts_with("entry key.next: "), "{e}");
    }

    #[test]
    fn a_rotation_never_stops_accepting_a_key_a_peer_may_still_seal_with() {
        let t0 = Instant::now();
        let mut chain = KeyChain::new(Keyring::single(key(1)));
        let sealed_old = auth::seal(&key(1), b"old");
        let sealed_new = auth::seal(&key(2), b"new");
        assert!(chain.open_v1(&sealed_new, t0).is_err());

        // 1. add the new key: accepted, not sealing.
        assert!(!chain.update(Keyring::new(vec![key(1), key(2)]).unwrap(), t0));
        assert_eq!(chain.sealing(), &key(1));
        assert_eq!(chain.open_v1(&sealed_new, t0), Ok(&b"new"[..]));
        // 2. roll.
        assert!(chain.update(Keyring::new(vec![key(2), key(1)]).unwrap(), t0));
        assert_eq!(chain.sealing(), &key(2));
        // 3. remove the old key: still accepted during the grace, then not.
        let t3 = t0 + Duration::from_secs(1);
        assert!(!chain.update(Keyring::single(key(2)), t3));
        assert_eq!(chain.open_v1(&sealed_old, t3), Ok(&b"old"[..]));
        let later = t3 + RETIRED_KEY_GRACE + Duration::from_secs(1);
        assert_eq!(chain.open_v1(&sealed_old, later), Err(AuthError::BadTag));
        chain.expire(later);
        assert_eq!(chain.accepted(later).count(), 1);
    }

    #[test]
    fn a_secret_recreated_with_a_fresh_key_is_a_one_step_rotation() {
        let t0 = Instant::now();
        let mut chain = KeyChain::new(Keyring::single(key(1)));
        assert!(chain.update(Keyring::single(key(9)), t0));
        assert_eq!(chain.sealing(), &key(9));
        // Peers that have not read the new Secret yet are still heard.
        assert!(chain.open_v1(&auth::seal(&key(1), b"x"), t0).is_ok());
        // And a key that comes back is no longer retired.
        chain.update(Keyring::new(vec![key(9), key(1)]).unwrap(), t0);
        let later = t0 + RETIRED_KEY_GRACE * 2;
        assert!(chain.open_v1(&auth::seal(&key(1), b"x"), later).is_ok());
    }
}
