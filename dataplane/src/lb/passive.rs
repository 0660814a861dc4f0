//! Passive health: backends judged by how they answer real connections, between
//! (or without) active probes. A backend that answers new TCP connections with a
//! RST, or not at all (the client retransmits its SYN, or the table's sweep
//! finds the SYN unanswered after [`SYN_RETRY_MS`]), is taken out of
//! scheduling after a few failures in a row, for a while, then given another
//! chance (nginx's `max_fails`/`fail_timeout`, Envoy's outlier detection).

use rustc_hash::FxHashMap;
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;

/// Failures in a row that take a backend out.
pub const MAX_FAILS: u8 = 3;
/// How long it stays out before new connections may try it again.
pub const OUT_MS: u64 = 10_000;
/// A SYN unanswered this long (seen again, or found so by the table's
/// sweep) counts as a failure of its backend.
pub const SYN_RETRY_MS: u64 = 800;

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    fails: u8,
    out_until_ms: u64,
}

/// Backends whose answers are remembered, at most. Only backends the state
/// has get connections (and [`PassiveHealth::retain`] forgets the others on
/// every change), so this is a backstop, far above any real cluster's count.
pub const MAX_RECORDS: usize = 65_536;

/// Per (zone, fwmark, backend address): bounded by the backends the state has,
/// since only those get connections, and by [`MAX_RECORDS`] whatever happens.
#[derive(Debug, Default)]
pub struct PassiveHealth {
    records: FxHashMap<(u32, u32, IpAddr), Record>,
    /// Times a backend was taken out.
    pub ejections: u64,
}

impl PassiveHealth {
    pub fn failed(&mut self, key: (u32, u32, IpAddr), now_ms: u64) {
        if self.records.len() >= MAX_RECORDS && !self.records.contains_key(&key) {
            // full: forget the backends that are not out (a failure or two in
            // a row is all they hold); if every one is out, this one waits
            self.records.retain(|_, r| r.out_until_ms > now_ms);
            if self.records.len() >= MAX_RECORDS {
                return;
            }
        }
        let r = self.records.entry(key).or_default();
        r.fails = r.fails.saturating_add(1);
        if r.fails >= MAX_FAILS && r.out_until_ms <= now_ms {
            r.out_until_ms = now_ms + OUT_MS;
            // one more failure after the pause takes it out again
            r.fails = MAX_FAILS - 1;
            self.ejections += 1;
        }
    }

    pub fn answered(&mut self, key: (u32, u32, IpAddr)) {
        if let Some(r) = self.records.get_mut(&key) {
            r.fails = 0;
        }
    }

    pub fn is_out(&self, key: (u32, u32, IpAddr), now_ms: u64) -> bool {
        self.records
            .get(&key)
            .is_some_and(|r| r.out_until_ms > now_ms)
    }

    /// The backends out at `now_ms` (for `lb ls`).
    pub fn out(&self, now_ms: u64) -> impl Iterator<Item = (u32, u32, IpAddr)> + '_ {
        self.records
            .iter()
            .filter(move |(_, r)| r.out_until_ms > now_ms)
            .map(|(k, _)| *k)
    }

    /// Forgets backends the state no longer has.
    pub fn retain(&mut self, keep: impl Fn(&(u32, u32, IpAddr)) -> bool) {
        self.records.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_in_a_row_take_a_backend_out_for_a_while() {
        let mut p = PassiveHealth::default();
        let k = (1, 0x100, Ipv4Addr::new(10, 0, 0, 2).into());
        p.failed(k, 0);
        p.failed(k, 1);
        p.answered(k);
        p.failed(k, 2);
        p.failed(k, 3);
        assert!(!p.is_out(k, 3), "an answer in between resets the count");
        p.failed(k, 4);
        assert!(p.is_out(k, 5));
        assert_eq!(p.out(5).collect::<Vec<_>>(), [k]);
        assert!(!p.is_out(k, 4 + OUT_MS), "back after the pause");
        p.failed(k, 5 + OUT_MS);
        assert!(p.is_out(k, 6 + OUT_MS), "one more failure: out again");
        assert_eq!(p.ejections, 2);
    }

    #[test]
    fn bounded_whatever_fails() {
        let mut p = PassiveHealth::default();
        for i in 0..(MAX_RECORDS as u32 + 1_000) {
            p.failed((1, 0x100, Ipv4Addr::from(i).into()), 0);
            assert!(p.records.len() <= MAX_RECORDS);
        }
        // a backend that is out stays out while the table is full of others
        let k = (2, 0x100, Ipv4Addr::new(10, 0, 0, 9).into());
        for t in 0..3 {
            p.failed(k, t);
        }
        assert!(p.is_out(k, 10));
        for i in 0..1_000u32 {
            p.failed((3, 0x100, Ipv4Addr::from(i).into()), 20);
        }
        assert!(p.is_out(k, 30));
        assert!(p.records.len() <= MAX_RECORDS);
    }
}
