//! UDP: a NAT table of connected host sockets, one per (guest address:port, destination
//! address:port).
//!
//! UDP never touches smoltcp. A guest datagram is sent on the entry's host socket as-is; what
//! comes back on that socket goes to the guest from the original destination (so a reply via
//! the gateway comes from 10.0.2.2, not 127.0.0.1). ICMP errors the host receives for the
//! socket (`IP_RECVERR`) reach the guest as ICMP errors about its own datagram.
//!
//! Entries live until they have been idle for the timeout (`--udp-timeout`), and the table is
//! bounded (`--max-udp-flows`). When it is full, a new flow takes the place of the oldest
//! entry that never saw an answer (one-way traffic: scans, floods, dead servers); when every
//! entry is a conversation, of the least recently used one if it has been quiet for
//! [`CONVERSATION_GRACE`]; otherwise the new flow is refused with ICMP "communication
//! administratively prohibited". So a flood of new flows cannot break the conversations in
//! progress. Idleness is tracked in an ordered set keyed by a coarse last-use time, refreshed
//! at most once a second per entry, so a busy flow does not pay an ordered-set update per
//! datagram; unanswered entries are kept in a second set by creation time.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::rc::Rc;

use mio::Interest;
use mio::net::UdpSocket;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpProtocol};

use super::Ctx;
use super::emit::{self, UDP_LEN};
use super::errqueue;
use super::frame::GuestUdp;
use super::hostfwd;
use super::policy::{Unreachable, unreachable_reason};
use super::snapshot::{Failures, row};
use super::token::Kind;
use crate::observe::report::{FlowRow, FlowState, FlowTable, Protocol, Traffic};
use crate::slab::{Id, Slab};

