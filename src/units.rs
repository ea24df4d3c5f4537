//! Sizes as users write them on command lines and in the environment (`64M`, `1G`), shared
//! by every front end and by the capture's environment variable, and the datapath's on/off
//! environment switches. A leaf: it imports nothing of the crate.

/// Whether the environment switch `var` is on: it is unless set to `0`, `off`, `false` or
/// `no` (any case).
pub fn env_switch(var: &str) -> bool {
    match std::env::var(var) {
        Ok(v) => !matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        Err(_) => true,
    }
}

/// A size in bytes, or a number with a K, M or G suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let v: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (bytes, or a number with K, M or G)"))?;
    v.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s} is too large"))
}
