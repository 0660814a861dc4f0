//! Just enough of PromQL and of the Prometheus text exposition to say which
//! metrics a query names and which samples an agent serves, and what kind each is.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// A metric selector in a PromQL expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub name: String,
    /// The label matchers as written, without the braces.
    pub matchers: String,
    /// Followed by a range (`[5m]`): a range vector.
    pub range: bool,
    /// The innermost function or aggregation it is an argument of ("" if none).
    pub func: String,
}

/// Words that are PromQL syntax, not metric names, when not called as functions.
const KEYWORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
/// Words followed by a list of label names (in parentheses, except a bare
/// `group_left`), which are not metrics.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Aggregations, which may take `by (...)` or `without (...)` before their
/// parenthesised argument.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
/// The functions a counter belongs under.
pub const COUNTER_FUNCTIONS: [&str; 3] = ["rate", "irate", "increase"];

/// The metric selectors of a PromQL expression, skipping what is not a metric:
/// functions, aggregations and keywords, label names and values, numbers and
/// durations, Grafana variables. A selector without a metric name (`{__name__=..}`)
/// or a subquery is an error: this dashboard uses neither, and the test must
/// not miss a metric.
pub fn selectors(expr: &str) -> Result<Vec<Selector>> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    // the index after the quote closing the string that starts at `i`
    let skip_string = |i: usize| -> Result<usize> {
        let q = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != q {
            j += if b[j] == b'\\' && q != b'`' { 2 } else { 1 };
        }
        ensure!(j < b.len(), "unterminated string in {expr}");
        Ok(j + 1)
    };
    // the index after the `close` matching the `open` at `i`, strings skipped
    let skip_group = |i: usize, close: u8| -> Result<usize> {
        let mut j = i + 1;
        while j < b.len() && b[j] != close {
            j = if matches!(b[j], b'"' | b'\'' | b'`') {
                skip_string(j)?
            } else {
                j + 1
            };
        }
        ensure!(j < b.len(), "unclosed {} in {expr}", b[i] as char);
        Ok(j + 1)
    };
    let mut out = Vec::new();
    let mut calls: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(i)?;
        } else if c == b'(' {
            calls.push(pending.take().unwrap_or_default());
            i += 1;
        } else if c == b')' {
            calls
                .pop()
                .with_context(|| format!("unbalanced ) in {expr}"))?;
            i += 1;
        } else if c == b'{' || c == b'[' {
            bail!("{} not after a metric name at {i} in {expr}", c as char);
        } else if c == b'$' {
            // a Grafana variable: $name or ${name}
            i = if b.get(i + 1) == Some(&b'{') {
                skip_group(i + 1, b'}')?
            } else {
                let mut j = i + 1;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                j
            };
        } else if c.is_ascii_digit() || c == b'.' {
            // a number, or a duration after `offset`
            while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&word) {
                if b.get(next) == Some(&b'(') {
                    i = skip_group(next, b')')?;
                }
            } else if b.get(next) == Some(&b'(') || AGGREGATIONS.contains(&word) {
                pending = Some(word.to_string());
            } else if !KEYWORDS.contains(&word) {
                let mut matchers = String::new();
                let mut j = next;
                if b.get(j) == Some(&b'{') {
                    let end = skip_group(j, b'}')?;
                    matchers = expr[j + 1..end - 1].trim().to_string();
                    j = skip_ws(end);
                }
                let range = b.get(j) == Some(&b'[');
                if range {
                    j = skip_group(j, b']')?;
                    ensure!(b.get(skip_ws(j)) != Some(&b'['), "a subquery in {expr}");
                }
                out.push(Selector {
                    name: word.to_string(),
                    matchers,
                    range,
                    func: calls.last().cloned().unwrap_or_default(),
                });
                i = j;
            }
        } else {
            i += 1;
        }
    }
    ensure!(calls.is_empty(), "unbalanced ( in {expr}");
    Ok(out)
}

/// The selectors of a Prometheus query variable's query: Grafana's
/// `label_values(SELECTOR, LABEL)`, `query_result(EXPR)` or plain PromQL.
pub fn variable_selectors(query: &str) -> Result<Vec<Selector>> {
    let q = query.trim();
    if let Some(inner) = q.strip_prefix("label_values(") {
        let inner = inner.strip_suffix(')').context("label_values( unclosed")?;
        return match inner.rsplit_once(',') {
            Some((sel, label)) => {
                let label = label.trim();
                ensure!(
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                    "label_values's label {label:?} in {q}"
                );
                selectors(sel)
            }
            None => Ok(Vec::new()),
        };
    }
    match q.strip_prefix("query_result(") {
        Some(inner) => selectors(inner.strip_suffix(')').context("query_result( unclosed")?),
        None => selectors(q),
    }
}

