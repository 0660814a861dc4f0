//! vxmesh as Docker's network driver and IPAM driver (`vxmesh agent
//! --docker-plugin`), local to each engine and multi-host through vxmesh's own
//! store, the way Weave's `weavemesh` driver worked.
//!
//! How Docker's calls map onto vxmesh's state:
//! - `docker network create -d vxmesh --ipam-driver vxmesh --subnet S NAME`:
//!   RequestPool(S), RequestAddress(gateway), then CreateNetwork(ID). Docker
//!   names the network to nobody, so the driver asks the engine for NAME by ID once
//!   the call has returned, and creates the vxmesh network NAME with subnet S (or
//!   attaches to an existing one of that name and subnet). The ID-to-name map is
//!   kept in `DATA_DIR/docker.json`, so a restarted agent still knows it.
//! - `docker run --network NAME`: RequestAddress reserves an address in the store
//!   as an endpoint waiting for a sandbox (so two nodes never hand out the same
//!   one); CreateEndpoint binds it to Docker's endpoint ID; Join makes its TAP for
//!   Docker to move into the container and records the sandbox, where a restarted
//!   agent makes the interface again; Leave and DeleteEndpoint undo each step.
//! - Containers: the engine's events (not polling) say when one starts, stops or
//!   changes health; a container with label `vxmesh.service=NAME` becomes a task
//!   of NAME (created on its network if missing, publishing `vxmesh.publish`), its
//!   HEALTHCHECK state is the task's health, and its name is answered by DNS.
//!
//! Every call but RequestAddress is idempotent (Docker retries calls after an
//! agent restart); a retried RequestAddress reserves another address, which
//! Docker gives back with ReleaseAddress.
//!
//! Here: the driver's state and the network and endpoint calls; [`pools`] the
//! IPAM calls; [`containers`] what the engine says of containers; [`engine`]
//! the engine's API; [`protocol`] the plugin socket's routes. The driver sits
//! on the [`Agent`] and the state; the daemon starts it.

#![forbid(unsafe_code)]

mod containers;
mod engine;
mod pools;
pub mod protocol;

use crate::agent::Agent;
use crate::state::model::DOCKER_PENDING;
use crate::state::{ipam, ops, ClusterState, NetworkSpec, StateError};
use dashmap::{DashMap, DashSet};
use ipnet::IpNet;
use protocol::PluginError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Owner of an address reserved by RequestAddress before CreateEndpoint names it.
const RESERVED: &str = "docker-ipam:";
/// Owner of an endpoint Docker created: `docker:ENDPOINT_ID`.
const OWNER: &str = "docker:";
/// How long a call waits for what an earlier call set going (a network's name).
const SETTLE: Duration = Duration::from_secs(15);

/// What this node's driver remembers beside the store, as `docker.json` holds it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Local {
    /// Docker network ID to vxmesh network name.
    networks: BTreeMap<String, String>,
    /// Services created for a container's `vxmesh.service` label.
    services: BTreeSet<String>,
}

pub struct Driver {
    agent: Arc<Agent>,
    engine: Option<engine::Engine>,
    /// Docker network ID to vxmesh network name ([`Local::networks`]): read
    /// by every endpoint call, polled while a network's name is learnt, and
    /// written by the task that learns it, so a concurrent map rather than
    /// one lock all of them queue on.
    networks: DashMap<String, String>,
    /// Services created for a container's label ([`Local::services`]).
    services: DashSet<String>,
    /// Held while `docker.json` is written: each write takes its copy of the
    /// maps under it, so writes land in order and the last one has every
    /// change made before it.
    saving: Mutex<()>,
    path: PathBuf,
}

/// The running driver, stopped with the agent.
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        engine::forwarding(false).await;
        let _ = std::fs::remove_file(protocol::SOCKET);
    }
}

