//! The node's network interfaces as the election and the responders need them: name, up,
//! addresses with prefix lengths, default route, MAC. Read with `ip -j` (iproute2),
//! rescanned whenever the kernel reports a link, address or route change (rtnetlink
//! notifications) and periodically as a backstop, so interfaces that appear, vanish, go
//! down or change addresses are noticed at once while the speaker runs. Parsing is pure
//! and tested on recorded output.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::election::Interface;
use crate::wire::ethernet::Mac;

/// One local interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInterface {
    pub iface: Interface,
    /// `None` for interfaces without an Ethernet address (loopback, tunnels).
    pub mac: Option<Mac>,
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    link_type: Option<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    local: Option<String>,
    prefixlen: Option<u8>,
}

#[derive(Deserialize)]
struct IpRoute {
    dev: Option<String>,
}

/// Parses `ip -j addr show` and the `ip -j route show default` outputs (IPv4 and IPv6).
pub fn parse(addr_json: &str, default_routes_json: &[&str]) -> Result<Vec<LocalInterface>, String> {
    let links: Vec<IpLink> =
        serde_json::from_str(addr_json).map_err(|e| format!("cannot parse `ip -j addr`: {e}"))?;
    let mut default_devs = BTreeSet::new();
    for json in default_routes_json {
        if json.trim().is_empty() {
            continue;
        }
        let routes: Vec<IpRoute> =
            serde_json::from_str(json).map_err(|e| format!("cannot parse `ip -j route`: {e}"))?;
        default_devs.extend(routes.into_iter().filter_map(|r| r.dev));
    }
    Ok(links
        .into_iter()
        .map(|l| {
            let up = l.flags.iter().any(|f| f == "UP") && l.flags.iter().any(|f| f == "LOWER_UP");
            let subnets = l
                .addr_info
                .iter()
                .filter_map(|a| Some((a.local.as_deref()?.parse::<IpAddr>().ok()?, a.prefixlen?)))
                .collect();
            let mac = match l.link_type.as_deref() {
                Some("ether") | None => l.address.as_deref().and_then(|a| a.parse::<Mac>().ok()),
                _ => None,
            };
            LocalInterface {
                iface: Interface {
                    default_route: default_devs.contains(&l.ifname),
                    name: l.ifname,
                    up,
                    subnets,
                },
                mac,
            }
        })
        .collect())
}

fn ip_json(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e} (the speaker needs iproute2)"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
/// the pools' regexes (`named`). Link-local IPv6 addresses are left out (no pool address
/// lives in fe80::/10). Pod veths and other address-less plumbing are not gossiped, so
/// pods coming and going do not change what a node advertises.
pub fn announcing(locals: &[LocalInterface], named: &[regex::Regex]) -> Vec<Interface> {
    locals
        .iter()
        .filter(|l| l.mac.is_some())
        .filter(|l| !NEVER_ANNOUNCE.iter().any(|p| l.iface.name.starts_with(p)))
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
        .filter(|i| {
            !i.subnets.is_empty() || i.default_route || named.iter().any(|r| r.is_match(&i.name))
        })
        .collect()
}

