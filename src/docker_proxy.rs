//! The rootlesskit-docker-proxy personality: invoked as `rootlesskit-docker-proxy` (a
//! symlink to usernet), usernet is the helper Docker before 28 runs for every published port
//! of a rootless daemon (`dockerd --userland-proxy-path`), so a machine with usernet and no
//! rootlesskit package publishes ports.
//!
//! What rootlesskit's helper does, and so this: Docker runs it inside the namespace with
//! docker-proxy's flags (`-container-ip -container-port -host-ip -host-port -proto`, Go flag
//! syntax) and a pipe on fd 3 on which it waits for `0\n` (started) or `1\n` and an error. It
//! reads `GET /v1/info` from `$ROOTLESSKIT_STATE_DIR/api.sock`; without a port driver it
//! becomes `docker-proxy` itself. Otherwise it publishes the host port on the host with
//! `POST /v1/ports` (proto `tcp4`/`tcp6` from the host address's family; child address
//! 127.0.0.1 or ::1, or the network's child address where the port driver refuses loopback),
//! a protocol the driver lacks is skipped with a warning and `0\n`, and then it runs the real
//! `docker-proxy` with `-host-ip` set to that child address, handing it fd 3, so docker-proxy
//! listens inside where the port driver connects.
//!
//! Changed on purpose: rootlesskit's helper waits only for SIGINT and then kills docker-proxy;
//! this one forwards every signal Docker or a user sends (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
//! SIGUSR1, SIGUSR2), gives docker-proxy 10 seconds to stop before SIGKILL, also ends when
//! docker-proxy ends on its own (with its status), and removes the port in every case, so no
//! published port outlives its proxy. Its API client believes only a server that runs as us.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::client::ApiClient;
use crate::goflag::{self, FlagError, Kind};
use crate::ports::PortSpec;
use crate::process::signals::{self, Signals};

const PROGRAM: &str = "rootlesskit-docker-proxy";
/// The program it runs, looked up in `$PATH`, as rootlesskit's helper does.
const REAL_PROXY: &str = "docker-proxy";
/// How long docker-proxy has to stop after a forwarded signal before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The flags, as Docker passes them to docker-proxy (and Go's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProxyArgs {
    container_ip: String,
    container_port: i64,
    host_ip: String,
    host_port: i64,
    proto: String,
}

fn usage() -> String {
    format!(
        "Usage of {PROGRAM}:\n  \
         -container-ip string\n    \tcontainer ip\n  \
         -container-port int\n    \tcontainer port (default -1)\n  \
         -host-ip string\n    \thost ip\n  \
         -host-port int\n    \thost port (default -1)\n  \
         -proto string\n    \tproxy protocol (default \"tcp\")\n"
    )
}

fn parse(args: &[OsString]) -> Result<ProxyArgs, FlagError> {
    let defs = [
        ("container-ip", Kind::Value),
        ("container-port", Kind::Value),
        ("host-ip", Kind::Value),
        ("host-port", Kind::Value),
        ("proto", Kind::Value),
    ];
    let p = goflag::parse(&defs, args)?;
    let int = |name: &str| match p.value(name) {
        Some(v) => goflag::int_value(name, v),
        None => Ok(-1),
    };
    Ok(ProxyArgs {
        container_ip: p.value("container-ip").unwrap_or_default().to_string(),
        container_port: int("container-port")?,
        host_ip: p.value("host-ip").unwrap_or_default().to_string(),
        host_port: int("host-port")?,
        proto: p.value("proto").unwrap_or("tcp").to_string(),
    })
}

/// The part of `GET /v1/info` the helper reads (rootlesskit's field names).
#[derive(Debug, Default, Deserialize)]
struct ApiInfo {
    #[serde(rename = "networkDriver", default)]
    network_driver: Option<NetworkDriver>,
    #[serde(rename = "portDriver", default)]
    port_driver: Option<PortDriver>,
}

#[derive(Debug, Default, Deserialize)]
struct NetworkDriver {
    #[serde(default)]
    driver: String,
    #[serde(rename = "childIP", default)]
    child_ip: String,
}

#[derive(Debug, Default, Deserialize)]
struct PortDriver {
    #[serde(default)]
    driver: String,
    #[serde(default)]
    protos: Vec<String>,
    #[serde(rename = "disallowLoopbackChildIP", default)]
    disallow_loopback_child_ip: bool,
}

/// What to do for one port, decided from the flags and the API's info.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// No port driver: be docker-proxy.
    BeTheProxy,
    /// The driver lacks this protocol: say so, report success, run nothing.
    Skip(String),
    /// Publish `spec`, then run docker-proxy listening on the child address.
    Publish(PortSpec),
}

/// Whether Go's `net.ParseIP` would call `ip` IPv6 (an IPv4-mapped address is IPv4).
fn is_ipv6(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().is_none(),
        _ => false,
    }
}

