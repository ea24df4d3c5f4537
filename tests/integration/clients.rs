//! The personalities that are clients of a running usernet's REST API, and how they are
//! installed: `rootlesskit-docker-proxy` (what Docker before 28 runs to publish a port),
//! `rootlessctl` (checked against the real one, byte for byte), and `usernet install-links`.
//!
//! usernet runs `sleep` as COMMAND; what Docker would run inside its namespaces starts there
//! with `nsenter`, as dockerd's children do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::attach::{give_fds, pipe, read_all};
use crate::world::{Outcome, Server, TempDir, World, run, self_exe, usernet_bin};

const LIMIT: Duration = Duration::from_secs(120);

/// usernet running `sleep`, with its state dir in a temporary directory.
struct Running<'w> {
    world: &'w World,
    _usernet: Server,
    state: PathBuf,
    /// The process in the namespaces, for nsenter.
    child: String,
    tmp: TempDir,
}

impl<'w> Running<'w> {
    fn start(world: &'w World) -> Running<'w> {
        let tmp = TempDir::new();
        let state = tmp.join("state");
        let child = world
            .usernet_sh(&state, "echo started; exec sleep 600")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn usernet");
        let mut usernet = Server::from_child(child);
        assert_eq!(usernet.next_line(), "started");
        let child = std::fs::read_to_string(state.join("child_pid")).expect("child_pid");
        Running {
            world,
            _usernet: usernet,
            state,
            child: child.trim().to_string(),
            tmp,
        }
    }

    /// `program` inside usernet's namespaces, with `ROOTLESSKIT_STATE_DIR` set (as usernet
    /// sets it for COMMAND) and `bin` first on `PATH`.
    fn inside(&self, bin: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.world.command("nsenter");
        c.args([
            "-t",
            &self.child,
            "-U",
            "-n",
            "-m",
            "--preserve-credentials",
            "--",
        ])
        .arg(program)
        .env("ROOTLESSKIT_STATE_DIR", &self.state)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        c
    }

    /// `usernet ports list --json` for this usernet.
    fn ports(&self) -> String {
        let out = run(
            self.world
                .usernet(&["ports", "list", "--json", "--state-dir"])
                .arg(&self.state),
            LIMIT,
        );
        out.assert_ok();
        out.stdout
    }
}

/// An executable shell script.
fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A directory with `rootlesskit-docker-proxy` (a symlink to usernet) and a `docker-proxy`
/// that runs `script`.
fn proxy_bin(dir: &Path, docker_proxy: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::symlink(usernet_bin(), dir.join("rootlesskit-docker-proxy")).unwrap();
    script(&dir.join("docker-proxy"), docker_proxy);
    dir.to_path_buf()
}

/// `rootlesskit-docker-proxy ARGS` inside, with a pipe on fd 3 as dockerd gives it; the
/// process and what arrives on the pipe.
fn start_proxy(g: &Running, bin: &Path, args: &[&str], env_state: bool) -> (Server, String) {
    let (answer_r, answer_w) = pipe();
    let mut cmd = g.inside(bin, bin.join("rootlesskit-docker-proxy"));
    cmd.args(args);
    if !env_state {
        cmd.env_remove("ROOTLESSKIT_STATE_DIR");
    }
    give_fds(&mut cmd, &[(&answer_w, 3)]);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nsenter");
    drop(answer_w);
    let proxy = Server::from_child(child);
    (proxy, read_all(answer_r, LIMIT))
}

pub fn rootlesskit_docker_proxy_publishes_the_port_while_docker_proxy_runs() {
    let world = World::new();
    let g = Running::start(&world);
    let record = g.tmp.join("record");
    let bytes = (8u64 << 20).to_string();
    let bin = proxy_bin(
        &g.tmp.join("bin"),
        &format!(
            "#!/bin/sh\nexec {} __tool docker-proxy-stub {} {bytes} \"$@\"\n",
            self_exe().display(),
            record.display()
        ),
    );
    // As dockerd runs it for `-p 127.0.0.1:18050:80` to a container at 172.17.0.2.
    let args = [
        "-container-ip",
        "172.17.0.2",
        "--container-port=80",
        "-host-ip",
        "127.0.0.1",
        "-host-port",
        "18050",
        "-proto",
        "tcp",
    ];
    let (mut proxy, answer) = start_proxy(&g, &bin, &args, true);
    assert_eq!(
        answer, "0\n",
        "docker-proxy's answer reaches dockerd's pipe"
    );
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        recorded.lines().next(),
        Some(
            "args -container-ip 172.17.0.2 -container-port 80 -host-ip 127.0.0.1 -host-port 18050 -proto tcp"
        ),
    );
    assert_eq!(
        g.ports(),
        "{\"id\":1,\"spec\":{\"proto\":\"tcp4\",\"parentIP\":\"127.0.0.1\",\"parentPort\":18050,\"childPort\":18050,\"childIP\":\"127.0.0.1\"}}\n"
    );
    // The host port leads to docker-proxy inside; 8 MiB each way, checked by hash.
    let out = run(
        &mut world.tool(&["tcp-client", "127.0.0.1:18050", &bytes, &bytes]),
        LIMIT,
    );
    assert!(
        out.stdout.starts_with("OK sent=8388608 received=8388608"),
        "{out:#?}"
    );
    // dockerd stops the proxy with SIGINT: forwarded, then the port goes.
    // SAFETY: plain kill(2) on a process we started (nsenter execs the personality).
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGINT) };
    let status = proxy.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(recorded.lines().nth(1), Some("signal SIGINT"), "{recorded}");
    assert_eq!(g.ports(), "", "the port is removed when the proxy stops");
    let out = run(&mut world.tool(&["tcp-connect", "127.0.0.1:18050"]), LIMIT);
    assert!(out.stdout.starts_with("ConnectionRefused"), "{out:#?}");

    // A docker-proxy that ends by itself takes its port along, and its status is ours.
    let bin = proxy_bin(&g.tmp.join("bin-fails"), "#!/bin/sh\necho 0 >&3\nexit 7\n");
    let (mut proxy, answer) = start_proxy(&g, &bin, &args, true);
    assert_eq!(answer, "0\n");
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)).code(), Some(7));
    assert_eq!(g.ports(), "");

    // Without the state dir, dockerd is told why on its pipe, and nothing runs.
    let (mut proxy, answer) = start_proxy(&g, &bin, &args, false);
    assert!(
        answer.starts_with("1\n$ROOTLESSKIT_STATE_DIR needs to be set"),
        "{answer:?}"
    );
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)).code(), Some(1));
}

