//! A pool as the allocator sees it: the IPPool's spec parsed once, its blocks merged and
//! sorted, its selectors compiled. A pool whose spec cannot be parsed is kept (so its
//! status can say why) but hands out nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrolb_crds::{AddressBlock, Family, Forwarding, IPPoolSpec};

use super::count::Count;
use super::runs::{buggy_in, is_buggy_v4};
use crate::selector::Selector;

/// Orders pools by age: the older of two overlapping pools keeps the overlap. The rule is
/// the one the speaker follows ([`ferrolb_crds::overlap`]).
pub use ferrolb_crds::overlap::PoolAge;

#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    pub age: PoolAge,
    blocks: Vec<AddressBlock>,
    pub auto_assign: bool,
    pub avoid_buggy: bool,
    pub disabled: bool,
    pub priority: i32,
    pub service_selector: Selector,
    pub namespace_selector: Selector,
    pub forwarding: Forwarding,
    /// Why the spec is unusable, if it is.
    pub invalid: Option<String>,
    /// The Subnet-Router anycast address of each IPv6 CIDR entry (as a number), with the
    /// entry: inside the pool and kept by a Service that already holds it, never handed
    /// out anew ([`ferrolb_crds::address::subnet_router_anycast`]).
    anycast: BTreeMap<u128, String>,
}

impl Pool {
    pub fn from_spec(name: &str, created: Option<i64>, spec: &IPPoolSpec) -> Pool {
        let mut problems = Vec::new();
        let mut blocks = Vec::new();
        let mut anycast = BTreeMap::new();
        for entry in &spec.addresses {
            match AddressBlock::parse(entry) {
                Ok(b) => blocks.push(b),
                Err(e) => problems.push(e.to_string()),
            }
            if let Some(a) = ferrolb_crds::address::subnet_router_anycast(entry) {
                anycast
                    .entry(u128::from(a))
                    .or_insert_with(|| entry.to_string());
            }
        }
        if spec.addresses.is_empty() {
            problems.push("spec.addresses is empty".to_string());
        }
        let service_selector = Selector::parse(spec.service_selector.as_ref())
            .map_err(|e| problems.push(format!("serviceSelector: {e}")))
            .unwrap_or_default();
        let namespace_selector = Selector::parse(spec.namespace_selector.as_ref())
            .map_err(|e| problems.push(format!("namespaceSelector: {e}")))
            .unwrap_or_default();
        Pool {
            name: name.to_string(),
            age: PoolAge::new(name, created),
            blocks: merge(blocks),
            auto_assign: spec.auto_assign,
            avoid_buggy: spec.avoid_buggy_ips,
            disabled: spec.disabled,
            priority: spec.priority,
            service_selector,
            namespace_selector,
            forwarding: spec.forwarding,
            invalid: (!problems.is_empty()).then(|| problems.join("; ")),
            anycast,
        }
    }

    /// The pool's addresses: sorted, non-overlapping, non-adjacent blocks.
    pub fn blocks(&self) -> &[AddressBlock] {
        &self.blocks
    }

    pub fn blocks_of(&self, family: Family) -> impl Iterator<Item = &AddressBlock> {
        self.blocks.iter().filter(move |b| b.family() == family)
    }