/// What a sample is for PromQL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Only goes up (a counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`).
    Counter,
    Gauge,
}

/// The sample names of a text exposition, each with its kind (from its
/// family's `# TYPE` line and the suffix conventions of that type) and how many
/// samples it has. A family with no samples has no sample names.
pub fn exposition(text: &str) -> Result<HashMap<String, (Kind, usize)>> {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut out: HashMap<String, (Kind, usize)> = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, ty) = rest.split_once(' ').context("a TYPE line without a type")?;
            types.insert(family, ty.trim());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
        let kind = types
            .iter()
            .find_map(|(family, ty)| {
                let suffix = name.strip_prefix(family)?;
                match (*ty, suffix) {
                    (_, "_created") => Some(Kind::Gauge),
                    ("counter", "_total") => Some(Kind::Counter),
                    ("histogram" | "gaugehistogram", "_bucket" | "_sum" | "_count") => {
                        Some(Kind::Counter)
                    }
                    ("summary", "_sum" | "_count") => Some(Kind::Counter),
                    ("summary" | "gauge" | "unknown" | "stateset", "") => Some(Kind::Gauge),
                    ("info", "_info") => Some(Kind::Gauge),
                    _ => None,
                }
            })
            .with_context(|| format!("sample {name} of no TYPE'd family"))?;
        out.entry(name.to_string()).or_insert((kind, 0)).1 += 1;
    }
    Ok(out)
}

#[test]
fn promql_selectors_are_found_and_the_rest_skipped() -> Result<()> {
    let names = |e: &str| -> Result<Vec<(String, bool, String)>> {
        Ok(selectors(e)?
            .into_iter()
            .map(|s| (s.name, s.range, s.func))
            .collect())
    };
    let own = |n: &str, r: bool, f: &str| (n.to_string(), r, f.to_string());
    assert_eq!(
        names(
            r#"sum by (reason) (rate(vxmesh_drops_total{instance=~"$node",reason!="a)b"}[$__rate_interval])) > 0"#
        )?,
        [own("vxmesh_drops_total", true, "rate")]
    );
    assert_eq!(
        names(
            "topk(10, 8 * sum without (job) (rate(a_total[5m] offset 1h) + irate(b:c_total [1m])))"
        )?,
        [
            own("a_total", true, "rate"),
            own("b:c_total", true, "irate")
        ]
    );
    assert_eq!(
        names(
            "x / on (instance) group_left (network) y * 1e3 or vector(0) unless count(z) bool == 2"
        )?,
        [
            own("x", false, ""),
            own("y", false, ""),
            own("z", false, "count")
        ]
    );
    assert_eq!(
        names("sum(increase(h_bucket{le=\"0.5\"}[${__range}])) by (le)")?,
        [own("h_bucket", true, "increase")]
    );
    let s = &selectors(r#"g{ instance=~"$node" }"#)?[0];
    assert_eq!(s.matchers, r#"instance=~"$node""#);
    for bad in [
        "sum(rate(x[5m])",
        "x)",
        r#"{__name__="x"}"#,
        "rate(x[5m])[1h:]",
        "x{a=\"b}",
    ] {
        assert!(selectors(bad).is_err(), "{bad} accepted");
    }
    assert_eq!(
        variable_selectors("label_values(vxmesh_store_reachable{job=\"a,b\"}, instance)")?[0].name,
        "vxmesh_store_reachable"
    );
    assert!(variable_selectors("label_values(instance)")?.is_empty());
    Ok(())
}

#[test]
fn exposition_samples_have_their_family_type() -> Result<()> {
    let text = "# HELP a_drops Drops.\n# TYPE a_drops counter\na_drops_total{reason=\"x\"} 1\n\
                a_drops_total{reason=\"y\"} 0\n# TYPE a_up gauge\na_up 1\n\
                # TYPE a_lat histogram\na_lat_bucket{le=\"1\"} 2\na_lat_sum 3\na_lat_count 2\n\
                # TYPE a_none gauge\n# EOF\n";
    let s = exposition(text)?;
    assert_eq!(s["a_drops_total"], (Kind::Counter, 2));
    assert_eq!(s["a_up"], (Kind::Gauge, 1));
    assert_eq!(s["a_lat_bucket"], (Kind::Counter, 1));
    assert_eq!(s["a_lat_count"], (Kind::Counter, 1));
    // a family's own name is no sample of a counter, and an empty family has none
    assert!(!s.contains_key("a_drops") && !s.contains_key("a_none"));
    assert!(exposition("b_total 1\n").is_err(), "a sample of no family");
    Ok(())
}
