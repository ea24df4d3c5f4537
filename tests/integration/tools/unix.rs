//! Unix-socket tools for the API tests: one request to a socket and its answer's first
//! line, and a stand-in HTTP server on someone else's socket path.

use std::io::{self, Read, Write};

/// Send `request` on the unix socket at `path` and print the first line of the answer.
pub(super) fn unix_request(path: &str, request: &str) -> io::Result<()> {
    let mut conn = std::os::unix::net::UnixStream::connect(path)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    // A refusal may be written (and the socket closed) before the request is: read anyway.
    let _ = conn.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    println!("{}", answer.lines().next().unwrap_or(""));
    Ok(())
}

/// A stand-in for someone else's api.sock: listen on `path` (mode 0777, so anyone can
/// connect), print "listening", and answer every request with 200 and `body`.
pub(super) fn unix_http_serve(path: &str, body: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    println!("listening");
    io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
