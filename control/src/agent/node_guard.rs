//! The nodes' own services, kept from containers (issue 18; DESIGN.md: a
//! container is a tenant, not a node). Egress masquerades a container to its
//! node's address, and every node takes VXLAN from a member's address as that
//! member's own, so without this one datagram from a container would put a
//! forged frame into any network its node is a member of.
//!
//! Two layers, each enough alone for what it covers:
//! - the switch ([`NodeGuard`]) refuses, before the egress TAP, the tunnel
//!   ports (VXLAN, every node's WireGuard port) to any destination and the
//!   store's and metrics' TCP ports at the nodes' and the store's addresses,
//!   counted as `node_service`;
//! - the egress table ([`nft_rules`]) refuses the same in the kernel's forward
//!   hook (after its defragmentation, so no fragment hides a port), and in its
//!   input hook everything from the TAP to the node itself, whatever address
//!   it has (published ports are DNATed before, so they are forwarded, not
//!   input); only the neighbour discovery the agent answers on the TAP, and
//!   pings (a container may see that its node is there, as egress.rs tests),
//!   get in.

use crate::state::ClusterState;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use vxmesh_dataplane::switch::{NodeGuard, ENCAP_ANYWHERE, ENCAP_AT_NODES};

/// What this agent serves, from its flags.
#[derive(Debug, Clone, Default)]
pub struct NodeServices {
    /// This node's WireGuard port (others' come from the store).
    pub wg_port: u16,
    /// The store's endpoints, host names resolved once at start (a name that
    /// does not resolve keeps its port refused at the nodes' addresses only).
    pub store: Vec<(Option<IpAddr>, u16)>,
    pub metrics: Option<SocketAddr>,
    /// Whether the switch applies the guard (off only by the test fault
    /// `VXMESH_TEST_FAULT=no-switch-guard`, to show the table's layer alone).
    pub switch_guard: bool,
}

impl NodeServices {
    pub fn new(wg_port: u16, store: &str, metrics: Option<SocketAddr>) -> Self {
        NodeServices {
            wg_port,
            store: resolved(store_endpoints(store)),
            metrics,
            switch_guard: true,
        }
    }
}

/// `endpoints` with every host name of `url` resolved (once, at start: the
/// store's addresses are refused to containers like the nodes'); a name that
/// does not resolve keeps its port refused at the nodes' addresses only.
fn resolved(endpoints: Vec<Endpoint>) -> Vec<(Option<IpAddr>, u16)> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for (host, addr, port) in endpoints {
        out.push((addr, port));
        if addr.is_some() {
            continue;
        }
        match (host.as_str(), port).to_socket_addrs() {
            Ok(found) => out.extend(found.map(|sa| (Some(sa.ip()), port))),
            Err(e) => tracing::warn!(store = %host, error = %e,
                "cannot resolve the store's host: its address is not kept from containers"),
        }
    }
    out
}

/// The store's endpoints (the store's own parse of `etcd[s]://H:P[,H:P]`);
/// nothing for SQLite, which is a file.
fn store_endpoints(url: &str) -> Vec<Endpoint> {
    let Ok(e) = crate::store::etcd::endpoints(url) else {
        return Vec::new();
    };
    e.hosts
        .into_iter()
        .zip(e.ports)
        .map(|(h, port)| {
            let h = h.trim_matches(['[', ']']).to_string();
            let addr = h.parse().ok();
            (h, addr, port)
        })
        .collect()
}

/// A store endpoint: its host as written, its address when that is one, its port.
type Endpoint = (String, Option<IpAddr>, u16);

/// This node's own addresses, every interface's (the input hook covers them
/// whatever they are; the switch counts what it sees for them).
pub fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The guard the switch applies, from the cluster's nodes and this agent's
/// services.
pub fn guard(st: &ClusterState, me: &NodeServices, own: &[IpAddr]) -> NodeGuard {
    let mut wg = BTreeSet::from([me.wg_port]);
    let mut addrs: BTreeSet<IpAddr> = own.iter().copied().collect();
    for n in st.nodes.values() {
        wg.insert(n.wg_port.unwrap_or(super::WG_PORT));
        addrs.insert(n.advertise_addr);
    }
    for net in st.networks.values() {
        addrs.extend(net.peer_vteps.iter().copied());
    }
    let mut services = BTreeSet::new();
    for (a, p) in &me.store {
        addrs.extend(*a);
        services.insert(*p);
    }
    if let Some(m) = me.metrics {
        services.insert(m.port());
        if !m.ip().is_unspecified() {
            addrs.insert(m.ip());
        }
    }
    NodeGuard {
        tunnel_ports: vec![vxmesh_dataplane::VXLAN_PORT],
        node_addrs: addrs.into_iter().collect(),
        node_udp_ports: wg.into_iter().collect(),
        service_ports: services.into_iter().collect(),
    }
}

