//! The userspace network stack that runs in the parent, in the host's network namespace.
//!
//! [`Stack`] owns the TAP fd and every host socket of the guest's flows, and runs one mio
//! event loop over them: read a batch of frames from the TAP, [classify](frame) each one and
//! hand it to its handler ([`tcp`] flows, the [`udp`] NAT, the [`dns`] forwarder, [`icmp`]
//! echo, the [`dhcp`] server, ARP here), then do host I/O and smoltcp egress for every flow
//! that was touched, then fire due timers. Nothing runs unless an fd is ready or a deadline
//! passed, so an idle stack sleeps in `epoll_wait`.
//!
//! This is the hot path. Setup code (namespaces, mounts, the CLI) lives in `launcher`.
//!
//! Tokens below [`FIRST_STACK_TOKEN`] belong to the embedding program (signals, control
//! sockets); [`Stack::run`] hands their events to a callback.

pub mod dhcp;
pub mod dns;
pub mod emit;
pub mod errqueue;
pub mod frame;
pub mod icmp;
pub mod policy;
pub mod slab;
pub mod tcp;
pub mod tx;
pub mod udp;

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use crate::net::VirtualNetwork;
use crate::tap;
use dhcp::DhcpServer;
use dns::{DnsForwarder, Upstreams};
use frame::{Classified, DropReason, GuestEcho, GuestUdp};
use icmp::Pinger;
use policy::{EchoVerdict, HostPolicy, Verdict};
use tcp::{TcpConfig, TcpFlows};
use tx::{FRAME_BUF, TapWriter};
use udp::{UdpConfig, UdpNat};

/// The TAP's token.
const TAP_TOKEN: Token = Token(0);
/// Tokens from 1 up to here are the embedding program's.
pub const FIRST_STACK_TOKEN: usize = 1 << 16;

/// Frames read from the TAP before host sockets and timers get a turn.
const RX_BATCH: usize = 256;
/// Size of the buffer datagrams from host sockets are read into: the largest UDP payload.
pub const RECV_BUF: usize = 65536;

/// What the guest's link looks like from our side.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The MAC our frames come from (the gateway's).
    pub our_mac: EthernetAddress,
    /// IP MTU of tap0.
    pub mtu: usize,
}

/// What a handler needs from the rest of the stack while it works on one event.
pub struct Ctx<'a> {
    pub now: Instant,
    pub tap: &'a mut TapWriter,
    pub registry: &'a Registry,
    pub policy: &'a HostPolicy,
    pub link: Link,
}

/// Everything that shapes the stack, decided before it starts.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub policy: HostPolicy,
    /// IP MTU of tap0.
    pub mtu: u32,
    pub tcp: TcpConfig,
    pub udp: UdpConfig,
    /// Fixed DNS upstreams (`--dns-upstream`); empty means the host's resolv.conf.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Search domains offered over DHCP.
    pub search_domains: Vec<String>,
}

impl StackConfig {
    pub fn new(net: VirtualNetwork, mtu: u32) -> Self {
        StackConfig {
            policy: HostPolicy::new(net),
            mtu,
            tcp: TcpConfig::default(),
            udp: UdpConfig::default(),
            dns_upstreams: Vec::new(),
            search_domains: Vec::new(),
        }
    }
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
    recv_buf: Box<[u8; RECV_BUF]>,
    tap_readable: bool,
    tcp: TcpFlows,
    udp: UdpNat,
    dns: DnsForwarder,
    upstreams: Upstreams,
    pinger: Pinger,
    dhcp: DhcpServer,
    policy: HostPolicy,
    link: Link,
    epoch: StdInstant,
    pub stats: StackStats,
}

