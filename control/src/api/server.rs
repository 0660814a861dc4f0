//! Routes of the agent's API. Reads go to the store (not the agent's cache), so a
//! CLI call sees what another node just wrote. Bodies and answers are the
//! types of [`crate::api_types`].

use crate::agent::Agent;
use crate::api_types::endpoints::EndpointSpec;
use crate::api_types::networks::{Network, NetworkInspect, NetworkListing, NetworkSpec};
use crate::api_types::nodes::{ExternalNode, Node, NodeListing, NodeStatus, NodeUpdate};
use crate::api_types::policies::{Policy, PolicySpec};
use crate::api_types::services::{
    Endpoint, Service, ServiceInspect, ServiceListing, ServiceSpec, ServiceUpdate,
};
use crate::state::{ops, services, StateError};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tokio::net::UnixListener;

use super::answer::{Ag, Res, Sorted};

pub fn router(agent: Arc<Agent>) -> Router {
    use super::local as node;
    Router::new()
        .route("/v1/networks", get(list_networks).post(create_network))
        .route(
            "/v1/networks/{name}",
            get(inspect_network).delete(remove_network),
        )
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{id}", axum::routing::delete(remove_endpoint))
        .route("/v1/nodes", get(list_nodes).post(add_node))
        .route("/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route(
            "/v1/nodes/{name}/rotate-key",
            axum::routing::post(rotate_key),
        )
        .route("/v1/stats", get(node::stats))
        .route("/v1/services", get(list_services).post(create_service))
        .route(
            "/v1/services/{name}",
            get(inspect_service).delete(remove_service),
        )
        .route(
            "/v1/services/{name}/update",
            axum::routing::post(update_service),
        )
        .route("/v1/nodes/{name}/update", axum::routing::post(update_node))
        .route("/v1/policies", get(list_policies).post(add_policy))
        .route("/v1/policies/{id}", axum::routing::delete(remove_policy))
        .route("/v1/lb", get(node::lb_table))
        .route("/v1/conntrack", get(node::conntrack_table))
        .route("/v1/trace", axum::routing::post(node::trace))
        .route("/v1/doctor", axum::routing::post(node::doctor))
        .route("/v1/flows", get(super::flows::flows))
        .with_state(agent)
}

/// Binds the API socket, replacing a stale one left by a killed agent. Whoever
/// can connect controls the node: see [`crate::sockets::bind_private`].
pub fn bind(path: &std::path::Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another agent already serves --api unix:{}: stop it or pick another socket",
            path.display()
        );
    }
    let l = crate::sockets::bind_private(path, group)
        .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l)?)
}

pub async fn serve(listener: UnixListener, agent: Arc<Agent>) -> anyhow::Result<()> {
    axum::serve(listener, router(agent)).await?;
    Ok(())
}

async fn list_networks(State(a): Ag) -> Res<Vec<NetworkListing>> {
    let st = a.load().await?.state;
    let v = st
        .networks
        .values()
        .map(|n| NetworkListing {
            network: n.clone(),
            endpoints: st.endpoints_on(&n.name).count(),
        })
        .collect();
    Ok(Sorted(v))
}

async fn create_network(State(a): Ag, Json(spec): Json<NetworkSpec>) -> Res<Network> {
    let n = a.transact(move |st| ops::create_network(st, &spec)).await?;
    tracing::info!(network = %n.name, vni = n.vni, "network created");
    Ok(Sorted(n))
}

async fn inspect_network(State(a): Ag, Path(name): Path<String>) -> Res<NetworkInspect> {
    let st = a.load().await?.state;
    let n = st.networks.get(&name).ok_or_else(|| {
        StateError::NotFound(format!(
            "no network named {name} (vxmesh network ls lists them)"
        ))
    })?;
    Ok(Sorted(NetworkInspect {
        network: n.clone(),
        endpoints: st.endpoints_on(&name).cloned().collect(),
    }))
}

async fn remove_network(State(a): Ag, Path(name): Path<String>) -> Res<Network> {
    let n = a.transact(move |st| ops::remove_network(st, &name)).await?;
    tracing::info!(network = %n.name, "network removed");
    Ok(Sorted(n))
}

async fn list_endpoints(State(a): Ag) -> Res<Vec<Endpoint>> {
    Ok(Sorted(
        a.load().await?.state.endpoints.into_values().collect(),
    ))
}

