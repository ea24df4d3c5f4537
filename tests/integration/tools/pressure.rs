//! TCP tools that push usernet to its bounds (the limits and fault tests): many connections
//! held open or left pending, a port scan, flows whose peer never reads (stalled, unread,
//! flooded), each checking that what should still work does.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use super::pattern::{CLIENT_SEED, Pattern, SERVER_SEED};
use super::tcp::listen_announce;

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
pub(super) fn tcp_hold(addr: &str, n: usize) -> io::Result<()> {
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
    connect_again(addr, 10, 20);
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
pub(super) fn tcp_pending(echo: &str, blackhole: &str, n: usize) -> io::Result<()> {
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
    connect_again(echo, 20, 50);
    Ok(())
}

/// Connect to `addr` every `pause_ms` until it works or `give_up_secs` have passed:
/// "after connected", or "after KIND" with the last error.
fn connect_again(addr: &str, give_up_secs: u64, pause_ms: u64) {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => {
                println!("after connected");
                break;
            }
            Err(e) if start.elapsed().as_secs() >= give_up_secs => {
                println!("after {:?}", e.kind());
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(pause_ms)),
        }
    }
}

/// What a port scanner does: `n` non-blocking connects to `target` (an address that never
/// answers), `rate` a second, each socket closed `hold_ms` after its connect without an
/// answer. A socket closed in SYN-SENT sends nothing, so the connects are simply abandoned.
/// Prints "scanned N in MS" once all are closed.
pub(super) fn tcp_scan(target: &str, n: usize, hold_ms: u64, rate: u64) -> io::Result<()> {
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
pub(super) fn tcp_unread(listen: &str) -> io::Result<()> {
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
pub(super) fn tcp_stall(addr: &str, n: usize) -> io::Result<()> {
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
pub(super) fn tcp_flood(listen: &str) -> io::Result<()> {
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
pub(super) fn tcp_hold_unread(addr: &str, n: usize) -> io::Result<()> {
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
