//! Looking at the real agents: their API (one HTTP/1.1 GET over the unix
//! socket, as the CLI does, without a process per poll), their process's
//! memory, CPU and reads, and waiting for a change to reach their dataplane.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A real agent: its API socket and its process.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub socket: String,
    pub pid: i32,
}

impl Agent {
    pub fn get(&self, path: &str) -> Result<Value> {
        let sock = self.socket.strip_prefix("unix:").unwrap_or(&self.socket);
        let mut s =
            UnixStream::connect(sock).with_context(|| format!("cannot reach {}", self.socket))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: vxmesh\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("{path}: no HTTP response"))?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{path}: {}", head.lines().next().unwrap_or(""));
        }
        serde_json::from_str(body).with_context(|| format!("{path}: body is not JSON"))
    }

    /// The backends (real servers) this agent's dataplane balances `vip` over:
    /// the healthy ones (a down node's tasks stay listed, unhealthy).
    pub fn backends(&self, vip: IpAddr) -> Result<Vec<IpAddr>> {
        self.backends_where(vip, true)
    }

    /// Every backend listed for `vip`, healthy or not.
    pub fn listed_backends(&self, vip: IpAddr) -> Result<Vec<IpAddr>> {
        self.backends_where(vip, false)
    }

    fn backends_where(&self, vip: IpAddr, healthy_only: bool) -> Result<Vec<IpAddr>> {
        let rows = self.get(&format!("/v1/lb?vip={vip}"))?;
        let mut out = Vec::new();
        for r in rows.as_array().into_iter().flatten() {
            for b in r["backends"].as_array().into_iter().flatten() {
                if healthy_only && b["healthy"] != Value::Bool(true) {
                    continue;
                }
                if let Some(a) = b["address"].as_str().and_then(|a| a.parse().ok()) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    pub fn proc(&self) -> Result<ProcStat> {
        ProcStat::read(self.pid)
    }

    pub fn follow(&self) -> Result<Value> {
        Ok(self.get("/v1/stats")?["follow"].clone())
    }
}

/// A process's resident memory, CPU time and bytes read so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub rss_kib: u64,
    pub cpu_secs: f64,
    pub rchar: u64,
    pub wchar: u64,
}

impl ProcStat {
    pub fn read(pid: i32) -> Result<ProcStat> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("process {pid} is gone"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // fields after the command's closing parenthesis; utime, stime are 14, 15
        let rest = stat.rsplit_once(')').map_or("", |r| r.1);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let cpu_secs = (ticks(14) + ticks(15)) / vxmesh_benches::ticks_per_sec();
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field = |k: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcStat {
            rss_kib,
            cpu_secs,
            rchar: field("rchar:"),
            wchar: field("wchar:"),
        })
    }
}

/// The process of the vxmesh agent in namespace `ns`.
pub fn agent_pid(ns: &str) -> Result<i32> {
    for pid in vxmesh_netns_tests::pids_in(ns)? {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "vxmesh" {
            return Ok(pid);
        }
    }
    bail!("no vxmesh agent process in {ns}")
}

/// Polls every agent until `done` holds for it; the time from `since` until
/// the last agent got there. Fails after `limit`.
pub fn converge(
    agents: &[Agent],
    since: Instant,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Agent) -> Result<bool>,
) -> Result<Duration> {
    let mut pending: Vec<&Agent> = agents.iter().collect();
    loop {
        crate::check_stop()?;
        let mut still = Vec::new();
        for a in pending {
            if !done(a)? {
                still.push(a);
            }
        }
        if still.is_empty() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            let names: Vec<&str> = still.iter().map(|a| a.name.as_str()).collect();
            bail!("{what}: agents {names:?} did not converge within {limit:?}");
        }
        pending = still;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wall time of one CLI command against `socket` (the median of `runs`),
/// its output's size.
pub fn time_cli(socket: &str, args: &[&str], runs: usize) -> Result<(f64, usize)> {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = std::process::Command::new(vxmesh_netns_tests::vxmesh_bin())
            .args(["-H", socket])
            .args(args)
            .output()?;
        times.push(t0.elapsed().as_secs_f64());
        if !out.status.success() {
            bail!(
                "vxmesh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        size = out.stdout.len();
    }
    Ok((vxmesh_benches::median(&mut times), size))
}

/// p50 and p99 (nearest rank) of `v`, in the same unit.
pub fn percentiles(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    (rank(0.50), rank(0.99))
}

/// A metric's value from etcd's Prometheus text, at its metrics listener.
pub fn etcd_metric(ns: &str, name: &str) -> Result<f64> {
    let name = name.to_string();
    let text = vxmesh_netns_tests::in_netns(ns, move || -> Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 2381))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name.as_str())
                .filter(|r| r.starts_with(' '))
                .and_then(|r| r.trim().parse::<f64>().ok())
        })
        .with_context(|| format!("etcd exports no {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&v), (50.0, 99.0));
        assert_eq!(percentiles(&[3.0]), (3.0, 3.0));
    }
}