/// Build a [`Ctx`] from the stack's fields (a macro, so the borrows stay field-disjoint).
macro_rules! ctx {
    ($self:ident, $now:expr) => {
        Ctx {
            now: $now,
            tap: &mut $self.tx,
            registry: $self.poll.registry(),
            policy: &$self.policy,
            link: $self.link,
        }
    };
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
        let net = config.policy.net;
        let upstreams = if config.dns_upstreams.is_empty() {
            Upstreams::from_resolv_conf(crate::resolv::HOST_RESOLV_CONF.into())
        } else {
            Upstreams::fixed(config.dns_upstreams.clone())
        };
        let dns_for_dhcp = (!config.policy.disable_dns).then_some(net.dns);
        Ok(Stack {
            poll,
            tx: TapWriter::new(tap),
            rx_buf: vec![0u8; FRAME_BUF].into_boxed_slice(),
            recv_buf: Box::new([0u8; RECV_BUF]),
            // Frames may already be queued (the kernel's own traffic on link-up).
            tap_readable: true,
            tcp: TcpFlows::new(config.tcp),
            udp: UdpNat::new(config.udp),
            dns: DnsForwarder::default(),
            upstreams,
            pinger: Pinger::default(),
            dhcp: DhcpServer::new(dns_for_dhcp, config.search_domains.clone()),
            policy: config.policy,
            link: Link {
                our_mac: net.gateway_mac(),
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

    pub fn udp(&self) -> &UdpNat {
        &self.udp
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
                    token => self.on_socket_event(token, event),
                }
            }
            let now = self.now();
            if tap_writable && self.tx.has_backlog() && self.tx.flush() {
                self.tcp.on_tap_writable(&mut ctx!(self, now));
            }
            if self.tap_readable {
                self.drain_tap(now)?;
            }
            let mut cx = ctx!(self, now);
            self.tcp.service_dirty(&mut cx);
            self.udp.service_ready(&mut cx, &mut self.recv_buf);
            self.dns
                .service_ready(&mut self.upstreams, &mut cx, &mut self.recv_buf);
            self.tcp.run_timers(&mut cx);
            self.udp.expire(&mut cx);
            self.pinger.expire(&mut cx);
            self.dns.run_timers(&mut self.upstreams, &mut cx);
        }
    }

    /// Readiness of one of the flows' host sockets.
    fn on_socket_event(&mut self, token: Token, event: &mio::event::Event) {
        let (kind, id) = slab::Id::from_token(token);
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        match kind {
            tcp::TOKEN_KIND => self.tcp.on_host_event(id, readable, writable),
            udp::TOKEN_KIND => self.udp.on_host_event(id),
            dns::TOKEN_KIND => self.dns.on_host_event(id),
            icmp::TOKEN_KIND => {
                let now = self.now();
                self.pinger
                    .on_host_event(id, &mut ctx!(self, now), &mut self.recv_buf);
            }
            _ => {}
        }
    }

    /// How long the next `epoll_wait` may sleep.
    fn timeout(&self) -> Option<StdDuration> {
        if self.tap_readable || self.tcp.has_dirty() || self.udp.has_ready() || self.dns.has_ready()
        {
            return Some(StdDuration::ZERO);
        }
        let deadline = [
            self.tcp.next_deadline(),
            self.udp.next_deadline(),
            self.pinger.next_deadline(),
            self.dns.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()?;
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
                self.tcp
                    .on_guest_segment(&segment, &mut ctx!(self, now), &self.upstreams);
            }
            Classified::Udp(datagram) => self.handle_udp(&datagram, now),
            Classified::Echo(echo) => self.handle_echo(&echo, now),
            Classified::Dhcp(message) => self.dhcp.on_guest_message(&message, &mut ctx!(self, now)),
            Classified::Drop(reason) => self.stats.drops[reason as usize] += 1,
        }
    }

    fn handle_udp(&mut self, d: &GuestUdp<'_>, now: Instant) {
        let mut cx = ctx!(self, now);
        match self.policy.transport(d.dst) {
            Verdict::Connect(target) => self.udp.on_guest_datagram(d, target, &mut cx),
            Verdict::Dns => self.dns.on_guest_query(d, &mut self.upstreams, &mut cx),
            Verdict::Refuse => {
                let net = self.policy.net;
                let reason = smoltcp::wire::Icmpv4DstUnreachable::PortUnreachable;
                emit::icmp_unreachable(cx.tap, &net, d.src_mac, *d.dst.ip(), reason, d.ip_packet);
            }
            Verdict::Unreachable(reason) => {
                let net = self.policy.net;
                emit::icmp_unreachable(cx.tap, &net, d.src_mac, net.gateway, reason, d.ip_packet);
            }
        }
    }

    fn handle_echo(&mut self, e: &GuestEcho<'_>, now: Instant) {
        let mut cx = ctx!(self, now);
        match self.policy.echo(e.dst) {
            EchoVerdict::Local => self.pinger.reply_locally(e, &mut cx),
            EchoVerdict::Forward(dst) => self.pinger.forward(e, dst, &mut cx),
            EchoVerdict::Unreachable(reason) => {
                let net = self.policy.net;
                emit::icmp_unreachable(cx.tap, &net, e.src_mac, net.gateway, reason, e.ip_packet);
            }
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
            "frames in {} ({} bytes), out {} ({} bytes, {} deferred, {} dropped), arp replies {}, drops [{}], tcp {:?}, udp {:?}, dns {:?}, icmp {:?}, dhcp {:?}",
            self.stats.frames_in,
            self.stats.bytes_in,
            self.tx.stats.frames,
            self.tx.stats.bytes,
            self.tx.stats.deferred,
            self.tx.stats.dropped,
            self.stats.arp_replies,
            drops.join(" "),
            self.tcp.stats,
            self.udp.stats,
            self.dns.stats,
            self.pinger.stats,
            self.dhcp.stats,
        )
    }
}
