//! `GET /v1/stats` (`vxmesh stats`): this agent's counters, its store, and
//! what following the store costs it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub use crate::state::validate::InvalidRow;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub node: String,
    pub advertise_addr: IpAddr,
    pub endpoint_mtu: u32,
    pub encrypted_endpoint_mtu: u32,
    /// `sqlite:PATH` or the etcd endpoints.
    pub store: String,
    /// False while it forwards on the last state it read.
    pub store_reachable: bool,
    pub follow: Follow,
    /// Stored rows left out of the state (`invalid`), counted.
    pub invalid_rows: usize,
    pub invalid: Vec<InvalidRow>,
    /// Every worker's, summed.
    #[serde(flatten)]
    pub frames: Frames,
    pub neighbor_replies: u64,
    pub flooded: u64,
    pub learned: u64,
    pub dns_answers: u64,
    pub probes_answered: u64,
    pub probe_replies: u64,
    /// Frames dropped, by reason (every reason, 0 included).
    pub drops: BTreeMap<String, u64>,
    /// Whether flow logs are on (`--flow-logs`).
    pub flow_logs: bool,
    pub flow_log_lost: u64,
    pub flow_log_sampled: u64,
    pub flow_log_drops_limited: u64,
    pub policy_audited: u64,
    pub conntrack: ConntrackCounts,
    /// Each worker's share of the frames and datagrams.
    pub workers: Vec<Frames>,
}

/// What following the store costs this agent: how many state reads and
/// reconciles it made and how long they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Follow {
    pub loads: u64,
    pub load_seconds: f64,
    pub reconciles: u64,
    pub reconcile_seconds: f64,
    pub last_reconcile_seconds: f64,
    /// Objects in the last state applied: what one reconcile walks.
    pub objects: u64,
}

/// The connection table: what it holds, and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackCounts {
    pub entries: usize,
    pub max: usize,
    /// Connections ever set up.
    pub setups: u64,
    pub evicted: u64,
    /// Times a worker waited for the table's lock.
    pub lock_waits: u64,
}

/// Frames on ports, VXLAN and WireGuard datagrams on the underlay, in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frames {
    pub port_rx: u64,
    pub port_tx: u64,
    pub underlay_rx: u64,
    pub underlay_tx: u64,
    pub tunnel_rx: u64,
    pub tunnel_tx: u64,
}
