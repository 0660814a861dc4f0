//! The routing mesh's fixed names and how its objects are told apart: the
//! `ingress` network, its tasks' interfaces, and the ports a node answers.
//! Read-only and at the bottom of `state` (above the model), so networks,
//! IPAM, services and the checks of stored rows can all ask "is this the
//! mesh's?" without depending on the operations that keep the mesh in step
//! ([`super::ingress`]).

use super::model::{ClusterState, Endpoint, Network, PublishedPort, Service};

/// The network every published port is balanced over, as in Docker Swarm.
pub const NETWORK: &str = "ingress";
/// Its subnet when nothing else took it (Docker's default too).
pub const DEFAULT_SUBNET: &str = "10.255.0.0/16";
/// Its IPv6 subnet (a ULA /64), so published ports answer over IPv6 too.
pub const DEFAULT_SUBNET6: &str = "fdff:ffff:ffff:ffff::/64";
/// The name of a task's interface on the ingress network.
pub const TASK_IFNAME: &str = "ingress0";
/// `owner` of a task's ingress endpoint: this prefix and the task's id.
pub(crate) const OWNER_PREFIX: &str = "ingress:";

/// The ingress network's subnet, where every node's sandbox and tasks' ingress
/// interfaces take addresses.
pub fn network(st: &ClusterState) -> Option<&Network> {
    st.networks.get(NETWORK)
}

/// A stable id for a task's ingress endpoint, differing from the task's own in
/// its first 12 characters (the TAP's name).
pub(crate) fn endpoint_id(task: &str) -> String {
    // FNV-1a: stable across runs and versions, unlike std's hasher
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.bytes().chain(*b"/ingress") {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The task an ingress endpoint belongs to.
pub fn task_of(ep: &Endpoint) -> Option<&str> {
    ep.owner.as_deref()?.strip_prefix(OWNER_PREFIX)
}

/// The ports this node answers: every `ingress`-mode port while its ingress is
/// on, and `host`-mode ports of services with a task here.
pub fn published_here<'a>(
    st: &'a ClusterState,
    node: &'a str,
) -> impl Iterator<Item = (&'a Service, &'a PublishedPort)> + 'a {
    let on = st.nodes.get(node).is_some_and(|n| n.ingress);
    // one pass over the endpoints, not one per service (issue 21)
    let local: rustc_hash::FxHashSet<&str> = st
        .endpoints
        .values()
        .filter(|e| e.node == node)
        .filter_map(|e| e.service.as_deref())
        .collect();
    st.services.values().flat_map(move |svc| {
        let local_task = local.contains(svc.name.as_str());
        svc.ports
            .iter()
            .filter(move |p| if p.mode == "host" { local_task } else { on })
            .map(move |p| (svc, p))
    })
}
