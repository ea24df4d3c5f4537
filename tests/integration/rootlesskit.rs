//! The rootlesskit personality: usernet driven through rootlesskit's own command line (a
//! symlink named `rootlesskit`), checked against what rootlesskit's integration scripts
//! (`hack/integration-*.sh`) check of rootlesskit itself, with `--net=builtin` (usernet's
//! stack) where they use `--net=slirp4netns`; plus `--detach-netns`, the other drivers'
//! addresses, the real `rootlessctl` on the personality's `api.sock`, and the texts callers
//! probe (`--help`, `--version`, error lines).

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::needs::{Need, Unmet, needs};
use crate::services::{dnsmasq_on, world_resolv_conf};
use crate::world::{Outcome, Server, TempDir, World, alive, run, self_exe, usernet_bin};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// A directory holding `rootlesskit` (and `docker-rootlesskit`), symlinks to usernet: the
/// name chooses the personality.
struct Links {
    dir: TempDir,
}

impl Links {
    fn new() -> Links {
        let dir = TempDir::new();
        for name in ["rootlesskit", "docker-rootlesskit"] {
            symlink(usernet_bin(), dir.join(name)).unwrap();
        }
        Links { dir }
    }

    fn rootlesskit(&self) -> PathBuf {
        self.dir.join("rootlesskit")
    }

    /// `rootlesskit ARGS` in the world.
    fn command(&self, world: &World, args: &[impl AsRef<OsStr>]) -> Command {
        let mut c = world.command(self.rootlesskit());
        c.args(args);
        c
    }

    /// `rootlesskit FLAGS sh -c SCRIPT` in the world, `$T` in the script being this test
    /// binary's tool mode.
    fn sh(&self, world: &World, flags: &[impl AsRef<OsStr>], script: &str) -> Command {
        let script = format!("T='{} __tool'; {script}", self_exe().display());
        let mut c = self.command(world, flags);
        c.args(["sh", "-c", &script]);
        c
    }

    /// [`Links::sh`], left running and read line by line.
    fn server(&self, world: &World, flags: &[impl AsRef<OsStr>], script: &str) -> Server {
        Server::from_child(
            self.sh(world, flags, script)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn rootlesskit"),
        )
    }
}

