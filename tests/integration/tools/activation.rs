//! The command of the socket-activation tests: what it was handed by a service manager
//! through usernet, and an answer on the socket that started it.

use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

/// Report `LISTEN_FDS`, whether `LISTEN_PID` names this process, and the local port of each
/// passed fd that is a listening socket ("-" for one that is not); then accept one connection
/// on the first and greet it.
pub(super) fn activated() -> io::Result<()> {
    let var = |name| std::env::var(name).unwrap_or_default();
    let listen_pid = var("LISTEN_PID");
    let fds: i32 = var("LISTEN_FDS")
        .parse()
        .map_err(|_| io::Error::other("LISTEN_FDS is not a number"))?;
    if !(1..=16).contains(&fds) {
        return Err(io::Error::other(format!("LISTEN_FDS={fds}")));
    }
    let mut ports = Vec::new();
    for fd in 3..3 + fds {
        // SAFETY: only borrowed for two getsockopt/getsockname calls; an fd that is not open
        // makes them fail with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let listening =
            nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::AcceptConn)
                .unwrap_or(false);
        let port = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(fd as _)
            .map(|a| a.port().to_string());
        ports.push(match (listening, port) {
            (true, Ok(p)) => p,
            _ => "-".to_string(),
        });
    }
    println!(
        "activated fds={fds} listen_pid_is_self={} ports={}",
        listen_pid == std::process::id().to_string(),
        ports.join(",")
    );
    io::stdout().flush()?;
    // SAFETY: fd 3 is the first socket the service manager passed (checked above to be a
    // listening socket), and nothing else in this process owns it.
    let listener = TcpListener::from(unsafe { OwnedFd::from_raw_fd(3) });
    let (mut conn, _) = listener.accept()?;
    conn.write_all(b"hello from the activated command\n")
}
