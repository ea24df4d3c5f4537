//! The TAP device that carries the guest's Ethernet frames.
//!
//! The child creates it inside the new network namespace and hands the fd to the parent,
//! which reads and writes frames on it for the rest of the run. This module owns both halves:
//! creation with errors a user can act on, and the non-blocking one-frame-per-syscall I/O the
//! stack uses.
//!
//! # Offloads
//!
//! usernet's own TAPs are opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` (checksum, TCP
//! segmentation for IPv4 and IPv6, ECN, and UDP segmentation where the kernel has it): every
//! frame then starts with a `virtio_net_hdr`
//! ([`crate::stack::vnet`]), the guest kernel hands over TCP super-segments of up to 64 KiB
//! whose checksum is left to us (we need none: the payload goes to a host socket), and it
//! takes the same from us, at any MTU. Without it, each 1500-byte frame costs one syscall each
//! way. The `tun-tap` crate opens TAPs without these flags, so the device is opened here with
//! the `TUNSETIFF` family of ioctls directly.
//!
//! The header is the 10-byte legacy `struct virtio_net_hdr`, the TAP's default size: every
//! field usernet reads or writes is in it (the 12-byte v1 header adds only `num_buffers`,
//! which means something for mergeable receive buffers, not for a TAP), and with it the IP
//! header of a frame lands 8-byte aligned in our page-aligned buffers (10 + 14 = 24). Its
//! fields are made little-endian (`TUNSETVNETLE`) so one parser serves every host.
//!
//! If any offload step fails, or `USERNET_OFFLOAD=0` is set, the TAP is opened plain, as
//! before. A TAP fd usernet did not open (slirp4netns's `--netns-type=tapfd`, a BESS client)
//! is used as it comes: [`framing`] asks the kernel whether that fd carries the header.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

const TUN_PATH: &str = "/dev/net/tun";

/// The `virtio_net_hdr` size usernet sets on the TAPs it opens (see the module docs).
pub const VNET_HDR_LEN: usize = 10;
/// The largest header size accepted on a TAP fd handed in; others are reset to ours.
const MAX_VNET_HDR_LEN: usize = 64;

/// The environment variable that turns offloads off (`0`, `off`, `false` or `no`).
pub const OFFLOAD_ENV: &str = "USERNET_OFFLOAD";

/// What the guest may hand us, and we it: checksums left to the receiver, TCP super-segments
/// over IPv4 and IPv6, with or without ECN's CWR.
const OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
/// UDP segmentation too (Linux 6.2 and later): a guest socket's `UDP_SEGMENT` send reaches
/// us as one frame, which the UDP relay splits into its datagrams.
const UDP_OFFLOADS: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

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
    #[error("TAP device name {0:?} is not usable: it must be 1 to 15 bytes, without '/' or NUL")]
    BadName(String),
    #[error("cannot create TAP device {0}: {1}")]
    Other(String, io::Error),
}

/// How frames are laid out on a TAP fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Each read or write is one Ethernet frame.
    Plain,
    /// Each read or write is a `virtio_net_hdr` of `header_len` bytes, then the frame.
    Vnet { header_len: usize },
}

impl Framing {
    /// Bytes before the Ethernet frame in each read or write.
    pub fn header_len(self) -> usize {
        match self {
            Framing::Plain => 0,
            Framing::Vnet { header_len } => header_len,
        }
    }
}

/// Whether `USERNET_OFFLOAD` allows offloads (anything but `0`, `off`, `false`, `no`).
pub fn offload_wanted() -> bool {
    crate::units::env_switch(OFFLOAD_ENV)
}

/// Create (or attach to a persistent, unattached) TAP device `name` in the current network
/// namespace, with offloads unless [`offload_wanted`] says no or the kernel cannot. The
/// returned fd is blocking; the parent makes it non-blocking.
pub fn create(name: &str) -> Result<OwnedFd, TapError> {
    if !Path::new(TUN_PATH).exists() {
        return Err(TapError::Missing);
    }
    if offload_wanted() {
        match open(name, true) {
            Ok(fd) => match enable_offloads(fd.as_raw_fd()) {
                Ok(()) => return Ok(fd),
                // Dropping the fd removes the device; it is created again below.
                Err(e) => log::info!("TAP offloads unavailable ({e}): using plain frames"),
            },
            Err(e) => log::info!("TAP with vnet headers unavailable ({e}): using plain frames"),
        }
    }
    open(name, false)
}

