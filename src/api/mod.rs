//! rootlesskit's REST API on `STATE_DIR/api.sock`: `GET /v1/info`, `GET /v1/ports`,
//! `POST /v1/ports`, `DELETE /v1/ports/{id}`, with rootlesskit's JSON shapes, status codes and
//! quirks (an empty port list is `null`; error bodies are `{"message":...}` followed by a
//! newline and typed `text/plain`), so the real `rootlessctl` and Docker's client work.
//!
//! The socket is private to the user (mode 0600 in a 0700 directory) and a peer of another
//! uid is refused anyway (`SO_PEERCRED`). Requests and connections are bounded; a client that
//! connects and sends nothing only holds its own slot until it times out.

pub mod client;
pub mod http;

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde::{Deserialize, Serialize};

use crate::portdriver::parent::Forwarder;
use crate::portdriver::spec::{PROTOS, PortSpec};
use crate::slab::{Id, Slab};
use http::{Parsed, Response};

/// Version of the REST API we speak (rootlesskit's).
pub const API_VERSION: &str = "1.1.1";
/// Token of the API listener on the control thread.
pub const LISTENER_TOKEN: Token = Token(0);
/// Token kind of API connections.
pub const KIND_CONNECTION: u8 = 7;
/// API connections at once; more get 503.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// A connection silent this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub version: String,
    #[serde(rename = "stateDir")]
    pub state_dir: String,
    #[serde(rename = "childPID")]
    pub child_pid: i64,
    #[serde(
        rename = "networkDriver",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub network_driver: Option<NetworkDriverInfo>,
    #[serde(
        rename = "portDriver",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub port_driver: Option<PortDriverInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDriverInfo {
    pub driver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(rename = "childIP", default, skip_serializing_if = "String::is_empty")]
    pub child_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDriverInfo {
    pub driver: String,
    pub protos: Vec<String>,
}

impl PortDriverInfo {
    pub fn builtin() -> Self {
        PortDriverInfo {
            driver: "builtin".into(),
            protos: PROTOS.iter().map(|p| p.to_string()).collect(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
}

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active: Instant,
    closing: bool,
}

/// Bounds of the API server (`--max-api-connections`, `--max-api-request`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Clients at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Largest request body; bigger ones are answered 413.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body: http::DEFAULT_MAX_BODY,
        }
    }
}

/// The listening api.sock and its connections.
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    connections: Slab<Connection>,
    info: Info,
    limits: Limits,
}

impl ApiServer {
    /// Listen on `path` (which must not exist: the state dir removed a stale one), private
    /// to the user.
    pub fn bind(
        path: &Path,
        info: Info,
        limits: Limits,
        registry: &Registry,
    ) -> io::Result<ApiServer> {
        let mut listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        registry.register(&mut listener, LISTENER_TOKEN, Interest::READABLE)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            connections: Slab::default(),
            info,
            limits,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
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
                let body = error_body("permission denied: the API socket belongs to another user");
                let _ = stream.write_all(
                    &Response::new(403, Some("text/plain; charset=utf-8"), body).encode(true),
                );
                continue;
            }
            if self.connections.len() >= self.limits.max_connections {
                let body = error_body("too many API connections");
                let _ = stream.write_all(
                    &Response::new(503, Some("text/plain; charset=utf-8"), body).encode(true),
                );
                continue;
            }
            let id = self.connections.insert(Connection {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                last_active: Instant::now(),
                closing: false,
            });
            let conn = self.connections.get_mut(id).expect("just inserted");
            let token = id.token(KIND_CONNECTION);
            // Data already waiting is reported by the poller right away.
            if registry
                .register(
                    &mut conn.stream,
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.connections.remove(id);
            }
        }
    }

    /// Readiness on a client connection: read, answer every complete request, write.
    pub fn on_event(&mut self, id: Id, registry: &Registry, mut ports: Option<&mut Forwarder>) {
        let Some(conn) = self.connections.get_mut(id) else {
            return;
        };
        conn.last_active = Instant::now();
        let mut eof = false;
        let mut chunk = [0u8; 4096];
        while !conn.closing {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&chunk[..n]);
                    if conn.input.len() > http::MAX_HEAD + self.limits.max_body {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        while !conn.closing {
            match http::parse(&conn.input, self.limits.max_body) {
                Parsed::Partial => break,
                Parsed::Complete(request, used) => {
                    conn.input.drain(..used);
                    let response = handle(&request, &self.info, ports.as_deref_mut(), registry);
                    conn.output
                        .extend_from_slice(&response.encode(request.close));
                    conn.closing = request.close;
                }
                Parsed::Invalid(status, why) => {
                    let response =
                        Response::new(status, Some("text/plain; charset=utf-8"), error_body(why));
                    conn.output.extend_from_slice(&response.encode(true));
                    conn.closing = true;
                }
            }
        }
        while !conn.output.is_empty() {
            match conn.stream.write(&conn.output) {
                Ok(n) => {
                    conn.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    conn.output.clear();
                }
            }
        }
        if (eof || conn.closing) && conn.output.is_empty() {
            self.close(id, registry);
        }
    }

    fn close(&mut self, id: Id, registry: &Registry) {
        if let Some(mut conn) = self.connections.remove(id) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }

    /// Close connections idle for too long.
    pub fn expire(&mut self, registry: &Registry) {
        let now = Instant::now();
        let idle: Vec<Id> = self
            .connections
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_active) >= IDLE_TIMEOUT)
            .map(|(id, _)| id)
            .collect();
        for id in idle {
            self.close(id, registry);
        }
    }

    pub fn has_connections(&self) -> bool {
        !self.connections.is_empty()
    }
}

