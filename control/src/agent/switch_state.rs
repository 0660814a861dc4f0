//! Turns the desired state into the switch's view of it, for one node.

use crate::agent::ingress::Sandbox;
use crate::state::{ingress, ipam, ClusterState};
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use vxmesh_dataplane::lb::scheduler::Kind;
use vxmesh_dataplane::switch::{IngressView, PolicyAction, PolicyRule, PublishedView};
use vxmesh_dataplane::tunnel::{TunnelConfig, TunnelPeer};
use vxmesh_dataplane::{
    parse_mac, BackendView, Location, NetworkView, PortId, PortView, ServiceView, SwitchState,
};

/// Endpoint MTUs (largest IP packet) this node gives plain and encrypted networks.
#[derive(Debug, Clone, Copy)]
pub struct Mtus {
    pub plain: u32,
    pub encrypted: u32,
}

impl Mtus {
    pub fn of(&self, net: &crate::state::Network) -> u32 {
        if net.encrypted {
            self.encrypted
        } else {
            self.plain
        }
    }
}

/// A node's VTEP on a network: its underlay address, or inside the tunnels for an
/// encrypted network.
fn vtep_of(n: &crate::state::Node, encrypted: bool) -> Option<IpAddr> {
    if encrypted {
        n.tunnel_addr.map(IpAddr::V4)
    } else {
        Some(n.advertise_addr)
    }
}

