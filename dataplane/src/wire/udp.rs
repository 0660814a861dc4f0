//! UDP headers (RFC 768): the overlay's own carrier (VXLAN), the agent's DNS
//! answers, and what the balancer translates.

use super::{checksum, get_u16, Error};

pub const HEADER_LEN: usize = 8;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

view! {
    /// A view of a UDP datagram (header and payload).
    ///
    /// `new_unchecked`: accessors need [`HEADER_LEN`] bytes.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a buffer holding the header (etherparse's check). The
    /// length field is not held against the buffer; [`Packet::payload`]
    /// ends at the first end.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        etherparse::UdpHeaderSlice::from_slice(buffer.as_ref())?;
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

    /// The length field: header and payload.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(get_u16(self.buffer.as_ref(), field::LENGTH.start))
    }

    /// Whether the length field says no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() <= HEADER_LEN
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Whether the checksum over the whole buffer after `pseudo` is right.
    pub fn verify_checksum(&self, pseudo: u64) -> bool {
        checksum::verifies(pseudo, self.buffer.as_ref())
    }

    /// The payload, to the length field or the buffer's end.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(HEADER_LEN..self.len().min(b.len())).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_src_port(&mut self, p: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&p.to_be_bytes());
    }

    #[inline]
    pub fn set_dst_port(&mut self, p: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&p.to_be_bytes());
    }

    #[inline]
    pub fn set_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Computes the checksum anew over the whole buffer after `pseudo`; a
    /// computed zero is sent as all ones, since zero means "no checksum".
    #[inline]
    pub fn fill_checksum(&mut self, pseudo: u64) {
        self.set_checksum(0);
        let c = checksum::with_pseudo(pseudo, self.buffer.as_ref());
        self.set_checksum(if c == 0 { 0xffff } else { c });
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

    /// Updates the checksum by a change made elsewhere (RFC 1624); a result
    /// of zero is sent as all ones. Over IPv4 a zero checksum means none was
    /// sent, and the caller leaves it so.
    #[inline]
    pub fn update_checksum(&mut self, delta: u64) {
        let c = checksum::update(self.checksum(), delta);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    #[inline(always)]
    fn rewrite(&mut self, at: std::ops::Range<usize>, port: u16) -> u64 {
        checksum::replace(&mut self.buffer.as_mut()[at], &port.to_be_bytes())
    }

    /// Everything after the header, to the buffer's end.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A UDP header as values (the payload stays where it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self, Error> {
        let payload_len = p.len().checked_sub(HEADER_LEN).ok_or(Error::Malformed)?;
        Ok(Self {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len,
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `p` (whose buffer is the whole
    /// datagram, payload in place) and, given the pseudo-header sum, its
    /// checksum; `None`: checksum zero (none, as RFC 7348 allows VXLAN over
    /// IPv4).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>, pseudo: Option<u64>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + self.payload_len) as u16);
        match pseudo {
            Some(s) => p.fill_checksum(s),
            None => p.set_checksum(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    fn pseudo(len: usize) -> u64 {
        checksum::pseudo_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED, 17, len as u32)
    }

    #[test]
    fn emit_parse_and_refusals() {
        let r = Repr {
            src_port: 53,
            dst_port: 40000,
            payload_len: 3,
        };
        let mut b = [0u8; 14];
        b[8..11].copy_from_slice(b"abc");
        r.emit(&mut Packet::new_unchecked(&mut b[..11]), Some(pseudo(11)));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(r));
        assert_eq!(p.payload(), b"abc", "bytes past the length are not payload");
        assert!(Packet::new_checked(&b[..11])
            .unwrap()
            .verify_checksum(pseudo(11)));
        let e = etherparse::UdpHeaderSlice::from_slice(&b)
            .unwrap()
            .to_header();
        let c = e
            .calc_checksum_ipv6_raw(Ipv6Addr::LOCALHOST.octets(), [0; 16], b"abc")
            .unwrap();
        assert_eq!(c, p.checksum());
        assert_eq!(Packet::new_checked(&b[..7]), Err(Error::Truncated));
        b[4..6].copy_from_slice(&[0, 7]);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(Error::Malformed)
        );
        r.emit(&mut Packet::new_unchecked(&mut b[..11]), None);
        assert_eq!(Packet::new_unchecked(&b[..]).checksum(), 0);
    }

    proptest! {
        #[test]
        fn incremental_updates_verify(port in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let len = 8 + payload.len();
            let mut b = vec![0u8; len];
            b[8..].copy_from_slice(&payload);
            let r = Repr { src_port: 1, dst_port: 2, payload_len: payload.len() };
            r.emit(&mut Packet::new_unchecked(&mut b[..]), Some(pseudo(len)));
            let mut p = Packet::new_unchecked(&mut b[..]);
            let d = p.rewrite_src_port(port);
            p.update_checksum(d);
            prop_assert!(p.verify_checksum(pseudo(len)));
        }

        #[test]
        fn checked_views_never_panic(data in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = (p.payload(), Repr::parse(&p));
            }
        }
    }
}
