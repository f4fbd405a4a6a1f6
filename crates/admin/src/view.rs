//! Read-only views the binary feeds: `GET /upstreams`, `GET /certificates`.

use std::sync::Arc;

use axum::Json;
use serde::Serialize;

/// Produces the current state of something the admin API shows; the binary
/// wires it to the running server. Cheap to clone.
pub struct LiveView<T>(Arc<dyn Fn() -> T + Send + Sync>);

impl<T> LiveView<T> {
    /// Wraps a snapshot function.
    pub fn new(f: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl<T: Serialize + Default> LiveView<T> {
    /// The view's JSON answer; the empty default when the server has none.
    pub(crate) fn answer(view: Option<&Self>) -> Json<T> {
        Json(view.map(|f| (f.0)()).unwrap_or_default())
    }
}

impl<T> Clone for LiveView<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> std::fmt::Debug for LiveView<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveView<{}>", std::any::type_name::<T>())
    }
}
