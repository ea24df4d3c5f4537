//! The userspace network stack that runs in the parent, in the host's network namespace.
//!
//! [`Stack`] owns the TAP fd and every host socket of the guest's flows, and runs one mio
//! event loop over them. This file is that loop and its dispatch, nothing else: read a batch
//! of frames from the TAP, [classify](frame) each one and hand it to its handler
//! (`Stack::handle_frame` is the table), hand each host socket's readiness to the table that
//! owns the socket, then do host I/O and smoltcp egress for every flow that was touched, then
//! fire due timers. Nothing runs unless an fd is ready or a deadline passed, so an idle stack
//! sleeps in `epoll_wait`.
//!
//! Where each concern lives, one file each:
//! - [`frame`]: the classifier, where every guest frame is parsed, once;
//! - [`tcp`]: TCP flows. A guest SYN goes [`frame::classify`] → `Classified::Tcp` →
//!   [`tcp::TcpFlows::on_guest_segment`], which opens the host connection;
//! - [`udp`]: the UDP NAT; [`dns`]: the DNS forwarder; [`icmp`]: ping; [`dhcp`]: the DHCP
//!   server;
//! - [`neigh`]: ARP, IPv6 neighbour discovery and router advertisements (their parsing,
//!   replies and the neighbour table);
//! - [`hostfwd`]: inbound forwarding, host ports whose connections and datagrams enter the
//!   guest through the stack (slirp4netns's `add_hostfwd`);
//! - [`snapshot`]: the flow table and counters, built on request (`usernet flows`, `stats`);
//! - [`policy`]: where guest traffic may go; [`emit`]: the frames we build ourselves;
//!   [`tx`]: the TAP writer and its back-pressure; [`errqueue`]: ICMP errors the host's
//!   sockets report;
//! - [`vnet`]: the virtio-net header of a TAP with offloads (checked on every frame read,
//!   written on every frame sent) and the TCP segmentation and checksum offloads.
//!
//! This is the hot path. Setup code (namespaces, mounts, the CLI) lives in `launcher`.
//!
//! The embedding program (`usernet run`, `attach`) registers its own fds on the stack's poller:
//! with tokens below [`FIRST_STACK_TOKEN`], or of its own [kinds](token::Kind::Embedder).
//! [`Stack::run`] hands their events to a callback, with the stack, so the program can act on
//! it (add a forward...). [`WAKEUP_TOKEN`] reaches the callback when the deadline set with
//! [`Stack::wake_at`] passes. Every kind of token is listed in [`token`].
//!
//! The stack is safe Rust: unsafe code is denied in all of its modules, and allowed only on
//! the items that cannot do without it, each with its `SAFETY` comment: the TCP flows' seed
//! from getrandom(2) (`tcp`) and the memory budget's madvise(2) of ring pages nobody holds
//! (`tcp::budget`). Everything a guest sends is parsed by safe code.

#![deny(unsafe_code)]

/// Build a [`Ctx`] from the stack's fields (a macro, so the borrows stay field-disjoint).
/// Defined before the submodules, so the ones that extend [`Stack`] can use it too.
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

pub mod dhcp;
pub mod dns;
pub mod emit;
pub mod errqueue;
pub mod frame;
pub mod hostfwd;
pub mod icmp;
pub mod neigh;
pub mod policy;
pub mod snapshot;
pub mod tcp;
pub mod token;
pub mod tx;
pub mod udp;
pub mod vnet;

use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use smoltcp::time::Instant;
use smoltcp::wire::EthernetAddress;

use crate::footprint::Pages;
use crate::net::VirtualNetwork;
use crate::observe::capture::{Capture, CaptureConfig};
use crate::observe::report::Protocol;
use crate::tap::{self, Framing};
use dhcp::DhcpServer;
use dns::{DnsForwarder, Upstreams};
use frame::{Classified, DropReason, GuestEcho, GuestUdp};
use hostfwd::HostForwards;
use icmp::Pinger;
use neigh::Neighbors;
use policy::{EchoVerdict, HostPolicy, Unreachable, Verdict};
use tcp::{TcpConfig, TcpFlows};
use token::{Kind, TAP_TOKEN, is_embedders};
use tx::{FRAME_BUF, TapWriter};
use udp::{UdpConfig, UdpNat};

