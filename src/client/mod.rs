//! `usernet ports list|add|remove`, `usernet info` and `usernet ps`: a client of a running
//! usernet's (or rootlesskit's) REST API, printing what `rootlessctl` prints; and, in
//! [`observe`], `usernet flows` and `usernet stats`.
//!
//! A server is believed only if it runs as us (`SO_PEERCRED`): where another user could
//! replace `api.sock`, its answers would otherwise be theirs. Root may ask anyone's.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

pub mod observe;

use crate::api::Info;
use crate::ports::{PortSpec, PortStatus};

/// The state dir to talk to: the flag, else $USERNET_STATE_DIR, else $ROOTLESSKIT_STATE_DIR
/// (both are set for the command usernet runs), else the only usernet of ours running.
pub fn state_dir(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = flag
        .or_else(|| std::env::var_os("USERNET_STATE_DIR").map(PathBuf::from))
        .or_else(|| std::env::var_os("ROOTLESSKIT_STATE_DIR").map(PathBuf::from))
    {
        return Ok(dir);
    }
    let mut running = crate::launcher::running();
    match running.len() {
        1 => Ok(running.remove(0).state_dir),
        0 => bail!("no usernet of yours is running (that 'usernet ps' can find); pass --state-dir"),
        n => {
            bail!("{n} usernets of yours are running; pick one with --state-dir (see 'usernet ps')")
        }
    }
}

/// `usernet ps`: the running usernets of this user.
pub fn ps() -> Result<String> {
    let mut out = String::from("PID       CHILD_PID STATE_DIR\n");
    for r in crate::launcher::running() {
        let child = r
            .child_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        out += &format!("{:<9} {child:<9} {}\n", r.pid, r.state_dir.display());
    }
    Ok(out)
}

/// Refuse a server that does not run as us (unless we are root): whoever runs it decides
/// what we print.
fn check_server(stream: &UnixStream, socket: &Path) -> Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(stream, PeerCredentials)
        .with_context(|| format!("cannot tell who serves {}", socket.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if cred.uid() == euid || euid == 0 {
        return Ok(());
    }
    bail!(
        "refusing {}: it is served by uid {} (pid {}), not by you (uid {euid}); another user may have replaced it",
        socket.display(),
        cred.uid(),
        cred.pid()
    )
}

/// Connect to the API server at `socket`, believed only if it runs as us (see
/// [`check_server`]), with a read timeout; `hint` says what to check if nobody is there.
pub(crate) fn connect(socket: &Path, hint: &str) -> Result<UnixStream> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {} ({hint})", socket.display()))?;
    check_server(&stream, socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// A client of one REST API socket (`STATE_DIR/api.sock`), for usernet's own commands and the
/// personalities that are clients (`rootlessctl`, `rootlesskit-docker-proxy`).
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// The server at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ApiClient {
            socket: socket.into(),
        }
    }

    /// The server of the usernet (or rootlesskit) with this state dir.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        ApiClient::new(state_dir.join("api.sock"))
    }

    /// One request; the status and body of the answer.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>)> {
        let mut stream = connect(&self.socket, "is usernet running with that state dir?")?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: usernet\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // A server that refuses us at once (503: too many clients) answers and closes without
        // reading: our write may then fail, and the read end with a reset, after its answer.
        let sent = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body));
        let answer = read_answer(&mut stream);
        let answer = match (answer, sent) {
            (Ok(a), _) if !a.is_empty() => a,
            (_, Err(e)) => return Err(anyhow!(e).context("sending the request to the API")),
            (Err(e), Ok(())) => return Err(anyhow!(e).context("reading the API's answer")),
            (Ok(a), Ok(())) => a,
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&answer) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => bail!("the API sent something that is not an HTTP response"),
        };
        Ok((response.code.unwrap_or(0), answer[head_len..].to_vec()))
    }

    /// The body of a `want` answer; any other is the server's error.
    fn ok_body(&self, method: &str, path: &str, body: Option<&[u8]>, want: u16) -> Result<Vec<u8>> {
        let (status, body) = self.call(method, path, body)?;
        if status == want {
            Ok(body)
        } else {
            Err(failure(status, &body))
        }
    }

    /// `GET /v1/info`'s JSON, as sent.
    pub fn info_json(&self) -> Result<Vec<u8>> {
        self.ok_body("GET", "/v1/info", None, 200)
    }

    /// `GET /v1/info`.
    pub fn info(&self) -> Result<Info> {
        serde_json::from_slice(&self.info_json()?).context("bad info answer")
    }

    /// `GET /v1/flows` (usernet's extension).
    pub fn flows(&self) -> Result<crate::observe::FlowTable> {
        let body = self.ok_body("GET", "/v1/flows", None, 200)?;
        serde_json::from_slice(&body).context("bad flow table")
    }

    /// `GET /v1/stats` (usernet's extension).
    pub fn stats(&self) -> Result<crate::observe::Stats> {
        let body = self.ok_body("GET", "/v1/stats", None, 200)?;
        serde_json::from_slice(&body).context("bad counters")
    }

    /// `GET /v1/ports`.
    pub fn ports(&self) -> Result<Vec<PortStatus>> {
        let body = self.ok_body("GET", "/v1/ports", None, 200)?;
        let ports: Option<Vec<PortStatus>> =
            serde_json::from_slice(&body).context("bad port list")?;
        Ok(ports.unwrap_or_default())
    }

    /// `POST /v1/ports`: the port as published.
    pub fn add_port(&self, spec: &PortSpec) -> Result<PortStatus> {
        let body = serde_json::to_vec(spec)?;
        let answer = self.ok_body("POST", "/v1/ports", Some(&body), 201)?;
        serde_json::from_slice(&answer).context("bad answer")
    }

    /// `DELETE /v1/ports/ID`.
    pub fn remove_port(&self, id: i64) -> Result<()> {
        self.ok_body("DELETE", &format!("/v1/ports/{id}"), None, 200)
            .map(drop)
    }
}

