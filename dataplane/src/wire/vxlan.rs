//! The 8-byte VXLAN header (RFC 7348 section 5). etherparse has no VXLAN, so it lives here.
//! [`parse`] and [`emit`] are the short way for callers that want the VNI only.
//!
//! ```text
//! |R|R|R|R|I|R|R|R|   Reserved (24)   |   VNI (24)   | Reserved (8) |
//! ```

use thiserror::Error;

pub const VXLAN_HEADER_LEN: usize = 8;
/// The I flag: the VNI field is valid. The only flag RFC 7348 defines.
pub const FLAG_I: u8 = 0x08;
/// Largest VNI that fits the 24-bit field.
pub const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VxlanError {
    #[error("datagram shorter than a VXLAN header")]
    Truncated,
    #[error("VXLAN I flag not set")]
    NoVniFlag,
}

view! {
    /// A view of a VXLAN datagram (the UDP payload: header, then the inner frame).
    ///
    /// `new_unchecked`: accessors need [`VXLAN_HEADER_LEN`] bytes.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of a datagram holding the header with the I flag set.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        let b = buffer.as_ref();
        if b.len() < VXLAN_HEADER_LEN {
            return Err(VxlanError::Truncated);
        }
        if b[0] & FLAG_I == 0 {
            return Err(VxlanError::NoVniFlag);
        }
        Ok(Self { buffer })
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    #[inline]
    pub fn vni(&self) -> u32 {
        let h = self.buffer.as_ref();
        u32::from_be_bytes([0, h[4], h[5], h[6]])
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VXLAN_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes a header for `vni` with every reserved bit zero, as RFC 7348
    /// asks on transmit.
    #[inline]
    pub fn set_header(&mut self, vni: u32) {
        let v = (vni & MAX_VNI).to_be_bytes();
        self.buffer.as_mut()[..VXLAN_HEADER_LEN]
            .copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[VXLAN_HEADER_LEN..]
    }
}

/// A VXLAN header as values: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Self { vni: p.vni() }
    }

    pub const fn header_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_header(self.vni);
    }
}

/// Reads the VNI of a datagram. Reserved bits are ignored on receipt, as RFC 7348 asks.
#[inline]
pub fn parse(datagram: &[u8]) -> Result<u32, VxlanError> {
    Packet::new_checked(datagram).map(|p| p.vni())
}

/// Writes a header for `vni` at the start of `out`.
#[inline]
pub fn emit(out: &mut [u8], vni: u32) {
    Packet::new_unchecked(out).set_header(vni);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_reserved_zero() {
        let mut h = [0xffu8; 8];
        emit(&mut h, 0x12_3456);
        assert_eq!(h, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(parse(&h), Ok(0x12_3456));
    }

    #[test]
    fn rejects_short_and_unflagged() {
        assert_eq!(parse(&[8, 0, 0]), Err(VxlanError::Truncated));
        assert_eq!(parse(&[0, 0, 0, 0, 0, 0, 1, 0]), Err(VxlanError::NoVniFlag));
        // reserved bits set on receipt are ignored
        assert_eq!(parse(&[0xff, 0xff, 0xff, 0xff, 0, 0, 7, 0xff]), Ok(7));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..32)) {
            let _ = parse(&data);
        }
    }
}
