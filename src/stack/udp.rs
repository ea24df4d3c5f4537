//! UDP: a NAT table of connected host sockets, one per (guest address:port, destination
//! address:port).
//!
//! UDP never touches smoltcp. A guest datagram is sent on the entry's host socket as-is; what
//! comes back on that socket goes to the guest from the original destination (so a reply via
//! the gateway comes from 10.0.2.2, not 127.0.0.1). ICMP errors the host receives for the
//! socket (`IP_RECVERR`) reach the guest as ICMP errors about its own datagram.
//!
//! Entries live until they have been idle for the timeout (`--udp-timeout`), and the table is
//! bounded: when it is full, the least recently used entry makes room. Idleness is tracked in
//! an ordered set keyed by a coarse last-use time, refreshed at most once a second per entry,
//! so a busy flow does not pay an ordered-set update per datagram.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::rc::Rc;

use mio::Interest;
use mio::net::UdpSocket;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpProtocol};

use super::emit::{self, UDP_LEN};
use super::errqueue;
use super::frame::GuestUdp;
use super::hostfwd;
use super::policy::unreachable_reason;
use super::slab::{Id, Slab};
use super::{Ctx, RECV_BUF};

/// Token kind of NAT entries' host sockets.
pub const TOKEN_KIND: u8 = 2;

/// How long an idle entry is kept, unless `--udp-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Most entries at once, unless configured otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Datagrams read from one host socket per readiness event before others get a turn.
const RECV_BUDGET: usize = 64;
/// Granularity of the idle bookkeeping.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(1);

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
    /// Datagrams the host socket would not take (buffer full) or the guest link could not carry.
    pub dropped: u64,
    pub icmp_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NatKey {
    guest: SocketAddrV4,
    /// The destination as the guest addressed it (10.0.2.2, not 127.0.0.1).
    remote: SocketAddrV4,
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
    /// Entries whose socket reported readable and has not been drained yet.
    ready: Vec<Id>,
    pub stats: UdpStats,
}