/// Everything the server sends until it closes; a reset after some data ends it too (the
/// server closed without reading all we sent).
pub(crate) fn read_answer(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => {
                // The API's answers are small; a server that streams forever is cut off.
                if answer.len() + n > MAX_ANSWER {
                    return Err(std::io::Error::other("the API's answer is too long"));
                }
                answer.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !answer.is_empty() => {
                return Ok(answer);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The longest answer the client reads.
const MAX_ANSWER: usize = 16 << 20;

/// The message of an error answer, as rootlessctl shows it.
fn failure(status: u16, body: &[u8]) -> anyhow::Error {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => anyhow!("{}", m.message),
        Err(_) => anyhow!(
            "unexpected HTTP status {status}: {}",
            String::from_utf8_lossy(body).trim()
        ),
    }
}

/// `usernet info`.
pub fn info(state_dir: &Path, as_json: bool) -> Result<String> {
    info_text(&ApiClient::in_state_dir(state_dir).info()?, as_json)
}

/// Info as rootlessctl prints it: its lines, or indented JSON (Go's `MarshalIndent` with four
/// spaces).
pub fn info_text(info: &Info, as_json: bool) -> Result<String> {
    if as_json {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(
            &mut out,
            serde_json::ser::PrettyFormatter::with_indent(b"    "),
        );
        serde::Serialize::serialize(info, &mut ser)?;
        out.push(b'\n');
        return Ok(String::from_utf8(out)?);
    }
    let mut out = format!(
        "- REST API version: {}\n- Implementation version: {}\n- State Directory: {}\n- Child PID: {}\n",
        info.api_version, info.version, info.state_dir, info.child_pid
    );
    if let Some(n) = &info.network_driver {
        out += &format!(
            "- Network Driver: {}\n  - DNS: [{}]\n",
            n.driver,
            n.dns.join(" ")
        );
        if !n.child_ip.is_empty() {
            out += &format!("  - IP: {}\n", n.child_ip);
        }
    }
    if let Some(p) = &info.port_driver {
        out += &format!(
            "- Port Driver: {}\n  - Supported protocols: [{}]\n",
            p.driver,
            p.protos.join(" ")
        );
    }
    Ok(out)
}

/// `usernet ports list`.
pub fn list(state_dir: &Path, as_json: bool) -> Result<String> {
    ports_text(&ApiClient::in_state_dir(state_dir).ports()?, as_json)
}

/// Ports as rootlessctl lists them: its table, or one JSON object per line.
pub fn ports_text(ports: &[PortStatus], as_json: bool) -> Result<String> {
    if as_json {
        return json_lines(ports);
    }
    let mut rows = vec![
        [
            "ID",
            "PROTO",
            "PARENTIP",
            "PARENTPORT",
            "CHILDIP",
            "CHILDPORT",
        ]
        .map(String::from),
    ];
    for p in ports {
        let s = &p.spec;
        rows.push([
            p.id.to_string(),
            s.proto.clone(),
            s.parent_ip.clone(),
            s.parent_port.to_string(),
            s.child_ip.clone(),
            s.child_port.to_string(),
        ]);
    }
    Ok(table(&rows))
}

/// One compact JSON object per line.
pub fn json_lines(ports: &[PortStatus]) -> Result<String> {
    let mut out = String::new();
    for p in ports {
        out += &format!("{}\n", serde_json::to_string(p)?);
    }
    Ok(out)
}

/// Columns padded like Go's tabwriter (minimum width 4, padding 4), as rootlessctl prints.
fn table(rows: &[[String; 6]]) -> String {
    let widths: Vec<usize> = (0..6)
        .map(|c| (rows.iter().map(|r| r[c].len()).max().unwrap_or(0) + 4).max(4))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            out += &format!("{cell:<width$}", width = widths[c]);
        }
        out.push('\n');
    }
    out
}

