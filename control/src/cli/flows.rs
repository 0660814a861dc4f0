//! `vxmesh flows`: the node's flow records, as a table or JSON, once or as
//! they come (`--follow`).

use super::output::{s, table};
use super::{esc, Format};
use crate::api::client::Client;
use clap::Args;
use hyper::Method;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// Keep printing records as they come (set-ups as `open`, then the whole
    /// connection as `end`), until interrupted
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this network's
    #[arg(long)]
    network: Option<String>,
    /// Only this service's
    #[arg(long)]
    service: Option<String>,
    /// Only records with this verdict: forwarded, drop, reject, audit:drop,
    /// audit:reject, or audit (both)
    #[arg(long)]
    verdict: Option<String>,
    /// The last N records (without --follow)
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

const HEADERS: [&str; 11] = [
    "TIME",
    "EVENT",
    "NETWORK",
    "PROTO",
    "SOURCE",
    "DESTINATION",
    "SERVICE",
    "BACKEND",
    "VERDICT",
    "END/REASON",
    "PKTS/BYTES C>B B>C",
];

fn addr(ip: &Value, port: &Value) -> String {
    match ip.as_str() {
        Some(i) if i.contains(':') => format!("[{i}]:{}", s(port)),
        _ => format!("{}:{}", s(ip), s(port)),
    }
}

fn row(r: &Value) -> Vec<String> {
    let time = s(&r["time"]);
    // the time of day is what a person scans for; the date is in JSON
    let time = time
        .split('T')
        .nth(1)
        .unwrap_or(&time)
        .trim_end_matches('Z');
    let mut verdict = s(&r["verdict"]);
    if !r["policy"].is_null() {
        verdict = format!("{verdict} (policy {})", s(&r["policy"]));
    }
    let backend = match (r["backend"].as_str(), r["nat"].as_str()) {
        (Some(b), Some(n)) => format!("{b} {n}"),
        (None, Some(n)) => n.to_string(),
        _ => "-".into(),
    };
    let end = if r["end"].is_null() {
        s(&r["reason"])
    } else {
        s(&r["end"])
    };
    vec![
        time.to_string(),
        s(&r["event"]),
        s(&r["network"]),
        s(&r["proto"]),
        addr(&r["src"], &r["sport"]),
        addr(&r["dst"], &r["dport"]),
        s(&r["service"]),
        backend,
        verdict,
        end,
        format!(
            "{}/{} {}/{}",
            s(&r["packets"]["client"]),
            s(&r["bytes"]["client"]),
            s(&r["packets"]["backend"]),
            s(&r["bytes"]["backend"])
        ),
    ]
}

pub async fn run(c: &Client, f: Format, a: FlowsArgs) -> anyhow::Result<()> {
    let mut q = vec![format!("limit={}", a.limit)];
    for (k, v) in [
        ("network", &a.network),
        ("service", &a.service),
        ("verdict", &a.verdict),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", esc(v)));
        }
    }
    if !a.follow {
        let v = c
            .call(Method::GET, &format!("/v1/flows?{}", q.join("&")), None)
            .await?;
        if f == Format::Json {
            return super::output::pretty(&v);
        }
        table(
            &HEADERS,
            v.as_array().into_iter().flatten().map(row).collect(),
        );
        return Ok(());
    }
    q.push("follow=1".into());
    if f == Format::Table {
        println!("{}", HEADERS.join("  "));
    }
    c.stream_lines(&format!("/v1/flows?{}", q.join("&")), |line| {
        if line.is_empty() {
            return Ok(());
        }
        if f == Format::Json {
            println!("{line}");
        } else {
            let v: Value = serde_json::from_str(line)?;
            match v["missed"].as_u64() {
                Some(n) => eprintln!("({n} records missed: this reader fell behind)"),
                None => println!("{}", row(&v).join("  ")),
            }
        }
        // a reader piping into `head` stops us by closing its end
        use std::io::Write;
        std::io::stdout().flush()?;
        Ok(())
    })
    .await
}
