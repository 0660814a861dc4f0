//! The DNS queries a worker relayed to the node's resolvers and waits on,
//! by the id it gave them: at most `--dns-forwards-max`, shared fairly between
//! the ports that ask (sans-IO: the clock is passed in).
//!
//! When every slot is taken, a port holding its share of them or more
//! ([`crate::fair`]) is refused (`dns_busy`), and any other port takes the
//! oldest query of the port holding the most (whose answer, if it comes, is
//! then dropped as unknown). So a container flooding the relay with queries
//! for names that never resolve fills the slots only until another container
//! asks: it cannot make the others wait out its queries' timeouts.

use crate::fair::Owners;
use crate::switch::PortId;
use rustc_hash::FxHashMap;

/// The query was refused: its port holds its share of a full relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

struct Slot<T> {
    id: u16,
    port: PortId,
    since_ms: u64,
    value: T,
}

pub struct DnsPending<T> {
    max: usize,
    floor: usize,
    by_id: FxHashMap<u16, u32>,
    slots: Vec<Option<Slot<T>>>,
    free: Vec<u32>,
    owners: Owners<PortId>,
}

impl<T> DnsPending<T> {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            floor: crate::fair::share_floor(max),
            by_id: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            owners: Owners::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: u16) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Queries `port` has waiting.
    pub fn held_by(&self, port: PortId) -> usize {
        self.owners.count(&port)
    }

    /// Takes a slot for `port`'s query under `id` (not pending already).
    /// `Ok(true)`: another port's oldest query was dropped to make room.
    pub fn insert(&mut self, id: u16, port: PortId, now_ms: u64, value: T) -> Result<bool, Busy> {
        debug_assert!(!self.contains(id), "id {id} pending twice");
        let mut evicted = false;
        if self.len() >= self.max {
            if self.owners.over_share(self.max, self.floor, &port) {
                return Err(Busy);
            }
            let oldest = self
                .owners
                .largest()
                .and_then(|p| self.owners.oldest(&p).next());
            let Some(slot) = oldest else {
                return Err(Busy);
            };
            self.take(slot);
            evicted = true;
        }
        let s = Slot {
            id,
            port,
            since_ms: now_ms,
            value,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(s);
                i
            }
            None => {
                self.slots.push(Some(s));
                (self.slots.len() - 1) as u32
            }
        };
        self.owners.link(slot, port);
        self.by_id.insert(id, slot);
        Ok(evicted)
    }

    /// The query sent under `id`, answered (or given up): who asked, and what
    /// was kept with it.
    pub fn remove(&mut self, id: u16) -> Option<(PortId, T)> {
        let slot = *self.by_id.get(&id)?;
        self.take(slot)
    }

    fn take(&mut self, slot: u32) -> Option<(PortId, T)> {
        let s = self.slots.get_mut(slot as usize)?.take()?;
        self.by_id.remove(&s.id);
        self.owners.unlink(slot);
        self.free.push(slot);
        Some((s.port, s.value))
    }

    /// Gives up on queries waiting `ttl_ms` or longer.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        for i in 0..self.slots.len() {
            let due = self.slots[i]
                .as_ref()
                .is_some_and(|s| now_ms.saturating_sub(s.since_ms) >= ttl_ms);
            if due {
                self.take(i as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABUSER: PortId = PortId(1);
    const VICTIM: PortId = PortId(2);

    #[test]
    fn a_port_flooding_the_relay_cannot_starve_another() {
        let mut p = DnsPending::new(64);
        for id in 0..64 {
            assert_eq!(
                p.insert(id, ABUSER, 0, id),
                Ok(false),
                "room while not full"
            );
        }
        // full: the abuser holds more than its share and is refused
        assert_eq!(p.insert(100, ABUSER, 1, 100), Err(Busy));
        // the victim is not: it takes the abuser's oldest query
        for id in 200..232 {
            assert_eq!(p.insert(id, VICTIM, 2, id), Ok(true));
        }
        assert_eq!(p.len(), 64);
        assert!(
            !p.contains(0) && !p.contains(31) && p.contains(32),
            "oldest first"
        );
        assert_eq!((p.held_by(ABUSER), p.held_by(VICTIM)), (32, 32));
        // now each holds its share: both are refused until slots free up
        assert_eq!(p.insert(300, VICTIM, 3, 300), Err(Busy));
        assert_eq!(p.insert(301, ABUSER, 3, 301), Err(Busy));
        // answers come back to who asked, once
        assert_eq!(p.remove(200), Some((VICTIM, 200)));
        assert_eq!(p.remove(200), None);
        assert_eq!(p.remove(0), None, "evicted: its answer is unknown");
        assert_eq!(p.insert(300, VICTIM, 4, 300), Ok(false));
        // a third port takes from the largest holder
        assert_eq!(p.insert(400, PortId(3), 5, 400), Ok(true));
        assert_eq!(p.held_by(PortId(3)), 1);
    }

    #[test]
    fn queries_time_out_and_their_slots_come_back() {
        let mut p = DnsPending::new(8);
        for id in 0..4 {
            p.insert(id, ABUSER, 0, ()).unwrap();
        }
        for id in 4..8 {
            p.insert(id, VICTIM, 3_000, ()).unwrap();
        }
        p.expire(5_000, 5_000);
        assert_eq!((p.len(), p.held_by(ABUSER)), (4, 0));
        p.expire(8_000, 5_000);
        assert!(p.is_empty());
        for id in 10..18 {
            assert_eq!(p.insert(id, ABUSER, 9_000, ()), Ok(false));
        }
    }
}
