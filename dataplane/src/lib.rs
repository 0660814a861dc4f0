//! vxmesh's data plane.
//!
//! The per-packet core ([`switch`], [`wire`]) is sans-IO: it takes a frame in a
//! [`buf::PacketBuf`], the control-plane snapshot ([`switch::SwitchState`]) and the
//! current time, and returns an [`switch::Action`]. It makes no syscalls and does not
//! allocate per packet, so it can be unit-tested, fuzzed and benchmarked alone.
//! The drivers in [`io`] only move buffers between devices, sockets and the core.

pub mod buf;
pub mod conntrack;
pub mod counters;
pub mod fair;
pub mod flowlog;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod keyed;
pub mod lb;
pub mod offload;
pub mod switch;
pub mod traffic;
pub mod tunnel;
pub mod wire;

pub use buf::PacketBuf;
pub use counters::{Counters, DropReason};
pub use switch::{
    Action, BackendView, Location, NetworkView, PortId, PortView, ServiceView, Switch, SwitchState,
};
pub use traffic::{Traffic, TrafficTotals};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// UDP port IANA assigned to VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// The MAC at `at` in frame `f` (0: destination, 6: source), copied whole:
/// built byte by byte, it is then read back as wider words from the stack,
/// which stalls on store forwarding (measured on the switching path).
/// `f` must hold `at + 6` bytes.
#[inline(always)]
pub fn mac_at(f: &[u8], at: usize) -> Mac {
    let mut m = [0; 6];
    m.copy_from_slice(&f[at..at + 6]);
    m
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_to_string(mac: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}
