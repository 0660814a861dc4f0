//! The control plane's view of the switch, built off the packet path and swapped in
//! whole (arc-swap), so a worker never waits on the control plane and never sees a
//! half-applied change.

use crate::lb::scheduler::Kind;
use crate::Mac;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr};

/// A local port (TAP or veth) as the worker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// Where a MAC lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Local(PortId),
    Remote(IpAddr),
}

/// One endpoint port: which network it is on and the only addresses it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortView {
    pub vni: u32,
    pub mac: Mac,
    pub ips: Vec<IpAddr>,
}

/// One overlay network (one VNI) as this node switches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkView {
    pub vni: u32,
    /// Frames cross the underlay only inside WireGuard; plain VXLAN for it is refused.
    pub encrypted: bool,
    /// Largest IP packet an endpoint may send (0: no limit); larger ones are
    /// answered with ICMP "too big" from the gateway.
    pub mtu: u16,
    /// The MAC the agent answers for the gateway addresses.
    pub gateway_mac: Mac,
    pub gateways: Vec<IpAddr>,
    /// Every remote VTEP of this network (vxmesh nodes with endpoints on it, and
    /// static peers): BUM frames are replicated to these, and only these may send.
    pub members: Vec<IpAddr>,
    /// Members that run no vxmesh (e.g. the kernel's VXLAN): their MACs are learned.
    pub static_peers: Vec<IpAddr>,
    pub local_ports: Vec<PortId>,
    /// Every endpoint MAC the control plane knows, local or remote.
    pub macs: FxHashMap<Mac, Location>,
    /// Endpoint and gateway addresses, for ARP and neighbour-solicitation answers.
    pub neighbors: FxHashMap<IpAddr, Mac>,
    /// Service VIPs on this network and the fwmark of their virtual service.
    pub vips: FxHashMap<Ipv4Addr, u32>,
    /// Virtual services by fwmark: scheduler and backends (the tasks on this network).
    pub services: FxHashMap<u32, ServiceView>,
    /// Names the embedded DNS answers on this network (lowercase, no trailing dot).
    pub dns: FxHashMap<String, Vec<IpAddr>>,
    /// Every backend address of this network's services: only frames from these
    /// can be replies to rewrite back to a VIP, so only they pay a conntrack lookup.
    pub backend_ips: rustc_hash::FxHashSet<Ipv4Addr>,
}

/// A virtual service as one network sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub scheduler: Kind,
    /// Sorted by address, so every worker and node sees the same order.
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView {
    pub ip: Ipv4Addr,
    pub weight: u32,
    pub healthy: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchState {
    pub networks: FxHashMap<u32, NetworkView>,
    pub ports: FxHashMap<PortId, PortView>,
    /// The node's own resolvers: names the embedded DNS does not know go there.
    pub dns_upstream: Vec<std::net::SocketAddr>,
}

impl NetworkView {
    pub fn is_member(&self, vtep: &IpAddr) -> bool {
        self.members.iter().any(|m| m == vtep)
    }

    pub fn is_static_peer(&self, vtep: &IpAddr) -> bool {
        self.static_peers.iter().any(|m| m == vtep)
    }
}
