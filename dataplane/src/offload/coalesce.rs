//! GRO in userspace: consecutive in-order TCP segments of one flow, received from
//! the underlay for one port, become one super-frame and one TAP write with a
//! `virtio_net_hdr` (`GSO_TCPV4/6`), as the kernel's GRO would have made them.

use super::segment::{fix_ip, parse_tcp, TcpFrame};
use super::vnet::{self, VnetHdr};
use crate::wire::tcp::{self, ACK, PSH};
use crate::wire::{checksum, ethernet, ipv4, ipv6};

const ETH: usize = ethernet::HEADER_LEN;
/// Largest IP packet a super-frame may become.
const MAX_IP: usize = 65_535;
/// TCP flags a segment may carry and still be merged: ACK, and PSH (which then
/// ends the run). SYN, FIN, RST, URG, ECE, CWR are delivered alone.
const MERGEABLE: u8 = ACK | PSH;

pub struct Coalescer {
    buf: Vec<u8>,
    len: usize,
    t: Option<TcpFrame>,
    seg_size: usize,
    next_seq: u32,
    segments: usize,
    /// A short or PSH segment was added: nothing may follow.
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a segment may be merged at all: its IP length says exactly the frame
/// (no padding or trailing bytes would become payload) and its TCP checksum is
/// right. A merged super-frame goes up as checksum-verified, so a corrupted
/// segment must never join one: written alone, the kernel checks and drops it.
fn mergeable(f: &[u8], t: &TcpFrame) -> bool {
    let tcp_len = f.len() - t.l4_off;
    let (ip_len, pseudo) = if t.v6 {
        let ip = ipv6::Packet::new_unchecked(&f[ETH..]);
        (ipv6::HEADER_LEN + ip.payload_len(), ip.pseudo(tcp_len))
    } else {
        let ip = ipv4::Packet::new_unchecked(&f[ETH..]);
        (ip.total_len(), ip.pseudo(tcp_len))
    };
    ETH + ip_len == f.len() && tcp::Packet::new_unchecked(&f[t.l4_off..]).verify_checksum(pseudo)
}

/// The TCP flags of a frame `t` describes.
fn flags_of(f: &[u8], t: &TcpFrame) -> u8 {
    tcp::Packet::new_unchecked(&f[t.l4_off..]).flags()
}

fn seq_of(f: &[u8], t: &TcpFrame) -> u32 {
    tcp::Packet::new_unchecked(&f[t.l4_off..]).seq_number()
}

impl Coalescer {
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; ETH + MAX_IP],
            len: 0,
            t: None,
            seg_size: 0,
            next_seq: 0,
            segments: 0,
            closed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_none()
    }

    /// Appends `frame` to the pending super-frame, or starts one if none is pending.
    /// False: the frame cannot join (the caller flushes, then tries again, and if it
    /// still cannot, writes the frame on its own).
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let Some(t) = self.t else {
            return self.start(frame);
        };
        let Some(ft) = parse_tcp(frame) else {
            return false;
        };
        if !mergeable(frame, &ft) {
            return false;
        }
        let plen = frame.len() - ft.payload_off;
        let ok = !self.closed
            && ft == t
            && plen > 0
            && plen <= self.seg_size
            && self.len + plen <= ETH + MAX_IP
            && flags_of(frame, &ft) & !MERGEABLE == 0
            && seq_of(frame, &ft) == self.next_seq
            && same_headers(&self.buf[..t.payload_off], &frame[..t.payload_off], &t);
        if !ok {
            return false;
        }
        self.buf[self.len..self.len + plen].copy_from_slice(&frame[ft.payload_off..]);
        self.len += plen;
        self.next_seq = self.next_seq.wrapping_add(plen as u32);
        self.segments += 1;
        let psh = flags_of(frame, &ft) & PSH != 0;
        if psh {
            let mut head = tcp::Packet::new_unchecked(&mut self.buf[t.l4_off..]);
            head.set_flags(head.flags() | PSH);
        }
        self.closed = plen < self.seg_size || psh;
        true
    }

    fn start(&mut self, frame: &[u8]) -> bool {
        let Some(t) = parse_tcp(frame) else {
            return false;
        };
        if !mergeable(frame, &t) {
            return false;
        }
        let plen = frame.len() - t.payload_off;
        if plen == 0 || flags_of(frame, &t) & !MERGEABLE != 0 || frame.len() > self.buf.len() {
            return false;
        }
        self.buf[..frame.len()].copy_from_slice(frame);
        self.len = frame.len();
        self.t = Some(t);
        self.seg_size = plen;
        self.next_seq = seq_of(frame, &t).wrapping_add(plen as u32);
        self.segments = 1;
        self.closed = flags_of(frame, &t) & PSH != 0;
        true
    }

    /// Finishes the pending super-frame: returns its `virtio_net_hdr` and bytes,
    /// and empties the coalescer. A single segment goes out as it came.
    pub fn take(&mut self) -> Option<(VnetHdr, &[u8])> {
        let t = self.t.take()?;
        let len = self.len;
        if self.segments == 1 {
            return Some((VnetHdr::default(), &self.buf[..len]));
        }
        let f = &mut self.buf[..len];
        // the ID stays the first segment's
        let pseudo = fix_ip(f, t.v6, len, t.l4_off, 0);
        // CHECKSUM_PARTIAL convention: the field holds the pseudo-header sum and
        // the kernel finishes (or, delivering locally, trusts) the rest.
        tcp::Packet::new_unchecked(&mut f[t.l4_off..]).set_checksum(checksum::fold(pseudo));
        let h = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: if t.v6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            },
            hdr_len: t.payload_off as u16,
            gso_size: self.seg_size as u16,
            csum_start: t.l4_off as u16,
            csum_offset: 16,
        };
        Some((h, &self.buf[..len]))
    }
}

