//! A test's whole world: an underlay bridge, node and container namespaces,
//! and the vxmesh agents running in them. Owning all of it in one value lets
//! `Drop` tear everything down even when the test panics halfway through.

mod agents;
mod etcd;
mod host_node;

pub use agents::vxmesh_bin;
pub use etcd::StoreKind;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};

use crate::command;
use crate::netns;
use agents::Agent;
use etcd::Etcd;
use host_node::HostNode;

/// First three octets of every underlay address; the subnet only exists
/// inside each topology's private underlay, so parallel topologies reuse it.
const UNDERLAY_NET: [u8; 3] = [192, 168, 77];
/// The /64 of an IPv6 underlay ([`Topology::with_underlay_v6`]): node `N` is
/// `2001:db8:77::N` (documentation space, private to each topology as above).
const UNDERLAY_NET6: [u16; 3] = [0x2001, 0xdb8, 0x77];
const PANIC_LOG_LINES: usize = 60;
const START_FAILURE_LOG_LINES: usize = 40;

/// A namespace attached to the underlay. Cheap to clone so tests can hand it
/// around freely while the `Topology` keeps ownership of the real resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub ns: String,
    /// The node's IPv4 underlay address; `0.0.0.0` on an IPv6-only underlay
    /// ([`Topology::with_underlay_v6`]), where no link has an IPv4 address.
    pub addr: Ipv4Addr,
    /// The node's IPv6 underlay address, on an IPv6-only underlay only.
    pub addr6: Option<Ipv6Addr>,
}

impl Node {
    /// The address the node's agent advertises and its VXLAN leaves from:
    /// IPv6 on an IPv6 underlay, else IPv4.
    pub fn underlay_addr(&self) -> IpAddr {
        match self.addr6 {
            Some(a) => IpAddr::V6(a),
            None => IpAddr::V4(self.addr),
        }
    }
}

pub struct Topology {
    prefix: String,
    dir: PathBuf,
    underlay_ns: String,
    /// Creation order, so teardown can go in reverse.
    namespaces: Vec<String>,
    names: Vec<String>,
    next_host: u8,
    agents: BTreeMap<String, Agent>,
    /// Every node that ever ran an agent, so a panicking test dumps logs of
    /// agents that were already stopped too.
    logged_nodes: Vec<String>,
    etcd: Option<Etcd>,
    host: Option<HostNode>,
    /// The underlay links carry IPv6 only ([`Topology::with_underlay_v6`]).
    underlay_v6: bool,
    /// Each node's port on the underlay bridge (in the underlay namespace), by name.
    underlay_ports: BTreeMap<String, String>,
}

impl Topology {
    pub fn new(test_name: &str) -> Result<Topology> {
        Self::with_store(test_name, StoreKind::Sqlite)
    }

