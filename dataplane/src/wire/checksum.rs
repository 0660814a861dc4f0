//! The Internet checksum (RFC 1071), the one place it is computed: whole
//! (over headers and payloads), with the TCP/UDP/ICMPv6 pseudo-header, and
//! updated incrementally (RFC 1624) when a rewrite changes a few words.
//!
//! The sum is byte-order independent (RFC 1071 section 2(B)), so the data is
//! summed as native 32-bit words into four independent 64-bit accumulators,
//! with no carry to chain from one add to the next: the compiler vectorises
//! the loop, and the one pass over a segment's payload (segmentation, the
//! receive side's check) runs several times faster than an add-with-carry
//! chain, which waits on each carry.

use std::net::{Ipv4Addr, Ipv6Addr};

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

/// The finished checksum of `data` alone (ICMPv4, whose checksum has no
/// pseudo-header), its own checksum field zero.
#[inline]
pub fn data(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// The finished checksum of `data` after the pseudo-header sum `pseudo`.
#[inline]
pub fn with_pseudo(pseudo: u64, data: &[u8]) -> u16 {
    !fold(add(pseudo, data))
}

/// [`pseudo`] of two IPv4 addresses.
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u64 {
    pseudo(&src.octets(), &dst.octets(), proto, len)
}

/// [`pseudo`] of two IPv6 addresses.
#[inline]
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u64 {
    pseudo(&src.octets(), &dst.octets(), proto, len)
}

/// Whether `data` (checksum field included) after `pseudo` sums to all ones,
/// as a packet with a right checksum does.
#[inline]
pub fn verifies(pseudo: u64, data: &[u8]) -> bool {
    fold(add(pseudo, data)) == 0xffff
}

/// The `~m + m'` part of RFC 1624 eqn. 3 (HC' = ~(~HC + ~m + m')) for the
/// 16-bit words of `old` becoming `new` (equal, even lengths). The deltas of
/// several fields add up, so a checksum covering them all is updated once:
/// rewriting an address of a 1400-byte packet touches a few words, not the
/// whole payload.
#[inline]
pub fn delta(old: &[u8], new: &[u8]) -> u64 {
    let mut sum = 0u64;
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u64::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u64::from(u16::from_be_bytes([n[0], n[1]]));
    }
    sum
}

/// Writes `new` over `field` (an address, a port) and returns the [`delta`]
/// the checksums covering it take.
#[inline]
pub fn replace(field: &mut [u8], new: &[u8]) -> u64 {
    let d = delta(field, new);
    field.copy_from_slice(new);
    d
}

/// A stored checksum `check` updated by a [`delta`] (RFC 1624 eqn. 3).
#[inline]
pub fn update(check: u16, delta: u64) -> u16 {
    !fold(u64::from(!check) + delta)
}

/// [`update`] of the big-endian checksum stored at `field` (two bytes).
#[inline]
pub fn update_field(field: &mut [u8], delta: u64) {
    let c = update(u16::from_be_bytes([field[0], field[1]]), delta);
    field[..2].copy_from_slice(&c.to_be_bytes());
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

        /// RFC 1624: a checksum updated for words that changed equals the
        /// checksum computed anew over the changed data (as ones'-complement
        /// numbers: 0 and 0xffff are both zero).
        #[test]
        fn an_update_equals_a_recompute(
            data in proptest::collection::vec(proptest::num::u8::ANY, 2..1500),
            at in 0usize..750,
            new in proptest::collection::vec(proptest::num::u8::ANY, 2..20),
        ) {
            let mut data = data;
            let at = (at * 2).min((data.len() - 2) & !1);
            let n = (new.len() & !1).min((data.len() - at) & !1);
            let before = self::data(&data);
            let old = data[at..at + n].to_vec();
            data[at..at + n].copy_from_slice(&new[..n]);
            let updated = update(before, delta(&old, &new[..n]));
            let norm = |v: u16| if v == 0xffff { 0 } else { v };
            proptest::prop_assert_eq!(norm(updated), norm(self::data(&data)));
            let mut field = before.to_be_bytes();
            update_field(&mut field, delta(&old, &new[..n]));
            proptest::prop_assert_eq!(u16::from_be_bytes(field), updated);
        }
    }
}
