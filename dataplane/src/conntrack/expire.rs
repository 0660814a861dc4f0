//! Connections going: the sweep of expired entries (in slices, under a lock
//! taken per slice), and removals when a backend goes.

use super::EndReason;
use super::{six_of, timeout_ms, Conntrack, Entry, State};
use std::net::IpAddr;

/// Locks the table, counting in it a lock that had to be waited for (another
/// worker held it). A worker that panicked mid-update leaves a table that is
/// still consistent entry by entry: keep balancing rather than stop everywhere.
pub fn lock_counted(t: &std::sync::Mutex<Conntrack>) -> std::sync::MutexGuard<'_, Conntrack> {
    use std::sync::{PoisonError, TryLockError};
    match t.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            let mut g = t.lock().unwrap_or_else(PoisonError::into_inner);
            g.lock_waits += 1;
            g
        }
    }
}

/// Slots of the table swept per hold of its lock (bench
/// `lb_path/expire_slice`).
pub const EXPIRE_SLICE: usize = 8192;

/// Expires the table's due entries a slice at a time ([`Conntrack::expire_slots`]),
/// the lock given up between slices so that other workers' new connections
/// wait for one slice, not for the whole table. `each_slice` sees the table
/// after each slice, still locked (to take the ends it recorded).
pub fn expire_in_slices(
    t: &std::sync::Mutex<Conntrack>,
    now_ms: u64,
    mut on_reset: impl FnMut(&Entry),
    mut each_slice: impl FnMut(&mut Conntrack),
) {
    let mut from = Some(0);
    while let Some(first) = from {
        let mut ct = lock_counted(t);
        from = ct
            .expire_slots(now_ms, first, EXPIRE_SLICE, &mut on_reset)
            .1;
        each_slice(&mut ct);
    }
}

impl Conntrack {
    /// Whether resetting a TCP entry's ends is due when it goes: it carried data
    /// both ways or still could (not yet closed), so someone may be waiting on it.
    pub fn wants_reset(e: &Entry) -> bool {
        e.orig.proto == 6
            && matches!(
                e.state,
                State::SynRecv | State::Established | State::FinWait
            )
    }

    /// Removes expired entries; established TCP ones are handed to `on_reset` so
    /// both ends can be told (a RST) instead of being silently blackholed.
    pub fn expire(&mut self, now_ms: u64, on_reset: impl FnMut(&Entry)) -> usize {
        self.expire_slots(now_ms, 0, usize::MAX, on_reset).0
    }

    /// [`Self::expire`] over at most `count` slots from `first`: a sweep of a
    /// full table in slices, so that the lock is given up between them (a whole
    /// sweep of 262,144 slots held it for 0.05–0.8 ms in netns-lb, during which
    /// every other worker's new connections waited). Returns how many expired, and the
    /// slot to go on from (`None`: the sweep reached the end).
    pub fn expire_slots(
        &mut self,
        now_ms: u64,
        first: usize,
        count: usize,
        mut on_reset: impl FnMut(&Entry),
    ) -> (usize, Option<usize>) {
        let end = first.saturating_add(count).min(self.slab.len());
        self.now_ms = now_ms;
        let mut n = 0;
        for id in first.min(end) as u32..end as u32 {
            let last_ms = self.touch[id as usize].last_ms();
            self.count_unanswered(id, last_ms, now_ms);
            let expired = self.slab[id as usize].as_ref().is_some_and(|e| {
                now_ms.saturating_sub(last_ms)
                    > timeout_ms(e.state, e.proto).min(self.timeout_cap_ms)
            });
            if expired {
                if let Some(e) = self.remove(id, EndReason::Idle) {
                    if e.orig.proto == 6 && e.state == State::Established {
                        on_reset(&e);
                    }
                    n += 1;
                }
            }
        }
        (n, (end < self.slab.len()).then_some(end))
    }

    /// Counts a failure of the backend of connection `id` when the client's
    /// last SYN (at `last_ms`) has gone unanswered for
    /// [`crate::lb::passive::SYN_RETRY_MS`] and was not counted yet. A client
    /// with a connect timeout under a second never retransmits (the first
    /// retransmit is at 1 s), so without this its connections to a dead
    /// backend would never count, and the backend would stay in.
    #[inline]
    fn count_unanswered(&mut self, id: u32, last_ms: u64, now_ms: u64) {
        let Some(Some(c)) = self.slab.get_mut(id as usize) else {
            return;
        };
        if c.proto != 6
            || c.service == 0
            || c.state != State::SynSent
            || c.syn_counted()
            || now_ms.saturating_sub(last_ms) < crate::lb::passive::SYN_RETRY_MS
        {
            return;
        }
        c.set_syn_counted(true);
        let backend = (c.zone(), c.service, c.backend_ip(six_of(&self.six, c, id)));
        self.passive.failed(backend, now_ms);
    }

    /// Removes every entry `pick` selects and returns them.
    pub fn remove_where(&mut self, pick: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        let ids: Vec<u32> = self
            .slab
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let e = self.entry(i as u32, c.as_ref()?);
                pick(&e).then_some(i as u32)
            })
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove(id, EndReason::BackendGone))
            .collect()
    }

    /// Removes every connection of a backend that left (removed or unhealthy),
    /// handing the live TCP ones to `on_reset`.
    pub fn remove_backend(
        &mut self,
        service: u32,
        backend: u32,
        mut on_reset: impl FnMut(&Entry),
    ) -> usize {
        let gone = self.remove_where(|e| e.service == service && e.backend == backend);
        for e in gone
            .iter()
            .filter(|e| e.orig.proto == 6 && !matches!(e.state, State::Close | State::TimeWait))
        {
            on_reset(e);
        }
        gone.len()
    }

    /// Forgets every connection of service `service` in `zone` to backend `ip`
    /// (it went unhealthy or away). Its clients' next packets are scheduled anew,
    /// and for TCP the new backend answers the stray segment with a RST.
    pub fn forget_backend(&mut self, zone: u32, service: u32, ip: IpAddr) -> usize {
        self.remove_where(|e| e.orig.zone == zone && e.service == service && e.reply.src == ip)
            .len()
    }
}
