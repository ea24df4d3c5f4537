//! Tool mode of the integration test binary: `<test-binary> __tool NAME ARGS...`.
//!
//! The tests run these inside world namespaces (servers) and inside usernet (clients), so the
//! whole suite needs nothing but this binary, usernet and util-linux's `unshare`. [`main`] is
//! the table of tool names; the tools live by what they drive:
//!
//! - [`world`]: the world namespace's holder, and a watcher of any address;
//! - [`tcp`]: TCP clients and servers that check what they carry (the exchange protocol is
//!   described there); [`streams`]: full-speed streams and how they end; [`pressure`]: many,
//!   pending, stalled and unread connections against usernet's bounds;
//! - [`udp`]: UDP clients, servers, floods and sinks; [`dns`]: DNS query bursts;
//! - [`raw`]: hand-made frames and segments from inside the guest;
//! - [`observe`]: guests that ask usernet for their own flows and counters;
//! - [`unix`]: Unix-socket requests and servers for the API tests;
//! - [`activation`]: the command a service manager starts through usernet (socket
//!   activation);
//! - [`attacker`]: the hostile guest of the security tests;
//! - [`proxy`]: a stand-in for Docker's docker-proxy;
//! - [`tapfd`]: a TAP opened in another namespace and handed to a program as fd 3;
//! - [`pattern`]: the seeded data they send and its SHA-256 checks.

mod activation;
mod attacker;
mod dns;
mod observe;
mod pattern;
mod pressure;
mod proxy;
mod raw;
mod streams;
mod tapfd;
mod tcp;
mod udp;
mod unix;
mod world;

use std::io;

pub fn main(args: &[String]) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match a.as_slice() {
        ["world-holder"] => world::world_holder(),
        ["tcp-server", listen, send, rest @ ..] => {
            tcp::tcp_server(listen, parse(send), rest.contains(&"duplex"))
        }
        ["tcp-client", addr, send, recv, rest @ ..] => {
            tcp::tcp_client(addr, parse(send), parse(recv), rest.contains(&"duplex"), 0)
                .map(|s| println!("{s}"))
        }
        ["tcp-connect", addr] => tcp::tcp_connect(addr),
        ["tcp-many", addr, n, bytes] => tcp::tcp_many(addr, parse(n), parse(bytes)),
        ["tcp-reset-server", listen] => tcp::tcp_reset_server(listen),
        ["tcp-read-until-end", addr] => tcp::tcp_read_until_end(addr),
        ["tcp-watch", listen] => tcp::tcp_watch(listen),
        ["tcp-abort", addr] => tcp::tcp_abort(addr),
        ["tcp-hello", listen] => tcp::tcp_hello(listen),
        ["tcp-reuse-port", addr, port, n] => {
            tcp::tcp_reuse_port(addr, parse(port) as u16, parse(n))
        }
        ["tcp-peer", listen] => tcp::tcp_peer(listen),
        ["tcp-wait", addr] => tcp::tcp_wait(addr),
        ["tcp-echo", listen] => tcp::tcp_echo(listen),
        ["watch-any", port] => world::watch_any(parse(port) as u16),
        ["raw-probe", ifname, port, dsts @ ..] => raw::raw_probe(ifname, parse(port) as u16, dsts),
        ["raw-bad-checksum", ifname, count] => raw::raw_bad_checksum(ifname, parse(count) as u32),
        ["observe-flows", echo, hello, udp, ping] => observe::observe_flows(echo, hello, udp, ping),
        ["observe-counters", echo, refused] => observe::observe_counters(echo, refused),
        ["observe-inbound", addr, state] => observe::observe_inbound(addr, state),
        ["tcp-exchange", addr, bytes] => observe::tcp_exchange(addr, parse(bytes)),
        ["attack-host-side", target, seconds, rest @ ..] => {
            attacker::attack_host_side(target, parse(seconds), rest.first().copied())
        }
        ["docker-proxy-stub", record, send, args @ ..] => {
            proxy::docker_proxy_stub(record, parse(send), args)
        }
        ["activated"] => activation::activated(),
        ["unix-request", path, request] => unix::unix_request(path, request),
        ["unix-http-serve", path, body] => unix::unix_http_serve(path, body),
        ["tcp-hold", addr, n] => pressure::tcp_hold(addr, parse(n) as usize),
        ["tcp-pending", echo, blackhole, n] => {
            pressure::tcp_pending(echo, blackhole, parse(n) as usize)
        }
        ["udp-conversations", addr, n] => udp::udp_conversations(addr, parse(n) as usize),
        ["udp-echo", listen] => udp::udp_echo(listen),
        ["udp-gso-echo", addr, segment, count] => {
            udp::udp_gso_echo(addr, parse(segment) as usize, parse(count) as usize)
        }
        ["udp-whoami", listen] => udp::udp_whoami(listen),
        ["udp-blackhole", listen] => udp::udp_blackhole(listen),
        ["udp-client", addr, count, max] => {
            udp::udp_client(addr, parse(count), parse(max) as usize)
        }
        ["udp-ask", addr] => udp::udp_ask(addr, None),
        ["udp-ask", addr, local_port] => udp::udp_ask(addr, Some(parse(local_port) as u16)),
        ["udp-expiry", addr, timeout] => udp::udp_expiry(addr, parse(timeout)),
        ["udp-burst", host, first_port, ports, sockets] => udp::udp_burst(
            host,
            parse(first_port) as u16,
            parse(ports) as u16,
            parse(sockets),
        ),
        ["udp-sink", host, first_port, ports, target] => udp::udp_sink(
            host,
            parse(first_port) as u16,
            parse(ports) as u16,
            parse(target),
        ),
        ["tcp-streams", addr, n] => streams::tcp_streams(addr, parse(n), false),
        ["tcp-streams", addr, n, "download"] => streams::tcp_streams(addr, parse(n), true),
        ["tcp-stream-server", listen] => streams::tcp_stream_server(listen),
        ["tcp-reset-midway", listen, sent, received] => {
            streams::tcp_reset_midway(listen, parse(sent), parse(received))
        }
        ["tcp-paced", addr, bytes, rate] => streams::tcp_paced(addr, parse(bytes), parse(rate)),
        ["udp-flood", addr, seconds, size] => {
            udp::udp_flood(addr, parse(seconds), parse(size) as usize)
        }
        ["udp-hold", addr] => udp::udp_hold(addr),
        ["udp-watch", listen] => udp::udp_watch(listen),
        ["dns-burst", addr, n] => dns::dns_burst(addr, parse(n)),
        ["syn-flood", count, rate, targets @ ..] => {
            raw::syn_flood(parse(count), parse(rate), targets)
        }
        ["tcp-unread", listen] => pressure::tcp_unread(listen),
        ["tcp-stall", addr, n] => pressure::tcp_stall(addr, parse(n) as usize),
        ["tcp-flood", listen] => pressure::tcp_flood(listen),
        ["tcp-hold-unread", addr, n] => pressure::tcp_hold_unread(addr, parse(n) as usize),
        ["tcp-scan", target, n, hold_ms, rate] => {
            pressure::tcp_scan(target, parse(n) as usize, parse(hold_ms), parse(rate))
        }
        ["tap-fd-exec", pid, ifname, mode, program @ ..] if !program.is_empty() => {
            tapfd::tap_fd_exec(pid, ifname, mode, program)
        }
        _ => Err(io::Error::other(format!("unknown tool invocation {a:?}"))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tool error: {e}");
            1
        }
    }
}

fn parse(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}
