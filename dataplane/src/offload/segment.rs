//! TCP segmentation of a super-frame (what a NIC does for TSO), for frames a
//! container's kernel handed the TAP with `GSO_TCPV4/6`.

use crate::wire::tcp::{CWR, FIN, PSH};
use crate::wire::{checksum, ethernet, ipv4, ipv6, tcp, udp};

const ETH: usize = ethernet::HEADER_LEN;

/// Where a TCP frame's headers are (Ethernet II, then IPv4 without fragmentation
/// or IPv6 with TCP as the next header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame {
    pub v6: bool,
    pub l4_off: usize,
    pub payload_off: usize,
}

/// Where the transport header of an unfragmented IPv4 packet, or an IPv6
/// one with nothing between, of protocol `proto` starts in `frame`, and
/// whether it is IPv6.
fn l4_of(frame: &[u8], proto: ipv4::IpNumber) -> Option<(bool, usize)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    match eth.ethertype() {
        ethernet::EtherType::IPV4 => {
            let ip = ipv4::Packet::new_checked(eth.payload()).ok()?;
            (ip.next_header() == proto && !ip.is_fragment())
                .then_some((false, ETH + ip.header_len()))
        }
        ethernet::EtherType::IPV6 => {
            let ip = ipv6::Packet::new_checked(eth.payload()).ok()?;
            (ip.next_header() == proto).then_some((true, ETH + ipv6::HEADER_LEN))
        }
        _ => None,
    }
}

pub fn parse_tcp(frame: &[u8]) -> Option<TcpFrame> {
    let (v6, l4_off) = l4_of(frame, ipv4::IpNumber::TCP)?;
    let t = tcp::Packet::new_checked(&frame[l4_off..]).ok()?;
    Some(TcpFrame {
        v6,
        l4_off,
        payload_off: l4_off + t.header_len(),
    })
}

/// Sets the IP header of `out` (a frame of `len` bytes, cut from a
/// super-frame or joined into one) for its length, and for IPv4 its ID (the
/// first's plus `i`) and checksum; returns the pseudo-header sum of its
/// transport, which starts at `l4_off`.
pub(super) fn fix_ip(out: &mut [u8], v6: bool, len: usize, l4_off: usize, i: usize) -> u64 {
    if v6 {
        let mut ip = ipv6::Packet::new_unchecked(&mut out[ETH..]);
        ip.set_payload_len((len - ETH - ipv6::HEADER_LEN) as u16);
        ip.pseudo(len - l4_off)
    } else {
        let mut ip = ipv4::Packet::new_unchecked(&mut out[ETH..]);
        ip.set_total_len((len - ETH) as u16);
        ip.set_ident(ip.ident().wrapping_add(i as u16));
        ip.fill_checksum();
        ip.pseudo(len - l4_off)
    }
}

/// Number of segments `frame` makes at `mss` bytes of payload each.
pub fn count(frame: &[u8], t: &TcpFrame, mss: usize) -> usize {
    let len = frame.len().saturating_sub(t.payload_off);
    if mss == 0 {
        return 1;
    }
    len.div_ceil(mss).max(1)
}

/// Writes segment `i` of `frame` into `out` (headers copied and fixed up: IP
/// length and ID, TCP sequence, flags, both checksums) and returns its length.
pub fn write_segment(
    frame: &[u8],
    t: &TcpFrame,
    mss: usize,
    i: usize,
    out: &mut [u8],
) -> Option<usize> {
    let (hlen, chunk) = segment_payload(frame, t, mss, i)?;
    let len = hlen + chunk.len();
    let out = out.get_mut(..len)?;
    out[hlen..].copy_from_slice(chunk);
    write_headers(frame, t, mss, i, &mut out[..hlen])?;
    Some(len)
}

