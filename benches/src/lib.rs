//! Benchmarks live in benches/. This library holds what the netns harnesses
//! (`netns-throughput`, `netns-lb`, `netns-scale`) share: their command line,
//! medians and ranges, CPU time, endpoints and VIPs through the CLI, background servers in namespaces, iperf3,
//! stopping on Ctrl-C, and the SVG bar chart.

mod args;
mod background;
mod chart;
mod cli;
mod cpu;
mod iperf3;
mod stats;
mod stop;

pub use args::{parse_args, parse_args_from, parse_args_from_with, workers_per_node, BenchArgs};
pub use background::Bg;
pub use chart::{BarChart, Series};
pub use cli::{endpoint_ip, service_vip};
pub use cpu::{
    cpu_model, cpu_secs_per_gb, cpu_ticks, parse_proc_stat, process_ticks, ticks_per_sec, CpuTicks,
};
pub use iperf3::{iperf3_gbps, iperf3_parse, iperf3_run, Iperf3};
pub use stats::{median, ratio, Spread};
pub use stop::{catch_signals, check_stop};
