//! ICMPv6 messages (RFC 4443), neighbour discovery's (RFC 4861) included.
//! The header is ICMPv4's ([`super::icmpv4::Packet`], [`super::icmpv4::Repr`]);
//! what differs is the checksum, which covers the IPv6 pseudo-header:
//! [`super::ipv6::Repr::pseudo`] gives it to `emit` and `verify_checksum`.

pub use super::icmpv4::{Packet, Repr, HEADER_LEN};

pub const DST_UNREACHABLE: u8 = 1;
pub const PACKET_TOO_BIG: u8 = 2;
pub const TIME_EXCEEDED: u8 = 3;
pub const PARAM_PROBLEM: u8 = 4;
pub const ECHO_REQUEST: u8 = 128;
pub const ECHO_REPLY: u8 = 129;
pub const ROUTER_SOLICIT: u8 = 133;
pub const ROUTER_ADVERT: u8 = 134;
pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;
pub const REDIRECT: u8 = 137;

/// Destination unreachable: port unreachable.
pub const CODE_PORT_UNREACHABLE: u8 = 4;

/// Whether an ICMPv6 type is an error, which quotes the packet it is about.
pub fn is_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        DST_UNREACHABLE | PACKET_TOO_BIG | TIME_EXCEEDED | PARAM_PROBLEM
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::{IpNumber, Repr as Ipv6Repr};

    #[test]
    fn the_checksum_covers_the_pseudo_header_as_etherparse_has_it() {
        let ip = Ipv6Repr {
            src_addr: "fd00::1".parse().unwrap(),
            dst_addr: "fd00::2".parse().unwrap(),
            next_header: IpNumber::IPV6_ICMP,
            payload_len: 16,
            hop_limit: 64,
        };
        let mut b = [7u8; 16];
        let r = Repr {
            msg_type: PACKET_TOO_BIG,
            code: 0,
            rest_of_header: 1280u32.to_be_bytes(),
        };
        r.emit(&mut Packet::new_unchecked(&mut b[..]), ip.pseudo());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum(ip.pseudo()));
        assert!(!p.verify_checksum(0));
        assert!(is_error(p.msg_type()));
        let e = etherparse::Icmpv6Slice::from_slice(&b).unwrap();
        assert!(e.is_checksum_valid(ip.src_addr.octets(), ip.dst_addr.octets()));
    }
}
