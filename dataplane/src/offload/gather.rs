//! The transmit side of a TSO super-frame after the core switched it once: its
//! segments leave as VXLAN datagrams gathered from two parts each, the outer
//! and inner headers written here into a small arena and the payload left
//! where the TAP read put it. Nothing of the payload is copied in userspace;
//! the TCP checksum over it is the one pass left (the kernel copies it once,
//! into the socket buffer). Sans-IO: the caller's closure does the send.

use super::segment::{self, TcpFrame};
use crate::wire::vxlan::VXLAN_HEADER_LEN;
use std::io::IoSlice;

/// Most datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Largest GSO send payload (an IP packet's 64 KiB less the outer headers).
pub const GSO_MAX_BYTES: usize = 65_000;
/// Room for one segment's headers: VXLAN, Ethernet, IPv4 or IPv6, TCP, each
/// at its longest.
const HDR_ROOM: usize = VXLAN_HEADER_LEN + 14 + 60 + 60;

/// One run handed to the send closure: `parts` holds `count` datagrams of two
/// parts each (headers, payload), every one `seg` bytes but the last.
pub struct Run<'a> {
    pub parts: &'a [IoSlice<'a>],
    pub count: usize,
    pub seg: u16,
}

/// The header arena, allocated once per worker.
pub struct Gather {
    hdrs: Box<[u8]>,
}

impl Default for Gather {
    fn default() -> Self {
        Self {
            hdrs: vec![0u8; GSO_MAX_SEGMENTS * HDR_ROOM].into_boxed_slice(),
        }
    }
}

impl Gather {
    /// Cuts `frame` (a TCP super-frame, `t` its layout, `mss` payload bytes a
    /// segment) into datagrams behind `vxlan`, in runs as large as one GSO send
    /// takes, and calls `send` for each run in order. Returns how many
    /// datagrams there were, or `None` (nothing sent) when the frame's headers
    /// do not fit a slot or its size does not make a GSO run: every check is
    /// made before the first run, so a run is never sent twice by a caller
    /// that falls back to cutting on `None`.
    pub fn segments(
        &mut self,
        vxlan: &[u8; VXLAN_HEADER_LEN],
        frame: &[u8],
        t: &TcpFrame,
        mss: usize,
        mut send: impl FnMut(Run<'_>),
    ) -> Option<usize> {
        let hlen = VXLAN_HEADER_LEN + t.payload_off;
        let dgram = hlen + mss;
        if mss == 0 || hlen > HDR_ROOM || dgram > GSO_MAX_BYTES || dgram > usize::from(u16::MAX) {
            return None;
        }
        let n = segment::count(frame, t, mss);
        // what write_headers and segment_payload check, once, up front
        if frame.len() < t.payload_off || t.payload_off < t.l4_off + 20 {
            return None;
        }
        let per_run = (GSO_MAX_BYTES / dgram).clamp(1, GSO_MAX_SEGMENTS);
        let mut first = 0;
        while first < n {
            let m = per_run.min(n - first);
            for k in 0..m {
                let slot = &mut self.hdrs[k * HDR_ROOM..k * HDR_ROOM + hlen];
                slot[..VXLAN_HEADER_LEN].copy_from_slice(vxlan);
                // cannot fail: the segment exists and the slot fits its headers
                let _ =
                    segment::write_headers(frame, t, mss, first + k, &mut slot[VXLAN_HEADER_LEN..]);
            }
            let mut iov = [IoSlice::new(&[]); 2 * GSO_MAX_SEGMENTS];
            for k in 0..m {
                let payload =
                    segment::segment_payload(frame, t, mss, first + k).map_or(&[][..], |(_, p)| p);
                iov[2 * k] = IoSlice::new(&self.hdrs[k * HDR_ROOM..k * HDR_ROOM + hlen]);
                iov[2 * k + 1] = IoSlice::new(payload);
            }
            send(Run {
                parts: &iov[..2 * m],
                count: m,
                seg: dgram as u16,
            });
            first += m;
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::segment::{parse_tcp, tests::tcp_frame, write_segment};

    /// What each gathered datagram is, joined: VXLAN header + the very frame
    /// [`write_segment`] makes (the copying path the gather replaces).
    #[test]
    fn gathered_datagrams_are_the_copied_segments_behind_vxlan() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
            // a super-frame larger than one run takes, so the runs split
            let frame = tcp_frame(v6, 1000, &payload[..64_000], true);
            let t = parse_tcp(&frame).unwrap();
            let mss = 1398;
            let vxlan = [0x08, 0, 0, 0, 0, 0x12, 0x34, 0];
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut runs = Vec::new();
            let n = Gather::default()
                .segments(&vxlan, &frame, &t, mss, |r| {
                    runs.push((r.count, r.seg));
                    assert_eq!(r.parts.len(), 2 * r.count);
                    for d in r.parts.chunks(2) {
                        got.push([&d[0][..], &d[1][..]].concat());
                    }
                })
                .unwrap();
            assert_eq!(n, segment::count(&frame, &t, mss));
            assert_eq!(got.len(), n);
            assert!(runs.len() >= 2, "{runs:?}");
            assert!(runs.iter().all(|(c, _)| *c <= GSO_MAX_SEGMENTS));
            let mut out = vec![0u8; 2000];
            for (i, d) in got.iter().enumerate() {
                let len = write_segment(&frame, &t, mss, i, &mut out).unwrap();
                assert_eq!(&d[..8], &vxlan);
                assert_eq!(&d[8..], &out[..len], "segment {i} (v6 {v6})");
                if i + 1 < n {
                    assert_eq!(d.len(), usize::from(runs[0].1));
                }
            }
        }
    }

    #[test]
    fn unusable_sizes_send_nothing() {
        let frame = tcp_frame(false, 1, &[1; 3000], false);
        let t = parse_tcp(&frame).unwrap();
        let vx = [0x08, 0, 0, 0, 0, 0, 1, 0];
        let mut g = Gather::default();
        assert_eq!(g.segments(&vx, &frame, &t, 0, |_| panic!("sent")), None);
        assert_eq!(
            g.segments(&vx, &frame, &t, 70_000, |_| panic!("sent")),
            None
        );
    }
}
