//! A UDP/IPv4 frame from the gateway to an endpoint, written into a buffer: how
//! the agent's own services (the embedded DNS, its forwarder) answer containers.

use crate::offload::checksum;
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
    const ETH: usize = 14;
    let ip_len = match (p.gateway_ip, p.client_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 20,
        (IpAddr::V6(_), IpAddr::V6(_)) => 40,
        _ => return None,
    };
    let udp_len = 8 + payload.len();
    let total = ETH + ip_len + udp_len;
    if room.len() < total || udp_len > usize::from(u16::MAX) - 20 {
        return None;
    }
    room[0..6].copy_from_slice(&p.client_mac);
    room[6..12].copy_from_slice(&p.gateway_mac);
    let (src, dst): (&[u8], &[u8]);
    let (s4, d4, s6, d6);
    match (p.gateway_ip, p.client_ip) {
        (IpAddr::V4(g), IpAddr::V4(c)) => {
            (s4, d4) = (g.octets(), c.octets());
            (src, dst) = (&s4, &d4);
            room[12..14].copy_from_slice(&[0x08, 0x00]);
            let ip = &mut room[ETH..ETH + 20];
            ip.copy_from_slice(&[
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip[12..16].copy_from_slice(src);
            ip[16..20].copy_from_slice(dst);
            let c = checksum::ipv4_header(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (g, c) => {
            let (IpAddr::V6(g), IpAddr::V6(c)) = (g, c) else {
                return None;
            };
            (s6, d6) = (g.octets(), c.octets());
            (src, dst) = (&s6, &d6);
            room[12..14].copy_from_slice(&[0x86, 0xdd]);
            let ip = &mut room[ETH..ETH + 40];
            ip[..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            ip[6] = 17;
            ip[7] = 64;
            ip[8..24].copy_from_slice(src);
            ip[24..40].copy_from_slice(dst);
        }
    }
    let u = ETH + ip_len;
    room[u..u + 2].copy_from_slice(&p.gateway_port.to_be_bytes());
    room[u + 2..u + 4].copy_from_slice(&p.client_port.to_be_bytes());
    room[u + 4..u + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    room[u + 6..u + 8].copy_from_slice(&[0, 0]);
    room[u + 8..u + udp_len].copy_from_slice(payload);
    let pseudo = checksum::pseudo(src, dst, 17, udp_len as u32);
    let mut c = !checksum::fold(checksum::add(pseudo, &room[u..u + udp_len]));
    if c == 0 {
        c = 0xffff;
    }
    room[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
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
