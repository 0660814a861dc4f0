//! Whole frames for tests, benches and the fuzzer, written through the same
//! Reprs the agent's replies are (so a test frame and a reply cannot disagree
//! on a header's layout). Each allocates its frame: this is test support,
//! compiled for the crate's tests and, for other crates, with the
//! `test-support` feature.
//!
//! ```ignore
//! let syn = build::eth(A, GW).ipv4([10, 0, 0, 2], VIP).tcp(build::tcp(40000, 80, 1, SYN), b"");
//! let dns = build::eth(A, GW).ipv6(client, gw).hop_limit(255).udp(40000, 53, &query);
//! ```

use super::{arp, checksum, ethernet, icmpv4, ipv4, ipv6, tcp, udp, vxlan};
use crate::Mac;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The start of a frame: its Ethernet addresses.
#[derive(Debug, Clone, Copy)]
pub struct Eth {
    src: Mac,
    dst: Mac,
}

/// A frame from `src` to `dst`.
pub fn eth(src: Mac, dst: Mac) -> Eth {
    Eth { src, dst }
}

/// The IP layer of a frame being built.
#[derive(Debug, Clone)]
pub struct Ip {
    eth: Eth,
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    dont_frag: bool,
    /// IPv6 extension headers: protocol number and bytes (each one's Next
    /// Header is filled in when the frame is written).
    exts: Vec<(u8, Vec<u8>)>,
}

impl Eth {
    pub fn ipv4(self, src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Ip {
        self.ip(IpAddr::V4(src.into()), IpAddr::V4(dst.into()))
    }

    pub fn ipv6(self, src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Ip {
        self.ip(IpAddr::V6(src.into()), IpAddr::V6(dst.into()))
    }

    /// An IP layer of either family (both addresses of one; panics otherwise).
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Ip {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "addresses of one family");
        Ip {
            eth: self,
            src,
            dst,
            ttl: 64,
            dont_frag: true,
            exts: Vec::new(),
        }
    }

    /// An ARP packet (Ethernet/IPv4).
    pub fn arp(self, a: arp::Repr) -> Vec<u8> {
        let mut f = self.frame(ethernet::EtherType::ARP, arp::PACKET_LEN);
        a.emit(&mut arp::Packet::new_unchecked(
            &mut f[ethernet::HEADER_LEN..],
        ));
        f
    }

    /// A frame of `ethertype` carrying `payload` as it is.
    pub fn raw(self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = self.frame(ethernet::EtherType(ethertype), payload.len());
        f[ethernet::HEADER_LEN..].copy_from_slice(payload);
        f
    }

    fn frame(self, ethertype: ethernet::EtherType, payload_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; ethernet::HEADER_LEN + payload_len];
        ethernet::Repr {
            src_addr: self.src,
            dst_addr: self.dst,
            ethertype,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
        f
    }
}

/// An ARP request from `src` (at `sip`) for `tip`, broadcast.
pub fn arp_request(src: Mac, sip: [u8; 4], tip: [u8; 4]) -> Vec<u8> {
    eth(src, [0xff; 6]).arp(arp::Repr {
        operation: arp::Operation::Request,
        sender_hw_addr: src,
        sender_proto_addr: sip.into(),
        target_hw_addr: [0; 6],
        target_proto_addr: tip.into(),
    })
}

/// A TCP header of `flags` (ACK acknowledges 1) with a window of 1000, for
/// [`Ip::tcp`]; change the fields for anything else.
pub fn tcp(src_port: u16, dst_port: u16, seq_number: u32, flags: u8) -> tcp::Repr {
    tcp::Repr {
        src_port,
        dst_port,
        seq_number,
        ack_number: if flags & tcp::ACK != 0 { 1 } else { 0 },
        flags,
        window: 1000,
    }
}

impl Ip {
    /// The TTL (IPv4) or hop limit (IPv6); 64 unless set.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// IPv4's DF flag; set unless cleared.
    pub fn dont_frag(mut self, df: bool) -> Self {
        self.dont_frag = df;
        self
    }

    /// An IPv6 extension header of protocol number `proto` before the
    /// transport one (its Next Header byte is filled in).
    pub fn ext(mut self, proto: u8, bytes: Vec<u8>) -> Self {
        self.exts.push((proto, bytes));
        self
    }

    pub fn udp(self, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let r = udp::Repr {
            src_port,
            dst_port,
            payload_len: payload.len(),
        };
        self.transport(
            ipv4::IpNumber::UDP,
            udp::HEADER_LEN,
            payload,
            |seg, pseudo| r.emit(&mut udp::Packet::new_unchecked(seg), Some(pseudo)),
        )
    }

    pub fn tcp(self, t: tcp::Repr, payload: &[u8]) -> Vec<u8> {
        self.transport(
            ipv4::IpNumber::TCP,
            tcp::MIN_HEADER_LEN,
            payload,
            |seg, pseudo| t.emit(&mut tcp::Packet::new_unchecked(seg), pseudo),
        )
    }

    /// An ICMP message (ICMPv4 or ICMPv6, by the addresses) of `data`.
    pub fn icmp(self, m: icmpv4::Repr, data: &[u8]) -> Vec<u8> {
        let proto = match self.src {
            IpAddr::V4(_) => ipv4::IpNumber::ICMP,
            IpAddr::V6(_) => ipv4::IpNumber::IPV6_ICMP,
        };
        let v4 = self.src.is_ipv4();
        self.transport(proto, icmpv4::HEADER_LEN, data, |seg, pseudo| {
            m.emit(
                &mut icmpv4::Packet::new_unchecked(seg),
                if v4 { 0 } else { pseudo },
            )
        })
    }

