//! Published ports: what `-p`, `usernet ports add`, `rootlessctl add-ports`, `POST /v1/ports`
//! and slirp4netns's `add_hostfwd` ask for ([`PortSpec`], in rootlesskit's JSON shape, with
//! rootlesskit's validation rules), and the [`PortManager`] interface the APIs drive: the
//! builtin port driver implements it, and so do the slirp-style forwards through the stack.
//!
//! The string form is `[HOSTIP:]HOSTPORT:[CHILDIP:]CHILDPORT[/PROTO]`, IPv6 addresses in
//! brackets; the protocol defaults to `tcp`. That accepts everything rootlesskit's
//! `HOSTIP:HOSTPORT[:CHILDIP]:CHILDPORT/PROTO` does (including an empty host IP), and also
//! the docker-style short forms `8080:80` and `127.0.0.1:8080:80`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A table of published ports, as rootlesskit's port `Manager`: what the REST API and the
/// slirp4netns API act on, whoever serves the ports.
pub trait PortManager {
    /// Publish `spec`; its id and spec as stored, or why not (the API client's message).
    fn add(&mut self, spec: PortSpec) -> Result<PortStatus, PortError>;
    /// Every published port, oldest first.
    fn list(&self) -> Vec<PortStatus>;
    /// [`PortManager::list`], or why this manager cannot say now (its stack did not answer,
    /// for a manager on another thread than the stack's).
    fn list_now(&self) -> Result<Vec<PortStatus>, crate::observe::ObserveError> {
        Ok(self.list())
    }
    /// Stop publishing port `id`.
    fn remove(&mut self, id: i64) -> Result<(), PortError>;
    /// The connections of published ports this manager relays itself (not through the
    /// stack, whose flows already show its own), for the flow table.
    fn connections(&self) -> Vec<crate::observe::FlowRow> {
        Vec::new()
    }
    /// The stack's flows and counters, where this manager can reach the stack directly (it
    /// runs on the stack's thread).
    fn observer(&mut self) -> Option<&mut dyn crate::observe::Observer> {
        None
    }
}

/// Why a port could not be published or removed: the one line an API client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortError(pub String);

impl From<String> for PortError {
    fn from(s: String) -> Self {
        PortError(s)
    }
}

/// Protocols the builtin port driver serves.
pub const PROTOS: [&str; 6] = ["tcp", "tcp4", "tcp6", "udp", "udp4", "udp6"];

/// A port spec, with rootlesskit's JSON keys, key order and `omitempty`s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proto: String,
    #[serde(rename = "parentIP", default, skip_serializing_if = "String::is_empty")]
    pub parent_ip: String,
    #[serde(rename = "parentPort", default, skip_serializing_if = "is_zero")]
    pub parent_port: i64,
    #[serde(rename = "childPort", default, skip_serializing_if = "is_zero")]
    pub child_port: i64,
    #[serde(rename = "childIP", default, skip_serializing_if = "String::is_empty")]
    pub child_ip: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A published port and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub id: i64,
    pub spec: PortSpec,
}

/// The transport of a spec's protocol and which address families its listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// "tcp"/"udp": IPv4 and IPv6 (a dual-stack socket for a wildcard address).
    Any,
    V4,
    V6,
}

impl PortSpec {
    pub fn transport(&self) -> Transport {
        if self.proto.starts_with("udp") {
            Transport::Udp
        } else {
            Transport::Tcp
        }
    }

    pub fn family(&self) -> Family {
        match self.proto.chars().last() {
            Some('4') => Family::V4,
            Some('6') => Family::V6,
            _ => Family::Any,
        }
    }

    /// The parent address, if one is given.
    pub fn parent_addr(&self) -> Option<IpAddr> {
        self.parent_ip.parse().ok()
    }

