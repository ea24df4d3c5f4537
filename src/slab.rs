//! A generational slab: O(1) insert, lookup and removal by a small copyable id, where an id
//! from a removed entry never finds the entry that later reuses its slot.
//!
//! Flows are referenced from mio tokens and timer entries that can outlive the flow by one
//! event-loop iteration; the generation makes such stale references miss instead of hitting
//! a stranger.

use mio::Token;

/// Identifies one entry of a [`Slab`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    index: u32,
    generation: u32,
}

/// Bits of a mio token used for the slot index, the generation and the kind of entry.
const INDEX_BITS: u32 = 32;
const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

impl Id {
    /// Encode as a mio token tagged with `kind` (1..=255), so several slabs share one poller.
    pub fn token(self, kind: u8) -> Token {
        Token(
            (usize::from(kind) << (INDEX_BITS + GENERATION_BITS))
                | ((self.generation as usize) << INDEX_BITS)
                | self.index as usize,
        )
    }

    /// Decode a token made by [`Id::token`]: its kind and id.
    pub fn from_token(token: Token) -> (u8, Id) {
        let t = token.0;
        let kind = (t >> (INDEX_BITS + GENERATION_BITS)) as u8;
        let generation = ((t >> INDEX_BITS) as u32) & GENERATION_MASK;
        let index = t as u32;
        (kind, Id { index, generation })
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, value: T) -> Id {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            Id {
                index,
                generation: slot.generation,
            }
        } else {
            let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 entries");
            self.slots.push(Slot {
                generation: 1,
                value: Some(value),
            });
            Id {
                index,
                generation: 1,
            }
        }
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation == id.generation {
            slot.value.as_ref()
        } else {
            None
        }
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation == id.generation {
            slot.value.as_mut()
        } else {
            None
        }
    }

    pub fn remove(&mut self, id: Id) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        // Generation 0 is never handed out, so a zeroed token can never match.
        slot.generation = match (slot.generation + 1) & GENERATION_MASK {
            0 => 1,
            g => g,
        };
        self.free.push(id.index);
        self.len -= 1;
        Some(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| {
                (
                    Id {
                        index: i as u32,
                        generation: s.generation,
                    },
                    v,
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_miss_reused_slots() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn tokens_round_trip_with_kind() {
        let mut s = Slab::default();
        for _ in 0..5 {
            let id = s.insert(());
            s.remove(id);
        }
        let id = s.insert(());
        let (kind, back) = Id::from_token(id.token(7));
        assert_eq!(kind, 7);
        assert_eq!(back, id);
        assert!(id.token(1).0 > 0xffff);
    }
}
