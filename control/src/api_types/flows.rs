//! `GET /v1/flows` (`vxmesh flows`): the node's flow records, filtered; with
//! `follow=1`, one JSON record a line (NDJSON) as each comes.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Packets or bytes each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Both {
    /// From the client (the connection's originator).
    pub client: u64,
    /// From the backend (its replies).
    pub backend: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub time_unix_ms: u64,
    /// `open` (a connection set up, not ended yet), `end` (a connection,
    /// whole) or `drop` (a packet).
    pub event: String,
    pub network: String,
    /// `tcp`, `udp`, `icmp` or `icmpv6`.
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    /// What the client addressed: a VIP, or (ingress) the published port.
    pub dst: IpAddr,
    pub dport: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The backend task's endpoint id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// What the destination was translated to (DNAT): the backend's IP:PORT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    /// The id of the policy that decided (or would have, in audit mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// `forwarded`, `drop`, `reject` (refused with a RST or ICMP), or
    /// `audit:drop` / `audit:reject` (forwarded; an audit policy would not have).
    pub verdict: String,
    /// Why a packet was dropped (a drop reason of `vxmesh stats`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How a connection ended: `fin`, `rst`, `idle`, `evicted`,
    /// `backend_gone` or `replaced`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// When a connection was set up (an ended one whose set-up was seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub packets: Both,
    pub bytes: Both,
    /// 1, or N when the worker kept one record in N (its ring was filling).
    pub sample: u32,
}

/// Which records a reader wants (`vxmesh flows --network --service --verdict`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A verdict; `audit` stands for both audit verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let verdict = match self.verdict.as_deref() {
            None => true,
            Some("audit") => r.verdict.starts_with("audit:"),
            Some(v) => r.verdict == v,
        };
        verdict
            && self.network.as_ref().is_none_or(|n| *n == r.network)
            && self
                .service
                .as_ref()
                .is_none_or(|s| r.service.as_ref() == Some(s))
    }
}

/// The query of `GET /v1/flows`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    #[serde(flatten)]
    pub filter: Filter,
    /// `1`, `true` or `yes`: go on sending records as they come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<String>,
    /// The last N records (without `follow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A line of a followed stream that is not a record: a reader too slow for
/// the records is told how many it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    pub missed: u64,
}

/// A line of a followed stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FollowLine {
    Missed(Missed),
    Record(Box<FlowRecord>),
}
