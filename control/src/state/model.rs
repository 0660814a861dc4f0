//! The objects users create, as stored (JSON, one object per key).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    /// At most one IPv4 and one IPv6 subnet.
    pub subnets: Vec<IpNet>,
    /// The first host address of each subnet, answered by the agent.
    pub gateways: Vec<IpAddr>,
    #[serde(default)]
    pub encrypted: bool,
    /// No egress beyond the overlay.
    #[serde(default)]
    pub internal: bool,
    #[serde(default = "yes")]
    pub attachable: bool,
    /// VTEPs that run no vxmesh (e.g. the Linux kernel's VXLAN) but belong to this network.
    #[serde(default)]
    pub peer_vteps: Vec<IpAddr>,
    #[serde(default)]
    pub created: u64,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub advertise_addr: IpAddr,
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default = "yes")]
    pub ingress: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Unix seconds of the agent's last start or heartbeat.
    #[serde(default)]
    pub last_seen: u64,
    /// The node's address inside WireGuard tunnels: its VTEP on encrypted networks.
    #[serde(default)]
    pub tunnel_addr: Option<std::net::Ipv4Addr>,
    /// The UDP port its WireGuard socket listens on.
    #[serde(default)]
    pub wg_port: Option<u16>,
    /// A WireGuard peer that runs no vxmesh (declared with `node add`).
    #[serde(default)]
    pub external: bool,
    /// Rotations done, and asked for (`node rotate-key`); the agent rotates while
    /// `rotate_requested > key_epoch`.
    #[serde(default)]
    pub key_epoch: u64,
    #[serde(default)]
    pub rotate_requested: u64,
    /// Its sandbox's address and MAC on the built-in `ingress` network: where
    /// other nodes send the replies of connections that came in through it.
    #[serde(default)]
    pub ingress_ip: Option<IpAddr>,
    #[serde(default)]
    pub ingress_mac: Option<String>,
}

impl Node {
    /// A vxmesh node with everything but its name and address left to defaults.
    pub fn new(name: &str, advertise_addr: IpAddr) -> Self {
        Node {
            name: name.into(),
            advertise_addr,
            public_key: None,
            ingress: true,
            labels: BTreeMap::new(),
            last_seen: 0,
            tunnel_addr: None,
            wg_port: None,
            external: false,
            key_epoch: 0,
            rotate_requested: 0,
            ingress_ip: None,
            ingress_mac: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub network: String,
    pub node: String,
    pub mac: String,
    pub ips: Vec<IpAddr>,
    /// A name under /run/netns, or a path to a namespace file.
    pub netns: String,
    pub ifname: String,
    /// The host end of a user-made veth the agent reads with AF_PACKET; none for a TAP.
    #[serde(default)]
    pub veth: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// Who made it, when not a person: `cni:CONTAINER_ID:IFNAME` for the CNI plugin,
    /// which finds its attachments by it on DEL, CHECK and GC.
    #[serde(default)]
    pub owner: Option<String>,
    /// `healthy` or `unhealthy` once its service's probe has run; unhealthy tasks
    /// leave the balancer and DNS on every node.
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub created: u64,
    /// The name DNS answers for it when its namespace's name is not one (a Docker
    /// container's name; its namespace is a path under /var/run/docker/netns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The namespace a Docker endpoint has between IPAM's RequestAddress (which
/// reserves its address) and the driver's Join (which names its sandbox): an
/// endpoint there has no interface to make.
pub const DOCKER_PENDING: &str = "docker-pending:";

impl Endpoint {
    /// Whether the endpoint waits for Docker to join it to a sandbox.
    pub fn awaiting_sandbox(&self) -> bool {
        self.netns.starts_with(DOCKER_PENDING)
    }
}

/// A port published by a service: `published` answers on every node (ingress) or
/// on the task's node (host), and goes to `target` on the tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: String,
    pub published: u16,
    pub target: u16,
    #[serde(default = "ingress_mode")]
    pub mode: String,
}

fn ingress_mode() -> String {
    "ingress".into()
}

/// A service: its tasks are the endpoints created with `--service NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub networks: Vec<String>,
    /// The virtual IP on each network (none in dnsrr mode): its IPv4 one on a
    /// network with an IPv4 subnet, else its IPv6 one.
    #[serde(default)]
    pub vips: BTreeMap<String, IpAddr>,
    /// On dual-stack networks, the IPv6 VIP beside the IPv4 one in `vips`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vips6: BTreeMap<String, IpAddr>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: String,
    /// `rr`, `wrr`, `lc`, `sh` or `maglev`.
    pub scheduler: String,
    /// `tcp:PORT` or `http:PORT/PATH`.
    #[serde(default)]
    pub health: Option<String>,
    #[serde(default)]
    pub health_interval_ms: Option<u64>,
    /// The firewall mark that keys its virtual service, as in IPVS.
    pub fwmark: u32,
    #[serde(default)]
    pub created: u64,
}

impl Service {
    /// Its VIPs on `network`, IPv4 first.
    pub fn vips_on<'a>(&'a self, network: &str) -> impl Iterator<Item = IpAddr> + 'a {
        self.vips
            .get(network)
            .into_iter()
            .chain(self.vips6.get(network))
            .copied()
    }

    /// Every VIP on every network.
    pub fn all_vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vips.values().chain(self.vips6.values()).copied()
    }
}

/// Everything the store holds. Small (hundreds to thousands of objects), so agents
/// reload it whole on each change and diff locally.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub networks: BTreeMap<String, Network>,
    pub nodes: BTreeMap<String, Node>,
    pub endpoints: BTreeMap<String, Endpoint>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
}

/// A per-node access rule for ingress traffic, checked on that node before
/// balancing (`vxmesh policy add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub id: String,
    pub node: String,
    /// `tcp` or `udp`.
    pub proto: String,
    pub port: u16,
    /// Sources it applies to; none: every source.
    #[serde(default)]
    pub from: Option<IpNet>,
    /// `accept`, `drop` or `reject`.
    pub action: String,
    /// `--audit`: the switch weighs it and logs what it would do (flow
    /// records `audit:drop`, `audit:reject`), and does not do it. Rows
    /// written before it existed load as enforced.
    #[serde(default)]
    pub audit: bool,
    #[serde(default)]
    pub created: u64,
}

impl ClusterState {
    pub fn endpoints_on<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Endpoint> {
        self.endpoints
            .values()
            .filter(move |e| e.network == network)
    }
}

/// Milliseconds since the Unix epoch, for heartbeats.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for `created` and `last_seen`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
