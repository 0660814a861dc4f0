//! A reference VXLAN endpoint built from the Linux kernel's own vxlan and
//! bridge drivers. Interop tests put one next to vxmesh agents to prove the
//! agents speak standard VXLAN, not just to each other.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};

use crate::command;
use crate::topology::Node;

/// UDP port IANA assigned to VXLAN; the kernel defaults to 8472 otherwise.
const VXLAN_PORT: &str = "4789";

/// Everything that defines a kernel VXLAN node; kept as a value so a test can
/// log or tweak it before calling [`KernelVxlanNode::setup`].
#[derive(Clone, Debug)]
pub struct KernelVxlanNode {
    pub node: Node,
    pub vni: u32,
    pub peers: Vec<Ipv4Addr>,
    pub container_ns: String,
    pub container_cidr: String,
    pub mtu: u32,
    /// Keep the VXLAN device's TX offloads (fast, but leaves inner checksums
    /// unfinished over a veth): only when every peer is a kernel too.
    pub kernel_peers_only: bool,
}

impl KernelVxlanNode {
    /// Builds `vx0` + `br0` in the node namespace and wires `container_ns`
    /// to the bridge via a veth (`ck0` on the node side, `eth0` inside the
    /// container). Nothing needs tearing down explicitly: the links vanish
    /// with the namespaces when the `Topology` is dropped.
    pub fn setup(&self) -> Result<()> {
        let peers: Vec<IpAddr> = self.peers.iter().map(|p| IpAddr::V4(*p)).collect();
        self.setup_with_peers(&peers, &[])
    }

    /// [`KernelVxlanNode::setup`] with peers of either family: the device's
    /// `local` is the node's underlay address ([`Node::underlay_addr`]), so on
    /// an IPv6 underlay the kernel carries VXLAN over IPv6 (with UDP checksums,
    /// its default: `udp6zerocsumtx` off). `vxlan_opts` go on the end of `ip link
    /// add vx0 ... type vxlan` (e.g. `udp6zerocsumtx`). `self.peers` is not used.
    pub fn setup_with_peers(&self, peers: &[IpAddr], vxlan_opts: &[&str]) -> Result<()> {
        let ns = self.node.ns.as_str();
        let cns = self.container_ns.as_str();
        let vni = self.vni.to_string();
        let local = self.node.underlay_addr().to_string();
        let mtu = self.mtu.to_string();
        let ip = |args: &[&str]| command::tool_ok("ip", args);

        let mut add = vec![
            "-n", ns, "link", "add", "vx0", "mtu", &mtu, "type", "vxlan", "id", &vni, "local",
            &local, "dstport", VXLAN_PORT, "dev", "ul0",
        ];
        add.extend_from_slice(vxlan_opts);
        ip(&add)?;
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        bridge_to_container(ns, &peers, cns, &self.container_cidr, self.mtu)?;
        // Over a veth underlay the kernel leaves the inner TCP/UDP checksum
        // unfinished (CHECKSUM_PARTIAL) inside the VXLAN datagram, trusting the
        // receiving kernel to know; a real NIC would finish it on the wire. A
        // userspace VTEP receives the bytes only, so make the kernel node compute
        // inner checksums before encapsulating, as a physical link would. (This
        // also turns off TSO on vx0, so kernel-to-kernel baselines keep it on.)
        if !self.kernel_peers_only {
            command::tool_ok(
                "ip",
                &["netns", "exec", ns, "ethtool", "-K", "vx0", "tx", "off"],
            )?;
        }
        Ok(())
    }
}

pub fn kernel_vxlan_setup(
    node: &Node,
    vni: u32,
    peers: &[Ipv4Addr],
    container_ns: &str,
    container_cidr: &str,
    mtu: u32,
) -> Result<()> {
    KernelVxlanNode {
        node: node.clone(),
        vni,
        peers: peers.to_vec(),
        container_ns: container_ns.to_string(),
        container_cidr: container_cidr.to_string(),
        mtu,
        kernel_peers_only: false,
    }
    .setup()
    .with_context(|| format!("kernel VXLAN setup on node {}", node.name))
}

/// Puts the VXLAN device `vx0` of namespace `ns` on a bridge with head-end
/// replication to `peers` (an all-zeros FDB entry each: BUM traffic, ARP in
/// particular, is flooded to every one), and wires `container_ns` to the bridge
/// by a veth (`ck0` on the node side, `eth0` inside, addressed `container_cidr`).
/// Shared by the kernel-VXLAN and the wireguard-go hosts.
pub(crate) fn bridge_to_container(
    ns: &str,
    peers: &[String],
    container_ns: &str,
    container_cidr: &str,
    mtu: u32,
) -> Result<()> {
    let ip = |args: &[&str]| command::tool_ok("ip", args);
    ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", ns, "link", "set", "vx0", "master", "br0"])?;
    for peer in peers {
        command::tool_ok(
            "bridge",
            &[
                "-n",
                ns,
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vx0",
                "dst",
                peer,
            ],
        )?;
    }
    for dev in ["vx0", "br0"] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    attach_to_bridge(ns, "ck0", container_ns, container_cidr, mtu)
}

/// Wires one more container namespace to the bridge `br0` of node namespace
/// `ns` (made by [`KernelVxlanNode::setup`]): a veth `host_ifname` on the
/// bridge, `eth0` inside, addressed `container_cidr`. It goes with the
/// namespaces when the `Topology` is dropped.
pub fn attach_to_bridge(
    ns: &str,
    host_ifname: &str,
    container_ns: &str,
    container_cidr: &str,
    mtu: u32,
) -> Result<()> {
    let ip = |args: &[&str]| command::tool_ok("ip", args);
    let mtu = mtu.to_string();
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        host_ifname,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        &mtu,
        "netns",
        container_ns,
    ])?;
    ip(&["-n", ns, "link", "set", host_ifname, "master", "br0"])?;
    ip(&[
        "-n",
        container_ns,
        "addr",
        "add",
        container_cidr,
        "dev",
        "eth0",
    ])?;
    for (n, dev) in [
        (ns, host_ifname),
        (container_ns, "eth0"),
        (container_ns, "lo"),
    ] {
        ip(&["-n", n, "link", "set", dev, "up"])?;
    }
    Ok(())
}
