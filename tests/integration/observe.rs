//! Seeing inside the network (issue 15): the packet capture (`--pcap`, `USERNET_PCAP`), the
//! live flow table (`usernet flows`) and the counters (`usernet stats`), each checked against
//! traffic the test made itself, under `usernet run` and under the slirp4netns personality.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pcap_file::pcap::PcapReader;
use sha2::{Digest, Sha256};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};
use usernet::observe::report::Protocol;
use usernet::observe::{FlowRow, FlowState, FlowTable, Stats};

use crate::attach::{Guest, give_fds, pipe, read_all, slirp4netns};
use crate::needs::{Need, Unmet, needs};
use crate::services::{guest_sh, set_ping_group_range};
use crate::world::{REMOTE, Server, TempDir, World, run, self_exe, usernet_bin};

const LIMIT: Duration = Duration::from_secs(120);

/// The JSON after `label ` on the first line that starts with it.
fn labelled<T: serde::de::DeserializeOwned>(stdout: &str, label: &str) -> T {
    let prefix = format!("{label} ");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {label:?} line in {stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{label}: {e}: {line}"))
}

/// The value after `label ` on the first line that starts with it.
fn value<'a>(stdout: &'a str, label: &str) -> &'a str {
    let prefix = format!("{label} ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {label:?} line in {stdout}"))
}

/// The live row of `table` between `guest` and `remote`.
fn row<'a>(table: &'a FlowTable, proto: Protocol, guest: &str, remote: &str) -> &'a FlowRow {
    table
        .flows
        .iter()
        .find(|r| {
            r.proto == proto
                && r.guest == guest
                && r.remote == remote
                && r.state != FlowState::Failed
        })
        .unwrap_or_else(|| panic!("no {proto:?} row {guest} -> {remote} in {table:#?}"))
}

pub fn flows_show_a_live_transfer_a_half_closed_flow_a_udp_entry_and_a_ping() {
    let world = World::new();
    set_ping_group_range(&world, "0 0");
    let _echo = world.server(&["tcp-echo", "198.18.0.1:7310"]);
    let _hello = world.server(&["tcp-hello", "198.18.0.1:7311"]);
    let _udp = world.server(&["udp-echo", "198.18.0.1:7312"]);
    let out = run(
        &mut world.usernet_tool(
            &[],
            &[
                "observe-flows",
                "198.18.0.1:7310",
                "198.18.0.1:7311",
                "198.18.0.1:7312",
                REMOTE,
            ],
        ),
        LIMIT,
    );
    out.assert_ok();
    let local = value(&out.stdout, "local");

    // The transfer: every byte counted each way, growing between two looks.
    let first: FlowTable = labelled(&out.stdout, "flows1");
    let second: FlowTable = labelled(&out.stdout, "flows2");
    let (a, b) = (
        row(&first, Protocol::Tcp, local, "198.18.0.1:7310"),
        row(&second, Protocol::Tcp, local, "198.18.0.1:7310"),
    );
    assert_eq!((a.to_remote.bytes, a.to_guest.bytes), (1000, 1000), "{a:?}");
    assert_eq!(
        (b.to_remote.bytes, b.to_guest.bytes),
        (51_000, 51_000),
        "{b:?}"
    );
    assert!(b.to_remote.packets > a.to_remote.packets, "{a:?} {b:?}");
    assert!(b.to_guest.packets > a.to_guest.packets, "{a:?} {b:?}");
    assert!(b.age_ms >= a.age_ms, "{a:?} {b:?}");
    assert_eq!((a.state, b.state), (FlowState::Open, FlowState::Open));
    assert!(!a.inbound);

    let third: FlowTable = labelled(&out.stdout, "flows3");
    // The server closed its side; the guest keeps its own open.
    let half_local = value(&out.stdout, "half").split(' ').next().unwrap();
    let half = row(&third, Protocol::Tcp, half_local, "198.18.0.1:7311");
    assert_eq!(half.state, FlowState::HalfClosed, "{half:?}");
    assert_eq!(half.to_guest.bytes, 6, "\"hello\\n\": {half:?}");
    // The UDP entry: one datagram each way.
    let udp_local = value(&out.stdout, "udp").split(' ').next().unwrap();
    let udp = row(&third, Protocol::Udp, udp_local, "198.18.0.1:7312");
    assert_eq!(
        (udp.to_remote.packets, udp.to_remote.bytes),
        (1, 4),
        "{udp:?}"
    );
    assert_eq!(
        (udp.to_guest.packets, udp.to_guest.bytes),
        (1, 4),
        "{udp:?}"
    );
    // The ping mapping: busybox's request and its reply.
    let ping = third
        .flows
        .iter()
        .find(|r| r.proto == Protocol::Icmp && r.remote == REMOTE)
        .unwrap_or_else(|| panic!("no ping row in {third:#?}"));
    assert!(ping.guest.starts_with("10.0.2.100 id "), "{ping:?}");
    assert_eq!(
        (ping.to_remote.packets, ping.to_guest.packets),
        (1, 1),
        "{ping:?}"
    );
    // The text table says the same.
    let text: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("text "))
        .collect();
    assert!(text[0].starts_with("PROTO"), "{text:?}");
    assert!(
        text.iter()
            .any(|l| l.contains(half_local) && l.contains("half-closed")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|l| l.starts_with("icmp ") && l.contains(REMOTE)),
        "{text:?}"
    );
    // --watch --json: one table per line, again and again.
    let watched: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("watch "))
        .collect();
    assert_eq!(watched.len(), 2, "{out:#?}");
    for line in watched {
        let table: FlowTable = serde_json::from_str(line).unwrap();
        row(&table, Protocol::Tcp, local, "198.18.0.1:7310");
    }
}

