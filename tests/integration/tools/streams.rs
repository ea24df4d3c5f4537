//! Full-speed TCP streams and how they end (the fault tests): connections streaming both ways
//! with every byte checked against its pattern, servers that reset them midway with data in
//! flight, and a paced exchange that lasts a known while. Each reports how each connection
//! ended (eof, reset, error, corrupt) and how much moved.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use super::pattern::{
    CLIENT_SEED, Pattern, SERVER_SEED, check, expected_hash, recv_exact_hash, send_pattern,
};
use super::tcp::listen_announce;

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
pub(super) fn tcp_streams(addr: &str, n: u64, download: bool) -> io::Result<()> {
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
pub(super) fn tcp_stream_server(listen: &str) -> io::Result<()> {
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
pub(super) fn tcp_reset_midway(listen: &str, min_sent: u64, min_received: u64) -> io::Result<()> {
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
pub(super) fn tcp_paced(addr: &str, bytes: u64, rate: u64) -> io::Result<()> {
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
