//! Inbound: published ports through the builtin port driver, the client's real address
//! inside, rootlesskit's REST API with the real `rootlessctl`, and our own client.

use std::process::Stdio;
use std::time::Duration;

use crate::needs::{Need, Unmet, needs};
use crate::world::{Server, TempDir, World, run};

const LIMIT: Duration = Duration::from_secs(180);
const MIB: u64 = 1 << 20;

fn exchange_through_published_port(duplex: bool) {
    let world = World::new();
    let bytes = (64 * MIB).to_string();
    let mut server = vec!["tcp-server", "127.0.0.1:8000", &bytes];
    let mut client = vec!["tcp-client", "127.0.0.1:18000", &bytes, &bytes];
    if duplex {
        server.push("duplex");
        client.push("duplex");
    }
    let _usernet = world.usernet_server(&["-p", "18000:8000"], &server);
    let out = run(&mut world.tool(&client), LIMIT);
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=67108864 received=67108864"),
        "{out:#?}"
    );
}

pub fn published_tcp_port_carries_64mib_each_way() {
    exchange_through_published_port(false);
}

pub fn published_tcp_port_carries_64mib_both_ways_at_once() {
    exchange_through_published_port(true);
}

pub fn udp_echo_through_a_published_port() {
    let world = World::new();
    let _usernet = world.usernet_server(&["-p", "18001:7001/udp"], &["udp-echo", "127.0.0.1:7001"]);
    for addr in ["127.0.0.1:18001", "198.18.0.1:18001"] {
        let out = run(
            &mut world.tool(&["udp-client", addr, "500", "60000"]),
            LIMIT,
        );
        out.assert_ok();
        assert_eq!(out.stdout.trim(), "OK 500", "{addr}");
    }
}

pub fn inside_server_sees_the_clients_real_address() {
    let world = World::new();
    let flags = ["-p", "18002:8002", "-p", "18003:7003/udp"];
    // Inside: a TCP server printing its peers, and a UDP server answering with the sender.
    let script = "$T tcp-peer 127.0.0.1:8002 & $T udp-whoami 127.0.0.1:7003";
    let mut usernet = crate::services::guest_server(&world, &flags, script, 2);
    // A client on a world address (not loopback): its address reaches the server inside.
    let out = run(&mut world.tool(&["tcp-connect", "198.18.0.1:18002"]), LIMIT);
    out.assert_ok();
    let peer = usernet.next_line();
    assert!(
        peer.starts_with("peer 198.18.0.1:"),
        "TCP peer inside: {peer}"
    );
    let out = run(&mut world.tool(&["udp-ask", "198.18.0.1:18003"]), LIMIT);
    out.assert_ok();
    assert!(
        out.stdout.starts_with("answer 198.18.0.1:"),
        "UDP peer inside: {out:#?}"
    );
    // The exact port too: the client's, not one of ours.
    let out = run(
        &mut world.tool(&["udp-ask", "198.18.0.1:18003", "40777"]),
        LIMIT,
    );
    assert_eq!(out.stdout.trim(), "answer 198.18.0.1:40777", "{out:#?}");
    // A loopback client stays loopback (its address means nothing inside).
    run(&mut world.tool(&["tcp-connect", "127.0.0.1:18002"]), LIMIT).assert_ok();
    let peer = usernet.next_line();
    assert!(peer.starts_with("peer 127.0.0.1:"), "{peer}");
}

