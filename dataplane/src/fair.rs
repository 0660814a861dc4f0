//! Fair shares of the node's bounded pools (the connection table, the DNS
//! relay's slots): one endpoint filling a pool must not leave the others
//! without room. Each pool keeps, per owner (a client address, a port), how
//! many of its slots the owner holds and their order of arrival, so that when
//! the pool is full a newcomer is given an owner's oldest slot in O(1) (a
//! linked list through the slots, no search and no allocation per slot).
//!
//! The rule every pool applies when it is full: an owner holding its
//! [share](Owners::share) or more takes from itself (or is refused); any other
//! takes from whoever holds more than their share. A share is the pool divided
//! by the owners holding slots, but never less than a floor, so that many
//! small owners (a flood from random addresses) do not make every busy one
//! look greedy.

#![forbid(unsafe_code)]

use rustc_hash::FxHashMap;
use std::hash::Hash;

/// An owner's share of a full pool is never below the pool over this (so that
/// a flood from many owners, each holding a slot or two, does not make an
/// owner with a few hundred slots its own victim). The connection table and
/// the DNS relay both take it.
pub const SHARE_FLOOR_DIV: usize = 64;

/// The floor of a share of a pool of `max` slots ([`SHARE_FLOOR_DIV`]).
pub fn share_floor(max: usize) -> usize {
    (max / SHARE_FLOOR_DIV).max(1)
}

const NONE: u32 = u32::MAX;

/// One slot's place in its owner's list (`owner`: index into the owners' slab).
#[derive(Debug, Clone, Copy)]
struct Link {
    owner: u32,
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    owner: NONE,
    prev: NONE,
    next: NONE,
};

#[derive(Debug, Clone, Copy)]
struct Owner<K> {
    key: K,
    /// Its oldest and newest slots.
    head: u32,
    tail: u32,
    count: u32,
}

/// Who holds which slots of a pool, in order of arrival per owner. Memory:
/// 12 bytes a slot (grown to the highest slot used, as the pool grows), and one
/// record per owner holding a slot (an owner is forgotten when it holds none,
/// so there are never more owners than slots).
#[derive(Debug)]
pub struct Owners<K> {
    by_key: FxHashMap<K, u32>,
    owners: Vec<Owner<K>>,
    free: Vec<u32>,
    links: Vec<Link>,
}

impl<K> Default for Owners<K> {
    fn default() -> Self {
        Self {
            by_key: FxHashMap::default(),
            owners: Vec::new(),
            free: Vec::new(),
            links: Vec::new(),
        }
    }
}

impl<K: Hash + Eq + Copy> Owners<K> {
    /// Owners holding at least one slot.
    pub fn active(&self) -> usize {
        self.by_key.len()
    }

    /// Slots `k` holds.
    pub fn count(&self, k: &K) -> usize {
        self.by_key
            .get(k)
            .map_or(0, |&o| self.owners[o as usize].count as usize)
    }

    /// The owner of `slot`, and how many slots it holds.
    pub fn of_slot(&self, slot: u32) -> Option<(K, usize)> {
        let o = self.links.get(slot as usize)?.owner;
        let r = self.owners.get(o as usize)?;
        Some((r.key, r.count as usize))
    }

    /// What one owner may hold of a pool of `max` while others want room:
    /// the pool over the owners holding slots (counting `k` if it holds none
    /// yet), and at least `floor`.
    pub fn share(&self, max: usize, floor: usize, k: &K) -> usize {
        let active = self.active() + usize::from(!self.by_key.contains_key(k));
        (max / active.max(1)).max(floor).max(1)
    }

    /// Whether `k` holds its share of a full pool or more.
    pub fn over_share(&self, max: usize, floor: usize, k: &K) -> bool {
        self.count(k) >= self.share(max, floor, k)
    }

