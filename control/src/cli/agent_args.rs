//! `vxmesh agent`'s flags, and the agent's configuration made of them.

use super::OnOff;
use crate::agent::{self, AgentConfig};
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    /// This node's name, unique in the cluster
    #[arg(long)]
    node: String,
    /// This node's underlay address; VXLAN goes to and from it
    #[arg(long)]
    advertise_addr: IpAddr,
    /// sqlite:PATH, etcds://HOST:PORT[,HOST:PORT] (TLS) or etcd://HOST:PORT[,HOST:PORT] (default: sqlite:DATA_DIR/store.db)
    #[arg(long)]
    store: Option<String>,
    /// The CA that signed etcd's server certificate (PEM), for etcds://
    #[arg(long, value_name = "PATH")]
    store_ca: Option<PathBuf>,
    /// This node's client certificate for etcd (PEM), for etcd's --client-cert-auth
    #[arg(long, value_name = "PATH", requires = "store_key")]
    store_cert: Option<PathBuf>,
    /// The key of --store-cert (PEM)
    #[arg(long, value_name = "PATH", requires = "store_cert")]
    store_key: Option<PathBuf>,
    /// The etcd user, where etcd has `auth enable`; its password comes from --store-password-file or VXMESH_STORE_PASSWORD
    #[arg(long, value_name = "USER")]
    store_user: Option<String>,
    /// A file holding --store-user's password (one line)
    #[arg(long, value_name = "PATH", requires = "store_user")]
    store_password_file: Option<PathBuf>,
    /// Allow plaintext etcd:// to a non-loopback address (a network you trust); etcds:// is the safe choice
    #[arg(long)]
    store_insecure: bool,
    #[arg(long, default_value = "/var/lib/vxmesh")]
    data_dir: PathBuf,
    /// The API socket, unix:PATH (mode 0660: root and --socket-group may use it, and so control this node)
    #[arg(long, default_value = "unix:/run/vxmesh/vxmesh.sock")]
    api: String,
    /// The group (name or number) whose members may use the API and Docker plugin sockets (default: the agent's own)
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Log as JSON lines instead of text
    #[arg(long)]
    log_json: bool,
    /// UDP port of this node's WireGuard socket (encrypted networks)
    #[arg(long, default_value_t = agent::WG_PORT)]
    wg_port: u16,
    /// A file with the cluster's WireGuard preshared key (base64, `wg genpsk`), the same on every node
    #[arg(long)]
    preshared_key_file: Option<PathBuf>,
    /// Replace this node's WireGuard key this often, e.g. 12h, 30m, 90s
    #[arg(long, value_parser = parse_duration)]
    key_rotation_interval: Option<std::time::Duration>,
    /// Dataplane worker threads, each with its own TAP queue and underlay socket (default: one per CPU)
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: Option<u16>,
    /// Serve Prometheus metrics on IP:PORT (GET /metrics)
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Be Docker's network and IPAM driver `vxmesh` (/run/docker/plugins/vxmesh.sock)
    #[arg(long)]
    docker_plugin: bool,
    /// Remove the routing mesh's and egress's nftables tables when stopping (a
    /// node leaving for good); by default they stay, so a restart resets no
    /// connection through a published port
    #[arg(long)]
    cleanup_on_exit: bool,
    /// Connections tracked (VIPs and published ports), at most; when full a new one evicts an old one, half-open first
    #[arg(long, value_name = "N", default_value_t = vxmesh_dataplane::io::dataplane::CONNTRACK_MAX as u32,
          value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    conntrack_max: u32,
    /// MACs each worker learns from static peer VTEPs (--peer-vtep), at most; past it their frames are flooded
    #[arg(long, value_name = "N", default_value_t = vxmesh_dataplane::io::dataplane::FDB_LEARNED_MAX as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    fdb_learned_max: u32,
    /// DNS queries each worker relays to the node's resolvers at once, at most; past it they are dropped (dns_busy)
    #[arg(long, value_name = "N", default_value_t = vxmesh_dataplane::io::dataplane::DNS_FORWARDS_MAX as u32,
          value_parser = clap::value_parser!(u32).range(1..=vxmesh_dataplane::io::dataplane::DNS_FORWARDS_LIMIT as i64))]
    dns_forwards_max: u32,
    /// Health probes running at once, at most (each holds a thread while it waits)
    #[arg(long, value_name = "N", default_value_t = agent::HEALTH_PROBES_MAX as u32,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    health_probes_max: u32,
    /// New connections per second each client address may open to published ports, N/s[,burst=B] (burst: N); over it they are dropped (ingress_rate_limited). Default: no limit
    #[arg(long, value_name = "N/s[,burst=B]")]
    ingress_rate_limit: Option<vxmesh_dataplane::lb::limit::RateLimit>,
    /// Test only: write heartbeats (and answer doctor probes) N ms off this
    /// node's wall clock, as a node with a wrong clock would (the liveness and
    /// doctor tests' clock skew)
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    test_heartbeat_skew_ms: i64,
    /// Broadcast, multicast and unknown-unicast frames each endpoint may send a second (per worker), N/s[,burst=B] or off; over it they are dropped (flood_limited)
    #[arg(
        long,
        value_name = "N/s[,burst=B]|off",
        default_value = "1000/s,burst=2000"
    )]
    flood_rate: FloodRate,
    /// Flow logs: a record per connection and per dropped packet (rate-limited), for `vxmesh flows`
    #[arg(long, value_enum, default_value = "on")]
    flow_logs: OnOff,
    /// Also write flow records to this file (JSON lines, or OTLP/JSON with --flow-log-format otel)
    #[arg(long, value_name = "PATH")]
    flow_log: Option<PathBuf>,
    /// Rotate --flow-log past this size: PATH becomes PATH.1, and so on
    #[arg(long, value_name = "SIZE", default_value = "64MiB",
          value_parser = crate::agent::flows::export::parse_size)]
    flow_log_max_size: u64,
    /// Rotated --flow-log files kept (PATH.1 .. PATH.N)
    #[arg(long, value_name = "N", default_value_t = 5)]
    flow_log_keep: usize,
    /// What --flow-log holds: json (a record a line) or otel (OTLP/JSON logs, an export request a line)
    #[arg(long, value_name = "json|otel", default_value = "json")]
    flow_log_format: crate::agent::flows::export::Format,
    /// Test only: no connection stays idle in the table longer than N ms
    /// (the flow-log tests' idle expiry)
    #[arg(long, hide = true, value_name = "N")]
    test_conntrack_timeout_ms: Option<u64>,
}

