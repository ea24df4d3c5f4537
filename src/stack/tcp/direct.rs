//! Two copies per byte: the paths on which payload skips smoltcp's rings.
//!
//! A relay between the TAP and host sockets needs two copies per byte (kernel → us, us →
//! kernel). Through smoltcp's rings it makes three, the third a `memmove` of every byte in our
//! own thread. This module owns the two ways around the rings, both through the small smoltcp
//! patch in `vendor/smoltcp` (see its `PATCHES.md`):
//!
//! - **guest → host, [`HostSink`]**: smoltcp offers the payload of an in-order guest segment
//!   to the sink, straight from the frame we read from the TAP, whenever the flow's receive
//!   ring is empty; the sink `send()`s it to the host socket. What the socket does not take
//!   goes into the ring as before (and from there to the host when it is writable again), so
//!   back-pressure and the advertised window work as without it. The sink lives in the flow
//!   and is lent to smoltcp only for the call that hands it one guest segment, while the host
//!   socket it writes to is known open and writable.
//! - **host → guest, [`PeekedSend`]**: the host socket's own receive queue is the transmit
//!   buffer, as in passt. smoltcp's transmit ring only counts bytes (how many the host has
//!   queued that the guest has not acknowledged; its storage is never touched); each segment
//!   smoltcp emits gets its headers from smoltcp and its payload from `recv(MSG_PEEK)` at
//!   `SO_PEEK_OFF` (the segment's offset from the oldest unacknowledged byte), read straight
//!   into the frame about to be written to the TAP; what the guest acknowledges is dropped
//!   from the host queue with `recv(MSG_TRUNC)`, which copies nothing. A retransmission peeks
//!   again. The kernel's receive queue holds at most what the ring could (we account no
//!   more), so the memory bound is unchanged; it is charged to the socket, not to us.
//!
//! The second path needs the kernel to support `SO_PEEK_OFF` on TCP (Linux 6.9 and later)
//! and the TAP to take TCP payloads without a checksum (vnet headers, see [`super::super::vnet`]):
//! the payload is never read by us, so no checksum could be computed over it. Without either,
//! and with `USERNET_DIRECT=0`, a flow reads host data into the ring as before. The first path
//! works on any TAP; `USERNET_DIRECT=0` turns it off too (for comparisons: `bench/`).
//!
//! With `SO_OOBINLINE` set on the host socket, urgent data is ordinary stream data for the
//! peeks, the truncations and `FIONREAD` alike (otherwise the kernel skips the urgent byte
//! in some and counts it in others).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, send};
use smoltcp::socket::tcp::{self, RxSink};
use smoltcp::wire::TcpPacket;

use super::gate;

/// The environment variable that turns both direct paths off (`0`, `off`, `false`, `no`).
pub const DIRECT_ENV: &str = "USERNET_DIRECT";

/// Whether `USERNET_DIRECT` allows the direct paths (on unless it says otherwise).
pub fn wanted() -> bool {
    crate::units::env_switch(DIRECT_ENV)
}

/// Guest payload straight from the frame to the host socket (see the module docs).
#[derive(Debug)]
pub struct HostSink {
    fd: RawFd,
    /// Bytes the host socket took during the current loan.
    written: usize,
    /// The socket took less than offered, or refused: offer nothing more during this loan.
    stopped: bool,
    /// It stopped because the socket is full (not because of an error).
    full: bool,
}

/// What one loan of the sink to smoltcp did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sunk {
    pub written: usize,
    /// The host socket is full: wait for its writability before writing again.
    pub full: bool,
}

impl HostSink {
    pub fn new(fd: BorrowedFd<'_>) -> Box<Self> {
        Box::new(HostSink {
            fd: fd.as_raw_fd(),
            written: 0,
            stopped: false,
            full: false,
        })
    }

    /// Lend the sink to `sock` for one call into smoltcp.
    pub fn lend(mut self: Box<Self>, sock: &mut tcp::Socket<'_>) {
        self.written = 0;
        self.stopped = false;
        self.full = false;
        sock.set_rx_sink(Some(self));
    }

    /// Take the sink back from `sock`, with what it did.
    pub fn take_back(sock: &mut tcp::Socket<'_>) -> Option<(Box<Self>, Sunk)> {
        let any: Box<dyn std::any::Any> = sock.take_rx_sink()?;
        let sink = any.downcast::<HostSink>().ok()?;
        let sunk = Sunk {
            written: sink.written,
            full: sink.full,
        };
        Some((sink, sunk))
    }
}

