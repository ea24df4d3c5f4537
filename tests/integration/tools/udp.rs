//! UDP clients and servers: echo, who-am-I and silent servers, clients that check every
//! datagram's echo, NAT entry expiry, the flow bound (conversations, bursts of new flows and
//! sinks that count them), floods, and a watcher of ICMP errors for a peer that went away.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use super::pattern::{Pattern, check};

/// `n` UDP conversations with an echo server at `addr`, then one more flow ("extra ..."),
/// then each conversation again from the same socket ("again ...").
pub(super) fn udp_conversations(addr: &str, n: usize) -> io::Result<()> {
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

fn udp_bind_announce(listen: &str) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen)?;
    println!("listening {}", socket.local_addr()?);
    io::stdout().flush()?;
    Ok(socket)
}

/// Echo every datagram back to its sender.
pub(super) fn udp_echo(listen: &str) -> io::Result<()> {
    let socket = udp_bind_announce(listen)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], from)?;
    }
}

/// Answer every datagram with the sender's address, as text.
pub(super) fn udp_whoami(listen: &str) -> io::Result<()> {
    let socket = udp_bind_announce(listen)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (_, from) = socket.recv_from(&mut buf)?;
        socket.send_to(from.to_string().as_bytes(), from)?;
    }
}

/// Take datagrams and never answer (a dead resolver that does not even refuse).
pub(super) fn udp_blackhole(listen: &str) -> io::Result<()> {
    let _socket = udp_bind_announce(listen)?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// `count` datagrams of mixed sizes up to `max`, one at a time, each echoed back intact and
/// from the address it was sent to.
pub(super) fn udp_client(addr: &str, count: u64, max: usize) -> io::Result<()> {
    let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let socket = client_socket(target)?;
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
pub(super) fn udp_ask(addr: &str, local_port: Option<u16>) -> io::Result<()> {
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
pub(super) fn udp_expiry(addr: &str, timeout_secs: u64) -> io::Result<()> {
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
pub(super) fn udp_burst(host: &str, first_port: u16, ports: u16, sockets: u64) -> io::Result<()> {
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
pub(super) fn udp_sink(host: &str, first_port: u16, ports: u16, target: u64) -> io::Result<()> {
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

/// Datagrams of `size` bytes to `addr` from one socket, as fast as they go, for `seconds`.
pub(super) fn udp_flood(addr: &str, seconds: u64, size: usize) -> io::Result<()> {
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
pub(super) fn udp_hold(addr: &str) -> io::Result<()> {
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
pub(super) fn udp_watch(listen: &str) -> io::Result<()> {
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

/// One `UDP_SEGMENT` send of `count` datagrams of `segment` bytes to an echo server at `addr`
/// (the guest kernel hands it to tap0 as one super-datagram when tap0 offers UDP
/// segmentation); every datagram must come back, by content. Prints `OK COUNT`.
pub(super) fn udp_gso_echo(addr: &str, segment: usize, count: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    /// `UDP_SEGMENT` from linux/udp.h (not in the libc crate for glibc).
    const UDP_SEGMENT: libc::c_int = 103;
    let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
    let socket = client_socket(target)?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    let size = segment as libc::c_int;
    // SAFETY: setsockopt reads one int from `size`, which lives across the call.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut data = vec![0u8; segment * count];
    Pattern::new(77).fill(&mut data);
    socket.send(&data)?;
    let mut seen = vec![false; count];
    let mut buf = vec![0u8; 65536];
    for _ in 0..count {
        let n = socket.recv(&mut buf).map_err(|e| {
            io::Error::other(format!(
                "{} of {count} echoes: {e}",
                seen.iter().filter(|s| **s).count()
            ))
        })?;
        let which = data
            .chunks(segment)
            .position(|chunk| chunk == &buf[..n])
            .ok_or_else(|| {
                io::Error::other(format!("an echo of {n} bytes matches no datagram sent"))
            })?;
        if std::mem::replace(&mut seen[which], true) {
            return Err(io::Error::other(format!("datagram #{which} echoed twice")));
        }
    }
    println!("OK {count}");
    Ok(())
}

/// A UDP socket on an ephemeral port of `target`'s family.
fn client_socket(target: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    std::net::UdpSocket::bind(if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
}
