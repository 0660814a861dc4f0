//! HTTP through a VIP or a published port: one GET to see which task answered,
//! waiting until every task does, and wrk's load with what it reports.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use vxmesh_benches::check_stop;
use vxmesh_netns_tests::{exec_timeout, in_netns};

use crate::side::TASKS;

/// wrk's load: one thread, 50 connections, as in the issue.
pub const WRK_THREADS: &str = "-t1";
pub const WRK_CONNS: &str = "-c50";

/// One plain HTTP/1.0 GET from `ns`; returns the body (the task's name).
fn http_get(ns: &str, addr: SocketAddr) -> Result<String> {
    let text = in_netns(ns, move || -> std::io::Result<String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })?
    .with_context(|| format!("GET http://{addr}/ from {ns}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer from {addr}: {text:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{addr} answered {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.trim().to_string())
}

/// Waits (up to 20 s: agents learn state through the store) until requests
/// from `ns` to `addr` reach every task.
pub fn wait_balanced(ns: &str, addr: SocketAddr, what: &str) -> Result<()> {
    let want: BTreeSet<String> = (1..=TASKS).map(|i| format!("t{i}")).collect();
    let end = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        check_stop()?;
        let mut seen = BTreeSet::new();
        for _ in 0..TASKS * 3 {
            match http_get(ns, addr) {
                Ok(name) => {
                    seen.insert(name);
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        if seen == want {
            return Ok(());
        }
        if Instant::now() >= end {
            bail!("{what} ({addr}) reaches tasks {seen:?}, not all {TASKS}; last error: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What one wrk run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors (connect, read, write, timeout) and non-2xx answers.
    pub errors: u64,
}

/// wrk's durations: `812.00us`, `1.83ms`, `2.00s`, `1.00m`, `1.00h`; in ms.
fn wrk_ms(s: &str) -> Result<f64> {
    let i = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("no unit in wrk's {s:?}"))?;
    let v: f64 = s[..i]
        .parse()
        .with_context(|| format!("wrk's {s:?} is not a duration"))?;
    let scale = match &s[i..] {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        u => bail!("unknown unit {u:?} in wrk's {s:?}"),
    };
    Ok(v * scale)
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let (mut rps, mut p50, mut p99, mut requests) = (None, None, None, None);
    let mut errors = 0u64;
    let numbers = |s: &str| -> u64 {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    };
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(
                v.trim()
                    .parse::<f64>()
                    .with_context(|| format!("wrk: {line}"))?,
            );
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(wrk_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(wrk_ms(v.trim())?);
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            errors += numbers(v);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += numbers(v);
        }
    }
    match (rps, p50, p99, requests) {
        (Some(rps), Some(p50_ms), Some(p99_ms), Some(requests)) => Ok(Wrk {
            rps,
            p50_ms,
            p99_ms,
            requests,
            errors,
        }),
        _ => bail!("wrk printed no Requests/sec, 50%/99% latency or request count:\n{out}"),
    }
}

pub fn wrk(ns: &str, addr: SocketAddr, close: bool, secs: u32) -> Result<Wrk> {
    let d = format!("-d{secs}s");
    let url = format!("http://{addr}/");
    let mut a = vec!["wrk", WRK_THREADS, WRK_CONNS, &d, "--latency"];
    if close {
        a.extend(["-H", "Connection: close"]);
    }
    a.push(&url);
    let out = exec_timeout(ns, &a, Duration::from_secs(u64::from(secs) + 60))
        .context("wrk (apt-get install wrk, or scripts/bench-lb.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk {url} from {ns} failed ({}): {} {text}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let w = parse_wrk(&text)?;
    ensure!(
        w.requests > 0 && w.rps > 0.0,
        "wrk got no answer from {url}:\n{text}"
    );
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSE: &str = "Running 3s test @ http://10.72.0.100:80/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.20ms    2.05ms  32.10ms   80.12%
    Req/Sec     7.83k   412.33     8.40k    73.33%
  Latency Distribution
     50%    5.91ms
     75%    7.02ms
     90%    8.55ms
     99%   13.87ms
  23412 requests in 3.00s, 3.39MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 2
Requests/sec:   7801.42
Transfer/sec:      1.13MB
";

    #[test]
    fn wrk_output_parses() {
        let w = parse_wrk(CLOSE).unwrap();
        assert_eq!(
            w,
            Wrk {
                rps: 7801.42,
                p50_ms: 5.91,
                p99_ms: 13.87,
                requests: 23412,
                errors: 17,
            }
        );
    }

    #[test]
    fn wrk_units_and_bad_output() {
        assert!((wrk_ms("812.00us").unwrap() - 0.812).abs() < 1e-9);
        assert_eq!(wrk_ms("2.00s").unwrap(), 2000.0);
        assert_eq!(wrk_ms("1.50m").unwrap(), 90_000.0);
        assert!(wrk_ms("12").is_err());
        assert!(wrk_ms("1.0parsecs").is_err());
        assert!(parse_wrk("unable to connect to 10.0.0.1:80 Connection refused").is_err());
        assert!(parse_wrk(&CLOSE.replace("99%   13.87ms", "99%   13.87xs")).is_err());
    }
}
