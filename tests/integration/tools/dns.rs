//! DNS load: bursts of distinct queries to usernet's forwarder, with the answers counted by
//! outcome and latency, and the datagrams the guest's kernel dropped for a full buffer.

use std::io;
use std::time::Instant;

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
/// servfail S other O missing M slow K max_ms X rcvbuf_drops D": slow ones took over two
/// seconds (an answer that waited for an upstream's timeouts, not one a loaded machine delayed); D answers arrived but found a full socket buffer (the guest's kernel counts them,
/// as UDP RcvbufErrors). Inside a namespace the buffer cannot be raised past rmem_max
/// (SO_RCVBUFFORCE needs the initial namespace's CAP_NET_ADMIN), so the queries are spread
/// over 16 sockets, each with its own buffer.
pub(super) fn dns_burst(addr: &str, n: u64) -> io::Result<()> {
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
    let slow = got.iter().filter(|(t, _)| t.as_millis() > 2000).count();
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
