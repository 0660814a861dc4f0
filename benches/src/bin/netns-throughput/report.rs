//! The summary: per setup and test the median and range of every figure and
//! of the per-run ratios, printed as tables and written as JSON and an SVG chart.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use vxmesh_benches::{ratio, BarChart, BenchArgs, Series, Spread};

use crate::measure::{Sample, TESTS};
use crate::setups::{Setup, ENCRYPTED, KERNEL, WIREGUARD_GO};

/// Per-run values of `f` over the runs of `key`'s `test`, and their spread.
fn figure(
    samples: &BTreeMap<(&str, &str), Vec<Sample>>,
    key: &str,
    test: &str,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Value {
    let v: Vec<f64> = samples
        .get(&(key, test))
        .map(|v| v.iter().filter_map(&f).collect())
        .unwrap_or_default();
    Spread::json(Spread::of(&v), &v)
}

/// Per-run ratios of `f` between `key` and `base` (both measured in the same
/// run), and their spread.
fn ratio_figure(
    samples: &BTreeMap<(&str, &str), Vec<Sample>>,
    key: &str,
    base: &str,
    test: &str,
    f: impl Fn(&Sample) -> Option<f64>,
) -> Value {
    let (Some(a), Some(b)) = (samples.get(&(key, test)), samples.get(&(base, test))) else {
        return Value::Null;
    };
    let v: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| ratio(f(x)?, f(y)?))
        .collect();
    Spread::json(Spread::of(&v), &v)
}

/// The JSON the harness writes, and prints from.
pub fn report(
    a: &BenchArgs,
    env: Value,
    setups: &[Setup],
    samples: &BTreeMap<(&str, &str), Vec<Sample>>,
) -> Value {
    let gbps = |s: &Sample| Some(s.gbps);
    let cpu = |s: &Sample| s.cpu_per_gb;
    let rows: Vec<Value> = setups
        .iter()
        .map(|s| {
            let mut row = json!({ "setup": s.label, "key": s.key });
            for (test, _) in TESTS {
                let mut t = json!({
                    "gbps": figure(samples, s.key, test, gbps),
                    "ratio_to_kernel": ratio_figure(samples, s.key, KERNEL, test, gbps),
                    "cpu_s": figure(samples, s.key, test, |m| Some(m.cpu_secs)),
                    "cpu_s_per_gb": figure(samples, s.key, test, cpu),
                    "machine_busy": figure(samples, s.key, test, |m| m.busy),
                    "agents_cpu_s_per_gb": figure(samples, s.key, test, |m| m.agents_per_gb),
                    "cpu_ratio_to_kernel": ratio_figure(samples, s.key, KERNEL, test, cpu),
                });
                if s.key == ENCRYPTED {
                    t["cpu_ratio_to_wireguard_go"] =
                        ratio_figure(samples, s.key, WIREGUARD_GO, test, cpu);
                }
                row[test] = t;
            }
            row
        })
        .collect();
    let mut out = env;
    out["runs"] = json!(a.runs);
    out["secs"] = json!(a.secs);
    out["cpu_s_per_gb_definition"] = json!(
        "CPU-seconds of the whole machine (user+nice+system+irq+softirq from /proc/stat, \
         all cores) during the iperf3 measurement, per 1e9 bytes the receiver got"
    );
    out["results"] = json!(rows);
    out
}

/// `median [min-max]` of a figure, or `-` when it was not measured.
fn show(v: &Value, prec: usize) -> String {
    match (v["median"].as_f64(), v["min"].as_f64(), v["max"].as_f64()) {
        (Some(median), Some(min), Some(max)) => Spread { median, min, max }.show(prec),
        _ => "-".into(),
    }
}

