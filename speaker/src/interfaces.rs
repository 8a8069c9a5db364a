//! The node's network interfaces as the election and the responders need them: name,
//! ifindex, up, addresses with prefix lengths, default route per family, MAC.
//!
//! Read from the kernel over rtnetlink: one dump each of the links (`RTM_GETLINK`), the
//! addresses (`RTM_GETADDR`) and the IPv4 and IPv6 routes (`RTM_GETROUTE`), so the speaker
//! needs no `ip` binary. The interfaces are read again whenever the kernel reports a link,
//! address or route change (rtnetlink notifications) and periodically as a backstop, so
//! interfaces that appear, vanish, go down or change addresses are noticed at once while
//! the speaker runs.
//!
//! Turning the kernel's answers into [`LocalInterface`]s is pure ([`parse_reply`] for the
//! bytes, [`interfaces`] for the messages) and tested on constructed messages; [`scan`] is
//! the thin socket part. This module only reads: it never changes an interface.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::BytesMut;
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, Socket, SocketAddr, TokioSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::election::Interface;
use crate::wire::ethernet::Mac;

/// One local interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInterface {
    pub iface: Interface,
    /// The kernel's interface index: an interface deleted and created again under the same
    /// name gets a new one.
    pub index: u32,
    /// `None` for interfaces without an Ethernet address (loopback, tunnels).
    pub mac: Option<Mac>,
}

/// Why reading the interfaces failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("rtnetlink: cannot {action}")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("rtnetlink: the kernel refused the {dump} dump")]
    Refused {
        dump: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("rtnetlink: cannot decode the {dump} dump: {message}")]
    Decode { dump: &'static str, message: String },
    #[error("rtnetlink: the {dump} dump was interrupted by changes {attempts} times in a row")]
    Interrupted { dump: &'static str, attempts: u32 },
}

/// The messages of one scan, as the kernel sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub links: Vec<LinkMessage>,
    pub addresses: Vec<AddressMessage>,
    pub routes: Vec<RouteMessage>,
}

/// What one datagram of a dump reply said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// More datagrams follow.
    More,
    /// The dump is complete.
    Done,
    /// The dump is complete but the kernel saw changes while it ran (`NLM_F_DUMP_INTR`):
    /// what it sent may be inconsistent, so it must be asked again.
    Interrupted,
}

/// Parses one datagram of the reply to the dump request with sequence number `seq`,
/// adding links, addresses and routes to `into`. Messages of other requests are ignored.
pub fn parse_reply(
    datagram: &[u8],
    seq: u32,
    dump: &'static str,
    into: &mut Dump,
) -> Result<Progress, ScanError> {
    let mut rest = datagram;
    let mut interrupted = false;
    while !rest.is_empty() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(|e| {
            ScanError::Decode {
                dump,
                message: e.to_string(),
            }
        })?;
        // The decoder checked that the length covers at least a header and fits what is
        // left; messages start on 4-byte boundaries.
        let len = usize::try_from(msg.header.length).unwrap_or(usize::MAX);
        rest = rest.get(len.saturating_add(3) & !3..).unwrap_or_default();
        if msg.header.sequence_number != seq {
            continue;
        }
        interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
        match msg.payload {
            NetlinkPayload::Done(_) if interrupted => return Ok(Progress::Interrupted),
            NetlinkPayload::Done(_) => return Ok(Progress::Done),
            // An error with no code is an acknowledgement, which a dump does not send.
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(ScanError::Refused {
                    dump,
                    source: e.to_io(),
                });
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => into.links.push(l),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                into.addresses.push(a);
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => into.routes.push(r),
            _ => {}
        }
    }
    Ok(if interrupted {
        Progress::Interrupted
    } else {
        Progress::More
    })
}

/// The interface a main-table unicast default route leaves through (several for a
/// multipath route), with its family; nothing for any other route.
fn default_route_interfaces(route: &RouteMessage) -> Vec<(AddressFamily, u32)> {
    let h = &route.header;
    // The header's table is one byte; tables above 255 are only in the attribute.
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if h.destination_prefix_length != 0
        || h.kind != RouteType::Unicast
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(index) => out.push((h.address_family, *index)),
            RouteAttribute::MultiPath(hops) => {
                out.extend(hops.iter().map(|n| (h.address_family, n.interface_index)));
            }
            _ => {}
        }
    }
    out
}