fn plan(args: &ProxyArgs, info: &ApiInfo) -> Result<Plan> {
    let port = match &info.port_driver {
        Some(p) if p.driver != "none" && p.driver != "implicit" => p,
        _ => return Ok(Plan::BeTheProxy),
    };
    let v6 = is_ipv6(&args.host_ip);
    let mut child_ip = if v6 { "::1" } else { "127.0.0.1" }.to_string();
    if port.disallow_loopback_child_ip {
        let network = info.network_driver.as_ref();
        match network.map(|n| n.child_ip.as_str()) {
            Some(ip) if !ip.is_empty() => child_ip = ip.to_string(),
            _ => bail!(
                "port driver {:?} does not allow a loopback child IP, but network driver {:?} has no other",
                port.driver,
                network.map(|n| n.driver.as_str()).unwrap_or_default()
            ),
        }
    }
    let mut proto = args.proto.clone();
    if !proto.ends_with('4') && !proto.ends_with('6') {
        proto += if v6 { "6" } else { "4" };
    }
    if !port.protos.contains(&proto) {
        return Ok(Plan::Skip(format!(
            "protocol {proto:?} is not supported by the RootlessKit port driver {:?}, discarding request for {:?}",
            port.driver,
            host_port_text(&args.host_ip, args.host_port)
        )));
    }
    Ok(Plan::Publish(PortSpec {
        proto,
        parent_ip: args.host_ip.clone(),
        parent_port: args.host_port,
        child_port: args.host_port,
        child_ip,
    }))
}