/// A connection through a published port (the builtin port driver relays it with splice,
/// beside the stack) is a row too: inbound, its client as the remote end, bytes each way.
pub fn flows_show_a_published_port_connection() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let state = state.to_str().unwrap();
    let _inside = world.usernet_server(
        &["--state-dir", state, "-p", "127.0.0.1:7340:7000"],
        &["tcp-echo", "0.0.0.0:7000"],
    );
    let out = run(
        &mut world.tool(&["observe-inbound", "127.0.0.1:7340", state]),
        LIMIT,
    );
    out.assert_ok();
    let table: FlowTable = labelled(&out.stdout, "flows");
    let local = value(&out.stdout, "local");
    let conn = table
        .flows
        .iter()
        .find(|r| r.inbound && r.remote == local)
        .unwrap_or_else(|| panic!("no row for {local} in {table:#?}"));
    assert_eq!(conn.proto, Protocol::Tcp);
    assert_eq!(conn.guest, "127.0.0.1:7000", "{conn:?}");
    assert_eq!(conn.state, FlowState::Open, "{conn:?}");
    assert_eq!(
        (conn.to_guest.bytes, conn.to_remote.bytes),
        (1000, 1000),
        "{conn:?}"
    );
}

pub fn counters_move_for_a_malformed_frame_a_policy_refusal_and_a_bound_hit() {
    let world = World::new();
    let _echo = world.server(&["tcp-echo", "198.18.0.1:7320"]);
    // The DNS forwarder's address takes port 53 only: the policy resets the rest.
    let out = run(
        &mut world.usernet_tool(
            &["--max-tcp-flows", "1", "--debug"],
            &["observe-counters", "198.18.0.1:7320", "10.0.2.3:80"],
        ),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(value(&out.stdout, "bound"), "ConnectionRefused", "{out:#?}");
    let before: Stats = labelled(&out.stdout, "before");
    let after: Stats = labelled(&out.stdout, "after");
    assert_eq!(
        after.drops.malformed - before.drops.malformed,
        1,
        "{after:#?}"
    );
    assert_eq!(
        after
            .drops
            .by_reason
            .get("Ipv4Header")
            .copied()
            .unwrap_or(0)
            - before
                .drops
                .by_reason
                .get("Ipv4Header")
                .copied()
                .unwrap_or(0),
        1,
        "{after:#?}"
    );
    assert_eq!(
        after.refusals.policy - before.refusals.policy,
        1,
        "{after:#?}"
    );
    assert_eq!(after.drops.policy - before.drops.policy, 1, "{after:#?}");
    assert_eq!(
        after.refusals.over_bound - before.refusals.over_bound,
        1,
        "{after:#?}"
    );
    assert_eq!(after.refusals.host_refused, 0, "{after:#?}");
    assert!(after.frames.from_guest.packets > before.frames.from_guest.packets);
    assert!(after.buffers.limit > 0 && after.buffers.used <= after.buffers.limit);
    // The flow table remembers both refusals, and why.
    let flows: FlowTable = labelled(&out.stdout, "flows");
    let failed: BTreeMap<&str, &str> = flows
        .flows
        .iter()
        .filter(|r| r.state == FlowState::Failed)
        .map(|r| (r.remote.as_str(), r.why.as_deref().unwrap_or("")))
        .collect();
    assert!(
        failed
            .get("10.0.2.3:80")
            .is_some_and(|why| why.starts_with("refused by policy")),
        "{failed:?}"
    );
    assert!(
        failed
            .get("198.18.0.1:7320")
            .is_some_and(|why| why.contains("flow table is full")),
        "{failed:?}"
    );
    // `usernet stats` and the --debug summary at exit read the same counters.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("text refusals: policy 1, over a bound 1,")),
        "{out:#?}"
    );
    let summary = out
        .stderr
        .lines()
        .find(|l| l.contains("stack: uptime"))
        .unwrap_or_else(|| panic!("no exit summary: {}", out.stderr));
    assert!(
        summary.contains("refusals: policy 1, over a bound 1,"),
        "{summary}"
    );
    assert!(summary.contains("Ipv4Header=1"), "{summary}");
}

