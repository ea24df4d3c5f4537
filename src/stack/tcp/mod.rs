//! TCP: where a guest SYN goes, and how bytes cross between the guest and host sockets.
//!
//! # Theory of operation
//!
//! Every guest TCP connection is terminated here and re-originated as an ordinary host socket
//! in the parent's network namespace. A flow is one guest 4-tuple, found in O(1) through our
//! own table; each open flow owns a private smoltcp `Interface` with a one-socket `SocketSet`,
//! so smoltcp's linear socket scans only ever see one socket and idle flows cost nothing.
//!
//! | event | what happens |
//! |---|---|
//! | guest SYN, unknown 4-tuple | the [policy](super::policy) picks a host address; a non-blocking `connect()` starts; the SYN is stored and nothing is answered yet |
//! | guest SYN again while connecting | refreshes the pending connect (a new initial sequence number replaces the stored SYN); not answered |
//! | guest stops retransmitting its SYN, or resets | the connect is abandoned: host socket closed, nothing answered (see [pending connects](#pending-connects)) |
//! | connect still pending after [`CONNECT_TIMEOUT`] | the guest gets what a timed-out connect gives (ICMP host unreachable) |
//! | new SYN with `--max-pending-connects` (or `--max-tcp-flows`) reached | the pending connect least recently refreshed by a SYN is dropped to make room |
//! | host connect succeeds | a smoltcp socket listens on the original destination, the stored SYN is replayed into it, the SYN-ACK goes out |
//! | host connect refused | RST to the guest, which sees `ECONNREFUSED` at once; never a SYN-ACK then a reset |
//! | host unreachable or timed out | ICMP destination unreachable quoting the SYN |
//! | guest data | in order with the rx ring empty: `send()` straight from the frame to the host socket ([`direct`]); what the socket does not take lands in smoltcp's rx ring, then `write()` to the host socket; when the host socket is full the ring fills and the advertised window closes |
//! | guest data past the window we advertised | turned away before smoltcp sees it, and ACKed (the [gate](gate)) |
//! | host data | with offloads (and `SO_PEEK_OFF`): left in the host socket's queue, counted into smoltcp's tx ring, peeked into each segment's frame, dropped when the guest ACKs ([`direct`]); else `read()` into smoltcp's tx ring. When the ring is full we stop, remember the socket is readable, and resume when the guest ACKs |
//! | the rings' [budget](budget) is tight | the window we advertise shrinks (the gate rewrites smoltcp's) and host reads stop short, never below what was already promised; when room comes back, a window update of our own and the host reads resume |
//! | guest FIN | once the rx ring is drained to the host: `shutdown(SHUT_WR)`; data keeps flowing the other way |
//! | host EOF | `close()`: smoltcp sends FIN after the tx ring drains |
//! | guest RST | host socket closed with `SO_LINGER` 0, so the host peer sees a reset |
//! | host reset (`ECONNRESET`, `EPIPE`), seen by a read or a write | no more writes; what the host sent before it is still read and delivered, then RST to the guest |
//! | other host error | `abort()`: RST to the guest |
//! | both directions done | flow removed at once (no TIME-WAIT), so a reused guest port connects at once |
//! | segment for no flow | RST, as a closed port would answer |
//!
//! Ingress is per frame (`poll_ingress_single`); egress happens once per flow per event-loop
//! pass, after host I/O, so one ACK with a fresh window covers a whole batch of frames. Output
//! goes through the shared [`TapWriter`]; when its backlog is full the flow stops emitting and
//! waits for the TAP instead of dropping anything. Timers are our own ordered set of per-flow
//! `poll_at` deadlines.
//!
//! Back-pressure and memory: each flow's rings hold at most what the [budget](budget) lets
//! it, which the [window gate](gate) enforces on the window the guest sees and the host
//! reads enforce on the other direction. [`TcpFlows::balance`] runs once per turn of the
//! event loop to give pages back and wake the flows that were refused room.
//!
//! With offloads (see [`super::vnet`]) segments both ways are up to 64 KiB at any MTU: the
//! guest's super-segments go into smoltcp as they are, and smoltcp is led to emit
//! super-segments by the MSS it believes the guest offered (`syn_for_smoltcp`).
//!
//! # Copies per byte
//!
//! A userspace relay needs two copies per byte: kernel to us, us to kernel. Through smoltcp's
//! rings this relay made three, the third a `memmove` in our own thread (12-14% of it in a
//! `perf` profile of a bulk transfer with offloads on, `bench/profile.sh`):
//!
//! - guest → host: the frame is read from the TAP into the stack's receive buffer (copy 1),
//!   smoltcp's `process_tcp` copies the payload into the flow's rx ring (copy 2, the extra
//!   one), and `guest_to_host`'s `write()` copies it into the host socket (copy 3);
//! - host → guest: `host_to_guest`'s `read()` copies into the tx ring (copy 1), smoltcp's
//!   `TcpRepr::emit` copies a segment's payload from the ring into the frame (copy 2, the
//!   extra one), and the TAP `write()` copies the frame into the guest kernel (copy 3).
//!
//! [`direct`] removes the extra one each way, through a small patch to smoltcp
//! (`vendor/smoltcp/PATCHES.md`): guest payload goes from the frame to the host socket while
//! the rx ring is empty (the ring holds only what the socket would not take), and host data
//! stays in the host socket's queue and is peeked into the frame. The rings remain for the
//! rest: data the host socket would not take, and host data on a plain TAP (a checksum must
//! be computed over it) or a kernel without `SO_PEEK_OFF` on TCP. `USERNET_DIRECT=0` puts
//! every byte through the rings again, for comparison.
//!
//! # Pending connects
//!
//! A host connect to an address that never answers takes the host kernel about two minutes
//! to give up on, and the guest may have given up long before: a port scanner closes its
//! non-blocking sockets after half a second. A Linux guest that closes a socket in SYN-SENT
//! sends nothing, so abandonment is read from the SYN retransmissions instead. Every stack
//! backs its SYN off exponentially (Linux 1, 2, 4... s after the first, Windows from 3 s), so
//! after a first SYN at `first` and the latest at `last`, the next one is due within
//! `max(SYN_RETRANSMIT_MIN_GAP, 2 * (last - first))` of `last`; a guest silent for that (plus
//! [`SYN_RETRANSMIT_SLACK`]) has abandoned the connect, which is then dropped without an
//! answer. A guest RST drops it at once. Each pending connect also has a deadline of its own,
//! [`CONNECT_TIMEOUT`] after its first SYN. Both deadlines are the flow's timer.
//!
//! At `--max-pending-connects` a new SYN does not get a reset: the pending connect least
//! recently refreshed by a SYN is dropped instead (abandoned ones are the least recent, so
//! they go first). One still alive is not lost: its next SYN retransmission starts it
//! afresh. So no flood of connects to silent addresses can deny the next connection.

mod budget;
mod device;
mod direct;
mod gate;
mod observe;

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::Duration as StdDuration;

use mio::Interest;
use mio::net::TcpStream;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, CongestionControl, RecvError, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

use budget::{Budget, FlowMemory, SocketView};
use device::FlowDevice;
use direct::{HostSink, PeekedSend};
use observe::Activity;

pub use budget::{BudgetStats, DEFAULT_BUFFER_MEMORY};

use super::Ctx;
use super::dns::Upstreams;
use super::emit;
use super::frame::GuestTcp;
use super::hostfwd;
use super::policy::{HostPolicy, Verdict, unreachable_reason};
use super::token::Kind;
use crate::slab::{Id, Slab};

/// Segments one flow may emit per pass before others get a turn.
const MAX_SEGMENTS_PER_PASS: usize = 512;
/// How long a flow waits for the guest to acknowledge our FIN before giving up on it.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a forwarded connection waits for the guest to answer its SYN.
const INBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a host connect may stay pending before the guest is told it timed out. The host
/// kernel would keep trying for about 127 s (`tcp_syn_retries` 6); 75 s is BSD's
/// connection-establishment timer (`TCPTV_KEEP_INIT`), long enough for any destination that
/// answers at all, and it frees the slot for the rest of the two minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(75);
/// The longest a guest waits before its first SYN retransmission: Linux, macOS and the BSDs
/// wait 1 s (RFC 6298's initial RTO), Windows and older Linux 3 s.
pub const SYN_RETRANSMIT_MIN_GAP: Duration = Duration::from_secs(3);
/// Allowance on top of the expected retransmission for timer granularity and scheduling.
pub const SYN_RETRANSMIT_SLACK: Duration = Duration::from_secs(1);

/// Most flows at once, unless `--max-tcp-flows` says otherwise.
pub const DEFAULT_MAX_FLOWS: usize = 65536;
/// Most host connects in progress at once, unless `--max-pending-connects` says otherwise.
pub const DEFAULT_MAX_PENDING_CONNECTS: usize = 4096;

