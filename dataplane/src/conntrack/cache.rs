//! A worker's own copy of the connections it forwards, so that a packet of an
//! established connection is translated without the shared table's lock (whose
//! two atomic operations alone cost about as much as switching a frame).
//!
//! Only packets that cannot change their connection's state are served here:
//! TCP segments without SYN, FIN or RST on an established connection, UDP and
//! ICMP once answered (and a client's packets before). Anything else goes to the
//! table, which moves the slot's generation on whenever the state changes or the
//! entry goes, so a stale copy is noticed on its next use (and replaced when
//! the table's answer is cached again). The worker empties the cache on every
//! control-plane change it applies: until then (a poll round at most) a cached
//! backend's MAC and location are the previous state's, as they would be for a
//! packet already in flight.

use super::touch::Touch;
use super::{Dir, Key, TCP_FIN, TCP_RST, TCP_SYN};
use crate::keyed::KeyedHashMap;
use crate::{Location, Mac};
use std::net::IpAddr;
use std::sync::Arc;

/// Connections one worker keeps; past this the cache starts over (a flow not
/// cached costs one trip to the table, then is cached again).
pub const CAPACITY: usize = 16_384;

/// What a cached packet is rewritten to. The paths' keys do not meet: a
/// client's packet is keyed by the address it sent to (a VIP, the sandbox, or
/// on a task's node the task itself, for a connection from another node's
/// ingress), a reply by the backend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub id: u32,
    pub gen: u32,
    pub dir: Dir,
    /// The address and port the packet is translated to: the backend's for a
    /// client's packet, the service's for a reply.
    pub ip: IpAddr,
    pub port: u16,
    /// The backend's MAC, for a client's packet.
    pub mac: Mac,
    /// Where that MAC is, for a client's packet (`None`: nowhere known).
    pub at: Option<Location>,
    /// For a connection that came in through another node's ingress: that
    /// node's sandbox MAC, where the replies go back to.
    pub via: Option<Mac>,
}

impl Hit {
    /// Connection `id`'s packets in `dir` translated to (`ip`, `port`); the
    /// path that needs them fills in the MAC, location or way back.
    pub fn new(id: u32, dir: Dir, ip: IpAddr, port: u16) -> Self {
        Hit {
            id,
            gen: 0,
            dir,
            ip,
            port,
            mac: [0; 6],
            at: None,
            via: None,
        }
    }
}

pub struct FlowCache {
    /// IPv4 flows by their key packed in 128 bits ([`packed_v4`]): hashed as
    /// one 128-bit word and compared as one integer, which the whole `Key` (its
    /// addresses of either family) is not. Both maps are keyed
    /// ([`crate::keyed`]): a client picks their keys.
    v4: KeyedHashMap<u128, Hit>,
    v6: KeyedHashMap<Key, Hit>,
    touch: Arc<[Touch]>,
}

/// An IPv4 key as one integer (the zone is a 24-bit VNI); `None` for IPv6.
#[inline(always)]
fn packed_v4(k: &Key) -> Option<u128> {
    match (k.src, k.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(
            u128::from(u32::from(s)) << 96
                | u128::from(u32::from(d)) << 64
                | u128::from(k.sport) << 48
                | u128::from(k.dport) << 32
                | u128::from(k.proto) << 24
                | u128::from(k.zone & 0x00ff_ffff),
        ),
        _ => None,
    }
}

impl FlowCache {
    pub fn new(touch: Arc<[Touch]>) -> Self {
        Self {
            v4: KeyedHashMap::default(),
            v6: KeyedHashMap::default(),
            touch,
        }
    }

    /// A packet of a connection cached in direction `dir`: noted (last seen,
    /// next sequence number) and its translation returned. `None`: ask the table.
    #[inline(always)]
    pub fn hit(
        &self,
        key: &Key,
        dir: Dir,
        tcp_flags: u8,
        seq_end: u32,
        now_ms: u64,
    ) -> Option<&Hit> {
        if key.proto == 6 && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            return None;
        }
        let h = match packed_v4(key) {
            Some(p) => self.v4.get(&p)?,
            None => self.v6.get(key)?,
        };
        let t = self.touch.get(h.id as usize)?;
        if h.dir != dir || t.gen() != h.gen {
            return None;
        }
        t.seen(now_ms);
        if key.proto == 6 {
            t.set_next_seq(dir as usize, seq_end);
        }
        Some(h)
    }

    /// Counts a packet of `len` bytes of connection `id` from `dir`'s side
    /// (flow logs: see [`Touch::count`]).
    #[inline(always)]
    pub fn count(&self, id: u32, dir: Dir, len: super::touch::Wire) {
        if let Some(t) = self.touch.get(id as usize) {
            t.count(dir as usize, len);
        }
    }

    /// Keeps `hit` for `key` if the table gave the generation to keep it
    /// under ([`super::Conntrack::cacheable`]), and returns it.
    pub fn keep(&mut self, key: Key, gen: Option<u32>, hit: Hit) -> Hit {
        if let Some(gen) = gen {
            self.fill(key, Hit { gen, ..hit });
        }
        hit
    }

    fn fill(&mut self, key: Key, hit: Hit) {
        match packed_v4(&key) {
            Some(p) => {
                if self.v4.len() >= CAPACITY && !self.v4.contains_key(&p) {
                    self.v4.clear();
                }
                self.v4.insert(p, hit);
            }
            None => {
                if self.v6.len() >= CAPACITY && !self.v6.contains_key(&key) {
                    self.v6.clear();
                }
                self.v6.insert(key, hit);
            }
        }
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
}
