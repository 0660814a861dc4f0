//! IPv4 headers (RFC 791). The header length (IHL) is read here and nowhere
//! else: every other module asks [`Packet::header_len`].

use super::{checksum, get_u16, Error};
pub use etherparse::IpNumber;
use std::net::Ipv4Addr;

/// The header without options.
pub const MIN_HEADER_LEN: usize = 20;

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

const DF: u16 = 0x4000;
const MF: u16 = 0x2000;
const OFFSET: u16 = 0x1fff;

view! {
    /// A view of an IPv4 packet (from its header on).
    ///
    /// `new_unchecked`: the fixed header's accessors need 20 bytes, [`Packet::header_len`] only the first.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a buffer holding a whole IPv4 header, options included:
    /// version 4, an IHL of at least 5 words, all of them there (etherparse's
    /// checks). The total length is not held against the buffer: an Ethernet
    /// frame may be padded past it and an ICMP error quotes a packet cut
    /// short, so [`Packet::payload`] ends at whichever comes first.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        etherparse::Ipv4HeaderSlice::from_slice(buffer.as_ref())?;
        Ok(Self { buffer })
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header's length in bytes, options included (IHL × 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The packet's length, header included, as the header says it.
    #[inline]
    pub fn total_len(&self) -> usize {
        usize::from(get_u16(self.buffer.as_ref(), field::LENGTH.start))
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT.start)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & MF != 0
    }

    /// The fragment offset, in 8-byte units: non-zero on all but the first
    /// fragment, which alone carries the transport header.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & OFFSET
    }

    /// Part of a fragmented datagram (any fragment, the first included).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF.start) & (MF | OFFSET) != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn next_header(&self) -> IpNumber {
        IpNumber(self.buffer.as_ref()[field::PROTOCOL])
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(0, &self.buffer.as_ref()[..self.header_len()])
    }

    /// The pseudo-header sum of the transport checksum over this header, for
    /// a transport of `l4_len` bytes (its own length field's, which a
    /// segment cut from a super-frame sets anew).
    #[inline]
    pub fn pseudo(&self, l4_len: usize) -> u64 {
        let b = self.buffer.as_ref();
        checksum::pseudo(
            &b[field::SRC],
            &b[field::DST],
            b[field::PROTOCOL],
            l4_len as u32,
        )
    }

    /// The payload: from the header's end to the total length or the
    /// buffer's end, whichever comes first (empty if the lengths disagree).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.total_len().min(b.len());
        b.get(self.header_len()..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and a header of `len` bytes (a multiple of 4).
    #[inline]
    pub fn set_version_and_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | (len / 4) as u8;
    }

    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        self.set_u16(field::LENGTH.start, len);
    }

    #[inline]
    pub fn set_ident(&mut self, id: u16) {
        self.set_u16(field::IDENT.start, id);
    }

    /// Sets the flags and fragment offset: DF as given, not a fragment.
    #[inline]
    pub fn set_unfragmented(&mut self, dont_frag: bool) {
        self.set_u16(field::FLG_OFF.start, if dont_frag { DF } else { 0 });
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    #[inline]
    pub fn set_next_header(&mut self, p: IpNumber) {
        self.buffer.as_mut()[field::PROTOCOL] = p.0;
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.set_u16(field::CHECKSUM.start, c);
    }

    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// Computes the header checksum anew.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::ipv4_header(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(c);
    }

    /// Writes `a` as the source address, updating the header checksum
    /// incrementally; returns the change, for the pseudo-header of a
    /// transport checksum to take the same way.
    #[inline]
    pub fn rewrite_src_addr(&mut self, a: Ipv4Addr) -> u64 {
        self.rewrite(field::SRC, a)
    }

    /// [`Packet::rewrite_src_addr`] of the destination.
    #[inline]
    pub fn rewrite_dst_addr(&mut self, a: Ipv4Addr) -> u64 {
        self.rewrite(field::DST, a)
    }

    #[inline(always)]
    fn rewrite(&mut self, at: std::ops::Range<usize>, a: Ipv4Addr) -> u64 {
        let b = self.buffer.as_mut();
        let d = checksum::replace(&mut b[at], &a.octets());
        checksum::update_field(&mut b[field::CHECKSUM], d);
        d
    }

    /// Everything after the header (to the buffer's end: set lengths first).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }

    #[inline(always)]
    fn set_u16(&mut self, at: usize, v: u16) {
        self.buffer.as_mut()[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// An IPv4 header without options, as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub next_header: IpNumber,
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub dont_frag: bool,
    pub ident: u16,
}

impl Repr {
    /// A header with DF set, TTL 64, ID 0: what the agent's own packets carry.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, next_header: IpNumber, payload_len: usize) -> Self {
        Self {
            src_addr: src,
            dst_addr: dst,
            next_header,
            payload_len,
            ttl: 64,
            dscp_ecn: 0,
            dont_frag: true,
            ident: 0,
        }
    }

    /// Reads a checked packet's header (its options are left out; a
    /// fragment's offset too: [`Packet::is_fragment`] tells).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self, Error> {
        let payload_len = p
            .total_len()
            .checked_sub(p.header_len())
            .ok_or(Error::Malformed)?;
        Ok(Self {
            src_addr: p.src_addr(),
            dst_addr: p.dst_addr(),
            next_header: p.next_header(),
            payload_len,
            ttl: p.ttl(),
            dscp_ecn: p.dscp_ecn(),
            dont_frag: p.dont_frag(),
            ident: p.ident(),
        })
    }

    pub const fn header_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes the header, checksum included; the payload is the caller's.
    /// The packet must hold [`MIN_HEADER_LEN`] bytes and the lengths fit 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_version_and_header_len(MIN_HEADER_LEN);
        p.set_dscp_ecn(self.dscp_ecn);
        p.set_total_len((MIN_HEADER_LEN + self.payload_len) as u16);
        p.set_ident(self.ident);
        p.set_unfragmented(self.dont_frag);
        p.set_ttl(self.ttl);
        p.set_next_header(self.next_header);
        p.set_src_addr(self.src_addr);
        p.set_dst_addr(self.dst_addr);
        p.fill_checksum();
    }

    /// The pseudo-header sum of the transport checksum over this header.
    pub fn pseudo(&self) -> u64 {
        checksum::pseudo_v4(
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

    fn repr() -> Repr {
        Repr {
            ident: 0x1234,
            ttl: 7,
            ..Repr::new(
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                IpNumber::UDP,
                12,
            )
        }
    }

    #[test]
    fn emit_then_parse_and_etherparse_agrees() {
        let mut b = [0u8; 32];
        repr().emit(&mut Packet::new_unchecked(&mut b[..]));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p), Ok(repr()));
        assert_eq!(p.payload().len(), 12);
        let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert!(h.dont_fragment && h.identification == 0x1234);
    }

    #[test]
    fn truncated_and_malformed_headers_are_refused() {
        let mut b = [0u8; 40];
        repr().emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(Packet::new_checked(&b[..19]), Err(Error::Truncated));
        let mut v6 = b;
        v6[0] = 0x65;
        assert_eq!(Packet::new_checked(&v6[..]), Err(Error::Malformed));
        let mut short_ihl = b;
        short_ihl[0] = 0x44;
        assert_eq!(Packet::new_checked(&short_ihl[..]), Err(Error::Malformed));
        let mut options = b;
        options[0] = 0x4f; // 60 bytes of header in a 40-byte buffer
        assert_eq!(Packet::new_checked(&options[..]), Err(Error::Truncated));
        let mut lying = b;
        lying[2..4].copy_from_slice(&10u16.to_be_bytes()); // total under the header
        let p = Packet::new_checked(&lying[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
        assert!(p.payload().is_empty());
    }

    #[test]
    fn fragments_are_told_apart() {
        let mut b = [0u8; 20];
        repr().emit(&mut Packet::new_unchecked(&mut b[..]));
        b[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        let p = Packet::new_unchecked(&b[..]);
        assert!(p.is_fragment() && p.more_frags() && p.frag_offset() == 0);
        b[6..8].copy_from_slice(&0x00b9u16.to_be_bytes());
        let p = Packet::new_unchecked(&b[..]);
        assert!(p.is_fragment() && !p.more_frags() && p.frag_offset() == 0xb9);
    }

    proptest! {
        #[test]
        fn checked_views_never_panic(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = (p.payload(), p.src_addr(), p.dst_addr(), Repr::parse(&p));
                prop_assert!(p.header_len() >= MIN_HEADER_LEN && p.header_len() <= data.len());
            }
        }

        /// Rewriting an address keeps the header checksum right.
        #[test]
        fn an_address_rewrite_keeps_the_checksum(a in any::<u32>(), src in any::<bool>()) {
            let mut b = [0u8; 20];
            repr().emit(&mut Packet::new_unchecked(&mut b[..]));
            let mut p = Packet::new_unchecked(&mut b[..]);
            if src {
                p.rewrite_src_addr(Ipv4Addr::from(a));
            } else {
                p.rewrite_dst_addr(Ipv4Addr::from(a));
            }
            prop_assert!(p.verify_checksum());
        }
    }
}