/// Sizes and bounds of the TCP relay.
#[derive(Debug, Clone, Copy)]
pub struct TcpConfig {
    /// Bytes buffered guest → host (also the largest window we advertise).
    pub rx_ring: usize,
    /// Bytes buffered host → guest.
    pub tx_ring: usize,
    /// Most flows at once, connecting or open.
    pub max_flows: usize,
    /// Most host connects in progress at once.
    pub max_pending_connects: usize,
    /// The memory all flows' rings may hold together (see [`budget`]).
    pub buffer_memory: usize,
    /// Payload skips the rings where it can (see [`direct`]); off with `USERNET_DIRECT=0`.
    pub direct: bool,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            rx_ring: 2 << 20,
            tx_ring: 2 << 20,
            max_flows: DEFAULT_MAX_FLOWS,
            max_pending_connects: DEFAULT_MAX_PENDING_CONNECTS,
            buffer_memory: DEFAULT_BUFFER_MEMORY,
            direct: direct::wanted(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TcpStats {
    pub opened: u64,
    /// Connections from forwarded host ports into the guest.
    pub inbound: u64,
    /// Host connects refused by the host (`ECONNREFUSED`).
    pub refused: u64,
    /// Host connects that found no route or no answer.
    pub unreachable: u64,
    /// SYNs the policy refused (answered with a reset or an ICMP error).
    pub refused_by_policy: u64,
    pub reset_unknown: u64,
    pub refused_over_limit: u64,
    /// Pending connects dropped because the guest gave up on them (stopped retransmitting
    /// its SYN, or reset).
    pub abandoned: u64,
    /// Pending connects dropped at the bound to make room for a new one.
    pub evicted: u64,
    /// Pending connects that reached [`CONNECT_TIMEOUT`].
    pub connect_timeouts: u64,
    pub closed_graceful: u64,
    pub closed_reset: u64,
    /// Guest data past the window we advertised, turned away (see [`gate`]).
    pub out_of_window: u64,
    /// Guest payload bytes written straight from frames to host sockets (see [`direct`]).
    pub direct_to_host: u64,
    /// Host bytes sent to the guest from host sockets' queues (see [`direct`]).
    pub direct_to_guest: u64,
    /// Window updates we sent for windows the gate had held back.
    pub window_updates: u64,
    /// The rings' memory budget.
    pub buffers: BudgetStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    guest: SocketAddr,
    remote: SocketAddr,
}

struct HostSide {
    stream: TcpStream,
    /// Readiness seen but not yet consumed (mio is edge-triggered).
    readable: bool,
    writable: bool,
    /// The host peer sent FIN.
    eof: bool,
    /// We relayed the guest's FIN with `shutdown(SHUT_WR)`.
    write_shut: bool,
    /// A read or write failed: the connection is dead on the host side.
    failed: bool,
    /// The host peer reset the connection: the guest gets what was read before it, then a
    /// reset too.
    reset: bool,
    /// An event said the peer closed or the socket has an error: what is left to read ends
    /// in EOF or an error that no later edge announces, so reads go on to the end.
    ending: bool,
}

struct Conn {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    /// The flow's share of the rings' budget, and its window gate.
    memory: FlowMemory,
    /// Where in-order guest payload goes when the rx ring is empty (see [`direct`]).
    sink: Option<Box<HostSink>>,
    /// The host socket's queue is the tx ring's storage (see [`direct`]).
    peeked: Option<PeekedSend>,
}

enum Phase {
    /// Host `connect()` in progress; the guest's SYN waits here unanswered. If the connect
    /// fails, the fallbacks (other DNS upstreams) are tried in turn before the guest hears.
    Connecting {
        syn: Box<[u8]>,
        syn_end: u32,
        fallbacks: Vec<SocketAddr>,
        /// When the guest sent this SYN first, and most recently.
        first_syn: Instant,
        last_syn: Instant,
    },
    Open(Box<Conn>),
}

struct Flow {
    key: FlowKey,
    guest_mac: EthernetAddress,
    host: HostSide,
    phase: Phase,
    /// The guest has sent FIN (we saw a state after it).
    guest_fin: bool,
    timer: Option<Instant>,
    queued: bool,
    /// In the list of flows waiting for the TAP to drain.
    waiting_tap: bool,
    /// A forwarded connection whose SYN to the guest is not answered yet (its smoltcp
    /// timeout is the connect timeout until then).
    connecting_to_guest: bool,
    /// What the flow table shows: age, idle time, traffic each way.
    activity: Activity,
}

enum Outcome {
    Keep,
    /// The flow has output but the TAP is full.
    WaitTap,
    Finished {
        graceful: bool,
    },
    ConnectFailed(io::Error),
    /// The host connect is still in progress; look again at this deadline.
    Pending(Instant),
    /// The pending connect reached [`CONNECT_TIMEOUT`].
    ConnectTimedOut,
    /// The guest stopped retransmitting its SYN.
    ConnectAbandoned,
}

/// All TCP flows.
pub struct TcpFlows {
    config: TcpConfig,
    by_key: HashMap<FlowKey, Id>,
    flows: Slab<Flow>,
    timers: BTreeSet<(Instant, Id)>,
    dirty: Vec<Id>,
    tap_waiters: Vec<Id>,
    /// The pending connects, least recently refreshed by a guest SYN first.
    pending: BTreeSet<(Instant, Id)>,
    budget: Budget,
    seeds: SplitMix64,
    pub stats: TcpStats,
    /// Recent refused and failed connects, for the flow table.
    pub failures: crate::stack::snapshot::Failures,
}

impl TcpFlows {
    pub fn new(config: TcpConfig) -> Self {
        TcpFlows {
            config,
            by_key: HashMap::new(),
            flows: Slab::default(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            tap_waiters: Vec::new(),
            pending: BTreeSet::new(),
            budget: Budget::new(config.buffer_memory),
            seeds: SplitMix64::from_entropy(),
            stats: TcpStats::default(),
            failures: Default::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn pending_connects(&self) -> usize {
        self.pending.len()
    }

    /// The earliest flow deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Whether some flow has work queued for this pass.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A TCP segment from the guest: hand it to its flow, start a flow for a new SYN, or reset.
    pub fn on_guest_segment(
        &mut self,
        seg: &GuestTcp<'_>,
        cx: &mut Ctx<'_>,
        upstreams: &Upstreams,
    ) {
        let key = FlowKey {
            guest: seg.src,
            remote: seg.dst,
        };
        if let Some(&id) = self.by_key.get(&key) {
            let Some(flow) = self.flows.get_mut(id) else {
                return;
            };
            flow.activity.guest_sent(cx.now);
            match &mut flow.phase {
                Phase::Connecting { .. } => {
                    if seg.flags.rst {
                        // The guest gave up before we answered; so do we.
                        self.stats.abandoned += 1;
                        self.drop_pending(id, "abandoned: the guest reset it", cx);
                    } else if seg.flags.syn && seg.ack.is_none() {
                        self.refresh_pending(id, seg, cx.now);
                    }
                    // Anything else waits for the connect.
                }
                Phase::Open(conn) => {
                    if seg.flags.syn
                        && let Some(tcp) = gate::tcp_of(seg.ip_packet)
                    {
                        // A forwarded connection's SYN-ACK (or a retransmitted SYN).
                        conn.memory.on_guest_syn(tcp);
                    }
                    let data = seg.seq_len - u32::from(seg.flags.syn) - u32::from(seg.flags.fin);
                    if conn.memory.gate.admit(seg.seq, data) {
                        let raised = seg
                            .flags
                            .syn
                            .then(|| syn_for_smoltcp(seg.ip_packet, cx))
                            .flatten();
                        let packet = raised.as_deref().unwrap_or(seg.ip_packet);
                        let host = &mut flow.host;
                        let lend = host.writable && !host.write_shut && !host.failed && !host.reset;
                        let sock = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
                        if lend && let Some(sink) = conn.sink.take() {
                            sink.lend(sock);
                        }
                        let gate = Some(&mut conn.memory.gate);
                        let mut dev =
                            FlowDevice::new(Some(packet), cx.tap, cx.link, flow.guest_mac, gate);
                        conn.iface
                            .poll_ingress_single(cx.now, &mut dev, &mut conn.sockets);
                        let sock = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
                        if let Some((sink, sunk)) = HostSink::take_back(sock) {
                            conn.sink = Some(sink);
                            conn.memory.on_recv_direct(sunk.written);
                            flow.activity.to_remote.bytes += sunk.written as u64;
                            self.stats.direct_to_host += sunk.written as u64;
                            if sunk.full {
                                host.writable = false;
                            }
                        }
                    } else {
                        self.stats.out_of_window += 1;
                    }
                    mark_dirty(&mut self.dirty, flow, id);
                }
            }
            return;
        }
        if seg.flags.rst {
            return;
        }
        if !seg.flags.syn || seg.ack.is_some() {
            self.stats.reset_unknown += 1;
            emit::tcp_reset(cx.tap, &cx.policy.net, seg);
            return;
        }
        self.start_flow(key, seg, cx, upstreams);
    }

    fn start_flow(
        &mut self,
        key: FlowKey,
        seg: &GuestTcp<'_>,
        cx: &mut Ctx<'_>,
        upstreams: &Upstreams,
    ) {
        if (self.flows.len() >= self.config.max_flows
            || self.pending.len() >= self.config.max_pending_connects)
            && !self.evict_pending(cx)
        {
            self.stats.refused_over_limit += 1;
            self.failures.note_tcp(
                key,
                (cx.now, cx.now),
                "refused: the flow table is full (--max-tcp-flows or --max-pending-connects)",
            );
            log::debug!("refusing {} -> {}: flow limit reached", seg.src, seg.dst);
            emit::tcp_reset(cx.tap, &cx.policy.net, seg);
            return;
        }
        let mut targets = match cx.policy.transport(seg.dst) {
            Verdict::Connect(addr) => vec![addr],
            // DNS over TCP: the upstream resolvers in order of preference, the rest kept as
            // fallbacks for when a connect fails.
            Verdict::Dns => upstreams.ordered(),
            Verdict::Refuse => {
                self.stats.refused_by_policy += 1;
                self.failures
                    .note_tcp(key, (cx.now, cx.now), "refused by policy: reset");
                emit::tcp_reset(cx.tap, &cx.policy.net, seg);
                return;
            }
            Verdict::Unreachable(reason) => {
                self.stats.refused_by_policy += 1;
                self.failures.note_tcp(
                    key,
                    (cx.now, cx.now),
                    format!("refused by policy: {reason:?} unreachable"),
                );
                let net = cx.policy.net;
                emit::icmp_unreachable(cx.tap, &net, seg.src_mac, None, reason, seg.ip_packet);
                return;
            }
        };
        let syn_end = seg.seq.wrapping_add(seg.seq_len);
        let stream = match connect_first(&mut targets, cx.policy) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("connect {} -> {} failed at once: {e}", seg.src, seg.dst);
                self.failures
                    .note_tcp(key, (cx.now, cx.now), format!("connect failed: {e}"));
                self.answer_failed_connect(&e, seg.src_mac, key, seg.ip_packet, syn_end, cx);
                return;
            }
        };
        let id = self.flows.insert(Flow {
            key,
            guest_mac: seg.src_mac,
            host: HostSide {
                stream,
                readable: false,
                writable: false,
                eof: false,
                write_shut: false,
                failed: false,
                reset: false,
                ending: false,
            },
            phase: Phase::Connecting {
                syn: seg.ip_packet.into(),
                syn_end,
                fallbacks: targets,
                first_syn: cx.now,
                last_syn: cx.now,
            },
            guest_fin: false,
            timer: None,
            queued: false,
            waiting_tap: false,
            connecting_to_guest: false,
            activity: Activity::new(cx.now, false),
        });
        let flow = self.flows.get_mut(id).expect("just inserted");
        if let Err(e) = cx.registry.register(
            &mut flow.host.stream,
            Kind::TcpFlow.token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot watch a host socket: {e}");
            self.flows.remove(id);
            emit::tcp_reset(cx.tap, &cx.policy.net, seg);
            return;
        }
        self.by_key.insert(key, id);
        self.pending.insert((cx.now, id));
        self.set_timer(id, Some(pending_deadline(cx.now, cx.now)));
        log::trace!("{} -> {}: connecting", seg.src, seg.dst);
    }

    /// A SYN for a pending connect: the guest is still waiting for it. A SYN with another
    /// initial sequence number is a new attempt on the same ports (the old one was abandoned):
    /// it replaces the stored SYN, and its clock starts afresh.
    fn refresh_pending(&mut self, id: Id, seg: &GuestTcp<'_>, now: Instant) {
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        let Phase::Connecting {
            syn,
            syn_end,
            first_syn,
            last_syn,
            ..
        } = &mut flow.phase
        else {
            return;
        };
        let end = seg.seq.wrapping_add(seg.seq_len);
        if end != *syn_end {
            *syn = seg.ip_packet.into();
            *syn_end = end;
            *first_syn = now;
        }
        self.pending.remove(&(*last_syn, id));
        *last_syn = now;
        self.pending.insert((now, id));
        let at = pending_deadline(*first_syn, now);
        self.set_timer(id, Some(at));
    }

    /// Drop the pending connect least recently refreshed by a SYN, to make room for a new
    /// flow; false if there is none.
    fn evict_pending(&mut self, cx: &mut Ctx<'_>) -> bool {
        let Some(&(_, id)) = self.pending.first() else {
            return false;
        };
        self.stats.evicted += 1;
        self.drop_pending(id, "dropped to make room", cx);
        true
    }

    /// Forget a pending connect without answering the guest, closing its host socket.
    fn drop_pending(&mut self, id: Id, why: &str, cx: &mut Ctx<'_>) {
        if let Some(flow) = self.flows.get(id) {
            log::debug!("{} -> {}: connect {why}", flow.key.guest, flow.key.remote);
        }
        self.remove(id, cx, false);
    }

    /// A connection accepted on a forwarded host port: connect to the guest at `guest` from
    /// `source` (the client's own port if that 4-tuple is free), and relay once it answers.
    /// On error the caller resets the client.
    pub fn open_inbound(
        &mut self,
        stream: TcpStream,
        guest: SocketAddrV4,
        source: SocketAddrV4,
        guest_mac: EthernetAddress,
        cx: &mut Ctx<'_>,
    ) -> Result<(), (TcpStream, &'static str)> {
        if self.flows.len() >= self.config.max_flows {
            self.stats.refused_over_limit += 1;
            return Err((stream, "flow limit reached"));
        }
        let key_for = |port| FlowKey {
            guest: SocketAddr::V4(guest),
            remote: SocketAddr::V4(SocketAddrV4::new(*source.ip(), port)),
        };
        let Some(port) =
            hostfwd::pick_source_port(source.port(), |p| self.by_key.contains_key(&key_for(p)))
        else {
            return Err((stream, "no free source port"));
        };
        let key = key_for(port);
        let (sink, peeked) = direct_paths(&stream, &self.config, cx.link);
        let mut iface = new_interface(cx, self.seeds.next(), guest_mac, peeked.is_some());
        let (mut socket, memory) = new_socket(&self.config);
        let remote = (IpAddress::Ipv4(*guest.ip()), guest.port());
        let local = (IpAddress::Ipv4(*source.ip()), port);
        if socket.connect(iface.context(), remote, local).is_err() {
            return Err((stream, "cannot address the guest"));
        }
        socket.set_timeout(Some(INBOUND_CONNECT_TIMEOUT));
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let id = self.flows.insert(Flow {
            key,
            guest_mac,
            host: HostSide {
                stream,
                readable: true,
                writable: true,
                eof: false,
                write_shut: false,
                failed: false,
                reset: false,
                ending: false,
            },
            phase: Phase::Open(Box::new(Conn {
                iface,
                sockets,
                handle,
                memory,
                sink,
                peeked,
            })),
            guest_fin: false,
            timer: None,
            queued: false,
            waiting_tap: false,
            connecting_to_guest: true,
            activity: Activity::new(cx.now, true),
        });
        let flow = self.flows.get_mut(id).expect("just inserted");
        if let Err(e) = cx.registry.register(
            &mut flow.host.stream,
            Kind::TcpFlow.token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot watch a host socket: {e}");
            return match self.flows.remove(id) {
                Some(flow) => Err((flow.host.stream, "cannot watch the socket")),
                None => Ok(()),
            };
        }
        self.by_key.insert(key, id);
        self.stats.inbound += 1;
        mark_dirty(&mut self.dirty, flow, id);
        log::trace!("{} -> {guest}: connecting to the guest", key.remote);
        Ok(())
    }

    /// Readiness on a flow's host socket.
    /// `ending`: the event said the peer closed its side, or the socket has an error.
    pub fn on_host_event(&mut self, id: Id, readable: bool, writable: bool, ending: bool) {
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.host.readable |= readable;
        flow.host.writable |= writable;
        flow.host.ending |= ending;
        mark_dirty(&mut self.dirty, flow, id);
    }

    /// Do the host I/O and smoltcp egress for every flow touched since the last pass.
    pub fn service_dirty(&mut self, cx: &mut Ctx<'_>) {
        while let Some(id) = self.dirty.pop() {
            self.service(id, cx);
        }
    }

    /// Service flows whose deadline has passed.
    /// A flow that asks to run again right away waits for the next pass, so one flow cannot
    /// keep this loop spinning.
    pub fn run_timers(&mut self, cx: &mut Ctx<'_>) {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > cx.now {
                break;
            }
            self.timers.pop_first();
            if let Some(flow) = self.flows.get_mut(id) {
                flow.timer = None;
                due.push(id);
            }
        }
        for id in due {
            self.service(id, cx);
        }
    }

    /// Keep the rings within their budget, once per turn of the event loop: under pressure,
    /// flows that went quiet with pages to spare give them back; flows refused room they
    /// wanted are serviced again once room was freed.
    pub fn balance(&mut self) {
        while let Some(id) = self.budget.next_to_reclaim() {
            if let Some(flow) = self.flows.get_mut(id)
                && let Phase::Open(conn) = &mut flow.phase
                && conn.memory.listed(false)
            {
                let sock = SocketView::of(conn.sockets.get::<tcp::Socket>(conn.handle));
                self.budget.reclaim(&mut conn.memory, sock);
            }
        }
        for id in self.budget.take_woken() {
            if let Some(flow) = self.flows.get_mut(id)
                && let Phase::Open(conn) = &mut flow.phase
                && conn.memory.listed(true)
            {
                conn.memory.woken();
                mark_dirty(&mut self.dirty, flow, id);
            }
        }
        let flows = &self.flows;
        self.budget.compact(flows.len(), |id, starved| {
            flows
                .get(id)
                .is_some_and(|f| matches!(&f.phase, Phase::Open(c) if c.memory.listed(starved)))
        });
        self.stats.buffers = self.budget.stats;
    }

    /// Bytes the flows' rings have reserved of their budget.
    pub fn buffer_memory(&self) -> usize {
        self.budget.used()
    }

    /// The TAP drained: let flows that were holding output go again.
    pub fn on_tap_writable(&mut self, cx: &mut Ctx<'_>) {
        let waiters = std::mem::take(&mut self.tap_waiters);
        for id in waiters {
            if let Some(flow) = self.flows.get_mut(id) {
                flow.waiting_tap = false;
                self.service(id, cx);
            }
        }
    }

    fn service(&mut self, id: Id, cx: &mut Ctx<'_>) {
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.queued = false;
        let outcome = match &flow.phase {
            Phase::Connecting {
                first_syn,
                last_syn,
                ..
            } => match connect_state(&flow.host.stream) {
                ConnectState::Pending if cx.now >= *first_syn + CONNECT_TIMEOUT => {
                    Outcome::ConnectTimedOut
                }
                ConnectState::Pending if cx.now >= pending_deadline(*first_syn, *last_syn) => {
                    Outcome::ConnectAbandoned
                }
                ConnectState::Pending => Outcome::Pending(pending_deadline(*first_syn, *last_syn)),
                ConnectState::Failed(e) => Outcome::ConnectFailed(e),
                state @ (ConnectState::Connected | ConnectState::ConnectedThenReset) => {
                    let last_syn = *last_syn;
                    match open(flow, cx, &self.config, self.seeds.next()) {
                        Ok(()) => {
                            self.pending.remove(&(last_syn, id));
                            self.stats.opened += 1;
                            flow.host.reset = matches!(state, ConnectState::ConnectedThenReset);
                            relay(flow, cx, &mut self.budget, &mut self.stats)
                        }
                        Err(e) => Outcome::ConnectFailed(e),
                    }
                }
            },
            Phase::Open(_) => relay(flow, cx, &mut self.budget, &mut self.stats),
        };
        if let Phase::Open(conn) = &mut flow.phase {
            let sock = SocketView::of(conn.sockets.get::<tcp::Socket>(conn.handle));
            self.budget.note(id, &mut conn.memory, sock);
        }
        match outcome {
            Outcome::Keep => {
                let at = match &mut flow.phase {
                    Phase::Open(conn) => conn.iface.poll_at(cx.now, &conn.sockets),
                    Phase::Connecting { .. } => None,
                };
                self.set_timer(id, at);
            }
            Outcome::WaitTap => {
                self.set_timer(id, None);
                if let Some(flow) = self.flows.get_mut(id)
                    && !flow.waiting_tap
                {
                    flow.waiting_tap = true;
                    self.tap_waiters.push(id);
                }
            }
            Outcome::Finished { graceful } => {
                if graceful {
                    self.stats.closed_graceful += 1;
                } else {
                    self.stats.closed_reset += 1;
                }
                self.remove(id, cx, graceful);
            }
            Outcome::ConnectFailed(e) => {
                if self.reconnect(id, cx) {
                    return;
                }
                self.fail_connect(id, &e, cx);
            }
            Outcome::Pending(at) => self.set_timer(id, Some(at)),
            Outcome::ConnectTimedOut => {
                self.stats.connect_timeouts += 1;
                let timed_out = io::Error::from_raw_os_error(libc::ETIMEDOUT);
                self.fail_connect(id, &timed_out, cx);
            }
            Outcome::ConnectAbandoned => {
                self.stats.abandoned += 1;
                self.drop_pending(
                    id,
                    "abandoned: the guest stopped retransmitting its SYN",
                    cx,
                );
            }
        }
    }

    /// Tell the guest its pending connect failed with `err`, and forget the flow.
    fn fail_connect(&mut self, id: Id, err: &io::Error, cx: &mut Ctx<'_>) {
        let Some(flow) = self.flows.get(id) else {
            return;
        };
        let key = flow.key;
        let mac = flow.guest_mac;
        if let Phase::Connecting { syn, syn_end, .. } = &flow.phase {
            let (syn, syn_end) = (syn.clone(), *syn_end);
            log::debug!("connect for {} -> {} failed: {err}", key.guest, key.remote);
            let started = flow.activity.started;
            let why = format!("connect failed: {err}");
            self.failures.note_tcp(key, (started, cx.now), why);
            self.answer_failed_connect(err, mac, key, &syn, syn_end, cx);
        }
        self.remove(id, cx, true);
    }

    /// After a failed connect, start one to the next fallback address; false if none is left.
    fn reconnect(&mut self, id: Id, cx: &mut Ctx<'_>) -> bool {
        let Some(flow) = self.flows.get_mut(id) else {
            return false;
        };
        let Phase::Connecting { fallbacks, .. } = &mut flow.phase else {
            return false;
        };
        let Ok(stream) = connect_first(fallbacks, cx.policy) else {
            return false;
        };
        let _ = cx.registry.deregister(&mut flow.host.stream);
        flow.host.stream = stream;
        let token = Kind::TcpFlow.token(id);
        cx.registry
            .register(
                &mut flow.host.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_ok()
    }

    /// Tell the guest its connection attempt failed: RST for a refusal, ICMP for a network
    /// failure, so it sees the same error it would see on a real network.
    fn answer_failed_connect(
        &mut self,
        err: &io::Error,
        guest_mac: EthernetAddress,
        key: FlowKey,
        syn: &[u8],
        syn_end: u32,
        cx: &mut Ctx<'_>,
    ) {
        let net = cx.policy.net;
        match unreachable_reason(err) {
            Some(reason) => {
                self.stats.unreachable += 1;
                emit::icmp_unreachable(cx.tap, &net, guest_mac, None, reason, syn);
            }
            None => {
                self.stats.refused += 1;
                emit::tcp_refuse(cx.tap, &net, guest_mac, key.remote, key.guest, syn_end);
            }
        }
    }

    fn set_timer(&mut self, id: Id, at: Option<Instant>) {
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        if flow.timer == at {
            return;
        }
        if let Some(old) = flow.timer.take() {
            self.timers.remove(&(old, id));
        }
        if let Some(at) = at {
            self.timers.insert((at, id));
            flow.timer = Some(at);
        }
    }

    fn remove(&mut self, id: Id, cx: &mut Ctx<'_>, graceful: bool) {
        let Some(mut flow) = self.flows.remove(id) else {
            return;
        };
        self.by_key.remove(&flow.key);
        if let Some(at) = flow.timer {
            self.timers.remove(&(at, id));
        }
        match &mut flow.phase {
            Phase::Connecting { last_syn, .. } => {
                self.pending.remove(&(*last_syn, id));
            }
            Phase::Open(conn) => self.budget.forget(&mut conn.memory),
        }
        let _ = cx.registry.deregister(&mut flow.host.stream);
        if !graceful {
            // Close with a reset so the host peer learns the guest side is gone.
            let _ = socket2::SockRef::from(&flow.host.stream).set_linger(Some(StdDuration::ZERO));
        }
        log::trace!(
            "{} -> {}: removed ({})",
            flow.key.guest,
            flow.key.remote,
            if graceful { "closed" } else { "reset" }
        );
    }
}

/// When a pending connect whose guest sent its SYN first at `first` and last at `last` is
/// over: abandoned by a guest that stopped retransmitting, or at [`CONNECT_TIMEOUT`].
fn pending_deadline(first: Instant, last: Instant) -> Instant {
    let backoff = (last - first) * 2;
    let gap = if backoff > SYN_RETRANSMIT_MIN_GAP {
        backoff
    } else {
        SYN_RETRANSMIT_MIN_GAP
    };
    (last + gap + SYN_RETRANSMIT_SLACK).min(first + CONNECT_TIMEOUT)
}

fn mark_dirty(dirty: &mut Vec<Id>, flow: &mut Flow, id: Id) {
    if !flow.queued {
        flow.queued = true;
        dirty.push(id);
    }
}

/// Create the flow's smoltcp interface and socket, and replay the stored SYN into it.
fn open(flow: &mut Flow, cx: &mut Ctx<'_>, config: &TcpConfig, seed: u64) -> io::Result<()> {
    let Phase::Connecting { syn, .. } = &flow.phase else {
        return Ok(());
    };
    let local = flow.key.remote;
    let (sink, peeked) = direct_paths(&flow.host.stream, config, cx.link);
    let mut iface = new_interface(cx, seed, flow.guest_mac, peeked.is_some());
    let (mut socket, mut memory) = new_socket(config);
    if let Some(tcp) = gate::tcp_of(syn) {
        memory.on_guest_syn(tcp);
    }
    let endpoint = IpListenEndpoint {
        addr: Some(local.ip().into()),
        port: local.port(),
    };
    socket
        .listen(endpoint)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("listen: {e:?}")))?;
    let mut sockets = SocketSet::new(Vec::with_capacity(1));
    let handle = sockets.add(socket);

