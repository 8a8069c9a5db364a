//! Parsing of `spec.addresses` entries into inclusive blocks of addresses.
//!
//! The API server already rejects malformed entries (see [`crate::schema`]); this parser
//! applies the same rules so that code reading pools never trusts an entry blindly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The Kubernetes name (`IPv4`, `IPv6`), as in `spec.ipFamilies`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.k8s_name())
    }
}

/// An address as a number, so ranges compare and step cheaply.
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`ip_to_u128`]; IPv4 values must fit in 32 bits.
pub fn u128_to_ip(family: Family, n: u128) -> Option<IpAddr> {
    match family {
        Family::V4 => u32::try_from(n).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        Family::V6 => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// The Subnet-Router anycast address of an IPv6 CIDR entry (its all-zero host, RFC 4291
/// §2.6.1), which routers on that subnet answer: ferrolb never hands it out. Prefixes of
/// 127 and 128 bits have none (RFC 6164 gives /127 links no anycast; /128 is one address),
/// nor do IPv4 entries, ranges and single addresses. `None` for an entry that does not parse.
pub fn subnet_router_anycast(entry: &str) -> Option<Ipv6Addr> {
    let (addr, len) = entry.split_once('/')?;
    match parse_cidr(entry, addr, len).ok()? {
        IpNetwork::V6(net) if net.prefix() < 127 => Some(net.network()),
        _ => None,
    }
}

/// An inclusive block of addresses of one family: what one `spec.addresses` entry means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressBlock {
    family: Family,
    first: u128,
    last: u128,
}

/// Why an entry of `spec.addresses` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "\"{0}\" is not a CIDR (10.0.0.0/24), a single IP (10.0.0.7) or a first-last range (10.0.0.10-10.0.0.20)"
    )]
    Malformed(String),
    #[error("CIDR {entry} has host bits set: write the network address of its prefix ({network})")]
    HostBits { entry: String, network: String },
    #[error("range {0} mixes IPv4 and IPv6")]
    MixedFamilies(String),
    #[error("range {entry} is reversed: {first} comes after {last}")]
    Reversed {
        entry: String,
        first: IpAddr,
        last: IpAddr,
    },
}

impl AddressBlock {
    /// A block from `first` to `last` inclusive; `None` if families differ or it is reversed.
    pub fn new(first: IpAddr, last: IpAddr) -> Option<AddressBlock> {
        let family = Family::of(first);
        if family != Family::of(last) {
            return None;
        }
        let (first, last) = (ip_to_u128(first), ip_to_u128(last));
        (first <= last).then_some(AddressBlock {
            family,
            first,
            last,
        })
    }

    /// Parses one entry: `10.0.0.0/24`, `10.0.0.7`, `10.0.0.10-10.0.0.20` or their IPv6 forms.
    pub fn parse(entry: &str) -> Result<AddressBlock, AddressError> {
        let malformed = || AddressError::Malformed(entry.to_string());
        if let Some((a, b)) = entry.split_once('-') {
            let first: IpAddr = a.parse().map_err(|_| malformed())?;
            let last: IpAddr = b.parse().map_err(|_| malformed())?;
            reject_mapped(first).ok_or_else(malformed)?;
            reject_mapped(last).ok_or_else(malformed)?;
            if Family::of(first) != Family::of(last) {
                return Err(AddressError::MixedFamilies(entry.to_string()));
            }
            return AddressBlock::new(first, last).ok_or(AddressError::Reversed {
                entry: entry.to_string(),
                first,
                last,
            });
        }
        if let Some((addr, len)) = entry.split_once('/') {
            return parse_cidr(entry, addr, len).map(AddressBlock::from);
        }
        let ip: IpAddr = entry.parse().map_err(|_| malformed())?;
        reject_mapped(ip).ok_or_else(malformed)?;
        Ok(AddressBlock {
            family: Family::of(ip),
            first: ip_to_u128(ip),
            last: ip_to_u128(ip),
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// First address as a number (see [`ip_to_u128`]).
    pub fn first_u128(&self) -> u128 {
        self.first
    }

    /// Last address as a number (see [`ip_to_u128`]).
    pub fn last_u128(&self) -> u128 {
        self.last
    }

    pub fn first(&self) -> IpAddr {
        u128_to_ip(self.family, self.first).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    pub fn last(&self) -> IpAddr {
        u128_to_ip(self.family, self.last).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// Number of addresses minus one (the full IPv6 space does not fit a `u128` otherwise).
    pub fn span(&self) -> u128 {
        self.last - self.first
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.first..=self.last).contains(&ip_to_u128(ip))
    }

    /// True when the two blocks share at least one address.
    pub fn overlaps(&self, other: &AddressBlock) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }
}

impl From<IpNetwork> for AddressBlock {
    /// Every address of the CIDR, host bits of its address ignored.
    fn from(net: IpNetwork) -> AddressBlock {
        AddressBlock {
            family: Family::of(net.ip()),
            first: ip_to_u128(net.network()),
            last: ip_to_u128(net.broadcast()),
        }
    }
}

/// The CIDR entry `entry`, split at its `/` into `addr` and `len`: a network address (no
/// host bits set) and a prefix length of decimal digits only, no longer than the family's
/// width.
fn parse_cidr(entry: &str, addr: &str, len: &str) -> Result<IpNetwork, AddressError> {
    let malformed = || AddressError::Malformed(entry.to_string());
    let ip: IpAddr = addr.parse().map_err(|_| malformed())?;
    reject_mapped(ip).ok_or_else(malformed)?;
    // Digits only: `u8::from_str` would also take "+24".
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|c| c.is_ascii_digit()) {
        return Err(malformed());
    }
    let len: u8 = len.parse().map_err(|_| malformed())?;
    // Refuses a length beyond the family's width.
    let net = IpNetwork::new(ip, len).map_err(|_| malformed())?;
    if net.network() != ip {
        return Err(AddressError::HostBits {
            entry: entry.to_string(),
            network: format!("{}/{len}", net.network()),
        });
    }
    Ok(net)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are refused, as the API server does.
fn reject_mapped(ip: IpAddr) -> Option<()> {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        _ => Some(()),
    }
}

/// An address as an entry writes it: as `Ipv6Addr` prints it, except that an IPv4-mapped
/// address keeps hexadecimal groups (`::ffff:a00:1`, not `::ffff:10.0.0.1`, a form entries
/// refuse).
struct EntryAddr(IpAddr);

impl fmt::Display for EntryAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                let g = v6.segments();
                write!(f, "::ffff:{:x}:{:x}", g[6], g[7])
            }
            ip => write!(f, "{ip}"),
        }
    }
}

