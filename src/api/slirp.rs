//! slirp4netns's JSON API (`--api-socket`): `add_hostfwd`, `list_hostfwd`, `remove_hostfwd`,
//! with its exact request semantics and response bytes, so podman and rootlesskit drive
//! usernet unchanged.
//!
//! This module is the protocol only: [`respond`] turns one request's bytes into the response's
//! bytes against a [`PortManager`] (the stack's forward table under `usernet attach`), with no
//! I/O, so it is unit-tested and fuzzed directly; [`SlirpApi`] serves it through the shared
//! [server](super::server), which owns the socket and its bounds.
//!
//! slirp4netns served one connection at a time with a blocking read, so a client that
//! connected and sent nothing froze all networking. Here each connection is an ordinary
//! non-blocking socket with a deadline: a silent client holds only its own slot, at most
//! [`DEFAULT_MAX_CONNECTIONS`] (or `--max-api-connections`) exist at once, and a request is at
//! most [`MAX_REQUEST`] bytes.
//!
//! What is kept from slirp4netns and what is fixed, deliberately:
//! - kept: one request per connection; the first JSON value counts and trailing bytes are
//!   ignored; a duplicate key is a parse error; numbers are truncated like C's `(int)` cast;
//!   a missing `host_addr` means 0.0.0.0 and a missing `guest_addr` the guest's address;
//!   `list_hostfwd` answers `{"entries":[...]}` without the `return` wrapper its manual shows
//!   (the released binary never had it, and clients read it that way); error texts verbatim.
//! - added (usernet's extensions, which slirp4netns answers with "unknown execute"):
//!   `list_flows` answers `{"return":FLOWS}` and `get_stats` `{"return":STATS}`, the bodies
//!   of the REST API's `GET /v1/flows` and `GET /v1/stats` (`usernet flows --socket PATH`
//!   and `usernet stats --socket PATH` speak them);
//! - fixed: a missing or non-string `proto` is `bad arguments.proto`, not a crash; ports
//!   outside 1..65535 are rejected instead of wrapping; a request is answered once it is
//!   complete even if it came in several writes; a silent client never stalls anything.

use std::net::Ipv4Addr;
use std::time::Duration;

use mio::Token;
use serde::Serialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::server::{Next, Protocol, Refusal, Settings, Timeout};
use crate::observe::{ObserveError, Observer};
use crate::ports::{PortManager, PortSpec};

/// A request of this many bytes or more is "too large" (slirp4netns reads 4096 at most).
pub const MAX_REQUEST: usize = 4096;
/// Connections at once, unless `--max-api-connections` says otherwise; more are answered
/// with an error and closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request and read the answer.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// slirp4netns's API, as a [`Protocol`]: one request per connection.
pub struct SlirpApi {
    /// The address `guest_addr` defaults to.
    guest: Ipv4Addr,
}

impl SlirpApi {
    pub fn new(guest: Ipv4Addr) -> Self {
        SlirpApi { guest }
    }

    /// Where the API sits on its poller (`listener`, `connection_kind`), and its bounds.
    pub fn settings(listener: Token, connection_kind: u8, max_connections: usize) -> Settings {
        Settings {
            listener,
            connection_kind,
            max_connections,
            timeout: Timeout::Total(DEADLINE),
        }
    }
}

impl Protocol for SlirpApi {
    fn max_input(&self) -> usize {
        MAX_REQUEST
    }

    fn refusal(&self, why: Refusal) -> Vec<u8> {
        error(match why {
            Refusal::OtherUser => "permission denied: the API socket belongs to another user",
            Refusal::Busy => "busy: too many API connections",
        })
    }

    /// Once the request is whole, its answer; then the server ends the connection.
    fn serve(
        &mut self,
        input: &mut Vec<u8>,
        eof: bool,
        output: &mut Vec<u8>,
        ports: Option<&mut dyn PortManager>,
    ) -> Next {
        log::debug!("api request: {}", String::from_utf8_lossy(input).trim_end());
        let mut none = NoPorts;
        let table: &mut dyn PortManager = match ports {
            Some(p) => p,
            None => &mut none,
        };
        match respond(input, eof, table, self.guest) {
            Request::Incomplete => Next::Read,
            Request::Answer(answer) => {
                *output = answer;
                Next::Finish
            }
        }
    }
}

