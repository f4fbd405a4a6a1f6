//! `POST /reload`: re-read the config file and swap it in.
//!
//! The handler only relays: the binary supplies a [`ReloadSource`] that loads
//! and validates the file and hands it to the edge. A config that is invalid
//! answers `422 invalid_config` with the error (file, line, column, key), and
//! the server keeps serving the config it had.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AdminState;

/// The outcome of a successful reload.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// The generation now served (the startup config is 1).
    pub generation: u64,
    /// Listen addresses added by this reload.
    pub added: Vec<String>,
    /// Listen addresses removed by this reload (they drain).
    pub removed: Vec<String>,
    /// Changed settings that need a restart and were not applied.
    pub warnings: Vec<String>,
}

/// Why a reload did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The file is invalid; the text names file, line, column and key.
    InvalidConfig(String),
    /// The config is valid but could not be applied (for example an added
    /// listen address is in use); nothing changed.
    NotApplied(String),
}

type ReloadFuture = Pin<Box<dyn Future<Output = Result<ReloadReport, ReloadError>> + Send>>;

/// Performs a reload; the binary wires it to the config file and the edge.
#[derive(Clone)]
pub struct ReloadSource(Arc<dyn Fn() -> ReloadFuture + Send + Sync>);

impl ReloadSource {
    /// Wraps a function that starts a reload.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ReloadReport, ReloadError>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f())))
    }
}

impl std::fmt::Debug for ReloadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadSource")
    }
}

#[derive(Serialize)]
struct Body {
    ok: bool,
    #[serde(flatten)]
    report: ReloadReport,
}

pub(crate) fn routes() -> Router<AdminState> {
    Router::new().route("/reload", post(reload))
}

async fn reload(State(state): State<AdminState>) -> Result<Json<Body>, ApiError> {
    let Some(source) = &state.reload else {
        return Err(ApiError::not_found());
    };
    match (source.0)().await {
        Ok(report) => Ok(Json(Body { ok: true, report })),
        Err(ReloadError::InvalidConfig(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            message,
        )),
        Err(ReloadError::NotApplied(message)) => Err(ApiError::new(StatusCode::CONFLICT, "not_applied", message)),
    }
}
