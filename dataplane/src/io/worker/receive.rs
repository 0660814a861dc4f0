//! The worker's receive side: VXLAN from the underlay and WireGuard
//! datagrams read in batches (UDP GRO runs), switched, and TCP segments for
//! one port merged back into super-frames for one TAP write.

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
    /// Reads the underlay until empty (within the budget). With UDP GRO one read
    /// holds a run of datagrams of one flow; consecutive TCP segments for one
    /// port are coalesced into one TAP write.
    pub(super) fn drain_underlay(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        let mut more = true;
        for _ in 0..BUDGET / gso::BATCH {
            let Some(got) = self.read_batch(Rx::Underlay) else {
                more = false;
                break;
            };
            // one clock read per batch, not per datagram
            let now = self.now_ms();
            for m in 0..got {
                let meta = self.rx_meta[m];
                for d in meta.datagrams() {
                    buf.load_datagram(&self.rx_bufs[m][d]);
                    let a = self
                        .switch
                        .from_underlay(&st, meta.from.ip(), buf, now, false);
                    self.execute_received(a, buf);
                }
            }
            if self.emptied(got) {
                more = false;
                break;
            }
        }
        self.flush_coalescer();
        more
    }

    /// Reads one batch of `sock` into `rx_bufs`/`rx_meta`, counting what the
    /// socket dropped since the last read; `None` when it is empty (or failed).
    pub(super) fn read_batch(&mut self, sock: Rx) -> Option<usize> {
        let (s, seen) = match sock {
            Rx::Underlay => (&self.underlay.rx, &mut self.underlay_dropped),
            Rx::WireGuard => (self.wg.as_ref()?, &mut self.wg_dropped),
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
        count_overflow(&self.rx_meta[..got], seen, &mut self.switch.counters);
        Some(got)
    }

    /// Whether a batch of `got` emptied its socket: `recvmmsg` stopped short.
    /// A datagram that lands later raises a new edge, so there is no call to
    /// see EAGAIN (one syscall per wake-up saved when a wake-up brings one or two).
    pub(super) fn emptied(&self, got: usize) -> bool {
        got < self.rx_bufs.len().min(gso::BATCH)
    }

    /// Executes the action for a frame from the underlay or a tunnel: deliveries to
    /// an offloading TAP go through the coalescer, anything else flushes it first
    /// (so nothing overtakes what it holds).
    pub(super) fn execute_received(&mut self, a: Action<'_>, buf: &mut PacketBuf) {
        match a {
            Action::Deliver(p) if self.ports.get(&p).is_some_and(|p| p.vnet) => {
                self.coalesce(p, buf.data())
            }
            a => {
                self.flush_coalescer();
                self.execute(a, buf);
            }
        }
    }

    /// Adds a frame for `port` to the pending super-frame, or writes what is
    /// pending and starts anew.
    pub(super) fn coalesce(&mut self, port: PortId, frame: &[u8]) {
        if self.co_port == Some(port) && self.coalescer.push(frame) {
            return;
        }
        self.flush_coalescer();
        if self.coalescer.push(frame) {
            self.co_port = Some(port);
        } else {
            self.write_port(port, frame);
        }
    }

    pub(super) fn flush_coalescer(&mut self) {
        let Some(port) = self.co_port.take() else {
            return;
        };
        if let Some((h, frame)) = self.coalescer.take() {
            write_frame(
                &self.ports,
                &mut self.switch.counters,
                self.index,
                port,
                &h,
                frame,
            );
        }
    }

    /// Reads the WireGuard socket until empty (within the budget): with UDP GRO a
    /// read holds a run of one peer's datagrams, each decrypted in turn; runs of
    /// TCP segments for one port become one TAP write, as on the plain path.
    pub(super) fn drain_wireguard(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        let mut more = true;
        for _ in 0..BUDGET / gso::BATCH {
            let Some(got) = self.read_batch(Rx::WireGuard) else {
                more = false;
                break;
            };
            let now = self.now_ms();
            for m in 0..got {
                let meta = self.rx_meta[m];
                for d in meta.datagrams() {
                    self.switch.counters.tunnel_rx += 1;
                    let (wg, tunnels, c) = (&self.wg, &mut self.tunnels, &mut self.switch.counters);
                    let r = tunnels.receive(
                        meta.from,
                        &self.rx_bufs[m][d],
                        buf.tunnel_slot(),
                        &mut |d, to| send_wg(wg, c, d, to),
                    );
                    match r {
                        Received::Vxlan { vtep, offset, len } => {
                            buf.set_tunnel_received(offset, len);
                            let a = self.switch.from_underlay(&st, vtep, buf, now, true);
                            self.execute_received(a, buf);
                        }
                        Received::Control => {}
                        Received::Drop(r) => self.switch.counters.drop(r),
                    }
                }
            }
            if self.emptied(got) {
                more = false;
                break;
            }
        }
        self.flush_coalescer();
        flush_wg(
            &mut self.wg_batch,
            &self.wg,
            &mut self.wg_gso,
            &mut self.switch.counters,
        );
        more
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