/// The frames of one pcap file, with their timestamps.
fn frames(path: &Path) -> Vec<(Duration, Vec<u8>)> {
    let mut reader = PcapReader::new(File::open(path).unwrap()).unwrap();
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            packet.orig_len as usize,
            packet.data.len(),
            "captured whole"
        );
        frames.push((packet.timestamp, packet.data.into_owned()));
    }
    frames
}

/// A TCP segment or UDP datagram of a frame: (source, destination, TCP flags (syn, ack,
/// fin), sequence number, payload).
struct Seen {
    src: String,
    dst: String,
    syn: bool,
    ack: bool,
    fin: bool,
    seq: u32,
    payload: Vec<u8>,
}

fn transport(frame: &[u8], proto: IpProtocol) -> Option<Seen> {
    let eth = EthernetFrame::new_checked(frame).expect("an Ethernet frame");
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).expect("an IPv4 packet");
    if ip.next_header() != proto {
        return None;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    Some(match proto {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(ip.payload()).expect("a TCP segment");
            Seen {
                src: format!("{src}:{}", tcp.src_port()),
                dst: format!("{dst}:{}", tcp.dst_port()),
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                seq: tcp.seq_number().0 as u32,
                payload: tcp.payload().to_vec(),
            }
        }
        _ => {
            let udp = UdpPacket::new_checked(ip.payload()).expect("a UDP datagram");
            Seen {
                src: format!("{src}:{}", udp.src_port()),
                dst: format!("{dst}:{}", udp.dst_port()),
                syn: false,
                ack: false,
                fin: false,
                seq: 0,
                payload: udp.payload().to_vec(),
            }
        }
    })
}

/// The byte stream of the segments `from` → `to`, in sequence order, retransmissions once.
fn stream(segments: &[&Seen], from: &str, to: &str) -> Vec<u8> {
    let mut ordered: Vec<&&Seen> = segments
        .iter()
        .filter(|s| s.src == from && s.dst == to && !s.payload.is_empty())
        .collect();
    ordered.sort_by_key(|s| s.seq);
    let mut data = Vec::new();
    let mut next = ordered.first().map(|s| s.seq);
    for s in ordered {
        let Some(expected) = next else { break };
        let skip = expected.wrapping_sub(s.seq) as usize;
        if skip < s.payload.len() {
            data.extend_from_slice(&s.payload[skip..]);
            next = Some(s.seq.wrapping_add(s.payload.len() as u32));
        }
    }
    data
}

