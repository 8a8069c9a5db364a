//! The only unsafe code in ferrolb: a Linux `AF_PACKET` socket bound to one interface and
//! one EtherType, so that the kernel hands it only frames of that type (the speaker never
//! wakes for other traffic). Four system calls, each checked; everything above this module
//! is safe Rust.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `sll_pkttype` of frames this host sent itself.
const PACKET_OUTGOING: u8 = 4;

/// A non-blocking packet socket on one interface for one EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
/// The kernel's ancillary load of the frame's packet type (`SKF_AD_OFF` + `SKF_AD_PKTTYPE`).
const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
/// `PACKET_OTHERHOST`: a frame for another host. The kernel marks so a frame sent to another
/// MAC (seen because the interface is promiscuous, as a bridge port is), and a frame that
/// came with a VLAN ID the node has no device for, which reaches the parent interface with
/// its tag taken off: answering it untagged would answer on the wrong network.
const PACKET_OTHERHOST: u32 = 3;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A classic BPF program for the ARP socket (bound to ARP): every frame not meant for
/// another host (see [`PACKET_OTHERHOST`]).
pub fn arp_filter() -> [libc::sock_filter; 4] {
    [
        op(LD_W_ABS, 0, 0, AD_PKTTYPE),
        op(JEQ_K, 1, 0, PACKET_OTHERHOST), // for another host: drop
        op(RET_K, 0, 0, 0x0004_0000),      // accept
        op(RET_K, 0, 0, 0),                // drop
    ]
}

/// A classic BPF program that accepts Ethernet frames, not meant for another host, carrying
/// an IPv6 packet whose next header is ICMPv6 and whose ICMPv6 type is Neighbor
/// Solicitation (135) or Neighbor Advertisement (136: another MAC claiming an owned address
/// is re-asserted against), and drops all else. (A packet with extension headers before
/// ICMPv6 is not seen; RFC 4861 senders do not add any.)
pub fn neighbor_discovery_filter() -> [libc::sock_filter; 11] {
    [
        op(LD_W_ABS, 0, 0, AD_PKTTYPE),
        op(JEQ_K, 8, 0, PACKET_OTHERHOST), // for another host: drop
        op(LD_H_ABS, 0, 0, 12),            // EtherType
        op(JEQ_K, 0, 6, 0x86dd),           // IPv6? else drop
        op(LD_B_ABS, 0, 0, 14 + 6),        // next header
        op(JEQ_K, 0, 4, 58),               // ICMPv6? else drop
        op(LD_B_ABS, 0, 0, 14 + 40),       // ICMPv6 type
        op(JEQ_K, 1, 0, 135),              // Neighbor Solicitation: accept
        op(JEQ_K, 0, 1, 136),              // Neighbor Advertisement: accept, else drop
        op(RET_K, 0, 0, 0x0004_0000),      // accept
        op(RET_K, 0, 0, 0),                // drop
    ]
}

impl PacketSocket {
    /// Opens and binds the socket. Needs `CAP_NET_RAW`.
    pub fn open(ifname: &str, ethertype: u16) -> io::Result<PacketSocket> {
        Self::open_filtered(ifname, ethertype, &[])
    }

