//! The flow table and the counters as the API sends them (`GET /v1/flows`, `GET /v1/stats`,
//! slirp4netns's `list_flows` and `get_stats`) and as `usernet flows` and `usernet stats`
//! print them. Plain data: the stack fills it in on its own thread, so nothing here is
//! shared or locked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Most rows one flow table holds; past it the rest are only counted ([`FlowTable::omitted`]),
/// so an answer stays small and quick to build whatever the tables hold.
pub const MAX_ROWS: usize = 4096;
/// Refused and failed flows remembered, the most recent first.
pub const MAX_FAILURES: usize = 32;

/// Bytes and packets one way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Payload bytes (TCP and UDP data, ICMP echo messages).
    pub bytes: u64,
    /// Packets (segments, datagrams, echo messages); 0 for published ports of the builtin
    /// port driver, which relays a byte stream and never sees packets.
    pub packets: u64,
}

impl Traffic {
    /// One packet of `bytes` payload.
    #[inline]
    pub fn count(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        self.packets += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

/// Where a flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowState {
    /// The host connect (or, for a published port, the guest's answer) is not there yet.
    Connecting,
    /// Data may flow both ways.
    Open,
    /// One side has finished sending (FIN); the other still sends.
    HalfClosed,
    /// Both sides finished, or one reset: what is left is being delivered.
    Closing,
    /// Refused or failed; kept for a while to say why.
    Failed,
}

impl FlowState {
    fn as_str(self) -> &'static str {
        match self {
            FlowState::Connecting => "connecting",
            FlowState::Open => "open",
            FlowState::HalfClosed => "half-closed",
            FlowState::Closing => "closing",
            FlowState::Failed => "failed",
        }
    }
}

/// One TCP connection, UDP NAT entry, ping mapping or published-port connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub proto: Protocol,
    /// Opened from outside, through a published port (false: opened by the guest).
    pub inbound: bool,
    /// The guest's end: address and port (for ping, the address and the echo identifier).
    pub guest: String,
    /// The other end, as the guest addressed it (for a published port: the host client).
    pub remote: String,
    pub state: FlowState,
    /// Milliseconds since the flow started.
    pub age_ms: u64,
    /// Milliseconds since anything moved.
    pub idle_ms: u64,
    /// From the guest towards the remote end.
    pub to_remote: Traffic,
    /// From the remote end towards the guest.
    pub to_guest: Traffic,
    /// Bytes held by usernet on their way to the remote end.
    pub buffered_to_remote: u64,
    /// Bytes held by usernet on their way to the guest.
    pub buffered_to_guest: u64,
    /// For a failed flow: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// `GET /v1/flows`: live flows, then the failures remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTable {
    pub flows: Vec<FlowRow>,
    /// Live flows left out past [`MAX_ROWS`].
    pub omitted: u64,
}

impl FlowTable {
    /// Rows the table still takes.
    pub fn room(&self) -> usize {
        MAX_ROWS.saturating_sub(self.flows.len())
    }

    /// Add up to [`FlowTable::room`] rows of the `total` that `rows` yields, counting the
    /// rest as omitted without building them.
    pub fn extend(&mut self, total: usize, rows: impl Iterator<Item = FlowRow>) {
        let room = self.room();
        self.flows.extend(rows.take(room));
        self.omitted += total.saturating_sub(room) as u64;
    }

    /// Add `row` unless the table is full (then only count it).
    pub fn push(&mut self, row: FlowRow) {
        if self.flows.len() < MAX_ROWS {
            self.flows.push(row);
        } else {
            self.omitted += 1;
        }
    }

    /// The table as `usernet flows` prints it: one line per flow, aligned columns.
    pub fn render(&self) -> String {
        let mut rows: Vec<[String; 10]> = vec![
            [
                "PROTO",
                "GUEST",
                "REMOTE",
                "STATE",
                "AGE",
                "IDLE",
                "TX BYTES/PKTS",
                "RX BYTES/PKTS",
                "BUFFERED TX/RX",
                "WHY",
            ]
            .map(String::from),
        ];
        for f in &self.flows {
            let proto = match (f.proto, f.inbound) {
                (Protocol::Tcp, false) => "tcp",
                (Protocol::Tcp, true) => "tcp-in",
                (Protocol::Udp, false) => "udp",
                (Protocol::Udp, true) => "udp-in",
                (Protocol::Icmp, _) => "icmp",
            };
            rows.push([
                proto.into(),
                f.guest.clone(),
                f.remote.clone(),
                f.state.as_str().into(),
                duration(f.age_ms),
                duration(f.idle_ms),
                format!("{}/{}", f.to_remote.bytes, f.to_remote.packets),
                format!("{}/{}", f.to_guest.bytes, f.to_guest.packets),
                format!("{}/{}", f.buffered_to_remote, f.buffered_to_guest),
                f.why.clone().unwrap_or_default(),
            ]);
        }
        let mut widths = [0usize; 10];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<w$} ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if self.omitted > 0 {
            let _ = writeln!(out, "({} more flows not shown)", self.omitted);
        }
        out
    }
}

