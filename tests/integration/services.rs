//! Guest services: UDP NAT, the DNS forwarder, ICMP echo, DHCP, ARP, and the address
//! options (--cidr, --macaddress, --outbound-addr, --disable-dns).
//!
//! The DNS upstream is always a dnsmasq of the test's own on the world's loopback; when a
//! test exercises the default (the host's /etc/resolv.conf), it bind-mounts a resolv.conf
//! pointing there over /etc/resolv.conf inside the world's mount namespace.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::needs::{Need, Unmet, needs};
use crate::world::{Outcome, Server, TempDir, World, run, self_exe, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;

/// Records dnsmasq serves: test.example, and big.example with enough addresses that the
/// answer outgrows 512 bytes.
fn dnsmasq(world: &World) -> Server {
    dnsmasq_on(world, "127.0.0.1")
}

/// dnsmasq listening on `listen` (comma-separated addresses).
pub fn dnsmasq_on(world: &World, listen: &str) -> Server {
    let tmp = TempDir::new();
    let mut args = vec![
        "--no-daemon".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={listen}"),
        "--port=53".into(),
        "--user=root".into(),
        format!("--pid-file={}/dnsmasq.pid", tmp.display()),
        "--host-record=test.example,198.18.0.42".into(),
        "--host-record=test6.example,2001:2::42".into(),
    ];
    for i in 1..=40 {
        args.push(format!("--host-record=big.example,198.18.1.{i}"));
    }
    let child = world
        .command("dnsmasq")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "dnsmasq, looked for in $PATH and the sbin directories (Debian package dnsmasq-base)",
        );
    let server = Server::from_child(child);
    run(&mut world.tool(&["tcp-wait", "127.0.0.1:53"]), LIMIT).assert_ok();
    server
}

/// Make the world's /etc/resolv.conf say `text` (inside its mount namespace only). The file
/// lives as long as the returned directory: a mount of a deleted file cannot be mounted over.
#[must_use]
pub fn world_resolv_conf(world: &World, text: &str) -> TempDir {
    let tmp = TempDir::new();
    let file = tmp.join("resolv.conf");
    std::fs::write(&file, text).unwrap();
    let target =
        std::fs::canonicalize("/etc/resolv.conf").expect("this host has an /etc/resolv.conf");
    let out = run(
        world.command("mount").arg("--bind").arg(&file).arg(&target),
        LIMIT,
    );
    out.assert_ok();
    tmp
}

/// `usernet run FLAGS -- sh -c SCRIPT`, where `$T` in the script is this test binary's tool mode.
pub fn guest_sh(world: &World, flags: &[&str], script: &str) -> Outcome {
    let script = format!("T='{} __tool'; {script}", self_exe().display());
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", &script]);
    run(&mut world.usernet(&args), LIMIT)
}

