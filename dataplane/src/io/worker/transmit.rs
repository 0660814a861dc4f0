//! The worker's side of the datapath's transmits ([`Sink`]): writes to port
//! fds (a `virtio_net_hdr` in front for an offloading TAP, one `writev`),
//! sends on the underlay (GSO runs, gathering sends) and the WireGuard
//! socket, queries to the resolvers. And reading the ports: each frame read
//! goes to the datapath before the next.

use super::*;
use std::io::IoSlice;

/// The fds and sockets a worker's transmits leave by.
pub(super) struct WorkerIo {
    pub(super) ports: FxHashMap<PortId, Port>,
    pub(super) underlay: Underlay,
    pub(super) wg: Option<std::net::UdpSocket>,
    /// Whether WireGuard runs still leave as one GSO send (see [`gso::send_run`]).
    pub(super) wg_gso: bool,
    pub(super) dns_sock: DnsSocket,
    /// This worker's lane in the ports' traffic counters.
    pub(super) lane: usize,
}

impl Sink for WorkerIo {
    fn write_port(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool {
        let Some(p) = self.ports.get(&port) else {
            return false;
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
            // SAFETY: both iovecs point at live buffers of the lengths given,
            // which outlive the call; the kernel only reads them.
            unsafe { libc::writev(p.fd.as_raw_fd(), iov.as_ptr(), 2) }
        } else {
            // SAFETY: writing from a live slice of the length passed.
            unsafe { libc::write(p.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) }
        };
        if n < 0 {
            return false;
        }
        p.traffic.tx(self.lane, 1, frame.len() as u64);
        true
    }

    fn send_underlay(&mut self, flow_hash: u32, vtep: IpAddr, data: &[u8], seg: usize) -> usize {
        let r = if data.len() <= seg {
            self.underlay.send(flow_hash, vtep, data).map(|()| 1)
        } else {
            self.underlay
                .send_gso(flow_hash, vtep, data, seg.min(usize::from(u16::MAX)) as u16)
        };
        r.unwrap_or(0)
    }

    fn send_underlay_gather(
        &mut self,
        flow_hash: u32,
        vtep: IpAddr,
        parts: &[IoSlice<'_>],
        per: usize,
        seg: u16,
    ) -> usize {
        self.underlay
            .send_gso_gather(flow_hash, vtep, parts, per, seg)
            .unwrap_or(0)
    }

    fn send_tunnel(&mut self, to: SocketAddr, data: &[u8], seg: usize) -> usize {
        let Some(sock) = self.wg.as_ref() else {
            return 0;
        };
        let r = if data.len() <= seg {
            sock.send_to(data, to).map(|_| 1)
        } else {
            let seg = seg.min(usize::from(u16::MAX)) as u16;
            gso::send_run(sock, to, data, seg, &mut self.wg_gso)
        };
        r.unwrap_or(0)
    }

    fn send_probe(&mut self, vtep: IpAddr, datagram: &[u8]) -> io::Result<()> {
        self.underlay.send_probe(vtep, datagram)
    }

    fn send_dns(&mut self, to: SocketAddr, query: &[u8]) -> bool {
        self.dns_sock.send_to(query, to).is_ok()
    }
}

impl Worker {
    /// Reads a port until empty (within the budget), each frame handed to the
    /// datapath as it comes (an offloading TAP's super-frames too: the
    /// datapath cuts or gathers them), then flushes what the batch left.
    pub(super) fn drain_port(&mut self, port: PortId, buf: &mut PacketBuf) -> bool {
        let Some((fd, vnet)) = self.io.ports.get(&port).map(|p| (p.fd.as_raw_fd(), p.vnet)) else {
            return false;
        };
        let mut more = true;
        // counted once per batch: no refcount or counter line touched per frame
        let (mut pkts, mut bytes) = (0u64, 0u64);
        // one clock read per drain, as the receive side reads one per batch
        let now = Instant::now();
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
            let read = if vnet {
                bytes += n.saturating_sub(vnet::LEN) as u64;
                PortRead::Vnet(n)
            } else {
                bytes += n as u64;
                PortRead::Frame(n)
            };
            self.dp.handle_port_rx(port, read, buf, now, &mut self.io);
        }
        if let Some(p) = self.io.ports.get(&port) {
            p.traffic.rx(self.io.lane, pkts, bytes);
        }
        self.dp.flush(&mut self.io);
        more
    }
}
