//! The 5-tuple of a frame (what conntrack keys on), and what a frame counts
//! as on the wire.

use super::*;

/// The IP packets and bytes the frame in `buf` makes on the wire (what flow
/// logs count; a super-frame's segments each have their own headers).
#[inline(always)]
pub(super) fn ip_len(buf: &PacketBuf) -> Wire {
    let packets = buf.wire_frames();
    Wire {
        packets: packets as u32,
        bytes: buf.wire_bytes().saturating_sub(packets * ETH_HDR as u64) as u32,
    }
}

/// Moves the ends the connection table recorded (under its lock, held by the
/// caller) into this worker's flow log.
#[inline(always)]
pub(super) fn take_ends(ct: &mut Conntrack, log: &mut Option<FlowLog>, c: &mut Counters) {
    if let Some(l) = log.as_mut() {
        ct.drain_log(|e| l.connection(crate::flowlog::FlowEvent::end(&e), c));
    }
}

/// What conntrack needs of a TCP segment: its flags, and where the sender's next
/// segment starts (to reset the connection with a sequence number it accepts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seg {
    pub(super) flags: u8,
    pub(super) seq_end: u32,
}

/// The 5-tuple of an IPv4 or IPv6 TCP/UDP/ICMP-echo frame, and its TCP details.
/// (Inlined: its result read back from the stack stalled the VIP path.) An IPv6
/// packet with extension headers has none (see [`untracked_reason`]).
#[inline(always)]
pub(super) fn five_tuple(frame: &[u8], zone: u32) -> Option<(Key, Seg)> {
    if frame.get(12..14)? == ETHERTYPE_IPV6 {
        return five_tuple_v6(frame, zone);
    }
    let ip = frame.get(ETH_HDR..)?;
    if frame.get(12..14)? != ETHERTYPE_IPV4 || ip.len() < 20 {
        return None;
    }
    let ihl = crate::wire::ipv4::Packet::new_unchecked(ip).header_len();
    let proto = ip[9];
    if !matches!(proto, 1 | 6 | 17) || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let l4 = ip.get(ihl..ihl + 14.min(ip.len().saturating_sub(ihl)))?;
    if l4.len() < 4 {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    l4_tuple(zone, proto, src, dst, l4, total.saturating_sub(ihl))
}

/// [`five_tuple`] of an IPv6 frame: TCP, UDP or ICMPv6 echo right after the
/// fixed header.
#[inline(always)]
pub(super) fn five_tuple_v6(frame: &[u8], zone: u32) -> Option<(Key, Seg)> {
    let ip = frame.get(ETH_HDR..ETH_HDR + 40)?;
    let proto = ip[6];
    if !matches!(proto, 6 | 17 | 58) {
        return None;
    }
    let l4 = frame.get(ETH_HDR + 40..(ETH_HDR + 54).min(frame.len()))?;
    if l4.len() < 4 {
        return None;
    }
    let addr = |o: usize| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&ip[o..o + 16]);
        IpAddr::V6(b.into())
    };
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    l4_tuple(zone, proto, addr(8), addr(24), l4, payload)
}

/// The ports (or echo identifier) and TCP details of the L4 header `l4` (its
/// first 14 bytes at most) of a packet whose L4 part is `l4_len` bytes long.
#[inline(always)]
pub(super) fn l4_tuple(
    zone: u32,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: &[u8],
    l4_len: usize,
) -> Option<(Key, Seg)> {
    if proto == 1 || proto == 58 {
        // echo: the identifier stands in for the client's port, as conntrack does
        let id = u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]);
        let (sport, dport) = match (proto, l4[0]) {
            (1, 8) | (58, 128) => (id, 0),
            (1, 0) | (58, 129) => (0, id),
            _ => return None,
        };
        let key = Key {
            zone,
            proto,
            src,
            dst,
            sport,
            dport,
        };
        return Some((key, Seg::default()));
    }
    let seg = match (proto, l4.get(4..14)) {
        (6, Some(t)) => {
            let flags = t[9];
            let payload = l4_len.saturating_sub(usize::from(t[8] >> 4) * 4) as u32;
            let used = payload + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
            Seg {
                flags,
                seq_end: u32::from_be_bytes([t[0], t[1], t[2], t[3]]).wrapping_add(used),
            }
        }
        _ => Seg::default(),
    };
    Some((
        Key {
            zone,
            proto,
            src,
            dst,
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
        },
        seg,
    ))
}

/// Why a frame the balancer would serve (one whose destination `ours`
/// accepts: a VIP, the ingress sandbox) has no 5-tuple: an IPv6 packet with
/// extension headers before its transport header (not translated, and counted
/// as such); anything else, and any frame not addressed to us (the kernel's
/// own multicast, a packet for egress), has no route here.
pub(super) fn untracked_reason(frame: &[u8], ours: impl Fn(&IpAddr) -> bool) -> DropReason {
    let to_us = egress::addresses(frame).is_some_and(|(_, d)| ours(&d));
    match frame.get(12..14) {
        Some(t) if to_us && t == ETHERTYPE_IPV6 && nat::v6_transport(frame).is_none() => {
            DropReason::Ipv6ExtensionHeader
        }
        _ => DropReason::NoRoute,
    }
}

/// An address as a number, for schedulers that hash the client (`sh`).
#[inline]
pub(super) fn addr_bits(a: IpAddr) -> u64 {
    match a {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64)
        }
    }
}
