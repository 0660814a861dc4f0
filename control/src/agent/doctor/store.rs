//! The store: reachable in time, its rows valid, every node's key and address
//! known, every node heartbeating.

use super::Check;
use crate::agent::Agent;
use crate::state::ClusterState;
use std::time::{Duration, Instant};

/// How long the store has to answer one read.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The store's checks, and the state the other checks work from: the one just
/// read, or the last the agent applied when the store cannot be read.
pub async fn check(a: &Agent) -> (Vec<Check>, ClusterState) {
    let mut out = Vec::new();
    let started = Instant::now();
    let store = a.store.describe();
    let loaded = tokio::time::timeout(TIMEOUT, a.load()).await;
    let st = match loaded {
        Ok(Ok(snap)) => {
            out.push(Check::ok(
                "store.reachable",
                format!(
                    "{store} answered in {} ms (revision {})",
                    started.elapsed().as_millis(),
                    snap.revision
                ),
            ));
            out.push(rows(&snap.invalid));
            snap.state
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("{store} did not answer in {} s", TIMEOUT.as_secs()),
            };
            out.push(Check::fail(
                "store.reachable",
                why,
                format!(
                    "start the store or mend the way to it: for etcd, `etcdctl --endpoints URL endpoint health` from this node; for SQLite, the file {store} names must be readable and writable, and not locked by another process. Meanwhile the overlay forwards on the last state read and nothing can be changed",
                ),
            ));
            // the doctor runs rarely: a copy of the last state read is cheap enough
            (*a.last_state()).clone()
        }
    };
    out.extend(nodes(a, &st));
    (out, st)
}

fn rows(invalid: &[crate::state::validate::InvalidRow]) -> Check {
    if invalid.is_empty() {
        return Check::ok("store.rows", "every row is valid");
    }
    let list: Vec<String> = invalid
        .iter()
        .map(|r| format!("{} {}: {}", r.kind, r.key, r.reason))
        .collect();
    Check::fail(
        "store.rows",
        format!(
            "{} invalid row(s), left out of the state on every node: {}",
            invalid.len(),
            list.join("; ")
        ),
        "fix or remove these rows in the store (written by hand, or by another version); `vxmesh stats` lists them too",
    )
}

/// Every vxmesh node has a WireGuard key and a usable address, and beats.
fn nodes(a: &Agent, st: &ClusterState) -> Vec<Check> {
    let mut out = Vec::new();
    let (down, ages) = a.liveness_view();
    let mut bad = Vec::new();
    for n in st.nodes.values() {
        let key = n
            .public_key
            .as_deref()
            .and_then(crate::state::ops::decode_key);
        if key.is_none() {
            bad.push(format!("{} has no valid WireGuard public key", n.name));
        }
        if n.advertise_addr.is_unspecified() || n.advertise_addr.is_multicast() {
            bad.push(format!(
                "{} has no usable address ({})",
                n.name, n.advertise_addr
            ));
        }
        if n.tunnel_addr.is_none() && shares_encrypted(st, &n.name) {
            bad.push(format!(
                "{} has no tunnel address but is on an encrypted network",
                n.name
            ));
        }
    }
    if bad.is_empty() {
        out.push(Check::ok(
            "store.nodes",
            format!(
                "{} node(s), each with its address and WireGuard key",
                st.nodes.len()
            ),
        ));
    } else {
        out.push(Check::fail(
            "store.nodes",
            bad.join("; "),
            "start (or restart) those nodes' agents, which write their address and key at start; a node that is gone for good: vxmesh node rm NAME",
        ));
    }
    for name in &down {
        let since = ages
            .get(name)
            .map(|t| format!("{:.0} s", t.as_secs_f64()))
            .unwrap_or_else(|| "ever since this agent started".into());
        out.push(Check::fail(
            format!("node.{name}.heartbeat"),
            format!("{name}'s agent has not heartbeated for {since}: its tasks are out of every balancer"),
            format!("start the agent on {name} (or, if the node is gone for good, vxmesh node rm {name})"),
        ));
    }
    out
}

/// Whether node `name` has an endpoint on an encrypted network.
fn shares_encrypted(st: &ClusterState, name: &str) -> bool {
    st.endpoints
        .values()
        .any(|e| e.node == name && st.networks.get(&e.network).is_some_and(|n| n.encrypted))
}
