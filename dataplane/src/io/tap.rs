//! TAP devices, opened with the `TUNSETIFF` ioctl directly.
//!
//! Why not tokio-tun (the project's listed TAP crate): it registers the fd with a
//! tokio reactor, while the dataplane runs its own run-to-completion epoll loop on a
//! dedicated thread; and it cannot set `IFF_VNET_HDR`/`TUNSETOFFLOAD`, which the
//! offload work needs. This module is the one place that talks to `/dev/net/tun`.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a TAP named `name` (no packet-info header) and returns its queue fd,
/// non-blocking. The device lives as long as the fd (it is not persistent), so a
/// crashed agent leaves no device behind.
pub fn create(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1-15 bytes"),
        ));
    }
    let path = CString::new("/dev/net/tun").expect("static path has no NUL");
    // SAFETY: a valid C string; the returned fd is checked before use.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
