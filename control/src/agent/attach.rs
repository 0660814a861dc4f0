//! Giving an endpoint its interface: a TAP the agent creates and moves into the
//! container's namespace, or a user-made veth whose host end the agent reads.
//! Either way the container side gets the endpoint's name, MAC, addresses, MTU and a
//! default route via the network's gateway.

use crate::netlink::{Link, LinkChange, Netlink, NetlinkError, Route};
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
    Netlink(#[from] NetlinkError),
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
        if !matches!(Netlink::here()?.link(v).await, Ok(Some(_))) {
            return Err(AttachError::NoVeth(v.into()));
        }
        if veth_peer(&path, v).await?.is_none() {
            return Err(AttachError::NotAVethIntoNetns(v.into(), netns.into()));
        }
    } else if matches!(
        Netlink::in_netns(&path).await?.link(ifname).await,
        Ok(Some(_))
    ) {
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
                configure(&Netlink::in_netns(&path).await?, &found, net, mtu).await?;
                return Ok(Attached {
                    fds,
                    offloaded: true,
                });
            }
            let fds = tap::create_persistent(&name, queues)
                .map_err(|e| AttachError::Tap(name.clone(), e))?;
            let placed = async {
                Netlink::here()?
                    .set_link(&name, LinkChange::new().netns(&path))
                    .await?;
                let nl = Netlink::in_netns(&path).await?;
                nl.set_link(&name, LinkChange::new().rename(&ep.ifname))
                    .await?;
                configure(&nl, ep, net, mtu).await
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
            let nl = Netlink::in_netns(&path).await?;
            if peer != ep.ifname {
                // down first: the kernel renames no running interface
                nl.set_link(&peer, LinkChange::new().down()).await?;
                nl.set_link(&peer, LinkChange::new().rename(&ep.ifname))
                    .await?;
            }
            // The host end hands the agent whatever the container end sends; with
            // offloads on that would be unchecksummed super-frames.
            nl.offloads_off(&ep.ifname).await?;
            configure(&nl, ep, net, mtu).await?;
            Netlink::here()?
                .set_link(host, LinkChange::new().mtu(mtu).up())
                .await?;
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
    let here = Netlink::here()?;
    let set = LinkChange::new().mac(&ep.mac).mtu(mtu);
    if let Err(e) = here.set_link(&name, set).await {
        let _ = here.delete_link(&name).await;
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
    let nl = Netlink::in_netns(netns).await.ok()?;
    let name = endpoint_taps(&nl, ep).await.ok()?.into_iter().next()?.name;
    match tap::reopen_in(netns, &name, queues) {
        Ok(fds) => {
            tracing::info!(endpoint = %ep.id, ifname = %name, "reopened the endpoint's TAP");
            Some((name, fds))
        }
        Err(e) => {
            tracing::info!(endpoint = %ep.id, error = %e, "cannot reopen the endpoint's TAP: making it anew");
            let _ = nl.delete_link(&name).await;
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
        if let Ok(nl) = Netlink::in_netns(&path).await {
            for l in endpoint_taps(&nl, ep).await.unwrap_or_default() {
                let _ = nl.delete_link(&l.name).await;
            }
        }
    }
    if let Ok(here) = Netlink::here() {
        let _ = here.delete_link(&tap_name(ep)).await;
    }
}

/// The TAPs with `ep`'s MAC among `nl`'s interfaces: the endpoint's, under
/// whatever name it has there.
pub async fn endpoint_taps(nl: &Netlink, ep: &Endpoint) -> Result<Vec<Link>, NetlinkError> {
    let mac = vxmesh_dataplane::parse_mac(&ep.mac);
    let mut links = nl.links().await?;
    links.retain(|l| l.is_tun() && mac.is_some() && l.mac == mac);
    Ok(links)
}

/// The name, inside `netns`, of the other end of veth `host`.
async fn veth_peer(netns: &Path, host: &str) -> Result<Option<String>, AttachError> {
    let Ok(Some(link)) = Netlink::here()?.link(host).await else {
        return Err(AttachError::NoVeth(host.into()));
    };
    let Some(peer_index) = link.link_index else {
        return Ok(None);
    };
    let nl = Netlink::in_netns(netns).await?;
    Ok(nl.link_by_index(peer_index).await?.map(|l| l.name))
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
const INGRESS_TABLE: u32 = 4789;

/// `Ok` also for what is there already.
fn or_exists(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if e.exists() => Ok(()),
        r => r,
    }
}

async fn configure(
    nl: &Netlink,
    ep: &Endpoint,
    net: &Network,
    mtu: u32,
) -> Result<(), AttachError> {
    let ingress = net.name == crate::state::ingress::NETWORK;
    if !ingress {
        write_resolv_conf(ep, net);
    }
    let dev = ep.ifname.as_str();
    nl.set_link(dev, LinkChange::new().mac(&ep.mac).mtu(mtu))
        .await?;
    // a kernel without IPv6 (ipv6.disable=1) keeps IPv4 going alone
    let v6_ok = crate::netlink::host_has_ipv6();
    if !v6_ok && ep.ips.iter().any(|a| a.is_ipv6()) {
        tracing::warn!(endpoint = %ep.id, "this kernel has no IPv6: the endpoint's IPv6 address is not configured");
    }
    for addr in ep.ips.iter().filter(|a| v6_ok || a.is_ipv4()) {
        let Some(subnet) = net.subnets.iter().find(|s| s.contains(addr)) else {
            continue;
        };
        let add = || nl.add_address(dev, *addr, subnet.prefix_len(), addr.is_ipv6());
        match or_exists(add().await) {
            Ok(()) => {}
            // the network has an IPv6 subnet, so the interface needs IPv6 even
            // where the namespace's default turned it off (Docker's containers)
            Err(e) if e.ipv6_disabled() => {
                nl.enable_ipv6(dev).await?;
                or_exists(add().await)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    nl.set_link(dev, LinkChange::new().up()).await?;
    if ingress {
        for v6 in [false, true].into_iter().filter(|v6| v6_ok || !v6) {
            let addr = ep.ips.iter().find(|a| a.is_ipv6() == v6);
            let gw = net.gateways.iter().find(|g| g.is_ipv6() == v6);
            let (Some(addr), Some(gw)) = (addr, gw) else {
                continue;
            };
            let route = Route {
                table: Some(INGRESS_TABLE),
                ..Route::default_via(*gw, dev)
            };
            nl.replace_route(&route).await?;
            or_exists(nl.add_rule(*addr, INGRESS_TABLE, INGRESS_TABLE).await)?;
        }
        return Ok(());
    }
    for gw in net.gateways.iter().filter(|g| v6_ok || g.is_ipv4()) {
        // A namespace already routed elsewhere (another network) keeps its default.
        or_exists(nl.add_route(&Route::default_via(*gw, dev)).await)?;
    }
    Ok(())
}
