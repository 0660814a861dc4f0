//! Helpers the overlay tests share: creating endpoints through the CLI, reading an
//! agent's counters, building raw frames.

#![allow(dead_code)]

use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::{Node, Topology};

pub struct Ep {
    pub id: String,
    pub ip: String,
    pub mac: [u8; 6],
}

/// `vxmesh endpoint create` on `node`'s agent; returns what it printed as JSON.
pub fn endpoint(
    t: &Topology,
    node: &Node,
    network: &str,
    netns: &str,
    extra: &[&str],
) -> Result<Ep> {
    let mut args = vec!["endpoint", "create", "--network", network, "--netns", netns];
    args.extend_from_slice(extra);
    let v = t.cli_json(node, &args)?;
    let mac = v["mac"].as_str().context("mac")?;
    let mut m = [0u8; 6];
    for (i, p) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16)?;
    }
    Ok(Ep {
        id: v["id"].as_str().context("id")?.to_string(),
        ip: v["ips"][0].as_str().context("ips")?.to_string(),
        mac: m,
    })
}

/// A drop counter of `node`'s agent, by reason.
pub fn dropped(t: &Topology, node: &Node, reason: &str) -> Result<u64> {
    let v = t.cli_json(node, &["stats"])?;
    v["drops"][reason]
        .as_u64()
        .with_context(|| format!("no drop counter {reason} in {v}"))
}

/// Polls `f` until it holds or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let end = Instant::now() + within;
    loop {
        if f()? {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An Ethernet/IPv4/UDP frame.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(40000, dport)
        .write(&mut out, payload)
        .expect("frame fits");
    out
}

pub fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>()
        .expect("an IPv4 address")
        .octets()
}