    let raised = syn_for_smoltcp(syn, cx);
    let syn = raised.as_deref().unwrap_or(syn);
    let gate = Some(&mut memory.gate);
    let mut dev = FlowDevice::new(Some(syn), cx.tap, cx.link, flow.guest_mac, gate);
    iface.poll_ingress_single(cx.now, &mut dev, &mut sockets);
    flow.phase = Phase::Open(Box::new(Conn {
        iface,
        sockets,
        handle,
        memory,
        sink,
        peeked,
    }));
    // A just-connected socket is writable; reads are attempted optimistically.
    flow.host.writable = true;
    flow.host.readable = true;
    Ok(())
}

/// The [`direct`] paths a flow on host socket `stream` takes, if any.
fn direct_paths(
    stream: &TcpStream,
    config: &TcpConfig,
    link: super::Link,
) -> (Option<Box<HostSink>>, Option<PeekedSend>) {
    if !config.direct {
        return (None, None);
    }
    let fd = stream.as_fd();
    let peeked = if link.offload {
        PeekedSend::enable(fd)
    } else {
        None
    };
    (Some(HostSink::new(fd)), peeked)
}

/// The guest's SYN (or SYN-ACK) `ip_packet` as smoltcp should see it: with offloads, a copy
/// whose MSS option is raised to the most there is, so that smoltcp sends segments as large as
/// its device allows and the device splits them at the guest's real MSS (see [`device`] and
/// [`super::vnet`]). None when the packet goes in as it is.
fn syn_for_smoltcp(ip_packet: &[u8], cx: &Ctx<'_>) -> Option<Vec<u8>> {
    if !cx.link.offload {
        return None;
    }
    let mut copy = ip_packet.to_vec();
    let offset = gate::tcp_offset(&copy)?;
    super::vnet::rewrite_mss(copy.get_mut(offset..)?, u16::MAX)?;
    Some(copy)
}

