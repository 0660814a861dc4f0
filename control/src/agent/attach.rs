//! Giving an endpoint its interface: a TAP the agent creates and moves into the
//! container's namespace, or a user-made veth whose host end the agent reads.
//! Either way the container side gets the endpoint's name, MAC, addresses, MTU and a
//! default route via the network's gateway.

use super::iproute::{ethtool_in, ip, ip_in, PlumbError};
use crate::state::{Endpoint, Network};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use thiserror::Error;
use vxmesh_dataplane::io::{packet_socket, tap};

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("network namespace {0} not found (looked for {1}): create it (ip netns add NAME) or pass a path to a namespace file")]
    NetnsNotFound(String, String),
    #[error("namespace {netns} already has an interface named {ifname}: pass another --ifname")]
    IfnameTaken { netns: String, ifname: String },
    #[error("--veth {0}: no such interface in the agent's namespace")]
    NoVeth(String),
    #[error("--veth {0} is not a veth whose other end is in namespace {1}")]
    NotAVethIntoNetns(String, String),
    #[error("cannot create TAP {0}: {1}")]
    Tap(String, std::io::Error),
    #[error("cannot read veth {0}: {1}")]
    PacketSocket(String, std::io::Error),
    #[error(transparent)]
    Plumb(#[from] PlumbError),
}

/// `/run/netns/NAME` for a name, the path itself for a path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// Checks what can be checked before anything is created or stored.
pub async fn precheck(netns: &str, ifname: &str, veth: Option<&str>) -> Result<(), AttachError> {
    let path = netns_path(netns);
    if !path.exists() {
        return Err(AttachError::NetnsNotFound(
            netns.into(),
            path.display().to_string(),
        ));
    }
    if let Some(v) = veth {
        if ip(&["link", "show", "dev", v]).await.is_err() {
            return Err(AttachError::NoVeth(v.into()));
        }
        if veth_peer(&path, v).await?.is_none() {
            return Err(AttachError::NotAVethIntoNetns(v.into(), netns.into()));
        }
    } else if ip_in(&path, &["link", "show", "dev", ifname]).await.is_ok() {
        return Err(AttachError::IfnameTaken {
            netns: netns.into(),
            ifname: ifname.into(),
        });
    }
    Ok(())
}

/// The TAP's name while it is still in the agent's namespace: unique per endpoint.
pub fn tap_name(ep: &Endpoint) -> String {
    format!("vx{}", &ep.id[..ep.id.len().min(12)])
}

/// An endpoint's interface as the worker drives it.
pub struct Attached {
    /// One per worker for a multi-queue TAP, else one.
    pub fds: Vec<OwnedFd>,
    /// A TAP with `virtio_net_hdr` and TSO: super-frames in, super-frames out.
    pub offloaded: bool,
}

/// Creates the endpoint's interface and returns the fds the workers read and
/// write: `queues` TAP queues (one per worker; 1 for an encrypted network, whose
/// traffic one worker handles). On failure nothing is left behind: a TAP dies
/// with its fds.
pub async fn attach(
    ep: &Endpoint,
    net: &Network,
    mtu: u32,
    queues: usize,
) -> Result<Attached, AttachError> {
    let path = netns_path(&ep.netns);
    if !path.exists() {
        return Err(AttachError::NetnsNotFound(
            ep.netns.clone(),
            path.display().to_string(),
        ));
    }
    match &ep.veth {
        None => {
            let name = tap_name(ep);
            let queues = if net.encrypted { 1 } else { queues };
            if let Some((ifname, fds)) = reopen(&path, ep, queues).await {
                let found = Endpoint {
                    ifname,
                    ..ep.clone()
                };
                configure(&path, &found, net, mtu).await?;
                return Ok(Attached {
                    fds,
                    offloaded: true,
                });
            }
            let fds = tap::create_persistent(&name, queues)
                .map_err(|e| AttachError::Tap(name.clone(), e))?;
            let placed = async {
                let ns = path.display().to_string();
                ip(&["link", "set", "dev", &name, "netns", &ns]).await?;
                ip_in(&path, &["link", "set", "dev", &name, "name", &ep.ifname]).await?;
                configure(&path, ep, net, mtu).await
            }
            .await;
            if let Err(e) = placed {
                // a persistent TAP outlives its fds: nothing may stay behind
                detach(ep).await;
                return Err(e);
            }
            Ok(Attached {
                fds,
                offloaded: true,
            })
        }
        Some(host) => {
            let peer = veth_peer(&path, host)
                .await?
                .ok_or_else(|| AttachError::NotAVethIntoNetns(host.clone(), ep.netns.clone()))?;
            if peer != ep.ifname {
                ip_in(&path, &["link", "set", "dev", &peer, "down"]).await?;
                ip_in(&path, &["link", "set", "dev", &peer, "name", &ep.ifname]).await?;
            }
            // The host end hands the agent whatever the container end sends; with
            // offloads on that would be unchecksummed super-frames.
            ethtool_in(
                &path,
                &["-K", &ep.ifname, "tx", "off", "tso", "off", "gso", "off"],
            )
            .await?;
            configure(&path, ep, net, mtu).await?;
            let m = mtu.to_string();
            ip(&["link", "set", "dev", host, "mtu", &m, "up"]).await?;
            packet_socket::open(host)
                .map(|fd| Attached {
                    fds: vec![fd],
                    offloaded: false,
                })
                .map_err(|e| AttachError::PacketSocket(host.clone(), e))
        }
    }
}

