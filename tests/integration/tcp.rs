//! Outbound TCP through the stack: bulk transfers checked by SHA-256, refusals, the
//! host-loopback policy, and many connections at once.

use std::time::Duration;

use crate::world::{REMOTE, World, run};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(180);

fn exchange(target_host: &str, server_listen: &str, duplex: bool) {
    let world = World::new();
    let mode: &[&str] = if duplex { &["duplex"] } else { &[] };
    let send = (64 * MIB).to_string();
    let mut server_args = vec!["tcp-server", server_listen, &send];
    server_args.extend_from_slice(mode);
    let _server = world.server(&server_args);
    let port = server_listen.rsplit(':').next().unwrap();
    let addr = format!("{target_host}:{port}");
    let mut args = vec!["tcp-client", &addr, &send, &send];
    args.extend_from_slice(mode);
    let out = run(&mut world.usernet_tool(&[], &args), LIMIT);
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=67108864 received=67108864"),
        "{out:#?}"
    );
}

pub fn tcp_64mib_each_way_to_a_remote_address() {
    exchange(REMOTE, "198.18.0.1:5001", false);
}

pub fn tcp_64mib_each_way_to_host_loopback_through_the_gateway() {
    exchange("10.0.2.2", "127.0.0.1:5002", false);
}

pub fn tcp_64mib_both_directions_at_once() {
    exchange(REMOTE, "198.18.0.1:5003", true);
}

fn connect_result(world: &World, flags: &[&str], addr: &str) -> (String, u64) {
    let out = run(
        &mut world.usernet_tool(flags, &["tcp-connect", addr]),
        LIMIT,
    );
    out.assert_ok();
    let mut words = out.stdout.split_whitespace();
    let kind = words.next().unwrap_or_default().to_string();
    let ms: u64 = words
        .last()
        .and_then(|w| w.parse().ok())
        .expect("elapsed ms");
    (kind, ms)
}

pub fn refused_port_gives_econnrefused_immediately() {
    let world = World::new();
    for addr in ["198.18.0.1:1", "10.0.2.2:1"] {
        let (kind, ms) = connect_result(&world, &[], addr);
        assert_eq!(kind, "ConnectionRefused", "connecting to {addr}");
        // A refusal answers the SYN itself; a SYN-ACK-then-RST or a timeout would not.
        assert!(ms < 1000, "refusal from {addr} took {ms} ms");
    }
}

pub fn disable_host_loopback_blocks_the_gateway_and_host_addresses() {
    let world = World::new();
    let _local = world.server(&["tcp-server", "127.0.0.1:5004", "0"]);
    let _remote = world.server(&["tcp-server", "198.18.0.1:5004", "0"]);
    // Without the flag both are reachable.
    assert_eq!(connect_result(&world, &[], "10.0.2.2:5004").0, "connected");
    assert_eq!(
        connect_result(&world, &[], "198.18.0.1:5004").0,
        "connected"
    );
    // With it, the gateway alias and the host's own address fail at once.
    for addr in ["10.0.2.2:5004", "198.18.0.1:5004"] {
        let (kind, ms) = connect_result(&world, &["--disable-host-loopback"], addr);
        assert!(
            kind == "NetworkUnreachable" || kind == "HostUnreachable",
            "{addr} with --disable-host-loopback gave {kind}"
        );
        assert!(ms < 1000, "{addr}: the error took {ms} ms");
    }
}

pub fn two_hundred_concurrent_connections_carry_data() {
    let world = World::new();
    let per_conn = (256 * 1024).to_string();
    let _server = world.server(&["tcp-server", "198.18.0.1:5005", &per_conn]);
    let out = run(
        &mut world.usernet_tool(&[], &["tcp-many", "198.18.0.1:5005", "200", &per_conn]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "OK 200");
}

pub fn host_reset_reaches_the_guest_as_connection_reset() {
    let world = World::new();
    let _server = world.server(&["tcp-reset-server", "198.18.0.1:5006"]);
    let out = run(
        &mut world.usernet_tool(&[], &["tcp-read-until-end", "198.18.0.1:5006"]),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.starts_with("reset "), "{out:#?}");
}

pub fn guest_reset_reaches_the_host_as_connection_reset() {
    let world = World::new();
    let mut server = world.server(&["tcp-watch", "198.18.0.1:5007"]);
    let out = run(
        &mut world.usernet_tool(&[], &["tcp-abort", "198.18.0.1:5007"]),
        LIMIT,
    );
    out.assert_ok();
    let line = server.next_line();
    assert!(line.starts_with("reset "), "the host side saw {line:?}");
}

pub fn reused_source_port_connects_at_once() {
    let world = World::new();
    let _server = world.server(&["tcp-hello", "198.18.0.1:5008"]);
    // The server closes first, so our side of each flow would sit in TIME-WAIT if it were
    // kept: the next SYN from the same port must still connect at once.
    let out = run(
        &mut world.usernet_tool(&[], &["tcp-reuse-port", "198.18.0.1:5008", "40555", "5"]),
        Duration::from_secs(60),
    );
    out.assert_ok();
    let slowest: u64 = out
        .stdout
        .trim()
        .strip_prefix("OK ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(slowest < 1000, "a reconnect took {slowest} ms");
}
