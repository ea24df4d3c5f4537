//! Security properties: the host-loopback policy holds for every way of writing the host,
//! the state dir and sockets are the user's alone, and the long-lived process keeps no
//! capability it does not need.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::needs::{Need, Unmet, ipv6_available, needs};
use crate::world::{Outcome, Server, TempDir, World, run, self_exe};

const LIMIT: Duration = Duration::from_secs(120);

/// Run the raw prober in the guest (usernet with `flags`) against the world's watcher, and
/// return what the watcher saw after it, and the run's outcome.
fn probe(
    world: &World,
    watcher: &mut Server,
    flags: &[&str],
    dsts: &[&str],
) -> (Vec<String>, Outcome) {
    let script = format!(
        "{} __tool raw-probe tap0 7200 {}; sleep 1",
        self_exe().display(),
        dsts.join(" ")
    );
    // --debug: usernet's counters at exit show where frames went, should this fail.
    let mut args = vec!["run", "--debug"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", &script]);
    let out = run(&mut world.usernet(&args), LIMIT);
    out.assert_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("probed {}", dsts.len()),
        "{out:#?}"
    );
    // What got through has had a second inside the guest's run to arrive; allow more on a
    // loaded machine before concluding nothing did.
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        seen.extend(watcher.lines_so_far());
        std::thread::sleep(Duration::from_millis(50));
    }
    (seen, out)
}

pub fn host_loopback_policy_cannot_be_bypassed() {
    let world = World::new();
    // Anything reaching port 7200 of the world on any IPv4 or IPv6 address, over TCP or
    // UDP, is reported.
    let mut watcher = world.server(&["watch-any", "7200"]);
    // The prober works: without the flag, the gateway reaches the world's loopback (a TCP
    // connect for the SYN, and the datagram).
    let (seen, out) = probe(&world, &mut watcher, &[], &["10.0.2.2"]);
    assert!(
        seen.iter().any(|l| l.starts_with("tcp ")),
        "{seen:?} {out:#?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("udp ")),
        "{seen:?} {out:#?}"
    );
    // With it, no way of writing the host gets through: the gateway, loopback written
    // directly (any of 127/8), the unspecified address, the host's own addresses, broadcast.
    let v4 = [
        "10.0.2.2",
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "198.18.0.1",
        "198.18.0.2",
        "255.255.255.255",
        "10.0.2.255",
    ];
    let (seen, out) = probe(&world, &mut watcher, &["--disable-host-loopback"], &v4);
    assert!(seen.is_empty(), "reached the host: {seen:?} {out:#?}");
    if !ipv6_available() {
        return;
    }
    // IPv6 without --ipv6: nothing at all, not even the gateway.
    let v6_direct = [
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:198.18.0.1",
        "::ffff:10.0.2.2",
        "::",
        "::127.0.0.1",
    ];
    let mut all = v6_direct.to_vec();
    all.extend(["fd00::2", "fe80::2", "2001:2::1"]);
    for flags in [&[][..], &["--disable-host-loopback"][..]] {
        let (seen, out) = probe(&world, &mut watcher, flags, &all);
        assert!(
            seen.is_empty(),
            "IPv6 reached the host with {flags:?}: {seen:?} {out:#?}"
        );
    }
    // With --ipv6 the gateway reaches the host's ::1 (the prober works for IPv6)...
    let (seen, out) = probe(&world, &mut watcher, &["--ipv6"], &["fd00::2"]);
    assert!(
        seen.iter().any(|l| l.starts_with("tcp [::1]")),
        "{seen:?} {out:#?}"
    );
    // ...but loopback, unspecified and IPv4-mapped or -compatible addresses written directly
    // never do, whatever the flags; and with --disable-host-loopback neither do the
    // gateway, by either of its addresses, nor the host's own IPv6 address.
    let (seen, out) = probe(&world, &mut watcher, &["--ipv6"], &v6_direct);
    assert!(seen.is_empty(), "reached the host: {seen:?} {out:#?}");
    let (seen, out) = probe(
        &world,
        &mut watcher,
        &["--ipv6", "--disable-host-loopback"],
        &all,
    );
    assert!(seen.is_empty(), "reached the host: {seen:?} {out:#?}");
}

