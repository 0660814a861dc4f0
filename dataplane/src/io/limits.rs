//! The most each of the dataplane's tables holds, and their defaults: what
//! the agent's flags set and every worker is started with (below both the
//! dataplane's handle and its workers, so neither reaches into the other).

/// Connections tracked through VIPs, at most (Linux's default `nf_conntrack_max` here).
pub const CONNTRACK_MAX: usize = 262_144;
/// MACs one worker learns from static peer VTEPs, at most.
pub const FDB_LEARNED_MAX: usize = 16_384;
/// DNS queries one worker has waiting for the node's resolvers, at most.
pub const DNS_FORWARDS_MAX: usize = 1_024;
/// The largest `dns_forwards` allowed: forwarded queries take 16-bit ids, and
/// a fresh random id must stay easy to find.
pub const DNS_FORWARDS_LIMIT: usize = 16_384;

/// Broadcast, multicast and unknown-unicast frames each port may have
/// replicated, by default: plenty for ARP, neighbour discovery, DHCP and mDNS,
/// far less than a storm.
pub const FLOOD_RATE: crate::lb::limit::RateLimit = crate::lb::limit::RateLimit {
    per_sec: 1_000,
    burst: 2_000,
};

/// The most each of the dataplane's tables holds (`vxmesh agent
/// --conntrack-max`, `--fdb-learned-max`, `--dns-forwards-max`): whatever
/// arrives, none grows past its maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections in the shared table (all workers); a new one evicts when full.
    pub conntrack: usize,
    /// MACs learned from static peers, per worker; past it frames still flood.
    pub fdb_learned: usize,
    /// DNS queries in flight to the node's resolvers, per worker (at most
    /// [`DNS_FORWARDS_LIMIT`]); past it queries are dropped (`dns_busy`).
    pub dns_forwards: usize,
    /// Each port's budget of frames to flood, per worker (`--flood-rate`);
    /// past it they are dropped (`flood_limited`). `None`: no limit.
    pub flood_rate: Option<crate::lb::limit::RateLimit>,
    /// Flow logs (`--flow-logs`): each worker's ring and drop-record budget;
    /// `None`: off (no records, no per-connection counts).
    pub flow_log: Option<crate::flowlog::FlowLogConfig>,
    /// Test only (`--test-conntrack-timeout-ms`): the longest any connection
    /// stays idle in the table, whatever its state's timeout.
    pub conntrack_timeout_cap_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            conntrack: CONNTRACK_MAX,
            fdb_learned: FDB_LEARNED_MAX,
            dns_forwards: DNS_FORWARDS_MAX,
            flood_rate: Some(FLOOD_RATE),
            flow_log: Some(crate::flowlog::FlowLogConfig::default()),
            conntrack_timeout_cap_ms: None,
        }
    }
}
