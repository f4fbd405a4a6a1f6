//! `GET /certificates`: every certificate being served, with its expiry.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::state::AdminState;

/// One served host name and its certificate's end of validity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertificateView {
    /// The host name (or `*.` wildcard) the certificate is served for.
    pub name: String,
    /// End of validity, RFC 3339 in UTC.
    pub not_after: String,
    /// Whole days left (negative once expired).
    pub days_left: i64,
}

/// The certificates served right now, sorted by name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CertificatesSnapshot {
    /// Empty without HTTPS listeners.
    pub certificates: Vec<CertificateView>,
}

/// Produces the current certificate list; the binary wires it to the running server.
pub type CertificatesSource = crate::view::LiveView<CertificatesSnapshot>;

pub(crate) fn routes() -> Router<AdminState> {
    Router::new().route("/certificates", get(list))
}

async fn list(State(state): State<AdminState>) -> Json<CertificatesSnapshot> {
    CertificatesSource::answer(state.certificates.as_ref())
}
