//! Packets and bytes in and out, per network and per port, for the metrics.
//!
//! One [`Traffic`] per network or port, made when it is installed (never per
//! packet) and shared by the workers (a handle: clones count into the same
//! lanes): each worker counts in a lane of its own (a cache line of relaxed
//! atomics that only it writes, so a count is a plain load and store, no locked
//! instruction and no line bouncing between cores), and a scrape sums the lanes.
//! The lanes sit right behind the handle's pointer: one load to reach them.

#![forbid(unsafe_code)]

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One worker's counts. Aligned to a cache line so workers never share one.
#[derive(Default)]
#[repr(align(64))]
struct Lane {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
}

/// Adds `n` to a counter only the calling worker writes.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// The sum over every lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrafficTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// The counts of one network or port. Lane `i` must only be written by worker
/// `i` (counts from a lane that does not exist are not taken).
#[derive(Clone)]
pub struct Traffic {
    lanes: Arc<[Lane]>,
}

impl Traffic {
    /// Counters for `workers` workers (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            lanes: (0..workers.max(1)).map(|_| Lane::default()).collect(),
        }
    }

    /// `packets` packets of `bytes` bytes in all, in.
    #[inline(always)]
    pub fn rx(&self, lane: usize, packets: u64, bytes: u64) {
        if let Some(l) = self.lanes.get(lane) {
            bump(&l.rx_packets, packets);
            bump(&l.rx_bytes, bytes);
        }
    }

    /// `packets` packets of `bytes` bytes in all, out.
    #[inline(always)]
    pub fn tx(&self, lane: usize, packets: u64, bytes: u64) {
        if let Some(l) = self.lanes.get(lane) {
            bump(&l.tx_packets, packets);
            bump(&l.tx_bytes, bytes);
        }
    }

    pub fn totals(&self) -> TrafficTotals {
        let mut t = TrafficTotals::default();
        for l in self.lanes.iter() {
            t.rx_packets += l.rx_packets.load(Relaxed);
            t.rx_bytes += l.rx_bytes.load(Relaxed);
            t.tx_packets += l.tx_packets.load(Relaxed);
            t.tx_bytes += l.tx_bytes.load(Relaxed);
        }
        t
    }
}

impl Default for Traffic {
    /// One lane: enough for a switch used alone (tests, benches).
    fn default() -> Self {
        Self::new(1)
    }
}

/// Counters are not state: two views that differ only in their counts are the
/// same view.
impl PartialEq for Traffic {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Traffic {}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.totals().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_sum_and_a_missing_lane_counts_nothing() {
        let t = Traffic::new(2);
        t.rx(0, 1, 100);
        t.rx(1, 1, 50);
        t.tx(1, 3, 300);
        t.rx(2, 1, 1000);
        assert_eq!(
            t.totals(),
            TrafficTotals {
                rx_packets: 2,
                rx_bytes: 150,
                tx_packets: 3,
                tx_bytes: 300
            }
        );
        assert_eq!(std::mem::align_of::<Lane>(), 64);
    }
}