impl AddressBlock {
    /// The prefix length, when the block is exactly one CIDR.
    pub fn prefix_len(&self) -> Option<u32> {
        let span = self.last - self.first;
        let aligned = span & span.wrapping_add(1) == 0 && self.first & span == 0;
        aligned.then(|| self.family.bits() - (128 - span.leading_zeros()))
    }
}

impl fmt::Display for AddressBlock {
    /// `first-last` (one address alone), as an entry would be written. A block with an
    /// IPv4-mapped end (`::/80` ends at `::ffff:ffff:ffff`) cannot be written as a range,
    /// since entries refuse mapped addresses; such a block is one CIDR, and prints as it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first, last) = (EntryAddr(self.first()), EntryAddr(self.last()));
        let mapped = [self.first(), self.last()]
            .into_iter()
            .any(|a| reject_mapped(a).is_none());
        if mapped && let Some(len) = self.prefix_len() {
            return write!(f, "{first}/{len}");
        }
        if self.first == self.last {
            write!(f, "{first}")
        } else {
            write!(f, "{first}-{last}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_single_ips_and_ranges() {
        let b = AddressBlock::parse("192.168.10.0/24").unwrap();
        assert_eq!(
            (b.first(), b.last()),
            (ip("192.168.10.0"), ip("192.168.10.255"))
        );
        assert_eq!(b.span(), 255);

        let b = AddressBlock::parse("192.168.10.200-192.168.10.250").unwrap();
        assert_eq!(b.span() + 1, 51);

        let b = AddressBlock::parse("10.0.0.7").unwrap();
        assert_eq!((b.first(), b.last()), (ip("10.0.0.7"), ip("10.0.0.7")));

        let b = AddressBlock::parse("2001:db8:10::/64").unwrap();
        assert_eq!(b.family(), Family::V6);
        assert_eq!(b.span(), u128::from(u64::MAX));

        let b = AddressBlock::parse("::/0").unwrap();
        assert_eq!(b.span(), u128::MAX);

        let b = AddressBlock::parse("0.0.0.0/0").unwrap();
        assert_eq!(b.span(), u128::from(u32::MAX));

        let b = AddressBlock::parse("2001:db8::5-2001:db8::5").unwrap();
        assert_eq!(b.span(), 0);
    }

    #[test]
    fn refuses_malformed_entries_with_a_reason() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.1/33",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "2001:db8::/129",
            "10.0.0.1-",
            "-10.0.0.1",
            "10.0.0.1-10.0.0.2-10.0.0.3",
            "fe80::1%eth0",
            "::ffff:10.0.0.1",
            "10.0.0.1 - 10.0.0.5",
            "hello",
        ] {
            assert!(
                matches!(AddressBlock::parse(bad), Err(AddressError::Malformed(_))),
                "{bad:?} -> {:?}",
                AddressBlock::parse(bad)
            );
        }
        assert_eq!(
            AddressBlock::parse("10.0.0.9-10.0.0.1")
                .unwrap_err()
                .to_string(),
            "range 10.0.0.9-10.0.0.1 is reversed: 10.0.0.9 comes after 10.0.0.1"
        );
        assert_eq!(
            AddressBlock::parse("10.0.0.1-2001:db8::1").unwrap_err(),
            AddressError::MixedFamilies("10.0.0.1-2001:db8::1".into())
        );
        assert_eq!(
            AddressBlock::parse("10.0.0.1/24").unwrap_err().to_string(),
            "CIDR 10.0.0.1/24 has host bits set: write the network address of its prefix (10.0.0.0/24)"
        );
    }

    #[test]
    fn a_cidr_is_the_block_of_its_network() {
        let b = AddressBlock::from("10.1.2.3/24".parse::<IpNetwork>().unwrap());
        assert_eq!((b.first(), b.last()), (ip("10.1.2.0"), ip("10.1.2.255")));
        assert_eq!(AddressBlock::parse("10.1.2.0/24"), Ok(b));
        let all = AddressBlock::from("::/0".parse::<IpNetwork>().unwrap());
        assert_eq!(AddressBlock::parse("::/0"), Ok(all));
        assert_eq!(
            AddressBlock::parse("2001:db8::1/64")
                .unwrap_err()
                .to_string(),
            "CIDR 2001:db8::1/64 has host bits set: write the network address of its prefix (2001:db8::/64)"
        );
        for bad in ["10.0.0.0/256", "10.0.0.0/999", "10.0.0.0/0024", "::/1e2"] {
            assert_eq!(
                AddressBlock::parse(bad),
                Err(AddressError::Malformed(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            AddressBlock::parse("10.0.0.0/024").map(|b| b.span()),
            Ok(255)
        );
    }

    #[test]
    fn contains_and_overlaps_respect_family_and_bounds() {
        let a = AddressBlock::parse("10.0.0.0/30").unwrap();
        let b = AddressBlock::parse("10.0.0.3-10.0.0.9").unwrap();
        let c = AddressBlock::parse("10.0.0.4-10.0.0.9").unwrap();
        let v6 = AddressBlock::parse("::a00:0/126").unwrap();
        assert!(a.contains(ip("10.0.0.3")) && !a.contains(ip("10.0.0.4")));
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        // Same numbers, other family: never the same addresses.
        assert!(!a.overlaps(&v6) && !v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for e in ["10.0.0.1-10.0.0.9", "10.0.0.7", "2001:db8::1-2001:db8::ff"] {
            let b = AddressBlock::parse(e).unwrap();
            assert_eq!(AddressBlock::parse(&b.to_string()).unwrap(), b);
        }
    }

    #[test]
    fn only_ipv6_cidrs_below_127_bits_have_a_subnet_router_anycast_address() {
        let any = |e: &str| subnet_router_anycast(e).map(|a| a.to_string());
        assert_eq!(any("2001:db8::/64").as_deref(), Some("2001:db8::"));
        assert_eq!(any("2001:db8:0:1::/126").as_deref(), Some("2001:db8:0:1::"));
        assert_eq!(any("::/0").as_deref(), Some("::"));
        for none in [
            "2001:db8::/127",
            "2001:db8::/128",
            "2001:db8::",
            "2001:db8::-2001:db8::ff",
            "10.0.0.0/24",
            "10.0.0.0/0",
            "2001:db8::1/64",
            "not an entry/64",
        ] {
            assert_eq!(any(none), None, "{none}");
        }
    }

    /// Found by the fuzzer (speaker/fuzz, target `address`): `::/80` printed as
    /// `::-::ffff:255.255.255.255`, which no entry may say (mapped addresses are refused).
    #[test]
    fn blocks_print_ipv6_in_groups_that_parse_back() {
        for (entry, shown) in [
            ("::/80", "::/80"),
            ("::/0", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("::/81", "::-::7fff:ffff:ffff"),
            ("2001:db8::/64", "2001:db8::-2001:db8::ffff:ffff:ffff:ffff"),
            ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("1:0:2:0:3:0:4:0", "1:0:2:0:3:0:4:0"),
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("10.0.0.0/31", "10.0.0.0-10.0.0.1"),
        ] {
            let b = AddressBlock::parse(entry).unwrap();
            assert_eq!(b.to_string(), shown, "{entry}");
            assert_eq!(
                b.prefix_len().is_some(),
                entry.contains('/') || !shown.contains('-'),
                "{entry}"
            );
            assert_eq!(AddressBlock::parse(shown), Ok(b), "{entry}");
            if !shown.contains('-') && !shown.contains('/') && shown.contains(':') {
                let std: Ipv6Addr = shown.parse().unwrap();
                assert_eq!(std.to_string(), shown, "RFC 5952 form, as std writes it");
            }
        }
    }
}
