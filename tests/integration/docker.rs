//! The real client: rootless Docker (Debian's `docker.io`, its `dockerd-rootless.sh`) running
//! on usernet as its `rootlesskit`, as an unprivileged user, with no binary of the rootlesskit
//! package reachable.
//!
//! Everything happens in a world with a million ids: a user of its own (uid 1500, with
//! subordinate ids, through bind mounts over the world's `/etc/passwd`, `/etc/group`,
//! `/etc/subuid` and `/etc/subgid`), a directory of usernet's links first on its PATH, and the
//! rootlesskit package's binaries covered by a script that fails loudly. The image is imported
//! from a busybox rootfs (no registry is reachable); the server the container downloads from
//! and the clients of the published ports are on the world's loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::needs::{Need, Unmet, needs};
use crate::world::{Outcome, Server, TempDir, World, run, usernet_bin};

const LIMIT: Duration = Duration::from_secs(120);
const UID: u32 = 1500;
const USER: &str = "usernet-docker";

/// What the test needs from Debian's packages.
const PROGRAMS: [&str; 6] = [
    "/usr/sbin/dockerd",
    "/usr/bin/docker",
    "/usr/bin/containerd",
    "/usr/sbin/runc",
    "/usr/share/docker.io/contrib/dockerd-rootless.sh",
    "/bin/busybox",
];

/// The rootlesskit package's programs, which must not be what runs.
const ROOTLESSKIT_PACKAGE: [&str; 3] = [
    "/usr/bin/rootlesskit",
    "/usr/bin/rootlesskit-docker-proxy",
    "/usr/bin/rootlessctl",
];

/// The user's world, files and environment.
struct Setup {
    world: World,
    dir: PathBuf,
    home: PathBuf,
    runtime: PathBuf,
    links: PathBuf,
    _tmp: TempDir,
}

impl Setup {
    fn new() -> Setup {
        let world = World::with_many_ids();
        let tmp = TempDir::new();
        std::fs::set_permissions(&*tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let dir = tmp.to_path_buf();
        let home = dir.join("home");
        let runtime = dir.join("xdg");
        let links = dir.join("bin");
        for d in [&home, &runtime, &links] {
            std::fs::create_dir(d).unwrap();
        }
        for d in [&home, &runtime] {
            std::os::unix::fs::chown(d, Some(UID), Some(UID)).unwrap();
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
        }
        // usernet's links, as `usernet install-links` makes them.
        for name in ["rootlesskit", "rootlesskit-docker-proxy"] {
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
            &format!("{USER}:x:{UID}:{UID}::{}:/bin/sh\n", home.display()),
        );
        let group = append("/etc/group", &format!("{USER}:x:{UID}:\n"));
        let subids = dir.join("subids");
        std::fs::write(&subids, format!("{USER}:300000:65536\n")).unwrap();
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
        for program in ROOTLESSKIT_PACKAGE {
            if Path::new(program).exists() {
                script += &format!(" mount --bind {} {program};", refuse.display());
            }
        }
        run(world.command("sh").args(["-c", &script]), LIMIT).assert_ok();
        Setup {
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
        let mut c = self.world.command("setpriv");
        c.args([
            format!("--reuid={UID}"),
            format!("--regid={UID}"),
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
    needs(&[Need::RealRoot, Need::TunForEveryone])?;
    if let Some(missing) = PROGRAMS.iter().find(|p| !Path::new(p).exists()) {
        return Err(Unmet(format!(
            "needs {missing} (Debian's docker.io, runc, containerd, busybox-static)"
        )));
    }
    let setup = Setup::new();
    // A file on the world's loopback, for the container to download through 10.0.2.2.
    let files = setup.dir.join("files");
    std::fs::create_dir(&files).unwrap();
    let mut payload = vec![0u8; 4 << 20];
    let mut state = 0x9e37_79b9_u64;
    for b in payload.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    std::fs::write(files.join("payload"), &payload).unwrap();
    let expected = hex(&Sha256::digest(&payload));
    let _web = Server::from_child(
        setup
            .world
            .command("busybox")
            .args(["httpd", "-f", "-p", "127.0.0.1:8000", "-h"])
            .arg(&files)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // dockerd-rootless.sh, as the user: it finds usernet as rootlesskit first on PATH.
    let log_path = setup.dir.join("dockerd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut dockerd = Server::from_child(
        setup
            .as_user("/usr/share/docker.io/contrib/dockerd-rootless.sh")
            .env("DOCKERD_ROOTLESS_ROOTLESSKIT_NET", "builtin")
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
    let state = state_dir_of(UID, "dockerd").expect("dockerd has ROOTLESSKIT_STATE_DIR");
    // What runs as rootlesskit is usernet, with its own stack (no helper program).
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        text.contains("[rootlesskit:parent] --net=builtin: served by usernet's own network stack"),
        "{text}"
    );

    // An image from a local rootfs, and a download through 10.0.2.2, by hash.
    let tar = busybox_rootfs(&setup.dir);
    setup
        .docker(&["import", tar.to_str().unwrap(), "localhost/bb"])
        .assert_ok();
    let out = setup.docker(&[
        "run",
        "--rm",
        "--pull=never",
        "localhost/bb",
        "sh",
        "-c",
        "timeout 30 wget -q -O - http://10.0.2.2:8000/payload | sha256sum",
    ]);
    out.assert_ok();
    assert!(
        out.stdout.starts_with(&expected),
        "the download's hash: {out:#?}"
    );

    // Published ports, on the address asked for only (rootlesskit PR #477's case).
    for (name, spec) in [
        ("web1", "127.0.0.1:18280:80"),
        ("web2", "127.0.0.2:18281:80"),
    ] {
        setup
            .docker(&[
                "run",
                "-d",
                "--name",
                name,
                "-p",
                spec,
                "--pull=never",
                "localhost/bb",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/www",
            ])
            .assert_ok();
    }
    let fetch = |url: &str| -> Outcome {
        run(
            setup
                .world
                .command("busybox")
                .args(["timeout", "10", "busybox", "wget", "-q", "-O", "-", url]),
            LIMIT,
        )
    };
    let start = Instant::now();
    let mut page = fetch("http://127.0.0.1:18280/");
    while page.stdout.is_empty() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        page = fetch("http://127.0.0.1:18280/");
    }
    assert_eq!(page.stdout, "served by busybox httpd\n", "{page:#?}");
    let page = fetch("http://127.0.0.2:18281/");
    assert_eq!(page.stdout, "served by busybox httpd\n", "{page:#?}");
    let wrong = fetch("http://127.0.0.1:18281/");
    assert!(
        wrong.stdout.is_empty(),
        "published on 127.0.0.2 only: {wrong:#?}"
    );

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
    let start = Instant::now();
    let left = loop {
        let left = processes_of(UID);
        if left.is_empty() || start.elapsed() > Duration::from_secs(20) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(
        !state.exists(),
        "the state dir {} was left",
        state.display()
    );
    println!(
        "docker on usernet: download {expected} by hash, ports on 127.0.0.1 and 127.0.0.2 served, state dir {} gone, no process left",
        state.display()
    );
    Ok(())
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
