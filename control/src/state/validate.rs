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
use super::model::{ClusterState, Endpoint, Network, Node, Policy, Service};
use super::ops::{decode_key, valid_name, MAX_VNI};
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
    used.entry(super::ingress::NETWORK.to_string())
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
        if n == super::ingress::NETWORK || !networks.contains_key(n) {
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
mod tests {
    use super::*;
    use crate::state::ingress::{self, PolicySpec};
    use crate::state::services::{self, ServiceSpec};
    use crate::state::{ipam, ops, EndpointSpec, NetworkSpec};

    /// A cluster as the operations build it: two nodes (one external),
    /// plain, encrypted and dual-stack networks, services with VIPs and
    /// published ports (so ingress tasks), endpoints and a policy.
    fn cluster() -> ClusterState {
        let mut st = ClusterState::default();
        for (i, n) in ["n1", "n2"].iter().enumerate() {
            let mut node = Node::new(n, format!("192.0.2.{}", i + 1).parse().unwrap());
            node.public_key = Some(ops::encode_key(&[i as u8 + 1; 32]));
            ops::upsert_node(&mut st, node).unwrap();
        }
        let mut ext = Node::new("ext", "198.51.100.9".parse().unwrap());
        ext.public_key = Some(ops::encode_key(&[9; 32]));
        ext.tunnel_addr = Some("100.64.9.9".parse().unwrap());
        ops::add_external_node(&mut st, ext).unwrap();
        let net = |name: &str, subnets: &[&str], encrypted| NetworkSpec {
            name: name.into(),
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
            encrypted,
            ..Default::default()
        };
        ops::create_network(&mut st, &net("a", &[], false)).unwrap();
        ops::create_network(&mut st, &net("sec", &["10.44.0.0/24"], true)).unwrap();
        ops::create_network(&mut st, &net("d", &["10.50.0.0/24", "fd00:50::/64"], false)).unwrap();
        services::create_service(
            &mut st,
            &ServiceSpec {
                name: "web".into(),
                networks: vec!["a".into(), "d".into()],
                publish: vec!["8080:80".into()],
                health: Some("tcp:80".into()),
                ..Default::default()
            },
        )
        .unwrap();
        services::create_service(
            &mut st,
            &ServiceSpec {
                name: "dns".into(),
                networks: vec!["sec".into()],
                endpoint_mode: Some("dnsrr".into()),
                ..Default::default()
            },
        )
        .unwrap();
        for (i, (net, node, svc)) in [
            ("a", "n1", Some("web")),
            ("d", "n2", Some("web")),
            ("sec", "n1", Some("dns")),
            ("sec", "n2", None),
        ]
        .into_iter()
        .enumerate()
        {
            let spec = EndpointSpec {
                network: net.into(),
                netns: format!("c{i}"),
                service: svc.map(Into::into),
                ..Default::default()
            };
            ops::create_endpoint(&mut st, &spec, node, format!("{i:016x}"), ipam::random_mac)
                .unwrap();
            ingress::sync_tasks(&mut st).unwrap();
        }
        ingress::add_policy(
            &mut st,
            &PolicySpec {
                node: "n1".into(),
                port: "8080".into(),
                action: "drop".into(),
                from: Some("203.0.113.0/24".into()),
                audit: false,
            },
        )
        .unwrap();
        st
    }

    /// Nothing the write path builds is taken for invalid.
    #[test]
    fn what_the_operations_write_is_valid() {
        let mut st = cluster();
        assert!(st.endpoints.values().any(|e| ingress::task_of(e).is_some()));
        let before = st.clone();
        assert_eq!(sanitize(&mut st), vec![]);
        assert_eq!(st, before);
    }

    fn keys<T>(m: &BTreeMap<String, T>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    /// Two networks with one VNI, or overlapping subnets: the older stays, the
    /// other (and its endpoints) goes, whichever order the rows come in.
    #[test]
    fn of_two_clashing_networks_the_older_wins() {
        let mut st = cluster();
        let a = st.networks["a"].clone();
        let mut dup = a.clone();
        dup.name = "b".into();
        dup.subnets = vec!["10.99.0.0/24".parse().unwrap()];
        dup.gateways = vec!["10.99.0.1".parse().unwrap()];
        // written later than a, but with a name that sorts first
        dup.created = a.created + 1;
        let mut dup0 = dup.clone();
        dup0.name = "0b".into();
        let mut overlap = dup.clone();
        overlap.name = "c".into();
        overlap.vni = 4242;
        overlap.subnets = vec!["10.44.0.128/25".parse().unwrap()];
        overlap.gateways = vec!["10.44.0.129".parse().unwrap()];
        st.networks.insert("0b".into(), dup0);
        st.networks.insert("c".into(), overlap);
        let mut ep = st
            .endpoints
            .values()
            .find(|e| e.network == "a")
            .unwrap()
            .clone();
        ep.id = "00000000000000ee".into();
        ep.network = "0b".into();
        ep.ips = vec!["10.99.0.5".parse().unwrap()];
        st.endpoints.insert(ep.id.clone(), ep);
        let bad = sanitize(&mut st);
        let what: Vec<(&str, &str)> = bad
            .iter()
            .map(|r| (r.kind.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(
            what,
            [
                ("network", "0b"),
                ("network", "c"),
                ("endpoint", "00000000000000ee")
            ],
            "{bad:#?}"
        );
        assert!(bad[0].reason.contains("network a's"), "{bad:?}");
        assert!(bad[1].reason.contains("overlaps network sec"), "{bad:?}");
        assert_eq!(st.networks["a"], a);
        assert_eq!(keys(&st.networks), ["a", "d", "ingress", "sec"]);
    }

    /// Each kind of row the write path refuses is left out, with a reason, and
    /// nothing else is.
    #[test]
    fn rows_the_write_path_refuses_are_left_out() {
        let base = cluster();
        type Spoil = Box<dyn Fn(&mut ClusterState) -> (&'static str, String)>;
        let ep_on = |net: &'static str| {
            move |st: &ClusterState| {
                st.endpoints
                    .values()
                    .find(|e| e.network == net && e.owner.is_none())
                    .unwrap()
                    .clone()
            }
        };
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "VNI out of range",
                Box::new(|st: &mut ClusterState| {
                    st.networks.get_mut("sec").unwrap().vni = MAX_VNI + 1;
                    ("network", "sec".into())
                }),
            ),
            (
                "VNI zero",
                Box::new(|st: &mut ClusterState| {
                    st.networks.get_mut("d").unwrap().vni = 0;
                    ("network", "d".into())
                }),
            ),
            (
                "name unlike key",
                Box::new(|st: &mut ClusterState| {
                    st.networks.get_mut("d").unwrap().name = "e".into();
                    ("network", "d".into())
                }),
            ),
            (
                "bad network name",
                Box::new(|st: &mut ClusterState| {
                    let mut n = st.networks["d"].clone();
                    n.name = "../x".into();
                    n.vni = 999;
                    n.subnets = vec!["10.98.0.0/24".parse().unwrap()];
                    n.gateways = vec!["10.98.0.1".parse().unwrap()];
                    st.networks.insert(n.name.clone(), n);
                    ("network", "../x".into())
                }),
            ),
            (
                "subnet with host bits",
                Box::new(|st: &mut ClusterState| {
                    let n = st.networks.get_mut("sec").unwrap();
                    n.subnets = vec!["10.44.0.1/24".parse().unwrap()];
                    ("network", "sec".into())
                }),
            ),
            (
                "node address unspecified",
                Box::new(|st: &mut ClusterState| {
                    st.nodes.get_mut("n2").unwrap().advertise_addr = "0.0.0.0".parse().unwrap();
                    ("node", "n2".into())
                }),
            ),
            (
                "node address taken",
                Box::new(|st: &mut ClusterState| {
                    st.nodes.get_mut("n2").unwrap().advertise_addr = "192.0.2.1".parse().unwrap();
                    ("node", "n2".into())
                }),
            ),
            (
                "tunnel address taken",
                Box::new(|st: &mut ClusterState| {
                    let t = st.nodes["n1"].tunnel_addr;
                    st.nodes.get_mut("n2").unwrap().tunnel_addr = t;
                    ("node", "n2".into())
                }),
            ),
            (
                "bad public key",
                Box::new(|st: &mut ClusterState| {
                    st.nodes.get_mut("n2").unwrap().public_key = Some("nope".into());
                    ("node", "n2".into())
                }),
            ),
            (
                "endpoint id",
                Box::new(move |st: &mut ClusterState| {
                    let mut e = ep_on("sec")(st);
                    st.endpoints.remove(&e.id);
                    e.id = "x/../../y".into();
                    st.endpoints.insert(e.id.clone(), e);
                    ("endpoint", "x/../../y".into())
                }),
            ),
            (
                "endpoint on a missing network",
                Box::new(move |st: &mut ClusterState| {
                    let mut e = ep_on("sec")(st);
                    e.network = "gone".into();
                    let id = e.id.clone();
                    st.endpoints.insert(id.clone(), e);
                    ("endpoint", id)
                }),
            ),
            (
                "endpoint on a missing node",
                Box::new(move |st: &mut ClusterState| {
                    let mut e = ep_on("sec")(st);
                    e.node = "gone".into();
                    let id = e.id.clone();
                    st.endpoints.insert(id.clone(), e);
                    ("endpoint", id)
                }),
            ),
            (
                "endpoint address outside",
                Box::new(move |st: &mut ClusterState| {
                    let mut e = ep_on("sec")(st);
                    e.ips = vec!["10.45.0.9".parse().unwrap()];
                    let id = e.id.clone();
                    st.endpoints.insert(id.clone(), e);
                    ("endpoint", id)
                }),
            ),
            (
                "endpoint address twice",
                Box::new(move |st: &mut ClusterState| {
                    let first = ep_on("sec")(st);
                    let mut e = first.clone();
                    e.id = "ffffffffffffffff".into();
                    e.netns = "other".into();
                    e.mac = "02:00:00:00:00:99".into();
                    e.created = first.created + 1;
                    st.endpoints.insert(e.id.clone(), e);
                    ("endpoint", "ffffffffffffffff".into())
                }),
            ),
            (
                "endpoint multicast MAC",
                Box::new(move |st: &mut ClusterState| {
                    let mut e = ep_on("sec")(st);
                    e.mac = "01:00:5e:00:00:01".into();
                    let id = e.id.clone();
                    st.endpoints.insert(id.clone(), e);
                    ("endpoint", id)
                }),
            ),
            (
                "endpoint ifname",
                Box::new(move |st: &mut ClusterState| {
                    let mut e = ep_on("sec")(st);
                    e.ifname = "a-name-far-too-long".into();
                    let id = e.id.clone();
                    st.endpoints.insert(id.clone(), e);
                    ("endpoint", id)
                }),
            ),
            (
                "service fwmark twice",
                Box::new(|st: &mut ClusterState| {
                    let (m, c) = (st.services["dns"].fwmark, st.services["dns"].created);
                    let s = st.services.get_mut("web").unwrap();
                    s.fwmark = m;
                    s.created = c + 1;
                    ("service", "web".into())
                }),
            ),
            (
                "service scheduler",
                Box::new(|st: &mut ClusterState| {
                    st.services.get_mut("dns").unwrap().scheduler = "fastest".into();
                    ("service", "dns".into())
                }),
            ),
            (
                "policy action",
                Box::new(|st: &mut ClusterState| {
                    st.policies.values_mut().next().unwrap().action = "maybe".into();
                    ("policy", "1".into())
                }),
            ),
        ];
        for (what, spoil) in cases {
            let mut st = base.clone();
            let (kind, key) = spoil(&mut st);
            let bad = sanitize(&mut st);
            assert!(
                bad.first().is_some_and(|r| r.kind == kind && r.key == key),
                "{what}: {bad:#?}"
            );
            // dependants of a node or network left out go with it; nothing else
            for r in &bad[1..] {
                assert!(
                    kind == "network" || kind == "node" || kind == "service",
                    "{what}: more than the row left out: {bad:#?}"
                );
                assert!(
                    r.reason.contains("left out") || r.kind == "service",
                    "{what}: {r:?}"
                );
            }
            let again = sanitize(&mut st.clone());
            assert!(again.is_empty(), "{what}: what is left is valid: {again:?}");
        }
    }

    /// Every row of `st`, as the stores hold them.
    fn rows(st: &ClusterState) -> Vec<(&'static str, String, serde_json::Value)> {
        fn of<T: serde::Serialize>(
            kind: &'static str,
            m: &BTreeMap<String, T>,
        ) -> Vec<(&'static str, String, serde_json::Value)> {
            m.iter()
                .map(|(k, v)| (kind, k.clone(), serde_json::to_value(v).unwrap()))
                .collect()
        }
        [
            of("network", &st.networks),
            of("node", &st.nodes),
            of("service", &st.services),
            of("endpoint", &st.endpoints),
            of("policy", &st.policies),
        ]
        .concat()
    }

    proptest::proptest! {
        /// Rows copied under new keys and with fields overwritten by values
        /// taken from other rows (the clashes a hand edit makes) or by junk:
        /// reading never panics, what is kept is valid and free of clashes,
        /// and the outcome does not depend on the order rows are read in.
        #[test]
        fn whatever_the_rows_what_is_kept_is_valid(
            edits in proptest::collection::vec(
                (0usize..64, 0usize..64, 0usize..16, proptest::bool::ANY), 0..12)
        ) {
            let mut rows = rows(&cluster());
            let junk = [
                serde_json::json!(0), serde_json::json!(16_777_216), serde_json::json!("x"),
                serde_json::json!(["10.44.0.0/25"]), serde_json::json!(null),
                serde_json::json!("0.0.0.0"), serde_json::json!([]), serde_json::json!(777),
                serde_json::json!("10.44.0.77"),
            ];
            for (a, b, f, copy) in edits {
                let (a, b) = (a % rows.len(), b % rows.len());
                if copy {
                    let mut r = rows[a].clone();
                    // a key of its own: a store holds one row per key
                    r.1 = format!("{}-copy{}", r.1, rows.len());
                    // named as its key, so only its clashes can leave it out
                    let field = if matches!(r.0, "endpoint" | "policy") { "id" } else { "name" };
                    r.2[field] = r.1.clone().into();
                    if r.0 == "network" && f % 2 == 1 {
                        // a VNI of its own: it clashes by its subnets alone
                        r.2["vni"] = (1000 + rows.len()).into();
                    }
                    rows.push(r);
                    continue;
                }
                let Some(field) = rows[b].2.as_object()
                    .and_then(|o| o.keys().nth(f % o.len().max(1)).cloned()) else { continue };
                let value = if rows[a].0 == rows[b].0 && f % 3 != 0 {
                    rows[a].2.get(&field).cloned().unwrap_or(serde_json::Value::Null)
                } else {
                    junk[f % junk.len()].clone()
                };
                rows[b].2[&field] = value;
            }
            let text: Vec<(&str, String, String)> = rows
                .iter()
                .map(|(k, key, v)| (*k, key.clone(), v.to_string()))
                .collect();
            let read = |it: &mut dyn Iterator<Item = &(&'static str, String, String)>| {
                crate::store::Snapshot::from_rows(
                    1,
                    it.map(|(k, key, v)| (*k, key.clone(), v.as_str())).collect::<Vec<_>>(),
                )
            };
            let snap = read(&mut text.iter());
            let mut st = snap.state.clone();
            proptest::prop_assert!(sanitize(&mut st).is_empty());
            let vnis: BTreeSet<u32> = st.networks.values().map(|n| n.vni).collect();
            proptest::prop_assert_eq!(vnis.len(), st.networks.len());
            let subnets: Vec<IpNet> = st.networks.values().flat_map(|n| n.subnets.clone()).collect();
            for (i, x) in subnets.iter().enumerate() {
                for y in &subnets[i + 1..] {
                    proptest::prop_assert!(!ipam::overlaps(x, y), "{} and {}", x, y);
                }
            }
            for e in st.endpoints.values() {
                proptest::prop_assert!(st.networks.contains_key(&e.network));
                proptest::prop_assert!(st.nodes.contains_key(&e.node));
            }
            let kept = rows.len() - snap.invalid.len();
            let total = st.networks.len() + st.nodes.len() + st.services.len()
                + st.endpoints.len() + st.policies.len();
            proptest::prop_assert_eq!(kept, total, "every row is kept or listed");
            let reversed = read(&mut text.iter().rev());
            proptest::prop_assert_eq!(&reversed.state, &snap.state);
            proptest::prop_assert_eq!(&reversed.invalid, &snap.invalid);
        }
    }
}