    /// Notes that `k` now holds `slot` (its newest).
    pub fn link(&mut self, slot: u32, k: K) {
        let s = slot as usize;
        if self.links.len() <= s {
            self.links.resize(s + 1, UNLINKED);
        }
        debug_assert_eq!(self.links[s].owner, NONE, "slot {slot} held twice");
        let o = match self.by_key.get(&k) {
            Some(&o) => o,
            None => {
                let rec = Owner {
                    key: k,
                    head: NONE,
                    tail: NONE,
                    count: 0,
                };
                let o = match self.free.pop() {
                    Some(o) => {
                        self.owners[o as usize] = rec;
                        o
                    }
                    None => {
                        self.owners.push(rec);
                        (self.owners.len() - 1) as u32
                    }
                };
                self.by_key.insert(k, o);
                o
            }
        };
        let rec = &mut self.owners[o as usize];
        let prev = rec.tail;
        rec.tail = slot;
        if rec.head == NONE {
            rec.head = slot;
        }
        rec.count += 1;
        if prev != NONE {
            self.links[prev as usize].next = slot;
        }
        self.links[s] = Link {
            owner: o,
            prev,
            next: NONE,
        };
    }

    /// Notes that `slot` is free again (nothing if it was not held).
    pub fn unlink(&mut self, slot: u32) {
        let Some(l) = self.links.get(slot as usize).copied() else {
            return;
        };
        if l.owner == NONE {
            return;
        }
        self.links[slot as usize] = UNLINKED;
        if l.prev != NONE {
            self.links[l.prev as usize].next = l.next;
        }
        if l.next != NONE {
            self.links[l.next as usize].prev = l.prev;
        }
        let rec = &mut self.owners[l.owner as usize];
        if rec.head == slot {
            rec.head = l.next;
        }
        if rec.tail == slot {
            rec.tail = l.prev;
        }
        rec.count -= 1;
        if rec.count == 0 {
            let key = rec.key;
            self.by_key.remove(&key);
            self.free.push(l.owner);
        }
    }

    /// `k`'s slots, oldest first.
    pub fn oldest(&self, k: &K) -> impl Iterator<Item = u32> + '_ {
        let mut at = self
            .by_key
            .get(k)
            .map_or(NONE, |&o| self.owners[o as usize].head);
        std::iter::from_fn(move || {
            let s = at;
            if s == NONE {
                return None;
            }
            at = self.links[s as usize].next;
            Some(s)
        })
    }

    /// The owner holding the most slots (a walk of the owners: for pools
    /// whose owners are few, the ports of one node).
    pub fn largest(&self) -> Option<K> {
        self.by_key
            .values()
            .map(|&o| &self.owners[o as usize])
            .max_by_key(|r| r.count)
            .map(|r| r.key)
    }
}

/// Each port's own budget of frames a second (the BUM frames the switch
/// replicates: `--flood-rate`): a token bucket per port in GCRA form (the time
/// at which its bucket is full again), so one container's broadcast storm
/// spends its own budget, never the other ports'. Per worker (a port read by
/// several workers has each one's budget); ports the state no longer has are
/// forgotten ([`PortRate::retain`]).
#[derive(Debug)]
pub struct PortRate<K> {
    gcra: crate::lb::limit::Gcra,
    tat: FxHashMap<K, u64>,
}

impl<K: std::hash::Hash + Eq + Copy> PortRate<K> {
    pub fn new(limit: crate::lb::limit::RateLimit) -> Self {
        Self {
            gcra: crate::lb::limit::Gcra::new(limit),
            tat: FxHashMap::default(),
        }
    }

    /// Whether `port` may send one more frame at `now_ms` (counted if so).
    pub fn admit(&mut self, port: K, now_ms: u64) -> bool {
        let tat = self.tat.entry(port).or_insert(0);
        self.gcra.admit(tat, now_ms)
    }

