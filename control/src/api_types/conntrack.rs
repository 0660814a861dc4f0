//! `GET /v1/conntrack`: the connections this node tracks through VIPs.

use serde::{Deserialize, Serialize};

/// One tracked connection, its addresses as `IP:PORT` text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    /// `tcp`, `udp`, `icmp` or `other`.
    pub proto: String,
    /// The network's VNI.
    pub zone: u32,
    pub src: String,
    /// What the client addressed: the VIP (or published port).
    pub dst: String,
    pub backend: String,
    pub fwmark: u32,
    /// The connection table's state, as its Rust name (`Established`...).
    pub state: String,
}
