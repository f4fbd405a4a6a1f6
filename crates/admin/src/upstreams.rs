//! `GET /upstreams`: the live state of every upstream target.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::state::AdminState;

/// One upstream, as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UpstreamView {
    /// `[upstream.NAME]`
    pub name: String,
    /// Balancing policy.
    pub policy: String,
    /// Targets in config order.
    pub targets: Vec<TargetView>,
}

/// One target, as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetView {
    /// `host:port`
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// `up`, `down` (failing active checks) or `ejected` (passive checks).
    pub state: String,
    /// Milliseconds left in an ejection (0 when not ejected).
    pub ejected_for_ms: u64,
}

/// The upstreams of the config generation being served.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UpstreamsSnapshot {
    /// The config generation (1 at startup, counted up by each reload).
    pub generation: u64,
    /// Its upstreams in config order.
    pub upstreams: Vec<UpstreamView>,
}

/// Produces the current upstream states; the binary wires it to the running server.
pub type UpstreamsSource = crate::view::LiveView<UpstreamsSnapshot>;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new().route("/upstreams", get(list))
}

async fn list(State(state): State<AdminState>) -> Json<UpstreamsSnapshot> {
    UpstreamsSource::answer(state.upstreams.as_ref())
}