/// A flow's private smoltcp interface: it owns the gateway's addresses and accepts packets for
/// any other (any-IP, with default routes via the gateway), since it stands in for every
/// host the guest talks to. `peeked`: the flow's device fills TCP payloads (see [`direct`]).
fn new_interface(
    cx: &mut Ctx<'_>,
    seed: u64,
    guest_mac: EthernetAddress,
    peeked: bool,
) -> Interface {
    let net = cx.policy.net;
    let mut dev = FlowDevice::new(None, cx.tap, cx.link, guest_mac, None).filling_payloads(peeked);
    let mut iface_config = Config::new(HardwareAddress::Ip);
    iface_config.random_seed = seed;
    let mut iface = Interface::new(iface_config, &mut dev, cx.now);
    iface.set_any_ip(true);
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(net.gateway), net.prefix));
        if let Some(v6) = net.v6 {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv6(v6.gateway),
                crate::net::IPV6_PREFIX_LEN,
            ));
        }
    });
    // Lets smoltcp reach a guest source outside the subnet, if the guest uses one (any-IP
    // also needs a route via an address of ours to accept a destination).
    let _ = iface.routes_mut().add_default_ipv4_route(net.gateway);
    if let Some(v6) = net.v6 {
        let _ = iface.routes_mut().add_default_ipv6_route(v6.gateway);
    }
    iface
}