/// The interfaces the dumped messages describe, by ifindex. Up means administratively up
/// with a carrier (`IFF_UP` and `IFF_LOWER_UP`); the MAC is read for Ethernet links only.
/// An address is the interface's own (`IFA_LOCAL` where the kernel gives one, as on
/// point-to-point links, else `IFA_ADDRESS`), kept in the order the kernel lists them.
pub fn interfaces(dump: &Dump) -> Vec<LocalInterface> {
    let mut by_index: BTreeMap<u32, LocalInterface> = BTreeMap::new();
    for link in &dump.links {
        let h = &link.header;
        let mut name = None;
        let mut address = None;
        for a in &link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(bytes) => address = Some(bytes.as_slice()),
                _ => {}
            }
        }
        let Some(name) = name else { continue };
        let mac = match (h.link_layer_type, address) {
            (LinkLayerType::Ether, Some(bytes)) => <[u8; 6]>::try_from(bytes).ok().map(Mac),
            _ => None,
        };
        by_index.insert(
            h.index,
            LocalInterface {
                iface: Interface {
                    name,
                    up: h.flags.contains(LinkFlags::Up | LinkFlags::LowerUp),
                    subnets: Vec::new(),
                    default_route_v4: false,
                    default_route_v6: false,
                },
                index: h.index,
                mac,
            },
        );
    }
    for a in &dump.addresses {
        let Some(l) = by_index.get_mut(&a.header.index) else {
            continue;
        };
        let (mut local, mut address) = (None, None);
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            l.iface.subnets.push((ip, a.header.prefix_len));
        }
    }
    for (family, index) in dump.routes.iter().flat_map(default_route_interfaces) {
        let Some(l) = by_index.get_mut(&index) else {
            continue;
        };
        match family {
            AddressFamily::Inet => l.iface.default_route_v4 = true,
            AddressFamily::Inet6 => l.iface.default_route_v6 = true,
            _ => {}
        }
    }
    by_index.into_values().collect()
}

/// Name prefixes of interfaces that never announce: loopback, container and CNI plumbing
/// (`cbr0` is kubenet's pod bridge, which goes up and down as pods come and go), tunnels.
/// Answering ARP from one of them is the classic "wrong MAC" failure.
pub const NEVER_ANNOUNCE: [&str; 21] = [
    "lo",
    "cbr",
    "docker",
    "veth",
    "cni",
    "flannel",
    "cali",
    "cilium",
    "lxc",
    "kube-ipvs",
    "kube-bridge",
    "nodelocaldns",
    "vxlan",
    "tun",
    "tap",
    "genev",
    "weave",
    "virbr",
    "podman",
    "wg",
    "nerdctl",
];

/// The interfaces a node may announce on, as its speaker gossips them: Ethernet
/// interfaces not matching [`NEVER_ANNOUNCE`] that the `l2.interfaces` rule could pick,
/// that is, those with a global address or the default route, and those named by one of
/// the pools' regexes (`named`); a pool's explicit pattern wins over [`NEVER_ANNOUNCE`]
/// (the user asked for that interface by name). Link-local IPv6 addresses are left out (no
/// pool address lives in fe80::/10). Pod veths and other address-less plumbing are not
/// gossiped, so pods coming and going do not change what a node advertises.
pub fn announcing(locals: &[LocalInterface], named: &[regex::Regex]) -> Vec<Interface> {
    let is_named = |name: &str| named.iter().any(|r| r.is_match(name));
    locals
        .iter()
        .filter(|l| l.mac.is_some())
        .filter(|l| {
            !NEVER_ANNOUNCE.iter().any(|p| l.iface.name.starts_with(p)) || is_named(&l.iface.name)
        })
        .map(|l| Interface {
            subnets: l
                .iface
                .subnets
                .iter()
                .filter(|(ip, _)| match ip {
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                    IpAddr::V4(_) => true,
                })
                .copied()
                .collect(),
            ..l.iface.clone()
        })
        .filter(|i| !i.subnets.is_empty() || i.has_default_route() || is_named(&i.name))
        .collect()
}

