//! The parent end of the builtin port driver: the host-side listeners of published ports,
//! and the relays that join each host connection to a socket the child opened inside.
//!
//! # A connection's life
//!
//! 1. [`Forwarder::accept`] takes a connection on a published TCP port and asks the child
//!    (a new `.bp.sock` connection, one `connect` request with the client's address);
//! 2. the child's answer arrives: a connected socket, or an error. On error the client gets a
//!    reset at once and the child's reason is logged (once per port as a warning, then at
//!    debug level), where rootlesskit would lose it;
//! 3. the two sockets are joined by a [`Relay`] (`splice()` through pipes), until both
//!    directions have ended or one side fails, which resets the other.
//!
//! UDP ports keep one socket from the child per client address: datagrams are relayed both
//! ways, and a client idle for the UDP timeout is forgotten. Datagrams that arrive while the
//! child is still answering wait in a short queue.
//!
//! Everything here runs on the control thread (see `crate::control`), beside the REST API.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UdpSocket, UnixStream};
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use socket2::{Domain, SockAddr, Socket, Type};

use super::msg::{self, FD_PAYLOAD, Reply, Request, TYPE_CONNECT, TYPE_INIT};
use super::splice::{Relay, RelayProgress, RelayState};
use crate::fdpass;
use crate::observe::report::{FlowRow, FlowState, Protocol, Traffic};
use crate::ports::{Family, PortError, PortManager, PortSpec, PortStatus, Transport};
use crate::slab::{Id, Slab};

/// Every kind of the forwarder's sockets on the control thread's poller, in one list (the
/// control thread dispatches on them; the REST API's connections, the poller's only other
/// kind, are [`FIRST_FREE_KIND`] and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A published port's listening socket (TCP) or socket (UDP).
    Listener = 1,
    /// An accepted connection from a host client.
    TcpClient = 2,
    /// The socket the child dialled inside, relayed to a [`Kind::TcpClient`].
    TcpBackend = 3,
    /// A `.bp.sock` request for a TCP connection, waiting for its answer.
    TcpRequest = 4,
    /// The socket inside for one UDP client.
    UdpBackend = 5,
    /// A `.bp.sock` request for a UDP client, waiting for its answer.
    UdpRequest = 6,
}

/// The first token kind the forwarder does not use.
pub const FIRST_FREE_KIND: u8 = 7;

impl Kind {
    /// The token of entry `id` of this kind.
    pub fn token(self, id: Id) -> mio::Token {
        id.token(self as u8)
    }

    /// The forwarder's kind written in a token, if it is one.
    pub fn from_bits(bits: u8) -> Option<Kind> {
        Some(match bits {
            1 => Kind::Listener,
            2 => Kind::TcpClient,
            3 => Kind::TcpBackend,
            4 => Kind::TcpRequest,
            5 => Kind::UdpBackend,
            6 => Kind::UdpRequest,
            _ => return None,
        })
    }
}

/// Inbound TCP connections at once (relaying or waiting for the child); more are reset.
pub const MAX_TCP_CONNECTIONS: usize = 16384;
/// UDP clients per published port; the least recently used makes room.
pub const MAX_UDP_CLIENTS: usize = 4096;
/// Datagrams held for a UDP client while the child is answering.
const UDP_QUEUE: usize = 64;
/// Largest UDP payload.
const UDP_BUF: usize = 65536;
const ACCEPT_BUDGET: usize = 256;

/// A published port.
struct Port {
    status: PortStatus,
    listener: Listener,
    /// UDP clients of this port by address.
    udp_clients: HashMap<SocketAddr, Id>,
    /// We already warned about the child failing to connect for this port.
    warned: bool,
}

enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

enum TcpConn {
    /// Waiting for the child's answer.
    Requesting {
        port: Id,
        client: mio::net::TcpStream,
        peer: SocketAddr,
        request: UnixStream,
    },
    Relaying {
        relay: Relay,
        /// The host client, and the namespace's address it was relayed to (for the flow
        /// table).
        peer: SocketAddr,
        child: String,
    },
}

struct UdpClient {
    port: Id,
    peer: SocketAddr,
    last_used: Instant,
    state: UdpState,
    /// For the flow table: when it began, and datagrams each way.
    created: Instant,
    to_guest: Traffic,
    to_client: Traffic,
}

