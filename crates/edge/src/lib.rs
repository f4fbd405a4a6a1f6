//! The edge of gatehouse: listeners, site and route matching, and the reverse
//! proxy request path.
//!
//! ```text
//! bind(config) ─▶ BoundServer ─start()─▶ RunningServer ─shutdown()/join()
//!                   (sockets)              (worker threads)
//!                                              ▲
//!                                   reload(config): a new generation
//! ```
//!
//! Architecture invariant: nothing on the request path blocks a worker thread or
//! panics on network input; every failure becomes a response with a request id.

mod body;
mod clock;
mod connect;
mod drain;
mod fields;
mod forwarding;
mod front;
mod generation;
mod h1;
mod handler;
mod healthcheck;
mod idle;
mod path;
mod policies;
mod pool;
mod request_id;
mod resolve;
mod router;
mod server;
mod statics;
mod tls;
mod zerocopy;

pub use body::{RequestBody, RequestBodyError, ResponseBody};
pub use server::{BoundServer, Reloaded, Reloader, RunningServer, TargetStatus, UpstreamStatus, UpstreamsView, bind};
pub use tls::TlsRuntime;

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
    /// An edge policy could not be set up.
    #[error("{what}: {source}")]
    Policy {
        /// Which route, upstream or limit.
        what: String,
        /// What went wrong.
        #[source]
        source: gatehouse_policy::PolicyError,
    },
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[source] gatehouse_tls::TlsError),
    /// HTTPS listeners are configured but no TLS runtime was given.
    #[error("HTTPS listeners {0:?} need certificates: start the server with a TLS runtime")]
    NoTls(Vec<SocketAddr>),
    /// A worker thread could not be started.
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A reload was asked of a server that is shutting down.
    #[error("the server is shutting down")]
    Stopped,
}

/// Entry points for the fuzz targets in `fuzz/` and the property tests in
/// `tests/properties.rs`: thin, owned-value wrappers around the crate-private
/// parsers that face the network. Not part of the public API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::IpAddr;

    use http::{HeaderMap, HeaderValue};
    use ipnet::IpNet;

    /// `path::normalize`: the normalised request path, or `None` when the path
    /// is refused.
    pub fn normalize_path(path: &str) -> Option<String> {
        crate::path::normalize(path).ok().map(std::borrow::Cow::into_owned)
    }

    /// `router::normalize_host`: the host name routes are matched on, or `None`
    /// when the `Host` value is refused.
    pub fn normalize_host(raw: &[u8]) -> Option<String> {
        crate::router::normalize_host(raw)
            .ok()
            .map(std::borrow::Cow::into_owned)
    }

    /// `forwarding::client_ip`: the client address after walking
    /// `X-Forwarded-For` through trusted proxies.
    pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
        crate::forwarding::client_ip(headers, peer, trusted)
    }

    /// `forwarding::strip_hop_by_hop`: removes hop-by-hop headers, returning the
    /// `Upgrade` value to forward.
    pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
        crate::forwarding::strip_hop_by_hop(headers)
    }

    pub use crate::front::ParsedRequest;

    /// `front`: client request heads fed `step` bytes at a time, as the
    /// client-facing HTTP/1.1 loop reads them: the requests it serves itself,
    /// then `Ok` with what hyper gets (the bytes handed over, then the unread
    /// rest) or `Err` with the bytes waiting for the rest of a head.
    pub fn client_requests(data: &[u8], step: usize) -> (Vec<ParsedRequest>, Result<Vec<u8>, Vec<u8>>) {
        crate::front::read_requests(data, step)
    }

    /// `h1`: an upstream's answer to a GET, read from `data` fed `step` bytes at
    /// a time by the parsers the proxy uses (head, interim answers, body
    /// framing, chunked decoding): the final status and the body, or why it was
    /// refused.
    pub fn upstream_response(data: &[u8], step: usize) -> Result<(u16, Vec<u8>), String> {
        crate::h1::read_response(data, step)
            .map(|(status, body)| (status.as_u16(), body))
            .map_err(|e| e.to_string())
    }
}
