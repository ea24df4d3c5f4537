//! The userspace network stack that runs in the parent, in the host's network namespace.
//!
//! [`Stack`] owns the TAP fd and every host socket of the guest's flows, and runs one mio
//! event loop over them: read a batch of frames from the TAP, [classify](frame) each one,
//! hand it to its handler (ARP here, TCP in [`tcp`]), then do host I/O and smoltcp egress
//! for every flow that was touched, then fire due timers. Nothing runs unless an fd is ready
//! or a deadline passed, so an idle stack sleeps in `epoll_wait`.
//!
//! This is the hot path. Setup code (namespaces, mounts, the CLI) lives in `launcher`.
//!
//! Tokens below [`FIRST_STACK_TOKEN`] belong to the embedding program (signals, control
//! sockets); [`Stack::run`] hands their events to a callback.

pub mod emit;
pub mod frame;
pub mod policy;
pub mod slab;
pub mod tcp;
pub mod tx;

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use smoltcp::time::Instant;

use crate::net::VirtualNetwork;
use crate::tap;
use frame::{Classified, DropReason};
use policy::HostPolicy;
use tcp::{Link, TcpConfig, TcpContext, TcpFlows};
use tx::{FRAME_BUF, TapWriter};

/// The TAP's token.
const TAP_TOKEN: Token = Token(0);
/// Tokens from 1 up to here are the embedding program's.
pub const FIRST_STACK_TOKEN: usize = 1 << 16;

/// Frames read from the TAP before host sockets and timers get a turn.
const RX_BATCH: usize = 256;

#[derive(Debug, Clone, Copy)]
pub struct StackConfig {
    pub net: VirtualNetwork,
    /// IP MTU of tap0.
    pub mtu: u32,
    pub disable_host_loopback: bool,
    pub tcp: TcpConfig,
}

#[derive(Debug, Default, Clone)]
pub struct StackStats {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub arp_replies: u64,
    pub drops: [u64; DropReason::COUNT],
}

/// Why [`Stack::run`] stopped without the callback asking it to.
#[derive(Debug)]
pub enum StackError {
    /// Reading the TAP failed for good (the device or its namespace is gone).
    TapGone(io::Error),
    Io(io::Error),
}

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackError::TapGone(e) => write!(f, "the TAP device went away: {e}"),
            StackError::Io(e) => write!(f, "event loop failed: {e}"),
        }
    }
}

impl std::error::Error for StackError {}

pub struct Stack {
    poll: Poll,
    tx: TapWriter,
    rx_buf: Box<[u8]>,
    tap_readable: bool,
    tcp: TcpFlows,
    policy: HostPolicy,
    link: Link,
    epoch: StdInstant,
    pub stats: StackStats,
}

