//! Docker's remote network driver and IPAM driver protocols, as JSON over HTTP on
//! the plugin socket (`/run/docker/plugins/vxmesh.sock`): each call is a POST to
//! `/Plugin.Activate`, `/NetworkDriver.*` or `/IpamDriver.*`; an error is any
//! non-200 answer whose body is `{"Err": "..."}`, which Docker shows the user.

use super::Driver;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Where Docker looks for a plugin named `vxmesh`.
pub const SOCKET: &str = "/run/docker/plugins/vxmesh.sock";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPool {
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub sub_pool: String,
    #[serde(default, rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpData {
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub gateway: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub options: Option<HashMap<String, Value>>,
    #[serde(default, rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpData>>,
    #[serde(default, rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpData>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkOnly {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Interface {
    #[serde(default)]
    pub address: String,
    #[serde(default, rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub interface: Option<Interface>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub sandbox_key: String,
}

/// A driver call's failure, as Docker shows it.
#[derive(Debug)]
pub struct PluginError(pub String);

impl<E: std::fmt::Display> From<E> for PluginError {
    fn from(e: E) -> Self {
        PluginError(e.to_string())
    }
}

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        tracing::warn!(error = %self.0, "docker driver call refused");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "Err": self.0 })),
        )
            .into_response()
    }
}

type Res = Result<Json<Value>, PluginError>;
type D = State<Arc<Driver>>;

/// Parses a body whatever content type Docker sent (it sends
/// `application/vnd.docker.plugins.v1.2+json`, which axum's `Json` refuses).
fn body<T: for<'de> Deserialize<'de>>(call: &str, bytes: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(bytes).map_err(|e| PluginError(format!("{call}: bad request: {e}")))
}

pub fn router(driver: Arc<Driver>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(net_caps))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.AllocateNetwork", post(empty))
        .route("/NetworkDriver.FreeNetwork", post(empty))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(oper_info))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route("/NetworkDriver.DiscoverNew", post(empty))
        .route("/NetworkDriver.DiscoverDelete", post(empty))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(empty))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(empty))
        .route("/IpamDriver.GetCapabilities", post(ipam_caps))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(empty))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .with_state(driver)
}

/// Serves the plugin socket until the process ends (a stale socket from an
/// earlier run is replaced: Docker reconnects to the path), mode 0660 with `group` (`--socket-group`) like
/// the API's: whoever can connect can attach containers and change networks.
pub async fn serve(path: &Path, group: Option<u32>, driver: Arc<Driver>) -> anyhow::Result<()> {
    use anyhow::Context;
    let l = crate::sockets::bind_private(path, group)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(tokio::net::UnixListener::from_std(l)?)
        })
        .with_context(|| format!("cannot serve Docker's plugin socket {}", path.display()))?;
    tracing::info!(socket = %path.display(), "serving Docker's network and IPAM driver vxmesh");
    axum::serve(l, router(driver))
        .await
        .context("the Docker plugin socket stopped")
}

async fn activate() -> Json<Value> {
    Json(json!({ "Implements": ["NetworkDriver", "IpamDriver"] }))
}

async fn empty() -> Json<Value> {
    Json(json!({}))
}

async fn net_caps() -> Json<Value> {
    // Local to each engine; vxmesh's own store makes it multi-host.
    Json(json!({ "Scope": "local", "ConnectivityScope": "global" }))
}

async fn ipam_caps() -> Json<Value> {
    Json(json!({ "RequiresMACAddress": false }))
}

async fn spaces() -> Json<Value> {
    Json(json!({
        "LocalDefaultAddressSpace": "vxmesh",
        "GlobalDefaultAddressSpace": "vxmesh"
    }))
}

async fn request_pool(State(d): D, b: axum::body::Bytes) -> Res {
    let r: RequestPool = body("RequestPool", &b)?;
    let pool = d.request_pool(&r).await?;
    Ok(Json(
        json!({ "PoolID": format!("vxmesh:{pool}"), "Pool": pool.to_string(), "Data": {} }),
    ))
}

async fn request_address(State(d): D, b: axum::body::Bytes) -> Res {
    let r: RequestAddress = body("RequestAddress", &b)?;
    let addr = d.request_address(&r).await?;
    Ok(Json(json!({ "Address": addr, "Data": {} })))
}

async fn release_address(State(d): D, b: axum::body::Bytes) -> Res {
    let r: ReleaseAddress = body("ReleaseAddress", &b)?;
    d.release_address(&r).await?;
    Ok(Json(json!({})))
}

async fn create_network(State(d): D, b: axum::body::Bytes) -> Res {
    let r: CreateNetwork = body("CreateNetwork", &b)?;
    d.create_network(&r).await?;
    Ok(Json(json!({})))
}

async fn delete_network(State(d): D, b: axum::body::Bytes) -> Res {
    let r: NetworkOnly = body("DeleteNetwork", &b)?;
    d.delete_network(&r.network_id).await?;
    Ok(Json(json!({})))
}

async fn create_endpoint(State(d): D, b: axum::body::Bytes) -> Res {
    let r: CreateEndpoint = body("CreateEndpoint", &b)?;
    let mac = d.create_endpoint(&r).await?;
    Ok(Json(match mac {
        Some(mac) => json!({ "Interface": { "MacAddress": mac } }),
        None => json!({}),
    }))
}

async fn delete_endpoint(State(d): D, b: axum::body::Bytes) -> Res {
    let r: EndpointRef = body("DeleteEndpoint", &b)?;
    d.delete_endpoint(&r.endpoint_id).await?;
    Ok(Json(json!({})))
}

async fn oper_info() -> Json<Value> {
    Json(json!({ "Value": {} }))
}

async fn join(State(d): D, b: axum::body::Bytes) -> Res {
    let r: Join = body("Join", &b)?;
    let (tap, gateway) = d.join(&r).await?;
    Ok(Json(json!({
        "InterfaceName": { "SrcName": tap, "DstPrefix": "eth" },
        "Gateway": gateway,
        // vxmesh routes the container itself: no docker_gwbridge.
        "DisableGatewayService": true
    })))
}

async fn leave(State(d): D, b: axum::body::Bytes) -> Res {
    let r: EndpointRef = body("Leave", &b)?;
    d.leave(&r.endpoint_id).await?;
    Ok(Json(json!({})))
}
