//! Health probes: the agent of a task's node connects to the task from inside
//! the task's own network namespace (the node has no route into the overlay), as
//! `docker`'s HEALTHCHECK runs inside the container. The verdict goes to the
//! store, so every node's balancer and DNS follow it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp(u16),
    /// Port and path: a 2xx or 3xx answer is healthy.
    Http(u16, String),
}

impl Probe {
    pub fn parse(s: &str) -> Option<Probe> {
        let (kind, port, path) = crate::state::services::parse_health(s).ok()?;
        Some(if kind == "tcp" {
            Probe::Tcp(port)
        } else {
            Probe::Http(port, path)
        })
    }
}

/// Runs one probe against `ip` from inside the namespace at `netns`, on a thread
/// of its own (entering a namespace changes the calling thread). True: healthy.
pub fn probe(netns: PathBuf, ip: IpAddr, p: Probe, timeout: Duration) -> bool {
    let t = std::thread::spawn(move || -> std::io::Result<bool> {
        let f = std::fs::File::open(&netns)?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let port = match &p {
            Probe::Tcp(port) | Probe::Http(port, _) => *port,
        };
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout)?;
        let Probe::Http(_, path) = p else {
            return Ok(true);
        };
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        write!(
            c,
            "GET {path} HTTP/1.0\r\nHost: {ip}\r\nUser-Agent: vxmesh-health\r\n\r\n"
        )?;
        let mut head = [0u8; 12];
        c.read_exact(&mut head)?;
        // "HTTP/1.x NNN"
        Ok(matches!(head.get(9), Some(b'2') | Some(b'3')))
    });
    matches!(t.join(), Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse() {
        assert_eq!(Probe::parse("tcp:80"), Some(Probe::Tcp(80)));
        assert_eq!(
            Probe::parse("http:8080/healthz"),
            Some(Probe::Http(8080, "/healthz".into()))
        );
        assert_eq!(Probe::parse("udp:1"), None);
    }

    #[test]
    fn tcp_and_http_probes_on_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.0 200 OK\r\n\r\n",
                "HTTP/1.0 503 Unavailable\r\n\r\n",
            ] {
                let (mut c, _) = l.accept().unwrap();
                // read the whole request: closing with unread bytes sends a RST
                let mut req = Vec::new();
                let mut buf = [0u8; 256];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        let me = PathBuf::from("/proc/self/ns/net");
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let t = Duration::from_secs(2);
        assert!(probe(me.clone(), lo, Probe::Http(port, "/".into()), t));
        assert!(
            !probe(me.clone(), lo, Probe::Http(port, "/".into()), t),
            "503 is unhealthy"
        );
        srv.join().unwrap();
        assert!(
            !probe(me, lo, Probe::Tcp(port), t),
            "nothing listens any more"
        );
    }
}