/// `local` maps this node's attached endpoint ids to their ports.
/// `down`: nodes whose agents stopped heartbeating; their tasks leave balancers
/// and DNS until they are back.
pub fn build(
    st: &ClusterState,
    node: &str,
    local: &FxHashMap<String, PortId>,
    mtus: Mtus,
    down: &std::collections::BTreeSet<String>,
) -> SwitchState {
    let mut out = SwitchState::default();
    let me = st.nodes.get(node);
    // the other vxmesh nodes, whose doctor probes are answered
    for n in st.nodes.values().filter(|n| !n.external && n.name != node) {
        out.nodes.push(n.advertise_addr);
        out.tunnel_nodes.extend(n.tunnel_addr.map(IpAddr::V4));
    }
    for net in st.networks.values() {
        let gw_mac = ipam::gateway_mac(net.vni);
        let self_addr = me.and_then(|n| vtep_of(n, net.encrypted));
        let mut v = NetworkView {
            vni: net.vni,
            encrypted: net.encrypted,
            internal: net.internal,
            mtu: mtus.of(net).min(u32::from(u16::MAX)) as u16,
            gateway_mac: gw_mac,
            gateways: net.gateways.clone(),
            static_peers: net
                .peer_vteps
                .iter()
                .copied()
                .filter(|p| Some(*p) != self_addr)
                .collect(),
            ..Default::default()
        };
        for gw in &net.gateways {
            v.neighbors.insert(*gw, gw_mac);
        }
        let mut members: Vec<IpAddr> = v.static_peers.clone();
        for ep in st.endpoints_on(&net.name) {
            let Some(mac) = parse_mac(&ep.mac) else {
                continue;
            };
            let loc = if ep.node == node {
                match local.get(&ep.id) {
                    Some(p) => {
                        v.local_ports.push(*p);
                        out.ports.insert(
                            *p,
                            PortView {
                                vni: net.vni,
                                mac,
                                ips: ep.ips.clone(),
                            },
                        );
                        Location::Local(*p)
                    }
                    // Not attached (yet, or it failed): nothing can reach it here.
                    None => continue,
                }
            } else {
                let Some(addr) = st
                    .nodes
                    .get(&ep.node)
                    .and_then(|n| vtep_of(n, net.encrypted))
                else {
                    continue;
                };
                members.push(addr);
                Location::Remote(addr)
            };
            v.macs.insert(mac, loc);
            for ip in &ep.ips {
                v.neighbors.insert(*ip, mac);
            }
        }
        if net.name == ingress::NETWORK {
            ingress_network(st, node, down, &mut v, &mut members);
        }
        members.sort();
        members.dedup();
        v.members = members;
        // Each service's tasks on this network, found in one pass: asking every
        // service for its tasks among all endpoints cost services x endpoints
        // per reconcile (11 million steps at 1,000 services of 10 tasks, issue 21).
        let tasks_of = tasks_by_service(st.endpoints_on(&net.name));
        let no_tasks = Vec::new();
        let tasks_of = |svc: &str| tasks_of.get(svc).unwrap_or(&no_tasks).iter().copied();
        // services with a VIP here: the VIP answers ARP with the gateway MAC, and
        // its virtual service balances over the tasks on this network
        for svc in st.services.values().filter(|s| s.endpoint_mode == "vip") {
            let vips: Vec<IpAddr> = svc.vips_on(&net.name).collect();
            if vips.is_empty() {
                continue;
            }
            for vip in &vips {
                v.vips.insert(*vip, svc.fwmark);
                v.neighbors.insert(*vip, gw_mac);
            }
            let mut backends: Vec<BackendView> = tasks_of(&svc.name)
                .filter_map(|e| {
                    backend_of(
                        &e.ips,
                        e.health.as_deref() != Some("unhealthy") && !down.contains(&e.node),
                        e.node == node,
                    )
                })
                .collect();
            backends.sort_by_key(|b| (b.v4, b.v6));
            v.backend_ips
                .extend(backends.iter().flat_map(BackendView::addrs));
            let scheduler = Kind::parse(&svc.scheduler).unwrap_or(Kind::Rr);
            v.services.insert(
                svc.fwmark,
                ServiceView {
                    scheduler,
                    backends,
                },
            );
        }
        // names: a service is its VIP, tasks.NAME every task; a container is
        // named after its namespace
        for svc in st
            .services
            .values()
            .filter(|s| s.networks.contains(&net.name))
        {
            let tasks: Vec<IpAddr> = tasks_of(&svc.name)
                .filter(|e| e.health.as_deref() != Some("unhealthy") && !down.contains(&e.node))
                .flat_map(|e| e.ips.iter().copied())
                .collect();
            let name = svc.name.to_lowercase();
            let vips: Vec<IpAddr> = svc.vips_on(&net.name).collect();
            match vips.is_empty() {
                false => v.dns.insert(name.clone(), vips),
                true => v.dns.insert(name.clone(), tasks.clone()),
            };
            v.dns.insert(format!("tasks.{name}"), tasks);
        }
        // an address Docker reserved but has not joined yet names nothing
        for ep in st.endpoints_on(&net.name).filter(|e| !e.awaiting_sandbox()) {
            let base = ep
                .name
                .as_deref()
                .unwrap_or_else(|| ep.netns.rsplit('/').next().unwrap_or(&ep.netns))
                .to_lowercase();
            v.dns
                .entry(base)
                .or_default()
                .extend(ep.ips.iter().copied());
        }
        v.local_ports.sort();
        out.networks.insert(net.vni, v);
    }
    out
}

/// The ingress network's extras: every other node's sandbox (where replies of
/// connections that came in through it go back to), and one virtual service per
/// publishing service, over its tasks' ingress interfaces.
fn ingress_network(
    st: &ClusterState,
    node: &str,
    down: &std::collections::BTreeSet<String>,
    v: &mut NetworkView,
    members: &mut Vec<IpAddr>,
) {
    for n in st.nodes.values().filter(|n| !n.external && n.name != node) {
        let (Some(ip), Some(mac)) = (n.ingress_ip, n.ingress_mac.as_deref().and_then(parse_mac))
        else {
            continue;
        };
        v.macs.insert(mac, Location::Remote(n.advertise_addr));
        v.neighbors.insert(ip, mac);
        members.push(n.advertise_addr);
    }
    let tasks_of = tasks_by_service(st.endpoints_on(ingress::NETWORK));
    for svc in st.services.values().filter(|s| !s.ports.is_empty()) {
        let mut backends: Vec<BackendView> = tasks_of
            .get(svc.name.as_str())
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let task = ingress::task_of(e).and_then(|t| st.endpoints.get(t))?;
                backend_of(
                    &e.ips,
                    task.health.as_deref() != Some("unhealthy") && !down.contains(&e.node),
                    e.node == node,
                )
            })
            .collect();
        backends.sort_by_key(|b| (b.v4, b.v6));
        v.services.insert(
            svc.fwmark,
            ServiceView {
                scheduler: Kind::parse(&svc.scheduler).unwrap_or(Kind::Rr),
                backends,
            },
        );
    }
}