/// The receive ring's size for a `requested` one: the largest no bigger that smoltcp's
/// bookkeeping gets right. smoltcp scales its window by `bits(capacity) - 16` and, after
/// sending its SYN or SYN-ACK (whose window is unscaled, at most 65535), takes data up to
/// `65535 << shift` ahead until its next ACK. Past the ring, that data is counted but not
/// stored, and a guest can turn it into an assertion failure (see the test
/// `data_past_the_ring_right_after_the_handshake_is_not_taken`). A size just under a power
/// of two (2 MiB - 1 for 2 MiB) keeps `65535 << shift` inside the ring. (The window gate
/// now turns such data away before smoltcp sees it too; this stays as the second line.)
fn rx_ring_size(requested: usize) -> usize {
    let max_unscaled = usize::from(u16::MAX);
    if requested <= max_unscaled {
        return requested;
    }
    let bits = usize::BITS - requested.leading_zeros();
    let assumed = max_unscaled << (bits - 16);
    if requested >= assumed {
        requested
    } else {
        (1 << (bits - 1)) - 1
    }
}

/// A flow's smoltcp socket, tuned for a local link (see the module docs of the stack), and
/// the record of its rings' memory.
fn new_socket(config: &TcpConfig) -> (tcp::Socket<'static>, FlowMemory) {
    // Zeroed allocations this large are fresh mappings: no memory until written.
    let mut rx = vec![0u8; rx_ring_size(config.rx_ring)];
    let mut tx = vec![0u8; config.tx_ring];
    let memory = FlowMemory::new(&mut rx, &mut tx);
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    socket.set_nagle_enabled(false);
    socket.set_ack_delay(None);
    socket.set_congestion_control(CongestionControl::None);
    (socket, memory)
}

/// Move bytes both ways, emit what smoltcp wants to send, and decide whether the flow is done.
fn relay(flow: &mut Flow, cx: &mut Ctx<'_>, budget: &mut Budget, stats: &mut TcpStats) -> Outcome {
    let Flow {
        key,
        phase,
        host,
        guest_mac,
        guest_fin,
        connecting_to_guest,
        activity,
        ..
    } = flow;
    let Phase::Open(conn) = phase else {
        return Outcome::Keep;
    };
    let Conn {
        iface,
        sockets,
        handle,
        memory,
        peeked,
        ..
    } = &mut **conn;
    let sock = sockets.get_mut::<tcp::Socket>(*handle);
    if let Some(peeked) = peeked
        && !peeked.release_acked(host.stream.as_fd(), sock.send_queue())
    {
        host.failed = true;
    }
    if *connecting_to_guest && sock.state() != State::SynSent {
        // The guest answered our SYN: no connect timeout from here on.
        *connecting_to_guest = false;
        sock.set_timeout(None);
    }

    activity.to_remote.bytes += guest_to_host(sock, host, memory);
    // Room in the budget for the window and for host data, given what just left.
    memory.plan(budget, SocketView::of(sock));
    if !host.write_shut
        && !host.failed
        && matches!(sock.recv(|_| (0, ())), Err(RecvError::Finished))
    {
        // The guest's FIN and everything before it reached the host: pass the FIN on.
        let _ = host.stream.shutdown(Shutdown::Write);
        host.write_shut = true;
    }
    let from_host = match peeked {
        Some(peeked) => {
            let n = host_to_guest_peeked(sock, host, memory, peeked);
            stats.direct_to_guest += n;
            n
        }
        None => host_to_guest(sock, host, memory),
    };
    activity.host_sent(from_host, cx.now);
    // A reset from the host reaches the guest once what came before it was delivered.
    if host.reset && host.eof && sock.send_queue() == 0 {
        host.failed = true;
    }
    if host.failed && sock.state() != State::Closed {
        sock.abort();
    }
    let state = sock.state();
    if matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    ) {
        *guest_fin = true;
    }
    if (host.eof || host.reset) && sock.timeout().is_none() {
        // We sent (or will send) FIN: don't wait forever for a guest that never answers.
        sock.set_timeout(Some(CLOSING_TIMEOUT));
    }

    // Emit ACKs with fresh windows, data, FIN or RST. Nothing is sent in TIME-WAIT, and a
    // closed socket without a peer has nothing left to say.
    let rst_pending = state == State::Closed && sock.remote_endpoint().is_some();
    let mut tap_full = false;
    if state != State::TimeWait && (state != State::Closed || rst_pending) {
        let mut sent = 0;
        loop {
            if cx.tap.is_blocked() {
                tap_full = true;
                break;
            }
            if sent >= MAX_SEGMENTS_PER_PASS {
                break;
            }
            let gate = Some(&mut memory.gate);
            let mut dev = FlowDevice::new(None, cx.tap, cx.link, *guest_mac, gate)
                .with_peek(host.stream.as_fd(), peeked.as_mut());
            match iface.poll_egress(cx.now, &mut dev, sockets) {
                PollResult::None => break,
                PollResult::SocketStateChanged => sent += 1,
            }
            if peeked.as_ref().is_some_and(|p| p.broken) && !host.failed {
                // A segment's payload could not be read back from the host socket: the
                // stream cannot be delivered intact. Reset it (the loop sends the RST).
                host.failed = true;
                sockets.get_mut::<tcp::Socket>(*handle).abort();
            }
        }
        activity.to_guest.packets += sent as u64;
    }
    // smoltcp does not know the gate held its window back, so it sends no update when room
    // comes back: we do.
    if matches!(
        state,
        State::SynReceived | State::Established | State::FinWait1 | State::FinWait2
    ) && let Some(update) = memory
        .gate
        .update(memory.ring_edge(), gate::UPDATE_MIN_GAIN)
    {
        stats.window_updates += 1;
        let (seq, ack, window) = (update.seq, update.ack, update.window);
        let net = cx.policy.net;
        emit::tcp_window_update(
            cx.tap, &net, *guest_mac, key.remote, key.guest, seq, ack, window,
        );
    }
    memory.settle(budget, host.readable && !host.eof && !host.failed);
    if tap_full {
        return Outcome::WaitTap;
    }

    let sock = sockets.get::<tcp::Socket>(*handle);
    match sock.state() {
        State::Closed if sock.remote_endpoint().is_some() => Outcome::WaitTap,
        State::Closed | State::Listen | State::TimeWait => {
            if *guest_fin && sock.can_recv() && !host.failed {
                // Graceful close with guest data still on its way to the host; the host
                // socket's writability brings us back here.
                return Outcome::Keep;
            }
            Outcome::Finished {
                graceful: host.write_shut && host.eof && !host.failed,
            }
        }
        _ => Outcome::Keep,
    }
}

