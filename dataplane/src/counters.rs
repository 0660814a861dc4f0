//! Per-worker counters: plain integers on the packet path (one owner, no atomics),
//! copied out to the control plane now and then.

#![forbid(unsafe_code)]

use serde::Serialize;

/// Why a frame or datagram was dropped. Every drop has one, so operators can tell
/// an attack from a misconfiguration from a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Too short, or a header that does not parse.
    Malformed,
    /// A VXLAN header without the I flag.
    BadVxlanHeader,
    /// A VNI this node has no network for.
    UnknownVni,
    /// A datagram from an address that is not a member VTEP of that VNI.
    NotMember,
    /// A frame from an endpoint with a source MAC that is not its own.
    SpoofedSourceMac,
    /// A frame from an endpoint with a source IP (or ARP sender) that is not its own.
    SpoofedSourceIp,
    /// A frame read from a port the current state does not know (it is being removed).
    UnknownPort,
    /// A unicast frame from the underlay for a MAC that is not on this node.
    NoLocalDestination,
    /// Addressed to the network's gateway for nothing it answers or routes: not
    /// a VIP, not outside every overlay (another network's subnet, say).
    NoRoute,
    /// The learned-FDB table is full; the frame still went out (flooded).
    LearnedFdbFull,
    /// Frame larger than the buffer or the headroom allows.
    TooBig,
    /// The device or socket refused the write (full queue, gone).
    TxFailed,
    /// An EtherType other than ARP, IPv4 and IPv6 (e.g. a VLAN tag) from an endpoint.
    UnsupportedEtherType,
    /// Plain VXLAN for a VNI whose network is encrypted.
    Unencrypted,
    /// No tunnel to or from that peer (unknown key or index, or not configured).
    TunnelNoPeer,
    /// A WireGuard message that failed authentication (forged, wrong key).
    TunnelAuth,
    /// A WireGuard data message replayed or outside the replay window.
    TunnelReplay,
    /// Decrypted, but not VXLAN from the peer's tunnel address to ours.
    TunnelNotAllowed,
    /// A handshake refused under load (answered with a cookie).
    TunnelUnderLoad,
    /// A datagram on the WireGuard port that is not a valid WireGuard message.
    TunnelInvalid,
    /// A new connection to a VIP whose service has no healthy task.
    NoBackend,
    /// A DNS query not forwarded: too many already waiting for the node's resolvers.
    DnsBusy,
    /// Ingress traffic on a node whose ingress is off (`node update --ingress off`);
    /// answered as a closed port would be.
    IngressOff,
    /// Ingress traffic for a port no service publishes (here); refused as closed.
    NotPublished,
    /// A new ingress connection a `drop` policy refused.
    PolicyDrop,
    /// A new ingress connection a `reject` policy refused (answered with RST or ICMP).
    PolicyReject,
    /// A new ingress connection over its source address's rate
    /// (`--ingress-rate-limit`); dropped unanswered.
    IngressRateLimited,
    /// An IPv6 packet to a VIP or a published port with extension headers
    /// before its TCP/UDP/ICMPv6 header: not translated.
    Ipv6ExtensionHeader,
    /// A packet for outside every overlay from an endpoint of an `--internal`
    /// network, which has no egress.
    Internal,
    /// A packet the kernel routed into the egress TAP for an address that is no
    /// attached endpoint (on this node) of a network with egress.
    EgressNoEndpoint,
    /// Datagrams the kernel dropped because an underlay or WireGuard socket's
    /// receive queue was full (the worker fell behind); counted from the
    /// socket's own tally (`SO_RXQ_OVFL`) as later datagrams are read.
    SocketOverflow,
    /// A container's packet for a node's own service through egress: the
    /// tunnel ports (VXLAN, WireGuard) anywhere, or the store's and the
    /// metrics' ports at a node's address. A container is a tenant, not a node:
    /// masqueraded to its node's address, a forged VXLAN datagram would be
    /// taken by every peer for its node's own.
    NodeService,
    /// An IPv6 frame from an endpoint whose extension headers would hide
    /// neighbour discovery from the guard that checks it: neighbour discovery
    /// in a fragment (RFC 6980), a first fragment without its upper-layer
    /// header (RFC 7112), a chain longer than the guard walks, or cut short.
    Ipv6HeaderChain,
    /// A broadcast, multicast or unknown-unicast frame from a port over its
    /// flood budget (`--flood-rate`): not replicated.
    FloodLimited,
    /// A doctor's probe (see `wire::probe`) not answered: from an address that
    /// is no other vxmesh node's (underlay, or tunnel address when it came
    /// through WireGuard), or past the worker's probe budget.
    ProbeRefused,
}

