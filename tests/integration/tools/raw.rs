//! Hand-made frames and segments from inside the guest, built with usernet's test kit
//! (`usernet::testkit`): probes that bypass the guest kernel's routing (raw Ethernet frames on
//! tap0) and a SYN flood from a raw socket.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket,
};

/// A packet socket on `ifname` that sends frames to the gateway, and the interface's MAC.
struct Link {
    fd: std::os::fd::OwnedFd,
    index: u32,
    mac: smoltcp::wire::EthernetAddress,
}

impl Link {
    fn open(ifname: &str) -> io::Result<Link> {
        let mac_text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
        let mac = smoltcp::wire::EthernetAddress::from_bytes(
            &usernet::cli::parse_mac(mac_text.trim()).map_err(io::Error::other)?,
        );
        let index = nix::net::if_::if_nametoindex(ifname)?;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::empty(),
            None,
        )?;
        Ok(Link { fd, index, mac })
    }

    /// Send `frame` (a whole Ethernet frame of `ethertype`) to the gateway's MAC.
    fn send(&self, ethertype: smoltcp::wire::EthernetProtocol, frame: &[u8]) -> io::Result<()> {
        let gateway = usernet::net::VirtualNetwork::default().gateway_mac();
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = u16::from(ethertype).to_be();
        addr.sll_ifindex = self.index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(gateway.as_bytes());
        // SAFETY: frame and addr are live for the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// From inside the guest, write hand-made frames on `ifname` (bypassing the guest kernel's
/// routing): a TCP SYN and a UDP datagram to `port` at each destination, IPv4 or IPv6.
pub(super) fn raw_probe(ifname: &str, port: u16, dsts: &[&str]) -> io::Result<()> {
    use smoltcp::wire::{EthernetProtocol, IpProtocol};
    use usernet::testkit::{self, Segment, flags, syn_options};
    let net = usernet::net::VirtualNetwork::default();
    let link = Link::open(ifname)?;
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
            let buf = testkit::ethernet(link.mac, net.gateway_mac(), ethertype, &packet);
            link.send(ethertype, &buf)?;
        }
    }
    println!("probed {}", dsts.len());
    Ok(())
}

/// From inside the guest, write `count` IPv4 frames on `ifname` whose header checksum is
/// wrong (a UDP datagram to 198.18.0.1:9, one bit of its checksum flipped).
pub(super) fn raw_bad_checksum(ifname: &str, count: u32) -> io::Result<()> {
    use smoltcp::wire::{EthernetProtocol, IpProtocol};
    use usernet::testkit;
    let net = usernet::net::VirtualNetwork::default();
    let link = Link::open(ifname)?;
    let (src, dst): (std::net::IpAddr, std::net::IpAddr) =
        (net.guest.into(), [198, 18, 0, 1].into());
    let l4 = testkit::udp((src, 4000).into(), (dst, 9).into(), b"bad checksum");
    let mut packet = testkit::ip_packet(src, dst, IpProtocol::Udp, &l4);
    // The IPv4 header checksum is bytes 10 and 11.
    packet[11] ^= 1;
    let frame = testkit::ethernet(link.mac, net.gateway_mac(), EthernetProtocol::Ipv4, &packet);
    for _ in 0..count {
        link.send(EthernetProtocol::Ipv4, &frame)?;
    }
    println!("sent {count}");
    Ok(())
}

/// `count` TCP SYNs from a raw socket, `rate` a second, taking turns among `targets` (IPv4
/// addresses); each target sees distinct destination ports (1..65534, then the source port
/// moves on). Nothing answers them from here: the guest kernel resets any SYN-ACK. Prints
/// "sent N ms T".
pub(super) fn syn_flood(count: u64, rate: u64, targets: &[&str]) -> io::Result<()> {
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
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::Tcp,
    )?;
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
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
        match sendto(fd.as_raw_fd(), &seg, &to, MsgFlags::empty()) {
            Ok(_) | Err(Errno::ENOBUFS | Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
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