/// How long an idle entry is kept, unless `--udp-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Most entries at once, unless configured otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Datagrams read from one host socket per readiness event before others get a turn.
const RECV_BUDGET: usize = 64;
/// Granularity of the idle bookkeeping.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(1);
/// How long a conversation (an entry that saw traffic both ways) must have been quiet before
/// a new flow may take its place in a full table.
pub const CONVERSATION_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct UdpConfig {
    pub timeout: Duration,
    pub max_entries: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            timeout: DEFAULT_TIMEOUT,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UdpStats {
    pub to_host: u64,
    pub to_guest: u64,
    pub entries_created: u64,
    pub expired: u64,
    pub evicted: u64,
    /// New flows refused because the table was full of live conversations.
    pub refused_full: u64,
    /// Datagrams the host socket would not take (buffer full) or the guest link could not carry.
    pub dropped: u64,
    pub icmp_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NatKey {
    guest: SocketAddr,
    /// The destination as the guest addressed it (10.0.2.2, not 127.0.0.1).
    remote: SocketAddr,
}

/// The host end of a NAT entry.
enum HostEnd {
    /// A guest-initiated flow: a connected socket of the entry's own.
    Connected(UdpSocket),
    /// A client of a forwarded host port: the forward's listening socket, and the client's
    /// address to answer on it.
    Forwarded {
        socket: Rc<UdpSocket>,
        forward: Id,
        client: SocketAddr,
    },
}

struct Entry {
    key: NatKey,
    guest_mac: EthernetAddress,
    host: HostEnd,
    last_used: Instant,
    /// The time this entry is filed under in `idle`.
    idle_key: Instant,
    /// In the ready list.
    queued: bool,
    /// The socket reported an error (ICMP errors wait in its error queue).
    error_seen: bool,
    /// When it was made (its key in `unanswered`).
    created: Instant,
    /// Traffic went both ways (a reply from the host, or from the guest for a forward).
    answered: bool,
    /// What went each way, for the flow table.
    to_remote: Traffic,
    to_guest: Traffic,
}

impl Entry {
    /// Send `payload` to the guest as a datagram of this flow (from its remote end).
    fn emit_to_guest(&self, cx: &mut Ctx<'_>, payload: &[u8]) {
        let net = cx.policy.net;
        emit::udp_datagram(
            cx.tap,
            &net,
            self.guest_mac,
            self.key.remote,
            self.key.guest,
            payload,
        );
    }
}

pub struct UdpNat {
    config: UdpConfig,
    by_key: HashMap<NatKey, Id>,
    /// Forwarded entries by (forward, client).
    by_client: HashMap<(Id, SocketAddr), Id>,
    entries: Slab<Entry>,
    idle: BTreeSet<(Instant, Id)>,
    /// Entries that never saw an answer, by creation time: the first to make room.
    unanswered: BTreeSet<(Instant, Id)>,
    /// Entries whose socket reported readable and has not been drained yet.
    ready: Vec<Id>,
    pub stats: UdpStats,
    /// Recent flows refused for lack of room, for the flow table.
    pub failures: Failures,
}

impl UdpNat {
    pub fn new(config: UdpConfig) -> Self {
        UdpNat {
            config,
            by_key: HashMap::new(),
            by_client: HashMap::new(),
            entries: Slab::default(),
            idle: BTreeSet::new(),
            unanswered: BTreeSet::new(),
            ready: Vec::new(),
            stats: UdpStats::default(),
            failures: Failures::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Relay a guest datagram that belongs to an existing entry; false if there is none.
    pub fn relay_existing(&mut self, d: &GuestUdp<'_>, cx: &mut Ctx<'_>) -> bool {
        let key = NatKey {
            guest: d.src,
            remote: d.dst,
        };
        match self.by_key.get(&key) {
            Some(&id) => {
                self.send_to_host(id, d, cx);
                true
            }
            None => false,
        }
    }

    /// Relay a guest datagram to `target` (where the policy sent it).
    pub fn on_guest_datagram(&mut self, d: &GuestUdp<'_>, target: SocketAddr, cx: &mut Ctx<'_>) {
        let key = NatKey {
            guest: d.src,
            remote: d.dst,
        };
        let id = match self.by_key.get(&key).copied() {
            Some(id) => id,
            None if !self.make_room(cx) => {
                self.stats.refused_full += 1;
                let why = "refused: the flow table is full (--max-udp-flows)";
                self.failures
                    .note(Protocol::Udp, (d.src, d.dst), (cx.now, cx.now), why);
                log::debug!("udp {} -> {target}: refused, the flow table is full", d.src);
                let net = cx.policy.net;
                let reason = Unreachable::Prohibited;
                emit::icmp_unreachable(cx.tap, &net, d.src_mac, None, reason, d.ip_packet);
                return;
            }
            None => match self.create(key, d.src_mac, target, cx) {
                Ok(id) => id,
                Err(e) => {
                    self.stats.dropped += 1;
                    log::debug!("udp {} -> {target}: no host socket: {e}", d.src);
                    if let Some(reason) = unreachable_reason(&e) {
                        let net = cx.policy.net;
                        emit::icmp_unreachable(cx.tap, &net, d.src_mac, None, reason, d.ip_packet);
                    }
                    return;
                }
            },
        };
        self.send_to_host(id, d, cx);
    }

    fn send_to_host(&mut self, id: Id, d: &GuestUdp<'_>, cx: &mut Ctx<'_>) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        entry.last_used = cx.now;
        entry.guest_mac = d.src_mac;
        if matches!(entry.host, HostEnd::Forwarded { .. }) && !entry.answered {
            // The guest answered a client of a forwarded port.
            entry.answered = true;
            self.unanswered.remove(&(entry.created, id));
        }
        for attempt in 0..2 {
            let sent = match &entry.host {
                HostEnd::Connected(socket) => socket.send(d.payload),
                HostEnd::Forwarded { socket, client, .. } => socket.send_to(d.payload, *client),
            };
            match sent {
                Ok(_) => {
                    self.stats.to_host += 1;
                    entry.to_remote.count(d.payload.len());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.dropped += 1;
                    break;
                }
                Err(e) if attempt == 0 && is_icmp_errno(&e) => {
                    // An earlier datagram drew an ICMP error; report it, then retry this one.
                    drain_errors(entry, cx, &mut self.stats);
                }
                Err(e) => {
                    self.stats.dropped += 1;
                    log::debug!("udp {} -> {}: send failed: {e}", d.src, d.dst);
                    break;
                }
            }
        }
        self.refile(id, cx.now);
    }

    /// A datagram from `client` of a forwarded host port, for the guest at `guest`: deliver
    /// it from the client's entry, made on first contact.
    #[allow(clippy::too_many_arguments)]
    pub fn on_forwarded_datagram(
        &mut self,
        forward: Id,
        socket: &Rc<UdpSocket>,
        client: SocketAddr,
        guest: std::net::SocketAddrV4,
        guest_mac: EthernetAddress,
        payload: &[u8],
        cx: &mut Ctx<'_>,
    ) {
        let guest = SocketAddr::V4(guest);
        let id = match self.by_client.get(&(forward, client)) {
            Some(&id) => id,
            None => {
                if !self.make_room(cx) {
                    self.stats.refused_full += 1;
                    return;
                }
                let net = cx.policy.net;
                let source = hostfwd::virtual_source(client, &net);
                let taken = |port| {
                    self.by_key.contains_key(&NatKey {
                        guest,
                        remote: SocketAddr::from((source, port)),
                    })
                };
                let Some(port) = hostfwd::pick_source_port(client.port(), taken) else {
                    self.stats.dropped += 1;
                    return;
                };
                let key = NatKey {
                    guest,
                    remote: SocketAddr::from((source, port)),
                };
                let id = self.entries.insert(Entry {
                    key,
                    guest_mac,
                    host: HostEnd::Forwarded {
                        socket: Rc::clone(socket),
                        forward,
                        client,
                    },
                    last_used: cx.now,
                    idle_key: cx.now,
                    queued: false,
                    error_seen: false,
                    created: cx.now,
                    answered: false,
                    to_remote: Traffic::default(),
                    to_guest: Traffic::default(),
                });
                self.by_key.insert(key, id);
                self.by_client.insert((forward, client), id);
                self.idle.insert((cx.now, id));
                self.unanswered.insert((cx.now, id));
                self.stats.entries_created += 1;
                id
            }
        };
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let max_payload = cx.link.mtu.saturating_sub(emit::IPV4_LEN + UDP_LEN);
        if payload.len() > max_payload {
            self.stats.dropped += 1;
            return;
        }
        entry.last_used = cx.now;
        entry.guest_mac = guest_mac;
        self.stats.to_guest += 1;
        entry.to_guest.count(payload.len());
        entry.emit_to_guest(cx, payload);
        self.refile(id, cx.now);
    }

    /// One row per NAT entry, for the flow table.
    pub fn snapshot(&self, now: Instant, table: &mut FlowTable) {
        let rows = self.entries.iter().map(|(_, e)| {
            let (inbound, remote) = match &e.host {
                HostEnd::Connected(_) => (false, e.key.remote),
                HostEnd::Forwarded { client, .. } => (true, *client),
            };
            let ends = (e.key.guest.to_string(), remote.to_string());
            let times = (e.created, e.last_used, now);
            let traffic = (e.to_remote, e.to_guest);
            let row = row(Protocol::Udp, ends, FlowState::Open, times, traffic);
            FlowRow { inbound, ..row }
        });
        table.extend(self.entries.len(), rows);
    }

    /// Drop the entries of a forward that was removed, closing its socket with the last one.
    pub fn forget_forward(&mut self, forward: Id, cx: &mut Ctx<'_>) {
        let ids: Vec<Id> = self
            .by_client
            .iter()
            .filter(|((f, _), _)| *f == forward)
            .map(|(_, id)| *id)
            .collect();
        for id in ids {
            self.remove(id, cx);
        }
    }

    fn create(
        &mut self,
        key: NatKey,
        guest_mac: EthernetAddress,
        target: SocketAddr,
        cx: &mut Ctx<'_>,
    ) -> io::Result<Id> {
        let socket = connect_udp(target, cx.policy.bind_for(&target))?;
        let id = self.entries.insert(Entry {
            key,
            guest_mac,
            host: HostEnd::Connected(socket),
            last_used: cx.now,
            idle_key: cx.now,
            queued: false,
            error_seen: false,
            created: cx.now,
            answered: false,
            to_remote: Traffic::default(),
            to_guest: Traffic::default(),
        });
        let entry = self.entries.get_mut(id).expect("just inserted");
        let registered = match &mut entry.host {
            HostEnd::Connected(socket) => {
                cx.registry
                    .register(socket, Kind::UdpFlow.token(id), Interest::READABLE)
            }
            HostEnd::Forwarded { .. } => Ok(()),
        };
        if let Err(e) = registered {
            self.entries.remove(id);
            return Err(e);
        }
        self.by_key.insert(key, id);
        self.idle.insert((cx.now, id));
        self.unanswered.insert((cx.now, id));
        self.stats.entries_created += 1;
        Ok(id)
    }

    /// An entry's host socket is readable (datagrams), or has errors queued (`error`).
    pub fn on_host_event(&mut self, id: Id, error: bool) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.error_seen |= error;
            if !entry.queued {
                entry.queued = true;
                self.ready.push(id);
            }
        }
    }

    /// Whether some socket still has datagrams to read.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Relay what arrived on readable host sockets, a bounded number of datagrams each; a
    /// socket with more left stays ready for the next pass (readiness is edge-triggered).
    pub fn service_ready(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8]) {
        for id in std::mem::take(&mut self.ready) {
            let more = self.receive(id, cx, buf);
            if let Some(entry) = self.entries.get_mut(id) {
                entry.queued = more;
                if more {
                    self.ready.push(id);
                }
            }
        }
    }

    /// Read up to a budget of datagrams; returns whether more may be waiting.
    fn receive(&mut self, id: Id, cx: &mut Ctx<'_>, buf: &mut [u8]) -> bool {
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        let HostEnd::Connected(socket) = &entry.host else {
            return false;
        };
        let max_payload = cx
            .link
            .mtu
            .saturating_sub(emit::ip_header_len(entry.key.guest.ip()) + UDP_LEN);
        let mut got_any = false;
        let mut more = true;
        for _ in 0..RECV_BUDGET {
            match socket.recv(buf) {
                Ok(n) if n > max_payload => {
                    // Bigger than the guest link carries, and we do not fragment.
                    self.stats.dropped += 1;
                }
                Ok(n) => {
                    got_any = true;
                    self.stats.to_guest += 1;
                    entry.to_guest.count(n);
                    entry.emit_to_guest(cx, &buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => drain_errors(entry, cx, &mut self.stats),
            }
        }
        // Errors can be queued without a failed recv (EPOLLERR alone); only then is the error
        // queue worth a system call.
        if std::mem::take(&mut entry.error_seen) {
            drain_errors(entry, cx, &mut self.stats);
        }
        if got_any {
            entry.last_used = cx.now;
            if !entry.answered {
                entry.answered = true;
                self.unanswered.remove(&(entry.created, id));
            }
            self.refile(id, cx.now);
        }
        more
    }

    /// Move an entry to its current last-use time in the idle order, if it is stale enough.
    fn refile(&mut self, id: Id, now: Instant) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        if now - entry.idle_key >= TOUCH_GRANULARITY {
            self.idle.remove(&(entry.idle_key, id));
            entry.idle_key = now;
            self.idle.insert((now, id));
        }
    }

    /// Make room for one more entry if the table is full; false if every entry is a live
    /// conversation (see the module docs).
    fn make_room(&mut self, cx: &mut Ctx<'_>) -> bool {
        if self.entries.len() < self.config.max_entries {
            return true;
        }
        let victim = match self.unanswered.first() {
            Some(&(_, id)) => id,
            None => {
                let Some(&(_, id)) = self.idle.first() else {
                    return true;
                };
                let quiet = self
                    .entries
                    .get(id)
                    .is_none_or(|e| cx.now - e.last_used >= CONVERSATION_GRACE);
                if !quiet {
                    return false;
                }
                id
            }
        };
        self.stats.evicted += 1;
        self.remove(victim, cx);
        true
    }

    fn remove(&mut self, id: Id, cx: &mut Ctx<'_>) {
        if let Some(mut entry) = self.entries.remove(id) {
            self.idle.remove(&(entry.idle_key, id));
            self.unanswered.remove(&(entry.created, id));
            self.by_key.remove(&entry.key);
            match &mut entry.host {
                HostEnd::Connected(socket) => {
                    let _ = cx.registry.deregister(socket);
                }
                HostEnd::Forwarded {
                    forward, client, ..
                } => {
                    self.by_client.remove(&(*forward, *client));
                }
            }
        }
    }

    /// When the next entry may expire.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle.first().map(|&(t, _)| t + self.config.timeout)
    }

    /// Drop entries idle for longer than the timeout.
    pub fn expire(&mut self, cx: &mut Ctx<'_>) {
        while let Some(&(filed, id)) = self.idle.first() {
            if filed + self.config.timeout > cx.now {
                break;
            }
            let last_used = self.entries.get(id).map_or(filed, |e| e.last_used);
            if last_used + self.config.timeout > cx.now {
                // Used since it was filed: file it under its real last use.
                self.idle.remove(&(filed, id));
                if let Some(e) = self.entries.get_mut(id) {
                    e.idle_key = last_used;
                }
                self.idle.insert((last_used, id));
                continue;
            }
            self.stats.expired += 1;
            self.remove(id, cx);
        }
    }
}

