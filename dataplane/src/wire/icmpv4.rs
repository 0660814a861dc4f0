//! ICMPv4 messages (RFC 792): the echo the balancer tracks, the errors the
//! agent sends and translates. ICMPv6 (RFC 4443 2.1) shares the header's
//! layout, so [`super::icmpv6`] takes this view and adds its pseudo-header.

use super::{checksum, Error};

pub const HEADER_LEN: usize = 8;

pub const ECHO_REPLY: u8 = 0;
pub const DST_UNREACHABLE: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAM_PROBLEM: u8 = 12;

/// Destination unreachable codes the agent sends.
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
}

view! {
    /// A view of an ICMP message: type, code, checksum, four bytes whose
    /// meaning the type gives (echo identifier and sequence, an MTU), then data.
    ///
    /// `new_unchecked`: accessors need [`HEADER_LEN`] bytes.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a buffer holding the 8-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }

    /// The four bytes after the checksum.
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        let b = &self.buffer.as_ref()[field::REST];
        [b[0], b[1], b[2], b[3]]
    }

    /// An echo's identifier (the first two of [`Packet::rest_of_header`]).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::REST.start], b[field::REST.start + 1]])
    }

    /// Whether the checksum over the whole buffer after `pseudo` (0 for
    /// ICMPv4, which has no pseudo-header) is right.
    pub fn verify_checksum(&self, pseudo: u64) -> bool {
        checksum::verifies(pseudo, self.buffer.as_ref())
    }

    /// What follows the header: for an error, the packet it quotes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, t: u8) {
        self.buffer.as_mut()[field::TYPE] = t;
    }

    #[inline]
    pub fn set_code(&mut self, c: u8) {
        self.buffer.as_mut()[field::CODE] = c;
    }

    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, r: [u8; 4]) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&r);
    }

    /// Computes the checksum anew over the whole buffer after `pseudo`.
    #[inline]
    pub fn fill_checksum(&mut self, pseudo: u64) {
        self.set_checksum(0);
        let c = checksum::with_pseudo(pseudo, self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Updates the checksum by a change (RFC 1624) made elsewhere: for
    /// ICMPv6, to the addresses its pseudo-header covers. Touches the
    /// checksum field alone (a buffer of 4 bytes will do).
    #[inline]
    pub fn update_checksum(&mut self, delta: u64) {
        checksum::update_field(&mut self.buffer.as_mut()[field::CHECKSUM], delta);
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// An ICMP header as values; the data (a quote, an echo's payload) stays
/// where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub msg_type: u8,
    pub code: u8,
    pub rest_of_header: [u8; 4],
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self {
            msg_type: p.msg_type(),
            code: p.code(),
            rest_of_header: p.rest_of_header(),
        }
    }

    /// Whether this is an error (destination unreachable, time exceeded,
    /// parameter problem), which quotes the packet it is about.
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type,
            DST_UNREACHABLE | TIME_EXCEEDED | PARAM_PROBLEM
        )
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header at the start of `p` (whose buffer is the whole
    /// message, data in place) and the checksum after `pseudo` (0 for ICMPv4).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>, pseudo: u64) {
        p.set_msg_type(self.msg_type);
        p.set_code(self.code);
        p.set_rest_of_header(self.rest_of_header);
        p.fill_checksum(pseudo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_round_trips_and_etherparse_agrees() {
        let r = Repr {
            msg_type: DST_UNREACHABLE,
            code: CODE_FRAG_NEEDED,
            rest_of_header: [0, 0, 0x05, 0x5f],
        };
        let mut b = [0u8; 36];
        b[8..].fill(0x45);
        r.emit(&mut Packet::new_unchecked(&mut b[..]), 0);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p), r);
        assert!(r.is_error() && p.verify_checksum(0));
        assert_eq!(p.data().len(), 28);
        let e = etherparse::Icmpv4Slice::from_slice(&b).unwrap();
        assert_eq!(e.icmp_type().calc_checksum(e.payload()), p.checksum());
        assert_eq!(Packet::new_checked(&b[..7]), Err(Error::Truncated));
    }
}
