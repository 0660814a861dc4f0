//! A hash of an Ethernet frame's inner flow, for the outer UDP source port.
//!
//! RFC 7348 asks for a source port derived from the inner headers, so that
//! underlay ECMP and the receiver's RSS spread flows while keeping each flow on one
//! path (no reordering). The kernel hashes the same fields.

const K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(K).rotate_left(29)
}

/// Hashes MACs, and for IPv4/IPv6 the addresses, protocol and L4 ports. Never panics;
/// short frames just hash fewer bytes.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h = 0u64;
    if frame.len() < 14 {
        return 0;
    }
    h = mix(
        h,
        u64::from_le_bytes([
            frame[0], frame[1], frame[2], frame[3], frame[4], frame[5], frame[6], frame[7],
        ]),
    );
    h = mix(
        h,
        u64::from_le_bytes([
            frame[8], frame[9], frame[10], frame[11], frame[12], frame[13], 0, 0,
        ]),
    );
    let ip = &frame[14..];
    match (frame[12], frame[13]) {
        (0x08, 0x00) if ip.len() >= 20 => {
            let v4 = super::ipv4::Packet::new_unchecked(ip);
            h = mix(
                h,
                u64::from_le_bytes([
                    ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19],
                ]),
            );
            h = mix(h, u64::from(ip[9]));
            // Ports only for unfragmented TCP/UDP: later fragments carry none, and
            // must take the same path as the first.
            let ported = matches!(ip[9], 6 | 17);
            let ihl = v4.header_len();
            if let Some(p) = ip.get(ihl..ihl + 4).filter(|_| ported && !v4.is_fragment()) {
                h = mix(h, u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]])));
            }
        }
        (0x86, 0xdd) if ip.len() >= 40 => {
            for c in ip[8..40].chunks_exact(8) {
                h = mix(h, u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
            }
            h = mix(h, u64::from(ip[6]));
            if let Some(p) = ip.get(40..44) {
                h = mix(h, u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]])));
            }
        }
        _ => {}
    }
    fmix64(h) as u32
}

/// MurmurHash3's finalizer: every input bit reaches the low bits that pick a socket.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f
    }

    #[test]
    fn stable_per_flow_and_spread_across_flows() {
        assert_eq!(flow_hash(&udp_frame(1000)), flow_hash(&udp_frame(1000)));
        // 64 flows over a pool of 8 source sockets: every socket gets some.
        let mut used = [0u32; 8];
        for p in 0..64 {
            used[(flow_hash(&udp_frame(1000 + p)) % 8) as usize] += 1;
        }
        assert!(used.iter().all(|&n| n > 0), "uneven spread: {used:?}");
    }

    #[test]
    fn fragments_hash_like_their_first_fragment() {
        let mut first = udp_frame(1000);
        first[14 + 6] = 0x20; // MF
        let mut later = udp_frame(4242); // bytes at the port offset are payload now
        later[14 + 6] = 0x00;
        later[14 + 7] = 0xb9; // fragment offset
        assert_eq!(flow_hash(&first), flow_hash(&later));
    }
}
