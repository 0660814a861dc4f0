//! Wire formats, one protocol a file, shaped like smoltcp's `wire`: a
//! zero-copy view (`Packet<T: AsRef<[u8]>>`, setters where `T: AsMut<[u8]>`)
//! whose `new_checked` makes sure its accessors stay inside the buffer, and a
//! `Repr` that parses a view into values and emits them back. The checks on
//! slices are etherparse's where it has them; offsets are named once, in each
//! file's `field` module, so no other code reads a header by hand. The
//! Internet checksum (whole, pseudo-header, incremental) is [`checksum`]'s
//! alone.
//!
//! On these sit the replies the agent writes ([`icmp_error`], [`tcp_rst`],
//! [`udp_reply`], [`neighbor`], [`probe`]) and the header walks the switch
//! needs ([`flow_hash`], [`ipv6_chain`]). [`build`] composes whole frames for
//! tests, benches and the fuzzer.

pub mod arp;
pub mod checksum;
pub mod dns;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub mod flow_hash;
pub mod icmp_error;
pub mod ipv6_chain;
pub mod neighbor;
pub mod probe;
pub mod tcp_rst;
pub mod udp_reply;

#[cfg(any(test, feature = "test-support"))]
pub mod build;

/// Why a view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header (or than its own length fields say).
    #[error("truncated")]
    Truncated,
    /// A field out of its range: another version, a header length under the
    /// minimum, a kind this view does not read.
    #[error("malformed")]
    Malformed,
}
