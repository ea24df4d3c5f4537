//! Tool mode of the integration test binary: `<test-binary> __tool NAME ARGS...`.
//!
//! The tests run these inside world namespaces (servers) and inside usernet (clients), so the
//! whole suite needs nothing but this binary, usernet and util-linux's `unshare`.
//!
//! Wire protocol of the TCP tools: the client sends `SEND` bytes of a seeded pseudo-random
//! pattern and shuts down its write side; the server answers with `RECV` bytes of another
//! pattern followed by a trailer line `RECV <count> <sha256 of what it received>`. In duplex
//! mode both sides send at once; otherwise the server answers only after the client's FIN,
//! so the client keeps receiving after its shutdown. Both directions are checked by SHA-256.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Seed of the client's pattern and of the server's.
const CLIENT_SEED: u64 = 0x1234_5678;
const SERVER_SEED: u64 = 0x8765_4321;

pub fn main(args: &[String]) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["world-holder"] => world_holder(),
        ["tcp-server", listen, send, rest @ ..] => {
            tcp_server(listen, parse(send), rest.contains(&"duplex"))
        }
        ["tcp-client", addr, send, recv, rest @ ..] => {
            tcp_client(addr, parse(send), parse(recv), rest.contains(&"duplex"), 0)
                .map(|s| println!("{s}"))
        }
        ["tcp-connect", addr] => tcp_connect(addr),
        ["tcp-many", addr, n, bytes] => tcp_many(addr, parse(n), parse(bytes)),
        ["tcp-reset-server", listen] => tcp_reset_server(listen),
        ["tcp-read-until-end", addr] => tcp_read_until_end(addr),
        ["tcp-watch", listen] => tcp_watch(listen),
        ["tcp-abort", addr] => tcp_abort(addr),
        ["tcp-hello", listen] => tcp_hello(listen),
        ["tcp-reuse-port", addr, port, n] => tcp_reuse_port(addr, parse(port) as u16, parse(n)),
        ["tcp-peer", listen] => tcp_peer(listen),
        ["tcp-wait", addr] => tcp_wait(addr),
        ["tcp-echo", listen] => tcp_echo(listen),
        ["watch-any", port] => watch_any(parse(port) as u16),
        ["raw-probe", ifname, port, dsts @ ..] => raw_probe(ifname, parse(port) as u16, dsts),
        ["attack-host-side", target, seconds, rest @ ..] => {
            crate::attacker::attack_host_side(target, parse(seconds), rest.first().copied())
        }
        ["unix-request", path, request] => unix_request(path, request),
        ["unix-http-serve", path, body] => unix_http_serve(path, body),
        ["tcp-hold", addr, n] => tcp_hold(addr, parse(n) as usize),
        ["tcp-pending", echo, blackhole, n] => tcp_pending(echo, blackhole, parse(n) as usize),
        ["udp-conversations", addr, n] => udp_conversations(addr, parse(n) as usize),
        ["udp-echo", listen] => udp_echo(listen),
        ["udp-whoami", listen] => udp_whoami(listen),
        ["udp-blackhole", listen] => udp_blackhole(listen),
        ["udp-client", addr, count, max] => udp_client(addr, parse(count), parse(max) as usize),
        ["udp-ask", addr] => udp_ask(addr, None),
        ["udp-ask", addr, local_port] => udp_ask(addr, Some(parse(local_port) as u16)),
        ["udp-expiry", addr, timeout] => udp_expiry(addr, parse(timeout)),
        ["udp-burst", host, first_port, ports, sockets] => udp_burst(
            host,
            parse(first_port) as u16,
            parse(ports) as u16,
            parse(sockets),
        ),
        ["udp-sink", host, first_port, ports, target] => udp_sink(
            host,
            parse(first_port) as u16,
            parse(ports) as u16,
            parse(target),
        ),
        ["tcp-streams", addr, n] => tcp_streams(addr, parse(n), false),
        ["tcp-streams", addr, n, "download"] => tcp_streams(addr, parse(n), true),
        ["tcp-stream-server", listen] => tcp_stream_server(listen),
        ["tcp-reset-midway", listen, sent, received] => {
            tcp_reset_midway(listen, parse(sent), parse(received))
        }
        ["tcp-paced", addr, bytes, rate] => tcp_paced(addr, parse(bytes), parse(rate)),
        ["udp-flood", addr, seconds, size] => udp_flood(addr, parse(seconds), parse(size) as usize),
        ["udp-hold", addr] => udp_hold(addr),
        ["udp-watch", listen] => udp_watch(listen),
        ["dns-burst", addr, n] => dns_burst(addr, parse(n)),
        ["syn-flood", count, rate, targets @ ..] => syn_flood(parse(count), parse(rate), targets),
        ["tcp-unread", listen] => tcp_unread(listen),
        ["tcp-stall", addr, n] => tcp_stall(addr, parse(n) as usize),
        ["tcp-flood", listen] => tcp_flood(listen),
        ["tcp-hold-unread", addr, n] => tcp_hold_unread(addr, parse(n) as usize),
        ["tcp-scan", target, n, hold_ms, rate] => {
            tcp_scan(target, parse(n) as usize, parse(hold_ms), parse(rate))
        }
        _ => Err(io::Error::other(format!("unknown tool invocation {a:?}"))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tool error: {e}");
            1
        }
    }
}

fn parse(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}

/// Set up the world's network and hold its namespaces until stdin closes. In a world whose
/// maps the test writes (`World::with_many_ids`), unshare(1) may exec us before they exist,
/// leaving us without capabilities: then wait for the test's "mapped" and exec again, as
/// root of the world.
fn world_holder() -> io::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let no_caps = status
        .lines()
        .any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000000"));
    if no_caps {
        let mut line = String::new();
        io::stdin().read_line(&mut line)?;
        use std::os::unix::process::CommandExt;
        return Err(std::process::Command::new("/proc/self/exe")
            .args(["__tool", "world-holder"])
            .exec());
    }
    let mut nl = usernet::netconf::Netlink::open()?;
    nl.link_up("lo")?;
    nl.add_ipv4_address("lo", crate::world::REMOTE.parse().unwrap(), 32)?;
    nl.add_ipv4_address("lo", crate::world::REMOTE2.parse().unwrap(), 32)?;
    if crate::services::ipv6_available() {
        nl.add_ipv6_address("lo", crate::world::REMOTE6.parse().unwrap(), 128)?;
    }
    println!("ready");
    io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// A deterministic byte stream (xorshift64*), cheap to generate at memory speed.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `len` pattern bytes; returns their SHA-256.
