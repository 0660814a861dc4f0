//! Flow records to a file (`--flow-log PATH`): JSON lines, one record a line,
//! or OpenTelemetry's OTLP/JSON logs shape, one export request a line (what a
//! collector's OTLP JSON file receiver reads). The file is rotated by size
//! (`--flow-log-max-size`): PATH becomes PATH.1, PATH.1 PATH.2, and so on up
//! to `--flow-log-keep` files, the oldest removed.

use super::record::FlowRecord;
use serde_json::{json, Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One record a line, as `vxmesh flows --format json` prints it.
    Json,
    /// OTLP/JSON: `resourceLogs` / `scopeLogs` / `logRecords`.
    Otel,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "otel" => Ok(Format::Otel),
            _ => Err(format!("{s:?}: use json or otel")),
        }
    }
}

/// Parses a size: `64MiB`, `10MB`, `512KiB`, `1GiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: write a size such as 64MiB, 10MB or 1048576"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if v < 4096 {
        return Err(format!("{s:?}: a flow log file holds at least 4096 bytes"));
    }
    Ok(v)
}

/// An append-only file that starts over under a new name past a size.
pub struct Rotating {
    path: PathBuf,
    max: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

impl Rotating {
    pub fn open(path: &Path, max: u64, keep: usize) -> io::Result<Self> {
        let mut r = Rotating {
            path: path.to_path_buf(),
            max,
            keep,
            file: None,
            size: 0,
        };
        r.reopen()?;
        Ok(r)
    }

    fn reopen(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(f);
        Ok(())
    }

    fn old(&self, i: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        p.into()
    }

    /// Moves PATH to PATH.1 (and each PATH.i to PATH.i+1), dropping what is
    /// past `keep`, and starts PATH anew.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.old(self.keep));
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(self.old(i), self.old(i + 1));
            }
            std::fs::rename(&self.path, self.old(1))?;
        }
        self.reopen()
    }

    /// Writes `line` and a newline, rotating first if it would not fit (a
    /// line longer than the limit gets a file of its own).
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max {
            self.rotate()?;
        }
        let f = match self.file.as_mut() {
            Some(f) => f,
            None => {
                self.reopen()?;
                self.file.as_mut().ok_or(io::ErrorKind::NotFound)?
            }
        };
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }
}

/// Lines for `records` in `format` (one per record, or one export request).
pub fn lines(records: &[FlowRecord], format: Format, node: &str) -> Vec<String> {
    match format {
        Format::Json => records
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect(),
        Format::Otel if records.is_empty() => Vec::new(),
        Format::Otel => vec![otel(records, node).to_string()],
    }
}

/// An OTLP/JSON `ExportLogsServiceRequest` holding `records`, their fields
/// as attributes (`vxmesh.flow.FIELD`, nested ones dotted: `.packets.client`).
pub fn otel(records: &[FlowRecord], node: &str) -> Value {
    let str_attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let logs: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut attrs = Vec::new();
            if let Ok(Value::Object(m)) = serde_json::to_value(r) {
                flatten("vxmesh.flow", &m, &mut attrs);
            }
            let nanos = (u128::from(r.time_unix_ms) * 1_000_000).to_string();
            json!({
                "timeUnixNano": nanos,
                "observedTimeUnixNano": nanos,
                "severityNumber": if r.event == "drop" { 13 } else { 9 },
                "severityText": if r.event == "drop" { "WARN" } else { "INFO" },
                "body": {"stringValue": summary(r)},
                "attributes": attrs,
            })
        })
        .collect();
    json!({
        "resourceLogs": [{
            "resource": {"attributes": [
                str_attr("service.name", "vxmesh"),
                str_attr("host.name", node),
            ]},
            "scopeLogs": [{
                "scope": {"name": "vxmesh.flows", "version": env!("CARGO_PKG_VERSION")},
                "logRecords": logs,
            }],
        }],
    })
}

/// OTLP attributes for `m`'s fields under `prefix` (numbers as intValue,
/// which OTLP/JSON writes as a string; booleans as boolValue).
fn flatten(prefix: &str, m: &Map<String, Value>, out: &mut Vec<Value>) {
    for (k, v) in m {
        let key = format!("{prefix}.{k}");
        let value = match v {
            Value::Object(inner) => {
                flatten(&key, inner, out);
                continue;
            }
            Value::Number(n) => json!({"intValue": n.to_string()}),
            Value::String(s) => json!({"stringValue": s}),
            Value::Bool(b) => json!({"boolValue": b}),
            Value::Null | Value::Array(_) => continue,
        };
        out.push(json!({"key": key, "value": value}));
    }
}

/// One line a person reads: `tcp 10.0.0.2:40000 -> 10.0.0.100:80 forwarded end=fin`.
pub fn summary(r: &FlowRecord) -> String {
    let what = r
        .end
        .as_ref()
        .map(|e| format!(" end={e}"))
        .or_else(|| r.reason.as_ref().map(|e| format!(" reason={e}")))
        .unwrap_or_default();
    format!(
        "{} {} -> {} {}{what}",
        r.proto,
        std::net::SocketAddr::new(r.src, r.sport),
        std::net::SocketAddr::new(r.dst, r.dport),
        r.verdict
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::flows::record::Names;
    use crate::state::ClusterState;

    #[test]
    fn sizes_parse_with_units_and_small_ones_are_refused() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("8192"), Ok(8192));
        for bad in ["", "MiB", "12 parsecs", "100", "99999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.log");
        let mut w = Rotating::open(&path, 100, 2).unwrap();
        let line = "x".repeat(39); // 40 bytes with its newline
        for _ in 0..9 {
            w.write_line(&line).unwrap();
        }
        // 2 lines a file: 9 lines made 5 files, of which the newest 3 stay
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
        assert_eq!(size(&path), Some(40));
        assert_eq!(size(&w.old(1)), Some(80));
        assert_eq!(size(&w.old(2)), Some(80));
        assert_eq!(size(&w.old(3)), None, "past --flow-log-keep");
        // an agent restarted appends to what is there
        drop(w);
        let mut w = Rotating::open(&path, 100, 2).unwrap();
        w.write_line(&line).unwrap();
        assert_eq!(size(&path), Some(80));
    }

    #[test]
    fn otel_lines_carry_every_field_as_an_attribute() {
        let st = ClusterState::default();
        let mut r = Names { st: &st }.record(&Default::default(), 1_714_564_800_123);
        r.end = Some("fin".into());
        r.packets.backend = 7;
        let v = otel(&[r.clone(), r], "n1");
        let rec = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
        assert_eq!(rec.as_array().unwrap().len(), 2);
        assert_eq!(rec[0]["timeUnixNano"], "1714564800123000000");
        let attrs = rec[0]["attributes"].as_array().unwrap();
        let get = |k: &str| {
            attrs
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
                .unwrap_or(Value::Null)
        };
        assert_eq!(get("vxmesh.flow.end"), json!({"stringValue": "fin"}));
        assert_eq!(get("vxmesh.flow.packets.backend"), json!({"intValue": "7"}));
        assert_eq!(
            v["resourceLogs"][0]["resource"]["attributes"][1]["value"]["stringValue"],
            "n1"
        );
        assert!(lines(&[], Format::Otel, "n1").is_empty());
    }
}
