//! A stand-in for Docker's `docker-proxy`, for the `rootlesskit-docker-proxy` personality to
//! run: it records the arguments it was given and the signals that reach it, listens where
//! `-host-ip`/`-host-port` say (inside the namespace, where usernet's port driver connects),
//! answers `0\n` on fd 3 as docker-proxy does once listening, and serves the exchange of
//! [`super::tcp`] (checked by hash) until a signal ends it.

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::FromRawFd;

use nix::sys::signal::{SigSet, Signal};

/// `docker-proxy-stub RECORD SEND ARGS...`: ARGS are docker-proxy's; each connection gets
/// `SEND` bytes back. RECORD gets `args ARGS` and then `signal NAME`.
pub(super) fn docker_proxy_stub(record: &str, send: u64, args: &[&str]) -> io::Result<()> {
    let mut stop = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        stop.add(s);
    }
    // Blocked before any thread starts, so only the wait below takes them.
    stop.thread_block()?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record)?;
    writeln!(log, "args {}", args.join(" "))?;
    let value = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
            .ok_or_else(|| io::Error::other(format!("no {flag}")))
    };
    let port: u16 = value("-host-port")?.parse().map_err(io::Error::other)?;
    let listener = TcpListener::bind((value("-host-ip")?, port))?;
    // SAFETY: fd 3 is the signal-parent pipe our caller handed us (docker-proxy's
    // convention); it is closed once the answer is written.
    let mut signal_parent = unsafe { std::fs::File::from_raw_fd(3) };
    signal_parent.write_all(b"0\n")?;
    drop(signal_parent);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || super::tcp::serve(conn, send, false));
        }
    });
    let signal = stop.wait()?;
    writeln!(log, "signal {}", signal.as_str())?;
    Ok(())
}