fn send_pattern(w: &mut impl Write, seed: u64, len: u64) -> io::Result<String> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hex(&h.finalize()))
}

/// Read exactly `len` bytes; returns their SHA-256.
fn recv_exact_hash(r: &mut impl Read, len: u64) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "EOF with {left} of {len} bytes missing"
            )));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex(&h.finalize()))
}

fn expected_hash(seed: u64, len: u64) -> String {
    send_pattern(&mut io::sink(), seed, len).unwrap()
}

fn tcp_server(listen: &str, send: u64, duplex: bool) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            if let Err(e) = serve(conn, send, duplex) {
                eprintln!("tcp-server: {e}");
            }
        });
    }
    Ok(())
}

fn serve(conn: TcpStream, send: u64, duplex: bool) -> io::Result<()> {
    let mut reader = conn.try_clone()?;
    let mut count_and_hash = move || -> io::Result<(u64, String)> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let k = reader.read(&mut buf)?;
            if k == 0 {
                return Ok((n, hex(&h.finalize())));
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
    };
    let mut writer = conn;
    let (n, hash) = if duplex {
        let rx = std::thread::spawn(count_and_hash);
        send_pattern(&mut writer, SERVER_SEED, send)?;
        rx.join()
            .map_err(|_| io::Error::other("reader panicked"))??
    } else {
        let r = count_and_hash()?;
        send_pattern(&mut writer, SERVER_SEED, send)?;
        r
    };
    writeln!(writer, "RECV {n} {hash}")?;
    writer.shutdown(Shutdown::Write)?;
    Ok(())
}

/// One client exchange; returns a summary line, or an error naming the mismatch.
fn tcp_client(
    addr: &str,
    send: u64,
    recv: u64,
    duplex: bool,
    seed_offset: u64,
) -> io::Result<String> {
    let conn = TcpStream::connect(addr)?;
    let mut writer = conn.try_clone()?;
    let seed = CLIENT_SEED + seed_offset;
    let mut sender = move || -> io::Result<String> {
        let h = send_pattern(&mut writer, seed, send)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(h)
    };
    let (sent_hash, mut reader) = if duplex {
        let t = std::thread::spawn(sender);
        let mut reader = BufReader::new(conn);
        let got = recv_exact_hash(&mut reader, recv)?;
        check("download", &got, &expected_hash(SERVER_SEED, recv))?;
        (
            t.join()
                .map_err(|_| io::Error::other("sender panicked"))??,
            reader,
        )
    } else {
        let h = sender()?;
        let mut reader = BufReader::new(conn);
        // Everything from here on arrives after our own FIN went out.
        let got = recv_exact_hash(&mut reader, recv)?;
        check(
            "download after shutdown(SHUT_WR)",
            &got,
            &expected_hash(SERVER_SEED, recv),
        )?;
        (h, reader)
    };
    let mut trailer = String::new();
    reader.read_line(&mut trailer)?;
    let want = format!("RECV {send} {sent_hash}");
    check("upload as the server saw it", trailer.trim(), &want)?;
    Ok(format!("OK sent={send} received={recv}"))
}

fn check(what: &str, got: &str, want: &str) -> io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what}: got {got}, want {want}")))
    }
}

/// Try to connect and report how it went and how long it took.
fn tcp_connect(addr: &str) -> io::Result<()> {
    let start = Instant::now();
    let r = TcpStream::connect(addr);
    let ms = start.elapsed().as_millis();
    match r {
        Ok(_) => println!("connected {ms}"),
        Err(e) => println!("{:?} {} {ms}", e.kind(), e.raw_os_error().unwrap_or(0)),
    }
    Ok(())
}

/// `n` connections at once, each exchanging `bytes` both ways with its own pattern.
fn tcp_many(addr: &str, n: u64, bytes: u64) -> io::Result<()> {
    let barrier = Arc::new(Barrier::new(n as usize));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let addr = addr.to_string();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                tcp_client(&addr, bytes, bytes, false, i)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failures.push(format!("#{i}: {e}")),
            Err(_) => failures.push(format!("#{i}: panicked")),
        }
    }
    if failures.is_empty() {
        println!("OK {n}");
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} of {n} failed: {}",
            failures.len(),
            failures.join("; ")
        )))
    }
}

fn listen_announce(listen: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(listen)?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    Ok(listener)
}

/// How a read loop ended, as one word.
fn ending(r: io::Result<usize>) -> String {
    match r {
        Ok(_) => "eof".into(),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset".into(),
        Err(e) => format!("error:{:?}", e.kind()),
    }
}

fn read_to_end_or_error(conn: &mut TcpStream) -> (u64, io::Result<usize>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return (total, Ok(0)),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, Err(e)),
        }
    }
}

/// Each connection gets 1 MiB of data, then a reset (SO_LINGER 0) instead of a FIN.
fn tcp_reset_server(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = send_pattern(&mut conn, SERVER_SEED, 1 << 20);
        let _ = socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO));
        drop(conn);
    }
    Ok(())
}

/// Connect and read until the stream ends; print how it ended and how much arrived.
fn tcp_read_until_end(addr: &str) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    let (total, r) = read_to_end_or_error(&mut conn);
    println!("{} {total}", ending(r));
    Ok(())
}

/// Accept one connection, read until it ends, print how it ended.
fn tcp_watch(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    let (mut conn, _) = listener.accept()?;
    let (total, r) = read_to_end_or_error(&mut conn);
    println!("{} {total}", ending(r));
    io::stdout().flush()
}

