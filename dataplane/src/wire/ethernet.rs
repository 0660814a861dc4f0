//! Ethernet II frames (no 802.1Q tag: the TAPs and VXLAN carry untagged frames).

use super::Error;
use crate::Mac;
pub use etherparse::EtherType;

pub const HEADER_LEN: usize = 14;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

view! {
    /// A view of an Ethernet II frame.
    ///
    /// `new_unchecked`: accessors panic on a buffer under [`HEADER_LEN`].
    Frame
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view of a buffer that holds a whole header (etherparse checks it).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        etherparse::Ethernet2HeaderSlice::from_slice(buffer.as_ref())?;
        Ok(Self { buffer })
    }

    #[inline]
    pub fn dst_addr(&self) -> Mac {
        crate::mac_at(self.buffer.as_ref(), field::DST.start)
    }

    #[inline]
    pub fn src_addr(&self) -> Mac {
        crate::mac_at(self.buffer.as_ref(), field::SRC.start)
    }

    #[inline]
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType(u16::from_be_bytes([b[0], b[1]]))
    }

    /// What follows the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline]
    pub fn set_dst_addr(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    #[inline]
    pub fn set_src_addr(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    #[inline]
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.0.to_be_bytes());
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// An Ethernet II header as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_addr: Mac,
    pub dst_addr: Mac,
    pub ethertype: EtherType,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Self {
        Self {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        }
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; the payload is the caller's.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let repr = Repr {
            src_addr: [2, 0, 0, 0, 0, 1],
            dst_addr: [0xff; 6],
            ethertype: EtherType::ARP,
        };
        let mut b = [0u8; 20];
        repr.emit(&mut Frame::new_unchecked(&mut b[..]));
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&f), repr);
        assert_eq!(f.payload().len(), 6);
        assert_eq!(&b[12..14], &[0x08, 0x06]);
        assert_eq!(Frame::new_checked(&b[..13]), Err(Error::Truncated));
    }
}
