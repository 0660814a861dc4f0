//! The local Docker engine, through its API socket (bollard): network names,
//! containers' labels and health, followed by events rather than polling. Also
//! the host firewall hole the routing mesh needs on a Docker host.

use super::{Driver, OWNER};
use crate::agent::Agent;
use crate::state::Endpoint;
use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use ipnet::IpNet;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

/// What the driver needs to know of a running container.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    /// Docker's endpoint IDs of its networks (the driver's `docker:ID` owners).
    pub endpoint_ids: Vec<String>,
    /// Label `vxmesh.service`.
    pub service: Option<String>,
    /// Label `vxmesh.publish`: `PUB:TARGET[/proto]`, comma-separated, used when
    /// the service is made for this container.
    pub publish: Vec<String>,
    /// `healthy` or `unhealthy` (a HEALTHCHECK still starting counts as
    /// unhealthy: not served until it passes); none without a HEALTHCHECK.
    pub health: Option<String>,
}

impl Engine {
    pub async fn connect() -> Result<Engine, bollard::errors::Error> {
        let docker = Docker::connect_with_unix_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok(Engine { docker })
    }

    /// The name of network `id`, once Docker shows it.
    pub async fn network_name(&self, id: &str) -> Option<String> {
        self.docker
            .inspect_network(id, None)
            .await
            .ok()
            .and_then(|n| n.name)
    }

    /// Docker's networks of driver vxmesh, with their IPv4 subnets.
    pub async fn vxmesh_networks(&self) -> Vec<(String, IpNet)> {
        let filters = HashMap::from([("driver".to_string(), vec!["vxmesh".to_string()])]);
        let opts = ListNetworksOptions {
            filters: Some(filters),
        };
        let Ok(nets) = self.docker.list_networks(Some(opts)).await else {
            return Vec::new();
        };
        nets.into_iter()
            .filter_map(|n| {
                let subnet = n
                    .ipam?
                    .config?
                    .into_iter()
                    .find_map(|c| c.subnet?.parse::<IpNet>().ok())?;
                Some((n.id?, subnet))
            })
            .collect()
    }

    async fn container(&self, id: &str) -> Option<Container> {
        let c = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let endpoint_ids = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_values()
            .filter_map(|e| e.endpoint_id.filter(|s| !s.is_empty()))
            .collect();
        use bollard::models::HealthStatusEnum as H;
        let health = match c.state.and_then(|s| s.health).and_then(|h| h.status) {
            Some(H::HEALTHY) => Some("healthy".to_string()),
            Some(H::UNHEALTHY | H::STARTING) => Some("unhealthy".to_string()),
            _ => None,
        };
        Some(Container {
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            endpoint_ids,
            service: labels.get("vxmesh.service").cloned(),
            publish: labels
                .get("vxmesh.publish")
                .map(|p| {
                    p.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            health,
        })
    }

    /// Applies every running container, and removes endpoints whose container is
    /// gone (unless a container could not be read).
    async fn sync_all(&self, driver: &Driver) -> Result<(), bollard::errors::Error> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await?;
        let mut live = BTreeSet::new();
        let mut complete = true;
        for c in list {
            let Some(id) = c.id else { continue };
            match self.container(&id).await {
                Some(c) => {
                    live.extend(c.endpoint_ids.iter().cloned());
                    driver.apply_container(c).await;
                }
                // gone meanwhile, or the engine did not answer: without its
                // endpoints in `live` the sweep could remove a running one
                None => complete = false,
            }
        }
        if complete {
            driver.sweep(&live).await;
        }
        Ok(())
    }

    /// Follows the engine's container events for as long as the agent runs,
    /// reconnecting (and re-reading every container) when the stream breaks.
    pub async fn follow(&self, driver: Arc<Driver>) {
        loop {
            if let Err(e) = self.sync_all(&driver).await {
                tracing::warn!(error = %e, "cannot list Docker's containers");
            }
            let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
            let mut events = self.docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, "Docker's event stream broke");
                        break;
                    }
                };
                let action = ev.action.unwrap_or_default();
                let Some(id) = ev.actor.and_then(|a| a.id) else {
                    continue;
                };
                if action == "start" || action.starts_with("health_status") {
                    if let Some(c) = self.container(&id).await {
                        driver.apply_container(c).await;
                    }
                } else if action == "die" || action == "destroy" {
                    // Docker calls Leave and DeleteEndpoint itself; this catches
                    // what it could not tell an agent that was away.
                    if let Err(e) = self.sync_all(&driver).await {
                        tracing::warn!(error = %e, "cannot list Docker's containers");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Finds the name Docker gave the endpoint's interface in the container (by its
/// MAC) and records it, so a restarted agent makes it again under that name.
pub async fn learn_ifname(agent: Arc<Agent>, ep: Endpoint) {
    let path = std::path::PathBuf::from(&ep.netns);
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let links = match crate::netlink::Netlink::in_netns(&path).await {
            Ok(nl) => nl.links().await,
            Err(e) => Err(e),
        };
        let Ok(links) = links else {
            continue;
        };
        let mac = vxmesh_dataplane::parse_mac(&ep.mac);
        let name = links
            .into_iter()
            .find(|l| mac.is_some() && l.mac == mac)
            .map(|l| l.name);
        // Docker moves the TAP in under the agent's name for it, then renames
        // it: only the name it ends with counts.
        let Some(name) = name.filter(|n| *n != crate::agent::attach::tap_name(&ep)) else {
            continue;
        };
        if name != ep.ifname {
            let (id, n) = (ep.id.clone(), name.clone());
            let r = agent
                .transact(move |st| {
                    if let Some(e) = st.endpoints.get_mut(&id) {
                        e.ifname.clone_from(&n);
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(endpoint = %ep.id, error = %e, "cannot record the interface's name");
            }
        }
        tracing::info!(endpoint = %ep.id, ifname = %name, owner = ?ep.owner.as_deref().and_then(|o| o.strip_prefix(OWNER)), "Docker moved the endpoint's interface into its container");
        return;
    }
    tracing::warn!(endpoint = %ep.id, "the endpoint's interface never showed in its container");
}

/// Docker drops forwarded traffic by default (`FORWARD` policy `DROP`), which
/// would drop the routing mesh's traffic to and from the ingress sandbox, and
/// containers' egress through the egress TAP; Docker's `DOCKER-USER` chain is
/// where an accept for them belongs (what may enter the egress TAP is narrowed
/// in the agent's own egress table: replies only). Removed on stop.
/// Docker's chain is kept through iptables, so these rules are too
/// ([`crate::firewall::docker_user`] says why nftables cannot do it).
pub async fn forwarding(on: bool) {
    let devs = [crate::agent::ingress::DEVICE, crate::agent::egress::DEVICE];
    crate::firewall::docker_user::forwarding(&devs, on).await;
}
