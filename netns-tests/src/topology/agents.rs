//! The vxmesh agents of a topology: started in their nodes' namespaces with
//! the topology's store, reached through their CLI, stopped or killed.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{tail, Node, Topology, START_FAILURE_LOG_LINES};
use crate::command::{self, DEFAULT_TIMEOUT};

const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(15);
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Agent {
    child: Child,
}

impl Topology {
    pub fn start_agent(&mut self, node: &Node, extra_args: &[&str]) -> Result<()> {
        self.start_agent_with_env(node, extra_args, &[])
    }

    /// [`Self::start_agent`] with variables added to the agent's environment
    /// (e.g. the test-only `VXMESH_TEST_FAULT`).
    pub fn start_agent_with_env(
        &mut self,
        node: &Node,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        ensure!(
            !self.agents.contains_key(&node.name),
            "agent for node {} is already running",
            node.name
        );
        let data_dir = self.dir.join(&node.name);
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("failed to create {}", data_dir.display()))?;
        let log_path = self.log_path(node);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let log_err = log.try_clone().context("failed to clone log file handle")?;

        let store = self.store_url();
        let store_flags = self.store_flags(node, extra_args)?;
        let api = self.socket(node);
        let addr = node.underlay_addr().to_string();
        let data_dir = data_dir.display().to_string();
        // A host node's agent runs as it would on a real Docker host: straight in
        // the machine's namespaces. `ip netns exec` would give it a mount
        // namespace of its own, where the netns files Docker mounts later under
        // /var/run/docker/netns stay empty files.
        let mut cmd = if self.is_host_node(node) {
            Command::new(vxmesh_bin())
        } else {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &node.ns]).arg(vxmesh_bin());
            c
        };
        cmd.args(["agent", "--node", &node.name, "--advertise-addr", &addr])
            .args(["--store", &store, "--api", &api, "--data-dir", &data_dir])
            .args(&store_flags)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(env.iter().copied());
        let desc = command::describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to spawn `{desc}`"))?;
        if !self.logged_nodes.contains(&node.name) {
            self.logged_nodes.push(node.name.clone());
        }
        self.agents.insert(node.name.clone(), Agent { child });
        self.wait_agent_ready(node, &desc)
    }

    /// Readiness is judged through the public CLI rather than the socket
    /// file appearing, so a test starts only once the API actually answers.
    fn wait_agent_ready(&mut self, node: &Node, desc: &str) -> Result<()> {
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            let agent = self
                .agents
                .get_mut(&node.name)
                .expect("agent just inserted");
            if let Some(status) = agent.child.try_wait().context("failed to poll agent")? {
                self.agents.remove(&node.name);
                bail!(
                    "agent for node {} exited ({status}) before becoming ready\ncommand: {desc}\n{}",
                    node.name,
                    self.log_tail(node, START_FAILURE_LOG_LINES)
                );
            }
            let mut probe = Command::new(vxmesh_bin());
            probe.args(["-H", &self.socket(node), "network", "ls"]);
            let last_probe = match command::run(&mut probe, PROBE_TIMEOUT) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                let stop = self.stop_agent(node);
                bail!(
                    "agent for node {} not ready after {AGENT_READY_TIMEOUT:?} \
                     (last probe: {last_probe}; stop: {stop:?})\ncommand: {desc}\n{}",
                    node.name,
                    self.log_tail(node, START_FAILURE_LOG_LINES)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Forgets a node's running agent, handing it to the caller to stop.
    fn take_agent(&mut self, node: &Node) -> Result<Agent> {
        self.agents
            .remove(&node.name)
            .with_context(|| format!("no running agent for node {}", node.name))
    }

    pub fn stop_agent(&mut self, node: &Node) -> Result<()> {
        let mut agent = self.take_agent(node)?;
        terminate(std::slice::from_mut(&mut agent.child))
    }

    /// Waits up to `within` for a node's agent to exit on its own: its exit
    /// status (the agent is then forgotten, and may be started again), or
    /// `None` while it still runs.
    pub fn wait_agent_exit(
        &mut self,
        node: &Node,
        within: Duration,
    ) -> Result<Option<std::process::ExitStatus>> {
        let end = Instant::now() + within;
        loop {
            let agent = self
                .agents
                .get_mut(&node.name)
                .with_context(|| format!("no running agent for node {}", node.name))?;
            if let Some(status) = agent.child.try_wait().context("failed to poll agent")? {
                self.agents.remove(&node.name);
                return Ok(Some(status));
            }
            if Instant::now() >= end {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills a node's agent with SIGKILL: no shutdown work of any kind.
    pub fn kill_agent(&mut self, node: &Node) -> Result<()> {
        let mut agent = self.take_agent(node)?;
        let _ = kill(Pid::from_raw(agent.child.id() as i32), Signal::SIGKILL);
        agent.child.wait().context("reaping a killed agent")?;
        Ok(())
    }

    pub fn socket(&self, node: &Node) -> String {
        format!(
            "unix:{}",
            self.dir.join(format!("{}.sock", node.name)).display()
        )
    }

    pub fn cli(&self, node: &Node, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(vxmesh_bin());
        cmd.args(["-H", &self.socket(node)]).args(args);
        command::run(&mut cmd, DEFAULT_TIMEOUT)
    }

    pub fn cli_ok(&self, node: &Node, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(vxmesh_bin());
        cmd.args(["-H", &self.socket(node)]).args(args);
        command::run_ok(&mut cmd, DEFAULT_TIMEOUT)
    }

    pub fn cli_json(&self, node: &Node, args: &[&str]) -> Result<serde_json::Value> {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--format", "json"]);
        let out = self.cli_ok(node, &full)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`vxmesh {}` printed invalid JSON: {out}", full.join(" ")))
    }

    pub fn agent_log(&self, node: &Node) -> String {
        fs::read(self.log_path(node))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_path(&self, node: &Node) -> PathBuf {
        self.dir.join(format!("{}.log", node.name))
    }

    fn log_tail(&self, node: &Node, lines: usize) -> String {
        tail(&self.agent_log(node), lines, &format!("{}.log", node.name))
    }

    /// Stops every agent still running (for `Drop`).
    pub(super) fn stop_all_agents(&mut self) {
        let mut children: Vec<Child> = std::mem::take(&mut self.agents)
            .into_values()
            .map(|a| a.child)
            .collect();
        if let Err(e) = terminate(&mut children) {
            eprintln!("vxmesh-netns-tests: stopping agents: {e:#}");
        }
    }
}

/// SIGTERM all first so agents shut down in parallel, then SIGKILL whatever
/// is left after the grace period. Always reaps, so no zombies outlive a test.
pub(super) fn terminate(children: &mut [Child]) -> Result<()> {
    let killed = command::stop_children(children, AGENT_STOP_TIMEOUT)?;
    ensure!(
        killed.is_empty(),
        "agents {killed:?} ignored SIGTERM for {AGENT_STOP_TIMEOUT:?} and were killed"
    );
    Ok(())
}

/// Locates the agent binary. Tests live in a different package than the
/// binary, so `CARGO_BIN_EXE_*` is unavailable and we look next to our own
/// test executable instead.
pub fn vxmesh_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("VXMESH_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe unavailable");
    let mut dir = exe
        .parent()
        .expect("test exe has no parent dir")
        .to_path_buf();
    if matches!(
        dir.file_name().and_then(|n| n.to_str()),
        Some("deps" | "examples")
    ) {
        dir.pop();
    }
    let bin = dir.join("vxmesh");
    assert!(
        bin.is_file(),
        "vxmesh binary not found at {} (set VXMESH_BIN or build it first: cargo build --bins)",
        bin.display()
    );
    bin
}