/// The egress table's rules for `g` (see the module's doc): `input` is the
/// body of an input chain, `forward` lines for the forward chain, before what
/// it accepts.
pub fn nft_rules(g: &NodeGuard, device: &str) -> (String, String) {
    // replies to the node's own connections to its containers come back in;
    // neighbour discovery only as RFC 4861 has it (hop limit 255)
    let input = format!(
        "    iifname \"{device}\" ct state established,related accept\n    iifname \"{device}\" ip6 hoplimit 255 icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n    iifname \"{device}\" icmpv6 type echo-request accept\n    iifname \"{device}\" icmp type echo-request accept\n    iifname \"{device}\" counter drop\n"
    );
    let mut forward = String::new();
    let join = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(", ");
    let list = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let anywhere = ENCAP_ANYWHERE.map(|p| p.to_string()).join(", ");
    let _ = writeln!(
        forward,
        "    iifname \"{device}\" meta l4proto {{ {anywhere} }} counter drop"
    );
    if !g.tunnel_ports.is_empty() {
        let _ = writeln!(
            forward,
            "    iifname \"{device}\" udp dport {{ {} }} counter drop",
            list(&g.tunnel_ports)
        );
    }
    let at_nodes = ENCAP_AT_NODES.map(|p| p.to_string()).join(", ");
    for (family, v6) in [("ip", false), ("ip6", true)] {
        let set = join(
            &mut g
                .node_addrs
                .iter()
                .filter(|a| a.is_ipv6() == v6 && !a.is_loopback())
                .map(IpAddr::to_string),
        );
        if set.is_empty() {
            continue;
        }
        let to = format!("    iifname \"{device}\" {family} daddr {{ {set} }}");
        let _ = writeln!(forward, "{to} meta l4proto {{ {at_nodes} }} counter drop");
        if !g.node_udp_ports.is_empty() {
            let _ = writeln!(
                forward,
                "{to} udp dport {{ {} }} counter drop",
                list(&g.node_udp_ports)
            );
        }
        if !g.service_ports.is_empty() {
            let _ = writeln!(
                forward,
                "{to} tcp dport {{ {} }} counter drop",
                list(&g.service_ports)
            );
        }
    }
    (input, forward)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_give_their_endpoints() {
        assert!(store_endpoints("sqlite:/var/lib/vxmesh/store.db").is_empty());
        assert_eq!(
            resolved(store_endpoints("etcd://10.0.0.5:2379,[fd00::5]:2380")),
            vec![
                (Some("10.0.0.5".parse().unwrap()), 2379),
                (Some("fd00::5".parse().unwrap()), 2380)
            ]
        );
        assert_eq!(
            store_endpoints("etcds://etcd.invalid:2379"),
            vec![("etcd.invalid".to_string(), None, 2379)]
        );
    }

    #[test]
    fn a_store_named_by_host_is_resolved() {
        let got = resolved(store_endpoints("etcds://localhost:2379"));
        assert!(
            got.iter()
                .any(|(a, p)| *p == 2379 && a.is_some_and(|a| a.is_loopback())),
            "{got:?}"
        );
    }

    #[test]
    fn the_rules_refuse_tunnel_ports_anywhere_and_services_at_nodes() {
        let g = NodeGuard {
            tunnel_ports: vec![4789],
            node_addrs: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            node_udp_ports: vec![51820],
            service_ports: vec![2379],
        };
        let (input, fwd) = nft_rules(&g, "vxm-egress");
        let first = input.lines().next().unwrap_or_default();
        assert!(
            first.ends_with("ct state established,related accept"),
            "{input}"
        );
        assert!(
            input.contains("iifname \"vxm-egress\" counter drop"),
            "{input}"
        );
        for rule in [
            "iifname \"vxm-egress\" meta l4proto { 4, 41 } counter drop",
            "iifname \"vxm-egress\" udp dport { 4789 } counter drop",
            "ip daddr { 192.0.2.1 } meta l4proto { 47 } counter drop",
            "ip daddr { 192.0.2.1 } udp dport { 51820 } counter drop",
            "ip daddr { 192.0.2.1 } tcp dport { 2379 } counter drop",
            "ip6 daddr { 2001:db8::1 } tcp dport { 2379 } counter drop",
        ] {
            assert!(fwd.contains(rule), "{rule} in\n{fwd}");
        }
    }
}