/// Orders `interfaces` by what losing each would cost, for when the gossiped list must be
/// trimmed (see `membership::fit_interfaces`, which keeps them in this order): first those
/// a pool needs (a subnet that overlaps one of the pools' `blocks`, or a name one of their
/// `l2.interfaces` patterns matches), then the default-route interface, then those with
/// addresses; by name within each.
pub fn by_importance(
    interfaces: &mut [Interface],
    blocks: &[ferrolb_crds::AddressBlock],
    named: &[regex::Regex],
) {
    let needed = |i: &Interface| {
        named.iter().any(|r| r.is_match(&i.name))
            || i.subnets.iter().any(|(addr, len)| {
                subnet_block(*addr, *len).is_some_and(|s| blocks.iter().any(|b| b.overlaps(&s)))
            })
    };
    interfaces.sort_by_cached_key(|i| {
        (
            !needed(i),
            !i.has_default_route(),
            i.subnets.is_empty(),
            i.name.clone(),
        )
    });
}

/// The addresses of the subnet `addr/len` as a block (`None` for a length beyond the
/// family's width).
fn subnet_block(addr: IpAddr, len: u8) -> Option<ferrolb_crds::AddressBlock> {
    IpNetwork::new(addr, len)
        .ok()
        .map(ferrolb_crds::AddressBlock::from)
}

/// How often a dump the kernel reports as interrupted is asked again before giving up
/// (the next change notification brings another scan anyway).
const DUMP_ATTEMPTS: u32 = 3;

/// The dump request for `what`, serialized, with sequence number `seq`.
fn dump_request(what: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(what));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Sends one dump request on `socket` and reads the whole reply into `into`.
fn run_dump(
    socket: &Socket,
    request: &RouteNetlinkMessage,
    seq: u32,
    dump: &'static str,
    into: &mut Dump,
) -> Result<Progress, ScanError> {
    let io = |action| move |source| ScanError::Io { action, source };
    socket
        .send(&dump_request(request.clone(), seq), 0)
        .map_err(io("send a dump request"))?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Peek first so that no datagram is ever truncated, however large.
        buf.clear();
        let size = socket
            .recv(&mut buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            .map_err(io("read a dump reply"))?;
        buf.clear();
        buf.reserve(size);
        let got = socket.recv(&mut buf, 0).map_err(io("read a dump reply"))?;
        buf.truncate(got);
        match parse_reply(&buf, seq, dump, into)? {
            Progress::More => {}
            done => return Ok(done),
        }
    }
}

/// Reads the interfaces of the current network namespace now.
pub fn scan() -> Result<Vec<LocalInterface>, ScanError> {
    let io = |action| move |source| ScanError::Io { action, source };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("open a socket"))?;
    socket.bind_auto().map_err(io("bind a socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connect to the kernel"))?;
    let route = |family| {
        let mut r = RouteMessage::default();
        r.header.address_family = family;
        RouteNetlinkMessage::GetRoute(r)
    };
    let requests = [
        ("link", RouteNetlinkMessage::GetLink(LinkMessage::default())),
        (
            "address",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        ),
        ("IPv4 route", route(AddressFamily::Inet)),
        ("IPv6 route", route(AddressFamily::Inet6)),
    ];
    let mut dump = Dump::default();
    let mut seq = 0u32;
    for (name, request) in &requests {
        let mut attempts = 0;
        loop {
            seq = seq.wrapping_add(1);
            attempts += 1;
            let mut part = Dump::default();
            match run_dump(&socket, request, seq, name, &mut part)? {
                Progress::Interrupted if attempts < DUMP_ATTEMPTS => continue,
                Progress::Interrupted => {
                    return Err(ScanError::Interrupted {
                        dump: name,
                        attempts,
                    });
                }
                Progress::More | Progress::Done => {}
            }
            dump.links.extend(part.links);
            dump.addresses.extend(part.addresses);
            dump.routes.extend(part.routes);
            break;
        }
    }
    Ok(interfaces(&dump))
}

/// rtnetlink multicast groups (`linux/rtnetlink.h`): links, IPv4 and IPv6 addresses and
/// routes, everything [`scan`] reads.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;

/// After a change, further notifications are gathered this long before the rescan (a link
/// going down sends several), up to [`BURST_MAX`] in all.
const BURST_QUIET: Duration = Duration::from_millis(20);
const BURST_MAX: Duration = Duration::from_millis(200);

