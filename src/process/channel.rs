//! The setup conversation between the parent and the child it forked, over a `SOCK_SEQPACKET`
//! socketpair (one message per send, so no framing is needed). The TAP fd rides along with
//! the `Tap` message.
//!
//! ```text
//! child                               parent
//!   unshare(user, net, mount)
//!   Unshared              ─────────▶  write uid_map / gid_map
//!                         ◀─────────  MapsWritten
//!   lo up, create tap0
//!   Tap + fd              ─────────▶  start the stack on the fd
//!   configure tap0, resolv.conf
//!   Configured            ─────────▶  write child_pid
//!                         ◀─────────  Go
//!   spawn COMMAND
//!   Started               ─────────▶
//!   ... COMMAND ends
//!   Exited                ─────────▶  (read once the child is reaped)
//! ```
//! Any step may instead answer `Failed`, with the exit code and the one-line message the
//! parent prints. `Exited` says how COMMAND ended, which the child's own exit status cannot
//! tell apart (a COMMAND killed by SIGTERM and one that exited 143 look the same).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::CommandExit;
use crate::fdpass;

const MAX_MESSAGE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Unshared,
    MapsWritten,
    /// With `--pidns`: the namespace's init (PID 1 inside) is up; its pid outside.
    Init {
        pid: i32,
    },
    Tap,
    Configured,
    Go,
    Started,
    /// COMMAND ended so (sent just before the child exits).
    Exited(CommandExit),
    Failed {
        code: i32,
        message: String,
    },
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        let tag = match self {
            Msg::Unshared => b'U',
            Msg::MapsWritten => b'M',
            Msg::Init { .. } => b'I',
            Msg::Tap => b'T',
            Msg::Configured => b'C',
            Msg::Go => b'G',
            Msg::Started => b'S',
            Msg::Exited(_) => b'X',
            Msg::Failed { .. } => b'F',
        };
        let mut out = vec![tag];
        if let Msg::Init { pid } = self {
            out.extend_from_slice(&pid.to_le_bytes());
        }
        if let Msg::Exited(exit) = self {
            let (kind, value) = match *exit {
                CommandExit::Code(code) => (0u8, code),
                CommandExit::Signal {
                    signal,
                    core_dumped,
                } => (1 + u8::from(core_dumped), signal),
            };
            out.push(kind);
            out.extend_from_slice(&value.to_le_bytes());
        }
        if let Msg::Failed { code, message } = self {
            out.extend_from_slice(&code.to_le_bytes());
            let m = message.as_bytes();
            out.extend_from_slice(&m[..m.len().min(MAX_MESSAGE - 5)]);
        }
        out
    }

    fn decode(b: &[u8]) -> io::Result<Msg> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad setup message");
        Ok(match b.first().ok_or_else(bad)? {
            b'U' => Msg::Unshared,
            b'M' => Msg::MapsWritten,
            b'I' => {
                let pid = b.get(1..5).ok_or_else(bad)?;
                Msg::Init {
                    pid: i32::from_le_bytes(pid.try_into().map_err(|_| bad())?),
                }
            }
            b'T' => Msg::Tap,
            b'C' => Msg::Configured,
            b'G' => Msg::Go,
            b'S' => Msg::Started,
            b'X' => {
                let value = b.get(2..6).ok_or_else(bad)?;
                let value = i32::from_le_bytes(value.try_into().map_err(|_| bad())?);
                Msg::Exited(match b[1] {
                    0 => CommandExit::Code(value),
                    kind @ (1 | 2) => CommandExit::Signal {
                        signal: value,
                        core_dumped: kind == 2,
                    },
                    _ => return Err(bad()),
                })
            }
            b'F' => {
                let code = b.get(1..5).ok_or_else(bad)?;
                let code = i32::from_le_bytes(code.try_into().map_err(|_| bad())?);
                Msg::Failed {
                    code,
                    message: String::from_utf8_lossy(&b[5..]).into_owned(),
                }
            }
            _ => return Err(bad()),
        })
    }
}

pub struct Channel {
    sock: OwnedFd,
}

impl Channel {
    /// Two connected ends; both close on exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { sock: a }, Channel { sock: b }))
    }

    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let bytes = msg.encode();
        nix::sys::socket::send(
            std::os::fd::AsRawFd::as_raw_fd(&self.sock),
            &bytes,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )?;
        Ok(())
    }

    pub fn send_with_fd(&self, msg: &Msg, fd: BorrowedFd<'_>) -> io::Result<()> {
        fdpass::send_fd(self.sock.as_fd(), &msg.encode(), fd)
    }

    /// Block for the next message. The peer closing its end reads as `UnexpectedEof`.
    pub fn recv(&self) -> io::Result<(Msg, Option<OwnedFd>)> {
        self.recv_with(false)
    }

    /// The next message if one is queued, without waiting: `WouldBlock` if none is.
    pub fn try_recv(&self) -> io::Result<(Msg, Option<OwnedFd>)> {
        self.recv_with(true)
    }

    fn recv_with(&self, nonblocking: bool) -> io::Result<(Msg, Option<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, fd) = fdpass::recv_fd_with(self.sock.as_fd(), &mut buf, nonblocking)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "setup peer went away",
            ));
        }
        Ok((Msg::decode(&buf[..n])?, fd))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let (a, b) = Channel::pair().unwrap();
        for m in [
            Msg::Unshared,
            Msg::Go,
            Msg::Init { pid: 123456 },
            Msg::Exited(CommandExit::Code(42)),
            Msg::Exited(CommandExit::Signal {
                signal: 10,
                core_dumped: false,
            }),
            Msg::Exited(CommandExit::Signal {
                signal: 11,
                core_dumped: true,
            }),
            Msg::Failed {
                code: 127,
                message: "foo: command not found".into(),
            },
        ] {
            a.send(&m).unwrap();
            assert_eq!(b.recv().unwrap().0, m);
        }
        assert_eq!(b.try_recv().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for b in [
            &b""[..],
            b"F",
            b"F\x01\x02",
            b"Z",
            b"X",
            b"X\x00\x01",
            b"X\x07\x01\x00\x00\x00",
        ] {
            assert!(Msg::decode(b).is_err());
        }
    }
}
