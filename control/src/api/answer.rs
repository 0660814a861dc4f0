//! How a route answers: a typed body as JSON with sorted keys, or an error
//! with its HTTP status, and the agent every route is handed. Below the
//! routes (server, local, flows), so none of them reaches into another.

use crate::agent::{Agent, AgentError};
use crate::api_types::errors::ErrorBody;
use crate::state::StateError;
use crate::store::{StoreError, UpdateError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

pub struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let code = match &e {
            AgentError::Update(UpdateError::State(StateError::Invalid(_))) => {
                StatusCode::BAD_REQUEST
            }
            AgentError::Update(UpdateError::State(StateError::NotFound(_))) => {
                StatusCode::NOT_FOUND
            }
            AgentError::Update(UpdateError::State(StateError::Conflict(_))) => StatusCode::CONFLICT,
            AgentError::Update(UpdateError::Store(StoreError::Unreachable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AgentError::Attach(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        AgentError::from(e).into()
    }
}

/// An answer as JSON with its object keys in sorted order, as the API has
/// always written them (its answers were `serde_json::Value`s, whose maps
/// sort): whoever compares the bytes the agent sends sees no change.
pub(super) struct Sorted<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Sorted<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.0) {
            Ok(v) => Json(v).into_response(),
            Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

pub(super) type Res<T> = Result<Sorted<T>, ApiError>;
pub(super) type Ag = State<Arc<Agent>>;
