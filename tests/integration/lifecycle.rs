//! The launcher's promises: exit codes and signals propagate, errors are one clear line, the
//! namespaces look as documented, and nothing is left behind.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::needs::{Need, Unmet, needs};
use crate::world::{Outcome, TempDir, World, run, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(60);

pub fn exit_code_of_command_is_propagated() {
    let world = World::new();
    for code in [0, 1, 42, 255] {
        let out = run(
            &mut world.usernet(&["run", "--", "sh", "-c", &format!("exit {code}")]),
            LIMIT,
        );
        assert_eq!(out.code(), Some(code), "{out:#?}");
        assert_eq!(
            out.stderr, "",
            "a command's own exit code is not an error of ours"
        );
    }
}

pub fn command_killed_by_signal_gives_128_plus_signal() {
    let world = World::new();
    let out = run(
        &mut world.usernet(&["run", "--", "sh", "-c", "kill -KILL $$"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(128 + 9), "{out:#?}");
    let out = run(
        &mut world.usernet(&["run", "--", "sh", "-c", "kill -TERM $$"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(128 + 15), "{out:#?}");
}

pub fn sigint_sigterm_sighup_are_forwarded_to_the_command() {
    let world = World::new();
    let cases = [
        (libc::SIGTERM, "TERM", 7),
        (libc::SIGINT, "INT", 8),
        (libc::SIGHUP, "HUP", 9),
    ];
    // With --pidns the signals go through the namespace's init.
    for (pidns, (signal, name, code)) in [false, true]
        .into_iter()
        .flat_map(|p| cases.map(|c| (p, c)))
    {
        // The command traps the signal and exits with a code only it knows, so the exit
        // status proves the signal reached COMMAND itself.
        let script = format!("trap 'exit {code}' {name}; echo ready; while :; do sleep 0.05; done");
        let mut args = vec!["run"];
        if pidns {
            args.push("--pidns");
        }
        args.extend(["--", "sh", "-c", &script]);
        let mut child = world
            .usernet(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_with_limit(&mut child, LIMIT);
        assert_eq!(
            status.code(),
            Some(code),
            "SIG{name} was not forwarded (--pidns: {pidns})"
        );
    }
}

pub fn command_not_found_gives_127_and_one_line() {
    let world = World::new();
    let out = run(
        &mut world.usernet(&["run", "--", "no-such-command-xyz"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(127), "{out:#?}");
    assert_eq!(
        out.stderr,
        "usernet: no-such-command-xyz: command not found\n"
    );
}

pub fn bad_flag_values_are_one_line_and_nonzero() {
    let world = World::new();
    for args in [
        &["run", "--mtu", "12", "--", "true"][..],
        &["run", "--mtu", "big", "--", "true"],
        &["run", "--ifname", "has/slash", "--", "true"],
        &["run", "--net", "magic", "--", "true"],
        &["run"],
        &["fly"],
    ] {
        let out = run(&mut world.usernet(args), LIMIT);
        assert_one_line_error(&out, 2, "");
    }
    // A flag usernet does not know is not COMMAND (issue 11 item 7): exit 2, naming it and
    // where COMMAND goes; after "--" the same word is a command name.
    for (args, needle) in [
        (
            &["run", "--mtuu", "1500", "--", "true"][..],
            "unknown flag --mtuu",
        ),
        (
            &["run", "--subid-source", "static", "--", "true"],
            "unknown flag --subid-source",
        ),
        (&["run"], "missing COMMAND"),
        (
            &["run", "--net", "none", "--mtu", "1500", "--", "true"],
            "--mtu does nothing with --net none",
        ),
    ] {
        let out = run(&mut world.usernet(args), LIMIT);
        assert_one_line_error(&out, 2, needle);
    }
    let out = run(&mut world.usernet(&["run", "--", "--mtuu"]), LIMIT);
    assert_one_line_error(&out, 127, "--mtuu: command not found");
}

/// A failure that is exactly one line on stderr, with this exit code and text.
fn assert_one_line_error(out: &Outcome, code: i32, needle: &str) {
    assert_eq!(out.code(), Some(code), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(out.stderr.starts_with("usernet: "), "{out:#?}");
    assert!(out.stderr.contains(needle), "{out:#?}");
}

pub fn missing_tun_device_is_a_clear_error() {
    let world = World::new();
    // Hide /dev/net/tun in the world's mount namespace.
    let script = format!(
        "mount -t tmpfs none /dev/net && exec {} run -- true",
        crate::world::usernet_bin()
    );
    let out = run(world.command("sh").args(["-c", &script]), LIMIT);
    assert_one_line_error(&out, 1, "/dev/net/tun is missing");
}

pub fn disabled_user_namespaces_are_a_clear_error() {
    let world = World::new();
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec {} run -- true",
        crate::world::usernet_bin()
    );
    let out = run(world.command("sh").args(["-c", &script]), LIMIT);
    assert_one_line_error(&out, 1, "cannot create a user namespace");
}

pub fn namespace_has_tap0_route_and_resolv_conf() {
    let world = World::new();
    let script = "cat /sys/class/net/tap0/mtu /sys/class/net/tap0/tx_queue_len; \
                  ip -4 -o addr show dev tap0; ip route show default; cat /etc/resolv.conf; \
                  cat /proc/self/uid_map";
    let out = run(
        &mut world.usernet(&["run", "--mtu", "9000", "--", "sh", "-c", script]),
        LIMIT,
    );
    out.assert_ok();
    let s = &out.stdout;
    let mut lines = s.lines();
    assert_eq!(lines.next(), Some("9000"));
    let qlen: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(qlen >= 1000, "txqueuelen {qlen}");
    assert!(s.contains("inet 10.0.2.100/24"), "{s}");
    assert!(s.contains("default via 10.0.2.2 dev tap0"), "{s}");
    assert!(s.contains("nameserver 10.0.2.3"), "{s}");
    assert!(
        s.lines().any(|l| l.split_whitespace().next() == Some("0")),
        "root inside: {s}"
    );
}

pub fn net_none_has_only_loopback_and_net_host_shares_the_network() {
    let world = World::new();
    let out = run(
        &mut world.usernet(&["run", "--net", "none", "--", "ls", "/sys/class/net"]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let out = run(
        &mut world.usernet(&["run", "--net", "host", "--", "cat", "/proc/self/net/dev"]),
        LIMIT,
    );
    out.assert_ok();
    assert!(!out.stdout.contains("tap0"));
    // The world's 198.18.0.1 is visible: same network namespace as the caller.
    let out = run(
        &mut world.usernet(&["run", "--net", "host", "--", "ip", "-4", "-o", "addr"]),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.contains("198.18.0.1"), "{out:#?}");
}

pub fn nothing_is_left_behind_after_exit() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let script = format!(
        "sleep 1000 & echo $! > {tmp}/bg; cat {state}/child_pid > {tmp}/child; echo $$ > {tmp}/cmd",
        tmp = tmp.display(),
        state = state.display()
    );
    let out = run(&mut world.usernet_sh(&state, &script), LIMIT);
    out.assert_ok();
    assert!(!state.exists(), "state dir {} left behind", state.display());
    for f in ["bg", "child", "cmd"] {
        let pid: i32 = std::fs::read_to_string(tmp.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{f} process {pid} still exists"
        );
    }
    // The resolv.conf bind mount lived only in the child's mount namespace.
    let out = run(world.command("cat").arg("/proc/self/mountinfo"), LIMIT);
    assert!(!out.stdout.contains("resolv.conf"), "{}", out.stdout);

    // The default state dir (under $XDG_RUNTIME_DIR) is removed as well.
    let xdg = tmp.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let out = run(
        world
            .usernet(&["run", "--", "true"])
            .env("XDG_RUNTIME_DIR", &xdg),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(
        std::fs::read_dir(&xdg).unwrap().count(),
        0,
        "default state dir left behind"
    );
}

pub fn usernet_killed_with_sigkill_leaves_nothing_behind() {
    let world = World::new();
    let tmp = TempDir::new();
    let xdg = tmp.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    // COMMAND, and a process it left in the background.
    let script = format!(
        "sleep 1000 & echo $! > {tmp}/bg; echo $$ > {tmp}/cmd; echo started; wait",
        tmp = tmp.display()
    );
    let child = world
        .usernet(&["run", "--", "sh", "-c", &script])
        .env("XDG_RUNTIME_DIR", &xdg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut usernet = crate::world::Server::from_child(child);
    assert_eq!(usernet.next_line(), "started");
    assert_eq!(std::fs::read_dir(&xdg).unwrap().count(), 1, "no state dir");
    let pids: Vec<i32> = ["bg", "cmd"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(tmp.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(usernet.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    usernet.wait_exit(LIMIT);
    // The child in the namespace notices, ends COMMAND's tree and removes the state dir.
    let start = std::time::Instant::now();
    let gone = |pid: &i32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    while start.elapsed() < Duration::from_secs(10)
        && !(pids.iter().all(gone) && std::fs::read_dir(&xdg).unwrap().count() == 0)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in &pids {
        assert!(gone(pid), "process {pid} outlived usernet");
    }
    assert_eq!(
        std::fs::read_dir(&xdg).unwrap().count(),
        0,
        "state dir left behind"
    );
}

pub fn copy_up_gives_a_writable_etc_with_resolv_conf_as_a_file() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let script = "test -L /etc/passwd && test ! -L /etc/resolv.conf && cat /etc/resolv.conf && \
                  head -c 5 /etc/passwd && echo && echo changed > /etc/usernet-copy-up && \
                  cat /etc/usernet-copy-up && rm /etc/passwd && test ! -e /etc/passwd";
    let out = run(
        world
            .usernet(&["run", "--copy-up", "/etc", "--state-dir"])
            .arg(&state)
            .args(["--", "sh", "-c", script]),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.contains("nameserver 10.0.2.3"), "{out:#?}");
    assert!(
        out.stdout.contains("root:"),
        "the originals are readable: {out:#?}"
    );
    assert!(out.stdout.contains("changed"), "{out:#?}");
    // The world's /etc is as it was.
    let out = run(
        world.command("sh").args([
            "-c",
            "test ! -e /etc/usernet-copy-up && test -e /etc/passwd",
        ]),
        LIMIT,
    );
    out.assert_ok();
    assert!(!state.exists(), "state dir left behind");
    // A directory that holds the state dir cannot be copied up; a file cannot either.
    for (dir, why) in [
        (tmp.display().to_string(), "holds the state dir"),
        ("/etc/passwd".to_string(), "not a directory"),
    ] {
        let out = run(
            world
                .usernet(&["run", "--copy-up", &dir, "--state-dir"])
                .arg(&state)
                .args(["--", "true"]),
            LIMIT,
        );
        assert_eq!(out.code(), Some(1), "{out:#?}");
        assert!(out.stderr.contains(why), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        assert!(!state.exists(), "state dir left behind after the error");
    }
}

pub fn propagation_rslave_shows_mounts_made_later_on_the_host() {
    let world = World::new();
    // The world's / shared, as on a systemd host (unshare(1) made it private).
    run(world.command("mount").args(["--make-rshared", "/"]), LIMIT).assert_ok();
    let tmp = TempDir::new();
    let dir = tmp.join("m");
    std::fs::create_dir(&dir).unwrap();
    // `mounted` (a file beside the mount point, seen whatever the propagation) says when to
    // look.
    let mounted = tmp.join("mounted");
    for (propagation, expected) in [("rslave", "seen"), ("rprivate", "not seen")] {
        let script = format!(
            "echo ready; i=0; until [ -e {m} ] || [ $i -ge 1200 ]; do sleep 0.05; i=$((i+1)); done; \
             if test -e {d}/marker; then echo seen; else echo not seen; fi",
            d = dir.display(),
            m = mounted.display()
        );
        let child = world
            .usernet(&[
                "run",
                "--propagation",
                propagation,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut usernet = crate::world::Server::from_child(child);
        assert_eq!(usernet.next_line(), "ready");
        let mount = format!(
            "mount -t tmpfs none {d} && touch {d}/marker && touch {m}",
            d = dir.display(),
            m = mounted.display()
        );
        run(world.command("sh").args(["-c", &mount]), LIMIT).assert_ok();
        assert_eq!(usernet.next_line(), expected, "--propagation {propagation}");
        usernet.wait_exit(LIMIT);
        std::fs::remove_file(&mounted).unwrap();
        run(world.command("umount").arg(&dir), LIMIT).assert_ok();
    }
}

pub fn pidns_makes_usernet_init_and_nothing_outlives_it() {
    let world = World::new();
    let out = run(
        &mut world.usernet(&[
            "run",
            "--pidns",
            "--",
            "sh",
            "-c",
            "cat /proc/1/comm; echo $$; ls /proc | grep -c '^[0-9]'; exit 7",
        ]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(7), "{out:#?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "usernet", "PID 1 is usernet's: {out:#?}");
    let own: u32 = lines[1].parse().unwrap();
    assert!(own > 1 && own < 10, "COMMAND's pid inside: {out:#?}");
    let count: u32 = lines[2].parse().unwrap();
    assert!(
        count < 10,
        "/proc lists the namespace's processes only: {out:#?}"
    );
    // Killed with SIGKILL, usernet takes everything in the namespace with it: a process that
    // would leave a mark after 5 s never does.
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let marker = tmp.join("marker");
    let script = format!(
        "(sleep 5; touch {m}) & echo started; wait",
        m = marker.display()
    );
    let child = world
        .usernet(&["run", "--pidns", "--state-dir"])
        .arg(&state)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut usernet = crate::world::Server::from_child(child);
    assert_eq!(usernet.next_line(), "started");
    let started = std::time::Instant::now();
    let init: i32 = std::fs::read_to_string(state.join("child_pid"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        std::fs::read_to_string(format!("/proc/{init}/comm"))
            .unwrap()
            .starts_with("usernet"),
        "child_pid names the namespace's init"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(usernet.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    usernet.wait_exit(LIMIT);
    // The state dir goes once the namespace's init has cleaned up; then past the time the
    // mark would have been made.
    while state.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!state.exists(), "state dir left behind");
    if let Some(rest) = Duration::from_secs(6).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    assert!(
        !marker.exists(),
        "a process in the namespace outlived usernet"
    );
}

pub fn state_dir_holds_child_pid_and_a_lock() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let script = format!(
        "ls -a {} && cat {}/child_pid",
        state.display(),
        state.display()
    );
    let out = run(&mut world.usernet_sh(&state, &script), LIMIT);
    out.assert_ok();
    assert!(out.stdout.lines().any(|l| l == "child_pid"), "{out:#?}");
    assert!(out.stdout.lines().any(|l| l == "lock"), "{out:#?}");
    let pid: i32 = out.stdout.lines().last().unwrap().parse().unwrap();
    assert!(pid > 1);
}

/// Run usernet as nobody (uid 65534, which newuidmap needs to have a name) with `subids` as /etc/subuid and /etc/subgid (in a private mount
/// namespace of the host; `--net none`, so no packet moves) and return the namespace's maps.
fn maps_as_unprivileged_user(subids: &str) -> String {
    let tmp = TempDir::new();
    let file = tmp.join("subids");
    std::fs::write(&file, subids).unwrap();
    let script = format!(
        "mount --bind {f} /etc/subuid && mount --bind {f} /etc/subgid && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups env -u XDG_RUNTIME_DIR \
         {usernet} run --net none -- cat /proc/self/uid_map /proc/self/gid_map",
        f = file.display(),
        usernet = crate::world::usernet_bin()
    );
    let out = run(
        std::process::Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .current_dir("/"),
        LIMIT,
    );
    out.assert_ok();
    out.stdout
}

pub fn unprivileged_user_is_root_inside_with_or_without_subordinate_ids() -> Result<(), Unmet> {
    needs(&[Need::RealRoot])?;
    let lines = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    // No subordinate ids: the caller alone, as root.
    let single = lines(&maps_as_unprivileged_user(""));
    assert_eq!(
        single,
        vec![vec!["0", "65534", "1"]; 2],
        "uid_map then gid_map"
    );
    // With subordinate ids and newuidmap/newgidmap: ids 1.. come from the ranges.
    let sub = lines(&maps_as_unprivileged_user("nobody:300000:5000\n"));
    let expected = [vec!["0", "65534", "1"], vec!["1", "300000", "5000"]];
    assert_eq!(sub[..2], expected[..], "uid_map");
    assert_eq!(sub[2..], expected[..], "gid_map");
    Ok(())
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Issue 11.6: SIGKILL of usernet's process inside the namespace (as the OOM killer may do)
/// ends everything COMMAND started, with or without `--pidns`: the host-side process, a
/// subreaper too, inherits what is left and ends it, then exits as its child did (137).
pub fn killing_the_process_inside_ends_everything_command_started() {
    let world = World::new();
    // (flags, which process inside to kill: the one child_pid names, or its parent)
    let cases: [(&[&str], bool); 3] = [(&[], false), (&["--pidns"], true), (&["--pidns"], false)];
    for (flags, kill_parent_of_child_pid) in cases {
        let tmp = TempDir::new();
        let state = tmp.join("state");
        // COMMAND, a child it waits for, and an orphan of a subshell that exited; each writes
        // its pid outside (as the world sees it, through /proc/self, which --pidns remounts).
        let script = format!(
            "sleep 1000 & echo $! > {t}/bg; \
             (sleep 1000 & echo $! > {t}/orphan) ; \
             echo $$ > {t}/cmd; echo started; wait",
            t = tmp.display()
        );
        let child = world
            .usernet(&["run", "--state-dir"])
            .arg(&state)
            .args(flags)
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut usernet = crate::world::Server::from_child(child);
        assert_eq!(usernet.next_line(), "started");
        let child_pid: i32 = std::fs::read_to_string(state.join("child_pid"))
            .unwrap()
            .parse()
            .unwrap();
        let victim = if kill_parent_of_child_pid {
            ppid(child_pid)
        } else {
            child_pid
        };
        assert_ne!(
            victim,
            usernet.pid() as i32,
            "the victim is the process inside"
        );
        // With --pidns the pids the script wrote are the namespace's: find the processes by
        // their place in the tree instead (every sleep under COMMAND's tree).
        let sleepers = descendants(victim)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep" || c.trim() == "sh")
            })
            .collect::<Vec<_>>();
        assert!(
            sleepers.len() >= 3,
            "{flags:?}: COMMAND and its two sleepers: {sleepers:?}"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = usernet.wait_exit(LIMIT);
        assert_eq!(status.code(), Some(137), "{flags:?}: usernet's exit");
        let gone = |pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        };
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) && !sleepers.iter().all(gone) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: Vec<_> = sleepers.iter().filter(|p| !gone(p)).collect();
        assert!(left.is_empty(), "{flags:?}: outlived usernet: {left:?}");
        assert!(!state.exists(), "{flags:?}: state dir left behind");
    }
}

/// Every process below `pid` (from the world's /proc).
fn descendants(pid: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            Some((p, rest.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, parent) in &all {
            if parent == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Issue 11 item 4: a directory holding files usernet did not create is refused, with every
/// file left as it was; parents usernet creates go again, deepest first.
pub fn state_dir_removes_only_what_usernet_created() {
    let world = World::new();
    let tmp = TempDir::new();
    let users = tmp.join("d");
    std::fs::create_dir(&users).unwrap();
    std::fs::write(users.join("resolv.conf"), "mine\n").unwrap();
    let out = run(&mut world.usernet_sh(&users, "true"), LIMIT);
    assert_one_line_error(&out, 1, "holds resolv.conf, which usernet did not create");
    assert_eq!(
        std::fs::read_to_string(users.join("resolv.conf")).unwrap(),
        "mine\n"
    );
    let left: Vec<_> = std::fs::read_dir(&users)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["resolv.conf"], "nothing added, nothing taken");
    // Even next to a lock, a name usernet never uses is not stale state.
    std::fs::write(users.join("lock"), "").unwrap();
    std::fs::write(users.join("notes"), "mine\n").unwrap();
    std::fs::remove_file(users.join("resolv.conf")).unwrap();
    let out = run(&mut world.usernet_sh(&users, "true"), LIMIT);
    assert_one_line_error(&out, 1, "holds notes");
    assert!(users.join("notes").exists() && users.join("lock").exists());

    // a/b/c: all three are usernet's, and all three go.
    let nested = tmp.join("a/b/c");
    let script = format!("ls -A {}", nested.display());
    let out = run(&mut world.usernet_sh(&nested, &script), LIMIT);
    out.assert_ok();
    assert!(out.stdout.lines().any(|l| l == "child_pid"), "{out:#?}");
    assert!(!tmp.join("a").exists(), "a/b left behind");

    // An empty directory of the user's is used, emptied of what usernet made, and kept;
    // a file COMMAND leaves in a directory usernet made keeps that directory.
    let empty = tmp.join("empty");
    std::fs::create_dir(&empty).unwrap();
    run(&mut world.usernet_sh(&empty, "true"), LIMIT).assert_ok();
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    let made = tmp.join("made");
    let script = format!("echo kept > {}/mine", made.display());
    run(&mut world.usernet_sh(&made, &script), LIMIT).assert_ok();
    let left: Vec<_> = std::fs::read_dir(&made)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["mine"], "only COMMAND's file is left");
}

/// A state dir whose usernet was killed with everything in it (no one left to clean up) is
/// taken over by the next usernet, as rootlesskit does.
pub fn stale_state_dir_of_a_killed_usernet_is_reused() {
    use std::os::unix::process::CommandExt;
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let child = world
        .usernet(&["run", "--state-dir"])
        .arg(&state)
        .args([
            "-p",
            "18300:80",
            "--",
            "sh",
            "-c",
            "echo started; sleep 1000",
        ])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut usernet = crate::world::Server::from_child(child);
    assert_eq!(usernet.next_line(), "started");
    let inside: i32 = std::fs::read_to_string(state.join("child_pid"))
        .unwrap()
        .parse()
        .unwrap();
    // usernet, its process in the namespace and COMMAND, all at once.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(usernet.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    usernet.wait_exit(LIMIT);
    // The process inside holds the lock until it is gone (a zombie holds no files).
    let start = std::time::Instant::now();
    while crate::world::alive(inside) {
        assert!(start.elapsed() < LIMIT, "the process inside never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let stale = names(&state);
    for name in ["lock", "child_pid", "api.sock", ".bp.sock", "resolv.conf"] {
        assert!(stale.iter().any(|n| n == name), "{name} in {stale:?}");
    }
    let script = format!("ls -A {}", state.display());
    let out = run(
        world
            .usernet(&["run", "--state-dir"])
            .arg(&state)
            .args(["-p", "18300:80", "--", "sh", "-c", &script]),
        LIMIT,
    );
    out.assert_ok();
    assert!(out.stdout.lines().any(|l| l == "lock"), "{out:#?}");
    // What this run made is gone again; the directory, which it did not make, stays.
    assert_eq!(names(&state), Vec::<String>::new());
}
