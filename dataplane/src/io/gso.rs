//! UDP generic segmentation and receive offload on Linux sockets: `UDP_SEGMENT`
//! on send (one buffer, many equal datagrams) and `UDP_GRO` on receive (many
//! datagrams of one flow in one buffer, with their size in a control message).
//! The same cmsg handling quinn-udp does, for our two calls only.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; the family-specific view is filled below.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = v.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = v.port().to_be();
            sin6.sin6_addr.s6_addr = v.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// One `sendmsg` of `buf` cut into `seg`-byte datagrams by the kernel.
pub fn send(s: &UdpSocket, to: SocketAddr, buf: &[u8], seg: u16) -> io::Result<()> {
    send_parts(s, to, &[IoSlice::new(buf)], Some(seg))
}

/// One `sendmsg` gathering `parts` (headers from one buffer, payloads from
/// another: nothing is copied in userspace); with `seg`, cut by the kernel into
/// `seg`-byte datagrams (`UDP_SEGMENT`), else one datagram.
pub fn send_parts(
    s: &UdpSocket,
    to: SocketAddr,
    parts: &[IoSlice<'_>],
    seg: Option<u16>,
) -> io::Result<()> {
    let (mut addr, addr_len) = sockaddr(to);
    // u64 array keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
    msg.msg_namelen = addr_len;
    // IoSlice is ABI-compatible with iovec on Unix (std documents it), and
    // sendmsg only reads through msg_iov.
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len();
    if let Some(seg) = seg {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen =
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: the control buffer is at least CMSG_SPACE(2) bytes and aligned.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
        }
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a GSO refusal means "never again" (`EIO`: the device cannot finish
/// UDP checksums), "not this run" (`EINVAL`, `EMSGSIZE`), or is a real error;
/// turns `*gso` off for good on the first. See [`send_run`].
fn refused(e: io::Error, to: SocketAddr, seg: u16, gso: &mut bool) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::EIO) => {
            *gso = false;
            tracing::warn!(
                error = %e,
                %to,
                "UDP GSO refused (the device cannot finish UDP checksums?): sending datagrams one by one from now on"
            );
            Ok(())
        }
        Some(libc::EINVAL) | Some(libc::EMSGSIZE) => {
            tracing::debug!(error = %e, %to, seg, "GSO send refused; this run goes singly");
            Ok(())
        }
        _ => Err(e),
    }
}