/// The table when there is none: nothing listed, nothing added.
struct NoPorts;

impl PortManager for NoPorts {
    fn add(&mut self, _: PortSpec) -> Result<crate::ports::PortStatus, crate::ports::PortError> {
        Err(crate::ports::PortError("no forward table".into()))
    }

    fn list(&self) -> Vec<crate::ports::PortStatus> {
        Vec::new()
    }

    fn remove(&mut self, id: i64) -> Result<(), crate::ports::PortError> {
        Err(crate::ports::PortError(format!("unknown id: {id}")))
    }
}

/// What a buffer received so far amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not a whole JSON value yet: wait for more (or for EOF).
    Incomplete,
    /// The response to write.
    Answer(Vec<u8>),
}

/// Look at what a client sent so far; `eof` says it will send no more.
pub fn respond(buf: &[u8], eof: bool, table: &mut dyn PortManager, guest: Ipv4Addr) -> Request {
    match parse(buf) {
        Parsed::Value(v) => Request::Answer(execute(&v, table, guest)),
        Parsed::Incomplete if buf.len() >= MAX_REQUEST => {
            Request::Answer(error("bad request: too large message"))
        }
        Parsed::Incomplete if !eof => Request::Incomplete,
        Parsed::Incomplete | Parsed::Invalid => {
            Request::Answer(error("bad request: cannot parse JSON"))
        }
    }
}

enum Parsed {
    Value(Value),
    Incomplete,
    Invalid,
}

/// The first JSON value in `buf` (after a BOM and whitespace), with duplicate keys refused.
fn parse(buf: &[u8]) -> Parsed {
    let buf = &buf[..buf.len().min(MAX_REQUEST)];
    let buf = buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(buf);
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Strict>();
    match stream.next() {
        Some(Ok(Strict(v))) => Parsed::Value(v),
        Some(Err(e)) if e.is_eof() => Parsed::Incomplete,
        None => Parsed::Incomplete,
        Some(Err(_)) => Parsed::Invalid,
    }
}