/// Endpoints grouped by the service they are a task of, each group in the
/// order given (the store's, by id), so what is built from them does not
/// depend on the grouping.
fn tasks_by_service<'a>(
    eps: impl Iterator<Item = &'a crate::state::Endpoint>,
) -> FxHashMap<&'a str, Vec<&'a crate::state::Endpoint>> {
    let mut out: FxHashMap<&str, Vec<&crate::state::Endpoint>> = FxHashMap::default();
    for e in eps {
        if let Some(s) = e.service.as_deref() {
            out.entry(s).or_default().push(e);
        }
    }
    out
}

/// A task as a backend: its address of each family.
fn backend_of(ips: &[IpAddr], healthy: bool, local: bool) -> Option<BackendView> {
    let v4 = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let v6 = ips.iter().find_map(|ip| match ip {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    });
    (v4.is_some() || v6.is_some()).then_some(BackendView {
        v4,
        v6,
        weight: 1,
        healthy,
        local,
    })
}

/// This node's side of the routing mesh: its sandbox (made by the agent), the
/// ports it answers, and its policies.
pub fn ingress_view(st: &ClusterState, node: &str, sandbox: &Sandbox) -> Option<IngressView> {
    let me = st.nodes.get(node)?;
    let net = st.networks.get(ingress::NETWORK)?;
    let sandbox_mac = me.ingress_mac.as_deref().and_then(parse_mac)?;
    let mut published = FxHashMap::default();
    for (svc, p) in crate::state::mesh::published_here(st, node) {
        published.insert(
            (proto_number(&p.proto), p.published),
            PublishedView {
                fwmark: svc.fwmark,
                target: p.target,
                host_only: p.mode == "host",
            },
        );
    }
    let policies = st
        .policies
        .values()
        .filter(|p| p.node == node)
        .map(|p| PolicyRule {
            proto: proto_number(&p.proto),
            port: p.port,
            from: p.from.map(|n| (n.network(), n.prefix_len())),
            action: match p.action.as_str() {
                "drop" => PolicyAction::Drop,
                "reject" => PolicyAction::Reject,
                _ => PolicyAction::Accept,
            },
            // ids are numbers (`add_policy`); one that is not is recorded as none
            id: p.id.parse().unwrap_or(0),
            audit: p.audit,
        })
        .collect();
    Some(IngressView {
        port: sandbox.port,
        vni: net.vni,
        host_mac: sandbox.host_mac,
        sandbox_ip: sandbox.sandbox_ip,
        // IPv6 published ports need tasks with IPv6 ingress addresses
        sandbox_ip6: net
            .subnets
            .iter()
            .any(|s| s.addr().is_ipv6())
            .then_some(sandbox.sandbox_ip6),
        sandbox_mac,
        sandbox_macs: st
            .nodes
            .values()
            .filter_map(|n| n.ingress_mac.as_deref().and_then(parse_mac))
            .collect(),
        enabled: me.ingress,
        published,
        policies,
        // the agent puts its own in (one table for its life)
        rate_limit: None,
    })
}

fn proto_number(p: &str) -> u8 {
    if p == "udp" {
        17
    } else {
        6
    }
}

