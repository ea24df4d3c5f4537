//! `usernet attach` and the slirp4netns drop-in: usernet driven through slirp4netns's own
//! command line (a symlink named `slirp4netns`), its ready and exit fds, its API socket, its
//! sandbox and seccomp flags, and by the real rootlesskit.
//!
//! The namespace usernet attaches to is made by `unshare` inside the world, as users make
//! theirs; commands run in it with `nsenter`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::needs::{Need, Unmet, needs};
use crate::world::{Outcome, Server, TempDir, World, run, self_exe, usernet_bin};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// A network namespace made with `unshare --user --map-root-user --net`, held by a sleeping
/// process.
pub(crate) struct Guest {
    holder: Server,
}

impl Guest {
    pub(crate) fn new(world: &World) -> Guest {
        let child = world
            .command("unshare")
            .args(["--user", "--map-root-user", "--net", "--", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let pid = child.id();
        let holder = Server::from_child(child);
        // Wait until unshare has made the namespaces (it execs sleep after that).
        let start = Instant::now();
        while std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| !p.to_string_lossy().contains("sleep"))
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "unshare did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Guest { holder }
    }

    pub(crate) fn pid(&self) -> String {
        self.holder.pid().to_string()
    }

    /// `PROGRAM ARGS` inside the guest's namespaces.
    fn command(&self, world: &World, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = world.command("nsenter");
        c.args([
            "-t",
            &self.pid(),
            "-U",
            "-n",
            "--preserve-credentials",
            "--",
        ])
        .arg(program);
        c
    }

    /// A test tool inside the guest's namespaces.
    pub(crate) fn tool(&self, world: &World, args: &[&str]) -> Command {
        let mut c = self.command(world, self_exe());
        c.arg("__tool").args(args);
        c
    }

    fn sh(&self, world: &World, script: &str) -> Outcome {
        run(self.command(world, "sh").args(["-c", script]), LIMIT)
    }
}

/// A symlink named `slirp4netns` to usernet, in `dir`.
pub(crate) fn slirp4netns(dir: &Path) -> PathBuf {
    let link = dir.join("slirp4netns");
    std::os::unix::fs::symlink(usernet_bin(), &link).unwrap();
    link
}

/// A pipe; both ends close on exec unless handed over with [`give_fds`].
pub fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// Hand `fds` to the command as the given fd numbers.
pub fn give_fds(cmd: &mut Command, fds: &[(&OwnedFd, RawFd)]) {
    let pairs: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    // A source may itself be one of the target numbers (fds 3 and 4 are often free in the
    // busy test process): dup2 onto itself would keep O_CLOEXEC, and an earlier dup2 could
    // overwrite a later source. So every source first moves above all targets.
    let above = pairs.iter().map(|&(_, to)| to).max().unwrap_or(0) + 1;
    let mut moved: Vec<RawFd> = vec![-1; pairs.len()];
    // SAFETY: fcntl, dup2 and close are async-signal-safe; nothing allocates; the fds stay
    // open until after spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (slot, (from, _)) in moved.iter_mut().zip(&pairs) {
                *slot = libc::fcntl(*from, libc::F_DUPFD, above);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, (_, to)) in moved.iter().zip(&pairs) {
                if libc::dup2(*fd, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for fd in &moved {
                libc::close(*fd);
            }
            Ok(())
        });
    }
}

