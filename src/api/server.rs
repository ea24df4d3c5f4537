//! One bounded server for a request protocol on a Unix stream socket, whichever event loop it
//! runs in: rootlesskit's REST API ([`super::rest`]) on the control thread of `usernet run`,
//! slirp4netns's JSON API ([`super::slirp`]) in the stack's own loop under `attach`.
//!
//! What the server owns: the listening socket (mode 0600), accepting, refusing a peer of
//! another uid (`SO_PEERCRED`) or one past the connection cap with the protocol's own answer,
//! non-blocking reads into a bounded buffer, writes, the end of a connection, and its timeout.
//! What the protocol owns ([`Protocol`]): turning bytes into answers, and saying what happens
//! to the connection after an answer. A silent or slow client holds only its own slot.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::ports::PortManager;
use crate::slab::{Id, Slab};

/// Answers waiting for a client that does not read them, past which its requests are not read
/// either.
pub const MAX_OUTPUT: usize = 64 << 10;

/// Why a client is turned away before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its peer credentials are of another user (and not root).
    OtherUser,
    /// As many clients as allowed are connected.
    Busy,
}

/// What happens to a connection once [`Protocol::serve`] has looked at its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// No whole request yet (or more may come): keep reading.
    Read,
    /// Close once the output is written.
    Close,
    /// Once the output is written, end our side and read (and drop) what the client still
    /// sends until it ends its own, so a client still writing sees no broken pipe.
    Finish,
}

/// A request protocol served by a [`Server`].
pub trait Protocol {
    /// The most input buffered for one connection; reading stops there.
    fn max_input(&self) -> usize;
    /// The bytes a refused client gets before it is closed.
    fn refusal(&self, why: Refusal) -> Vec<u8>;
    /// Answer what `input` holds, consuming what was used and appending answers to `output`;
    /// `eof`: the client sends no more. `ports`: the table requests act on, if there is one.
    fn serve(
        &mut self,
        input: &mut Vec<u8>,
        eof: bool,
        output: &mut Vec<u8>,
        ports: Option<&mut dyn PortManager>,
    ) -> Next;
}

/// How long a connection may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Closed when silent this long (rootlesskit's keep-alive clients).
    Idle(Duration),
    /// Closed this long after it was accepted, whatever it does (one request per connection).
    Total(Duration),
}

/// Where a server sits on its poller, and its bounds.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Token of the listener.
    pub listener: Token,
    /// Token kind of connections (see [`Id::token`]).
    pub connection_kind: u8,
    /// Clients at once; more are refused with [`Refusal::Busy`].
    pub max_connections: usize,
    pub timeout: Timeout,
}

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    deadline: Instant,
    next: Next,
    /// Our side is shut down ([`Next::Finish`]); what arrives now is dropped.
    finished: bool,
}

/// A listening socket, its connections and the protocol they speak.
pub struct Server<P> {
    path: PathBuf,
    listener: UnixListener,
    connections: Slab<Connection>,
    protocol: P,
    settings: Settings,
}

impl<P: Protocol> Server<P> {
    /// Listen on `path` (which must not exist), private to the user.
    pub fn bind(path: &Path, protocol: P, settings: Settings) -> io::Result<Server<P>> {
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            path: path.to_path_buf(),
            listener,
            connections: Slab::default(),
            protocol,
            settings,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    pub fn has_connections(&self) -> bool {
        !self.connections.is_empty()
    }

    /// Watch the listener on `registry`.
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(
            &mut self.listener,
            self.settings.listener,
            Interest::READABLE,
        )
    }

    /// Whether `token` is this server's listener.
    pub fn is_listener(&self, token: Token) -> bool {
        token == self.settings.listener
    }

