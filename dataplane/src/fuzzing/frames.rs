//! Frames for seeds and tests: what a container, a node or the kernel sends,
//! each composed from [`crate::wire::build`] (one way to write a frame for the
//! tests, the benches and the fuzzer), under the names the seeds use.

use crate::offload::vnet;
use crate::wire::{build, icmpv4, tcp};
use crate::Mac;
use std::net::Ipv6Addr;

pub use build::{arp_request, datagram, ext_fragment, ext_options};

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
    build::eth(src, dst)
        .ipv4(sip, dip)
        .udp(sport, dport, payload)
}

/// The TCP header the seeds use: sequence 1000, window 65535, `flags` (SYN
/// 0x02, ACK 0x10 acknowledging 1, FIN 0x01, RST 0x04).
fn tcp_header(sport: u16, dport: u16, flags: u8) -> tcp::Repr {
    tcp::Repr {
        window: 65535,
        ..build::tcp(sport, dport, 1000, flags)
    }
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
    build::eth(src, dst)
        .ipv4(sip, dip)
        .tcp(tcp_header(sport, dport, flags), payload)
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
    build::eth(src, dst)
        .ipv6(v6(sip), v6(dip))
        .tcp(tcp_header(sport, dport, flags), payload)
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("an IPv6 address")
}

/// A standard DNS query for `name`, of type AAAA or A.
pub fn dns_query(id: u16, name: &str, aaaa: bool) -> Vec<u8> {
    use hickory_proto::rr::RecordType;
    build::dns_query(
        id,
        name,
        if aaaa {
            RecordType::AAAA
        } else {
            RecordType::A
        },
    )
}

/// A neighbour solicitation from `src` at `sip` for `target`, to its
/// solicited-node multicast group, hop limit 255.
pub fn icmpv6_solicitation(src: Mac, sip: &str, target: &str) -> Vec<u8> {
    let t = v6(target).octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut body = t.to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src);
    build::eth(src, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
        .ipv6(v6(sip), group)
        .ttl(255)
        .icmp(icmp(135), &body)
}

fn icmp(msg_type: u8) -> icmpv4::Repr {
    icmpv4::Repr {
        msg_type,
        code: 0,
        rest_of_header: [0; 4],
    }
}

/// An ICMPv6 message of type `kind` (`body`: what follows its 4-byte header)
/// from `src` at fe80::a to all-nodes, hop limit 255 as neighbour discovery
/// has it, behind the extension headers `exts` (protocol number and bytes;
/// each Next Header is filled in), with a valid checksum: what a container
/// would send to hide a router advertisement from the guard.
pub fn icmpv6_frame(src: Mac, kind: u8, body: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let (rest, data) = body.split_at(body.len().min(4));
    let mut m = icmp(kind);
    m.rest_of_header[..rest.len()].copy_from_slice(rest);
    let ip = exts.iter().fold(
        build::eth(src, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(v6("fe80::a"), v6("ff02::1"))
            .ttl(255),
        |ip, (proto, h)| ip.ext(*proto, h.clone()),
    );
    ip.icmp(m, data)
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

pub fn vnet_frame(h: vnet::VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; vnet::LEN];
    h.emit(&mut out);
    out.extend_from_slice(frame);
    out
}