/// Same flow and nothing that would change meaning: Ethernet, addresses, ports,
/// ack, TCP options (timestamps included), and the IP fields GRO compares.
fn same_headers(a: &[u8], b: &[u8], t: &TcpFrame) -> bool {
    if a[..ETH] != b[..ETH] {
        return false;
    }
    let ip_same = if t.v6 {
        a[ETH..ETH + 4] == b[ETH..ETH + 4] && a[ETH + 6..ETH + 40] == b[ETH + 6..ETH + 40]
    } else {
        a[ETH..ETH + 2] == b[ETH..ETH + 2]
            && a[ETH + 6..ETH + 10] == b[ETH + 6..ETH + 10]
            && a[ETH + 12..t.l4_off] == b[ETH + 12..t.l4_off]
    };
    let tcp = t.l4_off;
    ip_same
        && a[tcp..tcp + 4] == b[tcp..tcp + 4]
        && a[tcp + 8..tcp + 12] == b[tcp + 8..tcp + 12]
        && a[tcp + 20..t.payload_off] == b[tcp + 20..t.payload_off]
}

#[cfg(test)]
mod tests {
    use super::super::segment::{count, tests::tcp_frame, write_segment};
    use super::*;

    #[test]
    fn segments_coalesce_back_into_the_super_frame() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
            let f = tcp_frame(v6, 5000, &payload, true);
            let t = parse_tcp(&f).unwrap();
            let mut c = Coalescer::new();
            let mut seg = vec![0u8; 2000];
            for i in 0..count(&f, &t, 1448) {
                let n = write_segment(&f, &t, 1448, i, &mut seg).unwrap();
                assert!(c.push(&seg[..n]), "segment {i} refused");
            }
            let (h, out) = c.take().unwrap();
            assert_eq!(h.gso_size, 1448);
            assert_eq!(
                h.gso_type,
                if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 }
            );
            assert_eq!(out.len(), f.len());
            assert_eq!(&out[t.payload_off..], &payload[..]);
            assert!(out[t.l4_off + 13] & 0x08 != 0, "PSH kept");
            // finishing the partial checksum gives the original frame's
            let mut done = out.to_vec();
            assert!(vnet::finish_checksum(&mut done, &h));
            assert_eq!(
                done[t.l4_off + 16..t.l4_off + 18],
                f[t.l4_off + 16..t.l4_off + 18]
            );
            if !v6 {
                assert_eq!(done[14..34], f[14..34], "IPv4 header rebuilt as it was");
            }
            assert!(c.is_empty());
        }
    }

    #[test]
    fn gaps_other_flows_and_control_segments_are_not_merged() {
        let mut c = Coalescer::new();
        assert!(c.push(&tcp_frame(false, 100, &[1; 100], false)));
        assert!(!c.push(&tcp_frame(false, 300, &[1; 100], false)), "a gap");
        assert!(
            !c.push(&tcp_frame(true, 200, &[1; 100], false)),
            "another flow"
        );
        let mut fin = tcp_frame(false, 200, &[1; 100], false);
        fin[14 + 20 + 13] |= 0x01;
        assert!(!c.push(&fin), "FIN goes alone");
        assert!(
            c.push(&tcp_frame(false, 200, &[1; 50], false)),
            "a shorter last one"
        );
        assert!(
            !c.push(&tcp_frame(false, 250, &[1; 50], false)),
            "nothing after a short one"
        );
        let (h, out) = c.take().unwrap();
        assert_eq!(h.gso_size, 100);
        assert_eq!(out.len(), 14 + 20 + 20 + 150);
        // a corrupted segment is never merged (nor padded bytes taken as payload)
        let mut bad = tcp_frame(false, 300, &[1; 100], false);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(!c.push(&bad), "a segment with a bad checksum");
        let mut padded = tcp_frame(false, 300, &[1; 100], false);
        padded.extend_from_slice(&[0; 6]);
        assert!(!c.push(&padded), "bytes past the IP length");
        // a lone segment goes out unchanged, without GSO
        assert!(c.push(&tcp_frame(false, 9, &[1; 10], false)));
        let (h, _) = c.take().unwrap();
        assert!(!h.is_gso());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any frames from the underlay, pushed as the worker pushes them: never a
        /// panic, and a super-frame taken is never bigger than an IP packet.
        #[test]
        fn any_frames_coalesce_into_bounded_super_frames(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
        ) {
            let mut c = Coalescer::new();
            for f in &frames {
                if !c.push(f) {
                    if let Some((_, s)) = c.take() {
                        prop_assert!(s.len() <= ETH + MAX_IP);
                    }
                    let _ = c.push(f);
                }
            }
            if let Some((_, s)) = c.take() {
                prop_assert!(s.len() <= ETH + MAX_IP);
            }
            prop_assert!(c.is_empty());
        }
    }
}
