//! The world's side: the process that sets up a world namespace's network and holds the
//! namespaces while a test runs (`world-holder`), and a watcher of everything that arrives on
//! one port on any of the world's addresses (`watch-any`).

use std::io::{self, Read, Write};
use std::net::TcpListener;

/// Set up the world's network and hold its namespaces until stdin closes. In a world whose
/// maps the test writes (`World::with_many_ids`), unshare(1) may exec us before they exist,
/// leaving us without capabilities: then wait for the test's "mapped" and exec again, as
/// root of the world.
pub(super) fn world_holder() -> io::Result<()> {
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
    if crate::needs::ipv6_available() {
        nl.add_ipv6_address("lo", crate::world::REMOTE6.parse().unwrap(), 128)?;
    }
    println!("ready");
    io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Report every TCP connection and UDP datagram arriving on `port`, on any IPv4 or IPv6
/// address of the world ("tcp FROM" / "udp FROM").
pub(super) fn watch_any(port: u16) -> io::Result<()> {
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
