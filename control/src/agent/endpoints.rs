//! This node's endpoints: attaching one (the store's row, its interface, its
//! port in the workers) and detaching it, for the API, the Docker driver and
//! the reconcile loop. One lock ([`LocalPorts`]) serialises them, so an
//! endpoint is never half made while another call looks.

use super::{attach, snapshot, Agent, AgentError};
use crate::state::{ipam, ops, Endpoint, EndpointSpec, StateError};
use std::collections::HashMap;
use vxmesh_dataplane::PortId;

pub(super) struct LocalPort {
    pub(super) port: PortId,
    /// The endpoint as attached, to delete its (persistent) interface when it goes.
    pub(super) ep: Endpoint,
    /// The store revision it was attached at: a reconcile working from an older
    /// snapshot (taken before the API committed the endpoint, then waiting for
    /// the ports' lock) must not take it for one that is gone.
    pub(super) since: u64,
}

#[derive(Default)]
pub(super) struct LocalPorts {
    pub(super) by_endpoint: HashMap<String, LocalPort>,
    pub(super) next: u32,
    /// Endpoints whose interface could not be made, and why; not retried until
    /// they change, so one bad endpoint does not flood the log.
    pub(super) failed: HashMap<String, Endpoint>,
}

impl Agent {
    pub(super) fn add_port(
        &self,
        ports: &mut LocalPorts,
        ep: &Endpoint,
        a: attach::Attached,
        since: u64,
    ) -> PortId {
        let port = PortId(ports.next);
        ports.next += 1;
        if let Err(e) = self.worker.add_port(port, a.fds, a.offloaded) {
            tracing::error!(endpoint = %ep.id, error = %e, "cannot hand the port to the workers");
        }
        ports.by_endpoint.insert(
            ep.id.clone(),
            LocalPort {
                port,
                ep: ep.clone(),
                since,
            },
        );
        self.record_ports(ports);
        port
    }

    /// Takes endpoint `id`'s port from the workers; its interface stays until
    /// [`attach::detach`].
    pub(super) fn close_port(&self, ports: &mut LocalPorts, id: &str) -> Option<Endpoint> {
        let p = ports.by_endpoint.remove(id)?;
        self.worker.remove_port(p.port);
        self.record_ports(ports);
        Some(p.ep)
    }

    fn record_ports(&self, ports: &LocalPorts) {
        let eps: Vec<&Endpoint> = ports.by_endpoint.values().map(|p| &p.ep).collect();
        snapshot::save_ports(&self.data_dir, &eps);
    }

    /// Deletes the interfaces an earlier run left for endpoints the store no
    /// longer gives this node (removed while the agent was down or killed).
    pub async fn remove_stale_interfaces(&self) {
        let recorded = snapshot::recorded_ports(&self.data_dir);
        if recorded.is_empty() {
            return;
        }
        let Ok(snap) = self.load().await else {
            tracing::warn!("store unreachable: stale interfaces are left for now");
            return;
        };
        for ep in recorded {
            let still = snap
                .state
                .endpoints
                .get(&ep.id)
                .is_some_and(|e| e.node == self.node && e.netns == ep.netns);
            if !still {
                tracing::info!(endpoint = %ep.id, netns = %ep.netns, "deleting the interface of an endpoint removed while the agent was away");
                attach::detach(&ep).await;
            }
        }
    }

    /// Creates an endpoint on this node: checks, stores, attaches; on any failure
    /// nothing stays behind (neither the store entry nor the device).
    pub async fn create_endpoint(&self, spec: EndpointSpec) -> Result<Endpoint, AgentError> {
        let ifname = spec.ifname.clone().unwrap_or_else(|| "eth0".into());
        if !self
            .load()
            .await?
            .state
            .networks
            .contains_key(&spec.network)
        {
            return Err(StateError::NotFound(format!(
                "no network named {}: create it first (vxmesh network create {})",
                spec.network, spec.network
            ))
            .into());
        }
        attach::precheck(&spec.netns, &ifname, spec.veth.as_deref()).await?;
        let mut ports = self.ports.lock().await;
        let node = self.node.clone();
        let id = new_id();
        let ep = self
            .transact(move |st| {
                let ep = ops::create_endpoint(st, &spec, &node, id.clone(), ipam::random_mac)?;
                crate::state::ingress::sync_tasks(st)?;
                Ok(ep)
            })
            .await?;
        let snap = self.load().await?;
        let attached = match snap.state.networks.get(&ep.network) {
            Some(net) => attach::attach(&ep, net, self.mtus.of(net), self.worker.workers())
                .await
                .map_err(AgentError::from),
            None => Err(StateError::NotFound(format!(
                "network {} was removed meanwhile",
                ep.network
            ))
            .into()),
        };
        match attached {
            Ok(fd) => {
                self.add_port(&mut ports, &ep, fd, snap.revision);
                self.publish(&snap.state, &ports);
                self.publish_tunnels(&snap.state);
                Ok(ep)
            }
            Err(e) => {
                let id = ep.id.clone();
                if let Err(undo) = self.transact(move |st| ops::remove_endpoint(st, &id)).await {
                    tracing::error!(endpoint = %ep.id, error = %undo, "cannot undo a failed endpoint create");
                }
                Err(e)
            }
        }
    }