pub fn print_report(v: &Value) {
    println!(
        "\ncommit {}, {}, kernel {}, {} CPUs ({}), {} workers per agent{}",
        v["commit"].as_str().unwrap_or(""),
        v["date"].as_str().unwrap_or(""),
        v["kernel"].as_str().unwrap_or(""),
        v["machine"]["nproc"],
        v["machine"]["cpu_model"].as_str().unwrap_or(""),
        v["workers"],
        if v["workers_default"] == true {
            " (the agents' default: one per core)"
        } else {
            ""
        }
    );
    println!(
        "{} runs of {} s, setups alternated run by run; every figure is median [min-max] \
         over the runs; ratios are taken within each run, then the median and range of \
         those; CPU-s/GB: CPU-seconds of the whole machine (user+nice+system+irq+softirq) \
         per 1e9 bytes received; machine busy: that time's share of all the cores' time \
         (near 1.00, the machine was saturated and CPU-s/GB only mirrors Gbit/s); agents \
         CPU-s/GB: what the vxmesh agents' processes alone spent (user+system), which a busy \
         machine does not blur",
        v["runs"], v["secs"]
    );
    let rows = v["results"].as_array().cloned().unwrap_or_default();
    for (test, name) in TESTS {
        println!(
            "\n{name}\n{:<28} {:>20} {:>18} {:>20} {:>18} {:>18} {:>18} {:>18}",
            "",
            "Gbit/s",
            "x kernel VXLAN",
            "CPU-s/GB",
            "CPU x kernel VXLAN",
            "CPU x wireguard-go",
            "machine busy",
            "agents CPU-s/GB"
        );
        for r in &rows {
            let t = &r[test];
            println!(
                "{:<28} {:>20} {:>18} {:>20} {:>18} {:>18} {:>18} {:>18}",
                r["setup"].as_str().unwrap_or(""),
                show(&t["gbps"], 2),
                show(&t["ratio_to_kernel"], 2),
                show(&t["cpu_s_per_gb"], 2),
                show(&t["cpu_ratio_to_kernel"], 2),
                show(&t["cpu_ratio_to_wireguard_go"], 2),
                show(&t["machine_busy"], 2),
                show(&t["agents_cpu_s_per_gb"], 2),
            );
        }
    }
}

