//! Throwaway "world" namespaces for tests: a user + network + mount namespace that stands in
//! for the host. usernet runs inside it; servers listen on its 127.0.0.1 and ::1, and on
//! 198.18.0.1 and 2001:2::1 (added to its lo). No test traffic can leave it.
//!
//! A holder process (this test binary in tool mode) keeps the namespaces alive; everything
//! else enters them with setns() right before exec, so the test process itself stays outside
//! and only orchestrates.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The "remote" server address inside every world.
pub const REMOTE: &str = "198.18.0.1";
/// A second address of the world, for --outbound-addr.
pub const REMOTE2: &str = "198.18.0.2";
/// The "remote" IPv6 address inside every world (where the kernel has IPv6): from the
/// benchmarking range 2001:2::/48 (RFC 5180), as 198.18.0.0/15 is for IPv4.
pub const REMOTE6: &str = "2001:2::1";

pub fn usernet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_usernet")
}

pub fn self_exe() -> PathBuf {
    std::env::current_exe().expect("test binary path")
}

pub struct World {
    holder: Child,
    user: OwnedFd,
    net: OwnedFd,
    mnt: OwnedFd,
}

impl World {
    pub fn new() -> World {
        World::spawn(&["--map-root-user"], None)
    }

    /// A world where a million ids exist (0..1000000 map to themselves), so tests can run
    /// things as other users. Needs root of the initial user namespace.
    pub fn with_many_ids() -> World {
        World::spawn(&[], Some("0 0 1000000\n"))
    }

    fn spawn(map_flags: &[&str], map: Option<&str>) -> World {
        let mut holder = Command::new("unshare")
            .arg("--user")
            .args(map_flags)
            .args(["--net", "--mount", "--"])
            .arg(self_exe())
            .args(["__tool", "world-holder"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unshare (util-linux) for the world namespace");
        let pid = holder.id();
        if let Some(map) = map {
            // Wait until unshare(1) has made the new user namespace, then map it; the holder
            // waits for its maps before it sets anything up (see the tool).
            let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
            let start = Instant::now();
            while std::fs::read_link(format!("/proc/{pid}/ns/user"))
                .ok()
                .as_ref()
                == Some(&ours)
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "unshare did not unshare"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            for file in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{file}"), map)
                    .expect("write the world's id map");
            }
            holder
                .stdin
                .as_mut()
                .unwrap()
                .write_all(b"mapped\n")
                .unwrap();
        }
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "world holder failed to start");
        let open = |ns: &str| -> OwnedFd {
            std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
                .expect("open ns file")
                .into()
        };
        World {
            user: open("user"),
            net: open("net"),
            mnt: open("mnt"),
            holder,
        }
    }

