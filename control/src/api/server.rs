//! Routes of the agent's API. Reads go to the store (not the agent's cache), so a
//! CLI call sees what another node just wrote.

use super::ErrorBody;
use crate::agent::{Agent, AgentError};
use crate::state::{ops, services, EndpointSpec, NetworkSpec, StateError};
use crate::store::{StoreError, UpdateError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::net::UnixListener;

pub struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let code = match &e {
            AgentError::Update(UpdateError::State(StateError::Invalid(_))) => {
                StatusCode::BAD_REQUEST
            }
            AgentError::Update(UpdateError::State(StateError::NotFound(_))) => {
                StatusCode::NOT_FOUND
            }
            AgentError::Update(UpdateError::State(StateError::Conflict(_))) => StatusCode::CONFLICT,
            AgentError::Update(UpdateError::Store(StoreError::Unreachable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AgentError::Attach(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        AgentError::from(e).into()
    }
}

type Res = Result<Json<Value>, ApiError>;
pub(super) type Ag = State<Arc<Agent>>;

fn to_json<T: serde::Serialize>(v: T) -> Res {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub fn router(agent: Arc<Agent>) -> Router {
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
        .route("/v1/stats", get(stats))
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
        .route("/v1/lb", get(lb_table))
        .route("/v1/conntrack", get(conntrack_table))
        .route("/v1/trace", axum::routing::post(trace))
        .route("/v1/doctor", axum::routing::post(doctor))
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

async fn list_networks(State(a): Ag) -> Res {
    let st = a.load().await?.state;
    let v: Vec<Value> = st
        .networks
        .values()
        .map(|n| {
            let mut j = serde_json::to_value(n).unwrap_or_default();
            j["endpoints"] = json!(st.endpoints_on(&n.name).count());
            j
        })
        .collect();
    Ok(Json(Value::Array(v)))
}

async fn create_network(State(a): Ag, Json(spec): Json<NetworkSpec>) -> Res {
    let n = a.transact(move |st| ops::create_network(st, &spec)).await?;
    tracing::info!(network = %n.name, vni = n.vni, "network created");
    to_json(n)
}

async fn inspect_network(State(a): Ag, Path(name): Path<String>) -> Res {
    let st = a.load().await?.state;
    let n = st.networks.get(&name).ok_or_else(|| {
        StateError::NotFound(format!(
            "no network named {name} (vxmesh network ls lists them)"
        ))
    })?;
    let mut j = serde_json::to_value(n).unwrap_or_default();
    j["endpoints"] =
        serde_json::to_value(st.endpoints_on(&name).collect::<Vec<_>>()).unwrap_or_default();
    Ok(Json(j))
}

async fn remove_network(State(a): Ag, Path(name): Path<String>) -> Res {
    let n = a.transact(move |st| ops::remove_network(st, &name)).await?;
    tracing::info!(network = %n.name, "network removed");
    to_json(n)
}

async fn list_endpoints(State(a): Ag) -> Res {
    to_json(a.load().await?.state.endpoints.values().collect::<Vec<_>>())
}

async fn create_endpoint(State(a): Ag, Json(spec): Json<EndpointSpec>) -> Res {
    let e = a.create_endpoint(spec).await?;
    tracing::info!(endpoint = %e.id, network = %e.network, ips = ?e.ips, "endpoint created");
    to_json(e)
}

async fn remove_endpoint(State(a): Ag, Path(id): Path<String>) -> Res {
    let e = a.remove_endpoint(id).await?;
    tracing::info!(endpoint = %e.id, "endpoint removed");
    to_json(e)
}

async fn list_nodes(State(a): Ag) -> Res {
    let st = a.load().await?.state;
    let (down, ages) = a.liveness_view();
    let v: Vec<Value> = st
        .nodes
        .values()
        .map(|n| {
            let mut j = serde_json::to_value(n).unwrap_or_default();
            let up = n.name == a.node || !down.contains(&n.name) && ages.contains_key(&n.name);
            j["status"] = json!(if n.external {
                "external"
            } else if up {
                "up"
            } else {
                "down"
            });
            // since its heartbeat last changed, on this agent's clock
            j["heartbeat_age_ms"] = json!(ages.get(&n.name).map(|t| t.as_millis() as u64));
            j
        })
        .collect();
    Ok(Json(Value::Array(v)))
}

#[derive(serde::Deserialize)]
struct ExternalNode {
    name: String,
    advertise_addr: std::net::IpAddr,
    public_key: String,
    tunnel_addr: std::net::Ipv4Addr,
    wg_port: Option<u16>,
}

impl ExternalNode {
    fn node(self) -> crate::state::Node {
        let mut node = crate::state::Node::new(&self.name, self.advertise_addr);
        node.public_key = Some(self.public_key);
        node.tunnel_addr = Some(self.tunnel_addr);
        node.wg_port = self.wg_port;
        node.ingress = false;
        node
    }
}

async fn add_node(State(a): Ag, Json(n): Json<ExternalNode>) -> Res {
    let node = n.node();
    let n = a
        .transact(move |st| ops::add_external_node(st, node.clone()))
        .await?;
    tracing::info!(node = %n.name, "external WireGuard peer added");
    to_json(n)
}

async fn remove_node(State(a): Ag, Path(name): Path<String>) -> Res {
    let n = a.transact(move |st| ops::remove_node(st, &name)).await?;
    tracing::info!(node = %n.name, "node removed");
    to_json(n)
}

async fn rotate_key(State(a): Ag, Path(name): Path<String>) -> Res {
    let n = a
        .transact(move |st| ops::request_rotation(st, &name))
        .await?;
    tracing::info!(node = %n.name, "key rotation requested");
    to_json(n)
}

async fn list_services(State(a): Ag) -> Res {
    let st = a.load().await?.state;
    // tasks counted in one pass, not one pass per service (issue 21)
    let mut tasks: std::collections::HashMap<&str, usize> = Default::default();
    for e in st.endpoints.values() {
        if let Some(s) = e.service.as_deref() {
            *tasks.entry(s).or_default() += 1;
        }
    }
    let v: Vec<Value> = st
        .services
        .values()
        .map(|s| {
            let mut j = serde_json::to_value(s).unwrap_or_default();
            j["tasks"] = json!(tasks.get(s.name.as_str()).copied().unwrap_or(0));
            j
        })
        .collect();
    Ok(Json(Value::Array(v)))
}

async fn create_service(State(a): Ag, Json(spec): Json<services::ServiceSpec>) -> Res {
    let s = a
        .transact(move |st| services::create_service(st, &spec))
        .await?;
    tracing::info!(service = %s.name, fwmark = s.fwmark, "service created");
    to_json(s)
}

async fn inspect_service(State(a): Ag, Path(name): Path<String>) -> Res {
    let st = a.load().await?.state;
    let s = st.services.get(&name).ok_or_else(|| {
        StateError::NotFound(format!(
            "no service named {name} (vxmesh service ls lists them)"
        ))
    })?;
    let mut j = serde_json::to_value(s).unwrap_or_default();
    j["tasks"] = serde_json::to_value(
        st.endpoints
            .values()
            .filter(|e| e.service.as_deref() == Some(name.as_str()))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    Ok(Json(j))
}

#[derive(serde::Deserialize)]
struct ServiceUpdate {
    #[serde(default)]
    publish_add: Vec<String>,
    #[serde(default)]
    publish_rm: Vec<String>,
}

async fn update_service(
    State(a): Ag,
    Path(name): Path<String>,
    Json(u): Json<ServiceUpdate>,
) -> Res {
    let s = a
        .transact(move |st| services::update_ports(st, &name, &u.publish_add, &u.publish_rm))
        .await?;
    to_json(s)
}

async fn remove_service(State(a): Ag, Path(name): Path<String>) -> Res {
    let s = a
        .transact(move |st| services::remove_service(st, &name))
        .await?;
    tracing::info!(service = %s.name, "service removed");
    to_json(s)
}

#[derive(serde::Deserialize)]
struct LbQuery {
    /// Only this VIP's (or sandbox address's) rows.
    #[serde(default)]
    vip: Option<std::net::IpAddr>,
}

async fn lb_table(State(a): Ag, axum::extract::Query(q): axum::extract::Query<LbQuery>) -> Res {
    to_json(a.lb_rows(q.vip))
}

async fn conntrack_table(State(a): Ag) -> Res {
    Ok(Json(a.conntrack_table()))
}

#[derive(serde::Deserialize)]
struct TraceRequest {
    network: String,
    #[serde(default)]
    filter: String,
    seconds: f64,
    count: usize,
}

/// A pcap file of what the switch saw on a network (`vxmesh trace`).
async fn trace(State(a): Ag, Json(r): Json<TraceRequest>) -> Result<Response, ApiError> {
    let (file, n) = a.trace(&r.network, &r.filter, r.seconds, r.count).await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/vnd.tcpdump.pcap".to_string(),
            ),
            (
                axum::http::HeaderName::from_static("x-vxmesh-frames"),
                n.to_string(),
            ),
        ],
        file,
    )
        .into_response())
}

/// `vxmesh doctor`: every check, run now (it probes the other nodes, so it
/// takes a few seconds).
async fn doctor(State(a): Ag) -> Res {
    to_json(a.doctor().await)
}

async fn stats(State(a): Ag) -> Res {
    let invalid = a.invalid_rows();
    let c = a.counters();
    let ct = a.conntrack_stats();
    let drops: serde_json::Map<String, Value> = c
        .drops_by_reason()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    Ok(Json(json!({
        "node": a.node,
        "advertise_addr": a.advertise_addr,
        "endpoint_mtu": a.mtus.plain,
        "encrypted_endpoint_mtu": a.mtus.encrypted,
        "tunnel_tx": c.tunnel_tx,
        "tunnel_rx": c.tunnel_rx,
        "store": a.store_name(),
        "store_reachable": a.store_reachable(),
        "follow": a.follow_stats.json(),
        "invalid_rows": invalid.len(),
        "invalid": invalid,
        "port_rx": c.port_rx,
        "port_tx": c.port_tx,
        "underlay_rx": c.underlay_rx,
        "underlay_tx": c.underlay_tx,
        "neighbor_replies": c.neighbor_replies,
        "flooded": c.flooded,
        "learned": c.learned,
        "dns_answers": c.dns_answers,
        "probes_answered": c.probes_answered,
        "probe_replies": c.probe_replies,
        "drops": drops,
        "flow_logs": a.flows.is_some(),
        "flow_log_lost": c.flow_log_lost,
        "flow_log_sampled": c.flow_log_sampled,
        "flow_log_drops_limited": c.flow_log_drops_limited,
        "policy_audited": c.policy_audited,
        "conntrack": {
            "entries": ct.entries,
            "max": ct.max,
            "setups": ct.created,
            "evicted": ct.evicted,
            "lock_waits": ct.lock_waits,
        },
        "workers": a
            .worker_counters()
            .iter()
            .map(|w| json!({
                "port_rx": w.port_rx,
                "port_tx": w.port_tx,
                "underlay_rx": w.underlay_rx,
                "underlay_tx": w.underlay_tx,
                "tunnel_rx": w.tunnel_rx,
                "tunnel_tx": w.tunnel_tx,
            }))
            .collect::<Vec<_>>(),
    })))
}

#[derive(serde::Deserialize)]
struct NodeUpdate {
    #[serde(default)]
    ingress: Option<bool>,
}

async fn update_node(State(a): Ag, Path(name): Path<String>, Json(u): Json<NodeUpdate>) -> Res {
    let n = a
        .transact(move |st| match u.ingress {
            Some(on) => crate::state::ingress::set_node_ingress(st, &name, on),
            None => st.nodes.get(&name).cloned().ok_or_else(|| {
                StateError::NotFound(format!("no node named {name} (vxmesh node ls lists them)"))
            }),
        })
        .await?;
    to_json(n)
}

async fn list_policies(State(a): Ag) -> Res {
    let st = a.load().await?.state;
    to_json(st.policies.values().collect::<Vec<_>>())
}

async fn add_policy(State(a): Ag, Json(spec): Json<crate::state::ingress::PolicySpec>) -> Res {
    let p = a
        .transact(move |st| crate::state::ingress::add_policy(st, &spec))
        .await?;
    to_json(p)
}

async fn remove_policy(State(a): Ag, Path(id): Path<String>) -> Res {
    let p = a
        .transact(move |st| crate::state::ingress::remove_policy(st, &id))
        .await?;
    to_json(p)
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
) -> Result<Value, String> {
    fn body_of<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        serde_json::from_slice(b).map_err(|e| format!("422: {e}"))
    }
    fn out<T: serde::Serialize>(r: Result<T, StateError>) -> Result<Value, String> {
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
        ("POST", ["nodes", name, "update"]) => {
            let u: NodeUpdate = body_of(body)?;
            out(match u.ingress {
                Some(on) => crate::state::ingress::set_node_ingress(st, name, on),
                None => st
                    .nodes
                    .get(*name)
                    .cloned()
                    .ok_or_else(|| StateError::NotFound(format!("no node named {name}"))),
            })
        }
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
            let r: TraceRequest = body_of(body)?;
            r.filter
                .parse::<vxmesh_dataplane::switch::tap::TapFilter>()
                .map(|_| Value::Null)
        }
        _ => Err(format!("404: {method} {path:?}")),
    }
}
