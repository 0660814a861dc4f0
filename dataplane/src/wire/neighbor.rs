//! ARP (RFC 826) and IPv6 neighbour discovery (RFC 4861): reading requests with
//! etherparse and answering them in place, so the agent resolves known endpoints
//! without flooding the overlay.

use super::ipv6_chain::{self, Fragment};
use crate::counters::DropReason;
use crate::Mac;
use etherparse::{
    icmpv6::NeighborAdvertisementHeader, ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType,
    Icmpv6Slice, Icmpv6Type, IpNumber, Ipv6HeaderSlice,
};
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_LEN: usize = 40;
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
    let arp = ArpPacketSlice::from_slice(frame.get(ETH..)?).ok()?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return None;
    }
    let is_request = match arp.operation() {
        ArpOperation::REQUEST => true,
        ArpOperation::REPLY => false,
        _ => return None,
    };
    Some(Arp {
        is_request,
        sender_mac: arp.sender_hw_addr().try_into().ok()?,
        sender_ip: <[u8; 4]>::try_from(arp.sender_protocol_addr()).ok()?.into(),
        target_ip: <[u8; 4]>::try_from(arp.target_protocol_addr()).ok()?.into(),
    })
}

/// Turns the ARP request in `frame` into the reply `answer_mac` would send.
/// The caller has checked the frame with [`parse_arp`].
pub fn write_arp_reply(frame: &mut [u8], req: &Arp, answer_mac: Mac) {
    if frame.len() < ETH + ARP_LEN {
        return;
    }
    frame[0..6].copy_from_slice(&req.sender_mac);
    frame[6..12].copy_from_slice(&answer_mac);
    let a = &mut frame[ETH..ETH + ARP_LEN];
    a[6..8].copy_from_slice(&2u16.to_be_bytes());
    a[8..14].copy_from_slice(&answer_mac);
    a[14..18].copy_from_slice(&req.target_ip.octets());
    a[18..24].copy_from_slice(&req.sender_mac);
    a[24..28].copy_from_slice(&req.sender_ip.octets());
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
    let ip = Ipv6HeaderSlice::from_slice(frame.get(ETH..)?).ok()?;
    if ip.next_header() != IpNumber::IPV6_ICMP || ip.hop_limit() != 255 {
        return None;
    }
    let icmp = Icmpv6Slice::from_slice(frame.get(ETH + IPV6_LEN..)?).ok()?;
    if icmp.icmp_type() != Icmpv6Type::NeighborSolicitation {
        return None;
    }
    let target: [u8; 16] = icmp.payload().get(..16)?.try_into().ok()?;
    Some(Solicitation {
        src_ip: ip.source_addr(),
        target: target.into(),
    })
}

/// Writes, over the solicitation in `frame`, the advertisement `answer_mac` would
/// send, and returns its length (the buffer must hold 86 bytes).
pub fn write_advertisement(frame: &mut [u8], ns: &Solicitation, answer_mac: Mac) -> Option<usize> {
    let total = ETH + IPV6_LEN + NA_LEN;
    let requester: Mac = frame.get(6..12)?.try_into().ok()?;
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
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&answer_mac);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    let ip = &mut f[ETH..ETH + IPV6_LEN];
    ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&ns.target.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let icmp = &mut f[ETH + IPV6_LEN..];
    icmp[0..8].copy_from_slice(&[136, 0, 0, 0, 0, 0, 0, 0]);
    icmp[4] = if solicited { 0x60 } else { 0x20 };
    icmp[8..24].copy_from_slice(&ns.target.octets());
    icmp[24..26].copy_from_slice(&[2, 1]);
    icmp[26..32].copy_from_slice(&answer_mac);
    let header = Icmpv6Type::NeighborAdvertisement(NeighborAdvertisementHeader {
        router: false,
        solicited,
        r#override: true,
    });
    let csum = header
        .calc_checksum(ns.target.octets(), dst.octets(), &icmp[8..NA_LEN])
        .ok()?;
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
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
            Some(133..=137) => Err(DropReason::Ipv6HeaderChain),
            _ => Ok(()),
        };
    }
    let Some(&kind) = icmp.first() else {
        return Ok(());
    };
    let (target_at, opts_at) = match kind {
        133 => (None, 8),                                     // router solicitation
        135 => (Some(8), 24),                                 // neighbour solicitation
        136 => (Some(8), 24),                                 // neighbour advertisement
        134 | 137 => return Err(DropReason::SpoofedSourceIp), // router advertisement, redirect
        _ => return Ok(()),
    };
    if kind == 136 {
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

    pub fn arp_request(src_mac: Mac, src_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&src_ip);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target_ip);
        f
    }

    pub fn solicitation(src_mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        use etherparse::PacketBuilder;
        let mut payload = target.octets().to_vec();
        payload.extend_from_slice(&[1, 1]);
        payload.extend_from_slice(&src_mac);
        let b = PacketBuilder::ethernet2(src_mac, [0x33, 0x33, 0xff, 0, 0, 1])
            .ipv6(
                src.octets(),
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1],
                255,
            )
            .icmpv6(Icmpv6Type::NeighborSolicitation);
        let mut out = Vec::new();
        b.write(&mut out, &payload).unwrap();
        out
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
