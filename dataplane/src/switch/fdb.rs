//! MACs learned from static peer VTEPs (which publish nothing to our store).
//! Bounded: a peer flooding random source MACs cannot grow it past its limit.

use crate::Mac;
use rustc_hash::FxHashMap;
use std::net::IpAddr;

/// Entries not refreshed for this long are ignored and may be replaced (the kernel
/// bridge's default ageing time).
pub const AGEING_MS: u64 = 300_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    vtep: IpAddr,
    seen_ms: u64,
}

pub struct LearnedFdb {
    map: FxHashMap<(u32, Mac), Entry>,
    max: usize,
}

pub enum Learn {
    Known,
    New,
    Full,
}

impl LearnedFdb {
    pub fn new(max: usize) -> Self {
        let mut map = FxHashMap::default();
        map.reserve(max.min(4096));
        Self { map, max }
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
            // Reclaim aged entries; done only when full, so its cost is paid rarely.
            self.map
                .retain(|_, e| now_ms.saturating_sub(e.seen_ms) < AGEING_MS);
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
}
