//! The underlay: one socket that receives VXLAN on 4789, and a small pool of send
//! sockets on distinct source ports.
//!
//! RFC 7348 wants the outer source port to follow the inner flow (for ECMP and the
//! receiver's RSS). A kernel UDP socket has one source port, so the worker picks a
//! socket of the pool by the inner flow's hash. Kernel UDP sockets also fill in a
//! real outer checksum, which the receiver's UDP GRO needs.
//!
//! The underlay is IPv4 or IPv6, the family of the advertised address. Over IPv6
//! the outer UDP checksum is mandatory (RFC 8200; RFC 6935 relaxes it for tunnels
//! only by configuration): our send sockets never turn it off
//! (`UDP_NO_CHECK6_TX` stays 0, and the kernel refuses UDP GSO without a
//! checksum anyway), while the receive sockets accept a zero checksum
//! (`UDP_NO_CHECK6_RX`, what the kernel's `udp6zerocsumrx` does), since RFC 7348
//! says a VTEP must accept a datagram whose UDP checksum is zero and a kernel
//! VXLAN peer made with `udp6zerocsumtx` sends exactly that. IPv6 sockets are
//! IPv6-only (`IPV6_V6ONLY`): a node's underlay has one family, and IPv4 on the
//! same port (a kernel VXLAN device, another agent) is left alone.

use super::gso;
use std::cell::Cell;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

pub struct Underlay {
    pub rx: UdpSocket,
    tx: Vec<UdpSocket>,
    /// The doctor's probes and their answers leave from here: with the
    /// don't-fragment bit and no path MTU the kernel learnt (so a probe
    /// larger than the path is lost, as an overlay frame would be, rather
    /// than cut into fragments), never larger than the outgoing interface's
    /// MTU (`EMSGSIZE`).
    probe: UdpSocket,
    port: u16,
    /// False once a GSO send failed with `EIO`: the route's device cannot
    /// finish UDP checksums (e.g. `ethtool -K DEV tx off`), which UDP GSO
    /// needs; runs are then sent one datagram per call. Per worker, never
    /// shared: a `Cell`.
    gso: Cell<bool>,
}

/// `IPPROTO_UDPV6` options (linux/udp.h): skip the UDP checksum on send, accept
/// a zero one on receive.
const UDP_NO_CHECK6_TX: libc::c_int = 101;
const UDP_NO_CHECK6_RX: libc::c_int = 102;

fn set_udp_opt(s: &UdpSocket, opt: libc::c_int, v: bool) -> io::Result<()> {
    set_int_opt(s, libc::IPPROTO_UDP, opt, libc::c_int::from(v))
}

fn set_int_opt(
    s: &UdpSocket,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: an int option of the size passed, on a live socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A UDP socket bound to `addr`; IPv6 ones IPv6-only. `reuse_port`: with
/// `SO_REUSEPORT`, so each worker has its own on 4789 and the kernel spreads
/// flows over them by their 4-tuple (one flow, one worker).
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    let s: UdpSocket = s.into();
    set_buffer(&s, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, SOCKET_BUFFER);
    set_buffer(&s, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SOCKET_BUFFER);
    // each datagram read tells how many the full queue dropped: a counted drop
    set_int_opt(&s, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    socket2::SockRef::from(&s).bind(&addr.into())?;
    Ok(s)
}

/// Receive and send buffer of every underlay socket. The kernel's default
/// (`net.core.rmem_default`, 208 KiB) holds three or four 64 KiB GRO runs: one
/// TCP stream overflowed it whenever the worker was late by a fraction of a
/// millisecond (5,700 datagrams dropped, 200,000 TCP retransmissions in 5 s of
/// netns-throughput, against 400 over the kernel's VXLAN), which is what
/// collapsed single streams. wireguard-go asks for 7 MiB for the same reason.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Sets a socket buffer to `bytes`: with the `*FORCE` option where allowed
/// (root, or `CAP_NET_ADMIN`), past `net.core.rmem_max`/`wmem_max`; otherwise
/// as large as those let the plain option go (the kernel caps it silently).
fn set_buffer(s: &UdpSocket, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| set_int_opt(s, libc::SOL_SOCKET, opt, v);
    if let Err(e) = set(force).or_else(|_| set(plain)) {
        tracing::debug!(error = %e, "socket buffer left at the default");
    }
}

/// A socket's receive and send buffers as the kernel granted them.
pub fn socket_buffers(s: &UdpSocket) -> io::Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    let get = |opt| -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int option into a live int of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(v).unwrap_or(0))
    };
    Ok((get(libc::SO_RCVBUF)?, get(libc::SO_SNDBUF)?))
}

