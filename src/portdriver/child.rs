//! The child end of the builtin port driver: it serves `STATE_DIR/.bp.sock` from inside the
//! namespaces, dials what the parent asks for in the child's network namespace, and hands the
//! connected socket back over `SCM_RIGHTS`.
//!
//! Each request is served on a thread of its own (a dial may take time; the supervisor loop
//! that accepts must not wait for it). With a detached network namespace (rootlesskit's
//! `--detach-netns`, where COMMAND's own network is the caller's) that thread first joins the
//! namespace usernet serves, so every dial, and the routing set up for transparency, happens
//! there; the rest of the process stays where it is.
//!
//! # The client's real address
//!
//! When the parent says who the outside client is (`SourceIP`/`SourcePort`, not loopback),
//! the dial is made *from* that address with `IP_TRANSPARENT`, so the server inside sees the
//! real client. The replies must then come back to our socket instead of leaving through
//! tap0. rootlesskit uses iptables CONNMARK for that; we need no iptables, only routing in the
//! child's own network namespace, set up on first use:
//! - table 100 says "everything is local" (`local default dev lo`);
//! - TCP: our socket carries firewall mark 100, a rule sends marked packets to table 100, and
//!   `net.ipv4.tcp_fwmark_accept=1` makes the server's accepted socket inherit the mark, so
//!   its replies follow;
//! - UDP has no accepted socket to carry a mark, so a rule per service sends UDP *from* the
//!   service's loopback address and port to table 100. Loopback sources never leave the
//!   namespace anyway, so the rule changes nothing else; services on other addresses get no
//!   transparency for UDP.
//!
//! If any of it is refused, the dial falls back to an ordinary one, and that is logged once.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::msg::{self, FD_PAYLOAD, Reply, Request, TYPE_CONNECT, TYPE_INIT};
use crate::fdpass;
use crate::netconf::{Netlink, RuleSelector};

/// Routing table and firewall mark of the transparency setup.
const TRANSPARENT_TABLE: u32 = 100;
const TRANSPARENT_MARK: u32 = 100;
const RULE_PRIORITY_MARK: u32 = 100;
const RULE_PRIORITY_UDP: u32 = 101;
/// Requests served at once; more get an error reply.
const MAX_IN_FLIGHT: usize = 512;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The listening `.bp.sock` and what every request handler shares.
pub struct ChildServer {
    listener: UnixListener,
    shared: Arc<Shared>,
}

struct Shared {
    transparency: Mutex<Transparency>,
    in_flight: AtomicUsize,
    /// The network namespace to dial in, when it is not this process's own.
    netns: Option<OwnedFd>,
}

#[derive(Default)]
struct Transparency {
    /// Whether the routing for each family is in place (`None`: not tried yet).
    ready_v4: Option<bool>,
    ready_v6: Option<bool>,
    udp_rules: HashSet<(IpAddr, u16)>,
    warned: bool,
}

