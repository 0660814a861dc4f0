//! Finds a connection by either of its keys. Stores only the slot id and
//! direction (4 bytes a key, plus hashbrown's control byte): the keys
//! themselves are rebuilt from the slab when compared, instead of being kept
//! a second time here (the index was larger than the entries it pointed at).

use super::{Dir, Key};
use crate::keyed::Keyed;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// A slot id and direction in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ref(u32);

impl Ref {
    pub fn new(id: u32, dir: Dir) -> Self {
        Ref(id << 1 | dir as u32)
    }

    pub fn id(self) -> u32 {
        self.0 >> 1
    }

    pub fn dir(self) -> Dir {
        if self.0 & 1 == 0 {
            Dir::Orig
        } else {
            Dir::Reply
        }
    }
}

/// Keyed ([`crate::keyed`]): the keys are the clients' addresses and ports.
#[derive(Default)]
pub(super) struct Index {
    table: HashTable<Ref>,
    state: Keyed,
}

impl Index {
    /// The entry `k` leads to; `key_of` gives the key a stored ref stands for.
    #[inline]
    pub fn find(&self, k: &Key, key_of: impl Fn(Ref) -> Option<Key>) -> Option<Ref> {
        self.table
            .find(self.hash(k), |r| key_of(*r).as_ref() == Some(k))
            .copied()
    }

    /// Adds `r` under `k` (not there yet). Every stored ref must lead to a
    /// live entry (the table removes refs before it empties a slot), so that
    /// growing the table can rehash it.
    pub fn insert(&mut self, k: &Key, r: Ref, key_of: impl Fn(Ref) -> Option<Key>) {
        debug_assert!(self.find(k, &key_of).is_none(), "{k:?} indexed twice");
        let state = &self.state;
        self.table.insert_unique(state.hash_one(k), r, |r| {
            let k = key_of(*r);
            debug_assert!(k.is_some(), "a ref to an empty slot");
            k.as_ref().map_or(0, |k| state.hash_one(k))
        });
    }

    /// Removes `r` from under `k`, if it is there.
    pub fn remove(&mut self, k: &Key, r: Ref) {
        if let Ok(e) = self.table.find_entry(self.hash(k), |x| *x == r) {
            e.remove();
        }
    }

    /// The hash `k` is stored under.
    #[inline(always)]
    pub fn hash(&self, k: &Key) -> u64 {
        self.state.hash_one(k)
    }

    /// Refs stored (two a connection).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }
}
