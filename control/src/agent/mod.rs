//! The node agent: owns this node's ports and dataplane workers, follows the
//! store and makes the node match it. What the API, the Docker driver and the
//! metrics ask of the node goes through [`Agent`]; they sit above it and are
//! wired to it by the daemon (the composition root), so nothing here knows of
//! them.
//!
//! By concern: this file holds the agent's configuration, its state and the
//! store calls everything else builds on; [`startup`] makes an agent;
//! [`reconcile`] follows the store and publishes the switch's state;
//! [`endpoints`] attaches and detaches this node's endpoints; [`liveness`]
//! heartbeats and judges the other nodes; [`health`] probes tasks;
//! [`rotation`] rotates the node's key; [`listings`] answers what the API
//! and metrics list. The node's plumbing (TAPs, nftables, routes) is in
//! [`attach`], [`ingress`], [`egress`], [`node_guard`] and [`iproute`].

#![forbid(unsafe_code)]

pub mod attach;
pub mod doctor;
pub mod egress;
mod endpoints;
pub mod flows;
pub mod follow_stats;
pub mod health;
pub mod ingress;
pub mod iproute;
pub mod keys;
mod listings;
pub mod liveness;
pub mod metrics;
pub mod node_guard;
mod reconcile;
mod rotation;
pub mod snapshot;
mod startup;
pub mod switch_state;
pub mod trace;

/// `lb ls`'s rows, which the metrics count too, are the API's.
pub use crate::api_types::lb::{RealServer, VirtualService};
use crate::state::{ClusterState, StateError};
use crate::store::{self, Snapshot, Store, UpdateError};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub use switch_state::Mtus;
use thiserror::Error;
use vxmesh_dataplane::io::dataplane::Dataplane;

/// Bytes VXLAN adds over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Over IPv6 the outer header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// What WireGuard adds on top of VXLAN: the inner IPv4 + UDP (28), WireGuard's
/// data header and tag (32), and up to 15 bytes of padding to 16.
pub const WIREGUARD_OVERHEAD: u32 = 28 + 32 + 15;
/// WireGuard's usual port.
pub const WG_PORT: u16 = 51820;
/// Health probes running at once, at most, by default (`--health-probes-max`).
pub const HEALTH_PROBES_MAX: usize = 64;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub advertise_addr: IpAddr,
    pub store: String,
    /// How to reach the store safely (`--store-ca`, `--store-cert`, ...).
    pub store_options: store::StoreOptions,
    pub data_dir: PathBuf,
    pub api: PathBuf,
    pub wg_port: u16,
    /// A file holding the cluster's WireGuard preshared key (base64), if any.
    pub preshared_key_file: Option<PathBuf>,
    /// Rotate this node's static key this often (Docker rotates overlay keys every 12 h).
    pub key_rotation_interval: Option<Duration>,
    /// Dataplane workers (default: one per CPU).
    pub workers: Option<usize>,
    /// Where to serve Prometheus metrics (`GET /metrics`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve Docker's network and IPAM driver protocols on the plugin socket.
    pub docker_plugin: bool,
    /// Remove the ingress and egress nftables tables on exit. By default they
    /// stay: with no NAT chain left the kernel would stop translating
    /// established connections (published ports, egress) and answer them with
    /// resets.
    pub cleanup_on_exit: bool,
    /// The dataplane's tables' maximums (`--conntrack-max`, `--fdb-learned-max`,
    /// `--dns-forwards-max`).
    pub limits: vxmesh_dataplane::io::dataplane::Limits,
    /// Health probes running at once, at most (`--health-probes-max`).
    pub health_probes_max: usize,
    /// New ingress connections per client address (`--ingress-rate-limit`; `None`: off).
    pub ingress_rate_limit: Option<vxmesh_dataplane::lb::limit::RateLimit>,
    /// Test only: shifts the heartbeat values this agent writes, and the wall
    /// clock its probe answers carry, as a node with a wrong wall clock would
    /// (`--test-heartbeat-skew-ms`).
    pub heartbeat_skew_ms: i64,
    /// `--socket-group`: the group (besides root) that may use the API and
    /// Docker plugin sockets; `None`: the agent's own.
    pub socket_group: Option<String>,
    /// `--flow-log PATH` and its rotation and format: where flow records are
    /// written (flow logs on: `limits.flow_log`).
    pub flow_export: Option<flows::ExportConfig>,
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Attach(#[from] attach::AttachError),
    #[error("the store call did not finish: {0}")]
    Join(String),
    #[error("{0}")]
    Keys(String),
}

