//! Address management: subnets for networks, VNIs, and addresses for endpoints.
//! Pure functions over what is already allocated; the store's transaction makes
//! them race-free across nodes.

use super::error::StateError;
use super::model::ClusterState;
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Where networks created without `--subnet` get a /24 from.
pub const DEFAULT_POOL: &str = "10.10.0.0/16";
/// Where nodes get their tunnel addresses (RFC 6598 shared space: not routed on
/// the internet, rarely used inside a cluster).
pub const TUNNEL_POOL: &str = "100.64.0.0/16";

/// The error for a pool with nothing left to hand out: it names the pool, how
/// big it is, and what the user can do, so an exhausted pool is never a silent
/// partial state (the operation that hit it commits nothing).
pub fn exhausted(pool: &str, size: u64, remedy: &str) -> StateError {
    StateError::Conflict(format!(
        "pool exhausted: {pool} ({size} in all) has none left: {remedy}"
    ))
}

/// How many addresses of `subnet` endpoints and VIPs can take (the network,
/// gateway and IPv4 broadcast addresses are not theirs), for pool errors.
pub fn assignable_count(subnet: &IpNet) -> u64 {
    let host_bits = u32::from(subnet.max_prefix_len() - subnet.prefix_len());
    let all = 1u128.checked_shl(host_bits).unwrap_or(u128::MAX);
    let reserved = if subnet.addr().is_ipv4() { 3 } else { 2 };
    u64::try_from(all.saturating_sub(reserved)).unwrap_or(u64::MAX)
}

/// The lowest free tunnel address.
pub fn allocate_tunnel_addr(used: &BTreeSet<IpAddr>) -> Option<std::net::Ipv4Addr> {
    let pool: IpNet = TUNNEL_POOL.parse().ok()?;
    match allocate_ip(&pool, used)? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// First VNI handed out automatically (Docker's overlay driver starts here too).
pub const FIRST_AUTO_VNI: u32 = 4096;

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first free /24 of the default pool that overlaps none of `used`.
pub fn allocate_subnet(used: &[IpNet]) -> Option<IpNet> {
    let pool: Ipv4Net = DEFAULT_POOL.parse().ok()?;
    pool.subnets(24)
        .ok()?
        .map(IpNet::V4)
        .find(|s| !used.iter().any(|u| overlaps(s, u)))
}

pub fn allocate_vni(used: &BTreeSet<u32>) -> Option<u32> {
    (FIRST_AUTO_VNI..=MAX_VNI).find(|v| !used.contains(v))
}

/// The gateway: the subnet's first host address.
pub fn gateway(subnet: &IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)),
    }
}

/// Whether `ip` may be given to an endpoint: inside the subnet, not its network or
/// broadcast address, not the gateway.
pub fn assignable(subnet: &IpNet, ip: IpAddr) -> bool {
    subnet.contains(&ip)
        && ip != subnet.network()
        && ip != gateway(subnet)
        && match subnet {
            IpNet::V4(n) => ip != IpAddr::V4(n.broadcast()),
            IpNet::V6(_) => true,
        }
}

/// The lowest assignable address of `subnet` not in `used`.
pub fn allocate_ip(subnet: &IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let start = gateway(subnet);
    let mut ip = next(start)?;
    // Bounded: at most `used.len() + 1` steps before a free address, or the end.
    loop {
        if !subnet.contains(&ip) {
            return None;
        }
        if assignable(subnet, ip) && !used.contains(&ip) {
            return Some(ip);
        }
        ip = next(ip)?;
    }
}

fn next(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|v| IpAddr::V4(v.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|v| IpAddr::V6(v.into())),
    }
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut m: [u8; 6] = rand::random();
    m[0] = (m[0] & 0xfc) | 0x02;
    m
}

/// The MAC the agent answers with for a network's gateway: fixed per VNI, so every
/// node answers alike and a container keeps its neighbour entry across nodes.
pub fn gateway_mac(vni: u32) -> [u8; 6] {
    let v = vni.to_be_bytes();
    [0x02, 0x56, 0x58, v[1], v[2], v[3]]
}

/// Addresses taken on a network: endpoints' and other services' VIPs.
pub fn used_addresses(st: &ClusterState, network: &str) -> BTreeSet<IpAddr> {
    let sandboxes = st
        .nodes
        .values()
        .filter(|_| network == super::mesh::NETWORK)
        .filter_map(|n| n.ingress_ip);
    st.endpoints_on(network)
        .flat_map(|e| e.ips.iter().copied())
        .chain(
            st.services
                .values()
                .flat_map(|s| s.vips_on(network).collect::<Vec<_>>()),
        )
        .chain(sandboxes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_skip_what_is_used() {
        assert_eq!(allocate_subnet(&[]), Some(n("10.10.0.0/24")));
        assert_eq!(
            allocate_subnet(&[n("10.10.0.0/23"), n("10.10.2.128/25")]),
            Some(n("10.10.3.0/24"))
        );
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.10.1.0/24")));
        assert!(!overlaps(&n("10.1.0.0/24"), &n("10.1.1.0/24")));
    }

    #[test]
    fn addresses_skip_gateway_used_and_broadcast() {
        let s = n("10.1.0.0/30");
        assert_eq!(gateway(&s), "10.1.0.1".parse::<IpAddr>().unwrap());
        let mut used = BTreeSet::new();
        assert_eq!(allocate_ip(&s, &used), Some("10.1.0.2".parse().unwrap()));
        used.insert("10.1.0.2".parse().unwrap());
        assert_eq!(allocate_ip(&s, &used), None, "10.1.0.3 is the broadcast");
        let s6 = n("fd00:1::/64");
        assert_eq!(
            allocate_ip(&s6, &BTreeSet::new()),
            Some("fd00:1::2".parse().unwrap())
        );
    }

    #[test]
    fn macs_are_local_unicast() {
        for _ in 0..100 {
            let m = random_mac();
            assert_eq!(m[0] & 0x03, 0x02);
        }
    }

    proptest::proptest! {
        #[test]
        fn allocated_ips_are_assignable_and_free(prefix in 20u8..31, taken in proptest::collection::btree_set(0u32..64, 0..40)) {
            let s = IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 9, 0, 0), prefix).unwrap());
            let used: BTreeSet<IpAddr> = taken.iter().map(|i| IpAddr::V4(Ipv4Addr::from(0x0a09_0000 + i))).collect();
            if let Some(ip) = allocate_ip(&s, &used) {
                proptest::prop_assert!(assignable(&s, ip));
                proptest::prop_assert!(!used.contains(&ip));
            }
        }
    }
}