/// A Docker endpoint's TAP, made at Join in the agent's namespace with the
/// endpoint's MAC and MTU and left there: Docker moves it into the container,
/// names it and gives it its address and default route (the remote driver
/// protocol's Join hands over an interface; it does not take a namespace).
/// Returns the TAP's name for Join's answer.
pub async fn tap_for_docker(
    ep: &Endpoint,
    net: &Network,
    mtu: u32,
    queues: usize,
) -> Result<(String, Attached), AttachError> {
    let name = tap_name(ep);
    let queues = if net.encrypted { 1 } else { queues };
    let fds =
        tap::create_persistent(&name, queues).map_err(|e| AttachError::Tap(name.clone(), e))?;
    let m = mtu.to_string();
    if let Err(e) = ip(&["link", "set", "dev", &name, "address", &ep.mac, "mtu", &m]).await {
        let _ = ip(&["link", "del", "dev", &name]).await;
        return Err(e.into());
    }
    Ok((
        name,
        Attached {
            fds,
            offloaded: true,
        },
    ))
}

/// The endpoint's TAP as an earlier run of the agent left it in the container
/// (TAPs are persistent), opened again: only a TAP under the endpoint's name
/// with the endpoint's MAC is taken. One that cannot be opened with this run's
/// number of queues (another `--workers`) is deleted, to be made anew.
async fn reopen(netns: &Path, ep: &Endpoint, queues: usize) -> Option<(String, Vec<OwnedFd>)> {
    // Found by MAC: the name may not be the one recorded (Docker names its
    // interfaces itself).
    let out = ip_in(netns, &["-d", "-j", "link", "show"]).await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let name = v.as_array()?.iter().find_map(|l| {
        (l["address"].as_str() == Some(ep.mac.as_str())
            && l["linkinfo"]["info_kind"].as_str() == Some("tun"))
        .then(|| l["ifname"].as_str().map(String::from))
        .flatten()
    })?;
    match tap::reopen_in(netns, &name, queues) {
        Ok(fds) => {
            tracing::info!(endpoint = %ep.id, ifname = %name, "reopened the endpoint's TAP");
            Some((name, fds))
        }
        Err(e) => {
            tracing::info!(endpoint = %ep.id, error = %e, "cannot reopen the endpoint's TAP: making it anew");
            let _ = ip_in(netns, &["link", "del", "dev", &name]).await;
            None
        }
    }
}

/// Deletes an endpoint's interface (TAPs are persistent, so closing their fds
/// does not): inside its namespace, and in the agent's, where Docker leaves a
/// TAP it took back from a container. A user's veth is left alone.
pub async fn detach(ep: &Endpoint) {
    if ep.veth.is_some() {
        return;
    }
    let path = netns_path(&ep.netns);
    if path.exists() {
        if let Ok(out) = ip_in(&path, &["-d", "-j", "link", "show"]).await {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let ours = v.as_array().into_iter().flatten().filter(|l| {
                l["address"].as_str() == Some(ep.mac.as_str())
                    && l["linkinfo"]["info_kind"].as_str() == Some("tun")
            });
            for name in ours.filter_map(|l| l["ifname"].as_str()) {
                let _ = ip_in(&path, &["link", "del", "dev", name]).await;
            }
        }
    }
    let _ = ip(&["link", "del", "dev", &tap_name(ep)]).await;
}

/// The name, inside `netns`, of the other end of veth `host`.
async fn veth_peer(netns: &Path, host: &str) -> Result<Option<String>, AttachError> {
    let out = ip(&["-j", "link", "show", "dev", host])
        .await
        .map_err(|_| AttachError::NoVeth(host.into()))?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let Some(peer_index) = v[0]["link_index"].as_u64() else {
        return Ok(None);
    };
    let out = ip_in(netns, &["-j", "link", "show"]).await?;
    let links: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(links.as_array().into_iter().flatten().find_map(|l| {
        (l["ifindex"].as_u64() == Some(peer_index))
            .then(|| l["ifname"].as_str().map(String::from))
            .flatten()
    }))
}

