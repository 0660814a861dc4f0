//! Turns the desired state into the switch's view of it, for one node.

use crate::state::{ipam, ClusterState};
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use vxmesh_dataplane::{parse_mac, Location, NetworkView, PortId, PortView, SwitchState};

/// `local` maps this node's attached endpoint ids to their ports.
pub fn build(st: &ClusterState, node: &str, local: &FxHashMap<String, PortId>) -> SwitchState {
    let mut out = SwitchState::default();
    let self_addr = st.nodes.get(node).map(|n| n.advertise_addr);
    for net in st.networks.values() {
        let gw_mac = ipam::gateway_mac(net.vni);
        let mut v = NetworkView {
            vni: net.vni,
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
                let Some(n) = st.nodes.get(&ep.node) else {
                    continue;
                };
                members.push(n.advertise_addr);
                Location::Remote(n.advertise_addr)
            };
            v.macs.insert(mac, loc);
            for ip in &ep.ips {
                v.neighbors.insert(*ip, mac);
            }
        }
        members.sort();
        members.dedup();
        v.members = members;
        v.local_ports.sort();
        out.networks.insert(net.vni, v);
    }
    out
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
            ops::upsert_node(
                &mut st,
                Node {
                    name: n.into(),
                    advertise_addr: a.parse().unwrap(),
                    public_key: None,
                    ingress: true,
                    labels: Default::default(),
                    last_seen: 0,
                },
            )
            .unwrap();
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
        let sw = build(&st, "n1", &local);
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