pub fn two_hundred_concurrent_inbound_connections() {
    let world = World::new();
    let per_conn = (256 * 1024).to_string();
    let _usernet = world.usernet_server(
        &["-p", "18005:8005"],
        &["tcp-server", "127.0.0.1:8005", &per_conn],
    );
    let out = run(
        &mut world.tool(&["tcp-many", "127.0.0.1:18005", "200", &per_conn]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "OK 200");
}

pub fn refused_target_inside_gives_an_immediate_reset() {
    let world = World::new();
    // The port is published, but nothing listens on 8006 inside.
    let _usernet = world.usernet_server(&["-p", "18006:8006"], &["udp-echo", "127.0.0.1:7006"]);
    let started = std::time::Instant::now();
    let out = run(
        &mut world.tool(&["tcp-read-until-end", "127.0.0.1:18006"]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "reset 0", "{out:#?}");
    let took = started.elapsed();
    // Not a hang until some timeout (3 s is for a loaded machine).
    assert!(took < Duration::from_secs(3), "the reset took {took:?}");
}

pub fn rootlessctl_manages_ports_and_reads_info() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let flags = ["--state-dir", state.to_str().unwrap()];
    let _usernet = world.usernet_server(&flags, &["tcp-peer", "127.0.0.1:8010"]);
    let socket = state.join("api.sock");
    let ctl = |args: &[&str]| {
        let out = run(
            world
                .command("rootlessctl")
                .arg("--socket")
                .arg(&socket)
                .args(args),
            LIMIT,
        );
        out.assert_ok();
        out.stdout
    };
    assert_eq!(ctl(&["add-ports", "127.0.0.1:18010:8010/tcp"]).trim(), "1");
    let list = ctl(&["list-ports"]);
    assert!(list.contains("1     tcp      127.0.0.1    18010"), "{list}");
    run(&mut world.tool(&["tcp-connect", "127.0.0.1:18010"]), LIMIT).assert_ok();
    let info = ctl(&["info"]);
    for line in [
        "- REST API version: 1.1.1",
        "- Port Driver: builtin",
        "  - IP: 10.0.2.100",
        "  - DNS: [10.0.2.3]",
    ] {
        assert!(info.contains(line), "{line:?} in {info}");
    }
    assert!(
        info.contains(&format!("- State Directory: {}", state.display())),
        "{info}"
    );
    assert_eq!(ctl(&["remove-ports", "1"]).trim(), "1");
    assert_eq!(ctl(&["list-ports", "--json"]), "");
    let out = run(&mut world.tool(&["tcp-connect", "127.0.0.1:18010"]), LIMIT);
    assert!(
        out.stdout.starts_with("ConnectionRefused"),
        "removed port still open: {out:#?}"
    );
    // Errors come back as rootlesskit's messages.
    let out = run(
        world
            .command("rootlessctl")
            .arg("--socket")
            .arg(&socket)
            .args(["remove-ports", "9"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr.trim(), "error: unknown id: 9");
}

pub fn usernet_ports_and_info_manage_a_running_usernet() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let dir = state.to_str().unwrap();
    let _usernet = world.usernet_server(
        &["--state-dir", dir, "-p", "18011:8011"],
        &["tcp-peer", "127.0.0.1:8011"],
    );
    let cli = |args: &[&str]| run(world.usernet(args).args(["--state-dir", dir]), LIMIT);
    let out = cli(&["ports", "add", "127.0.0.1:18012:8011", "18013:8011/udp"]);
    out.assert_ok();
    assert_eq!(out.stdout, "2\n3\n");
    let out = cli(&["ports", "list", "--json"]);
    out.assert_ok();
    assert_eq!(
        out.stdout,
        "{\"id\":1,\"spec\":{\"proto\":\"tcp\",\"parentPort\":18011,\"childPort\":8011}}\n\
         {\"id\":2,\"spec\":{\"proto\":\"tcp\",\"parentIP\":\"127.0.0.1\",\"parentPort\":18012,\"childPort\":8011}}\n\
         {\"id\":3,\"spec\":{\"proto\":\"udp\",\"parentPort\":18013,\"childPort\":8011}}\n"
    );
    run(&mut world.tool(&["tcp-connect", "127.0.0.1:18012"]), LIMIT).assert_ok();
    let out = cli(&["ports", "remove", "2", "3"]);
    assert_eq!(out.stdout, "2\n3\n");
    // A conflict changes nothing and says why.
    let out = cli(&["ports", "add", "18011:9999"]);
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr, "usernet: conflict with ID 1\n");
    let out = cli(&["info", "--json"]);
    out.assert_ok();
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["portDriver"]["driver"], "builtin");
    assert_eq!(info["networkDriver"]["childIP"], "10.0.2.100");
}

