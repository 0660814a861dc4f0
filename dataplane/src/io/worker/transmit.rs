//! The worker's transmit side: frames read from ports (TAPs and packet
//! sockets), switched, and sent on: to other ports, to VTEPs in GSO runs
//! (a TCP super-frame's segments gathered, headers beside it and payloads in
//! place), through the WireGuard tunnel.

use super::*;

/// Sends one WireGuard datagram; a failed send counts, it never stops the worker.
pub(super) fn send_wg(
    wg: &Option<std::net::UdpSocket>,
    c: &mut Counters,
    d: &[u8],
    to: std::net::SocketAddr,
) {
    match wg.as_ref().map(|s| s.send_to(d, to)) {
        Some(Ok(_)) => c.tunnel_tx += 1,
        _ => c.drop(DropReason::TxFailed),
    }
}

/// A run of datagrams for one `sendmsg` with `UDP_SEGMENT`: same destination,
/// same flow (so the same source socket), all `seg` bytes but possibly the last.
#[derive(Default)]
pub(super) struct GsoBatch {
    buf: Vec<u8>,
    to: Option<std::net::SocketAddr>,
    hash: u32,
    seg: usize,
    count: usize,
    closed: bool,
}

impl GsoBatch {
    pub(super) fn joins(&self, to: std::net::SocketAddr, hash: u32, len: usize) -> bool {
        self.count > 0
            && self.to == Some(to)
            && self.hash == hash
            && !self.closed
            && len <= self.seg
            && self.count < GSO_MAX_SEGMENTS
            && self.buf.len() + len <= GSO_MAX_BYTES
    }

    /// Adds a datagram; the caller has flushed if it does not join.
    pub(super) fn add(&mut self, to: std::net::SocketAddr, hash: u32, d: &[u8]) {
        if self.count == 0 {
            self.to = Some(to);
            self.hash = hash;
            self.seg = d.len();
        }
        self.buf.extend_from_slice(d);
        self.count += 1;
        self.closed = d.len() < self.seg;
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.to = None;
        self.count = 0;
        self.closed = false;
    }
}

/// Sends what a WireGuard batch holds on the WireGuard socket (one GSO send
/// while `gso` holds; see [`gso::send_run`]).
pub(super) fn flush_wg(
    b: &mut GsoBatch,
    wg: &Option<std::net::UdpSocket>,
    gso: &mut bool,
    c: &mut Counters,
) {
    let (Some(to), Some(sock)) = (b.to, wg.as_ref()) else {
        b.clear();
        return;
    };
    let r = if b.count == 1 {
        sock.send_to(&b.buf, to).map(|_| 1)
    } else {
        gso::send_run(sock, to, &b.buf, b.seg as u16, gso)
    };
    let sent = r.unwrap_or(0).min(b.count);
    c.tunnel_tx += sent as u64;
    for _ in sent..b.count {
        c.drop(DropReason::TxFailed);
    }
    b.clear();
}