enum UdpState {
    Requesting {
        request: UnixStream,
        queue: VecDeque<Vec<u8>>,
    },
    Ready(UdpSocket),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ForwarderStats {
    pub accepted: u64,
    pub refused_by_child: u64,
    pub reset_over_limit: u64,
    pub relays_done: u64,
    pub relays_failed: u64,
    pub udp_clients: u64,
    pub udp_dropped: u64,
}

pub struct Forwarder {
    bp_sock: PathBuf,
    udp_timeout: Duration,
    /// Tell the child who the client is, so it dials from that address.
    source_ip_transparent: bool,
    ports: Slab<Port>,
    by_id: BTreeMap<i64, Id>,
    next_id: i64,
    tcp: Slab<TcpConn>,
    udp: Slab<UdpClient>,
    buf: Box<[u8]>,
    pub stats: ForwarderStats,
}

impl Forwarder {
    /// A forwarder that asks the child at `bp_sock`.
    pub fn new(bp_sock: PathBuf, udp_timeout: Duration) -> Forwarder {
        Forwarder {
            bp_sock,
            udp_timeout,
            source_ip_transparent: true,
            ports: Slab::default(),
            by_id: BTreeMap::new(),
            next_id: 1,
            tcp: Slab::default(),
            udp: Slab::default(),
            buf: vec![0u8; UDP_BUF].into_boxed_slice(),
            stats: ForwarderStats::default(),
        }
    }

    /// Whether the child learns each client's address, to dial from it (rootlesskit's
    /// `--source-ip-transparent`, on unless turned off here).
    pub fn set_source_ip_transparent(&mut self, on: bool) {
        self.source_ip_transparent = on;
    }

    /// The client's address as the request to the child carries it: none when transparency
    /// is off.
    fn source(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.source_ip_transparent.then_some(peer)
    }

