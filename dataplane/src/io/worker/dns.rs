//! The socket the embedded DNS's relay speaks to the node's resolvers from
//! (the relay itself is the datapath's).

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
    /// Answers from the node's resolvers, handed to the datapath (which
    /// relays those it waits on to whoever asked).
    pub(super) fn drain_dns(&mut self) -> bool {
        for _ in 0..BUDGET {
            let (n, src) = match self.io.dns_sock.recv_from(&mut self.dns_scratch) {
                Ok(r) => r,
                Err(_) => return false,
            };
            self.dp
                .handle_dns_rx(src, &mut self.dns_scratch[..n], &mut self.io);
        }
        self.dp.flush(&mut self.io);
        true
    }
}
