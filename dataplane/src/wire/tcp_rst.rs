//! TCP resets the agent sends: to refuse a connection (a `reject` policy) and to
//! tell both ends of a tracked connection that it is gone (expiry, backend
//! removal), so neither waits on a silent blackhole.

use crate::Mac;
use etherparse::checksum::Sum16BitWords;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH: usize = 14;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;
/// Ethernet + IPv4 or IPv6 + TCP, no options, no payload: room for either.
pub const RST_LEN: usize = ETH + 40 + 20;

/// One end of a segment: MAC, address, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub mac: Mac,
    pub ip: IpAddr,
    pub port: u16,
}

fn fold(sum: Sum16BitWords) -> [u8; 2] {
    // etherparse sums native-endian words, so the result is stored native-endian too.
    sum.ones_complement().to_ne_bytes()
}

/// Writes a RST from `src` to `dst` into `out` (at least [`RST_LEN`] bytes) with
/// sequence number `seq` (RFC 5961: accepted only when it is exactly the
/// receiver's next expected one) and, when `ack` is given, RST|ACK. Both ends
/// must be of one family (`None` otherwise). Returns the frame's length.
pub fn write(out: &mut [u8], src: End, dst: End, seq: u32, ack: Option<u32>) -> Option<usize> {
    let (ip_len, pseudo) = match (src.ip, dst.ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            20,
            Sum16BitWords::new()
                .add_4bytes(s.octets())
                .add_4bytes(d.octets())
                .add_4bytes([0, 6, 0, 20]),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            40,
            Sum16BitWords::new()
                .add_16bytes(s.octets())
                .add_16bytes(d.octets())
                .add_4bytes([0, 0, 0, 20])
                .add_4bytes([0, 0, 0, 6]),
        ),
        _ => return None,
    };
    let len = ETH + ip_len + 20;
    let f = out.get_mut(..len)?;
    f[0..6].copy_from_slice(&dst.mac);
    f[6..12].copy_from_slice(&src.mac);
    match (src.ip, dst.ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            let h = &mut f[ETH..ETH + 20];
            h.copy_from_slice(&[
                0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = fold(Sum16BitWords::new().add_slice(h));
            h[10..12].copy_from_slice(&c);
        }
        (s, d) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (s, d) else {
                return None;
            };
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            let h = &mut f[ETH..ETH + 40];
            h[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
        }
    }
    let t = &mut f[ETH + ip_len..];
    t.fill(0);
    t[0..2].copy_from_slice(&src.port.to_be_bytes());
    t[2..4].copy_from_slice(&dst.port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.unwrap_or(0).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = if ack.is_some() { RST | ACK } else { RST };
    let c = fold(pseudo.add_slice(t));
    t[16..18].copy_from_slice(&c);
    Some(len)
}

/// Answers the TCP segment in `room[..len]` with a RST from its destination, as a
/// host with nothing listening does (RFC 9293 3.10.7.1), sent from `from_mac`.
/// `None` for a segment that is itself a RST (never answered) or not TCP (for
/// IPv6: TCP right after the fixed header).
pub fn write_refusal(room: &mut [u8], len: usize, from_mac: Mac) -> Option<usize> {
    let f = room.get(..len)?;
    let (ip_len, payload_len, src, dst) = match f.get(12..14)? {
        [0x08, 0x00] if f.len() >= ETH + 20 && f[ETH + 9] == 6 => {
            let ihl = usize::from(f[ETH] & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
            (
                ihl,
                total.saturating_sub(ihl),
                IpAddr::V4(Ipv4Addr::new(
                    f[ETH + 12],
                    f[ETH + 13],
                    f[ETH + 14],
                    f[ETH + 15],
                )),
                IpAddr::V4(Ipv4Addr::new(
                    f[ETH + 16],
                    f[ETH + 17],
                    f[ETH + 18],
                    f[ETH + 19],
                )),
            )
        }
        [0x86, 0xdd] if f.len() >= ETH + 40 && f[ETH + 6] == 6 => {
            let a = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&f[ETH + o..ETH + o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            (
                40,
                usize::from(u16::from_be_bytes([f[ETH + 4], f[ETH + 5]])),
                a(8),
                a(24),
            )
        }
        _ => return None,
    };
    let t = f.get(ETH + ip_len..ETH + ip_len + 20)?;
    let flags = t[13];
    if flags & RST != 0 {
        return None;
    }
    let data_off = usize::from(t[12] >> 4) * 4;
    let payload = payload_len.saturating_sub(data_off) as u32;
    let seg_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let seg_ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let client = End {
        mac: f[6..12].try_into().ok()?,
        ip: src,
        port: u16::from_be_bytes([t[0], t[1]]),
    };
    let us = End {
        mac: from_mac,
        ip: dst,
        port: u16::from_be_bytes([t[2], t[3]]),
    };
    let (seq, ack) = if flags & ACK != 0 {
        (seg_ack, None)
    } else {
        let len = payload + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
        (0, Some(seg_seq.wrapping_add(len)))
    };
    write(room, us, client, seq, ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    #[test]
    fn refusal_of_a_syn_acks_it_and_checksums_verify() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .tcp(40000, 8080, 1000, 64000)
            .syn()
            .write(&mut f, &[])
            .unwrap();
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
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(a.octets(), b.octets(), 64)
            .tcp(40000, 8080, 1000, 64000)
            .syn()
            .write(&mut f, &[])
            .unwrap();
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
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .tcp(40000, 8080, 1000, 64000)
            .rst()
            .write(&mut f, &[])
            .unwrap();
        let len = f.len();
        assert_eq!(write_refusal(&mut f, len, [2; 6]), None);
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .tcp(40000, 8080, 1000, 64000)
            .ack(777)
            .write(&mut f, &[1, 2, 3])
            .unwrap();
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