/// Like [`send_run`] for a run whose datagrams are each `per` consecutive
/// `parts` (a segment's headers and its payload): all in one gathering GSO
/// `sendmsg` while `*gso` holds, else one gathering `sendmsg` per datagram.
/// Every datagram but the last must be `seg` bytes. Returns how many left.
pub fn send_gather_run(
    s: &UdpSocket,
    to: SocketAddr,
    parts: &[IoSlice<'_>],
    per: usize,
    seg: u16,
    gso: &mut bool,
) -> io::Result<usize> {
    let per = per.max(1);
    let count = parts.len().div_ceil(per);
    if *gso && count > 1 {
        match send_parts(s, to, parts, Some(seg)) {
            Ok(()) => return Ok(count),
            Err(e) => refused(e, to, seg, gso)?,
        }
    }
    let mut sent = 0;
    let mut last = None;
    for d in parts.chunks(per) {
        match send_parts(s, to, d, None) {
            Ok(()) => sent += 1,
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if sent == 0 => Err(e),
        _ => Ok(sent),
    }
}

/// Sends a run of `seg`-byte datagrams (the last may be shorter) to `to`: in
/// one GSO `sendmsg` while `*gso` holds, else one `send_to` each.
///
/// UDP GSO needs the outgoing device to finish each segment's UDP checksum
/// (IPv4 and IPv6 alike); where it cannot (a NIC, or a veth, with `tx off`) the
/// kernel refuses the whole run with `EIO` rather than send it without
/// checksums. Then `*gso` turns false for good (as quinn-udp does) and the
/// datagrams go singly, each with a checksum the kernel computes in software.
/// Any other GSO refusal (`EINVAL`: a segment larger than the path MTU allows,
/// `EMSGSIZE`) sends this run singly too, where the kernel may fragment it, and
/// tries GSO again next time. Returns how many datagrams left; an error only
/// when none did.
pub fn send_run(
    s: &UdpSocket,
    to: SocketAddr,
    buf: &[u8],
    seg: u16,
    gso: &mut bool,
) -> io::Result<usize> {
    let count = buf.len().div_ceil(usize::from(seg).max(1));
    if *gso && count > 1 {
        match send(s, to, buf, seg) {
            Ok(()) => return Ok(count),
            Err(e) => refused(e, to, seg, gso)?,
        }
    }
    let mut sent = 0;
    let mut last = None;
    for d in buf.chunks(usize::from(seg).max(1)) {
        match s.send_to(d, to) {
            Ok(_) => sent += 1,
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if sent == 0 => Err(e),
        _ => Ok(sent),
    }
}

pub fn enable_gro(s: &UdpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_gro_run_is_cut_into_its_datagrams() {
        let meta = |len, size| RecvMeta {
            len,
            size,
            ..RecvMeta::default()
        };
        let cut = |m: RecvMeta| m.datagrams().collect::<Vec<_>>();
        assert_eq!(
            cut(meta(3200, 1000)),
            vec![0..1000, 1000..2000, 2000..3000, 3000..3200]
        );
        assert_eq!(cut(meta(1000, 1000)), vec![0..1000]);
        assert_eq!(cut(meta(0, 1000)), vec![]);
        // a size of 0 (recv_many never reports one) still cannot loop forever
        assert_eq!(cut(meta(3, 0)).len(), 3);
    }

    use super::*;
    use std::time::Duration;

    /// One GSO send arrives as separate datagrams of the segment size, and with
    /// GRO on they come back in one read with that size.
    #[test]
    fn gso_send_and_gro_receive_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut data = vec![0u8; 1000 * 3 + 200];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 1000) as u8;
        }
        send(&tx, rx.local_addr().unwrap(), &data, 1000).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut bufs = vec![vec![0u8; 65536]; 1];
        let mut meta = [RecvMeta::default(); 1];
        let mut sizes = vec![];
        while sizes.len() < 4 {
            match recv_many(&rx, &mut bufs, &mut meta) {
                Ok(_) => sizes.push(meta[0].len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(sizes, vec![1000, 1000, 1000, 200]);
        enable_gro(&rx).unwrap();
        send(&tx, rx.local_addr().unwrap(), &data, 1000).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        recv_many(&rx, &mut bufs, &mut meta).unwrap();
        let RecvMeta {
            len: n, from, size, ..
        } = meta[0];
        assert_eq!(from, tx.local_addr().unwrap());
        assert_eq!(
            (n, size),
            (3200, 1000),
            "GRO hands the run over in one read"
        );
        assert_eq!(&bufs[0][..n], &data[..]);
    }
}

/// What one message of a [`recv_many`] batch held.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    pub len: usize,
    pub from: SocketAddr,
    /// The datagram size of a GRO run (the whole message otherwise).
    pub size: usize,
    /// How many datagrams the socket had dropped (its receive queue full) when
    /// this one was queued: `SO_RXQ_OVFL`, a running count; 0 until the first.
    pub dropped: u32,
}

/// An empty slot for `recv_many` to fill.
impl Default for RecvMeta {
    fn default() -> Self {
        Self {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            size: 0,
            dropped: 0,
        }
    }
}

impl RecvMeta {
    /// The datagrams this message holds, as ranges of its buffer: a GRO run
    /// cut at `size` (its last datagram may be shorter).
    pub fn datagrams(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (n, size) = (self.len, self.size.max(1));
        (0..n)
            .step_by(size)
            .map(move |off| off..(off + size).min(n))
    }
}

/// Most messages one [`recv_many`] call takes.
pub const BATCH: usize = 8;

fn from_storage(addr: &libc::sockaddr_storage) -> SocketAddr {
    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET sender.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            )
        }
        _ => {
            // SAFETY: otherwise AF_INET6 on these sockets.
            let a = unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into(),
                u16::from_be(a.sin6_port),
            )
        }
    }
}