/// Serves the plugin socket and follows the engine's events.
pub async fn start(
    agent: Arc<Agent>,
    data_dir: &Path,
    socket_group: Option<u32>,
) -> anyhow::Result<Running> {
    let path = data_dir.join("docker.json");
    let local: Local = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable docker.json");
            Local::default()
        }),
        Err(_) => Local::default(),
    };
    let engine = match engine::Engine::connect().await {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "no Docker engine answers: serving the plugin without container labels and names");
            None
        }
    };
    let driver = Arc::new(Driver {
        agent,
        engine,
        networks: local.networks.into_iter().collect(),
        services: local.services.into_iter().collect(),
        saving: Mutex::new(()),
        path,
    });
    engine::forwarding(true).await;
    let mut tasks = Vec::new();
    if driver.engine.is_some() {
        tasks.push(tokio::spawn(driver.clone().follow_engine()));
        tasks.push(tokio::spawn(driver.clone().resolve_unnamed()));
    }
    let d = driver.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = protocol::serve(Path::new(protocol::SOCKET), socket_group, d).await {
            tracing::error!(error = %e, "the Docker plugin stopped");
        }
    }));
    Ok(Running { tasks })
}

fn refused(e: impl std::fmt::Display) -> PluginError {
    PluginError(e.to_string())
}

/// `vxmesh:CIDR` back to the CIDR.
fn pool_of(pool_id: &str) -> Result<IpNet, PluginError> {
    pool_id
        .strip_prefix("vxmesh:")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| refused(format!("pool {pool_id:?} is not one of vxmesh's")))
}

/// `10.1.2.3/24` (or a bare address) to the address.
fn addr_of(s: &str) -> Result<IpAddr, PluginError> {
    s.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| refused(format!("{s:?} is not an address")))
}

fn network_by_subnet(st: &ClusterState, pool: &IpNet) -> Option<String> {
    st.networks
        .values()
        .find(|n| n.subnets.contains(pool))
        .map(|n| n.name.clone())
}

impl Driver {
    async fn save(&self) {
        let _saving = self.saving.lock().await;
        let local = Local {
            networks: self
                .networks
                .iter()
                .map(|e| (e.key().clone(), e.value().clone()))
                .collect(),
            services: self.services.iter().map(|s| s.key().clone()).collect(),
        };
        let body = serde_json::to_vec_pretty(&local).unwrap_or_default();
        if let Err(e) = crate::agent::snapshot::write_whole(&self.path, &body) {
            tracing::error!(file = %self.path.display(), error = %e, "cannot save docker.json");
        }
    }

    async fn state(&self) -> Result<ClusterState, PluginError> {
        Ok(self.agent.load().await.map_err(refused)?.state)
    }

