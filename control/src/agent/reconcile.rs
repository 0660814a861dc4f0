//! Following the store: every change read is applied to this node (its ports,
//! the switch's state, the nftables tables and routes, the tunnels), and the
//! state applied is kept for the loops that act between changes.

use super::endpoints::LocalPorts;
use super::{attach, egress, ingress, node_guard, switch_state, Agent};
use crate::state::{ClusterState, Endpoint};
use crate::store::Snapshot;
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use vxmesh_dataplane::PortId;

impl Agent {
    /// Follows the store and applies every change, forever. The state is read
    /// again only when the store says it changed (a watch, for etcd) or after a
    /// failed read; while the store is unreachable the worker keeps the last state
    /// it was given, and the first read that succeeds applies what changed meanwhile.
    pub async fn follow(self: Arc<Self>) {
        let mut rev = u64::MAX;
        let mut stale = true;
        loop {
            if stale {
                let t0 = std::time::Instant::now();
                let loaded = self.load().await;
                self.follow_stats.loaded(t0.elapsed());
                self.store_ok
                    .store(loaded.is_ok(), std::sync::atomic::Ordering::Relaxed);
                match loaded {
                    Ok(snap) => {
                        stale = false;
                        self.note_invalid(&snap.invalid);
                        let r = snap.revision;
                        if r != rev {
                            let t0 = std::time::Instant::now();
                            let st = &snap.state;
                            let objects = st.networks.len()
                                + st.nodes.len()
                                + st.endpoints.len()
                                + st.services.len()
                                + st.policies.len();
                            self.reconcile(snap).await;
                            self.follow_stats.reconciled(t0.elapsed(), objects);
                            rev = r;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store read failed; forwarding on the last state");
                        // the revision may have moved past what can be read:
                        // waiting for a change would return at once, so pause
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            self.housekeeping().await;
            let s = self.store.clone();
            let since = rev;
            let waited =
                tokio::task::spawn_blocking(move || s.wait_change(since, Duration::from_secs(2)))
                    .await;
            match waited {
                Ok(Ok(r)) => stale |= r != rev,
                _ => {
                    stale = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Logs the invalid rows a read found that the one before did not (each
    /// once, not at every reload), and those since fixed or removed.
    fn note_invalid(&self, now: &[crate::state::validate::InvalidRow]) {
        let Ok(mut last) = self.invalid_rows.lock() else {
            return;
        };
        if *last == now {
            return;
        }
        for r in now.iter().filter(|r| !last.contains(r)) {
            tracing::warn!(kind = %r.kind, key = %r.key, reason = %r.reason, "store row is invalid: left out of the state (fix or remove it in the store; vxmesh stats lists these)");
        }
        for r in last.iter().filter(|r| !now.contains(r)) {
            tracing::info!(kind = %r.kind, key = %r.key, "store row no longer left out");
        }
        *last = now.to_vec();
    }

    /// The state last applied (empty before the first).
    pub(super) fn last_state(&self) -> Arc<ClusterState> {
        self.last_state
            .lock()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    pub(super) fn publish_tunnels(&self, st: &ClusterState) {
        let keys = match self.keys.lock() {
            Ok(mut k) => k.active(),
            Err(_) => return,
        };
        let cfg = switch_state::tunnels(st, &self.node, keys, self.preshared);
        let peers: Vec<String> = cfg
            .peers
            .iter()
            .map(|p| format!("{}@{}", p.vtep, p.endpoint))
            .collect();
        if let Ok(mut last) = self.tunnel_peers.lock() {
            if *last != peers {
                tracing::info!(peers = ?peers, local = %cfg.local_vtep, "tunnel peers changed");
                last.clone_from(&peers);
            }
        }
        self.worker.set_tunnels(cfg);
    }

    /// Makes this node's ports and switch match `snap`.
    async fn reconcile(&self, snap: Snapshot) {
        let st = &snap.state;
        let mut ports = self.ports.lock().await;
        let gone: Vec<String> = ports
            .by_endpoint
            .iter()
            .filter(|(id, p)| {
                p.since <= snap.revision
                    && st.endpoints.get(*id).is_none_or(|e| e.node != self.node)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(ep) = self.close_port(&mut ports, &id) {
                attach::detach(&ep).await;
                tracing::info!(endpoint = %id, "endpoint removed; port closed");
            }
        }
        ports
            .failed
            .retain(|id, ep| st.endpoints.get(id) == Some(ep));
        let missing: Vec<Endpoint> = st
            .endpoints
            .values()
            .filter(|e| {
                e.node == self.node
                    && !e.awaiting_sandbox()
                    && !ports.by_endpoint.contains_key(&e.id)
                    && !ports.failed.contains_key(&e.id)
            })
            .cloned()
            .collect();
        for ep in missing {
            // An endpoint this node owns but has no port for: made by an earlier run
            // of the agent (a TAP dies with its process), so make it again.
            let Some(net) = st.networks.get(&ep.network) else {
                continue;
            };
            match attach::attach(&ep, net, self.mtus.of(net), self.worker.workers()).await {
                Ok(fd) => {
                    let port = self.add_port(&mut ports, &ep, fd, snap.revision);
                    tracing::info!(endpoint = %ep.id, port = port.0, "endpoint attached");
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep.id, error = %e, "cannot attach endpoint");
                    ports.failed.insert(ep.id.clone(), ep);
                }
            }
        }
        self.publish(st, &ports);
        drop(ports);
        self.sync_ingress_table(st).await;
        self.sync_egress(st).await;
        self.publish_tunnels(st);
        if let Ok(mut s) = self.last_state.lock() {
            *s = Arc::new(snap.state);
        }
    }

    /// Brings the nftables table in line with the ports this node publishes.
    async fn sync_ingress_table(&self, st: &ClusterState) {
        if self.sandbox.is_none() {
            return;
        }
        let want = ingress::render_table(st, &self.node, self.advertise_addr);
        let mut have = self.nft_table.lock().await;
        if *have == want {
            return;
        }
        match ingress::apply_table(&want).await {
            Ok(()) => {
                tracing::info!(table = ingress::TABLE, "ingress table applied");
                *have = want;
            }
            Err(e) => tracing::error!(error = %e, "cannot apply the ingress table"),
        }
    }

    /// Brings the egress table and routes in line with the networks.
    async fn sync_egress(&self, st: &ClusterState) {
        if self.egress.is_none() {
            return;
        }
        let guard = node_guard::guard(st, &self.services, &node_guard::own_addresses());
        let table = egress::render_table(st, &guard);
        let routes = egress::routes(st, self.mtus);
        let mut have = self.egress_applied.lock().await;
        if have.0 != table {
            match egress::apply_table(&table).await {
                Ok(()) => {
                    tracing::info!(table = egress::TABLE, "egress table applied");
                    have.0 = table;
                }
                Err(e) => tracing::error!(error = %e, "cannot apply the egress table"),
            }
        }
        egress::sync_routes(&mut have.1, &routes).await;
    }

    pub(super) fn publish(&self, st: &ClusterState, ports: &LocalPorts) {
        self.attached.store(
            ports.by_endpoint.len(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let local: FxHashMap<String, PortId> = ports
            .by_endpoint
            .iter()
            .map(|(k, v)| (k.clone(), v.port))
            .collect();
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let mut sw = switch_state::build(st, &self.node, &local, self.mtus, &down);
        sw.dns_upstream.clone_from(&self.dns_upstream);
        sw.ingress = self
            .sandbox
            .as_ref()
            .and_then(|sb| switch_state::ingress_view(st, &self.node, sb));
        if let Some(ing) = sw.ingress.as_mut() {
            ing.rate_limit.clone_from(&self.ingress_limit);
        }
        self.warn_foreign_vteps(&sw);
        sw.egress = self.egress.as_ref().map(|t| {
            let guard = if self.services.switch_guard {
                node_guard::guard(st, &self.services, &node_guard::own_addresses())
            } else {
                Default::default()
            };
            egress::view(st, &self.node, t, &local, guard)
        });
        self.worker.publish(sw);
    }

    /// Says (once per change) which VTEPs this node cannot reach because they
    /// are in the other address family: the underlay sockets are of the
    /// advertised address's family, so an IPv6 node sends no VXLAN to an IPv4
    /// node or `--peer-vtep` (and the reverse); each datagram to one counts as
    /// `tx_failed`. A cluster's nodes share one underlay family.
    fn warn_foreign_vteps(&self, sw: &vxmesh_dataplane::SwitchState) {
        let foreign = foreign_vteps(sw, self.advertise_addr);
        let Ok(mut last) = self.foreign_vteps.lock() else {
            return;
        };
        if *last != foreign && !foreign.is_empty() {
            tracing::warn!(
                vteps = ?foreign,
                underlay = %self.advertise_addr,
                "VTEPs in the other address family than this node's underlay are unreachable from here: give every node (and --peer-vtep) addresses of one family"
            );
        }
        *last = foreign;
    }
}

/// The VTEPs of plain networks in `sw` of the other address family than
/// `local`, sorted (encrypted networks' VTEPs are tunnel addresses, inside
/// WireGuard, whatever the underlay).
fn foreign_vteps(sw: &vxmesh_dataplane::SwitchState, local: IpAddr) -> Vec<IpAddr> {
    let mut foreign: Vec<IpAddr> = sw
        .networks
        .values()
        .filter(|n| !n.encrypted)
        .flat_map(|n| n.members.iter().chain(&n.static_peers))
        .filter(|a| a.is_ipv6() != local.is_ipv6())
        .copied()
        .collect();
    foreign.sort();
    foreign.dedup();
    foreign
}

#[cfg(test)]
mod tests {
    use super::foreign_vteps;
    use std::net::IpAddr;
    use vxmesh_dataplane::{NetworkView, SwitchState};

    /// An IPv6 node names the IPv4 VTEPs it cannot reach (members and static
    /// peers of plain networks), not its own family's, nor encrypted networks'
    /// tunnel addresses.
    #[test]
    fn vteps_of_the_other_family_are_found() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut sw = SwitchState::default();
        sw.networks.insert(
            1,
            NetworkView {
                vni: 1,
                members: vec![ip("2001:db8::2"), ip("192.0.2.7")],
                static_peers: vec![ip("192.0.2.9"), ip("2001:db8::9")],
                ..Default::default()
            },
        );
        sw.networks.insert(
            2,
            NetworkView {
                vni: 2,
                encrypted: true,
                members: vec![ip("100.64.0.3")],
                ..Default::default()
            },
        );
        assert_eq!(
            foreign_vteps(&sw, ip("2001:db8::1")),
            vec![ip("192.0.2.7"), ip("192.0.2.9")]
        );
        assert_eq!(
            foreign_vteps(&sw, ip("192.0.2.1")),
            vec![ip("2001:db8::2"), ip("2001:db8::9")]
        );
    }
}
