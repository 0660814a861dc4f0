//! TCP headers (RFC 9293): what the switch reads to track connections, what
//! segmentation and coalescing rewrite, and the resets the agent sends.

use super::{checksum, get_u16, get_u32, Error};

pub const MIN_HEADER_LEN: usize = 20;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const CWR: u8 = 0x80;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

view! {
    /// A view of a TCP segment (header, options, payload).
    ///
    /// `new_unchecked`: accessors need [`MIN_HEADER_LEN`] bytes.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a buffer holding the whole header, options included, with a
    /// data offset of at least 5 words (etherparse's checks).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        etherparse::TcpHeaderSlice::from_slice(buffer.as_ref())?;
        Ok(Self { buffer })
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    #[inline]
    pub fn seq_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ.start)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK.start)
    }

    /// The header's length in bytes, options included (data offset × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flag bits (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    pub fn window(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WINDOW.start)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Whether the checksum over the whole buffer, after `pseudo` (the IP
    /// header's pseudo-header sum), is right.
    pub fn verify_checksum(&self, pseudo: u64) -> bool {
        checksum::verifies(pseudo, self.buffer.as_ref())
    }

    /// What follows the header and its options.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, p: u16) {
        self.set(field::SRC_PORT, &p.to_be_bytes());
    }

    #[inline]
    pub fn set_dst_port(&mut self, p: u16) {
        self.set(field::DST_PORT, &p.to_be_bytes());
    }

    #[inline]
    pub fn set_seq_number(&mut self, n: u32) {
        self.set(field::SEQ, &n.to_be_bytes());
    }

    #[inline]
    pub fn set_ack_number(&mut self, n: u32) {
        self.set(field::ACK, &n.to_be_bytes());
    }

    /// Sets the data offset to a header of `len` bytes (a multiple of 4).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    #[inline]
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }

    #[inline]
    pub fn set_window(&mut self, w: u16) {
        self.set(field::WINDOW, &w.to_be_bytes());
    }

    #[inline]
    pub fn set_urgent(&mut self, u: u16) {
        self.set(field::URGENT, &u.to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.set(field::CHECKSUM, &c.to_be_bytes());
    }

    /// Computes the checksum anew over the whole buffer after `pseudo`.
    #[inline]
    pub fn fill_checksum(&mut self, pseudo: u64) {
        self.set_checksum(0);
        let c = checksum::with_pseudo(pseudo, self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Writes `port` as the source port; returns the checksum change.
    #[inline]
    pub fn rewrite_src_port(&mut self, port: u16) -> u64 {
        self.rewrite(field::SRC_PORT, port)
    }

    /// Writes `port` as the destination port; returns the checksum change.
    #[inline]
    pub fn rewrite_dst_port(&mut self, port: u16) -> u64 {
        self.rewrite(field::DST_PORT, port)
    }

    /// Updates the checksum by a change (RFC 1624) made elsewhere: to ports,
    /// or to the addresses its pseudo-header covers.
    #[inline]
    pub fn update_checksum(&mut self, delta: u64) {
        checksum::update_field(&mut self.buffer.as_mut()[field::CHECKSUM], delta);
    }

    #[inline(always)]
    fn rewrite(&mut self, at: std::ops::Range<usize>, port: u16) -> u64 {
        checksum::replace(&mut self.buffer.as_mut()[at], &port.to_be_bytes())
    }

    #[inline(always)]
    fn set(&mut self, at: std::ops::Range<usize>, v: &[u8]) {
        self.buffer.as_mut()[at].copy_from_slice(v);
    }
}

/// A TCP header without options, as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub window: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq_number: p.seq_number(),
            ack_number: p.ack_number(),
            flags: p.flags(),
            window: p.window(),
        }
    }

    pub const fn header_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes the header at the start of `p` (whose buffer is the whole
    /// segment, payload already in place after [`MIN_HEADER_LEN`]) and its
    /// checksum after `pseudo`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>, pseudo: u64) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq_number);
        p.set_ack_number(self.ack_number);
        p.set_header_len(MIN_HEADER_LEN);
        p.set_flags(self.flags);
        p.set_window(self.window);
        p.set_urgent(0);
        p.fill_checksum(pseudo);
    }

    /// The sequence space the segment takes: its payload, and one each for
    /// SYN and FIN.
    pub fn seq_len(&self, payload_len: usize) -> u32 {
        payload_len as u32 + u32::from(self.flags & SYN != 0) + u32::from(self.flags & FIN != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn pseudo(len: usize) -> u64 {
        checksum::pseudo_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6,
            len as u32,
        )
    }

    #[test]
    fn emit_parse_and_etherparse_agrees() {
        let r = Repr {
            src_port: 40000,
            dst_port: 80,
            seq_number: 7,
            ack_number: 9,
            flags: SYN | ACK,
            window: 512,
        };
        let mut b = [0u8; 24];
        b[20..].copy_from_slice(b"data");
        r.emit(&mut Packet::new_unchecked(&mut b[..]), pseudo(24));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p), r);
        assert_eq!(p.payload(), b"data");
        assert!(p.verify_checksum(pseudo(24)));
        let e = etherparse::TcpHeaderSlice::from_slice(&b).unwrap();
        let c = e
            .calc_checksum_ipv4_raw([10, 0, 0, 1], [10, 0, 0, 2], b"data")
            .unwrap();
        assert_eq!(c, p.checksum());
        assert_eq!(r.seq_len(4), 5);
    }

    #[test]
    fn truncated_and_malformed_headers_are_refused() {
        let mut b = [0u8; 24];
        b[12] = 5 << 4;
        assert_eq!(Packet::new_checked(&b[..19]), Err(Error::Truncated));
        b[12] = 4 << 4;
        assert_eq!(Packet::new_checked(&b[..]), Err(Error::Malformed));
        b[12] = 6 << 4;
        assert!(Packet::new_checked(&b[..]).is_ok());
        b[12] = 7 << 4;
        assert_eq!(Packet::new_checked(&b[..]), Err(Error::Truncated));
    }

    proptest! {
        /// A port rewritten with its delta, and an address change the
        /// pseudo-header covers, leave the checksum right.
        #[test]
        fn incremental_updates_verify(port in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let len = 20 + payload.len();
            let mut b = vec![0u8; len];
            b[20..].copy_from_slice(&payload);
            let r = Repr { src_port: 1, dst_port: 2, seq_number: 3, ack_number: 4, flags: ACK, window: 5 };
            r.emit(&mut Packet::new_unchecked(&mut b[..]), pseudo(len));
            let mut p = Packet::new_unchecked(&mut b[..]);
            let d = p.rewrite_dst_port(port);
            p.update_checksum(d);
            prop_assert!(p.verify_checksum(pseudo(len)));
        }
    }
}