/// `--state-dir=STATE` and `args`.
fn in_state_dir(state: &Path, args: &[&str]) -> Vec<String> {
    std::iter::once(format!("--state-dir={}", state.display()))
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

/// The pid in `state/child_pid`, once it is written.
fn child_pid(state: &Path) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(state.join("child_pid"))
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            start.elapsed() < LIMIT,
            "no child_pid in {}",
            state.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// `rootlessctl --socket STATE/api.sock ARGS` in the world.
fn rootlessctl(world: &World, state: &Path, args: &[&str]) -> Outcome {
    run(
        world
            .command("rootlessctl")
            .arg("--socket")
            .arg(state.join("api.sock"))
            .args(args),
        LIMIT,
    )
}

/// integration-exit-code.sh: COMMAND's exit status is rootlesskit's, with and without a PID
/// namespace and whatever the reaper; a command that cannot start is a set-up failure (1).
pub fn rootlesskit_exit_code_is_the_commands_with_pidns_and_reaper_variants() {
    let world = World::new();
    let links = Links::new();
    for args in [
        &["--pidns=false"][..],
        &["--pidns=true", "--reaper=auto"],
        &["--pidns=true", "--reaper=true"],
        &["--pidns=true", "--reaper=false"],
    ] {
        for code in [0, 42] {
            let out = run(&mut links.sh(&world, args, &format!("exit {code}")), LIMIT);
            assert_eq!(out.code(), Some(code), "{args:?}: {out:#?}");
            if code == 0 {
                assert_eq!(out.stderr, "", "{args:?}");
            } else {
                assert!(
                    out.stderr.contains(&format!(
                        "[rootlesskit:child ] error: command [sh -c T='{} __tool'; exit 42] exited: exit status 42",
                        self_exe().display()
                    )) && out
                        .stderr
                        .ends_with("[rootlesskit:parent] error: child exited: exit status 42\n"),
                    "{args:?}: {out:#?}"
                );
            }
        }
    }
    for (args, line) in [
        (
            &["--net=builtin", "/nonexistent/cmd"][..],
            "[rootlesskit:parent] error: /nonexistent/cmd: command not found\n",
        ),
        (&[], "[rootlesskit:parent] error: no command specified\n"),
    ] {
        let out = run(&mut links.command(&world, args), LIMIT);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:#?}");
        assert!(out.stderr.ends_with(line), "{args:?}: {out:#?}");
    }
}

/// integration-exit-code.sh, signal part: SIGUSR1 to `child_pid` reaches COMMAND, which dies
/// of it: exit 255 and Go's words for the signal. SIGTERM to rootlesskit itself likewise.
pub fn rootlesskit_command_killed_by_a_signal_exits_255_and_names_it() {
    let world = World::new();
    let links = Links::new();
    for (args, to_child_pid, signal, words) in [
        (
            &["--pidns=false"][..],
            true,
            nix::sys::signal::Signal::SIGUSR1,
            "signal: user defined signal 1",
        ),
        (
            &["--pidns=true", "--reaper=true"],
            true,
            nix::sys::signal::Signal::SIGUSR1,
            "signal: user defined signal 1",
        ),
        (
            &["--net=builtin"],
            false,
            nix::sys::signal::Signal::SIGTERM,
            "signal: terminated",
        ),
    ] {
        let tmp = TempDir::new();
        let state = tmp.join("state");
        let flags = in_state_dir(&state, args);
        let child = links
            .command(&world, &flags)
            .args(["sleep", "infinity"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rootlesskit = child.id() as i32;
        let pid = child_pid(&state);
        kill(if to_child_pid { pid } else { rootlesskit }, signal);
        let out = crate::world::wait_output(child, LIMIT);
        assert_eq!(out.code(), Some(255), "{args:?}: {out:#?}");
        assert!(
            out.stderr.contains(&format!(
                "[rootlesskit:child ] error: command [sleep infinity] exited: {words}\n"
            )) && out
                .stderr
                .ends_with("[rootlesskit:parent] error: child exited: exit status 255\n"),
            "{args:?}: {out:#?}"
        );
        assert!(!state.exists(), "{args:?}: state dir left behind");
    }
}

/// integration-restart.sh: after `kill -9` of rootlesskit, the same `--state-dir` serves the
/// next one (rootlessctl inside reaches its api.sock). Killed alone as soon as `child_pid`
/// is there (before COMMAND may have started), usernet's process inside cleans up, also as
/// a PID namespace's init; killed together with it, the stale files are taken over.
pub fn rootlesskit_reuses_its_state_dir_after_sigkill() {
    let world = World::new();
    let links = Links::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let plain = in_state_dir(&state, &["--port-driver=builtin", "--net=builtin"]);
    let pidns = in_state_dir(
        &state,
        &["--port-driver=builtin", "--net=builtin", "--pidns"],
    );
    for (kill_inside_too, flags) in [(false, &plain), (false, &pidns), (true, &plain)] {
        let mut child = links
            .command(&world, flags)
            .args(["sleep", "infinity"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child_pid(&state);
        let outside = child.id() as i32;
        if kill_inside_too {
            // Both stopped first, so neither can clean up after the other.
            kill(outside, nix::sys::signal::Signal::SIGSTOP);
            kill(pid, nix::sys::signal::Signal::SIGSTOP);
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        kill(outside, nix::sys::signal::Signal::SIGKILL);
        crate::world::wait_with_limit(&mut child, LIMIT);
        // The process inside holds the state dir's lock until it has finished (cleaning up,
        // or being killed): a next instance started before that is rightly told "in use".
        let start = Instant::now();
        while alive(pid) {
            assert!(start.elapsed() < LIMIT);
            std::thread::sleep(Duration::from_millis(10));
        }
        if kill_inside_too {
            assert!(
                state.join("api.sock").exists() && state.join("lock").exists(),
                "nothing was left to take over"
            );
        } else {
            assert!(
                !state.join("api.sock").exists(),
                "the process inside did not clean up"
            );
        }
        let out = run(
            links
                .command(&world, flags)
                .args(["rootlessctl", "list-ports"]),
            LIMIT,
        );
        out.assert_ok();
        assert!(out.stdout.starts_with("ID"), "{out:#?}");
    }
}

/// integration-pdeathsig.sh: `kill -9` of rootlesskit ends the process inside and everything
/// COMMAND started, with the reaper and a PID namespace or without either.
pub fn rootlesskit_killed_leaves_nothing_running() {
    let world = World::new();
    let links = Links::new();
    for args in [&["--reaper=true", "--pidns"][..], &["--reaper=false"]] {
        let tmp = TempDir::new();
        let state = tmp.join("state");
        let marker = tmp.join("outlived");
        let flags = in_state_dir(&state, args);
        let script = format!(
            "(sleep 5; touch {}) & echo started; sleep 1000",
            marker.display()
        );
        let mut rk = links.server(&world, &flags, &script);
        assert_eq!(rk.next_line(), "started");
        let started = Instant::now();
        let inside = child_pid(&state);
        kill(rk.pid() as i32, nix::sys::signal::Signal::SIGKILL);
        rk.wait_exit(LIMIT);
        // The process inside cleans up and ends; then past the time the mark would be made.
        while (alive(inside) || state.exists()) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(inside),
            "{args:?}: child_pid {inside} outlived rootlesskit"
        );
        assert!(!state.exists(), "{args:?}: state dir left behind");
        if let Some(rest) = Duration::from_secs(6).checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        assert!(
            !marker.exists(),
            "{args:?}: a process COMMAND started outlived it"
        );
    }
}

/// integration-run-without-reap.sh: `--reaper=false` runs the command as it is (output, exit
/// code), and under `script(1)` the command keeps the terminal: it can open /dev/tty and its
/// process group is the terminal's foreground group. usernet never moves COMMAND to a
/// session of its own, so the same holds with the reaper and a PID namespace.
pub fn rootlesskit_keeps_the_terminal_with_or_without_the_reaper() {
    let world = World::new();
    let links = Links::new();
    let out = run(
        &mut links.command(&world, &["--reaper=false", "echo", "hello"]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout, "hello\n");
    let out = run(
        &mut links.command(&world, &["--reaper=false", "sh", "-c", "exit 42"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(42), "{out:#?}");
    for (flags, foreground_check) in [("--reaper=false", true), ("--pidns --reaper=true", false)] {
        // Inside a PID namespace, the terminal's process group (outside it) shows as 0.
        let foreground = if foreground_check {
            "set -- $(cut -d')' -f2 /proc/$$/stat); test \"$3\" = \"$6\" && echo FOREGROUND; "
        } else {
            ""
        };
        let inner = format!("exec 3</dev/tty && echo TTY; {foreground}echo DONE");
        let command = format!(
            "{} {flags} sh -c '{}'",
            links.rootlesskit().display(),
            inner.replace('\'', "'\\''")
        );
        let out = run(
            world
                .command("script")
                .args(["-qec", &command, "/dev/null"]),
            LIMIT,
        );
        out.assert_ok();
        assert!(out.stdout.contains("TTY"), "{flags}: {out:#?}");
        assert!(out.stdout.contains("DONE"), "{flags}: {out:#?}");
        if foreground_check {
            assert!(out.stdout.contains("FOREGROUND"), "{flags}: {out:#?}");
        }
        assert!(
            !out.stdout.contains("cannot set terminal process group"),
            "{out:#?}"
        );
    }
}

/// integration-propagation.sh: a mount the host makes after start is seen inside with
/// slave and shared propagation, not with private ones (a plain `private` only covers the
/// mount `/` itself); and `--copy-up` works with every mode but the shared ones.
pub fn rootlesskit_propagation_modes_show_host_mounts_as_rootlesskit_does() {
    let world = World::new();
    let links = Links::new();
    // The world's / shared, as on a systemd host (unshare(1) made it private).
    run(world.command("mount").args(["--make-rshared", "/"]), LIMIT).assert_ok();
    let tmp = TempDir::new();
    let dir = tmp.join("a");
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::MetadataExt;
    let on_root_mount =
        std::fs::metadata(&dir).unwrap().dev() == std::fs::metadata("/").unwrap().dev();
    for (mode, expected) in [
        ("private", if on_root_mount { "before" } else { "after" }),
        ("rprivate", "before"),
        ("slave", "after"),
        ("rslave", "after"),
        ("shared", "after"),
        ("rshared", "after"),
    ] {
        std::fs::write(dir.join("before_mount"), "").unwrap();
        // `mounted` (a file beside the mount point, seen whatever the propagation) says when
        // to look.
        let mounted = tmp.join("mounted");
        let script = format!(
            "echo ready; i=0; until [ -e {m} ] || [ $i -ge 1200 ]; do sleep 0.05; i=$((i+1)); done; \
             if test -e {d}/after_mount; then echo after; elif test -e {d}/before_mount; then echo before; fi",
            d = dir.display(),
            m = mounted.display()
        );
        let mut rk = links.server(&world, &[&format!("--propagation={mode}")], &script);
        assert_eq!(rk.next_line(), "ready");
        let mount = format!(
            "mount -t tmpfs none {d} && touch {d}/after_mount && touch {m}",
            d = dir.display(),
            m = mounted.display()
        );
        run(world.command("sh").args(["-c", &mount]), LIMIT).assert_ok();
        assert_eq!(rk.next_line(), expected, "--propagation={mode}");
        rk.wait_exit(LIMIT);
        std::fs::remove_file(&mounted).unwrap();
        run(world.command("umount").arg(&dir), LIMIT).assert_ok();

        let out = run(
            &mut links.command(
                &world,
                &[
                    &format!("--propagation={mode}"),
                    "--copy-up=/run",
                    "echo",
                    "test",
                ],
            ),
            LIMIT,
        );
        if mode.ends_with("shared") {
            assert_eq!(out.code(), Some(1), "{mode}: {out:#?}");
            assert_eq!(
                out.stderr,
                format!(
                    "[rootlesskit:parent] error: propagation {mode} does not support copy-up driver tmpfs+symlink\n"
                )
            );
        } else {
            out.assert_ok();
            assert_eq!(out.stdout, "test\n", "{mode}");
        }
    }
}

/// integration-port.sh, builtin driver: the protocol matrix of published ports, each case a
/// fresh rootlesskit running busybox httpd on port 80 inside, fetched with curl from the
/// world's 127.0.0.1 and ::1 (the page checked whole).
pub fn rootlesskit_published_ports_follow_tcp_tcp4_tcp6_over_ipv4_and_ipv6() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    let links = Links::new();
    let tmp = TempDir::new();
    let page = format!("hello from the namespace {}\n", std::process::id());
    std::fs::write(tmp.join("index.html"), &page).unwrap();
    const V4: &str = "http://127.0.0.1:8080/";
    const V6: &str = "http://[::1]:8080/";
    // (the -p specs, and the URLs that must work and those that must fail)
    let cases: [(&[&str], &[&str], &[&str]); 10] = [
        (&["0.0.0.0:8080:80/tcp"], &[V4, V6], &[]),
        (&["0.0.0.0:8080:80/tcp4"], &[V4], &[V6]),
        (&["[::]:8080:80/tcp6"], &[V6], &[V4]),
        (&["[::]:8080:[::1]:80/tcp6"], &[V6], &[]),
        (&["[::]:8080:[::1]:80/tcp"], &[V6], &[]),
        (&["[::]:8080:[127.0.0.1]:80/tcp6"], &[V6], &[]),
        (&["[::]:8080:[127.0.0.1]:80/tcp"], &[V6], &[]),
        (&["0.0.0.0:8080:[::1]:80/tcp4"], &[V4], &[]),
        (&["0.0.0.0:8080:[::1]:80/tcp"], &[V4], &[]),
        (
            &["0.0.0.0:8080:80/tcp4", "[::]:8080:80/tcp6"],
            &[V4, V6],
            &[],
        ),
    ];
    for (specs, work, fail) in cases {
        let mut flags = vec![
            "--net=builtin",
            "--disable-host-loopback",
            "--copy-up=/etc",
            "--port-driver=builtin",
        ];
        for spec in specs {
            flags.extend(["-p", spec]);
        }
        // busybox httpd goes to the background once it listens (on [::]:80, both families).
        let script = format!(
            "busybox httpd -p 80 -h {} && echo ready && exec sleep 1000",
            tmp.display()
        );
        let mut rk = links.server(&world, &flags, &script);
        assert_eq!(rk.next_line(), "ready", "{specs:?}");
        let fetch = |url: &str| {
            run(
                world
                    .command("curl")
                    .args(["-fsS", "--max-time", "10", url]),
                LIMIT,
            )
        };
        for url in work {
            let out = fetch(url);
            assert!(
                out.status.success() && out.stdout == page,
                "{specs:?}: {url} should work: {out:#?}"
            );
        }
        for url in fail {
            let out = fetch(url);
            assert!(
                !out.status.success(),
                "{specs:?}: {url} should fail: {out:#?}"
            );
        }
    }
    Ok(())
}

/// integration-net.sh: a name resolves through the stack's DNS forwarder (the resolv.conf
/// rootlesskit writes in the namespace) to the world's own resolver, a dnsmasq on its
/// 127.0.0.1, with /etc and /run copied up as Docker's launcher does.
pub fn rootlesskit_dns_resolves_through_the_forwarder_to_the_worlds_resolver() {
    let world = World::new();
    let links = Links::new();
    let _dns = dnsmasq_on(&world, "127.0.0.1");
    let _conf = world_resolv_conf(&world, "nameserver 127.0.0.1\n");
    let out = run(
        &mut links.sh(
            &world,
            &[
                "--net=builtin",
                "--copy-up=/etc",
                "--copy-up=/run",
                "--disable-host-loopback",
            ],
            "cat /etc/resolv.conf; getent hosts test.example",
        ),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.starts_with("nameserver 10.0.2.3\n"), "{out:#?}");
    assert!(
        out.stdout.contains("198.18.0.42     test.example"),
        "{out:#?}"
    );
}

/// integration-ipv6.sh: with `--ipv6` the namespace reaches an IPv6 host of the world
/// (2001:2::1), data checked both ways.
pub fn rootlesskit_ipv6_reaches_an_ipv6_host() -> Result<(), Unmet> {
    needs(&[Need::Ipv6])?;
    let world = World::new();
    let links = Links::new();
    let bytes = (8 * MIB).to_string();
    let _remote = world.server(&["tcp-server", "[2001:2::1]:9110", &bytes]);
    let out = run(
        &mut links.sh(
            &world,
            &["--net=builtin", "--ipv6"],
            &format!("$T tcp-client [2001:2::1]:9110 {bytes} {bytes}"),
        ),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=8388608 received=8388608"),
        "{out:#?}"
    );
    Ok(())
}

/// integration-systemd-socket.sh: under `systemd-socket-activate`, the command gets the
/// listening sockets at fds 3.., `LISTEN_FDS` counting them and `LISTEN_PID` naming the
/// command itself (not rootlesskit), with one socket or three, with a PID namespace or not;
/// and it answers on the socket that started it.
pub fn rootlesskit_socket_activation_hands_the_sockets_to_the_command() {
    let world = World::new();
    let links = Links::new();
    for (ports, flags) in [
        (&[9120][..], "--net=builtin"),
        (&[9121, 9122, 9123], "--net=builtin --pidns"),
    ] {
        let listen: Vec<String> = ports.iter().map(|p| format!("-l 127.0.0.1:{p}")).collect();
        let script = format!(
            "exec systemd-socket-activate {} {} {flags} {} __tool activated 2>&1",
            listen.join(" "),
            links.rootlesskit().display(),
            self_exe().display()
        );
        let mut sa = Server::from_child(
            world
                .command("sh")
                .args(["-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .expect("systemd-socket-activate (package systemd)"),
        );
        for _ in ports {
            let line = sa.next_line();
            assert!(line.starts_with("Listening on"), "{line}");
        }
        let client = world
            .tool(&["tcp-read-until-end", &format!("127.0.0.1:{}", ports[0])])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let want = format!(
            "activated fds={} listen_pid_is_self=true ports={}",
            ports.len(),
            ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut seen = Vec::new();
        loop {
            let line = sa.next_line();
            if line.starts_with("activated") {
                assert_eq!(line, want, "{flags}: after {seen:?}");
                break;
            }
            seen.push(line);
        }
        let out = crate::world::wait_output(client, LIMIT);
        out.assert_ok();
        assert_eq!(out.stdout.trim(), "eof 33", "{flags}");
        assert!(sa.wait_exit(LIMIT).success(), "{flags}");
    }
}

/// `--detach-netns`, as containerd-rootless.sh starts it: COMMAND stays in the caller's
/// network namespace, while `$ROOTLESSKIT_STATE_DIR/netns` is the namespace usernet serves:
/// a process entering it reaches the world, and ports published by `rootlessctl` and
/// `usernet ports` reach a server in it. resolv.conf stays in the state dir.
pub fn rootlesskit_detach_netns_keeps_the_command_in_the_callers_network() {
    let world = World::new();
    let links = Links::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let bytes = (8 * MIB).to_string();
    let _remote = world.server(&["tcp-server", "198.18.0.1:9130", &bytes]);
    let world_netns = run(world.command("readlink").arg("/proc/self/ns/net"), LIMIT);
    let script = format!(
        "readlink /proc/self/ns/net; ip -o link | grep -c tap0; \
         head -1 $ROOTLESSKIT_STATE_DIR/resolv.conf; grep -c 10.0.2.3 /etc/resolv.conf; \
         N=\"nsenter --net=$ROOTLESSKIT_STATE_DIR/netns\"; \
         $N ip -o -4 addr show tap0 | awk '{{print $4}}'; \
         $N $T tcp-client 198.18.0.1:9130 {bytes} {bytes}; \
         exec $N $T tcp-server 127.0.0.1:8130 {bytes}"
    );
    let flags = in_state_dir(
        &state,
        &[
            "--net=slirp4netns",
            "--mtu=65520",
            "--slirp4netns-sandbox=auto",
            "--slirp4netns-seccomp=auto",
            "--disable-host-loopback",
            "--port-driver=builtin",
            "--copy-up=/etc",
            "--copy-up=/run",
            "--propagation=rslave",
            "--detach-netns",
            // The world's servers are the host's own addresses, which the line above would
            // keep out; Docker's users add the same to reach theirs.
            "--disable-host-loopback=false",
        ],
    );
    let mut rk = links.server(&world, &flags, &script);
    assert_eq!(rk.next_line(), world_netns.stdout.trim(), "COMMAND's netns");
    assert_eq!(rk.next_line(), "0", "no tap0 in COMMAND's network");
    assert_eq!(rk.next_line(), "nameserver 10.0.2.3");
    assert_eq!(
        rk.next_line(),
        "0",
        "COMMAND's /etc/resolv.conf is the caller's"
    );
    assert_eq!(
        rk.next_line(),
        "10.0.2.100/24",
        "tap0 in the detached netns"
    );
    assert_eq!(rk.next_line(), "OK sent=8388608 received=8388608");
    assert!(rk.next_line().starts_with("listening"));
    // Published into the detached namespace, by rootlessctl and by usernet's own client.
    let out = rootlessctl(&world, &state, &["add-ports", "127.0.0.1:18130:8130/tcp"]);
    out.assert_ok();
    let out = run(
        world
            .usernet(&["ports", "--state-dir"])
            .arg(&state)
            .args(["add", "127.0.0.1:18131:8130/tcp"]),
        LIMIT,
    );
    out.assert_ok();
    for port in [18130, 18131] {
        let out = run(
            &mut world.tool(&["tcp-client", &format!("127.0.0.1:{port}"), &bytes, &bytes]),
            LIMIT,
        );
        out.assert_ok();
        assert!(
            out.stdout.starts_with("OK sent=8388608"),
            "{port}: {out:#?}"
        );
    }
    drop(rk);
    let start = Instant::now();
    while state.exists() {
        assert!(
            start.elapsed() < LIMIT,
            "state dir (with netns) left behind"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real `rootlessctl` against the personality's api.sock: `info` names the drivers asked
/// for, with the stack's addresses; ports are added, used, listed and removed. With
/// `--port-driver=slirp4netns` the info has that driver's shape, and a port to the child's
/// address (what clients of that driver send) works.
pub fn rootlessctl_drives_the_personalitys_api_socket() {
    let world = World::new();
    let links = Links::new();
    let bytes = MIB.to_string();
    for (flags, spec, info_lines) in [
        (
            &["--net=builtin", "--port-driver=builtin"][..],
            "127.0.0.1:18140:8140/tcp",
            &[
                "- Network Driver: builtin",
                "  - DNS: [10.0.2.3]",
                "  - IP: 10.0.2.100",
                "- Port Driver: builtin",
                "  - Supported protocols: [tcp tcp4 tcp6 udp udp4 udp6]",
            ][..],
        ),
        (
            &[
                "--net=slirp4netns",
                "--port-driver=slirp4netns",
                "--cidr=10.0.5.0/24",
            ],
            "127.0.0.1:18140:10.0.5.100:8140/tcp4",
            &[
                "- Network Driver: slirp4netns",
                "  - DNS: [10.0.5.3]",
                "  - IP: 10.0.5.100",
                "- Port Driver: slirp4netns",
                "  - Supported protocols: [tcp tcp4 udp udp4]",
            ],
        ),
    ] {
        let tmp = TempDir::new();
        let state = tmp.join("state");
        let all = in_state_dir(&state, flags);
        let mut rk = links.server(
            &world,
            &all,
            &format!("exec $T tcp-server 0.0.0.0:8140 {bytes}"),
        );
        assert!(rk.next_line().starts_with("listening"));
        let info = rootlessctl(&world, &state, &["info"]);
        info.assert_ok();
        for line in info_lines {
            assert!(info.stdout.contains(line), "{line:?}: {info:#?}");
        }
        for line in [
            "- REST API version: 1.1.1".to_string(),
            format!(
                "- Implementation version: 3.0.1+usernet.{}",
                env!("CARGO_PKG_VERSION")
            ),
            format!("- State Directory: {}", state.display()),
        ] {
            assert!(info.stdout.contains(&line), "{line:?}: {info:#?}");
        }
        let out = rootlessctl(&world, &state, &["add-ports", spec]);
        out.assert_ok();
        assert_eq!(out.stdout, "1\n");
        let out = run(
            &mut world.tool(&["tcp-client", "127.0.0.1:18140", &bytes, &bytes]),
            LIMIT,
        );
        out.assert_ok();
        // The slirp4netns driver forwards through the network's stack (a flow of the
        // stack's), as rootlesskit's does; the builtin one relays a socket opened inside.
        let stack_driver = flags.contains(&"--port-driver=slirp4netns");
        let stats = run(
            &mut world.usernet(&["stats", "--state-dir", state.to_str().unwrap()]),
            LIMIT,
        );
        stats.assert_ok();
        let inbound = if stack_driver {
            "inbound 1)"
        } else {
            "inbound 0)"
        };
        assert!(stats.stdout.contains(inbound), "{inbound}: {stats:#?}");
        if stack_driver {
            // And refuses what clients are told not to send (disallowLoopbackChildIP).
            let out = run(
                world
                    .command("rootlessctl")
                    .arg("--socket")
                    .arg(state.join("api.sock"))
                    .args(["add-ports", "127.0.0.1:18141:127.0.0.1:8140/tcp"]),
                LIMIT,
            );
            assert_eq!(out.code(), Some(1), "{out:#?}");
            assert!(out.stderr.contains("child IP 127.0.0.1"), "{out:#?}");
        }
        let list = rootlessctl(&world, &state, &["list-ports", "--json"]);
        assert!(list.stdout.contains("\"parentPort\":18140"), "{list:#?}");
        assert_eq!(
            rootlessctl(&world, &state, &["remove-ports", "1"]).stdout,
            "1\n"
        );
        let out = run(&mut world.tool(&["tcp-connect", "127.0.0.1:18140"]), LIMIT);
        assert!(out.stdout.starts_with("ConnectionRefused"), "{out:#?}");
        drop(rk);
    }
}

/// The other drivers' addresses, served by the same stack: vpnkit's 192.168.65.0/24 (the
/// host's loopback at .2, DNS at .1) and gvisor-tap-vsock's .1 for gateway, DNS and host.
pub fn rootlesskit_other_drivers_get_their_own_addresses() {
    let world = World::new();
    let links = Links::new();
    let _dns = dnsmasq_on(&world, "127.0.0.1");
    let _conf = world_resolv_conf(&world, "nameserver 127.0.0.1\n");
    let bytes = MIB.to_string();
    let _host = world.server(&["tcp-server", "127.0.0.1:9150", &bytes]);
    for (net, address, host) in [
        ("vpnkit", "192.168.65.3/24", "192.168.65.2"),
        ("gvisor-tap-vsock", "10.0.2.100/24", "10.0.2.1"),
    ] {
        let out = run(
            &mut links.sh(
                &world,
                &[&format!("--net={net}"), "--copy-up=/etc"],
                &format!(
                    "ip -o -4 addr show tap0 | awk '{{print $4}}'; ip route show default; \
                     cat /etc/resolv.conf; getent hosts test.example; \
                     $T tcp-client {host}:9150 {bytes} {bytes}"
                ),
            ),
            LIMIT,
        );
        out.assert_ok();
        let gateway = if net == "vpnkit" {
            "192.168.65.1"
        } else {
            "10.0.2.1"
        };
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some(address), "{net}: {out:#?}");
        assert!(
            lines
                .next()
                .unwrap_or("")
                .starts_with(&format!("default via {gateway} dev tap0")),
            "{net}: {out:#?}"
        );
        assert_eq!(
            lines.next(),
            Some(&*format!("nameserver {gateway}")),
            "{net}"
        );
        assert!(
            out.stdout.contains("198.18.0.42     test.example"),
            "{net}: {out:#?}"
        );
        assert!(
            out.stdout.contains("OK sent=1048576 received=1048576"),
            "{net}: {out:#?}"
        );
        // The driver was announced once, with its addresses.
        assert_eq!(
            out.stderr
                .matches(&format!(
                    "--net={net}: served by usernet's own network stack"
                ))
                .count(),
            1,
            "{net}: {out:#?}"
        );
    }
}

/// What callers probe: `--version` (and `-v`, and under the name `docker-rootlesskit`),
/// `--print-semver`, `--help` listing `--detach-netns` as containerd-rootless.sh greps for it,
/// and Go's error lines for a bad command line (exit 1).
pub fn rootlesskit_help_version_and_errors_keep_the_contract() {
    let world = World::new();
    let links = Links::new();
    let version = format!(
        "rootlesskit version 3.0.1+usernet.{}\n",
        env!("CARGO_PKG_VERSION")
    );
    for (program, arg) in [
        ("rootlesskit", "--version"),
        ("rootlesskit", "-v"),
        ("docker-rootlesskit", "--version"),
    ] {
        let out = run(world.command(links.dir.join(program)).arg(arg), LIMIT);
        out.assert_ok();
        assert_eq!(out.stdout, version, "{program} {arg}");
    }
    let out = run(&mut links.command(&world, &["--print-semver=major"]), LIMIT);
    assert_eq!(out.stdout, "3\n", "{out:#?}");
    for arg in ["--help", "-h"] {
        let out = run(&mut links.command(&world, &[arg]), LIMIT);
        out.assert_ok();
        assert!(
            out.stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some("--detach-netns")),
            "{out:#?}"
        );
        assert!(out.stdout.starts_with("NAME:\n   rootlesskit"), "{out:#?}");
    }
    for (args, line) in [
        (&["-foo", "true"][..], "flag provided but not defined: -foo"),
        (
            &["--debug=maybe", "true"],
            "invalid boolean value \"maybe\" for -debug: parse error",
        ),
        (
            &["--mtu", "x", "true"],
            "invalid value \"x\" for flag -mtu: parse error",
        ),
        (&["--net=magic", "true"], "unknown network mode: magic"),
        (
            &["--print-semver=build"],
            "expected --print-semver=(major|minor|patch), got \"build\"",
        ),
    ] {
        let out = run(&mut links.command(&world, args), LIMIT);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:#?}");
        assert_eq!(
            out.stderr,
            format!("[rootlesskit:parent] error: {line}\n"),
            "{args:?}"
        );
    }
}

/// `--evacuate-cgroup2`: rootlesskit's own processes leave their cgroup for the named
/// subgroup, COMMAND (in a cgroup namespace rooted at that cgroup) sees itself in `/NAME` and
/// a cgroup2 of its own on /sys/fs/cgroup, and the flag's preconditions are rootlesskit's.
pub fn rootlesskit_evacuate_cgroup2_moves_its_processes_into_the_subgroup() -> Result<(), Unmet> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(hierarchy) = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2"))
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
    }) else {
        return Err(Unmet("needs a cgroup2 hierarchy".into()));
    };
    let group = hierarchy.join(format!("usernet-it-evacuate-{}", std::process::id()));
    if std::fs::create_dir(&group).is_err() {
        return Err(Unmet(format!(
            "needs a writable cgroup2 hierarchy ({} is not)",
            hierarchy.display()
        )));
    }
    let world = World::new();
    let links = Links::new();
    // A shell moves itself into the test's cgroup and becomes rootlesskit.
    let script = format!(
        "echo $$ > {group}/cgroup.procs && exec {rk} --pidns --cgroupns --evacuate-cgroup2=evac \
         sh -c 'tail -1 /proc/self/cgroup; grep -c \" /sys/fs/cgroup .* - cgroup2 \" /proc/self/mountinfo; \
         wc -l < /sys/fs/cgroup/evac/cgroup.procs; wc -l < /sys/fs/cgroup/cgroup.procs'",
        group = group.display(),
        rk = links.rootlesskit().display(),
    );
    let out = run(world.command("sh").args(["-c", &script]), LIMIT);
    let _ = std::fs::remove_dir(group.join("evac"));
    let _ = std::fs::remove_dir(&group);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    // COMMAND's own cgroup, seen from its namespace; its cgroup2 on /sys/fs/cgroup, rooted at
    // the test's group; the group's processes all moved (rootlesskit, its child and
    // COMMAND's shell in evac, none left behind).
    assert_eq!(lines.first(), Some(&"0::/evac"), "{out:#?}");
    assert_eq!(lines.get(1), Some(&"1"), "{out:#?}");
    assert_ne!(lines.get(2), Some(&"0"), "{out:#?}");
    assert_eq!(lines.get(3), Some(&"0"), "{out:#?}");
    for (args, line) in [
        (
            &["--cgroupns", "--evacuate-cgroup2=evac", "true"][..],
            "evacuate-cgroup2 requires --pidns",
        ),
        (
            &["--pidns", "--evacuate-cgroup2=evac", "true"],
            "evacuate-cgroup2 requires --cgroupns",
        ),
    ] {
        let out = run(&mut links.command(&world, args), LIMIT);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:#?}");
        assert!(out.stderr.contains(line), "{args:?}: {out:#?}");
    }
    Ok(())
}

/// What rootlesskit exports to COMMAND: the state dir (absolute, holding `api.sock`,
/// `child_pid` and `lock`), and the caller's effective ids.
pub fn rootlesskit_exports_the_state_dir_and_the_callers_ids() {
    let world = World::new();
    let links = Links::new();
    let state = TempDir::new();
    let dir = state.join("rk");
    let flags = in_state_dir(&dir, &["--net=builtin"]);
    let out = run(
        &mut links.sh(
            &world,
            &flags,
            "echo \"$ROOTLESSKIT_STATE_DIR $ROOTLESSKIT_PARENT_EUID $ROOTLESSKIT_PARENT_EGID\"; \
             test -S \"$ROOTLESSKIT_STATE_DIR/api.sock\" && test -f \"$ROOTLESSKIT_STATE_DIR/child_pid\" \
             && test -f \"$ROOTLESSKIT_STATE_DIR/lock\" && echo files",
        ),
        LIMIT,
    );
    out.assert_ok();
    // The world maps the test's ids one to one as root.
    assert_eq!(
        out.stdout,
        format!("{} 0 0\nfiles\n", dir.display()),
        "{out:#?}"
    );
}
