//! The Internet checksum (RFC 1071). The sum is byte-order independent
//! (RFC 1071 section 2(B)), so the data is summed as native 32-bit words into
//! four independent 64-bit accumulators, with no carry to chain from one add
//! to the next: the compiler vectorises the loop, and the one pass over a
//! segment's payload (segmentation, the receive side's check) runs several
//! times faster than an add-with-carry chain, which waits on each carry.

/// Adds `data` to a running ones'-complement sum (not folded, not complemented).
/// `data` starts on a 16-bit boundary of what is summed (an odd length is
/// padded with a zero byte, as the checksum's last word is).
#[inline]
pub fn add(sum: u64, data: &[u8]) -> u64 {
    // 2^32 words of at most 2^32 each fit in a u64: no overflow below 16 GiB
    let mut acc = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += u64::from(u32::from_ne_bytes([
                c[4 * k],
                c[4 * k + 1],
                c[4 * k + 2],
                c[4 * k + 3],
            ]));
        }
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 16];
    tail[..rest.len()].copy_from_slice(rest);
    for (k, a) in acc.iter_mut().enumerate() {
        *a += u64::from(u32::from_ne_bytes([
            tail[4 * k],
            tail[4 * k + 1],
            tail[4 * k + 2],
            tail[4 * k + 3],
        ]));
    }
    let (s01, c01) = (acc[0] + acc[1]).overflowing_add(acc[2] + acc[3]);
    let native = fold(s01) as u64 + u64::from(c01);
    // words read in native order sum to the byte-swapped sum on a
    // little-endian machine (and to the sum itself on a big-endian one)
    let be = u64::from(u16::from_be(fold(native)));
    let (s, carry) = sum.overflowing_add(be);
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

        #[test]
        fn sums_in_parts_as_in_one(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
            cut in 0usize..1500,
            start in proptest::num::u64::ANY,
        ) {
            // a running sum carried in, and the data cut on a 16-bit boundary
            let cut = (cut * 2).min(data.len() & !1);
            let start = start >> 1;
            let whole = fold(add(start, &data));
            let parts = fold(add(add(start, &data[..cut]), &data[cut..]));
            // 0 and 0xffff are both zero in ones' complement
            let norm = |v: u16| if v == 0xffff { 0 } else { v };
            proptest::prop_assert_eq!(norm(whole), norm(parts));
        }
    }
}
