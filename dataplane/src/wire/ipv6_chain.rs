//! Walks an IPv6 packet's extension headers to its upper-layer header, so that
//! a check on what a packet carries (the neighbour-discovery guard) sees it
//! wherever it sits: a router advertisement behind a Destination Options
//! header is still one for the host that receives it.
//!
//! The walk is bounded twice: by the packet's bytes (each header's length is
//! checked by etherparse before it is skipped) and by [`MAX_HEADERS`].

use etherparse::{IpAuthHeaderSlice, IpNumber, Ipv6FragmentHeaderSlice, Ipv6RawExtHeaderSlice};

/// Extension headers walked before giving up. RFC 8200 (4.1) has a host send
/// each kind at most once (Destination Options twice): six at most, plus AH
/// and a mobility or HIP header. A longer chain is sent only to hide what
/// follows it, so the caller drops it.
pub const MAX_HEADERS: usize = 8;

/// Where a packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// No Fragment header.
    Whole,
    /// A Fragment header with offset 0: the first fragment, or an atomic
    /// fragment (offset 0, no more fragments), which RFC 6946 has the
    /// receiver process alone.
    First,
    /// A Fragment header with a non-zero offset: no upper-layer header here,
    /// only the middle or end of its payload.
    Later,
}

/// The upper layer a walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upper<'a> {
    /// What the last header's Next Header names (for a [`Fragment::Later`],
    /// the Fragment header's).
    pub proto: IpNumber,
    /// The bytes after the last extension header, up to the end of the IPv6
    /// payload.
    pub payload: &'a [u8],
    pub fragment: Fragment,
}

/// Why a chain was not walked to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// More than [`MAX_HEADERS`] extension headers.
    TooLong,
    /// A header that runs past the packet (or, in a first fragment, past the
    /// fragment: RFC 7112 asks the whole chain of the first).
    Truncated,
}

/// Walks the chain of the IPv6 packet `ip` (from its fixed header on). Only
/// extension headers are walked: ESP, whose contents are encrypted, and any
/// protocol etherparse does not know as an extension header end the walk.
pub fn walk(ip: &[u8]) -> Result<Upper<'_>, ChainError> {
    const FIXED: usize = 40;
    let fixed = ip.get(..FIXED).ok_or(ChainError::Truncated)?;
    // the payload length, where the frame holds that much (an Ethernet frame
    // may be padded); 0 is a jumbogram's, whose length is in an option
    let plen = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
    let mut rest = &ip[FIXED..];
    if plen != 0 && plen < rest.len() {
        rest = &rest[..plen];
    }
    let mut next = IpNumber(fixed[6]);
    let mut fragment = Fragment::Whole;
    for _ in 0..=MAX_HEADERS {
        let len = match next {
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let h =
                    Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| ChainError::Truncated)?;
                let n = h.slice().len();
                if h.fragment_offset().value() != 0 {
                    return Ok(Upper {
                        proto: h.next_header(),
                        payload: &rest[n..],
                        fragment: Fragment::Later,
                    });
                }
                fragment = Fragment::First;
                next = h.next_header();
                n
            }
            IpNumber::AUTHENTICATION_HEADER => {
                let h = IpAuthHeaderSlice::from_slice(rest).map_err(|_| ChainError::Truncated)?;
                next = h.next_header();
                h.slice().len()
            }
            n if n.is_ipv6_ext_header_value() && n != IpNumber::ENCAPSULATING_SECURITY_PAYLOAD => {
                // hop-by-hop, routing, destination options, mobility, HIP,
                // shim6 and the experimental ones share one layout
                let h =
                    Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| ChainError::Truncated)?;
                next = h.next_header();
                h.slice().len()
            }
            proto => {
                return Ok(Upper {
                    proto,
                    payload: rest,
                    fragment,
                })
            }
        };
        rest = &rest[len..];
    }
    Err(ChainError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{self, ext_fragment, ext_options};
    use crate::wire::icmpv6;

    /// The IPv6 packet of a 16-byte ICMPv6 message of type `kind` behind `exts`.
    fn packet(exts: &[(u8, Vec<u8>)], kind: u8) -> Vec<u8> {
        let link_local: std::net::Ipv6Addr = "fe80::a".parse().unwrap();
        let all_nodes: std::net::Ipv6Addr = "ff02::1".parse().unwrap();
        let mut ip = build::eth([2, 0, 0, 0, 0, 0xa], [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(link_local, all_nodes)
            .ttl(255);
        for (proto, h) in exts {
            ip = ip.ext(*proto, h.clone());
        }
        let m = icmpv6::Repr {
            msg_type: kind,
            code: 0,
            rest_of_header: [0; 4],
        };
        ip.icmp(m, &[0; 8])[14..].to_vec()
    }

    #[test]
    fn finds_the_upper_layer_behind_each_kind() {
        let direct = packet(&[], 134);
        let u = walk(&direct).unwrap();
        assert_eq!((u.proto, u.fragment), (IpNumber(58), Fragment::Whole));
        assert_eq!((u.payload[0], u.payload.len()), (134, 16));
        let auth = vec![0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]; // 12 bytes: length 1
        let chained = packet(
            &[
                (0, ext_options()),
                (43, ext_options()),
                (51, auth),
                (60, ext_options()),
            ],
            134,
        );
        let u = walk(&chained).unwrap();
        assert_eq!(
            (u.proto, u.payload[0], u.payload.len()),
            (IpNumber(58), 134, 16)
        );
        let atomic = packet(&[(44, ext_fragment(0, false))], 134);
        assert_eq!(walk(&atomic).unwrap().fragment, Fragment::First);
        let later = packet(&[(44, ext_fragment(5, false))], 134);
        let later = walk(&later).unwrap();
        assert_eq!(
            (later.proto, later.fragment),
            (IpNumber(58), Fragment::Later)
        );
        // ESP ends the walk: what follows is encrypted
        let esp = packet(&[(50, vec![0; 8])], 134);
        let esp = walk(&esp).unwrap();
        assert_eq!(esp.proto, IpNumber(50));
    }

    #[test]
    fn bounded_and_checked() {
        let many: Vec<_> = (0..=MAX_HEADERS).map(|_| (60, ext_options())).collect();
        assert_eq!(walk(&packet(&many, 134)), Err(ChainError::TooLong));
        let enough: Vec<_> = (0..MAX_HEADERS).map(|_| (60, ext_options())).collect();
        assert!(walk(&packet(&enough, 134)).is_ok());
        // a header claiming 16 bytes more than the packet has
        let mut p = packet(&[(60, ext_options())], 134);
        p[41] = 4;
        assert_eq!(walk(&p), Err(ChainError::Truncated));
        // frame padding past the payload length is not read as headers
        let mut padded = packet(&[], 134);
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(walk(&padded).unwrap().payload.len(), 16);
        assert_eq!(walk(&[0x60; 39]), Err(ChainError::Truncated));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            let _ = walk(&data);
        }
    }
}
