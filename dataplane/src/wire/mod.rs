//! Wire formats, one protocol a file, shaped like smoltcp's `wire`: a
//! zero-copy view (`Packet<T: AsRef<[u8]>>`, setters where `T: AsMut<[u8]>`)
//! whose `new_checked` makes sure its accessors stay inside the buffer, and a
//! `Repr` that parses a view into values and emits them back. The checks on
//! slices are etherparse's where it has them; a header's offsets are named
//! once, in its file's `field` module. The Internet checksum (whole,
//! pseudo-header, incremental) is [`checksum`]'s alone.
//!
//! On these sit the replies the agent writes ([`icmp_error`], [`tcp_rst`],
//! [`udp_reply`], [`neighbor`], [`probe`]) and the header walks the switch
//! needs ([`flow_hash`], [`ipv6_chain`]). [`build`] composes whole frames for
//! tests, benches and the fuzzer.

#![forbid(unsafe_code)]

/// Declares a view: a struct over a buffer `T`, `new_unchecked` (no checks:
/// accessors panic past the buffer's end; the doc says how much they need),
/// and `into_inner`. Each protocol adds its own `new_checked` and accessors.
macro_rules! view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            #[inline]
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            pub fn into_inner(self) -> T {
                self.buffer
            }
        }
    };
}

/// The big-endian 16-bit field at `at`.
#[inline(always)]
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian 32-bit field at `at`.
#[inline(always)]
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub mod arp;
pub mod checksum;
pub mod dns;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
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

/// etherparse's slice errors say the same two things: too short, or a field
/// out of range.
macro_rules! from_slice_error {
    ($($m:ident),*) => {$(
        impl From<etherparse::err::$m::HeaderSliceError> for Error {
            fn from(e: etherparse::err::$m::HeaderSliceError) -> Self {
                match e {
                    etherparse::err::$m::HeaderSliceError::Len(_) => Error::Truncated,
                    etherparse::err::$m::HeaderSliceError::Content(_) => Error::Malformed,
                }
            }
        }
    )*};
}

from_slice_error!(ipv4, ipv6, tcp);

impl From<etherparse::err::LenError> for Error {
    fn from(_: etherparse::err::LenError) -> Self {
        Error::Truncated
    }
}
