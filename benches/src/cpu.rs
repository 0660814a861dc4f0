//! CPU time from /proc: the whole machine's and the agents' own, read around a
//! measurement so a throughput figure comes with what it cost.

use anyhow::{bail, Context, Result};

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

/// The first `model name` of `/proc/cpuinfo`'s text (x86; other machines
/// name it otherwise, and get `None`).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cpu_per_gigabyte() {
        assert_eq!(cpu_secs_per_gb(3.0, 6e9), Some(0.5));
        assert_eq!(cpu_secs_per_gb(3.0, 0.0), None);
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
}