    pub fn has_family(&self, family: Family) -> bool {
        self.blocks_of(family).next().is_some()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|b| b.contains(ip))
    }

    /// True when the address may be handed out by this pool (inside it, not skipped).
    pub fn can_hold(&self, ip: IpAddr) -> bool {
        self.contains(ip)
            && !(self.skips(Family::of(ip)) && is_buggy_v4(ferrolb_crds::address::ip_to_u128(ip)))
    }

    /// The IPv6 CIDR entry whose Subnet-Router anycast address `ip` is, if it is one: such
    /// an address is never handed out anew (a Service holding it keeps it).
    pub fn anycast_of(&self, ip: IpAddr) -> Option<&str> {
        match ip {
            IpAddr::V6(v6) => self.anycast.get(&u128::from(v6)).map(String::as_str),
            IpAddr::V4(_) => None,
        }
    }

    /// True for the numbers of this family's addresses that are never handed out anew.
    pub fn is_anycast(&self, family: Family, n: u128) -> bool {
        family == Family::V6 && self.anycast.contains_key(&n)
    }

    /// The numbers of this family's anycast addresses (see [`Pool::anycast_of`]).
    pub fn anycast_numbers(&self, family: Family) -> impl Iterator<Item = u128> + '_ {
        self.anycast
            .keys()
            .copied()
            .filter(move |_| family == Family::V6)
    }

    /// Whether .0/.255 are skipped for this family.
    pub fn skips(&self, family: Family) -> bool {
        self.avoid_buggy && family == Family::V4
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        self.blocks
            .iter()
            .any(|a| other.blocks.iter().any(|b| a.overlaps(b)))
    }

    /// Addresses this pool can hand out, per family (skipped and anycast addresses
    /// excluded).
    pub fn capacity(&self, family: Family) -> Count {
        let skips = self.skips(family);
        let all = self.blocks_of(family).fold(Count::ZERO, |c, b| {
            let total = c.add_block(b.span());
            if skips {
                total.minus(buggy_in(b.first_u128(), b.last_u128()))
            } else {
                total
            }
        });
        let anycast = self.anycast_numbers(family).count();
        all.minus(u128::try_from(anycast).unwrap_or(u128::MAX))
    }

    /// May this pool give new addresses at all?
    pub fn allocates(&self) -> bool {
        !self.disabled && self.invalid.is_none()
    }
}

/// Sorts blocks and merges those that overlap or touch.
fn merge(mut blocks: Vec<AddressBlock>) -> Vec<AddressBlock> {
    blocks.sort();
    let mut out: Vec<AddressBlock> = Vec::with_capacity(blocks.len());
    for b in blocks {
        if let Some(last) = out.last_mut()
            && last.family() == b.family()
            && b.first_u128() <= last.last_u128().saturating_add(1)
        {
            if b.last_u128() > last.last_u128() {
                let merged = AddressBlock::new(last.first(), b.last());
                if let Some(m) = merged {
                    *last = m;
                }
            }
            continue;
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(addresses: &[&str]) -> IPPoolSpec {
        serde_json::from_value(serde_json::json!({ "addresses": addresses })).unwrap()
    }

    #[test]
    fn merges_overlapping_and_adjacent_entries() {
        let p = Pool::from_spec(
            "p",
            None,
            &spec(&[
                "10.0.0.8-10.0.0.20",
                "10.0.0.0/29",
                "10.0.0.15",
                "10.0.1.0/30",
                "2001:db8::/127",
            ]),
        );
        let shown: Vec<String> = p.blocks().iter().map(|b| b.to_string()).collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0-10.0.0.20",
                "10.0.1.0-10.0.1.3",
                "2001:db8::-2001:db8::1"
            ]
        );
        assert_eq!(p.capacity(Family::V4), Count::from_u128(25));
        assert_eq!(p.capacity(Family::V6), Count::from_u128(2));
    }

    #[test]
    fn capacity_is_exact_for_huge_pools_and_skips_buggy_addresses() {
        // 2^127, less the anycast addresses of both CIDR entries (2001:db8:: and ::).
        let p = Pool::from_spec("p", None, &spec(&["2001:db8::/64", "::/1"]));
        assert_eq!(
            p.capacity(Family::V6).to_string(),
            "170141183460469231731687303715884105726"
        );
        let mut s = spec(&["10.0.0.0/23", "10.0.5.255"]);
        s.avoid_buggy_ips = true;
        let p = Pool::from_spec("p", None, &s);
        assert_eq!(p.capacity(Family::V4), Count::from_u128(512 - 4));
        assert!(!p.can_hold("10.0.0.255".parse().unwrap()));
        assert!(p.can_hold("10.0.1.1".parse().unwrap()));
    }

    #[test]
    fn unparseable_specs_are_invalid_with_a_reason() {
        let p = Pool::from_spec("p", None, &spec(&["10.0.0.9-10.0.0.1"]));
        assert!(!p.allocates());
        assert!(p.invalid.unwrap().contains("reversed"));
    }
}