/// The unspecified address of `local`'s family, port `port`: where the agent's
/// receiving sockets listen.
pub fn any_of(local: IpAddr, port: u16) -> SocketAddr {
    match local {
        IpAddr::V4(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
        IpAddr::V6(_) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port),
    }
}

impl Underlay {
    /// Binds `[::]`/`0.0.0.0`:`port` for receiving and `pool` send sockets on
    /// `local` (so datagrams leave from the advertised address that peers check).
    pub fn bind(local: IpAddr, port: u16, pool: usize) -> io::Result<Self> {
        let rx = bind_udp(any_of(local, port), true)?;
        rx.set_nonblocking(true)?;
        if local.is_ipv6() {
            set_udp_opt(&rx, UDP_NO_CHECK6_RX, true)?;
        }
        let tx = (0..pool.max(1))
            .map(|_| {
                let s = bind_udp(SocketAddr::new(local, 0), false)?;
                s.set_nonblocking(true)?;
                if local.is_ipv6() {
                    // the default; said, so no inherited setting can zero our checksums
                    set_udp_opt(&s, UDP_NO_CHECK6_TX, false)?;
                }
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let probe = bind_udp(SocketAddr::new(local, 0), false)?;
        probe.set_nonblocking(true)?;
        if local.is_ipv6() {
            set_int_opt(
                &probe,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_PROBE,
            )?;
            set_int_opt(&probe, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
        } else {
            set_int_opt(
                &probe,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            )?;
        }
        Ok(Self {
            rx,
            tx,
            probe,
            port,
            gso: Cell::new(true),
        })
    }

    /// Sends one VXLAN datagram to `vtep` from the socket that `flow_hash` selects.
    pub fn send(&self, flow_hash: u32, vtep: IpAddr, datagram: &[u8]) -> io::Result<()> {
        let s = &self.tx[flow_hash as usize % self.tx.len()];
        s.send_to(datagram, SocketAddr::new(vtep, self.port))
            .map(|_| ())
    }

    /// Sends a doctor's probe (or its answer) to `vtep`'s VXLAN port, whole
    /// or not at all (see the `probe` socket).
    pub fn send_probe(&self, vtep: IpAddr, datagram: &[u8]) -> io::Result<()> {
        self.probe
            .send_to(datagram, SocketAddr::new(vtep, self.port))
            .map(|_| ())
    }

    /// The receive socket's buffers as the kernel granted them (bytes, its
    /// bookkeeping share included: twice what was asked when all was).
    pub fn buffers(&self) -> io::Result<(usize, usize)> {
        socket_buffers(&self.rx)
    }

    /// Sends `buf`, a run of equal-sized VXLAN datagrams (`seg` bytes each, the last
    /// may be shorter), to `vtep` in one `sendmsg` with `UDP_SEGMENT`: the kernel
    /// (or the NIC) cuts them apart, one syscall for up to 64 datagrams. Where
    /// the kernel will not (see [`gso::send_run`]) they go one by one. Returns
    /// how many datagrams were sent.
    pub fn send_gso(
        &self,
        flow_hash: u32,
        vtep: IpAddr,
        buf: &[u8],
        seg: u16,
    ) -> io::Result<usize> {
        let s = &self.tx[flow_hash as usize % self.tx.len()];
        let mut gso = self.gso.get();
        let r = gso::send_run(s, SocketAddr::new(vtep, self.port), buf, seg, &mut gso);
        self.gso.set(gso);
        r
    }

    /// [`Self::send_gso`] for a run whose datagrams are gathered from `per`
    /// parts each (see [`gso::send_gather_run`]): a super-frame's segments,
    /// headers written beside it and payloads where the TAP read put them.
    pub fn send_gso_gather(
        &self,
        flow_hash: u32,
        vtep: IpAddr,
        parts: &[std::io::IoSlice<'_>],
        per: usize,
        seg: u16,
    ) -> io::Result<usize> {
        let s = &self.tx[flow_hash as usize % self.tx.len()];
        let mut gso = self.gso.get();
        let r = gso::send_gather_run(
            s,
            SocketAddr::new(vtep, self.port),
            parts,
            per,
            seg,
            &mut gso,
        );
        self.gso.set(gso);
        r
    }

    /// Whether runs still leave as one GSO send (false after the kernel said `EIO`).
    pub fn gso_enabled(&self) -> bool {
        self.gso.get()
    }

    /// Turns on UDP GRO on the receive socket: the kernel hands over runs of
    /// datagrams of one flow in one read (see [`gso::recv`]).
    pub fn enable_gro(&self) -> io::Result<()> {
        gso::enable_gro(&self.rx)
    }

    pub fn source_ports(&self) -> Vec<u16> {
        self.tx
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn udp_opt(s: &UdpSocket, opt: libc::c_int) -> libc::c_int {
        int_opt(s, libc::IPPROTO_UDP, opt)
    }

    fn int_opt(s: &UdpSocket, level: libc::c_int, opt: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int option into a live int of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                level,
                opt,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    /// Over IPv6 the receive socket is IPv6-only (IPv4 on the same port stays
    /// free) and takes zero-checksum datagrams; the send sockets keep their
    /// checksums; datagrams leave from the bound IPv6 address.
    #[test]
    fn an_ipv6_underlay_binds_ipv6_only_and_keeps_checksums() {
        let lo: IpAddr = "::1".parse().unwrap();
        let sink = UdpSocket::bind((lo, 0)).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let u = Underlay {
            port: sink.local_addr().unwrap().port(),
            ..Underlay::bind(lo, 0, 4).unwrap()
        };
        let rx = u.rx.local_addr().unwrap();
        assert_eq!(rx.ip(), IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        UdpSocket::bind(("0.0.0.0", rx.port())).expect("IPv4 on the port is left free");
        assert_eq!(udp_opt(&u.rx, UDP_NO_CHECK6_RX), 1);
        for s in &u.tx {
            assert_eq!(udp_opt(s, UDP_NO_CHECK6_TX), 0);
        }
        u.send(7, lo, b"vxlan").unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = sink.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from.ip()), (&b"vxlan"[..], lo));
        // a run of three leaves in one GSO send and arrives as three datagrams
        let run = [[1u8; 100], [2; 100], [3; 100]].concat();
        assert_eq!(u.send_gso(7, lo, &run, 100).unwrap(), 3);
        let mut big = [0u8; 256];
        for i in 1..=3u8 {
            let (n, _) = sink.recv_from(&mut big).unwrap();
            assert_eq!((n, big[0]), (100, i));
        }
        assert!(u.gso_enabled());
    }

    /// Probes leave from their own socket, which sets DF and ignores learnt
    /// path MTUs (the netns doctor test sees them lost on a narrower path).
    #[test]
    fn probes_leave_from_a_socket_that_probes_the_path() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let sink = UdpSocket::bind((lo, 0)).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let u = Underlay {
            port: sink.local_addr().unwrap().port(),
            ..Underlay::bind(lo, 0, 1).unwrap()
        };
        u.send_probe(lo, &[1u8; 1400]).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(sink.recv_from(&mut buf).unwrap().0, 1400);
        let pmtud = int_opt(&u.probe, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER);
        assert_eq!(pmtud, libc::IP_PMTUDISC_PROBE);
        let (rcv, snd) = u.buffers().unwrap();
        assert!(rcv > 0 && snd > 0);
    }

    /// An IPv4 underlay's sockets are as before: the family of the address.
    #[test]
    fn an_ipv4_underlay_binds_ipv4() {
        let u = Underlay::bind("127.0.0.1".parse().unwrap(), 0, 1).unwrap();
        assert!(u.rx.local_addr().unwrap().is_ipv4());
        assert!(u.tx[0].local_addr().unwrap().is_ipv4());
    }

    /// What a full receive queue drops is told with the next datagram read
    /// (`SO_RXQ_OVFL`), so the worker can count it.
    #[test]
    fn a_full_receive_queue_tells_how_many_it_dropped() {
        let rx = bind_udp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        // the smallest queue the kernel allows: a few datagrams
        set_int_opt(&rx, libc::SOL_SOCKET, libc::SO_RCVBUF, 1).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[7u8; 1000], rx.local_addr().unwrap()).unwrap();
        }
        rx.set_nonblocking(true).unwrap();
        let mut bufs = vec![vec![0u8; 2048]; gso::BATCH];
        let mut meta = [gso::RecvMeta::default(); gso::BATCH];
        let mut read = 0;
        while let Ok(n) = gso::recv_many(&rx, &mut bufs, &mut meta) {
            read += n;
        }
        assert!(read > 0 && read < 200, "{read} read");
        // a datagram carries the count as it stood when it was queued: the
        // next one tells of every drop before it
        tx.send_to(&[8u8; 10], rx.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(gso::recv_many(&rx, &mut bufs, &mut meta).unwrap(), 1);
        let dropped = meta[0].dropped as usize;
        assert_eq!(read + dropped, 200, "{read} read, {dropped} dropped");
    }

    /// Every underlay socket asks for [`SOCKET_BUFFER`] each way: as root it
    /// gets it (the kernel reports double, its bookkeeping share included),
    /// past the 208 KiB default that one TCP stream's GRO runs overflowed.
    #[test]
    fn underlay_sockets_get_large_buffers() {
        let u = Underlay::bind("127.0.0.1".parse().unwrap(), 0, 2).unwrap();
        let get = |s: &UdpSocket, opt| int_opt(s, libc::SOL_SOCKET, opt) as usize;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // without the right to force it, the sysctl's maximum is what it gets
        let cap = |sysctl: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{sysctl}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|_| !root)
                .map_or(SOCKET_BUFFER, |m| m.min(SOCKET_BUFFER))
        };
        for s in std::iter::once(&u.rx).chain(&u.tx) {
            for (opt, sysctl) in [(libc::SO_RCVBUF, "rmem_max"), (libc::SO_SNDBUF, "wmem_max")] {
                let got = get(s, opt);
                assert!(got >= 2 * cap(sysctl), "option {opt}: {got} bytes");
            }
        }
    }

    /// Flows go out from different source ports, each flow always from the same one,
    /// and from the bound address (loopback here, so the test needs no namespace).
    #[test]
    fn source_port_follows_the_flow_hash() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let sink = UdpSocket::bind((lo, 0)).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let port = sink.local_addr().unwrap().port();
        // receive on any free port; send to the sink's
        let u = Underlay {
            port,
            ..Underlay::bind(lo, 0, 8).unwrap()
        };
        let mut seen = std::collections::BTreeMap::new();
        let mut buf = [0u8; 16];
        for hash in [1u32, 2, 3, 9, 1, 2, 3, 9] {
            u.send(hash, lo, &hash.to_be_bytes()).unwrap();
            let (n, from) = sink.recv_from(&mut buf).unwrap();
            assert_eq!(n, 4);
            assert_eq!(from.ip(), lo);
            let prev = seen.insert(hash, from.port());
            assert!(
                prev.is_none() || prev == Some(from.port()),
                "flow {hash} changed source port"
            );
        }
        let ports: std::collections::BTreeSet<u16> = seen.values().copied().collect();
        assert_eq!(
            ports.len(),
            3,
            "hashes 1 and 9 share a socket of 8, the rest differ: {seen:?}"
        );
    }
}
