//! Feeds arbitrary bytes to the speaker's gossip decoding, as a datagram off the network
//! and as the payload of a datagram sealed with the right key (what a buggy or compromised
//! peer could send): the envelope (`auth`), the v1 upgrade and v2 downgrade (`wire`) and the
//! checks before foca (`vet`). Nothing may panic; an envelope sealed here opens to the bytes
//! sealed; a message that passes the checks decodes again from what they hand to foca.
//!
//! The modules are compiled in by path, with the identity they decode (`identity.rs`):
//! they depend on serde, postcard, foca, hmac and sha2 only, and this keeps tokio, kube and
//! the rest of the speaker out of the instrumented build.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The inline module's path is the directory its files are read from.
#[allow(dead_code, unused_imports)]
#[path = "../../src/membership"]
mod membership {
    pub mod auth;
    pub mod identity;
    pub mod vet;
    pub mod wire;
    pub use identity::{Speaker, Standing};
}

use membership::auth::{self, GossipKey, Kind, Opened};
use membership::identity::{Interface, Speaker, Standing};
use membership::{vet, wire};

/// The receiving speaker's clock (ms), fixed so that runs repeat.
const NOW_MS: u64 = 1_800_000_000_000;

fn me() -> Speaker {
    Speaker {
        node: "node1".into(),
        addr: "10.0.0.1:7946".parse().unwrap(),
        generation: NOW_MS - 5_000,
        standing: Standing::Ready,
        learnt_from_v1: false,
        interfaces: vec![Interface {
            name: "eth0".into(),
            up: true,
            subnets: vec![("10.0.0.1".parse().unwrap(), 24)],
            default_route_v4: true,
            default_route_v6: false,
        }],
    }
}

/// What the speaker does with an opened membership payload, short of foca.
fn check_payload(payload: &[u8]) {
    let me = me();
    let from = "10.0.0.2:7946".parse().unwrap();
    let live = |node: &str| (node == "node3").then(|| "10.0.0.3:7946".parse().unwrap());
    if let Ok(vetted) = vet::vet(payload, from, &me, NOW_MS, live) {
        assert!(
            vet::decode::<Speaker>(&vetted.payload).is_some(),
            "a vetted message that does not decode"
        );
    }
    let _ = wire::downgrade(payload);
}

fuzz_target!(|data: &[u8]| {
    let key = GossipKey::new(b"fuzzing-key-0123456789").unwrap();
    let other = GossipKey::new(b"another-key-0123456789").unwrap();

    // Off the network: almost always refused, never a panic.
    if let Ok(opened) = auth::open_any([&key, &other], data) {
        match opened {
            Opened::V1(p) => {
                if let Some(up) = wire::upgrade(p) {
                    check_payload(&up);
                }
            }
            Opened::V2 { payload, .. } => check_payload(payload),
        }
    }

    // Sealed with the right key: opens to exactly these bytes, then meets the decoders.
    let v1 = auth::seal(&key, data);
    assert_eq!(auth::open_any([&other, &key], &v1), Ok(Opened::V1(data)));
    if let Some(up) = wire::upgrade(data) {
        check_payload(&up);
    }
    let v2 = auth::seal_v2(&key, Kind::Membership, 7, 42, data);
    assert_eq!(
        auth::open_any([&key], &v2),
        Ok(Opened::V2 {
            kind: Kind::Membership,
            session: 7,
            counter: 42,
            payload: data
        })
    );
    assert_eq!(auth::open_any([&other], &v2), Err(auth::AuthError::BadTag));
    check_payload(data);
});
