//! ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861): reading requests with
//! etherparse and answering them in place, so the agent resolves known endpoints
//! without flooding the overlay.

use super::ipv6_chain::{self, Fragment};
use super::{arp, ethernet, icmpv6, ipv6};
use crate::counters::DropReason;
use crate::Mac;
use etherparse::IpNumber;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH: usize = ethernet::HEADER_LEN;
const IPV6_LEN: usize = ipv6::HEADER_LEN;
/// An NA with one target link-layer address option: 8 + 16 + 8 bytes.
const NA_LEN: usize = 32;

/// The parts of an Ethernet/IPv4 ARP packet the switch decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub is_request: bool,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// Reads an Ethernet/IPv4 ARP packet; `None` for anything else or anything short.
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let p = arp::Packet::new_checked(frame.get(ETH..)?).ok()?;
    let a = arp::Repr::parse(&p).ok()?;
    Some(Arp {
        is_request: a.operation == arp::Operation::Request,
        sender_mac: a.sender_hw_addr,
        sender_ip: a.sender_proto_addr,
        target_ip: a.target_proto_addr,
    })
}

/// Turns the ARP request in `frame` into the reply `answer_mac` would send.
/// The caller has checked the frame with [`parse_arp`].
pub fn write_arp_reply(frame: &mut [u8], req: &Arp, answer_mac: Mac) {
    if frame.len() < ETH + arp::PACKET_LEN {
        return;
    }
    let mut eth = ethernet::Frame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(req.sender_mac);
    eth.set_src_addr(answer_mac);
    arp::Repr {
        operation: arp::Operation::Reply,
        sender_hw_addr: answer_mac,
        sender_proto_addr: req.target_ip,
        target_hw_addr: req.sender_mac,
        target_proto_addr: req.sender_ip,
    }
    .emit(&mut arp::Packet::new_unchecked(eth.payload_mut()));
}

/// A neighbour solicitation: who asks, for which address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicitation {
    pub src_ip: Ipv6Addr,
    pub target: Ipv6Addr,
}

/// Reads an ICMPv6 neighbour solicitation carried directly after the IPv6 header
/// (RFC 4861 forbids none, but hosts send none with extension headers).
pub fn parse_solicitation(frame: &[u8]) -> Option<Solicitation> {
    let ip = ipv6::Packet::new_checked(frame.get(ETH..)?).ok()?;
    if ip.next_header() != IpNumber::IPV6_ICMP || ip.hop_limit() != 255 {
        return None;
    }
    let icmp = icmpv6::Packet::new_checked(frame.get(ETH + IPV6_LEN..)?).ok()?;
    if icmp.msg_type() != icmpv6::NEIGHBOR_SOLICIT || icmp.code() != 0 {
        return None;
    }
    let target: [u8; 16] = icmp.data().get(..16)?.try_into().ok()?;
    Some(Solicitation {
        src_ip: ip.src_addr(),
        target: target.into(),
    })
}

/// Writes, over the solicitation in `frame`, the advertisement `answer_mac` would
/// send, and returns its length (the buffer must hold 86 bytes).
pub fn write_advertisement(frame: &mut [u8], ns: &Solicitation, answer_mac: Mac) -> Option<usize> {
    let total = ETH + IPV6_LEN + NA_LEN;
    let requester = ethernet::Frame::new_checked(&*frame).ok()?.src_addr();
    let f = frame.get_mut(..total)?;
    // A solicitation from the unspecified address (duplicate address detection)
    // is answered to all-nodes, unsolicited (RFC 4861 7.2.4).
    let (dst, solicited) = if ns.src_ip.is_unspecified() {
        (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), false)
    } else {
        (ns.src_ip, true)
    };
    let dst_mac = if solicited {
        requester
    } else {
        [0x33, 0x33, 0, 0, 0, 1]
    };
    ethernet::Repr {
        src_addr: answer_mac,
        dst_addr: dst_mac,
        ethertype: ethernet::EtherType::IPV6,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    let ip = ipv6::Repr {
        src_addr: ns.target,
        dst_addr: dst,
        next_header: IpNumber::IPV6_ICMP,
        payload_len: NA_LEN,
        hop_limit: 255,
    };
    ip.emit(&mut ipv6::Packet::new_unchecked(&mut f[ETH..]));
    let icmp = &mut f[ETH + IPV6_LEN..];
    // the target, then its link-layer address option (type 2, 8 bytes)
    icmp[8..24].copy_from_slice(&ns.target.octets());
    icmp[24..26].copy_from_slice(&[2, 1]);
    icmp[26..32].copy_from_slice(&answer_mac);
    // R clear, S as solicited, O set
    let flags = if solicited { 0x60 } else { 0x20 };
    icmpv6::Repr {
        msg_type: icmpv6::NEIGHBOR_ADVERT,
        code: 0,
        rest_of_header: [flags, 0, 0, 0],
    }
    .emit(&mut icmpv6::Packet::new_unchecked(icmp), ip.pseudo());
    Some(total)
}