/// The same command through the real rootlessctl and through usernet as `rootlessctl`.
fn both(world: &World, link: &Path, args: &[&str]) -> (Outcome, Outcome) {
    let real = run(world.command("rootlessctl").args(args), LIMIT);
    let ours = run(world.command(link).args(args), LIMIT);
    (real, ours)
}

pub fn rootlessctl_personality_prints_what_rootlessctl_prints() {
    let world = World::new();
    let g = Running::start(&world);
    let link = g.tmp.join("rootlessctl");
    std::os::unix::fs::symlink(usernet_bin(), &link).unwrap();
    let socket = g.state.join("api.sock");
    let socket = socket.to_str().unwrap();
    // Ports added by the real client are listed alike, and the other way round.
    for (client, spec) in [
        ("rootlessctl", "127.0.0.1:18060:80/tcp"),
        (link.to_str().unwrap(), "0.0.0.0:18061:10.0.2.100:80/udp"),
    ] {
        let out = run(
            world
                .command(client)
                .args(["--socket", socket, "add-ports", spec]),
            LIMIT,
        );
        out.assert_ok();
    }
    let cases: &[&[&str]] = &[
        &["--socket", socket, "list-ports"],
        &["-socket", socket, "list-ports", "--json"],
        &["--socket", socket, "info"],
        &[&format!("--socket={socket}"), "info", "-json"],
        // Errors, from the server and from the command line.
        &["--socket", socket, "add-ports", "127.0.0.1:18060:80/tcp"],
        &["--socket", socket, "add-ports", "18063:80/tcp"],
        &["--socket", socket, "add-ports", "127.0.0.1:18063:80"],
        &["--socket", socket, "add-ports", "127.0.0.1:18063:80/foo"],
        &["--socket", socket, "remove-ports", "abc"],
        &["--socket", socket, "remove-ports", "99"],
        &["--socket", socket, "remove-ports"],
        &["--socket", "/nonexistent/api.sock", "info"],
        &["info"],
        &["add-ports", "--help"],
        &["bogus"],
    ];
    for args in cases {
        let (real, ours) = both(&world, &link, args);
        assert_eq!(
            (real.code(), &real.stdout, &real.stderr),
            (ours.code(), &ours.stdout, &ours.stderr),
            "{args:?}"
        );
    }
    // Adding and removing, each client in turn (the ids differ by one).
    let mut outputs = Vec::new();
    for (client, id) in [("rootlessctl", "3"), (link.to_str().unwrap(), "4")] {
        let ctl = |args: &[&str]| {
            let out = run(
                world.command(client).args(["--socket", socket]).args(args),
                LIMIT,
            );
            out.assert_ok();
            out.stdout
        };
        outputs.push((
            ctl(&["add-ports", "--json", ":18062:80/tcp"]),
            ctl(&["remove-ports", id]),
        ));
    }
    assert_eq!(
        outputs[0].0.replace("\"id\":3", "\"id\":4"),
        outputs[1].0,
        "add-ports --json"
    );
    assert_eq!(
        (outputs[0].1.as_str(), outputs[1].1.as_str()),
        ("3\n", "4\n")
    );
    // Inside the namespace the socket comes from $ROOTLESSKIT_STATE_DIR.
    let out = run(g.inside(&g.tmp, &link).arg("list-ports"), LIMIT);
    out.assert_ok();
    assert!(out.stdout.contains("127.0.0.1    18060"), "{out:#?}");
}

