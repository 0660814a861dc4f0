//! The `vxmesh` command line, as DESIGN.md's contract writes it.

mod flows;
mod output;

use crate::agent::{self, AgentConfig};
use crate::api::client::{Client, DEFAULT_SOCKET};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use ipnet::IpNet;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vxmesh",
    version,
    about = "Userspace VXLAN overlays and a routing-mesh load balancer for containers"
)]
pub struct Cli {
    /// The agent to talk to: unix:PATH (default: $VXMESH_HOST, then the local agent's socket)
    #[arg(short = 'H', long = "host", global = true, env = "VXMESH_HOST")]
    host: Option<String>,
    /// Print tables, or JSON
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent
    Agent(Box<AgentArgs>),
    /// Overlay networks
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Container interfaces on networks
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Nodes of the cluster
    #[command(subcommand)]
    Node(NodeCmd),
    /// Services: a VIP per network, balanced over their tasks
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Per-node access policies for ingress traffic
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The load balancer's virtual services
    #[command(subcommand)]
    Lb(ListCmd),
    /// Connections tracked through VIPs on this node
    #[command(subcommand)]
    Conntrack(ListCmd),
    /// This agent's dataplane counters (frames, drops by reason)
    Stats,
    /// Check everything a working mesh needs, from this node: the store, every
    /// other node (VXLAN and WireGuard both ways, path MTU, clock), this node's
    /// tables, TAPs and sockets. Exits 1 if any check fails
    Doctor,
    /// Flow records: a line per connection (set up, ended: how, what it
    /// carried) and per dropped packet, on this node
    Flows(flows::FlowsArgs),
    /// Write the frames this node's switch sees on a network to a pcap file
    Trace {
        #[arg(long)]
        network: String,
        /// arp, icmp, icmp6, tcp, udp, "host IP" or "port N" (default: every frame)
        #[arg(long, default_value = "")]
        filter: String,
        /// Seconds to trace for
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop after this many frames
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// The pcap file to write (tcpdump -r, Wireshark)
        #[arg(short = 'w', long = "write")]
        file: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
struct AgentArgs {
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
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
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

#[derive(Subcommand, Debug)]
enum NetworkCmd {
    /// Create an overlay network
    Create {
        name: String,
        /// One IPv4 and/or one IPv6 subnet (default: a free /24 of 10.10.0.0/16)
        #[arg(long = "subnet")]
        subnets: Vec<IpNet>,
        #[arg(long)]
        encrypted: bool,
        /// No egress beyond the overlay
        #[arg(long)]
        internal: bool,
        /// VXLAN network identifier, 1-16777215 (default: the first free from 4096)
        #[arg(long)]
        vni: Option<u32>,
        /// A static VTEP that runs no vxmesh (e.g. the Linux kernel's VXLAN)
        #[arg(long = "peer-vtep")]
        peer_vteps: Vec<IpAddr>,
    },
    #[command(alias = "list")]
    Ls,
    Inspect {
        name: String,
    },
    #[command(alias = "remove")]
    Rm {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Give a network namespace an interface on a network (prints id and IP)
    Create {
        #[arg(long)]
        network: String,
        /// A name under /run/netns, or a path to a namespace file
        #[arg(long)]
        netns: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        #[arg(long)]
        ip: Option<IpAddr>,
        #[arg(long)]
        service: Option<String>,
        /// Attach this existing veth (its host end) instead of creating a TAP
        #[arg(long)]
        veth: Option<String>,
    },
    #[command(alias = "list")]
    Ls,
    #[command(alias = "remove")]
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// Create a service; its tasks are endpoints created with --service NAME
    Create {
        name: String,
        #[arg(long = "network", required = true)]
        networks: Vec<String>,
        /// PUB:TARGET[/tcp|/udp][,mode=host], or :TARGET for a port from 30000-32767
        #[arg(long)]
        publish: Vec<String>,
        /// vip or dnsrr
        #[arg(long)]
        endpoint_mode: Option<String>,
        /// rr, wrr, lc, sh or maglev
        #[arg(long)]
        scheduler: Option<String>,
        /// tcp:PORT or http:PORT/PATH
        #[arg(long)]
        health: Option<String>,
        #[arg(long, value_parser = parse_duration)]
        health_interval: Option<std::time::Duration>,
    },
    /// Change a service's published ports
    Update {
        name: String,
        #[arg(long = "publish-add")]
        publish_add: Vec<String>,
        /// PUB[/tcp|/udp]
        #[arg(long = "publish-rm")]
        publish_rm: Vec<String>,
    },
    #[command(alias = "list")]
    Ls,
    Inspect {
        name: String,
    },
    #[command(alias = "remove")]
    Rm {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Decide what a node does with new ingress connections to a port (the
    /// longest matching --from wins; no rule: accept)
    Add {
        #[arg(long)]
        node: String,
        /// PORT[/tcp|/udp] (the published port)
        #[arg(long)]
        port: String,
        #[arg(long, value_parser = ["drop", "reject", "accept"])]
        action: String,
        /// Sources it applies to (default: every source)
        #[arg(long)]
        from: Option<String>,
        /// Audit mode: log what it would do (vxmesh flows --verdict audit), do nothing
        #[arg(long)]
        audit: bool,
    },
    #[command(alias = "list")]
    Ls,
    #[command(alias = "remove")]
    Rm { id: String },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
enum ListCmd {
    #[command(alias = "list")]
    Ls,
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    #[command(alias = "list")]
    Ls,
    /// Declare a WireGuard peer that runs no vxmesh (e.g. wireguard-go + kernel VXLAN)
    Add {
        name: String,
        /// Its underlay address (where its WireGuard socket listens)
        #[arg(long)]
        advertise_addr: IpAddr,
        /// Its WireGuard public key (base64, as `wg pubkey` prints)
        #[arg(long)]
        public_key: String,
        /// Its address on its WireGuard interface: its VTEP, named by --peer-vtep
        #[arg(long)]
        tunnel_addr: std::net::Ipv4Addr,
        #[arg(long, default_value_t = agent::WG_PORT)]
        wg_port: u16,
    },
    /// Remove a node (and its key) from the cluster
    #[command(alias = "remove")]
    Rm { name: String },
    /// Change a node: --ingress off stops it accepting any routing-mesh traffic
    Update {
        name: String,
        #[arg(long, value_enum)]
        ingress: Option<OnOff>,
    },
    /// Replace a node's WireGuard static key; peers follow without losing traffic
    RotateKey { name: String },
}

fn socket_path(api: &str) -> anyhow::Result<PathBuf> {
    match api.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => anyhow::bail!("--api {api:?}: use unix:PATH"),
    }
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Agent(a) => {
            crate::logging::init(a.log_json);
            let flow_export = flow_export(&a)?;
            let cfg = AgentConfig {
                store_options: store_options(&a)?,
                store: a
                    .store
                    .unwrap_or_else(|| format!("sqlite:{}", a.data_dir.join("store.db").display())),
                node: a.node,
                advertise_addr: a.advertise_addr,
                api: socket_path(&a.api)?,
                data_dir: a.data_dir,
                wg_port: a.wg_port,
                preshared_key_file: a.preshared_key_file,
                key_rotation_interval: a.key_rotation_interval,
                workers: a.workers.map(usize::from),
                metrics_addr: a.metrics_addr,
                docker_plugin: a.docker_plugin,
                cleanup_on_exit: a.cleanup_on_exit,
                limits: vxmesh_dataplane::io::dataplane::Limits {
                    conntrack: a.conntrack_max as usize,
                    fdb_learned: a.fdb_learned_max as usize,
                    dns_forwards: a.dns_forwards_max as usize,
                    flood_rate: a.flood_rate.0,
                    flow_log: (a.flow_logs == OnOff::On)
                        .then(vxmesh_dataplane::flowlog::FlowLogConfig::default),
                    conntrack_timeout_cap_ms: a.test_conntrack_timeout_ms,
                },
                health_probes_max: a.health_probes_max as usize,
                ingress_rate_limit: a.ingress_rate_limit,
                heartbeat_skew_ms: a.test_heartbeat_skew_ms,
                socket_group: a.socket_group,
                flow_export,
            };
            tokio::runtime::Runtime::new()?.block_on(crate::daemon::run(cfg))
        }
        cmd => {
            let host = cli.host.unwrap_or_else(|| format!("unix:{DEFAULT_SOCKET}"));
            let client = Client::new(&host)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_client(&client, cli.format, cmd))
        }
    }
}

async fn run_client(c: &Client, f: Format, cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Agent(_) => unreachable!("handled in main"),
        Command::Network(n) => match n {
            NetworkCmd::Create {
                name,
                subnets,
                encrypted,
                internal,
                vni,
                peer_vteps,
            } => {
                let body = json!({
                    "name": name, "subnets": subnets, "encrypted": encrypted,
                    "internal": internal, "vni": vni, "peer_vteps": peer_vteps,
                });
                let v = c.call(Method::POST, "/v1/networks", Some(body)).await?;
                output::created(f, &v, &[&v["name"], &v["vni"]])
            }
            NetworkCmd::Ls => {
                output::networks(f, &c.call(Method::GET, "/v1/networks", None).await?)
            }
            NetworkCmd::Inspect { name } => {
                let v = c
                    .call(Method::GET, &format!("/v1/networks/{}", esc(&name)), None)
                    .await?;
                output::pretty(&v)
            }
            NetworkCmd::Rm { name } => {
                let v = c
                    .call(
                        Method::DELETE,
                        &format!("/v1/networks/{}", esc(&name)),
                        None,
                    )
                    .await?;
                output::created(f, &v, &[&v["name"]])
            }
        },
        Command::Endpoint(e) => match e {
            EndpointCmd::Create {
                network,
                netns,
                ifname,
                ip,
                service,
                veth,
            } => {
                let body = json!({
                    "network": network, "netns": netns, "ifname": ifname,
                    "ip": ip, "service": service, "veth": veth,
                });
                let v = c.call(Method::POST, "/v1/endpoints", Some(body)).await?;
                let ips = output::join(&v["ips"]);
                output::created(f, &v, &[&v["id"], &Value::String(ips)])
            }
            EndpointCmd::Ls => {
                output::endpoints(f, &c.call(Method::GET, "/v1/endpoints", None).await?)
            }
            EndpointCmd::Rm { id } => {
                let v = c
                    .call(Method::DELETE, &format!("/v1/endpoints/{}", esc(&id)), None)
                    .await?;
                output::created(f, &v, &[&v["id"]])
            }
        },
        Command::Node(n) => match n {
            NodeCmd::Ls => output::nodes(f, &c.call(Method::GET, "/v1/nodes", None).await?),
            NodeCmd::Add {
                name,
                advertise_addr,
                public_key,
                tunnel_addr,
                wg_port,
            } => {
                let body = json!({
                    "name": name, "advertise_addr": advertise_addr, "public_key": public_key,
                    "tunnel_addr": tunnel_addr, "wg_port": wg_port,
                });
                let v = c.call(Method::POST, "/v1/nodes", Some(body)).await?;
                output::created(f, &v, &[&v["name"], &v["tunnel_addr"]])
            }
            NodeCmd::Rm { name } => {
                let v = c
                    .call(Method::DELETE, &format!("/v1/nodes/{}", esc(&name)), None)
                    .await?;
                output::created(f, &v, &[&v["name"]])
            }
            NodeCmd::Update { name, ingress } => {
                let body = json!({ "ingress": ingress.map(|i| i == OnOff::On) });
                let v = c
                    .call(
                        Method::POST,
                        &format!("/v1/nodes/{}/update", esc(&name)),
                        Some(body),
                    )
                    .await?;
                let state = if v["ingress"] == Value::Bool(true) {
                    "ingress on"
                } else {
                    "ingress off"
                };
                output::created(f, &v, &[&v["name"], &Value::String(state.into())])
            }
            NodeCmd::RotateKey { name } => {
                let v = c
                    .call(
                        Method::POST,
                        &format!("/v1/nodes/{}/rotate-key", esc(&name)),
                        None,
                    )
                    .await?;
                output::created(
                    f,
                    &v,
                    &[&v["name"], &Value::String("rotation requested".into())],
                )
            }
        },
        Command::Stats => output::stats(f, &c.call(Method::GET, "/v1/stats", None).await?),
        Command::Doctor => {
            let report = match c.call(Method::POST, "/v1/doctor", None).await {
                Ok(v) => v,
                // no agent to ask is the first thing to mend: said as a check
                Err(e) => output::doctor_unreachable(&format!("{e:#}")),
            };
            let failed = output::doctor(f, &report)?;
            if failed > 0 {
                anyhow::bail!("{failed} check(s) failed (see their fix: lines)");
            }
            Ok(())
        }
        Command::Flows(a) => flows::run(c, f, a).await,
        Command::Trace {
            network,
            filter,
            duration,
            count,
            file,
        } => {
            let req = serde_json::json!({
                "network": network, "filter": filter, "seconds": duration, "count": count,
            });
            let pcap = c.call_bytes(Method::POST, "/v1/trace", Some(req)).await?;
            std::fs::write(&file, &pcap)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
            let mut frames = 0;
            if let Ok(mut r) = pcap_file::pcap::PcapReader::new(&pcap[..]) {
                while let Some(Ok(_)) = r.next_packet() {
                    frames += 1;
                }
            }
            eprintln!("{frames} frames written to {}", file.display());
            Ok(())
        }
        Command::Service(s) => match s {
            ServiceCmd::Create {
                name,
                networks,
                publish,
                endpoint_mode,
                scheduler,
                health,
                health_interval,
            } => {
                let body = json!({
                    "name": name, "networks": networks, "publish": publish,
                    "endpoint_mode": endpoint_mode, "scheduler": scheduler, "health": health,
                    "health_interval_ms": health_interval.map(|d| d.as_millis() as u64),
                });
                let v = c.call(Method::POST, "/v1/services", Some(body)).await?;
                let vips = output::join(&Value::Array(
                    ["vips", "vips6"]
                        .iter()
                        .filter_map(|k| v[*k].as_object())
                        .flat_map(|o| o.values().cloned())
                        .collect(),
                ));
                output::created(f, &v, &[&v["name"], &Value::String(vips)])
            }
            ServiceCmd::Update {
                name,
                publish_add,
                publish_rm,
            } => {
                let body = json!({ "publish_add": publish_add, "publish_rm": publish_rm });
                let v = c
                    .call(
                        Method::POST,
                        &format!("/v1/services/{}/update", esc(&name)),
                        Some(body),
                    )
                    .await?;
                output::created(f, &v, &[&v["name"]])
            }
            ServiceCmd::Ls => {
                output::services(f, &c.call(Method::GET, "/v1/services", None).await?)
            }
            ServiceCmd::Inspect { name } => output::pretty(
                &c.call(Method::GET, &format!("/v1/services/{}", esc(&name)), None)
                    .await?,
            ),
            ServiceCmd::Rm { name } => {
                let v = c
                    .call(
                        Method::DELETE,
                        &format!("/v1/services/{}", esc(&name)),
                        None,
                    )
                    .await?;
                output::created(f, &v, &[&v["name"]])
            }
        },
        Command::Policy(p) => match p {
            PolicyCmd::Add {
                node,
                port,
                action,
                from,
                audit,
            } => {
                let body = json!({
                    "node": node, "port": port, "action": action, "from": from, "audit": audit,
                });
                let v = c.call(Method::POST, "/v1/policies", Some(body)).await?;
                output::created(f, &v, &[&v["id"]])
            }
            PolicyCmd::Ls => output::policies(f, &c.call(Method::GET, "/v1/policies", None).await?),
            PolicyCmd::Rm { id } => {
                let v = c
                    .call(Method::DELETE, &format!("/v1/policies/{}", esc(&id)), None)
                    .await?;
                output::created(f, &v, &[&v["id"]])
            }
        },
        Command::Lb(ListCmd::Ls) => output::lb(f, &c.call(Method::GET, "/v1/lb", None).await?),
        Command::Conntrack(ListCmd::Ls) => {
            output::conntrack(f, &c.call(Method::GET, "/v1/conntrack", None).await?)
        }
    }
}

/// Names are checked by the agent; here they only must not break the URL path.
fn esc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
