//! The underlay: one socket that receives VXLAN on 4789, and a small pool of send
//! sockets on distinct source ports.
//!
//! RFC 7348 wants the outer source port to follow the inner flow (for ECMP and the
//! receiver's RSS). A kernel UDP socket has one source port, so the worker picks a
//! socket of the pool by the inner flow's hash. Kernel UDP sockets also fill in a
//! real outer checksum, which the receiver's UDP GRO needs.

use super::gso;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

pub struct Underlay {
    pub rx: UdpSocket,
    tx: Vec<UdpSocket>,
    port: u16,
}

/// A UDP socket with `SO_REUSEPORT`, so each worker has its own on 4789 and the
/// kernel spreads flows over them by their 4-tuple (one flow, one worker).
fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

impl Underlay {
    /// Binds `[::]`/`0.0.0.0`:`port` for receiving and `pool` send sockets on
    /// `local` (so datagrams leave from the advertised address that peers check).
    pub fn bind(local: IpAddr, port: u16, pool: usize) -> io::Result<Self> {
        let any: IpAddr = match local {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let rx = bind_reuseport(SocketAddr::new(any, port))?;
        rx.set_nonblocking(true)?;
        let tx = (0..pool.max(1))
            .map(|_| {
                let s = UdpSocket::bind(SocketAddr::new(local, 0))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { rx, tx, port })
    }

    /// Sends one VXLAN datagram to `vtep` from the socket that `flow_hash` selects.
    pub fn send(&self, flow_hash: u32, vtep: IpAddr, datagram: &[u8]) -> io::Result<()> {
        let s = &self.tx[flow_hash as usize % self.tx.len()];
        s.send_to(datagram, SocketAddr::new(vtep, self.port))
            .map(|_| ())
    }

    /// Sends `buf`, a run of equal-sized VXLAN datagrams (`seg` bytes each, the last
    /// may be shorter), to `vtep` in one `sendmsg` with `UDP_SEGMENT`: the kernel
    /// (or the NIC) cuts them apart, one syscall for up to 64 datagrams.
    pub fn send_gso(&self, flow_hash: u32, vtep: IpAddr, buf: &[u8], seg: u16) -> io::Result<()> {
        let s = &self.tx[flow_hash as usize % self.tx.len()];
        gso::send(s, SocketAddr::new(vtep, self.port), buf, seg)
    }

    /// Turns on UDP GRO on the receive socket: the kernel hands over runs of
    /// datagrams of one flow in one read (see [`gso::recv`]).
    pub fn enable_gro(&self) -> io::Result<()> {
        gso::enable_gro(&self.rx)
    }

    pub fn source_ports(&self) -> Vec<u16> {
        self.tx
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Flows go out from different source ports, each flow always from the same one,
    /// and from the bound address (loopback here, so the test needs no namespace).
    #[test]
    fn source_port_follows_the_flow_hash() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let sink = UdpSocket::bind((lo, 0)).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let port = sink.local_addr().unwrap().port();
        // receive on any free port; send to the sink's
        let u = Underlay {
            port,
            ..Underlay::bind(lo, 0, 8).unwrap()
        };
        let mut seen = std::collections::BTreeMap::new();
        let mut buf = [0u8; 16];
        for hash in [1u32, 2, 3, 9, 1, 2, 3, 9] {
            u.send(hash, lo, &hash.to_be_bytes()).unwrap();
            let (n, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(n, 4);
            assert_eq!(from.ip(), lo);
            let prev = seen.insert(hash, from.port());
            assert!(
                prev.is_none() || prev == Some(from.port()),
                "flow {hash} changed source port"
            );
        }
        let ports: std::collections::BTreeSet<u16> = seen.values().copied().collect();
        assert_eq!(
            ports.len(),
            3,
            "hashes 1 and 9 share a socket of 8, the rest differ: {seen:?}"
        );
    }
}
