//! What the fuzz targets share: the isolation check every target runs first ([`world`]), the
//! simulated host the stack's sockets reach ([`host`]), a [`Stack`](usernet::stack::Stack)
//! behind a socketpair standing in for the TAP ([`harness`]), frame builders for the guest's
//! side ([`guest`], usernet's own test kit, shared with its unit and integration tests) and a
//! little reader for decoding structured inputs ([`Input`]).

pub use usernet::testkit as guest;
pub mod harness;
pub mod host;
pub mod world;

/// Reads a fuzz input front to back; running out of bytes yields zeros and empty slices, so
/// every input decodes to something.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A big-endian u16 length, then that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
