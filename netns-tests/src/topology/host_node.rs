//! The topology's node in the machine's own (root) network namespace, for
//! tests of vxmesh on a real Docker host.

use std::fs;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Result};
use nix::fcntl::Flock;

use super::{ip, Node, Topology, UNDERLAY_NET};
use crate::lock::file_lock;
use crate::netns;

/// The topology's node in the machine's own (root) network namespace: the
/// root end of its underlay veth, the netns name pointing at the root
/// namespace, and the machine-wide lock that keeps a second topology from
/// putting 192.168.77.0/24 on the root namespace at the same time.
pub(super) struct HostNode {
    ns: String,
    link: String,
    _lock: Flock<fs::File>,
}

const HOST_NODE_LOCK_PATH: &str = "/run/lock/vxmesh-host-node.lock";
const HOST_NODE_LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

impl Topology {
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
        let lock = file_lock(
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

    /// Removes the host node's veth and netns name (for `Drop`).
    pub(super) fn remove_host_node(&self) {
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
    }
}
