//! Frames read from ports (TAPs and packet sockets): the virtio-net header
//! checked, a checksum the container left to the device completed, UDP
//! super-frames cut, a TCP super-frame switched once and then gathered (to a
//! VTEP in the clear: headers written beside it, payloads where they lie) or
//! cut; and carrying out the switch's action, whatever the frame came from.

use super::*;
use crate::counters::DropReason;
use crate::offload::segment;
use crate::offload::vnet::{self, VnetHdr};
use crate::switch::Action;
use crate::wire::vxlan::VXLAN_HEADER_LEN;
use std::net::{IpAddr, SocketAddr};

/// How a frame was read from a port into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRead {
    /// `n` bytes into [`PacketBuf::frame_slot`]: a plain frame.
    Frame(usize),
    /// `n` bytes into [`PacketBuf::vnet_slot`]: a virtio-net header, then the
    /// frame (an offloading TAP's).
    Vnet(usize),
}

impl Datapath {
    /// A frame read from `port` into `buf` (as `read` says), at `now`.
    #[inline]
    pub fn handle_port_rx(
        &mut self,
        port: PortId,
        read: PortRead,
        buf: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        let st = &*self.state;
        let c = &mut self.core;
        let now_ms = ms_since(self.start, now);
        let n = match read {
            PortRead::Frame(n) => {
                buf.set_frame_len(n);
                let a = c.switch.from_port(st, port, buf, now_ms);
                c.execute(st, a, buf, now, io);
                return;
            }
            PortRead::Vnet(n) => n,
        };
        let Some(h) = VnetHdr::parse(buf.vnet_header()).filter(|_| n >= vnet::LEN) else {
            c.switch.counters.drop(DropReason::Malformed);
            return;
        };
        buf.set_frame_len(n - vnet::LEN);
        if !h.is_gso() {
            if h.flags & vnet::F_NEEDS_CSUM != 0 && !vnet::finish_checksum(buf.data_mut(), &h) {
                c.switch.counters.drop(DropReason::Malformed);
                return;
            }
            let a = c.switch.from_port(st, port, buf, now_ms);
            c.execute(st, a, buf, now, io);
            return;
        }
        let frame = buf.data();
        let size = usize::from(h.gso_size);
        if size == 0 {
            c.switch.counters.drop(DropReason::Malformed);
            return;
        }
        let seg = &mut self.seg;
        if h.gso_type & !vnet::GSO_ECN == vnet::GSO_UDP_L4 {
            let Some(l4) = segment::parse_udp(frame) else {
                c.switch.counters.drop(DropReason::Malformed);
                return;
            };
            for i in 0..segment::udp_count(frame, l4, size) {
                let Some(len) = segment::write_udp_segment(frame, l4, size, i, seg.frame_slot())
                else {
                    break;
                };
                seg.set_frame_len(len);
                let a = c.switch.from_port(st, port, seg, now_ms);
                c.execute(st, a, seg, now, io);
            }
            return;
        }
        let Some(t) = segment::parse_tcp(frame) else {
            c.switch.counters.drop(DropReason::Malformed);
            return;
        };
        // switched once, as the kernel forwards a GSO skb; cut after
        buf.set_segmented(Some(crate::buf::Segmented {
            hdr_len: t.payload_off,
            mss: size,
        }));
        let a = c.switch.from_port(st, port, buf, now_ms);
        c.execute_segmented(st, a, buf, &t, size, seg, now, io);
    }
}

