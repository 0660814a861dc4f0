//! Address and port rewriting with incremental checksum updates (RFC 1624,
//! in [`crate::wire::checksum`]): rewriting one address of a 1400-byte packet
//! touches a few words, not the whole payload.

use crate::wire::{ethernet, icmpv4, icmpv6, ipv4, ipv6, udp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH: usize = ethernet::HEADER_LEN;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// The IP packet of the Ethernet frame `f` when its EtherType is `t` and it
/// holds at least `min` bytes of it.
#[inline(always)]
fn l3(f: &[u8], t: ethernet::EtherType, min: usize) -> Option<&[u8]> {
    let eth = ethernet::Frame::new_checked(f).ok()?;
    (eth.ethertype() == t && f.len() >= ETH + min).then(|| &f[ETH..])
}

/// Writes `port` on `side` of the TCP or UDP header `l4` (their ports sit
/// alike, first) and returns the checksum change.
#[inline]
fn rewrite_port(l4: &mut [u8], side: Side, port: u16) -> u64 {
    let mut p = udp::Packet::new_unchecked(l4);
    match side {
        Side::Src => p.rewrite_src_port(port),
        Side::Dst => p.rewrite_dst_port(port),
    }
}

/// Updates the TCP or UDP checksum of `l4` by `delta`; a UDP checksum of
/// zero is left so when `zero_is_none` (over IPv4, none was sent).
#[inline]
fn update_l4(l4: &mut [u8], proto: u8, delta: u64, zero_is_none: bool) {
    if proto == TCP {
        crate::wire::tcp::Packet::new_unchecked(l4).update_checksum(delta);
    } else {
        let mut u = udp::Packet::new_unchecked(l4);
        if !(zero_is_none && u.checksum() == 0) {
            u.update_checksum(delta);
        }
    }
}

/// Rewrites the IPv4 address and L4 port on `side` of the Ethernet/IPv4 frame,
/// updating the IP header checksum and the TCP, UDP (unless zero) or nothing (ICMP
/// carries no pseudo-header). Returns false, touching nothing, for a frame that is
/// not IPv4 TCP/UDP/ICMP or is too short.
#[inline]
pub fn rewrite_v4(f: &mut [u8], side: Side, ip: Ipv4Addr, port: u16) -> bool {
    let Some(p) = l3(f, ethernet::EtherType::IPV4, 20).map(ipv4::Packet::new_unchecked) else {
        return false;
    };
    let (proto, ihl) = (p.next_header().0, p.header_len());
    let need = match proto {
        TCP => ihl + 20,
        UDP => ihl + 8,
        1 => ihl,
        _ => return false,
    };
    if ihl < 20 || f.len() < ETH + need {
        return false;
    }
    let mut p = ipv4::Packet::new_unchecked(&mut f[ETH..]);
    let d = match side {
        Side::Src => p.rewrite_src_addr(ip),
        Side::Dst => p.rewrite_dst_addr(ip),
    };
    if proto != 1 {
        // the pseudo-header covers the address, the header the port
        let l4 = p.payload_mut();
        let d = d + rewrite_port(l4, side, port);
        update_l4(l4, proto, d, true);
    }
    true
}

/// Rewrites the address and port on `side` of an IPv4 or IPv6 frame (the
/// address's family must be the frame's): [`rewrite_v4`] or [`rewrite_v6`].
#[inline]
pub fn rewrite(f: &mut [u8], side: Side, ip: IpAddr, port: u16) -> bool {
    match ip {
        IpAddr::V4(a) => rewrite_v4(f, side, a, port),
        IpAddr::V6(a) => rewrite_v6(f, side, a, port),
    }
}

/// The IPv6 next headers the balancer translates: TCP, UDP and ICMPv6 right
/// after the fixed header. A packet with extension headers first is not
/// translated (the switch drops it with its own counted reason).
pub fn v6_transport(f: &[u8]) -> Option<u8> {
    let ip = ipv6::Packet::new_unchecked(l3(f, ethernet::EtherType::IPV6, 40)?);
    let next = ip.next_header().0;
    matches!(next, TCP | UDP | 58).then_some(next)
}

/// Rewrites the IPv6 address and L4 port on `side` of the Ethernet/IPv6 frame.
/// IPv6 has no header checksum; TCP, UDP and ICMPv6 all cover the addresses
/// through their pseudo-header, so each is updated (once, for address and port
/// together). ICMPv6 echo keeps its identifier, as ICMPv4 does. Returns false,
/// touching nothing, for a frame that is not IPv6 TCP/UDP/ICMPv6 without
/// extension headers, or is too short.
#[inline]
pub fn rewrite_v6(f: &mut [u8], side: Side, ip: Ipv6Addr, port: u16) -> bool {
    let Some(proto) = v6_transport(f) else {
        return false;
    };
    let need = match proto {
        TCP => 20,
        UDP => 8,
        _ => 4,
    };
    if f.len() < ETH + 40 + need {
        return false;
    }
    let mut p = ipv6::Packet::new_unchecked(&mut f[ETH..]);
    let d = match side {
        Side::Src => p.rewrite_src_addr(ip),
        Side::Dst => p.rewrite_dst_addr(ip),
    };
    let l4 = p.payload_mut();
    if proto == 58 {
        icmpv6::Packet::new_unchecked(l4).update_checksum(d);
    } else {
        let d = d + rewrite_port(l4, side, port);
        update_l4(l4, proto, d, false);
    }
    true
}

/// The ports of the TCP or UDP header at the start of `l4` (4 bytes at least).
fn ports(l4: &[u8]) -> (u16, u16) {
    let p = udp::Packet::new_unchecked(l4);
    (p.src_port(), p.dst_port())
}

/// Where the packet an ICMPv4 error quotes starts in `f`, and its header's
/// length; `None` for frames that are no ICMPv4 error or quote too little.
fn v4_quote(f: &[u8]) -> Option<(usize, usize)> {
    let ip = ipv4::Packet::new_unchecked(l3(f, ethernet::EtherType::IPV4, 20)?);
    if ip.next_header() != ipv4::IpNumber::ICMP {
        return None;
    }
    let icmp = ETH + ip.header_len();
    let t = *f.get(icmp)?;
    if !matches!(
        t,
        icmpv4::DST_UNREACHABLE | icmpv4::TIME_EXCEEDED | icmpv4::PARAM_PROBLEM
    ) {
        return None;
    }
    let inner = icmp + icmpv4::HEADER_LEN;
    let ihl = ipv4::Packet::new_unchecked(f.get(inner..inner + 1)?).header_len();
    f.get(inner..inner + ihl + 4)?;
    (ihl >= 20).then_some((inner, ihl))
}

/// The connection an ICMPv4 error (unreachable, time exceeded, parameter
/// problem) at `f` is about: (proto, src, dst, sport, dport) of the packet it
/// quotes, as that packet was sent. `None` for other frames.
pub fn icmp_error_quote(f: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, u16, u16)> {
    let (inner, ihl) = v4_quote(f)?;
    let q = ipv4::Packet::new_unchecked(&f[inner..]);
    let (sport, dport) = ports(&f[inner + ihl..]);
    Some((q.next_header().0, q.src_addr(), q.dst_addr(), sport, dport))
}

/// Rewrites an ICMPv4 error about a balanced connection so its client accepts
/// it: the outer source becomes `from` (the VIP), and the quoted packet's
/// destination `(ip, port)` (the VIP and service port). Checksums are fixed:
/// the outer header's incrementally, the quoted header's and the ICMP
/// message's whole (errors are small and rare). The quoted UDP checksum is
/// updated if quoted and set; a quoted TCP checksum is beyond the 8 bytes
/// routers must quote, and the client does not check it.
pub fn rewrite_icmp_error(f: &mut [u8], from: Ipv4Addr, ip: Ipv4Addr, port: u16) -> bool {
    let Some((inner, ihl)) = v4_quote(f) else {
        return false;
    };
    let len = f.len();
    let mut outer = ipv4::Packet::new_unchecked(&mut f[ETH..]);
    let total = outer.total_len() + ETH;
    if total > len || total < inner + ihl + 4 {
        return false;
    }
    outer.rewrite_src_addr(from);
    let mut q = ipv4::Packet::new_unchecked(&mut f[inner..total]);
    let d = q.rewrite_dst_addr(ip);
    let udp = q.next_header().0 == UDP && total >= inner + ihl + 8;
    q.fill_checksum();
    let l4 = &mut f[inner + ihl..total];
    let d = d + rewrite_port(l4, Side::Dst, port);
    if udp {
        update_l4(l4, UDP, d, true);
    }
    let icmp = inner - icmpv4::HEADER_LEN;
    icmpv4::Packet::new_unchecked(&mut f[icmp..total]).fill_checksum(0);
    true
}

/// The connection an ICMPv6 error (destination unreachable, packet too big,
/// time exceeded, parameter problem) at `f` is about: (proto, src, dst, sport,
/// dport) of the IPv6 TCP/UDP packet it quotes, as that packet was sent.
/// `None` for other frames (and for quoted packets with extension headers).
pub fn icmp6_error_quote(f: &[u8]) -> Option<(u8, Ipv6Addr, Ipv6Addr, u16, u16)> {
    if v6_transport(f)? != 58 || !icmpv6::is_error(*f.get(ETH + 40)?) {
        return None;
    }
    let q = ipv6::Packet::new_unchecked(f.get(ETH + 48..ETH + 48 + 44)?);
    let proto = q.next_header().0;
    if q.version() != 6 || !matches!(proto, TCP | UDP) {
        return None;
    }
    let (sport, dport) = ports(&f[ETH + 48 + 40..]);
    Some((proto, q.src_addr(), q.dst_addr(), sport, dport))
}

/// [`rewrite_icmp_error`] for ICMPv6: the outer source becomes `from` (the
/// VIP), the quoted destination `(ip, port)`; the quoted UDP checksum (when
/// quoted) is updated, and the ICMPv6 checksum, which covers the outer
/// addresses through the pseudo-header, is computed anew over the message.
pub fn rewrite_icmp6_error(f: &mut [u8], from: Ipv6Addr, ip: Ipv6Addr, port: u16) -> bool {
    if icmp6_error_quote(f).is_none() {
        return false;
    }
    let len = f.len();
    let mut outer = ipv6::Packet::new_unchecked(&mut f[ETH..]);
    let plen = outer.payload_len();
    let end = ETH + 40 + plen;
    if end > len || plen < 8 + 44 {
        return false;
    }
    outer.set_src_addr(from);
    let pseudo = ipv6::Repr::parse(&outer).pseudo();
    let icmp = ETH + 40;
    let q = icmp + icmpv6::HEADER_LEN;
    let mut quoted = ipv6::Packet::new_unchecked(&mut f[q..end]);
    let d = quoted.rewrite_dst_addr(ip);
    let udp = quoted.next_header().0 == UDP && end >= q + 48;
    let l4 = &mut f[q + 40..end];
    let d = d + rewrite_port(l4, Side::Dst, port);
    if udp {
        update_l4(l4, UDP, d, true);
    }
    icmpv6::Packet::new_unchecked(&mut f[icmp..end]).fill_checksum(pseudo);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;
    use etherparse::{SlicedPacket, TransportSlice};

    /// TCP (seq 7, window 100, no flags) or UDP from 10.0.0.2:40000 to
    /// 10.0.9.9 (port 80 or 53).
    fn frame(tcp: bool, payload: &[u8]) -> Vec<u8> {
        let ip = build::eth([2; 6], [4; 6]).ipv4([10, 0, 0, 2], [10, 0, 9, 9]);
        if tcp {
            let t = crate::wire::tcp::Repr {
                window: 100,
                ..build::tcp(40000, 80, 7, 0)
            };
            ip.tcp(t, payload)
        } else {
            ip.udp(40000, 53, payload)
        }
    }

    fn valid(f: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            return false;
        };
        let h = ip.header().to_header();
        let (s, d) = (ip.header().source(), ip.header().destination());
        h.calc_header_checksum() == h.header_checksum
            && match p.transport {
                Some(TransportSlice::Tcp(t)) => t.calc_checksum_ipv4(s, d).unwrap() == t.checksum(),
                Some(TransportSlice::Udp(u)) => {
                    u.to_header()
                        .calc_checksum_ipv4_raw(s, d, u.payload())
                        .unwrap()
                        == u.checksum()
                }
                _ => false,
            }
    }

    #[test]
    fn dnat_and_back_keep_checksums_valid() {
        for tcp in [true, false] {
            let orig = frame(tcp, b"hello backend");
            let mut f = orig.clone();
            assert!(rewrite_v4(
                &mut f,
                Side::Dst,
                Ipv4Addr::new(10, 0, 1, 5),
                8080
            ));
            assert!(valid(&f));
            assert_eq!(&f[30..34], &[10, 0, 1, 5]);
            assert!(rewrite_v4(
                &mut f,
                Side::Dst,
                Ipv4Addr::new(10, 0, 9, 9),
                if tcp { 80 } else { 53 }
            ));
            assert_eq!(f, orig, "rewriting back restores the packet exactly");
        }
    }

    #[test]
    fn an_icmp_error_about_a_balanced_flow_reads_as_from_the_vip() {
        // the backend 10.0.1.5 refuses UDP 10.0.0.2:40000 -> 10.0.1.5:53
        let quoted = build::eth([2; 6], [4; 6])
            .ipv4([10, 0, 0, 2], [10, 0, 1, 5])
            .udp(40000, 53, b"query");
        let unreachable = icmpv4::Repr {
            msg_type: icmpv4::DST_UNREACHABLE,
            code: icmpv4::CODE_PORT_UNREACHABLE,
            rest_of_header: [0; 4],
        };
        let mut f = build::eth([4; 6], [2; 6])
            .ipv4([10, 0, 1, 5], [10, 0, 0, 2])
            .icmp(unreachable, &quoted[ETH..]);
        assert_eq!(
            icmp_error_quote(&f),
            Some((
                17,
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(10, 0, 1, 5),
                40000,
                53
            ))
        );
        let vip = Ipv4Addr::new(10, 0, 9, 9);
        assert!(rewrite_icmp_error(&mut f, vip, vip, 5353));
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not ipv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!(ip.header().source(), vip.octets());
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!("not icmp")
        };
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
        let q = etherparse::Ipv4HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!(q.destination(), vip.octets());
        assert_eq!(q.to_header().calc_header_checksum(), q.header_checksum());
        let u = &icmp.payload()[20..];
        assert_eq!(u16::from_be_bytes([u[2], u[3]]), 5353);
        let uh = etherparse::UdpHeaderSlice::from_slice(u)
            .unwrap()
            .to_header();
        assert_eq!(
            uh.calc_checksum_ipv4_raw([10, 0, 0, 2], vip.octets(), &u[8..])
                .unwrap(),
            uh.checksum,
            "quoted UDP checksum still matches"
        );
        // not an error: untouched
        let mut g = frame(false, b"x");
        assert!(!rewrite_icmp_error(&mut g, vip, vip, 1));
    }

    /// [`frame`] over IPv6 (fd00::2 to fd00::99), or an ICMPv6 echo request
    /// (id 7, sequence 1).
    fn frame6(proto: u8, payload: &[u8]) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) =
            ("fd00::2".parse().unwrap(), "fd00::99".parse().unwrap());
        let ip = build::eth([2; 6], [4; 6]).ipv6(src, dst);
        match proto {
            6 => ip.tcp(
                crate::wire::tcp::Repr {
                    window: 100,
                    ..build::tcp(40000, 80, 7, 0)
                },
                payload,
            ),
            17 => ip.udp(40000, 53, payload),
            _ => ip.icmp(
                icmpv6::Repr {
                    msg_type: icmpv6::ECHO_REQUEST,
                    code: 0,
                    rest_of_header: [0, 7, 0, 1],
                },
                payload,
            ),
        }
    }

    fn valid6(f: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            return false;
        };
        let (s, d) = (ip.header().source(), ip.header().destination());
        match p.transport {
            Some(TransportSlice::Tcp(t)) => t.calc_checksum_ipv6(s, d).unwrap() == t.checksum(),
            Some(TransportSlice::Udp(u)) => {
                u.to_header()
                    .calc_checksum_ipv6_raw(s, d, u.payload())
                    .unwrap()
                    == u.checksum()
            }
            Some(TransportSlice::Icmpv6(i)) => {
                i.icmp_type().calc_checksum(s, d, i.payload()).unwrap() == i.checksum()
            }
            _ => false,
        }
    }

    #[test]
    fn ipv6_dnat_and_back_keep_checksums_valid() {
        let task: Ipv6Addr = "fd00:0:0:1::5".parse().unwrap();
        for proto in [6, 17, 58] {
            let orig = frame6(proto, b"hello backend");
            assert!(valid6(&orig));
            let mut f = orig.clone();
            assert!(rewrite(&mut f, Side::Dst, task.into(), 8080));
            assert!(valid6(&f), "proto {proto}");
            assert_eq!(&f[38..54], &task.octets());
            if proto != 58 {
                assert_eq!(&f[56..58], &8080u16.to_be_bytes());
            }
            let back = if proto == 17 { 53 } else { 80 };
            assert!(rewrite(
                &mut f,
                Side::Dst,
                "fd00::99".parse::<IpAddr>().unwrap(),
                back
            ));
            assert_eq!(f, orig, "rewriting back restores the packet exactly");
        }
    }

    #[test]
    fn an_icmpv6_error_about_a_balanced_flow_reads_as_from_the_vip() {
        let client: Ipv6Addr = "fd00::2".parse().unwrap();
        let task: Ipv6Addr = "fd00:1::5".parse().unwrap();
        let vip: Ipv6Addr = "fd00::99".parse().unwrap();
        // the task refuses UDP client:40000 -> task:53
        let quoted = build::eth([2; 6], [4; 6])
            .ipv6(client, task)
            .udp(40000, 53, b"query");
        let unreachable = icmpv6::Repr {
            msg_type: icmpv6::DST_UNREACHABLE,
            code: icmpv6::CODE_PORT_UNREACHABLE,
            rest_of_header: [0; 4],
        };
        let mut f = build::eth([4; 6], [2; 6])
            .ipv6(task, client)
            .icmp(unreachable, &quoted[ETH..]);
        assert_eq!(icmp6_error_quote(&f), Some((17, client, task, 40000, 53)));
        assert!(rewrite_icmp6_error(&mut f, vip, vip, 5353));
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not ipv6")
        };
        assert_eq!(ip.header().source_addr(), vip);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not icmpv6")
        };
        let (s, d) = (ip.header().source(), ip.header().destination());
        assert_eq!(
            icmp.icmp_type()
                .calc_checksum(s, d, icmp.payload())
                .unwrap(),
            icmp.checksum(),
            "ICMPv6 checksum over the new pseudo-header"
        );
        let q = etherparse::Ipv6HeaderSlice::from_slice(icmp.payload()).unwrap();
        assert_eq!(q.destination_addr(), vip);
        let u = &icmp.payload()[40..];
        assert_eq!(u16::from_be_bytes([u[2], u[3]]), 5353);
        let uh = etherparse::UdpHeaderSlice::from_slice(u)
            .unwrap()
            .to_header();
        assert_eq!(
            uh.calc_checksum_ipv6_raw(client.octets(), vip.octets(), &u[8..])
                .unwrap(),
            uh.checksum,
            "quoted UDP checksum still matches"
        );
        // an echo reply is no error
        let mut g = frame6(58, b"x");
        assert_eq!(icmp6_error_quote(&g), None);
        assert!(!rewrite_icmp6_error(&mut g, vip, vip, 1));
    }

    #[test]
    fn ipv6_with_an_extension_header_is_not_rewritten() {
        let mut f = frame6(6, b"x");
        f[14 + 6] = 0; // hop-by-hop options first
        let before = f.clone();
        assert!(!rewrite_v6(&mut f, Side::Dst, Ipv6Addr::LOCALHOST, 1));
        assert_eq!(f, before);
        assert_eq!(v6_transport(&f), None);
    }

    proptest::proptest! {
        #[test]
        fn ipv6_checksums_stay_valid(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            ip in proptest::num::u128::ANY, port in proptest::num::u16::ANY,
            proto in proptest::sample::select(vec![6u8, 17, 58]), src in proptest::bool::ANY,
        ) {
            let mut f = frame6(proto, &payload);
            let side = if src { Side::Src } else { Side::Dst };
            proptest::prop_assert!(rewrite_v6(&mut f, side, Ipv6Addr::from(ip), port));
            proptest::prop_assert!(valid6(&f));
        }

        #[test]
        fn ipv6_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..90)) {
            let mut d = data.clone();
            if d.len() > 21 { d[12] = 0x86; d[13] = 0xdd; d[20] = 6; }
            let _ = rewrite_v6(&mut d, Side::Src, Ipv6Addr::LOCALHOST, 1);
        }

        #[test]
        fn icmp6_error_rewrite_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            let mut d = data.clone();
            if d.len() > 62 { d[12] = 0x86; d[13] = 0xdd; d[20] = 58; d[54] = 1; d[62] = 0x60; }
            if d.len() > 68 { d[68] = 17; }
            let _ = icmp6_error_quote(&d);
            let _ = rewrite_icmp6_error(&mut d, Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1);
        }
    }

    proptest::proptest! {
        #[test]
        fn icmp_error_rewrite_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let mut d = data.clone();
            if d.len() > 34 { d[12] = 8; d[13] = 0; d[14] = 0x45; d[23] = 1; d[34] = 3; }
            let _ = icmp_error_quote(&d);
            let _ = rewrite_icmp_error(&mut d, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1);
        }

        #[test]
        fn checksums_stay_valid(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            ip in proptest::num::u32::ANY, port in proptest::num::u16::ANY,
            tcp in proptest::bool::ANY, src in proptest::bool::ANY,
        ) {
            let mut f = frame(tcp, &payload);
            let side = if src { Side::Src } else { Side::Dst };
            proptest::prop_assert!(rewrite_v4(&mut f, side, Ipv4Addr::from(ip), port));
            proptest::prop_assert!(valid(&f));
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let mut d = data.clone();
            let _ = rewrite_v4(&mut d, Side::Dst, Ipv4Addr::LOCALHOST, 1);
        }
    }
}
