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

/// A classic BPF program that accepts Ethernet frames carrying an IPv6 packet whose next
/// header is ICMPv6 and whose ICMPv6 type is Neighbor Solicitation (135) or Neighbor
/// Advertisement (136: another MAC claiming an owned address is re-asserted against), and
/// drops all else. (A packet with extension headers before ICMPv6 is not seen; RFC 4861
/// senders do not add any.)
pub fn neighbor_discovery_filter() -> [libc::sock_filter; 9] {
    const LD_H_ABS: u16 = 0x28;
    const LD_B_ABS: u16 = 0x30;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        f(LD_H_ABS, 0, 0, 12),       // EtherType
        f(JEQ_K, 0, 6, 0x86dd),      // IPv6? else drop
        f(LD_B_ABS, 0, 0, 14 + 6),   // next header
        f(JEQ_K, 0, 4, 58),          // ICMPv6? else drop
        f(LD_B_ABS, 0, 0, 14 + 40),  // ICMPv6 type
        f(JEQ_K, 1, 0, 135),         // Neighbor Solicitation: accept
        f(JEQ_K, 0, 1, 136),         // Neighbor Advertisement: accept, else drop
        f(RET_K, 0, 0, 0x0004_0000), // accept
        f(RET_K, 0, 0, 0),           // drop
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