    /// Like [`PacketSocket::open`], with a BPF program attached before the socket is bound,
    /// so that no frame the program rejects is ever queued.
    pub fn open_filtered(
        ifname: &str,
        ethertype: u16,
        filter: &[libc::sock_filter],
    ) -> io::Result<PacketSocket> {
        let name =
            CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let ifindex =
            i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let proto = ethertype.to_be();
        // Protocol 0: the socket receives nothing until it is bound below, after the filter
        // is in place.
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if !filter.is_empty() {
            let prog = libc::sock_fprog {
                len: u16::try_from(filter.len())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
                filter: filter.as_ptr().cast_mut(),
            };
            // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies
            // the program. `fd` is open.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    (&raw const prog).cast::<libc::c_void>(),
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: an all-zero sockaddr_ll is a valid value of that plain C struct.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a properly initialised sockaddr_ll of `len` bytes; `fd` is open.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    /// Registers the socket with the tokio reactor (needs a runtime).
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<PacketSocket>> {
        // SAFETY: the descriptor is the OwnedFd inside `self`, which the AsyncFd owns from
        // now on: it stays open, and `as_raw_fd` returns that same descriptor, until the
        // AsyncFd is dropped.
        unsafe { tokio::io::unix::AsyncFd::register(self) }.map_err(io::Error::from)
    }

    /// The index of the interface the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        u32::try_from(self.ifindex).unwrap_or(0)
    }

    /// Accepts (or, with `join == false`, stops accepting) frames sent to a link-layer
    /// multicast address on this interface, e.g. an IPv6 solicited-node group's MAC.
    pub fn multicast(&self, mac: [u8; 6], join: bool) -> io::Result<()> {
        let mut mr = libc::packet_mreq {
            mr_ifindex: self.ifindex,
            mr_type: libc::PACKET_MR_MULTICAST as u16,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        mr.mr_address[..6].copy_from_slice(&mac);
        let opt = if join {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        // SAFETY: `mr` is a fully initialised packet_mreq; `fd` is open and bound.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                opt,
                (&raw const mr).cast::<libc::c_void>(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame into `buf`; `Ok(None)` for frames this host sent itself.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `from`/`len` describe a
        // writable sockaddr_ll; `fd` is open.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                0,
                (&raw mut from).cast::<libc::sockaddr>(),
                &raw mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if from.sll_pkttype == PACKET_OUTGOING {
            return Ok(None);
        }
        Ok(Some(usize::try_from(n).unwrap_or(0)))
    }

    /// Sends one complete Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes; `fd` is open and bound.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast::<libc::c_void>(),
                frame.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    /// Runs a program of the instructions used here over `frame`, as the kernel would with
    /// the frame's packet type `pkttype`; returns the bytes to keep (0: dropped).
    fn run(prog: &[libc::sock_filter], frame: &[u8], pkttype: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            let k = i.k as usize;
            pc += 1;
            match i.code {
                LD_W_ABS if i.k == AD_PKTTYPE => a = pkttype,
                LD_H_ABS => match frame.get(k..k + 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                },
                LD_B_ABS => match frame.get(k) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("instruction {other:#x} not modelled"),
            }
        }
    }

    fn icmpv6(kind: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14 + 6] = 58;
        f[14 + 40] = kind;
        f
    }

    const HOST: u32 = 0;
    const BROADCAST: u32 = 1;
    const MULTICAST: u32 = 2;

    #[test]
    fn the_ndp_filter_keeps_solicitations_and_advertisements_for_this_host_only() {
        let p = neighbor_discovery_filter();
        assert_ne!(run(&p, &icmpv6(135), MULTICAST), 0);
        assert_ne!(run(&p, &icmpv6(135), HOST), 0, "a unicast NUD probe");
        assert_ne!(run(&p, &icmpv6(136), MULTICAST), 0);
        for other in [128, 133, 134, 137] {
            assert_eq!(run(&p, &icmpv6(other), MULTICAST), 0, "ICMPv6 type {other}");
        }
        let mut udp = icmpv6(135);
        udp[14 + 6] = 17;
        assert_eq!(run(&p, &udp, MULTICAST), 0, "not ICMPv6");
        let mut v4 = icmpv6(135);
        v4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(run(&p, &v4, MULTICAST), 0, "not IPv6");
        assert_eq!(
            run(&p, &icmpv6(135), PACKET_OTHERHOST),
            0,
            "for another host, or from a VLAN this node has no device for"
        );
        assert_eq!(run(&p, &icmpv6(135)[..20], MULTICAST), 0, "too short");
    }

    #[test]
    fn the_arp_filter_drops_only_frames_for_another_host() {
        let p = arp_filter();
        let frame = [0u8; 42];
        assert_ne!(run(&p, &frame, BROADCAST), 0);
        assert_ne!(run(&p, &frame, HOST), 0);
        assert_eq!(run(&p, &frame, PACKET_OTHERHOST), 0);
    }
}
