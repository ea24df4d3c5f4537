//! The real container engines on usernet, as an unprivileged user: rootless Docker (Debian's
//! `docker.io`, its `dockerd-rootless.sh`) with usernet as its `rootlesskit`, and rootless
//! Podman (Debian's `podman` 4.3) with usernet as its `slirp4netns`; no binary of the
//! rootlesskit or slirp4netns packages reachable.
//!
//! Everything happens in a world with a million ids: a user of its own (with subordinate ids,
//! through bind mounts over the world's `/etc/passwd`, `/etc/group`, `/etc/subuid` and
//! `/etc/subgid`), a directory of usernet's links first on its PATH, and the packages' own
//! binaries covered by a script that fails loudly. The image is imported from a busybox rootfs
//! (no registry is reachable); the server the container downloads from and the clients of the
//! published ports are on the world's loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::needs::{Need, Unmet, needs};
use crate::world::{Outcome, Server, TempDir, World, run, usernet_bin};

const LIMIT: Duration = Duration::from_secs(120);
/// The Docker test's user.
const DOCKER_USER: User = User {
    uid: 1500,
    name: "usernet-docker",
};
/// The Podman test's user.
const PODMAN_USER: User = User {
    uid: 1501,
    name: "usernet-podman",
};

/// A user the world gains for one test.
#[derive(Clone, Copy)]
struct User {
    uid: u32,
    name: &'static str,
}

/// What the Docker test needs from Debian's packages.
const DOCKER_PROGRAMS: [&str; 6] = [
    "/usr/sbin/dockerd",
    "/usr/bin/docker",
    "/usr/bin/containerd",
    "/usr/sbin/runc",
    "/usr/share/docker.io/contrib/dockerd-rootless.sh",
    "/bin/busybox",
];

/// What the Podman test needs.
const PODMAN_PROGRAMS: [&str; 3] = ["/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox"];

/// The rootlesskit and slirp4netns packages' programs, which must not be what runs.
const REPLACED_PROGRAMS: [&str; 4] = [
    "/usr/bin/rootlesskit",
    "/usr/bin/rootlesskit-docker-proxy",
    "/usr/bin/rootlessctl",
    "/usr/bin/slirp4netns",
];

/// The user's world, files and environment.
struct Setup {
    user: User,
    world: World,
    dir: PathBuf,
    home: PathBuf,
    runtime: PathBuf,
    links: PathBuf,
    _tmp: TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

impl Setup {
    /// The world and the user for an engine test, if this machine has what it needs:
    /// real root (to make the user), a TAP for everyone, and the engine's `programs`
    /// (`packages` says where they come from).
    fn for_engine(user: User, programs: &[&str], packages: &str) -> Result<Setup, Unmet> {
        needs(&[Need::RealRoot, Need::TunForEveryone])?;
        if let Some(missing) = programs.iter().find(|p| !Path::new(p).exists()) {
            return Err(Unmet(format!("needs {missing} ({packages})")));
        }
        Ok(Setup::new(user))
    }