    /// A topology whose underlay is IPv6 only: each node's `ul0` gets
    /// `2001:db8:77::N/64` and no IPv4 address (the links keep only their IPv6
    /// link-local ones besides), and agents advertise that address, so VXLAN
    /// (and WireGuard) cross the underlay over IPv6. SQLite store only.
    pub fn with_underlay_v6(test_name: &str) -> Result<Topology> {
        let mut topo = Self::bare(test_name)?;
        topo.underlay_v6 = true;
        // No MLD querier on the test bridge: without snooping, neighbour
        // solicitations (multicast) reach every port whatever MLD state it saw.
        let ul = topo.underlay_ns.clone();
        ip(&[
            "-n",
            &ul,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        Ok(topo)
    }

    /// True when the underlay carries IPv6 only ([`Topology::with_underlay_v6`]).
    pub fn underlay_is_v6(&self) -> bool {
        self.underlay_v6
    }

    /// The namespace that holds the underlay bridge `br0` and the nodes' ports on it.
    pub fn underlay_ns(&self) -> &str {
        &self.underlay_ns
    }

    /// `node`'s port on the underlay bridge (a veth in [`Topology::underlay_ns`]):
    /// what a test changes to act on everything that reaches the node.
    pub fn underlay_port(&self, node: &Node) -> Option<&str> {
        self.underlay_ports.get(&node.name).map(String::as_str)
    }

    fn bare(test_name: &str) -> Result<Topology> {
        let prefix = unique_prefix(test_name);
        let dir = PathBuf::from(format!("/tmp/vxmesh-test-{prefix}"));
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let mut topo = Topology {
            underlay_ns: format!("{prefix}-ul"),
            prefix,
            dir,
            namespaces: Vec::new(),
            names: Vec::new(),
            next_host: 1,
            agents: BTreeMap::new(),
            logged_nodes: Vec::new(),
            etcd: None,
            host: None,
            underlay_v6: false,
            underlay_ports: BTreeMap::new(),
        };
        let ul = topo.underlay_ns.clone();
        topo.create_ns(&ul)?;
        ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        Ok(topo)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A node namespace. It gets a resolv.conf of its own with no nameserver, so an
    /// agent there never forwards DNS to the host's (outside) resolvers; a test
    /// that wants an upstream writes one with [`Topology::set_node_resolver`].
    pub fn add_node(&mut self, name: &str) -> Result<Node> {
        let node = self.attach_to_underlay(name)?;
        self.set_node_resolver(&node, None)?;
        Ok(node)
    }

    /// Points a node's own resolv.conf at `resolver` (or at nothing). Takes effect
    /// for agents started afterwards.
    pub fn set_node_resolver(&self, node: &Node, resolver: Option<std::net::IpAddr>) -> Result<()> {
        let dir = Path::new("/etc/netns").join(&node.ns);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let body = match resolver {
            Some(ip) => format!("nameserver {ip}\n"),
            None => "# no upstream resolver in tests\n".to_string(),
        };
        fs::write(dir.join("resolv.conf"), body).context("cannot write the node's resolv.conf")?;
        Ok(())
    }

    /// Separate from `add_node` only so tests read clearly; an outside host is
    /// just an underlay address that never gets an agent.
    pub fn add_outside_host(&mut self, name: &str) -> Result<Node> {
        self.attach_to_underlay(name)
    }

    pub fn add_container(&mut self, name: &str) -> Result<String> {
        let ns = self.claim_name(name)?;
        self.create_ns(&ns)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn attach_to_underlay(&mut self, name: &str) -> Result<Node> {
        ensure!(self.next_host < 255, "underlay /24 exhausted");
        let ns = self.claim_name(name)?;
        let host = self.next_host;
        self.next_host += 1;
        let addr = Ipv4Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], UNDERLAY_NET[2], host);
        self.create_ns(&ns)?;
        let ul = self.underlay_ns.clone();
        // The underlay-side name only has to be unique inside the underlay
        // namespace; deriving it from the host number keeps it short.
        let port = format!("u{host}");
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &ul, "link", "add", &port, "mtu", "1500", "type", "veth", "peer", "name", "ul0",
            "mtu", "1500", "netns", &ns,
        ])?;
        ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        self.underlay_ports.insert(name.to_string(), port);
        let addr6 = if self.underlay_v6 {
            let [a, b, c] = UNDERLAY_NET6;
            let a6 = Ipv6Addr::new(a, b, c, 0, 0, 0, 0, u16::from(host));
            // nodad: usable at once (a tentative address cannot be bound), and
            // every address in the topology is unique by construction
            let cidr = format!("{a6}/64");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "ul0", "nodad"])?;
            Some(a6)
        } else {
            let cidr = format!("{addr}/24");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "ul0"])?;
            None
        };
        ip(&["-n", &ns, "link", "set", "ul0", "up"])?;
        Ok(Node {
            name: name.to_string(),
            ns,
            addr: if addr6.is_some() {
                Ipv4Addr::UNSPECIFIED
            } else {
                addr
            },
            addr6,
        })
    }

    fn claim_name(&mut self, name: &str) -> Result<String> {
        ensure!(
            !name.is_empty()
                && name != "ul"
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "invalid topology member name {name:?}"
        );
        ensure!(
            !self.names.iter().any(|n| n == name),
            "name {name:?} already used in this topology"
        );
        self.names.push(name.to_string());
        Ok(format!("{}-{name}", self.prefix))
    }

    /// Records the namespace before anything else can fail so `Drop` always
    /// knows about it.
    fn create_ns(&mut self, ns: &str) -> Result<()> {
        netns::create(ns)?;
        self.namespaces.push(ns.to_string());
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if panicking {
            for name in &self.logged_nodes {
                let path = self.dir.join(format!("{name}.log"));
                let log = fs::read(&path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                eprintln!(
                    "{}",
                    tail(&log, PANIC_LOG_LINES, &path.display().to_string())
                );
            }
        }
        self.stop_all_agents();
        if self.etcd.is_some() {
            if let Err(e) = self.stop_etcd() {
                eprintln!("vxmesh-netns-tests: stopping etcd: {e:#}");
            }
        }
        self.remove_host_node();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                eprintln!("vxmesh-netns-tests: {e:#}");
            }
        }
        if std::env::var_os("VXMESH_KEEP_TEST_DIR").is_some() {
            eprintln!("vxmesh-netns-tests: kept test dir {}", self.dir.display());
        } else {
            if panicking {
                eprintln!(
                    "vxmesh-netns-tests: set VXMESH_KEEP_TEST_DIR=1 to keep {}",
                    self.dir.display()
                );
            }
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                eprintln!("vxmesh-netns-tests: removing {}: {e}", self.dir.display());
            }
        }
    }
}

pub(crate) fn unique_prefix(test_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = DefaultHasher::new();
        std::process::id().hash(&mut h);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            .hash(&mut h);
        COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut h);
        test_name.hash(&mut h);
        let prefix = format!("vx{:06x}", h.finish() & 0xff_ffff);
        // Another process may hold the same 24-bit value; skip it rather
        // than share (and later delete) its namespaces.
        let taken = netns::exists(&format!("{prefix}-ul"))
            || Path::new(&format!("/tmp/vxmesh-test-{prefix}")).exists();
        if !taken {
            return prefix;
        }
    }
}

fn tail(text: &str, lines: usize, label: &str) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "----- last {} lines of {label} -----\n{}\n----- end of {label} -----",
        all.len() - start,
        all[start..].join("\n")
    )
}

fn ip(args: &[&str]) -> Result<String> {
    command::tool_ok("ip", args)
}
