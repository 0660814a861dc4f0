//! `GET /v1/lb[?vip=IP]`: the virtual services this node balances, as
//! `ipvsadm -Ln` shows them (and the metrics count them).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The query of `GET /v1/lb`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbQuery {
    /// Only this VIP's (or sandbox address's) rows.
    #[serde(default)]
    pub vip: Option<IpAddr>,
}

/// One virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualService {
    pub fwmark: u32,
    pub vip: IpAddr,
    pub vni: u32,
    pub scheduler: String,
    /// For the routing mesh's virtual services: the published ports that feed
    /// them here (`PUB/PROTO->TARGET`); empty for a VIP.
    pub published: Vec<String>,
    pub backends: Vec<RealServer>,
}

/// A backend of a virtual service, with its connection counts (IPVS's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServer {
    pub address: IpAddr,
    /// Always `Masq` (NAT), as ipvsadm names it.
    pub forward: String,
    pub weight: u32,
    pub healthy: bool,
    /// Taken out for a while by passive health: new connections went
    /// unanswered or were refused (see `vxmesh_dataplane::lb::passive`).
    pub ejected: bool,
    pub active: u32,
    pub inactive: u32,
}
