//! The safety rule of these targets: the stack opens real host sockets to whatever the fuzzed
//! frames ask for, so a target may only run inside a throwaway network namespace whose only
//! interface is `lo`. There, 127.0.0.0/8 and the addresses on `lo` are all that exists, and
//! everything else fails with `ENETUNREACH` before a packet is built.
//!
//! [`enter`] refuses to go on anywhere else (with a message saying how to run the targets),
//! then makes the namespace what the simulated host needs: `lo` up, [`REMOTE`] and
//! [`REMOTE6`] on `lo` as stand-ins for a "remote" server, and ping sockets allowed.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Once;

/// An address on the namespace's `lo` that the policy treats as an ordinary outside host
/// (from 198.18.0.0/15, the benchmarking range).
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The same for IPv6 (from 2001:2::/48, the IPv6 benchmarking range).
pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

const HOW: &str = "usernet's fuzz targets open real sockets to whatever the fuzzed frames ask for, \
so they only run inside a fresh user+network namespace whose only interface is lo. \
Run them through fuzz/run.sh (e.g. `fuzz/run.sh stateful`), or by hand as \
`unshare --user --map-root-user --net cargo fuzz run TARGET`";

/// Check that this process is isolated, then set the namespace up; panics otherwise.
pub fn enter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(why) = check() {
            panic!("refusing to fuzz: {why}.\n{HOW}");
        }
        setup();
        // Short sleeps (the targets pause for the simulated host) without 50 µs of slack.
        let _ = nix::sys::prctl::set_timerslack(1);
    });
}

/// Whether this is a network namespace with only `lo`, in a user namespace of its own.
fn check() -> Result<(), String> {
    // /proc/self/net is the calling thread's network namespace (/sys/class/net would show the
    // namespace sysfs was mounted in).
    let dev = std::fs::read_to_string("/proc/self/net/dev")
        .map_err(|e| format!("cannot read /proc/self/net/dev: {e}"))?;
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    if interfaces != ["lo"] {
        return Err(format!(
            "this network namespace has interfaces {interfaces:?}, not only lo"
        ));
    }
    // The initial user namespace maps every id onto itself; a namespace made with
    // `unshare --user` maps a few.
    let uid_map = std::fs::read_to_string("/proc/self/uid_map")
        .map_err(|e| format!("cannot read /proc/self/uid_map: {e}"))?;
    let full = uid_map
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
    if full {
        return Err("this is the initial user namespace, not a throwaway one".into());
    }
    Ok(())
}

fn setup() {
    let mut nl = usernet::netconf::Netlink::open().expect("rtnetlink in the fuzz namespace");
    nl.link_up("lo")
        .expect("bringing lo up in the fuzz namespace");
    if let Err(e) = nl.add_ipv4_address("lo", REMOTE, 32)
        && e.raw_os_error() != Some(libc::EEXIST)
        && !e.to_string().contains("exists")
    {
        panic!("adding {REMOTE} to lo: {e}");
    }
    // Without IPv6 in the kernel the IPv6 paths only see unreachable destinations.
    if let Err(e) = nl.add_ipv6_address("lo", REMOTE6, 128)
        && !e.to_string().contains("exists")
    {
        eprintln!("adding {REMOTE6} to lo: {e} (IPv6 destinations will be unreachable)");
    }
    // Unprivileged ICMP sockets for the stack's pings (per network namespace; best effort).
    // The range must map into this user namespace, which may map only root.
    let path = "/proc/sys/net/ipv4/ping_group_range";
    if std::fs::write(path, "0 2147483647").is_err() {
        let _ = std::fs::write(path, "0 0");
    }
}
