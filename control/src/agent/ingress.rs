//! The node's end of the routing mesh, outside the dataplane: the sandbox TAP
//! the kernel hands published ports to, and the nftables table (owned by the
//! agent, removed when it stops) that DNATs them there, from the network and from
//! the node itself.
//!
//! nftables is driven through `nft -f -` with the whole table in one script, so
//! a change applies atomically (no moment with half the ports) and the rules
//! read exactly as an operator would type them.

use crate::firewall::{nft, FirewallError};
use crate::netlink::{host_has_ipv6, sysctl, LinkChange, Netlink, NetlinkError};
use crate::state::ClusterState;
use ipnet::IpNet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use vxmesh_dataplane::io::tap;
use vxmesh_dataplane::{Mac, PortId};

/// The sandbox TAP in the agent's namespace.
pub const DEVICE: &str = "vxm-ingress";
/// The kernel's address on it, and the sandbox address the agent answers: a
/// link-local /30 no overlay or underlay uses.
pub const HOST_CIDR: &str = "169.254.250.1/30";
pub const SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 250, 2);
/// The same for IPv6: a /126 of a ULA /64 no overlay takes (the ingress
/// network's own is the /64 above it).
pub const HOST_CIDR6: &str = "fdff:ffff:ffff:fffe::1/126";
pub const SANDBOX_IP6: Ipv6Addr = Ipv6Addr::new(0xfdff, 0xffff, 0xffff, 0xfffe, 0, 0, 0, 2);
/// The nftables tables (families ip and ip6) the agent owns.
pub const TABLE: &str = "vxmesh";
/// The port id the workers know the sandbox by (endpoint ports start at 1).
pub const PORT: PortId = PortId(0);

/// The sandbox as the switch needs it.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox {
    pub port: PortId,
    pub host_mac: Mac,
    pub sandbox_ip: Ipv4Addr,
    pub sandbox_ip6: Ipv6Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("cannot create the ingress sandbox TAP {DEVICE}: {0}")]
    Tap(std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("the ingress table: {0}")]
    Nft(#[from] FirewallError),
}

/// Creates the sandbox TAP (`queues` queues, one per worker) and sets the
/// kernel's side up: its address, forwarding (published ports are forwarded
/// into the TAP), and `route_localnet`, so `127.0.0.1:PORT` may be DNATed out
/// of it as Docker does on `docker_gwbridge`.
pub async fn create_sandbox(queues: usize) -> Result<(Sandbox, Vec<OwnedFd>), IngressError> {
    let here = Netlink::here()?;
    // a TAP dies with its fds, but a crashed agent's may linger a moment
    let _ = here.delete_link(DEVICE).await;
    let fds = tap::create_queues(DEVICE, queues).map_err(IngressError::Tap)?;
    let host_mac = crate::state::ipam::random_mac();
    let mac = vxmesh_dataplane::mac_to_string(&host_mac);
    here.set_link(DEVICE, LinkChange::new().mac(&mac)).await?;
    // IPv6 on, for published ports over the node's IPv6 addresses, but no
    // router solicitations or autoconfiguration on a link that has no router;
    // a node with IPv6 off (no such files) keeps IPv4 ingress
    let v6 = host_has_ipv6();
    if v6 {
        for (key, value) in [("accept_ra", "0"), ("autoconf", "0"), ("disable_ipv6", "0")] {
            sysctl(&format!("ipv6/conf/{DEVICE}/{key}"), value)?;
        }
    }
    sysctl(&format!("ipv4/conf/{DEVICE}/route_localnet"), "1")?;
    sysctl("ipv4/ip_forward", "1")?;
    for cidr in [HOST_CIDR, HOST_CIDR6] {
        if cidr == HOST_CIDR6 && !v6 {
            continue;
        }
        let net: IpNet = cidr.parse().expect("HOST_CIDR and HOST_CIDR6 are CIDRs");
        // IPv6: the agent is the only other host on the link, no DAD
        let nodad = cidr == HOST_CIDR6;
        if let Err(e) = here
            .add_address(DEVICE, net.addr(), net.prefix_len(), nodad)
            .await
        {
            if !e.exists() {
                return Err(e.into());
            }
        }
    }
    here.set_link(DEVICE, LinkChange::new().up()).await?;
    Ok((
        Sandbox {
            port: PORT,
            host_mac,
            sandbox_ip: SANDBOX_IP,
            sandbox_ip6: SANDBOX_IP6,
        },
        fds,
    ))
}