    async fn create_network(
        self: &Arc<Self>,
        r: &protocol::CreateNetwork,
    ) -> Result<(), PluginError> {
        if r.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(refused(
                "vxmesh's Docker driver takes IPv4 networks only: create it without --ipv6",
            ));
        }
        let pool: IpNet = r
            .ipv4_data
            .as_ref()
            .and_then(|v| v.first())
            .and_then(|d| d.pool.parse().ok())
            .ok_or_else(|| refused("no IPv4 pool: create the network with --ipam-driver vxmesh"))?;
        let opts = r.options.clone().unwrap_or_default();
        let generic = opts
            .get("com.docker.network.generic")
            .and_then(|g| g.as_object())
            .cloned()
            .unwrap_or_default();
        let flag = |k: &str| {
            generic
                .get(k)
                .and_then(|v| v.as_str())
                .is_some_and(|v| matches!(v, "true" | "1" | "yes"))
        };
        let vni = match generic.get("vxmesh.vni").and_then(|v| v.as_str()) {
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                refused(format!(
                    "-o vxmesh.vni={v}: give a number from 1 to 16777215"
                ))
            })?),
            None => None,
        };
        let spec = NetworkSpec {
            name: String::new(),
            subnets: vec![pool],
            vni,
            encrypted: flag("vxmesh.encrypted"),
            internal: opts
                .get("com.docker.network.internal")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            peer_vteps: Vec::new(),
        };
        let id = r.network_id.clone();
        if self.networks.contains_key(&id) {
            return Ok(());
        }
        // Docker learns the network's name after this call returns.
        let me = self.clone();
        tokio::spawn(async move { me.name_network(id, spec).await });
        Ok(())
    }

    /// Finds the name Docker gave network `id` and makes (or joins) the vxmesh
    /// network of that name.
    async fn name_network(&self, id: String, mut spec: NetworkSpec) {
        let end = Instant::now() + SETTLE;
        let name = loop {
            let found = match &self.engine {
                Some(e) => e.network_name(&id).await,
                None => Some(format!("docker-{}", &id[..id.len().min(12)])),
            };
            if let Some(n) = found {
                break n;
            }
            if Instant::now() >= end {
                tracing::error!(network = %id, "Docker never showed the network it created");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        spec.name = name.clone();
        let made = self
            .agent
            .transact(move |st| match st.networks.get(&spec.name) {
                Some(n) if spec.subnets.iter().all(|s| n.subnets.contains(s)) => Ok(false),
                Some(n) => Err(StateError::Conflict(format!(
                    "vxmesh network {} exists with subnet {:?}, not {:?}",
                    n.name, n.subnets, spec.subnets
                ))),
                None => ops::create_network(st, &spec).map(|_| true),
            })
            .await;
        match made {
            Ok(made) => {
                tracing::info!(network = %name, docker_id = %id, created = made, "Docker network is vxmesh network");
                self.networks.insert(id, name);
                self.save().await;
            }
            Err(e) => {
                tracing::error!(network = %name, error = %e, "cannot make the Docker network's vxmesh network")
            }
        }
    }

    /// Networks created while the agent was away, or before it learnt their names.
    async fn resolve_unnamed(self: Arc<Self>) {
        let Some(engine) = &self.engine else { return };
        for (id, pool) in engine.vxmesh_networks().await {
            if self.networks.contains_key(&id) {
                continue;
            }
            let spec = NetworkSpec {
                name: String::new(),
                subnets: vec![pool],
                ..Default::default()
            };
            self.name_network(id, spec).await;
        }
    }

    async fn delete_network(&self, id: &str) -> Result<(), PluginError> {
        let Some((_, name)) = self.networks.remove(id) else {
            return Ok(());
        };
        self.save().await;
        let ours: BTreeSet<String> = self.services.iter().map(|s| s.key().clone()).collect();
        let n = name.clone();
        let removed = self
            .agent
            .transact(move |st| {
                if st.endpoints.values().any(|e| e.network == n) {
                    return Ok(false);
                }
                let idle: Vec<String> = st
                    .services
                    .values()
                    .filter(|s| ours.contains(&s.name) && s.networks == [n.clone()])
                    .map(|s| s.name.clone())
                    .collect();
                for s in idle {
                    crate::state::services::remove_service(st, &s)?;
                }
                ops::remove_network(st, &n).map(|_| true)
            })
            .await;
        match removed {
            Ok(true) => {
                tracing::info!(network = %name, "Docker removed the network: vxmesh network removed")
            }
            Ok(false) => {
                tracing::info!(network = %name, "Docker removed the network here; endpoints elsewhere keep the vxmesh network")
            }
            Err(e) => tracing::warn!(network = %name, error = %e, "vxmesh network kept"),
        }
        Ok(())
    }

    async fn network_name(&self, id: &str) -> Result<String, PluginError> {
        let end = Instant::now() + SETTLE;
        loop {
            if let Some(n) = self.networks.get(id) {
                return Ok(n.value().clone());
            }
            if Instant::now() >= end {
                return Err(refused(format!(
                    "Docker network {id} has no vxmesh network yet: see the agent's log"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Binds an address RequestAddress reserved to Docker's endpoint; returns the
    /// MAC to give Docker unless Docker chose one.
    async fn create_endpoint(
        &self,
        r: &protocol::CreateEndpoint,
    ) -> Result<Option<String>, PluginError> {
        let network = self.network_name(&r.network_id).await?;
        let iface = r.interface.as_ref();
        if iface.is_some_and(|i| !i.address_ipv6.is_empty()) {
            return Err(refused("vxmesh's Docker driver gives IPv4 addresses only"));
        }
        let addr = match iface.map(|i| i.address.as_str()).filter(|a| !a.is_empty()) {
            Some(a) => Some(addr_of(a)?),
            None => None,
        };
        let given_mac = iface
            .map(|i| i.mac_address.to_lowercase())
            .filter(|m| !m.is_empty());
        let owner = format!("{OWNER}{}", r.endpoint_id);
        let node = self.agent.node.clone();
        let mac = given_mac.clone();
        let ep = self
            .agent
            .transact(move |st| {
                if let Some(e) = st
                    .endpoints
                    .values()
                    .find(|e| e.owner.as_ref() == Some(&owner))
                {
                    return Ok(e.clone());
                }
                let reserved = st
                    .endpoints
                    .values()
                    .find(|e| {
                        e.node == node
                            && e.network == network
                            && addr.is_some_and(|a| e.ips.contains(&a))
                            && e.owner.as_deref().is_some_and(|o| o.starts_with(RESERVED))
                    })
                    .map(|e| e.id.clone());
                let id = match reserved {
                    Some(id) => id,
                    None => {
                        // An address from another IPAM driver: take it here.
                        let id = format!("{:016x}", rand::random::<u64>());
                        let spec = crate::state::EndpointSpec {
                            network: network.clone(),
                            netns: format!("{DOCKER_PENDING}{id}"),
                            ip: addr,
                            owner: Some(format!("{RESERVED}{id}")),
                            ..Default::default()
                        };
                        ops::create_endpoint(st, &spec, &node, id.clone(), ipam::random_mac)?;
                        id
                    }
                };
                let taken = mac.as_ref().is_some_and(|m| {
                    st.endpoints
                        .values()
                        .any(|e| e.network == network && &e.mac == m && e.id != id)
                });
                if taken {
                    return Err(StateError::Conflict(format!(
                        "MAC {} is taken on network {network}",
                        mac.clone().unwrap_or_default()
                    )));
                }
                let e = st
                    .endpoints
                    .get_mut(&id)
                    .ok_or_else(|| StateError::NotFound(id.clone()))?;
                e.owner = Some(owner.clone());
                if let Some(m) = &mac {
                    e.mac.clone_from(m);
                }
                Ok(e.clone())
            })
            .await
            .map_err(refused)?;
        Ok(given_mac.is_none().then_some(ep.mac))
    }

    async fn delete_endpoint(&self, endpoint_id: &str) -> Result<(), PluginError> {
        let owner = format!("{OWNER}{endpoint_id}");
        let st = self.state().await?;
        let Some(ep) = st
            .endpoints
            .values()
            .find(|e| e.owner.as_ref() == Some(&owner))
        else {
            return Ok(());
        };
        match self.agent.remove_endpoint(ep.id.clone()).await {
            Ok(_) => Ok(()),
            Err(crate::agent::AgentError::Update(crate::store::UpdateError::State(
                StateError::NotFound(_),
            ))) => Ok(()),
            Err(e) => Err(refused(e)),
        }
    }

    async fn join(&self, r: &protocol::Join) -> Result<(String, String), PluginError> {
        let owner = format!("{OWNER}{}", r.endpoint_id);
        let (tap, ep, net) = self
            .agent
            .join_sandbox(&owner, &r.sandbox_key)
            .await
            .map_err(refused)?;
        let gateway = net
            .gateways
            .iter()
            .find(|g| g.is_ipv4())
            .map(|g| g.to_string())
            .unwrap_or_default();
        // Docker names the interface in the container (eth0, eth1, ...): learn
        // which, so a restarted agent makes it again under the same name.
        let agent = self.agent.clone();
        tokio::spawn(async move { engine::learn_ifname(agent, ep).await });
        Ok((tap, gateway))
    }

    async fn leave(&self, endpoint_id: &str) -> Result<(), PluginError> {
        self.agent
            .leave_sandbox(&format!("{OWNER}{endpoint_id}"))
            .await
            .map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_addresses_parse_as_docker_sends_them() {
        assert_eq!(
            pool_of("vxmesh:10.9.0.0/24").unwrap(),
            "10.9.0.0/24".parse::<IpNet>().unwrap()
        );
        assert!(pool_of("default:10.9.0.0/24").is_err());
        assert_eq!(
            addr_of("10.9.0.7/24").unwrap(),
            "10.9.0.7".parse::<IpAddr>().unwrap()
        );
        assert!(addr_of("nope/24").is_err());
    }
}