/// A socket the kernel notifies of every link, address and route change.
fn change_events() -> std::io::Result<TokioSocket> {
    let mut s = TokioSocket::new(NETLINK_ROUTE)?;
    s.socket_mut().bind(&SocketAddr::new(0, GROUPS))?;
    Ok(s)
}

/// Waits for the next change notification; never returns without a socket.
async fn next_change(events: &mut Option<TokioSocket>, buf: &mut BytesMut) -> std::io::Result<()> {
    match events {
        Some(s) => {
            buf.clear();
            s.recv(buf).await
        }
        None => std::future::pending().await,
    }
}

/// Rescans as soon as the kernel reports a link, address or route change (so a link that
/// goes down stops counting within milliseconds), and every `period` as a backstop, and
/// publishes the interfaces whenever they change. Without netlink notifications (an
/// error opening or reading the socket), it falls back to the periodic rescan alone.
///
/// Spawns its own task; [`watcher`] leaves that to the caller.
pub fn watch(period: Duration, cancel: CancellationToken) -> watch::Receiver<Vec<LocalInterface>> {
    let (rx, task) = watcher(period, cancel);
    tokio::spawn(task);
    rx
}

/// [`watch`]'s receiver, and the task that feeds it (it ends when `cancel` fires).
pub fn watcher(
    period: Duration,
    cancel: CancellationToken,
) -> (
    watch::Receiver<Vec<LocalInterface>>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let first = scan().unwrap_or_else(|e| {
        warn!(error = %e, "scanning interfaces");
        Vec::new()
    });
    let (tx, rx) = watch::channel(first);
    let task = async move {
        let mut events = match change_events() {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(%e, "no netlink change notifications; rescanning interfaces periodically only");
                None
            }
        };
        let mut buf = BytesMut::with_capacity(64 * 1024);
        // The first scan is the channel's initial value; the next is due a period later.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                r = next_change(&mut events, &mut buf) => {
                    match r {
                        // An overrun (ENOBUFS) lost notifications: a rescan covers them.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                        Err(e) => {
                            warn!(%e, "netlink change notifications failed; rescanning interfaces periodically only");
                            events = None;
                        }
                        Ok(()) => {
                            let start = tokio::time::Instant::now();
                            while start.elapsed() < BURST_MAX {
                                match tokio::time::timeout(BURST_QUIET, next_change(&mut events, &mut buf)).await {
                                    Ok(Ok(())) => continue,
                                    _ => break,
                                }
                            }
                        }
                    }
                    tick.reset();
                }
            }
            match tokio::task::spawn_blocking(scan).await {
                Ok(Ok(now)) => {
                    if crate::publish(&tx, now) {
                        debug!("interfaces changed");
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "scanning interfaces"),
                Err(e) => warn!(%e, "interface scan task"),
            }
        }
    };
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_route::route::{RouteAddress, RouteNextHop};
    use std::net::Ipv4Addr;

    fn link(
        index: u32,
        name: &str,
        kind: LinkLayerType,
        flags: LinkFlags,
        addr: &[u8],
    ) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.header.link_layer_type = kind;
        l.header.flags = flags;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        if !addr.is_empty() {
            l.attributes.push(LinkAttribute::Address(addr.to_vec()));
        }
        l.attributes.push(LinkAttribute::Mtu(1500));
        l
    }

    fn address(index: u32, ip: &str, prefix: u8, local: Option<&str>) -> AddressMessage {
        let ip: IpAddr = ip.parse().unwrap();
        let mut a = AddressMessage::default();
        a.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        a.header.index = index;
        a.header.prefix_len = prefix;
        a.attributes.push(AddressAttribute::Address(ip));
        if let Some(l) = local {
            a.attributes
                .push(AddressAttribute::Local(l.parse().unwrap()));
        }
        a
    }

    fn route(family: AddressFamily, dst_len: u8, table: u8, oif: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = family;
        r.header.destination_prefix_length = dst_len;
        r.header.table = table;
        r.header.kind = RouteType::Unicast;
        r.attributes.push(RouteAttribute::Table(u32::from(table)));
        if family == AddressFamily::Inet {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                    192, 168, 1, 1,
                ))));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    const UP: LinkFlags = LinkFlags::Up
        .union(LinkFlags::LowerUp)
        .union(LinkFlags::Running);
    const MAIN: u8 = RouteHeader::RT_TABLE_MAIN;
    const LOCAL_TABLE: u8 = 255;
    const MAC0: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A node's dump: loopback, eth0 (both families, default routes), eth1 without carrier,
    /// a WireGuard tunnel, a ptp link whose own address is IFA_LOCAL.
    fn node_dump() -> Dump {
        let mut v6_multipath = route(AddressFamily::Inet6, 0, MAIN, 0);
        v6_multipath
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        let mut hop = RouteNextHop::default();
        hop.interface_index = 2;
        v6_multipath
            .attributes
            .push(RouteAttribute::MultiPath(vec![hop]));
        Dump {
            links: vec![
                link(
                    1,
                    "lo",
                    LinkLayerType::Loopback,
                    UP | LinkFlags::Loopback,
                    &[0; 6],
                ),
                link(
                    2,
                    "eth0",
                    LinkLayerType::Ether,
                    UP | LinkFlags::Broadcast,
                    &MAC0,
                ),
                link(
                    3,
                    "eth1",
                    LinkLayerType::Ether,
                    LinkFlags::Up,
                    &[0x52, 0x54, 0, 0xab, 0xcd, 0xef],
                ),
                link(
                    4,
                    "wg0",
                    LinkLayerType::None,
                    UP | LinkFlags::Pointopoint,
                    &[],
                ),
                link(5, "ptp0", LinkLayerType::Ppp, UP, &[]),
            ],
            addresses: vec![
                address(1, "127.0.0.1", 8, Some("127.0.0.1")),
                address(2, "192.168.1.10", 24, Some("192.168.1.10")),
                address(3, "10.1.0.5", 16, Some("10.1.0.5")),
                address(5, "10.9.0.1", 32, Some("10.9.0.2")),
                address(1, "::1", 128, None),
                address(2, "2001:db8::10", 64, None),
                address(2, "fe80::5054:ff:fe12:3456", 64, None),
                // An address of an interface the link dump did not list (gone meanwhile).
                address(9, "10.99.0.1", 24, None),
            ],
            routes: vec![
                route(AddressFamily::Inet, 0, MAIN, 2),
                // Not default routes: a subnet route, and defaults of other tables.
                route(AddressFamily::Inet, 24, MAIN, 3),
                route(AddressFamily::Inet, 0, 100, 3),
                route(AddressFamily::Inet6, 0, LOCAL_TABLE, 4),
                v6_multipath,
            ],
        }
    }

    #[test]
    fn reads_name_index_state_mac_addresses_and_default_routes() {
        let got = interfaces(&node_dump());
        let names: Vec<&str> = got.iter().map(|i| i.iface.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "eth1", "wg0", "ptp0"]);
        let eth0 = &got[1];
        assert_eq!(eth0.index, 2);
        assert!(eth0.iface.up);
        assert_eq!(eth0.mac, Some(Mac(MAC0)));
        assert_eq!(
            eth0.iface.subnets,
            vec![
                ("192.168.1.10".parse().unwrap(), 24),
                ("2001:db8::10".parse().unwrap(), 64),
                ("fe80::5054:ff:fe12:3456".parse().unwrap(), 64),
            ]
        );
        assert!(eth0.iface.default_route_v4, "IPv4 default via eth0");
        assert!(
            eth0.iface.default_route_v6,
            "IPv6 default (multipath) via eth0"
        );

        let eth1 = &got[2];
        assert!(!eth1.iface.up, "no carrier (LOWER_UP missing) is down");
        assert!(
            !eth1.iface.has_default_route(),
            "a subnet route or another table's default is not the default route"
        );
        assert_eq!(got[0].mac, None, "loopback has no Ethernet address");
        assert_eq!(got[3].mac, None, "a tunnel has none either");
        assert!(
            !got[3].iface.has_default_route(),
            "the local table does not count"
        );
        assert_eq!(
            got[4].iface.subnets,
            vec![("10.9.0.2".parse().unwrap(), 32)],
            "on a point-to-point link the local address is ours, not the peer's"
        );
    }

    #[test]
    fn a_default_route_of_one_family_only_is_told_apart() {
        let mut dump = node_dump();
        dump.routes
            .retain(|r| r.header.address_family == AddressFamily::Inet);
        let eth0 = &interfaces(&dump)[1];
        assert!(eth0.iface.default_route_v4 && !eth0.iface.default_route_v6);
    }

    /// Serializes `msgs` as the kernel sends a dump: one datagram, multipart, then Done.
    fn datagram(msgs: Vec<RouteNetlinkMessage>, seq: u32, done: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |payload: NetlinkPayload<RouteNetlinkMessage>, flags: u16| {
            let mut header = NetlinkHeader::default();
            header.sequence_number = seq;
            header.flags = flags;
            let mut m = NetlinkMessage::new(header, payload);
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            out.extend_from_slice(&buf);
        };
        for m in msgs {
            push(NetlinkPayload::InnerMessage(m), NLM_F_MULTIPART);
        }
        if done {
            push(
                NetlinkPayload::Done(DoneMessage::default()),
                NLM_F_MULTIPART,
            );
        }
        out
    }

    #[test]
    fn a_dump_reply_parses_from_bytes_into_the_same_interfaces() {
        let want = node_dump();
        let mut got = Dump::default();
        let links: Vec<_> = want
            .links
            .iter()
            .cloned()
            .map(RouteNetlinkMessage::NewLink)
            .collect();
        let addrs: Vec<_> = want
            .addresses
            .iter()
            .cloned()
            .map(RouteNetlinkMessage::NewAddress)
            .collect();
        let routes: Vec<_> = want
            .routes
            .iter()
            .cloned()
            .map(RouteNetlinkMessage::NewRoute)
            .collect();
        // Links arrive in two datagrams: the first says more follow.
        let (first, second) = links.split_at(2);
        assert_eq!(
            parse_reply(&datagram(first.to_vec(), 7, false), 7, "link", &mut got).unwrap(),
            Progress::More
        );
        assert_eq!(
            parse_reply(&datagram(second.to_vec(), 7, true), 7, "link", &mut got).unwrap(),
            Progress::Done
        );
        parse_reply(&datagram(addrs, 8, true), 8, "address", &mut got).unwrap();
        parse_reply(&datagram(routes, 9, true), 9, "route", &mut got).unwrap();
        assert_eq!(interfaces(&got), interfaces(&want));
    }

    #[test]
    fn replies_to_other_requests_are_ignored_and_interruptions_reported() {
        let eth0 = RouteNetlinkMessage::NewLink(link(2, "eth0", LinkLayerType::Ether, UP, &MAC0));
        let mut got = Dump::default();
        let stale = datagram(vec![eth0.clone()], 3, true);
        assert_eq!(
            parse_reply(&stale, 4, "link", &mut got).unwrap(),
            Progress::More
        );
        assert!(got.links.is_empty(), "sequence 3 is not our request");

        let mut interrupted = datagram(vec![eth0], 4, true);
        // NLM_F_DUMP_INTR on the first message (flags are bytes 6..8 of its header).
        let flags = u16::from_ne_bytes([interrupted[6], interrupted[7]]) | NLM_F_DUMP_INTR;
        interrupted[6..8].copy_from_slice(&flags.to_ne_bytes());
        assert_eq!(
            parse_reply(&interrupted, 4, "link", &mut got).unwrap(),
            Progress::Interrupted
        );
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        let mut header = NetlinkHeader::default();
        header.sequence_number = 1;
        let mut err = ErrorMessage::default();
        err.code = std::num::NonZeroI32::new(-libc::EPERM);
        let mut m = NetlinkMessage::<RouteNetlinkMessage>::new(header, NetlinkPayload::Error(err));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        let mut got = Dump::default();
        let e = parse_reply(&buf, 1, "link", &mut got).unwrap_err();
        assert!(matches!(e, ScanError::Refused { .. }), "{e}");

        for garbage in [&[1u8, 2, 3][..], &[0xff; 40][..], &[0; 16][..]] {
            assert!(
                parse_reply(garbage, 1, "link", &mut got).is_err(),
                "{garbage:?}"
            );
        }
        let mut truncated = datagram(vec![], 1, true);
        truncated.truncate(10);
        assert!(parse_reply(&truncated, 1, "link", &mut got).is_err());
    }

    #[test]
    fn only_ethernet_interfaces_outside_the_exclusions_announce() {
        let mut dump = node_dump();
        let mac = |last| [2, 0, 0, 0, 0, last];
        dump.links.extend([
            link(10, "veth1234", LinkLayerType::Ether, UP, &mac(1)),
            link(11, "cni0", LinkLayerType::Ether, UP, &mac(2)),
            link(12, "cbr0", LinkLayerType::Ether, UP, &mac(4)),
            link(13, "bond0", LinkLayerType::Ether, UP, &mac(3)),
        ]);
        dump.addresses.extend([
            address(11, "10.244.0.1", 24, None),
            address(12, "10.244.1.1", 24, None),
            address(13, "10.2.0.1", 24, None),
        ]);
        let all = interfaces(&dump);
        let names: Vec<String> = announcing(&all, &[]).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["eth0", "eth1", "bond0"]);

        dump.links
            .push(link(14, "vlan7", LinkLayerType::Ether, UP, &mac(7)));
        dump.addresses.push(address(14, "fe80::7", 64, None));
        let all = interfaces(&dump);
        assert_eq!(
            announcing(&all, &[]).len(),
            3,
            "an interface with only a link-local address is not a candidate by default"
        );
        let named = [regex::Regex::new("^(?:vlan.*)$").unwrap()];
        assert_eq!(announcing(&all, &named).len(), 4, "unless a pool names it");
        let named = [regex::Regex::new("^(?:cni0)$").unwrap()];
        let names: Vec<String> = announcing(&all, &named)
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(
            names,
            ["eth0", "eth1", "cni0", "bond0"],
            "a pool's explicit pattern wins over the never-announce list"
        );
        let eth0 = &announcing(&all, &[])[0];
        assert_eq!(
            eth0.subnets,
            vec![
                ("192.168.1.10".parse().unwrap(), 24),
                ("2001:db8::10".parse().unwrap(), 64)
            ],
            "the link-local address is not gossiped"
        );
    }

    #[test]
    fn the_interfaces_a_pool_needs_are_kept_before_the_default_route() {
        let iface = |name: &str, subnet: Option<(&str, u8)>, default_route: bool| Interface {
            name: name.into(),
            up: true,
            subnets: subnet
                .map(|(a, l)| vec![(a.parse().unwrap(), l)])
                .unwrap_or_default(),
            default_route_v4: default_route,
            default_route_v6: false,
        };
        let mut all = vec![
            iface("a-plain", Some(("172.16.0.5", 24)), false),
            iface("b-uplink", Some(("192.168.1.10", 24)), true),
            iface("c-lb", Some(("10.9.0.1", 16)), false),
            iface("d-bare", None, false),
            iface("e-named", None, false),
            iface("f-v6", Some(("2001:db8:7::1", 64)), false),
        ];
        let blocks = [
            ferrolb_crds::AddressBlock::parse("10.9.200.0/28").unwrap(),
            ferrolb_crds::AddressBlock::parse("2001:db8:7::100-2001:db8:7::1ff").unwrap(),
        ];
        let named = [regex::Regex::new("^(?:e-.*)$").unwrap()];
        by_importance(&mut all, &blocks, &named);
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["c-lb", "f-v6", "e-named", "b-uplink", "a-plain", "d-bare"]
        );
        // With no pools, the old order: default route, then addresses, then by name.
        by_importance(&mut all, &[], &[]);
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["b-uplink", "a-plain", "c-lb", "f-v6", "d-bare", "e-named"]
        );
    }

    #[test]
    fn a_subnet_is_the_block_of_its_prefix() {
        let b = subnet_block("10.1.2.3".parse().unwrap(), 24).unwrap();
        assert_eq!(
            (b.first().to_string(), b.last().to_string()),
            ("10.1.2.0".into(), "10.1.2.255".into())
        );
        let all = subnet_block("::1".parse().unwrap(), 0).unwrap();
        assert_eq!(
            all.last().to_string(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert!(subnet_block("10.0.0.1".parse().unwrap(), 33).is_none());
    }

    #[test]
    fn scanning_this_namespace_finds_loopback() {
        let got = scan().unwrap();
        let lo = got.iter().find(|i| i.iface.name == "lo").unwrap();
        assert!(lo.index > 0);
        assert!(lo.mac.is_none());
        assert!(
            lo.iface
                .subnets
                .iter()
                .any(|(ip, len)| ip.is_loopback() && (*len == 8 || *len == 128))
        );
    }
}
