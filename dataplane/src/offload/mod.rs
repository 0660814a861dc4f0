//! TCP segmentation and coalescing in userspace, so the TAP can hand over and take
//! back 64 KiB super-frames (`IFF_VNET_HDR`, `TUNSETOFFLOAD`) instead of one
//! packet per syscall. Sans-IO: bytes in, bytes out.
//!
//! - [`vnet`]: the `virtio_net_hdr` in front of every TAP read and write.
//! - [`segment`]: a TSO super-frame from a container → MSS-sized frames with
//!   their own IP/TCP headers and checksums, ready for VXLAN.
//! - [`gather`]: a super-frame switched once → its segments' headers in a small
//!   arena, payloads left in place, for one gathering GSO send (no copy).
//! - [`coalesce`]: consecutive segments of one flow from the underlay → one
//!   super-frame for a single TAP write (GRO).
//!
//! The Internet checksum they all use is [`crate::wire::checksum`].

#![forbid(unsafe_code)]

pub mod coalesce;
pub mod gather;
pub mod segment;
pub mod vnet;
