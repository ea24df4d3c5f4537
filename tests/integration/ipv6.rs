//! IPv6 in the guest (`--ipv6`): the namespace's address, route and resolver, TCP by hash to
//! a remote IPv6 address and to the host's ::1 through the gateway, refusals and unreachable
//! destinations, UDP, DNS on fd00::3 and ping. The world has 2001:2::1 on its lo for the
//! "remote" host; nothing leaves it.

use std::time::Duration;

use crate::needs::{Need, Unmet, needs};
use crate::services::{dnsmasq_on, guest_sh, set_ping_group_range};
use crate::world::{REMOTE6, World, run};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(180);

pub fn ipv6_namespace_has_its_address_route_and_resolver() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    let script = "ip -6 -o addr show dev tap0 scope global; ip -6 route show default; \
                  cat /etc/resolv.conf";
    let out = guest_sh(&world, &["--ipv6"], script);
    out.assert_ok();
    let s = &out.stdout;
    assert!(s.contains("inet6 fd00::100/64"), "{s}");
    // The address is usable at once, not tentative, and the only global one: no address of
    // the kernel's own making from router advertisements beside it.
    assert!(!s.contains("tentative"), "{s}");
    assert_eq!(s.matches("scope global").count(), 1, "{s}");
    assert!(s.contains("default via fe80::2 dev tap0"), "{s}");
    assert!(
        s.contains("nameserver 10.0.2.3\nnameserver fd00::3\n"),
        "{s}"
    );
    // --cidr6 moves it; without --ipv6 the namespace has no global IPv6 address.
    let out = guest_sh(&world, &["--cidr6", "fd12:3456:789a:1::/64"], script);
    out.assert_ok();
    assert!(
        out.stdout.contains("inet6 fd12:3456:789a:1::100/64"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("nameserver fd12:3456:789a:1::3"),
        "{out:#?}"
    );
    let out = guest_sh(&world, &[], script);
    out.assert_ok();
    assert!(!out.stdout.contains("inet6"), "{out:#?}");
    assert!(!out.stdout.contains("fd00::3"), "{out:#?}");
    Ok(())
}

fn exchange(world: &World, target: &str, listen: &str) {
    let send = (64 * MIB).to_string();
    let _server = world.server(&["tcp-server", listen, &send, "duplex"]);
    let out = run(
        &mut world.usernet_tool(&["--ipv6"], &["tcp-client", target, &send, &send, "duplex"]),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=67108864 received=67108864"),
        "{target}: {out:#?}"
    );
}

pub fn ipv6_tcp_64mib_both_ways_to_a_remote_address_and_the_host_loopback() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    exchange(&world, "[2001:2::1]:5101", "[2001:2::1]:5101");
    // The gateway, by its global and its link-local address, is the host's ::1.
    exchange(&world, "[fd00::2]:5102", "[::1]:5102");
    // tap0 is link 2 in the namespace (lo is 1).
    exchange(&world, "[fe80::2%2]:5103", "[::1]:5103");
    Ok(())
}

fn connect(world: &World, flags: &[&str], addr: &str) -> (String, u64) {
    let mut all = vec!["--ipv6"];
    all.extend_from_slice(flags);
    let out = run(&mut world.usernet_tool(&all, &["tcp-connect", addr]), LIMIT);
    out.assert_ok();
    let mut words = out.stdout.split_whitespace();
    let kind = words.next().unwrap_or_default().to_string();
    let ms = words
        .last()
        .and_then(|w| w.parse().ok())
        .expect("elapsed ms");
    (kind, ms)
}

pub fn ipv6_refused_and_unreachable_destinations_fail_fast() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    let _server = world.server(&["tcp-server", "[2001:2::1]:5104", "0"]);
    let _local = world.server(&["tcp-server", "[::1]:5104", "0"]);
    for addr in ["[2001:2::1]:1", "[fd00::2]:1", "[fd00::3]:80"] {
        let (kind, ms) = connect(&world, &[], addr);
        assert_eq!(kind, "ConnectionRefused", "{addr}");
        assert!(ms < 1000, "refusal from {addr} took {ms} ms");
    }
    // DNS over TCP on fd00::3 is the forwarder.
    let _dns = dnsmasq_on(&world, "127.0.0.1");
    let (kind, _) = connect(&world, &["--dns-upstream", "127.0.0.1"], "[fd00::3]:53");
    assert_eq!(kind, "connected");
    // No route to it on the host: the guest hears so at once (ICMPv6 no route), rather than
    // after a timeout.
    let (kind, ms) = connect(&world, &[], "[2001:2:0:1::9]:80");
    assert!(
        kind == "NetworkUnreachable" || kind == "HostUnreachable",
        "{kind}"
    );
    assert!(ms < 1000, "took {ms} ms");
    // With --disable-host-loopback, the gateway and the host's own addresses fail at once.
    assert_eq!(connect(&world, &[], "[2001:2::1]:5104").0, "connected");
    assert_eq!(connect(&world, &[], "[fd00::2]:5104").0, "connected");
    for addr in ["[fd00::2]:5104", "[2001:2::1]:5104"] {
        let (kind, ms) = connect(&world, &["--disable-host-loopback"], addr);
        assert!(
            kind == "NetworkUnreachable" || kind == "HostUnreachable",
            "{addr}: {kind}"
        );
        assert!(ms < 1000, "{addr} took {ms} ms");
    }
    Ok(())
}

pub fn ipv6_udp_dns_and_ping_reach_their_targets() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    set_ping_group_range(&world, "0 0");
    let _echo = world.server(&["udp-echo", "[2001:2::1]:5105"]);
    let _local = world.server(&["udp-echo", "[::1]:5106"]);
    let _dns = dnsmasq_on(&world, "127.0.0.1");
    let script = format!(
        "$T udp-client [{REMOTE6}]:5105 50 1400 && $T udp-client [fd00::2]:5106 20 1400 && \
         busybox nslookup -type=AAAA test6.example fd00::3 && \
         busybox ping -6 -c 2 -W 2 fd00::2 && busybox ping -6 -c 2 -W 2 {REMOTE6}"
    );
    let out = guest_sh(
        &world,
        &["--ipv6", "--mtu", "1500", "--dns-upstream", "127.0.0.1"],
        &script,
    );
    out.assert_ok();
    let s = &out.stdout;
    assert!(s.contains("OK 50\nOK 20\n"), "{out:#?}");
    assert!(s.contains("Address: 2001:2::42"), "{out:#?}");
    assert!(s.contains("64 bytes from fd00::2"), "{out:#?}");
    assert!(s.contains(&format!("64 bytes from {REMOTE6}")), "{out:#?}");
    // A closed UDP port answers with ICMPv6 port unreachable, which the guest sees as a
    // refusal on its connected socket.
    let out = guest_sh(&world, &["--ipv6"], "$T udp-ask [2001:2::1]:5107");
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "error ConnectionRefused", "{out:#?}");
    Ok(())
}
