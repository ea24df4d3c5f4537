//! Host port forwards: listening sockets on the host whose connections and datagrams enter the
//! guest through the stack itself, the way slirp4netns's `add_hostfwd` works.
//!
//! This is the inbound path of `usernet attach` and the slirp4netns drop-in, where usernet
//! does not own a process inside the namespace that could dial for it, and of `usernet run
//! --port-driver stack` (rootlesskit's slirp4netns port driver; `crate::stack_ports` turns port
//! specs into forwards). `usernet run`'s default is the builtin port driver
//! (`crate::portdriver`), which dials inside and so also reaches servers on the namespace's
//! loopback, at the cost of a second kernel TCP connection. A connection accepted here
//! becomes a TCP flow whose smoltcp socket connects to the guest; a datagram becomes a UDP NAT
//! entry bound to its client.
//!
//! The guest sees the client's real address, unless that address means nothing on the guest's
//! side of the gateway (loopback, unspecified, or inside the virtual subnet): then the
//! connection comes from the gateway, as in slirp. To frame anything for the guest we need its
//! MAC address; a connection that arrives before the guest ever spoke waits (bounded, for a
//! few seconds) while the [neighbour table](super::neigh) asks for it.
//!
//! All of inbound forwarding is here: the forward table ([`HostForwards`]: listeners, ids,
//! what waits for a MAC address) and the stack's side of it (the `impl Stack` block: adding
//! and removing forwards, accepting, waiting, starting the flows). The event loop only calls
//! in when a listener is ready or a wait is due.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration as StdDuration;

use std::os::fd::AsRawFd;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use smoltcp::time::{Duration, Instant};

use super::token::Kind;
use super::{Ctx, Stack};
use crate::net::VirtualNetwork;
use crate::slab::{Id, Slab};

/// Most forwards at once.
pub const MAX_FORWARDS: usize = 1024;
/// Most connections and datagrams waiting for the guest's MAC address.
pub const MAX_WAITING: usize = 256;
/// Bytes of datagrams that may wait for the guest's MAC address.
const MAX_WAITING_BYTES: usize = 256 * 1024;
/// How long a connection waits for the guest to answer ARP before it is reset.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections accepted (or datagrams read) per listener per pass before others get a turn.
pub const ACCEPT_BUDGET: usize = 64;
/// Backlog of TCP listeners.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One forward: host address and port, to guest address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSpec {
    pub proto: Proto,
    pub host: SocketAddrV4,
    pub guest: SocketAddrV4,
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// [`MAX_FORWARDS`] are in place.
    #[error("at most {MAX_FORWARDS} forwards may exist")]
    TooMany,
    /// The host socket could not be bound (in use, privileged port...).
    #[error("{0}")]
    Bind(io::Error),
}

pub enum Listener {
    Tcp(TcpListener),
    Udp(Rc<UdpSocket>),
}

pub struct Forward {
    pub id: i64,
    pub spec: ForwardSpec,
    pub listener: Listener,
}

/// Something that arrived for the guest before we knew its MAC address.
pub enum Waiting {
    Connection {
        stream: TcpStream,
        client: SocketAddr,
        guest: SocketAddrV4,
        since: Instant,
    },
    Datagram {
        forward: Id,
        client: SocketAddr,
        guest: SocketAddrV4,
        payload: Vec<u8>,
        since: Instant,
    },
}

impl Waiting {
    pub fn guest(&self) -> SocketAddrV4 {
        match self {
            Waiting::Connection { guest, .. } | Waiting::Datagram { guest, .. } => *guest,
        }
    }

