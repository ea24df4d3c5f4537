//! ICMP errors the host kernel received for our sockets, read from the socket error queue
//! (`IP_RECVERR`), so they can be passed on to the guest as real ICMP errors: a UDP datagram
//! to a closed port becomes "port unreachable" in the guest, not silence.

use std::io::{self, IoSliceMut};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

/// `ee_origin` of an error that came from an ICMP message.
const SO_EE_ORIGIN_ICMP: u8 = 2;

/// One queued socket error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketError {
    pub errno: i32,
    /// ICMP type and code, when the error came from an ICMP message.
    pub icmp: Option<(u8, u8)>,
    /// The host that sent the ICMP message.
    pub offender: Option<Ipv4Addr>,
    /// How many bytes of the offending datagram's payload came back (in the caller's buffer).
    pub payload_len: usize,
}

/// Ask the kernel to queue ICMP errors on `fd` (IPv4).
pub fn enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt(&fd, sockopt::Ipv4RecvErr, &true)?;
    Ok(())
}

/// Take the oldest queued error, if any; the offending payload lands in `buf`.
pub fn take(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Option<SocketError> {
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
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
        if let ControlMessageOwned::Ipv4RecvErr(err, addr) = c {
            let icmp = (err.ee_origin == SO_EE_ORIGIN_ICMP).then_some((err.ee_type, err.ee_code));
            let offender = addr.map(|a| Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)));
            return Some(SocketError {
                errno: err.ee_errno as i32,
                icmp,
                offender,
                payload_len,
            });
        }
    }
    None
}