impl DropReason {
    pub const ALL: [DropReason; 35] = [
        DropReason::Malformed,
        DropReason::BadVxlanHeader,
        DropReason::UnknownVni,
        DropReason::NotMember,
        DropReason::SpoofedSourceMac,
        DropReason::SpoofedSourceIp,
        DropReason::UnknownPort,
        DropReason::NoLocalDestination,
        DropReason::NoRoute,
        DropReason::LearnedFdbFull,
        DropReason::TooBig,
        DropReason::TxFailed,
        DropReason::UnsupportedEtherType,
        DropReason::Unencrypted,
        DropReason::TunnelNoPeer,
        DropReason::TunnelAuth,
        DropReason::TunnelReplay,
        DropReason::TunnelNotAllowed,
        DropReason::TunnelUnderLoad,
        DropReason::TunnelInvalid,
        DropReason::NoBackend,
        DropReason::DnsBusy,
        DropReason::IngressOff,
        DropReason::NotPublished,
        DropReason::PolicyDrop,
        DropReason::PolicyReject,
        DropReason::IngressRateLimited,
        DropReason::Ipv6ExtensionHeader,
        DropReason::Internal,
        DropReason::EgressNoEndpoint,
        DropReason::SocketOverflow,
        DropReason::NodeService,
        DropReason::Ipv6HeaderChain,
        DropReason::FloodLimited,
        DropReason::ProbeRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadVxlanHeader => "bad_vxlan_header",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::NotMember => "not_member",
            DropReason::SpoofedSourceMac => "spoofed_source_mac",
            DropReason::SpoofedSourceIp => "spoofed_source_ip",
            DropReason::UnknownPort => "unknown_port",
            DropReason::NoLocalDestination => "no_local_destination",
            DropReason::NoRoute => "no_route",
            DropReason::LearnedFdbFull => "learned_fdb_full",
            DropReason::TooBig => "too_big",
            DropReason::TxFailed => "tx_failed",
            DropReason::UnsupportedEtherType => "unsupported_ether_type",
            DropReason::Unencrypted => "unencrypted",
            DropReason::TunnelNoPeer => "tunnel_no_peer",
            DropReason::TunnelAuth => "tunnel_auth",
            DropReason::TunnelReplay => "tunnel_replay",
            DropReason::TunnelNotAllowed => "tunnel_not_allowed",
            DropReason::TunnelUnderLoad => "tunnel_under_load",
            DropReason::TunnelInvalid => "tunnel_invalid",
            DropReason::NoBackend => "no_backend",
            DropReason::DnsBusy => "dns_busy",
            DropReason::IngressOff => "ingress_off",
            DropReason::NotPublished => "not_published",
            DropReason::PolicyDrop => "policy_drop",
            DropReason::PolicyReject => "policy_reject",
            DropReason::IngressRateLimited => "ingress_rate_limited",
            DropReason::Ipv6ExtensionHeader => "ipv6_extension_header",
            DropReason::Internal => "internal",
            DropReason::EgressNoEndpoint => "egress_no_endpoint",
            DropReason::SocketOverflow => "socket_overflow",
            DropReason::NodeService => "node_service",
            DropReason::Ipv6HeaderChain => "ipv6_header_chain",
            DropReason::FloodLimited => "flood_limited",
            DropReason::ProbeRefused => "probe_refused",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Frames read from local ports.
    pub port_rx: u64,
    /// Frames written to local ports.
    pub port_tx: u64,
    /// VXLAN datagrams received from the underlay.
    pub underlay_rx: u64,
    /// VXLAN datagrams sent to the underlay (one per VTEP for replicated frames).
    pub underlay_tx: u64,
    /// ARP replies and neighbour advertisements the agent answered itself.
    pub neighbor_replies: u64,
    /// Frames replicated because their destination was broadcast, multicast or unknown.
    pub flooded: u64,
    /// MACs learned from static peer VTEPs.
    pub learned: u64,
    /// DNS queries answered by the embedded DNS.
    pub dns_answers: u64,
    /// TCP resets sent to the ends of tracked connections that went away.
    pub resets_sent: u64,
    /// Copies of frames a trace could not take (its queue was full).
    pub trace_lost: u64,
    /// WireGuard datagrams sent and received (data and handshakes).
    pub tunnel_tx: u64,
    pub tunnel_rx: u64,
    /// WireGuard handshakes completed, and those that replaced a session (rekeys).
    pub tunnel_handshakes: u64,
    pub tunnel_rekeys: u64,
    /// Doctor probes from other nodes answered, and answers to this node's.
    pub probes_answered: u64,
    pub probe_replies: u64,
    /// Flow records a full ring could not take (see [`crate::flowlog`]).
    pub flow_log_lost: u64,
    /// Connection records left out while the ring was above its watermark.
    pub flow_log_sampled: u64,
    /// Drop records over the worker's drop-record budget.
    pub flow_log_drops_limited: u64,
    /// New ingress connections an `--audit` policy would have refused, let through.
    pub policy_audited: u64,
    pub drops: Drops,
}

/// Drops by reason, indexed by [`DropReason`] (an array over 32 long has no
/// `Default` or `Serialize` of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drops(pub [u64; DropReason::ALL.len()]);

impl Default for Drops {
    fn default() -> Self {
        Drops([0; DropReason::ALL.len()])
    }
}

impl std::ops::Deref for Drops {
    type Target = [u64; DropReason::ALL.len()];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Drops {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Serialize for Drops {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl Counters {
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drop_n(r, 1);
    }

    /// `n` drops of one reason at once (what a socket reports it dropped).
    #[inline]
    pub fn drop_n(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Sums another worker's counters into these.
    pub fn add(&mut self, o: &Counters) {
        self.port_rx += o.port_rx;
        self.port_tx += o.port_tx;
        self.underlay_rx += o.underlay_rx;
        self.underlay_tx += o.underlay_tx;
        self.neighbor_replies += o.neighbor_replies;
        self.flooded += o.flooded;
        self.learned += o.learned;
        self.dns_answers += o.dns_answers;
        self.resets_sent += o.resets_sent;
        self.trace_lost += o.trace_lost;
        self.tunnel_tx += o.tunnel_tx;
        self.tunnel_rx += o.tunnel_rx;
        self.tunnel_handshakes += o.tunnel_handshakes;
        self.tunnel_rekeys += o.tunnel_rekeys;
        self.probes_answered += o.probes_answered;
        self.probe_replies += o.probe_replies;
        self.flow_log_lost += o.flow_log_lost;
        self.flow_log_sampled += o.flow_log_sampled;
        self.flow_log_drops_limited += o.flow_log_drops_limited;
        self.policy_audited += o.policy_audited;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    /// Drops as (reason, count) pairs, for the API.
    pub fn drops_by_reason(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.dropped(*r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
