//! The control plane's view of the switch, built off the packet path and swapped in
//! whole (arc-swap), so a worker never waits on the control plane and never sees a
//! half-applied change.

use crate::lb::scheduler::Kind;
use crate::Mac;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A local port (TAP or veth) as the worker knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl Default for PortId {
    fn default() -> Self {
        PortId(u32::MAX)
    }
}

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
    /// An `--internal` network: nothing of it leaves the overlay, DNS queries
    /// included (names the embedded DNS does not know are not forwarded to the
    /// node's resolvers, which would carry data out: CVE-2024-29018 in Docker).
    pub internal: bool,
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
    pub vips: ByFamily<u32>,
    /// Virtual services by fwmark: scheduler and backends (the tasks on this network).
    pub services: FxHashMap<u32, ServiceView>,
    /// Names the embedded DNS answers on this network (lowercase, no trailing dot).
    pub dns: FxHashMap<String, Vec<IpAddr>>,
    /// Every backend address of this network's services: only frames from these
    /// can be replies to rewrite back to a VIP, so only they pay a conntrack lookup.
    pub backend_ips: ByFamily<()>,
    /// Frames of this network to and from other nodes (the dataplane keeps one
    /// per VNI across state swaps; see [`crate::traffic`]).
    pub traffic: crate::traffic::Traffic,
}

/// A map keyed by address, one table per family: an IPv4 lookup hashes a
/// 4-byte key as it did before IPv6 came (an `IpAddr` key costs its
/// discriminant too, measured on the VIP path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByFamily<V> {
    v4: FxHashMap<Ipv4Addr, V>,
    v6: FxHashMap<Ipv6Addr, V>,
}

impl<V> Default for ByFamily<V> {
    fn default() -> Self {
        Self {
            v4: FxHashMap::default(),
            v6: FxHashMap::default(),
        }
    }
}

impl<V> ByFamily<V> {
    #[inline]
    pub fn get(&self, a: &IpAddr) -> Option<&V> {
        match a {
            IpAddr::V4(a) => self.v4.get(a),
            IpAddr::V6(a) => self.v6.get(a),
        }
    }

    #[inline]
    pub fn contains_key(&self, a: &IpAddr) -> bool {
        self.get(a).is_some()
    }

    pub fn insert(&mut self, a: IpAddr, v: V) -> Option<V> {
        match a {
            IpAddr::V4(a) => self.v4.insert(a, v),
            IpAddr::V6(a) => self.v6.insert(a, v),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, &V)> {
        self.v4
            .iter()
            .map(|(a, v)| (IpAddr::V4(*a), v))
            .chain(self.v6.iter().map(|(a, v)| (IpAddr::V6(*a), v)))
    }
}

impl ByFamily<()> {
    /// As a set of addresses.
    #[inline]
    pub fn contains(&self, a: &IpAddr) -> bool {
        self.contains_key(a)
    }
}

impl Extend<IpAddr> for ByFamily<()> {
    fn extend<T: IntoIterator<Item = IpAddr>>(&mut self, iter: T) {
        for a in iter {
            self.insert(a, ());
        }
    }
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
    /// The task's address of each family on this network: a client is sent
    /// to the one of its own family (a task without it is not picked).
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub weight: u32,
    pub healthy: bool,
    /// The task runs on this node (`mode=host` ports balance over these only).
    pub local: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchState {
    pub networks: FxHashMap<u32, NetworkView>,
    pub ports: FxHashMap<PortId, PortView>,
    /// The node's own resolvers: names the embedded DNS does not know go there.
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// The routing mesh's ingress on this node, once the agent has its sandbox.
    pub ingress: Option<IngressView>,
    /// The way out of the overlays through this node, once the agent has its TAP.
    pub egress: Option<super::EgressView>,
    /// The other vxmesh nodes' underlay addresses, and their tunnel addresses:
    /// the only sources whose doctor probes are answered (see `switch::probe`).
    pub nodes: Vec<IpAddr>,
    pub tunnel_nodes: Vec<IpAddr>,
}

impl NetworkView {
    pub fn is_member(&self, vtep: &IpAddr) -> bool {
        self.members.iter().any(|m| m == vtep)
    }

