//! Egress, outside the dataplane (DESIGN.md packet path 5; Docker's
//! `docker_gwbridge`): containers reach addresses outside every overlay
//! through their own node, masqueraded to the node's address, with the
//! kernel's help.
//!
//! The agent makes a TAP `vxm-egress` in the node's namespace. The switch
//! writes a container's packets for outside to it, addressed to the kernel's
//! side; the kernel forwards them and masquerades them (an nftables table the
//! agent owns, `inet vxmesh-egress`), and its conntrack un-NATs the replies,
//! which a route per overlay subnet (of networks with egress) sends back into
//! the TAP, via a next hop only the agent answers. So the NAT state of egress
//! connections lives in the kernel's conntrack, under its bounds and timeouts
//! (`nf_conntrack_max`, `nf_conntrack_tcp_timeout_established`...), not in the
//! agent's table.
//!
//! The routes belong to the TAP and go with it: the TAP is not persistent, so
//! a stopped agent leaves no route. The table stays across a stop (as the
//! ingress one does: while no NAT chain is left the kernel stops translating
//! established connections) and goes with `--cleanup-on-exit`.

use super::switch_state::Mtus;
use crate::firewall::{nft, FirewallError};
use crate::netlink::{sysctl, LinkChange, Netlink, NetlinkError};
use crate::state::{ingress, ipam, ClusterState};
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use vxmesh_dataplane::io::tap;
use vxmesh_dataplane::switch::{EgressLocal, EgressView, NodeGuard, Prefix};
use vxmesh_dataplane::{parse_mac, Mac, PortId};

/// The egress TAP in the agent's namespace.
pub const DEVICE: &str = "vxm-egress";
/// The kernel's address on it: a link-local /30 beside the ingress sandbox's,
/// which no overlay or underlay uses.
pub const HOST_CIDR: &str = "169.254.251.1/30";
/// The next hops the overlay subnets are routed through; the agent answers
/// them on the TAP, so the kernel keeps one neighbour entry, not one per
/// container.
pub const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 251, 2);
pub const NEXT_HOP6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
/// The nftables table (family inet: IPv4 and IPv6 in one) the agent owns.
pub const TABLE: &str = "vxmesh-egress";
/// The port id the workers know the TAP by (endpoint ports count up from 1,
/// the ingress sandbox is 0).
pub const PORT: PortId = PortId(u32::MAX - 1);

/// The TAP as the switch needs it.
#[derive(Debug, Clone, Copy)]
pub struct EgressTap {
    pub port: PortId,
    /// The kernel's side.
    pub host_mac: Mac,
    /// The agent's side: what it answers the next hops with.
    pub mac: Mac,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot create the egress TAP {DEVICE}: {0}")]
    Tap(std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Creates the egress TAP (`queues` queues, one per worker) with MTU `mtu`
/// and sets the kernel's side up: its address, IPv6 on it (for the IPv6
/// subnets' routes, without duplicate address detection, which would hold its
/// link-local address back a second), and IPv4 forwarding.
pub async fn create_tap(queues: usize, mtu: u32) -> Result<(EgressTap, Vec<OwnedFd>), EgressError> {
    let here = Netlink::here()?;
    // a TAP dies with its fds, but a crashed agent's may linger a moment
    let _ = here.delete_link(DEVICE).await;
    let fds = tap::create_queues(DEVICE, queues).map_err(EgressError::Tap)?;
    let host_mac = ipam::random_mac();
    let m = vxmesh_dataplane::mac_to_string(&host_mac);
    here.set_link(DEVICE, LinkChange::new().mac(&m).mtu(mtu))
        .await?;
    // a node with IPv6 off has neither file: IPv4 egress still works
    if std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{DEVICE}")).exists() {
        sysctl(&format!("ipv6/conf/{DEVICE}/accept_dad"), "0")?;
        sysctl(&format!("ipv6/conf/{DEVICE}/disable_ipv6"), "0")?;
    }
    sysctl("ipv4/ip_forward", "1")?;
    let cidr: IpNet = HOST_CIDR.parse().expect("HOST_CIDR is a CIDR");
    if let Err(e) = here
        .add_address(DEVICE, cidr.addr(), cidr.prefix_len(), false)
        .await
    {
        if !e.exists() {
            return Err(e.into());
        }
    }
    here.set_link(DEVICE, LinkChange::new().up()).await?;
    Ok((
        EgressTap {
            port: PORT,
            host_mac,
            mac: ipam::random_mac(),
        },
        fds,
    ))
}

/// Whether a network's endpoints may leave through their node: every network
/// but `--internal` ones and the routing mesh's own.
fn has_egress(net: &crate::state::Network) -> bool {
    !net.internal && net.name != ingress::NETWORK
}

/// The switch's view: which networks may leave, what is inside the overlays,
/// and this node's attached endpoints (`local`: endpoint id to port) that
/// replies may reach.
pub fn view(
    st: &ClusterState,
    node: &str,
    t: &EgressTap,
    local: &FxHashMap<String, PortId>,
    guard: NodeGuard,
) -> EgressView {
    let mut vnis = Vec::new();
    let mut overlays = Vec::new();
    let mut reachable = FxHashMap::default();
    for net in st.networks.values() {
        overlays.extend(net.subnets.iter().map(|s| Prefix {
            addr: s.network(),
            len: s.prefix_len(),
        }));
        if !has_egress(net) {
            continue;
        }
        vnis.push(net.vni);
        let gateway_mac = ipam::gateway_mac(net.vni);
        for ep in st.endpoints_on(&net.name).filter(|e| e.node == node) {
            let (Some(port), Some(mac)) = (local.get(&ep.id), parse_mac(&ep.mac)) else {
                continue;
            };
            for a in &ep.ips {
                reachable.insert(
                    *a,
                    EgressLocal {
                        port: *port,
                        vni: net.vni,
                        mac,
                        gateway_mac,
                    },
                );
            }
        }
    }
    vnis.sort_unstable();
    EgressView {
        port: t.port,
        host_mac: t.host_mac,
        mac: t.mac,
        next_hop: NEXT_HOP,
        next_hop6: NEXT_HOP6,
        vnis,
        overlays,
        local: reachable,
        guard,
    }
}

/// One route of an overlay subnet into the TAP, with its network's endpoint
/// MTU (so the kernel fragments, or answers "too big", for what comes back
/// larger than the containers take).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub subnet: IpNet,
    pub mtu: u32,
}