    /// Parse the string form.
    pub fn parse(s: &str) -> Result<PortSpec, PortError> {
        let bad = |why: &str| PortError(format!("invalid port spec '{s}': {why}"));
        let (addresses, proto) = match s.rsplit_once('/') {
            Some((a, p)) => (a, p.to_string()),
            None => (s, "tcp".to_string()),
        };
        let parts = split_colons(addresses).ok_or_else(|| bad("unbalanced brackets"))?;
        let (parent_ip, parent_port, child_ip, child_port) = match parts.as_slice() {
            [hp, cp] => ("", *hp, "", *cp),
            // HOSTIP:HOSTPORT:CHILDPORT, or HOSTPORT:CHILDIP:CHILDPORT when the middle part
            // is not a number and the first is.
            [hp, cip, cp] if is_number(hp) && !is_number(cip) => ("", *hp, *cip, *cp),
            [ip, hp, cp] => (*ip, *hp, "", *cp),
            [ip, hp, cip, cp] => (*ip, *hp, *cip, *cp),
            _ => {
                return Err(bad(
                    "expected [HOSTIP:]HOSTPORT:[CHILDIP:]CHILDPORT[/PROTO]",
                ));
            }
        };
        let port = |p: &str, what: &str| -> Result<i64, PortError> {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .map(i64::from)
                .ok_or_else(|| bad(&format!("{what} '{p}' is not a port number (1-65535)")))
        };
        let spec = PortSpec {
            proto,
            parent_ip: unbracket(parent_ip).to_string(),
            parent_port: port(parent_port, "host port")?,
            child_port: port(child_port, "child port")?,
            child_ip: unbracket(child_ip).to_string(),
        };
        spec.validate(&[]).map_err(|e| bad(&e.0))?;
        Ok(spec)
    }

    /// Parse the string form exactly as rootlesskit's clients do (`portutil.ParsePortSpec`,
    /// behind `rootlessctl add-ports` and `rootlesskit -p`):
    /// `PARENTIP:PARENTPORT[:CHILDIP]:CHILDPORT/PROTO`, the parent IP possibly empty but
    /// present, the protocol required; with its error texts (whose port labels rootlesskit
    /// swaps). Ranges are left to the server's [`validate`](Self::validate), as there.
    pub fn parse_rootlesskit(s: &str) -> Result<PortSpec, PortError> {
        let unexpected = |what: &str| PortError(format!("unexpected {what}PortSpec string: {s:?}"));
        let (addresses, proto) = s
            .rsplit_once('/')
            .ok_or_else(|| PortError(format!("missing proto in PortSpec string: {s:?}")))?;
        let known = ["tcp", "udp", "sctp"]
            .iter()
            .any(|p| [*p, &format!("{p}4"), &format!("{p}6")].contains(&proto));
        if !known {
            return Err(PortError(format!(
                "invalid PortSpec string: {s:?}: unknown proto: {proto:?}"
            )));
        }
        let (front, child_port) = addresses.rsplit_once(':').ok_or_else(|| unexpected(""))?;
        let parts = split_colons(front).ok_or_else(|| unexpected(""))?;
        let (parent_ip, parent_port, child_ip) = match parts.as_slice() {
            [ip] => (unbracket(ip), "", ""),
            [ip, port] => (unbracket(ip), *port, ""),
            [ip, port, child] => (unbracket(ip), *port, unbracket(child)),
            _ => return Err(unexpected("")),
        };
        for ip in [parent_ip, child_ip] {
            if !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
                return Err(unexpected("ParentIP in "));
            }
        }
        // Go's strconv.Atoi, with its words; the labels are swapped as in rootlesskit.
        let atoi = |p: &str, label: &str| {
            p.parse::<i64>().map_err(|_| {
                PortError(format!(
                    "unexpected {label} in PortSpec string: {s:?}: strconv.Atoi: parsing {p:?}: invalid syntax"
                ))
            })
        };
        Ok(PortSpec {
            proto: proto.to_string(),
            parent_ip: parent_ip.to_string(),
            parent_port: atoi(parent_port, "ChildPort")?,
            child_port: atoi(child_port, "ParentPort")?,
            child_ip: child_ip.to_string(),
        })
    }

    /// rootlesskit's checks, plus address families that cannot work. `existing` are the
    /// ports already published, for conflicts.
    pub fn validate(&self, existing: &[PortStatus]) -> Result<(), PortError> {
        if !PROTOS.contains(&self.proto.as_str()) {
            return Err(PortError(if self.proto.starts_with("sctp") {
                "unsupported port protocol sctp".to_string()
            } else {
                format!("unknown proto: {:?}", self.proto)
            }));
        }
        let parent = self.check_ip(&self.parent_ip, "ParentIP")?;
        self.check_ip(&self.child_ip, "ChildIP")?;
        for (port, what) in [
            (self.parent_port, "ParentPort"),
            (self.child_port, "ChildPort"),
        ] {
            if !(1..=65535).contains(&port) {
                return Err(PortError(format!(
                    "invalid {what}: {port} (must be 1-65535)"
                )));
            }
        }
        match (self.family(), parent) {
            (Family::V4, Some(IpAddr::V6(_))) | (Family::V6, Some(IpAddr::V4(_))) => {
                return Err(PortError(format!(
                    "{} cannot listen on {}: the address family does not match",
                    self.proto, self.parent_ip
                )));
            }
            _ => {}
        }
        if let Some(other) = existing.iter().find(|s| {
            s.spec.proto == self.proto
                && s.spec.parent_ip == self.parent_ip
                && s.spec.parent_port == self.parent_port
        }) {
            return Err(PortError(format!("conflict with ID {}", other.id)));
        }
        Ok(())
    }

    fn check_ip(&self, ip: &str, what: &str) -> Result<Option<IpAddr>, PortError> {
        if ip.is_empty() {
            return Ok(None);
        }
        ip.parse()
            .map(Some)
            .map_err(|_| PortError(format!("invalid {what}: {ip:?}")))
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = |s: &str| {
            if s.contains(':') {
                format!("[{s}]")
            } else {
                s.to_string()
            }
        };
        if !self.parent_ip.is_empty() {
            write!(f, "{}:", ip(&self.parent_ip))?;
        }
        write!(f, "{}:", self.parent_port)?;
        if !self.child_ip.is_empty() {
            write!(f, "{}:", ip(&self.child_ip))?;
        }
        write!(f, "{}/{}", self.child_port, self.proto)
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn unbracket(s: &str) -> &str {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s)
}

