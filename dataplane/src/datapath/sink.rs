//! Where a [`super::Datapath`]'s transmits go: the [`Sink`] its caller
//! implements (the worker with syscalls; tests, benches and the fuzzer by
//! recording or checking), and the batches that gather datagrams for one
//! GSO send before they reach it.
//!
//! A transmit borrows the datapath's own buffers (the frame where the read
//! put it, the headers a gather wrote beside it): nothing is copied on the
//! way out, and the sink is a type parameter, so no call is dispatched
//! dynamically.

use crate::offload::gather::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};
use crate::offload::vnet::VnetHdr;
use crate::switch::PortId;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};

/// The I/O a datapath asks of its caller. Each call is one transmit; what it
/// returns (sent or not) is what the datapath counts (`port_tx`,
/// `underlay_tx`, `tunnel_tx`, or a `tx_failed` drop).
pub trait Sink {
    /// Writes `frame` to local port `port`, behind `hdr` when the port takes
    /// virtio-net headers (a coalesced super-frame's says how to cut it).
    /// False: no such port, or the write failed.
    fn write_port(&mut self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool;

    /// Sends VXLAN datagrams to `vtep`'s VXLAN port from the underlay socket
    /// `flow_hash` picks (so a flow keeps its outer source port): `data` holds
    /// them back to back, each `seg` bytes but the last (one datagram when
    /// `data` is no longer than `seg`). Returns how many left.
    fn send_underlay(&mut self, flow_hash: u32, vtep: IpAddr, data: &[u8], seg: usize) -> usize;

    /// The same for datagrams gathered from `per` parts each (`parts` holds
    /// them in order; every datagram `seg` bytes but the last): a super-frame's
    /// segments, headers beside it and payloads where the read put them.
    fn send_underlay_gather(
        &mut self,
        flow_hash: u32,
        vtep: IpAddr,
        parts: &[IoSlice<'_>],
        per: usize,
        seg: u16,
    ) -> usize;

    /// Sends WireGuard datagrams to `to` from the tunnel socket: `data` back
    /// to back, each `seg` bytes but the last. Returns how many left.
    fn send_tunnel(&mut self, to: SocketAddr, data: &[u8], seg: usize) -> usize;

    /// Sends a doctor's probe (or an answer to one) to `vtep`'s VXLAN port,
    /// whole or not at all; the error is reported to the doctor.
    fn send_probe(&mut self, vtep: IpAddr, datagram: &[u8]) -> std::io::Result<()>;

    /// Sends a DNS query to one of the node's resolvers.
    fn send_dns(&mut self, to: SocketAddr, query: &[u8]) -> bool;
}

/// A run of datagrams for one GSO send: same destination, same flow (so the
/// same source socket), all `seg` bytes but possibly the last. Its buffer is
/// allocated once and reused.
#[derive(Default)]
pub(super) struct GsoBatch {
    pub(super) buf: Vec<u8>,
    pub(super) to: Option<SocketAddr>,
    pub(super) hash: u32,
    pub(super) seg: usize,
    pub(super) count: usize,
    closed: bool,
}

impl GsoBatch {
    pub(super) fn joins(&self, to: SocketAddr, hash: u32, len: usize) -> bool {
        self.count > 0
            && self.to == Some(to)
            && self.hash == hash
            && !self.closed
            && len <= self.seg
            && self.count < GSO_MAX_SEGMENTS
            && self.buf.len() + len <= GSO_MAX_BYTES
    }

    /// Adds a datagram; the caller has flushed if it does not join.
    pub(super) fn add(&mut self, to: SocketAddr, hash: u32, d: &[u8]) {
        if self.count == 0 {
            self.to = Some(to);
            self.hash = hash;
            self.seg = d.len();
        }
        self.buf.extend_from_slice(d);
        self.count += 1;
        self.closed = d.len() < self.seg;
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.to = None;
        self.count = 0;
        self.closed = false;
    }
}
