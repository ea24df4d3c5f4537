//! `usernet attach`, and the process behind the slirp4netns drop-in: give a network namespace
//! that already exists (or a TAP fd, or a BESS socket) connectivity through the same stack
//! `usernet run` uses.
//!
//! One long-lived process, as slirp4netns is (callers signal and wait for that PID):
//! 1. get the TAP: a short-lived child joins the namespace and hands the fd back
//!    ([`namespace`]); or the fd is inherited; or a BESS client connects;
//! 2. start the stack, listen on the API socket (`--api-socket`, slirp4netns's JSON API
//!    whose forwards enter the guest through the stack, see `crate::stack::hostfwd`);
//! 3. enter the sandbox and load the seccomp filter, if asked (never joining the target's
//!    user namespace, and non-dumpable from the start: see [`crate::harden`]);
//! 4. write `1` to the ready fd;
//! 5. run until the exit fd reports anything (any poll event, as in slirp4netns), a signal
//!    arrives, the TAP goes away, or (for `usernet attach` only) the target does.
//!
//! The API socket is removed on the way out, also from inside the sandbox.

pub mod namespace;
mod watch;

use std::ffi::OsString;
use std::io::Write;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::sys::signal::{SigSet, Signal};

use crate::api::Server;
use crate::api::slirp::SlirpApi;
use crate::config::{AttachConfig, OnSignal, Target};
use crate::harden;
use crate::process::signals::{self, Signals};
use crate::runtime;
use crate::stack::WAKEUP_TOKEN;
use crate::stack::token::Kind;
use crate::stack_ports::StackForwards;
use namespace::{Configure, Namespaces};
use watch::TargetWatch;

/// The API socket's listener, and its connections' token kind (one of the stack's embedder
/// kinds).
const API_LISTENER: Token = Token(16);
const API_CONNECTION_KIND: Kind = Kind::Embedder(0);
const EXIT_FD_TOKEN: Token = Token(2);
const TARGET_TOKEN: Token = Token(3);

/// Why the loop ended.
enum Stop {
    ExitFd,
    Signal(Signal),
    TargetGone,
}