    fn new(user: User) -> Setup {
        let User { uid, name } = user;
        let world = World::with_many_ids();
        let tmp = TempDir::new();
        std::fs::set_permissions(&*tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let dir = tmp.to_path_buf();
        let home = dir.join("home");
        // XDG_RUNTIME_DIR is short and under /tmp whatever $TMPDIR is: Podman puts the
        // slirp4netns API socket at RUNTIME/libpod/tmp/<64 hex digits>.net, which a Unix
        // socket address must hold in 108 bytes (slirp4netns refuses a longer one, as usernet
        // does).
        let runtime = PathBuf::from(format!("/tmp/ur-{}-{uid}", std::process::id()));
        let links = dir.join("bin");
        for d in [&home, &runtime, &links] {
            std::fs::create_dir(d).unwrap();
        }
        for d in [&home, &runtime] {
            std::os::unix::fs::chown(d, Some(uid), Some(uid)).unwrap();
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
        }
        // usernet's links, as `usernet install-links` makes them.
        for name in ["rootlesskit", "rootlesskit-docker-proxy", "slirp4netns"] {
            std::os::unix::fs::symlink(usernet_bin(), links.join(name)).unwrap();
        }
        // The user, and the rootlesskit package out of reach, in the world only.
        let append = |file: &str, line: &str| {
            let mut text = std::fs::read_to_string(file).unwrap();
            text.push_str(line);
            let copy = dir.join(Path::new(file).file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            copy
        };
        let passwd = append(
            "/etc/passwd",
            &format!("{name}:x:{uid}:{uid}::{}:/bin/sh\n", home.display()),
        );
        let group = append("/etc/group", &format!("{name}:x:{uid}:\n"));
        let subids = dir.join("subids");
        // A subordinate range of the user's own, apart from the other test's.
        let first = 300_000 + (uid % 100) * 100_000;
        std::fs::write(&subids, format!("{name}:{first}:65536\n")).unwrap();
        let refuse = dir.join("refuse");
        std::fs::write(
            &refuse,
            "#!/bin/sh\necho \"the rootlesskit package's $0 ran\" >&2\nexit 99\n",
        )
        .unwrap();
        std::fs::set_permissions(&refuse, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut script = format!(
            "set -e; ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true; \
             mount --bind {passwd} /etc/passwd; mount --bind {group} /etc/group; \
             mount --bind {subids} /etc/subuid; mount --bind {subids} /etc/subgid;",
            passwd = passwd.display(),
            group = group.display(),
            subids = subids.display(),
        );
        for program in REPLACED_PROGRAMS {
            if Path::new(program).exists() {
                script += &format!(" mount --bind {} {program};", refuse.display());
            }
        }
        run(world.command("sh").args(["-c", &script]), LIMIT).assert_ok();
        Setup {
            user,
            world,
            dir,
            home,
            runtime,
            links,
            _tmp: tmp,
        }
    }

    /// `program` as the user, in the world, with the user's environment.
    fn as_user(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let uid = self.user.uid;
        let mut c = self.world.command("setpriv");
        c.args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--init-groups".into(),
        ])
        .arg("env")
        .arg(format!("HOME={}", self.home.display()))
        .arg(format!("XDG_RUNTIME_DIR={}", self.runtime.display()))
        .arg(format!(
            "PATH={}:/usr/sbin:/usr/bin:/sbin:/bin",
            self.links.display()
        ))
        .arg(format!(
            "DOCKER_HOST=unix://{}/docker.sock",
            self.runtime.display()
        ))
        .arg(program);
        c
    }

    /// A page from `url`, fetched in the world (empty when nothing answers).
    fn fetch(&self, url: &str) -> Outcome {
        run(
            self.world
                .command("busybox")
                .args(["timeout", "10", "busybox", "wget", "-q", "-O", "-", url]),
            LIMIT,
        )
    }

    /// [`Setup::fetch`], retried for up to 20 s until something is served (a published port
    /// accepts before the server in the container listens).
    fn fetch_once_served(&self, url: &str) -> Outcome {
        let start = Instant::now();
        let mut page = self.fetch(url);
        while page.stdout.is_empty() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(200));
            page = self.fetch(url);
        }
        page
    }

