//! The tokens of the stack's poller, in one list: every kind of fd the event loop watches is
//! named here, so [`Stack`](super::Stack)'s dispatch reads as a table (as passt's
//! `epoll_type.h`), not as numbers spread over the files that register them.
//!
//! A token is one of:
//! - a fixed token: [`TAP_TOKEN`], the embedding program's own (from 1 up to
//!   [`FIRST_STACK_TOKEN`]: its signals, its listeners...) and [`WAKEUP_TOKEN`];
//! - an entry of one of the stack's tables, tagged with its [`Kind`] ([`Kind::token`]);
//! - an entry of the embedding program's own tables, tagged [`Kind::Embedder`] (the
//!   slirp4netns API server's connections): code above the stack picks its kinds there,
//!   without the stack knowing anything about it.
//!
//! Events on the embedding program's tokens go to the callback of
//! [`Stack::run`](super::Stack::run), with the stack; the rest the stack handles itself.

use mio::Token;

use crate::slab::Id;

/// The TAP's token.
pub const TAP_TOKEN: Token = Token(0);
/// Tokens from 1 up to here are the embedding program's.
pub const FIRST_STACK_TOKEN: usize = 1 << 16;
/// The token the callback of [`Stack::run`](super::Stack::run) sees when the
/// [`Stack::wake_at`](super::Stack::wake_at) deadline passes.
pub const WAKEUP_TOKEN: Token = Token(FIRST_STACK_TOKEN - 1);
/// The first kind of the embedding program's range ([`Kind::Embedder`]).
const FIRST_EMBEDDER_KIND: u8 = 128;

/// Every kind of table entry with an fd on the stack's poller. The discriminant is the kind
/// in the token ([`crate::slab::Id::token`], which `Kind::bits` writes); kind 0 is the fixed
/// tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A TCP flow's host socket ([`tcp`](super::tcp)).
    TcpFlow = 1,
    /// A UDP NAT entry's host socket ([`udp`](super::udp)).
    UdpFlow = 2,
    /// A DNS query's upstream socket ([`dns`](super::dns)).
    DnsQuery = 3,
    /// A ping socket ([`icmp`](super::icmp)).
    Ping = 4,
    /// A host forward's listener ([`hostfwd`](super::hostfwd)).
    Forward = 5,
    /// The embedding program's kind `n` (0 to 127): its events go to the callback of
    /// [`Stack::run`](super::Stack::run). In the token it is kind 128 + `n`.
    Embedder(u8) = FIRST_EMBEDDER_KIND,
}

impl Kind {
    /// The token of `id`, an entry of this kind's table.
    pub fn token(self, id: Id) -> Token {
        id.token(self.bits())
    }

    /// The kind and entry of a token made by [`Kind::token`]; None for fixed tokens and for
    /// kinds nobody registers.
    pub fn of(token: Token) -> Option<(Kind, Id)> {
        let (bits, id) = Id::from_token(token);
        Some((Kind::from_bits(bits)?, id))
    }

    /// The kind in the token (for code that makes tokens with [`crate::slab::Id::token`]). An
    /// embedder's `n` of 128 or more wraps into its range rather than into the stack's.
    pub fn bits(self) -> u8 {
        match self {
            Kind::TcpFlow => 1,
            Kind::UdpFlow => 2,
            Kind::DnsQuery => 3,
            Kind::Ping => 4,
            Kind::Forward => 5,
            Kind::Embedder(n) => FIRST_EMBEDDER_KIND | n,
        }
    }

    fn from_bits(bits: u8) -> Option<Kind> {
        Some(match bits {
            1 => Kind::TcpFlow,
            2 => Kind::UdpFlow,
            3 => Kind::DnsQuery,
            4 => Kind::Ping,
            5 => Kind::Forward,
            FIRST_EMBEDDER_KIND.. => Kind::Embedder(bits - FIRST_EMBEDDER_KIND),
            _ => return None,
        })
    }
}

/// Whether events on `token` are the embedding program's: its fixed tokens and its kinds.
pub fn is_embedders(token: Token) -> bool {
    token.0 < FIRST_STACK_TOKEN || matches!(Kind::of(token), Some((Kind::Embedder(_), _)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::Slab;

    #[test]
    fn every_kind_round_trips_and_the_ranges_stay_apart() {
        let mut slab = Slab::default();
        let id = slab.insert(());
        let kinds = [
            Kind::TcpFlow,
            Kind::UdpFlow,
            Kind::DnsQuery,
            Kind::Ping,
            Kind::Forward,
            Kind::Embedder(0),
            Kind::Embedder(2),
            Kind::Embedder(127),
        ];
        for kind in kinds {
            let token = kind.token(id);
            assert_eq!(Kind::of(token), Some((kind, id)));
            assert!(token.0 >= FIRST_STACK_TOKEN, "{kind:?}");
            assert_eq!(is_embedders(token), matches!(kind, Kind::Embedder(_)));
        }
        // The kinds in the tokens are the discriminants (the embedder's plus its `n`).
        let bits: Vec<u8> = kinds.iter().map(|k| k.bits()).collect();
        assert_eq!(bits, [1, 2, 3, 4, 5, 128, 130, 255]);
        for b in 0..=u8::MAX {
            if let Some(kind) = Kind::from_bits(b) {
                assert_eq!(kind.bits(), b);
            }
        }
        // An out-of-range embedder kind stays the embedder's.
        assert!(is_embedders(Kind::Embedder(200).token(id)));
        // Fixed tokens have no kind; below FIRST_STACK_TOKEN they are the embedder's.
        for token in [TAP_TOKEN, WAKEUP_TOKEN, Token(16)] {
            assert_eq!(Kind::of(token).map(|(k, _)| k), None);
            assert!(is_embedders(token));
        }
    }
}
