//! The IPv4 + UDP header around a VXLAN datagram inside the tunnel. boringtun
//! carries IP packets only, and a standard WireGuard peer hands what it decrypts
//! to its IP stack, whose kernel VXLAN then reads UDP 4789.

use crate::wire::{ipv4, udp};
use crate::VXLAN_PORT;
use std::net::Ipv4Addr;

pub const INNER_HEADER_LEN: usize = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;

/// Writes an IPv4/UDP header (`src` → `dst`:4789, source port from the flow hash,
/// UDP checksum 0 as RFC 7348 allows over IPv4) for a payload of `payload_len`.
pub fn write(
    out: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    flow_hash: u32,
    payload_len: usize,
) -> bool {
    let total = INNER_HEADER_LEN + payload_len;
    if out.len() < INNER_HEADER_LEN || total > u16::MAX as usize {
        return false;
    }
    let udp_len = udp::HEADER_LEN + payload_len;
    ipv4::Repr::new(src, dst, ipv4::IpNumber::UDP, udp_len)
        .emit(&mut ipv4::Packet::new_unchecked(&mut out[..]));
    let dgram = udp::Repr {
        src_port: 49152 + (flow_hash % 16384) as u16,
        dst_port: VXLAN_PORT,
        payload_len,
    };
    let at = ipv4::MIN_HEADER_LEN;
    dgram.emit(
        &mut udp::Packet::new_unchecked(&mut out[at..INNER_HEADER_LEN]),
        None,
    );
    true
}

/// Checks a decrypted packet is IPv4/UDP from `peer` to `local`:4789 and returns
/// where its VXLAN datagram starts.
pub fn strip(packet: &[u8], local: Ipv4Addr, peer: Ipv4Addr) -> Option<usize> {
    let ip = ipv4::Packet::new_checked(packet).ok()?;
    if ip.next_header() != ipv4::IpNumber::UDP
        || ip.src_addr() != peer
        || ip.dst_addr() != local
        || ip.is_fragment()
    {
        return None;
    }
    let off = ip.header_len();
    let dgram = udp::Packet::new_checked(packet.get(off..)?).ok()?;
    (dgram.dst_port() == VXLAN_PORT).then_some(off + udp::HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_valid_ip_checksum() {
        let a = Ipv4Addr::new(100, 64, 0, 1);
        let b = Ipv4Addr::new(100, 64, 0, 2);
        let mut p = vec![0u8; 28 + 10];
        assert!(write(&mut p, a, b, 7, 10));
        let h = etherparse::Ipv4Header::from_slice(&p).unwrap().0;
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!(strip(&p, b, a), Some(28));
        assert_eq!(strip(&p, a, b), None, "wrong direction");
        p[23] = 80; // not VXLAN
        assert_eq!(strip(&p, b, a), None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What the tunnel decrypts is checked without panicking, and what
        /// `write` frames is found again by `strip`.
        #[test]
        fn strip_any_packet_and_round_trip(
            packet in proptest::collection::vec(any::<u8>(), 0..80),
            hash in any::<u32>(),
            payload in 0usize..2000,
        ) {
            let (a, b) = (Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 2));
            if let Some(off) = strip(&packet, a, b) {
                prop_assert!(off <= packet.len());
            }
            let mut p = vec![0u8; INNER_HEADER_LEN + payload];
            prop_assert!(write(&mut p, b, a, hash, payload));
            prop_assert_eq!(strip(&p, a, b), Some(INNER_HEADER_LEN));
        }
    }
}
