//! The socket side of slirp4netns's API: a Unix stream listener whose connections are read
//! without ever blocking, inside the stack's own event loop (requests change the stack's
//! forward table, so they run where the stack runs).
//!
//! slirp4netns served one connection at a time with a blocking read, so a client that
//! connected and sent nothing froze all networking. Here each connection is an ordinary
//! non-blocking socket with a deadline: a silent client holds only its own slot, at most
//! [`DEFAULT_MAX_CONNECTIONS`] (or `--max-api-connections`) exist at once, and a request is at most [`api::MAX_REQUEST`] bytes.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::api::{self, HostForwards, Request};
use crate::slab::{Id, Slab};
use crate::stack::token::Kind;

/// Token of the listener (in the embedding program's range of the stack's poller).
pub const LISTENER_TOKEN: Token = Token(16);
/// Token kind of connections (one of the embedding program's kinds on the stack's poller).
pub const KIND_CONNECTION: Kind = Kind::Embedder(0);
/// Connections at once, unless `--max-api-connections` says otherwise; more are answered
/// with an error and closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request and read the answer.
pub const DEADLINE: Duration = Duration::from_secs(10);

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    answered: bool,
    deadline: Instant,
}

pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    connections: Slab<Connection>,
    /// The address `guest_addr` defaults to.
    guest: Ipv4Addr,
    max_connections: usize,
}

impl ApiServer {
    /// Listen on `path`, replacing whatever is there (as slirp4netns does), private to us.
    pub fn bind(path: &Path, guest: Ipv4Addr, max_connections: usize) -> io::Result<ApiServer> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            connections: Slab::default(),
            guest,
            max_connections,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.listener, LISTENER_TOKEN, Interest::READABLE)
    }

    /// New clients on the listener.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if !peer_is_us(&stream) {
                let _ = stream.write_all(&error(
                    "permission denied: the API socket belongs to another user",
                ));
                continue;
            }
            if self.connections.len() >= self.max_connections {
                let _ = stream.write_all(&error("busy: too many API connections"));
                continue;
            }
            let id = self.connections.insert(Connection {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                answered: false,
                deadline: Instant::now() + DEADLINE,
            });
            let Some(conn) = self.connections.get_mut(id) else {
                continue;
            };
            if registry
                .register(
                    &mut conn.stream,
                    KIND_CONNECTION.token(id),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.connections.remove(id);
            }
        }
    }

    /// Readiness on a connection: read, answer once the request is whole, write; then end
    /// our side and drain the client's until it ends its own (so a client still writing a
    /// trailing newline sees no broken pipe), and close.
    pub fn on_event(&mut self, token: Token, registry: &Registry, table: &mut dyn HostForwards) {
        let (_, id) = Id::from_token(token);
        let Some(conn) = self.connections.get_mut(id) else {
            return;
        };
        let mut eof = false;
        let mut broken = false;
        let mut chunk = [0u8; api::MAX_REQUEST];
        loop {
            let room = if conn.answered {
                chunk.len()
            } else {
                api::MAX_REQUEST - conn.input.len()
            };
            if room == 0 {
                break;
            }
            match conn.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                // After the answer, what the client still sends is read and dropped.
                Ok(_) if conn.answered => {}
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if !broken && !conn.answered {
            log::debug!(
                "api request: {}",
                String::from_utf8_lossy(&conn.input).trim_end()
            );
            if let Request::Answer(answer) = api::respond(&conn.input, eof, table, self.guest) {
                conn.output = answer;
                conn.answered = true;
            }
        }
        while !broken && !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(n) => {
                    conn.output.drain(..n);
                    if conn.output.is_empty() {
                        // One request per connection, as in slirp4netns: the answer, then EOF.
                        let _ = conn.stream.shutdown(Shutdown::Write);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => broken = true,
            }
        }
        if broken || (conn.answered && conn.output.is_empty() && eof) {
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

/// Whether the peer runs as our uid (or as root).
fn peer_is_us(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(&stream.as_fd(), PeerCredentials) {
        Ok(cred) => cred.uid() == nix::unistd::geteuid().as_raw() || cred.uid() == 0,
        Err(_) => false,
    }
}

fn error(desc: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": { "desc": desc } })).unwrap_or_default()
}