/// Whether the peer runs as our uid (or as root).
fn peer_is_us(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(&stream.as_fd(), PeerCredentials) {
        Ok(cred) => {
            let uid = cred.uid();
            uid == nix::unistd::geteuid().as_raw() || uid == 0
        }
        Err(_) => false,
    }
}

fn error_body(message: &str) -> Vec<u8> {
    // Go's json.Encoder adds a newline; HTML-safe escaping as Go does it is not needed.
    let mut body = serde_json::to_vec(&ErrorBody { message }).unwrap_or_default();
    body.push(b'\n');
    body
}

/// An API error: rootlesskit's status and body, with its text/plain content type.
fn error(status: u16, message: &str) -> Response {
    Response::new(
        status,
        Some("text/plain; charset=utf-8"),
        error_body(message),
    )
}

fn json(status: u16, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => Response::new(status, Some("application/json"), body),
        Err(e) => error(500, &e.to_string()),
    }
}

/// Route one request.
fn handle(
    request: &http::Request,
    info: &Info,
    ports: Option<&mut Forwarder>,
    registry: &Registry,
) -> Response {
    const NO_DRIVER: &str = "no PortDriver is available";
    let method = request.method.as_str();
    match request.path.as_str() {
        "/v1/info" => match method {
            "GET" => json(200, info),
            _ => Response::new(405, None, Vec::new()),
        },
        "/v1/ports" => match (method, ports) {
            ("GET", Some(ports)) => {
                let list = ports.list();
                if list.is_empty() {
                    Response::new(200, Some("application/json"), "null")
                } else {
                    json(200, &list)
                }
            }
            ("POST", Some(ports)) => {
                if request.body.iter().all(u8::is_ascii_whitespace) {
                    return error(400, "EOF");
                }
                let mut de = serde_json::Deserializer::from_slice(&request.body);
                let spec = match PortSpec::deserialize(&mut de) {
                    Ok(s) => s,
                    Err(e) => return error(400, &e.to_string()),
                };
                match ports.add(spec, registry) {
                    Ok(status) => json(201, &status),
                    Err(e) => error(400, &e),
                }
            }
            ("GET" | "POST", None) => error(400, NO_DRIVER),
            _ => Response::new(405, None, Vec::new()),
        },
        path => match path.strip_prefix("/v1/ports/") {
            Some(id) if !id.is_empty() && !id.contains('/') => match (method, ports) {
                ("DELETE", Some(ports)) => {
                    let id: i64 = match id.parse() {
                        Ok(n) => n,
                        Err(e) => return error(400, &format!("bad id {id}: {e}")),
                    };
                    match ports.remove(id, registry) {
                        Ok(()) => Response::new(200, None, Vec::new()),
                        Err(e) => error(400, &e),
                    }
                }
                ("DELETE", None) => error(400, NO_DRIVER),
                _ => Response::new(405, None, Vec::new()),
            },
            _ => {
                const NOSNIFF: &[(&str, &str)] = &[("X-Content-Type-Options", "nosniff")];
                Response {
                    extra_headers: NOSNIFF,
                    ..Response::new(
                        404,
                        Some("text/plain; charset=utf-8"),
                        "404 page not found\n",
                    )
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info {
            api_version: API_VERSION.into(),
            version: "0.1.0".into(),
            state_dir: "/tmp/s".into(),
            child_pid: 42,
            network_driver: Some(NetworkDriverInfo {
                driver: "usernet".into(),
                dns: vec!["10.0.2.3".into()],
                child_ip: "10.0.2.100".into(),
            }),
            port_driver: Some(PortDriverInfo::builtin()),
        }
    }

    fn request(method: &str, path: &str, body: &str) -> http::Request {
        http::Request {
            method: method.into(),
            path: path.into(),
            body: body.into(),
            close: false,
        }
    }

    #[test]
    fn info_has_rootlesskits_shape() {
        let poll = mio::Poll::new().unwrap();
        let r = handle(
            &request("GET", "/v1/info", ""),
            &info(),
            None,
            poll.registry(),
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"apiVersion":"1.1.1","version":"0.1.0","stateDir":"/tmp/s","childPID":42,"networkDriver":{"driver":"usernet","dns":["10.0.2.3"],"childIP":"10.0.2.100"},"portDriver":{"driver":"builtin","protos":["tcp","tcp4","tcp6","udp","udp4","udp6"]}}"#
        );
    }

    #[test]
    fn ports_without_a_driver_wrong_methods_and_unknown_paths() {
        let poll = mio::Poll::new().unwrap();
        let reg = poll.registry();
        let r = handle(&request("GET", "/v1/ports", ""), &info(), None, reg);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (400, &b"{\"message\":\"no PortDriver is available\"}\n"[..])
        );
        assert_eq!(
            handle(&request("PUT", "/v1/ports", ""), &info(), None, reg).status,
            405
        );
        assert_eq!(
            handle(&request("GET", "/v1/ports/1", ""), &info(), None, reg).status,
            405
        );
        assert_eq!(
            handle(&request("HEAD", "/v1/info", ""), &info(), None, reg).status,
            405
        );
        for path in ["/v1/nonexistent", "/v2/info", "/v1/info/", "/v1/ports/1/x"] {
            let r = handle(&request("GET", path, ""), &info(), None, reg);
            assert_eq!(
                (r.status, r.body.as_slice()),
                (404, &b"404 page not found\n"[..]),
                "{path}"
            );
        }
    }

    #[test]
    fn port_requests_validate_and_report_like_rootlesskit() {
        let poll = mio::Poll::new().unwrap();
        let reg = poll.registry();
        let mut fw = Forwarder::new("/nonexistent/.bp.sock".into(), Duration::from_secs(60));
        let mut call =
            |m: &str, p: &str, b: &str| handle(&request(m, p, b), &info(), Some(&mut fw), reg);
        let r = call("GET", "/v1/ports", "");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"null"[..]));
        assert_eq!(
            call("POST", "/v1/ports", "").body,
            b"{\"message\":\"EOF\"}\n"
        );
        assert_eq!(call("POST", "/v1/ports", "{bad").status, 400);
        let r = call(
            "POST",
            "/v1/ports",
            r#"{"proto":"foo","parentPort":1,"childPort":1}"#,
        );
        assert_eq!(r.body, b"{\"message\":\"unknown proto: \\\"foo\\\"\"}\n");
        let r = call(
            "POST",
            "/v1/ports",
            r#"{"proto":"tcp","parentIP":"127.0.0.1","parentPort":0,"childPort":1}"#,
        );
        assert_eq!(r.status, 400);
        let r = call("DELETE", "/v1/ports/abc", "");
        assert!(String::from_utf8_lossy(&r.body).starts_with("{\"message\":\"bad id abc:"));
        assert_eq!(
            call("DELETE", "/v1/ports/7", "").body,
            b"{\"message\":\"unknown id: 7\"}\n"
        );
        // A real listener on an ephemeral loopback port, then its removal.
        let r = call(
            "POST",
            "/v1/ports",
            r#"{"proto":"tcp4","parentIP":"127.0.0.1","parentPort":47911,"childPort":80,"bogus":1}"#,
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.body,
            br#"{"id":1,"spec":{"proto":"tcp4","parentIP":"127.0.0.1","parentPort":47911,"childPort":80}}"#
        );
        let r = call(
            "POST",
            "/v1/ports",
            r#"{"proto":"tcp4","parentIP":"127.0.0.1","parentPort":47911,"childPort":81}"#,
        );
        assert_eq!(r.body, b"{\"message\":\"conflict with ID 1\"}\n");
        let r = call("DELETE", "/v1/ports/1", "");
        assert_eq!((r.status, r.content_type, r.body.len()), (200, None, 0));
    }
}
