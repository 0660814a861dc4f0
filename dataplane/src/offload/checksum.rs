//! The Internet checksum (RFC 1071), summed 8 bytes at a time: the per-byte loop
//! is the cost that dominates segmentation otherwise.

/// Adds `data` to a running ones'-complement sum (not folded, not complemented).
#[inline]
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = sum.overflowing_add(v);
        sum = s + u64::from(carry);
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let v = u64::from_be_bytes(tail);
    let (s, carry) = sum.overflowing_add(v);
    s + u64::from(carry)
}

/// Folds a 64-bit sum to 16 bits (still not complemented).
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The pseudo-header sum of TCP/UDP over IPv4 or IPv6 (addresses as their bytes).
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: u32) -> u64 {
    let sum = add(add(0, src), dst);
    let (s, c) = sum.overflowing_add(u64::from(proto) + u64::from(len));
    s + u64::from(c)
}

/// The finished checksum of an IPv4 header (its checksum field must be zero).
pub fn ipv4_header(h: &[u8]) -> u16 {
    !fold(add(0, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook byte-pair loop, to check the wide one against.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for p in data.chunks(2) {
            let w = if p.len() == 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                u16::from_be_bytes([p[0], 0])
            };
            s += u32::from(w);
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    proptest::proptest! {
        #[test]
        fn matches_the_naive_sum(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            proptest::prop_assert_eq!(fold(add(0, &data)), naive(&data));
        }
    }
}