    /// A command that runs inside the world. A bare program name is looked up in the sbin
    /// directories too ([`find_program`]), and the command starts with the default action
    /// for the signals usernet forwards, whatever the test runner inherited.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(find_program(program.as_ref()));
        let fds = [
            self.user.as_raw_fd(),
            self.net.as_raw_fd(),
            self.mnt.as_raw_fd(),
        ];
        let kinds = [libc::CLONE_NEWUSER, libc::CLONE_NEWNET, libc::CLONE_NEWNS];
        // SAFETY: setns is async-signal-safe; the fds stay open until after spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                for (fd, kind) in fds.iter().zip(kinds) {
                    if libc::setns(*fd, kind) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                default_signal_actions();
                Ok(())
            });
        }
        cmd.current_dir("/");
        cmd
    }

    /// This test binary in tool mode, inside the world.
    pub fn tool(&self, args: &[&str]) -> Command {
        let mut c = self.command(self_exe());
        c.arg("__tool").args(args);
        c
    }

    /// usernet inside the world.
    pub fn usernet(&self, args: &[&str]) -> Command {
        let mut c = self.command(usernet_bin());
        c.args(args);
        c
    }

    /// `usernet run --state-dir STATE -- sh -c SCRIPT` inside the world.
    pub fn usernet_sh(&self, state: &std::path::Path, script: &str) -> Command {
        let mut c = self.command(usernet_bin());
        c.arg("run")
            .arg("--state-dir")
            .arg(state)
            .args(["--", "sh", "-c", script]);
        c
    }

    /// `usernet run FLAGS -- <this binary> __tool TOOL_ARGS...` inside the world: a tool run
    /// as the command in usernet's namespaces.
    pub fn usernet_tool(&self, flags: &[&str], tool_args: &[&str]) -> Command {
        let mut c = self.command(usernet_bin());
        c.arg("run")
            .args(flags)
            .arg("--")
            .arg(self_exe())
            .arg("__tool")
            .args(tool_args);
        c
    }

    /// `usernet run FLAGS -- <tool server>`: a server inside usernet's namespaces, started and
    /// listening (its "listening" line came through usernet's stdout).
    pub fn usernet_server(&self, flags: &[&str], tool_args: &[&str]) -> Server {
        let child = self
            .usernet_tool(flags, tool_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn usernet");
        let mut server = Server::from_child(child);
        let line = server.next_line();
        assert!(
            line.starts_with("listening"),
            "server in usernet did not start: {line:?}"
        );
        server
    }

    /// Start a tool server and wait until it prints its first line ("listening ...").
    pub fn server(&self, args: &[&str]) -> Server {
        let child = self
            .tool(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let mut server = Server::from_child(child);
        let line = server.next_line();
        assert!(
            line.starts_with("listening"),
            "server did not start: {line:?}"
        );
        server
    }
}

/// Where a program is: `$PATH`, then the sbin directories, which an ordinary user's `$PATH`
/// often lacks though tools the tests run live there (Debian's dnsmasq is
/// `/usr/sbin/dnsmasq`). A name with a `/`, or one found nowhere, is returned as it is.
pub fn find_program(name: &std::ffi::OsStr) -> PathBuf {
    let as_given = PathBuf::from(name);
    if as_given.components().count() != 1 {
        return as_given;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or(as_given)
}

/// Give the signals usernet forwards their default action. Signals ignored when a process
/// starts stay ignored, and a shell cannot even trap them: a test runner started in the
/// background of a script (SIGINT and SIGQUIT ignored) would otherwise see signal tests
/// hang. Only async-signal-safe calls: this runs between fork and exec.
fn default_signal_actions() {
    for signal in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: signal(2) with SIG_DFL touches no memory of ours.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A background server in a world, killed when dropped. Its stdout lines are read on a
/// thread of their own, so a test can wait for one with a time limit.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Wrap a spawned process; its stdout, if piped, becomes [`Server::next_line`]'s source.
    pub fn from_child(mut child: Child) -> Server {
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line.trim().to_string()).is_err() {
                        break;
                    }
                }
            });
        }
        Server { child, lines }
    }

    /// Every line the server has printed so far, without waiting.
    pub fn lines_so_far(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has (without waiting).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait for the process to exit on its own; fails the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        wait_with_limit(&mut self.child, limit)
    }

    /// The next line the server prints; fails the test after a minute of silence.
    pub fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the server printed nothing more within a minute")
    }
}

impl Drop for Server {
    /// SIGTERM first, so a usernet running a server shuts its namespace down cleanly (and
    /// takes everything it started with it); SIGKILL if that takes too long (15 s: tests
    /// check what a clean exit leaves, and a loaded machine may be slow to get there).
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panic with everything we know unless the command exited 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.status.success(), "command failed: {self:#?}");
        self
    }
}

/// Run `cmd` to completion, capturing output; kill it and fail after `limit`.
pub fn run(cmd: &mut Command, limit: Duration) -> Outcome {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, limit)
}

/// Wait for a child spawned with its output piped, capturing the output; kill it and fail
/// after `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Outcome {
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let status = wait_with_limit(&mut child, limit);
    Outcome {
        status,
        stdout: out.recv().unwrap(),
        stderr: err.recv().unwrap(),
    }
}

/// Whether process `pid` is running (a zombie has ended: it holds no files or locks).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

pub fn wait_with_limit(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// A temporary directory for one test, removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("usernet-it-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