pub fn publish_errors_are_one_line_and_leave_nothing() {
    let world = World::new();
    let _busy = world.server(&["tcp-peer", "127.0.0.1:18020"]);
    for (flags, needle) in [
        (vec!["-p", "127.0.0.1:18020:80"], "address already in use"),
        (
            vec!["-p", "18021:80", "-p", "18021:81"],
            "conflict with ID 1",
        ),
        // Without a host address the spec prints as it was written (no stray colon).
        (
            vec!["-p", ":18020:80"],
            "cannot publish port 18020:80/tcp: ",
        ),
    ] {
        let tmp = TempDir::new();
        let state = tmp.join("state");
        let mut args = vec!["run", "--state-dir", state.to_str().unwrap()];
        args.extend(flags.iter().copied());
        args.extend(["--", "true"]);
        let out = run(&mut world.usernet(&args), LIMIT);
        assert_eq!(out.code(), Some(1), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        assert!(
            out.stderr.contains("cannot publish port") && out.stderr.contains(needle),
            "{out:#?}"
        );
        assert!(!state.exists(), "state dir left behind");
    }
    // Refused as a bad command line, before anything is set up (issue 11 item 7).
    for (flags, needle) in [
        (&["--net", "host"][..], "-p does nothing with --net host"),
        (
            &["--port-driver", "none"],
            "--port-driver none: the port driver is off",
        ),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend(["-p", "8080:80", "--", "true"]);
        let out = run(&mut world.usernet(&args), LIMIT);
        assert_eq!(out.code(), Some(2), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        assert!(out.stderr.contains(needle), "{out:#?}");
    }
}

/// Issue 11 item 7: `usernet ps` lists this user's running usernets with their state dirs
/// (default or given), and `usernet info` without --state-dir talks to the only one.
pub fn ps_lists_running_usernets_and_info_finds_the_only_one() {
    let world = World::new();
    // A /tmp of this world's own: only this test's usernets are there to be found. Where the
    // build itself is under /tmp (a CI checkout), its directory is bound back in place.
    let build = std::path::Path::new(crate::world::usernet_bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let script = format!(
        "if case {b}/ in /tmp/*) true;; *) false;; esac; then \
           mount --bind {b} /mnt && mount -t tmpfs tmpfs /tmp && mkdir -p {b} && \
           mount --bind /mnt {b} && umount -l /mnt; \
         else mount -t tmpfs tmpfs /tmp; fi",
        b = build.display()
    );
    run(world.command("sh").args(["-c", &script]), LIMIT).assert_ok();
    let usernet = |args: &[&str]| {
        let mut c = world.usernet(args);
        for var in [
            "XDG_RUNTIME_DIR",
            "USERNET_STATE_DIR",
            "ROOTLESSKIT_STATE_DIR",
        ] {
            c.env_remove(var);
        }
        c
    };
    let out = run(&mut usernet(&["ps"]), LIMIT);
    out.assert_ok();
    assert_eq!(out.stdout, "PID       CHILD_PID STATE_DIR\n");
    let out = run(&mut usernet(&["info"]), LIMIT);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("no usernet of yours is running"),
        "{out:#?}"
    );

    let script = "echo \"$USERNET_STATE_DIR\"; sleep 600";
    let mut first = Server::from_child(
        usernet(&["run", "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let default_dir = first.next_line();
    assert!(default_dir.starts_with("/tmp/usernet-"), "{default_dir}");
    let explicit = "/tmp/mine/state";
    let mut second = Server::from_child(
        usernet(&[
            "run",
            "--state-dir",
            explicit,
            "--",
            "sh",
            "-c",
            "echo up; sleep 600",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    assert_eq!(second.next_line(), "up");
    let out = run(&mut usernet(&["ps"]), LIMIT);
    out.assert_ok();
    assert_eq!(out.stdout.lines().count(), 3, "{out:#?}");
    for (dir, pid) in [
        (default_dir.as_str(), first.pid()),
        (explicit, second.pid()),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.ends_with(&format!(" {dir}")))
            .unwrap_or_else(|| panic!("{dir} not listed: {out:#?}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], pid.to_string(), "{line}");
        assert!(fields[1].parse::<u32>().is_ok(), "child pid: {line}");
    }
    let out = run(&mut usernet(&["info"]), LIMIT);
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("2 usernets of yours are running"),
        "{out:#?}"
    );
    drop(second);
    let out = run(&mut usernet(&["info"]), LIMIT);
    out.assert_ok();
    assert!(
        out.stdout
            .contains(&format!("- State Directory: {default_dir}\n")),
        "{out:#?}"
    );
}

pub fn privileged_port_as_a_user_says_how_to_allow_it() -> Result<(), Unmet> {
    needs(&[Need::RealRoot])?;
    // An unprivileged user (nobody) in a world with many ids; --net none needs no tap.
    let world = World::with_many_ids();
    let tmp = TempDir::new();
    // Sticky, as /tmp: nobody may create its state dir there, and no one else can take it.
    std::fs::set_permissions(&*tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let state = tmp.join("state");
    let out = run(
        world
            .command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::world::usernet_bin())
            .args(["run", "--net", "none", "--state-dir"])
            .arg(&state)
            .args(["-p", "127.0.0.1:80:80", "--", "true"]),
        LIMIT,
    );
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(
        out.stderr.contains("cannot expose privileged port 80")
            && out
                .stderr
                .contains("net.ipv4.ip_unprivileged_port_start=80"),
        "{out:#?}"
    );
    assert!(!state.exists());
    Ok(())
}

/// `--port-driver stack`: published ports enter through usernet's own stack (as slirp4netns's
/// add_hostfwd) rather than a socket opened inside. 64 MiB each way at once by hash, UDP, the
/// client's address as the server sees it (the gateway for a loopback client), a server on
/// the namespace's loopback out of reach (as with slirp4netns), the REST API adding and
/// refusing what the stack cannot forward, and the stack's counters showing the connections
/// came through it.
pub fn stack_port_driver_forwards_through_the_stack() {
    let world = World::new();
    let tmp = TempDir::new();
    let state = tmp.join("state");
    let dir = state.to_str().unwrap();
    let bytes = (64 * MIB).to_string();
    let flags = [
        "--state-dir",
        dir,
        "--port-driver",
        "stack",
        "-p",
        "18020:8020",
        "-p",
        "127.0.0.1:18021:7021/udp",
        "-p",
        "18022:8022",
        "-p",
        "18023:8023",
    ];
    let script = format!(
        "$T tcp-server 0.0.0.0:8020 {bytes} duplex & $T udp-echo 0.0.0.0:7021 & \
         $T tcp-peer 0.0.0.0:8022 & exec $T tcp-peer 127.0.0.1:8023"
    );
    let mut usernet = crate::services::guest_server(&world, &flags, &script, 4);
    let out = run(
        &mut world.tool(&["tcp-client", "127.0.0.1:18020", &bytes, &bytes, "duplex"]),
        LIMIT,
    );
    out.assert_ok();
    assert!(
        out.stdout.starts_with("OK sent=67108864 received=67108864"),
        "{out:#?}"
    );
    let out = run(
        &mut world.tool(&["udp-client", "127.0.0.1:18021", "500", "60000"]),
        LIMIT,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "OK 500");
    // The client's address: a world address as it is, loopback as the gateway.
    run(&mut world.tool(&["tcp-connect", "198.18.0.1:18022"]), LIMIT).assert_ok();
    let peer = usernet.next_line();
    assert!(peer.starts_with("peer 198.18.0.1:"), "{peer}");
    run(&mut world.tool(&["tcp-connect", "127.0.0.1:18022"]), LIMIT).assert_ok();
    let peer = usernet.next_line();
    assert!(peer.starts_with("peer 10.0.2.2:"), "{peer}");
    // A server on the namespace's loopback only: the forward to its address is refused.
    let out = run(
        &mut world.tool(&["tcp-read-until-end", "127.0.0.1:18023"]),
        LIMIT,
    );
    assert_eq!(out.stdout.trim(), "reset 0", "{out:#?}");
    // Every connection above was a flow of the stack's, none a relay's.
    let out = run(&mut world.usernet(&["stats", "--state-dir", dir]), LIMIT);
    out.assert_ok();
    let flows = out
        .stdout
        .lines()
        .find(|l| l.starts_with("flows: "))
        .unwrap_or_default();
    assert!(flows.contains("inbound 4)"), "{flows}: {out:#?}");
    // The API: info names the driver; a port is added and used; what the stack cannot
    // forward is refused with why.
    let cli = |args: &[&str]| run(world.usernet(args).args(["--state-dir", dir]), LIMIT);
    let out = cli(&["info", "--json"]);
    out.assert_ok();
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["portDriver"]["driver"], "stack");
    assert_eq!(info["portDriver"]["disallowLoopbackChildIP"], true);
    let out = cli(&["ports", "add", "127.0.0.1:18024:10.0.2.100:8022/tcp4"]);
    out.assert_ok();
    assert_eq!(out.stdout, "5\n");
    run(&mut world.tool(&["tcp-connect", "127.0.0.1:18024"]), LIMIT).assert_ok();
    assert!(usernet.next_line().starts_with("peer 10.0.2.2:"));
    for (spec, why) in [
        ("18020:9999", "conflict with ID 1"),
        (
            "18025:127.0.0.1:8022",
            "child IP 127.0.0.1 cannot be reached",
        ),
        (
            "18025:8022/tcp6",
            "ports forwarded through the stack are IPv4",
        ),
        (
            "[::1]:18025:8022",
            "parent IP \"::1\" is not an IPv4 address",
        ),
    ] {
        let out = cli(&["ports", "add", spec]);
        assert_eq!(out.code(), Some(1), "{spec}: {out:#?}");
        assert!(out.stderr.contains(why), "{spec}: {out:#?}");
    }
    let out = cli(&["ports", "remove", "5"]);
    out.assert_ok();
    assert_eq!(out.stdout, "5\n");
    let out = run(&mut world.tool(&["tcp-connect", "127.0.0.1:18024"]), LIMIT);
    assert!(
        out.stdout.starts_with("ConnectionRefused"),
        "removed port still open: {out:#?}"
    );
}