/// Writes one frame to a port: with a `virtio_net_hdr` in front (one `writev`)
/// when the port is an offloading TAP. Counted in the port's traffic in `lane`.
pub(super) fn write_frame(
    ports: &FxHashMap<PortId, Port>,
    c: &mut Counters,
    lane: usize,
    port: PortId,
    hdr: &VnetHdr,
    frame: &[u8],
) {
    let Some(p) = ports.get(&port) else {
        c.drop(DropReason::TxFailed);
        return;
    };
    let n = if p.vnet {
        let mut h = [0u8; vnet::LEN];
        hdr.emit(&mut h);
        let iov = [
            libc::iovec {
                iov_base: h.as_ptr() as *mut libc::c_void,
                iov_len: h.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of the lengths given.
        unsafe { libc::writev(p.fd.as_raw_fd(), iov.as_ptr(), 2) }
    } else {
        // SAFETY: writing from a live slice of the length passed.
        unsafe { libc::write(p.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) }
    };
    if n < 0 {
        c.drop(DropReason::TxFailed);
    } else {
        c.port_tx += 1;
        p.traffic.tx(lane, 1, frame.len() as u64);
    }
}

impl Worker {
    /// Encrypts the datagram in `buf` for `vtep` (a tunnel address) and sends
    /// it; what stops it is counted, and returned.
    pub(super) fn send_secure(
        &mut self,
        hash: u32,
        vtep: std::net::IpAddr,
        buf: &mut PacketBuf,
    ) -> Result<(), DropReason> {
        let (std::net::IpAddr::V4(dst), local) = (vtep, self.tunnels.local_vtep()) else {
            self.switch.counters.drop(DropReason::TunnelNoPeer);
            return Err(DropReason::TunnelNoPeer);
        };
        let Some(packet) = buf.tunnel_packet(local, dst, hash) else {
            self.switch.counters.drop(DropReason::TooBig);
            return Err(DropReason::TooBig);
        };
        let (wg, tunnels, c, b, g) = (
            &self.wg,
            &mut self.tunnels,
            &mut self.switch.counters,
            &mut self.wg_batch,
            &mut self.wg_gso,
        );
        let r = tunnels.send_to(dst, packet, &mut |d, to| {
            if !b.joins(to, 0, d.len()) {
                flush_wg(b, wg, g, c);
            }
            b.add(to, 0, d);
        });
        if let Err(r) = r {
            c.drop(r);
        }
        r
    }

    /// Reads a port until empty (within the budget). An offloading TAP hands over
    /// TCP super-frames, which are cut into segments here and switched one by one;
    /// their datagrams to one VTEP leave in one GSO send.
    pub(super) fn drain_port(
        &mut self,
        port: PortId,
        buf: &mut PacketBuf,
        seg: &mut PacketBuf,
    ) -> bool {
        let Some((fd, vnet)) = self.ports.get(&port).map(|p| (p.fd.as_raw_fd(), p.vnet)) else {
            return false;
        };
        let st = self.state.load();
        let mut more = true;
        // counted once per batch: no refcount or counter line touched per frame
        let (mut pkts, mut bytes) = (0u64, 0u64);
        for _ in 0..BUDGET {
            let slot = if vnet {
                buf.vnet_slot()
            } else {
                buf.frame_slot()
            };
            // SAFETY: reading into a live, writable slice of the length passed.
            let n = unsafe { libc::read(fd, slot.as_mut_ptr().cast(), slot.len()) };
            if n <= 0 {
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::WouldBlock
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        tracing::debug!(port = port.0, error = %e, "port read failed");
                    }
                }
                more = false;
                break;
            }
            let n = n as usize;
            // as the device hands it over: a TSO super-frame is one packet
            pkts += 1;
            bytes += (if vnet { n.saturating_sub(vnet::LEN) } else { n }) as u64;
            let now = self.now_ms();
            if !vnet {
                buf.set_frame_len(n);
                let a = self.switch.from_port(&st, port, buf, now);
                self.execute(a, buf);
                continue;
            }
            let Some(h) = VnetHdr::parse(buf.vnet_header()).filter(|_| n >= vnet::LEN) else {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            };
            buf.set_frame_len(n - vnet::LEN);
            if !h.is_gso() {
                if h.flags & vnet::F_NEEDS_CSUM != 0 && !vnet::finish_checksum(buf.data_mut(), &h) {
                    self.switch.counters.drop(DropReason::Malformed);
                    continue;
                }
                let a = self.switch.from_port(&st, port, buf, now);
                self.execute(a, buf);
                continue;
            }
            let frame = buf.data();
            let size = usize::from(h.gso_size);
            if size == 0 {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            }
            if h.gso_type & !vnet::GSO_ECN == vnet::GSO_UDP_L4 {
                let Some(l4) = segment::parse_udp(frame) else {
                    self.switch.counters.drop(DropReason::Malformed);
                    continue;
                };
                for i in 0..segment::udp_count(frame, l4, size) {
                    let Some(len) =
                        segment::write_udp_segment(frame, l4, size, i, seg.frame_slot())
                    else {
                        break;
                    };
                    seg.set_frame_len(len);
                    let a = self.switch.from_port(&st, port, seg, now);
                    self.execute(a, seg);
                }
                continue;
            }
            let Some(t) = segment::parse_tcp(frame) else {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            };
            // switched once, as the kernel forwards a GSO skb; cut after
            buf.set_segmented(Some(Segmented {
                hdr_len: t.payload_off,
                mss: size,
            }));
            let a = self.switch.from_port(&st, port, buf, now);
            self.execute_segmented(a, buf, &t, size, seg);
        }
        if let Some(p) = self.ports.get(&port) {
            p.traffic.rx(self.index, pkts, bytes);
        }
        self.flush_batch();
        flush_wg(
            &mut self.wg_batch,
            &self.wg,
            &mut self.wg_gso,
            &mut self.switch.counters,
        );
        more
    }

    /// Carries out the core's action for a TCP super-frame: to a VTEP in the
    /// clear, its segments leave in gathering GSO sends (headers written
    /// beside it, payloads where they lie); any other way, it is cut into
    /// `seg` and each segment goes the way the super-frame was sent.
    pub(super) fn execute_segmented(
        &mut self,
        a: Action<'_>,
        buf: &mut PacketBuf,
        t: &segment::TcpFrame,
        mss: usize,
        seg: &mut PacketBuf,
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
                self.flush_batch();
                let (underlay, c) = (&self.underlay, &mut self.switch.counters);
                let done = self.gather.segments(&vx, buf.data(), t, mss, |r| {
                    let sent = underlay
                        .send_gso_gather(flow_hash, vtep, r.parts, 2, r.seg)
                        .unwrap_or(0)
                        .min(r.count);
                    c.underlay_tx += sent as u64;
                    for _ in sent..r.count {
                        c.drop(DropReason::TxFailed);
                    }
                });
                if done.is_none() {
                    self.cut_and_execute(a, buf, t, mss, seg, vxlan);
                }
            }
            (Action::Deliver(_) | Action::Encap { .. } | Action::Flood { .. }, _) => {
                self.cut_and_execute(a, buf, t, mss, seg, vxlan)
            }
            // a reply the core wrote over it (ICMP "too big"), a drop
            (a, _) => self.execute(a, buf),
        }
    }

    /// Cuts the switched super-frame into `seg` one segment at a time, each
    /// behind the same VXLAN header, and executes `a` for each.
    pub(super) fn cut_and_execute(
        &mut self,
        a: Action<'_>,
        buf: &PacketBuf,
        t: &segment::TcpFrame,
        mss: usize,
        seg: &mut PacketBuf,
        vxlan: Option<[u8; VXLAN_HEADER_LEN]>,
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
            self.execute(a, seg);
        }
    }

    pub(super) fn write_port(&mut self, port: PortId, frame: &[u8]) {
        write_frame(
            &self.ports,
            &mut self.switch.counters,
            self.index,
            port,
            &VnetHdr::default(),
            frame,
        );
    }

    pub(super) fn send_vtep(&mut self, hash: u32, vtep: std::net::IpAddr, datagram: &[u8]) {
        match self.underlay.send(hash, vtep, datagram) {
            Ok(()) => self.switch.counters.underlay_tx += 1,
            Err(_) => self.switch.counters.drop(DropReason::TxFailed),
        }
    }

    /// Queues a datagram for a GSO send, sending what is queued first when this
    /// one cannot join it.
    pub(super) fn batch_push(&mut self, hash: u32, vtep: std::net::IpAddr, d: &[u8]) {
        let to = std::net::SocketAddr::new(vtep, crate::VXLAN_PORT);
        if !self.batch.joins(to, hash, d.len()) {
            self.flush_batch();
        }
        self.batch.add(to, hash, d);
    }

    pub(super) fn flush_batch(&mut self) {
        let b = &mut self.batch;
        let Some(to) = b.to else { return };
        let r = if b.count == 1 {
            self.underlay.send(b.hash, to.ip(), &b.buf).map(|()| 1)
        } else {
            self.underlay
                .send_gso(b.hash, to.ip(), &b.buf, b.seg as u16)
        };
        let sent = r.unwrap_or(0).min(b.count);
        self.switch.counters.underlay_tx += sent as u64;
        for _ in sent..b.count {
            self.switch.counters.drop(DropReason::TxFailed);
        }
        b.clear();
    }

    pub(super) fn execute(&mut self, a: Action<'_>, buf: &mut PacketBuf) {
        match a {
            Action::Deliver(p) | Action::Reply(p) => self.write_port(p, buf.data()),
            Action::Encap {
                vtep,
                flow_hash,
                secure: false,
            } => self.batch_push(flow_hash, vtep, buf.datagram()),
            Action::Encap {
                vtep,
                flow_hash,
                secure: true,
            } => {
                let _ = self.send_secure(flow_hash, vtep, buf);
            }
            Action::Flood {
                ports,
                skip,
                vteps,
                flow_hash,
                secure,
            } => {
                for p in ports.iter().filter(|p| Some(**p) != skip) {
                    self.write_port(*p, buf.data());
                }
                self.flush_batch();
                for v in vteps {
                    if secure {
                        let _ = self.send_secure(flow_hash, *v, buf);
                    } else {
                        self.send_vtep(flow_hash, *v, buf.datagram());
                    }
                }
            }
            Action::ForwardDns {
                port,
                peer,
                payload_off,
            } => self.forward_dns(port, peer, &buf.data()[payload_off.min(buf.len())..]),
            Action::ProbeReply {
                vtep,
                secure: false,
            } => match self.underlay.send_probe(vtep, buf.datagram()) {
                Ok(()) => self.switch.counters.underlay_tx += 1,
                Err(_) => self.switch.counters.drop(DropReason::TxFailed),
            },
            Action::ProbeReply { vtep, secure: true } => {
                let _ = self.send_secure(0, vtep, buf);
            }
            Action::ProbeAnswer(answer) => {
                let e = ProbeEvent::Answer {
                    answer,
                    at: Instant::now(),
                };
                if let Ok(mut inbox) = self.probe_inbox.lock() {
                    inbox.push(e);
                }
            }
            Action::Drop(_) => {}
        }
    }
}