/// Where segment `i`'s payload lies in `frame` (it is not copied: a gathering
/// send takes it from there) and how long its headers are.
pub fn segment_payload<'f>(
    frame: &'f [u8],
    t: &TcpFrame,
    mss: usize,
    i: usize,
) -> Option<(usize, &'f [u8])> {
    let payload = frame.get(t.payload_off..)?;
    if i >= count(frame, t, mss) {
        return None;
    }
    let chunk = payload
        .get(i * mss..payload.len().min((i + 1) * mss))
        .unwrap_or(&[]);
    Some((t.payload_off, chunk))
}

/// Writes segment `i`'s headers (`t.payload_off` bytes) into `out`, fixed up
/// for its payload as [`write_segment`] would, the TCP checksum summed over
/// the payload where it lies in `frame`. For a gathering send: headers from
/// here, payload from the super-frame, and no copy of the payload in between.
pub fn write_headers(
    frame: &[u8],
    t: &TcpFrame,
    mss: usize,
    i: usize,
    out: &mut [u8],
) -> Option<()> {
    let (hlen, chunk) = segment_payload(frame, t, mss, i)?;
    let n = count(frame, t, mss);
    let out = out.get_mut(..hlen)?;
    out.copy_from_slice(&frame[..hlen]);
    let pseudo = fix_ip(out, t.v6, hlen + chunk.len(), t.l4_off, i);
    let mut tcp = tcp::Packet::new_unchecked(&mut out[t.l4_off..]);
    tcp.set_seq_number(tcp.seq_number().wrapping_add((i * mss) as u32));
    let mut flags = tcp.flags();
    if i + 1 < n {
        flags &= !(FIN | PSH); // they belong to the last segment
    }
    if i > 0 {
        flags &= !CWR; // to the first
    }
    tcp.set_flags(flags);
    tcp.set_checksum(0);
    // the TCP header is a whole number of 32-bit words, so summing the
    // payload on after it keeps every 16-bit word in place
    let sum = checksum::add(checksum::add(pseudo, &out[t.l4_off..]), chunk);
    tcp::Packet::new_unchecked(&mut out[t.l4_off..]).set_checksum(!checksum::fold(sum));
    Some(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::build;
    use etherparse::{SlicedPacket, TransportSlice};

    pub fn tcp_frame(v6: bool, seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let b = build::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = if v6 {
            b.ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            )
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        };
        let flags = if psh { tcp::ACK | PSH } else { tcp::ACK };
        let t = tcp::Repr {
            ack_number: 7,
            window: 512,
            ..build::tcp(40000, 80, seq, flags)
        };
        ip.tcp(t, payload)
    }

    fn check(seg: &[u8], v6: bool) -> (u32, Vec<u8>, bool) {
        let p = SlicedPacket::from_ethernet(seg).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not tcp")
        };
        let ok = match &p.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                assert!(!v6);
                assert_eq!(
                    h.calc_header_checksum(),
                    h.header_checksum,
                    "IPv4 header checksum"
                );
                tcp.calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                    .unwrap()
                    == tcp.checksum()
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                tcp.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                    .unwrap()
                    == tcp.checksum()
            }
            _ => panic!("no ip"),
        };
        assert!(ok, "TCP checksum");
        (tcp.sequence_number(), tcp.payload().to_vec(), tcp.psh())
    }

    #[test]
    fn super_frames_split_into_valid_segments() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
            let f = tcp_frame(v6, 1000, &payload, true);
            let t = parse_tcp(&f).unwrap();
            assert_eq!(count(&f, &t, 1400), 4);
            let mut out = vec![0u8; 2000];
            let mut joined = Vec::new();
            for i in 0..4 {
                let n = write_segment(&f, &t, 1400, i, &mut out).unwrap();
                let (seq, data, psh) = check(&out[..n], v6);
                assert_eq!(seq, 1000 + 1400 * i as u32);
                assert_eq!(psh, i == 3, "PSH only on the last");
                joined.extend(data);
            }
            assert_eq!(joined, payload);
            assert!(write_segment(&f, &t, 1400, 4, &mut out).is_none());
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), mss in 0usize..100) {
            if let Some(t) = parse_tcp(&data) {
                let mut out = vec![0u8; 400];
                for i in 0..count(&data, &t, mss).min(10) {
                    let _ = write_segment(&data, &t, mss.max(1), i, &mut out);
                }
            }
        }
    }
}

