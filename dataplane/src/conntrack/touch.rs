//! What a packet of a known connection changes, kept beside the table so that a
//! worker can write it without taking the table's lock: when the connection was
//! last seen, where each side's next TCP segment starts, a generation that
//! tells a worker's cached copy of the connection ([`super::cache`]) that it is
//! stale, and (while flow logs are on) the packets and bytes each way, which
//! its end record reports. The counts sit here rather than in the table's
//! record, which stays at 40 bytes for lookups, and on the line every packet
//! already writes (its last-seen time), so counting costs no further miss.
//!
//! There is one slot per entry the table may ever hold, allocated once (the
//! table never grows past its limit), so a slot stays where it is for as long as
//! any worker holds the array. Every field is atomic and written with plain
//! stores: a race costs at worst one packet's worth of "last seen" or sequence
//! number on a slot just reused, never memory safety.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// What one switched buffer carries on the wire, as flow logs count it: IP
/// packets and their bytes (a TSO super-frame: its segments, each with its
/// own headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    pub packets: u32,
    pub bytes: u32,
}

#[derive(Debug, Default)]
pub struct Touch {
    /// Bumped, under the table's lock, whenever the slot's connection changes
    /// state or goes away.
    gen: AtomicU32,
    last_ms: AtomicU64,
    /// The sequence number each side (client, backend) sends next.
    seq: [AtomicU32; 2],
    /// Packets and bytes from each side (client, backend), while flow logs
    /// are on.
    packets: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
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

    /// Counts what one switched buffer carried from `side` (a TSO super-frame
    /// counts as the segments it leaves as). A load and a store, not an
    /// atomic add: one direction of a flow is read by one worker (the kernel
    /// hashes a flow to one queue and one socket), so there is one writer per
    /// side; were there two for a moment, a count would be lost, never memory.
    #[inline]
    pub fn count(&self, side: usize, w: Wire) {
        let (p, b) = (&self.packets[side & 1], &self.bytes[side & 1]);
        p.store(
            p.load(Ordering::Relaxed).wrapping_add(u64::from(w.packets)),
            Ordering::Relaxed,
        );
        b.store(
            b.load(Ordering::Relaxed).wrapping_add(u64::from(w.bytes)),
            Ordering::Relaxed,
        );
    }

    /// Packets and bytes from (client, backend).
    pub fn counts(&self) -> ([u64; 2], [u64; 2]) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            [l(&self.packets[0]), l(&self.packets[1])],
            [l(&self.bytes[0]), l(&self.bytes[1])],
        )
    }

    /// Starts the slot over for a new connection (its generation moves on, so
    /// nothing cached of the slot's previous connection matches).
    pub(super) fn reset(&self, now_ms: u64) {
        self.bump();
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.seq[0].store(0, Ordering::Relaxed);
        self.seq[1].store(0, Ordering::Relaxed);
        for a in self.packets.iter().chain(&self.bytes) {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// The slots of a table of `max` entries.
pub fn slots(max: usize) -> Arc<[Touch]> {
    (0..max).map(|_| Touch::default()).collect()
}