/// Attach and serve until told to stop; returns the exit code.
pub fn run(cfg: AttachConfig) -> Result<i32> {
    let mut stop_signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop_signals.add(s);
    }
    runtime::prepare(&stop_signals)?;
    let mut signals = Signals::for_set(&stop_signals).context("cannot create a signalfd")?;
    crate::process::raise_fd_limit();

    let mut namespaces = None;
    let tap = match &cfg.target {
        Target::Namespace(target) => {
            let ns = Namespaces::open(target, cfg.userns_path.as_deref())?;
            let configure = cfg.configure.then(|| Configure {
                net: cfg.stack.policy.net,
                mtu: cfg.tap_mtu,
                mac: cfg.mac,
                txqueuelen: crate::process::txqueuelen(cfg.stack.tcp.rx_ring, cfg.stack.mtu),
            });
            let tap = namespace::open_tap(&ns, &cfg.ifname, configure.as_ref(), &mut signals)?;
            // Keep the identity of the network namespace, but not its file (an open fd would
            // keep a bind mount of it busy), nor its user namespace's.
            namespaces = Some(ns.identity());
            tap
        }
        Target::TapFd(fd) => inherited_fd(*fd)?,
        Target::Bess(path) => accept_bess(path, &mut signals)?,
    };
    let mut stack = runtime::start_stack(tap, cfg.stack.clone())?;
    let registry = stack
        .registry()
        .try_clone()
        .context("cannot clone the poll registry")?;

    let mut api = match &cfg.api_socket {
        Some(path) => {
            remove_stale_socket(path);
            let settings = SlirpApi::settings(
                API_LISTENER,
                API_CONNECTION_KIND.bits(),
                cfg.max_api_connections,
            );
            let protocol = SlirpApi::new(cfg.stack.policy.net.guest);
            let mut server = Server::bind(path, protocol, settings)
                .map_err(|e| anyhow!("cannot listen on API socket {}: {e}", path.display()))?;
            server
                .register(&registry)
                .context("cannot watch the API socket")?;
            Some(server)
        }
        None => None,
    };
    if let Some(banner) = &cfg.banner {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
    }

    // What to watch for the end, set up while /proc is still visible.
    let mut target_watch = None;
    if cfg.exit_with_target
        && let (Target::Namespace(target), Some(identity)) = (&cfg.target, &namespaces)
    {
        target_watch = Some(TargetWatch::new(target, *identity)?);
    }

    let keep = harden::Keep {
        api_socket: cfg.api_socket.clone(),
        state_dir: None,
    };
    // Never in the target's user namespace, whose root could then ptrace us (see `harden`).
    let sandbox = runtime::confine(cfg.sandbox, cfg.seccomp, &keep)?;

    if let Some(fd) = cfg.ready_fd {
        write_ready(fd);
    }

    // The end conditions (signals are watched by `runtime::serve`).
    let mut exit_now = false;
    if let Some(fd) = cfg.exit_fd {
        match stack
            .registry()
            .register(&mut SourceFd(&fd), EXIT_FD_TOKEN, Interest::READABLE)
        {
            Ok(()) => {}
            // Not open at all: slirp4netns's poll() reports POLLNVAL at once, and it exits.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => exit_now = true,
            // A file poll cannot watch (a regular file, /dev/null) never reports anything.
            Err(e) => log::debug!("exit-fd {fd} cannot be watched ({e}); it will never fire"),
        }
    }
    if let Some(w) = &target_watch {
        w.register(stack.registry(), TARGET_TOKEN)
            .context("cannot watch the target")?;
    }

    let stop = if exit_now {
        log::debug!("stack: {}", stack.summary());
        Ok(Stop::ExitFd)
    } else {
        runtime::serve(
            &mut stack,
            &mut signals,
            |stack, signals, token| match token {
                runtime::SIGNALS_TOKEN => match signals.next_signal() {
                    Ok(Some(r)) => ControlFlow::Break(Stop::Signal(r.signal)),
                    _ => ControlFlow::Continue(()),
                },
                EXIT_FD_TOKEN => ControlFlow::Break(Stop::ExitFd),
                TARGET_TOKEN => {
                    if target_watch.as_mut().is_some_and(TargetWatch::gone) {
                        ControlFlow::Break(Stop::TargetGone)
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                API_LISTENER => {
                    if let Some(api) = &mut api {
                        api.accept(&registry);
                        stack.wake_at(api.expire(&registry));
                    }
                    ControlFlow::Continue(())
                }
                WAKEUP_TOKEN => {
                    if let Some(api) = &mut api {
                        stack.wake_at(api.expire(&registry));
                    }
                    ControlFlow::Continue(())
                }
                token => {
                    if let Some(api) = &mut api
                        && let Some((API_CONNECTION_KIND, id)) = Kind::of(token)
                    {
                        api.on_event(id, &registry, Some(&mut StackForwards(stack)));
                        stack.wake_at(api.expire(&registry));
                    }
                    ControlFlow::Continue(())
                }
            },
        )
    };
    if let Some(api) = &api {
        sandbox.unlink_api_socket(api.path());
    }
    let code = match stop {
        Ok(Stop::ExitFd) => {
            log::debug!("exit fd event");
            0
        }
        Ok(Stop::TargetGone) => {
            log::info!("the target is gone");
            0
        }
        Ok(Stop::Signal(s)) => {
            log::debug!("stopped by {s}");
            if cfg.on_signal == OnSignal::Reraise {
                reraise(s);
            }
            0
        }
        Err(e) => {
            // The TAP went away (deleted, or the BESS client hung up): nothing left to serve.
            log::info!("{e:#}");
            0
        }
    };
    Ok(code)
}

/// slirp4netns replaces what is at its API socket's path; we replace only a socket of ours
/// (a previous run's), never a file we did not create.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && meta.uid() == nix::unistd::geteuid().as_raw()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// Take an inherited fd as the TAP.
fn inherited_fd(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(anyhow!("TAP fd {fd} is not an open file descriptor"));
    }
    // SAFETY: the caller handed us fd to own (that is what --netns-type=tapfd means).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Serve one BESS client: listen on `path` (replacing what is there) and take the first
/// connection; each of its packets is one Ethernet frame.
fn accept_bess(path: &PathBuf, signals: &mut Signals) -> Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, listen, socket,
    };
    if path.as_os_str().as_bytes().len() >= 108 {
        return Err(anyhow!(
            "the BESS socket path {} is too long (108 bytes or more)",
            path.display()
        ));
    }
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("cannot create the BESS socket")?;
    let _ = std::fs::remove_file(path);
    let addr = UnixAddr::new(path.as_path()).context("BESS socket path")?;
    bind(listener.as_raw_fd(), &addr)
        .with_context(|| format!("cannot bind the BESS socket {}", path.display()))?;
    listen(&listener, Backlog::new(1).unwrap_or(Backlog::MAXCONN))
        .context("cannot listen on the BESS socket")?;
    eprintln!("Waiting for connection to {}", path.display());
    loop {
        let ready = signals::wait_readable(&[listener.as_fd(), signals.as_fd()])
            .context("waiting for the BESS client")?;
        if ready == 1 {
            if let Some(r) = signals.next_signal().context("signalfd")? {
                return Err(crate::process::Failure {
                    code: 128 + r.signal as i32,
                    message: format!(
                        "interrupted by {} while waiting for the BESS client",
                        r.signal
                    ),
                }
                .into());
            }
            continue;
        }
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that we own.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(anyhow!("accept on the BESS socket: {}", e.desc())),
        }
    }
}

/// Tell the caller we are ready: the byte `1`, then close (slirp4netns's `--ready-fd`).
fn write_ready(fd: RawFd) {
    // SAFETY: the caller handed this fd to us to write one byte to and close.
    let f = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(f);
    if let Err(e) = file.write_all(b"1") {
        log::debug!("ready-fd {fd}: {e}");
    }
}

/// Die of `s` with its default action.
fn reraise(s: Signal) {
    use nix::sys::signal::{SigHandler, signal};
    // SAFETY: restoring the default disposition installs no handler code.
    let _ = unsafe { signal(s, SigHandler::SigDfl) };
    let mut set = SigSet::empty();
    set.add(s);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(s);
}

/// An argument vector's program name as a string (for messages).
pub fn program_name(argv0: Option<&OsString>) -> String {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "usernet".into())
}
