//! The embedded DNS's relay: queries for names it does not hold go to the
//! node's first resolver under an id of the datapath's own (unpredictable, so
//! an off-path host cannot forge the answer), and answers come back to the
//! container that asked. Queries in flight are bounded and shared fairly
//! between ports ([`super::dns_pending`]); unanswered ones time out.

use super::dns_pending::DnsPending;
use super::*;
use crate::counters::DropReason;
use crate::offload::vnet::VnetHdr;
use crate::wire::udp_reply::{self, UdpPeer};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a forwarded query waits for its answer.
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct DnsRelay {
    /// Forwarded queries by the id we gave them: who asked and their id.
    pub(super) pending: DnsPending<(UdpPeer, u16)>,
    /// A keyed hash with a random key (SipHash under std's per-process
    /// random keys): ids are the hash of a counter, so they cannot be
    /// predicted without the key, and no clock or syscall is needed per query.
    ids: std::collections::hash_map::RandomState,
    next: u64,
}

impl DnsRelay {
    pub(super) fn new(max: usize) -> Self {
        Self {
            pending: DnsPending::new(max),
            ids: std::collections::hash_map::RandomState::new(),
            next: 0,
        }
    }

    fn random_id(&mut self) -> u16 {
        let mut h = self.ids.build_hasher();
        h.write_u64(self.next);
        self.next = self.next.wrapping_add(1);
        h.finish() as u16
    }
}

impl Core {
    /// Sends `query` (the UDP payload, rewritten in place) to the node's
    /// first resolver under an id of our own.
    pub(super) fn forward_dns(
        &mut self,
        st: &SwitchState,
        port: PortId,
        peer: UdpPeer,
        query: &mut [u8],
        now_ms: u64,
        io: &mut impl Sink,
    ) {
        let Some(up) = st.dns_upstream.first().copied() else {
            self.switch.counters.drop(DropReason::NoRoute);
            return;
        };
        if query.len() < 12 {
            self.switch.counters.drop(DropReason::Malformed);
            return;
        }
        let mut id = self.dns.random_id();
        while self.dns.pending.contains(id) {
            id = self.dns.random_id();
        }
        let orig = u16::from_be_bytes([query[0], query[1]]);
        match self.dns.pending.insert(id, port, now_ms, (peer, orig)) {
            Ok(false) => {}
            // another port's oldest query gave up its slot: lost like a busy one
            Ok(true) => self.switch.counters.drop(DropReason::DnsBusy),
            Err(_) => {
                self.switch.counters.drop(DropReason::DnsBusy);
                return;
            }
        }
        query[0..2].copy_from_slice(&id.to_be_bytes());
        if !io.send_dns(up, query) {
            self.dns.pending.remove(id);
            self.switch.counters.drop(DropReason::TxFailed);
        }
    }
}

impl Datapath {
    /// An answer from `src` (the UDP payload, rewritten in place), relayed to
    /// whoever asked: only from a configured resolver, and only for a query
    /// we sent and still wait on.
    pub fn handle_dns_rx(&mut self, src: SocketAddr, answer: &mut [u8], io: &mut impl Sink) {
        let c = &mut self.core;
        if answer.len() < 12 || !self.state.dns_upstream.contains(&src) {
            c.switch.counters.drop(DropReason::Malformed);
            return;
        }
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        let Some((port, (peer, orig))) = c.dns.pending.remove(id) else {
            return; // late or unknown: the asker has given up
        };
        answer[0..2].copy_from_slice(&orig.to_be_bytes());
        let buf = &mut self.scratch;
        match udp_reply::write(buf.frame_slot(), &peer, answer) {
            Some(len) => {
                buf.set_frame_len(len);
                c.switch.counters.dns_answers += 1;
                c.write_port(port, &VnetHdr::default(), buf.data(), io);
            }
            None => c.switch.counters.drop(DropReason::TooBig),
        }
    }
}