impl Core {
    /// Carries out the switch's action for a TCP super-frame: to a VTEP in
    /// the clear, its segments leave in gathering GSO sends (headers written
    /// beside it, payloads where they lie); any other way, it is cut into
    /// `seg` and each segment goes the way the super-frame was sent.
    #[allow(clippy::too_many_arguments)]
    fn execute_segmented(
        &mut self,
        st: &SwitchState,
        a: Action<'_>,
        buf: &mut PacketBuf,
        t: &segment::TcpFrame,
        mss: usize,
        seg: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        // the bytes before the frame: the VXLAN header where the core wrote one
        // (Encap, Flood to VTEPs); copied along either way, a Deliver never
        // reads them
        let vxlan: Option<[u8; VXLAN_HEADER_LEN]> = buf
            .datagram()
            .get(..VXLAN_HEADER_LEN)
            .and_then(|h| h.try_into().ok());
        match (a, vxlan) {
            (
                Action::Encap {
                    vtep,
                    flow_hash,
                    secure: false,
                },
                Some(vx),
            ) => {
                // what the batch holds went first (an ACK of the same flow, say)
                self.flush_batch(io);
                let (gather, c) = (&mut self.gather, &mut self.switch.counters);
                let done = gather.segments(&vx, buf.data(), t, mss, |r| {
                    let sent = io
                        .send_underlay_gather(flow_hash, vtep, r.parts, 2, r.seg)
                        .min(r.count);
                    c.underlay_tx += sent as u64;
                    for _ in sent..r.count {
                        c.drop(DropReason::TxFailed);
                    }
                });
                if done.is_none() {
                    self.cut_and_execute(st, a, buf, t, mss, seg, vxlan, now, io);
                }
            }
            (Action::Deliver(_) | Action::Encap { .. } | Action::Flood { .. }, _) => {
                self.cut_and_execute(st, a, buf, t, mss, seg, vxlan, now, io)
            }
            // a reply the core wrote over it (ICMP "too big"), a drop
            (a, _) => self.execute(st, a, buf, now, io),
        }
    }

    /// Cuts the switched super-frame into `seg` one segment at a time, each
    /// behind the same VXLAN header, and executes `a` for each.
    #[allow(clippy::too_many_arguments)]
    fn cut_and_execute(
        &mut self,
        st: &SwitchState,
        a: Action<'_>,
        buf: &PacketBuf,
        t: &segment::TcpFrame,
        mss: usize,
        seg: &mut PacketBuf,
        vxlan: Option<[u8; VXLAN_HEADER_LEN]>,
        now: Instant,
        io: &mut impl Sink,
    ) {
        let frame = buf.data();
        for i in 0..segment::count(frame, t, mss) {
            let Some(len) = segment::write_segment(frame, t, mss, i, seg.frame_slot()) else {
                break;
            };
            seg.set_frame_len(len);
            if let Some(vx) = vxlan {
                seg.set_vxlan_header(&vx);
            }
            self.execute(st, a, seg, now, io);
        }
    }

    /// Carries out the switch's action for the frame (or datagram) in `buf`.
    pub(super) fn execute(
        &mut self,
        st: &SwitchState,
        a: Action<'_>,
        buf: &mut PacketBuf,
        now: Instant,
        io: &mut impl Sink,
    ) {
        match a {
            Action::Deliver(p) | Action::Reply(p) => {
                self.write_port(p, &VnetHdr::default(), buf.data(), io)
            }
            Action::Encap {
                vtep,
                flow_hash,
                secure: false,
            } => self.batch_push(flow_hash, vtep, buf.datagram(), io),
            Action::Encap {
                vtep,
                flow_hash,
                secure: true,
            } => {
                let _ = self.send_secure(flow_hash, vtep, buf, io);
            }
            Action::Flood {
                ports,
                skip,
                vteps,
                flow_hash,
                secure,
            } => {
                for p in ports.iter().filter(|p| Some(**p) != skip) {
                    self.write_port(*p, &VnetHdr::default(), buf.data(), io);
                }
                self.flush_batch(io);
                for v in vteps {
                    if secure {
                        let _ = self.send_secure(flow_hash, *v, buf, io);
                    } else {
                        let d = buf.datagram();
                        let sent = io.send_underlay(flow_hash, *v, d, d.len());
                        self.count_underlay(sent, 1);
                    }
                }
            }
            Action::ForwardDns {
                port,
                peer,
                payload_off,
            } => {
                let off = payload_off.min(buf.len());
                let now_ms = ms_since(self.start, now);
                self.forward_dns(st, port, peer, &mut buf.data_mut()[off..], now_ms, io)
            }
            Action::ProbeReply {
                vtep,
                secure: false,
            } => match io.send_probe(vtep, buf.datagram()) {
                Ok(()) => self.switch.counters.underlay_tx += 1,
                Err(_) => self.switch.counters.drop(DropReason::TxFailed),
            },
            Action::ProbeReply { vtep, secure: true } => {
                let _ = self.send_secure(0, vtep, buf, io);
            }
            Action::ProbeAnswer(answer) => self.push_event(Event::ProbeAnswer { answer, at: now }),
            Action::Drop(_) => {}
        }
    }