/// Move what the guest sent from smoltcp's rx ring into the host socket.
/// Returns the bytes written to the host.
fn guest_to_host(sock: &mut tcp::Socket<'_>, host: &mut HostSide, memory: &mut FlowMemory) -> u64 {
    let mut moved = 0;
    while host.writable && !host.failed && !host.reset && sock.can_recv() {
        let r = sock.recv(|buf| {
            let written = match (&host.stream).write(buf) {
                Ok(n) => (n, Ok((n, buf.len()))),
                Err(e) => (0, Err(e)),
            };
            memory.on_recv(buf.as_ptr(), written.0);
            written
        });
        if let Ok(Ok((n, _))) = &r {
            moved += *n as u64;
        }
        match r {
            Ok(Ok((0, _))) | Err(_) => break,
            // A short write filled the socket's buffer: waiting for writability saves the
            // write that would only say EAGAIN (the kernel signals the edge when it drains).
            Ok(Ok((n, offered))) if n < offered => host.writable = false,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => match e.kind() {
                io::ErrorKind::WouldBlock => host.writable = false,
                io::ErrorKind::Interrupted => {}
                // The host peer reset the connection. What it sent before the reset is still
                // in our socket and readable: deliver it, then the reset (as when a read sees
                // the reset first), instead of aborting at once and dropping it (issue 6).
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                    log::debug!("host write: {e}");
                    host.reset = true;
                    host.readable = true;
                }
                _ => {
                    log::debug!("host write failed: {e}");
                    host.failed = true;
                }
            },
        }
    }
    if host.reset {
        // The host peer is gone: what the guest sends now has nowhere to go. Drop it rather
        // than let the ring fill, since with our receive window closed smoltcp ignores the
        // ACKs in guest segments it cannot accept (RFC 9293's allowance for a zero window is
        // not implemented), and the guest's ACKs of what is still being delivered to it are
        // what ends the flow.
        while sock
            .recv(|buf| {
                memory.on_recv(buf.as_ptr(), buf.len());
                (buf.len(), buf.len())
            })
            .is_ok_and(|n| n > 0)
        {}
    }
    moved
}

enum HostRead {
    Data,
    /// Less than asked for: the socket had no more at that moment.
    Drained,
    RingFull,
    /// The flow may not hold more host data now (see [`budget`]); it is woken when room
    /// is freed.
    OverBudget,
    Eof,
    Error(io::Error),
}

