//! MACs learned from static peer VTEPs (which publish nothing to our store).
//! Bounded: a peer flooding random source MACs cannot grow it past its limit,
//! and keyed ([`crate::keyed`]): nor can it pick MACs that share a bucket.

use crate::keyed::KeyedHashMap;
use crate::Mac;
use std::net::IpAddr;

/// Entries not refreshed for this long are ignored and may be replaced (the kernel
/// bridge's default ageing time).
pub const AGEING_MS: u64 = 300_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    vtep: IpAddr,
    seen_ms: u64,
}

/// A full table looks for aged entries to reclaim at most this often: a peer
/// flooding new MACs into a full table of live ones costs a lookup a frame,
/// not a walk of the whole table.
const RECLAIM_EVERY_MS: u64 = 1_000;

pub struct LearnedFdb {
    map: KeyedHashMap<(u32, Mac), Entry>,
    max: usize,
    /// When a full table last looked for aged entries (`None`: never).
    reclaimed_ms: Option<u64>,
}

pub enum Learn {
    Known,
    New,
    Full,
}

impl LearnedFdb {
    pub fn new(max: usize) -> Self {
        let mut map = KeyedHashMap::default();
        map.reserve(max.min(4096));
        Self {
            map,
            max,
            reclaimed_ms: None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn lookup(&self, vni: u32, mac: &Mac, now_ms: u64) -> Option<IpAddr> {
        self.map
            .get(&(vni, *mac))
            .filter(|e| now_ms.saturating_sub(e.seen_ms) < AGEING_MS)
            .map(|e| e.vtep)
    }

    pub fn learn(&mut self, vni: u32, mac: Mac, vtep: IpAddr, now_ms: u64) -> Learn {
        if let Some(e) = self.map.get_mut(&(vni, mac)) {
            e.vtep = vtep;
            e.seen_ms = now_ms;
            return Learn::Known;
        }
        if self.map.len() >= self.max {
            // Reclaim aged entries: only when full, and at most once a second.
            let due = self
                .reclaimed_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= RECLAIM_EVERY_MS);
            if due {
                self.reclaimed_ms = Some(now_ms);
                self.map
                    .retain(|_, e| now_ms.saturating_sub(e.seen_ms) < AGEING_MS);
            }
            if self.map.len() >= self.max {
                return Learn::Full;
            }
        }
        self.map.insert(
            (vni, mac),
            Entry {
                vtep,
                seen_ms: now_ms,
            },
        );
        Learn::New
    }

    /// Forgets what was learned from VTEPs no longer allowed on a VNI.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &IpAddr) -> bool) {
        self.map.retain(|(vni, _), e| keep(*vni, &e.vtep));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ageing() {
        let v: IpAddr = "192.0.2.1".parse().unwrap();
        let mut f = LearnedFdb::new(2);
        assert!(matches!(f.learn(1, [2, 0, 0, 0, 0, 1], v, 0), Learn::New));
        assert!(matches!(f.learn(1, [2, 0, 0, 0, 0, 2], v, 0), Learn::New));
        assert!(matches!(f.learn(1, [2, 0, 0, 0, 0, 3], v, 10), Learn::Full));
        assert_eq!(f.len(), 2);
        assert_eq!(f.lookup(1, &[2, 0, 0, 0, 0, 1], 10), Some(v));
        assert_eq!(f.lookup(2, &[2, 0, 0, 0, 0, 1], 10), None);
        // after ageing, the table makes room again
        assert!(matches!(
            f.learn(1, [2, 0, 0, 0, 0, 3], v, AGEING_MS + 1),
            Learn::New
        ));
        assert_eq!(f.lookup(1, &[2, 0, 0, 0, 0, 1], AGEING_MS + 1), None);
    }

    proptest::proptest! {
        /// Whatever a peer sends (any MACs, VNIs, VTEPs, times), the table
        /// never holds more than its maximum.
        #[test]
        fn never_past_its_maximum(
            max in 1usize..64,
            frames in proptest::collection::vec(
                (0u32..4, proptest::array::uniform6(0u8..8), 0u8..4, 0u64..AGEING_MS),
                1..400,
            ),
        ) {
            let mut f = LearnedFdb::new(max);
            let mut now = 0;
            for (vni, mac, vtep, dt) in frames {
                now += dt / 8;
                f.learn(vni, mac, IpAddr::from([192, 0, 2, vtep]), now);
                proptest::prop_assert!(f.len() <= max);
            }
        }
    }

    #[test]
    fn a_full_table_of_live_entries_is_not_walked_for_every_new_mac() {
        let v: IpAddr = "192.0.2.1".parse().unwrap();
        let mut f = LearnedFdb::new(2);
        f.learn(1, [2, 0, 0, 0, 0, 1], v, 0);
        f.learn(1, [2, 0, 0, 0, 0, 2], v, AGEING_MS - 10);
        assert!(matches!(
            f.learn(1, [2, 0, 0, 0, 0, 3], v, AGEING_MS - 5),
            Learn::Full
        ));
        // the first entry has aged now, but the last look was under a second ago
        assert!(matches!(
            f.learn(1, [2, 0, 0, 0, 0, 3], v, AGEING_MS + 1),
            Learn::Full
        ));
        // a second on, the table looks again and finds room
        assert!(matches!(
            f.learn(1, [2, 0, 0, 0, 0, 3], v, AGEING_MS + 1_000),
            Learn::New
        ));
        assert_eq!(f.len(), 2);
    }
}