/// `usernet run FLAGS -- sh -c SCRIPT` left running, once `listeners` servers in the script
/// said they are listening.
pub fn guest_server(world: &World, flags: &[&str], script: &str, listeners: usize) -> Server {
    let script = format!("T='{} __tool'; {script}", self_exe().display());
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", &script]);
    let child = world
        .usernet(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut server = Server::from_child(child);
    for _ in 0..listeners {
        let line = server.next_line();
        assert!(line.starts_with("listening"), "{line:?}");
    }
    server
}

pub fn udp_round_trips_to_a_remote_address_and_through_the_gateway() {
    let world = World::new();
    let _remote = world.server(&["udp-echo", "198.18.0.1:7001"]);
    let _local = world.server(&["udp-echo", "127.0.0.1:7002"]);
    for addr in ["198.18.0.1:7001", "10.0.2.2:7002"] {
        let out = run(
            &mut world.usernet_tool(&[], &["udp-client", addr, "1000", "60000"]),
            LIMIT,
        );
        out.assert_ok();
        assert_eq!(out.stdout.trim(), "OK 1000", "{addr}");
    }
}

pub fn udp_entries_expire_after_the_timeout() {
    let world = World::new();
    let _server = world.server(&["udp-whoami", "198.18.0.1:7003"]);
    let out = run(
        &mut world.usernet_tool(
            &["--udp-timeout", "1"],
            &["udp-expiry", "198.18.0.1:7003", "1"],
        ),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.starts_with("OK "), "{out:#?}");
}

/// Peak RSS of usernet while a burst of 100,000 distinct UDP flows passes through it.
pub const UDP_BURST_RSS_LIMIT_KIB: u64 = 64 * 1024;

pub fn udp_burst_of_100k_flows_keeps_memory_bounded_and_tcp_flowing() {
    let world = World::new();
    let bytes = (16 * MIB).to_string();
    let _tcp = world.server(&["tcp-server", "198.18.0.1:7010", &bytes, "duplex"]);
    let mut sink = world.server(&["udp-sink", "198.18.0.1", "20000", "100", "100000"]);
    // 1,000 sockets x 100 ports = 100,000 flows, alongside a 16 MiB transfer each way.
    let script = format!(
        "T='{} __tool'; $T tcp-client 198.18.0.1:7010 {bytes} {bytes} duplex & tcp=$!; \
         $T udp-burst 198.18.0.1 20000 100 1000; wait $tcp; echo \"tcp $?\"; \
         echo \"tap drops $(cat /sys/class/net/tap0/statistics/tx_dropped)\"; echo done; read _ || :",
        self_exe().display()
    );
    // COMMAND waits on its stdin after "done", so usernet is still there to be measured.
    let mut child = world
        .usernet(&["run", "--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = line.trim() == "done";
        lines.push(line.trim().to_string());
        if done {
            break;
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("usernet's VmHWM");
    drop(child.stdin.take());
    let status = wait_with_limit(&mut child, LIMIT);
    eprintln!("usernet peak RSS during 100,000 UDP flows: {peak_kib} KiB");
    assert!(status.success(), "{lines:?}");
    assert!(lines.iter().any(|l| l == "sent 100000"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("OK sent=16777216")),
        "TCP alongside: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "tcp 0"), "{lines:?}");
    // The flows reached their destinations. A tap drops frames that do not fit its queue
    // without telling the sender, so on a loaded machine some are lost before usernet sees
    // them; tap0 counts those.
    let tap_drops: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("tap drops ")?.parse().ok())
        .expect("tap0's tx_dropped counter");
    // The sink's threads may still be draining their sockets: wait until it has reported all
    // that can come, or reported nothing new for a second.
    let mut received = 0;
    let mut last_news = std::time::Instant::now();
    let start = last_news;
    while received + tap_drops < 99_000
        && last_news.elapsed() < Duration::from_secs(1)
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
        let reported = sink
            .lines_so_far()
            .iter()
            .filter_map(|l| l.strip_prefix("received ")?.parse::<u64>().ok())
            .max();
        if let Some(n) = reported.filter(|n| *n > received) {
            received = n;
            last_news = std::time::Instant::now();
        }
    }
    eprintln!("the sink received {received} of 100000 datagrams (tap0 dropped {tap_drops})");
    // Everything the tap queue took must arrive: usernet itself loses nothing (the sink
    // reports in steps of 1,000). How much the queue sheds depends on how busy the machine
    // is, so only most must get that far.
    assert!(
        received + tap_drops >= 99_000,
        "only {received} of 100000 datagrams arrived and tap0 dropped only {tap_drops}"
    );
    assert!(
        received >= 50_000,
        "only {received} of 100000 datagrams arrived (tap0 dropped {tap_drops})"
    );
    assert!(
        peak_kib < UDP_BURST_RSS_LIMIT_KIB,
        "usernet peaked at {peak_kib} KiB during the burst"
    );
}

pub fn udp_to_dns_address_other_ports_is_refused() {
    let world = World::new();
    let out = guest_sh(
        &world,
        &[],
        "$T udp-ask 10.0.2.3:80; $T tcp-connect 10.0.2.3:80",
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "error ConnectionRefused", "{out:#?}");
    assert!(lines[1].starts_with("ConnectionRefused "), "{out:#?}");
}

pub fn dns_lookups_use_the_host_resolv_conf_over_udp_and_tcp() {
    let world = World::new();
    let _dns = dnsmasq(&world);
    // Over UDP, with the host's search domain; big.example's answer is truncated by the
    // server (over 512 bytes), so the C library retries over TCP.
    let _conf = world_resolv_conf(
        &world,
        "nameserver 127.0.0.1\nsearch example\noptions ndots:1\n",
    );
    let out = guest_sh(
        &world,
        &[],
        "cat /etc/resolv.conf; getent hosts test; getent ahosts big.example | awk '{print $1}' | sort -u | wc -l",
    );
    out.assert_ok();
    let s = &out.stdout;
    assert!(
        s.contains("nameserver 10.0.2.3\nsearch example\noptions ndots:1\n"),
        "{s}"
    );
    assert!(s.contains("198.18.0.42     test.example"), "{s}");
    assert_eq!(
        s.lines().last(),
        Some("40"),
        "all 40 records of big.example: {s}"
    );
    // TCP only (use-vc): works as well, and the option reached the namespace.
    let _conf = world_resolv_conf(&world, "nameserver 127.0.0.1\noptions use-vc\n");
    let out = guest_sh(
        &world,
        &[],
        "grep use-vc /etc/resolv.conf && getent hosts test.example",
    );
    out.assert_ok();
    assert!(
        out.stdout.contains("198.18.0.42     test.example"),
        "{out:#?}"
    );
}

pub fn dns_fails_over_when_upstreams_are_dead() {
    let world = World::new();
    let _dns = dnsmasq(&world);
    let _silent = world.server(&["udp-blackhole", "127.0.0.2:53"]);
    // 127.0.0.3 refuses (nothing listens), 127.0.0.2 never answers, 127.0.0.1 works.
    let flags = [
        "--dns-upstream",
        "127.0.0.3",
        "--dns-upstream",
        "127.0.0.2",
        "--dns-upstream",
        "127.0.0.1",
    ];
    let mut confs = Vec::new();
    for options in ["", "options use-vc\n"] {
        confs.push(world_resolv_conf(
            &world,
            &format!("nameserver 192.0.2.1\n{options}"),
        ));
        // Timed inside, so that starting usernet on a loaded machine does not count.
        let out = guest_sh(
            &world,
            &flags,
            "s=$(date +%s%N) && getent hosts test.example && getent hosts test.example \
             && echo took_ms $(( ($(date +%s%N) - s) / 1000000 ))",
        );
        out.assert_ok();
        assert_eq!(out.stdout.matches("198.18.0.42").count(), 2, "{out:#?}");
        let took_ms: u64 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("took_ms "))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("no time: {out:#?}"));
        // Both lookups within glibc's first 5 s timeout: usernet, not glibc, failed over.
        assert!(took_ms < 5000, "failover {options:?} took {took_ms} ms");
    }
}

pub fn dns_answer_too_big_for_the_link_is_truncated_and_retried_over_tcp() {
    let world = World::new();
    let _dns = dnsmasq(&world);
    // EDNS0 lets the server send up to 1200 bytes in one datagram; at MTU 576 the guest can
    // take only 548, so the forwarder must truncate and the C library retry over TCP.
    let _conf = world_resolv_conf(&world, "nameserver 127.0.0.1\noptions edns0\n");
    let out = guest_sh(
        &world,
        &["--mtu", "576", "--debug"],
        "getent ahosts big.example | awk '{print $1}' | sort -u | wc -l",
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "40", "{out:#?}");
    assert!(
        out.stderr.contains("truncated 1,"),
        "the forwarder truncated: {}",
        out.stderr
    );
}

pub fn disable_dns_leaves_resolv_conf_and_makes_10_0_2_3_ordinary() {
    let world = World::new();
    let _conf = world_resolv_conf(&world, "nameserver 127.0.0.1\n");
    let out = guest_sh(
        &world,
        &["--disable-dns"],
        "cat /etc/resolv.conf; $T udp-ask 10.0.2.3:53",
    );
    out.assert_ok();
    assert!(out.stdout.starts_with("nameserver 127.0.0.1\n"), "{out:#?}");
    // The world has no route to 10.0.2.3: the guest is told so (ICMP network unreachable)
    // instead of getting an answer.
    assert!(out.stdout.contains("error NetworkUnreachable"), "{out:#?}");
}

pub fn set_ping_group_range(world: &World, range: &str) {
    let script = format!("echo '{range}' > /proc/sys/net/ipv4/ping_group_range");
    run(world.command("sh").args(["-c", &script]), LIMIT).assert_ok();
}

pub fn ping_reaches_the_gateway_and_a_remote_address() {
    let world = World::new();
    set_ping_group_range(&world, "0 0");
    let out = guest_sh(
        &world,
        &[],
        "busybox ping -c 2 -W 2 10.0.2.2 && busybox ping -c 2 -W 2 198.18.0.1",
    );
    out.assert_ok();
    assert!(out.stdout.contains("64 bytes from 10.0.2.2"), "{out:#?}");
    assert!(out.stdout.contains("64 bytes from 198.18.0.1"), "{out:#?}");
    assert_eq!(out.stderr, "");
}

pub fn ping_without_ping_sockets_is_refused_cleanly() {
    // A new network namespace starts with ping sockets allowed for nobody ("1 0").
    let world = World::new();
    let out = guest_sh(
        &world,
        &[],
        "busybox ping -c 1 -W 2 10.0.2.2 >/dev/null && ! busybox ping -c 3 -W 1 198.18.0.1",
    );
    out.assert_ok();
    // Never a fake reply, and one warning however many pings.
    assert!(!out.stdout.contains("bytes from 198.18.0.1"), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(out.stderr.contains("ping is not relayed"), "{out:#?}");
}

/// A shell command that runs busybox's DHCP client once on tap0 and prints what it was leased
/// as one line (`ip=... subnet=... router=... dns=... mtu=... lease=... serverid=...`); its
/// script goes in `dir`.
pub fn udhcpc(dir: &std::path::Path) -> String {
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip subnet=$subnet router=$router dns=$dns mtu=$mtu lease=$lease serverid=$serverid\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "busybox udhcpc -i tap0 -n -q -f -s {} 2>/dev/null",
        script.display()
    )
}

pub fn dhcp_client_gets_the_lease_and_its_options() {
    let world = World::new();
    let tmp = TempDir::new();
    let out = guest_sh(&world, &[], &udhcpc(&tmp));
    out.assert_ok();
    assert!(
        out.stdout.contains(
            "ip=10.0.2.100 subnet=255.255.255.0 router=10.0.2.2 dns=10.0.2.3 mtu=65520 lease=86400 serverid=10.0.2.2"
        ),
        "{out:#?}"
    );
}

pub fn arp_is_answered_only_for_the_gateway_and_dns() {
    let world = World::new();
    let out = guest_sh(
        &world,
        &[],
        "busybox arping -c 1 -w 2 -I tap0 10.0.2.2 >/dev/null && echo gw; \
         busybox arping -c 1 -w 2 -I tap0 10.0.2.3 >/dev/null && echo dns; \
         busybox arping -c 1 -w 1 -I tap0 10.0.2.50 >/dev/null || echo no-neighbour; \
         busybox arping -D -c 1 -w 1 -I tap0 10.0.2.100 >/dev/null && echo own-address-free",
    );
    out.assert_ok();
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["gw", "dns", "no-neighbour", "own-address-free"]
    );
}

