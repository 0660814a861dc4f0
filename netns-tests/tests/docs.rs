//! Runs the guides (docs/user-guide.md, docs/operations.md) so they cannot rot:
//! every shell block in them is either run here, against real agents, or
//! carries a stated reason why not.
//!
//! # The convention
//!
//! Directives are one-line HTML comments (invisible when rendered):
//!
//! - `<!-- topology: store=sqlite|etcd|etcds nodes=A,B[,...] [hosts=X,...] -->` starts a
//!   new topology (the previous one is torn down): the nodes get underlay
//!   addresses 192.168.77.1, .2, ... in the order given (after the etcd host,
//!   which takes .1, when `store=etcd` or `etcds`, the latter a TLS etcd that
//!   requires client certificates); hosts are outside machines with no agent.
//! - `<!-- netns: NAME... -->` declares the namespace names the text uses. The
//!   runner rewrites every whole-word occurrence (a word is letters, digits, `_`
//!   and `-`) to a name unique to the run, and a line `ip netns add NAME` becomes
//!   the topology's own container (so it is deleted, and whatever runs in it
//!   killed, however the test ends).
//! - `<!-- run: TARGET [retry] -->` right before a fenced block: its commands run
//!   in TARGET's network namespace (a node or a host) with `sh -e`, in a scratch
//!   directory, with the built `vxmesh` and `vxmesh-cni` first on `PATH` and, on a
//!   node, `VXMESH_HOST` set to that node's agent. `/run/vxmesh/vxmesh.sock` in
//!   the text becomes that node's socket. A line `vxmesh agent ...` starts the
//!   node's agent through the harness: `--node` must be TARGET, `--advertise-addr`
//!   its address, `--store` of the topology's kind (for etcd, its very URL);
//!   `--api`, `--data-dir`, the store path and, for `etcds`, the certificates
//!   (`--store-ca`, `--store-cert`, `--store-key`) are the harness's, every
//!   other flag is passed as written. `retry`: the block only looks (it may be run again
//!   until its expectations hold, for up to 10 s: state spreads through the store).
//! - `<!-- expect: TEXT -->` after a block: TEXT must appear in what it printed
//!   (stdout and stderr). Several may follow one block.
//! - `<!-- not run: REASON -->` right before a block: shown, never run; REASON is
//!   required.
//! - `<!-- file: TARGET NAME -->` right before a non-shell block (JSON, say):
//!   written, rewritten as above for TARGET, as NAME in the scratch directory.
//! - `<!-- do: restart-agent NODE -->`: the harness stops the node's agent and
//!   starts it again with the same flags (what `systemctl restart` does on a real
//!   node, which the guide shows as not run).
//!
//! A fenced block whose info string is empty, `sh`, `bash`, `shell` or `console`
//! with neither `run:` nor `not run:` before it fails the test, as does any
//! unknown directive: new docs cannot skip the runner.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vxmesh_netns_tests::*;

/// How long a block may run (a few pings, a fetch or two).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a `retry` block may take to see what it expects.
const RETRY_FOR: Duration = Duration::from_secs(10);
const SHELL_LANGS: [&str; 5] = ["", "sh", "bash", "shell", "console"];

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Topology {
        store: StoreKind,
        nodes: Vec<String>,
        hosts: Vec<String>,
    },
    Netns(Vec<String>),
    Do {
        action: String,
        node: String,
    },
    Run {
        target: String,
        retry: bool,
        body: String,
        expects: Vec<String>,
        line: usize,
    },
    File {
        target: String,
        name: String,
        body: String,
    },
    NotRun {
        reason: String,
    },
}

/// What a block-level directive (`run`, `not run`, `file`) waits for: the next
/// fenced block.
enum Pending {
    Run { target: String, retry: bool },
    NotRun(String),
    File { target: String, name: String },
}

fn directive(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix("<!--")?.strip_suffix("-->").map(str::trim)
}

