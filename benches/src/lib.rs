//! Benchmarks live in benches/. This library holds what the netns harnesses
//! (`netns-throughput`, `netns-lb`) share: their command line, medians,
//! background servers in namespaces, iperf3, and the SVG bar chart.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::exec_timeout;

/// `[--runs N] [--secs S] [--workers N] [--json FILE] [--svg FILE]`, common to
/// the harnesses.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub runs: usize,
    pub secs: u32,
    /// Each agent's `--workers`; `None`: the harness's default.
    pub workers: Option<u16>,
    pub json: Option<String>,
    pub svg: Option<String>,
}

/// Parses the process's arguments; `--help` prints `usage` and exits.
pub fn parse_args(usage: &str) -> Result<BenchArgs> {
    parse_args_from(std::env::args().skip(1), usage)
}

/// [`parse_args`] over any list of arguments (the program name left out).
pub fn parse_args_from(args: impl IntoIterator<Item = String>, usage: &str) -> Result<BenchArgs> {
    parse_args_from_with(args, usage, 3)
}

/// [`parse_args_from`] with `default_runs` when `--runs` is not given:
/// netns-throughput takes 5, because its published figures must reproduce and
/// 3 runs did not (issue 19).
pub fn parse_args_from_with(
    args: impl IntoIterator<Item = String>,
    usage: &str,
    default_runs: usize,
) -> Result<BenchArgs> {
    let mut a = BenchArgs {
        runs: default_runs,
        secs: 5,
        workers: None,
        json: None,
        svg: None,
    };
    let mut it = args.into_iter();
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--runs" => {
                let s = v()?;
                a.runs = s
                    .parse()
                    .with_context(|| format!("--runs {s}: not a number"))?;
            }
            "--secs" => {
                let s = v()?;
                a.secs = s
                    .parse()
                    .with_context(|| format!("--secs {s}: not a number"))?;
            }
            "--workers" => {
                let s = v()?;
                a.workers = Some(
                    s.parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .with_context(|| format!("--workers {s}: not a number from 1"))?,
                );
            }
            "--json" => a.json = Some(v()?),
            "--svg" => a.svg = Some(v()?),
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {k} (try --help)"),
        }
    }
    if a.runs == 0 || a.secs == 0 {
        bail!("--runs and --secs must be at least 1");
    }
    Ok(a)
}

/// Worker threads per agent when `nodes` agents share this machine: its cores
/// divided among them (at least one). An agent's own default is one per core,
/// right for a node that has the machine to itself; two agents on two cores
/// would each start two, four forwarders on two cores beside the workload.
pub fn workers_per_node(nodes: usize) -> u16 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u16::try_from((cores / nodes.max(1)).max(1)).unwrap_or(u16::MAX)
}

/// The median (the upper one of an even count); 0 for none.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The median and the range of a set of runs: a figure quoted with its range
/// says how far a rerun may land from it, which a single median does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values: a figure that was not measured stays absent
    /// rather than reading as 0. NaN values are left out.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        let m = median(&mut v);
        Some(Spread {
            median: m,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// `median [min-max]` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} [{:.p$}-{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }

    /// `{"median", "min", "max", "runs"}`; the runs in measurement order.
    pub fn json(spread: Option<Spread>, runs: &[f64]) -> Value {
        match spread {
            Some(s) => serde_json::json!({
                "median": s.median, "min": s.min, "max": s.max, "runs": runs,
            }),
            None => Value::Null,
        }
    }
}

/// CPU time the whole machine spent, in clock ticks, from `/proc/stat`'s
/// aggregate `cpu` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq: the work a packet path costs,
    /// in processes and in the kernel's interrupt and softirq context. Idle,
    /// iowait and steal are not work done here; guest time is already
    /// counted in user and nice.
    pub busy: u64,
    /// busy + idle + iowait + steal: every tick of every core, so that
    /// busy / total says how loaded the machine was. At 100% the CPU cost per
    /// gigabyte only mirrors the throughput (every setup used all it could).
    pub total: u64,
}

