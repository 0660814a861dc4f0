//! What the harnesses ask of vxmesh's CLI while building a setup: an
//! endpoint's address, a service's VIP.

use anyhow::{Context, Result};
use serde_json::Value;
use std::net::Ipv4Addr;
use vxmesh_netns_tests::{Node, Topology};

/// `vxmesh endpoint create --network NETWORK --netns NS EXTRA` on `node`;
/// the endpoint's (first) IPv4 address. `extra`: `--service NAME`, say.
pub fn endpoint_ip(
    t: &Topology,
    node: &Node,
    network: &str,
    ns: &str,
    extra: &[&str],
) -> Result<Ipv4Addr> {
    let mut args = vec!["endpoint", "create", "--network", network, "--netns", ns];
    args.extend_from_slice(extra);
    let v = t.cli_json(node, &args)?;
    let ip = v["ips"][0]
        .as_str()
        .with_context(|| format!("no IP in {v}"))?;
    Ok(ip.parse()?)
}

/// A service's VIP on `network`, from `service create`'s or `inspect`'s JSON.
pub fn service_vip(v: &Value, network: &str) -> Result<Ipv4Addr> {
    let ip = v["vips"][network]
        .as_str()
        .with_context(|| format!("no VIP on {network} in {v}"))?;
    Ok(ip.parse()?)
}
