//! TCP segmentation of a super-frame (what a NIC does for TSO), for frames a
//! container's kernel handed the TAP with `GSO_TCPV4/6`.

use super::checksum;

const ETH: usize = 14;

/// Where a TCP frame's headers are (Ethernet II, then IPv4 without fragmentation
/// or IPv6 with TCP as the next header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame {
    pub v6: bool,
    pub l4_off: usize,
    pub payload_off: usize,
}

pub fn parse_tcp(frame: &[u8]) -> Option<TcpFrame> {
    let ip = frame.get(ETH..)?;
    let (v6, l4_off) = match [frame[12], frame[13]] {
        [0x08, 0x00] => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff;
            if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 || frag != 0 {
                return None;
            }
            (false, ETH + ihl)
        }
        [0x86, 0xdd] => {
            if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != 6 {
                return None;
            }
            (true, ETH + 40)
        }
        _ => return None,
    };
    let doff = usize::from(frame.get(l4_off + 12)? >> 4) * 4;
    if doff < 20 || frame.len() < l4_off + doff {
        return None;
    }
    Some(TcpFrame {
        v6,
        l4_off,
        payload_off: l4_off + doff,
    })
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
    let len = hlen + chunk.len();
    let tcp_len = (len - t.l4_off) as u32;
    let ip = ETH;
    let pseudo = if t.v6 {
        out[ip + 4..ip + 6].copy_from_slice(&((len - ip - 40) as u16).to_be_bytes());
        checksum::pseudo(&out[ip + 8..ip + 24], &out[ip + 24..ip + 40], 6, tcp_len)
    } else {
        out[ip + 2..ip + 4].copy_from_slice(&((len - ip) as u16).to_be_bytes());
        let id = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]).wrapping_add(i as u16);
        out[ip + 4..ip + 6].copy_from_slice(&id.to_be_bytes());
        out[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&out[ip..t.l4_off]);
        out[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        checksum::pseudo(&out[ip + 12..ip + 16], &out[ip + 16..ip + 20], 6, tcp_len)
    };
    let tcp = t.l4_off;
    let seq = u32::from_be_bytes([
        frame[tcp + 4],
        frame[tcp + 5],
        frame[tcp + 6],
        frame[tcp + 7],
    ]);
    out[tcp + 4..tcp + 8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
    if i + 1 < n {
        out[tcp + 13] &= !0x09; // FIN and PSH belong to the last segment
    }
    if i > 0 {
        out[tcp + 13] &= !0x80; // CWR to the first
    }
    out[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
    // the TCP header is a whole number of 32-bit words, so summing the
    // payload on after it keeps every 16-bit word in place
    let sum = checksum::add(checksum::add(pseudo, &out[tcp..]), chunk);
    out[tcp + 16..tcp + 18].copy_from_slice(&(!checksum::fold(sum)).to_be_bytes());
    Some(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    pub fn tcp_frame(v6: bool, seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if v6 {
            b.ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
        } else {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut b = b.tcp(40000, 80, seq, 512).ack(7);
        if psh {
            b = b.psh();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
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
    let ip = frame.get(ETH..)?;
    let l4 = match [*frame.get(12)?, *frame.get(13)?] {
        [0x08, 0x00] => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff;
            if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 17 || frag != 0 {
                return None;
            }
            ETH + ihl
        }
        [0x86, 0xdd] if ip.len() >= 40 && ip[0] >> 4 == 6 && ip[6] == 17 => ETH + 40,
        _ => return None,
    };
    (frame.len() >= l4 + 8).then_some(l4)
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
    let payload = frame.get(l4 + 8..)?;
    let n = if size == 0 {
        1
    } else {
        payload.len().div_ceil(size).max(1)
    };
    if i >= n {
        return None;
    }
    let chunk = payload
        .get(i * size..payload.len().min((i + 1) * size))
        .unwrap_or(&[]);
    let hlen = l4 + 8;
    let len = hlen + chunk.len();
    let out = out.get_mut(..len)?;
    out[..hlen].copy_from_slice(&frame[..hlen]);
    out[hlen..].copy_from_slice(chunk);
    let udp_len = (len - l4) as u16;
    let v6 = frame[12] == 0x86;
    let pseudo = if v6 {
        out[ETH + 4..ETH + 6].copy_from_slice(&((len - ETH - 40) as u16).to_be_bytes());
        checksum::pseudo(
            &out[ETH + 8..ETH + 24],
            &out[ETH + 24..ETH + 40],
            17,
            u32::from(udp_len),
        )
    } else {
        out[ETH + 2..ETH + 4].copy_from_slice(&((len - ETH) as u16).to_be_bytes());
        let id = u16::from_be_bytes([frame[ETH + 4], frame[ETH + 5]]).wrapping_add(i as u16);
        out[ETH + 4..ETH + 6].copy_from_slice(&id.to_be_bytes());
        out[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&out[ETH..l4]);
        out[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        checksum::pseudo(
            &out[ETH + 12..ETH + 16],
            &out[ETH + 16..ETH + 20],
            17,
            u32::from(udp_len),
        )
    };
    out[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
    let mut c = !checksum::fold(checksum::add(pseudo, &out[l4..]));
    if c == 0 {
        c = 0xffff;
    }
    out[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
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
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    #[test]
    fn uso_super_frames_split_into_valid_datagrams() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
            let b = PacketBuilder::ethernet2([2; 6], [4; 6]);
            let b = if v6 {
                b.ipv6([0xfd; 16], [0xfe; 16], 64)
            } else {
                b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            };
            let mut f = Vec::new();
            b.udp(4433, 443).write(&mut f, &payload).unwrap();
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