    pub fn is_static_peer(&self, vtep: &IpAddr) -> bool {
        self.static_peers.iter().any(|m| m == vtep)
    }
}

impl BackendView {
    /// The task's address of the family of `client`.
    #[inline]
    pub fn addr_for(&self, client: &IpAddr) -> Option<IpAddr> {
        match client {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }

    /// Its addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
    }
}

/// What a policy does with a new ingress connection it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyAction {
    Accept,
    /// Silently: the client times out.
    Drop,
    /// With a TCP RST or an ICMP port-unreachable: the client fails at once.
    Reject,
}

/// One per-node access rule for ingress traffic, already narrowed to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule {
    pub proto: u8,
    pub port: u16,
    /// Source network and prefix length (`None` when the rule has no `--from`:
    /// every source of either family).
    pub from: Option<(IpAddr, u8)>,
    pub action: PolicyAction,
    /// The policy's id (`vxmesh policy ls`; 0: none), for flow records.
    pub id: u32,
    /// `--audit`: weighed and logged, never applied.
    pub audit: bool,
}

impl PolicyRule {
    /// The `--from` prefix length, for "longest wins" (-1: no `--from`).
    fn prefix(&self) -> i16 {
        self.from.map_or(-1, |(_, p)| i16::from(p))
    }

    fn covers(&self, proto: u8, port: u16, src: IpAddr) -> bool {
        self.proto == proto
            && self.port == port
            && match (self.from, src) {
                (None, _) => true,
                (Some((IpAddr::V4(net), len)), IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                    u32::from(a) & mask == u32::from(net) & mask
                }
                (Some((IpAddr::V6(net), len)), IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    u128::from(a) & mask == u128::from(net) & mask
                }
                // a rule for one family says nothing of the other
                _ => false,
            }
    }
}

/// What the node's policies make of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyVerdict {
    /// What is done: the enforced rules' decision.
    pub action: PolicyAction,
    /// The id of the rule that decided it (0: no rule matched).
    pub rule: u32,
    /// What an `--audit` rule would have done instead (and its id), when
    /// audit rules, weighed as if enforced, decide otherwise.
    pub audit: Option<(PolicyAction, u32)>,
}

/// The longest `--from` prefix that covers the connection decides, so "drop all,
/// accept 10.0.0.0/8" reads as an allow-list; no rule at all accepts. Audit
/// rules are left out of what is done, and weighed with the others for what
/// would be done if they were enforced.
pub fn policy_verdict(rules: &[PolicyRule], proto: u8, port: u16, src: IpAddr) -> PolicyVerdict {
    let best = |with_audit: bool| {
        rules
            .iter()
            .filter(|r| (with_audit || !r.audit) && r.covers(proto, port, src))
            .max_by_key(|r| r.prefix())
    };
    let enforced = best(false);
    let action = enforced.map_or(PolicyAction::Accept, |r| r.action);
    let audit = if rules.iter().any(|r| r.audit) {
        best(true)
            .filter(|r| r.audit && r.action != action)
            .map(|r| (r.action, r.id))
    } else {
        None
    };
    PolicyVerdict {
        action,
        rule: enforced.map_or(0, |r| r.id),
        audit,
    }
}

/// A published port on this node: the virtual service it feeds and the tasks' port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedView {
    pub fwmark: u32,
    pub target: u16,
    /// `mode=host`: only this node's tasks serve it.
    pub host_only: bool,
}

/// This node's end of the routing mesh: the sandbox TAP the kernel DNATs published
/// ports into, and what the agent answers there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressView {
    pub port: PortId,
    /// The ingress network's VNI (its own conntrack zone).
    pub vni: u32,
    /// The kernel's side of the sandbox TAP: where replies are written to.
    pub host_mac: Mac,
    /// The address the kernel DNATs published ports to; the agent answers it.
    pub sandbox_ip: Ipv4Addr,
    /// The same for IPv6 (published ports reached over the node's IPv6
    /// addresses), when the ingress network has an IPv6 subnet.
    pub sandbox_ip6: Option<Ipv6Addr>,
    /// This node's MAC on the sandbox TAP and on the ingress network.
    pub sandbox_mac: Mac,
    /// Every node's sandbox MAC on the ingress network: frames from these carry
    /// outside clients' addresses, and the replies must go back through them.
    pub sandbox_macs: rustc_hash::FxHashSet<Mac>,
    /// `node update --ingress off` clears it: nothing is accepted.
    pub enabled: bool,
    /// (IP protocol, published port) to its virtual service.
    pub published: FxHashMap<(u8, u16), PublishedView>,
    pub policies: Vec<PolicyRule>,
    /// `--ingress-rate-limit`: new connections per client address (`None`: off).
    /// One table for the agent's life, put in every state it builds.
    pub rate_limit: Option<std::sync::Arc<crate::lb::limit::SourceLimiter>>,
}
