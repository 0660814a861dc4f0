//! vxmesh's data plane.
//!
//! The per-packet core is sans-IO: a worker's [`datapath::Datapath`] takes
//! frames and datagrams in [`buf::PacketBuf`]s with the time they came at, and
//! hands transmits to its caller; inside, the [`switch`] decides each frame's
//! fate by the control plane's snapshot ([`switch::SwitchState`]), [`offload`]
//! cuts and merges super-frames, [`tunnel`] encrypts, [`wire`] reads and
//! writes the headers. It makes no syscalls, reads no clock and does not
//! allocate per packet, so the unit tests, the benches and the fuzzer drive
//! the same code the workers do. The drivers in [`io`] only wait for
//! readiness and move buffers between devices, sockets and the datapath.

pub mod buf;
pub mod conntrack;
pub mod counters;
pub mod datapath;
pub mod fair;
pub mod flowlog;
/// The fuzz targets' entry points, state and frame builders: for `fuzz/`, the
/// corpus replay tests and unit tests only (feature `fuzzing`), not the API.
#[cfg(any(test, feature = "fuzzing"))]
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
pub use datapath::Datapath;
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