async fn create_endpoint(State(a): Ag, Json(spec): Json<EndpointSpec>) -> Res<Endpoint> {
    let e = a.create_endpoint(spec).await?;
    tracing::info!(endpoint = %e.id, network = %e.network, ips = ?e.ips, "endpoint created");
    Ok(Sorted(e))
}

async fn remove_endpoint(State(a): Ag, Path(id): Path<String>) -> Res<Endpoint> {
    let e = a.remove_endpoint(id).await?;
    tracing::info!(endpoint = %e.id, "endpoint removed");
    Ok(Sorted(e))
}

async fn list_nodes(State(a): Ag) -> Res<Vec<NodeListing>> {
    let st = a.load().await?.state;
    let (down, ages) = a.liveness_view();
    let v = st
        .nodes
        .into_values()
        .map(|n| {
            let up = n.name == a.node || !down.contains(&n.name) && ages.contains_key(&n.name);
            let status = if n.external {
                NodeStatus::External
            } else if up {
                NodeStatus::Up
            } else {
                NodeStatus::Down
            };
            NodeListing {
                heartbeat_age_ms: ages.get(&n.name).map(|t| t.as_millis() as u64),
                status,
                node: n,
            }
        })
        .collect();
    Ok(Sorted(v))
}

async fn add_node(State(a): Ag, Json(n): Json<ExternalNode>) -> Res<Node> {
    let node = n.node();
    let n = a
        .transact(move |st| ops::add_external_node(st, node.clone()))
        .await?;
    tracing::info!(node = %n.name, "external WireGuard peer added");
    Ok(Sorted(n))
}

async fn remove_node(State(a): Ag, Path(name): Path<String>) -> Res<Node> {
    let n = a.transact(move |st| ops::remove_node(st, &name)).await?;
    tracing::info!(node = %n.name, "node removed");
    Ok(Sorted(n))
}

async fn rotate_key(State(a): Ag, Path(name): Path<String>) -> Res<Node> {
    let n = a
        .transact(move |st| ops::request_rotation(st, &name))
        .await?;
    tracing::info!(node = %n.name, "key rotation requested");
    Ok(Sorted(n))
}

async fn update_node(
    State(a): Ag,
    Path(name): Path<String>,
    Json(u): Json<NodeUpdate>,
) -> Res<Node> {
    let n = a.transact(move |st| update(st, &name, &u)).await?;
    Ok(Sorted(n))
}

/// `node update`: its ingress switched, or (nothing asked) the node as it is.
fn update(
    st: &mut crate::state::ClusterState,
    name: &str,
    u: &NodeUpdate,
) -> Result<Node, StateError> {
    match u.ingress {
        Some(on) => crate::state::ingress::set_node_ingress(st, name, on),
        None => st.nodes.get(name).cloned().ok_or_else(|| {
            StateError::NotFound(format!("no node named {name} (vxmesh node ls lists them)"))
        }),
    }
}

async fn list_services(State(a): Ag) -> Res<Vec<ServiceListing>> {
    let st = a.load().await?.state;
    // tasks counted in one pass, not one pass per service (issue 21)
    let mut tasks: std::collections::HashMap<&str, usize> = Default::default();
    for e in st.endpoints.values() {
        if let Some(s) = e.service.as_deref() {
            *tasks.entry(s).or_default() += 1;
        }
    }
    let v = st
        .services
        .values()
        .map(|s| ServiceListing {
            tasks: tasks.get(s.name.as_str()).copied().unwrap_or(0),
            service: s.clone(),
        })
        .collect();
    Ok(Sorted(v))
}

async fn create_service(State(a): Ag, Json(spec): Json<ServiceSpec>) -> Res<Service> {
    let s = a
        .transact(move |st| services::create_service(st, &spec))
        .await?;
    tracing::info!(service = %s.name, fwmark = s.fwmark, "service created");
    Ok(Sorted(s))
}

async fn inspect_service(State(a): Ag, Path(name): Path<String>) -> Res<ServiceInspect> {
    let st = a.load().await?.state;
    let s = st.services.get(&name).ok_or_else(|| {
        StateError::NotFound(format!(
            "no service named {name} (vxmesh service ls lists them)"
        ))
    })?;
    Ok(Sorted(ServiceInspect {
        service: s.clone(),
        tasks: st
            .endpoints
            .values()
            .filter(|e| e.service.as_deref() == Some(name.as_str()))
            .cloned()
            .collect(),
    }))
}