pub use token::{FIRST_STACK_TOKEN, WAKEUP_TOKEN};

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
    /// The TAP carries vnet headers: TCP segments to the guest may be up to 64 KiB with their
    /// checksum left to the guest kernel (see [`vnet`]).
    pub offload: bool,
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
    /// The first address the DHCP server leases: the guest address (10.0.2.100) for usernet,
    /// [`VirtualNetwork::slirp_dhcp_start`] (10.0.2.15) as slirp4netns.
    pub dhcp_start: std::net::Ipv4Addr,
    /// Capture the guest link to a pcap file (`--pcap`).
    pub capture: Option<CaptureConfig>,
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
            dhcp_start: net.guest,
            capture: None,
        }
    }
}

/// Entries in each of the stack's tables ([`Stack::table_sizes`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub dns_queries: usize,
    pub pings: usize,
    pub neighbors: usize,
    pub forwards: usize,
    /// Forwarded connections and datagrams waiting for the guest's MAC address.
    pub waiting: usize,
    /// Frames queued for a full TAP.
    pub tx_backlog: usize,
}

#[derive(Debug, Default, Clone)]
pub struct StackStats {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub arp_replies: u64,
    pub drops: [u64; DropReason::COUNT],
    /// UDP datagrams and pings the policy refused (TCP's are `TcpStats::refused_by_policy`).
    pub policy_refusals: u64,
    /// Frames whose vnet header lied about them (see [`vnet::accept`]), dropped unread.
    pub drops_bad_vnet_header: u64,
}

/// Why [`Stack::run`] stopped without the callback asking it to.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// Reading the TAP failed for good (the device or its namespace is gone).
    #[error("the TAP device went away: {0}")]
    TapGone(io::Error),
    #[error("event loop failed: {0}")]
    Io(io::Error),
}

pub struct Stack {
    poll: Poll,
    tx: TapWriter,
    /// How frames are laid out on the TAP (with a vnet header or not).
    framing: Framing,
    rx_buf: Pages,
    /// Where datagrams from host sockets are read.
    recv_buf: Pages,
    /// Where datagrams to forwarded UDP ports are read.
    forward_buf: Pages,
    tap_readable: bool,
    tcp: TcpFlows,
    udp: UdpNat,
    dns: DnsForwarder,
    upstreams: Upstreams,
    pinger: Pinger,
    dhcp: DhcpServer,
    neighbors: Neighbors,
    forwards: HostForwards,
    policy: HostPolicy,
    link: Link,
    epoch: StdInstant,
    /// The embedding program's next wake-up ([`Stack::wake_at`]).
    wakeup: Option<StdInstant>,
    heap: HeapTrim,
    pub stats: StackStats,
    /// Recent UDP and ping flows the policy refused, for the flow table.
    failures: snapshot::Failures,
}

/// Gives the heap a burst of flows used back to the system once the burst is over. A flow's
/// small allocations (its smoltcp interface and socket, the table entries) come from glibc's
/// heap, which keeps free memory below its top for reuse; `malloc_trim` returns every free
/// page (`bench/latency.sh`: 4.7 MiB PSS after 1000 connections closed without it, 4.0 with
/// it, 3.4 before they opened). It runs only when the flows fell to half their peak, and by
/// at least [`HeapTrim::MIN_DROP`], so a steady workload never pays for it.
#[derive(Default)]
struct HeapTrim {
    peak: usize,
}

impl HeapTrim {
    const MIN_DROP: usize = 256;

    fn note(&mut self, live: usize) {
        self.peak = self.peak.max(live);
        if self.peak - live >= Self::MIN_DROP && live <= self.peak / 2 {
            self.peak = live;
            crate::footprint::trim_heap();
        }
    }
}

impl Stack {
    /// A stack serving the guest behind the TAP `tap`, with offloads if `tap` carries vnet
    /// headers ([`tap::framing`]).
    pub fn new(tap: OwnedFd, config: StackConfig) -> io::Result<Self> {
        let framing = tap::framing(std::os::fd::AsFd::as_fd(&tap));
        log::debug!("TAP framing: {framing:?}");
        Self::with_framing(tap, config, framing)
    }