    fn since(&self) -> Instant {
        match self {
            Waiting::Connection { since, .. } | Waiting::Datagram { since, .. } => *since,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Waiting::Connection { .. } => 0,
            Waiting::Datagram { payload, .. } => payload.len(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardStats {
    pub accepted: u64,
    pub datagrams: u64,
    /// Connections reset or datagrams dropped: the guest's MAC never came, or too much waited.
    pub unresolved: u64,
    /// Connections refused because the flow table is full.
    pub refused: u64,
}

#[derive(Default)]
pub struct HostForwards {
    forwards: Slab<Forward>,
    /// Forwards by id, in the order they were added (ids only grow).
    by_id: BTreeMap<i64, Id>,
    next_id: i64,
    /// Listeners with connections or datagrams left to take (readiness is edge-triggered).
    ready: Vec<Id>,
    waiting: Vec<Waiting>,
    waiting_bytes: usize,
    next_check: Option<Instant>,
    pub stats: ForwardStats,
}

impl HostForwards {
    /// Listen on the host for `spec`; returns its id (1, 2, ... never reused).
    pub fn add(&mut self, spec: ForwardSpec, registry: &Registry) -> Result<i64, AddError> {
        if self.forwards.len() >= MAX_FORWARDS {
            return Err(AddError::TooMany);
        }
        let listener = bind(&spec).map_err(AddError::Bind)?;
        let id = self.next_id.max(1);
        let slot = self.forwards.insert(Forward { id, spec, listener });
        let token = Kind::Forward.token(slot);
        let registered = match self.forwards.get_mut(slot).map(|f| &mut f.listener) {
            Some(Listener::Tcp(l)) => registry.register(l, token, Interest::READABLE),
            Some(Listener::Udp(u)) => {
                registry.register(&mut SourceFd(&u.as_raw_fd()), token, Interest::READABLE)
            }
            None => Ok(()),
        };
        if let Err(e) = registered {
            self.forwards.remove(slot);
            return Err(AddError::Bind(e));
        }
        self.next_id = id + 1;
        self.by_id.insert(id, slot);
        Ok(id)
    }

    /// Stop listening for forward `id`; returns its slot (to forget its UDP clients) and spec.
    /// Connections already made keep going.
    pub fn remove(&mut self, id: i64, registry: &Registry) -> Option<(Id, ForwardSpec)> {
        let slot = self.by_id.remove(&id)?;
        let mut f = self.forwards.remove(slot)?;
        let _ = match &mut f.listener {
            Listener::Tcp(l) => registry.deregister(l),
            Listener::Udp(u) => registry.deregister(&mut SourceFd(&u.as_raw_fd())),
        };
        self.waiting.retain(|w| match w {
            Waiting::Datagram { forward, .. } => *forward != slot,
            Waiting::Connection { .. } => true,
        });
        self.waiting_bytes = self.waiting.iter().map(Waiting::bytes).sum();
        Some((slot, f.spec))
    }

    /// Every forward, in the order they were added.
    pub fn list(&self) -> impl Iterator<Item = (i64, ForwardSpec)> + '_ {
        self.by_id
            .iter()
            .filter_map(|(id, slot)| Some((*id, self.forwards.get(*slot)?.spec)))
    }

    pub fn len(&self) -> usize {
        self.forwards.len()
    }

    /// Connections and datagrams waiting for the guest's MAC address.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
    }

    pub fn get(&self, slot: Id) -> Option<&Forward> {
        self.forwards.get(slot)
    }

    /// A listener became readable.
    pub fn on_event(&mut self, slot: Id) {
        if self.forwards.get(slot).is_some() && !self.ready.contains(&slot) {
            self.ready.push(slot);
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn take_ready(&mut self) -> Vec<Id> {
        std::mem::take(&mut self.ready)
    }

    /// Service `slot` again on the next pass.
    pub fn requeue(&mut self, slot: Id) {
        self.on_event(slot);
    }

    /// Hold `w` until the guest's MAC is known. Returns it back when too much is waiting.
    pub fn wait(&mut self, w: Waiting) -> Result<(), Waiting> {
        if self.waiting.len() >= MAX_WAITING || self.waiting_bytes + w.bytes() > MAX_WAITING_BYTES {
            return Err(w);
        }
        self.waiting_bytes += w.bytes();
        if self.waiting.is_empty() {
            self.next_check = Some(w.since() + super::neigh::SOLICIT_INTERVAL);
        }
        self.waiting.push(w);
        Ok(())
    }

    /// Take what waits for `ip`.
    pub fn take_waiting_for(&mut self, ip: Ipv4Addr) -> Vec<Waiting> {
        let (found, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| *w.guest().ip() == ip);
        self.waiting = rest;
        self.waiting_bytes = self.waiting.iter().map(Waiting::bytes).sum();
        found
    }

    /// Take what has waited too long.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Waiting> {
        let (expired, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| now >= w.since() + RESOLVE_TIMEOUT);
        self.waiting = rest;
        self.waiting_bytes = self.waiting.iter().map(Waiting::bytes).sum();
        expired
    }

    /// Guest addresses something waits for.
    pub fn waiting_addresses(&self) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self.waiting.iter().map(|w| *w.guest().ip()).collect();
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    /// When waiting work next needs attention: another ARP request, or expiry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_check.filter(|_| !self.waiting.is_empty())
    }

    /// Note that waiting work was just looked at; the next look is due in a while.
    pub fn checked(&mut self, now: Instant) {
        self.next_check = (!self.waiting.is_empty()).then(|| now + super::neigh::SOLICIT_INTERVAL);
    }

    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// The stack's side of forwarding: taking connections and datagrams from the listeners,
/// holding them until the guest's MAC address is known, and handing them to the TCP flows and
/// the UDP NAT as flows into the guest.
impl Stack {
    /// Forward a host port into the guest (slirp4netns's `add_hostfwd`); returns its id.
    pub fn add_forward(&mut self, spec: ForwardSpec) -> Result<i64, AddError> {
        let id = self.forwards.add(spec, self.poll.registry())?;
        // Learn the guest's MAC address now rather than when the first client arrives.
        if self.neighbors.lookup(*spec.guest.ip()).is_none() {
            let now = self.now();
            self.neighbors
                .solicit(*spec.guest.ip(), &mut self.tx, &self.policy.net, now);
        }
        Ok(id)
    }

    /// Stop forwarding `id`; false if there is no such forward.
    pub fn remove_forward(&mut self, id: i64) -> bool {
        let Some((slot, _)) = self.forwards.remove(id, self.poll.registry()) else {
            return false;
        };
        let now = self.now();
        self.udp.forget_forward(slot, &mut ctx!(self, now));
        true
    }

    /// The forwards in place, in the order they were added.
    pub fn forwards(&self) -> Vec<(i64, ForwardSpec)> {
        self.forwards.list().collect()
    }

    /// Take connections and datagrams from forwarded host ports, a budget per listener.
    pub(super) fn service_forwards(&mut self, now: Instant) {
        let mut buf = std::mem::take(&mut self.forward_buf);
        for slot in self.forwards.take_ready() {
            let Some(forward) = self.forwards.get(slot) else {
                continue;
            };
            let guest = forward.spec.guest;
            let mut more = true;
            match &forward.listener {
                Listener::Tcp(listener) => {
                    let mut accepted = Vec::new();
                    for _ in 0..ACCEPT_BUDGET {
                        match listener.accept() {
                            Ok(conn) => accepted.push(conn),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                if e.kind() != io::ErrorKind::WouldBlock {
                                    log::debug!("accept on forward {}: {e}", forward.id);
                                }
                                more = false;
                                break;
                            }
                        }
                    }
                    for (stream, client) in accepted {
                        self.forwards.stats.accepted += 1;
                        self.inbound_connection(stream, client, guest, now);
                    }
                }
                Listener::Udp(socket) => {
                    let socket = Rc::clone(socket);
                    for _ in 0..ACCEPT_BUDGET {
                        match socket.recv_from(&mut buf[..]) {
                            Ok((n, client)) => {
                                self.forwards.stats.datagrams += 1;
                                self.inbound_datagram(slot, &socket, client, guest, &buf[..n], now);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => {
                                more = false;
                                break;
                            }
                        }
                    }
                }
            }
            if more {
                self.forwards.requeue(slot);
            }
        }
        self.forward_buf = buf;
    }

    /// A client of a forwarded TCP port: start its flow into the guest, or wait for the
    /// guest's MAC address.
    fn inbound_connection(
        &mut self,
        stream: mio::net::TcpStream,
        client: SocketAddr,
        guest: SocketAddrV4,
        now: Instant,
    ) {
        let Some(mac) = self.neighbors.lookup(*guest.ip()) else {
            self.neighbors
                .solicit(*guest.ip(), &mut self.tx, &self.policy.net, now);
            let waiting = Waiting::Connection {
                stream,
                client,
                guest,
                since: now,
            };
            if let Err(Waiting::Connection { stream, .. }) = self.forwards.wait(waiting) {
                self.forwards.stats.unresolved += 1;
                reset(stream);
            }
            return;
        };
        let source = SocketAddrV4::new(virtual_source(client, &self.policy.net), client.port());
        if let Err((stream, why)) =
            self.tcp
                .open_inbound(stream, guest, source, mac, &mut ctx!(self, now))
        {
            self.forwards.stats.refused += 1;
            log::debug!("forwarded connection from {client} to {guest} refused: {why}");
            reset(stream);
        }
    }

    fn inbound_datagram(
        &mut self,
        slot: Id,
        socket: &Rc<mio::net::UdpSocket>,
        client: SocketAddr,
        guest: SocketAddrV4,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(mac) = self.neighbors.lookup(*guest.ip()) else {
            self.neighbors
                .solicit(*guest.ip(), &mut self.tx, &self.policy.net, now);
            let waiting = Waiting::Datagram {
                forward: slot,
                client,
                guest,
                payload: payload.to_vec(),
                since: now,
            };
            if self.forwards.wait(waiting).is_err() {
                self.forwards.stats.unresolved += 1;
            }
            return;
        };
        self.udp.on_forwarded_datagram(
            slot,
            socket,
            client,
            guest,
            mac,
            payload,
            &mut ctx!(self, now),
        );
    }

    /// Release what waited for a guest address that is now known.
    pub(super) fn release_waiting(&mut self, ip: Ipv4Addr, now: Instant) {
        for w in self.forwards.take_waiting_for(ip) {
            self.resume(w, now);
        }
    }

    fn resume(&mut self, w: Waiting, now: Instant) {
        match w {
            Waiting::Connection {
                stream,
                client,
                guest,
                ..
            } => self.inbound_connection(stream, client, guest, now),
            Waiting::Datagram {
                forward,
                client,
                guest,
                payload,
                ..
            } => {
                let socket = match self.forwards.get(forward).map(|f| &f.listener) {
                    Some(Listener::Udp(s)) => Rc::clone(s),
                    _ => return,
                };
                self.inbound_datagram(forward, &socket, client, guest, &payload, now);
            }
        }
    }

    /// Give up on what waited too long for the guest's MAC; ask again for the rest.
    pub(super) fn check_waiting(&mut self, now: Instant) {
        for w in self.forwards.take_expired(now) {
            self.forwards.stats.unresolved += 1;
            if let Waiting::Connection { stream, guest, .. } = w {
                log::debug!(
                    "the guest {} never answered ARP: resetting a forwarded connection",
                    guest.ip()
                );
                reset(stream);
            }
        }
        for ip in self.forwards.waiting_addresses() {
            self.neighbors
                .solicit(ip, &mut self.tx, &self.policy.net, now);
        }
        self.forwards.checked(now);
    }
}

fn bind(spec: &ForwardSpec) -> io::Result<Listener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::V4(spec.host);
    Ok(match spec.proto {
        Proto::Tcp => {
            let s = Socket::new(
                Domain::IPV4,
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )?;
            // A forward removed and added again must not wait for TIME-WAIT to pass.
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(LISTEN_BACKLOG)?;
            Listener::Tcp(TcpListener::from_std(s.into()))
        }
        Proto::Udp => {
            let s = Socket::new(
                Domain::IPV4,
                Type::DGRAM.nonblocking().cloexec(),
                Some(Protocol::UDP),
            )?;
            s.bind(&addr.into())?;
            Listener::Udp(Rc::new(UdpSocket::from_std(s.into())))
        }
    })
}

/// The address a forwarded client appears from inside: its own, unless that would mean
/// something else (or nothing) on the guest's side of the gateway.
pub fn virtual_source(client: SocketAddr, net: &VirtualNetwork) -> Ipv4Addr {
    let ip = match client.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    match ip {
        Some(ip)
            if !ip.is_loopback()
                && !ip.is_unspecified()
                && !ip.is_broadcast()
                && !ip.is_multicast()
                && !net.contains(ip) =>
        {
            ip
        }
        _ => net.gateway,
    }
}

/// A source port for a forwarded client: `hint` (its own port) unless `taken` says so, else a
/// nearby free one; None if none of the candidates is free.
pub fn pick_source_port(hint: u16, taken: impl Fn(u16) -> bool) -> Option<u16> {
    const TRIES: u16 = 64;
    let start = hint.max(1024);
    (0..TRIES)
        .map(|i| {
            let p = u32::from(start) + u32::from(i) * 251;
            // Stay within 1024..=65535.
            (1024 + (p - 1024) % (65536 - 1024)) as u16
        })
        .find(|&p| !taken(p))
}

/// Close `stream` with a reset, so its client sees the connection refused rather than a hang.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(StdDuration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_appear_from_their_own_address_unless_it_means_something_inside() {
        let net = VirtualNetwork::default();
        let c = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert_eq!(virtual_source(c("127.0.0.1:5"), &net), net.gateway);
        assert_eq!(virtual_source(c("[::1]:5"), &net), net.gateway);
        assert_eq!(virtual_source(c("10.0.2.100:5"), &net), net.gateway);
        assert_eq!(
            virtual_source(c("198.18.0.7:5"), &net),
            Ipv4Addr::new(198, 18, 0, 7)
        );
        assert_eq!(
            virtual_source(c("[::ffff:198.18.0.7]:5"), &net),
            Ipv4Addr::new(198, 18, 0, 7)
        );
    }

