//! `POST /v1/trace`: the frames a network's switch sees, answered as a pcap
//! file (`application/vnd.tcpdump.pcap`, the count in `x-vxmesh-frames`).

use serde::{Deserialize, Serialize};

/// The response header that counts the frames in the pcap file.
pub const FRAMES_HEADER: &str = "x-vxmesh-frames";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRequest {
    pub network: String,
    /// arp, icmp, icmp6, tcp, udp, "host IP" or "port N"; empty: every frame.
    #[serde(default)]
    pub filter: String,
    pub seconds: f64,
    pub count: usize,
}