/// `setpriv` as uid/gid 1000 in the world, running the tool `args`.
fn as_other_user(world: &World, args: &[&str]) -> crate::world::Outcome {
    run(
        world
            .command("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
            .arg(self_exe())
            .arg("__tool")
            .args(args),
        LIMIT,
    )
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

pub fn other_users_cannot_reach_the_state_dir_or_the_api() -> Result<(), Unmet> {
    needs(&[Need::RealRoot])?;
    let world = World::with_many_ids();
    let tmp = TempDir::new();
    std::fs::set_permissions(&*tmp, PermissionsExt::from_mode(0o755)).unwrap();
    let state = tmp.join("state");
    let mut usernet = Server::from_child(
        world
            .usernet_sh(&state, "echo up; sleep 600")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(usernet.next_line(), "up");
    let api = state.join("api.sock");
    let start = Instant::now();
    while !api.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no api.sock");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mode(&state), 0o700, "state dir");
    assert_eq!(mode(&api), 0o600, "api.sock");
    let bp = state.join(".bp.sock");
    assert_eq!(mode(&bp), 0o600, ".bp.sock");
    let info = "GET /v1/info HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
    let path = api.to_str().unwrap();
    // Another user cannot even reach the socket...
    let out = as_other_user(&world, &["unix-request", path, info]);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stderr.contains("Permission denied"), "{out:#?}");
    // ...and where permissions were loosened by hand, the API still refuses them.
    std::fs::set_permissions(&state, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&api, PermissionsExt::from_mode(0o666)).unwrap();
    let out = as_other_user(&world, &["unix-request", path, info]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "HTTP/1.1 403 Forbidden", "{out:#?}");
    // The owner is served.
    let out = run(&mut world.tool(&["unix-request", path, info]), LIMIT);
    assert_eq!(out.stdout.trim(), "HTTP/1.1 200 OK", "{out:#?}");

    // The default state dir is private too.
    let out = run(
        &mut world.usernet(&[
            "run",
            "--",
            "sh",
            "-c",
            "stat -c %a \"$USERNET_STATE_DIR\" \"$USERNET_STATE_DIR/api.sock\"",
        ]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout, "700\n600\n", "{out:#?}");
    Ok(())
}

/// `program` run as `uid` (and the same gid) in the world.
fn as_user(world: &World, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = world.command("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program);
    c
}

/// Issue 11 item 5: user B (uid 1000) makes a directory anyone can write; user A (uid 1001)
/// is refused it as a state dir and as a place to create one, and A's client refuses the
/// api.sock B serves there, which B's own client believes.
pub fn other_users_state_dirs_and_api_servers_are_refused() -> Result<(), Unmet> {
    needs(&[Need::RealRoot])?;
    let world = World::with_many_ids();
    let tmp = TempDir::new();
    std::fs::set_permissions(&*tmp, PermissionsExt::from_mode(0o1777)).unwrap();
    let shared = tmp.join("sd");
    run(
        as_user(&world, 1000, "mkdir").arg("-m777").arg(&shared),
        LIMIT,
    )
    .assert_ok();
    let usernet = crate::world::usernet_bin();
    for state in [shared.clone(), shared.join("sub")] {
        let out = run(
            as_user(&world, 1001, usernet)
                .args(["run", "--net", "none", "--state-dir"])
                .arg(&state)
                .args(["--", "true"]),
            LIMIT,
        );
        assert_eq!(out.code(), Some(1), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        assert!(out.stderr.contains("belongs to uid 1000"), "{out:#?}");
    }
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "A made nothing there"
    );

    let api = shared.join("api.sock");
    let fake = r#"[{"id":7,"spec":{"proto":"tcp","parentPort":1234,"childPort":80}}]"#;
    let mut server = Server::from_child(
        as_user(&world, 1000, self_exe())
            .args(["__tool", "unix-http-serve", api.to_str().unwrap(), fake])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(server.next_line(), "listening");
    let client = |uid: u32, args: &[&str]| {
        run(
            as_user(&world, uid, usernet)
                .args(args)
                .arg("--state-dir")
                .arg(&shared),
            LIMIT,
        )
    };
    let out = client(1000, &["ports", "list"]);
    out.assert_ok();
    assert!(out.stdout.contains("1234"), "the fake answers: {out:#?}");
    for args in [&["ports", "list"][..], &["info"]] {
        let out = client(1001, args);
        assert_eq!(out.code(), Some(1), "{out:#?}");
        assert_eq!(out.stdout, "", "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        assert!(
            out.stderr.contains("served by uid 1000")
                && out.stderr.contains("not by you (uid 1001)"),
            "{out:#?}"
        );
    }
    Ok(())
}

/// The capability sets and hardening fields of every thread of `pid`.
fn thread_statuses(pid: u32) -> Vec<String> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("status");
        if let Ok(status) = std::fs::read_to_string(path) {
            all.push(status);
        }
    }
    all
}

pub fn after_setup_usernet_holds_no_capability_it_does_not_need() {
    let world = World::new();
    let _echo = world.server(&["tcp-echo", "198.18.0.1:7201"]);
    let mut usernet = Server::from_child(
        world
            .usernet(&["run", "-p", "18201:80", "--"])
            .args(["sh", "-c", "echo up; sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(usernet.next_line(), "up");
    // Once COMMAND runs, setup is over (the sandbox goes on right before the control
    // thread starts); give the threads a moment.
    std::thread::sleep(Duration::from_millis(300));
    let statuses = thread_statuses(usernet.pid());
    assert!(statuses.len() >= 2, "the stack and the control thread");
    for status in &statuses {
        for want in [
            // CAP_NET_BIND_SERVICE only: published ports added later may be privileged
            // where the system allows it.
            "CapInh:\t0000000000000000",
            "CapPrm:\t0000000000000400",
            "CapEff:\t0000000000000400",
            "CapAmb:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ] {
            assert!(status.contains(want), "{want} missing from:\n{status}");
        }
    }
}

/// A directory in `tmp` that uid 1000 owns (mode 0700), for state dirs and files of runs as
/// that user.
fn dir_of_user_1000(tmp: &TempDir) -> std::path::PathBuf {
    let dir = tmp.join("u1000");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o700)).unwrap();
    dir
}

/// `setpriv` to uid/gid 1000 in `world`, then `program`.
fn as_user_1000(world: &World, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = world.command("setpriv");
    c.args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(program);
    c
}

/// Every route the attacker tried was refused by the kernel, and so was the front door.
fn assert_all_denied(what: &str, out: &Outcome) {
    let lines: Vec<&str> = out.stdout.lines().collect();
    println!("{what}: {}", lines.join(", "));
    assert!(
        lines.len() >= 12,
        "{what}: the attacker did not finish: {out:#?}"
    );
    for line in &lines {
        let ok = line.starts_with("connect denied")
            || ["EPERM", "EACCES", "ENOENT"]
                .iter()
                .any(|e| line.ends_with(&format!(" denied {e}")));
        assert!(ok, "{what}: {line}\n{out:#?}");
    }
}

/// Issue 11.1: the guest's root (same kernel uid as usernet) can neither inspect nor drive
/// the host-side process, whether usernet runs COMMAND or attaches to a namespace, with or
/// without the sandbox and seccomp filter, as an unprivileged user; and the host's loopback
/// server, which the guest would reach through a hijacked usernet, sees nothing.
pub fn guest_cannot_inspect_or_drive_the_host_side_process() -> Result<(), Unmet> {
    needs(&[Need::RealRoot, Need::TunForEveryone])?;
    let world = World::with_many_ids();
    let mut watcher = world.server(&["watch-any", "7210"]);
    let tmp = TempDir::new();
    let own = dir_of_user_1000(&tmp);
    let tool = self_exe();
    let hardening: [&[&str]; 3] = [
        &[],
        &["--sandbox=false", "--seccomp=false"],
        &["--sandbox=true", "--seccomp=true"],
    ];
    for (n, flags) in hardening.iter().enumerate() {
        // usernet run: the tool is COMMAND; its grandparent is the host-side process.
        let state = own.join(format!("run{n}"));
        let out = run(
            as_user_1000(&world, crate::world::usernet_bin())
                .args(["run", "--disable-host-loopback", "--state-dir"])
                .arg(&state)
                .args(*flags)
                .arg("--")
                .arg(&tool)
                .args([
                    "__tool",
                    "attack-host-side",
                    "grandparent",
                    "2",
                    "10.0.2.2:7210",
                ]),
            LIMIT,
        );
        out.assert_ok();
        assert_all_denied(&format!("run {flags:?}"), &out);

        // usernet attach: a namespace the user made; the guest learns usernet's pid from a
        // file and attacks from the moment usernet starts until well after it is set up.
        let pid_file = own.join(format!("attach{n}.pid"));
        let guest = as_user_1000(&world, "unshare")
            .args(["--user", "--map-root-user", "--net", "--"])
            .arg(&tool)
            .args(["__tool", "attack-host-side"])
            .arg(format!("file:{}", pid_file.display()))
            .args(["4", "10.0.2.2:7210"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let guest_pid = guest.id();
        let exe = std::fs::canonicalize(&tool).unwrap();
        let start = Instant::now();
        while std::fs::read_link(format!("/proc/{guest_pid}/exe")).ok() != Some(exe.clone()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the guest did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut usernet = Server::from_child(
            as_user_1000(&world, crate::world::usernet_bin())
                .args(["attach", "-c", "--disable-host-loopback"])
                .args(*flags)
                .arg(guest_pid.to_string())
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // The pid is usernet's once setpriv has executed it (before that, it is setpriv's,
        // an ordinary process of the user's), and it is protected once its constructor has
        // made it non-dumpable, which /proc shows as root owning /proc/PID/fd. The instant
        // between the two is the residual window `harden` documents; this test attacks the
        // process as it is from then on.
        let usernet_exe = std::fs::canonicalize(crate::world::usernet_bin()).unwrap();
        let start = Instant::now();
        loop {
            let exe = std::fs::read_link(format!("/proc/{}/exe", usernet.pid())).ok();
            let owner = std::fs::metadata(format!("/proc/{}/fd", usernet.pid()))
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .ok();
            if exe.as_ref() == Some(&usernet_exe) && owner == Some(0) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "usernet did not start"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let temp = pid_file.with_extension("tmp");
        std::fs::write(&temp, usernet.pid().to_string()).unwrap();
        std::os::unix::fs::chown(&temp, Some(1000), Some(1000)).unwrap();
        std::fs::rename(&temp, &pid_file).unwrap();
        let out = crate::world::wait_output(guest, LIMIT);
        assert_all_denied(&format!("attach {flags:?}"), &out);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(usernet.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        usernet.wait_exit(LIMIT);
    }
    std::thread::sleep(Duration::from_millis(500));
    let seen = watcher.lines_so_far();
    assert!(seen.is_empty(), "the host's loopback was reached: {seen:?}");
    Ok(())
}
