//! Flow logs (`vxmesh flows`): a record per connection set up and ended, and
//! per packet dropped, written by each worker into its own bounded ring
//! ([`ring`]) for the agent to drain, name and keep.
//!
//! The forwarding path pays nothing per packet but two relaxed counters in
//! the connection's touch slot ([`crate::conntrack::touch`]): records are
//! written when a connection is set up or ends, which already takes the
//! table's lock, and when a packet is dropped. Nothing here locks or
//! allocates; a full ring loses the record and counts it (`flow_log_lost`).
//! Under load the ring samples: above [`WATERMARK`] of its capacity, one
//! connection record in [`SAMPLE`] is kept (the record says so, and the others
//! count in `flow_log_sampled`). Drop records pass a token bucket per worker
//! (a flood of drops must not become a flood of records); those over it count
//! in `flow_log_drops_limited`.

pub mod event;
pub mod ring;

pub use event::{EndReason, FlowEvent, Kind, Verdict};

use crate::counters::Counters;
use crate::lb::limit::{Bucket, RateLimit};

/// Records a worker's ring holds by default: at 120 bytes a record, 480 KiB
/// per worker, two seconds of 2,000 new connections a second between drains.
pub const RING: usize = 4096;
/// Drop records a worker writes, at most, by default.
pub const DROP_RATE: RateLimit = RateLimit {
    per_sec: 100,
    burst: 200,
};
/// Fill (of the ring's capacity, in quarters) above which connection records
/// are sampled.
pub const WATERMARK: usize = 3;
/// One connection record in this many is kept above the watermark.
pub const SAMPLE: u32 = 8;

/// What a dataplane writes flow records with (`None` in the limits: off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLogConfig {
    /// Records per worker's ring.
    pub ring: usize,
    /// Drop records per second (and burst) per worker.
    pub drops: RateLimit,
}

impl Default for FlowLogConfig {
    fn default() -> Self {
        FlowLogConfig {
            ring: RING,
            drops: DROP_RATE,
        }
    }
}

/// One worker's writing end.
pub struct FlowLog {
    ring: ring::Producer<FlowEvent>,
    drops: Bucket,
    /// Connection records seen above the watermark (one in [`SAMPLE`] kept).
    seq: u32,
}

/// The agent's reading end of one worker's ring.
pub type FlowReader = ring::Consumer<FlowEvent>;

impl FlowLog {
    /// A worker's log and the agent's reader of it.
    pub fn new(cfg: FlowLogConfig) -> (Self, FlowReader) {
        let (ring, reader) = ring::ring(cfg.ring, FlowEvent::default());
        (
            FlowLog {
                ring,
                drops: Bucket::new(cfg.drops),
                seq: 0,
            },
            reader,
        )
    }

    /// Writes a connection record (set up, or ended), sampled when the ring
    /// is above its watermark.
    #[inline]
    pub fn connection(&mut self, mut e: FlowEvent, c: &mut Counters) {
        if self.ring.len() * 4 >= self.ring.capacity() * WATERMARK {
            self.seq = self.seq.wrapping_add(1);
            if !self.seq.is_multiple_of(SAMPLE) {
                c.flow_log_sampled += 1;
                return;
            }
            e.sample = SAMPLE;
        }
        if !self.ring.push(e) {
            c.flow_log_lost += 1;
        }
    }

    /// Writes a drop record, if the worker's drop-record budget allows.
    #[inline]
    pub fn dropped(&mut self, e: FlowEvent, now_ms: u64, c: &mut Counters) {
        if !self.drops.admit(now_ms) {
            c.flow_log_drops_limited += 1;
            return;
        }
        if !self.ring.push(e) {
            c.flow_log_lost += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::DropReason;

    fn open(at_ms: u64) -> FlowEvent {
        FlowEvent {
            at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_full_ring_counts_what_it_lost() {
        let (mut log, mut reader) = FlowLog::new(FlowLogConfig {
            ring: 4,
            ..Default::default()
        });
        let mut c = Counters::default();
        // below the watermark (3 of 4) everything is kept; at it, one in SAMPLE
        for i in 0..3 {
            log.connection(open(i), &mut c);
        }
        assert_eq!(c.flow_log_sampled, 0);
        for i in 3..3 + u64::from(SAMPLE) {
            log.connection(open(i), &mut c);
        }
        assert_eq!(c.flow_log_sampled, u64::from(SAMPLE) - 1);
        assert_eq!(c.flow_log_lost, 0);
        let mut out = Vec::new();
        reader.drain_into(&mut out, usize::MAX);
        assert_eq!(out.len(), 4);
        assert_eq!(out[3].sample, SAMPLE, "a sampled record says so");
        assert!(out[..3].iter().all(|e| e.sample == 1));
        // drops are not sampled: a full ring loses them, counted
        let mut d = FlowEvent {
            kind: Kind::Drop(DropReason::PolicyDrop),
            ..Default::default()
        };
        for i in 0..6 {
            d.at_ms = i;
            log.dropped(d, 0, &mut c);
        }
        assert_eq!(c.flow_log_lost, 2);
        out.clear();
        reader.drain_into(&mut out, usize::MAX);
        assert_eq!(
            out.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn drop_records_pass_a_token_bucket() {
        let (mut log, mut reader) = FlowLog::new(FlowLogConfig {
            ring: 64,
            drops: RateLimit {
                per_sec: 10,
                burst: 5,
            },
        });
        let mut c = Counters::default();
        let d = FlowEvent {
            kind: Kind::Drop(DropReason::NoBackend),
            ..Default::default()
        };
        for _ in 0..20 {
            log.dropped(d, 1_000, &mut c);
        }
        assert_eq!(c.flow_log_drops_limited, 15, "a burst of 5");
        // 100 ms later: one more token
        log.dropped(d, 1_100, &mut c);
        log.dropped(d, 1_100, &mut c);
        assert_eq!(c.flow_log_drops_limited, 16);
        let mut out = Vec::new();
        assert_eq!(reader.drain_into(&mut out, usize::MAX), 6);
    }
}

#[cfg(test)]
mod sizes {
    /// What a record and a connection's touch slot take (docs/architecture.md
    /// and docs/benchmarks.md quote them).
    #[test]
    fn sizes_as_documented() {
        assert_eq!(std::mem::size_of::<super::FlowEvent>(), 120);
        assert_eq!(std::mem::size_of::<crate::conntrack::touch::Touch>(), 56);
    }
}
