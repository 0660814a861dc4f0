//! What a packet of a known connection changes, kept beside the table so that a
//! worker can write it without taking the table's lock: when the connection was
//! last seen, where each side's next TCP segment starts, and a generation that
//! tells a worker's cached copy of the connection ([`super::cache`]) that it is
//! stale.
//!
//! There is one slot per entry the table may ever hold, allocated once (the
//! table never grows past its limit), so a slot stays where it is for as long as
//! any worker holds the array. Every field is atomic and written with plain
//! stores: a race costs at worst one packet's worth of "last seen" or sequence
//! number on a slot just reused, never memory safety.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Touch {
    /// Bumped, under the table's lock, whenever the slot's connection changes
    /// state or goes away.
    gen: AtomicU32,
    last_ms: AtomicU64,
    /// The sequence number each side (client, backend) sends next.
    seq: [AtomicU32; 2],
}

impl Touch {
    #[inline]
    pub fn gen(&self) -> u32 {
        self.gen.load(Ordering::Acquire)
    }

    pub(super) fn bump(&self) {
        self.gen.fetch_add(1, Ordering::Release);
    }

    #[inline]
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }

    /// Notes a packet at `now_ms`; the shared line is written once per
    /// millisecond, not per packet.
    #[inline]
    pub fn seen(&self, now_ms: u64) {
        if self.last_ms.load(Ordering::Relaxed) != now_ms {
            self.last_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn next_seq(&self, side: usize) -> u32 {
        self.seq[side & 1].load(Ordering::Relaxed)
    }

    /// Stored only when it moved, so the side that only acknowledges (one
    /// direction of a bulk transfer) does not keep pulling the line to its core.
    #[inline]
    pub fn set_next_seq(&self, side: usize, seq: u32) {
        let s = &self.seq[side & 1];
        if s.load(Ordering::Relaxed) != seq {
            s.store(seq, Ordering::Relaxed);
        }
    }

    /// Starts the slot over for a new connection (its generation moves on, so
    /// nothing cached of the slot's previous connection matches).
    pub(super) fn reset(&self, now_ms: u64) {
        self.bump();
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.seq[0].store(0, Ordering::Relaxed);
        self.seq[1].store(0, Ordering::Relaxed);
    }
}

/// The slots of a table of `max` entries.
pub fn slots(max: usize) -> Arc<[Touch]> {
    (0..max).map(|_| Touch::default()).collect()
}
