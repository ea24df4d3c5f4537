//! The simulated host: servers on the fuzz namespace's loopback (bound to the dual-stack
//! wildcard [::], so they also answer on [`REMOTE`](crate::world::REMOTE), ::1 and
//! [`REMOTE6`](crate::world::REMOTE6)), run by one background thread for the whole process.
//! The guest reaches them as 10.0.2.2:PORT or [fd00::2]:PORT (the gateway maps to the host's
//! loopback) or as 198.18.0.1:PORT or [2001:2::1]:PORT (an "outside" host).
//!
//! | port | TCP | UDP |
//! |---|---|---|
//! | 5 | accepts, then resets (`SO_LINGER` 0) | - |
//! | 7 | echo | echo |
//! | 9 | discard | discard |
//! | 13 | writes a line and closes | - |
//! | 19 | chargen: 256 KiB then closes (exercises the guest window and back-pressure) | - |
//! | 53 | DNS stub (length-prefixed) | DNS stub |
//!
//! Anything else is a closed port (`ECONNREFUSED`, ICMP port unreachable). The DNS stub's
//! answer depends on the query id (`id % 4`): 0 an A record, 1 an answer too big for a
//! 1500-byte link (200 records), 2 silence (the forwarder times out and fails over), 3 an
//! answer with the wrong id first, then the right one. A query that does not parse gets
//! FORMERR.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Once;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

pub const PORT_RESET: u16 = 5;
pub const PORT_ECHO: u16 = 7;
pub const PORT_DISCARD: u16 = 9;
pub const PORT_DAYTIME: u16 = 13;
pub const PORT_CHARGEN: u16 = 19;
pub const PORT_DNS: u16 = 53;
/// Nothing listens here.
pub const PORT_CLOSED: u16 = 1;

/// The DNS upstreams the stack is configured with: the stub, and a closed port after it.
pub fn dns_upstreams() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, PORT_DNS)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 54)),
    ]
}

const CHARGEN_TOTAL: usize = 256 * 1024;
/// Bytes an echo connection holds before it stops reading.
const ECHO_HOLD: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Echo,
    Discard,
    Chargen,
    Dns,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    input: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    eof: bool,
}

/// Start the servers (once per process). Panics if a port cannot be bound: the namespace is
/// not what [`crate::world::enter`] made.
pub fn start() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let poll = Poll::new().expect("epoll");
        let mut tcp = Vec::new();
        for (i, (port, kind)) in [
            (PORT_RESET, None),
            (PORT_ECHO, Some(Kind::Echo)),
            (PORT_DISCARD, Some(Kind::Discard)),
            (PORT_DAYTIME, None),
            (PORT_CHARGEN, Some(Kind::Chargen)),
            (PORT_DNS, Some(Kind::Dns)),
        ]
        .into_iter()
        .enumerate()
        {
            let mut l = TcpListener::bind(wildcard(port))
                .or_else(|_| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
                .unwrap_or_else(|e| panic!("TCP port {port}: {e}"));
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)
                .expect("register");
            tcp.push((l, port, kind));
        }
        let mut udp = Vec::new();
        for (i, port) in [PORT_ECHO, PORT_DISCARD, PORT_DNS].into_iter().enumerate() {
            let mut s = UdpSocket::bind(wildcard(port))
                .or_else(|_| UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
                .unwrap_or_else(|e| panic!("UDP port {port}: {e}"));
            poll.registry()
                .register(&mut s, Token(100 + i), Interest::READABLE)
                .expect("register");
            udp.push((s, port));
        }
        std::thread::Builder::new()
            .name("fuzz-host".into())
            .spawn(move || serve(poll, tcp, udp))
            .expect("spawn");
    });
}

