//! `struct virtio_net_hdr` (10 bytes; little-endian on the hosts we run on), which
//! the TAP puts before every frame once `IFF_VNET_HDR` is set.

pub const LEN: usize = 10;

pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Finishes a checksum the kernel left partial (`F_NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` holds the pseudo-header sum; the checksum covers
/// everything from `csum_start` to the end. False if the offsets do not fit.
pub fn finish_checksum(frame: &mut [u8], h: &VnetHdr) -> bool {
    let start = usize::from(h.csum_start);
    let field = start + usize::from(h.csum_offset);
    if field + 2 > frame.len() {
        return false;
    }
    let c = crate::wire::checksum::data(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The header reads back what was written, and completing a checksum at
        /// any offsets of any frame stays inside it.
        #[test]
        fn header_round_trips_and_checksum_stays_in_frame(
            b in proptest::array::uniform10(any::<u8>()),
            mut frame in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let h = VnetHdr::parse(&b).unwrap();
            let mut out = [0u8; LEN];
            h.emit(&mut out);
            prop_assert_eq!(out, b);
            prop_assert!(VnetHdr::parse(&b[..9]).is_none());
            let len = frame.len();
            let _ = finish_checksum(&mut frame, &h);
            prop_assert_eq!(frame.len(), len);
        }
    }
}