pub fn cidr_moves_the_whole_network() {
    let world = World::new();
    let _dns = dnsmasq(&world);
    let bytes = MIB.to_string();
    let _tcp = world.server(&["tcp-server", "198.18.0.1:7020", &bytes]);
    let _udp = world.server(&["udp-echo", "127.0.0.1:7021"]);
    let out = guest_sh(
        &world,
        &["--cidr", "10.0.3.0/24", "--dns-upstream", "127.0.0.1"],
        &format!(
            "ip -4 -o addr show dev tap0; ip route show default; cat /etc/resolv.conf; \
             $T tcp-client 198.18.0.1:7020 {bytes} {bytes}; $T udp-client 10.0.3.2:7021 50 1400; \
             getent hosts test.example"
        ),
    );
    out.assert_ok();
    let s = &out.stdout;
    assert!(s.contains("inet 10.0.3.100/24"), "{s}");
    assert!(s.contains("default via 10.0.3.2 dev tap0"), "{s}");
    assert!(s.contains("nameserver 10.0.3.3"), "{s}");
    assert!(s.contains("OK sent=1048576"), "TCP: {s}");
    assert!(s.contains("OK 50"), "UDP via 10.0.3.2: {s}");
    assert!(
        s.contains("198.18.0.42     test.example"),
        "DNS via 10.0.3.3: {s}"
    );
}