/// Split at colons outside brackets.
fn split_colons(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    if depth != 0 {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootlesskit_form_parses_as_rootlessctl_does() {
        let ok = |s: &str| PortSpec::parse_rootlesskit(s).unwrap();
        assert_eq!(
            ok("127.0.0.1:8080:80/tcp"),
            spec("tcp", "127.0.0.1", 8080, "", 80)
        );
        assert_eq!(ok(":8080:80/udp"), spec("udp", "", 8080, "", 80));
        assert_eq!(
            ok("[::1]:8080:[::2]:80/tcp6"),
            spec("tcp6", "::1", 8080, "::2", 80)
        );
        assert_eq!(
            ok("0.0.0.0:8080:10.0.2.100:80/udp4"),
            spec("udp4", "0.0.0.0", 8080, "10.0.2.100", 80)
        );
        let err = |s: &str| PortSpec::parse_rootlesskit(s).unwrap_err().0;
        assert_eq!(
            err("18086:80/tcp"),
            "unexpected ParentIP in PortSpec string: \"18086:80/tcp\""
        );
        assert_eq!(
            err("127.0.0.1:18087:80"),
            "missing proto in PortSpec string: \"127.0.0.1:18087:80\""
        );
        assert_eq!(
            err("127.0.0.1:18087:80/foo"),
            "invalid PortSpec string: \"127.0.0.1:18087:80/foo\": unknown proto: \"foo\""
        );
        assert_eq!(
            err("127.0.0.1:x:80/tcp"),
            "unexpected ChildPort in PortSpec string: \"127.0.0.1:x:80/tcp\": strconv.Atoi: parsing \"x\": invalid syntax"
        );
    }

    fn spec(proto: &str, pip: &str, pport: i64, cip: &str, cport: i64) -> PortSpec {
        PortSpec {
            proto: proto.into(),
            parent_ip: pip.into(),
            parent_port: pport,
            child_port: cport,
            child_ip: cip.into(),
        }
    }

    #[test]
    fn short_docker_style_and_rootlesskit_forms_parse() {
        assert_eq!(
            PortSpec::parse("8080:80").unwrap(),
            spec("tcp", "", 8080, "", 80)
        );
        assert_eq!(
            PortSpec::parse("127.0.0.1:8080:80").unwrap(),
            spec("tcp", "127.0.0.1", 8080, "", 80)
        );
        assert_eq!(
            PortSpec::parse(":8080:80/udp").unwrap(),
            spec("udp", "", 8080, "", 80)
        );
        assert_eq!(
            PortSpec::parse("[::1]:8080:[::2]:80/udp6").unwrap(),
            spec("udp6", "::1", 8080, "::2", 80)
        );
        assert_eq!(
            PortSpec::parse("0.0.0.0:8080:[::1]:80/tcp4").unwrap(),
            spec("tcp4", "0.0.0.0", 8080, "::1", 80)
        );
        assert_eq!(
            PortSpec::parse("8080:10.0.2.100:80").unwrap(),
            spec("tcp", "", 8080, "10.0.2.100", 80)
        );
    }

    #[test]
    fn a_spec_without_host_address_prints_without_a_stray_colon() {
        assert_eq!(
            PortSpec::parse(":18090:81").unwrap().to_string(),
            "18090:81/tcp"
        );
        assert_eq!(
            PortSpec::parse("127.0.0.1:18090:81/udp")
                .unwrap()
                .to_string(),
            "127.0.0.1:18090:81/udp"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (s, want) in [
            ("80", "expected"),
            ("1:2:3:4:5", "expected"),
            ("0:80", "host port"),
            ("8080:99999", "child port"),
            ("8080:80/sctp", "unsupported"),
            ("8080:80/foo", "unknown proto"),
            ("localhost:8080:80", "invalid ParentIP"),
            ("[::1:8080:80", "brackets"),
            ("[::1]:8080:80/tcp4", "family"),
            ("18090:999.0.0.1:80", "invalid ChildIP"),
        ] {
            let e = PortSpec::parse(s).unwrap_err().0;
            assert!(e.contains(want), "{s}: {e}");
        }
    }

    #[test]
    fn conflicts_are_same_proto_address_and_port() {
        let existing = [PortStatus {
            id: 3,
            spec: spec("tcp", "127.0.0.1", 8080, "", 80),
        }];
        assert_eq!(
            spec("tcp", "127.0.0.1", 8080, "", 81)
                .validate(&existing)
                .unwrap_err()
                .0,
            "conflict with ID 3"
        );
        assert!(
            spec("tcp4", "127.0.0.1", 8080, "", 80)
                .validate(&existing)
                .is_ok()
        );
        assert!(
            spec("udp", "127.0.0.1", 8080, "", 80)
                .validate(&existing)
                .is_ok()
        );
    }

    #[test]
    fn json_shape_matches_rootlesskit() {
        let s = spec("tcp", "127.0.0.1", 18080, "", 80);
        let status = PortStatus { id: 1, spec: s };
        assert_eq!(
            serde_json::to_string(&status).unwrap(),
            r#"{"id":1,"spec":{"proto":"tcp","parentIP":"127.0.0.1","parentPort":18080,"childPort":80}}"#
        );
        let parsed: PortSpec =
            serde_json::from_str(r#"{"proto":"udp","parentPort":1,"childPort":2,"bogus":1}"#)
                .unwrap();
        assert_eq!(parsed, spec("udp", "", 1, "", 2));
        assert_eq!(
            PortSpec::parse("[::1]:1:[::2]:2/tcp6").unwrap().to_string(),
            "[::1]:1:[::2]:2/tcp6"
        );
    }
}
