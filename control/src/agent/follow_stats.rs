//! What following the store costs this agent: how many state reads and
//! reconciles it made and how long they took. The scale harness (issue 21)
//! reads them through `vxmesh stats` to tell the store's share of a change's
//! cost from the dataplane's, without a profiler attached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct FollowStats {
    loads: AtomicU64,
    load_ns: AtomicU64,
    reconciles: AtomicU64,
    reconcile_ns: AtomicU64,
    last_reconcile_ns: AtomicU64,
    /// Objects (networks, nodes, endpoints, services, policies) in the last
    /// state applied: what one reconcile walks.
    objects: AtomicU64,
}

impl FollowStats {
    pub fn loaded(&self, took: Duration) {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.load_ns.fetch_add(nanos(took), Ordering::Relaxed);
    }

    pub fn reconciled(&self, took: Duration, objects: usize) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.reconcile_ns.fetch_add(nanos(took), Ordering::Relaxed);
        self.last_reconcile_ns.store(nanos(took), Ordering::Relaxed);
        self.objects.store(objects as u64, Ordering::Relaxed);
    }

    /// The counts as `vxmesh stats` shows them (its `follow`).
    pub fn costs(&self) -> crate::api_types::stats::Follow {
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        crate::api_types::stats::Follow {
            loads: self.loads.load(Ordering::Relaxed),
            load_seconds: secs(&self.load_ns),
            reconciles: self.reconciles.load(Ordering::Relaxed),
            reconcile_seconds: secs(&self.reconcile_ns),
            last_reconcile_seconds: secs(&self.last_reconcile_ns),
            objects: self.objects.load(Ordering::Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sums() {
        let s = FollowStats::default();
        s.loaded(Duration::from_millis(2));
        s.reconciled(Duration::from_millis(3), 7);
        s.reconciled(Duration::from_millis(5), 9);
        let j = s.costs();
        assert_eq!(j.loads, 1);
        assert_eq!(j.reconciles, 2);
        assert!((j.reconcile_seconds - 0.008).abs() < 1e-9);
        assert!((j.last_reconcile_seconds - 0.005).abs() < 1e-9);
        assert_eq!(j.objects, 9);
    }
}
