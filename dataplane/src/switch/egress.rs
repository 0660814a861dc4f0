//! Egress (DESIGN.md packet path 5, Docker's `docker_gwbridge` role): a
//! container reaches addresses outside every overlay through its own node.
//!
//! The agent owns one more TAP in the node's namespace (`vxm-egress`). A frame a
//! container sends to its gateway for an address outside every overlay subnet
//! is written to that TAP, addressed to the kernel's side of it; the kernel
//! routes it on and masquerades it to the node's address (an nftables table the
//! agent owns), and routes the replies (its conntrack un-NATs them) back into
//! the TAP by the overlay subnets' routes. What the kernel writes there is
//! delivered here to the local endpoint it is for, as if from the gateway.
//!
//! The switch does only the L2 part: choosing which frames may leave and
//! which may come back. Both directions are refused for `--internal` networks.

use super::{Action, PortId, Switch, SwitchState, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::buf::PacketBuf;
use crate::counters::DropReason;
use crate::switch::NetworkView;
use crate::wire::{ipv6_chain, neighbor};
use crate::Mac;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH_HDR: usize = 14;

/// An address prefix (an overlay subnet), matched without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.len.min(32)))
                    .unwrap_or(0);
                u32::from(*a) & mask == u32::from(n) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len.min(128)))
                    .unwrap_or(0);
                u128::from(*a) & mask == u128::from(n) & mask
            }
            _ => false,
        }
    }
}

/// A local endpoint that may be reached back through the egress TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressLocal {
    pub port: PortId,
    pub vni: u32,
    /// The endpoint's own MAC: replies are addressed to it.
    pub mac: Mac,
    /// Its network's gateway MAC: replies come from the gateway, as the
    /// container's default route expects.
    pub gateway_mac: Mac,
}

/// This node's way out of the overlays, once the agent has its TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressView {
    pub port: PortId,
    /// The kernel's side of the TAP: frames leaving are addressed to it.
    pub host_mac: Mac,
    /// The agent's MAC on the TAP: what it answers ARP and neighbour
    /// solicitations with, and the source of what it writes there.
    pub mac: Mac,
    /// The next hops the kernel routes the overlay subnets through (an IPv4
    /// address of the TAP's link net, an IPv6 link-local one): answered by the
    /// agent, so the kernel resolves one neighbour, not one per container.
    pub next_hop: Ipv4Addr,
    pub next_hop6: Ipv6Addr,
    /// Networks whose endpoints may leave: every network but `--internal` ones
    /// (and the routing mesh's `ingress`).
    pub vnis: Vec<u32>,
    /// Every overlay network's subnets, `--internal` ones too: what is inside
    /// them never leaves through the node (another network is not reachable
    /// through the kernel either: networks stay isolated), and nothing from
    /// inside them may come back in through the TAP.
    pub overlays: Vec<Prefix>,
    /// This node's attached endpoints on networks with egress, by address.
    pub local: FxHashMap<IpAddr, EgressLocal>,
    /// The nodes' own services, which no container reaches through egress.
    pub guard: NodeGuard,
}

/// The nodes' own services, as the egress path refuses them (DESIGN.md: a
/// container is a tenant, not a node). Egress masquerades a container to its
/// node's address, and a node takes VXLAN (and WireGuard handshakes) from a
/// member's address as that member's own: one datagram through egress would
/// put a forged frame into any network of the cluster. So VXLAN is refused to
/// every destination, as Calico refuses it from its workloads (a node cannot
/// know every address its peers answer on), and so are IP-in-IP and IPv6-in-IP
/// (a peer's fallback tunnel device would unwrap a datagram with any source);
/// WireGuard (authenticated, and used by containers towards their own servers),
/// GRE and the TCP services (the store, metrics) at the addresses known to be
/// nodes'. The kernel's table refuses the same again, after its
/// defragmentation, and everything for the node's own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeGuard {
    /// UDP ports refused to every destination: VXLAN's.
    pub tunnel_ports: Vec<u16>,
    /// Addresses of the nodes and of the store.
    pub node_addrs: Vec<IpAddr>,
    /// UDP ports refused at those addresses: every node's WireGuard port.
    pub node_udp_ports: Vec<u16>,
    /// TCP ports refused at those addresses: the store's, the metrics'.
    pub service_ports: Vec<u16>,
}

