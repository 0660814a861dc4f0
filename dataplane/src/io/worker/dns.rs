//! The embedded DNS's forwarding: queries for names it does not hold go to
//! the node's resolvers under an id of the worker's own, and answers come
//! back to the container that asked.

use super::*;

/// The socket queries go to the node's resolvers from: one of both families
/// (IPv6, not IPv6-only) so resolvers of either are asked, or IPv4 alone on a
/// kernel without IPv6. Which one it is is known at bind, so sending asks no
/// syscall of it.
pub(super) struct DnsSocket {
    pub(super) sock: std::net::UdpSocket,
    dual: bool,
}

impl DnsSocket {
    pub(super) fn bind() -> io::Result<Self> {
        let dual = || -> io::Result<std::net::UdpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None)?;
            s.set_only_v6(false)?;
            s.bind(&SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0).into())?;
            Ok(s.into())
        };
        match dual() {
            Ok(sock) => Ok(Self { sock, dual: true }),
            Err(_) => Ok(Self {
                sock: std::net::UdpSocket::bind("0.0.0.0:0")?,
                dual: false,
            }),
        }
    }

    /// Sends to `to`, an IPv4 resolver as an IPv4-mapped address from the
    /// dual-stack socket.
    pub(super) fn send_to(&self, q: &[u8], to: SocketAddr) -> io::Result<usize> {
        let to = match to.ip() {
            IpAddr::V4(a) if self.dual => {
                SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), to.port())
            }
            _ => to,
        };
        self.sock.send_to(q, to)
    }

    /// Receives an answer, its source as the resolver was configured (an
    /// IPv4-mapped source back to IPv4).
    pub(super) fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, src) = self.sock.recv_from(buf)?;
        Ok((n, SocketAddr::new(src.ip().to_canonical(), src.port())))
    }
}

impl Worker {
    /// Sends a query to the node's first resolver under an id of our own.
    pub(super) fn forward_dns(
        &mut self,
        port: PortId,
        peer: crate::wire::udp_reply::UdpPeer,
        query: &[u8],
    ) {
        let st = self.state.load();
        let Some(up) = st.dns_upstream.first().copied() else {
            self.switch.counters.drop(DropReason::NoRoute);
            return;
        };
        if query.len() < 12 {
            self.switch.counters.drop(DropReason::Malformed);
            return;
        }
        // unpredictable ids, so an off-path host cannot guess which to forge
        let mut id = random_u16();
        while self.dns_pending.contains(id) {
            id = random_u16();
        }
        let orig = u16::from_be_bytes([query[0], query[1]]);
        let now = self.now_ms();
        match self.dns_pending.insert(id, port, now, (peer, orig)) {
            Ok(false) => {}
            // another port's oldest query gave up its slot: lost like a busy one
            Ok(true) => self.switch.counters.drop(DropReason::DnsBusy),
            Err(_) => {
                self.switch.counters.drop(DropReason::DnsBusy);
                return;
            }
        }
        let q = &mut self.dns_scratch[..query.len()];
        q.copy_from_slice(query);
        q[0..2].copy_from_slice(&id.to_be_bytes());
        if self.dns_sock.send_to(q, up).is_err() {
            self.dns_pending.remove(id);
            self.switch.counters.drop(DropReason::TxFailed);
        }
    }

    /// Answers from the node's resolvers, relayed to whoever asked (only from a
    /// configured resolver, and only for a query we sent).
    pub(super) fn drain_dns(&mut self, buf: &mut PacketBuf) -> bool {
        let st = self.state.load();
        for _ in 0..BUDGET {
            let (n, src) = match self.dns_sock.recv_from(&mut self.dns_scratch) {
                Ok(r) => r,
                Err(_) => return false,
            };
            if n < 12 || !st.dns_upstream.contains(&src) {
                self.switch.counters.drop(DropReason::Malformed);
                continue;
            }
            let id = u16::from_be_bytes([self.dns_scratch[0], self.dns_scratch[1]]);
            let Some((port, (peer, orig))) = self.dns_pending.remove(id) else {
                continue; // late or unknown: the asker has given up
            };
            self.dns_scratch[0..2].copy_from_slice(&orig.to_be_bytes());
            match crate::wire::udp_reply::write(buf.frame_slot(), &peer, &self.dns_scratch[..n]) {
                Some(len) => {
                    buf.set_frame_len(len);
                    self.switch.counters.dns_answers += 1;
                    self.write_port(port, buf.data());
                }
                None => self.switch.counters.drop(DropReason::TooBig),
            }
        }
        true
    }
}
