//! docs/grafana-dashboard.json queries only what the agent exports: the
//! dashboard is checked as Grafana reads it (panels with unique ids, places on
//! the grid, targets on the `DS_PROMETHEUS` datasource variable, every selector
//! filtered by the `node` variable), then every metric its PromQL names is looked
//! up in a real agent's `/metrics` after traffic through a VIP and over an
//! encrypted network, with counters only under `rate()` and gauges never.

mod common;
#[path = "dashboard/promql.rs"]
mod promql;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use promql::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use vxmesh_netns_tests::*;

const DASHBOARD: &str = include_str!("../../docs/grafana-dashboard.json");
const DATASOURCE: &str = "${DS_PROMETHEUS}";
/// What every selector in a panel carries, so that the `node` variable applies.
const NODE_FILTER: &str = "instance=~\"$node\"";

fn dashboard() -> Result<Value> {
    serde_json::from_str(DASHBOARD).context("docs/grafana-dashboard.json is not JSON")
}

/// Every panel, those in collapsed rows too.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (where, PromQL) of every panel target.
fn panel_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default().to_string();
            out.push((format!("panel {} target {}", p["title"], t["refId"]), expr));
        }
    }
    out
}

/// (name, query) of every query variable.
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = match &v["query"] {
                Value::String(s) => s.clone(),
                q => q["query"].as_str().unwrap_or_default().to_string(),
            };
            (format!("variable {}", v["name"]), q)
        })
        .collect()
}

/// Whether `ds` names the dashboard's datasource variable.
fn on_variable(ds: &Value) -> bool {
    ds["uid"] == DATASOURCE && ds["type"] == "prometheus" || ds == DATASOURCE
}

/// What Grafana needs to import and draw the dashboard, and what makes it
/// follow its variables.
fn check_structure(d: &Value) -> Result<()> {
    ensure!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    ensure!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    ensure!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "uid"
    );
    let vars = d["templating"]["list"]
        .as_array()
        .context("templating.list")?;
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("DS_PROMETHEUS").context("no DS_PROMETHEUS variable")?;
    ensure!(
        ds["type"] == "datasource" && ds["query"] == "prometheus",
        "{ds}"
    );
    let node = var("node").context("no node variable")?;
    ensure!(
        node["type"] == "query" && on_variable(&node["datasource"]),
        "the node variable is not a query on the datasource variable: {node}"
    );
    let nq = &variable_queries(d);
    let (_, q) = nq
        .iter()
        .find(|(w, _)| w == "variable \"node\"")
        .context("node query")?;
    ensure!(
        q.starts_with("label_values(") && q.trim_end().ends_with(", instance)"),
        "the node variable is not the instance label's values: {q}"
    );
    if node["includeAll"] == true {
        ensure!(
            node["allValue"] == ".*",
            "All must be a regex for =~: {node}"
        );
    }

    let all = panels(d);
    ensure!(!all.is_empty(), "no panels");
    let mut ids = BTreeSet::new();
    let mut boxes = Vec::new();
    for p in &all {
        let title = &p["title"];
        let id = p["id"]
            .as_u64()
            .with_context(|| format!("panel {title} has no id"))?;
        ensure!(
            id > 0 && ids.insert(id),
            "panel {title}: id {id} is 0 or taken"
        );
        ensure!(
            p["type"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {title}: type"
        );
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| g[k].as_u64());
        let (Some(h), Some(w), Some(x), Some(y)) = (h, w, x, y) else {
            bail!("panel {title}: gridPos {g}");
        };
        ensure!(
            h > 0 && w > 0 && x + w <= 24,
            "panel {title}: gridPos {g} off the grid"
        );
        boxes.push((title, x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        ensure!(
            on_variable(&p["datasource"]),
            "panel {title}: datasource {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.with_context(|| format!("panel {title}: no targets"))?;
        let mut refs = BTreeSet::new();
        for t in targets {
            ensure!(
                on_variable(&t["datasource"]),
                "panel {title}: target datasource {t}"
            );
            let r = t["refId"]
                .as_str()
                .with_context(|| format!("panel {title}: refId"))?;
            ensure!(refs.insert(r), "panel {title}: refId {r} twice");
            let expr = t["expr"].as_str().filter(|e| !e.trim().is_empty());
            let expr = expr.with_context(|| format!("panel {title}: target {r} has no expr"))?;
            let sels = selectors(expr).with_context(|| format!("panel {title}"))?;
            ensure!(!sels.is_empty(), "panel {title}: {expr} queries no metric");
            for s in sels {
                ensure!(
                    s.matchers.contains(NODE_FILTER),
                    "panel {title}: {} in {expr} is not filtered by {NODE_FILTER}",
                    s.name
                );
            }
        }
    }
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            ensure!(apart, "panels {} and {} overlap", a.0, b.0);
        }
    }
    Ok(())
}

