//! The worker's receive side: VXLAN from the underlay and WireGuard
//! datagrams read in batches (`recvmmsg`, UDP GRO runs) and handed to the
//! datapath.

use super::*;

/// A worker's receiving sockets.
#[derive(Clone, Copy)]
pub(super) enum Rx {
    Underlay,
    WireGuard,
}

/// Adds to the `socket_overflow` drops what a socket dropped since `seen`, its
/// running count when last read (the newest datagram carries the highest).
pub(super) fn count_overflow(meta: &[gso::RecvMeta], seen: &mut u32, c: &mut Counters) {
    if let Some(now) = meta.iter().map(|m| m.dropped).max() {
        let new = now.wrapping_sub(*seen);
        // a count that went down is an older datagram's (or a wrap long ago)
        if new > 0 && new < u32::MAX / 2 {
            c.drop_n(DropReason::SocketOverflow, u64::from(new));
            *seen = now;
        }
    }
}

impl Worker {
    /// Reads `rx` until empty (within the budget) and hands each datagram to
    /// the datapath: VXLAN from the underlay, WireGuard from the tunnel
    /// socket. With UDP GRO one read holds a run of datagrams of one flow,
    /// handed over one by one (the datapath coalesces consecutive TCP
    /// segments for one port into one TAP write).
    pub(super) fn drain(&mut self, rx: Rx, buf: &mut PacketBuf) -> bool {
        let mut more = true;
        for _ in 0..BUDGET / gso::BATCH {
            let Some(got) = self.read_batch(rx) else {
                more = false;
                break;
            };
            // one clock read per batch, not per datagram
            let now = Instant::now();
            for m in 0..got {
                let meta = self.rx_meta[m];
                for d in meta.datagrams() {
                    let datagram = &self.rx_bufs[m][d];
                    match rx {
                        Rx::Underlay => self.dp.handle_underlay_rx(
                            meta.from.ip(),
                            datagram,
                            buf,
                            now,
                            &mut self.io,
                        ),
                        Rx::WireGuard => {
                            self.dp
                                .handle_tunnel_rx(meta.from, datagram, buf, now, &mut self.io)
                        }
                    }
                }
            }
            if self.emptied(got) {
                more = false;
                break;
            }
        }
        self.dp.flush(&mut self.io);
        more
    }

    pub(super) fn read_batch(&mut self, sock: Rx) -> Option<usize> {
        let (s, seen) = match sock {
            Rx::Underlay => (&self.io.underlay.rx, &mut self.underlay_dropped),
            Rx::WireGuard => (self.io.wg.as_ref()?, &mut self.wg_dropped),
        };
        let got = match gso::recv_many(s, &mut self.rx_bufs, &mut self.rx_meta) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "receive failed");
                }
                return None;
            }
        };
        count_overflow(
            &self.rx_meta[..got],
            seen,
            &mut self.dp.switch_mut().counters,
        );
        Some(got)
    }

    /// Whether a batch of `got` emptied its socket: `recvmmsg` stopped short.
    /// A datagram that lands later raises a new edge, so there is no call to
    /// see EAGAIN (one syscall per wake-up saved when a wake-up brings one or two).
    pub(super) fn emptied(&self, got: usize) -> bool {
        got < self.rx_bufs.len().min(gso::BATCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_overflow_counts_what_was_dropped_since_the_last_read() {
        let m = |dropped| gso::RecvMeta {
            dropped,
            ..Default::default()
        };
        let (mut seen, mut c) = (0, Counters::default());
        let count = |seen: &mut u32, c: &mut Counters, ms: &[gso::RecvMeta]| {
            count_overflow(ms, seen, c);
            c.dropped(DropReason::SocketOverflow)
        };
        assert_eq!(count(&mut seen, &mut c, &[m(0), m(0)]), 0);
        assert_eq!(count(&mut seen, &mut c, &[m(3), m(5)]), 5);
        assert_eq!(count(&mut seen, &mut c, &[m(5)]), 5, "no new drop");
        assert_eq!(count(&mut seen, &mut c, &[m(4), m(9)]), 9);
        assert_eq!(count(&mut seen, &mut c, &[]), 9);
        seen = u32::MAX - 1;
        assert_eq!(count(&mut seen, &mut c, &[m(2)]), 13, "across the wrap");
    }
}