/// `usernet ports add SPEC...`: every spec is checked first; then one request each, stopping
/// at the first failure (earlier ones stay published). Prints the new ids.
pub fn add(state_dir: &Path, specs: &[String]) -> Result<String> {
    let parsed: Vec<PortSpec> = specs
        .iter()
        .map(|s| PortSpec::parse(s).map_err(|e| anyhow!(e)))
        .collect::<Result<_>>()?;
    add_specs(&ApiClient::in_state_dir(state_dir), &parsed, false)
}

/// Publish `specs` in order, stopping at the first failure (earlier ones stay published), as
/// rootlessctl does; prints each new id, or with `as_json` each port as a JSON line.
pub fn add_specs(api: &ApiClient, specs: &[PortSpec], as_json: bool) -> Result<String> {
    let mut out = String::new();
    for spec in specs {
        let status = api.add_port(spec)?;
        out += &if as_json {
            json_lines(std::slice::from_ref(&status))?
        } else {
            format!("{}\n", status.id)
        };
    }
    Ok(out)
}

/// `usernet ports remove ID...`: prints each removed id.
pub fn remove(state_dir: &Path, ids: &[String]) -> Result<String> {
    let parsed: Vec<i64> = ids
        .iter()
        .map(|s| s.parse().map_err(|_| anyhow!("'{s}' is not a port id")))
        .collect::<Result<_>>()?;
    remove_ids(&ApiClient::in_state_dir(state_dir), &parsed)
}

/// Remove ports `ids` in order, stopping at the first failure; prints each removed id.
pub fn remove_ids(api: &ApiClient, ids: &[i64]) -> Result<String> {
    let mut out = String::new();
    for id in ids {
        api.remove_port(*id)?;
        out += &format!("{id}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn table_pads_like_tabwriter() {
        let rows = [
            [
                "ID",
                "PROTO",
                "PARENTIP",
                "PARENTPORT",
                "CHILDIP",
                "CHILDPORT",
            ]
            .map(String::from),
            ["1", "tcp", "127.0.0.1", "18080", "", "80"].map(String::from),
        ];
        assert_eq!(
            table(&rows),
            "ID    PROTO    PARENTIP     PARENTPORT    CHILDIP    CHILDPORT    \n\
             1     tcp      127.0.0.1    18080                    80           \n"
        );
    }
}
