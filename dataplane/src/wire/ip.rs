//! An IP header of either version, for writers that answer in the family
//! they were asked in (a RST, a DNS answer) and need not care which.

use super::ethernet::EtherType;
use super::{ipv4, ipv6};
pub use etherparse::IpNumber;
use std::net::IpAddr;

/// An IPv4 or IPv6 header as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    V4(ipv4::Repr),
    V6(ipv6::Repr),
}

impl Repr {
    /// The header the agent's own packets carry from `src` to `dst`, for
    /// `payload_len` bytes of `proto`: TTL or hop limit 64 (IPv4: DF set, ID
    /// 0). `None` when the addresses are of different families.
    pub fn new(src: IpAddr, dst: IpAddr, proto: IpNumber, payload_len: usize) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Some(Repr::V4(ipv4::Repr::new(s, d, proto, payload_len)))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Repr::V6(ipv6::Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len,
                hop_limit: 64,
            })),
            _ => None,
        }
    }

    /// What the Ethernet header says of it.
    pub fn ethertype(&self) -> EtherType {
        match self {
            Repr::V4(_) => EtherType::IPV4,
            Repr::V6(_) => EtherType::IPV6,
        }
    }

    pub fn header_len(&self) -> usize {
        match self {
            Repr::V4(r) => r.header_len(),
            Repr::V6(r) => r.header_len(),
        }
    }

    /// Writes the header at the start of `buf` (which holds at least
    /// [`Repr::header_len`] bytes).
    pub fn emit(&self, buf: &mut [u8]) {
        match self {
            Repr::V4(r) => r.emit(&mut ipv4::Packet::new_unchecked(buf)),
            Repr::V6(r) => r.emit(&mut ipv6::Packet::new_unchecked(buf)),
        }
    }

    /// The pseudo-header sum of the transport checksum over this header.
    pub fn pseudo(&self) -> u64 {
        match self {
            Repr::V4(r) => r.pseudo(),
            Repr::V6(r) => r.pseudo(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_kept_apart() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(Repr::new(v4, v6, IpNumber::UDP, 8), None);
        let r = Repr::new(v6, v6, IpNumber::UDP, 8).unwrap();
        assert_eq!((r.header_len(), r.ethertype()), (40, EtherType::IPV6));
        let mut b = [0u8; 40];
        r.emit(&mut b);
        let p = ipv6::Packet::new_checked(&b[..]).unwrap();
        assert_eq!(ipv6::Repr::parse(&p).pseudo(), r.pseudo());
    }
}