fn execute(v: &Value, table: &mut dyn PortManager, guest: Ipv4Addr) -> Vec<u8> {
    let Value::Object(root) = v else {
        return error("bad request: json_object() failed");
    };
    let Some(Value::String(command)) = root.get("execute") else {
        return error("bad request: no execute found");
    };
    let args = match root.get("arguments") {
        Some(Value::Object(a)) => Some(a),
        _ => None,
    };
    match command.as_str() {
        "add_hostfwd" => add(args, table, guest),
        "list_hostfwd" => list(table),
        "remove_hostfwd" => remove(args, table),
        "list_flows" => observe(table, |o| o.flows().map(|t| json(&Return { r#return: t }))),
        "get_stats" => observe(table, |o| o.stats().map(|s| json(&Return { r#return: s }))),
        _ => error("bad request: unknown execute"),
    }
}

fn add(args: Option<&Map<String, Value>>, table: &mut dyn PortManager, guest: Ipv4Addr) -> Vec<u8> {
    let bad = |what: &str| error(&format!("bad request: add_hostfwd: bad arguments.{what}"));
    let get = |key: &str| args.and_then(|a| a.get(key));
    let proto = match get("proto") {
        Some(Value::String(p)) if p == "tcp" || p == "udp" => p.as_str(),
        _ => return bad("proto"),
    };
    let host_addr = match address(get("host_addr")) {
        Ok(a) => a.unwrap_or(Ipv4Addr::UNSPECIFIED),
        Err(()) => return bad("host_addr"),
    };
    let Some(host_port) = port(get("host_port")) else {
        return bad("host_port");
    };
    let guest_addr = match address(get("guest_addr")) {
        Ok(Some(a)) if !a.is_unspecified() => a,
        Ok(_) => guest,
        Err(()) => return bad("guest_addr"),
    };
    if guest_addr.is_loopback() || guest_addr.is_multicast() || guest_addr.is_broadcast() {
        return bad("guest_addr");
    }
    let Some(guest_port) = port(get("guest_port")) else {
        return bad("guest_port");
    };
    let spec = PortSpec {
        proto: proto.into(),
        parent_ip: host_addr.to_string(),
        parent_port: host_port.into(),
        child_ip: guest_addr.to_string(),
        child_port: guest_port.into(),
    };
    match table.add(spec) {
        Ok(status) => json(&serde_json::json!({ "return": { "id": status.id } })),
        Err(why) => {
            log::warn!(
                "add_hostfwd {proto} {host_addr}:{host_port} -> {guest_addr}:{guest_port}: {why}"
            );
            error("bad request: add_hostfwd: slirp_add_hostfwd failed")
        }
    }
}

#[derive(Serialize)]
struct Entry {
    id: i64,
    proto: String,
    host_addr: String,
    host_port: i64,
    guest_addr: String,
    guest_port: i64,
}

#[derive(Serialize)]
struct Entries {
    entries: Vec<Entry>,
}

fn list(table: &dyn PortManager) -> Vec<u8> {
    let entries = table
        .list()
        .into_iter()
        .map(|p| Entry {
            id: p.id,
            proto: p.spec.proto,
            host_addr: p.spec.parent_ip,
            host_port: p.spec.parent_port,
            guest_addr: p.spec.child_ip,
            guest_port: p.spec.child_port,
        })
        .collect();
    json(&Entries { entries })
}

#[derive(Serialize)]
struct Return<T> {
    r#return: T,
}

/// `list_flows` or `get_stats`: `ask` the stack the table reaches.
fn observe(
    table: &mut dyn PortManager,
    ask: impl FnOnce(&mut dyn Observer) -> Result<Vec<u8>, ObserveError>,
) -> Vec<u8> {
    match table.observer().ok_or(ObserveError::NoStack).and_then(ask) {
        Ok(answer) => answer,
        Err(e) => error(&format!("bad request: {e}")),
    }
}

fn remove(args: Option<&Map<String, Value>>, table: &mut dyn PortManager) -> Vec<u8> {
    let id = args.and_then(|a| a.get("id")).map_or(0, c_int);
    if id != 0 && table.remove(i64::from(id)).is_ok() {
        json(&serde_json::json!({ "return": {} }))
    } else {
        error("bad request: remove_hostfwd: bad arguments.id")
    }
}

/// An optional IPv4 address argument: absent, null, empty or not a string means "default".
fn address(v: Option<&Value>) -> Result<Option<Ipv4Addr>, ()> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => s.parse().map(Some).map_err(|_| ()),
        _ => Ok(None),
    }
}

/// A port argument: a number, truncated like C's `(int)`, in 1..=65535.
fn port(v: Option<&Value>) -> Option<u16> {
    let n = v.map_or(0, c_int);
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// A JSON value read as slirp4netns reads numbers: a double cast to `int` (truncation toward
/// zero); anything else, or a value out of `int` range, reads as 0.
fn c_int(v: &Value) -> i32 {
    match v.as_f64() {
        Some(f)
            if f.is_finite() && f > f64::from(i32::MIN) - 1.0 && f < f64::from(i32::MAX) + 1.0 =>
        {
            f.trunc() as i32
        }
        _ => 0,
    }
}

fn json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn error(desc: &str) -> Vec<u8> {
    json(&serde_json::json!({ "error": { "desc": desc } }))
}

/// A JSON value whose objects may not repeat a key (parson, slirp4netns's parser, refuses
/// them; serde_json alone would keep the last).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key}")));
            }
            let Strict(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{PortError, PortStatus};

    /// A table that records what it was asked, refusing one host port.
    #[derive(Default)]
    struct Table {
        forwards: Vec<PortStatus>,
        next: i64,
    }

    impl PortManager for Table {
        fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
            let taken =
                |s: &PortSpec| s.parent_ip == spec.parent_ip && s.parent_port == spec.parent_port;
            if spec.parent_port == 1 || self.forwards.iter().any(|p| taken(&p.spec)) {
                return Err(PortError("in use".into()));
            }
            self.next += 1;
            let status = PortStatus {
                id: self.next,
                spec,
            };
            self.forwards.push(status.clone());
            Ok(status)
        }
        fn remove(&mut self, id: i64) -> Result<(), PortError> {
            let before = self.forwards.len();
            self.forwards.retain(|p| p.id != id);
            if before == self.forwards.len() {
                return Err(PortError(format!("unknown id: {id}")));
            }
            Ok(())
        }
        fn list(&self) -> Vec<PortStatus> {
            self.forwards.clone()
        }
    }

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

    /// A table that reaches a stack with one flow and a counter set.
    struct Observed(Table);

    impl PortManager for Observed {
        fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError> {
            self.0.add(spec)
        }
        fn remove(&mut self, id: i64) -> Result<(), PortError> {
            self.0.remove(id)
        }
        fn list(&self) -> Vec<PortStatus> {
            self.0.list()
        }
        fn observer(&mut self) -> Option<&mut dyn Observer> {
            Some(self)
        }
    }

    impl Observer for Observed {
        fn flows(&mut self) -> Result<crate::observe::FlowTable, ObserveError> {
            Ok(crate::observe::FlowTable {
                flows: Vec::new(),
                omitted: 3,
            })
        }
        fn stats(&mut self) -> Result<crate::observe::Stats, ObserveError> {
            let mut stats = crate::observe::Stats::default();
            stats.dns.queries = 9;
            Ok(stats)
        }
    }

    #[test]
    fn flows_and_stats_are_usernets_extensions() {
        let mut plain = Table::default();
        assert_eq!(
            call(&mut plain, r#"{"execute":"list_flows"}"#),
            r#"{"error":{"desc":"bad request: this usernet has no network stack (--net host or none)"}}"#
        );
        let mut observed = Observed(Table::default());
        let answer = |t: &mut Observed, req: &str| match respond(req.as_bytes(), true, t, GUEST) {
            Request::Answer(a) => serde_json::from_slice::<Value>(&a).unwrap(),
            Request::Incomplete => panic!("incomplete with eof"),
        };
        let flows = answer(&mut observed, r#"{"execute":"list_flows"}"#);
        assert_eq!(flows["return"]["omitted"], 3, "{flows}");
        assert_eq!(flows["return"]["flows"], serde_json::json!([]));
        let stats = answer(
            &mut observed,
            "{\"execute\":\"get_stats\",\"arguments\":{}}\n",
        );
        assert_eq!(stats["return"]["dns"]["queries"], 9, "{stats}");
    }

    fn call(t: &mut Table, req: &str) -> String {
        match respond(req.as_bytes(), true, t, GUEST) {
            Request::Answer(a) => String::from_utf8(a).unwrap(),
            Request::Incomplete => panic!("incomplete with eof"),
        }
    }

    #[test]
    fn add_list_remove_with_slirp4netns_bytes() {
        let mut t = Table::default();
        assert_eq!(
            call(&mut t, r#"{"execute":"list_hostfwd"}"#),
            r#"{"entries":[]}"#
        );
        assert_eq!(
            call(
                &mut t,
                r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"","guest_port":80}}"#
            ),
            r#"{"return":{"id":1}}"#
        );
        // Podman's form: guest_addr "", trailing newline.
        assert_eq!(
            call(
                &mut t,
                "{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"udp\",\"host_port\":53.9,\"guest_addr\":\"10.0.2.5\",\"guest_port\":5353}}\n"
            ),
            r#"{"return":{"id":2}}"#
        );
        assert_eq!(
            call(&mut t, r#"{"execute":"list_hostfwd","arguments":{"x":1}}"#),
            r#"{"entries":[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80},{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":53,"guest_addr":"10.0.2.5","guest_port":5353}]}"#
        );
        assert_eq!(
            call(
                &mut t,
                r#"{"execute":"remove_hostfwd","arguments":{"id":1.7}}"#
            ),
            r#"{"return":{}}"#
        );
        assert_eq!(
            call(
                &mut t,
                r#"{"execute":"remove_hostfwd","arguments":{"id":1}}"#
            ),
            r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
        );
        for bad_id in [r#"{"id":"2"}"#, "{}", "3"] {
            assert_eq!(
                call(
                    &mut t,
                    &format!(r#"{{"execute":"remove_hostfwd","arguments":{bad_id}}}"#)
                ),
                r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
            );
        }
        assert_eq!(t.forwards.len(), 1);
    }

    #[test]
    fn argument_errors_are_slirp4netns_texts() {
        let mut t = Table::default();
        let add = |args: &str| format!(r#"{{"execute":"add_hostfwd","arguments":{args}}}"#);
        let cases = [
            (r#"{"host_port":1,"guest_port":1}"#, "proto"),
            (r#"{"proto":"TCP","host_port":1,"guest_port":1}"#, "proto"),
            (r#"{"proto":5,"host_port":1,"guest_port":1}"#, "proto"),
            (
                r#"{"proto":"tcp","host_addr":"1.2.3","host_port":1,"guest_port":1}"#,
                "host_addr",
            ),
            (
                r#"{"proto":"tcp","host_addr":"::1","host_port":1,"guest_port":1}"#,
                "host_addr",
            ),
            (r#"{"proto":"tcp","guest_port":1}"#, "host_port"),
            (
                r#"{"proto":"tcp","host_port":"80","guest_port":1}"#,
                "host_port",
            ),
            (
                r#"{"proto":"tcp","host_port":70000,"guest_port":1}"#,
                "host_port",
            ),
            (
                r#"{"proto":"tcp","host_port":-1,"guest_port":1}"#,
                "host_port",
            ),
            (
                r#"{"proto":"tcp","host_port":0.5,"guest_port":1}"#,
                "host_port",
            ),
            (
                r#"{"proto":"tcp","host_port":1e300,"guest_port":1}"#,
                "host_port",
            ),
            (
                r#"{"proto":"tcp","host_port":2,"guest_addr":"x","guest_port":1}"#,
                "guest_addr",
            ),
            (
                r#"{"proto":"tcp","host_port":2,"guest_addr":"127.0.0.1","guest_port":1}"#,
                "guest_addr",
            ),
            (r#"{"proto":"tcp","host_port":2}"#, "guest_port"),
        ];
        for (args, field) in cases {
            assert_eq!(
                call(&mut t, &add(args)),
                format!(
                    r#"{{"error":{{"desc":"bad request: add_hostfwd: bad arguments.{field}"}}}}"#
                ),
                "{args}"
            );
        }
        assert_eq!(
            call(&mut t, r#"{"execute":"add_hostfwd"}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#
        );
        assert_eq!(
            call(
                &mut t,
                &add(r#"{"proto":"tcp","host_port":1,"guest_port":1}"#)
            ),
            r#"{"error":{"desc":"bad request: add_hostfwd: slirp_add_hostfwd failed"}}"#
        );
        assert!(t.forwards.is_empty());
    }

    #[test]
    fn malformed_requests() {
        let mut t = Table::default();
        let err = |d: &str| format!(r#"{{"error":{{"desc":"bad request: {d}"}}}}"#);
        assert_eq!(call(&mut t, "badjson"), err("cannot parse JSON"));
        assert_eq!(call(&mut t, ""), err("cannot parse JSON"));
        assert_eq!(call(&mut t, r#"{"execute":"#), err("cannot parse JSON"));
        assert_eq!(
            call(&mut t, r#"{"execute":"list_hostfwd","execute":"x"}"#),
            err("cannot parse JSON")
        );
        assert_eq!(call(&mut t, "[1,2]"), err("json_object() failed"));
        assert_eq!(
            call(&mut t, r#"{"unexpectedjson": 42}"#),
            err("no execute found")
        );
        assert_eq!(call(&mut t, r#"{"execute": 5}"#), err("no execute found"));
        assert_eq!(
            call(&mut t, r#"{"execute":"nope"}"#),
            err("unknown execute")
        );
        // The first value counts; what follows is ignored. A BOM is skipped.
        assert_eq!(
            call(&mut t, r#"{"execute":"list_hostfwd"}garbage"#),
            r#"{"entries":[]}"#
        );
        assert_eq!(
            call(
                &mut t,
                "\u{feff} {\"execute\":\"list_hostfwd\"}{\"execute\":\"bad\"}"
            ),
            r#"{"entries":[]}"#
        );
    }

    #[test]
    fn partial_requests_wait_and_oversized_ones_are_refused() {
        let mut t = Table::default();
        assert_eq!(
            respond(br#"{"execute":"#, false, &mut t, GUEST),
            Request::Incomplete
        );
        assert_eq!(respond(b"", false, &mut t, GUEST), Request::Incomplete);
        let big = format!(
            r#"{{"execute":"list_hostfwd","pad":"{}"}}"#,
            "x".repeat(MAX_REQUEST)
        );
        assert_eq!(
            respond(big.as_bytes(), false, &mut t, GUEST),
            Request::Answer(err_bytes("bad request: too large message"))
        );
        let deep = "[".repeat(100_000);
        assert!(matches!(
            respond(deep.as_bytes(), true, &mut t, GUEST),
            Request::Answer(_)
        ));
    }

    fn err_bytes(d: &str) -> Vec<u8> {
        error(d)
    }
}
