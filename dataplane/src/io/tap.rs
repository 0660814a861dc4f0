//! TAP devices, opened with the `TUNSETIFF` ioctl directly.
//!
//! Why not tokio-tun (the project's listed TAP crate): it registers the fd with a
//! tokio reactor, while the dataplane runs its own run-to-completion epoll loop on a
//! dedicated thread; and it cannot set `IFF_VNET_HDR`/`TUNSETOFFLOAD`, which the
//! offload work needs. This module is the one place that talks to `/dev/net/tun`.
//!
//! Endpoints' TAPs are persistent (`TUNSETPERSIST`): they outlive the agent's
//! fds, so a container keeps its interface, addresses and routes while the
//! agent restarts, and the new agent opens the same device again ([`reopen_in`])
//! instead of making a new one. Their removal is therefore explicit.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An offloading TAP with `queues` queues (`IFF_MULTI_QUEUE`), one fd each, so one
/// worker per core reads its own queue; the kernel spreads the container's flows
/// over them by flow hash. UDP segmentation offload (USO) is asked for too and
/// dropped if the kernel refuses it.
pub fn create_queues(name: &str, queues: usize) -> io::Result<Vec<OwnedFd>> {
    open_queues(name, queues)
}

/// [`create_queues`], and the device made persistent: it stays when the fds
/// close (an agent restart), until [`set_persist`] clears it or it is deleted.
pub fn create_persistent(name: &str, queues: usize) -> io::Result<Vec<OwnedFd>> {
    let fds = open_queues(name, queues)?;
    if let Some(fd) = fds.first() {
        set_persist(fd, true)?;
    }
    Ok(fds)
}

/// Opens `queues` queues of the existing TAP `name` inside the network namespace
/// at `netns` (where a container has it, under the container's name for it),
/// with the flags it was made with. Fails if there is no such TAP there, or if
/// it was made with another number of queues.
pub fn reopen_in(netns: &std::path::Path, name: &str, queues: usize) -> io::Result<Vec<OwnedFd>> {
    let ns = std::fs::File::open(netns)?;
    let name = name.to_string();
    // setns(CLONE_NEWNET) moves only the calling thread: use one of our own.
    std::thread::Builder::new()
        .name("vxmesh-tap-reopen".into())
        .spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: a namespace fd we own, on a thread that then ends.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            open_queues(&name, queues)
        })?
        .join()
        .map_err(|_| io::Error::other("the TAP reopening thread panicked"))?
}

/// Sets or clears a TAP's persistence, through any of its fds.
pub fn set_persist(fd: &OwnedFd, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETPERSIST takes the flag by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(on)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_queues(name: &str, queues: usize) -> io::Result<Vec<OwnedFd>> {
    use std::os::fd::AsRawFd;
    let mq = if queues > 1 { IFF_MULTI_QUEUE } else { 0 };
    let mut fds = Vec::new();
    for _ in 0..queues.max(1) {
        let fd = open(name, IFF_VNET_HDR | mq)?;
        let full = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6;
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let mut rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, full as libc::c_ulong) };
        if rc < 0 {
            let tcp_only = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
            // SAFETY: as above.
            rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, tcp_only as libc::c_ulong) };
        }
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        fds.push(fd);
    }
    Ok(fds)
}

fn open(name: &str, extra_flags: libc::c_short) -> io::Result<OwnedFd> {
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
        flags: IFF_TAP | IFF_NO_PI | extra_flags,
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