/// The tables for this node's published ports: IPv4, and IPv6 when the
/// ingress network has an IPv6 subnet (its tasks then have IPv6 addresses).
/// `advertise`: the node's address, which connections from the node itself to
/// 127.0.0.1 take as their source (so a task sees which node the client was,
/// and replies route back).
pub fn render_table(st: &ClusterState, node: &str, advertise: IpAddr) -> String {
    let mut ports: [Vec<u16>; 2] = [Vec::new(), Vec::new()];
    for (_, p) in crate::state::mesh::published_here(st, node) {
        ports[usize::from(p.proto == "udp")].push(p.published);
    }
    let rules = |to: &str, skip: &str| {
        let mut rules = String::new();
        for (proto, list) in ["tcp", "udp"].iter().zip(ports.iter()) {
            let mut list = list.clone();
            list.sort_unstable();
            list.dedup();
            if list.is_empty() {
                continue;
            }
            let set: Vec<String> = list.iter().map(u16::to_string).collect();
            let _ = writeln!(
                rules,
                "    {skip}fib daddr type local {proto} dport {{ {} }} dnat to {to}",
                set.join(", ")
            );
        }
        rules
    };
    let snat = match advertise {
        IpAddr::V4(a) => format!("snat to {a}"),
        IpAddr::V6(_) => "masquerade".into(),
    };
    let v4 = rules(&SANDBOX_IP.to_string(), "");
    let mut out = format!(
        "table ip {TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{v4}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{v4}  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{DEVICE}\" ip saddr 127.0.0.0/8 {snat}\n  }}\n}}\n"
    );
    let v6 = host_has_ipv6()
        && crate::state::ingress::network(st)
            .is_some_and(|n| n.subnets.iter().any(|s| s.addr().is_ipv6()));
    if v6 {
        // ::1 cannot be DNATed off the host (IPv6 has no route_localnet)
        let v6 = rules(&format!("[{SANDBOX_IP6}]"), "");
        let out6 = rules(&format!("[{SANDBOX_IP6}]"), "ip6 daddr != ::1 ");
        let _ = write!(
            out,
            "table ip6 {TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{v6}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{out6}  }}\n}}\n"
        );
    }
    out
}

/// The ingress tables, not written again once removed at a stop.
static TABLES: nft::Owned = nft::Owned::new();

/// The tables' names, for one transaction that empties them: `table X` first
/// (creating one that is missing), so deleting never fails. The IPv6 one only
/// where the kernel has IPv6.
fn flush_script() -> String {
    let mut s = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    if host_has_ipv6() {
        let _ = write!(s, "table ip6 {TABLE}\ndelete table ip6 {TABLE}\n");
    }
    s
}

/// Replaces the tables with `table` in one transaction. Published ports over
/// IPv6 are forwarded into the sandbox, so IPv6 forwarding goes on once the
/// IPv6 table is there (not before: a host taking its default route from
/// router advertisements loses it with forwarding on, unless `accept_ra=2`).
pub async fn apply_table(table: &str) -> Result<(), IngressError> {
    TABLES.apply(&format!("{}{table}", flush_script())).await?;
    if table.contains("table ip6 ") {
        sysctl("ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Removes the tables (`--cleanup-on-exit`).
pub async fn remove_table() -> Result<(), IngressError> {
    Ok(TABLES.remove(&flush_script()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ops, services, Node};

    #[test]
    fn the_table_dnats_published_ports_of_this_node() {
        let mut st = ClusterState::default();
        for (n, a) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2")] {
            ops::upsert_node(&mut st, Node::new(n, a.parse().unwrap())).unwrap();
        }
        ops::create_network(
            &mut st,
            &ops::NetworkSpec {
                name: "app".into(),
                ..Default::default()
            },
        )
        .unwrap();
        services::create_service(
            &mut st,
            &services::ServiceSpec {
                name: "web".into(),
                networks: vec!["app".into()],
                publish: vec![
                    "8080:80".into(),
                    "5353:53/udp".into(),
                    "9000:90,mode=host".into(),
                ],
                ..Default::default()
            },
        )
        .unwrap();
        let t = render_table(&st, "n1", "192.0.2.1".parse().unwrap());
        assert!(
            t.contains("tcp dport { 8080 } dnat to 169.254.250.2"),
            "{t}"
        );
        assert!(t.contains("udp dport { 5353 }"), "{t}");
        assert!(!t.contains("9000"), "host mode: no task here\n{t}");
        assert!(t.contains("snat to 192.0.2.1"), "{t}");
        st.nodes.get_mut("n1").unwrap().ingress = false;
        let t = render_table(&st, "n1", "192.0.2.1".parse().unwrap());
        assert!(!t.contains("8080"), "ingress off\n{t}");
    }
}