/// Read what arrives on `fd` until EOF, waiting at most `limit`.
pub fn read_all(fd: OwnedFd, limit: Duration) -> String {
    let mut f = std::fs::File::from(fd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(limit)
        .expect("nothing came within the limit")
}

/// Start `slirp4netns ARGS` in the world with a ready pipe on fd 3; returns once it wrote
/// "1" there.
fn start_ready(world: &World, link: &Path, args: &[&str], extra: &[(&OwnedFd, RawFd)]) -> Server {
    let (ready_r, ready_w) = pipe();
    let mut cmd = world.command(link);
    cmd.arg("-r").arg("3").args(args);
    let mut fds = vec![(&ready_w, 3)];
    fds.extend_from_slice(extra);
    give_fds(&mut cmd, &fds);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn slirp4netns");
    drop(ready_w);
    let server = Server::from_child(child);
    assert_eq!(read_all(ready_r, LIMIT), "1", "ready-fd");
    server
}

/// One slirp4netns API request over the socket, as podman sends it.
fn api(socket: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(socket).expect("connect to the API socket");
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// The first `add_hostfwd` on `socket` (id 1) takes a world client on port 1PORT
/// (10000 + `port`) to a server on the guest's `port`.
fn first_forward_reaches_the_guest(world: &World, guest: &Guest, socket: &Path, port: u16) {
    let mut inside = Server::from_child(
        guest
            .tool(world, &["tcp-peer", &format!("0.0.0.0:{port}")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Listening before the forward is used: a forward to a port nothing listens on yet is
    // answered with a reset, which is right, and not what this checks.
    assert!(inside.next_line().starts_with("listening"));
    let request = format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_port":{},"guest_port":{port}}}}}"#,
        10000 + port
    );
    assert_eq!(api(socket, &request), r#"{"return":{"id":1}}"#);
    let target = format!("198.18.0.1:{}", 10000 + port);
    let out = run(&mut world.tool(&["tcp-connect", &target]), LIMIT);
    assert!(out.stdout.starts_with("connected"), "{out:#?}");
}

/// 8 MiB each way between the guest and a server on a world address, checked by hash.
fn guest_exchanges_with_the_world(world: &World, guest: &Guest, port: u16) {
    let bytes = (8 * MIB).to_string();
    let listen = format!("198.18.0.1:{port}");
    let _server = world.server(&["tcp-server", &listen, &bytes]);
    let out = run(
        &mut guest.tool(world, &["tcp-client", &listen, &bytes, &bytes]),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=8388608 received=8388608"),
        "{out:#?}"
    );
}

pub fn slirp4netns_configure_ready_fd_and_exit_fd() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let guest = Guest::new(&world);
    let (exit_r, exit_w) = pipe();
    let mut s4 = start_ready(
        &world,
        &link,
        &["-c", "-e", "4", "--mtu", "65520", &guest.pid(), "tap0"],
        &[(&exit_r, 4)],
    );
    drop(exit_r);
    // The banner, on stdout.
    let banner: Vec<String> = (0..9).map(|_| s4.next_line()).collect();
    assert!(
        banner.iter().any(|l| l == "* MTU:             65520"),
        "{banner:?}"
    );
    assert!(
        banner.iter().any(|l| l == "* Recommended IP:  10.0.2.100"),
        "{banner:?}"
    );
    // --configure: lo and tap0 up, the guest address, the default route, the MTU.
    let out = guest.sh(
        &world,
        "ip -o -4 addr show dev tap0; ip -o link show dev tap0; ip -o link show dev lo; ip route",
    );
    out.assert_ok();
    assert!(out.stdout.contains("inet 10.0.2.100/24"), "{out:#?}");
    assert!(out.stdout.contains("mtu 65520"), "{out:#?}");
    assert!(
        out.stdout.contains("default via 10.0.2.2 dev tap0"),
        "{out:#?}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains(": lo:") && l.contains("UP")),
        "{out:#?}"
    );
    guest_exchanges_with_the_world(&world, &guest, 9001);
    // Through the gateway to the world's loopback too.
    let _local = world.server(&["tcp-peer", "127.0.0.1:9002"]);
    let out = run(
        &mut guest.tool(&world, &["tcp-connect", "10.0.2.2:9002"]),
        LIMIT,
    );
    assert!(out.stdout.starts_with("connected"), "{out:#?}");
    // Closing the exit pipe's writer ends slirp4netns, with status 0.
    let started = Instant::now();
    drop(exit_w);
    let status = s4.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit-fd");
    assert!(started.elapsed() < Duration::from_secs(5));
}

pub fn slirp4netns_api_socket_adds_lists_removes_and_forwards() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let guest = Guest::new(&world);
    let socket = tmp.join("api.sock");
    let mut s4 = start_ready(
        &world,
        &link,
        &["-c", "-a", socket.to_str().unwrap(), &guest.pid(), "tap0"],
        &[],
    );
    let bytes = (64 * MIB).to_string();
    // Servers inside: a hashing TCP server, a peer reporter, a UDP echo.
    let inside_server = |args: &[&str]| {
        let mut server = Server::from_child(
            guest
                .tool(&world, args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        assert!(server.next_line().starts_with("listening"));
        server
    };
    let _hashing = inside_server(&["tcp-server", "0.0.0.0:8000", &bytes]);
    let mut inside = inside_server(&["tcp-peer", "0.0.0.0:8001"]);
    let _echo = inside_server(&["udp-echo", "0.0.0.0:7000"]);
    let add = |proto: &str, host: &str, port: u16, guest_port: u16| {
        api(
            &socket,
            &format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host}","host_port":{port},"guest_addr":"","guest_port":{guest_port}}}}}"#
            ),
        )
    };
    assert_eq!(add("tcp", "0.0.0.0", 18000, 8000), r#"{"return":{"id":1}}"#);
    assert_eq!(add("tcp", "0.0.0.0", 18001, 8001), r#"{"return":{"id":2}}"#);
    assert_eq!(
        add("udp", "127.0.0.1", 17000, 7000),
        r#"{"return":{"id":3}}"#
    );
    // The port is taken now.
    assert_eq!(
        add("tcp", "0.0.0.0", 18000, 8000),
        r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
    );
    assert_eq!(
        api(&socket, r#"{"execute":"list_hostfwd"}"#),
        r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":18000,"guest_addr":"10.0.2.100","guest_port":8000},{"id":2,"proto":"tcp","host_addr":"0.0.0.0","host_port":18001,"guest_addr":"10.0.2.100","guest_port":8001},{"id":3,"proto":"udp","host_addr":"127.0.0.1","host_port":17000,"guest_addr":"10.0.2.100","guest_port":7000}]}"#
    );
    assert_eq!(
        api(&socket, r#"{"execute":"bogus"}"#),
        r#"{"error":{"desc":"bad request: unknown execute"}}"#
    );
    assert_eq!(
        api(&socket, r#"{"execute":"add_hostfwd"}"#),
        r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#
    );

    // A client that connects and says nothing holds nothing up.
    let silent = UnixStream::connect(&socket).unwrap();
    // 64 MiB each way through the forward, from a world address.
    let out = run(
        &mut world.tool(&["tcp-client", "198.18.0.1:18000", &bytes, &bytes]),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=67108864 received=67108864"),
        "{out:#?}"
    );
    assert!(api(&socket, r#"{"execute":"list_hostfwd"}"#).starts_with(r#"{"entries":[{"id":1,"#));
    drop(silent);
    // The guest sees the client's real address, or the gateway for a loopback client.
    run(&mut world.tool(&["tcp-connect", "198.18.0.1:18001"]), LIMIT).assert_ok();
    assert!(inside.next_line().starts_with("peer 198.18.0.1:"));
    run(&mut world.tool(&["tcp-connect", "127.0.0.1:18001"]), LIMIT).assert_ok();
    assert!(inside.next_line().starts_with("peer 10.0.2.2:"));
    // UDP echo through the forward.
    let out = run(
        &mut world.tool(&["udp-client", "127.0.0.1:17000", "200", "1400"]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "OK 200");
    // Removal closes the host port; ids are not reused.
    assert_eq!(
        api(
            &socket,
            r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#
        ),
        r#"{"return":{}}"#
    );
    assert_eq!(
        api(
            &socket,
            r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#
        ),
        r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
    );
    let out = run(&mut world.tool(&["tcp-connect", "198.18.0.1:18000"]), LIMIT);
    assert!(out.stdout.starts_with("ConnectionRefused"), "{out:#?}");
    assert_eq!(add("tcp", "0.0.0.0", 18000, 8000), r#"{"return":{"id":4}}"#);
    drop(s4.lines_so_far());
    drop(s4);
    assert!(!socket.exists(), "the API socket is removed at exit");
}

pub fn slirp4netns_cidr_macaddress_and_disable_host_loopback() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let guest = Guest::new(&world);
    let _s4 = start_ready(
        &world,
        &link,
        &[
            "--configure",
            "--cidr=10.0.135.128/25",
            "--macaddress=0e:d4:18:d9:38:fb",
            "--disable-host-loopback",
            &guest.pid(),
            "tap0",
        ],
        &[],
    );
    let out = guest.sh(
        &world,
        "ip -o -4 addr show dev tap0; ip -o link show dev tap0; ip route",
    );
    out.assert_ok();
    assert!(out.stdout.contains("inet 10.0.135.228/25"), "{out:#?}");
    assert!(
        out.stdout.contains("link/ether 0e:d4:18:d9:38:fb"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("default via 10.0.135.130 dev tap0"),
        "{out:#?}"
    );
    // The gateway no longer leads to the world's loopback, and the world's own addresses
    // are out of reach; ping to the gateway still works.
    let _local = world.server(&["tcp-peer", "127.0.0.1:9010"]);
    let _remote = world.server(&["tcp-peer", "198.18.0.1:9011"]);
    for target in ["10.0.135.130:9010", "198.18.0.1:9011", "127.0.0.1:9010"] {
        let out = run(&mut guest.tool(&world, &["tcp-connect", target]), LIMIT);
        assert!(
            !out.stdout.starts_with("connected"),
            "{target} reachable despite --disable-host-loopback: {out:#?}"
        );
    }
    let out = guest.sh(&world, "busybox ping -c 1 -W 2 10.0.135.130");
    out.assert_ok();
}

pub fn slirp4netns_disable_dns_makes_the_dns_address_ordinary() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    // The forwarder's upstream is the world's own (closed) loopback port, never a real one.
    let _resolv = crate::services::world_resolv_conf(&world, "nameserver 127.0.0.1\n");
    // In the world, something of its own answers on 10.0.2.3:53, with the asker's address.
    run(
        world
            .command("ip")
            .args(["addr", "add", "10.0.2.3/32", "dev", "lo"]),
        LIMIT,
    )
    .assert_ok();
    let _whoami = world.server(&["udp-whoami", "10.0.2.3:53"]);
    let reached_world = |out: &Outcome| {
        out.stdout
            .trim()
            .strip_prefix("answer ")
            .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_ok())
    };
    for (flags, ordinary) in [(&["--disable-dns"][..], true), (&[][..], false)] {
        let guest = Guest::new(&world);
        let mut args = vec!["-c"];
        args.extend_from_slice(flags);
        let pid = guest.pid();
        args.extend([pid.as_str(), "tap0"]);
        let _s4 = start_ready(&world, &link, &args, &[]);
        let out = run(&mut guest.tool(&world, &["udp-ask", "10.0.2.3:53"]), LIMIT);
        out.assert_ok();
        assert_eq!(reached_world(&out), ordinary, "{flags:?}: {out:#?}");
    }
}

/// A world, a guest namespace in it, and usernet as `slirp4netns ARGS PID tap0` attached to
/// it and ready.
struct Attached {
    world: World,
    guest: Guest,
    slirp4netns: Server,
    _tmp: TempDir,
}

impl Attached {
    fn start(args: &[&str]) -> Attached {
        let world = World::new();
        let tmp = TempDir::new();
        let link = slirp4netns(&tmp);
        let guest = Guest::new(&world);
        let pid = guest.pid();
        let mut args = args.to_vec();
        args.extend([pid.as_str(), "tap0"]);
        let slirp4netns = start_ready(&world, &link, &args, &[]);
        Attached {
            world,
            guest,
            slirp4netns,
            _tmp: tmp,
        }
    }
}

pub fn slirp4netns_dhcp_leases_from_15_as_libslirp() {
    // No -c: the guest configures itself, as a VM or a DHCP-run container does.
    let mut a = Attached::start(&[]);
    let banner: Vec<String> = (0..9).map(|_| a.slirp4netns.next_line()).collect();
    for line in [
        "* DHCP begin:      10.0.2.15",
        "* DHCP end:        10.0.2.30",
        "* Recommended IP:  10.0.2.100",
    ] {
        assert!(banner.iter().any(|l| l == line), "{line}: {banner:?}");
    }
    let tmp = TempDir::new();
    let udhcpc = crate::services::udhcpc(&tmp);
    let out = a
        .guest
        .sh(&a.world, &format!("ip link set tap0 up && {udhcpc}"));
    out.assert_ok();
    assert!(
        out.stdout.contains(
            "ip=10.0.2.15 subnet=255.255.255.0 router=10.0.2.2 dns=10.0.2.3 mtu=1500 lease=86400 serverid=10.0.2.2"
        ),
        "{out:#?}"
    );
}

pub fn slirp4netns_outbound_addr_applies_to_the_host_loopback_too() {
    let a = Attached::start(&["-c", "--outbound-addr=198.18.0.2"]);
    let (world, guest) = (&a.world, &a.guest);
    // Servers on the world's loopback and on a world address report the peer they see.
    let mut local = world.server(&["tcp-peer", "127.0.0.1:9020"]);
    let mut remote = world.server(&["tcp-peer", "198.18.0.1:9021"]);
    let _who = world.server(&["udp-whoami", "127.0.0.1:9022"]);
    for (target, server) in [
        ("10.0.2.2:9020", &mut local),
        ("198.18.0.1:9021", &mut remote),
    ] {
        let out = run(&mut guest.tool(world, &["tcp-connect", target]), LIMIT);
        assert!(out.stdout.starts_with("connected"), "{target}: {out:#?}");
        let peer = server.next_line();
        assert!(peer.starts_with("peer 198.18.0.2:"), "{target}: {peer}");
    }
    let out = run(&mut guest.tool(world, &["udp-ask", "10.0.2.2:9022"]), LIMIT);
    out.assert_ok();
    assert!(out.stdout.starts_with("answer 198.18.0.2:"), "{out:#?}");
}

pub fn slirp4netns_sandbox_and_seccomp() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let guest = Guest::new(&world);
    let socket = tmp.join("api.sock");
    // A mount of the world's, which the sandbox must not take away from it.
    let marker = tmp.join("marker");
    std::fs::create_dir(&marker).unwrap();
    run(
        world
            .command("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&marker),
        LIMIT,
    )
    .assert_ok();
    let (exit_r, exit_w) = pipe();
    let mut s4 = start_ready(
        &world,
        &link,
        &[
            "-c",
            "--enable-sandbox",
            "--enable-seccomp",
            "-e",
            "4",
            "-a",
            socket.to_str().unwrap(),
            &guest.pid(),
            "tap0",
        ],
        &[(&exit_r, 4)],
    );
    drop(exit_r);
    // By the time it says ready: an empty root with /etc and /run, only
    // CAP_NET_BIND_SERVICE, no_new_privs, a seccomp filter.
    let pid = s4.pid();
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["etc", "run"], "the sandbox's root");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for want in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000400",
        "CapEff:\t0000000000000400",
        "CapBnd:\t0000000000000400",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(want), "{want} missing from:\n{status}");
    }
    // Everything still works inside the sandbox: outbound, DNS config, the API, forwards.
    guest_exchanges_with_the_world(&world, &guest, 9020);
    first_forward_reaches_the_guest(&world, &guest, &socket, 8020);
    // The world keeps its mounts.
    let out = run(world.command("findmnt").arg(&marker), LIMIT);
    out.assert_ok();
    drop(exit_w);
    assert_eq!(s4.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        !socket.exists(),
        "the API socket is removed, even from the sandbox"
    );
    run(world.command("umount").arg(&marker), LIMIT).assert_ok();
}

pub fn slirp4netns_netns_by_path_with_its_userns_path() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let guest = Guest::new(&world);
    // The namespace as a file of its own, as `ip netns` and podman keep them.
    let netns = tmp.join("netns");
    std::fs::write(&netns, "").unwrap();
    run(
        world
            .command("mount")
            .arg("--bind")
            .arg(format!("/proc/{}/ns/net", guest.pid()))
            .arg(&netns),
        LIMIT,
    )
    .assert_ok();
    let userns = format!("--userns-path=/proc/{}/ns/user", guest.pid());
    let _s4 = start_ready(
        &world,
        &link,
        &[
            "-c",
            "--netns-type=path",
            &userns,
            netns.to_str().unwrap(),
            "tap0",
        ],
        &[],
    );
    guest_exchanges_with_the_world(&world, &guest, 9030);
    // A userns path that does not exist is refused up front, with usage and status 1.
    let out = run(
        world
            .command(&link)
            .args(["--netns-type=path", "--userns-path=/nonexistent/userns"])
            .arg(&netns)
            .arg("tap1"),
        LIMIT,
    );
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr,
        "userns path doesn't exist: /nonexistent/userns\n"
    );
    assert!(out.stdout.starts_with("Usage: "));
    run(world.command("umount").arg(&netns), LIMIT).assert_ok();
}

pub fn slirp4netns_help_version_and_errors_keep_the_contract() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    let out = run(world.command(&link).arg("-v"), LIMIT);
    assert_eq!(out.code(), Some(0));
    assert!(
        out.stdout.contains("\nSLIRP_CONFIG_VERSION_MAX: 4\n"),
        "{out:#?}"
    );
    let out = run(world.command(&link).arg("--help"), LIMIT);
    assert_eq!(out.code(), Some(0));
    for option in [
        "--netns-type",
        "--userns-path",
        "--enable-ipv6",
        "--disable-host-loopback",
        "--api-socket",
        "--enable-sandbox",
        "--enable-seccomp",
        "--mtu",
        "--cidr",
        "--outbound-addr",
    ] {
        assert!(out.stdout.contains(option), "{option}");
    }
    let out = run(world.command(&link).args(["--bogus", "1", "tap0"]), LIMIT);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains("unrecognized option '--bogus'"),
        "{out:#?}"
    );
    let out = run(world.command(&link).args(["999999999", "tap0"]), LIMIT);
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one line for a missing process: {out:#?}"
    );
    assert!(out.stderr.contains("/proc/999999999/ns/net"), "{out:#?}");
}

/// `--netns-type=tapfd`: a TAP someone else opened in the namespace, handed over as fd 3,
/// plain (as slirp4netns's callers open it) or with vnet headers and offloads set by its
/// opener: usernet asks the kernel which, and carries TCP by hash either way.
pub fn slirp4netns_tapfd_plain_or_with_vnet_headers_carries_tcp() {
    let world = World::new();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    for (mode, port) in [("plain", 9060), ("vnet", 9061)] {
        let guest = Guest::new(&world);
        let (ready_r, ready_w) = pipe();
        let link = link.to_str().unwrap();
        let mut cmd = world.tool(&["tap-fd-exec", &guest.pid(), "tap0", mode, link]);
        cmd.args(["--netns-type=tapfd", "-r", "4", "3"]);
        give_fds(&mut cmd, &[(&ready_w, 4)]);
        let child = cmd.stderr(Stdio::inherit()).spawn().unwrap();
        // Killed when dropped: with a TAP fd there is no namespace to watch for the end.
        let _s4 = Server::from_child(child);
        drop(ready_w);
        assert_eq!(read_all(ready_r, LIMIT), "1", "{mode}: ready-fd");
        let setup = "ip link set tap0 up && ip addr add 10.0.2.100/24 dev tap0 \
                     && ip route add default via 10.0.2.2";
        guest.sh(&world, setup).assert_ok();
        guest_exchanges_with_the_world(&world, &guest, port);
    }
}

pub fn usernet_attach_connects_a_namespace_made_with_unshare() {
    let world = World::new();
    let guest = Guest::new(&world);
    let tmp = TempDir::new();
    let socket = tmp.join("api.sock");
    let (ready_r, ready_w) = pipe();
    let mut cmd = world.usernet(&["attach", "-c", "-r", "3", "-a", socket.to_str().unwrap()]);
    cmd.arg(guest.pid());
    give_fds(&mut cmd, &[(&ready_w, 3)]);
    let mut attach = Server::from_child(cmd.stderr(Stdio::inherit()).spawn().unwrap());
    drop(ready_w);
    assert_eq!(read_all(ready_r, LIMIT), "1");
    let out = guest.sh(
        &world,
        "ip -o -4 addr show dev tap0; ip -o link show dev tap0",
    );
    assert!(out.stdout.contains("inet 10.0.2.100/24"), "{out:#?}");
    assert!(
        out.stdout.contains("mtu 65520"),
        "usernet's default MTU: {out:#?}"
    );
    guest_exchanges_with_the_world(&world, &guest, 9040);
    // The slirp4netns API works with attach too.
    first_forward_reaches_the_guest(&world, &guest, &socket, 8040);
    // When the namespace's process exits, attach exits too, cleanly.
    drop(guest);
    assert_eq!(attach.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(!socket.exists());
}

pub fn usernet_attach_by_path_exits_when_the_namespace_file_is_removed() {
    let world = World::new();
    let guest = Guest::new(&world);
    let tmp = TempDir::new();
    let netns = tmp.join("netns");
    std::fs::write(&netns, "").unwrap();
    run(
        world
            .command("mount")
            .arg("--bind")
            .arg(format!("/proc/{}/ns/net", guest.pid()))
            .arg(&netns),
        LIMIT,
    )
    .assert_ok();
    let (ready_r, ready_w) = pipe();
    let mut cmd = world.usernet(&["attach", "--configure", "-r", "3"]);
    cmd.arg(&netns).arg("eth7");
    give_fds(&mut cmd, &[(&ready_w, 3)]);
    let mut attach = Server::from_child(cmd.stderr(Stdio::inherit()).spawn().unwrap());
    drop(ready_w);
    assert_eq!(read_all(ready_r, LIMIT), "1");
    let out = guest.sh(&world, "ip -o -4 addr show dev eth7");
    assert!(out.stdout.contains("inet 10.0.2.100/24"), "{out:#?}");
    guest_exchanges_with_the_world(&world, &guest, 9050);
    // `ip netns delete` does this: unmount, remove.
    run(world.command("umount").arg(&netns), LIMIT).assert_ok();
    std::fs::remove_file(&netns).unwrap();
    assert_eq!(attach.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// A world where rootlesskit can run (as root, with subordinate ids), and a `slirp4netns`
/// link to usernet in a temporary directory.
fn rootlesskit_world() -> (World, TempDir, PathBuf) {
    let world = World::with_many_ids();
    let tmp = TempDir::new();
    let link = slirp4netns(&tmp);
    // rootlesskit maps subordinate ids from /etc/subuid; give the world's root a range.
    let subid = tmp.join("subid");
    std::fs::write(&subid, "root:100000:65536\n").unwrap();
    for f in ["/etc/subuid", "/etc/subgid"] {
        run(
            world.command("mount").arg("--bind").arg(&subid).arg(f),
            LIMIT,
        )
        .assert_ok();
    }
    (world, tmp, link)
}

pub fn real_rootlesskit_uses_usernet_as_its_slirp4netns() -> Result<(), Unmet> {
    needs(&[Need::RealRoot])?;
    let (world, tmp, link) = rootlesskit_world();
    let bytes = (8 * MIB).to_string();
    let _remote = world.server(&["tcp-server", "198.18.0.1:9060", &bytes]);
    let state = tmp.join("state");
    let script = format!(
        "T='{} __tool'; $T tcp-client 198.18.0.1:9060 {bytes} {bytes} && exec $T tcp-server 0.0.0.0:8060 {bytes}",
        self_exe().display()
    );
    let mut rk = Server::from_child(
        world
            .command("rootlesskit")
            .arg(format!("--state-dir={}", state.display()))
            .arg("--net=slirp4netns")
            .arg(format!("--slirp4netns-binary={}", link.display()))
            .args(["--port-driver=slirp4netns", "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rootlesskit"),
    );
    // Outbound TCP from inside rootlesskit's namespace, through usernet.
    assert!(
        rk.next_line()
            .starts_with("OK sent=8388608 received=8388608")
    );
    assert!(rk.next_line().starts_with("listening"));
    // A published port, through rootlesskit's slirp4netns port driver and our API socket.
    let socket = state.join("api.sock");
    let ctl = |args: &[&str]| {
        run(
            world
                .command("rootlessctl")
                .arg("--socket")
                .arg(&socket)
                .args(args),
            LIMIT,
        )
    };
    let out = ctl(&["add-ports", "0.0.0.0:18060:8060/tcp"]);
    out.assert_ok();
    let out = run(
        &mut world.tool(&["tcp-client", "198.18.0.1:18060", &bytes, &bytes]),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.starts_with("OK sent=8388608"), "{out:#?}");
    let out = ctl(&["list-ports"]);
    assert!(out.stdout.contains("18060"), "{out:#?}");
    ctl(&["remove-ports", "1"]).assert_ok();
    let out = run(&mut world.tool(&["tcp-connect", "198.18.0.1:18060"]), LIMIT);
    assert!(out.stdout.starts_with("ConnectionRefused"), "{out:#?}");
    Ok(())
}

/// Wait (up to 10 s) until the link `ifname` of the namespace running this script has a
/// global IPv6 address that is no longer tentative and a default route via fe80::2, then
/// print them.
fn slaac_wait(ifname: &str) -> String {
    format!(
        "for i in $(seq 100); do \
           ip -6 route show default | grep -q 'via fe80::2' && \
           ip -6 -o addr show dev {ifname} scope global | grep -q fd00:: && \
           ! ip -6 -o addr show dev {ifname} | grep -q tentative && break; sleep 0.1; \
         done; ip -6 -o addr show dev {ifname} scope global; ip -6 route show default"
    )
}

pub fn usernet_attach_ipv6_guest_configures_itself_from_router_advertisements() -> Result<(), Unmet>
{
    needs(&[Need::Ipv6])?;
    let world = World::new();
    let guest = Guest::new(&world);
    let (ready_r, ready_w) = pipe();
    // No -c: the guest configures itself, as rootlesskit's and VMs' do.
    let mut cmd = world.usernet(&["attach", "--ipv6", "-r", "3"]);
    cmd.arg(guest.pid());
    give_fds(&mut cmd, &[(&ready_w, 3)]);
    let _attach = Server::from_child(cmd.stderr(Stdio::inherit()).spawn().unwrap());
    drop(ready_w);
    assert_eq!(read_all(ready_r, LIMIT), "1");
    let script = format!(
        "ip link set lo up && ip link set tap0 up && {}",
        slaac_wait("tap0")
    );
    let out = guest.sh(&world, &script);
    out.assert_ok();
    // Stateless autoconfiguration from our advertisement: an address in fd00::/64 made from
    // the link's MAC, and us as the default router.
    assert!(out.stdout.contains("inet6 fd00::"), "{out:#?}");
    assert!(out.stdout.contains("/64 scope global"), "{out:#?}");
    assert!(
        out.stdout.contains("default via fe80::2 dev tap0"),
        "{out:#?}"
    );
    let bytes = (8 * MIB).to_string();
    let _server = world.server(&["tcp-server", "[2001:2::1]:9070", &bytes]);
    let out = run(
        &mut guest.tool(&world, &["tcp-client", "[2001:2::1]:9070", &bytes, &bytes]),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=8388608 received=8388608"),
        "{out:#?}"
    );
    Ok(())
}

pub fn real_rootlesskit_with_ipv6_reaches_an_ipv6_host() -> Result<(), Unmet> {
    needs(&[Need::RealRoot, Need::Ipv6])?;
    let (world, tmp, link) = rootlesskit_world();
    let bytes = (8 * MIB).to_string();
    let _remote = world.server(&["tcp-server", "[2001:2::1]:9080", &bytes]);
    // rootlesskit configures IPv4 itself and leaves IPv6 to slirp4netns's advertisements.
    let script = format!(
        "{} && {} __tool tcp-client [2001:2::1]:9080 {bytes} {bytes}",
        slaac_wait("tap0"),
        self_exe().display()
    );
    let out = run(
        world
            .command("rootlesskit")
            .arg(format!("--state-dir={}", tmp.join("state").display()))
            .args(["--net=slirp4netns", "--ipv6", "--copy-up=/etc"])
            .arg(format!("--slirp4netns-binary={}", link.display()))
            .args(["--", "sh", "-c", &script]),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.contains("default via fe80::2 dev tap0"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("OK sent=8388608 received=8388608"),
        "{out:#?}"
    );
    Ok(())
}
