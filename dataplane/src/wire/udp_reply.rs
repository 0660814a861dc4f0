//! A UDP/IPv4 frame from the gateway to an endpoint, written into a buffer: how
//! the agent's own services (the embedded DNS, its forwarder) answer containers.

use super::{ethernet, ip, udp};
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
    let udp_len = udp::HEADER_LEN + payload.len();
    let ip = ip::Repr::new(p.gateway_ip, p.client_ip, ip::IpNumber::UDP, udp_len)?;
    let total = ETH + ip.header_len() + udp_len;
    if room.len() < total || udp_len > usize::from(u16::MAX) - 20 {
        return None;
    }
    ethernet::Repr {
        src_addr: p.gateway_mac,
        dst_addr: p.client_mac,
        ethertype: ip.ethertype(),
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut room[..]));
    ip.emit(&mut room[ETH..]);
    let dgram = &mut room[ETH + ip.header_len()..total];
    dgram[udp::HEADER_LEN..].copy_from_slice(payload);
    udp::Repr {
        src_port: p.gateway_port,
        dst_port: p.client_port,
        payload_len: payload.len(),
    }
    .emit(&mut udp::Packet::new_unchecked(dgram), Some(ip.pseudo()));
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
