//! The host's resolver configuration, and the one usernet gives the namespace.
//!
//! usernet forwards DNS to the host's resolvers: every `nameserver` of `/etc/resolv.conf`
//! (IPv4 or IPv6, loopback ones included, since the forwarding runs in the host's network
//! namespace), unless `--dns-upstream` names others. The namespace gets a resolv.conf that
//! points at the forwarder (10.0.2.3) and keeps the host's search domains and options.

use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;

/// Where the host keeps its resolver configuration.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The parts of a resolv.conf that usernet uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parse resolv.conf text. Unknown lines and bad addresses are skipped, as the C library
    /// does.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(addr) = words.next().and_then(parse_nameserver) {
                        conf.nameservers.push(addr);
                    }
                }
                // The last of "domain" and "search" wins.
                Some("domain") => conf.search = words.take(1).map(String::from).collect(),
                Some("search") => conf.search = words.map(String::from).collect(),
                Some("options") => conf.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        conf
    }

    /// Read and parse a file; a missing or unreadable file is an empty configuration.
    pub fn read(path: &Path) -> ResolvConf {
        fs::read_to_string(path)
            .map(|t| ResolvConf::parse(&t))
            .unwrap_or_default()
    }

    /// The resolv.conf for the namespace: our forwarder's addresses, then the host's search
    /// list and options.
    pub fn for_guest(&self, forwarders: &[IpAddr]) -> String {
        let mut out = String::new();
        for f in forwarders {
            out.push_str(&format!("nameserver {f}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// A `nameserver` value: an IPv4 or IPv6 address, the latter with an optional `%scope`.
fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (addr, scope) = s.split_once('%')?;
    let ip: Ipv6Addr = addr.parse().ok()?;
    let scope_id = scope
        .parse::<u32>()
        .ok()
        .or_else(|| nix::net::if_::if_nametoindex(scope).ok())?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope_id)))
}

/// Parse a `--dns-upstream` value: `ADDR`, `ADDR:PORT` (IPv4) or `[ADDR]:PORT` (IPv6).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, BadUpstream> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(BadUpstream(s.into()))
}

/// A `--dns-upstream` that is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an address like 192.0.2.1, 192.0.2.1:5353 or [2001:db8::1]:53")]
pub struct BadUpstream(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_yields_all_nameservers_search_and_options() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver fe80::1%1\n\
                    nameserver bogus\ndomain first.example\nsearch a.example b.example ; tail\n\
                    options ndots:2 edns0\noptions trust-ad\n";
        let c = ResolvConf::parse(text);
        assert_eq!(c.nameservers.len(), 3);
        assert_eq!(c.nameservers[0], "127.0.0.53:53".parse().unwrap());
        assert_eq!(c.nameservers[1], "[::1]:53".parse().unwrap());
        assert!(matches!(c.nameservers[2], SocketAddr::V6(v6) if v6.scope_id() == 1));
        assert_eq!(c.search, ["a.example", "b.example"]);
        assert_eq!(c.options, ["ndots:2", "edns0", "trust-ad"]);
        assert_eq!(
            c.for_guest(&["10.0.2.3".parse().unwrap()]),
            "nameserver 10.0.2.3\nsearch a.example b.example\noptions ndots:2 edns0 trust-ad\n"
        );
    }

    #[test]
    fn upstream_flags_accept_ports_and_ipv6() {
        assert_eq!(
            parse_upstream("192.0.2.1").unwrap(),
            "192.0.2.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("192.0.2.1:5353").unwrap(),
            "192.0.2.1:5353".parse().unwrap()
        );
        assert_eq!(parse_upstream("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert_eq!(
            parse_upstream("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert!(parse_upstream("resolver.example").is_err());
    }
}