impl RxSink for HostSink {
    fn write(&mut self, data: &[u8]) -> usize {
        if self.stopped || data.is_empty() {
            return 0;
        }
        // The fd is the host socket of the flow that owns this sink; it is lent to smoltcp
        // only while that flow holds the socket open (see `lend`'s callers).
        match send(
            self.fd,
            data,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => {
                self.written += n;
                if n < data.len() {
                    self.stopped = true;
                    self.full = true;
                }
                n
            }
            Err(Errno::EAGAIN) => {
                self.stopped = true;
                self.full = true;
                0
            }
            // Anything else (a reset, EINTR) is seen again by the ring path's own write, which
            // knows what to do with it: the payload goes to the ring.
            Err(_) => {
                self.stopped = true;
                0
            }
        }
    }
}

/// Host data kept in the host socket's receive queue until the guest acknowledges it (see
/// the module docs).
#[derive(Debug)]
pub struct PeekedSend {
    /// Our sequence number of the first byte in the host socket's queue.
    head_seq: u32,
    /// Bytes in the host queue that smoltcp's transmit ring counts (the rest of the queue is
    /// not read yet).
    tracked: usize,
    /// The socket's `SO_PEEK_OFF` as the kernel has it, if known.
    peek_off: Option<usize>,
    /// A peek or a truncation did not do what the accounting says it must: the flow cannot
    /// go on (it is reset).
    pub broken: bool,
}

/// Why a [`PeekedSend::fill`] or [`PeekedSend::release_acked`] failed.
fn broken(what: &str, e: impl std::fmt::Display) -> bool {
    log::debug!("host socket {what}: {e}; resetting the flow");
    true
}

impl PeekedSend {
    /// Turn the host socket `fd` into the flow's transmit buffer, if the kernel can peek at an
    /// offset on TCP sockets. None: the flow reads into smoltcp's ring as before.
    pub fn enable(fd: BorrowedFd<'_>) -> Option<Self> {
        let sock = socket2::SockRef::from(&fd);
        if let Err(e) = sock.set_out_of_band_inline(true) {
            log::debug!("SO_OOBINLINE: {e}; host data goes through the ring");
            return None;
        }
        let mut send = PeekedSend {
            head_seq: 0,
            tracked: 0,
            peek_off: None,
            broken: false,
        };
        match send.set_peek_off(fd, 0) {
            Ok(()) => Some(send),
            Err(e) => {
                log::debug!("SO_PEEK_OFF on TCP: {e}; host data goes through the ring");
                None
            }
        }
    }