pub fn macaddress_sets_the_tap_address() {
    let world = World::new();
    let out = guest_sh(
        &world,
        &["--macaddress", "02:aa:bb:cc:dd:ee"],
        "cat /sys/class/net/tap0/address",
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "02:aa:bb:cc:dd:ee");
}

pub fn outbound_addr_binds_host_sockets() {
    let world = World::new();
    let mut peers = world.server(&["tcp-peer", "198.18.0.1:7030"]);
    let _who = world.server(&["udp-whoami", "198.18.0.1:7031"]);
    for (flag, expect) in [("198.18.0.2", "198.18.0.2"), ("lo", "127.0.0.1")] {
        let out = guest_sh(
            &world,
            &["--outbound-addr", flag],
            "$T tcp-connect 198.18.0.1:7030; $T udp-ask 198.18.0.1:7031",
        );
        out.assert_ok();
        assert!(
            out.stdout.contains(&format!("answer {expect}:")),
            "UDP with {flag}: {out:#?}"
        );
        let peer = peers.next_line();
        assert!(
            peer.starts_with(&format!("peer {expect}:")),
            "TCP with {flag}: {peer}"
        );
    }
    // Not towards the host's loopback (unlike slirp4netns): its services see 127.0.0.1.
    let mut local = world.server(&["tcp-peer", "127.0.0.1:7032"]);
    let _local_who = world.server(&["udp-whoami", "127.0.0.1:7033"]);
    let out = guest_sh(
        &world,
        &["--outbound-addr", "198.18.0.2"],
        "$T tcp-connect 10.0.2.2:7032; $T udp-ask 10.0.2.2:7033",
    );
    out.assert_ok();
    assert!(out.stdout.contains("answer 127.0.0.1:"), "{out:#?}");
    let peer = local.next_line();
    assert!(peer.starts_with("peer 127.0.0.1:"), "{peer}");
}

