//! The TAP device that carries the guest's Ethernet frames.
//!
//! The child creates it inside the new network namespace (with the `tun-tap` crate) and hands
//! the fd to the parent, which reads and writes frames on it for the rest of the run. This
//! module owns both halves: creation with errors a user can act on, and the non-blocking
//! one-frame-per-syscall I/O the stack uses.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

const TUN_PATH: &str = "/dev/net/tun";

/// Why the TAP device could not be created, phrased for the user.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "{TUN_PATH} is missing: load the tun module (modprobe tun) or create the device node (mknod {TUN_PATH} c 10 200)"
    )]
    Missing,
    #[error(
        "cannot open {TUN_PATH}: {0}; it must be readable and writable by your user (normally mode 0666)"
    )]
    Denied(io::Error),
    #[error(
        "not permitted to create TAP device {0}: the kernel refused TUNSETIFF (a container or security policy may forbid TUN/TAP)"
    )]
    NotPermitted(String),
    #[error("TAP device {0} already exists and is in use by another process")]
    Busy(String),
    #[error("cannot create TAP device {0}: {1}")]
    Other(String, io::Error),
}

/// Create (or attach to a persistent, unattached) TAP device `name` in the current network
/// namespace. The returned fd is blocking; the parent makes it non-blocking.
pub fn create(name: &str) -> Result<OwnedFd, TapError> {
    if !Path::new(TUN_PATH).exists() {
        return Err(TapError::Missing);
    }
    match tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tap) {
        // SAFETY: into_raw_fd hands us sole ownership of the descriptor.
        Ok(iface) => Ok(unsafe { OwnedFd::from_raw_fd(iface.into_raw_fd()) }),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => TapError::Missing,
            Some(libc::EACCES) => TapError::Denied(e),
            Some(libc::EPERM) => TapError::NotPermitted(name.to_string()),
            Some(libc::EBUSY) => TapError::Busy(name.to_string()),
            _ => TapError::Other(name.to_string(), e),
        }),
    }
}

/// Put `fd` in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Read one frame. `WouldBlock` when the queue is empty.
#[inline]
pub fn read_frame(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(fd, buf).map_err(io::Error::from)
}

/// Write one frame. `WouldBlock` when the device cannot take it now.
#[inline]
pub fn write_frame(fd: BorrowedFd<'_>, frame: &[u8]) -> io::Result<usize> {
    nix::unistd::write(fd, frame).map_err(io::Error::from)
}
