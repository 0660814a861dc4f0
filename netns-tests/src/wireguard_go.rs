//! A stock WireGuard peer for interop tests and benchmarks: wireguard-go on `wg-NODE`
//! with the kernel's VXLAN + bridge behind it, the way a non-vxmesh host would join
//! an encrypted vxmesh network (or another such host).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::exec_ok;
use crate::topology::Node;

/// A peer of the wireguard-go interface.
pub struct WgPeer {
    pub public_key: String,
    pub endpoint: SocketAddr,
    /// The peer's tunnel address (routed through wg0, used as its VXLAN VTEP).
    pub tunnel_addr: Ipv4Addr,
}

/// The running wireguard-go; stopped when dropped.
pub struct WireguardGo {
    child: Child,
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WireGuard key pair made with `wg`: (private, public), base64.
pub fn wg_keypair(ns: &str) -> Result<(String, String)> {
    let private = exec_ok(ns, &["wg", "genkey"])?.trim().to_string();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!("echo {private} | wg pubkey"),
        ])
        .output()
        .context("wg pubkey")?;
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Everything that defines one such host.
pub struct WgVxlanHost<'a> {
    pub node: &'a Node,
    pub private_key: &'a str,
    pub tunnel_addr: Ipv4Addr,
    pub peers: &'a [WgPeer],
    pub vni: u32,
    pub container_ns: &'a str,
    pub container_cidr: &'a str,
    /// MTU of the VXLAN device, the bridge port and the container (wg0 is 1420).
    pub mtu: u32,
}

impl WgVxlanHost<'_> {
    /// Starts wireguard-go, configures wg0 with `wg`, and puts the kernel's VXLAN
    /// (VTEP = our tunnel address, one all-zeros FDB entry per peer) and a bridge
    /// with the container's veth behind it.
    pub fn start(&self, dir: &Path) -> Result<WireguardGo> {
        let ns = self.node.ns.as_str();
        // wireguard-go's control socket (/var/run/wireguard/NAME.sock) is on the
        // shared filesystem: each host needs its own interface name.
        let ifname: String = format!("wg-{}", self.node.name).chars().take(15).collect();
        let wg0 = ifname.as_str();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", wg0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wireguard-go (apt-get install wireguard-go)")?;
        let wg = WireguardGo { child };
        let until = Instant::now() + Duration::from_secs(5);
        while exec_ok(ns, &["ip", "link", "show", wg0]).is_err() {
            if Instant::now() > until {
                bail!("wireguard-go made no {wg0} in {ns}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_file = dir.join(format!("{}.wgkey", self.node.name));
        std::fs::write(&key_file, self.private_key)?;
        let key_path = key_file.to_str().context("key path")?;
        exec_ok(
            ns,
            &[
                "wg",
                "set",
                wg0,
                "private-key",
                key_path,
                "listen-port",
                "51820",
            ],
        )?;
        let me = format!("{}/32", self.tunnel_addr);
        exec_ok(ns, &["ip", "addr", "add", &me, "dev", wg0])?;
        exec_ok(ns, &["ip", "link", "set", wg0, "up"])?;
        for p in self.peers {
            let allowed = format!("{}/32", p.tunnel_addr);
            let endpoint = p.endpoint.to_string();
            exec_ok(
                ns,
                &[
                    "wg",
                    "set",
                    wg0,
                    "peer",
                    &p.public_key,
                    "endpoint",
                    &endpoint,
                    "allowed-ips",
                    &allowed,
                ],
            )?;
            exec_ok(ns, &["ip", "route", "add", &allowed, "dev", wg0])?;
        }
        let (vni, mtu, local) = (
            self.vni.to_string(),
            self.mtu.to_string(),
            self.tunnel_addr.to_string(),
        );
        exec_ok(
            ns,
            &[
                "ip", "link", "add", "vx0", "mtu", &mtu, "type", "vxlan", "id", &vni, "local",
                &local, "dstport", "4789", "dev", wg0,
            ],
        )?;
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| p.tunnel_addr.to_string())
            .collect();
        crate::kernel_vxlan::bridge_to_container(
            ns,
            &peers,
            self.container_ns,
            self.container_cidr,
            self.mtu,
        )?;
        Ok(wg)
    }
}