/// The guide as a list of things to do, in order; errors name the line.
fn parse(doc: &str) -> Result<Vec<Item>> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut items = Vec::new();
    let mut pending: Option<(Pending, usize)> = None;
    // the index in `items` of the last block, while expectations may follow it
    let mut last_run: Option<usize> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let no = i + 1;
        i += 1;
        if let Some(fence) = line.trim_start().strip_prefix("```") {
            let lang = fence.trim().to_string();
            let mut body = String::new();
            loop {
                ensure!(i < lines.len(), "line {no}: fenced block never closed");
                let l = lines[i];
                i += 1;
                if l.trim_start().starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            let shell = SHELL_LANGS.contains(&lang.as_str());
            last_run = None;
            match pending.take() {
                Some((Pending::Run { target, retry }, _)) => {
                    ensure!(shell, "line {no}: `run:` before a ```{lang} block");
                    items.push(Item::Run {
                        target,
                        retry,
                        body,
                        expects: Vec::new(),
                        line: no,
                    });
                    last_run = Some(items.len() - 1);
                }
                Some((Pending::NotRun(reason), _)) => items.push(Item::NotRun { reason }),
                Some((Pending::File { target, name }, _)) => {
                    ensure!(!shell, "line {no}: `file:` before a shell block");
                    items.push(Item::File { target, name, body });
                }
                None => ensure!(
                    !shell,
                    "line {no}: a ```{lang} block with neither <!-- run: TARGET --> nor \
                     <!-- not run: REASON --> before it"
                ),
            }
            continue;
        }
        let Some(d) = directive(line) else {
            if line.trim().starts_with("<!--") && !line.contains("-->") {
                // a multi-line comment is prose for editors, never a directive;
                // skip it whole so nothing inside can pass for one
                while i < lines.len() && !lines[i - 1].contains("-->") {
                    i += 1;
                }
                continue;
            }
            if !line.trim().is_empty() {
                if let Some((_, at)) = &pending {
                    bail!("line {at}: directive not followed by a fenced block");
                }
                last_run = None;
            }
            continue;
        };
        let (key, rest) = d.split_once(':').unwrap_or((d, ""));
        let rest = rest.trim();
        let words: Vec<&str> = rest.split_whitespace().collect();
        ensure!(
            pending.is_none() || key == "expect",
            "line {no}: a directive between a `run:`/`not run:`/`file:` and its block"
        );
        match key.trim() {
            "run" => {
                ensure!(
                    matches!(words.len(), 1 | 2) && (words.len() == 1 || words[1] == "retry"),
                    "line {no}: expected <!-- run: TARGET [retry] -->"
                );
                pending = Some((
                    Pending::Run {
                        target: words[0].to_string(),
                        retry: words.len() == 2,
                    },
                    no,
                ));
            }
            "not run" => {
                ensure!(!rest.is_empty(), "line {no}: `not run:` needs a reason");
                pending = Some((Pending::NotRun(rest.to_string()), no));
            }
            "file" => {
                ensure!(
                    words.len() == 2,
                    "line {no}: expected <!-- file: TARGET NAME -->"
                );
                pending = Some((
                    Pending::File {
                        target: words[0].to_string(),
                        name: words[1].to_string(),
                    },
                    no,
                ));
            }
            "expect" => {
                let Some(Item::Run { expects, .. }) = last_run.map(|k| &mut items[k]) else {
                    bail!("line {no}: `expect:` not right after a run block");
                };
                ensure!(!rest.is_empty(), "line {no}: empty `expect:`");
                expects.push(rest.to_string());
            }
            "topology" => {
                let mut store = None;
                let (mut nodes, mut hosts) = (Vec::new(), Vec::new());
                for w in &words {
                    let list = |v: &str| v.split(',').map(String::from).collect::<Vec<_>>();
                    match w.split_once('=') {
                        Some(("store", "sqlite")) => store = Some(StoreKind::Sqlite),
                        Some(("store", "etcd")) => store = Some(StoreKind::Etcd),
                        Some(("store", "etcds")) => store = Some(StoreKind::EtcdTls),
                        Some(("nodes", v)) => nodes = list(v),
                        Some(("hosts", v)) => hosts = list(v),
                        _ => bail!("line {no}: unknown topology setting {w:?}"),
                    }
                }
                items.push(Item::Topology {
                    store: store.with_context(|| format!("line {no}: topology without store="))?,
                    nodes,
                    hosts,
                });
            }
            "netns" => {
                ensure!(!words.is_empty(), "line {no}: `netns:` names nothing");
                items.push(Item::Netns(words.iter().map(|s| s.to_string()).collect()));
            }
            "do" => {
                ensure!(
                    words.len() == 2 && words[0] == "restart-agent",
                    "line {no}: expected <!-- do: restart-agent NODE -->"
                );
                items.push(Item::Do {
                    action: words[0].to_string(),
                    node: words[1].to_string(),
                });
            }
            other => bail!("line {no}: unknown directive {other:?}"),
        }
    }
    if let Some((_, at)) = pending {
        bail!("line {at}: directive not followed by a fenced block");
    }
    Ok(items)
}