/// A duration in milliseconds, short: `850ms`, `12.3s`, `5m02s`, `3h10m`.
fn duration(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// Frames on the guest link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frames {
    /// From the guest (bytes: whole frames).
    pub from_guest: Traffic,
    /// To the guest, written to the TAP.
    pub to_guest: Traffic,
    /// Frames that had to wait for a full TAP (none is dropped for that).
    pub deferred: u64,
}

/// Frames from the guest that went nowhere, by why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Headers that do not parse or are inconsistent (lengths, checksums, versions).
    pub malformed: u64,
    /// Well formed, but nothing usernet relays or answers (other EtherTypes, fragments,
    /// protocols, IPv6 while it is off, ARP and neighbour discovery for other addresses).
    pub unsupported: u64,
    /// Lost to a full queue: a host UDP socket that would not take a datagram, the TAP's
    /// backlog past its bound, a TAP write that failed.
    pub over_bound: u64,
    /// Refused by the policy (`--disable-host-loopback`, `--disable-dns`, addresses never
    /// relayed); the guest is answered with a reset or an ICMP error.
    pub policy: u64,
    /// TCP segments of no flow (answered with a reset).
    pub no_flow: u64,
    /// The classifier's own reason for each malformed or unsupported frame.
    pub by_reason: BTreeMap<String, u64>,
}

/// Flows the guest asked for and did not get, by why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    /// The policy does not let the guest reach that address.
    pub policy: u64,
    /// A table was full (`--max-tcp-flows`, `--max-udp-flows`).
    pub over_bound: u64,
    /// The host refused the connection (`ECONNREFUSED`).
    pub host_refused: u64,
    /// The host found no route, or the destination did not answer.
    pub unreachable: u64,
    /// The host connect did not finish in time.
    pub timed_out: u64,
    /// Pending connects dropped because the guest gave up on them.
    pub abandoned: u64,
    /// Pending connects dropped to make room for a new one (`--max-pending-connects`).
    pub evicted: u64,
}

/// The memory of TCP flows' buffers against its budget (`--max-buffer-memory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffers {
    pub used: u64,
    pub peak: u64,
    pub limit: u64,
    /// Times a flow was refused room it wanted (it slowed down; nothing was dropped).
    pub starved: u64,
    /// Guest TCP payload bytes that went from the frame straight to the host socket, never
    /// through a ring (two copies per byte; see `stack::tcp::direct`).
    #[serde(default)]
    pub direct_to_host: u64,
    /// Host TCP bytes sent to the guest from the host socket's own queue, never through a
    /// ring.
    #[serde(default)]
    pub direct_to_guest: u64,
}

/// Flows now and since the start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounts {
    pub tcp: u64,
    pub udp: u64,
    pub icmp: u64,
    pub tcp_opened: u64,
    pub tcp_inbound: u64,
    pub udp_created: u64,
    pub pings_forwarded: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub queries: u64,
    pub answered: u64,
    /// Queries passed to the next upstream after one failed or did not answer.
    pub failovers: u64,
    /// Answers too big for the guest's link, sent truncated (the guest retries over TCP).
    pub truncated: u64,
    pub servfail: u64,
    pub malformed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dhcp {
    /// Addresses leased (one per guest MAC).
    pub leases: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
}

/// The packet capture (`--pcap`), when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureCounts {
    /// Frames written to the file.
    pub frames: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Frames not written because the disk was slower than the link.
    pub dropped_slow: u64,
    /// Frames not written because the file reached `--pcap-max-bytes`.
    pub dropped_cap: u64,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub uptime_ms: u64,
    pub frames: Frames,
    pub drops: Drops,
    pub refusals: Refusals,
    pub buffers: Buffers,
    pub flows: FlowCounts,
    pub dns: Dns,
    pub dhcp: Dhcp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureCounts>,
}

