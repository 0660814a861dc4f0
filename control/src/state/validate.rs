//! The state as read, checked as the write path checks it.
//!
//! Every operation in [`super::ops`] refuses what would break the cluster, but
//! the store can still hold such rows: written by hand (`sqlite3`, `etcdctl`), by
//! a buggy or newer version, or torn by a restore. A reader that trusted them
//! would give two networks one VNI (merging them), attach a namespace under a
//! name no interface may have, or, for a row that does not even parse, fail
//! every load and stop applying changes at all. So every load runs [`sanitize`]:
//! each row that is not valid on its own, or that clashes with one already
//! accepted, is left out and reported. Rows are taken oldest first (`created`,
//! then name or id), so of two that clash the older wins, and since the outcome
//! depends only on the rows, every node agrees on it.

use super::ipam;
use super::ipam::MAX_VNI;
use super::model::{ClusterState, Endpoint, Network, Node, Policy, Service};
use super::names::{decode_key, valid_name};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A stored row the agents leave out, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct InvalidRow {
    pub kind: String,
    pub key: String,
    pub reason: String,
}

impl InvalidRow {
    pub fn new(kind: &str, key: &str, reason: impl Into<String>) -> Self {
        InvalidRow {
            kind: kind.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Removes from `st` every object the write path would have refused, given the
/// objects accepted before it; returns what it removed. A dependant of a removed
/// object (an endpoint on a network left out) goes too.
pub fn sanitize(st: &mut ClusterState) -> Vec<InvalidRow> {
    let mut bad = Vec::new();
    let networks = accept(
        &mut st.networks,
        "network",
        |n| (n.created, n.name.clone()),
        {
            let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
            let mut subnets: Vec<(IpNet, String)> = Vec::new();
            move |key, n: &Network| {
                check_network(key, n, &vnis, &subnets)?;
                vnis.insert(n.vni, n.name.clone());
                subnets.extend(n.subnets.iter().map(|s| (*s, n.name.clone())));
                Ok(())
            }
        },
    );
    bad.extend(networks);
    let nodes = accept(&mut st.nodes, "node", |n| (0, n.name.clone()), {
        // by kind of address: advertised, in the tunnels, on ingress
        let mut taken: [BTreeMap<IpAddr, String>; 3] = Default::default();
        move |key, n: &Node| {
            check_node(key, n, &taken)?;
            for (t, a) in taken.iter_mut().zip(addresses(n)) {
                t.extend(a.map(|a| (a, n.name.clone())));
            }
            Ok(())
        }
    });
    bad.extend(nodes);
    // addresses taken on each network: the nodes' sandboxes on ingress first
    let mut used: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    used.entry(super::mesh::NETWORK.to_string())
        .or_default()
        .extend(st.nodes.values().filter_map(|n| n.ingress_ip));
    let services = {
        let networks = &st.networks;
        let used = &mut used;
        let mut marks = BTreeSet::new();
        let mut ports = BTreeSet::new();
        accept(
            &mut st.services,
            "service",
            |s| (s.created, s.name.clone()),
            move |key, s: &Service| {
                check_service(key, s, networks, used, &marks, &ports)?;
                marks.insert(s.fwmark);
                for p in &s.ports {
                    ports.insert((p.proto.clone(), p.published));
                }
                for (net, vip) in s.vips.iter().chain(&s.vips6) {
                    used.entry(net.clone()).or_default().insert(*vip);
                }
                Ok(())
            },
        )
    };
    bad.extend(services);
    let endpoints = {
        let (networks, nodes) = (&st.networks, &st.nodes);
        let used = &mut used;
        let mut macs: BTreeSet<(String, String)> = BTreeSet::new();
        accept(
            &mut st.endpoints,
            "endpoint",
            |e| (e.created, e.id.clone()),
            move |key, e: &Endpoint| {
                check_endpoint(key, e, networks, nodes, used, &macs)?;
                macs.insert((e.network.clone(), e.mac.to_ascii_lowercase()));
                used.entry(e.network.clone()).or_default().extend(&e.ips);
                Ok(())
            },
        )
    };
    bad.extend(endpoints);
    let policies = {
        let nodes = &st.nodes;
        accept(
            &mut st.policies,
            "policy",
            |p| (p.created, p.id.clone()),
            move |key, p: &Policy| check_policy(key, p, nodes),
        )
    };
    bad.extend(policies);
    bad
}

/// Takes `map`'s objects in `order`, keeps those `check` accepts (which then
/// count for the next), and removes the rest, saying why.
fn accept<T, K: Ord>(
    map: &mut BTreeMap<String, T>,
    kind: &str,
    order: impl Fn(&T) -> K,
    mut check: impl FnMut(&str, &T) -> Result<(), String>,
) -> Vec<InvalidRow> {
    let mut keys: Vec<(K, String)> = map.iter().map(|(k, v)| (order(v), k.clone())).collect();
    keys.sort();
    let mut bad = Vec::new();
    for (_, key) in keys {
        if let Some(v) = map.get(&key) {
            if let Err(reason) = check(&key, v) {
                map.remove(&key);
                bad.push(InvalidRow::new(kind, &key, reason));
            }
        }
    }
    bad
}

fn named(kind: &str, key: &str, name: &str) -> Result<(), String> {
    if key != name {
        return Err(format!("stored as {key:?} but named {name:?}"));
    }
    valid_name(kind, name).map_err(|e| e.to_string())
}

fn check_network(
    key: &str,
    n: &Network,
    vnis: &BTreeMap<u32, String>,
    subnets: &[(IpNet, String)],
) -> Result<(), String> {
    named("network", key, &n.name)?;
    if n.vni == 0 || n.vni > MAX_VNI {
        return Err(format!("VNI {} is out of range 1-{MAX_VNI}", n.vni));
    }
    if let Some(other) = vnis.get(&n.vni) {
        return Err(format!("VNI {} is already network {other}'s", n.vni));
    }
    let v4 = n.subnets.iter().filter(|s| s.addr().is_ipv4()).count();
    if n.subnets.is_empty() || v4 > 1 || n.subnets.len() - v4 > 1 {
        return Err("a network has one IPv4 and/or one IPv6 subnet".into());
    }
    for s in &n.subnets {
        let too_small = match s {
            IpNet::V4(x) => x.prefix_len() > 30,
            IpNet::V6(x) => x.prefix_len() > 126,
        };
        if s.trunc() != *s || too_small {
            return Err(format!("subnet {s} is not a network's subnet"));
        }
        if let Some((o, other)) = subnets.iter().find(|(o, _)| ipam::overlaps(o, s)) {
            return Err(format!("subnet {s} overlaps network {other}'s {o}"));
        }
    }
    let gateways_ok = n.gateways.len() == n.subnets.len()
        && n.gateways
            .iter()
            .all(|g| n.subnets.iter().any(|s| *g == ipam::gateway(s)));
    if !gateways_ok {
        return Err("its gateways are not its subnets' first addresses".into());
    }
    Ok(())
}

/// A node's advertised, tunnel and ingress addresses, each unique among nodes.
fn addresses(n: &Node) -> [Option<IpAddr>; 3] {
    [
        Some(n.advertise_addr),
        n.tunnel_addr.map(IpAddr::V4),
        n.ingress_ip,
    ]
}

fn check_node(key: &str, n: &Node, taken: &[BTreeMap<IpAddr, String>; 3]) -> Result<(), String> {
    named("node", key, &n.name)?;
    let a = n.advertise_addr;
    if !n.external && (a.is_unspecified() || a.is_multicast()) {
        return Err(format!("advertise address {a} is no node's address"));
    }
    for (t, addr) in taken.iter().zip(addresses(n)) {
        if let Some((addr, other)) = addr.and_then(|a| Some((a, t.get(&a)?))) {
            return Err(format!("address {addr} is already node {other}'s"));
        }
    }
    match n.public_key.as_deref() {
        Some(k) if decode_key(k).is_none() => {
            return Err("its public key is not a WireGuard key".into())
        }
        None if n.external => return Err("an external peer needs a public key".into()),
        _ => {}
    }
    if n.external && n.tunnel_addr.is_none() {
        return Err("an external peer needs a tunnel address".into());
    }
    if let Some(m) = &n.ingress_mac {
        if vxmesh_dataplane::parse_mac(m).is_none_or(|m| m[0] & 1 == 1) {
            return Err(format!("ingress MAC {m:?} is not a unicast MAC"));
        }
    }
    Ok(())
}

/// Whether `ip` may be an endpoint's or VIP on `net`.
fn assignable_on(net: &Network, ip: IpAddr) -> bool {
    net.subnets.iter().any(|s| ipam::assignable(s, ip))
}

fn check_service(
    key: &str,
    s: &Service,
    networks: &BTreeMap<String, Network>,
    used: &BTreeMap<String, BTreeSet<IpAddr>>,
    marks: &BTreeSet<u32>,
    ports: &BTreeSet<(String, u16)>,
) -> Result<(), String> {
    named("service", key, &s.name)?;
    if s.networks.is_empty() {
        return Err("it is on no network".into());
    }
    for n in &s.networks {
        if n == super::mesh::NETWORK || !networks.contains_key(n) {
            return Err(format!("network {n} is not one a service can be on"));
        }
    }
    if !["vip", "dnsrr"].contains(&s.endpoint_mode.as_str()) {
        return Err(format!("endpoint mode {:?} is unknown", s.endpoint_mode));
    }
    if !["rr", "wrr", "lc", "sh", "maglev"].contains(&s.scheduler.as_str()) {
        return Err(format!("scheduler {:?} is unknown", s.scheduler));
    }
    if let Some(h) = &s.health {
        super::services::parse_health(h).map_err(|e| e.to_string())?;
    }
    if s.fwmark == 0 || marks.contains(&s.fwmark) {
        return Err(format!("fwmark {} is another service's, or none", s.fwmark));
    }
    for (net, vip) in s.vips.iter().chain(&s.vips6) {
        let ok = s.networks.contains(net)
            && networks.get(net).is_some_and(|n| assignable_on(n, *vip))
            && !used.get(net).is_some_and(|u| u.contains(vip));
        if !ok {
            return Err(format!(
                "VIP {vip} on network {net} is not free in its subnets"
            ));
        }
    }
    let mut mine = BTreeSet::new();
    for p in &s.ports {
        let key = (p.proto.clone(), p.published);
        if !["tcp", "udp"].contains(&p.proto.as_str())
            || !["ingress", "host"].contains(&p.mode.as_str())
            || p.published == 0
            || p.target == 0
            || ports.contains(&key)
            || !mine.insert(key)
        {
            return Err(format!(
                "published port {}/{} is malformed or already published",
                p.published, p.proto
            ));
        }
    }
    Ok(())
}

/// An id the agent may name interfaces and files after.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_endpoint(
    key: &str,
    e: &Endpoint,
    networks: &BTreeMap<String, Network>,
    nodes: &BTreeMap<String, Node>,
    used: &BTreeMap<String, BTreeSet<IpAddr>>,
    macs: &BTreeSet<(String, String)>,
) -> Result<(), String> {
    if key != e.id || !valid_id(&e.id) {
        return Err(format!(
            "id {:?} (stored as {key:?}) is not 1-64 letters, digits, '-', '_' or '.'",
            e.id
        ));
    }
    let net = networks
        .get(&e.network)
        .ok_or_else(|| format!("network {} does not exist (or was left out)", e.network))?;
    if !nodes.contains_key(&e.node) {
        return Err(format!("node {} does not exist (or was left out)", e.node));
    }
    if e.ifname.is_empty() || e.ifname.len() > 15 || e.ifname.contains(['/', ' ']) {
        return Err(format!("interface name {:?} is not valid", e.ifname));
    }
    if e.ips.is_empty() {
        return Err("it has no address".into());
    }
    let taken = used.get(&e.network);
    for ip in &e.ips {
        if !assignable_on(net, *ip) || taken.is_some_and(|u| u.contains(ip)) {
            return Err(format!(
                "address {ip} is not free in network {}'s subnets",
                e.network
            ));
        }
    }
    let mac_ok = vxmesh_dataplane::parse_mac(&e.mac).is_some_and(|m| m[0] & 1 == 0);
    if !mac_ok || macs.contains(&(e.network.clone(), e.mac.to_ascii_lowercase())) {
        return Err(format!(
            "MAC {:?} is not a unicast MAC free on network {}",
            e.mac, e.network
        ));
    }
    Ok(())
}

fn check_policy(key: &str, p: &Policy, nodes: &BTreeMap<String, Node>) -> Result<(), String> {
    if key != p.id || !valid_id(&p.id) {
        return Err(format!("id {:?} (stored as {key:?}) is not valid", p.id));
    }
    if !nodes.contains_key(&p.node) {
        return Err(format!("node {} does not exist (or was left out)", p.node));
    }
    if !["tcp", "udp"].contains(&p.proto.as_str())
        || p.port == 0
        || !["accept", "drop", "reject"].contains(&p.action.as_str())
    {
        return Err("its protocol, port or action is not valid".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
