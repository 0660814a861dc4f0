//! Wire formats etherparse does not cover, and small helpers over the ones it does.

pub mod dns;
pub mod flow_hash;
pub mod icmp_error;
pub mod ipv6_chain;
pub mod neighbor;
pub mod probe;
pub mod tcp_rst;
pub mod udp_reply;
pub mod vxlan;