/// The routes this node needs: every subnet of every network with egress.
pub fn routes(st: &ClusterState, mtus: Mtus) -> BTreeSet<Route> {
    st.networks
        .values()
        .filter(|n| has_egress(n))
        .flat_map(|n| {
            n.subnets.iter().map(move |s| Route {
                subnet: s.trunc(),
                mtu: mtus.of(n),
            })
        })
        .collect()
}

/// The table: masquerade what leaves from the subnets of networks with egress
/// (by any interface but the TAP), and in the forward hook, let into the TAP
/// only the replies of connections made from inside (the routes would
/// otherwise let any host that routes an overlay subnet to this node reach
/// its containers) and out of it only packets from those subnets, none for a
/// node's own services; in the input hook, nothing from the TAP reaches the
/// node itself ([`super::node_guard`]).
pub fn render_table(st: &ClusterState, guard: &NodeGuard) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for s in st
        .networks
        .values()
        .filter(|n| has_egress(n))
        .flat_map(|n| n.subnets.iter())
    {
        match s {
            IpNet::V4(_) => v4.push(s.trunc().to_string()),
            IpNet::V6(_) => v6.push(s.trunc().to_string()),
        }
    }
    v4.sort();
    v6.sort();
    let mut nat = String::new();
    let mut from = String::new();
    for (family, list) in [("ip", &v4), ("ip6", &v6)] {
        if list.is_empty() {
            continue;
        }
        let set = list.join(", ");
        let _ = writeln!(
            nat,
            "    oifname != \"{DEVICE}\" {family} saddr {{ {set} }} masquerade"
        );
        let _ = writeln!(
            from,
            "    iifname \"{DEVICE}\" {family} saddr {{ {set} }} accept"
        );
    }
    let (input, guarded) = super::node_guard::nft_rules(guard, DEVICE);
    format!(
        "table inet {TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{nat}  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n{input}  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    oifname \"{DEVICE}\" ct state established,related accept\n    oifname \"{DEVICE}\" drop\n{guarded}{from}    iifname \"{DEVICE}\" drop\n  }}\n}}\n"
    )
}

/// The egress table, not written again once removed at a stop.
static OWNED: nft::Owned = nft::Owned::new();

/// Replaces the table with `table` in one transaction.
pub async fn apply_table(table: &str) -> Result<(), FirewallError> {
    OWNED
        .apply(&format!(
            "table inet {TABLE}\ndelete table inet {TABLE}\n{table}"
        ))
        .await
}