    /// New clients on the listener.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let refusal = if !peer_is_us(&stream) {
                Some(Refusal::OtherUser)
            } else if self.connections.len() >= self.settings.max_connections {
                Some(Refusal::Busy)
            } else {
                None
            };
            if let Some(why) = refusal {
                let _ = stream.write_all(&self.protocol.refusal(why));
                continue;
            }
            let deadline = Instant::now()
                + match self.settings.timeout {
                    Timeout::Idle(d) | Timeout::Total(d) => d,
                };
            let id = self.connections.insert(Connection {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                deadline,
                next: Next::Read,
                finished: false,
            });
            let Some(conn) = self.connections.get_mut(id) else {
                continue;
            };
            // Data already waiting is reported by the poller right away.
            if registry
                .register(
                    &mut conn.stream,
                    id.token(self.settings.connection_kind),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.connections.remove(id);
            }
        }
    }

    /// Readiness on connection `id`: read, answer, write, and end the connection when the
    /// protocol or the client says so. Input is bounded by [`Protocol::max_input`], and no
    /// more is read while [`MAX_OUTPUT`] bytes of answers wait for a client that does not read
    /// them.
    pub fn on_event(
        &mut self,
        id: Id,
        registry: &Registry,
        mut ports: Option<&mut dyn PortManager>,
    ) {
        let Some(conn) = self.connections.get_mut(id) else {
            return;
        };
        if let Timeout::Idle(d) = self.settings.timeout {
            conn.deadline = Instant::now() + d;
        }
        let max_input = self.protocol.max_input();
        let mut eof = false;
        let mut broken = false;
        loop {
            let full = read(conn, max_input, &mut eof, &mut broken);
            if broken || conn.next != Next::Read {
                break;
            }
            let before = conn.input.len();
            conn.next = self.protocol.serve(
                &mut conn.input,
                eof,
                &mut conn.output,
                ports.as_mut().map(|p| &mut **p as &mut dyn PortManager),
            );
            // Edge-triggered: what is left in the socket after a full buffer is only read if
            // we go back for it now.
            if !(full && conn.next == Next::Read && conn.input.len() < before) {
                break;
            }
        }
        while !broken && !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(n) => {
                    conn.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => broken = true,
            }
        }
        if !broken && conn.output.is_empty() && conn.next == Next::Finish && !conn.finished {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.finished = true;
        }
        let done = conn.output.is_empty() && (eof || conn.next == Next::Close);
        if broken || done {
            self.close(id, registry);
        }
    }

    fn close(&mut self, id: Id, registry: &Registry) {
        if let Some(mut conn) = self.connections.remove(id) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// Close connections past their deadline; returns the next deadline, if any.
    pub fn expire(&mut self, registry: &Registry) -> Option<Instant> {
        let now = Instant::now();
        let late: Vec<Id> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| id)
            .collect();
        for id in late {
            log::debug!("api client too slow: closing its connection");
            self.close(id, registry);
        }
        self.connections.iter().map(|(_, c)| c.deadline).min()
    }

    /// Remove the socket file (at exit).
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Read what the client sent, until the socket is empty, the input is full or (while answers
/// wait) the output backlog is; true if it stopped for room rather than for lack of data.
fn read(conn: &mut Connection, max_input: usize, eof: &mut bool, broken: &mut bool) -> bool {
    let mut chunk = [0u8; 4096];
    while conn.next != Next::Close {
        let room = if conn.next == Next::Finish {
            chunk.len()
        } else if conn.output.len() >= MAX_OUTPUT {
            0
        } else {
            chunk.len().min(max_input.saturating_sub(conn.input.len()))
        };
        if room == 0 {
            return true;
        }
        match conn.stream.read(&mut chunk[..room]) {
            Ok(0) => {
                *eof = true;
                return false;
            }
            // After the last answer, what the client still sends is read and dropped.
            Ok(_) if conn.next == Next::Finish => {}
            Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => {
                *broken = true;
                return false;
            }
        }
    }
    false
}

/// Whether the peer runs as our uid (or as root).
pub fn peer_is_us(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(&stream.as_fd(), PeerCredentials) {
        Ok(cred) => cred.uid() == nix::unistd::geteuid().as_raw() || cred.uid() == 0,
        Err(_) => false,
    }
}