    /// rootlesskit's init exchange: send `init`, expect the frame `null`.
    pub fn handshake(&self) -> io::Result<()> {
        let mut conn = std::os::unix::net::UnixStream::connect(&self.bp_sock)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let init = Request {
            kind: TYPE_INIT.into(),
            ..Default::default()
        };
        msg::write_frame(&mut conn, &init)?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let body = msg::read_frame(&mut conn).map_err(|e| io::Error::other(e.to_string()))?;
        if body != b"null" {
            return Err(io::Error::other(format!(
                "unexpected answer to init: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(())
    }

    /// The published ports, by id.
    pub fn list(&self) -> Vec<PortStatus> {
        self.by_id
            .values()
            .filter_map(|id| self.ports.get(*id).map(|p| p.status.clone()))
            .collect()
    }

    /// Publish a port: validate, listen, and start accepting.
    pub fn add(&mut self, spec: PortSpec, registry: &Registry) -> Result<PortStatus, PortError> {
        spec.validate(&self.list())?;
        let listener = listen(&spec)?;
        let status = PortStatus {
            id: self.next_id,
            spec,
        };
        let id = self.ports.insert(Port {
            status: status.clone(),
            listener,
            udp_clients: HashMap::new(),
            warned: false,
        });
        let port = self.ports.get_mut(id).expect("just inserted");
        let registered = match &mut port.listener {
            Listener::Tcp(l) => registry.register(l, Kind::Listener.token(id), Interest::READABLE),
            Listener::Udp(u) => registry.register(u, Kind::Listener.token(id), Interest::READABLE),
        };
        if let Err(e) = registered {
            self.ports.remove(id);
            return Err(PortError(format!("cannot watch the listener: {e}")));
        }
        self.by_id.insert(status.id, id);
        self.next_id += 1;
        log::debug!("published port {}: {}", status.id, status.spec);
        Ok(status)
    }

    /// Stop publishing a port; its connections and UDP clients end with it.
    pub fn remove(&mut self, api_id: i64, registry: &Registry) -> Result<(), PortError> {
        let id = self
            .by_id
            .remove(&api_id)
            .ok_or_else(|| PortError(format!("unknown id: {api_id}")))?;
        let Some(mut port) = self.ports.remove(id) else {
            return Ok(());
        };
        let _ = match &mut port.listener {
            Listener::Tcp(l) => registry.deregister(l),
            Listener::Udp(u) => registry.deregister(u),
        };
        for (_, client) in port.udp_clients {
            self.drop_udp(client, registry);
        }
        let doomed: Vec<Id> = self
            .tcp
            .iter()
            .filter(|(_, c)| matches!(c, TcpConn::Requesting { port, .. } if *port == id))
            .map(|(cid, _)| cid)
            .collect();
        for cid in doomed {
            self.drop_tcp(cid, registry, true);
        }
        log::debug!("removed port {api_id}");
        Ok(())
    }

    /// Readiness on one of the forwarder's sockets.
    pub fn on_event(&mut self, kind: Kind, id: Id, registry: &Registry) {
        match kind {
            Kind::Listener => self.accept(id, registry),
            Kind::TcpRequest => self.on_tcp_answer(id, registry),
            Kind::TcpClient | Kind::TcpBackend => self.pump(id, registry),
            Kind::UdpRequest => self.on_udp_answer(id, registry),
            Kind::UdpBackend => self.on_udp_backend(id),
        }
    }

    /// New connections or datagrams on a published port.
    pub fn accept(&mut self, port_id: Id, registry: &Registry) {
        let Some(port) = self.ports.get(port_id) else {
            return;
        };
        match &port.listener {
            Listener::Tcp(_) => self.accept_tcp(port_id, registry),
            Listener::Udp(_) => self.receive_udp(port_id, registry),
        }
    }

    fn accept_tcp(&mut self, port_id: Id, registry: &Registry) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(Port {
                listener: Listener::Tcp(listener),
                status,
                ..
            }) = self.ports.get(port_id)
            else {
                return;
            };
            let (client, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("accept on port {}: {e}", status.id);
                    return;
                }
            };
            self.stats.accepted += 1;
            if self.tcp.len() >= MAX_TCP_CONNECTIONS {
                self.stats.reset_over_limit += 1;
                reset(client.as_raw_fd());
                continue;
            }
            let peer = unmap(peer);
            let request = connect_request(&status.spec, self.source(peer));
            let request = match self.ask_child(&request) {
                Ok(r) => r,
                Err(e) => {
                    log::warn!(
                        "port {}: cannot reach the namespace's port driver: {e}",
                        status.id
                    );
                    reset(client.as_raw_fd());
                    continue;
                }
            };
            let id = self.tcp.insert(TcpConn::Requesting {
                port: port_id,
                client,
                peer,
                request,
            });
            if let Some(TcpConn::Requesting {
                request, client, ..
            }) = self.tcp.get_mut(id)
            {
                let ok = registry
                    .register(request, Kind::TcpRequest.token(id), Interest::READABLE)
                    .is_ok()
                    && registry
                        .register(
                            client,
                            Kind::TcpClient.token(id),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok();
                if !ok {
                    self.drop_tcp(id, registry, true);
                }
            }
        }
    }

    /// Open a `.bp.sock` connection and send one request on it.
    fn ask_child(&self, request: &Request) -> io::Result<UnixStream> {
        let stream = std::os::unix::net::UnixStream::connect(&self.bp_sock)?;
        let json = serde_json::to_vec(request).map_err(io::Error::other)?;
        (&stream).write_all(&msg::encode(&json))?;
        stream.shutdown(std::net::Shutdown::Write)?;
        stream.set_nonblocking(true)?;
        Ok(UnixStream::from_std(stream))
    }

    fn on_tcp_answer(&mut self, id: Id, registry: &Registry) {
        let Some(TcpConn::Requesting {
            request,
            port,
            peer,
            ..
        }) = self.tcp.get_mut(id)
        else {
            return;
        };
        let (port, peer) = (*port, *peer);
        let answer = match read_answer(request) {
            Answer::Pending => return,
            a => a,
        };
        let Some(TcpConn::Requesting {
            client,
            mut request,
            ..
        }) = self.tcp.remove(id)
        else {
            return;
        };
        let _ = registry.deregister(&mut request);
        let backend = match answer {
            Answer::Socket(fd) => fd,
            Answer::Error(why) => {
                self.stats.refused_by_child += 1;
                self.report_child_error(port, peer, &why);
                let mut client = client;
                let _ = registry.deregister(&mut client);
                reset(client.as_raw_fd());
                return;
            }
            Answer::Pending => unreachable!("handled above"),
        };
        let _ = set_nonblocking(&backend);
        let mut client = client;
        let _ = registry.deregister(&mut client);
        // SAFETY: into_raw_fd hands over sole ownership of the client socket.
        let client_fd = unsafe { OwnedFd::from_raw_fd(mio_into_raw(client)) };
        let relay = match Relay::new(client_fd, backend) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot relay a connection: {e}");
                return;
            }
        };
        let child = self
            .ports
            .get(port)
            .map(|p| child_address(&p.status.spec))
            .unwrap_or_default();
        let new = self.tcp.insert(TcpConn::Relaying { relay, peer, child });
        let Some(TcpConn::Relaying { relay, .. }) = self.tcp.get(new) else {
            return;
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let ok = registry
            .register(
                &mut SourceFd(&relay.client.as_raw_fd()),
                Kind::TcpClient.token(new),
                both,
            )
            .is_ok()
            && registry
                .register(
                    &mut SourceFd(&relay.backend.as_raw_fd()),
                    Kind::TcpBackend.token(new),
                    both,
                )
                .is_ok();
        if !ok {
            self.drop_tcp(new, registry, true);
            return;
        }
        self.pump(new, registry);
    }

    fn report_child_error(&mut self, port: Id, peer: SocketAddr, why: &str) {
        let Some(p) = self.ports.get_mut(port) else {
            return;
        };
        if p.warned {
            log::debug!(
                "port {}: connection from {peer} refused inside: {why}",
                p.status.id
            );
        } else {
            p.warned = true;
            log::warn!(
                "port {} ({}): the namespace refused a connection: {why} (further ones are logged with --debug)",
                p.status.id,
                p.status.spec
            );
        }
    }

    fn pump(&mut self, id: Id, registry: &Registry) {
        let Some(TcpConn::Relaying { relay, .. }) = self.tcp.get_mut(id) else {
            return;
        };
        match relay.pump() {
            Ok(RelayState::Open) => {}
            Ok(RelayState::Done) => {
                self.stats.relays_done += 1;
                self.drop_tcp(id, registry, false);
            }
            Err(e) => {
                log::debug!("relay ended: {e}");
                self.stats.relays_failed += 1;
                self.drop_tcp(id, registry, true);
            }
        }
    }

    /// Close a connection; `abort` resets both sides so each learns the other is gone.
    fn drop_tcp(&mut self, id: Id, registry: &Registry, abort: bool) {
        match self.tcp.remove(id) {
            Some(TcpConn::Requesting {
                mut client,
                mut request,
                ..
            }) => {
                let _ = registry.deregister(&mut request);
                let _ = registry.deregister(&mut client);
                if abort {
                    reset(client.as_raw_fd());
                }
            }
            Some(TcpConn::Relaying { relay, .. }) => {
                let _ = registry.deregister(&mut SourceFd(&relay.client.as_raw_fd()));
                let _ = registry.deregister(&mut SourceFd(&relay.backend.as_raw_fd()));
                if abort {
                    reset(relay.client.as_raw_fd());
                    reset(relay.backend.as_raw_fd());
                }
            }
            None => {}
        }
    }

    fn receive_udp(&mut self, port_id: Id, registry: &Registry) {
        let now = Instant::now();
        for _ in 0..ACCEPT_BUDGET {
            let Some(Port {
                listener: Listener::Udp(socket),
                ..
            }) = self.ports.get(port_id)
            else {
                return;
            };
            let (n, peer) = match socket.recv_from(&mut self.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => continue,
            };
            let peer = unmap(peer);
            let existing = self
                .ports
                .get(port_id)
                .and_then(|p| p.udp_clients.get(&peer).copied());
            let client_id = match existing {
                Some(id) => id,
                None => match self.new_udp_client(port_id, peer, registry) {
                    Some(id) => id,
                    None => {
                        self.stats.udp_dropped += 1;
                        continue;
                    }
                },
            };
            let data = &self.buf[..n];
            let Some(client) = self.udp.get_mut(client_id) else {
                continue;
            };
            client.last_used = now;
            client.to_guest.count(n);
            match &mut client.state {
                UdpState::Ready(backend) => {
                    if backend.send(data).is_err() {
                        self.stats.udp_dropped += 1;
                    }
                }
                UdpState::Requesting { queue, .. } => {
                    if queue.len() < UDP_QUEUE {
                        queue.push_back(data.to_vec());
                    } else {
                        self.stats.udp_dropped += 1;
                    }
                }
            }
        }
    }

    fn new_udp_client(&mut self, port_id: Id, peer: SocketAddr, registry: &Registry) -> Option<Id> {
        let port = self.ports.get(port_id)?;
        if port.udp_clients.len() >= MAX_UDP_CLIENTS {
            let oldest = port
                .udp_clients
                .values()
                .min_by_key(|id| self.udp.get(**id).map(|c| c.last_used))
                .copied()?;
            self.drop_udp(oldest, registry);
        }
        let spec = self.ports.get(port_id)?.status.spec.clone();
        let request = match self.ask_child(&connect_request(&spec, self.source(peer))) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("UDP port: cannot reach the namespace's port driver: {e}");
                return None;
            }
        };
        let id = self.udp.insert(UdpClient {
            port: port_id,
            peer,
            last_used: Instant::now(),
            created: Instant::now(),
            to_guest: Traffic::default(),
            to_client: Traffic::default(),
            state: UdpState::Requesting {
                request,
                queue: VecDeque::new(),
            },
        });
        if let Some(UdpClient {
            state: UdpState::Requesting { request, .. },
            ..
        }) = self.udp.get_mut(id)
            && registry
                .register(request, Kind::UdpRequest.token(id), Interest::READABLE)
                .is_err()
        {
            self.udp.remove(id);
            return None;
        }
        self.stats.udp_clients += 1;
        self.ports.get_mut(port_id)?.udp_clients.insert(peer, id);
        Some(id)
    }

