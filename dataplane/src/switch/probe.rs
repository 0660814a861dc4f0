//! The switch's side of the doctor's probes (see [`crate::wire::probe`]):
//! a request from another vxmesh node is answered in place, an answer to one
//! of this node's is handed up; nothing under the probe VNI reaches a network.
//!
//! Who may make this node send: only the other vxmesh nodes of the store, from
//! their underlay address (plain) or their tunnel address (out of WireGuard,
//! which already authenticated it). A forged source can therefore only aim an
//! answer at a node's own VXLAN port, where it is an unsolicited answer; it is
//! never larger than the request, and each worker answers at most
//! [`PROBE_RATE`] a second.

use super::{Action, Switch, SwitchState};
use crate::buf::PacketBuf;
use crate::counters::DropReason;
use crate::lb::limit::RateLimit;
use crate::wire::probe::{self, Kind, ProbeError};
use crate::wire::vxlan::VXLAN_HEADER_LEN;
use std::net::IpAddr;

/// Probes each worker answers a second, and its burst: a doctor run sends a
/// few dozen to each node, so several at once fit.
pub const PROBE_RATE: RateLimit = RateLimit {
    per_sec: 200,
    burst: 400,
};
/// Answers to this node's own probes each worker hands up a second (a doctor
/// probing many nodes at once gets many back).
pub const ANSWER_RATE: RateLimit = RateLimit {
    per_sec: 1_000,
    burst: 2_000,
};

/// An answer to one of this node's probes, for the doctor that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// The node that answered (its tunnel address when `secure`).
    pub from: IpAddr,
    /// It came through the WireGuard tunnel.
    pub secure: bool,
    pub id: u64,
    /// The responder's wall clock when it answered, Unix ms.
    pub wall_ms: u64,
    /// The datagram's length (the request's).
    pub len: usize,
}

/// A worker's probe budgets and wall clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probes {
    requests: crate::lb::limit::Bucket,
    answers: crate::lb::limit::Bucket,
    /// Unix ms at the switch's clock's zero (`now_ms` 0), as the worker last set it.
    wall_at_zero_ms: u64,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            requests: crate::lb::limit::Bucket::new(PROBE_RATE),
            answers: crate::lb::limit::Bucket::new(ANSWER_RATE),
            wall_at_zero_ms: 0,
        }
    }
}

impl Switch {
    /// Tells the switch the wall clock: Unix ms at its clock's zero. The worker
    /// sets it again now and then, so a stepped clock shows in probe answers.
    pub fn set_wall_clock(&mut self, unix_ms_at_zero: u64) {
        self.probes.wall_at_zero_ms = unix_ms_at_zero;
    }

