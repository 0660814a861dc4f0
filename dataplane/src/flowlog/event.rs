//! One flow-log record as the dataplane writes it: fixed size and `Copy`, ids
//! rather than names (the agent resolves a zone to its network, a fwmark to
//! its service, an address to its task).

pub use crate::conntrack::EndReason;
use crate::conntrack::{Ended, Key};
use crate::counters::DropReason;
use std::net::{IpAddr, Ipv4Addr};

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
    pub fn end(e: &Ended) -> Self {
        FlowEvent {
            kind: Kind::End(e.why),
            at_ms: e.at_ms,
            key: e.entry.orig,
            nat: Some((e.entry.reply.src, e.entry.reply.sport)),
            service: e.entry.service,
            packets: e.packets,
            bytes: e.bytes,
            ..Default::default()
        }
    }
}
