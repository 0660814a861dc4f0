//! The tests each run makes, and how one is measured on one side.

use anyhow::Result;
use std::collections::BTreeMap;
use vxmesh_benches::iperf3_gbps;
use vxmesh_netns_tests::exec_ok;

use crate::http::wrk;
use crate::side::Side;

/// The tests, in the order each run makes them.
#[derive(Clone, Copy)]
pub enum Test {
    Http { published: bool, close: bool },
    Bulk { vip: bool },
}

const fn http(published: bool, close: bool) -> Test {
    Test::Http { published, close }
}

pub const TESTS: [(&str, Test); 6] = [
    ("vip_close", http(false, true)),
    ("vip_keepalive", http(false, false)),
    ("pub_close", http(true, true)),
    ("pub_keepalive", http(true, false)),
    ("bulk_vip", Test::Bulk { vip: true }),
    ("bulk_direct", Test::Bulk { vip: false }),
];

pub type Results = BTreeMap<(&'static str, String), Vec<f64>>;

/// Runs one test on one side and records its metrics.
pub fn measure(side: &Side, key: &str, test: Test, secs: u32, res: &mut Results) -> Result<String> {
    let mut put = |metric: String, v: f64| res.entry((side.key, metric)).or_default().push(v);
    match test {
        Test::Http { published, close } => {
            let (ns, addr) = if published {
                (&side.outside, side.published)
            } else {
                (&side.client, side.vip)
            };
            let w = wrk(ns, addr, close, secs)?;
            put(format!("{key}_rps"), w.rps);
            put(format!("{key}_p50_ms"), w.p50_ms);
            put(format!("{key}_p99_ms"), w.p99_ms);
            put(format!("{key}_errors"), w.errors as f64);
            let warn = if w.errors * 100 > w.requests {
                format!("  ({} errors of {} requests!)", w.errors, w.requests)
            } else {
                String::new()
            };
            Ok(format!(
                "{:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms{warn}",
                w.rps, w.p50_ms, w.p99_ms
            ))
        }
        Test::Bulk { vip } => {
            let target = if vip { side.bulk_vip } else { side.bulk_ip };
            let g = iperf3_gbps(&side.client, &target.to_string(), "tcp1", secs)?;
            put(format!("{key}_gbps"), g);
            Ok(format!("{g:>10.2} Gbit/s"))
        }
    }
}

/// The conntrack entries the kernel holds for the client's VIP and for node 1's
/// published port (their count is per namespace, their limit global).
pub fn conntrack_count(ns: &str) -> Result<u64> {
    let out = exec_ok(ns, &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
    Ok(out.trim().parse().unwrap_or(0))
}