/// Every metric the dashboard queries has samples in `text` (an exposition),
/// counters are only read through rate()/irate()/increase() over a range, and
/// gauges never through a range.
fn check_metrics(d: &Value, text: &str) -> Result<BTreeSet<String>> {
    let samples = exposition(text)?;
    let mut seen = BTreeSet::new();
    for (what, q) in panel_queries(d).into_iter().chain(variable_queries(d)) {
        let sels = if what.starts_with("variable") {
            variable_selectors(&q)
        } else {
            selectors(&q)
        };
        for s in sels.with_context(|| what.clone())? {
            let Some((kind, _)) = samples.get(&s.name) else {
                let hint = if text.contains(&format!("# TYPE {} counter", s.name)) {
                    format!(" (a counter family: its samples are {}_total)", s.name)
                } else {
                    String::new()
                };
                bail!("{what}: {} has no sample in the exposition{hint}", s.name);
            };
            match kind {
                Kind::Counter => ensure!(
                    s.range && COUNTER_FUNCTIONS.contains(&s.func.as_str()),
                    "{what}: counter {} read outside rate()/irate()/increase() over a range: {q}",
                    s.name
                ),
                Kind::Gauge => ensure!(
                    !s.range,
                    "{what}: gauge {} read over a range (in {}()): {q}",
                    s.name,
                    s.func
                ),
            }
            seen.insert(s.name);
        }
    }
    Ok(seen)
}

#[test]
fn dashboard_is_valid_grafana_json_following_its_variables() -> Result<()> {
    check_structure(&dashboard()?)
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() -> Result<()> {
    let d = dashboard()?;
    let mut t = Topology::new("dashboard")?;
    let n1 = t.add_node("n1")?;
    let n2 = t.add_node("n2")?;
    let addr = SocketAddr::new(n1.addr.into(), 9464);
    t.start_agent(&n1, &["--metrics-addr", &addr.to_string()])?;
    t.start_agent(&n2, &[])?;
    // a service on n2 that n1's container reaches through its VIP: backends
    // with health, ejection and connections on n1
    t.cli_ok(&n1, &["network", "create", "m", "--subnet", "10.49.0.0/24"])?;
    let svc = t.cli_json(&n1, &["service", "create", "api", "--network", "m"])?;
    let vip: std::net::IpAddr = svc["vips"]["m"].as_str().context("vip")?.parse()?;
    let (c1, task) = (t.add_container("c1")?, t.add_container("task")?);
    endpoint(&t, &n1, "m", &c1, &[])?;
    let et = endpoint(&t, &n2, "m", &task, &["--service", "api"])?;
    let _server = answer_server(&task, SocketAddr::new(et.ip.parse()?, 8080), false, |_| {
        "hi".to_string()
    })?;
    let answered = settles(&c1, SocketAddr::new(vip, 8080), |r| {
        r.as_deref() == Ok("hi")
    })?;
    assert_eq!(answered.as_deref(), Ok("hi"), "the VIP never answered");
    // an encrypted network between the nodes: WireGuard traffic
    t.cli_ok(
        &n1,
        &[
            "network",
            "create",
            "s",
            "--subnet",
            "10.49.1.0/24",
            "--encrypted",
        ],
    )?;
    let (s1, s2) = (t.add_container("s1")?, t.add_container("s2")?);
    endpoint(&t, &n1, "s", &s1, &[])?;
    let es2 = endpoint(&t, &n2, "s", &s2, &[])?;
    let ok = eventually(Duration::from_secs(10), || ping(&s1, &es2.ip, 1, None))?;
    assert!(ok, "no ping across the encrypted network");

    let response = scrape(&n1.ns, addr)?;
    let (head, text) = response.split_once("\r\n\r\n").context("no HTTP body")?;
    assert!(head.contains(" 200"), "{head}");
    let seen = check_metrics(&d, text).map_err(|e| anyhow::anyhow!("{e:#}\n{text}"))?;
    // the dashboard covers each part the issue names
    for m in [
        "vxmesh_endpoint_rx_bytes_total",
        "vxmesh_network_tx_bytes_total",
        "vxmesh_drops_total",
        "vxmesh_conntrack_entries",
        "vxmesh_conntrack_max",
        "vxmesh_conntrack_setups_total",
        "vxmesh_lb_backend_healthy",
        "vxmesh_lb_backend_ejected",
        "vxmesh_lb_backend_connections",
        "vxmesh_tunnel_handshakes_total",
        "vxmesh_tunnel_rx_datagrams_total",
        "vxmesh_store_reachable",
        "vxmesh_store_invalid_rows",
    ] {
        assert!(
            seen.contains(m),
            "the dashboard does not show {m}: {seen:?}"
        );
    }
    Ok(())
}
