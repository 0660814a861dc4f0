//! `GET /v1/flows`: the node's flow records (`vxmesh flows`), filtered; with
//! `follow=1`, a body that goes on for as long as the client reads, one JSON
//! record a line (NDJSON) as each comes.

use super::answer::{Ag, ApiError};
use crate::api_types::flows::{FlowQuery, Missed};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::broadcast::error::RecvError;

/// Records kept and returned at most.
const LIMIT_MAX: usize = crate::agent::flows::HISTORY + crate::agent::flows::OPEN_MAX;

pub async fn flows(State(a): Ag, Query(q): Query<FlowQuery>) -> Result<Response, ApiError> {
    let Some(flows) = a.flows.clone() else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "flow logs are off on this node: start its agent with --flow-logs on".into(),
        ));
    };
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    if !follow {
        let limit = q.limit.unwrap_or(100).min(LIMIT_MAX);
        return Ok(Json(flows.list(&q.filter, limit)).into_response());
    }
    let rx = flows.subscribe();
    let stream = futures_util::stream::unfold((rx, q.filter), |(mut rx, f)| async move {
        loop {
            let line = match rx.recv().await {
                Ok(r) if f.matches(&r) => serde_json::to_string(&*r).ok()?,
                Ok(_) => continue,
                // a reader too slow for the records is told what it missed
                Err(RecvError::Lagged(missed)) => serde_json::to_string(&Missed { missed }).ok()?,
                Err(RecvError::Closed) => return None,
            };
            let bytes = axum::body::Bytes::from(line + "\n");
            return Some((Ok::<_, std::io::Error>(bytes), (rx, f)));
        }
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
