//! A test's whole world: an underlay bridge, node and container namespaces,
//! and the vxmesh agents running in them. Owning all of it in one value lets
//! `Drop` tear everything down even when the test panics halfway through.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::Flock;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::{self, DEFAULT_TIMEOUT};
use crate::netns;

/// First three octets of every underlay address; the subnet only exists
/// inside each topology's private underlay, so parallel topologies reuse it.
const UNDERLAY_NET: [u8; 3] = [192, 168, 77];
/// The /64 of an IPv6 underlay ([`Topology::with_underlay_v6`]): node `N` is
/// `2001:db8:77::N` (documentation space, private to each topology as above).
const UNDERLAY_NET6: [u16; 3] = [0x2001, 0xdb8, 0x77];
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
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

struct Agent {
    child: Child,
}

/// Which store a topology's agents share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// One SQLite file in the test directory (the embedded default).
    Sqlite,
    /// A single-member etcd (Debian's `etcd-server`) on a host of its own on the
    /// underlay, so a test can stop and restart it like a real outage. Plaintext,
    /// so agents get `--store-insecure` (unless a test passes it itself).
    Etcd,
    /// The same etcd speaking TLS only and requiring client certificates
    /// (`--client-cert-auth`), from a CA the topology makes; each agent gets
    /// `--store-ca` and a certificate of its own (unless a test passes
    /// `--store-ca` itself).
    EtcdTls,
}

/// The etcd a topology started: its host on the underlay and, while it runs,
/// its process.
struct Etcd {
    host: Node,
    child: Option<Child>,
    tls: Option<EtcdPki>,
}

/// The certificates of a TLS etcd ([`StoreKind::EtcdTls`]), in the test directory.
struct EtcdPki {
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    server: (PathBuf, PathBuf),
}

/// etcd's plaintext metrics and health listener on its host's loopback: how the
/// harness sees a TLS etcd is up without a client certificate of its own.
const ETCD_HEALTH_PORT: u16 = 2381;

impl EtcdPki {
    fn new(dir: &Path, server_addr: Ipv4Addr) -> Result<EtcdPki> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vxmesh test etcd CA");
        let ca = dir.join("ca.pem");
        fs::write(&ca, params.self_signed(&key)?.pem())?;
        let mut pki = EtcdPki {
            ca,
            issuer: rcgen::Issuer::new(params, key),
            server: (PathBuf::new(), PathBuf::new()),
        };
        pki.server = pki.issue(dir, "etcd", &[server_addr.to_string()])?;
        Ok(pki)
    }

    /// A certificate for `cn` (and `sans`), good for a server and a client both;
    /// its path and its key's.
    fn issue(&self, dir: &Path, cn: &str, sans: &[String]) -> Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(sans.to_vec())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{cn}.pem")),
            dir.join(format!("{cn}-key.pem")),
        );
        fs::write(&c, cert.pem())?;
        fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}

/// The topology's node in the machine's own (root) network namespace: the
/// root end of its underlay veth, the netns name pointing at the root
/// namespace, and the machine-wide lock that keeps a second topology from
/// putting 192.168.77.0/24 on the root namespace at the same time.
struct HostNode {
    ns: String,
    link: String,
    _lock: Flock<fs::File>,
}

const HOST_NODE_LOCK_PATH: &str = "/run/lock/vxmesh-host-node.lock";
const HOST_NODE_LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