/// Replaces whole-word `from` with `to`; a word is letters, digits, `_`, `-`.
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let word =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (at, _) in text.match_indices(from) {
        if at < done {
            continue;
        }
        let before = text[..at].chars().last();
        let after = text[at + from.len()..].chars().next();
        if !word(before) && !word(after) {
            out.push_str(&text[done..at]);
            out.push_str(to);
            done = at + from.len();
        }
    }
    out.push_str(&text[done..]);
    out
}

/// Joins `\`-continued lines.
fn logical_lines(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in body.lines() {
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One guide's run: its current topology, the names it rewrites, the agents'
/// flags (for restarts).
struct Runner {
    t: Option<Topology>,
    nodes: BTreeMap<String, Node>,
    hosts: BTreeMap<String, Node>,
    netns: BTreeMap<String, String>,
    made: Vec<String>,
    agent_flags: BTreeMap<String, Vec<String>>,
    bin_dir: PathBuf,
    work: PathBuf,
    ran: usize,
    not_run: usize,
}

impl Runner {
    fn new() -> Runner {
        let bin = vxmesh_bin();
        Runner {
            t: None,
            nodes: BTreeMap::new(),
            hosts: BTreeMap::new(),
            netns: BTreeMap::new(),
            made: Vec::new(),
            agent_flags: BTreeMap::new(),
            bin_dir: bin.parent().expect("binary in a directory").to_path_buf(),
            work: PathBuf::new(),
            ran: 0,
            not_run: 0,
        }
    }

    fn topo(&mut self) -> Result<&mut Topology> {
        self.t
            .as_mut()
            .context("a block before any <!-- topology: ... -->")
    }

    /// Kills what the guide left running in its namespaces (servers started in
    /// the background), then tears the topology down.
    fn teardown(&mut self) {
        let hosts = self.hosts.values().map(|h| h.ns.clone());
        for ns in self.made.iter().cloned().chain(hosts) {
            if let Err(e) = kill_all_in(&ns) {
                eprintln!("docs: cleaning {ns}: {e:#}");
            }
        }
        self.made.clear();
        self.t = None;
        self.nodes.clear();
        self.hosts.clear();
        self.netns.clear();
        self.agent_flags.clear();
    }

    fn rewrite(&self, text: &str, target: &str) -> String {
        let mut s = text.to_string();
        for (name, ns) in &self.netns {
            s = replace_word(&s, name, ns);
        }
        if let (Some(t), Some(node)) = (&self.t, self.nodes.get(target)) {
            let sock = t.socket(node);
            let path = sock.strip_prefix("unix:").unwrap_or(&sock);
            s = s.replace("/run/vxmesh/vxmesh.sock", path);
        }
        s
    }

    fn apply(&mut self, item: &Item) -> Result<()> {
        match item {
            Item::Topology {
                store,
                nodes,
                hosts,
            } => {
                self.teardown();
                self.t = Some(Topology::with_store("docs", *store)?);
                for n in nodes {
                    let node = self.topo()?.add_node(n)?;
                    self.nodes.insert(n.clone(), node);
                }
                for h in hosts {
                    let host = self.topo()?.add_outside_host(h)?;
                    self.hosts.insert(h.clone(), host);
                }
                self.work = self.topo()?.dir().join("work");
                std::fs::create_dir_all(&self.work)?;
            }
            Item::Netns(names) => {
                let prefix = self.topo()?.prefix().to_string();
                for n in names {
                    self.netns.insert(n.clone(), format!("{prefix}-{n}"));
                }
            }
            Item::Do { node, .. } => {
                let n = self.nodes.get(node).context("restart of an unknown node")?;
                let n = n.clone();
                let flags = self.agent_flags.get(node).cloned().unwrap_or_default();
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                let t = self.topo()?;
                t.stop_agent(&n)?;
                t.start_agent(&n, &flags)?;
            }
            Item::File { target, name, body } => {
                let text = self.rewrite(body, target);
                std::fs::write(self.work.join(name), text)?;
            }
            Item::NotRun { .. } => self.not_run += 1,
            Item::Run {
                target,
                retry,
                body,
                expects,
                line,
            } => {
                self.run_block(target, *retry, body, expects)
                    .with_context(|| format!("the block at line {line} (run: {target})"))?;
                self.ran += 1;
            }
        }
        Ok(())
    }

    fn run_block(
        &mut self,
        target: &str,
        retry: bool,
        body: &str,
        expects: &[String],
    ) -> Result<()> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let printed = match self.run_steps(target, retry, body) {
                Ok(p) => p,
                // a look that failed may succeed once the change has spread
                Err(e) if retry && Instant::now() < deadline => {
                    eprintln!("docs: retrying: {e:#}");
                    std::thread::sleep(Duration::from_millis(300));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let missing: Vec<&String> = expects
                .iter()
                .filter(|e| !printed.contains(e.as_str()))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if !retry || Instant::now() >= deadline {
                bail!("expected {missing:?} in what it printed:\n{printed}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs a block's lines: harness steps for `ip netns add` and `vxmesh agent`,
    /// the shell for the rest. Returns what the shell printed.
    fn run_steps(&mut self, target: &str, retry: bool, body: &str) -> Result<String> {
        let mut printed = String::new();
        let mut script = String::new();
        for line in logical_lines(body) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let harness = matches!(
                words.as_slice(),
                ["ip", "netns", "add", _] | ["vxmesh", "agent", ..]
            );
            if !harness {
                script.push_str(&line);
                script.push('\n');
                continue;
            }
            ensure!(!retry, "a `retry` block may only look, not `{line}`");
            printed += &self.shell(target, &std::mem::take(&mut script))?;
            if words[1] == "netns" {
                let name = words[3];
                ensure!(
                    self.netns.contains_key(name),
                    "`{line}`: {name} is not in a <!-- netns: --> list"
                );
                let ns = self.topo()?.add_container(name)?;
                ensure!(
                    ns == self.netns[name],
                    "namespace {ns} is not the rewritten {name}"
                );
                self.made.push(ns);
            } else {
                self.start_agent(target, &words[2..])
                    .with_context(|| format!("`{line}`"))?;
            }
        }
        printed += &self.shell(target, &script)?;
        Ok(printed)
    }

    fn start_agent(&mut self, target: &str, args: &[&str]) -> Result<()> {
        let node = self
            .nodes
            .get(target)
            .with_context(|| format!("`vxmesh agent` on {target}, which is not a node"))?
            .clone();
        let t = self.t.as_mut().context("no topology")?;
        let mut extra = Vec::new();
        let mut seen = Vec::new();
        let mut it = args.iter();
        while let Some(&flag) = it.next() {
            let value = |it: &mut std::slice::Iter<&str>| {
                it.next()
                    .map(|v| v.to_string())
                    .with_context(|| format!("{flag} without a value"))
            };
            match flag {
                "--node" => {
                    let v = value(&mut it)?;
                    ensure!(v == node.name, "--node {v} on node {}", node.name);
                }
                "--advertise-addr" => {
                    let v = value(&mut it)?;
                    ensure!(
                        v == node.addr.to_string(),
                        "--advertise-addr {v}, but {} is {}",
                        node.name,
                        node.addr
                    );
                }
                "--store" => {
                    let v = value(&mut it)?;
                    match t.store_kind() {
                        StoreKind::Etcd | StoreKind::EtcdTls => ensure!(
                            v == t.store_url(),
                            "--store {v}, but etcd is at {}",
                            t.store_url()
                        ),
                        StoreKind::Sqlite => ensure!(
                            v.starts_with("sqlite:"),
                            "--store {v} in an SQLite topology"
                        ),
                    }
                }
                "--api" | "--data-dir" => {
                    value(&mut it)?;
                }
                "--store-ca" | "--store-cert" | "--store-key"
                    if t.store_kind() == StoreKind::EtcdTls =>
                {
                    value(&mut it)?;
                }
                _ => {
                    extra.push(flag.to_string());
                    if let Some(v) = it.clone().next().filter(|v| !v.starts_with("--")) {
                        extra.push(v.to_string());
                        it.next();
                    }
                }
            }
            seen.push(flag);
        }
        ensure!(
            seen.contains(&"--node") && seen.contains(&"--advertise-addr"),
            "`vxmesh agent` needs --node and --advertise-addr"
        );
        let flags: Vec<&str> = extra.iter().map(String::as_str).collect();
        t.start_agent(&node, &flags)?;
        self.agent_flags.insert(target.to_string(), extra);
        Ok(())
    }

    fn shell(&self, target: &str, script: &str) -> Result<String> {
        if script.trim().is_empty() {
            return Ok(String::new());
        }
        let t = self.t.as_ref().context("no topology")?;
        let (ns, host) = match (self.nodes.get(target), self.hosts.get(target)) {
            (Some(n), _) => (n.ns.clone(), Some(t.socket(n))),
            (None, Some(h)) => (h.ns.clone(), None),
            _ => bail!("run: {target} is neither a node nor a host of the topology"),
        };
        let text = format!(
            "cd '{}'\n{}",
            self.work.display(),
            self.rewrite(script, target)
        );
        let path = format!(
            "PATH={}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut args = vec!["env".to_string(), "-u".into(), "VXMESH_HOST".into(), path];
        if let Some(h) = host {
            args.push(format!("VXMESH_HOST={h}"));
        }
        args.extend(["sh".into(), "-e".into(), "-c".into(), text.clone()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = exec_timeout(&ns, &args, BLOCK_TIMEOUT)?;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.status.success(),
            "failed ({}) on {target}:\n{text}\n--- printed ---\n{printed}",
            out.status
        );
        Ok(printed)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn doc_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join(name)
}

fn run_guide(name: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc_path(name))?;
    let items = parse(&text).with_context(|| format!("docs/{name}"))?;
    let mut r = Runner::new();
    for item in &items {
        r.apply(item).with_context(|| format!("docs/{name}"))?;
    }
    eprintln!(
        "docs/{name}: {} blocks run, {} marked not run",
        r.ran, r.not_run
    );
    Ok(())
}

#[test]
fn user_guide_runs() -> Result<()> {
    run_guide("user-guide.md")
}

#[test]
fn operations_guide_runs() -> Result<()> {
    run_guide("operations.md")
}

/// Needs no root: every guide parses, and the rules hold.
#[test]
fn every_shell_block_is_run_or_says_why_not() -> Result<()> {
    for name in ["user-guide.md", "operations.md"] {
        let items = parse(&std::fs::read_to_string(doc_path(name))?)
            .with_context(|| format!("docs/{name}"))?;
        assert!(
            items.iter().any(|i| matches!(i, Item::Run { .. })),
            "{name} runs nothing"
        );
    }
    let bad = "text\n\n```sh\nvxmesh network ls\n```\n";
    assert!(parse(bad).unwrap_err().to_string().contains("neither"));
    assert!(parse("<!-- not run: -->\n```sh\nls\n```\n").is_err());
    assert!(parse("<!-- run: node1 -->\nprose\n```sh\nls\n```\n").is_err());
    assert!(parse("<!-- runn: node1 -->\n").is_err());
    let ok = parse("<!-- run: n1 retry -->\n```sh\nls\n```\n<!-- expect: a b -->\n\n<!-- not run: needs systemd -->\n```\nsystemctl start x\n```\n```json\n{}\n```\n")?;
    assert_eq!(ok.len(), 2);
    assert!(matches!(&ok[0], Item::Run { retry: true, expects, .. } if expects == &["a b"]));
    assert_eq!(
        replace_word(
            "ip netns exec web1 ping; web1x web1-a /run/netns/web1",
            "web1",
            "P-web1"
        ),
        "ip netns exec P-web1 ping; web1x web1-a /run/netns/P-web1"
    );
    assert_eq!(
        logical_lines("a \\\n  b\nc\n"),
        vec!["a    b".to_string(), "c".to_string()]
    );
    Ok(())
}
