//! Containers as the engine reports them: a container's name, its
//! `vxmesh.service` label and its health go to its endpoints; endpoints whose
//! container went while the agent was away go too.

use super::{engine, Driver, OWNER};
use crate::state::StateError;
use std::collections::BTreeSet;
use std::sync::Arc;

impl Driver {
    /// What the container says of itself: its name, its `vxmesh.service` label
    /// (and `vxmesh.publish` for a service made for it) and its health, applied to
    /// each of its endpoints on vxmesh networks.
    pub(super) async fn apply_container(&self, c: engine::Container) {
        let node = self.agent.node.clone();
        let cname = c.name.clone();
        let r = self
            .agent
            .transact(move |st| {
                let mut made = None;
                let mut changed = false;
                for eid in &c.endpoint_ids {
                    let owner = format!("{OWNER}{eid}");
                    let Some(id) = st
                        .endpoints
                        .values()
                        .find(|e| e.node == node && e.owner.as_ref() == Some(&owner))
                        .map(|e| e.id.clone())
                    else {
                        continue;
                    };
                    let network = st.endpoints[&id].network.clone();
                    if let Some(svc) = &c.service {
                        if !st.services.contains_key(svc) {
                            let spec = crate::state::services::ServiceSpec {
                                name: svc.clone(),
                                networks: vec![network.clone()],
                                publish: c.publish.clone(),
                                ..Default::default()
                            };
                            crate::state::services::create_service(st, &spec)?;
                            made = Some(svc.clone());
                        } else if !st.services[svc].networks.contains(&network) {
                            return Err(StateError::Invalid(format!(
                                "service {svc} is not on network {network}"
                            )));
                        }
                    }
                    let e = st
                        .endpoints
                        .get_mut(&id)
                        .ok_or_else(|| StateError::NotFound(id.clone()))?;
                    let want = (Some(c.name.clone()), c.service.clone(), c.health.clone());
                    if (e.name.clone(), e.service.clone(), e.health.clone()) != want {
                        (e.name, e.service, e.health) = want;
                        changed = true;
                    }
                }
                if changed {
                    crate::state::ingress::sync_tasks(st)?;
                }
                Ok(made)
            })
            .await;
        match r {
            Ok(made) => {
                if let Some(s) = made {
                    tracing::info!(service = %s, container = %cname, "service created for a container's label");
                    self.services.insert(s);
                    self.save().await;
                }
            }
            Err(e) => {
                tracing::warn!(container = %cname, error = %e, "cannot apply the container's labels")
            }
        }
    }

    /// Endpoints Docker made on this node whose Docker endpoint no longer exists
    /// (their container went while the agent was away) go.
    pub(super) async fn sweep(&self, live: &BTreeSet<String>) {
        let Ok(st) = self.state().await else { return };
        let stale: Vec<String> = st
            .endpoints
            .values()
            .filter(|e| e.node == self.agent.node)
            .filter(|e| {
                e.owner
                    .as_deref()
                    .and_then(|o| o.strip_prefix(OWNER))
                    .is_some_and(|eid| !live.contains(eid))
            })
            .map(|e| e.id.clone())
            .collect();
        for id in stale {
            tracing::info!(endpoint = %id, "its Docker endpoint is gone: removing it");
            if let Err(e) = self.agent.remove_endpoint(id.clone()).await {
                tracing::warn!(endpoint = %id, error = %e, "cannot remove a stale Docker endpoint");
            }
        }
    }

    pub(super) async fn follow_engine(self: Arc<Self>) {
        let Some(engine) = self.engine.clone() else {
            return;
        };
        engine.follow(self).await;
    }
}