/// Parses `/proc/stat`'s text: its first line, `cpu  user nice system idle
/// iowait irq softirq steal ...` (clock ticks summed over all cores).
pub fn parse_proc_stat(text: &str) -> Result<CpuTicks> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))
        .context("/proc/stat has no aggregate cpu line")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("/proc/stat cpu line is not numbers: {line}"))?;
    if f.len() < 7 {
        bail!(
            "/proc/stat cpu line has {} fields, expected at least 7: {line}",
            f.len()
        );
    }
    Ok(CpuTicks {
        busy: f[0] + f[1] + f[2] + f[5] + f[6],
        total: f.iter().take(8).sum(),
    })
}

/// The machine's [`CpuTicks`] now.
pub fn cpu_ticks() -> Result<CpuTicks> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_proc_stat(&text)
}

/// User and system ticks of every process named `comm` (summed over their
/// threads, as `/proc/PID/stat` counts them). Beside the whole machine's
/// figure, which a busy machine blurs, this is what the agents themselves
/// spent, whatever else ran.
pub fn process_ticks(comm: &str) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir("/proc")
        .context("cannot read /proc")?
        .flatten()
    {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        // a process may end between the listing and the read
        if let Ok(text) = std::fs::read_to_string(e.path().join("stat")) {
            total += parse_pid_stat(&text, comm).unwrap_or(0);
        }
    }
    Ok(total)
}

/// utime + stime of one `/proc/PID/stat` line when its name is `comm`.
fn parse_pid_stat(text: &str, comm: &str) -> Option<u64> {
    let (head, rest) = text.rsplit_once(')')?;
    if head.split_once('(')?.1 != comm {
        return None;
    }
    // fields from the third (state); utime and stime are the 14th and 15th
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on Linux).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if n > 0 {
        n as f64
    } else {
        100.0
    }
}

/// CPU-seconds per gigabyte (1e9 bytes) delivered; `None` when nothing was.
pub fn cpu_secs_per_gb(cpu_secs: f64, bytes: f64) -> Option<f64> {
    (bytes > 0.0).then(|| cpu_secs / (bytes / 1e9))
}

/// `a / b`, `None` when `b` is not positive (a setup that delivered nothing).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// The first `model name` of `/proc/cpuinfo`'s text (x86; other machines
/// name it otherwise, and get `None`).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// A server running in a namespace (`ip netns exec NS ...`), stopped with
/// SIGTERM (then SIGKILL after a grace period) and reaped when dropped.
pub struct Bg {
    child: Child,
    what: String,
}

impl Bg {
    /// Starts `args` in `ns`, its output thrown away, or appended to `log`.
    pub fn spawn(ns: &str, args: &[&str], log: Option<&std::path::Path>) -> Result<Bg> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd.stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open {}", p.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let what = format!("{} in {ns}", args.join(" "));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Bg { child, what })
    }

    /// Fails if the server has already exited (it could not bind, say).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.what);
        }
        Ok(())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// One series of bars: one value (and the text printed above its bar) per group.
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
    pub labels: Vec<String>,
    /// Per group, the (min, max) of the runs, drawn as a whisker over the bar;
    /// empty for none.
    pub ranges: Vec<(f64, f64)>,
}

/// A grouped bar chart: one group of bars per entry of `groups` (a `\n` in a
/// group's name breaks it in two lines), one bar per series in each.
pub struct BarChart {
    pub title: String,
    pub width: f64,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
    /// A line across the whole plot (value, label): the baseline of a ratio chart.
    pub reference: Option<(f64, String)>,
    /// Per group, a dashed line over its bars at the target value.
    pub targets: Vec<Option<f64>>,
}

const COLORS: [&str; 4] = ["#2b6cb0", "#805ad5", "#718096", "#dd6b20"];

