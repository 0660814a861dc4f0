//! The command line every harness shares, and how many forwarding threads
//! each agent gets when several share this machine.

use anyhow::{bail, Context, Result};

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

#[cfg(test)]
mod tests {
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
    fn default_runs_is_the_callers_and_runs_overrides_it() {
        let no_args: [String; 0] = [];
        assert_eq!(parse_args_from_with(no_args, "u", 5).unwrap().runs, 5);
        let a = parse_args_from_with(["--runs".to_string(), "1".to_string()], "u", 5);
        assert_eq!(a.unwrap().runs, 1);
        assert_eq!(args(&[]).unwrap().runs, 3);
    }
}
