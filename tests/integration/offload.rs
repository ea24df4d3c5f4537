//! The TAP's offloads (vnet headers; TCP segmentation both ways; checksums left to the
//! receiver): 64 MiB each way by hash, with half-close, at MTU 1500 and 65520 over IPv4 and
//! IPv6, with offloads on (the default) and off (`USERNET_OFFLOAD=0`, plain frames as on a
//! TAP fd handed in without vnet headers); resets mid-transfer both ways. The `--debug`
//! summary's frame counts show which path ran: with offloads a guest at MTU 1500 hands over,
//! and gets, frames far larger than its MTU; without, never.
//!
//! The same transfers show the two copies per byte (`stack::tcp::direct`): the summary's
//! "past the rings" counts say most guest payload went from its frame straight to the host
//! socket, and, with offloads on a kernel that peeks at an offset on TCP, all host data went
//! to the guest from the host socket's queue; with `USERNET_DIRECT=0` (the rings, three
//! copies) neither, and the data is as right.

use std::process::Command;
use std::time::Duration;

use crate::needs::{Need, Unmet, needs};
use crate::world::{Outcome, World, run};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(180);
/// An Ethernet frame at MTU 1500.
const FRAME_1500: u64 = 1514;

/// Frames and bytes through the TAP, from usernet's `--debug` summary at exit.
#[derive(Debug)]
struct Traffic {
    frames_in: u64,
    bytes_in: u64,
    frames_out: u64,
    bytes_out: u64,
}

impl Traffic {
    /// From "frames: in N (B bytes), out N (B bytes), ..." in `stderr`.
    fn of(out: &Outcome) -> Traffic {
        let numbers = |after: &str| -> (u64, u64) {
            let rest = out
                .stderr
                .split(after)
                .nth(1)
                .unwrap_or_else(|| panic!("no {after:?} in the summary: {out:#?}"));
            let mut n = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse::<u64>().expect("a count"));
            (n.next().expect("frames"), n.next().expect("bytes"))
        };
        let (frames_in, bytes_in) = numbers("frames: in ");
        let (frames_out, bytes_out) = numbers("), out ");
        Traffic {
            frames_in,
            bytes_in,
            frames_out,
            bytes_out,
        }
    }

    fn average_in(&self) -> u64 {
        self.bytes_in / self.frames_in.max(1)
    }

    fn average_out(&self) -> u64 {
        self.bytes_out / self.frames_out.max(1)
    }
}

/// Bytes that skipped the rings, from "past the rings: N UNIT to hosts, N UNIT to the guest"
/// in the `--debug` summary: (guest → host, host → guest), to the summary's 0.1 precision.
fn past_the_rings(out: &Outcome) -> (u64, u64) {
    let rest = out
        .stderr
        .split("past the rings: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no direct counts in the summary: {out:#?}"));
    // "N UNIT to hosts, N UNIT to the guest"
    fn amount<'a>(words: &mut impl Iterator<Item = &'a str>) -> u64 {
        let n: f64 = words.next().and_then(|w| w.parse().ok()).expect("a number");
        let unit = match words.next().expect("a unit") {
            "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            unit => {
                assert!(unit.starts_with("GiB"), "unit {unit:?}");
                1 << 30
            }
        };
        let _ = (words.next(), words.next()); // "to hosts," / "to the"
        (n * unit as f64) as u64
    }
    let mut words = rest.split_whitespace();
    let to_host = amount(&mut words);
    (to_host, amount(&mut words))
}