    /// Docker's Join: the endpoint Docker knows as `owner` gets `sandbox` as its
    /// namespace (so a restarted agent makes its interface there again) and a TAP
    /// here, which Docker then moves into the container. Returns the TAP's name
    /// and the endpoint's network.
    pub async fn join_sandbox(
        &self,
        owner: &str,
        sandbox: &str,
    ) -> Result<(String, Endpoint, crate::state::Network), AgentError> {
        let mut ports = self.ports.lock().await;
        let (who, sb) = (owner.to_string(), sandbox.to_string());
        let ep = self
            .transact(move |st| {
                let ep = st
                    .endpoints
                    .values_mut()
                    .find(|e| e.owner.as_deref() == Some(who.as_str()))
                    .ok_or_else(|| StateError::NotFound(format!("no endpoint for {who}")))?;
                ep.netns.clone_from(&sb);
                Ok(ep.clone())
            })
            .await?;
        let snap = self.load().await?;
        let net = snap
            .state
            .networks
            .get(&ep.network)
            .cloned()
            .ok_or_else(|| StateError::NotFound(format!("network {} is gone", ep.network)))?;
        // A retried Join replaces what the first one made.
        if let Some(old) = self.close_port(&mut ports, &ep.id) {
            attach::detach(&old).await;
        }
        let (tap, a) =
            attach::tap_for_docker(&ep, &net, self.mtus.of(&net), self.worker.workers()).await?;
        self.add_port(&mut ports, &ep, a, snap.revision);
        self.publish(&snap.state, &ports);
        self.publish_tunnels(&snap.state);
        Ok((tap, ep, net))
    }

    /// Docker's Leave: the endpoint's interface goes (its TAP with the port), and
    /// it waits for another Join; a task stops being one until its container
    /// starts again. Nothing to do for an endpoint already gone.
    pub async fn leave_sandbox(&self, owner: &str) -> Result<(), AgentError> {
        let mut ports = self.ports.lock().await;
        let who = owner.to_string();
        let ep = self
            .transact(move |st| {
                let Some(ep) = st
                    .endpoints
                    .values_mut()
                    .find(|e| e.owner.as_deref() == Some(who.as_str()))
                else {
                    return Ok(None);
                };
                ep.netns = format!("{}{}", crate::state::model::DOCKER_PENDING, ep.id);
                ep.service = None;
                let ep = ep.clone();
                crate::state::ingress::sync_tasks(st)?;
                Ok(Some(ep))
            })
            .await?;
        if let Some(old) = ep.and_then(|ep| self.close_port(&mut ports, &ep.id)) {
            attach::detach(&old).await;
        }
        if let Ok(snap) = self.load().await {
            self.publish(&snap.state, &ports);
        }
        Ok(())
    }

    pub async fn remove_endpoint(&self, id: String) -> Result<Endpoint, AgentError> {
        let mut ports = self.ports.lock().await;
        let ep = self
            .transact(move |st| ops::remove_endpoint(st, &id))
            .await?;
        let attached = self.close_port(&mut ports, &ep.id);
        // An endpoint with no port now may still have a (persistent) interface.
        attach::detach(attached.as_ref().unwrap_or(&ep)).await;
        if attached.is_some() {
            attach::forget_resolv_conf(&ep);
        }
        if let Ok(snap) = self.load().await {
            self.publish(&snap.state, &ports);
        }
        Ok(ep)
    }
}

/// A 16-hex-digit endpoint id (the TAP name takes the first 12).
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
