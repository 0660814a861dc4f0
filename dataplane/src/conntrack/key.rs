//! The table's key: a 5-tuple in a zone, hashed so that either direction's
//! lookup is one probe of the index.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// A 5-tuple in a zone (the network's VNI; ingress has its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub zone: u32,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Key {
    /// A hash of the flow's addresses, protocol and ports only, the same on
    /// every node (no MACs, no seed): consistent schedulers (maglev) then send
    /// a flow to the same task whichever node it enters by.
    pub fn flow_hash(&self) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K).rotate_left(29);
        let mut h = mix(0, addr_pair(&self.src, &self.dst));
        if let (IpAddr::V6(s), IpAddr::V6(d)) = (self.src, self.dst) {
            h = mix(h, high_words(s, d));
        }
        h = mix(
            h,
            u64::from(self.sport) << 24 | u64::from(self.dport) << 8 | u64::from(self.proto),
        );
        h ^ (h >> 32)
    }

    pub fn reversed(&self) -> Key {
        Key {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
}

/// Both addresses in one word: an IPv4 pair whole, an IPv6 pair by the low 32
/// bits of each (the interface identifiers, where flows differ most; the rest is
/// [`high_words`]). A mixed pair never forms a key (both ends are one family).
#[inline(always)]
fn addr_pair(src: &IpAddr, dst: &IpAddr) -> u64 {
    let low = |a: &IpAddr| match a {
        IpAddr::V4(a) => u32::from(*a),
        IpAddr::V6(a) => u128::from(*a) as u32,
    };
    u64::from(low(src)) << 32 | u64::from(low(dst))
}

/// The upper 96 bits of an IPv6 pair, folded into one word.
#[inline(always)]
fn high_words(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> u64 {
    let (s, d) = (u128::from(src) >> 32, u128::from(dst) >> 32);
    (s as u64)
        ^ ((s >> 64) as u64).rotate_left(17)
        ^ (d as u64).rotate_left(31)
        ^ ((d >> 64) as u64).rotate_left(47)
}

/// Two words instead of a field at a time: the key is hashed for every packet
/// of a tracked connection. (The zone is a 24-bit VNI, so the protocol fits above
/// it; equal keys still hash equally, which is all `Eq` needs.)
impl Hash for Key {
    #[inline(always)]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match (&self.src, &self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.write_u64(u64::from(u32::from(*s)) << 32 | u64::from(u32::from(*d)))
            }
            (s, d) => {
                h.write_u64(addr_pair(s, d));
                if let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) {
                    h.write_u64(high_words(*s, *d));
                }
            }
        }
        h.write_u64(
            (u64::from(self.zone) ^ u64::from(self.proto) << 24) << 32
                | u64::from(self.sport) << 16
                | u64::from(self.dport),
        );
    }
}