/// `--flow-log` and its rotation, refused without flow logs.
fn flow_export(a: &AgentArgs) -> anyhow::Result<Option<crate::agent::flows::ExportConfig>> {
    let Some(path) = &a.flow_log else {
        return Ok(None);
    };
    if a.flow_logs == OnOff::Off {
        anyhow::bail!("--flow-log needs flow logs on: drop --flow-logs off");
    }
    Ok(Some(crate::agent::flows::ExportConfig {
        path: path.clone(),
        max_size: a.flow_log_max_size,
        keep: a.flow_log_keep,
        format: a.flow_log_format,
    }))
}

/// The variable a store password may come from instead of a file (never a
/// flag: the command line is world-readable in /proc).
const STORE_PASSWORD_ENV: &str = "VXMESH_STORE_PASSWORD";

/// The `--store-*` flags; the password is read here, from its file or the environment.
fn store_options(a: &AgentArgs) -> anyhow::Result<crate::store::StoreOptions> {
    let password = match (&a.store_password_file, std::env::var(STORE_PASSWORD_ENV)) {
        (Some(path), _) => {
            let text = anyhow::Context::with_context(std::fs::read_to_string(path), || {
                format!("cannot read --store-password-file {}", path.display())
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        }
        (None, Ok(p)) if a.store_user.is_some() => Some(p),
        _ => None,
    };
    // Read once: the agent's children (ip, nft, nsenter) need not inherit it.
    // Still single-threaded here, before the runtime starts.
    std::env::remove_var(STORE_PASSWORD_ENV);
    if a.store_user.is_some() && password.is_none() {
        anyhow::bail!(
            "--store-user needs a password: --store-password-file PATH or {STORE_PASSWORD_ENV}"
        );
    }
    Ok(crate::store::StoreOptions {
        ca: a.store_ca.clone(),
        cert: a.store_cert.clone(),
        key: a.store_key.clone(),
        user: a.store_user.clone(),
        password,
        insecure: a.store_insecure,
    })
}

/// `--flood-rate`: a rate, or `off`.
#[derive(Debug, Clone, Copy)]
struct FloodRate(Option<vxmesh_dataplane::lb::limit::RateLimit>);

impl std::str::FromStr for FloodRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(FloodRate(None)),
            s => s
                .parse()
                .map(|r| FloodRate(Some(r)))
                .map_err(|e: String| e.replace("connections", "frames") + ", or off"),
        }
    }
}

/// `90s`, `30m`, `12h`, `1d`, or plain seconds.
pub(super) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration like 500ms, 90s, 30m, 12h or 1d");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(bad()),
    };
    if ms == 0 {
        return Err("a duration must be longer than 0".into());
    }
    Ok(std::time::Duration::from_millis(ms))
}

fn socket_path(api: &str) -> anyhow::Result<PathBuf> {
    match api.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => anyhow::bail!("--api {api:?}: use unix:PATH"),
    }
}

impl AgentArgs {
    /// Runs the agent until it is stopped.
    pub(super) fn run(self) -> anyhow::Result<()> {
        crate::logging::init(self.log_json);
        let cfg = self.config()?;
        tokio::runtime::Runtime::new()?.block_on(crate::daemon::run(cfg))
    }

    fn config(self) -> anyhow::Result<AgentConfig> {
        let flow_export = flow_export(&self)?;
        Ok(AgentConfig {
            store_options: store_options(&self)?,
            store: self
                .store
                .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("store.db").display())),
            node: self.node,
            advertise_addr: self.advertise_addr,
            api: socket_path(&self.api)?,
            data_dir: self.data_dir,
            wg_port: self.wg_port,
            preshared_key_file: self.preshared_key_file,
            key_rotation_interval: self.key_rotation_interval,
            workers: self.workers.map(usize::from),
            metrics_addr: self.metrics_addr,
            docker_plugin: self.docker_plugin,
            cleanup_on_exit: self.cleanup_on_exit,
            limits: vxmesh_dataplane::io::dataplane::Limits {
                conntrack: self.conntrack_max as usize,
                fdb_learned: self.fdb_learned_max as usize,
                dns_forwards: self.dns_forwards_max as usize,
                flood_rate: self.flood_rate.0,
                flow_log: (self.flow_logs == OnOff::On)
                    .then(vxmesh_dataplane::flowlog::FlowLogConfig::default),
                conntrack_timeout_cap_ms: self.test_conntrack_timeout_ms,
            },
            health_probes_max: self.health_probes_max as usize,
            ingress_rate_limit: self.ingress_rate_limit,
            heartbeat_skew_ms: self.test_heartbeat_skew_ms,
            socket_group: self.socket_group,
            flow_export,
        })
    }
}