    /// A web server on the world's 127.0.0.1:8000 serving `/payload` (4 MiB of seeded
    /// bytes), and the payload's SHA-256.
    fn serve_payload(&self) -> (Server, String) {
        let files = self.dir.join("files");
        std::fs::create_dir(&files).unwrap();
        let (payload, expected) = payload();
        std::fs::write(files.join("payload"), &payload).unwrap();
        let web = Server::from_child(
            self.world
                .command("busybox")
                .args(["httpd", "-f", "-p", "127.0.0.1:8000", "-h"])
                .arg(&files)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        run(&mut self.world.tool(&["tcp-wait", "127.0.0.1:8000"]), LIMIT).assert_ok();
        (web, expected)
    }

    fn docker(&self, args: &[&str]) -> Outcome {
        run(self.as_user("docker").args(args), LIMIT)
    }
}

/// A busybox rootfs as a tar: `sh`, `wget`, `httpd`, `sha256sum`, `timeout`, and a page.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    // Debian's busybox is linked dynamically (busybox-static would replace the package the
    // other tests use): the libraries it loads go along, at the paths it looks for them.
    let ldd = run(Command::new("ldd").arg("/bin/busybox"), LIMIT);
    for lib in ldd.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    for applet in [
        "sh",
        "wget",
        "httpd",
        "sha256sum",
        "timeout",
        "cat",
        "sleep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), "served by busybox httpd\n").unwrap();
    let tar = dir.join("rootfs.tar");
    let out = run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        LIMIT,
    );
    out.assert_ok();
    std::fs::set_permissions(&tar, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    tar
}

/// Wait until `docker info` answers, or dockerd has exited.
fn wait_for_dockerd(setup: &Setup, dockerd: &mut Server) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        if setup
            .docker(&["info", "--format", "{{.ServerVersion}}"])
            .code()
            == Some(0)
        {
            return true;
        }
        if dockerd.try_exit().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The state dir the process of `uid` named `name` was given (`ROOTLESSKIT_STATE_DIR`).
fn state_dir_of(uid: u32, name: &str) -> Option<PathBuf> {
    processes_of(uid)
        .into_iter()
        .filter(|p| p.ends_with(&format!(" {name}")))
        .find_map(|p| {
            let pid = p.split_whitespace().next()?;
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|b| *b == 0).find_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                kv.strip_prefix("ROOTLESSKIT_STATE_DIR=").map(PathBuf::from)
            })
        })
}

pub fn dockerd_rootless_runs_on_usernet_as_rootlesskit() -> Result<(), Unmet> {
    docker_on_usernet("builtin", "builtin")?;
    // dockerd-rootless.sh's other port driver: --net=slirp4netns --port-driver=slirp4netns,
    // which usernet serves through its own stack, as rootlesskit does (Docker publishes to
    // the namespace's address, as `disallowLoopbackChildIP` asks). One after the other: both
    // run as the same user, whose processes the test counts.
    docker_on_usernet("slirp4netns", "slirp4netns")
}