/// Connect, send a little, then abort the connection (RST instead of FIN).
fn tcp_abort(addr: &str) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.write_all(b"some bytes before the reset")?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO))?;
    drop(conn);
    println!("aborted");
    Ok(())
}

/// Each connection gets "hello" and is closed by the server first.
fn tcp_hello(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.write_all(b"hello\n");
    }
    Ok(())
}

/// Connect `n` times in a row from the same local port, each time after the server closed
/// the previous connection; print the slowest connect in ms.
fn tcp_reuse_port(addr: &str, port: u16, n: u64) -> io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let mut slowest = 0;
    for i in 0..n {
        // Our previous socket with this 4-tuple lingers in LAST-ACK until its final ACK
        // arrives (microseconds later); the kernel answers EADDRNOTAVAIL until then.
        let mut tries = 0;
        let s = loop {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], port)).into())?;
            let start = Instant::now();
            match s.connect(&target.into()) {
                Ok(()) => {
                    slowest = slowest.max(start.elapsed().as_millis());
                    break s;
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io::Error::other(format!("connect #{i}: {e}"))),
            }
        };
        let mut conn: TcpStream = s.into();
        let mut got = String::new();
        conn.read_to_string(&mut got)?;
        check("greeting", &got, "hello\n")?;
    }
    println!("OK {slowest}");
    Ok(())
}

/// Print the peer address of every connection, one line each.
fn tcp_peer(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        println!("peer {}", conn.peer_addr()?);
        io::stdout().flush()?;
    }
    Ok(())
}

/// Report every TCP connection and UDP datagram arriving on `port`, on any IPv4 or IPv6
/// address of the world ("tcp FROM" / "udp FROM").
fn watch_any(port: u16) -> io::Result<()> {
    let tcp = TcpListener::bind(("::", port))?;
    let udp = std::net::UdpSocket::bind(("::", port))?;
    println!("listening [::]:{port}");
    io::stdout().flush()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            println!("udp {from}");
            let _ = io::stdout().flush();
        }
    });
    loop {
        // The address from accept(): the connection may already be reset by the time we
        // look (the prober never completes its handshakes).
        if let Ok((_, from)) = tcp.accept() {
            println!("tcp {from}");
            io::stdout().flush()?;
        }
    }
}

/// From inside the guest, write hand-made frames on `ifname` (bypassing the guest kernel's
/// routing): a TCP SYN and a UDP datagram to `port` at each destination, IPv4 or IPv6.
fn raw_probe(ifname: &str, port: u16, dsts: &[&str]) -> io::Result<()> {
    use smoltcp::wire::{EthernetAddress, EthernetProtocol, IpProtocol};
    use usernet::testkit::{self, Segment, flags, syn_options};
    let net = usernet::net::VirtualNetwork::default();
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let our_mac = EthernetAddress::from_bytes(
        &usernet::cli::parse_mac(mac_text.trim()).map_err(io::Error::other)?,
    );
    let index = nix::net::if_::if_nametoindex(ifname)?;
    // SAFETY: plain socket(2) call; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mss = syn_options(Some(1460), None, false);
    let mut sport = 40000u16;
    for dst in dsts {
        let dst: std::net::IpAddr = dst.parse().map_err(io::Error::other)?;
        let (src, ethertype): (std::net::IpAddr, _) = match dst {
            std::net::IpAddr::V4(_) => (net.guest.into(), EthernetProtocol::Ipv4),
            std::net::IpAddr::V6(_) => ("fd00::100".parse().unwrap(), EthernetProtocol::Ipv6),
        };
        for proto in [IpProtocol::Tcp, IpProtocol::Udp] {
            sport += 1;
            let (from, to) = ((src, sport).into(), (dst, port).into());
            let l4 = if proto == IpProtocol::Tcp {
                Segment {
                    src: from,
                    dst: to,
                    seq: 1000,
                    ack: 0,
                    flags: flags::SYN,
                    window: 64000,
                    options: &mss,
                    payload: &[],
                }
                .l4()
            } else {
                testkit::udp(from, to, b"probe")
            };
            let packet = testkit::ip_packet(src, dst, proto, &l4);
            let buf = testkit::ethernet(our_mac, net.gateway_mac(), ethertype, &packet);
            // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = u16::from(ethertype).to_be();
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(net.gateway_mac().as_bytes());
            // SAFETY: buf and addr are live for the call; the lengths are theirs.
            let sent = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    println!("probed {}", dsts.len());
    Ok(())
}

/// Send `request` on the unix socket at `path` and print the first line of the answer.
fn unix_request(path: &str, request: &str) -> io::Result<()> {
    let mut conn = std::os::unix::net::UnixStream::connect(path)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    // A refusal may be written (and the socket closed) before the request is: read anyway.
    let _ = conn.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    println!("{}", answer.lines().next().unwrap_or(""));
    Ok(())
}

/// A stand-in for someone else's api.sock: listen on `path` (mode 0777, so anyone can
/// connect), print "listening", and answer every request with 200 and `body`.
fn unix_http_serve(path: &str, body: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    println!("listening");
    io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

/// Echo everything on every connection, each on a thread of its own.
fn tcp_echo(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut reader = match conn.try_clone() {
                Ok(r) => r,
                Err(_) => return,
            };
            let _ = io::copy(&mut reader, &mut conn);
        });
    }
    Ok(())
}

/// Send 64 KiB of a pattern on `conn` and check the echo; "ok" or what went wrong.
fn echo_round(conn: &mut TcpStream, seed: u64) -> String {
    let mut data = vec![0u8; 64 << 10];
    Pattern::new(seed).fill(&mut data);
    let mut back = vec![0u8; data.len()];
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let r = conn
        .write_all(&data)
        .and_then(|_| conn.read_exact(&mut back));
    match r {
        Ok(()) if back == data => "ok".into(),
        Ok(()) => "corrupt".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

/// Connect until `n` connections are open, showing each; hold them and try one more
/// ("extra ..."); check each held one still echoes ("held ..."); close them and connect again
/// ("after ...", retrying for up to 2 s while the flows go away).
fn tcp_hold(addr: &str, n: usize) -> io::Result<()> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(addr)?);
    }
    tcp_connect_as("extra", addr);
    let results: Vec<String> = held
        .iter_mut()
        .enumerate()
        .map(|(i, c)| echo_round(c, i as u64))
        .collect();
    println!("held {}", results.join(","));
    drop(held);
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => {
                println!("after connected");
                break;
            }
            Err(e) if start.elapsed().as_secs() >= 2 => {
                println!("after {:?}", e.kind());
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    Ok(())
}

