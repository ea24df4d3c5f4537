//! Host port forwards: listening sockets on the host whose connections and datagrams enter the
//! guest through the stack itself, the way slirp4netns's `add_hostfwd` works.
//!
//! This is the inbound path of `usernet attach` and the slirp4netns drop-in, where usernet
//! does not own a process inside the namespace that could dial for it (`usernet run` uses the
//! faster builtin port driver instead, see `crate::portdriver`). A connection accepted here
//! becomes a TCP flow whose smoltcp socket connects to the guest; a datagram becomes a UDP NAT
//! entry bound to its client.
//!
//! The guest sees the client's real address, unless that address means nothing on the guest's
//! side of the gateway (loopback, unspecified, or inside the virtual subnet): then the
//! connection comes from the gateway, as in slirp. To frame anything for the guest we need its
//! MAC address; a connection that arrives before the guest ever spoke waits (bounded, for a
//! few seconds) while the [neighbour table](super::neigh) asks for it.

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

use crate::net::VirtualNetwork;
use crate::slab::{Id, Slab};

/// Token kind of forward listeners.
pub const TOKEN_KIND: u8 = 5;
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

#[derive(Debug)]
pub enum AddError {
    /// [`MAX_FORWARDS`] are in place.
    TooMany,
    /// The host socket could not be bound (in use, privileged port...).
    Bind(io::Error),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::TooMany => write!(f, "at most {MAX_FORWARDS} forwards may exist"),
            AddError::Bind(e) => write!(f, "{e}"),
        }
    }
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
        let token = slot.token(TOKEN_KIND);
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
