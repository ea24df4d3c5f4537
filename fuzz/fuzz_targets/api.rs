//! `api`: the two control APIs' request handling.
//!
//! The first byte of the input picks the API (even: REST, odd: slirp4netns) and the rest is
//! what a client sends.
//!
//! - REST (rootlesskit's, on `api.sock`): [`http::parse`](usernet::api::http::parse) over the
//!   bytes, request after request as a pipelining client would send them (a complete request
//!   must consume at least one byte and never more than it was given), then the same bytes
//!   through a real [`Server`](usernet::api::Server) speaking
//!   [`RestApi`](usernet::api::RestApi) on a Unix socket in a temporary directory, with a fresh
//!   port driver [`Forwarder`](usernet::portdriver::parent::Forwarder) behind it (a
//!   `POST /v1/ports` really listens, inside the fuzz namespace). What comes back must be HTTP
//!   responses with the length they announce.
//! - slirp4netns (`--api-socket`): [`respond`](usernet::api::slirp::respond) against an
//!   in-memory port table holding a few entries, on every prefix the client might have sent
//!   so far and on the whole with EOF. Whatever the answer, it must be JSON.
//!
//! Runs only inside a throwaway network namespace (see `fuzz/run.sh`).

#![no_main]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mio::{Events, Poll};
use usernet::api::http::{self, Parsed};
use usernet::api::slirp::{Request, respond};
use usernet::api::{self, Info, Limits, NetworkDriverInfo, PortDriverInfo, RestApi, Server};
use usernet::portdriver::parent::{Forwarder, Ports};
use usernet::ports::{PortError, PortManager, PortSpec, PortStatus};
use usernet::slab::Id;
use usernet_fuzz::world;

/// A small body limit, so inputs of libFuzzer's sizes reach it.
const MAX_BODY: usize = 2048;

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// The slirp4netns API's forward table, in memory.
#[derive(Default)]
struct Table {
    next: i64,
    entries: BTreeMap<i64, PortSpec>,
}

impl PortManager for Table {
    fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
        if self.entries.values().any(|s| {
            s.parent_ip == spec.parent_ip
                && s.parent_port == spec.parent_port
                && s.proto == spec.proto
        }) {
            return Err(PortError("address in use".into()));
        }
        self.next += 1;
        self.entries.insert(self.next, spec.clone());
        Ok(PortStatus {
            id: self.next,
            spec,
        })
    }

    fn remove(&mut self, id: i64) -> Result<(), PortError> {
        self.entries
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| PortError(format!("unknown id: {id}")))
    }

    fn list(&self) -> Vec<PortStatus> {
        self.entries
            .iter()
            .map(|(id, spec)| PortStatus {
                id: *id,
                spec: spec.clone(),
            })
            .collect()
    }
}

fn slirp(data: &[u8]) {
    let mut table = Table::default();
    for (port, guest) in [(8080, 80), (5353, 53)] {
        let spec = PortSpec {
            proto: "tcp".into(),
            parent_ip: Ipv4Addr::UNSPECIFIED.to_string(),
            parent_port: port,
            child_ip: GUEST.to_string(),
            child_port: guest,
        };
        table.add(spec).expect("seed entry");
    }
    let cuts = [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)];
    for cut in cuts {
        if let Request::Answer(a) = respond(&data[..cut], false, &mut table, GUEST) {
            check_json(&a);
        }
    }
    match respond(data, true, &mut table, GUEST) {
        Request::Answer(a) => check_json(&a),
        Request::Incomplete => panic!("no answer at EOF"),
    }
}

fn check_json(answer: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(answer) {
        panic!(
            "answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(answer)
        );
    }
}

struct Rest {
    poll: Poll,
    server: Server<RestApi>,
    path: PathBuf,
    bp_sock: PathBuf,
}

