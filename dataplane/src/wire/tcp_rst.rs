//! TCP resets the agent sends: to refuse a connection (a `reject` policy) and to
//! tell both ends of a tracked connection that it is gone (expiry, backend
//! removal), so neither waits on a silent blackhole.

use super::tcp::{self, ACK, RST};
use super::{ethernet, ip, ipv4, ipv6};
use crate::Mac;
use std::net::IpAddr;

const ETH: usize = ethernet::HEADER_LEN;
/// Ethernet + IPv4 or IPv6 + TCP, no options, no payload: room for either.
pub const RST_LEN: usize = ETH + ipv6::HEADER_LEN + tcp::MIN_HEADER_LEN;

/// One end of a segment: MAC, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub mac: Mac,
    pub ip: IpAddr,
    pub port: u16,
}

/// Writes a RST from `src` to `dst` into `out` (at least [`RST_LEN`] bytes) with
/// sequence number `seq` (RFC 5961: accepted only when it is exactly the
/// receiver's next expected one) and, when `ack` is given, RST|ACK. Both ends
/// must be of one family (`None` otherwise). Returns the frame's length.
pub fn write(out: &mut [u8], src: End, dst: End, seq: u32, ack: Option<u32>) -> Option<usize> {
    const TCP_LEN: usize = tcp::MIN_HEADER_LEN;
    let ip = ip::Repr::new(src.ip, dst.ip, ip::IpNumber::TCP, TCP_LEN)?;
    let len = ETH + ip.header_len() + TCP_LEN;
    let f = out.get_mut(..len)?;
    ethernet::Repr {
        src_addr: src.mac,
        dst_addr: dst.mac,
        ethertype: ip.ethertype(),
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    ip.emit(&mut f[ETH..]);
    let rst = tcp::Repr {
        src_port: src.port,
        dst_port: dst.port,
        seq_number: seq,
        ack_number: ack.unwrap_or(0),
        flags: if ack.is_some() { RST | ACK } else { RST },
        window: 0,
    };
    let at = ETH + ip.header_len();
    rst.emit(&mut tcp::Packet::new_unchecked(&mut f[at..]), ip.pseudo());
    Some(len)
}

/// Answers the TCP segment in `room[..len]` with a RST from its destination, as a
/// host with nothing listening does (RFC 9293 3.10.7.1), sent from `from_mac`.
/// `None` for a segment that is itself a RST (never answered) or not TCP (for
/// IPv6: TCP right after the fixed header).
pub fn write_refusal(room: &mut [u8], len: usize, from_mac: Mac) -> Option<usize> {
    let f = room.get(..len)?;
    let eth = ethernet::Frame::new_checked(f).ok()?;
    let l3 = eth.payload();
    // (header length, what follows it, source, destination)
    let (ip_len, payload_len, src, dst) = match eth.ethertype() {
        ethernet::EtherType::IPV4 if l3.len() >= ipv4::MIN_HEADER_LEN => {
            let ip = ipv4::Packet::new_unchecked(l3);
            if ip.next_header() != ipv4::IpNumber::TCP || ip.header_len() < ipv4::MIN_HEADER_LEN {
                return None;
            }
            (
                ip.header_len(),
                ip.total_len().saturating_sub(ip.header_len()),
                IpAddr::V4(ip.src_addr()),
                IpAddr::V4(ip.dst_addr()),
            )
        }
        ethernet::EtherType::IPV6 if l3.len() >= ipv6::HEADER_LEN => {
            let ip = ipv6::Packet::new_unchecked(l3);
            if ip.next_header() != ipv6::IpNumber::TCP {
                return None;
            }
            (
                ipv6::HEADER_LEN,
                ip.payload_len(),
                IpAddr::V6(ip.src_addr()),
                IpAddr::V6(ip.dst_addr()),
            )
        }
        _ => return None,
    };
    let t = tcp::Packet::new_unchecked(l3.get(ip_len..ip_len + tcp::MIN_HEADER_LEN)?);
    let seg = tcp::Repr::parse(&t);
    if seg.flags & RST != 0 {
        return None;
    }
    let payload = payload_len.saturating_sub(t.header_len());
    let client = End {
        mac: eth.src_addr(),
        ip: src,
        port: seg.src_port,
    };
    let us = End {
        mac: from_mac,
        ip: dst,
        port: seg.dst_port,
    };
    let (seq, ack) = if seg.flags & ACK != 0 {
        (seg.ack_number, None)
    } else {
        (0, Some(seg.seq_number.wrapping_add(seg.seq_len(payload))))
    };
    write(room, us, client, seq, ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;
    use crate::wire::tcp::SYN;
    use etherparse::{SlicedPacket, TransportSlice};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// A client's segment to port 8080 (seq 1000, window 64000).
    fn seg(flags: u8) -> tcp::Repr {
        tcp::Repr {
            ack_number: 0,
            window: 64000,
            ..build::tcp(40000, 8080, 1000, flags)
        }
    }

    fn client() -> build::Eth {
        build::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
    }

    #[test]
    fn refusal_of_a_syn_acks_it_and_checksums_verify() {
        let mut f = client()
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3])
            .tcp(seg(SYN), &[]);
        let len = f.len();
        f.resize(256, 0);
        let n = write_refusal(&mut f, len, [2, 9, 9, 9, 9, 9]).unwrap();
        let p = SlicedPacket::from_ethernet(&f[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            ip.header().to_header().calc_header_checksum(),
            ip.header().header_checksum()
        );
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not tcp")
        };
        assert!(t.rst() && t.ack() && !t.syn());
        assert_eq!((t.source_port(), t.destination_port()), (8080, 40000));
        assert_eq!(t.acknowledgment_number(), 1001);
        let c = t
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), &[])
            .unwrap();
        assert_eq!(c, t.checksum());
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &[2, 9, 9, 9, 9, 9]);
    }

    #[test]
    fn ipv6_refusal_of_a_syn_acks_it_and_checksums_verify() {
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::2".parse().unwrap(), "fd00::3".parse().unwrap());
        let mut f = client().ipv6(a, b).tcp(seg(SYN), &[]);
        let len = f.len();
        f.resize(256, 0);
        let n = write_refusal(&mut f, len, [2, 9, 9, 9, 9, 9]).unwrap();
        let p = SlicedPacket::from_ethernet(&f[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not ipv6")
        };
        assert_eq!(ip.header().source_addr(), b);
        assert_eq!(ip.header().destination_addr(), a);
        assert_eq!(ip.header().payload_length(), 20);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not tcp")
        };
        assert!(t.rst() && t.ack());
        assert_eq!(t.acknowledgment_number(), 1001);
        let c = t
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), &[])
            .unwrap();
        assert_eq!(c, t.checksum());
        let mixed = End {
            mac: [2; 6],
            ip: Ipv4Addr::LOCALHOST.into(),
            port: 1,
        };
        let v6 = End {
            ip: IpAddr::V6(a),
            ..mixed
        };
        let mut g = [0u8; RST_LEN];
        assert_eq!(write(&mut g, mixed, v6, 0, None), None, "families differ");
    }

    #[test]
    fn a_short_frame_is_no_segment_to_refuse() {
        // found in review: 24 bytes, IPv4, protocol TCP, nothing else
        let mut f = vec![0u8; 24];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[23] = 6;
        f.resize(128, 0);
        assert_eq!(write_refusal(&mut f, 24, [2; 6]), None);
        let mut g = vec![0u8; 128];
        g[12..14].copy_from_slice(&[0x08, 0x00]);
        g[14] = 0x41; // an IHL under 20 bytes
        g[23] = 6;
        assert_eq!(write_refusal(&mut g, 60, [2; 6]), None);
    }

    #[test]
    fn a_rst_is_never_answered_and_an_ack_takes_its_number() {
        let mut f = client()
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3])
            .tcp(seg(RST), &[]);
        let len = f.len();
        assert_eq!(write_refusal(&mut f, len, [2; 6]), None);
        let ack = tcp::Repr {
            ack_number: 777,
            ..seg(ACK)
        };
        let mut f = client()
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3])
            .tcp(ack, &[1, 2, 3]);
        let len = f.len();
        f.resize(256, 0);
        let n = write_refusal(&mut f, len, [2; 6]).unwrap();
        let p = SlicedPacket::from_ethernet(&f[..n]).unwrap();
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not tcp")
        };
        assert!(t.rst() && !t.ack());
        assert_eq!(t.sequence_number(), 777);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A refusal of any frame is either not due or a RST that parses.
        #[test]
        fn refusal_of_any_frame_is_a_rst(
            frame in proptest::collection::vec(any::<u8>(), 0..120),
            extra in 0usize..80,
        ) {
            let mut room = frame.clone();
            room.resize(frame.len() + extra, 0);
            if let Some(n) = write_refusal(&mut room, frame.len(), [2, 0, 0, 0, 0, 1]) {
                prop_assert!(n <= room.len());
                let s = etherparse::SlicedPacket::from_ethernet(&room[..n]).unwrap();
                match s.transport {
                    Some(etherparse::TransportSlice::Tcp(t)) => prop_assert!(t.rst()),
                    _ => prop_assert!(false, "not TCP"),
                }
            }
        }
    }
}