    /// A stack on `tap` whose frames are laid out as `framing` says (for tests and fuzzing,
    /// whose stand-in TAPs are socketpairs).
    /// IPv6 needs a link MTU of at least 1280 (every ICMPv6 error may be that long); below
    /// it the stack is IPv4 only, as the guest kernel's link would be.
    pub fn with_framing(
        tap: OwnedFd,
        mut config: StackConfig,
        framing: Framing,
    ) -> io::Result<Self> {
        if config.policy.net.v6.is_some() && config.mtu < crate::net::IPV6_MIN_MTU {
            log::warn!(
                "IPv6 is off: the link MTU {} is below IPv6's minimum of {}",
                config.mtu,
                crate::net::IPV6_MIN_MTU
            );
            config.policy.net.v6 = None;
        }
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
        let mut tx = TapWriter::new(tap, framing)?;
        // Last, so that a stack that fails to start leaves no capture file behind.
        tx.capture = match &config.capture {
            Some(c) => Some(Capture::start(c).map_err(io::Error::other)?),
            None => None,
        };
        Ok(Stack {
            poll,
            tx,
            framing,
            rx_buf: Pages::new(framing.header_len() + FRAME_BUF)?,
            recv_buf: Pages::new(RECV_BUF)?,
            forward_buf: Pages::new(RECV_BUF)?,
            // Frames may already be queued (the kernel's own traffic on link-up).
            tap_readable: true,
            tcp: TcpFlows::new(config.tcp),
            udp: UdpNat::new(config.udp),
            dns: DnsForwarder::default(),
            upstreams,
            pinger: Pinger::default(),
            dhcp: DhcpServer::new(
                config.dhcp_start,
                dns_for_dhcp,
                config.search_domains.clone(),
            ),
            neighbors: Neighbors::new(&net),
            forwards: HostForwards::default(),
            policy: config.policy,
            link: Link {
                our_mac: net.gateway_mac(),
                mtu: config.mtu as usize,
                offload: framing != Framing::Plain,
            },
            epoch: StdInstant::now(),
            wakeup: None,
            heap: HeapTrim::default(),
            stats: StackStats::default(),
            failures: snapshot::Failures::default(),
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

    pub fn policy(&self) -> &HostPolicy {
        &self.policy
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Have [`Stack::run`] call back with [`WAKEUP_TOKEN`] once `at` has passed (None: never).
    pub fn wake_at(&mut self, at: Option<StdInstant>) {
        self.wakeup = at;
    }

    /// Run until `on_event`, called for each event on an embedding program's token, breaks.
    pub fn run<T>(
        &mut self,
        mut on_event: impl FnMut(&mut Stack, Token) -> ControlFlow<T>,
    ) -> Result<T, StackError> {
        let mut events = Events::with_capacity(1024);
        loop {
            if let ControlFlow::Break(v) = self.step(&mut events, None, &mut on_event)? {
                return Ok(v);
            }
        }
    }

    /// One turn of the loop, waiting at most `max_wait` for something to happen; events on
    /// embedders' tokens are ignored. For programs and fuzzers that drive the stack by hand
    /// (with [`Stack::inject_frame`] and [`Stack::advance_clock`]).
    pub fn turn(&mut self, max_wait: StdDuration) -> Result<(), StackError> {
        let mut events = Events::with_capacity(64);
        let mut ignore = |_: &mut Stack, _: Token| ControlFlow::<()>::Continue(());
        self.step(&mut events, Some(max_wait), &mut ignore)
            .map(|_| ())
    }

    /// One last pass before the embedding program stops serving: what the guest sent before
    /// it went (frames still queued on the TAP: data, a FIN, a reset written just before its
    /// command exited) is read and relayed to the host sockets, instead of being lost to the
    /// race between the command's exit and the TAP's readiness.
    pub fn finish(&mut self) {
        let now = self.now();
        if let Err(e) = self.drain_tap(now) {
            log::debug!("last read of the TAP: {e}");
        }
        self.tcp.service_dirty(&mut ctx!(self, now));
    }

    /// Handle `frame` as if the guest had just sent it on the TAP.
    pub fn inject_frame(&mut self, frame: &[u8]) {
        let now = self.now();
        self.handle_frame(frame, now, None);
    }

    /// Handle `bytes` as if read from the TAP: with a vnet header first if the stack's
    /// [`Framing`] has one.
    pub fn inject_read(&mut self, bytes: &[u8]) {
        let now = self.now();
        self.handle_read(bytes, now);
    }

    /// Move the stack's clock `by` ahead of the real one: timers (UDP idle, connect and
    /// retransmission timeouts, DNS failover, ARP waits) see that much more time passed.
    pub fn advance_clock(&mut self, by: StdDuration) {
        if let Some(epoch) = self.epoch.checked_sub(by) {
            self.epoch = epoch;
        }
    }

    /// How full each of the stack's tables is.
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            tcp_flows: self.tcp.len(),
            udp_flows: self.udp.len(),
            dns_queries: self.dns.in_flight(),
            pings: self.pinger.len(),
            neighbors: self.neighbors.len(),
            forwards: self.forwards.len(),
            waiting: self.forwards.waiting_len(),
            tx_backlog: self.tx.backlog_len(),
        }
    }

    /// Wait for events (at most `max_wait`, if given), handle them, and run what is due.
    fn step<T>(
        &mut self,
        events: &mut Events,
        max_wait: Option<StdDuration>,
        on_event: &mut impl FnMut(&mut Stack, Token) -> ControlFlow<T>,
    ) -> Result<ControlFlow<T>, StackError> {
        if let Some(at) = self.wakeup
            && at <= StdInstant::now()
        {
            self.wakeup = None;
            if let ControlFlow::Break(v) = on_event(self, WAKEUP_TOKEN) {
                return Ok(ControlFlow::Break(v));
            }
        }
        let timeout = match (self.timeout(), max_wait) {
            (Some(t), Some(m)) => Some(t.min(m)),
            (t, m) => t.or(m),
        };
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(ControlFlow::Continue(()));
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
                token if is_embedders(token) => {
                    if let ControlFlow::Break(v) = on_event(self, token) {
                        return Ok(ControlFlow::Break(v));
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
        self.tcp.balance();
        self.udp.expire(&mut cx);
        self.pinger.expire(&mut cx);
        self.dns.run_timers(&mut self.upstreams, &mut cx);
        if self.forwards.has_ready() {
            self.service_forwards(now);
        }
        if self
            .forwards
            .next_deadline()
            .is_some_and(|deadline| deadline <= now)
        {
            self.check_waiting(now);
        }
        self.neighbors.run_timers(&mut ctx!(self, now));
        self.heap
            .note(self.tcp.len() + self.udp.len() + self.pinger.len());
        Ok(ControlFlow::Continue(()))
    }

    /// Readiness of one of the host sockets of the stack's tables: hand it to the table.
    fn on_socket_event(&mut self, token: Token, event: &mio::event::Event) {
        let Some((kind, id)) = Kind::of(token) else {
            return;
        };
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        match kind {
            Kind::TcpFlow => {
                let ending = event.is_read_closed() || event.is_error();
                self.tcp.on_host_event(id, readable, writable, ending)
            }
            Kind::UdpFlow => self.udp.on_host_event(id, event.is_error()),
            Kind::DnsQuery => self.dns.on_host_event(id),
            Kind::Ping => {
                let now = self.now();
                self.pinger
                    .on_host_event(id, &mut ctx!(self, now), &mut self.recv_buf);
            }
            Kind::Forward => self.forwards.on_event(id),
            // Handed to the embedding program's callback before this.
            Kind::Embedder(_) => {}
        }
    }

    /// How long the next `epoll_wait` may sleep.
    fn timeout(&self) -> Option<StdDuration> {
        if self.tap_readable
            || self.tcp.has_dirty()
            || self.udp.has_ready()
            || self.dns.has_ready()
            || self.forwards.has_ready()
        {
            return Some(StdDuration::ZERO);
        }
        let wakeup = self.wakeup.map(|at| {
            let left = at.saturating_duration_since(StdInstant::now());
            self.now() + smoltcp::time::Duration::from_micros(left.as_micros() as u64)
        });
        let deadline = [
            self.tcp.next_deadline(),
            self.udp.next_deadline(),
            self.pinger.next_deadline(),
            self.dns.next_deadline(),
            self.forwards.next_deadline(),
            self.neighbors.next_deadline(),
            wakeup,
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
                Ok(n) => self.handle_read(&buf[..n], now),
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

    /// One read from the TAP: the vnet header checked and stripped, if there is one, then
    /// the frame.
    fn handle_read(&mut self, bytes: &[u8], now: Instant) {
        match self.framing {
            Framing::Plain => self.handle_frame(bytes, now, None),
            Framing::Vnet { header_len } => match vnet::accept(bytes, header_len) {
                Ok((frame, header)) => {
                    self.handle_frame(frame, now, vnet::udp_segment_size(&header))
                }
                Err(e) => {
                    self.stats.drops_bad_vnet_header += 1;
                    log::debug!("dropped a guest frame: its vnet header lies: {e}");
                }
            },
        }
    }

    /// One frame from the guest; `udp_segment`: it is a UDP super-datagram of datagrams of
    /// that size (see [`vnet::udp_segment_size`]).
    fn handle_frame(&mut self, frame: &[u8], now: Instant, udp_segment: Option<usize>) {
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        if let Some(capture) = &mut self.tx.capture {
            capture.record(frame);
        }
        let classified = frame::classify(frame, &self.policy.net);
        self.learn_neighbor(&classified, now);
        match classified {
            Classified::Arp(request) => {
                self.stats.arp_replies += 1;
                self.neighbors
                    .on_arp_request(&request, &mut ctx!(self, now));
            }
            // Nothing to answer; learned above.
            Classified::ArpNeighbor(_) => {}
            Classified::NeighborSolicit(ns) => self
                .neighbors
                .on_neighbor_solicit(&ns, &mut ctx!(self, now)),
            Classified::RouterSolicit(rs) => {
                self.neighbors.on_router_solicit(&rs, &mut ctx!(self, now))
            }
            Classified::Tcp(segment) => {
                self.tcp
                    .on_guest_segment(&segment, &mut ctx!(self, now), &self.upstreams);
            }
            Classified::Udp(datagram) => match udp_segment {
                // Each datagram of a UDP_SEGMENT send on its own, as the guest's socket meant.
                Some(size) if size > 0 && datagram.payload.len() > size => {
                    for payload in datagram.payload.chunks(size) {
                        self.handle_udp(
                            &GuestUdp {
                                payload,
                                ..datagram
                            },
                            now,
                        );
                    }
                }
                _ => self.handle_udp(&datagram, now),
            },
            Classified::Echo(echo) => self.handle_echo(&echo, now),
            Classified::Dhcp(message) => self.dhcp.on_guest_message(&message, &mut ctx!(self, now)),
            Classified::Drop(reason) => self.stats.drops[reason as usize] += 1,
        }
    }

    /// Note where the sender of a guest frame lives on the link; release the forwarded
    /// connections and datagrams that waited for it.
    fn learn_neighbor(&mut self, c: &Classified<'_>, now: Instant) {
        if let Some((ip, mac)) = neigh::link_sender(c)
            && self.neighbors.learn(ip, mac, now)
            && self.forwards.has_waiting()
        {
            self.release_waiting(ip, now);
        }
    }

    fn handle_udp(&mut self, d: &GuestUdp<'_>, now: Instant) {
        let mut cx = ctx!(self, now);
        if self.udp.relay_existing(d, &mut cx) {
            return;
        }
        let refused = match self.policy.transport(d.dst) {
            Verdict::Connect(target) => return self.udp.on_guest_datagram(d, target, &mut cx),
            Verdict::Dns => return self.dns.on_guest_query(d, &mut self.upstreams, &mut cx),
            Verdict::Refuse => {
                let net = self.policy.net;
                let (from, reason) = (Some(d.dst.ip()), Unreachable::Port);
                emit::icmp_unreachable(cx.tap, &net, d.src_mac, from, reason, d.ip_packet);
                Unreachable::Port
            }
            Verdict::Unreachable(reason) => {
                let net = self.policy.net;
                emit::icmp_unreachable(cx.tap, &net, d.src_mac, None, reason, d.ip_packet);
                reason
            }
        };
        let why = format!("{refused:?} unreachable");
        self.note_policy_refusal(Protocol::Udp, (d.src, d.dst), now, &why);
    }

    fn handle_echo(&mut self, e: &GuestEcho<'_>, now: Instant) {
        let mut cx = ctx!(self, now);
        match self.policy.echo(e.dst) {
            EchoVerdict::Local => self.pinger.reply_locally(e, &mut cx),
            EchoVerdict::Forward(dst) => self.pinger.forward(e, dst, &mut cx),
            EchoVerdict::Unreachable(reason) => {
                let net = self.policy.net;
                emit::icmp_unreachable(cx.tap, &net, e.src_mac, None, reason, e.ip_packet);
                let why = format!("{reason:?} unreachable");
                let guest = format!("{} id {}", e.src, e.ident);
                self.note_policy_refusal(Protocol::Icmp, (guest, e.dst), now, &why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::net::{Ipv6Network, VirtualNetwork};

    /// Found by the `stateful` fuzz target: with `--ipv6` on a 576-byte link, an ICMPv6 error
    /// quoting a guest packet was 1294 bytes long. IPv6 now needs a link of at least 1280.
    #[test]
    fn ipv6_is_off_below_its_minimum_mtu_and_errors_fit_from_it_on() {
        let net = VirtualNetwork::default().with_ipv6(Ipv6Network::default());
        // A UDP datagram of 1200 bytes to the guest's own subnet (nobody there: address
        // unreachable, quoting as much as fits).
        let src: std::net::Ipv6Addr = "fd00::100".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd00::77".parse().unwrap();
        let frame = crate::testkit::udp_frame((src, 5000).into(), (dst, 7).into(), &[0; 1200]);
        let mut buf = vec![0u8; 70_000];
        for mtu in [576, 1279, 1280, 1500] {
            let (ours, theirs) = crate::testkit::tap_pair();
            let mut stack = Stack::new(ours, StackConfig::new(net, mtu)).unwrap();
            stack.inject_frame(&frame);
            match crate::tap::read_frame(theirs.as_fd(), &mut buf) {
                Ok(n) => {
                    assert!(mtu >= 1280, "an IPv6 answer on a {mtu}-byte link");
                    assert!(n <= 14 + mtu as usize, "{n} bytes at MTU {mtu}");
                }
                Err(_) => {
                    assert!(mtu < 1280, "no ICMPv6 error at MTU {mtu}");
                    assert_eq!(stack.stats.drops[DropReason::Ipv6Off as usize], 1);
                }
            }
        }
    }
    /// On a TAP with vnet headers every read starts with one: a frame whose header lies is
    /// dropped and counted, never handled; an honest one is handled, and what we send back
    /// starts with a header too (empty: an ARP reply needs no offload).
    #[test]
    fn frames_behind_a_lying_vnet_header_are_dropped_and_counted() {
        use smoltcp::wire::ArpOperation;
        let net = VirtualNetwork::default();
        let (ours, theirs) = crate::testkit::tap_pair();
        let framing = Framing::Vnet { header_len: 12 };
        let mut stack = Stack::with_framing(ours, StackConfig::new(net, 1500), framing).unwrap();
        let request = crate::testkit::arp_frame(
            ArpOperation::Request,
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            net.guest,
            net.gateway,
        );
        let with_header = |header| crate::testkit::vnet_read(header, 12, &request);
        let mut buf = vec![0u8; 2048];
        // GSO on an ARP frame, then a checksum position past its end.
        let lies = [
            vnet::VnetHeader {
                gso_type: vnet::GSO_TCPV4,
                gso_size: 1448,
                ..Default::default()
            },
            vnet::VnetHeader {
                flags: vnet::F_NEEDS_CSUM,
                csum_start: 40,
                csum_offset: 16,
                ..Default::default()
            },
        ];
        for (n, lie) in lies.into_iter().enumerate() {
            stack.inject_read(&with_header(lie));
            assert_eq!(stack.stats.drops_bad_vnet_header, n as u64 + 1);
            assert!(crate::tap::read_frame(theirs.as_fd(), &mut buf).is_err());
        }
        assert_eq!(stack.stats.frames_in, 0, "nothing behind a lie was handled");
        stack.inject_read(&with_header(vnet::VnetHeader::default()));
        let n = crate::tap::read_frame(theirs.as_fd(), &mut buf).expect("an ARP reply");
        assert_eq!(buf[..12], [0; 12], "an empty vnet header first");
        let reply = smoltcp::wire::EthernetFrame::new_checked(&buf[12..n]).unwrap();
        assert_eq!(reply.ethertype(), smoltcp::wire::EthernetProtocol::Arp);
        assert_eq!(stack.stats.drops_bad_vnet_header, 2);
    }
}