impl Stack {
    /// A stack serving the guest behind the TAP `tap`.
    pub fn new(tap: OwnedFd, config: StackConfig) -> io::Result<Self> {
        tap::set_nonblocking(std::os::fd::AsFd::as_fd(&tap))?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&tap.as_raw_fd()),
            TAP_TOKEN,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(Stack {
            poll,
            tx: TapWriter::new(tap),
            rx_buf: vec![0u8; FRAME_BUF].into_boxed_slice(),
            // Frames may already be queued (the kernel's own traffic on link-up).
            tap_readable: true,
            tcp: TcpFlows::new(config.tcp),
            policy: HostPolicy {
                net: config.net,
                disable_host_loopback: config.disable_host_loopback,
            },
            link: Link {
                our_mac: config.net.gateway_mac(),
                mtu: config.mtu as usize,
            },
            epoch: StdInstant::now(),
            stats: StackStats::default(),
        })
    }

    /// Where the embedding program registers its own fds (with tokens below
    /// [`FIRST_STACK_TOKEN`]).
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    pub fn tcp(&self) -> &TcpFlows {
        &self.tcp
    }

    pub fn tx_stats(&self) -> tx::TxStats {
        self.tx.stats
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Run until `on_event`, called for each event on an embedding program's token, breaks.
    pub fn run<T>(
        &mut self,
        mut on_event: impl FnMut(Token) -> ControlFlow<T>,
    ) -> Result<T, StackError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(StackError::Io(e));
            }
            let mut tap_writable = false;
            for event in events.iter() {
                match event.token() {
                    TAP_TOKEN => {
                        self.tap_readable |= event.is_readable();
                        tap_writable |= event.is_writable();
                    }
                    Token(t) if t < FIRST_STACK_TOKEN => {
                        if let ControlFlow::Break(v) = on_event(event.token()) {
                            return Ok(v);
                        }
                    }
                    token => {
                        let (kind, id) = slab::Id::from_token(token);
                        if kind == tcp::TOKEN_KIND {
                            let readable =
                                event.is_readable() || event.is_read_closed() || event.is_error();
                            let writable =
                                event.is_writable() || event.is_write_closed() || event.is_error();
                            self.tcp.on_host_event(id, readable, writable);
                        }
                    }
                }
            }
            let now = self.now();
            if tap_writable && self.tx.has_backlog() && self.tx.flush() {
                let mut cx = context(now, &mut self.tx, &self.poll, &self.policy, self.link);
                self.tcp.on_tap_writable(&mut cx);
            }
            if self.tap_readable {
                self.drain_tap(now)?;
            }
            let mut cx = context(now, &mut self.tx, &self.poll, &self.policy, self.link);
            self.tcp.service_dirty(&mut cx);
            self.tcp.run_timers(&mut cx);
        }
    }

    /// How long the next `epoll_wait` may sleep.
    fn timeout(&self) -> Option<StdDuration> {
        if self.tap_readable || self.tcp.has_dirty() {
            return Some(StdDuration::ZERO);
        }
        let deadline = self.tcp.next_deadline()?;
        let now = self.now();
        if deadline <= now {
            Some(StdDuration::ZERO)
        } else {
            // Round up: waking a little late is harmless, waking early spins.
            Some(
                StdDuration::from_micros((deadline - now).total_micros())
                    + StdDuration::from_micros(999),
            )
        }
    }

    /// Read up to a batch of frames and dispatch each.
    fn drain_tap(&mut self, now: Instant) -> Result<(), StackError> {
        let mut buf = std::mem::take(&mut self.rx_buf);
        let mut result = Ok(());
        for _ in 0..RX_BATCH {
            match tap::read_frame(self.tx.fd(), &mut buf) {
                Ok(0) => {
                    self.tap_readable = false;
                    break;
                }
                Ok(n) => self.handle_frame(&buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tap_readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.tap_readable = false;
                    result = Err(StackError::TapGone(e));
                    break;
                }
            }
        }
        self.rx_buf = buf;
        result
    }

    fn handle_frame(&mut self, frame: &[u8], now: Instant) {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        match frame::classify(frame, &self.policy.net) {
            Classified::Arp(request) => {
                self.stats.arp_replies += 1;
                emit::arp_reply(&mut self.tx, &request);
            }
            Classified::Tcp(segment) => {
                let mut cx = context(now, &mut self.tx, &self.poll, &self.policy, self.link);
                self.tcp.on_guest_segment(&segment, &mut cx);
            }
            Classified::Drop(reason) => self.stats.drops[reason as usize] += 1,
        }
    }

    /// A one-line summary of counters, for debug logs.
    pub fn summary(&self) -> String {
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|r| self.stats.drops[**r as usize] > 0)
            .map(|r| format!("{r:?}={}", self.stats.drops[*r as usize]))
            .collect();
        format!(
            "frames in {} ({} bytes), out {} ({} bytes, {} deferred, {} dropped), arp replies {}, drops [{}], tcp {:?}",
            self.stats.frames_in,
            self.stats.bytes_in,
            self.tx.stats.frames,
            self.tx.stats.bytes,
            self.tx.stats.deferred,
            self.tx.stats.dropped,
            self.stats.arp_replies,
            drops.join(" "),
            self.tcp.stats,
        )
    }
}

fn context<'a>(
    now: Instant,
    tx: &'a mut TapWriter,
    poll: &'a Poll,
    policy: &'a HostPolicy,
    link: Link,
) -> TcpContext<'a> {
    TcpContext {
        now,
        tap: tx,
        registry: poll.registry(),
        policy,
        link,
    }
}