    /// Writes the frame: Ethernet, IP (and extension headers), then the
    /// transport header of `hlen` bytes `emit` writes over its segment
    /// (payload in place), given the pseudo-header sum.
    fn transport(
        self,
        proto: ipv4::IpNumber,
        hlen: usize,
        payload: &[u8],
        emit: impl FnOnce(&mut [u8], u64),
    ) -> Vec<u8> {
        let l4_len = hlen + payload.len();
        let exts: usize = self.exts.iter().map(|e| e.1.len()).sum();
        let (ethertype, ip_len) = match self.src {
            IpAddr::V4(_) => (ethernet::EtherType::IPV4, ipv4::MIN_HEADER_LEN),
            IpAddr::V6(_) => (ethernet::EtherType::IPV6, ipv6::HEADER_LEN + exts),
        };
        let mut f = self.eth.frame(ethertype, ip_len + l4_len);
        let ip = &mut f[ethernet::HEADER_LEN..];
        let pseudo = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let r = ipv4::Repr {
                    ttl: self.ttl,
                    dont_frag: self.dont_frag,
                    ..ipv4::Repr::new(s, d, proto, l4_len)
                };
                r.emit(&mut ipv4::Packet::new_unchecked(&mut ip[..]));
                r.pseudo()
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let first = self.exts.first().map_or(proto.0, |e| e.0);
                ipv6::Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: ipv4::IpNumber(first),
                    payload_len: exts + l4_len,
                    hop_limit: self.ttl,
                }
                .emit(&mut ipv6::Packet::new_unchecked(&mut ip[..]));
                let mut at = ipv6::HEADER_LEN;
                for (i, (_, h)) in self.exts.iter().enumerate() {
                    ip[at..at + h.len()].copy_from_slice(h);
                    ip[at] = self.exts.get(i + 1).map_or(proto.0, |e| e.0);
                    at += h.len();
                }
                checksum::pseudo_v6(s, d, proto.0, l4_len as u32)
            }
            _ => unreachable!("one family, checked in Eth::ip"),
        };
        let seg = &mut ip[ip_len..];
        seg[hlen..].copy_from_slice(payload);
        emit(seg, pseudo);
        f
    }
}

/// An 8-byte extension header holding one PadN option: a hop-by-hop or
/// destination options header for [`Ip::ext`].
pub fn ext_options() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// A Fragment header at `offset` (8-byte units) for [`Ip::ext`]; offset 0
/// without `more` is an atomic fragment.
pub fn ext_fragment(offset: u16, more: bool) -> Vec<u8> {
    let o = offset << 3 | u16::from(more);
    let mut f = vec![0, 0];
    f.extend_from_slice(&o.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x5e, 0xed]);
    f
}

/// A VXLAN datagram (the UDP payload) of `frame` on `vni`.
pub fn datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::VXLAN_HEADER_LEN + frame.len()];
    let mut p = vxlan::Packet::new_unchecked(&mut d[..]);
    vxlan::Repr { vni }.emit(&mut p);
    p.payload_mut().copy_from_slice(frame);
    d
}

/// A standard DNS query (id, one question) for `name` of type `t`.
pub fn dns_query(id: u16, name: &str, t: hickory_proto::rr::RecordType) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    use std::str::FromStr;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name).expect("a DNS name"), t));
    m.to_vec().expect("a query")
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    /// The builders write what etherparse's builder writes for the same
    /// frame, byte for byte (the tests that moved to them keep their frames).
    #[test]
    fn frames_are_etherparses_byte_for_byte() {
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut want = Vec::new();
        PacketBuilder::ethernet2(a, b)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut want, b"payload")
            .unwrap();
        let got = eth(a, b)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .udp(1000, 2000, b"payload");
        assert_eq!(got, want);
        let mut want = Vec::new();
        PacketBuilder::ethernet2(a, b)
            .ipv6([0xfd; 16], [0xfe; 16], 255)
            .tcp(40000, 80, 7, 1000)
            .syn()
            .ack(1)
            .write(&mut want, b"x")
            .unwrap();
        let got = eth(a, b)
            .ipv6([0xfd; 16], [0xfe; 16])
            .ttl(255)
            .tcp(tcp(40000, 80, 7, tcp::SYN | tcp::ACK), b"x");
        assert_eq!(got, want);
        let mut want = Vec::new();
        PacketBuilder::ethernet2(a, b)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut want, b"ping")
            .unwrap();
        let echo = icmpv4::Repr {
            msg_type: icmpv4::ECHO_REQUEST,
            code: 0,
            rest_of_header: [0, 7, 0, 1],
        };
        let got = eth(a, b)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .icmp(echo, b"ping");
        assert_eq!(got, want);
    }

    #[test]
    fn icmpv6_behind_extension_headers_checks_out() {
        let f = eth([2; 6], [0x33, 0x33, 0, 0, 0, 1])
            .ipv6([0xfe; 16], [0xff; 16])
            .ext(0, ext_options())
            .ext(44, ext_fragment(0, false))
            .icmp(
                icmpv4::Repr {
                    msg_type: 134,
                    code: 0,
                    rest_of_header: [0; 4],
                },
                &[0; 8],
            );
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Icmpv6(i)) = p.transport else {
            panic!("not icmpv6 behind the chain")
        };
        assert!(i.is_checksum_valid([0xfe; 16], [0xff; 16]));
        let d = datagram(42, &f);
        assert_eq!(vxlan::parse(&d), Ok(42));
        assert_eq!(&d[8..], &f[..]);
        let a = arp_request([2; 6], [10, 0, 0, 1], [10, 0, 0, 2]);
        assert!(etherparse::ArpPacketSlice::from_slice(&a[14..]).is_ok());
    }
}
