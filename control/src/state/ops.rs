//! Operations on the desired state. Each either applies whole or returns an error
//! that names what was wrong and what to do; the store commits only on success.
//!
//! This is the top of `state`'s operations on nodes and endpoints as a whole
//! (those that keep the routing mesh in step): what sits below it is
//! re-exported here, so callers name one module.

use super::ipam;
use super::model::{ClusterState, Endpoint, Node};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

pub use super::error::StateError;
pub use super::ipam::MAX_VNI;
use super::names::valid_name;
pub use super::names::{decode_key, encode_key};
pub use super::networks::{
    create_endpoint, create_network, find_endpoint, remove_network, EndpointSpec, NetworkSpec,
};

pub fn upsert_node(st: &mut ClusterState, node: Node) -> Result<(), StateError> {
    valid_name("node", &node.name)?;
    if let Some(other) = st
        .nodes
        .values()
        .find(|n| n.name != node.name && n.advertise_addr == node.advertise_addr)
    {
        return Err(StateError::Conflict(format!(
            "address {} is already advertised by node {}: give each node its own --advertise-addr",
            node.advertise_addr, other.name
        )));
    }
    let mut node = node;
    if let Some(t) = node.tunnel_addr {
        if let Some(other) = st
            .nodes
            .values()
            .find(|n| n.name != node.name && n.tunnel_addr == Some(t))
        {
            return Err(StateError::Conflict(format!(
                "tunnel address {t} is already node {}'s: pick another --tunnel-addr",
                other.name
            )));
        }
    } else {
        let used: BTreeSet<IpAddr> = st
            .nodes
            .values()
            .filter_map(|n| n.tunnel_addr.map(IpAddr::V4))
            .collect();
        node.tunnel_addr = Some(ipam::allocate_tunnel_addr(&used).ok_or_else(|| {
            ipam::exhausted(
                &format!("the tunnel address pool {}", ipam::TUNNEL_POOL),
                ipam::TUNNEL_POOL
                    .parse()
                    .map_or(0, |p: IpNet| ipam::assignable_count(&p)),
                "remove nodes that are gone (vxmesh node rm NAME) or give this one --tunnel-addr",
            )
        })?);
    }
    if let Some(old) = st.nodes.get(&node.name) {
        node.ingress_ip = node.ingress_ip.or(old.ingress_ip);
        node.ingress_mac = node.ingress_mac.clone().or(old.ingress_mac.clone());
    }
    super::ingress::assign_node(st, &mut node)?;
    st.nodes.insert(node.name.clone(), node);
    Ok(())
}

/// Declares a WireGuard peer that runs no vxmesh (e.g. wireguard-go with the
/// kernel's VXLAN behind it). Networks reach it through `--peer-vtep TUNNEL_ADDR`.
pub fn add_external_node(st: &mut ClusterState, node: Node) -> Result<Node, StateError> {
    if let Some(n) = st.nodes.get(&node.name) {
        if !n.external {
            return Err(StateError::Conflict(format!(
                "node {} runs a vxmesh agent: it registers itself",
                node.name
            )));
        }
    }
    let key = node.public_key.as_deref().unwrap_or("");
    if decode_key(key).is_none() {
        return Err(StateError::Invalid(format!(
            "--public-key {key:?} is not a WireGuard public key (44 characters of base64, as `wg pubkey` prints)"
        )));
    }
    if node.tunnel_addr.is_none() {
        return Err(StateError::Invalid(
            "--tunnel-addr is required: the peer's address on its WireGuard interface".into(),
        ));
    }
    let node = Node {
        external: true,
        ..node
    };
    upsert_node(st, node.clone())?;
    Ok(st.nodes.get(&node.name).cloned().unwrap_or(node))
}

/// Removes a node from the cluster: its key goes with it, so it can no longer
/// send into encrypted networks.
pub fn remove_node(st: &mut ClusterState, name: &str) -> Result<Node, StateError> {
    if !st.nodes.contains_key(name) {
        return Err(StateError::NotFound(format!(
            "no node named {name} (vxmesh node ls lists them)"
        )));
    }
    let n = st.endpoints.values().filter(|e| e.node == name).count();
    if n > 0 {
        return Err(StateError::Conflict(format!(
            "node {name} still has {n} endpoint(s): remove them first (vxmesh endpoint ls)"
        )));
    }
    st.nodes
        .remove(name)
        .ok_or_else(|| StateError::NotFound(name.into()))
}

/// Asks a node's agent to replace its static key.
pub fn request_rotation(st: &mut ClusterState, name: &str) -> Result<Node, StateError> {
    let n = st.nodes.get_mut(name).ok_or_else(|| {
        StateError::NotFound(format!("no node named {name} (vxmesh node ls lists them)"))
    })?;
    if n.external {
        return Err(StateError::Invalid(format!(
            "node {name} runs no vxmesh agent: give it a new key with `wg`, then `vxmesh node add {name} --public-key ...`"
        )));
    }
    n.rotate_requested = n.rotate_requested.max(n.key_epoch) + 1;
    Ok(n.clone())
}

