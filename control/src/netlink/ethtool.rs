//! Offloads through the `SIOCETHTOOL` ioctl, as ethtool's legacy `-K` sends
//! them: the one place in the control plane that hands the kernel a raw
//! pointer. The netlink ethtool family would need a generic-netlink client
//! for three switches; these three ioctls are stable ABI since Linux 2.6.
//! The device is looked up in the namespace of the socket the ioctl is made
//! on, so the caller runs this inside the device's namespace.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

/// `<linux/ethtool.h>`: set TX checksumming, TCP segmentation offload, generic
/// segmentation offload (each takes a `struct ethtool_value`).
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
#[cfg(test)]
pub(super) const ETHTOOL_GTXCSUM: u32 = 0x16;
#[cfg(test)]
pub(super) const ETHTOOL_GTSO: u32 = 0x1e;
#[cfg(test)]
pub(super) const ETHTOOL_GGSO: u32 = 0x23;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with its union as `ifr_data`: 16 bytes of name, then the
/// pointer, padded to the union's 24 bytes.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 24 - std::mem::size_of::<*mut EthtoolValue>()],
}

/// `ethtool -K DEV tx off tso off gso off`. A switch the device does not
/// have (`EOPNOTSUPP`: not in its changeable features) is left as it is.
pub fn offloads_off(dev: &str) -> io::Result<()> {
    // any socket will do: the kernel falls back to the device ioctls for
    // commands its family does not know, in the socket's namespace
    let sock = UnixDatagram::unbound()?;
    for cmd in [ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO] {
        match ioctl(&sock, dev, cmd, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            r => {
                r?;
            }
        }
    }
    Ok(())
}

/// One `ETHTOOL_G*` of `dev`'s (for tests: what `ethtool -k` shows).
#[cfg(test)]
pub(super) fn get(dev: &str, cmd: u32) -> io::Result<bool> {
    let sock = UnixDatagram::unbound()?;
    ioctl(&sock, dev, cmd, 0).map(|v| v != 0)
}

/// `SIOCETHTOOL` with one `ethtool_value`; returns its `data` as the kernel
/// left it.
fn ioctl(sock: &UnixDatagram, dev: &str, cmd: u32, data: u32) -> io::Result<u32> {
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 24 - std::mem::size_of::<*mut EthtoolValue>()],
    };
    for (d, s) in req.name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads one `struct ifreq` (`req`: a NUL-terminated
    // name, checked shorter than IFNAMSIZ, and `ifr_data`), and through
    // `ifr_data` reads or writes one `struct ethtool_value` for the
    // ETHTOOL_[GS]{TXCSUM,TSO,GSO} commands used here; `value` and `req` are
    // live, exclusive locals for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

#[cfg(test)]
mod layout {
    #[test]
    fn ifreq_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
        assert_eq!(std::mem::size_of::<super::EthtoolValue>(), 8);
    }
}