/// Where a UDP frame's headers are: the UDP header's offset, for `GSO_UDP_L4`
/// super-frames (USO), whose payload is cut into `gso_size` datagrams.
pub fn parse_udp(frame: &[u8]) -> Option<usize> {
    let (_, l4) = l4_of(frame, ipv4::IpNumber::UDP)?;
    udp::Packet::new_checked(&frame[l4..]).ok().map(|_| l4)
}

/// Writes datagram `i` of a USO super-frame into `out` (IP length and ID, UDP
/// length and checksum fixed up) and returns its length.
pub fn write_udp_segment(
    frame: &[u8],
    l4: usize,
    size: usize,
    i: usize,
    out: &mut [u8],
) -> Option<usize> {
    let payload = frame.get(l4 + udp::HEADER_LEN..)?;
    if i >= udp_count(frame, l4, size) {
        return None;
    }
    let chunk = payload
        .get(i * size..payload.len().min((i + 1) * size))
        .unwrap_or(&[]);
    let hlen = l4 + udp::HEADER_LEN;
    let len = hlen + chunk.len();
    let out = out.get_mut(..len)?;
    out[..hlen].copy_from_slice(&frame[..hlen]);
    out[hlen..].copy_from_slice(chunk);
    let v6 = ethernet::Frame::new_unchecked(&*out).ethertype() == ethernet::EtherType::IPV6;
    let pseudo = fix_ip(out, v6, len, l4, i);
    let mut u = udp::Packet::new_unchecked(&mut out[l4..]);
    u.set_len((len - l4) as u16);
    u.fill_checksum(pseudo);
    Some(len)
}

/// How many datagrams a USO super-frame makes.
pub fn udp_count(frame: &[u8], l4: usize, size: usize) -> usize {
    let len = frame.len().saturating_sub(l4 + 8);
    if size == 0 {
        return 1;
    }
    len.div_ceil(size).max(1)
}

#[cfg(test)]
mod udp_tests {
    use super::*;
    use crate::wire::build;
    use etherparse::{SlicedPacket, TransportSlice};

    #[test]
    fn uso_super_frames_split_into_valid_datagrams() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
            let b = build::eth([2; 6], [4; 6]);
            let ip = if v6 {
                b.ipv6([0xfd; 16], [0xfe; 16])
            } else {
                b.ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            };
            let f = ip.udp(4433, 443, &payload);
            let l4 = parse_udp(&f).unwrap();
            assert_eq!(udp_count(&f, l4, 1200), 3);
            let mut out = vec![0u8; 1500];
            let mut joined = Vec::new();
            for i in 0..3 {
                let n = write_udp_segment(&f, l4, 1200, i, &mut out).unwrap();
                let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
                let Some(TransportSlice::Udp(u)) = p.transport else {
                    panic!()
                };
                let ok = match &p.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        let h = ip.header().to_header();
                        assert_eq!(h.calc_header_checksum(), h.header_checksum);
                        u.to_header()
                            .calc_checksum_ipv4_raw(
                                ip.header().source(),
                                ip.header().destination(),
                                u.payload(),
                            )
                            .unwrap()
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => u
                        .to_header()
                        .calc_checksum_ipv6_raw(
                            ip.header().source(),
                            ip.header().destination(),
                            u.payload(),
                        )
                        .unwrap(),
                    _ => panic!(),
                };
                assert_eq!(ok, u.checksum());
                joined.extend_from_slice(u.payload());
            }
            assert_eq!(joined, payload);
        }
    }
}
