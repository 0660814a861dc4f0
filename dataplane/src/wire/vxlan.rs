//! The 8-byte VXLAN header (RFC 7348 section 5). etherparse has no VXLAN, so it lives here.
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

/// Reads the VNI of a datagram. Reserved bits are ignored on receipt, as RFC 7348 asks.
pub fn parse(datagram: &[u8]) -> Result<u32, VxlanError> {
    let h: &[u8; VXLAN_HEADER_LEN] = datagram
        .get(..VXLAN_HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(VxlanError::Truncated)?;
    if h[0] & FLAG_I == 0 {
        return Err(VxlanError::NoVniFlag);
    }
    Ok(u32::from_be_bytes([0, h[4], h[5], h[6]]))
}

/// Writes a header for `vni` with every reserved bit zero, as RFC 7348 asks on transmit.
pub fn emit(out: &mut [u8], vni: u32) {
    let v = (vni & MAX_VNI).to_be_bytes();
    out[..VXLAN_HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
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
