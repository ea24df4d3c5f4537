//! `bp_request`: the builtin port driver's `.bp.sock` protocol, as the child reads it from the
//! parent (rootlesskit's wire format: a 4-byte little-endian length, then that much JSON).
//!
//! The input is the byte stream a client would write, delivered in short reads of fuzzed
//! sizes. Each frame that [`read_frame`](usernet::portdriver::msg::read_frame) accepts is
//! parsed with [`parse_request`](usernet::portdriver::msg::parse_request); a request that
//! parses must survive a round trip through its own serialization unchanged, and a frame
//! must never be empty or over the limit. Then the same bytes go to a real
//! [`ChildServer`](usernet::portdriver::child::ChildServer) on a socket in a temporary
//! directory, which reads, parses and serves the request (dialing inside the fuzz namespace:
//! the simulated host's servers on loopback, or nothing) and must answer with a well-formed
//! reply or a passed socket.
//!
//! Runs only inside a throwaway network namespace (see `fuzz/run.sh`): a `connect` request
//! dials whatever address it names.

#![no_main]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use usernet::portdriver::child::ChildServer;
use usernet::portdriver::msg::{self, FrameError, MAX_FRAME, Reply, Request};
use usernet_fuzz::{host, world};

/// Hands out the input a few bytes at a time, as a socket might.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    i: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes.get(self.i % self.sizes.len().max(1)) {
            Some(&s) if s > 0 => usize::from(s),
            _ => usize::MAX,
        };
        self.i += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

struct Server {
    server: ChildServer,
    path: PathBuf,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        world::enter();
        let dir = std::env::temp_dir().join(format!("usernet-fuzz-bp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(".bp.sock");
        let server = ChildServer::bind(&path, None).expect("bind .bp.sock");
        Server { server, path }
    })
}

fuzz_target!(
    init: {
        world::enter();
        host::start();
        server();
    },
    |data: &[u8]| {
        // The first byte picks the read sizes; the rest is the stream.
        let (sizes, stream) = match data.split_first() {
            Some((&n, rest)) => rest.split_at(usize::from(n % 8).min(rest.len())),
            None => (&[][..], data),
        };
        let mut reader = Trickle {
            data: stream,
            sizes,
            i: 0,
        };
        for _ in 0..16 {
            match msg::read_frame(&mut reader) {
                Ok(body) => {
                    assert!(!body.is_empty() && body.len() <= MAX_FRAME);
                    if let Ok(request) = msg::parse_request(&body) {
                        let json = serde_json::to_vec(&request).expect("serialize");
                        let again: Request =
                            msg::parse_request(&json).expect("a request parses back");
                        assert_eq!(request, again);
                    }
                }
                Err(FrameError::BadLength(n)) => {
                    assert!(n == 0 || n > MAX_FRAME);
                    break;
                }
                Err(FrameError::Io(_)) => break,
            }
        }
        serve(stream);
    }
);

/// Send `stream` to the real child server and check its answer.
fn serve(stream: &[u8]) {
    let s = server();
    let Ok(mut conn) = UnixStream::connect(&s.path) else {
        return;
    };
    conn.set_read_timeout(Some(Duration::from_secs(20))).ok();
    // The server reads one frame; anything past it may never be read.
    let one = match stream.get(..4) {
        Some(h) => {
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
            &stream[..stream.len().min(4usize.saturating_add(len))]
        }
        None => stream,
    };
    let _ = conn.write_all(one);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    s.server.accept_all();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    if answer.is_empty() || answer == msg::FD_PAYLOAD {
        // A connected socket was passed (read_to_end drops it), or the peer went away.
        return;
    }
    let body = msg::read_frame(&mut &answer[..]).expect("a framed reply");
    if body != b"null" {
        let reply: Reply = serde_json::from_slice(&body).expect("an error reply");
        assert!(!reply.error.is_empty());
    }
}
