//! Networks and the endpoints on them: the operations that make and remove
//! them, below the routing mesh's (which makes its network and its tasks'
//! ingress endpoints through these) and the nodes' and services'.

use super::error::StateError;
use super::ipam::{self, MAX_VNI};
use super::mesh;
use super::model::{unix_now, ClusterState, Endpoint, Network};
use super::names::valid_name;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

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
    if name == mesh::NETWORK {
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
    let ingress = net.name == mesh::NETWORK;
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
    let used = ipam::used_addresses(st, &net.name);
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
