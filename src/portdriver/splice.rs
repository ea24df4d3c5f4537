//! Relaying one TCP connection between two sockets with `splice()` through a pair of pipes,
//! one per direction: the payload moves between kernel buffers and never enters userspace.
//!
//! Both sockets are non-blocking and watched edge-triggered; on any readiness both directions
//! are pumped until neither can move more. A direction that reaches EOF and has drained its
//! pipe half-closes its destination (`shutdown(SHUT_WR)`), so half-close is relayed; an error
//! on either side ends the relay, and the caller resets the other side.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{Shutdown, shutdown};

/// Pipe size we ask for: big enough that one splice moves a large chunk (the kernel caps it
/// at /proc/sys/fs/pipe-max-size for unprivileged users, 1 MiB by default).
const PIPE_SIZE: i32 = 1 << 20;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    queued: usize,
    eof: bool,
    shut: bool,
    /// Bytes taken from the source so far.
    moved: u64,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .map(|n| n.max(4096) as usize)
            .unwrap_or(65536);
        Ok(Pipe {
            read,
            write,
            capacity,
            queued: 0,
            eof: false,
            shut: false,
            moved: 0,
        })
    }

    /// Move what `from` has towards `to` until neither side can take more.
    fn pump(&mut self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            let mut progressed = false;
            if !self.eof && self.queued < self.capacity {
                match splice(
                    from,
                    None,
                    &self.write,
                    None,
                    self.capacity - self.queued,
                    flags,
                ) {
                    Ok(0) => {
                        self.eof = true;
                        progressed = true;
                    }
                    Ok(n) => {
                        self.queued += n;
                        self.moved += n as u64;
                        progressed = true;
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.queued > 0 {
                match splice(&self.read, None, to, None, self.queued, flags) {
                    Ok(n) => {
                        self.queued -= n;
                        progressed |= n > 0;
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.eof && self.queued == 0 && !self.shut {
                self.shut = true;
                // The peer may already be gone; the relay ends when both directions are shut.
                let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}

/// Where a relay stands after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    Open,
    /// Both directions ended with EOF and were passed on.
    Done,
}

/// One relayed connection: the host client and the socket from inside the namespace.
pub struct Relay {
    pub client: OwnedFd,
    pub backend: OwnedFd,
    up: Pipe,
    down: Pipe,
    /// When the relay began, and when it last moved anything (for the flow table).
    pub started: Instant,
    pub last_moved: Instant,
}

/// What a relay has moved, for the flow table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayProgress {
    /// Bytes from the host client towards the namespace, and back.
    pub up: u64,
    pub down: u64,
    /// Bytes held in each direction's pipe.
    pub up_queued: u64,
    pub down_queued: u64,
    /// Each direction ended (EOF passed on).
    pub up_done: bool,
    pub down_done: bool,
}

impl Relay {
    pub fn new(client: OwnedFd, backend: OwnedFd) -> io::Result<Relay> {
        Ok(Relay {
            client,
            backend,
            up: Pipe::new()?,
            down: Pipe::new()?,
            started: Instant::now(),
            last_moved: Instant::now(),
        })
    }

    pub fn progress(&self) -> RelayProgress {
        RelayProgress {
            up: self.up.moved,
            down: self.down.moved,
            up_queued: self.up.queued as u64,
            down_queued: self.down.queued as u64,
            up_done: self.up.shut,
            down_done: self.down.shut,
        }
    }

    /// Move data both ways. An error means the connection is broken on one side.
    pub fn pump(&mut self) -> io::Result<RelayState> {
        let before = self.up.moved + self.down.moved;
        self.up.pump(self.client.as_fd(), self.backend.as_fd())?;
        self.down.pump(self.backend.as_fd(), self.client.as_fd())?;
        if self.up.moved + self.down.moved != before {
            self.last_moved = Instant::now();
        }
        Ok(if self.up.shut && self.down.shut {
            RelayState::Done
        } else {
            RelayState::Open
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn data_and_half_close_cross_both_ways() {
        // Socket pairs stand in for the client and the backend connections.
        let (mut client_far, client_near) = UnixStream::pair().unwrap();
        let (backend_near, mut backend_far) = UnixStream::pair().unwrap();
        client_near.set_nonblocking(true).unwrap();
        backend_near.set_nonblocking(true).unwrap();
        let mut relay = Relay::new(client_near.into(), backend_near.into()).unwrap();
        client_far.write_all(b"request").unwrap();
        client_far.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(relay.pump().unwrap(), RelayState::Open);
        let mut got = Vec::new();
        backend_far.read_to_end(&mut got).unwrap();
        assert_eq!(
            got, b"request",
            "the client's FIN reached the backend after the data"
        );
        backend_far.write_all(b"response").unwrap();
        drop(backend_far);
        assert_eq!(relay.pump().unwrap(), RelayState::Done);
        let mut got = Vec::new();
        client_far.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"response");
    }
}
