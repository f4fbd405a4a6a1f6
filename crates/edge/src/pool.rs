//! Upstream connection pools: one per target per worker.
//!
//! Each worker owns its pools, so a pooled connection is only ever used by the
//! thread that opened it and the lock below is never contended. A connection is
//! checked out for one request and comes back when that request's response body
//! has been read to the end (see `h1.rs`); a response abandoned half-way closes
//! its connection instead, so a half-read response can never leak into the next
//! request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_config::{Target, Upstream};
use http::{Request, Response};

use crate::body::RequestBody;
use crate::forwarding::ProxyHeaders;
use crate::h1::{Conn, Exchange, ExchangeError, Failed, UpstreamBody};

/// Why a request could not be sent to a target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection within the connect timeout.
    #[error("connect to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    /// The connection failed (refused, unreachable, name not resolved, no socket).
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting.
    #[error("exchange with {target}: {source}")]
    Exchange {
        target: String,
        #[source]
        source: ExchangeError,
    },
}

/// Connection pool of one target.
pub(crate) struct TargetPool {
    pub(crate) target: Target,
    idle: Mutex<Vec<IdleConn>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

impl TargetPool {
    pub(crate) fn new(target: Target, upstream: &Upstream) -> Arc<Self> {
        Arc::new(Self {
            target,
            idle: Mutex::new(Vec::new()),
            max_idle: upstream.keepalive,
            idle_timeout: upstream.idle_timeout,
            connect_timeout: upstream.connect_timeout,
        })
    }

    /// Whether this pool was built for exactly this target and these pool
    /// settings, so a reload may keep it (and its idle connections).
    pub(crate) fn fits(&self, target: &Target, upstream: &Upstream) -> bool {
        // Weight is the balancer's business, not the pool's.
        self.target.id == target.id
            && self.target.authority == target.authority
            && self.target.host == target.host
            && self.target.port == target.port
            && self.target.unix == target.unix
            && self.max_idle == upstream.keepalive
            && self.idle_timeout == upstream.idle_timeout
            && self.connect_timeout == upstream.connect_timeout
    }

    /// Takes back a connection whose exchange ended cleanly.
    pub(crate) fn put(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(IdleConn {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    /// The most recently used connection that is still open, if any.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(mut idle_conn) = idle.pop() {
            if idle_conn.since.elapsed() < self.idle_timeout && idle_conn.conn.is_reusable() {
                return Some(idle_conn.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let target = || self.target.id.to_string();
        match tokio::time::timeout(self.connect_timeout, crate::connect::connect(&self.target)).await {
            Err(_) => Err(SendError::ConnectTimeout {
                target: target(),
                timeout: self.connect_timeout,
            }),
            Ok(Err(source)) => Err(SendError::Connect {
                target: target(),
                source,
            }),
            Ok(Ok(stream)) => Ok(Conn::new(stream)),
        }
    }

    /// Sends `req`, with gatehouse's own headers `extra`, on a pooled or new
    /// connection and waits for the response head. A request that a pooled connection failed before the upstream
    /// answered or took any of its body is sent again on a new connection, so an
    /// upstream closing idle connections is never visible. When the request
    /// can still be sent elsewhere (nothing answered, no body taken, and either
    /// idempotent or not written at all) it comes back with the error, so the
    /// caller can try another target.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        extra: &ProxyHeaders,
    ) -> Result<Response<UpstreamBody>, (SendError, Option<Request<RequestBody>>)> {
        let mut req = req;
        if let Some(conn) = self.take_idle() {
            match Exchange::start(conn, req, extra).await {
                Ok((parts, exchange)) => return Ok(self.response(parts, exchange)),
                Err(Failed {
                    error,
                    unsent: Some(unsent),
                    ..
                }) => {
                    tracing::debug!(upstream = %self.target.id, %error, "Pooled connection failed; sending on a new one.");
                    req = unsent;
                }
                Err(Failed {
                    error, unsent: None, ..
                }) => return Err((self.exchange_error(error), None)),
            }
        }
        let conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => return Err((e, Some(req))),
        };
        match Exchange::start(conn, req, extra).await {
            Ok((parts, exchange)) => Ok(self.response(parts, exchange)),
            Err(Failed { error, unsent, .. }) => Err((self.exchange_error(error), unsent)),
        }
    }

    fn response(self: &Arc<Self>, parts: http::response::Parts, exchange: Box<Exchange>) -> Response<UpstreamBody> {
        Response::from_parts(parts, UpstreamBody::new(exchange, self.clone()))
    }

    fn exchange_error(&self, source: ExchangeError) -> SendError {
        SendError::Exchange {
            target: self.target.id.to_string(),
            source,
        }
    }
}
