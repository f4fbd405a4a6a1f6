//! Upstream connection pools: one per target per worker.
//!
//! Each worker owns its pools, so a pooled connection is only ever used by the
//! thread that opened it and the lock below is never contended. A connection is
//! checked out for one request and comes back when that request's response body
//! has been read to the end (see `body.rs`); a response abandoned half-way closes
//! its connection instead, so a half-read response can never leak into the next
//! request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_config::{Target, Upstream};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// Why a request could not be sent to a target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No TCP connection within the connect timeout.
    #[error("connect to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    /// The TCP connection failed (refused, unreachable, name not resolved).
    #[error("connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting.
    #[error("exchange with {target}: {source}")]
    Http {
        target: String,
        #[source]
        source: hyper::Error,
    },
}

/// Opens a TCP connection to a target: an IP address directly, a host name
/// through the resolver cache (`resolve.rs`), trying its addresses in order.
pub(crate) async fn tcp_connect(target: &Target) -> std::io::Result<TcpStream> {
    if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
        return TcpStream::connect(SocketAddr::new(ip, target.port)).await;
    }
    let addrs = crate::resolve::addrs(&target.host, target.port).await?;
    let mut last = None;
    for addr in addrs.iter() {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses")))
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
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// A connection checked out of a pool; hand it back with [`PooledConn::release`]
/// once its response is complete.
pub(crate) struct PooledConn {
    sender: http1::SendRequest<RequestBody>,
    pool: Arc<TargetPool>,
}

impl PooledConn {
    /// Returns the connection to its pool for the next request.
    pub(crate) fn release(self) {
        let pool = self.pool.clone();
        pool.put(self.sender);
    }
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
        self.target.authority == target.authority
            && self.target.host == target.host
            && self.target.port == target.port
            && self.max_idle == upstream.keepalive
            && self.idle_timeout == upstream.idle_timeout
            && self.connect_timeout == upstream.connect_timeout
    }

    fn put(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(IdleConn {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    /// The most recently used live connection, if any.
    fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let target = || self.target.authority.to_string();
        let connecting = async {
            let stream = tcp_connect(&self.target).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => {
                return Err(SendError::ConnectTimeout {
                    target: target(),
                    timeout: self.connect_timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(SendError::Connect {
                    target: target(),
                    source,
                });
            }
            Ok(Ok(s)) => s,
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| SendError::Http {
                target: target(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "Upstream connection ended with an error.");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on a pooled or new connection. A request that a pooled
    /// connection closed before it was written is sent again on a new
    /// connection, so an upstream closing idle connections is never visible.
    /// When no connection could be made the request comes back unsent, so the
    /// caller can try another target.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PooledConn), (SendError, Option<Request<RequestBody>>)> {
        let mut req = req;
        if let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, self.conn(sender))),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => {
                            return Err((
                                SendError::Http {
                                    target: self.target.authority.to_string(),
                                    source: e.into_error(),
                                },
                                None,
                            ));
                        }
                    },
                }
            }
        }
        let mut sender = match self.connect().await {
            Ok(s) => s,
            Err(e) => return Err((e, Some(req))),
        };
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.conn(sender))),
            Err(source) => Err((
                SendError::Http {
                    target: self.target.authority.to_string(),
                    source,
                },
                None,
            )),
        }
    }

    fn conn(self: &Arc<Self>, sender: http1::SendRequest<RequestBody>) -> PooledConn {
        PooledConn {
            sender,
            pool: self.clone(),
        }
    }
}