/// IP-in-IP and IPv6-in-IP: refused to every destination.
pub const ENCAP_ANYWHERE: [u8; 2] = [4, 41];
/// GRE: refused at the nodes' addresses.
pub const ENCAP_AT_NODES: [u8; 1] = [47];

impl NodeGuard {
    /// Whether the IP packet `ip` (the frame past its Ethernet header), to
    /// `dst` (its destination, which the caller has read), is for a node's
    /// service. IPv6 extension headers are walked ([`ipv6_chain`], the
    /// ND guard's walker), so none hides the port, and a chain it cannot walk
    /// is refused; a fragment other than the first carries no port and is
    /// left to the kernel, which reassembles before its own rule.
    pub fn refuses(&self, ip: &[u8], dst: IpAddr) -> bool {
        let (proto, l4) = match ip.first().map(|b| b >> 4) {
            Some(4) => {
                let Ok(h) = etherparse::Ipv4HeaderSlice::from_slice(ip) else {
                    return false;
                };
                if h.fragments_offset().value() != 0 {
                    return false;
                }
                let end = usize::from(h.total_len()).min(ip.len());
                let l4 = ip.get(h.slice().len()..end).unwrap_or_default();
                (h.protocol(), l4)
            }
            Some(6) => match ipv6_chain::walk(ip) {
                Err(_) => return true,
                Ok(u) if u.fragment == ipv6_chain::Fragment::Later => return false,
                Ok(u) => (u.proto, u.payload),
            },
            _ => return false,
        };
        let proto = proto.0;
        let at_node = || self.node_addrs.contains(&dst);
        if ENCAP_ANYWHERE.contains(&proto) || (ENCAP_AT_NODES.contains(&proto) && at_node()) {
            return true;
        }
        let Some(port) = l4.get(2..4).map(|d| u16::from_be_bytes([d[0], d[1]])) else {
            return false;
        };
        match etherparse::IpNumber(proto) {
            etherparse::IpNumber::UDP => {
                self.tunnel_ports.contains(&port)
                    || (self.node_udp_ports.contains(&port) && at_node())
            }
            etherparse::IpNumber::TCP => self.service_ports.contains(&port) && at_node(),
            _ => false,
        }
    }
}

impl EgressView {
    fn inside(&self, ip: &IpAddr) -> bool {
        self.overlays.iter().any(|p| p.contains(ip))
    }
}

/// Whether `ip` is a unicast address a router would forward (not multicast,
/// broadcast, loopback, unspecified or IPv6 link-local).
fn forwardable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_multicast() || a.is_broadcast() || a.is_loopback() || a.is_unspecified())
        }
        IpAddr::V6(a) => {
            !(a.is_multicast()
                || a.is_loopback()
                || a.is_unspecified()
                || a.segments()[0] & 0xffc0 == 0xfe80)
        }
    }
}

