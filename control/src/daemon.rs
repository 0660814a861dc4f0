//! The composition root: `vxmesh agent` starts here. It makes the [`Agent`],
//! then wires to it what sits above it (the API on its unix socket, the
//! Docker plugin, the Prometheus endpoint, the flow-log writer) and runs them
//! until the agent is asked to stop or a dataplane worker dies. Nothing below
//! imports this module: the agent knows nothing of its callers.

#![forbid(unsafe_code)]

use crate::agent::{self, Agent, AgentConfig};
use crate::{api, docker};
use anyhow::Context;
use std::sync::Arc;

/// Runs an agent until SIGINT or SIGTERM, or until a dataplane worker dies:
/// then it saves the connections and fails, so that the service manager
/// restarts it (the TAPs outlive it, and the next run takes back the ports
/// and connections) instead of it heartbeating with a dead forwarder.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create --data-dir {}", cfg.data_dir.display()))?;
    let group = cfg
        .socket_group
        .as_deref()
        .map(crate::sockets::group_id)
        .transpose()?;
    let agent = Agent::start(&cfg).await?;
    let listener = api::server::bind(&cfg.api, group)?;
    if let Some(addr) = cfg.metrics_addr {
        serve_metrics(addr, agent.clone()).await?;
    }
    agent::flows::spawn(agent.clone(), cfg.flow_export.clone()).with_context(|| {
        format!(
            "cannot open --flow-log {}",
            cfg.flow_export
                .as_ref()
                .map_or_else(String::new, |e| e.path.display().to_string())
        )
    })?;
    agent.restore_connections();
    agent.remove_stale_interfaces().await;
    tokio::spawn(agent.clone().follow());
    tokio::spawn(agent.clone().probe_tasks());
    tokio::spawn(agent.clone().liveness());
    let docker = if cfg.docker_plugin {
        Some(docker::start(agent.clone(), &cfg.data_dir, group).await?)
    } else {
        None
    };
    let api = tokio::spawn(api::server::serve(listener, agent.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let dead = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        r = api => { r??; None }
        d = agent.dead_worker() => Some(d),
    };
    match &dead {
        Some((worker, why)) => tracing::error!(
            worker,
            reason = %why,
            "dataplane worker {worker} stopped: {why}; the agent exits to be restarted"
        ),
        None => tracing::info!("stopping"),
    }
    agent.save_connections();
    if let Some(d) = docker {
        d.stop().await;
    }
    if cfg.cleanup_on_exit {
        if let Err(e) = agent::ingress::remove_table().await {
            tracing::warn!(error = %e, "cannot remove the ingress table");
        }
        if let Err(e) = agent::egress::remove().await {
            tracing::warn!(error = %e, "cannot remove the egress table");
        }
    }
    let _ = std::fs::remove_file(&cfg.api);
    match dead {
        Some((worker, why)) => Err(anyhow::anyhow!(
            "dataplane worker {worker} stopped ({why}): exiting so that the agent is restarted"
        )),
        None => Ok(()),
    }
}

/// Serves Prometheus metrics (`GET /metrics`) on `--metrics-addr`.
async fn serve_metrics(addr: std::net::SocketAddr, agent: Arc<Agent>) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics on --metrics-addr {addr}"))?;
    let a = agent;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let a = a.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    agent::metrics::render(&a),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%addr, "metrics on /metrics");
    Ok(())
}