    fn on_udp_answer(&mut self, id: Id, registry: &Registry) {
        let Some(UdpClient {
            state: UdpState::Requesting { request, .. },
            ..
        }) = self.udp.get_mut(id)
        else {
            return;
        };
        let answer = read_answer(request);
        let fd = match answer {
            Answer::Pending => return,
            Answer::Socket(fd) => fd,
            Answer::Error(why) => {
                let (port, peer) = self.udp.get(id).map(|c| (c.port, c.peer)).expect("present");
                self.report_child_error(port, peer, &why);
                self.drop_udp(id, registry);
                return;
            }
        };
        let Some(client) = self.udp.get_mut(id) else {
            return;
        };
        let _ = set_nonblocking(&fd);
        let mut backend = UdpSocket::from_std(std::net::UdpSocket::from(fd));
        if registry
            .register(&mut backend, Kind::UdpBackend.token(id), Interest::READABLE)
            .is_err()
        {
            self.drop_udp(id, registry);
            return;
        }
        let old = std::mem::replace(&mut client.state, UdpState::Ready(backend));
        if let UdpState::Requesting { mut request, queue } = old {
            let _ = registry.deregister(&mut request);
            if let UdpState::Ready(backend) = &client.state {
                for datagram in queue {
                    let _ = backend.send(&datagram);
                }
            }
        }
    }

