//! VXLAN datagrams from the underlay and WireGuard datagrams from the tunnel
//! socket, switched; consecutive TCP segments for one offloading TAP merged
//! back into one super-frame (one write), as the kernel's GRO would.

use super::port::count_port_write;
use super::*;
use crate::counters::DropReason;
use crate::offload::vnet::VnetHdr;
use crate::switch::Action;
use crate::tunnel::Received;
use std::net::{IpAddr, SocketAddr};

/// Sends one WireGuard datagram the tunnels made on their own (handshake,
/// keepalive, cookie), counted.
pub(super) fn send_tunnel_one(io: &mut impl Sink, c: &mut Counters, d: &[u8], to: SocketAddr) {
    if io.send_tunnel(to, d, d.len()) > 0 {
        c.tunnel_tx += 1;
    } else {
        c.drop(DropReason::TxFailed);
    }
}

impl Datapath {
    /// A VXLAN datagram (the UDP payload) from `src`, received at `now`:
    /// copied into `buf` and switched. A GRO run is handed over one datagram
    /// at a time, then [`Datapath::flush`] once.
    #[inline]
    pub fn handle_underlay_rx(
        &mut self,
        src: IpAddr,
        datagram: &[u8],
        buf: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        buf.load_datagram(datagram);
        self.switch_vxlan(src, buf, now, false, io);
    }

    /// A WireGuard datagram from `src`, received at `now`: decrypted into
    /// `buf` and switched, or answered (handshakes, cookies) through the sink.
    pub fn handle_tunnel_rx(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        let c = &mut self.core;
        c.switch.counters.tunnel_rx += 1;
        let (tunnels, counters) = (&mut c.tunnels, &mut c.switch.counters);
        let r = tunnels.receive(src, datagram, buf.tunnel_slot(), now, &mut |d, to| {
            send_tunnel_one(io, counters, d, to)
        });
        match r {
            Received::Vxlan { vtep, offset, len } => {
                buf.set_tunnel_received(offset, len);
                self.switch_vxlan(vtep, buf, now, true, io);
            }
            Received::Control => {}
            Received::Drop(r) => c.switch.counters.drop(r),
        }
    }

    /// A VXLAN datagram in `buf` as the tunnel hands it on once decrypted,
    /// from tunnel address `vtep`: for the fuzzer, which cannot encrypt what
    /// it makes up.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn handle_decrypted_rx(
        &mut self,
        vtep: IpAddr,
        buf: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        self.switch_vxlan(vtep, buf, now, true, io);
    }

    /// The VXLAN datagram in `buf` from `src` switched (`secure`: it came
    /// out of the tunnel) and the action carried out.
    #[inline(always)]
    fn switch_vxlan(
        &mut self,
        src: IpAddr,
        buf: &mut PacketBuf,
        now: Instant,
        secure: bool,
        io: &mut impl Sink,
    ) {
        let st = &*self.state;
        let c = &mut self.core;
        let now_ms = ms_since(self.start, now);
        let a = c.switch.from_underlay(st, src, buf, now_ms, secure);
        c.execute_received(st, a, buf, now, io);
    }
}

impl Core {
    /// Carries out the action for a frame from the underlay or a tunnel:
    /// deliveries to an offloading TAP go through the coalescer, anything
    /// else flushes it first (so nothing overtakes what it holds).
    #[inline]
    fn execute_received(
        &mut self,
        st: &SwitchState,
        a: Action<'_>,
        buf: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        match a {
            Action::Deliver(p) if self.ports.get(&p).copied().unwrap_or(false) => {
                self.coalesce(p, buf.data(), io)
            }
            a => {
                self.flush_coalescer(io);
                self.execute(st, a, buf, now, io);
            }
        }
    }

    /// Adds a frame for `port` to the pending super-frame, or writes what is
    /// pending and starts anew.
    fn coalesce(&mut self, port: PortId, frame: &[u8], io: &mut impl Sink) {
        if self.co_port == Some(port) && self.coalescer.push(frame) {
            return;
        }
        self.flush_coalescer(io);
        if self.coalescer.push(frame) {
            self.co_port = Some(port);
        } else {
            self.write_port(port, &VnetHdr::default(), frame, io);
        }
    }

    pub(super) fn flush_coalescer(&mut self, io: &mut impl Sink) {
        let Some(port) = self.co_port.take() else {
            return;
        };
        if let Some((h, frame)) = self.coalescer.take() {
            let ok = io.write_port(port, &h, frame);
            count_port_write(&mut self.switch.counters, ok);
        }
    }
}
