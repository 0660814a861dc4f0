//! A UDP/IPv4 frame from the gateway to an endpoint, written into a buffer: how
//! the agent's own services (the embedded DNS, its forwarder) answer containers.

use super::{ethernet, ipv4, ipv6, udp};
use crate::Mac;
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;

/// Who gets the answer, and from where it comes (both addresses of one family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPeer {
    pub client_mac: Mac,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub gateway_mac: Mac,
    pub gateway_ip: IpAddr,
    pub gateway_port: u16,
}

/// Writes Ethernet + IPv4 or IPv6 + UDP + `payload` into `room`; returns the
/// frame's length, or `None` when it does not fit (or the families differ).
pub fn write(room: &mut [u8], p: &UdpPeer, payload: &[u8]) -> Option<usize> {
    const ETH: usize = ethernet::HEADER_LEN;
    let (ethertype, ip_len) = match (p.gateway_ip, p.client_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (ethernet::EtherType::IPV4, ipv4::MIN_HEADER_LEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => (ethernet::EtherType::IPV6, ipv6::HEADER_LEN),
        _ => return None,
    };
    let udp_len = udp::HEADER_LEN + payload.len();
    let total = ETH + ip_len + udp_len;
    if room.len() < total || udp_len > usize::from(u16::MAX) - 20 {
        return None;
    }
    ethernet::Repr {
        src_addr: p.gateway_mac,
        dst_addr: p.client_mac,
        ethertype,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut room[..]));
    let ip = &mut room[ETH..total];
    let pseudo = match (p.gateway_ip, p.client_ip) {
        (IpAddr::V4(g), IpAddr::V4(c)) => {
            let r = ipv4::Repr::new(g, c, ipv4::IpNumber::UDP, udp_len);
            r.emit(&mut ipv4::Packet::new_unchecked(&mut ip[..]));
            r.pseudo()
        }
        (IpAddr::V6(g), IpAddr::V6(c)) => {
            let r = ipv6::Repr {
                src_addr: g,
                dst_addr: c,
                next_header: ipv6::IpNumber::UDP,
                payload_len: udp_len,
                hop_limit: 64,
            };
            r.emit(&mut ipv6::Packet::new_unchecked(&mut ip[..]));
            r.pseudo()
        }
        _ => return None,
    };
    let dgram = &mut ip[ip_len..];
    dgram[udp::HEADER_LEN..].copy_from_slice(payload);
    udp::Repr {
        src_port: p.gateway_port,
        dst_port: p.client_port,
        payload_len: payload.len(),
    }
    .emit(&mut udp::Packet::new_unchecked(dgram), Some(pseudo));
    Some(total)
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any payload (a resolver's answer is relayed as it came) is written
        /// as a UDP frame that parses, with the payload whole, or refused.
        #[test]
        fn any_payload_makes_a_frame_that_parses(
            payload in proptest::collection::vec(any::<u8>(), 0..1600),
            room in 0usize..1700,
        ) {
            let p = UdpPeer {
                client_mac: [2, 0, 0, 0, 0, 1],
                client_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
                client_port: 40000,
                gateway_mac: [2, 0, 0, 0, 0, 2],
                gateway_ip: Ipv4Addr::new(10, 0, 0, 1).into(),
                gateway_port: 53,
            };
            let mut out = vec![0u8; room];
            if let Some(n) = write(&mut out, &p, &payload) {
                let s = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
                match s.transport {
                    Some(etherparse::TransportSlice::Udp(u)) => prop_assert_eq!(u.payload(), &payload[..]),
                    _ => prop_assert!(false, "not UDP"),
                }
            } else {
                prop_assert!(room < 14 + 20 + 8 + payload.len());
            }
        }

        /// The same over IPv6, whose UDP checksum is mandatory: it verifies.
        #[test]
        fn an_ipv6_answer_parses_and_its_checksum_verifies(
            payload in proptest::collection::vec(any::<u8>(), 0..1400),
        ) {
            let p = UdpPeer {
                client_mac: [2, 0, 0, 0, 0, 1],
                client_ip: "fd00::2".parse().unwrap(),
                client_port: 40000,
                gateway_mac: [2, 0, 0, 0, 0, 2],
                gateway_ip: "fd00::1".parse().unwrap(),
                gateway_port: 53,
            };
            let mut out = vec![0u8; 1600];
            let n = write(&mut out, &p, &payload).unwrap();
            let s = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = &s.net else {
                return Err(TestCaseError::fail("not IPv6"));
            };
            let (src, dst) = (ip.header().source(), ip.header().destination());
            match s.transport {
                Some(etherparse::TransportSlice::Udp(u)) => {
                    prop_assert_eq!(u.payload(), &payload[..]);
                    let c = u.to_header().calc_checksum_ipv6_raw(src, dst, u.payload()).unwrap();
                    prop_assert_eq!(c, u.checksum());
                }
                _ => prop_assert!(false, "not UDP"),
            }
        }
    }
}
