//! iperf3 runs from a namespace, and what their JSON reports say was delivered.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::time::Duration;
use vxmesh_netns_tests::exec_timeout;

/// What one iperf3 run delivered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf3 {
    pub gbps: f64,
    /// Bytes the receiver got: TCP's `sum_received.bytes`; UDP's sent bytes
    /// x (1 - loss), the same goodput as `gbps`.
    pub bytes: f64,
}

/// The iperf3 tests the harnesses run: `tcp1` (one TCP stream), `tcp4` (four),
/// `udp1400` (1400-byte datagrams, unlimited rate; goodput = rate x (1 - loss)).
/// Runs `iperf3 -c target` in `client` for `secs`; returns Gbit/s.
pub fn iperf3_gbps(client: &str, target: &str, test: &str, secs: u32) -> Result<f64> {
    Ok(iperf3_run(client, target, test, secs)?.gbps)
}

/// [`iperf3_gbps`] with the bytes delivered, for a cost per byte.
pub fn iperf3_run(client: &str, target: &str, test: &str, secs: u32) -> Result<Iperf3> {
    let t = secs.to_string();
    let mut a = vec!["iperf3", "-c", target, "-t", t.as_str(), "-J"];
    match test {
        "tcp1" => {}
        "tcp4" => a.extend(["-P", "4"]),
        "udp1400" => a.extend(["-u", "-b", "0", "-l", "1400"]),
        _ => bail!("unknown iperf3 test {test}"),
    }
    let limit = Duration::from_secs(u64::from(secs) + 60);
    let out = exec_timeout(client, &a, limit)?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 output (apt-get install iperf3): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 {test} to {target}: {e}");
    }
    Ok(iperf3_parse(test, &v))
}

/// Reads an iperf3 client's `-J` report of `test`.
pub fn iperf3_parse(test: &str, v: &Value) -> Iperf3 {
    let num = |x: &Value| x.as_f64().unwrap_or(0.0);
    if test == "udp1400" {
        let sum = &v["end"]["sum"];
        let kept = 1.0 - num(&sum["lost_percent"]) / 100.0;
        Iperf3 {
            gbps: num(&sum["bits_per_second"]) * kept / 1e9,
            bytes: num(&sum["bytes"]) * kept,
        }
    } else {
        let sum = &v["end"]["sum_received"];
        Iperf3 {
            gbps: num(&sum["bits_per_second"]) / 1e9,
            bytes: num(&sum["bytes"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_report_gives_goodput_and_bytes() {
        let tcp = serde_json::json!({"end": {
            "sum_sent": {"bytes": 2_000_000_000u64, "bits_per_second": 3.3e9},
            "sum_received": {"bytes": 1_990_000_000u64, "bits_per_second": 3.2e9},
        }});
        let r = iperf3_parse("tcp1", &tcp);
        assert_eq!((r.gbps, r.bytes), (3.2, 1.99e9));
        let udp = serde_json::json!({"end": {"sum": {
            "bytes": 1_000_000_000u64, "bits_per_second": 2e9, "lost_percent": 25.0,
        }}});
        let r = iperf3_parse("udp1400", &udp);
        assert_eq!((r.gbps, r.bytes), (1.5, 7.5e8));
        let r = iperf3_parse("tcp4", &serde_json::json!({}));
        assert_eq!((r.gbps, r.bytes), (0.0, 0.0));
    }
}
