//! rootlesskit's REST API on `STATE_DIR/api.sock`: `GET /v1/info`, `GET /v1/ports`,
//! `POST /v1/ports`, `DELETE /v1/ports/{id}`, with rootlesskit's JSON shapes, status codes and
//! quirks (an empty port list is `null`; error bodies are `{"message":...}` followed by a
//! newline and typed `text/plain`), so the real `rootlessctl` and Docker's client work.
//!
//! usernet's extensions: `GET /v1/flows` (the live flow table, see
//! [`crate::observe::report::FlowTable`]) and `GET /v1/stats` (the counters), asked of the
//! stack through a [`Probe`] (the API runs on another thread than the stack), with the
//! published-port connections the port driver relays itself added to the flows.
//!
//! This module is the protocol ([`RestApi`], a [`Protocol`] of the shared
//! [server](super::server)): HTTP/1.1 with keep-alive, bounded requests ([`Limits`]), routed
//! to `GET /v1/info` and to a [`PortManager`] (the port driver, or a fake in tests). The
//! socket, its permissions, the peer check and the connection bounds are the server's.

use std::time::Duration;

use mio::Token;
use serde::{Deserialize, Serialize};

use super::http::{self, Parsed, Response};
use super::server::{Next, Protocol, Refusal, Settings, Timeout};
use crate::observe::probe::Probe;
use crate::observe::{ObserveError, Observer};
use crate::ports::{PROTOS, PortManager, PortSpec};

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
    /// Clients must give a child address other than loopback (`childIP`), as rootlesskit's
    /// slirp4netns port driver says.
    #[serde(
        rename = "disallowLoopbackChildIP",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disallow_loopback_child_ip: bool,
}

impl PortDriverInfo {
    pub fn builtin() -> Self {
        PortDriverInfo {
            driver: "builtin".into(),
            protos: PROTOS.iter().map(|p| p.to_string()).collect(),
            disallow_loopback_child_ip: false,
        }
    }

