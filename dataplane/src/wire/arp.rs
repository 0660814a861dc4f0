//! ARP (RFC 826) for IPv4 over Ethernet, the only kind an overlay carries.

use super::Error;
use crate::Mac;
use std::net::Ipv4Addr;

/// An Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

mod field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
}

impl Operation {
    fn code(self) -> u16 {
        match self {
            Operation::Request => 1,
            Operation::Reply => 2,
        }
    }
}

view! {
    /// A view of an Ethernet/IPv4 ARP packet.
    ///
    /// `new_unchecked`: accessors need [`PACKET_LEN`] bytes.
    Packet
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view of an ARP packet (etherparse checks its lengths) for IPv4 over
    /// Ethernet (anything else is `Malformed` here).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        use etherparse::{ArpHardwareId, EtherType};
        let a = etherparse::ArpPacketSlice::from_slice(buffer.as_ref())
            .map_err(|_| Error::Truncated)?;
        if a.hw_addr_type() != ArpHardwareId::ETHERNET
            || a.proto_addr_type() != EtherType::IPV4
            || a.hw_addr_size() != 6
            || a.proto_addr_size() != 4
        {
            return Err(Error::Malformed);
        }
        Ok(Self { buffer })
    }

    /// The operation code (1 request, 2 reply).
    #[inline]
    pub fn operation(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::OPER];
        u16::from_be_bytes([b[0], b[1]])
    }

    #[inline]
    pub fn sender_hw_addr(&self) -> Mac {
        crate::mac_at(self.buffer.as_ref(), field::SHA.start)
    }

    #[inline]
    pub fn sender_proto_addr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::SPA.start)
    }

    #[inline]
    pub fn target_hw_addr(&self) -> Mac {
        crate::mac_at(self.buffer.as_ref(), field::THA.start)
    }

    #[inline]
    pub fn target_proto_addr(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::TPA.start)
    }
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// An Ethernet/IPv4 ARP request or reply as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub operation: Operation,
    pub sender_hw_addr: Mac,
    pub sender_proto_addr: Ipv4Addr,
    pub target_hw_addr: Mac,
    pub target_proto_addr: Ipv4Addr,
}

impl Repr {
    /// Reads a checked packet; `Malformed` for operations other than
    /// request and reply.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self, Error> {
        let operation = match p.operation() {
            1 => Operation::Request,
            2 => Operation::Reply,
            _ => return Err(Error::Malformed),
        };
        Ok(Self {
            operation,
            sender_hw_addr: p.sender_hw_addr(),
            sender_proto_addr: p.sender_proto_addr(),
            target_hw_addr: p.target_hw_addr(),
            target_proto_addr: p.target_proto_addr(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the whole packet (`p` must hold [`PACKET_LEN`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let b = p.buffer.as_mut();
        b[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        b[field::PTYPE].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        b[field::OPER].copy_from_slice(&self.operation.code().to_be_bytes());
        b[field::SHA].copy_from_slice(&self.sender_hw_addr);
        b[field::SPA].copy_from_slice(&self.sender_proto_addr.octets());
        b[field::THA].copy_from_slice(&self.target_hw_addr);
        b[field::TPA].copy_from_slice(&self.target_proto_addr.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = Repr {
            operation: Operation::Request,
            sender_hw_addr: [2, 0, 0, 0, 0, 1],
            sender_proto_addr: Ipv4Addr::new(10, 0, 0, 1),
            target_hw_addr: [0; 6],
            target_proto_addr: Ipv4Addr::new(10, 0, 0, 2),
        };
        let mut b = [0u8; PACKET_LEN];
        r.emit(&mut Packet::new_unchecked(&mut b[..]));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(r));
        let e = etherparse::ArpPacketSlice::from_slice(&b).unwrap();
        assert_eq!(e.operation(), etherparse::ArpOperation::REQUEST);
        assert_eq!(Packet::new_checked(&b[..27]), Err(Error::Truncated));
        let mut other = b;
        other[3] = 0xdd; // IPv6 protocol type
        assert_eq!(Packet::new_checked(&other[..]), Err(Error::Malformed));
        let mut op = b;
        op[7] = 3;
        let p = Packet::new_checked(&op[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(Error::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn checked_views_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&p);
            }
        }
    }
}