    #[test]
    fn source_ports_avoid_taken_ones() {
        assert_eq!(pick_source_port(40000, |_| false), Some(40000));
        let p = pick_source_port(40000, |p| p == 40000).unwrap();
        assert_ne!(p, 40000);
        assert!(p >= 1024);
        assert_eq!(pick_source_port(80, |_| false), Some(1024));
        assert_eq!(pick_source_port(65535, |p| p == 65535), Some(1274));
        assert_eq!(pick_source_port(40000, |_| true), None);
    }

    #[test]
    fn forwards_get_growing_ids_and_free_their_port() {
        let poll = mio::Poll::new().unwrap();
        let mut f = HostForwards::default();
        let spec = |port| ForwardSpec {
            proto: Proto::Tcp,
            host: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            guest: SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100), 80),
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(f.add(spec(port), poll.registry()).unwrap(), 1);
        assert!(matches!(
            f.add(spec(port), poll.registry()),
            Err(AddError::Bind(_))
        ));
        let udp = ForwardSpec {
            proto: Proto::Udp,
            ..spec(port)
        };
        assert_eq!(f.add(udp, poll.registry()).unwrap(), 2);
        assert_eq!(
            f.list().map(|(id, s)| (id, s.proto)).collect::<Vec<_>>(),
            vec![(1, Proto::Tcp), (2, Proto::Udp)]
        );
        assert!(f.remove(1, poll.registry()).is_some());
        assert!(f.remove(1, poll.registry()).is_none());
        assert_eq!(f.add(spec(port), poll.registry()).unwrap(), 3);
    }
}