/// One connect to `addr`, printed as "LABEL connected MS" or "LABEL KIND ERRNO MS".
fn tcp_connect_as(label: &str, addr: &str) {
    let start = Instant::now();
    let r = TcpStream::connect_timeout(
        &addr.parse().expect("an address"),
        std::time::Duration::from_secs(5),
    );
    let ms = start.elapsed().as_millis();
    match r {
        Ok(_) => println!("{label} connected {ms}"),
        Err(e) => println!(
            "{label} {:?} {} {ms}",
            e.kind(),
            e.raw_os_error().unwrap_or(0)
        ),
    }
}

/// With one connection to the echo server open, start `n` connects to `blackhole` that never
/// complete; try one more connection to the echo server ("extra ..."); check the open one
/// still echoes ("open ..."); then connect again until it works ("after ...", up to 20 s).
fn tcp_pending(echo: &str, blackhole: &str, n: usize) -> io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let mut open = TcpStream::connect(echo)?;
    let target: std::net::SocketAddr = blackhole.parse().map_err(io::Error::other)?;
    let mut pending = Vec::new();
    for _ in 0..n {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        match s.connect(&target.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => pending.push(s),
            other => println!("pending connect: {other:?}"),
        }
    }
    // Let the SYNs reach usernet and its host connects start.
    std::thread::sleep(std::time::Duration::from_millis(300));
    tcp_connect_as("extra", echo);
    println!("open {}", echo_round(&mut open, 7));
    // The pending connects end when the world's kernel gives up on them (the test makes that
    // quick); then there is room again.
    drop(pending);
    let start = Instant::now();
    loop {
        match TcpStream::connect(echo) {
            Ok(_) => {
                println!("after connected");
                break;
            }
            Err(e) if start.elapsed().as_secs() >= 20 => {
                println!("after {:?}", e.kind());
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Ok(())
}

/// `n` UDP conversations with an echo server at `addr`, then one more flow ("extra ..."),
/// then each conversation again from the same socket ("again ...").
fn udp_conversations(addr: &str, n: usize) -> io::Result<()> {
    let ask = |s: &std::net::UdpSocket, what: &[u8]| -> String {
        let mut buf = [0u8; 2048];
        match s.send(what).and_then(|_| s.recv(&mut buf)) {
            Ok(len) if &buf[..len] == what => "ok".into(),
            Ok(_) => "wrong".into(),
            Err(e) => format!("{:?}", e.kind()),
        }
    };
    let mut sockets = Vec::new();
    let mut first = Vec::new();
    for i in 0..n {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
        s.connect(addr)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        first.push(ask(&s, format!("hello {i}").as_bytes()));
        sockets.push(s);
    }
    println!("first {}", first.join(","));
    let extra = std::net::UdpSocket::bind("0.0.0.0:0")?;
    nix::sys::socket::setsockopt(&extra, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
    extra.connect(addr)?;
    extra.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    println!("extra {}", ask(&extra, b"one more"));
    let again: Vec<String> = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| ask(s, format!("again {i}").as_bytes()))
        .collect();
    println!("again {}", again.join(","));
    Ok(())
}

/// Wait (up to 10 s) until something accepts TCP connections at `addr`.
fn tcp_wait(addr: &str) -> io::Result<()> {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed().as_secs() >= 10 => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

fn udp_bind_announce(listen: &str) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen)?;
    println!("listening {}", socket.local_addr()?);
    io::stdout().flush()?;
    Ok(socket)
}

/// Echo every datagram back to its sender.
fn udp_echo(listen: &str) -> io::Result<()> {
    let socket = udp_bind_announce(listen)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

/// Answer every datagram with the sender's address, as text.
fn udp_whoami(listen: &str) -> io::Result<()> {
    let socket = udp_bind_announce(listen)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (_, from) = socket.recv_from(&mut buf)?;
        socket.send_to(from.to_string().as_bytes(), from)?;
    }
}

/// Take datagrams and never answer (a dead resolver that does not even refuse).
fn udp_blackhole(listen: &str) -> io::Result<()> {
    let _socket = udp_bind_announce(listen)?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// `count` datagrams of mixed sizes up to `max`, one at a time, each echoed back intact and
/// from the address it was sent to.
fn udp_client(addr: &str, count: u64, max: usize) -> io::Result<()> {
    let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let socket = std::net::UdpSocket::bind(if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    let mut reply = vec![0u8; 65536];
    let mut sent = vec![0u8; max];
    for i in 0..count {
        let size = match i {
            0 => 1,
            1 => max,
            _ => 1 + (i.wrapping_mul(2_654_435_761) % max as u64) as usize,
        };
        Pattern::new(i).fill(&mut sent[..size]);
        socket.send_to(&sent[..size], target)?;
        let (n, from) = socket
            .recv_from(&mut reply)
            .map_err(|e| io::Error::other(format!("datagram #{i} ({size} bytes): no echo: {e}")))?;
        if from != target {
            return Err(io::Error::other(format!(
                "datagram #{i}: echo came from {from}, not {target}"
            )));
        }
        if reply[..n] != sent[..size] {
            return Err(io::Error::other(format!(
                "datagram #{i}: echo of {n} bytes differs from the {size} sent"
            )));
        }
    }
    println!("OK {count}");
    Ok(())
}

/// Send one datagram (from `local_port` if given) and print the answer, or how it failed.
/// ICMP errors count too (IP_RECVERR): without it Linux hides the non-fatal ones (network or
/// host unreachable) from UDP sockets.
fn udp_ask(addr: &str, local_port: Option<u16>) -> io::Result<()> {
    let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let socket = if target.is_ipv6() {
        let socket = std::net::UdpSocket::bind(("::", local_port.unwrap_or(0)))?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6RecvErr, &true)?;
        socket
    } else {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", local_port.unwrap_or(0)))?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
        socket
    };
    socket.connect(target)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    socket.send(b"who am i")?;
    let mut buf = vec![0u8; 65536];
    match socket.recv(&mut buf) {
        Ok(n) => println!("answer {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => println!("error {:?}", e.kind()),
    }
    Ok(())
}

/// From one local port: ask twice (same NAT entry, same host-side port), wait past the
/// timeout, ask again (a new entry, a new host-side port).
fn udp_expiry(addr: &str, timeout_secs: u64) -> io::Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    let mut buf = vec![0u8; 256];
    let mut ask = || -> io::Result<String> {
        socket.send(b"?")?;
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let first = ask()?;
    let again = ask()?;
    check("the same flow while active", &again, &first)?;
    std::thread::sleep(std::time::Duration::from_millis(timeout_secs * 1000 + 1500));
    let later = ask()?;
    if later == first {
        return Err(io::Error::other(format!(
            "after the timeout the flow still used {first}"
        )));
    }
    println!("OK {first} then {later}");
    Ok(())
}

/// `sockets` local sockets each send one datagram to each of `ports` ports: that many
/// distinct flows, as fast as the guest can send them. With IP_RECVERR the guest kernel
/// reports a full tap queue (ENOBUFS) instead of dropping silently, so every datagram
/// really leaves.
fn udp_burst(host: &str, first_port: u16, ports: u16, sockets: u64) -> io::Result<()> {
    let ip: std::net::Ipv4Addr = host.parse().map_err(io::Error::other)?;
    let mut sent = 0u64;
    for _ in 0..sockets {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
        for p in 0..ports {
            loop {
                match s.send_to(b"burst", (ip, first_port + p)) {
                    Ok(_) => break,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.raw_os_error() == Some(libc::ENOBUFS) =>
                    {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    Err(e) => return Err(e),
                }
            }
            sent += 1;
        }
        // A tap drops what does not fit its queue without telling the sender: keep the
        // burst at a pace the other end can take on a busy 2-core machine, where the sender,
        // the sink and a TCP transfer compete with it (at most about 16,000 new flows a
        // second).
        std::thread::sleep(std::time::Duration::from_millis(6));
    }
    println!("sent {sent}");
    Ok(())
}

/// Count datagrams arriving on `ports` ports from `first_port`; report every 1,000 and
/// when `target` arrived.
fn udp_sink(host: &str, first_port: u16, ports: u16, target: u64) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let count = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::new();
    for p in 0..ports {
        let s = std::net::UdpSocket::bind((host, first_port + p))?;
        // Past net.core.rmem_max: we are root of the world's network namespace.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt on an open socket with a pointer to a live c_int.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        sockets.push(s);
    }
    println!("listening {host}:{first_port}+{ports}");
    io::stdout().flush()?;
    for s in sockets {
        let count = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while s.recv(&mut buf).is_ok() {
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(1_000) || n == target {
                    println!("received {n}");
                    let _ = io::stdout().flush();
                }
            }
        });
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

// ---- Tools of the fault tests (faults.rs) ----

/// A pattern stream handed out in pieces of any size; the same bytes `send_pattern` writes
/// for the seed, since both generate it in multiples of 8 bytes.
struct PatternStream {
    pattern: Pattern,
    buf: Vec<u8>,
    pos: usize,
}

impl PatternStream {
    fn new(seed: u64) -> Self {
        let len = 64 * 1024;
        PatternStream {
            pattern: Pattern::new(seed),
            buf: vec![0; len],
            pos: len,
        }
    }

    /// The next bytes of the stream (never empty), without consuming them.
    fn peek(&mut self) -> &[u8] {
        if self.pos == self.buf.len() {
            self.pattern.fill(&mut self.buf);
            self.pos = 0;
        }
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Whether `data` is what comes next in the stream; consumes it.
    fn matches(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let want = self.peek();
            let n = want.len().min(data.len());
            if want[..n] != data[..n] {
                return false;
            }
            self.consume(n);
            data = &data[n..];
        }
        true
    }
}

/// How a streaming connection ended.
enum End {
    Eof,
    Reset,
    Error(io::ErrorKind),
    /// The bytes received stopped matching the peer's pattern at this offset.
    Corrupt(u64),
    /// The caller's condition was met.
    Stopped,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Eof => write!(f, "eof"),
            End::Reset => write!(f, "reset"),
            End::Error(kind) => write!(f, "error:{kind:?}"),
            End::Corrupt(at) => write!(f, "corrupt@{at}"),
            End::Stopped => write!(f, "stopped"),
        }
    }
}

fn end_of(e: &io::Error) -> End {
    match e.raw_os_error() {
        Some(libc::ECONNRESET | libc::EPIPE) => End::Reset,
        _ => End::Error(e.kind()),
    }
}

/// Send `out` (up to `out_limit` bytes of it) and take in whatever arrives (checked against
/// `expect`, if given), both at once, at full speed, until the connection ends or
/// `stop(sent, received)` holds. Returns (sent, received, how it ended). The first error is
/// how it ended, so a reset reads as a reset even if the write side saw it first; after a
/// write error what is still queued for us is read (and counted) before returning.
fn pump(
    conn: &TcpStream,
    mut out: Option<PatternStream>,
    out_limit: u64,
    mut expect: Option<PatternStream>,
    stop: &dyn Fn(u64, u64) -> bool,
) -> (u64, u64, End) {
    use std::os::fd::AsRawFd;
    if let Err(e) = conn.set_nonblocking(true) {
        return (0, 0, end_of(&e));
    }
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut received) = (0u64, 0u64);
    let mut write_error = None;
    let retry = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    };
    let end = loop {
        if write_error.is_none() && stop(sent, received) {
            break End::Stopped;
        }
        if sent >= out_limit {
            out = None;
        }
        let mut pfd = libc::pollfd {
            fd: conn.as_raw_fd(),
            events: libc::POLLIN | if out.is_some() { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        match (&*conn).read(&mut buf) {
            Ok(0) => break write_error.take().unwrap_or(End::Eof),
            Ok(n) => {
                if let Some(rx) = &mut expect
                    && !rx.matches(&buf[..n])
                {
                    break End::Corrupt(received);
                }
                received += n as u64;
            }
            Err(e) if retry(&e) => {}
            Err(e) => break write_error.take().unwrap_or_else(|| end_of(&e)),
        }
        let Some(tx) = &mut out else { continue };
        let piece = tx.peek();
        let piece = &piece[..piece.len().min((out_limit - sent) as usize)];
        match (&*conn).write(piece) {
            Ok(n) => {
                tx.consume(n);
                sent += n as u64;
            }
            Err(e) if retry(&e) => {}
            Err(e) => {
                write_error = Some(end_of(&e));
                out = None;
            }
        }
    };
    (sent, received, end)
}

/// The pattern seed of a `tcp-streams` client's connection `i`: the seeds step by 2, since
/// [`Pattern`] sets the lowest bit itself.
fn stream_seed(i: u64) -> u64 {
    CLIENT_SEED + 2 * i
}

/// Which of the first 1024 `tcp-streams` connections starts its pattern with `head`.
fn client_index(head: &[u8; 8]) -> Option<u64> {
    (0..1024).find(|&i| {
        let mut first = [0u8; 8];
        Pattern::new(stream_seed(i)).fill(&mut first);
        &first == head
    })
}

/// Bytes written to `conn` that its peer has not acknowledged yet (SIOCOUTQ).
fn unacked(conn: &TcpStream) -> u64 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer.
    let r = unsafe { libc::ioctl(conn.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 { 0 } else { n as u64 }
}

/// `n` connections to `addr`, each streaming both ways at full speed (with `download`, only
/// the first 8 bytes of its pattern, which tell the server which connection it is, then only
/// taking in); what arrives is checked against the server's pattern. Prints "connected N"
/// once all are up, then "end HOW conn=I sent=S received=R" for each as it ends, then "done".
fn tcp_streams(addr: &str, n: u64, download: bool) -> io::Result<()> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(TcpStream::connect(addr)?);
    }
    println!("connected {n}");
    io::stdout().flush()?;
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            std::thread::spawn(move || {
                let out = PatternStream::new(stream_seed(i as u64));
                let limit = if download { 8 } else { u64::MAX };
                let expect = PatternStream::new(SERVER_SEED);
                let (sent, received, end) =
                    pump(&conn, Some(out), limit, Some(expect), &|_, _| false);
                println!("end {end} conn={i} sent={sent} received={received}");
                let _ = io::stdout().flush();
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!("done");
    Ok(())
}

/// Every connection streams the server's pattern and takes whatever comes, until it ends:
/// "accepted" when one arrives, "end HOW sent=S received=R" when it ends.
fn tcp_stream_server(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        println!("accepted");
        io::stdout().flush()?;
        std::thread::spawn(move || {
            let out = PatternStream::new(SERVER_SEED);
            let (sent, received, end) = pump(&conn, Some(out), u64::MAX, None, &|_, _| false);
            println!("end {end} sent={sent} received={received}");
            let _ = io::stdout().flush();
        });
    }
    Ok(())
}

/// Every connection streams both ways (what the client sends is checked against its pattern,
/// found from its first 8 bytes) until the server has sent at least `min_sent` bytes and
/// received at least `min_received`, then the server resets it (SO_LINGER 0) with data still
/// in flight: "reset conn=I sent=S received=R acked=A", where A of the S bytes had been
/// acknowledged by the client's side (so they were out of this host's hands), or "end HOW
/// ..." if the client ended it first.
fn tcp_reset_midway(listen: &str, min_sent: u64, min_received: u64) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut head = [0u8; 8];
            let index = conn
                .read_exact(&mut head)
                .ok()
                .and_then(|_| client_index(&head));
            let Some(i) = index else {
                println!("end unknown-client");
                let _ = io::stdout().flush();
                return;
            };
            let mut expect = PatternStream::new(stream_seed(i));
            expect.matches(&head);
            let out = PatternStream::new(SERVER_SEED);
            let (sent, received, end) = pump(&conn, Some(out), u64::MAX, Some(expect), &|s, r| {
                s >= min_sent && r + 8 >= min_received
            });
            let received = received + 8;
            if let End::Stopped = end {
                let acked = sent - unacked(&conn).min(sent);
                let _ = socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO));
                drop(conn);
                println!("reset conn={i} sent={sent} received={received} acked={acked}");
            } else {
                println!("end {end} conn={i} sent={sent} received={received}");
            }
            let _ = io::stdout().flush();
        });
    }
    Ok(())
}