    /// A datagram under the probe VNI from `src` (its tunnel address when `secure`).
    pub(super) fn probe<'s>(
        &mut self,
        st: &SwitchState,
        src: IpAddr,
        buf: &mut PacketBuf,
        now_ms: u64,
        secure: bool,
    ) -> Action<'s> {
        let p = match probe::parse(buf.data()) {
            Ok(p) => p,
            Err(ProbeError::NotProbe) => return self.drop(DropReason::UnknownVni),
            Err(ProbeError::Malformed) => return self.drop(DropReason::Malformed),
        };
        let nodes = if secure { &st.tunnel_nodes } else { &st.nodes };
        if !nodes.contains(&src) {
            return self.drop(DropReason::ProbeRefused);
        }
        match p.kind {
            Kind::Reply => {
                if !self.probes.answers.admit(now_ms) {
                    return self.drop(DropReason::ProbeRefused);
                }
                self.counters.probe_replies += 1;
                Action::ProbeAnswer(ProbeAnswer {
                    from: src,
                    secure,
                    id: p.id,
                    wall_ms: p.wall_ms,
                    len: buf.len(),
                })
            }
            Kind::Request => {
                if !self.probes.requests.admit(now_ms) {
                    return self.drop(DropReason::ProbeRefused);
                }
                let wall = self.probes.wall_at_zero_ms.saturating_add(now_ms);
                probe::make_reply(buf.data_mut(), wall);
                // as any frame for the underlay: the header just before it
                buf.pull_front(VXLAN_HEADER_LEN);
                self.counters.probes_answered += 1;
                Action::ProbeReply { vtep: src, secure }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::probe::{emit_request, MIN_LEN};

    fn state() -> SwitchState {
        SwitchState {
            nodes: vec!["192.0.2.2".parse().unwrap()],
            tunnel_nodes: vec!["100.64.0.2".parse().unwrap()],
            ..Default::default()
        }
    }

    fn request(id: u64, len: usize) -> PacketBuf {
        let mut d = vec![0u8; len];
        emit_request(&mut d, id).unwrap();
        let mut b = PacketBuf::new();
        b.load_datagram(&d);
        b
    }

    #[test]
    fn a_node_is_answered_in_place_with_the_wall_clock() {
        let st = state();
        let mut sw = Switch::new(16);
        sw.set_wall_clock(1_000_000);
        let mut b = request(9, 1400);
        let a = sw.from_underlay(&st, "192.0.2.2".parse().unwrap(), &mut b, 500, false);
        assert_eq!(
            a,
            Action::ProbeReply {
                vtep: "192.0.2.2".parse().unwrap(),
                secure: false
            }
        );
        assert_eq!(b.datagram().len(), 1400, "as long as the request");
        let p = probe::parse(b.datagram()).unwrap();
        assert_eq!((p.kind, p.id, p.wall_ms), (Kind::Reply, 9, 1_000_500));
        assert_eq!(sw.counters.probes_answered, 1);
        // through the tunnel, from the node's tunnel address
        let mut b = request(10, MIN_LEN);
        let a = sw.from_underlay(&st, "100.64.0.2".parse().unwrap(), &mut b, 501, true);
        assert!(
            matches!(a, Action::ProbeReply { secure: true, .. }),
            "{a:?}"
        );
        // the answer, back at the requester
        let mut back = PacketBuf::new();
        back.load_datagram(b.datagram());
        let a = sw.from_underlay(&st, "100.64.0.2".parse().unwrap(), &mut back, 502, true);
        assert_eq!(
            a,
            Action::ProbeAnswer(ProbeAnswer {
                from: "100.64.0.2".parse().unwrap(),
                secure: true,
                id: 10,
                wall_ms: 1_000_501,
                len: MIN_LEN,
            })
        );
    }

    /// Only the store's other vxmesh nodes are answered, each by the way it
    /// is known (a tunnel address only out of the tunnel), and only within the
    /// budget; the rest are counted drops.
    #[test]
    fn strangers_and_floods_are_refused_and_counted() {
        let st = state();
        let mut sw = Switch::new(16);
        for (src, secure) in [
            ("198.51.100.7", false),
            ("100.64.0.2", false),
            ("192.0.2.2", true),
        ] {
            let mut b = request(1, MIN_LEN);
            let a = sw.from_underlay(&st, src.parse().unwrap(), &mut b, 0, secure);
            assert_eq!(a, Action::Drop(DropReason::ProbeRefused), "{src} {secure}");
        }
        assert_eq!(sw.counters.dropped(DropReason::ProbeRefused), 3);
        assert_eq!(sw.counters.probes_answered, 0);
        let node: IpAddr = "192.0.2.2".parse().unwrap();
        let mut answered = 0;
        for _ in 0..1000 {
            let mut b = request(2, MIN_LEN);
            if matches!(
                sw.from_underlay(&st, node, &mut b, 10_000, false),
                Action::ProbeReply { .. }
            ) {
                answered += 1;
            }
        }
        assert_eq!(answered, PROBE_RATE.burst, "a burst, then nothing");
        assert_eq!(
            sw.counters.dropped(DropReason::ProbeRefused),
            3 + 1000 - u64::from(PROBE_RATE.burst)
        );
        // a second later, a second's worth again
        let mut b = request(3, MIN_LEN);
        let a = sw.from_underlay(&st, node, &mut b, 11_000, false);
        assert!(matches!(a, Action::ProbeReply { .. }));
    }

    #[test]
    fn malformed_probes_and_junk_under_vni_zero_are_counted_drops() {
        let st = state();
        let mut sw = Switch::new(16);
        let node: IpAddr = "192.0.2.2".parse().unwrap();
        let mut b = request(1, MIN_LEN);
        b.set_len(MIN_LEN - 3);
        assert_eq!(
            sw.from_underlay(&st, node, &mut b, 0, false),
            Action::Drop(DropReason::Malformed)
        );
        let mut junk = PacketBuf::new();
        junk.load_datagram(&crate::fuzzing::datagram(0, &[0xff; 60]));
        assert_eq!(
            sw.from_underlay(&st, node, &mut junk, 0, false),
            Action::Drop(DropReason::UnknownVni)
        );
    }
}