/// Removes the table and the TAP (its routes go with it): `--cleanup-on-exit`.
pub async fn remove() -> Result<(), FirewallError> {
    if let Ok(here) = Netlink::here() {
        let _ = here.delete_link(DEVICE).await;
    }
    OWNED
        .remove(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n"))
        .await
}

/// The route of `r` into the TAP.
fn tap_route(r: &Route) -> crate::netlink::Route {
    let via = match r.subnet {
        IpNet::V4(_) => IpAddr::V4(NEXT_HOP),
        IpNet::V6(_) => IpAddr::V6(NEXT_HOP6),
    };
    crate::netlink::Route {
        dst: r.subnet,
        via: Some(via),
        dev: DEVICE.to_string(),
        table: None,
        mtu: Some(r.mtu),
    }
}

/// Brings the TAP's routes from `have` to `want`; `have` ends as what is
/// there. A route is added, never replaced: a subnet the node already routes
/// elsewhere (its own LAN, say) keeps that route, and is reported.
pub async fn sync_routes(have: &mut BTreeSet<Route>, want: &BTreeSet<Route>) {
    let here = match Netlink::here() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot change the egress routes");
            return;
        }
    };
    let gone: Vec<Route> = have.difference(want).copied().collect();
    for r in gone {
        let s = r.subnet.to_string();
        match here.del_route(&tap_route(&r)).await {
            Ok(_) => tracing::info!(subnet = %s, "egress route removed"),
            Err(e) => tracing::warn!(subnet = %s, error = %e, "cannot remove an egress route"),
        }
        have.remove(&r);
    }
    let new: Vec<Route> = want.difference(have).copied().collect();
    if new.iter().any(|r| r.subnet.addr().is_ipv6()) {
        // forwarding on a node that had none: it stops taking router
        // advertisements on its other interfaces (as with Docker's IPv6)
        if let Err(e) = sysctl("ipv6/conf/all/forwarding", "1") {
            tracing::warn!(error = %e, "cannot turn on IPv6 forwarding; IPv6 egress will not work");
        }
    }
    for r in new {
        let s = r.subnet.to_string();
        match here.add_route(&tap_route(&r)).await {
            Ok(_) => {
                tracing::info!(subnet = %s, "egress route added");
                have.insert(r);
            }
            Err(e) if e.exists() => {
                tracing::error!(subnet = %s, "this node already routes the overlay subnet elsewhere: its containers' egress replies cannot come back (pick a subnet the node does not use)");
            }
            Err(e) => tracing::error!(subnet = %s, error = %e, "cannot add an egress route"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ops, EndpointSpec, NetworkSpec, Node};

    fn cluster() -> ClusterState {
        let mut st = ClusterState::default();
        for (n, a) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2")] {
            ops::upsert_node(&mut st, Node::new(n, a.parse().unwrap())).unwrap();
        }
        crate::state::ingress::ensure_network(&mut st).ok();
        for (name, subnets, internal) in [
            ("open", vec!["10.70.0.0/24", "fd70::/64"], false),
            ("closed", vec!["10.71.0.0/24"], true),
        ] {
            ops::create_network(
                &mut st,
                &NetworkSpec {
                    name: name.into(),
                    subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
                    internal,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        for (id, node, net) in [
            ("e1", "n1", "open"),
            ("e2", "n2", "open"),
            ("e3", "n1", "closed"),
        ] {
            let es = EndpointSpec {
                network: net.into(),
                netns: id.into(),
                ..Default::default()
            };
            ops::create_endpoint(&mut st, &es, node, id.into(), ipam::random_mac).unwrap();
        }
        st
    }

    #[test]
    fn only_networks_with_egress_are_masqueraded_and_routed() {
        let st = cluster();
        let t = render_table(&st, &NodeGuard::default());
        assert!(
            t.contains("oifname != \"vxm-egress\" ip saddr { 10.70.0.0/24 } masquerade"),
            "{t}"
        );
        assert!(t.contains("ip6 saddr { fd70::/64 } masquerade"), "{t}");
        assert!(!t.contains("10.71."), "internal: no egress\n{t}");
        assert!(
            !t.contains("10.255."),
            "the ingress network: no egress\n{t}"
        );
        let mtus = Mtus {
            plain: 1450,
            encrypted: 1375,
        };
        let r: Vec<String> = routes(&st, mtus)
            .iter()
            .map(|r| format!("{} {}", r.subnet, r.mtu))
            .collect();
        assert_eq!(r, ["10.70.0.0/24 1450", "fd70::/64 1450"]);
    }

    #[test]
    fn the_view_reaches_local_endpoints_of_networks_with_egress_only() {
        let st = cluster();
        let mut local = FxHashMap::default();
        local.insert("e1".to_string(), PortId(1));
        local.insert("e3".to_string(), PortId(3));
        let t = EgressTap {
            port: PORT,
            host_mac: [2, 0, 0, 0, 0, 1],
            mac: [2, 0, 0, 0, 0, 2],
        };
        let v = view(&st, "n1", &t, &local, NodeGuard::default());
        let open = &st.networks["open"];
        assert_eq!(v.vnis, vec![open.vni]);
        let e1 = &st.endpoints["e1"];
        assert_eq!(v.local.len(), e1.ips.len(), "e2 is remote, e3 internal");
        for a in &e1.ips {
            assert_eq!(v.local[a].port, PortId(1));
            assert_eq!(v.local[a].gateway_mac, ipam::gateway_mac(open.vni));
        }
        let inside = |a: &str| {
            let a: IpAddr = a.parse().unwrap();
            v.overlays.iter().any(|p| p.contains(&a))
        };
        assert!(inside("10.71.0.9") && inside("10.70.0.9") && inside("fd70::9"));
        assert!(
            inside("10.255.3.4"),
            "the ingress network is an overlay too"
        );
        assert!(!inside("192.0.2.80"));
    }
}