const ETCD_PORT: u16 = 2379;
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);

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

    /// A topology whose agents share `store`; for etcd, the etcd host is made and
    /// etcd started (and ready) before this returns.
    pub fn with_store(test_name: &str, store: StoreKind) -> Result<Topology> {
        let mut topo = Self::bare(test_name)?;
        if store != StoreKind::Sqlite {
            let host = topo.attach_to_underlay("etcd")?;
            let tls = match store {
                StoreKind::EtcdTls => Some(EtcdPki::new(&topo.dir.join("pki"), host.addr)?),
                _ => None,
            };
            topo.etcd = Some(Etcd {
                host,
                child: None,
                tls,
            });
            topo.start_etcd()?;
        }
        Ok(topo)
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

    /// What the agents are given as `--store`.
    pub fn store_url(&self) -> String {
        match &self.etcd {
            Some(e) if e.tls.is_some() => format!("etcds://{}:{ETCD_PORT}", e.host.addr),
            Some(e) => format!("etcd://{}:{ETCD_PORT}", e.host.addr),
            None => format!("sqlite:{}", self.dir.join("store.db").display()),
        }
    }

    /// The CA that signed a TLS etcd's certificate and the agents' ([`StoreKind::EtcdTls`]).
    pub fn etcd_ca(&self) -> Option<PathBuf> {
        self.etcd
            .as_ref()
            .and_then(|e| e.tls.as_ref())
            .map(|t| t.ca.clone())
    }

    /// The `--store-*` flags an agent on `node` gets unless `extra_args` has its
    /// own: `--store-insecure` for plaintext etcd (the underlay is the test's
    /// own), the CA and a certificate of the node's own for TLS etcd.
    fn store_flags(&self, node: &Node, extra_args: &[&str]) -> Result<Vec<String>> {
        let Some(etcd) = &self.etcd else {
            return Ok(Vec::new());
        };
        let given = |f: &str| extra_args.contains(&f);
        match &etcd.tls {
            None if given("--store-insecure") => Ok(Vec::new()),
            None => Ok(vec!["--store-insecure".into()]),
            Some(_) if given("--store-ca") => Ok(Vec::new()),
            Some(pki) => {
                let (cert, key) = pki.issue(&self.dir.join("pki"), &node.name, &[])?;
                Ok(vec![
                    "--store-ca".into(),
                    pki.ca.display().to_string(),
                    "--store-cert".into(),
                    cert.display().to_string(),
                    "--store-key".into(),
                    key.display().to_string(),
                ])
            }
        }
    }

    /// The etcd host's underlay address (a test cuts a node off from it with a route).
    pub fn etcd_addr(&self) -> Option<Ipv4Addr> {
        self.etcd.as_ref().map(|e| e.host.addr)
    }

    pub fn store_kind(&self) -> StoreKind {
        match &self.etcd {
            Some(e) if e.tls.is_some() => StoreKind::EtcdTls,
            Some(_) => StoreKind::Etcd,
            None => StoreKind::Sqlite,
        }
    }

    /// Starts (or restarts, on the same data) the topology's etcd and waits until
    /// it answers its health endpoint.
    pub fn start_etcd(&mut self) -> Result<()> {
        let dir = self.dir.join("etcd");
        let log_path = self.dir.join("etcd.log");
        let etcd = self
            .etcd
            .as_mut()
            .context("this topology has no etcd (use Topology::with_store)")?;
        ensure!(etcd.child.is_none(), "etcd is already running");
        let scheme = if etcd.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{ETCD_PORT}", etcd.host.addr);
        // The peer port only ever talks to itself: keep it on the host's loopback.
        let peer = "http://127.0.0.1:2380";
        let health = format!("http://127.0.0.1:{ETCD_HEALTH_PORT}");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &etcd.host.ns, "etcd"])
            .args(["--name", "vxmesh-test", "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("vxmesh-test={peer}")])
            .args(["--listen-metrics-urls", &health]);
        if let Some(pki) = &etcd.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--cert-file")
                .arg(&pki.server.0)
                .arg("--key-file")
                .arg(&pki.server.1);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let desc = command::describe(&cmd);
        let child = cmd.spawn().with_context(|| {
            format!("failed to spawn `{desc}` (is Debian's etcd-server installed?)")
        })?;
        etcd.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ETCD_HEALTH_PORT));
        let ns = etcd.host.ns.clone();
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            let healthy = netns::in_netns(&ns, move || etcd_healthy(addr)).unwrap_or(false);
            if healthy {
                return Ok(());
            }
            if let Some(Some(status)) = self
                .etcd
                .as_mut()
                .and_then(|e| e.child.as_mut())
                .map(|c| c.try_wait().ok().flatten())
            {
                self.etcd.as_mut().map(|e| e.child.take());
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "etcd exited ({status}) before answering\ncommand: {desc}\n{}",
                    tail(&log, START_FAILURE_LOG_LINES, "etcd.log")
                );
            }
            if Instant::now() >= deadline {
                let _ = self.stop_etcd();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "etcd not healthy after {ETCD_READY_TIMEOUT:?}\ncommand: {desc}\n{}",
                    tail(&log, START_FAILURE_LOG_LINES, "etcd.log")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the topology's etcd (SIGTERM, then SIGKILL); its data stays for
    /// [`Topology::start_etcd`].
    pub fn stop_etcd(&mut self) -> Result<()> {
        let etcd = self
            .etcd
            .as_mut()
            .context("this topology has no etcd (use Topology::with_store)")?;
        match etcd.child.take() {
            Some(mut c) => terminate(std::slice::from_mut(&mut c)),
            None => Ok(()),
        }
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

    /// A node in the machine's own (root) network namespace, e.g. the Docker
    /// host's: a veth `PREFIXh` in the root namespace, its peer on the
    /// underlay bridge, with the next underlay address (`192.168.77.N/24`) on
    /// the root end. `Node.ns` names the root namespace (`ip netns attach
    /// PREFIX-NAME <this pid>`), so [`Topology::start_agent`], [`crate::exec`]
    /// and [`crate::in_netns`] work as for any node; the name is only a name:
    /// dropping the topology deletes the veth and the name, never the root
    /// namespace's other links or processes. Never call [`crate::kill_all_in`]
    /// on it (it refuses). One per topology, and one topology at a time on the
    /// machine (a file lock, held until drop, waits for another).
    pub fn add_host_node(&mut self, name: &str) -> Result<Node> {
        ensure!(
            self.host.is_none(),
            "this topology already has a host node (the root namespace has one underlay link)"
        );
        ensure!(
            !self.underlay_v6,
            "a host node needs an IPv4 underlay (Topology::new or with_store)"
        );
        ensure!(self.next_host < 255, "underlay /24 exhausted");
        let lock = crate::docker::file_lock(
            HOST_NODE_LOCK_PATH,
            "another topology's host node",
            HOST_NODE_LOCK_WAIT,
        )?;
        let ns = self.claim_name(name)?;
        ensure!(!netns::exists(&ns), "/run/netns/{ns} already exists");
        let host = self.next_host;
        self.next_host += 1;
        let addr = Ipv4Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], UNDERLAY_NET[2], host);
        let link = format!("{}h", self.prefix);
        // Recorded before anything is made, so Drop removes whatever was.
        self.host = Some(HostNode {
            ns: ns.clone(),
            link: link.clone(),
            _lock: lock,
        });
        let pid = std::process::id().to_string();
        ip(&["netns", "attach", &ns, &pid])?;
        let ul = self.underlay_ns.clone();
        let port = format!("u{host}");
        ip(&[
            "link", "add", &link, "mtu", "1500", "type", "veth", "peer", "name", &port, "mtu",
            "1500", "netns", &ul,
        ])?;
        ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        let cidr = format!("{addr}/24");
        ip(&["addr", "add", &cidr, "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        self.underlay_ports.insert(name.to_string(), port.clone());
        let node = Node {
            name: name.to_string(),
            ns,
            addr,
            addr6: None,
        };
        self.set_node_resolver(&node, None)?;
        Ok(node)
    }

    /// True for the node [`Topology::add_host_node`] made.
    pub fn is_host_node(&self, node: &Node) -> bool {
        self.host.as_ref().is_some_and(|h| h.ns == node.ns)
    }

    /// The root-namespace end of the host node's underlay veth.
    pub fn host_link(&self) -> Option<&str> {
        self.host.as_ref().map(|h| h.link.as_str())
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

    pub fn start_agent(&mut self, node: &Node, extra_args: &[&str]) -> Result<()> {
        self.start_agent_with_env(node, extra_args, &[])
    }

    /// [`Self::start_agent`] with variables added to the agent's environment
    /// (e.g. the test-only `VXMESH_TEST_FAULT`).
    pub fn start_agent_with_env(
        &mut self,
        node: &Node,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        ensure!(
            !self.agents.contains_key(&node.name),
            "agent for node {} is already running",
            node.name
        );
        let data_dir = self.dir.join(&node.name);
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        let log_path = self.log_path(node);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let log_err = log.try_clone().context("failed to clone log file handle")?;

        let store = self.store_url();
        let store_flags = self.store_flags(node, extra_args)?;
        let api = self.socket(node);
        let addr = node.underlay_addr().to_string();
        let data_dir = data_dir.display().to_string();
        // A host node's agent runs as it would on a real Docker host: straight in
        // the machine's namespaces. `ip netns exec` would give it a mount
        // namespace of its own, where the netns files Docker mounts later under
        // /var/run/docker/netns stay empty files.
        let mut cmd = if self.is_host_node(node) {
            Command::new(vxmesh_bin())
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &node.ns]).arg(vxmesh_bin());
            c
        };
        cmd.args(["agent", "--node", &node.name, "--advertise-addr", &addr])
            .args(["--store", &store, "--api", &api, "--data-dir", &data_dir])
            .args(&store_flags)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        let desc = command::describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to spawn `{desc}`"))?;
        if !self.logged_nodes.contains(&node.name) {
            self.logged_nodes.push(node.name.clone());
        }
        self.agents.insert(node.name.clone(), Agent { child });
        self.wait_agent_ready(node, &desc)
    }

    /// Readiness is judged through the public CLI rather than the socket
    /// file appearing, so a test starts only once the API actually answers.
    fn wait_agent_ready(&mut self, node: &Node, desc: &str) -> Result<()> {
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            let agent = self
                .agents
                .get_mut(&node.name)
                .expect("agent just inserted");
            if let Some(status) = agent.child.try_wait().context("failed to poll agent")? {
                self.agents.remove(&node.name);
                bail!(
                    "agent for node {} exited ({status}) before becoming ready\ncommand: {desc}\n{}",
                    node.name,
                    self.log_tail(node, START_FAILURE_LOG_LINES)
                );
            }
            let mut probe = Command::new(vxmesh_bin());
            probe.args(["-H", &self.socket(node), "network", "ls"]);
            let last_probe = match command::run(&mut probe, PROBE_TIMEOUT) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                let stop = self.stop_agent(node);
                bail!(
                    "agent for node {} not ready after {AGENT_READY_TIMEOUT:?} \
                     (last probe: {last_probe}; stop: {stop:?})\ncommand: {desc}\n{}",
                    node.name,
                    self.log_tail(node, START_FAILURE_LOG_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop_agent(&mut self, node: &Node) -> Result<()> {
        let mut agent = self
            .agents
            .remove(&node.name)
            .with_context(|| format!("no running agent for node {}", node.name))?;
        terminate(std::slice::from_mut(&mut agent.child))
    }

    /// Waits up to `within` for a node's agent to exit on its own: its exit
    /// status (the agent is then forgotten, and may be started again), or
    /// `None` while it still runs.
    pub fn wait_agent_exit(
        &mut self,
        node: &Node,
        within: Duration,
    ) -> Result<Option<std::process::ExitStatus>> {
        let end = Instant::now() + within;
        loop {
            let agent = self
                .agents
                .get_mut(&node.name)
                .with_context(|| format!("no running agent for node {}", node.name))?;
            if let Some(status) = agent.child.try_wait().context("failed to poll agent")? {
                self.agents.remove(&node.name);
                return Ok(Some(status));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills a node's agent with SIGKILL: no shutdown work of any kind.
    pub fn kill_agent(&mut self, node: &Node) -> Result<()> {
        let mut agent = self
            .agents
            .remove(&node.name)
            .with_context(|| format!("no running agent for node {}", node.name))?;
        let _ = kill(Pid::from_raw(agent.child.id() as i32), Signal::SIGKILL);
        agent.child.wait().context("reaping a killed agent")?;
        Ok(())
    }

    pub fn socket(&self, node: &Node) -> String {
        format!(
            "unix:{}",
            self.dir.join(format!("{}.sock", node.name)).display()
        )
    }

    pub fn cli(&self, node: &Node, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(vxmesh_bin());
        cmd.args(["-H", &self.socket(node)]).args(args);
        command::run(&mut cmd, DEFAULT_TIMEOUT)
    }

    pub fn cli_ok(&self, node: &Node, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(vxmesh_bin());
        cmd.args(["-H", &self.socket(node)]).args(args);
        command::run_ok(&mut cmd, DEFAULT_TIMEOUT)
    }

    pub fn cli_json(&self, node: &Node, args: &[&str]) -> Result<serde_json::Value> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--format", "json"]);
        let out = self.cli_ok(node, &full)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`vxmesh {}` printed invalid JSON: {out}", full.join(" ")))
    }

    pub fn agent_log(&self, node: &Node) -> String {
        fs::read(self.log_path(node))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_path(&self, node: &Node) -> PathBuf {
        self.dir.join(format!("{}.log", node.name))
    }

    fn log_tail(&self, node: &Node, lines: usize) -> String {
        tail(&self.agent_log(node), lines, &format!("{}.log", node.name))
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
        let mut children: Vec<Child> = std::mem::take(&mut self.agents)
            .into_values()
            .map(|a| a.child)
            .collect();
        if let Err(e) = terminate(&mut children) {
            eprintln!("vxmesh-netns-tests: stopping agents: {e:#}");
        }
        if self.etcd.is_some() {
            if let Err(e) = self.stop_etcd() {
                eprintln!("vxmesh-netns-tests: stopping etcd: {e:#}");
            }
        }
        if let Some(h) = &self.host {
            // The root end first (deleting the underlay namespace would take the
            // pair with it, but say so if it cannot go), then the name, which
            // only unmounts /run/netns/NAME: the root namespace lives on.
            if let Err(e) = ip(&["link", "del", &h.link]) {
                let e = format!("{e:#}");
                if !e.contains("Cannot find device") {
                    eprintln!("vxmesh-netns-tests: {e}");
                }
            }
            if netns::exists(&h.ns) {
                if let Err(e) = netns::delete(&h.ns) {
                    eprintln!("vxmesh-netns-tests: {e:#}");
                }
            }
        }
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

/// SIGTERM all first so agents shut down in parallel, then SIGKILL whatever
/// is left after the grace period. Always reaps, so no zombies outlive a test.
fn terminate(children: &mut [Child]) -> Result<()> {
    for child in children.iter_mut() {
        if child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + AGENT_STOP_TIMEOUT;
    let mut killed = Vec::new();
    for child in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let _ = child.wait();
                    killed.push(child.id());
                    break;
                }
                Err(e) => bail!("waiting for agent pid {}: {e}", child.id()),
            }
        }
    }
    ensure!(
        killed.is_empty(),
        "agents {killed:?} ignored SIGTERM for {AGENT_STOP_TIMEOUT:?} and were killed"
    );
    Ok(())
}

/// Locates the agent binary. Tests live in a different package than the
/// binary, so `CARGO_BIN_EXE_*` is unavailable and we look next to our own
/// test executable instead.
pub fn vxmesh_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("VXMESH_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe unavailable");
    let mut dir = exe
        .parent()
        .expect("test exe has no parent dir")
        .to_path_buf();
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir.pop();
    }
    let bin = dir.join("vxmesh");
    assert!(
        bin.is_file(),
        "vxmesh binary not found at {} (set VXMESH_BIN or build it first: cargo build --bins)",
        bin.display()
    );
    bin
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

/// etcd's `/health` says `"health":"true"` once it has a leader and serves.
fn etcd_healthy(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if c.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
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