/// A grouped bar chart: one group per test, one bar per setup (median, with
/// the runs' range as a whisker), labelled with its median ratio to the
/// kernel's VXLAN.
pub fn svg(v: &Value) -> String {
    let rows = v["results"].as_array().cloned().unwrap_or_default();
    let num = |x: &Value| x.as_f64().unwrap_or(0.0);
    BarChart {
        title: format!(
            "Throughput, Gbit/s: median (bar), range of {} runs (line); label: x kernel VXLAN; {}",
            v["runs"],
            v["commit"].as_str().unwrap_or("")
        ),
        width: 760.0,
        groups: TESTS.iter().map(|(_, name)| name.to_string()).collect(),
        series: rows
            .iter()
            .map(|r| Series {
                name: r["setup"].as_str().unwrap_or("").to_string(),
                values: TESTS
                    .iter()
                    .map(|(t, _)| num(&r[*t]["gbps"]["median"]))
                    .collect(),
                labels: TESTS
                    .iter()
                    .map(|(t, _)| format!("{:.2}x", num(&r[*t]["ratio_to_kernel"]["median"])))
                    .collect(),
                ranges: TESTS
                    .iter()
                    .map(|(t, _)| (num(&r[*t]["gbps"]["min"]), num(&r[*t]["gbps"]["max"])))
                    .collect(),
            })
            .collect(),
        reference: None,
        targets: Vec::new(),
    }
    .svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(key: &'static str) -> Setup {
        Setup {
            key,
            label: key,
            client: String::new(),
            server: String::new(),
            server_ip: String::new(),
        }
    }

    fn sample(gbps: f64, cpu_per_gb: f64) -> Sample {
        Sample {
            gbps,
            cpu_secs: 1.0,
            cpu_per_gb: Some(cpu_per_gb),
            busy: Some(0.5),
            agents_per_gb: Some(cpu_per_gb / 2.0),
        }
    }

    /// Ratios are taken within each run, then summarised: on a day when the
    /// kernel swings, the ratio of the medians would say something no run saw.
    #[test]
    fn ratios_are_per_run_then_median_and_range() {
        let a = vxmesh_benches::parse_args_from(Vec::new(), "u").unwrap();
        let setups = [setup("a"), setup("b"), setup(KERNEL), setup(WIREGUARD_GO)];
        let mut samples: BTreeMap<(&str, &str), Vec<Sample>> = BTreeMap::new();
        for (test, _) in TESTS {
            // three runs: a fast, a slow and a middling day
            samples.insert(
                ("a", test),
                vec![sample(8.0, 2.0), sample(3.0, 3.0), sample(5.0, 1.0)],
            );
            samples.insert(
                ("b", test),
                vec![sample(4.0, 4.0), sample(2.0, 6.0), sample(3.0, 4.0)],
            );
            samples.insert(
                (KERNEL, test),
                vec![sample(10.0, 1.0), sample(6.0, 2.0), sample(20.0, 0.5)],
            );
            samples.insert(
                (WIREGUARD_GO, test),
                vec![sample(1.0, 8.0), sample(1.0, 12.0), sample(1.0, 2.0)],
            );
        }
        let v = report(&a, json!({ "commit": "x" }), &setups, &samples);
        assert_eq!(v["commit"], "x");
        let rows = v["results"].as_array().unwrap();
        let r = &rows[0]["tcp4"];
        assert_eq!(r["gbps"]["median"], 5.0);
        assert_eq!(
            (r["gbps"]["min"].as_f64(), r["gbps"]["max"].as_f64()),
            (Some(3.0), Some(8.0))
        );
        // per run: 0.8, 0.5, 0.25 (the ratio of medians would be 5/10 = 0.5
        // with a range no run had)
        let q = &r["ratio_to_kernel"];
        assert_eq!(q["runs"], json!([0.8, 0.5, 0.25]));
        assert_eq!(
            (q["median"].as_f64(), q["min"].as_f64(), q["max"].as_f64()),
            (Some(0.5), Some(0.25), Some(0.8))
        );
        // CPU per GB per run: 2, 1.5, 2
        let c = &r["cpu_ratio_to_kernel"];
        assert_eq!(c["runs"], json!([2.0, 1.5, 2.0]));
        assert_eq!(c["median"], 2.0);
        assert!(r.get("cpu_ratio_to_wireguard_go").is_none());
        // the encrypted setup is also set against wireguard-go: 0.5, 0.5, 2
        let w = &rows[1]["udp1400"]["cpu_ratio_to_wireguard_go"];
        assert_eq!(w["runs"], json!([0.5, 0.5, 2.0]));
        assert_eq!(
            (w["median"].as_f64(), w["max"].as_f64()),
            (Some(0.5), Some(2.0))
        );
        assert_eq!(r["machine_busy"]["median"], 0.5);
        // the kernel against itself
        assert_eq!(rows[2]["tcp1"]["ratio_to_kernel"]["median"], 1.0);
        // the chart draws from the same JSON: a bar and a whisker per setup and test
        let svg = svg(&v);
        assert_eq!(svg.matches("<rect").count(), 4 * 3 + 4, "{svg}");
    }

    /// A run where the kernel delivered nothing leaves that run's ratio out
    /// instead of dividing by zero.
    #[test]
    fn a_zero_baseline_drops_that_runs_ratio() {
        let a = vxmesh_benches::parse_args_from(Vec::new(), "u").unwrap();
        let setups = [setup("a"), setup(KERNEL)];
        let mut samples: BTreeMap<(&str, &str), Vec<Sample>> = BTreeMap::new();
        samples.insert(("a", "tcp1"), vec![sample(5.0, 1.0), sample(4.0, 1.0)]);
        samples.insert(
            (KERNEL, "tcp1"),
            vec![
                Sample {
                    gbps: 0.0,
                    cpu_secs: 1.0,
                    cpu_per_gb: None,
                    busy: None,
                    agents_per_gb: None,
                },
                sample(8.0, 0.5),
            ],
        );
        let v = report(&a, json!({}), &setups, &samples);
        let r = &v["results"][0]["tcp1"];
        assert_eq!(r["ratio_to_kernel"]["runs"], json!([0.5]));
        assert_eq!(r["cpu_ratio_to_kernel"]["runs"], json!([2.0]));
        assert_eq!(
            v["results"][1]["tcp1"]["cpu_s_per_gb"]["runs"],
            json!([0.5])
        );
        // tests not measured at all are absent, not zero
        assert!(v["results"][0]["tcp4"]["gbps"].is_null());
    }
}