    fn on_udp_backend(&mut self, id: Id) {
        let Some(client) = self.udp.get_mut(id) else {
            return;
        };
        let UdpState::Ready(backend) = &client.state else {
            return;
        };
        let Some(Port {
            listener: Listener::Udp(listener),
            ..
        }) = self.ports.get(client.port)
        else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            match backend.recv(&mut self.buf) {
                Ok(n) => {
                    client.last_used = Instant::now();
                    client.to_client.count(n);
                    let _ = listener.send_to(&self.buf[..n], client.peer);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Would block, or an ICMP error from inside (nobody listening): done for now.
                Err(_) => return,
            }
        }
    }

    fn drop_udp(&mut self, id: Id, registry: &Registry) {
        let Some(mut client) = self.udp.remove(id) else {
            return;
        };
        if let Some(port) = self.ports.get_mut(client.port) {
            port.udp_clients.remove(&client.peer);
        }
        match &mut client.state {
            UdpState::Requesting { request, .. } => {
                let _ = registry.deregister(request);
            }
            UdpState::Ready(backend) => {
                let _ = registry.deregister(backend);
            }
        }
    }

    /// One row per connection and UDP client of the published ports, for the flow table.
    pub fn connections(&self) -> Vec<FlowRow> {
        let now = Instant::now();
        let ms = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        let mut rows = Vec::new();
        for (_, conn) in self.tcp.iter() {
            // A connection still waiting for the child's answer is a moment old.
            let (state, peer, child, p, started, last) = match conn {
                TcpConn::Requesting { peer, port, .. } => {
                    let child = self.ports.get(*port).map(|p| child_address(&p.status.spec));
                    let p = RelayProgress::default();
                    (
                        FlowState::Connecting,
                        peer,
                        child.unwrap_or_default(),
                        p,
                        now,
                        now,
                    )
                }
                TcpConn::Relaying { relay, peer, child } => {
                    let p = relay.progress();
                    let state = match (p.up_done, p.down_done) {
                        (false, false) => FlowState::Open,
                        (true, true) => FlowState::Closing,
                        _ => FlowState::HalfClosed,
                    };
                    (
                        state,
                        peer,
                        child.clone(),
                        p,
                        relay.started,
                        relay.last_moved,
                    )
                }
            };
            rows.push(FlowRow {
                proto: Protocol::Tcp,
                inbound: true,
                guest: child,
                remote: peer.to_string(),
                state,
                age_ms: ms(started),
                idle_ms: ms(last),
                to_remote: Traffic {
                    bytes: p.down,
                    packets: 0,
                },
                to_guest: Traffic {
                    bytes: p.up,
                    packets: 0,
                },
                buffered_to_remote: p.down_queued,
                buffered_to_guest: p.up_queued,
                why: None,
            });
        }
        for (_, c) in self.udp.iter() {
            let state = match c.state {
                UdpState::Requesting { .. } => FlowState::Connecting,
                UdpState::Ready(_) => FlowState::Open,
            };
            let child = self
                .ports
                .get(c.port)
                .map(|p| child_address(&p.status.spec));
            rows.push(FlowRow {
                proto: Protocol::Udp,
                inbound: true,
                guest: child.unwrap_or_default(),
                remote: c.peer.to_string(),
                state,
                age_ms: ms(c.created),
                idle_ms: ms(c.last_used),
                to_remote: c.to_client,
                to_guest: c.to_guest,
                buffered_to_remote: 0,
                buffered_to_guest: 0,
                why: None,
            });
        }
        rows
    }

