//! Frames for seeds and tests: what a container, a node or the kernel sends.

use crate::offload::vnet;
use crate::wire::vxlan;
use crate::Mac;
use etherparse::PacketBuilder;

/// An IPv4/UDP frame.
pub fn udp_frame(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4(sip, dip, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("frame");
    out
}

/// An IPv4/TCP frame with `flags` (SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src: Mac,
    dst: Mac,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv4(sip, dip, 64)
        .tcp(sport, dport, 1000, 65535);
    let mut out = Vec::new();
    with_flags(b, flags)
        .write(&mut out, payload)
        .expect("frame");
    out
}

/// Sets SYN (0x02), ACK (0x10, acknowledging 1), FIN (0x01) and RST (0x04)
/// from `flags`.
fn with_flags(
    mut b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    flags: u8,
) -> etherparse::PacketBuilderStep<etherparse::TcpHeader> {
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    b
}

/// [`tcp_frame`] over IPv6.
#[allow(clippy::too_many_arguments)]
pub fn tcp6_frame(
    src: Mac,
    dst: Mac,
    sip: &str,
    dip: &str,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    let b = PacketBuilder::ethernet2(src, dst)
        .ipv6(v6(sip), v6(dip), 64)
        .tcp(sport, dport, 1000, 65535);
    let mut out = Vec::new();
    with_flags(b, flags)
        .write(&mut out, payload)
        .expect("frame");
    out
}

pub fn arp_request(src: Mac, sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tip);
    f
}

pub fn dns_query(id: u16, name: &str, aaaa: bool) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    let t = if aaaa {
        RecordType::AAAA
    } else {
        RecordType::A
    };
    m.add_query(Query::query(Name::from_str(name).expect("name"), t));
    m.to_vec().expect("query")
}

pub fn icmpv6_solicitation(src: Mac, sip: &str, target: &str) -> Vec<u8> {
    let sip: std::net::Ipv6Addr = sip.parse().expect("v6");
    let target: std::net::Ipv6Addr = target.parse().expect("v6");
    let t = target.octets();
    let dip = [
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    ];
    let dip = std::net::Ipv6Addr::new(
        dip[0], dip[1], dip[2], dip[3], dip[4], dip[5], dip[6], dip[7],
    );
    let mut body = Vec::new();
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&t);
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
        .ipv6(sip.octets(), dip.octets(), 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut out, &body[4..])
        .expect("frame");
    out
}

/// An extension header of 8 bytes holding one PadN option: a hop-by-hop or
/// destination options header (its Next Header is filled in by [`icmpv6_frame`]).
pub fn ext_options() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A Fragment header at `offset` (in 8-byte units); offset 0 without `more`
/// is an atomic fragment.
pub fn ext_fragment(offset: u16, more: bool) -> Vec<u8> {
    let o = offset << 3 | u16::from(more);
    let mut f = vec![0, 0];
    f.extend_from_slice(&o.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x5e, 0xed]);
    f
}

/// An ICMPv6 message of type `kind` (`body`: what follows its 4-byte header)
/// from `src` at fe80::a to all-nodes, hop limit 255 as neighbour discovery
/// has it, behind the extension headers `exts` (protocol number and bytes;
/// each Next Header is filled in here), with a valid checksum: what a container
/// would send to hide a router advertisement from the guard.
pub fn icmpv6_frame(src: Mac, kind: u8, body: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let sip: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa];
    let dip: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, 0, 255]);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&dip);
    f[20] = exts.first().map_or(58, |e| e.0);
    for (i, (_, h)) in exts.iter().enumerate() {
        let at = f.len();
        f.extend_from_slice(h);
        f[at] = exts.get(i + 1).map_or(58, |e| e.0);
    }
    let icmp_at = f.len();
    f.extend_from_slice(&[kind, 0, 0, 0]);
    f.extend_from_slice(body);
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    // the pseudo-header (RFC 8200 8.1), then the message
    let icmp_len = (f.len() - icmp_at) as u32;
    let mut sum: u32 = 58 + (icmp_len >> 16) + (icmp_len & 0xffff);
    let mut words = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    words(&sip);
    words(&dip);
    words(&f[icmp_at..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[icmp_at + 2..icmp_at + 4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

/// A router advertisement's body after its ICMPv6 header: hop limit 64,
/// router lifetime 1800 s, then a prefix information option for 2001:db8::/64
/// (autoconfiguration on), which would give every host a route through the
/// sender.
pub fn router_advertisement_body() -> Vec<u8> {
    let mut b = vec![64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&[
        3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x07, 0x08, 0, 0, 0, 0,
    ]);
    b.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b
}

/// A neighbour advertisement's body: override set, for `target` at `lladdr`
/// (a target link-layer address option).
pub fn neighbor_advertisement_body(target: &str, lladdr: Mac) -> Vec<u8> {
    let target: std::net::Ipv6Addr = target.parse().expect("v6");
    let mut b = vec![0x20, 0, 0, 0];
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&lladdr);
    b
}

/// A VXLAN datagram of `frame` on `vni`.
pub fn datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::VXLAN_HEADER_LEN];
    vxlan::emit(&mut d, vni);
    d.extend_from_slice(frame);
    d
}

pub fn vnet_frame(h: vnet::VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; vnet::LEN];
    h.emit(&mut out);
    out.extend_from_slice(frame);
    out
}