/// The (source, destination) addresses of an IPv4 or IPv6 frame whose header
/// the caller has checked is there.
pub(super) fn addresses(f: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match [*f.get(12)?, *f.get(13)?] {
        ETHERTYPE_IPV4 => {
            let s: [u8; 4] = f.get(26..30)?.try_into().ok()?;
            let d: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        ETHERTYPE_IPV6 => {
            let s: [u8; 16] = f.get(22..38)?.try_into().ok()?;
            let d: [u8; 16] = f.get(38..54)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

impl Switch {
    /// A container's frame to its gateway that is neither DNS nor for a VIP
    /// (already checked: its own source, not too big): when it is for an
    /// address outside every overlay, it leaves through the egress TAP, or is
    /// dropped on an `--internal` network; anything else (another network, an
    /// address a router does not forward, no egress TAP) has no route.
    pub(super) fn egress_or_no_route<'s>(
        &mut self,
        st: &'s SwitchState,
        net: &NetworkView,
        buf: &mut PacketBuf,
    ) -> Action<'s> {
        let Some(eg) = st.egress.as_ref() else {
            return self.drop(DropReason::NoRoute);
        };
        let dst = match addresses(buf.data()) {
            Some((_, dst)) if forwardable(&dst) && !eg.inside(&dst) => dst,
            _ => return self.drop(DropReason::NoRoute),
        };
        if !eg.vnis.contains(&net.vni) {
            return self.drop(DropReason::Internal);
        }
        if eg.guard.refuses(&buf.data()[ETH_HDR..], dst) {
            return self.drop(DropReason::NodeService);
        }
        let f = buf.data_mut();
        f[0..6].copy_from_slice(&eg.host_mac);
        f[6..12].copy_from_slice(&eg.mac);
        Action::Deliver(eg.port)
    }

    /// A frame the kernel wrote to the egress TAP: ARP or a neighbour
    /// solicitation for the next hop (or a local endpoint), answered; a packet
    /// for a local endpoint of a network with egress (a reply the kernel
    /// un-NATed), delivered from its gateway. Everything else is dropped.
    pub(super) fn egress_in<'s>(&mut self, eg: &'s EgressView, buf: &mut PacketBuf) -> Action<'s> {
        let frame = buf.data();
        if frame.len() < ETH_HDR {
            return self.drop(DropReason::Malformed);
        }
        match [frame[12], frame[13]] {
            ETHERTYPE_ARP => {
                return match neighbor::parse_arp(frame) {
                    Some(arp)
                        if arp.is_request
                            && (arp.target_ip == eg.next_hop
                                || eg.local.contains_key(&IpAddr::V4(arp.target_ip))) =>
                    {
                        self.answer_arp(buf, &arp, eg.mac, eg.port)
                    }
                    Some(_) => self.drop(DropReason::NoRoute),
                    None => self.drop(DropReason::Malformed),
                };
            }
            ETHERTYPE_IPV4 => {
                if etherparse::Ipv4HeaderSlice::from_slice(&frame[ETH_HDR..]).is_err() {
                    return self.drop(DropReason::Malformed);
                }
            }
            ETHERTYPE_IPV6 => {
                if etherparse::Ipv6HeaderSlice::from_slice(&frame[ETH_HDR..]).is_err() {
                    return self.drop(DropReason::Malformed);
                }
                if let Some(ns) = neighbor::parse_solicitation(frame) {
                    if ns.target != eg.next_hop6 && !eg.local.contains_key(&IpAddr::V6(ns.target)) {
                        return self.drop(DropReason::NoRoute);
                    }
                    return self
                        .answer_solicitation(buf, &ns, eg.mac, eg.port)
                        .unwrap_or_else(|| self.drop(DropReason::TooBig));
                }
            }
            _ => return self.drop(DropReason::UnsupportedEtherType),
        }
        let Some((src, dst)) = addresses(buf.data()) else {
            return self.drop(DropReason::Malformed);
        };
        // the kernel's own chatter on the link (router solicitations, MLD)
        if !forwardable(&dst) {
            return self.drop(DropReason::NoRoute);
        }
        // nothing of an overlay comes back through the kernel: a network's
        // packets reach another only through the switch, which keeps them apart
        if eg.inside(&src) {
            return self.drop(DropReason::SpoofedSourceIp);
        }
        let Some(to) = eg.local.get(&dst) else {
            return self.drop(DropReason::EgressNoEndpoint);
        };
        self.trace(to.vni, buf);
        let f = buf.data_mut();
        f[0..6].copy_from_slice(&to.mac);
        f[6..12].copy_from_slice(&to.gateway_mac);
        Action::Deliver(to.port)
    }
}
