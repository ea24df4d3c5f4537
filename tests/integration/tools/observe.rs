//! Guests that ask usernet about themselves: they make known flows, run `usernet flows` and
//! `usernet stats` (the real binary, against `$USERNET_STATE_DIR`) between steps, and print
//! what it said, one `LABEL JSON` line per look, for the test to check.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::pattern::Pattern;

fn usernet(args: &[&str]) -> io::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_usernet"))
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "usernet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Send `n` bytes of the pattern and read the echo back.
fn echo_round(conn: &mut TcpStream, n: usize) -> io::Result<()> {
    let mut data = vec![0u8; n];
    Pattern::new(n as u64).fill(&mut data);
    conn.write_all(&data)?;
    let mut back = vec![0u8; n];
    conn.read_exact(&mut back)?;
    if back != data {
        return Err(io::Error::other("the echo differs"));
    }
    Ok(())
}

/// A live TCP exchange with the echo server at `echo` (1000 bytes, a look, 50000 more, a
/// look), then a connection the server at `hello` has closed while we keep ours open, a UDP
/// round trip with `udp`, and a ping of `ping`; then a look at all of them (`flows3`, and as
/// text), and two lines of `usernet flows --json --watch=1`.
pub(super) fn observe_flows(echo: &str, hello: &str, udp: &str, ping: &str) -> io::Result<()> {
    let mut conn = TcpStream::connect(echo)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    println!("local {}", conn.local_addr()?);
    echo_round(&mut conn, 1000)?;
    println!("flows1 {}", usernet(&["flows", "--json"])?);
    echo_round(&mut conn, 50_000)?;
    println!("flows2 {}", usernet(&["flows", "--json"])?);

    let mut half = TcpStream::connect(hello)?;
    half.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut greeting = Vec::new();
    half.read_to_end(&mut greeting)?;
    println!("half {} read {}", half.local_addr()?, greeting.len());

    let datagrams = UdpSocket::bind("0.0.0.0:0")?;
    datagrams.connect(udp)?;
    datagrams.set_read_timeout(Some(Duration::from_secs(5)))?;
    datagrams.send(b"ping")?;
    let mut buf = [0u8; 64];
    let n = datagrams.recv(&mut buf)?;
    println!("udp {} got {n}", datagrams.local_addr()?);

    let pinged = Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "2", ping])
        .stdout(Stdio::null())
        .status()?;
    if !pinged.success() {
        return Err(io::Error::other("ping failed"));
    }
    println!("flows3 {}", usernet(&["flows", "--json"])?);
    for line in usernet(&["flows"])?.lines() {
        println!("text {line}");
    }

    let mut watch = Command::new(env!("CARGO_BIN_EXE_usernet"))
        .args(["flows", "--json", "--watch=1"])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = watch
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut lines = BufReader::new(out).lines();
    for _ in 0..2 {
        let line = lines
            .next()
            .ok_or_else(|| io::Error::other("watch ended"))??;
        println!("watch {line}");
    }
    watch.kill()?;
    watch.wait()?;
    drop((conn, half, datagrams));
    io::stdout().flush()
}

/// Counters before and after three events: a frame with a bad IPv4 checksum, a connect the
/// policy refuses (`refused`), and a connect past --max-tcp-flows 1 (to `echo`, while one
/// connection to it is held).
pub(super) fn observe_counters(echo: &str, refused: &str) -> io::Result<()> {
    println!(
        "before {}",
        usernet(&["stats", "--json"])?.replace('\n', "")
    );
    super::raw::raw_bad_checksum("tap0", 1)?;
    let target = refused.parse().map_err(io::Error::other)?;
    match TcpStream::connect_timeout(&target, Duration::from_secs(10)) {
        Ok(_) => return Err(io::Error::other("the policy let a connect through")),
        Err(e) => println!("policy {:?}", e.kind()),
    }
    let held = TcpStream::connect(echo)?;
    match TcpStream::connect(echo) {
        Ok(_) => return Err(io::Error::other("a second flow past --max-tcp-flows 1")),
        Err(e) => println!("bound {:?}", e.kind()),
    }
    // Frames are counted as they arrive; a look right after sending them may come first.
    std::thread::sleep(Duration::from_millis(200));
    println!("after {}", usernet(&["stats", "--json"])?.replace('\n', ""));
    println!("flows {}", usernet(&["flows", "--json"])?);
    for line in usernet(&["stats"])?.lines() {
        println!("text {line}");
    }
    drop(held);
    io::stdout().flush()
}

/// A client of a published port: 1000 bytes there and back through `addr`, then a look at
/// the flows of the usernet with state dir `state` while the connection is open.
pub(super) fn observe_inbound(addr: &str, state: &str) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    println!("local {}", conn.local_addr()?);
    echo_round(&mut conn, 1000)?;
    println!(
        "flows {}",
        usernet(&["flows", "--json", "--state-dir", state])?
    );
    io::stdout().flush()
}

/// One TCP exchange with an echo server: `bytes` of the pattern there and back, then our
/// FIN and the server's.
pub(super) fn tcp_exchange(addr: &str, bytes: u64) -> io::Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    println!("local {}", conn.local_addr()?);
    echo_round(&mut conn, bytes as usize)?;
    let mut data = vec![0u8; bytes as usize];
    Pattern::new(bytes).fill(&mut data);
    println!("sha256 {}", super::pattern::hex(&Sha256::digest(&data)));
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    println!("exchanged {bytes}");
    io::stdout().flush()
}