/// Removes an endpoint (and, for a task, its ingress interface).
pub fn remove_endpoint(st: &mut ClusterState, id: &str) -> Result<Endpoint, StateError> {
    let ep = find_endpoint(st, id)?;
    if let Some(task) = super::ingress::task_of(ep) {
        return Err(StateError::Invalid(format!(
            "endpoint {} is task {task}'s interface on the ingress network: remove the task (vxmesh endpoint rm {task})",
            ep.id
        )));
    }
    let id = ep.id.clone();
    let ep = st.endpoints.remove(&id).ok_or(StateError::NotFound(id))?;
    super::ingress::sync_tasks(st)?;
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        let mut st = ClusterState::default();
        upsert_node(&mut st, Node::new("n1", "192.0.2.1".parse().unwrap())).unwrap();
        st
    }

    fn spec(name: &str, subnet: Option<&str>, vni: Option<u32>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            subnets: subnet.map(|s| s.parse().unwrap()).into_iter().collect(),
            vni,
            ..Default::default()
        }
    }

    #[test]
    fn networks_get_distinct_subnets_and_vnis() {
        let mut st = state();
        let a = create_network(&mut st, &spec("a", None, None)).unwrap();
        let b = create_network(&mut st, &spec("b", None, None)).unwrap();
        assert_ne!(a.subnets, b.subnets);
        assert_ne!(a.vni, b.vni);
        assert_eq!(a.gateways, vec!["10.10.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn clashes_are_refused_with_the_culprit_named() {
        let mut st = state();
        create_network(&mut st, &spec("a", Some("10.20.0.0/16"), Some(100))).unwrap();
        let e = create_network(&mut st, &spec("b", Some("10.20.5.0/24"), None)).unwrap_err();
        assert!(
            matches!(&e, StateError::Conflict(m) if m.contains("overlaps network a")),
            "{e}"
        );
        let e = create_network(&mut st, &spec("b", Some("10.30.0.0/24"), Some(100))).unwrap_err();
        assert!(
            matches!(&e, StateError::Conflict(m) if m.contains("VNI 100")),
            "{e}"
        );
        let e = create_network(&mut st, &spec("a", None, None)).unwrap_err();
        assert!(matches!(e, StateError::Conflict(_)));
        let e = create_network(&mut st, &spec("bad name", None, None)).unwrap_err();
        assert!(matches!(e, StateError::Invalid(_)));
        let e = create_network(&mut st, &spec("c", Some("10.40.0.1/24"), None)).unwrap_err();
        assert!(
            matches!(&e, StateError::Invalid(m) if m.contains("10.40.0.0/24")),
            "{e}"
        );
        assert_eq!(
            st.networks.len(),
            2,
            "no failed create left anything behind (a and the built-in ingress)"
        );
    }

    #[test]
    fn endpoints_get_free_addresses_and_block_network_removal() {
        let mut st = state();
        create_network(&mut st, &spec("a", Some("10.20.0.0/24"), None)).unwrap();
        let es = |ip: Option<&str>, ns: &str| EndpointSpec {
            network: "a".into(),
            netns: ns.into(),
            ip: ip.map(|s| s.parse().unwrap()),
            ..Default::default()
        };
        let e1 = create_endpoint(
            &mut st,
            &es(None, "c1"),
            "n1",
            "e1".into(),
            ipam::random_mac,
        )
        .unwrap();
        assert_eq!(e1.ips, vec!["10.20.0.2".parse::<IpAddr>().unwrap()]);
        let e2 = create_endpoint(
            &mut st,
            &es(Some("10.20.0.9"), "c2"),
            "n1",
            "e2".into(),
            ipam::random_mac,
        )
        .unwrap();
        assert_eq!(e2.ips, vec!["10.20.0.9".parse::<IpAddr>().unwrap()]);
        for (ip, ns) in [
            ("10.20.0.9", "c3"),
            ("10.20.0.1", "c3"),
            ("10.99.0.2", "c3"),
        ] {
            assert!(create_endpoint(
                &mut st,
                &es(Some(ip), ns),
                "n1",
                "x".into(),
                ipam::random_mac
            )
            .is_err());
        }
        assert!(
            create_endpoint(&mut st, &es(None, "c1"), "n1", "x".into(), ipam::random_mac).is_err(),
            "same netns+ifname twice"
        );
        assert!(matches!(
            remove_network(&mut st, "a"),
            Err(StateError::Conflict(_))
        ));
        remove_endpoint(&mut st, "e1").unwrap();
        remove_endpoint(&mut st, "e2").unwrap();
        remove_network(&mut st, "a").unwrap();
    }

    #[test]
    fn dual_stack_endpoint_gets_one_address_of_each_family() {
        let mut st = state();
        let mut s = spec("d", Some("10.50.0.0/24"), None);
        s.subnets.push("fd00:50::/64".parse().unwrap());
        create_network(&mut st, &s).unwrap();
        let e = create_endpoint(
            &mut st,
            &EndpointSpec {
                network: "d".into(),
                netns: "c".into(),
                ..Default::default()
            },
            "n1",
            "e".into(),
            ipam::random_mac,
        )
        .unwrap();
        assert_eq!(e.ips.len(), 2);
        assert!(e.ips[1].is_ipv6());
    }

    #[test]
    fn ids_resolve_by_unique_prefix() {
        let mut st = state();
        create_network(&mut st, &spec("a", None, None)).unwrap();
        for id in ["abc1", "abd2"] {
            let es = EndpointSpec {
                network: "a".into(),
                netns: id.into(),
                ..Default::default()
            };
            create_endpoint(&mut st, &es, "n1", id.into(), ipam::random_mac).unwrap();
        }
        assert_eq!(find_endpoint(&st, "abc").unwrap().id, "abc1");
        assert!(matches!(
            find_endpoint(&st, "ab"),
            Err(StateError::Invalid(_))
        ));
        assert!(matches!(
            find_endpoint(&st, "zz"),
            Err(StateError::NotFound(_))
        ));
    }
}
