//! Interface configuration inside a network namespace, over rtnetlink: bring links up, set MTU,
//! txqueuelen and MAC, add addresses and routes.
//!
//! This is what `ip link`/`ip addr`/`ip route` would do, done in-process so the launcher needs
//! no iproute2 and no extra process. It runs in whatever network namespace the calling thread
//! is in (the child's, for `usernet run`). Message encoding is left to `netlink-packet-route`;
//! this module only builds requests and turns the kernel's answer into an `io::Error` that
//! says what was being done.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Settings applied to one link in a single RTM_SETLINK request.
#[derive(Debug, Default, Clone)]
pub struct LinkSettings {
    pub up: bool,
    pub mtu: Option<u32>,
    pub txqueuelen: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// An rtnetlink connection in the current network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 8192],
        })
    }

    /// Apply `settings` to the link called `name`.
    pub fn set_link(&mut self, name: &str, settings: &LinkSettings) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex(name)?;
        if settings.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        if let Some(mtu) = settings.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(q) = settings.txqueuelen {
            msg.attributes.push(LinkAttribute::TxQueueLen(q));
        }
        if let Some(mac) = settings.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
            .map_err(|e| annotate(e, format!("configuring link {name}")))
    }

    /// Bring the link called `name` up.
    pub fn link_up(&mut self, name: &str) -> io::Result<()> {
        self.set_link(
            name,
            &LinkSettings {
                up: true,
                ..Default::default()
            },
        )
    }

    /// Add `addr/prefix` to the link called `name` (with the subnet's broadcast address).
    pub fn add_ipv4_address(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = ifindex(name)?;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        if prefix < 31 {
            let host_mask = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            let bcast = Ipv4Addr::from(u32::from(addr) | host_mask);
            msg.attributes.push(AddressAttribute::Broadcast(bcast));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| annotate(e, format!("adding address {addr}/{prefix} to {name}")))
    }

    /// Add `default via gateway dev name` to the main table.
    pub fn add_default_ipv4_route(&mut self, name: &str, gateway: Ipv4Addr) -> io::Result<()> {
        self.add_default_route(name, IpAddr::V4(gateway))
    }

    /// Add `addr/prefix` to the link called `name` without duplicate address detection, so it
    /// is usable at once (nobody else on the link can hold it: the other end is us).
    pub fn add_ipv6_address(&mut self, name: &str, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.prefix_len = prefix;
        msg.header.index = ifindex(name)?;
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V6(addr)));
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| annotate(e, format!("adding address {addr}/{prefix} to {name}")))
    }

    /// Add `default via gateway dev name` to the main IPv6 table (`gateway` may be
    /// link-local: the route names the link).
    pub fn add_default_ipv6_route(&mut self, name: &str, gateway: Ipv6Addr) -> io::Result<()> {
        self.add_default_route(name, IpAddr::V6(gateway))
    }

    fn add_default_route(&mut self, name: &str, gateway: IpAddr) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        let (family, via) = match gateway {
            IpAddr::V4(g) => (AddressFamily::Inet, RouteAddress::Inet(g)),
            IpAddr::V6(g) => (AddressFamily::Inet6, RouteAddress::Inet6(g)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Gateway(via));
        msg.attributes.push(RouteAttribute::Oif(ifindex(name)?));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|e| annotate(e, format!("adding default route via {gateway} on {name}")))
    }

    /// Give the link `name` the guest's side of the IPv6 network `v6`: its address (::100/64,
    /// usable at once) and the default route via fe80::2 (see [`prepare_guest_ipv6`]).
    /// Either already in place is fine.
    pub fn add_guest_ipv6(&mut self, name: &str, v6: &crate::net::Ipv6Network) -> io::Result<()> {
        ignore_exists(self.add_ipv6_address(name, v6.guest, crate::net::IPV6_PREFIX_LEN))?;
        ignore_exists(self.add_default_ipv6_route(name, v6.router))
    }

    /// Add `local default dev lo table TABLE` for `v6` or IPv4: everything routed by that
    /// table is delivered to this host. Already present is fine.
    pub fn add_local_default_route(&mut self, table: u32, v6: bool) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Host;
        msg.header.kind = RouteType::Local;
        msg.attributes.push(RouteAttribute::Table(table));
        msg.attributes.push(RouteAttribute::Oif(ifindex("lo")?));
        ignore_exists(self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
        .map_err(|e| annotate(e, format!("adding a local default route to table {table}")))
    }

    /// Add a policy rule sending packets that match `selector` to `table`, at `priority`.
    /// Already present is fine.
    pub fn add_rule(
        &mut self,
        selector: &RuleSelector,
        table: u32,
        priority: u32,
    ) -> io::Result<()> {
        let mut msg = RuleMessage::default();
        let v6 = match selector {
            RuleSelector::FwMark { v6, .. } => *v6,
            RuleSelector::UdpFrom { source, .. } => source.is_ipv6(),
        };
        msg.header.family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = RouteHeader::RT_TABLE_UNSPEC;
        msg.header.action = RuleAction::ToTable;
        msg.attributes.push(RuleAttribute::Table(table));
        msg.attributes.push(RuleAttribute::Priority(priority));
        match selector {
            RuleSelector::FwMark { mark, .. } => msg.attributes.push(RuleAttribute::FwMark(*mark)),
            RuleSelector::UdpFrom { source, port } => {
                msg.header.src_len = if source.is_ipv6() { 128 } else { 32 };
                msg.attributes.push(RuleAttribute::Source(*source));
                msg.attributes.push(RuleAttribute::IpProtocol(
                    netlink_packet_route::IpProtocol::Udp,
                ));
                msg.attributes
                    .push(RuleAttribute::SourcePortRange(RulePortRange {
                        start: *port,
                        end: *port,
                    }));
            }
        }
        ignore_exists(self.request(RouteNetlinkMessage::NewRule(msg), NLM_F_CREATE | NLM_F_EXCL))
            .map_err(|e| annotate(e, format!("adding a policy rule to table {table}")))
    }

    /// Send one request and wait for its acknowledgement.
    fn request(&mut self, payload: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let len = msg.buffer_len();
        if len > self.buf.len() {
            return Err(io::Error::other("netlink request too large"));
        }
        msg.serialize(&mut self.buf[..len]);
        self.socket.send(&self.buf[..len], 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
                let step = reply.header.length as usize;
                if reply.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(err) = &reply.payload
                {
                    return match err.code {
                        None => Ok(()),
                        Some(_) => Err(err.to_io()),
                    };
                }
                if step == 0 {
                    break;
                }
                offset += step;
            }
        }
    }
}

