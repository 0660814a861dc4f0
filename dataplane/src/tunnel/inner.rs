//! The IPv4 + UDP header around a VXLAN datagram inside the tunnel. boringtun
//! carries IP packets only, and a standard WireGuard peer hands what it decrypts
//! to its IP stack, whose kernel VXLAN then reads UDP 4789.

use crate::VXLAN_PORT;
use std::net::Ipv4Addr;

pub const INNER_HEADER_LEN: usize = 28;

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
    let ip = &mut out[..20];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = crate::offload::checksum::ipv4_header(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let sport = 49152 + (flow_hash % 16384) as u16;
    let udp = &mut out[20..28];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    true
}

/// Checks a decrypted packet is IPv4/UDP from `peer` to `local`:4789 and returns
/// where its VXLAN datagram starts.
pub fn strip(packet: &[u8], local: Ipv4Addr, peer: Ipv4Addr) -> Option<usize> {
    let ip = etherparse::Ipv4HeaderSlice::from_slice(packet).ok()?;
    if ip.protocol() != etherparse::IpNumber::UDP
        || ip.source_addr() != peer
        || ip.destination_addr() != local
        || ip.is_fragmenting_payload()
    {
        return None;
    }
    let off = ip.slice().len();
    let udp = etherparse::UdpHeaderSlice::from_slice(packet.get(off..)?).ok()?;
    (udp.destination_port() == VXLAN_PORT).then_some(off + 8)
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