pub fn udp_errors_from_the_host_reach_the_guest_and_loopback_policy_applies() {
    let world = World::new();
    let _local = world.server(&["udp-whoami", "127.0.0.1:7040"]);
    // Nothing listens on 198.18.0.1:7041: the host's ICMP port unreachable is relayed.
    let out = guest_sh(
        &world,
        &[],
        "$T udp-ask 198.18.0.1:7041; $T udp-ask 10.0.2.2:7040",
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "error ConnectionRefused", "{out:#?}");
    // Replies through the gateway come from the gateway.
    assert!(lines[1].starts_with("answer 127.0.0.1:"), "{out:#?}");
    // --disable-host-loopback applies to UDP as it does to TCP.
    let out = guest_sh(
        &world,
        &["--disable-host-loopback"],
        "$T udp-ask 10.0.2.2:7040",
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "error NetworkUnreachable", "{out:#?}");
}

pub fn dns_forwards_to_an_ipv6_upstream() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    let _dns = dnsmasq_on(&world, "127.0.0.1,::1");
    let out = guest_sh(
        &world,
        &["--dns-upstream", "[::1]:53"],
        "getent hosts test.example",
    );
    out.assert_ok();
    assert!(
        out.stdout.contains("198.18.0.42     test.example"),
        "{out:#?}"
    );
    Ok(())
}
