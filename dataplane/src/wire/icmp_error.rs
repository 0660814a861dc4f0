//! ICMP errors the agent answers with, written over the offending frame:
//! "fragmentation needed" (ICMPv4 3/4) and "packet too big" (ICMPv6 2) for frames
//! larger than the network's MTU, so senders lower their path MTU instead of
//! losing packets silently; "port unreachable" (ICMPv4 3/3, ICMPv6 1/4) for a rejected UDP flow.

use crate::Mac;
use etherparse::checksum::Sum16BitWords;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH: usize = 14;
/// IPv6 error messages must fit the minimum MTU (RFC 4443 2.4).
const IPV6_MIN_MTU: usize = 1280;

fn fold(sum: Sum16BitWords) -> [u8; 2] {
    // etherparse sums native-endian words, so the result is stored native-endian too.
    sum.ones_complement().to_ne_bytes()
}

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
    let ip = etherparse::Ipv4HeaderSlice::from_slice(room.get(..len)?.get(ETH..)?).ok()?;
    if !ip.dont_fragment() {
        return None;
    }
    let mut rest = [0u8; 4];
    rest[2..4].copy_from_slice(&mtu.to_be_bytes());
    error_v4(room, len, gw_mac, gw_ip, (3, 4), rest)
}

/// Writes an ICMPv4 port-unreachable reply (3/3) to the frame in `room[..len]`,
/// from `src_ip`: how a `reject` policy refuses UDP.
pub fn write_v4_port_unreachable(
    room: &mut [u8],
    len: usize,
    src_mac: Mac,
    src_ip: Ipv4Addr,
) -> Option<usize> {
    error_v4(room, len, src_mac, src_ip, (3, 3), [0; 4])
}

/// An ICMPv4 error of `(type, code)` quoting the offending packet's header and
/// first 8 bytes, sent back to its source from `from_mac`/`from_ip`.
fn error_v4(
    room: &mut [u8],
    len: usize,
    from_mac: Mac,
    from_ip: Ipv4Addr,
    (kind, code): (u8, u8),
    rest: [u8; 4],
) -> Option<usize> {
    let frame = room.get(..len)?;
    let ip = etherparse::Ipv4HeaderSlice::from_slice(frame.get(ETH..)?).ok()?;
    let dst = ip.source_addr();
    let quote = (ip.slice().len() + 8).min(len - ETH);
    let src_mac: Mac = frame[6..12].try_into().ok()?;
    let total = 20 + 8 + quote;
    if room.len() < ETH + total {
        return None;
    }
    room.copy_within(ETH..ETH + quote, ETH + 28);
    room[0..6].copy_from_slice(&src_mac);
    room[6..12].copy_from_slice(&from_mac);
    room[12..14].copy_from_slice(&[0x08, 0x00]);
    let h = &mut room[ETH..ETH + 20];
    h.copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[12..16].copy_from_slice(&from_ip.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = fold(Sum16BitWords::new().add_slice(h));
    h[10..12].copy_from_slice(&c);
    let icmp = &mut room[ETH + 20..ETH + total];
    icmp[0..4].copy_from_slice(&[kind, code, 0, 0]);
    icmp[4..8].copy_from_slice(&rest);
    let c = fold(Sum16BitWords::new().add_slice(icmp));
    icmp[2..4].copy_from_slice(&c);
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
        (2, 0),
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
    error_v6(room, len, src_mac, src_ip, (1, 4), [0; 4])
}

/// An ICMPv6 error of `(type, code)` quoting as much of the offending packet as
/// fits the minimum MTU, sent back to its source from `from_mac`/`from_ip`.
fn error_v6(
    room: &mut [u8],
    len: usize,
    from_mac: Mac,
    from_ip: Ipv6Addr,
    (kind, code): (u8, u8),
    rest: [u8; 4],
) -> Option<usize> {
    let frame = room.get(..len)?;
    let ip = etherparse::Ipv6HeaderSlice::from_slice(frame.get(ETH..)?).ok()?;
    let dst = ip.source_addr();
    let quote = (len - ETH).min(IPV6_MIN_MTU - 40 - 8);
    let src_mac: Mac = frame[6..12].try_into().ok()?;
    let plen = 8 + quote;
    if room.len() < ETH + 40 + plen {
        return None;
    }
    room.copy_within(ETH..ETH + quote, ETH + 48);
    room[0..6].copy_from_slice(&src_mac);
    room[6..12].copy_from_slice(&from_mac);
    room[12..14].copy_from_slice(&[0x86, 0xdd]);
    let h = &mut room[ETH..ETH + 40];
    h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    h[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
    h[6] = 58;
    h[7] = 64;
    h[8..24].copy_from_slice(&from_ip.octets());
    h[24..40].copy_from_slice(&dst.octets());
    let icmp = &mut room[ETH + 40..ETH + 40 + plen];
    icmp[0..4].copy_from_slice(&[kind, code, 0, 0]);
    icmp[4..8].copy_from_slice(&rest);
    let sum = Sum16BitWords::new()
        .add_16bytes(from_ip.octets())
        .add_16bytes(dst.octets())
        .add_4bytes((plen as u32).to_be_bytes())
        .add_4bytes([0, 0, 0, 58])
        .add_slice(icmp);
    let c = fold(sum);
    icmp[2..4].copy_from_slice(&c);
    Some(ETH + 40 + plen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, PacketBuilder};

    #[test]
    fn v4_frag_needed_is_well_formed() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .udp(1, 2)
            .write(&mut f, &[0u8; 1500])
            .unwrap();
        f[14 + 6] |= 0x40; // DF
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
        let c = Sum16BitWords::new().add_slice(&f[34..n]).ones_complement();
        assert_eq!(c, 0, "ICMP checksum does not verify");
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn v4_without_df_gets_no_answer() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .udp(1, 2)
            .write(&mut f, &[0u8; 100])
            .unwrap();
        f[14 + 6] &= !0x40;
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
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(
                src.octets(),
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
                64,
            )
            .udp(1, 2)
            .write(&mut f, &[0u8; 1500])
            .unwrap();
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
