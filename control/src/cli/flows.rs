//! `vxmesh flows`: the node's flow records, as a table or JSON, once or as
//! they come (`--follow`).

use super::output::{or_dash, table};
use super::{esc, Format};
use crate::api::client::Client;
use crate::api_types::flows::{FlowRecord, FollowLine};
use clap::Args;
use std::net::IpAddr;

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

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(i) => format!("[{i}]:{port}"),
        IpAddr::V4(i) => format!("{i}:{port}"),
    }
}

fn row(r: &FlowRecord) -> Vec<String> {
    // the time of day is what a person scans for; the date is in JSON
    let time = r
        .time
        .split('T')
        .nth(1)
        .unwrap_or(&r.time)
        .trim_end_matches('Z');
    let mut verdict = r.verdict.clone();
    if let Some(p) = &r.policy {
        verdict = format!("{verdict} (policy {p})");
    }
    let backend = match (&r.backend, &r.nat) {
        (Some(b), Some(n)) => format!("{b} {n}"),
        (None, Some(n)) => n.clone(),
        _ => "-".into(),
    };
    let end = or_dash(r.end.as_ref().or(r.reason.as_ref()));
    vec![
        time.to_string(),
        r.event.clone(),
        r.network.clone(),
        r.proto.clone(),
        addr(r.src, r.sport),
        addr(r.dst, r.dport),
        or_dash(r.service.as_ref()),
        backend,
        verdict,
        end,
        format!(
            "{}/{} {}/{}",
            r.packets.client, r.bytes.client, r.packets.backend, r.bytes.backend
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
        let v: Vec<FlowRecord> = c.get(&format!("/v1/flows?{}", q.join("&"))).await?;
        if f == Format::Json {
            return super::output::pretty(&v);
        }
        table(&HEADERS, v.iter().map(row).collect());
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
            match serde_json::from_str(line)? {
                FollowLine::Missed(m) => {
                    eprintln!("({} records missed: this reader fell behind)", m.missed)
                }
                FollowLine::Record(r) => println!("{}", row(&r).join("  ")),
            }
        }
        // a reader piping into `head` stops us by closing its end
        use std::io::Write;
        std::io::stdout().flush()?;
        Ok(())
    })
    .await
}