impl From<StateError> for AgentError {
    fn from(e: StateError) -> Self {
        AgentError::Update(UpdateError::State(e))
    }
}

pub struct Agent {
    pub node: String,
    pub advertise_addr: IpAddr,
    pub mtus: switch_state::Mtus,
    /// The underlay interface's MTU when the agent started (what `mtus` come from).
    pub underlay_mtu: u32,
    store: Arc<dyn Store>,
    worker: Dataplane,
    ports: tokio::sync::Mutex<endpoints::LocalPorts>,
    keys: Arc<std::sync::Mutex<keys::KeyRing>>,
    preshared: Option<[u8; 32]>,
    rotation_interval: Option<Duration>,
    last_rotation: std::sync::Mutex<std::time::Instant>,
    /// After a failed rotation (the store unreachable), none is tried before this.
    rotation_retry: std::sync::Mutex<Option<std::time::Instant>>,
    /// The highest requested key epoch this agent has rotated to, so a stale
    /// view of the store does not rotate twice for one request.
    rotated_epoch: std::sync::atomic::AtomicU64,
    /// The last state applied, to refresh the tunnels between store changes.
    /// Shared, not copied: the health prober reads it ten times a second and
    /// liveness once, and a copy of a 12,000-object state each time was most
    /// of an idle agent's CPU (issue 21).
    last_state: std::sync::Mutex<Arc<ClusterState>>,
    /// The node's own resolvers, where names the embedded DNS does not know go.
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Nodes whose agents stopped heartbeating.
    down: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// What this agent has seen of every node's heartbeat.
    judge: std::sync::Mutex<liveness::Judge>,
    /// `--test-heartbeat-skew-ms`.
    heartbeat_skew_ms: i64,
    /// Whether the last store read succeeded (for metrics).
    store_ok: std::sync::atomic::AtomicBool,
    /// Reads and reconciles made following the store, and their time.
    pub follow_stats: follow_stats::FollowStats,
    /// The stored rows the last read left out as invalid (for stats, metrics,
    /// and to log each once).
    invalid_rows: std::sync::Mutex<Vec<crate::state::validate::InvalidRow>>,
    /// Endpoints of this node with an interface (for metrics).
    attached: std::sync::atomic::AtomicUsize,
    /// The tunnel peers last handed to the worker, to log changes only.
    tunnel_peers: std::sync::Mutex<Vec<String>>,
    /// VTEPs of plain networks in the other address family than this node's
    /// underlay, last warned about (to log changes only).
    foreign_vteps: std::sync::Mutex<Vec<IpAddr>>,
    /// The routing mesh's sandbox TAP, when it could be made.
    sandbox: Option<ingress::Sandbox>,
    /// The nftables table last applied (empty: none yet).
    nft_table: tokio::sync::Mutex<String>,
    /// The egress TAP, when it could be made.
    egress: Option<egress::EgressTap>,
    /// This agent's own services, which containers may not reach.
    services: node_guard::NodeServices,
    /// The egress table and routes last applied.
    egress_applied: tokio::sync::Mutex<(String, std::collections::BTreeSet<egress::Route>)>,
    /// `--ingress-rate-limit`'s buckets, put in every state published.
    ingress_limit: Option<Arc<vxmesh_dataplane::lb::limit::SourceLimiter>>,
    /// `--health-probes-max`.
    health_probes_max: usize,
    /// Where the agent keeps what it needs across restarts (see [`snapshot`]).
    data_dir: std::path::PathBuf,
    /// Flow records (`vxmesh flows`), while flow logs are on (`--flow-logs`).
    pub flows: Option<Arc<flows::Flows>>,
}

impl Agent {
    /// Runs a state operation in a store transaction, off the async threads.
    pub async fn transact<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut ClusterState) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || store::transact(&*s, f))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?
            .map_err(AgentError::from)
    }

    pub async fn load(&self) -> Result<Snapshot, AgentError> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || s.load())
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?
            .map_err(|e| AgentError::Update(e.into()))
    }

    pub fn store_name(&self) -> String {
        self.store.describe()
    }

    pub fn store_reachable(&self) -> bool {
        self.store_ok.load(std::sync::atomic::Ordering::Relaxed)
    }
}