pub fn pcap_holds_a_known_exchange_frame_by_frame() {
    let world = World::new();
    let _echo = world.server(&["tcp-echo", "198.18.0.1:7300"]);
    let _udp = world.server(&["udp-echo", "198.18.0.1:7301"]);
    let tmp = TempDir::new();
    let file = tmp.join("guest.pcap");
    let out = guest_sh(
        &world,
        &["--pcap", file.to_str().unwrap(), "--debug"],
        "$T tcp-exchange 198.18.0.1:7300 100000 && $T udp-ask 198.18.0.1:7301",
    );
    out.assert_ok();
    assert_eq!(value(&out.stdout, "answer"), "who am i", "{out:#?}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let frames = frames(&file);
    // Every frame is there: as many as the exit summary counted.
    let counted = format!("capture: {} frames", frames.len());
    assert!(out.stderr.contains(&counted), "{counted}: {}", out.stderr);
    assert!(
        frames.windows(2).all(|w| w[0].0 <= w[1].0),
        "time goes forward"
    );

    let local = value(&out.stdout, "local");
    let remote = "198.18.0.1:7300";
    let tcp: Vec<Seen> = frames
        .iter()
        .filter_map(|(_, f)| transport(f, IpProtocol::Tcp))
        .filter(|s| (s.src == local && s.dst == remote) || (s.src == remote && s.dst == local))
        .collect();
    // The handshake, frame by frame: the guest's SYN, then our SYN-ACK (sent only once the
    // host connect succeeded), then the guest's ACK.
    assert!(tcp.len() > 6, "{} segments", tcp.len());
    assert!(
        tcp[0].src == local && tcp[0].syn && !tcp[0].ack,
        "SYN first"
    );
    assert!(
        tcp[1].src == remote && tcp[1].syn && tcp[1].ack,
        "then SYN-ACK"
    );
    assert!(tcp[2].src == local && !tcp[2].syn && tcp[2].ack, "then ACK");
    // The data each way, byte for byte: what the guest sent, and the echo of it.
    let refs: Vec<&Seen> = tcp.iter().collect();
    let up = stream(&refs, local, remote);
    let down = stream(&refs, remote, local);
    assert_eq!(up.len(), 100_000);
    let digest: String = Sha256::digest(&up)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, value(&out.stdout, "sha256"), "the guest's bytes");
    assert_eq!(down, up, "the echo");
    // And both ends' FINs.
    assert!(tcp.iter().any(|s| s.src == local && s.fin));
    assert!(tcp.iter().any(|s| s.src == remote && s.fin));
    // The UDP exchange: one datagram each way, in order.
    let udp: Vec<Seen> = frames
        .iter()
        .filter_map(|(_, f)| transport(f, IpProtocol::Udp))
        .filter(|s| s.src.ends_with(":7301") || s.dst.ends_with(":7301"))
        .collect();
    assert_eq!(udp.len(), 2);
    assert!(udp[0].src.starts_with("10.0.2.100:") && udp[0].dst == "198.18.0.1:7301");
    assert!(udp[1].src == "198.18.0.1:7301" && udp[1].dst == udp[0].src);
    assert_eq!(
        (&udp[0].payload[..], &udp[1].payload[..]),
        (&b"who am i"[..], &b"who am i"[..])
    );
}