    /// Writes a frame to a port, counted.
    pub(super) fn write_port(
        &mut self,
        port: PortId,
        hdr: &VnetHdr,
        frame: &[u8],
        io: &mut impl Sink,
    ) {
        let ok = io.write_port(port, hdr, frame);
        count_port_write(&mut self.switch.counters, ok);
    }

    /// Counts `sent` of `count` datagrams to the underlay as sent, the rest failed.
    fn count_underlay(&mut self, sent: usize, count: usize) {
        let c = &mut self.switch.counters;
        let sent = sent.min(count);
        c.underlay_tx += sent as u64;
        for _ in sent..count {
            c.drop(DropReason::TxFailed);
        }
    }

    /// Queues a datagram for a GSO send, sending what is queued first when
    /// this one cannot join it.
    fn batch_push(&mut self, hash: u32, vtep: IpAddr, d: &[u8], io: &mut impl Sink) {
        let to = SocketAddr::new(vtep, crate::VXLAN_PORT);
        if !self.batch.joins(to, hash, d.len()) {
            self.flush_batch(io);
        }
        self.batch.add(to, hash, d);
    }

    pub(super) fn flush_batch(&mut self, io: &mut impl Sink) {
        let Some(to) = self.batch.to else { return };
        let b = &self.batch;
        let sent = io.send_underlay(b.hash, to.ip(), &b.buf, b.seg);
        let count = b.count;
        self.count_underlay(sent, count);
        self.batch.clear();
    }

    /// Encrypts the datagram in `buf` for `vtep` (a tunnel address) into the
    /// WireGuard batch; what stops it is counted, and returned.
    pub(super) fn send_secure(
        &mut self,
        hash: u32,
        vtep: IpAddr,
        buf: &mut PacketBuf,
        io: &mut impl Sink,
    ) -> Result<(), DropReason> {
        let (IpAddr::V4(dst), local) = (vtep, self.tunnels.local_vtep()) else {
            self.switch.counters.drop(DropReason::TunnelNoPeer);
            return Err(DropReason::TunnelNoPeer);
        };
        let Some(packet) = buf.tunnel_packet(local, dst, hash) else {
            self.switch.counters.drop(DropReason::TooBig);
            return Err(DropReason::TooBig);
        };
        let (tunnels, c, b) = (
            &mut self.tunnels,
            &mut self.switch.counters,
            &mut self.wg_batch,
        );
        let r = tunnels.send_to(dst, packet, &mut |d, to| {
            if !b.joins(to, 0, d.len()) {
                flush_wg(b, c, io);
            }
            b.add(to, 0, d);
        });
        if let Err(r) = r {
            c.drop(r);
        }
        r
    }

    pub(super) fn flush_wg(&mut self, io: &mut impl Sink) {
        flush_wg(&mut self.wg_batch, &mut self.switch.counters, io);
    }
}

/// Counts a write to a port: written, or failed.
pub(super) fn count_port_write(c: &mut Counters, ok: bool) {
    if ok {
        c.port_tx += 1;
    } else {
        c.drop(DropReason::TxFailed);
    }
}

/// Sends what a WireGuard batch holds.
fn flush_wg(b: &mut GsoBatch, c: &mut Counters, io: &mut impl Sink) {
    let Some(to) = b.to else {
        b.clear();
        return;
    };
    let sent = io.send_tunnel(to, &b.buf, b.seg).min(b.count);
    c.tunnel_tx += sent as u64;
    for _ in sent..b.count {
        c.drop(DropReason::TxFailed);
    }
    b.clear();
}
