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
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
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
    let socket = std::net::UdpSocket::bind(("0.0.0.0", local_port.unwrap_or(0)))?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
    socket.connect(addr)?;
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
