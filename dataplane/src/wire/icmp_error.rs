//! ICMP errors the agent answers with, written over the offending frame:
//! "fragmentation needed" (ICMPv4 3/4) and "packet too big" (ICMPv6 2) for frames
//! larger than the network's MTU, so senders lower their path MTU instead of
//! losing packets silently; "port unreachable" (ICMPv4 3/3, ICMPv6 1/4) for a rejected UDP flow.

use super::{ethernet, icmpv4, icmpv6, ipv4, ipv6};
use crate::Mac;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH: usize = ethernet::HEADER_LEN;
/// IPv6 error messages must fit the minimum MTU (RFC 4443 2.4).
const IPV6_MIN_MTU: usize = 1280;

/// Writes an ICMPv4 fragmentation-needed reply to the IPv4 frame in `room[..len]`
/// (the frame is `len` bytes; `room` extends beyond it). Returns the reply length,
/// or `None` when no answer is due (DF clear: a router would fragment).
pub fn write_v4(
    room: &mut [u8],
    len: usize,
    gw_mac: Mac,
    gw_ip: Ipv4Addr,
    mtu: u16,
) -> Option<usize> {
    let ip = ipv4::Packet::new_checked(room.get(..len)?.get(ETH..)?).ok()?;
    if !ip.dont_frag() {
        return None;
    }
    let mut rest = [0u8; 4];
    rest[2..4].copy_from_slice(&mtu.to_be_bytes());
    error_v4(room, len, gw_mac, gw_ip, (icmpv4::CODE_FRAG_NEEDED, rest))
}

/// Writes an ICMPv4 port-unreachable reply (3/3) to the frame in `room[..len]`,
/// from `src_ip`: how a `reject` policy refuses UDP.
pub fn write_v4_port_unreachable(
    room: &mut [u8],
    len: usize,
    src_mac: Mac,
    src_ip: Ipv4Addr,
) -> Option<usize> {
    error_v4(
        room,
        len,
        src_mac,
        src_ip,
        (icmpv4::CODE_PORT_UNREACHABLE, [0; 4]),
    )
}

/// The Ethernet header of a reply to the frame in `room`, written over it:
/// back to its source from `from_mac`. Returns the frame's source.
fn reply_ethernet(room: &mut [u8], from_mac: Mac, ethertype: ethernet::EtherType) -> Mac {
    let mut f = ethernet::Frame::new_unchecked(room);
    let to = f.src_addr();
    ethernet::Repr {
        src_addr: from_mac,
        dst_addr: to,
        ethertype,
    }
    .emit(&mut f);
    to
}

/// An ICMPv4 destination unreachable of `code` quoting the offending
/// packet's header and first 8 bytes, sent back to its source from
/// `from_mac`/`from_ip`.
fn error_v4(
    room: &mut [u8],
    len: usize,
    from_mac: Mac,
    from_ip: Ipv4Addr,
    (code, rest): (u8, [u8; 4]),
) -> Option<usize> {
    let ip = ipv4::Packet::new_checked(room.get(..len)?.get(ETH..)?).ok()?;
    let dst = ip.src_addr();
    let quote = (ip.header_len() + 8).min(len - ETH);
    let total = ipv4::MIN_HEADER_LEN + icmpv4::HEADER_LEN + quote;
    if room.len() < ETH + total {
        return None;
    }
    room.copy_within(ETH..ETH + quote, ETH + total - quote);
    reply_ethernet(room, from_mac, ethernet::EtherType::IPV4);
    let ip = ipv4::Repr {
        dscp_ecn: 0xc0, // network control, as routers send errors
        dont_frag: false,
        ..ipv4::Repr::new(from_ip, dst, ipv4::IpNumber::ICMP, total - 20)
    };
    ip.emit(&mut ipv4::Packet::new_unchecked(&mut room[ETH..]));
    let icmp = icmpv4::Repr {
        msg_type: icmpv4::DST_UNREACHABLE,
        code,
        rest_of_header: rest,
    };
    let at = ETH + ip.header_len();
    icmp.emit(
        &mut icmpv4::Packet::new_unchecked(&mut room[at..ETH + total]),
        0,
    );
    Some(ETH + total)
}

/// Writes an ICMPv6 packet-too-big reply to the IPv6 frame in `room[..len]`.
pub fn write_v6(
    room: &mut [u8],
    len: usize,
    gw_mac: Mac,
    gw_ip: Ipv6Addr,
    mtu: u16,
) -> Option<usize> {
    error_v6(
        room,
        len,
        gw_mac,
        gw_ip,
        (icmpv6::PACKET_TOO_BIG, 0),
        u32::from(mtu).to_be_bytes(),
    )
}

/// Writes an ICMPv6 port-unreachable reply (1/4) to the IPv6 frame in
/// `room[..len]`, from `src_ip`: how a `reject` policy refuses UDP over IPv6.
pub fn write_v6_port_unreachable(
    room: &mut [u8],
    len: usize,
    src_mac: Mac,
    src_ip: Ipv6Addr,
) -> Option<usize> {
    error_v6(
        room,
        len,
        src_mac,
        src_ip,
        (icmpv6::DST_UNREACHABLE, icmpv6::CODE_PORT_UNREACHABLE),
        [0; 4],
    )
}