/// Whether this kernel supports `SO_PEEK_OFF` on TCP sockets (Linux 6.9 and later), which
/// usernet's host → guest direct path needs.
#[allow(unsafe_code)]
fn kernel_peeks_at_an_offset_on_tcp() -> bool {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let value: libc::c_int = 0;
    // SAFETY: setsockopt reads one c_int from `value`, which lives across the call; the fd
    // is the listener's, open for the call.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Which of usernet's datapaths a run takes.
#[derive(Debug, Clone, Copy)]
struct Path {
    /// vnet headers and offloads on the TAP (`USERNET_OFFLOAD`).
    offload: bool,
    /// Payload past the rings where possible (`USERNET_DIRECT`).
    direct: bool,
}

/// `usernet run FLAGS -- tool ARGS`, with offloads turned off by the environment unless
/// `offload`.
fn usernet_tool(world: &World, offload: bool, flags: &[&str], args: &[&str]) -> Command {
    let mut cmd = world.usernet_tool(flags, args);
    if !offload {
        cmd.env("USERNET_OFFLOAD", "0");
    }
    cmd
}

/// 64 MiB from the guest to `listen` (reached as `target`), then, after the guest's FIN, 64 MiB
/// back, both checked by SHA-256; what went through the TAP. Checks which bytes skipped the
/// rings.
fn exchange(world: &World, mtu: &str, path: Path, target: &str, listen: &str) -> Traffic {
    let offload = path.offload;
    let send = (64 * MIB).to_string();
    let _server = world.server(&["tcp-server", listen, &send]);
    let flags = ["--mtu", mtu, "--ipv6", "--debug"];
    let mut cmd = usernet_tool(
        world,
        offload,
        &flags,
        &["tcp-client", target, &send, &send],
    );
    if !path.direct {
        cmd.env("USERNET_DIRECT", "0");
    }
    let out = run(&mut cmd, LIMIT);
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=67108864 received=67108864"),
        "MTU {mtu}, offload {offload}, {target}: {out:#?}"
    );
    assert!(
        out.stderr.contains("frames: in ") && !out.stderr.contains("VnetHeader="),
        "an honest guest's headers were refused: {}",
        out.stderr
    );
    let (to_host, to_guest) = past_the_rings(&out);
    let what = format!(
        "MTU {mtu}, {path:?}, {target}: {to_host} to the host, {to_guest} to the guest past the rings"
    );
    if path.direct {
        // Segments go to the host socket while it keeps up; the ring takes the rest. How
        // much is which depends on how busy the machine is, so only that the path was taken.
        assert!(to_host >= MIB, "{what}");
        if offload && kernel_peeks_at_an_offset_on_tcp() {
            assert!(to_guest >= 63 * MIB, "{what}");
        } else {
            assert_eq!(to_guest, 0, "{what}");
        }
    } else {
        assert_eq!((to_host, to_guest), (0, 0), "{what}");
    }
    Traffic::of(&out)
}

/// The transfers of [`exchange`] at both MTUs and over both families; checks that frames
/// were larger than the link's MTU exactly when offloads are on.
fn both_mtus_both_families(path: Path, first_port: u16) {
    let offload = path.offload;
    let world = World::new();
    let mut port = first_port;
    for mtu in ["1500", "65520"] {
        for (target, listen) in [
            (format!("198.18.0.1:{port}"), format!("198.18.0.1:{port}")),
            (
                format!("[2001:2::1]:{}", port + 1),
                format!("[2001:2::1]:{}", port + 1),
            ),
        ] {
            let t = exchange(&world, mtu, path, &target, &listen);
            if mtu == "1500" {
                let what = format!("{target} at MTU 1500, offload {offload}: {t:?}");
                if offload {
                    // 64 KiB super-segments both ways (with the other side's ACKs among them).
                    assert!(t.average_in() > 4 * FRAME_1500, "guest to us: {what}");
                    assert!(t.average_out() > 4 * FRAME_1500, "us to guest: {what}");
                } else {
                    assert!(t.average_in() <= FRAME_1500, "guest to us: {what}");
                    assert!(t.average_out() <= FRAME_1500, "us to guest: {what}");
                }
            }
        }
        port += 2;
    }
}

pub fn offloaded_tcp_64mib_each_way_at_mtu_1500_and_65520_over_ipv4_and_ipv6() -> Result<(), Unmet>
{
    needs(&[Need::Ipv6])?;
    let path = Path {
        offload: true,
        direct: true,
    };
    both_mtus_both_families(path, 7301);
    Ok(())
}