/// Read from the host socket straight into smoltcp's tx ring, until the socket is empty (a
/// short read or EAGAIN) or the ring is full.
/// Returns the bytes read from the host.
fn host_to_guest(sock: &mut tcp::Socket<'_>, host: &mut HostSide, memory: &mut FlowMemory) -> u64 {
    let mut moved = 0;
    while host.readable && !host.eof && !host.failed && sock.can_send() {
        let r = sock.send(|buf| {
            if buf.is_empty() {
                return (0, HostRead::RingFull);
            }
            let room = memory.send_room(buf.len());
            let buf = &mut buf[..room];
            if buf.is_empty() {
                memory.on_send(buf.as_ptr(), 0);
                return (0, HostRead::OverBudget);
            }
            let read = match (&host.stream).read(buf) {
                Ok(0) => (0, HostRead::Eof),
                Ok(n) if n < buf.len() => (n, HostRead::Drained),
                Ok(n) => (n, HostRead::Data),
                Err(e) => (0, HostRead::Error(e)),
            };
            memory.on_send(buf.as_ptr(), read.0);
            moved += read.0 as u64;
            read
        });
        match r {
            Ok(read) => {
                if !after_host_read(read, sock, host) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    moved
}

/// What a read (or a count, [`host_to_guest_peeked`]) of host data means for the flow;
/// false when reading must stop for now.
fn after_host_read(read: HostRead, sock: &mut tcp::Socket<'_>, host: &mut HostSide) -> bool {
    match read {
        HostRead::Data => {}
        // A short read emptied the socket: the next arrival is a new readiness edge, so
        // there is no need for a read that would only say EAGAIN. Unless the peer's FIN or
        // an error is already there (announced in an earlier event): read on to it.
        HostRead::Drained => host.readable = host.ending,
        HostRead::RingFull | HostRead::OverBudget => return false,
        HostRead::Eof => {
            host.eof = true;
            // After a reset the end is a reset, not a FIN.
            if !host.reset {
                sock.close();
            }
        }
        HostRead::Error(e) => match e.kind() {
            io::ErrorKind::WouldBlock => host.readable = false,
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::ConnectionReset => {
                host.reset = true;
                host.eof = true;
            }
            _ => {
                log::debug!("host read failed: {e}");
                host.failed = true;
            }
        },
    }
    true
}

/// [`host_to_guest`] for a flow whose host socket's queue is the tx ring's storage (see
/// [`direct`]): count what the host queued into smoltcp's ring without reading it, and find
/// the end of the stream (or a reset) with a peek past it.
/// Returns the bytes newly counted.
fn host_to_guest_peeked(
    sock: &mut tcp::Socket<'_>,
    host: &mut HostSide,
    memory: &mut FlowMemory,
    peeked: &mut PeekedSend,
) -> u64 {
    let mut moved = 0;
    // A peek past what FIONREAD counted finds data only when it arrived in between.
    let mut arrivals = 0;
    while host.readable && !host.eof && !host.failed && sock.can_send() {
        let fd = host.stream.as_fd();
        let unread = match peeked.unread(fd) {
            Ok(0) => match peeked.at_end(fd) {
                Ok(false) if arrivals < 8 => {
                    arrivals += 1;
                    continue;
                }
                Ok(false) => Ok(HostRead::Error(io::Error::other(
                    "FIONREAD and a peek disagree on what is queued",
                ))),
                Ok(true) => Ok(HostRead::Eof),
                Err(e) => Ok(HostRead::Error(e)),
            },
            Ok(n) => Err(n),
            Err(e) => Ok(HostRead::Error(e)),
        };
        let r = match unread {
            Ok(end) => Ok(end),
            Err(unread) => {
                let ring_seq = sock.send_buffer_seq().0 as u32;
                sock.send(|buf| {
                    if buf.is_empty() {
                        return (0, HostRead::RingFull);
                    }
                    let room = memory.send_room(buf.len());
                    let n = unread.min(room);
                    // The ring's bytes are not written: they stay in the host socket.
                    memory.on_send(buf.as_ptr(), n);
                    peeked.track(n, ring_seq);
                    moved += n as u64;
                    match n {
                        0 => (0, HostRead::OverBudget),
                        n if n == unread => (n, HostRead::Drained),
                        // Only part of what is queued fits where the ring wraps, or in the
                        // budget: look again.
                        n if n < buf.len() => (n, HostRead::OverBudget),
                        n => (n, HostRead::Data),
                    }
                })
            }
        };
        match r {
            Ok(read) => {
                if !after_host_read(read, sock, host) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    moved
}

enum ConnectState {
    Pending,
    Connected,
    /// Connected, and already reset by the peer (who may have sent data first).
    ConnectedThenReset,
    Failed(io::Error),
}

fn connect_state(stream: &TcpStream) -> ConnectState {
    match stream.take_error() {
        // A reset, unlike a refusal, means the handshake completed.
        Ok(Some(e)) if matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)) => {
            return ConnectState::ConnectedThenReset;
        }
        Ok(Some(e)) | Err(e) => return ConnectState::Failed(e),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => ConnectState::Connected,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => ConnectState::Pending,
        Err(e) => ConnectState::Failed(e),
    }
}

/// Start a connect to the first of `targets` that takes one, removing the ones tried.
fn connect_first(targets: &mut Vec<SocketAddr>, policy: &HostPolicy) -> io::Result<TcpStream> {
    let mut last = io::Error::from_raw_os_error(libc::ECONNREFUSED);
    while !targets.is_empty() {
        let target = targets.remove(0);
        match connect_nonblocking(target, policy.bind_for(&target)) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connect_nonblocking(addr: SocketAddr, bind: Option<SocketAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(b) = bind {
        socket.bind(&b.into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// A small, fast generator for per-flow smoltcp seeds (ISNs). Not for secrets.
struct SplitMix64(u64);

impl SplitMix64 {
    #[allow(unsafe_code)] // getrandom(2), which nix does not wrap.
    fn from_entropy() -> Self {
        let mut b = [0u8; 8];
        // SAFETY: b is a valid 8-byte buffer.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let seed = if n == 8 {
            u64::from_ne_bytes(b)
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9_7f4a_7c15)
                ^ u64::from(std::process::id())
        };
        SplitMix64(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl std::fmt::Debug for TcpFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpFlows")
            .field("flows", &self.flows.len())
            .field("pending_connects", &self.pending.len())
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::VirtualNetwork;
    use crate::stack::Link;
    use crate::stack::frame::{Classified, classify};
    use crate::stack::tx::TapWriter;
    use crate::testkit::{Segment, flags, syn_options};
    use mio::{Events, Poll};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        Icmpv4DstUnreachable, Icmpv4Repr, Ipv4Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    use std::os::fd::{AsFd, OwnedFd};

    /// A flow table whose "TAP" is one end of a seqpacket socketpair; the test reads the
    /// frames the stack writes from the other end.
    struct Harness {
        flows: TcpFlows,
        tap: TapWriter,
        guest: OwnedFd,
        poll: Poll,
        policy: HostPolicy,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            Self::with_config(TcpConfig::default())
        }

        fn with_config(config: TcpConfig) -> Self {
            let (a, b) = crate::testkit::tap_pair();
            Harness {
                flows: TcpFlows::new(config),
                tap: TapWriter::new(a, crate::tap::Framing::Plain).unwrap(),
                guest: b,
                poll: Poll::new().unwrap(),
                policy: HostPolicy::new(VirtualNetwork::default()),
                now: Instant::from_millis(0),
            }
        }

        /// Move the clock to `ms` and fire the timers due by then.
        fn at(&mut self, ms: i64) {
            self.now = Instant::from_millis(ms);
            let mut flows = std::mem::replace(&mut self.flows, TcpFlows::new(TcpConfig::default()));
            flows.run_timers(&mut self.cx());
            self.flows = flows;
        }

        /// A frame the stack wrote to the guest, if any is waiting.
        fn frame_now(&mut self) -> Option<Vec<u8>> {
            let mut buf = vec![0u8; 70000];
            let n = crate::tap::read_frame(self.guest.as_fd(), &mut buf).ok()?;
            buf.truncate(n);
            Some(buf)
        }

        fn cx(&mut self) -> Ctx<'_> {
            Ctx {
                now: self.now,
                tap: &mut self.tap,
                registry: self.poll.registry(),
                policy: &self.policy,
                link: Link {
                    our_mac: self.policy.net.gateway_mac(),
                    mtu: 65520,
                    offload: false,
                },
            }
        }

        fn guest_sends(&mut self, frame: &[u8]) {
            let Classified::Tcp(seg) = classify(frame, &self.policy.net) else {
                panic!("not a TCP frame")
            };
            let mut flows = std::mem::replace(&mut self.flows, TcpFlows::new(TcpConfig::default()));
            let upstreams = Upstreams::fixed(Vec::new());
            flows.on_guest_segment(&seg, &mut self.cx(), &upstreams);
            self.flows = flows;
        }

        /// Run the event loop until a frame reaches the guest or a second passes.
        fn next_frame(&mut self) -> Option<Vec<u8>> {
            let mut events = Events::with_capacity(16);
            for _ in 0..100 {
                let mut buf = vec![0u8; 70000];
                if let Ok(n) = crate::tap::read_frame(self.guest.as_fd(), &mut buf) {
                    buf.truncate(n);
                    return Some(buf);
                }
                self.poll
                    .poll(&mut events, Some(StdDuration::from_millis(10)))
                    .unwrap();
                let mut flows =
                    std::mem::replace(&mut self.flows, TcpFlows::new(TcpConfig::default()));
                for e in events.iter() {
                    let (_, id) = Id::from_token(e.token());
                    flows.on_host_event(
                        id,
                        e.is_readable(),
                        e.is_writable() || e.is_error(),
                        e.is_read_closed() || e.is_error(),
                    );
                }
                flows.service_dirty(&mut self.cx());
                self.flows = flows;
            }
            None
        }
    }

    fn syn_frame(dst: SocketAddrV4, src_port: u16) -> Vec<u8> {
        guest_frame(dst, src_port, TcpControl::Syn, 5000, None, &[])
    }

    /// A listener on the host's loopback whose accept queue is full, so connects to it stay
    /// pending (the kernel drops their SYNs); reached from the guest as 10.0.2.2:PORT.
    fn silent_listener() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddrV4) {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        listener.listen(0).unwrap();
        let port = listener.local_addr().unwrap().as_socket().unwrap().port();
        let target = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut queued = Vec::new();
        while let Ok(s) =
            std::net::TcpStream::connect_timeout(&target, StdDuration::from_millis(300))
        {
            queued.push(s);
            assert!(queued.len() < 16, "the accept queue never filled");
        }
        (
            listener,
            queued,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port),
        )
    }

    #[test]
    fn pending_deadline_follows_the_guests_syn_backoff() {
        let s = |secs: i64| Instant::from_millis(secs * 1000);
        // Linux (1 s, doubling) and Windows (3 s, doubling): each retransmission comes before
        // the deadline the previous ones set.
        for schedule in [&[0, 1, 3, 7, 15, 31, 63][..], &[0, 3, 9, 21][..]] {
            for pair in schedule.windows(2) {
                let deadline = pending_deadline(s(schedule[0]), s(pair[0]));
                assert!(s(pair[1]) < deadline, "{schedule:?}: {pair:?}");
            }
        }
        // A guest that sent one SYN and went quiet is given up on 4 s later.
        assert_eq!(pending_deadline(s(10), s(10)), s(14));
        // A connect the guest keeps retrying still ends at CONNECT_TIMEOUT.
        assert_eq!(pending_deadline(s(0), s(63)), s(0) + CONNECT_TIMEOUT);
    }

    #[test]
    fn guest_that_stops_retransmitting_its_syn_loses_the_pending_connect() {
        let (_listener, _queued, silent) = silent_listener();
        let mut h = Harness::new();
        h.guest_sends(&syn_frame(silent, 40010));
        assert_eq!(h.flows.pending_connects(), 1);
        h.at(1000);
        h.guest_sends(&syn_frame(silent, 40010));
        // Due again by 1 + max(3, 2) + 1 = 5 s.
        h.at(4900);
        assert_eq!(h.flows.pending_connects(), 1, "still within its backoff");
        h.at(5100);
        assert_eq!(h.flows.pending_connects(), 0);
        assert!(h.flows.is_empty());
        assert_eq!(h.flows.stats.abandoned, 1);
        assert!(
            h.frame_now().is_none(),
            "an abandoned connect is not answered"
        );
    }

    #[test]
    fn pending_connect_past_its_deadline_gets_host_unreachable() {
        let (_listener, _queued, silent) = silent_listener();
        let mut h = Harness::new();
        let syn = syn_frame(silent, 40011);
        for at in [0, 1, 3, 7, 15, 31, 63] {
            h.at(at * 1000);
            h.guest_sends(&syn);
        }
        h.at(74_900);
        assert_eq!(h.flows.pending_connects(), 1);
        h.at(75_000);
        assert!(h.flows.is_empty());
        assert_eq!(h.flows.stats.connect_timeouts, 1);
        let frame = h.frame_now().expect("an ICMP error");
        let (_, icmp) = crate::stack::emit::parse_icmp(&frame).expect("valid ICMP");
        assert!(
            matches!(
                icmp,
                Icmpv4Repr::DstUnreachable {
                    reason: Icmpv4DstUnreachable::HostUnreachable,
                    ..
                }
            ),
            "{icmp:?}"
        );
    }

    #[test]
    fn pending_connect_bound_evicts_the_least_recently_refreshed() {
        let (_listener, _queued, silent) = silent_listener();
        let mut h = Harness::with_config(TcpConfig {
            max_pending_connects: 2,
            ..TcpConfig::default()
        });
        h.guest_sends(&syn_frame(silent, 40021));
        h.at(100);
        h.guest_sends(&syn_frame(silent, 40022));
        h.at(1000);
        h.guest_sends(&syn_frame(silent, 40021));
        // A third: 40022 (last heard of at 0.1 s) makes room, without any answer.
        h.at(1200);
        h.guest_sends(&syn_frame(silent, 40023));
        assert_eq!(h.flows.pending_connects(), 2);
        assert_eq!(h.flows.stats.evicted, 1);
        assert_eq!(h.flows.stats.refused_over_limit, 0);
        assert!(h.frame_now().is_none(), "nobody gets a reset");
        let ports: Vec<u16> = h.flows.by_key.keys().map(|k| k.guest.port()).collect();
        assert!(
            ports.contains(&40021) && ports.contains(&40023),
            "{ports:?}"
        );
        // The evicted one's next SYN starts it afresh (evicting the least recent in turn).
        h.guest_sends(&syn_frame(silent, 40022));
        assert_eq!(h.flows.pending_connects(), 2);
        assert!(h.flows.by_key.keys().any(|k| k.guest.port() == 40022));
    }

    #[test]
    fn new_initial_sequence_number_replaces_the_stored_syn() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_silent_listener, _queued, silent) = silent_listener();
        let mut h = Harness::new();
        let gw = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port);
        // A connect that stays pending, then a second attempt from the same port with
        // another ISN: its clock starts afresh.
        h.guest_sends(&syn_frame(silent, 40030));
        h.at(3000);
        h.guest_sends(&guest_frame(
            silent,
            40030,
            TcpControl::Syn,
            9000,
            None,
            &[],
        ));
        h.at(6900);
        assert_eq!(
            h.flows.pending_connects(),
            1,
            "the new attempt has until 7 s"
        );
        // Against a listening port, the SYN-ACK answers the latest SYN.
        h.guest_sends(&syn_frame(gw, 40031));
        h.guest_sends(&guest_frame(gw, 40031, TcpControl::Syn, 9000, None, &[]));
        let frame = h.next_frame().expect("a SYN-ACK");
        let (_, tcp) = parse_tcp(&frame);
        assert_eq!(tcp.ack_number, Some(TcpSeqNumber(9001)));
    }

    /// A segment from the guest's port `src_port` to `dst`; a SYN offers MSS 1460, window
    /// scale 7 and SACK, as Linux does.
    fn guest_frame(
        dst: SocketAddrV4,
        src_port: u16,
        control: TcpControl,
        seq: u32,
        ack: Option<TcpSeqNumber>,
        payload: &[u8],
    ) -> Vec<u8> {
        let syn = control == TcpControl::Syn;
        let control = match control {
            TcpControl::Syn => flags::SYN,
            TcpControl::Fin => flags::FIN,
            TcpControl::Rst => flags::RST,
            TcpControl::Psh => flags::PSH,
            TcpControl::None => 0,
        };
        let options = if syn {
            syn_options(Some(1460), Some(7), true)
        } else {
            Vec::new()
        };
        Segment {
            src: SocketAddr::from((VirtualNetwork::default().guest, src_port)),
            dst: SocketAddr::V4(dst),
            seq,
            ack: ack.map_or(0, |a| a.0 as u32),
            flags: control | if ack.is_some() { flags::ACK } else { 0 },
            window: 64000,
            options: &options,
            payload,
        }
        .frame()
    }

    fn parse_tcp(frame: &[u8]) -> (Ipv4Addr, TcpRepr<'_>) {
        let caps = ChecksumCapabilities::default();
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let src = ip.src_addr();
        let tcp = TcpPacket::new_checked(&frame[34..]).unwrap();
        let repr = TcpRepr::parse(&tcp, &src.into(), &ip.dst_addr().into(), &caps).unwrap();
        (src, repr)
    }

    #[test]
    fn refused_connect_answers_the_syn_with_rst_ack() {
        let closed_port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut h = Harness::new();
        let gw = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), closed_port);
        h.guest_sends(&syn_frame(gw, 40001));
        let frame = h.next_frame().expect("an answer to the SYN");
        let (src, tcp) = parse_tcp(&frame);
        assert_eq!(src, *gw.ip());
        assert_eq!(tcp.control, TcpControl::Rst);
        assert_eq!(tcp.ack_number, Some(TcpSeqNumber(5001)));
        assert_eq!(tcp.dst_port, 40001);
        assert!(h.flows.is_empty(), "a refused flow is forgotten");
        assert_eq!(h.flows.pending_connects(), 0);
    }

    #[test]
    fn accepted_connect_answers_with_syn_ack_only_after_connecting() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut h = Harness::new();
        let gw = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port);
        h.guest_sends(&syn_frame(gw, 40002));
        // Retransmitted SYN while connecting: no second flow, no extra answer.
        h.guest_sends(&syn_frame(gw, 40002));
        assert_eq!(h.flows.len(), 1);
        let frame = h.next_frame().expect("a SYN-ACK");
        let (_, tcp) = parse_tcp(&frame);
        assert_eq!(tcp.control, TcpControl::Syn);
        assert_eq!(tcp.ack_number, Some(TcpSeqNumber(5001)));
        assert!(tcp.max_seg_size.is_some());
        assert!(h.next_frame().is_none(), "exactly one SYN-ACK");
        let (_conn, peer) = listener.accept().unwrap();
        assert!(peer.ip().is_loopback());
    }

    #[test]
    fn subnet_neighbour_gets_icmp_host_unreachable_quoting_the_syn() {
        let mut h = Harness::new();
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 50), 80);
        let syn = syn_frame(dst, 40003);
        h.guest_sends(&syn);
        let frame = h.next_frame().expect("an ICMP error");
        let (ip, icmp) = crate::stack::emit::parse_icmp(&frame).expect("valid ICMP");
        assert_eq!(ip.dst_addr, VirtualNetwork::default().guest);
        match icmp {
            Icmpv4Repr::DstUnreachable {
                reason,
                header,
                data,
            } => {
                assert_eq!(reason, Icmpv4DstUnreachable::HostUnreachable);
                assert_eq!(header.dst_addr, *dst.ip());
                assert_eq!(&data[..4], &syn[34..38], "quotes the ports");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(h.flows.is_empty());
    }

    #[test]
    fn segment_for_unknown_flow_is_reset() {
        let mut h = Harness::new();
        let mut frame = syn_frame(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 80), 40004);
        // Turn the SYN into a bare ACK.
        {
            let mut tcp = TcpPacket::new_unchecked(&mut frame[34..]);
            tcp.set_syn(false);
            tcp.set_ack(true);
            tcp.set_ack_number(TcpSeqNumber(777));
        }
        h.guest_sends(&frame);
        let out = h.next_frame().expect("a reset");
        let (_, tcp) = parse_tcp(&out);
        assert_eq!(tcp.control, TcpControl::Rst);
        assert_eq!(tcp.seq_number, TcpSeqNumber(777));
        assert!(h.flows.is_empty());
    }

    /// Found by the `stateful` fuzz target: smoltcp remembers the unscaled window of its
    /// SYN-ACK as if it were scaled, so until its next ACK it took data up to 65535 << shift
    /// past the handshake, beyond a ring whose size is a power of two; the bytes past the end
    /// were counted as received without being stored (and, once contiguous, tripped an
    /// assertion: a guest could bring usernet down). Ring sizes just under a power of two
    /// keep that window inside the ring.
    #[test]
    fn data_past_the_ring_right_after_the_handshake_is_not_taken() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut h = Harness::new();
        let gw = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port);
        h.guest_sends(&syn_frame(gw, 40005));
        let frame = h.next_frame().expect("a SYN-ACK");
        let (_, synack) = parse_tcp(&frame);
        let ack = Some(synack.seq_number + 1);
        let ring = rx_ring_size(TcpConfig::default().rx_ring);
        // Ends past the ring (the window smoltcp believes in), starts inside it.
        let far = 5001 + ring as u32 - 100;
        let payload = vec![7u8; 1000];
        let seg = guest_frame(gw, 40005, TcpControl::None, far, ack, &payload);
        h.guest_sends(&seg);
        let frame = h.next_frame().expect("an ACK");
        let (_, tcp) = parse_tcp(&frame);
        assert_eq!(
            tcp.ack_number,
            Some(TcpSeqNumber(5001)),
            "nothing in order yet"
        );
        assert_eq!(h.flows.len(), 1);
    }

    #[test]
    fn ring_sizes_keep_the_handshake_window_inside_the_ring() {
        for requested in [
            1000,
            65535,
            65536,
            100_000,
            1 << 20,
            (1 << 20) + 5,
            2 << 20,
            3 << 20,
        ] {
            let size = rx_ring_size(requested);
            assert!(
                size <= requested && size >= requested / 2,
                "{requested} -> {size}"
            );
            // smoltcp's shift for this capacity, and the window it assumes after a SYN-ACK.
            let bits = usize::BITS - size.leading_zeros();
            let shift = bits.saturating_sub(16);
            assert!(
                65535usize << shift <= size.max(65535),
                "{requested} -> {size}"
            );
        }
    }
}