    /// Keeps only the ports `keep` names.
    pub fn retain(&mut self, keep: impl Fn(K) -> bool) {
        self.tat.retain(|p, _| keep(*p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follow_arrival_and_owners_go_when_empty() {
        let mut o = Owners::<u8>::default();
        for (slot, k) in [(0, 1), (1, 2), (2, 1), (5, 1), (3, 2)] {
            o.link(slot, k);
        }
        assert_eq!(o.active(), 2);
        assert_eq!(o.oldest(&1).collect::<Vec<_>>(), [0, 2, 5]);
        assert_eq!(o.oldest(&2).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(o.largest(), Some(1));
        o.unlink(2);
        o.unlink(2); // twice: nothing more
        assert_eq!(o.oldest(&1).collect::<Vec<_>>(), [0, 5]);
        assert_eq!(o.of_slot(5), Some((1, 2)));
        o.unlink(1);
        o.unlink(3);
        assert_eq!(o.active(), 1, "an owner holding nothing is forgotten");
        assert_eq!(o.count(&2), 0);
        assert_eq!(o.of_slot(3), None);
        o.link(3, 9);
        assert_eq!(o.oldest(&9).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn a_share_is_the_pool_over_its_owners_but_never_below_the_floor() {
        let mut o = Owners::<u8>::default();
        assert_eq!(o.share(100, 4, &1), 100, "alone, all of it");
        for s in 0..60 {
            o.link(s, 1);
        }
        assert_eq!(o.share(100, 4, &1), 100);
        assert_eq!(o.share(100, 4, &2), 50, "a newcomer counts");
        assert!(!o.over_share(100, 4, &1));
        o.link(60, 2);
        assert!(o.over_share(100, 4, &1));
        assert!(!o.over_share(100, 4, &2));
        for k in 3..200 {
            o.link(u32::from(k) + 100, k);
        }
        assert_eq!(o.share(100, 4, &1), 4, "many owners: the floor");
    }

    #[test]
    fn a_port_spends_its_own_flood_budget_not_the_others() {
        use crate::lb::limit::RateLimit;
        let mut r = PortRate::new(RateLimit {
            per_sec: 100,
            burst: 10,
        });
        let storm = (0..1_000).filter(|_| r.admit(1u32, 0)).count();
        assert_eq!(storm, 10, "its burst");
        assert!(r.admit(2u32, 0), "another port's budget is whole");
        assert!((0..9).all(|_| r.admit(2u32, 0)));
        assert!(!r.admit(2u32, 0));
        // a second later: a second's worth again (at most the burst)
        let later = (0..1_000).filter(|_| r.admit(1u32, 1_000)).count();
        assert_eq!(later, 10);
        let mut sent = 0;
        for ms in 1_001..3_001 {
            sent += usize::from(r.admit(1u32, ms));
        }
        assert!((199..=201).contains(&sent), "100 a second: {sent}");
        r.retain(|p| p != 1u32);
        assert!(r.admit(1u32, 3_001), "forgotten, then whole again");
    }

    proptest::proptest! {
        /// Whatever is linked and unlinked, the lists hold exactly the linked
        /// slots, each once, oldest first, and the counts agree.
        #[test]
        fn lists_stay_consistent(ops in proptest::collection::vec((0u32..40, 0u8..5, proptest::bool::ANY), 1..400)) {
            let mut o = Owners::<u8>::default();
            let mut model: Vec<(u32, u8)> = Vec::new();
            for (slot, k, add) in ops {
                let held = model.iter().any(|(s, _)| *s == slot);
                if add && !held {
                    o.link(slot, k);
                    model.push((slot, k));
                } else if !add {
                    o.unlink(slot);
                    model.retain(|(s, _)| *s != slot);
                }
                for k in 0..5u8 {
                    let want: Vec<u32> = model.iter().filter(|(_, o)| *o == k).map(|(s, _)| *s).collect();
                    proptest::prop_assert_eq!(o.oldest(&k).collect::<Vec<_>>(), want.clone());
                    proptest::prop_assert_eq!(o.count(&k), want.len());
                }
                let owners = (0..5u8).filter(|k| model.iter().any(|(_, o)| o == k)).count();
                proptest::prop_assert_eq!(o.active(), owners);
            }
        }
    }
}
