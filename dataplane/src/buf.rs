//! A packet buffer with headroom, so encapsulation prepends headers in place
//! instead of copying the frame.

#![forbid(unsafe_code)]

use crate::tunnel::inner::{self, INNER_HEADER_LEN};
use crate::wire::vxlan::VXLAN_HEADER_LEN;
use std::net::Ipv4Addr;

/// Bytes before the frame taken by the VXLAN header and the tunnel's inner IPv4/UDP.
const TUNNEL_OFFSET: usize = VXLAN_HEADER_LEN + INNER_HEADER_LEN;

/// Room kept before the frame: the VXLAN header today, and later a
/// `virtio_net_hdr` or WireGuard's data header, without moving the frame.
pub const HEADROOM: usize = 128;
/// Largest frame the core handles (a 64 KiB super-frame once TSO is on).
pub const MAX_FRAME: usize = 65_535 + 14;

/// One frame and the space around it. Allocated once per driver slot and reused.
pub struct PacketBuf {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
    segmented: Option<Segmented>,
}

/// What a TSO super-frame becomes on the wire, carried beside it as the
/// kernel's skb carries `gso_size`: the core switches the super-frame once
/// (one lookup, one conntrack touch, one NAT rewrite of its headers) and the
/// driver cuts it afterwards, so MTU checks and counters need the segments'
/// sizes, not the super-frame's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    /// Bytes of headers (Ethernet to TCP) every segment repeats.
    pub hdr_len: usize,
    /// Payload bytes per segment (the last may carry fewer).
    pub mss: usize,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(),
            head: HEADROOM,
            len: 0,
            segmented: None,
        }
    }

    /// Marks the frame held as a super-frame to be cut into segments (or not).
    pub fn set_segmented(&mut self, s: Option<Segmented>) {
        self.segmented = s;
    }

    pub fn segmented(&self) -> Option<Segmented> {
        self.segmented
    }

    /// Frames the data makes on the wire: 1, or a super-frame's segment count.
    pub fn wire_frames(&self) -> u64 {
        match self.segmented {
            Some(s) if s.mss > 0 => {
                self.len.saturating_sub(s.hdr_len).div_ceil(s.mss).max(1) as u64
            }
            _ => 1,
        }
    }

    /// Bytes those frames hold together (each segment repeats the headers).
    pub fn wire_bytes(&self) -> u64 {
        let hdr = self.segmented.map_or(0, |s| s.hdr_len as u64);
        self.len as u64 + (self.wire_frames() - 1) * hdr
    }

    /// The largest frame the data makes on the wire (what an MTU applies to).
    pub fn wire_frame_max(&self) -> usize {
        match self.segmented {
            Some(s) => self.len.min(s.hdr_len + s.mss),
            None => self.len,
        }
    }

    /// Space for a driver to read an Ethernet frame into; call [`Self::set_frame_len`] after.
    pub fn frame_slot(&mut self) -> &mut [u8] {
        self.segmented = None;
        self.head = HEADROOM;
        self.len = 0;
        &mut self.buf[HEADROOM..]
    }

    /// Space for a TAP read with `IFF_VNET_HDR`: the 10-byte header lands in the
    /// headroom and the frame at the usual offset; call [`Self::set_frame_len`]
    /// with the length minus the header, then read it with [`Self::vnet_header`].
    pub fn vnet_slot(&mut self) -> &mut [u8] {
        self.segmented = None;
        self.head = HEADROOM;
        self.len = 0;
        &mut self.buf[HEADROOM - crate::offload::vnet::LEN..]
    }

    /// The `virtio_net_hdr` of the last [`Self::vnet_slot`] read (valid until the
    /// headroom is written).
    pub fn vnet_header(&self) -> &[u8] {
        &self.buf[HEADROOM - crate::offload::vnet::LEN..HEADROOM]
    }

    /// Space for a driver to read a VXLAN datagram (header + frame) into, placed so
    /// that the inner frame lands at the usual frame offset; call
    /// [`Self::set_datagram_len`] after.
    pub fn datagram_slot(&mut self) -> &mut [u8] {
        self.segmented = None;
        self.head = HEADROOM - VXLAN_HEADER_LEN;
        self.len = 0;
        &mut self.buf[HEADROOM - VXLAN_HEADER_LEN..]
    }

    pub fn set_frame_len(&mut self, len: usize) {
        self.head = HEADROOM;
        self.len = len.min(MAX_FRAME);
    }

    pub fn set_datagram_len(&mut self, len: usize) {
        self.head = HEADROOM - VXLAN_HEADER_LEN;
        self.len = len.min(MAX_FRAME + VXLAN_HEADER_LEN);
    }

    /// Copies `data` in as a frame (tests, benches, replication).
    pub fn load_frame(&mut self, data: &[u8]) {
        let n = data.len().min(MAX_FRAME);
        self.frame_slot()[..n].copy_from_slice(&data[..n]);
        self.set_frame_len(n);
    }

    /// Copies `data` in as a datagram (tests, benches).
    pub fn load_datagram(&mut self, data: &[u8]) {
        let n = data.len().min(MAX_FRAME + VXLAN_HEADER_LEN);
        self.datagram_slot()[..n].copy_from_slice(&data[..n]);
        self.set_datagram_len(n);
    }

    /// The bytes currently held: a frame, or a datagram before decapsulation.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }

    /// Everything from the frame start to the end of the buffer, for a reply that is
    /// longer than the request; follow with [`Self::set_len`].
    pub fn frame_room(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Grows the data at the front by `n` bytes and returns them.
    /// Returns `None` (never panics) when the headroom is used up.
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if self.head < n {
            return None;
        }
        self.head -= n;
        self.len += n;
        Some(&mut self.buf[self.head..self.head + n])
    }

    /// Drops `n` bytes from the front (after a header was consumed).
    pub fn pull_front(&mut self, n: usize) -> bool {
        if self.len < n {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Resizes the data in place (a reply that is longer or shorter than the request).
    pub fn set_len(&mut self, len: usize) -> bool {
        if self.head + len > self.buf.len() {
            return false;
        }
        self.len = len;
        true
    }

    /// The VXLAN datagram made of the header the core wrote just before the frame
    /// and the frame itself. Valid after an action that sends to a VTEP.
    pub fn datagram(&self) -> &[u8] {
        let start = self.head.saturating_sub(VXLAN_HEADER_LEN);
        &self.buf[start..self.head + self.len]
    }

    /// Space for decrypting a tunnel packet (inner IPv4/UDP, VXLAN, frame) so that
    /// the frame lands at the usual frame offset.
    pub fn tunnel_slot(&mut self) -> &mut [u8] {
        self.segmented = None;
        self.head = HEADROOM - TUNNEL_OFFSET;
        self.len = 0;
        &mut self.buf[HEADROOM - TUNNEL_OFFSET..]
    }

    /// After decryption: the VXLAN datagram is at `offset..offset+len` of the slot.
    pub fn set_tunnel_received(&mut self, offset: usize, len: usize) {
        self.head = HEADROOM - TUNNEL_OFFSET + offset;
        self.len = len.min(self.buf.len() - self.head);
    }

    /// Writes the tunnel's inner IPv4/UDP header before the VXLAN header (which
    /// must be written already) and returns the whole inner packet.
    pub fn tunnel_packet(&mut self, src: Ipv4Addr, dst: Ipv4Addr, flow_hash: u32) -> Option<&[u8]> {
        let start = self.head.checked_sub(TUNNEL_OFFSET)?;
        let payload = VXLAN_HEADER_LEN + self.len;
        if !inner::write(
            &mut self.buf[start..start + INNER_HEADER_LEN],
            src,
            dst,
            flow_hash,
            payload,
        ) {
            return None;
        }
        Some(&self.buf[start..self.head + self.len])
    }

    /// Puts a VXLAN header another buffer's core wrote (`h`) before this frame:
    /// a super-frame's segments go out behind the header it was switched to.
    pub fn set_vxlan_header(&mut self, h: &[u8; VXLAN_HEADER_LEN]) -> bool {
        if self.head < VXLAN_HEADER_LEN {
            return false;
        }
        self.buf[self.head - VXLAN_HEADER_LEN..self.head].copy_from_slice(h);
        true
    }

    /// Writes the VXLAN header just before the frame without moving `head`, so the
    /// same buffer serves both local delivery (frame) and remote sends (datagram).
    pub fn write_vxlan_header(&mut self, vni: u32) -> bool {
        if self.head < VXLAN_HEADER_LEN {
            return false;
        }
        let start = self.head - VXLAN_HEADER_LEN;
        crate::wire::vxlan::emit(&mut self.buf[start..self.head], vni);
        true
    }
}
