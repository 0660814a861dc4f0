//! The node agent: owns this node's ports and dataplane worker, follows the store,
//! and serves the API the CLI talks to.

pub mod attach;
pub mod doctor;
pub mod egress;
pub mod flows;
pub mod follow_stats;
pub mod health;
pub mod ingress;
pub mod iproute;
pub mod keys;
pub mod liveness;
pub mod metrics;
pub mod node_guard;
pub mod snapshot;
pub mod switch_state;
pub mod trace;

use crate::state::{ipam, ops, ClusterState, Endpoint, EndpointSpec, Node, StateError};
use crate::store::{self, Snapshot, Store, UpdateError};
use anyhow::Context;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub use switch_state::Mtus;
use thiserror::Error;
use vxmesh_dataplane::io::dataplane::Dataplane;
use vxmesh_dataplane::io::underlay;
use vxmesh_dataplane::{Counters, PortId, VXLAN_PORT};

/// Bytes VXLAN adds over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Over IPv6 the outer header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// What WireGuard adds on top of VXLAN: the inner IPv4 + UDP (28), WireGuard's
/// data header and tag (32), and up to 15 bytes of padding to 16.
pub const WIREGUARD_OVERHEAD: u32 = 28 + 32 + 15;
/// WireGuard's usual port.
pub const WG_PORT: u16 = 51820;
/// Send sockets, i.e. distinct outer source ports flows are spread over.
const SOURCE_PORTS: usize = 8;
/// How long after a failed key rotation the next is tried.
const ROTATION_RETRY: Duration = Duration::from_secs(5);
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

struct LocalPort {
    port: PortId,
    /// The endpoint as attached, to delete its (persistent) interface when it goes.
    ep: Endpoint,
    /// The store revision it was attached at: a reconcile working from an older
    /// snapshot (taken before the API committed the endpoint, then waiting for
    /// the ports' lock) must not take it for one that is gone.
    since: u64,
}

#[derive(Default)]
struct LocalPorts {
    by_endpoint: HashMap<String, LocalPort>,
    next: u32,
    /// Endpoints whose interface could not be made, and why; not retried until
    /// they change, so one bad endpoint does not flood the log.
    failed: HashMap<String, Endpoint>,
}

