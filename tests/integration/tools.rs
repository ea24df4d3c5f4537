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

/// Set up the world's network and hold its namespaces until stdin closes.
fn world_holder() -> io::Result<()> {
    let mut nl = usernet::netconf::Netlink::open()?;
    nl.link_up("lo")?;
    nl.add_ipv4_address("lo", crate::world::REMOTE.parse().unwrap(), 32)?;
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