fn rest_server() -> &'static std::sync::Mutex<Rest> {
    static SERVER: OnceLock<std::sync::Mutex<Rest>> = OnceLock::new();
    SERVER.get_or_init(|| {
        world::enter();
        let dir = std::env::temp_dir().join(format!("usernet-fuzz-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("api.sock");
        let poll = Poll::new().expect("epoll");
        let info = Info {
            api_version: api::API_VERSION.into(),
            version: "fuzz".into(),
            state_dir: dir.display().to_string(),
            child_pid: 1,
            network_driver: Some(NetworkDriverInfo {
                driver: "usernet".into(),
                dns: vec!["10.0.2.3".into()],
                child_ip: "10.0.2.100".into(),
            }),
            port_driver: Some(PortDriverInfo::builtin()),
        };
        let limits = Limits {
            max_body: MAX_BODY,
            ..Limits::default()
        };
        let protocol = RestApi::new(info, limits);
        let settings = protocol.settings();
        let mut server = Server::bind(&path, protocol, settings).expect("bind api.sock");
        server.register(poll.registry()).expect("watch api.sock");
        std::sync::Mutex::new(Rest {
            poll,
            server,
            path,
            bp_sock: dir.join(".bp.sock"),
        })
    })
}

fn rest(data: &[u8]) {
    // The parser alone, request after request.
    let mut buf = data;
    for _ in 0..64 {
        match http::parse(buf, MAX_BODY) {
            Parsed::Complete(request, used) => {
                assert!(
                    used > 0 && used <= buf.len(),
                    "used {used} of {}",
                    buf.len()
                );
                assert!(request.body.len() <= MAX_BODY);
                buf = &buf[used..];
            }
            Parsed::Partial | Parsed::Invalid(..) => break,
        }
    }

    // The whole server, over a socket.
    let mut guard = rest_server().lock().unwrap_or_else(|e| e.into_inner());
    let rest = &mut *guard;
    let mut forwarder = Forwarder::new(rest.bp_sock.clone(), Duration::from_secs(60));
    let Ok(mut client) = UnixStream::connect(&rest.path) else {
        return;
    };
    let _ = client.write_all(data);
    let _ = client.shutdown(std::net::Shutdown::Write);
    client.set_nonblocking(true).expect("nonblocking");
    let mut events = Events::with_capacity(16);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..200 {
        let _ = rest.poll.poll(&mut events, Some(Duration::from_millis(10)));
        for event in events.iter() {
            if rest.server.is_listener(event.token()) {
                rest.server.accept(rest.poll.registry());
            } else {
                let (_, id): (u8, Id) = Id::from_token(event.token());
                let registry = rest.poll.registry();
                let mut ports = Ports {
                    forwarder: &mut forwarder,
                    registry,
                };
                rest.server.on_event(id, registry, Some(&mut ports));
            }
        }
        let mut closed = false;
        loop {
            match client.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        if closed {
            break;
        }
    }
    drop(client);
    // Let the server see the hang-up and close its end.
    let _ = rest.poll.poll(&mut events, Some(Duration::ZERO));
    for event in events.iter() {
        if !rest.server.is_listener(event.token()) {
            let (_, id) = Id::from_token(event.token());
            let registry = rest.poll.registry();
            let mut ports = Ports {
                forwarder: &mut forwarder,
                registry,
            };
            rest.server.on_event(id, registry, Some(&mut ports));
        }
    }
    assert!(
        !rest.server.has_connections(),
        "a finished client's connection stayed open"
    );
    check_responses(&answer);
}

/// `answer` must be a sequence of whole HTTP responses.
fn check_responses(mut answer: &[u8]) {
    while !answer.is_empty() {
        let mut headers = [httparse_header(); 16];
        let mut response = HttpResponse::new(&mut headers);
        let head = match response.parse(answer) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(answer)
            ),
        };
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .expect("every response has a Content-Length");
        assert!(head + length <= answer.len(), "a response is cut short");
        answer = &answer[head + length..];
    }
}

use httparse::Response as HttpResponse;

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

fuzz_target!(
    init: {
        world::enter();
        rest_server();
    },
    |data: &[u8]| {
        match data.split_first() {
            Some((kind, rest_bytes)) if kind & 1 == 1 => slirp(rest_bytes),
            Some((_, rest_bytes)) => rest(rest_bytes),
            None => {}
        }
    }
);
