//! The `.bp.sock` wire protocol of rootlesskit's builtin port driver, shared by both ends.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of JSON (at most
//! 64 KiB, never empty). A request carries Go's field names (`Type`, `Proto`, `IP`, `Port`,
//! `ParentIP`, `HostGatewayIP`, `SourceIP`, `SourcePort`); key matching is case-insensitive
//! and unknown keys are ignored, as Go's decoder does. A successful `connect` is answered
//! with the five bytes `dummy` and the connected socket as `SCM_RIGHTS`; a failure with the
//! frame `{"Error":"..."}`; `init` with the frame `null`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 16;
/// The payload that travels with a passed fd.
pub const FD_PAYLOAD: &[u8] = b"dummy";

/// A request to the child.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(rename = "Type", alias = "type", default)]
    pub kind: String,
    #[serde(rename = "Proto", alias = "proto", default)]
    pub proto: String,
    #[serde(rename = "IP", alias = "ip", alias = "Ip", default)]
    pub ip: String,
    #[serde(rename = "Port", alias = "port", default)]
    pub port: i64,
    #[serde(rename = "ParentIP", alias = "parentIP", alias = "parentip", default)]
    pub parent_ip: String,
    #[serde(
        rename = "HostGatewayIP",
        alias = "hostGatewayIP",
        alias = "hostgatewayip",
        default
    )]
    pub host_gateway_ip: String,
    #[serde(
        rename = "SourceIP",
        alias = "sourceIP",
        alias = "sourceip",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub source_ip: String,
    #[serde(
        rename = "SourcePort",
        alias = "sourcePort",
        alias = "sourceport",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub source_port: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

pub const TYPE_INIT: &str = "init";
pub const TYPE_CONNECT: &str = "connect";

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(rename = "Error", alias = "error", default)]
    pub error: String,
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad message length: {0} (max: {MAX_FRAME})")]
    BadLength(usize),
}

/// The header and body of one frame, for a single `write`.
pub fn encode(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(json);
    out
}

/// Read one frame's JSON body, looping over short reads.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::BadLength(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Write `value` as one frame, in one write.
pub fn write_frame(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let json = serde_json::to_vec(value).map_err(io::Error::other)?;
    w.write_all(&encode(&json))
}

/// Parse a request body (a JSON error's text is what the error reply says).
pub fn parse_request(body: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_go_field_names_and_omit_empty_source() {
        let r = Request {
            kind: TYPE_CONNECT.into(),
            proto: "tcp".into(),
            port: 80,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Type":"connect","Proto":"tcp","IP":"","Port":80,"ParentIP":"","HostGatewayIP":""}"#
        );
    }

    #[test]
    fn rootlesskit_1_1_requests_parse() {
        let r = parse_request(br#"{"Type":"connect","Proto":"tcp","IP":"","Port":80}"#).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.proto.as_str(), r.port),
            ("connect", "tcp", 80)
        );
        let r = parse_request(br#"{"type":"init","bogus":1}"#).unwrap();
        assert_eq!(r.kind, "init");
        assert!(parse_request(b"{bad}").is_err());
    }

    #[test]
    fn frames_reject_zero_and_oversized_lengths() {
        let mut zero: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut zero),
            Err(FrameError::BadLength(0))
        ));
        let mut huge: &[u8] = &[0, 0, 2, 0];
        assert!(matches!(
            read_frame(&mut huge),
            Err(FrameError::BadLength(_))
        ));
        let mut short: &[u8] = &[5, 0, 0, 0, b'n'];
        assert!(matches!(read_frame(&mut short), Err(FrameError::Io(_))));
        let mut ok = &encode(b"null")[..];
        assert_eq!(read_frame(&mut ok).unwrap(), b"null");
    }
}
