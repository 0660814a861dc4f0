//! Health probes: the agent of a task's node connects to the task from inside
//! the task's own network namespace (the node has no route into the overlay), as
//! `docker`'s HEALTHCHECK runs inside the container. The verdict goes to the
//! store, so every node's balancer and DNS follow it.

use super::{attach, Agent};
use crate::state::ClusterState;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
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

impl Agent {
    /// Probes this node's tasks whose service has `--health`, each every
    /// `--health-interval` (default 5 s), and writes verdicts to the store:
    /// unhealthy after 2 failures in a row, healthy after 1 success. Probes
    /// run side by side, one at a time per task and at most
    /// `--health-probes-max` at once (each holds a thread while it waits);
    /// tasks due past that wait for a free slot.
    pub async fn probe_tasks(self: Arc<Self>) {
        let mut last: HashMap<String, std::time::Instant> = HashMap::new();
        let mut fails: HashMap<String, u32> = HashMap::new();
        let mut running: std::collections::HashSet<String> = Default::default();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.health_probes_max));
        // at most one result per running probe waits here
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let st = self.last_state();
            while let Ok((id, ok)) = done.try_recv() {
                running.remove(&id);
                self.record_probe(&st, &id, ok, &mut fails).await;
            }
            last.retain(|id, _| st.endpoints.contains_key(id));
            fails.retain(|id, _| st.endpoints.contains_key(id));
            // a task's ingress interface shares the task's verdict
            for ep in st
                .endpoints
                .values()
                .filter(|e| e.node == self.node && crate::state::ingress::task_of(e).is_none())
            {
                let Some(svc) = ep.service.as_ref().and_then(|s| st.services.get(s)) else {
                    continue;
                };
                let Some(probe) = svc.health.as_deref().and_then(Probe::parse) else {
                    continue;
                };
                let every = Duration::from_millis(svc.health_interval_ms.unwrap_or(5000).max(100));
                if running.contains(&ep.id) || last.get(&ep.id).is_some_and(|t| t.elapsed() < every)
                {
                    continue;
                }
                let Some(ip) = ep.ips.first().copied() else {
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    break; // every slot busy: the rest on a later round
                };
                last.insert(ep.id.clone(), std::time::Instant::now());
                running.insert(ep.id.clone());
                let path = attach::netns_path(&ep.netns);
                let timeout = every.min(Duration::from_secs(2));
                let (id, tx) = (ep.id.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let ok = tokio::task::spawn_blocking(move || {
                        super::health::probe(path, ip, probe, timeout)
                    })
                    .await
                    .unwrap_or(false);
                    drop(slot);
                    let _ = tx.send((id, ok));
                });
            }
        }
    }

    /// Counts one probe's outcome for task `id` and writes its verdict to the
    /// store when it changes.
    async fn record_probe(
        &self,
        st: &ClusterState,
        id: &str,
        ok: bool,
        fails: &mut HashMap<String, u32>,
    ) {
        let Some(ep) = st.endpoints.get(id) else {
            return;
        };
        let n = fails.entry(ep.id.clone()).or_default();
        *n = if ok { 0 } else { *n + 1 };
        let verdict = match (ok, *n) {
            (true, _) => "healthy",
            (false, n) if n >= 2 => "unhealthy",
            _ => return,
        };
        if ep.health.as_deref() == Some(verdict) {
            return;
        }
        let (id, v) = (ep.id.clone(), verdict.to_string());
        let r = self
            .transact(move |st| {
                if let Some(e) = st.endpoints.get_mut(&id) {
                    e.health = Some(v.clone());
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => tracing::info!(endpoint = %ep.id, health = verdict, "task health changed"),
            Err(e) => tracing::warn!(endpoint = %ep.id, error = %e, "cannot record task health"),
        }
    }
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
