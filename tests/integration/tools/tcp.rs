//! TCP clients and servers that check what they carry: the exchange of the throughput tests,
//! connects and their timing, resets both ways, echo, greeting and peer-address servers.
//!
//! Wire protocol of the exchange (`tcp-server`, `tcp-client`, `tcp-many`): the client sends
//! `SEND` bytes of a seeded pseudo-random pattern and shuts down its write side; the server
//! answers with `RECV` bytes of another pattern followed by a trailer line
//! `RECV <count> <sha256 of what it received>`. In duplex mode both sides send at once;
//! otherwise the server answers only after the client's FIN, so the client keeps receiving
//! after its shutdown. Both directions are checked by SHA-256.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::pattern::{
    CLIENT_SEED, SERVER_SEED, check, expected_hash, hex, recv_exact_hash, send_pattern,
};

pub(super) fn tcp_server(listen: &str, send: u64, duplex: bool) -> io::Result<()> {
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

pub(super) fn serve(conn: TcpStream, send: u64, duplex: bool) -> io::Result<()> {
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
pub(super) fn tcp_client(
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

/// Try to connect and report how it went and how long it took.
pub(super) fn tcp_connect(addr: &str) -> io::Result<()> {
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
pub(super) fn tcp_many(addr: &str, n: u64, bytes: u64) -> io::Result<()> {
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

pub(super) fn listen_announce(listen: &str) -> io::Result<TcpListener> {
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
pub(super) fn tcp_reset_server(listen: &str) -> io::Result<()> {
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
pub(super) fn tcp_read_until_end(addr: &str) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    let (total, r) = read_to_end_or_error(&mut conn);
    println!("{} {total}", ending(r));
    Ok(())
}

/// Accept one connection, read until it ends, print how it ended.
pub(super) fn tcp_watch(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    let (mut conn, _) = listener.accept()?;
    let (total, r) = read_to_end_or_error(&mut conn);
    println!("{} {total}", ending(r));
    io::stdout().flush()
}

/// Connect, send a little, then abort the connection (RST instead of FIN).
pub(super) fn tcp_abort(addr: &str) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.write_all(b"some bytes before the reset")?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO))?;
    drop(conn);
    println!("aborted");
    Ok(())
}

/// Each connection gets "hello" and is closed by the server first.
pub(super) fn tcp_hello(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.write_all(b"hello\n");
    }
    Ok(())
}

/// Connect `n` times in a row from the same local port, each time after the server closed
/// the previous connection; print the slowest connect in ms.
pub(super) fn tcp_reuse_port(addr: &str, port: u16, n: u64) -> io::Result<()> {
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
pub(super) fn tcp_peer(listen: &str) -> io::Result<()> {
    let listener = listen_announce(listen)?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        println!("peer {}", conn.peer_addr()?);
        io::stdout().flush()?;
    }
    Ok(())
}

/// Wait (up to 10 s) until something accepts TCP connections at `addr`.
pub(super) fn tcp_wait(addr: &str) -> io::Result<()> {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed().as_secs() >= 10 => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Echo everything on every connection, each on a thread of its own.
pub(super) fn tcp_echo(listen: &str) -> io::Result<()> {
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
