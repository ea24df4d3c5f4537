//! What the TCP and UDP tools send and how they check it: a seeded pseudo-random byte pattern
//! (xorshift64*, cheap to generate at memory speed), and SHA-256 digests of what was sent and
//! what arrived.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Seed of the client's pattern and of the server's.
pub(super) const CLIENT_SEED: u64 = 0x1234_5678;
pub(super) const SERVER_SEED: u64 = 0x8765_4321;

/// A deterministic byte stream (xorshift64*), cheap to generate at memory speed.
pub(super) struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub(super) fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `len` pattern bytes; returns their SHA-256.
pub(super) fn send_pattern(w: &mut impl Write, seed: u64, len: u64) -> io::Result<String> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hex(&h.finalize()))
}

/// Read exactly `len` bytes; returns their SHA-256.
pub(super) fn recv_exact_hash(r: &mut impl Read, len: u64) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "EOF with {left} of {len} bytes missing"
            )));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex(&h.finalize()))
}

pub(super) fn expected_hash(seed: u64, len: u64) -> String {
    send_pattern(&mut io::sink(), seed, len).unwrap()
}

/// Ok if `got` is `want`; else an error naming `what`, with both.
pub(super) fn check(what: &str, got: &str, want: &str) -> io::Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what}: got {got}, want {want}")))
    }
}