    /// Forget UDP clients idle for longer than the timeout.
    pub fn expire(&mut self, registry: &Registry) {
        let now = Instant::now();
        let idle: Vec<Id> = self
            .udp
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_used) >= self.udp_timeout)
            .map(|(id, _)| id)
            .collect();
        for id in idle {
            self.drop_udp(id, registry);
        }
    }

    /// How often [`Forwarder::expire`] should run, if at all.
    pub fn expiry_interval(&self) -> Option<Duration> {
        (!self.udp.is_empty()).then(|| (self.udp_timeout / 4).max(Duration::from_secs(1)))
    }
}

/// The request for one connection or UDP client of `spec`, from `peer`.
/// The address inside the namespace a published port leads to, as the flow table shows it.
fn child_address(spec: &PortSpec) -> String {
    let ip = if spec.child_ip.is_empty() {
        "127.0.0.1"
    } else {
        spec.child_ip.as_str()
    };
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => SocketAddr::from((v6, spec.child_port as u16)).to_string(),
        _ => format!("{ip}:{}", spec.child_port),
    }
}

fn connect_request(spec: &PortSpec, peer: Option<SocketAddr>) -> Request {
    Request {
        kind: TYPE_CONNECT.into(),
        proto: spec.proto.clone(),
        ip: spec.child_ip.clone(),
        port: spec.child_port,
        parent_ip: spec.parent_ip.clone(),
        host_gateway_ip: String::new(),
        source_ip: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        source_port: peer.map_or(0, |p| i64::from(p.port())),
    }
}

enum Answer {
    Pending,
    Socket(OwnedFd),
    Error(String),
}