impl Stats {
    /// The counters as `usernet stats` prints them (and the `--debug` exit summary logs
    /// them): one `group: name value...` line per group.
    pub fn render(&self) -> String {
        let f = &self.frames;
        let d = &self.drops;
        let r = &self.refusals;
        let b = &self.buffers;
        let c = &self.flows;
        let mut out = String::new();
        let _ = writeln!(out, "uptime: {}", duration(self.uptime_ms));
        let _ = writeln!(
            out,
            "frames: in {} ({} bytes), out {} ({} bytes), deferred {}",
            f.from_guest.packets,
            f.from_guest.bytes,
            f.to_guest.packets,
            f.to_guest.bytes,
            f.deferred
        );
        let mut reasons: Vec<String> = d
            .by_reason
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if reasons.is_empty() {
            reasons.push("-".into());
        }
        let _ = writeln!(
            out,
            "drops: malformed {}, unsupported {}, over a bound {}, policy {}, no flow {} [{}]",
            d.malformed,
            d.unsupported,
            d.over_bound,
            d.policy,
            d.no_flow,
            reasons.join(" ")
        );
        let _ = writeln!(
            out,
            "refusals: policy {}, over a bound {}, host refused {}, unreachable {}, timed out {}, abandoned {}, evicted {}",
            r.policy,
            r.over_bound,
            r.host_refused,
            r.unreachable,
            r.timed_out,
            r.abandoned,
            r.evicted
        );
        let _ = writeln!(
            out,
            "buffers: {} used, {} peak, of {} ({} times a flow waited for room); \
             past the rings: {} to hosts, {} to the guest",
            bytes(b.used),
            bytes(b.peak),
            bytes(b.limit),
            b.starved,
            bytes(b.direct_to_host),
            bytes(b.direct_to_guest)
        );
        let _ = writeln!(
            out,
            "flows: tcp {} (opened {}, inbound {}), udp {} (created {}), icmp {} (pings forwarded {})",
            c.tcp, c.tcp_opened, c.tcp_inbound, c.udp, c.udp_created, c.icmp, c.pings_forwarded
        );
        let _ = writeln!(
            out,
            "dns: queries {}, answered {}, failovers {}, truncated {}, servfail {}, malformed {}",
            self.dns.queries,
            self.dns.answered,
            self.dns.failovers,
            self.dns.truncated,
            self.dns.servfail,
            self.dns.malformed
        );
        let _ = writeln!(
            out,
            "dhcp: leases {}, offers {}, acks {}, naks {}",
            self.dhcp.leases, self.dhcp.offers, self.dhcp.acks, self.dhcp.naks
        );
        if let Some(cap) = &self.capture {
            let _ = writeln!(
                out,
                "capture: {} frames, {}, dropped {} (disk too slow) and {} (past --pcap-max-bytes)",
                cap.frames,
                bytes(cap.bytes),
                cap.dropped_slow,
                cap.dropped_cap
            );
        }
        out
    }
}

/// A byte count, short: `512 B`, `3.5 KiB`, `2.0 MiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: FlowState) -> FlowRow {
        FlowRow {
            proto: Protocol::Tcp,
            inbound: false,
            guest: "10.0.2.100:40000".into(),
            remote: "198.18.0.1:80".into(),
            state,
            age_ms: 61_500,
            idle_ms: 20,
            to_remote: Traffic {
                bytes: 100,
                packets: 3,
            },
            to_guest: Traffic {
                bytes: 5000,
                packets: 4,
            },
            buffered_to_remote: 0,
            buffered_to_guest: 7,
            why: None,
        }
    }

    #[test]
    fn rows_serialize_with_readable_states_and_round_trip() {
        let json = serde_json::to_string(&row(FlowState::HalfClosed)).unwrap();
        assert!(json.contains(r#""state":"half-closed""#), "{json}");
        assert!(json.contains(r#""proto":"tcp""#), "{json}");
        assert!(!json.contains("why"), "{json}");
        let back: FlowRow = serde_json::from_str(&json).unwrap();
        assert_eq!(back, row(FlowState::HalfClosed));
    }

    #[test]
    fn table_renders_aligned_columns_and_counts_what_it_left_out() {
        let mut table = FlowTable::default();
        table.push(row(FlowState::Open));
        let mut failed = row(FlowState::Failed);
        failed.why = Some("connection refused by the host".into());
        table.push(failed);
        table.omitted = 2;
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("PROTO GUEST"), "{text}");
        assert!(
            lines[1].contains("open") && lines[1].contains("1m01s"),
            "{text}"
        );
        assert!(
            lines[1].contains("100/3") && lines[1].contains("5000/4"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("connection refused by the host"),
            "{text}"
        );
        assert_eq!(lines[3], "(2 more flows not shown)");
        // Columns line up: REMOTE starts at the same offset on every line.
        let at = lines[0].find("REMOTE").unwrap();
        assert_eq!(lines[1].find("198.18.0.1").unwrap(), at);
    }

    #[test]
    fn a_table_holds_at_most_max_rows_and_counts_the_rest_unbuilt() {
        let mut table = FlowTable::default();
        let mut built = 0;
        let rows = (0..MAX_ROWS + 10).map(|_| {
            built += 1;
            row(FlowState::Open)
        });
        table.extend(MAX_ROWS + 10, rows);
        assert_eq!(
            (table.flows.len(), table.omitted, built),
            (MAX_ROWS, 10, MAX_ROWS)
        );
        table.push(row(FlowState::Open));
        assert_eq!((table.flows.len(), table.omitted), (MAX_ROWS, 11));
    }

    #[test]
    fn durations_and_sizes_are_short() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(302_000), "5m02s");
        assert_eq!(duration(11_400_000), "3h10m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3584), "3.5 KiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
    }

    #[test]
    fn stats_render_one_line_per_group() {
        let mut stats = Stats::default();
        stats.drops.malformed = 2;
        stats.drops.by_reason.insert("Ipv4Header".into(), 2);
        let text = stats.render();
        assert!(
            text.contains("drops: malformed 2, unsupported 0, over a bound 0, policy 0, no flow 0 [Ipv4Header=2]"),
            "{text}"
        );
        assert!(!text.contains("capture:"));
        stats.capture = Some(CaptureCounts::default());
        assert!(stats.render().contains("capture: 0 frames"));
    }
}
