//! When the node's connections to the API server may have died silently, so that the
//! watches must start again (see [`connectivity_returned`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::interfaces;

/// What the node's network looked like at one scan, as far as its connections to the API
/// server depend on it: each interface holding global addresses (not loopback, not
/// link-local), whether it is up, and those addresses.
pub type Links = BTreeMap<u32, (bool, BTreeSet<IpAddr>)>;

/// The node's interfaces with global addresses, by index.
pub fn links(locals: &[interfaces::LocalInterface]) -> Links {
    locals
        .iter()
        .filter_map(|l| {
            let global: BTreeSet<IpAddr> = l
                .iface
                .subnets
                .iter()
                .map(|(ip, _)| *ip)
                .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
                .collect();
            (!global.is_empty()).then_some((l.index, (l.iface.up, global)))
        })
        .collect()
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

/// Whether the node's connections to the API server (watches included) may have died
/// without an error, so that the watches must start again: an interface holding global
/// addresses came up (it was down, or is new: a link re-created), or an address the node
/// had lost is back. Both happen when a link is cut and healed, and both drop connections
/// silently: the kernel flushes the masquerading state of connections through a link that
/// goes down or loses its address (a speaker on the host network reaches the API through
/// the masqueraded `kubernetes` Service), and the server's retransmissions back off for
/// minutes. `lost` remembers addresses seen before and missing now.
pub fn connectivity_returned(before: &Links, now: &Links, lost: &mut BTreeSet<IpAddr>) -> bool {
    let addrs = |l: &Links| -> BTreeSet<IpAddr> {
        l.values().flat_map(|(_, a)| a.iter().copied()).collect()
    };
    let (had, has) = (addrs(before), addrs(now));
    lost.extend(had.difference(&has).copied());
    let back: Vec<IpAddr> = lost.intersection(&has).copied().collect();
    for ip in &back {
        lost.remove(ip);
    }
    // Addresses some interface that was up already held: a pod's veth commonly carries the
    // node's pod-network gateway address, which every other veth holds too, and must not
    // restart the watches each time a pod starts.
    let held: BTreeSet<IpAddr> = before
        .values()
        .filter(|(up, _)| *up)
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    let came_up = now.iter().any(|(index, (up, a))| {
        *up && !before.get(index).is_some_and(|(was_up, _)| *was_up) && !a.is_subset(&held)
    });
    came_up || !back.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election;

    #[test]
    fn watches_restart_when_a_link_comes_back_up_or_an_address_returns() {
        let ips =
            |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let link = |index: u32, up: bool, a: &[&str]| (index, (up, ips(a)));
        let mut lost = BTreeSet::new();
        let up: Links = [
            link(2, true, &["10.0.0.4", "fd00::4"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(
            !connectivity_returned(&up, &up, &mut lost),
            "nothing changed"
        );
        // Cut: the link and its addresses are gone.
        let cut: Links = [link(5, true, &["10.244.1.1"])].into();
        assert!(
            !connectivity_returned(&up, &cut, &mut lost),
            "gone, not back"
        );
        assert!(!connectivity_returned(&cut, &cut, &mut lost));
        // Healed as a new link (another index): back.
        let healed: Links = [
            link(9, true, &["10.0.0.4", "fd00::4"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(connectivity_returned(&cut, &healed, &mut lost));
        assert!(lost.is_empty());
        // Taken down (addresses kept), renamed, up again: the up counts.
        let down: Links = [
            link(9, false, &["10.0.0.4", "fd00::4"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(!connectivity_returned(&healed, &down, &mut lost));
        assert!(connectivity_returned(&down, &healed, &mut lost));
        // An address removed and added back on a link that stayed up.
        let bare: Links = [link(9, true, &["fd00::4"]), link(5, true, &["10.244.1.1"])].into();
        assert!(!connectivity_returned(&healed, &bare, &mut lost));
        assert!(connectivity_returned(&bare, &healed, &mut lost));
        // A brand-new address is not a return.
        let more: Links = [
            link(9, true, &["10.0.0.4", "fd00::4", "10.0.0.9"]),
            link(5, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(!connectivity_returned(&healed, &more, &mut lost));
        // A pod's veth holding the gateway address other veths hold: no restart; the first
        // one, with an address no up interface held, does.
        let pod: Links = [
            link(9, true, &["10.0.0.4", "fd00::4", "10.0.0.9"]),
            link(5, true, &["10.244.1.1"]),
            link(11, true, &["10.244.1.1"]),
        ]
        .into();
        assert!(!connectivity_returned(&more, &pod, &mut lost));
        let fresh: Links = [link(9, true, &["10.0.0.4", "fd00::4", "10.0.0.9"])].into();
        assert!(connectivity_returned(&fresh, &pod, &mut lost));
    }

    #[test]
    fn only_interfaces_with_global_addresses_count() {
        let li = |index: u32, name: &str, up: bool, addrs: &[&str]| interfaces::LocalInterface {
            iface: election::Interface {
                name: name.into(),
                up,
                subnets: addrs.iter().map(|a| (a.parse().unwrap(), 64)).collect(),
                ..Default::default()
            },
            index,
            mac: None,
        };
        let l = links(&[
            li(1, "lo", true, &["127.0.0.1", "::1"]),
            li(2, "eth0", true, &["10.0.0.4", "fe80::1"]),
            li(7, "veth1", true, &["fe80::2"]),
            li(8, "veth2", false, &[]),
        ]);
        assert_eq!(
            l.keys().copied().collect::<Vec<_>>(),
            vec![2],
            "pods' veths never restart the watches"
        );
        assert_eq!(l[&2].1.len(), 1);
    }
}
