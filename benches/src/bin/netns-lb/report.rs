//! The summary: per metric the medians of both sides, their ratio against the
//! issue's target, printed as a table and written as JSON and an SVG chart.

use serde_json::{json, Value};
use vxmesh_benches::{median, BarChart, BenchArgs, Series};

use crate::http::{WRK_CONNS, WRK_THREADS};
use crate::measure::Results;
use crate::side::Side;

/// The target for a metric's vxmesh/kernel ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
}
use Target::{AtLeast, AtMost};

struct Metric {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    target: Option<Target>,
}

const fn metric(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    target: Option<Target>,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        target,
    }
}

/// Every metric reported. Bulk through a VIP gets its target when measured:
/// the plain overlay's ratio, less [`BULK_NOISE`].
/// How far below the plain overlay's ratio bulk through a VIP may land and
/// still count as "the balancer costs nothing measurable": 5%, half the ~10%
/// these runs swing by (two medians of the same path differ by that much).
const BULK_NOISE: f64 = 0.95;

#[rustfmt::skip]
const METRICS: [Metric; 14] = [
    metric("vip_close_rps",        "VIP, new connections/s",                "/s",     Some(AtLeast(0.7))),
    metric("vip_keepalive_rps",    "VIP, keep-alive requests/s",            "/s",     Some(AtLeast(0.7))),
    metric("pub_close_rps",        "published port, new connections/s",     "/s",     None),
    metric("pub_keepalive_rps",    "published port, keep-alive requests/s", "/s",     None),
    metric("vip_close_p50_ms",     "VIP, new connections, p50",             "ms",     None),
    metric("vip_close_p99_ms",     "VIP, new connections, p99",             "ms",     Some(AtMost(1.5))),
    metric("vip_keepalive_p50_ms", "VIP, keep-alive, p50",                  "ms",     None),
    metric("vip_keepalive_p99_ms", "VIP, keep-alive, p99",                  "ms",     Some(AtMost(1.5))),
    metric("pub_close_p50_ms",     "published port, new connections, p50",  "ms",     None),
    metric("pub_close_p99_ms",     "published port, new connections, p99",  "ms",     Some(AtMost(1.5))),
    metric("pub_keepalive_p50_ms", "published port, keep-alive, p50",       "ms",     None),
    metric("pub_keepalive_p99_ms", "published port, keep-alive, p99",       "ms",     Some(AtMost(1.5))),
    metric("bulk_vip_gbps",        "bulk TCP through a VIP",                "Gbit/s", None),
    metric("bulk_direct_gbps",     "bulk TCP, plain overlay",               "Gbit/s", None),
];

/// What a whole run measured, for [`report`].
pub struct Run<'a> {
    pub args: &'a BenchArgs,
    pub workers: u16,
    pub flow_logs_ab: bool,
    /// The base setup first, the measured one second.
    pub sides: &'a [Side],
    pub res: &'a Results,
    pub ct_seen: u64,
    pub ct_max: u64,
}