/// Read the child's answer: a socket with "dummy", or an error frame. The child writes
/// either in one go and then closes, so it is read whole or not at all.
fn read_answer(stream: &UnixStream) -> Answer {
    let mut buf = vec![0u8; msg::MAX_FRAME + 4];
    let mut got = 0;
    loop {
        match fdpass::recv_fd(stream.as_fd(), &mut buf[got..]) {
            Ok((_, Some(fd))) => return Answer::Socket(fd),
            Ok((0, None)) => break,
            Ok((n, None)) => {
                got += n;
                if got >= buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 => return Answer::Pending,
            // Whatever came is all that will come.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Answer::Error(format!("reading the answer: {e}")),
        }
    }
    if got == FD_PAYLOAD.len() && buf[..got] == *FD_PAYLOAD {
        return Answer::Error("the child sent no socket".into());
    }
    match msg::read_frame(&mut &buf[..got]) {
        Ok(body) => match serde_json::from_slice::<Reply>(&body) {
            Ok(r) => Answer::Error(r.error),
            Err(_) => Answer::Error(String::from_utf8_lossy(&body).into_owned()),
        },
        Err(e) => Answer::Error(format!("bad answer: {e}")),
    }
}

/// Listen as rootlesskit (Go's `net.Listen`) would for this spec.
fn listen(spec: &PortSpec) -> Result<Listener, PortError> {
    let port = spec.parent_port as u16;
    let given = spec.parent_addr();
    let wildcard = given.is_none_or(|ip| ip.is_unspecified());
    let (addr, only_v6) = match (spec.family(), given) {
        (Family::V4, None) => (SocketAddr::from(([0, 0, 0, 0], port)), None),
        (Family::V6, None) => (SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), Some(true)),
        (Family::V6, Some(ip)) => (SocketAddr::new(ip, port), Some(true)),
        // "tcp"/"udp" on a wildcard: one dual-stack socket, as Go does.
        (Family::Any, _) if wildcard && ipv6_enabled() => {
            (SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), Some(false))
        }
        (Family::Any, None) => (SocketAddr::from(([0, 0, 0, 0], port)), None),
        (_, Some(ip)) => (SocketAddr::new(ip, port), ip.is_ipv6().then_some(false)),
    };
    let (ty, net) = match spec.transport() {
        Transport::Tcp => (Type::STREAM, "tcp"),
        Transport::Udp => (Type::DGRAM, "udp"),
    };
    let fail = |e: io::Error| listen_error(spec, net, addr, e);
    let socket =
        Socket::new(Domain::for_address(addr), ty.nonblocking().cloexec(), None).map_err(fail)?;
    if let Some(v6only) = only_v6 {
        socket.set_only_v6(v6only).map_err(fail)?;
    }
    if spec.transport() == Transport::Tcp {
        socket.set_reuse_address(true).map_err(fail)?;
    }
    socket.bind(&SockAddr::from(addr)).map_err(fail)?;
    Ok(match spec.transport() {
        Transport::Tcp => {
            socket.listen(4096).map_err(fail)?;
            Listener::Tcp(TcpListener::from_std(socket.into()))
        }
        Transport::Udp => Listener::Udp(UdpSocket::from_std(socket.into())),
    })
}

/// A bind error the way rootlesskit words it, with its advice for privileged ports.
pub(crate) fn listen_error(
    spec: &PortSpec,
    net: &str,
    addr: SocketAddr,
    e: io::Error,
) -> PortError {
    let what = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))
        .desc()
        .to_lowercase();
    let base = format!("listen {net} {addr}: bind: {what}");
    let start = crate::hostinfo::get().unprivileged_port_start;
    PortError(
        if e.kind() == io::ErrorKind::PermissionDenied && spec.parent_port < start {
            format!(
                "cannot expose privileged port {p}, you can add 'net.ipv4.ip_unprivileged_port_start={p}' to /etc/sysctl.conf (currently {start}), or choose a larger port number (>= {start}): {base}",
                p = spec.parent_port
            )
        } else {
            base
        },
    )
}

fn ipv6_enabled() -> bool {
    crate::hostinfo::get().ipv6
}

/// IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d; report them as IPv4.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    crate::tap::set_nonblocking(fd.as_fd())
}

/// Make the next close of `fd` send a reset (SO_LINGER 0).
fn reset(fd: std::os::fd::RawFd) {
    // SAFETY: fd is open for the duration of this call (owned by the caller).
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO));
}

fn mio_into_raw(stream: mio::net::TcpStream) -> std::os::fd::RawFd {
    std::os::fd::IntoRawFd::into_raw_fd(stream)
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("ports", &self.by_id.len())
            .field("tcp", &self.tcp.len())
            .field("udp", &self.udp.len())
            .field("stats", &self.stats)
            .finish()
    }
}
/// The port driver as the APIs see it: its listeners are watched on this thread's poller.
pub struct Ports<'a> {
    pub forwarder: &'a mut Forwarder,
    pub registry: &'a Registry,
}

impl PortManager for Ports<'_> {
    fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
        self.forwarder.add(spec, self.registry)
    }

    fn list(&self) -> Vec<PortStatus> {
        self.forwarder.list()
    }

    fn remove(&mut self, id: i64) -> Result<(), PortError> {
        self.forwarder.remove(id, self.registry)
    }

    fn connections(&self) -> Vec<FlowRow> {
        self.forwarder.connections()
    }
}
