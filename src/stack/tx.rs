//! The single path by which frames reach the guest: build a frame in place, write it to the
//! TAP, and hold it back instead of dropping it when the TAP cannot take it.
//!
//! smoltcp recovers from loss slowly (1 s minimum RTO, no SACK use), so this writer never drops
//! a frame because the device is busy: a frame that gets `EAGAIN` goes to a bounded backlog,
//! and while the backlog is non-empty [`TapWriter::is_blocked`] tells the TCP flows to stop
//! emitting until the TAP is writable again. Frames are built directly in one reusable buffer,
//! so a frame costs no allocation unless it has to wait.
//!
//! On a TAP with vnet headers ([`Framing::Vnet`]) every write starts with one: empty for the
//! frames we build ourselves (checksums complete, one frame each), filled in by the TCP flows'
//! device for their segments ([`TapWriter::send_offloaded`], see [`super::vnet`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::vnet::VnetHeader;
use crate::footprint::Pages;
use crate::observe::capture::Capture;
use crate::tap::{self, Framing};

/// Room for the largest frame: MTU 65520 plus the Ethernet header, with slack.
pub const FRAME_BUF: usize = 65536 + 64;

/// Frames that may wait for the TAP. Control replies (ARP, RST) can still be queued past the
/// point where TCP flows stop emitting, up to the hard cap.
const BACKLOG_SOFT: usize = 64;
const BACKLOG_HARD: usize = 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct TxStats {
    pub frames: u64,
    pub bytes: u64,
    pub deferred: u64,
    /// Frames the kernel rejected (e.g. EIO while tap0 is down) or that overflowed the backlog.
    pub dropped: u64,
}

pub struct TapWriter {
    fd: OwnedFd,
    /// Bytes of vnet header before each frame (0: plain frames).
    header_len: usize,
    /// The header, then room for the largest frame.
    scratch: Pages,
    backlog: VecDeque<Vec<u8>>,
    pub stats: TxStats,
    /// `--pcap`: every frame sent (and, from the stack, every frame received) is recorded.
    pub capture: Option<Capture>,
}

impl TapWriter {
    pub fn new(fd: OwnedFd, framing: Framing) -> io::Result<Self> {
        let header_len = framing.header_len();
        Ok(TapWriter {
            fd,
            header_len,
            scratch: Pages::new(header_len + FRAME_BUF)?,
            backlog: VecDeque::new(),
            stats: TxStats::default(),
            capture: None,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether TCP flows should hold their output until the TAP drains.
    pub fn is_blocked(&self) -> bool {
        self.backlog.len() >= BACKLOG_SOFT
    }

    /// Whether frames are waiting for the TAP to become writable.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Frames waiting for the TAP to take them.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Whether writes carry a vnet header (so TCP segments may be offloaded).
    pub fn offloads(&self) -> bool {
        self.header_len > 0
    }

    /// Build a frame of `len` bytes with `fill` and send it.
    pub fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.send_offloaded(len, |frame| (fill(frame), Some(VnetHeader::default())))
    }

    /// Build a frame of `len` bytes with `fill`, which also says what its vnet header is
    /// (ignored on a plain TAP), and send it; or, if `fill` gives no header, drop it (a
    /// frame that could not be completed).
    pub fn send_offloaded<R>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> (R, Option<VnetHeader>),
    ) -> R {
        let total = (self.header_len + len).min(self.scratch.len());
        let (header, frame) = self.scratch[..total].split_at_mut(self.header_len);
        let (r, vnet) = fill(frame);
        let Some(vnet) = vnet else {
            return r;
        };
        vnet.emit(header);
        if let Some(capture) = &mut self.capture {
            capture.record(frame);
        }
        if !self.backlog.is_empty() {
            self.defer(total);
            return r;
        }
        loop {
            match tap::write_frame(self.fd.as_fd(), &self.scratch[..total]) {
                Ok(_) => {
                    self.stats.frames += 1;
                    self.stats.bytes += (total - self.header_len) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.defer(total),
                Err(e) => {
                    self.stats.dropped += 1;
                    log::debug!("tap write of {len} bytes failed: {e}");
                }
            }
            return r;
        }
    }

    fn defer(&mut self, len: usize) {
        if self.backlog.len() >= BACKLOG_HARD {
            self.stats.dropped += 1;
            return;
        }
        self.stats.deferred += 1;
        self.backlog.push_back(self.scratch[..len].to_vec());
    }

    /// Write out the backlog; call when the TAP reports writable. Returns true once empty.
    pub fn flush(&mut self) -> bool {
        while let Some(frame) = self.backlog.front() {
            match tap::write_frame(self.fd.as_fd(), frame) {
                Ok(_) => {
                    self.stats.frames += 1;
                    self.stats.bytes += frame.len().saturating_sub(self.header_len) as u64;
                    self.backlog.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.stats.dropped += 1;
                    log::debug!("tap write failed: {e}");
                    self.backlog.pop_front();
                }
            }
        }
        true
    }
}