pub fn pcap_stops_at_its_cap_and_never_overwrites_a_file() {
    let world = World::new();
    let _echo = world.server(&["tcp-echo", "198.18.0.1:7302"]);
    let tmp = TempDir::new();
    let file = tmp.join("capped.pcap");
    let cap = 65536;
    let out = guest_sh(
        &world,
        &[
            "--pcap",
            file.to_str().unwrap(),
            "--pcap-max-bytes",
            "64K",
            "--debug",
        ],
        "$T tcp-exchange 198.18.0.1:7302 1048576",
    );
    out.assert_ok();
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= cap && size > cap / 2, "{size} bytes");
    // Whole records only, the first frames kept (the connection's start).
    let frames = frames(&file);
    let first = frames
        .iter()
        .find_map(|(_, f)| transport(f, IpProtocol::Tcp))
        .expect("a TCP segment");
    assert!(first.syn && !first.ack, "the first segment is the SYN");
    let dropped = number_before(&out.stderr, " (past --pcap-max-bytes)")
        .unwrap_or_else(|| panic!("no capture summary: {}", out.stderr));
    assert!(dropped >= 10, "{dropped} frames past the cap");

    // The file exists now: usernet refuses it, before anything is set up, and leaves it be.
    let before = std::fs::read(&file).unwrap();
    let again = guest_sh(&world, &["--pcap", file.to_str().unwrap()], "echo ran");
    assert_ne!(again.code(), Some(0), "{again:#?}");
    assert!(!again.stdout.contains("ran"), "{again:#?}");
    assert_eq!(again.stderr.lines().count(), 1, "{again:#?}");
    assert!(
        again.stderr.contains("it exists") && again.stderr.contains("capped.pcap"),
        "{again:#?}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // A cap below the smallest is a usage error.
    let tiny = guest_sh(
        &world,
        &[
            "--pcap",
            tmp.join("x").to_str().unwrap(),
            "--pcap-max-bytes",
            "100",
        ],
        "true",
    );
    assert_eq!(tiny.code(), Some(2), "{tiny:#?}");
    assert!(!tmp.join("x").exists());
}

/// The number right before the first `suffix` in `text`.
fn number_before(text: &str, suffix: &str) -> Option<u64> {
    let (before, _) = text.split_once(suffix)?;
    before.rsplit(' ').next()?.parse().ok()
}