/// The WireGuard peers this node needs: every node it shares an encrypted network
/// with (nodes with endpoints on it, and external peers named by `--peer-vtep`).
/// Nodes without a public key in the store get no tunnel.
pub fn tunnels(
    st: &ClusterState,
    node: &str,
    keys: Vec<[u8; 32]>,
    preshared: Option<[u8; 32]>,
) -> TunnelConfig {
    let me = st.nodes.get(node);
    let mut peers: Vec<TunnelPeer> = Vec::new();
    for net in st.networks.values().filter(|n| n.encrypted) {
        let mut members: Vec<&crate::state::Node> = st
            .endpoints_on(&net.name)
            .filter_map(|e| st.nodes.get(&e.node))
            .collect();
        members.extend(st.nodes.values().filter(|n| {
            n.external
                && n.tunnel_addr
                    .is_some_and(|t| net.peer_vteps.contains(&IpAddr::V4(t)))
        }));
        if !members.iter().any(|n| n.name == node) {
            continue;
        }
        for n in members.into_iter().filter(|n| n.name != node) {
            let (Some(vtep), Some(public)) = (
                n.tunnel_addr,
                n.public_key
                    .as_deref()
                    .and_then(crate::state::ops::decode_key),
            ) else {
                continue;
            };
            if peers.iter().any(|p| p.vtep == vtep) {
                continue;
            }
            peers.push(TunnelPeer {
                vtep,
                endpoint: std::net::SocketAddr::new(
                    n.advertise_addr,
                    n.wg_port.unwrap_or(crate::agent::WG_PORT),
                ),
                public,
            });
        }
    }
    TunnelConfig {
        local_vtep: me
            .and_then(|n| n.tunnel_addr)
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        keys,
        preshared,
        peers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ops, EndpointSpec, NetworkSpec, Node};

    #[test]
    fn members_are_nodes_with_endpoints_plus_peers() {
        let mut st = ClusterState::default();
        for (n, a) in [
            ("n1", "192.0.2.1"),
            ("n2", "192.0.2.2"),
            ("n3", "192.0.2.3"),
        ] {
            ops::upsert_node(&mut st, Node::new(n, a.parse().unwrap())).unwrap();
        }
        let spec = NetworkSpec {
            name: "a".into(),
            peer_vteps: vec!["192.0.2.50".parse().unwrap()],
            ..Default::default()
        };
        let net = ops::create_network(&mut st, &spec).unwrap();
        for (id, node) in [("e1", "n1"), ("e2", "n2"), ("e3", "n1")] {
            let es = EndpointSpec {
                network: "a".into(),
                netns: id.into(),
                ..Default::default()
            };
            ops::create_endpoint(&mut st, &es, node, id.into(), ipam::random_mac).unwrap();
        }
        let mut local = FxHashMap::default();
        local.insert("e1".to_string(), PortId(1));
        let sw = build(
            &st,
            "n1",
            &local,
            Mtus {
                plain: 1450,
                encrypted: 1375,
            },
            &Default::default(),
        );
        let v = &sw.networks[&net.vni];
        let addrs: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "192.0.2.50".parse().unwrap()];
        assert_eq!(
            v.members, addrs,
            "n3 has no endpoint; self is never a member"
        );
        assert_eq!(v.local_ports, vec![PortId(1)]);
        assert_eq!(sw.ports.len(), 1, "e3 is not attached yet");
        assert_eq!(v.macs.len(), 2);
        assert!(v.neighbors.contains_key(&net.gateways[0]));
    }
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use crate::state::services::{create_service, ServiceSpec};
    use crate::state::{ops, EndpointSpec, NetworkSpec, Node};

    /// Tasks of several services, interleaved in id order, some unhealthy or
    /// on a down node: each virtual service, its DNS names and the ports this
    /// node answers are what a scan of every endpoint per service gives.
    #[test]
    fn each_service_gets_exactly_its_own_tasks() {
        let mut st = ClusterState::default();
        for (n, a) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2")] {
            ops::upsert_node(&mut st, Node::new(n, a.parse().unwrap())).unwrap();
        }
        let net = NetworkSpec {
            name: "a".into(),
            ..Default::default()
        };
        ops::create_network(&mut st, &net).unwrap();
        for (name, publish) in [("s0", vec![]), ("s1", vec![":80".into()]), ("s2", vec![])] {
            let spec = ServiceSpec {
                name: name.into(),
                networks: vec!["a".into()],
                publish,
                ..Default::default()
            };
            create_service(&mut st, &spec).unwrap();
        }
        for i in 0..12 {
            let es = EndpointSpec {
                network: "a".into(),
                netns: format!("t{i}"),
                service: Some(format!("s{}", i % 3)),
                ..Default::default()
            };
            let node = if i % 4 == 0 { "n2" } else { "n1" };
            ops::create_endpoint(&mut st, &es, node, format!("t{i:02}"), ipam::random_mac).unwrap();
        }
        crate::state::ingress::sync_tasks(&mut st).unwrap();
        st.endpoints.get_mut("t05").unwrap().health = Some("unhealthy".into());
        let down = ["n2".to_string()].into_iter().collect();
        let mtus = Mtus {
            plain: 1450,
            encrypted: 1375,
        };
        let sw = build(&st, "n1", &FxHashMap::default(), mtus, &down);
        let vni = st.networks["a"].vni;
        let view = &sw.networks[&vni];
        for svc in st.services.values() {
            let mine: Vec<&crate::state::Endpoint> = st
                .endpoints_on("a")
                .filter(|e| e.service.as_deref() == Some(svc.name.as_str()))
                .collect();
            assert_eq!(mine.len(), 4);
            let got = &view.services[&svc.fwmark].backends;
            let healthy: Vec<Option<std::net::Ipv4Addr>> =
                got.iter().filter(|b| b.healthy).map(|b| b.v4).collect();
            let want: Vec<Option<std::net::Ipv4Addr>> = mine
                .iter()
                .filter(|e| e.health.is_none() && e.node != "n2")
                .map(|e| match e.ips[0] {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .collect();
            assert_eq!(got.len(), 4, "{}: every task listed", svc.name);
            assert_eq!(healthy, want, "{}", svc.name);
            let tasks = &view.dns[&format!("tasks.{}", svc.name)];
            assert_eq!(tasks.len(), want.len(), "{}: {tasks:?}", svc.name);
        }
        // the routing mesh: only s1 publishes; its tasks' ingress interfaces
        let ing = &sw.networks[&st.networks["ingress"].vni];
        assert_eq!(ing.services.len(), 1);
        assert_eq!(ing.services[&st.services["s1"].fwmark].backends.len(), 4);
        let here: Vec<&str> = crate::state::mesh::published_here(&st, "n1")
            .map(|(s, _)| s.name.as_str())
            .collect();
        assert_eq!(here, ["s1"]);
    }
}