/// The same with `USERNET_DIRECT=0`: every byte through smoltcp's rings (the path a kernel
/// without `SO_PEEK_OFF` on TCP takes host → guest).
pub fn through_the_rings_tcp_64mib_each_way_at_mtu_1500_and_65520_over_ipv4_and_ipv6()
-> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let path = Path {
        offload: true,
        direct: false,
    };
    both_mtus_both_families(path, 7351);
    Ok(())
}

pub fn without_offloads_tcp_64mib_each_way_at_mtu_1500_and_65520_over_ipv4_and_ipv6()
-> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let path = Path {
        offload: false,
        direct: true,
    };
    both_mtus_both_families(path, 7311);
    Ok(())
}

/// Host servers that reset each connection once 4 MiB went each way, with data in flight, and
/// guests streaming both ways at MTU 1500: every connection ends in a reset, with every byte
/// before it right; and a guest's reset reaches the host.
fn resets_mid_transfer(offload: bool, first_port: u16) {
    let world = World::new();
    let four = (4 * MIB).to_string();
    for (i, host) in ["198.18.0.1", "[2001:2::1]"].into_iter().enumerate() {
        let port = first_port + i as u16 * 2;
        let addr = format!("{host}:{port}");
        let _server = world.server(&["tcp-reset-midway", &addr, &four, &four]);
        let flags = ["--mtu", "1500", "--ipv6"];
        let mut cmd = usernet_tool(&world, offload, &flags, &["tcp-streams", &addr, "4"]);
        let out = run(&mut cmd, LIMIT);
        out.assert_ok();
        let ends: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("end "))
            .collect();
        assert_eq!(ends.len(), 4, "{addr}, offload {offload}: {out:#?}");
        assert!(
            ends.iter().all(|l| l.starts_with("end reset ")),
            "{addr}, offload {offload}: every connection ends in a reset, data intact: {out:#?}"
        );

        let watch = format!("{host}:{}", port + 1);
        let mut watcher = world.server(&["tcp-watch", &watch]);
        let mut cmd = usernet_tool(&world, offload, &flags, &["tcp-abort", &watch]);
        run(&mut cmd, LIMIT).assert_ok();
        let line = watcher.next_line();
        assert!(line.starts_with("reset "), "{watch}: the host saw {line:?}");
    }
}

pub fn offloaded_resets_mid_transfer_reach_each_side_over_ipv4_and_ipv6() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    resets_mid_transfer(true, 7321);
    Ok(())
}

pub fn without_offloads_resets_mid_transfer_reach_each_side_over_ipv4_and_ipv6() -> Result<(), Unmet>
{
    needs(&[Need::Ipv6])?;
    resets_mid_transfer(false, 7331);
    Ok(())
}

/// A guest socket's `UDP_SEGMENT` send of 40 datagrams to echo servers at MTU 1500, over
/// IPv4 and IPv6: every datagram comes back, by content; with offloads the 40 cross tap0 as
/// one frame (so usernet read few frames in all), without as 40.
pub fn udp_segmentation_offload_splits_into_the_guests_datagrams_over_ipv4_and_ipv6()
-> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    for (i, host) in ["198.18.0.1", "[2001:2::1]"].into_iter().enumerate() {
        let addr = format!("{host}:{}", 7341 + i);
        let _echo = world.server(&["udp-echo", &addr]);
        for offload in [true, false] {
            let flags = ["--mtu", "1500", "--ipv6", "--debug"];
            let tool = ["udp-gso-echo", &addr, "1000", "40"];
            let out = run(&mut usernet_tool(&world, offload, &flags, &tool), LIMIT);
            out.assert_ok();
            assert_eq!(
                out.stdout.trim(),
                "OK 40",
                "{addr}, offload {offload}: {out:#?}"
            );
            let t = Traffic::of(&out);
            if offload {
                assert!(
                    t.frames_in < 20,
                    "{addr}: one frame for 40 datagrams: {t:?}"
                );
            } else {
                assert!(t.frames_in >= 40, "{addr}: a frame each: {t:?}");
            }
        }
    }
    Ok(())
}
