//! Feeds arbitrary text to the parser of IPPool `spec.addresses` entries (crds/src/address.rs,
//! which the controller and the speaker both use), and checks what it accepts: a block of
//! one family with its ends in order, that prints as an entry which parses back to the same
//! block, whose anycast address (IPv6 CIDRs) lies inside it.
//!
//! The module is compiled in by path, as the codec is for `wire`: it depends on `thiserror`
//! and `ipnetwork` only, and this keeps kube and the rest of `ferrolb-crds` out of the
//! instrumented build.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../crds/src/address.rs"]
mod address;

use address::{AddressBlock, Family, ip_to_u128, subnet_router_anycast};

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = std::str::from_utf8(data) else {
        return;
    };
    let anycast = subnet_router_anycast(entry);
    let Ok(block) = AddressBlock::parse(entry) else {
        assert_eq!(
            anycast, None,
            "{entry:?} is refused but has an anycast address"
        );
        return;
    };
    assert!(block.first_u128() <= block.last_u128(), "{entry:?}");
    assert_eq!(Family::of(block.first()), block.family(), "{entry:?}");
    assert_eq!(Family::of(block.last()), block.family(), "{entry:?}");
    if block.family() == Family::V4 {
        assert!(block.last_u128() <= u128::from(u32::MAX), "{entry:?}");
    }
    assert!(block.contains(block.first()) && block.contains(block.last()));
    let shown = block.to_string();
    assert_eq!(
        AddressBlock::parse(&shown),
        Ok(block),
        "{entry:?} shown as {shown:?}"
    );
    if let Some(a) = anycast {
        let n = ip_to_u128(std::net::IpAddr::V6(a));
        assert_eq!(
            n,
            block.first_u128(),
            "{entry:?}: anycast {a} is not its first address"
        );
        assert!(
            block.span() >= 3,
            "{entry:?}: anycast in a block of {} addresses",
            block.span() + 1
        );
    }
});