/// Prints the table of medians and ratios (errors on stderr) and returns the
/// JSON the harness writes.
pub fn report(run: &Run) -> Value {
    let Run {
        args: a,
        workers,
        flow_logs_ab,
        sides,
        res,
        ct_seen,
        ct_max,
    } = *run;
    // results go under the base setup's key and the measured one's
    let (bk, vk) = (sides[0].key, sides[1].key);
    // medians, ratios, targets
    let med = |side: &'static str, m: &str| -> f64 {
        let mut v = res.get(&(side, m.to_string())).cloned().unwrap_or_default();
        median(&mut v)
    };
    let run_ratios = |m: &str| -> Vec<f64> {
        let k = res.get(&(bk, m.to_string())).cloned().unwrap_or_default();
        let v = res.get(&(vk, m.to_string())).cloned().unwrap_or_default();
        k.iter().zip(&v).map(|(k, v)| ratio(*v, *k)).collect()
    };
    let bulk_direct_ratio = ratio(med(vk, "bulk_direct_gbps"), med(bk, "bulk_direct_gbps"));
    println!(
        "\nmedians of {} runs of {} s (wrk {WRK_THREADS} {WRK_CONNS}; iperf3 1 TCP stream; \
         {workers} worker(s) per agent)",
        a.runs, a.secs
    );
    println!(
        "{:<44}{:>12}{:>12}{:>16}  target",
        "",
        bk,
        vk,
        format!("{vk}/{bk}")
    );
    let mut metrics = Vec::new();
    for Metric {
        key,
        label,
        unit,
        target,
    } in METRICS
    {
        let (kv, vv) = (med(bk, key), med(vk, key));
        let r = ratio(vv, kv);
        // the targets are against the kernel
        let target = if flow_logs_ab {
            None
        } else if key == "bulk_vip_gbps" {
            Some(AtLeast(bulk_direct_ratio * BULK_NOISE))
        } else {
            target
        };
        let (tdesc, met) = match target {
            Some(AtLeast(x)) => (format!(">= {x:.2}x"), Some(r >= x)),
            Some(AtMost(x)) => (format!("<= {x:.2}x"), Some(r <= x)),
            None => (String::new(), None),
        };
        let verdict = match met {
            Some(true) => " met",
            Some(false) => " MISSED",
            None => "",
        };
        let (prec, name) = if unit == "/s" {
            (0, label.to_string())
        } else {
            (3, format!("{label} ({unit})"))
        };
        println!("{name:<44}{kv:>12.prec$}{vv:>12.prec$}{r:>15.2}x  {tdesc}{verdict}");
        let raw = |side: &'static str| {
            res.get(&(side, key.to_string()))
                .cloned()
                .unwrap_or_default()
        };
        metrics.push(json!({
            "key": key, "label": label, "unit": unit,
            bk: { "median": kv, "runs": raw(bk) },
            vk: { "median": vv, "runs": raw(vk) },
            "ratio": r, "run_ratios": run_ratios(key),
            "target": tdesc, "met": met,
        }));
    }
    let vip_over_direct =
        |side: &'static str| ratio(med(side, "bulk_vip_gbps"), med(side, "bulk_direct_gbps"));
    println!(
        "{:<44}{:>12.2}{:>12.2}",
        "bulk TCP, through a VIP / plain overlay",
        vip_over_direct(bk),
        vip_over_direct(vk)
    );
    let mut errors = serde_json::Map::new();
    for (side, m) in res.keys().filter(|(_, m)| m.ends_with("_errors")) {
        let total: f64 = res[&(*side, m.clone())].iter().sum();
        if total > 0.0 {
            eprintln!("netns-lb: {side} {m}: {total} in all runs");
        }
        errors.insert(format!("{side}.{m}"), json!(total));
    }
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let out = json!({
        "runs": a.runs,
        "secs": a.secs,
        "workers_per_agent": workers,
        "machine": { "kernel": kernel_release, "cpus": cpus },
        "wrk": format!("wrk {WRK_THREADS} {WRK_CONNS} --latency"),
        "setups": { bk: sides[0].label, vk: sides[1].label },
        "compared": format!("{} / {}", sides[1].label, sides[0].label),
        "metrics": metrics,
        "bulk_vip_over_direct": {
            bk: vip_over_direct(bk), vk: vip_over_direct(vk),
        },
        "errors": errors,
        "kernel_conntrack": { "max_entries_seen": ct_seen, "limit": ct_max },
    });
    out
}

/// The chart: vxmesh / kernel per metric (the kernel is the line at 1.0), the
/// issue's targets dashed. p50s are left to the table.
pub fn svg(v: &Value) -> String {
    const SHOWN: [(&str, &str); 10] = [
        ("vip_close_rps", "VIP\nnew conn/s"),
        ("vip_keepalive_rps", "VIP\nkeep-alive req/s"),
        ("pub_close_rps", "published\nnew conn/s"),
        ("pub_keepalive_rps", "published\nkeep-alive req/s"),
        ("vip_close_p99_ms", "VIP p99\nnew conn"),
        ("vip_keepalive_p99_ms", "VIP p99\nkeep-alive"),
        ("pub_close_p99_ms", "published p99\nnew conn"),
        ("pub_keepalive_p99_ms", "published p99\nkeep-alive"),
        ("bulk_vip_gbps", "bulk TCP\nthrough a VIP"),
        ("bulk_direct_gbps", "bulk TCP\nplain overlay"),
    ];
    let metrics = v["metrics"].as_array().cloned().unwrap_or_default();
    let find = |k: &str| {
        metrics
            .iter()
            .find(|m| m["key"] == k)
            .cloned()
            .unwrap_or_default()
    };
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut targets = Vec::new();
    for (k, _) in SHOWN {
        let m = find(k);
        let r = m["ratio"].as_f64().unwrap_or(0.0);
        values.push(r);
        labels.push(format!("{r:.2}x"));
        let t = m["target"].as_str().unwrap_or("");
        targets.push(
            t.trim_start_matches(">= ")
                .trim_start_matches("<= ")
                .trim_end_matches('x')
                .parse::<f64>()
                .ok(),
        );
    }
    BarChart {
        title: format!(
            "{}, median of {} runs: rates higher, p99 lower is better",
            v["compared"]
                .as_str()
                .unwrap_or("vxmesh / kernel (nft DNAT + VXLAN)"),
            v["runs"]
        ),
        width: 1000.0,
        groups: SHOWN.iter().map(|(_, n)| n.to_string()).collect(),
        series: vec![Series {
            name: "vxmesh / kernel".into(),
            values,
            labels,
            ranges: Vec::new(),
        }],
        reference: Some((1.0, "kernel = 1.0".into())),
        targets,
    }
    .svg()
}

/// `v / base`, 0 where the base delivered nothing (the JSON keeps a number).
fn ratio(v: f64, base: f64) -> f64 {
    vxmesh_benches::ratio(v, base).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_bar_per_shown_metric() {
        let metrics: Vec<Value> = METRICS
            .iter()
            .map(|m| json!({ "key": m.key, "ratio": 0.8, "target": ">= 0.70x" }))
            .collect();
        let s = svg(&json!({ "runs": 1, "metrics": metrics }));
        // 10 bars, the legend's two swatches
        assert_eq!(s.matches("<rect").count(), 12, "{s}");
    }
}