/// Where iproute2 looks for a named namespace's own resolv.conf: `ip netns exec`
/// bind-mounts it over /etc/resolv.conf.
fn resolv_conf(netns: &str) -> Option<PathBuf> {
    (!netns.contains('/')).then(|| Path::new("/etc/netns").join(netns).join("resolv.conf"))
}

fn marker(ep: &Endpoint) -> String {
    format!("# written by vxmesh for endpoint {}", ep.id)
}

/// Points a named namespace's resolver at the network's gateway, where the
/// embedded DNS answers, unless it has one already (a first network wins).
fn write_resolv_conf(ep: &Endpoint, net: &Network) {
    // the IPv4 gateway where there is one; an IPv6-only network's is asked over IPv6
    let (Some(path), Some(gw)) = (
        resolv_conf(&ep.netns),
        net.gateways
            .iter()
            .find(|g| g.is_ipv4())
            .or(net.gateways.first()),
    ) else {
        return;
    };
    if path.exists() {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, format!("{}\nnameserver {gw}\n", marker(ep))) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the namespace's resolv.conf");
    }
}

/// Removes the resolv.conf written for `ep` (and its directory, if then empty).
pub fn forget_resolv_conf(ep: &Endpoint) {
    let Some(path) = resolv_conf(&ep.netns) else {
        return;
    };
    let ours = std::fs::read_to_string(&path)
        .map(|s| s.starts_with(&marker(ep)))
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(&path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The routing table a task's ingress interface routes its replies by: traffic
/// from its ingress address goes back through the ingress network's gateway, so
/// replies to outside clients (whose addresses the task sees) return the way
/// they came, not out of the task's default route.
const INGRESS_TABLE: &str = "4789";

async fn configure(ns: &Path, ep: &Endpoint, net: &Network, mtu: u32) -> Result<(), AttachError> {
    let ingress = net.name == crate::state::ingress::NETWORK;
    if !ingress {
        write_resolv_conf(ep, net);
    }
    let m = mtu.to_string();
    let dev = ep.ifname.as_str();
    ip_in(
        ns,
        &["link", "set", "dev", dev, "address", &ep.mac, "mtu", &m],
    )
    .await?;
    // a kernel without IPv6 (ipv6.disable=1) keeps IPv4 going alone
    let v6_ok = super::iproute::host_has_ipv6();
    if !v6_ok && ep.ips.iter().any(|a| a.is_ipv6()) {
        tracing::warn!(endpoint = %ep.id, "this kernel has no IPv6: the endpoint's IPv6 address is not configured");
    }
    for addr in ep.ips.iter().filter(|a| v6_ok || a.is_ipv4()) {
        let Some(subnet) = net.subnets.iter().find(|s| s.contains(addr)) else {
            continue;
        };
        let cidr = format!("{addr}/{}", subnet.prefix_len());
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", dev];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        match ip_in(ns, &args).await {
            Ok(_) => {}
            Err(e) if e.exists() => {}
            // the network has an IPv6 subnet, so the interface needs IPv6 even
            // where the namespace's default turned it off (Docker's containers)
            Err(e) if e.ipv6_disabled() => {
                super::iproute::enable_ipv6_in(ns, dev).await?;
                if let Err(e) = ip_in(ns, &args).await {
                    if !e.exists() {
                        return Err(e.into());
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    ip_in(ns, &["link", "set", "dev", dev, "up"]).await?;
    if ingress {
        for v6 in [false, true].into_iter().filter(|v6| v6_ok || !v6) {
            let family = if v6 { "-6" } else { "-4" };
            let addr = ep.ips.iter().find(|a| a.is_ipv6() == v6);
            let gw = net.gateways.iter().find(|g| g.is_ipv6() == v6);
            let (Some(addr), Some(gw)) = (addr, gw) else {
                continue;
            };
            let (a, g) = (addr.to_string(), gw.to_string());
            ip_in(
                ns,
                &[
                    family,
                    "route",
                    "replace",
                    "default",
                    "via",
                    &g,
                    "dev",
                    dev,
                    "table",
                    INGRESS_TABLE,
                ],
            )
            .await?;
            let rule = [
                family,
                "rule",
                "add",
                "from",
                &a,
                "table",
                INGRESS_TABLE,
                "priority",
                INGRESS_TABLE,
            ];
            if let Err(e) = ip_in(ns, &rule).await {
                if !e.exists() {
                    return Err(e.into());
                }
            }
        }
        return Ok(());
    }
    for gw in net.gateways.iter().filter(|g| v6_ok || g.is_ipv4()) {
        let g = gw.to_string();
        let family = if gw.is_ipv6() { "-6" } else { "-4" };
        // A namespace already routed elsewhere (another network) keeps its default.
        if let Err(e) = ip_in(
            ns,
            &[family, "route", "add", "default", "via", &g, "dev", dev],
        )
        .await
        {
            if !e.exists() {
                return Err(e.into());
            }
        }
    }
    Ok(())
}