    /// A driver that forwards through the stack (rootlesskit's slirp4netns port driver, or
    /// usernet's `stack`), reported as `driver`: IPv4 only, to the namespace's address.
    pub fn stack(driver: &str) -> Self {
        PortDriverInfo {
            driver: driver.into(),
            protos: ["tcp", "tcp4", "udp", "udp4"].map(String::from).to_vec(),
            disallow_loopback_child_ip: true,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
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

/// rootlesskit's REST API, as a [`Protocol`].
pub struct RestApi {
    info: Info,
    limits: Limits,
    /// Where flows and counters come from (none without a stack).
    probe: Option<Probe>,
}

impl RestApi {
    pub fn new(info: Info, limits: Limits) -> Self {
        RestApi {
            info,
            limits,
            probe: None,
        }
    }

    /// Answer `/v1/flows` and `/v1/stats` from the stack `probe` reaches.
    pub fn with_probe(mut self, probe: Option<Probe>) -> Self {
        self.probe = probe;
        self
    }

    /// Where the API sits on the control thread's poller, and its bounds.
    pub fn settings(&self) -> Settings {
        Settings {
            listener: LISTENER_TOKEN,
            connection_kind: KIND_CONNECTION,
            max_connections: self.limits.max_connections,
            timeout: Timeout::Idle(IDLE_TIMEOUT),
        }
    }
}

impl Protocol for RestApi {
    fn max_input(&self) -> usize {
        http::MAX_HEAD + self.limits.max_body
    }

    fn refusal(&self, why: Refusal) -> Vec<u8> {
        let (status, message) = match why {
            Refusal::OtherUser => (
                403,
                "permission denied: the API socket belongs to another user",
            ),
            Refusal::Busy => (503, "too many API connections"),
        };
        error(status, message).encode(true)
    }

    /// Answer every complete request, in order (a pipelining client's too).
    fn serve(
        &mut self,
        input: &mut Vec<u8>,
        _eof: bool,
        output: &mut Vec<u8>,
        mut ports: Option<&mut dyn PortManager>,
    ) -> Next {
        loop {
            match http::parse(input, self.limits.max_body) {
                Parsed::Partial => return Next::Read,
                Parsed::Complete(request, used) => {
                    input.drain(..used);
                    let response = handle(
                        &request,
                        &self.info,
                        self.probe.as_mut().map(|p| p as &mut dyn Observer),
                        ports.as_mut().map(|p| &mut **p as &mut dyn PortManager),
                    );
                    output.extend_from_slice(&response.encode(request.close));
                    if request.close {
                        return Next::Close;
                    }
                }
                Parsed::Invalid(status, why) => {
                    output.extend_from_slice(&error(status, why).encode(true));
                    return Next::Close;
                }
            }
        }
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

/// The stack could not be asked: 404 without one, 503 when it did not answer in time.
fn observe_error(e: &ObserveError) -> Response {
    match e {
        ObserveError::NoStack => error(404, &e.to_string()),
        ObserveError::Busy => error(503, &e.to_string()),
    }
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
    observer: Option<&mut dyn Observer>,
    ports: Option<&mut dyn PortManager>,
) -> Response {
    const NO_DRIVER: &str = "no PortDriver is available";
    let method = request.method.as_str();
    match request.path.as_str() {
        "/v1/info" => match method {
            "GET" => json(200, info),
            _ => Response::new(405, None, Vec::new()),
        },
        "/v1/flows" => match method {
            "GET" => {
                let mut table = match observer
                    .ok_or(ObserveError::NoStack)
                    .and_then(|o| o.flows())
                {
                    Ok(t) => t,
                    // Published ports work without a stack (--net host has none to relay).
                    Err(ObserveError::NoStack) => Default::default(),
                    Err(e) => return observe_error(&e),
                };
                if let Some(ports) = &ports {
                    for row in ports.connections() {
                        table.push(row);
                    }
                }
                json(200, &table)
            }
            _ => Response::new(405, None, Vec::new()),
        },
        "/v1/stats" => match (method, observer) {
            ("GET", Some(o)) => match o.stats() {
                Ok(stats) => json(200, &stats),
                Err(e) => observe_error(&e),
            },
            ("GET", None) => observe_error(&ObserveError::NoStack),
            _ => Response::new(405, None, Vec::new()),
        },
        "/v1/ports" => match (method, ports) {
            ("GET", Some(ports)) => {
                let list = match ports.list_now() {
                    Ok(list) => list,
                    Err(e) => return observe_error(&e),
                };
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
                match ports.add(spec) {
                    Ok(status) => json(201, &status),
                    Err(e) => error(400, &e.0),
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
                    match ports.remove(id) {
                        Ok(()) => Response::new(200, None, Vec::new()),
                        Err(e) => error(400, &e.0),
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
    use crate::ports::{PortError, PortStatus};

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

    fn route(
        request: &http::Request,
        info: &Info,
        ports: Option<&mut dyn PortManager>,
    ) -> Response {
        handle(request, info, None, ports)
    }

    fn request(method: &str, path: &str, body: &str) -> http::Request {
        http::Request {
            method: method.into(),
            path: path.into(),
            body: body.into(),
            close: false,
        }
    }

    /// A port table that validates as the port driver does, and publishes nothing.
    #[derive(Default)]
    struct FakePorts {
        next: i64,
        ports: Vec<PortStatus>,
    }

    impl PortManager for FakePorts {
        fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
            spec.validate(&self.ports)?;
            self.next += 1;
            let status = PortStatus {
                id: self.next,
                spec,
            };
            self.ports.push(status.clone());
            Ok(status)
        }

        fn list(&self) -> Vec<PortStatus> {
            self.ports.clone()
        }

        fn remove(&mut self, id: i64) -> Result<(), PortError> {
            let before = self.ports.len();
            self.ports.retain(|p| p.id != id);
            if self.ports.len() == before {
                return Err(PortError(format!("unknown id: {id}")));
            }
            Ok(())
        }
    }

    #[test]
    fn info_has_rootlesskits_shape() {
        let r = route(&request("GET", "/v1/info", ""), &info(), None);
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"apiVersion":"1.1.1","version":"0.1.0","stateDir":"/tmp/s","childPID":42,"networkDriver":{"driver":"usernet","dns":["10.0.2.3"],"childIP":"10.0.2.100"},"portDriver":{"driver":"builtin","protos":["tcp","tcp4","tcp6","udp","udp4","udp6"]}}"#
        );
    }

    #[test]
    fn ports_without_a_driver_wrong_methods_and_unknown_paths() {
        let r = route(&request("GET", "/v1/ports", ""), &info(), None);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (400, &b"{\"message\":\"no PortDriver is available\"}\n"[..])
        );
        assert_eq!(
            route(&request("PUT", "/v1/ports", ""), &info(), None).status,
            405
        );
        assert_eq!(
            route(&request("GET", "/v1/ports/1", ""), &info(), None).status,
            405
        );
        assert_eq!(
            route(&request("HEAD", "/v1/info", ""), &info(), None).status,
            405
        );
        for path in ["/v1/nonexistent", "/v2/info", "/v1/info/", "/v1/ports/1/x"] {
            let r = route(&request("GET", path, ""), &info(), None);
            assert_eq!(
                (r.status, r.body.as_slice()),
                (404, &b"404 page not found\n"[..]),
                "{path}"
            );
        }
    }

    #[test]
    fn port_requests_validate_and_report_like_rootlesskit() {
        let mut ports = FakePorts::default();
        let mut call =
            |m: &str, p: &str, b: &str| route(&request(m, p, b), &info(), Some(&mut ports));
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
        // A port, as the port manager stores it, then its removal.
        let r = call(
            "POST",
            "/v1/ports",
            r#"{"proto":"tcp4","parentIP":"127.0.0.1","parentPort":8080,"childPort":80,"bogus":1}"#,
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.body,
            br#"{"id":1,"spec":{"proto":"tcp4","parentIP":"127.0.0.1","parentPort":8080,"childPort":80}}"#
        );
        let r = call(
            "POST",
            "/v1/ports",
            r#"{"proto":"tcp4","parentIP":"127.0.0.1","parentPort":8080,"childPort":81}"#,
        );
        assert_eq!(r.body, b"{\"message\":\"conflict with ID 1\"}\n");
        let r = call("DELETE", "/v1/ports/1", "");
        assert_eq!((r.status, r.content_type, r.body.len()), (200, None, 0));
    }
}
