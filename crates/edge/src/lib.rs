//! The edge of gatehouse: listeners, site and route matching, and the reverse
//! proxy request path.
//!
//! ```text
//! bind(config) ─▶ BoundServer ─start()─▶ RunningServer ─shutdown()/join()
//!                   (sockets)              (worker threads)
//! ```
//!
//! Architecture invariant: nothing on the request path blocks a worker thread or
//! panics on network input; every failure becomes a response with a request id.

mod body;
mod forwarding;
mod handler;
mod healthcheck;
mod path;
mod pool;
mod request_id;
mod router;
mod server;
mod statics;

pub use body::{RequestBody, ResponseBody};
pub use server::{BoundServer, RunningServer, bind};

use std::net::SocketAddr;

/// Errors starting the edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A static route could not be set up (missing directory, bad slot).
    #[error("route {route}: {source}")]
    Static {
        /// The route's name.
        route: String,
        /// What went wrong.
        #[source]
        source: gatehouse_files::FilesError,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
}