/// Get the link `name` ready for the guest's IPv6 address before it goes up: router
/// advertisements and duplicate address detection are turned off on it, so the kernel
/// neither adds a second, autoconfigured address beside the one we give it
/// ([`Netlink::add_guest_ipv6`]) nor holds the link's addresses back for a second. These are
/// sysctls; where /proc/sys cannot be written they stay on, which only costs that second and
/// an extra address.
pub fn prepare_guest_ipv6(name: &str) {
    for (key, value) in [("accept_ra", "0"), ("accept_dad", "0")] {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/{key}");
        if let Err(e) = std::fs::write(&path, value) {
            log::debug!("cannot set {path} to {value}: {e}");
        }
    }
}

/// The index of the link called `name` in the current network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("no network interface {name}"),
        )
    })
}

/// Which packets a policy rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSelector {
    /// Packets carrying this firewall mark.
    FwMark { mark: u32, v6: bool },
    /// UDP packets from this address and port.
    UdpFrom { source: IpAddr, port: u16 },
}

/// Already present is fine (errors keep their kind through [`annotate`], not their errno).
pub fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Validate a Linux interface name: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

#[cfg(test)]
mod tests {
    use super::valid_ifname;

    #[test]
    fn interface_names_follow_kernel_rules() {
        assert!(valid_ifname("tap0"));
        assert!(valid_ifname("a-long-name-15c"));
        assert!(!valid_ifname("a-long-name-16ch"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }
}
