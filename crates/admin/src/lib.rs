//! The admin API of gatehouse: a separate HTTP listener (`server.admin`) for
//! operating a running server.
//!
//! It serves release uploads and rollbacks for the static slots, reloads, and
//! live views of upstream health and served certificates (`docs/admin.md` lists
//! the endpoints). Each is a router merged in [`router`], under the same
//! authentication and error conventions:
//!
//! * every endpoint except `GET /healthz` needs `Authorization: Bearer TOKEN`
//!   when a token is configured (module `auth`); a new endpoint is protected
//!   without doing anything;
//! * errors are small JSON bodies `{"error": "...", "code": "..."}` with a
//!   documented, stable `code` ([`ApiError`]); internal detail goes to the log;
//! * handlers do no blocking work on the I/O thread: file work runs on the
//!   blocking pool.
//!
//! *Architecture invariant*: this crate knows nothing about config files or
//! the edge's connections. The binary builds an [`AdminState`] from the
//! validated config and hands it a listener; the release store it drives is
//! the same on-disk store the static routes serve from, and they see its
//! switches through the slot's pointer file.

#![warn(missing_docs)]

mod auth;
mod certificates;
mod error;
mod releases;
mod reload;
mod state;
mod upload;
mod upstreams;
mod view;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;

pub use certificates::{CertificateView, CertificatesSnapshot, CertificatesSource};
pub use error::ApiError;
pub use reload::{ReloadError, ReloadReport, ReloadSource};
pub use state::{AdminState, DEFAULT_UPLOAD_IDLE_TIMEOUT, DEFAULT_UPLOAD_TIMEOUT};
pub use upstreams::{TargetView, UpstreamView, UpstreamsSnapshot, UpstreamsSource};
pub use view::LiveView;

/// Largest body of a request that is not an upload (a rollback's
/// `{"id": "…"}`): anything bigger is not a well-meant request.
pub const SMALL_BODY_LIMIT: usize = 16 * 1024;

/// The admin API's routes and middleware, ready to serve.
///
/// Each layer applies to every route and to the 404/405 fallbacks; the last
/// one added is the outermost.
pub fn router(state: AdminState) -> Router {
    let token = state.token();
    Router::new()
        .route("/healthz", get(healthz))
        .merge(releases::routes())
        .merge(upstreams::routes())
        .merge(certificates::routes())
        .merge(reload::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Buffered bodies (JSON) are small; uploads stream and are bounded per
        // slot by `max_upload` in the upload handler instead.
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT))
        // Authentication before any handler or extractor touches the request,
        // so an unauthenticated client learns nothing but 401 (and /healthz).
        .layer(auth::RequireBearerLayer::new(token))
        // Outermost: even a 401 must not be cached by a proxy in between.
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting and waits for open requests to finish (the caller bounds that
/// wait, as `gatehouse serve` does with `server.shutdown_timeout`).
pub async fn serve<F>(listener: tokio::net::TcpListener, router: Router, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /healthz`: the process is up and the admin listener answers.
async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests;
