//! What runs on time rather than on packets: the tunnels' timers, the
//! handshake rate limiter's window, the DNS relay's timeouts, and (on the
//! one worker that sweeps) the connection table's expiry, whose established
//! TCP connections are reset at both ends. The caller asks
//! [`Datapath::poll_timeout`] when to come back and calls
//! [`Datapath::handle_timeout`] then (earlier or later does no harm).

use super::*;
use std::time::Duration;

/// How often the tunnels' rate limiter restarts its window and DNS queries
/// are checked for their timeout.
const SECOND: Duration = Duration::from_secs(1);
/// How often the sweeping worker expires the connection table: expired
/// entries go, and SYNs unanswered for `lb::passive::SYN_RETRY_MS` count
/// against their backend, so a dead backend is out within about 1.3 s of
/// three of them (a sweep of a full table takes about 64 us, in 2 us slices).
const SWEEP_EVERY: Duration = Duration::from_millis(500);

pub(super) struct Timers {
    tick: Instant,
    second: Instant,
    /// `None`: this datapath does not sweep.
    sweep: Option<Instant>,
}

impl Timers {
    pub(super) fn new(now: Instant, sweeper: bool) -> Self {
        Self {
            tick: now + crate::tunnel::TICK,
            second: now + SECOND,
            sweep: sweeper.then(|| now + SWEEP_EVERY),
        }
    }
}

impl Datapath {
    /// When [`Datapath::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timers;
        let mut next = t.second;
        if self.core.tunnels.is_enabled() {
            next = next.min(t.tick);
        }
        if let Some(s) = t.sweep {
            next = next.min(s);
        }
        Some(next)
    }

    /// Does what is due at `now`; transmits it makes go to `io` (flushed).
    pub fn handle_timeout(&mut self, now: Instant, io: &mut impl Sink) {
        if self.core.tunnels.is_enabled() && now >= self.timers.tick {
            let Core {
                tunnels, switch, ..
            } = &mut self.core;
            tunnels.tick(now, &mut |d, to| {
                super::receive::send_tunnel_one(io, &mut switch.counters, d, to)
            });
            self.timers.tick = now + crate::tunnel::TICK;
        }
        if now >= self.timers.second {
            self.core.tunnels.reset_rate_limiter();
            let now_ms = self.now_ms(now);
            self.core
                .dns
                .pending
                .expire(now_ms, super::dns::TIMEOUT.as_millis() as u64);
            self.timers.second = now + SECOND;
        }
        if self.timers.sweep.is_some_and(|s| now >= s) {
            self.timers.sweep = Some(now + SWEEP_EVERY);
            let gone = self.core.switch.expire(self.now_ms(now));
            self.send_resets(&gone, now, io);
        }
        self.flush(io);
    }
}
