//! Operations on the desired state. Each either applies whole or returns an error
//! that names what was wrong and what to do; the store commits only on success.

use super::ipam;
use super::model::{unix_now, ClusterState, Endpoint, Network, Node};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;
use thiserror::Error;

pub const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default)]
    pub subnets: Vec<IpNet>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub peer_vteps: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct EndpointSpec {
    pub network: String,
    pub netns: String,
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub veth: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
}

pub(crate) fn valid_name(kind: &str, name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "invalid {kind} name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

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

/// A WireGuard key in base64, as `wg` prints it.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    v.try_into().ok()
}

pub fn encode_key(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

pub fn create_network(st: &mut ClusterState, spec: &NetworkSpec) -> Result<Network, StateError> {
    valid_name("network", &spec.name)?;
    if st.networks.contains_key(&spec.name) {
        return Err(StateError::Conflict(format!(
            "network {} already exists: pick another name or remove it first (vxmesh network rm {})",
            spec.name, spec.name
        )));
    }
    let v4 = spec
        .subnets
        .iter()
        .filter(|s| matches!(s, IpNet::V4(_)))
        .count();
    let v6 = spec.subnets.len() - v4;
    if v4 > 1 || v6 > 1 {
        return Err(StateError::Invalid(
            "a network takes at most one IPv4 and one IPv6 --subnet".into(),
        ));
    }
    let used: Vec<IpNet> = st
        .networks
        .values()
        .flat_map(|n| n.subnets.clone())
        .collect();
    let mut subnets = Vec::new();
    for s in &spec.subnets {
        if s.trunc() != *s {
            return Err(StateError::Invalid(format!(
                "--subnet {s} has host bits set: did you mean {}?",
                s.trunc()
            )));
        }
        let too_small = match s {
            IpNet::V4(n) => n.prefix_len() > 30,
            IpNet::V6(n) => n.prefix_len() > 126,
        };
        if too_small {
            return Err(StateError::Invalid(format!(
                "--subnet {s} is too small: it must hold a gateway and at least one endpoint"
            )));
        }
        if let Some(n) = st
            .networks
            .values()
            .find(|n| n.subnets.iter().any(|o| ipam::overlaps(o, s)))
        {
            return Err(StateError::Conflict(format!(
                "--subnet {s} overlaps network {} ({}): choose a subnet that does not",
                n.name,
                n.subnets
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        subnets.push(*s);
    }
    if subnets.is_empty() {
        subnets.push(ipam::allocate_subnet(&used).ok_or_else(|| {
            ipam::exhausted(
                &format!("the default subnet pool {} (of /24s)", ipam::DEFAULT_POOL),
                256,
                "pass --subnet CIDR, or remove networks that are no longer used",
            )
        })?);
    }
    let vnis: BTreeSet<u32> = st.networks.values().map(|n| n.vni).collect();
    let vni = match spec.vni {
        Some(v) if v == 0 || v > MAX_VNI => {
            return Err(StateError::Invalid(format!(
                "--vni {v} is out of range: use 1-{MAX_VNI}"
            )))
        }
        Some(v) => {
            if let Some(n) = st.networks.values().find(|n| n.vni == v) {
                return Err(StateError::Conflict(format!(
                    "VNI {v} is already used by network {}: pick another --vni or leave it out",
                    n.name
                )));
            }
            v
        }
        None => ipam::allocate_vni(&vnis).ok_or_else(|| {
            ipam::exhausted(
                &format!("the VNI pool {}-{MAX_VNI}", ipam::FIRST_AUTO_VNI),
                u64::from(MAX_VNI - ipam::FIRST_AUTO_VNI) + 1,
                "pass --vni N below it, or remove networks that are no longer used",
            )
        })?,
    };
    let mut peers = spec.peer_vteps.clone();
    peers.sort();
    peers.dedup();
    let net = Network {
        name: spec.name.clone(),
        vni,
        gateways: subnets.iter().map(ipam::gateway).collect(),
        subnets,
        encrypted: spec.encrypted,
        internal: spec.internal,
        attachable: true,
        peer_vteps: peers,
        created: unix_now(),
    };
    st.networks.insert(net.name.clone(), net.clone());
    Ok(net)
}

pub fn remove_network(st: &mut ClusterState, name: &str) -> Result<Network, StateError> {
    if !st.networks.contains_key(name) {
        return Err(StateError::NotFound(format!(
            "no network named {name} (vxmesh network ls lists them)"
        )));
    }
    if name == super::ingress::NETWORK {
        return Err(StateError::Invalid(format!(
            "network {name} is the routing mesh's own: it stays"
        )));
    }
    let n = st.endpoints_on(name).count();
    if n > 0 {
        return Err(StateError::Conflict(format!(
            "network {name} still has {n} endpoint(s): remove them first (vxmesh endpoint ls)"
        )));
    }
    st.networks
        .remove(name)
        .ok_or_else(|| StateError::NotFound(name.into()))
}

/// Adds an endpoint of `node` with addresses from the network's subnets (the
/// requested one where given) and a MAC no other endpoint of the network has.
pub fn create_endpoint(
    st: &mut ClusterState,
    spec: &EndpointSpec,
    node: &str,
    id: String,
    mut mac: impl FnMut() -> [u8; 6],
) -> Result<Endpoint, StateError> {
    let net = st.networks.get(&spec.network).ok_or_else(|| {
        StateError::NotFound(format!(
            "no network named {}: create it first (vxmesh network create {})",
            spec.network, spec.network
        ))
    })?;
    if !st.nodes.contains_key(node) {
        return Err(StateError::NotFound(format!(
            "node {node} is not registered"
        )));
    }
    let ingress = net.name == super::ingress::NETWORK;
    let ingress_owner = spec
        .owner
        .as_deref()
        .is_some_and(|o| o.starts_with("ingress:"));
    if ingress != ingress_owner {
        return Err(StateError::Invalid(format!(
            "network {} is the routing mesh's own: tasks join it by themselves when their service publishes a port",
            net.name
        )));
    }
    let ifname = spec.ifname.clone().unwrap_or_else(|| "eth0".into());
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
        return Err(StateError::Invalid(format!(
            "--ifname {ifname:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
        )));
    }
    if let Some(owner) = &spec.owner {
        if let Some(e) = st
            .endpoints
            .values()
            .find(|e| e.owner.as_ref() == Some(owner))
        {
            return Err(StateError::Conflict(format!(
                "{owner} is already attached as endpoint {}",
                e.id
            )));
        }
    }
    if let Some(e) = st
        .endpoints
        .values()
        .find(|e| e.node == node && e.netns == spec.netns && e.ifname == ifname)
    {
        return Err(StateError::Conflict(format!(
            "namespace {} already has endpoint {} as {ifname}: pass another --ifname",
            spec.netns, e.id
        )));
    }
    if let Some(svc) = spec.service.as_ref().filter(|_| !ingress) {
        let s = st.services.get(svc).ok_or_else(|| {
            StateError::NotFound(format!("no service named {svc}: create it first (vxmesh service create {svc} --network {})", net.name))
        })?;
        if !s.networks.contains(&net.name) {
            return Err(StateError::Invalid(format!(
                "service {svc} is not on network {} (it is on {}): attach the task to one of those",
                net.name,
                s.networks.join(", ")
            )));
        }
    }
    let used = super::services::used_addresses(st, &net.name);
    let mut ips = Vec::new();
    if let Some(ip) = spec.ip {
        let subnet = net
            .subnets
            .iter()
            .find(|s| s.contains(&ip))
            .ok_or_else(|| {
                StateError::Invalid(format!(
                    "--ip {ip} is outside network {}'s subnets ({})",
                    net.name,
                    net.subnets
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if !ipam::assignable(subnet, ip) {
            return Err(StateError::Invalid(format!(
                "--ip {ip} is the network, broadcast or gateway address of {subnet}: pick a host address"
            )));
        }
        if used.contains(&ip) {
            return Err(StateError::Conflict(format!(
                "--ip {ip} is already used on network {}: pick another or leave it out",
                net.name
            )));
        }
        ips.push(ip);
    }
    for s in &net.subnets {
        if ips.iter().any(|ip| s.contains(ip)) {
            continue;
        }
        ips.push(ipam::allocate_ip(s, &used).ok_or_else(|| {
            ipam::exhausted(
                &format!("network {}'s addresses {s}", net.name),
                ipam::assignable_count(s),
                "remove endpoints or services on it, or create a network with a larger \
                 --subnet for the new endpoints",
            )
        })?);
    }
    let macs: BTreeSet<&str> = st.endpoints_on(&net.name).map(|e| e.mac.as_str()).collect();
    let mac = loop {
        let m = vxmesh_dataplane::mac_to_string(&mac());
        if !macs.contains(m.as_str()) {
            break m;
        }
    };
    if st.endpoints.contains_key(&id) {
        return Err(StateError::Conflict(format!("endpoint id {id} exists")));
    }
    let ep = Endpoint {
        id: id.clone(),
        network: net.name.clone(),
        node: node.to_string(),
        mac,
        ips,
        netns: spec.netns.clone(),
        ifname,
        veth: spec.veth.clone(),
        service: spec.service.clone(),
        owner: spec.owner.clone(),
        health: None,
        created: unix_now(),
        name: None,
    };
    st.endpoints.insert(id, ep.clone());
    Ok(ep)
}

/// Resolves a full id or a unique prefix of one, as Docker does.
pub fn find_endpoint<'a>(st: &'a ClusterState, id: &str) -> Result<&'a Endpoint, StateError> {
    if let Some(e) = st.endpoints.get(id) {
        return Ok(e);
    }
    let mut m = st
        .endpoints
        .values()
        .filter(|e| !id.is_empty() && e.id.starts_with(id));
    match (m.next(), m.next()) {
        (Some(e), None) => Ok(e),
        (Some(_), Some(_)) => Err(StateError::Invalid(format!(
            "endpoint id prefix {id} is ambiguous: give more characters"
        ))),
        _ => Err(StateError::NotFound(format!(
            "no endpoint with id {id} (vxmesh endpoint ls lists them)"
        ))),
    }
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