/// `HOST:PORT` as Go's `net.JoinHostPort` writes it.
fn host_port_text(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The pipe on fd 3 on which Docker waits for `0\n` or `1\n` and an error.
struct SignalParent(Option<File>);

impl SignalParent {
    /// Fd 3, if it is a pipe (as Docker passes it); anything else there is left alone.
    fn take() -> SignalParent {
        const FD: i32 = 3;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes into the buffer we own; on a closed fd it fails and writes
        // nothing.
        let is_pipe = unsafe { libc::fstat(FD, st.as_mut_ptr()) } == 0 && {
            // SAFETY: fstat succeeded, so it filled the buffer.
            let st = unsafe { st.assume_init() };
            st.st_mode & libc::S_IFMT == libc::S_IFIFO
        };
        if !is_pipe {
            return SignalParent(None);
        }
        // SAFETY: fd 3 is open (fstat succeeded) and, by docker-proxy's convention, handed
        // to us to write to; nothing else in this process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(FD) };
        SignalParent(Some(File::from(fd)))
    }

    fn write(&mut self, text: &str) {
        if let Some(f) = &mut self.0
            && let Err(e) = f.write_all(text.as_bytes())
        {
            log::debug!("fd 3: {e}");
        }
    }
}

/// Run as rootlesskit-docker-proxy with `argv`.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let mut signal_parent = SignalParent::take();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| writeln!(buf, "{PROGRAM}: {}", record.args()))
        .try_init();
    let original = argv.get(1..).unwrap_or_default();
    let args = match parse(original) {
        Ok(a) => a,
        Err(FlagError::Help) => {
            eprint!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(FlagError::Invalid(e)) => {
            eprint!("{e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    match run(&args, original, &mut signal_parent) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            signal_parent.write(&format!("1\n{e:#}"));
            eprintln!("{PROGRAM}: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &ProxyArgs, original: &[OsString], signal_parent: &mut SignalParent) -> Result<u8> {
    let state_dir = std::env::var_os("ROOTLESSKIT_STATE_DIR")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "$ROOTLESSKIT_STATE_DIR needs to be set (dockerd must run under rootlesskit or usernet)"
            )
        })?;
    let api = ApiClient::in_state_dir(state_dir.as_ref());
    let info: ApiInfo = serde_json::from_slice(&api.info_json().context(
        "cannot read the API's info (rootlesskit 0.14 or later, or usernet, serves it)",
    )?)
    .context("bad info answer")?;
    let spec = match plan(args, &info)? {
        Plan::BeTheProxy => {
            let e = Command::new(REAL_PROXY).args(original).exec();
            bail!("cannot run {REAL_PROXY}: {e}");
        }
        Plan::Skip(why) => {
            log::warn!("{why}");
            signal_parent.write("0\n");
            return Ok(0);
        }
        Plan::Publish(spec) => spec,
    };
    let id = api
        .add_port(&spec)
        .context("error while calling PortManager.AddPort()")?
        .id;
    let outcome = proxy(args, &spec.child_ip, signal_parent);
    if let Err(e) = api.remove_port(id) {
        log::warn!("error while calling PortManager.RemovePort(): {e:#}");
    }
    outcome
}

/// Run docker-proxy listening on `child_ip` until it ends, forwarding signals; the exit code.
fn proxy(args: &ProxyArgs, child_ip: &str, signal_parent: &mut SignalParent) -> Result<u8> {
    // Blocked before docker-proxy starts, so none is lost; it starts with none blocked.
    signals::block().context("blocking signals")?;
    let mut signals = Signals::new().context("signalfd")?;
    let mut command = Command::new(REAL_PROXY);
    command
        .arg("-container-ip")
        .arg(&args.container_ip)
        .arg("-container-port")
        .arg(args.container_port.to_string())
        .arg("-host-ip")
        .arg(child_ip)
        .arg("-host-port")
        .arg(args.host_port.to_string())
        .arg("-proto")
        .arg(&args.proto);
    crate::process::supervised(&mut command);
    // docker-proxy inherits fd 3 and answers on it.
    let mut child = command
        .spawn()
        .with_context(|| format!("error while starting {REAL_PROXY}"))?;
    // Our copy closes, so Docker sees the end of docker-proxy's answer when it goes.
    signal_parent.0 = None;
    let pid = Pid::from_raw(child.id() as i32);
    let mut asked_to_stop = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        let ready = signals::wait_readable_until(&[signals.as_fd()], kill_at)
            .context("waiting for signals")?;
        if ready.is_none() {
            log::warn!("{REAL_PROXY} did not stop within {STOP_GRACE:?}; killing it");
            let _ = kill(pid, Signal::SIGKILL);
            kill_at = None;
            continue;
        }
        while let Some(received) = signals.next_signal().context("reading signals")? {
            if received.signal == Signal::SIGCHLD {
                continue;
            }
            let _ = kill(pid, received.signal);
            if matches!(
                received.signal,
                Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT
            ) {
                asked_to_stop = true;
                kill_at.get_or_insert_with(|| Instant::now() + STOP_GRACE);
            }
        }
        if let Some(status) = child.try_wait().context("waiting for docker-proxy")? {
            // Stopped as asked: success, as rootlesskit's helper reports it.
            let code = match (status.code(), status.signal()) {
                _ if asked_to_stop => 0,
                (Some(c), _) => c,
                (None, Some(s)) => 128 + s,
                (None, None) => 1,
            };
            return Ok(code.clamp(0, 255) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> ProxyArgs {
        parse(&a.iter().map(OsString::from).collect::<Vec<_>>()).unwrap()
    }

    fn info(port: &str) -> ApiInfo {
        serde_json::from_str(port).unwrap()
    }

    const BUILTIN: &str = r#"{"networkDriver":{"driver":"slirp4netns","childIP":"10.0.2.100"},"portDriver":{"driver":"builtin","protos":["tcp","tcp4","tcp6","udp","udp4","udp6"]}}"#;

    #[test]
    fn flags_as_docker_passes_them() {
        assert_eq!(
            args(&[
                "-proto",
                "udp",
                "--host-ip=0.0.0.0",
                "-host-port",
                "8080",
                "-container-ip",
                "172.17.0.2",
                "-container-port=80"
            ]),
            ProxyArgs {
                container_ip: "172.17.0.2".into(),
                container_port: 80,
                host_ip: "0.0.0.0".into(),
                host_port: 8080,
                proto: "udp".into(),
            }
        );
        assert_eq!(args(&[]).proto, "tcp");
        assert_eq!(args(&[]).host_port, -1);
    }

    #[test]
    fn tcp_becomes_tcp4_or_tcp6_with_a_loopback_child() {
        let publish = |a: &[&str]| match plan(&args(a), &info(BUILTIN)).unwrap() {
            Plan::Publish(s) => s,
            other => panic!("{other:?}"),
        };
        let s = publish(&["-host-ip", "127.0.0.1", "-host-port", "8080"]);
        assert_eq!(
            (s.proto.as_str(), s.child_ip.as_str(), s.child_port),
            ("tcp4", "127.0.0.1", 8080)
        );
        let s = publish(&["-host-ip", "::", "-host-port", "8080", "-proto", "udp"]);
        assert_eq!((s.proto.as_str(), s.child_ip.as_str()), ("udp6", "::1"));
        // An empty host IP is IPv4's wildcard, as Go sees it.
        assert_eq!(publish(&["-host-port", "1"]).proto, "tcp4");
    }

    #[test]
    fn drivers_without_ports_loopback_or_the_protocol() {
        let a = args(&["-host-ip", "::1", "-host-port", "8080"]);
        for none in [
            r#"{}"#,
            r#"{"portDriver":{"driver":"none","protos":[]}}"#,
            r#"{"portDriver":{"driver":"implicit","protos":[]}}"#,
        ] {
            assert_eq!(plan(&a, &info(none)).unwrap(), Plan::BeTheProxy);
        }
        let slirp = r#"{"networkDriver":{"driver":"slirp4netns","childIP":"10.0.2.100"},"portDriver":{"driver":"slirp4netns","protos":["tcp","tcp4","udp","udp4"],"disallowLoopbackChildIP":true}}"#;
        assert!(
            matches!(plan(&a, &info(slirp)).unwrap(), Plan::Skip(w) if w.contains("\"tcp6\"") && w.contains("\"[::1]:8080\""))
        );
        let v4 = args(&["-host-ip", "0.0.0.0", "-host-port", "8080"]);
        assert!(
            matches!(plan(&v4, &info(slirp)).unwrap(), Plan::Publish(s) if s.child_ip == "10.0.2.100")
        );
        let no_child_ip = r#"{"portDriver":{"driver":"slirp4netns","protos":["tcp4"],"disallowLoopbackChildIP":true}}"#;
        assert!(plan(&v4, &info(no_child_ip)).is_err());
    }
}