/// One `recvmmsg` for up to [`BATCH`] messages, each possibly a GRO run: one
/// syscall for many small datagrams of different flows too. Returns how many
/// messages arrived; `WouldBlock` when none.
pub fn recv_many(s: &UdpSocket, bufs: &mut [Vec<u8>], meta: &mut [RecvMeta]) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(BATCH);
    // SAFETY: zeroed C structs are valid; every pointer set below outlives the call.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above: a zeroed iovec is valid (null, 0), filled in below.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls = [[0u64; 8]; BATCH];
    // SAFETY: as above: a zeroed mmsghdr is valid, its pointers set below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: bufs[i].len(),
        };
        let h = &mut msgs[i].msg_hdr;
        h.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].as_mut_ptr() as *mut libc::c_void;
        h.msg_controllen = std::mem::size_of_val(&controls[i]);
    }
    // SAFETY: msgs[..n] point at live buffers; the socket is non-blocking.
    let got = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as u32,
            0,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    for i in 0..got as usize {
        let len = msgs[i].msg_len as usize;
        let mut size = len;
        let mut dropped = 0;
        // SAFETY: walking the control messages the kernel wrote for message i.
        unsafe {
            let h = &msgs[i].msg_hdr;
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    if v > 0 {
                        size = v as usize;
                    }
                } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL
                {
                    dropped = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        meta[i] = RecvMeta {
            len,
            from: from_storage(&addrs[i]),
            size: size.max(1),
            dropped,
        };
    }
    Ok(got as usize)
}

#[cfg(test)]
mod send_run_tests {
    use super::*;
    use std::time::Duration;

    fn pair(lo: &str) -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind((lo, 0)).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (rx, UdpSocket::bind((lo, 0)).unwrap())
    }

    fn sizes(rx: &UdpSocket, n: usize) -> Vec<usize> {
        let mut buf = [0u8; 2048];
        (0..n).map(|_| rx.recv_from(&mut buf).unwrap().0).collect()
    }

    /// Over IPv6 too, a run leaves in one GSO send as separate datagrams.
    #[test]
    fn a_run_over_ipv6_is_one_gso_send() {
        let (rx, tx) = pair("::1");
        let mut gso = true;
        let buf = vec![9u8; 1000 * 3 + 200];
        let n = send_run(&tx, rx.local_addr().unwrap(), &buf, 1000, &mut gso).unwrap();
        assert_eq!((n, gso), (4, true));
        assert_eq!(sizes(&rx, 4), vec![1000, 1000, 1000, 200]);
    }

    /// A run the kernel refuses (here: more segments than UDP_MAX_SEGMENTS,
    /// EINVAL) goes out singly instead of being lost, and GSO stays on for the
    /// next run (only EIO, a device that cannot checksum, turns it off).
    #[test]
    fn a_refused_run_goes_singly() {
        let (rx, tx) = pair("::1");
        let mut gso = true;
        let buf = vec![1u8; 10 * 200];
        let to = rx.local_addr().unwrap();
        let e = send(&tx, to, &buf, 10).expect_err("more than UDP_MAX_SEGMENTS");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let n = send_run(&tx, rx.local_addr().unwrap(), &buf, 10, &mut gso).unwrap();
        assert_eq!((n, gso), (200, true));
        assert_eq!(sizes(&rx, 200), vec![10; 200]);
    }

    /// With GSO off, one send per datagram.
    #[test]
    fn without_gso_one_send_each() {
        let (rx, tx) = pair("127.0.0.1");
        let mut gso = false;
        let buf = vec![1u8; 250];
        let n = send_run(&tx, rx.local_addr().unwrap(), &buf, 100, &mut gso).unwrap();
        assert_eq!((n, gso), (3, false));
        assert_eq!(sizes(&rx, 3), vec![100, 100, 50]);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn many_datagrams_from_many_senders_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let senders: Vec<UdpSocket> = (0..5)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, s) in senders.iter().enumerate() {
            s.send_to(&[i as u8; 100], rx.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        rx.set_nonblocking(true).unwrap();
        let mut bufs = vec![vec![0u8; 2048]; BATCH];
        let mut meta = [RecvMeta::default(); BATCH];
        let n = recv_many(&rx, &mut bufs, &mut meta).unwrap();
        assert_eq!(n, 5, "all five in one recvmmsg");
        for (i, m) in meta[..n].iter().enumerate() {
            assert_eq!(m.len, 100);
            assert_eq!(m.from, senders[bufs[i][0] as usize].local_addr().unwrap());
        }
        assert_eq!(
            recv_many(&rx, &mut bufs, &mut meta).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