/// [::]:port, which takes IPv4 too (net.ipv6.bindv6only is 0 in a new namespace).
fn wildcard(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

fn serve(mut poll: Poll, tcp: Vec<(TcpListener, u16, Option<Kind>)>, udp: Vec<(UdpSocket, u16)>) {
    let mut events = Events::with_capacity(256);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 1000usize;
    let mut buf = vec![0u8; 65536];
    loop {
        if poll.poll(&mut events, None).is_err() {
            continue;
        }
        for event in events.iter() {
            let t = event.token().0;
            if t < tcp.len() {
                let (listener, port, kind) = &tcp[t];
                while let Ok((mut stream, _)) = listener.accept() {
                    match (port, kind) {
                        (&PORT_DAYTIME, _) => {
                            let _ = stream.write(b"Thursday, January 1, 1970 00:00:00-UTC\r\n");
                        }
                        (_, None) => {
                            let _ = socket2::SockRef::from(&stream)
                                .set_linger(Some(std::time::Duration::ZERO));
                        }
                        (_, Some(kind)) => {
                            let token = Token(next);
                            next += 1;
                            if poll
                                .registry()
                                .register(
                                    &mut stream,
                                    token,
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .is_ok()
                            {
                                conns.insert(
                                    token.0,
                                    Conn {
                                        stream,
                                        kind: *kind,
                                        input: Vec::new(),
                                        out: Vec::new(),
                                        sent: 0,
                                        eof: false,
                                    },
                                );
                            }
                        }
                    }
                }
            } else if (100..100 + udp.len()).contains(&t) {
                let (socket, port) = &udp[t - 100];
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    match *port {
                        PORT_ECHO => {
                            let _ = socket.send_to(&buf[..n], from);
                        }
                        PORT_DNS => {
                            for answer in dns_answers(&buf[..n]) {
                                let _ = socket.send_to(&answer, from);
                            }
                        }
                        _ => {}
                    }
                }
            } else if let Some(conn) = conns.get_mut(&t)
                && !service(conn, &mut buf)
            {
                let mut conn = conns.remove(&t).expect("present");
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
    }
}

/// Read, answer, write; false once the connection is done.
fn service(c: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        if c.eof || c.out.len() >= ECHO_HOLD {
            break;
        }
        match c.stream.read(buf) {
            Ok(0) => c.eof = true,
            Ok(n) => match c.kind {
                Kind::Echo => c.out.extend_from_slice(&buf[..n]),
                Kind::Discard | Kind::Chargen => {}
                Kind::Dns => {
                    c.input.extend_from_slice(&buf[..n]);
                    while c.input.len() >= 2 {
                        let len = usize::from(u16::from_be_bytes([c.input[0], c.input[1]]));
                        if c.input.len() < 2 + len {
                            break;
                        }
                        let query: Vec<u8> = c.input.drain(..2 + len).skip(2).collect();
                        for answer in dns_answers(&query) {
                            c.out
                                .extend_from_slice(&(answer.len() as u16).to_be_bytes());
                            c.out.extend_from_slice(&answer);
                        }
                    }
                    if c.input.len() > 70_000 {
                        return false;
                    }
                }
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    loop {
        if c.kind == Kind::Chargen && c.out.is_empty() && c.sent < CHARGEN_TOTAL {
            c.out = (0..16384u32).map(|i| b' ' + (i % 95) as u8).collect();
        }
        if c.out.is_empty() {
            break;
        }
        match c.stream.write(&c.out) {
            Ok(0) => return false,
            Ok(n) => {
                c.out.drain(..n);
                c.sent += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    let done = match c.kind {
        Kind::Chargen => c.sent >= CHARGEN_TOTAL,
        _ => c.eof,
    };
    !done
}

/// The stub's answers to one query (see the module docs).
pub fn dns_answers(query: &[u8]) -> Vec<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return Vec::new();
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let Some(question_end) = question_end(query) else {
        let mut formerr = query[..12].to_vec();
        formerr[2] = 0x80 | (query[2] & 0x01);
        formerr[3] = 0x01;
        formerr[4..12].fill(0);
        return vec![formerr];
    };
    let records = match id % 4 {
        1 => 200,
        2 => return Vec::new(),
        _ => 1,
    };
    let mut answer = query[..question_end].to_vec();
    answer[2] = 0x80 | (query[2] & 0x01); // QR, keep RD
    answer[3] = 0x80; // RA, NOERROR
    answer[4..6].copy_from_slice(&1u16.to_be_bytes());
    answer[6..8].copy_from_slice(&(records as u16).to_be_bytes());
    answer[8..12].fill(0);
    for i in 0..records {
        answer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        answer.extend_from_slice(&[198, 18, (i >> 8) as u8, i as u8]);
    }
    if id % 4 == 3 {
        let mut wrong = answer.clone();
        wrong[0] ^= 0xff;
        return vec![wrong, answer];
    }
    vec![answer]
}

/// Where the first question of a DNS message ends, if it has exactly one that parses.
fn question_end(msg: &[u8]) -> Option<usize> {
    if u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
    (i + 4 <= msg.len()).then_some(i + 4)
}

/// A client of a forwarded port, held by a target between its operations.
pub struct Client {
    pub stream: std::net::TcpStream,
}

/// Connect (without waiting) to `to`, from `from` if given.
pub fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> io::Result<Client> {
    let domain = socket2::Domain::for_address(to);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    if let Some(ip) = from {
        socket.bind(&SocketAddr::from((ip, 0)).into())?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(Client {
        stream: socket.into(),
    })
}
