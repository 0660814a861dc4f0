//! One flow-log record as the dataplane writes it: fixed size and `Copy`, ids
//! rather than names (the agent resolves a zone to its network, a fwmark to
//! its service, an address to its task).

use crate::conntrack::{Entry, Key, State};
use crate::counters::DropReason;
use std::net::{IpAddr, Ipv4Addr};

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Both sides sent FIN.
    Fin,
    /// Either side sent RST.
    Rst,
    /// Nothing seen for its state's timeout.
    Idle,
    /// Pushed out of the full table by a new connection.
    Evicted,
    /// Its backend left (removed, or taken out as unhealthy).
    BackendGone,
    /// Its 4-tuple was taken by a new connection, or it was scheduled anew.
    Replaced,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Fin => "fin",
            EndReason::Rst => "rst",
            EndReason::Idle => "idle",
            EndReason::Evicted => "evicted",
            EndReason::BackendGone => "backend_gone",
            EndReason::Replaced => "replaced",
        }
    }
}

/// What the node's policy said of a new ingress connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// No policy was asked (not ingress), or none matched.
    #[default]
    None,
    Accept,
    Drop,
    Reject,
    /// An `--audit` policy would have dropped it; it was let through.
    AuditDrop,
    /// An `--audit` policy would have rejected it; it was let through.
    AuditReject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::None => "",
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
            Verdict::AuditDrop => "audit:drop",
            Verdict::AuditReject => "audit:reject",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A connection was set up (its first packet balanced).
    Open,
    /// A connection ended; the record carries its counts.
    End(EndReason),
    /// A packet was dropped.
    Drop(DropReason),
}

/// One record. `key` is the client's view (what it sent to: a VIP, or the
/// ingress sandbox address and published port); `nat` what that was
/// translated to (the backend's address and port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: Kind,
    /// Milliseconds of the dataplane's clock (see `Dataplane::clock_start`).
    pub at_ms: u64,
    pub key: Key,
    pub nat: Option<(IpAddr, u16)>,
    /// The virtual service (fwmark); 0: none.
    pub service: u32,
    /// The deciding policy's id (0: none) and what it said.
    pub policy: u32,
    pub verdict: Verdict,
    /// Packets and bytes (IP length), from the client and from the backend.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Kept one in this many of its kind (1: every one; more when the ring
    /// was above its watermark and records were sampled).
    pub sample: u32,
}

impl Default for FlowEvent {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        FlowEvent {
            kind: Kind::Open,
            at_ms: 0,
            key: Key {
                zone: 0,
                proto: 0,
                src: any,
                dst: any,
                sport: 0,
                dport: 0,
            },
            nat: None,
            service: 0,
            policy: 0,
            verdict: Verdict::None,
            packets: [0; 2],
            bytes: [0; 2],
            sample: 1,
        }
    }
}

impl FlowEvent {
    /// The end of a tracked connection, with what it carried both ways.
    pub fn end(e: &Entry, why: EndReason, counts: ([u64; 2], [u64; 2]), now_ms: u64) -> Self {
        FlowEvent {
            kind: Kind::End(why),
            at_ms: now_ms,
            key: e.orig,
            nat: Some((e.reply.src, e.reply.sport)),
            service: e.service,
            packets: counts.0,
            bytes: counts.1,
            ..Default::default()
        }
    }
}

/// How a connection's state change ends it, if it does: the first moment both
/// sides have sent FIN, or either RST.
pub fn ended_by(before: State, after: State) -> Option<EndReason> {
    let done = |s| matches!(s, State::TimeWait | State::Close);
    if done(before) {
        return None;
    }
    match after {
        State::TimeWait => Some(EndReason::Fin),
        State::Close => Some(EndReason::Rst),
        _ => None,
    }
}

/// Whether a connection removed from the table in state `s` has had its end
/// recorded already ([`ended_by`]).
pub fn already_ended(s: State) -> bool {
    matches!(s, State::TimeWait | State::Close)
}