/// An ICMPv6 error of `(type, code)` quoting as much of the offending packet as
/// fits the minimum MTU, sent back to its source from `from_mac`/`from_ip`.
fn error_v6(
    room: &mut [u8],
    len: usize,
    from_mac: Mac,
    from_ip: Ipv6Addr,
    (msg_type, code): (u8, u8),
    rest: [u8; 4],
) -> Option<usize> {
    let ip = ipv6::Packet::new_checked(room.get(..len)?.get(ETH..)?).ok()?;
    let dst = ip.src_addr();
    let quote = (len - ETH).min(IPV6_MIN_MTU - ipv6::HEADER_LEN - icmpv6::HEADER_LEN);
    let plen = icmpv6::HEADER_LEN + quote;
    let at = ETH + ipv6::HEADER_LEN;
    if room.len() < at + plen {
        return None;
    }
    room.copy_within(ETH..ETH + quote, at + icmpv6::HEADER_LEN);
    reply_ethernet(room, from_mac, ethernet::EtherType::IPV6);
    let ip = ipv6::Repr {
        src_addr: from_ip,
        dst_addr: dst,
        next_header: ipv6::IpNumber::IPV6_ICMP,
        payload_len: plen,
        hop_limit: 64,
    };
    ip.emit(&mut ipv6::Packet::new_unchecked(&mut room[ETH..]));
    let icmp = icmpv6::Repr {
        msg_type,
        code,
        rest_of_header: rest,
    };
    icmp.emit(
        &mut icmpv6::Packet::new_unchecked(&mut room[at..at + plen]),
        ip.pseudo(),
    );
    Some(at + plen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;
    use etherparse::{Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type};

    #[test]
    fn v4_frag_needed_is_well_formed() {
        let mut f = build::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3])
            .dont_frag(true)
            .udp(1, 2, &[0u8; 1500]);
        let len = f.len();
        f.resize(4096, 0);
        let n = write_v4(
            &mut f,
            len,
            [2, 9, 9, 9, 9, 9],
            Ipv4Addr::new(10, 0, 0, 1),
            1375,
        )
        .unwrap();
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..n]).unwrap();
        assert_eq!(ip.destination_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(ip.to_header().calc_header_checksum(), ip.header_checksum());
        let icmp = Icmpv4Slice::from_slice(&f[34..n]).unwrap();
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(_)
        ));
        assert_eq!(u16::from_be_bytes([f[34 + 6], f[34 + 7]]), 1375);
        let c = etherparse::checksum::Sum16BitWords::new()
            .add_slice(&f[34..n])
            .ones_complement();
        assert_eq!(c, 0, "ICMP checksum does not verify");
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn v4_without_df_gets_no_answer() {
        let mut f = build::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3])
            .dont_frag(false)
            .udp(1, 2, &[0u8; 100]);
        let len = f.len();
        assert_eq!(
            write_v4(&mut f, len, [2; 6], Ipv4Addr::new(10, 0, 0, 1), 1375),
            None
        );
    }

    #[test]
    fn v6_packet_too_big_is_well_formed() {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let gw: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::3".parse().unwrap();
        let mut f = build::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(src, dst)
            .udp(1, 2, &[0u8; 1500]);
        let len = f.len();
        f.resize(4096, 0);
        let n = write_v6(&mut f, len, [2; 6], gw, 1375).unwrap();
        assert!(n - 14 <= 1280);
        let icmp = Icmpv6Slice::from_slice(&f[54..n]).unwrap();
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::PacketTooBig { mtu: 1375 }
        ));
        assert!(icmp.is_checksum_valid(gw.octets(), src.octets()));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever frame an endpoint sends, an ICMP error about it is either
        /// not due or fits the room and parses, quoting from the frame.
        #[test]
        fn errors_about_any_frame_parse(
            frame in proptest::collection::vec(any::<u8>(), 0..200),
            v4 in any::<bool>(),
            extra in 0usize..100,
        ) {
            let mut room = frame.clone();
            room.resize(frame.len() + extra, 0);
            let len = frame.len();
            let gw = [2, 0, 0, 0, 0, 1];
            let n = if v4 {
                write_v4(&mut room, len, gw, Ipv4Addr::new(10, 0, 0, 1), 1400)
                    .or_else(|| write_v4_port_unreachable(&mut room, len, gw, Ipv4Addr::new(10, 0, 0, 1)))
            } else {
                write_v6(&mut room, len, gw, "fd00::1".parse().unwrap(), 1400)
            };
            if let Some(n) = n {
                prop_assert!(n <= room.len());
                prop_assert!(etherparse::SlicedPacket::from_ethernet(&room[..n]).is_ok());
            }
        }
    }
}