/// Open `/dev/net/tun` and attach it to TAP `name` (`TUNSETIFF`), with vnet headers or not.
fn open(name: &str, vnet: bool) -> Result<OwnedFd, TapError> {
    let bad_name = || TapError::BadName(name.to_string());
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(bad_name());
    }
    let c_name = CString::new(name).map_err(|_| bad_name())?;
    let path = CString::new(TUN_PATH).expect("no NUL in the path");
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => TapError::Missing,
            Some(libc::EACCES) | Some(libc::EPERM) => TapError::Denied(e),
            _ => TapError::Other(name.to_string(), e),
        });
    }
    // SAFETY: `raw` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(c_name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet {
        flags |= libc::IFF_VNET_HDR;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may write back) one ifreq, which lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => TapError::NotPermitted(name.to_string()),
            Some(libc::EBUSY) => TapError::Busy(name.to_string()),
            _ => TapError::Other(name.to_string(), e),
        });
    }
    Ok(fd)
}

/// One `ioctl` that takes a pointer to an int, as the TUN header and offload calls do.
fn ioctl_int(fd: i32, request: libc::Ioctl, value: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: every request passed here reads or writes exactly one int at `value`.
    if unsafe { libc::ioctl(fd, request, value as *mut libc::c_int) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Header size, byte order and offloads on a TAP opened with `IFF_VNET_HDR`.
fn enable_offloads(fd: i32) -> io::Result<()> {
    let mut size = VNET_HDR_LEN as libc::c_int;
    ioctl_int(fd, libc::TUNSETVNETHDRSZ, &mut size)?;
    set_little_endian(fd)?;
    // With UDP segmentation if the kernel has it, else without.
    set_offloads(fd, OFFLOADS | UDP_OFFLOADS).or_else(|_| set_offloads(fd, OFFLOADS))
}

fn set_offloads(fd: i32, offloads: libc::c_uint) -> io::Result<()> {
    // TUNSETOFFLOAD takes its argument by value.
    // SAFETY: no pointer is passed; the kernel reads the flags from the argument itself.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Little-endian header fields. A little-endian host has them so anyway (kernels without
/// `TUNSETVNETLE` included); elsewhere the call must work.
fn set_little_endian(fd: i32) -> io::Result<()> {
    let mut le: libc::c_int = 1;
    match ioctl_int(fd, libc::TUNSETVNETLE, &mut le) {
        Err(e) if cfg!(target_endian = "big") => Err(e),
        _ => Ok(()),
    }
}

/// How frames are laid out on `fd`: with a vnet header if the TAP was opened with
/// `IFF_VNET_HDR` (by us or whoever handed it in), plain otherwise (and for anything that is
/// not a TAP, such as the tests' socketpairs).
pub fn framing(fd: BorrowedFd<'_>) -> Framing {
    let raw = fd.as_raw_fd();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq, which lives across the call.
    if unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut ifr) } < 0 {
        return Framing::Plain;
    }
    // SAFETY: TUNGETIFF filled in the flags member of the union.
    let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
    if flags & libc::IFF_VNET_HDR == 0 {
        return Framing::Plain;
    }
    let mut size: libc::c_int = 0;
    let size = match ioctl_int(raw, libc::TUNGETVNETHDRSZ, &mut size) {
        Ok(()) => usize::try_from(size).unwrap_or(0),
        Err(_) => VNET_HDR_LEN,
    };
    let size = if (VNET_HDR_LEN..=MAX_VNET_HDR_LEN).contains(&size) {
        size
    } else {
        let mut ours = VNET_HDR_LEN as libc::c_int;
        if let Err(e) = ioctl_int(raw, libc::TUNSETVNETHDRSZ, &mut ours) {
            log::warn!("the TAP's vnet header of {size} bytes cannot be changed: {e}");
        }
        VNET_HDR_LEN
    };
    if let Err(e) = set_little_endian(raw) {
        log::warn!("cannot make the TAP's vnet header little-endian: {e}");
    }
    Framing::Vnet { header_len: size }
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
