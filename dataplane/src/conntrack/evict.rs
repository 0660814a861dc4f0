//! Room in a full table: whose entry goes. Each client (a zone's source
//! address) has a share ([`crate::fair`]); one at its share or more gives up
//! its own entries, anyone else takes an entry not live, or one of a client
//! over its share, first.

use super::EndReason;
use super::{Conntrack, Key, State};
use std::net::IpAddr;

/// Entries looked at to choose one to evict.
const EVICTION_SAMPLE: usize = 32;
/// Oldest entries of its own a client over its share looks at to pick the one
/// it evicts, when the sample holds none of its entries.
const OWN_OLDEST: usize = 4;

impl Conntrack {
    /// The client a connection is counted against: its zone and source
    /// address (anti-spoofing makes that a container's own), hashed with this
    /// run's key.
    /// A keyed multiplicative hash, as the ingress rate limiter's (a hash per
    /// new connection: SipHash cost a tenth of a new flow's setup): for IPv4
    /// a bijection of (zone, address), so two IPv4 clients never share a
    /// count; an IPv6 address is folded in two keyed rounds.
    #[inline]
    pub(super) fn owner_of(&self, orig: &Key) -> u64 {
        let [k0, k1, k2] = self.owner_key;
        let zone = u64::from(orig.zone);
        match orig.src {
            IpAddr::V4(a) => ((zone << 32 | u64::from(u32::from(a))) ^ k0).wrapping_mul(k1),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                let low = (v as u64 ^ k0).wrapping_mul(k1).rotate_left(32);
                (low ^ (v >> 64) as u64 ^ zone.rotate_left(40)).wrapping_mul(k2)
            }
        }
    }

    /// Entries the client of `orig` (its zone and source address) holds.
    pub fn held_by(&self, orig: &Key) -> usize {
        self.owners.count(&self.owner_of(orig))
    }

    /// Makes room in the full table for a new connection of `owner`. An owner
    /// holding its share or more gives up one of its own entries (the least
    /// live and oldest of those in the sample, or of its oldest few if the
    /// sample holds none); any other
    /// takes, from a sample of the table, a half-open entry first, then one of
    /// an owner over its share, then the oldest. O(1): a sample of
    /// [`EVICTION_SAMPLE`] slots and [`OWN_OLDEST`] of the owner's list.
    pub(super) fn evict_for(&mut self, owner: u64) {
        let (max, floor) = (self.max, self.share_floor);
        let share = self.owners.share(max, floor, &owner);
        let greedy = self.owners.count(&owner) >= share;
        let n = self.slab.len();
        // (live?, owner within its share?, last seen, slot): smallest goes
        let rank = |this: &Self, i: usize| {
            let e = this.slab[i].as_ref()?;
            let live = matches!(e.state, State::Established | State::Replied);
            let (o, held) = this.owners.of_slot(i as u32)?;
            if greedy && o != owner {
                return None;
            }
            Some((live, held < share, this.touch[i].last_ms(), i as u32))
        };
        let mut best: Option<(bool, bool, u64, u32)> = None;
        let mut seen = 0;
        let mut k = 0;
        while seen < EVICTION_SAMPLE && k < n {
            let i = (self.cursor + k) % n;
            k += 1;
            if self.slab[i].is_some() {
                seen += 1;
                if let Some(r) = rank(self, i) {
                    if best.is_none_or(|b| r < b) {
                        best = Some(r);
                    }
                }
            }
        }
        self.cursor = (self.cursor + k) % n.max(1);
        // the sample holds none of its own (it holds little of the table):
        // its oldest few
        if greedy && best.is_none() {
            for i in self.owners.oldest(&owner).take(OWN_OLDEST) {
                if let Some(r) = rank(self, i as usize) {
                    if best.is_none_or(|b| r < b) {
                        best = Some(r);
                    }
                }
            }
        }
        if let Some((_, _, _, id)) = best {
            self.discard(id, EndReason::Evicted);
            self.evicted += 1;
        }
    }
}

/// Three odd random 64-bit numbers (std's per-instance random hash keys as
/// the source).
pub(super) fn random_keys() -> [u64; 3] {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    [1u64, 2, 3].map(|i| {
        let mut h = s.build_hasher();
        h.write_u64(i);
        h.finish() | 1
    })
}