/// dockerd-rootless.sh with `net` and `port_driver`, finding usernet as rootlesskit: a
/// download through 10.0.2.2 by hash, ports published on the address asked for only, and
/// nothing left after SIGTERM.
fn docker_on_usernet(net: &str, port_driver: &str) -> Result<(), Unmet> {
    let setup = Setup::for_engine(
        DOCKER_USER,
        &DOCKER_PROGRAMS,
        "Debian's docker.io, runc, containerd, busybox",
    )?;
    let uid = DOCKER_USER.uid;
    // A file on the world's loopback, for the container to download through 10.0.2.2.
    let (_web, expected) = setup.serve_payload();

    // dockerd-rootless.sh, as the user: it finds usernet as rootlesskit first on PATH.
    let log_path = setup.dir.join("dockerd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut dockerd = Server::from_child(
        setup
            .as_user("/usr/share/docker.io/contrib/dockerd-rootless.sh")
            .env("DOCKERD_ROOTLESS_ROOTLESSKIT_NET", net)
            .env("DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER", port_driver)
            .env(
                "DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS",
                "--disable-host-loopback=false",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    if !wait_for_dockerd(&setup, &mut dockerd) {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let cgroup = text
            .lines()
            .rev()
            .find(|l| l.contains("cgroup") && (l.contains("error") || l.contains("failed")));
        if let Some(line) = cgroup
            && !text.contains("[rootlesskit")
        {
            return Err(Unmet(format!(
                "dockerd cannot start on this machine's cgroup layout: {line}"
            )));
        }
        panic!("dockerd did not come up on usernet:\n{text}");
    }
    let state = state_dir_of(uid, "dockerd").expect("dockerd has ROOTLESSKIT_STATE_DIR");
    // What runs as rootlesskit is usernet, with its own stack (no helper program).
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        text.contains(&format!(
            "[rootlesskit:parent] --net={net}: served by usernet's own network stack"
        )),
        "{text}"
    );

    // An image from a local rootfs, and a download through 10.0.2.2, by hash.
    let tar = busybox_rootfs(&setup.dir);
    setup
        .docker(&["import", tar.to_str().unwrap(), "localhost/bb"])
        .assert_ok();
    let out = setup.docker(&[&["run", "--rm", "--pull=never"][..], &DOWNLOAD].concat());
    assert_downloaded(&out, &expected);

    // Published ports, on the address asked for only (rootlesskit PR #477's case).
    for (name, spec) in [
        ("web1", "127.0.0.1:18280:80"),
        ("web2", "127.0.0.2:18281:80"),
    ] {
        let detached = ["run", "-d", "--pull=never", "--name", name, "-p", spec];
        setup
            .docker(&[&detached[..], &WEB_SERVER].concat())
            .assert_ok();
    }
    // `docker run -d` returns before httpd inside listens: each is fetched until it serves.
    for url in ["http://127.0.0.1:18280/", "http://127.0.0.2:18281/"] {
        let page = setup.fetch_once_served(url);
        assert_eq!(page.stdout, "served by busybox httpd\n", "{url}: {page:#?}");
    }
    let wrong = setup.fetch("http://127.0.0.1:18281/");
    assert!(
        wrong.stdout.is_empty(),
        "published on 127.0.0.2 only: {wrong:#?}"
    );
    // Which driver carried the pages: the stack's forwards count their connections as
    // inbound flows, the builtin driver's relay is not a flow of the stack's.
    let stats = run(
        setup
            .as_user(usernet_bin())
            .args(["stats", "--state-dir", state.to_str().unwrap()]),
        LIMIT,
    );
    stats.assert_ok();
    let inbound: u64 = stats
        .stdout
        .split("inbound ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inbound count: {stats:#?}"));
    if port_driver == "slirp4netns" {
        assert!(inbound >= 2, "through the stack: {stats:#?}");
    } else {
        assert_eq!(inbound, 0, "through the relay: {stats:#?}");
    }

    // Stopping dockerd (SIGTERM to usernet, as systemd does) leaves nothing behind.
    for name in ["web1", "web2"] {
        let _ = setup.docker(&["rm", "-f", name]);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dockerd.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    dockerd.wait_exit(LIMIT);
    let left = processes_once_only(uid, |_| false);
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(
        !state.exists(),
        "the state dir {} was left",
        state.display()
    );
    println!(
        "docker on usernet (--net={net} --port-driver={port_driver}): download {expected} by hash, ports on 127.0.0.1 and 127.0.0.2 served ({inbound} inbound flows of the stack's), state dir {} gone, no process left",
        state.display()
    );
    Ok(())
}

/// The processes of `uid` once only those `expected` are left (waiting up to 20 s), or
/// whatever is left then.
fn processes_once_only(uid: u32, expected: impl Fn(&String) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = processes_of(uid);
        if left.iter().all(&expected) || start.elapsed() > Duration::from_secs(20) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids and names of the processes of `uid`, zombies aside.
fn processes_of(uid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let real_uid: Option<u32> = field("Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok());
        if real_uid == Some(uid) && !field("State:").starts_with('Z') {
            out.push(format!("{pid} {}", field("Name:")));
        }
    }
    out
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Podman 4.3 rootless, with `network_cmd_path` pointing at usernet's `slirp4netns` link (as
/// the README says): a container downloads from the host's 127.0.0.1 through 10.0.2.2 (by
/// hash), a port published through the slirp4netns API socket (`port_handler=slirp4netns`)
/// serves busybox httpd on 127.0.0.1 only, the network helper that runs is usernet, and
/// nothing of the user's is left running after.
pub fn podman_runs_on_usernet_as_slirp4netns() -> Result<(), Unmet> {
    let setup = Setup::for_engine(
        PODMAN_USER,
        &PODMAN_PROGRAMS,
        "Debian's podman, runc, busybox",
    )?;
    let uid = PODMAN_USER.uid;
    let config = setup.home.join(".config/containers");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("containers.conf"),
        format!(
            "[engine]\nnetwork_cmd_path = \"{}\"\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            setup.links.join("slirp4netns").display()
        ),
    )
    .unwrap();
    std::fs::write(config.join("storage.conf"), "[storage]\ndriver = \"vfs\"\n").unwrap();
    let chown = run(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{uid}"))
            .arg(setup.home.join(".config")),
        LIMIT,
    );
    chown.assert_ok();
    let (_web, expected) = setup.serve_payload();
    let podman = |args: &[&str]| run(setup.as_user("podman").args(args), LIMIT);

    let tar = busybox_rootfs(&setup.dir);
    podman(&["import", tar.to_str().unwrap(), "localhost/bb"]).assert_ok();
    let out = podman(
        &[
            &["run", "--rm", "--pull=never"][..],
            &["--network", "slirp4netns:allow_host_loopback=true"],
            &DOWNLOAD,
        ]
        .concat(),
    );
    assert_downloaded(&out, &expected);

    let detached = [
        "run",
        "-d",
        "--pull=never",
        "--name",
        "web",
        "-p",
        "127.0.0.1:18290:80",
    ];
    let network = ["--network", "slirp4netns:port_handler=slirp4netns"];
    podman(&[&detached[..], &network, &WEB_SERVER].concat()).assert_ok();
    // The network helper podman started is usernet, under slirp4netns's name.
    let usernet = std::fs::canonicalize(usernet_bin()).unwrap();
    let helper = processes_of(uid)
        .into_iter()
        .filter_map(|p| p.split_whitespace().next().map(str::to_string))
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .next()
                    .is_some_and(|a| a.ends_with(b"slirp4netns"))
            })
        });
    let helper_exe = helper.and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
    assert_eq!(helper_exe, Some(usernet), "podman's slirp4netns is usernet");
    let fetch = |url: &str| setup.fetch(url);
    let page = setup.fetch_once_served("http://127.0.0.1:18290/");
    assert_eq!(page.stdout, "served by busybox httpd\n", "{page:#?}");
    let _ = run(
        setup
            .world
            .command("ip")
            .args(["addr", "add", "127.0.0.3/8", "dev", "lo"]),
        LIMIT,
    );
    let wrong = fetch("http://127.0.0.3:18290/");
    assert!(
        wrong.stdout.is_empty(),
        "published on 127.0.0.1 only: {wrong:#?}"
    );

    podman(&["rm", "-f", "-t", "2", "web"]).assert_ok();
    // What may stay is podman's rootless pause process ("podman pause", holding its user
    // namespace for the next podman command), by podman's design: not usernet's, and killed
    // here so that it does not outlive the test.
    let is_pause = |p: &String| p.ends_with(" podman pause");
    let left = processes_once_only(uid, is_pause);
    let (pause, left): (Vec<_>, Vec<_>) = left.into_iter().partition(is_pause);
    for p in &pause {
        if let Some(pid) = p.split_whitespace().next().and_then(|pid| pid.parse().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    assert!(left.is_empty(), "left running: {left:?}");
    println!(
        "podman on usernet: download {expected} by hash, port on 127.0.0.1 served through the API socket, no helper left"
    );
    Ok(())
}

/// The image and command of a container that downloads the payload from the host's loopback
/// through 10.0.2.2 and prints its SHA-256.
const DOWNLOAD: [&str; 4] = [
    "localhost/bb",
    "sh",
    "-c",
    "timeout 30 wget -q -O - http://10.0.2.2:8000/payload | sha256sum",
];

/// The image and command of a container serving busybox httpd's page on port 80.
const WEB_SERVER: [&str; 7] = ["localhost/bb", "httpd", "-f", "-p", "80", "-h", "/www"];

/// The container of [`DOWNLOAD`] ran, and got the payload whole.
fn assert_downloaded(out: &Outcome, expected: &str) {
    out.assert_ok();
    assert!(
        out.stdout.starts_with(expected),
        "the download's hash: {out:#?}"
    );
}

/// 4 MiB of seeded bytes, and their SHA-256 in hex.
fn payload() -> (Vec<u8>, String) {
    let mut payload = vec![0u8; 4 << 20];
    let mut state = 0x9e37_79b9_u64;
    for b in payload.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let hash = hex(&Sha256::digest(&payload));
    (payload, hash)
}
