//! The `vxmesh` command line, as DESIGN.md's contract writes it: here its
//! clap definitions (subcommands, flags, help); `agent_args` holds `vxmesh
//! agent`'s flags and the configuration made of them, `commands` the client
//! commands (an API call or two each, answers read as `api_types`), `output`
//! and `flows` what they print, as tables or `--format json`.

#![forbid(unsafe_code)]

mod agent_args;
mod commands;
mod flows;
mod output;

use crate::agent;
use crate::api::client::{Client, DEFAULT_SOCKET};
use agent_args::{parse_duration, AgentArgs};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::IpAddr;

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

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Command::Agent(a) => a.run(),
        cmd => {
            let host = cli.host.unwrap_or_else(|| format!("unix:{DEFAULT_SOCKET}"));
            let client = Client::new(&host)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(commands::run(&client, cli.format, cmd))
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