/// `usernet install-links ARGS` with `HOME` and `PATH` as given.
fn install_links(args: &[&Path], home: &Path, path: &str) -> Outcome {
    let mut c = Command::new(usernet_bin());
    c.arg("install-links")
        .args(args)
        .env("HOME", home)
        .env("PATH", path);
    run(&mut c, LIMIT)
}

pub fn install_links_makes_the_links_and_leaves_other_files_alone() {
    let tmp = TempDir::new();
    let exe = Path::new(usernet_bin()).canonicalize().unwrap();
    let exe = exe.display();
    let dir = tmp.join("bin");
    std::fs::create_dir(&dir).unwrap();
    // Someone else's rootlessctl and slirp4netns, and a link to a usernet since moved away.
    script(&dir.join("rootlessctl"), "#!/bin/sh\necho mine\n");
    std::os::unix::fs::symlink("/bin/true", dir.join("slirp4netns")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/old/usernet", dir.join("rootlesskit")).unwrap();
    let d = dir.display();
    let out = install_links(&[&dir], &tmp, "/usr/bin:/bin");
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "{d}/slirp4netns: left alone, it is a link to /bin/true; remove it to use usernet as slirp4netns\n\
             {d}/rootlesskit -> {exe} (was /nonexistent/old/usernet)\n\
             {d}/docker-rootlesskit -> {exe}\n\
             {d}/rootlesskit-docker-proxy -> {exe}\n\
             {d}/rootlessctl: left alone, it is a file, not a link to usernet; remove it to use usernet as rootlessctl\n\
             note: {d} is not in $PATH; add it before /usr/bin for your clients to find these\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("rootlessctl")).unwrap(),
        "#!/bin/sh\necho mine\n"
    );
    assert_eq!(
        std::fs::read_link(dir.join("slirp4netns")).unwrap(),
        Path::new("/bin/true")
    );
    // Once the user removed theirs, everything is linked; links already there stay.
    std::fs::remove_file(dir.join("rootlessctl")).unwrap();
    std::fs::remove_file(dir.join("slirp4netns")).unwrap();
    let out = install_links(&[&dir], &tmp, &format!("{d}:/usr/bin:/bin"));
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "{d}/slirp4netns -> {exe}\n\
             {d}/rootlesskit -> {exe} (already)\n\
             {d}/docker-rootlesskit -> {exe} (already)\n\
             {d}/rootlesskit-docker-proxy -> {exe} (already)\n\
             {d}/rootlessctl -> {exe}\n"
        )
    );
    // Each name reaches its personality.
    for (name, arg, expect) in [
        ("slirp4netns", "--version", "SLIRP_CONFIG_VERSION_MAX: 4"),
        ("rootlessctl", "--version", "+usernet"),
    ] {
        let out = run(Command::new(dir.join(name)).arg(arg), LIMIT);
        assert!(out.stdout.contains(expect), "{name}: {out:#?}");
    }
    let out = run(
        Command::new(dir.join("rootlesskit-docker-proxy")).arg("-h"),
        LIMIT,
    );
    assert!(
        out.stderr.starts_with("Usage of rootlesskit-docker-proxy:"),
        "{out:#?}"
    );
    // A directory that some program of the same name comes before is pointed out.
    let first = tmp.join("first");
    std::fs::create_dir(&first).unwrap();
    script(&first.join("slirp4netns"), "#!/bin/sh\n");
    let out = install_links(&[&dir], &tmp, &format!("{}:{d}", first.display()));
    assert!(
        out.stdout.ends_with(&format!(
            "note: {}/slirp4netns come first in $PATH; put {d} before them\n",
            first.display()
        )),
        "{out:#?}"
    );
    // The default: ~/.local/bin, else ~/bin when only that exists.
    let home = tmp.join("home");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    install_links(&[], &home, "/usr/bin").assert_ok();
    assert!(home.join("bin/slirp4netns").is_symlink());
    let other = tmp.join("home2");
    std::fs::create_dir_all(&other).unwrap();
    install_links(&[], &other, "/usr/bin").assert_ok();
    assert!(other.join(".local/bin/rootlessctl").is_symlink());
}