pub struct Agent {
    pub node: String,
    pub advertise_addr: IpAddr,
    pub mtus: switch_state::Mtus,
    /// The underlay interface's MTU when the agent started (what `mtus` come from).
    pub underlay_mtu: u32,
    store: Arc<dyn Store>,
    worker: Dataplane,
    ports: tokio::sync::Mutex<LocalPorts>,
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
    pub async fn start(cfg: &AgentConfig) -> anyhow::Result<Arc<Agent>> {
        check_advertise_addr(cfg.advertise_addr)?;
        let store: Arc<dyn Store> = {
            let (url, opts) = (cfg.store.clone(), cfg.store_options.clone());
            Arc::from(tokio::task::spawn_blocking(move || store::open_with(&url, &opts)).await??)
        };
        wait_address_usable(cfg.advertise_addr).await?;
        let underlay_mtu = iproute::mtu_of_address(cfg.advertise_addr)
            .await?
            .with_context(|| {
                format!(
                    "--advertise-addr {} is not an address of this node's interfaces (ip addr): pass one that is",
                    cfg.advertise_addr
                )
            })?;
        let overhead = if cfg.advertise_addr.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        let keyring = keys::KeyRing::load_or_create(&cfg.data_dir)?;
        let preshared = match &cfg.preshared_key_file {
            Some(p) => Some(keys::read_preshared(p)?),
            None => None,
        };
        // WireGuard crosses the underlay in its family too (IPv6-only socket
        // over IPv6, like the VXLAN ones); what it carries stays IPv4 between
        // tunnel addresses either way
        let wg = underlay::bind_udp(underlay::any_of(cfg.advertise_addr, cfg.wg_port), false)
            .with_context(|| {
                format!(
                    "cannot bind the WireGuard socket (udp/{}): pass another --wg-port",
                    cfg.wg_port
                )
            })?;
        let workers = cfg.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let worker = Dataplane::start(workers, cfg.advertise_addr, VXLAN_PORT, SOURCE_PORTS, Some(wg), cfg.limits)
            .with_context(|| {
                format!("cannot bind the VXLAN underlay sockets (udp/{VXLAN_PORT}, {}): is another VXLAN endpoint using the port?", cfg.advertise_addr)
            })?;
        tracing::info!(workers, source_ports = ?worker.source_ports(), "dataplane started on udp/{VXLAN_PORT}");
        let switch_guard =
            inject_test_fault(&worker, std::env::var("VXMESH_TEST_FAULT").ok().as_deref())?;
        if cfg.heartbeat_skew_ms != 0 {
            // a node with a wrong clock answers the doctor's probes with it too
            worker.set_test_clock_skew(cfg.heartbeat_skew_ms);
        }
        let public = ops::encode_key(&keyring.public());
        let sandbox = match ingress::create_sandbox(workers).await {
            Ok((sb, fds)) => match worker.add_port(sb.port, fds, true) {
                Ok(()) => Some(sb),
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand the ingress sandbox to the workers; published ports will not answer here");
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "no ingress sandbox; published ports will not answer on this node");
                None
            }
        };
        let mtus = switch_state::Mtus {
            plain: underlay_mtu.saturating_sub(overhead),
            encrypted: underlay_mtu.saturating_sub(overhead + WIREGUARD_OVERHEAD),
        };
        let egress = match egress::create_tap(workers, mtus.plain).await {
            Ok((t, fds)) => match worker.add_port(t.port, fds, true) {
                Ok(()) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand the egress TAP to the workers; containers will not reach beyond the overlays");
                    None
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "no egress TAP; containers will not reach beyond the overlays");
                None
            }
        };
        let agent = Arc::new(Agent {
            node: cfg.node.clone(),
            advertise_addr: cfg.advertise_addr,
            mtus,
            underlay_mtu,
            store,
            worker,
            ports: tokio::sync::Mutex::new(LocalPorts {
                next: 1,
                ..Default::default()
            }),
            keys: Arc::new(std::sync::Mutex::new(keyring)),
            preshared,
            rotation_interval: cfg.key_rotation_interval,
            last_rotation: std::sync::Mutex::new(std::time::Instant::now()),
            rotation_retry: std::sync::Mutex::new(None),
            rotated_epoch: std::sync::atomic::AtomicU64::new(0),
            last_state: std::sync::Mutex::new(Arc::default()),
            tunnel_peers: std::sync::Mutex::new(Vec::new()),
            foreign_vteps: std::sync::Mutex::new(Vec::new()),
            store_ok: std::sync::atomic::AtomicBool::new(true),
            follow_stats: Default::default(),
            invalid_rows: std::sync::Mutex::new(Vec::new()),
            down: std::sync::Mutex::new(Default::default()),
            dns_upstream: upstream_resolvers(),
            judge: std::sync::Mutex::new(liveness::Judge::new(std::time::Instant::now())),
            heartbeat_skew_ms: cfg.heartbeat_skew_ms,
            attached: std::sync::atomic::AtomicUsize::new(0),
            sandbox,
            nft_table: tokio::sync::Mutex::new(String::new()),
            egress,
            services: node_guard::NodeServices {
                switch_guard,
                ..node_guard::NodeServices::new(cfg.wg_port, &cfg.store, cfg.metrics_addr)
            },
            egress_applied: tokio::sync::Mutex::default(),
            ingress_limit: cfg
                .ingress_rate_limit
                .map(|l| Arc::new(vxmesh_dataplane::lb::limit::SourceLimiter::new(l))),
            health_probes_max: cfg.health_probes_max.max(1),
            data_dir: cfg.data_dir.clone(),
            flows: cfg
                .limits
                .flow_log
                .map(|_| Arc::new(flows::Flows::new(cfg.limits.conntrack))),
        });
        let mut me = Node::new(&cfg.node, cfg.advertise_addr);
        me.last_seen = crate::state::model::unix_now();
        me.public_key = Some(public);
        me.wg_port = Some(cfg.wg_port);
        agent
            .transact(move |st| {
                let mut n = me.clone();
                if let Some(old) = st.nodes.get(&n.name) {
                    if old.external {
                        return Err(StateError::Conflict(format!(
                            "node {} is declared as an external WireGuard peer: remove it (vxmesh node rm {}) or pick another --node",
                            n.name, n.name
                        )));
                    }
                    n.labels = old.labels.clone();
                    n.ingress = old.ingress;
                    n.tunnel_addr = old.tunnel_addr;
                    n.key_epoch = old.key_epoch;
                    n.rotate_requested = old.rotate_requested;
                }
                ops::upsert_node(st, n)
            })
            .await
            .context("cannot register this node in the store")?;
        tracing::info!(node = %cfg.node, addr = %cfg.advertise_addr, mtu = agent.mtus.plain, encrypted_mtu = agent.mtus.encrypted, store = %agent.store.describe(), "agent started");
        Ok(agent)
    }

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

    /// The virtual services this node balances, with their backends' connection
    /// counts, as `ipvsadm -Ln` shows them.
    pub fn lb_table(&self) -> Vec<VirtualService> {
        self.lb_rows(None)
    }

    /// [`Self::lb_table`], or only the rows of one VIP (or sandbox address):
    /// what a poller asks many times a second (the scale harness watching a
    /// change land), without building and sending every row.
    pub fn lb_rows(&self, only: Option<IpAddr>) -> Vec<VirtualService> {
        let st = self.worker.state();
        let conns = self.worker.connections();
        let ejected = self.worker.ejected();
        let row = |net: &vxmesh_dataplane::NetworkView,
                   mark: u32,
                   vip: IpAddr,
                   published: Vec<String>| {
            if only.is_some_and(|o| o != vip) {
                return None;
            }
            let svc = net.services.get(&mark)?;
            // a VIP's real servers are its tasks' addresses of its family
            let backends = svc
                .backends
                .iter()
                .filter_map(|b| Some((b, b.addr_for(&vip)?)))
                .map(|(b, address)| {
                    let mine = conns.iter().filter(|e| {
                        e.orig.zone == net.vni && e.service == mark && e.reply.src == address
                    });
                    let (mut active, mut inactive) = (0, 0);
                    for e in mine {
                        if e.state == vxmesh_dataplane::conntrack::State::Established {
                            active += 1;
                        } else {
                            inactive += 1;
                        }
                    }
                    RealServer {
                        address,
                        forward: "Masq".into(),
                        weight: b.weight,
                        healthy: b.healthy,
                        ejected: ejected.contains(&(net.vni, mark, address)),
                        active,
                        inactive,
                    }
                })
                .collect();
            Some(VirtualService {
                fwmark: mark,
                vip,
                vni: net.vni,
                scheduler: svc.scheduler.as_str().into(),
                published,
                backends,
            })
        };
        let mut out = Vec::new();
        for net in st.networks.values() {
            for (vip, mark) in net.vips.iter() {
                out.extend(row(net, *mark, vip, Vec::new()));
            }
        }
        // the routing mesh: one virtual service per publishing service, fed by
        // the ports this node answers
        if let Some(ing) = &st.ingress {
            if let Some(net) = st.networks.get(&ing.vni) {
                let mut marks: Vec<u32> = net.services.keys().copied().collect();
                marks.sort_unstable();
                for mark in marks {
                    let mut published: Vec<String> = ing
                        .published
                        .iter()
                        .filter(|(_, p)| p.fwmark == mark)
                        .map(|((proto, port), p)| {
                            let proto = if *proto == 17 { "udp" } else { "tcp" };
                            let host = if p.host_only { ",host" } else { "" };
                            format!("{port}/{proto}->{}{host}", p.target)
                        })
                        .collect();
                    published.sort();
                    out.extend(row(net, mark, ing.sandbox_ip.into(), published.clone()));
                    if let Some(ip6) = ing.sandbox_ip6 {
                        out.extend(row(net, mark, ip6.into(), published));
                    }
                }
            }
        }
        out
    }

    /// The stored rows left out of the state as invalid, at the last read.
    pub fn invalid_rows(&self) -> Vec<crate::state::validate::InvalidRow> {
        self.invalid_rows
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
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

    pub fn store_reachable(&self) -> bool {
        self.store_ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn attached_count(&self) -> usize {
        self.attached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The connections this node tracks through VIPs.
    pub fn conntrack_table(&self) -> Vec<crate::api_types::conntrack::ConntrackEntry> {
        self.worker
            .connections()
            .iter()
            .map(|e| crate::api_types::conntrack::ConntrackEntry {
                proto: match e.orig.proto {
                    6 => "tcp",
                    17 => "udp",
                    1 => "icmp",
                    _ => "other",
                }
                .into(),
                zone: e.orig.zone,
                src: format!("{}:{}", e.orig.src, e.orig.sport),
                dst: format!("{}:{}", e.orig.dst, e.orig.dport),
                backend: format!("{}:{}", e.reply.src, e.reply.sport),
                fwmark: e.service,
                state: format!("{:?}", e.state),
            })
            .collect()
    }

    /// Per worker: frames read from ports and from the underlay.
    pub fn worker_counters(&self) -> Vec<Counters> {
        self.worker.worker_counters()
    }

    pub fn counters(&self) -> Counters {
        self.worker.counters()
    }

    /// Connections tracked now, the table's maximum, and setups and evictions so far.
    pub fn conntrack_stats(&self) -> vxmesh_dataplane::io::dataplane::ConntrackStats {
        self.worker.conntrack_stats()
    }

    pub fn store_name(&self) -> String {
        self.store.describe()
    }

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

    /// Timed work between store changes: key rotation when scheduled or asked
    /// for (`node rotate-key`, retried every [`ROTATION_RETRY`] while the store
    /// cannot take it), and telling the tunnels when the previous key's grace
    /// period is over.
    async fn housekeeping(&self) {
        let now = std::time::Instant::now();
        let held_off = self
            .rotation_retry
            .lock()
            .map(|r| r.is_some_and(|t| now < t))
            .unwrap_or(false);
        let scheduled = self.rotation_interval.is_some_and(|i| {
            self.last_rotation
                .lock()
                .map(|t| t.elapsed() >= i)
                .unwrap_or(false)
        });
        let asked = self
            .last_state()
            .nodes
            .get(&self.node)
            .filter(|n| n.rotate_requested > n.key_epoch)
            .map(|n| n.rotate_requested)
            .filter(|e| {
                *e > self
                    .rotated_epoch
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
        if !held_off && (scheduled || asked.is_some()) {
            let retry = match self.rotate(asked).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::error!(error = %e, "key rotation failed; the current key stays in use");
                    Some(now + ROTATION_RETRY)
                }
            };
            if let Ok(mut r) = self.rotation_retry.lock() {
                *r = retry;
            }
        }
        let had_previous = self.keys.lock().map(|k| k.has_previous()).unwrap_or(false);
        if had_previous {
            self.publish_tunnels(&self.last_state());
        }
    }

    /// The state last applied (empty before the first).
    fn last_state(&self) -> Arc<ClusterState> {
        self.last_state
            .lock()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    fn publish_tunnels(&self, st: &ClusterState) {
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

    /// Replaces this node's static key (see [`keys::rotate`]: on disk, then in
    /// the store, then in the tunnels, which accept the old one a while longer).
    pub async fn rotate(&self, requested: Option<u64>) -> Result<(), AgentError> {
        let (ring, store, node) = (self.keys.clone(), self.store.clone(), self.node.clone());
        tokio::task::spawn_blocking(move || keys::rotate(&ring, &*store, &node, requested))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))??;
        if let Some(e) = requested {
            self.rotated_epoch
                .fetch_max(e, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut t) = self.last_rotation.lock() {
            *t = std::time::Instant::now();
        }
        self.publish_tunnels(&self.last_state());
        tracing::info!(node = %self.node, "static key rotated");
        Ok(())
    }

    /// Heartbeats this node every second and watches the others': a node whose
    /// heartbeat has not changed for 4 s (on this agent's monotonic clock, see
    /// [`liveness`]) is down, and its tasks leave this node's balancer and DNS
    /// until it beats again. While the store cannot be read the last view
    /// stands; once it can again, every node gets 4 s from then to beat (their
    /// beats failed too) before it counts as down.
    pub async fn liveness(self: Arc<Self>) {
        const EVERY: Duration = Duration::from_secs(1);
        let mut failing = false;
        let mut beater = liveness::Beater::new(self.heartbeat_skew_ms);
        loop {
            let (s, node) = (self.store.clone(), self.node.clone());
            let value = beater.next(crate::state::model::unix_now_ms());
            let beats = tokio::task::spawn_blocking(move || {
                let beat = s.heartbeat(&node, value);
                let beats = s.heartbeats()?;
                beat.map(|()| beats)
            })
            .await;
            match beats {
                Ok(Ok(beats)) => {
                    let now = std::time::Instant::now();
                    if std::mem::take(&mut failing) {
                        if let Ok(mut j) = self.judge.lock() {
                            j.store_back(now);
                        }
                        tracing::info!(
                            "store reachable again: nodes get {:?} to heartbeat",
                            liveness::DOWN_AFTER
                        );
                    }
                    self.judge_liveness(&beats, now).await;
                }
                _ => {
                    if !failing {
                        tracing::warn!("heartbeat failed: keeping the last liveness view");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }

    /// Applies one reading of the heartbeats.
    async fn judge_liveness(
        &self,
        beats: &std::collections::BTreeMap<String, u64>,
        now: std::time::Instant,
    ) {
        let st = self.last_state();
        let down = match self.judge.lock() {
            Ok(mut j) => {
                j.observe(beats, now);
                j.retain(&st);
                j.down(&st, &self.node, now, liveness::DOWN_AFTER)
            }
            Err(_) => return,
        };
        let changed = match self.down.lock() {
            Ok(mut d) if *d != down => {
                tracing::info!(down = ?down, "node liveness changed");
                *d = down;
                true
            }
            _ => false,
        };
        if changed {
            let ports = self.ports.lock().await;
            self.publish(&st, &ports);
        }
    }

    /// Each node's liveness as this agent sees it: the nodes it counts down, and
    /// how long ago (on this agent's clock) each one's heartbeat last changed.
    pub fn liveness_view(
        &self,
    ) -> (
        std::collections::BTreeSet<String>,
        std::collections::BTreeMap<String, Duration>,
    ) {
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let ages = self
            .judge
            .lock()
            .map(|j| j.ages(std::time::Instant::now()))
            .unwrap_or_default();
        (down, ages)
    }

    /// Probes this node's tasks whose service has `--health`, each every
    /// `--health-interval` (default 5 s), and writes verdicts to the store:
    /// unhealthy after 2 failures in a row, healthy after 1 success. Probes
    /// run side by side, one at a time per task and at most
    /// `--health-probes-max` at once (each holds a thread while it waits);
    /// tasks due past that wait for a free slot.
    pub async fn probe_tasks(self: Arc<Self>) {
        let mut last: HashMap<String, std::time::Instant> = HashMap::new();
        let mut fails: HashMap<String, u32> = HashMap::new();
        let mut running: std::collections::HashSet<String> = Default::default();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.health_probes_max));
        // at most one result per running probe waits here
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let st = self.last_state();
            while let Ok((id, ok)) = done.try_recv() {
                running.remove(&id);
                self.record_probe(&st, &id, ok, &mut fails).await;
            }
            last.retain(|id, _| st.endpoints.contains_key(id));
            fails.retain(|id, _| st.endpoints.contains_key(id));
            // a task's ingress interface shares the task's verdict
            for ep in st
                .endpoints
                .values()
                .filter(|e| e.node == self.node && crate::state::ingress::task_of(e).is_none())
            {
                let Some(svc) = ep.service.as_ref().and_then(|s| st.services.get(s)) else {
                    continue;
                };
                let Some(probe) = svc.health.as_deref().and_then(health::Probe::parse) else {
                    continue;
                };
                let every = Duration::from_millis(svc.health_interval_ms.unwrap_or(5000).max(100));
                if running.contains(&ep.id) || last.get(&ep.id).is_some_and(|t| t.elapsed() < every)
                {
                    continue;
                }
                let Some(ip) = ep.ips.first().copied() else {
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break; // every slot busy: the rest on a later round
                };
                last.insert(ep.id.clone(), std::time::Instant::now());
                running.insert(ep.id.clone());
                let path = attach::netns_path(&ep.netns);
                let timeout = every.min(Duration::from_secs(2));
                let (id, tx) = (ep.id.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let ok = tokio::task::spawn_blocking(move || {
                        health::probe(path, ip, probe, timeout)
                    })
                    .await
                    .unwrap_or(false);
                    drop(slot);
                    let _ = tx.send((id, ok));
                });
            }
        }
    }

    /// Counts one probe's outcome for task `id` and writes its verdict to the
    /// store when it changes.
    async fn record_probe(
        &self,
        st: &ClusterState,
        id: &str,
        ok: bool,
        fails: &mut HashMap<String, u32>,
    ) {
        let Some(ep) = st.endpoints.get(id) else {
            return;
        };
        let n = fails.entry(ep.id.clone()).or_default();
        *n = if ok { 0 } else { *n + 1 };
        let verdict = match (ok, *n) {
            (true, _) => "healthy",
            (false, n) if n >= 2 => "unhealthy",
            _ => return,
        };
        if ep.health.as_deref() == Some(verdict) {
            return;
        }
        let (id, v) = (ep.id.clone(), verdict.to_string());
        let r = self
            .transact(move |st| {
                if let Some(e) = st.endpoints.get_mut(&id) {
                    e.health = Some(v.clone());
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => tracing::info!(endpoint = %ep.id, health = verdict, "task health changed"),
            Err(e) => tracing::warn!(endpoint = %ep.id, error = %e, "cannot record task health"),
        }
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

    fn add_port(
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
    fn close_port(&self, ports: &mut LocalPorts, id: &str) -> Option<Endpoint> {
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

    /// Saves the balancer's connections for the next run (on a clean stop).
    pub fn save_connections(&self) {
        let entries = self.worker.connections();
        match snapshot::save_connections(&self.data_dir, &entries) {
            Ok(n) => tracing::info!(connections = n, "connections saved for the next run"),
            Err(e) => tracing::warn!(error = %e, "cannot save the connections"),
        }
    }

    /// Puts back the connections the last run saved.
    pub fn restore_connections(&self) {
        let saved = snapshot::take_connections(&self.data_dir);
        if !saved.is_empty() {
            let n = self.worker.restore_connections(&saved);
            tracing::info!(connections = n, "connections restored from the last run");
        }
    }

    fn publish(&self, st: &ClusterState, ports: &LocalPorts) {
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

/// The nameservers of the agent's namespace, of either family (`ip netns exec` shows a node
/// namespace its own `/etc/netns/NAME/resolv.conf` here).
fn upstream_resolvers() -> Vec<std::net::SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        // a scoped link-local address (fe80::1%eth0) names an interface the
        // workers' socket is not on: left out
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|ip| ip.is_ipv4() || iproute::host_has_ipv6())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect()
}

/// `lb ls`'s rows, which the metrics count too, are the API's.
pub use crate::api_types::lb::{RealServer, VirtualService};

/// A 16-hex-digit endpoint id (the TAP name takes the first 12).
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

/// Refuses advertise addresses no peer could send VXLAN to: unspecified,
/// multicast, IPv4-mapped IPv6 (say the IPv4 address itself), and IPv6
/// link-local ones (meaningless without an interface, which the store does
/// not record). Loopback stays allowed: a one-node trial needs no peer.
fn check_advertise_addr(addr: IpAddr) -> anyhow::Result<()> {
    let why = match addr {
        a if a.is_unspecified() => Some("the unspecified address"),
        a if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (advertise the IPv4 address itself)")
        }
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some(
            "an IPv6 link-local address (peers would need to know its interface): advertise a global or unique-local (fd00::/8) one",
        ),
        _ => None,
    };
    match why {
        Some(why) => anyhow::bail!("--advertise-addr {addr} is {why}"),
        None => Ok(()),
    }
}

/// How long start-up waits for a tentative IPv6 `--advertise-addr` to pass
/// duplicate address detection (the kernel's default takes about a second).
const DAD_WAIT: Duration = Duration::from_secs(5);

/// Waits while the advertised address is still tentative (an IPv6 address just
/// added, or whose link just came up, cannot be bound yet: binding the send
/// sockets would fail with a puzzling "cannot assign requested address");
/// refuses one that failed duplicate address detection.
async fn wait_address_usable(addr: IpAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DAD_WAIT;
    loop {
        match iproute::address_state(addr).await? {
            Some(iproute::AddressState::DadFailed) => anyhow::bail!(
                "--advertise-addr {addr} failed duplicate address detection (another host on the link has it): give this node another address"
            ),
            Some(iproute::AddressState::Tentative) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Some(iproute::AddressState::Tentative) => anyhow::bail!(
                "--advertise-addr {addr} is still tentative (IPv6 duplicate address detection) after {DAD_WAIT:?}: is its link up?"
            ),
            // Ready, or absent (the MTU look-up that follows says so)
            _ => return Ok(()),
        }
    }
}

/// Test-only fault injection, from the agent's environment once at start
/// (nothing a container or the API can set). `VXMESH_TEST_FAULT=worker-panic-after=MS`
/// makes the last dataplane worker panic MS milliseconds after the dataplane
/// starts, so that tests see the agent notice a dead worker and exit;
/// `VXMESH_TEST_FAULT=no-switch-guard` leaves the node services' guard out of
/// the switch (the egress table keeps its own), so that tests see the kernel's
/// layer hold alone. Any other value is refused, so a mistyped fault does not
/// pass unnoticed. Returns whether the switch keeps its guard.
fn inject_test_fault(dp: &Dataplane, fault: Option<&str>) -> anyhow::Result<bool> {
    let Some(fault) = fault.filter(|f| !f.is_empty()) else {
        return Ok(true);
    };
    match parse_test_fault(fault)? {
        TestFault::WorkerPanicAfter(ms) => {
            let index = dp.workers() - 1;
            tracing::warn!(
                worker = index,
                after_ms = ms,
                "VXMESH_TEST_FAULT: this worker will panic (a test fault)"
            );
            dp.inject_worker_panic(index, Duration::from_millis(ms));
            Ok(true)
        }
        TestFault::NoSwitchGuard => {
            tracing::warn!(
                "VXMESH_TEST_FAULT: the switch does not guard the node's services (a test fault)"
            );
            Ok(false)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TestFault {
    WorkerPanicAfter(u64),
    NoSwitchGuard,
}

/// A `VXMESH_TEST_FAULT` value (see [`inject_test_fault`]).
fn parse_test_fault(fault: &str) -> anyhow::Result<TestFault> {
    if fault == "no-switch-guard" {
        return Ok(TestFault::NoSwitchGuard);
    }
    fault
        .strip_prefix("worker-panic-after=")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(TestFault::WorkerPanicAfter)
        .with_context(|| {
            format!(
                "VXMESH_TEST_FAULT={fault}: the test faults are worker-panic-after=MS and no-switch-guard"
            )
        })
}

/// Waits until a dataplane worker stops on its own (it panicked, or its poll
/// failed); returns which and why.
async fn dead_worker(dp: &Dataplane) -> (usize, String) {
    loop {
        if let Some(dead) = dp.stopped_worker() {
            return dead;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs an agent until SIGINT or SIGTERM, or until a dataplane worker dies:
/// then it saves the connections and fails, so that the service manager
/// restarts it (the TAPs outlive it, and the next run takes back the ports
/// and connections) instead of it heartbeating with a dead forwarder.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", cfg.data_dir.display()))?;
    let group = cfg
        .socket_group
        .as_deref()
        .map(crate::api::server::group_id)
        .transpose()?;
    let agent = Agent::start(&cfg).await?;
    let listener = crate::api::server::bind(&cfg.api, group)?;
    if let Some(addr) = cfg.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on --metrics-addr {addr}"))?;
        let a = agent.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let a = a.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics::render(&a),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "metrics on /metrics");
    }
    flows::spawn(agent.clone(), cfg.flow_export.clone()).with_context(|| {
        format!(
            "cannot open --flow-log {}",
            cfg.flow_export
                .as_ref()
                .map_or_else(String::new, |e| e.path.display().to_string())
        )
    })?;
    agent.restore_connections();
    agent.remove_stale_interfaces().await;
    tokio::spawn(agent.clone().follow());
    tokio::spawn(agent.clone().probe_tasks());
    tokio::spawn(agent.clone().liveness());
    let docker = if cfg.docker_plugin {
        Some(crate::docker::start(agent.clone(), &cfg.data_dir, group).await?)
    } else {
        None
    };
    let api = tokio::spawn(crate::api::server::serve(listener, agent.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let dead = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        r = api => { r??; None }
        d = dead_worker(&agent.worker) => Some(d),
    };
    match &dead {
        Some((worker, why)) => tracing::error!(
            worker,
            reason = %why,
            "dataplane worker {worker} stopped: {why}; the agent exits to be restarted"
        ),
        None => tracing::info!("stopping"),
    }
    agent.save_connections();
    if let Some(d) = docker {
        d.stop().await;
    }
    if cfg.cleanup_on_exit {
        if let Err(e) = ingress::remove_table().await {
            tracing::warn!(error = %e, "cannot remove the ingress table");
        }
        if let Err(e) = egress::remove().await {
            tracing::warn!(error = %e, "cannot remove the egress table");
        }
    }
    let _ = std::fs::remove_file(&cfg.api);
    match dead {
        Some((worker, why)) => Err(anyhow::anyhow!(
            "dataplane worker {worker} stopped ({why}): exiting so that the agent is restarted"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod startup_tests {
    use super::{check_advertise_addr, foreign_vteps, parse_test_fault, TestFault};
    use std::net::IpAddr;
    use vxmesh_dataplane::{NetworkView, SwitchState};

    /// An IPv6 node names the IPv4 VTEPs it cannot reach (members and static
    /// peers of plain networks), not its own family's, nor encrypted networks'
    /// tunnel addresses.
    #[test]
    fn only_the_one_test_fault_is_taken() {
        assert_eq!(
            parse_test_fault("worker-panic-after=1500").unwrap(),
            TestFault::WorkerPanicAfter(1500)
        );
        assert_eq!(
            parse_test_fault("no-switch-guard").unwrap(),
            TestFault::NoSwitchGuard
        );
        for bad in [
            "worker-panic-after=",
            "worker-panic-after=-1",
            "worker-panic",
            "x=1",
        ] {
            let e = parse_test_fault(bad).unwrap_err().to_string();
            assert!(e.contains("worker-panic-after=MS"), "{bad}: {e}");
        }
    }

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

    /// Global and unique-local addresses of either family are fine; nothing a
    /// peer could not send to is.
    #[test]
    fn advertise_addresses_peers_cannot_reach_are_refused() {
        for ok in ["192.0.2.1", "2001:db8::1", "fd00:77::5", "127.0.0.1", "::1"] {
            assert!(check_advertise_addr(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("ff02::1", "multicast"),
            ("::ffff:192.0.2.1", "IPv4-mapped"),
            ("fe80::1", "link-local"),
        ] {
            let e = check_advertise_addr(bad.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}