impl BarChart {
    pub fn svg(&self) -> String {
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied().chain(s.ranges.iter().map(|r| r.1)))
            .chain(self.reference.iter().map(|r| r.0))
            .chain(self.targets.iter().flatten().copied())
            .fold(1.0f64, f64::max);
        let (w, h, left, top, bottom) = (self.width, 360.0, 50.0, 40.0, 70.0);
        let plot_h = h - top - bottom;
        let group_w = (w - left - 20.0) / self.groups.len().max(1) as f64;
        let bar_w = group_w / (self.series.len() as f64 + 1.0);
        let y_of = |val: f64| top + plot_h - plot_h * val / max;
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>
"#,
            self.title
        );
        for i in 0..=4 {
            let val = max * i as f64 / 4.0;
            let y = top + plot_h - plot_h * i as f64 / 4.0;
            s += &format!(
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e8f0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{val:.1}</text>
"##,
                w - 20.0,
                left - 6.0,
                y + 4.0
            );
        }
        for (g, name) in self.groups.iter().enumerate() {
            let gx = left + group_w * g as f64;
            for (i, ser) in self.series.iter().enumerate() {
                let val = ser.values.get(g).copied().unwrap_or(0.0);
                let label = ser.labels.get(g).map(String::as_str).unwrap_or("");
                let bh = plot_h * val / max;
                let x = gx + bar_w * (i as f64 + 0.5);
                let y = top + plot_h - bh;
                // the label sits above the whisker, if one reaches higher
                let label_y = ser.ranges.get(g).map_or(y, |r| y.min(y_of(r.1))) - 3.0;
                s += &format!(
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{label}</text>
"#,
                    bar_w * 0.9,
                    COLORS[i % COLORS.len()],
                    x + bar_w * 0.45,
                    label_y
                );
                if let Some((lo, hi)) = ser.ranges.get(g) {
                    let cx = x + bar_w * 0.45;
                    s += &format!(
                        r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#1a202c" stroke-width="1"/>
"##,
                        y_of(*lo),
                        y_of(*hi)
                    );
                }
            }
            if let Some(Some(t)) = self.targets.get(g) {
                let y = y_of(*t);
                s += &format!(
                    r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c53030" stroke-width="2" stroke-dasharray="4 3"/>
"##,
                    gx + bar_w * 0.3,
                    gx + group_w - bar_w * 0.3
                );
            }
            let (cx, ty) = (gx + group_w / 2.0, top + plot_h + 18.0);
            if name.contains('\n') {
                s += &format!(r#"<text x="{cx:.1}" y="{ty:.1}" text-anchor="middle">"#);
                for (k, line) in name.split('\n').enumerate() {
                    let dy = if k == 0 { "0" } else { "1.2em" };
                    s += &format!(r#"<tspan x="{cx:.1}" dy="{dy}">{line}</tspan>"#);
                }
                s += "</text>\n";
            } else {
                s += &format!(
                    r#"<text x="{cx:.1}" y="{ty:.1}" text-anchor="middle">{name}</text>
"#
                );
            }
        }
        if let Some((val, label)) = &self.reference {
            let y = y_of(*val);
            s += &format!(
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#1a202c" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="10">{label}</text>
"##,
                w - 20.0,
                w - 20.0,
                y - 4.0
            );
        }
        let mut legend: Vec<(String, String)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, ser)| (COLORS[i % COLORS.len()].to_string(), ser.name.clone()))
            .collect();
        if self.targets.iter().any(Option::is_some) {
            legend.push(("#c53030".into(), "target".into()));
        }
        for (i, (color, name)) in legend.iter().enumerate() {
            let x = left + 180.0 * (i % 4) as f64;
            let y = h - 22.0;
            s += &format!(
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{y:.1}">{name}</text>
"#,
                y - 10.0,
                x + 16.0,
            );
        }
        s + "</svg>\n"
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_processes_ticks_are_read_from_its_stat_line() {
        // a name with a space and a parenthesis, as comm may have
        let line =
            "4242 (vxmesh) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 567 0 0 20 0 5 0 100 0 0";
        assert_eq!(parse_pid_stat(line, "vxmesh"), Some(1234 + 567));
        assert_eq!(parse_pid_stat(line, "iperf3"), None);
        let odd = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0";
        assert_eq!(parse_pid_stat(odd, "a) b"), Some(30));
        assert!(process_ticks("no-such-process-name").unwrap() == 0);
    }
    use super::*;

    fn args(v: &[&str]) -> Result<BenchArgs> {
        parse_args_from(v.iter().map(|s| s.to_string()), "usage")
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_errors() {
        let a = args(&["--runs", "5", "--secs", "2", "--json", "x.json"]).unwrap();
        assert_eq!((a.runs, a.secs, a.json.as_deref()), (5, 2, Some("x.json")));
        assert!(args(&["--runs"]).is_err());
        assert!(args(&["--runs", "many"]).is_err());
        assert!(args(&["--secs", "0"]).is_err());
        assert!(args(&["--frobnicate"]).is_err());
        assert_eq!(args(&["--workers", "2"]).unwrap().workers, Some(2));
        assert!(args(&["--workers", "0"]).is_err());
    }

    #[test]
    fn median_of_none_one_and_many() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn chart_draws_every_bar_target_and_line() {
        let c = BarChart {
            title: "t".into(),
            width: 600.0,
            groups: vec!["a".into(), "b\nc".into()],
            series: vec![Series {
                name: "s".into(),
                values: vec![0.5, 2.0],
                labels: vec!["0.50x".into(), "2.00x".into()],
                ranges: vec![(0.4, 0.6), (1.5, 2.5)],
            }],
            reference: Some((1.0, "kernel".into())),
            targets: vec![Some(0.7), None],
        };
        let svg = c.svg();
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 1, "{svg}");
        assert!(svg.contains("stroke-dasharray") && svg.contains("<tspan"));
        assert!(svg.ends_with("</svg>\n"));
        // the top gridline is the highest whisker, not the highest bar
        assert!(svg.contains(">2.5</text>"), "{svg}");
        // 5 gridlines, 2 whiskers, the target, the reference
        assert_eq!(svg.matches("<line").count(), 5 + 2 + 1 + 1, "{svg}");
    }

    #[test]
    fn default_runs_is_the_callers_and_runs_overrides_it() {
        let no_args: [String; 0] = [];
        assert_eq!(parse_args_from_with(no_args, "u", 5).unwrap().runs, 5);
        let a = parse_args_from_with(["--runs".to_string(), "1".to_string()], "u", 5);
        assert_eq!(a.unwrap().runs, 1);
        assert_eq!(args(&[]).unwrap().runs, 3);
    }

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let s = Spread::of(&[4.0, 1.0, 9.0, 3.0, 5.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (4.0, 1.0, 9.0));
        // an even count: the upper median, as `median` takes it
        let s = Spread::of(&[2.0, 1.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 2.0));
        let s = Spread::of(&[0.5, f64::NAN, 0.7, 0.6]).unwrap();
        assert_eq!((s.median, s.min, s.max), (0.6, 0.5, 0.7));
        assert_eq!(s.show(2), "0.60 [0.50-0.70]");
        let j = Spread::json(Some(s), &[0.5, 0.7, 0.6]);
        assert_eq!(j["median"], 0.6);
        assert_eq!(j["min"], 0.5);
        assert_eq!(j["max"], 0.7);
        assert_eq!(j["runs"][1], 0.7);
        assert!(Spread::json(None, &[]).is_null());
    }

    #[test]
    fn proc_stat_busy_is_user_nice_system_irq_softirq() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let text = "cpu  100 20 30 5000 400 6 7 800 50 0\n\
                    cpu0 50 10 15 2500 200 3 3 400 25 0\n\
                    intr 12345 0 0\n";
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(t.busy, 100 + 20 + 30 + 6 + 7);
        // guest time is inside user and nice already: not counted twice
        assert_eq!(t.total, 100 + 20 + 30 + 5000 + 400 + 6 + 7 + 800);
        // older kernels print fewer fields after softirq
        let t = parse_proc_stat("cpu 1 2 3 4 5 6 7\n").unwrap();
        assert_eq!((t.busy, t.total), (19, 28));
        assert!(parse_proc_stat("cpu0 1 2 3 4 5 6 7\n").is_err());
        assert!(parse_proc_stat("cpu 1 2 3 4 5 6\n").is_err());
        assert!(parse_proc_stat("cpu 1 2 x 4 5 6 7\n").is_err());
        assert!(parse_proc_stat("").is_err());
        // this machine's own file parses, and its counter does not run backwards
        let a = cpu_ticks().unwrap();
        let b = cpu_ticks().unwrap();
        assert!(b.busy >= a.busy && b.total >= a.total && a.total >= a.busy);
        assert!(ticks_per_sec() > 0.0);
    }

    #[test]
    fn cpu_per_gigabyte_and_ratios() {
        assert_eq!(cpu_secs_per_gb(3.0, 6e9), Some(0.5));
        assert_eq!(cpu_secs_per_gb(3.0, 0.0), None);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let t = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n\
                 model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz\nprocessor\t: 1\n\
                 model name\t: other\n";
        assert_eq!(
            cpu_model(t).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.80GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

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
