//! The routing mesh's share of the state: the built-in `ingress` network, each
//! node's sandbox address on it, the ingress interfaces of tasks whose service
//! publishes ports, and per-node access policies.

use super::error::StateError;
use super::ipam;
use super::mesh::{endpoint_id, OWNER_PREFIX};
use super::model::{unix_now, ClusterState, Node, Policy};
use super::networks::{self, EndpointSpec};

pub use super::mesh::{network, task_of, DEFAULT_SUBNET, DEFAULT_SUBNET6, NETWORK, TASK_IFNAME};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Creates the `ingress` network if the cluster has none yet (on 10.255.0.0/16,
/// or a free subnet of the default pool when a user network took that).
pub fn ensure_network(st: &mut ClusterState) -> Result<(), StateError> {
    if st.networks.contains_key(NETWORK) {
        return Ok(());
    }
    let free = |subnet: &str| {
        let preferred: IpNet = subnet.parse().expect("constant subnet");
        let taken = st
            .networks
            .values()
            .any(|n| n.subnets.iter().any(|s| ipam::overlaps(s, &preferred)));
        (!taken).then_some(preferred)
    };
    // IPv4 from the default pool when its subnet is taken; IPv6 only when free
    let used: Vec<IpNet> = st
        .networks
        .values()
        .flat_map(|n| n.subnets.iter().copied())
        .collect();
    let mut subnets: Vec<IpNet> = free(DEFAULT_SUBNET)
        .or_else(|| ipam::allocate_subnet(&used))
        .into_iter()
        .collect();
    subnets.extend(free(DEFAULT_SUBNET6));
    let spec = networks::NetworkSpec {
        name: NETWORK.into(),
        subnets,
        ..Default::default()
    };
    let mut net = networks::create_network(st, &spec)?;
    net.attachable = false;
    st.networks.insert(net.name.clone(), net);
    Ok(())
}

/// Gives a vxmesh node its sandbox address and MAC on the ingress network.
pub fn assign_node(st: &mut ClusterState, node: &mut Node) -> Result<(), StateError> {
    if node.external || (node.ingress_ip.is_some() && node.ingress_mac.is_some()) {
        return Ok(());
    }
    ensure_network(st)?;
    let net = st
        .networks
        .get(NETWORK)
        .ok_or_else(|| StateError::NotFound("the ingress network is missing".into()))?;
    let subnet = *net
        .subnets
        .iter()
        .find(|s| s.addr().is_ipv4())
        .ok_or_else(|| StateError::Invalid("the ingress network has no IPv4 subnet".into()))?;
    let mut used = ipam::used_addresses(st, NETWORK);
    used.remove(
        &node
            .ingress_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
    );
    let ip = ipam::allocate_ip(&subnet, &used).ok_or_else(|| {
        ipam::exhausted(
            &format!("the ingress network's addresses {subnet}"),
            ipam::assignable_count(&subnet),
            "stop publishing ports of services that no longer need them \
             (vxmesh service update NAME --publish-rm PORT)",
        )
    })?;
    node.ingress_ip = Some(ip);
    node.ingress_mac = Some(vxmesh_dataplane::mac_to_string(&ipam::random_mac()));
    Ok(())
}

/// Makes every task of a service that publishes ports have an interface on the
/// ingress network (in its own namespace, on its node), and no other task have
/// one. Run by every operation that changes tasks or published ports, in the
/// same transaction.
pub fn sync_tasks(st: &mut ClusterState) -> Result<(), StateError> {
    let publishing: BTreeSet<&str> = st
        .services
        .values()
        .filter(|s| !s.ports.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    let wanted: Vec<super::model::Endpoint> = st
        .endpoints
        .values()
        .filter(|e| e.network != NETWORK)
        .filter(|e| e.service.as_deref().is_some_and(|s| publishing.contains(s)))
        .cloned()
        .collect();
    let keep: BTreeSet<String> = wanted.iter().map(|e| e.id.clone()).collect();
    st.endpoints
        .retain(|_, e| task_of(e).is_none_or(|t| keep.contains(t)));
    if wanted.is_empty() {
        return Ok(());
    }
    ensure_network(st)?;
    for task in wanted {
        if st
            .endpoints
            .values()
            .any(|e| task_of(e) == Some(task.id.as_str()))
        {
            continue;
        }
        let spec = EndpointSpec {
            network: NETWORK.into(),
            netns: task.netns.clone(),
            ifname: Some(TASK_IFNAME.into()),
            service: task.service.clone(),
            owner: Some(format!("{OWNER_PREFIX}{}", task.id)),
            ..Default::default()
        };
        networks::create_endpoint(
            st,
            &spec,
            &task.node,
            endpoint_id(&task.id),
            ipam::random_mac,
        )
        .map_err(|e| {
            StateError::Conflict(format!(
                "task {} cannot join the ingress network: {e} (or stop publishing ports of \
                 services that no longer need them: vxmesh service update NAME --publish-rm PORT)",
                task.id
            ))
        })?;
    }
    Ok(())
}

/// `node update NAME --ingress on|off`.
pub fn set_node_ingress(st: &mut ClusterState, name: &str, on: bool) -> Result<Node, StateError> {
    let n = st.nodes.get_mut(name).ok_or_else(|| {
        StateError::NotFound(format!("no node named {name} (vxmesh node ls lists them)"))
    })?;
    n.ingress = on;
    Ok(n.clone())
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PolicySpec {
    pub node: String,
    /// `PORT[/tcp|/udp]`.
    pub port: String,
    pub action: String,
    #[serde(default)]
    pub from: Option<String>,
    /// Log what it would do, do nothing (`--audit`).
    #[serde(default)]
    pub audit: bool,
}

pub fn add_policy(st: &mut ClusterState, spec: &PolicySpec) -> Result<Policy, StateError> {
    if !st.nodes.contains_key(&spec.node) {
        return Err(StateError::NotFound(format!(
            "no node named {} (vxmesh node ls lists them)",
            spec.node
        )));
    }
    let bad_port = || {
        StateError::Invalid(format!(
            "--port {:?}: use PORT[/tcp|/udp], e.g. 8080 or 53/udp",
            spec.port
        ))
    };
    let (num, proto) = match spec.port.split_once('/') {
        Some((n, p @ ("tcp" | "udp"))) => (n, p),
        Some(_) => return Err(bad_port()),
        None => (spec.port.as_str(), "tcp"),
    };
    let port: u16 = num.parse().ok().filter(|p| *p > 0).ok_or_else(bad_port)?;
    if !["accept", "drop", "reject"].contains(&spec.action.as_str()) {
        return Err(StateError::Invalid(format!(
            "--action {:?}: use drop, reject or accept",
            spec.action
        )));
    }
    let from = match spec.from.as_deref() {
        None | Some("") => None,
        Some(f) => {
            let net: IpNet = f
                .parse()
                .or_else(|_| f.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    StateError::Invalid(format!(
                        "--from {f:?} is not a CIDR, e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/48"
                    ))
                })?;
            Some(net.trunc())
        }
    };
    if let Some(p) = st
        .policies
        .values()
        .find(|p| p.node == spec.node && p.proto == proto && p.port == port && p.from == from)
    {
        return Err(StateError::Conflict(format!(
            "policy {} already covers {port}/{proto} on {} from {}: remove it first (vxmesh policy rm {})",
            p.id,
            spec.node,
            from.map_or("anywhere".into(), |f| f.to_string()),
            p.id
        )));
    }
    let next = st
        .policies
        .keys()
        .filter_map(|k| k.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let p = Policy {
        id: next.to_string(),
        node: spec.node.clone(),
        proto: proto.into(),
        port,
        from,
        action: spec.action.clone(),
        audit: spec.audit,
        created: unix_now(),
    };
    st.policies.insert(p.id.clone(), p.clone());
    Ok(p)
}

pub fn remove_policy(st: &mut ClusterState, id: &str) -> Result<Policy, StateError> {
    st.policies.remove(id).ok_or_else(|| {
        StateError::NotFound(format!(
            "no policy with id {id} (vxmesh policy ls lists them)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ops;
    use crate::state::services::{self, ServiceSpec};

    fn cluster() -> ClusterState {
        let mut st = ClusterState::default();
        for (n, a) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2")] {
            ops::upsert_node(&mut st, Node::new(n, a.parse().unwrap())).unwrap();
        }
        networks::create_network(
            &mut st,
            &networks::NetworkSpec {
                name: "app".into(),
                ..Default::default()
            },
        )
        .unwrap();
        st
    }

    #[test]
    fn nodes_get_sandbox_addresses_on_the_builtin_network() {
        let st = cluster();
        let net = network(&st).unwrap();
        assert_eq!(net.subnets[0].to_string(), DEFAULT_SUBNET);
        assert!(!net.attachable);
        let a = st.nodes["n1"].ingress_ip.unwrap();
        let b = st.nodes["n2"].ingress_ip.unwrap();
        assert_ne!(a, b);
        assert!(net.subnets[0].contains(&a));
        assert!(st.nodes["n1"].ingress_mac.is_some());
    }

    #[test]
    fn tasks_join_ingress_while_their_service_publishes() {
        let mut st = cluster();
        services::create_service(
            &mut st,
            &ServiceSpec {
                name: "web".into(),
                networks: vec!["app".into()],
                publish: vec!["8080:80".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let spec = EndpointSpec {
            network: "app".into(),
            netns: "c1".into(),
            service: Some("web".into()),
            ..Default::default()
        };
        networks::create_endpoint(&mut st, &spec, "n2", "t1".into(), ipam::random_mac).unwrap();
        sync_tasks(&mut st).unwrap();
        let ing: Vec<_> = st.endpoints_on(NETWORK).cloned().collect();
        assert_eq!(ing.len(), 1);
        assert_eq!(ing[0].node, "n2");
        assert_eq!(ing[0].netns, "c1");
        assert_eq!(task_of(&ing[0]), Some("t1"));
        let sandboxes: Vec<_> = st.nodes.values().filter_map(|n| n.ingress_ip).collect();
        assert!(
            !sandboxes.contains(&ing[0].ips[0]),
            "no clash with sandboxes"
        );
        // idempotent
        sync_tasks(&mut st).unwrap();
        assert_eq!(st.endpoints_on(NETWORK).count(), 1);
        // the last port goes: so does the ingress interface
        services::update_ports(&mut st, "web", &[], &["8080".into()]).unwrap();
        sync_tasks(&mut st).unwrap();
        assert_eq!(st.endpoints_on(NETWORK).count(), 0);
    }

    #[test]
    fn an_audit_policy_is_stored_as_such_and_old_rows_load_enforced() {
        let mut st = cluster();
        let spec = PolicySpec {
            node: "n1".into(),
            port: "8123".into(),
            action: "drop".into(),
            from: None,
            audit: true,
        };
        let p = add_policy(&mut st, &spec).unwrap();
        assert!(p.audit);
        let row = serde_json::to_value(&p).unwrap();
        assert_eq!(row["audit"], true);
        // a row written before `audit` existed
        let mut old = row.clone();
        old.as_object_mut().unwrap().remove("audit");
        let back: Policy = serde_json::from_value(old).unwrap();
        assert!(!back.audit, "enforced");
        // and a request without it adds an enforced one
        let req: PolicySpec = serde_json::from_value(
            serde_json::json!({"node": "n1", "port": "9000", "action": "reject"}),
        )
        .unwrap();
        assert!(!add_policy(&mut st, &req).unwrap().audit);
    }

    #[test]
    fn policies_are_checked_and_survive_services() {
        let mut st = cluster();
        let spec = |port: &str, action: &str, from: Option<&str>| PolicySpec {
            node: "n1".into(),
            port: port.into(),
            action: action.into(),
            from: from.map(String::from),
            audit: false,
        };
        let p = add_policy(&mut st, &spec("8123", "drop", None)).unwrap();
        assert!(!p.audit);
        assert_eq!((p.proto.as_str(), p.port), ("tcp", 8123));
        let q = add_policy(&mut st, &spec("53/udp", "reject", Some("10.1.2.3/8"))).unwrap();
        assert_eq!(q.from.unwrap().to_string(), "10.0.0.0/8");
        assert_ne!(p.id, q.id);
        for (port, action, from) in [
            ("x", "drop", None),
            ("80/sctp", "drop", None),
            ("0", "drop", None),
            ("80", "allow", None),
            ("80", "drop", Some("not-a-cidr")),
            ("8123", "accept", None),
        ] {
            assert!(add_policy(&mut st, &spec(port, action, from)).is_err());
        }
        let mut other = spec("80", "drop", None);
        other.node = "nope".into();
        assert!(add_policy(&mut st, &other).is_err());
        services::create_service(
            &mut st,
            &ServiceSpec {
                name: "web".into(),
                networks: vec!["app".into()],
                publish: vec!["8123:80".into()],
                ..Default::default()
            },
        )
        .unwrap();
        services::remove_service(&mut st, "web").unwrap();
        assert_eq!(st.policies.len(), 2);
        remove_policy(&mut st, &p.id).unwrap();
        assert!(remove_policy(&mut st, &p.id).is_err());
    }
}