impl UdpNat {
    pub fn new(config: UdpConfig) -> Self {
        UdpNat {
            config,
            by_key: HashMap::new(),
            by_client: HashMap::new(),
            entries: Slab::default(),
            idle: BTreeSet::new(),
            ready: Vec::new(),
            stats: UdpStats::default(),
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
        let id = match self.by_key.get(&key) {
            Some(&id) => id,
            None => match self.create(key, d.src_mac, target, cx) {
                Ok(id) => id,
                Err(e) => {
                    self.stats.dropped += 1;
                    log::debug!("udp {} -> {target}: no host socket: {e}", d.src);
                    if let Some(reason) = unreachable_reason(&e) {
                        let net = cx.policy.net;
                        emit::icmp_unreachable(
                            cx.tap,
                            &net,
                            d.src_mac,
                            net.gateway,
                            reason,
                            d.ip_packet,
                        );
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
        for attempt in 0..2 {
            let sent = match &entry.host {
                HostEnd::Connected(socket) => socket.send(d.payload),
                HostEnd::Forwarded { socket, client, .. } => socket.send_to(d.payload, *client),
            };
            match sent {
                Ok(_) => {
                    self.stats.to_host += 1;
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
        guest: SocketAddrV4,
        guest_mac: EthernetAddress,
        payload: &[u8],
        cx: &mut Ctx<'_>,
    ) {
        let id = match self.by_client.get(&(forward, client)) {
            Some(&id) => id,
            None => {
                if self.entries.len() >= self.config.max_entries {
                    self.evict_oldest(cx);
                }
                let net = cx.policy.net;
                let source = hostfwd::virtual_source(client, &net);
                let taken = |port| {
                    self.by_key.contains_key(&NatKey {
                        guest,
                        remote: SocketAddrV4::new(source, port),
                    })
                };
                let Some(port) = hostfwd::pick_source_port(client.port(), taken) else {
                    self.stats.dropped += 1;
                    return;
                };
                let key = NatKey {
                    guest,
                    remote: SocketAddrV4::new(source, port),
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
                });
                self.by_key.insert(key, id);
                self.by_client.insert((forward, client), id);
                self.idle.insert((cx.now, id));
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
        entry.emit_to_guest(cx, payload);
        self.refile(id, cx.now);
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
        if self.entries.len() >= self.config.max_entries {
            self.evict_oldest(cx);
        }
        let socket = connect_udp(target, cx.policy.bind_for(&target))?;
        let id = self.entries.insert(Entry {
            key,
            guest_mac,
            host: HostEnd::Connected(socket),
            last_used: cx.now,
            idle_key: cx.now,
            queued: false,
        });
        let entry = self.entries.get_mut(id).expect("just inserted");
        let registered = match &mut entry.host {
            HostEnd::Connected(socket) => {
                cx.registry
                    .register(socket, id.token(TOKEN_KIND), Interest::READABLE)
            }
            HostEnd::Forwarded { .. } => Ok(()),
        };
        if let Err(e) = registered {
            self.entries.remove(id);
            return Err(e);
        }
        self.by_key.insert(key, id);
        self.idle.insert((cx.now, id));
        self.stats.entries_created += 1;
        Ok(id)
    }

    /// An entry's host socket is readable (datagrams or errors).
    pub fn on_host_event(&mut self, id: Id) {
        if let Some(entry) = self.entries.get_mut(id)
            && !entry.queued
        {
            entry.queued = true;
            self.ready.push(id);
        }
    }

    /// Whether some socket still has datagrams to read.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Relay what arrived on readable host sockets, a bounded number of datagrams each; a
    /// socket with more left stays ready for the next pass (readiness is edge-triggered).
    pub fn service_ready(&mut self, cx: &mut Ctx<'_>, buf: &mut [u8; RECV_BUF]) {
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
    fn receive(&mut self, id: Id, cx: &mut Ctx<'_>, buf: &mut [u8; RECV_BUF]) -> bool {
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        let HostEnd::Connected(socket) = &entry.host else {
            return false;
        };
        let max_payload = cx.link.mtu.saturating_sub(emit::IPV4_LEN + UDP_LEN);
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
        // Errors can be queued without a failed recv (e.g. EPOLLERR alone).
        drain_errors(entry, cx, &mut self.stats);
        if got_any {
            entry.last_used = cx.now;
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

    fn evict_oldest(&mut self, cx: &mut Ctx<'_>) {
        if let Some(&(_, id)) = self.idle.first() {
            self.stats.evicted += 1;
            self.remove(id, cx);
        }
    }

    fn remove(&mut self, id: Id, cx: &mut Ctx<'_>) {
        if let Some(mut entry) = self.entries.remove(id) {
            self.idle.remove(&(entry.idle_key, id));
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
    let mut payload = [0u8; emit::ICMP_QUOTE_MAX];
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
            *guest.ip(),
            *remote.ip(),
            IpProtocol::Udp,
            usize::from(udp_len),
            &l4,
        );
        // "Port unreachable" comes from the destination itself; other errors from the router
        // that reported them, unless that is a host-side address the guest never saw.
        let from = match err.offender {
            Some(o) if icmp_type != 3 || code != 3 => {
                if o.is_loopback() || o.is_unspecified() {
                    *remote.ip()
                } else {
                    o
                }
            }
            _ => *remote.ip(),
        };
        let net = cx.policy.net;
        emit::icmp_error(
            cx.tap,
            &net,
            entry.guest_mac,
            from,
            *guest.ip(),
            icmp_type,
            code,
            &quote,
        );
    }
}

/// A non-blocking UDP socket connected to `target`, bound to `bind` if given.
pub fn connect_udp(target: SocketAddr, bind: Option<SocketAddr>) -> io::Result<UdpSocket> {
    let socket = connect_dgram(target, bind, socket2::Protocol::UDP)?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// A non-blocking datagram socket of `protocol` (UDP, or ICMP for ping sockets) connected to
/// `target`, bound to `bind` if given, with ICMP errors queued (`IP_RECVERR`) for IPv4.
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
    if target.is_ipv4()
        && let Err(e) = errqueue::enable(socket.as_fd())
    {
        log::debug!("IP_RECVERR: {e}");
    }
    Ok(socket)
}
