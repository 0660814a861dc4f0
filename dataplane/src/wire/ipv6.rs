//! IPv6 fixed headers (RFC 8200). Extension headers are walked by
//! [`super::ipv6_chain`]; most of the switch handles only a transport header
//! right after the fixed one.

use super::{checksum, Error};
pub use etherparse::IpNumber;
use std::net::Ipv6Addr;

pub const HEADER_LEN: usize = 40;

mod field {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

view! {
    /// A view of an IPv6 packet (from its fixed header on).
    ///
    /// `new_unchecked`: accessors panic under [`HEADER_LEN`] bytes.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a buffer holding the fixed header, version 6 (etherparse's
    /// checks). As for IPv4, the payload length is not held against the
    /// buffer (padding, quotes): [`Packet::payload`] ends at the first end.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        etherparse::Ipv6HeaderSlice::from_slice(buffer.as_ref())?;
        Ok(Self { buffer })
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The payload length field: what follows the fixed header.
    #[inline]
    pub fn payload_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::LENGTH];
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    #[inline]
    pub fn next_header(&self) -> IpNumber {
        IpNumber(self.buffer.as_ref()[field::NXT_HDR])
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// The pseudo-header sum of the transport checksum, for a transport of
    /// `l4_len` bytes right after the fixed header.
    #[inline]
    pub fn pseudo(&self, l4_len: usize) -> u64 {
        let b = self.buffer.as_ref();
        checksum::pseudo(
            &b[field::SRC],
            &b[field::DST],
            b[field::NXT_HDR],
            l4_len as u32,
        )
    }

    /// The payload: after the fixed header, to the payload length or the
    /// buffer's end, whichever comes first.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + self.payload_len()).min(b.len());
        b.get(HEADER_LEN..end).unwrap_or(&[])
    }
}

#[inline]
fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Version 6, traffic class and flow label zero.
    #[inline]
    pub fn set_version(&mut self) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    }

    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    #[inline]
    pub fn set_next_header(&mut self, p: IpNumber) {
        self.buffer.as_mut()[field::NXT_HDR] = p.0;
    }

    #[inline]
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Writes `a` as the source address; returns the checksum change for the
    /// transport checksum, whose pseudo-header covers it (IPv6 has no header
    /// checksum of its own).
    #[inline]
    pub fn rewrite_src_addr(&mut self, a: Ipv6Addr) -> u64 {
        self.rewrite(field::SRC, a)
    }

    /// [`Packet::rewrite_src_addr`] of the destination.
    #[inline]
    pub fn rewrite_dst_addr(&mut self, a: Ipv6Addr) -> u64 {
        self.rewrite(field::DST, a)
    }

    #[inline(always)]
    fn rewrite(&mut self, at: std::ops::Range<usize>, a: Ipv6Addr) -> u64 {
        checksum::replace(&mut self.buffer.as_mut()[at], &a.octets())
    }

    /// Everything after the fixed header, to the buffer's end.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// An IPv6 fixed header as values (traffic class and flow label zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: IpNumber,
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header; the payload is the caller's.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_version();
        p.set_payload_len(self.payload_len as u16);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
    }

    /// The pseudo-header sum of the transport checksum over this header
    /// (RFC 8200 8.1, with the transport right after the fixed header).
    pub fn pseudo(&self) -> u64 {
        checksum::pseudo_v6(
            self.src_addr,
            self.dst_addr,
            self.next_header.0,
            self.payload_len as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: IpNumber::TCP,
            payload_len: 4,
            hop_limit: 64,
        };
        let mut b = [0xffu8; 48];
        r.emit(&mut Packet::new_unchecked(&mut b[..]));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p), r);
        assert_eq!(p.payload().len(), 4, "padding is not payload");
        let e = etherparse::Ipv6HeaderSlice::from_slice(&b).unwrap();
        assert_eq!(e.source_addr(), r.src_addr);
        assert_eq!(e.payload_length(), 4);
        assert_eq!(Packet::new_checked(&b[..39]), Err(Error::Truncated));
        b[0] = 0x45;
        assert_eq!(Packet::new_checked(&b[..]), Err(Error::Malformed));
    }

    proptest! {
        #[test]
        fn checked_views_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                prop_assert!(p.payload().len() + HEADER_LEN <= data.len());
                let _ = Repr::parse(&p);
            }
        }
    }
}