    #[allow(unsafe_code)] // setsockopt(2) with an int; see the SAFETY comment.
    fn set_peek_off(&mut self, fd: BorrowedFd<'_>, off: usize) -> io::Result<()> {
        if self.peek_off == Some(off) {
            return Ok(());
        }
        let value = libc::c_int::try_from(off)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: `value` is a live c_int and the length passed is its size; the kernel only
        // reads it. `fd` is a borrowed, open socket.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            self.peek_off = None;
            return Err(io::Error::last_os_error());
        }
        self.peek_off = Some(off);
        Ok(())
    }

    /// Bytes in the host socket's queue beyond what smoltcp already counts.
    #[allow(unsafe_code)] // ioctl(2) FIONREAD into an int; see the SAFETY comment.
    pub fn unread(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD (SIOCINQ) writes one int, to `queued`, which lives across the
        // call. `fd` is a borrowed, open socket.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut queued) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(queued)
            .unwrap_or(0)
            .saturating_sub(self.tracked))
    }

    /// smoltcp's ring now counts `n` more bytes of the host queue; `ring_seq` is the sequence
    /// number of the ring's first byte ([`tcp::Socket::send_buffer_seq`]).
    pub fn track(&mut self, n: usize, ring_seq: u32) {
        if self.tracked == 0 {
            self.head_seq = ring_seq;
        }
        self.tracked += n;
    }

    /// Whether the next byte past what is tracked is the end of the stream (`Ok(true)`),
    /// data that arrived since we looked (`Ok(false)`), or an error (`WouldBlock`: neither yet).
    pub fn at_end(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        self.set_peek_off(fd, self.tracked)?;
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        match nix::sys::socket::recv(fd.as_raw_fd(), &mut byte, flags) {
            Ok(0) => Ok(true),
            Ok(n) => {
                self.peek_off = Some(self.tracked + n);
                Ok(false)
            }
            Err(e) => {
                // A failed peek leaves the offset where it was, but be sure.
                self.peek_off = None;
                Err(io::Error::from(e))
            }
        }
    }

    /// Drop from the host queue what the guest acknowledged: smoltcp's ring now counts only
    /// `send_queue` bytes. False if the kernel did not drop what it must (the flow is broken).
    #[allow(unsafe_code)] // recv(2) with MSG_TRUNC and no buffer; see the SAFETY comment.
    pub fn release_acked(&mut self, fd: BorrowedFd<'_>, send_queue: usize) -> bool {
        let acked = self.tracked.saturating_sub(send_queue);
        if acked == 0 || self.broken {
            return !self.broken;
        }
        loop {
            // SAFETY: MSG_TRUNC on a TCP socket discards `acked` queued bytes without copying
            // them (tcp_recvmsg skips the copy), so the buffer is never written; a null buffer
            // makes any write the kernel did attempt fail with EFAULT instead of landing
            // anywhere. `fd` is a borrowed, open socket.
            let r = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    acked,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if r < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            if usize::try_from(r).ok() != Some(acked) {
                let e = if r < 0 {
                    io::Error::last_os_error().to_string()
                } else {
                    format!("dropped {r} of {acked} acknowledged bytes")
                };
                self.broken = broken("truncation", e);
                return false;
            }
            break;
        }
        self.tracked -= acked;
        self.head_seq = self.head_seq.wrapping_add(acked as u32);
        // The kernel moves the peek offset back by what was consumed (not below 0).
        self.peek_off = self.peek_off.map(|off| off.saturating_sub(acked));
        true
    }

    /// Fill the payload of the TCP segment in `ip_packet`, which smoltcp emitted without it,
    /// from the host queue. False if that was not possible: the segment must not leave.
    pub fn fill(&mut self, fd: BorrowedFd<'_>, ip_packet: &mut [u8]) -> bool {
        if self.broken {
            return false;
        }
        let Some(tcp) = gate::tcp_of_mut(ip_packet) else {
            return true;
        };
        let (seq, header_len) = match TcpPacket::new_checked(&*tcp) {
            Ok(p) => (p.seq_number().0 as u32, usize::from(p.header_len())),
            Err(_) => return true,
        };
        let Some(payload) = tcp.get_mut(header_len..).filter(|p| !p.is_empty()) else {
            return true;
        };
        let offset = seq.wrapping_sub(self.head_seq) as usize;
        if offset.saturating_add(payload.len()) > self.tracked {
            self.broken = broken(
                "peek",
                format!(
                    "segment at offset {offset} of {} bytes past the {} tracked",
                    payload.len(),
                    self.tracked
                ),
            );
            return false;
        }
        let mut filled = 0;
        // A peek stops short at the urgent mark (SO_OOBINLINE or not): a second one goes on
        // from there. Nothing else makes it short, since the bytes are queued.
        for _ in 0..3 {
            if let Err(e) = self.set_peek_off(fd, offset + filled) {
                self.broken = broken("SO_PEEK_OFF", e);
                return false;
            }
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            match nix::sys::socket::recv(fd.as_raw_fd(), &mut payload[filled..], flags) {
                Ok(n) => {
                    self.peek_off = Some(offset + filled + n);
                    filled += n;
                    if filled == payload.len() || n == 0 {
                        break;
                    }
                }
                Err(Errno::EINTR) => self.peek_off = None,
                Err(e) => {
                    self.peek_off = None;
                    self.broken = broken("peek", e);
                    return false;
                }
            }
        }
        if filled != payload.len() {
            self.broken = broken(
                "peek",
                format!("{filled} of {} queued bytes", payload.len()),
            );
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use super::*;

    /// A connected pair on 127.0.0.1: (ours, the peer's). Ours has a receive buffer that
    /// holds the tests' 100,000 bytes (the kernel doubles what is asked, up to rmem_max).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ours = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        ours.set_recv_buffer_size(1 << 20).expect("SO_RCVBUF");
        ours.connect(&addr.into()).expect("connect");
        let ours = TcpStream::from(ours);
        let (peer, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        (ours, peer)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Wait until the host queue holds `n` bytes beyond what is tracked.
    fn wait_unread(send: &PeekedSend, fd: BorrowedFd<'_>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while send.unread(fd).expect("FIONREAD") < n {
            assert!(Instant::now() < deadline, "the peer's bytes never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// An IPv4 packet holding a TCP segment at `seq` with `len` zero bytes of payload, as
    /// smoltcp emits it for a device that fills payloads.
    fn segment(seq: u32, len: usize) -> Vec<u8> {
        let total = 40 + len;
        let mut ip = vec![0u8; total];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 2, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 100]);
        ip[24..28].copy_from_slice(&seq.to_be_bytes());
        ip[32] = 5 << 4;
        ip
    }

    fn kernel_peeks_at_an_offset() -> bool {
        let (ours, _peer) = pair();
        socket2::SockRef::from(&ours).set_nonblocking(true).is_ok()
            && PeekedSend {
                head_seq: 0,
                tracked: 0,
                peek_off: None,
                broken: false,
            }
            .set_peek_off(ours.as_fd(), 0)
            .is_ok()
    }

    #[test]
    fn segments_are_filled_from_their_offset_in_the_host_queue_and_acked_bytes_dropped() {
        let (ours, mut peer) = pair();
        let fd = ours.as_fd();
        let Some(mut send) = PeekedSend::enable(fd) else {
            // Linux before 6.9: the flow keeps the ring; that fallback is what is checked.
            assert!(!kernel_peeks_at_an_offset());
            return;
        };
        let data = pattern(100_000);
        peer.write_all(&data).expect("peer writes");
        wait_unread(&send, fd, data.len());
        let isn = 0xffff_f000_u32; // the sequence space wraps inside the data
        send.track(75_000, isn);
        assert_eq!(send.unread(fd).expect("FIONREAD"), 25_000);

        // In order, then a retransmission further back, then on again.
        for (offset, len) in [
            (0, 32_000),
            (32_000, 32_000),
            (1_000, 500),
            (64_000, 11_000),
        ] {
            let mut ip = segment(isn.wrapping_add(offset as u32), len);
            assert!(send.fill(fd, &mut ip), "offset {offset}");
            assert_eq!(&ip[40..], &data[offset..offset + len], "offset {offset}");
        }
        // The guest acknowledged 50,000 bytes: they leave the host queue, nothing else does.
        assert!(send.release_acked(fd, 25_000));
        assert_eq!(send.unread(fd).expect("FIONREAD"), 25_000);
        let mut ip = segment(isn.wrapping_add(50_000), 25_000);
        assert!(send.fill(fd, &mut ip));
        assert_eq!(&ip[40..], &data[50_000..75_000]);
        // Nothing was consumed but the acknowledged bytes: a plain read gets the rest.
        let mut rest = Vec::new();
        peer.shutdown(Shutdown::Write).expect("peer FIN");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 65536];
        loop {
            match (&ours).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no EOF");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(rest, data[50_000..]);
    }

    #[test]
    fn a_segment_past_what_is_tracked_is_refused_and_breaks_the_flow() {
        let (ours, mut peer) = pair();
        let fd = ours.as_fd();
        let Some(mut send) = PeekedSend::enable(fd) else {
            assert!(!kernel_peeks_at_an_offset());
            return;
        };
        peer.write_all(&pattern(10_000)).expect("peer writes");
        wait_unread(&send, fd, 10_000);
        send.track(4_000, 1);
        // Queued in the kernel, but not counted by smoltcp: never sent.
        let mut ip = segment(1 + 3_000, 2_000);
        assert!(!send.fill(fd, &mut ip));
        assert!(send.broken);
        let mut ip = segment(1, 100);
        assert!(!send.fill(fd, &mut ip), "a broken flow sends no more data");
        // Segments without payload (ACKs, FIN) need nothing from the host.
        let mut ack = segment(1, 0);
        send.broken = false;
        assert!(send.fill(fd, &mut ack));
    }

    #[test]
    fn the_end_of_the_host_stream_is_found_past_the_tracked_bytes() {
        let (ours, mut peer) = pair();
        let fd = ours.as_fd();
        let Some(mut send) = PeekedSend::enable(fd) else {
            assert!(!kernel_peeks_at_an_offset());
            return;
        };
        peer.write_all(b"hello").expect("peer writes");
        wait_unread(&send, fd, 5);
        send.track(5, 100);
        let e = send.at_end(fd).expect_err("nothing past the data yet");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        peer.shutdown(Shutdown::Write).expect("peer FIN");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match send.at_end(fd) {
                Ok(true) => break,
                Ok(false) => panic!("no data was sent after the 5 bytes"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the FIN never arrived");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        // The data before the end is still there to send (and to resend).
        let mut ip = segment(100, 5);
        assert!(send.fill(fd, &mut ip));
        assert_eq!(&ip[40..], b"hello");
    }

    #[test]
    fn the_sink_writes_until_the_host_socket_is_full_then_offers_nothing_more() {
        let (ours, peer) = pair();
        socket2::SockRef::from(&ours)
            .set_send_buffer_size(4096)
            .expect("SO_SNDBUF");
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(4096)
            .expect("SO_RCVBUF");
        let mut sink = HostSink::new(ours.as_fd());
        let chunk = pattern(65_536);
        let mut written = 0;
        for _ in 0..64 {
            let n = sink.write(&chunk);
            written += n;
            if n < chunk.len() {
                break;
            }
        }
        assert!(
            sink.full && sink.stopped,
            "a peer that reads nothing fills the socket"
        );
        assert_eq!(sink.written, written);
        assert_eq!(sink.write(&chunk), 0, "nothing more during this loan");
        let mut got = vec![0u8; written];
        (&peer)
            .read_exact(&mut got)
            .expect("the peer reads what was written");
        let expected: Vec<u8> = chunk.iter().cycle().take(written).copied().collect();
        assert_eq!(got, expected);
    }
}