/// Limits a reader or writer to `rate` bytes a second, in pieces of at most 64 KiB.
struct Paced<T> {
    inner: T,
    rate: u64,
    start: Instant,
    done: u64,
}

impl<T> Paced<T> {
    fn new(inner: T, rate: u64) -> Self {
        Paced {
            inner,
            rate: rate.max(1),
            start: Instant::now(),
            done: 0,
        }
    }

    /// Wait until the next piece is due; its largest size.
    fn next_piece(&self, want: usize) -> usize {
        let due = std::time::Duration::from_secs_f64(self.done as f64 / self.rate as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
        want.min(64 * 1024)
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.next_piece(buf.len());
        let k = self.inner.read(&mut buf[..n])?;
        self.done += k as u64;
        Ok(k)
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.next_piece(buf.len());
        let k = self.inner.write(&buf[..n])?;
        self.done += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The duplex exchange of `tcp-client` with a `tcp-server ... duplex`, `bytes` each way,
/// each direction paced to `rate` bytes a second, so it lasts a known while. Prints
/// "connected" once connected, "OK sent=N received=N ms=T" when both hashes check out.
fn tcp_paced(addr: &str, bytes: u64, rate: u64) -> io::Result<()> {
    let start = Instant::now();
    let conn = TcpStream::connect(addr)?;
    println!("connected");
    io::stdout().flush()?;
    let writer = conn.try_clone()?;
    let sender = std::thread::spawn(move || -> io::Result<String> {
        let mut w = Paced::new(writer, rate);
        let h = send_pattern(&mut w, CLIENT_SEED, bytes)?;
        w.inner.shutdown(Shutdown::Write)?;
        Ok(h)
    });
    let mut reader = BufReader::new(Paced::new(conn, rate));
    let got = recv_exact_hash(&mut reader, bytes)?;
    check("download", &got, &expected_hash(SERVER_SEED, bytes))?;
    let sent_hash = sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    let mut trailer = String::new();
    reader.read_line(&mut trailer)?;
    check(
        "upload as the server saw it",
        trailer.trim(),
        &format!("RECV {bytes} {sent_hash}"),
    )?;
    println!(
        "OK sent={bytes} received={bytes} ms={}",
        start.elapsed().as_millis()
    );
    Ok(())
}

/// Datagrams of `size` bytes to `addr` from one socket, as fast as they go, for `seconds`.
fn udp_flood(addr: &str, seconds: u64, size: usize) -> io::Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr)?;
    let payload = vec![0x55u8; size];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs() < seconds {
        for _ in 0..64 {
            // A full tap queue drops silently; nothing else is expected to fail.
            if socket.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    println!("sent {sent}");
    Ok(())
}

/// Keep a UDP flow to `addr` busy: a datagram every 100 ms, forever; "talking" once the
/// first answer came back.
fn udp_hold(addr: &str) -> io::Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
    let mut talking = false;
    let mut buf = [0u8; 2048];
    loop {
        socket.send(b"still here")?;
        if socket.recv(&mut buf).is_ok() && !talking {
            talking = true;
            println!("talking");
            io::stdout().flush()?;
        }
    }
}

/// Wait for one datagram, then keep sending to its sender (every 50 ms) until the sender's
/// socket is gone (ICMP port unreachable: ECONNREFUSED): "peer ADDR", then "gone".
fn udp_watch(listen: &str) -> io::Result<()> {
    let socket = udp_bind_announce(listen)?;
    let mut buf = [0u8; 2048];
    let (_, from) = socket.recv_from(&mut buf)?;
    println!("peer {from}");
    io::stdout().flush()?;
    socket.connect(from)?;
    socket.set_read_timeout(Some(std::time::Duration::from_millis(50)))?;
    let refused = |e: &io::Error| e.kind() == io::ErrorKind::ConnectionRefused;
    loop {
        match socket.send(b"are you there?") {
            Err(e) if refused(&e) => break,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        match socket.recv(&mut buf) {
            Err(e) if refused(&e) => break,
            _ => {}
        }
    }
    println!("gone");
    io::stdout().flush()
}

/// A DNS query for qN.example (A, IN, recursion desired) with id N.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let label = format!("q{id}");
    q.push(label.len() as u8);
    q.extend_from_slice(label.as_bytes());
    q.extend_from_slice(b"\x07example\x00\x00\x01\x00\x01");
    q
}

/// `n` (at most 65536) distinct DNS queries to `addr` over UDP, in batches of 20 every
/// 5 ms, then wait (up to 8 s after the last) for every answer. Prints "answered A
/// servfail S other O missing M slow K max_ms X rcvbuf_drops D": slow ones took over a
/// second; D answers arrived but found a full socket buffer (the guest's kernel counts them,
/// as UDP RcvbufErrors). Inside a namespace the buffer cannot be raised past rmem_max
/// (SO_RCVBUFFORCE needs the initial namespace's CAP_NET_ADMIN), so the queries are spread
/// over 16 sockets, each with its own buffer.
fn dns_burst(addr: &str, n: u64) -> io::Result<()> {
    const SOCKETS: usize = 16;
    let n = n.min(65536) as usize;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(addr)?;
        socket.set_nonblocking(true)?;
        sockets.push(socket);
    }
    let drops_before = udp_rcvbuf_errors();
    let mut sent_at: Vec<Option<Instant>> = vec![None; n];
    let mut answers: Vec<Option<(std::time::Duration, u8)>> = vec![None; n];
    let (mut next, mut answered) = (0usize, 0usize);
    let mut last_batch: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        if next < n && last_batch.is_none_or(|t| t.elapsed().as_millis() >= 5) {
            for _ in 0..20.min(n - next) {
                match sockets[next % SOCKETS].send(&dns_query(next as u16)) {
                    Ok(_) => {
                        sent_at[next] = Some(Instant::now());
                        next += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            last_batch = Some(Instant::now());
        }
        for socket in &sockets {
            loop {
                match socket.recv(&mut buf) {
                    Ok(k) if k >= 12 => {
                        let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                        if let (Some(Some(at)), Some(slot @ None)) =
                            (sent_at.get(id), answers.get_mut(id))
                        {
                            *slot = Some((at.elapsed(), buf[3] & 0x0f));
                            answered += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if answered == n || (next == n && last_batch.is_some_and(|t| t.elapsed().as_secs() >= 8)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let drops = udp_rcvbuf_errors().saturating_sub(drops_before);
    let got: Vec<_> = answers.iter().flatten().collect();
    let servfail = got.iter().filter(|(_, rcode)| *rcode == 2).count();
    let slow = got.iter().filter(|(t, _)| t.as_millis() > 1000).count();
    let max_ms = got.iter().map(|(t, _)| t.as_millis()).max().unwrap_or(0);
    println!(
        "answered {answered} servfail {servfail} other {} missing {} slow {slow} max_ms {max_ms} \
         rcvbuf_drops {drops}",
        answered - servfail,
        n - answered
    );
    Ok(())
}

/// This network namespace's count of UDP datagrams dropped for a full socket buffer.
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// `count` TCP SYNs from a raw socket, `rate` a second, taking turns among `targets` (IPv4
/// addresses); each target sees distinct destination ports (1..65534, then the source port
/// moves on). Nothing answers them from here: the guest kernel resets any SYN-ACK. Prints
/// "sent N ms T".
fn syn_flood(count: u64, rate: u64, targets: &[&str]) -> io::Result<()> {
    use usernet::testkit::{Segment, flags, syn_options};
    let targets: Vec<std::net::Ipv4Addr> = targets
        .iter()
        .map(|t| t.parse().map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    if targets.is_empty() {
        return Err(io::Error::other("no target"));
    }
    // The source address the kernel puts on our packets.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect((targets[0], 9))?;
    let std::net::IpAddr::V4(src) = probe.local_addr()?.ip() else {
        return Err(io::Error::other("no IPv4 source address"));
    };
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mss = syn_options(Some(1460), None, false);
    let start = Instant::now();
    for i in 0..count {
        let dst = targets[(i % targets.len() as u64) as usize];
        let j = i / targets.len() as u64;
        let seg = Segment {
            src: (src, 10000 + (j / 65534) as u16).into(),
            dst: (dst, 1 + (j % 65534) as u16).into(),
            seq: i as u32,
            ack: 0,
            flags: flags::SYN,
            window: 64240,
            options: &mss,
            payload: &[],
        }
        .l4();
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address for the duration of the call.
        let r = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
            ) {
                return Err(e);
            }
        }
        if i % 250 == 0 {
            let due = std::time::Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    println!("sent {count} ms {}", start.elapsed().as_millis());
    Ok(())
}

/// What a port scanner does: `n` non-blocking connects to `target` (an address that never
/// answers), `rate` a second, each socket closed `hold_ms` after its connect without an
/// answer. A socket closed in SYN-SENT sends nothing, so the connects are simply abandoned.
/// Prints "scanned N in MS" once all are closed.
fn tcp_scan(target: &str, n: usize, hold_ms: u64, rate: u64) -> io::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use socket2::{Domain, Socket, Type};
    use std::time::Duration;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::other)?;
    if hard < n as u64 + 64 {
        return Err(io::Error::other(format!(
            "{n} sockets need RLIMIT_NOFILE {hard} raised"
        )));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::other)?;
    let target: std::net::SocketAddr = target.parse().map_err(io::Error::other)?;
    let hold = Duration::from_millis(hold_ms);
    let start = Instant::now();
    let mut open = std::collections::VecDeque::with_capacity(n);
    for i in 0..n {
        let due = Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        while open
            .front()
            .is_some_and(|(at, _): &(Instant, Socket)| at.elapsed() >= hold)
        {
            open.pop_front();
        }
        let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        s.set_nonblocking(true)?;
        match s.connect(&target.into()) {
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                open.push_back((Instant::now(), s))
            }
            other => return Err(io::Error::other(format!("connect #{i}: {other:?}"))),
        }
    }
    while let Some((at, s)) = open.pop_front() {
        if let Some(wait) = hold.checked_sub(at.elapsed()) {
            std::thread::sleep(wait);
        }
        drop(s);
    }
    println!("scanned {n} in {}", start.elapsed().as_millis());
    Ok(())
}

/// A server that accepts every connection and never reads from it, with a receive buffer as
/// small as the kernel allows, so a peer's data piles up on its own side.
fn tcp_unread(listen: &str) -> io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = listen.parse().map_err(io::Error::other)?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Inherited by the accepted sockets, and set before the handshake fixes the window scale.
    socket.set_recv_buffer_size(4096)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    let mut held = Vec::new();
    for conn in listener.incoming() {
        held.push(conn?);
    }
    Ok(())
}

/// `n` connections to `addr` (a server that never reads), each pushed full: data is written
/// to every one, round and round, until none has taken a byte for a second. Each socket's
/// send buffer is kept small, so what piles up is in the peer's window, not in this kernel.
/// Prints "connected N", then "stalled N pushed BYTES", then holds the connections open
/// until killed.
fn tcp_stall(addr: &str, n: usize) -> io::Result<()> {
    let mut conns = connect_many(addr, n, |s| s.set_send_buffer_size(64 * 1024))?;
    for conn in &conns {
        conn.set_nonblocking(true)?;
    }
    println!("connected {n}");
    io::stdout().flush()?;
    let mut chunk = vec![0u8; 64 * 1024];
    Pattern::new(CLIENT_SEED).fill(&mut chunk);
    let mut pushed = 0u64;
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < std::time::Duration::from_secs(1) {
        let mut progress = false;
        for conn in &mut conns {
            match conn.write(&chunk) {
                Ok(k) if k > 0 => {
                    pushed += k as u64;
                    progress = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if progress {
            last_progress = Instant::now();
        } else {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    println!("stalled {n} pushed {pushed}");
    io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// A server that writes to every connection it accepts, as fast as it goes, until the
/// connection fails.
fn tcp_flood(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            Pattern::new(SERVER_SEED).fill(&mut chunk);
            while conn.write_all(&chunk).is_ok() {}
        });
    }
    Ok(())
}

/// `n` connections to `addr` that are never read from, with receive buffers as small as the
/// kernel allows, so what the peer sends piles up on its side. Prints "connected N", then
/// holds them until killed.
fn tcp_hold_unread(addr: &str, n: usize) -> io::Result<()> {
    let _conns = connect_many(addr, n, |s| s.set_recv_buffer_size(4096))?;
    println!("connected {n}");
    io::stdout().flush()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// `n` connections to `addr`, each socket set up by `configure` before it connects (the
/// open-file limit raised to take them).
fn connect_many(
    addr: &str,
    n: usize,
    configure: impl Fn(&socket2::Socket) -> io::Result<()>,
) -> io::Result<Vec<TcpStream>> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use socket2::{Domain, Socket, Type};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::other)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::other)?;
    let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        configure(&s)?;
        s.connect(&target.into())?;
        conns.push(TcpStream::from(s));
    }
    Ok(conns)
}