/// Checks ICMPv6 neighbour discovery sent by a port: it must stay within what
/// that port owns. No router advertisements or redirects (a container is no
/// router); an advertisement only for one of its own addresses (or a link-local
/// one); any link-layer address option naming the port's own MAC. Those are
/// `spoofed_source_ip`. The message is looked for behind any extension headers
/// ([`ipv6_chain::walk`]), since the receiving host finds it there too; and a
/// chain that hides it is `ipv6_header_chain`: longer than the walk goes, cut
/// short, or a first fragment without its upper-layer header (RFC 7112), or
/// neighbour discovery in a fragment at all, atomic or not (RFC 6980). A later
/// fragment passes: it has no ICMPv6 header to judge, and without its first
/// fragment it is never reassembled. Frames that are not IPv6 pass.
pub fn nd_check(
    frame: &[u8],
    port_mac: &Mac,
    port_ips: &[std::net::IpAddr],
) -> Result<(), DropReason> {
    let Some(ip) = frame.get(ETH..).filter(|ip| ip.len() >= IPV6_LEN) else {
        return Ok(());
    };
    let upper = ipv6_chain::walk(ip).map_err(|_| DropReason::Ipv6HeaderChain)?;
    let first_fragment = match upper.fragment {
        Fragment::Whole => false,
        Fragment::First => true,
        Fragment::Later => return Ok(()),
    };
    if upper.proto != IpNumber::IPV6_ICMP {
        // RFC 7112: the first fragment holds the transport header whole
        let need = match upper.proto {
            IpNumber::TCP => 20,
            IpNumber::UDP => 8,
            _ => 0,
        };
        return if first_fragment && upper.payload.len() < need {
            Err(DropReason::Ipv6HeaderChain)
        } else {
            Ok(())
        };
    }
    let icmp = upper.payload;
    if first_fragment {
        return match icmp.first() {
            // the ICMPv6 header (type, code, checksum) must be there to judge
            _ if icmp.len() < 4 => Err(DropReason::Ipv6HeaderChain),
            Some(icmpv6::ROUTER_SOLICIT..=icmpv6::REDIRECT) => Err(DropReason::Ipv6HeaderChain),
            _ => Ok(()),
        };
    }
    let Some(&kind) = icmp.first() else {
        return Ok(());
    };
    let (target_at, opts_at) = match kind {
        icmpv6::ROUTER_SOLICIT => (None, 8),
        icmpv6::NEIGHBOR_SOLICIT | icmpv6::NEIGHBOR_ADVERT => (Some(8), 24),
        // a container is no router
        icmpv6::ROUTER_ADVERT | icmpv6::REDIRECT => return Err(DropReason::SpoofedSourceIp),
        _ => return Ok(()),
    };
    if kind == icmpv6::NEIGHBOR_ADVERT {
        let Some(t) = target_at.and_then(|a| icmp.get(a..a + 16)) else {
            return Err(DropReason::SpoofedSourceIp);
        };
        let t: [u8; 16] = t.try_into().unwrap_or([0; 16]);
        let target = Ipv6Addr::from(t);
        let link_local = target.segments()[0] & 0xffc0 == 0xfe80;
        if !link_local && !port_ips.contains(&std::net::IpAddr::V6(target)) {
            return Err(DropReason::SpoofedSourceIp);
        }
    }
    // options: type, length in units of 8 bytes, value; source/target link-layer
    // address options (1, 2) must carry the port's MAC
    let mut off = opts_at;
    while let (Some(&t), Some(&l)) = (icmp.get(off), icmp.get(off + 1)) {
        let len = usize::from(l) * 8;
        if len == 0 {
            return Err(DropReason::SpoofedSourceIp);
        }
        if (t == 1 || t == 2) && icmp.get(off + 2..off + 8) != Some(&port_mac[..]) {
            return Err(DropReason::SpoofedSourceIp);
        }
        off += len;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{Icmpv6Slice, Icmpv6Type, Ipv6HeaderSlice};

    pub use crate::wire::build::arp_request;

    /// A neighbour solicitation from `src` (at `src_mac`) for `target`, with a
    /// source link-layer address option.
    pub fn solicitation(src_mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let mut body = target.octets().to_vec();
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&src_mac);
        let all_nodes: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
        crate::wire::build::eth(src_mac, [0x33, 0x33, 0xff, 0, 0, 1])
            .ipv6(src, all_nodes)
            .ttl(255)
            .icmp(
                icmpv6::Repr {
                    msg_type: icmpv6::NEIGHBOR_SOLICIT,
                    code: 0,
                    rest_of_header: [0; 4],
                },
                &body,
            )
    }

    #[test]
    fn arp_reply_in_place() {
        let mut f = arp_request([2, 0, 0, 0, 0, 1], [10, 0, 0, 1], [10, 0, 0, 2]);
        let req = parse_arp(&f).unwrap();
        assert!(req.is_request);
        write_arp_reply(&mut f, &req, [2, 0, 0, 0, 0, 2]);
        let rep = parse_arp(&f).unwrap();
        assert!(!rep.is_request);
        assert_eq!(rep.sender_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(rep.sender_ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(rep.target_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn advertisement_has_valid_checksum() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let target: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut f = solicitation([2, 0, 0, 0, 0, 1], src, target);
        let ns = parse_solicitation(&f).unwrap();
        assert_eq!(ns.target, target);
        f.resize(100, 0);
        let n = write_advertisement(&mut f, &ns, [2, 0, 0, 0, 0, 2]).unwrap();
        let ip = Ipv6HeaderSlice::from_slice(&f[14..n]).unwrap();
        assert_eq!(ip.source_addr(), target);
        assert_eq!(ip.destination_addr(), src);
        let icmp = Icmpv6Slice::from_slice(&f[54..n]).unwrap();
        assert!(matches!(icmp.icmp_type(), Icmpv6Type::NeighborAdvertisement(h) if h.solicited));
        assert!(icmp.is_checksum_valid(target.octets(), src.octets()));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = parse_arp(&data);
            let _ = parse_solicitation(&data);
        }
    }
}