pub fn slirp4netns_personality_serves_flows_stats_and_usernet_pcap() {
    let world = World::new();
    let _udp = world.server(&["udp-echo", "198.18.0.1:7330"]);
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let guest = Guest::new(&world);
    let socket = tmp.join("api.sock");
    let file = tmp.join("s4.pcap");
    let (ready_r, ready_w) = pipe();
    let mut cmd = world.command(&link);
    cmd.env("USERNET_PCAP", &file).args([
        "-r",
        "3",
        "-c",
        "-a",
        socket.to_str().unwrap(),
        &guest.pid(),
        "tap0",
    ]);
    give_fds(&mut cmd, &[(&ready_w, 3)]);
    let mut s4 = Server::from_child(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    drop(ready_w);
    assert_eq!(read_all(ready_r, LIMIT), "1");

    let asked = run(
        &mut guest.tool(&world, &["udp-ask", "198.18.0.1:7330"]),
        LIMIT,
    );
    assert_eq!(value(&asked.stdout, "answer"), "who am i", "{asked:#?}");
    let sock = socket.to_str().unwrap();
    let flows = run(
        &mut world.usernet(&["flows", "--socket", sock, "--json"]),
        LIMIT,
    );
    flows.assert_ok();
    let table: FlowTable = serde_json::from_str(&flows.stdout).unwrap();
    let udp = table
        .flows
        .iter()
        .find(|r| r.proto == Protocol::Udp && r.remote == "198.18.0.1:7330")
        .unwrap_or_else(|| panic!("{table:#?}"));
    assert_eq!((udp.to_remote.bytes, udp.to_guest.bytes), (8, 8), "{udp:?}");
    let stats = run(
        &mut world.usernet(&["stats", "--socket", sock, "--json"]),
        LIMIT,
    );
    stats.assert_ok();
    let stats: Stats = serde_json::from_str(&stats.stdout).unwrap();
    let capture = stats.capture.expect("USERNET_PCAP captures");
    assert!(capture.frames >= 2 && stats.frames.from_guest.packets >= 1);
    let text = run(&mut world.usernet(&["flows", "--socket", sock]), LIMIT);
    assert!(text.stdout.contains("198.18.0.1:7330"), "{text:#?}");

    // slirp4netns runs until told to stop; stopping lets the capture write what it holds.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(s4.pid() as i32, libc::SIGTERM) };
    // As slirp4netns does, it ends by the signal it was sent.
    let status = s4.wait_exit(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    drop(guest);
    let frames = frames(&file);
    let datagrams: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|(_, f)| transport(f, IpProtocol::Udp))
        .filter(|s| s.src.ends_with(":7330") || s.dst.ends_with(":7330"))
        .map(|s| s.payload)
        .collect();
    assert_eq!(datagrams, [b"who am i".to_vec(), b"who am i".to_vec()]);
}

pub fn other_users_cannot_read_the_capture_the_flows_or_the_counters() -> Result<(), Unmet> {
    needs(&[Need::RealRoot])?;
    let world = World::with_many_ids();
    let tmp = TempDir::new();
    std::fs::set_permissions(&*tmp, PermissionsExt::from_mode(0o755)).unwrap();
    let state = tmp.join("state");
    let file = tmp.join("cap.pcap");
    // USERNET_PCAP, as a caller that cannot pass flags would set it.
    let mut usernet = Server::from_child(
        world
            .usernet_sh(&state, "echo up; sleep 600")
            .env("USERNET_PCAP", &file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(usernet.next_line(), "up");
    let owner = run(
        &mut world.usernet(&["stats", "--state-dir", state.to_str().unwrap()]),
        LIMIT,
    );
    owner.assert_ok();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let as_other = |program: &str, args: &[&str]| {
        let mut c = world.command("setpriv");
        c.args(["--reuid=1000", "--regid=1000", "--clear-groups", program])
            .args(args);
        run(&mut c, LIMIT)
    };
    let usernet_bin = crate::world::usernet_bin();
    let sd = state.to_str().unwrap();
    for what in ["flows", "stats"] {
        let out = as_other(usernet_bin, &[what, "--state-dir", sd, "--json"]);
        assert_eq!(out.code(), Some(1), "{what}: {out:#?}");
        assert_eq!(out.stdout, "", "{what}: {out:#?}");
        assert!(out.stderr.contains("Permission denied"), "{what}: {out:#?}");
    }
    let out = as_other("cat", &[file.to_str().unwrap()]);
    assert_ne!(out.code(), Some(0), "{out:#?}");
    assert!(out.stderr.contains("Permission denied"), "{out:#?}");
    // Where the state dir was opened up by hand, the API still refuses another user.
    std::fs::set_permissions(&state, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(state.join("api.sock"), PermissionsExt::from_mode(0o666)).unwrap();
    let request = "GET /v1/flows HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
    let api = state.join("api.sock");
    let out = run(
        world
            .command("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
            .arg(crate::world::self_exe())
            .args(["__tool", "unix-request", api.to_str().unwrap(), request]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "HTTP/1.1 403 Forbidden", "{out:#?}");
    Ok(())
}

/// The rootlesskit personality takes `--pcap` (usernet's flag beside rootlesskit's own): the
/// UDP exchange of its COMMAND is in the file, both ways; with `--net=host` the flag is
/// refused in rootlesskit's error line.
pub fn rootlesskit_personality_captures_with_its_pcap_flag() {
    let world = World::new();
    let _udp = world.server(&["udp-echo", "198.18.0.1:7340"]);
    let tmp = TempDir::new();
    let rootlesskit = tmp.join("rootlesskit");
    std::os::unix::fs::symlink(usernet_bin(), &rootlesskit).unwrap();
    let file = tmp.join("rk.pcap");
    let script = format!("{} __tool udp-ask 198.18.0.1:7340", self_exe().display());
    let out = run(
        world
            .command(&rootlesskit)
            .args(["--net=builtin", "--pcap", file.to_str().unwrap()])
            .args(["sh", "-c", &script]),
        LIMIT,
    );
    out.assert_ok();
    let udp: Vec<Seen> = frames(&file)
        .iter()
        .filter_map(|(_, f)| transport(f, IpProtocol::Udp))
        .filter(|s| s.src.ends_with(":7340") || s.dst.ends_with(":7340"))
        .collect();
    assert_eq!(udp.len(), 2, "the question and its echo");
    assert!(udp[0].src.starts_with("10.0.2.100:") && udp[1].dst == udp[0].src);
    let other = tmp.join("host.pcap");
    let out = run(
        world
            .command(&rootlesskit)
            .args(["--net=host", "--pcap", other.to_str().unwrap(), "true"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(
        out.stderr.contains(
            "[rootlesskit:parent] error: --pcap captures usernet's network, and --net=host has none"
        ),
        "{out:#?}"
    );
    assert!(!other.exists());
}