/// Whether a send error is the kernel reporting an earlier ICMP error.
fn is_icmp_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EMSGSIZE)
    )
}

/// Pass every queued ICMP error of an entry's socket on to the guest.
fn drain_errors(entry: &Entry, cx: &mut Ctx<'_>, stats: &mut UdpStats) {
    let HostEnd::Connected(socket) = &entry.host else {
        return;
    };
    let mut payload = [0u8; emit::QUOTE_BUF];
    while let Some(err) = errqueue::take(socket.as_fd(), &mut payload) {
        let Some((icmp_type, code)) = err.icmp else {
            continue;
        };
        stats.icmp_errors += 1;
        let (guest, remote) = (entry.key.guest, entry.key.remote);
        let mut l4 = Vec::with_capacity(UDP_LEN + err.payload_len);
        let udp_len = (UDP_LEN + err.payload_len) as u16;
        l4.extend_from_slice(&guest.port().to_be_bytes());
        l4.extend_from_slice(&remote.port().to_be_bytes());
        l4.extend_from_slice(&udp_len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(&payload[..err.payload_len.min(payload.len())]);
        let quote = emit::rebuild_quote(
            guest.ip(),
            remote.ip(),
            IpProtocol::Udp,
            usize::from(udp_len),
            &l4,
        );
        let from = error_source(&err, remote.ip());
        let net = cx.policy.net;
        emit::icmp_error(
            cx.tap,
            &net,
            entry.guest_mac,
            from,
            guest.ip(),
            icmp_type,
            code,
            err.info,
            &quote,
        );
    }
}

/// Where the guest should see a relayed ICMP error come from: "port unreachable" from the
/// destination itself; other errors from the router that reported them, unless that is a
/// host-side address the guest never saw, or of the other family.
pub fn error_source(err: &errqueue::SocketError, remote: std::net::IpAddr) -> std::net::IpAddr {
    match err.offender {
        Some(o)
            if !err.is_port_unreachable()
                && !o.is_loopback()
                && !o.is_unspecified()
                && o.is_ipv4() == remote.is_ipv4() =>
        {
            o
        }
        _ => remote,
    }
}

/// A non-blocking UDP socket connected to `target`, bound to `bind` if given.
pub fn connect_udp(target: SocketAddr, bind: Option<SocketAddr>) -> io::Result<UdpSocket> {
    let socket = connect_dgram(target, bind, socket2::Protocol::UDP)?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// A non-blocking datagram socket of `protocol` (UDP, or ICMP for ping sockets) connected to
/// `target`, bound to `bind` if given, with ICMP errors queued (`IP_RECVERR`,
/// `IPV6_RECVERR`).
pub fn connect_dgram(
    target: SocketAddr,
    bind: Option<SocketAddr>,
    protocol: socket2::Protocol,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.nonblocking().cloexec(),
        Some(protocol),
    )?;
    if let Some(b) = bind {
        socket.bind(&b.into())?;
    }
    socket.connect(&target.into())?;
    if let Err(e) = errqueue::enable(socket.as_fd(), target) {
        log::debug!("IP_RECVERR: {e}");
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    //! The table bound, driven through a whole [`Stack`] whose TAP is a socketpair; the host
    //! side is UDP sockets on this machine's loopback (10.0.2.2 is 127.0.0.1).

    use crate::net::VirtualNetwork;
    use crate::stack::{Stack, StackConfig};
    use crate::testkit;
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, Icmpv4Packet, IpProtocol, Ipv4Packet, UdpPacket,
    };
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    struct Guest {
        stack: Stack,
        tap: OwnedFd,
        net: VirtualNetwork,
    }

    impl Guest {
        fn new(max_entries: usize) -> Guest {
            let (a, b) = crate::testkit::tap_pair();
            let net = VirtualNetwork::default();
            let mut config = StackConfig::new(net, 1500);
            config.udp.max_entries = max_entries;
            Guest {
                stack: Stack::new(a, config).unwrap(),
                tap: b,
                net,
            }
        }

        /// The guest sends `payload` from its port `sport` to the gateway's `dport`.
        fn send(&mut self, sport: u16, dport: u16, payload: &[u8]) {
            let src = SocketAddr::from((self.net.guest, sport));
            let dst = SocketAddr::from((self.net.gateway, dport));
            self.stack
                .inject_frame(&testkit::udp_frame(src, dst, payload));
            self.stack.turn(Duration::ZERO).unwrap();
        }

        /// Run the loop a little, then what reached the guest: (UDP payloads to `sport`,
        /// ICMP unreachable codes).
        fn received(&mut self) -> (Vec<(u16, Vec<u8>)>, Vec<u8>) {
            for _ in 0..5 {
                self.stack.turn(Duration::from_millis(10)).unwrap();
            }
            let (mut udp, mut icmp) = (Vec::new(), Vec::new());
            let mut buf = vec![0u8; 2048];
            while let Ok(n) = crate::tap::read_frame(self.tap.as_fd(), &mut buf) {
                let frame = EthernetFrame::new_checked(&buf[..n]).unwrap();
                if frame.ethertype() != EthernetProtocol::Ipv4 {
                    continue;
                }
                let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
                match ip.next_header() {
                    IpProtocol::Udp => {
                        let d = UdpPacket::new_checked(ip.payload()).unwrap();
                        udp.push((d.dst_port(), d.payload().to_vec()));
                    }
                    IpProtocol::Icmp => {
                        icmp.push(Icmpv4Packet::new_checked(ip.payload()).unwrap().msg_code())
                    }
                    _ => {}
                }
            }
            (udp, icmp)
        }
    }

    fn echo_server() -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Answer one datagram; the host port it came from.
    fn echo_one(server: &UdpSocket) -> u16 {
        let mut buf = [0u8; 2048];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        server.send_to(&buf[..n], from).unwrap();
        from.port()
    }

    #[test]
    fn a_full_table_of_conversations_refuses_new_flows_until_one_is_quiet() {
        let mut guest = Guest::new(4);
        let echo = echo_server();
        let port = echo.local_addr().unwrap().port();
        for sport in 1000..1004 {
            guest.send(sport, port, b"hi");
            echo_one(&echo);
            let (udp, _) = guest.received();
            assert_eq!(udp, vec![(sport, b"hi".to_vec())]);
        }
        assert_eq!(guest.stack.table_sizes().udp_flows, 4);
        // A fifth flow would break a conversation: refused with ICMP code 13.
        guest.send(2000, port, b"new");
        let (udp, icmp) = guest.received();
        assert!(udp.is_empty());
        assert_eq!(icmp, vec![13]);
        assert_eq!(guest.stack.table_sizes().udp_flows, 4);
        assert_eq!(guest.stack.udp().stats.refused_full, 1);
        // The flow table has the four entries, each with its datagram each way, and the
        // refusal with why.
        let table = guest.stack.flow_table();
        let live: Vec<_> = table.flows.iter().filter(|r| r.why.is_none()).collect();
        assert_eq!(live.len(), 4, "{table:?}");
        assert!(
            live.iter()
                .all(|r| r.to_remote.packets == 1 && r.to_guest.bytes == 2)
        );
        let refused = table.flows.iter().find(|r| r.why.is_some()).unwrap();
        assert!(refused.guest.ends_with(":2000"), "{refused:?}");
        assert!(refused.why.as_deref().unwrap().contains("--max-udp-flows"));
        assert_eq!(guest.stack.counters().refusals.over_bound, 1);
        // The conversations go on with their host sockets.
        guest.send(1000, port, b"again");
        echo_one(&echo);
        assert_eq!(guest.received().0, vec![(1000, b"again".to_vec())]);
        // Once the others have been quiet long enough, the least recently used makes room.
        guest.stack.advance_clock(super::CONVERSATION_GRACE.into());
        guest.send(2000, port, b"new");
        echo_one(&echo);
        assert_eq!(guest.received().0, vec![(2000, b"new".to_vec())]);
        assert_eq!(guest.stack.table_sizes().udp_flows, 4);
        assert_eq!(guest.stack.udp().stats.evicted, 1);
    }

    #[test]
    fn one_way_flows_make_room_among_themselves_and_conversations_keep_their_socket() {
        let mut guest = Guest::new(4);
        let echo = echo_server();
        let port = echo.local_addr().unwrap().port();
        let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let sink_port = sink.local_addr().unwrap().port();
        let mut host_ports = Vec::new();
        for sport in [1000, 1001] {
            guest.send(sport, port, b"hi");
            host_ports.push(echo_one(&echo));
            guest.received();
        }
        // A flood of one-way flows, ten times the table.
        for sport in 3000..3040 {
            guest.send(sport, sink_port, b"flood");
        }
        let (_, icmp) = guest.received();
        assert!(
            icmp.is_empty(),
            "one-way flows replace each other: {icmp:?}"
        );
        assert_eq!(guest.stack.table_sizes().udp_flows, 4);
        assert_eq!(guest.stack.udp().stats.evicted, 38);
        // The conversations still use the same host sockets (same source ports).
        for (sport, host_port) in [1000, 1001].into_iter().zip(host_ports) {
            guest.send(sport, port, b"still");
            assert_eq!(echo_one(&echo), host_port);
            assert_eq!(guest.received().0, vec![(sport, b"still".to_vec())]);
        }
    }
}