/// Reads the interfaces of the current network namespace now.
pub fn scan() -> Result<Vec<LocalInterface>, String> {
    let addrs = ip_json(&["-j", "addr", "show"])?;
    let v4 = ip_json(&["-4", "-j", "route", "show", "default"])?;
    let v6 = ip_json(&["-6", "-j", "route", "show", "default"])?;
    parse(&addrs, &[&v4, &v6])
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
pub fn watch(period: Duration, cancel: CancellationToken) -> watch::Receiver<Vec<LocalInterface>> {
    let (tx, rx) = watch::channel(scan().unwrap_or_default());
    tokio::spawn(async move {
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
                    crate::publish(&tx, now);
                }
                Ok(Err(e)) => warn!(%e, "scanning interfaces"),
                Err(e) => warn!(%e, "interface scan task"),
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"link_type":"loopback",
       "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"link_type":"ether",
       "address":"52:54:00:12:34:56","addr_info":[
         {"family":"inet","local":"192.168.1.10","prefixlen":24},
         {"family":"inet6","local":"2001:db8::10","prefixlen":64},
         {"family":"inet6","local":"fe80::5054:ff:fe12:3456","prefixlen":64}]},
      {"ifindex":3,"ifname":"eth1","flags":["BROADCAST","MULTICAST","UP"],"link_type":"ether",
       "address":"52:54:00:ab:cd:ef","addr_info":[{"family":"inet","local":"10.1.0.5","prefixlen":16}]},
      {"ifindex":4,"ifname":"wg0","flags":["POINTOPOINT","UP","LOWER_UP"],"link_type":"none","addr_info":[]}
    ]"#;

    #[test]
    fn parses_addresses_state_mac_and_default_route() {
        let v4 = r#"[{"dst":"default","gateway":"192.168.1.1","dev":"eth0","flags":[]}]"#;
        let got = parse(ADDRS, &[v4, "[]", ""]).unwrap();
        assert_eq!(got.len(), 4);
        let eth0 = &got[1];
        assert_eq!(eth0.iface.name, "eth0");
        assert!(eth0.iface.up && eth0.iface.default_route);
        assert_eq!(eth0.iface.subnets.len(), 3);
        assert_eq!(eth0.iface.subnets[0], ("192.168.1.10".parse().unwrap(), 24));
        assert_eq!(eth0.mac.unwrap().to_string(), "52:54:00:12:34:56");
        let eth1 = &got[2];
        assert!(!eth1.iface.up, "no carrier (LOWER_UP missing) is down");
        assert!(!eth1.iface.default_route);
        assert_eq!(got[0].mac, None, "loopback has no Ethernet address");
        assert_eq!(got[3].mac, None);
    }

    #[test]
    fn only_ethernet_interfaces_outside_the_exclusions_announce() {
        let extra = r#"[
          {"ifname":"veth1234","flags":["UP","LOWER_UP"],"link_type":"ether","address":"02:00:00:00:00:01","addr_info":[]},
          {"ifname":"cni0","flags":["UP","LOWER_UP"],"link_type":"ether","address":"02:00:00:00:00:02","addr_info":[{"local":"10.244.0.1","prefixlen":24}]},
          {"ifname":"cbr0","flags":["UP","LOWER_UP"],"link_type":"ether","address":"02:00:00:00:00:04","addr_info":[{"local":"10.244.1.1","prefixlen":24}]},
          {"ifname":"bond0","flags":["UP","LOWER_UP"],"link_type":"ether","address":"02:00:00:00:00:03","addr_info":[{"local":"10.2.0.1","prefixlen":24}]}
        ]"#;
        let mut all = parse(ADDRS, &[]).unwrap();
        all.extend(parse(extra, &[]).unwrap());
        let names: Vec<String> = announcing(&all, &[]).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["eth0", "eth1", "bond0"]);
        let bare = r#"[{"ifname":"vlan7","flags":["UP","LOWER_UP"],"link_type":"ether","address":"02:00:00:00:00:07","addr_info":[{"local":"fe80::7","prefixlen":64}]}]"#;
        all.extend(parse(bare, &[]).unwrap());
        assert_eq!(
            announcing(&all, &[]).len(),
            3,
            "an interface with only a link-local address is not a candidate by default"
        );
        let named = [regex::Regex::new("^(?:vlan.*)$").unwrap()];
        assert_eq!(announcing(&all, &named).len(), 4, "unless a pool names it");
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
    fn malformed_output_is_an_error_not_a_panic() {
        assert!(parse("not json", &[]).is_err());
        assert!(parse("[]", &["{"]).is_err());
        assert_eq!(parse("[]", &[]).unwrap(), vec![]);
    }

    #[test]
    fn scanning_this_namespace_finds_loopback() {
        let got = scan().unwrap();
        let lo = got.iter().find(|i| i.iface.name == "lo").unwrap();
        assert!(
            lo.iface
                .subnets
                .iter()
                .any(|(ip, len)| ip.is_loopback() && (*len == 8 || *len == 128))
        );
    }
}
