//! ICMP and ICMPv6 errors the host kernel received for our sockets, read from the socket error
//! queue (`IP_RECVERR`, `IPV6_RECVERR`), so they can be passed on to the guest as real ICMP
//! errors: a UDP datagram to a closed port becomes "port unreachable" in the guest, not
//! silence.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

/// `ee_origin` of an error that came from an ICMP message.
const SO_EE_ORIGIN_ICMP: u8 = 2;
/// `ee_origin` of an error that came from an ICMPv6 message.
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// One queued socket error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketError {
    pub errno: i32,
    /// ICMP (or ICMPv6, on an IPv6 socket) type and code, when the error came from one.
    pub icmp: Option<(u8, u8)>,
    /// The second word of the ICMP message where it means something (`ee_info`): the MTU of
    /// "fragmentation needed" and "packet too big".
    pub info: u32,
    /// The host that sent the ICMP message.
    pub offender: Option<IpAddr>,
    /// How many bytes of the offending datagram's payload came back (in the caller's buffer).
    pub payload_len: usize,
    /// The error came in on an IPv6 socket (so `icmp` is ICMPv6's type and code).
    pub ipv6: bool,
}

impl SocketError {
    /// Whether this is "port unreachable", which comes from the destination itself.
    pub fn is_port_unreachable(&self) -> bool {
        matches!(
            (self.ipv6, self.icmp),
            (false, Some((3, 3))) | (true, Some((1, 4)))
        )
    }
}

/// Ask the kernel to queue ICMP errors on `fd`, a socket of `target`'s family.
pub fn enable(fd: BorrowedFd<'_>, target: SocketAddr) -> io::Result<()> {
    match target {
        SocketAddr::V4(_) => setsockopt(&fd, sockopt::Ipv4RecvErr, &true)?,
        SocketAddr::V6(_) => setsockopt(&fd, sockopt::Ipv6RecvErr, &true)?,
    }
    Ok(())
}

/// Take the oldest queued error, if any; the offending payload lands in `buf`.
pub fn take(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Option<SocketError> {
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .ok()?;
    let payload_len = msg.bytes;
    for c in msg.cmsgs().ok()? {
        let (err, offender, icmp_origin, ipv6) = match c {
            ControlMessageOwned::Ipv4RecvErr(err, addr) => (
                err,
                addr.map(|a| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)))),
                SO_EE_ORIGIN_ICMP,
                false,
            ),
            ControlMessageOwned::Ipv6RecvErr(err, addr) => (
                err,
                addr.map(|a| IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))),
                SO_EE_ORIGIN_ICMP6,
                true,
            ),
            _ => continue,
        };
        let icmp = (err.ee_origin == icmp_origin).then_some((err.ee_type, err.ee_code));
        return Some(SocketError {
            errno: err.ee_errno as i32,
            icmp,
            info: err.ee_info,
            offender,
            payload_len,
            ipv6,
        });
    }
    None
}
