//! One iperf3 measurement, with the CPU time the machine and the agents spent
//! meanwhile.

use anyhow::Result;
use vxmesh_benches::{cpu_secs_per_gb, cpu_ticks, iperf3_run, process_ticks, ratio, ticks_per_sec};

use crate::setups::Setup;

/// The iperf3 tests (see [`vxmesh_benches::iperf3_run`]) and their names in the report.
pub const TESTS: [(&str, &str); 3] = [
    ("tcp1", "TCP, 1 stream"),
    ("tcp4", "TCP, 4 streams"),
    ("udp1400", "UDP, 1400 B"),
];

/// The agents' process name (their worker threads have names of their own,
/// but a process's stat line counts all its threads).
const AGENT_COMM: &str = "vxmesh";

/// One iperf3 measurement with the CPU the whole machine spent meanwhile.
#[derive(Clone, Copy)]
pub struct Sample {
    pub gbps: f64,
    pub cpu_secs: f64,
    pub cpu_per_gb: Option<f64>,
    /// The machine's busy share of all its ticks meanwhile (0 to 1).
    pub busy: Option<f64>,
    /// CPU-seconds the vxmesh agents' processes spent (user + system) per GB:
    /// unlike the machine's figure, the same on a busy day as on a quiet one
    /// (near zero for the kernel's setups, whose agents idle).
    pub agents_per_gb: Option<f64>,
}

pub fn measure(s: &Setup, test: &str, secs: u32) -> Result<Sample> {
    let before = cpu_ticks()?;
    let agents_before = process_ticks(AGENT_COMM)?;
    let r = iperf3_run(&s.client, &s.server_ip, test, secs)
        .map_err(|e| e.context(format!("iperf3 {test} over {}", s.label)))?;
    let after = cpu_ticks()?;
    let agents = process_ticks(AGENT_COMM)?.saturating_sub(agents_before) as f64;
    let busy = after.busy.saturating_sub(before.busy) as f64;
    let total = after.total.saturating_sub(before.total) as f64;
    let cpu_secs = busy / ticks_per_sec();
    Ok(Sample {
        gbps: r.gbps,
        cpu_secs,
        cpu_per_gb: cpu_secs_per_gb(cpu_secs, r.bytes),
        busy: ratio(busy, total),
        agents_per_gb: cpu_secs_per_gb(agents / ticks_per_sec(), r.bytes),
    })
}
