//! Just enough HTTP/1.1 for a local control socket: parse bounded requests with `httparse`,
//! write responses with a length. No chunked bodies, no TLS, keep-alive supported.

use std::fmt::Write as _;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body, unless `--max-api-request` says otherwise.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub body: Vec<u8>,
    pub close: bool,
}

/// What a buffer of bytes from a client amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// A request, and how many bytes of the buffer it used.
    Complete(Request, usize),
    /// Not something we will answer other than with this status and close.
    Invalid(u16, &'static str),
}

/// Parse the first request in `buf`, taking bodies of at most `max_body` bytes.
pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Invalid(431, "request head too large");
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(431, "too many headers"),
        Err(_) => return Parsed::Invalid(400, "malformed request"),
    };
    if head_len > MAX_HEAD {
        return Parsed::Invalid(431, "request head too large");
    }
    let mut length = 0usize;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<usize>() {
                Ok(n) if n <= max_body => length = n,
                Ok(_) => return Parsed::Invalid(413, "request body too large"),
                Err(_) => return Parsed::Invalid(400, "bad Content-Length"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(501, "transfer encodings are not supported");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    if buf.len() < head_len + length {
        return Parsed::Partial;
    }
    let target = req.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path,
        body: buf[head_len..head_len + length].to_vec(),
        close,
    };
    Parsed::Complete(request, head_len + length)
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub extra_headers: &'static [(&'static str, &'static str)],
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            extra_headers: &[],
            body: body.into(),
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if let Some(ct) = self.content_type {
            let _ = write!(head, "Content-Type: {ct}\r\n");
        }
        for (name, value) in self.extra_headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_body_query_and_pipelining() {
        let wire = b"POST /v1/ports?x=1 HTTP/1.1\r\nHost: rootlesskit\r\nContent-Length: 2\r\n\r\n{}GET /v1/info HTTP/1.1\r\n\r\n";
        let Parsed::Complete(r, used) = parse(wire, DEFAULT_MAX_BODY) else {
            panic!()
        };
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.as_slice()),
            ("POST", "/v1/ports", &b"{}"[..])
        );
        let Parsed::Complete(r, _) = parse(&wire[used..], DEFAULT_MAX_BODY) else {
            panic!()
        };
        assert_eq!(r.path, "/v1/info");
        assert_eq!(
            parse(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n", DEFAULT_MAX_BODY),
            Parsed::Partial
        );
        assert_eq!(
            parse(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
                DEFAULT_MAX_BODY
            ),
            Parsed::Partial
        );
    }

    #[test]
    fn oversized_and_garbage_requests_are_refused() {
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n", DEFAULT_MAX_BODY),
            Parsed::Invalid(400, _)
        ));
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            DEFAULT_MAX_BODY + 1
        );
        assert!(matches!(
            parse(big.as_bytes(), DEFAULT_MAX_BODY),
            Parsed::Invalid(413, _)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 10));
        assert!(matches!(
            parse(long.as_bytes(), DEFAULT_MAX_BODY),
            Parsed::Invalid(431, _)
        ));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse(chunked, DEFAULT_MAX_BODY),
            Parsed::Invalid(501, _)
        ));
    }

    #[test]
    fn responses_have_length_and_type() {
        let r = Response::new(201, Some("application/json"), "{}").encode(false);
        assert_eq!(r, b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    }
}