async fn update_service(
    State(a): Ag,
    Path(name): Path<String>,
    Json(u): Json<ServiceUpdate>,
) -> Res<Service> {
    let s = a
        .transact(move |st| services::update_ports(st, &name, &u.publish_add, &u.publish_rm))
        .await?;
    Ok(Sorted(s))
}

async fn remove_service(State(a): Ag, Path(name): Path<String>) -> Res<Service> {
    let s = a
        .transact(move |st| services::remove_service(st, &name))
        .await?;
    tracing::info!(service = %s.name, "service removed");
    Ok(Sorted(s))
}

async fn list_policies(State(a): Ag) -> Res<Vec<Policy>> {
    Ok(Sorted(
        a.load().await?.state.policies.into_values().collect(),
    ))
}

async fn add_policy(State(a): Ag, Json(spec): Json<PolicySpec>) -> Res<Policy> {
    let p = a
        .transact(move |st| crate::state::ingress::add_policy(st, &spec))
        .await?;
    Ok(Sorted(p))
}

async fn remove_policy(State(a): Ag, Path(id): Path<String>) -> Res<Policy> {
    let p = a
        .transact(move |st| crate::state::ingress::remove_policy(st, &id))
        .await?;
    Ok(Sorted(p))
}

/// A route's JSON request body applied to `st` as the route applies it inside
/// its store transaction (the handlers' closures above), for the fuzz targets
/// and their corpus replay, which run no agent. `path` is the route's path
/// after `/v1/`, a segment each, `{name}`s filled in (decoded, as axum's `Path`
/// hands them over); `node` is the agent's own node (endpoints are created
/// there). The body is decoded as axum's `Json` decodes it.
#[doc(hidden)]
pub fn apply(
    st: &mut crate::state::ClusterState,
    node: &str,
    method: &str,
    path: &[&str],
    body: &[u8],
) -> Result<serde_json::Value, String> {
    fn body_of<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        serde_json::from_slice(b).map_err(|e| format!("422: {e}"))
    }
    fn out<T: serde::Serialize>(r: Result<T, StateError>) -> Result<serde_json::Value, String> {
        let v = r.map_err(|e| e.to_string())?;
        serde_json::to_value(v).map_err(|e| format!("500: {e}"))
    }
    match (method, path) {
        ("POST", ["networks"]) => out(ops::create_network(st, &body_of(body)?)),
        ("DELETE", ["networks", name]) => out(ops::remove_network(st, name)),
        ("POST", ["endpoints"]) => {
            let spec: EndpointSpec = body_of(body)?;
            let mut id = format!("ep{}", st.endpoints.len());
            while st.endpoints.contains_key(&id) {
                id.push('x');
            }
            let mut n = 0u16;
            let mac = || {
                n = n.wrapping_add(1);
                let [hi, lo] = n.to_be_bytes();
                [2, 0x42, 0, 0, hi, lo]
            };
            out(ops::create_endpoint(st, &spec, node, id, mac)
                .and_then(|ep| crate::state::ingress::sync_tasks(st).map(|()| ep)))
        }
        ("DELETE", ["endpoints", id]) => out(ops::remove_endpoint(st, id)),
        ("POST", ["nodes"]) => out(ops::add_external_node(
            st,
            body_of::<ExternalNode>(body)?.node(),
        )),
        ("DELETE", ["nodes", name]) => out(ops::remove_node(st, name)),
        ("POST", ["nodes", name, "rotate-key"]) => out(ops::request_rotation(st, name)),
        ("POST", ["nodes", name, "update"]) => out(update(st, name, &body_of(body)?)),
        ("POST", ["services"]) => out(services::create_service(st, &body_of(body)?)),
        ("POST", ["services", name, "update"]) => {
            let u: ServiceUpdate = body_of(body)?;
            out(services::update_ports(
                st,
                name,
                &u.publish_add,
                &u.publish_rm,
            ))
        }
        ("DELETE", ["services", name]) => out(services::remove_service(st, name)),
        ("POST", ["policies"]) => out(crate::state::ingress::add_policy(st, &body_of(body)?)),
        ("DELETE", ["policies", id]) => out(crate::state::ingress::remove_policy(st, id)),
        ("POST", ["trace"]) => {
            let r: crate::api_types::trace::TraceRequest = body_of(body)?;
            r.filter
                .parse::<vxmesh_dataplane::switch::tap::TapFilter>()
                .map(|_| serde_json::Value::Null)
        }
        _ => Err(format!("404: {method} {path:?}")),
    }
}