impl ChildServer {
    /// Listen on `path` (which must not exist: the state dir removed a stale one), private
    /// to the user. Dials happen in `netns` if given (a namespace file), else in this
    /// process's network namespace.
    pub fn bind(path: &Path, netns: Option<OwnedFd>) -> io::Result<ChildServer> {
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ChildServer {
            listener,
            shared: Arc::new(Shared {
                transparency: Mutex::new(Transparency::default()),
                in_flight: AtomicUsize::new(0),
                netns,
            }),
        })
    }

    /// rootlesskit's readiness signal: open the FIFO for writing, write nothing, close.
    pub fn signal_ready(fifo: &Path) -> io::Result<()> {
        std::fs::OpenOptions::new().write(true).open(fifo).map(drop)
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Accept every pending connection and serve each on its own thread.
    pub fn accept_all(&self) {
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    let shared = self.shared.clone();
                    if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                        let _ = reply_error(&conn, "too many requests in flight");
                        continue;
                    }
                    let spawned =
                        std::thread::Builder::new()
                            .name("bp-request".into())
                            .spawn(move || {
                                serve(conn, &shared);
                                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                            });
                    if spawned.is_err() {
                        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
}

fn serve(conn: UnixStream, shared: &Shared) {
    if let Some(netns) = &shared.netns
        && let Err(e) = nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
    {
        let _ = reply_error(&conn, &format!("cannot enter the network namespace: {e}"));
        return;
    }
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let body = match msg::read_frame(&mut &conn) {
        Ok(b) => b,
        Err(e) => {
            let _ = reply_error(&conn, &e.to_string());
            return;
        }
    };
    let request = match msg::parse_request(&body) {
        Ok(r) => r,
        Err(e) => {
            let _ = reply_error(&conn, &e.to_string());
            return;
        }
    };
    match request.kind.as_str() {
        TYPE_INIT => {
            let _ = msg::write_frame(&mut &conn, &serde_json::Value::Null);
        }
        TYPE_CONNECT => match dial(&request, shared) {
            Ok(fd) => {
                let _ = fdpass::send_fd(conn.as_fd(), FD_PAYLOAD, fd.as_fd());
            }
            Err(e) => {
                let _ = reply_error(&conn, &e.to_string());
            }
        },
        other => {
            let _ = reply_error(&conn, &format!("unknown request type {other:?}"));
        }
    }
}

fn reply_error(mut conn: &UnixStream, error: &str) -> io::Result<()> {
    msg::write_frame(
        &mut conn,
        &Reply {
            error: error.to_string(),
        },
    )?;
    conn.flush()
}

/// Where a request's connection goes inside the namespace: the child IP if given; otherwise
/// the parent's listening address when that is a loopback address (so `-p 127.0.0.2:...`
/// reaches 127.0.0.2, as in rootlesskit), else 127.0.0.1.
fn target_ip(request: &Request) -> Result<IpAddr, DialError> {
    if !request.ip.is_empty() {
        return request
            .ip
            .parse()
            .map_err(|_| DialError::Ip(request.ip.clone()));
    }
    match request.parent_ip.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// Why a connect request failed, as the parent (and rootlesskit's) error reply words it.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("unknown proto: {0:?}")]
    Proto(String),
    #[error("invalid port: {0}")]
    Port(i64),
    #[error("invalid IP: {0:?}")]
    Ip(String),
    /// Go's `net.Dial` words it "dial tcp 127.0.0.1:80: connect: connection refused".
    #[error("dial {net} {target}: connect: {errno}")]
    Connect {
        net: &'static str,
        target: SocketAddr,
        errno: String,
    },
}

/// Dial what `request` asks for, transparently from the client's address when possible.
fn dial(request: &Request, shared: &Shared) -> Result<OwnedFd, DialError> {
    let udp = match request.proto.as_str() {
        "tcp" | "tcp4" | "tcp6" => false,
        "udp" | "udp4" | "udp6" => true,
        other => return Err(DialError::Proto(other.into())),
    };
    let port = u16::try_from(request.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(DialError::Port(request.port))?;
    let target = SocketAddr::new(target_ip(request)?, port);
    let net = if udp { "udp" } else { "tcp" };
    let source = source_of(request).filter(|s| s.is_ipv4() == target.is_ipv4());
    if let Some(source) = source
        && transparency_ready(shared, target, udp)
    {
        match dial_transparent(source, target, udp) {
            Ok(fd) => return Ok(fd),
            Err(e) => {
                log::debug!("transparent dial from {source} to {target} failed, falling back: {e}")
            }
        }
    }
    dial_plain(target, udp).map_err(|e| DialError::Connect {
        net,
        target,
        errno: go_errno(&e),
    })
}

/// The outside client's address, when there is one worth preserving.
fn source_of(request: &Request) -> Option<SocketAddr> {
    let ip: IpAddr = request.source_ip.parse().ok()?;
    let port = u16::try_from(request.source_port)
        .ok()
        .filter(|p| *p != 0)?;
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(SocketAddr::new(ip, port))
}

/// Make sure the routing for a transparent dial to `target` is in place.
fn transparency_ready(shared: &Shared, target: SocketAddr, udp: bool) -> bool {
    let Ok(mut t) = shared.transparency.lock() else {
        return false;
    };
    let v6 = target.is_ipv6();
    let known = if v6 { t.ready_v6 } else { t.ready_v4 };
    let ready = match known {
        Some(r) => r,
        None => {
            let r = match setup_family(v6) {
                Ok(()) => true,
                Err(e) => {
                    warn_once(&mut t, &e.to_string());
                    false
                }
            };
            if v6 {
                t.ready_v6 = Some(r);
            } else {
                t.ready_v4 = Some(r);
            }
            r
        }
    };
    let ready = Some(ready);
    if ready != Some(true) {
        return false;
    }
    if !udp {
        return true;
    }
    if !target.ip().is_loopback() {
        return false;
    }
    let key = (target.ip(), target.port());
    if t.udp_rules.contains(&key) {
        return true;
    }
    let added = Netlink::open().and_then(|mut nl| {
        let selector = RuleSelector::UdpFrom {
            source: target.ip(),
            port: target.port(),
        };
        nl.add_rule(&selector, TRANSPARENT_TABLE, RULE_PRIORITY_UDP)
    });
    match added {
        Ok(()) => {
            t.udp_rules.insert(key);
            true
        }
        Err(e) => {
            warn_once(&mut t, &e.to_string());
            false
        }
    }
}

fn warn_once(t: &mut Transparency, why: &str) {
    if !t.warned {
        t.warned = true;
        log::warn!(
            "cannot preserve client source addresses on published ports ({why}); the service inside sees connections from loopback"
        );
    }
}

/// Table 100 ("everything is local"), the mark rule, and mark inheritance on accept.
fn setup_family(v6: bool) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    nl.add_local_default_route(TRANSPARENT_TABLE, v6)?;
    let selector = RuleSelector::FwMark {
        mark: TRANSPARENT_MARK,
        v6,
    };
    nl.add_rule(&selector, TRANSPARENT_TABLE, RULE_PRIORITY_MARK)?;
    // Replies the kernel makes itself carry the mark of what they answer, so the reset from a
    // port where nothing listens comes back to our socket too (without it the SYN is retried
    // until the connect times out).
    let reflect = if v6 {
        "/proc/sys/net/ipv6/fwmark_reflect"
    } else {
        "/proc/sys/net/ipv4/fwmark_reflect"
    };
    for (path, name) in [
        (
            "/proc/sys/net/ipv4/tcp_fwmark_accept",
            "net.ipv4.tcp_fwmark_accept",
        ),
        (reflect, "fwmark_reflect"),
    ] {
        std::fs::write(path, "1").map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
    }
    Ok(())
}

fn dial_transparent(source: SocketAddr, target: SocketAddr, udp: bool) -> io::Result<OwnedFd> {
    let (ty, proto) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let socket = Socket::new(Domain::for_address(target), ty.cloexec(), Some(proto))?;
    if target.is_ipv6() {
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    if !udp {
        socket.set_mark(TRANSPARENT_MARK)?;
    }
    socket.bind(&SockAddr::from(source))?;
    if udp {
        socket.connect(&SockAddr::from(target))?;
    } else {
        socket.connect_timeout(&SockAddr::from(target), CONNECT_TIMEOUT)?;
    }
    Ok(socket.into())
}

fn dial_plain(target: SocketAddr, udp: bool) -> io::Result<OwnedFd> {
    if udp {
        let any: SocketAddr = if target.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .expect("valid literal");
        let socket = UdpSocket::bind(any)?;
        socket.connect(target)?;
        Ok(socket.into())
    } else {
        Ok(TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?.into())
    }
}

/// An error the way Go prints it ("connection refused", not "Connection refused (os error
/// 111)"), so messages read like rootlesskit's.
fn go_errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_lowercase(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ip: &str, parent_ip: &str) -> Request {
        Request {
            ip: ip.into(),
            parent_ip: parent_ip.into(),
            ..Default::default()
        }
    }

    #[test]
    fn target_defaults_to_loopback_or_the_parents_loopback_address() {
        assert_eq!(
            target_ip(&req("", "")).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            target_ip(&req("", "0.0.0.0")).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            target_ip(&req("", "::")).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            target_ip(&req("", "192.0.2.5")).unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            target_ip(&req("", "127.0.0.2")).unwrap(),
            "127.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            target_ip(&req("", "::1")).unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            target_ip(&req("10.0.2.100", "127.0.0.2")).unwrap(),
            "10.0.2.100".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            target_ip(&req("not-an-ip", "")).unwrap_err().to_string(),
            "invalid IP: \"not-an-ip\""
        );
    }

    #[test]
    fn loopback_clients_are_not_transparent() {
        let mut r = Request {
            source_ip: "127.0.0.1".into(),
            source_port: 4000,
            ..Default::default()
        };
        assert_eq!(source_of(&r), None);
        r.source_ip = "198.18.0.1".into();
        assert_eq!(source_of(&r), Some("198.18.0.1:4000".parse().unwrap()));
        r.source_port = 0;
        assert_eq!(source_of(&r), None);
    }

    /// Found by the `bp_request` fuzz target: a transparent dial to a port where nothing
    /// listens waited for the whole connect timeout, because the reset went to the client's
    /// address instead of back to our socket. Runs itself again in a throwaway namespace.
    #[test]
    fn transparent_dial_to_a_closed_port_is_refused_at_once() {
        const NAME: &str =
            "portdriver::child::tests::transparent_dial_to_a_closed_port_is_refused_at_once";
        if std::env::var_os("USERNET_TEST_IN_NAMESPACE").is_none() {
            let status = std::process::Command::new("unshare")
                .args(["--user", "--map-root-user", "--net", "--"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1"])
                .env("USERNET_TEST_IN_NAMESPACE", "1")
                .status();
            match status {
                Ok(s) => assert!(s.success(), "in the namespace: {s}"),
                Err(e) => eprintln!("skipped: cannot run unshare: {e}"),
            }
            return;
        }
        let mut nl = Netlink::open().unwrap();
        nl.link_up("lo").unwrap();
        setup_family(false).unwrap();
        let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let started = std::time::Instant::now();
        let e = dial_transparent("198.18.0.9:4000".parse().unwrap(), closed, false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn errors_read_like_go() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(go_errno(&e), "connection refused");
    }
}