#[cfg(test)]
mod tunnel_tests {
    use super::*;
    use crate::state::{ops, EndpointSpec, NetworkSpec, Node};

    #[test]
    fn peers_are_nodes_sharing_an_encrypted_network() {
        let mut st = ClusterState::default();
        for (n, a) in [
            ("n1", "192.0.2.1"),
            ("n2", "192.0.2.2"),
            ("n3", "192.0.2.3"),
        ] {
            let mut node = Node::new(n, a.parse().unwrap());
            node.public_key = Some(ops::encode_key(&[n.as_bytes()[1]; 32]));
            ops::upsert_node(&mut st, node).unwrap();
        }
        let spec = NetworkSpec {
            name: "s".into(),
            encrypted: true,
            ..Default::default()
        };
        ops::create_network(&mut st, &spec).unwrap();
        ops::create_network(
            &mut st,
            &NetworkSpec {
                name: "p".into(),
                ..Default::default()
            },
        )
        .unwrap();
        for (id, node, net) in [("e1", "n1", "s"), ("e2", "n2", "s"), ("e3", "n3", "p")] {
            let es = EndpointSpec {
                network: net.into(),
                netns: id.into(),
                ..Default::default()
            };
            ops::create_endpoint(&mut st, &es, node, id.into(), ipam::random_mac).unwrap();
        }
        let cfg = tunnels(&st, "n1", vec![[1; 32]], None);
        let vteps: Vec<_> = cfg.peers.iter().map(|p| p.vtep).collect();
        assert_eq!(
            vteps,
            vec![st.nodes["n2"].tunnel_addr.unwrap()],
            "n3 shares only a plain network"
        );
        assert_eq!(cfg.local_vtep, st.nodes["n1"].tunnel_addr.unwrap());
        assert!(tunnels(&st, "n3", vec![[3; 32]], None).peers.is_empty());
    }
}
